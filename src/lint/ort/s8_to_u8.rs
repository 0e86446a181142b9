//! Level 2, `QDQS8ToU8Transformer` (x86-64 only): an int8 QuantizeLinear whose only
//! reader is a DequantizeLinear, both with the same constant int8 zero point, is read as
//! uint8 (ONNX Runtime's x86-64 kernels take uint8 activations).

use super::sim::Sim;
use crate::ir::DType;
use crate::lint::{is_dq, is_q, LintError};

impl Sim<'_> {
    /// QDQS8ToU8Transformer (x86-64): an int8 Q whose only reader is a DQ, both with the
    /// same constant int8 zero point, becomes uint8.
    pub(super) fn convert_s8_pairs(&mut self) -> Result<(), LintError> {
        for q in self.g.topo_order()? {
            if !is_q(&self.g, q) {
                continue;
            }
            let Some((dq, _)) = self.single_edge(q) else {
                continue;
            };
            if !is_dq(&self.g, dq) {
                continue;
            }
            let (Some(qz), Some(dz)) = (self.g.input(q, 2), self.g.input(dq, 2)) else {
                continue;
            };
            let (Some(a), Some(b)) = (self.konst(qz), self.konst(dz)) else {
                continue;
            };
            if a.len() != 1 || b.len() != 1 || a.dtype() != DType::I8 || b.dtype() != DType::I8 {
                continue;
            }
            if a.to_f64_vec() != b.to_f64_vec() {
                continue;
            }
            self.to_u8.insert(q);
            self.to_u8.insert(dq);
        }
        Ok(())
    }
}
