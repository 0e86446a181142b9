//! Sensitivity analysis and the precision search.
//!
//! Both run the [`SimModel`] on a subsample of the data against the float model's outputs
//! on the same samples. Per unit, sensitivity measures one configuration, *promoted*:
//! every unit 8-bit except this one at 16 bits — what promoting it buys. Probes may run
//! on a subsample ([`Evaluator::probe_on`]); the search runs on every sample.
//!
//! The search orders units by *promoted* (best first), finds the shortest prefix of
//! promotions (16-bit first, then float as a last resort) that meets the goal by
//! bisection, then demotes again what is not needed: the promoted units, least useful
//! first, are tried as one group, and a group that misses the goal is split in halves
//! (one configuration when every promotion stays or every one goes, about two per unit
//! at worst). A configuration's figure is pooled over the samples, or its bootstrap
//! lower bound ([`Judge`]). When the lower bound over every sample is the judge and the
//! probes run on fewer samples ([`Evaluator::screens`]), each demotion is first run on the
//! probe samples only: when what it loses there (against the kept configuration's figure
//! there) exceeds the kept configuration's margin over the goal, it is a miss without
//! running every sample; otherwise it is judged on all of them. A configuration is only
//! ever kept on the judgement over every sample. Results are cached in a file keyed by
//! the SHA-256 of the simulation model, the parameters and the samples.

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
        let (proto, _) = crate::onnx::engine_proto(&sim.model)
            .map_err(|e| TuneError::Other(format!("simulation model: {e}")))?;
        let all8 = vec![Precision::A8; sim.params.len()];
        let session = Session::new(
            &proto,
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
    let bytes =
        crate::onnx::model_to_bytes(&ev.sim.model).map_err(|e| TuneError::Other(e.to_string()))?;
    h.update(&bytes);
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

/// Judges configurations for the search: counts them, tracks the best figure and keeps
/// the estimate of each judged configuration.
struct Judged<'e, 'a> {
    ev: &'e Evaluator<'a>,
    goal: Goal,
    evaluations: usize,
    /// Configurations screened on the probe samples.
    screened: usize,
    best: f64,
    /// The configuration with the best figure, and its estimate.
    best_config: Option<(Vec<Precision>, Option<Estimate>)>,
    progress: &'e (dyn Fn() + Sync),
}

impl Judged<'_, '_> {
    /// `c`'s figure on the probe samples ([`Evaluator::screened`]).
    fn screen(&mut self, c: &[Precision]) -> Result<f64, TuneError> {
        self.screened += 1;
        let f = self.ev.screened(self.goal, c)?;
        (self.progress)();
        Ok(f)
    }

    fn run(&mut self, c: &[Precision]) -> Result<(f64, Option<Estimate>), TuneError> {
        self.evaluations += 1;
        let (f, e) = self.ev.judged(self.goal, c)?;
        (self.progress)();
        if self.best_config.is_none() || f >= self.best {
            self.best = f;
            self.best_config = Some((c.to_vec(), e));
        }
        Ok((f, e))
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

/// The all-8-bit configuration when it meets `goal` as the evaluator judges it (no
/// sensitivity analysis is then needed).
pub fn baseline_meets(
    ev: &Evaluator,
    units: usize,
    goal: Goal,
) -> Result<Option<Choice>, TuneError> {
    let config = vec![Precision::A8; units];
    let (f, estimate) = ev.judged(goal, &config)?;
    Ok(goal.meets(f).then(|| Choice {
        config,
        figure: f,
        baseline: f,
        best: f,
        met: true,
        order: (0..units).collect(),
        evaluations: 1,
        screened: 0,
        estimate,
    }))
}

/// Finds the cheapest promotion set meeting `goal`, in the order given by `sens`.
pub fn search(
    ev: &Evaluator,
    sens: &SensitivityFile,
    goal: Goal,
    progress: &(dyn Fn() + Sync),
) -> Result<Choice, TuneError> {
    let n = sens.units.len();
    let mut j = Judged {
        ev,
        goal,
        evaluations: 0,
        screened: 0,
        best: f64::NEG_INFINITY,
        best_config: None,
        progress,
    };
    let meets = |f: f64| goal.meets(f);
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
    let (baseline, base_est) = j.run(&config_of(0))?;
    if meets(baseline) {
        return Ok(Choice {
            config: config_of(0),
            figure: baseline,
            baseline,
            best: baseline,
            met: true,
            order,
            evaluations: j.evaluations,
            screened: j.screened,
            estimate: base_est,
        });
    }
    let (all16, _) = j.run(&config_of(n))?;
    let (mut lo, mut hi) = if meets(all16) {
        (0, n)
    } else {
        let (allf, _) = j.run(&config_of(2 * n))?;
        if !meets(allf) {
            let (config, estimate) = j.best_config.take().expect("a configuration was judged");
            return Ok(Choice {
                config,
                figure: j.best,
                baseline,
                best: j.best,
                met: false,
                order,
                evaluations: j.evaluations,
                screened: j.screened,
                estimate,
            });
        }
        (n, 2 * n)
    };
    // Smallest prefix that meets the goal (lo fails, hi meets).
    let mut hi_fig = None;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let r = j.run(&config_of(mid))?;
        if meets(r.0) {
            hi = mid;
            hi_fig = Some(r);
        } else {
            lo = mid;
        }
    }
    let mut config = config_of(hi);
    let (mut figure, mut estimate) = match hi_fig {
        Some(r) => r,
        None => j.run(&config)?,
    };
    // Demote again what is not needed, least useful first, in groups split on a miss.
    let mut pending: Vec<Vec<(usize, Precision)>> = vec![steps[..hi]
        .iter()
        .rev()
        .filter(|(u, p)| config[*u] == *p)
        .copied()
        .collect()];
    // Screening: the kept configuration's figure on the probe samples.
    let mut kept = match ev.screens() {
        true => Some(j.screen(&config)?),
        false => None,
    };
    while let Some(group) = pending.pop() {
        if group.is_empty() {
            continue;
        }
        let mut trial = config.clone();
        for &(u, p) in &group {
            trial[u] = if p == Precision::Float {
                Precision::A16
            } else {
                Precision::A8
            };
        }
        // A demotion whose loss on the probe samples exceeds the kept configuration's
        // margin over the goal is a miss without running every sample.
        let screened = match kept {
            Some(k) => {
                let s = j.screen(&trial)?;
                Some((s, meets(figure + (s - k))))
            }
            None => None,
        };
        let (f, e) = match screened {
            Some((_, false)) => (f64::NEG_INFINITY, None),
            _ => j.run(&trial)?,
        };
        if meets(f) {
            config = trial;
            figure = f;
            estimate = e;
            if let Some((s, _)) = screened {
                kept = Some(s);
            }
        } else if group.len() > 1 {
            // The first half (least useful) is tried first: it is pushed last.
            let (first, second) = group.split_at(group.len() / 2);
            pending.push(second.to_vec());
            pending.push(first.to_vec());
        }
    }
    Ok(Choice {
        config,
        figure,
        baseline,
        best: j.best.max(figure),
        met: true,
        order,
        evaluations: j.evaluations,
        screened: j.screened,
        estimate,
    })
}
