//! Command line: clap definitions and one file per subcommand. The only module that prints.

mod calibrate;
mod compare;
mod convert;
mod inspect;
mod lint;
mod passes;
mod quantize;
mod run;

use clap::{Parser, Subcommand};
use std::ffi::OsString;

/// How a successful command ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The work ran but a requested quality gate was not met (exit code 1).
    GateFailed,
}

#[derive(Parser, Debug)]
#[command(
    name = "qrange",
    version,
    about = "Quantizing compiler for ONNX models",
    long_about = "qrange reads an ONNX model, chooses quantization ranges from calibration data, \
                  inserts QuantizeLinear/DequantizeLinear nodes and writes a model that ONNX Runtime \
                  runs with integer kernels. It executes the model before and after with tract and \
                  reports what quantization cost.",
    after_help = "Examples:\n  qrange inspect fixtures/ppocr_cls/model.onnx\n  \
                  qrange convert in.onnx out.onnx --external-data 1024\n  \
                  qrange run fixtures/ppocr_cls/model.onnx --data fixtures/ppocr_cls/eval.npz -o out.npz\n  \
                  qrange lint model.int8.onnx\n  \
                  qrange compare model.onnx model.int8.onnx --data eval.npz --per-tensor\n  \
                  qrange passes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    Inspect(inspect::Args),
    Convert(convert::Args),
    Passes(passes::Args),
    Run(run::Args),
    Quantize(Box<quantize::Args>),
    Calibrate(calibrate::Args),
    Merge(calibrate::MergeArgs),
    Lint(lint::Args),
    Compare(compare::Args),
}

/// Parses `args` and runs the command.
pub fn main_with_args<I, T>(args: I) -> anyhow::Result<Outcome>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                print!("{e}");
                return Ok(Outcome::Ok);
            }
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ")
                .to_string();
            anyhow::bail!("{first} (see 'qrange --help')");
        }
    };
    match cli.cmd {
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Convert(a) => convert::run(a),
        Cmd::Passes(a) => passes::run(a),
        Cmd::Run(a) => run::run(a),
        Cmd::Quantize(a) => quantize::run(*a),
        Cmd::Calibrate(a) => calibrate::run(a),
        Cmd::Merge(a) => calibrate::merge(a),
        Cmd::Lint(a) => lint::run(a),
        Cmd::Compare(a) => compare::run(a),
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(crate) fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Prints an error: a complete first line, then its causes indented.
pub fn print_error(e: &anyhow::Error) {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// Refuses to write `out` over `input` (same path or same file).
pub(crate) fn check_not_input(
    input: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let same = input == out
        || match (input.canonicalize(), out.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
    if same {
        anyhow::bail!(
            "output path '{}' is the input model: refusing to overwrite the input",
            out.display()
        );
    }
    Ok(())
}
