//! Calibrate: the statistics of every value the plan calibrates, streamed out of the
//! engine over the calibration samples ([`crate::calib::collect`]), as a calibration file
//! (what `qrange calibrate` writes and `quantize --ranges` reads).
//!
//! The model runs whole, or block by block ([`crate::calib::layerwise`]) when `--layerwise`
//! asks for it or its weights exceed `--memory-budget` (and no value to calibrate lies
//! inside a subgraph): then each block's weights, and the activations held between blocks,
//! stay under the budget. The statistics are the same bytes either way.

use super::error::PipelineError;
use super::prepare::Prepared;
use super::progress::Progress;
use crate::calib::collect::{collect_model, CollectError, Keep};
use crate::calib::layerwise::{collect_layerwise, weight_bytes, Budget, Layerwise};
use crate::calib::CalibrationFile;
use crate::data::{Sample, SampleSource};
use std::collections::BTreeMap;

/// Calibration threads for `--threads N` (0: one per core, at most 4).
pub fn worker_threads(requested: usize) -> usize {
    match requested {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        n => n,
    }
}

/// Runs calibration over `samples` (read one at a time) and returns the statistics file,
/// with the prepared model's outputs for the samples of `keep` (whose callback gets the
/// statistics of the other samples).
pub fn calibrate<S: SampleSource + ?Sized>(
    p: &Prepared,
    samples: &S,
    threads: usize,
    progress: &dyn Progress,
    keep: Keep,
) -> Result<(CalibrationFile, BTreeMap<usize, Sample>), PipelineError> {
    let how = How {
        threads,
        budget_mib: u64::MAX,
        layerwise: false,
    };
    calibrate_with(p, samples, &how, progress, keep)
}

/// How calibration runs: threads, and when to run the model block by block.
#[derive(Clone, Copy, Debug)]
pub struct How {
    /// `--threads`.
    pub threads: usize,
    /// `--memory-budget` in MiB: a model with more weights runs block by block, each
    /// block's weights and the activations held between blocks under it.
    pub budget_mib: u64,
    /// `--layerwise`: block by block whatever the model's size.
    pub layerwise: bool,
}

impl How {
    /// The settings of `c`.
    pub fn of(c: &super::options::Common) -> How {
        How {
            threads: c.threads,
            budget_mib: c.memory_budget_mib,
            layerwise: c.layerwise,
        }
    }

    /// The budgets when `model` is to run block by block. Asked for, it always is; else
    /// when its weights exceed the budget and every calibrated value is in the main graph.
    fn layerwise(&self, model: &crate::ir::Model) -> Option<Budget> {
        let bytes = self.budget_mib.saturating_mul(1 << 20);
        let g = &model.graph;
        let flat = g.ops().all(|o| g.op(o).subgraphs().is_empty());
        (self.layerwise || (flat && weight_bytes(g) > bytes)).then_some(Budget {
            weights: bytes,
            held: bytes,
        })
    }
}

/// [`calibrate`], the model run whole or block by block as `how` says.
pub fn calibrate_with<S: SampleSource + ?Sized>(
    p: &Prepared,
    samples: &S,
    how: &How,
    progress: &dyn Progress,
    keep: Keep,
) -> Result<(CalibrationFile, BTreeMap<usize, Sample>), PipelineError> {
    let values = p.plan.calibration_values();
    let workers = worker_threads(how.threads);
    let position = |d, n| progress.position(d, n);
    let collected = match how.layerwise(&p.model) {
        Some(budget) => {
            progress.begin("calibrating layer by layer", 0);
            let scratch = std::env::temp_dir();
            let lw = Layerwise {
                budget,
                workers,
                scratch_dir: &scratch,
            };
            let base = Some(p.base_dir.as_path());
            collect_layerwise(&p.model, base, samples, &values, keep, &lw, position)
        }
        None => {
            progress.begin("calibrating", 0);
            let base = Some(p.base_dir.as_path());
            collect_model(&p.model, base, samples, &values, workers, keep, position)
        }
    }
    .map_err(|e| match e {
        // A sample that cannot be read (NaN in streamed data…) is the data's error, one line.
        CollectError::Data(e) => PipelineError::Data(e),
        error => PipelineError::Calibration {
            model: p.model_path.clone(),
            error: Box::new(error),
        },
    })?;
    progress.end();
    let mut file = CalibrationFile::new(p.sha256.get()?);
    file.samples = samples.count() as u64;
    file.tensors = collected.stats;
    Ok((file, collected.outputs))
}

/// Part `index` (from 0) of `count` of the calibration data, for one task of an array job:
/// the tasks' files merge into the statistics of the whole data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// `qrange calibrate`: the statistics of the calibration data `c` names (of its part
/// `shard`, when given), for the model prepared with `c`'s settings (files of the same
/// model and settings merge exactly).
pub fn statistics(
    c: &super::options::Common,
    shard: Option<Shard>,
    progress: &dyn Progress,
) -> Result<CalibrationFile, PipelineError> {
    let model = crate::onnx::read_model(&c.model)?;
    let pins = super::inputs::pins(&model, c)?;
    super::inputs::check_names(&model, c)?;
    let specs = super::inputs::input_specs(&model, &pins);
    let (Some(mut ds), _) = super::inputs::calibration_source(c, &specs, progress)? else {
        return Err(PipelineError::Options(
            "no calibration data: give --calib DATA".into(),
        ));
    };
    if let Some(Shard { index, count }) = shard {
        let all = ds.len();
        ds.shard(index, count);
        if ds.is_empty() {
            return Err(PipelineError::Options(format!(
                "--shard {index}/{count}: {} has {all} samples, fewer than {count} shards; use at most {all} shards",
                ds.source.display()
            )));
        }
    }
    let first = ds.first()?;
    let input = super::prepare::PrepareInput {
        common: c,
        float_nodes: &[],
        first_sample: Some(&first),
        wide: false,
        dynamic: false,
        dump: &Default::default(),
    };
    let mut runner = crate::passes::Runner::new();
    let p = match super::prepare::prepare(&input, model, &mut runner, progress)? {
        super::prepare::PrepareEnd::Prepared(p) => p,
        super::prepare::PrepareEnd::Stopped { .. } => unreachable!("no stop was asked for"),
    };
    let keep = Keep {
        samples: &Default::default(),
        others: &mut |_| {},
    };
    let (file, _) = calibrate_with(&p, &ds, &How::of(c), progress, keep)?;
    Ok(file)
}
