//! `imgbake validate RECIPE...`: load each recipe, report every problem.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::cli::VarArgs;
use crate::output::Output;
use crate::report::{self, CliError, ExitStatus, exit_status_help, stdout_err};

pub const LONG_ABOUT: &str = "\
Check recipes for errors without building anything.

Each recipe is parsed and fully resolved: every key is checked against the schema, every \
{{var}} is substituted, sizes and durations are read, every step's script must exist and be \
named NN-what.sh with ascending, unique ids, and checksums and URLs must be well-formed. \
Nothing is downloaded and no VM is started.

For each valid recipe `ok <file>` is printed on stdout. For an invalid one every problem is \
printed on stderr as `error: file:line:col: message`, with the offending line, a caret under \
the problem and a `try:` line saying how to fix it.";

pub const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    imgbake validate recipes/*.yaml\n",
    "    imgbake validate recipes/nvidia-fw1.yaml --var nvidia_driver_branch=580\n",
    "    imgbake validate --json recipes/gpu-ready.yaml | jq '.recipes[].ok'\n",
    "\n",
    exit_status_help!(),
    "\n",
    "With several recipes, the exit status is 3 if any of them is invalid.\n",
);

/// `imgbake validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Recipe files to check
    #[arg(required = true, value_name = "RECIPE")]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Print one JSON document on stdout instead of text: {"recipes": [{"path", "ok",
    /// "problems": [{"file", "line", "column", "kind", "message", "hint"}]}]}
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct JsonReport {
    recipes: Vec<JsonRecipe>,
}

#[derive(Serialize)]
struct JsonRecipe {
    path: String,
    ok: bool,
    problems: Vec<JsonProblem>,
}

#[derive(Serialize)]
struct JsonProblem {
    file: String,
    line: u64,
    column: u64,
    kind: &'static str,
    message: String,
    hint: Option<String>,
}

fn problems(err: &recipe::Error) -> Vec<JsonProblem> {
    match err {
        recipe::Error::Invalid { diagnostics, .. } => diagnostics
            .iter()
            .map(|d| JsonProblem {
                file: d.file.display().to_string(),
                line: d.position.line,
                column: d.position.column,
                kind: d.kind.as_str(),
                message: d.message.clone(),
                hint: d.hint.clone(),
            })
            .collect(),
        other => vec![JsonProblem {
            file: String::new(),
            line: 0,
            column: 0,
            kind: "read",
            message: other.to_string(),
            hint: other.hint(),
        }],
    }
}

pub fn run(args: &ValidateArgs, out: &Output) -> Result<ExitStatus, CliError> {
    let mut stdout = std::io::stdout().lock();
    let mut results = Vec::new();
    let mut failed = 0usize;
    for path in &args.recipes {
        let result = recipe::Recipe::load(path, &args.vars.vars);
        if result.is_err() {
            failed += 1;
        }
        results.push((path, result));
    }

    if args.json {
        let doc = JsonReport {
            recipes: results
                .iter()
                .map(|(path, result)| JsonRecipe {
                    path: path.display().to_string(),
                    ok: result.is_ok(),
                    problems: result.as_ref().err().map(problems).unwrap_or_default(),
                })
                .collect(),
        };
        serde_json::to_writer_pretty(&mut stdout, &doc).map_err(CliError::Json)?;
        writeln!(stdout).map_err(stdout_err)?;
    } else {
        let mut stderr = std::io::stderr().lock();
        let mut first_error = true;
        for (path, result) in &results {
            match result {
                Ok(_) => writeln!(stdout, "{} {}", out.stdout().ok("ok"), path.display())
                    .map_err(stdout_err)?,
                Err(err) => {
                    if !first_error {
                        let _ = writeln!(stderr);
                    }
                    first_error = false;
                    let _ = match err {
                        recipe::Error::Invalid { diagnostics, .. } => {
                            report::write_diagnostics(&mut stderr, diagnostics, out.stderr())
                        }
                        other => {
                            report::write_error(&mut stderr, other, other.hint(), out.stderr())
                        }
                    };
                }
            }
        }
        if failed > 0 && results.len() > 1 {
            let _ = writeln!(
                stderr,
                "\n{} of {} recipes are invalid",
                failed,
                results.len()
            );
        }
    }
    Ok(if failed > 0 {
        ExitStatus::InvalidRecipe
    } else {
        ExitStatus::Success
    })
}
