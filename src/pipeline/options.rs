//! What a quantize run is asked to do: one typed value per command-line option of
//! `qrange quantize` (the command line maps its flags onto these; nothing here knows clap).
//!
//! A field's doc names the flag it comes from: errors about a field name it the same way,
//! since that is what the user wrote.

use crate::calib::{Method, MethodOptions};
use crate::data::Preprocess;
use crate::ir::DType;
use crate::quant::codebook::WeightGrid;
use crate::quant::embedding::TableBits;
use crate::quant::params::QType;
use crate::quant::plan::QuantConfig;
use crate::quant::rules::Target;
use crate::tune::search::Goal;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Weight-only settings (`--weight-bits`, `--block-size`, `--weight-symmetric`,
/// `--weight-algo`, `--act-order`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightOnlyOptions {
    /// 4 or 8.
    pub bits: u32,
    /// Weights per block along the reduction axis (16, 32, 64 or 128); `None`: per channel.
    pub block_size: Option<usize>,
    /// Symmetric codes, no zero points.
    pub symmetric: bool,
    pub algo: crate::quant::weight_only::Algo,
}

impl Default for WeightOnlyOptions {
    fn default() -> WeightOnlyOptions {
        WeightOnlyOptions {
            bits: 4,
            block_size: Some(32),
            symmetric: false,
            algo: crate::quant::weight_only::Algo::Rtn,
        }
    }
}

/// How weight ranges are chosen (`--weight-method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightMethod {
    /// The min/max of each channel.
    #[default]
    MinMax,
    /// The range of least squared quantization error of each channel.
    Mse,
}

/// Which weight grid (`--weight-grid`); its bits come from `--weight-bits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightGridKind {
    /// Evenly spaced codes.
    #[default]
    Uniform,
    /// A k-means codebook per output channel.
    Kmeans,
    /// Power-of-two levels per output channel.
    Pow2,
}

/// How uniform weights are rounded to their codes (`--rounding`, static mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rounding {
    /// To the nearest code (ties to even, as QuantizeLinear).
    #[default]
    Nearest,
    /// Up or down per element, learned on calibration inputs
    /// ([`crate::pipeline::adaround`]).
    Adaround(crate::pipeline::adaround::Budget),
}

/// What kind of quantization `quantize` writes (`--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Activations with ranges calibrated on data: QuantizeLinear/DequantizeLinear pairs.
    #[default]
    Static,
    /// Int8 weights, activations quantized at run time from their own min/max
    /// (DynamicQuantizeLinear → MatMulInteger/ConvInteger): no calibration data needed.
    Dynamic,
    /// Weights only, activations stay float ([`WeightOnlyOptions`]).
    WeightOnly,
}

/// Activation element type (`--activation-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationType {
    U8,
    I8,
    U16,
    I16,
}

/// Where calibration statistics come from (`--calib DATA`, `--calib random:N`, `--ranges`).
#[derive(Clone, Debug, PartialEq)]
pub enum CalibSource {
    /// A data file or folder (.npz/.npy, test_data_set folder, image folder).
    Data(PathBuf),
    /// `N` random samples (a smoke test: the ranges mean nothing).
    Random(usize),
    /// Statistics written by `qrange calibrate`/`merge` (`--ranges FILE`).
    Ranges(PathBuf),
    /// No data (`--mode dynamic`, and weight-only rounding and clipping, need none).
    None,
}

/// The model, its inputs and the quantization settings: what `quantize` and `calibrate`
/// share (`CommonArgs` on the command line).
#[derive(Clone, Debug)]
pub struct Common {
    /// The float model.
    pub model: PathBuf,
    /// `--calib` / `--ranges`.
    pub calib: CalibSource,
    /// `--preprocess`: how image files become the model input.
    pub preprocess: Option<Preprocess>,
    /// `--pin NAME=VALUE`: inputs fixed to constants, as given (name, numbers).
    pub pins: Vec<(String, Vec<f64>)>,
    /// `--shape NAME=DIMS`: concrete input shapes (default: the first sample's).
    pub shapes: BTreeMap<String, Vec<i64>>,
    pub settings: Settings,
    /// `--memory-budget` in MiB: intermediate values the report's per-layer comparison
    /// taps per engine run; calibration of a model with more weights runs block by block
    /// (each block's weights, and the activations held between blocks, under it).
    pub memory_budget_mib: u64,
    /// `--layerwise`: calibration runs block by block whatever the model's size.
    pub layerwise: bool,
    /// `--threads`: calibration threads (0: one per core, at most 4).
    pub threads: usize,
}

impl Common {
    /// `model` calibrated on `calib`, with the command line's defaults for the rest.
    pub fn new(model: impl Into<PathBuf>, calib: CalibSource) -> Common {
        Common {
            model: model.into(),
            calib,
            preprocess: None,
            pins: Vec::new(),
            shapes: BTreeMap::new(),
            settings: Settings::default(),
            memory_budget_mib: 1024,
            layerwise: false,
            threads: 0,
        }
    }
}

/// Quantization settings (`--target`, `--activation-type`, `--per-tensor`,
/// `--weight-method`, `--weight-grid`, `--weight-bits`, `--no-reduce-range`,
/// `--exclude-nodes`, `--exclude-op-types`, `--op-types`).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub target: Target,
    /// `None`: u8 asymmetric, i8 symmetric for TensorRT.
    pub activation: Option<ActivationType>,
    pub per_tensor: bool,
    pub weight_method: WeightMethod,
    /// Uniform codes or a codebook per channel (`--weight-grid`).
    pub weight_grid: WeightGridKind,
    /// Bits per weight (`--weight-bits`, static mode): 2 to 8.
    pub weight_bits: u32,
    /// Use all 8 bits of int8 weights on ort-cpu (`--no-reduce-range`).
    pub no_reduce_range: bool,
    pub exclude_nodes: Vec<String>,
    pub exclude_op_types: Vec<String>,
    /// Quantize only these op types (empty: all).
    pub op_types: Vec<String>,
    /// `--embedding-bits`: how embedding tables are stored (`None`: the mode's default, int8
    /// per row in the static and dynamic modes, the weights' bits and blocks in weight-only).
    pub embedding_bits: Option<TableBits>,
    /// `--embedding-block` (outside weight-only also spelt `--block-size`): values per block
    /// of quantized embedding tables along the embedding axis, a power of two of at least 16
    /// (`None`: 32 for `--embedding-bits 4` in the static and dynamic modes; in weight-only
    /// the weights' block, at most [`super::weight_only::TABLE_BLOCK_4`] for 4-bit tables).
    pub embedding_block: Option<usize>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            target: Target::OrtCpu,
            activation: None,
            per_tensor: false,
            weight_method: WeightMethod::MinMax,
            weight_grid: WeightGridKind::Uniform,
            weight_bits: 8,
            no_reduce_range: false,
            exclude_nodes: Vec::new(),
            exclude_op_types: Vec::new(),
            op_types: Vec::new(),
            embedding_bits: None,
            embedding_block: None,
        }
    }
}

impl Settings {
    /// The activation grid.
    pub fn activation_qtype(&self) -> QType {
        let t = self.activation.unwrap_or(match self.target {
            Target::Tensorrt => ActivationType::I8,
            _ => ActivationType::U8,
        });
        let (dtype, symmetric) = match t {
            ActivationType::U8 => (DType::U8, false),
            ActivationType::I8 => (DType::I8, true),
            ActivationType::U16 => (DType::U16, false),
            ActivationType::I16 => (DType::I16, true),
        };
        QType::new(dtype, symmetric, false).expect("integer type")
    }

    /// The weight grid and its integer type: uniform 8-bit is int8 (7-bit on ort-cpu
    /// unless `no_reduce_range`); uniform 2–4 bits int4 on `[-(2^(b-1) - 1), 2^(b-1) - 1]`,
    /// 5–7 bits int8 on that range; a codebook sits on the 8-bit grid.
    pub fn weight_grid(&self) -> Result<(QType, WeightGrid), String> {
        let bits = self.weight_bits;
        if !(2..=8).contains(&bits) {
            return Err(format!("--weight-bits {bits} must be 2 to 8"));
        }
        let reduce = self.target == Target::OrtCpu && !self.no_reduce_range;
        let int8 = QType::new(DType::I8, true, reduce).expect("int8");
        let grid = match self.weight_grid {
            WeightGridKind::Uniform => WeightGrid::Uniform,
            WeightGridKind::Kmeans => WeightGrid::Kmeans { bits },
            WeightGridKind::Pow2 => WeightGrid::Pow2 { bits },
        };
        if let WeightGrid::Pow2 { bits } = grid {
            if bits > 4 {
                return Err(format!("--weight-grid pow2 takes --weight-bits 2 to 4 (its codes 0, ±1, ±2, … ±2^(2^(bits-1) - 2) must fit the int8 grid), not {bits}"));
            }
        }
        if !grid.is_uniform() && self.per_tensor {
            return Err("--weight-grid kmeans and pow2 make one codebook per output channel: they do not combine with --per-tensor".into());
        }
        if !grid.is_uniform() || bits == 8 {
            return Ok((int8, grid));
        }
        let q = (1i64 << (bits - 1)) - 1;
        let dtype = if bits <= 4 { DType::I4 } else { DType::I8 };
        Ok((
            QType {
                dtype,
                qmin: -q,
                qmax: q,
                symmetric: true,
            },
            grid,
        ))
    }

    /// The plan's configuration; TensorRT refuses asymmetric activations.
    pub fn config(&self) -> Result<QuantConfig, String> {
        let (weight, weight_grid) = self.weight_grid()?;
        if let Some(b) = self.embedding_block {
            if b < 16 || !b.is_power_of_two() {
                return Err(format!(
                    "--embedding-block {b} must be a power of two of at least 16 (16, 32, 64, 128)"
                ));
            }
        }
        if self.target == Target::Tensorrt
            && matches!(
                self.activation,
                Some(ActivationType::U8 | ActivationType::U16)
            )
        {
            return Err(
                "--target tensorrt needs symmetric activations: use --activation-type i8 (or i16)"
                    .into(),
            );
        }
        let set = |v: &[String]| {
            v.iter()
                .map(|s| s.trim().to_string())
                .collect::<BTreeSet<_>>()
        };
        Ok(QuantConfig {
            target: self.target,
            activation: self.activation_qtype(),
            weight,
            weight_mse: self.weight_method == WeightMethod::Mse,
            weight_grid,
            per_channel: !self.per_tensor,
            exclude_nodes: set(&self.exclude_nodes),
            exclude_op_types: set(&self.exclude_op_types),
            op_types: (!self.op_types.is_empty()).then(|| set(&self.op_types)),
            tables: self.embedding_bits.filter(|b| *b != TableBits::Int8),
            table_block: self
                .embedding_block
                .filter(|_| self.embedding_bits == Some(TableBits::Int4)),
        })
    }
}

/// Mixed precision (`--target-sqnr`/`--max-drop`, `--size-budget`, `--overrides`,
/// `--save-overrides`, `--sensitivity-samples`, `--sensitivity-cache`).
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionOptions {
    /// What the search must reach.
    pub goal: Option<Goal>,
    /// The written model must fit in this many megabytes.
    pub size_budget_mb: Option<f64>,
    /// How the budget counts a weight's error (`--size-budget-cost`).
    pub budget_cost: super::budget::Cost,
    /// Precision per node or tensor from a file.
    pub overrides: Option<PathBuf>,
    /// Where a mixed-precision run's overrides go (default `<output stem>.overrides.json`
    /// beside the output).
    pub save_overrides: Option<PathBuf>,
    /// Samples the sensitivity analysis and search run on.
    pub sensitivity_samples: usize,
    /// Sensitivity cache (default `<output stem>.sensitivity.json` beside the output).
    pub sensitivity_cache: Option<PathBuf>,
}

impl Default for PrecisionOptions {
    fn default() -> PrecisionOptions {
        PrecisionOptions {
            goal: None,
            size_budget_mb: None,
            budget_cost: super::budget::Cost::Layer,
            overrides: None,
            save_overrides: None,
            sensitivity_samples: 16,
            sensitivity_cache: None,
        }
    }
}

/// Which pass dumps the run hands out (`--dump-after`, `--stop-after`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DumpOptions {
    /// Dump the IR after each run of these passes (a pass name matches every step of that
    /// pass; a step label, e.g. `infer_shapes-upgraded`, only that step).
    pub after: Vec<String>,
    /// Dump after this pass's first run, then stop: nothing is written.
    pub stop_after: Option<String>,
}

/// Everything `quantize` is asked to do.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub common: Common,
    /// `--mode`.
    pub mode: Mode,
    /// `--smooth ALPHA`: SmoothQuant's migration strength in `[0, 1]`, static mode only
    /// (`None`: no smoothing).
    pub smooth: Option<f32>,
    /// `--equalize`: cross-layer equalization of consecutive layers' weight ranges before
    /// calibration (static mode only).
    pub equalize: bool,
    /// `--bias-correction`: subtract each quantized Conv/Gemm's mean output shift on the
    /// calibration data from its bias (static mode only).
    pub bias_correction: bool,
    /// `--rounding`, `--adaround-iters`, `--adaround-rows` (static mode).
    pub rounding: Rounding,
    /// The weight-only settings (read with [`Mode::WeightOnly`]).
    pub weight_only: WeightOnlyOptions,
    /// Where the quantized model will be written (`-o`): names the summary's output and
    /// the files written beside it. The pipeline itself writes no model.
    pub output: PathBuf,
    /// `--method`: activation range method.
    pub method: Method,
    /// `--select-samples`: calibration samples `adaptive` compares its sets on.
    pub select_samples: usize,
    /// `--percentile` and the other method options.
    pub method_options: MethodOptions,
    /// `--eval`: evaluation data (default: the last fifth of the calibration samples).
    pub eval: Option<PathBuf>,
    /// `--labels`: key of the ground-truth labels in the evaluation data.
    pub labels: Option<String>,
    /// Validate the quantized model against the float one (`--no-validate` turns it off).
    pub validate: bool,
    pub precision: PrecisionOptions,
    /// Leave pinned inputs out of the written model (by default they stay declared, unused).
    pub drop_pinned_inputs: bool,
    /// Build the visual report's data (`--report FILE`; the caller writes the page).
    pub report: bool,
    pub dump: DumpOptions,
}

impl QuantizeOptions {
    /// Quantize `model`, calibrated on `calib`, for `output`, with the command line's
    /// defaults for the rest (adaptive ranges on 4 samples, validation on the last fifth
    /// of the calibration samples, no mixed precision, no report, no dumps).
    pub fn new(
        model: impl Into<PathBuf>,
        calib: CalibSource,
        output: impl Into<PathBuf>,
    ) -> QuantizeOptions {
        QuantizeOptions {
            common: Common::new(model, calib),
            mode: Mode::Static,
            smooth: None,
            equalize: false,
            bias_correction: false,
            rounding: Rounding::Nearest,
            weight_only: WeightOnlyOptions::default(),
            output: output.into(),
            method: Method::Adaptive,
            select_samples: 4,
            method_options: MethodOptions::default(),
            eval: None,
            labels: None,
            validate: true,
            precision: PrecisionOptions::default(),
            drop_pinned_inputs: false,
            report: false,
            dump: DumpOptions::default(),
        }
    }

    /// Where the sensitivity analysis is cached: `--sensitivity-cache`, else
    /// `<output stem>.sensitivity.json` beside the output.
    pub fn sensitivity_cache(&self) -> PathBuf {
        self.precision
            .sensitivity_cache
            .clone()
            .unwrap_or_else(|| sidecar(&self.output, "sensitivity.json"))
    }

    /// Where a mixed-precision run's overrides go by default: `<output stem>.overrides.json`
    /// beside the output.
    pub fn overrides_sidecar(&self) -> PathBuf {
        sidecar(&self.output, "overrides.json")
    }
}

/// `<output stem>.<suffix>` next to the output model (`out.onnx` → `out.<suffix>`).
pub fn sidecar(output: &Path, suffix: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    output.with_file_name(format!("{stem}.{suffix}"))
}
