//! The quantize pipeline as a library: [`quantize`] takes typed options
//! ([`QuantizeOptions`]) and a [`Progress`] callback, and returns what to write and print
//! ([`Quantized`]); nothing here prints or writes the model (the command line does).
//!
//! The steps, one file each, in the order they run:
//! - [`inputs`]: read the model and the data (calibration, evaluation held back or given,
//!   labels, overrides); also the inputs-as-data helpers `run` and `compare` share.
//! - [`prepare`]: the declared pass list ([`crate::passes::pipeline`]) up to the plan:
//!   specialise (the float reference), normalise, plan, raise the opset.
//! - [`equalize`]: with `--equalize`, cross-layer equalization of the per-channel weight
//!   ranges of consecutive layers (data-free), on the prepared model, re-planned.
//! - [`smooth`]: with `--smooth`, SmoothQuant's migration of the activations' per-channel
//!   ranges into the MatMul weights that read them, on the prepared model, re-planned.
//! - [`calibrate`]: statistics of every calibrated value.
//! - [`ranges`]: the range of every calibrated value by the chosen method; `adaptive`
//!   chooses the method by simulating each method's set of ranges.
//! - [`bias_correct`]: with `--bias-correction`, the mean output shift each quantized
//!   Conv/Gemm's weights add (measured on the calibration data through the plan
//!   materialised once) subtracted from its float bias, before mixed precision.
//! - [`folds`]: k-fold statistics of the calibration data, for a goal judged on samples
//!   the ranges did not see (when no evaluation data is given).
//! - [`adaround`]: with `--rounding adaround`, the up/down rounding of each uniform
//!   Conv/MatMul/Gemm weight learned on its layer's calibration inputs, into the plan.
//! - [`precision`]: mixed precision as plan edits (size budget, goal).
//! - [`dynamic`]: `--mode dynamic` instead of calibration, ranges, mixed precision and
//!   materialisation: the `quantize_dynamic` step on a copy of the prepared model (the
//!   one with the declared dims where the data fixed some), then the same validation.
//! - [`materialise`]: the pass list's last steps on a copy of the prepared model, checked
//!   against the budget and validated against the float model, round after round.
//! - [`interface`]: the written model keeps the float model's interface: pinned inputs
//!   declared again, and the declared dims where the first sample fixed symbolic ones
//!   (the plan materialised on the model prepared with its declared dims).
//! - [`summary`] and [`report`]: what the run did, as plain data.
//!
//! [`weight_only`] is a third mode (`--mode weight-only`): the constant weights of MatMul
//! and Gemm quantized by RTN, clipping or GPTQ, activations float, no ranges; it shares
//! [`inputs`] and the validation ([`materialise`]'s sessions and comparison), nothing else.
//! Dynamic quantization and weight-only rounding learn nothing from data: every sample
//! given validates, and without data the model is written unvalidated, said in the summary.
//!
//! Errors are [`PipelineError`]; an option is named as the command line spells it, since
//! that is what the user gave.

pub mod adaround;
pub mod bias_correct;
pub mod budget;
pub mod calibrate;
pub mod dynamic;
mod energy;
pub mod equalize;
mod error;
pub mod folds;
pub mod inputs;
pub mod interface;
pub mod materialise;
pub mod options;
pub mod precision;
pub mod prepare;
mod progress;
pub mod ranges;
pub mod report;
pub mod smooth;
pub mod summary;
pub mod tables;
#[cfg(test)]
mod tests;
pub mod weight_only;

pub use error::PipelineError;
pub use options::QuantizeOptions;
pub use progress::{Progress, Silent};

use crate::calib::collect::Keep;
use crate::calib::{CalibrationFile, Method, TensorStats};
use crate::data::{Dataset, Sample};
use crate::ir::Model;
use crate::passes::Runner;
use crate::quant::plan::{self, Decision, Plan};
use crate::report::ReportInput;
use crate::tune::search::SensitivityFile;
use crate::tune::{self, Overrides};
use materialise::{Checks, End, Materialised, Round, Source};
use prepare::{PrepareEnd, PrepareInput, Prepared};
use ranges::adaptive::{self, Selection};
use ranges::{choose_ranges, Candidates};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;
use summary::Summary;

/// How a run ended.
pub enum Finish {
    /// The quantized model, with what to write and print.
    Quantized(Box<Quantized>),
    /// A requested goal or size budget cannot be met: why (nothing is to be written).
    Missed {
        /// Warnings gathered before.
        warnings: Vec<String>,
        what: String,
    },
    /// The run stopped after this pass step (`--stop-after`), its dump handed out.
    Stopped { after: String },
}

/// What a successful run leaves the caller to write and print.
pub struct Quantized {
    /// The model to write.
    pub model: Model,
    pub summary: Summary,
    /// Warnings to show (after the run's progress, before the summary).
    pub warnings: Vec<String>,
    /// A mixed-precision run's overrides file and where it goes.
    pub overrides: Option<(PathBuf, Overrides)>,
    /// A sensitivity analysis measured by this run, and the cache file it goes to.
    pub sensitivity: Option<(PathBuf, SensitivityFile)>,
    /// The visual report's data (with `report`).
    pub report: Option<ReportInput>,
    /// Temporary side files `model`'s constants may still reference: kept until it is
    /// written.
    pub side_files: Vec<std::sync::Arc<crate::fsx::Scratch>>,
}

/// The run's shared state: options, progress, timings, warnings and the pass list.
struct Run<'a> {
    o: &'a QuantizeOptions,
    progress: &'a dyn Progress,
    times: BTreeMap<String, f64>,
    warnings: Vec<String>,
    runner: Runner,
    /// The float model's declared inputs (the written model keeps them).
    declared: Vec<crate::ir::Value>,
    /// Every method's range of the calibration statistics, per value and grid.
    candidates: Candidates,
    /// Lines for the summary's notes.
    notes: Vec<String>,
}

impl Run<'_> {
    fn time(&mut self, what: &str, since: Instant) {
        self.times
            .insert(what.to_string(), since.elapsed().as_secs_f64());
    }

    fn missed(self, what: String) -> Finish {
        Finish::Missed {
            warnings: self.warnings,
            what,
        }
    }
}

/// Whether 16-bit activations may be used (Q/DQ then need opset 21): in every
/// mixed-precision run. An overrides file counts whatever it promotes (float only,
/// nothing at all): it replays the run that wrote it, which was one.
fn wide(o: &QuantizeOptions, overrides: Option<&Overrides>) -> bool {
    o.precision.goal.is_some() || o.precision.size_budget_mb.is_some() || overrides.is_some()
}

/// Quantizes the model `o` names: load, prepare, calibrate, choose ranges, mixed
/// precision, materialise and validate, summarise.
pub fn quantize(o: &QuantizeOptions, progress: &dyn Progress) -> Result<Finish, PipelineError> {
    adaround::check(o).map_err(PipelineError::Options)?;
    let mut run = Run {
        o,
        progress,
        times: BTreeMap::new(),
        warnings: Vec::new(),
        runner: Runner::new(),
        declared: Vec::new(),
        candidates: Candidates::default(),
        notes: Vec::new(),
    };
    let t = Instant::now();
    let (model, mut data) = inputs::load(o, progress)?;
    run.declared = interface::declared_inputs(&model);
    run.warnings.append(&mut data.warnings);
    run.time("load", t);

    let t = Instant::now();
    let float_nodes: Vec<String> = data
        .overrides
        .as_ref()
        .map(|ov| ov.float_nodes().into_iter().collect())
        .unwrap_or_default();
    let input = PrepareInput {
        common: &o.common,
        float_nodes: &float_nodes,
        first_sample: data.first.as_ref(),
        wide: wide(o, data.overrides.as_ref()),
        dynamic: o.mode == options::Mode::Dynamic,
        dump: &o.dump,
    };
    let p = match prepare::prepare(&input, model, &mut run.runner, progress)? {
        PrepareEnd::Prepared(p) => *p,
        PrepareEnd::Stopped { after } => return Ok(Finish::Stopped { after }),
    };
    if let (Some(ov), Some(f)) = (&data.overrides, &o.precision.overrides) {
        // Names may refer to the model as given or as prepared (BatchNormalization folded…).
        ov.check_names(&p.float)
            .or_else(|_| ov.check_names(&p.model))
            .map_err(|error| PipelineError::Overrides {
                path: f.clone(),
                error,
            })?;
    }
    run.time("prepare", t);
    if o.mode == options::Mode::Dynamic {
        return dynamic::quantize_dynamic(run, p, data);
    }
    quantize_prepared(run, p, data)
}

/// The samples `adaptive` may compare its sets on (evenly spread, at most half of the
/// calibration set, so that the compared ranges come from as many other samples).
fn compared_candidates(o: &QuantizeOptions, n_calib: usize) -> Vec<usize> {
    let k_max = o
        .select_samples
        .min(if n_calib >= 2 { n_calib / 2 } else { n_calib });
    (0..k_max).map(|i| i * n_calib / k_max).collect()
}

/// Calibrated statistics (or those of the ranges file), the prepared model's outputs for
/// the samples `adaptive` compares on, and the range sets of the other samples.
struct Calibrated {
    stats: CalibrationFile,
    kept: BTreeMap<usize, Sample>,
    held_out: Option<adaptive::RangeSets>,
}

fn calibrate_step(
    run: &mut Run,
    p: &Prepared,
    calib: Option<&Dataset>,
    ranges_file: Option<CalibrationFile>,
) -> Result<Calibrated, PipelineError> {
    let o = run.o;
    let keep: BTreeSet<usize> = if o.method == Method::Adaptive {
        compared_candidates(o, calib.map_or(0, |d| d.len()))
            .into_iter()
            .collect()
    } else {
        BTreeSet::new()
    };
    match (ranges_file, calib) {
        (Some(f), _) => {
            let run = p.sha256.get()?;
            if f.model_sha256 != run {
                let path = match &o.common.calib {
                    options::CalibSource::Ranges(path) => path.clone(),
                    _ => PathBuf::new(),
                };
                return Err(PipelineError::RangesFile {
                    path,
                    file: f.model_sha256,
                    run,
                });
            }
            Ok(Calibrated {
                stats: f,
                kept: BTreeMap::new(),
                held_out: None,
            })
        }
        (None, Some(ds)) => {
            // `adaptive`'s range sets from the samples it does not compare, computed while
            // calibrating, before their statistics are merged with the compared samples'.
            let mut held_out = None;
            let mut held = |others: &BTreeMap<String, TensorStats>| {
                let mut own = Candidates::default();
                held_out = adaptive::range_sets(&p.plan, others, &o.method_options, &mut own).ok();
            };
            let keep = Keep {
                samples: &keep,
                others: &mut held,
            };
            let how = calibrate::How::of(&o.common);
            let (stats, kept) = calibrate::calibrate_with(p, ds, &how, run.progress, keep)?;
            Ok(Calibrated {
                stats,
                kept,
                held_out,
            })
        }
        (None, None) => Err(PipelineError::Options(
            "no calibration data: give --calib DATA (or --ranges FILE)".into(),
        )),
    }
}

/// The ranges written before mixed precision: the adaptive selection's, or the method's;
/// then the overrides file's precisions. Returns the plan, the method of each range, what
/// the selection did and the method used for later range choices.
type Chosen = (Plan, BTreeMap<String, Method>, Option<Selection>, Method);

fn ranges_step(
    run: &mut Run,
    p: &Prepared,
    c: &mut Calibrated,
    data: &inputs::Loaded,
) -> Result<Chosen, PipelineError> {
    let o = run.o;
    let opts = &o.method_options;
    let mut plan = p.plan.clone();
    // The range set is chosen on the all-8-bit plan, before any override, so that a run
    // replaying its overrides file chooses the same.
    let (mut chosen, selection, method) = if o.method == Method::Adaptive {
        let compared = compared_samples(run.o, &c.stats, data.calib.as_ref(), &mut c.kept)?;
        let (chosen, sel) = adaptive::select(
            p,
            &mut plan,
            adaptive::Statistics {
                all: &c.stats.tensors,
                candidates: &mut run.candidates,
                held_out: c.held_out.take(),
            },
            opts,
            compared,
            run.progress,
        )?;
        let m = sel.chosen;
        (chosen, Some(sel), m)
    } else {
        (BTreeMap::new(), None, o.method)
    };
    if let (Some(ov), Some(f)) = (&data.overrides, &o.precision.overrides) {
        precision::apply_overrides(&mut plan, &p.model, ov, f)?;
    }
    if data.overrides.is_some() || selection.is_none() {
        // Without overrides, the selection has already written `method`'s ranges.
        chosen = choose_ranges(
            &mut plan,
            &c.stats.tensors,
            method,
            opts,
            &mut run.candidates,
        )?;
    }
    Ok((plan, chosen, selection, method))
}

/// The calibration samples the adaptive selection compares its sets on, with the float
/// outputs kept for them while calibrating. Each compared set costs about one calibration
/// pass per sample: large models compare on fewer samples (at least one), evenly spread
/// over the candidates.
fn compared_samples(
    o: &QuantizeOptions,
    stats: &CalibrationFile,
    calib: Option<&Dataset>,
    kept: &mut BTreeMap<usize, Sample>,
) -> Result<adaptive::Compared, PipelineError> {
    let candidates = compared_candidates(o, calib.map_or(0, |d| d.len()));
    let k_max = candidates.len();
    let per_sample = stats.tensors.values().map(|s| s.count()).sum::<u64>() / stats.samples.max(1);
    let cap = (adaptive::SELECT_VALUES / per_sample.max(1)).max(1) as usize;
    let k = k_max.min(cap);
    let mut samples = Vec::with_capacity(k);
    let mut references = Vec::with_capacity(k);
    if let Some(d) = calib {
        for j in 0..k {
            let i = candidates[j * k_max / k];
            samples.push(d.get(i)?);
            if let Some(out) = kept.remove(&i) {
                references.push(out);
            }
        }
    }
    Ok(adaptive::Compared {
        samples,
        references,
    })
}

/// Runs everything after preparation.
fn quantize_prepared(
    mut run: Run,
    mut p: Prepared,
    mut data: inputs::Loaded,
) -> Result<Finish, PipelineError> {
    let o = run.o;
    if o.equalize {
        let t = Instant::now();
        equalize::equalize_prepared(&mut p)?;
        run.time("equalize", t);
    }
    if let Some(alpha) = o.smooth {
        let t = Instant::now();
        let calib = data.calib.as_ref().ok_or_else(|| {
            PipelineError::Options(
                "--smooth: the activations' channel ranges come from calibration data: give --calib DATA (not --ranges)".into(),
            )
        })?;
        smooth::smooth_prepared(&mut p, alpha, calib, run.progress)?;
        run.time("smooth", t);
    }
    let t = Instant::now();
    let ranges_file = data.ranges_file.take();
    let mut cal = calibrate_step(&mut run, &p, data.calib.as_ref(), ranges_file)?;
    // NaN and infinities are kept out of the ranges: say where there were any.
    run.warnings.extend(cal.stats.non_finite_warnings());
    // Subgraphs no sample reached, and values calibration did not observe, have no
    // statistics: the ops needing them stay float.
    let built = std::mem::take(&mut p.plan);
    let un = plan::Uncalibrated {
        shape_constants: p.shape_constants.clone(),
        ..Default::default()
    };
    p.plan = plan::fit_to_statistics(&p.model, &p.cfg, built, un, |v| {
        cal.stats.tensors.contains_key(v)
    })
    .map_err(PipelineError::Plan)?;
    run.time("calibrate", t);
    if let (Some(_), Some(calib)) = (p.cfg.weight_grid.index_bits(), &data.calib) {
        let t = Instant::now();
        energy::collect(
            &p.model,
            &p.base_dir,
            &mut p.plan,
            calib,
            false,
            run.progress,
        )?;
        run.time("input energy", t);
    }

    let t = Instant::now();
    let (mut plan, chosen, selection, method) = ranges_step(&mut run, &p, &mut cal, &data)?;
    run.time("ranges", t);
    if let options::Rounding::Adaround(budget) = o.rounding {
        let t = Instant::now();
        let calib = data.calib.as_ref().ok_or_else(|| {
            PipelineError::Options(
                "--rounding adaround learns on the layers' inputs: give --calib DATA (not --ranges)".into(),
            )
        })?;
        let l = adaround::learn_rounding(
            &p.model,
            &p.base_dir,
            &mut plan,
            calib,
            budget,
            run.progress,
        )?;
        run.notes.push(adaround::note(&l, budget));
        run.time("adaround", t);
    }
    if o.bias_correction {
        let t = Instant::now();
        let calib = data.calib.as_ref().ok_or_else(|| {
            PipelineError::Options(
                "--bias-correction: the output shifts are measured on calibration data: give --calib DATA (not --ranges)".into(),
            )
        })?;
        bias_correct::correct_prepared(&mut p, &plan, calib, run.progress)?;
        run.time("bias correction", t);
    }

    p.plan.compact |= data.overrides.as_ref().is_some_and(|ov| ov.compact);
    let allocation = match budget_step(&mut run, &mut p, &mut plan, &data, (&cal.stats, method))? {
        Ok(a) => a,
        Err(what) => return Ok(run.missed(what)),
    };
    let budget = o.precision.size_budget_mb.map(|mb| (mb * 1e6) as u64);
    let narrow = allocation.is_some();
    let mut tuned = None;
    if o.precision.goal.is_some() {
        let folds = match (o.precision.goal, &data.eval, &data.calib) {
            (Some(_), None, Some(calib)) => Some(fold_statistics(&mut run, &p, calib)?),
            _ => None,
        };
        let t = Instant::now();
        let basis = precision::Basis {
            p: &p,
            plan: &plan,
            stats: &cal.stats,
            method,
            opts: &o.method_options,
        };
        let tu = precision_step(&mut run, &basis, &data, folds.as_ref())?;
        run.time("sensitivity", t);
        if o.precision.goal.is_some() {
            run.warnings
                .extend(precision::feedback_warnings(&p.model, &plan, &cal.stats));
        }
        if let (false, Some(goal)) = (tu.choice.met, o.precision.goal) {
            match tu.choice.estimate {
                // The estimate meets the goal but its lower bound does not, even with
                // every promotion: the data cannot say more; the best model is written.
                Some(e) if goal.meets(e.figure) => {
                    run.warnings.push(precision::unsupported(&goal, &e));
                }
                _ => {
                    let what = format!(
                        "{}: unreachable on {} search samples; the best reachable is {} (every activation 16-bit, or float, with 8-bit weights; {} configurations judged)",
                        precision::goal_text(&goal),
                        tu.samples,
                        goal.describe(tu.choice.estimate.map_or(tu.choice.best, |e| e.figure)),
                        tu.choice.evaluations,
                    );
                    return Ok(run.missed(what));
                }
            }
        }
        tuned = Some(tu);
    }
    let source = Source {
        p: &p,
        plan: plan.clone(),
        chosen,
        base_plan: &p.plan,
        stats: &cal.stats,
        method,
        opts: &o.method_options,
    };
    let checks = Checks {
        eval: data.eval.as_ref().filter(|_| o.validate),
        labels: data.labels.as_deref(),
        goal: o.precision.goal,
        budget: budget.map(|b| (b, o.precision.size_budget_mb.unwrap_or(0.0), narrow)),
        output: &o.output,
    };
    let mut round = Round {
        runner: &mut run.runner,
        candidates: &mut run.candidates,
        progress: run.progress,
        dump: &o.dump,
        times: &mut run.times,
    };
    let m = match materialise::materialise(source, tuned.as_mut(), &checks, &mut round)? {
        End::Done(m) => *m,
        End::Missed(what) => return Ok(run.missed(what)),
        End::Stopped { after } => return Ok(Finish::Stopped { after }),
    };
    let choices = Choices {
        tuned: tuned.as_ref(),
        allocation,
        selection,
    };
    finish(run, &p, m, choices, &cal.stats, &data)
}

/// What the mixed-precision steps chose.
struct Choices<'a> {
    tuned: Option<&'a precision::Tuned>,
    allocation: Option<budget::Allocation>,
    selection: Option<Selection>,
}

/// Input energy for k-means weights an overrides file set, then `--size-budget`: when the
/// all-8-bit model does not fit, each weight's storage (written into `plan` and the base
/// plan). `Err` is the one-line reason no storage fits. `stats` and `method` give the
/// simulation the budget measures each weight's output noise on.
fn budget_step(
    run: &mut Run,
    p: &mut Prepared,
    plan: &mut Plan,
    data: &inputs::Loaded,
    (stats, method): (&CalibrationFile, Method),
) -> Result<Result<Option<budget::Allocation>, String>, PipelineError> {
    let o = run.o;
    let kmeans_without_energy = plan.values.iter().any(|(k, d)| {
        matches!(d, Decision::Weight { grid, .. } if !grid.is_uniform())
            && !plan.importance.contains_key(k)
    });
    if let (true, Some(calib)) = (kmeans_without_energy, &data.calib) {
        let t = Instant::now();
        energy::collect(&p.model, &p.base_dir, plan, calib, false, run.progress)?;
        run.time("input energy", t);
    }
    let Some(mb) = o.precision.size_budget_mb else {
        return Ok(Ok(None));
    };
    // Every byte that changes nothing computed is a byte the weights keep.
    plan.compact = true;
    p.plan.compact = true;
    let t = Instant::now();
    let base = budget::written_size(p, plan)?;
    if base <= (mb * 1e6) as u64 {
        run.time("size budget", t);
        return Ok(Ok(None));
    }
    let mut measured = None;
    if let Some(calib) = &data.calib {
        energy::collect(&p.model, &p.base_dir, plan, calib, true, run.progress)?;
        if o.precision.budget_cost == budget::Cost::Output {
            let t = Instant::now();
            let basis = precision::Basis {
                p,
                plan,
                stats,
                method,
                opts: &o.method_options,
            };
            let samples = o.precision.sensitivity_samples;
            measured = Some(budget::output_noise(
                &basis,
                calib,
                samples,
                &mut run.candidates,
                run.progress,
            )?);
            run.time("size budget: output noise", t);
        }
    }
    let outcome = budget::fit(p, plan, base, mb, measured.as_ref())?;
    run.time("size budget", t);
    match outcome {
        budget::Outcome::Fits(a) => {
            p.plan.importance = plan.importance.clone();
            tune::apply_weights(&mut p.plan, &a.storage());
            Ok(Ok(Some(a)))
        }
        budget::Outcome::Unreachable(what) => Ok(Err(what)),
    }
}

/// The calibration data's fold statistics (`pipeline::folds`), timed as `folds`.
fn fold_statistics(
    run: &mut Run,
    p: &Prepared,
    calib: &Dataset,
) -> Result<folds::FoldStatistics, PipelineError> {
    if calib.len() < 2 {
        return Err(PipelineError::Options(
            "a goal is judged on calibration samples the ranges did not see: one calibration sample cannot be split; give more samples or --eval DATA".into(),
        ));
    }
    let t = Instant::now();
    let k = folds::fold_count(calib.len());
    let f = folds::statistics(p, calib, k, run.o.common.threads, run.progress)?;
    run.time("folds", t);
    Ok(f)
}

/// Sensitivity and search on the evaluation data (else the calibration data, out of
/// fold).
fn precision_step(
    run: &mut Run,
    basis: &precision::Basis,
    data: &inputs::Loaded,
    folds: Option<&folds::FoldStatistics>,
) -> Result<precision::Tuned, PipelineError> {
    let o = run.o;
    let (search_data, labels) = data
        .eval
        .as_ref()
        .map(|e| (e, data.labels.clone()))
        .or_else(|| data.calib.as_ref().map(|d| (d, data.labels.clone())))
        .ok_or_else(|| PipelineError::Options("mixed precision needs data to search on".into()))?;
    let request = precision::Request {
        goal: o.precision.goal,
        data: search_data,
        labels,
        samples: o.precision.sensitivity_samples,
        cache: o.sensitivity_cache(),
        folds: folds.filter(|_| data.eval.is_none()),
    };
    let tuned = precision::tune(basis, &request, &mut run.candidates, run.progress)?;
    for (part, secs) in &tuned.times {
        run.times.insert(format!("sensitivity: {part}"), *secs);
    }
    Ok(tuned)
}

/// The summary, the overrides and the report of a materialised model.
fn finish(
    mut run: Run,
    p: &Prepared,
    m: Materialised,
    choices: Choices,
    stats: &CalibrationFile,
    data: &inputs::Loaded,
) -> Result<Finish, PipelineError> {
    let o = run.o;
    let Choices {
        tuned,
        allocation,
        selection,
    } = choices;
    for (name, n) in &m.inserted.bias_saturated {
        run.warnings
            .push(format!("bias '{name}': {n} values saturated int32"));
    }
    let overrides = (tuned.is_some() || allocation.is_some()).then(|| {
        let path = o
            .precision
            .save_overrides
            .clone()
            .unwrap_or_else(|| o.overrides_sidecar());
        let mut ov = tuned.map_or_else(Overrides::new, |tu| tu.overrides());
        if let Some(a) = &allocation {
            budget::record(a, &mut ov);
        }
        (path, ov)
    });
    let precision = tuned.zip(overrides.as_ref()).map(|(tu, (path, _))| {
        tu.summary(
            p,
            &m.plan,
            o.precision.goal,
            // The budget is described by its allocation.
            None,
            path,
        )
    });
    let lint = crate::lint::lint(&m.model, &crate::lint::LintOptions::new(p.cfg.target))
        .ok()
        .filter(|r| r.fusion_model);
    let eval_samples = data.eval.as_ref().map_or(0, |e| e.len());
    let mut s = summary::summarise(summary::Parts {
        o,
        p,
        m: &m,
        fusion: lint.as_ref().map(|r| r.coverage()),
        selection,
        mixed: tuned.is_some() || allocation.is_some() || o.precision.overrides.is_some(),
        size_budget: allocation,
        precision,
        calibration_samples: stats.samples as usize,
        eval_samples,
        seconds: std::mem::take(&mut run.times),
        passes: run.runner.log().to_vec(),
    });
    let report = if o.report {
        let mut input = report::build(
            report::Sources {
                p,
                plan: &m.plan,
                chosen: &m.chosen,
                stats: &stats.tensors,
                candidates: &mut run.candidates,
                opts: &o.method_options,
                method: o.method,
                written: &m.inserted,
            },
            &s,
        )?;
        report::add_fusion(&mut input, lint.as_ref());
        if let Some(ev) = &data.eval {
            report::add_layers(
                &mut input,
                &p.float,
                &m.model,
                ev,
                o.common.memory_budget_mib,
                run.progress,
            )?;
        }
        Some(input)
    } else {
        None
    };
    s.notes.append(&mut run.notes);
    let (mut model, notes) =
        interface::written(p, m.model, &m.plan, data.first.as_ref(), &o.common.shapes);
    s.notes.extend(notes);
    s.size_after = crate::onnx::encoded_size(&model);
    if let Some(mb) = o.precision.size_budget_mb {
        if s.size_after > (mb * 1e6) as u64 {
            return Ok(run.missed(format!(
                "--size-budget {mb} MB: the written model takes {:.4} MB",
                s.size_after as f64 / 1e6
            )));
        }
    }
    if !o.drop_pinned_inputs {
        let pinned = o.common.pins.iter().map(|(n, _)| n.clone()).collect();
        let notes = interface::keep_pinned_inputs(&mut model, &run.declared, &pinned)?;
        s.notes.extend(notes);
    }
    let sensitivity = tuned
        .and_then(|tu| tu.new_sensitivity())
        .map(|f| (o.sensitivity_cache(), f.clone()));
    Ok(Finish::Quantized(Box::new(Quantized {
        model,
        summary: s,
        warnings: run.warnings,
        overrides,
        sensitivity,
        report,
        side_files: p
            .weight_memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .side_files(),
    })))
}
