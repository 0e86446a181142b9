//! `qrange convert`: decode and re-encode a model (external data, lossless round trip),
//! optionally raising its opset first.

use super::Outcome;
use crate::onnx::ExternalPolicy;
use std::path::PathBuf;
use std::time::Instant;

/// Decode a model and write it back: a lossless round trip, optionally moving
/// initializers to (or from) external data.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  qrange convert in.onnx out.onnx\n  \
    qrange convert in.onnx out.onnx --external-data 1024   # tensors >= 1 KiB to out.onnx.data\n  \
    qrange convert in.onnx out.onnx --inline               # pull external data back in\n  \
    qrange convert in.onnx out.onnx --opset 13             # upgrade ai.onnx to opset 13")]
pub struct Args {
    /// Input model.
    input: PathBuf,
    /// Output model (never the input).
    output: PathBuf,
    /// Write every initializer of at least BYTES bytes to `<output>.data`.
    #[arg(long, value_name = "BYTES", conflicts_with = "inline")]
    external_data: Option<u64>,
    /// Write every tensor inline (default: tensors read from external data stay external).
    #[arg(long)]
    inline: bool,
    /// Raise the model's ai.onnx opset to N (7..=21) before writing, converting every operator
    /// whose definition changed; fails naming the node when one cannot be converted. A model
    /// already at N or above is written unchanged.
    #[arg(long, value_name = "N")]
    opset: Option<i64>,
    /// Print how long reading, decoding and encoding+writing took.
    #[arg(long)]
    timings: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let mut paths = crate::fsx::Paths::new();
    super::read_model(&mut paths, "the input model", &a.input);
    super::write_model(&mut paths, "the output", &a.output);
    paths.check()?;
    let t0 = Instant::now();
    let bytes =
        std::fs::read(&a.input).map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
    let t_read = t0.elapsed();
    let base = crate::onnx::external::base_dir(&a.input);
    let t1 = Instant::now();
    let mut m = crate::onnx::decode_model(&bytes, &base, &a.input)?;
    drop(bytes);
    let t_decode = t1.elapsed();
    if let Some(n) = a.opset {
        let r = crate::passes::upgrade_opset::upgrade(&mut m, n)
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
        m.verify()
            .map_err(|e| anyhow::anyhow!("{}: after the opset upgrade: {e}", a.input.display()))?;
        print_upgrade(&r);
    }
    let policy = match (a.external_data, a.inline) {
        (Some(n), _) => ExternalPolicy::Threshold(n),
        (None, true) => ExternalPolicy::Inline,
        (None, false) => ExternalPolicy::Keep,
    };
    let t2 = Instant::now();
    let r = crate::onnx::write_model(&m, &a.output, &policy)?;
    let t_write = t2.elapsed();
    println!(
        "wrote {} ({} bytes{})",
        a.output.display(),
        r.model_bytes,
        match &r.external {
            Some((p, n)) => format!(", external data {} ({n} bytes)", p.display()),
            None => String::new(),
        }
    );
    if r.forced_external {
        println!("note: the model passes protobuf's 2 GiB limit inline, so initializers went to external data");
    }
    if a.timings {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "timings: read {:.1} ms, decode {:.1} ms, encode+write {:.1} ms",
            ms(t_read),
            ms(t_decode),
            ms(t_write)
        );
    }
    Ok(Outcome::Ok)
}

fn print_upgrade(r: &crate::passes::upgrade_opset::UpgradeReport) {
    let Some(from) = r.from else {
        println!(
            "opset: already at ai.onnx {} or above, nothing to upgrade",
            r.to
        );
        return;
    };
    let ir = |v: Option<i64>| v.map_or("unset".to_string(), |v| v.to_string());
    println!(
        "opset: ai.onnx {from} -> {}, ir_version {} -> {}",
        r.to,
        ir(r.ir_version.0),
        ir(r.ir_version.1)
    );
    for ((op, v), n) in &r.converted {
        println!("  converted {n:>4} x {op} (changed at {v})");
    }
    let kept: usize = r.kept.values().map(|(n, _)| n).sum();
    if kept > 0 {
        println!(
            "  kept as they were: {kept} node-versions whose change keeps their meaning \
             ({} operators)",
            r.kept
                .keys()
                .map(|(op, _)| op)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
    }
    for f in &r.functions {
        println!("  local function {f}: ai.onnx import raised");
    }
}
