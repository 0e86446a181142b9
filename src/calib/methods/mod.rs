//! Range-selection methods, one file each. Every method reads the same prepared
//! distributions of a tensor ([`Views`]), takes the integer grid it targets, and returns a
//! [`Range`] that contains 0 (and is `[-a, a]` on a symmetric target), scored with
//! [`crate::calib::density::expected_mse`] on the signed distribution.

pub mod auto;
pub mod entropy;
pub mod minmax;
pub mod mse;
pub mod percentile;

pub use auto::AutoChoice;

use super::density::{Density, Grid, Scorer};
use super::stats::TensorStats;
use super::{CalibError, Method, QuantTarget, Range};
use serde::{Deserialize, Serialize};

/// Options of the methods (defaults follow ONNX Runtime where it has one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodOptions {
    /// Percentile of the mass kept by `percentile`, in (0, 100]. Default 99.999.
    pub percentile: f64,
    /// `percentile` thresholds |x| (ONNX Runtime's default) instead of cutting
    /// `(100 - p)/2` % off each tail. Default true.
    pub percentile_abs: bool,
    /// `minmax` returns `[-a, a]` with `a` the abs-max (ONNX Runtime's
    /// `CalibTensorRangeSymmetric`). Default false.
    pub minmax_symmetric: bool,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            percentile: 99.999,
            percentile_abs: true,
            minmax_symmetric: false,
        }
    }
}

impl MethodOptions {
    /// Checks the option values.
    pub fn validate(&self) -> Result<(), CalibError> {
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            return Err(CalibError::InvalidPercentile(self.percentile));
        }
        Ok(())
    }
}

/// The distributions of one tensor that the methods read.
#[derive(Clone, Debug)]
pub struct Views {
    /// Signed values (what the expected MSE is computed on).
    pub signed: Density,
    /// |x| values.
    pub abs: Density,
    /// `signed`, prepared for scoring ([`score`], [`finish`]).
    pub scorer: Scorer,
}

impl Views {
    /// Prepares the views; errors when the tensor has no finite value.
    pub fn new(tensor: &str, stats: &TensorStats) -> Result<Views, CalibError> {
        let none = || {
            if stats.count() == 0 {
                CalibError::Empty {
                    tensor: tensor.to_string(),
                }
            } else {
                let (p, n) = stats.infinities();
                CalibError::NoFiniteValues {
                    tensor: tensor.to_string(),
                    count: stats.count(),
                    nan: stats.nan(),
                    inf: p + n,
                }
            }
        };
        let signed = Density::signed(stats).ok_or_else(none)?;
        let abs = Density::abs(stats).ok_or_else(none)?;
        Ok(Views::from_densities(signed, abs))
    }

    /// Views of given signed and |x| densities.
    pub fn from_densities(signed: Density, abs: Density) -> Views {
        let scorer = Scorer::new(&signed);
        Views {
            signed,
            abs,
            scorer,
        }
    }

    /// Smallest observed value.
    pub fn min(&self) -> f64 {
        self.signed.min
    }

    /// Largest observed value.
    pub fn max(&self) -> f64 {
        self.signed.max
    }

    /// Largest |x|.
    pub fn abs_max(&self) -> f64 {
        self.abs.max
    }

    /// Clamps `[lo, hi]` to the observed `[min, max]`.
    pub fn clamp(&self, lo: f64, hi: f64) -> (f64, f64) {
        (
            lo.clamp(self.min(), self.max()),
            hi.clamp(self.min(), self.max()),
        )
    }
}

/// The final form of a candidate range as the quantizer will see it: f32 bounds, 0 included,
/// `[-a, a]` on a symmetric target.
pub fn final_bounds(lo: f64, hi: f64, target: &QuantTarget) -> (f32, f32) {
    let mut lo = (lo as f32).min(0.0) + 0.0;
    let mut hi = (hi as f32).max(0.0) + 0.0;
    if target.symmetric {
        let a = (-lo).max(hi) + 0.0;
        lo = -a + 0.0;
        hi = a;
    }
    (lo, hi)
}

/// Expected MSE of the final form of `[lo, hi]`.
pub fn score(views: &Views, lo: f64, hi: f64, target: &QuantTarget) -> f64 {
    let (lo, hi) = final_bounds(lo, hi, target);
    views
        .scorer
        .expected_mse(&Grid::new(lo as f64, hi as f64, target))
}

/// Builds the [`Range`] of a candidate (final form and its score).
pub fn finish(views: &Views, lo: f64, hi: f64, method: Method, target: &QuantTarget) -> Range {
    let (lo, hi) = final_bounds(lo, hi, target);
    Range {
        lo,
        hi,
        method,
        expected_mse: score(views, lo as f64, hi as f64, target),
    }
}

/// The range of tensor `tensor` by `method` on `target`.
pub fn compute_range(
    tensor: &str,
    stats: &TensorStats,
    method: Method,
    target: &QuantTarget,
    opts: &MethodOptions,
) -> Result<Range, CalibError> {
    opts.validate()?;
    QuantTarget::new(target.qmin, target.qmax, target.symmetric)?;
    let views = Views::new(tensor, stats)?;
    Ok(match method {
        Method::MinMax => minmax::range(&views, target, opts.minmax_symmetric),
        Method::Percentile => {
            percentile::range(&views, target, opts.percentile, opts.percentile_abs)
        }
        Method::Entropy => entropy::range(&views, target),
        Method::Mse => mse::range(&views, target),
        Method::Auto | Method::Adaptive => auto::choose(&views, target, opts).chosen,
    })
}

/// Threads [`compute_ranges`] uses at most.
pub const RANGE_THREADS: usize = 2;

/// [`compute_range`] of many tensors (`(name, statistics, target)`), on up to
/// [`RANGE_THREADS`] threads (ranges are independent). The results are in the order of
/// `jobs` and do not depend on the number of threads.
pub fn compute_ranges(
    jobs: &[(&str, &TensorStats, QuantTarget)],
    method: Method,
    opts: &MethodOptions,
) -> Vec<Result<Range, CalibError>> {
    par_map(jobs.len(), |j| {
        let (name, stats, target) = &jobs[j];
        compute_range(name, stats, method, target, opts)
    })
}

/// Every method's range of each tensor at once ([`auto::choose`]: the per-tensor choice of
/// `auto` and the candidates of `minmax`, `percentile`, `entropy`, `mse`), threaded and
/// ordered as [`compute_ranges`].
pub fn compute_candidates(
    jobs: &[(&str, &TensorStats, QuantTarget)],
    opts: &MethodOptions,
) -> Vec<Result<AutoChoice, CalibError>> {
    par_map(jobs.len(), |j| {
        let (name, stats, target) = &jobs[j];
        opts.validate()?;
        QuantTarget::new(target.qmin, target.qmax, target.symmetric)?;
        let views = Views::new(name, stats)?;
        Ok(auto::choose(&views, target, opts))
    })
}

/// `f(0..n)` on up to [`RANGE_THREADS`] threads, results in index order.
fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(RANGE_THREADS)
        .min(n);
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    // Jobs are taken in turn from a shared counter (their costs differ a lot), each result
    // stored at its job's index.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if j >= n {
                            return out;
                        }
                        out.push((j, f(j)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    done.sort_by_key(|d| d.0);
    done.into_iter().map(|d| d.1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn errors_name_the_tensor() {
        let t = QuantTarget::new(0, 255, false).unwrap();
        let o = MethodOptions::default();
        let empty = TensorStats::new();
        let e = compute_range("conv1.out", &empty, Method::MinMax, &t, &o).unwrap_err();
        assert!(matches!(e, CalibError::Empty { .. }));
        assert!(e.to_string().contains("'conv1.out'"), "{e}");
        let mut nan = TensorStats::new();
        nan.observe(&[f32::NAN, f32::NAN, f32::INFINITY]);
        for m in [
            Method::MinMax,
            Method::Percentile,
            Method::Entropy,
            Method::Mse,
            Method::Auto,
        ] {
            let e = compute_range("x", &nan, m, &t, &o).unwrap_err();
            assert!(
                matches!(e, CalibError::NoFiniteValues { nan: 2, inf: 1, .. }),
                "{e}"
            );
        }
        let mut ok = TensorStats::new();
        ok.observe(&[1.0]);
        let bad = MethodOptions {
            percentile: 0.0,
            ..MethodOptions::default()
        };
        assert!(matches!(
            compute_range("x", &ok, Method::Percentile, &t, &bad),
            Err(CalibError::InvalidPercentile(_))
        ));
        let bad_target = QuantTarget {
            qmin: 3,
            qmax: 255,
            symmetric: false,
        };
        assert!(compute_range("x", &ok, Method::MinMax, &bad_target, &o).is_err());
    }

    fn targets() -> Vec<QuantTarget> {
        vec![
            QuantTarget::new(0, 255, false).unwrap(),
            QuantTarget::new(-127, 127, true).unwrap(),
            QuantTarget::new(-8, 7, false).unwrap(),
            QuantTarget::new(-32767, 32767, true).unwrap(),
        ]
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -1.0f32..1.0,
            2 => 0.0f32..5.0,
            1 => -300.0f32..300.0,
            1 => Just(0.0f32),
            1 => Just(f32::NAN),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// On any data: every method's range holds 0, lies within the data's extent (plus 0),
        /// is symmetric on symmetric targets, and carries its own score; `mse` never loses to
        /// `minmax`; `auto` picks the smallest score among its candidates.
        #[test]
        fn method_invariants(vals in prop::collection::vec(value(), 1..150)) {
            let mut s = TensorStats::new();
            s.observe(&vals);
            prop_assume!(s.min().is_some());
            let (min, max) = (s.min().unwrap().min(0.0), s.max().unwrap().max(0.0));
            let a = s.abs_max();
            let o = MethodOptions::default();
            for t in targets() {
                let views = Views::new("x", &s).unwrap();
                let auto = auto::choose(&views, &t, &o);
                for r in &auto.candidates {
                    prop_assert!(r.lo <= 0.0 && 0.0 <= r.hi, "{r:?}");
                    if t.symmetric {
                        prop_assert_eq!(r.lo, -r.hi);
                        prop_assert!(r.hi <= a, "{r:?}");
                    } else {
                        prop_assert!(r.lo >= min && r.hi <= max, "{r:?}");
                    }
                    prop_assert_eq!(r.expected_mse, score(&views, r.lo as f64, r.hi as f64, &t));
                    let direct = compute_range("x", &s, r.method, &t, &o).unwrap();
                    prop_assert_eq!(&direct, r);
                }
                let (minmax, mse) = (auto.candidates[0], auto.candidates[3]);
                prop_assert!(mse.expected_mse <= minmax.expected_mse);
                for r in &auto.candidates {
                    prop_assert!(auto.chosen.expected_mse <= r.expected_mse);
                }
                let via = compute_range("x", &s, Method::Auto, &t, &o).unwrap();
                prop_assert_eq!(via, auto.chosen);
            }
        }
    }

    #[test]
    fn many_ranges_keep_the_order_of_the_jobs() {
        // Tensors of different sizes (different costs), one without finite values: the
        // results of compute_ranges are compute_range's, in job order, errors in place.
        let mut all = Vec::new();
        for k in 0..9 {
            let mut s = TensorStats::new();
            if k == 4 {
                s.observe(&[f32::NAN]);
            } else {
                let vals: Vec<f32> = (0..200 * (k + 1))
                    .map(|i| ((i * 7919 % 1000) as f32 / 100.0 - 3.0) * (k as f32 + 1.0))
                    .collect();
                s.observe(&vals);
            }
            all.push((format!("t{k}"), s));
        }
        let targets = targets();
        let jobs: Vec<(&str, &TensorStats, QuantTarget)> = all
            .iter()
            .enumerate()
            .map(|(k, (n, s))| (n.as_str(), s, targets[k % targets.len()]))
            .collect();
        let o = MethodOptions::default();
        let got = compute_ranges(&jobs, Method::Auto, &o);
        assert_eq!(got.len(), jobs.len());
        for ((name, s, t), r) in jobs.iter().zip(&got) {
            match (compute_range(name, s, Method::Auto, t, &o), r) {
                (Ok(a), Ok(b)) => assert_eq!(&a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{name}: {a:?} vs {b:?}"),
            }
        }
        assert!(got[4].as_ref().unwrap_err().to_string().contains("'t4'"));
    }

    #[test]
    fn method_names() {
        let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            ["minmax", "percentile", "entropy", "mse", "auto", "adaptive"]
        );
        for m in Method::ALL {
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.name())
            );
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
    }

    #[test]
    fn final_bounds_include_zero_and_symmetrize() {
        let asym = QuantTarget::new(0, 255, false).unwrap();
        let sym = QuantTarget::new(-127, 127, true).unwrap();
        assert_eq!(final_bounds(0.5, 2.0, &asym), (0.0, 2.0));
        assert_eq!(final_bounds(-3.0, -1.0, &asym), (-3.0, 0.0));
        assert_eq!(final_bounds(-0.5, 2.0, &sym), (-2.0, 2.0));
        let (lo, hi) = final_bounds(0.0, 0.0, &sym);
        assert_eq!((lo.to_bits(), hi.to_bits()), (0, 0));
    }

    #[test]
    fn every_method_returns_a_range_holding_zero() {
        let mut s = TensorStats::new();
        let vals: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 / 10.0 + 0.5)
            .collect();
        s.observe(&vals);
        for symmetric in [false, true] {
            let (qmin, qmax) = if symmetric { (-127, 127) } else { (0, 255) };
            let t = QuantTarget::new(qmin, qmax, symmetric).unwrap();
            for m in [
                Method::MinMax,
                Method::Percentile,
                Method::Entropy,
                Method::Mse,
                Method::Auto,
            ] {
                let r = compute_range("x", &s, m, &t, &MethodOptions::default()).unwrap();
                assert!(r.lo <= 0.0 && r.hi >= 0.0, "{m}: {r:?}");
                assert!(r.expected_mse.is_finite() && r.expected_mse >= 0.0);
                if symmetric {
                    assert_eq!(r.lo, -r.hi);
                } else {
                    assert_eq!(r.lo, 0.0, "{m}: positive data keeps lo at 0");
                }
                if m != Method::Auto {
                    assert_eq!(r.method, m);
                }
            }
        }
    }
}
