//! Passes over the IR: the [`Pass`] trait, the shared [`PassCx`], the registry and the
//! pipeline order. One file per pass; [`util`] holds the graph-editing helpers several
//! passes share (scope facts, renaming captured names, dead-code removal).

use crate::ir::{Model, Tensor};
use std::collections::BTreeMap;

pub mod fold_batchnorm;
pub mod fold_bias_add;
pub mod fold_constants;
pub mod fold_if;
pub mod infer_shapes;
pub mod insert_qdq;
pub mod pin_inputs;
#[cfg(test)]
pub(crate) mod testkit;
pub mod unroll_loop;
pub mod upgrade_opset;
pub mod util;

pub use fold_constants::FoldConstants;
pub use fold_if::FoldIf;
pub use infer_shapes::InferShapes;
pub use pin_inputs::PinInputs;

/// Whether a pass changed the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Yes,
    No,
}

impl Changed {
    /// `Yes` when either is `Yes`.
    pub fn or(self, other: Changed) -> Changed {
        if self == Changed::Yes || other == Changed::Yes {
            Changed::Yes
        } else {
            Changed::No
        }
    }

    /// `Yes` when `b` is true.
    pub fn from_bool(b: bool) -> Changed {
        if b {
            Changed::Yes
        } else {
            Changed::No
        }
    }
}

/// Failure inside a pass, naming the pass and the node or value concerned.
#[derive(Debug, thiserror::Error)]
#[error("pass {pass}: {what}")]
pub struct PassError {
    pub pass: &'static str,
    pub what: String,
}

/// Something a pass noticed and did not act on (e.g. a type given by the file that
/// disagrees with inference, a constant op that could not be evaluated). Reported to
/// the user; never silently dropped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub pass: &'static str,
    pub what: String,
}

/// Shared state handed to passes: facts given by the user and the diagnostics passes
/// leave behind.
#[derive(Default, Debug)]
pub struct PassCx {
    /// Graph inputs fixed to a value (`--pin sr=16000`). [`PinInputs`] turns each into
    /// an initializer and removes it from the graph inputs.
    pub pinned: BTreeMap<String, Tensor>,
    /// Concrete shapes of graph inputs (from the data or `--shape`). [`PinInputs`]
    /// replaces the declared dims with them.
    pub input_shapes: BTreeMap<String, Vec<i64>>,
    /// Notes left by passes, in the order they were found, without duplicates.
    pub diagnostics: Vec<Diagnostic>,
}

impl PassCx {
    /// Records a diagnostic once (passes that run in a fixed-point loop see the same
    /// thing several times).
    pub fn note(&mut self, pass: &'static str, what: impl Into<String>) {
        let d = Diagnostic {
            pass,
            what: what.into(),
        };
        if !self.diagnostics.contains(&d) {
            self.diagnostics.push(d);
        }
    }
}

/// A transformation of the IR.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError>;
}

/// Every pass, in pipeline order.
pub fn registry() -> Vec<Box<dyn Pass>> {
    vec![
        // First: every later pass reads the pinned values and the concrete input shapes.
        Box::new(PinInputs),
        // Before upgrade_opset, which needs element types and ranks for some rewrites
        // (Clip/Pad attributes that become typed inputs, Softmax's rank).
        Box::new(InferShapes),
        // Early: later passes see one form of each operator (axes as inputs, single-axis
        // Softmax), and per-channel QuantizeLinear/DequantizeLinear need opset 13.
        Box::new(upgrade_opset::UpgradeOpset::new(13)),
        // After infer_shapes: `Shape`/`Size` fold only where the input shape is known; also
        // turns the constants upgrade_opset wrote and every Constant node into initializers.
        Box::new(FoldConstants),
        // After fold_constants (conditions must be constants to fold); runs
        // infer_shapes → fold_constants → fold_if to a fixed point itself, because each
        // inlined branch can make more shapes known and more conditions constant.
        Box::new(FoldIf::default()),
        // After fold_if and fold_constants: weights and BatchNormalization parameters are
        // initializers and inlined branches are in the main graph. Before quantization:
        // the folded weights are what gets quantized per channel.
        Box::new(fold_batchnorm::FoldBatchNorm),
    ]
}

/// Specialises `m` for the pinned inputs and concrete input shapes in `cx`: runs
/// `pin_inputs`, then `fold_if` (which alternates `infer_shapes`, `fold_constants` and
/// If inlining until nothing changes). What `qrange run --pin` needs before execution.
pub fn specialize(m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
    let a = PinInputs.run(m, cx)?;
    let b = FoldIf::default().run(m, cx)?;
    Ok(a.or(b))
}
