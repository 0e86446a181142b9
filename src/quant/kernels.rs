//! Exact ONNX `QuantizeLinear` and `DequantizeLinear` on host tensors.
//!
//! # Semantics (ONNX, as ONNX Runtime 1.32 computes them)
//! - **QuantizeLinear**: `y = saturate(round_half_even(x / scale) + zero_point)`.
//!   The quotient is a true IEEE division in float32 (never a multiplication by `1 / scale`, which
//!   is one step off near ties). With a `precision` of float16 or bfloat16 (opset 23+: the
//!   `precision` attribute, by default the scale's type) both operands and the quotient are rounded
//!   to that type first. NaN gives the lowest value of the output type and ±inf saturate.
//!   The output type is the `output_dtype` attribute, else the zero point's type, else uint8.
//! - **DequantizeLinear**: `y = (x - zero_point) * scale`; the subtraction is done in int32 (wrapping,
//!   which only matters for int32 inputs) and the product in float32, rounded once to the output
//!   type (the `output_dtype` attribute, else the scale's type).
//! - **Granularity** ([`Granularity`]): a scalar (or one-element) scale is per-tensor; a 1-D scale of
//!   `shape[axis]` values is per-axis; with `block_size > 0` the scale has the input's rank and
//!   `ceil(shape[axis] / block_size)` entries along `axis` (blocked, opset 21).
//!
//! Integer types: uint8, int8, uint16, int16, uint4, int4 (and int32 as a DequantizeLinear input).
//! Float types: float32, float16, bfloat16. Float8, float4 and 2-bit types give
//! [`QuantError::UnsupportedType`]; the `saturate` attribute only concerns float8 and is not read.

use crate::ir::tensor::{DType, Tensor};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

/// Why a quantization kernel refused its inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// An element type the kernel does not implement.
    #[error("unsupported {role} type {dtype} (supported: {supported})")]
    UnsupportedType {
        role: &'static str,
        dtype: DType,
        supported: &'static str,
    },
    /// The zero point's type differs from the quantized type.
    #[error("zero point type {zero_point} does not match the quantized type {expected}")]
    ZeroPointType { zero_point: DType, expected: DType },
    /// `axis` outside `[-rank, rank - 1]`.
    #[error("axis {axis} is out of range for an input of rank {rank}")]
    Axis { axis: i64, rank: usize },
    /// Negative `block_size`.
    #[error("block_size must not be negative, got {0}")]
    BlockSize(i64),
    /// The scale's shape fits none of the per-tensor, per-axis or blocked forms.
    #[error("scale of shape {scale:?} does not fit an input of shape {input:?}: {reason}")]
    ScaleShape {
        scale: Vec<usize>,
        input: Vec<usize>,
        reason: String,
    },
    /// The zero point's shape differs from the scale's.
    #[error("zero point of shape {zero_point:?} differs from the scale's shape {scale:?}")]
    ZeroPointShape {
        zero_point: Vec<usize>,
        scale: Vec<usize>,
    },
    /// A zero point value outside its type's range (possible for unpacked 4-bit storage).
    #[error("zero point value {value} is outside the range of {dtype}")]
    ZeroPointRange { value: i64, dtype: DType },
}

const QUANT_TYPES: &str = "u8, i8, u16, i16, u4, i4";
const DEQUANT_INPUT_TYPES: &str = "u8, i8, u16, i16, i32, u4, i4";
const FLOAT_TYPES: &str = "f32, f16, bf16";

/// How a scale (and zero point) maps onto the elements of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per index along `axis`.
    PerAxis { axis: usize },
    /// One scale per `block_size` consecutive indices along `axis`, per position of the other axes.
    Blocked { axis: usize, block_size: usize },
}

impl Granularity {
    /// Deduces the granularity from the shapes and the ONNX `axis` / `block_size` attributes
    /// (`axis` may be negative; it is only checked when the scale is not per-tensor).
    pub fn resolve(
        input: &[usize],
        scale: &[usize],
        axis: i64,
        block_size: i64,
    ) -> Result<Granularity, QuantError> {
        let shape_err = |reason: String| QuantError::ScaleShape {
            scale: scale.to_vec(),
            input: input.to_vec(),
            reason,
        };
        if block_size < 0 {
            return Err(QuantError::BlockSize(block_size));
        }
        let n: usize = scale.iter().product();
        if block_size == 0 {
            if scale.len() <= 1 && n == 1 {
                return Ok(Granularity::PerTensor);
            }
            let axis = normalize_axis(axis, input.len())?;
            if scale.len() == 1 && scale[0] == input[axis] {
                return Ok(Granularity::PerAxis { axis });
            }
            return Err(shape_err(format!(
                "expected a scalar or a 1-D tensor of {} values (axis {axis})",
                input[axis]
            )));
        }
        let axis = normalize_axis(axis, input.len())?;
        let bs = block_size as usize;
        if scale.len() != input.len() {
            return Err(shape_err(format!(
                "a blocked scale (block_size {bs}) must have the input's rank"
            )));
        }
        for (d, (&s, &i)) in scale.iter().zip(input).enumerate() {
            let want = if d == axis { i.div_ceil(bs) } else { i };
            if s != want {
                return Err(shape_err(format!(
                    "dimension {d} should be {want} (block_size {bs} along axis {axis})"
                )));
            }
        }
        Ok(Granularity::Blocked {
            axis,
            block_size: bs,
        })
    }
}

fn normalize_axis(axis: i64, rank: usize) -> Result<usize, QuantError> {
    let r = rank as i64;
    if (-r..r).contains(&axis) {
        Ok(if axis < 0 { axis + r } else { axis } as usize)
    } else {
        Err(QuantError::Axis { axis, rank })
    }
}

/// Maps a flat (row-major) element index of the input to the flat index of its scale.
struct ParamIndex {
    granularity: Granularity,
    dim: usize,
    inner: usize,
    blocks: usize,
}

impl ParamIndex {
    fn new(granularity: Granularity, shape: &[usize]) -> ParamIndex {
        let (axis, block) = match granularity {
            Granularity::PerTensor => {
                return ParamIndex {
                    granularity,
                    dim: 1,
                    inner: 1,
                    blocks: 1,
                }
            }
            Granularity::PerAxis { axis } => (axis, 1),
            Granularity::Blocked { axis, block_size } => (axis, block_size),
        };
        let dim = shape[axis];
        ParamIndex {
            granularity,
            dim,
            inner: shape[axis + 1..].iter().product(),
            blocks: dim.div_ceil(block),
        }
    }

    /// Only called for indices of a non-empty input, so `dim` and `inner` are not zero.
    fn at(&self, i: usize) -> usize {
        match self.granularity {
            Granularity::PerTensor => 0,
            Granularity::PerAxis { .. } => (i / self.inner) % self.dim,
            Granularity::Blocked { block_size, .. } => {
                let outer = i / (self.dim * self.inner);
                let c = (i / self.inner) % self.dim;
                let r = i % self.inner;
                (outer * self.blocks + c / block_size) * self.inner + r
            }
        }
    }
}

/// The representable range of an integer quantized type (`None` for other types).
pub fn integer_range(dtype: DType) -> Option<(i64, i64)> {
    Some(match dtype {
        DType::U8 => (0, 255),
        DType::I8 => (-128, 127),
        DType::U16 => (0, 65_535),
        DType::I16 => (-32_768, 32_767),
        DType::U4 => (0, 15),
        DType::I4 => (-8, 7),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        _ => return None,
    })
}

/// The range of a QuantizeLinear output type, or the error for types it cannot produce.
fn quantized_range(dtype: DType) -> Result<(i64, i64), QuantError> {
    match dtype {
        DType::I32 => None,
        d => integer_range(d),
    }
    .ok_or(QuantError::UnsupportedType {
        role: "quantized output",
        dtype,
        supported: QUANT_TYPES,
    })
}

fn float_values(t: &Tensor, role: &'static str) -> Result<Vec<f32>, QuantError> {
    Ok(match t {
        Tensor::F32(a) => a.iter().copied().collect(),
        Tensor::F16(a) => a.iter().map(|v| v.to_f32()).collect(),
        Tensor::BF16(a) => a.iter().map(|v| v.to_f32()).collect(),
        other => {
            return Err(QuantError::UnsupportedType {
                role,
                dtype: other.dtype(),
                supported: FLOAT_TYPES,
            })
        }
    })
}

fn zero_points(
    zero_point: Option<&Tensor>,
    expected: DType,
    scale_shape: &[usize],
) -> Result<Vec<i64>, QuantError> {
    let n: usize = scale_shape.iter().product();
    let Some(z) = zero_point else {
        return Ok(vec![0; n]);
    };
    if z.dtype() != expected {
        return Err(QuantError::ZeroPointType {
            zero_point: z.dtype(),
            expected,
        });
    }
    let both_scalar_like = z.len() == 1 && n == 1 && z.shape().len() <= 1 && scale_shape.len() <= 1;
    if z.shape() != scale_shape && !both_scalar_like {
        return Err(QuantError::ZeroPointShape {
            zero_point: z.shape(),
            scale: scale_shape.to_vec(),
        });
    }
    let (lo, hi) = integer_range(expected).ok_or(QuantError::UnsupportedType {
        role: "zero point",
        dtype: expected,
        supported: DEQUANT_INPUT_TYPES,
    })?;
    let values = z.to_i64_vec().ok_or(QuantError::UnsupportedType {
        role: "zero point",
        dtype: expected,
        supported: DEQUANT_INPUT_TYPES,
    })?;
    if let Some(&value) = values.iter().find(|&&v| v < lo || v > hi) {
        return Err(QuantError::ZeroPointRange {
            value,
            dtype: expected,
        });
    }
    Ok(values)
}

/// `f` over a slice, compiled for the widest vector instructions the CPU has (chosen at run
/// time). Every instruction set computes the same bits: the same IEEE operations per value.
fn map_slice<A: Copy, B>(x: &[A], f: impl Fn(A) -> B) -> Vec<B> {
    struct MapSlice<'a, A, F> {
        x: &'a [A],
        f: F,
    }
    impl<A: Copy, B, F: Fn(A) -> B> pulp::WithSimd for MapSlice<'_, A, F> {
        type Output = Vec<B>;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<B> {
            self.x.iter().map(|&v| (self.f)(v)).collect()
        }
    }
    pulp::Arch::new().dispatch(MapSlice { x, f })
}

fn array<T>(shape: &[usize], values: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), values)
        .expect("kernel output has exactly one value per input element")
}

/// Builds an integer tensor from values already saturated to `dtype`'s range.
fn integer_tensor(dtype: DType, shape: &[usize], v: Vec<i64>) -> Tensor {
    match dtype {
        DType::U8 => Tensor::U8(array(shape, v.into_iter().map(|x| x as u8).collect())),
        DType::I8 => Tensor::I8(array(shape, v.into_iter().map(|x| x as i8).collect())),
        DType::U16 => Tensor::U16(array(shape, v.into_iter().map(|x| x as u16).collect())),
        DType::I16 => Tensor::I16(array(shape, v.into_iter().map(|x| x as i16).collect())),
        DType::U4 => Tensor::U4(array(shape, v.into_iter().map(|x| x as u8).collect())),
        DType::I4 => Tensor::I4(array(shape, v.into_iter().map(|x| x as i8).collect())),
        _ => Tensor::I32(array(shape, v.into_iter().map(|x| x as i32).collect())),
    }
}

/// Division precision of QuantizeLinear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Precision {
    F32,
    F16,
    BF16,
}

impl Precision {
    fn from_dtype(dtype: Option<DType>) -> Result<Precision, QuantError> {
        match dtype {
            None | Some(DType::F32) => Ok(Precision::F32),
            Some(DType::F16) => Ok(Precision::F16),
            Some(DType::BF16) => Ok(Precision::BF16),
            Some(other) => Err(QuantError::UnsupportedType {
                role: "division precision",
                dtype: other,
                supported: FLOAT_TYPES,
            }),
        }
    }

    fn round(self, v: f32) -> f32 {
        match self {
            Precision::F32 => v,
            Precision::F16 => f16::from_f32(v).to_f32(),
            Precision::BF16 => bf16::from_f32(v).to_f32(),
        }
    }

    /// `x / s` in this precision (f32 holds any f16/bf16 quotient rounding exactly once more).
    fn divide(self, x: f32, s: f32) -> f32 {
        self.round(self.round(x) / self.round(s))
    }
}

fn quantize_one(x: f32, scale: f32, zero_point: i64, lo: i64, hi: i64, p: Precision) -> i64 {
    let v = p.divide(x, scale);
    if v.is_nan() {
        return lo;
    }
    // f64 holds every rounded f32 integer plus a 16-bit zero point exactly; ±inf clamps.
    (v.round_ties_even() as f64 + zero_point as f64).clamp(lo as f64, hi as f64) as i64
}

/// Round half to even of an f32 without a library call: adding and subtracting 1.5 · 2^23
/// rounds to an integer in the default rounding mode, exactly for |v| < 2^22. Larger values
/// (and infinities) are returned as they are; callers saturate them to at most 16 bits.
pub(crate) fn round_even_small(v: f32) -> f32 {
    const M: f32 = 12_582_912.0;
    if v.abs() < 4_194_304.0 {
        (v + M) - M
    } else {
        v
    }
}

/// One value of per-tensor QuantizeLinear with float32 division, as the integer it becomes
/// (held in an f32; within `[lo, hi]`).
#[inline(always)]
fn quantizer(scale: f32, zero_point: i64, lo: i64, hi: i64) -> impl Fn(f32) -> f32 + Copy {
    let (lo_f, hi_f, zp) = (lo as f32, hi as f32, zero_point as f32);
    // |r| < 2^22 and |zp| ≤ 2^16: r + zp is exact in f32; NaN goes to the low end.
    // `max` then `min` (not `clamp`, which keeps NaN): NaN quotients come out as `lo`.
    move |v: f32| (round_even_small(v / scale) + zp).max(lo_f).min(hi_f)
}

/// Per-tensor QuantizeLinear of contiguous f32 values to uint8 with float32 division: what
/// [`quantize_linear`] computes for a scalar scale and zero point, for callers holding slices.
pub fn quantize_slice_u8(x: &[f32], scale: f32, zero_point: u8) -> Vec<u8> {
    let one = quantizer(scale, zero_point as i64, 0, 255);
    map_slice(x, |v| one(v) as u8)
}

/// [`quantize_slice_u8`] to int8.
pub fn quantize_slice_i8(x: &[f32], scale: f32, zero_point: i8) -> Vec<i8> {
    let one = quantizer(scale, zero_point as i64, -128, 127);
    map_slice(x, |v| one(v) as i8)
}

/// Per-tensor DequantizeLinear of contiguous 8-bit values to float32: what
/// [`dequantize_linear`] computes for a scalar scale and zero point.
pub fn dequantize_slice<T: Copy + Into<i32>>(x: &[T], scale: f32, zero_point: T) -> Vec<f32> {
    let zp: i32 = zero_point.into();
    map_slice(x, |q: T| q.into().wrapping_sub(zp) as f32 * scale)
}

/// Per-axis DequantizeLinear of contiguous 8-bit values to float32: what
/// [`dequantize_linear`] computes when `scales` and `zero_points` hold one value per index of
/// `axis` of `shape` (a weight quantized per channel), in one pass without widening the
/// values first. `None` when the lengths do not fit the shape.
pub fn dequantize_axis_slice<T: Copy + Into<i32>>(
    x: &[T],
    shape: &[usize],
    axis: usize,
    scales: &[f32],
    zero_points: &[T],
) -> Option<Vec<f32>> {
    let dim = *shape.get(axis)?;
    let inner: usize = shape[axis + 1..].iter().product();
    if scales.len() != dim || zero_points.len() != dim || x.len() != shape.iter().product::<usize>()
    {
        return None;
    }
    let mut out = Vec::with_capacity(x.len());
    if inner == 0 || dim == 0 {
        return Some(out);
    }
    let one = |q: T, s: f32, zp: T| q.into().wrapping_sub(zp.into()) as f32 * s;
    if inner == 1 {
        // The axis is the last: each row of `dim` values meets every channel once.
        for row in x.chunks_exact(dim) {
            out.extend(
                row.iter()
                    .zip(scales.iter().zip(zero_points))
                    .map(|(&q, (&s, &zp))| one(q, s, zp)),
            );
        }
    } else {
        for (j, run) in x.chunks_exact(inner).enumerate() {
            let (s, zp) = (scales[j % dim], zero_points[j % dim]);
            out.extend(run.iter().map(|&q| one(q, s, zp)));
        }
    }
    Some(out)
}

/// The common QuantizeLinear case, per-tensor with float32 division to 8 or 16 bits, as one
/// loop over the values (same results as [`quantize_one`]); `None` for other output types.
fn quantize_per_tensor_f32(
    x: &ArrayD<f32>,
    scale: f32,
    zero_point: i64,
    out: DType,
    shape: &[usize],
) -> Option<Tensor> {
    let (lo, hi) = quantized_range(out).ok()?;
    if !matches!(out, DType::U8 | DType::I8 | DType::U16 | DType::I16) {
        return None;
    }
    let one = quantizer(scale, zero_point, lo, hi);
    fn each<T>(x: &ArrayD<f32>, shape: &[usize], f: impl Fn(f32) -> T) -> ArrayD<T> {
        let v = match x.as_slice() {
            Some(s) => map_slice(s, f),
            None => x.iter().map(|&v| f(v)).collect(),
        };
        array(shape, v)
    }
    Some(match out {
        DType::U8 => Tensor::U8(each(x, shape, |v| one(v) as u8)),
        DType::I8 => Tensor::I8(each(x, shape, |v| one(v) as i8)),
        DType::U16 => Tensor::U16(each(x, shape, |v| one(v) as u16)),
        _ => Tensor::I16(each(x, shape, |v| one(v) as i16)),
    })
}

/// The common DequantizeLinear case, per-tensor from 8 or 16 bits to float32, as one loop
/// (same formula as the general path); `None` for other input types.
fn dequantize_per_tensor<O>(
    x: &Tensor,
    scale: f32,
    zero_point: i64,
    out: impl Fn(f32) -> O + Copy,
) -> Option<Vec<O>> {
    let zp = zero_point as i32;
    let f = move |q: i32| out(dequantized(q, zp, scale));
    // Contiguous data as a slice: iterating a dynamic-rank array element by element is slow.
    fn each<T: Copy, O>(a: &ArrayD<T>, f: impl Fn(T) -> O) -> Vec<O> {
        match a.as_slice() {
            Some(s) => map_slice(s, f),
            None => a.iter().map(|&q| f(q)).collect(),
        }
    }
    Some(match x {
        Tensor::U8(a) => each(a, |q| f(q as i32)),
        Tensor::I8(a) => each(a, |q| f(q as i32)),
        Tensor::U16(a) => each(a, |q| f(q as i32)),
        Tensor::I16(a) => each(a, |q| f(q as i32)),
        _ => return None,
    })
}

/// The one DequantizeLinear formula: `(q − zero point) · scale` in float32.
#[inline(always)]
fn dequantized(q: i32, zero_point: i32, scale: f32) -> f32 {
    q.wrapping_sub(zero_point) as f32 * scale
}

/// DequantizeLinear per axis from 8 or 16 bits to float32, a row at a time when the axis is
/// the last, else channel run by channel run (same formula as the general path, without
/// widening the input or dividing per element); `None` for other input types and
/// non-contiguous data.
fn dequantize_per_axis<O>(
    x: &Tensor,
    shape: &[usize],
    axis: usize,
    scales: &[f32],
    zero_points: &[i64],
    out: impl Fn(f32) -> O + Copy,
) -> Option<Vec<O>> {
    fn each<T: Copy, O>(
        a: &ArrayD<T>,
        shape: &[usize],
        axis: usize,
        (scales, zero_points): (&[f32], &[i64]),
        wide: impl Fn(T) -> i32,
        out: impl Fn(f32) -> O,
    ) -> Option<Vec<O>> {
        let xs = a.as_slice()?;
        let inner = shape[axis + 1..].iter().product::<usize>().max(1);
        let dim = shape[axis].max(1);
        let mut ys = Vec::with_capacity(xs.len());
        if inner == 1 && dim > 1 {
            // The axis is the last one (a MatMul weight's): a row at a time.
            let zps: Vec<i32> = zero_points.iter().map(|&z| z as i32).collect();
            for row in xs.chunks(dim) {
                ys.extend(
                    row.iter()
                        .zip(&zps)
                        .zip(scales)
                        .map(|((&q, &zp), &s)| out(dequantized(wide(q), zp, s))),
                );
            }
            return Some(ys);
        }
        for (r, run) in xs.chunks(inner).enumerate() {
            let k = r % dim;
            let (zp, s) = (zero_points[k] as i32, scales[k]);
            ys.extend(run.iter().map(|&q| out(dequantized(wide(q), zp, s))));
        }
        Some(ys)
    }
    let p = (scales, zero_points);
    match x {
        Tensor::U8(a) => each(a, shape, axis, p, |q| q as i32, out),
        Tensor::I8(a) => each(a, shape, axis, p, |q| q as i32, out),
        Tensor::U16(a) => each(a, shape, axis, p, |q| q as i32, out),
        Tensor::I16(a) => each(a, shape, axis, p, |q| q as i32, out),
        _ => None,
    }
}

/// Quantizes one value with float32 division: `saturate(round_half_even(x / scale) + zero_point)`
/// for the range of `dtype` (u8, i8, u16, i16, u4, i4).
pub fn quantize_value(
    x: f32,
    scale: f32,
    zero_point: i64,
    dtype: DType,
) -> Result<i64, QuantError> {
    let (lo, hi) = quantized_range(dtype)?;
    Ok(quantize_one(x, scale, zero_point, lo, hi, Precision::F32))
}

/// Attributes of QuantizeLinear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantizeAttrs {
    /// Quantization axis for per-axis and blocked forms (ONNX default 1; negative counts from the end).
    pub axis: i64,
    /// Block size along `axis` (0: not blocked).
    pub block_size: i64,
    /// Output type; `None` takes the zero point's type, or uint8 without a zero point.
    pub output_dtype: Option<DType>,
    /// Type the division is carried out in; `None` is float32 (opset ≤ 22). From opset 23 on, ONNX
    /// says: the `precision` attribute, by default the scale's type.
    pub precision: Option<DType>,
}

impl Default for QuantizeAttrs {
    fn default() -> Self {
        QuantizeAttrs {
            axis: 1,
            block_size: 0,
            output_dtype: None,
            precision: None,
        }
    }
}

/// The output type QuantizeLinear gives for these attributes and zero point type.
pub fn quantize_output_dtype(
    zero_point: Option<DType>,
    output_dtype: Option<DType>,
) -> Result<DType, QuantError> {
    let out = match (output_dtype, zero_point) {
        (Some(d), Some(z)) if d != z => {
            return Err(QuantError::ZeroPointType {
                zero_point: z,
                expected: d,
            })
        }
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => DType::U8,
    };
    quantized_range(out)?;
    Ok(out)
}

/// ONNX QuantizeLinear. See the module doc for the exact semantics.
pub fn quantize_linear(
    x: &Tensor,
    scale: &Tensor,
    zero_point: Option<&Tensor>,
    attrs: &QuantizeAttrs,
) -> Result<Tensor, QuantError> {
    let out = quantize_output_dtype(zero_point.map(Tensor::dtype), attrs.output_dtype)?;
    let (lo, hi) = quantized_range(out)?;
    let precision = Precision::from_dtype(attrs.precision)?;
    let ss = float_values(scale, "scale")?;
    let shape = x.shape();
    let granularity = Granularity::resolve(&shape, &scale.shape(), attrs.axis, attrs.block_size)?;
    let zs = zero_points(zero_point, out, &scale.shape())?;
    if let (Granularity::PerTensor, Precision::F32, Tensor::F32(a)) = (granularity, precision, x) {
        if let Some(t) = quantize_per_tensor_f32(a, ss[0], zs[0], out, &shape) {
            return Ok(t);
        }
    }
    let xs = float_values(x, "input")?;
    let idx = ParamIndex::new(granularity, &shape);
    let q = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let k = idx.at(i);
            quantize_one(v, ss[k], zs[k], lo, hi, precision)
        })
        .collect();
    Ok(integer_tensor(out, &shape, q))
}

/// Attributes of DequantizeLinear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DequantizeAttrs {
    /// Quantization axis for per-axis and blocked forms (ONNX default 1; negative counts from the end).
    pub axis: i64,
    /// Block size along `axis` (0: not blocked).
    pub block_size: i64,
    /// Output type (opset 23+); `None` takes the scale's type.
    pub output_dtype: Option<DType>,
}

impl DequantizeAttrs {
    /// The attributes of a DequantizeLinear node of the IR (ONNX defaults where absent).
    pub fn of(op: &crate::ir::Op) -> DequantizeAttrs {
        DequantizeAttrs {
            axis: op.attr_int("axis").unwrap_or(1),
            block_size: op.attr_int("block_size").unwrap_or(0),
            output_dtype: op
                .attr_int("output_dtype")
                .map(|c| DType::from_onnx(c as i32)),
        }
    }
}

impl Default for DequantizeAttrs {
    fn default() -> Self {
        DequantizeAttrs {
            axis: 1,
            block_size: 0,
            output_dtype: None,
        }
    }
}

/// ONNX DequantizeLinear. See the module doc for the exact semantics.
pub fn dequantize_linear(
    x: &Tensor,
    scale: &Tensor,
    zero_point: Option<&Tensor>,
    attrs: &DequantizeAttrs,
) -> Result<Tensor, QuantError> {
    let d = Dequantize::new(x, scale, zero_point, attrs)?;
    let shape = x.shape();
    if let Some(ys) = d.fast(x, |y| y) {
        return Ok(Tensor::F32(array(&shape, ys)));
    }
    d.general(x)
}

/// [`dequantize_linear`] to float32 as little-endian bytes (the form an engine loads a
/// constant from): the same values, without a float array in between for 8- and 16-bit
/// inputs per tensor or per axis. A scale or output type other than float32 is an error.
pub fn dequantize_linear_le(
    x: &Tensor,
    scale: &Tensor,
    zero_point: Option<&Tensor>,
    attrs: &DequantizeAttrs,
) -> Result<Vec<u8>, QuantError> {
    let d = Dequantize::new(x, scale, zero_point, attrs)?;
    if d.out != DType::F32 {
        return Err(QuantError::UnsupportedType {
            role: "output",
            dtype: d.out,
            supported: "float32",
        });
    }
    if let Some(ys) = d.fast(x, f32::to_le_bytes) {
        return Ok(ys.into_flattened());
    }
    match d.general(x)? {
        Tensor::F32(a) => Ok(a.iter().flat_map(|y| y.to_le_bytes()).collect()),
        other => unreachable!("float32 output, got {:?}", other.dtype()),
    }
}

/// A DequantizeLinear's checked parameters.
struct Dequantize {
    in_dt: DType,
    out: DType,
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    granularity: Granularity,
}

impl Dequantize {
    fn new(
        x: &Tensor,
        scale: &Tensor,
        zero_point: Option<&Tensor>,
        attrs: &DequantizeAttrs,
    ) -> Result<Dequantize, QuantError> {
        let in_dt = x.dtype();
        if !matches!(
            in_dt,
            DType::U8 | DType::I8 | DType::U16 | DType::I16 | DType::I32 | DType::U4 | DType::I4
        ) {
            return Err(QuantError::UnsupportedType {
                role: "quantized input",
                dtype: in_dt,
                supported: DEQUANT_INPUT_TYPES,
            });
        }
        let out = attrs.output_dtype.unwrap_or(scale.dtype());
        if !matches!(out, DType::F32 | DType::F16 | DType::BF16) {
            return Err(QuantError::UnsupportedType {
                role: "output",
                dtype: out,
                supported: FLOAT_TYPES,
            });
        }
        let scales = float_values(scale, "scale")?;
        let granularity =
            Granularity::resolve(&x.shape(), &scale.shape(), attrs.axis, attrs.block_size)?;
        let zero_points = zero_points(zero_point, in_dt, &scale.shape())?;
        Ok(Dequantize {
            in_dt,
            out,
            scales,
            zero_points,
            granularity,
        })
    }

    /// The float32 values of 8- and 16-bit inputs per tensor or per axis, each through
    /// `out`; `None` for every other case.
    fn fast<O>(&self, x: &Tensor, out: impl Fn(f32) -> O + Copy) -> Option<Vec<O>> {
        match (self.granularity, self.out) {
            (Granularity::PerTensor, DType::F32) => {
                dequantize_per_tensor(x, self.scales[0], self.zero_points[0], out)
            }
            (Granularity::PerAxis { axis }, DType::F32) => {
                dequantize_per_axis(x, &x.shape(), axis, &self.scales, &self.zero_points, out)
            }
            _ => None,
        }
    }

    /// Any input, granularity and output type, element by element.
    fn general(&self, x: &Tensor) -> Result<Tensor, QuantError> {
        let shape = x.shape();
        let qs = x.to_i64_vec().ok_or(QuantError::UnsupportedType {
            role: "quantized input",
            dtype: self.in_dt,
            supported: DEQUANT_INPUT_TYPES,
        })?;
        let idx = ParamIndex::new(self.granularity, &shape);
        let (ss, zs) = (&self.scales, &self.zero_points);
        let ys: Vec<f32> = qs
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let k = idx.at(i);
                dequantized(q as i32, zs[k] as i32, ss[k])
            })
            .collect();
        Ok(match self.out {
            DType::F16 => Tensor::F16(array(&shape, ys.into_iter().map(f16::from_f32).collect())),
            DType::BF16 => {
                Tensor::BF16(array(&shape, ys.into_iter().map(bf16::from_f32).collect()))
            }
            _ => Tensor::F32(array(&shape, ys)),
        })
    }
}

/// `DequantizeLinear(QuantizeLinear(x))` with the same scale, zero point, axis and block size:
/// the value a QDQ pair lets through. The result has the scale's type.
pub fn fake_quantize(
    x: &Tensor,
    scale: &Tensor,
    zero_point: Option<&Tensor>,
    attrs: &QuantizeAttrs,
) -> Result<Tensor, QuantError> {
    let q = quantize_linear(x, scale, zero_point, attrs)?;
    let dq = DequantizeAttrs {
        axis: attrs.axis,
        block_size: attrs.block_size,
        output_dtype: None,
    };
    dequantize_linear(&q, scale, zero_point, &dq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr0, arr1, arr2, Array, ArrayD};
    use proptest::prelude::*;

    fn f32t(v: &[f32]) -> Tensor {
        Tensor::F32(arr1(v).into_dyn())
    }

    #[test]
    fn per_axis_dequantize_runs_equal_the_general_path() {
        let shape = [2usize, 3, 4];
        let n: usize = shape.iter().product();
        let ints: Vec<i64> = (0..n as i64).map(|i| (i * 37) % 256 - 128).collect();
        let x8 = Tensor::I8(
            Array::from_shape_vec(IxDyn(&shape), ints.iter().map(|&v| v as i8).collect()).unwrap(),
        );
        let xu = Tensor::U8(
            Array::from_shape_vec(
                IxDyn(&shape),
                ints.iter().map(|&v| (v + 128) as u8).collect(),
            )
            .unwrap(),
        );
        let x16 = Tensor::I16(
            Array::from_shape_vec(
                IxDyn(&shape),
                ints.iter().map(|&v| (v * 200) as i16).collect(),
            )
            .unwrap(),
        );
        for x in [&x8, &xu, &x16] {
            for axis in 0..3usize {
                let dim = shape[axis];
                let ss: Vec<f32> = (0..dim).map(|k| 0.01 + k as f32 * 0.37).collect();
                let zs: Vec<i64> = (0..dim as i64).map(|k| k * 3 - 2).collect();
                let fast = dequantize_per_axis(x, &x.shape(), axis, &ss, &zs, |y| y).unwrap();
                let idx = ParamIndex::new(Granularity::PerAxis { axis }, &shape);
                let slow: Vec<f32> = x
                    .to_i64_vec()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| {
                        let k = idx.at(i);
                        (q as i32).wrapping_sub(zs[k] as i32) as f32 * ss[k]
                    })
                    .collect();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fast), bits(&slow), "{:?} axis {axis}", x.dtype());
            }
        }
    }

    #[test]
    fn dequantize_to_bytes_is_the_float_result_in_little_endian() {
        // Per tensor and per axis (the fast paths), blocked and int32 (the general one).
        let shape = [4usize, 6];
        let n: usize = shape.iter().product();
        let codes: Vec<i8> = (0..n as i32)
            .map(|i| ((i * 37) % 256 - 128) as i8)
            .collect();
        let x8 = Tensor::I8(Array::from_shape_vec(IxDyn(&shape), codes.clone()).unwrap());
        let xu = Tensor::U16(
            Array::from_shape_vec(
                IxDyn(&shape),
                codes.iter().map(|&c| c as u8 as u16 * 200).collect(),
            )
            .unwrap(),
        );
        let x32 = Tensor::I32(
            Array::from_shape_vec(
                IxDyn(&shape),
                codes.iter().map(|&c| c as i32 * 9999).collect(),
            )
            .unwrap(),
        );
        let per_col = f32t(&[0.5, 0.01, 0.37, 2.0, 1e-3, 7.5]);
        let blocks = Tensor::F32(
            Array::from_shape_vec(
                IxDyn(&[2, 6]),
                (0..12).map(|k| 0.01 * (k + 1) as f32).collect(),
            )
            .unwrap(),
        );
        let axis = |axis, block_size| DequantizeAttrs {
            axis,
            block_size,
            ..Default::default()
        };
        let cases: Vec<(&Tensor, Tensor, DequantizeAttrs)> = vec![
            (&x8, scalar(0.02), axis(1, 0)),
            (&x8, per_col.clone(), axis(1, 0)),
            (&x8, f32t(&[0.1, 0.2, 0.3, 0.4]), axis(0, 0)),
            (&xu, per_col.clone(), axis(-1, 0)),
            (&x8, blocks, axis(0, 2)),
            (&x32, per_col, axis(1, 0)),
        ];
        for (x, scale, attrs) in cases {
            let want = match dequantize_linear(x, &scale, None, &attrs).unwrap() {
                Tensor::F32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
                other => panic!("{:?}", other.dtype()),
            };
            let got = dequantize_linear_le(x, &scale, None, &attrs).unwrap();
            assert_eq!(got, want, "{:?} {attrs:?}", x.dtype());
        }
        let half = Tensor::F16(arr1(&[half::f16::from_f32(0.5)]).into_dyn());
        assert!(dequantize_linear_le(&x8, &half, None, &axis(1, 0)).is_err());
    }

    fn scalar(v: f32) -> Tensor {
        Tensor::F32(arr0(v).into_dyn())
    }

    fn ints(t: &Tensor) -> Vec<i64> {
        t.to_i64_vec().unwrap()
    }

    #[test]
    fn onnx_doc_example_u8() {
        // QuantizeLinear docs: x = [0, 2, 3, 1000, -254, -1000], scale 2, zero point 128.
        let x = f32t(&[0., 2., 3., 1000., -254., -1000.]);
        let z = Tensor::U8(arr0(128u8).into_dyn());
        let y = quantize_linear(&x, &scalar(2.0), Some(&z), &QuantizeAttrs::default()).unwrap();
        assert_eq!(y.dtype(), DType::U8);
        assert_eq!(ints(&y), vec![128, 129, 130, 255, 1, 0]);
    }

    #[test]
    fn ties_round_to_even() {
        let x = f32t(&[0.5, 1.5, 2.5, -0.5, -1.5, -2.5]);
        let z = Tensor::I8(arr0(0i8).into_dyn());
        let y = quantize_linear(&x, &scalar(1.0), Some(&z), &QuantizeAttrs::default()).unwrap();
        assert_eq!(ints(&y), vec![0, 2, 2, 0, -2, -2]);
    }

    #[test]
    fn true_division_differs_from_reciprocal() {
        // Find a value where x * (1/s) and x / s round differently, and check we follow x / s.
        let s = 0.1f32;
        let mut found = 0;
        for k in -1000..1000 {
            for d in [-2i32, -1, 0, 1, 2] {
                let x = f32::from_bits(((k as f32 + 0.5) * s).to_bits().wrapping_add(d as u32));
                let div = (x / s).round_ties_even();
                let mul = (x * (1.0 / s)).round_ties_even();
                let q = quantize_value(x, s, 0, DType::I16).unwrap();
                assert_eq!(q, div as i64);
                if div != mul {
                    found += 1;
                }
            }
        }
        assert!(
            found > 0,
            "the probe should contain reciprocal-sensitive values"
        );
    }

    #[test]
    fn nan_and_infinities() {
        let x = f32t(&[
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            2.25,
        ]);
        let z = Tensor::I16(arr0(3i16).into_dyn());
        let y = quantize_linear(&x, &scalar(0.5), Some(&z), &QuantizeAttrs::default()).unwrap();
        assert_eq!(ints(&y), vec![-32768, 32767, -32768, 32767, -32768, 7]);
    }

    #[test]
    fn default_output_is_u8_and_output_dtype_selects() {
        let x = f32t(&[-1.0, 100.0]);
        let y = quantize_linear(&x, &scalar(1.0), None, &QuantizeAttrs::default()).unwrap();
        assert_eq!(y, Tensor::U8(arr1(&[0u8, 100]).into_dyn()));
        let attrs = QuantizeAttrs {
            output_dtype: Some(DType::I4),
            ..QuantizeAttrs::default()
        };
        let y = quantize_linear(&x, &scalar(1.0), None, &attrs).unwrap();
        assert_eq!(y, Tensor::I4(arr1(&[-1i8, 7]).into_dyn()));
        let z = Tensor::U8(arr0(0u8).into_dyn());
        let err = quantize_linear(&x, &scalar(1.0), Some(&z), &attrs).unwrap_err();
        assert!(matches!(err, QuantError::ZeroPointType { .. }), "{err}");
    }

    #[test]
    fn four_and_sixteen_bit_ranges() {
        let x = f32t(&[-100.0, -3.0, 3.0, 100.0]);
        for (dt, want) in [
            (DType::U4, vec![0, 0, 3, 15]),
            (DType::I4, vec![-8, -3, 3, 7]),
            (DType::U16, vec![0, 0, 3, 100]),
            (DType::I16, vec![-100, -3, 3, 100]),
        ] {
            let attrs = QuantizeAttrs {
                output_dtype: Some(dt),
                ..QuantizeAttrs::default()
            };
            let y = quantize_linear(&x, &scalar(1.0), None, &attrs).unwrap();
            assert_eq!(y.dtype(), dt);
            assert_eq!(ints(&y), want, "{dt}");
        }
    }

    #[test]
    fn float8_is_unsupported() {
        let attrs = QuantizeAttrs {
            output_dtype: Some(DType::F8E4M3FN),
            ..QuantizeAttrs::default()
        };
        let err = quantize_linear(&f32t(&[1.0]), &scalar(1.0), None, &attrs).unwrap_err();
        assert!(err.to_string().contains("f8e4m3fn"), "{err}");
        let dq = dequantize_linear(
            &f32t(&[1.0]),
            &scalar(1.0),
            None,
            &DequantizeAttrs::default(),
        );
        assert!(matches!(dq, Err(QuantError::UnsupportedType { .. })));
    }

    #[test]
    fn dequantize_int32_bias_wraps_like_onnx_runtime() {
        let x = Tensor::I32(arr1(&[i32::MAX, 16_777_217, -5]).into_dyn());
        let z = Tensor::I32(arr0(-5).into_dyn());
        let y = dequantize_linear(&x, &scalar(0.5), Some(&z), &DequantizeAttrs::default()).unwrap();
        let Tensor::F32(y) = y else {
            panic!("f32 output")
        };
        assert_eq!(y.as_slice().unwrap(), &[-1073741824.0, 8388611.0, 0.0]);
    }

    #[test]
    fn dequantize_f16_scale_computes_in_f32() {
        let s = f16::from_f32(0.0123);
        let x = Tensor::U16(arr1(&[0u16, 40000, 65535]).into_dyn());
        let z = Tensor::U16(arr0(3u16).into_dyn());
        let scale = Tensor::F16(arr0(s).into_dyn());
        let y = dequantize_linear(&x, &scale, Some(&z), &DequantizeAttrs::default()).unwrap();
        let Tensor::F16(y) = y else {
            panic!("f16 output")
        };
        let want: Vec<f16> = [-3i32, 39997, 65532]
            .iter()
            .map(|&d| f16::from_f32(d as f32 * s.to_f32()))
            .collect();
        assert_eq!(y.as_slice().unwrap(), &want[..]);
        // output_dtype overrides the scale's type
        let attrs = DequantizeAttrs {
            output_dtype: Some(DType::F32),
            ..DequantizeAttrs::default()
        };
        let y = dequantize_linear(&x, &scale, Some(&z), &attrs).unwrap();
        assert_eq!(y.dtype(), DType::F32);
    }

    #[test]
    fn f16_precision_rounds_the_quotient() {
        // Near ties x ≈ (k + 0.5) * s in f16: the f32 quotient lands just off k + 0.5, the f16
        // quotient rounds onto it and then to even. Both paths are checked separately.
        let s = f16::from_f32(0.0123).to_f32();
        let mut differ = 0;
        for k in -100..100 {
            let x = f16::from_f32((k as f32 + 0.5) * s).to_f32();
            let q32 = quantize_one(x, s, 0, -128, 127, Precision::F32);
            let q16 = quantize_one(x, s, 0, -128, 127, Precision::F16);
            let expect16 = f16::from_f32(x / s)
                .to_f32()
                .round_ties_even()
                .clamp(-128.0, 127.0);
            assert_eq!(q16, expect16 as i64);
            differ += (q32 != q16) as usize;
        }
        assert!(differ > 0);
    }

    #[test]
    fn per_axis_and_negative_axis() {
        let x = Tensor::F32(arr2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]).into_dyn());
        let s = f32t(&[1.0, 2.0, 4.0]);
        let z = Tensor::I8(arr1(&[0i8, 1, -1]).into_dyn());
        let attrs = QuantizeAttrs {
            axis: -1,
            ..QuantizeAttrs::default()
        };
        let y = quantize_linear(&x, &s, Some(&z), &attrs).unwrap();
        // row 0: 1/1=1, 2/2+1=2, 3/4=0.75->1 -1=0 ; row 1: 4, 2.5->2 +1=3, 1.5->2 -1=1
        assert_eq!(ints(&y), vec![1, 2, 0, 4, 3, 1]);
        let bad = QuantizeAttrs {
            axis: 2,
            ..QuantizeAttrs::default()
        };
        assert!(matches!(
            quantize_linear(&x, &s, Some(&z), &bad),
            Err(QuantError::Axis { axis: 2, rank: 2 })
        ));
        let wrong = f32t(&[1.0, 2.0]);
        assert!(matches!(
            quantize_linear(&x, &wrong, None, &attrs),
            Err(QuantError::ScaleShape { .. })
        ));
    }

    #[test]
    fn blocked_dequantize() {
        // x [2, 5], blocks of 2 along axis 1 -> scale [2, 3] (last block is short).
        let x = Tensor::I8(arr2(&[[1i8, 2, 3, 4, 5], [-1, -2, -3, -4, -5]]).into_dyn());
        let s = Tensor::F32(arr2(&[[1.0f32, 10.0, 100.0], [2.0, 20.0, 200.0]]).into_dyn());
        let attrs = DequantizeAttrs {
            axis: 1,
            block_size: 2,
            output_dtype: None,
        };
        let y = dequantize_linear(&x, &s, None, &attrs).unwrap();
        assert_eq!(
            y.to_f64_vec().unwrap(),
            vec![1., 2., 30., 40., 500., -2., -4., -60., -80., -1000.]
        );
        let bad = Tensor::F32(arr2(&[[1.0f32, 10.0], [2.0, 20.0]]).into_dyn());
        assert!(matches!(
            dequantize_linear(&x, &bad, None, &attrs),
            Err(QuantError::ScaleShape { .. })
        ));
        let neg = DequantizeAttrs {
            block_size: -1,
            ..attrs
        };
        assert!(matches!(
            dequantize_linear(&x, &s, None, &neg),
            Err(QuantError::BlockSize(-1))
        ));
    }

    #[test]
    fn zero_point_checks() {
        let x = f32t(&[1.0, 2.0]);
        let z = Tensor::I8(arr1(&[0i8, 0]).into_dyn());
        assert!(matches!(
            quantize_linear(&x, &scalar(1.0), Some(&z), &QuantizeAttrs::default()),
            Err(QuantError::ZeroPointShape { .. })
        ));
        let z4 = Tensor::I4(arr0(9i8).into_dyn());
        assert!(matches!(
            quantize_linear(&x, &scalar(1.0), Some(&z4), &QuantizeAttrs::default()),
            Err(QuantError::ZeroPointRange { value: 9, .. })
        ));
        let q = Tensor::U8(arr1(&[1u8, 2]).into_dyn());
        let zi = Tensor::I8(arr0(0i8).into_dyn());
        assert!(matches!(
            dequantize_linear(&q, &scalar(1.0), Some(&zi), &DequantizeAttrs::default()),
            Err(QuantError::ZeroPointType { .. })
        ));
    }

    #[test]
    fn scalar_input_with_default_axis() {
        let x = Tensor::F32(arr0(3.3f32).into_dyn());
        let y = quantize_linear(&x, &scalar(0.1), None, &QuantizeAttrs::default()).unwrap();
        assert_eq!(y, Tensor::U8(arr0(33u8).into_dyn()));
    }

    #[test]
    fn bf16_scale_and_input() {
        let x = Tensor::BF16(arr1(&[bf16::from_f32(1.5), bf16::from_f32(-7.0)]).into_dyn());
        let s = Tensor::BF16(arr0(bf16::from_f32(0.5)).into_dyn());
        let z = Tensor::I8(arr0(1i8).into_dyn());
        let q = quantize_linear(&x, &s, Some(&z), &QuantizeAttrs::default()).unwrap();
        assert_eq!(ints(&q), vec![4, -13]);
        let d = dequantize_linear(&q, &s, Some(&z), &DequantizeAttrs::default()).unwrap();
        assert_eq!(d.dtype(), DType::BF16);
        assert_eq!(d.to_f64_vec().unwrap(), vec![1.5, -7.0]);
    }

    fn qtype() -> impl Strategy<Value = DType> {
        prop_oneof![
            Just(DType::U8),
            Just(DType::I8),
            Just(DType::U16),
            Just(DType::I16),
            Just(DType::U4),
            Just(DType::I4)
        ]
    }

    fn zp_tensor(dt: DType, v: i64) -> Tensor {
        integer_tensor(dt, &[], vec![v])
    }

    fn edge_value() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -300.0f32..300.0,
            2 => (-600i32..600).prop_map(|k| k as f32 * 0.5),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(-0.0f32),
            1 => any::<f32>(),
            1 => -1e8f32..1e8,
        ]
    }

    proptest! {
        /// The per-tensor loops give what the value-by-value definition gives, ties, NaN,
        /// infinities and huge quotients included.
        #[test]
        fn per_tensor_loops_match_the_definition(
            xs in prop::collection::vec(edge_value(), 1..40),
            dt in prop_oneof![Just(DType::U8), Just(DType::I8), Just(DType::U16), Just(DType::I16)],
            scale in prop_oneof![Just(1.0f32), Just(0.5f32), 1e-3f32..4.0],
            zf in 0.0f64..1.0,
        ) {
            let (lo, hi) = integer_range(dt).unwrap();
            let zp = lo + ((hi - lo) as f64 * zf) as i64;
            let x = ArrayD::from_shape_vec(IxDyn(&[xs.len()]), xs.clone()).unwrap();
            let fast = quantize_per_tensor_f32(&x, scale, zp, dt, &[xs.len()]).unwrap();
            let slow: Vec<i64> = xs
                .iter()
                .map(|&v| quantize_one(v, scale, zp, lo, hi, Precision::F32))
                .collect();
            prop_assert_eq!(fast.to_i64_vec().unwrap(), slow.clone());
            let deq = dequantize_per_tensor(&fast, scale, zp, |y| y).unwrap();
            let expect: Vec<f32> = slow
                .iter()
                .map(|&q| (q as i32).wrapping_sub(zp as i32) as f32 * scale)
                .collect();
            prop_assert_eq!(
                deq.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                expect.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    proptest! {
        /// The per-axis loop gives, bit for bit, what [`dequantize_linear`] gives per axis,
        /// for int8 and uint8 values, every axis of a rank-1 to rank-3 shape.
        #[test]
        fn per_axis_loop_matches_dequantize_linear(
            shape in prop::collection::vec(1usize..5, 1..4),
            axis_pick in 0usize..3,
            seed in any::<u64>(),
            signed in any::<bool>(),
        ) {
            let axis = axis_pick % shape.len();
            let n: usize = shape.iter().product();
            let dim = shape[axis];
            let mut state = seed | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let raw: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let zraw: Vec<u8> = (0..dim).map(|_| next() as u8).collect();
            let scales: Vec<f32> = (0..dim)
                .map(|_| f32::from_bits(0x3a00_0000 + (next() as u32 & 0x00ff_ffff)))
                .collect();
            let attrs = DequantizeAttrs { axis: axis as i64, ..Default::default() };
            let scale_t = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[dim]), scales.clone()).unwrap());
            let (fast, z, x) = if signed {
                let x: Vec<i8> = raw.iter().map(|&v| v as i8).collect();
                let z: Vec<i8> = zraw.iter().map(|&v| v as i8).collect();
                (
                    dequantize_axis_slice(&x, &shape, axis, &scales, &z).unwrap(),
                    Tensor::I8(ArrayD::from_shape_vec(IxDyn(&[dim]), z).unwrap()),
                    Tensor::I8(ArrayD::from_shape_vec(IxDyn(&shape), x).unwrap()),
                )
            } else {
                (
                    dequantize_axis_slice(&raw, &shape, axis, &scales, &zraw).unwrap(),
                    Tensor::U8(ArrayD::from_shape_vec(IxDyn(&[dim]), zraw).unwrap()),
                    Tensor::U8(ArrayD::from_shape_vec(IxDyn(&shape), raw).unwrap()),
                )
            };
            let slow = dequantize_linear(&x, &scale_t, Some(&z), &attrs).unwrap();
            let Tensor::F32(slow) = slow else { panic!("float32 output") };
            prop_assert_eq!(
                fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    proptest! {
        #[test]
        fn round_trip_within_half_step(
            dt in qtype(),
            scale in 1e-4f32..10.0,
            zf in 0.0f64..1.0,
            t in 0.0f64..1.0,
        ) {
            let (lo, hi) = integer_range(dt).unwrap();
            let zp = lo + ((hi - lo) as f64 * zf) as i64;
            // a point inside the representable range [(lo - zp) * s, (hi - zp) * s]
            let x = (((lo - zp) as f64 + (hi - lo) as f64 * t) * scale as f64) as f32;
            let attrs = QuantizeAttrs { output_dtype: Some(dt), ..QuantizeAttrs::default() };
            let z = zp_tensor(dt, zp);
            let y = fake_quantize(&scalar(x), &scalar(scale), Some(&z), &attrs).unwrap();
            let y = y.to_f64_vec().unwrap()[0];
            let tol = scale as f64 / 2.0 + (x.abs() as f64 + scale as f64) * 4.0 * f32::EPSILON as f64;
            prop_assert!((y - x as f64).abs() <= tol, "x={x} y={y} scale={scale} zp={zp}");
        }

        #[test]
        fn saturates_outside_range(
            dt in qtype(),
            scale in 1e-4f32..10.0,
            zf in 0.0f64..1.0,
            beyond in 1.0f64..1e6,
            above in any::<bool>(),
        ) {
            let (lo, hi) = integer_range(dt).unwrap();
            let zp = lo + ((hi - lo) as f64 * zf) as i64;
            let edge = if above { hi - zp } else { lo - zp } as f64;
            let x = ((edge + if above { beyond } else { -beyond }) * scale as f64) as f32;
            let q = quantize_value(x, scale, zp, dt).unwrap();
            prop_assert_eq!(q, if above { hi } else { lo });
        }

        #[test]
        fn monotonic(a in -1e3f32..1e3, b in -1e3f32..1e3, scale in 1e-3f32..1.0) {
            let (a, b) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(quantize_value(a, scale, 0, DType::I16).unwrap()
                <= quantize_value(b, scale, 0, DType::I16).unwrap());
        }

        #[test]
        fn per_axis_equals_per_tensor_per_slice(
            dims in proptest::collection::vec(1usize..4, 1..4),
            axis_pick in 0usize..4,
            seed in proptest::collection::vec(-50.0f32..50.0, 64),
            scales in proptest::collection::vec(0.01f32..2.0, 4),
            zps in proptest::collection::vec(-20i64..20, 4),
        ) {
            let axis = axis_pick % dims.len();
            let n: usize = dims.iter().product();
            let x = Array::from_iter(seed.iter().cycle().take(n).copied())
                .into_shape_with_order(dims.clone()).unwrap();
            let d = dims[axis];
            let s = Tensor::F32(arr1(&scales[..d]).into_dyn());
            let z = integer_tensor(DType::I8, &[d], zps[..d].to_vec());
            let attrs = QuantizeAttrs { axis: axis as i64 - dims.len() as i64, ..QuantizeAttrs::default() };
            let q = quantize_linear(&Tensor::F32(x.clone()), &s, Some(&z), &attrs).unwrap();
            let Tensor::I8(q) = q else { panic!("i8 output") };
            let dq = dequantize_linear(&Tensor::I8(q.clone()), &s, Some(&z),
                &DequantizeAttrs { axis: attrs.axis, ..DequantizeAttrs::default() }).unwrap();
            let Tensor::F32(dq) = dq else { panic!("f32 output") };
            for c in 0..d {
                let slice: ArrayD<f32> = x.index_axis(ndarray::Axis(axis), c).to_owned();
                let zc = zp_tensor(DType::I8, zps[c]);
                let qc = quantize_linear(&Tensor::F32(slice), &scalar(scales[c]), Some(&zc),
                    &QuantizeAttrs::default()).unwrap();
                let Tensor::I8(qc) = qc else { panic!("i8 output") };
                prop_assert_eq!(q.index_axis(ndarray::Axis(axis), c).to_owned(), qc.clone());
                let dc = dequantize_linear(&Tensor::I8(qc), &scalar(scales[c]), Some(&zc),
                    &DequantizeAttrs::default()).unwrap();
                prop_assert_eq!(Tensor::F32(dq.index_axis(ndarray::Axis(axis), c).to_owned()), dc);
            }
        }

        #[test]
        fn whole_axis_block_equals_per_axis(
            rows in 1usize..5,
            cols in 1usize..7,
            seed in proptest::collection::vec(-50.0f32..50.0, 35),
            scales in proptest::collection::vec(0.01f32..2.0, 5),
            zps in proptest::collection::vec(-20i64..20, 5),
        ) {
            // Blocks covering all of axis 1 of [rows, cols]: scale [rows, 1], one per row,
            // which is the per-axis form along axis 0.
            let x = Array::from_iter(seed.iter().cycle().take(rows * cols).copied())
                .into_shape_with_order(vec![rows, cols]).unwrap();
            let x = Tensor::F32(x);
            let blocked_s = Tensor::F32(array(&[rows, 1], scales[..rows].to_vec()));
            let blocked_z = integer_tensor(DType::I8, &[rows, 1], zps[..rows].to_vec());
            let axis_s = Tensor::F32(arr1(&scales[..rows]).into_dyn());
            let axis_z = integer_tensor(DType::I8, &[rows], zps[..rows].to_vec());
            let blocked = QuantizeAttrs { axis: 1, block_size: cols as i64, ..QuantizeAttrs::default() };
            let per_axis = QuantizeAttrs { axis: 0, ..QuantizeAttrs::default() };
            let qb = quantize_linear(&x, &blocked_s, Some(&blocked_z), &blocked).unwrap();
            let qa = quantize_linear(&x, &axis_s, Some(&axis_z), &per_axis).unwrap();
            prop_assert_eq!(&qb, &qa);
            // a block size larger than the axis is still one block
            let bigger = QuantizeAttrs { block_size: cols as i64 + 3, ..blocked };
            prop_assert_eq!(&quantize_linear(&x, &blocked_s, Some(&blocked_z), &bigger).unwrap(), &qa);
            let db = dequantize_linear(&qb, &blocked_s, Some(&blocked_z),
                &DequantizeAttrs { axis: 1, block_size: cols as i64, output_dtype: None }).unwrap();
            let da = dequantize_linear(&qa, &axis_s, Some(&axis_z),
                &DequantizeAttrs { axis: 0, ..DequantizeAttrs::default() }).unwrap();
            prop_assert_eq!(db, da);
        }
    }
}
