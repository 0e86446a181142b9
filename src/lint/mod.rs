//! Fusion-coverage lint: which node units of a QDQ model a runtime turns into integer
//! kernels, and for each one it does not, why.
//!
//! A *node unit* is an op (not a QuantizeLinear/DequantizeLinear) that reads a
//! DequantizeLinear output or feeds a QuantizeLinear, together with those Q/DQ nodes.
//! [`lint`] decides for every unit of the main graph what the target runtime does with it:
//!
//! - [`Verdict::Fused`]: the unit becomes one integer kernel (`QLinearConv`, `QGemm`, …);
//! - [`Verdict::Dropped`]: a data-movement op loses its Q/DQ pair and moves integers;
//! - [`Verdict::Removed`]: the runtime deletes the op (a Relu the following
//!   QuantizeLinear already clips, an Identity);
//! - [`Verdict::Float`]: the op runs in float between a DequantizeLinear and a
//!   QuantizeLinear, with a typed [`Reason`].
//!
//! Units that fuse can still carry [`Warning`]s: things the runtime accepts but computes
//! differently from the QDQ graph (a bias scale that is not `s_x · s_w`, per-channel
//! scales on the wrong axis).
//!
//! [`ort`] replays ONNX Runtime's CPU graph transformations that decide fusion (no-op
//! removal, unique DQ per consumer, constant folding, Q/DQ propagation through data
//! movement, float weight and bias quantization, Relu/Clip removal before Q, int8→uint8
//! conversion on x86-64, then the QDQ selectors) on a copy of the graph, one file per step. `tests/conformance/lint_vs_ort.py` checks it unit by unit against the graph
//! ONNX Runtime writes after optimization. [`trt`] encodes TensorRT's documented
//! explicit-quantization rules; no TensorRT engine checks it. The generic target has no
//! fusion model.

pub mod ort;
pub mod trt;

use crate::ir::{DType, Graph, GraphError, Model, OpId, Tensor, ValueId};
use crate::quant::rules::Target;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// The CPU a model is deployed on, where it changes what ONNX Runtime fuses.
///
/// ONNX Runtime uses its signed-activation (s8 × s8) Conv and MatMul kernels only on
/// arm64 by default; on x86-64 it first converts int8 Q/DQ pairs to uint8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    #[serde(rename = "x86-64")]
    X86_64,
    Arm64,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Platform::X86_64 => "x86-64",
            Platform::Arm64 => "arm64",
        })
    }
}

/// What to lint for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LintOptions {
    pub target: Target,
    pub platform: Platform,
}

impl LintOptions {
    /// `target` on an x86-64 CPU.
    pub fn new(target: Target) -> LintOptions {
        LintOptions {
            target,
            platform: Platform::X86_64,
        }
    }
}

/// The graph could not be analysed.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    #[error("{0}")]
    Graph(#[from] GraphError),
}

/// Whether a unit computes or only moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    Compute,
    /// Reshape, Transpose, MaxPool, …: with equal scales on both sides the runtime drops
    /// the Q/DQ pair and moves the integers.
    DataMovement,
}

/// What the runtime does with one node unit.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Replaced by one integer kernel (the runtime's op type).
    Fused { kernel: String },
    /// The Q/DQ pair is removed; the op runs on the integer tensor.
    Dropped,
    /// The runtime removes the op itself.
    Removed { why: String },
    /// Runs in float.
    Float { reason: Reason },
}

impl Verdict {
    /// True unless the unit runs in float.
    pub fn is_integer(&self) -> bool {
        !matches!(self, Verdict::Float { .. })
    }

    /// `fused`, `dropped`, `removed` or `float`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Fused { .. } => "fused",
            Verdict::Dropped => "dropped",
            Verdict::Removed { .. } => "removed",
            Verdict::Float { .. } => "float",
        }
    }

    /// The kernel, or what happened, or why not: the table's last column.
    pub fn detail(&self) -> String {
        match self {
            Verdict::Fused { kernel } => kernel.clone(),
            Verdict::Dropped => "Q/DQ pair dropped, runs on integers".into(),
            Verdict::Removed { why } => why.clone(),
            Verdict::Float { reason } => reason.to_string(),
        }
    }
}

impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("verdict", self.label())?;
        match self {
            Verdict::Fused { kernel } => m.serialize_entry("kernel", kernel)?,
            Verdict::Dropped => {}
            Verdict::Removed { why } => m.serialize_entry("why", why)?,
            Verdict::Float { reason } => {
                m.serialize_entry("reason_code", reason.code())?;
                m.serialize_entry("reason", &reason.to_string())?;
            }
        }
        m.end()
    }
}

/// Why a unit stays float. Messages name nodes and values in single quotes.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// No QDQ fusion for this op type (in this domain) on the target.
    NoKernel { op_type: String, domain: String },
    /// The op's schema version is one the fusion rule does not accept.
    OpsetVersion { op_type: String, since: i64 },
    /// A data input is not produced by a DequantizeLinear.
    MissingInputDq {
        slot: usize,
        value: String,
        note: Option<String>,
    },
    /// More DequantizeLinear inputs than the rule takes.
    UnexpectedDq { count: usize, expected: usize },
    /// An output is not followed by a QuantizeLinear.
    MissingOutputQ { value: String, note: Option<String> },
    /// The output goes through a Relu/Clip the following QuantizeLinear does not make redundant.
    ActivationBetween { node: String, op_type: String },
    /// A DequantizeLinear feeding the unit has other readers (or is a graph output).
    SharedDq { dq: String },
    /// An output feeds a QuantizeLinear and also other ops.
    MixedConsumers { value: String },
    /// An output is a graph output.
    GraphOutput { value: String },
    /// Integer types around the op do not match.
    TypeMismatch { detail: String },
    /// A 16-bit Q/DQ type the rule does not take.
    SixteenBit { dtype: DType },
    /// A 4-bit Q/DQ type the rule does not take.
    FourBit { dtype: DType },
    /// A type the target does not run at all.
    UnsupportedType { dtype: DType, detail: String },
    /// int8 activations into Conv/MatMul where the platform runs only u8 activations.
    Int8Activation { value: String, detail: String },
    /// int8 activations need int8 weights.
    WeightNotInt8 { weight: String, dtype: DType },
    /// The bias DequantizeLinear does not read int32.
    BiasNotInt32 { bias: String, dtype: DType },
    /// Gemm with `beta` ≠ 1 (and a bias).
    GemmBeta { beta: f32 },
    /// Gemm with `alpha` ≠ 1.
    GemmAlpha { alpha: f32 },
    /// Scale or zero point of a Q/DQ that must be a constant scalar is not.
    QParamsNotConstantScalar { node: String },
    /// A Q/DQ without a zero-point input where the rule needs one.
    MissingZeroPoint { node: String },
    /// Input and output Q/DQ parameters differ around a data-movement op.
    QParamsDiffer { input: String, output: String },
    /// MaxPool/ReduceMax/ReduceMin with a scale ≤ 0 (the order of values would flip).
    NonPositiveScale { scale: f64 },
    /// Zero point not 0 where the target needs symmetric quantization.
    NonZeroZeroPoint { value: String },
    /// Per-axis parameters where the target needs one scale, or the wrong axis.
    Granularity { value: String, detail: String },
    /// The target runs this op in higher precision.
    HigherPrecision { op_type: String },
    /// A Gather from a constant table stored quantized: the runtime dequantizes the whole
    /// table on every run and gathers floats.
    DequantizedTable { table: String },
}

impl Reason {
    /// Stable machine-readable code (JSON `reason_code`).
    pub fn code(&self) -> &'static str {
        match self {
            Reason::NoKernel { .. } => "no_kernel",
            Reason::OpsetVersion { .. } => "opset_version",
            Reason::MissingInputDq { .. } => "missing_input_dq",
            Reason::UnexpectedDq { .. } => "unexpected_dq",
            Reason::MissingOutputQ { .. } => "missing_output_q",
            Reason::ActivationBetween { .. } => "activation_between",
            Reason::SharedDq { .. } => "shared_dq",
            Reason::MixedConsumers { .. } => "mixed_consumers",
            Reason::GraphOutput { .. } => "graph_output",
            Reason::TypeMismatch { .. } => "type_mismatch",
            Reason::SixteenBit { .. } => "sixteen_bit",
            Reason::FourBit { .. } => "four_bit",
            Reason::UnsupportedType { .. } => "unsupported_type",
            Reason::Int8Activation { .. } => "int8_activation",
            Reason::WeightNotInt8 { .. } => "weight_not_int8",
            Reason::BiasNotInt32 { .. } => "bias_not_int32",
            Reason::GemmBeta { .. } => "gemm_beta",
            Reason::GemmAlpha { .. } => "gemm_alpha",
            Reason::QParamsNotConstantScalar { .. } => "qparams_not_constant_scalar",
            Reason::MissingZeroPoint { .. } => "missing_zero_point",
            Reason::QParamsDiffer { .. } => "qparams_differ",
            Reason::NonPositiveScale { .. } => "non_positive_scale",
            Reason::NonZeroZeroPoint { .. } => "non_zero_zero_point",
            Reason::Granularity { .. } => "granularity",
            Reason::HigherPrecision { .. } => "higher_precision",
            Reason::DequantizedTable { .. } => "dequantized_table",
        }
    }

    /// A short form without names, for grouping in summaries.
    pub fn short(&self) -> String {
        match self {
            Reason::NoKernel { op_type, .. } => format!("no integer kernel for {op_type}"),
            Reason::OpsetVersion { op_type, since } => {
                format!("{op_type} version {since} not fused")
            }
            Reason::MissingInputDq { .. } => "input not dequantized".into(),
            Reason::UnexpectedDq { .. } => "unexpected DequantizeLinear inputs".into(),
            Reason::MissingOutputQ { .. } => "output not quantized".into(),
            Reason::ActivationBetween { op_type, .. } => format!("{op_type} before Q"),
            Reason::SharedDq { .. } => "shared DequantizeLinear".into(),
            Reason::MixedConsumers { .. } => "output also read in float".into(),
            Reason::GraphOutput { .. } => "output is a graph output".into(),
            Reason::TypeMismatch { .. } => "integer types differ".into(),
            Reason::SixteenBit { .. } => "16-bit types".into(),
            Reason::FourBit { .. } => "4-bit types".into(),
            Reason::UnsupportedType { dtype, .. } => format!("{dtype} not supported"),
            Reason::Int8Activation { .. } => "int8 activations".into(),
            Reason::WeightNotInt8 { .. } => "int8 activations with uint8 weights".into(),
            Reason::BiasNotInt32 { .. } => "bias not int32".into(),
            Reason::GemmBeta { .. } => "Gemm beta != 1".into(),
            Reason::GemmAlpha { .. } => "Gemm alpha != 1".into(),
            Reason::QParamsNotConstantScalar { .. } => {
                "scale/zero point not constant scalars".into()
            }
            Reason::MissingZeroPoint { .. } => "Q/DQ without zero point".into(),
            Reason::QParamsDiffer { .. } => "scales/zero points differ".into(),
            Reason::NonPositiveScale { .. } => "scale not positive".into(),
            Reason::NonZeroZeroPoint { .. } => "zero point not 0".into(),
            Reason::Granularity { .. } => "per-axis parameters".into(),
            Reason::HigherPrecision { op_type } => format!("{op_type} in higher precision"),
            Reason::DequantizedTable { .. } => "table dequantized before the lookup".into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoKernel { op_type, domain } if domain.is_empty() => {
                write!(f, "no integer kernel for {op_type}")
            }
            Reason::NoKernel { op_type, domain } => {
                write!(f, "no integer kernel for {op_type} (domain '{domain}')")
            }
            Reason::OpsetVersion { op_type, since } => write!(
                f,
                "{op_type} of opset version {since} is not a version the fusion rule accepts"
            ),
            Reason::MissingInputDq { slot, value, note } => {
                write!(f, "input {slot} ('{value}') is not dequantized")?;
                if let Some(n) = note {
                    write!(f, " ({n})")?;
                }
                Ok(())
            }
            Reason::UnexpectedDq { count, expected } => write!(
                f,
                "{count} inputs come from DequantizeLinear where the rule takes {expected}"
            ),
            Reason::MissingOutputQ { value, note } => {
                write!(f, "output '{value}' is not quantized (no QuantizeLinear after it)")?;
                if let Some(n) = note {
                    write!(f, " ({n})")?;
                }
                Ok(())
            }
            Reason::ActivationBetween { node, op_type } => write!(
                f,
                "output goes through {op_type} '{node}' before its QuantizeLinear, and the \
                 quantized range does not make it redundant"
            ),
            Reason::SharedDq { dq } => write!(
                f,
                "DequantizeLinear '{dq}' also feeds other nodes or a graph output"
            ),
            Reason::MixedConsumers { value } => write!(
                f,
                "output '{value}' feeds a QuantizeLinear and also other nodes"
            ),
            Reason::GraphOutput { value } => write!(f, "output '{value}' is a graph output"),
            Reason::TypeMismatch { detail } => write!(f, "integer types differ: {detail}"),
            Reason::SixteenBit { dtype } => {
                write!(f, "{dtype} Q/DQ: the integer kernel takes 8-bit types only")
            }
            Reason::FourBit { dtype } => write!(f, "{dtype} Q/DQ: no 4-bit integer kernel"),
            Reason::UnsupportedType { dtype, detail } => write!(f, "{dtype} Q/DQ: {detail}"),
            Reason::Int8Activation { value, detail } => {
                write!(f, "int8 activation '{value}': {detail}")
            }
            Reason::WeightNotInt8 { weight, dtype } => write!(
                f,
                "activations are int8 but weight '{weight}' is {dtype} (int8 activations need int8 weights)"
            ),
            Reason::BiasNotInt32 { bias, dtype } => {
                write!(f, "bias '{bias}' is dequantized from {dtype}, not int32")
            }
            Reason::GemmBeta { beta } => write!(f, "Gemm has beta = {beta} (QGemm needs 1)"),
            Reason::GemmAlpha { alpha } => {
                write!(f, "Gemm has alpha = {alpha} (the fusion needs 1)")
            }
            Reason::QParamsNotConstantScalar { node } => write!(
                f,
                "scale or zero point of '{node}' is not a constant scalar"
            ),
            Reason::MissingZeroPoint { node } => write!(
                f,
                "'{node}' has no zero-point input (dropping a Q/DQ pair needs explicit zero points)"
            ),
            Reason::QParamsDiffer { input, output } => write!(
                f,
                "input and output are quantized differently ({input} in, {output} out)"
            ),
            Reason::NonPositiveScale { scale } => write!(
                f,
                "scale {scale} is not positive (the order of values would flip)"
            ),
            Reason::NonZeroZeroPoint { value } => write!(
                f,
                "'{value}' has a non-zero zero point (symmetric quantization needed)"
            ),
            Reason::Granularity { value, detail } => write!(f, "'{value}': {detail}"),
            Reason::HigherPrecision { op_type } => {
                write!(f, "TensorRT runs {op_type} in higher precision")
            }
            Reason::DequantizedTable { table } => write!(
                f,
                "the table '{table}' is stored quantized: its DequantizeLinear runs on the whole \
                 table every run (it is not constant-folded, and no kernel fuses it with the \
                 Gather), which then moves floats"
            ),
        }
    }
}

/// Something the runtime accepts but computes differently from the QDQ graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Warning {
    /// The bias scale is not `input scale × weight scale` (per channel): the integer
    /// kernel adds the int32 values as if it were.
    BiasScale {
        bias: String,
        channel: usize,
        expected: f64,
        found: f64,
    },
    /// The bias zero point is not 0: the integer kernel ignores it.
    BiasZeroPoint { bias: String },
    /// Per-channel weight scales along an axis that is not the output channels.
    WeightAxis {
        weight: String,
        axis: i64,
        expected: i64,
    },
    /// Per-axis scales on an activation where the kernel takes one scale.
    PerAxisActivation { value: String },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::BiasScale {
                bias,
                channel,
                expected,
                found,
            } => write!(
                f,
                "bias '{bias}' channel {channel} has scale {found:e}, not input scale × weight \
                 scale = {expected:e}; the integer kernel uses the int32 values as if it were"
            ),
            Warning::BiasZeroPoint { bias } => write!(
                f,
                "bias '{bias}' has a non-zero zero point, which the integer kernel ignores"
            ),
            Warning::WeightAxis {
                weight,
                axis,
                expected,
            } => write!(
                f,
                "weight '{weight}' has per-channel scales on axis {axis}; the kernel reads them per output channel (axis {expected})"
            ),
            Warning::PerAxisActivation { value } => write!(
                f,
                "activation '{value}' has per-axis scales; the kernel takes one scale"
            ),
        }
    }
}

impl Serialize for Warning {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// One node unit and what the target does with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unit {
    /// Display name: the node name, or the op type when unnamed.
    pub node: String,
    /// The ONNX node name as written (`None` when unnamed).
    pub name: Option<String>,
    pub op_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    pub kind: UnitKind,
    /// The op's output values in the linted model.
    pub outputs: Vec<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// What the runtime changes on the way (shared DQ duplicated, Q/DQ propagated, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

/// The lint result for one model and target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FusionReport {
    pub target: Target,
    /// The CPU assumed (ONNX Runtime only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// False for the generic target, which has no fusion model.
    pub fusion_model: bool,
    pub quantize_nodes: usize,
    pub dequantize_nodes: usize,
    /// Units in topological order of the model.
    pub units: Vec<Unit>,
    /// Model-level remarks (subgraphs not analysed, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Counts and the one-line summary of a [`FusionReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Coverage {
    pub target: Target,
    pub units: usize,
    pub fused: usize,
    pub dropped: usize,
    pub removed: usize,
    pub float: usize,
    /// Short reason → display names of the float units, both sorted.
    pub float_reasons: BTreeMap<String, Vec<String>>,
    /// e.g. `fusion     41 of 45 node units run on integers (ort-cpu): …`.
    pub line: String,
}

/// The command-line spelling of a target.
pub fn target_name(t: Target) -> &'static str {
    match t {
        Target::OrtCpu => "ort-cpu",
        Target::Tensorrt => "tensorrt",
        Target::Generic => "generic",
    }
}

impl FusionReport {
    /// True when the model has any QuantizeLinear or DequantizeLinear in its main graph.
    pub fn has_qdq(&self) -> bool {
        self.quantize_nodes + self.dequantize_nodes > 0
    }

    /// Counts and the coverage line.
    pub fn coverage(&self) -> Coverage {
        let count = |f: fn(&Verdict) -> bool| self.units.iter().filter(|u| f(&u.verdict)).count();
        let fused = count(|v| matches!(v, Verdict::Fused { .. }));
        let dropped = count(|v| matches!(v, Verdict::Dropped));
        let removed = count(|v| matches!(v, Verdict::Removed { .. }));
        let float = count(|v| matches!(v, Verdict::Float { .. }));
        let mut float_reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for u in &self.units {
            if let Verdict::Float { reason } = &u.verdict {
                float_reasons
                    .entry(reason.short())
                    .or_default()
                    .push(u.node.clone());
            }
        }
        for v in float_reasons.values_mut() {
            v.sort();
        }
        let t = target_name(self.target);
        let line = if !self.fusion_model {
            format!("fusion     no fusion model for target {t} (lint with --target ort-cpu or tensorrt)")
        } else if self.units.is_empty() {
            format!("fusion     no node units ({t}): no op reads a DequantizeLinear or feeds a QuantizeLinear")
        } else {
            let n = self.units.len();
            let mut parts = vec![format!("{fused} fused")];
            if dropped > 0 {
                parts.push(format!("{dropped} data-movement with Q/DQ dropped"));
            }
            if removed > 0 {
                parts.push(format!("{removed} removed"));
            }
            let mut line = format!(
                "fusion     {} of {n} node units run on integers ({t}: {})",
                fused + dropped + removed,
                parts.join(", ")
            );
            if float > 0 {
                let mut groups: Vec<(&String, &Vec<String>)> = float_reasons.iter().collect();
                groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
                let text: Vec<String> = groups
                    .iter()
                    .map(|(r, nodes)| format!("{} {r}", nodes.len()))
                    .collect();
                line += &format!("; {float} stay float: {}", text.join(", "));
            }
            line
        };
        Coverage {
            target: self.target,
            units: self.units.len(),
            fused,
            dropped,
            removed,
            float,
            float_reasons,
            line,
        }
    }
}

/// Lints the main graph of `model` for `opts.target`.
pub fn lint(model: &Model, opts: &LintOptions) -> Result<FusionReport, LintError> {
    let g = &model.graph;
    g.topo_order()?;
    let (quantize_nodes, dequantize_nodes) = qdq_counts(g);
    let mut notes = Vec::new();
    if subgraphs_have_qdq(g) {
        notes.push(
            "QuantizeLinear/DequantizeLinear inside subgraphs (If/Loop bodies) are not analysed"
                .to_string(),
        );
    }
    let (units, platform, fusion_model) = match opts.target {
        Target::OrtCpu => (ort::units(model, opts.platform)?, Some(opts.platform), true),
        Target::Tensorrt => (trt::units(model)?, None, true),
        Target::Generic => (Vec::new(), None, false),
    };
    Ok(FusionReport {
        target: opts.target,
        platform,
        fusion_model,
        quantize_nodes,
        dequantize_nodes,
        units,
        notes,
    })
}

// ----- helpers shared by the target models -----

pub(crate) fn is_q(g: &Graph, o: OpId) -> bool {
    let op = g.op(o);
    op.op_type == "QuantizeLinear" && matches!(op.domain_key(), "" | "com.microsoft")
}

pub(crate) fn is_dq(g: &Graph, o: OpId) -> bool {
    let op = g.op(o);
    op.op_type == "DequantizeLinear" && matches!(op.domain_key(), "" | "com.microsoft")
}

fn qdq_counts(g: &Graph) -> (usize, usize) {
    let q = g.ops().filter(|o| is_q(g, *o)).count();
    let dq = g.ops().filter(|o| is_dq(g, *o)).count();
    (q, dq)
}

fn subgraphs_have_qdq(g: &Graph) -> bool {
    g.ops().any(|o| {
        g.op(o).subgraphs().iter().any(|(_, sg)| {
            let (q, dq) = qdq_counts(sg);
            q + dq > 0 || subgraphs_have_qdq(sg)
        })
    })
}

/// Ops that are never units: they read only the shape of their input, or are constants.
pub(crate) fn never_a_unit(op_type: &str) -> bool {
    matches!(op_type, "Shape" | "Size" | "Constant")
}

/// The constant behind `v`: a non-overridable initializer or a `Constant` node's value.
pub(crate) fn const_tensor(model: &Model, g: &Graph, v: ValueId) -> Option<Tensor> {
    let val = g.value(v);
    if let Some(t) = val.init {
        // From IR version 4 an initializer listed as a graph input can be overridden.
        if g.is_input(v) && model.ir_version.unwrap_or(0) >= 4 {
            return None;
        }
        return g.tensor(t).to_tensor().ok();
    }
    let (p, _) = g.producer(v)?;
    let op = g.op(p);
    if op.op_type == "Constant" && op.domain_key().is_empty() {
        return crate::ir::eval::constant_value(op).ok();
    }
    None
}

/// Element count and rank of `v` when known (constant or typed).
pub(crate) fn dims_of(model: &Model, g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    if let Some(t) = g.value(v).init {
        return Some(g.tensor(t).dims.clone());
    }
    if let Some(t) = const_tensor(model, g, v) {
        return Some(t.shape().iter().map(|&d| d as i64).collect());
    }
    g.value(v).ty.as_ref().and_then(|t| t.known_dims())
}

/// ONNX Runtime's `IsScalar`: rank 0, or rank 1 with one element.
pub(crate) fn is_scalar_shape(dims: &[i64]) -> bool {
    dims.is_empty() || (dims.len() == 1 && dims[0] == 1)
}

/// Element type of `v` when known.
pub(crate) fn dtype_of(g: &Graph, v: ValueId) -> Option<DType> {
    if let Some(t) = g.value(v).init {
        return Some(g.tensor(t).dtype);
    }
    g.value(v).dtype()
}

/// The schema version an op resolves to at the model's opset, for the few op types
/// whose fusion rules name versions.
pub(crate) fn since_version(op_type: &str, opset: i64) -> Option<i64> {
    let versions: &[i64] = match op_type {
        "MaxPool" => &[1, 8, 10, 11, 12, 22],
        "Reshape" => &[1, 5, 13, 14, 19, 21, 23, 24, 25],
        "Transpose" => &[1, 13, 21, 23, 24, 25],
        "Squeeze" | "Unsqueeze" => &[1, 11, 13, 21, 23, 24, 25],
        "Slice" => &[1, 10, 11, 13],
        "QuantizeLinear" | "DequantizeLinear" => &[10, 13, 19, 21, 23, 24, 25],
        _ => return None,
    };
    versions.iter().rev().find(|v| **v <= opset).copied()
}

#[cfg(test)]
mod tests;
