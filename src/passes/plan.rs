//! plan — the quantization plan of the model, built from the rule table.
//!
//! **What it does.** [`crate::quant::plan::build`] with the settings in
//! [`PassCx::quant`]: a decision per value (activation, weight, bias, shared or folded
//! range) and a state per op (quantized, folded, float and why), stored in
//! [`PassCx::plan`]. The graph is not touched: the plan is the contract between what
//! follows (the opset the Q/DQ need, calibration, range choice, mixed precision) and
//! [`super::insert_qdq`], which applies it.
//!
//! **Requires.** Value types (`infer_shapes`); constants as initializers. Without
//! quantization settings it is skipped.
//!
//! **Effects.** Replaces [`PassCx::plan`]; returns [`Changed::No`].
//!
//! **Example** (the plan of `%y = Conv(%x, %w, %b)`, as JSON):
//! ```text
//! values: x → activation u8, w → weight i8 axis 0, b → bias (input x, weight w)
//! ops:    Conv → quantized (kernel QLinearConv)
//! ```

use super::{Changed, Pass, PassCx, PassError};
use crate::ir::Model;

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildPlan;

impl Pass for BuildPlan {
    fn name(&self) -> &'static str {
        "plan"
    }

    fn description(&self) -> &'static str {
        "decide per value and op what is quantized, shared, folded or left float (no rewrite)"
    }

    fn skip(&self, cx: &PassCx) -> Option<String> {
        if cx.dynamic {
            return Some("dynamic quantization: activations are quantized at run time".into());
        }
        cx.quant
            .is_none()
            .then(|| "no quantization settings".to_string())
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        if let Some(cfg) = &cx.quant {
            cx.plan = Some(crate::quant::plan::build(m, cfg));
        }
        Ok(Changed::No)
    }
}
