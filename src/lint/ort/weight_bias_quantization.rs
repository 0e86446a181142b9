//! Level 1, `WeightBiasQuantization`: float weight/bias initializers of Conv,
//! ConvTranspose and Gemm become int8/int32 + DequantizeLinear when input 0 is
//! dequantized per tensor and the output leads to a QuantizeLinear. The DQs it adds are
//! *synthetic*: they stand for the runtime's own quantization, with the type they read.

use super::sim::Sim;
use crate::ir::{DType, Op, OpId, ValueId};
use crate::lint::LintError;
use std::collections::BTreeSet;

impl Sim<'_> {
    /// `IsNoBranchPathToQuantizeLinear`: the output leads, through Relu/Clip only and
    /// without branching, to a QuantizeLinear.
    fn no_branch_path_to_q(&self, o: OpId) -> bool {
        let mut cur = o;
        loop {
            if self.g.op(cur).n_outputs != 1 {
                return false;
            }
            let Some(v) = self.g.output(cur, 0) else {
                return false;
            };
            let consumers: BTreeSet<OpId> =
                self.g.consumers(v).into_iter().map(|(c, _)| c).collect();
            if consumers.len() != 1 {
                return false;
            }
            let c = *consumers.iter().next().expect("one consumer");
            match self.g.op(c).op_type.as_str() {
                "QuantizeLinear" => return true,
                "Relu" | "Clip" => cur = c,
                _ => return false,
            }
        }
    }

    fn add_synthetic_dq(&mut self, o: OpId, slot: usize, dtype: DType) -> Result<(), LintError> {
        let v = self.g.input(o, slot).expect("slot has a value");
        let base = format!("{}_dq", self.vname(v));
        let ty = self.g.value(v).ty.clone();
        let nv = self.g.add_fresh_value(&base, ty);
        let mut op = Op::new("DequantizeLinear", &base);
        op.order = self.g.order_before(o);
        let dq = self.g.add_op(op, &[Some(v)], &[Some(nv)])?;
        self.synthetic.insert(dq, dtype);
        self.g.set_input(o, slot, Some(nv));
        Ok(())
    }

    /// WeightBiasQuantization: float weight/bias initializers of Conv, ConvTranspose and
    /// Gemm become int8/int32 + DQ when input 0 is dequantized per tensor and the output
    /// leads to a QuantizeLinear.
    pub(super) fn quantize_weights_and_biases(&mut self) -> Result<(), LintError> {
        for o in self.g.topo_order()? {
            let Some(weight_dq) = self.weight_bias_target(o) else {
                continue;
            };
            let w = self.g.input(o, 1).expect("target has a weight");
            if weight_dq.is_none() {
                let wn = self.vname(w);
                self.add_synthetic_dq(o, 1, DType::I8)?;
                self.note(
                    o,
                    format!("ONNX Runtime quantizes the float weight '{wn}' to int8 itself"),
                );
            }
            if let Some(b) = self.g.input(o, 2) {
                let bn = self.vname(b);
                self.add_synthetic_dq(o, 2, DType::I32)?;
                self.note(
                    o,
                    format!("ONNX Runtime quantizes the float bias '{bn}' to int32 itself"),
                );
            }
        }
        Ok(())
    }

    /// When the transformation applies to `o`: `Some` with the weight's DequantizeLinear
    /// (`None` for a float weight initializer).
    fn weight_bias_target(&self, o: OpId) -> Option<Option<OpId>> {
        let op_type = self.g.op(o).op_type.as_str();
        if !matches!(op_type, "Conv" | "ConvTranspose" | "Gemm") {
            return None;
        }
        let (Some(x), Some(w)) = (self.g.input(o, 0), self.g.input(o, 1)) else {
            return None;
        };
        let bias = self.g.input(o, 2);
        let (p0, _) = self.g.producer(x)?;
        if self.g.op(p0).op_type != "DequantizeLinear"
            || !self.g.input(p0, 1).is_some_and(|s| self.is_scalar(s))
        {
            return None;
        }
        if !self.no_branch_path_to_q(o) {
            return None;
        }
        let dq1 = self
            .g
            .producer(w)
            .map(|(p, _)| p)
            .filter(|p| self.g.op(*p).op_type == "DequantizeLinear");
        if dq1.is_none() && !(self.is_initializer(w) && self.dtype(w) == Some(DType::F32)) {
            return None;
        }
        let bias_size = match bias {
            Some(b) => {
                let dims = self.dims(b);
                if !self.is_initializer(b) || dims.as_ref().is_none_or(|d| d.len() != 1) {
                    return None;
                }
                Some(dims.expect("checked")[0])
            }
            None => None,
        };
        if dq1.is_some() && bias_size.is_none() {
            return None;
        }
        if let Some(d) = dq1 {
            let scale = self.g.input(d, 1);
            if !scale.is_some_and(|s| self.is_scalar(s))
                && !self.per_channel_weight_fits(o, d, w, bias_size)
            {
                return None;
            }
        }
        Some(dq1)
    }

    /// A weight DQ `d` with a scale vector: one scale per bias element, not blocked, along
    /// the output-channel axis (0; for Gemm 1 unless `transB`).
    fn per_channel_weight_fits(
        &self,
        o: OpId,
        d: OpId,
        w: ValueId,
        bias_size: Option<i64>,
    ) -> bool {
        let sdims = self.g.input(d, 1).and_then(|s| self.dims(s));
        if sdims.as_deref() != Some(&[bias_size.unwrap_or(-1)][..]) {
            return false;
        }
        if self.g.op(d).attr_int("block_size").unwrap_or(0) != 0 {
            return false;
        }
        let mut axis = self.g.op(d).attr_int("axis").unwrap_or(1);
        if axis < 0 {
            let rank = self
                .dims(w)
                .or_else(|| self.g.input(d, 0).and_then(|x| self.dims(x)))
                .map(|d| d.len() as i64);
            match rank {
                Some(r) => axis += r,
                None => return false,
            }
        }
        let expected = if self.g.op(o).op_type == "Gemm" {
            if self.g.op(o).attr_int("transB").unwrap_or(0) == 0 {
                1
            } else {
                0
            }
        } else {
            0
        };
        axis == expected
    }
}
