//! `qrange quantize` (and the arguments it shares with `calibrate`): the clap arguments,
//! their mapping to the pipeline's options, and what the run prints and writes. The work
//! itself is [`crate::pipeline::quantize`].

use super::flags::{
    check_preprocess_used, parse_pins, parse_preprocess, parse_shapes, ActTypeArg, MethodArg,
    RoundingArg, TargetArg, WeightAlgoArg, WeightGridArg, WeightMethodArg,
};
use super::{Bars, Outcome};
use crate::calib::{Method, MethodOptions};
use crate::onnx::{self, ExternalPolicy};
use crate::pipeline::adaround::Budget;
use crate::pipeline::options::{
    CalibSource, Common, DumpOptions, Mode, PrecisionOptions, QuantizeOptions, Rounding, Settings,
    WeightOnlyOptions,
};
use crate::pipeline::precision::{goal_text, PrecisionSummary};
use crate::pipeline::summary::Summary;
use crate::pipeline::weight_only::WeightOnlySummary;
use crate::pipeline::{self, Finish, Quantized};
use crate::quant::embedding::{StoredTable, TableBits};
use crate::quant::weight_only::Algo;
use crate::tune::search::Goal;
use anyhow::{anyhow, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    pub target: TargetArg,
    /// Activation type (default: u8 asymmetric; i8 symmetric for tensorrt).
    #[arg(long, value_enum)]
    pub activation_type: Option<ActTypeArg>,
    /// One scale per tensor for weights instead of one per output channel.
    #[arg(long)]
    pub per_tensor: bool,
    /// How weight ranges are chosen (per channel): the min/max of the values, or the
    /// range of least squared quantization error (clips outlier weights).
    #[arg(long, value_enum, default_value = "minmax")]
    pub weight_method: WeightMethodArg,
    /// Use all 8 bits of int8 weights. By default ort-cpu weights use 7 bits, so that
    /// u8 x s8 kernels on x86 CPUs without VNNI cannot saturate (depthwise Conv weights
    /// keep 8: those kernels widen both operands first). `--mode dynamic` always uses 8
    /// (its weights are uint8 around 128, summed exactly).
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
    /// Memory budget, in MiB: for the intermediate values the per-layer comparison of
    /// `--report` taps per engine run, and for calibration: a model whose weights exceed it
    /// is calibrated block by block (see --layerwise), each block's weights and the
    /// activations held between blocks under it (the rest spilled to a temporary file).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub memory_budget: u64,
    /// Calibrate block by block whatever the model's size: only one block's weights are
    /// loaded at a time; the statistics are the same bytes as a whole-model run.
    #[arg(long)]
    pub layerwise: bool,
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
    qrange quantize model.onnx --ranges all.json -o out.onnx --no-validate\n  \
    qrange quantize model.onnx --mode weight-only --weight-bits 4 --block-size 32 \\\n      \
        --eval eval.npz -o out.int4.onnx   # no calibration data needed\n  \
    qrange quantize model.onnx --mode weight-only --weight-algo gptq --calib calib.npz \\\n      \
        --eval eval.npz -o out.int4.onnx")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// What to write: `static` calibrates activation ranges on data and inserts
    /// QuantizeLinear/DequantizeLinear; `dynamic` writes int8 weights and quantizes
    /// activations at run time (DynamicQuantizeLinear → MatMulInteger/ConvInteger, as
    /// ONNX Runtime's dynamic quantization): no calibration data needed (--calib, if
    /// given, only validates); `weight-only` puts the constant weights of MatMul/Gemm on 4
    /// or 8 bits and leaves activations float, written as com.microsoft MatMulNBits (blocked
    /// MatMul weights, --target ort-cpu) or DequantizeLinear (opset 21, any runtime); --calib
    /// only for --weight-algo gptq.
    #[arg(long, value_enum, default_value = "static")]
    pub mode: ModeArg,
    /// SmoothQuant (static mode): move the per-channel outliers of each LayerNormalization
    /// output into the weights of the MatMuls that read it, with strength ALPHA in [0, 1]
    /// (the float model's outputs do not change); `off` for none. Default: 0.5 in static
    /// mode with calibration data, off with --ranges (the statistics are those of the
    /// model as given) and in the other modes.
    #[arg(long, value_name = "ALPHA|off")]
    pub smooth: Option<String>,
    /// Cross-layer equalization (static mode): rescale the channels between consecutive
    /// layers (Conv→Conv, MatMul/Gemm→MatMul/Gemm, through at most a bias Add and a
    /// Relu, LeakyRelu or Clip(0, ∞)) so both layers' per-channel weight ranges are equal;
    /// data-free, the float model's outputs do not change. Default: off (it helps some
    /// models and settings and hurts others: benches/cle_bench.py).
    #[arg(long, value_enum, value_name = "on|off")]
    pub equalize: Option<OnOff>,
    /// Empirical bias correction (static mode, --calib): subtract from each quantized Conv
    /// and Gemm's bias the mean shift its quantized weights add to its output on the
    /// calibration data (measured per output channel on the quantized model's own input).
    #[arg(long)]
    pub bias_correction: bool,
    /// Bits per weight: static mode 2 to 8 (default 8; uniform 2-4 bits are int4,
    /// k-means and power-of-two codebooks index the int8 grid), weight-only 4 or 8
    /// (default 4).
    #[arg(long, value_name = "BITS")]
    pub weight_bits: Option<u32>,
    /// How embedding tables (a Gather's constant float table) are stored: `8` (int8 per row),
    /// `4` (int4 in blocks of --embedding-block along the embedding axis) or `float`.
    /// Default: 8 in the static and dynamic modes; weight-only follows --weight-bits.
    #[arg(long, value_name = "8|4|float")]
    pub embedding_bits: Option<String>,
    /// Values per block of quantized embedding tables along the embedding axis, a power of
    /// two of at least 16. Default: 32 for --embedding-bits 4 in the static and dynamic modes
    /// (where --block-size is an older spelling of it); in weight-only the weights'
    /// --block-size, at most 16 for 4-bit tables (per row with --block-size channel), and
    /// lookups at indices computed from shapes (position tables) int8 per row unless
    /// --embedding-bits 4 is given.
    #[arg(long, value_name = "N")]
    pub embedding_block: Option<String>,
    /// Static mode: the weight grid per output channel: `uniform` codes, a `kmeans`
    /// codebook of 2^BITS levels (weighted by each input's energy on the calibration
    /// data), or `pow2` levels 0, ±2^j (BITS 2 to 4). Codebooks are written as
    /// GatherElements of the levels by packed indices, read through DequantizeLinear.
    #[arg(long, value_enum)]
    pub weight_grid: Option<WeightGridArg>,
    /// Static mode, uniform weights: `nearest` code, or `adaround`: each Conv, MatMul and
    /// Gemm weight rounded up or down so that the layer's output on its calibration
    /// inputs moves least (same scales, plain Q/DQ output). Needs --calib DATA.
    #[arg(long, value_enum)]
    pub rounding: Option<RoundingArg>,
    /// `--rounding adaround`: optimisation steps per layer.
    #[arg(long, value_name = "N")]
    pub adaround_iters: Option<usize>,
    /// `--rounding adaround`: input rows (Conv patches) per layer it learns on, spread
    /// evenly over the calibration samples.
    #[arg(long, value_name = "N")]
    pub adaround_rows: Option<usize>,
    /// `--rounding adaround`: at most this many passes over the calibration data; each
    /// learns the layers of consecutive depths on the inputs the model quantized so far
    /// gives them (one per depth, the default, is exact; fewer are faster, and a layer
    /// then sees the layers of its own pass at round-to-nearest).
    #[arg(long, value_name = "N")]
    pub adaround_passes: Option<usize>,
    /// Weight-only: weights per block along the reduction axis, a power of two of at least 16,
    /// or `channel` for one scale per output channel (default 32).
    #[arg(long, value_name = "N|channel")]
    pub block_size: Option<String>,
    /// Weight-only: symmetric codes without zero points (int4 [-7, 7], int8 [-127, 127]).
    #[arg(long)]
    pub weight_symmetric: bool,
    /// Weight-only: how the codes are chosen.
    #[arg(long, value_enum)]
    pub weight_algo: Option<WeightAlgoArg>,
    /// Weight-only GPTQ: visit the columns by decreasing input energy (groups keep the
    /// grid fitted on the original weights).
    #[arg(long)]
    pub act_order: bool,
    /// Output model.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Range method for activations. `adaptive` runs every method's ranges in simulation
    /// on a few calibration samples and keeps the set whose outputs are closest to the
    /// float model's; `auto` picks per tensor by the lowest expected quantization error.
    #[arg(long, value_enum, default_value = "adaptive")]
    pub method: MethodArg,
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
    /// Leave the inputs fixed by --pin out of the written model. By default they stay
    /// declared (and unused), so the quantized model takes the float model's inputs.
    #[arg(long)]
    pub drop_pinned_inputs: bool,
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
    /// How --size-budget counts a weight's error: `layer` (the layer's energy-weighted
    /// noise) or `output` (times the model output change that layer alone makes on a
    /// 5-level grid, measured on the simulation; one run per weight).
    #[arg(long, value_enum, value_name = "COST", default_value = "layer")]
    pub size_budget_cost: BudgetCost,
    /// Precision per node or tensor from a file (written by a mixed-precision run, or by
    /// hand: {"format": "qrange-overrides/1", "nodes": {"conv1": "a16"},
    /// "tensors": {"x": "float"}}; precisions a8, a16, float).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target_sqnr", "max_drop"])]
    pub overrides: Option<PathBuf>,
    /// Where a mixed-precision run writes its overrides (default: beside the output,
    /// `<output stem>.overrides.json`: `-o out.onnx` writes `out.overrides.json`).
    #[arg(long, value_name = "FILE")]
    pub save_overrides: Option<PathBuf>,
    /// Samples the sensitivity analysis and search run on (evenly spaced over the
    /// evaluation data). Without --eval, the sensitivity probes run on at most this many
    /// calibration samples (fewer on models with large activations), the search on all.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub sensitivity_samples: usize,
    /// Sensitivity cache (default: beside the output, `<output stem>.sensitivity.json`:
    /// `-o out.onnx` uses `out.sensitivity.json`); a rerun with the same model, ranges and
    /// samples reuses it. Written with the model, never by a run that writes no model.
    #[arg(long, value_name = "FILE")]
    pub sensitivity_cache: Option<PathBuf>,
    /// Also write a self-contained HTML report: each calibrated tensor's histogram with
    /// the range every method proposes and the one chosen, sizes, accuracy, precision.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print the IR text dump after this pass (a pass name from `qrange passes`, every
    /// step of it; or a step label such as `infer_shapes-upgraded`). Repeatable.
    #[arg(long, value_name = "PASS")]
    pub dump_after: Vec<String>,
    /// Print the IR text dump after this pass's first step and stop: nothing is written.
    #[arg(long, value_name = "PASS")]
    pub stop_after: Option<String>,
}

/// `--size-budget-cost`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BudgetCost {
    /// The layer's energy-weighted noise alone.
    Layer,
    /// The layer's noise times its measured effect on the model output.
    Output,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Calibrated activation ranges, Q/DQ pairs.
    Static,
    /// Int8 weights, activations quantized at run time.
    Dynamic,
    /// Weights of MatMul/Gemm only, 4 or 8 bits; activations stay float.
    WeightOnly,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Static => Mode::Static,
            ModeArg::Dynamic => Mode::Dynamic,
            ModeArg::WeightOnly => Mode::WeightOnly,
        }
    }
}

/// Prints a warning on stderr.
pub(crate) fn warn(msg: &str) {
    eprintln!("warning: {msg}");
}

/// The pipeline's view of the shared arguments (`ranges`: `quantize --ranges FILE`;
/// `optional`: no calibration data is needed).
pub(crate) fn common(
    c: &CommonArgs,
    ranges: Option<&Path>,
    optional: bool,
) -> anyhow::Result<Common> {
    let calib = match (ranges, &c.calib) {
        (Some(f), _) => CalibSource::Ranges(f.to_path_buf()),
        (None, None) if optional => CalibSource::None,
        (None, None) => bail!("no calibration data: give --calib DATA (or --ranges FILE)"),
        (None, Some(spec)) => match spec.strip_prefix("random:") {
            Some(n) => CalibSource::Random(
                n.parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow!("--calib {spec}: N must be a positive number"))?,
            ),
            None => CalibSource::Data(PathBuf::from(spec)),
        },
    };
    Ok(Common {
        model: c.model.clone(),
        calib,
        preprocess: parse_preprocess(c.preprocess.as_deref())?,
        pins: parse_pins(&c.pin)?,
        shapes: parse_shapes(&c.shape)?,
        settings: Settings {
            target: c.target.into(),
            activation: c.activation_type.map(Into::into),
            per_tensor: c.per_tensor,
            weight_method: c.weight_method.into(),
            weight_grid: Default::default(),
            weight_bits: 8,
            no_reduce_range: c.no_reduce_range,
            exclude_nodes: c.exclude_nodes.clone(),
            exclude_op_types: c.exclude_op_types.clone(),
            op_types: c.op_types.clone(),
            embedding_bits: None,
            embedding_block: None,
        },
        memory_budget_mib: c.memory_budget,
        layerwise: c.layerwise,
        threads: c.threads,
    })
}

/// Refuses, before any work, outputs that cannot be written or would replace a file the
/// run reads or another of its outputs: the model and its external data, the sidecars
/// (overrides, sensitivity cache), the report.
fn check_outputs(a: &Args, goal: Option<Goal>) -> anyhow::Result<()> {
    let c = &a.common;
    let mixed = goal.is_some() || a.size_budget.is_some();
    if let (Some(path), false) = (&a.save_overrides, mixed) {
        bail!(
            "--save-overrides {}: needs --target-sqnr, --max-drop or --size-budget (nothing else writes overrides)",
            path.display()
        );
    }
    let mut paths = crate::fsx::Paths::new();
    super::read_model(&mut paths, "the model", &c.model);
    if let Some(d) = &c.calib {
        super::read_data(&mut paths, "the --calib data", d);
    }
    for (what, file) in [
        ("the --eval data", &a.eval),
        ("the --ranges file", &a.ranges),
        ("the --overrides file", &a.overrides),
    ] {
        if let Some(f) = file {
            paths.read(what, f);
        }
    }
    super::read_preprocess(&mut paths, c.preprocess.as_deref());
    super::write_model(&mut paths, "-o", &a.output);
    if let Some(r) = &a.report {
        paths.write("--report", r);
    }
    if mixed {
        let o = QuantizeOptions::new(&c.model, CalibSource::Random(1), &a.output);
        match &a.save_overrides {
            Some(p) => paths.write("--save-overrides", p),
            None => paths.write("the overrides file", &o.overrides_sidecar()),
        }
        if goal.is_some() {
            match &a.sensitivity_cache {
                Some(p) => paths.write("--sensitivity-cache", p),
                None => paths.write("the sensitivity cache", &o.sensitivity_cache()),
            }
        }
    }
    paths.check()?;
    Ok(())
}

/// Refuses flags that contradict each other or are out of range.
fn check_flags(a: &Args) -> anyhow::Result<Option<Goal>> {
    if !(a.percentile > 0.0 && a.percentile <= 100.0) {
        bail!("--percentile {} is outside (0, 100]", a.percentile);
    }
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
    if a.select_samples == 0 && a.method == MethodArg::Adaptive {
        bail!("--select-samples must be at least 1 with --method adaptive");
    }
    if a.sensitivity_samples == 0 {
        bail!("--sensitivity-samples must be at least 1");
    }
    if a.mode == ModeArg::Dynamic {
        check_dynamic(a)?;
    }
    for name in a.dump_after.iter().chain(&a.stop_after) {
        crate::passes::check_step_name(name)
            .map_err(|e| anyhow!("--dump-after/--stop-after: {e}"))?;
    }
    Ok(goal)
}

/// Refuses what `--mode dynamic` cannot do: it calibrates nothing and searches nothing.
fn check_dynamic(a: &Args) -> anyhow::Result<()> {
    let c = &a.common;
    let refused = [
        ("--target-sqnr", a.target_sqnr.is_some()),
        ("--max-drop", a.max_drop.is_some()),
        ("--size-budget", a.size_budget.is_some()),
        ("--overrides", a.overrides.is_some()),
        ("--save-overrides", a.save_overrides.is_some()),
        ("--ranges", a.ranges.is_some()),
        ("--report", a.report.is_some()),
        ("--activation-type", c.activation_type.is_some()),
    ];
    if let Some((flag, _)) = refused.iter().find(|(_, given)| *given) {
        bail!(
            "{flag} does not apply to --mode dynamic: activations are quantized at run time from their own range (nothing is calibrated or searched)"
        );
    }
    if c.target == TargetArg::Tensorrt {
        bail!(
            "--mode dynamic: --target tensorrt runs neither DynamicQuantizeLinear nor MatMulInteger/ConvInteger; use --target ort-cpu or generic"
        );
    }
    Ok(())
}

/// `--embedding-bits`.
fn embedding_bits(a: &Args) -> anyhow::Result<Option<TableBits>> {
    Ok(match a.embedding_bits.as_deref().map(str::trim) {
        None => None,
        Some("8") => Some(TableBits::Int8),
        Some("4") => Some(TableBits::Int4),
        Some("float") => Some(TableBits::Float),
        Some(s) => bail!("--embedding-bits {s} must be 8, 4 or float"),
    })
}

/// `--embedding-block`, or outside weight-only its older spelling `--block-size`: the
/// blocks of the embedding tables.
fn table_block(a: &Args) -> anyhow::Result<Option<usize>> {
    let legacy = a
        .block_size
        .as_deref()
        .map(str::trim)
        .filter(|_| a.mode != ModeArg::WeightOnly);
    let (flag, s) = match (a.embedding_block.as_deref().map(str::trim), legacy) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => bail!(
            "--block-size and --embedding-block both set the embedding tables' blocks outside --mode weight-only: give --embedding-block alone"
        ),
        (Some(s), None) => ("--embedding-block", s),
        (None, Some(s)) => ("--block-size", s),
    };
    let bits = a.embedding_bits.as_deref().map(str::trim);
    if a.mode != ModeArg::WeightOnly && bits != Some("4") {
        if flag == "--block-size" {
            bail!("--block-size applies to --mode weight-only, or to --embedding-bits 4 tables");
        }
        bail!("--embedding-block applies to --embedding-bits 4 tables, or to --mode weight-only");
    }
    if bits == Some("float") {
        bail!("--embedding-block sets the blocks of quantized tables: it does not combine with --embedding-bits float");
    }
    match s.parse::<usize>() {
        Ok(b) if b >= 16 && b.is_power_of_two() => Ok(Some(b)),
        _ => bail!("{flag} {s} must be a power of two of at least 16 (the blocks of the embedding tables: 16, 32, 64, 128)"),
    }
}

/// The weight-only flags, refused outside `--mode weight-only`.
fn weight_only(a: &Args) -> anyhow::Result<WeightOnlyOptions> {
    let d = WeightOnlyOptions::default();
    if let (Some(_), false) = (a.weight_grid, a.mode == ModeArg::Static) {
        bail!("--weight-grid applies to the static mode (--mode static): the other modes write uniform weights");
    }
    if a.mode != ModeArg::WeightOnly {
        for (flag, given) in [
            (
                "--weight-bits",
                a.weight_bits.is_some() && a.mode != ModeArg::Static,
            ),
            (
                "--block-size",
                a.block_size.is_some() && a.embedding_bits.as_deref().map(str::trim) != Some("4"),
            ),
            ("--weight-symmetric", a.weight_symmetric),
            ("--weight-algo", a.weight_algo.is_some()),
            ("--act-order", a.act_order),
        ] {
            if given {
                bail!("{flag} applies to --mode weight-only");
            }
        }
        return Ok(d);
    }
    let block_size = match a.block_size.as_deref().map(str::trim) {
        None => d.block_size,
        Some("channel") => None,
        Some(s) => Some(s.parse::<usize>().map_err(|_| {
            anyhow!("--block-size {s} must be a power of two of at least 16, or `channel`")
        })?),
    };
    let algo = match a.weight_algo.unwrap_or(WeightAlgoArg::Rtn) {
        WeightAlgoArg::Rtn => Algo::Rtn,
        WeightAlgoArg::Clip => Algo::Clip,
        WeightAlgoArg::Gptq => Algo::Gptq {
            act_order: a.act_order,
        },
    };
    if a.act_order && !matches!(algo, Algo::Gptq { .. }) {
        bail!("--act-order applies to --weight-algo gptq");
    }
    Ok(WeightOnlyOptions {
        bits: a.weight_bits.unwrap_or(d.bits),
        block_size,
        symmetric: a.weight_symmetric,
        algo,
    })
}

/// `--smooth`'s default strength: on minilm_l3 (benches/transformer_bench.py) 0.5 and 0.8
/// both lift the embedding's SQNR from 20.0 to 23.9 dB; models without a
/// LayerNormalization feeding a MatMul are unchanged.
const DEFAULT_SMOOTH: f32 = 0.5;

/// `--smooth`: the migration strength, or `None` for `off`.
fn smooth(a: &Args) -> anyhow::Result<Option<f32>> {
    let Some(s) = a.smooth.as_deref().map(str::trim) else {
        let applies = a.mode == ModeArg::Static && a.ranges.is_none();
        return Ok(applies.then_some(DEFAULT_SMOOTH));
    };
    if s == "off" {
        return Ok(None);
    }
    let alpha: f32 = s
        .parse()
        .map_err(|_| anyhow!("--smooth {s} must be a number in [0, 1] or `off`"))?;
    if !(0.0..=1.0).contains(&alpha) {
        bail!("--smooth {s} is outside [0, 1]");
    }
    if a.mode != ModeArg::Static {
        bail!("--smooth applies to --mode static: it moves activation ranges the static mode calibrates into the weights");
    }
    if a.ranges.is_some() {
        bail!("--smooth needs --calib DATA: the activations' channel ranges are measured on it, a ranges file has none");
    }
    Ok(Some(alpha))
}

/// `--equalize on|off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `--equalize`: whether to equalize. Off by default, from benches/cle_bench.py: with
/// per-tensor int8 weights it raises ppocr_det's output SQNR (4.9 → 6.0 dB) but lowers
/// ppocr_cls's (25.2 → 22.2 dB); with per-channel weights it costs ppocr_det 10 dB
/// (14.8 → 4.8): per-channel weight grids gain nothing from it.
fn equalize(a: &Args) -> anyhow::Result<bool> {
    let Some(e) = a.equalize else {
        return Ok(false);
    };
    if e == OnOff::Off {
        return Ok(false);
    }
    if a.mode != ModeArg::Static {
        bail!("--equalize applies to --mode static: it rescales the weights before the static mode calibrates");
    }
    if a.ranges.is_some() {
        bail!("--equalize changes the model a ranges file was calibrated on: calibrate with --calib DATA instead of --ranges");
    }
    Ok(true)
}

/// `--bias-correction`: refused outside the static mode and without calibration data.
fn bias_correction(a: &Args) -> anyhow::Result<bool> {
    if !a.bias_correction {
        return Ok(false);
    }
    if a.mode != ModeArg::Static {
        bail!("--bias-correction applies to --mode static: it corrects the biases of layers whose weights the static mode quantizes");
    }
    if a.ranges.is_some() {
        bail!("--bias-correction needs --calib DATA: the output shifts are measured on it, a ranges file has none");
    }
    Ok(true)
}

/// Default `--adaround-iters`, `--adaround-rows` and `--adaround-passes` (one per depth).
const ADAROUND: Budget = Budget {
    iters: 500,
    rows: 4096,
    passes: usize::MAX,
};

/// `--rounding` and its budget.
fn rounding(a: &Args) -> anyhow::Result<Rounding> {
    if a.rounding != Some(RoundingArg::Adaround) {
        for (flag, given) in [
            ("--adaround-iters", a.adaround_iters.is_some()),
            ("--adaround-rows", a.adaround_rows.is_some()),
            ("--adaround-passes", a.adaround_passes.is_some()),
        ] {
            if given {
                bail!("{flag} applies to --rounding adaround");
            }
        }
        return Ok(Rounding::Nearest);
    }
    Ok(Rounding::Adaround(Budget {
        iters: a.adaround_iters.unwrap_or(ADAROUND.iters),
        rows: a.adaround_rows.unwrap_or(ADAROUND.rows),
        passes: a.adaround_passes.unwrap_or(ADAROUND.passes),
    }))
}

/// The pipeline's options for `a`.
fn options(a: &Args, goal: Option<Goal>) -> anyhow::Result<QuantizeOptions> {
    let weight_only = weight_only(a)?;
    let smooth = smooth(a)?;
    let equalize = equalize(a)?;
    let bias_correction = bias_correction(a)?;
    let mut common = common(
        &a.common,
        a.ranges.as_deref(),
        matches!(a.mode, ModeArg::Dynamic | ModeArg::WeightOnly),
    )?;
    common.settings.embedding_bits = embedding_bits(a)?;
    common.settings.embedding_block = table_block(a)?;
    if a.mode == ModeArg::Static {
        common.settings.weight_grid = a.weight_grid.map_or(Default::default(), Into::into);
        common.settings.weight_bits = a.weight_bits.unwrap_or(8);
    }
    Ok(QuantizeOptions {
        smooth,
        equalize,
        bias_correction,
        rounding: rounding(a)?,
        common,
        mode: a.mode.into(),
        weight_only,
        output: a.output.clone(),
        method: Method::from(a.method),
        select_samples: a.select_samples,
        method_options: MethodOptions {
            percentile: a.percentile,
            ..MethodOptions::default()
        },
        eval: a.eval.clone(),
        labels: a.labels.clone(),
        validate: !a.no_validate,
        precision: PrecisionOptions {
            goal,
            size_budget_mb: a.size_budget,
            budget_cost: match a.size_budget_cost {
                BudgetCost::Output => pipeline::budget::Cost::Output,
                BudgetCost::Layer => pipeline::budget::Cost::Layer,
            },
            overrides: a.overrides.clone(),
            save_overrides: a.save_overrides.clone(),
            sensitivity_samples: a.sensitivity_samples,
            sensitivity_cache: a.sensitivity_cache.clone(),
        },
        drop_pinned_inputs: a.drop_pinned_inputs,
        report: a.report.is_some(),
        dump: DumpOptions {
            after: a.dump_after.clone(),
            stop_after: a.stop_after.clone(),
        },
    })
}

/// Writes the model, the overrides file, the sensitivity cache and the report: each to a
/// temporary file first, all renamed together once every one is complete. The summary's
/// `write` time covers them all.
fn write(a: &Args, q: &mut Quantized) -> anyhow::Result<()> {
    let t = Instant::now();
    let (mut staged, _) = onnx::encode::stage_model(&q.model, &a.output, &ExternalPolicy::Keep)?;
    let mut sidecars: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    match (&q.overrides, &a.save_overrides) {
        (Some((path, o)), _) => sidecars.push((path.clone(), o.to_bytes()?)),
        // A size budget the 8-bit model meets: nothing promoted, nothing on 4 bits.
        (None, Some(path)) => {
            sidecars.push((path.clone(), crate::tune::Overrides::new().to_bytes()?))
        }
        (None, None) => {}
    }
    if let Some((path, f)) = &q.sensitivity {
        sidecars.push((path.clone(), f.to_bytes()?));
    }
    if let (Some(path), Some(input)) = (&a.report, &q.report) {
        sidecars.push((path.clone(), crate::report::render(input).into_bytes()));
    }
    for (path, bytes) in &sidecars {
        let mut s = crate::fsx::stage(path)?;
        std::io::Write::write_all(s.file(), bytes)
            .map_err(|e| anyhow!("cannot write '{}': {e}", path.display()))?;
        staged.push(s);
    }
    crate::fsx::commit(staged).map_err(|e| anyhow!("cannot write the outputs: {e}"))?;
    q.summary
        .seconds
        .insert("write".into(), t.elapsed().as_secs_f64());
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let goal = check_flags(&a)?;
    check_outputs(&a, goal)?;
    let c = &a.common;
    check_preprocess_used(
        c.preprocess.as_deref(),
        &[
            ("--calib", c.calib.as_deref().map(Path::new)),
            ("--eval", a.eval.as_deref()),
        ],
    )?;
    let o = options(&a, goal)?;
    let bars = Bars::new(c.json);
    if o.mode == Mode::WeightOnly {
        return run_weight_only(&a, &o, &bars);
    }
    let mut q = match pipeline::quantize(&o, &bars)? {
        Finish::Quantized(q) => q,
        Finish::Missed { warnings, what } => {
            for w in &warnings {
                warn(w);
            }
            eprintln!("error: {what}");
            return Ok(Outcome::GateFailed);
        }
        Finish::Stopped { .. } => return Ok(Outcome::Ok),
    };
    write(&a, &mut q)?;
    for w in &q.warnings {
        warn(w);
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&q.summary)?);
    } else {
        print_summary(&q.summary);
    }
    Ok(Outcome::Ok)
}

/// `--mode weight-only`: quantize, write the model, print the summary.
fn run_weight_only(a: &Args, o: &QuantizeOptions, bars: &Bars) -> anyhow::Result<Outcome> {
    let mut r = pipeline::weight_only::quantize(o, bars)?;
    let t = Instant::now();
    let (staged, _) = onnx::encode::stage_model(&r.model, &a.output, &ExternalPolicy::Keep)?;
    crate::fsx::commit(staged).map_err(|e| anyhow!("cannot write the outputs: {e}"))?;
    r.summary
        .seconds
        .insert("write".into(), t.elapsed().as_secs_f64());
    for w in &r.warnings {
        warn(w);
    }
    if a.common.json {
        println!("{}", serde_json::to_string_pretty(&r.summary)?);
    } else {
        print_weight_only(&r.summary);
    }
    Ok(Outcome::Ok)
}

/// The embedding tables stored in fewer bits: a count line, then one line per table.
fn print_tables(tables: &[StoredTable]) {
    if tables.is_empty() {
        return;
    }
    let mut written: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tables {
        *written.entry(t.written_as.as_str()).or_default() += 1;
    }
    println!(
        "tables     {} embedding tables quantized ({} parameters: {})",
        tables.len(),
        tables
            .iter()
            .map(|t| t.shape[0] * t.shape[1])
            .sum::<usize>(),
        written
            .iter()
            .map(|(k, n)| format!("{n} as {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for t in tables {
        println!(
            "  table {} [{}, {}]: int{} {}, {}, SQNR {:.1} dB",
            t.table,
            t.shape[0],
            t.shape[1],
            t.bits,
            match t.block_size {
                Some(b) => format!("blocks of {b}"),
                None => "per row".to_string(),
            },
            t.algo,
            t.sqnr_db
        );
    }
}

fn print_weight_only(s: &WeightOnlySummary) {
    println!("quantized  {} -> {} (weight-only)", s.input, s.output);
    println!(
        "settings   target {:?}, weights {} bits {}, {}, {}; activations float",
        s.target,
        s.bits,
        if s.symmetric {
            "symmetric"
        } else {
            "with zero points"
        },
        match s.block_size {
            Some(b) => format!("blocks of {b}"),
            None => "per channel".to_string(),
        },
        s.algo
    );
    let mut written: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &s.layers {
        *written.entry(l.written_as.as_str()).or_default() += 1;
    }
    let float: usize = s.float_ops.values().map(Vec::len).sum();
    println!(
        "ops        {} weights quantized ({} parameters: {}), {float} MatMul/Gemm left float",
        s.layers.len(),
        s.parameters,
        written
            .iter()
            .map(|(k, n)| format!("{n} as {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print_tables(&s.tables);
    for (reason, tables) in &s.float_tables {
        println!("  float table: {reason}: {}", tables.join(", "));
    }
    for (reason, ops) in &s.float_ops {
        let shown: Vec<&str> = ops.iter().take(6).map(String::as_str).collect();
        let more = if ops.len() > 6 {
            format!(" (+{} more)", ops.len() - 6)
        } else {
            String::new()
        };
        println!("  float: {reason}: {}{more}", shown.join(", "));
    }
    println!(
        "size       {:.1} KB -> {:.1} KB ({:.3}x)",
        s.size_before as f64 / 1024.0,
        s.size_after as f64 / 1024.0,
        s.size_after as f64 / s.size_before.max(1) as f64
    );
    if s.calibration_samples > 0 {
        println!("data       {} calibration samples", s.calibration_samples);
    }
    print_validation(s.eval_samples, &s.validation);
    print_footer(&s.seconds, &s.notes);
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
        if let Some(e) = &s.estimate {
            println!(
                "           judged on calibration data the ranges did not see ({} folds, ranges from the other folds' statistics; sensitivity probes on {} samples{}): {}; the goal is judged on the lower bound",
                s.folds,
                s.probe_samples,
                match s.screened {
                    0 => String::new(),
                    n => format!(", {n} demotions screened on them"),
                },
                goal.describe_estimate(e),
            );
        }
        if let Some(v) = s.validated {
            println!(
                "           written model on the evaluation data: {}{}",
                s.eval_estimate
                    .as_ref()
                    .map_or_else(|| goal.describe(v), |e| goal.describe_estimate(e)),
                if s.extra_rounds > 0 {
                    format!(" (after {} extra promotion rounds)", s.extra_rounds)
                } else {
                    String::new()
                }
            );
        }
        for p in &s.promoted {
            println!(
                "  {} {} ({} {}): promoted alone {:.1} dB",
                p.precision, p.tensor, p.op_type, p.producer, p.promoted_db
            );
        }
    }
    println!("overrides  {} (reuse with --overrides)", s.overrides_file);
}

fn print_summary(s: &Summary) {
    println!("quantized  {} -> {}", s.input, s.output);
    if s.mode != "static" {
        println!("mode       {}", s.mode);
    }
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
    print_tables(&s.tables);
    if let Some(f) = &s.fusion {
        println!("{}", f.line);
    }
    if s.mode == "dynamic" {
        println!("ranges     none calibrated: each activation's at run time");
    } else {
        print_ranges(s);
    }
    print_sizes_and_validation(s);
}

fn print_ranges(s: &Summary) {
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
}

/// `62.0% in 8 bits, 20.1% in 4 bits, 9.0% in 2 bits`: widest first; `0.0% in 8 bits`
/// when every weight stays float.
fn bits_shares(s: &Summary) -> String {
    let parts: Vec<String> = s
        .weight_bits_share
        .iter()
        .rev()
        .filter(|(_, &share)| share > 0.0)
        .map(|(bits, share)| format!("{:.1}% in {bits} bits", share * 100.0))
        .collect();
    if parts.is_empty() {
        format!("{:.1}% in 8 bits", s.weight_8bit_share * 100.0)
    } else {
        parts.join(", ")
    }
}

fn print_sizes_and_validation(s: &Summary) {
    println!(
        "size       {:.1} KB -> {:.1} KB; weight parameters: {}",
        s.size_before as f64 / 1024.0,
        s.size_after as f64 / 1024.0,
        bits_shares(s)
    );
    if let Some(db) = s.weight_sqnr_db {
        println!("weights    SQNR {db:.2} dB over every quantized weight");
    }
    if let Some(a) = &s.size_budget {
        print_budget(a);
    }
    if let Some(pr) = &s.precision {
        print_precision(pr);
    }
    print_layers(&s.layers);
    print_validation(s.eval_samples, &s.validation);
    print_footer(&s.seconds, &s.notes);
}

/// Each layer's activation precision and weight storage (mixed runs), counted per
/// combination, then layer by layer.
fn print_layers(layers: &[crate::pipeline::summary::LayerChoice]) {
    if layers.is_empty() {
        return;
    }
    let mut kinds: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for l in layers {
        *kinds
            .entry((l.activation.as_str(), l.weight.as_str()))
            .or_default() += 1;
    }
    println!(
        "layers     {} reading weights (activations, weight storage): {}",
        layers.len(),
        kinds
            .iter()
            .map(|((a, w), n)| format!("{n} {a} {w}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for l in layers {
        println!(
            "  {:<6} {:<8} {} ({})",
            l.activation, l.weight, l.node, l.op_type
        );
    }
}

/// Every weight's storage under `--size-budget`, counted per kind, then each weight.
fn print_budget(a: &pipeline::budget::Allocation) {
    let mut kinds: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for w in &a.weights {
        let e = kinds.entry(w.storage.as_str()).or_default();
        e.0 += 1;
        e.1 += w.elements;
    }
    let counts: Vec<String> = kinds
        .iter()
        .map(|(k, (n, p))| format!("{n} {k} ({p} parameters)"))
        .collect();
    println!(
        "weights    --size-budget {} MB: {}; proxy SQNR {:.1} dB ({})",
        a.budget_mb,
        counts.join(", "),
        a.proxy_sqnr_db,
        if a.energy_weighted {
            "weighted by input energy"
        } else {
            "unweighted: no calibration data"
        }
    );
    for w in &a.weights {
        println!(
            "  {:<8} {}: {} bytes, layer SQNR {:.1} dB",
            w.storage, w.weight, w.bytes, w.layer_sqnr_db
        );
    }
}

/// The validation lines: per output, the float model against the quantized one in tract.
fn print_validation(eval_samples: usize, validation: &BTreeMap<String, crate::report::Metrics>) {
    if validation.is_empty() {
        return;
    }
    println!("validation {eval_samples} eval samples, tract, float vs quantized:");
    for (name, m) in validation {
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

/// The last lines of every mode's summary: the time of each step, then the notes.
fn print_footer(seconds: &BTreeMap<String, f64>, notes: &[String]) {
    println!(
        "time       {}",
        seconds
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for n in notes {
        println!("note: {n}");
    }
}
