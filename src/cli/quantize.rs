//! `qrange quantize` (and the preparation it shares with `calibrate`): calibrate,
//! plan, insert Q/DQ, write, validate, summarise.

use super::run::{input_specs, parse_pins, parse_shapes, sample_shapes};
use super::Outcome;
use crate::calib::collect::{collect, plan_groups};
use crate::calib::{
    compute_range, CalibrationFile, Method, MethodOptions, QuantTarget, TensorStats,
};
use crate::data::{self, Dataset, Sample};
use crate::exec::{Session, SessionOptions};
use crate::ir::{DType, Model, Tensor, ValueType};
use crate::onnx::{self, ExternalPolicy};
use crate::passes::{self, Pass, PassCx};
use crate::quant::params::QType;
use crate::quant::plan::{self, Decision, OpState, Plan, QuantConfig};
use crate::quant::rules::Target;
use crate::report::compare::compare;
use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Activation element types accepted on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActType {
    U8,
    I8,
    U16,
    I16,
}

/// Options shared by `quantize` and `calibrate`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// The float model.
    pub model: PathBuf,
    /// Calibration data: .npz/.npy (axis 0 = sample), an ONNX test_data_set folder, or
    /// `random:N` for a smoke test (ranges are then meaningless).
    #[arg(long, value_name = "DATA")]
    pub calib: Option<String>,
    /// Runtime the model is for: sets placement style and defaults.
    #[arg(long, value_enum, default_value = "ort-cpu")]
    pub target: Target,
    /// Activation type (default: u8 asymmetric; i8 symmetric for tensorrt).
    #[arg(long, value_enum)]
    pub activation_type: Option<ActType>,
    /// One scale per tensor for weights instead of one per output channel.
    #[arg(long)]
    pub per_tensor: bool,
    /// Use all 8 bits of int8 weights. By default ort-cpu weights use 7 bits, so that
    /// u8 x s8 kernels on x86 CPUs without VNNI cannot saturate.
    #[arg(long)]
    pub no_reduce_range: bool,
    /// Fix a model input to a constant, e.g. `sr=16000`; `If` nodes it decides are folded.
    #[arg(long, value_name = "NAME=VALUE")]
    pub pin: Vec<String>,
    /// Concrete input shape, e.g. `input=1,576` (default: the first sample's).
    #[arg(long, value_name = "NAME=DIMS")]
    pub shape: Vec<String>,
    /// Node names to leave float (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_name = "NODES")]
    pub exclude_nodes: Vec<String>,
    /// Op types to leave float (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_name = "OPS")]
    pub exclude_op_types: Vec<String>,
    /// Quantize only these op types.
    #[arg(long, value_delimiter = ',', value_name = "OPS")]
    pub op_types: Vec<String>,
    /// Per-run memory budget for tapped tensors during calibration, in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub memory_budget: u64,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Quantize a float model: calibrate ranges on data, insert QuantizeLinear/DequantizeLinear,
/// write a model ONNX Runtime runs with integer kernels, then validate it against the float
/// model in tract.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    qrange quantize fixtures/ppocr_cls/model.onnx --calib fixtures/ppocr_cls/calib.npz \\\n      \
        --eval fixtures/ppocr_cls/eval.npz --labels label -o cls.int8.onnx\n  \
    qrange quantize model.onnx --calib calib.npz --method entropy -o out.onnx\n  \
    qrange calibrate model.onnx --calib shard1.npz -o s1.json   # on several machines\n  \
    qrange merge s1.json s2.json -o all.json\n  \
    qrange quantize model.onnx --ranges all.json -o out.onnx --no-validate")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output model.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Range method for activations.
    #[arg(long, value_enum, default_value = "auto")]
    pub method: Method,
    /// Percentile kept by `--method percentile`.
    #[arg(long, default_value_t = 99.999)]
    pub percentile: f64,
    /// Statistics from `qrange calibrate`/`merge` instead of calibrating now.
    #[arg(long, value_name = "FILE", conflicts_with = "calib")]
    pub ranges: Option<PathBuf>,
    /// Evaluation data (default: the last 20 % of the calibration samples, held back).
    #[arg(long, value_name = "DATA")]
    pub eval: Option<PathBuf>,
    /// Key of the ground-truth labels in the evaluation data (task accuracy).
    #[arg(long, value_name = "KEY")]
    pub labels: Option<String>,
    /// Skip validation.
    #[arg(long)]
    pub no_validate: bool,
}

/// The model after specialisation and preparation, with everything derived from it.
pub(crate) struct Prepared {
    /// Specialised float model (what validation compares against).
    pub float: Model,
    /// Prepared float model (constants folded, BN folded, opset raised): what is calibrated
    /// and quantized.
    pub model: Model,
    pub cfg: QuantConfig,
    pub plan: Plan,
    pub notes: Vec<String>,
    pub base_dir: PathBuf,
    /// SHA-256 of the prepared float model's encoding (identifies calibration files).
    pub sha256: String,
}

pub(crate) fn warn(msg: &str) {
    eprintln!("warning: {msg}");
}

fn act_qtype(a: &CommonArgs) -> QType {
    let t = a.activation_type.unwrap_or(match a.target {
        Target::Tensorrt => ActType::I8,
        _ => ActType::U8,
    });
    let (dtype, symmetric) = match t {
        ActType::U8 => (DType::U8, false),
        ActType::I8 => (DType::I8, true),
        ActType::U16 => (DType::U16, false),
        ActType::I16 => (DType::I16, true),
    };
    QType::new(dtype, symmetric, false).expect("integer type")
}

pub(crate) fn config(a: &CommonArgs) -> anyhow::Result<QuantConfig> {
    let reduce = a.target == Target::OrtCpu && !a.no_reduce_range;
    if a.target == Target::Tensorrt && matches!(a.activation_type, Some(ActType::U8 | ActType::U16))
    {
        bail!("--target tensorrt needs symmetric activations: use --activation-type i8 (or i16)");
    }
    let set = |v: &[String]| {
        v.iter()
            .map(|s| s.trim().to_string())
            .collect::<BTreeSet<_>>()
    };
    Ok(QuantConfig {
        target: a.target,
        activation: act_qtype(a),
        weight: QType::new(DType::I8, true, reduce).expect("int8"),
        per_channel: !a.per_tensor,
        exclude_nodes: set(&a.exclude_nodes),
        exclude_op_types: set(&a.exclude_op_types),
        op_types: (!a.op_types.is_empty()).then(|| set(&a.op_types)),
    })
}

fn base_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Loads calibration data, or makes random samples for `random:N`.
pub(crate) fn load_calib(
    a: &CommonArgs,
    m: &Model,
    pins: &BTreeMap<String, Tensor>,
) -> anyhow::Result<Dataset> {
    let Some(spec) = &a.calib else {
        bail!("no calibration data: give --calib DATA (or --ranges FILE)");
    };
    let specs = input_specs(m, pins);
    if let Some(n) = spec.strip_prefix("random:") {
        let n: usize = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow!("--calib {spec}: N must be a positive number"))?;
        warn(
            "--calib random: ranges from random data are meaningless; use it for smoke tests only",
        );
        let shapes = parse_shapes(&a.shape)?;
        return random_dataset(&specs, &shapes, n);
    }
    Ok(data::load(Path::new(spec), &specs)?)
}

fn random_dataset(
    specs: &[data::InputSpec],
    shapes: &BTreeMap<String, Vec<i64>>,
    n: usize,
) -> anyhow::Result<Dataset> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = Sample::new();
        for sp in specs {
            let shape: Vec<usize> = match shapes.get(&sp.name) {
                Some(d) => d.iter().map(|&x| x as usize).collect(),
                None => sp
                    .shape
                    .clone()
                    .ok_or_else(|| {
                        anyhow!(
                            "--calib random: input '{}' has no known rank; give --shape",
                            sp.name
                        )
                    })?
                    .into_iter()
                    .map(|d| d.unwrap_or(1))
                    .collect(),
            };
            let len: usize = shape.iter().product();
            let vals: Vec<f64> = (0..len)
                .map(|_| match sp.dtype {
                    DType::F32 | DType::F64 => next() * 2.0 - 1.0,
                    DType::Bool => (next() < 0.5) as u8 as f64,
                    _ => (next() * 100.0).floor(),
                })
                .collect();
            let t = Tensor::from_f64(sp.dtype, &shape, &vals)
                .map_err(|e| anyhow!("--calib random: input '{}': {e}", sp.name))?;
            s.insert(sp.name.clone(), t);
        }
        samples.push(s);
    }
    Ok(Dataset {
        samples,
        extra: BTreeMap::new(),
        source: PathBuf::from("random"),
        skipped: Vec::new(),
    })
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

fn uses_per_channel(plan: &Plan) -> bool {
    plan.values
        .values()
        .any(|d| matches!(d, Decision::Weight { axis: Some(_), .. }))
}

/// Specialises and prepares the model, and builds the plan.
pub(crate) fn prepare(
    a: &CommonArgs,
    mut m: Model,
    first_sample: Option<&Sample>,
) -> anyhow::Result<Prepared> {
    let cfg = config(a)?;
    let pins = parse_pins(&m, &a.pin)?;
    let given = parse_shapes(&a.shape)?;
    let shapes = match first_sample {
        Some(s) => sample_shapes(s, &given),
        None => given,
    };
    let mut notes = Vec::new();
    let mut cx = PassCx {
        pinned: pins,
        input_shapes: shapes,
        ..PassCx::default()
    };
    passes::specialize(&mut m, &mut cx).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    if has_if(&m) {
        notes.push("If nodes remain after specialisation; their bodies stay float".to_string());
    }
    let float = m.clone();
    let mut model = m;
    let run = |p: &dyn Pass, model: &mut Model, cx: &mut PassCx| -> anyhow::Result<()> {
        p.run(model, cx)
            .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
        Ok(())
    };
    run(&passes::infer_shapes::InferShapes, &mut model, &mut cx)?;
    run(&passes::fold_constants::FoldConstants, &mut model, &mut cx)?;
    if cfg.target != Target::Tensorrt {
        let n = passes::fold_batchnorm::fold_batchnorms(&mut model)
            .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
        if n > 0 {
            notes.push(format!(
                "{n} BatchNormalization folded into their producers"
            ));
        }
        let n = passes::fold_bias_add::fold_bias_adds(&mut model)
            .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
        if n > 0 {
            notes.push(format!("{n} per-channel Add folded into Conv biases"));
        }
    }
    passes::util::remove_dead(&mut model.graph);
    run(&passes::infer_shapes::InferShapes, &mut model, &mut cx)?;
    // Q/DQ with `axis` need opset 13; 16-bit types need 21.
    let mut plan = plan::build(&model, &cfg);
    let sixteen = matches!(cfg.activation.dtype, DType::U16 | DType::I16);
    let need = if sixteen {
        21
    } else if uses_per_channel(&plan) {
        13
    } else {
        10
    };
    let have = model.opset("").unwrap_or(1);
    if have < need {
        let rep = passes::upgrade_opset::upgrade(&mut model, need).map_err(|e| {
            anyhow!(
                "{}: raising the opset from {have} to {need} for Q/DQ: {e}",
                a.model.display()
            )
        })?;
        notes.push(format!(
            "opset raised from {have} to {need} ({} nodes rewritten)",
            rep.converted.values().sum::<usize>()
        ));
        run(&passes::infer_shapes::InferShapes, &mut model, &mut cx)?;
        plan = plan::build(&model, &cfg);
    }
    model
        .verify()
        .map_err(|e| anyhow!("{}: prepared model is invalid: {e}", a.model.display()))?;
    for d in &cx.diagnostics {
        notes.push(format!("{}: {}", d.pass, d.what));
    }
    let bytes = onnx::model_to_bytes(&model)?;
    let sha256 = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    Ok(Prepared {
        float,
        model,
        cfg,
        plan,
        notes,
        base_dir: base_dir(&a.model),
        sha256,
    })
}

/// Bytes per sample of a value, from its inferred type (0 when unknown).
fn value_bytes(m: &Model, name: &str) -> u64 {
    let g = &m.graph;
    g.value_by_name(name)
        .and_then(|v| g.value(v).ty.as_ref().and_then(ValueType::known_dims))
        .map(|d| d.iter().map(|&x| x.max(1) as u64).product::<u64>() * 4)
        .unwrap_or(0)
}

/// Runs calibration over `samples` and returns the statistics file.
pub(crate) fn calibrate(
    p: &Prepared,
    samples: &[Sample],
    budget_mib: u64,
    show_progress: bool,
) -> anyhow::Result<CalibrationFile> {
    let values = p.plan.calibration_values();
    let sized: Vec<(String, u64)> = values
        .iter()
        .map(|v| (v.clone(), value_bytes(&p.model, v)))
        .collect();
    let groups = plan_groups(&sized, budget_mib.saturating_mul(1 << 20));
    let (proto, _) = onnx::encode_model(&p.model, &ExternalPolicy::Inline, "")?;
    let bar = super::progress((groups.len() * samples.len()) as u64, "calibrating");
    if !show_progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let stats = collect(&proto, Some(&p.base_dir), samples, &groups, |d, _| {
        bar.set_position(d)
    })
    .context("calibration")?;
    bar.finish_and_clear();
    let mut file = CalibrationFile::new(p.sha256.clone());
    file.samples = samples.len() as u64;
    file.tensors = stats;
    Ok(file)
}

/// Fills the plan's ranges from statistics; returns the method chosen per value.
pub(crate) fn choose_ranges(
    plan: &mut Plan,
    stats: &BTreeMap<String, TensorStats>,
    method: Method,
    opts: &MethodOptions,
) -> anyhow::Result<BTreeMap<String, Method>> {
    let mut chosen = BTreeMap::new();
    let wanted = plan.calibration_values();
    for v in wanted {
        let qtype = plan
            .values
            .iter()
            .find_map(|(n, d)| match d {
                Decision::Activation {
                    qtype, range_from, ..
                } if n == &v || range_from.as_deref() == Some(v.as_str()) => Some(*qtype),
                _ => None,
            })
            .expect("calibration value comes from a decision");
        let s = stats.get(&v).ok_or_else(|| {
            anyhow!("no statistics for value '{v}' (ranges file for another model or options?)")
        })?;
        let r = compute_range(&v, s, method, &QuantTarget::of(&qtype), opts)?;
        plan.ranges.insert(v.clone(), (r.lo, r.hi));
        chosen.insert(v, r.method);
    }
    Ok(chosen)
}

#[derive(Serialize)]
struct Summary {
    input: String,
    output: String,
    target: Target,
    activation: String,
    weight: String,
    quantized_ops: usize,
    folded_ops: usize,
    float_ops: usize,
    float_reasons: BTreeMap<String, Vec<String>>,
    methods: BTreeMap<String, usize>,
    size_before: u64,
    size_after: u64,
    calibration_samples: usize,
    eval_samples: usize,
    validation: BTreeMap<String, crate::report::Metrics>,
    seconds: BTreeMap<String, f64>,
    notes: Vec<String>,
}

fn qtype_text(q: &QType, per_channel: Option<bool>) -> String {
    format!(
        "{} {} [{}, {}]{}",
        q.dtype,
        if q.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        },
        q.qmin,
        q.qmax,
        match per_channel {
            Some(true) => " per-channel",
            Some(false) => " per-tensor",
            None => "",
        }
    )
}

fn file_size(m: &Model) -> u64 {
    onnx::model_to_bytes(m).map(|b| b.len() as u64).unwrap_or(0)
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let c = &a.common;
    super::check_not_input(&c.model, &a.output)?;
    if !(a.percentile > 0.0 && a.percentile <= 100.0) {
        bail!("--percentile {} is outside (0, 100]", a.percentile);
    }
    let mut times: BTreeMap<String, f64> = BTreeMap::new();
    let mut warnings: Vec<String> = Vec::new();
    let t = Instant::now();
    let model = onnx::read_model(&c.model)?;
    let pins = parse_pins(&model, &c.pin)?;
    let (mut calib, ranges_file) = match &a.ranges {
        Some(f) => (None, Some(CalibrationFile::read(f)?)),
        None => (Some(load_calib(c, &model, &pins)?), None),
    };
    let mut eval: Option<Dataset> = match &a.eval {
        Some(p) => Some(data::load(p, &input_specs(&model, &pins))?),
        None => None,
    };
    if eval.is_none() && !a.no_validate {
        match calib.as_mut() {
            Some(ds) if ds.samples.len() >= 2 => {
                let k = (ds.samples.len() / 5).max(1);
                let held: Vec<Sample> = ds.samples.split_off(ds.samples.len() - k);
                let mut extra = BTreeMap::new();
                for (key, t) in &ds.extra {
                    if let Some(v) = t.to_i64_vec() {
                        let n = v.len();
                        extra.insert(
                            key.clone(),
                            Tensor::I64(
                                ndarray::Array1::from(v[n - k..].to_vec()).into_dyn(),
                            ),
                        );
                    }
                }
                if ds.samples.len() < 8 {
                    warnings.push(format!(
                        "holding back {k} of {} calibration samples for validation leaves only {} to calibrate on; give --eval DATA",
                        ds.samples.len() + k,
                        ds.samples.len()
                    ));
                }
                eval = Some(Dataset {
                    samples: held,
                    extra,
                    source: ds.source.clone(),
                    skipped: Vec::new(),
                });
            }
            Some(_) => bail!("validation needs evaluation data: one calibration sample cannot be split; give --eval DATA or --no-validate"),
            None => bail!("validation needs evaluation data with --ranges: give --eval DATA or --no-validate"),
        }
    }
    let first = calib
        .as_ref()
        .and_then(|d| d.samples.first().cloned())
        .or_else(|| eval.as_ref().and_then(|d| d.samples.first().cloned()));
    times.insert("load".into(), t.elapsed().as_secs_f64());

    // Everything the validation needs is checked before anything is written.
    let labels = match (&a.labels, &eval) {
        (Some(k), Some(ev)) if !a.no_validate => Some(ev.labels(k)?),
        _ => None,
    };
    let t = Instant::now();
    let mut p = prepare(c, model, first.as_ref())?;
    times.insert("prepare".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let stats = match (ranges_file, &calib) {
        (Some(f), _) => {
            if f.model_sha256 != p.sha256 {
                bail!(
                    "{}: the ranges file was made for another model or other options (model sha256 {}, this run {})",
                    a.ranges.as_ref().expect("ranges given").display(),
                    f.model_sha256,
                    p.sha256
                );
            }
            f
        }
        (None, Some(ds)) => calibrate(&p, &ds.samples, c.memory_budget, !c.json)?,
        (None, None) => unreachable!("calibration data or ranges"),
    };
    let opts = MethodOptions {
        percentile: a.percentile,
        ..MethodOptions::default()
    };
    let chosen = choose_ranges(&mut p.plan, &stats.tensors, a.method, &opts)?;
    times.insert("calibrate".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut q = p.model.clone();
    let rep = passes::insert_qdq::materialize(&mut q, &p.plan)
        .map_err(|e| anyhow!("{}: {e}", c.model.display()))?;
    let mut cx = PassCx::default();
    passes::infer_shapes::InferShapes
        .run(&mut q, &mut cx)
        .map_err(|e| anyhow!("{}: {e}", c.model.display()))?;
    q.verify()
        .map_err(|e| anyhow!("internal error: quantized model is invalid: {e}"))?;
    for (name, n) in &rep.bias_saturated {
        warnings.push(format!("bias '{name}': {n} values saturated int32"));
    }
    times.insert("quantize".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    onnx::write_model(&q, &a.output, &ExternalPolicy::Keep)?;
    times.insert("write".into(), t.elapsed().as_secs_f64());

    let mut validation = BTreeMap::new();
    let mut exec_notes = Vec::new();
    if !a.no_validate {
        let t = Instant::now();
        let ev = eval.as_ref().expect("eval data prepared above");
        let first = &ev.samples[0];
        let (fp, _) = onnx::encode_model(&p.float, &ExternalPolicy::Inline, "")?;
        let (qp, _) = onnx::encode_model(&q, &ExternalPolicy::Inline, "")?;
        let fs = Session::new(&fp, Some(&p.base_dir), first, &SessionOptions::default())
            .map_err(|e| anyhow!("{}: float model: {e}", c.model.display()))?;
        let qs = Session::new(&qp, Some(&p.base_dir), first, &SessionOptions::default())
            .map_err(|e| anyhow!("{}: quantized model: {e}", a.output.display()))?;
        let bar = super::progress(ev.samples.len() as u64, "validating");
        if c.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let cmp = compare(&fs, &qs, &ev.samples, labels.as_deref(), || bar.inc(1))
            .map_err(|e| anyhow!("validation: {e}"))?;
        bar.finish_and_clear();
        validation = cmp.outputs;
        exec_notes = qs.notes();
        times.insert("validate".into(), t.elapsed().as_secs_f64());
    }

    let (nq, nf, nfl) = p.plan.counts();
    let mut float_reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, s) in &p.plan.ops {
        if let OpState::Float { reason } = s {
            float_reasons
                .entry(reason.clone())
                .or_default()
                .push(k.clone());
        }
    }
    let mut methods: BTreeMap<String, usize> = BTreeMap::new();
    for m in chosen.values() {
        *methods.entry(m.name().to_string()).or_default() += 1;
    }
    let mut notes = p.notes.clone();
    notes.extend(exec_notes);
    let s = Summary {
        input: c.model.display().to_string(),
        output: a.output.display().to_string(),
        target: p.cfg.target,
        activation: qtype_text(&p.cfg.activation, None),
        weight: qtype_text(&p.cfg.weight, Some(p.cfg.per_channel)),
        quantized_ops: nq,
        folded_ops: nf,
        float_ops: nfl,
        float_reasons,
        methods,
        size_before: file_size(&p.float),
        size_after: file_size(&q),
        calibration_samples: stats.samples as usize,
        eval_samples: eval.as_ref().map(|e| e.samples.len()).unwrap_or(0),
        validation,
        seconds: times,
        notes,
    };
    for w in &warnings {
        warn(w);
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_summary(&s);
    }
    Ok(Outcome::Ok)
}

fn print_summary(s: &Summary) {
    println!("quantized  {} -> {}", s.input, s.output);
    println!(
        "settings   target {:?}, activations {}, weights {}",
        s.target, s.activation, s.weight
    );
    println!(
        "ops        {} quantized, {} folded into their producer, {} left float",
        s.quantized_ops, s.folded_ops, s.float_ops
    );
    for (reason, ops) in &s.float_reasons {
        let shown: Vec<&str> = ops.iter().take(6).map(String::as_str).collect();
        let more = if ops.len() > 6 {
            format!(" (+{} more)", ops.len() - 6)
        } else {
            String::new()
        };
        println!("  float: {reason}: {}{more}", shown.join(", "));
    }
    println!(
        "ranges     {} calibration samples; methods chosen: {}",
        s.calibration_samples,
        s.methods
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "size       {:.1} KB -> {:.1} KB",
        s.size_before as f64 / 1024.0,
        s.size_after as f64 / 1024.0
    );
    if !s.validation.is_empty() {
        println!(
            "validation {} eval samples, tract, float vs quantized:",
            s.eval_samples
        );
        for (name, m) in &s.validation {
            let mut line = format!(
                "  {name}: SQNR {:.2} dB, cosine {:.5}, max-abs {:.4e}",
                m.sqnr_db, m.cosine, m.max_abs
            );
            if let Some(t) = m.top1_agreement {
                line += &format!(", top-1 agreement {:.1}%", t * 100.0);
            }
            if let (Some(r), Some(q)) = (m.accuracy_ref, m.accuracy_test) {
                line += &format!(", accuracy {:.2}% -> {:.2}%", r * 100.0, q * 100.0);
            }
            println!("{line}");
        }
    }
    println!(
        "time       {}",
        s.seconds
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for n in &s.notes {
        println!("note: {n}");
    }
}
