//! `qrange lint`: which node units of a QDQ model the runtime fuses into integer
//! kernels, and why the others stay float.

use super::flags::{PlatformArg, TargetArg};
use super::Outcome;
use crate::lint::{self, Coverage, FusionReport, LintOptions};
use anyhow::bail;
use serde::Serialize;
use std::path::PathBuf;

/// Report, for a model with QuantizeLinear/DequantizeLinear nodes (from qrange or any other
/// quantizer), which node units the runtime turns into integer kernels (QLinearConv, QGemm,
/// MatMulIntegerToFloat, …), which data-movement ops lose their Q/DQ pair, and why every
/// other unit stays float.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    qrange lint model.int8.onnx\n  \
    qrange lint model.int8.onnx --target tensorrt\n  \
    qrange lint model.int8.onnx --platform arm64 --json")]
pub struct Args {
    /// The quantized model.
    model: PathBuf,
    /// Runtime whose fusion rules to apply.
    #[arg(long, value_enum, default_value = "ort-cpu")]
    target: TargetArg,
    /// CPU the model is deployed on (ONNX Runtime runs int8 activations through
    /// Conv/MatMul kernels only on arm64).
    #[arg(long, value_enum, default_value = "x86-64")]
    platform: PlatformArg,
    /// Also print what the runtime changes on the way (shared DQ copied, Q/DQ propagated, …).
    #[arg(short, long)]
    verbose: bool,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Json<'a> {
    model: String,
    #[serde(flatten)]
    report: &'a FusionReport,
    coverage: Coverage,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let m = crate::onnx::read_model(&a.model)?;
    let opts = LintOptions {
        target: a.target.into(),
        platform: a.platform.into(),
    };
    let report =
        lint::lint(&m, &opts).map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    if !report.has_qdq() {
        bail!(
            "'{}' has no QuantizeLinear or DequantizeLinear nodes: nothing to lint (quantize it first, e.g. with 'qrange quantize')",
            a.model.display()
        );
    }
    let coverage = report.coverage();
    if a.json {
        let j = Json {
            model: a.model.display().to_string(),
            report: &report,
            coverage,
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(Outcome::Ok);
    }
    println!("model      {}", a.model.display());
    let platform = report
        .platform
        .map(|p| format!(" on {p}"))
        .unwrap_or_default();
    println!(
        "target     {}{platform}; {} QuantizeLinear, {} DequantizeLinear",
        lint::target_name(report.target),
        report.quantize_nodes,
        report.dequantize_nodes
    );
    if !report.units.is_empty() {
        let wn = report
            .units
            .iter()
            .map(|u| u.node.chars().count())
            .max()
            .unwrap_or(4)
            .clamp(4, 40);
        let wo = report
            .units
            .iter()
            .map(|u| u.op_type.len())
            .max()
            .unwrap_or(2)
            .max(2);
        println!();
        println!(
            "{:<wn$}  {:<wo$}  {:<7}  kernel or reason",
            "node", "op", "verdict"
        );
        for u in &report.units {
            let node: String = if u.node.chars().count() > wn {
                let head: String = u.node.chars().take(wn - 1).collect();
                format!("{head}…")
            } else {
                u.node.clone()
            };
            println!(
                "{node:<wn$}  {:<wo$}  {:<7}  {}",
                u.op_type,
                u.verdict.label(),
                u.verdict.detail()
            );
            for w in &u.warnings {
                println!("{:wn$}  warning: {w}", "");
            }
            if a.verbose {
                for n in &u.notes {
                    println!("{:wn$}  note: {n}", "");
                }
            }
        }
        println!();
    }
    println!("{}", coverage.line);
    for n in &report.notes {
        println!("note: {n}");
    }
    Ok(Outcome::Ok)
}
