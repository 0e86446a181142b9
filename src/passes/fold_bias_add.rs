//! fold_bias_add — a per-channel constant `Add` after a Conv becomes the Conv's bias.
//!
//! **What it does.** `Add(Conv(x, w[, b]), c)` where `c` is a float constant holding one
//! value per output channel (shape `[C,1,1]`, `[1,C,1,1]`, …) or a single value, and the
//! Conv's output has no other reader: the Conv gets bias `b + c` and the Add goes. Some
//! exporters (PaddlePaddle) write every bias this way; left alone, the quantizer would
//! round the Conv output before the bias is added and quantize the bias as an activation.
//!
//! **Requires.** Constants as initializers (fold_constants). **Effects.** One op fewer
//! per fold; the new bias is named `<conv bias or conv>.biasfold`; readers of the Add's
//! output read the Conv's output. An Add whose output is a graph output stays.
//!
//! **Example.**
//! ```text
//! %c = Conv(%x, %w) : f32[1,2,4,4]
//! %y = Add(%c, %k) : f32[1,2,4,4]          ; k: f32[1,2,1,1]
//! ```
//! becomes `%c = Conv(%x, %w, %w.biasfold)` and readers of `%y` read `%c`.

use super::{Changed, Pass, PassCx, PassError};
use crate::ir::{ConstTensor, Graph, Model, OpId, Tensor};
use crate::quant::rules::Target;

const NAME: &str = "fold_bias_add";

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct FoldBiasAdd;

impl Pass for FoldBiasAdd {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "fold a per-channel constant Add after a Conv into the Conv's bias"
    }

    fn skip(&self, cx: &PassCx) -> Option<String> {
        (cx.target() == Some(Target::Tensorrt))
            .then(|| "target tensorrt: the Add stays as the model has it".to_string())
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        let n = fold_bias_adds(m)?;
        if n > 0 {
            cx.done
                .push(format!("{n} per-channel Add folded into Conv biases"));
        }
        Ok(Changed::from_bool(n > 0))
    }
}

/// Per-channel values of `t` for a Conv output of rank `rank` with `channels` channels.
fn per_channel(t: &ConstTensor, rank: usize, channels: usize) -> Option<Vec<f32>> {
    let Ok(Tensor::F32(a)) = t.to_tensor() else {
        return None;
    };
    let vals: Vec<f32> = a.iter().copied().collect();
    if vals.len() == 1 {
        return Some(vec![vals[0]; channels]);
    }
    let dims = &t.dims;
    if dims.len() > rank || rank < 2 || vals.len() != channels {
        return None;
    }
    // Right-aligned broadcasting: c's axis i is output axis rank - len + i.
    let offset = rank - dims.len();
    let ok = dims.iter().enumerate().all(|(i, &d)| {
        if offset + i == 1 {
            d as usize == channels
        } else {
            d == 1
        }
    });
    ok.then_some(vals)
}

fn try_fold(g: &mut Graph, add: OpId) -> Result<bool, PassError> {
    let ins = g.inputs_of(add);
    let (Some(a), Some(b)) = (
        ins.first().copied().flatten(),
        ins.get(1).copied().flatten(),
    ) else {
        return Ok(false);
    };
    let Some(y) = g.output(add, 0) else {
        return Ok(false);
    };
    if g.is_output(y) {
        return Ok(false);
    }
    for (x, k) in [(a, b), (b, a)] {
        let Some((conv, 0)) = g.producer(x) else {
            continue;
        };
        if g.op(conv).op_type != "Conv" || g.consumers(x).len() != 1 || g.is_output(x) {
            continue;
        }
        let Some(kc) = g.const_of(k).cloned() else {
            continue;
        };
        let Some(w) = g.input(conv, 1).and_then(|w| g.const_of(w).cloned()) else {
            continue;
        };
        let channels = *w.dims.first().unwrap_or(&0) as usize;
        let rank = g
            .value(x)
            .ty
            .as_ref()
            .and_then(|t| t.known_dims())
            .map(|d| d.len())
            .unwrap_or(w.dims.len());
        let Some(add_vals) = per_channel(&kc, rank, channels) else {
            continue;
        };
        let old_bias = g.input(conv, 2);
        let mut bias = match old_bias.and_then(|b| g.const_of(b)).map(|t| t.to_tensor()) {
            Some(Ok(Tensor::F32(a))) if a.len() == channels => a.iter().copied().collect(),
            Some(_) => continue,
            None if old_bias.is_some() => continue,
            None => vec![0f32; channels],
        };
        for (b, v) in bias.iter_mut().zip(&add_vals) {
            *b += v;
        }
        let base = match old_bias {
            Some(b) => g.value(b).name.clone(),
            None => g.value(g.input(conv, 1).expect("weight")).name.clone(),
        };
        let name = g.fresh_name(&format!("{base}.biasfold"));
        let t = Tensor::F32(ndarray::Array1::from(bias).into_dyn());
        let nb = g
            .add_const(&name, ConstTensor::from_tensor(None, &t))
            .map_err(|e| PassError {
                pass: NAME,
                what: e.to_string(),
            })?;
        g.set_input(conv, 2, Some(nb));
        g.replace_all_uses(y, x);
        g.remove_op_and_dead_outputs(add);
        return Ok(true);
    }
    Ok(false)
}

/// Folds every eligible Add in the main graph; returns how many.
pub fn fold_bias_adds(m: &mut Model) -> Result<usize, PassError> {
    let g = &mut m.graph;
    let adds: Vec<OpId> = g
        .topo_order()
        .map_err(|e| PassError {
            pass: NAME,
            what: e.to_string(),
        })?
        .into_iter()
        .filter(|o| g.op(*o).op_type == "Add" && g.op(*o).domain_key().is_empty())
        .collect();
    let mut n = 0;
    for a in adds {
        if try_fold(g, a)? {
            n += 1;
        }
    }
    if n > 0 {
        super::util::remove_dead(g);
    }
    Ok(n)
}
