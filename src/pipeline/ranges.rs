//! Ranges: the activation range of every calibrated value, by the chosen method, written
//! into the plan. `--method adaptive` chooses the method itself ([`adaptive`]).
//!
//! Every method's range of a value on its grid is computed once ([`Candidates`]) and read
//! wherever it is needed: the adaptive selection's range sets, the written ranges, and the
//! report, which shows every method's range beside the chosen one.

pub mod adaptive;

use super::error::PipelineError;
use crate::calib::{
    compute_candidates, compute_ranges, AutoChoice, CalibError, Method, MethodOptions, QuantTarget,
    Range, TensorStats,
};
use crate::quant::plan::Plan;
use std::collections::BTreeMap;

/// Every method's range of calibrated values ([`crate::calib::methods::auto::choose`]:
/// `auto`'s choice and the `minmax`, `percentile`, `entropy`, `mse` candidates), per value
/// and grid, for one set of statistics. Filled as ranges are chosen; read by the report.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    by_value: BTreeMap<String, Vec<(QuantTarget, AutoChoice)>>,
}

/// A value to range: its name, statistics and grid.
pub type Job<'a> = (String, &'a TensorStats, QuantTarget);

impl Candidates {
    /// The candidates of `v` on `target`, when computed.
    pub fn get(&self, v: &str, target: &QuantTarget) -> Option<&AutoChoice> {
        self.by_value
            .get(v)?
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, c)| c)
    }

    /// The candidates of every job (computed for those not known yet, in parallel), in
    /// job order.
    pub fn fill(
        &mut self,
        jobs: &[Job],
        opts: &MethodOptions,
    ) -> Vec<Result<AutoChoice, CalibError>> {
        let missing: Vec<(&str, &TensorStats, QuantTarget)> = jobs
            .iter()
            .filter(|(v, _, t)| self.get(v, t).is_none())
            .map(|(v, s, t)| (v.as_str(), *s, *t))
            .collect();
        let mut computed = compute_candidates(&missing, opts).into_iter();
        jobs.iter()
            .map(|(v, _, t)| match self.get(v, t) {
                Some(c) => Ok(c.clone()),
                None => {
                    let c = computed.next().expect("one result per missing job")?;
                    self.by_value
                        .entry(v.clone())
                        .or_default()
                        .push((*t, c.clone()));
                    Ok(c)
                }
            })
            .collect()
    }

    /// The range of every job by `method`: read from the candidates where known, else
    /// computed (`auto`'s choice brings every candidate along, and they are kept).
    pub fn ranges(
        &mut self,
        jobs: &[Job],
        method: Method,
        opts: &MethodOptions,
    ) -> Vec<Result<Range, CalibError>> {
        if matches!(method, Method::Auto | Method::Adaptive) {
            return self
                .fill(jobs, opts)
                .into_iter()
                .map(|c| c.map(|c| c.chosen))
                .collect();
        }
        let missing: Vec<(&str, &TensorStats, QuantTarget)> = jobs
            .iter()
            .filter(|(v, _, t)| self.get(v, t).is_none())
            .map(|(v, s, t)| (v.as_str(), *s, *t))
            .collect();
        let mut computed = compute_ranges(&missing, method, opts).into_iter();
        jobs.iter()
            .map(|(v, _, t)| match self.get(v, t) {
                Some(c) => Ok(*c
                    .candidates
                    .iter()
                    .find(|r| r.method == method)
                    .expect("every method is a candidate")),
                None => computed.next().expect("one result per missing job"),
            })
            .collect()
    }
}

/// The values `plan` calibrates, in name order, each with its statistics and grid; stops at
/// the first value without statistics and returns that error beside the jobs before it (a
/// range error of an earlier value is then reported first).
pub fn calibration_jobs<'a>(
    plan: &Plan,
    stats: &'a BTreeMap<String, TensorStats>,
) -> (Vec<Job<'a>>, Option<PipelineError>) {
    let mut jobs = Vec::new();
    for v in plan.calibration_values() {
        let qtype = plan
            .calibrated_qtype(&v)
            .expect("calibration value comes from a decision");
        match stats.get(&v) {
            Some(s) => jobs.push((v, s, QuantTarget::of(&qtype))),
            None => return (jobs, Some(PipelineError::NoStatistics(v))),
        }
    }
    (jobs, None)
}

/// Fills the plan's ranges from statistics by `method`; returns the method chosen per
/// value.
pub fn choose_ranges(
    plan: &mut Plan,
    stats: &BTreeMap<String, TensorStats>,
    method: Method,
    opts: &MethodOptions,
    candidates: &mut Candidates,
) -> Result<BTreeMap<String, Method>, PipelineError> {
    let mut chosen = BTreeMap::new();
    let (jobs, missing) = calibration_jobs(plan, stats);
    let results = candidates.ranges(&jobs, method, opts);
    for ((v, _, _), r) in jobs.iter().zip(results) {
        let r = r?;
        plan.ranges.insert(v.clone(), (r.lo, r.hi));
        chosen.insert(v.clone(), r.method);
    }
    if let Some(e) = missing {
        return Err(e);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::compute_range;
    use crate::ir::DType;
    use crate::quant::params::QType;
    use crate::quant::plan::Decision;

    /// A plan calibrating `a` (u8) and, through a folded op's range, `r` for `b` (u16).
    fn plan_and_stats() -> (Plan, BTreeMap<String, TensorStats>) {
        let mut plan = Plan::default();
        let act = |dtype, range_from: Option<&str>| Decision::Activation {
            qtype: QType::new(dtype, false, false).unwrap(),
            share_with: None,
            range_from: range_from.map(String::from),
        };
        plan.values.insert("a".into(), act(DType::U8, None));
        plan.values.insert("b".into(), act(DType::U16, Some("r")));
        let mut stats = BTreeMap::new();
        for (name, scale) in [("a", 1.0f32), ("r", 40.0)] {
            let mut s = TensorStats::new();
            let vals: Vec<f32> = (0..4000)
                .map(|i| ((i * 7919 % 4001) as f32 / 4000.0 - 0.2).powi(3) * scale)
                .collect();
            s.observe(&vals);
            stats.insert(name.to_string(), s);
        }
        (plan, stats)
    }

    #[test]
    fn candidates_are_computed_once_per_value_and_grid_and_match_each_method() {
        let (plan, stats) = plan_and_stats();
        let opts = MethodOptions::default();
        let (jobs, missing) = calibration_jobs(&plan, &stats);
        assert!(missing.is_none());
        // The grid of `r` is that of the decision reading its range: u16.
        let r16 = QuantTarget::of(&QType::new(DType::U16, false, false).unwrap());
        assert_eq!(jobs[1].0, "r");
        assert_eq!(jobs[1].2, r16);
        let mut cands = Candidates::default();
        assert!(cands.get("r", &r16).is_none());
        for method in [
            Method::MinMax,
            Method::Percentile,
            Method::Entropy,
            Method::Mse,
            Method::Auto,
        ] {
            // Before and after the candidates are known: the method's own range.
            let got: Vec<Range> = cands
                .ranges(&jobs, method, &opts)
                .into_iter()
                .map(Result::unwrap)
                .collect();
            for ((v, s, t), r) in jobs.iter().zip(&got) {
                assert_eq!(
                    *r,
                    compute_range(v, s, method, t, &opts).unwrap(),
                    "{v} {method}"
                );
            }
            if method == Method::MinMax {
                cands.fill(&jobs, &opts);
            }
        }
        let first = cands.get("r", &r16).unwrap().clone();
        assert_eq!(cands.fill(&jobs, &opts)[1].as_ref().unwrap(), &first);
        assert_eq!(cands.by_value["r"].len(), 1, "computed again");
    }

    #[test]
    fn a_value_without_statistics_is_reported_after_earlier_range_errors() {
        let (plan, mut stats) = plan_and_stats();
        stats.remove("r");
        let mut p = plan.clone();
        let e = choose_ranges(
            &mut p,
            &stats,
            Method::MinMax,
            &MethodOptions::default(),
            &mut Candidates::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no statistics for value 'r'"), "{e}");
        assert!(p.ranges.contains_key("a"));
    }
}
