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
//!
//! ## Search densities
//! A search that scores hundreds of ranges runs on [`Density::coarsened`]: the same histogram
//! on a grid of width `W = 2^j` with at most a given number of bins per side. On the
//! canonical grid (`w = 2^k`, see [`super::stats`]) that is exact bin merging (every coarse
//! bin is a union of `2^(j-k)` canonical bins, still clipped to the observed `[min, max]`,
//! exact zeros still a point mass at 0); only the spread of mass inside a coarse bin is
//! approximated (uniform over the span of the canonical bins it merges). Final scores are
//! always taken on the full density.
//!
//! ## Cost
//! [`expected_mse`] is O(segments) and runs in the inner loop of the `mse` search, so it calls
//! no libm function: rounding uses the `2^52` addition trick ([`round_half_even`]), which is exact
//! for every `|x| < 2^52` (beyond, every f64 is already an integer), and the sawtooth integral
//! is written with the nearest integer instead of `floor` (the two forms are equal, see
//! [`sawtooth_integral`]). Baseline x86-64 has no rounding instruction (SSE4.1), so
//! `f64::floor`/`round_ties_even` would be function calls there.

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

    /// A lighter reading of the same distribution for searches (see the module doc): within
    /// each aligned bucket `[m·W, (m+1)·W)` (the one holding a segment's midpoint; `W` the
    /// smallest power of two with `max(|min|, |max|)/W ≤ max_bins`), runs of consecutive
    /// segments become one segment spanning them, with their total count, as long as spreading
    /// that count evenly over the span moves at most `max_moved` values
    /// (`½·∫|ρ - ρ̄|` over the span, `ρ` the density the run has, `ρ̄` the even one).
    /// So smooth stretches merge into whole buckets while a heavy bin among light ones (a spike)
    /// keeps its own width. The point mass at 0 stays apart, as does any run of one point mass.
    pub fn coarsened(&self, max_bins: usize, max_moved: f64) -> Density {
        let a = self.min.abs().max(self.max.abs());
        if max_bins == 0 || a.is_nan() || a <= 0.0 {
            return self.clone();
        }
        let per = a / max_bins as f64;
        // Smallest power of two ≥ per (f32 data keep it far inside the normal f64 range).
        let mut w = 2f64.powi(per.log2().ceil() as i32);
        while w < per {
            w *= 2.0;
        }
        while w / 2.0 >= per {
            w /= 2.0;
        }
        let key = |s: &Segment| -> Option<i64> {
            if s.lo == s.hi && s.lo == 0.0 {
                None
            } else {
                Some(floor(0.5 * (s.lo + s.hi) / w) as i64)
            }
        };
        let mut out: Vec<Segment> = Vec::with_capacity(self.segments.len().min(4 * max_bins));
        let mut run: Vec<Segment> = Vec::new();
        let mut run_key = None;
        let flush = |run: &mut Vec<Segment>, out: &mut Vec<Segment>| {
            if let (Some(first), Some(last)) = (run.first(), run.last()) {
                out.push(Segment {
                    lo: first.lo,
                    hi: last.hi,
                    count: run.iter().map(|s| s.count).sum(),
                });
            }
            run.clear();
        };
        for s in &self.segments {
            let k = key(s);
            if k.is_some() && run_key == Some(k) {
                run.push(*s);
                if moved_by_spreading(&run) <= max_moved {
                    continue;
                }
                run.pop();
            }
            flush(&mut run, &mut out);
            run.push(*s);
            run_key = Some(k);
        }
        flush(&mut run, &mut out);
        Density {
            segments: out,
            total: self.total,
            min: self.min,
            max: self.max,
        }
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
        let bin_of = |x: f64| (floor((x - lo) / width).max(0.0) as usize).min(n - 1);
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

/// 2^52: from here on every f64 is an integer.
const TWO_52: f64 = 4_503_599_627_370_496.0;

/// `½·∫|ρ - ρ̄|` over the span of `run` (ascending, non-overlapping segments): the count that
/// spreading the run's total evenly over its span moves (a point mass moves all of its count,
/// gaps between segments receive `ρ̄` per unit length).
fn moved_by_spreading(run: &[Segment]) -> f64 {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return 0.0;
    };
    let span = last.hi - first.lo;
    if span.is_nan() || span <= 0.0 {
        return 0.0;
    }
    let total: f64 = run.iter().map(|s| s.count).sum();
    let even = total / span;
    let mut covered = 0.0;
    let mut diff = 0.0;
    for s in run {
        let width = s.hi - s.lo;
        if width > 0.0 {
            diff += (s.count - even * width).abs();
            covered += width;
        } else {
            diff += s.count;
        }
    }
    diff += even * (span - covered).max(0.0);
    diff / 2.0
}

/// Round half to even, as ONNX and numpy do (`f64::round_ties_even` without a libm call:
/// for `|x| < 2^52`, `|x| + 2^52` lies in `[2^52, 2^53)` where the f64 spacing is 1, so the
/// addition itself rounds to the nearest integer, ties to even; larger values, infinities and
/// NaN are returned as they are).
#[inline]
pub fn round_half_even(x: f64) -> f64 {
    let a = x.abs();
    if a < TWO_52 {
        ((a + TWO_52) - TWO_52).copysign(x)
    } else {
        x
    }
}

/// `f64::floor` without a libm call (see [`round_half_even`]); `floor(-0.0)` is `-0.0`.
#[inline]
pub fn floor(x: f64) -> f64 {
    let r = round_half_even(x);
    if r > x {
        r - 1.0
    } else {
        r
    }
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
            let inv = 1.0 / s;
            total += s * s * s * sawtooth_integral(ia * inv, ib * inv);
        }
        total
    }
}

/// ∫_{ua}^{ub} (t - round(t))² dt. Over each unit period the integral is 1/12; within a
/// period, h(f) = ∫_0^f (t - round t)² dt = f³/3 for f ≤ 1/2 and 1/12 + (f - 1)³/3 above.
/// So with `n = floor(u)`, `F(u) = ∫_0^u = n/12 + h(u - n)`, which equals `r/12 + (u - r)³/3`
/// for `r` the nearest integer to `u` (either one at a tie: both give `n/12 + 1/24`). The
/// difference is taken as `(r_b - r_a)/12 + ((u_b - r_b)³ - (u_a - r_a)³)/3`: the integer part
/// cancels exactly when both ends lie in one rounding cell.
#[inline]
pub fn sawtooth_integral(ua: f64, ub: f64) -> f64 {
    let (ra, rb) = (round_half_even(ua), round_half_even(ub));
    let (ea, eb) = (ua - ra, ub - rb);
    (rb - ra) / 12.0 + (eb * eb * eb - ea * ea * ea) / 3.0
}

/// Expected squared quantization error per value of `d` on grid `g` (see the module doc).
/// Scoring many grids on one density: build a [`Scorer`] once.
pub fn expected_mse(d: &Density, g: &Grid) -> f64 {
    Scorer::new(d).expected_mse(g)
}

/// `1.5·2^52`: for `|x| < 2^51`, `(x + M) - M` is `x` rounded to the nearest integer, ties to
/// even (the sum lies in `[2^52, 2^53)`, where the f64 spacing is 1).
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// A density laid out for scoring many grids ([`Scorer::expected_mse`]).
///
/// Segments of positive width are kept as three arrays (`lo`, `hi`, count per unit length),
/// point masses apart. With ascending, non-overlapping segments (every [`Density`] built here),
/// the segments entirely below or above the grid's span `[L, U]` are found by binary search
/// and summed with the closed-form clipping integral, those entirely inside with the sawtooth
/// integral, without branches (four partial sums, so the loops can use vector registers),
/// and only the at most two segments straddling `L` or `U` take the general path.
#[derive(Clone, Debug)]
pub struct Scorer {
    lo: Vec<f64>,
    hi: Vec<f64>,
    dens: Vec<f64>,
    points: Vec<(f64, f64)>,
    total: f64,
    /// Segments ascending and non-overlapping (the premise of the binary searches).
    ordered: bool,
}

impl Scorer {
    /// Prepares `d`.
    pub fn new(d: &Density) -> Scorer {
        let n = d.segments.len();
        let mut s = Scorer {
            lo: Vec::with_capacity(n),
            hi: Vec::with_capacity(n),
            dens: Vec::with_capacity(n),
            points: Vec::new(),
            total: d.total,
            ordered: true,
        };
        for seg in &d.segments {
            if seg.hi > seg.lo {
                if s.hi.last().is_some_and(|&h| seg.lo < h) {
                    s.ordered = false;
                }
                s.lo.push(seg.lo);
                s.hi.push(seg.hi);
                s.dens.push(seg.count / (seg.hi - seg.lo));
            } else {
                s.points.push((seg.lo, seg.count));
            }
        }
        s
    }

    /// [`expected_mse`] of the prepared density on `g`.
    pub fn expected_mse(&self, g: &Grid) -> f64 {
        let (l, u, s) = (g.lo, g.hi, g.scale);
        let inv = 1.0 / s;
        // Clipping and point errors (squared units), and sawtooth integrals (units of s³).
        let mut direct = 0.0;
        let mut noise = 0.0;
        for &(x, c) in &self.points {
            direct += c * g.point_error(x);
        }
        let n = self.lo.len();
        let fast = self.ordered && l.abs().max(u.abs()) * inv < 2f64.powi(50);
        if !fast {
            for j in 0..n {
                let (d, z) = segment_error(self.lo[j], self.hi[j], self.dens[j], g, inv);
                direct += d;
                noise += z;
            }
            return (direct + s * s * s * noise) / self.total;
        }
        // [0, i1): entirely at or below L; [i2, n): entirely at or above U; between: overlapping.
        let i1 = self.hi.partition_point(|&h| h <= l);
        let i2 = self.lo.partition_point(|&a| a < u).max(i1);
        let (lo, hi, dens) = (&self.lo[..], &self.hi[..], &self.dens[..]);
        direct += sum4(&lo[..i1], &hi[..i1], &dens[..i1], |a, b| {
            let (p, q) = (l - a, l - b);
            p * p * p - q * q * q
        }) / 3.0;
        direct += sum4(&lo[i2..], &hi[i2..], &dens[i2..], |a, b| {
            let (p, q) = (b - u, a - u);
            p * p * p - q * q * q
        }) / 3.0;
        if i2 > i1 {
            let (first, last) = (i1, i2 - 1);
            let (d, z) = segment_error(lo[first], hi[first], dens[first], g, inv);
            direct += d;
            noise += z;
            if last > first {
                let (d, z) = segment_error(lo[last], hi[last], dens[last], g, inv);
                direct += d;
                noise += z;
            }
            if last > first + 1 {
                let r = first + 1..last;
                let (cells, cubes) = sawtooth_sum(&lo[r.clone()], &hi[r.clone()], &dens[r], inv);
                noise += cells / 12.0 + cubes / 3.0;
            }
        }
        (direct + s * s * s * noise) / self.total
    }
}

/// Scores every window of one grid scale: the grids `{k·s : k ∈ [k_lo, k_hi]}` (what a zero
/// point selects among the multiples of `s`), for searching scale and zero point together.
///
/// The rounding noise of a segment depends on `s` only (the grid points are multiples of `s`
/// whatever the window), so [`WindowScorer::set_scale`] computes it once per segment, as a
/// prefix sum; the clipping error below `L` is `L²·Σc - L·Σd(b²-a²) + Σd(b³-a³)/3` over the
/// segments below (`∫_a^b d·(L-x)² dx` expanded; likewise above `U`), prefix sums that do not
/// depend on `s` at all. One window then costs two binary searches, the at most two segments
/// straddling `L` or `U`, and the point masses. (The expansion loses some relative precision
/// when `|L|` is much larger than the distances clipped, at most `|L|/w` ≈ 4096 times the
/// rounding error squared: about 1e-9 relative; searches only, final scores use [`Scorer`].)
#[derive(Clone, Debug)]
pub struct WindowScorer {
    base: Scorer,
    m0: Vec<f64>,
    m1: Vec<f64>,
    m2: Vec<f64>,
    /// Prefix sums of each segment's sawtooth integral (units of `s³`) at `scale`.
    noise: Vec<f64>,
    scale: f64,
}

impl WindowScorer {
    /// Prepares `d` (its segments must be ascending and non-overlapping, as every
    /// [`Density`] built here is; otherwise windows are scored segment by segment).
    pub fn new(d: &Density) -> WindowScorer {
        let base = Scorer::new(d);
        let n = base.lo.len();
        let (mut m0, mut m1, mut m2) = (vec![0.0; n + 1], vec![0.0; n + 1], vec![0.0; n + 1]);
        for j in 0..n {
            let (a, b, d) = (base.lo[j], base.hi[j], base.dens[j]);
            m0[j + 1] = m0[j] + d * (b - a);
            m1[j + 1] = m1[j] + d * (b * b - a * a);
            m2[j + 1] = m2[j] + d * (b * b * b - a * a * a) / 3.0;
        }
        WindowScorer {
            base,
            m0,
            m1,
            m2,
            noise: vec![0.0; n + 1],
            scale: f64::NAN,
        }
    }

    /// Sets the scale `s > 0` of the windows to score.
    pub fn set_scale(&mut self, s: f64) {
        self.scale = s;
        let inv = 1.0 / s;
        let b = &self.base;
        for j in 0..b.lo.len() {
            self.noise[j + 1] =
                self.noise[j] + b.dens[j] * sawtooth_integral(b.lo[j] * inv, b.hi[j] * inv);
        }
    }

    /// [`expected_mse`] on the grid of scale `s` (see [`WindowScorer::set_scale`]) spanning
    /// `[k_lo·s, k_hi·s]` (`k_lo < k_hi`).
    pub fn expected_mse(&self, k_lo: i64, k_hi: i64) -> f64 {
        let s = self.scale;
        let (l, u) = (k_lo as f64 * s, k_hi as f64 * s);
        // (`zero_point` as for `qmin = 0`; only the scale and the span are read.)
        let g = Grid {
            scale: s,
            zero_point: -k_lo,
            lo: l,
            hi: u,
        };
        let b = &self.base;
        if !b.ordered {
            return b.expected_mse(&g);
        }
        let inv = 1.0 / s;
        let n = b.lo.len();
        let mut direct = 0.0;
        for &(x, c) in &b.points {
            direct += c * g.point_error(x);
        }
        let i1 = b.hi.partition_point(|&h| h <= l);
        let i2 = b.lo.partition_point(|&a| a < u).max(i1);
        let below = l * l * self.m0[i1] - l * self.m1[i1] + self.m2[i1];
        let above = u * u * (self.m0[n] - self.m0[i2]) - u * (self.m1[n] - self.m1[i2])
            + (self.m2[n] - self.m2[i2]);
        direct += below.max(0.0) + above.max(0.0);
        let mut noise = 0.0;
        if i2 > i1 {
            let (first, last) = (i1, i2 - 1);
            let (d, z) = segment_error(b.lo[first], b.hi[first], b.dens[first], &g, inv);
            direct += d;
            noise += z;
            if last > first {
                let (d, z) = segment_error(b.lo[last], b.hi[last], b.dens[last], &g, inv);
                direct += d;
                noise += z;
                noise += self.noise[last] - self.noise[first + 1];
            }
        }
        (direct + s * s * s * noise) / b.total
    }
}

/// `Σ dens_j · f(lo_j, hi_j)` in four interleaved partial sums.
#[inline(always)]
fn sum4(lo: &[f64], hi: &[f64], dens: &[f64], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let (lc, hc, dc) = (lo.chunks_exact(4), hi.chunks_exact(4), dens.chunks_exact(4));
    let (lr, hr, dr) = (lc.remainder(), hc.remainder(), dc.remainder());
    for ((a, b), d) in lc.zip(hc).zip(dc) {
        for k in 0..4 {
            acc[k] += d[k] * f(a[k], b[k]);
        }
    }
    let mut rest = 0.0;
    for ((&a, &b), &d) in lr.iter().zip(hr).zip(dr) {
        rest += d * f(a, b);
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + rest
}

/// `Σ dens_j·(r_b - r_a)` and `Σ dens_j·(e_b³ - e_a³)` over segments inside the grid, with
/// `u = x/s`, `r = round(u)`, `e = u - r` at both ends (the two parts of
/// [`sawtooth_integral`], summed apart; `|u| < 2^51` so [`ROUND_MAGIC`] rounds exactly).
#[inline(always)]
fn sawtooth_sum(lo: &[f64], hi: &[f64], dens: &[f64], inv: f64) -> (f64, f64) {
    let mut cells = [0.0f64; 4];
    let mut cubes = [0.0f64; 4];
    let term = |a: f64, b: f64| {
        let (ua, ub) = (a * inv, b * inv);
        let ra = (ua + ROUND_MAGIC) - ROUND_MAGIC;
        let rb = (ub + ROUND_MAGIC) - ROUND_MAGIC;
        let (ea, eb) = (ua - ra, ub - rb);
        (rb - ra, eb * eb * eb - ea * ea * ea)
    };
    let (lc, hc, dc) = (lo.chunks_exact(4), hi.chunks_exact(4), dens.chunks_exact(4));
    let (lr, hr, dr) = (lc.remainder(), hc.remainder(), dc.remainder());
    for ((a, b), d) in lc.zip(hc).zip(dc) {
        for k in 0..4 {
            let (c, q) = term(a[k], b[k]);
            cells[k] += d[k] * c;
            cubes[k] += d[k] * q;
        }
    }
    let (mut c_rest, mut q_rest) = (0.0, 0.0);
    for ((&a, &b), &d) in lr.iter().zip(hr).zip(dr) {
        let (c, q) = term(a, b);
        c_rest += d * c;
        q_rest += d * q;
    }
    (
        (cells[0] + cells[1]) + (cells[2] + cells[3]) + c_rest,
        (cubes[0] + cubes[1]) + (cubes[2] + cubes[3]) + q_rest,
    )
}

/// Clipping error (squared units) and sawtooth integral (units of s³) of one segment of
/// positive width with `dens` values per unit length.
#[inline]
fn segment_error(a: f64, b: f64, dens: f64, g: &Grid, inv: f64) -> (f64, f64) {
    let (l, u) = (g.lo, g.hi);
    let mut direct = 0.0;
    if a < l {
        let top = b.min(l);
        direct += dens * ((l - a).powi(3) - (l - top).powi(3)) / 3.0;
    }
    if b > u {
        let bottom = a.max(u);
        direct += dens * ((b - u).powi(3) - (bottom - u).powi(3)) / 3.0;
    }
    let (ia, ib) = (a.max(l), b.min(u));
    let noise = if ib > ia {
        dens * sawtooth_integral(ia * inv, ib * inv)
    } else {
        0.0
    };
    (direct, noise)
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

    #[test]
    fn rounding_without_libm() {
        let two52 = 2f64.powi(52);
        let mut xs = vec![
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            1e-300,
            -1e-300,
            123456.5,
            two52 / 2.0 - 0.5,
            two52 / 2.0 + 0.5,
            two52 - 0.5,
            -(two52 - 0.5),
            two52,
            two52 + 1.0,
            1e300,
            -1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut state = 7u64;
        for _ in 0..10_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let mag = ((state >> 40) % 60) as i32 - 20;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            xs.push(u * 2f64.powi(mag));
            xs.push((u * 64.0).round() / 2.0); // exact halves
        }
        for x in xs {
            assert_eq!(
                round_half_even(x).to_bits(),
                x.round_ties_even().to_bits(),
                "round {x}"
            );
            assert_eq!(floor(x).to_bits(), x.floor().to_bits(), "floor {x}");
        }
        assert!(round_half_even(f64::NAN).is_nan() && floor(f64::NAN).is_nan());
    }

    /// The measure segment by segment, as the module doc states it.
    fn reference_mse(d: &Density, g: &Grid) -> f64 {
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

    /// A density of `n` canonical-looking bins of width `w` from `lo` (some empty, some
    /// heavy), a point mass at 0 and clipped end points.
    fn random_density(state: &mut u64, n: usize, lo: f64, w: f64) -> Density {
        let mut next = || {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut segs = vec![seg(lo - 0.3 * w, lo - 0.3 * w, 2.0)];
        let mut zero_done = false;
        for j in 0..n {
            let a = lo + j as f64 * w;
            if !zero_done && a >= 0.0 {
                segs.push(seg(0.0, 0.0, 5.0));
                zero_done = true;
            }
            let u = next();
            let c = if u < 0.2 {
                0.0
            } else if u > 0.95 {
                500.0 * next()
            } else {
                10.0 * next()
            };
            segs.push(seg(a, a + w, c));
        }
        let end = lo + n as f64 * w;
        segs.push(seg(end + 0.1 * w, end + 0.1 * w, 3.0));
        Density::from_segments(segs).unwrap()
    }

    #[test]
    fn fast_scoring_matches_the_reference() {
        let mut state = 99u64;
        let targets = [
            target(0, 255, false),
            target(-127, 127, true),
            target(-8, 7, false),
            target(0, 65535, false),
        ];
        for case in 0..12 {
            let w = 2f64.powi(case % 5 - 6);
            let n = 40 + 37 * case as usize;
            let lo = -(case as f64) * 7.0 * w;
            let d = random_density(&mut state, n, lo, w);
            let scorer = Scorer::new(&d);
            assert!(scorer.ordered);
            let mut ws = WindowScorer::new(&d);
            let ext = (d.min.abs()).max(d.max.abs());
            for t in &targets {
                for f in [0.01, 0.1, 0.37, 0.5, 0.8, 0.99, 1.0, 1.3] {
                    for shift in [-0.6, -0.2, 0.0, 0.3] {
                        let g = Grid::new(d.min * f + shift * ext, d.max * f + shift * ext, t);
                        let want = reference_mse(&d, &g);
                        let got = scorer.expected_mse(&g);
                        assert!(
                            (got - want).abs() <= 1e-9 * want + 1e-300,
                            "case {case} {t:?} f {f}: {got} vs {want}"
                        );
                        ws.set_scale(g.scale);
                        let k_lo = (g.lo / g.scale).round() as i64;
                        let k_hi = (g.hi / g.scale).round() as i64;
                        let got = ws.expected_mse(k_lo, k_hi);
                        assert!(
                            (got - want).abs() <= 1e-8 * want + 1e-300,
                            "window: case {case} {t:?} f {f}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        // Segments out of order (not built here, but allowed): the general path.
        let d = Density::from_segments(vec![seg(1.0, 2.0, 1.0), seg(0.5, 1.5, 1.0)]).unwrap();
        let g = Grid::new(0.0, 1.2, &target(0, 255, false));
        assert!(!Scorer::new(&d).ordered);
        assert!((Scorer::new(&d).expected_mse(&g) - reference_mse(&d, &g)).abs() < 1e-15);
    }

    #[test]
    fn coarsening_merges_smooth_runs_and_keeps_spikes() {
        // Canonical bins of width 1/8 over [0, 4): 32 bins, 8 per unit. With max_bins = 4,
        // W = 1: buckets [0, 1), [1, 2), … . Bins of [0, 2) hold 10 each (smooth), bin [2, 2.125)
        // holds 1000 (a spike), the rest of [2, 3) 10 each, [3, 4) is empty but for its last
        // bin.
        let mut segs = vec![seg(0.0, 0.0, 7.0)];
        for j in 0..32 {
            let a = j as f64 / 8.0;
            let c = match j {
                16 => 1000.0,
                0..=23 => 10.0,
                31 => 4.0,
                _ => 0.0,
            };
            segs.push(seg(a, a + 0.125, c));
        }
        let d = Density::from_segments(segs).unwrap();
        // Moving up to 1 value: even runs merge whole, the spike stays apart, and so does
        // the bin after it (merging them would move about 495).
        let c = d.coarsened(4, 1.0);
        assert_eq!(
            c.segments,
            vec![
                seg(0.0, 0.0, 7.0),
                seg(0.0, 1.0, 80.0),
                seg(1.0, 2.0, 80.0),
                seg(2.0, 2.125, 1000.0),
                seg(2.125, 3.0, 70.0),
                seg(3.875, 4.0, 4.0),
            ]
        );
        assert_eq!((c.total, c.min, c.max), (d.total, d.min, d.max));
        // Unlimited moving: whole buckets (the bucket of [3, 4) spans only its non-empty bin).
        let c = d.coarsened(4, f64::INFINITY);
        let spans: Vec<(f64, f64)> = c.segments.iter().map(|s| (s.lo, s.hi)).collect();
        assert_eq!(
            spans,
            vec![(0.0, 0.0), (0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.875, 4.0)]
        );
        // Moving nothing: only runs of exactly even bins merge.
        let c = d.coarsened(4, 0.0);
        assert_eq!(c.segments.len(), 6);
        // A gap inside a run counts as empty: spreading 8 over [0, 1] leaves 2 of the 4 in
        // each segment and puts 4 in the gap, so 4 values move.
        let gap = Density::from_segments(vec![seg(0.0, 0.25, 4.0), seg(0.75, 1.0, 4.0)]).unwrap();
        assert_eq!(moved_by_spreading(&gap.segments), 4.0);
        assert_eq!(gap.coarsened(1, 4.0).segments, vec![seg(0.0, 1.0, 8.0)]);
        assert_eq!(gap.coarsened(1, 3.9).segments.len(), 2);
    }
}
