//! The QDQ selectors of ONNX Runtime's CPU provider (`qdq_selectors.cc`,
//! `qdq_selector_action_transformer.cc`), run last, unit by unit: the rule an op type is
//! fused by ([`rule_for`]), and under it the unit's verdict, the kernel it fuses to or the
//! first check it fails. One file per selector; `checks` holds what they all check and
//! `weights` what Conv, MatMul and Gemm share.

mod binary;
mod checks;
mod conv;
mod drop_qdq;
mod gemm;
mod matmul;
mod split;
mod unary;
mod variadic;
mod weights;
mod where_op;

use super::sim::Sim;
use crate::ir::{DType, Op, OpId};
use crate::lint::{since_version, Reason, Verdict, Warning};

/// The QDQ rule ONNX Runtime's CPU provider applies to an op type.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    /// DQ → op → Q with equal constant parameters: the pair is dropped.
    Drop {
        allow_16bit: bool,
        positive_scale: bool,
    },
    /// DQ → op: the DQ is dropped (ArgMax).
    DropDq,
    /// DQ → Split → Q per output, all with the input's parameters.
    Split,
    Unary(&'static str),
    Binary(&'static str),
    Concat,
    Conv,
    MatMul,
    Gemm,
    Where,
}

fn rule_for(op: &Op, opset: i64) -> Result<Rule, Reason> {
    if !op.domain_key().is_empty() {
        return Err(Reason::NoKernel {
            op_type: op.op_type.clone(),
            domain: op.domain_key().to_string(),
        });
    }
    let drop = |allow_16bit, positive_scale| Rule::Drop {
        allow_16bit,
        positive_scale,
    };
    Ok(match op.op_type.as_str() {
        "Expand" | "Flatten" | "Gather" | "GatherElements" | "Reshape" | "Slice" | "Squeeze"
        | "Tile" | "Transpose" | "Unsqueeze" | "DepthToSpace" => drop(true, false),
        "MaxPool" => match since_version("MaxPool", opset) {
            Some(v) if v >= 12 => drop(false, true),
            v => {
                return Err(Reason::OpsetVersion {
                    op_type: op.op_type.clone(),
                    since: v.unwrap_or(opset),
                })
            }
        },
        "ReduceMax" | "ReduceMin" => drop(false, true),
        "Resize" => drop(false, false),
        "ArgMax" => Rule::DropDq,
        "Split" => Rule::Split,
        "AveragePool" => Rule::Unary("QLinearAveragePool"),
        "GlobalAveragePool" => Rule::Unary("QLinearGlobalAveragePool"),
        "LeakyRelu" => Rule::Unary("QLinearLeakyRelu"),
        "Sigmoid" => Rule::Unary("QLinearSigmoid"),
        "Softmax" => Rule::Unary("QLinearSoftmax"),
        "Add" => Rule::Binary("QLinearAdd"),
        "Mul" => Rule::Binary("QLinearMul"),
        "Concat" => Rule::Concat,
        "Conv" => Rule::Conv,
        "MatMul" => Rule::MatMul,
        "Gemm" => Rule::Gemm,
        "Where" => Rule::Where,
        _ => {
            return Err(Reason::NoKernel {
                op_type: op.op_type.clone(),
                domain: String::new(),
            })
        }
    })
}

/// The DQs and Qs around a unit, as ONNX Runtime's selectors find them.
struct Selection {
    /// (input slot, DequantizeLinear) in slot order.
    dqs: Vec<(usize, OpId)>,
    /// QuantizeLinear consumers of the op's (or the absorbed Relu/Clip's) outputs.
    qs: Vec<OpId>,
    /// A Relu/Clip between the op and its Q that the Q makes redundant.
    clip: Option<OpId>,
}

/// A unit's verdict with its warnings and the Relu/Clip it absorbs, or the first rule it
/// breaks.
type Outcome = Result<(Verdict, Vec<Warning>, Option<OpId>), Reason>;

fn fused(kernel: &str) -> Verdict {
    Verdict::Fused {
        kernel: kernel.to_string(),
    }
}

impl Sim<'_> {
    /// The verdict for unit `o`: the fused kernel (with warnings and an absorbed
    /// Relu/Clip), or the first rule it breaks.
    pub(super) fn verdict(&self, o: OpId) -> Outcome {
        let op = self.g.op(o);
        let rule = rule_for(op, self.opset)?;
        let sel = self.selection(o)?;
        match rule {
            Rule::Drop {
                allow_16bit,
                positive_scale,
            } => self.drop_qdq(o, &sel, allow_16bit, positive_scale),
            Rule::DropDq => self.drop_dq(o, &sel),
            Rule::Split => self.split(o, &sel),
            Rule::Unary(kernel) => self.unary(o, &sel, kernel),
            Rule::Binary(kernel) => self.binary(o, &sel, kernel),
            Rule::Concat => self.variadic(o, &sel),
            Rule::Where => self.where_op(o, &sel),
            Rule::Conv => self.conv(o, &sel),
            Rule::MatMul => self.matmul_or_nbits(o, &sel),
            Rule::Gemm => self.gemm(o, &sel),
        }
    }

    /// Integer type the `i`-th DQ of the selection reads.
    fn dq_dt(&self, sel: &Selection, i: usize) -> Option<DType> {
        sel.dqs.get(i).and_then(|(_, d)| self.dq_in_dtype(*d))
    }

    /// Integer type the `i`-th Q of the selection writes.
    fn q_dt(&self, sel: &Selection, i: usize) -> Option<DType> {
        sel.qs.get(i).and_then(|q| self.q_out_dtype(*q))
    }

    /// Rules that take no Relu/Clip between the op and its Q.
    fn no_clip(&self, sel: &Selection) -> Result<(), Reason> {
        match sel.clip {
            Some(c) => Err(Reason::ActivationBetween {
                node: self.name(c),
                op_type: self.g.op(c).op_type.clone(),
            }),
            None => Ok(()),
        }
    }
}
