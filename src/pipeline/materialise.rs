//! Materialise and validate: the pass list's last steps ([`Phase::Materialise`]:
//! `insert_qdq`, then shape inference) on a fresh copy of the prepared model, the size
//! budget checked, and the result run against the float model on the evaluation data.
//! With mixed precision this is a loop: a written model that misses the budget gets more
//! 4-bit weights, one that misses the goal more promotions, up to four extra rounds.

use super::error::PipelineError;
use super::precision::{goal_text, Tuned};
use super::prepare::{dump_hook, step_error, Prepared};
use super::progress::Progress;
use super::ranges::{choose_ranges, Candidates};
use super::tables::PlannedTables;
use crate::calib::{CalibrationFile, Method, MethodOptions};
use crate::data::Dataset;
use crate::exec::{Session, SessionOptions};
use crate::ir::Model;
use crate::onnx;
use crate::passes::{insert_qdq, PassCx, Phase, Runner};
use crate::quant::plan::Plan;
use crate::report::compare::{compare, CompareError, ModelComparison};
use crate::report::estimate;
use crate::report::Metrics;
use crate::tune::{self, search::Goal};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// The plan to materialise and how to choose its ranges again when mixed precision edits
/// it.
pub struct Source<'a> {
    pub p: &'a Prepared,
    /// The plan as chosen (ranges set).
    pub plan: Plan,
    /// The method of each calibrated value's range.
    pub chosen: BTreeMap<String, Method>,
    /// The plan before any precision edit (each round starts from it).
    pub base_plan: &'a Plan,
    pub stats: &'a CalibrationFile,
    pub method: Method,
    pub opts: &'a MethodOptions,
}

/// What the written model must meet, and the data it is validated on.
pub struct Checks<'a> {
    /// Evaluation data, when validating.
    pub eval: Option<&'a Dataset>,
    pub labels: Option<&'a [i64]>,
    pub goal: Option<Goal>,
    /// Size budget in bytes, the budget as given (MB), and whether 4-bit weights were
    /// needed to try to fit it.
    pub budget: Option<(u64, f64, bool)>,
    /// Where the model will be written (errors about the quantized model name it).
    pub output: &'a Path,
}

/// The materialised and validated model.
pub struct Materialised {
    pub model: Model,
    /// The plan it was made from, and the method of each range.
    pub plan: Plan,
    pub chosen: BTreeMap<String, Method>,
    pub inserted: insert_qdq::Report,
    /// The embedding tables stored int4 after the Q/DQ (`--embedding-bits 4`).
    pub tables: PlannedTables,
    /// Float vs quantized per output (empty without validation).
    pub validation: BTreeMap<String, Metrics>,
    /// What the engine replaced or emulated running the quantized model.
    pub exec_notes: Vec<String>,
}

/// How materialisation ended.
pub enum End {
    Done(Box<Materialised>),
    /// The budget or the goal cannot be met: why.
    Missed(String),
    /// `--stop-after` named a materialise step.
    Stopped {
        after: String,
    },
}

/// Everything a materialisation round needs besides the plan.
pub struct Round<'a> {
    pub runner: &'a mut Runner,
    pub candidates: &'a mut Candidates,
    pub progress: &'a dyn Progress,
    pub dump: &'a super::options::DumpOptions,
    /// Seconds per phase (`quantize`, `validate` add up over rounds).
    pub times: &'a mut BTreeMap<String, f64>,
}

/// Runs the materialise steps on a copy of the prepared model with `plan`.
fn insert(
    p: &Prepared,
    plan: &Plan,
    r: &mut Round,
) -> Result<Result<(Model, insert_qdq::Report, PlannedTables), String>, PipelineError> {
    let mut q = p.model.clone();
    let memo = p
        .weight_memo
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut cx = PassCx {
        plan: Some(plan.clone()),
        weight_memo: (!memo.is_empty()).then_some(memo),
        ..PassCx::default()
    };
    let mut hook = dump_hook(r.dump, r.progress);
    let mut stopped = r
        .runner
        .run_phase(Phase::Materialise, &mut q, &mut cx, &mut hook)
        .map_err(|e| step_error(&p.model_path, e))?;
    if cx.weight_memo.is_some() && external_dirs(&q).len() > 1 {
        // Codes from the memo beside other side-file data: the engine reads side files
        // from one folder only, so the weights are quantized again.
        q = p.model.clone();
        cx = PassCx {
            plan: Some(plan.clone()),
            ..PassCx::default()
        };
        stopped = r
            .runner
            .run_phase(Phase::Materialise, &mut q, &mut cx, &mut hook)
            .map_err(|e| step_error(&p.model_path, e))?;
    }
    if let Some(after) = stopped {
        return Ok(Err(after.to_string()));
    }
    let tables = super::tables::store_planned_tables(&mut q, &p.cfg, Some(plan))?;
    q.verify().map_err(PipelineError::InvalidQuantized)?;
    Ok(Ok((q, cx.inserted.unwrap_or_default(), tables)))
}

/// The float model's session on the evaluation data.
pub(crate) fn float_session(p: &Prepared, eval: &Dataset) -> Result<Session, PipelineError> {
    session_of(
        &p.float,
        &p.base_dir,
        &eval.first()?,
        format!("{}: float model", p.model_path.display()),
    )
}

/// A session of `m` in the engine for samples shaped like `first`; `what` names the model
/// in errors.
pub(crate) fn session_of(
    m: &Model,
    base_dir: &Path,
    first: &crate::data::Sample,
    what: String,
) -> Result<Session, PipelineError> {
    engine_session(m, base_dir, first).map_err(|error| match error {
        Ok(error) => PipelineError::Exec { what, error },
        Err(e) => PipelineError::Onnx(e),
    })
}

/// A session of `m`: weights still in their side file stay there, the engine reads them
/// itself (and dequantizes those of quantized weights as it loads them, `exec::folded`).
fn engine_session(
    m: &Model,
    base_dir: &Path,
    first: &crate::data::Sample,
) -> Result<Session, Result<crate::exec::ExecError, onnx::OnnxError>> {
    if external_dirs(m).is_empty() {
        let (proto, _) = onnx::engine_proto(m).map_err(Err)?;
        return Session::new(&proto, Some(base_dir), first, &SessionOptions::default()).map_err(Ok);
    }
    Session::from_ir(m.clone(), Some(base_dir), first, &SessionOptions::default()).map_err(Ok)
}

/// The folders of the side files `m`'s main-graph constants lie in.
fn external_dirs(m: &Model) -> std::collections::BTreeSet<std::path::PathBuf> {
    let g = &m.graph;
    g.values()
        .filter_map(|v| match &g.const_of(v)?.data {
            crate::ir::TensorData::External(r) => Some(r.base_dir.clone()),
            _ => None,
        })
        .collect()
}

/// The quantized session `q` against the float one on every sample of `eval`, with
/// progress.
pub(crate) fn compare_on(
    float: &Session,
    q: &Session,
    eval: &Dataset,
    labels: Option<&[i64]>,
    progress: &dyn Progress,
) -> Result<ModelComparison, PipelineError> {
    progress.begin("validating", eval.len() as u64);
    let cmp = compare(float, q, eval, labels, || progress.step()).map_err(|e| match e {
        CompareError::Data(e) => PipelineError::Data(e),
        CompareError::Exec(error) => PipelineError::Exec {
            what: "validation".into(),
            error,
        },
    })?;
    progress.end();
    Ok(cmp)
}

/// Runs `q` against the float session on the evaluation data.
pub(crate) fn validate(
    float: &Session,
    q: &Model,
    p: &Prepared,
    c: &Checks,
    eval: &Dataset,
    progress: &dyn Progress,
) -> Result<(ModelComparison, Vec<String>), PipelineError> {
    let what = format!("{}: quantized model", c.output.display());
    let qs = session_of(q, &p.base_dir, &eval.first()?, what)?;
    let cmp = compare_on(float, &qs, eval, c.labels, progress)?;
    Ok((cmp, qs.notes()))
}

/// Materialises the plan (with `tuned`'s precisions, round after round) and validates it.
pub fn materialise(
    mut s: Source,
    mut tuned: Option<&mut Tuned>,
    c: &Checks,
    r: &mut Round,
) -> Result<End, PipelineError> {
    let p = s.p;
    let float = match c.eval {
        Some(ev) => Some(float_session(p, ev)?),
        None => None,
    };
    let mut round = 0usize;
    loop {
        if let Some(tu) = tuned.as_deref() {
            s.plan = s.base_plan.clone();
            tune::apply(
                &mut s.plan,
                &p.model,
                &tu.units,
                &tu.precisions(),
                "activations kept float by mixed precision",
            );
            tune::apply_w4(&mut s.plan, &tu.w4);
            s.chosen = choose_ranges(
                &mut s.plan,
                &s.stats.tensors,
                s.method,
                s.opts,
                r.candidates,
            )?;
        }
        let t = Instant::now();
        let (q, inserted, tables) = match insert(p, &s.plan, r)? {
            Ok(done) => done,
            Err(after) => return Ok(End::Stopped { after }),
        };
        *r.times.entry("quantize".into()).or_default() += t.elapsed().as_secs_f64();
        if let Some((b, mb, narrow)) = c.budget {
            let size = onnx::encoded_size(&q);
            if size > b {
                if let Some(tu) = tuned.as_deref_mut().filter(|tu| !tu.w_order.is_empty()) {
                    if tu.narrow_more(4) {
                        continue;
                    }
                }
                return Ok(End::Missed(format!(
                    "--size-budget {mb} MB: unreachable; the smallest model qrange writes here is {:.3} MB ({})",
                    size as f64 / 1e6,
                    if narrow {
                        "the weight storage the budget chose, with the activations the goal promoted"
                    } else {
                        "8-bit weights"
                    }
                )));
            }
        }
        let done = |q, validation, exec_notes, s: Source| {
            Ok(End::Done(Box::new(Materialised {
                model: q,
                plan: s.plan,
                chosen: s.chosen,
                inserted,
                tables,
                validation,
                exec_notes,
            })))
        };
        let (Some(fs), Some(ev)) = (&float, c.eval) else {
            return done(q, BTreeMap::new(), Vec::new(), s);
        };
        let t = Instant::now();
        let (cmp, notes) = validate(fs, &q, p, c, ev, r.progress)?;
        *r.times.entry("validate".into()).or_default() += t.elapsed().as_secs_f64();
        let validation = cmp.outputs;
        let (Some(goal), Some(tu)) = (c.goal, tuned.as_deref_mut()) else {
            return done(q, validation, notes, s);
        };
        let figure = goal.figure(&validation);
        tu.validated = Some(figure);
        // How sure the figure is, from its samples.
        tu.eval_estimate = Some(estimate::bootstrap(&cmp.per_sample, |m| goal.figure(m)));
        if goal.meets(figure) {
            return done(q, validation, notes, s);
        }
        round += 1;
        if round > 4 || !tu.promote_more(1 << (round - 1)) {
            return Ok(End::Missed(format!(
                "{}: the search met it on {} samples, but the full evaluation set gives {} after {} extra promotion rounds; raise --sensitivity-samples",
                goal_text(&goal),
                tu.samples,
                goal.describe(figure),
                round - 1
            )));
        }
        tu.rounds = round;
    }
}

/// `plan` materialised on `g` (a model prepared like the one it was made on): the
/// materialise steps on a runner of its own, or why they failed.
pub fn materialise_on(g: &Model, plan: &Plan) -> Result<Model, String> {
    let mut q = g.clone();
    let mut cx = PassCx {
        plan: Some(plan.clone()),
        ..PassCx::default()
    };
    Runner::new()
        .run_phase(Phase::Materialise, &mut q, &mut cx, &mut |_, _| {
            crate::passes::Flow::Continue
        })
        .map_err(|e| e.to_string())?;
    q.verify().map_err(|e| e.to_string())?;
    Ok(q)
}

/// Runs `m` once on `sample` in the engine: its outputs, or why it could not.
pub fn run_once(
    m: &Model,
    base_dir: &Path,
    sample: &crate::data::Sample,
) -> Result<BTreeMap<String, crate::ir::Tensor>, String> {
    let s = engine_session(m, base_dir, sample).map_err(|e| match e {
        Ok(e) => e.to_string(),
        Err(e) => e.to_string(),
    })?;
    s.run(sample).map_err(|e| e.to_string())
}

/// Runs `a` and `b` on `sample` in the engine: `Ok` when both return the same outputs,
/// bit for bit, else what differed.
pub fn same_outputs(
    a: &Model,
    b: &Model,
    base_dir: &Path,
    sample: &crate::data::Sample,
) -> Result<(), String> {
    let (ra, rb) = (
        run_once(a, base_dir, sample)?,
        run_once(b, base_dir, sample)?,
    );
    for (name, x) in &ra {
        match rb.get(name) {
            Some(y) if y == x => {}
            Some(_) => return Err(format!("output '{name}' differs")),
            None => return Err(format!("output '{name}' is missing")),
        }
    }
    Ok(())
}

/// Runs `s` on `sample`, each streamed tap to `observe` as f32.
pub(crate) fn run_taps(
    s: &Session,
    sample: &crate::data::Sample,
    exec: impl Fn(crate::exec::ExecError) -> PipelineError,
    mut observe: impl FnMut(&str, &[f32]) -> Result<(), String>,
) -> Result<(), PipelineError> {
    s.run_observed(sample, false, |name, v| match v {
        crate::exec::TapValue::F32(x) => observe(name, x),
        crate::exec::TapValue::Host(t) => {
            let x: Vec<f32> = t
                .to_f64_vec()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v as f32)
                .collect();
            observe(name, &x)
        }
    })
    .map_err(|e| match e {
        crate::exec::ObservedError::Exec(error) => exec(error),
        crate::exec::ObservedError::Observer(what) => PipelineError::Options(what),
    })?;
    Ok(())
}

/// The values a [`stream_float_taps`] run hands out, and its progress.
pub(crate) struct Taps<'a> {
    pub names: Vec<String>,
    pub label: &'a str,
    pub progress: &'a dyn Progress,
}

/// Runs `m` in the engine over every sample of `samples`, handing each value of `taps` to
/// `observe` as float32 as soon as the engine computes it (nothing is held). `exec` names
/// an engine error for the caller's step; an observer's error is one line.
pub(crate) fn stream_float_taps<S: crate::data::SampleSource + ?Sized>(
    m: &Model,
    base_dir: &Path,
    samples: &S,
    taps: Taps,
    exec: impl Fn(crate::exec::ExecError) -> PipelineError,
    mut observe: impl FnMut(&str, &[f32]) -> Result<(), String>,
) -> Result<(), PipelineError> {
    let Taps {
        names: taps,
        label,
        progress,
    } = taps;
    let n = samples.count();
    if n == 0 {
        return Ok(());
    }
    let opts = SessionOptions {
        taps,
        stream_taps: true,
        ..SessionOptions::default()
    };
    let session =
        Session::from_ir(m.clone(), Some(base_dir), &*samples.sample(0)?, &opts).map_err(&exec)?;
    progress.begin(label, n as u64);
    for i in 0..n {
        let sample = samples.sample(i)?;
        run_taps(&session, &sample, &exec, &mut observe)?;
        progress.step();
    }
    progress.end();
    Ok(())
}
