//! `--method adaptive`: the range set whose simulated outputs are closest to the float
//! model's.
//!
//! Every range method gives a complete set of activation ranges: `auto` (per tensor, the
//! method with the lowest expected quantization error) and `minmax`, `percentile`,
//! `entropy`, `mse` for every tensor. Which set serves a model best depends on how
//! errors travel to its outputs, which no per-tensor measure sees (clipping a rare large
//! activation can lower a tensor's error and still cost the output more than it saves).
//! So each distinct set runs in the switchable simulation model (`tune::sim`: the written
//! model's Q/DQ pairs with their parameters as inputs) on a few calibration samples, and
//! the set with the best worst-output SQNR against the float model wins; ties go to the
//! earlier set in the order above.

use super::{calibration_jobs, Candidates};
use crate::calib::{Method, MethodOptions, Range, TensorStats};
use crate::data::Sample;
use crate::ir::Tensor;
use crate::passes::insert_qdq::{dequantized_bias_of, Chosen};
use crate::pipeline::error::PipelineError;
use crate::pipeline::prepare::Prepared;
use crate::pipeline::progress::Progress;
use crate::quant::plan::Decision;
use crate::quant::plan::Plan;
use crate::tune::search::{Evaluator, Goal};
use crate::tune::sim::{RangeParams, SimModel, SimSources, UnitParams};
use crate::tune::{self, TuneError, Unit};
use serde::Serialize;
use std::collections::BTreeMap;

/// Calibrated values per sample that `--method adaptive` compares its sets on at most (about).
pub const SELECT_VALUES: u64 = 1 << 25;

/// The sets, in tie-break order.
pub const SETS: [Method; 5] = [
    Method::Auto,
    Method::MinMax,
    Method::Percentile,
    Method::Entropy,
    Method::Mse,
];

/// What the selection did, for the summary.
#[derive(Clone, Debug, Serialize)]
pub struct Selection {
    /// The set written.
    pub chosen: Method,
    /// Calibration samples the sets ran on (0 when the selection did not run).
    pub samples: usize,
    /// Whether the compared ranges came from the other calibration samples (false: from
    /// all of them, the compared ones included).
    pub held_out: bool,
    /// Worst-output SQNR (dB) of each set, in [`SETS`] order; sets equal to an earlier
    /// one share its figure.
    pub sqnr_db: Vec<(Method, f64)>,
    /// Why the selection did not run, if it did not (`auto`'s ranges are then written).
    pub skipped: Option<String>,
}

impl Selection {
    /// One line for the text summary.
    pub fn line(&self) -> String {
        match &self.skipped {
            Some(why) => format!("adaptive: auto's ranges ({why})"),
            None => format!(
                "adaptive: {} (worst output SQNR on {} calibration samples{}: {})",
                self.chosen,
                self.samples,
                if self.held_out {
                    ", ranges from the others"
                } else {
                    ", ranges from all"
                },
                self.sqnr_db
                    .iter()
                    .map(|(m, db)| format!("{m} {db:.1} dB"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// What the selection reads: the statistics of every calibration sample (the written
/// ranges) with their [`Candidates`], and the range sets of the samples not compared
/// ([`range_sets`] of their statistics, computed while calibrating; `None` when every
/// sample is compared).
pub struct Statistics<'a> {
    pub all: &'a BTreeMap<String, TensorStats>,
    pub candidates: &'a mut Candidates,
    pub held_out: Option<RangeSets>,
}

/// The calibration samples the sets are compared on, and the prepared float model's
/// outputs for them (kept while calibrating).
pub struct Compared {
    pub samples: Vec<Sample>,
    pub references: Vec<Sample>,
}

/// Every set's range per calibrated value, in [`SETS`] order.
pub type RangeSets = Vec<BTreeMap<String, Range>>;

/// The range sets of `plan`'s calibrated values ([`SETS`] order), from `candidates` (of
/// the statistics `stats`; computed there when missing).
pub fn range_sets(
    plan: &Plan,
    stats: &BTreeMap<String, TensorStats>,
    opts: &MethodOptions,
    candidates: &mut Candidates,
) -> Result<RangeSets, PipelineError> {
    let (jobs, missing) = calibration_jobs(plan, stats);
    if let Some(e) = missing {
        return Err(e);
    }
    let mut choices = Vec::with_capacity(jobs.len());
    for c in candidates.fill(&jobs, opts) {
        choices.push(c?);
    }
    // Set 0 is auto's choice, then the candidates in SETS order.
    Ok((0..SETS.len())
        .map(|k| {
            jobs.iter()
                .zip(&choices)
                .map(|((v, _, _), c)| {
                    let r = if k == 0 {
                        c.chosen
                    } else {
                        *c.candidates
                            .iter()
                            .find(|r| r.method == SETS[k])
                            .expect("every method is a candidate")
                    };
                    (v.clone(), r)
                })
                .collect()
        })
        .collect())
}

/// Writes `set`'s ranges into `plan`; returns each value's method.
pub fn apply_set(plan: &mut Plan, set: &BTreeMap<String, Range>) -> BTreeMap<String, Method> {
    let mut chosen = BTreeMap::new();
    for (v, r) in set {
        plan.ranges.insert(v.clone(), (r.lo, r.hi));
        chosen.insert(v.clone(), r.method);
    }
    chosen
}

/// The simulation of a plan: its units, the switchable model, the parameters of the
/// quantized weights (which no choice of activation ranges changes), by plan key, and the
/// float values of the biases that are simulation inputs.
pub struct Simulation {
    pub units: Vec<Unit>,
    pub sim: SimModel,
    weights: BTreeMap<String, Chosen>,
    biases: BTreeMap<String, Tensor>,
}

/// The simulation of `plan` (ranges set) materialised; why not, when it cannot be built.
/// The weights are quantized here, once: every other set of ranges only changes the unit
/// parameters and the int32 biases ([`range_params`]).
pub fn simulation(p: &Prepared, plan: &Plan) -> Result<Simulation, String> {
    let units = tune::units(plan, &p.model);
    let mut q8 = p.model.clone();
    let report =
        crate::passes::insert_qdq::materialize(&mut q8, plan).map_err(|e| e.to_string())?;
    let base = unit_params(p, plan, &units, None);
    let biases: Vec<String> = tune::bias_units(plan, &units)
        .into_iter()
        .map(|(b, _, _)| b)
        .collect();
    let sim = SimModel::build(
        &SimSources {
            prepared: &p.model,
            q: &q8,
            full: &q8,
            weights: &[],
            biases: &[],
            narrow: None,
            narrow_weights: &[],
            bias_inputs: &biases,
        },
        &units,
        base.iter().map(|b| (*b, *b)).collect(),
    )
    .map_err(|e| format!("the simulation model cannot be built: {e}"))?;
    // The weights' codes in the simulation's side file serve the written model too.
    if let Some(side_file) = sim.side_file_handle() {
        p.weight_memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&report, &sim.model, side_file);
    }
    let weights = report
        .params
        .into_iter()
        .filter(|(k, _)| matches!(plan.values.get(k), Some(Decision::Weight { .. })))
        .collect();
    let g = &p.model.graph;
    let mut floats = BTreeMap::new();
    for b in sim.bias_inputs() {
        let t = g
            .value_by_name(b)
            .and_then(|v| g.const_of(v))
            .ok_or_else(|| {
                format!("the simulation model cannot be built: bias '{b}' is not a constant")
            })?
            .to_tensor()
            .map_err(|e| format!("the simulation model cannot be built: bias '{b}': {e}"))?;
        floats.insert(b.to_string(), t);
    }
    Ok(Simulation {
        units,
        sim,
        weights,
        biases: floats,
    })
}

/// 8-bit parameters of each unit from `set` (or from `plan`'s own ranges).
pub fn unit_params(
    p: &Prepared,
    plan: &Plan,
    units: &[Unit],
    set: Option<&BTreeMap<String, Range>>,
) -> Vec<UnitParams> {
    units
        .iter()
        .map(|u| {
            let (lo, hi) = match set {
                Some(set) => {
                    let r = set[&u.range_key];
                    (r.lo, r.hi)
                }
                None => plan.ranges[&u.range_key],
            };
            let q = plan
                .calibrated_qtype(&u.range_key)
                .unwrap_or(p.cfg.activation);
            UnitParams::new(lo, hi, &q)
        })
        .collect()
}

/// What the simulation is fed to run `plan` with `set`'s ranges: unit parameters, and the
/// int32 biases as `set`'s input scales round them, dequantized (what `set` materialised
/// would hold; the weights are not quantized again).
pub fn range_params(
    p: &Prepared,
    plan: &Plan,
    s: &Simulation,
    set: &BTreeMap<String, Range>,
) -> Result<RangeParams, PipelineError> {
    let mut with = plan.clone();
    apply_set(&mut with, set);
    let mut biases = BTreeMap::new();
    for b in s.sim.bias_inputs() {
        let missing = |what: &str| {
            PipelineError::Selection(TuneError::Other(format!(
                "simulation model: bias '{b}': {what}"
            )))
        };
        let Some(Decision::Bias { weight, .. }) = plan.values.get(b) else {
            return Err(missing("not a planned bias"));
        };
        let w = s
            .weights
            .get(weight)
            .ok_or_else(|| missing("its weight is not quantized"))?;
        let float = s.biases.get(b).ok_or_else(|| missing("not a constant"))?;
        let t = dequantized_bias_of(&with, b, float, w)
            .map_err(|e| missing(&e.to_string()))?
            .ok_or_else(|| missing("its input has no range"))?;
        biases.insert(b.to_string(), t);
    }
    Ok(RangeParams {
        units: unit_params(p, plan, &s.units, Some(set)),
        wide: Vec::new(),
        biases,
    })
}

/// Chooses the range set for `plan` (ranges written into it) on `samples` (calibration
/// samples; none, or a model the simulation cannot cover, writes `auto`'s), the compared
/// sets being `stats.held_out`, those of the calibration samples not compared (the sets of
/// `stats.all` when there are none or they cover other values). The sets are
/// scored against `references`, the prepared float model's outputs for `samples`, kept
/// while calibrating (the collector keeps them from its run of the main graph, which every
/// model the simulation covers has). Returns the method of each calibrated value and what
/// the selection did.
pub fn select(
    p: &Prepared,
    plan: &mut Plan,
    stats: Statistics,
    opts: &MethodOptions,
    compared: Compared,
    progress: &dyn Progress,
) -> Result<(BTreeMap<String, Method>, Selection), PipelineError> {
    let Statistics {
        all: stats,
        held_out,
        candidates,
    } = stats;
    let Compared {
        samples,
        references,
    } = compared;
    let samples = &samples[..];
    let sets = range_sets(plan, stats, opts, candidates)?;
    let skip = |plan: &mut Plan, why: &str| (apply_set(plan, &sets[0]), skip_selection(why));
    if samples.is_empty() {
        return Ok(skip(
            plan,
            "no calibration samples: the ranges come from a file",
        ));
    }
    if sets[0].is_empty() {
        return Ok(skip(plan, "no activation is quantized"));
    }
    if p.model
        .graph
        .ops()
        .any(|o| matches!(p.model.graph.op(o).op_type.as_str(), "If" | "Loop" | "Scan"))
    {
        return Ok(skip(
            plan,
            "the model has subgraphs, which the simulation does not switch",
        ));
    }
    if references.len() != samples.len() {
        return Ok(skip(
            plan,
            "the float outputs of the compared samples were not kept while calibrating",
        ));
    }
    // The compared sets: held out from the compared samples when they cover the same values.
    let held = held_out.filter(|h| {
        h.len() == sets.len() && h.iter().zip(&sets).all(|(a, b)| a.keys().eq(b.keys()))
    });
    let held_out = held.is_some();
    let compared = held.as_ref().unwrap_or(&sets);
    // Distinct sets only; a repeated one shares its figure.
    let mut first_of: Vec<usize> = Vec::with_capacity(compared.len());
    for k in 0..compared.len() {
        let same = (0..k).find(|&j| {
            first_of[j] == j
                && compared[j]
                    .values()
                    .zip(compared[k].values())
                    .all(|(a, b)| (a.lo, a.hi) == (b.lo, b.hi))
        });
        first_of.push(same.unwrap_or(k));
    }
    let distinct: Vec<usize> = (0..sets.len()).filter(|&k| first_of[k] == k).collect();
    if distinct.len() == 1 {
        return Ok(skip(plan, "every method gives the same ranges"));
    }

    // The simulation of the written model with auto's ranges; other sets change only the
    // parameters fed to it.
    apply_set(plan, &compared[0]);
    // A model the simulation cannot be built or run for keeps auto's ranges, and says why.
    let s = match simulation(p, plan) {
        Ok(s) => s,
        Err(e) => return Ok(skip(plan, &e)),
    };
    if s.units.is_empty() {
        return Ok(skip(plan, "no activation unit to switch"));
    }
    let ev = match Evaluator::with_references(
        &s.sim,
        Some(&p.base_dir),
        samples.to_vec(),
        references,
        None,
    ) {
        Ok(ev) => ev,
        Err(e) => {
            return Ok(skip(
                plan,
                &format!("the simulation model does not run: {e}"),
            ))
        }
    };
    let mut params = Vec::with_capacity(distinct.len());
    for &k in &distinct {
        params.push(range_params(p, plan, &s, &compared[k])?);
    }
    progress.begin("choosing ranges", params.len() as u64);
    let metrics = match ev.eval_params_many(&params, &|| progress.step()) {
        Ok(m) => m,
        Err(e) => {
            progress.end();
            return Ok(skip(
                plan,
                &format!("the simulation model does not run: {e}"),
            ));
        }
    };
    progress.end();
    let goal = Goal::Sqnr { db: 0.0 };
    let mut figure = vec![f64::NAN; sets.len()];
    for (&k, m) in distinct.iter().zip(&metrics) {
        figure[k] = goal.figure(m);
    }
    for k in 0..sets.len() {
        figure[k] = figure[first_of[k]];
    }
    // Highest figure; NaN never wins; ties keep the earlier set.
    let mut best = 0usize;
    for k in 1..sets.len() {
        if figure[k] > figure[best] || (figure[best].is_nan() && !figure[k].is_nan()) {
            best = k;
        }
    }
    // The winner's method over all the samples.
    let chosen = apply_set(plan, &sets[best]);
    Ok((
        chosen,
        Selection {
            chosen: SETS[best],
            samples: ev.samples(),
            held_out,
            sqnr_db: SETS.iter().copied().zip(figure).collect(),
            skipped: None,
        },
    ))
}

fn skip_selection(why: &str) -> Selection {
    Selection {
        chosen: Method::Auto,
        samples: 0,
        held_out: false,
        sqnr_db: Vec::new(),
        skipped: Some(why.to_string()),
    }
}
