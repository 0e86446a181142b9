//! The `qrange` binary: parses arguments, runs the command, maps the outcome to an
//! exit code (0 ok, 1 a quality gate failed, 2 error; 130/143 when SIGINT/SIGTERM ended it,
//! its temporary files removed).

use std::process::ExitCode;

fn main() -> ExitCode {
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
