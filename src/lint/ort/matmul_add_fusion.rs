//! Level 1, `MatMulAddFusion` (after constant folding, before Q/DQ propagation): a MatMul
//! whose output has one reader, an Add, and is no graph output becomes one Gemm with the
//! Add's other input as bias C, when both are float, the weight has rank 2 and the bias
//! broadcasts as Gemm's C does ([N], or for a rank-2 input [1, N], [M, 1], [M, N]). The
//! QDQ selectors then judge the Gemm, not the MatMul: a bias the runtime quantizes itself
//! (the Gemm's output leads to a QuantizeLinear) gives QGemm, a float bias otherwise keeps
//! the Gemm float. A MatMul whose input has another rank is fused only with a fully known
//! input shape (the runtime reshapes around the Gemm); the lint leaves that case unfused
//! and says so in a note.

use super::sim::Sim;
use crate::ir::{DType, Dim, Op, OpId, ValueId, ValueType};
use crate::lint::LintError;

impl Sim<'_> {
    /// A value's dims, symbolic ones included.
    fn sym_dims(&self, v: ValueId) -> Option<Vec<Dim>> {
        if let Some(d) = self.dims(v) {
            return Some(d.into_iter().map(Dim::Known).collect());
        }
        match &self.g.value(v).ty {
            Some(ValueType::Tensor {
                shape: Some(dims), ..
            }) => Some(dims.clone()),
            _ => None,
        }
    }

    /// MatMul + Add → Gemm, for every MatMul of the copy that qualifies.
    pub(super) fn fuse_matmul_add(&mut self) -> Result<(), LintError> {
        for o in self.g.topo_order()? {
            if self.gemm_of.contains_key(&o) {
                continue;
            }
            let Some((add, bias)) = self.matmul_add_target(o) else {
                continue;
            };
            let (a, b) = (self.g.input(o, 0), self.g.input(o, 1));
            let y = self.g.output(add, 0);
            let name = format!("{}/MatMulAddFusion", self.name(o));
            let (mm_name, add_name) = (self.name(o), self.name(add));
            let mut op = Op::new("Gemm", &name);
            op.order = self.g.order_before(o);
            self.g.remove_op(o);
            self.g.remove_op_and_dead_outputs(add);
            let gemm = self.g.add_op(op, &[a, b, Some(bias)], &[y])?;
            self.note(
                gemm,
                format!(
                    "ONNX Runtime fuses MatMul '{mm_name}' and its bias Add '{add_name}' into \
                     Gemm '{name}' before its QDQ fusions; the unit is that Gemm"
                ),
            );
            self.gemm_of.insert(o, gemm);
            self.gemm_of.insert(add, gemm);
        }
        Ok(())
    }

    /// `(Add, bias)` when MatMulAddFusion turns MatMul `o` and its Add into a Gemm.
    fn matmul_add_target(&mut self, o: OpId) -> Option<(OpId, ValueId)> {
        let op = self.g.op(o);
        if op.op_type != "MatMul" || !op.domain_key().is_empty() {
            return None;
        }
        let (add, slot) = self.single_edge(o)?;
        let add_op = self.g.op(add);
        if add_op.op_type != "Add" || !add_op.domain_key().is_empty() {
            return None;
        }
        let a = self.g.input(o, 0)?;
        let b = self.g.input(o, 1)?;
        let bias = self.g.input(add, 1 - slot.min(1))?;
        let ta = self.dtype(a)?;
        if !matches!(ta, DType::F32 | DType::F16 | DType::BF16)
            || self.g.input(add, 0).and_then(|v| self.dtype(v)) != Some(ta)
        {
            return None;
        }
        let ad = self.sym_dims(a)?;
        let bd = self.sym_dims(b)?;
        if bd.len() != 2 {
            return None;
        }
        let n = &bd[1];
        let cd = self.sym_dims(bias)?;
        let one = |d: &Dim| matches!(d, Dim::Known(1));
        if ad.len() != 2 {
            // The runtime fuses only with a fully known input shape (and not inside an
            // attention pattern); the lint does not model the Reshapes it adds then.
            if ad.iter().all(|d| matches!(d, Dim::Known(_))) && cd.len() == 1 && cd[0] == *n {
                self.note(
                    o,
                    "ONNX Runtime may fuse this MatMul (input of rank other than 2, fully \
                     known shape) with its bias Add into a Gemm between Reshapes; the lint \
                     does not model that"
                        .to_string(),
                );
            }
            return None;
        }
        let valid = (cd.len() == 1 && cd[0] == *n)
            || (cd.len() == 2 && one(&cd[0]) && cd[1] == *n)
            || (cd.len() == 2 && cd[0] == ad[0] && (one(&cd[1]) || cd[1] == *n));
        valid.then_some((add, bias))
    }
}
