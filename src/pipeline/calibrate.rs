//! Calibrate: the statistics of every value the plan calibrates, streamed out of the
//! engine over the calibration samples ([`crate::calib::collect`]), as a calibration file
//! (what `qrange calibrate` writes and `quantize --ranges` reads).

use super::error::PipelineError;
use super::prepare::Prepared;
use super::progress::Progress;
use crate::calib::collect::{collect_model, CollectError, Keep};
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
    let values = p.plan.calibration_values();
    progress.begin("calibrating", 0);
    let collected = collect_model(
        &p.model,
        Some(&p.base_dir),
        samples,
        &values,
        worker_threads(threads),
        keep,
        |d, n| progress.position(d, n),
    )
    .map_err(|e| match e {
        // A sample that cannot be read (NaN in streamed data…) is the data's error, one line.
        CollectError::Data(e) => PipelineError::Data(e),
        error => PipelineError::Calibration {
            model: p.model_path.clone(),
            error: Box::new(error),
        },
    })?;
    progress.end();
    let mut file = CalibrationFile::new(p.sha256.clone());
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
    let (file, _) = calibrate(&p, &ds, c.threads, progress, keep)?;
    Ok(file)
}
