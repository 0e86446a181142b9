//! `--size-budget MB`: the storage of each weight, chosen so that the written model fits
//! with the least output error.
//!
//! Every quantized weight of the main graph may take its 8-bit grid, int4 per channel, or
//! (per channel) a k-means codebook with 4, 3 or 2-bit indices (`tune::WeightBits`); a
//! MatMul/Gemm weight, or an embedding table, also int4 with one scale per block of 128,
//! 64, 32 or 16 values along its reduction axis (the table's width), when the block
//! divides it (`DequantizeLinear` with `block_size`; its bias then stays float). Its
//! bytes on each are counted exactly as `insert_qdq` writes them
//! ([`payload_bytes`]). Its cost on each is the noise it adds to the model's output:
//!
//! - the layer's relative output noise `Σ e·(w − ŵ)² / Σ e·w²`, `e` the energy of the
//!   input each element multiplies (`pipeline::energy`; 1 without calibration data). For a
//!   linear layer `y = W x` with uncorrelated input channels, `E‖ΔW x‖² = Σ ΔW² · E[x²]`,
//!   so the ratio is the noise-to-signal ratio the weight adds to its layer's output;
//! - with `--size-budget-cost output` (calibration data needed), times the layer's
//!   sensitivity ([`output_noise`]): the noise-to-signal ratio of the change of the model
//!   output when that weight alone moves from 8 bits to [`probe_grid`], measured on the
//!   simulation (`pipeline::precision::build_sim_narrowed`: its weight switches, float
//!   activations, every other weight on 8 bits), over its layer noise on that grid. The layer noise says how each grid fits the
//!   weight's values; the factor says how much of that noise the following layers carry
//!   to the output (a layer feeding a sigmoid map or a narrow bottleneck carries more than
//!   one inside a wide residual sum). One simulation run per weight on a few samples
//!   ([`crate::pipeline::precision::probes_for_runs`]), instead of one per weight and grid.
//!   Noise of successive layers adds to first order, so the sum over weights estimates
//!   the output noise the choice adds.
//!
//! Measured (ONNX Runtime, against fp32; README's non-uniform table): the output cost
//! lowers ppocr_det at 0.15× from 7.1 dB / mask IoU 0.800 to 5.6 dB / 0.720 and ppocr_cls
//! at 0.42× from 11.1 dB / 94.5 % to 5.4 dB / 81.5 %, and raises magika at 0.15× from 18.9
//! dB / 91.5 % to 19.3 dB / 92.5 %. A first-order factor measured one layer at a time does
//! not carry to dozens of layers on 2-bit codebooks at once (their noise interacts through
//! the gates and the activations' rounding), so the layer noise stays the default.
//!
//! [`crate::quant::budget::allocate`] then moves weights to smaller storage by least cost
//! added per byte saved until the payload fits what the budget leaves after everything
//! else in the model; the plan is materialised, its encoded size measured, and the target
//! lowered below that allocation's payload by any excess (the ops around codebooks are
//! not in the payload), at most [`ROUNDS`] times; when a round misses, the targets between
//! the last allocation too large and the first that fits are bisected ([`REFINE`]
//! materialisations at most) for the largest that fits. The choice is recorded per weight
//! in the overrides file, which replays it without measuring anything.

use super::error::PipelineError;
use super::materialise::materialise_on;
use super::precision::{self, Basis};
use super::prepare::Prepared;
use super::progress::Progress;
use super::ranges::Candidates;
use crate::data::Dataset;
use crate::data::Sample;
use crate::exec::{Session, SessionOptions};
use crate::ir::{Model, Tensor};
use crate::passes::insert_qdq::{can_block, payload_bytes, weight_noise};
use crate::quant::budget::{allocate, Choice};
use crate::quant::codebook::WeightGrid;
use crate::quant::params::QType;
use crate::quant::plan::{Decision, Plan};
use crate::tune::search::{Evaluator, Goal, Trial};
use crate::tune::{self, Precision, WeightBits};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// How a weight's cost is counted (`--size-budget-cost`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// The layer's energy-weighted noise alone (the default: measured better on two of
    /// three models, see the module doc).
    Layer,
    /// The layer's noise times its measured effect on the output (needs calibration data;
    /// without it, the layer's noise alone).
    Output,
}

/// What the simulation measured for [`Cost::Output`].
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Per weight, the noise-to-signal ratio of the change of the model's output (worst
    /// output) when it alone moves from 8 bits to [`probe_grid`].
    pub added: BTreeMap<String, f64>,
    /// Samples each run covered.
    pub samples: usize,
}

/// The grid the sensitivity runs move each weight to: symmetric, 5 levels (codes −2..2).
/// Its layer noise (about 10 dB of layer SQNR) is of the size the codebooks a tight budget
/// takes add (2-bit k-means: 8–15 dB on ppocr_det), so the factor is measured where it is
/// used: int4's 20 dB understated what saturating layers (hard-sigmoid gates) let through
/// at 2 bits.
pub fn probe_grid() -> QType {
    QType {
        dtype: crate::ir::DType::I4,
        qmin: -2,
        qmax: 2,
        symmetric: true,
    }
}

/// Output noise-to-signal ratio of the worst output.
fn noise_ratio(m: &BTreeMap<String, crate::report::metrics::Metrics>) -> f64 {
    let db = Goal::Sqnr { db: 0.0 }.figure(m);
    if db.is_finite() {
        10f64.powf(-db / 10.0)
    } else if db > 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Runs the simulation of `b`'s plan on evenly spaced samples of `calib` (at most
/// `max_samples`, fewer when one run per weight would compute more than
/// `precision::PROBE_BUDGET` activation elements) with every weight on 8 bits, then with
/// each weight alone on [`probe_grid`], and compares each run with the first. Activations stay
/// float: the change is the weight's own noise carried to the output by the layers after
/// it, neither drowned in the activations' rounding noise nor cancelled by it (measured
/// against the float model instead, a third of ppocr_det's weights seemed to lower the
/// output noise on int4).
pub fn output_noise(
    b: &Basis,
    calib: &Dataset,
    max_samples: usize,
    candidates: &mut Candidates,
    progress: &dyn Progress,
) -> Result<Measured, PipelineError> {
    let (units, sim) = precision::build_sim_narrowed(b, candidates, Some(probe_grid()), false)?;
    let names = sim.narrow_weights();
    let n = calib.len();
    let k = precision::probes_for_runs(max_samples, names.len() as u64 + 1, &units, b.stats)
        .min(n)
        .max(1);
    let samples = (0..k)
        .map(|i| calib.get(i * n / k))
        .collect::<Result<Vec<Sample>, _>>()?;
    let acts = vec![Precision::Float; sim.params.len()];
    let none = BTreeSet::new();
    let sim_failed = |error| PipelineError::Exec {
        what: format!("{}: simulation", b.p.model_path.display()),
        error,
    };
    let session = Session::from_ir(
        sim.model.clone(),
        Some(&b.p.base_dir),
        &sim.feed(&samples[0], &acts, &none),
        &SessionOptions::default(),
    )
    .map_err(sim_failed)?;
    let all8 = samples
        .iter()
        .map(|s| session.run(&sim.feed(s, &acts, &none)))
        .collect::<Result<Vec<Sample>, _>>()
        .map_err(sim_failed)?;
    drop(session);
    let ev = Evaluator::with_references(&sim, Some(&b.p.base_dir), samples, all8, None)?;
    let trials: Vec<Trial> = names
        .iter()
        .map(|w| Trial {
            acts: acts.clone(),
            w4: BTreeSet::from([w.clone()]),
        })
        .collect();
    progress.begin("weight output noise", trials.len() as u64);
    let out = ev.eval_many(&trials, &|| progress.step())?;
    progress.end();
    let added = names
        .into_iter()
        .zip(&out)
        .map(|(w, m)| (w, noise_ratio(m)))
        .collect();
    Ok(Measured { added, samples: k })
}

/// Per weight of `opts`, the output noise per unit of its layer noise: the measured
/// output change over its layer noise on [`probe_grid`] (`probe`). A weight whose output change is zero (int4
/// codes equal to its 8-bit ones, or a change below float resolution) takes the least
/// positive factor measured; one not measured (no 4-bit switch: under 16 elements) the
/// median. `None` when nothing was resolved.
fn factors(opts: &Options, probe: &[f64], m: &Measured) -> Option<Vec<f64>> {
    let raw: Vec<Option<f64>> = opts
        .iter()
        .zip(probe)
        .map(|((w, _), &layer)| {
            let added = *m.added.get(w)?;
            (layer > 0.0 && added.is_finite()).then(|| added.max(0.0) / layer)
        })
        .collect();
    let mut positive: Vec<f64> = raw.iter().flatten().copied().filter(|f| *f > 0.0).collect();
    positive.sort_by(f64::total_cmp);
    let (&least, median) = (positive.first()?, positive[positive.len() / 2]);
    Some(
        raw.iter()
            .map(|f| f.map_or(median, |f| if f > 0.0 { f } else { least }))
            .collect(),
    )
}

/// Materialisations at most before a budget the estimate keeps missing is given up.
pub const ROUNDS: usize = 8;

/// Materialisations at most spent giving back bytes a fitting allocation took beyond the
/// budget (after a round that missed it).
pub const REFINE: usize = 4;

/// One weight's storage under the budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stored {
    pub weight: String,
    /// `w8`, `w4`, `w4b128`, `w4b64`, `w4b32`, `w4b16`, `kmeans4`, `kmeans3`, `kmeans2`
    /// (as in the overrides file).
    pub storage: String,
    pub elements: u64,
    /// Bytes of its integer payload (codes, or level table and indices).
    pub bytes: u64,
    /// `10·log10(Σ e·w² / Σ e·(w − ŵ)²)`: the layer's output SQNR from this weight alone.
    pub layer_sqnr_db: f64,
    /// Model output noise per unit of this layer's noise (measured on int4; `None` when
    /// the cost is the layer's noise alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
}

/// What `--size-budget` chose.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Allocation {
    pub budget_mb: f64,
    /// Whether the errors were weighted by input energy (calibration data given).
    pub energy_weighted: bool,
    /// `output` (layer noise times measured sensitivity) or `layer` (layer noise alone).
    pub cost: &'static str,
    /// Samples the sensitivity runs covered (0 with the `layer` cost).
    pub sensitivity_samples: usize,
    /// Every candidate weight, by name.
    pub weights: Vec<Stored>,
    /// Σ of the costs, as an SQNR in dB (what the choice minimised; with the `output` cost,
    /// the estimated output SQNR of the weights' change from 8 bits).
    pub proxy_sqnr_db: f64,
}

impl Allocation {
    /// The storage of every weight not left on its 8-bit grid (what the overrides file
    /// records).
    pub fn storage(&self) -> BTreeMap<String, WeightBits> {
        self.weights
            .iter()
            .filter_map(|s| Some((s.weight.clone(), parse(&s.storage)?)))
            .filter(|(_, b)| *b != WeightBits::W8)
            .collect()
    }
}

fn parse(name: &str) -> Option<WeightBits> {
    CANDIDATES.iter().copied().find(|b| b.name() == name)
}

const CANDIDATES: [WeightBits; 9] = [
    WeightBits::W8,
    WeightBits::W4,
    WeightBits::W4b128,
    WeightBits::W4b64,
    WeightBits::W4b32,
    WeightBits::W4b16,
    WeightBits::Kmeans4,
    WeightBits::Kmeans3,
    WeightBits::Kmeans2,
];

fn db(ratio: f64) -> f64 {
    if ratio > 0.0 {
        -10.0 * ratio.log10()
    } else {
        f64::INFINITY
    }
}

type Options = Vec<(String, Vec<Choice<WeightBits>>)>;

/// Every main-graph weight of `plan` still on its 8-bit grid, with its options; also
/// each one's element count and its layer noise on [`probe_grid`].
fn options(
    m: &Model,
    plan: &Plan,
    path: &Path,
) -> Result<(Options, Vec<u64>, Vec<f64>), PipelineError> {
    let g = &m.graph;
    let pass = |error| PipelineError::Pass {
        model: path.to_path_buf(),
        error,
    };
    let (mut out, mut elements, mut probe) = (Vec::new(), Vec::new(), Vec::new());
    for (key, d) in &plan.values {
        let Decision::Weight {
            qtype,
            axis,
            mse,
            grid,
        } = d
        else {
            continue;
        };
        let Some((v, t)) = g.value_by_name(key).and_then(|v| Some((v, g.const_of(v)?))) else {
            continue;
        };
        if !grid.is_uniform() || qtype.dtype.bits() != Some(8) {
            continue;
        }
        let Ok(Tensor::F32(a)) = t.to_tensor() else {
            continue;
        };
        let imp = plan.importance.get(key).map(Vec::as_slice);
        let mut opts = Vec::new();
        for b in CANDIDATES {
            let (q, gr) = b.grid(*qtype);
            if !gr.is_uniform() && axis.is_none() {
                continue;
            }
            if let Some(size) = b.block() {
                if !can_block(g, v, a.shape(), *axis, size) {
                    continue;
                }
            }
            let (signal, noise) = weight_noise(key, &a, q, *axis, *mse, gr, imp).map_err(pass)?;
            opts.push(Choice {
                what: b,
                bytes: payload_bytes(a.shape(), *axis, &q, gr),
                error: if signal > 0.0 { noise / signal } else { 0.0 },
            });
        }
        let (signal, noise) =
            weight_noise(key, &a, probe_grid(), *axis, *mse, WeightGrid::Uniform, imp)
                .map_err(pass)?;
        probe.push(if signal > 0.0 { noise / signal } else { 0.0 });
        elements.push(a.len() as u64);
        out.push((key.clone(), opts));
    }
    Ok((out, elements, probe))
}

/// The encoded size of `plan` materialised on the prepared model (bytes), or on the model
/// with its declared dims when that one materialises too and is larger: the written
/// model is one of the two (`interface::written`).
pub fn written_size(p: &Prepared, plan: &Plan) -> Result<u64, PipelineError> {
    let q = materialise_on(&p.model, plan)
        .map_err(|what| PipelineError::Options(format!("{}: {what}", p.model_path.display())))?;
    let mut size = crate::onnx::encoded_size(&q);
    if let Some(Ok(g)) = p.general.as_ref().map(|g| g.model.as_ref()) {
        if let Ok(w) = materialise_on(g, plan) {
            size = size.max(crate::onnx::encoded_size(&w));
        }
    }
    Ok(size)
}

/// How a budget ended.
pub enum Outcome {
    Fits(Allocation),
    /// The one-line reason no storage fits.
    Unreachable(String),
}

/// Chooses every weight's storage so that `plan` (whose all-8-bit model takes `base`
/// bytes) fits `budget_mb`, and writes it into `plan`.
pub fn fit(
    p: &Prepared,
    plan: &mut Plan,
    base: u64,
    budget_mb: f64,
    measured: Option<&Measured>,
) -> Result<Outcome, PipelineError> {
    let (m, path) = (&p.model, p.model_path.as_path());
    let budget = (budget_mb * 1e6) as u64;
    let (layer, elements, probe) = options(m, plan, path)?;
    let sens = measured.and_then(|me| factors(&layer, &probe, me));
    // What the greedy minimises: each option's layer noise times the weight's factor.
    let opts: Options = match &sens {
        Some(f) => layer
            .iter()
            .zip(f)
            .map(|((w, o), &f)| {
                let scaled = o
                    .iter()
                    .map(|c| Choice {
                        error: c.error * f,
                        ..c.clone()
                    })
                    .collect();
                (w.clone(), scaled)
            })
            .collect(),
        None => layer.clone(),
    };
    let payload8: u64 = opts
        .iter()
        .map(|(_, o)| {
            o.iter()
                .find(|c| c.what == WeightBits::W8)
                .map_or(0, |c| c.bytes)
        })
        .sum();
    let rest = base.saturating_sub(payload8);
    let done = |at: &[usize], q: Plan, plan: &mut Plan| {
        *plan = q;
        let weights: Vec<Stored> = layer
            .iter()
            .zip(at)
            .zip(&elements)
            .enumerate()
            .map(|(k, (((w, o), &i), &n))| Stored {
                weight: w.clone(),
                storage: o[i].what.name().to_string(),
                elements: n,
                bytes: o[i].bytes,
                layer_sqnr_db: db(o[i].error),
                sensitivity: sens.as_ref().map(|f| f[k]),
            })
            .collect();
        let total: f64 = opts.iter().zip(at).map(|((_, o), &i)| o[i].error).sum();
        let measured = measured.filter(|_| sens.is_some());
        Outcome::Fits(Allocation {
            budget_mb,
            energy_weighted: !plan.importance.is_empty(),
            cost: if measured.is_some() {
                "output"
            } else {
                "layer"
            },
            sensitivity_samples: measured.map_or(0, |me| me.samples),
            weights,
            proxy_sqnr_db: db(total),
        })
    };
    let with = |at: &[usize]| -> Result<(Plan, u64), PipelineError> {
        let storage: BTreeMap<String, WeightBits> = opts
            .iter()
            .zip(at)
            .map(|((w, o), &i)| (w.clone(), o[i].what))
            .collect();
        let mut q = plan.clone();
        tune::apply_weights(&mut q, &storage);
        let size = written_size(p, &q)?;
        Ok((q, size))
    };
    let payload_of =
        |at: &[usize]| -> u64 { opts.iter().zip(at).map(|((_, o), &i)| o[i].bytes).sum() };
    // After a round too large, the fitting allocation may have moved past allocations that
    // fit with less error: bisect the targets between the two for the largest that fits.
    let give_back = |fit: (Vec<usize>, Plan, u64),
                     fit_target: u64,
                     over: u64|
     -> Result<(Vec<usize>, Plan), PipelineError> {
        let (mut best, mut best_q, mut best_payload) = fit;
        let (mut lo, mut hi, mut measured) = (fit_target, over, 0);
        while hi > lo + 1 && measured < REFINE {
            let mid = lo + (hi - lo) / 2;
            let Ok(at) = allocate(&opts, mid) else {
                break;
            };
            let payload = payload_of(&at);
            if payload <= best_payload {
                // The same allocation: nothing between the two up to `mid`.
                lo = mid;
                continue;
            }
            measured += 1;
            let (q, size) = with(&at)?;
            if size <= budget {
                (best, best_q, best_payload) = (at, q, payload);
                lo = mid;
            } else {
                hi = payload;
            }
        }
        Ok((best, best_q))
    };
    let mut over: Option<u64> = None;
    let mut target = budget.saturating_sub(rest);
    for _ in 0..ROUNDS {
        let at = match allocate(&opts, target) {
            Ok(at) => at,
            Err(_) => {
                // The fewest payload bytes per weight, or int4 everywhere (the ops around
                // codebooks weigh more than their savings in small models): the smaller
                // fits, or nothing does.
                let least = |pick: &dyn Fn(&[Choice<WeightBits>]) -> usize| -> Vec<usize> {
                    opts.iter().map(|(_, o)| pick(o)).collect()
                };
                let fewest = least(&|o| {
                    (0..o.len())
                        .min_by(|&a, &b| {
                            o[a].bytes
                                .cmp(&o[b].bytes)
                                .then(o[a].error.total_cmp(&o[b].error))
                        })
                        .expect("options")
                });
                let int4 = least(&|o| {
                    o.iter()
                        .position(|c| c.what == WeightBits::W4)
                        .expect("int4 is always offered")
                });
                let (a, b) = (with(&fewest)?, with(&int4)?);
                let (at, (q, size)) = if b.1 < a.1 { (int4, b) } else { (fewest, a) };
                if size <= budget {
                    return Ok(done(&at, q, plan));
                }
                return Ok(Outcome::Unreachable(format!(
                    "--size-budget {budget_mb} MB: unreachable; the smallest model qrange writes here is {:.3} MB (every weight as int4 or as a 2-bit k-means codebook per channel)",
                    size as f64 / 1e6
                )));
            }
        };
        let (q, size) = with(&at)?;
        let payload = payload_of(&at);
        if size <= budget {
            let (at, q) = match over {
                Some(over) => give_back((at, q, payload), target, over)?,
                None => (at, q),
            };
            return Ok(done(&at, q, plan));
        }
        over = Some(payload);
        // Lower the target below what this allocation's payload takes (not below the
        // previous target: one move can save more bytes than the excess, so a target
        // lowered by the excess alone may leave the same allocation, round after round).
        target = payload.saturating_sub(size - budget);
    }
    Err(PipelineError::Options(format!(
        "--size-budget {budget_mb} MB: the written size still exceeds the budget after {ROUNDS} estimates"
    )))
}

/// Records `a` in an overrides file: the storage of every weight not on 8 bits, and why.
pub fn record(a: &Allocation, ov: &mut crate::tune::Overrides) {
    ov.compact = true;
    for s in &a.weights {
        let Some(b) = parse(&s.storage).filter(|b| *b != WeightBits::W8) else {
            continue;
        };
        ov.weights.insert(s.weight.clone(), b);
        ov.reasons.insert(
            s.weight.clone(),
            format!(
                "--size-budget {} MB: {} ({} bytes), the layer's output SQNR from it alone {:.1} dB{}",
                a.budget_mb,
                s.storage,
                s.bytes,
                s.layer_sqnr_db,
                s.sensitivity.map_or(String::new(), |f| format!(
                    ", the model output's {:.1} dB",
                    db(10f64.powf(-s.layer_sqnr_db / 10.0) * f)
                ))
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(names: &[&str]) -> Options {
        names
            .iter()
            .map(|n| {
                let c = Choice {
                    what: WeightBits::W8,
                    bytes: 10,
                    error: 0.0,
                };
                (n.to_string(), vec![c])
            })
            .collect()
    }

    #[test]
    fn factors_are_output_change_over_layer_noise_with_unresolved_and_unmeasured_filled() {
        let o = opts(&["a", "b", "c", "d", "e"]);
        let probe = [0.1, 0.1, 0.2, 0.1, 0.1];
        let added = BTreeMap::from([
            ("a".to_string(), 0.01),
            ("b".to_string(), 0.0),
            ("c".to_string(), 0.1),
            ("e".to_string(), 0.3),
        ]);
        let m = Measured { added, samples: 1 };
        let f = factors(&o, &probe, &m).unwrap();
        // a: 0.1, c: 0.5, e: 3.0 measured; b resolved nothing (the least), d unmeasured
        // (the median of 0.1, 0.5, 3.0).
        let want = [0.1, 0.1, 0.5, 0.5, 3.0];
        for (g, w) in f.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{f:?}");
        }
        let none = Measured {
            added: BTreeMap::from([("a".to_string(), 0.0)]),
            samples: 1,
        };
        assert_eq!(factors(&o, &probe, &none), None);
    }
}
