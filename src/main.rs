//! The binary: parse arguments, hand over to the library, map the outcome to an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = basiq_health::cli::Cli::parse();
    let outcome = basiq_health::cli::run(cli);
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = basiq_health::cli::exit_code(&err);
            eprintln!("basiq-health: {}", basiq_health::cli::describe(&err));
            ExitCode::from(code)
        }
    }
}
