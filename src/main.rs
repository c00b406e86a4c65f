//! `pot`: the command line. Flags become library calls here; no logic lives in this file
//! beyond turning arguments into options and results into output and exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // One line, the cause chain joined: what failed and what to do about it.
            eprintln!("pot: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
