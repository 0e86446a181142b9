//! The per-op quantization rule table: the one place that says how each op type is
//! quantized. Passes read it; nothing else branches on op names to decide quantization.
//!
//! A rule gives the role of each input slot (activation, weight with its channel axis,
//! bias, or left float), what happens to the output (quantized, sharing the input's
//! scale, folded into the producer's range, or float), the runtime kernel it fuses to,
//! and the targets that quantize it.

use serde::{Deserialize, Serialize};

/// The runtime a model is quantized for; it sets defaults and placement style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// ONNX Runtime on CPUs: node units that fuse to QLinear* kernels, int32 bias,
    /// BatchNormalization folded, data-movement ops sharing scales.
    OrtCpu,
    /// TensorRT explicit quantization: symmetric int8, quantize op inputs only,
    /// bias left float, no Q/DQ on data movement, no simulated BN folding.
    Tensorrt,
    /// Every op with a rule, for runtimes or simulators without fusion constraints.
    Generic,
}

impl Target {
    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Target::OrtCpu => "ort-cpu",
            Target::Tensorrt => "tensorrt",
            Target::Generic => "generic",
        }
    }
}

/// Which axis of a weight holds the output channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightAxis {
    Fixed(i64),
    /// Gemm: 0 when `transB` = 1, else 1.
    GemmB,
    /// MatMul: the last axis of B.
    Last,
}

/// Role of one input slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Quantized with a calibrated range (a constant gets its own min/max range).
    Activation,
    /// A constant quantized per channel (or per tensor) to a signed symmetric grid;
    /// not constant, it is treated as an activation.
    Weight(WeightAxis),
    /// A constant quantized to int32 with scale `s_input * s_weight`, zero point 0.
    Bias,
    /// Not quantized (shapes, indices, conditions…).
    Float,
}

/// What happens to the op's output(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputPolicy {
    /// Quantized with its own calibrated range.
    Quantize,
    /// Same scale and zero point as input 0 (data movement: runtimes drop the Q/DQ pair).
    ShareInput,
    /// Relu/Clip: the producer's output takes this op's output range, and with an
    /// asymmetric grid starting at zero the op is removed.
    FoldIntoProducer,
    /// Left float (the consumer quantizes it if it needs to).
    KeepFloat,
}

/// How one op type is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpRule {
    pub op_type: &'static str,
    /// Roles of the leading input slots.
    pub inputs: &'static [Role],
    /// Role of any further slot (variadic ops such as Concat).
    pub rest: Role,
    pub output: OutputPolicy,
    /// The integer kernel ONNX Runtime's CPU provider fuses the node unit to.
    pub ort_kernel: Option<&'static str>,
    /// Quantized for TensorRT (inputs only).
    pub trt: bool,
    /// Quantized only when every computed float input is already quantized where it is
    /// produced (by a producer whose output policy quantizes it, or as a graph input): an
    /// element-wise op behind a producer left float (a MatMul whose integer kernel returns
    /// float, a LayerNormalization, a Softmax input with its -inf mask) would put a new
    /// rounding of a value no integer kernel needs, and a per-tensor 8-bit grid on a
    /// transformer's residual stream, whose few outlier channels are a hundred times the
    /// rest, leaves the other channels a handful of steps.
    pub after_quantized: bool,
}

use OutputPolicy::*;
use Role::*;

const fn r(
    op_type: &'static str,
    inputs: &'static [Role],
    rest: Role,
    output: OutputPolicy,
    ort_kernel: Option<&'static str>,
    trt: bool,
) -> OpRule {
    OpRule {
        op_type,
        inputs,
        rest,
        output,
        ort_kernel,
        trt,
        after_quantized: false,
    }
}

/// [`r`] for an op quantized only behind quantized producers ([`OpRule::after_quantized`]).
const fn rq(
    op_type: &'static str,
    inputs: &'static [Role],
    output: OutputPolicy,
    ort_kernel: Option<&'static str>,
    trt: bool,
) -> OpRule {
    OpRule {
        after_quantized: true,
        ..r(op_type, inputs, Float, output, ort_kernel, trt)
    }
}

const CONV: &[Role] = &[Activation, Weight(WeightAxis::Fixed(0)), Bias];
const CONVT: &[Role] = &[Activation, Weight(WeightAxis::Fixed(1)), Bias];
const GEMM: &[Role] = &[Activation, Weight(WeightAxis::GemmB), Bias];
const MATMUL: &[Role] = &[Activation, Weight(WeightAxis::Last)];
/// Gather: a constant table is a weight with one scale per row (axis 0: the rows the
/// indices pick), the indices stay integers.
const GATHER: &[Role] = &[Weight(WeightAxis::Fixed(0)), Float];
const ACT1: &[Role] = &[Activation];
const ACT2: &[Role] = &[Activation, Activation];
const WHERE: &[Role] = &[Float, Activation, Activation];

/// The table, in alphabetical order of op type.
pub const RULES: &[OpRule] = &[
    // Residual and bias Adds of a transformer sit behind float producers (MatMul's
    // MatMulIntegerToFloat, LayerNormalization): they stay float there.
    rq("Add", ACT2, Quantize, Some("QLinearAdd"), true),
    r(
        "AveragePool",
        ACT1,
        Float,
        Quantize,
        Some("QLinearAveragePool"),
        true,
    ),
    r("Clip", ACT1, Float, FoldIntoProducer, None, false),
    r(
        "Concat",
        ACT1,
        Activation,
        Quantize,
        Some("QLinearConcat"),
        false,
    ),
    r("Conv", CONV, Float, Quantize, Some("QLinearConv"), true),
    r(
        "ConvTranspose",
        CONVT,
        Float,
        Quantize,
        Some("QLinearConvTranspose"),
        true,
    ),
    r(
        "Expand",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    r(
        "Flatten",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    // A computed input shares its scale; a constant table (an embedding) is stored int8
    // per row and dequantized before the Gather, which runs on floats
    // (`quant::embedding`).
    r(
        "Gather",
        GATHER,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    r("Gemm", GEMM, Float, Quantize, Some("QGemm"), true),
    r(
        "GlobalAveragePool",
        ACT1,
        Float,
        Quantize,
        Some("QLinearGlobalAveragePool"),
        true,
    ),
    r("HardSigmoid", ACT1, Float, Quantize, None, false),
    r("HardSwish", ACT1, Float, Quantize, None, false),
    r(
        "LeakyRelu",
        ACT1,
        Float,
        Quantize,
        Some("QLinearLeakyRelu"),
        false,
    ),
    // Both inputs quantized (a weight per output column, or a second activation: QKᵀ,
    // attention × V); the output stays float unless a consumer quantizes it, so ONNX
    // Runtime runs MatMulIntegerToFloat (QLinearMatMul when a Q follows).
    r(
        "MatMul",
        MATMUL,
        Float,
        KeepFloat,
        Some("MatMulIntegerToFloat"),
        true,
    ),
    r(
        "MaxPool",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    // GELU's products sit behind float producers in a transformer: float there.
    rq("Mul", ACT2, Quantize, Some("QLinearMul"), false),
    r("Relu", ACT1, Float, FoldIntoProducer, None, false),
    r(
        "Reshape",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    r(
        "Resize",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    r(
        "Sigmoid",
        ACT1,
        Float,
        Quantize,
        Some("QLinearSigmoid"),
        false,
    ),
    r(
        "Slice",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    // Attention scores carry the additive mask (-inf or the most negative float): their
    // input is never quantized behind a float Add, and the probabilities are quantized by
    // the MatMul that reads them.
    rq("Softmax", ACT1, Quantize, Some("QLinearSoftmax"), false),
    r(
        "Squeeze",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    r(
        "Tile",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    r(
        "Transpose",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    r(
        "Unsqueeze",
        ACT1,
        Float,
        ShareInput,
        Some("(Q/DQ dropped)"),
        false,
    ),
    r("Where", WHERE, Float, Quantize, Some("QLinearWhere"), false),
];

/// Op types left float on purpose, with the reason the summary gives.
pub const KEPT_FLOAT: &[(&str, &str)] = &[
    (
        "Erf",
        "GELU's Erf has no integer kernel; its input is a float MatMul output",
    ),
    (
        "LayerNormalization",
        "no integer kernel; its input, the residual stream, has outlier channels a per-tensor 8-bit grid cannot hold",
    ),
];

/// Ops that read only the shape of their input, never its values: their outputs are fixed
/// once the input shapes are (the plan treats them like constants).
pub const SHAPE_READERS: &[&str] = &["Shape", "Size"];

/// Ops that ONNX Runtime fuses to integer kernels without a QuantizeLinear on their output
/// (QGemm, MatMulIntegerToFloat): when their output is a graph output it stays float,
/// which saves a rounding step at no speed cost.
pub const OUTPUT_Q_OPTIONAL: &[&str] = &["Gemm", "MatMul"];

/// Inputs (op type, slot) whose values must stay float: small errors there are amplified
/// without bound (1/x, sqrt and log near zero: the variance feeding a normalisation).
/// A value read at one of these slots is not quantized, so its producer stays float.
pub const RANGE_SENSITIVE: &[(&str, usize)] = &[
    ("Div", 1),
    ("Log", 0),
    ("Pow", 0),
    ("Reciprocal", 0),
    ("Sqrt", 0),
];

/// True when input `slot` of `op_type` must stay float (see [`RANGE_SENSITIVE`]).
pub fn is_range_sensitive(op_type: &str, slot: usize) -> bool {
    RANGE_SENSITIVE
        .iter()
        .any(|(o, s)| *o == op_type && *s == slot)
}

/// What the plan does with the subgraphs an op holds in its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyPolicy {
    /// Planned like the main graph; calibration runs each subgraph on the values it
    /// sees in the samples that reach it.
    Plan,
    /// Every op inside stays float, for this reason.
    Float(&'static str),
}

/// Control-flow ops and what happens to their subgraphs. An `If` branch runs as a
/// model of its own on the captured values of the samples that take it; a `Loop` body
/// runs once per iteration on the carried values of each sample; a `Scan` body runs one
/// step at a time on the states and slices of each sample.
pub const BODIES: &[(&str, BodyPolicy)] = &[
    ("If", BodyPolicy::Plan),
    ("Loop", BodyPolicy::Plan),
    ("Scan", BodyPolicy::Plan),
];

/// The policy for the subgraphs of `op_type` (other domains and unknown ops holding
/// graphs: left float).
pub fn body_policy(op_type: &str, domain: &str) -> BodyPolicy {
    if !domain.is_empty() && domain != "ai.onnx" {
        return BodyPolicy::Float("subgraph of an op outside the ONNX domain: left float");
    }
    BODIES
        .iter()
        .find(|(o, _)| *o == op_type)
        .map(|(_, p)| *p)
        .unwrap_or(BodyPolicy::Float(
            "subgraph of an op that is not If/Loop/Scan: left float",
        ))
}

/// Why an op has no rule for a target (shown in the summary).
pub fn no_rule_reason(op_type: &str, domain: &str, target: Target) -> String {
    if !domain.is_empty() {
        return format!("domain '{domain}' is not quantized");
    }
    if let Some((_, why)) = KEPT_FLOAT.iter().find(|(o, _)| *o == op_type) {
        return (*why).to_string();
    }
    match RULES.iter().find(|r| r.op_type == op_type) {
        Some(_) if target == Target::Tensorrt => "TensorRT runs it in higher precision".into(),
        Some(_) => "no integer kernel in ONNX Runtime's CPU provider".into(),
        None => "no quantization rule for this op type".into(),
    }
}

/// The rule for an op, if `target` quantizes it.
pub fn rule_for(op_type: &str, domain: &str, target: Target) -> Option<OpRule> {
    if !domain.is_empty() && domain != "ai.onnx" {
        return None;
    }
    let rule = *RULES.iter().find(|r| r.op_type == op_type)?;
    match target {
        Target::Generic => Some(rule),
        Target::OrtCpu => {
            // Unary ops without an integer kernel would run DQ → float → Q: slower, no gain.
            if rule.ort_kernel.is_none() && rule.output == Quantize {
                None
            } else {
                Some(rule)
            }
        }
        Target::Tensorrt => rule.trt.then_some(OpRule {
            output: KeepFloat,
            inputs: match rule.op_type {
                "Conv" => &[Activation, Weight(WeightAxis::Fixed(0)), Float],
                "ConvTranspose" => &[Activation, Weight(WeightAxis::Fixed(1)), Float],
                "Gemm" => &[Activation, Weight(WeightAxis::GemmB), Float],
                _ => rule.inputs,
            },
            ..rule
        }),
    }
}

impl OpRule {
    /// Role of input `slot`.
    pub fn role(&self, slot: usize) -> Role {
        self.inputs.get(slot).copied().unwrap_or(self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for w in RULES.windows(2) {
            assert!(
                w[0].op_type < w[1].op_type,
                "{} / {}",
                w[0].op_type,
                w[1].op_type
            );
        }
    }

    #[test]
    fn targets_differ_as_documented() {
        let conv = rule_for("Conv", "", Target::OrtCpu).unwrap();
        assert_eq!(conv.role(2), Bias);
        assert_eq!(conv.output, Quantize);
        let conv = rule_for("Conv", "", Target::Tensorrt).unwrap();
        assert_eq!(conv.role(2), Float, "TensorRT leaves bias float");
        assert_eq!(conv.output, KeepFloat, "TensorRT quantizes inputs only");
        assert!(rule_for("Reshape", "", Target::Tensorrt).is_none());
        assert!(rule_for("HardSwish", "", Target::OrtCpu).is_none());
        assert!(rule_for("HardSwish", "", Target::Generic).is_some());
        assert!(rule_for("Conv", "com.microsoft", Target::Generic).is_none());
        assert_eq!(
            rule_for("Concat", "", Target::OrtCpu).unwrap().role(5),
            Activation
        );
    }
}
