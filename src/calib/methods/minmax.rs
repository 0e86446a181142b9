//! `minmax`: the observed `[min, max]` (ONNX Runtime's MinMax calibrator; across samples,
//! min of mins and max of maxes), or `[-a, a]` with `a` the abs-max when `symmetric`
//! (its `CalibTensorRangeSymmetric`). Exact: min/max are tracked outside the histogram.

use super::{finish, Views};
use crate::calib::{Method, QuantTarget, Range};

/// The min/max range of `views` on `target`.
pub fn range(views: &Views, target: &QuantTarget, symmetric: bool) -> Range {
    let (lo, hi) = if symmetric {
        (-views.abs_max(), views.abs_max())
    } else {
        (views.min(), views.max())
    };
    finish(views, lo, hi, Method::MinMax, target)
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

    #[test]
    fn hand_computed() {
        let v = views(&[-1.0, 0.25, 3.0]);
        let asym = QuantTarget::new(0, 255, false).unwrap();
        let r = range(&v, &asym, false);
        assert_eq!((r.lo, r.hi), (-1.0, 3.0));
        let r = range(&v, &asym, true);
        assert_eq!((r.lo, r.hi), (-3.0, 3.0));
        // Positive data: 0 is added.
        let r = range(&views(&[2.0, 5.0]), &asym, false);
        assert_eq!((r.lo, r.hi), (0.0, 5.0));
        // Symmetric target symmetrizes even without the option.
        let sym = QuantTarget::new(-127, 127, true).unwrap();
        let r = range(&views(&[-1.0, 0.5]), &sym, false);
        assert_eq!((r.lo, r.hi), (-1.0, 1.0));
    }

    #[test]
    fn expected_mse_of_an_exact_grid() {
        // Values 0 and 1 on uint8 [0, 1]: both are grid points (0 and 255·(1/255)), but the
        // scale is stored as f32: 1/255 rounded, so 255·s differs from 1 by < 2^-24 and the
        // error is < 2^-48 per value.
        let v = views(&[0.0, 1.0]);
        let r = range(&v, &QuantTarget::new(0, 255, false).unwrap(), false);
        assert!(r.expected_mse < 1e-14, "{}", r.expected_mse);
        // 0.3 and 0.5 on int8 symmetric [-127, 127]: a = 0.5, s = 0.5/127, so 0.5 = 127·s is
        // a grid point (error ~0). abs-max 0.5 gives k = -12, so 0.3 is read as uniform over
        // its bin [1228, 1229)·2^-12 clipped below at min = 0.3: [0.3, 0.300049]. That lies in
        // one rounding cell around 76·s ≈ 0.299213 (76.5·s ≈ 0.301181): the error is the mean
        // of (x - 76·s)² over it, halved for the two values.
        let v = views(&[0.3, 0.5]);
        let r = range(&v, &QuantTarget::new(-127, 127, true).unwrap(), false);
        let s = 0.5f64 / 127.0;
        let lo = 0.3f32 as f64;
        let hi = 1229.0 / 4096.0;
        let c = 76.0 * s;
        let bin_err = ((hi - c).powi(3) - (lo - c).powi(3)) / 3.0 / (hi - lo);
        let expected = bin_err / 2.0;
        assert!(
            (r.expected_mse - expected).abs() < 1e-3 * expected,
            "{} vs {expected}",
            r.expected_mse
        );
    }
}
