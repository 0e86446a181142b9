//! Calibration: streaming, mergeable statistics of tensors and the methods that turn them
//! into quantization ranges.
//!
//! - [`stats`]: [`TensorStats`] (counts, min/max, exact sums, a histogram on a canonical
//!   power-of-two grid) and [`ChannelStats`] (min/max per slice along an axis). Observing never
//!   keeps samples; merging shards is exact and order-free (bit-identical to one run).
//! - [`density`]: the piecewise-uniform reading of a histogram and the one quality measure
//!   every method is judged by: the *expected quantization MSE* of a range on a given integer
//!   grid (rounding noise inside, clipping error outside).
//! - [`methods`]: `minmax`, `percentile`, `entropy` (TensorRT's KL recipe on 2048 bins),
//!   `mse` (search minimising the measure) and `auto` (the best of all under the measure).
//! - [`file`](mod@file): [`CalibrationFile`], the versioned JSON written by calibration runs, mergeable
//!   across runs on the same model.
//!
//! - [`collect`]: the one part that runs the engine: taps the values to calibrate and
//!   streams them into statistics, reaching inside If branches, Loop and Scan bodies.
//! - [`layerwise`]: the same statistics, byte for byte, for models whose weights should not
//!   be loaded whole: the model run one block (a run of ops whose weights fit a budget) at a
//!   time over all samples, the values between blocks held in memory or spilled to disk.
//!
//! Everything else here is pure numerics on f32 values and host tensors: no graph, no engine.
//! Scale/zero-point computation proper belongs to the quantizer; [`density::Grid`] mirrors
//! its formula only to evaluate candidate ranges.
//!
//! **Invariant:** a [`TensorStats`] depends only on the multiset of observed values.
//! **Invariant:** every [`Range`] returned contains 0 and has finite bounds.

pub mod collect;
pub mod density;
pub mod exact;
pub mod file;
pub mod layerwise;
pub mod methods;
pub mod stats;

pub use file::{CalibrationFile, FORMAT_VERSION};
pub use methods::{compute_candidates, compute_range, compute_ranges, AutoChoice, MethodOptions};
pub use stats::{ChannelStats, Histogram, TensorStats};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A range-selection method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The observed [min, max].
    MinMax,
    /// Cut a fraction of the mass off the tails (default 99.999 %).
    Percentile,
    /// Minimum KL divergence between the |x| distribution and its quantized version.
    Entropy,
    /// Minimum expected quantization MSE.
    Mse,
    /// Every method, scored by expected MSE; the lowest wins.
    Auto,
    /// `quantize`: the range set (`auto`'s, or one method for every tensor) whose
    /// simulated outputs on calibration samples are closest to the float model's. Alone on
    /// one tensor it is `auto`.
    Adaptive,
}

impl Method {
    /// Every method, in the command line's order.
    pub const ALL: [Method; 6] = [
        Method::MinMax,
        Method::Percentile,
        Method::Entropy,
        Method::Mse,
        Method::Auto,
        Method::Adaptive,
    ];

    /// The method of a name (as [`Method::name`] gives it).
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile => "percentile",
            Method::Entropy => "entropy",
            Method::Mse => "mse",
            Method::Auto => "auto",
            Method::Adaptive => "adaptive",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The integer grid a range is chosen for: the best clip depends on the number of levels.
///
/// `symmetric` follows ONNX Runtime's meaning: the range becomes `[-a, a]` and the zero point
/// the middle of `[qmin, qmax]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantTarget {
    pub qmin: i64,
    pub qmax: i64,
    pub symmetric: bool,
}

impl QuantTarget {
    /// A target grid; requires `qmin ≤ 0 ≤ qmax` and `qmin < qmax` (0 must be representable).
    pub fn new(qmin: i64, qmax: i64, symmetric: bool) -> Result<Self, CalibError> {
        if qmin >= qmax || qmin > 0 || qmax < 0 {
            return Err(CalibError::InvalidTarget { qmin, qmax });
        }
        Ok(QuantTarget {
            qmin,
            qmax,
            symmetric,
        })
    }

    /// The grid of a quantizer type (same bounds and symmetry).
    pub fn of(q: &crate::quant::params::QType) -> Self {
        QuantTarget {
            qmin: q.qmin,
            qmax: q.qmax,
            symmetric: q.symmetric,
        }
    }

    /// Number of integer levels.
    pub fn levels(&self) -> u64 {
        (self.qmax - self.qmin) as u64 + 1
    }
}

impl From<crate::quant::params::QType> for QuantTarget {
    fn from(q: crate::quant::params::QType) -> Self {
        QuantTarget::of(&q)
    }
}

/// A chosen calibration range, the method that chose it, and its expected quantization MSE
/// on the target grid (per value, in squared tensor units).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub lo: f32,
    pub hi: f32,
    pub method: Method,
    pub expected_mse: f64,
}

/// Errors of calibration, each naming the tensor or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("tensor '{tensor}': no values were observed")]
    Empty { tensor: String },
    #[error(
        "tensor '{tensor}': no finite values among {count} observed ({nan} NaN, {inf} infinite)"
    )]
    NoFiniteValues {
        tensor: String,
        count: u64,
        nan: u64,
        inf: u64,
    },
    #[error("tensor '{tensor}': calibration needs float values, got {dtype}")]
    NotFloat { tensor: String, dtype: String },
    #[error("tensor '{tensor}': channel axis {axis} is out of range for rank {rank}")]
    BadAxis {
        tensor: String,
        axis: usize,
        rank: usize,
    },
    #[error("tensor '{tensor}': shape {shape:?} does not match {len} values")]
    ShapeMismatch {
        tensor: String,
        shape: Vec<usize>,
        len: usize,
    },
    #[error("tensor '{tensor}': {found} channels where earlier samples had {expected}")]
    ChannelMismatch {
        tensor: String,
        expected: usize,
        found: usize,
    },
    #[error("tensor '{tensor}': per-channel statistics on axis {a} and axis {b} cannot be merged")]
    AxisMismatch { tensor: String, a: usize, b: usize },
    #[error("invalid quantization grid [{qmin}, {qmax}]: needs qmin < qmax and qmin <= 0 <= qmax")]
    InvalidTarget { qmin: i64, qmax: i64 },
    #[error("percentile {0} is outside (0, 100]")]
    InvalidPercentile(f64),
    #[error("calibration files are for different models (sha256 {a} and {b})")]
    ModelMismatch { a: String, b: String },
    #[error("calibration files have format versions {a} and {b}")]
    VersionMismatch { a: u32, b: u32 },
    #[error("calibration file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("calibration file {path}: {message}")]
    Format { path: PathBuf, message: String },
}
