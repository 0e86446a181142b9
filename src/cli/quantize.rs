//! `qrange quantize` (and the preparation it shares with `calibrate`): calibrate,
//! plan, insert Q/DQ, write, validate, summarise.

use super::run::{
    check_preprocess_used, input_specs, load_data, parse_pins, parse_preprocess, parse_shapes,
    sample_shapes,
};
use super::Outcome;
use crate::calib::collect::{collect_model, CollectError, Keep};
use crate::calib::{
    compute_ranges, CalibrationFile, Method, MethodOptions, QuantTarget, TensorStats,
};
use crate::data::{self, Dataset, Sample, SampleSource};
use crate::exec::{Session, SessionOptions};
use crate::ir::{DType, Model, Tensor};
use crate::onnx::{self, ExternalPolicy};
use crate::passes::{self, Pass, PassCx};
use crate::quant::params::QType;
use crate::quant::plan::{self, Decision, OpState, Plan, QuantConfig};
use crate::quant::rules::Target;
use crate::report::compare::{compare, CompareError};
use crate::tune::search::{self, Evaluator, Goal, SensitivityFile};
use crate::tune::sim::{SimModel, SimSources, UnitParams};
use crate::tune::{self, Overrides, Precision, Unit};
use anyhow::{anyhow, bail};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod adaptive;
mod report;

/// How weight ranges are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightMethod {
    /// The min/max of each channel.
    #[value(name = "minmax")]
    MinMax,
    /// The range of least squared quantization error of each channel.
    Mse,
}

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
    /// Calibration data: .npz/.npy (axis 0 = sample), an ONNX test_data_set folder, a folder
    /// of images (with --preprocess), or `random:N` for a smoke test (ranges are then
    /// meaningless).
    #[arg(long, value_name = "DATA")]
    pub calib: Option<String>,
    /// How image files become the model input, e.g. `resize=192x48,scale=255,mean=0.5,std=0.5`.
    #[arg(long, value_name = "SPEC", long_help = super::PREPROCESS_HELP)]
    pub preprocess: Option<String>,
    /// Runtime the model is for: sets placement style and defaults.
    #[arg(long, value_enum, default_value = "ort-cpu")]
    pub target: Target,
    /// Activation type (default: u8 asymmetric; i8 symmetric for tensorrt).
    #[arg(long, value_enum)]
    pub activation_type: Option<ActType>,
    /// One scale per tensor for weights instead of one per output channel.
    #[arg(long)]
    pub per_tensor: bool,
    /// How weight ranges are chosen (per channel): the min/max of the values, or the
    /// range of least squared quantization error (clips outlier weights).
    #[arg(long, value_enum, default_value = "minmax")]
    pub weight_method: WeightMethod,
    /// Use all 8 bits of int8 weights. By default ort-cpu weights use 7 bits, so that
    /// u8 x s8 kernels on x86 CPUs without VNNI cannot saturate (depthwise Conv weights
    /// keep 8: those kernels widen both operands first).
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
    /// Memory budget, in MiB, for the intermediate values the per-layer comparison of
    /// `--report` taps per engine run (calibration streams its values and needs none).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub memory_budget: u64,
    /// Calibration threads, each running one sample at a time (memory grows by about one
    /// inference per thread). 0: one per CPU core, at most 4. The statistics, and so the
    /// written model, do not depend on it.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
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
    qrange quantize fixtures/ppocr_cls/model.onnx --calib fixtures/ppocr_cls/images \\\n      \
        --preprocess resize=192x48,scale=255,mean=0.5,std=0.5 -o cls.int8.onnx\n  \
    qrange calibrate model.onnx --calib shard1.npz -o s1.json   # on several machines\n  \
    qrange merge s1.json s2.json -o all.json\n  \
    qrange quantize model.onnx --ranges all.json -o out.onnx --no-validate")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output model.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Range method for activations. `adaptive` runs every method's ranges in simulation
    /// on a few calibration samples and keeps the set whose outputs are closest to the
    /// float model's; `auto` picks per tensor by the lowest expected quantization error.
    #[arg(long, value_enum, default_value = "adaptive")]
    pub method: Method,
    /// Calibration samples `--method adaptive` compares the range sets on (evenly spaced, at
    /// most half of the calibration set; fewer, down to one, when the tensors to calibrate
    /// hold more than 2^25 values per sample, so the comparison costs at most about four
    /// calibration passes of 2^25 values). The compared ranges come from the other samples,
    /// so the comparison sees clipping as new data meets it; the written ranges come from
    /// all. Calibration keeps the float model's outputs for these samples (held in memory).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub select_samples: usize,
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
    /// Mixed precision: promote the most sensitive activations to 16 bits (float as a last
    /// resort) until the worst output's SQNR on the evaluation data reaches DB.
    #[arg(long, value_name = "DB", conflicts_with = "max_drop")]
    pub target_sqnr: Option<f64>,
    /// Mixed precision: promote until task accuracy (with --labels; else top-1 agreement)
    /// drops at most PCT points.
    #[arg(long, value_name = "PCT")]
    pub max_drop: Option<f64>,
    /// The written model must fit in MB megabytes (exit 1 when it cannot).
    #[arg(long, value_name = "MB")]
    pub size_budget: Option<f64>,
    /// Precision per node or tensor from a file (written by a mixed-precision run, or by
    /// hand: {"format": "qrange-overrides/1", "nodes": {"conv1": "a16"},
    /// "tensors": {"x": "float"}}; precisions a8, a16, float).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target_sqnr", "max_drop"])]
    pub overrides: Option<PathBuf>,
    /// Where a mixed-precision run writes its overrides (default: next to the output,
    /// `<output>.overrides.json`).
    #[arg(long, value_name = "FILE")]
    pub save_overrides: Option<PathBuf>,
    /// Samples the sensitivity analysis and search run on (evenly spaced over the
    /// evaluation data, else the calibration data).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub sensitivity_samples: usize,
    /// Sensitivity cache (default: `<output>.sensitivity.json`); a rerun with the same
    /// model, ranges and samples reuses it.
    #[arg(long, value_name = "FILE")]
    pub sensitivity_cache: Option<PathBuf>,
    /// Also write a self-contained HTML report: each calibrated tensor's histogram with
    /// the range every method proposes and the one chosen, sizes, accuracy, precision.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

/// Calibrated values per sample that `--method adaptive` compares its sets on at most (about).
const SELECT_VALUES: u64 = 1 << 25;

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
        weight_mse: a.weight_method == WeightMethod::Mse,
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
    let pre = parse_preprocess(a.preprocess.as_deref())?;
    load_data("--calib", Path::new(spec), &specs, pre.as_ref())
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
    Ok(Dataset::from_samples("random", samples))
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
///
/// `wide`: 16-bit activations may be used (mixed precision), so the opset is raised to 21.
pub(crate) fn prepare(
    a: &CommonArgs,
    mut m: Model,
    first_sample: Option<&Sample>,
    wide: bool,
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
        notes.push(
            "If nodes remain after specialisation: each branch is calibrated on the samples that take it"
                .to_string(),
        );
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
    let sixteen = wide || matches!(cfg.activation.dtype, DType::U16 | DType::I16);
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

/// Calibration threads for `--threads N` (0: one per core, at most 4).
pub(crate) fn worker_threads(requested: usize) -> usize {
    match requested {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        n => n,
    }
}

/// Runs calibration over `samples` (read one at a time) and returns the statistics file,
/// with the prepared model's outputs for the samples of `keep` (whose callback gets the
/// statistics of the other samples).
pub(crate) fn calibrate<S: SampleSource + ?Sized>(
    p: &Prepared,
    samples: &S,
    threads: usize,
    show_progress: bool,
    keep: Keep,
) -> anyhow::Result<(CalibrationFile, BTreeMap<usize, Sample>)> {
    let values = p.plan.calibration_values();
    let bar = super::progress(0, "calibrating");
    if !show_progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let collected = collect_model(
        &p.model,
        Some(&p.base_dir),
        samples,
        &values,
        worker_threads(threads),
        keep,
        |d, n| {
            bar.set_length(n);
            bar.set_position(d)
        },
    )
    .map_err(|e| match e {
        // A sample that cannot be read (NaN in streamed data…) is the data's error, one line.
        CollectError::Data(e) => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context("calibration"),
    })?;
    bar.finish_and_clear();
    let mut file = CalibrationFile::new(p.sha256.clone());
    file.samples = samples.count() as u64;
    file.tensors = collected.stats;
    Ok((file, collected.outputs))
}

/// Fills the plan's ranges from statistics; returns the method chosen per value.
pub(crate) fn choose_ranges(
    plan: &mut Plan,
    stats: &BTreeMap<String, TensorStats>,
    method: Method,
    opts: &MethodOptions,
) -> anyhow::Result<BTreeMap<String, Method>> {
    let mut chosen = BTreeMap::new();
    let (jobs, missing) = calibration_jobs(plan, stats);
    let refs: Vec<(&str, &TensorStats, QuantTarget)> =
        jobs.iter().map(|(v, s, t)| (v.as_str(), *s, *t)).collect();
    let results = compute_ranges(&refs, method, opts);
    for ((v, _, _), r) in jobs.iter().zip(results) {
        let r = r?;
        plan.ranges.insert(v.clone(), (r.lo, r.hi));
        chosen.insert(v.clone(), r.method);
    }
    if let Some(e) = missing {
        return Err(e);
    }
    Ok(chosen)
}

/// The values `plan` calibrates, in name order, each with its statistics and grid; stops at
/// the first value without statistics and returns that error beside the jobs before it (a
/// range error of an earlier value is then reported first).
pub(crate) fn calibration_jobs<'a>(
    plan: &Plan,
    stats: &'a BTreeMap<String, TensorStats>,
) -> (
    Vec<(String, &'a TensorStats, QuantTarget)>,
    Option<anyhow::Error>,
) {
    let mut jobs = Vec::new();
    for v in plan.calibration_values() {
        let qtype = plan
            .values
            .iter()
            .find_map(|(n, d)| match d {
                Decision::Activation {
                    qtype, range_from, ..
                } if *n == v || range_from.as_deref() == Some(v.as_str()) => Some(*qtype),
                _ => None,
            })
            .expect("calibration value comes from a decision");
        match stats.get(&v) {
            Some(s) => jobs.push((v, s, QuantTarget::of(&qtype))),
            None => {
                let e = anyhow!(
                    "no statistics for value '{v}' (ranges file for another model or options?)"
                );
                return (jobs, Some(e));
            }
        }
    }
    (jobs, None)
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
    /// What the target runtime fuses in the written model (`qrange lint`).
    fusion: Option<crate::lint::Coverage>,
    methods: BTreeMap<String, usize>,
    /// What `--method adaptive` compared and chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    selection: Option<adaptive::Selection>,
    size_before: u64,
    size_after: u64,
    calibration_samples: usize,
    eval_samples: usize,
    validation: BTreeMap<String, crate::report::Metrics>,
    /// Mixed precision (with --target-sqnr / --max-drop).
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<PrecisionSummary>,
    /// Share of weight parameters stored in 8 bits.
    weight_8bit_share: f64,
    /// Share of weight parameters stored in 4 bits.
    weight_4bit_share: f64,
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

/// `", N depthwise Conv weights on [-127, 127]"` when the weights are 7-bit and some are
/// not (depthwise kernels cannot saturate, see `quant::plan`), else nothing.
fn full_grid_weights(plan: &Plan, weight: &QType) -> String {
    let n = plan
        .values
        .values()
        .filter(|d| matches!(d, Decision::Weight { qtype, .. } if qtype.dtype == weight.dtype && qtype.qmax > weight.qmax))
        .count();
    if n == 0 {
        String::new()
    } else {
        format!(", {n} depthwise Conv weights on [-127, 127]")
    }
}

fn file_size(m: &Model) -> u64 {
    onnx::model_to_bytes(m).map(|b| b.len() as u64).unwrap_or(0)
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let c = &a.common;
    super::check_not_input(&c.model, &a.output)?;
    if let Some(r) = &a.report {
        super::check_not_input(&c.model, r)?;
        if r == &a.output {
            bail!("--report and --output name the same file '{}'", r.display());
        }
    }
    if !(a.percentile > 0.0 && a.percentile <= 100.0) {
        bail!("--percentile {} is outside (0, 100]", a.percentile);
    }
    let mut times: BTreeMap<String, f64> = BTreeMap::new();
    let mut warnings: Vec<String> = Vec::new();
    let t = Instant::now();
    let model = onnx::read_model(&c.model)?;
    let pins = parse_pins(&model, &c.pin)?;
    check_preprocess_used(
        c.preprocess.as_deref(),
        &[
            ("--calib", c.calib.as_deref().map(Path::new)),
            ("--eval", a.eval.as_deref()),
        ],
    )?;
    let (mut calib, ranges_file) = match &a.ranges {
        Some(f) => (None, Some(CalibrationFile::read(f)?)),
        None => (Some(load_calib(c, &model, &pins)?), None),
    };
    let mut eval: Option<Dataset> = match &a.eval {
        Some(p) => Some(load_data(
            "--eval",
            p,
            &input_specs(&model, &pins),
            parse_preprocess(c.preprocess.as_deref())?.as_ref(),
        )?),
        None => None,
    };
    if eval.is_none() && !a.no_validate {
        match calib.as_mut() {
            Some(ds) if ds.len() >= 2 => {
                // The last fifth is held back: both parts stay views of the same file.
                let k = (ds.len() / 5).max(1);
                let mut held = ds.split_off(ds.len() - k);
                held.skipped.clear();
                if ds.len() < 8 {
                    warnings.push(format!(
                        "holding back {k} of {} calibration samples for validation leaves only {} to calibrate on; give --eval DATA",
                        ds.len() + k,
                        ds.len()
                    ));
                }
                eval = Some(held);
            }
            Some(_) => bail!("validation needs evaluation data: one calibration sample cannot be split; give --eval DATA or --no-validate"),
            None => bail!("validation needs evaluation data with --ranges: give --eval DATA or --no-validate"),
        }
    }
    // Only the first sample is read here (shapes); the others are read as they are used.
    let first = match calib.as_ref().or(eval.as_ref()) {
        Some(d) => Some(d.first()?),
        None => None,
    };
    times.insert("load".into(), t.elapsed().as_secs_f64());

    // Everything the validation needs is checked before anything is written.
    let labels = match (&a.labels, &eval) {
        (Some(k), Some(ev)) if !a.no_validate => Some(ev.labels(k)?),
        _ => None,
    };
    let overrides = match &a.overrides {
        Some(f) => Some(Overrides::read(f)?),
        None => None,
    };
    let goal = match (a.target_sqnr, a.max_drop) {
        (Some(db), _) => Some(Goal::Sqnr { db }),
        (None, Some(points)) => {
            if !(0.0..=100.0).contains(&points) {
                bail!("--max-drop {points} is outside [0, 100]");
            }
            Some(Goal::MaxDrop { points })
        }
        _ => None,
    };
    if goal.is_some() && a.no_validate {
        bail!("--target-sqnr/--max-drop need validation data: drop --no-validate");
    }
    if let Some(mb) = a.size_budget {
        if mb.is_nan() || mb <= 0.0 {
            bail!("--size-budget {mb} must be a positive number of megabytes");
        }
    }
    if a.select_samples == 0 && a.method == Method::Adaptive {
        bail!("--select-samples must be at least 1 with --method adaptive");
    }
    if a.sensitivity_samples == 0 {
        bail!("--sensitivity-samples must be at least 1");
    }
    if let Some(dir) = a.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!("{}: the output folder does not exist", a.output.display());
        }
    }
    let mut common = c.clone();
    if let Some(o) = &overrides {
        common.exclude_nodes.extend(o.float_nodes());
    }
    let wide = goal.is_some()
        || a.size_budget.is_some()
        || overrides.as_ref().is_some_and(|o| !o.w4().is_empty())
        || overrides.as_ref().is_some_and(|o| {
            o.nodes
                .values()
                .chain(o.tensors.values())
                .any(|p| *p == Precision::A16)
        });

    let t = Instant::now();
    let mut p = prepare(&common, model, first.as_ref(), wide)?;
    if let (Some(o), Some(f)) = (&overrides, &a.overrides) {
        // Names may refer to the model as given or as prepared (BatchNormalization folded…).
        o.check_names(&p.float)
            .or_else(|_| o.check_names(&p.model))
            .map_err(|e| anyhow!("{}: {e}", f.display()))?;
    }
    times.insert("prepare".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    // The samples `--method adaptive` may compare its sets on (evenly spread); their float
    // outputs are kept while calibrating, so the comparison needs no float run of its own.
    let n_calib = calib.as_ref().map_or(0, |d| d.len());
    // At most half of them, so that the compared ranges come from as many other samples.
    let k_max = a
        .select_samples
        .min(if n_calib >= 2 { n_calib / 2 } else { n_calib });
    let candidates: Vec<usize> = (0..k_max).map(|i| i * n_calib / k_max).collect();
    let keep: BTreeSet<usize> = if a.method == Method::Adaptive {
        candidates.iter().copied().collect()
    } else {
        BTreeSet::new()
    };
    let opts = MethodOptions {
        percentile: a.percentile,
        ..MethodOptions::default()
    };
    let mut kept = BTreeMap::new();
    // `--method adaptive`'s range sets from the samples it does not compare, computed while
    // calibrating, before their statistics are merged with the compared samples'.
    let mut held_out: Option<adaptive::RangeSets> = None;
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
        (None, Some(ds)) => {
            let plan = &p.plan;
            let mut held = |others: &BTreeMap<String, TensorStats>| {
                held_out = adaptive::range_sets(plan, others, &opts).ok();
            };
            let keep = Keep {
                samples: &keep,
                others: &mut held,
            };
            let (file, outputs) = calibrate(&p, ds, c.threads, !c.json, keep)?;
            kept = outputs;
            file
        }
        (None, None) => unreachable!("calibration data or ranges"),
    };
    // Subgraphs no sample reached, and values calibration did not observe, have no
    // statistics: the ops needing them stay float.
    p.plan = plan::fit_to_statistics(&p.model, &p.cfg, p.plan, |v| stats.tensors.contains_key(v))
        .map_err(|e| anyhow!("internal error: {e}"))?;
    let base_plan = p.plan.clone();
    times.insert("calibrate".into(), t.elapsed().as_secs_f64());
    // The range set is chosen on the all-8-bit plan, before any override, so that a run
    // replaying its overrides file chooses the same.
    let t = Instant::now();
    let (mut chosen, selection, method) = if a.method == Method::Adaptive {
        // Each compared set costs about one calibration pass per sample: large models
        // compare on fewer samples (at least one), evenly spread over the candidates.
        let per_sample =
            stats.tensors.values().map(|s| s.count()).sum::<u64>() / stats.samples.max(1);
        let cap = (SELECT_VALUES / per_sample.max(1)).max(1) as usize;
        let k = k_max.min(cap);
        let mut picks: Vec<Sample> = Vec::with_capacity(k);
        let mut references: Vec<Sample> = Vec::with_capacity(k);
        if let Some(d) = &calib {
            for j in 0..k {
                let i = candidates[j * k_max / k];
                picks.push(d.get(i)?);
                if let Some(out) = kept.remove(&i) {
                    references.push(out);
                }
            }
        }
        let mut plan = p.plan.clone();
        let (chosen, sel) = adaptive::select(
            &p,
            &mut plan,
            adaptive::Statistics {
                all: &stats.tensors,
                held_out,
            },
            &opts,
            &picks,
            references,
            c.json,
        )?;
        p.plan = plan;
        let m = sel.chosen;
        (chosen, Some(sel), m)
    } else {
        (BTreeMap::new(), None, a.method)
    };
    times.insert("ranges".into(), t.elapsed().as_secs_f64());
    if let (Some(o), Some(f)) = (&overrides, &a.overrides) {
        let units = tune::units(&p.plan, &p.model);
        let prec = o
            .unit_precisions(&p.model, &units)
            .map_err(|e| anyhow!("{}: {e}", f.display()))?;
        tune::apply(
            &mut p.plan,
            &p.model,
            &units,
            &prec,
            "activations left float by --overrides",
        );
        let missing = tune::apply_w4(&mut p.plan, &o.w4());
        if !missing.is_empty() {
            bail!(
                "{}: overrides name weights that are not quantized weights: {}",
                f.display(),
                missing
                    .iter()
                    .map(|w| format!("'{w}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if overrides.is_some() || selection.is_none() {
        // Without overrides, the selection has already written `method`'s ranges.
        chosen = choose_ranges(&mut p.plan, &stats.tensors, method, &opts)?;
    }

    let mut tuned: Option<Tuned> = None;
    let budget = a.size_budget.map(|mb| (mb * 1e6) as u64);
    let base_size = match budget {
        Some(_) => {
            let mut q = p.model.clone();
            passes::insert_qdq::materialize(&mut q, &p.plan)
                .map_err(|e| anyhow!("{}: {e}", c.model.display()))?;
            file_size(&q)
        }
        None => 0,
    };
    let narrow = budget.is_some_and(|b| base_size > b);
    if goal.is_some() || narrow {
        let t = Instant::now();
        let search_data = eval
            .as_ref()
            .map(|e| (e, labels.clone()))
            .or_else(|| calib.as_ref().map(|d| (d, None)))
            .ok_or_else(|| anyhow!("mixed precision needs data to search on"))?;
        let tu = tune_precision(
            &a,
            method,
            &p,
            &stats,
            &opts,
            goal,
            budget.map(|b| (b, base_size)),
            search_data.0,
            search_data.1,
        )?;
        times.insert("sensitivity".into(), t.elapsed().as_secs_f64());
        if let (false, Some(goal)) = (tu.choice.met, goal) {
            for w in &warnings {
                warn(w);
            }
            eprintln!(
                "error: {}: unreachable on {} search samples; the best reachable is {} (every activation 16-bit, or float, with 8-bit weights)",
                goal_text(&goal),
                tu.samples,
                goal.describe(tu.choice.best),
            );
            return Ok(Outcome::GateFailed);
        }
        tuned = Some(tu);
    }

    let float_session = if a.no_validate {
        None
    } else {
        let ev = eval.as_ref().expect("eval data prepared above");
        let (fp, _) = onnx::encode_model(&p.float, &ExternalPolicy::Inline, "")?;
        Some(
            Session::new(
                &fp,
                Some(&p.base_dir),
                &ev.first()?,
                &SessionOptions::default(),
            )
            .map_err(|e| anyhow!("{}: float model: {e}", c.model.display()))?,
        )
    };
    // Materialise and validate; with a goal, promote further while validation misses it.
    let mut round = 0usize;
    let (q, rep, validation, exec_notes) = loop {
        if let Some(tu) = &mut tuned {
            p.plan = base_plan.clone();
            let prec = tu.precisions();
            tune::apply(
                &mut p.plan,
                &p.model,
                &tu.units,
                &prec,
                "activations kept float by mixed precision",
            );
            tune::apply_w4(&mut p.plan, &tu.w4);
            chosen = choose_ranges(&mut p.plan, &stats.tensors, method, &opts)?;
        }
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
        *times.entry("quantize".into()).or_default() += t.elapsed().as_secs_f64();
        if let Some(b) = budget {
            let size = file_size(&q);
            if size > b {
                if let Some(tu) = tuned.as_mut().filter(|tu| !tu.w_order.is_empty()) {
                    if tu.narrow_more(4) {
                        continue;
                    }
                }
                for w in &warnings {
                    warn(w);
                }
                eprintln!(
                    "error: --size-budget {} MB: unreachable; the smallest model qrange writes here is {:.3} MB ({})",
                    a.size_budget.unwrap_or(0.0),
                    size as f64 / 1e6,
                    if narrow {
                        "every weight of 16 or more elements on 4 bits"
                    } else {
                        "8-bit weights"
                    }
                );
                return Ok(Outcome::GateFailed);
            }
        }

        let Some(fs) = &float_session else {
            break (q, rep, BTreeMap::new(), Vec::new());
        };
        let t = Instant::now();
        let ev = eval.as_ref().expect("eval data prepared above");
        let (qp, _) = onnx::encode_model(&q, &ExternalPolicy::Inline, "")?;
        let qs = Session::new(
            &qp,
            Some(&p.base_dir),
            &ev.first()?,
            &SessionOptions::default(),
        )
        .map_err(|e| anyhow!("{}: quantized model: {e}", a.output.display()))?;
        let bar = super::progress(ev.len() as u64, "validating");
        if c.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let cmp = compare(fs, &qs, ev, labels.as_deref(), || bar.inc(1)).map_err(|e| match e {
            CompareError::Data(e) => anyhow::Error::new(e),
            CompareError::Exec(e) => anyhow!("validation: {e}"),
        })?;
        bar.finish_and_clear();
        *times.entry("validate".into()).or_default() += t.elapsed().as_secs_f64();
        let (Some(goal), Some(tu)) = (goal, tuned.as_mut()) else {
            break (q, rep, cmp.outputs, qs.notes());
        };
        let figure = goal.figure(&cmp.outputs);
        tu.validated = Some(figure);
        if goal.meets(figure) {
            break (q, rep, cmp.outputs, qs.notes());
        }
        round += 1;
        if round > 4 || !tu.promote_more(1 << (round - 1)) {
            for w in &warnings {
                warn(w);
            }
            eprintln!(
                "error: {}: the search met it on {} samples, but the full evaluation set gives {} after {} extra promotion rounds; raise --sensitivity-samples",
                goal_text(&goal),
                tu.samples,
                goal.describe(figure),
                round - 1
            );
            return Ok(Outcome::GateFailed);
        }
        tu.rounds = round;
    };
    for (name, n) in &rep.bias_saturated {
        warnings.push(format!("bias '{name}': {n} values saturated int32"));
    }
    let size_after = file_size(&q);
    let t = Instant::now();
    onnx::write_model(&q, &a.output, &ExternalPolicy::Keep)?;
    let mut precision = None;
    if let Some(tu) = &tuned {
        let path = a
            .save_overrides
            .clone()
            .unwrap_or_else(|| sidecar(&a.output, "overrides.json"));
        let o = tu.overrides();
        o.write(&path)?;
        precision = Some(tu.summary(&p, goal, a.size_budget, &path));
    } else if let Some(path) = &a.save_overrides {
        bail!(
            "--save-overrides {}: needs --target-sqnr or --max-drop",
            path.display()
        );
    }
    times.insert("write".into(), t.elapsed().as_secs_f64());

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
    let fusion_report = crate::lint::lint(&q, &crate::lint::LintOptions::new(p.cfg.target))
        .ok()
        .filter(|r| r.fusion_model);
    let fusion = fusion_report.as_ref().map(|r| r.coverage());
    let mut methods: BTreeMap<String, usize> = BTreeMap::new();
    for m in chosen.values() {
        *methods.entry(m.name().to_string()).or_default() += 1;
    }
    let mut notes = p.notes.clone();
    notes.extend(exec_notes);
    let (weight_8bit_share, weight_4bit_share) = weight_shares(&p.plan, &p.model);
    let s = Summary {
        input: c.model.display().to_string(),
        output: a.output.display().to_string(),
        target: p.cfg.target,
        activation: qtype_text(&p.cfg.activation, None),
        weight: format!(
            "{}{}{}",
            qtype_text(&p.cfg.weight, Some(p.cfg.per_channel)),
            full_grid_weights(&p.plan, &p.cfg.weight),
            if p.cfg.weight_mse { ", mse ranges" } else { "" }
        ),
        quantized_ops: nq,
        folded_ops: nf,
        float_ops: nfl,
        float_reasons,
        fusion,
        methods,
        selection,
        size_before: file_size(&p.float),
        size_after,
        precision,
        weight_8bit_share,
        weight_4bit_share,
        calibration_samples: stats.samples as usize,
        eval_samples: eval.as_ref().map(|e| e.len()).unwrap_or(0),
        validation,
        seconds: times,
        notes,
    };
    if let Some(path) = &a.report {
        let mut input = report::build(&a, &p, &stats.tensors, &chosen, &opts, &s)?;
        report::add_fusion(&mut input, fusion_report.as_ref());
        if let Some(ev) = &eval {
            report::add_layers(&mut input, &p.float, &q, ev, c.memory_budget, c.json)?;
        }
        report::write(path, &input)?;
    }
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

/// `<output stem>.<suffix>` next to the output model.
fn sidecar(output: &Path, suffix: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    output.with_file_name(format!("{stem}.{suffix}"))
}

fn goal_text(g: &Goal) -> String {
    match g {
        Goal::Sqnr { db } => format!("--target-sqnr {db}"),
        Goal::MaxDrop { points } => format!("--max-drop {points}"),
    }
}

/// Shares of weight parameters stored in 8 and in 4 bits: weight decisions over every
/// float constant of 16 or more elements in the prepared model (biases, stored as int32,
/// aside).
fn weight_shares(plan: &Plan, m: &Model) -> (f64, f64) {
    let g = &m.graph;
    let (mut eight, mut four, mut all) = (0u64, 0u64, 0u64);
    for v in g.values() {
        let Some(t) = g.const_of(v) else { continue };
        let n = t.numel() as u64;
        if t.dtype != DType::F32 || n < 16 {
            continue;
        }
        match plan.values.get(&g.value(v).name) {
            Some(Decision::Bias { .. }) => continue,
            Some(Decision::Weight { qtype, .. })
                if matches!(qtype.dtype, DType::I8 | DType::U8) =>
            {
                eight += n;
            }
            Some(Decision::Weight { qtype, .. })
                if matches!(qtype.dtype, DType::I4 | DType::U4) =>
            {
                four += n;
            }
            _ => {}
        }
        all += n;
    }
    if all == 0 {
        (1.0, 0.0)
    } else {
        (eight as f64 / all as f64, four as f64 / all as f64)
    }
}

/// State of a mixed-precision run.
struct Tuned {
    units: Vec<Unit>,
    sens: SensitivityFile,
    cached: bool,
    choice: search::Choice,
    samples: usize,
    /// Goal figure of the written model on the evaluation data.
    validated: Option<f64>,
    /// Extra promotion rounds validation needed.
    rounds: usize,
    /// Weights stored on 4 bits.
    w4: BTreeSet<String>,
    /// 4-bit candidates, least harmful first: (weight, SQNR with only it on 4 bits,
    /// elements).
    w_order: Vec<(String, f64, u64)>,
}

impl Tuned {
    fn precisions(&self) -> BTreeMap<String, Precision> {
        self.units
            .iter()
            .zip(&self.choice.config)
            .filter(|(_, p)| **p != Precision::A8)
            .map(|(u, p)| (u.root.clone(), *p))
            .collect()
    }

    /// Puts the next `n` weights of the order on 4 bits; false when none is left.
    fn narrow_more(&mut self, n: usize) -> bool {
        let before = self.w4.len();
        for (w, _, _) in &self.w_order {
            if self.w4.len() >= before + n {
                break;
            }
            self.w4.insert(w.clone());
        }
        self.w4.len() > before
    }

    /// Promotes the next `n` units of the order; false when nothing is left.
    fn promote_more(&mut self, n: usize) -> bool {
        let mut done = 0;
        for step in [Precision::A16, Precision::Float] {
            for &u in &self.choice.order {
                if done == n {
                    return true;
                }
                if self.choice.config[u] < step {
                    self.choice.config[u] = step;
                    done += 1;
                }
            }
        }
        done > 0
    }

    fn reason(&self, i: usize) -> String {
        let s = &self.sens.units[i];
        let rank = self.choice.order.iter().position(|&u| u == i).unwrap_or(0) + 1;
        format!(
            "rank {rank} of {}: with only this tensor 8-bit the output SQNR is {:.1} dB; promoting it alone lifts the 8-bit model from {:.1} to {:.1} dB",
            self.units.len(),
            s.alone_db,
            self.sens.baseline_db,
            s.promoted_db
        )
    }

    fn overrides(&self) -> Overrides {
        let mut o = Overrides::new();
        for (w, db, _) in &self.w_order {
            if self.w4.contains(w) {
                o.weights.insert(w.clone(), tune::WeightBits::W4);
                o.reasons.insert(
                    w.clone(),
                    format!("4-bit weight: with only it on 4 bits the output SQNR is {db:.1} dB"),
                );
            }
        }
        for (i, (u, p)) in self.units.iter().zip(&self.choice.config).enumerate() {
            if *p != Precision::A8 {
                o.tensors.insert(u.root.clone(), *p);
                o.reasons.insert(u.root.clone(), self.reason(i));
            }
        }
        o
    }

    fn summary(
        &self,
        p: &Prepared,
        goal: Option<Goal>,
        size_budget_mb: Option<f64>,
        path: &Path,
    ) -> PrecisionSummary {
        let promoted = self
            .units
            .iter()
            .zip(&self.choice.config)
            .enumerate()
            .filter(|(_, (_, p))| **p != Precision::A8)
            .map(|(i, (u, pr))| Promoted {
                tensor: u.root.clone(),
                producer: u.producer.clone(),
                op_type: u.producer_type.clone(),
                precision: pr.name().to_string(),
                alone_db: self.sens.units[i].alone_db,
                promoted_db: self.sens.units[i].promoted_db,
                reason: self.reason(i),
            })
            .collect();
        PrecisionSummary {
            goal,
            size_budget_mb,
            weights_4bit: self
                .w_order
                .iter()
                .filter(|(w, _, _)| self.w4.contains(w))
                .map(|(w, db, n)| (w.clone(), *db, *n))
                .collect(),
            search_samples: self.samples,
            units: self.units.len(),
            baseline: self.choice.baseline,
            searched: self.choice.figure,
            validated: self.validated,
            evaluations: self.choice.evaluations + 2 * self.units.len() + 1,
            sensitivity_cached: self.cached,
            extra_rounds: self.rounds,
            promoted,
            per_node: tune::op_precisions(&p.plan, &p.model),
            overrides_file: path.display().to_string(),
        }
    }
}

#[derive(Serialize)]
struct Promoted {
    tensor: String,
    producer: String,
    op_type: String,
    precision: String,
    alone_db: f64,
    promoted_db: f64,
    reason: String,
}

#[derive(Serialize)]
struct PrecisionSummary {
    goal: Option<Goal>,
    size_budget_mb: Option<f64>,
    /// Weights stored on 4 bits: (name, SQNR with only it on 4 bits, elements).
    weights_4bit: Vec<(String, f64, u64)>,
    search_samples: usize,
    units: usize,
    /// Goal figure with every activation 8-bit, on the search samples.
    baseline: f64,
    /// Goal figure of the chosen precisions on the search samples.
    searched: f64,
    /// Goal figure of the written model on the evaluation data.
    validated: Option<f64>,
    evaluations: usize,
    sensitivity_cached: bool,
    extra_rounds: usize,
    promoted: Vec<Promoted>,
    /// Activation and weight types per quantized node.
    per_node: BTreeMap<String, (String, String)>,
    overrides_file: String,
}

/// The activation units of the plan and the simulation model that switches them.
fn build_sim(
    a: &Args,
    method: Method,
    p: &Prepared,
    stats: &CalibrationFile,
    opts: &MethodOptions,
    narrow: bool,
) -> anyhow::Result<(Vec<Unit>, SimModel)> {
    // 8-bit and 16-bit ranges of every unit.
    let mut plan8 = p.plan.clone();
    choose_ranges(&mut plan8, &stats.tensors, method, opts)?;
    let mut plan16 = p.plan.clone();
    for d in plan16.values.values_mut() {
        if let Decision::Activation { qtype, .. } = d {
            *qtype = tune::wide(qtype);
        }
    }
    choose_ranges(&mut plan16, &stats.tensors, method, opts)?;
    let units = tune::units(&plan8, &p.model);
    let qtype_of = |plan: &Plan, root: &str| match plan.values.get(root) {
        Some(Decision::Activation { qtype, .. }) => *qtype,
        _ => p.cfg.activation,
    };
    let params: Vec<(UnitParams, UnitParams)> = units
        .iter()
        .map(|u| {
            let (l8, h8) = plan8.ranges[&u.range_key];
            let (l16, h16) = plan16.ranges[&u.range_key];
            (
                UnitParams::new(l8, h8, &qtype_of(&plan8, &u.root)),
                UnitParams::new(l16, h16, &qtype_of(&plan16, &u.root)),
            )
        })
        .collect();
    let materialize = |plan: &Plan| -> anyhow::Result<Model> {
        let mut q = p.model.clone();
        passes::insert_qdq::materialize(&mut q, plan)
            .map_err(|e| anyhow!("{}: {e}", a.common.model.display()))?;
        Ok(q)
    };
    let q8 = materialize(&plan8)?;
    let reduced = p.cfg.weight.qmax < 127;
    let (full, weights) = if reduced {
        let mut planf = plan8.clone();
        let wide_w = QType::new(DType::I8, true, false).expect("int8");
        for d in planf.values.values_mut() {
            if let Decision::Weight { qtype, .. } = d {
                *qtype = wide_w;
            }
        }
        (
            materialize(&planf)?,
            tune::weight_units(&plan8, &p.model, &units),
        )
    } else {
        (q8.clone(), Vec::new())
    };
    let biases = tune::bias_units(&plan8, &units);
    // 4-bit candidates: 8-bit weights of 16 elements or more.
    let (q4, narrow_weights) = if narrow {
        let mut plan4 = plan8.clone();
        let g = &p.model.graph;
        let names: Vec<String> = plan8
            .values
            .iter()
            .filter(|(n, d)| {
                matches!(d, Decision::Weight { qtype, .. } if qtype.dtype == DType::I8)
                    && g.value_by_name(n)
                        .and_then(|v| g.const_of(v))
                        .is_some_and(|t| t.numel() >= 16)
            })
            .map(|(n, _)| n.clone())
            .collect();
        tune::apply_w4(&mut plan4, &names.iter().cloned().collect());
        (Some(materialize(&plan4)?), names)
    } else {
        (None, Vec::new())
    };
    let sim = SimModel::build(
        &SimSources {
            prepared: &p.model,
            q: &q8,
            full: &full,
            weights: &weights,
            biases: &biases,
            narrow: q4.as_ref(),
            narrow_weights: &narrow_weights,
            bias_inputs: &[],
        },
        &units,
        params,
    )?;
    Ok((units, sim))
}

/// Sensitivity analysis and search: 4-bit weights until the model fits `budget` (bytes;
/// `base_size` is the all-8-bit size), then activation promotions until `goal` is met.
#[allow(clippy::too_many_arguments)]
fn tune_precision(
    a: &Args,
    method: Method,
    p: &Prepared,
    stats: &CalibrationFile,
    opts: &MethodOptions,
    goal: Option<Goal>,
    budget: Option<(u64, u64)>,
    data: &Dataset,
    labels: Option<Vec<i64>>,
) -> anyhow::Result<Tuned> {
    let narrow = budget.is_some_and(|(b, base)| base > b);
    let (units, sim) = build_sim(a, method, p, stats, opts, narrow)?;
    // Evenly spaced subsample.
    let n = data.len();
    let k = a.sensitivity_samples.min(n);
    let picks: Vec<usize> = (0..k).map(|i| i * n / k).collect();
    let samples = picks
        .iter()
        .map(|&i| data.get(i))
        .collect::<Result<Vec<Sample>, _>>()?;
    let labels = labels.map(|l| picks.iter().map(|&i| l[i]).collect::<Vec<i64>>());
    let (fp, _) = onnx::encode_model(&p.float, &ExternalPolicy::Inline, "")?;
    let reference = Session::new(
        &fp,
        Some(&p.base_dir),
        &samples[0],
        &SessionOptions::default(),
    )
    .map_err(|e| anyhow!("{}: float model: {e}", a.common.model.display()))?;
    let mut ev = Evaluator::new(&sim, Some(&p.base_dir), &reference, samples, labels)?;
    let hide = |bar: &indicatif::ProgressBar| {
        if a.common.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
    };
    // Weights to 4 bits, least harmful first, until the estimate fits.
    let mut w_order: Vec<(String, f64, u64)> = Vec::new();
    let mut w4 = BTreeSet::new();
    if let (true, Some((b, base))) = (narrow, budget) {
        let names = sim.narrow_weights();
        let bar = super::progress(names.len() as u64, "weight sensitivity");
        hide(&bar);
        let db = search::weight_sensitivity(&ev, &names, &|| bar.inc(1))?;
        bar.finish_and_clear();
        let g = &p.model.graph;
        w_order = names
            .into_iter()
            .zip(db)
            .map(|(w, d)| {
                let numel = g
                    .value_by_name(&w)
                    .and_then(|v| g.const_of(v))
                    .map(|t| t.numel() as u64)
                    .unwrap_or(0);
                (w, d, numel)
            })
            .collect();
        w_order.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        let mut size = base;
        for (w, _, numel) in &w_order {
            if size <= b {
                break;
            }
            w4.insert(w.clone());
            size = size.saturating_sub(numel / 2);
        }
        ev.w4 = w4.clone();
    }
    let cache = a
        .sensitivity_cache
        .clone()
        .unwrap_or_else(|| sidecar(&a.output, "sensitivity.json"));
    let (sens, cached, choice) = match goal {
        Some(goal) => {
            let bar = super::progress((2 * units.len() + 1) as u64, "sensitivity");
            hide(&bar);
            let (sens, cached) = search::sensitivity(&ev, &units, Some(&cache), &|| bar.inc(1))?;
            bar.finish_and_clear();
            let bar = super::progress(0, "searching");
            hide(&bar);
            let choice = search::search(&ev, &sens, goal, &|| bar.inc(1))?;
            bar.finish_and_clear();
            (sens, cached, choice)
        }
        None => {
            let all8 = vec![Precision::A8; units.len()];
            let f = Goal::Sqnr { db: 0.0 }.figure(&ev.eval(&all8)?);
            let choice = search::Choice {
                config: all8,
                figure: f,
                baseline: f,
                best: f,
                met: true,
                order: (0..units.len()).collect(),
                evaluations: 1,
            };
            (SensitivityFile::default(), false, choice)
        }
    };
    Ok(Tuned {
        samples: ev.samples(),
        units,
        sens,
        cached,
        choice,
        validated: None,
        rounds: 0,
        w4,
        w_order,
    })
}

fn print_precision(s: &PrecisionSummary) {
    if let Some(mb) = s.size_budget_mb {
        let n: u64 = s.weights_4bit.iter().map(|w| w.2).sum();
        println!(
            "weights    --size-budget {mb} MB: {} weights ({n} parameters) on 4 bits, least harmful first",
            s.weights_4bit.len()
        );
        for (w, db, _) in s.weights_4bit.iter().take(8) {
            println!("  w4 {w}: alone on 4 bits {db:.1} dB");
        }
        if s.weights_4bit.len() > 8 {
            println!(
                "  (+{} more in the overrides file)",
                s.weights_4bit.len() - 8
            );
        }
    }
    if let Some(goal) = &s.goal {
        let a16 = s.promoted.iter().filter(|p| p.precision == "a16").count();
        let fl = s.promoted.len() - a16;
        println!(
            "precision  {}: {} -> {} on {} search samples ({} configurations{}); {a16} of {} activation units promoted to 16 bits, {fl} left float",
            goal_text(goal),
            goal.describe(s.baseline),
            goal.describe(s.searched),
            s.search_samples,
            s.evaluations,
            if s.sensitivity_cached { ", sensitivity from cache" } else { "" },
            s.units,
        );
        if let Some(v) = s.validated {
            println!(
                "           written model on the evaluation data: {}{}",
                goal.describe(v),
                if s.extra_rounds > 0 {
                    format!(" (after {} extra promotion rounds)", s.extra_rounds)
                } else {
                    String::new()
                }
            );
        }
        for p in &s.promoted {
            println!(
                "  {} {} ({} {}): alone {:.1} dB, promoted alone {:.1} dB",
                p.precision, p.tensor, p.op_type, p.producer, p.alone_db, p.promoted_db
            );
        }
    }
    println!("overrides  {} (reuse with --overrides)", s.overrides_file);
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
    if let Some(f) = &s.fusion {
        println!("{}", f.line);
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
    if let Some(sel) = &s.selection {
        println!("           {}", sel.line());
    }
    println!(
        "size       {:.1} KB -> {:.1} KB; weight parameters: {:.1}% in 8 bits{}",
        s.size_before as f64 / 1024.0,
        s.size_after as f64 / 1024.0,
        s.weight_8bit_share * 100.0,
        if s.weight_4bit_share > 0.0 {
            format!(", {:.1}% in 4 bits", s.weight_4bit_share * 100.0)
        } else {
            String::new()
        }
    );
    if let Some(pr) = &s.precision {
        print_precision(pr);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::metrics::Comparison;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    fn fixture(rel: &str) -> String {
        format!("{}/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
    }

    /// A fixture model prepared (with `wide` grids) and calibrated on its data.
    fn calibrated(
        model: &str,
        data: &str,
        wide: bool,
    ) -> (Args, Prepared, Dataset, CalibrationFile) {
        let a = T::parse_from([
            "t",
            &fixture(model),
            "--calib",
            &fixture(data),
            "-o",
            "unused.onnx",
        ])
        .a;
        let c = &a.common;
        let m = onnx::read_model(&c.model).unwrap();
        let pins = parse_pins(&m, &c.pin).unwrap();
        let ds = load_calib(c, &m, &pins).unwrap();
        let p = prepare(c, m, Some(&ds.first().unwrap()), wide).unwrap();
        let keep = Keep {
            samples: &BTreeSet::new(),
            others: &mut |_| {},
        };
        let (stats, _) = calibrate(&p, &ds, 2, false, keep).unwrap();
        (a, p, ds, stats)
    }

    /// `worst` lowered to the SQNR of any output of `test` against the same in `reference`.
    fn lower_to_worst(
        worst: &mut f64,
        reference: &BTreeMap<String, Tensor>,
        test: &BTreeMap<String, Tensor>,
    ) {
        for (name, rv) in reference {
            let (a, b) = (
                crate::report::metrics::as_f32(rv).unwrap(),
                crate::report::metrics::as_f32(&test[name]).unwrap(),
            );
            let mut cmp = Comparison::default();
            cmp.add(&a, &b, false, None);
            *worst = worst.min(cmp.metrics().sqnr_db);
        }
    }

    /// Worst SQNR between the simulation under `config` and the materialised plan.
    fn sim_vs_real(model: &str, data: &str, config_of: impl Fn(&Unit) -> Precision) -> f64 {
        sim_vs_real_w(model, data, config_of, false)
    }

    /// As `sim_vs_real`, with every 4-bit candidate weight on 4 bits when `w4_all`.
    fn sim_vs_real_w(
        model: &str,
        data: &str,
        config_of: impl Fn(&Unit) -> Precision,
        w4_all: bool,
    ) -> f64 {
        let (a, mut p, ds, stats) = calibrated(model, data, true);
        let opts = MethodOptions::default();
        let (units, sim) = build_sim(&a, Method::Auto, &p, &stats, &opts, w4_all).unwrap();
        let w4: BTreeSet<String> = sim.narrow_weights().into_iter().collect();
        assert_eq!(w4.is_empty(), !w4_all);
        let config: Vec<Precision> = units.iter().map(&config_of).collect();
        let prec: BTreeMap<String, Precision> = units
            .iter()
            .zip(&config)
            .map(|(u, p)| (u.root.clone(), *p))
            .collect();
        tune::apply(&mut p.plan, &p.model, &units, &prec, "test");
        tune::apply_w4(&mut p.plan, &w4);
        choose_ranges(&mut p.plan, &stats.tensors, Method::Auto, &opts).unwrap();
        let mut q = p.model.clone();
        passes::insert_qdq::materialize(&mut q, &p.plan).unwrap();
        let (qp, _) = onnx::encode_model(&q, &ExternalPolicy::Inline, "").unwrap();
        let (sp, _) = onnx::encode_model(&sim.model, &ExternalPolicy::Inline, "").unwrap();
        let s0 = &ds.get(0).unwrap();
        let real = Session::new(&qp, None, s0, &SessionOptions::default()).unwrap();
        let simu = Session::new(
            &sp,
            None,
            &sim.feed(s0, &config, &w4),
            &SessionOptions::default(),
        )
        .unwrap();
        let mut worst = f64::INFINITY;
        for s in &ds.read_all().unwrap() {
            let r = real.run(s).unwrap();
            let t = simu.run(&sim.feed(s, &config, &w4)).unwrap();
            lower_to_worst(&mut worst, &r, &t);
        }
        worst
    }

    /// Worst SQNR, over `model`'s samples, between each adaptive range set written as a
    /// model and the same set fed to the selection's simulation; and how many sets differ.
    fn adaptive_sets_vs_real(model: &str, data: &str) -> (f64, usize) {
        let (_, p, ds, stats) = calibrated(model, data, false);
        let sets =
            adaptive::range_sets(&p.plan, &stats.tensors, &MethodOptions::default()).unwrap();
        let mut base = p.plan.clone();
        adaptive::apply_set(&mut base, &sets[0]);
        let (units, sim) = adaptive::simulation(&p, &base).unwrap();
        let (sp, _) = onnx::encode_model(&sim.model, &ExternalPolicy::Inline, "").unwrap();
        let all = ds.read_all().unwrap();
        let samples = &all[..all.len().min(3)];
        let params0 = adaptive::range_params(&p, &base, &units, &sim, &sets[0]).unwrap();
        let simu = Session::new(
            &sp,
            None,
            &sim.feed_params(&samples[0], &params0),
            &SessionOptions::default(),
        )
        .unwrap();
        let mut worst = f64::INFINITY;
        let mut distinct: Vec<Vec<(f32, f32)>> = Vec::new();
        for set in &sets {
            let ranges: Vec<(f32, f32)> = set.values().map(|r| (r.lo, r.hi)).collect();
            if !distinct.contains(&ranges) {
                distinct.push(ranges);
            }
            let mut plan = p.plan.clone();
            adaptive::apply_set(&mut plan, set);
            let mut q = p.model.clone();
            passes::insert_qdq::materialize(&mut q, &plan).unwrap();
            let (qp, _) = onnx::encode_model(&q, &ExternalPolicy::Inline, "").unwrap();
            let real = Session::new(&qp, None, &samples[0], &SessionOptions::default()).unwrap();
            let params = adaptive::range_params(&p, &base, &units, &sim, set).unwrap();
            for s in samples {
                let r = real.run(s).unwrap();
                let t = simu.run(&sim.feed_params(s, &params)).unwrap();
                lower_to_worst(&mut worst, &r, &t);
            }
        }
        (worst, distinct.len())
    }

    #[test]
    fn adaptive_simulation_runs_each_range_set_as_written() {
        // Unit parameters and int32 biases fed for a set give exactly its written model.
        for (model, data) in [
            ("tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz"),
            ("ppocr_cls/model.onnx", "ppocr_cls/calib.npz"),
        ] {
            let (db, distinct) = adaptive_sets_vs_real(model, data);
            assert!(
                distinct >= 3,
                "{model}: only {distinct} distinct range sets"
            );
            assert!(
                db.is_infinite(),
                "{model}: simulation differs from a written set: {db} dB"
            );
        }
    }

    #[test]
    fn simulation_is_exact_for_eight_bits() {
        let db = sim_vs_real("tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz", |_| Precision::A8);
        assert!(
            db.is_infinite(),
            "simulation differs from the 8-bit model: {db} dB"
        );
    }

    #[test]
    fn simulation_with_four_bit_weights() {
        let db = sim_vs_real_w(
            "tiny/tiny_cnn.onnx",
            "tiny/tiny_cnn.npz",
            |_| Precision::A8,
            true,
        );
        assert!(
            db.is_infinite(),
            "simulation differs from the 4-bit model: {db} dB"
        );
    }

    #[test]
    fn simulation_follows_mixed_precision() {
        // Units in turn 8-bit, 16-bit and float.
        let n = std::cell::Cell::new(0usize);
        let db = sim_vs_real("tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz", |_| {
            n.set(n.get() + 1);
            match n.get() % 3 {
                0 => Precision::A8,
                1 => Precision::A16,
                _ => Precision::Float,
            }
        });
        assert!(
            db.is_infinite(),
            "simulation differs from the mixed model: {db} dB"
        );
    }

    #[test]
    fn simulation_with_folded_relus_and_reduced_weights() {
        // Not bit-exact here: the engine evaluates some float chains of this model
        // differently once Q/DQ pairs become float ops; far below quantization noise.
        let db = sim_vs_real("ppocr_cls/model.onnx", "ppocr_cls/calib.npz", |u| {
            if u.folded_op.is_some() {
                Precision::Float
            } else {
                Precision::A16
            }
        });
        assert!(db > 60.0, "simulation far from the mixed model: {db} dB");
    }
}
