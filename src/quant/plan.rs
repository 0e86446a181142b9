//! The quantization plan: a decision per value, made from the rule table before any
//! graph edit. Calibration fills in ranges; one pass (`passes::insert_qdq`) materialises
//! it. Mixed precision edits the plan, never the graph.
//!
//! Two kinds of op disappear into their producer's quantization (`OpState::Folded`): a
//! Relu/Clip from zero (the producer's range is the clipped one) and, outside the TensorRT
//! target, a Div/Mul by a positive scalar constant ([`Plan::scale_folds`]: the producer's
//! QuantizeLinear scale absorbs the constant). Either needs the producer's output to be a
//! quantized activation of its own, read by that op alone.
//!
//! The plan covers subgraphs too: the bodies of control-flow ops whose policy in the
//! rule table ([`super::rules::body_policy`]) is to plan them (If branches, Loop and
//! Scan bodies) are planned like the main graph, recursively. Their ops are keyed by
//! where they live (`if/then_branch/then_matmul`, see [`crate::ir::scope`]); their
//! values by name ([`ValueKeys`]). A value a body captures from an enclosing graph is
//! the outer value: same key, same decision, same range. Ops of other subgraphs (ops
//! outside the ONNX domain) are listed float with the reason, and so are the ops of a
//! subgraph no calibration sample reached ([`build_with`], [`fit_to_statistics`]).
//!
//! Values computed from constants only (a transformer's position ids and their embedding
//! rows, masks built from `Shape`/`ConstantOfShape`/`Where`/`Expand`/`Cast` while input
//! shapes are symbolic) are not activations: no sample changes them, and the engine may
//! compute them once, out of sight of calibration. `fold_constants` folds those it can;
//! the ops that would quantize the rest are left float with the reason. So is every op
//! that would quantize a value calibration gave no statistics for
//! ([`fit_to_statistics`]): the plan never asks for a range it cannot have.

use super::codebook::WeightGrid;
use super::embedding;
use super::gemm_fusion;
use super::params::{QType, ScaleFold};
use super::rules::{
    body_policy, is_range_sensitive, no_rule_reason, rule_for, BodyPolicy, OutputPolicy, Role,
    Target, WeightAxis, KEPT_FLOAT, OUTPUT_Q_OPTIONAL, SHAPE_READERS,
};
use crate::ir::scope::{defines, op_label, Scopes};
use crate::ir::{ConstTensor, DType, Graph, Model, OpId, ValueId};
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
    /// Weight ranges of least squared error instead of min/max (`--weight-method mse`).
    pub weight_mse: bool,
    /// Uniform codes, or a codebook per channel on the weight grid (`--weight-grid`).
    #[serde(default, skip_serializing_if = "WeightGrid::is_uniform")]
    pub weight_grid: WeightGrid,
    pub per_channel: bool,
    /// Node names never quantized.
    pub exclude_nodes: BTreeSet<String>,
    /// Op types never quantized.
    pub exclude_op_types: BTreeSet<String>,
    /// When set, only these op types are quantized.
    pub op_types: Option<BTreeSet<String>>,
    /// Embedding tables: `None` int8 per row in the plan; `float` or `int4` the plan leaves
    /// them float, and `int4` tables are stored in blocks after the Q/DQ are inserted
    /// ([`super::embedding::store_tables`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<super::embedding::TableBits>,
    /// Values per block of `int4` tables along the embedding axis (`None`: 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_block: Option<usize>,
}

/// Names given to [`QuantConfig`] that match nothing in the model (one line, listing them).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnknownNames(pub String);

impl QuantConfig {
    /// Checks every name of `exclude_nodes` (a node's name or its plan key, in the main
    /// graph or any subgraph), `exclude_op_types` and `op_types` (op types that occur in
    /// the model, subgraphs included) against `m`, so that a misspelt name is an error
    /// instead of a setting that silently does nothing. The error lists every unknown name.
    pub fn check_names(&self, m: &Model) -> Result<(), UnknownNames> {
        let scopes = Scopes::of(&m.graph);
        let mut nodes = BTreeSet::new();
        let mut types = BTreeSet::new();
        for s in 0..scopes.len() {
            let g = scopes.graph(&m.graph, s);
            let label = &scopes.get(s).label;
            for o in g.ops() {
                let op = g.op(o);
                nodes.insert(op_key_in(label, g, o));
                nodes.extend(op.name.clone().filter(|n| !n.is_empty()));
                types.insert(op.op_type.clone());
            }
        }
        let unknown = |given: &BTreeSet<String>, known: &BTreeSet<String>| -> Vec<String> {
            given
                .iter()
                .filter(|n| !known.contains(*n))
                .map(|n| format!("'{n}'"))
                .collect()
        };
        let all_types = types.iter().cloned().collect::<Vec<_>>().join(", ");
        let mut problems = Vec::new();
        let bad = unknown(&self.exclude_nodes, &nodes);
        if !bad.is_empty() {
            problems.push(format!(
                "--exclude-nodes names no node of the model: {}",
                bad.join(", ")
            ));
        }
        let no_type = [
            ("--exclude-op-types", Some(&self.exclude_op_types)),
            ("--op-types", self.op_types.as_ref()),
        ];
        for (flag, given) in no_type {
            let bad = given.map(|g| unknown(g, &types)).unwrap_or_default();
            if !bad.is_empty() {
                problems.push(format!(
                    "{flag} names op types the model does not use: {} (it uses {all_types})",
                    bad.join(", ")
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(UnknownNames(problems.join("; ")))
        }
    }
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
        /// Range of least squared error per channel instead of min/max.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        mse: bool,
        /// A codebook per channel on `qtype`'s codes instead of every code.
        #[serde(default, skip_serializing_if = "WeightGrid::is_uniform")]
        grid: WeightGrid,
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

/// The plan for a model: its main graph and the subgraphs it plans.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Decision per value key ([`ValueKeys`]: the value name unless it is ambiguous).
    pub values: BTreeMap<String, Decision>,
    /// State per op, keyed by [`op_key`] (scoped with its subgraph's label inside bodies).
    pub ops: BTreeMap<String, OpState>,
    /// Ranges per value key, filled by calibration.
    pub ranges: BTreeMap<String, (f32, f32)>,
    /// A Div/Mul by a positive constant folded into the quantization of its input, by
    /// the key of that input (an activation read by that op alone, whose `range_from` is
    /// the op's output).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scale_folds: BTreeMap<String, ScaleFold>,
    /// Per weight key with a codebook grid: the energy (mean square, from calibration
    /// data) of the input each element multiplies, in the weight's own layout; k-means
    /// weights its values by it. Absent: unweighted.
    #[serde(skip)]
    pub importance: BTreeMap<String, Vec<f64>>,
    /// Per uniform weight key: learned rounding (`--rounding adaround`), up (ceiling) or
    /// down (floor) per element in the weight's layout, on the grid round-to-nearest
    /// would use. Absent: round to nearest.
    #[serde(skip)]
    pub rounding: BTreeMap<String, Vec<bool>>,
    /// Materialise without the bytes that change nothing computed (`passes::compact`):
    /// set by `--size-budget`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compact: bool,
}

/// Stable key of a main-graph op for plans and summaries: its name, or `op_type#order`
/// if unnamed.
pub fn op_key(g: &Graph, o: OpId) -> String {
    op_label(g, o)
}

/// Key of op `o` of the graph of a scope labelled `label`: [`op_key`] in the main graph
/// (`label` empty), `label/op_key` inside a subgraph.
pub fn op_key_in(label: &str, g: &Graph, o: OpId) -> String {
    if label.is_empty() {
        op_key(g, o)
    } else {
        format!("{label}/{}", op_key(g, o))
    }
}

/// Plan keys of the values of a model, for every graph ([`Scopes`]).
///
/// A value's key is its name. ONNX names are unique across a graph and the subgraphs
/// it encloses, but sibling subgraphs (the two branches of an `If`) may each define the
/// same name; such a name keeps its plain key in the main graph and is keyed
/// `label/name` in each subgraph defining it (`if/then_branch/out`), with `.1`, `.2`…
/// appended in the unlikely case that this is itself a name of the model.
#[derive(Clone, Debug)]
pub struct ValueKeys {
    pub scopes: Scopes,
    /// Per scope: name of a value it defines → key.
    local: Vec<BTreeMap<String, String>>,
    /// Key → (scope, name in that scope).
    locs: BTreeMap<String, (usize, String)>,
}

impl ValueKeys {
    /// Keys of every value defined in `main` or its subgraphs.
    pub fn of(main: &Graph) -> ValueKeys {
        let scopes = Scopes::of(main);
        let defined: Vec<BTreeSet<String>> = (0..scopes.len())
            .map(|s| {
                let g = scopes.graph(main, s);
                g.values()
                    .filter(|&v| defines(g, v))
                    .map(|v| g.value(v).name.clone())
                    .collect()
            })
            .collect();
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &defined {
            for n in d {
                *count.entry(n.as_str()).or_default() += 1;
            }
        }
        let mut taken: BTreeSet<String> = count.keys().map(|n| n.to_string()).collect();
        let mut local = Vec::with_capacity(scopes.len());
        let mut locs = BTreeMap::new();
        for (s, d) in defined.iter().enumerate() {
            let mut m = BTreeMap::new();
            for n in d {
                let key = if s == 0 || count[n.as_str()] == 1 {
                    n.clone()
                } else {
                    let base = format!("{}/{n}", scopes.get(s).label);
                    let mut k = base.clone();
                    let mut i = 0;
                    while taken.contains(&k) {
                        i += 1;
                        k = format!("{base}.{i}");
                    }
                    taken.insert(k.clone());
                    k
                };
                locs.insert(key.clone(), (s, n.clone()));
                m.insert(n.clone(), key);
            }
            local.push(m);
        }
        ValueKeys {
            scopes,
            local,
            locs,
        }
    }

    /// Key of the value `name` defined in scope `s`.
    pub fn key(&self, s: usize, name: &str) -> Option<&str> {
        self.local.get(s)?.get(name).map(String::as_str)
    }

    /// Key of the value `name` as read from scope `s`: defined there or captured from
    /// an enclosing scope.
    pub fn key_from(&self, main: &Graph, s: usize, name: &str) -> Option<&str> {
        let d = self.scopes.resolve(main, s, name)?;
        self.key(d, name)
    }

    /// Where the value keyed `key` is defined: its scope and its name there.
    pub fn locate(&self, key: &str) -> Option<(usize, &str)> {
        self.locs.get(key).map(|(s, n)| (*s, n.as_str()))
    }
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

    /// The grid calibrated value `v` is quantized to: that of the activation decision
    /// that reads its range (its own, or that of the value a folded op's range moved to).
    /// `None` when no decision reads `v`'s range.
    pub fn calibrated_qtype(&self, v: &str) -> Option<QType> {
        self.values.iter().find_map(|(n, d)| match d {
            Decision::Activation {
                qtype,
                share_with: None,
                range_from,
            } if n == v || range_from.as_deref() == Some(v) => Some(*qtype),
            _ => None,
        })
    }

    /// Whether any weight has one scale per channel (its Q/DQ need an `axis`).
    pub fn uses_per_channel(&self) -> bool {
        self.values
            .values()
            .any(|d| matches!(d, Decision::Weight { axis: Some(_), .. }))
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

/// One graph being planned, with what it sees of the model.
struct Cx<'a> {
    main: &'a Graph,
    keys: &'a ValueKeys,
    s: usize,
    g: &'a Graph,
    /// Names the subgraphs of `g` capture (their readers are not ops of `g`).
    captured_below: BTreeSet<String>,
}

impl<'a> Cx<'a> {
    /// Plan key of a value read or defined in `g`.
    fn key(&self, v: ValueId) -> String {
        let name = &self.g.value(v).name;
        self.keys
            .key_from(self.main, self.s, name)
            .map(str::to_string)
            .unwrap_or_else(|| name.clone())
    }

    /// The graph defining `v` (an enclosing one when `g` captures it) and its id there.
    fn def(&self, v: ValueId) -> (&'a Graph, ValueId) {
        let g = self.g;
        if defines(g, v) {
            return (g, v);
        }
        let name = &g.value(v).name;
        self.keys
            .scopes
            .resolve(self.main, self.s, name)
            .and_then(|d| {
                let dg = self.keys.scopes.graph(self.main, d);
                dg.value_by_name(name).map(|dv| (dg, dv))
            })
            .unwrap_or((g, v))
    }

    fn const_of(&self, v: ValueId) -> Option<&'a ConstTensor> {
        let (dg, dv) = self.def(v);
        dg.const_of(dv)
    }

    fn is_float(&self, v: ValueId) -> bool {
        let (dg, dv) = self.def(v);
        is_float(dg, dv)
    }

    /// True when every reader of `v` is an op or output of `g`: `g` defines it and no
    /// subgraph captures it.
    fn local_only(&self, v: ValueId) -> bool {
        defines(self.g, v) && !self.captured_below.contains(&self.g.value(v).name)
    }
}

/// True when every reader of the constant `v` is a depthwise `Conv` (one input and one
/// output channel per group) reading it as its weight. ONNX Runtime's x86 depthwise kernels
/// widen both operands to 16 or 32 bits before multiplying, so 8-bit weights cannot
/// saturate there, unlike the u8 x s8 byte-pair products (`vpmaddubsw`) of its other
/// integer kernels on CPUs without VNNI, which 7-bit weights (`reduce_range`) guard.
fn read_only_by_depthwise(cx: &Cx, v: ValueId) -> bool {
    let g = cx.g;
    let Some(w) = cx.const_of(v) else {
        return false;
    };
    let readers = g.consumers(v);
    cx.local_only(v)
        && !readers.is_empty()
        && !g.outputs.contains(&v)
        && w.dims.len() >= 3
        && w.dims[1] == 1
        && readers.iter().all(|&(o, slot)| {
            let op = g.op(o);
            slot == 1
                && op.op_type == "Conv"
                && matches!(op.domain.as_deref(), None | Some("") | Some("ai.onnx"))
                && op
                    .attr_int("group")
                    .is_some_and(|grp| grp > 1 && grp as u64 == w.dims[0] as u64)
        })
}

fn is_float(g: &Graph, v: ValueId) -> bool {
    if let Some(t) = g.const_of(v) {
        return t.dtype == DType::F32;
    }
    g.value(v).dtype() == Some(DType::F32)
}

/// Builds the plan for `m` from the rule table: the main graph, and recursively the
/// subgraphs whose policy is to plan them.
pub fn build(m: &Model, cfg: &QuantConfig) -> Plan {
    build_with(m, cfg, &Uncalibrated::default())
}

/// Reason given for the ops of a subgraph no calibration sample reaches.
pub const UNREACHED: &str = "no calibration sample reaches this subgraph";

/// What calibration did not reach: the plan leaves the ops concerned float.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uncalibrated {
    /// Labels of subgraphs no calibration sample reached (a branch never taken, a Scan
    /// over empty sequences): all their ops stay float, with the reason [`UNREACHED`].
    pub scopes: BTreeSet<String>,
    /// Keys of values without statistics: an op that would quantize one (as an input or
    /// an output) stays float, naming it.
    pub values: BTreeSet<String>,
    /// Keys of values that are constants only for the input shapes the run fixed (the
    /// model as declared computes them from `Shape` of an input): an op that would
    /// quantize one stays float, naming it, as on the model with its declared dims, where
    /// they are computed from constants only. A quantized model that does not bake them
    /// in can keep the declared dims.
    pub shape_constants: BTreeSet<String>,
}

/// [`build`], leaving float what `un` lists: every op of the subgraphs labelled in
/// `un.scopes` (and of the subgraphs inside them), and every op that would quantize a
/// value of `un.values`.
pub fn build_with(m: &Model, cfg: &QuantConfig, un: &Uncalibrated) -> Plan {
    let keys = ValueKeys::of(&m.graph);
    let mut plan = Plan::default();
    plan_scope(&m.graph, &keys, 0, cfg, un, &BTreeMap::new(), &mut plan);
    if cfg.target == Target::OrtCpu {
        // A MatMul ONNX Runtime fuses with its bias Add into a float Gemm is known only
        // once the Add's readers are planned: plan again with those MatMuls float. Leaving
        // a MatMul float quantizes nothing more, so a second round finds none new.
        let heads = float_gemm_heads(m, &keys, &plan);
        if !heads.is_empty() {
            plan = Plan::default();
            plan_scope(&m.graph, &keys, 0, cfg, un, &heads, &mut plan);
            name_head_kernels(m, &keys, &heads, &mut plan);
        }
    }
    plan
}

/// Names the kernel ONNX Runtime runs for each MatMul of `heads` whose weight the plan
/// stores in 8 bits: MatMulNBits when its input A stays float, a float Gemm when a
/// decision made for another reader dequantizes A (`quant::gemm_fusion`).
fn name_head_kernels(
    m: &Model,
    keys: &ValueKeys,
    heads: &BTreeMap<String, String>,
    plan: &mut Plan,
) {
    for s in 0..keys.scopes.len() {
        let g = keys.scopes.graph(&m.graph, s);
        let label = &keys.scopes.get(s).label;
        for o in g.ops() {
            let key = op_key_in(label, g, o);
            let (Some(add), Some(a)) = (heads.get(&key), g.input(o, 0)) else {
                continue;
            };
            let name = &g.value(a).name;
            let a_key = keys.key_from(&m.graph, s, name).unwrap_or(name);
            let dequantized = plan.values.contains_key(a_key);
            if let Some(OpState::Quantized { kernel }) = plan.ops.get_mut(&key) {
                *kernel = Some(gemm_fusion::head_kernel(add, dequantized));
            }
        }
    }
}

/// The quantized MatMuls of `plan` that ONNX Runtime fuses with their bias Add into a
/// Gemm (`quant::gemm_fusion`) whose output the plan leaves float, keyed as ops are, with
/// the name of the Add.
fn float_gemm_heads(m: &Model, keys: &ValueKeys, plan: &Plan) -> BTreeMap<String, String> {
    let mut heads = BTreeMap::new();
    for s in 0..keys.scopes.len() {
        let g = keys.scopes.graph(&m.graph, s);
        let label = &keys.scopes.get(s).label;
        let konst = |v: ValueId| {
            let name = &g.value(v).name;
            let d = keys.scopes.resolve(&m.graph, s, name)?;
            let dg = keys.scopes.graph(&m.graph, d);
            dg.value_by_name(name)
                .and_then(|dv| dg.const_of(dv))
                .map(|t| t.dims.clone())
        };
        for o in g.ops() {
            let key = op_key_in(label, g, o);
            if !matches!(plan.ops.get(&key), Some(OpState::Quantized { .. })) {
                continue;
            }
            let Some(add) = gemm_fusion::fused_bias_add(g, o, konst) else {
                continue;
            };
            let quantized_output = g.outputs_of(add).into_iter().flatten().any(|y| {
                let name = &g.value(y).name;
                let k = keys.key_from(&m.graph, s, name).unwrap_or(name);
                plan.values.contains_key(k)
            });
            if !quantized_output {
                heads.insert(key, g.op(add).display_name().to_string());
            }
        }
    }
    heads
}

/// `plan` (built by [`build_with`] for `m`, `cfg` and `un`) fitted to the statistics
/// calibration gave: while a calibration value has none (`calibrated` says so), the plan
/// is rebuilt with it listed in `un` (its subgraph when it lives in one, else the value
/// itself), so that the ops needing it stay float with the reason. Each round lists at
/// least one more value or subgraph, so this ends; a round that lists nothing new is a
/// bug, reported as an error naming the value.
pub fn fit_to_statistics(
    m: &Model,
    cfg: &QuantConfig,
    mut plan: Plan,
    mut un: Uncalibrated,
    calibrated: impl Fn(&str) -> bool,
) -> Result<Plan, String> {
    let keys = ValueKeys::of(&m.graph);
    loop {
        let missing: Vec<String> = plan
            .calibration_values()
            .into_iter()
            .filter(|v| !calibrated(v))
            .collect();
        let Some(first) = missing.first().cloned() else {
            return Ok(plan);
        };
        let mut grew = false;
        for v in missing {
            grew |= match keys.locate(&v) {
                Some((s, _)) if s != 0 => un.scopes.insert(keys.scopes.get(s).label.clone()),
                _ => un.values.insert(v),
            };
        }
        if !grew {
            return Err(format!(
                "the plan still calibrates '{first}', which has no statistics, after leaving it float"
            ));
        }
        plan = build_with(m, cfg, &un);
    }
}

/// Marks every op of scope `s` and of the scopes inside it float.
fn all_float(main: &Graph, keys: &ValueKeys, s: usize, reason: &str, plan: &mut Plan) {
    for c in std::iter::once(s).chain(keys.scopes.descendants(s)) {
        let g = keys.scopes.graph(main, c);
        let label = &keys.scopes.get(c).label;
        for o in g.ops() {
            plan.ops.insert(
                op_key_in(label, g, o),
                OpState::Float {
                    reason: reason.to_string(),
                },
            );
        }
    }
}

fn plan_scope(
    main: &Graph,
    keys: &ValueKeys,
    s: usize,
    cfg: &QuantConfig,
    un: &Uncalibrated,
    float_gemms: &BTreeMap<String, String>,
    plan: &mut Plan,
) {
    let g = keys.scopes.graph(main, s);
    let cx = Cx {
        main,
        keys,
        s,
        g,
        captured_below: g
            .ops()
            .flat_map(|o| {
                g.op(o)
                    .subgraphs()
                    .into_iter()
                    .flat_map(|(_, sg)| sg.captures())
                    .collect::<Vec<_>>()
            })
            .collect(),
    };
    let label = keys.scopes.get(s).label.clone();
    let order = g.topo_order().expect("verified graph is acyclic");
    let sensitive = sensitive_ops(g);
    let fixed = constant_only(&cx);
    for o in order {
        let op = g.op(o);
        // Subgraphs first: what they read from here is planned with the values of `g`.
        for j in 0..op.subgraphs().len() {
            let Some(c) = keys.scopes.child(s, o, j) else {
                continue;
            };
            match body_policy(&op.op_type, op.domain_key()) {
                _ if un.scopes.contains(&keys.scopes.get(c).label) => {
                    all_float(main, keys, c, UNREACHED, plan)
                }
                BodyPolicy::Plan => plan_scope(main, keys, c, cfg, un, float_gemms, plan),
                BodyPolicy::Float(reason) => all_float(main, keys, c, reason, plan),
            }
        }
        let key = op_key_in(&label, g, o);
        let float = |plan: &mut Plan, reason: String| {
            plan.ops.insert(key.clone(), OpState::Float { reason });
        };
        if cfg.exclude_nodes.contains(&key)
            || op
                .name
                .as_ref()
                .is_some_and(|n| cfg.exclude_nodes.contains(n))
        {
            float(plan, "excluded by --exclude-nodes".into());
            continue;
        }
        if cfg.exclude_op_types.contains(&op.op_type) {
            float(plan, "excluded by --exclude-op-types".into());
            continue;
        }
        if let Some(only) = &cfg.op_types {
            if !only.contains(&op.op_type) {
                float(plan, "not in --op-types".into());
                continue;
            }
        }
        if let Some(reason) = unquantizable(&cx, o, &fixed, un) {
            float(plan, reason);
            continue;
        }
        if let Some(add) = float_gemms.get(&key) {
            plan_float_gemm(&cx, cfg, plan, o, key, add);
            continue;
        }
        if cfg.target != Target::Tensorrt {
            if let Some((x, y, fold)) = foldable_scale(&cx, plan, o) {
                // A float kernel output (a MatMul's) is quantized here, through the fold.
                plan.values
                    .entry(cx.key(x))
                    .or_insert(Decision::Activation {
                        qtype: cfg.activation,
                        share_with: None,
                        range_from: None,
                    });
                plan.scale_folds.insert(cx.key(x), fold);
                fold_into_input(plan, &cx, &label, key, x, y);
                continue;
            }
        }
        let Some(rule) = rule_for(&op.op_type, op.domain_key(), cfg.target) else {
            float(
                plan,
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
            .find(|(_, v, r)| *r != Role::Bias && !cx.is_float(*v))
        {
            float(
                plan,
                format!("input '{}' is not a known f32 tensor", g.value(*v).name),
            );
            continue;
        }
        if rule.after_quantized && cfg.target != Target::Tensorrt {
            if let Some((_, v, _)) = role_inputs
                .iter()
                .find(|(_, v, r)| *r == Role::Activation && left_float(&cx, plan, *v))
            {
                float(
                    plan,
                    format!(
                        "input '{}' is left float by its producer: quantizing it here only adds a rounding step",
                        g.value(*v).name
                    ),
                );
                continue;
            }
        }
        if matches!(op.op_type.as_str(), "Add" | "Mul")
            && inputs
                .iter()
                .flatten()
                .any(|v| cx.const_of(*v).is_some_and(|t| t.numel() <= 1))
        {
            float(
                plan,
                "scalar-constant Add/Mul: quantizing it only adds a rounding step".into(),
            );
            continue;
        }
        if let Some(c) = sensitive.get(&o) {
            float(
                plan,
                format!(
                    "its output reaches {} ({}), which amplifies quantization error near zero",
                    g.op(*c).op_type,
                    op_key_in(&label, g, *c)
                ),
            );
            continue;
        }
        match rule.output {
            OutputPolicy::ShareInput => {
                let Some(x) = in0 else {
                    float(plan, "no input".into());
                    continue;
                };
                if matches!(rule.role(0), Role::Weight(_))
                    && embedding::is_embedding_lookup(g, o, |v| cx.const_of(v))
                {
                    if let Some(bits) = cfg.tables {
                        // Stored after the Q/DQ are inserted (int4 blocks), or float.
                        float(
                            plan,
                            match bits {
                                embedding::TableBits::Float => {
                                    "embedding table left float (--embedding-bits float)".into()
                                }
                                _ => embedding::INT4_TABLE.into(),
                            },
                        );
                        continue;
                    }
                    // An embedding table: int8 per row, the lookup on the dequantized
                    // floats after it; the output is not quantized.
                    plan.values.entry(cx.key(x)).or_insert(Decision::Weight {
                        qtype: embedding::table_qtype(),
                        axis: Some(embedding::TABLE_AXIS),
                        mse: false,
                        grid: WeightGrid::Uniform,
                    });
                    plan.ops.insert(
                        key,
                        OpState::Quantized {
                            kernel: Some("DequantizeLinear → Gather".into()),
                        },
                    );
                    continue;
                }
                let xname = cx.key(x);
                let Some(root) = share_root(plan, &xname) else {
                    float(plan, "its input is not quantized".into());
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
                        cx.key(*y),
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
                // and read by this op alone: the clip then happens in the quantization. A value
                // a subgraph captures has readers there too, and a removed output must not be
                // one a subgraph reads.
                let Some(x) = in0 else {
                    float(plan, "no input".into());
                    continue;
                };
                let xname = cx.key(x);
                let only_reader = g.consumers(x).len() == 1
                    && !g.is_output(x)
                    && cx.local_only(x)
                    && outputs
                        .iter()
                        .all(|y| !g.is_output(*y) && cx.local_only(*y));
                let asym = !cfg.activation.symmetric;
                let clip_ok = clip_from_zero(g, o);
                // A MatMul leaves its output float unless a reader quantizes it: a Relu/Clip
                // reading it alone (or its bias Add's output) is such a reader (its range
                // becomes the MatMul's, as QLinearMatMul runs it).
                let float_kernel_output = !plan.values.contains_key(&xname)
                    && only_reader
                    && asym
                    && clip_ok
                    && from_float_kernel(&cx, plan, x);
                if float_kernel_output {
                    plan.values.insert(
                        xname.clone(),
                        Decision::Activation {
                            qtype: cfg.activation,
                            share_with: None,
                            range_from: None,
                        },
                    );
                }
                let producer_quantized = own_activation(plan, &xname);
                let y = outputs.first().copied();
                match (y, only_reader && asym && clip_ok && producer_quantized) {
                    (Some(y), true) => fold_into_input(plan, &cx, &label, key, x, y),
                    _ => float(
                        plan,
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
            let name = cx.key(*v);
            let konst = cx.const_of(*v);
            let is_const = konst.is_some();
            match role {
                Role::Activation | Role::Weight(_) if plan.values.contains_key(&name) => {}
                Role::Activation if is_const => {
                    plan.values.insert(
                        name,
                        Decision::Weight {
                            qtype: cfg.activation,
                            axis: None,
                            mse: cfg.weight_mse,
                            grid: WeightGrid::Uniform,
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
                    let rank = konst.map(|t| t.dims.len()).unwrap_or(0) as i64;
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
                    // 7-bit weights guard kernels that can saturate; depthwise kernels cannot.
                    let reduced = cfg.weight.dtype == DType::I8 && cfg.weight.qmax < 127;
                    let qtype = if reduced && read_only_by_depthwise(&cx, *v) {
                        QType::new(DType::I8, true, false).expect("int8")
                    } else {
                        cfg.weight
                    };
                    plan.values.insert(
                        name,
                        Decision::Weight {
                            qtype,
                            axis,
                            mse: cfg.weight_mse,
                            grid: cfg.weight_grid,
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
                        && cx.is_float(*v)
                        && g.consumers(*v).len() == 1
                        && cx.local_only(*v)
                        && op.attr_float("beta").unwrap_or(1.0) == 1.0
                        && *slot == 2;
                    if bias_ok {
                        plan.values.insert(
                            name,
                            Decision::Bias {
                                input: cx.key(x),
                                weight: cx.key(w),
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
                        cx.key(*y),
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
}

/// Plans MatMul `o`, which ONNX Runtime fuses with its bias Add into a float Gemm
/// (`quant::gemm_fusion`): its input stays float (quantizing it buys no integer kernel), and
/// a constant weight is stored int8 per output column on all of int8's grid (no integer
/// kernel multiplies it, so the 7-bit guard buys nothing), dequantized before the Gemm.
/// Without such a weight the op is float, with the reason. `add` names the bias Add.
fn plan_float_gemm(cx: &Cx, cfg: &QuantConfig, plan: &mut Plan, o: OpId, key: String, add: &str) {
    let w =
        cx.g.input(o, 1)
            .filter(|&w| cx.is_float(w) && cx.const_of(w).is_some_and(|t| t.dims.len() == 2));
    let Some(w) = w.filter(|&w| !plan.values.contains_key(&cx.key(w))) else {
        plan.ops.insert(
            key,
            OpState::Float {
                reason: gemm_fusion::float_gemm_reason(add),
            },
        );
        return;
    };
    plan.values.insert(
        cx.key(w),
        Decision::Weight {
            qtype: QType::new(DType::I8, true, false).expect("int8 is an integer type"),
            axis: cfg.per_channel.then_some(1),
            mse: cfg.weight_mse,
            grid: WeightGrid::Uniform,
        },
    );
    plan.ops.insert(
        key,
        OpState::Quantized {
            kernel: Some(gemm_fusion::head_kernel(add, false)),
        },
    );
}

/// Values of the graph `cx` plans that are computed from constants only (see
/// [`computed_from_constants`]; captured constants count).
fn constant_only(cx: &Cx) -> BTreeSet<ValueId> {
    computed_from_constants(cx.g, |v| cx.const_of(v).is_some())
}

/// Values of `g` computed from constants only: every input of their producer is a
/// constant (`is_const`), such a value, or absent, or the producer is `Shape`/`Size`
/// (which read only a shape, fixed per inference). No sample changes them. Outputs of ops
/// with subgraphs are not listed (their bodies may read anything), nor are values of ops
/// without inputs other than `Constant`. Empty for a graph with a cycle.
pub fn computed_from_constants(g: &Graph, is_const: impl Fn(ValueId) -> bool) -> BTreeSet<ValueId> {
    let mut out = BTreeSet::new();
    let Ok(order) = g.topo_order() else {
        return out;
    };
    for o in order {
        let op = g.op(o);
        let ins = g.inputs_of(o);
        let fixed = if !op.domain_key().is_empty() || !op.subgraphs().is_empty() {
            false
        } else if SHAPE_READERS.contains(&op.op_type.as_str()) {
            true
        } else if ins.iter().all(Option::is_none) {
            op.op_type == "Constant"
        } else {
            ins.iter()
                .flatten()
                .all(|&v| out.contains(&v) || is_const(v))
        };
        if fixed {
            out.extend(g.outputs_of(o).into_iter().flatten());
        }
    }
    out
}

/// Why op `o` cannot be quantized whatever its rule: a value it would quantize (an
/// output, or a computed input in a quantized role of its rule) is computed from
/// constants only (`fixed`), or has no calibration statistics (`un.values`).
fn unquantizable(cx: &Cx, o: OpId, fixed: &BTreeSet<ValueId>, un: &Uncalibrated) -> Option<String> {
    let g = cx.g;
    let op = g.op(o);
    let rule = rule_for(&op.op_type, op.domain_key(), Target::Generic);
    let inputs = g
        .inputs_of(o)
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, v?)))
        .filter(|&(i, v)| {
            rule.is_some_and(|r| r.role(i) != Role::Float) && cx.const_of(v).is_none()
        })
        .map(|(_, v)| v);
    let values: Vec<ValueId> = g
        .outputs_of(o)
        .into_iter()
        .flatten()
        .chain(inputs)
        .filter(|&v| cx.is_float(v))
        .collect();
    let shaped = g
        .inputs_of(o)
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, v?)))
        .filter(|&(i, _)| rule.is_some_and(|r| r.role(i) != Role::Float))
        .map(|(_, v)| v)
        .chain(g.outputs_of(o).into_iter().flatten())
        .find(|&v| un.shape_constants.contains(&cx.key(v)));
    if let Some(v) = shaped {
        return Some(format!(
            "'{}' is computed from constants and input shapes only: no sample changes it, so it is not calibrated",
            g.value(v).name
        ));
    }
    if let Some(v) = values.iter().find(|v| fixed.contains(v)) {
        return Some(format!(
            "'{}' is computed from constants only: no sample changes it, so it is not calibrated",
            g.value(*v).name
        ));
    }
    values.iter().find(|&&v| un.values.contains(&cx.key(v))).map(|v| {
        format!(
            "no calibration statistics for '{}' (calibration did not observe it, or the ranges file lacks it)",
            g.value(*v).name
        )
    })
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

/// True when the float value `x`, which no decision quantizes yet, is the output of a
/// quantized op whose integer kernel returns floats (a MatMul: MatMulIntegerToFloat), or
/// of a float Add of a constant (the bias that kernel takes) to such an output read by
/// that Add alone: a reader may quantize it, and QLinearMatMul then runs the MatMul.
fn from_float_kernel(cx: &Cx, plan: &Plan, x: ValueId) -> bool {
    let g = cx.g;
    let label = &cx.keys.scopes.get(cx.s).label;
    let float_kernel = |v: ValueId| {
        g.producer(v).is_some_and(|(p, _)| {
            let pop = g.op(p);
            matches!(
                plan.ops.get(&op_key_in(label, g, p)),
                Some(OpState::Quantized { .. })
            ) && rule_for(&pop.op_type, pop.domain_key(), Target::Generic)
                .is_some_and(|r| r.output == OutputPolicy::KeepFloat)
        })
    };
    let bias_add = |v: ValueId| {
        g.producer(v).is_some_and(|(p, _)| {
            let ins = g.inputs_of(p);
            let [Some(a), Some(b)] = ins.as_slice() else {
                return false;
            };
            let (m, c) = if cx.const_of(*b).is_some() {
                (*a, *b)
            } else {
                (*b, *a)
            };
            g.op(p).op_type == "Add"
                && g.op(p).domain_key().is_empty()
                && cx.const_of(c).is_some()
                && cx.const_of(m).is_none()
                && matches!(
                    plan.ops.get(&op_key_in(label, g, p)),
                    Some(OpState::Float { .. })
                )
                && !plan.values.contains_key(&cx.key(m))
                && g.consumers(m).len() == 1
                && !g.is_output(m)
                && cx.local_only(m)
                && float_kernel(m)
        })
    };
    defines(g, x) && cx.is_float(x) && (float_kernel(x) || bias_add(x))
}

/// True when every reader of `y` (of this graph only) quantizes it as an input of its own
/// rule and has its other computed inputs quantized already: a Div/Mul folded into a
/// float kernel output then quantizes a value its readers quantize anyway. Behind the
/// additive mask of attention scores, whose Add and Softmax stay float, it is false.
fn readers_quantize(cx: &Cx, plan: &Plan, y: ValueId) -> bool {
    let g = cx.g;
    let readers = g.consumers(y);
    !readers.is_empty()
        && !g.is_output(y)
        && cx.local_only(y)
        && readers.iter().all(|(r, slot)| {
            let op = g.op(*r);
            let Some(rule) = rule_for(&op.op_type, op.domain_key(), Target::Generic) else {
                return false;
            };
            rule.role(*slot) == Role::Activation
                && matches!(
                    rule.output,
                    OutputPolicy::Quantize | OutputPolicy::KeepFloat
                )
                && g.inputs_of(*r).into_iter().enumerate().all(|(i, v)| {
                    let Some(v) = v else { return true };
                    v == y
                        || rule.role(i) != Role::Activation
                        || cx.const_of(v).is_some()
                        || plan.values.contains_key(&cx.key(v))
                })
        })
}

/// True when the computed value `v` is left float by design upstream: no decision quantizes
/// it, and it comes, through ops that leave their outputs float, from an op whose integer
/// kernel returns floats (a quantized op whose rule keeps its output float: MatMul) or
/// that the table keeps float ([`KEPT_FLOAT`]: LayerNormalization, Erf). A value left
/// float for other reasons (the float Div of a HardSwish behind a quantized Conv) does not
/// count: the op reading it is quantized as before.
fn left_float(cx: &Cx, plan: &Plan, v: ValueId) -> bool {
    let mut memo = BTreeMap::new();
    float_by_design(cx, plan, v, &mut memo)
}

fn float_by_design(cx: &Cx, plan: &Plan, v: ValueId, memo: &mut BTreeMap<ValueId, bool>) -> bool {
    if let Some(&known) = memo.get(&v) {
        return known;
    }
    // Values of enclosing graphs are not followed (their producers live elsewhere).
    let g = cx.g;
    let label = &cx.keys.scopes.get(cx.s).label;
    let answer = defines(g, v)
        && g.const_of(v).is_none()
        && !plan.values.contains_key(&cx.key(v))
        && g.producer(v).is_some_and(|(p, _)| {
            let op = g.op(p);
            let state = plan.ops.get(&op_key_in(label, g, p));
            let keeps_float = rule_for(&op.op_type, op.domain_key(), Target::Generic)
                .is_some_and(|r| r.output == OutputPolicy::KeepFloat);
            let by_design = KEPT_FLOAT.iter().any(|(t, _)| *t == op.op_type)
                || matches!(state, Some(OpState::Quantized { .. })) && keeps_float;
            by_design
                || matches!(state, Some(OpState::Float { .. }))
                    && g.inputs_of(p)
                        .into_iter()
                        .flatten()
                        .any(|x| float_by_design(cx, plan, x, memo))
        });
    memo.insert(v, answer);
    answer
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

/// True when value `name` is a quantized activation with parameters and a range of its own
/// (none shared, borrowed or folded into it yet).
fn own_activation(plan: &Plan, name: &str) -> bool {
    matches!(
        plan.values.get(name),
        Some(Decision::Activation {
            share_with: None,
            range_from: None,
            ..
        })
    )
}

/// Folds op `key` of the graph `cx` plans (scope `label`), output `y`, into the
/// quantization of its input `x` (an [`own_activation`]): `x`'s range is `y`'s, readers of
/// the removed `y` use `x`'s parameters, and the op is marked folded into `x`'s producer.
fn fold_into_input(plan: &mut Plan, cx: &Cx, label: &str, key: String, x: ValueId, y: ValueId) {
    let g = cx.g;
    let (xname, yname) = (cx.key(x), cx.key(y));
    let Some(Decision::Activation {
        qtype, range_from, ..
    }) = plan.values.get_mut(&xname)
    else {
        unreachable!("the folded op's input is an own activation");
    };
    *range_from = Some(yname.clone());
    let qtype = *qtype;
    plan.values.insert(
        yname,
        Decision::Activation {
            qtype,
            share_with: Some(xname),
            range_from: None,
        },
    );
    let prod = g
        .producer(x)
        .map(|(p, _)| op_key_in(label, g, p))
        .unwrap_or_default();
    plan.ops.insert(key, OpState::Folded { into: prod });
}

/// For a `Div` by, or `Mul` with, a positive f32 scalar constant whose other input `x` is
/// a quantized activation of its own (no shared or borrowed range, no fold yet) read by
/// this op alone: `x`, the op's output `y` and the fold. Neither value may be a graph
/// output or read by a subgraph: `y` disappears and `x`'s dequantized value becomes `y`.
/// The constant is an initializer of the op's own graph, of one element and of a rank at
/// most `x`'s (known), so that `y` has `x`'s shape.
fn foldable_scale(cx: &Cx, plan: &Plan, o: OpId) -> Option<(ValueId, ValueId, ScaleFold)> {
    let g = cx.g;
    let op = g.op(o);
    if !op.domain_key().is_empty() || !matches!(op.op_type.as_str(), "Div" | "Mul") {
        return None;
    }
    let ins = g.inputs_of(o);
    let [Some(a), Some(b)] = ins.as_slice() else {
        return None;
    };
    // The constant must be an initializer of this graph (the pass that removes the op
    // tells its data input from it there), and must not broadcast `x` to a higher rank.
    let x_rank = |x: ValueId| {
        g.value(x)
            .ty
            .as_ref()
            .and_then(|t| t.known_dims())
            .map(|d| d.len())
    };
    let positive = |v: ValueId, x: ValueId| -> Option<f32> {
        let t = g.const_of(v)?;
        if t.numel() != 1 || x_rank(x).is_none_or(|r| t.dims.len() > r) {
            return None;
        }
        match t.to_tensor().ok()? {
            crate::ir::Tensor::F32(a) => a
                .iter()
                .next()
                .copied()
                .filter(|c| c.is_normal() && *c > 0.0),
            _ => None,
        }
    };
    let (x, fold) = match op.op_type.as_str() {
        "Div" => (*a, ScaleFold::Div(positive(*b, *a)?)),
        _ => match (positive(*a, *b), positive(*b, *a)) {
            (None, Some(c)) => (*a, ScaleFold::Mul(c)),
            (Some(c), None) => (*b, ScaleFold::Mul(c)),
            _ => return None,
        },
    };
    if cx.const_of(x).is_some() || !cx.is_float(x) {
        return None;
    }
    let outs = g.outputs_of(o);
    let [Some(y)] = outs.as_slice() else {
        return None;
    };
    let own = own_activation(plan, &cx.key(x))
        || !plan.values.contains_key(&cx.key(x))
            && from_float_kernel(cx, plan, x)
            && readers_quantize(cx, plan, *y);
    let alone = g.consumers(x).len() == 1
        && !g.is_output(x)
        && cx.local_only(x)
        && !g.is_output(*y)
        && cx.local_only(*y)
        && is_float(g, *y);
    (own && alone).then_some((x, *y, fold))
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
