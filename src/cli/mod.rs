//! Command line: clap definitions and one file per subcommand. The only module that prints.

mod calibrate;
mod compare;
mod convert;
mod flags;
mod inspect;
mod lint;
mod passes;
mod quantize;
mod run;

use clap::{Parser, Subcommand};
use std::ffi::OsString;

/// `--help` text of `--preprocess` (shared by `quantize`, `calibrate` and `run`).
pub(crate) const PREPROCESS_HELP: &str = "\
How the images of an image folder (a --calib/--eval/--data folder of .png/.jpg/.jpeg files)
become the model input. Comma-separated KEY=VALUE items, or @FILE naming a JSON object with
the same keys (e.g. {\"resize\": \"192x48\", \"scale\": 255, \"mean\": [0.5, 0.5, 0.5]}):
  input=NAME           model input fed (required when the model has several inputs)
  resize=WxH           resize to W wide, H high: qrange's own bilinear filter, half-pixel
                       centres, no antialiasing (like OpenCV INTER_LINEAR); without it every
                       image keeps its size, which must match the model's
  keep-aspect          with resize: fit inside WxH keeping the aspect ratio and fill the
                       rest with pad=V (a pixel value 0-255, default 0), the image placed at
                       align=top-left (default) or align=center
  color=rgb|bgr|gray   channel order (default rgb); gray = 0.299 R + 0.587 G + 0.114 B
  layout=nchw|nhwc     channel axis (default nchw); a leading batch of 1 for rank-4 inputs
  scale=S              divide pixel values by S (255 maps them to [0, 1]; default 1)
  mean=M[,M,M]         subtracted after scale: one value, or one per output channel (default 0)
  std=S[,S,S]          divides after mean: one value, or one per output channel (default 1)
  dtype=f32|u8         default: the model input's; u8 feeds the rounded pixels
Each image: decode (alpha dropped, 16-bit reduced to 8) -> colour -> resize ->
(v / scale - mean) / std -> layout. Files are taken in name order, one sample each; other
files are skipped. Checked against the input's declared type (channels, H/W, batch, dtype).
Example: --preprocess resize=192x48,scale=255,mean=0.5,0.5,0.5,std=0.5,0.5,0.5";

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
                  qrange quantize fixtures/ppocr_cls/model.onnx --calib fixtures/ppocr_cls/images \\\n      \
                      --preprocess resize=192x48,scale=255,mean=0.5,std=0.5 -o cls.int8.onnx\n  \
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

/// The pipeline's progress on stderr: one bar per phase (hidden when stderr is not a
/// terminal, or with `--json`), messages and warnings as they come; IR dumps on stdout.
pub(crate) struct Bars {
    quiet: bool,
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    /// Standard output could not take a dump (closed by its reader, `| head`): later
    /// dumps are dropped and the run goes on.
    dumps_stopped: std::sync::atomic::AtomicBool,
}

impl Bars {
    pub(crate) fn new(quiet: bool) -> Bars {
        Bars {
            quiet,
            bar: std::sync::Mutex::new(None),
            dumps_stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn with(&self, f: impl FnOnce(&indicatif::ProgressBar)) {
        if let Some(b) = self.bar.lock().expect("progress bar lock").as_ref() {
            f(b);
        }
    }
}

impl crate::pipeline::Progress for Bars {
    fn begin(&self, what: &str, len: u64) {
        let bar = progress(len, what);
        if self.quiet {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        *self.bar.lock().expect("progress bar lock") = Some(bar);
    }

    fn position(&self, done: u64, total: u64) {
        self.with(|b| {
            b.set_length(total);
            b.set_position(done);
        });
    }

    fn step(&self) {
        self.with(|b| b.inc(1));
    }

    fn end(&self) {
        if let Some(b) = self.bar.lock().expect("progress bar lock").take() {
            b.finish_and_clear();
        }
    }

    fn message(&self, line: &str) {
        eprintln!("{line}");
    }

    fn warn(&self, what: &str) {
        quantize::warn(what);
    }

    /// A dump that standard output cannot take ends the dumps, not the run: with
    /// `--dump-after` the model is still written (a closed output then ends the command
    /// quietly when the summary is printed).
    fn dump(&self, step: &str, text: &str) {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        if self.dumps_stopped.load(Ordering::Relaxed) {
            return;
        }
        let mut out = std::io::stdout().lock();
        let written = writeln!(out, "; after pass {step}")
            .and_then(|()| out.write_all(text.as_bytes()))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            self.dumps_stopped.store(true, Ordering::Relaxed);
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                quantize::warn(&format!(
                    "--dump-after: cannot write to standard output ({e}); no more dumps"
                ));
            }
        }
    }
}

/// Prints an error as one line: `error: ` then the message and its causes joined by `: `
/// (a cause whose text the line already holds is not repeated; line breaks inside a
/// message become spaces).
pub fn print_error(e: &anyhow::Error) {
    eprintln!("error: {}", error_line(e));
}

/// The one-line form of an error and its causes (see [`print_error`]).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Adds a model file and every external data file it names to the files a command reads.
pub(crate) fn read_model(paths: &mut crate::fsx::Paths, what: &str, model: &std::path::Path) {
    paths.read(what, model);
    // A model that cannot be decoded is refused by the command itself, naming the file.
    for f in crate::onnx::external::referenced_files(model).unwrap_or_default() {
        paths.read(format!("external data of {what}"), &f);
    }
}

/// Adds a model output and the external data file written beside it (`<file name>.data`,
/// after following symbolic links) to the files a command writes.
pub(crate) fn write_model(paths: &mut crate::fsx::Paths, what: &str, out: &std::path::Path) {
    paths.write(what, out);
    let target = crate::fsx::resolve(out).unwrap_or_else(|_| out.to_path_buf());
    if let Some(name) = target.file_name() {
        let mut side = name.to_os_string();
        side.push(".data");
        paths.write(
            format!("the external data of {what}"),
            &target.with_file_name(side),
        );
    }
}

/// Adds a data argument (`random:N` reads no file).
pub(crate) fn read_data(paths: &mut crate::fsx::Paths, what: &str, spec: &str) {
    if !spec.starts_with("random:") {
        paths.read(what, std::path::Path::new(spec));
    }
}

/// Adds `--preprocess @FILE`.
pub(crate) fn read_preprocess(paths: &mut crate::fsx::Paths, spec: Option<&str>) {
    if let Some(file) = spec.and_then(|s| s.strip_prefix('@')) {
        paths.read("the --preprocess file", std::path::Path::new(file));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_print_as_one_line() {
        #[derive(Debug, thiserror::Error)]
        #[error("node 'n': {0}")]
        struct Inner(String);
        #[derive(Debug, thiserror::Error)]
        #[error("subgraph 'g': {source}")]
        struct Outer {
            #[source]
            source: Inner,
        }
        let e = anyhow::Error::new(Outer {
            source: Inner("bad\n  attribute".into()),
        })
        .context("m.onnx: calibration");
        assert_eq!(
            super::error_line(&e),
            "m.onnx: calibration: subgraph 'g': node 'n': bad attribute"
        );
    }
}
