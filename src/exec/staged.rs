//! Segmented execution: a model holding `Loop`s the engine cannot run (it has no `Loop`),
//! run as a sequence of stages.
//!
//! The main graph is cut at its host nodes: every `Loop` left after unrolling
//! (`passes::unroll_loop`), and every `If` with such a `Loop` in a branch. Each other op
//! gets a level: the largest level of the values it reads (its inputs, and the names its
//! subgraphs capture), where a graph input or a constant has level 0, a value computed by
//! an op has that op's level, and an output of a host node the host node's level plus one.
//! A host node's level is that of the values it reads. The stages then run in level order:
//! the ops of level 0 as one model in the engine (a *part*), then the host nodes of level 0,
//! then the part of level 1, and so on. A part is a model of its own: its inputs are the
//! values it reads from earlier stages, its outputs the values later stages, the graph
//! outputs or the taps need, and it keeps the constants it reads.
//!
//! A host `Loop` runs its body as a model of its own (`ir::scope::subgraph_model`: the
//! names it captures become inputs, outer constants its initializers) once per iteration,
//! with ONNX's semantics ([`super::loops::run_loop`]); the body is a [`Session`], so a
//! `Loop` inside a body runs the same way. A host `If` runs the branch its condition picks,
//! also as a [`Session`]. A `Loop` inside a `Scan` body that cannot be unrolled is refused
//! naming the node.
//!
//! Sessions of parts, bodies and branches are built on first use, from the values they
//! are given: a part input or body input without a declared element type gets that of
//! the value it receives. Taps are main-graph values: a part taps those it computes (as
//! outputs or streamed, like any session); inputs, constants and outputs of host nodes are
//! handed over by this module.

use super::engine::Engine;
use super::loops::{run_loop, LoopRun};
use super::prepare::OpCounts;
use super::{engine_error, ExecError, ObservedError, Session, SessionOptions, TapValue};
use crate::ir::scope::subgraph_model;
use crate::ir::{DType, Dim, Graph, Model, OpId, Tensor, ValueId, ValueType};
use crate::onnx::{encode_model, ExternalPolicy};
use crate::passes::unroll_loop::condition_stays_true;
use crate::passes::util::{consts_for_subgraph, OuterConsts};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// True when `g` or any of its subgraphs holds a default-domain `Loop`.
pub(crate) fn holds_loop(g: &Graph) -> bool {
    g.ops().any(|o| {
        let op = g.op(o);
        (op.op_type == "Loop" && op.domain_key().is_empty())
            || op.subgraphs().iter().any(|(_, sg)| holds_loop(sg))
    })
}

/// A model built into a session on first use.
struct Lazy<S> {
    model: Model,
    session: Mutex<Option<Arc<S>>>,
}

impl<S> Lazy<S> {
    fn new(model: Model) -> Lazy<S> {
        Lazy {
            model,
            session: Mutex::new(None),
        }
    }

    /// The session, built from `sample` with `build` when there is none yet.
    fn get(
        &self,
        sample: &BTreeMap<String, Tensor>,
        build: impl FnOnce(Model) -> Result<S, ExecError>,
    ) -> Result<Arc<S>, ExecError> {
        let mut slot = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let mut m = self.model.clone();
        type_inputs(&mut m, sample);
        let s = Arc::new(build(m)?);
        *slot = Some(s.clone());
        Ok(s)
    }

    fn built(&self) -> Option<Arc<S>> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Gives each graph input of `m` without an element type the type of its tensor in
/// `sample` (shape of unknown dimensions: the engine takes the concrete one from the run).
fn type_inputs(m: &mut Model, sample: &BTreeMap<String, Tensor>) {
    let g = &mut m.graph;
    for v in g.inputs.clone() {
        if g.value(v).dtype().is_some() {
            continue;
        }
        if let Some(t) = sample.get(&g.value(v).name) {
            g.value_mut(v).ty = Some(ValueType::Tensor {
                dtype: t.dtype(),
                shape: Some(vec![Dim::Unknown; t.shape().len()]),
            });
        }
    }
}

/// Ops run whole by the engine.
struct Part {
    /// Values read from earlier stages, in the part's input order.
    inputs: Vec<String>,
    /// Values later stages or the graph outputs read.
    outputs: Vec<String>,
    taps: Vec<String>,
    engine: Lazy<Engine>,
}

/// A subgraph run as a model of its own.
struct Body {
    /// The names it captures, fed from the enclosing graph after its own inputs.
    captured: Vec<String>,
    own_inputs: Vec<String>,
    outputs: Vec<String>,
    session: Lazy<Session>,
}

struct LoopStage {
    node: String,
    trip_count: Option<String>,
    cond: Option<String>,
    carried: Vec<String>,
    /// The Loop's outputs (carried values, then scan outputs); `None` where unnamed.
    outputs: Vec<Option<String>>,
    scan_shapes: Vec<Option<(DType, Vec<usize>)>>,
    /// The body hands its condition on unchanged: only the trip count stops it.
    fixed_condition: bool,
    body: Body,
}

struct IfStage {
    node: String,
    cond: String,
    outputs: Vec<Option<String>>,
    then_branch: Body,
    else_branch: Body,
}

enum Stage {
    Part(Box<Part>),
    Loop(Box<LoopStage>),
    If(Box<IfStage>),
}

/// Where streamed taps go.
pub(crate) type Observer<'a, E> = &'a mut dyn FnMut(&str, TapValue<'_>) -> Result<(), E>;

/// A model run in stages (see the module documentation).
pub(crate) struct Staged {
    inputs: Vec<String>,
    outputs: Vec<String>,
    graph_outputs: usize,
    /// Constants of the main graph that host nodes, graph outputs or taps read directly.
    consts: BTreeMap<String, Tensor>,
    /// Taps on inputs and constants, handed over before the first stage.
    early_taps: Vec<String>,
    /// Taps on outputs of host nodes.
    host_taps: BTreeSet<String>,
    stages: Vec<Stage>,
    base_dir: Option<PathBuf>,
    opts: SessionOptions,
    notes: Vec<String>,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("stages", &self.stages.len())
            .finish()
    }
}

fn control(op: &str, node: &str, reason: impl Into<String>) -> ExecError {
    ExecError::ControlFlow {
        op_type: op.to_string(),
        node: node.to_string(),
        reason: reason.into(),
    }
}

/// Names `op` reads from `g`: its inputs and the names its subgraphs capture that `g`
/// knows.
pub(crate) fn reads(g: &Graph, o: OpId) -> Vec<ValueId> {
    let mut out: Vec<ValueId> = g.inputs_of(o).into_iter().flatten().collect();
    for (_, sg) in g.op(o).subgraphs() {
        out.extend(sg.captures().iter().filter_map(|n| g.value_by_name(n)));
    }
    out.sort();
    out.dedup();
    out
}

fn is_const(g: &Graph, v: ValueId) -> bool {
    g.value(v).init.is_some()
}

/// Whether op `o` runs on the host; an error for a `Loop` the host cannot reach.
fn is_host(g: &Graph, o: OpId) -> Result<bool, ExecError> {
    let op = g.op(o);
    let default = op.domain_key().is_empty();
    if op.op_type == "Loop" && default {
        return Ok(true);
    }
    if !op.subgraphs().iter().any(|(_, sg)| holds_loop(sg)) {
        return Ok(false);
    }
    if op.op_type == "If" && default {
        return Ok(true);
    }
    Err(control(
        &op.op_type,
        op.display_name(),
        "a subgraph holds a Loop whose trip count is not a small constant; such a Loop runs \
         only in the main graph, in If branches and in Loop bodies",
    ))
}

/// Hands tap `name` to `observe`, or puts it in `result` when there is no observer.
fn emit<E>(
    name: &str,
    t: &Tensor,
    observe: &mut Option<Observer<'_, E>>,
    result: &mut BTreeMap<String, Tensor>,
) -> Result<(), ObservedError<E>> {
    match observe {
        Some(f) => {
            let value = match t {
                Tensor::F32(a) if a.as_slice().is_some() => {
                    TapValue::F32(a.as_slice().expect("checked"))
                }
                other => TapValue::Host(other.clone()),
            };
            f(name, value).map_err(ObservedError::Observer)
        }
        None => {
            result.insert(name.to_string(), t.clone());
            Ok(())
        }
    }
}

/// The element type and shape of one iteration's value of a scan output, from the body's
/// declared output type, else from the Loop output's (without its first dimension).
fn scan_shape(
    body_ty: Option<&ValueType>,
    loop_ty: Option<&ValueType>,
) -> Option<(DType, Vec<usize>)> {
    let known = |ty: &ValueType, skip: usize| -> Option<(DType, Vec<usize>)> {
        let ValueType::Tensor { dtype, .. } = ty else {
            return None;
        };
        let dims = ty.known_dims()?;
        let dims: Option<Vec<usize>> = dims
            .iter()
            .skip(skip)
            .map(|&d| usize::try_from(d).ok())
            .collect();
        Some((*dtype, dims?))
    };
    body_ty.and_then(|t| known(t, 0)).or_else(|| {
        loop_ty
            .filter(|t| t.known_dims().is_some_and(|d| !d.is_empty()))
            .and_then(|t| known(t, 1))
    })
}

/// The stages of `g` in run order, each with its ops (a part's in topological order, a
/// host node alone), by level as the module documentation says.
fn stage_plan(g: &Graph) -> Result<Vec<(bool, Vec<OpId>)>, ExecError> {
    let order = g.topo_order().map_err(|e| ExecError::Load(e.to_string()))?;
    let mut avail: HashMap<ValueId, usize> = HashMap::new();
    let mut level: BTreeMap<OpId, (usize, bool)> = BTreeMap::new();
    for &o in &order {
        let host = is_host(g, o)?;
        let l = reads(g, o)
            .iter()
            .map(|v| avail.get(v).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        for v in g.outputs_of(o).into_iter().flatten() {
            avail.insert(v, if host { l + 1 } else { l });
        }
        level.insert(o, (l, host));
    }
    let top = level.values().map(|(l, _)| *l).max().unwrap_or(0);
    let mut plan: Vec<(bool, Vec<OpId>)> = Vec::new();
    for l in 0..=top {
        let part: Vec<OpId> = order
            .iter()
            .copied()
            .filter(|o| level[o] == (l, false))
            .collect();
        if !part.is_empty() {
            plan.push((false, part));
        }
        for &o in &order {
            if level[&o] == (l, true) {
                plan.push((true, vec![o]));
            }
        }
    }
    Ok(plan)
}

impl Staged {
    /// Cuts `m` into stages. `notes` are kept for [`Staged::notes`].
    pub(crate) fn new(
        m: Model,
        base_dir: Option<&Path>,
        opts: &SessionOptions,
        mut notes: Vec<String>,
    ) -> Result<Staged, ExecError> {
        let g = &m.graph;
        let plan = stage_plan(g)?;
        // What each stage reads; a value is needed after stage `i` when a later stage
        // reads it, or it is a graph output.
        let stage_reads: Vec<BTreeSet<ValueId>> = plan
            .iter()
            .map(|(_, ops)| ops.iter().flat_map(|&o| reads(g, o)).collect())
            .collect();
        let graph_outputs: BTreeSet<ValueId> = g.outputs.iter().copied().collect();
        let mut taps_left: Vec<String> = Vec::new();
        for t in &opts.taps {
            if !taps_left.contains(t) {
                taps_left.push(t.clone());
            }
        }
        let mut consts = BTreeMap::new();
        let mut add_const = |name: &str, v: ValueId| -> Result<(), ExecError> {
            if consts.contains_key(name) {
                return Ok(());
            }
            let t = g
                .const_of(v)
                .expect("a constant")
                .to_tensor()
                .map_err(|e| ExecError::TensorData {
                    tensor: name.to_string(),
                    reason: e.to_string(),
                })?;
            consts.insert(name.to_string(), t);
            Ok(())
        };
        // Taps on inputs and constants.
        let mut early_taps = Vec::new();
        for t in &taps_left {
            let Some(v) = g.value_by_name(t) else {
                return Err(ExecError::UnknownTap(t.clone()));
            };
            if g.producer(v).is_none() {
                if is_const(g, v) {
                    add_const(t, v)?;
                } else if !g.is_input(v) {
                    return Err(ExecError::UnknownTap(t.clone()));
                }
                early_taps.push(t.clone());
            }
        }
        for &v in &g.outputs {
            if g.producer(v).is_none() && is_const(g, v) {
                add_const(&g.value(v).name, v)?;
            }
        }
        let mut stages = Vec::with_capacity(plan.len());
        let mut host_taps = BTreeSet::new();
        let mut described = Vec::new();
        for (i, (host, ops)) in plan.iter().enumerate() {
            let produced: BTreeSet<ValueId> = ops
                .iter()
                .flat_map(|&o| g.outputs_of(o).into_iter().flatten())
                .collect();
            let later: BTreeSet<ValueId> = stage_reads[i + 1..].iter().flatten().copied().collect();
            let taps: Vec<String> = taps_left
                .iter()
                .filter(|t| g.value_by_name(t).is_some_and(|v| produced.contains(&v)))
                .cloned()
                .collect();
            if *host {
                let o = ops[0];
                for &v in &stage_reads[i] {
                    if is_const(g, v) && g.inputs_of(o).contains(&Some(v)) {
                        add_const(&g.value(v).name.clone(), v)?;
                    }
                }
                host_taps.extend(taps);
                let stage = Self::host_stage(&m, o)?;
                described.push(format!(
                    "{} node '{}'",
                    g.op(o).op_type,
                    g.op(o).display_name()
                ));
                stages.push(stage);
                continue;
            }
            let inputs: Vec<String> = stage_reads[i]
                .iter()
                .filter(|v| !produced.contains(v) && !is_const(g, **v))
                .map(|&v| g.value(v).name.clone())
                .collect();
            let outputs: Vec<String> = produced
                .iter()
                .filter(|v| later.contains(v) || graph_outputs.contains(v))
                .map(|&v| g.value(v).name.clone())
                .collect();
            let part = part_model(&m, ops, &inputs, &outputs)?;
            stages.push(Stage::Part(Box::new(Part {
                inputs,
                outputs,
                taps,
                engine: Lazy::new(part),
            })));
        }
        notes.push(format!(
            "{} run on the host (a Loop's body in the engine once per iteration), the rest of \
             the model in {} part(s) the engine runs whole",
            described.join(", "),
            stages
                .iter()
                .filter(|s| matches!(s, Stage::Part(_)))
                .count()
        ));
        let inputs: Vec<String> = g
            .inputs
            .iter()
            .filter(|&&v| g.value(v).init.is_none())
            .map(|&v| g.value(v).name.clone())
            .collect();
        let mut outputs: Vec<String> = g.outputs.iter().map(|&v| g.value(v).name.clone()).collect();
        let graph_outputs = outputs.len();
        for t in taps_left {
            if !outputs.contains(&t) {
                outputs.push(t);
            }
        }
        Ok(Staged {
            inputs,
            outputs,
            graph_outputs,
            consts,
            early_taps,
            host_taps,
            stages,
            base_dir: base_dir.map(Path::to_path_buf),
            opts: opts.clone(),
            notes,
        })
    }

    /// The stage of host node `o` of `m`'s main graph.
    fn host_stage(m: &Model, o: OpId) -> Result<Stage, ExecError> {
        let g = &m.graph;
        let op = g.op(o);
        let node = op.display_name().to_string();
        let name = |v: Option<ValueId>| v.map(|v| g.value(v).name.clone());
        let ins: Vec<Option<String>> = g.inputs_of(o).into_iter().map(name).collect();
        let outputs: Vec<Option<String>> = g.outputs_of(o).into_iter().map(name).collect();
        let body = |attr: &str| -> Result<Body, ExecError> {
            let j = op
                .subgraphs()
                .iter()
                .position(|(a, _)| *a == attr)
                .ok_or_else(|| control(&op.op_type, &node, format!("has no {attr}")))?;
            let (sub, captured) =
                subgraph_model(m, o, j).map_err(|e| control(&op.op_type, &node, e.to_string()))?;
            let sg = &sub.graph;
            let names = |ids: &[ValueId]| -> Vec<String> {
                ids.iter().map(|v| sg.value(*v).name.clone()).collect()
            };
            let own = sg.inputs.len() - captured.len();
            Ok(Body {
                own_inputs: names(&sg.inputs[..own]),
                outputs: names(&sg.outputs),
                captured,
                session: Lazy::new(sub),
            })
        };
        if op.op_type == "If" {
            return Ok(Stage::If(Box::new(IfStage {
                cond: ins.first().cloned().flatten().unwrap_or_default(),
                outputs,
                then_branch: body("then_branch")?,
                else_branch: body("else_branch")?,
                node,
            })));
        }
        let b = body("body")?;
        if ins.len() < 2 || ins[2..].iter().any(Option::is_none) {
            return Err(control("Loop", &node, "a loop-carried input is missing"));
        }
        let n = ins.len() - 2;
        if b.own_inputs.len() != 2 + n || b.outputs.len() != 1 + outputs.len() || outputs.len() < n
        {
            return Err(control(
                "Loop",
                &node,
                format!(
                    "its body takes {} inputs and gives {} outputs; a Loop with {n} carried \
                     values and {} outputs needs {} and {}",
                    b.own_inputs.len(),
                    b.outputs.len(),
                    outputs.len(),
                    2 + n,
                    1 + outputs.len()
                ),
            ));
        }
        let Some((_, bg)) = op.subgraphs().into_iter().find(|(a, _)| *a == "body") else {
            return Err(control("Loop", &node, "has no body"));
        };
        let scan_shapes = (n..outputs.len())
            .map(|s| {
                let bt = bg.value(bg.outputs[1 + s]).ty.as_ref();
                let lt = g.outputs_of(o)[s].and_then(|v| g.value(v).ty.as_ref());
                scan_shape(bt, lt)
            })
            .collect();
        let inner = consts_for_subgraph(g, &OuterConsts::new(), bg);
        Ok(Stage::Loop(Box::new(LoopStage {
            trip_count: ins[0].clone(),
            cond: ins[1].clone(),
            carried: ins[2..].iter().flatten().cloned().collect(),
            outputs,
            scan_shapes,
            fixed_condition: condition_stays_true(bg, &inner),
            body: b,
            node,
        })))
    }

    pub(crate) fn input_names(&self) -> &[String] {
        &self.inputs
    }

    pub(crate) fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// The quantization ops the notes describe in every session built so far inside this
    /// model (summed), and the other notes of this model and of those sessions.
    pub(crate) fn note_parts(&self) -> (OpCounts, Vec<String>) {
        let mut counts = OpCounts::default();
        let mut notes = self.notes.clone();
        let mut add = |(c, n): (OpCounts, Vec<String>)| {
            counts.merge(&c);
            for x in n {
                if !notes.contains(&x) {
                    notes.push(x);
                }
            }
        };
        for s in &self.stages {
            match s {
                Stage::Part(p) => {
                    if let Some(e) = p.engine.built() {
                        add((e.op_counts().clone(), e.other_notes()));
                    }
                }
                Stage::Loop(l) => {
                    if let Some(b) = l.body.session.built() {
                        add(b.note_parts());
                    }
                }
                Stage::If(f) => {
                    for b in [&f.then_branch, &f.else_branch] {
                        if let Some(s) = b.session.built() {
                            add(s.note_parts());
                        }
                    }
                }
            }
        }
        (counts, notes)
    }

    fn sub_options(&self) -> SessionOptions {
        SessionOptions {
            loops: self.opts.loops,
            ..SessionOptions::default()
        }
    }

    /// Runs one sample through every stage. Taps go to `observe` when it is given (the
    /// session streams them), else into the returned map beside the graph outputs.
    pub(crate) fn execute<E>(
        &self,
        sample: &BTreeMap<String, Tensor>,
        mut observe: Option<Observer<'_, E>>,
    ) -> Result<BTreeMap<String, Tensor>, ObservedError<E>> {
        let exec = ObservedError::Exec;
        if let Some(extra) = sample.keys().find(|k| !self.inputs.contains(k)) {
            return Err(exec(ExecError::UnknownInput(extra.clone())));
        }
        let mut env: BTreeMap<String, Tensor> = BTreeMap::new();
        for name in &self.inputs {
            let t = sample
                .get(name)
                .ok_or_else(|| exec(ExecError::MissingInput(name.clone())))?;
            env.insert(name.clone(), t.clone());
        }
        let mut result = BTreeMap::new();
        for name in &self.early_taps {
            let t = env.get(name).or_else(|| self.consts.get(name));
            let t = t.ok_or_else(|| exec(ExecError::UnknownTap(name.clone())))?;
            emit(name, t, &mut observe, &mut result)?;
        }
        for stage in &self.stages {
            let made = match stage {
                Stage::Part(p) => {
                    let mut part_sample = BTreeMap::new();
                    for name in &p.inputs {
                        let t = env
                            .get(name)
                            .ok_or_else(|| exec(ExecError::MissingInput(name.clone())))?;
                        part_sample.insert(name.clone(), t.clone());
                    }
                    let opts = SessionOptions {
                        taps: p.taps.clone(),
                        stream_taps: self.opts.stream_taps,
                        loops: self.opts.loops,
                    };
                    let base = self.base_dir.as_deref();
                    let engine = p
                        .engine
                        .get(&part_sample, |m| {
                            let (proto, _) = encode_model(&m, &ExternalPolicy::Inline, "")
                                .map_err(|e| ExecError::Load(e.to_string()))?;
                            Engine::new(&proto, base, &part_sample, &opts, Default::default())
                        })
                        .map_err(exec)?;
                    let mut out = match observe.as_mut() {
                        Some(f) => engine
                            .run_observed(&part_sample, true, |n, v| f(n, v))?
                            .unwrap_or_default(),
                        None => {
                            let out = engine.run(&part_sample).map_err(exec)?;
                            for t in &p.taps {
                                if let Some(v) = out.get(t) {
                                    result.insert(t.clone(), v.clone());
                                }
                            }
                            out
                        }
                    };
                    let mut made = Vec::with_capacity(p.outputs.len());
                    for name in &p.outputs {
                        let t = out.remove(name).ok_or_else(|| {
                            exec(ExecError::Run(format!("a part did not return '{name}'")))
                        })?;
                        made.push((name.clone(), t));
                    }
                    made
                }
                Stage::Loop(l) => self.run_loop_stage(l, &env).map_err(exec)?,
                Stage::If(f) => self.run_if_stage(f, &env).map_err(exec)?,
            };
            for (name, t) in made {
                if self.host_taps.contains(&name) {
                    emit(&name, &t, &mut observe, &mut result)?;
                }
                env.insert(name, t);
            }
        }
        for name in &self.outputs[..self.graph_outputs] {
            let t = env
                .get(name)
                .or_else(|| self.consts.get(name))
                .ok_or_else(|| {
                    exec(ExecError::Run(format!(
                        "graph output '{name}' was not computed"
                    )))
                })?;
            result.insert(name.clone(), t.clone());
        }
        Ok(result)
    }

    /// A value host node `node` reads.
    fn fetch<'a>(
        &'a self,
        env: &'a BTreeMap<String, Tensor>,
        op: &str,
        node: &str,
        name: &str,
    ) -> Result<&'a Tensor, ExecError> {
        env.get(name)
            .or_else(|| self.consts.get(name))
            .ok_or_else(|| {
                control(
                    op,
                    node,
                    format!("reads '{name}', which no earlier stage computed"),
                )
            })
    }

    /// Runs `body` on its own inputs `own` (in order) and the captured values of `env`.
    fn run_body(
        &self,
        body: &Body,
        own: Vec<Tensor>,
        env: &BTreeMap<String, Tensor>,
        op: &str,
        node: &str,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        let mut sample: BTreeMap<String, Tensor> =
            body.own_inputs.iter().cloned().zip(own).collect();
        for name in &body.captured {
            sample.insert(name.clone(), self.fetch(env, op, node, name)?.clone());
        }
        let base = self.base_dir.as_deref();
        let opts = self.sub_options();
        let session = body
            .session
            .get(&sample, |m| Session::from_ir(m, base, &sample, &opts))?;
        let mut out = session.run(&sample)?;
        // A body output may be one of its inputs, unchanged.
        for name in &body.outputs {
            if !out.contains_key(name) {
                if let Some(t) = sample.get(name) {
                    out.insert(name.clone(), t.clone());
                }
            }
        }
        Ok(out)
    }

    fn run_loop_stage(
        &self,
        l: &LoopStage,
        env: &BTreeMap<String, Tensor>,
    ) -> Result<Vec<(String, Tensor)>, ExecError> {
        let node = l.node.as_str();
        let get = |name: &Option<String>| -> Result<Option<&Tensor>, ExecError> {
            name.as_ref()
                .map(|n| self.fetch(env, "Loop", node, n))
                .transpose()
        };
        let (trip_count, cond) = (get(&l.trip_count)?, get(&l.cond)?);
        let mut carried = Vec::with_capacity(l.carried.len());
        for name in &l.carried {
            carried.push(self.fetch(env, "Loop", node, name)?.clone());
        }
        let cap = self.opts.loops.max_iterations;
        if l.fixed_condition {
            // Only the trip count can stop this loop: say so before running it.
            let starts = cond.is_none_or(|c| c.to_i64_vec().is_some_and(|v| v != [0]));
            let m = trip_count.and_then(Tensor::to_i64_vec);
            let endless = match (trip_count, m.as_deref()) {
                (None, _) => Some("no trip count".to_string()),
                (Some(_), Some(&[m])) if m > 0 && m as u64 > cap => {
                    Some(format!("a trip count of {m}"))
                }
                _ => None,
            };
            if let (true, Some(what)) = (starts, endless) {
                return Err(control(
                    "Loop",
                    node,
                    format!(
                        "its body never changes the condition and it has {what}: it would run \
                         past the cap of {cap} iterations"
                    ),
                ));
            }
        }
        let run = LoopRun {
            trip_count,
            cond,
            carried,
            scan_shapes: l.scan_shapes.clone(),
            max_iterations: cap,
        };
        let fail = |reason: String| control("Loop", node, reason);
        let res = run_loop(run, fail, |i, c, carried| {
            let mut own = vec![
                Tensor::I64(ndarray::arr0(i).into_dyn()),
                Tensor::Bool(ndarray::arr0(c).into_dyn()),
            ];
            own.extend(carried);
            let mut out = self
                .run_body(&l.body, own, env, "Loop", node)
                .map_err(|e| {
                    control("Loop", node, format!("iteration {i}: {}", engine_error(e)))
                })?;
            l.body
                .outputs
                .iter()
                .map(|name| {
                    out.remove(name).ok_or_else(|| {
                        control("Loop", node, format!("its body did not return '{name}'"))
                    })
                })
                .collect()
        })?;
        Ok(l.outputs
            .iter()
            .zip(res.carried.into_iter().chain(res.scans))
            .filter_map(|(name, t)| name.clone().map(|n| (n, t)))
            .collect())
    }

    fn run_if_stage(
        &self,
        f: &IfStage,
        env: &BTreeMap<String, Tensor>,
    ) -> Result<Vec<(String, Tensor)>, ExecError> {
        let node = f.node.as_str();
        let c = self.fetch(env, "If", node, &f.cond)?;
        let taken = match (c.dtype(), c.to_i64_vec().as_deref()) {
            (DType::Bool, Some(&[v])) => v != 0,
            _ => return Err(control("If", node, "the condition is not one boolean")),
        };
        let branch = if taken {
            &f.then_branch
        } else {
            &f.else_branch
        };
        let mut out = self
            .run_body(branch, Vec::new(), env, "If", node)
            .map_err(|e| control("If", node, engine_error(e)))?;
        let mut made = Vec::new();
        for (name, b) in f.outputs.iter().zip(&branch.outputs) {
            let t = out
                .remove(b)
                .ok_or_else(|| control("If", node, format!("the branch did not return '{b}'")))?;
            if let Some(n) = name {
                made.push((n.clone(), t));
            }
        }
        Ok(made)
    }
}

/// The ops `ops` of `m`'s main graph as a model of their own, reading `inputs` and
/// returning `outputs` (names), with the constants they read (also the blocks of layer-wise
/// calibration, `calib::layerwise`).
pub(crate) fn part_model(
    m: &Model,
    ops: &[OpId],
    inputs: &[String],
    outputs: &[String],
) -> Result<Model, ExecError> {
    let mut part = m.clone();
    let keep: BTreeSet<OpId> = ops.iter().copied().collect();
    let g = &mut part.graph;
    let all: Vec<OpId> = g.ops().collect();
    for o in all {
        if !keep.contains(&o) {
            g.remove_op(o);
        }
    }
    let id = |g: &Graph, n: &String| {
        g.value_by_name(n)
            .ok_or_else(|| ExecError::Load(format!("value '{n}' is missing from a part")))
    };
    let ins: Vec<ValueId> = inputs.iter().map(|n| id(g, n)).collect::<Result<_, _>>()?;
    let outs: Vec<ValueId> = outputs.iter().map(|n| id(g, n)).collect::<Result<_, _>>()?;
    // Constants stay initializers (no longer inputs, even where IR version 3 listed them).
    g.inputs = ins;
    g.outputs = outs;
    crate::passes::util::remove_dead(g);
    crate::passes::util::allow_constant_initializers(&mut part);
    part.verify()
        .map_err(|e| ExecError::Load(format!("a part of the model is invalid: {e}")))?;
    Ok(part)
}
