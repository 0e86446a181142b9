//! `qrange run`: execute a model with tract on a data set and write the outputs.

use super::Outcome;
use crate::data::{self, Dataset, InputSpec, Preprocess, Sample};
use crate::exec::{Session, SessionOptions};
use crate::ir::{Dim, Model, Tensor, ValueType};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Run a model with tract on every sample of a data set and write its outputs as .npz
/// (one array per output, samples stacked on axis 0, like the input layout).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    qrange run fixtures/ppocr_cls/model.onnx --data fixtures/ppocr_cls/eval.npz -o out.npz\n  \
    qrange run fixtures/silero_vad/model.onnx --data fixtures/silero_vad/eval.npz --pin sr=16000 -o vad.npz\n  \
    qrange run model.onnx --data test_data_set_0 -o out.npz --tap conv1_out")]
pub struct Args {
    /// The model file.
    model: PathBuf,
    /// Input data: .npz / .npy (axis 0 = sample), an ONNX test_data_set folder, or a folder
    /// of images (with --preprocess).
    #[arg(long)]
    data: PathBuf,
    /// How image files become the model input, e.g. `resize=192x48,scale=255,mean=0.5,std=0.5`.
    #[arg(long, value_name = "SPEC", long_help = super::PREPROCESS_HELP)]
    preprocess: Option<String>,
    /// Where to write the outputs (.npz).
    #[arg(short, long)]
    output: PathBuf,
    /// Fix a model input to a constant, e.g. `sr=16000` (comma-separated for a list).
    /// `If` nodes whose condition then becomes constant are folded.
    #[arg(long, value_name = "NAME=VALUE")]
    pin: Vec<String>,
    /// Concrete input shape, e.g. `input=1,576` (default: the shape of the first sample).
    #[arg(long, value_name = "NAME=DIMS")]
    shape: Vec<String>,
    /// Also return this intermediate value (repeatable).
    #[arg(long, value_name = "VALUE")]
    tap: Vec<String>,
    /// Run only the first N samples.
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
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

/// Loads the data given with `flag`; an image folder needs a preprocessing.
pub(crate) fn load_data(
    flag: &str,
    path: &Path,
    specs: &[InputSpec],
    pre: Option<&Preprocess>,
) -> anyhow::Result<Dataset> {
    let images = data::is_image_dir(path)?;
    if images && pre.is_none() {
        bail!(
            "{flag} {} holds images: give --preprocess SPEC to say how they become the model input, e.g. --preprocess resize=224x224,scale=255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225 (see --help)",
            path.display()
        );
    }
    let ds = data::load_with(path, specs, if images { pre } else { None })?;
    if let (true, Some(pre)) = (images, pre) {
        let first = ds.first()?;
        let input = first.iter().next();
        let (name, t) = input.expect("an image sample holds the fed input");
        let mut note = format!(
            "note: {flag} {}: {} images as input '{name}' {}[{}] ({pre})",
            path.display(),
            ds.len(),
            t.dtype(),
            t.shape()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        if !ds.skipped.is_empty() {
            let names: Vec<&str> = ds.skipped.iter().map(|(n, _)| n.as_str()).collect();
            note.push_str(&format!("; skipped {}: {}", names.len(), names.join(", ")));
        }
        eprintln!("{note}");
    }
    Ok(ds)
}

/// Parses `NAME=VALUE` pairs.
fn split_pair<'a>(s: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() && !v.is_empty() => Ok((n, v)),
        _ => bail!("--{what} '{s}' is not of the form NAME=VALUE"),
    }
}

/// Parses `--pin NAME=VALUE` against the model input's declared type.
pub(crate) fn parse_pins(m: &Model, pins: &[String]) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for p in pins {
        let (name, val) = split_pair(p, "pin")?;
        let g = &m.graph;
        let v = g
            .inputs
            .iter()
            .copied()
            .find(|v| g.value(*v).name == name && g.value(*v).init.is_none())
            .ok_or_else(|| {
                anyhow::anyhow!("--pin {name}: the model has no input named '{name}'")
            })?;
        let (dtype, dims) = match &g.value(v).ty {
            Some(ValueType::Tensor { dtype, shape }) => (*dtype, shape.clone()),
            _ => bail!("--pin {name}: input '{name}' is not a typed tensor"),
        };
        let nums: Vec<f64> = val
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--pin {name}: '{val}' is not a number list"))?;
        let shape: Vec<usize> = match dims {
            Some(d) if d.is_empty() && nums.len() == 1 => vec![],
            Some(d)
                if d.iter().all(|x| matches!(x, Dim::Known(_)))
                    && d.iter()
                        .map(|x| {
                            if let Dim::Known(k) = x {
                                *k as usize
                            } else {
                                0
                            }
                        })
                        .product::<usize>()
                        == nums.len() =>
            {
                d.iter()
                    .map(|x| {
                        if let Dim::Known(k) = x {
                            *k as usize
                        } else {
                            0
                        }
                    })
                    .collect()
            }
            _ if nums.len() == 1 => vec![],
            _ => vec![nums.len()],
        };
        let t = Tensor::from_f64(dtype, &shape, &nums)
            .map_err(|e| anyhow::anyhow!("--pin {name}: {e}"))?;
        out.insert(name.to_string(), t);
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

/// The model's real inputs (not initializers), minus the pinned ones, as data specs.
pub(crate) fn input_specs(m: &Model, skip: &BTreeMap<String, Tensor>) -> Vec<InputSpec> {
    let g = &m.graph;
    g.inputs
        .iter()
        .filter(|v| g.value(**v).init.is_none() && !skip.contains_key(&g.value(**v).name))
        .map(|v| {
            let val = g.value(*v);
            let (dtype, shape) = match &val.ty {
                Some(ValueType::Tensor { dtype, shape }) => (
                    *dtype,
                    shape.as_ref().map(|d| {
                        d.iter()
                            .map(|x| match x {
                                Dim::Known(k) if *k >= 0 => Some(*k as usize),
                                _ => None,
                            })
                            .collect()
                    }),
                ),
                _ => (crate::ir::DType::F32, None),
            };
            InputSpec::new(val.name.clone(), dtype, shape)
        })
        .collect()
}

/// Specialises `m` for pinned inputs and concrete shapes (folds `If` nodes whose
/// condition becomes constant) and returns the notes to show.
pub(crate) fn specialize(
    m: &mut Model,
    pins: &BTreeMap<String, Tensor>,
    shapes: &BTreeMap<String, Vec<i64>>,
) -> anyhow::Result<Vec<String>> {
    let mut cx = crate::passes::PassCx {
        pinned: pins.clone(),
        input_shapes: shapes.clone(),
        ..Default::default()
    };
    crate::passes::specialize(m, &mut cx)?;
    Ok(cx
        .diagnostics
        .iter()
        .map(|d| format!("{}: {}", d.pass, d.what))
        .collect())
}

/// Shapes of the first sample, overridden by `--shape`.
pub(crate) fn sample_shapes(
    sample: &Sample,
    given: &BTreeMap<String, Vec<i64>>,
) -> BTreeMap<String, Vec<i64>> {
    let mut s: BTreeMap<String, Vec<i64>> = sample
        .iter()
        .map(|(k, t)| (k.clone(), t.shape().iter().map(|&d| d as i64).collect()))
        .collect();
    for (k, v) in given {
        s.insert(k.clone(), v.clone());
    }
    s
}

fn base_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    super::check_not_input(&a.model, &a.output)?;
    super::check_not_input(&a.data, &a.output)?;
    let t0 = Instant::now();
    let mut m = crate::onnx::read_model(&a.model)?;
    let pins = parse_pins(&m, &a.pin)?;
    let shapes = parse_shapes(&a.shape)?;
    let specs = input_specs(&m, &pins);
    check_preprocess_used(a.preprocess.as_deref(), &[("--data", Some(&a.data))])?;
    let pre = parse_preprocess(a.preprocess.as_deref())?;
    let mut ds = load_data("--data", &a.data, &specs, pre.as_ref())?;
    if let Some(n) = a.samples {
        if n == 0 {
            bail!("--samples 0: nothing to run");
        }
        ds.truncate(n);
    }
    let first = ds.first()?;
    let notes = specialize(&mut m, &pins, &sample_shapes(&first, &shapes))
        .with_context(|| format!("{}: specialising the model", a.model.display()))?;
    let (proto, _) = crate::onnx::encode_model(&m, &crate::onnx::ExternalPolicy::Inline, "")?;
    let opts = SessionOptions {
        taps: a.tap.clone(),
        ..Default::default()
    };
    let session = Session::new(&proto, Some(&base_dir(&a.model)), &first, &opts)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    let load_time = t0.elapsed();
    let bar = super::progress(ds.len() as u64, "running");
    let t1 = Instant::now();
    let mut outs: Vec<Sample> = Vec::with_capacity(ds.len());
    for (i, s) in ds.iter().enumerate() {
        let s = s?;
        let o = session
            .run(&s)
            .map_err(|e| anyhow::anyhow!("{}: sample {i}: {e}", a.model.display()))?;
        outs.push(o);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let run_time = t1.elapsed();
    let stacked = data::stack(&outs)?;
    data::write_npz(&a.output, &stacked)?;
    println!(
        "ran {} samples of {} in {:.2} ms/sample (load {:.0} ms)",
        outs.len(),
        a.model.display(),
        run_time.as_secs_f64() * 1e3 / outs.len() as f64,
        load_time.as_secs_f64() * 1e3
    );
    for (k, t) in &stacked {
        println!("  {k}: {}{:?}", t.dtype(), t.shape());
    }
    for n in notes.iter().chain(session.notes().iter()) {
        println!("note: {n}");
    }
    println!("wrote {}", a.output.display());
    Ok(Outcome::Ok)
}
