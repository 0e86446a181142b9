//! The written model's interface: the float model's inputs, in their order, with their
//! declared types. A pinned input stays declared (unused: legal ONNX), so every program
//! that feeds the float model can feed the quantized one; the value it was pinned to
//! lives on as a constant of another name. `drop_pinned_inputs` removes it instead.
//!
//! Declared dims: the run specialises the model for the first sample's shapes (every
//! analysis, calibration and the plan need concrete shapes), which folds `Shape`
//! computations into constants and `If` nodes whose conditions read shapes. When those
//! shapes fixed dims the model declares symbolic, [`written`] materialises the final
//! plan on the model prepared with its declared dims ([`General`]) instead, provided the
//! plan means the same there ([`transferable`]) and both quantized models give the same
//! outputs on the first sample in the engine; otherwise the specialised model is written,
//! valid for those shapes only, and one note names the inputs and the reason.

use super::error::PipelineError;
use crate::ir::scope::Scopes;
use crate::ir::{ConstTensor, Dim, Graph, Model, Value, ValueType};
use crate::quant::plan::{op_key_in, OpState, Plan, ValueKeys};
use std::collections::{BTreeMap, BTreeSet};

/// The declared inputs of `m`'s main graph (initializers listed as inputs excluded).
pub fn declared_inputs(m: &Model) -> Vec<Value> {
    let g = &m.graph;
    g.inputs
        .iter()
        .filter(|v| g.value(**v).init.is_none())
        .map(|v| g.value(*v).clone())
        .collect()
}

/// Names every subgraph of `g` reads from an outer scope.
fn captured(g: &Graph) -> BTreeSet<String> {
    g.ops()
        .flat_map(|o| g.op(o).subgraphs())
        .flat_map(|(_, sg)| sg.captures())
        .collect()
}

/// Declares the pinned inputs of `declared` again in the written model `m`, in the float
/// model's input order. Returns a note per input kept.
pub fn keep_pinned_inputs(
    m: &mut Model,
    declared: &[Value],
    pinned: &BTreeSet<String>,
) -> Result<Vec<String>, PipelineError> {
    let internal = |e: crate::ir::GraphError| {
        PipelineError::Options(format!("cannot declare a pinned input again: {e}"))
    };
    let mut notes = Vec::new();
    let captured = captured(&m.graph);
    let g = &mut m.graph;
    for d in declared.iter().filter(|d| pinned.contains(&d.name)) {
        if let Some(v) = g.value_by_name(&d.name) {
            if captured.contains(&d.name) {
                notes.push(format!(
                    "input '{}' is not declared in the written model: a subgraph reads its pinned value by name",
                    d.name
                ));
                continue;
            }
            let new = g.fresh_name(&format!("{}.pinned", d.name));
            g.rename_value(v, &new).map_err(internal)?;
        }
        g.add_value(d.clone()).map_err(internal)?;
        notes.push(format!(
            "the model is specialised for the pinned value of input '{}': the input stays declared and is not read (--drop-pinned-inputs removes it)",
            d.name
        ));
    }
    let mut order: Vec<_> = declared
        .iter()
        .filter_map(|d| g.value_by_name(&d.name))
        .filter(|v| g.value(*v).init.is_none() && g.producer(*v).is_none())
        .collect();
    for v in &g.inputs {
        if !order.contains(v) {
            order.push(*v);
        }
    }
    g.inputs = order;
    Ok(notes)
}

/// The inputs whose declared dims the run fixed from the first sample's shapes (not
/// pinned, not given by `--shape`): each with its declared shape shown and the shape
/// used. Declared dims that are symbolic, unknown or negative count as not fixed.
pub fn sample_fixed(
    declared: &[Value],
    applied: &BTreeMap<String, Vec<i64>>,
    explicit: &BTreeMap<String, Vec<i64>>,
    pinned: &BTreeSet<String>,
) -> Vec<(String, Vec<i64>)> {
    declared
        .iter()
        .filter(|d| !pinned.contains(&d.name) && !explicit.contains_key(&d.name))
        .filter_map(|d| {
            let dims = applied.get(&d.name)?;
            let fixed = match &d.ty {
                Some(ValueType::Tensor {
                    shape: Some(shape), ..
                }) => shape.iter().any(|x| !matches!(x, Dim::Known(k) if *k >= 0)),
                Some(ValueType::Tensor { shape: None, .. }) => true,
                _ => false,
            };
            fixed.then(|| (d.name.clone(), dims.clone()))
        })
        .collect()
}

/// The model the written file is made from when the first sample fixed declared dims:
/// the float model prepared with the pins and `--shape` only (its dims stay as declared),
/// or why it could not be prepared.
#[derive(Clone, Debug)]
pub struct General {
    /// The inputs the first sample fixed, and the shapes it gave them.
    pub fixed: Vec<(String, Vec<i64>)>,
    /// The float model's outputs as declared.
    pub outputs: Vec<Value>,
    pub model: Result<Model, String>,
}

/// Gives each output of `w` the shape the float model declares for it (`declared`), where
/// the two do not contradict each other: shape inference makes a symbolic dim concrete
/// where it can, and the written interface is the declared one.
pub fn declared_outputs(w: &mut Model, declared: &[Value]) {
    let g = &mut w.graph;
    for d in declared {
        let Some(v) = g.value_by_name(&d.name).filter(|v| g.is_output(*v)) else {
            continue;
        };
        let (
            Some(ValueType::Tensor {
                dtype: dd,
                shape: Some(ds),
            }),
            Some(ValueType::Tensor {
                dtype: wd,
                shape: Some(ws),
            }),
        ) = (&d.ty, &g.value(v).ty)
        else {
            continue;
        };
        let fits = dd == wd
            && ds.len() == ws.len()
            && ds.iter().zip(ws).all(|(a, b)| match (a, b) {
                (Dim::Known(x), Dim::Known(y)) => x == y || *x < 0,
                (Dim::Known(x), _) => *x < 0,
                _ => true,
            });
        if fits {
            g.value_mut(v).ty = d.ty.clone();
        }
    }
}

/// Ops of every graph of `m` by plan key, with their op type.
fn op_types(m: &Model) -> BTreeMap<String, String> {
    let scopes = Scopes::of(&m.graph);
    let mut out = BTreeMap::new();
    for s in 0..scopes.len() {
        let label = &scopes.get(s).label;
        let g = scopes.graph(&m.graph, s);
        for o in g.ops() {
            out.insert(op_key_in(label, g, o), g.op(o).op_type.clone());
        }
    }
    out
}

/// The constant a plan key names in `m`, if the key names a value at all.
fn located<'a>(m: &'a Model, keys: &ValueKeys, key: &str) -> Option<Option<&'a ConstTensor>> {
    let (s, local) = keys.locate(key)?;
    let g = keys.scopes.graph(&m.graph, s);
    let v = g.value_by_name(local)?;
    Some(g.const_of(v))
}

/// Whether `plan`, made on the shape-specialised model `s`, means the same on `g` (the
/// same model prepared without the sample's shapes): every op of `s` is in `g` with its
/// op type, every planned value is in `g` and is a constant there exactly when it is one
/// in `s` (the same constant), and every float constant a quantized or folded op reads in
/// `s` is that constant in `g` too (a divisor folded into a scale, a weight). What is in
/// `g` alone is computed from the input shapes (`Shape` and what reads it): the written
/// model keeps it. Otherwise the reason, naming the op or value.
pub fn transferable(s: &Model, g: &Model, plan: &Plan) -> Result<(), String> {
    let so = op_types(s);
    let go = op_types(g);
    if let Some((k, _)) = go
        .iter()
        .find(|(k, t)| t.as_str() == "If" && !so.contains_key(*k))
    {
        return Err(format!(
            "If node '{k}' has a condition that is constant only for these shapes (it was folded)"
        ));
    }
    if let Some((k, t)) = so.iter().find(|(k, t)| go.get(*k) != Some(t)) {
        return Err(format!(
            "{t} node '{k}' exists only once the shapes are fixed"
        ));
    }
    let opset = |m: &Model| m.opset("");
    if opset(s) != opset(g) {
        return Err("the opset raised for the Q/DQ depends on the shapes".to_string());
    }
    let (sk, gk) = (ValueKeys::of(&s.graph), ValueKeys::of(&g.graph));
    for key in plan.values.keys().chain(plan.ranges.keys()) {
        let Some(sc) = located(s, &sk, key) else {
            continue; // removed by a fold in both
        };
        match located(g, &gk, key) {
            Some(gc) if gc == sc => {}
            _ => {
                return Err(format!(
                    "'{key}' is computed from the input shapes: a constant only for these shapes"
                ))
            }
        }
    }
    let scopes = Scopes::of(&s.graph);
    for i in 0..scopes.len() {
        let label = &scopes.get(i).label;
        let sg = scopes.graph(&s.graph, i);
        for o in sg.ops() {
            let key = op_key_in(label, sg, o);
            if matches!(plan.ops.get(&key), None | Some(OpState::Float { .. })) {
                continue;
            }
            for v in sg.inputs_of(o).into_iter().flatten() {
                let Some(c) = sg.const_of(v).filter(|c| c.dtype.is_float()) else {
                    continue;
                };
                let name = &sg.value(v).name;
                let k = sk.key(i, name).unwrap_or(name);
                if located(g, &gk, k).flatten() != Some(c) {
                    return Err(format!(
                        "'{name}', read by '{key}', is computed from the input shapes: a constant only for these shapes"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `dims` as the summary shows them: `[1,48]`.
fn dims_text(dims: &[i64]) -> String {
    let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", d.join(","))
}

/// The declared shape of each output of `g` that contradicts what `q` (the same model with
/// the sample's shapes) computes there, in rank or in a fixed dim.
fn output_clash(q: &Model, g: &Model) -> Option<String> {
    let shape = |m: &Model, v| match &m.graph.value(v).ty {
        Some(ValueType::Tensor { shape: Some(s), .. }) => Some(s.clone()),
        _ => None,
    };
    for (vq, vg) in q.graph.outputs.iter().zip(&g.graph.outputs) {
        let (Some(sq), Some(sg)) = (shape(q, *vq), shape(g, *vg)) else {
            continue;
        };
        let clash = sq.len() != sg.len()
            || sq.iter().zip(&sg).any(|(a, b)| {
                matches!((a, b), (Dim::Known(x), Dim::Known(y)) if *x >= 0 && *y >= 0 && x != y)
            });
        if clash {
            let show = |s: &[Dim]| {
                let d: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                format!("[{}]", d.join(","))
            };
            return Some(format!(
                "output '{}' is declared {} but computes {} for these shapes",
                g.graph.value(*vg).name,
                show(&sg),
                show(&sq)
            ));
        }
    }
    None
}

/// The model to write and what the summary says about its interface. The quantized model
/// `q` was made on the model specialised for the first sample's shapes; when those shapes
/// fixed dims the model declares symbolic (`p.general`), the same plan is materialised on
/// the model prepared without them, which keeps the declared dims and every computation
/// of the input shapes, provided the plan means the same there ([`transferable`]) and
/// both give the same outputs, bit for bit, on `sample` in the engine. Otherwise `q` is
/// written with the fixed dims (valid for those shapes only) and one line says which
/// inputs and why. Inputs `--shape` fixed are named too.
pub fn written(
    p: &super::prepare::Prepared,
    q: Model,
    plan: &Plan,
    sample: Option<&crate::data::Sample>,
    explicit: &BTreeMap<String, Vec<i64>>,
) -> (Model, Vec<String>) {
    let mut notes: Vec<String> = explicit
        .iter()
        .filter(|(n, _)| {
            q.graph
                .value_by_name(n)
                .is_some_and(|v| q.graph.is_input(v))
        })
        .map(|(n, d)| {
            format!(
                "input '{n}' has the shape {} given by --shape in the written model",
                dims_text(d)
            )
        })
        .collect();
    let Some(general) = &p.general else {
        return (q, notes);
    };
    let attempt = || -> Result<Model, String> {
        let g = general.model.as_ref().map_err(Clone::clone)?;
        transferable(&p.model, g, plan)?;
        let mut w = super::materialise::materialise_on(g, plan)
            .map_err(|e| format!("quantizing it with the declared dims failed: {e}"))?;
        super::tables::store_planned_tables(&mut w, &p.cfg, Some(plan)).map_err(|e| {
            format!("storing its embedding tables with the declared dims failed: {e}")
        })?;
        if let Some(clash) = output_clash(&q, &w) {
            return Err(clash);
        }
        let sample = sample.ok_or("no sample to check it on")?;
        super::materialise::same_outputs(&q, &w, &p.base_dir, sample).map_err(|e| {
            format!(
                "with the declared dims it does not run as with these shapes in the engine ({e})"
            )
        })?;
        Ok(w)
    };
    match attempt() {
        Ok(mut w) => {
            declared_outputs(&mut w, &general.outputs);
            (w, notes)
        }
        Err(why) => {
            notes.push(fixed_note(general, &why));
            (q, notes)
        }
    }
}

/// The line saying that the written model keeps the shapes the first sample fixed, and why.
pub fn fixed_note(general: &General, why: &str) -> String {
    let inputs: Vec<String> = general
        .fixed
        .iter()
        .map(|(n, d)| format!("'{n}' {}", dims_text(d)))
        .collect();
    format!(
        "input{} {} keep{} the first sample's shape{} in the written model, which is valid for {} only: {why}",
        if inputs.len() > 1 { "s" } else { "" },
        inputs.join(", "),
        if inputs.len() > 1 { "" } else { "s" },
        if inputs.len() > 1 { "s" } else { "" },
        if inputs.len() > 1 { "those shapes" } else { "that shape" },
    )
}
