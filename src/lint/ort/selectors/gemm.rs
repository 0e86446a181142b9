//! `GemmNodeGroupSelector`: DQ A, DQ B (and an int32 DQ C with `alpha` = `beta` = 1) →
//! Gemm, with or without a Q after, becomes QGemm.

use super::{fused, Outcome, Selection, Sim};
use crate::ir::{DType, OpId};
use crate::lint::Reason;

impl Sim<'_> {
    /// `Rule::Gemm`.
    pub(super) fn gemm(&self, o: OpId, sel: &Selection) -> Outcome {
        let op = self.g.op(o);
        self.check_qdq_nodes(o, sel, None, true)?;
        let (d_a, d_b) = (self.dq_dt(sel, 0), self.dq_dt(sel, 1));
        if d_a == Some(DType::I8) && d_b != Some(DType::I8) {
            return Err(Reason::WeightNotInt8 {
                weight: sel
                    .dqs
                    .get(1)
                    .map(|d| self.dq_input_name(d.1))
                    .unwrap_or_default(),
                dtype: d_b.unwrap_or(DType::Other(0)),
            });
        }
        if !sel.qs.is_empty() {
            self.mismatch(&[("input A", d_a), ("output", self.q_dt(sel, 0))])?;
        }
        self.type_checks(d_a, false)?;
        self.type_checks(d_b, false)?;
        if sel.dqs.len() == 3 {
            let beta = op.attr_float("beta").unwrap_or(1.0);
            if beta != 1.0 {
                return Err(Reason::GemmBeta { beta });
            }
            // QGemm scales the int32 bias by alpha: only 1 keeps it exact.
            let alpha = op.attr_float("alpha").unwrap_or(1.0);
            if alpha != 1.0 {
                return Err(Reason::GemmAlpha { alpha });
            }
            let d_c = self.dq_dt(sel, 2);
            if d_c != Some(DType::I32) {
                return Err(Reason::BiasNotInt32 {
                    bias: self.dq_input_name(sel.dqs[2].1),
                    dtype: d_c.unwrap_or(DType::Other(0)),
                });
            }
        }
        Ok((fused("QGemm"), self.warnings(o, sel, 2), sel.clip))
    }
}
