//! Level 1, `ReshapeFusion` (after MatMulAddFusion, before Q/DQ propagation): a Reshape
//! whose shape is a Concat (axis 0, read once) of constants and of
//! `Shape(x) → Gather(i) → Unsqueeze(axes 0)` chains on its own input `x`, each at its
//! own position `i`, gets a constant shape (0 copies that dim) and the Shape chains go.
//! The Reshape's input then has the Reshape as its only reader, so a QuantizeLinear after
//! the Reshape propagates back through it (an encoder's attention head split and merge).

use super::sim::Sim;
use crate::ir::{OpId, Tensor, ValueId};
use crate::lint::LintError;
use std::collections::HashSet;

impl Sim<'_> {
    /// The op producing `v` when its op type is `ty` (default domain) and `v` has one reader.
    fn sole_producer(&self, v: ValueId, ty: &str) -> Option<OpId> {
        let (p, _) = self.g.producer(v)?;
        let op = self.g.op(p);
        (op.op_type == ty
            && op.domain_key().is_empty()
            && self.edges(v) == 1
            && !self.g.is_output(v))
        .then_some(p)
    }

    /// The dim index a `Shape(x) → Gather → Unsqueeze(axes 0)` chain ending in `v` reads.
    fn shape_chain(&self, v: ValueId, x: ValueId) -> Option<usize> {
        let unsq = self.sole_producer(v, "Unsqueeze")?;
        let axes = match self.g.op(unsq).attr_ints("axes") {
            Some(a) => a.to_vec(),
            None => self
                .konst(self.g.input(unsq, 1)?)?
                .to_f64_vec()?
                .iter()
                .map(|&a| a as i64)
                .collect(),
        };
        if axes != [0] {
            return None;
        }
        let gather = self.sole_producer(self.g.input(unsq, 0)?, "Gather")?;
        if self.g.op(gather).attr_int("axis").unwrap_or(0) != 0 {
            return None;
        }
        let idx = self.const_scalar(self.g.input(gather, 1)?)?;
        let shape = self.sole_producer(self.g.input(gather, 0)?, "Shape")?;
        let sop = self.g.op(shape);
        if sop.attr("start").is_some()
            || sop.attr("end").is_some()
            || self.g.input(shape, 0) != Some(x)
        {
            return None;
        }
        (idx >= 0.0).then_some(idx as usize)
    }

    /// ReshapeFusion on every Reshape of the copy that qualifies.
    pub(super) fn fuse_reshape_shapes(&mut self) -> Result<(), LintError> {
        for o in self.g.topo_order()? {
            let op = self.g.op(o);
            if op.op_type != "Reshape" || !op.domain_key().is_empty() {
                continue;
            }
            let (Some(x), Some(s)) = (self.g.input(o, 0), self.g.input(o, 1)) else {
                continue;
            };
            let Some(concat) = self.sole_producer(s, "Concat") else {
                continue;
            };
            if self.g.op(concat).attr_int("axis") != Some(0) {
                continue;
            }
            let parts = self.g.inputs_of(concat);
            let mut shape: Vec<i64> = Vec::new();
            let mut chains = 0;
            let mut ok = parts.len() >= 2;
            for v in &parts {
                let Some(v) = *v else {
                    ok = false;
                    break;
                };
                if let Some(i) = self.shape_chain(v, x) {
                    if i != shape.len() {
                        ok = false;
                        break;
                    }
                    shape.push(0);
                    chains += 1;
                } else if let Some(vals) = self
                    .is_const(v)
                    .then(|| self.konst(v))
                    .flatten()
                    .and_then(|t| t.to_f64_vec())
                {
                    shape.extend(vals.iter().map(|&d| d as i64));
                } else {
                    ok = false;
                    break;
                }
            }
            if !ok || chains == 0 {
                continue;
            }
            let n = shape.len();
            let t = Tensor::I64(ndarray::ArrayD::from_shape_vec(vec![n], shape).expect("1-D"));
            let what = "ONNX Runtime's ReshapeFusion replaces the shape computation of a \
                        Reshape by a constant";
            self.g.remove_op(concat);
            self.removed.insert(concat, what.to_string());
            self.folded.insert(s, Some(t));
            let mut gone = HashSet::new();
            for v in parts.into_iter().flatten() {
                self.remove_dead_from(v, &mut gone);
            }
            self.note(
                o,
                "ONNX Runtime computes its shape as a constant (ReshapeFusion), so its input \
                 has no other reader"
                    .to_string(),
            );
        }
        Ok(())
    }
}
