//! Exact low-bit and integer ops for the engine, backed by [`crate::quant::nbits`] and
//! [`crate::quant::integer`].
//!
//! The engine's own versions of these ops are not ONNX Runtime's: its MatMulNBits keeps only 2-
//! and 4-bit weights and rounds block-32 scales to float16; its GatherBlockQuantized takes only
//! packed 4-bit tables quantized along the last axis (scales rounded to float16 in blocks of
//! 32), and fails on indices out of range; its DynamicQuantizeLinear gives an all-zero input a
//! scale of 0 instead of 1 and quantizes NaN to the zero point; its MatMulInteger cannot load
//! per-batch zero points; it has no MatMulIntegerToFloat, DynamicQuantizeMatMul or
//! DynamicQuantizeLSTM (run by [`crate::quant::lstm`], ONNX Runtime's arithmetic). The builders
//! here replace them in the op register (keyed by op type, so the com.microsoft ops are found
//! by name; `prepare` keeps them out of other domains).
//!
//! Each op is a [`HostOp`]: its inputs converted to host tensors, one `quant` kernel, the result
//! converted back. Ops whose inputs are all constant (a MatMulNBits weight) are folded by the
//! engine's optimizer through the same kernel. MatMulNBits is the one op split in two: the
//! weight, dequantized exactly by a [`HostOp`], feeds the engine's own float32 matrix product
//! (its summation order is the engine's), then the bias is added.

use super::convert::{to_engine, to_host};
use super::qdq::LOGICAL_DTYPE_ATTR;
use crate::ir::tensor::{DType, Tensor};
use crate::quant::integer::{
    dynamic_quantize_linear, dynamic_quantize_matmul, matmul_integer, matmul_integer_to_float,
};
use crate::quant::lstm::{dynamic_quantize_lstm, Direction, QLstmAttrs, QLstmInputs};
use crate::quant::nbits::{
    dequantize_nbits_weight, gather_block_quantized, GatherBlockQuantizedAttrs, MatMulNBitsAttrs,
};
use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ops::cast::cast;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::add;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::logic::wire_with_rank_broadcast;

/// The kernel a [`HostOp`] runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kernel {
    /// `x` → `y`, `y_scale`, `y_zero_point`.
    DynamicQuantizeLinear,
    /// `A, B[, a_zero_point][, b_zero_point]`.
    MatMulInteger,
    /// `A, B, a_scale, b_scale[, a_zero_point][, b_zero_point][, bias]`.
    MatMulIntegerToFloat,
    /// `A, B, b_scale[, b_zero_point][, bias]`.
    DynamicQuantizeMatMul,
    /// `data, indices, scales[, zero_points]`; `logical` is data's type when stored widened.
    GatherBlockQuantized {
        attrs: GatherBlockQuantizedAttrs,
        logical: Option<DType>,
    },
    /// MatMulNBits's `B, scales[, zero_points]` → the float32 `[N, K]` weight.
    NBitsWeight { attrs: MatMulNBitsAttrs },
    /// `X, W, R[, B][, sequence_lens][, initial_h][, initial_c][, P], W_scale, W_zero_point,
    /// R_scale, R_zero_point` → the outputs among `Y, Y_h, Y_c` the node has (`outputs`).
    DynamicQuantizeLstm {
        attrs: QLstmAttrs,
        outputs: [bool; 3],
    },
}

impl Kernel {
    fn op_type(&self) -> &'static str {
        match self {
            Kernel::DynamicQuantizeLinear => "DynamicQuantizeLinear",
            Kernel::MatMulInteger => "MatMulInteger",
            Kernel::MatMulIntegerToFloat => "MatMulIntegerToFloat",
            Kernel::DynamicQuantizeMatMul => "DynamicQuantizeMatMul",
            Kernel::GatherBlockQuantized { .. } => "GatherBlockQuantized",
            Kernel::NBitsWeight { .. } => "MatMulNBits",
            Kernel::DynamicQuantizeLstm { .. } => "DynamicQuantizeLSTM",
        }
    }

    /// How many ONNX inputs the op has at most (optional ones included).
    fn slots(&self) -> usize {
        match self {
            Kernel::DynamicQuantizeLinear => 1,
            Kernel::MatMulInteger => 4,
            Kernel::MatMulIntegerToFloat => 7,
            Kernel::DynamicQuantizeMatMul => 5,
            Kernel::GatherBlockQuantized { .. } => 4,
            Kernel::NBitsWeight { .. } => 3,
            Kernel::DynamicQuantizeLstm { .. } => 12,
        }
    }

    /// Whether input `slot` must be given.
    fn required(&self, slot: usize) -> bool {
        let leading = match self {
            Kernel::DynamicQuantizeLinear => 1,
            Kernel::MatMulInteger => 2,
            Kernel::MatMulIntegerToFloat => 4,
            Kernel::DynamicQuantizeMatMul => 3,
            Kernel::GatherBlockQuantized { .. } => 3,
            Kernel::NBitsWeight { .. } => 2,
            // X, W, R and the four weight scales and zero points
            Kernel::DynamicQuantizeLstm { .. } => return !(3..8).contains(&slot),
        };
        slot < leading
    }

    fn outputs(&self) -> usize {
        match self {
            Kernel::DynamicQuantizeLinear => 3,
            Kernel::DynamicQuantizeLstm { outputs, .. } => outputs.iter().filter(|&&o| o).count(),
            _ => 1,
        }
    }
}

/// A node's name for messages: its name, else its first output.
fn node_label(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else {
        node.output.first().cloned().unwrap_or_default()
    }
}

fn logical_attr(node: &NodeProto) -> TractResult<Option<DType>> {
    Ok(node
        .get_attr_opt::<i64>(LOGICAL_DTYPE_ATTR)?
        .filter(|&c| c != 0)
        .map(|c| DType::from_onnx(c as i32)))
}

/// Which of the kernel's ONNX input slots the node fills, checked against the kernel.
fn present_inputs(node: &NodeProto, kernel: &Kernel) -> TractResult<Vec<bool>> {
    if node.input.len() > kernel.slots() {
        bail!(
            "{} node '{}': {} inputs, at most {} expected",
            kernel.op_type(),
            node_label(node),
            node.input.len(),
            kernel.slots()
        );
    }
    let present: Vec<bool> = optional_inputs(node)
        .take(kernel.slots())
        .map(|i| i.is_some())
        .collect();
    if let Some(missing) = (0..kernel.slots()).find(|&i| kernel.required(i) && !present[i]) {
        bail!(
            "{} node '{}': input {missing} is required",
            kernel.op_type(),
            node_label(node)
        );
    }
    Ok(present)
}

/// The op of a node run by one kernel, as built from the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HostOp {
    node: String,
    kernel: Kernel,
    /// Which ONNX input slots are given (the engine passes the given ones only, in order).
    present: Vec<bool>,
}

impl HostOp {
    fn from_node(node: &NodeProto, kernel: Kernel) -> TractResult<HostOp> {
        Ok(HostOp {
            node: node_label(node),
            present: present_inputs(node, &kernel)?,
            kernel,
        })
    }

    /// The engine's inputs placed in their ONNX slots.
    fn slots<'a, T>(&self, inputs: &'a [T]) -> Vec<Option<&'a T>> {
        let mut given = inputs.iter();
        self.present
            .iter()
            .map(|&p| if p { given.next() } else { None })
            .chain(std::iter::repeat(None))
            .take(self.kernel.slots())
            .collect()
    }

    fn fail(&self, e: impl std::fmt::Display) -> TractError {
        format_err!("{} node '{}': {e}", self.kernel.op_type(), self.node)
    }

    /// Runs the kernel on host tensors.
    fn compute(&self, inputs: &[TValue]) -> TractResult<Vec<Tensor>> {
        let logical = match &self.kernel {
            Kernel::GatherBlockQuantized { logical, .. } => *logical,
            _ => None,
        };
        let host: Vec<Option<Tensor>> = self
            .slots(inputs)
            .into_iter()
            .enumerate()
            .map(|(slot, v)| {
                // only GatherBlockQuantized's data and zero points (slots 0 and 3) can be 4-bit
                let l = if slot == 0 || slot == 3 {
                    logical
                } else {
                    None
                };
                v.map(|t| to_host(t, l)).transpose()
            })
            .collect::<TractResult<_>>()?;
        let get = |i: usize| host[i].as_ref();
        let need = |i: usize| get(i).context("missing required input");
        let out = match &self.kernel {
            Kernel::DynamicQuantizeLinear => {
                let (y, s, z) = dynamic_quantize_linear(need(0)?).map_err(|e| self.fail(e))?;
                vec![y, s, z]
            }
            Kernel::MatMulInteger => {
                vec![matmul_integer(need(0)?, need(1)?, get(2), get(3)).map_err(|e| self.fail(e))?]
            }
            Kernel::MatMulIntegerToFloat => vec![matmul_integer_to_float(
                need(0)?,
                need(1)?,
                need(2)?,
                need(3)?,
                get(4),
                get(5),
                get(6),
            )
            .map_err(|e| self.fail(e))?],
            Kernel::DynamicQuantizeMatMul => {
                vec![
                    dynamic_quantize_matmul(need(0)?, need(1)?, need(2)?, get(3), get(4))
                        .map_err(|e| self.fail(e))?,
                ]
            }
            Kernel::GatherBlockQuantized { attrs, .. } => {
                vec![
                    gather_block_quantized(need(0)?, need(1)?, need(2)?, get(3), attrs)
                        .map_err(|e| self.fail(e))?,
                ]
            }
            Kernel::NBitsWeight { attrs } => {
                let w = dequantize_nbits_weight(need(0)?, need(1)?, get(2), attrs)
                    .map_err(|e| self.fail(e))?;
                vec![Tensor::F32(w)]
            }
            Kernel::DynamicQuantizeLstm { attrs, outputs } => {
                let inputs = QLstmInputs {
                    x: need(0)?,
                    w: need(1)?,
                    r: need(2)?,
                    b: get(3),
                    sequence_lens: get(4),
                    initial_h: get(5),
                    initial_c: get(6),
                    p: get(7),
                    w_scale: need(8)?,
                    w_zero_point: need(9)?,
                    r_scale: need(10)?,
                    r_zero_point: need(11)?,
                };
                let o =
                    dynamic_quantize_lstm(&inputs, attrs, outputs[0]).map_err(|e| self.fail(e))?;
                [o.y, o.y_h, o.y_c]
                    .into_iter()
                    .zip(outputs)
                    .filter(|(_, wanted)| **wanted)
                    .map(|(t, _)| t)
                    .collect()
            }
        };
        Ok(out)
    }
}

impl Op for HostOp {
    fn name(&self) -> StaticName {
        format!("{}(exact)", self.kernel.op_type()).into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.kernel)])
    }

    op_as_typed_op!();
}

impl EvalOp for HostOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.compute(&inputs)?
            .iter()
            .map(|t| {
                to_engine(t)
                    .map(IntoTValue::into_tvalue)
                    .map_err(|d| self.fail(format!("{d} output cannot be executed")))
            })
            .collect()
    }
}

/// Output shape of a matrix product of operands shaped `a` and `b` (numpy rules).
fn matmul_shape(a: &TypedFact, b: &TypedFact) -> TractResult<TVec<TDim>> {
    let (_, _, c, _) = tract_onnx::tract_hir::ops::matmul::compute_shapes(
        a.shape.to_tvec(),
        b.shape.to_tvec(),
        false,
        false,
        false,
    )?;
    Ok(c)
}

impl TypedOp for HostOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let slots = self.slots(inputs);
        let input = |i: usize| -> TractResult<&TypedFact> {
            slots[i].copied().context("missing required input")
        };
        Ok(match &self.kernel {
            Kernel::DynamicQuantizeLinear => tvec!(
                TypedFact::dt_shape(DatumType::U8, input(0)?.shape.clone()),
                TypedFact::dt_scalar(DatumType::F32),
                TypedFact::dt_scalar(DatumType::U8),
            ),
            Kernel::MatMulInteger => tvec!(TypedFact::dt_shape(
                DatumType::I32,
                matmul_shape(input(0)?, input(1)?)?
            )),
            Kernel::MatMulIntegerToFloat | Kernel::DynamicQuantizeMatMul => tvec!(
                TypedFact::dt_shape(DatumType::F32, matmul_shape(input(0)?, input(1)?)?)
            ),
            Kernel::GatherBlockQuantized { attrs, logical } => {
                let data = input(0)?;
                let mut dims: TVec<TDim> = data.shape.to_tvec();
                let rank = dims.len() as i64;
                if logical.is_none() && data.datum_type == DatumType::U8 {
                    let per = 8 / attrs.bits.clamp(1, 8) as usize;
                    if let Some(last) = dims.last_mut() {
                        *last = last.clone() * per;
                    }
                }
                let ga = if attrs.gather_axis < 0 {
                    attrs.gather_axis + rank
                } else {
                    attrs.gather_axis
                };
                if !(0..rank).contains(&ga) {
                    return Err(self.fail(format!(
                        "gather_axis {} is out of range for data of rank {rank}",
                        attrs.gather_axis
                    )));
                }
                let ga = ga as usize;
                let mut shape: TVec<TDim> = dims[..ga].into();
                shape.extend(input(1)?.shape.iter().cloned());
                shape.extend(dims[ga + 1..].iter().cloned());
                tvec!(TypedFact::dt_shape(input(2)?.datum_type, shape))
            }
            Kernel::NBitsWeight { attrs } => tvec!(TypedFact::dt_shape(
                DatumType::F32,
                [attrs.n as usize, attrs.k as usize]
            )),
            Kernel::DynamicQuantizeLstm { attrs, outputs } => {
                let x = input(0)?;
                if x.rank() != 3 {
                    return Err(self.fail(format!("X has rank {}, 3 expected", x.rank())));
                }
                let (seq, batch) = (x.shape[0].clone(), x.shape[1].clone());
                let dirs = attrs.direction.count().to_dim();
                let h = attrs.hidden_size.to_dim();
                let y = TypedFact::dt_shape(
                    DatumType::F32,
                    tvec![seq, dirs.clone(), batch.clone(), h.clone()],
                );
                let state = TypedFact::dt_shape(DatumType::F32, tvec![dirs, batch, h]);
                [y, state.clone(), state]
                    .into_iter()
                    .zip(outputs)
                    .filter(|(_, wanted)| **wanted)
                    .map(|(f, _)| f)
                    .collect()
            }
        })
    }

    as_op!();
}

/// The inference-time side of a [`HostOp`]: checks the arity, states the output types, and
/// wires the op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HostExpansion(HostOp);

impl Expansion for HostExpansion {
    fn name(&self) -> StaticName {
        self.0.kernel.op_type().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.kernel.outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        let op = &self.0;
        check_input_arity(inputs, op.present.iter().filter(|&&p| p).count())?;
        check_output_arity(outputs, op.kernel.outputs())?;
        match &op.kernel {
            Kernel::DynamicQuantizeLinear => {
                s.equals(&outputs[0].datum_type, DatumType::U8)?;
                s.equals(&outputs[0].shape, &inputs[0].shape)?;
                s.equals(&outputs[1].datum_type, DatumType::F32)?;
                s.equals(&outputs[1].rank, 0)?;
                s.equals(&outputs[2].datum_type, DatumType::U8)?;
                s.equals(&outputs[2].rank, 0)?;
            }
            Kernel::MatMulInteger => s.equals(&outputs[0].datum_type, DatumType::I32)?,
            Kernel::MatMulIntegerToFloat | Kernel::DynamicQuantizeMatMul => {
                s.equals(&outputs[0].datum_type, DatumType::F32)?
            }
            Kernel::GatherBlockQuantized { .. } => {
                s.equals(&outputs[0].datum_type, &inputs[2].datum_type)?
            }
            Kernel::NBitsWeight { .. } => s.equals(&outputs[0].datum_type, DatumType::F32)?,
            Kernel::DynamicQuantizeLstm {
                attrs,
                outputs: wanted,
            } => {
                let dirs = attrs.direction.count() as i64;
                let h = attrs.hidden_size as i64;
                let mut slot = 0;
                for (which, &w) in wanted.iter().enumerate() {
                    if !w {
                        continue;
                    }
                    let out = &outputs[slot];
                    slot += 1;
                    s.equals(&out.datum_type, DatumType::F32)?;
                    if which == 0 {
                        s.equals(&out.rank, 4)?;
                        s.equals(&out.shape[0], &inputs[0].shape[0])?;
                        s.equals(&out.shape[1], dirs.to_dim())?;
                        s.equals(&out.shape[2], &inputs[0].shape[1])?;
                        s.equals(&out.shape[3], h.to_dim())?;
                    } else {
                        s.equals(&out.rank, 3)?;
                        s.equals(&out.shape[0], dirs.to_dim())?;
                        s.equals(&out.shape[1], &inputs[0].shape[1])?;
                        s.equals(&out.shape[2], h.to_dim())?;
                    }
                }
            }
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        target.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// An op builder of the engine's ONNX front end.
type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// The ops this module builds, by op type: the engine's register takes them in place of its
/// own.
pub(crate) const BUILDERS: [(&str, Builder); 7] = [
    ("DynamicQuantizeLinear", dynamic_quantize_linear_builder),
    ("MatMulInteger", matmul_integer_builder),
    ("MatMulIntegerToFloat", matmul_integer_to_float_builder),
    ("DynamicQuantizeMatMul", dynamic_quantize_matmul_builder),
    ("GatherBlockQuantized", gather_block_quantized_builder),
    ("MatMulNBits", matmul_nbits_builder),
    ("DynamicQuantizeLSTM", dynamic_quantize_lstm_builder),
];

fn host(node: &NodeProto, kernel: Kernel) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((
        expand(HostExpansion(HostOp::from_node(node, kernel)?)),
        vec![],
    ))
}

/// Op builder for DynamicQuantizeLinear.
fn dynamic_quantize_linear_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    host(node, Kernel::DynamicQuantizeLinear)
}

/// Op builder for MatMulInteger.
fn matmul_integer_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    host(node, Kernel::MatMulInteger)
}

/// Op builder for com.microsoft MatMulIntegerToFloat.
fn matmul_integer_to_float_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    host(node, Kernel::MatMulIntegerToFloat)
}

/// Op builder for com.microsoft DynamicQuantizeMatMul.
fn dynamic_quantize_matmul_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    host(node, Kernel::DynamicQuantizeMatMul)
}

/// Op builder for com.microsoft GatherBlockQuantized.
fn gather_block_quantized_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let defaults = GatherBlockQuantizedAttrs::default();
    let attrs = GatherBlockQuantizedAttrs {
        gather_axis: node
            .get_attr_opt("gather_axis")?
            .unwrap_or(defaults.gather_axis),
        quantize_axis: node
            .get_attr_opt("quantize_axis")?
            .unwrap_or(defaults.quantize_axis),
        block_size: node
            .get_attr_opt("block_size")?
            .unwrap_or(defaults.block_size),
        bits: node.get_attr_opt("bits")?.unwrap_or(defaults.bits),
    };
    attrs
        .check()
        .map_err(|e| format_err!("GatherBlockQuantized node '{}': {e}", node_label(node)))?;
    let logical = logical_attr(node)?;
    host(node, Kernel::GatherBlockQuantized { attrs, logical })
}

/// Op builder for com.microsoft DynamicQuantizeLSTM.
fn dynamic_quantize_lstm_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let label = node_label(node);
    let fail = |e: String| format_err!("DynamicQuantizeLSTM node '{label}': {e}");
    let direction = Direction::parse(node.get_attr_opt("direction")?.unwrap_or("forward"))
        .map_err(|e| fail(e.to_string()))?;
    let hidden: i64 = node.get_attr("hidden_size")?;
    let attrs = QLstmAttrs {
        direction,
        hidden_size: usize::try_from(hidden).map_err(|_| fail(format!("hidden_size {hidden}")))?,
        clip_bits: node
            .get_attr_opt::<f32>("clip")?
            .unwrap_or(f32::MAX)
            .to_bits(),
        input_forget: node.get_attr_opt::<i64>("input_forget")?.unwrap_or(0) != 0,
    };
    let activations: Vec<String> = node
        .get_attr_opt_vec::<String>("activations")?
        .unwrap_or_default();
    attrs.check(&activations).map_err(|e| fail(e.to_string()))?;
    if node.get_attr_opt::<i64>("layout")?.unwrap_or(0) != 0 {
        return Err(fail("layout 1 (batch first) is not supported".into()));
    }
    if node.output.len() > 3 {
        return Err(fail(format!(
            "{} outputs, at most 3 expected",
            node.output.len()
        )));
    }
    let mut outputs = [false; 3];
    for (o, name) in outputs.iter_mut().zip(&node.output) {
        *o = !name.is_empty();
    }
    host(node, Kernel::DynamicQuantizeLstm { attrs, outputs })
}

/// Op builder for com.microsoft MatMulNBits.
fn matmul_nbits_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let label = node_label(node);
    let attrs = MatMulNBitsAttrs {
        k: node.get_attr("K")?,
        n: node.get_attr("N")?,
        bits: node.get_attr_opt("bits")?.unwrap_or(4),
        block_size: node.get_attr("block_size")?,
    };
    attrs
        .check()
        .map_err(|e| format_err!("MatMulNBits node '{label}': {e}"))?;
    if node.input.len() > 6 {
        bail!(
            "MatMulNBits node '{label}': {} inputs, at most 6 expected",
            node.input.len()
        );
    }
    let present: Vec<bool> = optional_inputs(node).take(6).map(|i| i.is_some()).collect();
    if !present[0] || !present[1] || !present[2] {
        bail!("MatMulNBits node '{label}': A, B and scales are required");
    }
    if present[4] {
        bail!("MatMulNBits node '{label}': g_idx (a column order) is not supported");
    }
    if node.get_attr_opt::<i64>("weight_prepacked")?.unwrap_or(0) != 0 {
        bail!("MatMulNBits node '{label}': prepacked weights are not supported");
    }
    let weight = HostOp {
        node: label,
        kernel: Kernel::NBitsWeight { attrs },
        present: present[1..4].to_vec(),
    };
    Ok((
        expand(MatMulNBitsExpansion {
            weight,
            bias: present[5],
        }),
        vec![],
    ))
}

/// MatMulNBits: the exact weight ([`Kernel::NBitsWeight`]), the engine's float32 product, the
/// bias.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MatMulNBitsExpansion {
    weight: HostOp,
    bias: bool,
}

impl Expansion for MatMulNBitsExpansion {
    fn name(&self) -> StaticName {
        "MatMulNBits".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        let given = 1 + self.weight.present.iter().filter(|&&p| p).count() + self.bias as usize;
        check_input_arity(inputs, given)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        let Kernel::NBitsWeight { attrs } = &self.weight.kernel else {
            unreachable!("MatMulNBits wires its weight kernel")
        };
        let n = (attrs.n as usize).to_dim();
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            for ax in 0..rank.saturating_sub(1) {
                s.equals(&outputs[0].shape[ax], &inputs[0].shape[ax])?;
            }
            if rank > 0 {
                s.equals(&outputs[0].shape[rank - 1], n.clone())?;
            }
            Ok(())
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let given = self.weight.present.iter().filter(|&&p| p).count();
        let weight = model.wire_node(
            format!("{prefix}.weight"),
            self.weight.clone(),
            &inputs[1..1 + given],
        )?[0];
        let a_fact = model.outlet_fact(inputs[0])?.clone();
        let dt = a_fact.datum_type;
        let rank = a_fact.rank();
        if rank == 0 {
            return Err(self.weight.fail("A must have at least one dimension"));
        }
        let a = if dt == DatumType::F32 {
            inputs[0]
        } else {
            model.wire_node(
                format!("{prefix}.a_f32"),
                cast(DatumType::F32),
                &[inputs[0]],
            )?[0]
        };
        let lead: String = "abcdefgh".chars().take(rank - 1).collect();
        if lead.len() + 1 != rank {
            return Err(self
                .weight
                .fail(format!("A of rank {rank} is not supported")));
        }
        let axes =
            AxesMapping::from_strs(&[format!("{lead}k"), "nk".into()], &[format!("{lead}n")])?;
        let mut y = model.wire_node(
            format!("{prefix}.matmul"),
            EinSum::new(axes, DatumType::F32),
            &[a, weight],
        )?[0];
        if self.bias {
            let mut bias = inputs[1 + given];
            if model.outlet_fact(bias)?.datum_type != DatumType::F32 {
                bias =
                    model.wire_node(format!("{prefix}.bias_f32"), cast(DatumType::F32), &[bias])?
                        [0];
            }
            y = wire_with_rank_broadcast(format!("{prefix}.bias"), model, add(), &[y, bias])?[0];
        }
        if dt != DatumType::F32 {
            y = model.wire_node(format!("{prefix}.cast"), cast(dt), &[y])?[0];
        }
        Ok(tvec!(y))
    }
}
