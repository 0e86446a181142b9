//! Level 1, ONNX Runtime's rewrite rules that delete no-op nodes (`EliminateIdentity`,
//! `EliminateDropout`, `CastElimination`, `EliminateSlice`): an Identity, a Dropout whose
//! mask nobody reads, a Cast to the type its input already has, a Slice of the whole
//! tensor. Readers of the output read the input instead; the op is recorded as removed.
//! An Identity writing a graph output goes too when its input has no other reader.

use super::sim::Sim;
use crate::ir::{DType, OpId};
use crate::lint::since_version;

impl Sim<'_> {
    /// Why ONNX Runtime's level-1 rewrite rules delete `o`, if they do: Identity,
    /// inference Dropout, a Cast to the type it already has, a Slice of everything.
    fn noop(&self, o: OpId) -> Option<String> {
        let op = self.g.op(o);
        if !op.domain_key().is_empty() {
            return None;
        }
        let ints = |slot: usize| -> Option<Vec<i64>> {
            let v = self.g.input(o, slot)?;
            if !self.is_const(v) {
                return None;
            }
            self.konst(v)?.to_i64_vec()
        };
        match op.op_type.as_str() {
            "Identity" => Some("ONNX Runtime removes Identity nodes".into()),
            "Dropout" => self
                .g
                .output(o, 1)
                .is_none_or(|m| self.g.consumers(m).is_empty() && !self.g.is_output(m))
                .then(|| "ONNX Runtime removes Dropout nodes at inference".into()),
            "Cast" => {
                let to = op.attr_int("to")?;
                let x = self.g.input(o, 0)?;
                (self.dtype(x)? == DType::from_onnx(to as i32)).then(|| {
                    "ONNX Runtime removes this Cast: its input has that type already".into()
                })
            }
            "Slice" => {
                let since = since_version("Slice", self.opset)?;
                let (starts, ends) = if since == 1 {
                    (
                        op.attr_ints("starts")?.to_vec(),
                        op.attr_ints("ends")?.to_vec(),
                    )
                } else {
                    let (s, e) = (ints(1)?, ints(2)?);
                    if let Some(a) = self.g.input(o, 3) {
                        let axes = ints(3)?;
                        if self.dims(a).map(|d| d.len()) != Some(1) || axes.len() != s.len() {
                            return None;
                        }
                        if self.g.input(o, 4).is_some() {
                            let steps = ints(4)?;
                            if steps.len() != s.len() || steps.iter().any(|x| *x != 1) {
                                return None;
                            }
                        }
                    }
                    (s, e)
                };
                (!starts.is_empty()
                    && starts.len() == ends.len()
                    && starts
                        .iter()
                        .zip(&ends)
                        .all(|(s, e)| *s == 0 && *e == i64::MAX))
                .then(|| "ONNX Runtime removes this Slice: it keeps the whole tensor".into())
            }
            _ => None,
        }
    }

    /// ONNX Runtime's level-1 rewrite rules that delete no-op nodes. A no-op writing a
    /// graph output stays, except an Identity whose input is computed by a node for it
    /// alone (no other reader, no graph output): that node then writes the graph output
    /// itself (EliminateIdentity's relaxed condition).
    pub(super) fn eliminate_noops(&mut self) {
        let cands: Vec<(OpId, String)> = self
            .g
            .ops()
            .filter_map(|o| self.noop(o).map(|why| (o, why)))
            .collect();
        for (o, why) in cands {
            let (Some(x), Some(y)) = (self.g.input(o, 0), self.g.output(o, 0)) else {
                continue;
            };
            let into_output = self.g.op(o).op_type == "Identity"
                && self.g.outputs_of(o).len() == 1
                && self.g.producer(x).is_some()
                && !self.g.is_output(x)
                && self.g.consumers(x).len() == 1;
            if self.g.is_output(y) && !into_output {
                continue;
            }
            self.g.replace_all_uses(y, x);
            self.g.remove_op_and_dead_outputs(o);
            self.removed.insert(o, why);
        }
    }
}
