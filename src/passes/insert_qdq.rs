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
    AttrValue, Carry, ConstTensor, DType, Dim, ExternalRef, Graph, Model, Op, Tensor, TensorData,
    Value, ValueId, ValueType,
};
use crate::quant::codebook::{int_codebook, WeightGrid};
use crate::quant::params::{mse_scale_zp, quantize_bias, scale_zp, QType, ScaleFold, ScaleZp};
use crate::quant::plan::{op_key_in, Decision, OpState, Plan, ValueKeys};

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
        let rep = materialize_with(m, plan, cx.weight_memo.as_ref())?;
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
    /// `Σ w²` over the quantized weights.
    pub weight_signal: f64,
    /// `Σ (w − ŵ)²` over the quantized weights (`ŵ` dequantized in float32).
    pub weight_noise: f64,
    /// Per codebook weight (by plan key): each channel's levels, as the codes written to
    /// its level table (ascending; the table's rows are padded with zeros past them).
    pub codebooks: BTreeMap<String, Vec<Vec<i64>>>,
    /// Uniform weights quantized from side-file values (by plan key): what a
    /// [`WeightMemo`] needs to write them again without quantizing them.
    pub stored: BTreeMap<String, Stored>,
}

/// A uniform weight as [`materialize`] quantized it: the float values' side-file span, the
/// decision, the name of the codes it wrote and what `write_weight` needs besides them.
#[derive(Clone, Debug)]
pub struct Stored {
    source: ExternalRef,
    decision: Decision,
    codes_name: String,
    params: Vec<ScaleZp>,
    signal_noise: (f64, f64),
}

/// Codes of weights quantized once already and kept in a side file, by plan key:
/// [`materialize_with`] writes a weight from them (the constant then references the side
/// file) when the weight is the same side-file span under the same decision, instead of
/// quantizing it again. The side files stay while any clone of the memo does.
#[derive(Clone, Debug, Default)]
pub struct WeightMemo {
    by_key: BTreeMap<String, (Stored, ConstTensor)>,
    keep: Vec<std::sync::Arc<crate::fsx::Scratch>>,
}

impl WeightMemo {
    /// Records the weights `rep` stored whose codes lie, in `m` (a copy of the model
    /// `rep` materialised), in `side_file`, which the memo keeps.
    pub fn record(
        &mut self,
        rep: &Report,
        m: &Model,
        side_file: std::sync::Arc<crate::fsx::Scratch>,
    ) {
        let g = &m.graph;
        let mut any = false;
        for (key, st) in &rep.stored {
            let Some(c) = g.value_by_name(&st.codes_name).and_then(|v| g.const_of(v)) else {
                continue;
            };
            if let TensorData::External(r) = &c.data {
                if r.file == side_file.file() {
                    let codes = ConstTensor {
                        name: None,
                        was_external: false,
                        carry: Default::default(),
                        ..c.clone()
                    };
                    self.by_key.insert(key.clone(), (st.clone(), codes));
                    any = true;
                }
            }
        }
        if any {
            self.keep.push(side_file);
        }
    }

    /// Whether no weight is recorded.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The side files the recorded codes lie in (a model written from the memo reads them
    /// until it is written).
    pub fn side_files(&self) -> Vec<std::sync::Arc<crate::fsx::Scratch>> {
        self.keep.clone()
    }

    /// The recorded codes of `key` when `source` (the weight's float constant) and
    /// `decision` are those they were quantized from.
    fn lookup(
        &self,
        key: &str,
        source: &ConstTensor,
        decision: &Decision,
    ) -> Option<&(Stored, ConstTensor)> {
        let hit = self.by_key.get(key)?;
        let TensorData::External(r) = &source.data else {
            return None;
        };
        (hit.0.source == *r && hit.0.decision == *decision).then_some(hit)
    }
}

/// What [`quantize_weight`] wrote.
struct WrittenWeight {
    chosen: Chosen,
    made: Made,
    /// `(Σ w², Σ (w − ŵ)²)`.
    signal_noise: (f64, f64),
    /// Per channel levels of a codebook grid.
    codebook: Option<Vec<Vec<i64>>>,
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
    /// `None`: no zero point input (symmetric blocks, zero by default).
    zp: Option<Tensor>,
    axis: Option<i64>,
    /// `block_size` of a blocked weight.
    block: Option<i64>,
}

/// Applies `plan` to `m`: the main graph and the subgraphs holding planned values.
pub fn materialize(m: &mut Model, plan: &Plan) -> Result<Report, PassError> {
    materialize_with(m, plan, None)
}

/// [`materialize`], writing the weights `memo` holds from their recorded codes.
pub fn materialize_with(
    m: &mut Model,
    plan: &Plan,
    memo: Option<&WeightMemo>,
) -> Result<Report, PassError> {
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
                    None => own_params(plan, key, qtype, range_from.as_deref())?,
                };
                let fold = plan.scale_folds.get(key).copied();
                let made = insert_activation_qdq(g, v, &chosen, fold, &mut names)?;
                rep.dequantize_nodes += dequantize_in_subgraphs(g, local, &made, &mut names)?;
                rep.quantize_nodes += 1;
                rep.dequantize_nodes += 1;
                rep.params.insert(key.clone(), chosen);
            }
            Decision::Weight {
                qtype,
                axis,
                mse,
                grid,
            } => {
                let imp = plan.importance.get(key).map(Vec::as_slice);
                let rounding = plan.rounding.get(key).map(Vec::as_slice);
                // A uniform weight from a side file: recorded, or written from the memo.
                let source = match (g.const_of(v), imp, rounding) {
                    (Some(c), None, None)
                        if grid.is_uniform()
                            && grid.block().is_none()
                            && matches!(c.data, TensorData::External(_)) =>
                    {
                        Some(c.clone())
                    }
                    _ => None,
                };
                let hit = source
                    .as_ref()
                    .and_then(|c| memo.and_then(|mm| mm.lookup(key, c, d)))
                    .cloned();
                let written = match hit {
                    Some((st, codes)) => {
                        let name = g.value(v).name.clone();
                        let shape = codes.dims.iter().map(|&d| d as usize).collect();
                        let parts = (
                            st.params,
                            Codes::Stored(codes),
                            st.signal_noise,
                            shape,
                            None,
                        );
                        write_weight(g, v, &name, *qtype, *axis, parts, &mut names)?
                    }
                    None => quantize_weight(
                        g, v, *qtype, *axis, *mse, *grid, imp, rounding, &mut names,
                    )?,
                };
                if let Some(TensorData::External(r)) = source.map(|c| c.data) {
                    rep.stored.insert(
                        key.clone(),
                        Stored {
                            source: r,
                            decision: d.clone(),
                            codes_name: written.made.q.clone(),
                            params: written.chosen.params.clone(),
                            signal_noise: written.signal_noise,
                        },
                    );
                }
                let WrittenWeight {
                    chosen,
                    made,
                    signal_noise: (signal, noise),
                    codebook,
                } = written;
                if let Some(levels) = codebook {
                    rep.codebooks.insert(key.clone(), levels);
                }
                rep.weight_signal += signal;
                rep.weight_noise += noise;
                rep.dequantize_nodes += dequantize_in_subgraphs(g, local, &made, &mut names)?;
                drop_if_unused(g, local);
                rep.dequantize_nodes += 1;
                rep.params.insert(key.clone(), chosen);
            }
            Decision::Bias { input, weight } => {
                let (Some(xp), Some(wp)) = (rep.params.get(input), rep.params.get(weight)) else {
                    continue; // input or weight stayed float: the bias stays float
                };
                if matches!(plan.values.get(weight), Some(Decision::Weight { grid, .. }) if grid.block().is_some())
                {
                    continue; // scales per block, not per output channel: the bias stays float
                }
                if xp.params.len() != 1 {
                    continue;
                }
                let scales = bias_scales(xp.params[0].scale, wp);
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

/// The parameters of an activation that takes its range from its own statistics (or from
/// those of `range_from`, the value whose range it reads).
fn own_params(
    plan: &Plan,
    key: &str,
    qtype: &QType,
    range_from: Option<&str>,
) -> Result<Chosen, PassError> {
    let src = range_from.unwrap_or(key);
    let (lo, hi) = *plan
        .ranges
        .get(src)
        .ok_or_else(|| err(format!("no calibrated range for value '{src}'")))?;
    Ok(Chosen {
        qtype: *qtype,
        params: vec![scale_zp(lo, hi, qtype)],
        axis: None,
    })
}

/// The int32 scales of a bias: the input's scale times each of the weight's.
fn bias_scales(input_scale: f32, weight: &Chosen) -> Vec<f32> {
    weight
        .params
        .iter()
        .map(|p| input_scale * p.scale)
        .collect()
}

/// The value [`materialize`] gives bias `bias` (a [`Decision::Bias`] of `plan`, `float` its
/// float values) once dequantized, given the parameters `weight` of the weight it goes
/// with: the int32 values and scales it writes, through the DequantizeLinear kernel the
/// engine runs. Only the input's range is read from `plan`, so a caller that materialised
/// the weights once gets the bias of any other set of ranges without quantizing them again.
/// `None` when `bias` is not a bias whose input has its own or a shared range.
pub fn dequantized_bias_of(
    plan: &Plan,
    bias: &str,
    float: &Tensor,
    weight: &Chosen,
) -> Result<Option<Tensor>, PassError> {
    let Some(Decision::Bias { input, .. }) = plan.values.get(bias) else {
        return Ok(None);
    };
    let root = match plan.values.get(input) {
        Some(Decision::Activation {
            share_with: Some(root),
            ..
        }) => root.as_str(),
        Some(Decision::Activation { .. }) => input.as_str(),
        _ => return Ok(None),
    };
    let Some(Decision::Activation {
        qtype,
        share_with: None,
        range_from,
    }) = plan.values.get(root)
    else {
        return Ok(None);
    };
    let input = own_params(plan, root, qtype, range_from.as_deref())?;
    let scales = bias_scales(input.params[0].scale, weight);
    let codes = bias_codes(bias, float, &scales)?;
    let attrs = crate::quant::kernels::DequantizeAttrs {
        axis: if scales.len() > 1 { 0 } else { 1 },
        ..Default::default()
    };
    crate::quant::kernels::dequantize_linear(&codes.q, &codes.scale, Some(&codes.zp), &attrs)
        .map(Some)
        .map_err(|e| err(format!("bias '{bias}': {e}")))
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
        zp: Some(zp_t),
        axis: None,
        block: None,
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
        let zp = match &made.zp {
            Some(z) => Some(scalar_const(sg, names, &format!("{name}.zp"), z.clone())?),
            None => None,
        };
        let dq_name = names.fresh(sg, &format!("{name}.dq"));
        let dqv = sg.add_fresh_value(&dq_name, ty);
        let mut dq = Op::new("DequantizeLinear", &format!("{name}.dequantize"));
        if let Some(a) = made.axis {
            dq.set_attr("axis", AttrValue::Int(a));
        }
        if let Some(b) = made.block {
            dq.set_attr("block_size", AttrValue::Int(b));
        }
        if let Some((first, _)) = sg.consumers(v).first() {
            dq.order = sg.order_before(*first);
        }
        sg.add_op(dq, &[Some(q), Some(scale), zp], &[Some(dqv)])
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
pub(crate) fn weight_params(
    t: &ArrayD<f32>,
    q: &QType,
    axis: Option<i64>,
    mse: bool,
) -> Vec<ScaleZp> {
    let one = |vals: Vec<f32>| {
        if mse {
            return mse_scale_zp(&vals, q);
        }
        let (lo, hi) = vals
            .iter()
            .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        scale_zp(lo, hi, q)
    };
    match (axis, t.as_slice()) {
        (None, _) => vec![one(t.iter().copied().collect())],
        (Some(a), Some(xs)) if !mse => {
            // The values in memory order, in parts (whole rows) on several threads for a
            // large weight, then merged: min and max give the same values in any order, so
            // these are the per-channel views' ranges below.
            let n = t.shape()[a as usize];
            let (stride, dim) = stride_dim(t.shape(), axis);
            let parts = in_parts(xs, &mut [] as &mut [u8], stride * dim, |xs, _| {
                let mut lo_hi = vec![(0f32, 0f32); n];
                if stride == 1 {
                    // The channel is the last axis: a row at a time.
                    for row in xs.chunks(dim) {
                        for ((lo, hi), &v) in lo_hi.iter_mut().zip(row) {
                            (*lo, *hi) = (lo.min(v), hi.max(v));
                        }
                    }
                    return lo_hi;
                }
                for (&v, c) in xs.iter().zip(Channels::new(stride, dim, xs.len())) {
                    let (lo, hi) = &mut lo_hi[c];
                    (*lo, *hi) = (lo.min(v), hi.max(v));
                }
                lo_hi
            });
            let mut lo_hi = vec![(0f32, 0f32); n];
            for part in parts {
                for ((lo, hi), (plo, phi)) in lo_hi.iter_mut().zip(part) {
                    (*lo, *hi) = (lo.min(plo), hi.max(phi));
                }
            }
            lo_hi
                .into_iter()
                .map(|(lo, hi)| scale_zp(lo, hi, q))
                .collect()
        }
        (Some(a), _) => t
            .axis_iter(Axis(a as usize))
            .map(|s| one(s.iter().copied().collect()))
            .collect(),
    }
}

/// The channel along `axis` of each element of a tensor of `shape`, in memory order (0 for
/// every element without an axis): what [`channel_of`] gives, without a division per element.
pub(crate) fn channels(shape: &[usize], axis: Option<i64>) -> Channels {
    let (stride, dim) = stride_dim(shape, axis);
    Channels::new(stride, dim, shape.iter().product())
}

/// The run of consecutive elements in one channel along `axis` of a tensor of `shape`, and
/// the number of channels (at least 1 each; without an axis, one channel of every element).
fn stride_dim(shape: &[usize], axis: Option<i64>) -> (usize, usize) {
    match axis {
        Some(a) => (
            shape[a as usize + 1..].iter().product::<usize>().max(1),
            shape[a as usize].max(1),
        ),
        None => (shape.iter().product::<usize>().max(1), 1),
    }
}

/// Elements from which the loops over a weight's values run on several threads.
const PARALLEL_ELEMENTS: usize = 1 << 20;

/// Runs `f` on consecutive parts of `xs` and of `out` (the same length, or empty: then
/// every part of it is empty), one part per thread for large tensors, each part a whole
/// number of `unit` elements (so every part starts at channel 0); the results in order.
/// The workers allocate nothing of the tensor's size.
fn in_parts<T: Send, R: Send>(
    xs: &[f32],
    out: &mut [T],
    unit: usize,
    f: impl Fn(&[f32], &mut [T]) -> R + Sync,
) -> Vec<R> {
    let unit = unit.max(1);
    let threads = match xs.len() >= PARALLEL_ELEMENTS {
        true => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        false => 1,
    };
    let per = xs.len().div_ceil(unit).div_ceil(threads).max(1) * unit;
    if threads == 1 || per >= xs.len() {
        return vec![f(xs, out)];
    }
    let f = &f;
    std::thread::scope(|s| {
        let mut rest = out;
        let handles: Vec<_> = xs
            .chunks(per)
            .map(|x| {
                let k = x.len().min(rest.len());
                let o;
                (o, rest) = std::mem::take(&mut rest).split_at_mut(k);
                s.spawn(move || f(x, o))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The iterator of [`channels`]: a run of `stride` elements per channel, channels in turn.
pub(crate) struct Channels {
    stride: usize,
    dim: usize,
    /// Elements left in the current channel's run.
    left: usize,
    c: usize,
    /// Elements left.
    n: usize,
}

impl Channels {
    /// `n` elements in runs of `stride` per channel, `dim` channels in turn from channel 0.
    fn new(stride: usize, dim: usize, n: usize) -> Channels {
        Channels {
            stride,
            dim,
            left: stride,
            c: 0,
            n,
        }
    }
}

impl Iterator for Channels {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        self.n -= 1;
        let c = self.c;
        self.left -= 1;
        if self.left == 0 {
            self.left = self.stride;
            self.c = if c + 1 == self.dim { 0 } else { c + 1 };
        }
        Some(c)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.n, Some(self.n))
    }
}

/// A uniform weight's codes, computed as [`code_weight`] and [`quantize_weight`] compute
/// them (the same values, and `Σ w²`, `Σ (w − ŵ)²` summed in the same order), in one pass
/// over the values, straight into the integer type: `None` when that road does not apply
/// (values not contiguous, a type without it, a learned rounding of another shape, a NaN
/// code), and the general one then gives the same result or its error.
fn uniform_codes(
    a: &ArrayD<f32>,
    q: QType,
    axis: Option<i64>,
    mse: bool,
    rounding: Option<&[bool]>,
) -> Option<(Vec<ScaleZp>, Tensor, (f64, f64))> {
    let xs = a.as_slice()?;
    if rounding.is_some_and(|r| r.len() != xs.len()) {
        return None;
    }
    // Kept out of line: inlined into the large pass, its loops lose their registers.
    #[inline(never)]
    fn typed<T: TryFrom<i64> + Copy + Into<f64> + Send + Sync>(
        xs: &[f32],
        shape: &[usize],
        q: &QType,
        axis: Option<i64>,
        params: &[ScaleZp],
        rounding: Option<&[bool]>,
        cast: impl Fn(f64) -> T + Sync,
    ) -> Option<(Vec<T>, (f64, f64))> {
        // Every clamped code fits `T` exactly.
        T::try_from(q.qmin).ok()?;
        T::try_from(q.qmax).ok()?;
        let (qmin, qmax) = (q.qmin as f64, q.qmax as f64);
        let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
        // Zero points are at most 16-bit: exact in f32, as is `r + zp` for every `r` the
        // clamp does not replace (|r| < 2^22), so the codes are those of the f64 sums.
        let zps: Vec<f32> = params.iter().map(|p| p.zero_point as f32).collect();
        let (lo, hi) = (qmin as f32, qmax as f32);
        let code = |r: f32, zp: f32| (r + zp).clamp(lo, hi);
        let round = crate::quant::kernels::round_even_small;
        // The codes, in tight loops over the values (in parts on several threads for a
        // large weight): a channel's run at a time, or a row at a time when the channel is
        // the last axis (a MatMul weight's: its channel changes at every element).
        let mut codes: Vec<T> = vec![cast(0.0); xs.len()];
        let n_ch = scales.len();
        let (stride, _) = stride_dim(shape, axis);
        let nan = match rounding {
            Some(up) => {
                let mut nan = false;
                for (((o, &w), &u), c) in
                    codes.iter_mut().zip(xs).zip(up).zip(channels(shape, axis))
                {
                    let r = (w / scales[c]).floor() + if u { 1.0 } else { 0.0 };
                    let v = code(r, zps[c]);
                    nan |= v.is_nan();
                    *o = cast(v as f64);
                }
                nan
            }
            None if n_ch == 1 => in_parts(xs, &mut codes, 1, |xs, out| {
                let (s, z) = (scales[0], zps[0]);
                let mut nan = false;
                for (o, &w) in out.iter_mut().zip(xs) {
                    let v = code(round(w / s), z);
                    nan |= v.is_nan();
                    *o = cast(v as f64);
                }
                nan
            })
            .contains(&true),
            None if stride == 1 => in_parts(xs, &mut codes, n_ch, |xs, out| {
                let mut nan = false;
                for (row, orow) in xs.chunks(n_ch).zip(out.chunks_mut(n_ch)) {
                    for (((o, &w), &s), &z) in orow.iter_mut().zip(row).zip(&scales).zip(&zps) {
                        let v = code(round(w / s), z);
                        nan |= v.is_nan();
                        *o = cast(v as f64);
                    }
                }
                nan
            })
            .contains(&true),
            None => in_parts(xs, &mut codes, stride * n_ch, |xs, out| {
                let mut nan = false;
                for ((run, orun), c) in xs
                    .chunks(stride)
                    .zip(out.chunks_mut(stride))
                    .zip((0..n_ch).cycle())
                {
                    let (s, z) = (scales[c], zps[c]);
                    for (o, &w) in orun.iter_mut().zip(run) {
                        let v = code(round(w / s), z);
                        nan |= v.is_nan();
                        *o = cast(v as f64);
                    }
                }
                nan
            })
            .contains(&true),
        };
        if nan {
            return None;
        }
        // `Σ w²` and `Σ (w − ŵ)²` in element order (every code is exact in `T` and f32).
        let (mut signal, mut noise) = (0f64, 0f64);
        let mut add = |w: f32, code: T, s: f32, z: f32| {
            let d = ((code.into() as f32 - z) * s) as f64;
            signal += (w as f64).powi(2);
            noise += (w as f64 - d).powi(2);
        };
        if stride == 1 && n_ch > 1 {
            for (row, crow) in xs.chunks(n_ch).zip(codes.chunks(n_ch)) {
                for (((&w, &code), &s), &z) in row.iter().zip(crow).zip(&scales).zip(&zps) {
                    add(w, code, s, z);
                }
            }
        } else {
            for ((&w, &code), c) in xs.iter().zip(&codes).zip(channels(shape, axis)) {
                add(w, code, scales[c], zps[c]);
            }
        }
        Some((codes, (signal, noise)))
    }
    let params = weight_params(a, &q, axis, mse);
    let shape = a.shape();
    fn arr<T>(dim: IxDyn, v: Vec<T>) -> Option<ArrayD<T>> {
        ArrayD::from_shape_vec(dim, v).ok()
    }
    let (t, sn) = match q.dtype {
        DType::I8 | DType::I4 => {
            let (v, sn) = typed(xs, shape, &q, axis, &params, rounding, |c| c as i8)?;
            let v = arr(a.raw_dim(), v)?;
            (
                if q.dtype == DType::I8 {
                    Tensor::I8(v)
                } else {
                    Tensor::I4(v)
                },
                sn,
            )
        }
        DType::U8 | DType::U4 => {
            let (v, sn) = typed(xs, shape, &q, axis, &params, rounding, |c| c as u8)?;
            let v = arr(a.raw_dim(), v)?;
            (
                if q.dtype == DType::U8 {
                    Tensor::U8(v)
                } else {
                    Tensor::U4(v)
                },
                sn,
            )
        }
        DType::I16 => {
            let (v, sn) = typed(xs, shape, &q, axis, &params, rounding, |c| c as i16)?;
            (Tensor::I16(arr(a.raw_dim(), v)?), sn)
        }
        DType::U16 => {
            let (v, sn) = typed(xs, shape, &q, axis, &params, rounding, |c| c as u16)?;
            (Tensor::U16(arr(a.raw_dim(), v)?), sn)
        }
        _ => return None,
    };
    Some((params, t, sn))
}

/// The integer codes of a weight and, for a codebook grid, how they are stored.
struct Coded {
    /// Codes in the weight's layout (f64 holds every integer type exactly).
    codes: Vec<f64>,
    params: Vec<ScaleZp>,
    /// Per channel: the levels (codes) and each element's level index, channel-major.
    codebook: Option<Codebooks>,
}

/// Per channel: its levels (codes) and each element's level index, channel-major.
type Codebooks = (Vec<Vec<i64>>, Vec<Vec<u8>>);

/// How a weight's codes are written: an integer tensor, or codebooks with their index bits.
enum Codes {
    Tensor(Tensor),
    Codebook(Codebooks, u32),
    /// Codes written before, as a constant (`WeightMemo`).
    Stored(ConstTensor),
}

/// Integer values as a tensor of `dtype` (4-bit types held one value per `i8`/`u8`).
fn int_tensor(dtype: DType, shape: &[usize], vals: &[f64]) -> Result<Tensor, PassError> {
    let t = match dtype {
        DType::I4 => match Tensor::from_f64(DType::I8, shape, vals).map_err(err)? {
            Tensor::I8(a) => Tensor::I4(a),
            _ => unreachable!("i8 tensor"),
        },
        DType::U4 => match Tensor::from_f64(DType::U8, shape, vals).map_err(err)? {
            Tensor::U8(a) => Tensor::U4(a),
            _ => unreachable!("u8 tensor"),
        },
        d => Tensor::from_f64(d, shape, vals).map_err(err)?,
    };
    Ok(t)
}

/// Index of the channel (along `axis`) of every element of a tensor of `shape`.
pub(crate) fn channel_of(shape: &[usize], axis: Option<i64>) -> impl Fn(usize) -> usize {
    let (stride, dim) = stride_dim(shape, axis);
    move |i| (i / stride) % dim
}

/// Index of the scale (in the scale tensor's row-major order) of every element of a weight
/// of `shape` planned per channel along `axis` on `grid`: its channel, or for a blocked
/// grid its block along the other axis of the 2-D weight ([`WeightGrid::Block`]).
pub fn param_of(
    shape: &[usize],
    axis: Option<i64>,
    grid: WeightGrid,
) -> Box<dyn Fn(usize) -> usize + Send + Sync> {
    match (grid.block(), axis, shape) {
        (Some(b), Some(1), &[_, c]) => Box::new(move |i| (i / c / b) * c + i % c),
        (Some(b), Some(0), &[_, c]) => {
            let nb = c.div_ceil(b);
            Box::new(move |i| (i / c) * nb + (i % c) / b)
        }
        _ => Box::new(channel_of(shape, axis)),
    }
}

/// The shape of the scales of a weight of `shape` blocked by `size` along the axis that
/// is not its channel `axis` (2-D weights), and that axis.
fn block_scale_shape(shape: &[usize], axis: usize, size: usize) -> (Vec<usize>, usize) {
    if axis == 1 {
        (vec![shape[0].div_ceil(size), shape[1]], 0)
    } else {
        (vec![shape[0], shape[1].div_ceil(size)], 1)
    }
}

/// The axis a blocked grid may block weight `w` of `g` along: the reduction axis of the
/// MatMul (`0` of `[K, N]`) or Gemm (`1` with `transB`) that reads it at input 1, or the
/// width (`1`) of an embedding table read by a `Gather` along axis 0; `None` when its
/// readers are none of these, or disagree.
pub fn block_axis(g: &Graph, w: ValueId) -> Option<usize> {
    let mut out = None;
    for (o, slot) in g.consumers(w) {
        let op = g.op(o);
        let ax = match (op.op_type.as_str(), slot) {
            ("MatMul", 1) => 0,
            ("Gemm", 1) => usize::from(op.attr_int("transB").unwrap_or(0) != 0),
            ("Gather", 0) if op.attr_int("axis").unwrap_or(0) == 0 => 1,
            _ => return None,
        };
        if out.is_some_and(|a| a != ax) {
            return None;
        }
        out = Some(ax);
    }
    out
}

/// Whether weight `w` of `g` (of `shape`, channel `axis`) can be stored in blocks of `size`
/// along its readers' reduction axis ([`block_axis`]) that `size` divides.
pub fn can_block(g: &Graph, w: ValueId, shape: &[usize], axis: Option<i64>, size: usize) -> bool {
    check_block("", shape, axis, size).is_ok_and(|b| block_axis(g, w) == Some(b))
}

/// Checks that a weight of `shape` with channel `axis` can be blocked by `size` (2-D, per
/// channel, `size` dividing the other axis); the blocked axis.
fn check_block(
    name: &str,
    shape: &[usize],
    axis: Option<i64>,
    size: usize,
) -> Result<usize, PassError> {
    let (Some(a @ (0 | 1)), 2) = (axis, shape.len()) else {
        return Err(err(format!(
            "weight '{name}': blocks of {size} need a 2-D weight planned per channel (shape {shape:?})"
        )));
    };
    let b = 1 - a as usize;
    if size == 0 || !shape[b].is_multiple_of(size) {
        return Err(err(format!(
            "weight '{name}': a block size of {size} does not divide its axis {b} ({} values)",
            shape[b]
        )));
    }
    Ok(b)
}

/// The codes of `a` on `q` (clamped to its range, which may be narrower than its type),
/// or its per-channel codebooks on `grid`; `rounding` (uniform grids) picks the code
/// below or above each value instead of the nearest.
#[allow(clippy::too_many_arguments)]
fn code_weight(
    name: &str,
    a: &ArrayD<f32>,
    q: QType,
    axis: Option<i64>,
    mse: bool,
    grid: WeightGrid,
    importance: Option<&[f64]>,
    rounding: Option<&[bool]>,
) -> Result<Coded, PassError> {
    if let Some(size) = grid.block() {
        check_block(name, a.shape(), axis, size)?;
        let at = param_of(a.shape(), axis, grid);
        let (rows, cols) = (a.shape()[0], a.shape()[1]);
        let n = match axis {
            Some(1) => rows.div_ceil(size) * cols,
            _ => rows * cols.div_ceil(size),
        };
        let mut lo_hi = vec![(0f32, 0f32); n];
        for (i, &v) in a.iter().enumerate() {
            let (lo, hi) = &mut lo_hi[at(i)];
            (*lo, *hi) = (lo.min(v), hi.max(v));
        }
        let params: Vec<ScaleZp> = lo_hi
            .into_iter()
            .map(|(lo, hi)| scale_zp(lo, hi, &q))
            .collect();
        let codes = a
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let p = params[at(i)];
                ((w / p.scale).round_ties_even() as f64 + p.zero_point as f64)
                    .clamp(q.qmin as f64, q.qmax as f64)
            })
            .collect();
        return Ok(Coded {
            codes,
            params,
            codebook: None,
        });
    }
    let params = weight_params(a, &q, axis, mse && grid.is_uniform());
    let Some(ax) = axis.filter(|_| !grid.is_uniform()) else {
        let ch = channel_of(a.shape(), axis);
        if rounding.is_some_and(|r| r.len() != a.len()) {
            return Err(err(format!(
                "weight '{name}': the learned rounding does not match its shape"
            )));
        }
        let code = |(i, &w): (usize, &f32)| {
            let p = params[ch(i)];
            let r = match rounding {
                // Learned: the code below or above, on the same grid.
                Some(up) => (w / p.scale).floor() + if up[i] { 1.0 } else { 0.0 },
                None => crate::quant::kernels::round_even_small(w / p.scale),
            };
            (r as f64 + p.zero_point as f64).clamp(q.qmin as f64, q.qmax as f64)
        };
        let codes = match a.as_slice() {
            Some(xs) => xs.iter().enumerate().map(code).collect(),
            None => a.iter().enumerate().map(code).collect(),
        };
        return Ok(Coded {
            codes,
            params,
            codebook: None,
        });
    };
    let imp = importance.map(|v| ArrayD::from_shape_vec(a.raw_dim(), v.to_vec()));
    let imp = match imp {
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => {
            return Err(err(format!(
                "weight '{name}': the input energy does not match its shape"
            )))
        }
        None => None,
    };
    let mut levels = Vec::new();
    let mut index = Vec::new();
    let mut out = Vec::new();
    for (c, ch) in a.axis_iter(Axis(ax as usize)).enumerate() {
        let vals: Vec<f32> = ch.iter().copied().collect();
        let wts: Option<Vec<f64>> = imp
            .as_ref()
            .map(|t| t.index_axis(Axis(ax as usize), c).iter().copied().collect());
        let cb = int_codebook(&vals, wts.as_deref(), grid, params[c].scale, q.qmax)
            .map_err(|e| err(format!("weight '{name}': {e}")))?;
        out.push(ScaleZp {
            scale: cb.scale,
            zero_point: 0,
        });
        levels.push(cb.levels);
        index.push(cb.index);
    }
    // Back to the weight's layout.
    let ch = channel_of(a.shape(), axis);
    let mut seen = vec![0usize; levels.len()];
    let codes = (0..a.len())
        .map(|i| {
            let c = ch(i);
            let k = seen[c];
            seen[c] += 1;
            levels[c][index[c][k] as usize] as f64
        })
        .collect();
    Ok(Coded {
        codes,
        params: out,
        codebook: Some((levels, index)),
    })
}

/// The integer weight `[C, …]` of per-channel codebooks, as ops any runtime folds at
/// load: `GatherElements(levels [C, L], Cast(indices [C, M]), axis=1)` → Reshape to the
/// weight's shape with the channel axis first → Transpose back (when `axis` ≠ 0).
/// Indices are uint4 (two per byte) for codebooks of up to 4 bits, else uint8.
#[allow(clippy::too_many_arguments)]
fn write_codebook(
    g: &mut Graph,
    names: &mut Names,
    name: &str,
    shape: &[usize],
    axis: usize,
    bits: u32,
    dtype: DType,
    (levels, index): &Codebooks,
) -> Result<ValueId, PassError> {
    let c = levels.len();
    let m = index.first().map_or(0, |v| v.len());
    let l = 1usize << bits;
    let mut table = vec![0f64; c * l];
    for (i, lv) in levels.iter().enumerate() {
        for (j, &v) in lv.iter().enumerate() {
            table[i * l + j] = v as f64;
        }
    }
    let table = int_tensor(dtype, &[c, l], &table)?;
    let packed = bits < 4;
    let idx = if packed {
        let p = (m * bits as usize).div_ceil(8);
        let bytes: Vec<u8> = index.iter().flat_map(|ch| pack_bits(ch, bits, p)).collect();
        Tensor::U8(ArrayD::from_shape_vec(IxDyn(&[c, p]), bytes).expect("channel-major bytes"))
    } else {
        let idx: Vec<u8> = index.iter().flatten().copied().collect();
        let idx = ArrayD::from_shape_vec(IxDyn(&[c, m]), idx).expect("channel-major indices");
        if bits == 4 {
            Tensor::U4(idx)
        } else {
            Tensor::U8(idx)
        }
    };
    let tv = scalar_const(g, names, &format!("{name}.codebook"), table)?;
    let iv = scalar_const(g, names, &format!("{name}.index"), idx)?;
    let mut first: Option<(u32, u32)> = None;
    let mut step = |g: &mut Graph,
                    names: &mut Names,
                    op: &str,
                    suffix: &str,
                    inputs: &[Option<ValueId>],
                    attrs: Vec<(&str, AttrValue)>|
     -> Result<ValueId, PassError> {
        let out = names.fresh(g, &format!("{name}.{suffix}"));
        let v = g.add_fresh_value(&out, None);
        let mut o = Op::new(op, &format!("{name}.{suffix}"));
        for (k, a) in attrs {
            o.set_attr(k, a);
        }
        if let Some(ord) = first {
            o.order = ord;
        }
        let id = g
            .add_op(o, inputs, &[Some(v)])
            .map_err(|e| err(e.to_string()))?;
        first.get_or_insert(g.op(id).order);
        Ok(v)
    };
    let to_i64 = || vec![("to", AttrValue::Int(DType::I64.onnx_code() as i64))];
    let cast = if packed {
        let fi = unpack_indices(g, names, name, &mut step, iv, (c, m, bits))?;
        step(g, names, "Cast", "index64", &[Some(fi)], to_i64())?
    } else {
        step(g, names, "Cast", "index64", &[Some(iv)], to_i64())?
    };
    let gathered = step(
        g,
        names,
        "GatherElements",
        "gathered",
        &[Some(tv), Some(cast)],
        vec![("axis", AttrValue::Int(1))],
    )?;
    let mut first_dims: Vec<i64> = vec![shape[axis] as i64];
    first_dims.extend(
        shape
            .iter()
            .enumerate()
            .filter(|(d, _)| *d != axis)
            .map(|(_, &n)| n as i64),
    );
    let sv = scalar_const(
        g,
        names,
        &format!("{name}.shape"),
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[first_dims.len()]), first_dims).expect("1-D")),
    )?;
    let mut v = step(
        g,
        names,
        "Reshape",
        if axis == 0 { "q" } else { "channel_first" },
        &[Some(gathered), Some(sv)],
        vec![],
    )?;
    if axis != 0 {
        // Dimension d of the weight sits at 0 (d = axis), d + 1 (d < axis) or d (d > axis).
        let perm: Vec<i64> = (0..shape.len())
            .map(|d| match d.cmp(&axis) {
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Less => d as i64 + 1,
                std::cmp::Ordering::Greater => d as i64,
            })
            .collect();
        v = step(
            g,
            names,
            "Transpose",
            "q",
            &[Some(v)],
            vec![("perm", AttrValue::Ints(perm))],
        )?;
    }
    let ty = ValueType::Tensor {
        dtype,
        shape: Some(shape.iter().map(|&n| Dim::Known(n as i64)).collect()),
    };
    g.value_mut(v).ty = Some(ty);
    Ok(v)
}

/// Bytes the integer payload of a weight of `shape` takes on `q` and `grid` (per-channel
/// codebooks along `axis`): the codes for a uniform grid (4-bit types two per byte); the
/// level table (`C × 2^bits` codes) and the indices for a codebook (two per byte at 4 bits,
/// packed bit streams per channel below, a byte each above); for a blocked grid the codes
/// and the float32 scales beyond one per channel (it has no zero points). Scales, zero
/// points and the ops around them are otherwise the same for every grid of a weight and
/// are left out.
pub fn payload_bytes(shape: &[usize], axis: Option<i64>, q: &QType, grid: WeightGrid) -> u64 {
    let n: usize = shape.iter().product();
    let code_bits = q.dtype.bits().unwrap_or(8);
    if let (Some(size), Some(a @ (0 | 1)), 2) = (grid.block(), axis, shape.len()) {
        // The scales beyond one per channel are part of what a blocked grid costs.
        let (pshape, _) = block_scale_shape(shape, a as usize, size);
        let extra = pshape.iter().product::<usize>() - shape[a as usize];
        return ((n * code_bits).div_ceil(8) + 4 * extra) as u64;
    }
    match (grid.index_bits(), axis) {
        (Some(bits), Some(a)) => {
            let c = shape.get(a as usize).copied().unwrap_or(1).max(1);
            let m = n / c;
            let table = c * (1usize << bits) * code_bits.div_ceil(8);
            let index = match bits {
                4 => (c * m).div_ceil(2),
                b if b < 4 => c * (m * b as usize).div_ceil(8),
                _ => c * m,
            };
            (table + index) as u64
        }
        _ => (n * code_bits).div_ceil(8) as u64,
    }
}

/// `(Σ e·w², Σ e·(w − ŵ)²)` of the float weight `a` stored on `q` and `grid`, each element
/// weighted by its input energy `e` (`importance`, laid out like the weight; 1 without):
/// the signal and noise of the layer's output when its input channels are uncorrelated.
pub fn weight_noise(
    name: &str,
    a: &ArrayD<f32>,
    q: QType,
    axis: Option<i64>,
    mse: bool,
    grid: WeightGrid,
    importance: Option<&[f64]>,
) -> Result<(f64, f64), PassError> {
    if grid.index_bits().is_some() && axis.is_none() {
        return Err(err(format!(
            "weight '{name}': a codebook grid needs per-channel weights"
        )));
    }
    let coded = code_weight(name, a, q, axis, mse, grid, importance, None)?;
    let ch = param_of(a.shape(), axis, grid);
    let (mut signal, mut noise) = (0f64, 0f64);
    for (i, (&w, &c)) in a.iter().zip(&coded.codes).enumerate() {
        let p = coded.params[ch(i)];
        let d = ((c - p.zero_point as f64) as f32 * p.scale) as f64;
        let e = importance.map_or(1.0, |v| v[i]);
        signal += e * (w as f64).powi(2);
        noise += e * (w as f64 - d).powi(2);
    }
    Ok((signal, noise))
}

/// A step of [`write_codebook`]: op type, name suffix, inputs, attributes → its output.
type StepFn<'a> = dyn FnMut(
        &mut Graph,
        &mut Names,
        &str,
        &str,
        &[Option<ValueId>],
        Vec<(&str, AttrValue)>,
    ) -> Result<ValueId, PassError>
    + 'a;

/// The float indices `[C, m]` of the packed `bits`-bit index bytes `iv` (`[C, ⌈m·bits/8⌉]`).
fn unpack_indices(
    g: &mut Graph,
    names: &mut Names,
    name: &str,
    step: &mut StepFn,
    iv: ValueId,
    (c, m, bits): (usize, usize, u32),
) -> Result<ValueId, PassError> {
    let to_i64 = || vec![("to", AttrValue::Int(DType::I64.onnx_code() as i64))];
    // Bytes → their 8 bits (a shared [256, 8] table) → the first m·bits bits of each
    // channel → [C, m, bits] → float → index = Σ bit_k · 2^k (exact in float).
    let lut = bit_table(g, names)?;
    let bytes = step(g, names, "Cast", "index_bytes", &[Some(iv)], to_i64())?;
    let bitv = step(
        g,
        names,
        "Gather",
        "index_bits",
        &[Some(lut), Some(bytes)],
        vec![("axis", AttrValue::Int(0))],
    )?;
    let shape_of = |g: &mut Graph, names: &mut Names, suffix: &str, dims: Vec<i64>| {
        let n = dims.len();
        scalar_const(
            g,
            names,
            &format!("{name}.{suffix}"),
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n]), dims).expect("1-D")),
        )
    };
    let s = shape_of(g, names, "bits_shape", vec![c as i64, -1])?;
    let mut flat = step(
        g,
        names,
        "Reshape",
        "index_stream",
        &[Some(bitv), Some(s)],
        vec![],
    )?;
    let used = (m * bits as usize) as i64;
    if !(m * bits as usize).is_multiple_of(8) {
        let st = shape_of(g, names, "bits_start", vec![0])?;
        let en = shape_of(g, names, "bits_end", vec![used])?;
        let ax = shape_of(g, names, "bits_axis", vec![1])?;
        flat = step(
            g,
            names,
            "Slice",
            "index_used",
            &[Some(flat), Some(st), Some(en), Some(ax)],
            vec![],
        )?;
    }
    let s = shape_of(
        g,
        names,
        "index_shape",
        vec![c as i64, m as i64, bits as i64],
    )?;
    let split = step(
        g,
        names,
        "Reshape",
        "index_split",
        &[Some(flat), Some(s)],
        vec![],
    )?;
    let split = step(
        g,
        names,
        "Cast",
        "index_split_float",
        &[Some(split)],
        vec![("to", AttrValue::Int(DType::F32.onnx_code() as i64))],
    )?;
    let pw: Vec<f32> = (0..bits).map(|k| (1u32 << k) as f32).collect();
    let pw = scalar_const(
        g,
        names,
        &format!("{name}.bit_weights"),
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[bits as usize]), pw).expect("1-D")),
    )?;
    let fi = step(
        g,
        names,
        "MatMul",
        "index_float",
        &[Some(split), Some(pw)],
        vec![],
    )?;
    Ok(fi)
}

/// The indices of one channel, `bits` each, as a little-endian bit stream in `bytes`
/// bytes (bit `t` of byte `p` is stream position `8p + t`; index `j` holds positions
/// `j·bits …`, lowest bit first).
fn pack_bits(index: &[u8], bits: u32, bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes];
    for (j, &v) in index.iter().enumerate() {
        for k in 0..bits as usize {
            if (v >> k) & 1 == 1 {
                let pos = j * bits as usize + k;
                out[pos / 8] |= 1 << (pos % 8);
            }
        }
    }
    out
}

/// Name of the table of every byte's bits that packed codebook indices share.
const BIT_TABLE: &str = "codebook.byte_bits";

/// The shared `[256, 8]` uint8 table of each byte's bits (lowest first), made once.
fn bit_table(g: &mut Graph, names: &mut Names) -> Result<ValueId, PassError> {
    let vals: Vec<u8> = (0..256u32)
        .flat_map(|b| (0..8).map(move |t| ((b >> t) & 1) as u8))
        .collect();
    let t = Tensor::U8(ArrayD::from_shape_vec(IxDyn(&[256, 8]), vals).expect("256 × 8"));
    // Reused only when it is this very table (a model's own value may bear the name).
    if let Some(v) = g.value_by_name(BIT_TABLE) {
        if g.const_of(v).and_then(|c| c.to_tensor().ok()).as_ref() == Some(&t) {
            return Ok(v);
        }
    }
    scalar_const(g, names, BIT_TABLE, t)
}

/// A weight's parameters, codes, `(Σ w², Σ (w − ŵ)²)`, shape, and for a blocked grid the
/// scales' shape, axis and block size: what [`write_weight`] writes.
type WeightCodes = (
    Vec<ScaleZp>,
    Codes,
    (f64, f64),
    Vec<usize>,
    Option<(Vec<usize>, usize, usize)>,
);

/// Replaces a float constant by integer values + DequantizeLinear (the float constant
/// is dropped by the caller once no subgraph reads it either); with a codebook grid the
/// integers come from [`write_codebook`]. Also returns `Σ w²` and `Σ (w − ŵ)²`.
#[allow(clippy::too_many_arguments)]
fn quantize_weight(
    g: &mut Graph,
    w: ValueId,
    q: QType,
    axis: Option<i64>,
    mse: bool,
    grid: WeightGrid,
    importance: Option<&[f64]>,
    rounding: Option<&[bool]>,
    names: &mut Names,
) -> Result<WrittenWeight, PassError> {
    let name = g.value(w).name.clone();
    let t = g
        .const_of(w)
        .ok_or_else(|| err(format!("weight '{name}' is not a constant")))?
        .to_tensor()
        .map_err(|e| err(e.to_string()))?;
    let Tensor::F32(a) = &t else {
        return Err(err(format!("weight '{name}' is not f32")));
    };
    if grid.index_bits().is_some() && axis.is_none() {
        return Err(err(format!(
            "weight '{name}': a codebook grid needs per-channel weights"
        )));
    }
    // A blocked weight: its scales `[…]` of the blocks and the axis they run along, which
    // must be its readers' reduction axis (or an embedding table's width).
    let blocked = match grid.block() {
        Some(size) => {
            let b = check_block(&name, a.shape(), axis, size)?;
            if block_axis(g, w) != Some(b) {
                return Err(err(format!(
                    "weight '{name}': blocks of {size} run along the reduction axis of a MatMul/Gemm weight or the width of an embedding table, and its readers do not take it so along axis {b}"
                )));
            }
            let (pshape, _) = block_scale_shape(a.shape(), axis.unwrap_or(0) as usize, size);
            Some((pshape, b, size))
        }
        None => None,
    };
    // Uniform weights in one pass, straight into their integer type (the same codes and
    // sums as below).
    let fast = match grid.is_uniform() {
        true => uniform_codes(a, q, axis, mse, rounding),
        false => None,
    };
    let (params, codes, signal_noise) = match fast {
        Some((params, qt, sn)) => (params, Codes::Tensor(qt), sn),
        None => {
            let coded = code_weight(&name, a, q, axis, mse, grid, importance, rounding)?;
            let ch = param_of(a.shape(), axis, grid);
            let (mut signal, mut noise) = (0f64, 0f64);
            let params = coded.params;
            let mut add = |i: usize, w: f32, c: f64| {
                let p = params[ch(i)];
                let d = ((c - p.zero_point as f64) as f32 * p.scale) as f64;
                signal += (w as f64).powi(2);
                noise += (w as f64 - d).powi(2);
            };
            match a.as_slice() {
                Some(xs) => xs
                    .iter()
                    .zip(&coded.codes)
                    .enumerate()
                    .for_each(|(i, (&w, &c))| add(i, w, c)),
                None => a
                    .iter()
                    .zip(&coded.codes)
                    .enumerate()
                    .for_each(|(i, (&w, &c))| add(i, w, c)),
            }
            let codes = match (coded.codebook, grid.index_bits()) {
                (Some(cb), Some(bits)) => Codes::Codebook(cb, bits),
                _ => Codes::Tensor(int_tensor(q.dtype, a.shape(), &coded.codes)?),
            };
            (params, codes, (signal, noise))
        }
    };
    let shape = a.shape().to_vec();
    drop(t);
    write_weight(
        g,
        w,
        &name,
        q,
        axis,
        (params, codes, signal_noise, shape, blocked),
        names,
    )
}

/// Writes weight `w`'s codes as a constant with its DequantizeLinear, which its readers
/// then read.
fn write_weight(
    g: &mut Graph,
    w: ValueId,
    name: &str,
    q: QType,
    axis: Option<i64>,
    (params, codes, signal_noise, shape, blocked): WeightCodes,
    names: &mut Names,
) -> Result<WrittenWeight, PassError> {
    let n = params.len();
    let pshape: Vec<usize> = match (&blocked, axis) {
        (Some((ps, _, _)), _) => ps.clone(),
        (None, Some(_)) => vec![n],
        (None, None) => vec![],
    };
    let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
    let zps: Vec<i64> = params.iter().map(|p| p.zero_point).collect();
    let scale_t = scale_tensor(&scales, &pshape);
    // Symmetric blocks take the default zero point (0): no input, fewer bytes.
    let zp_t = match &blocked {
        Some(_) if zps.iter().all(|&z| z == 0) => None,
        _ => Some(zp_tensor(q.dtype, &zps, &pshape)?),
    };
    let (dq_axis, block) = match &blocked {
        Some((_, b, size)) => (Some(*b as i64), Some(*size as i64)),
        None => (axis, None),
    };
    let readers = g.consumers(w);
    let (qv, codebook) = match codes {
        Codes::Codebook(cb, bits) => (
            write_codebook(
                g,
                names,
                name,
                &shape,
                axis.expect("checked per channel") as usize,
                bits,
                q.dtype,
                &cb,
            )?,
            Some(cb.0),
        ),
        Codes::Tensor(qt) => {
            let qn = names.fresh(g, &format!("{name}.q"));
            let v = g
                .add_const(&qn, ConstTensor::from_tensor(None, &qt))
                .map_err(|e| err(e.to_string()))?;
            (v, None)
        }
        Codes::Stored(c) => {
            let qn = names.fresh(g, &format!("{name}.q"));
            let v = g.add_const(&qn, c).map_err(|e| err(e.to_string()))?;
            (v, None)
        }
    };
    let made = Made {
        q: g.value(qv).name.clone(),
        q_ty: g.value(qv).ty.clone(),
        ty: g.value(w).ty.clone(),
        scale: scale_t.clone(),
        zp: zp_t.clone(),
        axis: dq_axis,
        block,
    };
    let sv = scalar_const(g, names, &format!("{name}.scale"), scale_t)?;
    let zv = match zp_t {
        Some(z) => Some(scalar_const(g, names, &format!("{name}.zp"), z)?),
        None => None,
    };
    let dq_name = names.fresh(g, &format!("{name}.dq"));
    let dqv = g.add_fresh_value(&dq_name, g.value(w).ty.clone());
    let mut dq = Op::new("DequantizeLinear", &format!("{name}.dequantize"));
    if let Some(a) = dq_axis {
        dq.set_attr("axis", AttrValue::Int(a));
    }
    if let Some(b) = block {
        dq.set_attr("block_size", AttrValue::Int(b));
    }
    if let Some((first, _)) = readers.first() {
        dq.order = g.order_before(*first);
    }
    g.add_op(dq, &[Some(qv), Some(sv), zv], &[Some(dqv)])
        .map_err(|e| err(e.to_string()))?;
    for (o, slot) in readers {
        g.set_input(o, slot, Some(dqv));
    }
    Ok(WrittenWeight {
        chosen: Chosen {
            qtype: q,
            params,
            axis,
        },
        made,
        signal_noise,
        codebook,
    })
}

/// The int32 values, scale and zero point (per channel when `scales` has more than one)
/// bias `name` (float values `t`) is written as, and how many values saturated.
struct BiasCodes {
    q: Tensor,
    scale: Tensor,
    zp: Tensor,
    saturated: usize,
}

fn bias_codes(name: &str, t: &Tensor, scales: &[f32]) -> Result<BiasCodes, PassError> {
    let Tensor::F32(a) = t else {
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
    let (qv, saturated) = quantize_bias(&vals, scales);
    let q =
        Tensor::I32(ArrayD::from_shape_vec(IxDyn(a.shape()), qv).map_err(|e| err(e.to_string()))?);
    let pshape: Vec<usize> = if scales.len() > 1 {
        vec![scales.len()]
    } else {
        vec![]
    };
    Ok(BiasCodes {
        q,
        scale: scale_tensor(scales, &pshape),
        zp: zp_tensor(DType::I32, &vec![0; scales.len()], &pshape)?,
        saturated,
    })
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
    let BiasCodes {
        q: qt,
        scale: scale_t,
        zp: zp_t,
        saturated: sat,
    } = bias_codes(&name, &t, scales)?;
    let readers = g.consumers(b);
    let q_name = names.fresh(g, &format!("{name}.q"));
    let qid = g
        .add_const(&q_name, ConstTensor::from_tensor(None, &qt))
        .map_err(|e| err(e.to_string()))?;
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
        zp: Some(zp_t),
        axis,
        block: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass codes, parameters and sums of `a` are the general road's, bit for bit.
    fn same_as_general(
        a: &ArrayD<f32>,
        q: QType,
        axis: Option<i64>,
        mse: bool,
        rounding: Option<&[bool]>,
    ) {
        let what = format!("{:?} {axis:?} mse {mse} {:?}", q.dtype, a.shape());
        let fast = uniform_codes(a, q, axis, mse, rounding)
            .expect("contiguous f32 values of a supported type");
        let slow = general(a, q, axis, mse, rounding);
        assert_eq!(fast.0, slow.0, "{what}");
        assert_eq!(fast.1, slow.1, "{what}");
        assert_eq!(
            (fast.2 .0.to_bits(), fast.2 .1.to_bits()),
            (slow.2 .0.to_bits(), slow.2 .1.to_bits()),
            "{what}"
        );
    }

    /// The general road: [`code_weight`]'s codes, their sums per element, the tensor.
    fn general(
        a: &ArrayD<f32>,
        q: QType,
        axis: Option<i64>,
        mse: bool,
        rounding: Option<&[bool]>,
    ) -> (Vec<ScaleZp>, Tensor, (f64, f64)) {
        let grid = WeightGrid::Uniform;
        let coded = code_weight("w", a, q, axis, mse, grid, None, rounding).unwrap();
        let ch = channel_of(a.shape(), axis);
        let (mut signal, mut noise) = (0f64, 0f64);
        for (i, (&w, &c)) in a.iter().zip(&coded.codes).enumerate() {
            let p = coded.params[ch(i)];
            let d = ((c - p.zero_point as f64) as f32 * p.scale) as f64;
            signal += (w as f64).powi(2);
            noise += (w as f64 - d).powi(2);
        }
        let t = int_tensor(q.dtype, a.shape(), &coded.codes).unwrap();
        (coded.params, t, (signal, noise))
    }

    #[test]
    fn one_pass_uniform_codes_equal_the_general_road() {
        // Values of mixed magnitudes (some channels much wider than others), and ties.
        let shape = [3usize, 5, 4];
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n)
            .map(|i| {
                let x = ((i * 7919) % 113) as f32 / 17.0 - 3.0;
                if i % 9 == 0 {
                    x * 40.0
                } else if i % 11 == 0 {
                    0.5
                } else {
                    x
                }
            })
            .collect();
        let a = ArrayD::from_shape_vec(IxDyn(&shape), vals).unwrap();
        let up: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
        let mut checked = 0;
        for dtype in [DType::I8, DType::U8, DType::I4, DType::U4] {
            for symmetric in [true, false] {
                for reduce in [false, true] {
                    let Some(q) = QType::new(dtype, symmetric, reduce) else {
                        continue;
                    };
                    for axis in [None, Some(0), Some(1), Some(2)] {
                        for mse in [false, true] {
                            for rounding in [None, Some(&up[..])] {
                                same_as_general(&a, q, axis, mse, rounding);
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked >= 4 * 8 * 4, "{checked}");
        // A weight large enough for its loops to run in parts on several threads: the
        // same codes and sums, bit for bit, on every road through the parts.
        let big = [64usize, 128, 130];
        let nb: usize = big.iter().product();
        assert!(nb >= PARALLEL_ELEMENTS);
        let vals: Vec<f32> = (0..nb)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0 + if i % 13 == 0 { 30.0 } else { 0.0 })
            .collect();
        let b = ArrayD::from_shape_vec(IxDyn(&big), vals).unwrap();
        for (dtype, symmetric, axis) in [
            (DType::I8, true, None),
            (DType::I8, true, Some(0)),
            (DType::I8, false, Some(1)),
            (DType::I8, true, Some(2)),
            (DType::U8, false, Some(2)),
        ] {
            let q = QType::new(dtype, symmetric, false).unwrap();
            same_as_general(&b, q, axis, false, None);
        }
        // A NaN code leaves it to the general road, which names the value.
        let mut bad = a.clone();
        bad[[1, 2, 3]] = f32::NAN;
        let q = QType::new(DType::I8, true, false).unwrap();
        assert!(uniform_codes(&bad, q, Some(1), false, None).is_none());
        // A learned rounding of another shape too.
        assert!(uniform_codes(&a, q, Some(1), false, Some(&up[1..])).is_none());
    }

    #[test]
    fn channels_give_the_channel_of_every_element() {
        for (shape, axis) in [
            (vec![3usize, 5, 4], Some(0i64)),
            (vec![3, 5, 4], Some(1)),
            (vec![3, 5, 4], Some(2)),
            (vec![3, 5, 4], None),
            (vec![7], Some(0)),
            (vec![2, 0, 3], Some(1)),
        ] {
            let ch = channel_of(&shape, axis);
            let seen: Vec<(usize, usize)> = channels(&shape, axis).enumerate().collect();
            let n: usize = shape.iter().product();
            let want: Vec<(usize, usize)> = (0..n).map(|i| (i, ch(i))).collect();
            assert_eq!(seen, want, "{shape:?} {axis:?}");
        }
    }

    #[test]
    fn packed_indices_are_a_little_endian_bit_stream_per_channel() {
        // 3-bit indices 5 (101), 3 (011), 7 (111): bits 1 0 1 1 1 0 1 1 | 1.
        assert_eq!(pack_bits(&[5, 3, 7], 3, 2), vec![0b1101_1101, 0b0000_0001]);
        // 2-bit: four per byte, the first in the lowest bits.
        assert_eq!(
            pack_bits(&[1, 2, 3, 0, 2], 2, 2),
            vec![0b0011_1001, 0b0000_0010]
        );
        // Unpacking as the written ops do gives the indices back.
        let idx: Vec<u8> = (0..37).map(|i| (i * 5 % 8) as u8).collect();
        let bytes = pack_bits(&idx, 3, (37 * 3usize).div_ceil(8));
        let bits: Vec<u8> = bytes
            .iter()
            .flat_map(|b| (0..8).map(move |t| (b >> t) & 1))
            .collect();
        let back: Vec<u8> = bits[..37 * 3]
            .chunks(3)
            .map(|c| c[0] + 2 * c[1] + 4 * c[2])
            .collect();
        assert_eq!(back, idx);
    }

    #[test]
    fn payload_bytes_count_tables_and_packed_indices() {
        let i8 = QType::new(DType::I8, true, false).unwrap();
        let i4 = QType::new(DType::I4, true, false).unwrap();
        // 8 channels × 9 elements.
        let shape = [8, 1, 3, 3];
        assert_eq!(payload_bytes(&shape, Some(0), &i8, WeightGrid::Uniform), 72);
        assert_eq!(payload_bytes(&shape, Some(0), &i4, WeightGrid::Uniform), 36);
        // 16 levels per channel + 72 indices two per byte.
        let k4 = WeightGrid::Kmeans { bits: 4 };
        assert_eq!(payload_bytes(&shape, Some(0), &i8, k4), 8 * 16 + 36);
        // 4 levels per channel + 9 indices of 2 bits: 3 bytes per channel.
        let k2 = WeightGrid::Kmeans { bits: 2 };
        assert_eq!(payload_bytes(&shape, Some(0), &i8, k2), 8 * 4 + 8 * 3);
        // A [64, 8] MatMul weight (channels on axis 1) in blocks of 16 along axis 0:
        // 512 codes two per byte, and 4 × 8 float scales of which 8 replace the
        // per-channel ones.
        let b16 = WeightGrid::Block { size: 16 };
        assert_eq!(
            payload_bytes(&[64, 8], Some(1), &i4, b16),
            256 + 4 * (32 - 8)
        );
        // A [5, 64] table (rows on axis 0) in blocks of 32 along its width.
        let b32 = WeightGrid::Block { size: 32 };
        assert_eq!(
            payload_bytes(&[5, 64], Some(0), &i4, b32),
            160 + 4 * (10 - 5)
        );
    }

    #[test]
    fn a_block_is_consecutive_values_along_the_axis_that_is_not_the_channel() {
        let b = WeightGrid::Block { size: 2 };
        // [4, 3], channels on axis 1: scales [2, 3], element (r, c) → (r / 2) · 3 + c.
        let at = param_of(&[4, 3], Some(1), b);
        let got: Vec<usize> = (0..12).map(at).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]);
        // [3, 4], channels on axis 0: scales [3, 2], element (r, c) → r · 2 + c / 2.
        let at = param_of(&[3, 4], Some(0), b);
        let got: Vec<usize> = (0..12).map(at).collect();
        assert_eq!(got, vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
    }

    use crate::ir::Model;
    use crate::passes::testkit::{attr_i, Builder};

    /// `y = x · W + b` (MatMul, `[64, 8]` weight) and `z = Gemm(x2, V, transB=1)` (`[8, 64]`
    /// weight), weights with rows of very different magnitude.
    fn two_layers() -> Model {
        let mut b = Builder::new(21);
        b.input("x", 1, Some(&[2, 64]))
            .input("x2", 1, Some(&[2, 64]))
            .init("W", &[64, 8], 3, 1.0, 0.0)
            .init("b", &[8], 4, 0.1, 0.0)
            .init("V", &[8, 64], 5, 1.0, 0.0)
            .node("MatMul", "mm", &["x", "W"], &["h"], vec![])
            .node("Add", "add", &["h", "b"], &["y"], vec![])
            .node(
                "Gemm",
                "gemm",
                &["x2", "V"],
                &["z"],
                vec![attr_i("transB", 1)],
            )
            .output("y", 1, Some(&[2, 8]))
            .output("z", 1, Some(&[2, 8]));
        let mut m = b.model();
        // Rows 32.. of W (the second block of every column) are 100 times larger.
        let g = &mut m.graph;
        let w = g.value_by_name("W").unwrap();
        let Ok(Tensor::F32(mut a)) = g.const_of(w).unwrap().to_tensor() else {
            unreachable!()
        };
        a.slice_mut(ndarray::s![32.., ..])
            .mapv_inplace(|v| v * 100.0);
        let t = g.value(w).init.unwrap();
        *g.tensor_mut(t) = ConstTensor::from_tensor(None, &Tensor::F32(a));
        m
    }

    #[test]
    fn weights_written_from_the_memo_are_the_bytes_quantized_again() {
        // Quantized once from a side file, their codes moved to another side file (as the
        // simulation does), then written from there: the same model, byte for byte, as
        // when quantized again; another decision quantizes again.
        let mut m = two_layers();
        let _weights = crate::passes::testkit::to_side_file(&mut m);
        let weight = |axis| Decision::Weight {
            qtype: QType::new(DType::I8, true, true).unwrap(),
            axis,
            mse: false,
            grid: WeightGrid::Uniform,
        };
        let mut plan = Plan::default();
        plan.values.insert("W".into(), weight(Some(1)));
        plan.values.insert("V".into(), weight(None));
        let mut first = m.clone();
        let rep = materialize(&mut first, &plan).unwrap();
        assert_eq!(rep.stored.len(), 2);
        let mut codes = first.clone();
        let names: Vec<String> = rep
            .stored
            .values()
            .map(|st| st.codes_name.clone())
            .collect();
        let side = crate::passes::testkit::values_to_side_file(&mut codes, "codes.data", |n| {
            names.iter().any(|c| c == n)
        });
        let mut memo = WeightMemo::default();
        memo.record(&rep, &codes, std::sync::Arc::new(side));
        assert!(!memo.is_empty() && memo.side_files().len() == 1);
        let bytes = |m: &Model| crate::onnx::model_to_bytes(m).unwrap();
        let mut again = m.clone();
        let rep2 = materialize_with(&mut again, &plan, Some(&memo)).unwrap();
        let g = &again.graph;
        let from_memo = |n: &str| {
            let c = g.const_of(g.value_by_name(n).unwrap()).unwrap();
            matches!(&c.data, TensorData::External(r) if r.location == "codes.data")
        };
        assert!(from_memo("W.q") && from_memo("V.q"));
        assert_eq!(bytes(&again), bytes(&first));
        assert_eq!(rep2.params, rep.params);
        assert_eq!(
            (rep2.weight_signal, rep2.weight_noise),
            (rep.weight_signal, rep.weight_noise)
        );
        plan.values.insert("V".into(), weight(Some(0)));
        let mut other = m.clone();
        materialize_with(&mut other, &plan, Some(&memo)).unwrap();
        let g = &other.graph;
        let v = g.const_of(g.value_by_name("V.q").unwrap()).unwrap();
        assert!(matches!(v.data, TensorData::Raw(_)), "V quantized again");
    }

    fn blocked(axis: i64, size: u32) -> Decision {
        Decision::Weight {
            qtype: QType::new(DType::I4, true, false).unwrap(),
            axis: Some(axis),
            mse: false,
            grid: WeightGrid::Block { size },
        }
    }

    #[test]
    fn blocked_weights_are_dequantize_linear_with_block_size_along_the_reduction_axis() {
        let mut m = two_layers();
        let float: BTreeMap<&str, ArrayD<f32>> = ["W", "V"]
            .into_iter()
            .map(|n| {
                let g = &m.graph;
                let Ok(Tensor::F32(a)) =
                    g.const_of(g.value_by_name(n).unwrap()).unwrap().to_tensor()
                else {
                    unreachable!()
                };
                (n, a)
            })
            .collect();
        let mut plan = Plan::default();
        plan.values.insert("W".into(), blocked(1, 32));
        plan.values.insert("V".into(), blocked(0, 16));
        // A bias on a blocked weight stays float (no per-channel weight scale).
        plan.values.insert(
            "b".into(),
            Decision::Bias {
                input: "x".into(),
                weight: "W".into(),
            },
        );
        materialize(&mut m, &plan).unwrap();
        let g = &m.graph;
        for (name, block_axis, size, blocks) in [("W", 0, 32, [2, 8]), ("V", 1, 16, [8, 4])] {
            let dq = g
                .ops()
                .find(|&o| g.op(o).name.as_deref() == Some(&format!("{name}.dequantize")))
                .unwrap();
            assert_eq!(g.op(dq).attr_int("axis"), Some(block_axis), "{name}");
            assert_eq!(g.op(dq).attr_int("block_size"), Some(size), "{name}");
            // Symmetric: no zero point input.
            assert_eq!(g.input(dq, 2), None, "{name}");
            let konst = |i: usize| {
                g.const_of(g.input(dq, i).unwrap())
                    .unwrap()
                    .to_tensor()
                    .unwrap()
            };
            let (q, scale) = (konst(0), konst(1));
            assert_eq!(q.dtype(), DType::I4, "{name}");
            assert_eq!(scale.shape(), blocks.to_vec(), "{name}");
            let attrs = crate::quant::kernels::DequantizeAttrs {
                axis: block_axis,
                block_size: size,
                ..Default::default()
            };
            let Tensor::F32(d) =
                crate::quant::kernels::dequantize_linear(&q, &scale, None, &attrs).unwrap()
            else {
                unreachable!()
            };
            let Tensor::F32(s) = &scale else {
                unreachable!()
            };
            let w = &float[name];
            let at = param_of(
                w.shape(),
                Some(1 - block_axis),
                WeightGrid::Block { size: size as u32 },
            );
            let mut blockmax = vec![0f32; s.len()];
            for (i, v) in w.iter().enumerate() {
                blockmax[at(i)] = blockmax[at(i)].max(v.abs());
            }
            for (i, (&v, &r)) in w.iter().zip(d.iter()).enumerate() {
                // Each block's own scale, max |w| / 7, and round to nearest on it.
                let step = s.as_slice().unwrap()[at(i)];
                let want = blockmax[at(i)] / 7.0;
                assert!(
                    (step - want).abs() <= 1e-6 * want,
                    "{name}[{i}]: {step} vs {want}"
                );
                assert!(
                    (v - r).abs() <= step / 2.0 * 1.0001,
                    "{name}[{i}]: {v} vs {r}"
                );
            }
        }
        let b = g.value_by_name("b").unwrap();
        assert!(g.const_of(b).is_some_and(|c| c.dtype == DType::F32));
    }

    #[test]
    fn a_block_that_does_not_divide_or_a_reader_off_the_reduction_axis_is_refused() {
        let mut plan = Plan::default();
        plan.values.insert("W".into(), blocked(1, 48));
        let e = materialize(&mut two_layers(), &plan).unwrap_err();
        assert!(
            e.what
                .contains("weight 'W': a block size of 48 does not divide its axis 0"),
            "{e}"
        );
        // V read by Gemm with transB along axis 1: channels on axis 1 would block axis 0.
        let mut plan = Plan::default();
        plan.values.insert("V".into(), blocked(1, 8));
        let e = materialize(&mut two_layers(), &plan).unwrap_err();
        assert!(
            e.what
                .contains("weight 'V': blocks of 8 run along the reduction axis"),
            "{e}"
        );
    }
}
