//! Sensitivity analysis and the precision search.
//!
//! Both run the [`SimModel`] on a subsample of the data against the float model's outputs
//! on the same samples. Per unit, sensitivity measures one configuration, *promoted*:
//! every unit 8-bit except this one at 16 bits — what promoting it buys. Probes may run
//! on a subsample ([`Evaluator::probe_on`]); the search judges on every sample.
//!
//! Before any sensitivity analysis, [`outlook`] judges the all-8-bit configuration, then
//! every unit at 16 bits, then every unit float: these need no order, and when the last
//! two miss the goal no promotion can meet it. The search orders units by *promoted*
//! (best first), finds the shortest prefix of promotions (16-bit first, then float as a
//! last resort) that meets the goal by bisection, then demotes again what is not needed:
//! the promoted units, least useful first, are tried as one group, and a group that
//! misses the goal is split in halves. A configuration's figure is pooled over the
//! samples, or its bootstrap lower bound ([`Judge`]); no configuration is judged twice.
//!
//! When the lower bound over every sample is the judge and the probes run on fewer
//! samples ([`Evaluator::screens`]), the search steers on the probe samples: a
//! configuration's figure is forecast as that of a configuration judged on every sample
//! moved by the difference of the two on the probes. The prefix bisection runs on
//! forecasts and its result is judged on every sample (on a miss, the bisection goes on
//! above it on every sample). Demotions are accepted for now on their forecast; when none
//! is left, the last configuration accepted is judged on every sample, and on a miss the
//! longest run of accepted demotions that meets the goal there is found by bisection, the
//! demotion after it split and the later ones tried again. A configuration is only ever
//! kept on the judgement over every sample. Sensitivity results are cached in a file
//! keyed by the SHA-256 of the simulation model, the parameters and the samples.

use super::sim::SimModel;
use super::{Precision, TuneError, Unit};
use crate::data::Sample;
use crate::exec::Session;
use crate::ir::Tensor;
use crate::report::estimate::{self, Estimate, SampleComparison};
use crate::report::metrics::as_f32;
use crate::report::metrics::{is_classifier_shape, Comparison, Metrics};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the search must reach.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Goal {
    /// Output SQNR (dB, the worst output) at least this.
    Sqnr { db: f64 },
    /// Task accuracy (with labels) or top-1 agreement drops at most this many points.
    MaxDrop { points: f64 },
}

impl Goal {
    /// The figure the goal is about, from per-output metrics (higher is better).
    pub fn figure(&self, m: &BTreeMap<String, Metrics>) -> f64 {
        match self {
            Goal::Sqnr { .. } => m.values().map(|x| x.sqnr_db).fold(f64::INFINITY, f64::min),
            Goal::MaxDrop { .. } => {
                // negative drop in points: higher is better
                m.values()
                    .filter_map(|x| match (x.accuracy_ref, x.accuracy_test) {
                        (Some(r), Some(t)) => Some(-(r - t) * 100.0),
                        _ => x.top1_agreement.map(|a| -(1.0 - a) * 100.0),
                    })
                    .fold(f64::INFINITY, f64::min)
            }
        }
    }

    /// True when `figure` (from [`Goal::figure`]) meets the goal.
    pub fn meets(&self, figure: f64) -> bool {
        match self {
            Goal::Sqnr { db } => figure >= *db,
            Goal::MaxDrop { points } => figure.is_finite() && -figure <= *points + 1e-9,
        }
    }

    /// The figure [`Goal::figure`] must reach (higher is better).
    pub fn threshold(&self) -> f64 {
        match self {
            Goal::Sqnr { db } => *db,
            Goal::MaxDrop { points } => -points,
        }
    }

    /// An estimate of the figure with its bounds, as a user reads it.
    pub fn describe_estimate(&self, e: &Estimate) -> String {
        let pct = e.level * 100.0;
        match self {
            Goal::Sqnr { .. } => format!(
                "{:.2} dB ({pct:.0}% bounds {:.2} .. {:.2} dB, {} samples)",
                e.figure, e.lower, e.upper, e.samples
            ),
            Goal::MaxDrop { .. } => format!(
                "a drop of {:.2} points ({pct:.0}% bounds {:.2} .. {:.2}, {} samples)",
                -e.figure, -e.upper, -e.lower, e.samples
            ),
        }
    }

    /// The figure as a user reads it.
    pub fn describe(&self, figure: f64) -> String {
        match self {
            Goal::Sqnr { .. } => format!("{figure:.2} dB"),
            Goal::MaxDrop { .. } => format!("a drop of {:.2} points", -figure),
        }
    }
}

/// Runs configurations of a simulation model on fixed samples.
pub struct Evaluator<'a> {
    pub sim: &'a SimModel,
    session: Session,
    samples: Vec<Sample>,
    reference: Vec<BTreeMap<String, Tensor>>,
    labels: Option<Vec<i64>>,
    threads: usize,
    /// Weights on 4 bits in every configuration this evaluator runs.
    pub w4: BTreeSet<String>,
    /// Out-of-fold parameters, when each sample runs with ranges from the other samples.
    held_out: Option<HeldOut>,
    /// The samples sensitivity probes run on (indices; every sample by default).
    probe: Vec<usize>,
    /// How a configuration's goal figure is judged.
    pub judge: Judge,
}

/// How [`Evaluator::judged`] turns a configuration's outputs into the figure a goal is
/// checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge {
    /// The figure pooled over the samples.
    Pooled,
    /// The bootstrap lower bound of the pooled figure (`report::estimate`).
    LowerBound,
}

/// Ranges from other samples: each sample runs with the parameters of its fold, computed
/// from the statistics of the samples outside the fold.
#[derive(Clone, Debug)]
pub struct HeldOut {
    /// One per fold.
    pub params: Vec<super::sim::RangeParams>,
    /// The fold of each sample.
    pub fold_of: Vec<usize>,
}

/// What one configuration gave.
type Outcome = Result<BTreeMap<String, Metrics>, TuneError>;

/// One configuration: a precision per unit and the weights on 4 bits.
#[derive(Clone, Debug)]
pub struct Trial {
    pub acts: Vec<Precision>,
    pub w4: BTreeSet<String>,
}

impl<'a> Evaluator<'a> {
    /// `reference` is the float model's session; `samples` the (sub)sample to use.
    pub fn new(
        sim: &'a SimModel,
        base_dir: Option<&Path>,
        reference: &Session,
        samples: Vec<Sample>,
        labels: Option<Vec<i64>>,
    ) -> Result<Evaluator<'a>, TuneError> {
        let mut refs = Vec::with_capacity(samples.len());
        for s in &samples {
            refs.push(reference.run(s)?);
        }
        Self::with_references(sim, base_dir, samples, refs, labels)
    }

    /// [`Evaluator::new`] with the reference outputs of `samples` already computed.
    pub fn with_references(
        sim: &'a SimModel,
        base_dir: Option<&Path>,
        samples: Vec<Sample>,
        references: Vec<Sample>,
        labels: Option<Vec<i64>>,
    ) -> Result<Evaluator<'a>, TuneError> {
        let first = samples
            .first()
            .ok_or_else(|| TuneError::Other("no samples for sensitivity analysis".into()))?;
        if references.len() != samples.len() {
            return Err(TuneError::Other(format!(
                "{} reference outputs for {} samples",
                references.len(),
                samples.len()
            )));
        }
        // The engine reads the weights' codes from the simulation's side file itself,
        // dequantizing them as it loads the model.
        let all8 = vec![Precision::A8; sim.params.len()];
        let session = Session::from_ir(
            sim.model.clone(),
            base_dir,
            &sim.feed(first, &all8, &BTreeSet::new()),
            &Default::default(),
        )?;
        let n = samples.len();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        Ok(Evaluator {
            sim,
            session,
            samples,
            reference: references,
            labels,
            threads,
            w4: BTreeSet::new(),
            held_out: None,
            probe: (0..n).collect(),
            judge: Judge::Pooled,
        })
    }

    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// Runs every sample with its fold's parameters (`held.fold_of` has one entry per
    /// sample).
    pub fn with_held_out(mut self, held: HeldOut) -> Result<Self, TuneError> {
        if held.fold_of.len() != self.samples.len()
            || held.fold_of.iter().any(|&f| f >= held.params.len())
        {
            return Err(TuneError::Other(format!(
                "{} fold assignments for {} samples and {} folds",
                held.fold_of.len(),
                self.samples.len(),
                held.params.len()
            )));
        }
        self.held_out = Some(held);
        Ok(self)
    }

    /// Sensitivity probes run on `k` evenly spaced samples only (all when `k` is larger).
    pub fn probe_on(&mut self, k: usize) {
        let n = self.samples.len();
        let k = k.clamp(1, n.max(1));
        self.probe = (0..k).map(|i| i * n / k).collect();
    }

    /// Samples the sensitivity probes run on.
    pub fn probe_samples(&self) -> usize {
        self.probe.len()
    }

    /// Sample `i` fed for `config`, with its fold's parameters when held out.
    fn feed_of(&self, i: usize, config: &[Precision], w4: &BTreeSet<String>) -> Sample {
        let s = &self.samples[i];
        match &self.held_out {
            Some(h) => self.sim.feed_ranges(s, config, w4, &h.params[h.fold_of[i]]),
            None => self.sim.feed(s, config, w4),
        }
    }

    /// Each sample's per-output comparison for `config` (with the evaluator's 4-bit
    /// weights), samples spread over threads.
    pub fn per_sample(&self, config: &[Precision]) -> Result<Vec<SampleComparison>, TuneError> {
        let all: Vec<usize> = (0..self.samples.len()).collect();
        self.per_sample_of(config, &all)
    }

    /// [`Evaluator::per_sample`] on the samples `which` (indices), in that order.
    fn per_sample_of(
        &self,
        config: &[Precision],
        which: &[usize],
    ) -> Result<Vec<SampleComparison>, TuneError> {
        let n = which.len();
        let next = AtomicU64::new(0);
        let run = |k: usize| -> Result<SampleComparison, TuneError> {
            let i = which[k];
            let out = self.session.run(&self.feed_of(i, config, &self.w4))?;
            let mut mine = BTreeMap::new();
            self.add_sample(&mut mine, i, &out);
            Ok(mine)
        };
        let parts: Vec<Vec<(usize, Result<SampleComparison, TuneError>)>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..self.threads.min(n.max(1)))
                    .map(|_| {
                        scope.spawn(|| {
                            let mut mine = Vec::new();
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                                if i >= n {
                                    break;
                                }
                                mine.push((i, run(i)));
                            }
                            mine
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            });
        let mut out: Vec<Option<SampleComparison>> = (0..n).map(|_| None).collect();
        for (i, r) in parts.into_iter().flatten() {
            out[i] = Some(r?);
        }
        out.into_iter()
            .map(|r| r.ok_or_else(|| TuneError::Other("a worker thread failed".into())))
            .collect()
    }

    /// True when the search screens configurations on the probe samples before judging
    /// them on every sample: the goal is judged by the lower bound over more samples than
    /// the probes run on.
    pub fn screens(&self) -> bool {
        self.judge == Judge::LowerBound && self.probe.len() < self.samples.len()
    }

    /// `config`'s goal figure pooled over the probe samples only (samples spread over
    /// threads): a cheap forecast of how the figure on every sample moves.
    pub fn screened(&self, goal: Goal, config: &[Precision]) -> Result<f64, TuneError> {
        let per = self.per_sample_of(config, &self.probe)?;
        let all: Vec<usize> = (0..per.len()).collect();
        Ok(goal.figure(&estimate::pool(&per, &all)))
    }

    /// `config`'s goal figure as the evaluator judges it, and the estimate (figure with
    /// bootstrap bounds) when it judges by the lower bound.
    pub fn judged(
        &self,
        goal: Goal,
        config: &[Precision],
    ) -> Result<(f64, Option<Estimate>), TuneError> {
        match self.judge {
            Judge::Pooled => Ok((goal.figure(&self.eval(config)?), None)),
            Judge::LowerBound => {
                let e = estimate::bootstrap(&self.per_sample(config)?, |m| goal.figure(m));
                Ok((e.lower, Some(e)))
            }
        }
    }

    /// Adds sample `i`'s outputs `out` to `acc`, per output shared with the reference.
    fn add_sample(&self, acc: &mut BTreeMap<String, Comparison>, i: usize, out: &Sample) {
        for (name, r) in &self.reference[i] {
            let Some(t) = out.get(name) else { continue };
            let (Some(vr), Some(vt)) = (as_f32(r), as_f32(t)) else {
                continue;
            };
            if vr.len() != vt.len() {
                continue;
            }
            acc.entry(name.clone()).or_default().add(
                &vr,
                &vt,
                is_classifier_shape(&r.shape()),
                self.labels.as_ref().and_then(|l| l.get(i).copied()),
            );
        }
    }

    /// Per-output metrics of one configuration (with the evaluator's 4-bit weights).
    pub fn eval(&self, config: &[Precision]) -> Result<BTreeMap<String, Metrics>, TuneError> {
        self.eval_with(config, &self.w4)
    }

    /// Per-output metrics of one configuration with the weights in `w4` on 4 bits.
    pub fn eval_with(
        &self,
        config: &[Precision],
        w4: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Metrics>, TuneError> {
        self.eval_feeds(|i| self.feed_of(i, config, w4), 0..self.samples.len())
    }

    /// [`Evaluator::eval_with`] on the probe samples only.
    fn eval_probe(
        &self,
        config: &[Precision],
        w4: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Metrics>, TuneError> {
        self.eval_feeds(|i| self.feed_of(i, config, w4), self.probe.iter().copied())
    }

    /// Per-output metrics with every unit at 8 bits on `params`: the written model for
    /// another choice of ranges.
    pub fn eval_params(
        &self,
        params: &super::sim::RangeParams,
    ) -> Result<BTreeMap<String, Metrics>, TuneError> {
        self.eval_feeds(
            |i| self.sim.feed_params(&self.samples[i], params),
            0..self.samples.len(),
        )
    }

    fn eval_feeds(
        &self,
        feed: impl Fn(usize) -> Sample,
        which: impl IntoIterator<Item = usize>,
    ) -> Result<BTreeMap<String, Metrics>, TuneError> {
        let mut acc: BTreeMap<String, Comparison> = BTreeMap::new();
        for i in which {
            let out = self.session.run(&feed(i))?;
            self.add_sample(&mut acc, i, &out);
        }
        Ok(acc.into_iter().map(|(k, c)| (k, c.metrics())).collect())
    }

    /// Evaluates many configurations on the probe samples, spread over threads; results
    /// in input order.
    pub fn eval_many(
        &self,
        configs: &[Trial],
        progress: &(dyn Fn() + Sync),
    ) -> Result<Vec<BTreeMap<String, Metrics>>, TuneError> {
        self.spread(configs, |t| self.eval_probe(&t.acts, &t.w4), progress)
    }

    /// [`Evaluator::eval_params`] of many parameter sets, spread over threads; results in
    /// input order.
    pub fn eval_params_many(
        &self,
        sets: &[super::sim::RangeParams],
        progress: &(dyn Fn() + Sync),
    ) -> Result<Vec<BTreeMap<String, Metrics>>, TuneError> {
        self.spread(sets, |p| self.eval_params(p), progress)
    }

    fn spread<T: Sync>(
        &self,
        items: &[T],
        run: impl Fn(&T) -> Outcome + Sync,
        progress: &(dyn Fn() + Sync),
    ) -> Result<Vec<BTreeMap<String, Metrics>>, TuneError> {
        let next = AtomicU64::new(0);
        let mut results: Vec<Option<Outcome>> = (0..items.len()).map(|_| None).collect();
        let chunks: Vec<Vec<(usize, Outcome)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.threads.min(items.len().max(1)))
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                            if i >= items.len() {
                                break;
                            }
                            mine.push((i, run(&items[i])));
                            progress();
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for (i, r) in chunks.into_iter().flatten() {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TuneError::Other("a worker thread failed".into()))))
            .collect()
    }
}

/// Sensitivity of one unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    pub root: String,
    pub producer: String,
    pub op_type: String,
    /// Worst-output SQNR with every unit 8-bit but this one at 16 bits.
    pub promoted_db: f64,
}

/// The cached analysis.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SensitivityFile {
    pub format: String,
    pub key: String,
    pub samples: usize,
    pub baseline_db: f64,
    pub units: Vec<Sensitivity>,
}

const CACHE_FORMAT: &str = "qrange-sensitivity/2";

impl SensitivityFile {
    /// Writes the cache file (pretty JSON).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TuneError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| TuneError::Other(e.to_string()))?;
        Ok(format!("{text}\n").into_bytes())
    }
}

/// Key of a cache entry: the simulation model, its parameters and the samples.
pub fn cache_key(ev: &Evaluator) -> Result<String, TuneError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    // The model as the engine reads it, then its side files' bytes, streamed.
    crate::onnx::write_identity(&ev.sim.model, &mut h)
        .map_err(|e| TuneError::Other(e.to_string()))?;
    for (a, b) in &ev.sim.params {
        for p in [a, b] {
            for x in [p.scale, p.zero_point, p.qmin, p.qmax] {
                h.update(x.to_le_bytes());
            }
        }
    }
    for w in &ev.w4 {
        h.update(b"w4:");
        h.update(w.as_bytes());
    }
    if let Some(held) = &ev.held_out {
        h.update(b"held out:");
        for f in &held.fold_of {
            h.update((*f as u64).to_le_bytes());
        }
        for rp in &held.params {
            for p in rp.units.iter().chain(&rp.wide) {
                for x in [p.scale, p.zero_point, p.qmin, p.qmax] {
                    h.update(x.to_le_bytes());
                }
            }
            for (b, t) in &rp.biases {
                h.update(b.as_bytes());
                for x in as_f32(t).unwrap_or_default() {
                    h.update(x.to_le_bytes());
                }
            }
        }
    }
    for &i in &ev.probe {
        let s = &ev.samples[i];
        for (k, t) in s {
            h.update(k.as_bytes());
            h.update(format!("{:?}", t.shape()).as_bytes());
            if let Some(v) = as_f32(t) {
                for x in v {
                    h.update(x.to_le_bytes());
                }
            }
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn worst_sqnr(m: &BTreeMap<String, Metrics>) -> f64 {
    Goal::Sqnr { db: 0.0 }.figure(m)
}

/// Measures every unit's sensitivity, or reads it from `cache` when the key matches.
/// Returns the analysis and whether it came from the cache; a new analysis is written by
/// [`SensitivityFile::to_bytes`], with the command's other outputs.
pub fn sensitivity(
    ev: &Evaluator,
    units: &[Unit],
    cache: Option<&Path>,
    progress: &(dyn Fn() + Sync),
) -> Result<(SensitivityFile, bool), TuneError> {
    let key = cache_key(ev)?;
    if let Some(path) = cache {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(f) = serde_json::from_str::<SensitivityFile>(&text) {
                if f.format == CACHE_FORMAT && f.key == key && f.units.len() == units.len() {
                    return Ok((f, true));
                }
            }
        }
    }
    let n = units.len();
    let trial = |acts: Vec<Precision>| Trial {
        acts,
        w4: ev.w4.clone(),
    };
    let mut configs = Vec::with_capacity(n + 1);
    configs.push(trial(vec![Precision::A8; n]));
    for i in 0..n {
        let mut promoted = vec![Precision::A8; n];
        promoted[i] = Precision::A16;
        configs.push(trial(promoted));
    }
    let res = ev.eval_many(&configs, progress)?;
    let file = SensitivityFile {
        format: CACHE_FORMAT.into(),
        key,
        samples: ev.probe_samples(),
        baseline_db: worst_sqnr(&res[0]),
        units: units
            .iter()
            .enumerate()
            .map(|(i, u)| Sensitivity {
                root: u.root.clone(),
                producer: u.producer.clone(),
                op_type: u.producer_type.clone(),
                promoted_db: worst_sqnr(&res[1 + i]),
            })
            .collect(),
    };
    Ok((file, false))
}

/// Worst-output SQNR with every activation 8-bit and only `w` (besides the evaluator's
/// own) on 4 bits, per switchable weight.
pub fn weight_sensitivity(
    ev: &Evaluator,
    weights: &[String],
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<f64>, TuneError> {
    let n = ev.sim.params.len();
    let trials: Vec<Trial> = weights
        .iter()
        .map(|w| {
            let mut w4 = ev.w4.clone();
            w4.insert(w.clone());
            Trial {
                acts: vec![Precision::A8; n],
                w4,
            }
        })
        .collect();
    Ok(ev
        .eval_many(&trials, progress)?
        .iter()
        .map(worst_sqnr)
        .collect())
}

/// The outcome of a search.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Precision per unit (same order as the units).
    pub config: Vec<Precision>,
    /// Goal figure of the chosen configuration on the search samples, as judged.
    pub figure: f64,
    /// Figure with every unit 8-bit.
    pub baseline: f64,
    /// The best figure any configuration reached (the goal is unreachable when this is
    /// below it).
    pub best: f64,
    pub met: bool,
    /// Units in promotion order (most useful first).
    pub order: Vec<usize>,
    /// Configurations evaluated (on every search sample).
    pub evaluations: usize,
    /// Configurations screened on the probe samples only (`Evaluator::screens`).
    pub screened: usize,
    /// The chosen configuration's figure with its bootstrap bounds (when judged by the
    /// lower bound).
    pub estimate: Option<Estimate>,
}

/// A configuration's judgement on every sample: its figure as judged, and the estimate
/// when judged by the lower bound.
type Judgement = (f64, Option<Estimate>);

/// Configurations judged before the search (the all-8-bit, all-16-bit and all-float
/// ones, which need no sensitivity order), for the search to reuse.
#[derive(Clone, Debug, Default)]
pub struct Prior {
    judged: BTreeMap<Vec<Precision>, Judgement>,
    evaluations: usize,
}

/// Judges configurations for the search: counts them, tracks the best figure, keeps the
/// estimate of each judged configuration and never runs one configuration twice.
struct Judged<'e, 'a> {
    ev: &'e Evaluator<'a>,
    goal: Goal,
    evaluations: usize,
    /// Configurations screened on the probe samples.
    screened: usize,
    best: f64,
    /// The configuration with the best figure, and its estimate.
    best_config: Option<(Vec<Precision>, Option<Estimate>)>,
    /// Every configuration judged on every sample.
    judged: BTreeMap<Vec<Precision>, Judgement>,
    /// Every configuration's figure on the probe samples.
    probes: BTreeMap<Vec<Precision>, f64>,
    progress: &'e (dyn Fn() + Sync),
}

impl<'e, 'a> Judged<'e, 'a> {
    fn new(
        ev: &'e Evaluator<'a>,
        goal: Goal,
        prior: Prior,
        progress: &'e (dyn Fn() + Sync),
    ) -> Self {
        let mut j = Judged {
            ev,
            goal,
            evaluations: prior.evaluations,
            screened: 0,
            best: f64::NEG_INFINITY,
            best_config: None,
            judged: BTreeMap::new(),
            probes: BTreeMap::new(),
            progress,
        };
        for (c, r) in prior.judged {
            j.note(&c, r.0, r.1);
            j.judged.insert(c, r);
        }
        j
    }

    fn meets(&self, f: f64) -> bool {
        self.goal.meets(f)
    }

    /// `c`'s figure on the probe samples ([`Evaluator::screened`]).
    fn screen(&mut self, c: &[Precision]) -> Result<f64, TuneError> {
        if let Some(&f) = self.probes.get(c) {
            return Ok(f);
        }
        self.screened += 1;
        let f = self.ev.screened(self.goal, c)?;
        (self.progress)();
        self.probes.insert(c.to_vec(), f);
        Ok(f)
    }

    fn note(&mut self, c: &[Precision], f: f64, e: Option<Estimate>) {
        if self.best_config.is_none() || f >= self.best {
            self.best = f;
            self.best_config = Some((c.to_vec(), e));
        }
    }

    /// `c` judged on every sample (once).
    fn run(&mut self, c: &[Precision]) -> Result<Judgement, TuneError> {
        if let Some(r) = self.judged.get(c) {
            return Ok(*r);
        }
        self.evaluations += 1;
        let (f, e) = self.ev.judged(self.goal, c)?;
        (self.progress)();
        self.note(c, f, e);
        self.judged.insert(c.to_vec(), (f, e));
        Ok((f, e))
    }

    /// Whether `c`, judged on every sample, meets the goal.
    fn passes(&mut self, c: &[Precision]) -> Result<bool, TuneError> {
        let (f, _) = self.run(c)?;
        Ok(self.goal.meets(f))
    }

    /// The choice of `config` judged `r` (its order left to the caller).
    fn choice(&self, config: Vec<Precision>, r: Judgement, baseline: f64, met: bool) -> Choice {
        Choice {
            config,
            figure: r.0,
            baseline,
            best: self.best.max(r.0),
            met,
            order: Vec::new(),
            evaluations: self.evaluations,
            screened: self.screened,
            estimate: r.1,
        }
    }

    /// The best configuration judged, as an unreachable goal's choice.
    fn unreachable(&mut self, baseline: f64) -> Choice {
        let (config, estimate) = self.best_config.take().expect("a configuration was judged");
        self.choice(config, (self.best, estimate), baseline, false)
    }
}

/// The order in which units are promoted: most useful (highest `promoted_db`) first.
fn promotion_order(sens: &SensitivityFile) -> Vec<usize> {
    let n = sens.units.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        sens.units[b]
            .promoted_db
            .total_cmp(&sens.units[a].promoted_db)
            .then(a.cmp(&b))
    });
    order
}

/// What the goal needs before any sensitivity analysis.
pub enum Outlook {
    /// Decided without one: the all-8-bit configuration meets the goal, or not even every
    /// unit at 16 bits or float does (the best of them, `met` false).
    Decided(Choice),
    /// Promotions meet it; which ones is the search's to find.
    Search(Prior),
}

/// Judges the all-8-bit configuration, then (when it misses) every unit at 16 bits, then
/// every unit float: these need no sensitivity order, and when none meets the goal no
/// analysis can help.
pub fn outlook(
    ev: &Evaluator,
    units: usize,
    goal: Goal,
    progress: &(dyn Fn() + Sync),
) -> Result<Outlook, TuneError> {
    let mut j = Judged::new(ev, goal, Prior::default(), progress);
    let all = |p: Precision| vec![p; units];
    let (baseline, est) = j.run(&all(Precision::A8))?;
    if j.meets(baseline) {
        let mut c = j.choice(all(Precision::A8), (baseline, est), baseline, true);
        c.order = (0..units).collect();
        return Ok(Outlook::Decided(c));
    }
    if !j.passes(&all(Precision::A16))? && !j.passes(&all(Precision::Float))? {
        let mut c = j.unreachable(baseline);
        c.order = (0..units).collect();
        return Ok(Outlook::Decided(c));
    }
    Ok(Outlook::Search(Prior {
        judged: j.judged,
        evaluations: j.evaluations,
    }))
}

/// Finds the cheapest promotion set meeting `goal`, in the order given by `sens`;
/// `prior` holds configurations judged already ([`outlook`]).
pub fn search(
    ev: &Evaluator,
    sens: &SensitivityFile,
    goal: Goal,
    prior: Prior,
    progress: &(dyn Fn() + Sync),
) -> Result<Choice, TuneError> {
    let n = sens.units.len();
    let mut j = Judged::new(ev, goal, prior, progress);
    let order = promotion_order(sens);
    // Steps: every unit to 16 bits (most useful first), then to float.
    let steps: Vec<(usize, Precision)> = order
        .iter()
        .map(|&u| (u, Precision::A16))
        .chain(order.iter().map(|&u| (u, Precision::Float)))
        .collect();
    let config_of = |k: usize| {
        let mut c = vec![Precision::A8; n];
        for &(u, p) in &steps[..k] {
            c[u] = p;
        }
        c
    };
    let with_order = |mut c: Choice| {
        c.order = order.clone();
        c
    };
    let base = j.run(&config_of(0))?;
    let baseline = base.0;
    if j.meets(baseline) {
        return Ok(with_order(j.choice(config_of(0), base, baseline, true)));
    }
    let (lo, top) = if j.passes(&config_of(n))? {
        (0, n)
    } else if j.passes(&config_of(2 * n))? {
        (n, 2 * n)
    } else {
        return Ok(with_order(j.unreachable(baseline)));
    };
    let (hi, r) = shortest_prefix(&mut j, &config_of, lo, top)?;
    let promoted: Vec<(usize, Precision)> = steps[..hi]
        .iter()
        .rev()
        .filter(|(u, p)| config_of(hi)[*u] == *p)
        .copied()
        .collect();
    let (config, r) = if ev.screens() {
        demote_screened(&mut j, config_of(hi), r, promoted)?
    } else {
        demote(&mut j, config_of(hi), r, promoted)?
    };
    Ok(with_order(j.choice(config, r, baseline, true)))
}

/// The shortest prefix of promotion steps that meets the goal, where `lo` steps miss it
/// and `top` steps meet it, with its judgement. When the evaluator screens, the bisection
/// runs on the probe samples, each prefix's figure forecast as `top`'s figure on every
/// sample moved by the difference of the two on the probes; the prefix found is then
/// judged on every sample, and when it misses there the bisection goes on above it on
/// every sample.
fn shortest_prefix(
    j: &mut Judged,
    config_of: &dyn Fn(usize) -> Vec<Precision>,
    mut lo: usize,
    top: usize,
) -> Result<(usize, Judgement), TuneError> {
    let mut hi = top;
    let mut hi_r = j.run(&config_of(top))?;
    if j.ev.screens() {
        let anchor = j.screen(&config_of(top))?;
        let mut b = top;
        let mut a = lo;
        while b - a > 1 {
            let mid = (a + b) / 2;
            let s = j.screen(&config_of(mid))?;
            if j.meets(hi_r.0 + (s - anchor)) {
                b = mid;
            } else {
                a = mid;
            }
        }
        let r = j.run(&config_of(b))?;
        if j.meets(r.0) {
            return Ok((b, r));
        }
        lo = b;
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let r = j.run(&config_of(mid))?;
        if j.meets(r.0) {
            hi = mid;
            hi_r = r;
        } else {
            lo = mid;
        }
    }
    Ok((hi, hi_r))
}

/// `config` with every step of `group` taken back (float to 16 bits, 16 bits to 8).
fn demoted(config: &[Precision], group: &[(usize, Precision)]) -> Vec<Precision> {
    let mut trial = config.to_vec();
    for &(u, p) in group {
        trial[u] = if p == Precision::Float {
            Precision::A16
        } else {
            Precision::A8
        };
    }
    trial
}

/// A group of promotion steps, taken back together.
type Group = Vec<(usize, Precision)>;

/// Pushes the two halves of a group that missed, the first (least useful) to be tried
/// first.
fn split(pending: &mut Vec<Group>, group: &[(usize, Precision)]) {
    if group.len() > 1 {
        let (first, second) = group.split_at(group.len() / 2);
        pending.push(second.to_vec());
        pending.push(first.to_vec());
    }
}

/// Demotes again what is not needed, least useful first, in groups split on a miss; each
/// demotion judged on every sample.
fn demote(
    j: &mut Judged,
    mut config: Vec<Precision>,
    mut r: Judgement,
    promoted: Vec<(usize, Precision)>,
) -> Result<(Vec<Precision>, Judgement), TuneError> {
    let mut pending = vec![promoted];
    while let Some(group) = pending.pop() {
        if group.is_empty() {
            continue;
        }
        let trial = demoted(&config, &group);
        let t = j.run(&trial)?;
        if j.meets(t.0) {
            config = trial;
            r = t;
        } else {
            split(&mut pending, &group);
        }
    }
    Ok((config, r))
}

/// [`demote`] screened on the probe samples: a demotion is accepted for now when its
/// figure forecast from the probes (the last configuration judged on every sample, moved
/// by the difference on the probes) meets the goal. When no group is left, the last
/// configuration accepted is judged on every sample; on a miss, the longest run of
/// accepted demotions that meets the goal on every sample is found by bisection and kept,
/// the demotion after it is split and the later ones are tried again. Only a configuration
/// judged on every sample is ever kept.
fn demote_screened(
    j: &mut Judged,
    config: Vec<Precision>,
    r: Judgement,
    promoted: Vec<(usize, Precision)>,
) -> Result<(Vec<Precision>, Judgement), TuneError> {
    let mut kept = (j.screen(&config)?, config, r);
    let mut pending = vec![promoted];
    // Demotions accepted on the probes since the kept configuration: group, configuration.
    let mut chain: Vec<(Group, Vec<Precision>)> = Vec::new();
    loop {
        while let Some(group) = pending.pop() {
            if group.is_empty() {
                continue;
            }
            let trial = demoted(chain.last().map_or(&kept.1, |c| &c.1), &group);
            let s = j.screen(&trial)?;
            if j.meets(kept.2 .0 + (s - kept.0)) {
                chain.push((group, trial));
            } else {
                split(&mut pending, &group);
            }
        }
        let Some((_, last)) = chain.last() else { break };
        let t = j.run(&last.clone())?;
        if j.meets(t.0) {
            let (_, config) = chain.pop().expect("a chain");
            kept = (j.screen(&config)?, config, t);
            break;
        }
        // The first `lo` demotions meet the goal, the first `hi` do not.
        let (mut lo, mut hi) = (0, chain.len());
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if j.passes(&chain[mid - 1].1)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if lo > 0 {
            let config = chain[lo - 1].1.clone();
            kept = (j.screen(&config)?, config.clone(), j.run(&config)?);
        }
        let mut rest = chain.split_off(lo).into_iter();
        chain.clear();
        let (missed, _) = rest.next().expect("a demotion that missed");
        let later: Vec<_> = rest.map(|(g, _)| g).collect();
        pending.extend(later.into_iter().rev());
        split(&mut pending, &missed);
    }
    Ok((kept.1, kept.2))
}
