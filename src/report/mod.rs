//! Reports: accuracy metrics between float and quantized runs, and (later) the
//! JSON/HTML reports built from them.

pub mod compare;
pub mod metrics;

pub use metrics::{Comparison, Metrics};
