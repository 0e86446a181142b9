//! `BinarySelector`: DQ, DQ → Add/Mul → Q becomes QLinearAdd/QLinearMul.

use super::{fused, Outcome, Selection, Sim};
use crate::ir::OpId;

impl Sim<'_> {
    /// `Rule::Binary`: both inputs dequantized, one Q out, one 8-bit type throughout.
    pub(super) fn binary(&self, o: OpId, sel: &Selection, kernel: &str) -> Outcome {
        self.check_qdq_nodes(o, sel, None, false)?;
        self.mismatch(&[
            ("input A", self.dq_dt(sel, 0)),
            ("input B", self.dq_dt(sel, 1)),
            ("output", self.q_dt(sel, 0)),
        ])?;
        self.type_checks(self.dq_dt(sel, 0), false)?;
        Ok((fused(kernel), Vec::new(), sel.clip))
    }
}
