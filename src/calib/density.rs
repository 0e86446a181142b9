//! The piecewise-uniform reading of a histogram, and the expected quantization MSE measure.
//!
//! A [`Density`] is a sorted list of [`Segment`]s: each non-empty histogram bin, clipped to the
//! observed `[min, max]`, with its count spread uniformly over it; a segment of zero width
//! is a point mass (exact zeros always are one, at 0; so is a bin that clipping reduces
//! to a single value, e.g. when every value is equal).
//!
//! ## Expected quantization MSE
//! For a range `[lo, hi]` and a target grid, [`Grid::new`] computes scale and zero point
//! exactly as the quantizer does ([`crate::quant::params::scale_zp`], ONNX Runtime's
//! `compute_scale_zp`: include 0, symmetrize if asked, scale `(hi - lo)/(qmax - qmin)` in f64
//! stored as f32, zero point rounded half to even; a test pins the two together). The representable
//! values are `s·k` for integers `k ∈ [qmin - zp, qmax - zp]`, spanning `[L, U]`.
//! [`expected_mse`] is then the mean over all finite values of
//! - `(x - s·round(x/s))²` for `x ∈ [L, U]` (rounding noise), integrated exactly over each
//!   uniform segment (the sawtooth integral, not the `s²/12` approximation: it stays right
//!   for mass concentrated within one step, such as near-zero activations),
//! - `(x - U)²` above `U` and `(x - L)²` below `L` (clipping error).
//!
//! Every method's candidate is scored with this one function, so `auto` compares like with like.

use super::stats::TensorStats;
use super::QuantTarget;

/// A count spread uniformly over `[lo, hi]` (a point mass when `lo == hi`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    pub lo: f64,
    pub hi: f64,
    pub count: f64,
}

/// A piecewise-uniform distribution (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Density {
    /// Ascending, non-overlapping, all with positive count.
    pub segments: Vec<Segment>,
    /// Total count (all finite values).
    pub total: f64,
    /// Smallest and largest value (ends of the support).
    pub min: f64,
    pub max: f64,
}

impl Density {
    /// A density from segments (sorted by the caller); `None` when the total count is 0.
    pub fn from_segments(segments: Vec<Segment>) -> Option<Density> {
        let segments: Vec<Segment> = segments.into_iter().filter(|s| s.count > 0.0).collect();
        let total: f64 = segments.iter().map(|s| s.count).sum();
        if total <= 0.0 {
            return None;
        }
        let min = segments.first()?.lo;
        let max = segments.last()?.hi;
        Some(Density {
            segments,
            total,
            min,
            max,
        })
    }

    /// The signed distribution of a tensor's finite values (`None` when there are none).
    pub fn signed(stats: &TensorStats) -> Option<Density> {
        let (min, max) = (stats.min()? as f64, stats.max()? as f64);
        let h = stats.histogram();
        let w = h.width();
        let mut segs = Vec::with_capacity(h.neg().len() + h.pos().len() + 1);
        for (j, &c) in h.neg().iter().enumerate().rev() {
            if c > 0 {
                let lo = (-(j as f64 + 1.0) * w).max(min);
                let hi = (-(j as f64) * w).min(max);
                segs.push(Segment {
                    lo,
                    hi,
                    count: c as f64,
                });
            }
        }
        segs.push(Segment {
            lo: 0.0,
            hi: 0.0,
            count: stats.zeros() as f64,
        });
        for (i, &c) in h.pos().iter().enumerate() {
            if c > 0 {
                let lo = (i as f64 * w).max(min);
                let hi = ((i as f64 + 1.0) * w).min(max);
                segs.push(Segment {
                    lo,
                    hi,
                    count: c as f64,
                });
            }
        }
        Density::from_segments(segs)
    }

    /// The distribution of |x|: exact zeros as a point mass at 0, then bin `i` of both sides
    /// together over `[i·w, min((i+1)·w, absmax)]`.
    pub fn abs(stats: &TensorStats) -> Option<Density> {
        stats.min()?;
        let abs_max = stats.abs_max() as f64;
        let h = stats.histogram();
        let w = h.width();
        let n = h.pos().len().max(h.neg().len());
        let mut segs = Vec::with_capacity(n + 1);
        segs.push(Segment {
            lo: 0.0,
            hi: 0.0,
            count: stats.zeros() as f64,
        });
        for i in 0..n {
            let c = h.pos().get(i).copied().unwrap_or(0) + h.neg().get(i).copied().unwrap_or(0);
            if c > 0 {
                segs.push(Segment {
                    lo: (i as f64 * w).min(abs_max),
                    hi: ((i as f64 + 1.0) * w).min(abs_max),
                    count: c as f64,
                });
            }
        }
        Density::from_segments(segs)
    }

    /// Smallest `t` such that the mass at or below `t` is at least `fraction` of the total,
    /// interpolating linearly inside segments; clamped to `[min, max]`.
    pub fn quantile(&self, fraction: f64) -> f64 {
        let target = fraction * self.total;
        if target <= 0.0 {
            return self.min;
        }
        let mut cum = 0.0;
        for s in &self.segments {
            if cum + s.count >= target {
                if s.hi == s.lo {
                    return s.lo;
                }
                let t = s.lo + (s.hi - s.lo) * ((target - cum) / s.count);
                return t.clamp(s.lo, s.hi);
            }
            cum += s.count;
        }
        self.max
    }

    /// Spreads the mass of `[lo, hi]` over `n` equal bins (point masses go to the bin holding
    /// them, the value `hi` to the last bin); mass outside `[lo, hi]` is ignored.
    /// `skip_zero_mass` leaves out the point mass at 0.
    pub fn rebin(&self, n: usize, lo: f64, hi: f64, skip_zero_mass: bool) -> Vec<f64> {
        let mut out = vec![0.0; n];
        if n == 0 || hi <= lo {
            return out;
        }
        let width = (hi - lo) / n as f64;
        let bin_of = |x: f64| (((x - lo) / width).floor().max(0.0) as usize).min(n - 1);
        for s in &self.segments {
            if s.lo == s.hi {
                if (skip_zero_mass && s.lo == 0.0) || s.lo < lo || s.lo > hi {
                    continue;
                }
                out[bin_of(s.lo)] += s.count;
                continue;
            }
            let a = s.lo.max(lo);
            let b = s.hi.min(hi);
            if b <= a {
                continue;
            }
            let density = s.count / (s.hi - s.lo);
            let (first, last) = (bin_of(a), bin_of(b));
            for (j, slot) in out.iter_mut().enumerate().take(last + 1).skip(first) {
                let bin_lo = lo + j as f64 * width;
                let bin_hi = if j == n - 1 { hi } else { bin_lo + width };
                let overlap = b.min(bin_hi) - a.max(bin_lo);
                if overlap > 0.0 {
                    *slot += density * overlap;
                }
            }
        }
        out
    }
}

/// Round half to even, as ONNX and numpy do.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// The quantization grid a range maps to (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    /// Scale as the quantizer stores it (rounded to f32), widened to f64.
    pub scale: f64,
    pub zero_point: i64,
    /// Smallest and largest representable value, `(qmin - zp)·s` and `(qmax - zp)·s`.
    pub lo: f64,
    pub hi: f64,
}

impl Grid {
    /// The grid for calibration range `[lo, hi]` on `target`.
    pub fn new(lo: f64, hi: f64, target: &QuantTarget) -> Grid {
        let (qmin, qmax) = (target.qmin as f64, target.qmax as f64);
        let mut lo = lo.min(0.0);
        let mut hi = hi.max(0.0);
        if target.symmetric {
            let a = lo.abs().max(hi.abs());
            lo = -a;
            hi = a;
        }
        let scale = ((hi - lo) / (qmax - qmin)) as f32;
        let mid = round_half_even((qmin + qmax) / 2.0);
        let (scale, zp) = if scale < f32::MIN_POSITIVE || scale.is_nan() {
            (1.0, if target.symmetric { mid } else { 0.0 })
        } else if target.symmetric {
            (scale, mid)
        } else {
            let s = scale as f64;
            (scale, round_half_even(qmin - lo / s).clamp(qmin, qmax))
        };
        let s = scale as f64;
        Grid {
            scale: s,
            zero_point: zp as i64,
            lo: (qmin - zp) * s,
            hi: (qmax - zp) * s,
        }
    }

    /// Squared error of quantizing the single value `x`.
    pub fn point_error(&self, x: f64) -> f64 {
        let e = if x < self.lo {
            x - self.lo
        } else if x > self.hi {
            x - self.hi
        } else {
            x - self.scale * round_half_even(x / self.scale)
        };
        e * e
    }

    /// ∫ over `[a, b]` of the squared error (unit density).
    pub fn integrated_error(&self, a: f64, b: f64) -> f64 {
        let (l, u, s) = (self.lo, self.hi, self.scale);
        let mut total = 0.0;
        if a < l {
            let top = b.min(l);
            total += ((l - a).powi(3) - (l - top).powi(3)) / 3.0;
        }
        if b > u {
            let bottom = a.max(u);
            total += ((b - u).powi(3) - (bottom - u).powi(3)) / 3.0;
        }
        let (ia, ib) = (a.max(l), b.min(u));
        if ib > ia {
            total += s * s * s * sawtooth_integral(ia / s, ib / s);
        }
        total
    }
}

/// ∫_{ua}^{ub} (t - round(t))² dt. Over each unit period the integral is 1/12; within a
/// period, h(f) = ∫_0^f (t - round t)² dt = f³/3 for f ≤ 1/2 and 1/12 + (f - 1)³/3 above.
pub fn sawtooth_integral(ua: f64, ub: f64) -> f64 {
    fn h(f: f64) -> f64 {
        if f <= 0.5 {
            f * f * f / 3.0
        } else {
            let g = f - 1.0;
            1.0 / 12.0 + g * g * g / 3.0
        }
    }
    let (na, nb) = (ua.floor(), ub.floor());
    (nb - na) / 12.0 + h(ub - nb) - h(ua - na)
}

/// Expected squared quantization error per value of `d` on grid `g` (see the module doc).
pub fn expected_mse(d: &Density, g: &Grid) -> f64 {
    let mut total = 0.0;
    for s in &d.segments {
        total += if s.hi > s.lo {
            s.count * g.integrated_error(s.lo, s.hi) / (s.hi - s.lo)
        } else {
            s.count * g.point_error(s.lo)
        };
    }
    total / d.total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(lo: f64, hi: f64, count: f64) -> Segment {
        Segment { lo, hi, count }
    }

    fn target(qmin: i64, qmax: i64, symmetric: bool) -> QuantTarget {
        QuantTarget::new(qmin, qmax, symmetric).unwrap()
    }

    #[test]
    fn grids_follow_the_reference_formula() {
        // uint8 asymmetric [-1, 3]: s = 4/255, zp = round(0 + 1/(4/255)) = round(63.75) = 64.
        let g = Grid::new(-1.0, 3.0, &target(0, 255, false));
        assert_eq!(g.scale, (4.0f64 / 255.0) as f32 as f64);
        assert_eq!(g.zero_point, 64);
        // (the scale is rounded to f32, so the ends match to ~1e-7 relative)
        assert!((g.lo - -64.0 * 4.0 / 255.0).abs() < 1e-6);
        assert!((g.hi - 191.0 * 4.0 / 255.0).abs() < 1e-6);
        // int8 symmetric [-127, 127] on [-0.5, 2]: a = 2, s = 4/254, zp = 0, [L, U] = [-2, 2].
        let g = Grid::new(-0.5, 2.0, &target(-127, 127, true));
        assert_eq!(g.zero_point, 0);
        assert!((g.hi - 2.0).abs() < 1e-7 && (g.lo + 2.0).abs() < 1e-7);
        // uint8 symmetric: zp = round_half_even(127.5) = 128.
        assert_eq!(Grid::new(-1.0, 1.0, &target(0, 255, true)).zero_point, 128);
        // Positive-only range on uint8: range [0, 2] (zero included), zp 0.
        let g = Grid::new(0.5, 2.0, &target(0, 255, false));
        assert_eq!((g.zero_point, g.lo), (0, 0.0));
        // Degenerate range: scale 1, zp 0.
        let g = Grid::new(0.0, 0.0, &target(-128, 127, false));
        assert_eq!((g.scale, g.zero_point), (1.0, 0));
        let g = Grid::new(0.0, 0.0, &target(0, 255, true));
        assert_eq!((g.scale, g.zero_point), (1.0, 128));
    }

    #[test]
    fn grid_agrees_with_the_quantizer() {
        use crate::ir::DType;
        use crate::quant::params::{scale_zp, QType};
        let ranges = [
            (-1.0f32, 3.0f32),
            (0.5, 2.0),
            (-6.0, -2.0),
            (-0.3, 0.7),
            (0.0, 0.0),
            (-1e-39, 1e-39),
            (-123.456, 0.001),
            (-2.54, 0.5),
        ];
        for dtype in [
            DType::U8,
            DType::I8,
            DType::U16,
            DType::I16,
            DType::I4,
            DType::U4,
        ] {
            for symmetric in [false, true] {
                for reduce in [false, true] {
                    let q = QType::new(dtype, symmetric, reduce).unwrap();
                    let t = QuantTarget::from(q);
                    for &(lo, hi) in &ranges {
                        let p = scale_zp(lo, hi, &q);
                        let g = Grid::new(lo as f64, hi as f64, &t);
                        assert_eq!(
                            (g.scale, g.zero_point),
                            (p.scale as f64, p.zero_point),
                            "{dtype} {symmetric} [{lo}, {hi}]"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn round_half_even_cases() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-2.5), -2.0);
        assert_eq!(round_half_even(-0.4), 0.0);
        assert_eq!(round_half_even(63.75), 64.0);
    }

    #[test]
    fn sawtooth_hand_values() {
        // A full period: 1/12.
        assert!((sawtooth_integral(0.0, 1.0) - 1.0 / 12.0).abs() < 1e-15);
        // [0, 1/2]: ∫ t² = 1/24.
        assert!((sawtooth_integral(0.0, 0.5) - 1.0 / 24.0).abs() < 1e-15);
        // [0.25, 0.75]: ∫_{.25}^{.5} t² + ∫_{.5}^{.75} (t-1)² = 2·(1/24 - 1/192) = 7/96.
        assert!((sawtooth_integral(0.25, 0.75) - 7.0 / 96.0).abs() < 1e-15);
        // Shift invariance and negatives: [-3.25, -2.75] = [0.75, 1.25] = 2·∫_0^{1/4} t² = 1/96.
        assert!((sawtooth_integral(-3.25, -2.75) - 1.0 / 96.0).abs() < 1e-15);
        assert!((sawtooth_integral(0.0, 7.5) - (7.0 / 12.0 + 1.0 / 24.0)).abs() < 1e-14);
    }

    #[test]
    fn expected_mse_hand_computed() {
        // Grid: symmetric int8 on [-127, 127] with a = 127 → s = 1, [L, U] = [-127, 127].
        let t = target(-127, 127, true);
        let g = Grid::new(-127.0, 127.0, &t);
        assert_eq!(g.scale, 1.0);
        // Mass: 2 at 0 (error 0), 1 point at 0.25 (error 1/16), 1 point at 130 (clipped by 3:
        // error 9), 4 spread over [0, 10] (sawtooth: 10 periods → 4 · 1/12 on average),
        // 2 spread over [126, 129]: ∫_{126}^{127} sawtooth = 1/12, ∫_{127}^{129} (x-127)² = 8/3;
        // density 2/3 → (2/3)(1/12 + 8/3).
        let d = Density::from_segments(vec![
            seg(0.0, 0.0, 2.0),
            seg(0.0, 10.0, 4.0),
            seg(0.25, 0.25, 1.0),
            seg(126.0, 129.0, 2.0),
            seg(130.0, 130.0, 1.0),
        ])
        .unwrap();
        let expected =
            (0.0 + 4.0 / 12.0 + 1.0 / 16.0 + (2.0 / 3.0) * (1.0 / 12.0 + 8.0 / 3.0) + 9.0) / 10.0;
        assert!(
            (expected_mse(&d, &g) - expected).abs() < 1e-12,
            "{}",
            expected_mse(&d, &g)
        );
        // Clipping below: uniform over [-130, -127] (count 3): ∫ (x+127)² over 3 = 9 → mean 3.
        let below = Density::from_segments(vec![seg(-130.0, -127.0, 3.0)]).unwrap();
        assert!((expected_mse(&below, &g) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn quantile_and_rebin() {
        // 1 at 0 (point), 4 over [0, 4], 5 over [4, 5].
        let d = Density::from_segments(vec![
            seg(0.0, 0.0, 1.0),
            seg(0.0, 4.0, 4.0),
            seg(4.0, 5.0, 5.0),
        ])
        .unwrap();
        assert_eq!(d.quantile(0.05), 0.0); // inside the point mass
        assert_eq!(d.quantile(0.3), 2.0); // 3 of 10: 1 + 2 from the first segment → t = 2
        assert_eq!(d.quantile(0.9), 4.8); // 9 of 10: 5 + 4 of 5 over [4, 5] → 4.8
        assert_eq!(d.quantile(1.0), 5.0);
        // Rebin [0, 5] into 2 bins of 2.5: bin 0 = 2.5 of the 4 (point at 0 skipped), bin 1 = 1.5 + 5.
        assert_eq!(d.rebin(2, 0.0, 5.0, true), vec![2.5, 6.5]);
        assert_eq!(d.rebin(2, 0.0, 5.0, false), vec![3.5, 6.5]);
    }

    #[test]
    fn densities_from_stats() {
        let mut s = TensorStats::new();
        // abs-max 3000 → k = 0 (w = 1).
        s.observe(&[-3000.0, -0.5, 0.0, 1.5, 1.75, 2.0]);
        let d = Density::signed(&s).unwrap();
        assert_eq!(
            d.segments,
            vec![
                seg(-3000.0, -3000.0, 1.0), // bin (-3001, -3000] clipped to min: a point
                seg(-1.0, 0.0, 1.0),
                seg(0.0, 0.0, 1.0),
                seg(1.0, 2.0, 2.0),
                seg(2.0, 2.0, 1.0), // bin [2, 3) clipped to max = 2: a point mass
            ]
        );
        let a = Density::abs(&s).unwrap();
        assert_eq!(a.segments[0], seg(0.0, 0.0, 1.0));
        assert_eq!(a.segments[1], seg(0.0, 1.0, 1.0));
        assert_eq!(a.segments[2], seg(1.0, 2.0, 2.0));
        assert_eq!(a.segments.last(), Some(&seg(3000.0, 3000.0, 1.0)));
        assert_eq!(a.total, 6.0);
    }
}
