//! `GemmNodeGroupSelector`: DQ A, DQ B (and an int32 DQ C with `alpha` = `beta` = 1) →
//! Gemm, with or without a Q after, becomes QGemm; else the weight-only
//! `DQMatMulNodeGroupSelector` may make a Gemm equal to a MatMul plus bias MatMulNBits.

use super::{fused, Outcome, Selection, Sim};
use crate::ir::{DType, OpId};
use crate::lint::Reason;

impl Sim<'_> {
    /// `Rule::Gemm`: the QDQ Gemm rule, else the weight-only one.
    pub(super) fn gemm(&self, o: OpId, sel: &Selection) -> Outcome {
        let reason = match self.qdq_gemm(o, sel) {
            Ok(v) => return Ok(v),
            Err(reason) => reason,
        };
        let op = self.g.op(o);
        let weight_dq = sel.dqs.iter().find(|(s, _)| *s == 1).map(|(_, d)| *d);
        let Some(wdq) = weight_dq else {
            return Err(reason);
        };
        // The weight's DQ and at most a bias DQ. A DQ on input A counts against it when
        // it reads 8 bits (the 8-bit QDQ rules own such a Gemm: ONNX Runtime 1.32 keeps it
        // a float Gemm), not when it reads 16 bits (MatMulNBits with A dequantized).
        let others_on_bias = sel.dqs.iter().all(|(s, d)| {
            *s == 1 || *s == 2 || matches!(self.dq_in_dtype(*d), Some(DType::U16 | DType::I16))
        });
        let plain = op.attr_float("alpha").unwrap_or(1.0) == 1.0
            && op.attr_int("transA").unwrap_or(0) == 0
            && op.attr_int("transB").unwrap_or(0) == 0;
        let bias_ok = match self.g.input(o, 2) {
            None => true,
            Some(c) => {
                let n = self
                    .g
                    .input(wdq, 0)
                    .and_then(|w| self.dims(w))
                    .and_then(|d| (d.len() == 2).then_some(d[1]));
                op.attr_float("beta").unwrap_or(1.0) == 1.0
                    && n.is_some()
                    && self
                        .dims(c)
                        .is_some_and(|d| d.len() == 1 && Some(d[0]) == n)
            }
        };
        let single_reader = self
            .g
            .output(wdq, 0)
            .is_some_and(|v| self.edges(v) == 1 && !self.g.is_output(v));
        if sel.clip.is_none()
            && sel.qs.is_empty()
            && others_on_bias
            && plain
            && bias_ok
            && single_reader
            && self.nbits_ok(wdq)
        {
            return Ok((fused("MatMulNBits"), Vec::new(), None));
        }
        Err(reason)
    }

    /// The QDQ Gemm rule.
    fn qdq_gemm(&self, o: OpId, sel: &Selection) -> Outcome {
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
