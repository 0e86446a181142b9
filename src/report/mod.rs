//! Reports: accuracy metrics between float and quantized runs, output by output
//! (`compare`) and value by value (`layers`), and the visual HTML report.
//!
//! - [`metrics`]: SQNR, cosine, max-abs, top-1 agreement, accuracy.
//! - [`compare`]: runs two models on the same samples and compares every output.
//! - [`estimate`]: how sure a figure pooled over samples is (bootstrap bounds over the
//!   samples), and how many samples would make it sure enough.
//! - [`layers`]: per-tensor comparison of a float model and its quantized version,
//!   matched through Q/DQ pairs, worst first.
//! - [`tensor`]: one calibrated tensor as the report shows it (display histogram, each
//!   method's range, clipped mass, expected error), built from calibration statistics.
//! - [`weights`]: one quantized weight as the report shows it (histogram of its values,
//!   the levels of the grid it is written on).
//! - [`html`]: [`ReportInput`] (plain data, sections filled by whoever knows them) and
//!   [`render`], one self-contained page; [`plot`] draws its SVG charts.

pub mod compare;
pub mod estimate;
pub mod html;
pub mod layers;
pub mod metrics;
pub mod plot;
pub mod tensor;
pub mod weights;

pub use html::{render, FusionRow, FusionSection, LayerRow, OutputRow, PrecisionRow, ReportInput};
pub use metrics::{Comparison, Metrics};
pub use tensor::{Candidate, DisplayHistogram, Observed, TensorRow};
pub use weights::WeightRow;
