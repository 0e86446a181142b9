//! The switchable simulation model used by sensitivity analysis and the precision search.
//!
//! Starting from a materialised 8-bit model, every activation `QuantizeLinear →
//! DequantizeLinear` pair becomes the same computation in float ops whose parameters are
//! model inputs, one set per unit:
//! ```text
//! y  = Mul(Sub(Min(Max(Add(Round(Div(x, S)), Z), L), H), Z), S)
//! dq = Where(ON, y, x)
//! ```
//! `Div`, `Round` (half to even), the clamp and `(q − Z)·S` are the ONNX definitions of
//! QuantizeLinear and DequantizeLinear evaluated in f32, so a unit switched on with 8-bit
//! (or 16-bit) parameters computes what the materialised Q/DQ pair computes, and a unit
//! switched off passes its value through (through its folded Relu/Clip, if any). Weights
//! read by a node whose activation input is not 8-bit switch to the full int8 grid, and
//! that node's bias to float, as `tune::apply` does for the written model.

use super::{Precision, TuneError, Unit};
use crate::data::Sample;
use crate::ir::{DType, Dim, Graph, Model, Op, Tensor, Value, ValueId, ValueType};
use crate::quant::params::{scale_zp, QType};
use std::collections::BTreeMap;

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
    /// Weight switches: input name of the switch and the unit whose precision sets it
    /// (full int8 grid unless that unit is 8-bit).
    weight_switches: Vec<(String, usize)>,
    /// Bias switches: input name and the unit whose precision sets it (int32 when that
    /// unit is 8-bit, float otherwise).
    bias_switches: Vec<(String, usize)>,
    /// 4-bit weight switches: input name and the weight it switches.
    w4_switches: Vec<(String, String)>,
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
        let c = src
            .input(src_op, slot)
            .and_then(|v| src.const_of(v).cloned())
            .ok_or_else(|| other(format!("'{w}' dequantize input {slot} is not a constant")))?;
        let name = g.fresh_name(&format!("{w}.{tag}.{slot}"));
        ins.push(Some(
            g.add_const(&name, c).map_err(|e| other(e.to_string()))?,
        ));
    }
    let readers = g.consumers(base);
    let ty = g.value(base).ty.clone();
    let mut op = Op::new("DequantizeLinear", &g.fresh_name(&format!("{w}.{tag}.dq")));
    if let Some(a) = src.op(src_op).attr("axis") {
        op.set_attr("axis", a.clone());
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

/// The models and switch lists a [`SimModel`] is built from.
pub struct SimSources<'a> {
    /// The model before materialisation: a unit with a folded Relu/Clip applies that op
    /// when switched off.
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
}

impl SimModel {
    /// Builds the simulation from the sources and the units with their (8-bit, 16-bit)
    /// parameters.
    pub fn build(
        src: &SimSources,
        units: &[Unit],
        params: Vec<(UnitParams, UnitParams)>,
    ) -> Result<SimModel, TuneError> {
        let SimSources {
            prepared,
            q,
            full,
            weights,
            biases,
            narrow,
            narrow_weights,
        } = *src;
        let mut m = q.clone();
        let g = &mut m.graph;
        let quantize_ops: BTreeMap<String, crate::ir::OpId> = g
            .ops()
            .filter(|o| g.op(*o).op_type == "QuantizeLinear")
            .filter_map(|o| g.op(o).name.clone().map(|n| (n, o)))
            .collect();
        let other = |w: String| TuneError::Other(format!("simulation model: {w}"));
        let mut prefixes = Vec::with_capacity(units.len());
        for (i, u) in units.iter().enumerate() {
            let prefix = g.fresh_name(&format!("qrange.sim.{i}"));
            let s = scalar_input(g, &format!("{prefix}.scale"), DType::F32)?;
            let z = scalar_input(g, &format!("{prefix}.zp"), DType::F32)?;
            let lo = scalar_input(g, &format!("{prefix}.lo"), DType::F32)?;
            let hi = scalar_input(g, &format!("{prefix}.hi"), DType::F32)?;
            let on = scalar_input(g, &format!("{prefix}.on"), DType::Bool)?;
            prefixes.push(prefix);
            // The folded Relu/Clip, re-applied when the unit is off.
            let fold = match &u.folded_op {
                None => None,
                Some(key) => {
                    let pg = &prepared.graph;
                    let o = pg
                        .ops()
                        .find(|o| crate::quant::plan::op_key(pg, *o) == *key)
                        .ok_or_else(|| other(format!("folded op '{key}' not found")))?;
                    let mut consts = Vec::new();
                    for v in pg.inputs_of(o).into_iter().skip(1) {
                        match v {
                            None => consts.push(None),
                            Some(v) => {
                                let c = pg.const_of(v).cloned().ok_or_else(|| {
                                    other(format!("folded op '{key}' has a non-constant bound"))
                                })?;
                                let name = g.fresh_name(&format!("{}.sim", pg.value(v).name));
                                consts.push(Some(
                                    g.add_const(&name, c).map_err(|e| other(e.to_string()))?,
                                ));
                            }
                        }
                    }
                    let mut op = pg.op(o).clone();
                    op.order = Op::UNORDERED;
                    Some((op, consts))
                }
            };
            for member in &u.members {
                let Some(&qop) = quantize_ops.get(&format!("{member}.quantize")) else {
                    continue; // removed by a fold, or not materialised
                };
                let x = g
                    .input(qop, 0)
                    .ok_or_else(|| other(format!("'{member}.quantize' has no input")))?;
                let qv = g
                    .output(qop, 0)
                    .ok_or_else(|| other(format!("'{member}.quantize' has no output")))?;
                let readers = g.consumers(qv);
                let [(dqop, 0)] = readers.as_slice() else {
                    return Err(other(format!(
                        "'{member}.quantize' is not read by exactly one DequantizeLinear"
                    )));
                };
                let dqop = *dqop;
                let dqv = g
                    .output(dqop, 0)
                    .ok_or_else(|| other(format!("'{member}' dequantize has no output")))?;
                let ty = g.value(dqv).ty.clone();
                g.remove_op(dqop);
                g.remove_op(qop);
                g.remove_value(qv);
                let mut prev = x;
                let step = |g: &mut Graph,
                            op: &str,
                            ins: &[ValueId],
                            out: Option<ValueId>|
                 -> Result<ValueId, TuneError> {
                    let y = match out {
                        Some(y) => y,
                        None => g.add_fresh_value(&format!("{member}.sim"), ty.clone()),
                    };
                    let name = g.fresh_name(&format!("{member}.sim.{}", op.to_lowercase()));
                    let ins: Vec<Option<ValueId>> = ins.iter().map(|v| Some(*v)).collect();
                    g.add_op(Op::new(op, &name), &ins, &[Some(y)])
                        .map_err(|e| TuneError::Other(format!("simulation model: {e}")))?;
                    Ok(y)
                };
                prev = step(g, "Div", &[prev, s], None)?;
                prev = step(g, "Round", &[prev], None)?;
                prev = step(g, "Add", &[prev, z], None)?;
                prev = step(g, "Max", &[prev, lo], None)?;
                prev = step(g, "Min", &[prev, hi], None)?;
                prev = step(g, "Sub", &[prev, z], None)?;
                prev = step(g, "Mul", &[prev, s], None)?;
                let off = match &fold {
                    Some((op, consts)) if member == &u.root => {
                        let y = g.add_fresh_value(&format!("{member}.sim.off"), ty.clone());
                        let mut op = op.clone();
                        op.name = Some(g.fresh_name(&format!("{member}.sim.fold")));
                        let mut ins = vec![Some(x)];
                        ins.extend(consts.iter().copied());
                        g.add_op(op, &ins, &[Some(y)])
                            .map_err(|e| other(e.to_string()))?;
                        y
                    }
                    _ => x,
                };
                step(g, "Where", &[on, prev, off], Some(dqv))?;
            }
        }
        // 4-bit weights first: the full-grid switch below then feeds their `else` input.
        let mut w4_switches = Vec::new();
        if let Some(q4) = narrow {
            for w in narrow_weights {
                let dq_name = format!("{w}.dequantize");
                let find = |g: &Graph| {
                    g.ops()
                        .find(|o| g.op(*o).name.as_deref() == Some(dq_name.as_str()))
                };
                let (Some(reduced), Some(four)) = (find(g), find(&q4.graph)) else {
                    continue;
                };
                let Some(dq) = g.output(reduced, 0) else {
                    continue;
                };
                let on = add_dq_switch(g, dq, &q4.graph, four, "w4", w, None)?;
                w4_switches.push((on, w.clone()));
            }
        }
        let mut weight_switches = Vec::new();
        for (w, unit) in weights {
            let dq_name = format!("{w}.dequantize");
            let find = |g: &Graph| {
                g.ops()
                    .find(|o| g.op(*o).name.as_deref() == Some(dq_name.as_str()))
            };
            let (Some(reduced), Some(wide)) = (find(g), find(&full.graph)) else {
                continue;
            };
            let Some(dq7) = g.output(reduced, 0) else {
                continue;
            };
            let on = add_dq_switch(g, dq7, &full.graph, wide, "full", w, None)?;
            weight_switches.push((on, *unit));
        }
        let mut bias_switches = Vec::new();
        for (b, unit, weight) in biases {
            let dq_name = format!("{b}.dequantize");
            let Some(dq) = g
                .ops()
                .find(|o| g.op(*o).name.as_deref() == Some(dq_name.as_str()))
            else {
                continue;
            };
            let pg = &prepared.graph;
            let Some(c) = pg.value_by_name(b).and_then(|v| pg.const_of(v)).cloned() else {
                continue;
            };
            let Some(dqv) = g.output(dq, 0) else { continue };
            let readers = g.consumers(dqv);
            let ty = g.value(dqv).ty.clone();
            let fv = g
                .add_const(&g.fresh_name(&format!("{b}.float")), c)
                .map_err(|e| other(e.to_string()))?;
            let on_name = g.fresh_name(&format!("qrange.sim.b.{b}.int32"));
            let on = scalar_input(g, &on_name, DType::Bool)?;
            let sw = g.add_fresh_value(&format!("{b}.sim"), ty);
            g.add_op(
                Op::new("Where", &g.fresh_name(&format!("{b}.sim.where"))),
                &[Some(on), Some(dqv), Some(fv)],
                &[Some(sw)],
            )
            .map_err(|e| other(e.to_string()))?;
            for (o, slot) in readers {
                g.set_input(o, slot, Some(sw));
            }
            bias_switches.push((on_name, *unit));
            // With its weight on 4 bits, the int32 bias has the 4-bit scale.
            let w4_on = w4_switches
                .iter()
                .find(|(_, w)| w == weight)
                .map(|(on, _)| on.clone());
            if let (Some(on), Some(q4)) = (w4_on, narrow) {
                let q4g = &q4.graph;
                if let Some(b4) = q4g
                    .ops()
                    .find(|o| q4g.op(*o).name.as_deref() == Some(dq_name.as_str()))
                {
                    add_dq_switch(g, dqv, q4g, b4, "w4", b, Some(&on))?;
                }
            }
        }
        crate::passes::util::remove_dead(g);
        Ok(SimModel {
            w4_switches,
            bias_switches,
            model: m,
            prefixes,
            params,
            weight_switches,
        })
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
        let mut s = sample.clone();
        let scalar = |v: f32| Tensor::F32(ndarray::arr0(v).into_dyn());
        for ((prefix, (p8, p16)), prec) in self.prefixes.iter().zip(&self.params).zip(config) {
            let p = if *prec == Precision::A16 { p16 } else { p8 };
            s.insert(format!("{prefix}.scale"), scalar(p.scale));
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
        s
    }
}
