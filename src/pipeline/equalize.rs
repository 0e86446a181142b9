//! Cross-layer equalization (`--equalize`): before calibration, the per-channel weight
//! ranges of consecutive layers are made equal by rescaling channels between them
//! ([`crate::quant::equalize`] has the factors), on the prepared model (BatchNormalization
//! already folded into the Conv weights and biases), so that per-tensor weight grids stop
//! wasting levels on the channels with small ranges. Data-free: no sample is run.
//!
//! A pair is a first layer `A` (Conv, MatMul or Gemm with a constant float32 weight of its
//! own) whose output is read by one op only, optionally through a bias `Add` of its own
//! constant (after a MatMul) and one positively homogeneous activation (Relu, LeakyRelu,
//! or Clip with lower bound 0 and no upper bound), into a second layer `B` of the same
//! family (Conv after Conv, including grouped and depthwise Convs; MatMul or Gemm after
//! MatMul or Gemm) that reads it as its data input with a constant weight of its own.
//! Clip with an upper bound (ReLU6) is not homogeneous: `clip(x / s, 0, 6) ≠ clip(x, 0, 6) / s`,
//! so such pairs are left alone rather than approximated.
//!
//! For each pair, `A`'s output channel `i` (weight and bias) is divided by `s_i` and `B`'s
//! input channel `i` multiplied by it. Chains (`A → B → C`, a depthwise Conv between two
//! pointwise ones) share layers: the pairs are swept in order, again and again, until no
//! factor of a sweep differs from 1 by more than [`TOLERANCE`] (at most [`MAX_SWEEPS`];
//! the note says when the cap stopped it). The cumulative factors are then folded into the
//! weights once. The float model's outputs do not change (up to float rounding) and the
//! written model stays plain Q/DQ. The equalized model replaces the prepared one (and the
//! model prepared with the declared dims, when there is one), its plan is built again and
//! its fingerprint recomputed; validation compares against the float model as given.
//!
//! High-bias absorption is not done: its data-free form needs the BatchNormalization
//! statistics, gone once they are folded, and its calibrated form changes the float model
//! wherever an input drives a channel below its calibration minimum.

use super::error::PipelineError;
use super::prepare::Prepared;
use crate::ir::{AttrValue, ConstTensor, DType, Model, OpId, Tensor, ValueId};
use crate::quant::equalize::{self as eq, Layout, Side};
use std::collections::BTreeMap;

/// A sweep whose factors are all within this of 1 (as `|ln s|`) ends the iteration.
pub const TOLERANCE: f64 = 1e-4;
/// The most sweeps over the pairs.
pub const MAX_SWEEPS: usize = 200;

/// Two layers equalized against each other (ops by name).
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub first: String,
    pub second: String,
    /// Channels between them.
    pub channels: usize,
    /// The constant of the bias `Add` after a first MatMul (value name), scaled with it.
    pub bias_add: Option<String>,
    /// The activation between them (op type), if any.
    pub through: Option<String>,
}

/// What equalization did, for the notes.
#[derive(Clone, Debug, PartialEq)]
pub struct Equalized {
    pub pairs: Vec<Pair>,
    pub sweeps: usize,
    /// The largest `|ln s|` of the last sweep.
    pub spread: f64,
}

impl Equalized {
    /// One line for the summary's notes.
    pub fn note(&self) -> String {
        if self.pairs.is_empty() {
            return "equalize: no pair of layers to equalize (Conv→Conv or MatMul/Gemm→MatMul/Gemm through at most a bias Add and Relu/LeakyRelu/Clip(0, ∞))".into();
        }
        let layers: std::collections::BTreeSet<&str> = self
            .pairs
            .iter()
            .flat_map(|p| [p.first.as_str(), p.second.as_str()])
            .collect();
        let end = if self.spread <= TOLERANCE {
            format!("converged in {} sweeps", self.sweeps)
        } else {
            format!(
                "stopped after {} sweeps with factors up to {:.4} from 1",
                self.sweeps,
                self.spread.exp() - 1.0
            )
        };
        format!(
            "equalize: per-channel weight ranges of {} layer pairs ({} layers) equalized, {end}; no high-bias absorption",
            self.pairs.len(),
            layers.len()
        )
    }
}

fn f32_const(m: &Model, v: ValueId) -> Option<&ConstTensor> {
    m.graph.const_of(v).filter(|t| t.dtype == DType::F32)
}

/// `v` is a float32 constant read by one op only and not an output.
fn own_const(m: &Model, v: ValueId) -> bool {
    f32_const(m, v).is_some() && m.graph.consumers(v).len() == 1 && !m.graph.is_output(v)
}

/// A per-channel vector of `n` values (`[n]` or `[1, …, 1, n]`).
fn channel_vector(t: &ConstTensor, n: usize) -> bool {
    t.dims.last().is_some_and(|&d| d as usize == n) && t.dims.iter().rev().skip(1).all(|&d| d == 1)
}

fn default_domain(m: &Model, o: OpId) -> bool {
    matches!(m.graph.op(o).domain_key(), "" | "ai.onnx")
}

/// The layout of `o`'s weight (input 1), when it is a constant float32 weight of its own.
fn weight_layout(m: &Model, o: OpId) -> Option<Layout> {
    let g = &m.graph;
    let op = g.op(o);
    if !default_domain(m, o) {
        return None;
    }
    let w = g.input(o, 1)?;
    if !own_const(m, w) {
        return None;
    }
    let dims: Vec<usize> = f32_const(m, w)?.dims.iter().map(|&d| d as usize).collect();
    match (op.op_type.as_str(), dims.len()) {
        ("Conv", r) if r >= 3 => Some(Layout::Conv {
            dims,
            group: op.attr_int("group").unwrap_or(1).max(1) as usize,
        }),
        ("MatMul", 2) => Some(Layout::Rows {
            k: dims[0],
            n: dims[1],
        }),
        ("Gemm", 2) if op.attr_int("transB").unwrap_or(0) != 0 => Some(Layout::Cols {
            n: dims[0],
            k: dims[1],
        }),
        ("Gemm", 2) => Some(Layout::Rows {
            k: dims[0],
            n: dims[1],
        }),
        _ => None,
    }
}

/// The one reader of `v` (none when `v` is an output or has several).
fn only_reader(m: &Model, v: ValueId) -> Option<(OpId, usize)> {
    let r = m.graph.consumers(v);
    (r.len() == 1 && !m.graph.is_output(v)).then(|| r[0])
}

/// A scalar float constant input equal to `x`.
fn scalar_is(m: &Model, v: Option<ValueId>, x: f32) -> bool {
    v.and_then(|v| f32_const(m, v))
        .and_then(|t| t.to_tensor().ok())
        .is_some_and(|t| match t {
            Tensor::F32(a) => a.len() == 1 && a.iter().all(|&e| e == x),
            _ => false,
        })
}

/// Whether op `o` is positively homogeneous per channel: `f(x / s) = f(x) / s`, `s > 0`.
fn homogeneous(m: &Model, o: OpId) -> bool {
    let g = &m.graph;
    let op = g.op(o);
    if !default_domain(m, o) {
        return false;
    }
    match op.op_type.as_str() {
        "Relu" | "LeakyRelu" => true,
        "Clip" => {
            let attr_ok = match (op.attr("min"), op.attr("max")) {
                (Some(AttrValue::Float(lo)), None) => *lo == 0.0,
                (None, None) => true,
                _ => false,
            };
            let min_ok = match g.input(o, 1) {
                None => true,
                v => scalar_is(m, v, 0.0),
            };
            let max_ok = match g.input(o, 2) {
                None => true,
                v => scalar_is(m, v, f32::INFINITY),
            };
            attr_ok && min_ok && max_ok
        }
        _ => false,
    }
}

fn is_conv(m: &Model, o: OpId) -> bool {
    m.graph.op(o).op_type == "Conv"
}

/// The pair starting at `a`, if there is one.
fn pair_from(m: &Model, a: OpId) -> Option<Pair> {
    let g = &m.graph;
    let la = weight_layout(m, a)?;
    let n = la.channels(Side::Out);
    if let Some(b) = g.input(a, 2) {
        if !(own_const(m, b) && channel_vector(f32_const(m, b)?, n)) {
            return None;
        }
    }
    let mut cur = g.output(a, 0)?;
    let mut bias_add = None;
    let mut through = None;
    let (mut r, mut slot) = only_reader(m, cur)?;
    if g.op(a).op_type == "MatMul" && g.op(r).op_type == "Add" && default_domain(m, r) {
        let c = g.input(r, 1 - slot)?;
        if !(own_const(m, c) && channel_vector(f32_const(m, c)?, n)) {
            return None;
        }
        bias_add = Some(g.value(c).name.clone());
        cur = g.output(r, 0)?;
        (r, slot) = only_reader(m, cur)?;
    }
    if homogeneous(m, r) && slot == 0 {
        through = Some(g.op(r).op_type.clone());
        cur = g.output(r, 0)?;
        (r, slot) = only_reader(m, cur)?;
    }
    let lb = weight_layout(m, r)?;
    let family = is_conv(m, a) == is_conv(m, r);
    let gemm_ok = g.op(r).op_type != "Gemm" || g.op(r).attr_int("transA").unwrap_or(0) == 0;
    if slot != 0 || !family || !gemm_ok || lb.channels(Side::In) != n || n == 0 {
        return None;
    }
    Some(Pair {
        first: g.op(a).display_name().to_string(),
        second: g.op(r).display_name().to_string(),
        channels: n,
        bias_add,
        through,
    })
}

/// The pairs of the main graph of `m`, in op order.
pub fn pairs(m: &Model) -> Vec<Pair> {
    let g = &m.graph;
    let mut ops: Vec<OpId> = g.ops().collect();
    ops.sort_by_key(|&o| g.op(o).order);
    ops.into_iter().filter_map(|a| pair_from(m, a)).collect()
}

fn ops_by_name(m: &Model) -> BTreeMap<String, OpId> {
    m.graph
        .ops()
        .map(|o| (m.graph.op(o).display_name().to_string(), o))
        .collect()
}

fn f32s(t: &ConstTensor) -> Result<Vec<f32>, String> {
    match t.to_tensor().map_err(|e| e.to_string())? {
        Tensor::F32(a) => Ok(a.iter().copied().collect()),
        _ => Err("not float32".into()),
    }
}

fn set_f32s(m: &mut Model, v: ValueId, vals: Vec<f32>) -> Result<(), String> {
    let tid = m.graph.value(v).init.ok_or("not a constant")?;
    let dims: Vec<usize> = m
        .graph
        .tensor(tid)
        .dims
        .iter()
        .map(|&d| d as usize)
        .collect();
    let arr = ndarray::ArrayD::from_shape_vec(dims, vals).map_err(|e| e.to_string())?;
    let name = m.graph.tensor(tid).name.clone();
    *m.graph.tensor_mut(tid) = ConstTensor::from_tensor(name, &Tensor::F32(arr));
    Ok(())
}

/// A layer's weight: its layout and values.
struct Weight {
    layout: Layout,
    values: Vec<f32>,
}

fn load_weight(m: &Model, o: OpId) -> Result<Weight, String> {
    let name = m.graph.op(o).display_name().to_string();
    let layout = weight_layout(m, o).ok_or(format!("'{name}' has no weight of its own"))?;
    let w = m.graph.input(o, 1).ok_or("no weight")?;
    let values = f32s(m.graph.const_of(w).ok_or("weight not constant")?)?;
    Ok(Weight { layout, values })
}

/// The cumulative factors of each pair, iterated over the chains until converged; the
/// number of sweeps and the last sweep's largest `|ln s|`.
pub fn factors(m: &Model, pairs: &[Pair]) -> Result<(Vec<Vec<f32>>, usize, f64), String> {
    let by_name = ops_by_name(m);
    let mut weights: BTreeMap<&str, Weight> = BTreeMap::new();
    for p in pairs {
        for name in [&p.first, &p.second] {
            if !weights.contains_key(name.as_str()) {
                let o = *by_name.get(name).ok_or(format!("no op '{name}'"))?;
                weights.insert(name, load_weight(m, o)?);
            }
        }
    }
    let maps: BTreeMap<(&str, bool), Vec<usize>> = pairs
        .iter()
        .flat_map(|p| [(p.first.as_str(), true), (p.second.as_str(), false)])
        .map(|(n, out)| {
            let side = if out { Side::Out } else { Side::In };
            ((n, out), weights[n].layout.channel_map(side))
        })
        .collect();
    let mut total: Vec<Vec<f32>> = pairs.iter().map(|p| vec![1.0; p.channels]).collect();
    let (mut sweeps, mut spread) = (0, 0.0);
    while sweeps < MAX_SWEEPS {
        sweeps += 1;
        spread = 0.0f64;
        for (p, t) in pairs.iter().zip(total.iter_mut()) {
            let (m1, m2) = (
                &maps[&(p.first.as_str(), true)],
                &maps[&(p.second.as_str(), false)],
            );
            let r1 = eq::channel_abs_max(&weights[p.first.as_str()].values, m1, p.channels);
            let r2 = eq::channel_abs_max(&weights[p.second.as_str()].values, m2, p.channels);
            let s = eq::factors(&r1, &r2);
            spread = spread.max(eq::log_spread(&s));
            if let Some(w) = weights.get_mut(p.first.as_str()) {
                eq::scale(&mut w.values, m1, &s, true);
            }
            if let Some(w) = weights.get_mut(p.second.as_str()) {
                eq::scale(&mut w.values, m2, &s, false);
            }
            t.iter_mut().zip(&s).for_each(|(a, b)| *a *= b);
        }
        if spread <= TOLERANCE {
            break;
        }
    }
    Ok((total, sweeps, spread))
}

/// Divides each element of the per-channel constant `v` by its channel's factor.
fn divide_vector(m: &mut Model, v: ValueId, s: &[f32]) -> Result<(), String> {
    let mut vals = f32s(m.graph.const_of(v).ok_or("not constant")?)?;
    let n = s.len().max(1);
    vals.iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x /= s[i % n]);
    set_f32s(m, v, vals)
}

/// Folds each pair's factors into `m` (which must hold the pairs' ops and constants by
/// name).
pub fn apply(m: &mut Model, pairs: &[Pair], factors: &[Vec<f32>]) -> Result<(), String> {
    let by_name = ops_by_name(m);
    for (p, s) in pairs.iter().zip(factors) {
        let a = *by_name
            .get(&p.first)
            .ok_or(format!("no op '{}'", p.first))?;
        let b = *by_name
            .get(&p.second)
            .ok_or(format!("no op '{}'", p.second))?;
        for (o, side) in [(a, Side::Out), (b, Side::In)] {
            let w = load_weight(m, o)?;
            let mut vals = w.values;
            eq::scale(&mut vals, &w.layout.channel_map(side), s, side == Side::Out);
            let wv = m.graph.input(o, 1).ok_or("no weight")?;
            set_f32s(m, wv, vals)?;
        }
        if let Some(bias) = m.graph.input(a, 2) {
            divide_vector(m, bias, s)?;
        }
        if let Some(c) = &p.bias_add {
            let v = m.graph.value_by_name(c).ok_or(format!("no value '{c}'"))?;
            divide_vector(m, v, s)?;
        }
    }
    Ok(())
}

/// Equalizes `p` in place: the prepared model (and the one with the declared dims), its
/// plan and fingerprint. Returns what it did.
pub fn equalize_prepared(p: &mut Prepared) -> Result<Equalized, PipelineError> {
    let pairs = pairs(&p.model);
    let invalid = |what: String| PipelineError::Options(format!("--equalize: {what}"));
    let (f, sweeps, spread) = factors(&p.model, &pairs).map_err(invalid)?;
    p.rewrite_weights("--equalize", "equalizing", |m| apply(m, &pairs, &f))?;
    let done = Equalized {
        pairs,
        sweeps,
        spread,
    };
    p.notes.push(done.note());
    Ok(done)
}
