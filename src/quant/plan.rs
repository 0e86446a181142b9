//! The quantization plan: a decision per value, made from the rule table before any
//! graph edit. Calibration fills in ranges; one pass (`passes::insert_qdq`) materialises
//! it. Mixed precision edits the plan, never the graph.

use super::params::QType;
use super::rules::{
    is_range_sensitive, no_rule_reason, rule_for, OutputPolicy, Role, Target, WeightAxis,
    OUTPUT_Q_OPTIONAL,
};
use crate::ir::{DType, Graph, Model, OpId, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// User-facing quantization settings (one typed config; serde-readable).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuantConfig {
    pub target: Target,
    /// Activation grid (u8 asymmetric by default; i8 symmetric; u16/i16).
    pub activation: QType,
    /// Weight grid (i8 symmetric).
    pub weight: QType,
    pub per_channel: bool,
    /// Node names never quantized.
    pub exclude_nodes: BTreeSet<String>,
    /// Op types never quantized.
    pub exclude_op_types: BTreeSet<String>,
    /// When set, only these op types are quantized.
    pub op_types: Option<BTreeSet<String>>,
}

/// What happens to one value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// A computed float tensor: Q → DQ with a calibrated range.
    Activation {
        qtype: QType,
        /// Use the scale and zero point of this value instead of its own (data movement).
        share_with: Option<String>,
        /// Calibrate this value instead (a folded Relu/Clip output).
        range_from: Option<String>,
    },
    /// A float constant: stored quantized + DequantizeLinear (no float copy).
    Weight {
        qtype: QType,
        /// Channel axis for per-channel scales, `None` for one scale.
        axis: Option<i64>,
    },
    /// A float bias: int32, scale = s_input · s_weight, zero point 0.
    Bias { input: String, weight: String },
}

/// Where an op stands in the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OpState {
    Quantized {
        kernel: Option<String>,
    },
    /// Relu/Clip removed: its range moved into the producer's quantization.
    Folded {
        into: String,
    },
    Float {
        reason: String,
    },
}

/// The plan for one graph.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Decision per value name.
    pub values: BTreeMap<String, Decision>,
    /// State per op, keyed by its display key (node name, or `op_type#index`).
    pub ops: BTreeMap<String, OpState>,
    /// Ranges per value name, filled by calibration.
    pub ranges: BTreeMap<String, (f32, f32)>,
}

/// Stable key of an op for plans and summaries: its name, or `op_type#order` if unnamed.
pub fn op_key(g: &Graph, o: OpId) -> String {
    let op = g.op(o);
    match op.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("{}#{}", op.op_type, op.order.0),
    }
}

fn is_float(g: &Graph, v: ValueId) -> bool {
    if let Some(t) = g.const_of(v) {
        return t.dtype == DType::F32;
    }
    g.value(v).dtype() == Some(DType::F32)
}

impl Plan {
    /// Values whose statistics calibration must collect, sorted.
    pub fn calibration_values(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for (name, d) in &self.values {
            if let Decision::Activation {
                share_with: None,
                range_from,
                ..
            } = d
            {
                out.insert(range_from.clone().unwrap_or_else(|| name.clone()));
            }
        }
        out.into_iter().collect()
    }

    /// Number of quantized ops and of ops left float.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for s in self.ops.values() {
            match s {
                OpState::Quantized { .. } => c.0 += 1,
                OpState::Folded { .. } => c.1 += 1,
                OpState::Float { .. } => c.2 += 1,
            }
        }
        c
    }
}

/// Builds the plan for the main graph of `m` from the rule table.
pub fn build(m: &Model, cfg: &QuantConfig) -> Plan {
    let g = &m.graph;
    let mut plan = Plan::default();
    let order = g.topo_order().expect("verified graph is acyclic");
    let sensitive = sensitive_ops(g);
    for o in order {
        let op = g.op(o);
        let key = op_key(g, o);
        let float = |plan: &mut Plan, reason: String| {
            plan.ops.insert(key.clone(), OpState::Float { reason });
        };
        if cfg.exclude_nodes.contains(&key)
            || op
                .name
                .as_ref()
                .is_some_and(|n| cfg.exclude_nodes.contains(n))
        {
            float(&mut plan, "excluded by --exclude-nodes".into());
            continue;
        }
        if cfg.exclude_op_types.contains(&op.op_type) {
            float(&mut plan, "excluded by --exclude-op-types".into());
            continue;
        }
        if let Some(only) = &cfg.op_types {
            if !only.contains(&op.op_type) {
                float(&mut plan, "not in --op-types".into());
                continue;
            }
        }
        let Some(rule) = rule_for(&op.op_type, op.domain_key(), cfg.target) else {
            float(
                &mut plan,
                no_rule_reason(&op.op_type, op.domain_key(), cfg.target),
            );
            continue;
        };
        let inputs = g.inputs_of(o);
        let outputs: Vec<ValueId> = g.outputs_of(o).into_iter().flatten().collect();
        let in0 = inputs.first().copied().flatten();
        // every quantized input and output must be a float tensor
        let role_inputs: Vec<(usize, ValueId, Role)> = inputs
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v, rule.role(i))))
            .filter(|(_, _, r)| *r != Role::Float)
            .collect();
        if let Some((_, v, _)) = role_inputs
            .iter()
            .find(|(_, v, r)| *r != Role::Bias && !is_float(g, *v))
        {
            float(
                &mut plan,
                format!("input '{}' is not a known f32 tensor", g.value(*v).name),
            );
            continue;
        }
        if matches!(op.op_type.as_str(), "Add" | "Mul")
            && inputs
                .iter()
                .flatten()
                .any(|v| g.const_of(*v).is_some_and(|t| t.numel() <= 1))
        {
            float(
                &mut plan,
                "scalar-constant Add/Mul: quantizing it only adds a rounding step".into(),
            );
            continue;
        }
        if let Some(c) = sensitive.get(&o) {
            float(
                &mut plan,
                format!(
                    "its output reaches {} ({}), which amplifies quantization error near zero",
                    g.op(*c).op_type,
                    op_key(g, *c)
                ),
            );
            continue;
        }
        match rule.output {
            OutputPolicy::ShareInput => {
                let Some(x) = in0 else {
                    float(&mut plan, "no input".into());
                    continue;
                };
                let xname = g.value(x).name.clone();
                let Some(root) = share_root(&plan, &xname) else {
                    float(&mut plan, "its input is not quantized".into());
                    continue;
                };
                let qtype = match &plan.values[&root] {
                    Decision::Activation { qtype, .. } => *qtype,
                    _ => unreachable!("share root is an activation"),
                };
                for y in &outputs {
                    if !is_float(g, *y) {
                        continue;
                    }
                    plan.values.insert(
                        g.value(*y).name.clone(),
                        Decision::Activation {
                            qtype,
                            share_with: Some(root.clone()),
                            range_from: None,
                        },
                    );
                }
                plan.ops.insert(
                    key,
                    OpState::Quantized {
                        kernel: rule.ort_kernel.map(str::to_string),
                    },
                );
                continue;
            }
            OutputPolicy::FoldIntoProducer => {
                // Only with a grid that starts at zero and a producer whose output is quantized
                // and read by this op alone: the clip then happens in the quantization.
                let Some(x) = in0 else {
                    float(&mut plan, "no input".into());
                    continue;
                };
                let xname = g.value(x).name.clone();
                let only_reader = g.consumers(x).len() == 1
                    && !g.is_output(x)
                    && outputs.iter().all(|y| !g.is_output(*y));
                let asym = !cfg.activation.symmetric;
                let clip_ok = clip_from_zero(g, o);
                let producer_quantized = matches!(
                    plan.values.get(&xname),
                    Some(Decision::Activation {
                        share_with: None,
                        range_from: None,
                        ..
                    })
                );
                let y = outputs.first().copied();
                match (y, only_reader && asym && clip_ok && producer_quantized) {
                    (Some(y), true) => {
                        let yname = g.value(y).name.clone();
                        if let Some(Decision::Activation { range_from, .. }) =
                            plan.values.get_mut(&xname)
                        {
                            *range_from = Some(yname);
                        }
                        // Readers of the removed output use the producer's parameters.
                        plan.values.insert(
                            g.value(y).name.clone(),
                            Decision::Activation {
                                qtype: cfg.activation,
                                share_with: Some(xname.clone()),
                                range_from: None,
                            },
                        );
                        let prod = g.producer(x).map(|(p, _)| op_key(g, p)).unwrap_or_default();
                        plan.ops.insert(key, OpState::Folded { into: prod });
                    }
                    _ => float(
                        &mut plan,
                        if !asym {
                            "kept: a symmetric grid does not clip at zero".into()
                        } else if !clip_ok {
                            "kept: its clip does not start at zero".into()
                        } else if !producer_quantized {
                            "kept: its producer is not quantized".into()
                        } else {
                            "kept: its input has other readers".into()
                        },
                    ),
                }
                continue;
            }
            OutputPolicy::Quantize | OutputPolicy::KeepFloat => {}
        }
        for (slot, v, role) in &role_inputs {
            let name = g.value(*v).name.clone();
            let is_const = g.const_of(*v).is_some();
            match role {
                Role::Activation | Role::Weight(_) if plan.values.contains_key(&name) => {}
                Role::Activation if is_const => {
                    plan.values.insert(
                        name,
                        Decision::Weight {
                            qtype: cfg.activation,
                            axis: None,
                        },
                    );
                }
                Role::Activation => {
                    plan.values.insert(
                        name,
                        Decision::Activation {
                            qtype: cfg.activation,
                            share_with: None,
                            range_from: None,
                        },
                    );
                }
                Role::Weight(ax) if is_const => {
                    let rank = g.const_of(*v).map(|t| t.dims.len()).unwrap_or(0) as i64;
                    let axis = match ax {
                        WeightAxis::Fixed(a) => *a,
                        WeightAxis::GemmB => {
                            if op.attr_int("transB").unwrap_or(0) == 1 {
                                0
                            } else {
                                1
                            }
                        }
                        WeightAxis::Last => rank - 1,
                    };
                    let axis = (cfg.per_channel && rank >= 1 && axis < rank).then_some(axis);
                    plan.values.insert(
                        name,
                        Decision::Weight {
                            qtype: cfg.weight,
                            axis,
                        },
                    );
                }
                Role::Weight(_) => {
                    plan.values.insert(
                        name,
                        Decision::Activation {
                            qtype: cfg.activation,
                            share_with: None,
                            range_from: None,
                        },
                    );
                }
                Role::Bias => {
                    let (Some(x), Some(w)) = (inputs[0], inputs.get(1).copied().flatten()) else {
                        continue;
                    };
                    let bias_ok = is_const
                        && is_float(g, *v)
                        && g.consumers(*v).len() == 1
                        && op.attr_float("beta").unwrap_or(1.0) == 1.0
                        && *slot == 2;
                    if bias_ok {
                        plan.values.insert(
                            name,
                            Decision::Bias {
                                input: g.value(x).name.clone(),
                                weight: g.value(w).name.clone(),
                            },
                        );
                    }
                }
                Role::Float => {}
            }
        }
        if rule.output == OutputPolicy::Quantize {
            let optional = OUTPUT_Q_OPTIONAL.contains(&op.op_type.as_str());
            for y in &outputs {
                if optional && g.is_output(*y) {
                    continue;
                }
                if is_float(g, *y) {
                    plan.values.insert(
                        g.value(*y).name.clone(),
                        Decision::Activation {
                            qtype: cfg.activation,
                            share_with: None,
                            range_from: None,
                        },
                    );
                }
            }
        }
        plan.ops.insert(
            key,
            OpState::Quantized {
                kernel: rule.ort_kernel.map(str::to_string),
            },
        );
    }
    plan
}

/// Ops whose output flows, without fan-out and before any Conv/MatMul/Gemm, into an input
/// that amplifies error near zero (the variance of a normalisation feeding Sqrt, a
/// divisor…), mapped to that sensitive consumer. Their outputs stay float.
fn sensitive_ops(g: &Graph) -> BTreeMap<OpId, OpId> {
    const ABSORBING: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];
    let mut out = BTreeMap::new();
    let mut stack: Vec<(ValueId, OpId)> = Vec::new();
    for o in g.ops() {
        for (slot, v) in g.inputs_of(o).into_iter().enumerate() {
            if let Some(v) = v {
                if is_range_sensitive(&g.op(o).op_type, slot) {
                    stack.push((v, o));
                }
            }
        }
    }
    while let Some((v, origin)) = stack.pop() {
        let Some((p, _)) = g.producer(v) else {
            continue;
        };
        if ABSORBING.contains(&g.op(p).op_type.as_str()) || out.contains_key(&p) {
            continue;
        }
        out.insert(p, origin);
        for x in g.inputs_of(p).into_iter().flatten() {
            if g.consumers(x).len() == 1 && g.const_of(x).is_none() {
                stack.push((x, origin));
            }
        }
    }
    out
}

/// The value whose parameters `name` uses: itself if it is a plain activation, the root
/// of its sharing chain otherwise; `None` if it is not quantized.
fn share_root(plan: &Plan, name: &str) -> Option<String> {
    match plan.values.get(name)? {
        Decision::Activation {
            share_with: Some(r),
            ..
        } => Some(r.clone()),
        Decision::Activation { .. } => Some(name.to_string()),
        _ => None,
    }
}

/// True for Relu, and for a Clip whose lower bound is a constant 0.
fn clip_from_zero(g: &Graph, o: OpId) -> bool {
    let op = g.op(o);
    if op.op_type == "Relu" {
        return true;
    }
    // Clip < 11: attribute `min`; >= 11: input 1.
    if let Some(min) = op.attr_float("min") {
        return min == 0.0;
    }
    match g.input(o, 1) {
        Some(v) => g
            .const_of(v)
            .and_then(|t| t.to_tensor().ok())
            .and_then(|t| t.to_f64_vec())
            .is_some_and(|v| v.len() == 1 && v[0] == 0.0),
        None => false,
    }
}
