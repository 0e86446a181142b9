//! `SplitSelector`: DQ → Split → one Q per output, every Q with the DQ's parameters; the
//! Q/DQ nodes are dropped and Split moves integers.

use super::checks::is_4bit;
use super::{Outcome, Selection, Sim};
use crate::ir::OpId;
use crate::lint::{Reason, Verdict};

impl Sim<'_> {
    /// `Rule::Split`.
    pub(super) fn split(&self, o: OpId, sel: &Selection) -> Outcome {
        self.no_clip(sel)?;
        self.check_qdq_nodes(o, sel, Some(&[0]), false)?;
        let d_in = self.dq_dt(sel, 0);
        if is_4bit(d_in) {
            return Err(Reason::FourBit {
                dtype: d_in.expect("4-bit"),
            });
        }
        let dq = sel.dqs[0].1;
        for (i, q) in sel.qs.iter().enumerate() {
            self.mismatch(&[("input", d_in), ("output", self.q_dt(sel, i))])?;
            self.pair_supported(*q, dq)?;
        }
        Ok((Verdict::Dropped, Vec::new(), None))
    }
}
