//! Graph-editing helpers shared by passes: constants visible across scopes, renaming a
//! value together with the subgraphs that capture it by name, dead-code removal and
//! derived names.
//!
//! Subgraphs (If branches, Loop bodies) read outer values *by name*: a captured name is
//! a value node of the subgraph with no producer, no initializer and no input slot.
//! Every rename or use replacement in a graph therefore has to follow into its
//! subgraphs, which is what [`replace_uses_everywhere`] and [`rename_everywhere`] do.

use crate::ir::{Graph, Model, OpId, Tensor, ValueId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

/// Largest tensor (in elements) that passes decode to compute with or fold into a new
/// initializer. Large enough for shapes, masks and small tables; weights bigger than
/// this are never duplicated by folding.
pub const FOLD_LIMIT: usize = 1 << 16;

/// Constant values visible in a subgraph from its enclosing graphs, by name.
pub type OuterConsts = BTreeMap<String, Rc<Tensor>>;

/// True when `v` is captured from an enclosing scope: no producer, no initializer, no
/// input slot in `g`.
pub fn is_captured(g: &Graph, v: ValueId) -> bool {
    g.producer(v).is_none() && g.value(v).init.is_none() && !g.is_input(v)
}

/// Decodes the initializer behind `v` when it has at most `limit` elements.
pub fn small_const(g: &Graph, v: ValueId, limit: usize) -> Option<Tensor> {
    let t = g.const_of(v)?;
    if t.numel() > limit {
        return None;
    }
    t.to_tensor().ok()
}

/// The constant value of `v` seen from `g`: its own initializer (when small), or the
/// outer constant of the same name when `v` is captured. Graph inputs are never
/// constant, even when they have an initializer (IR < 4 overridable inputs).
pub fn const_value(g: &Graph, v: ValueId, outer: &OuterConsts) -> Option<Rc<Tensor>> {
    if g.is_input(v) {
        return None;
    }
    if g.value(v).init.is_some() {
        return small_const(g, v, FOLD_LIMIT).map(Rc::new);
    }
    if is_captured(g, v) {
        return outer.get(&g.value(v).name).cloned();
    }
    None
}

/// The outer constants a subgraph `sub` of `g` can see: for each name it captures, the
/// constant behind it in `g` or further out.
/// Runs `f` on every subgraph of op `o`, each with the constants visible to it from
/// `outer` and `g`, and a `path` prefix naming the op for messages; true when any call
/// changed something.
pub fn for_each_subgraph<E>(
    g: &mut Graph,
    o: OpId,
    outer: &OuterConsts,
    path: &str,
    mut f: impl FnMut(&mut Graph, &OuterConsts, &str) -> Result<bool, E>,
) -> Result<bool, E> {
    let scopes: Vec<OuterConsts> = g
        .op(o)
        .subgraphs()
        .iter()
        .map(|(_, sg)| consts_for_subgraph(g, outer, sg))
        .collect();
    let node = format!(
        "{path}node '{}' ({}): ",
        g.op(o).display_name(),
        g.op(o).op_type
    );
    let mut changed = false;
    for (sg, sc) in g.op_mut(o).subgraphs_mut().into_iter().zip(&scopes) {
        changed |= f(sg, sc, &node)?;
    }
    Ok(changed)
}

pub fn consts_for_subgraph(g: &Graph, outer: &OuterConsts, sub: &Graph) -> OuterConsts {
    let mut out = OuterConsts::new();
    for name in sub.captures() {
        let c = match g.value_by_name(&name) {
            Some(v) => const_value(g, v, outer),
            None => outer.get(&name).cloned(),
        };
        if let Some(c) = c {
            out.insert(name, c);
        }
    }
    out
}

/// Every value name defined or read in `g` and, recursively, in its subgraphs.
pub fn names_in_use(g: &Graph, out: &mut BTreeSet<String>) {
    for v in g.values() {
        out.insert(g.value(v).name.clone());
    }
    for o in g.ops() {
        for (_, sg) in g.op(o).subgraphs() {
            names_in_use(sg, out);
        }
    }
}

/// `base` when `taken(base)` is false, else the first free `base.1`, `base.2`, ….
/// Deterministic: depends only on `base` and the names already taken.
pub fn derive_name(base: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}.{i}"))
        .find(|n| !taken(n))
        .expect("unbounded")
}

/// In every subgraph of `g`'s ops (recursively), makes reads of the captured name
/// `old` read `new` instead.
pub fn rename_in_subgraphs(g: &mut Graph, old: &str, new: &str) {
    let ops: Vec<_> = g.ops().collect();
    for o in ops {
        for sg in g.op_mut(o).subgraphs_mut() {
            rename_capture(sg, old, new);
        }
    }
}

fn rename_capture(sg: &mut Graph, old: &str, new: &str) {
    if let Some(v) = sg.value_by_name(old) {
        if !is_captured(sg, v) {
            // The subgraph defines its own `old`: reads below refer to that one.
            return;
        }
        match sg.value_by_name(new) {
            Some(w) => {
                sg.replace_all_uses(v, w);
                if sg.consumers(v).is_empty() && !sg.is_output(v) {
                    sg.remove_value(v);
                }
            }
            None => sg
                .rename_value(v, new)
                .expect("new name checked free in this subgraph"),
        }
    }
    rename_in_subgraphs(sg, old, new);
}

/// Makes every reader of `old` (ops, graph outputs, and subgraphs capturing it by
/// name) read `new` instead.
pub fn replace_uses_everywhere(g: &mut Graph, old: ValueId, new: ValueId) {
    g.replace_all_uses(old, new);
    let (a, b) = (g.value(old).name.clone(), g.value(new).name.clone());
    if a != b {
        rename_in_subgraphs(g, &a, &b);
    }
}

/// Renames `v` to `name`, in `g` and in the subgraphs that capture it.
pub fn rename_everywhere(g: &mut Graph, v: ValueId, name: &str) -> Result<(), String> {
    let old = g.value(v).name.clone();
    if old == name {
        return Ok(());
    }
    g.rename_value(v, name).map_err(|e| e.to_string())?;
    rename_in_subgraphs(g, &old, name);
    Ok(())
}

/// Names read by the subgraphs of `g`'s ops from `g` or further out.
pub fn captured_by_subgraphs(g: &Graph) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for o in g.ops() {
        for (_, sg) in g.op(o).subgraphs() {
            out.extend(sg.captures());
        }
    }
    out
}

/// Removes, in `g` and its subgraphs, ops of the ONNX domains whose outputs nobody
/// reads, then initializers and loose values nobody reads. Graph inputs and outputs
/// stay. Returns true when anything was removed.
pub fn remove_dead(g: &mut Graph) -> bool {
    let mut changed = false;
    let ops: Vec<_> = g.ops().collect();
    for o in ops {
        for sg in g.op_mut(o).subgraphs_mut() {
            changed |= remove_dead(sg);
        }
    }
    loop {
        let captured = captured_by_subgraphs(g);
        let used = |g: &Graph, v: ValueId| {
            !g.consumers(v).is_empty() || g.is_output(v) || captured.contains(&g.value(v).name)
        };
        let dead: Vec<_> = g
            .ops()
            .filter(|&o| {
                matches!(g.op(o).domain_key(), "" | "ai.onnx.ml")
                    && g.outputs_of(o).into_iter().flatten().all(|v| !used(g, v))
            })
            .collect();
        if dead.is_empty() {
            break;
        }
        for o in dead {
            g.remove_op_and_dead_outputs(o);
        }
        changed = true;
    }
    let captured = captured_by_subgraphs(g);
    let loose: Vec<_> = g
        .values()
        .filter(|&v| {
            g.producer(v).is_none()
                && g.consumers(v).is_empty()
                && !g.is_output(v)
                && !g.is_input(v)
                && !captured.contains(&g.value(v).name)
        })
        .collect();
    for v in loose {
        g.remove_value(v);
        changed = true;
    }
    changed
}

/// Before IR version 4 every initializer had to be a graph input too; passes that add
/// initializers which are not inputs move such a model to IR version 4, where they are
/// plain constants.
pub fn allow_constant_initializers(m: &mut Model) {
    if m.ir_version.is_some_and(|v| v < 4) {
        m.ir_version = Some(4);
    }
}

/// Renumbers op order keys: every op keeps its relative place, and `moved` ops go
/// where an op with key `at` was, in the given order.
pub fn place_ops(g: &mut Graph, at: (u32, u32), moved: &[OpId]) {
    let pos: HashMap<OpId, usize> = moved.iter().enumerate().map(|(i, o)| (*o, i)).collect();
    let mut keys: Vec<((u32, u32, usize), OpId)> = g
        .ops()
        .map(|o| match pos.get(&o) {
            Some(i) => ((at.0, at.1, i + 1), o),
            None => {
                let k = g.op(o).order;
                ((k.0, k.1, 0), o)
            }
        })
        .collect();
    keys.sort();
    for (i, (_, o)) in keys.into_iter().enumerate() {
        g.op_mut(o).order = (i as u32, 0);
    }
}
