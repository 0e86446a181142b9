//! Dynamic quantization and integer products, exactly as ONNX defines them and ONNX Runtime 1.32
//! computes them.
//!
//! # Semantics
//! - **DynamicQuantizeLinear** (float32 → uint8): `m = min(0, min x)`, `M = max(0, max x)` over
//!   the values that are not NaN; `scale = (M − m) / 255` in float32, or 1 when `M == m`;
//!   `zero_point = round_half_even(clamp(0 − m / scale, 0, 255))`, where a NaN quotient (a
//!   range so small that the scale underflows to 0) clamps to 255; then QuantizeLinear with
//!   true division: `y = clamp(round_half_even(x / scale) + zero_point, 0, 255)`, NaN giving 0.
//!   This is ONNX Runtime's order of operations, NaN and denormal cases included.
//! - **MatMulInteger**: `Y = (A − a_zp) · (B − b_zp)` in int32 with numpy matmul broadcasting
//!   (1-D operands, batch dimensions). The products and their sum wrap in int32 like ONNX
//!   Runtime's accumulators; integer sums do not depend on their order. `a_zp` is per tensor
//!   (scalar or one element) or per row (`[M]`, or A's shape with the last dimension 1);
//!   `b_zp` per tensor or per column (`[N]`, or B's shape with the second-to-last dimension 1).
//!   ONNX Runtime only runs the per-tensor `a_zp`, and its x86 kernels without VNNI add pairs of
//!   uint8 × int8 products saturating to int16 (VPMADDUBSW), so it can differ from this
//!   definition on such CPUs; on the others it agrees bit for bit.
//! - **MatMulIntegerToFloat** (com.microsoft): `Y = float(MatMulInteger(A, B, a_zp, b_zp)) ·
//!   (a_scale · b_scale) + bias`, each operation rounded to float32 on its own (the scale
//!   product first, per column when `b_scale` is), as ONNX Runtime computes it.
//! - **DynamicQuantizeMatMul** (com.microsoft): A quantized by DynamicQuantizeLinear, then
//!   MatMulIntegerToFloat with A's scale and zero point.

use super::kernels::QuantError;
use crate::ir::tensor::{DType, Tensor};
use ndarray::{ArrayD, IxDyn};

/// Scale and zero point DynamicQuantizeLinear chooses for `x` (see the module doc).
pub fn dynamic_quantize_params(x: &[f32]) -> (f32, u8) {
    let (mut lo, mut hi) = (0f32, 0f32);
    for &v in x {
        // NaN compares false both ways: it never moves the range
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    let scale = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
    let initial = 0.0 - lo / scale;
    // ONNX Runtime's std::min(qmax, z) then std::max(qmin, ·): a NaN `z` gives qmax
    let clamped = if initial < 255.0 { initial } else { 255.0 };
    let clamped = if 0.0 < clamped { clamped } else { 0.0 };
    (scale, clamped.round_ties_even() as u8)
}

/// One value of DynamicQuantizeLinear's QuantizeLinear: `x / scale` clamped to the range
/// around the zero point first (NaN to the low end), rounded half to even, plus the zero point.
fn quantize_u8(x: f32, scale: f32, zero_point: u8) -> u8 {
    let zp = zero_point as f32;
    let v = x / scale;
    let v = if v.is_nan() {
        -zp
    } else {
        v.clamp(-zp, 255.0 - zp)
    };
    (v.round_ties_even() + zp) as u8
}

/// ONNX DynamicQuantizeLinear: the uint8 tensor, its scalar float32 scale and scalar uint8 zero
/// point.
pub fn dynamic_quantize_linear(x: &Tensor) -> Result<(Tensor, Tensor, Tensor), QuantError> {
    let Tensor::F32(a) = x else {
        return Err(QuantError::UnsupportedType {
            role: "input",
            dtype: x.dtype(),
            supported: "f32",
        });
    };
    let values: Vec<f32> = match a.as_slice() {
        Some(s) => s.to_vec(),
        None => a.iter().copied().collect(),
    };
    let (scale, zp) = dynamic_quantize_params(&values);
    let q: Vec<u8> = values.iter().map(|&v| quantize_u8(v, scale, zp)).collect();
    let shape = a.shape().to_vec();
    Ok((
        Tensor::U8(ArrayD::from_shape_vec(IxDyn(&shape), q).expect("one value per element")),
        Tensor::F32(ArrayD::from_elem(IxDyn(&[]), scale)),
        Tensor::U8(ArrayD::from_elem(IxDyn(&[]), zp)),
    ))
}

/// Why an integer product refused its operands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegerOpError {
    /// A type the op does not take.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// Operand shapes that do not multiply.
    #[error("{0}")]
    Shape(String),
}

/// An operand's values widened to int32, with its shape.
type IntValues = (Vec<i32>, Vec<usize>);

/// An 8-bit operand as int32 values with its shape.
fn int_values(t: &Tensor, role: &'static str) -> Result<IntValues, QuantError> {
    let values = match t {
        Tensor::U8(a) => a.iter().map(|&v| v as i32).collect(),
        Tensor::I8(a) => a.iter().map(|&v| v as i32).collect(),
        other => {
            return Err(QuantError::UnsupportedType {
                role,
                dtype: other.dtype(),
                supported: "u8, i8",
            })
        }
    };
    Ok((values, t.shape()))
}

/// A zero point's values, checked to have its operand's type.
fn zp_values(
    zp: Option<&Tensor>,
    operand: DType,
    role: &'static str,
) -> Result<Option<IntValues>, QuantError> {
    let Some(z) = zp else { return Ok(None) };
    if z.dtype() != operand {
        return Err(QuantError::ZeroPointType {
            zero_point: z.dtype(),
            expected: operand,
        });
    }
    int_values(z, role).map(Some)
}

/// Broadcasts two batch shapes (numpy rules).
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n {
                a[i + a.len() - n]
            } else {
                1
            };
            let db = if i + b.len() >= n {
                b[i + b.len() - n]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// Flat index into a batch of shape `shape` (right-aligned, broadcast) for the broadcast batch
/// index `i` of `out`.
fn batch_offset(i: usize, out: &[usize], shape: &[usize]) -> usize {
    let mut rest = i;
    let mut offset = 0;
    let mut stride = 1;
    for (d, &od) in out.iter().enumerate().rev() {
        let coord = rest % od;
        rest /= od;
        let k = d as isize - (out.len() as isize - shape.len() as isize);
        if k >= 0 {
            let sd = shape[k as usize];
            if sd != 1 {
                offset += coord * stride;
            }
            stride *= sd;
        }
    }
    offset
}

/// Subtracts a zero point from an operand viewed as `[batch..., rows, cols]`. `per` says along
/// which of the last two axes a vector zero point runs (0: rows, per row; 1: columns).
fn center(
    values: &mut [i32],
    shape: &[usize],
    zp: Option<IntValues>,
    per: usize,
    role: &str,
) -> Result<(), IntegerOpError> {
    let Some((z, zshape)) = zp else { return Ok(()) };
    let rank = shape.len();
    let (rows, cols) = (shape[rank - 2], shape[rank - 1]);
    let along = if per == 0 { rows } else { cols };
    let bad = || {
        IntegerOpError::Shape(format!(
            "{role} zero point of shape {zshape:?} fits neither one value nor one per {} of an \
             operand of shape {shape:?}",
            if per == 0 { "row" } else { "column" },
        ))
    };
    // per tensor, per row/column shared by every batch, or per batch and row/column
    let mut want_batched = shape.to_vec();
    want_batched[rank - 2 + (1 - per)] = 1;
    let mode = if z.len() == 1 && zshape.len() <= 1 {
        0
    } else if zshape == [along] {
        1
    } else if zshape == want_batched || zshape[..] == want_batched[want_batched.len() - 2..] {
        2
    } else {
        return Err(bad());
    };
    let per_matrix = rows * cols;
    for (i, v) in values.iter_mut().enumerate() {
        let (r, c) = ((i % per_matrix) / cols, i % cols);
        let along_i = if per == 0 { r } else { c };
        let k = match mode {
            0 => 0,
            1 => along_i,
            _ if zshape.len() == 2 => along_i,
            _ => (i / per_matrix) * along + along_i,
        };
        *v = v.wrapping_sub(z[k]);
    }
    Ok(())
}

/// ONNX MatMulInteger (see the module doc): an int32 tensor.
pub fn matmul_integer(
    a: &Tensor,
    b: &Tensor,
    a_zero_point: Option<&Tensor>,
    b_zero_point: Option<&Tensor>,
) -> Result<Tensor, IntegerOpError> {
    let (mut av, mut ashape) = int_values(a, "A")?;
    let (mut bv, mut bshape) = int_values(b, "B")?;
    let az = zp_values(a_zero_point, a.dtype(), "A zero point")?;
    let bz = zp_values(b_zero_point, b.dtype(), "B zero point")?;
    let shape_err = || {
        IntegerOpError::Shape(format!(
            "A of shape {:?} and B of shape {:?} do not multiply",
            a.shape(),
            b.shape()
        ))
    };
    if ashape.is_empty() || bshape.is_empty() {
        return Err(shape_err());
    }
    let (a_vec, b_vec) = (ashape.len() == 1, bshape.len() == 1);
    if a_vec {
        ashape.insert(0, 1);
    }
    if b_vec {
        bshape.push(1);
    }
    center(&mut av, &ashape, az, 0, "A")?;
    center(&mut bv, &bshape, bz, 1, "B")?;
    let (m, k) = (ashape[ashape.len() - 2], ashape[ashape.len() - 1]);
    let (k2, n) = (bshape[bshape.len() - 2], bshape[bshape.len() - 1]);
    if k != k2 {
        return Err(shape_err());
    }
    let abatch = &ashape[..ashape.len() - 2];
    let bbatch = &bshape[..bshape.len() - 2];
    let batch = broadcast(abatch, bbatch).ok_or_else(shape_err)?;
    let nbatch: usize = batch.iter().product();
    let mut out = vec![0i32; nbatch * m * n];
    let mut bt = vec![0i32; n * k];
    for i in 0..nbatch {
        let ao = batch_offset(i, &batch, abatch) * m * k;
        let bo = batch_offset(i, &batch, bbatch) * k * n;
        // B transposed: each output is a dot product of two contiguous rows
        for kk in 0..k {
            for j in 0..n {
                bt[j * k + kk] = bv[bo + kk * n + j];
            }
        }
        for r in 0..m {
            let row = &av[ao + r * k..ao + (r + 1) * k];
            for j in 0..n {
                out[(i * m + r) * n + j] = dot_i32(row, &bt[j * k..(j + 1) * k]);
            }
        }
    }
    let mut shape = batch;
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    Ok(Tensor::I32(
        ArrayD::from_shape_vec(IxDyn(&shape), out).expect("one value per output element"),
    ))
}

/// Σ x·y in wrapping int32 arithmetic (any order gives the same bits), in eight lanes the
/// compiler can vectorise.
fn dot_i32(x: &[i32], y: &[i32]) -> i32 {
    let mut lanes = [0i32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            lanes[l] = lanes[l].wrapping_add(a[l].wrapping_mul(b[l]));
        }
    }
    let mut sum = lanes.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    for (a, b) in xr.iter().zip(yr) {
        sum = sum.wrapping_add(a.wrapping_mul(*b));
    }
    sum
}

/// The float32 values of a scale that is one value or one per output column.
fn column_scales(t: &Tensor, n: usize, role: &'static str) -> Result<Vec<f32>, IntegerOpError> {
    let Tensor::F32(a) = t else {
        return Err(QuantError::UnsupportedType {
            role,
            dtype: t.dtype(),
            supported: "f32",
        }
        .into());
    };
    let v: Vec<f32> = a.iter().copied().collect();
    match v.len() {
        1 => Ok(vec![v[0]; n]),
        len if len == n && a.shape().iter().rev().skip(1).all(|&d| d == 1) => Ok(v),
        _ => Err(IntegerOpError::Shape(format!(
            "{role} of shape {:?} is neither one value nor one per output column ({n})",
            a.shape()
        ))),
    }
}

/// com.microsoft MatMulIntegerToFloat (see the module doc): a float32 tensor.
#[allow(clippy::too_many_arguments)]
pub fn matmul_integer_to_float(
    a: &Tensor,
    b: &Tensor,
    a_scale: &Tensor,
    b_scale: &Tensor,
    a_zero_point: Option<&Tensor>,
    b_zero_point: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<Tensor, IntegerOpError> {
    let acc = matmul_integer(a, b, a_zero_point, b_zero_point)?;
    let Tensor::I32(acc) = acc else {
        unreachable!("MatMulInteger gives int32")
    };
    let n = *acc.shape().last().unwrap_or(&1);
    let sa = column_scales(a_scale, 1, "A scale")?[0];
    let multipliers: Vec<f32> = column_scales(b_scale, n, "B scale")?
        .into_iter()
        .map(|sb| sa * sb)
        .collect();
    let bias = match bias {
        Some(t) => Some(column_scales(t, n, "bias")?),
        None => None,
    };
    let shape = acc.shape().to_vec();
    let values = acc
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let j = i % n.max(1);
            let y = v as f32 * multipliers[j];
            match &bias {
                Some(b) => y + b[j],
                None => y,
            }
        })
        .collect();
    Ok(Tensor::F32(
        ArrayD::from_shape_vec(IxDyn(&shape), values).expect("one value per element"),
    ))
}

/// com.microsoft DynamicQuantizeMatMul (see the module doc): a float32 tensor.
pub fn dynamic_quantize_matmul(
    a: &Tensor,
    b: &Tensor,
    b_scale: &Tensor,
    b_zero_point: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<Tensor, IntegerOpError> {
    let (q, scale, zp) = dynamic_quantize_linear(a)?;
    matmul_integer_to_float(&q, b, &scale, b_scale, Some(&zp), b_zero_point, bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr0, arr1, Array};
    use proptest::prelude::*;

    fn f32t(v: &[f32]) -> Tensor {
        Tensor::F32(arr1(v).into_dyn())
    }

    #[test]
    fn dynamic_quantize_onnx_examples() {
        // the three examples of the ONNX operator documentation
        for (x, scale, zp, y) in [
            (
                vec![0., 2., -3., -2.5, 1.34, 0.5],
                0.019_607_844f32,
                153u8,
                vec![153u8, 255, 0, 26, 221, 179],
            ),
            (
                vec![-1., -2.1, -1.3, -2.5, -3.34, -4.],
                0.015_686_275,
                255,
                vec![191, 121, 172, 96, 42, 0],
            ),
            (
                vec![1., 2.1, 1.3, 2.5, 3.34, 4., 1.5, 2.6, 3.9, 4., 3., 2.345],
                0.015_686_275,
                0,
                vec![64, 134, 83, 159, 213, 255, 96, 166, 249, 255, 191, 149],
            ),
        ] {
            let (q, s, z) = dynamic_quantize_linear(&f32t(&x)).unwrap();
            assert_eq!(s, Tensor::F32(arr0(scale).into_dyn()));
            assert_eq!(z, Tensor::U8(arr0(zp).into_dyn()));
            assert_eq!(q, Tensor::U8(arr1(&y).into_dyn()));
        }
    }

    #[test]
    fn dynamic_quantize_edges() {
        // all zeros: scale 1 (not 0), zero point 0
        assert_eq!(dynamic_quantize_params(&[0.0; 4]), (1.0, 0));
        assert_eq!(dynamic_quantize_params(&[]), (1.0, 0));
        // NaN leaves the range alone and quantizes to 0
        let (s, z) = dynamic_quantize_params(&[f32::NAN, 1.0, -1.0]);
        assert_eq!((s, z), (2.0 / 255.0, 127));
        assert_eq!(quantize_u8(f32::NAN, s, z), 0);
        // a denormal range: the scale underflows to 0, the zero point is 255
        assert_eq!(dynamic_quantize_params(&[1e-45, 0.0]), (0.0, 255));
        assert_eq!(quantize_u8(1e-45, 0.0, 255), 255);
        assert_eq!(quantize_u8(0.0, 0.0, 255), 0);
        // exact ties round to even
        let s = 2f32.powi(-7);
        assert_eq!(
            dynamic_quantize_params(&[-1.0, 255.0 / 128.0 - 1.0]),
            (s, 128)
        );
        assert_eq!(quantize_u8(0.5 * s, s, 128), 128);
        assert_eq!(quantize_u8(1.5 * s, s, 128), 130);
        assert_eq!(quantize_u8(-0.5 * s, s, 128), 128);
        assert_eq!(quantize_u8(-1.5 * s, s, 128), 126);
    }

    /// An int64 reference of MatMulInteger for 2-D operands.
    fn reference(a: &[i64], b: &[i64], m: usize, k: usize, n: usize) -> Vec<i64> {
        let mut out = vec![0; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| a[r * k + i] * b[i * n + c]).sum();
            }
        }
        out
    }

    proptest! {
        /// Full-range 8-bit operands (pairs of products beyond int16 included), per-row and
        /// per-column zero points: the int64 result, which int32 holds for these sizes.
        #[test]
        fn matmul_integer_matches_int64_reference(
            m in 1usize..5, k in 1usize..40, n in 1usize..6,
            signed_a in any::<bool>(), signed_b in any::<bool>(),
            seed in prop::collection::vec(any::<u8>(), 200),
            per_row in any::<bool>(), per_col in any::<bool>(),
        ) {
            let byte = |i: usize| seed[i % seed.len()];
            let op = |signed: bool, shape: &[usize], off: usize| -> Tensor {
                let len: usize = shape.iter().product();
                if signed {
                    Tensor::I8(Array::from_shape_fn(len, |i| byte(off + i * 7) as i8)
                        .into_shape_with_order(shape.to_vec()).unwrap())
                } else {
                    Tensor::U8(Array::from_shape_fn(len, |i| byte(off + i * 7))
                        .into_shape_with_order(shape.to_vec()).unwrap())
                }
            };
            let a = op(signed_a, &[m, k], 0);
            let b = op(signed_b, &[k, n], 3);
            let (rows, cols) = ([m], [n]);
            let az = op(signed_a, if per_row { &rows[..] } else { &[][..] }, 5);
            let bz = op(signed_b, if per_col { &cols[..] } else { &[][..] }, 11);
            let y = matmul_integer(&a, &b, Some(&az), Some(&bz)).unwrap();
            let (av, bv) = (a.to_i64_vec().unwrap(), b.to_i64_vec().unwrap());
            let (azv, bzv) = (az.to_i64_vec().unwrap(), bz.to_i64_vec().unwrap());
            let ac: Vec<i64> = (0..m * k).map(|i| av[i] - azv[if per_row { i / k } else { 0 }]).collect();
            let bc: Vec<i64> = (0..k * n).map(|i| bv[i] - bzv[if per_col { i % n } else { 0 }]).collect();
            prop_assert_eq!(y.shape(), vec![m, n]);
            prop_assert_eq!(y.to_i64_vec().unwrap(), reference(&ac, &bc, m, k, n));
        }
    }

    #[test]
    fn matmul_integer_broadcasts_and_takes_vectors() {
        // A [2, 1, 2, 3] x B [3, 3, 2] -> [2, 3, 2, 2]; batch zero points of B [3, 1, 2]
        let a = Tensor::U8(
            Array::from_shape_fn(vec![2, 1, 2, 3], |i| (i[0] * 6 + i[2] * 3 + i[3]) as u8)
                .into_dyn(),
        );
        let b = Tensor::I8(
            Array::from_shape_fn(vec![3, 3, 2], |i| {
                (i[0] as i8 - 1) * (i[1] as i8 + 2 * i[2] as i8)
            })
            .into_dyn(),
        );
        let bz =
            Tensor::I8(Array::from_shape_fn(vec![3, 1, 2], |i| (i[0] + i[2]) as i8).into_dyn());
        let y = matmul_integer(&a, &b, None, Some(&bz)).unwrap();
        assert_eq!(y.shape(), vec![2, 3, 2, 2]);
        let yv = y.to_i64_vec().unwrap();
        for p in 0..2 {
            for q in 0..3 {
                for r in 0..2 {
                    for c in 0..2 {
                        let want: i64 = (0..3)
                            .map(|k| {
                                ((p * 6 + r * 3 + k) as i64)
                                    * ((q as i64 - 1) * (k as i64 + 2 * c as i64) - (q + c) as i64)
                            })
                            .sum();
                        assert_eq!(yv[((p * 3 + q) * 2 + r) * 2 + c], want);
                    }
                }
            }
        }
        // 1-D A: [3] x [3, 2] -> [2]
        let v = Tensor::U8(arr1(&[1u8, 2, 3]).into_dyn());
        let b2 =
            Tensor::U8(Array::from_shape_fn(vec![3, 2], |i| (i[0] * 2 + i[1]) as u8).into_dyn());
        let y = matmul_integer(&v, &b2, None, None).unwrap();
        assert_eq!(y, Tensor::I32(arr1(&[16, 22]).into_dyn()));
        // mismatched inner dimensions and zero point shapes are errors
        assert!(matches!(
            matmul_integer(&b2, &b2, None, None),
            Err(IntegerOpError::Shape(_))
        ));
        let bad_zp = Tensor::U8(arr1(&[1u8, 2, 3, 4]).into_dyn());
        let err = matmul_integer(&v, &b2, None, Some(&bad_zp)).unwrap_err();
        assert!(err.to_string().contains("per column"), "{err}");
        let wrong_type = Tensor::I8(arr0(1i8).into_dyn());
        assert!(matches!(
            matmul_integer(&v, &b2, Some(&wrong_type), None),
            Err(IntegerOpError::Quant(QuantError::ZeroPointType { .. }))
        ));
    }

    #[test]
    fn matmul_integer_wraps_in_int32() {
        // 255 * 255 * 33030 overflows int32: the result wraps like an int32 accumulator
        let k = 33_030;
        let a = Tensor::U8(Array::from_elem(vec![1, k], 255u8).into_dyn());
        let b = Tensor::U8(Array::from_elem(vec![k, 1], 255u8).into_dyn());
        let y = matmul_integer(&a, &b, None, None).unwrap();
        let want = (255i64 * 255 * k as i64) as i32;
        assert_eq!(y.to_i64_vec().unwrap(), vec![want as i64]);
    }

    #[test]
    fn to_float_rounds_each_step() {
        let a = Tensor::U8(
            arr1(&[200u8, 17])
                .into_shape_with_order(vec![1, 2])
                .unwrap()
                .into_dyn(),
        );
        let b = Tensor::I8(
            arr1(&[-5i8, 100, 7, -3])
                .into_shape_with_order(vec![2, 2])
                .unwrap()
                .into_dyn(),
        );
        let (sa, sb) = (0.013f32, [0.021f32, 0.0007]);
        let bias = f32t(&[0.3, -0.7]);
        let y = matmul_integer_to_float(
            &a,
            &b,
            &Tensor::F32(arr0(sa).into_dyn()),
            &f32t(&sb),
            Some(&Tensor::U8(arr0(3u8).into_dyn())),
            None,
            Some(&bias),
        )
        .unwrap();
        let acc = [197 * -5 + 14 * 7, 197 * 100 + 14 * -3];
        let want: Vec<f32> = (0..2)
            .map(|j| acc[j] as f32 * (sa * sb[j]) + [0.3f32, -0.7][j])
            .collect();
        assert_eq!(
            y,
            Tensor::F32(
                arr1(&want)
                    .into_shape_with_order(vec![1, 2])
                    .unwrap()
                    .into_dyn()
            )
        );
    }
}
