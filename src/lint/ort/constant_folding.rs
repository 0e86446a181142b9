//! Level 1, `ConstantFolding`: a deterministic node whose inputs are all constant
//! (DequantizeLinear excepted) becomes initializers, and so does `Shape` of a value whose
//! dims are known; nodes left without readers go with it. Values qrange can compute keep
//! their value (later steps read folded scales and zero points).

use super::sim::Sim;
use crate::ir::{eval, OpId, Tensor, ValueId};
use crate::lint::LintError;
use std::collections::HashSet;

impl Sim<'_> {
    /// ConstantFolding: a deterministic node whose inputs are all constant (DequantizeLinear
    /// excepted) becomes initializers, and so does `Shape` of a value whose dims are known;
    /// nodes left without readers are removed with it.
    pub(super) fn constant_fold(&mut self) -> Result<(), LintError> {
        const RANDOM: &[&str] = &[
            "Bernoulli",
            "Multinomial",
            "RandomNormal",
            "RandomNormalLike",
            "RandomUniform",
            "RandomUniformLike",
        ];
        let mut gone: HashSet<OpId> = HashSet::new();
        for o in self.g.topo_order()? {
            if gone.contains(&o) {
                continue;
            }
            let op = self.g.op(o);
            if op.op_type == "DequantizeLinear"
                || !matches!(op.domain_key(), "" | "com.microsoft")
                || RANDOM.contains(&op.op_type.as_str())
                || !op.subgraphs().is_empty()
            {
                continue;
            }
            let inputs = self.g.inputs_of(o);
            let outs = self.g.outputs_of(o);
            let values: Option<Vec<Tensor>> = if op.op_type == "Shape" {
                let Some(dims) = inputs
                    .first()
                    .copied()
                    .flatten()
                    .and_then(|x| self.g.value(x).ty.as_ref().and_then(|t| t.known_dims()))
                else {
                    continue;
                };
                eval::shape_from_dims(op, &dims).ok().map(|t| vec![t])
            } else {
                if !inputs.iter().flatten().all(|v| self.is_const(*v)) {
                    continue;
                }
                if op.op_type == "Constant" {
                    eval::constant_value(op).ok().map(|t| vec![t])
                } else if eval::supports(op) {
                    let vals: Vec<Option<Tensor>> = inputs
                        .iter()
                        .map(|v| v.and_then(|v| self.konst(v)))
                        .collect();
                    if vals
                        .iter()
                        .zip(&inputs)
                        .all(|(t, v)| t.is_some() || v.is_none())
                    {
                        let refs: Vec<Option<&Tensor>> = vals.iter().map(|t| t.as_ref()).collect();
                        eval::eval(op, &refs, self.opset, 1 << 16).ok()
                    } else {
                        None
                    }
                } else {
                    None
                }
            };
            let what = op.op_type.clone();
            self.g.remove_op(o);
            gone.insert(o);
            self.removed.insert(
                o,
                format!("ONNX Runtime folds this {what} into a constant (its inputs are constant)"),
            );
            for (i, v) in outs.iter().enumerate() {
                if let Some(v) = v {
                    let t = values.as_ref().and_then(|vals| vals.get(i).cloned());
                    self.folded.insert(*v, t);
                }
            }
            for x in inputs.into_iter().flatten() {
                self.remove_dead_from(x, &mut gone);
            }
        }
        Ok(())
    }

    /// Removes the producer of `v` (and upwards) when nothing reads its outputs any more.
    pub(super) fn remove_dead_from(&mut self, v: ValueId, gone: &mut HashSet<OpId>) {
        let Some((p, _)) = self.g.producer(v) else {
            return;
        };
        let outs: Vec<ValueId> = self.g.outputs_of(p).into_iter().flatten().collect();
        if outs
            .iter()
            .any(|o| self.g.is_output(*o) || !self.g.consumers(*o).is_empty())
        {
            return;
        }
        let inputs: Vec<ValueId> = self.g.inputs_of(p).into_iter().flatten().collect();
        let what = self.g.op(p).op_type.clone();
        self.g.remove_op(p);
        gone.insert(p);
        self.removed.entry(p).or_insert_with(|| {
            format!("ONNX Runtime removes this {what}: only a constant-folded node read it")
        });
        for x in inputs {
            self.remove_dead_from(x, gone);
        }
    }
}
