//! `VariadicSelector`: every input of a Concat dequantized and its output quantized
//! becomes QLinearConcat.

use super::{fused, Outcome, Selection, Sim};
use crate::ir::{DType, OpId};

impl Sim<'_> {
    /// `Rule::Concat`: one 8-bit type on every input and the output.
    pub(super) fn variadic(&self, o: OpId, sel: &Selection) -> Outcome {
        self.check_qdq_nodes(o, sel, None, false)?;
        let mut types: Vec<(String, Option<DType>)> = (0..sel.dqs.len())
            .map(|i| (format!("input {}", sel.dqs[i].0), self.dq_dt(sel, i)))
            .collect();
        types.push(("output".into(), self.q_dt(sel, 0)));
        let refs: Vec<(&str, Option<DType>)> =
            types.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        self.mismatch(&refs)?;
        self.type_checks(self.dq_dt(sel, 0), false)?;
        Ok((fused("QLinearConcat"), Vec::new(), sel.clip))
    }
}
