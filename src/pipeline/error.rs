//! [`PipelineError`]: why a quantize run failed, one variant per way it fails.

use crate::calib::collect::CollectError;
use crate::calib::CalibError;
use crate::data::DataError;
use crate::exec::ExecError;
use crate::ir::GraphError;
use crate::onnx::OnnxError;
use crate::passes::pin_inputs::PinError;
use crate::passes::{PassError, StepError};
use crate::quant::plan::UnknownNames;
use crate::tune::TuneError;
use std::path::PathBuf;

/// Why a run failed. Each renders as one complete line naming the file, option, value or
/// pass concerned; causes follow as sources where the line does not hold them.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Options that contradict each other, the model or the data.
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Calib(#[from] CalibError),
    #[error(transparent)]
    Tune(#[from] TuneError),
    #[error("--pin {name}: {error}")]
    Pin { name: String, error: PinError },
    /// A pass failed on the model.
    #[error("{}: {error}", .model.display())]
    Pass { model: PathBuf, error: PassError },
    #[error("{}: prepared model is invalid: {error}", .model.display())]
    InvalidPrepared { model: PathBuf, error: GraphError },
    #[error("internal error: quantized model is invalid: {0}")]
    InvalidQuantized(GraphError),
    /// The IR was left invalid by a pass (a bug in that pass).
    #[error(transparent)]
    Step(StepError),
    /// The plan could not be materialised where the model was not given (a simulation).
    #[error("{0}")]
    Materialise(PassError),
    /// The plan could not be fitted to the statistics (a bug, named).
    #[error("internal error: {0}")]
    Plan(String),
    /// Calibration failed on the model (its engine run, a subgraph, a statistic).
    #[error("{}: calibration: {error}", .model.display())]
    Calibration {
        model: PathBuf,
        error: Box<CollectError>,
    },
    #[error("no statistics for value '{0}' (ranges file for another model or options?)")]
    NoStatistics(String),
    #[error("{}: the ranges file was made for another model or other options (model sha256 {file}, this run {run})", .path.display())]
    RangesFile {
        path: PathBuf,
        file: String,
        run: String,
    },
    #[error("{}: {error}", .path.display())]
    Overrides { path: PathBuf, error: TuneError },
    /// `--exclude-nodes`, `--exclude-op-types` or `--op-types` names nothing in the model.
    #[error("{}: {error}", .model.display())]
    UnknownNames { model: PathBuf, error: UnknownNames },
    /// The engine failed on a model: `what` names it.
    #[error("{what}: {error}")]
    Exec { what: String, error: ExecError },
    #[error("adaptive range selection: {0}")]
    Selection(TuneError),
    #[error("report: per-layer comparison: {0}")]
    Layers(crate::report::layers::PerTensorError),
}
