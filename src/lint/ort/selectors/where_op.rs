//! `WhereNodeGroupSelector`: Where with its X and Y dequantized (the condition stays
//! bool) and its output quantized becomes QLinearWhere.

use super::{fused, Outcome, Selection, Sim};
use crate::ir::OpId;

impl Sim<'_> {
    /// `Rule::Where`: X, Y and the output of one 8-bit type.
    pub(super) fn where_op(&self, o: OpId, sel: &Selection) -> Outcome {
        self.check_qdq_nodes(o, sel, Some(&[1, 2]), false)?;
        self.mismatch(&[
            ("X", self.dq_dt(sel, 0)),
            ("Y", self.dq_dt(sel, 1)),
            ("output", self.q_dt(sel, 0)),
        ])?;
        self.type_checks(self.dq_dt(sel, 0), false)?;
        Ok((fused("QLinearWhere"), Vec::new(), sel.clip))
    }
}
