//! `qrange convert`: decode and re-encode a model (external data, lossless round trip).

use super::Outcome;
use crate::onnx::ExternalPolicy;
use std::path::PathBuf;

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
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    super::check_not_input(&a.input, &a.output)?;
    let m = crate::onnx::read_model(&a.input)?;
    let policy = match (a.external_data, a.inline) {
        (Some(n), _) => ExternalPolicy::Threshold(n),
        (None, true) => ExternalPolicy::Inline,
        (None, false) => ExternalPolicy::Keep,
    };
    let r = crate::onnx::write_model(&m, &a.output, &policy)?;
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
    Ok(Outcome::Ok)
}
