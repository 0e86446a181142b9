//! `fold_batchnorm`: folds inference-form BatchNormalization into the Conv, ConvTranspose or
//! Gemm that feeds it.
//!
//! # What it does
//! For every default-domain `BatchNormalization` whose parameters (`scale`, `B`, `mean`,
//! `var`) are constants and whose input `X` is the only use of the output of a `Conv`,
//! `ConvTranspose` or `Gemm` with constant weights (and constant bias, when it has one), the
//! normalization is written into the producer, per output channel `o`:
//!
//! ```text
//! k[o]  = scale[o] / sqrt(var[o] + epsilon)
//! w'    = w * k[o]                      (every weight of output channel o)
//! b'[o] = (b[o] - mean[o]) * k[o] + B[o]  (b = 0 when the producer has no bias)
//! ```
//!
//! The output channel of a weight is axis 0 for `Conv` (`[M, C/group, k…]`), for
//! `ConvTranspose` (`[C, M/group, k…]`) it is `g * (M/group) + j` for a weight at `[c, j, …]`
//! in group `g = c / (C/group)`, and for `Gemm` it is the column of `op(B)` (`transB` aware);
//! a `Gemm` bias `C` must be a scalar or end in the channel dimension, and `beta` is folded
//! into it (the new `beta` is 1). Arithmetic is done in f64 and stored in the weight's type
//! (f32 or f64).
//!
//! A BatchNormalization that does not fit (parameters or weights computed at run time, the
//! producer's output used elsewhere, a graph output, or read by a subgraph, `spatial=0`,
//! `training_mode=1`, training outputs in use, shapes that do not line up) stays as it is.
//! Subgraphs (If/Loop/Scan bodies) are folded too, with their own constants.
//!
//! # Requires
//! Nothing. Constants are initializers of the same graph that are not graph inputs, or
//! outputs of `Constant` nodes; initializers held in external data that has not been loaded
//! do not count as constants.
//!
//! # Effects
//! Removes each folded BatchNormalization; its producer now writes the normalization's output
//! value (name and type kept) and reads new constants named after the old ones with a
//! `.bnfold` suffix (`conv1.w.bnfold`; the bias is named after the producer's bias, or after the
//! normalization's `B` when the producer had none). Constants (initializers or `Constant`
//! nodes) left unused are removed. The producer's old output value disappears. Value types are
//! unchanged; ranges recorded for the removed values are invalid.
//!
//! # Example
//! ```text
//! before:
//! const  %conv.w: f32[4,3,3,3] = tensor(sha=16d39df6, min=-9.9285e-1, max=9.8572e-1)
//! const  %bn.scale: f32[4] = [6.7879e-1, 5.3568e-1, 7.1769e-1, 1.0018e0]
//! const  %bn.bias: f32[4] = [8.6494e-2, -4.2128e-1, -3.0066e-1, 4.1367e-1]
//! const  %bn.mean: f32[4] = [2.9652e-1, -2.2695e-1, -1.9141e-1, -1.0471e-1]
//! const  %bn.var: f32[4] = [5.2153e-1, 3.3183e-1, 3.3010e-1, 7.8985e-1]
//! %c = Conv(%x, %conv.w) {kernel_shape=[3,3], pads=[1,1,1,1]} : ?
//! %y = BatchNormalization(%c, %bn.scale, %bn.bias, %bn.mean, %bn.var) {epsilon=1.0000e-3} : ?
//! %r = Relu(%y) : f32[1,4,8,8]
//! after:
//! const  %conv.w.bnfold: f32[4,3,3,3] = tensor(sha=959c07c2, min=-1.1546e0, max=1.1983e0)
//! const  %bn.bias.bnfold: f32[4] = [-1.9195e-1, -2.1055e-1, -6.1928e-2, 5.3163e-1]
//! %y = Conv(%x, %conv.w.bnfold, %bn.bias.bnfold) {kernel_shape=[3,3], pads=[1,1,1,1]} : ?
//! %r = Relu(%y) : f32[1,4,8,8]
//! ```
//!
//! On `fixtures/ppocr_cls` all 35 BatchNormalization nodes fold (every one follows a Conv).

use super::{Changed, Pass, PassCx, PassError};
use crate::ir::{AttrValue, ConstTensor, DType, Graph, Model, OpId, Tensor, ValueId};
use crate::quant::rules::Target;
use std::collections::{BTreeSet, HashSet};

/// The pass; see the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct FoldBatchNorm;

const NAME: &str = "fold_batchnorm";

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "fold inference BatchNormalization into the preceding Conv/ConvTranspose/Gemm weights"
    }

    fn skip(&self, cx: &PassCx) -> Option<String> {
        (cx.target() == Some(Target::Tensorrt))
            .then(|| "target tensorrt: TensorRT folds BatchNormalization itself".to_string())
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        let n = fold_graph(&mut m.graph)?;
        if n > 0 {
            cx.done.push(format!(
                "{n} BatchNormalization folded into their producers"
            ));
        }
        Ok(Changed::from_bool(n > 0))
    }
}

/// Folds every foldable BatchNormalization of `m` (main graph and subgraphs) and returns how
/// many were folded.
pub fn fold_batchnorms(m: &mut Model) -> Result<usize, PassError> {
    fold_graph(&mut m.graph)
}

fn err(what: String) -> PassError {
    PassError { pass: NAME, what }
}

fn fold_graph(g: &mut Graph) -> Result<usize, PassError> {
    let mut n = 0;
    let ops: Vec<OpId> = g.ops().collect();
    for o in ops {
        for sg in g.op_mut(o).subgraphs_mut() {
            n += fold_graph(sg)?;
        }
    }
    let captured = captured_names(g);
    let order = g.topo_order().map_err(|e| err(e.to_string()))?;
    for bn in order {
        let op = g.op(bn);
        if op.op_type != "BatchNormalization" || !op.domain_key().is_empty() {
            continue;
        }
        if let Some(plan) = plan(g, bn, &captured) {
            apply(g, plan)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Names of values of `g` read by its subgraphs (outer-scope captures).
fn captured_names(g: &Graph) -> HashSet<String> {
    let mut out = HashSet::new();
    for o in g.ops() {
        for (_, sg) in g.op(o).subgraphs() {
            out.extend(sg.captures());
        }
    }
    out
}

/// The value of `v` when it is a constant of `g`: an initializer that is not a graph input
/// (a caller could override those), or the output of a default-domain `Constant` node.
fn const_value(g: &Graph, v: ValueId) -> Option<Tensor> {
    if let Some(t) = g.const_of(v) {
        if g.is_input(v) {
            return None;
        }
        return t.to_tensor().ok();
    }
    let (p, _) = g.producer(v)?;
    let op = g.op(p);
    if op.op_type != "Constant" || !op.domain_key().is_empty() {
        return None;
    }
    match op.attr("value")? {
        AttrValue::Tensor(t) => t.to_tensor().ok(),
        _ => None,
    }
}

/// Which producer, and how its weights map to output channels.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Conv,
    ConvTranspose { group: usize },
    Gemm { trans_b: bool, beta: f64 },
}

struct Plan {
    bn: OpId,
    producer: OpId,
    kind: Kind,
    /// Producer input slots 0 (data) and weights, bias (if any).
    x: Option<ValueId>,
    w: ValueId,
    b: Option<ValueId>,
    w_val: Tensor,
    b_val: Option<Tensor>,
    /// Per-channel multiplier and new bias.
    k: Vec<f64>,
    shift: Vec<f64>,
    mean: Vec<f64>,
    bn_b: ValueId,
    bn_params: Vec<ValueId>,
}

/// Checks everything and computes the fold, or `None` when this BatchNormalization stays.
fn plan(g: &Graph, bn: OpId, captured: &HashSet<String>) -> Option<Plan> {
    let op = g.op(bn);
    if op.attr_int("spatial") == Some(0) || op.attr_int("training_mode").unwrap_or(0) != 0 {
        return None;
    }
    let eps = op.attr_float("epsilon").unwrap_or(1e-5) as f64;
    // Only Y may be in use.
    for v in g.outputs_of(bn).into_iter().skip(1).flatten() {
        if !g.consumers(v).is_empty() || g.is_output(v) || captured.contains(&g.value(v).name) {
            return None;
        }
    }
    let ins = g.inputs_of(bn);
    if ins.len() != 5 || ins.iter().any(Option::is_none) {
        return None;
    }
    let [x, scale, bias, mean, var] = [ins[0]?, ins[1]?, ins[2]?, ins[3]?, ins[4]?];
    let c = x;
    let (producer, slot) = g.producer(c)?;
    let pop = g.op(producer);
    if slot != 0
        || !pop.domain_key().is_empty()
        || g.consumers(c).len() != 1
        || g.is_output(c)
        || captured.contains(&g.value(c).name)
    {
        return None;
    }
    let kind = match pop.op_type.as_str() {
        "Conv" => Kind::Conv,
        "ConvTranspose" => Kind::ConvTranspose {
            group: usize::try_from(pop.attr_int("group").unwrap_or(1)).ok()?,
        },
        "Gemm" => Kind::Gemm {
            trans_b: pop.attr_int("transB").unwrap_or(0) != 0,
            beta: pop.attr_float("beta").unwrap_or(1.0) as f64,
        },
        _ => return None,
    };
    let pins = g.inputs_of(producer);
    let w = (*pins.get(1)?)?;
    let b = pins.get(2).copied().flatten();
    let w_val = const_value(g, w)?;
    if !matches!(w_val.dtype(), DType::F32 | DType::F64) {
        return None;
    }
    let b_val = match b {
        Some(b) => {
            let t = const_value(g, b)?;
            if t.dtype() != w_val.dtype() {
                return None;
            }
            Some(t)
        }
        None => None,
    };
    let wshape = w_val.shape();
    let channels = match kind {
        Kind::Conv => *wshape.first().filter(|_| wshape.len() >= 3)?,
        Kind::ConvTranspose { group } => {
            if wshape.len() < 3 || group == 0 || wshape[0] % group != 0 {
                return None;
            }
            wshape[1] * group
        }
        Kind::Gemm { trans_b, .. } => {
            if wshape.len() != 2 {
                return None;
            }
            if trans_b {
                wshape[0]
            } else {
                wshape[1]
            }
        }
    };
    let vec1 = |v: ValueId| -> Option<Vec<f64>> {
        let t = const_value(g, v)?;
        if !t.dtype().is_float() || t.shape() != [channels] {
            return None;
        }
        t.to_f64_vec()
    };
    let (s, bb, m, vv) = (vec1(scale)?, vec1(bias)?, vec1(mean)?, vec1(var)?);
    if let Some(bv) = &b_val {
        let ok = match kind {
            Kind::Conv | Kind::ConvTranspose { .. } => bv.shape() == [channels],
            // scalar, [1], or ending in the channel dimension
            Kind::Gemm { .. } => {
                bv.len() == 1 || bv.shape().last() == Some(&channels) && bv.shape().len() <= 2
            }
        };
        if !ok {
            return None;
        }
    }
    let mut k = Vec::with_capacity(channels);
    for o in 0..channels {
        let d = (vv[o] + eps).sqrt();
        if !d.is_finite() || d == 0.0 {
            return None;
        }
        k.push(s[o] / d);
    }
    Some(Plan {
        bn,
        producer,
        kind,
        x: pins.first().copied().flatten(),
        w,
        b,
        w_val,
        b_val,
        shift: bb,
        k,
        mean: m,
        bn_b: bias,
        bn_params: vec![scale, bias, mean, var],
    })
}

/// Output channel of each weight element, in row-major order.
fn weight_channels(kind: Kind, shape: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    match kind {
        Kind::Conv => {
            let inner: usize = shape[1..].iter().product();
            (0..n).map(|i| i / inner.max(1)).collect()
        }
        Kind::ConvTranspose { group } => {
            let rest: usize = shape[2..].iter().product();
            let per_group_in = shape[0] / group;
            (0..n)
                .map(|i| {
                    let c = i / (shape[1] * rest).max(1);
                    let j = (i / rest.max(1)) % shape[1];
                    (c / per_group_in) * shape[1] + j
                })
                .collect()
        }
        Kind::Gemm { trans_b, .. } => {
            if trans_b {
                (0..n).map(|i| i / shape[1].max(1)).collect()
            } else {
                (0..n).map(|i| i % shape[1].max(1)).collect()
            }
        }
    }
}

fn apply(g: &mut Graph, p: Plan) -> Result<(), PassError> {
    let dtype = p.w_val.dtype();
    let build = |shape: &[usize], vals: Vec<f64>| -> Result<Tensor, PassError> {
        Tensor::from_f64(dtype, shape, &vals).map_err(err)
    };
    // weights
    let wshape = p.w_val.shape();
    let wv = p.w_val.to_f64_vec().expect("float weights");
    let chans = weight_channels(p.kind, &wshape);
    let new_w: Vec<f64> = wv.iter().zip(&chans).map(|(w, &o)| w * p.k[o]).collect();
    let new_w = build(&wshape, new_w)?;
    // bias: b' = (beta*b - mean) * k + B
    let channels = p.k.len();
    let (bshape, new_b) = match &p.b_val {
        None => (
            vec![channels],
            (0..channels)
                .map(|o| -p.mean[o] * p.k[o] + p.shift[o])
                .collect::<Vec<f64>>(),
        ),
        Some(bt) => {
            let bv = bt.to_f64_vec().expect("float bias");
            let beta = match p.kind {
                Kind::Gemm { beta, .. } => beta,
                _ => 1.0,
            };
            if bv.len() == 1 && channels != 1 || bt.shape().is_empty() {
                // a broadcast scalar becomes one value per channel
                (
                    vec![channels],
                    (0..channels)
                        .map(|o| (beta * bv[0] - p.mean[o]) * p.k[o] + p.shift[o])
                        .collect(),
                )
            } else {
                (
                    bt.shape(),
                    bv.iter()
                        .enumerate()
                        .map(|(i, b)| {
                            let o = i % channels;
                            (beta * b - p.mean[o]) * p.k[o] + p.shift[o]
                        })
                        .collect(),
                )
            }
        }
    };
    let new_b = build(&bshape, new_b)?;

    let w_name = g.fresh_name(&format!("{}.bnfold", g.value(p.w).name));
    let b_base = match p.b {
        Some(b) => g.value(b).name.clone(),
        None => g.value(p.bn_b).name.clone(),
    };
    let b_name = g.fresh_name(&format!("{b_base}.bnfold"));
    let w_id = g
        .add_const(&w_name, ConstTensor::from_tensor(None, &new_w))
        .map_err(|e| err(e.to_string()))?;
    let b_id = g
        .add_const(&b_name, ConstTensor::from_tensor(None, &new_b))
        .map_err(|e| err(e.to_string()))?;

    // Rewire: the producer now writes the normalization's output.
    let y = g.output(p.bn, 0).expect("BatchNormalization has an output");
    let c = g.output(p.producer, 0).expect("producer output");
    let mut ins = g.inputs_of(p.producer);
    let bn_outs: Vec<ValueId> = g.outputs_of(p.bn).into_iter().skip(1).flatten().collect();
    g.remove_op(p.bn);
    let mut op = g.remove_op(p.producer);
    if let Kind::Gemm { .. } = p.kind {
        // beta went into the new bias; alpha stays and scales the new weights as before
        op.set_attr("beta", AttrValue::Float(1.0));
    }
    if g.value(y).ty.is_none() {
        let ty = g.value(c).ty.clone();
        g.value_mut(y).ty = ty;
    }
    g.remove_value(c);
    for v in bn_outs {
        g.remove_value(v);
    }
    ins.resize(3.max(ins.len()), None);
    ins[0] = p.x;
    ins[1] = Some(w_id);
    ins[2] = Some(b_id);
    g.add_op(op, &ins, &[Some(y)])
        .map_err(|e| err(e.to_string()))?;

    // Constants left unused go.
    let captured = captured_names(g);
    let mut dead: BTreeSet<ValueId> = p.bn_params.into_iter().collect();
    dead.insert(p.w);
    dead.extend(p.b);
    for v in dead {
        remove_if_dead(g, v, &captured);
    }
    Ok(())
}

/// Removes a constant value (initializer or `Constant` output) nobody reads any more.
fn remove_if_dead(g: &mut Graph, v: ValueId, captured: &HashSet<String>) {
    if !g.consumers(v).is_empty()
        || g.is_output(v)
        || g.is_input(v)
        || captured.contains(&g.value(v).name)
    {
        return;
    }
    if g.value(v).init.is_some() {
        g.remove_value(v);
    } else if let Some((p, _)) = g.producer(v) {
        if g.op(p).op_type == "Constant" {
            g.remove_op_and_dead_outputs(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::dump::dump_model;
    use crate::passes::testkit::*;
    use std::collections::BTreeMap;

    /// Adds BatchNormalization parameters `<p>.scale/.bias/.mean/.var` for `c` channels.
    fn bn_params(b: &mut Builder, p: &str, c: i64, seed: u64) {
        b.init(&format!("{p}.scale"), &[c], seed, 0.5, 1.0)
            .init(&format!("{p}.bias"), &[c], seed + 1, 0.5, 0.0)
            .init(&format!("{p}.mean"), &[c], seed + 2, 0.3, 0.0)
            .init(&format!("{p}.var"), &[c], seed + 3, 0.4, 0.6);
    }

    fn bn_inputs(x: &str, p: &str) -> Vec<String> {
        vec![
            x.to_string(),
            format!("{p}.scale"),
            format!("{p}.bias"),
            format!("{p}.mean"),
            format!("{p}.var"),
        ]
    }

    fn bn(b: &mut Builder, name: &str, x: &str, y: &str, eps: f32) {
        let ins = bn_inputs(x, name);
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        b.node(
            "BatchNormalization",
            name,
            &ins,
            &[y],
            vec![attr_f("epsilon", eps)],
        );
    }

    /// Runs the pass; checks verify() and that outputs match on `sample`. Returns the
    /// before/after dumps and the number of folds.
    fn check(mut m: Model, sample: &BTreeMap<String, Tensor>) -> (String, String, usize) {
        let before = dump_model(&m);
        let out_before = run(&m, sample);
        let n = fold_batchnorms(&mut m).unwrap();
        m.verify().unwrap();
        let after = dump_model(&m);
        let out_after = run(&m, sample);
        assert_close(&out_before, &out_after, 1e-5);
        (before, after, n)
    }

    fn snapshot(before: &str, after: &str) -> String {
        format!("--- before\n{before}--- after\n{after}")
    }

    #[test]
    fn conv_without_bias() {
        let mut b = Builder::new(13);
        b.input("x", 1, Some(&[1, 3, 8, 8]))
            .output("r", 1, Some(&[1, 4, 8, 8]))
            .init("conv.w", &[4, 3, 3, 3], 1, 1.0, 0.0);
        bn_params(&mut b, "bn", 4, 10);
        b.node(
            "Conv",
            "conv",
            &["x", "conv.w"],
            &["c"],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        );
        bn(&mut b, "bn", "c", "y", 1e-3);
        b.node("Relu", "relu", &["y"], &["r"], vec![]);
        let s = sample(&[("x", tensor(5, &[1, 3, 8, 8]))]);
        let (before, after, n) = check(b.model(), &s);
        assert_eq!(n, 1);
        assert!(!after.contains("BatchNormalization"));
        insta::assert_snapshot!(snapshot(&before, &after));
    }

    #[test]
    fn depthwise_conv_with_bias_and_graph_output() {
        // BN output is the graph output: its name must survive.
        let mut b = Builder::new(11);
        b.input("x", 1, Some(&[1, 4, 6, 6]))
            .output("y", 1, Some(&[1, 4, 6, 6]))
            .init("dw.w", &[4, 1, 3, 3], 2, 1.0, 0.0)
            .init("dw.b", &[4], 3, 1.0, 0.0);
        bn_params(&mut b, "bn", 4, 20);
        b.node(
            "Conv",
            "dw",
            &["x", "dw.w", "dw.b"],
            &["c"],
            vec![attr_i("group", 4), attr_ints("pads", &[1, 1, 1, 1])],
        );
        bn(&mut b, "bn", "c", "y", 1e-5);
        let s = sample(&[("x", tensor(6, &[1, 4, 6, 6]))]);
        let (before, after, n) = check(b.model(), &s);
        assert_eq!(n, 1);
        insta::assert_snapshot!(snapshot(&before, &after));
    }

    #[test]
    fn conv_transpose_with_groups() {
        // W: [C=4, M/group=3, 2, 2], group 2 → 6 output channels.
        let mut b = Builder::new(13);
        b.input("x", 1, Some(&[1, 4, 5, 5]))
            .output("y", 1, Some(&[1, 6, 10, 10]))
            .init("up.w", &[4, 3, 2, 2], 4, 1.0, 0.0);
        bn_params(&mut b, "bn", 6, 30);
        b.node(
            "ConvTranspose",
            "up",
            &["x", "up.w"],
            &["c"],
            vec![attr_i("group", 2), attr_ints("strides", &[2, 2])],
        );
        bn(&mut b, "bn", "c", "y", 1e-5);
        let s = sample(&[("x", tensor(7, &[1, 4, 5, 5]))]);
        let (before, after, n) = check(b.model(), &s);
        assert_eq!(n, 1);
        insta::assert_snapshot!(snapshot(&before, &after));
    }

    #[test]
    fn gemm_both_layouts() {
        // g1: transB=1 with a bias and beta 0.5; g2: transB=0, no bias, alpha 2.
        let mut b = Builder::new(13);
        b.input("x", 1, Some(&[2, 5]))
            .output("y2", 1, Some(&[2, 3]))
            .init("g1.w", &[4, 5], 8, 1.0, 0.0)
            .init("g1.b", &[4], 9, 1.0, 0.0)
            .init("g2.w", &[4, 3], 11, 1.0, 0.0);
        bn_params(&mut b, "bn1", 4, 40);
        bn_params(&mut b, "bn2", 3, 50);
        b.node(
            "Gemm",
            "g1",
            &["x", "g1.w", "g1.b"],
            &["c1"],
            vec![attr_i("transB", 1), attr_f("beta", 0.5)],
        );
        bn(&mut b, "bn1", "c1", "y1", 1e-5);
        b.node(
            "Gemm",
            "g2",
            &["y1", "g2.w"],
            &["c2"],
            vec![attr_f("alpha", 2.0)],
        );
        bn(&mut b, "bn2", "c2", "y2", 1e-5);
        let s = sample(&[("x", tensor(12, &[2, 5]))]);
        let (before, after, n) = check(b.model(), &s);
        assert_eq!(n, 2);
        insta::assert_snapshot!(snapshot(&before, &after));
    }

    #[test]
    fn constant_node_weights_are_folded_and_removed() {
        // Weights and BN parameters from Constant nodes, as in PaddlePaddle exports.
        let mut b = Builder::new(11);
        b.input("x", 1, Some(&[1, 2, 4, 4])).output("y", 1, None);
        let w = values(60, 3 * 2);
        b.node(
            "Constant",
            "cw",
            &[],
            &["conv_weights"],
            vec![attr_t("value", f32_tensor("", &[3, 2, 1, 1], &w))],
        );
        for (i, p) in ["scale", "offset", "mean", "variance"].iter().enumerate() {
            let v: Vec<f32> = values(70 + i as u64, 3)
                .iter()
                .map(|x| x * 0.3 + 1.0)
                .collect();
            b.node(
                "Constant",
                &format!("c_{p}"),
                &[],
                &[&format!("bn_{p}")],
                vec![attr_t("value", f32_tensor("", &[3], &v))],
            );
        }
        b.node("Conv", "conv", &["x", "conv_weights"], &["c"], vec![]);
        b.node(
            "BatchNormalization",
            "bn",
            &["c", "bn_scale", "bn_offset", "bn_mean", "bn_variance"],
            &["y"],
            vec![],
        );
        let s = sample(&[("x", tensor(13, &[1, 2, 4, 4]))]);
        let (before, after, n) = check(b.model(), &s);
        assert_eq!(n, 1);
        assert!(
            !after.contains("Constant("),
            "dead Constant nodes left:\n{after}"
        );
        insta::assert_snapshot!(snapshot(&before, &after));
    }

    #[test]
    fn unfoldable_batchnorms_stay() {
        // bn1: the conv output is also read by Add. bn2: its mean is computed (Identity).
        // bn3: no producer (reads a graph input).
        let mut b = Builder::new(13);
        b.input("x", 1, Some(&[1, 2, 4, 4]))
            .output("s", 1, None)
            .output("y2", 1, None)
            .output("y3", 1, None)
            .init("c1.w", &[2, 2, 1, 1], 80, 1.0, 0.0)
            .init("c2.w", &[2, 2, 1, 1], 81, 1.0, 0.0);
        bn_params(&mut b, "bn1", 2, 90);
        bn_params(&mut b, "bn2", 2, 94);
        bn_params(&mut b, "bn3", 2, 98);
        b.node("Conv", "c1", &["x", "c1.w"], &["a"], vec![]);
        bn(&mut b, "bn1", "a", "y1", 1e-5);
        b.node("Add", "add", &["a", "y1"], &["s"], vec![]);
        b.node("Conv", "c2", &["x", "c2.w"], &["d"], vec![]);
        b.node("Identity", "mean_id", &["bn2.mean"], &["mean_in"], vec![]);
        b.node(
            "BatchNormalization",
            "bn2",
            &["d", "bn2.scale", "bn2.bias", "mean_in", "bn2.var"],
            &["y2"],
            vec![],
        );
        bn(&mut b, "bn3", "x", "y3", 1e-5);
        let m = b.model();
        let before = dump_model(&m);
        let mut m2 = m.clone();
        let n = fold_batchnorms(&mut m2).unwrap();
        m2.verify().unwrap();
        assert_eq!(n, 0);
        assert_eq!(dump_model(&m2), before);
        let mut cx = PassCx::default();
        assert_eq!(FoldBatchNorm.run(&mut m2, &mut cx).unwrap(), Changed::No);
        let s = sample(&[("x", tensor(14, &[1, 2, 4, 4]))]);
        assert_close(&run(&m, &s), &run(&m2, &s), 0.0);
    }

    #[test]
    fn folds_inside_subgraphs() {
        let mut then_b = Builder::new(13);
        then_b
            .output("ty", 1, None)
            .init("tc.w", &[2, 2, 1, 1], 100, 1.0, 0.0);
        bn_params(&mut then_b, "tbn", 2, 101);
        then_b.node("Conv", "tc", &["x", "tc.w"], &["tcv"], vec![]);
        bn(&mut then_b, "tbn", "tcv", "ty", 1e-5);
        let mut else_b = Builder::new(13);
        else_b.output("ey", 1, None);
        else_b.node("Relu", "er", &["x"], &["ey"], vec![]);
        let mut b = Builder::new(13);
        b.input("x", 1, Some(&[1, 2, 3, 3]))
            .input("cond", 9, Some(&[]))
            .output("y", 1, None);
        b.node(
            "If",
            "if",
            &["cond"],
            &["y"],
            vec![
                attr_g("then_branch", then_b.graph("then")),
                attr_g("else_branch", else_b.graph("else")),
            ],
        );
        let cond = Tensor::Bool(ndarray::arr0(true).into_dyn());
        let s = sample(&[("x", tensor(16, &[1, 2, 3, 3])), ("cond", cond)]);
        let (_, after, n) = check(b.model(), &s);
        assert_eq!(n, 1);
        assert!(after.contains("tc.w.bnfold") && !after.contains("BatchNormalization"));
    }

    #[test]
    fn ppocr_cls_folds_every_batchnorm_and_keeps_outputs() {
        use crate::data::{load, InputSpec};
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ppocr_cls");
        let mut m = crate::onnx::read_model(&root.join("model.onnx")).unwrap();
        let bns = |m: &Model| {
            m.graph
                .ops()
                .filter(|o| m.graph.op(*o).op_type == "BatchNormalization")
                .count()
        };
        let before_bn = bns(&m);
        let original = m.clone();
        let n = fold_batchnorms(&mut m).unwrap();
        m.verify().unwrap();
        assert_eq!(before_bn, 35);
        assert_eq!(
            n, 35,
            "every BatchNormalization of ppocr_cls follows a Conv"
        );
        assert_eq!(bns(&m), 0);
        // Conv weights and BN parameters were Constant nodes: the dead ones are gone.
        let consts = |m: &Model| {
            m.graph
                .ops()
                .filter(|o| m.graph.op(*o).op_type == "Constant")
                .count()
        };
        assert_eq!(consts(&original) - consts(&m), 35 * 5);
        let ds = load(
            &root.join("eval.npz"),
            &[InputSpec::new(
                "x",
                DType::F32,
                Some(vec![Some(1), Some(3), None, None]),
            )],
        )
        .unwrap();
        let enc = |m: &Model| {
            crate::onnx::encode_model(m, &crate::onnx::ExternalPolicy::Inline, "")
                .unwrap()
                .0
        };
        let opts = crate::exec::SessionOptions::default();
        let s0 =
            crate::exec::Session::new(&enc(&original), None, &ds.get(0).unwrap(), &opts).unwrap();
        let s1 = crate::exec::Session::new(&enc(&m), None, &ds.get(0).unwrap(), &opts).unwrap();
        let mut worst = 0f64;
        for sample in &ds.read_all().unwrap() {
            let (a, b) = (s0.run(sample).unwrap(), s1.run(sample).unwrap());
            for (k, x) in &a {
                let (xv, yv) = (x.to_f64_vec().unwrap(), b[k].to_f64_vec().unwrap());
                for (p, q) in xv.iter().zip(&yv) {
                    worst = worst.max((p - q).abs());
                }
            }
        }
        eprintln!("ppocr_cls: largest output difference after folding {worst:e}");
        assert!(worst <= 1e-4, "largest output difference {worst:e}");
    }
}
