//! Level 2, `ReluQuantFusion` and `ClipQuantFusion`: a Relu or Clip whose only reader is
//! a QuantizeLinear that already clips the same way is removed. The same test decides
//! whether a QDQ selector may absorb a Relu/Clip between an op and its Q.

use super::sim::Sim;
use crate::ir::{DType, OpId, ValueId};
use crate::lint::LintError;

/// The lowest value of an integer type, for "zero point clips at zero" checks.
fn type_min_max(d: DType) -> Option<(i64, i64)> {
    Some(match d {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        DType::I16 => (-32768, 32767),
        DType::U16 => (0, 65535),
        _ => return None,
    })
}

impl Sim<'_> {
    /// `[min, max]` of a Clip from its inputs (opset ≥ 11) or attributes.
    fn clip_bounds(&self, o: OpId) -> Option<(f64, f64)> {
        let op = self.g.op(o);
        let mut lo = f32::MIN as f64;
        let mut hi = f32::MAX as f64;
        if let Some(v) = op.attr_float("min") {
            lo = v as f64;
        }
        if let Some(v) = op.attr_float("max") {
            hi = v as f64;
        }
        if let Some(m) = self.g.input(o, 1) {
            lo = *self.konst(m)?.to_f64_vec()?.first()?;
        }
        if let Some(m) = self.g.input(o, 2) {
            hi = *self.konst(m)?.to_f64_vec()?.first()?;
        }
        Some((lo, hi))
    }

    /// A rank-0 constant (ONNX Runtime reads these Q parameters only as rank 0).
    fn rank0(&self, v: ValueId) -> Option<(f64, DType)> {
        let t = self.konst(v)?;
        if !t.shape().is_empty() {
            return None;
        }
        Some((*t.to_f64_vec()?.first()?, t.dtype()))
    }

    /// True when Q's range already clips like the Relu/Clip `act` before it.
    pub(super) fn q_makes_redundant(&self, act: OpId, q: OpId) -> bool {
        let Some(s) = self.g.input(q, 1) else {
            return false;
        };
        let Some((scale, sdt)) = self.rank0(s) else {
            return false;
        };
        if sdt != DType::F32 {
            return false;
        }
        let (zp, zdt) = match self.g.input(q, 2) {
            Some(z) => match self.rank0(z) {
                Some(p) => p,
                None => return false,
            },
            None => (0.0, self.q_out_dtype(q).unwrap_or(DType::U8)),
        };
        let Some((tmin, tmax)) = type_min_max(zdt) else {
            return false;
        };
        match self.g.op(act).op_type.as_str() {
            "Relu" => zp as i64 == tmin,
            "Clip" => {
                let Some((lo, hi)) = self.clip_bounds(act) else {
                    return false;
                };
                let qlo = (lo / scale).round_ties_even() + zp;
                let qhi = (hi / scale).round_ties_even() + zp;
                qlo <= tmin as f64 && qhi >= tmax as f64
            }
            _ => false,
        }
    }

    /// ReluQuantFusion / ClipQuantFusion: a Relu or Clip whose only reader is a
    /// QuantizeLinear that already clips the same way is removed.
    pub(super) fn remove_clipping_activations(&mut self) -> Result<(), LintError> {
        for o in self.g.topo_order()? {
            let op = self.g.op(o);
            if !op.domain_key().is_empty() || !matches!(op.op_type.as_str(), "Relu" | "Clip") {
                continue;
            }
            let Some((q, _)) = self.single_edge(o) else {
                continue;
            };
            if !self.is_onnx_q(q) || self.g.input(q, 2).is_none() {
                continue;
            }
            let remove = if op.op_type == "Relu" {
                let z = self.g.input(q, 2).expect("checked");
                match (self.konst(z), self.dtype(z)) {
                    (Some(t), Some(d)) if t.len() == 1 => {
                        let zp = t.to_f64_vec().and_then(|v| v.first().copied());
                        type_min_max(d).is_some_and(|(lo, _)| zp == Some(lo as f64))
                    }
                    _ => false,
                }
            } else {
                self.clip_removable(o, q)
            };
            if !remove {
                continue;
            }
            let (Some(x), Some(y)) = (self.g.input(o, 0), self.g.output(o, 0)) else {
                continue;
            };
            let qn = self.name(q);
            let what = self.g.op(o).op_type.clone();
            self.g.replace_all_uses(y, x);
            self.g.remove_op_and_dead_outputs(o);
            self.removed.insert(
                o,
                format!(
                    "ONNX Runtime removes this {what}: QuantizeLinear '{qn}' already clips to the same range"
                ),
            );
        }
        Ok(())
    }

    fn clip_removable(&self, clip: OpId, q: OpId) -> bool {
        let (Some(s), Some(z)) = (self.g.input(q, 1), self.g.input(q, 2)) else {
            return false;
        };
        let (Some((scale, sdt)), Some((zp, zdt))) = (self.rank0(s), self.rank0(z)) else {
            return false;
        };
        if sdt != DType::F32 {
            return false;
        }
        let Some((lo, hi)) = self.clip_bounds(clip) else {
            return false;
        };
        match zdt {
            DType::I8 | DType::U8 => {
                let (tmin, tmax) = type_min_max(zdt).expect("8-bit");
                let lower = scale * (tmin as f64 - zp);
                let upper = scale * (tmax as f64 - zp);
                let eps = f32::EPSILON as f64;
                !(eps < lo - lower || eps < upper - hi)
            }
            _ => self.q_makes_redundant(clip, q),
        }
    }
}
