//! `--size-budget MB`: the storage of each weight, chosen so that the written model fits
//! with the least output error.
//!
//! Every quantized weight of the main graph may take its 8-bit grid, int4 per channel, or
//! (per channel) a k-means codebook with 4, 3 or 2-bit indices (`tune::WeightBits`). Its
//! bytes on each are counted exactly as `insert_qdq` writes them
//! ([`payload_bytes`]); its error on each is the layer's relative output noise
//! `Σ e·(w − ŵ)² / Σ e·w²`, `e` the energy of the input each element multiplies
//! (`pipeline::energy`; 1 without calibration data). Why this proxy: for a linear layer
//! `y = W x` with uncorrelated input channels, `E‖ΔW x‖² = Σ ΔW² · E[x²]`, so the ratio is
//! the noise-to-signal ratio the weight adds to the layer's output; noise of successive
//! layers adds to first order, so the sum over weights tracks the model's output noise.
//! It needs one pass over the calibration data (the energies, also what k-means weights
//! its levels by) instead of one simulation per weight and grid (5 × 66 runs on a
//! detector of 640×640 pages). [`crate::quant::budget::allocate`] then moves weights to
//! smaller storage by least error added per byte saved until the payload fits what the
//! budget leaves after everything else in the model; the plan is materialised, its
//! encoded size measured, and the target lowered by any excess (the ops around codebooks
//! are not in the payload), at most [`ROUNDS`] times.

use super::error::PipelineError;
use super::materialise::materialise_on;
use super::prepare::Prepared;
use crate::ir::{Model, Tensor};
use crate::passes::insert_qdq::{payload_bytes, weight_noise};
use crate::quant::budget::{allocate, Choice};
use crate::quant::plan::{Decision, Plan};
use crate::tune::{self, WeightBits};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Materialisations at most before a budget the estimate keeps missing is given up.
pub const ROUNDS: usize = 8;

/// One weight's storage under the budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stored {
    pub weight: String,
    /// `w8`, `w4`, `kmeans4`, `kmeans3`, `kmeans2` (as in the overrides file).
    pub storage: String,
    pub elements: u64,
    /// Bytes of its integer payload (codes, or level table and indices).
    pub bytes: u64,
    /// `10·log10(Σ e·w² / Σ e·(w − ŵ)²)`: the layer's output SQNR from this weight alone.
    pub layer_sqnr_db: f64,
}

/// What `--size-budget` chose.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Allocation {
    pub budget_mb: f64,
    /// Whether the errors were weighted by input energy (calibration data given).
    pub energy_weighted: bool,
    /// Every candidate weight, by name.
    pub weights: Vec<Stored>,
    /// Σ of the relative errors, as an SQNR in dB (the proxy the choice minimised).
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

const CANDIDATES: [WeightBits; 5] = [
    WeightBits::W8,
    WeightBits::W4,
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
/// each one's element count.
fn options(m: &Model, plan: &Plan, path: &Path) -> Result<(Options, Vec<u64>), PipelineError> {
    let g = &m.graph;
    let pass = |error| PipelineError::Pass {
        model: path.to_path_buf(),
        error,
    };
    let (mut out, mut elements) = (Vec::new(), Vec::new());
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
        let Some(t) = g.value_by_name(key).and_then(|v| g.const_of(v)) else {
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
            let (signal, noise) = weight_noise(key, &a, q, *axis, *mse, gr, imp).map_err(pass)?;
            opts.push(Choice {
                what: b,
                bytes: payload_bytes(a.shape(), *axis, &q, gr),
                error: if signal > 0.0 { noise / signal } else { 0.0 },
            });
        }
        elements.push(a.len() as u64);
        out.push((key.clone(), opts));
    }
    Ok((out, elements))
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
) -> Result<Outcome, PipelineError> {
    let (m, path) = (&p.model, p.model_path.as_path());
    let budget = (budget_mb * 1e6) as u64;
    let (opts, elements) = options(m, plan, path)?;
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
        let weights: Vec<Stored> = opts
            .iter()
            .zip(at)
            .zip(&elements)
            .map(|(((w, o), &i), &n)| Stored {
                weight: w.clone(),
                storage: o[i].what.name().to_string(),
                elements: n,
                bytes: o[i].bytes,
                layer_sqnr_db: db(o[i].error),
            })
            .collect();
        let total: f64 = opts.iter().zip(at).map(|((_, o), &i)| o[i].error).sum();
        Outcome::Fits(Allocation {
            budget_mb,
            energy_weighted: !plan.importance.is_empty(),
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
        if size <= budget {
            return Ok(done(&at, q, plan));
        }
        target = target.saturating_sub(size - budget);
    }
    Err(PipelineError::Options(format!(
        "--size-budget {budget_mb} MB: the written size still exceeds the budget after {ROUNDS} estimates"
    )))
}

/// Records `a` in an overrides file: the storage of every weight not on 8 bits, and why.
pub fn record(a: &Allocation, ov: &mut crate::tune::Overrides) {
    for s in &a.weights {
        let Some(b) = parse(&s.storage).filter(|b| *b != WeightBits::W8) else {
            continue;
        };
        ov.weights.insert(s.weight.clone(), b);
        ov.reasons.insert(
            s.weight.clone(),
            format!(
                "--size-budget {} MB: {} ({} bytes), the layer's output SQNR from it alone {:.1} dB",
                a.budget_mb, s.storage, s.bytes, s.layer_sqnr_db
            ),
        );
    }
}
