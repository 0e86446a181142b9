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
