//! `MatMulNodeGroupSelector` and the weight-only `DQMatMulNodeGroupSelector`: DQ, DQ →
//! MatMul becomes QLinearMatMul with a Q after and MatMulIntegerToFloat without; a MatMul
//! that is no QDQ unit can still fuse its constant 2/4/8-bit weight into MatMulNBits.

use super::{fused, Outcome, Selection, Sim};
use crate::ir::{DType, OpId};

impl Sim<'_> {
    /// `Rule::MatMul`: the QDQ MatMul rule, else the weight-only one.
    pub(super) fn matmul_or_nbits(&self, o: OpId, sel: &Selection) -> Outcome {
        match self.matmul(o, sel) {
            Ok(v) => Ok(v),
            // Not a QDQ unit: the weight alone may still fuse to a weight-only kernel.
            Err(reason) => {
                let weight_dq = sel.dqs.iter().find(|(s, _)| *s == 1).map(|(_, d)| *d);
                let clean = sel.qs.is_empty() || self.check_qdq_nodes(o, sel, None, false).is_ok();
                match weight_dq {
                    Some(dq) if sel.clip.is_none() && clean && self.nbits_ok(dq) => {
                        Ok((fused("MatMulNBits"), Vec::new(), None))
                    }
                    _ => Err(reason),
                }
            }
        }
    }

    /// The QDQ MatMul rule: QLinearMatMul with a Q after, MatMulIntegerToFloat without.
    fn matmul(&self, o: OpId, sel: &Selection) -> Outcome {
        if sel.dqs.len() != 2 {
            return Err(self.missing_dq(o, sel, &[0, 1]));
        }
        let dt = |i: usize| self.dq_in_dtype(sel.dqs[i].1);
        let (d_in, d_w) = (dt(0), dt(1));
        self.int8_checks(sel, d_in, d_w)?;
        self.type_checks(d_in, false)?;
        self.type_checks(d_w, false)?;
        if sel.qs.is_empty() {
            return Ok((
                fused("MatMulIntegerToFloat"),
                self.warnings(o, sel, 1),
                None,
            ));
        }
        self.check_qdq_nodes(o, sel, None, false)?;
        self.mismatch(&[("input", d_in), ("output", self.q_out_dtype(sel.qs[0]))])?;
        Ok((fused("QLinearMatMul"), self.warnings(o, sel, 1), sel.clip))
    }

    /// `ValidateDQForMatMulNBits`: a constant rank-2 weight of 2/4/8-bit integers,
    /// blocked along axis 0, per tensor, or per column.
    pub(super) fn nbits_ok(&self, dq: OpId) -> bool {
        let (Some(w), Some(s)) = (self.g.input(dq, 0), self.g.input(dq, 1)) else {
            return false;
        };
        let z = self.g.input(dq, 2);
        if !matches!(self.dtype(s), Some(DType::F32 | DType::F16)) {
            return false;
        }
        if !matches!(
            self.dq_in_dtype(dq),
            Some(DType::I2 | DType::U2 | DType::I4 | DType::U4 | DType::I8 | DType::U8)
        ) {
            return false;
        }
        if self.konst(w).is_none() && self.g.value(w).init.is_none() {
            return false;
        }
        let (Some(wd), Some(sd)) = (self.dims(w), self.dims(s)) else {
            return false;
        };
        if z.is_some_and(|z| self.konst(z).is_none()) {
            return false;
        }
        let zd = z.and_then(|z| self.dims(z));
        if wd.len() != 2 {
            return false;
        }
        let op = self.g.op(dq);
        let block = op.attr_int("block_size").unwrap_or(0);
        if block > 0 {
            if op.attr_int("axis") != Some(0) || block < 16 || (block & (block - 1)) != 0 {
                return false;
            }
            if sd.len() != 2 || zd.as_ref().is_some_and(|z| z.len() != 2) {
                return false;
            }
            let k_blocks = (wd[0] + block - 1) / block;
            sd[0] == k_blocks && sd[1] == wd[1] && zd.as_ref().is_none_or(|z| z[..] == sd[..])
        } else if sd.is_empty() {
            zd.as_ref().is_none_or(|z| z.is_empty())
        } else if sd.len() == 1 && sd[0] == wd[1] {
            op.attr_int("axis").is_none_or(|a| a == 1)
                && zd.as_ref().is_none_or(|z| z.len() == 1 && z[0] == wd[1])
        } else {
            false
        }
    }
}
