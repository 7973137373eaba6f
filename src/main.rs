//! The `deltadrive` command line: parse, then hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use deltadrive::cli::{Cli, run};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deltadrive: {e:#}");
            ExitCode::FAILURE
        }
    }
}
