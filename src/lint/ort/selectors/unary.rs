//! `UnarySelector`: DQ → AveragePool/GlobalAveragePool/LeakyRelu/Sigmoid/Softmax → Q
//! becomes the op's QLinear kernel.

use super::{fused, Outcome, Selection, Sim};
use crate::ir::OpId;

impl Sim<'_> {
    /// `Rule::Unary`: one DQ in, one Q out, the same 8-bit type on both sides.
    pub(super) fn unary(&self, o: OpId, sel: &Selection, kernel: &str) -> Outcome {
        self.check_qdq_nodes(o, sel, Some(&[0]), false)?;
        self.mismatch(&[("input", self.dq_dt(sel, 0)), ("output", self.q_dt(sel, 0))])?;
        self.type_checks(self.dq_dt(sel, 0), false)?;
        Ok((fused(kernel), Vec::new(), sel.clip))
    }
}
