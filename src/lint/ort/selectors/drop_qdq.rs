//! `DropQDQNodesSelector` and `DropDQNodesSelector`: a data-movement op between a DQ and a
//! Q with the same constant scalar parameters (Reshape, Transpose, MaxPool, …) loses the
//! pair and moves integers; ArgMax loses its DQ. A Gather from a dequantized constant
//! table (an embedding stored int8 per row) with no Q after runs in float behind the
//! table's DequantizeLinear.

use super::{Outcome, Selection, Sim};
use crate::ir::OpId;
use crate::lint::{Reason, Verdict};

impl Sim<'_> {
    /// `Rule::Drop`: DQ → op → Q with equal constant parameters.
    pub(super) fn drop_qdq(
        &self,
        o: OpId,
        sel: &Selection,
        allow_16bit: bool,
        positive_scale: bool,
    ) -> Outcome {
        self.no_clip(sel)?;
        if let Some(table) = self.dequantized_table(o, sel) {
            return Err(Reason::DequantizedTable { table });
        }
        self.check_qdq_nodes(o, sel, Some(&[0]), false)?;
        self.mismatch(&[("input", self.dq_dt(sel, 0)), ("output", self.q_dt(sel, 0))])?;
        self.type_checks(self.dq_dt(sel, 0), allow_16bit)?;
        let (q, dq) = (sel.qs[0], sel.dqs[0].1);
        if positive_scale {
            match self.g.input(q, 1).and_then(|s| self.const_scalar(s)) {
                Some(s) if s > 0.0 => {}
                Some(s) => return Err(Reason::NonPositiveScale { scale: s }),
                None => return Err(Reason::QParamsNotConstantScalar { node: self.name(q) }),
            }
        }
        self.pair_supported(q, dq)?;
        Ok((Verdict::Dropped, Vec::new(), None))
    }

    /// The name of the constant table a Gather reads through a DequantizeLinear, when no
    /// QuantizeLinear follows it.
    fn dequantized_table(&self, o: OpId, sel: &Selection) -> Option<String> {
        if self.g.op(o).op_type != "Gather" || !sel.qs.is_empty() {
            return None;
        }
        let (_, dq) = sel.dqs.iter().find(|(slot, _)| *slot == 0)?;
        let table = self.g.input(*dq, 0)?;
        self.is_const(table)
            .then(|| self.g.value(table).name.clone())
    }

    /// `Rule::DropDq`: DQ → op, the DQ read by the op alone, with a zero point.
    pub(super) fn drop_dq(&self, o: OpId, sel: &Selection) -> Outcome {
        self.no_clip(sel)?;
        if sel.dqs.len() != 1 {
            return Err(self.missing_dq(o, sel, &[0]));
        }
        let dq = sel.dqs[0].1;
        let shared = self
            .g
            .output(dq, 0)
            .is_none_or(|out| self.g.is_output(out) || self.edges(out) != 1);
        if shared {
            return Err(Reason::SharedDq { dq: self.name(dq) });
        }
        self.type_checks(self.dq_dt(sel, 0), false)?;
        if self.g.input(dq, 2).is_none() {
            return Err(Reason::MissingZeroPoint {
                node: self.name(dq),
            });
        }
        if !self.scalar_params(dq) {
            return Err(Reason::QParamsNotConstantScalar {
                node: self.name(dq),
            });
        }
        Ok((Verdict::Dropped, Vec::new(), None))
    }
}
