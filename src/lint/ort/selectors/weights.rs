//! Checks shared by the selectors of ops with a weight (Conv, MatMul, Gemm): int8
//! activations need the platform's signed kernels and int8 weights; and the warnings a
//! fused unit can carry (per-channel activation scales, a weight quantized along the wrong
//! axis, a bias whose scale is not `s_x · s_w` or whose zero point is not 0).

use super::{Selection, Sim};
use crate::ir::{DType, OpId};
use crate::lint::{is_q, Reason, Warning};

impl Sim<'_> {
    /// Conv/MatMul: int8 activations need the platform's s8s8 kernels and int8 weights.
    pub(super) fn int8_checks(
        &self,
        sel: &Selection,
        d_in: Option<DType>,
        d_w: Option<DType>,
    ) -> Result<(), Reason> {
        if d_in != Some(DType::I8) {
            return Ok(());
        }
        let (_, dq_x) = sel.dqs[0];
        if !self.int8_allowed {
            return Err(Reason::Int8Activation {
                value: self.dq_input_name(dq_x),
                detail: self.int8_detail(dq_x),
            });
        }
        if d_w != Some(DType::I8) {
            return Err(Reason::WeightNotInt8 {
                weight: sel
                    .dqs
                    .get(1)
                    .map(|d| self.dq_input_name(d.1))
                    .unwrap_or_default(),
                dtype: d_w.unwrap_or(DType::Other(0)),
            });
        }
        Ok(())
    }

    /// Why an int8 activation was not turned into uint8 on x86-64.
    fn int8_detail(&self, dq: OpId) -> String {
        let base = "ONNX Runtime runs int8 activations through Conv/MatMul only on arm64";
        let why = match self
            .g
            .input(dq, 0)
            .and_then(|x| self.g.producer(x))
            .map(|(p, _)| p)
        {
            Some(q) if is_q(&self.g, q) => {
                let (n, is_output) = match self.g.output(q, 0) {
                    Some(out) => (self.edges(out), self.g.is_output(out)),
                    None => (0, false),
                };
                if n != 1 || is_output {
                    format!(
                        "on x86-64 it converts an int8 Q/DQ pair to uint8 only when the \
                         QuantizeLinear feeds a single DequantizeLinear, and '{}' feeds {n}",
                        self.name(q)
                    )
                } else {
                    "on x86-64 it converts an int8 Q/DQ pair to uint8 only when both have the \
                     same constant scalar zero point"
                        .to_string()
                }
            }
            _ => {
                "on x86-64 it converts int8 to uint8 only for QuantizeLinear→DequantizeLinear pairs"
                    .to_string()
            }
        };
        format!("{base}; {why}")
    }

    /// Scale vector of a (non-synthetic) DQ with its axis attribute.
    fn dq_scales(&self, dq: OpId) -> Option<(Vec<f64>, i64)> {
        if self.synthetic.contains_key(&dq) {
            return None;
        }
        let s = self.g.input(dq, 1)?;
        let t = self.konst(s)?;
        Some((t.to_f64_vec()?, self.g.op(dq).attr_int("axis").unwrap_or(1)))
    }

    /// Correctness warnings for fused Conv (`kind` 0), MatMul (1) and Gemm (2).
    pub(super) fn warnings(&self, o: OpId, sel: &Selection, kind: u8) -> Vec<Warning> {
        let mut out = Vec::new();
        let (Some(&(_, dq_x)), Some(&(_, dq_w))) = (sel.dqs.first(), sel.dqs.get(1)) else {
            return out;
        };
        let sx = self.dq_scales(dq_x);
        if let Some((s, _)) = &sx {
            if s.len() > 1 {
                out.push(Warning::PerAxisActivation {
                    value: self.dq_input_name(dq_x),
                });
            }
        }
        let sw = self.dq_scales(dq_w);
        if let Some((s, axis)) = &sw {
            if s.len() > 1 {
                let rank = self
                    .g
                    .input(dq_w, 0)
                    .and_then(|w| self.dims(w))
                    .map(|d| d.len() as i64);
                let axis = match rank {
                    Some(r) if *axis < 0 => axis + r,
                    _ => *axis,
                };
                let expected = match kind {
                    0 => Some(0),
                    1 => rank.map(|r| r - 1),
                    _ => Some(if self.g.op(o).attr_int("transB").unwrap_or(0) == 1 {
                        0
                    } else {
                        1
                    }),
                };
                if let Some(e) = expected {
                    if axis != e {
                        out.push(Warning::WeightAxis {
                            weight: self.dq_input_name(dq_w),
                            axis,
                            expected: e,
                        });
                    }
                }
            }
        }
        if let (Some(&(_, dq_b)), Some((sx, _)), Some((sw, _))) = (sel.dqs.get(2), sx, sw) {
            if sx.len() == 1 {
                if let Some((sb, _)) = self.dq_scales(dq_b) {
                    let bias = self.dq_input_name(dq_b);
                    for (c, found) in sb.iter().enumerate() {
                        let w = if sw.len() == 1 {
                            sw[0]
                        } else {
                            sw.get(c).copied().unwrap_or(f64::NAN)
                        };
                        let expected = (sx[0] as f32 * w as f32) as f64;
                        let close = (found - expected).abs()
                            <= 1e-5 * expected.abs().max(f64::MIN_POSITIVE);
                        if !close {
                            out.push(Warning::BiasScale {
                                bias: bias.clone(),
                                channel: c,
                                expected,
                                found: *found,
                            });
                            break;
                        }
                    }
                    let zp_nonzero = self
                        .g
                        .input(dq_b, 2)
                        .and_then(|z| self.konst(z))
                        .and_then(|t| t.to_f64_vec())
                        .is_some_and(|v| v.iter().any(|x| *x != 0.0));
                    if zp_nonzero {
                        out.push(Warning::BiasZeroPoint { bias });
                    }
                }
            }
        }
        out
    }
}
