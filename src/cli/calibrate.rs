//! `qrange calibrate` and `qrange merge`: calibration statistics as files, so calibration
//! can run in shards on several machines and be merged exactly.

use super::flags::check_preprocess_used;
use super::quantize::{common, CommonArgs};
use super::{Bars, Outcome};
use crate::calib::CalibrationFile;
use std::path::PathBuf;

/// Collect calibration statistics (no quantization) and write them as JSON. Files of the
/// same model and options merge exactly with `qrange merge`; `qrange quantize --ranges`
/// reads them.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    qrange calibrate model.onnx --calib part1.npz -o part1.json\n  \
    qrange calibrate model.onnx --calib part2.npz -o part2.json\n  \
    qrange merge part1.json part2.json -o all.json\n  \
    qrange quantize model.onnx --ranges all.json --eval eval.npz -o model.int8.onnx")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Where to write the statistics (JSON).
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let c = &a.common;
    let mut paths = crate::fsx::Paths::new();
    super::read_model(&mut paths, "the model", &c.model);
    if let Some(d) = &c.calib {
        super::read_data(&mut paths, "the --calib data", d);
    }
    super::read_preprocess(&mut paths, c.preprocess.as_deref());
    paths.write("-o", &a.output);
    paths.check()?;
    check_preprocess_used(
        c.preprocess.as_deref(),
        &[("--calib", c.calib.as_deref().map(std::path::Path::new))],
    )?;
    let file =
        crate::pipeline::calibrate::statistics(&common(c, None, false)?, &Bars::new(c.json))?;
    file.write(&a.output)?;
    let warnings = file.non_finite_warnings();
    for w in &warnings {
        super::quantize::warn(w);
    }
    if c.json {
        println!(
            "{}",
            serde_json::json!({
                "output": a.output.display().to_string(),
                "samples": file.samples,
                "tensors": file.tensors.len(),
                "model_sha256": file.model_sha256,
                "warnings": warnings,
            })
        );
    } else {
        println!(
            "wrote {}: statistics of {} tensors over {} samples",
            a.output.display(),
            file.tensors.len(),
            file.samples
        );
    }
    Ok(Outcome::Ok)
}

/// Merge calibration statistics files of the same model (exact: the result equals one run
/// over all their samples).
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Statistics files from `qrange calibrate`.
    #[arg(required = true, num_args = 2..)]
    inputs: Vec<PathBuf>,
    /// Merged file.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn merge(a: MergeArgs) -> anyhow::Result<Outcome> {
    let mut paths = crate::fsx::Paths::new();
    for i in &a.inputs {
        paths.read("a merged statistics file", i);
    }
    paths.write("-o", &a.output);
    paths.check()?;
    let mut acc = CalibrationFile::read(&a.inputs[0])?;
    for p in &a.inputs[1..] {
        let f = CalibrationFile::read(p)?;
        acc = CalibrationFile::merge(&acc, &f)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    acc.write(&a.output)?;
    println!(
        "wrote {}: {} tensors, {} samples from {} files",
        a.output.display(),
        acc.tensors.len(),
        acc.samples,
        a.inputs.len()
    );
    Ok(Outcome::Ok)
}
