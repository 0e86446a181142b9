//! `entropy`: the threshold of minimum KL divergence, TensorRT's recipe (GTC 2017, "8-bit
//! inference with TensorRT") done with the bin counts it was designed for.
//!
//! ## Algorithm
//! 1. Histogram `H` of |x| with [`NUM_BINS`] = 2048 equal bins over `[0, absmax]`, re-binned
//!    from the canonical histogram (which has 2049–4096 finer bins over the same span; mass
//!    is uniform within a bin, so a canonical bin straddling two new bins is split
//!    proportionally). Exact zeros are left out: every grid represents 0 exactly, so they
//!    carry no quantization loss. And bin 0 counts at most as much as bin 1 (TensorRT's
//!    calibrators copy bin 1 into bin 0): a spike of near-zero values (GELU or SiLU outputs
//!    of negative inputs pile up just below 0) would otherwise decide the search by itself.
//!    Every candidate step is at least one bin wide, so bin 0 holds values every candidate
//!    rounds to its zero level or the next one, and says nothing about `t`; but `Q` spreads
//!    a group's mass evenly, so as soon as bin 0 shares its group with bin 1 (every
//!    `i > n_q`) the spike is spread and the divergence jumps: `i = n_q`, the smallest
//!    threshold, always won. (On magika, a GELU output with 36 % of its values in
//!    `(-0.0625, 0]` and a maximum of 190 was clipped at 11.9, and the model's accuracy fell
//!    from 92 % to 15 %.)
//! 2. `n_q` = number of grid levels covering `[0, t]`: `qmax - zp + 1` on a symmetric target
//!    (128 for int8 [-127, 127] and uint8 with zp 128), all `qmax - qmin + 1` levels on an
//!    asymmetric target when the data has one sign, `(qmax - qmin)/2 + 1` otherwise.
//! 3. For every slice length `i` in `n_q ..= 2048`:
//!    - `P` = `H[0..i]` with all mass beyond (`Σ H[i..]`) added to `P[i-1]`;
//!    - `Q` = `H[0..i]` merged into `n_q` groups (bin `j` → group `⌊j·n_q/i⌋`, so groups
//!      differ in size by at most one bin), each group's mass spread evenly over the bins of
//!      the group where `H` is non-zero (zero bins stay zero);
//!    - if the clipped mass lands on a bin that is empty in `H` (a gap before an outlier),
//!      `Q` gives that bin [`EPSILON`] = 10^-4 of a value (ONNX Runtime's smoothing constant)
//!      instead of 0, so clipping into a gap costs `p·ln(p/ε)` rather than an infinite
//!      divergence (TensorRT's recipe without smoothing could then never clip an isolated
//!      outlier). It is the only bin where `p > 0 = q` can happen;
//!    - `KL(P‖Q) = Σ_{p_j > 0} p_j ln(p_j/q_j)` after normalising each to sum 1;
//!    - a slice that clips mass while `H[0..i]` has a single non-zero bin, its last, is not a
//!      candidate: `P` and `Q` are then the same single bin, so `KL = 0` however much was
//!      clipped onto it. Data whose |x| stays away from 0 (a positive activation in
//!      `[0.2, 0.85]`, say) would otherwise always "win" at the threshold `min |x|`, clipping
//!      every value to one level.
//! 4. `i*` = the minimiser (ties, within [`TIE`]: the largest `i`, i.e. the least clipping);
//!    threshold `t = i*·absmax/2048`; range `[-t, t]` clamped to the observed `[min, max]`.
//!
//! Cost: with prefix sums of `c`, `c·ln c` and of the non-zero bin count, one candidate costs
//! O(n_q), the search O(n_q·2048); the logarithm of a group (the costly part) is computed once
//! per distinct group, and candidates share most of their groups.
//!
//! When `n_q ≥ 2048` (16-bit grids) the histogram cannot resolve the quantization at all and
//! the search is empty: the range is the full `[min, max]`.
//!
//! Why not the reference tool's defaults: ONNX Runtime's entropy calibrator uses 128 bins and
//! 128 quantized bins, which leaves exactly one candidate (the first batch's abs-max): it
//! can never clip. TensorRT's recipe searches 128…2048 bins of a 2048-bin histogram.

use super::{finish, Views};
use crate::calib::density::round_half_even;
use crate::calib::{Method, QuantTarget, Range};

/// Bins of the |x| histogram the divergence is computed on.
pub const NUM_BINS: usize = 2048;

/// Number of grid levels available for `[0, t]` (step 2 of the module doc).
pub fn quantized_bins(views: &Views, target: &QuantTarget) -> usize {
    let (qmin, qmax) = (target.qmin, target.qmax);
    let n = if target.symmetric {
        qmax - round_half_even((qmin + qmax) as f64 / 2.0) as i64 + 1
    } else if views.min() >= 0.0 || views.max() <= 0.0 {
        qmax - qmin + 1
    } else {
        (qmax - qmin) / 2 + 1
    };
    n.max(1) as usize
}

/// Mass (in values) that `Q` gives to an empty bin receiving clipped mass (step 3).
pub const EPSILON: f64 = 1e-4;

/// Divergences closer than this are ties (below the rounding error of the sums).
pub const TIE: f64 = 1e-12;

/// Prefix sums over the histogram that make one candidate cost O(n_q) instead of O(i):
/// mass, `Σ c·ln c` over non-zero bins, and the number of non-zero bins before each index.
struct Prefix {
    mass: Vec<f64>,
    c_ln_c: Vec<f64>,
    nonzero: Vec<usize>,
}

impl Prefix {
    fn new(hist: &[f64]) -> Prefix {
        let n = hist.len();
        let mut p = Prefix {
            mass: vec![0.0; n + 1],
            c_ln_c: vec![0.0; n + 1],
            nonzero: vec![0; n + 1],
        };
        for (j, &c) in hist.iter().enumerate() {
            let nz = c > 0.0;
            p.mass[j + 1] = p.mass[j] + c;
            p.c_ln_c[j + 1] = p.c_ln_c[j] + if nz { c * c.ln() } else { 0.0 };
            p.nonzero[j + 1] = p.nonzero[j] + nz as usize;
        }
        p
    }
}

/// `Σ c ln c - m·ln(m/nz)` over bins `[start, end)`: the contribution of a whole group of
/// mass `m` over `nz` non-zero bins (0 when the group is empty).
fn group_term(pre: &Prefix, start: usize, end: usize) -> f64 {
    let m = pre.mass[end] - pre.mass[start];
    let nz = (pre.nonzero[end] - pre.nonzero[start]) as f64;
    let q_each = if nz > 0.0 { m / nz } else { 0.0 };
    if m > 0.0 {
        (pre.c_ln_c[end] - pre.c_ln_c[start]) - m * q_each.ln()
    } else {
        0.0
    }
}

/// The contributions of whole groups for the candidates of one search. A group `[start, end)`
/// contributes the same whatever the candidate, and the groups of candidate `i = k·n_q + r`
/// have `k` or `k + 1` bins, so with `i` ascending two tables by start (for sizes `k` and
/// `k + 1`, the second becoming the first when `k` grows) serve every candidate: one logarithm
/// per start and size (starts below `(size + 1)·n_q`, the only ones used) instead of one per
/// group and candidate. When there are fewer candidate
/// groups than table entries (small `n_q`), each group is computed where it is needed.
struct GroupTerms {
    /// Sizes `k` and `k + 1`, `n + 1` entries each; empty when computing directly.
    rows: Vec<f64>,
    k: usize,
    nq: usize,
}

impl GroupTerms {
    fn new(n: usize, nq: usize) -> GroupTerms {
        let tables = (n / nq + 2) * (n + 1);
        let groups = (n - nq + 1) * nq;
        GroupTerms {
            rows: if tables < groups {
                vec![0.0; 2 * (n + 1)]
            } else {
                Vec::new()
            },
            k: 0,
            nq,
        }
    }

    /// Makes the tables hold sizes `k` and `k + 1` (`k` never decreases).
    fn prepare(&mut self, pre: &Prefix, k: usize) {
        if self.rows.is_empty() || self.k == k {
            return;
        }
        let w = pre.mass.len();
        let n = w - 1;
        // (k = 0: nothing computed yet; candidates have k ≥ 1.)
        let from = if self.k != 0 && self.k + 1 == k {
            self.rows.copy_within(w..2 * w, 0);
            1
        } else {
            0
        };
        for row in from..2 {
            // A group of `size` bins starts before the last group of a candidate
            // i < (size + 1)·n_q; later entries are never read.
            let size = k + row;
            let used = ((size + 1) * self.nq).min(w);
            for start in 0..used {
                self.rows[row * w + start] = if start + size <= n {
                    group_term(pre, start, start + size)
                } else {
                    0.0
                };
            }
        }
        self.k = k;
    }

    /// The contribution of group `[start, end)` of a candidate with `⌊i/n_q⌋ = k`.
    #[inline]
    fn term(&self, pre: &Prefix, start: usize, end: usize) -> f64 {
        if self.rows.is_empty() {
            group_term(pre, start, end)
        } else {
            self.rows[(end - start - self.k) * pre.mass.len() + start]
        }
    }
}

/// KL divergence of slice length `i` (step 3).
///
/// With unnormalised `P'` (total `P`) and `Q'` (total `Q`),
/// `KL = (1/P)·Σ p'_j ln(p'_j/q'_j) + ln(Q/P)`. Inside a group of mass `m` over `nz` non-zero
/// bins every non-zero `q'_j` is `m/nz`, so the group contributes `Σ c ln c - m·ln(m/nz)`
/// (prefix sums, and [`GroupTerms`] across candidates); only the last bin, which also receives
/// the clipped mass, is done apart. Group `g` is bins `⌈g·i/n_q⌉ .. ⌈(g+1)·i/n_q⌉`; with
/// `i = k·n_q + r` that end is `(g+1)·k + ⌈(g+1)·r/n_q⌉`, stepped without division.
fn divergence(hist: &[f64], pre: &Prefix, i: usize, nq: usize, groups: &mut GroupTerms) -> f64 {
    let n = hist.len();
    let p_total = pre.mass[n];
    let in_range = pre.mass[i];
    let outliers = p_total - in_range;
    if in_range <= 0.0 {
        // Nothing left in range: everything would be clipped.
        return f64::INFINITY;
    }
    let last = i - 1;
    let c_last = hist[last];
    if outliers > 0.0 && c_last > 0.0 && pre.nonzero[i] == 1 {
        // Everything clipped onto the one non-zero bin: not a candidate (module doc).
        return f64::INFINITY;
    }
    let last_empty = c_last <= 0.0 && outliers > 0.0;
    let q_total = in_range + if last_empty { EPSILON } else { 0.0 };
    let (k, r) = (i / nq, i % nq);
    groups.prepare(pre, k);
    // Group g < n_q - 1 ends at ⌈(g+1)·i/n_q⌉ = (g+1)·k + ⌈(g+1)·r/n_q⌉; that ceiling grows by
    // at most 1 per group (r < n_q), stepped without division. Four partial sums.
    let mut part = [0.0f64; 4];
    let mut start = 0;
    let (mut num, mut up, mut up_nq) = (0, 0, 0);
    for g in 0..nq - 1 {
        num += r;
        let step = usize::from(up_nq < num);
        up += step;
        up_nq += step * nq;
        let end = (g + 1) * k + up;
        part[g % 4] += groups.term(pre, start, end);
        start = end;
    }
    let mut acc = (part[0] + part[1]) + (part[2] + part[3]);
    // The last group, bins start..i: its body, then bin i-1 with the clipped mass.
    let m = pre.mass[i] - pre.mass[start];
    let nz = (pre.nonzero[i] - pre.nonzero[start]) as f64;
    let q_each = if nz > 0.0 { m / nz } else { 0.0 };
    let body_mass = pre.mass[last] - pre.mass[start];
    if body_mass > 0.0 {
        acc += (pre.c_ln_c[last] - pre.c_ln_c[start]) - body_mass * q_each.ln();
    }
    let p_last = c_last + outliers;
    if p_last > 0.0 {
        let q_last = if c_last > 0.0 { q_each } else { EPSILON };
        acc += p_last * (p_last / q_last).ln();
    }
    acc / p_total + (q_total / p_total).ln()
}

/// The slice length of minimum divergence for histogram `hist` and `nq` levels, with the
/// divergence of each candidate `i = nq ..= hist.len()` (steps 3–4; divergences within
/// [`TIE`] of the minimum count as equal and the largest `i` among them wins). Returns
/// `hist.len()` and no candidates when `nq ≥ hist.len()`.
pub fn best_slice(hist: &[f64], nq: usize) -> (usize, Vec<(usize, f64)>) {
    let n = hist.len();
    if nq == 0 || nq >= n {
        return (n, Vec::new());
    }
    let pre = Prefix::new(hist);
    let mut groups = GroupTerms::new(n, nq);
    let scores: Vec<(usize, f64)> = (nq..=n)
        .map(|i| (i, divergence(hist, &pre, i, nq, &mut groups)))
        .collect();
    let min = scores.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let best = scores
        .iter()
        .rev()
        .find(|s| s.1 <= min + TIE)
        .map_or(n, |s| s.0);
    (best, scores)
}

/// The entropy range of `views` on `target`.
pub fn range(views: &Views, target: &QuantTarget) -> Range {
    let abs_max = views.abs_max();
    let nq = quantized_bins(views, target);
    let mut hist = views.abs.rebin(NUM_BINS, 0.0, abs_max, true);
    if hist.len() > 1 {
        // Near-zero spike (step 1 of the module doc).
        hist[0] = hist[0].min(hist[1]);
    }
    let t = if abs_max > 0.0 && hist.iter().any(|&c| c > 0.0) {
        let (i, _) = best_slice(&hist, nq);
        i as f64 * (abs_max / NUM_BINS as f64)
    } else {
        abs_max
    };
    let (lo, hi) = views.clamp(-t, t);
    finish(views, lo, hi, Method::Entropy, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::TensorStats;

    #[test]
    fn divergences_hand_computed() {
        // H = [3, 1, 0, 1], n_q = 2; candidates i = 2, 3, 4.
        // i = 2: P = [3, 1+0+1]/5 = [.6, .4]; Q = groups {0},{1} → [3, 1]/4 = [.75, .25];
        //        KL = .6 ln(.6/.75) + .4 ln(.4/.25) = .6 ln .8 + .4 ln 1.6 ≈ 0.054115.
        // i = 3: P = [3, 1, 0+1]/5; groups ⌊j·2/3⌋ = 0, 0, 1; group 0 → [2, 2]; bin 2 is
        //        empty in H but receives the clipped mass: Q[2] = ε. Q = [2, 2, ε]/(4 + ε);
        //        KL = .6 ln(.6/(2/(4+ε))) + .2 ln(.2/(2/(4+ε))) + .2 ln(.2/(ε/(4+ε))) ≈ 1.7236.
        // i = 4: P = [3, 1, 0, 1]/5; groups {0,1} → 4 over 2 non-zero bins = [2, 2];
        //        {2,3} → 1 over bin 3 only = [0, 1]; Q = [2, 2, 0, 1]/5;
        //        KL = .6 ln(3/2) + .2 ln(1/2) + .2 ln 1 ≈ 0.104650.
        // Minimum at i = 2: the outlier bin is clipped.
        let (best, scores) = best_slice(&[3.0, 1.0, 0.0, 1.0], 2);
        assert_eq!(best, 2);
        let expect2 = 0.6 * 0.8f64.ln() + 0.4 * 1.6f64.ln();
        let expect4 = 0.6 * 1.5f64.ln() + 0.2 * 0.5f64.ln();
        assert_eq!(scores.len(), 3);
        assert!((scores[0].1 - expect2).abs() < 1e-12);
        let e = EPSILON;
        let q = 2.0 / (4.0 + e);
        let expect3 =
            0.6 * (0.6 / q).ln() + 0.2 * (0.2 / q).ln() + 0.2 * (0.2 / (e / (4.0 + e))).ln();
        assert!((scores[1].1 - expect3).abs() < 1e-12, "{scores:?}");
        assert!((expect3 - 1.7236).abs() < 1e-3, "{expect3}");
        assert!((scores[2].1 - expect4).abs() < 1e-12);
        assert!((expect2 - 0.054115).abs() < 1e-6 && (expect4 - 0.104650).abs() < 1e-6);
    }

    #[test]
    fn uneven_groups_and_ties() {
        // H = [1, 1, 1, 1, 1], n_q = 2. Uniform: every candidate i has Q = P except for the
        // clipped mass. i = 5: groups ⌊j·2/5⌋ = 0,0,0,1,1 → Q = [1,1,1,1,1]/5 = P → KL 0.
        // i = 4: P = [1,1,1,2]/5, Q = [1,1,1,1]/4 → KL = 3·.2 ln(.8) + .4 ln(1.6) > 0.
        let (best, scores) = best_slice(&[1.0; 5], 2);
        assert_eq!(best, 5);
        let kl4 = 0.6 * 0.8f64.ln() + 0.4 * 1.6f64.ln();
        assert!((scores[2].1 - kl4).abs() < 1e-12, "{scores:?}");
        // H = [2, 0, 0, 0]: every candidate i ≥ 2 has KL 0 (all mass in bin 0, Q = P);
        // ties go to the largest i.
        let (best, _) = best_slice(&[2.0, 0.0, 0.0, 0.0], 2);
        assert_eq!(best, 4);
        // H = [0, 0, 1, 3]: i = 2 has nothing in range (everything clipped) → infinite, never
        // chosen. i = 3 keeps only bin 2 and clips 3 onto it (P = Q = [0, 0, 1], KL 0
        // whatever was clipped): not a candidate either. i = 4: groups {0,1}, {2,3} →
        // Q = [0, 0, 2, 2]/4, P = [0, 0, 1, 3]/4 → .25 ln .5 + .75 ln 1.5 > 0, the best.
        let (best, scores) = best_slice(&[0.0, 0.0, 1.0, 3.0], 2);
        assert_eq!(best, 4);
        assert!(scores[0].1.is_infinite());
        assert!(scores[1].1.is_infinite());
        assert!((scores[2].1 - (0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln())).abs() < 1e-12);
        // n_q ≥ bins: nothing to search.
        assert_eq!(best_slice(&[1.0, 2.0], 2).0, 2);
    }

    /// The divergence of slice length `i` straight from the module doc: `P` and `Q` built
    /// bin by bin, normalised, summed.
    fn naive_divergence(hist: &[f64], i: usize, nq: usize) -> f64 {
        let outliers: f64 = hist[i..].iter().sum();
        let mut p: Vec<f64> = hist[..i].to_vec();
        p[i - 1] += outliers;
        let mut q = vec![0.0; i];
        for g in 0..nq {
            let bins: Vec<usize> = (0..i).filter(|&j| j * nq / i == g).collect();
            let m: f64 = bins.iter().map(|&j| hist[j]).sum();
            let nz = bins.iter().filter(|&&j| hist[j] > 0.0).count();
            for &j in &bins {
                if hist[j] > 0.0 {
                    q[j] = m / nz as f64;
                }
            }
        }
        if hist[i - 1] <= 0.0 && p[i - 1] > 0.0 {
            q[i - 1] = EPSILON;
        }
        let kept = hist[..i].iter().filter(|&&c| c > 0.0).count();
        if outliers > 0.0 && hist[i - 1] > 0.0 && kept == 1 {
            return f64::INFINITY;
        }
        let (pt, qt): (f64, f64) = (p.iter().sum(), q.iter().sum());
        if hist[..i].iter().sum::<f64>() <= 0.0 {
            return f64::INFINITY;
        }
        p.iter()
            .zip(&q)
            .filter(|(&pj, _)| pj > 0.0)
            .map(|(&pj, &qj)| (pj / pt) * ((pj / pt) / (qj / qt)).ln())
            .sum()
    }

    #[test]
    fn fast_search_matches_the_recipe() {
        // Pseudo-random histograms with gaps and spikes, for n_q where the group tables are
        // used (large n_q) and where groups are computed one by one (small n_q).
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        for (n, nq) in [(64, 3), (64, 16), (96, 40), (200, 128), (300, 64)] {
            let hist: Vec<f64> = (0..n)
                .map(|_| {
                    let u = next();
                    if u < 0.3 {
                        0.0
                    } else if u > 0.97 {
                        1000.0 * next()
                    } else {
                        (100.0 * next()).floor()
                    }
                })
                .collect();
            let (best, scores) = best_slice(&hist, nq);
            assert_eq!(scores.len(), n - nq + 1);
            for &(i, kl) in &scores {
                let want = naive_divergence(&hist, i, nq);
                assert!(
                    kl == want || (kl - want).abs() <= 1e-9 * want.abs().max(1e-3),
                    "n {n} nq {nq} i {i}: {kl} vs {want}"
                );
            }
            let min = scores.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
            assert!(scores.iter().any(|&(i, kl)| i == best && kl <= min + TIE));
        }
    }

    #[test]
    fn clipping_onto_the_only_bin_is_not_a_candidate() {
        // H = [0, 0, 0, 5, 1, 0, 3, 2], n_q = 2. i = 4 keeps only bin 3 and clips 6 onto it:
        // P = Q = one bin, KL 0 whatever was clipped: not a candidate. The best real one is
        // i = 5: P = [5, 1 + 5]/11, groups {0, 1}, {2, 3, 4} → Q = [3, 3]/6,
        // KL = (5/11) ln(10/11) + (6/11) ln(12/11) ≈ 0.00414 (i = 7: ≈ 0.153, i = 8: ≈ 0.0476,
        // i = 6 clips into an empty bin).
        let (best, scores) = best_slice(&[0.0, 0.0, 0.0, 5.0, 1.0, 0.0, 3.0, 2.0], 2);
        assert!(scores[2].1.is_infinite(), "{scores:?}");
        assert_eq!(best, 5);
        let kl5 = (5.0 / 11.0) * (10.0f64 / 11.0).ln() + (6.0 / 11.0) * (12.0f64 / 11.0).ln();
        assert!((scores[3].1 - kl5).abs() < 1e-12, "{scores:?}");
        // A single bin with nothing clipped is still a candidate (Q = P, nothing lost).
        assert_eq!(best_slice(&[0.0, 4.0, 0.0, 0.0], 2).0, 4);
        // Only degenerate slices: the full histogram.
        assert_eq!(best_slice(&[0.0, 0.0, 7.0, 1.0], 2).0, 4);
    }

    #[test]
    fn a_near_zero_spike_does_not_decide_the_threshold() {
        // Shaped like magika's GELU output: 39.5 % of the values just below 0, 10 % in the next
        // bin, a decaying bulk and a thin tail up to 2048 (bins of about 1), on uint8 (two
        // signs: n_q = 128).
        let n = 100_000.0;
        let spread = |vals: &mut Vec<f32>, lo: f32, count: f64| {
            let c = count.round() as usize;
            vals.extend((0..c).map(|k| lo + (k as f32 + 0.5) / c as f32));
        };
        let mut vals = Vec::new();
        spread(&mut vals, -1.0, 0.395 * n);
        spread(&mut vals, 1.0, 0.10 * n);
        for j in 2..2048 {
            let share = 0.011 * (-((j - 2) as f64) / 45.0).exp() + 0.00002;
            spread(&mut vals, j as f32, share * n);
        }
        let v = stats(&vals);
        let t = QuantTarget::new(0, 255, false).unwrap();
        let nq = quantized_bins(&v, &t);
        assert_eq!(nq, 128);
        // As it is, the spike decides: the smallest slice wins (threshold 128/2048 of the
        // abs-max), since any larger one spreads the spike over two bins in Q.
        let raw = v.abs.rebin(NUM_BINS, 0.0, v.abs_max(), true);
        assert!(raw[0] > 3.0 * raw[1]);
        assert_eq!(best_slice(&raw, nq).0, nq);
        // Tamed (bin 0 no larger than bin 1), the divergence looks at the bulk.
        let r = range(&v, &t);
        let smallest = v.abs_max() * nq as f64 / NUM_BINS as f64;
        assert!(r.hi as f64 > 1.4 * smallest, "{r:?} vs {smallest}");
    }

    #[test]
    fn data_away_from_zero_keeps_its_range() {
        // Positive values in [0.2, 0.85] (a sigmoid-like activation) on uint8: the |x|
        // histogram is empty below 0.2. The threshold at the first non-empty bin clipped every
        // value onto one level with KL 0; now the range keeps (nearly) all of the data.
        let vals: Vec<f32> = (0..20_000)
            .map(|i| {
                let u = i as f32 / 19_999.0;
                0.2 + 0.65 * u * u
            })
            .collect();
        let r = range(&stats(&vals), &QuantTarget::new(0, 255, false).unwrap());
        assert_eq!(r.lo, 0.0);
        assert!(r.hi > 0.8, "{r:?}");
    }

    fn stats(vals: &[f32]) -> Views {
        let mut s = TensorStats::new();
        s.observe(vals);
        Views::new("t", &s).unwrap()
    }

    #[test]
    fn levels_per_target() {
        let two_sided = stats(&[-1.0, 2.0]);
        let one_sided = stats(&[0.5, 2.0]);
        let t = |a, b, s| QuantTarget::new(a, b, s).unwrap();
        assert_eq!(quantized_bins(&two_sided, &t(-127, 127, true)), 128);
        assert_eq!(quantized_bins(&two_sided, &t(0, 255, true)), 128);
        assert_eq!(quantized_bins(&two_sided, &t(-128, 127, false)), 128);
        assert_eq!(quantized_bins(&one_sided, &t(0, 255, false)), 256);
        assert_eq!(quantized_bins(&one_sided, &t(-127, 127, true)), 128);
        assert_eq!(quantized_bins(&two_sided, &t(-32767, 32767, true)), 32768);
    }

    #[test]
    fn clips_a_far_outlier_but_not_a_uniform_tensor() {
        let sym = QuantTarget::new(-127, 127, true).unwrap();
        // Uniform values over [-1, 1]: no clipping pays off; the threshold stays near 1
        // (i = 2048 has KL 0 up to re-binning noise).
        let uniform: Vec<f32> = (0..20001).map(|i| (i as f32 - 10000.0) / 10000.0).collect();
        let r = range(&stats(&uniform), &sym);
        assert!(r.hi > 0.98 && r.hi <= 1.0, "{r:?}");
        // Same values plus one outlier at 100: the search reaches 128 bins of 100/2048 each
        // (≈ 6.25), KL prefers clipping the nearly empty span [1, 100]; the outlier alone
        // cannot pull the range out (reference 128/128 bins would return 100).
        let mut with_outlier = uniform.clone();
        with_outlier.push(100.0);
        let r = range(&stats(&with_outlier), &sym);
        assert!(r.hi < 10.0 && r.hi >= 1.0, "{r:?}");
        // 16-bit: n_q = 32768 > 2048 bins → full range.
        let wide = QuantTarget::new(-32767, 32767, true).unwrap();
        let r = range(&stats(&with_outlier), &wide);
        assert_eq!(r.hi, 100.0);
    }
}
