//! Mixed precision: which activations get 16 bits or stay float, as edits of the plan
//! (`--target-sqnr`/`--max-drop`), and the simulation `--size-budget` measures each
//! weight's effect on the output with (`build_sim` with 4-bit weight switches, used by
//! `pipeline::budget`).
//!
//! [`tune()`] builds the search from the plan with its 8-bit and 16-bit ranges: a simulation
//! model whose Q/DQ pairs are switches ([`crate::tune::sim`]). With a goal, the units are
//! ranked by sensitivity and the cheapest promotions that meet it are searched
//! ([`crate::tune::search`]). The result ([`Tuned`]) is applied to the plan by
//! materialisation, which may ask for more ([`Tuned::narrow_more`],
//! [`Tuned::promote_more`]) when the written model misses the budget or the goal.

use super::error::PipelineError;
use super::folds::FoldStatistics;
use super::prepare::Prepared;
use super::progress::Progress;
use super::ranges::{choose_ranges, Candidates};
use crate::calib::{CalibrationFile, Method, MethodOptions};
use crate::data::{Dataset, Sample};
use crate::exec::{Session, SessionOptions};
use crate::ir::{DType, Model};
use crate::onnx;
use crate::quant::params::QType;
use crate::quant::plan::{Decision, Plan};
use crate::report::estimate::Estimate;
use crate::tune::search::{self, Evaluator, Goal, HeldOut, Judge, Outlook, SensitivityFile};
use crate::tune::sim::{dequantized_bias, RangeParams, SimModel, SimSources, UnitParams};
use crate::tune::{self, Overrides, Precision, Unit};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The option that set a goal, as the user wrote it.
pub fn goal_text(g: &Goal) -> String {
    match g {
        Goal::Sqnr { db } => format!("--target-sqnr {db}"),
        Goal::MaxDrop { points } => format!("--max-drop {points}"),
    }
}

/// The one line saying that the samples cannot support `goal`: the estimate meets it, its
/// lower bound does not, and about how many samples would let it.
pub fn unsupported(goal: &Goal, e: &Estimate) -> String {
    let more = match e.samples_for(goal.threshold()) {
        Some(n) => format!("about {n} samples would"),
        None => "more samples would".to_string(),
    };
    format!(
        "{}: {} calibration samples cannot support it: the estimate is {}, its {:.0}% lower bound {}; {more} (written with every promotion the bound asks for)",
        goal_text(goal),
        e.samples,
        goal.describe(e.figure),
        e.level * 100.0,
        goal.describe(e.lower),
    )
}

/// One warning per graph output that has the type and shape of a graph input (a state a
/// caller feeds back from one run to the next, as a recurrent model's) and whose written
/// range does not cover the values calibration saw in that input or in the output itself.
/// Such a state carries values past the range as soon as it grows beyond what the
/// calibration samples held (longer streams), and each of those values is clipped: the
/// goal's estimate, measured on samples like the calibration ones, cannot see that.
pub fn feedback_warnings(m: &Model, plan: &Plan, stats: &CalibrationFile) -> Vec<String> {
    let g = &m.graph;
    let units = tune::units(plan, m);
    let seen = |name: &str| {
        let t = stats.tensors.get(name)?;
        Some((t.min()?, t.max()?))
    };
    let mut out = Vec::new();
    for &o in &g.outputs {
        let out_v = g.value(o);
        let known = matches!(&out_v.ty, Some(crate::ir::ValueType::Tensor { shape: Some(d), .. }) if !d.is_empty());
        let Some(unit) = units.iter().find(|u| u.members.contains(&out_v.name)) else {
            continue;
        };
        let (Some(&(lo, hi)), true) = (plan.ranges.get(&unit.range_key), known) else {
            continue;
        };
        for &i in &g.inputs {
            let in_v = g.value(i);
            if in_v.ty != out_v.ty || g.const_of(i).is_some() {
                continue;
            }
            let ranges: Vec<(&str, (f32, f32))> = [in_v.name.as_str(), unit.range_key.as_str()]
                .into_iter()
                .filter_map(|n| seen(n).map(|r| (n, r)))
                .collect();
            let (min, max) = ranges
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), (_, (x, y))| {
                    (a.min(*x), b.max(*y))
                });
            if ranges.is_empty() || (min >= lo && max <= hi) {
                continue;
            }
            let saw = ranges
                .iter()
                .map(|(n, (x, y))| format!("'{n}' in [{x:.4}, {y:.4}]"))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(format!(
                "output '{}' has the type and shape of input '{}', as a state fed back from run to run: its written range [{lo:.4}, {hi:.4}] clips values calibration saw ({saw}); a state that grows past them (longer streams than the calibration samples) is clipped further, and the goal's estimate, measured on samples like the calibration ones, does not cover that",
                out_v.name, in_v.name
            ));
        }
    }
    out
}

/// State of a mixed-precision run.
pub struct Tuned {
    pub units: Vec<Unit>,
    sens: SensitivityFile,
    cached: bool,
    pub choice: search::Choice,
    /// Samples the search ran on.
    pub samples: usize,
    /// Samples each sensitivity probe ran on.
    pub probe_samples: usize,
    /// Folds of the out-of-fold estimate (0: ranges from every calibration sample).
    pub folds: usize,
    /// Goal figure of the written model on the evaluation data.
    pub validated: Option<f64>,
    /// The same with its bootstrap bounds.
    pub eval_estimate: Option<Estimate>,
    /// Extra promotion rounds validation needed.
    pub rounds: usize,
    /// Weights stored on 4 bits.
    pub w4: BTreeSet<String>,
    /// 4-bit candidates, least harmful first.
    pub w_order: WeightOrder,
    /// Seconds per part of the run (simulation model, fold parameters, reference
    /// outputs, judging, sensitivity probes, search), by part.
    pub times: BTreeMap<String, f64>,
}

impl Tuned {
    /// A sensitivity analysis the run measured (not read from the cache): what the cache
    /// file gets.
    pub fn new_sensitivity(&self) -> Option<&SensitivityFile> {
        (!self.cached && !self.sens.units.is_empty()).then_some(&self.sens)
    }

    /// Precision of every unit not left 8-bit, by root.
    pub fn precisions(&self) -> BTreeMap<String, Precision> {
        self.units
            .iter()
            .zip(&self.choice.config)
            .filter(|(_, p)| **p != Precision::A8)
            .map(|(u, p)| (u.root.clone(), *p))
            .collect()
    }

    /// Puts the next `n` weights of the order on 4 bits; false when none is left.
    pub fn narrow_more(&mut self, n: usize) -> bool {
        let before = self.w4.len();
        for (w, _, _) in &self.w_order {
            if self.w4.len() >= before + n {
                break;
            }
            self.w4.insert(w.clone());
        }
        self.w4.len() > before
    }

    /// Promotes the next `n` units of the order; false when nothing is left.
    pub fn promote_more(&mut self, n: usize) -> bool {
        let mut done = 0;
        for step in [Precision::A16, Precision::Float] {
            for &u in &self.choice.order {
                if done == n {
                    return true;
                }
                if self.choice.config[u] < step {
                    self.choice.config[u] = step;
                    done += 1;
                }
            }
        }
        done > 0
    }

    fn reason(&self, i: usize) -> String {
        let Some(s) = self.sens.units.get(i) else {
            return "promoted by a validation round".into();
        };
        let rank = self.choice.order.iter().position(|&u| u == i).unwrap_or(0) + 1;
        format!(
            "rank {rank} of {}: promoting it alone lifts the 8-bit model from {:.1} to {:.1} dB",
            self.units.len(),
            self.sens.baseline_db,
            s.promoted_db
        )
    }

    /// The overrides file replaying this choice.
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::new();
        for (w, db, _) in &self.w_order {
            if self.w4.contains(w) {
                o.weights.insert(w.clone(), tune::WeightBits::W4);
                o.reasons.insert(
                    w.clone(),
                    format!("4-bit weight: with only it on 4 bits the output SQNR is {db:.1} dB"),
                );
            }
        }
        for (i, (u, p)) in self.units.iter().zip(&self.choice.config).enumerate() {
            if *p != Precision::A8 {
                o.tensors.insert(u.root.clone(), *p);
                o.reasons.insert(u.root.clone(), self.reason(i));
            }
        }
        o
    }

    /// What the summary says of the choice; `plan` is the plan written.
    pub fn summary(
        &self,
        p: &Prepared,
        plan: &Plan,
        goal: Option<Goal>,
        size_budget_mb: Option<f64>,
        path: &Path,
    ) -> PrecisionSummary {
        let promoted = self
            .units
            .iter()
            .zip(&self.choice.config)
            .enumerate()
            .filter(|(_, (_, p))| **p != Precision::A8)
            .map(|(i, (u, pr))| Promoted {
                tensor: u.root.clone(),
                producer: u.producer.clone(),
                op_type: u.producer_type.clone(),
                precision: pr.name().to_string(),
                promoted_db: self.sens.units.get(i).map_or(f64::NAN, |s| s.promoted_db),
                reason: self.reason(i),
            })
            .collect();
        PrecisionSummary {
            goal,
            size_budget_mb,
            weights_4bit: self
                .w_order
                .iter()
                .filter(|(w, _, _)| self.w4.contains(w))
                .map(|(w, db, n)| (w.clone(), *db, *n))
                .collect(),
            search_samples: self.samples,
            probe_samples: self.probe_samples,
            folds: self.folds,
            estimate: self.choice.estimate,
            eval_estimate: self.eval_estimate,
            samples_needed: match (goal, self.choice.estimate) {
                (Some(g), Some(e)) if !self.choice.met => e.samples_for(g.threshold()),
                _ => None,
            },
            units: self.units.len(),
            baseline: self.choice.baseline,
            searched: self.choice.figure,
            validated: self.validated,
            evaluations: self.choice.evaluations
                + if self.sens.units.is_empty() {
                    0
                } else {
                    self.units.len() + 1
                },
            screened: self.choice.screened,
            sensitivity_cached: self.cached,
            extra_rounds: self.rounds,
            promoted,
            per_node: tune::op_precisions(plan, &p.model),
            overrides_file: path.display().to_string(),
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A unit promoted above 8 bits, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Promoted {
    pub tensor: String,
    pub producer: String,
    pub op_type: String,
    pub precision: String,
    pub promoted_db: f64,
    pub reason: String,
}

/// What a mixed-precision run chose (the summary's `precision`).
#[derive(Clone, Debug, Serialize)]
pub struct PrecisionSummary {
    pub goal: Option<Goal>,
    pub size_budget_mb: Option<f64>,
    /// Weights stored on 4 bits: (name, SQNR with only it on 4 bits, elements).
    pub weights_4bit: Vec<(String, f64, u64)>,
    pub search_samples: usize,
    /// Samples each sensitivity probe ran on.
    pub probe_samples: usize,
    /// Folds of the out-of-fold estimate on the calibration samples (0: none; the search
    /// ran on the evaluation data with ranges from every calibration sample).
    pub folds: usize,
    /// The chosen precisions' goal figure out of fold, with its bootstrap bounds; the goal
    /// is judged on the lower bound.
    pub estimate: Option<Estimate>,
    /// The written model's goal figure on the evaluation data, with its bootstrap bounds.
    pub eval_estimate: Option<Estimate>,
    /// When the lower bound misses the goal although the estimate meets it: about how
    /// many calibration samples would let the bound reach it.
    pub samples_needed: Option<usize>,
    pub units: usize,
    /// Goal figure with every activation 8-bit, on the search samples.
    pub baseline: f64,
    /// Goal figure of the chosen precisions on the search samples.
    pub searched: f64,
    /// Goal figure of the written model on the evaluation data.
    pub validated: Option<f64>,
    pub evaluations: usize,
    /// Configurations the search screened on the probe samples before (or instead of)
    /// judging them on every sample.
    #[serde(skip_serializing_if = "is_zero")]
    pub screened: usize,
    pub sensitivity_cached: bool,
    pub extra_rounds: usize,
    pub promoted: Vec<Promoted>,
    /// Activation and weight types per quantized node.
    pub per_node: BTreeMap<String, (String, String)>,
    pub overrides_file: String,
}

/// What the search works from: the prepared model with its base plan (ranges not yet
/// chosen), the statistics and the range method.
pub struct Basis<'a> {
    pub p: &'a Prepared,
    /// The plan before any precision edit.
    pub plan: &'a Plan,
    pub stats: &'a CalibrationFile,
    pub method: Method,
    pub opts: &'a MethodOptions,
}

/// What the search is asked for and runs on.
pub struct Request<'a> {
    pub goal: Option<Goal>,
    /// Search data (the evaluation data, else the calibration data) and its labels.
    pub data: &'a Dataset,
    pub labels: Option<Vec<i64>>,
    /// At most this many samples, evenly spaced.
    pub samples: usize,
    /// Sensitivity cache file.
    pub cache: PathBuf,
    /// The calibration data's fold statistics, when `data` is the calibration data and
    /// the goal is to be judged out of fold.
    pub folds: Option<&'a FoldStatistics>,
}

/// The plan with every unit's 8-bit ranges, and with its 16-bit ranges, from `stats`.
fn unit_plans(
    b: &Basis,
    stats: &BTreeMap<String, crate::calib::TensorStats>,
    candidates: &mut Candidates,
) -> Result<(Plan, Plan), PipelineError> {
    let mut plan8 = b.plan.clone();
    choose_ranges(&mut plan8, stats, b.method, b.opts, candidates)?;
    let mut plan16 = b.plan.clone();
    for d in plan16.values.values_mut() {
        if let Decision::Activation { qtype, .. } = d {
            *qtype = tune::wide(qtype);
        }
    }
    choose_ranges(&mut plan16, stats, b.method, b.opts, candidates)?;
    Ok((plan8, plan16))
}

/// Unit `u`'s parameters under `plan`'s ranges.
fn params_of(p: &Prepared, plan: &Plan, u: &Unit) -> UnitParams {
    let (lo, hi) = plan.ranges[&u.range_key];
    let q = plan
        .calibrated_qtype(&u.range_key)
        .unwrap_or(p.cfg.activation);
    UnitParams::new(lo, hi, &q)
}

/// The prepared model with `plan` materialised.
fn materialized(p: &Prepared, plan: &Plan) -> Result<Model, PipelineError> {
    let mut q = p.model.clone();
    crate::passes::insert_qdq::materialize(&mut q, plan).map_err(|error| PipelineError::Pass {
        model: p.model_path.clone(),
        error,
    })?;
    Ok(q)
}

/// Per fold, what the simulation is fed so that the fold's samples run with the ranges of
/// the statistics outside the fold: 8-bit and 16-bit parameters and the int32 biases
/// those ranges round. Folds are independent: they are spread over threads, each result
/// kept in fold order.
fn fold_params(
    b: &Basis,
    units: &[Unit],
    sim: &SimModel,
    folds: &FoldStatistics,
) -> Result<HeldOut, PipelineError> {
    let one = |stats: &CalibrationFile| -> Result<RangeParams, PipelineError> {
        // Each fold has statistics of its own: candidates are not shared.
        let mut own = Candidates::default();
        let (plan8, plan16) = unit_plans(b, &stats.tensors, &mut own)?;
        let q = materialized(b.p, &plan8)?;
        let mut biases = BTreeMap::new();
        for bias in sim.bias_inputs() {
            let t = dequantized_bias(&q, bias).map_err(PipelineError::Selection)?;
            biases.insert(bias.to_string(), t);
        }
        Ok(RangeParams {
            units: units.iter().map(|u| params_of(b.p, &plan8, u)).collect(),
            wide: units.iter().map(|u| params_of(b.p, &plan16, u)).collect(),
            biases,
        })
    };
    let n = folds.others.len();
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .clamp(1, n.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut params: Vec<Option<Result<RangeParams, PipelineError>>> =
        (0..n).map(|_| None).collect();
    let done: Vec<Vec<(usize, Result<RangeParams, PipelineError>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        mine.push((i, one(&folds.others[i])));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    for (i, r) in done.into_iter().flatten() {
        params[i] = Some(r);
    }
    let params = params
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(PipelineError::Options(
                    "a fold's worker thread failed".into(),
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HeldOut {
        params,
        fold_of: folds.fold_of.clone(),
    })
}

/// The activation units of the plan and the simulation model that switches them (every
/// 8-bit weight of 16 elements or more switchable to 4 bits when `narrow`; the int32
/// biases inputs when `held_out`).
pub(crate) fn build_sim(
    b: &Basis,
    candidates: &mut Candidates,
    narrow: bool,
    held_out: bool,
) -> Result<(Vec<Unit>, SimModel), PipelineError> {
    build_sim_narrowed(b, candidates, narrow.then(tune::narrow_weight), held_out)
}

/// [`build_sim`] whose weight switches move each weight to the uniform grid `narrow`
/// (the simulation's `w4` switches, whatever the grid).
pub(crate) fn build_sim_narrowed(
    b: &Basis,
    candidates: &mut Candidates,
    narrow: Option<QType>,
    held_out: bool,
) -> Result<(Vec<Unit>, SimModel), PipelineError> {
    let p = b.p;
    let (plan8, plan16) = unit_plans(b, &b.stats.tensors, candidates)?;
    let units = tune::units(&plan8, &p.model);
    let params: Vec<(UnitParams, UnitParams)> = units
        .iter()
        .map(|u| (params_of(p, &plan8, u), params_of(p, &plan16, u)))
        .collect();
    let materialize = |plan: &Plan| materialized(p, plan);
    let q8 = materialize(&plan8)?;
    let reduced = p.cfg.weight.qmax < 127;
    let (full, weights) = if reduced {
        let mut planf = plan8.clone();
        let wide_w = QType::new(DType::I8, true, false).expect("int8");
        for d in planf.values.values_mut() {
            // Only 8-bit weights move to the full grid (as `tune::apply` does): a 4-bit
            // or blocked storage stays what it is.
            if let Decision::Weight { qtype, .. } = d {
                if qtype.dtype == DType::I8 {
                    *qtype = wide_w;
                }
            }
        }
        (
            materialize(&planf)?,
            tune::weight_units(&plan8, &p.model, &units),
        )
    } else {
        (q8.clone(), Vec::new())
    };
    let biases = tune::bias_units(&plan8, &units);
    // Out-of-fold ranges round the int32 biases differently: they become inputs.
    let bias_inputs: Vec<String> = if held_out {
        biases.iter().map(|(b, _, _)| b.clone()).collect()
    } else {
        Vec::new()
    };
    let (q4, narrow_weights) = if let Some(to) = narrow {
        let names = narrow_candidates(&plan8, &p.model);
        let mut plan4 = plan8.clone();
        for w in &names {
            if let Some(Decision::Weight { qtype, .. }) = plan4.values.get_mut(w) {
                *qtype = to;
            }
        }
        (Some(materialize(&plan4)?), names)
    } else {
        (None, Vec::new())
    };
    let sim = SimModel::build(
        &SimSources {
            prepared: &p.model,
            q: &q8,
            full: &full,
            weights: &weights,
            biases: &biases,
            narrow: q4.as_ref(),
            narrow_weights: &narrow_weights,
            bias_inputs: &bias_inputs,
        },
        &units,
        params,
    )?;
    Ok((units, sim))
}

/// 4-bit candidates: 8-bit weights of 16 elements or more.
fn narrow_candidates(plan: &Plan, m: &Model) -> Vec<String> {
    let g = &m.graph;
    plan.values
        .iter()
        .filter(|(n, d)| {
            matches!(d, Decision::Weight { qtype, .. } if qtype.dtype == DType::I8)
                && g.value_by_name(n)
                    .and_then(|v| g.const_of(v))
                    .is_some_and(|t| t.numel() >= 16)
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// The search's evaluator: the simulation against the float model on an evenly spaced
/// subsample of the request's data.
fn evaluator<'a>(
    b: &Basis,
    r: &Request,
    sim: &'a SimModel,
) -> Result<Evaluator<'a>, PipelineError> {
    let p = b.p;
    let n = r.data.len();
    // Held-out runs use every sample (sensitivity probes only some of them).
    let k = if r.folds.is_some() {
        n
    } else {
        r.samples.min(n)
    };
    let picks: Vec<usize> = (0..k).map(|i| i * n / k).collect();
    let samples = picks
        .iter()
        .map(|&i| r.data.get(i))
        .collect::<Result<Vec<Sample>, _>>()?;
    let labels = r
        .labels
        .as_ref()
        .map(|l| picks.iter().map(|&i| l[i]).collect::<Vec<i64>>());
    let (fp, _) = onnx::engine_proto(&p.float)?;
    let reference = Session::new(
        &fp,
        Some(&p.base_dir),
        &samples[0],
        &SessionOptions::default(),
    )
    .map_err(|error| PipelineError::Exec {
        what: format!("{}: float model", p.model_path.display()),
        error,
    })?;
    Ok(Evaluator::new(
        sim,
        Some(&p.base_dir),
        &reference,
        samples,
        labels,
    )?)
}

/// 4-bit candidates, least harmful first: (weight, SQNR with only it on 4 bits, elements).
pub type WeightOrder = Vec<(String, f64, u64)>;

/// Activation elements a sensitivity analysis on calibration data may compute: one run
/// per unit and one with every unit 8-bit, on each probe sample.
pub const PROBE_BUDGET: u64 = 4_000_000_000;

/// Probe samples out of fold: at most `max`, fewer when one run per unit on each would
/// compute more than [`PROBE_BUDGET`] activation elements, at least one. The elements of a
/// unit per sample are those calibration saw (`stats`: every value's element count over
/// its samples), so dynamic shapes count as they ran. A model with large activations and
/// many units (a detector on 640×640 images) is probed on one sample, a small one on `max`.
pub fn probe_count(max: usize, units: &[Unit], stats: &CalibrationFile) -> usize {
    probes_for_runs(max, units.len() as u64 + 1, units, stats)
}

/// [`probe_count`] for `runs` runs of the whole simulation per sample (the units' elements
/// count one run).
pub fn probes_for_runs(max: usize, runs: u64, units: &[Unit], stats: &CalibrationFile) -> usize {
    let samples = stats.samples.max(1);
    let per_run: u64 = units
        .iter()
        .filter_map(|u| stats.tensors.get(&u.range_key))
        .map(|t| t.count() / samples)
        .sum::<u64>()
        .max(1);
    let k = PROBE_BUDGET / per_run.saturating_mul(runs);
    usize::try_from(k)
        .unwrap_or(usize::MAX)
        .clamp(1, max.max(1))
}

/// Sensitivity analysis and search: activation promotions until the goal is met (the
/// weights keep the storage `--size-budget` chose). With fold statistics, every calibration
/// sample runs with the ranges of the samples outside its fold, sensitivity probes run on
/// at most `r.samples` of them, and the goal is judged on the bootstrap lower bound over
/// all of them.
pub fn tune(
    b: &Basis,
    r: &Request,
    candidates: &mut Candidates,
    progress: &dyn Progress,
) -> Result<Tuned, PipelineError> {
    let mut times = BTreeMap::new();
    let mut clock = Instant::now();
    let mut lap = |what: &str| {
        times.insert(what.to_string(), clock.elapsed().as_secs_f64());
        clock = Instant::now();
    };
    let (units, sim) = build_sim(b, candidates, false, r.folds.is_some())?;
    lap("simulation model");
    let mut ev = evaluator(b, r, &sim)?;
    lap("reference outputs");
    if let Some(f) = r.folds {
        ev = ev.with_held_out(fold_params(b, &units, &sim, f)?)?;
        ev.probe_on(probe_count(r.samples, &units, b.stats));
        ev.judge = Judge::LowerBound;
        lap("fold parameters");
    }
    // `--size-budget` chose the weights' storage before the search (`pipeline::budget`).
    let (w_order, w4) = (Vec::new(), BTreeSet::new());
    let (sens, cached, choice) = match r.goal {
        Some(goal) => {
            // The all-8-bit model may need no promotion, or no promotion may reach the
            // goal: either needs no sensitivity analysis.
            progress.begin("judging", 0);
            let outlook = search::outlook(&ev, units.len(), goal, &|| progress.step())?;
            progress.end();
            lap("judging");
            match outlook {
                Outlook::Decided(choice) => (SensitivityFile::default(), false, choice),
                Outlook::Search(prior) => {
                    progress.begin("sensitivity", (units.len() + 1) as u64);
                    let (sens, cached) =
                        search::sensitivity(&ev, &units, Some(&r.cache), &|| progress.step())?;
                    progress.end();
                    lap("sensitivity probes");
                    progress.begin("searching", 0);
                    let choice = search::search(&ev, &sens, goal, prior, &|| progress.step())?;
                    progress.end();
                    lap("search");
                    (sens, cached, choice)
                }
            }
        }
        None => {
            let all8 = vec![Precision::A8; units.len()];
            let f = Goal::Sqnr { db: 0.0 }.figure(&ev.eval(&all8)?);
            let choice = search::Choice {
                config: all8,
                figure: f,
                baseline: f,
                best: f,
                met: true,
                order: (0..units.len()).collect(),
                evaluations: 1,
                screened: 0,
                estimate: None,
            };
            (SensitivityFile::default(), false, choice)
        }
    };
    Ok(Tuned {
        samples: ev.samples(),
        probe_samples: ev.probe_samples(),
        folds: r.folds.map_or(0, |f| f.others.len()),
        units,
        sens,
        cached,
        choice,
        validated: None,
        eval_estimate: None,
        rounds: 0,
        w4,
        w_order,
        times,
    })
}

/// Writes the overrides file's precisions into `plan` (its `float` nodes were left out of
/// the plan already): unit precisions and 4-bit weights.
pub fn apply_overrides(
    plan: &mut Plan,
    m: &Model,
    o: &Overrides,
    path: &Path,
) -> Result<(), PipelineError> {
    let file_error = |error: tune::TuneError| PipelineError::Overrides {
        path: path.to_path_buf(),
        error,
    };
    let units = tune::units(plan, m);
    let prec = o.unit_precisions(m, &units).map_err(file_error)?;
    tune::apply(
        plan,
        m,
        &units,
        &prec,
        "activations left float by --overrides",
    );
    let missing = tune::apply_weights(plan, &o.weights);
    plan.compact |= o.compact;
    if !missing.is_empty() {
        return Err(PipelineError::Options(format!(
            "{}: overrides name weights that are not quantized weights: {}",
            path.display(),
            missing
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::TensorStats;

    /// A unit whose range comes from the statistics of `key`.
    fn unit(i: usize, key: &str) -> Unit {
        Unit {
            root: format!("u{i}"),
            range_key: key.to_string(),
            members: vec![format!("u{i}")],
            producer: format!("op{i}"),
            producer_type: "Conv".into(),
            elements: 0,
            folded_op: None,
            scale_fold: None,
        }
    }

    /// Statistics of one sample in which `key` held `elements` values.
    fn one_sample(key: &str, elements: usize) -> CalibrationFile {
        let mut f = CalibrationFile::new("model");
        f.samples = 1;
        let mut t = TensorStats::new();
        t.observe(&vec![0.5; elements]);
        f.tensors.insert(key.to_string(), t);
        f
    }

    #[test]
    fn probe_samples_follow_the_activation_elements_calibration_saw() {
        let stats = one_sample("a", 1_000_000);
        let units = |n: usize| (0..n).map(|i| unit(i, "a")).collect::<Vec<_>>();
        // 4 runs of 3 M elements per probe sample: the budget allows hundreds.
        assert_eq!(probe_count(16, &units(3), &stats), 16);
        // 30 units of 1 M elements, 31 runs: 4e9 / 9.3e8 = 4 samples.
        assert_eq!(probe_count(16, &units(30), &stats), 4);
        assert_eq!(probe_count(3, &units(30), &stats), 3);
        // 45 units: 2.07e9 per sample, one fits; 100 units: none fits, one still runs.
        assert_eq!(probe_count(16, &units(45), &stats), 1);
        assert_eq!(probe_count(16, &units(100), &stats), 1);
        // A unit calibration never saw counts nothing.
        let unseen: Vec<Unit> = (0..100).map(|i| unit(i, "b")).collect();
        assert_eq!(probe_count(16, &unseen, &stats), 16);
    }
}
