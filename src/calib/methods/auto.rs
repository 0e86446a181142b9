//! `auto`: run every method, score each candidate with the same expected-MSE measure, keep
//! the lowest. Ties go to the simpler method, in the order minmax, percentile, entropy, mse.
//! The chosen [`Range`] names the method that won; all candidates are returned for reports.

use super::{entropy, minmax, mse, percentile, MethodOptions, Views};
use crate::calib::{QuantTarget, Range};
use serde::{Deserialize, Serialize};

/// The winning range and every candidate (in the tie-break order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoChoice {
    pub chosen: Range,
    pub candidates: Vec<Range>,
}

/// Scores all methods on `views` and picks the lowest expected MSE.
pub fn choose(views: &Views, target: &QuantTarget, opts: &MethodOptions) -> AutoChoice {
    let candidates = vec![
        minmax::range(views, target, opts.minmax_symmetric),
        percentile::range(views, target, opts.percentile, opts.percentile_abs),
        entropy::range(views, target),
        mse::range(views, target),
    ];
    let mut chosen = candidates[0];
    for c in &candidates[1..] {
        if c.expected_mse < chosen.expected_mse {
            chosen = *c;
        }
    }
    AutoChoice { chosen, candidates }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::{Method, TensorStats};

    fn views(vals: &[f32]) -> Views {
        let mut s = TensorStats::new();
        s.observe(vals);
        Views::new("t", &s).unwrap()
    }

    #[test]
    fn exact_grid_ties_go_to_minmax() {
        // 0 and 1 on uint8: min/max puts both on grid points (error < 2^-48 from the f32
        // scale); mse's f = 1 candidate is the same range, so nothing beats min/max strictly.
        let v = views(&[0.0, 1.0, 0.0]);
        let a = choose(
            &v,
            &QuantTarget::new(0, 255, false).unwrap(),
            &MethodOptions::default(),
        );
        assert_eq!(a.chosen.method, Method::MinMax);
        assert_eq!((a.chosen.lo, a.chosen.hi), (0.0, 1.0));
        assert_eq!(a.candidates.len(), 4);
        for c in &a.candidates {
            assert!(a.chosen.expected_mse <= c.expected_mse);
        }
    }

    #[test]
    fn heavy_tails_do_not_pick_minmax() {
        // Laplace-like quantiles on a 4-bit grid: clipping pays (see mse's test), so the
        // winner is not min/max, and its score is the minimum of the candidates.
        let n = 5000;
        let mut vals = Vec::new();
        for i in 0..n {
            let x = -(1.0 - (i as f64 + 0.5) / n as f64).ln() as f32;
            vals.push(x);
            vals.push(-x);
        }
        let v = views(&vals);
        let a = choose(
            &v,
            &QuantTarget::new(-7, 7, true).unwrap(),
            &MethodOptions::default(),
        );
        assert_ne!(a.chosen.method, Method::MinMax);
        let best = a
            .candidates
            .iter()
            .map(|c| c.expected_mse)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(a.chosen.expected_mse, best);
        let minmax = a.candidates[0];
        assert!(a.chosen.expected_mse < 0.5 * minmax.expected_mse, "{a:?}");
    }
}
