//! Pass `unroll_loop`: replaces each `Loop` whose trip count is a small constant by one
//! copy of its body per iteration.
//!
//! **What it does.** A `Loop` is unrolled when its trip count `M` is a constant (an
//! initializer, a `Constant` node or a constant captured from an enclosing graph) of at
//! least 1, its `cond` input is absent or the constant `true`, and its body hands the
//! condition on unchanged (the body's condition output is its condition input, an
//! `Identity` of it, or the constant `true`), so exactly `M` iterations run whatever the
//! data. Iteration `i` is a copy of the body whose iteration-number input is the constant
//! `i`, whose loop-carried inputs are the previous copy's carried outputs (the `Loop`'s
//! initial values for the first), and whose reads of enclosing graphs resolve as they are.
//! The last copy's carried outputs become the `Loop`'s first outputs (through `Identity`),
//! and each scan output is the per-iteration values stacked along a new first axis, as ONNX
//! specifies (`Unsqueeze` on axis 0, then `Concat`). The body's initializers are shared by
//! all copies. Copies whose outputs nobody reads (the condition chain) are dropped.
//!
//! **Bounds.** At most [`MAX_TRIPS`] iterations, and at most [`MAX_OPS`] ops in all copies
//! together (a body's ops counted with those of its own subgraphs): the engine plans the
//! unrolled graph as a whole, and a plan grows with it. A body holding an `If` is unrolled
//! only when the graph ends up with a single `If`: the engine names every `If` node alike
//! and loads at most one per graph. A `Loop` past these bounds, or whose trip count or
//! condition depends on the data, is left in place: the execution engine then runs its
//! body once per iteration (`exec`).
//!
//! Loops inside subgraphs are unrolled too, innermost first. Names of copied values derive
//! from the body's (`h.iter0`, `h.iter1`…, with `.1`, `.2`… when taken anywhere in the
//! model), never from counters alone.
//!
//! **Requires:** nothing. **Effects:** ops, values and initializers of the graphs holding
//! the unrolled `Loop`s; order keys are renumbered so the copies sit where the `Loop` was.
//! `qrange quantize` keeps every `Loop` in the model it writes: this pass serves execution
//! (`exec` runs it on the engine's copy of a model).
//!
//! **Example** (`M` = 2, one carried value, one scan output):
//! ```text
//! %y, %ys = Loop(%two, "", %x) {body}             %h.iter0 = Relu(%x)
//!   body { input %i, %c, %v                        %h.iter1 = Relu(%h.iter0)
//!          %h = Relu(%v)                           %y = Identity(%h.iter1)
//!          output %c, %h, %h }                     %h.iter0.stack = Unsqueeze(%h.iter0, %loop.axes)
//!                                                  %h.iter1.stack = Unsqueeze(%h.iter1, %loop.axes)
//!                                                  %ys = Concat(%h.iter0.stack, %h.iter1.stack) {axis=0}
//! ```

use super::util::{
    allow_constant_initializers, captured_by_subgraphs, const_value, derive_name,
    for_each_subgraph, is_captured, names_in_use, place_ops, rename_in_subgraphs, OuterConsts,
};
use super::{Changed, Pass, PassCx, PassError};
use crate::ir::{
    AttrValue, Carry, ConstTensor, Dim, Graph, Model, Op, OpId, Tensor, Value, ValueId, ValueType,
};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

const NAME: &str = "unroll_loop";

/// Most iterations a `Loop` is unrolled for.
pub const MAX_TRIPS: u64 = 64;
/// Most ops all copies of one `Loop`'s body may hold together.
pub const MAX_OPS: usize = 4096;

/// How far the pass unrolls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnrollLimits {
    /// Most iterations (0: unroll nothing).
    pub max_trips: u64,
    /// Most ops in all copies of one body.
    pub max_ops: usize,
}

impl Default for UnrollLimits {
    fn default() -> UnrollLimits {
        UnrollLimits {
            max_trips: MAX_TRIPS,
            max_ops: MAX_OPS,
        }
    }
}

/// A `Loop` the pass unrolled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unrolled {
    /// Where it was: `node 'loop'`, prefixed by the path of the subgraph holding it.
    pub node: String,
    pub trips: u64,
}

/// See the module documentation.
#[derive(Default)]
pub struct UnrollLoops {
    pub limits: UnrollLimits,
}

impl Pass for UnrollLoops {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "replace Loops with a small constant trip count by one copy of the body per iteration"
    }

    fn run(&self, m: &mut Model, _cx: &mut PassCx) -> Result<Changed, PassError> {
        let done = unroll_loops(m, &self.limits)?;
        Ok(Changed::from_bool(!done.is_empty()))
    }
}

fn err(what: String) -> PassError {
    PassError { pass: NAME, what }
}

/// Unrolls every `Loop` of `m` (subgraphs included) that the module documentation
/// allows within `limits`; returns them in the order they were unrolled.
pub fn unroll_loops(m: &mut Model, limits: &UnrollLimits) -> Result<Vec<Unrolled>, PassError> {
    let mut taken = BTreeSet::new();
    names_in_use(&m.graph, &mut taken);
    op_names(&m.graph, &mut taken);
    let mut st = State {
        opset: m.opset("").unwrap_or(1),
        limits: *limits,
        taken,
        done: Vec::new(),
    };
    sweep(&mut m.graph, &OuterConsts::new(), "", &mut st)?;
    if !st.done.is_empty() {
        allow_constant_initializers(m);
    }
    Ok(st.done)
}

struct State {
    opset: i64,
    limits: UnrollLimits,
    /// Every name of the model, new ones included: copies never shadow a name.
    taken: BTreeSet<String>,
    done: Vec<Unrolled>,
}

impl State {
    fn name(&mut self, base: &str) -> String {
        let n = derive_name(base, |n| self.taken.contains(n));
        self.taken.insert(n.clone());
        n
    }
}

fn sweep(
    g: &mut Graph,
    outer: &OuterConsts,
    path: &str,
    st: &mut State,
) -> Result<bool, PassError> {
    let order = g.topo_order().map_err(|e| err(format!("{path}{e}")))?;
    let mut changed = false;
    for &o in &order {
        if !g.op(o).subgraphs().is_empty() {
            changed |=
                for_each_subgraph(g, o, outer, path, |sg, sc, node| sweep(sg, sc, node, st))?;
        }
    }
    for o in order {
        let Some(trips) = constant_trips(g, o, outer) else {
            continue;
        };
        let body_ops = match g.op(o).attr("body") {
            Some(AttrValue::Graph(b)) => deep_op_count(b),
            _ => continue,
        };
        let within = trips <= st.limits.max_trips
            && (trips as u128) * (body_ops as u128) <= st.limits.max_ops as u128;
        let body_ifs = match g.op(o).attr("body") {
            Some(AttrValue::Graph(b)) => count_ifs(b),
            _ => 0,
        };
        if !within || (body_ifs > 0 && count_ifs(g) as u64 + trips * body_ifs as u64 > 1) {
            continue;
        }
        let node = format!("{path}node '{}'", g.op(o).display_name());
        unroll(g, o, trips, st, &node)?;
        st.done.push(Unrolled { node, trips });
        changed = true;
    }
    Ok(changed)
}

/// Every op name of `g` and of its subgraphs (copies get names of their own: engines
/// want node names unique).
fn op_names(g: &Graph, out: &mut BTreeSet<String>) {
    for o in g.ops() {
        let op = g.op(o);
        if let Some(n) = &op.name {
            out.insert(n.clone());
        }
        for (_, sg) in op.subgraphs() {
            op_names(sg, out);
        }
    }
}

/// `If` ops of `g` itself (not of its subgraphs).
fn count_ifs(g: &Graph) -> usize {
    g.ops()
        .filter(|&o| g.op(o).op_type == "If" && g.op(o).domain_key().is_empty())
        .count()
}

/// Ops of `g` and of all its subgraphs.
fn deep_op_count(g: &Graph) -> usize {
    g.ops()
        .map(|o| {
            1 + g
                .op(o)
                .subgraphs()
                .iter()
                .map(|(_, sg)| deep_op_count(sg))
                .sum::<usize>()
        })
        .sum()
}

/// The constant value of `v` seen from `g`: an initializer, an enclosing graph's
/// constant, or the output of a `Constant` node.
fn known(g: &Graph, v: ValueId, outer: &OuterConsts) -> Option<Rc<Tensor>> {
    if let Some(t) = const_value(g, v, outer) {
        return Some(t);
    }
    let (p, _) = g.producer(v)?;
    let op = g.op(p);
    if op.op_type != "Constant" || !op.domain_key().is_empty() {
        return None;
    }
    match op.attr("value")? {
        AttrValue::Tensor(t) => t.to_tensor().ok().map(Rc::new),
        _ => None,
    }
}

/// The single value of a one-element tensor, as i64.
fn scalar(t: &Tensor) -> Option<i64> {
    match t.to_i64_vec()?.as_slice() {
        [x] => Some(*x),
        _ => None,
    }
}

/// True when the body of a `Loop` hands its condition on unchanged: its condition
/// output is its condition input, an `Identity` of it, or the constant `true`. `outer`
/// holds the constants the body can see from enclosing graphs.
pub fn condition_stays_true(body: &Graph, outer: &OuterConsts) -> bool {
    let (Some(&out), Some(&cin)) = (body.outputs.first(), body.inputs.get(1)) else {
        return false;
    };
    if out == cin {
        return true;
    }
    if let Some((p, _)) = body.producer(out) {
        let op = body.op(p);
        if op.op_type == "Identity" && op.domain_key().is_empty() && body.input(p, 0) == Some(cin) {
            return true;
        }
    }
    known(body, out, outer)
        .is_some_and(|t| t.dtype() == crate::ir::DType::Bool && scalar(&t) == Some(1))
}

/// The trip count of `Loop` op `o` when it runs a constant number of iterations (at
/// least one) whatever the data, as the module documentation says; `None` otherwise.
fn constant_trips(g: &Graph, o: OpId, outer: &OuterConsts) -> Option<u64> {
    let op = g.op(o);
    if op.op_type != "Loop" || !op.domain_key().is_empty() {
        return None;
    }
    let Some(AttrValue::Graph(body)) = op.attr("body") else {
        return None;
    };
    let ins = g.inputs_of(o);
    if ins.len() < 2 || ins[2..].iter().any(Option::is_none) {
        return None;
    }
    let n = ins.len() - 2;
    if body.inputs.len() != ins.len() || body.outputs.len() != 1 + op.n_outputs || op.n_outputs < n
    {
        return None;
    }
    let m = scalar(&*known(g, ins[0]?, outer)?)?;
    let cond_true = match ins[1] {
        None => true,
        Some(c) => known(g, c, outer).is_some_and(|t| scalar(&t) == Some(1)),
    };
    let inner = super::util::consts_for_subgraph(g, outer, body);
    (m >= 1 && cond_true && condition_stays_true(body, &inner)).then_some(m as u64)
}

/// A scalar initializer added to `g` under a name derived from `base`.
fn add_scalar(
    g: &mut Graph,
    st: &mut State,
    base: &str,
    t: Tensor,
    node: &str,
) -> Result<ValueId, PassError> {
    let name = st.name(base);
    g.add_const(&name, ConstTensor::from_tensor(None, &t))
        .map_err(|e| err(format!("{node}: {e}")))
}

/// The type of a value stacked along a new first axis.
fn stacked_type(ty: Option<&ValueType>, n: Option<i64>) -> Option<ValueType> {
    match ty? {
        ValueType::Tensor {
            dtype,
            shape: Some(dims),
        } => {
            let mut d = vec![n.map_or(Dim::Unknown, Dim::Known)];
            d.extend(dims.iter().cloned());
            Some(ValueType::Tensor {
                dtype: *dtype,
                shape: Some(d),
            })
        }
        _ => None,
    }
}

/// What unrolling one `Loop` added to its graph.
#[derive(Default)]
struct Added {
    /// Ops, in the order they should run.
    ops: Vec<OpId>,
    /// Constants, dropped again when nothing reads them.
    consts: Vec<ValueId>,
    /// The body's initializers as constants of the graph, by name in the body.
    shared: HashMap<String, ValueId>,
}

fn add_op(
    g: &mut Graph,
    mut op: Op,
    ins: &[Option<ValueId>],
    outs: &[Option<ValueId>],
    added: &mut Added,
    node: &str,
) -> Result<(), PassError> {
    op.order = (0, 0);
    let id = g
        .add_op(op, ins, outs)
        .map_err(|e| err(format!("{node}: {e}")))?;
    added.ops.push(id);
    Ok(())
}

/// Replaces `Loop` op `o` of `g` by `trips` copies of its body.
fn unroll(g: &mut Graph, o: OpId, trips: u64, st: &mut State, node: &str) -> Result<(), PassError> {
    let ins = g.inputs_of(o);
    let outs = g.outputs_of(o);
    let at = g.op(o).order;
    let loop_name = g.op(o).display_name().to_string();
    let mut op: Op = g.remove_op(o);
    let Some(pos) = op.attrs.iter().position(|a| a.name == "body") else {
        return Err(err(format!("{node}: has no body")));
    };
    let body = match std::mem::replace(&mut op.attrs[pos].value, AttrValue::Int(0)) {
        AttrValue::Graph(b) => *b,
        _ => return Err(err(format!("{node}: body is not a graph"))),
    };
    let n = ins.len() - 2;
    let k = body.outputs.len() - 1 - n;
    let mut carried: Vec<ValueId> = ins[2..].iter().map(|v| v.expect("checked")).collect();
    let mut scans: Vec<Vec<ValueId>> = vec![Vec::new(); k];
    let mut added = Added::default();
    let truth = Tensor::Bool(ndarray::arr0(true).into_dyn());
    let truth = add_scalar(g, st, &format!("{loop_name}.cond"), truth, node)?;
    added.consts.push(truth);
    for i in 0..trips {
        let t = Tensor::I64(ndarray::arr0(i as i64).into_dyn());
        let iteration = add_scalar(g, st, &format!("{loop_name}.iter{i}"), t, node)?;
        added.consts.push(iteration);
        let mut inputs = vec![iteration, truth];
        inputs.extend(&carried);
        let map = copy_body(g, &body, i, &inputs, &mut added, st, node)?;
        for (j, c) in carried.iter_mut().enumerate() {
            *c = map[&body.outputs[1 + j]];
        }
        for (s, list) in scans.iter_mut().enumerate() {
            list.push(map[&body.outputs[1 + n + s]]);
        }
    }
    for (j, &c) in carried.iter().enumerate() {
        let Some(target) = outs[j] else { continue };
        let id = Op::new("Identity", &st.name(&format!("{loop_name}.out{j}")));
        add_op(g, id, &[Some(c)], &[Some(target)], &mut added, node)?;
    }
    stack_scans(g, &scans, &outs[n..], &loop_name, &mut added, st, node)?;
    place_ops(g, at, &added.ops);
    drop_unread(g, &added.ops, &added.consts);
    Ok(())
}

/// Copies `body` into `g` as iteration `i`: its inputs are `inputs` (values of `g`), the
/// names it captures resolve in `g`, its initializers are shared by all copies, every
/// other value and op gets a name of its own. Returns where each body value went.
fn copy_body(
    g: &mut Graph,
    body: &Graph,
    i: u64,
    inputs: &[ValueId],
    added: &mut Added,
    st: &mut State,
    node: &str,
) -> Result<HashMap<ValueId, ValueId>, PassError> {
    let mut b = body.clone();
    let mut map: HashMap<ValueId, ValueId> = body
        .inputs
        .iter()
        .copied()
        .zip(inputs.iter().copied())
        .collect();
    for bv in b.values().collect::<Vec<_>>() {
        if map.contains_key(&bv) {
            continue;
        }
        let name = b.value(bv).name.clone();
        let gv = if is_captured(&b, bv) {
            match g.value_by_name(&name) {
                Some(v) => v,
                None => g
                    .add_value(Value {
                        name: name.clone(),
                        ty: None,
                        init: None,
                        carry: Carry::default(),
                    })
                    .map_err(|e| err(format!("{node}: {e}")))?,
            }
        } else if let Some(t) = b.value(bv).init {
            match added.shared.get(&name) {
                Some(v) => *v,
                None => {
                    let fresh = st.name(&name);
                    let v = g
                        .add_const(&fresh, b.tensor(t).clone())
                        .map_err(|e| err(format!("{node}: {e}")))?;
                    added.shared.insert(name.clone(), v);
                    added.consts.push(v);
                    v
                }
            }
        } else {
            let src = b.value(bv);
            let value = Value {
                name: st.name(&format!("{name}.iter{i}")),
                ty: src.ty.clone(),
                init: None,
                carry: src.carry.clone(),
            };
            g.add_value(value)
                .map_err(|e| err(format!("{node}: {e}")))?
        };
        map.insert(bv, gv);
    }
    // Subgraphs of the copied ops read the copies' names.
    let mut renames: Vec<(String, String)> = map
        .iter()
        .map(|(bv, gv)| (b.value(*bv).name.clone(), g.value(*gv).name.clone()))
        .filter(|(a, z)| a != z)
        .collect();
    renames.sort();
    for (old, new) in &renames {
        rename_in_subgraphs(&mut b, old, new);
    }
    rename_nested_ops(&mut b, i, st);
    let order = b
        .topo_order()
        .map_err(|e| err(format!("{node}: body: {e}")))?;
    for bo in order {
        let remap = |vs: Vec<Option<ValueId>>| -> Vec<Option<ValueId>> {
            vs.into_iter().map(|v| v.map(|v| map[&v])).collect()
        };
        let (ins_b, outs_b) = (remap(b.inputs_of(bo)), remap(b.outputs_of(bo)));
        let mut bop = b.remove_op(bo);
        if let Some(n) = bop.name.as_deref().filter(|n| !n.is_empty()) {
            bop.name = Some(st.name(&format!("{n}.iter{i}")));
        }
        add_op(g, bop, &ins_b, &outs_b, added, node)?;
    }
    Ok(map)
}

/// Writes each scan output `outs[s]` as its per-iteration values `scans[s]` stacked along
/// a new first axis (`Unsqueeze` on axis 0, then `Concat` when there are several).
fn stack_scans(
    g: &mut Graph,
    scans: &[Vec<ValueId>],
    outs: &[Option<ValueId>],
    loop_name: &str,
    added: &mut Added,
    st: &mut State,
    node: &str,
) -> Result<(), PassError> {
    let axes = if !scans.is_empty() && st.opset >= 13 {
        let t = Tensor::I64(ndarray::arr1(&[0i64]).into_dyn());
        let v = add_scalar(g, st, &format!("{loop_name}.axes"), t, node)?;
        added.consts.push(v);
        Some(v)
    } else {
        None
    };
    for (s, list) in scans.iter().enumerate() {
        let Some(target) = outs[s] else { continue };
        let mut parts = Vec::with_capacity(list.len());
        for &v in list {
            let out = if list.len() == 1 {
                target
            } else {
                let ty = stacked_type(g.value(v).ty.as_ref(), Some(1));
                let name = st.name(&format!("{}.stack", g.value(v).name));
                g.add_value(Value {
                    name,
                    ty,
                    init: None,
                    carry: Carry::default(),
                })
                .map_err(|e| err(format!("{node}: {e}")))?
            };
            let mut un = Op::new(
                "Unsqueeze",
                &st.name(&format!("{}.unsqueeze", g.value(v).name)),
            );
            let un_ins = match axes {
                Some(a) => vec![Some(v), Some(a)],
                None => {
                    un.set_attr("axes", AttrValue::Ints(vec![0]));
                    vec![Some(v)]
                }
            };
            add_op(g, un, &un_ins, &[Some(out)], added, node)?;
            parts.push(Some(out));
        }
        if list.len() > 1 {
            let mut cat = Op::new("Concat", &st.name(&format!("{loop_name}.scan{s}")));
            cat.set_attr("axis", AttrValue::Int(0));
            add_op(g, cat, &parts, &[Some(target)], added, node)?;
        }
    }
    Ok(())
}

/// Gives the ops inside the subgraphs of `g`'s ops (recursively) names of iteration `i`:
/// engines want node names unique across the copies.
fn rename_nested_ops(g: &mut Graph, i: u64, st: &mut State) {
    let ops: Vec<OpId> = g.ops().collect();
    for o in ops {
        for sg in g.op_mut(o).subgraphs_mut() {
            let inner: Vec<OpId> = sg.ops().collect();
            for io in inner {
                if let Some(n) = sg.op(io).name.clone().filter(|n| !n.is_empty()) {
                    sg.op_mut(io).name = Some(st.name(&format!("{n}.iter{i}")));
                }
            }
            rename_nested_ops(sg, i, st);
        }
    }
}

/// Removes the ops of `moved` whose outputs nobody reads (repeatedly), then the values
/// of `created` nobody reads.
fn drop_unread(g: &mut Graph, moved: &[OpId], created: &[ValueId]) {
    let mut alive: BTreeSet<OpId> = moved.iter().copied().collect();
    loop {
        let captured = captured_by_subgraphs(g);
        let read = |g: &Graph, v: ValueId| {
            !g.consumers(v).is_empty() || g.is_output(v) || captured.contains(&g.value(v).name)
        };
        let dead: Vec<OpId> = alive
            .iter()
            .copied()
            .filter(|&o| g.outputs_of(o).into_iter().flatten().all(|v| !read(g, v)))
            .collect();
        if dead.is_empty() {
            break;
        }
        for o in dead {
            alive.remove(&o);
            g.remove_op_and_dead_outputs(o);
        }
    }
    let captured = captured_by_subgraphs(g);
    for &v in created {
        if g.consumers(v).is_empty() && !g.is_output(v) && !captured.contains(&g.value(v).name) {
            g.remove_value(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{LoopLimits, Session, SessionOptions};
    use crate::ir::dump::dump_model;
    use crate::onnx::proto;
    use crate::passes::testkit::*;
    use std::collections::BTreeMap;

    fn fixture(name: &str) -> Model {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/tiny")
            .join(name);
        crate::onnx::read_model(&p).unwrap()
    }

    /// `m` run with every Loop's body once per iteration (nothing unrolled).
    fn per_iteration(m: &Model, s: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
        let (p, _) =
            crate::onnx::encode_model(m, &crate::onnx::ExternalPolicy::Inline, "").unwrap();
        let opts = SessionOptions {
            loops: LoopLimits {
                unroll: UnrollLimits {
                    max_trips: 0,
                    ..UnrollLimits::default()
                },
                ..LoopLimits::default()
            },
            ..SessionOptions::default()
        };
        let session = Session::new(&p, None, s, &opts).unwrap();
        assert!(session
            .notes()
            .iter()
            .any(|n| n.contains("run on the host")));
        session.run(s).unwrap()
    }

    fn op_types(g: &Graph) -> Vec<String> {
        let mut v: Vec<String> = g.ops().map(|o| g.op(o).op_type.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn tiny_loop_unrolls_into_three_copies_that_compute_the_same() {
        let original = fixture("tiny_loop.onnx");
        let mut m = original.clone();
        let before = dump_model(&m);
        let done = unroll_loops(&mut m, &UnrollLimits::default()).unwrap();
        assert_eq!(
            done,
            [Unrolled {
                node: "node 'loop'".into(),
                trips: 3
            }]
        );
        m.verify().unwrap();
        // Three copies of Gemm/Add/Relu and of the trace Identity (the condition's
        // Identity copies are dropped), the carried output's Identity, three Unsqueeze
        // and one Concat for the scan output.
        let mut expect: Vec<String> = [
            vec!["Gemm"; 3],
            vec!["Add"; 3],
            vec!["Relu"; 3],
            vec!["Identity"; 4],
            vec!["Unsqueeze"; 3],
            vec!["Concat"],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect();
        expect.sort();
        assert_eq!(op_types(&m.graph), expect);
        for seed in 0..3 {
            let s = sample(&[("x", tensor(seed, &[1, 4]))]);
            assert_close(&run(&m, &s), &per_iteration(&original, &s), 1e-6);
        }
        insta::assert_snapshot!(format!("--- before\n{before}--- after\n{}", dump_model(&m)));
    }

    /// `Loop(two, "", x)` whose body holds an If whose branches read a body value.
    fn loop_with_an_if_in_its_body() -> Model {
        let mut then_b = Builder::new(11);
        then_b
            .node("Relu", "then_relu", &["s"], &["t"], vec![])
            .output("t", 1, Some(&[2]));
        let mut else_b = Builder::new(11);
        else_b
            .node("Neg", "else_neg", &["s"], &["e"], vec![])
            .output("e", 1, Some(&[2]));
        let mut body = Builder::new(11);
        body.input("it", 7, Some(&[]))
            .input("c", 9, Some(&[]))
            .input("v", 1, Some(&[2]))
            .init("body_w", &[2], 3, 0.5, 1.0)
            .node("Cast", "it_f", &["it"], &["itf"], vec![attr_i("to", 1)])
            .node("Add", "shift", &["v", "itf"], &["s"], vec![])
            .node(
                "ReduceSum",
                "total",
                &["s"],
                &["sum"],
                vec![attr_i("keepdims", 0)],
            )
            .node("Greater", "positive", &["sum", "zero"], &["pos"], vec![])
            .node(
                "If",
                "pick",
                &["pos"],
                &["r"],
                vec![
                    attr_g("then_branch", then_b.graph("then")),
                    attr_g("else_branch", else_b.graph("else")),
                ],
            )
            .node("Mul", "scale", &["r", "body_w"], &["vo"], vec![])
            .output("c", 9, Some(&[]))
            .output("vo", 1, Some(&[2]))
            .output("r", 1, Some(&[2]));
        let mut b = Builder::new(11);
        b.input("x", 1, Some(&[2]))
            .tensor(proto::TensorProto {
                name: Some("two".into()),
                data_type: Some(7),
                int64_data: vec![2],
                ..Default::default()
            })
            .tensor(f32_tensor("zero", &[], &[0.0]))
            .node(
                "Loop",
                "twice",
                &["two", "", "x"],
                &["y", "rs"],
                vec![attr_g("body", body.graph("body"))],
            )
            .output("y", 1, Some(&[2]))
            .output("rs", 1, Some(&[2, 2]));
        b.model()
    }

    /// `Loop(two, "", x)` at opset 11 whose body passes its condition input straight out,
    /// reads the iteration number, scales by a body initializer, and runs an inner Loop
    /// of `n` iterations (a graph input: not unrolled) that adds a value of the outer body
    /// to its carried value; the scan output is the inner Loop's result.
    fn loop_with_an_inner_loop() -> Model {
        let mut inner = Builder::new(11);
        inner
            .input("j", 7, Some(&[]))
            .input("ic", 9, Some(&[]))
            .input("u", 1, Some(&[2]))
            .node("Identity", "inner_keep", &["ic"], &["ico"], vec![])
            .node("Add", "inner_add", &["u", "s"], &["uo"], vec![])
            .output("ico", 9, Some(&[]))
            .output("uo", 1, Some(&[2]));
        let mut body = Builder::new(11);
        body.input("it", 7, Some(&[]))
            .input("c", 9, Some(&[]))
            .input("v", 1, Some(&[2]))
            .init("body_w", &[2], 3, 0.25, 0.5)
            .node("Cast", "it_f", &["it"], &["itf"], vec![attr_i("to", 1)])
            .node("Add", "shift", &["v", "itf"], &["s"], vec![])
            .node(
                "Loop",
                "inner",
                &["n", "", "v"],
                &["r"],
                vec![attr_g("body", inner.graph("inner"))],
            )
            .node("Mul", "scale", &["r", "body_w"], &["vo"], vec![])
            .output("c", 9, Some(&[]))
            .output("vo", 1, Some(&[2]))
            .output("r", 1, Some(&[2]));
        let mut b = Builder::new(11);
        b.input("x", 1, Some(&[2]))
            .input("n", 7, Some(&[]))
            .tensor(proto::TensorProto {
                name: Some("two".into()),
                data_type: Some(7),
                int64_data: vec![2],
                ..Default::default()
            })
            .node(
                "Loop",
                "twice",
                &["two", "", "x"],
                &["y", "rs"],
                vec![attr_g("body", body.graph("body"))],
            )
            .output("y", 1, Some(&[2]))
            .output("rs", 1, Some(&[2, 2]));
        b.model()
    }

    #[test]
    fn subgraphs_of_the_copies_read_the_copies_values() {
        let original = loop_with_an_inner_loop();
        let mut m = original.clone();
        let done = unroll_loops(&mut m, &UnrollLimits::default()).unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        m.verify().unwrap();
        let g = &m.graph;
        // Each copy's inner Loop reads its own copy of `s`.
        let captured: Vec<Vec<String>> = g
            .ops()
            .filter(|o| g.op(*o).op_type == "Loop")
            .map(|o| g.op(o).subgraphs()[0].1.captures())
            .collect();
        assert_eq!(captured.len(), 2);
        assert!(
            captured.contains(&vec!["s.iter0".to_string()]),
            "{captured:?}"
        );
        assert!(
            captured.contains(&vec!["s.iter1".to_string()]),
            "{captured:?}"
        );
        // The body's initializer is stored once; opset 11 takes Unsqueeze axes as an attribute.
        let body_w = g
            .initializers
            .iter()
            .filter(|v| g.value(**v).name.starts_with("body_w"))
            .count();
        assert_eq!(body_w, 1);
        for o in g.ops().filter(|o| g.op(*o).op_type == "Unsqueeze") {
            assert_eq!(g.op(o).attr_ints("axes"), Some(&[0i64][..]));
        }
        for (seed, n) in [(1, 0), (2, 1), (3, 3)] {
            let s = sample(&[
                ("x", tensor(seed, &[2])),
                ("n", Tensor::I64(ndarray::arr0(n).into_dyn())),
            ]);
            assert_close(&run(&m, &s), &per_iteration(&original, &s), 1e-6);
        }
    }

    #[test]
    fn loops_the_pass_must_not_unroll_stay() {
        // A body holding an If: two copies would put two Ifs in one graph. It still runs,
        // once per iteration.
        let mut m = loop_with_an_if_in_its_body();
        assert!(unroll_loops(&mut m, &UnrollLimits::default())
            .unwrap()
            .is_empty());
        let s = sample(&[("x", tensor(4, &[2]))]);
        assert_eq!(per_iteration(&m, &s)["rs"].shape(), vec![2, 2]);
        // A condition that follows the data.
        let mut m = fixture("tiny_while.onnx");
        assert!(unroll_loops(&mut m, &UnrollLimits::default())
            .unwrap()
            .is_empty());
        assert!(op_types(&m.graph).contains(&"Loop".to_string()));
        // Past the bounds: 3 trips with at most 2, or 15 copied ops with at most 14.
        for limits in [
            UnrollLimits {
                max_trips: 2,
                ..UnrollLimits::default()
            },
            UnrollLimits {
                max_ops: 14,
                ..UnrollLimits::default()
            },
        ] {
            let mut m = fixture("tiny_loop.onnx");
            assert!(
                unroll_loops(&mut m, &limits).unwrap().is_empty(),
                "{limits:?}"
            );
        }
        let mut m = fixture("tiny_loop.onnx");
        let limits = UnrollLimits {
            max_ops: 15,
            ..UnrollLimits::default()
        };
        assert_eq!(unroll_loops(&mut m, &limits).unwrap().len(), 1);
    }
}
