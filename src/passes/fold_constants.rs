//! Pass `fold_constants`: computes at compile time what does not depend on the inputs.
//!
//! **What it does**, in each graph and subgraph:
//! 1. `Constant` nodes become initializers (their tensor moves as stored, so large
//!    ones are not decoded).
//! 2. `Identity` nodes are removed: readers of the output read the input. When the
//!    output is a graph output, the input's producer takes the output's name instead,
//!    so graph output names never change; an `Identity` from a graph input or a
//!    captured outer value to a graph output stays.
//! 3. Ops the evaluator ([`crate::ir::eval`]) supports whose inputs are all constants
//!    (initializers of this graph, or outer-scope constants a subgraph captures) are
//!    replaced by initializers holding their results, and `Shape`/`Size` of a value
//!    whose shape is fully known become constants even though the value is not. No
//!    result above [`FOLD_LIMIT`] elements is created, so weights are not duplicated.
//! 4. Ops, initializers and values left without readers are removed.
//!
//! **Requires:** `infer_shapes` before it for step 3 on `Shape`/`Size`.
//!
//! **Effects:** ops, initializers, value names of removed Identities. Types of folded
//! values are exact. An op whose constant inputs break its contract is left in place
//! and reported as a diagnostic.
//!
//! **Example:**
//! ```text
//! input  %x: f32[1,576]                              input  %x: f32[1,576]
//! %k = Constant() {value=i64[1]:[1]} : i64[1]       const  %k: i64[1] = [1]
//! %s = Shape(%x) : i64[2]                            const  %g: i64[1] = [576]
//! %g = Gather(%s, %k) {axis=0} : i64[1]              %y = Reshape(%x, %g) : f32[576]
//! %y = Reshape(%x, %g) : f32[576]
//! ```

use super::util::{
    allow_constant_initializers, const_value, for_each_subgraph, is_captured, remove_dead,
    rename_everywhere, replace_uses_everywhere, OuterConsts, FOLD_LIMIT,
};
use super::{Changed, Pass, PassCx, PassError};
use crate::ir::eval::{self, constant_value, EvalError};
use crate::ir::{AttrValue, ConstTensor, Graph, Model, OpId, Tensor, ValueId, ValueType};
use std::collections::HashMap;
use std::rc::Rc;

/// See the module documentation.
pub struct FoldConstants;

const NAME: &str = "fold_constants";

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "fold constant subexpressions, Constant and Identity nodes, and Shape/Size of known shapes"
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        let opset = m.opset("").unwrap_or(1);
        let mut changed = fold_graph(&mut m.graph, &OuterConsts::new(), opset, cx, "")?;
        changed |= remove_dead(&mut m.graph);
        if changed {
            allow_constant_initializers(m);
        }
        Ok(Changed::from_bool(changed))
    }
}

fn type_of(t: &ConstTensor) -> ValueType {
    ValueType::tensor(t.dtype, &t.dims)
}

/// Makes `v` an initializer holding `t`.
fn set_const(g: &mut Graph, v: ValueId, mut t: ConstTensor) {
    t.name = Some(g.value(v).name.clone());
    let ty = type_of(&t);
    let tid = g.add_tensor(t);
    let val = g.value_mut(v);
    val.init = Some(tid);
    val.ty = Some(ty);
    g.initializers.push(v);
}

fn ops_in_order(g: &Graph, path: &str) -> Result<Vec<OpId>, PassError> {
    g.topo_order().map_err(|e| PassError {
        pass: NAME,
        what: format!("{path}{e}"),
    })
}

fn is_default(g: &Graph, o: OpId, op_type: &str) -> bool {
    let op = g.op(o);
    op.op_type == op_type && op.domain_key().is_empty()
}

fn fold_graph(
    g: &mut Graph,
    outer: &OuterConsts,
    opset: i64,
    cx: &mut PassCx,
    path: &str,
) -> Result<bool, PassError> {
    let mut changed = constant_nodes(g, cx, path)?;
    changed |= remove_identities(g, path)?;
    changed |= evaluate_constant_ops(g, outer, opset, cx, path)?;
    // Subgraphs, with the outer constants they capture.
    let with_subs: Vec<OpId> = ops_in_order(g, path)?
        .into_iter()
        .filter(|o| !g.op(*o).subgraphs().is_empty())
        .collect();
    for o in with_subs {
        changed |= for_each_subgraph(g, o, outer, path, |sg, sc, node| {
            fold_graph(sg, sc, opset, cx, node)
        })?;
    }
    Ok(changed)
}

/// Constant nodes → initializers.
fn constant_nodes(g: &mut Graph, cx: &mut PassCx, path: &str) -> Result<bool, PassError> {
    let mut changed = false;
    for o in ops_in_order(g, path)? {
        if !is_default(g, o, "Constant") {
            continue;
        }
        let Some(out) = g.output(o, 0) else { continue };
        if g.is_output(out) || g.value(out).init.is_some() {
            continue;
        }
        let op = g.op(o);
        let ct = match op.attr("value") {
            Some(AttrValue::Tensor(t)) if op.attrs.len() == 1 => Some((**t).clone()),
            _ => match constant_value(op) {
                Ok(t) => Some(ConstTensor::from_tensor(None, &t)),
                Err(EvalError::Invalid { op, what }) => {
                    cx.note(NAME, format!("{path}{op}: {what}"));
                    None
                }
                Err(_) => None,
            },
        };
        if let Some(ct) = ct {
            g.remove_op(o);
            set_const(g, out, ct);
            changed = true;
        }
    }
    Ok(changed)
}

/// Identity removal: readers read the input; an Identity writing a graph output gives its
/// name to its input when that is an ordinary intermediate.
fn remove_identities(g: &mut Graph, path: &str) -> Result<bool, PassError> {
    let mut changed = false;
    for o in ops_in_order(g, path)? {
        if !is_default(g, o, "Identity") {
            continue;
        }
        let (Some(x), Some(y)) = (g.input(o, 0), g.output(o, 0)) else {
            continue;
        };
        if !g.is_output(y) {
            g.remove_op(o);
            replace_uses_everywhere(g, y, x);
            if g.consumers(y).is_empty() {
                g.remove_value(y);
            }
            changed = true;
            continue;
        }
        // y is a graph output: x takes y's name, if x is an ordinary intermediate.
        let x_plain = g.producer(x).is_some() && !g.is_output(x) && !g.is_input(x);
        if !x_plain || is_captured(g, x) {
            continue;
        }
        let y_name = g.value(y).name.clone();
        let (y_ty, y_carry) = (g.value(y).ty.clone(), g.value(y).carry.clone());
        g.remove_op(o);
        replace_uses_everywhere(g, y, x);
        g.remove_value(y);
        rename_everywhere(g, x, &y_name).map_err(|what| PassError {
            pass: NAME,
            what: format!("{path}{what}"),
        })?;
        let xv = g.value_mut(x);
        if y_ty.is_some() {
            xv.ty = y_ty;
        }
        xv.carry = y_carry;
        changed = true;
    }
    Ok(changed)
}

/// Evaluates ops whose inputs are all constants (and Shape/Size of known shapes).
fn evaluate_constant_ops(
    g: &mut Graph,
    outer: &OuterConsts,
    opset: i64,
    cx: &mut PassCx,
    path: &str,
) -> Result<bool, PassError> {
    let mut changed = false;
    let mut known: HashMap<ValueId, Option<Rc<Tensor>>> = HashMap::new();
    for o in ops_in_order(g, path)? {
        let op = g.op(o);
        if !eval::supports(op) || !op.subgraphs().is_empty() || op.op_type == "Constant" {
            continue;
        }
        let outs = g.outputs_of(o);
        if outs.iter().flatten().any(|v| g.is_output(*v)) || outs.iter().all(Option::is_none) {
            continue;
        }
        let ins = g.inputs_of(o);
        let results: Result<Vec<Tensor>, EvalError> =
            if matches!(op.op_type.as_str(), "Shape" | "Size")
                && ins
                    .first()
                    .copied()
                    .flatten()
                    .and_then(|x| g.value(x).ty.as_ref().and_then(ValueType::known_dims))
                    .is_some()
            {
                let dims = ins[0]
                    .and_then(|x| g.value(x).ty.as_ref().and_then(ValueType::known_dims))
                    .unwrap_or_default();
                match eval::shape_from_dims(op, &dims) {
                    Ok(t) if t.len() <= FOLD_LIMIT => Ok(vec![t]),
                    _ => continue,
                }
            } else {
                let mut args: Vec<Option<Rc<Tensor>>> = Vec::with_capacity(ins.len());
                let mut all = true;
                for v in &ins {
                    match v {
                        None => args.push(None),
                        Some(v) => {
                            let c = known
                                .entry(*v)
                                .or_insert_with(|| const_value(g, *v, outer))
                                .clone();
                            all &= c.is_some();
                            args.push(c);
                        }
                    }
                }
                if !all {
                    continue;
                }
                let refs: Vec<Option<&Tensor>> = args.iter().map(|a| a.as_deref()).collect();
                eval::eval(op, &refs, opset, FOLD_LIMIT)
            };
        match results {
            Ok(ts) => {
                g.remove_op(o);
                for (slot, v) in outs.into_iter().enumerate() {
                    let (Some(v), Some(t)) = (v, ts.get(slot)) else {
                        continue;
                    };
                    set_const(g, v, ConstTensor::from_tensor(None, t));
                    known.insert(v, Some(Rc::new(t.clone())));
                }
                changed = true;
            }
            Err(EvalError::Invalid { op, what }) => {
                cx.note(NAME, format!("{path}{op}: {what}"));
            }
            Err(_) => {}
        }
    }
    Ok(changed)
}
