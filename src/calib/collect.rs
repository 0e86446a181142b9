//! Streaming collection: runs the float model over the calibration samples, tapping the
//! values to calibrate, and folds every tapped tensor into its statistics at once.
//!
//! Memory does not grow with the number of samples (nothing of a sample is kept after it
//! is folded in), nor with the number of tapped values: taps are streamed
//! ([`crate::exec::Session::run_observed`]), each folded in as soon as the engine computes
//! it and freed once its readers ran, so a run holds about what a plain inference holds.
//! Samples are spread over worker threads, each with its own statistics, merged exactly.
//! [`plan_groups`] serves callers that tap values as outputs under a byte budget.
//!
//! **Subgraphs.** The engine returns values of the main graph only. Values planned
//! inside `If` branches and `Scan` bodies are collected by running each subgraph as a
//! model of its own ([`crate::ir::scope::subgraph_model`]: the names it captures become
//! inputs, outer constants become its initializers). For each sample, one run of the
//! main graph taps every `If` condition, every `Scan` input and every value such a
//! subgraph captures; then
//! - the condition picks the branch, which runs on the captured values of that sample:
//!   a branch value's statistics are exactly those of the samples that take the branch
//!   (a branch no sample takes has none, and `quant::plan::fit_to_statistics` then
//!   leaves its ops float);
//! - a `Scan` body runs once per step, on the states carried from the previous step
//!   (the initial states first) and the step's slices of the scanned inputs, as ONNX
//!   defines them (opset 9 and later: axes and directions as attributes);
//! - a `Loop` body runs once per iteration, on the iteration number, the condition and
//!   the loop-carried values of the previous iteration (the `Loop`'s inputs first), until
//!   the trip count is reached or the body's condition output is false, as ONNX defines
//!   it ([`crate::exec::loops::run_loop`], with the same cap on iterations as execution):
//!   a body value's statistics are those of every iteration of every sample.
//!
//! Inside a subgraph the same happens recursively. These runs tap everything a subgraph
//! needs at once (the budget splits main-graph values only).

use super::{CalibError, TensorStats};
use crate::data::{DataError, Sample, SampleSource};
use crate::exec::loops::{run_loop, LoopLimits, LoopRun};
use crate::exec::{ExecError, ObservedError, Session, SessionOptions, TapValue};
use crate::ir::scope::subgraph_model;
use crate::ir::{Model, OpId, Tensor};
use crate::onnx::engine_proto;
use crate::onnx::proto::ModelProto;
use crate::quant::plan::ValueKeys;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// Errors of collection: the engine's or the statistics'.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Calib(#[from] CalibError),
    /// A sample could not be read (data streamed from disk is read, and checked, here).
    #[error(transparent)]
    Data(#[from] DataError),
    /// Running a subgraph as a model of its own failed.
    #[error("subgraph '{scope}': {source}")]
    Subgraph {
        scope: String,
        #[source]
        source: ExecError,
    },
    /// A value cannot be calibrated where it lives.
    #[error("value '{value}': {reason}")]
    Unreachable { value: String, reason: String },
    /// Layer-wise calibration could not spill boundary values to its scratch file.
    #[error("spilling activations to a scratch file in '{}': {what}", dir.display())]
    Spill {
        dir: std::path::PathBuf,
        what: String,
    },
    /// The model (or a subgraph made a model) could not be encoded for the engine.
    #[error("encoding the model for calibration: {0}")]
    Encode(String),
}

/// Splits `values` (name, bytes per sample) into groups of at most `budget` bytes each,
/// keeping the given order; a value larger than the budget gets a group of its own.
pub fn plan_groups(values: &[(String, u64)], budget: u64) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut used = 0u64;
    for (name, bytes) in values {
        match groups.last_mut() {
            Some(g) if used + bytes <= budget => {
                g.push(name.clone());
                used += bytes;
            }
            _ => {
                groups.push(vec![name.clone()]);
                used = *bytes;
            }
        }
    }
    groups
}

/// Statistics of main-graph `values` over `samples`, with streamed taps: each value is
/// folded into its statistics the moment the engine computes it, and freed once its readers
/// ran, so a run never holds all tapped values at once. `workers` threads take samples in
/// turn, each with its own statistics (two maps: the samples in `keep` and the others),
/// merged at the end in worker order, the others' first; merging is exact
/// ([`TensorStats::merge`]), so the result does not depend on which thread saw which sample.
/// On failure the error of the first failing sample (in sample order) is returned.
/// `progress(done, total)` is called after each sample. The model's outputs for the samples
/// whose indices are in `keep` go to `outputs`; when `keep` is not empty and every sample
/// ran, `on_others` gets the others' statistics before they are merged in.
fn collect_streamed<S: SampleSource + ?Sized>(
    run: Streamed<S>,
    stats: &mut BTreeMap<String, TensorStats>,
    outputs: &mut BTreeMap<usize, Sample>,
    on_others: &mut dyn FnMut(&BTreeMap<String, TensorStats>),
    (mut done, total): (u64, u64),
    progress: &mut impl FnMut(u64, u64),
) -> Result<u64, CollectError> {
    let Streamed {
        model,
        base_dir,
        samples,
        values,
        workers,
        keep,
    } = run;
    // Outputs alone are not worth a run (nor a model the engine cannot run whole).
    if samples.count() == 0 || values.is_empty() {
        return Ok(done);
    }
    let first = samples.sample(0)?;
    let opts = SessionOptions {
        taps: values.to_vec(),
        stream_taps: true,
        ..Default::default()
    };
    let session = Session::new(model, base_dir, &first, &opts)?;
    drop(first);
    let workers = workers.clamp(1, samples.count());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<()>();
    let results: Vec<WorkerResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let tx = tx.clone();
                let (session, next, stop) = (&session, &next, &stop);
                scope.spawn(move || {
                    // Statistics of the samples not kept, and of those kept.
                    let mut local: BTreeMap<String, TensorStats> = BTreeMap::new();
                    let mut local_kept: BTreeMap<String, TensorStats> = BTreeMap::new();
                    let mut kept: Vec<(usize, Sample)> = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= samples.count() {
                            break;
                        }
                        let sample = match samples.sample(i) {
                            Ok(s) => s,
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                let err = Some((i, CollectError::Data(e)));
                                return (local, local_kept, kept, err);
                            }
                        };
                        let keep_this = keep.contains(&i);
                        let into = if keep_this {
                            &mut local_kept
                        } else {
                            &mut local
                        };
                        let ran = session.run_observed(&sample, keep_this, |name, value| {
                            fold_tap(into, name, value)
                        });
                        match ran {
                            Ok(Some(out)) => kept.push((i, out)),
                            Ok(None) => {}
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                let e = match e {
                                    ObservedError::Exec(e) => CollectError::Exec(e),
                                    ObservedError::Observer(e) => CollectError::Calib(e),
                                };
                                return (local, local_kept, kept, Some((i, e)));
                            }
                        }
                        // The receiver only stops listening once every worker is done.
                        let _ = tx.send(());
                    }
                    (local, local_kept, kept, None)
                })
            })
            .collect();
        drop(tx);
        for () in rx.iter() {
            done += 1;
            progress(done, total);
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut first_error: Option<(usize, CollectError)> = None;
    let merge_into = |acc: &mut BTreeMap<String, TensorStats>,
                      part: BTreeMap<String, TensorStats>| {
        for (name, st) in part {
            match acc.get_mut(&name) {
                Some(a) => a.merge(&st),
                None => {
                    acc.insert(name, st);
                }
            }
        }
    };
    let mut others = BTreeMap::new();
    let mut of_kept = BTreeMap::new();
    for (local, local_kept, kept, err) in results {
        outputs.extend(kept);
        if let Some((i, e)) = err {
            if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                first_error = Some((i, e));
            }
        }
        merge_into(&mut others, local);
        merge_into(&mut of_kept, local_kept);
    }
    if !keep.is_empty() && first_error.is_none() {
        on_others(&others);
    }
    // Merging is exact: every value's statistics are those of one pass over all samples.
    merge_into(stats, others);
    merge_into(stats, of_kept);
    match first_error {
        Some((_, e)) => Err(e),
        None => Ok(done),
    }
}

/// One streamed collection: the encoded model, its samples, the values tapped, the
/// workers, and the samples whose outputs are kept.
struct Streamed<'a, S: ?Sized> {
    model: &'a ModelProto,
    base_dir: Option<&'a Path>,
    samples: &'a S,
    values: &'a [String],
    workers: usize,
    keep: &'a BTreeSet<usize>,
}

/// What a collection worker returns: its statistics of the samples not kept and of those
/// kept, the outputs it kept and, if it stopped on one, the failing sample's index and error.
type WorkerResult = (
    BTreeMap<String, TensorStats>,
    BTreeMap<String, TensorStats>,
    Vec<(usize, Sample)>,
    Option<(usize, CollectError)>,
);

/// The samples whose model outputs [`collect_model`] keeps, and what it does with the
/// statistics of the other samples.
pub struct Keep<'a> {
    /// Sample indices.
    pub samples: &'a BTreeSet<usize>,
    /// Called once when `samples` is not empty and every sample ran, with the statistics
    /// of the main-graph values over the other samples, before they are merged into the
    /// result (ranges from them are held out from the kept samples, at no copy).
    pub others: &'a mut dyn FnMut(&BTreeMap<String, TensorStats>),
}

/// What [`collect_model`] returns.
#[derive(Debug, Default)]
pub struct Collected {
    /// Statistics per value.
    pub stats: BTreeMap<String, TensorStats>,
    /// The model's outputs for the samples asked for, by sample index.
    pub outputs: BTreeMap<usize, Sample>,
}

/// The model for the engine, weights still in their side file referenced where they lie
/// (the engine reads them itself; the `base_dir` given with the model is their folder).
fn encode(m: &Model) -> Result<ModelProto, CollectError> {
    engine_proto(m)
        .map(|(p, _)| p)
        .map_err(|e| CollectError::Encode(e.to_string()))
}

/// Statistics of `values` (plan keys, see [`ValueKeys`]) of `model` over `samples`.
///
/// Main-graph values are streamed from one run per sample, on `workers` threads
/// (`collect_streamed`); values inside `If` branches and `Scan` bodies are collected as
/// the module documentation describes. `progress(done, total)` is called after each pass over a
/// sample. The result does not depend on `workers`. The model's outputs (main graph) are
/// kept for the samples of `keep` when main-graph values are calibrated: they cost no extra
/// run; so are, apart, the statistics of the other samples (see [`Keep::others`]).
pub fn collect_model<S: SampleSource + ?Sized>(
    model: &Model,
    base_dir: Option<&Path>,
    samples: &S,
    values: &[String],
    workers: usize,
    keep: Keep,
    mut progress: impl FnMut(u64, u64),
) -> Result<Collected, CollectError> {
    let keys = ValueKeys::of(&model.graph);
    let mut main = Vec::new();
    let mut inner: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    for v in values {
        match keys.locate(v) {
            Some((0, local)) => main.push(local.to_string()),
            Some((s, local)) => inner
                .entry(s)
                .or_default()
                .push((v.clone(), local.to_string())),
            None => {
                return Err(CollectError::Unreachable {
                    value: v.clone(),
                    reason: "not a value of the model".into(),
                })
            }
        }
    }
    let mut root = (!inner.is_empty())
        .then(|| ScopeRun::new(model, &keys, 0, &inner, Vec::new()))
        .transpose()?;
    let total = samples.count() as u64
        + if root.is_some() {
            samples.count() as u64
        } else {
            0
        };
    let mut stats = BTreeMap::new();
    let mut outputs = BTreeMap::new();
    let proto = encode(model)?;
    let mut done = collect_streamed(
        Streamed {
            model: &proto,
            base_dir,
            samples,
            values: &main,
            workers,
            keep: keep.samples,
        },
        &mut stats,
        &mut outputs,
        keep.others,
        (0, total),
        &mut progress,
    )?;
    if let Some(root) = root.as_mut() {
        for i in 0..samples.count() {
            let s = samples.sample(i)?;
            root.observe(&s, base_dir, &mut stats)?;
            done += 1;
            progress(done, total);
        }
    }
    Ok(Collected { stats, outputs })
}

/// Where a value a scope needs comes from, in the run of that scope.
fn fetch<'a>(
    name: &str,
    out: &'a BTreeMap<String, Tensor>,
    inputs: &'a Sample,
    consts: &'a BTreeMap<String, Tensor>,
) -> Option<&'a Tensor> {
    out.get(name)
        .or_else(|| inputs.get(name))
        .or_else(|| consts.get(name))
}

/// A subgraph run on its own, with the name of every input it takes from its parent.
struct Branch {
    run: ScopeRun,
    inputs: Vec<String>,
}

/// A control-flow op whose subgraphs hold values to calibrate.
enum Child {
    If {
        node: String,
        cond: String,
        then_branch: Option<Box<Branch>>,
        else_branch: Option<Box<Branch>>,
    },
    /// Loop: the body runs once per iteration on the carried values.
    Loop(LoopChild),
    /// Scan (opset 9 and later): the body runs once per step on the states and the
    /// slices of the scanned inputs.
    Scan {
        node: String,
        /// The Scan node's inputs: initial states, then scanned inputs.
        inputs: Vec<String>,
        n_state: usize,
        axes: Vec<i64>,
        reverse: Vec<bool>,
        /// The body's own inputs (states, then slices) and its state outputs.
        body_inputs: Vec<String>,
        body_states: Vec<String>,
        body: Box<Branch>,
    },
}

/// A `Loop` whose body holds values to calibrate.
struct LoopChild {
    node: String,
    /// The Loop's inputs `M` and `cond` (empty when absent) and its initial carried values.
    trip_count: String,
    cond: String,
    carried: Vec<String>,
    /// The body's own inputs (iteration number, condition, carried values) and its
    /// condition and carried outputs.
    body_inputs: Vec<String>,
    body_outputs: Vec<String>,
    body: Box<Branch>,
}

impl LoopChild {
    /// The child for `Loop` node `node` with inputs `inputs` and body `bg`, run as `body`.
    fn new(
        node: String,
        inputs: Vec<String>,
        bg: &crate::ir::Graph,
        body: Box<Branch>,
    ) -> Result<LoopChild, CollectError> {
        let n = inputs.len().saturating_sub(2);
        if inputs.len() < 2
            || bg.inputs.len() != 2 + n
            || bg.outputs.len() < 1 + n
            || inputs[2..].iter().any(String::is_empty)
        {
            return Err(CollectError::Unreachable {
                value: node,
                reason: "Loop node whose inputs and body disagree".into(),
            });
        }
        let names = |ids: &[crate::ir::ValueId]| -> Vec<String> {
            ids.iter().map(|v| bg.value(*v).name.clone()).collect()
        };
        Ok(LoopChild {
            trip_count: inputs[0].clone(),
            cond: inputs[1].clone(),
            carried: inputs[2..].to_vec(),
            body_inputs: names(&bg.inputs),
            body_outputs: names(&bg.outputs[..1 + n]),
            body,
            node,
        })
    }

    /// Runs the body once per iteration of the loop as the sample drives it, folding its
    /// values into `stats`; `get(name, node)` gives the values of the enclosing run.
    fn observe<'a>(
        &mut self,
        get: &dyn Fn(&str, &str) -> Result<&'a Tensor, CollectError>,
        base_dir: Option<&Path>,
        stats: &mut BTreeMap<String, TensorStats>,
    ) -> Result<(), CollectError> {
        let node = self.node.as_str();
        let optional = |name: &str| -> Result<Option<&'a Tensor>, CollectError> {
            (!name.is_empty()).then(|| get(name, node)).transpose()
        };
        let (m, c) = (optional(&self.trip_count)?, optional(&self.cond)?);
        let mut states = Vec::with_capacity(self.carried.len());
        for name in &self.carried {
            states.push(get(name, node)?.clone());
        }
        let mut captured = Sample::new();
        for name in &self.body.inputs {
            captured.insert(name.clone(), get(name, node)?.clone());
        }
        let run = LoopRun {
            trip_count: m,
            cond: c,
            carried: states,
            scan_shapes: Vec::new(),
            max_iterations: LoopLimits::default().max_iterations,
        };
        let fail = |reason: String| CollectError::Unreachable {
            value: node.to_string(),
            reason: format!("Loop node '{node}': {reason}"),
        };
        let (body_inputs, body_outputs, body) =
            (&self.body_inputs, &self.body_outputs, &mut self.body);
        run_loop(run, fail, |i, c, states| {
            let mut sub = captured.clone();
            let own = [
                Tensor::I64(ndarray::arr0(i).into_dyn()),
                Tensor::Bool(ndarray::arr0(c).into_dyn()),
            ];
            for (name, t) in body_inputs.iter().zip(own.into_iter().chain(states)) {
                sub.insert(name.clone(), t);
            }
            let res = body.run.observe(&sub, base_dir, stats)?;
            body_outputs
                .iter()
                .map(|name| {
                    fetch(name, &res, &sub, &body.run.consts)
                        .cloned()
                        .ok_or_else(|| CollectError::Unreachable {
                            value: name.clone(),
                            reason: format!("output of the body of Loop node '{node}' is missing"),
                        })
                })
                .collect()
        })?;
        Ok(())
    }
}

/// One scope (the main graph, or a subgraph made a model) run once per sample that
/// reaches it.
struct ScopeRun {
    label: String,
    proto: ModelProto,
    /// Values to calibrate: (plan key, name here).
    values: Vec<(String, String)>,
    taps: Vec<String>,
    /// Constants of this scope that a child reads (conditions, scanned inputs).
    consts: BTreeMap<String, Tensor>,
    session: Option<Session>,
    children: Vec<Child>,
}

/// Makes the run of `g` provide `name` to a child: nothing for an input (the sample has
/// it), the value of a constant, a tap for anything computed.
fn provide(
    g: &crate::ir::Graph,
    name: &str,
    taps: &mut BTreeSet<String>,
    consts: &mut BTreeMap<String, Tensor>,
) -> Result<(), CollectError> {
    let Some(v) = g.value_by_name(name) else {
        return Ok(());
    };
    if g.is_input(v) {
        return Ok(());
    }
    match g.const_of(v) {
        Some(t) => {
            let t = t
                .to_tensor()
                .map_err(|e| CollectError::Encode(format!("tensor '{name}': {e}")))?;
            consts.insert(name.to_string(), t);
        }
        None => {
            taps.insert(name.to_string());
        }
    }
    Ok(())
}

impl ScopeRun {
    /// The run of scope `s` of the model (`m` is that scope as a model), with its
    /// children that lead to values in `inner`.
    fn new(
        m: &Model,
        keys: &ValueKeys,
        s: usize,
        inner: &BTreeMap<usize, Vec<(String, String)>>,
        own: Vec<(String, String)>,
    ) -> Result<ScopeRun, CollectError> {
        let g = &m.graph;
        let label = keys.scopes.get(s).label.clone();
        let wanted = |c: usize| inner.keys().any(|&v| keys.scopes.is_within(v, c));
        let mut taps: BTreeSet<String> = own.iter().map(|(_, l)| l.clone()).collect();
        let mut consts = BTreeMap::new();
        let mut children = Vec::new();
        let order = g
            .topo_order()
            .map_err(|e| CollectError::Encode(e.to_string()))?;
        for o in order {
            let op = g.op(o);
            let subs = op.subgraphs();
            let mut bodies: BTreeMap<String, Box<Branch>> = BTreeMap::new();
            for (j, (attr, _)) in subs.iter().enumerate() {
                let Some(c) = keys.scopes.child(s, o, j) else {
                    continue;
                };
                if !wanted(c) {
                    continue;
                }
                let refuse = |why: &str| CollectError::Unreachable {
                    value: inner
                        .iter()
                        .find(|(v, _)| keys.scopes.is_within(**v, c))
                        .and_then(|(_, vs)| vs.first())
                        .map(|(k, _)| k.clone())
                        .unwrap_or_default(),
                    reason: format!(
                        "it lives in subgraph '{}' of {} node '{}': {why}",
                        keys.scopes.get(c).label,
                        op.op_type,
                        op.display_name()
                    ),
                };
                let known = op.domain_key().is_empty()
                    && (op.op_type == "If"
                        || op.op_type == "Loop"
                        || (op.op_type == "Scan" && m.opset("").unwrap_or(1) >= 9));
                if !known {
                    return Err(refuse(
                        "calibration runs only If branches, Loop bodies and Scan bodies (opset 9 and later)",
                    ));
                }
                let branch = Self::branch(m, keys, o, j, c, inner)?;
                for name in &branch.inputs {
                    provide(g, name, &mut taps, &mut consts)?;
                }
                bodies.insert(attr.to_string(), Box::new(branch));
            }
            if bodies.is_empty() {
                continue;
            }
            let node = op.display_name().to_string();
            let input_names: Vec<String> = g
                .inputs_of(o)
                .into_iter()
                .map(|v| v.map(|v| g.value(v).name.clone()).unwrap_or_default())
                .collect();
            for name in &input_names {
                provide(g, name, &mut taps, &mut consts)?;
            }
            if op.op_type == "If" {
                children.push(Child::If {
                    node,
                    cond: input_names.first().cloned().unwrap_or_default(),
                    then_branch: bodies.remove("then_branch"),
                    else_branch: bodies.remove("else_branch"),
                });
                continue;
            }
            let Some(body) = bodies.remove("body") else {
                continue;
            };
            let Some(&(_, bg)) = subs.iter().find(|(a, _)| *a == "body") else {
                continue;
            };
            if op.op_type == "Loop" {
                children.push(Child::Loop(LoopChild::new(node, input_names, bg, body)?));
                continue;
            }
            let n_scan = op.attr_int("num_scan_inputs").unwrap_or(0).max(0) as usize;
            let n_state = input_names.len().saturating_sub(n_scan);
            let axes = op
                .attr_ints("scan_input_axes")
                .map(<[i64]>::to_vec)
                .unwrap_or_else(|| vec![0; n_scan]);
            let reverse = op
                .attr_ints("scan_input_directions")
                .map(|d| d.iter().map(|&x| x == 1).collect())
                .unwrap_or_else(|| vec![false; n_scan]);
            let body_inputs: Vec<String> = bg
                .inputs
                .iter()
                .map(|v| bg.value(*v).name.clone())
                .collect();
            let body_states: Vec<String> = bg
                .outputs
                .iter()
                .take(n_state)
                .map(|v| bg.value(*v).name.clone())
                .collect();
            if n_scan == 0
                || axes.len() != n_scan
                || reverse.len() != n_scan
                || body_inputs.len() != n_state + n_scan
                || body_states.len() != n_state
            {
                return Err(CollectError::Unreachable {
                    value: node.clone(),
                    reason: "Scan node whose inputs, attributes and body disagree".into(),
                });
            }
            children.push(Child::Scan {
                node,
                inputs: input_names,
                n_state,
                axes,
                reverse,
                body_inputs,
                body_states,
                body,
            });
        }
        Ok(ScopeRun {
            label,
            proto: encode(m)?,
            values: own,
            taps: taps.into_iter().collect(),
            consts,
            session: None,
            children,
        })
    }

    /// Subgraph `j` of op `o` (scope `c`) as a run of its own.
    fn branch(
        m: &Model,
        keys: &ValueKeys,
        o: OpId,
        j: usize,
        c: usize,
        inner: &BTreeMap<usize, Vec<(String, String)>>,
    ) -> Result<Branch, CollectError> {
        let (sub, inputs) = subgraph_model(m, o, j).map_err(|e| CollectError::Unreachable {
            value: keys.scopes.get(c).label.clone(),
            reason: e.to_string(),
        })?;
        let own = inner.get(&c).cloned().unwrap_or_default();
        let run = ScopeRun::new(&sub, keys, c, inner, own)?;
        Ok(Branch { run, inputs })
    }

    fn exec_err(&self, e: ExecError) -> CollectError {
        if self.label.is_empty() {
            CollectError::Exec(e)
        } else {
            CollectError::Subgraph {
                scope: self.label.clone(),
                source: e,
            }
        }
    }

    /// Runs this scope on one sample (its inputs), folds its values into `stats`, passes
    /// on to the subgraphs the sample reaches, and returns the run's outputs and taps.
    fn observe(
        &mut self,
        inputs: &Sample,
        base_dir: Option<&Path>,
        stats: &mut BTreeMap<String, TensorStats>,
    ) -> Result<BTreeMap<String, Tensor>, CollectError> {
        if self.session.is_none() {
            let opts = SessionOptions {
                taps: self.taps.clone(),
                ..Default::default()
            };
            let s =
                Session::new(&self.proto, base_dir, inputs, &opts).map_err(|e| self.exec_err(e))?;
            self.session = Some(s);
        }
        let session = self.session.as_ref().expect("session built above");
        let out = session.run(inputs).map_err(|e| self.exec_err(e))?;
        for (key, local) in &self.values {
            if let Some(t) = fetch(local, &out, inputs, &self.consts) {
                stats
                    .entry(key.clone())
                    .or_default()
                    .observe_tensor(key, t)?;
            }
        }
        let consts = &self.consts;
        let get = |name: &str, node: &str| {
            fetch(name, &out, inputs, consts).ok_or_else(|| CollectError::Unreachable {
                value: name.to_string(),
                reason: format!("node '{node}' reads it, but the run did not provide it"),
            })
        };
        for child in &mut self.children {
            match child {
                Child::If {
                    node,
                    cond,
                    then_branch,
                    else_branch,
                } => {
                    let c = get(cond, node)?
                        .to_f64_vec()
                        .filter(|v| v.len() == 1)
                        .ok_or_else(|| CollectError::Unreachable {
                            value: cond.clone(),
                            reason: format!("the condition of If node '{node}' is not one value"),
                        })?;
                    let taken = if c[0] != 0.0 {
                        then_branch
                    } else {
                        else_branch
                    };
                    let Some(b) = taken else {
                        continue;
                    };
                    let mut sub = Sample::new();
                    for name in &b.inputs {
                        sub.insert(name.clone(), get(name, node)?.clone());
                    }
                    b.run.observe(&sub, base_dir, stats)?;
                }
                Child::Loop(l) => l.observe(&get, base_dir, stats)?,
                Child::Scan {
                    node,
                    inputs: scan_inputs,
                    n_state,
                    axes,
                    reverse,
                    body_inputs,
                    body_states,
                    body,
                } => {
                    let mut states: Vec<Tensor> = Vec::with_capacity(*n_state);
                    for name in &scan_inputs[..*n_state] {
                        states.push(get(name, node)?.clone());
                    }
                    let mut scanned: Vec<(&Tensor, usize)> = Vec::new();
                    for (i, name) in scan_inputs[*n_state..].iter().enumerate() {
                        let t = get(name, node)?;
                        let rank = t.shape().len() as i64;
                        let ax = if axes[i] < 0 { axes[i] + rank } else { axes[i] };
                        if !(0..rank).contains(&ax) {
                            return Err(CollectError::Unreachable {
                                value: name.clone(),
                                reason: format!(
                                    "scan axis {} of Scan node '{node}' is out of range",
                                    axes[i]
                                ),
                            });
                        }
                        scanned.push((t, ax as usize));
                    }
                    let steps = scanned[0].0.shape()[scanned[0].1];
                    if scanned.iter().any(|(t, ax)| t.shape()[*ax] != steps) {
                        return Err(CollectError::Unreachable {
                            value: node.clone(),
                            reason: "the scanned inputs of this Scan node differ in length".into(),
                        });
                    }
                    for step in 0..steps {
                        let mut sub = Sample::new();
                        for (name, st) in body_inputs.iter().zip(&states) {
                            sub.insert(name.clone(), st.clone());
                        }
                        for (i, (t, ax)) in scanned.iter().enumerate() {
                            let at = if reverse[i] { steps - 1 - step } else { step };
                            let slice = t.index_axis(*ax, at).expect("index checked");
                            sub.insert(body_inputs[*n_state + i].clone(), slice);
                        }
                        for name in &body.inputs {
                            sub.insert(name.clone(), get(name, node)?.clone());
                        }
                        let res = body.run.observe(&sub, base_dir, stats)?;
                        for (k, name) in body_states.iter().enumerate() {
                            states[k] = fetch(name, &res, &sub, &body.run.consts)
                                .ok_or_else(|| CollectError::Unreachable {
                                    value: name.clone(),
                                    reason: format!(
                                        "state output of the body of Scan node '{node}' is missing"
                                    ),
                                })?
                                .clone();
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Folds one streamed tap into the statistics of its value in `into`.
pub(crate) fn fold_tap(
    into: &mut BTreeMap<String, TensorStats>,
    name: &str,
    value: TapValue<'_>,
) -> Result<(), CalibError> {
    let stats = into.entry(name.to_string()).or_default();
    match value {
        TapValue::F32(v) => {
            stats.observe(v);
            Ok(())
        }
        TapValue::Host(t) => stats.observe_tensor(name, &t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streamed statistics (any thread count) equal those of the same values returned as
    /// extra outputs and observed afterwards, serialized byte for byte.
    #[test]
    fn streamed_taps_give_the_statistics_of_returned_outputs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny");
        let model = crate::onnx::read_model(&root.join("tiny_cnn.onnx")).unwrap();
        let specs = crate::pipeline::inputs::input_specs(&model, &BTreeMap::new());
        let ds = crate::data::load(&root.join("tiny_cnn.npz"), &specs).unwrap();
        let g = &model.graph;
        let mut values: Vec<String> = g
            .values()
            .filter(|&v| g.const_of(v).is_none())
            .map(|v| g.value(v).name.clone())
            .collect();
        values.sort();
        assert!(values.len() > 5, "{values:?}");
        let proto = encode(&model).unwrap();
        let opts = SessionOptions {
            taps: values.clone(),
            ..Default::default()
        };
        let session = Session::new(&proto, None, &ds.first().unwrap(), &opts).unwrap();
        let mut expected: BTreeMap<String, TensorStats> = BTreeMap::new();
        let mut expected_others: BTreeMap<String, TensorStats> = BTreeMap::new();
        let keep: BTreeSet<usize> = [0, ds.len() - 1].into();
        let mut outputs = Vec::new();
        for (i, sample) in ds.iter().enumerate() {
            let out = session.run(&sample.unwrap()).unwrap();
            outputs.push(
                g.outputs
                    .iter()
                    .map(|&o| {
                        let n = &g.value(o).name;
                        (n.clone(), out[n].clone())
                    })
                    .collect::<BTreeMap<_, _>>(),
            );
            for v in &values {
                expected
                    .entry(v.clone())
                    .or_default()
                    .observe_tensor(v, &out[v])
                    .unwrap();
                if !keep.contains(&i) {
                    expected_others
                        .entry(v.clone())
                        .or_default()
                        .observe_tensor(v, &out[v])
                        .unwrap();
                }
            }
        }
        let json = |m: &BTreeMap<String, TensorStats>| serde_json::to_string(m).unwrap();
        for workers in [1, 3] {
            let mut calls = 0;
            let mut others = None;
            let got = collect_model(
                &model,
                None,
                &ds,
                &values,
                workers,
                Keep {
                    samples: &keep,
                    others: &mut |o| others = Some(json(o)),
                },
                |_, _| calls += 1,
            )
            .unwrap();
            assert_eq!(json(&got.stats), json(&expected), "workers {workers}");
            assert_eq!(calls, ds.len());
            // The statistics handed over apart are those of the samples not kept.
            assert_eq!(others, Some(json(&expected_others)), "workers {workers}");
            // The outputs kept are those of a plain run of the same samples.
            assert_eq!(got.outputs.keys().copied().collect::<BTreeSet<_>>(), keep);
            for (i, out) in &got.outputs {
                assert_eq!(out, &outputs[*i], "sample {i}");
            }
        }
    }

    #[test]
    fn groups_respect_the_budget_and_order() {
        let v: Vec<(String, u64)> = [("a", 40), ("b", 50), ("c", 20), ("d", 200), ("e", 10)]
            .iter()
            .map(|(n, b)| (n.to_string(), *b))
            .collect();
        let g = plan_groups(&v, 100);
        assert_eq!(
            g,
            vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]
                .into_iter()
                .map(|x| x.into_iter().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        assert_eq!(plan_groups(&v, 1 << 30).len(), 1);
    }
}
