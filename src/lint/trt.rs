//! TensorRT explicit quantization: which node units run in int8.
//!
//! Rules from TensorRT's documentation on explicit quantization (and the placement
//! ModelOpt uses for it): Q/DQ must be int8 (or fp8; int4 for weights) with zero point
//! 0; activations take one scale, weights one scale per output channel at most.
//! TensorRT moves DequantizeLinear forward, and QuantizeLinear backward, through
//! data-movement layers (and max pooling), and fuses DequantizeLinear into the next
//! convolution, matrix multiply, pooling or element-wise layer; a trailing QuantizeLinear
//! is optional (it is fused into the producer). Everything else that reads a
//! DequantizeLinear runs in higher precision. No TensorRT engine checks these rules.

use super::{
    const_tensor, dims_of, dtype_of, is_dq, is_q, is_scalar_shape, never_a_unit, LintError, Reason,
    Unit, UnitKind, Verdict,
};
use crate::ir::{DType, Graph, Model, OpId};

/// Layers DequantizeLinear propagates through.
const COMMUTING: &[&str] = &[
    "Concat",
    "Expand",
    "Flatten",
    "Gather",
    "Pad",
    "Reshape",
    "Resize",
    "Slice",
    "Split",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
];

/// Where TensorRT expects the output-channel axis of a weight.
enum WeightAxis {
    Fixed(i64),
    GemmB,
    Last,
}

fn weighted(op_type: &str) -> Option<(&'static str, WeightAxis)> {
    Some(match op_type {
        "Conv" => ("int8 convolution", WeightAxis::Fixed(0)),
        "ConvTranspose" => ("int8 deconvolution", WeightAxis::Fixed(1)),
        "Gemm" => ("int8 fully connected", WeightAxis::GemmB),
        "MatMul" => ("int8 matrix multiply", WeightAxis::Last),
        _ => return None,
    })
}

fn pointwise(op_type: &str) -> Option<&'static str> {
    Some(match op_type {
        "MaxPool" | "AveragePool" | "GlobalAveragePool" => "int8 pooling",
        "Add" => "int8 element-wise",
        _ => return None,
    })
}

/// The units of `model`'s main graph for TensorRT.
pub fn units(model: &Model) -> Result<Vec<Unit>, LintError> {
    let g = &model.graph;
    let mut out = Vec::new();
    for o in g.topo_order()? {
        let op = g.op(o);
        if is_q(g, o) || is_dq(g, o) || never_a_unit(&op.op_type) {
            continue;
        }
        let dq_in: Vec<Option<OpId>> = g
            .inputs_of(o)
            .into_iter()
            .map(|v| {
                v.and_then(|v| g.producer(v))
                    .map(|(p, _)| p)
                    .filter(|p| is_dq(g, *p))
            })
            .collect();
        let q_out = g
            .outputs_of(o)
            .into_iter()
            .flatten()
            .any(|v| g.consumers(v).iter().any(|(c, _)| is_q(g, *c)));
        if dq_in.iter().all(Option::is_none) && !q_out {
            continue;
        }
        let verdict = match judge(model, g, o, &dq_in) {
            Ok(v) => v,
            Err(reason) => Verdict::Float { reason },
        };
        let kind = if COMMUTING.contains(&op.op_type.as_str()) {
            UnitKind::DataMovement
        } else {
            UnitKind::Compute
        };
        out.push(Unit {
            node: op.display_name().to_string(),
            name: op.name.clone().filter(|n| !n.is_empty()),
            op_type: op.op_type.clone(),
            domain: op.domain_key().to_string(),
            kind,
            outputs: g
                .outputs_of(o)
                .into_iter()
                .flatten()
                .map(|v| g.value(v).name.clone())
                .collect(),
            verdict,
            notes: Vec::new(),
            warnings: Vec::new(),
        });
    }
    Ok(out)
}

fn judge(model: &Model, g: &Graph, o: OpId, dq_in: &[Option<OpId>]) -> Result<Verdict, Reason> {
    let op = g.op(o);
    let op_type = op.op_type.as_str();
    if !op.domain_key().is_empty() {
        return Err(Reason::NoKernel {
            op_type: op.op_type.clone(),
            domain: op.domain_key().to_string(),
        });
    }
    let missing = |slot: usize| -> Reason {
        let v = g.input(o, slot);
        Reason::MissingInputDq {
            slot,
            value: v.map(|v| g.value(v).name.clone()).unwrap_or_default(),
            note: None,
        }
    };
    let dq_at = |slot: usize| dq_in.get(slot).copied().flatten();
    if let Some((kernel, axis)) = weighted(op_type) {
        let x = dq_at(0).ok_or_else(|| missing(0))?;
        let w = dq_at(1).ok_or_else(|| missing(1))?;
        check_dq(model, g, x, None)?;
        let rank = g
            .input(w, 0)
            .and_then(|v| dims_of(model, g, v))
            .map(|d| d.len() as i64);
        let expected = match axis {
            WeightAxis::Fixed(a) => Some(a),
            WeightAxis::GemmB => Some(if op.attr_int("transB").unwrap_or(0) == 1 {
                0
            } else {
                1
            }),
            WeightAxis::Last => rank.map(|r| r - 1),
        };
        check_dq(model, g, w, Some((expected, rank)))?;
        if let Some(b) = dq_at(2) {
            let d = g.input(b, 0).and_then(|v| dtype_of(g, v));
            return Err(Reason::UnsupportedType {
                dtype: d.unwrap_or(DType::I32),
                detail: format!(
                    "bias '{}' is quantized; TensorRT takes a float bias",
                    name_in(g, b)
                ),
            });
        }
        check_q_outputs(model, g, o)?;
        return Ok(Verdict::Fused {
            kernel: kernel.to_string(),
        });
    }
    let q_after = g
        .outputs_of(o)
        .into_iter()
        .flatten()
        .any(|v| g.consumers(v).iter().any(|(c, _)| is_q(g, *c)));
    // A QuantizeLinear moves backwards through layers that commute with it.
    if (COMMUTING.contains(&op_type) || op_type == "MaxPool") && dq_at(0).is_none() && q_after {
        check_q_outputs(model, g, o)?;
        return Ok(Verdict::Dropped);
    }
    if let Some(kernel) = pointwise(op_type) {
        let slots: Vec<usize> = (0..g.op(o).n_inputs)
            .filter(|s| g.input(o, *s).is_some())
            .collect();
        let data = if op_type == "Add" {
            &slots[..]
        } else {
            &slots[..slots.len().min(1)]
        };
        for &s in data {
            let dq = dq_at(s).ok_or_else(|| missing(s))?;
            check_dq(model, g, dq, None)?;
        }
        check_q_outputs(model, g, o)?;
        return Ok(Verdict::Fused {
            kernel: kernel.to_string(),
        });
    }
    if COMMUTING.contains(&op_type) {
        let dq = dq_at(0).ok_or_else(|| missing(0))?;
        check_dq(model, g, dq, None)?;
        return Ok(Verdict::Dropped);
    }
    Err(Reason::HigherPrecision {
        op_type: op.op_type.clone(),
    })
}

fn name_in(g: &Graph, dq: OpId) -> String {
    g.input(dq, 0)
        .map(|v| g.value(v).name.clone())
        .unwrap_or_default()
}

/// Type, zero point and granularity of one Q or DQ. `weight`: the expected channel axis
/// and the weight's rank (per-channel scales allowed); `None` for activations.
fn check_qdq(
    model: &Model,
    g: &Graph,
    n: OpId,
    value: String,
    dtype: Option<DType>,
    weight: Option<(Option<i64>, Option<i64>)>,
) -> Result<(), Reason> {
    match dtype {
        Some(DType::I8 | DType::F8E4M3FN) => {}
        Some(DType::I4) if weight.is_some() => {}
        Some(d) => {
            return Err(Reason::UnsupportedType {
                dtype: d,
                detail: "TensorRT quantizes to int8 or fp8 only (int4 for weights)".into(),
            })
        }
        None => {}
    }
    if let Some(z) = g.input(n, 2) {
        let zero = const_tensor(model, g, z)
            .and_then(|t| t.to_f64_vec())
            .is_some_and(|v| v.iter().all(|x| *x == 0.0));
        if !zero {
            return Err(Reason::NonZeroZeroPoint { value });
        }
    }
    let sdims = g.input(n, 1).and_then(|s| dims_of(model, g, s));
    let per_axis = sdims.as_ref().is_some_and(|d| !is_scalar_shape(d));
    if per_axis {
        match weight {
            None => {
                return Err(Reason::Granularity {
                    value,
                    detail: "per-axis activation scales; TensorRT takes one scale per activation"
                        .into(),
                })
            }
            Some((Some(expected), rank)) => {
                let mut axis = g.op(n).attr_int("axis").unwrap_or(1);
                if axis < 0 {
                    axis += rank.unwrap_or(0);
                }
                if axis != expected {
                    return Err(Reason::Granularity {
                        value,
                        detail: format!(
                            "per-channel scales on axis {axis}; TensorRT needs the output-channel axis {expected}"
                        ),
                    });
                }
            }
            Some((None, _)) => {}
        }
    }
    Ok(())
}

fn check_dq(
    model: &Model,
    g: &Graph,
    dq: OpId,
    weight: Option<(Option<i64>, Option<i64>)>,
) -> Result<(), Reason> {
    let x = g.input(dq, 0);
    let dtype = x.and_then(|v| dtype_of(g, v)).or_else(|| {
        x.and_then(|v| g.producer(v))
            .and_then(|(q, _)| g.input(q, 2))
            .and_then(|z| dtype_of(g, z))
    });
    check_qdq(model, g, dq, name_in(g, dq), dtype, weight)
}

/// A QuantizeLinear after the op is optional, but must itself be one TensorRT runs.
fn check_q_outputs(model: &Model, g: &Graph, o: OpId) -> Result<(), Reason> {
    for v in g.outputs_of(o).into_iter().flatten() {
        for (c, _) in g.consumers(v) {
            if is_q(g, c) {
                let dtype = g
                    .input(c, 2)
                    .and_then(|z| dtype_of(g, z))
                    .or(Some(DType::U8));
                check_qdq(model, g, c, g.value(v).name.clone(), dtype, None)?;
            }
        }
    }
    Ok(())
}
