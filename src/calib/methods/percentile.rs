//! `percentile`: keep `p` % of the mass (default 99.999), following ONNX Runtime's rules on
//! qrange's canonical histogram.
//!
//! - On |x| (default, ONNX Runtime's `symmetric=True`): `t` = the `p`-quantile of |x|, range
//!   `[-t, t]`, then clamped to the observed `[min, max]` (a post-ReLU tensor gets `[0, t]`).
//! - On each tail: `lo` = the `(100-p)/200` quantile and `hi` = the `1-(100-p)/200` quantile
//!   of the signed values.
//!
//! Difference from the reference: ONNX Runtime returns the *left edge* of the bin where the
//! cumulative distribution crosses `p` (up to one bin short); here the quantile is
//! interpolated inside the bin (mass uniform in a bin, as everywhere in [`crate::calib::density`]),
//! exact zeros and clipped end bins are point masses, and the bins are the canonical grid.

use super::{finish, Views};
use crate::calib::{Method, QuantTarget, Range};

/// The percentile range (`p` in (0, 100], validated by the caller).
pub fn range(views: &Views, target: &QuantTarget, p: f64, on_abs: bool) -> Range {
    let (lo, hi) = if on_abs {
        let t = views.abs.quantile(p / 100.0);
        (-t, t)
    } else {
        let tail = (100.0 - p) / 200.0;
        (
            views.signed.quantile(tail),
            views.signed.quantile(1.0 - tail),
        )
    };
    let (lo, hi) = views.clamp(lo, hi);
    finish(views, lo, hi, Method::Percentile, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::TensorStats;

    fn views(vals: &[f32]) -> Views {
        let mut s = TensorStats::new();
        s.observe(vals);
        Views::new("t", &s).unwrap()
    }

    fn u8() -> QuantTarget {
        QuantTarget::new(0, 255, false).unwrap()
    }

    #[test]
    fn on_abs_interpolates_inside_the_bin() {
        // 1, 2, …, 99 and one outlier 3000. abs-max 3000 → k = 0: unit bins; value i is read
        // as uniform over [i, i+1), the outlier's bin is clipped to the point 3000. N = 100.
        let mut vals: Vec<f32> = (1..=99).map(|i| i as f32).collect();
        vals.push(3000.0);
        let v = views(&vals);
        // p = 99: 99 values needed; bins 1..98 give 98, the 99th comes from [99, 100) in full
        // → t = 100 (the reference's left-edge rule would say 99). [-100, 100] clamped to
        // [min, max] = [1, 3000] is [1, 100]; 0 added → [0, 100].
        let r = range(&v, &u8(), 99.0, true);
        assert_eq!((r.lo, r.hi), (0.0, 100.0));
        // p = 98.5: 98.5 values → bins 1..98 (98) and half of [99, 100) → t = 99.5.
        let r = range(&v, &u8(), 98.5, true);
        assert_eq!(r.hi, 99.5);
        // p = 99.5 needs part of the outlier's point mass → t = 3000.
        let r = range(&v, &u8(), 99.5, true);
        assert_eq!(r.hi, 3000.0);
    }

    #[test]
    fn zeros_are_a_point_mass() {
        // 90 zeros and 10 values 1..10 (abs-max 10 → k = -8, bins of 1/256; value i is read
        // over [i, i + 1/256)). p = 95: 95 needed = 90 zeros + 5 → the 5th value's bin in full:
        // t = 5 + 1/256.
        let mut vals = vec![0.0f32; 90];
        vals.extend((1..=10).map(|i| i as f32));
        let r = range(&views(&vals), &u8(), 95.0, true);
        assert_eq!(r.hi, 5.0 + 1.0 / 256.0);
        // p = 50: inside the zeros → t = 0 → range [0, 0].
        let r = range(&views(&vals), &u8(), 50.0, true);
        assert_eq!((r.lo, r.hi), (0.0, 0.0));
    }

    #[test]
    fn each_tail() {
        // -1000, 1, 2, …, 98, 2000 (N = 100). abs-max 2000 → k = -1: bins of 0.5; value i is
        // read over [i, i + 0.5); -1000 and 2000 sit in bins clipped to points.
        let mut vals = vec![-1000.0f32];
        vals.extend((1..=98).map(|i| i as f32));
        vals.push(2000.0);
        let v = views(&vals);
        // p = 97: 1.5 % off each tail. Lower: 1.5 values → the point -1000 (1) plus half of
        // [1, 1.5) → 1.25. Upper: 98.5 values → point + 1..97 (98) + half of [98, 98.5)
        // → 98.25. Range [1.25, 98.25], 0 added → [0, 98.25].
        let r = range(&v, &u8(), 97.0, false);
        assert_eq!((r.lo, r.hi), (0.0, 98.25));
        // p = 98: 1 value off each tail: lower = -1000 (the point mass reaches 1 exactly),
        // upper = 99 values → all of [98, 98.5) → 98.5.
        let r = range(&v, &u8(), 98.0, false);
        assert_eq!((r.lo, r.hi), (-1000.0, 98.5));
        // p = 100 keeps everything.
        let r = range(&v, &u8(), 100.0, false);
        assert_eq!((r.lo, r.hi), (-1000.0, 2000.0));
    }

    #[test]
    fn symmetric_target_and_negative_data() {
        // Negative-only data [-8, -1], |x| percentile 100 → t = 8, clamped to [-8, -1] → [-8, -1];
        // 0 added → [-8, 0]; on a symmetric target → [-8, 8].
        let v = views(&[-8.0, -4.0, -1.0]);
        let r = range(&v, &u8(), 100.0, true);
        assert_eq!((r.lo, r.hi), (-8.0, 0.0));
        let sym = QuantTarget::new(-127, 127, true).unwrap();
        let r = range(&v, &sym, 100.0, true);
        assert_eq!((r.lo, r.hi), (-8.0, 8.0));
    }
}
