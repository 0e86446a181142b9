//! Pass `infer_shapes`: gives every value it can a [`ValueType::Tensor`] (element type and
//! shape), so that later passes and the quantizer know intermediate values even when
//! the file lists no `value_info`.
//!
//! **What it does.** Walks each graph in topological order and applies one rule per op
//! type (the `rules` module), reading the opset of the default domain where semantics changed
//! (Squeeze/Unsqueeze/Reduce axes as attribute or input, Slice, Split, Pad, Resize…).
//! Alongside types it tracks two kinds of values, without changing the graph:
//! small constants (initializers, `Constant` nodes and anything the evaluator
//! ([`crate::ir::eval`]) computes from them, including `Shape`/`Size` of a fully known
//! shape), and *shape values*: 1-D integer tensors whose elements are dims, possibly
//! symbolic (`Shape(x)` → `[N,3,H,W]`, through `Gather`, `Slice`, `Concat`,
//! `Unsqueeze`, `Squeeze`, `Cast`), so that `Reshape(x, Concat(Shape(x)[0], -1))`
//! keeps `N`. Subgraphs are inferred with the facts of the names they capture; an `If`
//! with a constant condition takes the types of its taken branch, otherwise the types
//! both branches agree on; a `Scan` takes its body's state types and its body's scan
//! output types with the scan length inserted; a `Loop` gives its carried outputs the
//! type their initial values and the body agree on, and its scan outputs the body's type
//! with the number of iterations in front. Ops it has no rule for stay untyped.
//!
//! **Requires:** nothing (more is known after `pin_inputs`).
//!
//! **Effects:** value types only. A type the file gave is made more specific (unknown
//! dims and symbolic dims filled with known ones), never less. A declared shape (graph
//! output, `value_info`) that contradicts what the graph computes, in rank or in a known
//! dim, is relaxed: the contradicting part gives way to the inferred one, so that
//! neither the engine nor the written model sees shapes that contradict each other
//! (exporters write such shapes; ONNX Runtime only warns, tract refuses to load). Each
//! relaxation, a declared element type that contradicts inference (kept as declared),
//! and an op whose inputs break its rule are [`super::Diagnostic`]s.
//!
//! **Example:**
//! ```text
//! input  %x: f32[N,3,8,8]
//! %y = Conv(%x, %w) {pads=[1,1,1,1]} : ?        %y = Conv(%x, %w) {pads=[1,1,1,1]} : f32[N,4,8,8]
//! %s = Shape(%y) : ?                             %s = Shape(%y) : i64[4]
//! %z = Reshape(%y, %t) : ?                       %z = Reshape(%y, %t) : f32[N,256]
//! ```

mod rules;

use super::util::{is_captured, small_const, FOLD_LIMIT};
use super::{Changed, Pass, PassCx, PassError};
use crate::ir::eval;
use crate::ir::{AttrValue, Dim, Graph, Model, Tensor, ValueId, ValueType};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// See the module documentation.
pub struct InferShapes;

const NAME: &str = "infer_shapes";

/// A 1-D (or scalar) integer tensor whose elements are known as dims.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SymVal {
    pub scalar: bool,
    pub dims: Vec<Dim>,
}

/// What is known about a value.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fact {
    pub ty: Option<ValueType>,
    pub val: Option<Rc<Tensor>>,
    pub sym: Option<SymVal>,
}

/// Facts about names visible from enclosing graphs.
type Scope = BTreeMap<String, Fact>;

impl Pass for InferShapes {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "infer element types and shapes of intermediate values"
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        let mut w = Walker {
            opset: m.opset("").unwrap_or(1),
            cx,
            changed: false,
        };
        w.graph(&mut m.graph, &Scope::new(), "")?;
        Ok(Changed::from_bool(w.changed))
    }
}

struct Walker<'a> {
    opset: i64,
    cx: &'a mut PassCx,
    changed: bool,
}

/// Per-graph caches of computed facts.
#[derive(Default)]
struct Local {
    vals: HashMap<ValueId, Option<Rc<Tensor>>>,
    syms: HashMap<ValueId, SymVal>,
}

fn sym_of_tensor(t: &Tensor) -> Option<SymVal> {
    let s = t.shape();
    if s.len() > 1 || !(t.dtype().is_integer()) {
        return None;
    }
    let v = t.to_i64_vec()?;
    Some(SymVal {
        scalar: s.is_empty(),
        dims: v.into_iter().map(Dim::Known).collect(),
    })
}

fn tensor_type(t: &Tensor) -> ValueType {
    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    ValueType::tensor(t.dtype(), &dims)
}

impl Walker<'_> {
    fn fact(&self, g: &Graph, v: ValueId, outer: &Scope, local: &mut Local) -> Fact {
        let val_node = g.value(v);
        let captured = is_captured(g, v);
        let from_outer = if captured {
            outer.get(&val_node.name)
        } else {
            None
        };
        let ty = informative(val_node.ty.as_ref())
            .map(normalized)
            .or_else(|| from_outer.and_then(|f| f.ty.clone()));
        let val = match local.vals.get(&v) {
            Some(x) => x.clone(),
            None => {
                let x = if g.is_input(v) {
                    None
                } else if val_node.init.is_some() {
                    small_const(g, v, FOLD_LIMIT).map(Rc::new)
                } else {
                    from_outer.and_then(|f| f.val.clone())
                };
                local.vals.insert(v, x.clone());
                x
            }
        };
        let sym = local
            .syms
            .get(&v)
            .cloned()
            .or_else(|| from_outer.and_then(|f| f.sym.clone()))
            .or_else(|| val.as_deref().and_then(sym_of_tensor));
        Fact { ty, val, sym }
    }

    fn graph(&mut self, g: &mut Graph, outer: &Scope, path: &str) -> Result<(), PassError> {
        let order = g.topo_order().map_err(|e| PassError {
            pass: NAME,
            what: format!("{path}{e}"),
        })?;
        // Initializers are typed by their tensor.
        for v in g.initializers.clone() {
            if informative(g.value(v).ty.as_ref()).is_none() {
                if let Some(t) = g.const_of(v) {
                    let ty = ValueType::tensor(t.dtype, &t.dims);
                    g.value_mut(v).ty = Some(ty);
                    self.changed = true;
                }
            }
        }
        let mut local = Local::default();
        for o in order {
            let ins = g.inputs_of(o);
            let facts: Vec<Option<Fact>> = ins
                .iter()
                .map(|v| v.map(|v| self.fact(g, v, outer, &mut local)))
                .collect();
            let node = format!(
                "{path}node '{}' ({})",
                g.op(o).display_name(),
                g.op(o).op_type
            );
            // Subgraphs first: an If's output types come from its branches.
            let mut branch_types: Option<Vec<Option<ValueType>>> = None;
            if !g.op(o).subgraphs().is_empty() {
                branch_types = self.subgraphs(g, o, &facts, outer, &mut local, &node)?;
            }
            let op = g.op(o);
            let n_out = op.n_outputs;
            // Constant values: evaluate when every present input is a known constant.
            let mut out_vals: Vec<Option<Rc<Tensor>>> = vec![None; n_out];
            let all_const = facts.iter().flatten().all(|f| f.val.is_some());
            let shape_only = matches!(op.op_type.as_str(), "Shape" | "Size")
                && op.domain_key().is_empty()
                && facts
                    .first()
                    .and_then(|f| f.as_ref())
                    .and_then(|f| f.ty.as_ref())
                    .and_then(|t| t.known_dims())
                    .is_some();
            if shape_only {
                let dims = facts[0]
                    .as_ref()
                    .and_then(|f| f.ty.as_ref())
                    .and_then(|t| t.known_dims())
                    .unwrap_or_default();
                if let Ok(t) = eval::shape_from_dims(op, &dims) {
                    out_vals[0] = Some(Rc::new(t));
                }
            } else if all_const && eval::supports(op) && !too_big_constant(op) {
                let args: Vec<Option<&Tensor>> = facts
                    .iter()
                    .map(|f| f.as_ref().and_then(|f| f.val.as_deref()))
                    .collect();
                match eval::eval(op, &args, self.opset, FOLD_LIMIT) {
                    Ok(ts) => {
                        for (i, t) in ts.into_iter().enumerate().take(n_out) {
                            out_vals[i] = Some(Rc::new(t));
                        }
                    }
                    Err(eval::EvalError::Invalid { op, what }) => {
                        self.cx.note(NAME, format!("{path}{op}: {what}"));
                    }
                    Err(_) => {}
                }
            }
            // Types: from computed values when there are some, else from the op's rule.
            let mut types: Vec<Option<ValueType>> = match branch_types {
                Some(t) => t,
                None if op.domain_key().is_empty() => match rules::infer(op, &facts, self.opset) {
                    Ok(t) => t,
                    Err(what) => {
                        self.cx.note(NAME, format!("{node}: {what}"));
                        vec![None; n_out]
                    }
                },
                None => vec![None; n_out],
            };
            types.resize(n_out, None);
            for (i, v) in out_vals.iter().enumerate() {
                if let Some(t) = v {
                    types[i] = Some(tensor_type(t));
                }
            }
            let syms = if op.domain_key().is_empty() {
                rules::sym_values(op, &facts, self.opset)
            } else {
                Vec::new()
            };
            let outs = g.outputs_of(o);
            for (slot, v) in outs.into_iter().enumerate() {
                let Some(v) = v else { continue };
                if let Some(t) = types[slot].take() {
                    self.merge(g, v, t, &node);
                }
                local.vals.insert(v, out_vals[slot].clone());
                if let Some(s) = out_vals[slot].as_deref().and_then(sym_of_tensor) {
                    local.syms.insert(v, s);
                } else if let Some(Some(s)) = syms.get(slot) {
                    local.syms.insert(v, s.clone());
                }
            }
        }
        Ok(())
    }

    /// Infers the subgraphs of op `o`; for an `If`, returns its output types.
    fn subgraphs(
        &mut self,
        g: &mut Graph,
        o: crate::ir::OpId,
        facts: &[Option<Fact>],
        outer: &Scope,
        local: &mut Local,
        node: &str,
    ) -> Result<Option<Vec<Option<ValueType>>>, PassError> {
        let op = g.op(o);
        let is_if = op.op_type == "If" && op.domain_key().is_empty();
        // A constant condition: only the taken branch is inferred and gives the types.
        let taken: Option<&str> = if is_if {
            facts
                .first()
                .and_then(|f| f.as_ref())
                .and_then(|f| f.val.as_deref())
                .and_then(|t| t.to_f64_vec())
                .filter(|v| v.len() == 1)
                .map(|v| {
                    if v[0] != 0.0 {
                        "then_branch"
                    } else {
                        "else_branch"
                    }
                })
        } else {
            None
        };
        // Facts of every name the subgraphs capture.
        let mut scopes: Vec<Scope> = Vec::new();
        for a in &op.attrs {
            let subs: Vec<&Graph> = match &a.value {
                AttrValue::Graph(sg) => vec![&**sg],
                AttrValue::Graphs(gs) => gs.iter().collect(),
                _ => continue,
            };
            for sg in subs {
                let mut sc = Scope::new();
                for name in sg.captures() {
                    let f = match g.value_by_name(&name) {
                        Some(v) => Some(self.fact(g, v, outer, local)),
                        None => outer.get(&name).cloned(),
                    };
                    if let Some(f) = f {
                        sc.insert(name, f);
                    }
                }
                scopes.push(sc);
            }
        }
        let mut i = 0;
        let mut branch_out: BTreeMap<String, Vec<Option<ValueType>>> = BTreeMap::new();
        let opm = g.op_mut(o);
        for a in &mut opm.attrs {
            let attr_name = a.name.clone();
            let subs: Vec<&mut Graph> = match &mut a.value {
                AttrValue::Graph(sg) => vec![&mut **sg],
                AttrValue::Graphs(gs) => gs.iter_mut().collect(),
                _ => continue,
            };
            for sg in subs {
                let sc = &scopes[i];
                i += 1;
                if taken.is_some_and(|t| t != attr_name) {
                    continue;
                }
                let sub_path = format!("{node} {attr_name}: ");
                self.graph(sg, sc, &sub_path)?;
                branch_out.insert(
                    attr_name.clone(),
                    sg.outputs.iter().map(|v| sg.value(*v).ty.clone()).collect(),
                );
            }
        }
        let n_out = g.op(o).n_outputs;
        let op = g.op(o);
        if op.op_type == "Scan" && op.domain_key().is_empty() && self.opset >= 9 {
            let body = branch_out.remove("body").unwrap_or_default();
            return Ok(Some(scan_types(op, facts, &body, n_out)));
        }
        if op.op_type == "Loop" && op.domain_key().is_empty() {
            let body = branch_out.remove("body").unwrap_or_default();
            return Ok(Some(loop_types(op, facts, &body, n_out)));
        }
        if !is_if {
            return Ok(None);
        }
        Ok(Some(match taken {
            Some(t) => branch_out.remove(t).unwrap_or_default(),
            None => {
                let th = branch_out.remove("then_branch").unwrap_or_default();
                let el = branch_out.remove("else_branch").unwrap_or_default();
                (0..n_out)
                    .map(
                        |k| match (th.get(k).cloned().flatten(), el.get(k).cloned().flatten()) {
                            (Some(a), Some(b)) => rules::agree(&a, &b),
                            _ => None,
                        },
                    )
                    .collect()
            }
        }))
    }

    /// Merges an inferred type into `v`'s type (never less specific than before). A
    /// declared shape that contradicts the inferred one (rank or a known dim) is relaxed:
    /// the contradicting rank or dims give way to the inferred ones, so that the model
    /// the engine loads, and the model written, never contradict themselves. A declared
    /// element type that contradicts inference is kept (and noted).
    fn merge(&mut self, g: &mut Graph, v: ValueId, inferred: ValueType, node: &str) {
        let name = g.value(v).name.clone();
        let cur = g.value(v).ty.clone();
        let (mut new, conflict) = merge_types(cur.as_ref(), inferred.clone());
        if let Some(c) = conflict {
            match relax(cur.as_ref(), &inferred) {
                Some(relaxed) => {
                    let declared = cur.as_ref().map(ValueType::display).unwrap_or_default();
                    let kind = if g.is_output(v) {
                        "graph output"
                    } else {
                        "value"
                    };
                    self.cx.note(
                        NAME,
                        format!(
                            "{node}: {kind} '{name}': declared shape {declared} contradicts the graph, which computes {}; relaxed to {}",
                            inferred.display(),
                            relaxed.display()
                        ),
                    );
                    new = Some(relaxed);
                }
                None => self.cx.note(
                    NAME,
                    format!(
                        "{node}: output '{name}': the model says {c}; keeping the model's type"
                    ),
                ),
            }
        }
        if new.is_some() && new != cur {
            g.value_mut(v).ty = new;
            self.changed = true;
        }
    }
}

/// Output types of a `Scan` (opset 9 and later) from its body's output types: the
/// states as the body gives them, each scan output with the scan length inserted at its
/// axis (the length of the first scanned input along its axis, when known).
fn scan_types(
    op: &crate::ir::Op,
    facts: &[Option<Fact>],
    body: &[Option<ValueType>],
    n_out: usize,
) -> Vec<Option<ValueType>> {
    let n_scan = op.attr_int("num_scan_inputs").unwrap_or(0).max(0) as usize;
    let n_state = facts.len().saturating_sub(n_scan);
    let len = facts
        .get(n_state)
        .and_then(|f| f.as_ref())
        .and_then(|f| match &f.ty {
            Some(ValueType::Tensor {
                shape: Some(dims), ..
            }) => {
                let ax = op
                    .attr_ints("scan_input_axes")
                    .and_then(|a| a.first().copied())
                    .unwrap_or(0);
                let ax = if ax < 0 { ax + dims.len() as i64 } else { ax };
                usize::try_from(ax).ok().and_then(|a| dims.get(a).cloned())
            }
            _ => None,
        })
        .unwrap_or(Dim::Unknown);
    let out_axes = op.attr_ints("scan_output_axes").unwrap_or(&[]);
    (0..n_out)
        .map(|k| {
            let t = body.get(k).cloned().flatten()?;
            if k < n_state {
                return Some(t);
            }
            match t {
                ValueType::Tensor {
                    dtype,
                    shape: Some(mut dims),
                } => {
                    let ax = out_axes.get(k - n_state).copied().unwrap_or(0);
                    let ax = if ax < 0 {
                        ax + dims.len() as i64 + 1
                    } else {
                        ax
                    };
                    let ax = usize::try_from(ax).ok().filter(|&a| a <= dims.len())?;
                    dims.insert(ax, len.clone());
                    Some(ValueType::Tensor {
                        dtype,
                        shape: Some(dims),
                    })
                }
                ValueType::Tensor { dtype, shape: None } => {
                    Some(ValueType::Tensor { dtype, shape: None })
                }
                _ => None,
            }
        })
        .collect()
}

/// Output types of a `Loop` from its inputs and its body's output types: a carried
/// value has the type its initial value and the body's output agree on (its shape may
/// change from one iteration to the next); a scan output has the body's type with the
/// number of iterations in front, known when the trip count is a constant, `cond` is
/// absent or the constant `true`, and the body hands its condition on unchanged.
fn loop_types(
    op: &crate::ir::Op,
    facts: &[Option<Fact>],
    body: &[Option<ValueType>],
    n_out: usize,
) -> Vec<Option<ValueType>> {
    let n = facts.len().saturating_sub(2);
    let fact_ty = |i: usize| {
        facts
            .get(i)
            .and_then(|f| f.as_ref())
            .and_then(|f| f.ty.clone())
    };
    let fixed = match op.attr("body") {
        Some(AttrValue::Graph(b)) => {
            super::unroll_loop::condition_stays_true(b, &super::util::OuterConsts::new())
        }
        _ => false,
    };
    let starts = match facts.get(1) {
        None | Some(None) => true,
        Some(Some(c)) => c
            .val
            .as_deref()
            .and_then(Tensor::to_i64_vec)
            .is_some_and(|v| v == [1]),
    };
    let trips = facts
        .first()
        .and_then(|f| f.as_ref())
        .and_then(|f| f.val.as_deref())
        .and_then(Tensor::to_i64_vec)
        .filter(|v| v.len() == 1 && starts && fixed)
        .map_or(Dim::Unknown, |v| Dim::Known(v[0].max(0)));
    (0..n_out)
        .map(|k| {
            let t = body.get(1 + k).cloned().flatten()?;
            if k < n {
                return rules::agree(&t, &fact_ty(2 + k)?);
            }
            match t {
                ValueType::Tensor {
                    dtype,
                    shape: Some(dims),
                } => {
                    let mut d = vec![trips.clone()];
                    d.extend(dims);
                    Some(ValueType::Tensor {
                        dtype,
                        shape: Some(d),
                    })
                }
                ValueType::Tensor { dtype, shape: None } => {
                    Some(ValueType::Tensor { dtype, shape: None })
                }
                _ => None,
            }
        })
        .collect()
}

/// A `Constant` holding more than the fold limit: typed from its attribute without
/// decoding.
fn too_big_constant(op: &crate::ir::Op) -> bool {
    op.op_type == "Constant"
        && matches!(op.attr("value"), Some(AttrValue::Tensor(t)) if t.numel() > FOLD_LIMIT)
}

/// `ty` unless it says nothing: an empty `TypeProto` (kept opaque by the decoder so the
/// file round-trips) is as good as no type.
pub(crate) fn informative(ty: Option<&ValueType>) -> Option<&ValueType> {
    match ty {
        Some(ValueType::Opaque(c)) if c.0.is_empty() => None,
        t => t,
    }
}

/// `ty` with negative dims (some exporters write `-1` for "dynamic") as unknown.
fn normalized(ty: &ValueType) -> ValueType {
    match ty {
        ValueType::Tensor {
            dtype,
            shape: Some(dims),
        } if dims.iter().any(|d| matches!(d, Dim::Known(k) if *k < 0)) => ValueType::Tensor {
            dtype: *dtype,
            shape: Some(
                dims.iter()
                    .map(|d| match d {
                        Dim::Known(k) if *k < 0 => Dim::Unknown,
                        d => d.clone(),
                    })
                    .collect(),
            ),
        },
        t => t.clone(),
    }
}

/// `cur` with the parts of its shape that contradict `inferred` given up: a different
/// rank gives the inferred shape, a known dim that differs gives the inferred dim (other
/// dims merge as in [`merge_types`]). `None` when the element types differ (a shape
/// cannot fix that) or either is not a tensor type.
pub(crate) fn relax(cur: Option<&ValueType>, inferred: &ValueType) -> Option<ValueType> {
    let (
        ValueType::Tensor {
            dtype: d1,
            shape: Some(a),
        },
        ValueType::Tensor {
            dtype: d2,
            shape: Some(b),
        },
    ) = (informative(cur)?, inferred)
    else {
        return None;
    };
    if d1 != d2 {
        return None;
    }
    if a.len() != b.len() {
        return Some(inferred.clone());
    }
    let dims = a
        .iter()
        .zip(b)
        .map(|(x, y)| match (x, y) {
            (Dim::Known(p), Dim::Known(q)) if *p >= 0 && p != q => y.clone(),
            (Dim::Known(p), _) if *p >= 0 => x.clone(),
            (Dim::Param(_), Dim::Known(_)) | (Dim::Unknown, _) | (Dim::Known(_), _) => y.clone(),
            (Dim::Param(_), _) => x.clone(),
        })
        .collect();
    Some(ValueType::Tensor {
        dtype: *d1,
        shape: Some(dims),
    })
}

/// Merges an inferred type into an existing one. Returns the result and, when they
/// disagree, a description of the disagreement.
pub(crate) fn merge_types(
    cur: Option<&ValueType>,
    inferred: ValueType,
) -> (Option<ValueType>, Option<String>) {
    let Some(cur) = informative(cur) else {
        return (Some(inferred), None);
    };
    let (
        ValueType::Tensor {
            dtype: d1,
            shape: s1,
        },
        ValueType::Tensor {
            dtype: d2,
            shape: s2,
        },
    ) = (cur, &inferred)
    else {
        return (Some(cur.clone()), None);
    };
    if d1 != d2 {
        return (
            Some(cur.clone()),
            Some(format!(
                "{}, inference gives {}",
                cur.display(),
                inferred.display()
            )),
        );
    }
    let shape = match (s1, s2) {
        (None, s) => s.clone(),
        (s, None) => s.clone(),
        (Some(a), Some(b)) => {
            if a.len() != b.len() {
                return (
                    Some(cur.clone()),
                    Some(format!(
                        "{}, inference gives {}",
                        cur.display(),
                        inferred.display()
                    )),
                );
            }
            let mut out = Vec::with_capacity(a.len());
            let mut clash = false;
            for (x, y) in a.iter().zip(b) {
                out.push(match (x, y) {
                    (Dim::Known(p), Dim::Known(q)) if *p >= 0 => {
                        clash |= p != q;
                        Dim::Known(*p)
                    }
                    (Dim::Known(p), y) if *p < 0 => y.clone(),
                    (Dim::Known(p), _) => Dim::Known(*p),
                    (_, Dim::Known(q)) => Dim::Known(*q),
                    (Dim::Param(p), _) => Dim::Param(p.clone()),
                    (Dim::Unknown, y) => y.clone(),
                });
            }
            if clash {
                return (
                    Some(cur.clone()),
                    Some(format!(
                        "{}, inference gives {}",
                        cur.display(),
                        inferred.display()
                    )),
                );
            }
            Some(out)
        }
    };
    (Some(ValueType::Tensor { dtype: *d1, shape }), None)
}
