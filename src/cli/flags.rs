//! Flags several subcommands share: the clap value enums (mapped to the library's own
//! enums, which know nothing of clap) and the parsing of `--pin`, `--shape` and
//! `--preprocess` text into typed values.

use crate::calib::Method;
use crate::data::{self, Preprocess};
use crate::lint::Platform;
use crate::pipeline::options::{ActivationType, WeightGridKind, WeightMethod};
use crate::quant::rules::Target;
use anyhow::bail;
use std::collections::BTreeMap;
use std::path::Path;

/// `--target`: the runtime a model is quantized (or linted) for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    /// ONNX Runtime on CPUs: node units that fuse to QLinear* kernels, int32 bias,
    /// BatchNormalization folded, data-movement ops sharing scales.
    OrtCpu,
    /// TensorRT explicit quantization: symmetric int8, quantize op inputs only,
    /// bias left float, no Q/DQ on data movement, no simulated BN folding.
    Tensorrt,
    /// Every op with a rule, for runtimes or simulators without fusion constraints.
    Generic,
}

impl From<TargetArg> for Target {
    fn from(t: TargetArg) -> Target {
        match t {
            TargetArg::OrtCpu => Target::OrtCpu,
            TargetArg::Tensorrt => Target::Tensorrt,
            TargetArg::Generic => Target::Generic,
        }
    }
}

/// `--method`: how activation ranges are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// The observed [min, max].
    #[value(name = "minmax")]
    MinMax,
    /// Cut a fraction of the mass off the tails (default 99.999 %).
    Percentile,
    /// Minimum KL divergence between the |x| distribution and its quantized version.
    Entropy,
    /// Minimum expected quantization MSE.
    Mse,
    /// Every method, scored by expected MSE; the lowest wins.
    Auto,
    /// `quantize`: the range set (`auto`'s, or one method for every tensor) whose
    /// simulated outputs on calibration samples are closest to the float model's. Alone on
    /// one tensor it is `auto`.
    Adaptive,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::MinMax => Method::MinMax,
            MethodArg::Percentile => Method::Percentile,
            MethodArg::Entropy => Method::Entropy,
            MethodArg::Mse => Method::Mse,
            MethodArg::Auto => Method::Auto,
            MethodArg::Adaptive => Method::Adaptive,
        }
    }
}

/// `--platform`: the CPU a linted model is deployed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformArg {
    #[value(name = "x86-64")]
    X86_64,
    Arm64,
}

impl From<PlatformArg> for Platform {
    fn from(p: PlatformArg) -> Platform {
        match p {
            PlatformArg::X86_64 => Platform::X86_64,
            PlatformArg::Arm64 => Platform::Arm64,
        }
    }
}

/// `--weight-algo`: how weight-only codes are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightAlgoArg {
    /// Round to nearest on each group's min/max grid.
    Rtn,
    /// Per group, the range shrink (a grid of 20) of least squared weight error.
    Clip,
    /// Error compensation from each layer's calibration inputs (needs --calib).
    Gptq,
}

/// `--weight-method`: how weight ranges are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightMethodArg {
    /// The min/max of each channel.
    #[value(name = "minmax")]
    MinMax,
    /// The range of least squared quantization error of each channel.
    Mse,
}

impl From<WeightMethodArg> for WeightMethod {
    fn from(m: WeightMethodArg) -> WeightMethod {
        match m {
            WeightMethodArg::MinMax => WeightMethod::MinMax,
            WeightMethodArg::Mse => WeightMethod::Mse,
        }
    }
}

/// `--weight-grid`: uniform codes or a codebook per output channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightGridArg {
    /// Evenly spaced codes.
    Uniform,
    /// 2^BITS levels per channel by k-means (Lloyd), weighted by input energy.
    Kmeans,
    /// Levels 0, ±2^j per channel (shift-friendly), BITS 2 to 4.
    Pow2,
}

impl From<WeightGridArg> for WeightGridKind {
    fn from(g: WeightGridArg) -> WeightGridKind {
        match g {
            WeightGridArg::Uniform => WeightGridKind::Uniform,
            WeightGridArg::Kmeans => WeightGridKind::Kmeans,
            WeightGridArg::Pow2 => WeightGridKind::Pow2,
        }
    }
}

/// `--rounding`: how uniform weights are rounded to their codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoundingArg {
    /// To the nearest code.
    Nearest,
    /// Up or down per weight, learned on each layer's calibration inputs (AdaRound).
    Adaround,
}

/// `--activation-type`: activation element types accepted on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActTypeArg {
    U8,
    I8,
    U16,
    I16,
}

impl From<ActTypeArg> for ActivationType {
    fn from(a: ActTypeArg) -> ActivationType {
        match a {
            ActTypeArg::U8 => ActivationType::U8,
            ActTypeArg::I8 => ActivationType::I8,
            ActTypeArg::U16 => ActivationType::U16,
            ActTypeArg::I16 => ActivationType::I16,
        }
    }
}

/// Parses `NAME=VALUE` pairs.
fn split_pair<'a>(s: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() && !v.is_empty() => Ok((n, v)),
        _ => bail!("--{what} '{s}' is not of the form NAME=VALUE"),
    }
}

/// Parses `--pin NAME=V[,V…]` into the input name and its numbers (the model input's
/// declared type decides the tensor: [`crate::passes::pin_inputs::pin_tensor`]).
pub(crate) fn parse_pins(pins: &[String]) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let mut out = Vec::with_capacity(pins.len());
    for p in pins {
        let (name, val) = split_pair(p, "pin")?;
        let nums: Vec<f64> = val
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--pin {name}: '{val}' is not a number list"))?;
        out.push((name.to_string(), nums));
    }
    Ok(out)
}

/// Parses `--shape NAME=D1,D2,…`.
pub(crate) fn parse_shapes(shapes: &[String]) -> anyhow::Result<BTreeMap<String, Vec<i64>>> {
    let mut out = BTreeMap::new();
    for s in shapes {
        let (name, dims) = split_pair(s, "shape")?;
        let d: Vec<i64> = dims
            .split(',')
            .map(|x| x.trim().parse::<i64>())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|d: &Vec<i64>| d.iter().all(|&x| x >= 0))
            .ok_or_else(|| {
                anyhow::anyhow!("--shape {name}: '{dims}' is not a list of dimensions")
            })?;
        out.insert(name.to_string(), d);
    }
    Ok(out)
}

/// Parses `--preprocess SPEC` (text form or `@FILE.json`).
pub(crate) fn parse_preprocess(spec: Option<&str>) -> anyhow::Result<Option<Preprocess>> {
    spec.map(|s| Preprocess::parse_arg(s).map_err(|e| anyhow::anyhow!("--preprocess '{s}': {e}")))
        .transpose()
}

/// Refuses a `--preprocess` that no data given with `flags` would use (none is an image folder).
pub(crate) fn check_preprocess_used(
    pre: Option<&str>,
    data: &[(&str, Option<&Path>)],
) -> anyhow::Result<()> {
    let Some(spec) = pre else { return Ok(()) };
    for (_, p) in data {
        if let Some(p) = p {
            if data::is_image_dir(p)? {
                return Ok(());
            }
        }
    }
    let given: Vec<String> = data
        .iter()
        .filter_map(|(f, p)| p.map(|p| format!("{f} {}", p.display())))
        .collect();
    bail!(
        "--preprocess '{spec}' applies to image folders, but {} {}",
        if given.is_empty() {
            "no data is given".to_string()
        } else {
            given.join(" and ")
        },
        if given.len() > 1 {
            "are not image folders"
        } else if given.is_empty() {
            ""
        } else {
            "is not an image folder"
        }
    )
}
