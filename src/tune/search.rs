//! Sensitivity analysis and the precision search.
//!
//! Both run the [`SimModel`] on a subsample of the data against the float model's outputs
//! on the same samples. Per unit, sensitivity measures two configurations:
//! - *alone*: only this unit quantized (8-bit), every other activation float — the error
//!   the unit brings by itself;
//! - *promoted*: every unit 8-bit except this one at 16 bits — what promoting it buys.
//!
//! The search orders units by *promoted* (best first), finds the shortest prefix of
//! promotions (16-bit first, then float as a last resort) that meets the goal by
//! bisection, then tries to demote each promoted unit again, least useful first, keeping
//! every demotion that still meets the goal. Results are cached in a file keyed by the
//! SHA-256 of the simulation model, the parameters and the samples.

use super::sim::SimModel;
use super::{Precision, TuneError, Unit};
use crate::data::Sample;
use crate::exec::Session;
use crate::ir::Tensor;
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
        let (proto, _) =
            crate::onnx::encode_model(&sim.model, &crate::onnx::ExternalPolicy::Inline, "")
                .map_err(|e| TuneError::Other(format!("simulation model: {e}")))?;
        let all8 = vec![Precision::A8; sim.params.len()];
        let session = Session::new(
            &proto,
            base_dir,
            &sim.feed(first, &all8, &BTreeSet::new()),
            &Default::default(),
        )?;
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
        })
    }

    pub fn samples(&self) -> usize {
        self.samples.len()
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
        self.eval_feeds(|s| self.sim.feed(s, config, w4))
    }

    /// Per-output metrics with every unit at 8 bits on `params`: the written model for
    /// another choice of ranges.
    pub fn eval_params(
        &self,
        params: &super::sim::RangeParams,
    ) -> Result<BTreeMap<String, Metrics>, TuneError> {
        self.eval_feeds(|s| self.sim.feed_params(s, params))
    }

    fn eval_feeds(
        &self,
        feed: impl Fn(&Sample) -> Sample,
    ) -> Result<BTreeMap<String, Metrics>, TuneError> {
        let mut acc: BTreeMap<String, Comparison> = BTreeMap::new();
        for (i, s) in self.samples.iter().enumerate() {
            let out = self.session.run(&feed(s))?;
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
        Ok(acc.into_iter().map(|(k, c)| (k, c.metrics())).collect())
    }

    /// Evaluates many configurations, spread over threads; results in input order.
    pub fn eval_many(
        &self,
        configs: &[Trial],
        progress: &(dyn Fn() + Sync),
    ) -> Result<Vec<BTreeMap<String, Metrics>>, TuneError> {
        self.spread(configs, |t| self.eval_with(&t.acts, &t.w4), progress)
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
    /// Worst-output SQNR with only this unit quantized (8-bit).
    pub alone_db: f64,
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

const CACHE_FORMAT: &str = "qrange-sensitivity/1";

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
    for s in &ev.samples {
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
    let mut configs = Vec::with_capacity(2 * n + 1);
    configs.push(trial(vec![Precision::A8; n]));
    for i in 0..n {
        let mut alone = vec![Precision::Float; n];
        alone[i] = Precision::A8;
        configs.push(trial(alone));
        let mut promoted = vec![Precision::A8; n];
        promoted[i] = Precision::A16;
        configs.push(trial(promoted));
    }
    let res = ev.eval_many(&configs, progress)?;
    let file = SensitivityFile {
        format: CACHE_FORMAT.into(),
        key,
        samples: ev.samples(),
        baseline_db: worst_sqnr(&res[0]),
        units: units
            .iter()
            .enumerate()
            .map(|(i, u)| Sensitivity {
                root: u.root.clone(),
                producer: u.producer.clone(),
                op_type: u.producer_type.clone(),
                alone_db: worst_sqnr(&res[1 + 2 * i]),
                promoted_db: worst_sqnr(&res[2 + 2 * i]),
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
    /// Goal figure of the chosen configuration on the search samples.
    pub figure: f64,
    /// Figure with every unit 8-bit.
    pub baseline: f64,
    /// The best figure any configuration reached (the goal is unreachable when this is
    /// below it).
    pub best: f64,
    pub met: bool,
    /// Units in promotion order (most useful first).
    pub order: Vec<usize>,
    /// Configurations evaluated.
    pub evaluations: usize,
}

/// Finds the cheapest promotion set meeting `goal`, in the order given by `sens`.
pub fn search(
    ev: &Evaluator,
    sens: &SensitivityFile,
    goal: Goal,
    progress: &(dyn Fn() + Sync),
) -> Result<Choice, TuneError> {
    let n = sens.units.len();
    let mut evaluations = 0usize;
    let mut run = |c: &[Precision]| -> Result<f64, TuneError> {
        evaluations += 1;
        let m = ev.eval(c)?;
        progress();
        Ok(goal.figure(&m))
    };
    let meets = |f: f64| goal.meets(f);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        sens.units[b]
            .promoted_db
            .total_cmp(&sens.units[a].promoted_db)
            .then(a.cmp(&b))
    });
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
    let baseline = run(&config_of(0))?;
    if meets(baseline) {
        return Ok(Choice {
            config: config_of(0),
            figure: baseline,
            baseline,
            best: baseline,
            met: true,
            order,
            evaluations,
        });
    }
    let all16 = run(&config_of(n))?;
    let mut best = baseline.max(all16);
    let (mut lo, mut hi) = if meets(all16) {
        (0, n)
    } else {
        let allf = run(&config_of(2 * n))?;
        best = best.max(allf);
        if !meets(allf) {
            let c = if allf >= all16 {
                config_of(2 * n)
            } else {
                config_of(n)
            };
            return Ok(Choice {
                config: c,
                figure: best,
                baseline,
                best,
                met: false,
                order,
                evaluations,
            });
        }
        (n, 2 * n)
    };
    // Smallest prefix that meets the goal (lo fails, hi meets).
    let mut hi_fig = f64::NAN;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let f = run(&config_of(mid))?;
        best = best.max(f);
        if meets(f) {
            hi = mid;
            hi_fig = f;
        } else {
            lo = mid;
        }
    }
    let mut config = config_of(hi);
    let mut figure = if hi_fig.is_nan() {
        run(&config)?
    } else {
        hi_fig
    };
    // Demote again what is not needed, least useful first.
    for &(u, p) in steps[..hi].iter().rev() {
        if config[u] != p {
            continue;
        }
        let back = if p == Precision::Float {
            Precision::A16
        } else {
            Precision::A8
        };
        let mut trial = config.clone();
        trial[u] = back;
        let f = run(&trial)?;
        if meets(f) {
            config = trial;
            figure = f;
        }
    }
    Ok(Choice {
        config,
        figure,
        baseline,
        best: best.max(figure),
        met: true,
        order,
        evaluations,
    })
}
