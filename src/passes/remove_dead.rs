//! remove_dead — ops whose outputs nobody reads, then constants and values nobody reads.
//!
//! **What it does.** [`super::util::remove_dead`] on the main graph and every subgraph:
//! ops of the ONNX domains with no read output go, repeatedly, then initializers and loose
//! values nobody reads. Graph inputs and outputs, and names a subgraph captures, stay.
//!
//! **Requires.** Nothing. **Effects.** Fewer ops, constants and values; nothing renamed.
//!
//! **Example.**
//! ```text
//! const  %w: f32[4] = [1, 2, 3, 4]        (removed: nobody reads it)
//! %t = Relu(%x) : f32[1,4]                 (removed: nobody reads %t)
//! %y = Sigmoid(%x) : f32[1,4]
//! output %y
//! ```

use super::{Changed, Pass, PassCx, PassError};
use crate::ir::Model;

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct RemoveDead;

impl Pass for RemoveDead {
    fn name(&self) -> &'static str {
        "remove_dead"
    }

    fn description(&self) -> &'static str {
        "remove ops, constants and values nobody reads"
    }

    fn run(&self, m: &mut Model, _cx: &mut PassCx) -> Result<Changed, PassError> {
        Ok(Changed::from_bool(super::util::remove_dead(&mut m.graph)))
    }
}
