//! Level 1, `MatMulAddFusion` (after constant folding, before Q/DQ propagation): a MatMul
//! whose output has one reader, an Add, and is no graph output becomes one Gemm with the
//! Add's other input as bias C, when both are float, the weight has rank 2 and the bias
//! broadcasts as Gemm's C does ([N], or for a rank-2 input [1, N], [M, 1], [M, N]). The
//! QDQ selectors then judge the Gemm, not the MatMul: a bias the runtime quantizes itself
//! (the Gemm's output leads to a QuantizeLinear) gives QGemm, a float bias otherwise keeps
//! the Gemm float. A MatMul whose input has another rank is fused only with a fully known
//! input shape (the runtime reshapes around the Gemm); the lint leaves that case unfused
//! and says so in a note. The conditions are stated once, in
//! [`crate::quant::gemm_fusion::matmul_add`], which the static plan reads too.

use super::sim::Sim;
use crate::ir::{Dim, Op, OpId, ValueId, ValueType};
use crate::lint::LintError;
use crate::quant::gemm_fusion::{matmul_add, MatMulAdd};

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

    /// `(Add, bias)` when MatMulAddFusion turns MatMul `o` and its Add into a Gemm, by
    /// the conditions of [`crate::quant::gemm_fusion::matmul_add`] on the copy's types and
    /// dims; a MatMul the runtime may fuse between Reshapes gets a note.
    fn matmul_add_target(&mut self, o: OpId) -> Option<(OpId, ValueId)> {
        let verdict = matmul_add(&self.g, o, |v| self.dtype(v), |v| self.sym_dims(v));
        match verdict {
            MatMulAdd::Gemm { add, bias } => Some((add, bias)),
            MatMulAdd::Reshaped => {
                // The runtime fuses only with a fully known input shape (and not inside an
                // attention pattern); the lint does not model the Reshapes it adds then.
                self.note(
                    o,
                    "ONNX Runtime may fuse this MatMul (input of rank other than 2, fully \
                     known shape) with its bias Add into a Gemm between Reshapes; the lint \
                     does not model that"
                        .to_string(),
                );
                None
            }
            MatMulAdd::No => None,
        }
    }
}
