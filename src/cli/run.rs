//! `qrange run`: execute a model with tract on a data set and write the outputs.

use super::flags::{check_preprocess_used, parse_pins, parse_preprocess, parse_shapes};
use super::{Bars, Outcome};
use crate::data::{self, Sample};
use crate::exec::{Session, SessionOptions};
use crate::ir::{Model, Tensor};
use crate::pipeline::inputs::{input_specs, load_data, sample_shapes, specialise};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::PathBuf;
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

/// `--pin` pairs as tensors for `m`'s inputs.
pub(crate) fn pins(m: &Model, flags: &[String]) -> anyhow::Result<BTreeMap<String, Tensor>> {
    crate::passes::pin_inputs::pin_tensors(m, &parse_pins(flags)?)
        .map_err(|(name, e)| anyhow::anyhow!("--pin {name}: {e}"))
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let mut paths = crate::fsx::Paths::new();
    super::read_model(&mut paths, "the model", &a.model);
    paths.read("the --data", &a.data);
    super::read_preprocess(&mut paths, a.preprocess.as_deref());
    paths.write("-o", &a.output);
    paths.check()?;
    let t0 = Instant::now();
    let mut m = crate::onnx::read_model(&a.model)?;
    let pins = pins(&m, &a.pin)?;
    let shapes = parse_shapes(&a.shape)?;
    let specs = input_specs(&m, &pins);
    check_preprocess_used(a.preprocess.as_deref(), &[("--data", Some(&a.data))])?;
    let pre = parse_preprocess(a.preprocess.as_deref())?;
    let mut ds = load_data("--data", &a.data, &specs, pre.as_ref(), &Bars::new(false))?;
    if let Some(n) = a.samples {
        if n == 0 {
            bail!("--samples 0: nothing to run");
        }
        ds.truncate(n);
    }
    let first = ds.first()?;
    let notes = specialise(&mut m, &pins, &sample_shapes(&first, &shapes))
        .with_context(|| format!("{}: specialising the model", a.model.display()))?;
    // Weights still in their side file stay there: the engine reads them itself.
    let (proto, _) = crate::onnx::engine_proto(&m)?;
    drop(m);
    let opts = SessionOptions {
        taps: a.tap.clone(),
        ..Default::default()
    };
    let session = Session::new(
        &proto,
        Some(&crate::onnx::base_dir(&a.model)),
        &first,
        &opts,
    )
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
