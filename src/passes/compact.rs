//! compact — removes the bytes of a quantized model that change nothing it computes
//! (`Plan::compact`, set by `--size-budget`, where every byte of overhead is a byte the
//! weights lose).
//!
//! **What it does.** On the main graph, after the Q/DQ are inserted:
//! - a DequantizeLinear of a weight or a bias (its input is not a QuantizeLinear output)
//!   whose zero point is a constant of zeros loses that input: ONNX's default zero point
//!   is 0 of the input's type, so the values are the same;
//! - a bias DequantizeLinear (int32, read by a Conv/ConvTranspose/Gemm as its bias) whose
//!   scales are, bit for bit, the float32 products of the layer's input scale (a constant
//!   scalar) and weight scales reads them from `Mul(input scale, weight scale)` instead of
//!   a tensor of its own, where the tensor weighs more than the op (float32 multiplication
//!   is exact IEEE rounding, so every runtime computes the same scales; ONNX Runtime folds
//!   the Mul at load before it fuses the node unit);
//! - equal small constants (at most [`SHARED_LIMIT`] elements: shapes, bit weights, slice
//!   bounds of codebook unpacking) become one, read by all;
//! - the ops qrange added, QuantizeLinear/DequantizeLinear and the ops computing constants
//!   (codebook unpacking), lose their node names (optional in ONNX; the model's own ops keep
//!   theirs);
//! - values computed by ops lose the types shape inference gave them: the file lists in
//!   `value_info` only what the source model listed (graph inputs and outputs keep theirs;
//!   runtimes infer the rest).
//!
//! **Requires.** A materialised plan (runs after `insert_qdq` and its shape inference).
//! Skipped unless the plan asks for it.
//!
//! **Effects.** Fewer initializers and shorter names and value_info; one `Mul` per bias
//! whose scales it computes; nothing any runtime computes changes.
//!
//! **Example.**
//! ```text
//! %b.dq = DequantizeLinear(%b.q, %b.scale, %b.zp) {axis=0} : f32[64]
//! ```
//! becomes
//! ```text
//! %b.scale = Mul(%x.scale, %w.scale)
//! %b.dq = DequantizeLinear(%b.q, %b.scale) {axis=0}
//! ```

use super::util::{captured_by_subgraphs, remove_dead};
use super::{Changed, Pass, PassCx, PassError};
use crate::ir::{Graph, Model, Op, OpId, Tensor, ValueId};
use std::collections::{BTreeMap, BTreeSet};

/// Constants of at most this many elements are shared when equal.
pub const SHARED_LIMIT: usize = 64;

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Compact;

impl Pass for Compact {
    fn name(&self) -> &'static str {
        "compact"
    }

    fn description(&self) -> &'static str {
        "drop zero points of zero, computed bias scales, shared constants, names and value_info that buy nothing"
    }

    fn skip(&self, cx: &PassCx) -> Option<String> {
        match &cx.plan {
            Some(p) if p.compact => None,
            Some(_) => Some("the plan keeps every byte (no --size-budget)".to_string()),
            None => Some("no plan".to_string()),
        }
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        if !cx.plan.as_ref().is_some_and(|p| p.compact) {
            return Ok(Changed::No);
        }
        Ok(Changed::from_bool(compact(&mut m.graph)))
    }
}

/// Applies every rewrite of the module doc to `g` (the main graph); true when it changed.
pub fn compact(g: &mut Graph) -> bool {
    let captured = captured_by_subgraphs(g);
    let mut changed = drop_zero_points(g);
    changed |= computed_bias_scales(g, &captured);
    changed |= share_constants(g, &captured);
    changed |= remove_dead(g);
    changed |= drop_names(g);
    changed |= drop_inferred_types(g);
    changed
}

fn ops_of_type(g: &Graph, op_type: &str) -> Vec<OpId> {
    g.ops()
        .filter(|&o| {
            let op = g.op(o);
            op.op_type == op_type && op.domain_key().is_empty()
        })
        .collect()
}

fn small(g: &Graph, v: ValueId, limit: usize) -> Option<Tensor> {
    super::util::small_const(g, v, limit)
}

fn all_zero(t: &Tensor) -> bool {
    t.to_f64_vec().is_some_and(|v| v.iter().all(|&x| x == 0.0))
}

/// Zero points of zeros of DequantizeLinear ops that do not read a QuantizeLinear.
fn drop_zero_points(g: &mut Graph) -> bool {
    let mut changed = false;
    for o in ops_of_type(g, "DequantizeLinear") {
        let (Some(x), Some(z)) = (g.input(o, 0), g.input(o, 2)) else {
            continue;
        };
        let from_q = g
            .producer(x)
            .is_some_and(|(p, _)| g.op(p).op_type == "QuantizeLinear");
        if from_q || g.op(o).n_inputs != 3 {
            continue;
        }
        let Some(t) = g.const_of(z).and_then(|c| c.to_tensor().ok()) else {
            continue;
        };
        if !all_zero(&t) {
            continue;
        }
        g.set_input(o, 2, None);
        g.op_mut(o).n_inputs = 2;
        changed = true;
    }
    changed
}

/// The scale input of the DequantizeLinear producing `v`, when it is a constant.
fn dq_scale(g: &Graph, v: ValueId) -> Option<(ValueId, Vec<f32>)> {
    let (p, _) = g.producer(v)?;
    if g.op(p).op_type != "DequantizeLinear" {
        return None;
    }
    let s = g.input(p, 1)?;
    match g.const_of(s)?.to_tensor().ok()? {
        Tensor::F32(a) => Some((s, a.iter().copied().collect())),
        _ => None,
    }
}

/// Bias scales recomputed as `Mul(input scale, weight scales)` where exact and smaller.
fn computed_bias_scales(g: &mut Graph, captured: &BTreeSet<String>) -> bool {
    let mut changed = false;
    for o in ops_of_type(g, "DequantizeLinear") {
        let (Some(b), Some(sb), Some(out)) = (g.input(o, 0), g.input(o, 1), g.output(o, 0)) else {
            continue;
        };
        if g.const_of(b)
            .is_none_or(|c| c.dtype != crate::ir::DType::I32)
        {
            continue;
        }
        let readers = g.consumers(out);
        let [(layer, 2)] = readers.as_slice() else {
            continue;
        };
        let lop = g.op(*layer);
        if !matches!(lop.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm") {
            continue;
        }
        let (Some(x), Some(w)) = (g.input(*layer, 0), g.input(*layer, 1)) else {
            continue;
        };
        let (Some((sx, xs)), Some((sw, ws))) = (dq_scale(g, x), dq_scale(g, w)) else {
            continue;
        };
        if g.consumers(sb).len() != 1 || g.is_output(sb) || captured.contains(&g.value(sb).name) {
            continue;
        }
        let Some(Tensor::F32(bs)) = g.const_of(sb).and_then(|c| c.to_tensor().ok()) else {
            continue;
        };
        let [x0] = xs.as_slice() else {
            continue;
        };
        // One scale per output channel on both sides (a per-tensor bias scale is 4 bytes).
        let exact = bs.len() == ws.len() && bs.shape() == [ws.len()].as_slice();
        if !exact
            || !bs
                .iter()
                .zip(&ws)
                .all(|(b, w)| b.to_bits() == (x0 * w).to_bits())
        {
            continue;
        }
        // The tensor's data against the op's names (its output takes the tensor's name).
        let name = g.value(sb).name.clone();
        let op_bytes = g.value(sx).name.len() + g.value(sw).name.len() + name.len() + 16;
        if 4 * bs.len() <= op_bytes {
            continue;
        }
        let ty = g.value(sb).ty.clone();
        g.set_input(o, 1, None);
        g.remove_value(sb);
        let v = g.add_fresh_value(&name, ty);
        let mut mul = Op::new("Mul", "");
        mul.name = None;
        mul.order = g.order_before(o);
        if g.add_op(mul, &[Some(sx), Some(sw)], &[Some(v)]).is_err() {
            continue;
        }
        g.set_input(o, 1, Some(v));
        changed = true;
    }
    changed
}

/// Equal small constants read through one of them (the first by name).
fn share_constants(g: &mut Graph, captured: &BTreeSet<String>) -> bool {
    let mut first: BTreeMap<(String, Vec<usize>, Vec<u64>), ValueId> = BTreeMap::new();
    let mut consts: Vec<(String, ValueId)> = g
        .values()
        .filter(|&v| g.value(v).init.is_some())
        .map(|v| (g.value(v).name.clone(), v))
        .collect();
    consts.sort();
    let mut changed = false;
    for (name, v) in consts {
        if g.is_output(v) || g.is_input(v) || captured.contains(&name) {
            continue;
        }
        let Some(t) = small(g, v, SHARED_LIMIT) else {
            continue;
        };
        let Some(vals) = t.to_f64_vec() else {
            continue;
        };
        let key = (
            format!("{:?}", t.dtype()),
            t.shape(),
            vals.iter().map(|x| x.to_bits()).collect(),
        );
        match first.get(&key) {
            Some(&keep) => {
                g.replace_all_uses(v, keep);
                changed = true;
            }
            None => {
                first.insert(key, v);
            }
        }
    }
    changed
}

/// Node names of QuantizeLinear/DequantizeLinear ops and of ops whose inputs are all
/// constants or computed from constants only.
fn drop_names(g: &mut Graph) -> bool {
    let Ok(order) = g.topo_order() else {
        return false;
    };
    let mut constant: BTreeSet<ValueId> =
        g.values().filter(|&v| g.value(v).init.is_some()).collect();
    let mut changed = false;
    for o in order {
        let ins: Vec<ValueId> = g.inputs_of(o).into_iter().flatten().collect();
        let from_consts = !ins.is_empty() && ins.iter().all(|v| constant.contains(v));
        let op = g.op(o);
        let qdq = matches!(op.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear")
            && op.domain_key().is_empty();
        if from_consts && op.subgraphs().is_empty() {
            constant.extend(g.outputs_of(o).into_iter().flatten());
        }
        if (qdq || from_consts) && g.op(o).name.is_some() {
            g.op_mut(o).name = None;
            changed = true;
        }
    }
    changed
}

/// Types of op outputs the source model did not list (graph outputs keep theirs).
fn drop_inferred_types(g: &mut Graph) -> bool {
    let listed: BTreeSet<ValueId> = g.value_info.iter().copied().collect();
    let mut changed = false;
    let ops: Vec<OpId> = g.ops().collect();
    for o in ops {
        for v in g.outputs_of(o).into_iter().flatten() {
            if g.value(v).ty.is_some() && !listed.contains(&v) && !g.is_output(v) {
                g.value_mut(v).ty = None;
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto;
    use crate::passes::testkit::{
        attr_i, attr_ints, raw_tensor as raw, run, sample, tensor, Builder,
    };

    fn f32s(name: &str, dims: &[i64], v: &[f32]) -> proto::TensorProto {
        raw(
            name,
            1,
            dims,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// A quantized Conv as `insert_qdq` writes it: u8 input Q/DQ, int8 weight per channel
    /// with zero points of zero, int32 bias whose scales are `s_x · s_w`, and a small
    /// reshape target computed twice.
    fn quantized_conv(c: usize) -> Model {
        let (sx, sw): (f32, Vec<f32>) = (0.02, (0..c).map(|i| 0.001 * (i + 1) as f32).collect());
        let sb: Vec<f32> = sw.iter().map(|w| sx * w).collect();
        let w: Vec<u8> = (0..c * 4 * 9).map(|i| ((i * 37) % 255) as u8).collect();
        let b: Vec<u8> = (0..c as i32)
            .flat_map(|i| (i * 100 - 700).to_le_bytes())
            .collect();
        let mut m = Builder::new(21);
        m.tensor(raw("w.q", 3, &[c as i64, 4, 3, 3], w))
            .tensor(f32s("w.scale", &[c as i64], &sw))
            .tensor(raw("w.zp", 3, &[c as i64], vec![0; c]))
            .tensor(raw("b.q", 6, &[c as i64], b))
            .tensor(f32s("b.scale", &[c as i64], &sb))
            .tensor(raw("b.zp", 6, &[c as i64], vec![0; 4 * c]))
            .tensor(f32s("x.scale", &[], &[sx]))
            .tensor(raw("x.zp", 2, &[], vec![128]))
            .tensor(raw(
                "shape.a",
                7,
                &[2],
                [1i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
            .tensor(raw(
                "shape.b",
                7,
                &[2],
                [1i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
            .input("x", 1, Some(&[1, 4, 6, 6]))
            .node(
                "QuantizeLinear",
                "x.quantize",
                &["x", "x.scale", "x.zp"],
                &["x.q"],
                vec![],
            )
            .node(
                "DequantizeLinear",
                "x.dequantize",
                &["x.q", "x.scale", "x.zp"],
                &["x.dq"],
                vec![],
            )
            .node(
                "DequantizeLinear",
                "w.dequantize",
                &["w.q", "w.scale", "w.zp"],
                &["w.dq"],
                vec![attr_i("axis", 0)],
            )
            .node(
                "DequantizeLinear",
                "b.dequantize",
                &["b.q", "b.scale", "b.zp"],
                &["b.dq"],
                vec![attr_i("axis", 0)],
            )
            .node(
                "Conv",
                "conv",
                &["x.dq", "w.dq", "b.dq"],
                &["y"],
                vec![attr_ints("pads", &[1, 1, 1, 1])],
            )
            .node("Reshape", "flat_a", &["y", "shape.a"], &["ya"], vec![])
            .node("Reshape", "flat_b", &["y", "shape.b"], &["yb"], vec![])
            .output("ya", 1, Some(&[1, (c * 36) as i64]))
            .output("yb", 1, Some(&[1, (c * 36) as i64]));
        let mut model = m.model();
        crate::passes::InferShapes
            .run(&mut model, &mut PassCx::default())
            .unwrap();
        model
    }

    #[test]
    fn compact_drops_only_bytes_that_change_nothing_computed() {
        let c = 32;
        let before = quantized_conv(c);
        let mut after = before.clone();
        assert!(compact(&mut after.graph));
        after.verify().unwrap();
        let g = &after.graph;
        let by_type = |t: &str| -> Vec<OpId> { ops_of_type(g, t) };
        // Weight and bias DQs lose their zero points; the activation DQ keeps its own.
        for o in by_type("DequantizeLinear") {
            let from_q = g
                .producer(g.input(o, 0).unwrap())
                .is_some_and(|(p, _)| g.op(p).op_type == "QuantizeLinear");
            assert_eq!(g.input(o, 2).is_some(), from_q, "{:?}", g.op(o));
        }
        // The bias scales are computed from the input and weight scales.
        let mul = by_type("Mul");
        assert_eq!(mul.len(), 1);
        let names: Vec<&str> = g
            .inputs_of(mul[0])
            .into_iter()
            .map(|v| g.value(v.unwrap()).name.as_str())
            .collect();
        assert_eq!(names, ["x.scale", "w.scale"]);
        assert!(g.value_by_name("b.zp").is_none() && g.value_by_name("w.zp").is_none());
        // The equal reshape targets are one constant.
        assert_eq!(
            g.value_by_name("shape.a").is_some() as u8 + g.value_by_name("shape.b").is_some() as u8,
            1
        );
        // Q/DQ nodes are unnamed, the model's own ops keep their names; only the graph
        // outputs keep types among computed values.
        for o in g.ops() {
            let op = g.op(o);
            let added = matches!(
                op.op_type.as_str(),
                "QuantizeLinear" | "DequantizeLinear" | "Mul"
            );
            assert_eq!(op.name.is_none(), added, "{op:?}");
            for v in g.outputs_of(o).into_iter().flatten() {
                assert_eq!(
                    g.value(v).ty.is_some(),
                    g.is_output(v),
                    "{}",
                    g.value(v).name
                );
            }
        }
        // Same outputs, bit for bit, in a smaller file.
        let s = sample(&[("x", tensor(7, &[1, 4, 6, 6]))]);
        assert_eq!(run(&before, &s), run(&after, &s));
        assert!(crate::onnx::encoded_size(&after) < crate::onnx::encoded_size(&before));
    }

    #[test]
    fn bias_scales_that_are_not_the_exact_products_stay_tensors() {
        let mut m = quantized_conv(32);
        let g = &mut m.graph;
        let sb = g.value_by_name("b.scale").unwrap();
        let t = g.value(sb).init.unwrap();
        let mut vals: Vec<f32> = (0..32).map(|i| 0.02 * 0.001 * (i + 1) as f32).collect();
        vals[5] = f32::from_bits(vals[5].to_bits() + 1);
        g.tensor_mut(t).data = crate::ir::ConstTensor::from_tensor(
            None,
            &Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[32]), vals).unwrap()),
        )
        .data;
        compact(g);
        assert!(ops_of_type(g, "Mul").is_empty());
        assert!(g
            .value_by_name("b.scale")
            .is_some_and(|v| g.value(v).init.is_some()));
    }
}
