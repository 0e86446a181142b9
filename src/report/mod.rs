//! Reports: accuracy metrics between float and quantized runs, output by output
//! (`compare`) and value by value (`layers`), and (later) the JSON/HTML reports built
//! from them.

pub mod compare;
pub mod layers;
pub mod metrics;

pub use metrics::{Comparison, Metrics};
