//! One calibrated tensor as the report shows it: its histogram re-binned onto a linear axis
//! over the observed range, the range every method proposes, the one chosen, and the
//! figures that judge a range (clipped mass, expected quantization error, scale and zero
//! point). Built from [`TensorStats`]; the result is plain data ([`TensorRow`]).
//!
//! Both the display histogram and the clipped mass read the statistics the way the range
//! methods do ([`Density::signed`]): each canonical bin, clipped to the observed
//! `[min, max]`, holds its count spread uniformly; exact zeros are a point mass at 0.

use crate::calib::density::Density;
use crate::calib::{
    compute_range, CalibError, Method, MethodOptions, QuantTarget, Range, TensorStats,
};
use crate::quant::params::{scale_zp, QType};

/// The methods whose candidate ranges the report draws, in legend order.
pub const CANDIDATE_METHODS: [Method; 4] = [
    Method::MinMax,
    Method::Percentile,
    Method::Entropy,
    Method::Mse,
];

/// Default number of display bins.
pub const DISPLAY_BINS: usize = 120;

/// A histogram on a linear axis: `counts[i]` is the (possibly fractional) number of values
/// in `[lo + i·w, lo + (i+1)·w)` with `w = (hi - lo) / counts.len()`; the last bin is closed.
#[derive(Clone, Debug, PartialEq)]
pub struct DisplayHistogram {
    pub lo: f64,
    pub hi: f64,
    pub counts: Vec<f64>,
}

impl DisplayHistogram {
    /// Width of one bin.
    pub fn bin_width(&self) -> f64 {
        if self.counts.is_empty() {
            0.0
        } else {
            (self.hi - self.lo) / self.counts.len() as f64
        }
    }
}

/// Re-bins a tensor's finite values onto `bins` equal bins over its observed `[min, max]`
/// (exact zeros included, in the bin holding 0). `None` when no finite value was seen.
/// When every value is equal, one bin of zero width holds them all.
pub fn display_histogram(stats: &TensorStats, bins: usize) -> Option<DisplayHistogram> {
    let d = Density::signed(stats)?;
    let (lo, hi) = (d.min, d.max);
    if hi <= lo || bins == 0 {
        return Some(DisplayHistogram {
            lo,
            hi: lo,
            counts: vec![d.total],
        });
    }
    let n = bins;
    let w = (hi - lo) / n as f64;
    let index = |x: f64| (((x - lo) / w).floor().max(0.0) as usize).min(n - 1);
    let mut counts = vec![0.0f64; n];
    for s in &d.segments {
        if s.hi <= s.lo {
            counts[index(s.lo)] += s.count;
            continue;
        }
        let density = s.count / (s.hi - s.lo);
        let (first, last) = (index(s.lo), index(s.hi));
        if first == last {
            counts[first] += s.count;
            continue;
        }
        for (i, c) in counts.iter_mut().enumerate().take(last + 1).skip(first) {
            let b_lo = if i == first { s.lo } else { lo + i as f64 * w };
            let b_hi = if i == last {
                s.hi
            } else {
                lo + (i + 1) as f64 * w
            };
            *c += density * (b_hi - b_lo).max(0.0);
        }
    }
    Some(DisplayHistogram { lo, hi, counts })
}

/// Fraction of the finite observed values outside `[lo, hi]` (0 when none were seen).
pub fn clipped_mass(stats: &TensorStats, lo: f64, hi: f64) -> f64 {
    let Some(d) = Density::signed(stats) else {
        return 0.0;
    };
    let mut out = 0.0;
    for s in &d.segments {
        if s.hi <= s.lo {
            if s.lo < lo || s.lo > hi {
                out += s.count;
            }
            continue;
        }
        let width = s.hi - s.lo;
        let below = (lo.min(s.hi) - s.lo).max(0.0);
        let above = (s.hi - hi.max(s.lo)).max(0.0);
        out += s.count * ((below + above) / width).min(1.0);
    }
    out / d.total
}

/// One method's proposal for a tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub method: String,
    pub lo: f32,
    pub hi: f32,
    pub scale: f32,
    pub zero_point: i64,
    /// Expected quantization MSE of this range (squared tensor units per value).
    pub expected_mse: f64,
    /// Fraction of the observed values outside the range.
    pub clipped: f64,
}

/// Counts and moments of the observed values.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// All values seen (finite or not).
    pub count: u64,
    pub finite: u64,
    pub zeros: u64,
    pub nan: u64,
    pub infinite: u64,
    pub min: f32,
    pub max: f32,
    pub mean: f64,
    pub std: f64,
    /// Mean of x² over the finite values (signal power, for expected SQNR).
    pub mean_square: f64,
}

/// One calibrated tensor (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRow {
    pub name: String,
    /// The integer grid, e.g. `u8 asymmetric [0, 255]`.
    pub qtype: String,
    /// The method that chose the range (under `auto`, the winner).
    pub method: String,
    /// The chosen range, as written to the model.
    pub lo: f32,
    pub hi: f32,
    pub scale: f32,
    pub zero_point: i64,
    /// Fraction of the observed values outside the chosen range.
    pub clipped: f64,
    /// Expected quantization MSE of the chosen range.
    pub expected_mse: f64,
    pub observed: Observed,
    pub histogram: DisplayHistogram,
    /// Every method's range, in [`CANDIDATE_METHODS`] order.
    pub candidates: Vec<Candidate>,
}

/// `10·log10(signal / noise)`; `+inf` without noise, `None` without signal.
pub fn sqnr_db(signal: f64, noise: f64) -> Option<f64> {
    if signal.is_nan() || signal <= 0.0 {
        return None;
    }
    if noise <= 0.0 {
        return Some(f64::INFINITY);
    }
    Some(10.0 * (signal / noise).log10())
}

impl TensorRow {
    /// Builds the row of tensor `name`: its statistics, the chosen range and method, and the
    /// grid it is quantized to; every method in [`CANDIDATE_METHODS`] is run with `opts`.
    pub fn from_stats(
        name: &str,
        stats: &TensorStats,
        chosen: (f32, f32),
        method: Method,
        qtype: &QType,
        opts: &MethodOptions,
    ) -> Result<TensorRow, CalibError> {
        let target = QuantTarget::of(qtype);
        let ranges = CANDIDATE_METHODS
            .iter()
            .map(|&m| compute_range(name, stats, m, &target, opts))
            .collect::<Result<Vec<Range>, _>>()?;
        TensorRow::from_candidates(name, stats, chosen, method, qtype, &ranges)
    }

    /// As [`TensorRow::from_stats`], with every method's range given (in
    /// [`CANDIDATE_METHODS`] order, on `qtype`'s grid: computed once, where the ranges
    /// were chosen).
    pub fn from_candidates(
        name: &str,
        stats: &TensorStats,
        chosen: (f32, f32),
        method: Method,
        qtype: &QType,
        ranges: &[Range],
    ) -> Result<TensorRow, CalibError> {
        let target = QuantTarget::of(qtype);
        let histogram =
            display_histogram(stats, DISPLAY_BINS).ok_or_else(|| CalibError::Empty {
                tensor: name.to_string(),
            })?;
        let mut candidates = Vec::with_capacity(CANDIDATE_METHODS.len());
        let mut chosen_mse = None;
        for (m, r) in CANDIDATE_METHODS.into_iter().zip(ranges) {
            debug_assert_eq!(r.method, m);
            let p = scale_zp(r.lo, r.hi, qtype);
            if m == method && (r.lo, r.hi) == chosen {
                chosen_mse = Some(r.expected_mse);
            }
            candidates.push(Candidate {
                method: m.name().to_string(),
                lo: r.lo,
                hi: r.hi,
                scale: p.scale,
                zero_point: p.zero_point,
                expected_mse: r.expected_mse,
                clipped: clipped_mass(stats, r.lo as f64, r.hi as f64),
            });
        }
        let expected_mse = match chosen_mse {
            Some(e) => e,
            // A range from elsewhere (a ranges file made with other options): score it.
            None => {
                let views = crate::calib::methods::Views::new(name, stats)?;
                crate::calib::methods::score(&views, chosen.0 as f64, chosen.1 as f64, &target)
            }
        };
        let p = scale_zp(chosen.0, chosen.1, qtype);
        let finite = stats.finite();
        let (pos_inf, neg_inf) = stats.infinities();
        let observed = Observed {
            count: stats.count(),
            finite,
            zeros: stats.zeros(),
            nan: stats.nan(),
            infinite: pos_inf + neg_inf,
            min: stats.min().unwrap_or(0.0),
            max: stats.max().unwrap_or(0.0),
            mean: stats.mean().unwrap_or(0.0),
            std: stats.std().unwrap_or(0.0),
            mean_square: if finite > 0 {
                stats.sum_sq() / finite as f64
            } else {
                0.0
            },
        };
        Ok(TensorRow {
            name: name.to_string(),
            qtype: format!(
                "{} {} [{}, {}]",
                qtype.dtype,
                if qtype.symmetric {
                    "symmetric"
                } else {
                    "asymmetric"
                },
                qtype.qmin,
                qtype.qmax
            ),
            method: method.name().to_string(),
            lo: chosen.0,
            hi: chosen.1,
            scale: p.scale,
            zero_point: p.zero_point,
            clipped: clipped_mass(stats, chosen.0 as f64, chosen.1 as f64),
            expected_mse,
            observed,
            histogram,
            candidates,
        })
    }

    /// Expected SQNR of the chosen range: mean square over expected MSE, in dB.
    pub fn expected_sqnr_db(&self) -> Option<f64> {
        sqnr_db(self.observed.mean_square, self.expected_mse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DType;

    fn stats(vals: &[f32]) -> TensorStats {
        let mut s = TensorStats::new();
        s.observe(vals);
        s
    }

    #[test]
    fn display_bins_split_canonical_bins_by_overlap() {
        // abs-max 10 → canonical width 2^-8; value v sits in [v, v + 1/256), clipped to max.
        let s = stats(&[1.0, 2.0, 2.0, 4.0, 10.0, 0.0]);
        let h = display_histogram(&s, 9).unwrap();
        assert_eq!((h.lo, h.hi, h.bin_width()), (0.0, 10.0, 10.0 / 9.0));
        // Bins of width 10/9: 0 → [0, 1.11), 1 → [1.11, 2.22), 3 → [3.33, 4.44), 8 → [8.89, 10].
        let mut want = vec![0.0; 9];
        want[0] = 2.0; // the zero and 1.0
        want[1] = 2.0; // both 2.0
        want[3] = 1.0; // 4.0
        want[8] = 1.0; // 10.0, a point mass at the max
        assert_eq!(h.counts, want);
        // abs-max 1 → width 2^-11: -1 and 1 are point masses at the ends of the axis.
        let u = stats(&[-1.0, 1.0]);
        let h = display_histogram(&u, 4).unwrap();
        assert_eq!(h.counts, vec![1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn straddling_segment_is_split_in_proportion() {
        // abs-max 1.5 → canonical width 2^-11: 0.5 spreads over [0.5, 0.5 + 2^-11), 1.5 is a
        // point mass at the max. Axis [0.5, 1.5]: with 2048 display bins each is exactly one
        // canonical bin wide, so the segment falls in bin 0 alone.
        let s = stats(&[0.5, 1.5]);
        let h = display_histogram(&s, 2048).unwrap();
        assert_eq!(h.counts[0], 1.0);
        assert_eq!(h.counts[2047], 1.0);
        // With 4096 display bins (half the canonical width) the segment splits 1/2, 1/2.
        let h = display_histogram(&s, 4096).unwrap();
        assert_eq!((h.counts[0], h.counts[1]), (0.5, 0.5));
        assert_eq!(h.counts[4095], 1.0);
        assert_eq!(h.counts.iter().sum::<f64>(), 2.0);
    }

    #[test]
    fn constant_tensor_is_one_bin() {
        let h = display_histogram(&stats(&[3.0, 3.0, 3.0]), 50).unwrap();
        assert_eq!((h.lo, h.hi, h.counts.clone()), (3.0, 3.0, vec![3.0]));
        assert!(display_histogram(&stats(&[f32::NAN]), 50).is_none());
    }

    #[test]
    fn clipped_mass_counts_values_outside() {
        // Values 1..=10 (width 2^-8: each in [v, v + 1/256), 10 a point mass at the max).
        let vals: Vec<f32> = (1..=10).map(|v| v as f32).collect();
        let s = stats(&vals);
        assert_eq!(clipped_mass(&s, 0.0, 10.0), 0.0);
        // 6..10 outside: half of the values.
        assert_eq!(clipped_mass(&s, 0.0, 5.5), 0.5);
        // The bin of 5 cut in its middle: half of it is outside too.
        assert_eq!(clipped_mass(&s, 0.0, 5.0 + 1.0 / 512.0), 0.55);
        // Both sides: 1 and 2 below 2.0 + 1/256, 9 and 10 above 8.5.
        assert_eq!(clipped_mass(&s, 2.0 + 1.0 / 256.0, 8.5), 0.4);
        // Exact zeros are a point mass at 0, inside every range (ranges contain 0).
        let z = stats(&[0.0, 0.0, 0.0, 4.0]);
        assert_eq!(clipped_mass(&z, 0.0, 2.0), 0.25);
        assert_eq!(clipped_mass(&stats(&[f32::NAN]), 0.0, 1.0), 0.0);
    }

    #[test]
    fn row_has_every_candidate_and_the_chosen_figures() {
        let mut vals: Vec<f32> = (0..1000).map(|i| (i as f32 / 1000.0) - 0.3).collect();
        vals.push(50.0); // an outlier
        let s = stats(&vals);
        let q = QType::new(DType::U8, false, false).unwrap();
        let opts = MethodOptions::default();
        let r = compute_range("t", &s, Method::Mse, &QuantTarget::of(&q), &opts).unwrap();
        let row = TensorRow::from_stats("t", &s, (r.lo, r.hi), Method::Mse, &q, &opts).unwrap();
        let names: Vec<&str> = row.candidates.iter().map(|c| c.method.as_str()).collect();
        assert_eq!(names, ["minmax", "percentile", "entropy", "mse"]);
        assert_eq!(row.expected_mse, r.expected_mse);
        assert_eq!((row.lo, row.hi), (r.lo, r.hi));
        let p = scale_zp(r.lo, r.hi, &q);
        assert_eq!((row.scale, row.zero_point), (p.scale, p.zero_point));
        assert_eq!(row.candidates[0].clipped, 0.0, "minmax clips nothing");
        for c in &row.candidates {
            assert_eq!(c.clipped, clipped_mass(&s, c.lo as f64, c.hi as f64));
        }
        assert_eq!(row.clipped, clipped_mass(&s, r.lo as f64, r.hi as f64));
        assert_eq!(row.qtype, "u8 asymmetric [0, 255]");
        assert_eq!(row.observed.finite, 1001);
        assert!(row.expected_sqnr_db().unwrap().is_finite());
        // A range no method proposed is scored on its own.
        let other = TensorRow::from_stats("t", &s, (-1.0, 1.0), Method::Mse, &q, &opts).unwrap();
        assert!(other.expected_mse > 0.0);
        assert_ne!(other.expected_mse, row.expected_mse);
    }
}
