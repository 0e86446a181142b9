//! ONNX Runtime's packed low-bit weights: com.microsoft MatMulNBits and GatherBlockQuantized,
//! dequantized exactly as ONNX Runtime 1.32's CPU kernels do.
//!
//! # Packing
//! Codes of `bits` bits (2, 4 or 8) are packed `8 / bits` to a byte, the first in the lowest
//! bits. int4/uint4 tensors hold one value per element here (their two-per-byte storage is
//! unpacked when the model is read).
//!
//! # MatMulNBits
//! `Y = A · Wᵀ (+ bias)` with `W` `[N, K]` (row `n` is column `n` of the `[K, N]` weight).
//! `B` is uint8 `[N, ⌈K / block_size⌉, block_size · bits / 8]`: per row `n`, block after block,
//! the codes of `k = 0, 1, …` packed as above; codes of the padded tail (`k ≥ K`) are ignored.
//! `scales` is `[N, blocks]` (or flattened), of A's type. `zero_points` are absent (then
//! `2^(bits − 1)`), uint8 packed like the codes along the blocks (`[N, ⌈blocks · bits / 8⌉]`), or
//! floats of A's type (`[N, blocks]`). [`dequantize_nbits_weight`] gives `W` in float32:
//! - integer zero points: `(q − zp) · scale`, one rounding (q − zp is exact);
//! - float zero points: `q · scale − zp · scale`, each product rounded to float32, then the
//!   difference: what ONNX Runtime computes (checked bit for bit through an identity input);
//! - float16 scales and zero points are widened exactly; the float16 weight ONNX Runtime uses is
//!   the float32 one rounded once.
//!
//! The product itself is a float32 matrix product whose summation order is the engine's own.
//! `accuracy_level` 4 makes ONNX Runtime quantize A to int8 per block for 4- and 8-bit weights
//! on CPUs that have the kernel; that is not this float path (see the engine's notes).
//!
//! # GatherBlockQuantized
//! `data` is int4/uint4 (one value per element) or uint8 packing `bits` (2, 4, 8) per value
//! along the last axis; `scales` has data's (unpacked) shape with `quantize_axis` divided into
//! `⌈dim / block_size⌉` blocks, the last one partial; `zero_points` have the scales' shape
//! (packed like the data for uint8) and default to 0 (int4/uint4) or `2^(bits − 1)` (uint8).
//! The output is `Gather(data, indices, gather_axis)` dequantized as `(q − zp) · scale` in
//! float32 and rounded to the scales' type. An index in `[−dim, dim)` selects a slice (negative
//! from the end); any other index gives a slice of zeros, as ONNX Runtime does. Block sizes are
//! powers of two of at least 16; uint8 data is gathered along axis 0 and quantized along the
//! last axis (the operator's contract).

use super::kernels::QuantError;
use crate::ir::tensor::{DType, Tensor};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

/// Why a packed weight could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NBitsError {
    /// An element type the operator does not take.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// An attribute outside what the operator allows.
    #[error("{0}")]
    Attribute(String),
    /// An input whose shape does not fit the attributes.
    #[error("{0}")]
    Shape(String),
}

fn shape_err(what: &str, got: &[usize], want: String) -> NBitsError {
    NBitsError::Shape(format!("{what} has shape {got:?}, expected {want}"))
}

/// Unpacks `count` codes of `bits` bits from `bytes`, lowest bits first.
pub fn unpack_bits(bytes: &[u8], bits: usize, count: usize) -> Vec<u8> {
    let per = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    (0..count)
        .map(|i| (bytes[i / per] >> (bits * (i % per))) & mask)
        .collect()
}

/// Packs codes of `bits` bits (2, 4 or 8), `8 / bits` to a byte, the first in the lowest bits
/// (the inverse of [`unpack_bits`]; a last byte not filled is padded with zero bits). Codes
/// wider than `bits` keep their low bits.
pub fn pack_bits(codes: &[u8], bits: usize) -> Vec<u8> {
    let per = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    let mut out = vec![0u8; codes.len().div_ceil(per)];
    for (i, &c) in codes.iter().enumerate() {
        out[i / per] |= (c & mask) << (bits * (i % per));
    }
    out
}

fn check_block_size(block_size: i64) -> Result<usize, NBitsError> {
    if block_size >= 16 && (block_size as u64).is_power_of_two() {
        Ok(block_size as usize)
    } else {
        Err(NBitsError::Attribute(format!(
            "block_size must be a power of 2 and at least 16, got {block_size}"
        )))
    }
}

fn check_bits(bits: i64) -> Result<usize, NBitsError> {
    match bits {
        2 | 4 | 8 => Ok(bits as usize),
        _ => Err(NBitsError::Attribute(format!(
            "bits must be 2, 4 or 8, got {bits}"
        ))),
    }
}

/// Float values of a scale or float zero point tensor (float32, float16 or bfloat16, widened
/// exactly).
fn floats(t: &Tensor, role: &'static str) -> Result<Vec<f32>, QuantError> {
    Ok(match t {
        Tensor::F32(a) => a.iter().copied().collect(),
        Tensor::F16(a) => a.iter().map(|v| v.to_f32()).collect(),
        Tensor::BF16(a) => a.iter().map(|v| v.to_f32()).collect(),
        other => {
            return Err(QuantError::UnsupportedType {
                role,
                dtype: other.dtype(),
                supported: "f32, f16, bf16",
            })
        }
    })
}

/// Attributes of com.microsoft MatMulNBits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatMulNBitsAttrs {
    /// The reduction size K.
    pub k: i64,
    /// The output size N.
    pub n: i64,
    /// Bits per weight: 2, 4 or 8.
    pub bits: i64,
    /// Weights per block along K: a power of two, at least 16.
    pub block_size: i64,
}

impl MatMulNBitsAttrs {
    /// Checks the attributes against the operator's contract (bits 2, 4 or 8; a block size that
    /// is a power of two of at least 16; positive K and N).
    pub fn check(&self) -> Result<(), NBitsError> {
        self.checked().map(|_| ())
    }

    /// `(k, n, bits, block_size, blocks)` once checked.
    fn checked(&self) -> Result<(usize, usize, usize, usize, usize), NBitsError> {
        let bits = check_bits(self.bits)?;
        let bs = check_block_size(self.block_size)?;
        if self.k <= 0 || self.n <= 0 {
            return Err(NBitsError::Attribute(format!(
                "K and N must be positive, got K={} N={}",
                self.k, self.n
            )));
        }
        let (k, n) = (self.k as usize, self.n as usize);
        Ok((k, n, bits, bs, k.div_ceil(bs)))
    }
}

/// The zero point of every (row, block) of a MatMulNBits weight, integer or float.
enum ZeroPoints {
    Int(Vec<u8>),
    Float(Vec<f32>),
}

fn nbits_zero_points(
    zp: Option<&Tensor>,
    scale_dtype: DType,
    n: usize,
    blocks: usize,
    bits: usize,
) -> Result<ZeroPoints, NBitsError> {
    let Some(z) = zp else {
        return Ok(ZeroPoints::Int(vec![1u8 << (bits - 1); n * blocks]));
    };
    match z {
        Tensor::U8(a) => {
            let row = (blocks * bits).div_ceil(8);
            if a.len() != n * row || a.ndim() > 2 {
                return Err(shape_err(
                    "zero_points",
                    a.shape(),
                    format!("[{n}, {row}] packed uint8"),
                ));
            }
            let bytes: Vec<u8> = a.iter().copied().collect();
            let mut out = Vec::with_capacity(n * blocks);
            for r in 0..n {
                out.extend(unpack_bits(&bytes[r * row..(r + 1) * row], bits, blocks));
            }
            Ok(ZeroPoints::Int(out))
        }
        other if other.dtype() == scale_dtype => {
            if other.len() != n * blocks || other.shape().len() > 2 {
                return Err(shape_err(
                    "zero_points",
                    &other.shape(),
                    format!("[{n}, {blocks}] like the scales"),
                ));
            }
            Ok(ZeroPoints::Float(floats(other, "zero point")?))
        }
        other => Err(QuantError::ZeroPointType {
            zero_point: other.dtype(),
            expected: scale_dtype,
        }
        .into()),
    }
}

/// com.microsoft MatMulNBits's weight, dequantized: float32 `[N, K]` (see the module doc).
pub fn dequantize_nbits_weight(
    b: &Tensor,
    scales: &Tensor,
    zero_points: Option<&Tensor>,
    attrs: &MatMulNBitsAttrs,
) -> Result<ArrayD<f32>, NBitsError> {
    let (k, n, bits, bs, blocks) = attrs.checked()?;
    let blob = bs * bits / 8;
    let Tensor::U8(b) = b else {
        return Err(QuantError::UnsupportedType {
            role: "B",
            dtype: b.dtype(),
            supported: "u8",
        }
        .into());
    };
    if b.shape() != [n, blocks, blob] {
        return Err(shape_err(
            "B",
            b.shape(),
            format!("[{n}, {blocks}, {blob}] (N, blocks of K, bytes per block)"),
        ));
    }
    if scales.len() != n * blocks || scales.shape().len() > 2 {
        return Err(shape_err(
            "scales",
            &scales.shape(),
            format!("[{n}, {blocks}]"),
        ));
    }
    let s = floats(scales, "scale")?;
    let z = nbits_zero_points(zero_points, scales.dtype(), n, blocks, bits)?;
    let bytes: Vec<u8> = b.iter().copied().collect();
    let mut w = vec![0f32; n * k];
    for r in 0..n {
        for blk in 0..blocks {
            let p = r * blocks + blk;
            let codes = unpack_bits(&bytes[p * blob..(p + 1) * blob], bits, bs);
            let (start, end) = (blk * bs, ((blk + 1) * bs).min(k));
            let scale = s[p];
            let out = &mut w[r * k + start..r * k + end];
            match &z {
                ZeroPoints::Int(z) => {
                    let zp = z[p] as i32;
                    for (o, &q) in out.iter_mut().zip(&codes) {
                        *o = (q as i32 - zp) as f32 * scale;
                    }
                }
                ZeroPoints::Float(z) => {
                    let offset = z[p] * scale;
                    for (o, &q) in out.iter_mut().zip(&codes) {
                        *o = q as f32 * scale - offset;
                    }
                }
            }
        }
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[n, k]), w).expect("N * K weights"))
}

/// Attributes of com.microsoft GatherBlockQuantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GatherBlockQuantizedAttrs {
    /// Axis of `data` the indices select along (negative counts from the end).
    pub gather_axis: i64,
    /// Axis of `data` the blocks run along (negative counts from the end).
    pub quantize_axis: i64,
    /// Values per block: a power of two, at least 16.
    pub block_size: i64,
    /// Bits per value of uint8 data: 2, 4 or 8 (not read for int4/uint4 data).
    pub bits: i64,
}

impl GatherBlockQuantizedAttrs {
    /// Checks the attributes that do not depend on the inputs (a block size that is a power of
    /// two of at least 16; bits 2, 4 or 8).
    pub fn check(&self) -> Result<(), NBitsError> {
        check_block_size(self.block_size)?;
        check_bits(self.bits)?;
        Ok(())
    }
}

impl Default for GatherBlockQuantizedAttrs {
    fn default() -> Self {
        GatherBlockQuantizedAttrs {
            gather_axis: 0,
            quantize_axis: 1,
            block_size: 128,
            bits: 4,
        }
    }
}

fn axis(a: i64, rank: usize, name: &str) -> Result<usize, NBitsError> {
    let r = rank as i64;
    if (-r..r).contains(&a) {
        Ok(if a < 0 { a + r } else { a } as usize)
    } else {
        Err(NBitsError::Attribute(format!(
            "{name} {a} is out of range for data of rank {rank}"
        )))
    }
}

/// Codes of a GatherBlockQuantized table or zero point tensor, one per logical element, and
/// the logical shape (uint8 storage unpacked along its last axis).
fn logical_codes(
    t: &Tensor,
    bits: usize,
    logical_last: Option<usize>,
) -> Result<(Vec<i32>, Vec<usize>), NBitsError> {
    match t {
        Tensor::I4(a) => Ok((a.iter().map(|&v| v as i32).collect(), a.shape().to_vec())),
        Tensor::U4(a) => Ok((a.iter().map(|&v| v as i32).collect(), a.shape().to_vec())),
        Tensor::U8(a) => {
            let mut shape = a.shape().to_vec();
            let Some(&packed) = shape.last() else {
                return Err(NBitsError::Shape("uint8 data must not be a scalar".into()));
            };
            let per = 8 / bits;
            let last = logical_last.unwrap_or(packed * per);
            if last.div_ceil(per) != packed {
                return Err(NBitsError::Shape(format!(
                    "{packed} packed bytes along the last axis do not hold {last} values of \
                     {bits} bits"
                )));
            }
            let bytes: Vec<u8> = a.iter().copied().collect();
            let rows = bytes.len().checked_div(packed).unwrap_or(0);
            let mut codes = Vec::with_capacity(rows * last);
            for r in 0..rows {
                codes.extend(
                    unpack_bits(&bytes[r * packed..(r + 1) * packed], bits, last)
                        .into_iter()
                        .map(|c| c as i32),
                );
            }
            *shape.last_mut().expect("checked above") = last;
            Ok((codes, shape))
        }
        other => Err(QuantError::UnsupportedType {
            role: "data",
            dtype: other.dtype(),
            supported: "u4, i4, u8",
        }
        .into()),
    }
}

/// com.microsoft GatherBlockQuantized (see the module doc): a tensor of the scales' type.
pub fn gather_block_quantized(
    data: &Tensor,
    indices: &Tensor,
    scales: &Tensor,
    zero_points: Option<&Tensor>,
    attrs: &GatherBlockQuantizedAttrs,
) -> Result<Tensor, NBitsError> {
    let bs = check_block_size(attrs.block_size)?;
    let packed = data.dtype() == DType::U8;
    let bits = if packed { check_bits(attrs.bits)? } else { 4 };
    let (q, dshape) = logical_codes(data, bits, None)?;
    let rank = dshape.len();
    if rank == 0 {
        return Err(NBitsError::Shape("data must not be a scalar".into()));
    }
    let ga = axis(attrs.gather_axis, rank, "gather_axis")?;
    let qa = axis(attrs.quantize_axis, rank, "quantize_axis")?;
    if packed && (ga != 0 || qa != rank - 1) {
        return Err(NBitsError::Attribute(format!(
            "uint8 data is gathered along axis 0 and quantized along the last axis, got \
             gather_axis {} and quantize_axis {}",
            attrs.gather_axis, attrs.quantize_axis
        )));
    }
    let mut sshape = dshape.clone();
    sshape[qa] = dshape[qa].div_ceil(bs);
    if scales.shape() != sshape {
        return Err(shape_err(
            "scales",
            &scales.shape(),
            format!("{sshape:?} (block_size {bs} along axis {qa})"),
        ));
    }
    let s = floats(scales, "scale")?;
    let z: Vec<i32> = match zero_points {
        None => vec![if packed { 1 << (bits - 1) } else { 0 }; s.len()],
        Some(zp) => {
            if zp.dtype() != data.dtype() {
                return Err(QuantError::ZeroPointType {
                    zero_point: zp.dtype(),
                    expected: data.dtype(),
                }
                .into());
            }
            let (z, zshape) = logical_codes(zp, bits, Some(sshape[rank - 1]))?;
            if zshape != sshape {
                return Err(shape_err(
                    "zero_points",
                    &zp.shape(),
                    format!("{sshape:?}, like the scales"),
                ));
            }
            z
        }
    };
    let idx = match indices.dtype() {
        DType::I32 | DType::I64 => indices.to_i64_vec().unwrap_or_default(),
        other => {
            return Err(QuantError::UnsupportedType {
                role: "indices",
                dtype: other,
                supported: "i32, i64",
            }
            .into())
        }
    };
    let outer: usize = dshape[..ga].iter().product();
    let dim = dshape[ga];
    let inner: usize = dshape[ga + 1..].iter().product();
    // scale index of a data element: its coordinate along `qa` divided into blocks
    let q_inner: usize = dshape[qa + 1..].iter().product();
    let q_dim = dshape[qa];
    let blocks = sshape[qa];
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &i in &idx {
            let row = if i < 0 { i + dim as i64 } else { i };
            if row < 0 || row >= dim as i64 {
                out.extend(std::iter::repeat_n(0f32, inner));
                continue;
            }
            let base = (o * dim + row as usize) * inner;
            for (e, &code) in q.iter().enumerate().skip(base).take(inner) {
                let c = (e / q_inner) % q_dim;
                let p = ((e / (q_inner * q_dim)) * blocks + c / bs) * q_inner + e % q_inner;
                out.push((code - z[p]) as f32 * s[p]);
            }
        }
    }
    let mut shape: Vec<usize> = dshape[..ga].to_vec();
    shape.extend(indices.shape());
    shape.extend(&dshape[ga + 1..]);
    let arr = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&shape), v).expect("gathered shape");
    Ok(match scales.dtype() {
        DType::F16 => Tensor::F16(arr(out).mapv(f16::from_f32)),
        DType::BF16 => Tensor::BF16(arr(out).mapv(bf16::from_f32)),
        _ => Tensor::F32(arr(out)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, Array};
    use proptest::prelude::*;

    fn pack(codes: &[u8], bits: usize) -> Vec<u8> {
        pack_bits(codes, bits)
    }

    #[test]
    fn unpacks_lowest_bits_first() {
        assert_eq!(pack_bits(&[1, 14, 7], 4), vec![0xe1, 0x07]);
        assert_eq!(pack_bits(&[0, 1, 2, 3], 2), vec![0b11_10_01_00]);
        // The int4 case of the ONNX storage note, as uint4 two's-complement nibbles.
        let int4: Vec<u8> = [1i8, -2, 3, -4, 5, 6, 7, -8, 0, 1]
            .iter()
            .map(|&v| v as u8)
            .collect();
        assert_eq!(pack_bits(&int4, 4), vec![0xe1, 0xc3, 0x65, 0x87, 0x10]);
        assert_eq!(unpack_bits(&[0xe1, 0x07], 4, 3), vec![1, 14, 7]);
        assert_eq!(unpack_bits(&[0b11_10_01_00], 2, 4), vec![0, 1, 2, 3]);
        assert_eq!(unpack_bits(&[9, 200], 8, 2), vec![9, 200]);
    }

    proptest! {
        /// Dequantization of every (row, k) is `(q - zp) * scale` of its block, packed codes
        /// and zero points read back, the padded tail ignored; float zero points follow
        /// `q * s - zp * s`.
        #[test]
        fn nbits_weight_matches_the_definition(
            bits in prop_oneof![Just(2usize), Just(4), Just(8)],
            bs_log in 4u32..8,
            k in 1usize..300,
            n in 1usize..4,
            seed in prop::collection::vec(any::<u8>(), 64),
            zp_kind in 0usize..3,
        ) {
            let bs = 1usize << bs_log;
            let blocks = k.div_ceil(bs);
            let qmax = (1u16 << bits) as usize;
            let byte = |i: usize| seed[i % seed.len()] as usize;
            let codes: Vec<u8> = (0..n * blocks * bs).map(|i| (byte(i * 5 + i / 7) % qmax) as u8).collect();
            let packed: Vec<u8> = codes.chunks(bs).flat_map(|c| pack(c, bits)).collect();
            let scales: Vec<f32> = (0..n * blocks).map(|i| (byte(i) as f32 - 100.0) / 997.0).collect();
            let zint: Vec<u8> = (0..n * blocks).map(|i| (byte(i * 3 + 1) % qmax) as u8).collect();
            let zfloat: Vec<f32> = (0..n * blocks).map(|i| byte(i * 11) as f32 / 17.0).collect();
            let b = Tensor::U8(Array::from_shape_vec(vec![n, blocks, bs * bits / 8], packed).unwrap().into_dyn());
            let s = Tensor::F32(Array::from_shape_vec(vec![n, blocks], scales.clone()).unwrap().into_dyn());
            let zrow = (blocks * bits).div_ceil(8);
            let zp = match zp_kind {
                0 => None,
                1 => Some(Tensor::U8(Array::from_shape_vec(vec![n, zrow],
                    zint.chunks(blocks).flat_map(|c| { let mut p = pack(c, bits); p.resize(zrow, 0); p }).collect()).unwrap().into_dyn())),
                _ => Some(Tensor::F32(Array::from_shape_vec(vec![n, blocks], zfloat.clone()).unwrap().into_dyn())),
            };
            let attrs = MatMulNBitsAttrs { k: k as i64, n: n as i64, bits: bits as i64, block_size: bs as i64 };
            let w = dequantize_nbits_weight(&b, &s, zp.as_ref(), &attrs).unwrap();
            prop_assert_eq!(w.shape(), &[n, k]);
            for r in 0..n {
                for kk in 0..k {
                    let p = r * blocks + kk / bs;
                    let q = codes[r * blocks * bs + kk];
                    let want = match zp_kind {
                        0 => (q as i32 - (1 << (bits - 1))) as f32 * scales[p],
                        1 => (q as i32 - zint[p] as i32) as f32 * scales[p],
                        _ => q as f32 * scales[p] - zfloat[p] * scales[p],
                    };
                    prop_assert_eq!(w[[r, kk]].to_bits(), want.to_bits());
                }
            }
        }
    }

    #[test]
    fn nbits_checks_attributes_and_shapes() {
        let b = Tensor::U8(Array::zeros(vec![2, 1, 8]).into_dyn());
        let s = Tensor::F32(Array::ones(vec![2, 1]).into_dyn());
        let ok = MatMulNBitsAttrs {
            k: 16,
            n: 2,
            bits: 4,
            block_size: 16,
        };
        assert!(dequantize_nbits_weight(&b, &s, None, &ok).is_ok());
        for (attrs, needle) in [
            (MatMulNBitsAttrs { bits: 3, ..ok }, "bits"),
            (
                MatMulNBitsAttrs {
                    block_size: 24,
                    ..ok
                },
                "block_size",
            ),
            (
                MatMulNBitsAttrs {
                    block_size: 8,
                    ..ok
                },
                "block_size",
            ),
            (MatMulNBitsAttrs { k: 40, ..ok }, "B has shape"),
            (MatMulNBitsAttrs { n: 3, ..ok }, "B has shape"),
        ] {
            let err = dequantize_nbits_weight(&b, &s, None, &attrs).unwrap_err();
            assert!(err.to_string().contains(needle), "{attrs:?}: {err}");
        }
        let zf16 = Tensor::F16(Array::zeros(vec![2, 1]).into_dyn());
        let err = dequantize_nbits_weight(&b, &s, Some(&zf16), &ok).unwrap_err();
        assert!(
            matches!(err, NBitsError::Quant(QuantError::ZeroPointType { .. })),
            "{err}"
        );
    }

    #[test]
    fn gather_block_quantized_selects_and_zeroes() {
        // int4 table [3, 20], blocks of 16 along the last axis (second block partial)
        let q = Array::from_shape_fn(vec![3, 20], |i| ((i[0] * 20 + i[1]) % 16) as i8 - 8);
        let s = Array::from_shape_fn(vec![3, 2], |i| 0.5 + (i[0] * 2 + i[1]) as f32);
        let z = Array::from_shape_fn(vec![3, 2], |i| i[0] as i8 - i[1] as i8);
        let idx = Tensor::I64(arr1(&[2, -1, 3, -4, 0]).into_dyn());
        let attrs = GatherBlockQuantizedAttrs {
            block_size: 16,
            ..Default::default()
        };
        let y = gather_block_quantized(
            &Tensor::I4(q.clone().into_dyn()),
            &idx,
            &Tensor::F32(s.clone().into_dyn()),
            Some(&Tensor::I4(z.clone().into_dyn())),
            &attrs,
        )
        .unwrap();
        assert_eq!(y.shape(), vec![5, 20]);
        let y = y.to_f64_vec().unwrap();
        for (j, row) in [Some(2usize), Some(2), None, None, Some(0)]
            .into_iter()
            .enumerate()
        {
            for c in 0..20 {
                let want = row.map_or(0.0, |r| {
                    ((q[[r, c]] - z[[r, c / 16]]) as f32 * s[[r, c / 16]]) as f64
                });
                assert_eq!(y[j * 20 + c], want, "out row {j} col {c}");
            }
        }
        // uint8 data packing 4 bits, default zero point 8; f16 scales give f16
        let packed = Tensor::U8(
            Array::from_shape_vec(
                vec![1, 8],
                vec![0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe],
            )
            .unwrap()
            .into_dyn(),
        );
        let s16 = Tensor::F16(Array::from_elem(vec![1, 1], f16::from_f32(0.25)).into_dyn());
        let y = gather_block_quantized(
            &packed,
            &Tensor::I32(arr1(&[0]).into_dyn()),
            &s16,
            None,
            &GatherBlockQuantizedAttrs {
                block_size: 16,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(y.dtype(), DType::F16);
        let want: Vec<f64> = (0..16).map(|c| (c as f64 - 8.0) * 0.25).collect();
        assert_eq!(y.to_f64_vec().unwrap(), want);
    }

    proptest! {
        /// Gathering then dequantizing equals blocked DequantizeLinear of the whole table then
        /// Gather, with zero slices for indices out of range, for any gather and quantize axes.
        #[test]
        fn gather_equals_dequantize_then_gather(
            dims in prop::collection::vec(1usize..40, 1..4),
            ga_pick in 0usize..3,
            qa_pick in 0usize..3,
            bs_log in 4u32..6,
            signed in any::<bool>(),
            with_zp in any::<bool>(),
            seed in prop::collection::vec(any::<u8>(), 64),
            raw_idx in prop::collection::vec(-50i64..50, 0..6),
        ) {
            use crate::quant::kernels::{dequantize_linear, DequantizeAttrs};
            let rank = dims.len();
            let (ga, qa) = (ga_pick % rank, qa_pick % rank);
            let bs = 1usize << bs_log;
            let byte = |i: usize| seed[(i * 7 + i / 5) % seed.len()];
            let n: usize = dims.iter().product();
            let mut sdims = dims.clone();
            sdims[qa] = dims[qa].div_ceil(bs);
            let sn: usize = sdims.iter().product();
            let codes = |len: usize, off: usize, shape: &[usize]| -> Tensor {
                if signed {
                    Tensor::I4(Array::from_shape_fn(len, |i| (byte(i + off) % 16) as i8 - 8)
                        .into_shape_with_order(shape.to_vec()).unwrap())
                } else {
                    Tensor::U4(Array::from_shape_fn(len, |i| byte(i + off) % 16)
                        .into_shape_with_order(shape.to_vec()).unwrap())
                }
            };
            let data = codes(n, 0, &dims);
            let zp = with_zp.then(|| codes(sn, 3, &sdims));
            let scales = Tensor::F32(Array::from_shape_fn(sn, |i| (byte(i + 9) as f32 - 128.0) / 331.0)
                .into_shape_with_order(sdims.clone()).unwrap());
            let idx = Tensor::I64(arr1(&raw_idx).into_dyn());
            let attrs = GatherBlockQuantizedAttrs {
                gather_axis: ga as i64,
                quantize_axis: qa as i64 - rank as i64,
                block_size: bs as i64,
                bits: 4,
            };
            let got = gather_block_quantized(&data, &idx, &scales, zp.as_ref(), &attrs).unwrap();
            let full = dequantize_linear(&data, &scales, zp.as_ref(), &DequantizeAttrs {
                axis: qa as i64, block_size: bs as i64, output_dtype: None }).unwrap();
            let Tensor::F32(full) = full else { panic!("f32") };
            let mut want_shape = dims[..ga].to_vec();
            want_shape.push(raw_idx.len());
            want_shape.extend(&dims[ga + 1..]);
            prop_assert_eq!(got.shape(), want_shape.clone());
            let slices: Vec<ArrayD<f32>> = raw_idx.iter().map(|&i| {
                let d = dims[ga] as i64;
                let r = if i < 0 { i + d } else { i };
                if (0..d).contains(&r) {
                    full.index_axis(ndarray::Axis(ga), r as usize).to_owned()
                } else {
                    full.index_axis(ndarray::Axis(ga), 0).mapv(|_| 0.0)
                }
            }).collect();
            let views: Vec<_> = slices.iter().map(|s| s.view().insert_axis(ndarray::Axis(ga))).collect();
            let want = if views.is_empty() {
                ArrayD::zeros(IxDyn(&want_shape))
            } else {
                ndarray::concatenate(ndarray::Axis(ga), &views).unwrap()
            };
            let Tensor::F32(got) = got else { panic!("f32") };
            prop_assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn gather_block_quantized_refuses_what_the_operator_does() {
        let data = Tensor::U4(Array::zeros(vec![2, 32]).into_dyn());
        let s = Tensor::F32(Array::ones(vec![2, 2]).into_dyn());
        let idx = Tensor::I64(arr1(&[0]).into_dyn());
        let base = GatherBlockQuantizedAttrs {
            block_size: 16,
            ..Default::default()
        };
        let run = |attrs: GatherBlockQuantizedAttrs, s: &Tensor, idx: &Tensor| {
            gather_block_quantized(&data, idx, s, None, &attrs)
                .unwrap_err()
                .to_string()
        };
        assert!(run(
            GatherBlockQuantizedAttrs {
                block_size: 8,
                ..base
            },
            &s,
            &idx
        )
        .contains("block_size"));
        assert!(run(
            GatherBlockQuantizedAttrs {
                quantize_axis: 2,
                ..base
            },
            &s,
            &idx
        )
        .contains("quantize_axis"));
        assert!(
            run(base, &Tensor::F32(Array::ones(vec![2, 3]).into_dyn()), &idx).contains("scales")
        );
        assert!(run(base, &s, &Tensor::F32(arr1(&[0.0]).into_dyn())).contains("indices"));
        let packed = Tensor::U8(Array::zeros(vec![2, 16]).into_dyn());
        let err = gather_block_quantized(
            &packed,
            &idx,
            &s,
            None,
            &GatherBlockQuantizedAttrs {
                gather_axis: 1,
                ..base
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("gathered along axis 0"), "{err}");
        let err = gather_block_quantized(
            &packed,
            &idx,
            &s,
            None,
            &GatherBlockQuantizedAttrs { bits: 3, ..base },
        )
        .unwrap_err();
        assert!(err.to_string().contains("bits"), "{err}");
    }
}
