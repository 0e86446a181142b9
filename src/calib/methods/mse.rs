//! `mse`: the range minimising the expected quantization MSE
//! ([`crate::calib::density::expected_mse`]: rounding noise inside plus clipping error
//! outside, on the real grid the range maps to) for the given integer grid.
//!
//! ## Search
//! Ranges are searched as fractions of the data's extent, `f ∈ (0, 1]`:
//! - symmetric target: `[-f·a, f·a]`, `a` the abs-max;
//! - asymmetric target, one-sided data: `[0, f·max]` or `[f·min, 0]`;
//! - asymmetric target, two-sided data: `[α·min, β·max]`, by coordinate descent: starting at
//!   `α = β = 1`, alternately the best `β` for the current `α` and the best `α` for that `β`,
//!   until neither changes (at most [`MAX_ROUNDS`] rounds; a round never increases the score, so
//!   stopping early only returns the best range found so far).
//!
//! Each one-dimensional search scores `f = j/128` (`j = 1..=128`, the linear span) and
//! `f = 2^(-m/8)` (`m = 1..=96`, down to 2^-12 of the extent: heavy tails put the optimum far
//! below 1/128), plus the current value, then 63 evenly spaced points between the best
//! candidate's neighbours. Ties go to the larger range. `f = 1` is always a candidate, so the
//! result is never worse than `minmax` under the measure.

use super::{finish, score, Views};
use crate::calib::{Method, QuantTarget, Range};

/// Cap on coordinate-descent rounds (a search budget, see the module doc).
pub const MAX_ROUNDS: usize = 8;

fn coarse_fractions() -> Vec<f64> {
    let mut f: Vec<f64> = (1..=128).map(|j| j as f64 / 128.0).collect();
    f.extend((1..=96).map(|m| (-(m as f64) / 8.0).exp2()));
    f.sort_by(f64::total_cmp);
    f.dedup();
    f
}

/// Minimises `eval` over fractions in (0, 1] (see the module doc); returns (f, score).
pub fn search_fraction(eval: impl Fn(f64) -> f64, current: Option<f64>) -> (f64, f64) {
    let mut cands = coarse_fractions();
    if let Some(c) = current {
        cands.push(c);
        cands.sort_by(f64::total_cmp);
        cands.dedup();
    }
    let scores: Vec<f64> = cands.iter().map(|&f| eval(f)).collect();
    let mut b = 0;
    for (k, &s) in scores.iter().enumerate() {
        if s <= scores[b] {
            b = k;
        }
    }
    let mut best = (cands[b], scores[b]);
    let lower = if b > 0 { cands[b - 1] } else { 0.0 };
    let upper = cands.get(b + 1).copied().unwrap_or(1.0);
    for k in 1..64 {
        let f = lower + (upper - lower) * k as f64 / 64.0;
        if f <= 0.0 || f > 1.0 {
            continue;
        }
        let s = eval(f);
        if s < best.1 || (s == best.1 && f > best.0) {
            best = (f, s);
        }
    }
    best
}

/// The MSE-optimal range of `views` on `target`.
pub fn range(views: &Views, target: &QuantTarget) -> Range {
    let (min, max, a) = (views.min(), views.max(), views.abs_max());
    let (lo, hi) = if a == 0.0 {
        (0.0, 0.0)
    } else if target.symmetric {
        let (f, _) = search_fraction(|f| score(views, -f * a, f * a, target), None);
        (-f * a, f * a)
    } else if min >= 0.0 {
        let (f, _) = search_fraction(|f| score(views, 0.0, f * max, target), None);
        (0.0, f * max)
    } else if max <= 0.0 {
        let (f, _) = search_fraction(|f| score(views, f * min, 0.0, target), None);
        (f * min, 0.0)
    } else {
        let (mut alpha, mut beta) = (1.0, 1.0);
        for _ in 0..MAX_ROUNDS {
            let (b, _) =
                search_fraction(|f| score(views, alpha * min, f * max, target), Some(beta));
            let (al, _) = search_fraction(|f| score(views, f * min, b * max, target), Some(alpha));
            let done = b == beta && al == alpha;
            (alpha, beta) = (al, b);
            if done {
                break;
            }
        }
        (alpha * min, beta * max)
    };
    finish(views, lo, hi, Method::Mse, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::density::{expected_mse, Density, Grid, Segment};
    use crate::calib::TensorStats;

    fn views_from(segments: Vec<Segment>) -> Views {
        let signed = Density::from_segments(segments.clone()).unwrap();
        // |x| view is not used by `mse`.
        Views {
            abs: signed.clone(),
            signed,
        }
    }

    #[test]
    fn uniform_symmetric_hand_computed() {
        // Uniform on [-1, 1], int8 symmetric [-127, 127]. For a clip a: s = a/127; the grid
        // [-a, a] spans exactly 254 rounding cells, so the noise inside is s²/12 on the mass
        // 2a (density 1, total 2); clipping costs 2·∫_a^1 (x-a)² = 2(1-a)³/3.
        // MSE(a) = [2a·a²/(12·127²) + 2(1-a)³/3] / 2; d/da = 0 ⇔ a²/(4·127²) = (1-a)²
        // ⇔ 1 - a = a/254 ⇔ a* = 254/255 ≈ 0.996078. The refined grid step near 1 is
        // (1/128)/64 = 2^-13, so the search lands within 2^-13 of a*.
        let v = views_from(vec![
            Segment {
                lo: -1.0,
                hi: 0.0,
                count: 1.0,
            },
            Segment {
                lo: 0.0,
                hi: 1.0,
                count: 1.0,
            },
        ]);
        let t = QuantTarget::new(-127, 127, true).unwrap();
        let r = range(&v, &t);
        let a_star = 254.0 / 255.0;
        assert!((r.hi as f64 - a_star).abs() <= 2f64.powi(-13), "{r:?}");
        assert_eq!(r.lo, -r.hi);
        let mse = |a: f64| {
            (2.0 * a * a * a / (12.0 * 127.0 * 127.0) + 2.0 * (1.0 - a).powi(3) / 3.0) / 2.0
        };
        assert!((r.expected_mse - mse(a_star)).abs() < 1e-3 * mse(a_star));
        // Better than min/max (a = 1) by the measure.
        assert!(r.expected_mse < mse(1.0));
    }

    #[test]
    fn uniform_one_sided_hand_computed() {
        // Uniform on [0, 1], uint8 [0, 255]: lo = 0, s = h/255, zp = 0, grid [0, h].
        // MSE(h) = h·s²/12 + (1-h)³/3 → h²/(4·255²) = (1-h)² → 1 - h = h/510 → h* = 510/511.
        let v = views_from(vec![Segment {
            lo: 0.0,
            hi: 1.0,
            count: 1.0,
        }]);
        let r = range(&v, &QuantTarget::new(0, 255, false).unwrap());
        assert_eq!(r.lo, 0.0);
        assert!(
            (r.hi as f64 - 510.0 / 511.0).abs() <= 2f64.powi(-13),
            "{r:?}"
        );
    }

    #[test]
    fn uniform_two_sided_reaches_the_relaxed_optimum() {
        // Uniform on [-1, 2] (density 1/3), uint8 [0, 255]. Ignoring that the zero point is an
        // integer, a grid [-α, β] with s = (α+β)/255 costs
        //   [(α+β)·s²/12 + (1-α)³/3 + (2-β)³/3] / 3.
        // Stationary: 1-α = 2-β = d and (α+β)/510 = d with α+β = 3-2d → d = 3/512, s = 2d,
        // minimum = [510d·4d²/12 + 2d³/3]/3 = 512d³/9 = 3/512² ≈ 1.1444e-5.
        // With an integer zero point, every real grid is one of these [L, U] with the measure
        // equal to this formula, so the minimum is a lower bound the search must approach.
        let v = views_from(vec![
            Segment {
                lo: -1.0,
                hi: 0.0,
                count: 1.0,
            },
            Segment {
                lo: 0.0,
                hi: 2.0,
                count: 2.0,
            },
        ]);
        let t = QuantTarget::new(0, 255, false).unwrap();
        let r = range(&v, &t);
        let bound = 3.0 / (512.0f64 * 512.0);
        assert!(r.expected_mse >= bound * (1.0 - 1e-9), "{r:?}");
        assert!(r.expected_mse <= bound * 1.02, "{r:?} vs {bound}");
        // Never worse than min/max [-1, 2] (no clipping, s = 3/255: (3/255)²/12 ≈ 1.1534e-5).
        let g = Grid::new(-1.0, 2.0, &t);
        assert!(r.expected_mse <= expected_mse(&v.signed, &g));
    }

    #[test]
    fn laplace_on_a_4_bit_grid() {
        // Laplace(b = 1) quantiles (20 000 per side, max ≈ 10.6) on int4 symmetric [-7, 7].
        // With s = α/7 and the s²/12 noise approximation, the expected MSE is
        //   2·e^{-α} (clipping) + α²(1 - e^{-α})/588 (noise), minimal at α ≈ 4.80.
        // The measure integrates the rounding error exactly (smaller than s²/12 where the
        // density is peaked), so its optimum is near, not at, 4.80: within 15 %.
        let n = 20_000;
        let mut vals = Vec::with_capacity(2 * n);
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64;
            let x = -(1.0 - u).ln() as f32;
            vals.push(x);
            vals.push(-x);
        }
        let mut s = TensorStats::new();
        s.observe(&vals);
        let v = Views::new("t", &s).unwrap();
        let t = QuantTarget::new(-7, 7, true).unwrap();
        let r = range(&v, &t);
        assert!((r.hi as f64 - 4.80).abs() < 0.15 * 4.80, "{r:?}");
        // Never worse than min/max, and a local minimum of the measure.
        let at = |a: f64| score(&v, -a, a, &t);
        assert!(r.expected_mse <= at(v.abs_max()));
        for k in [0.97, 0.99, 1.01, 1.03] {
            assert!(r.expected_mse <= at(r.hi as f64 * k), "{k}");
        }
    }

    #[test]
    fn all_zero_tensor() {
        let mut s = TensorStats::new();
        s.observe(&[0.0, 0.0]);
        let r = range(
            &Views::new("t", &s).unwrap(),
            &QuantTarget::new(0, 255, false).unwrap(),
        );
        assert_eq!((r.lo, r.hi, r.expected_mse), (0.0, 0.0, 0.0));
    }
}
