//! `qrange convert`: decode and re-encode a model (external data, lossless round trip).

use super::Outcome;
use crate::onnx::ExternalPolicy;
use std::path::PathBuf;
use std::time::Instant;

/// Decode a model and write it back: a lossless round trip, optionally moving
/// initializers to (or from) external data.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  qrange convert in.onnx out.onnx\n  \
    qrange convert in.onnx out.onnx --external-data 1024   # tensors >= 1 KiB to out.onnx.data\n  \
    qrange convert in.onnx out.onnx --inline               # pull external data back in")]
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
    /// Print how long reading, decoding and encoding+writing took.
    #[arg(long)]
    timings: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    super::check_not_input(&a.input, &a.output)?;
    let t0 = Instant::now();
    let bytes =
        std::fs::read(&a.input).map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
    let t_read = t0.elapsed();
    let base = match a.input.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let t1 = Instant::now();
    let m = crate::onnx::decode_model(&bytes, &base, &a.input)?;
    drop(bytes);
    let t_decode = t1.elapsed();
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
