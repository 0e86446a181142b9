//! The switchable simulation model used by sensitivity analysis and the precision search.
//!
//! Starting from a materialised 8-bit model, every activation `QuantizeLinear →
//! DequantizeLinear` pair becomes one fake quantization whose parameters are model inputs,
//! one set per unit (`exec::fake_quant`, domain `qrange`):
//! ```text
//! dq = QrangeFakeQuant(x, off, S, Z, L, H, ON)
//!    = ON ? (min(max(round_half_even(x / S) + Z, L), H) − Z) · S : off
//! ```
//! The division, rounding, clamp and `(q − Z)·S` are the ONNX definitions of
//! QuantizeLinear and DequantizeLinear evaluated in f32, so a unit switched on with 8-bit
//! (or 16-bit) parameters computes what the materialised Q/DQ pair computes, and a unit
//! switched off passes its value through (`off`: through its folded Relu/Clip or Div/Mul,
//! if any). A root with a Div/Mul folded into it quantizes with its own scale
//! (`<prefix>.qscale`, [`ScaleFold::quantize_scale`] of the unit's scale), as written.
//! Biases may also be inputs ([`SimSources::bias_inputs`]), so the parameters of another
//! choice of ranges ([`RangeParams`]) run that choice's written model exactly. Weights
//! read by a node whose activation input is not 8-bit switch to the full int8 grid, and
//! that node's bias to float, as `tune::apply` does for the written model.
//!
//! The codes of every DequantizeLinear of a constant weight or table of at least
//! [`SIDE_FILE_ELEMENTS`] elements move to a temporary side file (`codes_to_side_file`;
//! removed with the last clone of the [`SimModel`], and on SIGINT/SIGTERM), and the engine
//! dequantizes them once, with the kernel its own DequantizeLinear runs, as it loads the
//! model (`exec::folded`): it holds each weight once, in float, as in a plain float run.
//! Left in the model with inline codes, a DequantizeLinear too large for the engine's
//! constant folding (a float weight is four times its 8-bit form) would be computed, and
//! the result packed for the matrix product, on every run of every configuration on each
//! thread. The values are the same bits either way. Any other external data of the model
//! is copied beside the codes (the engine reads every side file from one folder).

use super::{Precision, TuneError, Unit};
use crate::data::Sample;
use crate::ir::{DType, Dim, Graph, Model, Op, Tensor, Value, ValueId, ValueType};
use crate::quant::params::{scale_zp, QType, ScaleFold};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

/// Scale, zero point and clamp bounds of one unit at one precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UnitParams {
    pub scale: f32,
    pub zero_point: f32,
    pub qmin: f32,
    pub qmax: f32,
}

impl UnitParams {
    pub fn new(lo: f32, hi: f32, q: &QType) -> UnitParams {
        let p = scale_zp(lo, hi, q);
        UnitParams {
            scale: p.scale,
            zero_point: p.zero_point as f32,
            qmin: q.qmin as f32,
            qmax: q.qmax as f32,
        }
    }
}

/// The simulation model and how to feed it.
#[derive(Clone, Debug)]
pub struct SimModel {
    pub model: Model,
    /// Input-name prefix per unit (`<prefix>.scale`, `.zp`, `.lo`, `.hi`, `.on`).
    prefixes: Vec<String>,
    /// (8-bit, 16-bit) parameters per unit.
    pub params: Vec<(UnitParams, UnitParams)>,
    /// Per unit: the Div/Mul folded into its root's quantization (`<prefix>.qscale` input).
    scale_folds: Vec<Option<ScaleFold>>,
    /// Weight switches: input name of the switch and the unit whose precision sets it
    /// (full int8 grid unless that unit is 8-bit).
    weight_switches: Vec<(String, usize)>,
    /// Bias switches: input name and the unit whose precision sets it (int32 when that
    /// unit is 8-bit, float otherwise).
    bias_switches: Vec<(String, usize)>,
    /// 4-bit weight switches: input name and the weight it switches.
    w4_switches: Vec<(String, String)>,
    /// Bias inputs: input name, the bias it stands for, and its value in the model the
    /// simulation was built from.
    bias_values: Vec<(String, String, Tensor)>,
    /// The side file of the dequantized weights, while any clone of the model needs it.
    side_file: Option<Arc<crate::fsx::Scratch>>,
}

/// Replaces the readers of `base` by `Where(on, alt, base)` with `alt` the output of a
/// DequantizeLinear whose constant inputs are copied from `src_op` of `src`; returns the
/// switch input's name.
fn add_dq_switch(
    g: &mut Graph,
    base: ValueId,
    src: &Graph,
    src_op: crate::ir::OpId,
    tag: &str,
    w: &str,
    reuse: Option<&str>,
) -> Result<String, TuneError> {
    let other = |w: String| TuneError::Other(format!("simulation model: {w}"));
    let mut ins = Vec::new();
    for slot in 0..3 {
        // The zero point is optional (symmetric blocks have none).
        let Some(v) = src.input(src_op, slot) else {
            if slot == 2 {
                ins.push(None);
                continue;
            }
            return Err(other(format!("'{w}' dequantize has no input {slot}")));
        };
        let c = src
            .const_of(v)
            .cloned()
            .ok_or_else(|| other(format!("'{w}' dequantize input {slot} is not a constant")))?;
        let name = g.fresh_name(&format!("{w}.{tag}.{slot}"));
        ins.push(Some(
            g.add_const(&name, c).map_err(|e| other(e.to_string()))?,
        ));
    }
    let readers = g.consumers(base);
    let ty = g.value(base).ty.clone();
    let mut op = Op::new("DequantizeLinear", &g.fresh_name(&format!("{w}.{tag}.dq")));
    for attr in ["axis", "block_size"] {
        if let Some(a) = src.op(src_op).attr(attr) {
            op.set_attr(attr, a.clone());
        }
    }
    let alt = g.add_fresh_value(&format!("{w}.{tag}.dq"), ty.clone());
    g.add_op(op, &ins, &[Some(alt)])
        .map_err(|e| other(e.to_string()))?;
    let (on_name, on) = match reuse.and_then(|n| g.value_by_name(n).map(|v| (n, v))) {
        Some((n, v)) => (n.to_string(), v),
        None => {
            let n = g.fresh_name(&format!("qrange.sim.w.{w}.{tag}"));
            let v = scalar_input(g, &n, DType::Bool)?;
            (n, v)
        }
    };
    let sw = g.add_fresh_value(&format!("{w}.{tag}.sim"), ty);
    g.add_op(
        Op::new("Where", &g.fresh_name(&format!("{w}.{tag}.where"))),
        &[Some(on), Some(alt), Some(base)],
        &[Some(sw)],
    )
    .map_err(|e| other(e.to_string()))?;
    for (o, slot) in readers {
        g.set_input(o, slot, Some(sw));
    }
    Ok(on_name)
}

fn scalar_input(g: &mut Graph, name: &str, dtype: DType) -> Result<ValueId, TuneError> {
    let v = g
        .add_value(Value {
            name: name.to_string(),
            ty: Some(ValueType::Tensor {
                dtype,
                shape: Some(Vec::<Dim>::new()),
            }),
            init: None,
            carry: Default::default(),
        })
        .map_err(|e| TuneError::Other(format!("simulation model: {e}")))?;
    g.inputs.push(v);
    Ok(v)
}

/// The DequantizeLinear that materialisation named after `value` (`<value>.dequantize`).
fn dequantize_op(g: &Graph, value: &str) -> Option<crate::ir::OpId> {
    let name = format!("{value}.dequantize");
    g.ops()
        .find(|o| g.op(*o).name.as_deref() == Some(name.as_str()))
}

/// The value of bias `bias`'s DequantizeLinear (`<bias>.dequantize`) in a materialised
/// model, computed by the same kernel the engine runs.
pub fn dequantized_bias(m: &Model, bias: &str) -> Result<Tensor, TuneError> {
    let g = &m.graph;
    let dq = dequantize_op(g, bias).ok_or_else(|| {
        TuneError::Other(format!("simulation model: bias '{bias}': not dequantized"))
    })?;
    dequantized(g, dq, &format!("bias '{bias}'"))
}

/// The output of DequantizeLinear `dq`, whose inputs are constants, computed by the same
/// kernel the engine runs; `what` names it in errors.
fn dequantized(g: &Graph, dq: crate::ir::OpId, what: &str) -> Result<Tensor, TuneError> {
    let other = |w: &str| TuneError::Other(format!("simulation model: {what}: {w}"));
    let input = |i: usize| -> Result<Option<Tensor>, TuneError> {
        match g.input(dq, i) {
            None => Ok(None),
            Some(v) => {
                let c = g
                    .const_of(v)
                    .ok_or_else(|| other("input is not constant"))?;
                c.to_tensor().map(Some).map_err(|e| other(&e.to_string()))
            }
        }
    };
    let x = input(0)?.ok_or_else(|| other("no input"))?;
    let scale = input(1)?.ok_or_else(|| other("no scale"))?;
    let zp = input(2)?;
    let attrs = crate::quant::kernels::DequantizeAttrs::of(g.op(dq));
    crate::quant::kernels::dequantize_linear(&x, &scale, zp.as_ref(), &attrs)
        .map_err(|e| other(&e.to_string()))
}

/// The DequantizeLinear ops of constants with more than `above` elements whose output is
/// not a graph output.
fn constant_dequantizes(g: &Graph, above: usize) -> Vec<crate::ir::OpId> {
    let outputs: std::collections::BTreeSet<ValueId> = g.outputs.iter().copied().collect();
    g.ops()
        .filter(|&o| {
            let op = g.op(o);
            op.op_type == "DequantizeLinear"
                && op.attr("output_dtype").is_none()
                && g.outputs_of(o).len() == 1
                && g.output(o, 0).is_some_and(|y| !outputs.contains(&y))
                && g.inputs_of(o)
                    .into_iter()
                    .flatten()
                    .all(|v| g.const_of(v).is_some())
                && g.input(o, 0)
                    .and_then(|v| g.const_of(v))
                    .is_some_and(|t| t.numel() > above)
        })
        .collect()
}

/// Elements from which [`SimModel::build`] moves a constant DequantizeLinear's codes to its
/// side file, for the engine to dequantize as it loads the model (smaller ones it folds
/// once itself).
pub const SIDE_FILE_ELEMENTS: usize = 1 << 14;

#[cfg(test)]
thread_local! {
    /// Set by tests to build the simulation with every DequantizeLinear left to the
    /// engine, the reference the side file is compared with.
    pub(crate) static LEAVE_DEQUANTIZE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Name of the simulation's side file in its folder.
const SIDE_FILE: &str = "simulation.data";

/// Moves the codes of every DequantizeLinear of constants with at least `from` elements
/// into a new temporary side file, which the constant then references (the engine
/// dequantizes them as it loads the model, `exec::folded`), and any other external data
/// of `g` into the same file. Returns the side file (`None` when there was nothing to
/// move).
fn codes_to_side_file(
    g: &mut Graph,
    from: usize,
) -> Result<Option<Arc<crate::fsx::Scratch>>, TuneError> {
    use crate::ir::{ExternalRef, TensorData};
    let ops = constant_dequantizes(g, from.saturating_sub(1));
    if ops.is_empty() {
        return Ok(None);
    }
    let io = |e: std::io::Error| sim_error(format!("temporary side file: {e}"));
    let (scratch, file) = crate::fsx::scratch(SIDE_FILE).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut at = 0u64;
    let external = |start: u64, len: u64| {
        TensorData::External(ExternalRef {
            location: SIDE_FILE.to_string(),
            offset: Some(start),
            length: Some(len),
            other: Vec::new(),
            base_dir: scratch.dir().to_path_buf(),
            file: scratch.file().to_path_buf(),
            start,
            len,
        })
    };
    for &o in &ops {
        let Some(tid) = g.input(o, 0).and_then(|x| g.value(x).init) else {
            continue;
        };
        let c = g.tensor_mut(tid);
        if let TensorData::External(_) = c.data {
            continue;
        }
        if !matches!(c.data, TensorData::Raw(_)) {
            let t = c
                .to_tensor()
                .map_err(|e| sim_error(format!("codes of '{:?}': {e}", c.name)))?;
            c.data = crate::ir::ConstTensor::from_tensor(None, &t).data;
        }
        if let TensorData::Raw(raw) = &c.data {
            out.write_all(raw).map_err(io)?;
            let len = raw.len() as u64;
            c.data = external(at, len);
            c.was_external = true;
            at += len;
        }
    }
    // The engine reads every side file from one folder: other external data moves in too.
    let here = scratch.dir().to_path_buf();
    for v in g.values().collect::<Vec<_>>() {
        let Some(tid) = g.value(v).init else { continue };
        let TensorData::External(r) = &g.tensor(tid).data else {
            continue;
        };
        if r.base_dir == here {
            continue;
        }
        let len = r.len;
        r.copy_to(&mut out).map_err(|e| match e {
            Ok(e) => io(e),
            Err(what) => sim_error(what),
        })?;
        g.tensor_mut(tid).data = external(at, len);
        at += len;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    drop(file);
    Ok(Some(Arc::new(scratch)))
}

/// The models and switch lists a [`SimModel`] is built from.
pub struct SimSources<'a> {
    /// The model before materialisation: a unit with a folded Relu/Clip or Div/Mul applies
    /// that op when switched off.
    pub prepared: &'a Model,
    /// The plan materialised with 8-bit activations.
    pub q: &'a Model,
    /// The same plan with full-grid int8 weights.
    pub full: &'a Model,
    /// Weights (with their unit) to switch between the reduced and the full grid; empty
    /// when the grids are the same.
    pub weights: &'a [(String, usize)],
    /// Biases with their unit and weight (int32 when the unit is 8-bit, else float).
    pub biases: &'a [(String, usize, String)],
    /// The same plan with the `narrow_weights` on 4 bits.
    pub narrow: Option<&'a Model>,
    pub narrow_weights: &'a [String],
    /// Quantized biases whose dequantized values become model inputs
    /// ([`RangeParams::biases`]): their int32 rounding follows the input scale, so another
    /// choice of ranges changes them.
    pub bias_inputs: &'a [String],
}

/// 8-bit parameters of every unit and the dequantized biases they imply: the written
/// model for one choice of ranges ([`SimModel::feed_params`]).
#[derive(Clone, Debug, Default)]
pub struct RangeParams {
    /// One per unit, in unit order.
    pub units: Vec<UnitParams>,
    /// 16-bit parameters, one per unit (empty: the simulation's own).
    pub wide: Vec<UnitParams>,
    /// Dequantized value of each of the model's bias inputs, by bias name.
    pub biases: BTreeMap<String, Tensor>,
}

/// A folded op (Relu/Clip, Div/Mul by a constant) as the simulation re-applies it when its
/// unit is off: the op, its inputs (constants copied into the simulation, `None` at the
/// data input) and the data input's slot.
type Refold = (Op, Vec<Option<ValueId>>, usize);

fn sim_error(w: String) -> TuneError {
    TuneError::Other(format!("simulation model: {w}"))
}

/// The op keyed `key` of the prepared model, with its constants copied into `g`.
fn refold(g: &mut Graph, prepared: &Model, key: &str) -> Result<Refold, TuneError> {
    let pg = &prepared.graph;
    let o = pg
        .ops()
        .find(|o| crate::quant::plan::op_key(pg, *o) == *key)
        .ok_or_else(|| sim_error(format!("folded op '{key}' not found")))?;
    let mut ins = Vec::new();
    let mut data = None;
    for (slot, v) in pg.inputs_of(o).into_iter().enumerate() {
        match v {
            None => ins.push(None),
            Some(v) => match pg.const_of(v).cloned() {
                Some(c) => {
                    let name = g.fresh_name(&format!("{}.sim", pg.value(v).name));
                    ins.push(Some(
                        g.add_const(&name, c)
                            .map_err(|e| sim_error(e.to_string()))?,
                    ));
                }
                None if data.is_none() => {
                    data = Some(slot);
                    ins.push(None);
                }
                None => {
                    return Err(sim_error(format!(
                        "folded op '{key}' has a second non-constant input"
                    )))
                }
            },
        }
    }
    let data = data.ok_or_else(|| sim_error(format!("folded op '{key}' has no data input")))?;
    let mut op = pg.op(o).clone();
    op.order = Op::UNORDERED;
    Ok((op, ins, data))
}

/// The parameter inputs of one unit: scale, zero point, bounds, switch, and the
/// QuantizeLinear scale of a root with a Div/Mul folded into it.
struct UnitInputs {
    s: ValueId,
    z: ValueId,
    lo: ValueId,
    hi: ValueId,
    on: ValueId,
    qscale: Option<ValueId>,
}

impl UnitInputs {
    fn add(g: &mut Graph, prefix: &str, u: &Unit) -> Result<UnitInputs, TuneError> {
        Ok(UnitInputs {
            s: scalar_input(g, &format!("{prefix}.scale"), DType::F32)?,
            z: scalar_input(g, &format!("{prefix}.zp"), DType::F32)?,
            lo: scalar_input(g, &format!("{prefix}.lo"), DType::F32)?,
            hi: scalar_input(g, &format!("{prefix}.hi"), DType::F32)?,
            on: scalar_input(g, &format!("{prefix}.on"), DType::Bool)?,
            qscale: match u.scale_fold {
                Some(_) => Some(scalar_input(g, &format!("{prefix}.qscale"), DType::F32)?),
                None => None,
            },
        })
    }
}

/// Replaces `member`'s QuantizeLinear → DequantizeLinear pair (`qop`) by the unit's fake
/// quantization; the root of a unit with a folded op re-applies it when switched off.
fn switch_member(
    g: &mut Graph,
    qop: crate::ir::OpId,
    member: &str,
    root: bool,
    fold: Option<&Refold>,
    p: &UnitInputs,
) -> Result<(), TuneError> {
    let x = g
        .input(qop, 0)
        .ok_or_else(|| sim_error(format!("'{member}.quantize' has no input")))?;
    let qv = g
        .output(qop, 0)
        .ok_or_else(|| sim_error(format!("'{member}.quantize' has no output")))?;
    let readers = g.consumers(qv);
    let [(dqop, 0)] = readers.as_slice() else {
        return Err(sim_error(format!(
            "'{member}.quantize' is not read by exactly one DequantizeLinear"
        )));
    };
    let dqop = *dqop;
    let dqv = g
        .output(dqop, 0)
        .ok_or_else(|| sim_error(format!("'{member}' dequantize has no output")))?;
    let ty = g.value(dqv).ty.clone();
    g.remove_op(dqop);
    g.remove_op(qop);
    g.remove_value(qv);
    let off = match fold {
        Some((op, ins, data)) if root => {
            let y = g.add_fresh_value(&format!("{member}.sim.off"), ty.clone());
            let mut op = op.clone();
            op.name = Some(g.fresh_name(&format!("{member}.sim.fold")));
            let mut ins = ins.clone();
            ins[*data] = Some(x);
            g.add_op(op, &ins, &[Some(y)])
                .map_err(|e| sim_error(e.to_string()))?;
            y
        }
        _ => x,
    };
    let mut fq = Op::new(
        crate::exec::fake_quant::FAKE_QUANT_OP,
        &g.fresh_name(&format!("{member}.sim.fake_quant")),
    );
    fq.domain = Some(crate::exec::fake_quant::FAKE_QUANT_DOMAIN.to_string());
    let mut ins = vec![
        Some(x),
        Some(off),
        Some(p.s),
        Some(p.z),
        Some(p.lo),
        Some(p.hi),
        Some(p.on),
    ];
    if let (true, Some(qs)) = (root, p.qscale) {
        ins.push(Some(qs));
    }
    g.add_op(fq, &ins, &[Some(dqv)])
        .map_err(|e| sim_error(e.to_string()))?;
    Ok(())
}

/// Every unit's Q/DQ pairs made switchable; returns each unit's input-name prefix.
fn switch_units(g: &mut Graph, prepared: &Model, units: &[Unit]) -> Result<Vec<String>, TuneError> {
    let quantize_ops: BTreeMap<String, crate::ir::OpId> = g
        .ops()
        .filter(|o| g.op(*o).op_type == "QuantizeLinear")
        .filter_map(|o| g.op(o).name.clone().map(|n| (n, o)))
        .collect();
    let mut prefixes = Vec::with_capacity(units.len());
    for (i, u) in units.iter().enumerate() {
        let prefix = g.fresh_name(&format!("qrange.sim.{i}"));
        let inputs = UnitInputs::add(g, &prefix, u)?;
        prefixes.push(prefix);
        // The folded op (Relu/Clip, Div/Mul by a constant), re-applied when the unit is
        // off: its data input (the one that is not a constant) is the unit's value.
        let fold = match &u.folded_op {
            None => None,
            Some(key) => Some(refold(g, prepared, key)?),
        };
        for member in &u.members {
            let Some(&qop) = quantize_ops.get(&format!("{member}.quantize")) else {
                continue; // removed by a fold, or not materialised
            };
            switch_member(g, qop, member, member == &u.root, fold.as_ref(), &inputs)?;
        }
    }
    Ok(prefixes)
}

/// 4-bit switches of the `narrow_weights` (from their DequantizeLinear in `q4`): each
/// switch's input name and weight.
fn w4_switches(
    g: &mut Graph,
    q4: &Model,
    narrow_weights: &[String],
) -> Result<Vec<(String, String)>, TuneError> {
    let mut out = Vec::new();
    for w in narrow_weights {
        let (Some(reduced), Some(four)) = (dequantize_op(g, w), dequantize_op(&q4.graph, w)) else {
            continue;
        };
        let Some(dq) = g.output(reduced, 0) else {
            continue;
        };
        let on = add_dq_switch(g, dq, &q4.graph, four, "w4", w, None)?;
        out.push((on, w.clone()));
    }
    Ok(out)
}

/// Full-grid switches of the reduced-range `weights` (from their DequantizeLinear in
/// `full`): each switch's input name and unit.
fn weight_switches(
    g: &mut Graph,
    full: &Model,
    weights: &[(String, usize)],
) -> Result<Vec<(String, usize)>, TuneError> {
    let mut out = Vec::new();
    for (w, unit) in weights {
        let (Some(reduced), Some(wide)) = (dequantize_op(g, w), dequantize_op(&full.graph, w))
        else {
            continue;
        };
        let Some(dq7) = g.output(reduced, 0) else {
            continue;
        };
        let on = add_dq_switch(g, dq7, &full.graph, wide, "full", w, None)?;
        out.push((on, *unit));
    }
    Ok(out)
}

/// Int32/float switches of the `biases` (float from the prepared model); a bias whose
/// weight has a 4-bit switch also switches to its 4-bit int32 form with it.
fn bias_switches(
    g: &mut Graph,
    src: &SimSources,
    w4_switches: &[(String, String)],
) -> Result<Vec<(String, usize)>, TuneError> {
    let mut out = Vec::new();
    for (b, unit, weight) in src.biases {
        let Some(dq) = dequantize_op(g, b) else {
            continue;
        };
        let pg = &src.prepared.graph;
        let Some(c) = pg.value_by_name(b).and_then(|v| pg.const_of(v)).cloned() else {
            continue;
        };
        let Some(dqv) = g.output(dq, 0) else { continue };
        let readers = g.consumers(dqv);
        let ty = g.value(dqv).ty.clone();
        let fv = g
            .add_const(&g.fresh_name(&format!("{b}.float")), c)
            .map_err(|e| sim_error(e.to_string()))?;
        let on_name = g.fresh_name(&format!("qrange.sim.b.{b}.int32"));
        let on = scalar_input(g, &on_name, DType::Bool)?;
        let sw = g.add_fresh_value(&format!("{b}.sim"), ty);
        g.add_op(
            Op::new("Where", &g.fresh_name(&format!("{b}.sim.where"))),
            &[Some(on), Some(dqv), Some(fv)],
            &[Some(sw)],
        )
        .map_err(|e| sim_error(e.to_string()))?;
        for (o, slot) in readers {
            g.set_input(o, slot, Some(sw));
        }
        out.push((on_name, *unit));
        // With its weight on 4 bits, the int32 bias has the 4-bit scale.
        let w4_on = w4_switches
            .iter()
            .find(|(_, w)| w == weight)
            .map(|(on, _)| on.clone());
        if let (Some(on), Some(q4)) = (w4_on, src.narrow) {
            let q4g = &q4.graph;
            if let Some(b4) = dequantize_op(q4g, b) {
                add_dq_switch(g, dqv, q4g, b4, "w4", b, Some(&on))?;
            }
        }
    }
    Ok(out)
}

/// The `bias_inputs`' dequantized values made model inputs: each input's name, the bias
/// and its value in `q`.
fn bias_values(
    g: &mut Graph,
    q: &Model,
    bias_inputs: &[String],
) -> Result<Vec<(String, String, Tensor)>, TuneError> {
    let mut out = Vec::new();
    for b in bias_inputs {
        let Some(dq) = dequantize_op(g, b) else {
            continue;
        };
        let Some(dqv) = g.output(dq, 0) else { continue };
        let value = dequantized_bias(q, b)?;
        let name = g.fresh_name(&format!("qrange.sim.bias.{b}"));
        let v = g
            .add_value(Value {
                name: name.clone(),
                ty: g.value(dqv).ty.clone(),
                init: None,
                carry: Default::default(),
            })
            .map_err(|e| sim_error(e.to_string()))?;
        g.inputs.push(v);
        g.replace_all_uses(dqv, v);
        out.push((name, b.clone(), value));
    }
    Ok(out)
}

impl SimModel {
    /// Builds the simulation from the sources and the units with their (8-bit, 16-bit)
    /// parameters.
    pub fn build(
        src: &SimSources,
        units: &[Unit],
        params: Vec<(UnitParams, UnitParams)>,
    ) -> Result<SimModel, TuneError> {
        let mut m = src.q.clone();
        let g = &mut m.graph;
        let prefixes = switch_units(g, src.prepared, units)?;
        // 4-bit weights first: the full-grid switch below then feeds their `else` input.
        let w4_switches = match src.narrow {
            Some(q4) => w4_switches(g, q4, src.narrow_weights)?,
            None => Vec::new(),
        };
        let weight_switches = weight_switches(g, src.full, src.weights)?;
        let bias_switches = bias_switches(g, src, &w4_switches)?;
        let bias_values = bias_values(g, src.q, src.bias_inputs)?;
        crate::passes::util::remove_dead(g);
        #[cfg(test)]
        let leave = LEAVE_DEQUANTIZE.with(|c| c.get());
        #[cfg(not(test))]
        let leave = false;
        let side_file = match leave {
            true => None,
            false => codes_to_side_file(g, SIDE_FILE_ELEMENTS)?,
        };
        Ok(SimModel {
            side_file,
            scale_folds: units.iter().map(|u| u.scale_fold).collect(),
            bias_values,
            w4_switches,
            bias_switches,
            model: m,
            prefixes,
            params,
            weight_switches,
        })
    }

    /// The temporary side file holding the large weights' codes, if any.
    pub fn side_file(&self) -> Option<&std::path::Path> {
        self.side_file.as_deref().map(|s| s.file())
    }

    /// The side file itself (kept while any holder of it lives).
    pub fn side_file_handle(&self) -> Option<Arc<crate::fsx::Scratch>> {
        self.side_file.clone()
    }

    /// Weights that can be switched to 4 bits.
    pub fn narrow_weights(&self) -> Vec<String> {
        self.w4_switches.iter().map(|(_, w)| w.clone()).collect()
    }

    /// `sample` plus the parameter inputs for one precision per unit, with the weights in
    /// `w4` on 4 bits.
    pub fn feed(
        &self,
        sample: &Sample,
        config: &[Precision],
        w4: &std::collections::BTreeSet<String>,
    ) -> Sample {
        self.feed_with(sample, config, w4, None)
    }

    /// `sample` plus the inputs of every unit at 8 bits with the parameters and biases of
    /// `params` instead of the model's own: the written model for another choice of ranges.
    /// A bias missing from `params` keeps the value of the model the simulation was built
    /// from.
    pub fn feed_params(&self, sample: &Sample, params: &RangeParams) -> Sample {
        let all8 = vec![Precision::A8; self.params.len()];
        self.feed_with(sample, &all8, &Default::default(), Some(params))
    }

    /// [`SimModel::feed`] with the parameters and biases of `params` (ranges from other
    /// statistics) in place of the simulation's own, for every precision.
    pub fn feed_ranges(
        &self,
        sample: &Sample,
        config: &[Precision],
        w4: &std::collections::BTreeSet<String>,
        params: &RangeParams,
    ) -> Sample {
        self.feed_with(sample, config, w4, Some(params))
    }

    /// Biases that are model inputs.
    pub fn bias_inputs(&self) -> impl Iterator<Item = &str> {
        self.bias_values.iter().map(|(_, b, _)| b.as_str())
    }

    fn feed_with(
        &self,
        sample: &Sample,
        config: &[Precision],
        w4: &std::collections::BTreeSet<String>,
        params: Option<&RangeParams>,
    ) -> Sample {
        let mut s = sample.clone();
        let scalar = |v: f32| Tensor::F32(ndarray::arr0(v).into_dyn());
        for (i, ((prefix, (p8, p16)), prec)) in self
            .prefixes
            .iter()
            .zip(&self.params)
            .zip(config)
            .enumerate()
        {
            let p8 = params.and_then(|p| p.units.get(i)).unwrap_or(p8);
            let p16 = params.and_then(|p| p.wide.get(i)).unwrap_or(p16);
            let p = if *prec == Precision::A16 { p16 } else { p8 };
            s.insert(format!("{prefix}.scale"), scalar(p.scale));
            if let Some(f) = self.scale_folds.get(i).copied().flatten() {
                // The root's QuantizeLinear absorbs the folded constant.
                s.insert(
                    format!("{prefix}.qscale"),
                    scalar(f.quantize_scale(p.scale)),
                );
            }
            s.insert(format!("{prefix}.zp"), scalar(p.zero_point));
            s.insert(format!("{prefix}.lo"), scalar(p.qmin));
            s.insert(format!("{prefix}.hi"), scalar(p.qmax));
            s.insert(
                format!("{prefix}.on"),
                Tensor::Bool(ndarray::arr0(*prec != Precision::Float).into_dyn()),
            );
        }
        for (name, w) in &self.w4_switches {
            s.insert(
                name.clone(),
                Tensor::Bool(ndarray::arr0(w4.contains(w)).into_dyn()),
            );
        }
        for (name, unit) in &self.bias_switches {
            let int = config.get(*unit).is_none_or(|p| *p == Precision::A8);
            s.insert(name.clone(), Tensor::Bool(ndarray::arr0(int).into_dyn()));
        }
        for (name, unit) in &self.weight_switches {
            let full = config.get(*unit).is_some_and(|p| *p != Precision::A8);
            s.insert(name.clone(), Tensor::Bool(ndarray::arr0(full).into_dyn()));
        }
        for (name, b, value) in &self.bias_values {
            let v = params.and_then(|p| p.biases.get(b)).unwrap_or(value);
            s.insert(name.clone(), v.clone());
        }
        s
    }
}
