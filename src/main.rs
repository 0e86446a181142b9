//! The `qrange` binary: parses arguments, runs the command, maps the outcome to an
//! exit code (0 ok, 1 a quality gate failed, 2 error).

use std::process::ExitCode;

fn main() -> ExitCode {
    match qrange::cli::main_with_args(std::env::args_os()) {
        Ok(qrange::cli::Outcome::Ok) => ExitCode::SUCCESS,
        Ok(qrange::cli::Outcome::GateFailed) => ExitCode::from(1),
        Err(e) => {
            qrange::cli::print_error(&e);
            ExitCode::from(2)
        }
    }
}
