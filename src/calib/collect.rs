//! Streaming collection: runs the float model over the calibration samples, tapping the
//! values to calibrate, and folds every tapped tensor into its statistics at once.
//!
//! Memory does not grow with the number of samples (nothing of a sample is kept after it
//! is folded in), and the tapped tensors of one run are bounded by a budget: the values
//! are split into groups whose per-sample size fits it, one engine run per group and sample.
//!
//! **Subgraphs.** The engine returns values of the main graph only. Values planned
//! inside `If` branches are collected by running each branch as a model of its own
//! ([`crate::ir::scope::subgraph_model`]: the names it captures become inputs, outer
//! constants become its initializers): for each sample, one run of the main graph taps
//! every `If` condition and every value a branch captures, the condition picks the
//! branch, and the branch runs on the captured values of that sample, tapping its own
//! values (and, recursively, the conditions and captures of the `If` nodes inside it).
//! A branch value's statistics are therefore exactly those of the samples that take the
//! branch. These runs tap everything a branch needs at once (the budget splits only
//! main-graph values); a branch no sample takes has no statistics.

use super::{CalibError, TensorStats};
use crate::data::Sample;
use crate::exec::{ExecError, Session, SessionOptions};
use crate::ir::scope::subgraph_model;
use crate::ir::{Model, OpId, Tensor, ValueType};
use crate::onnx::proto::ModelProto;
use crate::onnx::{encode_model, ExternalPolicy};
use crate::quant::plan::ValueKeys;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Errors of collection: the engine's or the statistics'.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Calib(#[from] CalibError),
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

/// Statistics of `values` over `samples`, in `groups` (see [`plan_groups`]); every value
/// is a value of the model's main graph. `progress(done, total)` is called after each
/// engine run.
pub fn collect(
    model: &ModelProto,
    base_dir: Option<&Path>,
    samples: &[Sample],
    groups: &[Vec<String>],
    mut progress: impl FnMut(u64, u64),
) -> Result<BTreeMap<String, TensorStats>, CollectError> {
    let mut stats: BTreeMap<String, TensorStats> = BTreeMap::new();
    let total = (groups.len() * samples.len()) as u64;
    collect_groups(
        model,
        base_dir,
        samples,
        groups,
        &mut stats,
        0,
        total,
        &mut progress,
    )?;
    Ok(stats)
}

#[allow(clippy::too_many_arguments)]
fn collect_groups(
    model: &ModelProto,
    base_dir: Option<&Path>,
    samples: &[Sample],
    groups: &[Vec<String>],
    stats: &mut BTreeMap<String, TensorStats>,
    mut done: u64,
    total: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<u64, CollectError> {
    for group in groups {
        let opts = SessionOptions {
            taps: group.clone(),
        };
        let Some(first) = samples.first() else {
            break;
        };
        let session = Session::new(model, base_dir, first, &opts)?;
        for s in samples {
            let out = session.run(s)?;
            for name in group {
                if let Some(t) = out.get(name) {
                    stats
                        .entry(name.clone())
                        .or_default()
                        .observe_tensor(name, t)?;
                }
            }
            drop(out);
            done += 1;
            progress(done, total);
        }
    }
    Ok(done)
}

/// Bytes per sample of a main-graph value, from its inferred type (0 when unknown).
fn value_bytes(m: &Model, name: &str) -> u64 {
    let g = &m.graph;
    g.value_by_name(name)
        .and_then(|v| g.value(v).ty.as_ref().and_then(ValueType::known_dims))
        .map(|d| d.iter().map(|&x| x.max(1) as u64).product::<u64>() * 4)
        .unwrap_or(0)
}

fn encode(m: &Model) -> Result<ModelProto, CollectError> {
    encode_model(m, &ExternalPolicy::Inline, "")
        .map(|(p, _)| p)
        .map_err(|e| CollectError::Encode(e.to_string()))
}

/// Statistics of `values` (plan keys, see [`ValueKeys`]) of `model` over `samples`.
///
/// Main-graph values are tapped in groups of at most `budget` bytes per run
/// ([`plan_groups`]); values inside `If` branches are collected as the module
/// documentation describes. `progress(done, total)` is called after each pass over a
/// sample.
pub fn collect_model(
    model: &Model,
    base_dir: Option<&Path>,
    samples: &[Sample],
    values: &[String],
    budget: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<BTreeMap<String, TensorStats>, CollectError> {
    let keys = ValueKeys::of(&model.graph);
    let mut main = Vec::new();
    let mut inner: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    for v in values {
        match keys.locate(v) {
            Some((0, local)) => main.push((local.to_string(), value_bytes(model, local))),
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
    let groups = plan_groups(&main, budget);
    let mut root = (!inner.is_empty())
        .then(|| ScopeRun::new(model, &keys, 0, &inner, Vec::new()))
        .transpose()?;
    let total = (groups.len() * samples.len()) as u64
        + if root.is_some() {
            samples.len() as u64
        } else {
            0
        };
    let mut stats = BTreeMap::new();
    let proto = encode(model)?;
    let mut done = collect_groups(
        &proto,
        base_dir,
        samples,
        &groups,
        &mut stats,
        0,
        total,
        &mut progress,
    )?;
    if let Some(root) = root.as_mut() {
        for s in samples {
            root.observe(s, base_dir, &mut stats)?;
            done += 1;
            progress(done, total);
        }
    }
    Ok(stats)
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
}

/// One scope (the main graph, or a subgraph made a model) run once per sample that
/// reaches it.
struct ScopeRun {
    label: String,
    proto: ModelProto,
    /// Values to calibrate: (plan key, name here).
    values: Vec<(String, String)>,
    taps: Vec<String>,
    /// Constants of this scope that a child reads (conditions).
    consts: BTreeMap<String, Tensor>,
    session: Option<Session>,
    children: Vec<Child>,
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
            let mut branches: BTreeMap<String, Box<Branch>> = BTreeMap::new();
            for (j, (attr, _)) in subs.iter().enumerate() {
                let Some(c) = keys.scopes.child(s, o, j) else {
                    continue;
                };
                if !wanted(c) {
                    continue;
                }
                let inside = || CollectError::Unreachable {
                    value: inner
                        .iter()
                        .find(|(v, _)| keys.scopes.is_within(**v, c))
                        .and_then(|(_, vs)| vs.first())
                        .map(|(k, _)| k.clone())
                        .unwrap_or_default(),
                    reason: format!(
                        "it lives in subgraph '{}' of {} node '{}', which calibration cannot run",
                        keys.scopes.get(c).label,
                        op.op_type,
                        op.display_name()
                    ),
                };
                if !(op.op_type == "If" && op.domain_key().is_empty()) {
                    return Err(inside());
                }
                let branch = Self::branch(m, keys, o, j, c, inner)?;
                for name in &branch.inputs {
                    if !g.value_by_name(name).is_some_and(|v| g.is_input(v)) {
                        taps.insert(name.clone());
                    }
                }
                branches.insert(attr.to_string(), Box::new(branch));
            }
            if branches.is_empty() {
                continue;
            }
            let cond = g
                .input(o, 0)
                .map(|v| g.value(v).name.clone())
                .unwrap_or_default();
            if let Some(v) = g.value_by_name(&cond) {
                match g.const_of(v) {
                    Some(t) if !g.is_input(v) => {
                        let t = t
                            .to_tensor()
                            .map_err(|e| CollectError::Encode(e.to_string()))?;
                        consts.insert(cond.clone(), t);
                    }
                    _ if g.is_input(v) => {}
                    _ => {
                        taps.insert(cond.clone());
                    }
                }
            }
            children.push(Child::If {
                node: op.display_name().to_string(),
                cond,
                then_branch: branches.remove("then_branch"),
                else_branch: branches.remove("else_branch"),
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

    /// Runs this scope on one sample (its inputs), folds its values into `stats` and
    /// passes on to the branches the sample takes.
    fn observe(
        &mut self,
        inputs: &Sample,
        base_dir: Option<&Path>,
        stats: &mut BTreeMap<String, TensorStats>,
    ) -> Result<(), CollectError> {
        if self.session.is_none() {
            let opts = SessionOptions {
                taps: self.taps.clone(),
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
        for child in &mut self.children {
            match child {
                Child::If {
                    node,
                    cond,
                    then_branch,
                    else_branch,
                } => {
                    let c = fetch(cond, &out, inputs, &self.consts)
                        .and_then(Tensor::to_f64_vec)
                        .filter(|v| v.len() == 1)
                        .ok_or_else(|| CollectError::Unreachable {
                            value: cond.clone(),
                            reason: format!(
                                "the condition of If node '{node}' is not one known value"
                            ),
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
                        let t = fetch(name, &out, inputs, &self.consts).ok_or_else(|| {
                            CollectError::Unreachable {
                                value: name.clone(),
                                reason: format!("If node '{node}' reads it, but it was not tapped"),
                            }
                        })?;
                        sub.insert(name.clone(), t.clone());
                    }
                    b.run.observe(&sub, base_dir, stats)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
