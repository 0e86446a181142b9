//! `ConvNodeGroupSelector`: DQ input, DQ weight (and an int32 DQ bias) → Conv → Q becomes
//! QLinearConv.

use super::checks::is_4bit;
use super::{fused, Outcome, Selection, Sim};
use crate::ir::{DType, OpId};
use crate::lint::Reason;

impl Sim<'_> {
    /// `Rule::Conv`.
    pub(super) fn conv(&self, o: OpId, sel: &Selection) -> Outcome {
        self.check_qdq_nodes(o, sel, None, false)?;
        let (d_in, d_w, d_out) = (self.dq_dt(sel, 0), self.dq_dt(sel, 1), self.q_dt(sel, 0));
        // ONNX Runtime compares the types first; an unconverted int8 input is the
        // cause worth naming when both rules fail.
        if d_in == Some(DType::I8) && !self.int8_allowed {
            self.int8_checks(sel, d_in, d_w)?;
        }
        self.mismatch(&[("input", d_in), ("output", d_out)])?;
        if is_4bit(d_w) || is_4bit(d_in) {
            return Err(Reason::FourBit {
                dtype: if is_4bit(d_w) { d_w } else { d_in }.expect("4-bit"),
            });
        }
        self.int8_checks(sel, d_in, d_w)?;
        if sel.dqs.len() == 3 {
            let d_b = self.dq_dt(sel, 2);
            if d_b != Some(DType::I32) {
                return Err(Reason::BiasNotInt32 {
                    bias: self.dq_input_name(sel.dqs[2].1),
                    dtype: d_b.unwrap_or(DType::Other(0)),
                });
            }
        }
        self.type_checks(d_in, false)?;
        self.type_checks(d_w, false)?;
        Ok((fused("QLinearConv"), self.warnings(o, sel, 0), sel.clip))
    }
}
