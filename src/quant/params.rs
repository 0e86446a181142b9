//! Scale and zero point from a real range, following ONNX Runtime's rules
//! (`compute_scale_zp`, `get_qmin_qmax_for_qType`) so users get the numbers they expect.
//!
//! 1. The range always includes zero (zero must be exactly representable).
//! 2. Symmetric: `a = max(|rmin|, |rmax|)`, range `[-a, a]`; signed symmetric types use
//!    the narrow range (`int8 [-127, 127]`, `int16 [-32767, 32767]`).
//! 3. `scale = (rmax - rmin) / (qmax - qmin)` in f64, stored as f32; a scale below the
//!    smallest normal f32 (an all-zero tensor) becomes 1 with zero point 0 (or mid-range).
//! 4. Zero point: symmetric → `round_half_even((qmin + qmax) / 2)`; asymmetric →
//!    `round_half_even(qmin - rmin / scale)`, clamped to `[qmin, qmax]`.

use crate::ir::DType;
use serde::{Deserialize, Serialize};

/// A division or multiplication by a positive constant folded into the quantization of
/// its input (`x / c` or `x · c` read through the `QuantizeLinear → DequantizeLinear` of
/// `x`): the range is the op's output's, the QuantizeLinear's scale is that range's scale
/// times `c` (`Div`) or divided by it (`Mul`), so it computes the integers of the op's
/// output, and the DequantizeLinear, with the output's own scale, gives the op's output.
/// One rounding instead of two, and no float op between two quantized units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleFold {
    Div(f32),
    Mul(f32),
}

impl ScaleFold {
    /// The QuantizeLinear scale for the dequantization scale `s` (one f32 operation, so
    /// the written model and the simulation compute the same bits).
    pub fn quantize_scale(self, s: f32) -> f32 {
        match self {
            ScaleFold::Div(c) => s * c,
            ScaleFold::Mul(c) => s / c,
        }
    }
}

/// An integer grid to quantize onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QType {
    pub dtype: DType,
    pub qmin: i64,
    pub qmax: i64,
    pub symmetric: bool,
}

impl QType {
    /// The grid of `dtype`, narrowed for signed symmetric types and optionally to 7 bits
    /// (`reduce_range`, for u8 x s8 kernels on x86 CPUs without VNNI).
    pub fn new(dtype: DType, symmetric: bool, reduce_range: bool) -> Option<QType> {
        let (mut qmin, mut qmax) = super::integer_range(dtype)?;
        if reduce_range {
            (qmin, qmax) = match dtype {
                DType::I8 => (-64, 64),
                DType::U8 => (0, 127),
                DType::I16 => (-16384, 16384),
                DType::U16 => (0, 32767),
                DType::I4 => (-4, 3),
                DType::U4 => (0, 7),
                _ => (qmin, qmax),
            };
        } else if symmetric && qmin < 0 {
            qmin = -qmax;
        }
        Some(QType {
            dtype,
            qmin,
            qmax,
            symmetric,
        })
    }

    /// Number of steps of the grid.
    pub fn levels(&self) -> i64 {
        self.qmax - self.qmin
    }
}

/// Scale and zero point of one tensor or one channel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleZp {
    pub scale: f32,
    pub zero_point: i64,
}

/// Scale and zero point for the real range `[rmin, rmax]` on grid `q`.
pub fn scale_zp(rmin: f32, rmax: f32, q: &QType) -> ScaleZp {
    let (mut lo, mut hi) = (rmin.min(0.0) as f64, rmax.max(0.0) as f64);
    if !lo.is_finite() || !hi.is_finite() {
        lo = if lo.is_finite() { lo } else { 0.0 };
        hi = if hi.is_finite() { hi } else { 0.0 };
    }
    if q.symmetric {
        let a = lo.abs().max(hi.abs());
        lo = -a;
        hi = a;
    }
    let (qmin, qmax) = (q.qmin as f64, q.qmax as f64);
    let scale = ((hi - lo) / (qmax - qmin)) as f32;
    let mid = ((qmin + qmax) / 2.0).round_ties_even() as i64;
    if scale.is_nan() || scale < f32::MIN_POSITIVE {
        return ScaleZp {
            scale: 1.0,
            zero_point: if q.symmetric {
                mid
            } else {
                q.qmin.max(0).min(q.qmax)
            },
        };
    }
    let zero_point = if q.symmetric {
        mid
    } else {
        ((qmin - lo / scale as f64).round_ties_even() as i64).clamp(q.qmin, q.qmax)
    };
    ScaleZp { scale, zero_point }
}

/// Shrink factors [`mse_scale_zp`] tries on the min/max range: 1, 0.995, …, 0.5.
const MSE_STEPS: usize = 101;

/// Scale and zero point for `values` on grid `q` whose range minimises the squared error
/// `Σ (w − dequantize(quantize(w)))²` (weights: `--weight-method mse`). The candidates are
/// the min/max range shrunk by `f = 1, 0.995, …, 0.5` (clipping the largest values in
/// exchange for a finer step); the error of each is computed exactly, value by value, as
/// QuantizeLinear and DequantizeLinear compute them in f32. Ties keep the wider range.
pub fn mse_scale_zp(values: &[f32], q: &QType) -> ScaleZp {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let error = |p: &ScaleZp| -> f64 {
        let (s, z) = (p.scale, p.zero_point as f32);
        let (qmin, qmax) = (q.qmin as f32, q.qmax as f32);
        values
            .iter()
            .filter(|v| v.is_finite())
            .map(|&w| {
                let r = ((w / s).round_ties_even() + z).clamp(qmin, qmax);
                let d = (w - (r - z) * s) as f64;
                d * d
            })
            .sum()
    };
    let mut best = scale_zp(lo, hi, q);
    let mut best_err = error(&best);
    for i in 1..MSE_STEPS {
        let f = 1.0 - i as f32 * 0.005;
        let p = scale_zp(lo * f, hi * f, q);
        let e = error(&p);
        if e < best_err {
            best = p;
            best_err = e;
        }
    }
    best
}

/// Quantizes a bias to int32 with `scale = s_input * s_weight` and zero point 0,
/// saturating to the int32 range. Returns the values and how many saturated.
pub fn quantize_bias(bias: &[f32], scales: &[f32]) -> (Vec<i32>, usize) {
    let mut clipped = 0;
    let q = bias
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let s = scales[if scales.len() == 1 { 0 } else { i }];
            let v = (b as f64 / s as f64).round_ties_even();
            if v > i32::MAX as f64 || v < i32::MIN as f64 {
                clipped += 1;
            }
            v.clamp(i32::MIN as f64, i32::MAX as f64) as i32
        })
        .collect();
    (q, clipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_weight_range_clips_a_lone_outlier() {
        // 1000 values in [-1, 1] and one at 1.6, on int4 [-7, 7]: min/max's step 1.6/7
        // costs about step²/12 = 4.4e-3 per value (4.4 in all); clipping at 1 costs
        // 0.6² = 0.36 once and 1.7e-3 per value (2.1 in all).
        let mut w: Vec<f32> = (0..1000).map(|i| (i as f32 / 500.0) - 1.0).collect();
        w.push(1.6);
        let q = QType::new(DType::I4, true, false).unwrap();
        let minmax = scale_zp(-1.0, 1.6, &q);
        let mse = mse_scale_zp(&w, &q);
        assert!(mse.scale < minmax.scale, "{mse:?} vs {minmax:?}");
        assert_eq!(mse.zero_point, 0);
        let err = |p: &ScaleZp| -> f64 {
            w.iter()
                .map(|&v| {
                    let r = (v / p.scale).round_ties_even().clamp(-7.0, 7.0);
                    ((v - r * p.scale) as f64).powi(2)
                })
                .sum()
        };
        assert!(err(&mse) < err(&minmax));
        // Never worse than 0.5 x the range: the search stops there.
        assert!(mse.scale >= minmax.scale * 0.5 * (1.0 - 1e-6));
    }

    #[test]
    fn mse_weight_range_keeps_a_uniform_tensor_whole() {
        // Evenly spread values: clipping only adds error, so min/max wins (ties keep it).
        let w: Vec<f32> = (0..=254).map(|i| (i as f32 - 127.0) / 127.0).collect();
        let q = QType::new(DType::I8, true, false).unwrap();
        assert_eq!(mse_scale_zp(&w, &q), scale_zp(-1.0, 1.0, &q));
    }

    #[test]
    fn uint8_asymmetric_matches_hand_computation() {
        // range [-1, 3] on [0, 255]: scale = 4/255, zp = round(0 + 1/(4/255)) = round(63.75) = 64
        let q = QType::new(DType::U8, false, false).unwrap();
        let p = scale_zp(-1.0, 3.0, &q);
        assert_eq!(p.scale, (4.0f64 / 255.0) as f32);
        assert_eq!(p.zero_point, 64);
    }

    #[test]
    fn zero_is_always_in_range() {
        // a post-ReLU-like range [2, 6] becomes [0, 6]: zp = 0
        let q = QType::new(DType::U8, false, false).unwrap();
        let p = scale_zp(2.0, 6.0, &q);
        assert_eq!(p.zero_point, 0);
        assert_eq!(p.scale, (6.0f64 / 255.0) as f32);
        // an all-negative range [-6, -2] becomes [-6, 0]: zp = 255
        assert_eq!(scale_zp(-6.0, -2.0, &q).zero_point, 255);
    }

    #[test]
    fn int8_symmetric_uses_narrow_range() {
        let q = QType::new(DType::I8, true, false).unwrap();
        assert_eq!((q.qmin, q.qmax), (-127, 127));
        // [-0.5, 2.54] → a = 2.54, scale = 5.08 / 254 = 0.02, zp = 0
        let p = scale_zp(-0.5, 2.54, &q);
        assert_eq!(p.zero_point, 0);
        assert_eq!(p.scale, (2.54f32 as f64 * 2.0 / 254.0) as f32);
    }

    #[test]
    fn reduce_range_and_16_bit() {
        assert_eq!(
            QType::new(DType::U8, false, true).map(|q| (q.qmin, q.qmax)),
            Some((0, 127))
        );
        let q = QType::new(DType::I16, true, false).unwrap();
        assert_eq!((q.qmin, q.qmax), (-32767, 32767));
        let q = QType::new(DType::U16, false, false).unwrap();
        let p = scale_zp(-1.0, 1.0, &q);
        // scale = 2/65535, zp = round(1/(2/65535)) = round(32767.5) = 32768 (half to even)
        assert_eq!(p.zero_point, 32768);
    }

    #[test]
    fn degenerate_range() {
        let q = QType::new(DType::U8, false, false).unwrap();
        assert_eq!(
            scale_zp(0.0, 0.0, &q),
            ScaleZp {
                scale: 1.0,
                zero_point: 0
            }
        );
        let q = QType::new(DType::I8, true, false).unwrap();
        assert_eq!(scale_zp(0.0, 0.0, &q).zero_point, 0);
    }

    #[test]
    fn bias_is_int32_and_saturates() {
        let (q, clipped) = quantize_bias(&[0.5, -0.25, 1e10], &[0.01, 0.01, 1e-3]);
        assert_eq!(q[0], 50);
        assert_eq!(q[1], -25);
        assert_eq!(q[2], i32::MAX);
        assert_eq!(clipped, 1);
    }
}
