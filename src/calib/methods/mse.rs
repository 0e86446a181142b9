//! `mse`: the range minimising the expected quantization MSE
//! ([`crate::calib::density::expected_mse`]: rounding noise inside plus clipping error
//! outside, on the real grid the range maps to) for the given integer grid.
//!
//! ## Search
//! - Symmetric target: `[-f·a, f·a]`, `a` the abs-max, over fractions `f ∈ (0, 1]`.
//! - Asymmetric target, one-sided data: `[0, f·max]` or `[f·min, 0]`.
//! - Asymmetric target, two-sided data: what a range decides is a scale `s` and an integer
//!   zero point `z` (the grid `(q - z)·s`, `q ∈ [qmin, qmax]`). The search runs over
//!   `s = f·s₁`, `s₁ = (max - min)/(qmax - qmin)` the min/max scale, and for each `s` takes
//!   the best of the zero points some range inside `[min, max]` holding 0 gives (every grid
//!   with a window `[L, U] = [(qmin - z)·s, (qmax - z)·s]` between `[min, 0]` and `[0, max]`):
//!   the score is unimodal in `z` (the clipping error is convex in each end, and moving the
//!   window one step changes the noise only at its ends; checked on every tensor of two real
//!   models), so a bisection on the sign of `score(z + 1) - score(z)` finds it in
//!   `2·log2(levels)` scores, each costing two binary searches and prefix sums
//!   ([`WindowScorer`]). The range returned is that window, clamped to `[min, max]`.
//!
//! A one-dimensional search over `f` scores the coarse fractions `f = j/128` (`j = 1..=128`, the
//! linear span) and `f = 2^(-m/4)` (`m = 1..=48`, down to 2^-12 of the extent: heavy tails put
//! the optimum far below 1/128). Then it refines around each of the [`STARTS`] best local
//! minima of that scan (the score of real histograms is rugged at the scale of one grid step:
//! heavy bins fall near or between grid points as `f` moves, so the best coarse point is not
//! always in the best basin): [`ZOOM_ROUNDS`] times, the [`ZOOM_POINTS`] evenly spaced points
//! strictly between the best point's nearest scored neighbours. Near `f = 1` the coarse step is
//! 2^-7 and the bracket around the best shrinks to `2/(Z+1)` of itself per round, so the last
//! step is `2^-6·2³/7⁴ ≈ 2^-14.2`. Ties go to the larger range.
//!
//! ## Density
//! The search scores ranges on [`Density::coarsened`] with at most [`SEARCH_BINS`] buckets per
//! side, merging runs of canonical bins only where spreading them evenly moves at most
//! 1/[`SEARCH_SHARE`] of the values: smooth stretches merge into whole buckets, while spikes
//! (constant image regions, clipped activations: what makes the score rugged, by where they
//! fall against the grid steps) keep their own bins. A score costs 3–10 times less than on the
//! full histogram. The result and the min/max range (`f = 1`) are then scored on the full
//! density and the better one is returned, so the result is never worse than `minmax` under
//! the measure, and its score is the one `auto` compares.

use super::{final_bounds, finish, Views};
use crate::calib::density::{round_half_even, Density, Grid, Scorer, WindowScorer};
use crate::calib::{Method, QuantTarget, Range};
use std::cell::RefCell;

/// Buckets per side of the density the search runs on.
pub const SEARCH_BINS: usize = 512;

/// A merged segment of the search density moves at most `1/SEARCH_SHARE` of the values.
pub const SEARCH_SHARE: f64 = 4096.0;

/// Local minima of the coarse scan that are refined.
pub const STARTS: usize = 3;

/// Refinement rounds per start.
pub const ZOOM_ROUNDS: usize = 4;

/// Points scored per refinement round.
pub const ZOOM_POINTS: usize = 6;

/// The coarse fractions, ascending.
fn coarse_fractions() -> Vec<f64> {
    let mut f: Vec<f64> = (1..=128).map(|j| j as f64 / 128.0).collect();
    f.extend((1..=48).map(|m| (-(m as f64) / 4.0).exp2()));
    f.sort_by(f64::total_cmp);
    f.dedup();
    f
}

/// `a` is better than `b`: lower score, or equal score and larger fraction.
fn better(a: (f64, f64), b: (f64, f64)) -> bool {
    a.1 < b.1 || (a.1 == b.1 && a.0 > b.0)
}

/// The index of the best of `pts`.
fn best_index(pts: &[(f64, f64)]) -> usize {
    let mut b = 0;
    for (k, &p) in pts.iter().enumerate() {
        if better(p, pts[b]) {
            b = k;
        }
    }
    b
}

/// Refines around `pts[j]` (`pts` scored, ascending by fraction): [`ZOOM_ROUNDS`] times,
/// scores [`ZOOM_POINTS`] evenly spaced points strictly between the best point's nearest
/// scored neighbours (0 below the smallest). Returns the best point seen.
fn zoom(eval: &impl Fn(f64) -> f64, pts: &[(f64, f64)], j: usize) -> (f64, f64) {
    let mut local: Vec<(f64, f64)> = pts[j.saturating_sub(1)..(j + 2).min(pts.len())].to_vec();
    for _ in 0..ZOOM_ROUNDS {
        let b = best_index(&local);
        let lower = if b > 0 { local[b - 1].0 } else { 0.0 };
        let upper = local.get(b + 1).map_or(local[b].0, |p| p.0);
        let before = local.len();
        for k in 1..=ZOOM_POINTS {
            let f = lower + (upper - lower) * k as f64 / (ZOOM_POINTS + 1) as f64;
            if f > 0.0 && f <= 1.0 && local.iter().all(|p| p.0 != f) {
                local.push((f, eval(f)));
            }
        }
        if local.len() == before {
            break;
        }
        local.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    local[best_index(&local)]
}

/// Minimises `eval` over fractions in (0, 1] (see the module doc); returns (f, score).
pub fn search_fraction(eval: impl Fn(f64) -> f64) -> (f64, f64) {
    let pts: Vec<(f64, f64)> = coarse_fractions()
        .into_iter()
        .map(|f| (f, eval(f)))
        .collect();
    // Local minima of the scan, best first.
    let mut minima: Vec<usize> = (0..pts.len())
        .filter(|&j| {
            (j == 0 || !better(pts[j - 1], pts[j]))
                && (j + 1 == pts.len() || !better(pts[j + 1], pts[j]))
        })
        .collect();
    minima.sort_by(|&a, &b| {
        if better(pts[a], pts[b]) {
            std::cmp::Ordering::Less
        } else if better(pts[b], pts[a]) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    let mut best = pts[best_index(&pts)];
    for &j in minima.iter().take(STARTS) {
        let p = zoom(&eval, &pts, j);
        if better(p, best) {
            best = p;
        }
    }
    best
}

/// Two-sided data on an asymmetric target (see the module doc).
struct TwoSided<'a> {
    target: &'a QuantTarget,
    min: f64,
    max: f64,
    /// The min/max scale.
    s1: f64,
}

impl TwoSided<'_> {
    fn levels(&self) -> f64 {
        (self.target.qmax - self.target.qmin) as f64
    }

    /// The scale of fraction `f`, as the quantizer would store it (f32).
    fn scale(&self, f: f64) -> f64 {
        (f * self.s1) as f32 as f64
    }

    /// The lowest and highest `lo` of a range inside `[min, max]` holding 0 at scale `s`.
    fn lo_bounds(&self, s: f64) -> (f64, f64) {
        let span = self.levels() * s;
        (self.min.max(-span), (self.max - span).min(0.0))
    }

    /// The best zero point at scale `s` (set in `ws`) and its score.
    fn best_zero_point(&self, ws: &WindowScorer, s: f64) -> (f64, i64) {
        let (qmin, qmax) = (self.target.qmin, self.target.qmax);
        let (lo_a, lo_b) = self.lo_bounds(s);
        let zp = |lo: f64| (round_half_even(qmin as f64 - lo / s) as i64).clamp(qmin, qmax);
        let (mut a, mut b) = (zp(lo_b), zp(lo_a));
        b = b.max(a);
        let score = |z: i64| ws.expected_mse(qmin - z, qmax - z);
        // The first z whose successor does not score lower.
        while a < b {
            let mid = a + (b - a) / 2;
            if score(mid + 1) >= score(mid) {
                b = mid;
            } else {
                a = mid + 1;
            }
        }
        (score(a), a)
    }

    fn range(&self, search: &Density) -> (f64, f64) {
        let ws = RefCell::new(WindowScorer::new(search));
        let eval = |f: f64| {
            let s = self.scale(f);
            let mut ws = ws.borrow_mut();
            ws.set_scale(s);
            self.best_zero_point(&ws, s).0
        };
        let (f, _) = search_fraction(eval);
        let s = self.scale(f);
        let mut ws = ws.borrow_mut();
        ws.set_scale(s);
        let (_, z) = self.best_zero_point(&ws, s);
        let (lo_a, lo_b) = self.lo_bounds(s);
        let lo = ((self.target.qmin - z) as f64 * s).clamp(lo_a, lo_b.max(lo_a));
        (lo, lo + self.levels() * s)
    }
}

/// The MSE-optimal range of `views` on `target`.
pub fn range(views: &Views, target: &QuantTarget) -> Range {
    let (min, max, a) = (views.min(), views.max(), views.abs_max());
    let density = search_density(&views.signed);
    let (lo, hi) = if a == 0.0 {
        (0.0, 0.0)
    } else if target.symmetric || min >= 0.0 || max <= 0.0 {
        let search = Scorer::new(&density);
        let at = |lo: f64, hi: f64| {
            let (lo, hi) = final_bounds(lo, hi, target);
            search.expected_mse(&Grid::new(lo as f64, hi as f64, target))
        };
        if target.symmetric {
            let (f, _) = search_fraction(|f| at(-f * a, f * a));
            (-f * a, f * a)
        } else if min >= 0.0 {
            let (f, _) = search_fraction(|f| at(0.0, f * max));
            (0.0, f * max)
        } else {
            let (f, _) = search_fraction(|f| at(f * min, 0.0));
            (f * min, 0.0)
        }
    } else {
        let two = TwoSided {
            target,
            min,
            max,
            s1: (max - min) / (target.qmax - target.qmin) as f64,
        };
        let (lo, hi) = two.range(&density);
        views.clamp(lo, hi)
    };
    let found = finish(views, lo, hi, Method::Mse, target);
    let full = finish(views, min, max, Method::Mse, target);
    if full.expected_mse < found.expected_mse {
        full
    } else {
        found
    }
}

/// The density the search scores on (see the module doc).
pub fn search_density(signed: &Density) -> Density {
    signed.coarsened(SEARCH_BINS, signed.total / SEARCH_SHARE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::density::{expected_mse, Density, Grid, Segment};
    use crate::calib::methods::score;
    use crate::calib::TensorStats;

    fn views_from(segments: Vec<Segment>) -> Views {
        let signed = Density::from_segments(segments.clone()).unwrap();
        // |x| view is not used by `mse`.
        Views::from_densities(signed.clone(), signed)
    }

    #[test]
    fn uniform_symmetric_hand_computed() {
        // Uniform on [-1, 1], int8 symmetric [-127, 127]. For a clip a: s = a/127; the grid
        // [-a, a] spans exactly 254 rounding cells, so the noise inside is s²/12 on the mass
        // 2a (density 1, total 2); clipping costs 2·∫_a^1 (x-a)² = 2(1-a)³/3.
        // MSE(a) = [2a·a²/(12·127²) + 2(1-a)³/3] / 2; d/da = 0 ⇔ a²/(4·127²) = (1-a)²
        // ⇔ 1 - a = a/254 ⇔ a* = 254/255 ≈ 0.996078. The last refinement step near 1 is
        // about 2^-14.2 (module doc), so the search lands within 2^-13 of a*.
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

    /// Laplace-like values with scale 1 below 0 and 2.5 above, a few outliers, and spikes
    /// (2 % of the values each at a handful of points) when `spiky`.
    fn two_sided(spiky: bool) -> TensorStats {
        let n = 20_000;
        let mut vals = Vec::with_capacity(2 * n + 200);
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64;
            let x = -(1.0 - u).ln();
            vals.push(-x as f32);
            vals.push((2.5 * x) as f32);
        }
        vals.extend([-30.0f32, 41.0, 55.0]);
        if spiky {
            for p in [-1.37f32, 0.61, 2.9, 4.05] {
                vals.extend(std::iter::repeat_n(p, 800));
            }
        }
        let mut s = TensorStats::new();
        s.observe(&vals);
        s
    }

    #[test]
    fn zero_point_bisection_finds_the_best_window() {
        // The search relies on the score being unimodal in the zero point (module doc):
        // bisection agrees with trying every achievable zero point.
        for spiky in [false, true] {
            let stats = two_sided(spiky);
            let v = Views::new("t", &stats).unwrap();
            for t in [
                QuantTarget::new(0, 255, false).unwrap(),
                QuantTarget::new(-8, 7, false).unwrap(),
            ] {
                let two = TwoSided {
                    target: &t,
                    min: v.min(),
                    max: v.max(),
                    s1: (v.max() - v.min()) / (t.qmax - t.qmin) as f64,
                };
                let mut ws = WindowScorer::new(&search_density(&v.signed));
                for f in [0.02, 0.1, 0.25, 0.5, 0.9, 1.0] {
                    let s = two.scale(f);
                    ws.set_scale(s);
                    let (score, z) = two.best_zero_point(&ws, s);
                    let (lo_a, lo_b) = two.lo_bounds(s);
                    let zp = |lo: f64| round_half_even(t.qmin as f64 - lo / s) as i64;
                    let exhaustive = (zp(lo_b)..=zp(lo_a))
                        .map(|z| (ws.expected_mse(t.qmin - z, t.qmax - z), z))
                        .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a });
                    assert_eq!(
                        score, exhaustive.0,
                        "{spiky} {t:?} f {f}: z {z} vs {exhaustive:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn two_sided_search_beats_a_dense_grid_of_ranges() {
        // On two-sided data and asymmetric grids, no range of a 120 × 120 grid over
        // [min, 0] × [0, max] scores better (beyond 1e-3) than the search's result.
        for spiky in [false, true] {
            let stats = two_sided(spiky);
            let v = Views::new("t", &stats).unwrap();
            for t in [
                QuantTarget::new(0, 255, false).unwrap(),
                QuantTarget::new(-8, 7, false).unwrap(),
            ] {
                let r = range(&v, &t);
                assert!(r.lo >= v.min() as f32 && r.hi <= v.max() as f32, "{r:?}");
                let mut best = f64::INFINITY;
                for i in 1..=120 {
                    for j in 1..=120 {
                        let (lo, hi) = (v.min() * i as f64 / 120.0, v.max() * j as f64 / 120.0);
                        best = best.min(score(&v, lo, hi, &t));
                    }
                }
                assert!(
                    r.expected_mse <= best * (1.0 + 1e-3),
                    "{spiky} {t:?}: {r:?} vs grid best {best}"
                );
            }
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
