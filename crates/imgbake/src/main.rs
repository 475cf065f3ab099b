//! `imgbake`: bake VM disk images for GPU clouds.
//!
//! This file only parses the command line, dispatches, and turns an error into one report and
//! an exit code. Each command lives in `commands/<name>.rs`; `report.rs` owns exit codes and
//! error rendering; `output.rs` owns colour.

mod cli;
mod commands;
mod output;
mod render;
mod report;
mod signals;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are "errors" to clap; they print to stdout and succeed.
            let status = if err.use_stderr() {
                report::ExitStatus::Usage
            } else {
                report::ExitStatus::Success
            };
            let _ = err.print();
            return status.into();
        }
    };
    output::init_logging(cli.global.verbose);
    let out = output::Output::new(cli.global.color);
    match commands::run(cli.command, &out) {
        Ok(status) => status.into(),
        Err(err) => report::report(&err, &out).into(),
    }
}
