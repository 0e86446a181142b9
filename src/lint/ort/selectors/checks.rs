//! What every QDQ selector checks (`NodeGroupSelector`, `CheckQDQNodes`,
//! `CanCreateNodeGroup`, `IsQDQPairSupported`): the DQs into a unit and the Qs after it
//! (through a Relu/Clip the Q makes redundant), each DQ read by the unit alone, every
//! output quantized and no graph output, matching integer types, no 16-bit or 4-bit type
//! where the kernel takes none.

use super::{Selection, Sim};
use crate::ir::{DType, OpId, ValueId};
use crate::lint::Reason;

fn is_16bit(d: Option<DType>) -> bool {
    matches!(d, Some(DType::U16 | DType::I16))
}

pub(super) fn is_4bit(d: Option<DType>) -> bool {
    matches!(d, Some(DType::U4 | DType::I4))
}

fn dt(d: Option<DType>) -> String {
    d.map(|d| d.to_string()).unwrap_or_else(|| "unknown".into())
}

impl Sim<'_> {
    pub(super) fn selection(&self, o: OpId) -> Result<Selection, Reason> {
        let dqs: Vec<(usize, OpId)> = self
            .g
            .inputs_of(o)
            .into_iter()
            .enumerate()
            .filter_map(|(slot, v)| {
                let (p, _) = self.g.producer(v?)?;
                (self.g.op(p).op_type == "DequantizeLinear").then_some((slot, p))
            })
            .collect();
        let q_children = |n: OpId| -> Vec<OpId> {
            self.g
                .outputs_of(n)
                .into_iter()
                .flatten()
                .flat_map(|v| self.g.consumers(v))
                .map(|(c, _)| c)
                .filter(|c| self.g.op(*c).op_type == "QuantizeLinear")
                .collect()
        };
        let out_edges: Vec<(OpId, usize)> = self
            .g
            .outputs_of(o)
            .into_iter()
            .flatten()
            .flat_map(|v| self.g.consumers(v))
            .collect();
        let mut clip = None;
        if out_edges.len() == 1 {
            let next = out_edges[0].0;
            if matches!(self.g.op(next).op_type.as_str(), "Relu" | "Clip") {
                let outs: Vec<ValueId> = self.g.outputs_of(next).into_iter().flatten().collect();
                let n_edges: usize = outs.iter().map(|v| self.edges(*v)).sum();
                if n_edges == 1 && !outs.iter().any(|v| self.g.is_output(*v)) {
                    clip = Some(next);
                }
            }
        }
        let qs = q_children(clip.unwrap_or(o));
        if let Some(c) = clip {
            if qs.len() != 1 {
                return Err(Reason::MissingOutputQ {
                    value: self.first_output(o),
                    note: Some(format!(
                        "{} '{}' follows it, with no QuantizeLinear after",
                        self.g.op(c).op_type,
                        self.name(c)
                    )),
                });
            }
            if !self.q_makes_redundant(c, qs[0]) {
                return Err(Reason::ActivationBetween {
                    node: self.name(c),
                    op_type: self.g.op(c).op_type.clone(),
                });
            }
        }
        Ok(Selection { dqs, qs, clip })
    }

    /// The first existing input slot (of `slots`) that no DQ feeds.
    pub(super) fn missing_dq(&self, o: OpId, sel: &Selection, slots: &[usize]) -> Reason {
        let inputs = self.g.inputs_of(o);
        for &s in slots {
            let Some(Some(v)) = inputs.get(s) else {
                continue;
            };
            if sel.dqs.iter().all(|(ds, _)| *ds != s) {
                let op_type = &self.g.op(o).op_type;
                let note = if matches!(op_type.as_str(), "Conv" | "Gemm") && s >= 1 {
                    let what = if s == 1 { "weight" } else { "bias" };
                    if self.is_initializer(*v) {
                        Some(format!(
                            "ONNX Runtime quantizes a float {what} itself only when input 0 is \
                             dequantized per tensor and the output leads to a QuantizeLinear"
                        ))
                    } else {
                        None
                    }
                } else {
                    None
                };
                return Reason::MissingInputDq {
                    slot: s,
                    value: self.vname(*v),
                    note,
                };
            }
        }
        Reason::UnexpectedDq {
            count: sel.dqs.len(),
            expected: slots.len(),
        }
    }

    /// `CheckQDQNodes` + `CanCreateNodeGroup`. `slots`: the inputs that need a DQ
    /// (`None` = every existing input).
    pub(super) fn check_qdq_nodes(
        &self,
        o: OpId,
        sel: &Selection,
        slots: Option<&[usize]>,
        allow_empty_q: bool,
    ) -> Result<(), Reason> {
        let inputs = self.g.inputs_of(o);
        let all: Vec<usize> = (0..inputs.len()).filter(|s| inputs[*s].is_some()).collect();
        let slots = slots.unwrap_or(&all);
        if sel.dqs.len() != slots.len() {
            if sel.dqs.len() < slots.len() {
                return Err(self.missing_dq(o, sel, slots));
            }
            return Err(Reason::UnexpectedDq {
                count: sel.dqs.len(),
                expected: slots.len(),
            });
        }
        for (_, dq) in &sel.dqs {
            let Some(out) = self.g.output(*dq, 0) else {
                return Err(Reason::SharedDq { dq: self.name(*dq) });
            };
            let edges = self.g.consumers(out);
            if self.g.is_output(out) || edges.len() != 1 || edges[0].0 != o {
                return Err(Reason::SharedDq { dq: self.name(*dq) });
            }
        }
        let producer = sel.clip.unwrap_or(o);
        if !sel.qs.is_empty() {
            for v in self.g.outputs_of(producer).into_iter().flatten() {
                let cons = self.g.consumers(v);
                let nq = cons
                    .iter()
                    .filter(|(c, _)| self.g.op(*c).op_type == "QuantizeLinear")
                    .count();
                if nq > 0 && nq != cons.len() {
                    return Err(Reason::MixedConsumers {
                        value: self.vname(v),
                    });
                }
                if nq > 0 && self.g.is_output(v) {
                    return Err(Reason::GraphOutput {
                        value: self.vname(v),
                    });
                }
            }
        }
        let outs: Vec<ValueId> = self.g.outputs_of(o).into_iter().flatten().collect();
        if sel.qs.is_empty() {
            if allow_empty_q {
                return Ok(());
            }
            let v = outs.first().copied();
            return Err(Reason::MissingOutputQ {
                value: v.map(|v| self.vname(v)).unwrap_or_default(),
                note: None,
            });
        }
        if let Some(v) = outs.iter().find(|v| self.g.is_output(**v)) {
            return Err(Reason::GraphOutput {
                value: self.vname(*v),
            });
        }
        let edge_count: usize = outs.iter().map(|v| self.edges(*v)).sum();
        if outs.len() != sel.qs.len() || sel.qs.len() != edge_count {
            for v in &outs {
                let cons = self.g.consumers(*v);
                let has_q = cons
                    .iter()
                    .any(|(c, _)| self.g.op(*c).op_type == "QuantizeLinear");
                if !has_q && sel.clip.is_none() {
                    return Err(Reason::MissingOutputQ {
                        value: self.vname(*v),
                        note: None,
                    });
                }
            }
            return Err(Reason::MixedConsumers {
                value: outs.first().map(|v| self.vname(*v)).unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// `IsQDQPairSupported`: both have zero points, all four parameters are constant
    /// scalars, and Q's equal DQ's.
    pub(super) fn pair_supported(&self, q: OpId, dq: OpId) -> Result<(), Reason> {
        for n in [dq, q] {
            if self.g.input(n, 2).is_none() {
                return Err(Reason::MissingZeroPoint { node: self.name(n) });
            }
        }
        let params = |n: OpId| -> Option<(f64, f64, DType)> {
            let s = self.g.input(n, 1)?;
            let z = self.g.input(n, 2)?;
            let zt = self.konst(z)?;
            if !self.is_scalar(z) {
                return None;
            }
            Some((
                self.const_scalar(s)?,
                *zt.to_f64_vec()?.first()?,
                zt.dtype(),
            ))
        };
        let (Some(a), Some(b)) = (params(dq), params(q)) else {
            let bad = if params(dq).is_none() { dq } else { q };
            return Err(Reason::QParamsNotConstantScalar {
                node: self.name(bad),
            });
        };
        if a != b {
            let show = |p: (f64, f64, DType)| format!("scale {} zero point {} {}", p.0, p.2, p.1);
            return Err(Reason::QParamsDiffer {
                input: show(a),
                output: show(b),
            });
        }
        Ok(())
    }

    pub(super) fn type_checks(&self, d: Option<DType>, allow_16bit: bool) -> Result<(), Reason> {
        if !allow_16bit && is_16bit(d) {
            return Err(Reason::SixteenBit {
                dtype: d.expect("16-bit"),
            });
        }
        if is_4bit(d) {
            return Err(Reason::FourBit {
                dtype: d.expect("4-bit"),
            });
        }
        Ok(())
    }

    pub(super) fn mismatch(&self, what: &[(&str, Option<DType>)]) -> Result<(), Reason> {
        let first = what[0].1;
        if what.iter().all(|(_, d)| *d == first) {
            return Ok(());
        }
        Err(Reason::TypeMismatch {
            detail: what
                .iter()
                .map(|(n, d)| format!("{n} {}", dt(*d)))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}
