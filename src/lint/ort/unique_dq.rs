//! `EnsureUniqueDQForNodeUnit`: a DequantizeLinear with several readers (or a reader and
//! a graph output) is duplicated, one copy per reader, so that sharing never keeps a unit
//! from fusing. Runs first and again after each round of level 1, as ONNX Runtime does.

use super::sim::Sim;
use crate::lint::{is_dq, LintError};

impl Sim<'_> {
    /// Every consumer gets its own DequantizeLinear (EnsureUniqueDQForNodeUnit).
    pub(super) fn ensure_unique_dq(&mut self) -> Result<(), LintError> {
        for dq in self.g.topo_order()? {
            if !is_dq(&self.g, dq) {
                continue;
            }
            let Some(out) = self.g.output(dq, 0) else {
                continue;
            };
            let edges = self.g.consumers(out);
            let is_output = self.g.is_output(out);
            if edges.is_empty() || (edges.len() == 1 && !is_output) {
                continue;
            }
            let skip = usize::from(!is_output);
            let dq_name = self.name(dq);
            for (c, _) in &edges {
                self.note(
                    *c,
                    format!(
                        "DequantizeLinear '{dq_name}' is shared; ONNX Runtime gives each reader its own copy"
                    ),
                );
            }
            for (c, slot) in edges.into_iter().skip(skip) {
                let inputs = self.g.inputs_of(dq);
                let mut op = self.g.op(dq).clone();
                op.name = Some(format!("{dq_name}/duplicated"));
                op.order = self.g.order_after(dq);
                let ty = self.g.value(out).ty.clone();
                let base = format!("{}/duplicated", self.vname(out));
                let nv = self.g.add_fresh_value(&base, ty);
                let new = self.g.add_op(op, &inputs, &[Some(nv)])?;
                self.g.set_input(c, slot, Some(nv));
                if self.to_u8.contains(&dq) {
                    self.to_u8.insert(new);
                }
            }
        }
        Ok(())
    }
}
