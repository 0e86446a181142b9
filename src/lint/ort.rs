//! ONNX Runtime's CPU provider: which node units become integer kernels.
//!
//! ONNX Runtime decides fusion in graph transformations that run before its QDQ
//! selectors, so the selectors alone would mispredict. This module replays, on a copy
//! of the main graph and in ONNX Runtime's order (level 1, then level 2 of
//! `ORT_ENABLE_EXTENDED`):
//!
//! 1. removal of Identity/Dropout nodes;
//! 2. one DequantizeLinear per consumer (a shared DQ is duplicated, so sharing never
//!    blocks fusion);
//! 3. Q/DQ propagation: a QuantizeLinear is copied backwards, and a DequantizeLinear
//!    forwards, through Reshape/Transpose/Squeeze/Unsqueeze/Slice/MaxPool chains that
//!    lack their own pair;
//! 4. quantization of float Conv/Gemm weights and biases whose input is dequantized
//!    per tensor and whose output leads to a QuantizeLinear;
//! 5. removal of a Relu/Clip before a QuantizeLinear whose range already clips;
//! 6. on x86-64, conversion of int8 Q→DQ pairs to uint8 where the Q feeds one DQ;
//! 7. the QDQ selectors, unit by unit, each giving the first rule the unit breaks.
//!
//! The rules follow ONNX Runtime 1.32 (`qdq_selectors.cc`,
//! `qdq_selector_action_transformer.cc`, `qdq_propagation.cc`,
//! `weight_bias_quantization.cc`, `ensure_unique_dq_for_node_unit.cc`,
//! `relu_quantizelinear.cc`, `clip_quantizelinear.cc`, `qdq_s8_to_u8.cc`), and
//! `tests/conformance/lint_vs_ort.py` checks them against the optimized graph ONNX
//! Runtime itself writes.

use super::{
    const_tensor, is_dq, is_q, is_scalar_shape, never_a_unit, since_version, LintError, Platform,
    Reason, Unit, UnitKind, Verdict, Warning,
};
use crate::ir::{eval, AttrValue, DType, Dim, Graph, Model, Op, OpId, Tensor, ValueId, ValueType};
use crate::passes::{InferShapes, Pass, PassCx};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Op types whose Q/DQ pair ONNX Runtime can drop (or that only move data).
const DATA_MOVEMENT: &[&str] = &[
    "ArgMax",
    "DepthToSpace",
    "Dropout",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "Identity",
    "MaxPool",
    "Pad",
    "ReduceMax",
    "ReduceMin",
    "Reshape",
    "Resize",
    "Slice",
    "SpaceToDepth",
    "Split",
    "Squeeze",
    "Tile",
    "Transpose",
    "Unsqueeze",
];

/// The QDQ rule ONNX Runtime's CPU provider applies to an op type.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    /// DQ → op → Q with equal constant parameters: the pair is dropped.
    Drop {
        allow_16bit: bool,
        positive_scale: bool,
    },
    /// DQ → op: the DQ is dropped (ArgMax).
    DropDq,
    /// DQ → Split → Q per output, all with the input's parameters.
    Split,
    Unary(&'static str),
    Binary(&'static str),
    Concat,
    Conv,
    MatMul,
    Gemm,
    Where,
}

fn rule_for(op: &Op, opset: i64) -> Result<Rule, Reason> {
    if !op.domain_key().is_empty() {
        return Err(Reason::NoKernel {
            op_type: op.op_type.clone(),
            domain: op.domain_key().to_string(),
        });
    }
    let drop = |allow_16bit, positive_scale| Rule::Drop {
        allow_16bit,
        positive_scale,
    };
    Ok(match op.op_type.as_str() {
        "Expand" | "Flatten" | "Gather" | "GatherElements" | "Reshape" | "Slice" | "Squeeze"
        | "Tile" | "Transpose" | "Unsqueeze" | "DepthToSpace" => drop(true, false),
        "MaxPool" => match since_version("MaxPool", opset) {
            Some(v) if v >= 12 => drop(false, true),
            v => {
                return Err(Reason::OpsetVersion {
                    op_type: op.op_type.clone(),
                    since: v.unwrap_or(opset),
                })
            }
        },
        "ReduceMax" | "ReduceMin" => drop(false, true),
        "Resize" => drop(false, false),
        "ArgMax" => Rule::DropDq,
        "Split" => Rule::Split,
        "AveragePool" => Rule::Unary("QLinearAveragePool"),
        "GlobalAveragePool" => Rule::Unary("QLinearGlobalAveragePool"),
        "LeakyRelu" => Rule::Unary("QLinearLeakyRelu"),
        "Sigmoid" => Rule::Unary("QLinearSigmoid"),
        "Softmax" => Rule::Unary("QLinearSoftmax"),
        "Add" => Rule::Binary("QLinearAdd"),
        "Mul" => Rule::Binary("QLinearMul"),
        "Concat" => Rule::Concat,
        "Conv" => Rule::Conv,
        "MatMul" => Rule::MatMul,
        "Gemm" => Rule::Gemm,
        "Where" => Rule::Where,
        _ => {
            return Err(Reason::NoKernel {
                op_type: op.op_type.clone(),
                domain: String::new(),
            })
        }
    })
}

fn is_16bit(d: Option<DType>) -> bool {
    matches!(d, Some(DType::U16 | DType::I16))
}

fn is_4bit(d: Option<DType>) -> bool {
    matches!(d, Some(DType::U4 | DType::I4))
}

fn dt(d: Option<DType>) -> String {
    d.map(|d| d.to_string()).unwrap_or_else(|| "unknown".into())
}

/// The lowest value of an integer type, for "zero point clips at zero" checks.
fn type_min_max(d: DType) -> Option<(i64, i64)> {
    Some(match d {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        DType::I16 => (-32768, 32767),
        DType::U16 => (0, 65535),
        _ => return None,
    })
}

/// The DQs and Qs around a unit, as ONNX Runtime's selectors find them.
struct Selection {
    /// (input slot, DequantizeLinear) in slot order.
    dqs: Vec<(usize, OpId)>,
    /// QuantizeLinear consumers of the op's (or the absorbed Relu/Clip's) outputs.
    qs: Vec<OpId>,
    /// A Relu/Clip between the op and its Q that the Q makes redundant.
    clip: Option<OpId>,
}

/// A working copy of the graph with ONNX Runtime's transformations applied.
struct Sim<'m> {
    model: &'m Model,
    g: Graph,
    opset: i64,
    int8_allowed: bool,
    /// Q and DQ ops of int8 pairs converted to uint8.
    to_u8: HashSet<OpId>,
    /// DQ ops standing for weights/biases ONNX Runtime quantizes itself, with the integer
    /// type they read.
    synthetic: HashMap<OpId, DType>,
    /// Ops ONNX Runtime removes, with why.
    removed: BTreeMap<OpId, String>,
    /// Values ONNX Runtime turns into initializers by constant folding (with the value
    /// when qrange can compute it).
    folded: HashMap<ValueId, Option<Tensor>>,
    notes: BTreeMap<OpId, Vec<String>>,
}

/// The units of `model`'s main graph for ONNX Runtime's CPU provider.
pub fn units(model: &Model, platform: Platform) -> Result<Vec<Unit>, LintError> {
    let original = &model.graph;
    let order = original.topo_order()?;
    // Value shapes as ONNX Runtime infers them (Shape folding and scalar checks read them);
    // best effort: a model shape inference cannot follow is linted with the shapes it has.
    let mut typed = model.clone();
    // ONNX Runtime reads a declared input dimension of -1 as a value (so `Shape` of such a
    // tensor folds); shape inference here would forget it, so 1 stands in for it.
    let inputs = typed.graph.inputs.clone();
    for v in inputs {
        if let Some(ValueType::Tensor {
            shape: Some(dims), ..
        }) = &mut typed.graph.value_mut(v).ty
        {
            for d in dims.iter_mut() {
                if matches!(d, Dim::Known(k) if *k < 0) {
                    *d = Dim::Known(1);
                }
            }
        }
    }
    let _ = InferShapes.run(&mut typed, &mut PassCx::default());
    let mut sim = Sim {
        model,
        g: if typed.graph.topo_order().is_ok() {
            typed.graph
        } else {
            original.clone()
        },
        opset: model.opset("").unwrap_or(1),
        int8_allowed: platform == Platform::Arm64,
        to_u8: HashSet::new(),
        synthetic: HashMap::new(),
        removed: BTreeMap::new(),
        folded: HashMap::new(),
        notes: BTreeMap::new(),
    };
    sim.eliminate_noops();
    sim.ensure_unique_dq()?;
    // Level 1 runs until nothing changes; two rounds reach that for these steps.
    for _ in 0..2 {
        sim.constant_fold()?;
        sim.propagate()?;
        sim.quantize_weights_and_biases()?;
        sim.ensure_unique_dq()?;
    }
    sim.remove_clipping_activations()?;
    if !sim.int8_allowed {
        sim.convert_s8_pairs()?;
    }

    let mut out = Vec::new();
    let mut absorbed: BTreeMap<OpId, String> = BTreeMap::new();
    let mut verdicts: Vec<(OpId, Verdict, Vec<Warning>)> = Vec::new();
    for &o in &order {
        let op = original.op(o);
        if is_q(original, o) || is_dq(original, o) || never_a_unit(&op.op_type) {
            continue;
        }
        let touches = |g: &Graph| {
            g.inputs_of(o)
                .into_iter()
                .flatten()
                .any(|v| g.producer(v).is_some_and(|(p, _)| is_dq(g, p)))
                || g.outputs_of(o)
                    .into_iter()
                    .flatten()
                    .any(|v| g.consumers(v).iter().any(|(c, _)| is_q(g, *c)))
        };
        let present = !sim.removed.contains_key(&o);
        if !(touches(original) || (present && touches(&sim.g))) {
            continue;
        }
        let (verdict, warnings) = match sim.removed.get(&o) {
            Some(why) => (Verdict::Removed { why: why.clone() }, Vec::new()),
            None => match sim.verdict(o) {
                Ok((v, w, clip)) => {
                    if let Some(c) = clip {
                        absorbed.insert(
                            c,
                            format!(
                                "absorbed into the fused unit of '{}'",
                                original.op(o).display_name()
                            ),
                        );
                    }
                    (v, w)
                }
                Err(reason) => (Verdict::Float { reason }, Vec::new()),
            },
        };
        verdicts.push((o, verdict, warnings));
    }
    for (o, verdict, warnings) in verdicts {
        let op = original.op(o);
        let verdict = match absorbed.get(&o) {
            Some(why) => Verdict::Removed { why: why.clone() },
            None => verdict,
        };
        out.push(Unit {
            node: op.display_name().to_string(),
            name: op.name.clone().filter(|n| !n.is_empty()),
            op_type: op.op_type.clone(),
            domain: op.domain_key().to_string(),
            kind: if DATA_MOVEMENT.contains(&op.op_type.as_str()) {
                UnitKind::DataMovement
            } else {
                UnitKind::Compute
            },
            outputs: original
                .outputs_of(o)
                .into_iter()
                .flatten()
                .map(|v| original.value(v).name.clone())
                .collect(),
            verdict,
            notes: sim.notes.remove(&o).unwrap_or_default(),
            warnings,
        });
    }
    Ok(out)
}

impl<'m> Sim<'m> {
    fn note(&mut self, o: OpId, text: String) {
        let v = self.notes.entry(o).or_default();
        if !v.contains(&text) {
            v.push(text);
        }
    }

    fn name(&self, o: OpId) -> String {
        self.g.op(o).display_name().to_string()
    }

    fn vname(&self, v: ValueId) -> String {
        self.g.value(v).name.clone()
    }

    /// The value of a constant (initializer, Constant output or folded value) when known.
    fn konst(&self, v: ValueId) -> Option<Tensor> {
        if let Some(t) = self.folded.get(&v) {
            return t.clone();
        }
        const_tensor(self.model, &self.g, v)
    }

    /// A constant initializer as ONNX Runtime sees it after constant folding (an
    /// initializer that is also a graph input can be overridden, so it is not constant).
    fn is_const(&self, v: ValueId) -> bool {
        if self.folded.contains_key(&v) {
            return true;
        }
        match self.g.value(v).init {
            Some(_) => !(self.g.is_input(v) && self.model.ir_version.unwrap_or(0) >= 4),
            None => self
                .g
                .producer(v)
                .is_some_and(|(p, _)| self.g.op(p).op_type == "Constant"),
        }
    }

    /// An initializer (overridable or not) after constant folding.
    fn is_initializer(&self, v: ValueId) -> bool {
        self.g.value(v).init.is_some() || self.is_const(v)
    }

    fn dims(&self, v: ValueId) -> Option<Vec<i64>> {
        if let Some(t) = self.g.value(v).init {
            return Some(self.g.tensor(t).dims.clone());
        }
        if let Some(t) = self.konst(v) {
            return Some(t.shape().iter().map(|&d| d as i64).collect());
        }
        self.g.value(v).ty.as_ref().and_then(|t| t.known_dims())
    }

    fn dtype(&self, v: ValueId) -> Option<DType> {
        if let Some(t) = self.g.value(v).init {
            return Some(self.g.tensor(t).dtype);
        }
        if let Some(Some(t)) = self.folded.get(&v) {
            return Some(t.dtype());
        }
        self.g.value(v).dtype()
    }

    fn is_scalar(&self, v: ValueId) -> bool {
        self.dims(v).is_some_and(|d| is_scalar_shape(&d))
    }

    /// A constant scalar's value.
    fn const_scalar(&self, v: ValueId) -> Option<f64> {
        if !self.is_scalar(v) {
            return None;
        }
        self.konst(v)?.to_f64_vec()?.first().copied()
    }

    /// Number of (consumer, slot) edges reading `v`.
    fn edges(&self, v: ValueId) -> usize {
        self.g.consumers(v).len()
    }

    /// The single consumer edge of `o`'s only output, when `o` has exactly one and the
    /// output is no graph output (ONNX Runtime's `CheckOutputEdges(node, 1)`).
    fn single_edge(&self, o: OpId) -> Option<(OpId, usize)> {
        let outs: Vec<ValueId> = self.g.outputs_of(o).into_iter().flatten().collect();
        let mut edges = Vec::new();
        for v in &outs {
            if self.g.is_output(*v) {
                return None;
            }
            edges.extend(self.g.consumers(*v));
        }
        (edges.len() == 1).then(|| edges[0])
    }

    /// Scale and zero point of a Q/DQ are constant scalars (zero point may be absent).
    fn scalar_params(&self, o: OpId) -> bool {
        let Some(s) = self.g.input(o, 1) else {
            return false;
        };
        if self.const_scalar(s).is_none() {
            return false;
        }
        match self.g.input(o, 2) {
            Some(z) => self.const_scalar(z).is_some(),
            None => true,
        }
    }

    fn is_onnx_q(&self, o: OpId) -> bool {
        let op = self.g.op(o);
        op.op_type == "QuantizeLinear" && op.domain_key().is_empty()
    }

    /// Integer type a QuantizeLinear writes.
    fn q_out_dtype(&self, q: OpId) -> Option<DType> {
        if self.to_u8.contains(&q) {
            return Some(DType::U8);
        }
        if let Some(z) = self.g.input(q, 2) {
            return self.dtype(z);
        }
        if let Some(AttrValue::Int(code)) = self.g.op(q).attr("output_dtype") {
            if *code != 0 {
                return Some(DType::from_onnx(*code as i32));
            }
        }
        Some(DType::U8)
    }

    /// Integer type a DequantizeLinear reads.
    fn dq_in_dtype(&self, dq: OpId) -> Option<DType> {
        if self.to_u8.contains(&dq) {
            return Some(DType::U8);
        }
        if let Some(d) = self.synthetic.get(&dq) {
            return Some(*d);
        }
        let x = self.g.input(dq, 0)?;
        if let Some((p, _)) = self.g.producer(x) {
            if is_q(&self.g, p) {
                return self.q_out_dtype(p);
            }
        }
        self.dtype(x)
            .or_else(|| self.g.input(dq, 2).and_then(|z| self.dtype(z)))
    }

    // ----- level 1 -----

    /// Why ONNX Runtime's level-1 rewrite rules delete `o`, if they do: Identity,
    /// inference Dropout, a Cast to the type it already has, a Slice of everything.
    fn noop(&self, o: OpId) -> Option<String> {
        let op = self.g.op(o);
        if !op.domain_key().is_empty() {
            return None;
        }
        let ints = |slot: usize| -> Option<Vec<i64>> {
            let v = self.g.input(o, slot)?;
            if !self.is_const(v) {
                return None;
            }
            self.konst(v)?.to_i64_vec()
        };
        match op.op_type.as_str() {
            "Identity" => Some("ONNX Runtime removes Identity nodes".into()),
            "Dropout" => self
                .g
                .output(o, 1)
                .is_none_or(|m| self.g.consumers(m).is_empty() && !self.g.is_output(m))
                .then(|| "ONNX Runtime removes Dropout nodes at inference".into()),
            "Cast" => {
                let to = op.attr_int("to")?;
                let x = self.g.input(o, 0)?;
                (self.dtype(x)? == DType::from_onnx(to as i32)).then(|| {
                    "ONNX Runtime removes this Cast: its input has that type already".into()
                })
            }
            "Slice" => {
                let since = since_version("Slice", self.opset)?;
                let (starts, ends) = if since == 1 {
                    (
                        op.attr_ints("starts")?.to_vec(),
                        op.attr_ints("ends")?.to_vec(),
                    )
                } else {
                    let (s, e) = (ints(1)?, ints(2)?);
                    if let Some(a) = self.g.input(o, 3) {
                        let axes = ints(3)?;
                        if self.dims(a).map(|d| d.len()) != Some(1) || axes.len() != s.len() {
                            return None;
                        }
                        if self.g.input(o, 4).is_some() {
                            let steps = ints(4)?;
                            if steps.len() != s.len() || steps.iter().any(|x| *x != 1) {
                                return None;
                            }
                        }
                    }
                    (s, e)
                };
                (!starts.is_empty()
                    && starts.len() == ends.len()
                    && starts
                        .iter()
                        .zip(&ends)
                        .all(|(s, e)| *s == 0 && *e == i64::MAX))
                .then(|| "ONNX Runtime removes this Slice: it keeps the whole tensor".into())
            }
            _ => None,
        }
    }

    /// ONNX Runtime's level-1 rewrite rules that delete no-op nodes.
    fn eliminate_noops(&mut self) {
        let cands: Vec<(OpId, String)> = self
            .g
            .ops()
            .filter_map(|o| self.noop(o).map(|why| (o, why)))
            .collect();
        for (o, why) in cands {
            let (Some(x), Some(y)) = (self.g.input(o, 0), self.g.output(o, 0)) else {
                continue;
            };
            if self.g.is_output(y) {
                continue;
            }
            self.g.replace_all_uses(y, x);
            self.g.remove_op_and_dead_outputs(o);
            self.removed.insert(o, why);
        }
    }

    /// ConstantFolding: a deterministic node whose inputs are all constant (DequantizeLinear
    /// excepted) becomes initializers, and so does `Shape` of a value whose dims are known;
    /// nodes left without readers are removed with it.
    fn constant_fold(&mut self) -> Result<(), LintError> {
        const RANDOM: &[&str] = &[
            "Bernoulli",
            "Multinomial",
            "RandomNormal",
            "RandomNormalLike",
            "RandomUniform",
            "RandomUniformLike",
        ];
        let mut gone: HashSet<OpId> = HashSet::new();
        for o in self.g.topo_order()? {
            if gone.contains(&o) {
                continue;
            }
            let op = self.g.op(o);
            if op.op_type == "DequantizeLinear"
                || !matches!(op.domain_key(), "" | "com.microsoft")
                || RANDOM.contains(&op.op_type.as_str())
                || !op.subgraphs().is_empty()
            {
                continue;
            }
            let inputs = self.g.inputs_of(o);
            let outs = self.g.outputs_of(o);
            let values: Option<Vec<Tensor>> = if op.op_type == "Shape" {
                let Some(dims) = inputs
                    .first()
                    .copied()
                    .flatten()
                    .and_then(|x| self.g.value(x).ty.as_ref().and_then(|t| t.known_dims()))
                else {
                    continue;
                };
                eval::shape_from_dims(op, &dims).ok().map(|t| vec![t])
            } else {
                if !inputs.iter().flatten().all(|v| self.is_const(*v)) {
                    continue;
                }
                if op.op_type == "Constant" {
                    eval::constant_value(op).ok().map(|t| vec![t])
                } else if eval::supports(op) {
                    let vals: Vec<Option<Tensor>> = inputs
                        .iter()
                        .map(|v| v.and_then(|v| self.konst(v)))
                        .collect();
                    if vals
                        .iter()
                        .zip(&inputs)
                        .all(|(t, v)| t.is_some() || v.is_none())
                    {
                        let refs: Vec<Option<&Tensor>> = vals.iter().map(|t| t.as_ref()).collect();
                        eval::eval(op, &refs, self.opset, 1 << 16).ok()
                    } else {
                        None
                    }
                } else {
                    None
                }
            };
            let what = op.op_type.clone();
            self.g.remove_op(o);
            gone.insert(o);
            self.removed.insert(
                o,
                format!("ONNX Runtime folds this {what} into a constant (its inputs are constant)"),
            );
            for (i, v) in outs.iter().enumerate() {
                if let Some(v) = v {
                    let t = values.as_ref().and_then(|vals| vals.get(i).cloned());
                    self.folded.insert(*v, t);
                }
            }
            for x in inputs.into_iter().flatten() {
                self.remove_dead_from(x, &mut gone);
            }
        }
        Ok(())
    }

    /// Removes the producer of `v` (and upwards) when nothing reads its outputs any more.
    fn remove_dead_from(&mut self, v: ValueId, gone: &mut HashSet<OpId>) {
        let Some((p, _)) = self.g.producer(v) else {
            return;
        };
        let outs: Vec<ValueId> = self.g.outputs_of(p).into_iter().flatten().collect();
        if outs
            .iter()
            .any(|o| self.g.is_output(*o) || !self.g.consumers(*o).is_empty())
        {
            return;
        }
        let inputs: Vec<ValueId> = self.g.inputs_of(p).into_iter().flatten().collect();
        let what = self.g.op(p).op_type.clone();
        self.g.remove_op(p);
        gone.insert(p);
        self.removed.entry(p).or_insert_with(|| {
            format!("ONNX Runtime removes this {what}: only a constant-folded node read it")
        });
        for x in inputs {
            self.remove_dead_from(x, gone);
        }
    }

    /// Every consumer gets its own DequantizeLinear (EnsureUniqueDQForNodeUnit).
    fn ensure_unique_dq(&mut self) -> Result<(), LintError> {
        for dq in self.g.topo_order()? {
            if !is_dq(&self.g, dq) {
                continue;
            }
            let Some(out) = self.g.output(dq, 0) else {
                continue;
            };
            let edges = self.g.consumers(out);
            let is_output = self.g.is_output(out);
            if edges.is_empty() || (edges.len() == 1 && !is_output) {
                continue;
            }
            let skip = usize::from(!is_output);
            let dq_name = self.name(dq);
            for (c, _) in &edges {
                self.note(
                    *c,
                    format!(
                        "DequantizeLinear '{dq_name}' is shared; ONNX Runtime gives each reader its own copy"
                    ),
                );
            }
            for (c, slot) in edges.into_iter().skip(skip) {
                let inputs = self.g.inputs_of(dq);
                let mut op = self.g.op(dq).clone();
                op.name = Some(format!("{dq_name}/duplicated"));
                op.order = self.g.order_after(dq);
                let ty = self.g.value(out).ty.clone();
                let base = format!("{}/duplicated", self.vname(out));
                let nv = self.g.add_fresh_value(&base, ty);
                let new = self.g.add_op(op, &inputs, &[Some(nv)])?;
                self.g.set_input(c, slot, Some(nv));
                if self.to_u8.contains(&dq) {
                    self.to_u8.insert(new);
                }
            }
        }
        Ok(())
    }

    /// ONNX Runtime's `CanNodePropagate`.
    fn can_propagate(&self, o: OpId) -> bool {
        let op = self.g.op(o);
        if !op.domain_key().is_empty() {
            return false;
        }
        match op.op_type.as_str() {
            "MaxPool" => since_version("MaxPool", self.opset).is_some_and(|v| v >= 12),
            "Reshape" => since_version("Reshape", self.opset).is_some_and(|v| v >= 5),
            "Transpose" | "Squeeze" | "Unsqueeze" | "Slice" => true,
            _ => false,
        }
    }

    /// Inserts `Q → DQ` on value `v` for the given readers (and the graph output when
    /// `to_output`), with the scale and zero point of `like` (a Q or DQ).
    fn insert_pair(
        &mut self,
        v: ValueId,
        readers: &[(OpId, usize)],
        to_output: bool,
        like: OpId,
    ) -> Result<Vec<OpId>, LintError> {
        let scale = self.g.input(like, 1);
        let zp = self.g.input(like, 2);
        let base = self.vname(v);
        let domain = self.g.op(like).domain.clone();
        let mut q = Op::new("QuantizeLinear", &format!("{base}_q"));
        q.domain = domain.clone();
        let qv = self.g.add_fresh_value(&format!("{base}_q_to_dq"), None);
        let mut ins = vec![Some(v), scale];
        if zp.is_some() {
            ins.push(zp);
        }
        let qo = self.g.add_op(q, &ins, &[Some(qv)])?;
        let mut created = vec![qo];
        let mut dq_ins = vec![Some(qv), scale];
        if zp.is_some() {
            dq_ins.push(zp);
        }
        for (i, (c, slot)) in readers.iter().enumerate() {
            let mut dq = Op::new("DequantizeLinear", &format!("{base}_dq{i}"));
            dq.domain = domain.clone();
            let ty = self.g.value(v).ty.clone();
            let dv = self.g.add_fresh_value(&format!("{base}_post_dq"), ty);
            created.push(self.g.add_op(dq, &dq_ins, &[Some(dv)])?);
            self.g.set_input(*c, *slot, Some(dv));
        }
        if to_output {
            let mut dq = Op::new("DequantizeLinear", &format!("{base}_dq_out"));
            dq.domain = domain;
            let ty = self.g.value(v).ty.clone();
            let dv = self.g.add_fresh_value(&format!("{base}_post_dq"), ty);
            created.push(self.g.add_op(dq, &dq_ins, &[Some(dv)])?);
            for out in &mut self.g.outputs {
                if *out == v {
                    *out = dv;
                }
            }
        }
        Ok(created)
    }

    /// The edge into input 0 of `o` that propagation may follow: from a node whose
    /// output has that single reader and is no graph output (`GetPreviousEdge`).
    /// `Some(None)` = the input is a graph input or initializer.
    fn previous_edge(&self, o: OpId) -> Option<Option<OpId>> {
        let x = self.g.input(o, 0)?;
        match self.g.producer(x) {
            None => Some(None),
            Some((p, _)) => (!self.g.is_output(x) && self.edges(x) == 1).then_some(Some(p)),
        }
    }

    /// Readers of `o`'s output 0 that forward propagation continues into, without those
    /// that are already QuantizeLinear (`GetNextPropagationEdges`); the bool is the
    /// graph-output edge.
    fn next_edges(&self, o: OpId) -> (Vec<(OpId, usize)>, bool) {
        let Some(v) = self.g.output(o, 0) else {
            return (Vec::new(), false);
        };
        let edges = self.g.consumers(v);
        let is_output = self.g.is_output(v);
        if edges.is_empty() {
            return (Vec::new(), is_output);
        }
        if is_output {
            return (Vec::new(), false);
        }
        (
            edges
                .into_iter()
                .filter(|(c, _)| !is_q(&self.g, *c))
                .collect(),
            false,
        )
    }

    /// QDQPropagationTransformer: Q backwards, then DQ forwards.
    fn propagate(&mut self) -> Result<(), LintError> {
        let order = self.g.topo_order()?;
        for &q in &order {
            if !is_q(&self.g, q) || !self.scalar_params(q) {
                continue;
            }
            // The edge into the Q, then backwards while the source can propagate.
            let Some(Some(mut src)) = self.previous_edge(q) else {
                continue;
            };
            loop {
                if !self.can_propagate(src) {
                    break;
                }
                let Some(prev) = self.previous_edge(src) else {
                    break;
                };
                if let Some(p) = prev {
                    if is_dq(&self.g, p) {
                        break;
                    }
                }
                let x = self.g.input(src, 0).expect("previous edge has an input");
                self.insert_pair(x, &[(src, 0)], false, q)?;
                let qn = self.name(q);
                self.note(
                    src,
                    format!(
                        "ONNX Runtime inserts a Q/DQ pair before it, with the parameters of '{qn}'"
                    ),
                );
                match prev {
                    Some(p) => src = p,
                    None => break,
                }
            }
        }
        for &dq in &order {
            if !is_dq(&self.g, dq) {
                continue;
            }
            let Some((first, _)) = self.single_edge(dq) else {
                continue;
            };
            if !self.scalar_params(dq) {
                continue;
            }
            let dqn = self.name(dq);
            let mut stack: Vec<OpId> = Vec::new();
            if self.can_propagate(first) {
                stack.push(first);
            }
            while let Some(node) = stack.pop() {
                let (readers, to_output) = self.next_edges(node);
                if readers.is_empty() && !to_output {
                    continue;
                }
                let v = self.g.output(node, 0).expect("next edges exist");
                self.insert_pair(v, &readers, to_output, dq)?;
                self.note(
                    node,
                    format!(
                        "ONNX Runtime inserts a Q/DQ pair after it, with the parameters of '{dqn}'"
                    ),
                );
                for (c, _) in readers {
                    if self.can_propagate(c) {
                        stack.push(c);
                    }
                }
            }
        }
        Ok(())
    }

    /// `IsNoBranchPathToQuantizeLinear`: the output leads, through Relu/Clip only and
    /// without branching, to a QuantizeLinear.
    fn no_branch_path_to_q(&self, o: OpId) -> bool {
        let mut cur = o;
        loop {
            if self.g.op(cur).n_outputs != 1 {
                return false;
            }
            let Some(v) = self.g.output(cur, 0) else {
                return false;
            };
            let consumers: BTreeSet<OpId> =
                self.g.consumers(v).into_iter().map(|(c, _)| c).collect();
            if consumers.len() != 1 {
                return false;
            }
            let c = *consumers.iter().next().expect("one consumer");
            match self.g.op(c).op_type.as_str() {
                "QuantizeLinear" => return true,
                "Relu" | "Clip" => cur = c,
                _ => return false,
            }
        }
    }

    fn add_synthetic_dq(&mut self, o: OpId, slot: usize, dtype: DType) -> Result<(), LintError> {
        let v = self.g.input(o, slot).expect("slot has a value");
        let base = format!("{}_dq", self.vname(v));
        let ty = self.g.value(v).ty.clone();
        let nv = self.g.add_fresh_value(&base, ty);
        let mut op = Op::new("DequantizeLinear", &base);
        op.order = self.g.order_before(o);
        let dq = self.g.add_op(op, &[Some(v)], &[Some(nv)])?;
        self.synthetic.insert(dq, dtype);
        self.g.set_input(o, slot, Some(nv));
        Ok(())
    }

    /// WeightBiasQuantization: float weight/bias initializers of Conv, ConvTranspose and
    /// Gemm become int8/int32 + DQ when input 0 is dequantized per tensor and the output
    /// leads to a QuantizeLinear.
    fn quantize_weights_and_biases(&mut self) -> Result<(), LintError> {
        for o in self.g.topo_order()? {
            let op_type = self.g.op(o).op_type.clone();
            if !matches!(op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm") {
                continue;
            }
            let (Some(x), Some(w)) = (self.g.input(o, 0), self.g.input(o, 1)) else {
                continue;
            };
            let bias = self.g.input(o, 2);
            let Some((p0, _)) = self.g.producer(x) else {
                continue;
            };
            if self.g.op(p0).op_type != "DequantizeLinear"
                || !self.g.input(p0, 1).is_some_and(|s| self.is_scalar(s))
            {
                continue;
            }
            if !self.no_branch_path_to_q(o) {
                continue;
            }
            let dq1 = self
                .g
                .producer(w)
                .map(|(p, _)| p)
                .filter(|p| self.g.op(*p).op_type == "DequantizeLinear");
            if dq1.is_none() && !(self.is_initializer(w) && self.dtype(w) == Some(DType::F32)) {
                continue;
            }
            let bias_size = match bias {
                Some(b) => {
                    let dims = self.dims(b);
                    if !self.is_initializer(b) || dims.as_ref().is_none_or(|d| d.len() != 1) {
                        continue;
                    }
                    Some(dims.expect("checked")[0])
                }
                None => None,
            };
            if dq1.is_some() && bias_size.is_none() {
                continue;
            }
            if let Some(d) = dq1 {
                let scale = self.g.input(d, 1);
                if !scale.is_some_and(|s| self.is_scalar(s)) {
                    let sdims = scale.and_then(|s| self.dims(s));
                    if sdims.as_deref() != Some(&[bias_size.unwrap_or(-1)][..]) {
                        continue;
                    }
                    if self.g.op(d).attr_int("block_size").unwrap_or(0) != 0 {
                        continue;
                    }
                    let mut axis = self.g.op(d).attr_int("axis").unwrap_or(1);
                    if axis < 0 {
                        let rank = self
                            .dims(w)
                            .or_else(|| self.g.input(d, 0).and_then(|x| self.dims(x)))
                            .map(|d| d.len() as i64);
                        match rank {
                            Some(r) => axis += r,
                            None => continue,
                        }
                    }
                    let expected = if op_type == "Gemm" {
                        if self.g.op(o).attr_int("transB").unwrap_or(0) == 0 {
                            1
                        } else {
                            0
                        }
                    } else {
                        0
                    };
                    if axis != expected {
                        continue;
                    }
                }
            }
            if dq1.is_none() {
                let wn = self.vname(w);
                self.add_synthetic_dq(o, 1, DType::I8)?;
                self.note(
                    o,
                    format!("ONNX Runtime quantizes the float weight '{wn}' to int8 itself"),
                );
            }
            if let Some(b) = bias {
                let bn = self.vname(b);
                self.add_synthetic_dq(o, 2, DType::I32)?;
                self.note(
                    o,
                    format!("ONNX Runtime quantizes the float bias '{bn}' to int32 itself"),
                );
            }
        }
        Ok(())
    }

    // ----- level 2 -----

    /// `[min, max]` of a Clip from its inputs (opset ≥ 11) or attributes.
    fn clip_bounds(&self, o: OpId) -> Option<(f64, f64)> {
        let op = self.g.op(o);
        let mut lo = f32::MIN as f64;
        let mut hi = f32::MAX as f64;
        if let Some(v) = op.attr_float("min") {
            lo = v as f64;
        }
        if let Some(v) = op.attr_float("max") {
            hi = v as f64;
        }
        if let Some(m) = self.g.input(o, 1) {
            lo = *self.konst(m)?.to_f64_vec()?.first()?;
        }
        if let Some(m) = self.g.input(o, 2) {
            hi = *self.konst(m)?.to_f64_vec()?.first()?;
        }
        Some((lo, hi))
    }

    /// A rank-0 constant (ONNX Runtime reads these Q parameters only as rank 0).
    fn rank0(&self, v: ValueId) -> Option<(f64, DType)> {
        let t = self.konst(v)?;
        if !t.shape().is_empty() {
            return None;
        }
        Some((*t.to_f64_vec()?.first()?, t.dtype()))
    }

    /// True when Q's range already clips like the Relu/Clip `act` before it.
    fn q_makes_redundant(&self, act: OpId, q: OpId) -> bool {
        let Some(s) = self.g.input(q, 1) else {
            return false;
        };
        let Some((scale, sdt)) = self.rank0(s) else {
            return false;
        };
        if sdt != DType::F32 {
            return false;
        }
        let (zp, zdt) = match self.g.input(q, 2) {
            Some(z) => match self.rank0(z) {
                Some(p) => p,
                None => return false,
            },
            None => (0.0, self.q_out_dtype(q).unwrap_or(DType::U8)),
        };
        let Some((tmin, tmax)) = type_min_max(zdt) else {
            return false;
        };
        match self.g.op(act).op_type.as_str() {
            "Relu" => zp as i64 == tmin,
            "Clip" => {
                let Some((lo, hi)) = self.clip_bounds(act) else {
                    return false;
                };
                let qlo = (lo / scale).round_ties_even() + zp;
                let qhi = (hi / scale).round_ties_even() + zp;
                qlo <= tmin as f64 && qhi >= tmax as f64
            }
            _ => false,
        }
    }

    /// ReluQuantFusion / ClipQuantFusion: a Relu or Clip whose only reader is a
    /// QuantizeLinear that already clips the same way is removed.
    fn remove_clipping_activations(&mut self) -> Result<(), LintError> {
        for o in self.g.topo_order()? {
            let op = self.g.op(o);
            if !op.domain_key().is_empty() || !matches!(op.op_type.as_str(), "Relu" | "Clip") {
                continue;
            }
            let Some((q, _)) = self.single_edge(o) else {
                continue;
            };
            if !self.is_onnx_q(q) || self.g.input(q, 2).is_none() {
                continue;
            }
            let remove = if op.op_type == "Relu" {
                let z = self.g.input(q, 2).expect("checked");
                match (self.konst(z), self.dtype(z)) {
                    (Some(t), Some(d)) if t.len() == 1 => {
                        let zp = t.to_f64_vec().and_then(|v| v.first().copied());
                        type_min_max(d).is_some_and(|(lo, _)| zp == Some(lo as f64))
                    }
                    _ => false,
                }
            } else {
                self.clip_removable(o, q)
            };
            if !remove {
                continue;
            }
            let (Some(x), Some(y)) = (self.g.input(o, 0), self.g.output(o, 0)) else {
                continue;
            };
            let qn = self.name(q);
            let what = self.g.op(o).op_type.clone();
            self.g.replace_all_uses(y, x);
            self.g.remove_op_and_dead_outputs(o);
            self.removed.insert(
                o,
                format!(
                    "ONNX Runtime removes this {what}: QuantizeLinear '{qn}' already clips to the same range"
                ),
            );
        }
        Ok(())
    }

    fn clip_removable(&self, clip: OpId, q: OpId) -> bool {
        let (Some(s), Some(z)) = (self.g.input(q, 1), self.g.input(q, 2)) else {
            return false;
        };
        let (Some((scale, sdt)), Some((zp, zdt))) = (self.rank0(s), self.rank0(z)) else {
            return false;
        };
        if sdt != DType::F32 {
            return false;
        }
        let Some((lo, hi)) = self.clip_bounds(clip) else {
            return false;
        };
        match zdt {
            DType::I8 | DType::U8 => {
                let (tmin, tmax) = type_min_max(zdt).expect("8-bit");
                let lower = scale * (tmin as f64 - zp);
                let upper = scale * (tmax as f64 - zp);
                let eps = f32::EPSILON as f64;
                !(eps < lo - lower || eps < upper - hi)
            }
            _ => self.q_makes_redundant(clip, q),
        }
    }

    /// QDQS8ToU8Transformer (x86-64): an int8 Q whose only reader is a DQ, both with the
    /// same constant int8 zero point, becomes uint8.
    fn convert_s8_pairs(&mut self) -> Result<(), LintError> {
        for q in self.g.topo_order()? {
            if !is_q(&self.g, q) {
                continue;
            }
            let Some((dq, _)) = self.single_edge(q) else {
                continue;
            };
            if !is_dq(&self.g, dq) {
                continue;
            }
            let (Some(qz), Some(dz)) = (self.g.input(q, 2), self.g.input(dq, 2)) else {
                continue;
            };
            let (Some(a), Some(b)) = (self.konst(qz), self.konst(dz)) else {
                continue;
            };
            if a.len() != 1 || b.len() != 1 || a.dtype() != DType::I8 || b.dtype() != DType::I8 {
                continue;
            }
            if a.to_f64_vec() != b.to_f64_vec() {
                continue;
            }
            self.to_u8.insert(q);
            self.to_u8.insert(dq);
        }
        Ok(())
    }

    // ----- selectors -----

    fn selection(&self, o: OpId) -> Result<Selection, Reason> {
        let dqs: Vec<(usize, OpId)> = self
            .g
            .inputs_of(o)
            .into_iter()
            .enumerate()
            .filter_map(|(slot, v)| {
                let (p, _) = self.g.producer(v?)?;
                (self.g.op(p).op_type == "DequantizeLinear").then_some((slot, p))
            })
            .collect();
        let q_children = |n: OpId| -> Vec<OpId> {
            self.g
                .outputs_of(n)
                .into_iter()
                .flatten()
                .flat_map(|v| self.g.consumers(v))
                .map(|(c, _)| c)
                .filter(|c| self.g.op(*c).op_type == "QuantizeLinear")
                .collect()
        };
        let out_edges: Vec<(OpId, usize)> = self
            .g
            .outputs_of(o)
            .into_iter()
            .flatten()
            .flat_map(|v| self.g.consumers(v))
            .collect();
        let mut clip = None;
        if out_edges.len() == 1 {
            let next = out_edges[0].0;
            if matches!(self.g.op(next).op_type.as_str(), "Relu" | "Clip") {
                let outs: Vec<ValueId> = self.g.outputs_of(next).into_iter().flatten().collect();
                let n_edges: usize = outs.iter().map(|v| self.edges(*v)).sum();
                if n_edges == 1 && !outs.iter().any(|v| self.g.is_output(*v)) {
                    clip = Some(next);
                }
            }
        }
        let qs = q_children(clip.unwrap_or(o));
        if let Some(c) = clip {
            if qs.len() != 1 {
                return Err(Reason::MissingOutputQ {
                    value: self.first_output(o),
                    note: Some(format!(
                        "{} '{}' follows it, with no QuantizeLinear after",
                        self.g.op(c).op_type,
                        self.name(c)
                    )),
                });
            }
            if !self.q_makes_redundant(c, qs[0]) {
                return Err(Reason::ActivationBetween {
                    node: self.name(c),
                    op_type: self.g.op(c).op_type.clone(),
                });
            }
        }
        Ok(Selection { dqs, qs, clip })
    }

    /// The first existing input slot (of `slots`) that no DQ feeds.
    fn missing_dq(&self, o: OpId, sel: &Selection, slots: &[usize]) -> Reason {
        let inputs = self.g.inputs_of(o);
        for &s in slots {
            let Some(Some(v)) = inputs.get(s) else {
                continue;
            };
            if sel.dqs.iter().all(|(ds, _)| *ds != s) {
                let op_type = &self.g.op(o).op_type;
                let note = if matches!(op_type.as_str(), "Conv" | "Gemm") && s >= 1 {
                    let what = if s == 1 { "weight" } else { "bias" };
                    if self.is_initializer(*v) {
                        Some(format!(
                            "ONNX Runtime quantizes a float {what} itself only when input 0 is \
                             dequantized per tensor and the output leads to a QuantizeLinear"
                        ))
                    } else {
                        None
                    }
                } else {
                    None
                };
                return Reason::MissingInputDq {
                    slot: s,
                    value: self.vname(*v),
                    note,
                };
            }
        }
        Reason::UnexpectedDq {
            count: sel.dqs.len(),
            expected: slots.len(),
        }
    }

    /// `CheckQDQNodes` + `CanCreateNodeGroup`. `slots`: the inputs that need a DQ
    /// (`None` = every existing input).
    fn check_qdq_nodes(
        &self,
        o: OpId,
        sel: &Selection,
        slots: Option<&[usize]>,
        allow_empty_q: bool,
    ) -> Result<(), Reason> {
        let inputs = self.g.inputs_of(o);
        let all: Vec<usize> = (0..inputs.len()).filter(|s| inputs[*s].is_some()).collect();
        let slots = slots.unwrap_or(&all);
        if sel.dqs.len() != slots.len() {
            if sel.dqs.len() < slots.len() {
                return Err(self.missing_dq(o, sel, slots));
            }
            return Err(Reason::UnexpectedDq {
                count: sel.dqs.len(),
                expected: slots.len(),
            });
        }
        for (_, dq) in &sel.dqs {
            let Some(out) = self.g.output(*dq, 0) else {
                return Err(Reason::SharedDq { dq: self.name(*dq) });
            };
            let edges = self.g.consumers(out);
            if self.g.is_output(out) || edges.len() != 1 || edges[0].0 != o {
                return Err(Reason::SharedDq { dq: self.name(*dq) });
            }
        }
        let producer = sel.clip.unwrap_or(o);
        if !sel.qs.is_empty() {
            for v in self.g.outputs_of(producer).into_iter().flatten() {
                let cons = self.g.consumers(v);
                let nq = cons
                    .iter()
                    .filter(|(c, _)| self.g.op(*c).op_type == "QuantizeLinear")
                    .count();
                if nq > 0 && nq != cons.len() {
                    return Err(Reason::MixedConsumers {
                        value: self.vname(v),
                    });
                }
                if nq > 0 && self.g.is_output(v) {
                    return Err(Reason::GraphOutput {
                        value: self.vname(v),
                    });
                }
            }
        }
        let outs: Vec<ValueId> = self.g.outputs_of(o).into_iter().flatten().collect();
        if sel.qs.is_empty() {
            if allow_empty_q {
                return Ok(());
            }
            let v = outs.first().copied();
            return Err(Reason::MissingOutputQ {
                value: v.map(|v| self.vname(v)).unwrap_or_default(),
                note: None,
            });
        }
        if let Some(v) = outs.iter().find(|v| self.g.is_output(**v)) {
            return Err(Reason::GraphOutput {
                value: self.vname(*v),
            });
        }
        let edge_count: usize = outs.iter().map(|v| self.edges(*v)).sum();
        if outs.len() != sel.qs.len() || sel.qs.len() != edge_count {
            for v in &outs {
                let cons = self.g.consumers(*v);
                let has_q = cons
                    .iter()
                    .any(|(c, _)| self.g.op(*c).op_type == "QuantizeLinear");
                if !has_q && sel.clip.is_none() {
                    return Err(Reason::MissingOutputQ {
                        value: self.vname(*v),
                        note: None,
                    });
                }
            }
            return Err(Reason::MixedConsumers {
                value: outs.first().map(|v| self.vname(*v)).unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// `IsQDQPairSupported`: both have zero points, all four parameters are constant
    /// scalars, and Q's equal DQ's.
    fn pair_supported(&self, q: OpId, dq: OpId) -> Result<(), Reason> {
        for n in [dq, q] {
            if self.g.input(n, 2).is_none() {
                return Err(Reason::MissingZeroPoint { node: self.name(n) });
            }
        }
        let params = |n: OpId| -> Option<(f64, f64, DType)> {
            let s = self.g.input(n, 1)?;
            let z = self.g.input(n, 2)?;
            let zt = self.konst(z)?;
            if !self.is_scalar(z) {
                return None;
            }
            Some((
                self.const_scalar(s)?,
                *zt.to_f64_vec()?.first()?,
                zt.dtype(),
            ))
        };
        let (Some(a), Some(b)) = (params(dq), params(q)) else {
            let bad = if params(dq).is_none() { dq } else { q };
            return Err(Reason::QParamsNotConstantScalar {
                node: self.name(bad),
            });
        };
        if a != b {
            let show = |p: (f64, f64, DType)| format!("scale {} zero point {} {}", p.0, p.2, p.1);
            return Err(Reason::QParamsDiffer {
                input: show(a),
                output: show(b),
            });
        }
        Ok(())
    }

    fn type_checks(&self, d: Option<DType>, allow_16bit: bool) -> Result<(), Reason> {
        if !allow_16bit && is_16bit(d) {
            return Err(Reason::SixteenBit {
                dtype: d.expect("16-bit"),
            });
        }
        if is_4bit(d) {
            return Err(Reason::FourBit {
                dtype: d.expect("4-bit"),
            });
        }
        Ok(())
    }

    fn mismatch(&self, what: &[(&str, Option<DType>)]) -> Result<(), Reason> {
        let first = what[0].1;
        if what.iter().all(|(_, d)| *d == first) {
            return Ok(());
        }
        Err(Reason::TypeMismatch {
            detail: what
                .iter()
                .map(|(n, d)| format!("{n} {}", dt(*d)))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Why an int8 activation was not turned into uint8 on x86-64.
    fn int8_detail(&self, dq: OpId) -> String {
        let base = "ONNX Runtime runs int8 activations through Conv/MatMul only on arm64";
        let why = match self
            .g
            .input(dq, 0)
            .and_then(|x| self.g.producer(x))
            .map(|(p, _)| p)
        {
            Some(q) if is_q(&self.g, q) => {
                let (n, is_output) = match self.g.output(q, 0) {
                    Some(out) => (self.edges(out), self.g.is_output(out)),
                    None => (0, false),
                };
                if n != 1 || is_output {
                    format!(
                        "on x86-64 it converts an int8 Q/DQ pair to uint8 only when the \
                         QuantizeLinear feeds a single DequantizeLinear, and '{}' feeds {n}",
                        self.name(q)
                    )
                } else {
                    "on x86-64 it converts an int8 Q/DQ pair to uint8 only when both have the \
                     same constant scalar zero point"
                        .to_string()
                }
            }
            _ => {
                "on x86-64 it converts int8 to uint8 only for QuantizeLinear→DequantizeLinear pairs"
                    .to_string()
            }
        };
        format!("{base}; {why}")
    }

    /// Name of `o`'s first output value.
    fn first_output(&self, o: OpId) -> String {
        self.g
            .outputs_of(o)
            .into_iter()
            .flatten()
            .next()
            .map(|v| self.vname(v))
            .unwrap_or_default()
    }

    fn dq_input_name(&self, dq: OpId) -> String {
        self.g
            .input(dq, 0)
            .map(|v| self.vname(v))
            .unwrap_or_default()
    }

    /// The verdict for unit `o`: the fused kernel (with warnings and an absorbed
    /// Relu/Clip), or the first rule it breaks.
    fn verdict(&self, o: OpId) -> Result<(Verdict, Vec<Warning>, Option<OpId>), Reason> {
        let op = self.g.op(o);
        let rule = rule_for(op, self.opset)?;
        let sel = self.selection(o)?;
        let fused = |k: &str| Verdict::Fused {
            kernel: k.to_string(),
        };
        let dq_dt = |i: usize| sel.dqs.get(i).and_then(|(_, d)| self.dq_in_dtype(*d));
        let q_dt = |i: usize| sel.qs.get(i).and_then(|q| self.q_out_dtype(*q));
        let no_clip = |sel: &Selection| -> Result<(), Reason> {
            match sel.clip {
                Some(c) => Err(Reason::ActivationBetween {
                    node: self.name(c),
                    op_type: self.g.op(c).op_type.clone(),
                }),
                None => Ok(()),
            }
        };
        match rule {
            Rule::Drop {
                allow_16bit,
                positive_scale,
            } => {
                no_clip(&sel)?;
                self.check_qdq_nodes(o, &sel, Some(&[0]), false)?;
                self.mismatch(&[("input", dq_dt(0)), ("output", q_dt(0))])?;
                self.type_checks(dq_dt(0), allow_16bit)?;
                let (q, dq) = (sel.qs[0], sel.dqs[0].1);
                if positive_scale {
                    match self.g.input(q, 1).and_then(|s| self.const_scalar(s)) {
                        Some(s) if s > 0.0 => {}
                        Some(s) => return Err(Reason::NonPositiveScale { scale: s }),
                        None => {
                            return Err(Reason::QParamsNotConstantScalar { node: self.name(q) })
                        }
                    }
                }
                self.pair_supported(q, dq)?;
                Ok((Verdict::Dropped, Vec::new(), None))
            }
            Rule::DropDq => {
                no_clip(&sel)?;
                if sel.dqs.len() != 1 {
                    return Err(self.missing_dq(o, &sel, &[0]));
                }
                let dq = sel.dqs[0].1;
                let shared = self
                    .g
                    .output(dq, 0)
                    .is_none_or(|out| self.g.is_output(out) || self.edges(out) != 1);
                if shared {
                    return Err(Reason::SharedDq { dq: self.name(dq) });
                }
                self.type_checks(dq_dt(0), false)?;
                if self.g.input(dq, 2).is_none() {
                    return Err(Reason::MissingZeroPoint {
                        node: self.name(dq),
                    });
                }
                if !self.scalar_params(dq) {
                    return Err(Reason::QParamsNotConstantScalar {
                        node: self.name(dq),
                    });
                }
                Ok((Verdict::Dropped, Vec::new(), None))
            }
            Rule::Split => {
                no_clip(&sel)?;
                self.check_qdq_nodes(o, &sel, Some(&[0]), false)?;
                let d_in = dq_dt(0);
                if is_4bit(d_in) {
                    return Err(Reason::FourBit {
                        dtype: d_in.expect("4-bit"),
                    });
                }
                let dq = sel.dqs[0].1;
                for (i, q) in sel.qs.iter().enumerate() {
                    self.mismatch(&[("input", d_in), ("output", q_dt(i))])?;
                    self.pair_supported(*q, dq)?;
                }
                Ok((Verdict::Dropped, Vec::new(), None))
            }
            Rule::Unary(kernel) => {
                self.check_qdq_nodes(o, &sel, Some(&[0]), false)?;
                self.mismatch(&[("input", dq_dt(0)), ("output", q_dt(0))])?;
                self.type_checks(dq_dt(0), false)?;
                Ok((fused(kernel), Vec::new(), sel.clip))
            }
            Rule::Binary(kernel) => {
                self.check_qdq_nodes(o, &sel, None, false)?;
                self.mismatch(&[
                    ("input A", dq_dt(0)),
                    ("input B", dq_dt(1)),
                    ("output", q_dt(0)),
                ])?;
                self.type_checks(dq_dt(0), false)?;
                Ok((fused(kernel), Vec::new(), sel.clip))
            }
            Rule::Concat => {
                self.check_qdq_nodes(o, &sel, None, false)?;
                let mut types: Vec<(String, Option<DType>)> = (0..sel.dqs.len())
                    .map(|i| (format!("input {}", sel.dqs[i].0), dq_dt(i)))
                    .collect();
                types.push(("output".into(), q_dt(0)));
                let refs: Vec<(&str, Option<DType>)> =
                    types.iter().map(|(n, d)| (n.as_str(), *d)).collect();
                self.mismatch(&refs)?;
                self.type_checks(dq_dt(0), false)?;
                Ok((fused("QLinearConcat"), Vec::new(), sel.clip))
            }
            Rule::Where => {
                self.check_qdq_nodes(o, &sel, Some(&[1, 2]), false)?;
                self.mismatch(&[("X", dq_dt(0)), ("Y", dq_dt(1)), ("output", q_dt(0))])?;
                self.type_checks(dq_dt(0), false)?;
                Ok((fused("QLinearWhere"), Vec::new(), sel.clip))
            }
            Rule::Conv => {
                self.check_qdq_nodes(o, &sel, None, false)?;
                let (d_in, d_w, d_out) = (dq_dt(0), dq_dt(1), q_dt(0));
                // ONNX Runtime compares the types first; an unconverted int8 input is the
                // cause worth naming when both rules fail.
                if d_in == Some(DType::I8) && !self.int8_allowed {
                    self.int8_checks(&sel, d_in, d_w)?;
                }
                self.mismatch(&[("input", d_in), ("output", d_out)])?;
                if is_4bit(d_w) || is_4bit(d_in) {
                    return Err(Reason::FourBit {
                        dtype: if is_4bit(d_w) { d_w } else { d_in }.expect("4-bit"),
                    });
                }
                self.int8_checks(&sel, d_in, d_w)?;
                if sel.dqs.len() == 3 {
                    let d_b = dq_dt(2);
                    if d_b != Some(DType::I32) {
                        return Err(Reason::BiasNotInt32 {
                            bias: self.dq_input_name(sel.dqs[2].1),
                            dtype: d_b.unwrap_or(DType::Other(0)),
                        });
                    }
                }
                self.type_checks(d_in, false)?;
                self.type_checks(d_w, false)?;
                Ok((fused("QLinearConv"), self.warnings(o, &sel, 0), sel.clip))
            }
            Rule::MatMul => match self.matmul(o, &sel) {
                Ok(v) => Ok(v),
                // Not a QDQ unit: the weight alone may still fuse to a weight-only kernel.
                Err(reason) => {
                    let weight_dq = sel.dqs.iter().find(|(s, _)| *s == 1).map(|(_, d)| *d);
                    let clean =
                        sel.qs.is_empty() || self.check_qdq_nodes(o, &sel, None, false).is_ok();
                    match weight_dq {
                        Some(dq) if sel.clip.is_none() && clean && self.nbits_ok(dq) => {
                            Ok((fused("MatMulNBits"), Vec::new(), None))
                        }
                        _ => Err(reason),
                    }
                }
            },
            Rule::Gemm => {
                self.check_qdq_nodes(o, &sel, None, true)?;
                let (d_a, d_b) = (dq_dt(0), dq_dt(1));
                if d_a == Some(DType::I8) && d_b != Some(DType::I8) {
                    return Err(Reason::WeightNotInt8 {
                        weight: sel
                            .dqs
                            .get(1)
                            .map(|d| self.dq_input_name(d.1))
                            .unwrap_or_default(),
                        dtype: d_b.unwrap_or(DType::Other(0)),
                    });
                }
                if !sel.qs.is_empty() {
                    self.mismatch(&[("input A", d_a), ("output", q_dt(0))])?;
                }
                self.type_checks(d_a, false)?;
                self.type_checks(d_b, false)?;
                if sel.dqs.len() == 3 {
                    let beta = op.attr_float("beta").unwrap_or(1.0);
                    if beta != 1.0 {
                        return Err(Reason::GemmBeta { beta });
                    }
                    // QGemm scales the int32 bias by alpha: only 1 keeps it exact.
                    let alpha = op.attr_float("alpha").unwrap_or(1.0);
                    if alpha != 1.0 {
                        return Err(Reason::GemmAlpha { alpha });
                    }
                    let d_c = dq_dt(2);
                    if d_c != Some(DType::I32) {
                        return Err(Reason::BiasNotInt32 {
                            bias: self.dq_input_name(sel.dqs[2].1),
                            dtype: d_c.unwrap_or(DType::Other(0)),
                        });
                    }
                }
                Ok((fused("QGemm"), self.warnings(o, &sel, 2), sel.clip))
            }
        }
    }

    /// The QDQ MatMul rule: QLinearMatMul with a Q after, MatMulIntegerToFloat without.
    fn matmul(
        &self,
        o: OpId,
        sel: &Selection,
    ) -> Result<(Verdict, Vec<Warning>, Option<OpId>), Reason> {
        if sel.dqs.len() != 2 {
            return Err(self.missing_dq(o, sel, &[0, 1]));
        }
        let dt = |i: usize| self.dq_in_dtype(sel.dqs[i].1);
        let (d_in, d_w) = (dt(0), dt(1));
        self.int8_checks(sel, d_in, d_w)?;
        self.type_checks(d_in, false)?;
        self.type_checks(d_w, false)?;
        let kernel = |k: &str| Verdict::Fused {
            kernel: k.to_string(),
        };
        if sel.qs.is_empty() {
            return Ok((
                kernel("MatMulIntegerToFloat"),
                self.warnings(o, sel, 1),
                None,
            ));
        }
        self.check_qdq_nodes(o, sel, None, false)?;
        self.mismatch(&[("input", d_in), ("output", self.q_out_dtype(sel.qs[0]))])?;
        Ok((kernel("QLinearMatMul"), self.warnings(o, sel, 1), sel.clip))
    }

    /// Conv/MatMul: int8 activations need the platform's s8s8 kernels and int8 weights.
    fn int8_checks(
        &self,
        sel: &Selection,
        d_in: Option<DType>,
        d_w: Option<DType>,
    ) -> Result<(), Reason> {
        if d_in != Some(DType::I8) {
            return Ok(());
        }
        let (_, dq_x) = sel.dqs[0];
        if !self.int8_allowed {
            return Err(Reason::Int8Activation {
                value: self.dq_input_name(dq_x),
                detail: self.int8_detail(dq_x),
            });
        }
        if d_w != Some(DType::I8) {
            return Err(Reason::WeightNotInt8 {
                weight: sel
                    .dqs
                    .get(1)
                    .map(|d| self.dq_input_name(d.1))
                    .unwrap_or_default(),
                dtype: d_w.unwrap_or(DType::Other(0)),
            });
        }
        Ok(())
    }

    /// `ValidateDQForMatMulNBits`: a constant rank-2 weight of 2/4/8-bit integers,
    /// blocked along axis 0, per tensor, or per column.
    fn nbits_ok(&self, dq: OpId) -> bool {
        let (Some(w), Some(s)) = (self.g.input(dq, 0), self.g.input(dq, 1)) else {
            return false;
        };
        let z = self.g.input(dq, 2);
        if !matches!(self.dtype(s), Some(DType::F32 | DType::F16)) {
            return false;
        }
        if !matches!(
            self.dq_in_dtype(dq),
            Some(DType::I2 | DType::U2 | DType::I4 | DType::U4 | DType::I8 | DType::U8)
        ) {
            return false;
        }
        if self.konst(w).is_none() && self.g.value(w).init.is_none() {
            return false;
        }
        let (Some(wd), Some(sd)) = (self.dims(w), self.dims(s)) else {
            return false;
        };
        if z.is_some_and(|z| self.konst(z).is_none()) {
            return false;
        }
        let zd = z.and_then(|z| self.dims(z));
        if wd.len() != 2 {
            return false;
        }
        let op = self.g.op(dq);
        let block = op.attr_int("block_size").unwrap_or(0);
        if block > 0 {
            if op.attr_int("axis") != Some(0) || block < 16 || (block & (block - 1)) != 0 {
                return false;
            }
            if sd.len() != 2 || zd.as_ref().is_some_and(|z| z.len() != 2) {
                return false;
            }
            let k_blocks = (wd[0] + block - 1) / block;
            sd[0] == k_blocks && sd[1] == wd[1] && zd.as_ref().is_none_or(|z| z[..] == sd[..])
        } else if sd.is_empty() {
            zd.as_ref().is_none_or(|z| z.is_empty())
        } else if sd.len() == 1 && sd[0] == wd[1] {
            op.attr_int("axis").is_none_or(|a| a == 1)
                && zd.as_ref().is_none_or(|z| z.len() == 1 && z[0] == wd[1])
        } else {
            false
        }
    }

    /// Scale vector of a (non-synthetic) DQ with its axis attribute.
    fn dq_scales(&self, dq: OpId) -> Option<(Vec<f64>, i64)> {
        if self.synthetic.contains_key(&dq) {
            return None;
        }
        let s = self.g.input(dq, 1)?;
        let t = self.konst(s)?;
        Some((t.to_f64_vec()?, self.g.op(dq).attr_int("axis").unwrap_or(1)))
    }

    /// Correctness warnings for fused Conv (`kind` 0), MatMul (1) and Gemm (2).
    fn warnings(&self, o: OpId, sel: &Selection, kind: u8) -> Vec<Warning> {
        let mut out = Vec::new();
        let (Some(&(_, dq_x)), Some(&(_, dq_w))) = (sel.dqs.first(), sel.dqs.get(1)) else {
            return out;
        };
        let sx = self.dq_scales(dq_x);
        if let Some((s, _)) = &sx {
            if s.len() > 1 {
                out.push(Warning::PerAxisActivation {
                    value: self.dq_input_name(dq_x),
                });
            }
        }
        let sw = self.dq_scales(dq_w);
        if let Some((s, axis)) = &sw {
            if s.len() > 1 {
                let rank = self
                    .g
                    .input(dq_w, 0)
                    .and_then(|w| self.dims(w))
                    .map(|d| d.len() as i64);
                let axis = match rank {
                    Some(r) if *axis < 0 => axis + r,
                    _ => *axis,
                };
                let expected = match kind {
                    0 => Some(0),
                    1 => rank.map(|r| r - 1),
                    _ => Some(if self.g.op(o).attr_int("transB").unwrap_or(0) == 1 {
                        0
                    } else {
                        1
                    }),
                };
                if let Some(e) = expected {
                    if axis != e {
                        out.push(Warning::WeightAxis {
                            weight: self.dq_input_name(dq_w),
                            axis,
                            expected: e,
                        });
                    }
                }
            }
        }
        if let (Some(&(_, dq_b)), Some((sx, _)), Some((sw, _))) = (sel.dqs.get(2), sx, sw) {
            if sx.len() == 1 {
                if let Some((sb, _)) = self.dq_scales(dq_b) {
                    let bias = self.dq_input_name(dq_b);
                    for (c, found) in sb.iter().enumerate() {
                        let w = if sw.len() == 1 {
                            sw[0]
                        } else {
                            sw.get(c).copied().unwrap_or(f64::NAN)
                        };
                        let expected = (sx[0] as f32 * w as f32) as f64;
                        let close = (found - expected).abs()
                            <= 1e-5 * expected.abs().max(f64::MIN_POSITIVE);
                        if !close {
                            out.push(Warning::BiasScale {
                                bias: bias.clone(),
                                channel: c,
                                expected,
                                found: *found,
                            });
                            break;
                        }
                    }
                    let zp_nonzero = self
                        .g
                        .input(dq_b, 2)
                        .and_then(|z| self.konst(z))
                        .and_then(|t| t.to_f64_vec())
                        .is_some_and(|v| v.iter().any(|x| *x != 0.0));
                    if zp_nonzero {
                        out.push(Warning::BiasZeroPoint { bias });
                    }
                }
            }
        }
        out
    }
}
