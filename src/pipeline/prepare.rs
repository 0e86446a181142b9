//! Prepare: the declared pass list up to the plan. Specialise the model for what the user
//! pinned (the float model validation compares against), then normalise it for
//! quantization and plan it ([`crate::passes::Phase::Prepare`]), and fingerprint it
//! before its opset is raised (calibration files name the model they were made for).

use super::error::PipelineError;
use super::interface::General;
use super::options::{Common, DumpOptions};
use super::progress::Progress;
use crate::data::Sample;
use crate::ir::Model;
use crate::passes::{Flow, PassCx, Phase, Runner, Step, StepError};
use crate::quant::plan::{Plan, QuantConfig};
use std::path::PathBuf;

/// The model after specialisation and preparation, with everything derived from it.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Specialised float model (what validation compares against).
    pub float: Model,
    /// Prepared float model (constants folded, BN folded, opset raised): what is calibrated
    /// and quantized.
    pub model: Model,
    pub cfg: QuantConfig,
    pub plan: Plan,
    /// What preparation did and noticed, for the summary.
    pub notes: Vec<String>,
    /// The model file, as given (errors name it).
    pub model_path: PathBuf,
    /// Where the model's external data is read from.
    pub base_dir: PathBuf,
    /// SHA-256 of the prepared float model's encoding before the opset raise for the Q/DQ
    /// (identifies calibration files: the statistics do not depend on the raise).
    pub sha256: Fingerprint,
    /// When the first sample fixed dims the model declares symbolic: the model prepared
    /// without them, which the written model is made from when the plan means the same
    /// on it ([`super::interface`]).
    pub general: Option<General>,
    /// Plan keys of the float values that are constants of `model` only because the first
    /// sample fixed the input shapes (computed from them in `general`'s model): the plan
    /// leaves the ops that would quantize them float.
    pub shape_constants: std::collections::BTreeSet<String>,
    /// Weights the adaptive selection's simulation quantized, with their codes in its side
    /// file: the written model takes them from there instead of quantizing them again.
    pub weight_memo: std::sync::Arc<std::sync::Mutex<crate::passes::insert_qdq::WeightMemo>>,
}

impl Prepared {
    /// Rewrites the prepared model's weights with `rewrite` (an error there is an error of
    /// the option `flag`), checks it, and rewrites the model with the declared dims the same
    /// way (a failure there is kept as that model's error, `doing` saying what failed); then
    /// plans and fingerprints the rewritten model again (what calibration identifies).
    pub(crate) fn rewrite_weights(
        &mut self,
        flag: &str,
        doing: &str,
        rewrite: impl Fn(&mut Model) -> Result<(), String>,
    ) -> Result<(), PipelineError> {
        rewrite(&mut self.model)
            .map_err(|what| PipelineError::Options(format!("{flag}: {what}")))?;
        self.model
            .verify()
            .map_err(|error| PipelineError::InvalidPrepared {
                model: self.model_path.clone(),
                error,
            })?;
        if let Some(general) = self.general.as_mut() {
            if let Ok(gm) = general.model.as_mut() {
                if let Err(e) = rewrite(gm) {
                    general.model = Err(format!("{doing} the model with its declared dims: {e}"));
                }
            }
        }
        let un = crate::quant::plan::Uncalibrated {
            shape_constants: self.shape_constants.clone(),
            ..Default::default()
        };
        self.plan = crate::quant::plan::build_with(&self.model, &self.cfg, &un);
        self.sha256 = Fingerprint::of(&self.model)?;
        Ok(())
    }
}

/// What [`prepare`] is given besides the model.
pub struct PrepareInput<'a> {
    pub common: &'a Common,
    /// Extra node names to leave float (a precision overrides file's `float` nodes).
    pub float_nodes: &'a [String],
    /// The first sample: its shapes specialise the model (`--shape` overrides them).
    pub first_sample: Option<&'a Sample>,
    /// 16-bit activations may be used (mixed precision): Q/DQ need opset 21.
    pub wide: bool,
    /// Dynamic quantization (`--mode dynamic`): no plan, opset 11.
    pub dynamic: bool,
    pub dump: &'a DumpOptions,
}

/// How [`prepare`] ended: prepared, or stopped after a pass (`--stop-after`).
pub enum PrepareEnd {
    Prepared(Box<Prepared>),
    Stopped { after: String },
}

/// The hook [`Runner::run_phase`] calls after each step: hands the dumps asked for to
/// `progress` and stops after `--stop-after`'s pass.
pub(crate) fn dump_hook<'a>(
    dump: &'a DumpOptions,
    progress: &'a dyn Progress,
) -> impl FnMut(&Step, &Model) -> Flow + 'a {
    move |step, m| {
        let stop = dump.stop_after.as_deref().is_some_and(|n| step.matches(n));
        if stop || dump.after.iter().any(|n| step.matches(n)) {
            progress.dump(step.label, &crate::ir::dump::dump_model(m));
        }
        if stop {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

/// Maps a step's failure to the pipeline's error naming the model file.
pub(crate) fn step_error(model: &std::path::Path, e: StepError) -> PipelineError {
    match e {
        StepError::Pass(error) => PipelineError::Pass {
            model: model.to_path_buf(),
            error,
        },
        e @ StepError::Invalid { .. } => PipelineError::Step(e),
    }
}

fn has_if(m: &Model) -> bool {
    fn walk(g: &crate::ir::Graph) -> bool {
        g.ops().any(|o| {
            let op = g.op(o);
            op.op_type == "If" || op.subgraphs().iter().any(|(_, sg)| walk(sg))
        })
    }
    walk(&m.graph)
}

/// Inline constant bytes from which [`Fingerprint::of`] hashes at once rather than on a
/// worker thread with a copy of the model.
const COPY_TO_HASH: usize = 16 << 20;

/// A model's `sha256_of`, hashed on a worker thread while the run goes on when the
/// model keeps its weights in side files (streaming them through the hash takes seconds
/// on a large model, and nothing reads the digest before calibration has run) and its
/// inline constants are small (the worker hashes a copy of the model), else at once.
#[derive(Clone, Debug)]
pub struct Fingerprint(std::sync::Arc<std::sync::Mutex<Digest>>);

#[derive(Debug)]
enum Digest {
    Ready(String),
    Hashing(std::thread::JoinHandle<Result<String, String>>),
    Failed(String),
}

impl Fingerprint {
    /// Starts hashing `m` (see the type).
    pub(crate) fn of(m: &Model) -> Result<Fingerprint, PipelineError> {
        use crate::ir::TensorData;
        // Bytes of inline initializers (subgraphs' too), and whether any is external.
        fn sizes(g: &crate::ir::Graph, inline: &mut usize, external: &mut bool) {
            for v in g.values() {
                match g.const_of(v).map(|c| (&c.data, c.numel())) {
                    Some((TensorData::External(_), _)) => *external = true,
                    Some((TensorData::Raw(r), _)) => *inline += r.len(),
                    Some((_, n)) => *inline += n.saturating_mul(8),
                    None => {}
                }
            }
            for o in g.ops() {
                for (_, sub) in g.op(o).subgraphs() {
                    sizes(sub, inline, external);
                }
            }
        }
        let (mut inline, mut external) = (0usize, false);
        sizes(&m.graph, &mut inline, &mut external);
        let digest = if external && inline <= COPY_TO_HASH {
            let copy = m.clone();
            Digest::Hashing(std::thread::spawn(move || {
                sha256_of(&copy).map_err(|e| e.to_string())
            }))
        } else {
            Digest::Ready(sha256_of(m)?)
        };
        Ok(Fingerprint(std::sync::Arc::new(std::sync::Mutex::new(
            digest,
        ))))
    }

    /// The digest in hex, waiting for the worker if it is still hashing.
    pub fn get(&self) -> Result<String, PipelineError> {
        let mut d = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Digest::Hashing(_) = &*d {
            let Digest::Hashing(h) = std::mem::replace(&mut *d, Digest::Failed(String::new()))
            else {
                unreachable!("matched above");
            };
            *d = match h.join() {
                Ok(Ok(hex)) => Digest::Ready(hex),
                Ok(Err(e)) => Digest::Failed(e),
                Err(_) => Digest::Failed("hashing the model stopped unexpectedly".into()),
            };
        }
        match &*d {
            Digest::Ready(hex) => Ok(hex.clone()),
            Digest::Failed(e) => Err(PipelineError::Options(e.clone())),
            Digest::Hashing(_) => unreachable!("joined above"),
        }
    }
}

/// SHA-256 of a model's encoding (its inline encoding; for weights in external data, the
/// encoding with them referenced followed by their bytes: `onnx::write_identity`, which
/// streams them), in hex.
pub(crate) fn sha256_of(m: &Model) -> Result<String, PipelineError> {
    use sha2::Digest;
    struct Sink(sha2::Sha256);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Sink(sha2::Sha256::new());
    crate::onnx::write_identity(m, &mut sink)?;
    Ok(sink
        .0
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Specialises and prepares `m` with the steps of `runner` up to the plan.
pub fn prepare(
    input: &PrepareInput,
    mut m: Model,
    runner: &mut Runner,
    progress: &dyn Progress,
) -> Result<PrepareEnd, PipelineError> {
    let c = input.common;
    let mut settings = c.settings.clone();
    settings
        .exclude_nodes
        .extend(input.float_nodes.iter().cloned());
    let cfg = settings.config().map_err(PipelineError::Options)?;
    let pins = super::inputs::pins(&m, c)?;
    let shapes = match input.first_sample {
        Some(s) => super::inputs::sample_shapes(s, &c.shapes),
        None => c.shapes.clone(),
    };
    let mut cx = PassCx {
        pinned: pins,
        input_shapes: shapes,
        quant: Some(cfg.clone()),
        wide: input.wide,
        dynamic: input.dynamic,
        ..PassCx::default()
    };
    let pinned = cx.pinned.keys().cloned().collect();
    let fixed = super::interface::sample_fixed(
        &super::interface::declared_inputs(&m),
        &cx.input_shapes,
        &c.shapes,
        &pinned,
    );
    let original = (!fixed.is_empty()).then(|| m.clone());
    let mut notes = Vec::new();
    let mut float = None;
    // Calibration statistics depend on the model before the opset is raised for the
    // Q/DQ (a raise rewrites no activation): that model identifies them, so statistics
    // from `qrange calibrate` serve a run whose mixed precision needs opset 21.
    let before_raise = runner
        .steps()
        .iter()
        .position(|s| s.pass.name() == crate::passes::upgrade_opset::NAME)
        .and_then(|i| i.checked_sub(1))
        .map(|i| runner.steps()[i].label);
    let mut sha256 = None;
    for phase in [Phase::Specialise, Phase::Prepare] {
        let mut dump = dump_hook(input.dump, progress);
        let mut hook = |step: &crate::passes::Step, m: &Model| {
            if Some(step.label) == before_raise && sha256.is_none() {
                sha256 = Some(Fingerprint::of(m));
            }
            dump(step, m)
        };
        let stopped = runner
            .run_phase(phase, &mut m, &mut cx, &mut hook)
            .map_err(|e| step_error(&c.model, e))?;
        if let Some(after) = stopped {
            return Ok(PrepareEnd::Stopped {
                after: after.to_string(),
            });
        }
        if phase == Phase::Specialise {
            if has_if(&m) {
                notes.push(
                    "If nodes remain after specialisation: each branch is calibrated on the samples that take it"
                        .to_string(),
                );
            }
            float = Some(m.clone());
        }
    }
    m.verify().map_err(|error| PipelineError::InvalidPrepared {
        model: c.model.clone(),
        error,
    })?;
    notes.append(&mut cx.done);
    for d in &cx.diagnostics {
        notes.push(format!("{}: {}", d.pass, d.what));
    }
    let sha256 = match sha256 {
        Some(h) => h?,
        None => Fingerprint::of(&m)?,
    };
    let general = original.map(|o| General {
        fixed,
        outputs: o
            .graph
            .outputs
            .iter()
            .map(|v| o.graph.value(*v).clone())
            .collect(),
        model: prepare_general(o, c, &cx.pinned, &cfg, input.wide),
    });
    let shape_constants = match general.as_ref().map(|g| &g.model) {
        Some(Ok(g)) => shape_constants(&m, g),
        _ => Default::default(),
    };
    let mut plan = cx.plan.unwrap_or_default();
    if !shape_constants.is_empty() {
        let un = crate::quant::plan::Uncalibrated {
            shape_constants: shape_constants.clone(),
            ..Default::default()
        };
        plan = crate::quant::plan::build_with(&m, &cfg, &un);
    }
    Ok(PrepareEnd::Prepared(Box::new(Prepared {
        float: float.expect("the specialise phase ran"),
        model: m,
        cfg,
        plan,
        notes,
        model_path: c.model.clone(),
        base_dir: crate::onnx::base_dir(&c.model),
        sha256,
        general,
        shape_constants,
        weight_memo: Default::default(),
    })))
}

/// Plan keys of the float constants of `s` (prepared for the sample's shapes) that `g`
/// (the same model prepared with its declared dims) computes.
fn shape_constants(s: &Model, g: &Model) -> std::collections::BTreeSet<String> {
    use crate::quant::plan::ValueKeys;
    let (sk, gk) = (ValueKeys::of(&s.graph), ValueKeys::of(&g.graph));
    let mut out = std::collections::BTreeSet::new();
    for i in 0..sk.scopes.len() {
        let sg = sk.scopes.graph(&s.graph, i);
        for v in sg.values() {
            if !sg.const_of(v).is_some_and(|c| c.dtype.is_float()) {
                continue;
            }
            let Some(key) = sk.key(i, &sg.value(v).name) else {
                continue;
            };
            let computed = gk.locate(key).is_some_and(|(j, local)| {
                let gg = gk.scopes.graph(&g.graph, j);
                gg.value_by_name(local)
                    .is_some_and(|w| gg.const_of(w).is_none() && gg.producer(w).is_some())
            });
            if computed {
                out.insert(key.to_string());
            }
        }
    }
    out
}

/// `m` through the same specialise and prepare steps with the pins and the `--shape`
/// shapes only, on a runner of its own (the run's log and dumps are the specialised
/// model's), or why it could not be prepared.
fn prepare_general(
    mut m: Model,
    c: &Common,
    pinned: &std::collections::BTreeMap<String, crate::ir::Tensor>,
    cfg: &QuantConfig,
    wide: bool,
) -> Result<Model, String> {
    let mut cx = PassCx {
        pinned: pinned.clone(),
        input_shapes: c.shapes.clone(),
        quant: Some(cfg.clone()),
        wide,
        ..PassCx::default()
    };
    let mut runner = Runner::new();
    for phase in [Phase::Specialise, Phase::Prepare] {
        runner
            .run_phase(phase, &mut m, &mut cx, &mut |_, _| Flow::Continue)
            .map_err(|e| format!("preparing it with the declared dims failed: {e}"))?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testkit::{to_side_file, Builder};

    fn model() -> Model {
        let mut b = Builder::new(13);
        b.init("w", &[64, 32], 1, 0.5, 0.0)
            .init("b", &[32], 2, 0.1, 0.0)
            .input("x", 1, Some(&[1, 64]))
            .node("MatMul", "mm", &["x", "w"], &["y0"], vec![])
            .node("Add", "add", &["y0", "b"], &["y"], vec![])
            .output("y", 1, Some(&[1, 32]));
        b.model()
    }

    #[test]
    fn a_fingerprint_hashed_aside_is_the_digest_of_the_model() {
        let inline = model();
        let at_once = Fingerprint::of(&inline).unwrap();
        assert!(matches!(&*at_once.0.lock().unwrap(), Digest::Ready(_)));
        assert_eq!(at_once.get().unwrap(), sha256_of(&inline).unwrap());
        let mut ext = model();
        let file = to_side_file(&mut ext);
        let aside = Fingerprint::of(&ext).unwrap();
        assert!(matches!(&*aside.0.lock().unwrap(), Digest::Hashing(_)));
        let digest = sha256_of(&ext).unwrap();
        assert_eq!(aside.get().unwrap(), digest);
        assert_eq!(aside.clone().get().unwrap(), digest, "asked twice");
        drop(file);
    }
}
