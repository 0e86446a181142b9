//! insert_qdq — materialises a quantization plan.
//!
//! **What it does.** For each planned value: activations get `QuantizeLinear →
//! DequantizeLinear` right after their producer (every reader, float or not, then reads
//! the dequantized value, so the producer's node unit sees exactly one Q); weights become
//! integer initializers followed by `DequantizeLinear` (per channel with `axis`), with no
//! float copy left; biases become int32 with scale `s_input · s_weight`; folded Relu/Clip
//! ops are removed (the quantized range clips at zero), and so are folded Div/Mul ops by a
//! constant (their input's QuantizeLinear gets the scale `s_y · c` or `s_y / c`, its
//! DequantizeLinear the output's `s_y`: [`ScaleFold`]).
//!
//! **Subgraphs.** Each decision is applied in the graph that defines the value (an If
//! branch, a Scan body: [`ValueKeys`] says where). A subgraph that reads a quantized
//! value of an enclosing graph by name reads it through a `DequantizeLinear` of its own,
//! placed in the subgraph, whose input is the outer `QuantizeLinear` output (or the
//! outer integer weight), captured by name, and whose scale and zero point are copied
//! as the subgraph's own initializers: ONNX Runtime then sees a complete node unit
//! inside the body, and the body computes with exactly the values the outer readers
//! see. Weights defined in a body stay initializers of that body.
//!
//! **Requires.** A plan from `quant::plan::build` with ranges for every calibrated value;
//! value types (shape inference); a default-domain opset ≥ 13 when any weight is per
//! channel (≥ 21 for 16-bit types).
//!
//! **Effects.** New values are named from the original ones: `x.q`, `x.dq`, `x.scale`,
//! `x.zp` (with `.1`, `.2`… when the name is taken anywhere in the model, so that no
//! subgraph shadows an outer name); a quantized graph output keeps its name on the
//! dequantized value and the producer's value becomes `y.float`.
//!
//! **Example.**
//! ```text
//! %y = Conv(%x, %w, %b) : f32[1,4,8,8]
//! ```
//! becomes
//! ```text
//! const  %w.q: i8[4,3,3,3] = tensor(…)
//! %x.q = QuantizeLinear(%x, %x.scale, %x.zp) : u8[1,3,8,8]
//! %x.dq = DequantizeLinear(%x.q, %x.scale, %x.zp) : f32[1,3,8,8]
//! %w.dq = DequantizeLinear(%w.q, %w.scale, %w.zp) {axis=0} : f32[4,3,3,3]
//! %b.dq = DequantizeLinear(%b.q, %b.scale, %b.zp) {axis=0} : f32[4]
//! %y.pre = Conv(%x.dq, %w.dq, %b.dq) : f32[1,4,8,8]
//! ```

use super::util::{captured_by_subgraphs, is_captured, names_in_use};
use super::{Changed, Pass, PassCx, PassError};
use crate::ir::{
    AttrValue, Carry, ConstTensor, DType, Graph, Model, Op, Tensor, Value, ValueId, ValueType,
};
use crate::quant::params::{mse_scale_zp, quantize_bias, scale_zp, QType, ScaleFold, ScaleZp};
use crate::quant::plan::{op_key_in, Decision, OpState, Plan, ValueKeys};
use crate::quant::{quantize_linear, QuantizeAttrs};
use ndarray::{ArrayD, Axis, IxDyn};
use std::collections::{BTreeMap, BTreeSet};

const NAME: &str = "insert_qdq";

fn err(what: String) -> PassError {
    PassError { pass: NAME, what }
}

/// The pass: [`materialize`] of [`PassCx::plan`]; its report goes to
/// [`PassCx::inserted`].
#[derive(Clone, Copy, Debug, Default)]
pub struct InsertQdq;

impl Pass for InsertQdq {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "materialise the plan: QuantizeLinear/DequantizeLinear pairs, integer weights and biases"
    }

    fn skip(&self, cx: &PassCx) -> Option<String> {
        cx.plan.is_none().then(|| "no plan".to_string())
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        let Some(plan) = &cx.plan else {
            return Ok(Changed::No);
        };
        let rep = materialize(m, plan)?;
        cx.inserted = Some(rep);
        Ok(Changed::Yes)
    }
}

/// Parameters chosen for one value.
#[derive(Clone, Debug, PartialEq)]
pub struct Chosen {
    pub qtype: QType,
    pub params: Vec<ScaleZp>,
    pub axis: Option<i64>,
}

/// What [`materialize`] did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Scale and zero point per quantized value (by plan key).
    pub params: BTreeMap<String, Chosen>,
    pub quantize_nodes: usize,
    pub dequantize_nodes: usize,
    /// Bias values that saturated int32 (value name, count).
    pub bias_saturated: Vec<(String, usize)>,
}

/// Names taken anywhere in the model: new names avoid them all, so that a name added to
/// a subgraph never shadows an outer one and the reverse.
struct Names(BTreeSet<String>);

impl Names {
    fn of(g: &Graph) -> Names {
        let mut s = BTreeSet::new();
        names_in_use(g, &mut s);
        Names(s)
    }

    /// `base`, or `base.1`, `base.2`… : free in `g` and in the whole model.
    fn fresh(&mut self, g: &Graph, base: &str) -> String {
        let taken = |n: &str| g.value_by_name(n).is_some() || self.0.contains(n);
        let name = if !taken(base) {
            base.to_string()
        } else {
            (1..)
                .map(|i| format!("{base}.{i}"))
                .find(|n| !taken(n))
                .expect("unbounded")
        };
        self.0.insert(name.clone());
        name
    }
}

/// The quantized form of a value, as a subgraph reading it needs it.
struct Made {
    /// Name of the integer values (the Q output, or the integer initializer).
    q: String,
    q_ty: Option<ValueType>,
    /// Type of the dequantized value.
    ty: Option<ValueType>,
    scale: Tensor,
    zp: Tensor,
    axis: Option<i64>,
}

/// Applies `plan` to `m`: the main graph and the subgraphs holding planned values.
pub fn materialize(m: &mut Model, plan: &Plan) -> Result<Report, PassError> {
    let mut rep = Report::default();
    let keys = ValueKeys::of(&m.graph);
    let mut names = Names::of(&m.graph);
    for s in 0..keys.scopes.len() {
        let label = keys.scopes.get(s).label.clone();
        fold_activations(keys.scopes.graph_mut(&mut m.graph, s), plan, &label)?;
    }
    // Activations first: biases need their input's scale.
    let mut order: Vec<(&String, &Decision)> = plan.values.iter().collect();
    order.sort_by_key(|(n, d)| {
        let rank = match d {
            Decision::Activation {
                share_with: None, ..
            } => 0,
            Decision::Activation { .. } => 1,
            Decision::Weight { .. } => 2,
            Decision::Bias { .. } => 3,
        };
        (rank, n.to_string())
    });
    for (key, d) in order {
        let Some((s, local)) = keys.locate(key) else {
            continue; // not a value of this model
        };
        let g = keys.scopes.graph_mut(&mut m.graph, s);
        let Some(v) = g.value_by_name(local) else {
            // Removed by a fold (a folded Relu's output): whoever read it now reads the
            // producer's Q/DQ, whose parameters it shares, so a bias reading it gets them.
            if let Decision::Activation {
                share_with: Some(root),
                ..
            } = d
            {
                if let Some(c) = rep.params.get(root).cloned() {
                    rep.params.insert(key.clone(), c);
                }
            }
            continue;
        };
        match d {
            Decision::Activation {
                qtype,
                share_with,
                range_from,
            } => {
                let chosen = match share_with {
                    Some(root) => rep.params.get(root).cloned().ok_or_else(|| {
                        err(format!(
                            "value '{key}' shares parameters of '{root}', which has none"
                        ))
                    })?,
                    None => {
                        let src = range_from.as_deref().unwrap_or(key);
                        let (lo, hi) = *plan
                            .ranges
                            .get(src)
                            .ok_or_else(|| err(format!("no calibrated range for value '{src}'")))?;
                        Chosen {
                            qtype: *qtype,
                            params: vec![scale_zp(lo, hi, qtype)],
                            axis: None,
                        }
                    }
                };
                let fold = plan.scale_folds.get(key).copied();
                let made = insert_activation_qdq(g, v, &chosen, fold, &mut names)?;
                rep.dequantize_nodes += dequantize_in_subgraphs(g, local, &made, &mut names)?;
                rep.quantize_nodes += 1;
                rep.dequantize_nodes += 1;
                rep.params.insert(key.clone(), chosen);
            }
            Decision::Weight { qtype, axis, mse } => {
                let (chosen, made) = quantize_weight(g, v, *qtype, *axis, *mse, &mut names)?;
                rep.dequantize_nodes += dequantize_in_subgraphs(g, local, &made, &mut names)?;
                drop_if_unused(g, local);
                rep.dequantize_nodes += 1;
                rep.params.insert(key.clone(), chosen);
            }
            Decision::Bias { input, weight } => {
                let (Some(xp), Some(wp)) = (rep.params.get(input), rep.params.get(weight)) else {
                    continue; // input or weight stayed float: the bias stays float
                };
                if xp.params.len() != 1 {
                    continue;
                }
                let sx = xp.params[0].scale;
                let scales: Vec<f32> = wp.params.iter().map(|p| sx * p.scale).collect();
                let (sat, made) = quantize_bias_value(g, v, &scales, &mut names)?;
                rep.dequantize_nodes += dequantize_in_subgraphs(g, local, &made, &mut names)?;
                drop_if_unused(g, local);
                if sat > 0 {
                    rep.bias_saturated.push((key.clone(), sat));
                }
                rep.dequantize_nodes += 1;
                rep.params.insert(
                    key.clone(),
                    Chosen {
                        qtype: QType {
                            dtype: DType::I32,
                            qmin: i32::MIN as i64,
                            qmax: i32::MAX as i64,
                            symmetric: true,
                        },
                        params: scales
                            .iter()
                            .map(|&s| ScaleZp {
                                scale: s,
                                zero_point: 0,
                            })
                            .collect(),
                        axis: (scales.len() > 1).then_some(0),
                    },
                );
            }
        }
    }
    super::util::remove_dead(&mut m.graph);
    Ok(rep)
}

/// Removes folded ops of `g` (a scope labelled `label`: Relu/Clip, Div/Mul by a
/// constant): readers of their output read their data input (the one input that is not a
/// constant) instead.
fn fold_activations(g: &mut Graph, plan: &Plan, label: &str) -> Result<(), PassError> {
    let folded: Vec<_> = g
        .ops()
        .filter(|o| {
            matches!(
                plan.ops.get(&op_key_in(label, g, *o)),
                Some(OpState::Folded { .. })
            )
        })
        .collect();
    for o in folded {
        let x = g
            .inputs_of(o)
            .into_iter()
            .flatten()
            .find(|v| g.const_of(*v).is_none());
        let (Some(x), Some(y)) = (x, g.output(o, 0)) else {
            return Err(err(format!(
                "folded op '{}' lacks an input or output",
                g.op(o).display_name()
            )));
        };
        if g.is_output(y) {
            return Err(err(format!(
                "folded op '{}' produces a graph output",
                g.op(o).display_name()
            )));
        }
        g.replace_all_uses(y, x);
        g.remove_op(o);
        g.remove_value(y);
    }
    Ok(())
}

fn scalar_const(
    g: &mut Graph,
    names: &mut Names,
    base: &str,
    t: Tensor,
) -> Result<ValueId, PassError> {
    let name = names.fresh(g, base);
    g.add_const(&name, ConstTensor::from_tensor(None, &t))
        .map_err(|e| err(e.to_string()))
}

fn zp_tensor(dtype: DType, zps: &[i64], shape: &[usize]) -> Result<Tensor, PassError> {
    let vals: Vec<f64> = zps.iter().map(|&z| z as f64).collect();
    match dtype {
        DType::I32 => Ok(Tensor::I32(
            ArrayD::from_shape_vec(IxDyn(shape), zps.iter().map(|&z| z as i32).collect())
                .map_err(|e| err(e.to_string()))?,
        )),
        DType::U16 => Ok(Tensor::U16(
            ArrayD::from_shape_vec(IxDyn(shape), zps.iter().map(|&z| z as u16).collect())
                .map_err(|e| err(e.to_string()))?,
        )),
        DType::I16 => Ok(Tensor::I16(
            ArrayD::from_shape_vec(IxDyn(shape), zps.iter().map(|&z| z as i16).collect())
                .map_err(|e| err(e.to_string()))?,
        )),
        DType::I4 => Ok(Tensor::I4(
            ArrayD::from_shape_vec(IxDyn(shape), zps.iter().map(|&z| z as i8).collect())
                .map_err(|e| err(e.to_string()))?,
        )),
        DType::U4 => Ok(Tensor::U4(
            ArrayD::from_shape_vec(IxDyn(shape), zps.iter().map(|&z| z as u8).collect())
                .map_err(|e| err(e.to_string()))?,
        )),
        d => Tensor::from_f64(d, shape, &vals).map_err(err),
    }
}

fn scale_tensor(scales: &[f32], shape: &[usize]) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), scales.to_vec()).expect("shape fits"))
}

fn with_dtype(ty: &Option<ValueType>, dtype: DType) -> Option<ValueType> {
    ty.as_ref().map(|t| match t {
        ValueType::Tensor { shape, .. } => ValueType::Tensor {
            dtype,
            shape: shape.clone(),
        },
        other => other.clone(),
    })
}

/// `x → Q → DQ`; every reader of `x` reads the DQ output. With a scale fold the Q has
/// its own scale ([`ScaleFold::quantize_scale`]): the DQ output is then the folded op's
/// output.
fn insert_activation_qdq(
    g: &mut Graph,
    x: ValueId,
    c: &Chosen,
    fold: Option<ScaleFold>,
    names: &mut Names,
) -> Result<Made, PassError> {
    let name = g.value(x).name.clone();
    let ty = g.value(x).ty.clone();
    let p = c.params[0];
    let scale_t = scale_tensor(&[p.scale], &[]);
    let zp_t = zp_tensor(c.qtype.dtype, &[p.zero_point], &[])?;
    let scale = scalar_const(g, names, &format!("{name}.scale"), scale_t.clone())?;
    let q_scale = match fold {
        Some(f) => scalar_const(
            g,
            names,
            &format!("{name}.qscale"),
            scale_tensor(&[f.quantize_scale(p.scale)], &[]),
        )?,
        None => scale,
    };
    let zp = scalar_const(g, names, &format!("{name}.zp"), zp_t.clone())?;
    let readers = g.consumers(x);
    let was_output = g.is_output(x);
    let q_ty = with_dtype(&ty, c.qtype.dtype);
    let q_name = names.fresh(g, &format!("{name}.q"));
    let qv = g.add_fresh_value(&q_name, q_ty.clone());
    let after = g.producer(x).map(|(o, _)| o);
    let mut qop = Op::new("QuantizeLinear", &format!("{name}.quantize"));
    let mut dqop = Op::new("DequantizeLinear", &format!("{name}.dequantize"));
    if let Some(a) = after {
        qop.order = g.order_after(a);
    }
    let q = g
        .add_op(qop, &[Some(x), Some(q_scale), Some(zp)], &[Some(qv)])
        .map_err(|e| err(e.to_string()))?;
    dqop.order = g.order_after(q);
    // A graph output keeps its name on the dequantized value.
    let dq_name = if was_output {
        let moved = names.fresh(g, &format!("{name}.float"));
        g.rename_value(x, &moved).map_err(|e| err(e.to_string()))?;
        name.clone()
    } else {
        names.fresh(g, &format!("{name}.dq"))
    };
    let dqv = g.add_fresh_value(&dq_name, ty.clone());
    g.add_op(dqop, &[Some(qv), Some(scale), Some(zp)], &[Some(dqv)])
        .map_err(|e| err(e.to_string()))?;
    for (o, slot) in readers {
        g.set_input(o, slot, Some(dqv));
    }
    for out in &mut g.outputs {
        if *out == x {
            *out = dqv;
        }
    }
    Ok(Made {
        q: q_name,
        q_ty,
        ty,
        scale: scale_t,
        zp: zp_t,
        axis: None,
    })
}

/// In every subgraph of `g` (recursively) that reads `name` from an enclosing graph,
/// makes the readers read `DequantizeLinear(made.q, scale, zp)` computed in that
/// subgraph, with the scale and zero point as its own initializers. Returns the number
/// of DequantizeLinear nodes added.
fn dequantize_in_subgraphs(
    g: &mut Graph,
    name: &str,
    made: &Made,
    names: &mut Names,
) -> Result<usize, PassError> {
    let mut n = 0;
    let ops: Vec<_> = g.ops().collect();
    for o in ops {
        for sg in g.op_mut(o).subgraphs_mut() {
            n += dequantize_capture(sg, name, made, names)?;
        }
    }
    Ok(n)
}

fn dequantize_capture(
    sg: &mut Graph,
    name: &str,
    made: &Made,
    names: &mut Names,
) -> Result<usize, PassError> {
    let mut n = 0;
    if let Some(v) = sg.value_by_name(name) {
        if !is_captured(sg, v) {
            return Ok(0); // the subgraph defines its own `name`
        }
        let ty = sg.value(v).ty.clone().or_else(|| made.ty.clone());
        let q = match sg.value_by_name(&made.q) {
            Some(q) => q,
            None => sg
                .add_value(Value {
                    name: made.q.clone(),
                    ty: made.q_ty.clone(),
                    init: None,
                    carry: Carry::default(),
                })
                .map_err(|e| err(e.to_string()))?,
        };
        let scale = scalar_const(sg, names, &format!("{name}.scale"), made.scale.clone())?;
        let zp = scalar_const(sg, names, &format!("{name}.zp"), made.zp.clone())?;
        let dq_name = names.fresh(sg, &format!("{name}.dq"));
        let dqv = sg.add_fresh_value(&dq_name, ty);
        let mut dq = Op::new("DequantizeLinear", &format!("{name}.dequantize"));
        if let Some(a) = made.axis {
            dq.set_attr("axis", AttrValue::Int(a));
        }
        if let Some((first, _)) = sg.consumers(v).first() {
            dq.order = sg.order_before(*first);
        }
        sg.add_op(dq, &[Some(q), Some(scale), Some(zp)], &[Some(dqv)])
            .map_err(|e| err(e.to_string()))?;
        sg.replace_all_uses(v, dqv);
        if sg.consumers(v).is_empty() && !sg.is_output(v) {
            sg.remove_value(v);
        }
        n += 1;
    }
    // Deeper subgraphs reading `name` get their own.
    n += dequantize_in_subgraphs(sg, name, made, names)?;
    Ok(n)
}

/// Per-channel (or per-tensor) symmetric/asymmetric parameters from the values: the
/// min/max range, or the range of least squared error when `mse`.
fn weight_params(t: &ArrayD<f32>, q: &QType, axis: Option<i64>, mse: bool) -> Vec<ScaleZp> {
    let one = |vals: Vec<f32>| {
        if mse {
            return mse_scale_zp(&vals, q);
        }
        let (lo, hi) = vals
            .iter()
            .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        scale_zp(lo, hi, q)
    };
    match axis {
        None => vec![one(t.iter().copied().collect())],
        Some(a) => t
            .axis_iter(Axis(a as usize))
            .map(|s| one(s.iter().copied().collect()))
            .collect(),
    }
}

/// Replaces a float constant by integer values + DequantizeLinear (the float constant
/// is dropped by the caller once no subgraph reads it either).
fn quantize_weight(
    g: &mut Graph,
    w: ValueId,
    q: QType,
    axis: Option<i64>,
    mse: bool,
    names: &mut Names,
) -> Result<(Chosen, Made), PassError> {
    let name = g.value(w).name.clone();
    let t = g
        .const_of(w)
        .ok_or_else(|| err(format!("weight '{name}' is not a constant")))?
        .to_tensor()
        .map_err(|e| err(e.to_string()))?;
    let Tensor::F32(a) = &t else {
        return Err(err(format!("weight '{name}' is not f32")));
    };
    let params = weight_params(a, &q, axis, mse);
    let n = params.len();
    let pshape: Vec<usize> = if axis.is_some() { vec![n] } else { vec![] };
    let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
    let zps: Vec<i64> = params.iter().map(|p| p.zero_point).collect();
    let scale_t = scale_tensor(&scales, &pshape);
    let zp_t = zp_tensor(q.dtype, &zps, &pshape)?;
    let attrs = QuantizeAttrs {
        axis: axis.unwrap_or(1),
        ..QuantizeAttrs::default()
    };
    let qt = quantize_linear(&t, &scale_t, Some(&zp_t), &attrs)
        .map_err(|e| err(format!("weight '{name}': {e}")))?;
    let made = Made {
        q: names.fresh(g, &format!("{name}.q")),
        q_ty: None,
        ty: g.value(w).ty.clone(),
        scale: scale_t.clone(),
        zp: zp_t.clone(),
        axis,
    };
    let readers = g.consumers(w);
    let qv = g
        .add_const(&made.q, ConstTensor::from_tensor(None, &qt))
        .map_err(|e| err(e.to_string()))?;
    let made = Made {
        q_ty: g.value(qv).ty.clone(),
        ..made
    };
    let sv = scalar_const(g, names, &format!("{name}.scale"), scale_t)?;
    let zv = scalar_const(g, names, &format!("{name}.zp"), zp_t)?;
    let dq_name = names.fresh(g, &format!("{name}.dq"));
    let dqv = g.add_fresh_value(&dq_name, g.value(w).ty.clone());
    let mut dq = Op::new("DequantizeLinear", &format!("{name}.dequantize"));
    if let Some(a) = axis {
        dq.set_attr("axis", AttrValue::Int(a));
    }
    if let Some((first, _)) = readers.first() {
        dq.order = g.order_before(*first);
    }
    g.add_op(dq, &[Some(qv), Some(sv), Some(zv)], &[Some(dqv)])
        .map_err(|e| err(e.to_string()))?;
    for (o, slot) in readers {
        g.set_input(o, slot, Some(dqv));
    }
    Ok((
        Chosen {
            qtype: q,
            params,
            axis,
        },
        made,
    ))
}

/// Replaces a float bias by int32 values + DequantizeLinear; returns how many saturated.
fn quantize_bias_value(
    g: &mut Graph,
    b: ValueId,
    scales: &[f32],
    names: &mut Names,
) -> Result<(usize, Made), PassError> {
    let name = g.value(b).name.clone();
    let t = g
        .const_of(b)
        .ok_or_else(|| err(format!("bias '{name}' is not a constant")))?
        .to_tensor()
        .map_err(|e| err(e.to_string()))?;
    let Tensor::F32(a) = &t else {
        return Err(err(format!("bias '{name}' is not f32")));
    };
    let vals: Vec<f32> = a.iter().copied().collect();
    if scales.len() != 1 && scales.len() != vals.len() {
        return Err(err(format!(
            "bias '{name}' has {} values but the weight has {} channels",
            vals.len(),
            scales.len()
        )));
    }
    let (qv, sat) = quantize_bias(&vals, scales);
    let shape = a.shape().to_vec();
    let qt =
        Tensor::I32(ArrayD::from_shape_vec(IxDyn(&shape), qv).map_err(|e| err(e.to_string()))?);
    let readers = g.consumers(b);
    let q_name = names.fresh(g, &format!("{name}.q"));
    let qid = g
        .add_const(&q_name, ConstTensor::from_tensor(None, &qt))
        .map_err(|e| err(e.to_string()))?;
    let pshape: Vec<usize> = if scales.len() > 1 {
        vec![scales.len()]
    } else {
        vec![]
    };
    let scale_t = scale_tensor(scales, &pshape);
    let zp_t = zp_tensor(DType::I32, &vec![0; scales.len()], &pshape)?;
    let sv = scalar_const(g, names, &format!("{name}.scale"), scale_t.clone())?;
    let zv = scalar_const(g, names, &format!("{name}.zp"), zp_t.clone())?;
    let dq_name = names.fresh(g, &format!("{name}.dq"));
    let dqv = g.add_fresh_value(&dq_name, g.value(b).ty.clone());
    let axis = (scales.len() > 1).then_some(0);
    let mut dq = Op::new("DequantizeLinear", &format!("{name}.dequantize"));
    if let Some(a) = axis {
        dq.set_attr("axis", AttrValue::Int(a));
    }
    if let Some((first, _)) = readers.first() {
        dq.order = g.order_before(*first);
    }
    g.add_op(dq, &[Some(qid), Some(sv), Some(zv)], &[Some(dqv)])
        .map_err(|e| err(e.to_string()))?;
    for (o, slot) in readers {
        g.set_input(o, slot, Some(dqv));
    }
    let made = Made {
        q: q_name,
        q_ty: g.value(qid).ty.clone(),
        ty: g.value(b).ty.clone(),
        scale: scale_t,
        zp: zp_t,
        axis,
    };
    Ok((sat, made))
}

/// Removes the float constant `name` once nothing reads it: no op or output of `g`, no
/// subgraph capturing it.
fn drop_if_unused(g: &mut Graph, name: &str) {
    let Some(v) = g.value_by_name(name) else {
        return;
    };
    if g.consumers(v).is_empty()
        && !g.is_output(v)
        && g.producer(v).is_none()
        && !g.is_input(v)
        && !captured_by_subgraphs(g).contains(name)
    {
        g.remove_value(v);
    }
}
