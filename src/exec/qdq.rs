//! Exact QuantizeLinear / DequantizeLinear for the engine, backed by [`crate::quant::kernels`].
//!
//! The engine's own Q/DQ ops multiply by `1 / scale` (one step off near ties), know only u8/i8
//! per-tensor and per-axis forms, and fold `DQ → element-wise chain → Q` into a lookup table that
//! mis-runs `DQ → Softmax → Q`. The builders here replace them in the engine's op register (keyed
//! by op type only, so they serve the `ai.onnx` and `com.microsoft` domains alike). Each builds an
//! [`Expansion`] (type and shape rules) that wires one typed op taking the scale and zero point as
//! ordinary inputs; the typed op calls the host kernels. The engine's quantization rewrites look
//! for its own op types, so these ops pass the optimizer untouched. A DequantizeLinear of constant
//! weights is constant-folded through the same kernel when its output is no larger than the
//! engine's folding budget; a larger one (a float weight is four times its 8-bit form) runs on
//! every run, per-tensor or per-channel 8-bit in one pass over the engine's own tensors.
//!
//! 4-bit values travel widened to bytes. [`LOGICAL_DTYPE_ATTR`], set on a node by the model
//! preparation step, tells the op which 4-bit type its quantized side really has.

use super::convert::{host_dtype, storage_datum, to_engine, to_host};
use crate::ir::tensor::DType;
use crate::quant::kernels::{
    dequantize_axis_slice, dequantize_linear, dequantize_slice, quantize_linear,
    quantize_output_dtype, quantize_slice_i8, quantize_slice_u8, DequantizeAttrs, QuantizeAttrs,
};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Node attribute (integer ONNX data type code) naming the logical type of the quantized side of
/// a Q/DQ node whose values are stored widened. Only ever set on the engine's copy of a model.
pub(crate) const LOGICAL_DTYPE_ATTR: &str = "qrange.logical_dtype";

/// How QuantizeLinear picks its division precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PrecisionRule {
    /// float32 (ONNX opset ≤ 22, and the com.microsoft op).
    F32,
    /// The scale's type (ONNX opset 23+ without a `precision` attribute).
    ScaleType,
    /// The `precision` attribute (opset 23+).
    Explicit(DType),
}

fn attr_dtype(node: &NodeProto, name: &str) -> TractResult<Option<DType>> {
    Ok(node
        .get_attr_opt::<i64>(name)?
        .filter(|&c| c != 0)
        .map(|c| DType::from_onnx(c as i32)))
}

fn has_input(node: &NodeProto, ix: usize) -> bool {
    node.input.get(ix).is_some_and(|s| !s.is_empty())
}

fn node_label(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else {
        node.output.first().cloned().unwrap_or_default()
    }
}

fn storage(dtype: DType) -> TractResult<DatumType> {
    storage_datum(dtype).with_context(|| format!("element type {dtype} cannot be executed"))
}

fn fact_dtype(model: &TypedModel, outlet: OutletId) -> TractResult<DType> {
    let dt = model.outlet_fact(outlet)?.datum_type;
    host_dtype(dt).with_context(|| format!("unexpected element type {dt:?}"))
}

/// Op builder for QuantizeLinear (any domain).
pub(crate) fn quantize_builder(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let standard = node.domain.is_empty() || node.domain == "ai.onnx";
    let output = match attr_dtype(node, LOGICAL_DTYPE_ATTR)? {
        Some(d) => Some(d),
        None => attr_dtype(node, "output_dtype")?,
    };
    if let Some(d) = output {
        quantize_output_dtype(None, Some(d)).map_err(|e| format_err!("{e}"))?;
    }
    let precision = if standard && ctx.onnx_operator_set_version >= 23 {
        match attr_dtype(node, "precision")? {
            Some(d) => PrecisionRule::Explicit(d),
            None => PrecisionRule::ScaleType,
        }
    } else {
        PrecisionRule::F32
    };
    let op = QuantizeExpansion {
        node: node_label(node),
        axis: node.get_attr_opt::<i64>("axis")?.unwrap_or(1),
        block_size: node.get_attr_opt::<i64>("block_size")?.unwrap_or(0),
        output,
        has_zero_point: has_input(node, 2),
        precision,
    };
    Ok((expand(op), vec![]))
}

/// Op builder for DequantizeLinear (any domain).
pub(crate) fn dequantize_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let output = attr_dtype(node, "output_dtype")?;
    if let Some(d) = output {
        storage(d)?;
    }
    let op = DequantizeExpansion {
        node: node_label(node),
        axis: node.get_attr_opt::<i64>("axis")?.unwrap_or(1),
        block_size: node.get_attr_opt::<i64>("block_size")?.unwrap_or(0),
        output,
        input_logical: attr_dtype(node, LOGICAL_DTYPE_ATTR)?,
        has_zero_point: has_input(node, 2),
    };
    Ok((expand(op), vec![]))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QuantizeExpansion {
    node: String,
    axis: i64,
    block_size: i64,
    output: Option<DType>,
    has_zero_point: bool,
    precision: PrecisionRule,
}

impl Expansion for QuantizeExpansion {
    fn name(&self) -> StaticName {
        "QuantizeLinear".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2 + self.has_zero_point as usize)?;
        check_output_arity(outputs, 1)?;
        match (self.output, self.has_zero_point) {
            (Some(d), _) => s.equals(&outputs[0].datum_type, storage(d)?)?,
            (None, true) => s.equals(&outputs[0].datum_type, &inputs[2].datum_type)?,
            (None, false) => s.equals(&outputs[0].datum_type, DatumType::U8)?,
        }
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let output = match self.output {
            Some(d) => d,
            None if self.has_zero_point => fact_dtype(target, inputs[2])?,
            None => DType::U8,
        };
        let precision = match self.precision {
            PrecisionRule::F32 => None,
            PrecisionRule::ScaleType => Some(fact_dtype(target, inputs[1])?),
            PrecisionRule::Explicit(d) => Some(d),
        };
        let op = ExactQuantize {
            node: self.node.clone(),
            attrs: QuantizeAttrs {
                axis: self.axis,
                block_size: self.block_size,
                output_dtype: Some(output),
                precision,
            },
        };
        target.wire_node(prefix, op, inputs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DequantizeExpansion {
    node: String,
    axis: i64,
    block_size: i64,
    output: Option<DType>,
    input_logical: Option<DType>,
    has_zero_point: bool,
}

impl Expansion for DequantizeExpansion {
    fn name(&self) -> StaticName {
        "DequantizeLinear".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2 + self.has_zero_point as usize)?;
        check_output_arity(outputs, 1)?;
        match self.output {
            Some(d) => s.equals(&outputs[0].datum_type, storage(d)?)?,
            None => s.equals(&outputs[0].datum_type, &inputs[1].datum_type)?,
        }
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let output = match self.output {
            Some(d) => d,
            None => fact_dtype(target, inputs[1])?,
        };
        let op = ExactDequantize {
            node: self.node.clone(),
            attrs: DequantizeAttrs {
                axis: self.axis,
                block_size: self.block_size,
                output_dtype: Some(output),
            },
            input_logical: self.input_logical,
        };
        target.wire_node(prefix, op, inputs)
    }
}

/// The typed QuantizeLinear op: inputs `[x, scale]` or `[x, scale, zero_point]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ExactQuantize {
    node: String,
    /// `output_dtype` is always resolved (the logical type, 4-bit included).
    attrs: QuantizeAttrs,
}

impl Op for ExactQuantize {
    fn name(&self) -> StaticName {
        "QuantizeLinear(exact)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.attrs)])
    }

    op_as_typed_op!();
}

impl EvalOp for ExactQuantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if let Some(y) = self.per_tensor_8bit(&inputs)? {
            return Ok(tvec!(y.into_tvalue()));
        }
        let x = to_host(&inputs[0], None)?;
        let scale = to_host(&inputs[1], None)?;
        let zero_point = match inputs.get(2) {
            Some(z) => Some(to_host(z, self.attrs.output_dtype)?),
            None => None,
        };
        let y = quantize_linear(&x, &scale, zero_point.as_ref(), &self.attrs)
            .map_err(|e| format_err!("QuantizeLinear node '{}': {e}", self.node))?;
        let y = to_engine(&y).map_err(|d| format_err!("{d} output cannot be executed"))?;
        Ok(tvec!(y.into_tvalue()))
    }
}

impl ExactQuantize {
    /// The common case without host copies: contiguous f32 input, scalar scale and zero
    /// point, float32 division, 8-bit output (the same kernel as [`quantize_linear`]'s).
    /// `None` when the case does not apply.
    fn per_tensor_8bit(&self, inputs: &[TValue]) -> TractResult<Option<Tensor>> {
        let a = &self.attrs;
        if a.block_size != 0 || !matches!(a.precision, None | Some(DType::F32)) {
            return Ok(None);
        }
        let (Some(scale), Some(x)) = (scalar::<f32>(&inputs[1]), plain::<f32>(&inputs[0])) else {
            return Ok(None);
        };
        let shape = inputs[0].shape();
        let zp = inputs.get(2);
        Ok(match a.output_dtype {
            Some(DType::U8) => {
                let Some(z) = zp.map_or(Some(0), scalar::<u8>) else {
                    return Ok(None);
                };
                Some(shaped(shape, quantize_slice_u8(x, scale, z))?)
            }
            Some(DType::I8) => {
                let Some(z) = zp.map_or(Some(0), scalar::<i8>) else {
                    return Ok(None);
                };
                Some(shaped(shape, quantize_slice_i8(x, scale, z))?)
            }
            _ => None,
        })
    }
}

/// The value of a rank-0 tensor of type `T`.
fn scalar<T: Datum + Copy>(t: &TValue) -> Option<T> {
    if t.rank() != 0 || t.datum_type() != T::datum_type() {
        return None;
    }
    t.as_plain_ram()?.to_scalar::<T>().ok().copied()
}

/// The contiguous data of a tensor of type `T`.
fn plain<T: Datum>(t: &TValue) -> Option<&[T]> {
    if t.datum_type() != T::datum_type() {
        return None;
    }
    t.as_plain_ram()?.as_slice::<T>().ok()
}

/// A tensor of `shape` holding `values` (no copy).
fn shaped<T: Datum>(shape: &[usize], values: Vec<T>) -> TractResult<Tensor> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, values)?.into_tensor())
}

impl TypedOp for ExactQuantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = storage(self.attrs.output_dtype.unwrap_or(DType::U8))?;
        Ok(tvec!(TypedFact::dt_shape(dt, inputs[0].shape.clone())))
    }

    as_op!();
}

/// The typed DequantizeLinear op: inputs `[x, scale]` or `[x, scale, zero_point]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ExactDequantize {
    node: String,
    /// `output_dtype` is always resolved.
    attrs: DequantizeAttrs,
    /// Logical type of `x` and the zero point when stored widened (4-bit).
    input_logical: Option<DType>,
}

impl Op for ExactDequantize {
    fn name(&self) -> StaticName {
        "DequantizeLinear(exact)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} input {:?}",
            self.attrs, self.input_logical
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for ExactDequantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if let Some(y) = self.plain_8bit(&inputs)? {
            return Ok(tvec!(y.into_tvalue()));
        }
        let x = to_host(&inputs[0], self.input_logical)?;
        let scale = to_host(&inputs[1], None)?;
        let zero_point = match inputs.get(2) {
            Some(z) => Some(to_host(z, self.input_logical)?),
            None => None,
        };
        let y = dequantize_linear(&x, &scale, zero_point.as_ref(), &self.attrs)
            .map_err(|e| format_err!("DequantizeLinear node '{}': {e}", self.node))?;
        let y = to_engine(&y).map_err(|d| format_err!("{d} output cannot be executed"))?;
        Ok(tvec!(y.into_tvalue()))
    }
}

impl ExactDequantize {
    /// The common cases without host copies: contiguous 8-bit input, f32 output, and a scalar
    /// scale and zero point or one per index of the axis (a weight quantized per channel),
    /// the same kernels as [`dequantize_linear`]'s. `None` when no case applies.
    fn plain_8bit(&self, inputs: &[TValue]) -> TractResult<Option<Tensor>> {
        let a = &self.attrs;
        if a.block_size != 0 || a.output_dtype != Some(DType::F32) || self.input_logical.is_some() {
            return Ok(None);
        }
        let shape = inputs[0].shape();
        let zp = inputs.get(2);
        if let Some(scale) = scalar::<f32>(&inputs[1]) {
            if let Some(x) = plain::<u8>(&inputs[0]) {
                if let Some(z) = zp.map_or(Some(0), scalar::<u8>) {
                    return Ok(Some(shaped(shape, dequantize_slice(x, scale, z))?));
                }
            } else if let Some(x) = plain::<i8>(&inputs[0]) {
                if let Some(z) = zp.map_or(Some(0), scalar::<i8>) {
                    return Ok(Some(shaped(shape, dequantize_slice(x, scale, z))?));
                }
            }
            return Ok(None);
        }
        let rank = shape.len() as i64;
        if inputs[1].rank() != 1 || a.axis < -rank || a.axis >= rank {
            return Ok(None);
        }
        let axis = if a.axis < 0 { a.axis + rank } else { a.axis } as usize;
        let Some(scales) = plain::<f32>(&inputs[1]) else {
            return Ok(None);
        };
        let per_axis = |x, z| dequantize_axis_slice(x, shape, axis, scales, z);
        let y = if let Some(x) = plain::<u8>(&inputs[0]) {
            match zp {
                None => per_axis(x, &vec![0u8; scales.len()]),
                Some(z) if z.rank() == 1 => plain::<u8>(z).and_then(|z| per_axis(x, z)),
                Some(_) => None,
            }
        } else if let Some(x) = plain::<i8>(&inputs[0]) {
            let per_axis = |x, z| dequantize_axis_slice(x, shape, axis, scales, z);
            match zp {
                None => per_axis(x, &vec![0i8; scales.len()]),
                Some(z) if z.rank() == 1 => plain::<i8>(z).and_then(|z| per_axis(x, z)),
                Some(_) => None,
            }
        } else {
            None
        };
        y.map(|y| shaped(shape, y)).transpose()
    }
}

impl TypedOp for ExactDequantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = storage(self.attrs.output_dtype.unwrap_or(DType::F32))?;
        Ok(tvec!(TypedFact::dt_shape(dt, inputs[0].shape.clone())))
    }

    as_op!();
}
