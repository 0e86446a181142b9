//! Passes over the IR: the [`Pass`] trait, the registry and the pipeline manager.
//! One file per pass.

pub mod fold_batchnorm;
pub mod insert_qdq;
#[cfg(test)]
pub(crate) mod testkit;
pub mod upgrade_opset;

use crate::ir::Model;

/// Whether a pass changed the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Yes,
    No,
}

/// Failure inside a pass, naming the pass and the node or value concerned.
#[derive(Debug, thiserror::Error)]
#[error("pass {pass}: {what}")]
pub struct PassError {
    pub pass: &'static str,
    pub what: String,
}

/// Shared state handed to passes (options and facts such as pinned inputs).
#[derive(Default, Debug)]
pub struct PassCx {}

/// A transformation of the IR.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError>;
}

/// Every pass, in pipeline order.
pub fn registry() -> Vec<Box<dyn Pass>> {
    vec![
        // First: later passes see one form of each operator (axes as inputs, single-axis
        // Softmax), and per-channel QuantizeLinear/DequantizeLinear need opset 13.
        Box::new(upgrade_opset::UpgradeOpset::new(13)),
        // Before quantization: the folded weights are what gets quantized per channel.
        Box::new(fold_batchnorm::FoldBatchNorm),
    ]
}
