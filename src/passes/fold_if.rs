//! Pass `fold_if`: replaces each `If` whose condition is a constant by its taken
//! branch, inlined, and repeats until nothing changes.
//!
//! **What it does.** One sweep ([`fold_ifs`]) visits every graph, innermost first, and
//! inlines each `If` with a constant condition: the branch's ops and initializers move
//! into the enclosing graph, the branch outputs become the `If`'s outputs (the op
//! producing a branch output takes the `If` output's name; other cases get an
//! `Identity` that `fold_constants` removes), and names the branch captures from outer
//! scopes resolve as they are. A branch value whose name is already used in the
//! enclosing graph, its subgraphs or any enclosing scope gets a name derived from it
//! ([`derive_name`]: `x.1`, `x.2`…, in graph order, never in hash order); subgraphs that
//! capture it are renamed along. The pass runs `infer_shapes` → `fold_constants` → one
//! sweep in a loop until a round changes nothing: an inlined branch brings nested `If`s
//! whose conditions (often `Shape`/`Size`/rank tests) only become constant once
//! shapes are propagated through the inlined ops. A loop that does not settle within
//! [`MAX_ROUNDS`] rounds is an error.
//!
//! **Requires:** nothing; pinned inputs and concrete input shapes (`pin_inputs`) are
//! what usually makes conditions constant.
//!
//! **Effects:** ops, values, initializers, types (everything `infer_shapes` and
//! `fold_constants` touch). Op order keys of the enclosing graph are renumbered so
//! inlined ops sit where the `If` was.
//!
//! **Example** (`sr` pinned to 16000):
//! ```text
//! const  %sr: i64[] = [16000]                       const  %w: f32[4] = [...]
//! %c = Equal(%sr, %k16000) : bool[]                  %y = Mul(%x, %w) : f32[4]
//! %y = If(%c) {...} : f32[4]                         output %y: f32[4]
//!   then_branch "then" {
//!     const  %w: f32[4] = [...]
//!     %t = Mul(%x, %w) : f32[4]
//!     output %t: f32[4]
//!   }
//!   else_branch "else" { ... }
//! output %y: f32[4]
//! ```

use super::util::{
    const_value, derive_name, for_each_subgraph, is_captured, names_in_use, place_ops,
    rename_in_subgraphs, OuterConsts,
};
use super::{Changed, FoldConstants, InferShapes, Pass, PassCx, PassError};
use crate::ir::{AttrValue, Carry, Graph, Model, Op, OpId, Value, ValueId};
use std::collections::{BTreeSet, HashMap};

/// See the module documentation.
pub struct FoldIf {
    /// Rounds allowed before the loop is an error (default [`MAX_ROUNDS`]).
    pub max_rounds: usize,
}

impl Default for FoldIf {
    fn default() -> FoldIf {
        FoldIf {
            max_rounds: MAX_ROUNDS,
        }
    }
}

const NAME: &str = "fold_if";

/// Default number of rounds of infer_shapes → fold_constants → fold_if before giving up
/// with an error. Each round inlines at least one level of nesting; real models need a
/// few (silero_vad: 4, the last one finding nothing left to do).
pub const MAX_ROUNDS: usize = 64;

fn err(what: String) -> PassError {
    PassError { pass: NAME, what }
}

impl Pass for FoldIf {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "inline If nodes with constant conditions (loops with infer_shapes and fold_constants to a fixed point)"
    }

    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
        let mut any = Changed::No;
        for _ in 0..self.max_rounds {
            let a = InferShapes.run(m, cx)?;
            let b = FoldConstants.run(m, cx)?;
            let c = fold_ifs(m, cx)?;
            let round = a.or(b).or(c);
            if round == Changed::No {
                return Ok(any);
            }
            any = Changed::Yes;
        }
        Err(err(format!(
            "no fixed point after {} rounds of infer_shapes, fold_constants and fold_if",
            self.max_rounds
        )))
    }
}

/// One sweep: inlines every `If` whose condition is constant, in every graph.
pub fn fold_ifs(m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
    let changed = sweep(&mut m.graph, &OuterConsts::new(), &BTreeSet::new(), cx, "")?;
    Ok(Changed::from_bool(changed))
}

fn sweep(
    g: &mut Graph,
    outer: &OuterConsts,
    outer_names: &BTreeSet<String>,
    cx: &mut PassCx,
    path: &str,
) -> Result<bool, PassError> {
    let mut changed = false;
    let order = g.topo_order().map_err(|e| err(format!("{path}{e}")))?;
    // Subgraphs first (an If inside a Loop body or a non-constant branch).
    let mut inner_names = outer_names.clone();
    inner_names.extend(g.values().map(|v| g.value(v).name.clone()));
    for &o in &order {
        if g.op(o).subgraphs().is_empty() {
            continue;
        }
        changed |= for_each_subgraph(g, o, outer, path, |sg, sc, node| {
            sweep(sg, sc, &inner_names, cx, node)
        })?;
    }
    // Then the Ifs of this graph.
    for o in order {
        let op = g.op(o);
        if op.op_type != "If" || !op.domain_key().is_empty() {
            continue;
        }
        let Some(cond) = g.input(o, 0) else { continue };
        let Some(c) = const_value(g, cond, outer) else {
            continue;
        };
        let node = format!("{path}node '{}' (If)", op.display_name());
        let vals = c.to_f64_vec().unwrap_or_default();
        if vals.len() != 1 {
            cx.note(
                NAME,
                format!(
                    "{node}: condition has {} elements, not one; left in place",
                    vals.len()
                ),
            );
            continue;
        }
        let branch = if vals[0] != 0.0 {
            "then_branch"
        } else {
            "else_branch"
        };
        inline(g, o, branch, outer_names, &node)?;
        changed = true;
    }
    Ok(changed)
}

/// Replaces `If` op `o` of `g` by the ops of its `branch` attribute.
fn inline(
    g: &mut Graph,
    o: OpId,
    branch: &str,
    outer_names: &BTreeSet<String>,
    node: &str,
) -> Result<(), PassError> {
    let outs = g.outputs_of(o);
    let if_order = g.op(o).order;
    let mut op: Op = g.remove_op(o);
    let Some(pos) = op.attrs.iter().position(|a| a.name == branch) else {
        return Err(err(format!("{node}: has no {branch}")));
    };
    let mut b: Graph = match std::mem::replace(&mut op.attrs[pos].value, AttrValue::Int(0)) {
        AttrValue::Graph(sg) => *sg,
        _ => return Err(err(format!("{node}: {branch} is not a graph"))),
    };
    if !b.inputs.is_empty() {
        return Err(err(format!("{node}: {branch} declares inputs")));
    }
    if b.outputs.len() != outs.len() {
        return Err(err(format!(
            "{node}: {branch} has {} outputs, the If has {}",
            b.outputs.len(),
            outs.len()
        )));
    }
    // Names a value moved into `g` must not take.
    let mut taken: BTreeSet<String> = outer_names.clone();
    names_in_use(g, &mut taken);
    let mut b_names = BTreeSet::new();
    names_in_use(&b, &mut b_names);

    // Branch outputs produced by a branch op take the If output's place.
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut claimed: BTreeSet<ValueId> = BTreeSet::new();
    for (i, bv) in b.outputs.clone().into_iter().enumerate() {
        let Some(target) = outs[i] else { continue };
        if b.producer(bv).is_some() && !map.contains_key(&bv) {
            map.insert(bv, target);
            claimed.insert(target);
            let tname = g.value(target).name.clone();
            let bname = b.value(bv).name.clone();
            rename_in_subgraphs(&mut b, &bname, &tname);
            if super::infer_shapes::informative(g.value(target).ty.as_ref()).is_none() {
                g.value_mut(target).ty = b.value(bv).ty.clone();
            }
        }
    }
    // Every other branch value: captured names resolve in `g`; defined ones move.
    let bvals: Vec<ValueId> = b.values().collect();
    for bv in bvals {
        if map.contains_key(&bv) {
            continue;
        }
        let name = b.value(bv).name.clone();
        if is_captured(&b, bv) {
            let gv = match g.value_by_name(&name) {
                Some(v) => v,
                None => g
                    .add_value(Value {
                        name: name.clone(),
                        ty: None,
                        init: None,
                        carry: Carry::default(),
                    })
                    .map_err(|e| err(format!("{node}: {e}")))?,
            };
            map.insert(bv, gv);
            continue;
        }
        let new_name = derive_name(&name, |n| {
            taken.contains(n) || (n != name && b_names.contains(n))
        });
        taken.insert(new_name.clone());
        if new_name != name {
            rename_in_subgraphs(&mut b, &name, &new_name);
        }
        let src = b.value(bv);
        let gv = match src.init.map(|t| b.tensor(t).clone()) {
            Some(t) => {
                let v = g
                    .add_const(&new_name, t)
                    .map_err(|e| err(format!("{node}: {e}")))?;
                g.value_mut(v).carry = src.carry.clone();
                v
            }
            None => g
                .add_value(Value {
                    name: new_name,
                    ty: src.ty.clone(),
                    init: None,
                    carry: src.carry.clone(),
                })
                .map_err(|e| err(format!("{node}: {e}")))?,
        };
        map.insert(bv, gv);
    }
    // Move the ops, in the branch's order, placing them where the If was.
    let b_order = b
        .topo_order()
        .map_err(|e| err(format!("{node}: {branch}: {e}")))?;
    let mut moved: Vec<OpId> = Vec::with_capacity(b_order.len());
    for bo in b_order {
        let ins: Vec<Option<ValueId>> = b
            .inputs_of(bo)
            .into_iter()
            .map(|v| v.map(|v| map[&v]))
            .collect();
        let outs_b: Vec<Option<ValueId>> = b
            .outputs_of(bo)
            .into_iter()
            .map(|v| v.map(|v| map[&v]))
            .collect();
        let mut bop = b.remove_op(bo);
        bop.order = (0, 0);
        let id = g
            .add_op(bop, &ins, &outs_b)
            .map_err(|e| err(format!("{node}: {e}")))?;
        moved.push(id);
    }
    // Outputs not produced in place: wire with an Identity.
    for (i, bv) in b.outputs.clone().into_iter().enumerate() {
        let Some(target) = outs[i] else { continue };
        let src = map[&bv];
        if src == target {
            continue;
        }
        let mut id_op = Op::new("Identity", &format!("{}.inline", g.value(target).name));
        id_op.order = (0, 0);
        let id = g
            .add_op(id_op, &[Some(src)], &[Some(target)])
            .map_err(|e| err(format!("{node}: {e}")))?;
        moved.push(id);
    }
    place_ops(g, if_order, &moved);
    Ok(())
}
