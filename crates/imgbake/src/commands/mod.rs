//! One module per command. To add one: a file here with its `Args` struct and `run`, a variant
//! in `cli::Command`, and one line in [`run`].

pub mod boot;
pub mod cache;
pub mod export;
pub mod fetch;
pub mod plan;
pub mod recipe;
pub mod register;
pub mod test;
pub mod upload;
pub mod validate;
pub mod verify;

use crate::cli::Command;
use crate::output::Output;
use crate::report::{CliError, ExitStatus};

/// Runs the chosen command.
pub fn run(command: Command, out: &Output) -> Result<ExitStatus, CliError> {
    match command {
        Command::Recipe(args) => recipe::run(&args, out),
        Command::Validate(args) => validate::run(&args, out),
        Command::Plan(args) => plan::run(&args, out),
        Command::Fetch(args) => fetch::run(&args, out),
        Command::Verify(args) => verify::run(&args, out),
        Command::Export(args) => export::run(&args, out),
        Command::Upload(args) => upload::run(&args, out),
        Command::Register(args) => register::run(&args, out),
        Command::Cache(args) => cache::run(&args, out),
        Command::Boot(args) => boot::run(&args, out),
        Command::Test(args) => test::run(&args, out),
    }
}

/// A multi-threaded tokio runtime for commands that do async work.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// The cache directory a command uses: `--cache-dir`, else the default, made absolute. Layers
/// name their backing files by path, so a relative one would be read against whatever directory
/// QEMU or qemu-img resolve it from (the layer's own), not the one the user meant.
pub fn cache_dir(arg: Option<&std::path::Path>) -> Result<std::path::PathBuf, CliError> {
    let dir = match arg {
        Some(dir) => dir.to_path_buf(),
        None => default_cache_dir()?,
    };
    std::path::absolute(&dir).map_err(|e| CliError::CacheDir(format!("{}: {e}", dir.display())))
}

/// `$XDG_CACHE_HOME/imgbake` (or `~/.cache/imgbake`): base images under `base/`, checkpoints
/// under `checkpoints/`.
pub fn default_cache_dir() -> Result<std::path::PathBuf, CliError> {
    let base = ::fetch::BaseCache::default_dir().map_err(|e| CliError::CacheDir(e.to_string()))?;
    Ok(base
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or(base))
}
