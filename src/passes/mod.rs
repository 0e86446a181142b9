//! Passes over the IR: the [`Pass`] trait, the shared [`PassCx`], the quantize pipeline
//! as one declared list ([`pipeline`], each ordering constraint commented) and the
//! [`Runner`] that runs it phase by phase, checks the IR after every step in debug and
//! test builds, and logs what each step did. One file per pass; [`util`] holds the
//! graph-editing helpers several passes share (scope facts, renaming captured names,
//! dead-code removal).
//!
//! The plan is built by a pass ([`plan::BuildPlan`]) that rewrites nothing: it stands in
//! the list because what follows depends on it (the opset the Q/DQ need, what
//! [`insert_qdq`] inserts), and it travels to them in [`PassCx::plan`].

use crate::ir::{Model, Tensor};
use crate::quant::plan::{Plan, QuantConfig};
use crate::quant::rules::Target;
use serde::Serialize;
use std::collections::BTreeMap;

pub mod compact;
pub mod fold_batchnorm;
pub mod fold_bias_add;
pub mod fold_constants;
pub mod fold_if;
pub mod infer_shapes;
pub mod insert_qdq;
pub mod pin_inputs;
pub mod plan;
pub mod quantize_dynamic;
pub mod remove_dead;
#[cfg(test)]
pub(crate) mod testkit;
pub mod unroll_loop;
pub mod upgrade_opset;
pub mod util;

pub use fold_constants::FoldConstants;
pub use fold_if::FoldIf;
pub use infer_shapes::InferShapes;
pub use pin_inputs::PinInputs;

/// Whether a pass changed the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Yes,
    No,
}

impl Changed {
    /// `Yes` when either is `Yes`.
    pub fn or(self, other: Changed) -> Changed {
        if self == Changed::Yes || other == Changed::Yes {
            Changed::Yes
        } else {
            Changed::No
        }
    }

    /// `Yes` when `b` is true.
    pub fn from_bool(b: bool) -> Changed {
        if b {
            Changed::Yes
        } else {
            Changed::No
        }
    }
}

/// Failure inside a pass, naming the pass and the node or value concerned.
#[derive(Debug, thiserror::Error)]
#[error("pass {pass}: {what}")]
pub struct PassError {
    pub pass: &'static str,
    pub what: String,
}

/// Something a pass noticed and did not act on (e.g. a type given by the file that
/// disagrees with inference, a constant op that could not be evaluated). Reported to
/// the user; never silently dropped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub pass: &'static str,
    pub what: String,
}

/// Shared state handed to passes: facts given by the user, the quantization settings and
/// plan that the quantize pipeline's passes build and read, and what passes leave behind.
#[derive(Default, Debug)]
pub struct PassCx {
    /// Graph inputs fixed to a value (`--pin sr=16000`). [`PinInputs`] turns each into
    /// an initializer and removes it from the graph inputs.
    pub pinned: BTreeMap<String, Tensor>,
    /// Concrete shapes of graph inputs (from the data or `--shape`). [`PinInputs`]
    /// replaces the declared dims with them.
    pub input_shapes: BTreeMap<String, Vec<i64>>,
    /// Quantization settings: what [`plan::BuildPlan`] plans with, and what tells
    /// [`fold_batchnorm`] and [`fold_bias_add`] that the target keeps the ops they fold.
    /// `None` outside quantization: the plan, upgrade and insert steps then do nothing.
    pub quant: Option<QuantConfig>,
    /// Q/DQ may carry 16-bit types (mixed precision may promote activations): the
    /// quantize pipeline's [`upgrade_opset`] raises the opset to 21.
    pub wide: bool,
    /// The plan: built by [`plan::BuildPlan`], read by [`upgrade_opset`] (which opset the
    /// planned Q/DQ need), materialised by [`insert_qdq`]. Calibration, range choice and
    /// mixed precision edit it between the two.
    pub plan: Option<Plan>,
    /// Dynamic quantization (`quantize --mode dynamic`): the plan steps do nothing,
    /// [`upgrade_opset`] raises the opset to 11, [`quantize_dynamic`] rewrites the model.
    pub dynamic: bool,
    /// What the last [`quantize_dynamic`] run did.
    pub dynamic_report: Option<quantize_dynamic::Report>,
    /// What the last [`insert_qdq`] run did (parameters, saturated biases).
    pub inserted: Option<insert_qdq::Report>,
    /// Weights quantized before, which [`insert_qdq`] writes from their recorded codes.
    pub weight_memo: Option<insert_qdq::WeightMemo>,
    /// What passes did that the user is told ("3 BatchNormalization folded …"), in order.
    pub done: Vec<String>,
    /// Notes left by passes, in the order they were found, without duplicates.
    pub diagnostics: Vec<Diagnostic>,
}

impl PassCx {
    /// Records a diagnostic once (passes that run in a fixed-point loop see the same
    /// thing several times).
    pub fn note(&mut self, pass: &'static str, what: impl Into<String>) {
        let d = Diagnostic {
            pass,
            what: what.into(),
        };
        if !self.diagnostics.contains(&d) {
            self.diagnostics.push(d);
        }
    }

    /// The target the quantization settings name, if any.
    pub fn target(&self) -> Option<Target> {
        self.quant.as_ref().map(|q| q.target)
    }
}

/// A transformation of the IR.
///
/// A pass says what it requires and what it changes in its file's documentation; the
/// [`pipeline`] list says why it stands where it does.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// Why the pass does nothing in this context (e.g. the target keeps the ops it would
    /// fold), or `None` when it runs. A skipped pass is still listed in the run's log.
    fn skip(&self, _cx: &PassCx) -> Option<String> {
        None
    }
    fn run(&self, m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError>;
}

/// The part of the quantize pipeline a step belongs to. Between `Prepare` and
/// `Materialise` the pipeline calibrates, chooses ranges and edits the plan for mixed
/// precision: no graph is rewritten there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Fix what the user pinned and fold what that decides: the float model validation
    /// compares against.
    Specialise,
    /// Normalise the float model for quantization and plan it.
    Prepare,
    /// Apply the plan to a copy of the prepared model (once per mixed-precision round).
    Materialise,
}

impl Phase {
    /// The heading `qrange passes` prints.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Specialise => "specialise (the float model validation compares against)",
            Phase::Prepare => "prepare and plan",
            Phase::Materialise => {
                "materialise (after calibration, range choice and mixed precision; once per round)"
            }
        }
    }
}

/// One entry of the pipeline: a pass at a place.
pub struct Step {
    /// Unique in the list: the pass name, with `-suffix` for a later run of the same pass
    /// (rustc's `SimplifyCfg-initial` style). `--dump-after NAME` matches every step of
    /// pass NAME, `--dump-after LABEL` one step.
    pub label: &'static str,
    pub phase: Phase,
    pub pass: Box<dyn Pass>,
}

impl Step {
    /// `pass` at step `label` (its name, or `name-suffix`) of `phase`.
    pub fn new(label: &'static str, phase: Phase, pass: impl Pass + 'static) -> Step {
        debug_assert!(label == pass.name() || label.starts_with(&format!("{}-", pass.name())));
        Step {
            label,
            phase,
            pass: Box::new(pass),
        }
    }

    /// Whether `name` (a pass name or a step label) names this step.
    pub fn matches(&self, name: &str) -> bool {
        self.label == name || self.pass.name() == name
    }
}

/// The quantize pipeline: every graph rewrite `qrange quantize` makes, in order (what
/// `qrange passes` prints). `passes::specialize` runs the `Specialise` steps alone
/// (`qrange run`, `qrange compare`).
pub fn pipeline() -> Vec<Step> {
    use Phase::*;
    vec![
        // First: every later pass reads the pinned values and the concrete input shapes.
        Step::new("pin_inputs", Specialise, PinInputs),
        // After pin_inputs (conditions depend on the pinned values and the shapes); runs
        // infer_shapes → fold_constants → fold_if to a fixed point itself, because each
        // inlined branch can make more shapes known and more conditions constant.
        Step::new("fold_if", Specialise, FoldIf::default()),
        // Types and shapes of every value: fold_constants folds `Shape`/`Size` only where
        // the input shape is known, and the plan reads ranks and element types.
        Step::new("infer_shapes", Prepare, InferShapes),
        // After infer_shapes; turns every Constant node into an initializer, which the
        // folds below read as weights and parameters.
        Step::new("fold_constants", Prepare, FoldConstants),
        // After fold_constants (weights and BatchNormalization parameters are
        // initializers) and before the plan: the folded weights are what gets quantized
        // per channel. Skipped for TensorRT, which folds them itself.
        Step::new("fold_batchnorm", Prepare, fold_batchnorm::FoldBatchNorm),
        // After fold_batchnorm: the Add after a Conv → BatchNormalization reads the Conv's
        // output only once the normalization is folded. Skipped for TensorRT, like
        // fold_batchnorm.
        Step::new("fold_bias_add", Prepare, fold_bias_add::FoldBiasAdd),
        // After the folds, which leave constants and ops nobody reads.
        Step::new("remove_dead", Prepare, remove_dead::RemoveDead),
        // The folds created values (folded weights, biases) without types.
        Step::new("infer_shapes-folded", Prepare, InferShapes),
        // On typed, folded values: the rule table reads op types, ranks and constants.
        Step::new("plan", Prepare, plan::BuildPlan),
        // After the plan: per-channel weights need opset 13, 16-bit types 21 (10 when
        // neither); Q/DQ are inserted at that opset.
        Step::new(
            "upgrade_opset",
            Prepare,
            upgrade_opset::UpgradeOpset::for_qdq(),
        ),
        // Rewritten ops (Clip/Pad attributes become inputs…) need their types again.
        Step::new("infer_shapes-upgraded", Prepare, InferShapes),
        // The plan names ops and values of the model as it now is.
        Step::new("plan-upgraded", Prepare, plan::BuildPlan),
        // Last: on the calibrated plan, after every edit mixed precision made to it.
        Step::new("insert_qdq", Materialise, insert_qdq::InsertQdq),
        // In dynamic mode instead of insert_qdq (which has no plan then): on the prepared
        // model, whose weights are folded constants.
        Step::new(
            "quantize_dynamic",
            Materialise,
            quantize_dynamic::QuantizeDynamic,
        ),
        // The new Q/DQ (or integer-op) values get their types, as a runtime reading the file expects.
        Step::new("infer_shapes-quantized", Materialise, InferShapes),
        // Last, under a size budget: drops the types shape inference just gave (and other
        // bytes that change nothing computed) from the file.
        Step::new("compact", Materialise, compact::Compact),
    ]
}

/// What one step of the list did in a run (the run's log, in list order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepLog {
    pub step: &'static str,
    /// How many times it ran (the materialise steps run once per mixed-precision round).
    pub runs: usize,
    /// Whether any run changed the graph.
    pub changed: bool,
    /// Why it did nothing, when it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Why a step stopped the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Pass(#[from] PassError),
    /// `verify()` failed after the step: a bug in the pass.
    #[error("internal error: the model is invalid after pass {step}: {error}")]
    Invalid {
        step: &'static str,
        error: crate::ir::GraphError,
    },
}

/// Whether the run goes on after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Runs the steps of [`pipeline`] phase by phase, checks the IR after each step in debug
/// and test builds, keeps the log of what ran, and calls a hook after each step (the
/// pipeline's `--dump-after`/`--stop-after`).
pub struct Runner {
    steps: Vec<Step>,
    log: Vec<StepLog>,
}

impl Default for Runner {
    fn default() -> Runner {
        Runner::new()
    }
}

impl Runner {
    /// A runner over [`pipeline`].
    pub fn new() -> Runner {
        Runner::with_steps(pipeline())
    }

    /// A runner over other steps.
    pub fn with_steps(steps: Vec<Step>) -> Runner {
        let log = steps
            .iter()
            .map(|s| StepLog {
                step: s.label,
                runs: 0,
                changed: false,
                skipped: None,
            })
            .collect();
        Runner { steps, log }
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// What every step did so far, in list order.
    pub fn log(&self) -> &[StepLog] {
        &self.log
    }

    /// Runs the steps of `phase` on `m`; `after` sees each step and the model after it,
    /// and stops the run with [`Flow::Stop`]: then the label of the step it stopped after
    /// is returned.
    pub fn run_phase(
        &mut self,
        phase: Phase,
        m: &mut Model,
        cx: &mut PassCx,
        after: &mut dyn FnMut(&Step, &Model) -> Flow,
    ) -> Result<Option<&'static str>, StepError> {
        for (step, log) in self.steps.iter().zip(self.log.iter_mut()) {
            if step.phase != phase {
                continue;
            }
            log.runs += 1;
            match step.pass.skip(cx) {
                Some(why) => log.skipped = Some(why),
                None => {
                    let changed = step.pass.run(m, cx)?;
                    log.changed |= changed == Changed::Yes;
                    if cfg!(debug_assertions) {
                        m.verify().map_err(|error| StepError::Invalid {
                            step: step.label,
                            error,
                        })?;
                    }
                }
            }
            if after(step, m) == Flow::Stop {
                return Ok(Some(step.label));
            }
        }
        Ok(None)
    }
}

/// Checks that `name` names a step of [`pipeline`]; the error lists the valid names.
pub fn check_step_name(name: &str) -> Result<(), String> {
    let steps = pipeline();
    if steps.iter().any(|s| s.matches(name)) {
        return Ok(());
    }
    let mut names: Vec<&str> = Vec::new();
    for s in &steps {
        for n in [s.pass.name(), s.label] {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    Err(format!(
        "no pass or step named '{name}'; valid names: {}",
        names.join(", ")
    ))
}

/// Specialises `m` for the pinned inputs and concrete input shapes in `cx`: runs the
/// [`Phase::Specialise`] steps (`pin_inputs`, then `fold_if`, which alternates
/// `infer_shapes`, `fold_constants` and If inlining until nothing changes). What
/// `qrange run --pin` needs before execution.
pub fn specialize(m: &mut Model, cx: &mut PassCx) -> Result<Changed, PassError> {
    let mut changed = Changed::No;
    for step in pipeline()
        .into_iter()
        .filter(|s| s.phase == Phase::Specialise)
    {
        if step.pass.skip(cx).is_none() {
            changed = changed.or(step.pass.run(m, cx)?);
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testkit::Builder;

    /// A faulty pass: the graph stops declaring its inputs, which ops still read.
    struct DropInputs;

    impl Pass for DropInputs {
        fn name(&self) -> &'static str {
            "drop_inputs"
        }
        fn description(&self) -> &'static str {
            "a pass that breaks the IR"
        }
        fn run(&self, m: &mut Model, _cx: &mut PassCx) -> Result<Changed, PassError> {
            m.graph.inputs.clear();
            Ok(Changed::Yes)
        }
    }

    #[test]
    fn the_ir_is_verified_after_every_step_naming_the_pass() {
        let mut b = Builder::new(17);
        b.node("Relu", "relu", &["x"], &["y"], vec![]);
        b.input("x", 1, Some(&[1, 4])).output("y", 1, Some(&[1, 4]));
        let mut m = b.model();
        let mut runner = Runner::with_steps(vec![
            Step::new("remove_dead", Phase::Prepare, remove_dead::RemoveDead),
            Step::new("drop_inputs", Phase::Prepare, DropInputs),
            Step::new("remove_dead-after", Phase::Prepare, remove_dead::RemoveDead),
        ]);
        let mut seen = Vec::new();
        let e = runner
            .run_phase(
                Phase::Prepare,
                &mut m,
                &mut PassCx::default(),
                &mut |s, _| {
                    seen.push(s.label);
                    Flow::Continue
                },
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                StepError::Invalid {
                    step: "drop_inputs",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("after pass drop_inputs"), "{e}");
        assert_eq!(seen, ["remove_dead"]);
        assert_eq!(runner.log()[1].runs, 1);
        assert_eq!(runner.log()[2].runs, 0);
    }

    #[test]
    fn step_labels_are_unique_and_name_their_pass() {
        let steps = pipeline();
        let mut labels: Vec<&str> = steps.iter().map(|s| s.label).collect();
        for s in &steps {
            assert!(
                s.matches(s.pass.name()) && s.matches(s.label),
                "{}",
                s.label
            );
        }
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), steps.len());
        // Phases are contiguous, in order.
        assert!(steps.windows(2).all(|w| w[0].phase <= w[1].phase));
        assert!(check_step_name("infer_shapes").is_ok());
        assert!(check_step_name("infer_shapes-upgraded").is_ok());
        let e = check_step_name("infer").unwrap_err();
        assert!(e.contains("'infer'") && e.contains("insert_qdq"), "{e}");
    }
}
