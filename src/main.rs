//! The `qrange` binary: parses arguments, runs the command, maps the outcome to an
//! exit code (0 ok, 1 a quality gate failed, 2 error; 130/143 when SIGINT/SIGTERM ended it,
//! its temporary files removed).

use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_broken_pipe();
    if let Err(e) = qrange::fsx::clean_up_on_signals() {
        eprintln!("warning: cannot watch for SIGINT/SIGTERM ({e}): an interrupted write may leave a temporary file");
    }
    match qrange::cli::main_with_args(std::env::args_os()) {
        Ok(qrange::cli::Outcome::Ok) => ExitCode::SUCCESS,
        Ok(qrange::cli::Outcome::GateFailed) => ExitCode::from(1),
        Err(e) => {
            qrange::cli::print_error(&e);
            ExitCode::from(2)
        }
    }
}

/// Standard output closed by its reader (`qrange inspect m.onnx | head`) makes `println!`
/// panic; that is the reader's choice, not a failure: stop quietly with exit code 0. Files are
/// written before their summary is printed, so nothing is left half-written.
fn quiet_broken_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        previous(info)
    }));
}
