//! Per-tensor error between a reference model and a test model — typically a float model
//! and its quantized version — so a user sees which layer broke accuracy: where error
//! enters and where it accumulates.
//!
//! **Matching.** Every value of the reference's main graph that an op produces is
//! paired with the test model's value computed by the same op: the same output of the op
//! of the same node name and type, else the value of the same name. Quantization is
//! followed by the graph's structure, never by name patterns, so qrange's models
//! (`x → Q → x.q → DQ → x.dq`) and other tools' (`X → Q → X_QuantizeLinear_Output → DQ →
//! X_DequantizeLinear_Output`) read alike:
//! - the test model's value is compared with the reference's;
//! - when a `QuantizeLinear` reads it and a `DequantizeLinear` reads that Q's output, the
//!   DQ's output — what the next op sees — is compared too, against the value the next op
//!   reads in the reference. That is the same value unless the test model fused an op
//!   into the quantization (a Relu whose clipping the quantized range does, a Div or Mul
//!   by a constant whose scaling the DequantizeLinear does): then the next op reads that
//!   op's output in the reference, and that is what the dequantized value must match;
//! - tools rename values they rewire: a quantized graph output keeps its name on the
//!   dequantized value (the producer's value becomes `y.float` for qrange,
//!   `y_QuantizeLinear_Input` for ONNX Runtime's quantizer), and a fused Relu's output
//!   name may move onto the op it was fused into. Pairing by producing op sees through
//!   both; a name found on another op's output is reported, not compared.
//!
//! Graph inputs the test model quantizes are listed too (index 0): their dequantized
//! form is the first error the model sees. Each entry also carries the lowest SQNR among
//! the values its op reads in the test model, so a drop from that to the entry's own SQNR
//! shows where error enters, and a drop from the entry's SQNR to its dequantized form's
//! what quantizing it costs.
//!
//! Values without a counterpart (removed by a fold, renamed, of another shape, not
//! floating point) are listed in [`PerTensor::unmatched`] with the reason; nothing is
//! skipped silently.
//!
//! **Streaming.** The values are tapped in the engine ([`crate::exec::SessionOptions`])
//! in groups whose tapped bytes per sample fit a budget (split like calibration does,
//! [`crate::calib::collect::plan_groups`]), one engine run of each model per group and
//! sample; each tensor is folded into a streaming [`Comparison`] at once, so memory does
//! not grow with the number of samples. Group sizes come from the value types: run shape
//! inference on the models first (values of unknown size count as the largest known).

use super::metrics::{as_f32, Comparison, Metrics};
use crate::calib::collect::plan_groups;
use crate::data::SampleSource;
use crate::exec::{ExecError, Session, SessionOptions};
use crate::ir::{DType, Graph, GraphError, Model, OpId, Tensor, ValueId};
use crate::onnx::{self, ExternalPolicy, OnnxError};
use crate::quant::plan::op_key;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Which of the two compared models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Reference,
    Test,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Reference => "reference",
            Side::Test => "test",
        })
    }
}

/// Why [`per_tensor`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PerTensorError {
    /// There was no sample to run.
    #[error("no samples to compare")]
    NoSamples,
    /// A sample could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A model could not be encoded for the engine.
    #[error("{model} model: {source}")]
    Encode { model: Side, source: OnnxError },
    /// A model's graph has no topological order.
    #[error("{model} model: {source}")]
    Graph { model: Side, source: GraphError },
    /// The engine could not load a model with the taps of one group.
    #[error("{model} model: {source}")]
    Load { model: Side, source: ExecError },
    /// The engine failed on a sample.
    #[error("{model} model: sample {sample}: {source}")]
    Run {
        model: Side,
        sample: usize,
        source: ExecError,
    },
}

/// The error of one reference value in the test model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerComparison {
    /// The value's name in the reference model.
    pub value: String,
    /// Key of the op producing it in the reference model: the node name, or
    /// `OpType#order` when unnamed ([`crate::quant::plan::op_key`]). `None` for a graph
    /// input.
    pub producer: Option<String>,
    /// That op's type (`None` for a graph input).
    pub op_type: Option<String>,
    /// 0 for a graph input; `i + 1` for the output of the i-th op of the reference
    /// model's deterministic topological order.
    pub index: usize,
    /// Shape of the value (in the first sample).
    pub shape: Vec<usize>,
    /// The test model's value compared with it: the one of the same name, or the output
    /// of the same op when the test model renamed it (a quantized graph output keeps its
    /// name on the dequantized value; an op can take over the name of an activation fused
    /// into its quantization, or keep its own name while computing the ops folded into it,
    /// see [`Unmatched::Absorbed`]).
    pub test_value: String,
    /// Reference value against test value.
    pub metrics: Metrics,
    /// The lowest SQNR among the computed values the producing op reads in the test
    /// model (as compared here; weights and other constants are not counted): set
    /// against [`LayerComparison::metrics`], it shows how much error this op adds.
    pub input_sqnr_db: Option<f64>,
    /// Present when the test model quantizes the value: its dequantized form, what the
    /// next op reads.
    pub dequantized: Option<Dequantized>,
}

impl LayerComparison {
    /// The lower of the value's SQNR and its dequantized form's: the key the list is
    /// sorted by.
    pub fn worst_sqnr_db(&self) -> f64 {
        match &self.dequantized {
            Some(d) => self.metrics.sqnr_db.min(d.metrics.sqnr_db),
            None => self.metrics.sqnr_db,
        }
    }
}

/// The dequantized form of a quantized value in the test model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Dequantized {
    /// The `DequantizeLinear` output in the test model.
    pub value: String,
    /// The reference value it is compared with: [`LayerComparison::value`], or the value
    /// the next op reads in the reference when the test model folded an op (e.g. a Relu)
    /// into the quantization.
    pub reference: String,
    /// Reference value against the dequantized test value.
    pub metrics: Metrics,
}

/// Why a reference value was not compared.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Unmatched {
    /// The test model has no value of that name (folded away or renamed).
    NotInTest { value: String },
    /// The test model holds it as a constant.
    ConstantInTest { value: String },
    /// The test model takes it as an input.
    InputOfTest { value: String },
    /// In the test model the name is the output of another op of the reference (one an
    /// op was fused into); that op's output is compared instead.
    ProducedElsewhere { value: String, producer: String },
    /// The test model's op computes more than the reference op: it absorbed the ops that
    /// make `into` from this value (e.g. a folded bias Add), and is compared with `into`.
    Absorbed { value: String, into: String },
    /// The two values' shapes differ.
    ShapeDiffers {
        value: String,
        /// Compared value in the test model (a dequantized one for dequantized forms).
        test_value: String,
        reference_shape: Vec<usize>,
        test_shape: Vec<usize>,
    },
    /// The value does not hold floating-point numbers in one of the models.
    NotFloat {
        value: String,
        model: Side,
        dtype: DType,
    },
}

impl Unmatched {
    /// The reference value concerned.
    pub fn value(&self) -> &str {
        match self {
            Unmatched::NotInTest { value }
            | Unmatched::ConstantInTest { value }
            | Unmatched::InputOfTest { value }
            | Unmatched::ProducedElsewhere { value, .. }
            | Unmatched::Absorbed { value, .. }
            | Unmatched::ShapeDiffers { value, .. }
            | Unmatched::NotFloat { value, .. } => value,
        }
    }
}

impl std::fmt::Display for Unmatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmatched::NotInTest { .. } => {
                write!(f, "not in the test model (folded away or renamed)")
            }
            Unmatched::ConstantInTest { .. } => write!(f, "a constant in the test model"),
            Unmatched::InputOfTest { .. } => write!(f, "an input of the test model"),
            Unmatched::ProducedElsewhere { producer, .. } => write!(
                f,
                "produced by '{producer}' in the test model (an op fused into it)"
            ),
            Unmatched::Absorbed { into, .. } => write!(
                f,
                "the test model's op computes '{into}' from it (ops folded into it)"
            ),
            Unmatched::ShapeDiffers {
                test_value,
                reference_shape,
                test_shape,
                ..
            } => write!(
                f,
                "shape {reference_shape:?} in the reference, {test_shape:?} for '{test_value}' in the test model"
            ),
            Unmatched::NotFloat { model, dtype, .. } => {
                write!(f, "holds {dtype} in the {model} model, not floating point")
            }
        }
    }
}

/// Result of [`per_tensor`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PerTensor {
    /// Compared values, worst first: ascending [`LayerComparison::worst_sqnr_db`], ties
    /// by topological index, then name.
    pub layers: Vec<LayerComparison>,
    /// Reference values that were not compared, in topological order.
    pub unmatched: Vec<Unmatched>,
    /// Samples run.
    pub samples: u64,
    /// Tap groups (engine runs of each model per sample).
    pub groups: usize,
}

/// Where one reference value is found in the test model.
#[derive(Clone, Debug)]
struct Pairing {
    value: String,
    producer: Option<String>,
    op_type: Option<String>,
    index: usize,
    test_value: String,
    /// Values the test model's producing op reads (computed ones only).
    reads: Vec<String>,
    /// (dequantized value in the test model, reference value it is compared with)
    dq: Option<(String, String)>,
    /// Tapped bytes per sample in both models, when the types say.
    bytes: Option<u64>,
}

fn is_op(g: &Graph, o: OpId, op_type: &str) -> bool {
    let op = g.op(o);
    op.op_type == op_type && matches!(op.domain_key(), "" | "com.microsoft")
}

/// True when the `DequantizeLinear` giving `dq` has another scale than the
/// `QuantizeLinear` it reads: the pair also scales (a Div/Mul by a constant folded into
/// it), so the quantized value itself is still the unscaled one.
fn rescales(g: &Graph, dq: ValueId) -> bool {
    let scale = |o: OpId| {
        g.input(o, 1)
            .and_then(|v| g.const_of(v))
            .and_then(|t| t.to_tensor().ok())
            .and_then(|t| t.to_f64_vec())
    };
    let Some((d, _)) = g
        .producer(dq)
        .filter(|(d, _)| is_op(g, *d, "DequantizeLinear"))
    else {
        return false;
    };
    let Some((q, _)) = g
        .input(d, 0)
        .and_then(|v| g.producer(v))
        .filter(|(q, _)| is_op(g, *q, "QuantizeLinear"))
    else {
        return false;
    };
    match (scale(q), scale(d)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

/// The output of the first `QuantizeLinear → DequantizeLinear` pair reading `v`.
fn dequantized_of(g: &Graph, v: ValueId) -> Option<ValueId> {
    let mut qs: Vec<OpId> = g
        .consumers(v)
        .into_iter()
        .filter(|(o, slot)| *slot == 0 && is_op(g, *o, "QuantizeLinear"))
        .map(|(o, _)| o)
        .collect();
    qs.sort_by_key(|o| g.op(*o).order);
    for q in qs {
        let Some(qv) = g.output(q, 0) else { continue };
        let mut dqs: Vec<OpId> = g
            .consumers(qv)
            .into_iter()
            .filter(|(o, slot)| *slot == 0 && is_op(g, *o, "DequantizeLinear"))
            .map(|(o, _)| o)
            .collect();
        dqs.sort_by_key(|o| g.op(*o).order);
        if let Some(dq) = dqs.first().and_then(|o| g.output(*o, 0)) {
            return Some(dq);
        }
    }
    None
}

/// When `v` is the output of `DequantizeLinear(QuantizeLinear(u))` with `u` computed (not
/// a constant), `u`.
fn quantized_source(g: &Graph, v: ValueId) -> Option<ValueId> {
    let (dq, _) = g.producer(v)?;
    if !is_op(g, dq, "DequantizeLinear") {
        return None;
    }
    let (q, _) = g.producer(g.input(dq, 0)?)?;
    if !is_op(g, q, "QuantizeLinear") {
        return None;
    }
    let u = g.input(q, 0)?;
    (g.producer(u).is_some()).then_some(u)
}

/// True when `from` is `to` or derives from it through at most `depth` ops with one
/// computed input (the others constant, e.g. a Relu, a Clip, a Div or Mul by a constant):
/// the ops a quantizer may fold.
fn derives_from(g: &Graph, from: ValueId, to: ValueId, depth: usize) -> bool {
    if from == to {
        return true;
    }
    if depth == 0 {
        return false;
    }
    let Some((p, _)) = g.producer(from) else {
        return false;
    };
    let computed: Vec<ValueId> = g
        .inputs_of(p)
        .into_iter()
        .flatten()
        .filter(|v| g.const_of(*v).is_none())
        .collect();
    match computed.as_slice() {
        [one] => derives_from(g, *one, to, depth - 1),
        _ => false,
    }
}

/// The reference value to compare the test model's dequantized `dq` (of `x`) with: the
/// reference value of the same name when it derives from `x` (a dequantized graph
/// output), else what the test model's readers of `dq` read in the reference (see the
/// module doc), else `x` itself.
fn dq_reference(
    a: &Graph,
    a_ops: &BTreeMap<String, OpId>,
    x: ValueId,
    b: &Graph,
    dq: ValueId,
) -> ValueId {
    // A dequantized graph output keeps the reference's output name.
    if let Some(r) = a.value_by_name(&b.value(dq).name) {
        if derives_from(a, r, x, 4) {
            return r;
        }
    }
    let mut readers = b.consumers(dq);
    readers.sort_by_key(|(o, slot)| (b.op(*o).order, *slot));
    for (o, slot) in readers {
        let Some(&ao) = b.op(o).name.as_ref().and_then(|n| a_ops.get(n)) else {
            continue;
        };
        if let Some(r) = a.input(ao, slot) {
            if derives_from(a, r, x, 4) {
                return r;
            }
        }
    }
    x
}

/// Tapped bytes per sample for value `x`: in both models, and its dequantized form in
/// the test model with the reference `r` it is compared with (when that is another value).
fn tap_bytes(g: &Graph, x: ValueId, r: Option<ValueId>) -> Option<u64> {
    bytes_of(g, x).map(|s| match r {
        None => 2 * s,
        Some(r) if r == x => 3 * s,
        Some(r) => 3 * s + bytes_of(g, r).unwrap_or(s),
    })
}

fn bytes_of(g: &Graph, v: ValueId) -> Option<u64> {
    let val = g.value(v);
    let dims = val.ty.as_ref()?.known_dims()?;
    let bits = val.dtype().and_then(DType::bits).unwrap_or(32) as u64;
    Some(dims.iter().map(|&d| d.max(0) as u64).product::<u64>() * bits.div_ceil(8))
}

/// Ops with a node name, by name (unnamed ops cannot be told apart across models).
fn named_ops(g: &Graph) -> BTreeMap<String, OpId> {
    g.ops()
        .filter_map(|o| match g.op(o).name.as_deref() {
            Some(n) if !n.is_empty() => Some((n.to_string(), o)),
            _ => None,
        })
        .collect()
}

/// True when `from` is `to` or computed from it by Relu/Clip ops only: the activations a
/// quantizer absorbs into the quantized range of their input.
fn through_activations(g: &Graph, from: ValueId, to: ValueId, depth: usize) -> bool {
    if from == to {
        return true;
    }
    let Some((p, _)) = g.producer(from) else {
        return false;
    };
    if depth == 0 || !is_activation(g, p) {
        return false;
    }
    match g.input(p, 0) {
        Some(i) => through_activations(g, i, to, depth - 1),
        None => false,
    }
}

/// `r` without the Relu/Clip ops that compute it from `x` (`r` derives from `x`).
fn before_activations(g: &Graph, r: ValueId, x: ValueId) -> ValueId {
    let mut v = r;
    while v != x {
        match g.producer(v) {
            Some((p, _)) if is_activation(g, p) => match g.input(p, 0) {
                Some(i) => v = i,
                None => break,
            },
            _ => break,
        }
    }
    v
}

/// Relu and Clip: the activations a quantizer absorbs into its input's quantized range.
fn is_activation(g: &Graph, o: OpId) -> bool {
    let op = g.op(o);
    op.domain_key().is_empty() && matches!(op.op_type.as_str(), "Relu" | "Clip")
}

/// The test model's counterpart of value `x`, output `slot` of op `o` of the reference,
/// and its dequantized form.
///
/// By name first. The test model may have renamed what it rewired, though: a quantized
/// graph output keeps its name on the dequantized value (then the quantized value's
/// source is the counterpart), and a quantizer that absorbs a Relu into its input's
/// quantized range may give the Relu's output name to that input (then the named value is
/// the producer's, and the Relu's output is what its dequantized form is compared with).
/// A value whose name is gone is looked for on the same output of the op of the same name
/// and type, unless that output carries the name of a reference value the op's result
/// does not reach through such activations (an op that absorbed a computation, e.g. a
/// folded BatchNormalization, computes that value instead).
fn find_in_test(
    ga: &Graph,
    o: OpId,
    slot: usize,
    x: ValueId,
    gb: &Graph,
    a_ops: &BTreeMap<String, OpId>,
    b_ops: &BTreeMap<String, OpId>,
) -> Result<(ValueId, Option<ValueId>), Unmatched> {
    let value = || ga.value(x).name.clone();
    let Some(bx) = gb.value_by_name(&ga.value(x).name) else {
        let bv = ga
            .op(o)
            .name
            .as_ref()
            .and_then(|n| b_ops.get(n))
            .filter(|bo| gb.op(**bo).op_type == ga.op(o).op_type)
            .and_then(|bo| gb.output(*bo, slot))
            .ok_or_else(|| Unmatched::NotInTest { value: value() })?;
        if let Some(av) = ga.value_by_name(&gb.value(bv).name) {
            if !through_activations(ga, av, x, 4) {
                return Err(Unmatched::NotInTest { value: value() });
            }
        }
        return Ok((bv, dequantized_of(gb, bv)));
    };
    if gb.const_of(bx).is_some() {
        return Err(Unmatched::ConstantInTest { value: value() });
    }
    if gb.producer(bx).is_none() {
        return Err(Unmatched::InputOfTest { value: value() });
    }
    let source = if is_op(ga, o, "DequantizeLinear") {
        None
    } else {
        quantized_source(gb, bx)
    };
    let (raw, dq) = match source {
        Some(u) => (u, Some(bx)),
        None => (bx, dequantized_of(gb, bx)),
    };
    // Computed by another reference op whose result reaches `x` through absorbed
    // activations: that op's output is paired with it instead.
    let producer = gb
        .producer(raw)
        .and_then(|(bo, _)| gb.op(bo).name.as_ref())
        .filter(|n| ga.op(o).name.as_ref() != Some(*n));
    if let Some((n, &ao)) = producer.and_then(|n| a_ops.get_key_value(n)) {
        let absorbed = ga
            .outputs_of(ao)
            .into_iter()
            .flatten()
            .any(|u| through_activations(ga, x, u, 4));
        if absorbed {
            return Err(Unmatched::ProducedElsewhere {
                value: value(),
                producer: n.clone(),
            });
        }
    }
    Ok((raw, dq))
}

/// Reference values that were not compared, with their producer's topological index.
type Unpaired = Vec<(usize, Unmatched)>;

/// Pairs the reference's computed values with the test model's.
fn pair(a: &Model, b: &Model) -> Result<(Vec<Pairing>, Unpaired), PerTensorError> {
    let (ga, gb) = (&a.graph, &b.graph);
    let order = ga.topo_order().map_err(|source| PerTensorError::Graph {
        model: Side::Reference,
        source,
    })?;
    let a_ops = named_ops(ga);
    let b_ops = named_ops(gb);
    let mut pairs = Vec::new();
    let mut unmatched = Vec::new();
    // Graph inputs the test model quantizes: the data is the same, its quantization not.
    for &x in &ga.inputs {
        let name = &ga.value(x).name;
        if ga.value(x).init.is_some() {
            continue;
        }
        let Some(bx) = gb.value_by_name(name).filter(|v| gb.is_input(*v)) else {
            continue;
        };
        let Some(dq) = dequantized_of(gb, bx) else {
            continue;
        };
        let r = dq_reference(ga, &a_ops, x, gb, dq);
        pairs.push(Pairing {
            value: name.clone(),
            producer: None,
            op_type: None,
            index: 0,
            test_value: name.clone(),
            reads: Vec::new(),
            dq: Some((gb.value(dq).name.clone(), ga.value(r).name.clone())),
            bytes: tap_bytes(ga, x, Some(r)),
        });
    }
    let index_of: BTreeMap<OpId, usize> = order
        .iter()
        .enumerate()
        .map(|(position, o)| (*o, position + 1))
        .collect();
    // Reference values already compared (as the result of an op that absorbed them).
    let mut paired: BTreeSet<ValueId> = BTreeSet::new();
    for &o in &order {
        let index = index_of[&o];
        for (slot, x) in ga.outputs_of(o).into_iter().enumerate() {
            let Some(x) = x else { continue };
            if paired.contains(&x) {
                continue;
            }
            let name = ga.value(x).name.clone();
            if let Some(d) = ga.value(x).dtype().filter(|d| !d.is_float()) {
                unmatched.push((
                    index,
                    Unmatched::NotFloat {
                        value: name,
                        model: Side::Reference,
                        dtype: d,
                    },
                ));
                continue;
            }
            let (test, dq) = match find_in_test(ga, o, slot, x, gb, &a_ops, &b_ops) {
                Ok(found) => found,
                Err(u) => {
                    unmatched.push((index, u));
                    continue;
                }
            };
            let dq = dq.map(|d| (d, dq_reference(ga, &a_ops, x, gb, d)));
            // The next op reads the dequantized value where the reference reads `r`: when
            // `r` is more than `x` through absorbed activations, the test model's op
            // absorbed the ops in between (a folded bias Add that left the op its own
            // output name), and computes the value before those activations.
            // Not for a rescaling pair: its value is the op's own, its dequantized form the
            // output of the Div/Mul folded into it.
            let (x, o, index) = match dq {
                Some((d, r)) if !rescales(gb, d) => {
                    let t = before_activations(ga, r, x);
                    match ga.producer(t) {
                        Some((to, _)) if t != x => {
                            unmatched.push((
                                index,
                                Unmatched::Absorbed {
                                    value: name,
                                    into: ga.value(t).name.clone(),
                                },
                            ));
                            (t, to, index_of[&to])
                        }
                        _ => (x, o, index),
                    }
                }
                _ => (x, o, index),
            };
            let name = ga.value(x).name.clone();
            if let Some(d) = gb.value(test).dtype().filter(|d| !d.is_float()) {
                unmatched.push((
                    index,
                    Unmatched::NotFloat {
                        value: name,
                        model: Side::Test,
                        dtype: d,
                    },
                ));
                continue;
            }
            let known = |g: &Graph, v: ValueId| g.value(v).ty.as_ref().and_then(|t| t.known_dims());
            if let (Some(ra), Some(rb)) = (known(ga, x), known(gb, test)) {
                if ra != rb {
                    let dims = |d: Vec<i64>| d.into_iter().map(|x| x.max(0) as usize).collect();
                    unmatched.push((
                        index,
                        Unmatched::ShapeDiffers {
                            value: name,
                            test_value: gb.value(test).name.clone(),
                            reference_shape: dims(ra),
                            test_shape: dims(rb),
                        },
                    ));
                    continue;
                }
            }
            paired.insert(x);
            let bytes = tap_bytes(ga, x, dq.map(|(_, r)| r));
            let reads = match gb.producer(test) {
                Some((bo, _)) => gb
                    .inputs_of(bo)
                    .into_iter()
                    .flatten()
                    .filter(|v| gb.const_of(*v).is_none())
                    .map(|v| gb.value(v).name.clone())
                    .collect(),
                None => Vec::new(),
            };
            pairs.push(Pairing {
                value: name,
                producer: Some(op_key(ga, o)),
                op_type: Some(ga.op(o).op_type.clone()),
                index,
                test_value: gb.value(test).name.clone(),
                reads,
                dq: dq.map(|(d, r)| (gb.value(d).name.clone(), ga.value(r).name.clone())),
                bytes,
            });
        }
    }
    Ok((pairs, unmatched))
}

/// Accumulators of one pairing.
#[derive(Default)]
struct Acc {
    shape: Vec<usize>,
    value: Comparison,
    dq: Comparison,
    /// Set when the values turned out not comparable on the data.
    dropped: bool,
    /// Set when the dequantized values turned out not comparable on the data.
    dq_dropped: bool,
}

/// Checks two tensors are comparable floats of one shape; returns their values.
fn comparable(
    value: &str,
    test_value: &str,
    ta: &Tensor,
    tb: &Tensor,
) -> Result<(Vec<f32>, Vec<f32>), Unmatched> {
    for (t, model) in [(ta, Side::Reference), (tb, Side::Test)] {
        if !t.dtype().is_float() {
            return Err(Unmatched::NotFloat {
                value: value.to_string(),
                model,
                dtype: t.dtype(),
            });
        }
    }
    if ta.shape() != tb.shape() {
        return Err(Unmatched::ShapeDiffers {
            value: value.to_string(),
            test_value: test_value.to_string(),
            reference_shape: ta.shape(),
            test_shape: tb.shape(),
        });
    }
    match (as_f32(ta), as_f32(tb)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(Unmatched::NotFloat {
            value: value.to_string(),
            model: Side::Reference,
            dtype: ta.dtype(),
        }),
    }
}

/// Groups of consecutive pairings whose tapped tensors fit `budget_bytes` per run (a
/// pairing of unknown size counts as the largest known).
fn tap_groups(pairs: &[Pairing], budget_bytes: u64) -> Vec<std::ops::Range<usize>> {
    let largest = pairs.iter().filter_map(|p| p.bytes).max().unwrap_or(0);
    let sized: Vec<(String, u64)> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| (i.to_string(), p.bytes.unwrap_or(largest)))
        .collect();
    // Groups keep the given order: consecutive runs of pairings.
    let mut start = 0;
    plan_groups(&sized, budget_bytes)
        .iter()
        .map(|g| {
            start += g.len();
            start - g.len()..start
        })
        .collect()
}

/// The names each model taps for the pairings of a group.
fn group_taps(pairs: &[Pairing]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut taps_a = BTreeSet::new();
    let mut taps_b = BTreeSet::new();
    for p in pairs {
        taps_a.insert(p.value.clone());
        taps_b.insert(p.test_value.clone());
        if let Some((d, r)) = &p.dq {
            taps_b.insert(d.clone());
            taps_a.insert(r.clone());
        }
    }
    (taps_a, taps_b)
}

/// Adds sample `n`'s tapped values (`ra` of the reference, `rb` of the test model) to the
/// accumulators of the pairings in `group`; a pairing whose values turn out not
/// comparable is dropped, with the reason in `unmatched`.
fn accumulate(
    pairs: &[Pairing],
    accs: &mut [Acc],
    group: std::ops::Range<usize>,
    (ra, rb): (&BTreeMap<String, Tensor>, &BTreeMap<String, Tensor>),
    n: usize,
    unmatched: &mut Vec<(usize, Unmatched)>,
) -> Result<(), PerTensorError> {
    for i in group {
        let (p, acc) = (&pairs[i], &mut accs[i]);
        if acc.dropped {
            continue;
        }
        let ta = tapped(ra, &p.value, Side::Reference, n)?;
        let tb = tapped(rb, &p.test_value, Side::Test, n)?;
        match comparable(&p.value, &p.test_value, ta, tb) {
            Ok((va, vb)) => {
                acc.shape = ta.shape();
                acc.value.add(&va, &vb, false, None);
            }
            Err(u) => {
                acc.dropped = true;
                unmatched.push((p.index, u));
                continue;
            }
        }
        if let (Some((d, r)), false) = (&p.dq, acc.dq_dropped) {
            let tr = tapped(ra, r, Side::Reference, n)?;
            let td = tapped(rb, d, Side::Test, n)?;
            match comparable(&p.value, d, tr, td) {
                Ok((vr, vd)) => acc.dq.add(&vr, &vd, false, None),
                Err(u) => {
                    acc.dq_dropped = true;
                    unmatched.push((p.index, u));
                }
            }
        }
    }
    Ok(())
}

/// The comparisons of the pairings kept, with what each producing op reads, worst first.
fn layers_of(pairs: &[Pairing], accs: Vec<Acc>) -> Vec<LayerComparison> {
    let mut layers = Vec::new();
    let mut reads = Vec::new();
    for (p, acc) in pairs.iter().zip(accs) {
        if acc.dropped {
            continue;
        }
        reads.push(&p.reads);
        layers.push(LayerComparison {
            value: p.value.clone(),
            producer: p.producer.clone(),
            op_type: p.op_type.clone(),
            index: p.index,
            shape: acc.shape,
            test_value: p.test_value.clone(),
            metrics: acc.value.metrics(),
            input_sqnr_db: None,
            dequantized: match &p.dq {
                Some((d, r)) if !acc.dq_dropped => Some(Dequantized {
                    value: d.clone(),
                    reference: r.clone(),
                    metrics: acc.dq.metrics(),
                }),
                _ => None,
            },
        });
    }
    // What each producing op reads, as measured above.
    let mut measured: BTreeMap<&str, f64> = BTreeMap::new();
    for l in &layers {
        measured.insert(&l.test_value, l.metrics.sqnr_db);
        if let Some(d) = &l.dequantized {
            measured.insert(&d.value, d.metrics.sqnr_db);
        }
    }
    let read_sqnr: Vec<Option<f64>> = reads
        .iter()
        .map(|names| {
            names
                .iter()
                .filter_map(|r| measured.get(r.as_str()).copied())
                .min_by(f64::total_cmp)
        })
        .collect();
    for (l, r) in layers.iter_mut().zip(read_sqnr) {
        l.input_sqnr_db = r;
    }
    layers.sort_by(|x, y| {
        x.worst_sqnr_db()
            .total_cmp(&y.worst_sqnr_db())
            .then(x.index.cmp(&y.index))
            .then_with(|| x.value.cmp(&y.value))
    });
    layers
}

/// Compares every computed value of `reference` with its counterpart in `test` (see the
/// module doc) over `samples`, with at most about `budget_bytes` of tapped tensors per
/// engine run. `progress(done, total)` is called after each sample of each group.
///
/// Both models should have inferred value types (shape inference) so that the groups
/// can be sized; the list comes back worst first.
pub fn per_tensor<S: SampleSource + ?Sized>(
    reference: &Model,
    test: &Model,
    samples: &S,
    budget_bytes: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<PerTensor, PerTensorError> {
    if samples.count() == 0 {
        return Err(PerTensorError::NoSamples);
    }
    let first = samples.sample(0)?;
    let (pairs, mut unmatched) = pair(reference, test)?;
    let encode = |m: &Model, model: Side| {
        onnx::encode_model(m, &ExternalPolicy::Inline, "")
            .map(|(p, _)| p)
            .map_err(|source| PerTensorError::Encode { model, source })
    };
    let (pa, pb) = (
        encode(reference, Side::Reference)?,
        encode(test, Side::Test)?,
    );
    let groups = tap_groups(&pairs, budget_bytes);
    let total = (groups.len() * samples.count()) as u64;
    let mut done = 0;
    let mut accs: Vec<Acc> = (0..pairs.len()).map(|_| Acc::default()).collect();
    for group in &groups {
        let (taps_a, taps_b) = group_taps(&pairs[group.clone()]);
        let session = |proto, taps: BTreeSet<String>, model| {
            let opts = SessionOptions {
                taps: taps.into_iter().collect(),
                ..Default::default()
            };
            Session::new(proto, None, &first, &opts)
                .map_err(|source| PerTensorError::Load { model, source })
        };
        let sa = session(&pa, taps_a, Side::Reference)?;
        let sb = session(&pb, taps_b, Side::Test)?;
        for n in 0..samples.count() {
            let s = samples.sample(n)?;
            let run = |sess: &Session, model| {
                sess.run(&s).map_err(|source| PerTensorError::Run {
                    model,
                    sample: n,
                    source,
                })
            };
            let ra = run(&sa, Side::Reference)?;
            let rb = run(&sb, Side::Test)?;
            accumulate(
                &pairs,
                &mut accs,
                group.clone(),
                (&ra, &rb),
                n,
                &mut unmatched,
            )?;
            done += 1;
            progress(done, total);
        }
    }
    let layers = layers_of(&pairs, accs);
    // Stable: within one op, reasons found from the types come before those found on
    // the data.
    unmatched.sort_by_key(|(index, _)| *index);
    Ok(PerTensor {
        layers,
        unmatched: unmatched.into_iter().map(|(_, u)| u).collect(),
        samples: samples.count() as u64,
        groups: groups.len(),
    })
}

/// A tapped value of a run's results.
fn tapped<'r>(
    out: &'r BTreeMap<String, Tensor>,
    name: &str,
    model: Side,
    sample: usize,
) -> Result<&'r Tensor, PerTensorError> {
    out.get(name).ok_or_else(|| PerTensorError::Run {
        model,
        sample,
        source: ExecError::UnknownTap(name.to_string()),
    })
}
