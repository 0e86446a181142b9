//! `qrange calibrate` and `qrange merge`: calibration statistics as files, so calibration
//! can run in shards on several machines and be merged exactly.

use super::flags::check_preprocess_used;
use super::quantize::{common, CommonArgs};
use super::{Bars, Outcome};
use crate::calib::CalibrationFile;
use crate::pipeline::calibrate::Shard;
use std::path::PathBuf;

/// `--shard INDEX/COUNT`: INDEX from 0 to COUNT - 1.
fn parse_shard(s: &str) -> Result<Shard, String> {
    let bad = || format!("'{s}' is not INDEX/COUNT with 0 <= INDEX < COUNT (e.g. 0/4)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let index: usize = i.trim().parse().map_err(|_| bad())?;
    let count: usize = n.trim().parse().map_err(|_| bad())?;
    if count == 0 || index >= count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// Collect calibration statistics (no quantization) and write them as JSON. Files of the
/// same model and options merge exactly with `qrange merge`; `qrange quantize --ranges`
/// reads them.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    qrange calibrate model.onnx --calib part1.npz -o part1.json\n  \
    qrange calibrate model.onnx --calib part2.npz -o part2.json\n  \
    qrange merge part1.json part2.json -o all.json\n  \
    qrange quantize model.onnx --ranges all.json --eval eval.npz -o model.int8.onnx\n  \
    # one task of a Slurm job array over one data file:\n  \
    qrange calibrate model.onnx --calib all.npz \\\n      \
    --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT -o part$SLURM_ARRAY_TASK_ID.json")]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Calibrate on part INDEX (from 0) of COUNT contiguous, near-equal parts of the data
    /// only, as one task of an array job (Slurm: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT;
    /// a Kubernetes indexed Job: $JOB_COMPLETION_INDEX/COUNT); `qrange merge` of the COUNT
    /// files equals one run on all the data.
    #[arg(long, value_name = "INDEX/COUNT", value_parser = parse_shard)]
    pub shard: Option<Shard>,
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
    let file = crate::pipeline::calibrate::statistics(
        &common(c, None, false)?,
        a.shard,
        &Bars::new(c.json),
    )?;
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
                "shard": a.shard.map(|s| format!("{}/{}", s.index, s.count)),
                "tensors": file.tensors.len(),
                "model_sha256": file.model_sha256,
                "warnings": warnings,
            })
        );
    } else {
        println!(
            "wrote {}: statistics of {} tensors over {} samples{}",
            a.output.display(),
            file.tensors.len(),
            file.samples,
            a.shard
                .map(|s| format!(" (shard {}/{})", s.index, s.count))
                .unwrap_or_default()
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
