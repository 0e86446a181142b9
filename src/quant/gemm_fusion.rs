//! ONNX Runtime's `MatMulAddFusion`, as the static plan needs to know it. The runtime runs
//! it before its QDQ fusions: a MatMul whose one reader is an Add (the MatMul output no
//! graph output) becomes a Gemm with the Add's other input as bias C when the input A has
//! rank 2, the weight has rank 2, both Add inputs are float and the bias broadcasts as
//! Gemm's C does (`[N]`, `[1, N]`, `[M, 1]` or `[M, N]`). The QDQ selectors then see a
//! Gemm: without a QuantizeLinear on the Add's output it stays a **float** Gemm, its
//! inputs dequantized first, so quantizing them buys no integer kernel, only rounding.
//!
//! The plan ([`super::plan`], ort-cpu target) finds such MatMuls with [`fused_bias_add`]
//! once every op is planned and, where nothing quantizes the Add's output, plans them
//! again as that Gemm: the input A is not quantized for it, the weight is stored int8 per
//! output column on all of int8's grid (no integer kernel multiplies it, so the 7-bit guard
//! buys nothing) and dequantized. ONNX Runtime then runs an 8-bit MatMulNBits (its
//! DequantizeLinear → Gemm rewrite, the bias an input) when A is float, or a float Gemm
//! when A is dequantized because another op quantizes it ([`head_kernel`]).
//!
//! Chosen by measurement on the shipped models with such a head (magika, ppocr_cls; ONNX
//! Runtime 1.32, all evaluation samples; README, Transformers): the planned Gemm scores
//! 23.13 / 30.68 dB output SQNR against 23.10 / 30.60 dB for the quantized input and 7-bit
//! weight written before, 23.18 / 30.59 dB with a QuantizeLinear on the Add's output (a
//! QGemm) and 23.04 / 30.56 dB for a float head, at the same accuracy and latencies within
//! noise; a float head costs magika 0.1× of its size.
//!
//! [`matmul_add`] is the one statement of the fusion's conditions: the plan reads it here
//! and the ort-cpu lint's simulation of ONNX Runtime (`lint::ort::matmul_add_fusion`)
//! reads it on its copy of the graph, each giving its own view of element types and dims.
//! A MatMul whose input has another rank is left as it is (the runtime fuses it only with
//! a fully known input shape, between Reshapes): [`MatMulAdd::Reshaped`] says when that
//! may happen, for the lint to note.

use crate::ir::{DType, Dim, Graph, OpId, ValueId, ValueType};

/// The kernel ONNX Runtime 1.32 runs for a MatMul fused with its bias Add `add` into a
/// Gemm whose weight is stored int8 and dequantized: with a float input A, its
/// DequantizeLinear → Gemm rewrite makes an 8-bit MatMulNBits (the bias its input); with
/// A dequantized as well (a reader or producer elsewhere quantizes it), a float Gemm.
pub fn head_kernel(add: &str, a_dequantized: bool) -> String {
    if a_dequantized {
        format!("float Gemm with bias Add '{add}' (MatMulAddFusion; inputs dequantized)")
    } else {
        format!("MatMulNBits, 8 bits, with bias Add '{add}' (MatMulAddFusion)")
    }
}

/// The reason a plan gives for such a MatMul when it leaves it float (no constant weight
/// to store in 8 bits).
pub fn float_gemm_reason(add: &str) -> String {
    format!(
        "ONNX Runtime fuses it with its bias Add '{add}' into a Gemm that stays float \
         (MatMulAddFusion): quantizing its inputs only adds rounding steps"
    )
}

/// What ONNX Runtime's `MatMulAddFusion` does with a MatMul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatMulAdd {
    /// Fused with its one reader `add` into a Gemm whose C is `bias`.
    Gemm { add: OpId, bias: ValueId },
    /// Not fused as modelled, but the input has a rank other than 2 and a fully known
    /// shape and the bias is `[N]`: the runtime may fuse it between Reshapes.
    Reshaped,
    /// Not fused.
    No,
}

fn is_float_type(d: Option<DType>) -> bool {
    matches!(d, Some(DType::F32 | DType::F16 | DType::BF16))
}

/// Whether ONNX Runtime fuses MatMul `o` of `g` with its bias Add into one Gemm: the MatMul's
/// outputs are no graph output and have one reader in all, a default-domain Add; the input
/// A is float and the Add's first input has its type; the weight has rank 2; A has rank 2
/// and the bias broadcasts as Gemm's C does (`[N]`, `[1, N]`, `[M, 1]` or `[M, N]`).
/// `dtype` and `dims` give a value's element type and dims (symbolic ones included) as the
/// caller knows them.
pub fn matmul_add(
    g: &Graph,
    o: OpId,
    dtype: impl Fn(ValueId) -> Option<DType>,
    dims: impl Fn(ValueId) -> Option<Vec<Dim>>,
) -> MatMulAdd {
    fused(g, o, dtype, dims).unwrap_or(MatMulAdd::No)
}

fn fused(
    g: &Graph,
    o: OpId,
    dtype: impl Fn(ValueId) -> Option<DType>,
    dims: impl Fn(ValueId) -> Option<Vec<Dim>>,
) -> Option<MatMulAdd> {
    let op = g.op(o);
    if op.op_type != "MatMul" || !op.domain_key().is_empty() {
        return None;
    }
    let mut readers = Vec::new();
    for y in g.outputs_of(o).into_iter().flatten() {
        if g.is_output(y) {
            return None;
        }
        readers.extend(g.consumers(y));
    }
    let [(add, slot)] = readers[..] else {
        return None;
    };
    let add_op = g.op(add);
    if add_op.op_type != "Add" || !add_op.domain_key().is_empty() {
        return None;
    }
    let (a, b) = (g.input(o, 0)?, g.input(o, 1)?);
    let bias = g.input(add, 1 - slot.min(1))?;
    let ta = dtype(a);
    if !is_float_type(ta) || g.input(add, 0).and_then(&dtype) != ta {
        return None;
    }
    let (ad, bd) = (dims(a)?, dims(b)?);
    if bd.len() != 2 {
        return None;
    }
    let n = &bd[1];
    let cd = dims(bias)?;
    let one = |d: &Dim| matches!(d, Dim::Known(1));
    if ad.len() != 2 {
        let known = ad.iter().all(|d| matches!(d, Dim::Known(_)));
        return (known && cd.len() == 1 && cd[0] == *n).then_some(MatMulAdd::Reshaped);
    }
    let valid = (cd.len() == 1 && cd[0] == *n)
        || (cd.len() == 2 && one(&cd[0]) && cd[1] == *n)
        || (cd.len() == 2 && cd[0] == ad[0] && (one(&cd[1]) || cd[1] == *n));
    valid.then_some(MatMulAdd::Gemm { add, bias })
}

/// The bias Add that ONNX Runtime fuses MatMul `o` of `g` with into one Gemm, if it does
/// ([`matmul_add`] with the plan's view: `konst` gives a constant's dims, constants of `g`
/// or captured ones; other values have their declared types).
pub fn fused_bias_add(
    g: &Graph,
    o: OpId,
    konst: impl Fn(ValueId) -> Option<Vec<i64>>,
) -> Option<OpId> {
    let dims = |v: ValueId| match konst(v) {
        Some(d) => Some(d.into_iter().map(Dim::Known).collect()),
        None => match &g.value(v).ty {
            Some(ValueType::Tensor {
                shape: Some(dims), ..
            }) => Some(dims.clone()),
            _ => None,
        },
    };
    match matmul_add(g, o, |v| g.value(v).dtype(), dims) {
        MatMulAdd::Gemm { add, .. } => Some(add),
        MatMulAdd::Reshaped | MatMulAdd::No => None,
    }
}
