//! The `regtally` binary: parse flags, run, map the result to SPEC §10's exit status.

use clap::Parser;
use regtally::cli::{run, Cli};
use regtally::cmd::flags::UsageError;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("regtally: {e:#}");
            if e.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
