//! Errors the binary reports, their exit codes, and how they are printed.
//!
//! Every failure is printed once, to stderr: `error: <message>`, then each cause on its own
//! `caused by:` line, then `try: <hint>`. Recipe problems print each located diagnostic with
//! its snippet. To add an error source, add a variant to [`CliError`] and an arm to
//! [`CliError::exit_status`] / [`CliError::hint`].

use std::io::{self, Write};
use std::process::ExitCode;

use crate::output::{Output, Paint};

/// The documented exit codes (listed in every command's `--help` under EXIT STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: success.
    Success,
    /// 1: an error not listed below (I/O, internal).
    Failure,
    /// 2: bad command line.
    Usage,
    /// 3: a recipe is invalid.
    InvalidRecipe,
    /// 4: a build step failed.
    StepFailed,
    /// 5: the build VM or the guest failed (QEMU died, KVM error, SSH or cloud-init).
    VmFailed,
    /// 6: the image failed offline verification.
    VerifyFailed,
    /// 7: the image failed its boot test (`imgbake test`, `recipe --test`).
    TestFailed,
    /// 129: stopped by SIGHUP (the terminal went away).
    HungUp,
    /// 130: interrupted (Ctrl-C, SIGINT).
    Interrupted,
    /// 143: stopped by SIGTERM (CI cancellation, Kubernetes).
    Terminated,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::InvalidRecipe => 3,
            ExitStatus::StepFailed => 4,
            ExitStatus::VmFailed => 5,
            ExitStatus::VerifyFailed => 6,
            ExitStatus::TestFailed => 7,
            ExitStatus::HungUp => 129,
            ExitStatus::Interrupted => 130,
            ExitStatus::Terminated => 143,
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        ExitCode::from(status.code())
    }
}

/// The EXIT STATUS section of `--help` (a macro so `concat!` can use it).
macro_rules! exit_status_help {
    () => {
        concat!(
            "EXIT STATUS:\n",
            "    0  success\n",
            "    1  an error not listed below (I/O, a full disk, a busy output directory)\n",
            "    2  bad command line or environment (unknown flag, malformed --var, a secret not set)\n",
            "    3  a recipe is invalid (each problem is printed with file:line:col and a fix)\n",
            "    4  a build step failed (its last lines, log and how to resume are printed)\n",
            "    5  the build VM or guest failed (QEMU exited, KVM error, SSH or cloud-init)\n",
            "    6  the image failed offline verification (kept as <name>.raw.failed)\n",
            "    7  the image failed its boot test (the failed checks are named)\n",
            "  129  stopped by SIGHUP; 130 by Ctrl-C (SIGINT); 143 by SIGTERM (finished steps keep\n",
            "       their checkpoints; a second signal kills QEMU at once)\n",
        )
    };
}
pub(crate) use exit_status_help;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Loading or querying a recipe failed.
    #[error(transparent)]
    Recipe(#[from] recipe::Error),
    /// Writing to stdout failed (other than a closed pipe).
    #[error("cannot write to standard output")]
    Stdout(#[source] io::Error),
    /// Serialising JSON output failed.
    #[error("cannot write JSON output")]
    Json(#[source] serde_json::Error),
    /// A build failed.
    #[error("build failed")]
    Bake(#[source] Box<pipeline::Error>),
    /// Two recipes given at once have the same name (their outputs would collide).
    #[error("two recipes are named `{0}`; their outputs would collide")]
    DuplicateRecipeName(String),
    /// `--resume-from` with several recipes.
    #[error("--resume-from takes a single recipe")]
    ResumeWithSeveralRecipes,
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    /// No cache directory could be found.
    #[error("no cache directory: {0}")]
    CacheDir(String),
    /// Fetching a base image failed.
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    /// The checkpoint store refused or failed (`imgbake cache`).
    #[error(transparent)]
    CacheStore(pipeline::cache::StoreError),
    /// `imgbake cache gc RECIPE` cannot tell which checkpoints the recipe makes today.
    #[error(transparent)]
    GcKeys(Box<crate::commands::cache::Failure>),
    /// `imgbake verify` could not read the image.
    #[error("cannot verify the image")]
    Verify(#[source] inspect::Error),
    /// `imgbake export` failed.
    #[error("export failed")]
    Export(#[source] exporter::Error),
    /// The image booted (or tried to) and failed checks of `imgbake test`.
    #[error("the image failed its boot test: {}", failed.join(", "))]
    TestFailed {
        /// The failed rows' names.
        failed: Vec<String>,
    },
}

impl CliError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            CliError::Recipe(recipe::Error::BadVarOverride { .. }) => ExitStatus::Usage,
            CliError::Recipe(recipe::Error::Read { .. } | recipe::Error::Invalid { .. }) => {
                ExitStatus::InvalidRecipe
            }
            CliError::Recipe(_) => ExitStatus::Usage,
            CliError::Bake(e) => bake_exit_status(e),
            CliError::DuplicateRecipeName(_) | CliError::ResumeWithSeveralRecipes => {
                ExitStatus::Usage
            }
            CliError::Fetch(fetch::Error::Cancelled) => crate::signals::interrupted_status(),
            CliError::TestFailed { .. } => ExitStatus::TestFailed,
            CliError::Stdout(_)
            | CliError::Json(_)
            | CliError::Runtime(_)
            | CliError::CacheDir(_)
            | CliError::Fetch(_)
            | CliError::Export(_)
            | CliError::Verify(_)
            | CliError::CacheStore(_)
            | CliError::GcKeys(_) => ExitStatus::Failure,
        }
    }

    pub fn hint(&self) -> Option<String> {
        if let Some(full) = self.no_space() {
            return Some(no_space_hint(full, matches!(self, CliError::Bake(_))));
        }
        if let Some((dir, _)) = self.output_busy() {
            return Some(format!(
                "wait for that build to finish, or build into another directory with --output DIR (not {})",
                dir.display()
            ));
        }
        match self {
            CliError::Recipe(e) => e.hint(),
            CliError::Bake(e) => bake_hint(e),
            CliError::DuplicateRecipeName(_) => Some("give each recipe a distinct `name:`".into()),
            CliError::ResumeWithSeveralRecipes => Some("resume one recipe at a time".into()),
            CliError::CacheDir(_) => Some("pass --cache-dir DIR or set IMGBAKE_CACHE_DIR".into()),
            CliError::Fetch(e) => fetch_hint(e),
            CliError::CacheStore(e) => pipeline::cache::store_hint(e),
            CliError::GcKeys(_) => Some(
                "fetch its base image first (`imgbake fetch RECIPE`), or leave the recipe out"
                    .into(),
            ),
            CliError::Verify(inspect::Error::ReadLive { .. }) => Some(
                "run on a GPU host with the nvidia module loaded, or point --proc at a directory laid out like /proc"
                    .into(),
            ),
            CliError::Verify(_) => Some(
                "check that IMAGE is a RAW or qcow2 disk image with a GPT/MBR and an ext4 root"
                    .into(),
            ),
            CliError::Export(_) => Some(
                "check the source with `qemu-img info` and that the output directory is writable"
                    .into(),
            ),
            CliError::TestFailed { failed } => Some(if failed.iter().any(|f| f == "boot") {
                "the guest never answered over SSH as a new machine; boot it with `imgbake boot` or read the serial log".into()
            } else {
                "each FAIL row above says why; fix the recipe's cleanup step (imgbake verify IMAGE shows what the image carries offline) and rebuild".into()
            }),
            CliError::Stdout(_) | CliError::Json(_) | CliError::Runtime(_) => None,
        }
    }

    /// The full file system behind this error, from whichever stage met it.
    pub fn no_space(&self) -> Option<&digest::NoSpace> {
        match self {
            CliError::Bake(e) => e.no_space(),
            CliError::Fetch(e) => e.no_space(),
            CliError::Export(e) => e.no_space(),
            _ => None,
        }
    }

    /// The output directory another build holds, and who holds it.
    fn output_busy(&self) -> Option<(&std::path::Path, &str)> {
        let exporter = match self {
            CliError::Bake(e) => match &**e {
                pipeline::Error::OutputDir { source } => source,
                _ => return None,
            },
            CliError::Export(e) => e,
            _ => return None,
        };
        match exporter {
            exporter::Error::OutputBusy { dir, holder } => Some((dir, holder)),
            _ => None,
        }
    }

    /// A closed stdout (`imgbake plan … | head`) is not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            CliError::Stdout(e) => e.kind() == io::ErrorKind::BrokenPipe,
            CliError::Json(e) => e.io_error_kind() == Some(io::ErrorKind::BrokenPipe),
            _ => false,
        }
    }
}

/// Maps a stdout write error.
pub fn stdout_err(e: io::Error) -> CliError {
    CliError::Stdout(e)
}

/// Prints `err` once (with its causes and hint) and returns its exit status.
pub fn report(err: &CliError, out: &Output) -> ExitStatus {
    if err.is_broken_pipe() {
        return ExitStatus::Success;
    }
    let paint = out.stderr();
    let mut stderr = io::stderr().lock();
    let _ = match err {
        CliError::Recipe(recipe::Error::Invalid { diagnostics, .. }) => {
            write_diagnostics(&mut stderr, diagnostics, paint)
        }
        CliError::Bake(bake) if matches!(**bake, pipeline::Error::StepFailed(_)) => {
            write_step_failure(&mut stderr, bake, err.hint(), paint)
        }
        _ => write_error(&mut stderr, err, err.hint(), paint),
    };
    err.exit_status()
}

/// One failed item of a command that goes on with the others (`fetch A B`): `label:`, then
/// the error as [`report`] prints it. Returns its exit status.
pub fn report_item(label: &str, err: &CliError, out: &Output) -> ExitStatus {
    let _ = writeln!(io::stderr().lock(), "{label}:");
    report(err, out)
}

/// `error: …`, `caused by: …` for each source, `try: …`.
pub fn write_error(
    w: &mut dyn Write,
    err: &dyn std::error::Error,
    hint: Option<String>,
    paint: Paint,
) -> io::Result<()> {
    writeln!(w, "{} {err}", paint.error("error:"))?;
    let mut source = err.source();
    while let Some(cause) = source {
        writeln!(w, "  caused by: {cause}")?;
        source = cause.source();
    }
    if let Some(hint) = hint {
        writeln!(w, "{} {hint}", paint.hint("try:"))?;
    }
    Ok(())
}

/// `register` / `upload` refusing a plain-http URL: the error, the flag that allows it, exit 2
/// (the command line asks for something only a flag permits).
pub fn refuse_plain_http(err: &publish::Error, out: &Output) -> ExitStatus {
    let hint = "use an https:// URL, or pass --insecure-http if plain http is meant (a test \
                server on this machine)";
    let _ = write_error(
        &mut io::stderr().lock(),
        err,
        Some(hint.to_owned()),
        out.stderr(),
    );
    ExitStatus::Usage
}

/// Each diagnostic: `error: file:line:col: message`, the snippet, `try: hint`; a blank line
/// between them.
pub fn write_diagnostics(
    w: &mut dyn Write,
    diagnostics: &[recipe::Diagnostic],
    paint: Paint,
) -> io::Result<()> {
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            writeln!(w)?;
        }
        writeln!(w, "{} {d}", paint.error("error:"))?;
        if let Some(snippet) = &d.snippet {
            writeln!(w, "{}", paint.dim(snippet))?;
        }
        if let Some(hint) = &d.hint {
            writeln!(w, "{} {hint}", paint.hint("try:"))?;
        }
    }
    Ok(())
}

/// `try:` for a full file system: how much to free, or where else to write (and, for a
/// build, that nothing finished is lost).
fn no_space_hint(full: &digest::NoSpace, build: bool) -> String {
    let free = match full.shortfall() {
        Some(n) => format!("free {}", digest::ByteSize(n)),
        None => "free some space".to_owned(),
    };
    let rerun = if build {
        "; a rerun reuses every finished checkpoint"
    } else {
        ""
    };
    format!(
        "{free} on the file system of {}, or use --output/--cache-dir elsewhere{rerun}",
        full.path.display()
    )
}

fn bake_exit_status(err: &pipeline::Error) -> ExitStatus {
    use pipeline::Error as E;
    match err {
        E::Recipe { .. } => ExitStatus::Usage,
        E::NoCheckpoint { .. } => ExitStatus::Usage,
        E::StepFailed(_) => ExitStatus::StepFailed,
        E::Interrupted { .. } => crate::signals::interrupted_status(),
        E::Vm { .. } | E::Guest { .. } | E::CloudInitNeverRan { .. } => ExitStatus::VmFailed,
        _ => ExitStatus::Failure,
    }
}

fn bake_hint(err: &pipeline::Error) -> Option<String> {
    use pipeline::Error as E;
    match err {
        E::Recipe { source } => source.hint(),
        E::NoCheckpoint { missing, .. } => Some(format!(
            "run the build without --resume-from first (or --resume-from {missing}), so the earlier steps get checkpoints"
        )),
        E::StepFailed(f) => Some(format!(
            "fix the script, then rerun the same command: steps before {} are reused from their checkpoints (or add --resume-from {}); add --keep-on-failure to get a shell in the VM when it fails",
            f.id, f.id
        )),
        E::Interrupted { .. } => {
            Some("rerun the same command: finished steps are reused from their checkpoints".into())
        }
        E::Vm { source } if source.is_kvm_failure() => {
            Some("KVM cannot run this guest here; use --accel tcg".into())
        }
        E::Vm { .. } | E::Guest { .. } | E::CloudInitNeverRan { .. } => Some(
            "read the serial log named above; -v shows more; --accel tcg if KVM misbehaves".into(),
        ),
        E::Fetch { .. } => Some(
            "check the recipe's base url and checksum, or use --offline with a cached image".into(),
        ),
        _ => None,
    }
}

/// A failed step: what failed, its last lines, where the logs are, how to resume.
fn write_step_failure(
    w: &mut dyn Write,
    err: &pipeline::Error,
    hint: Option<String>,
    paint: Paint,
) -> io::Result<()> {
    let pipeline::Error::StepFailed(f) = err else {
        return write_error(w, err, hint, paint);
    };
    writeln!(
        w,
        "{} step {} ({}) failed: {}",
        paint.error("error:"),
        f.id,
        f.name,
        f.exit
    )?;
    if !f.last_lines.is_empty() {
        writeln!(w, "  last {} lines of its output:", f.last_lines.len())?;
        for line in &f.last_lines {
            writeln!(w, "    {line}")?;
        }
    }
    writeln!(w, "  step log:   {}", f.log.display())?;
    writeln!(w, "  serial log: {}", f.serial_log.display())?;
    if let Some(hint) = hint {
        writeln!(w, "{} {hint}", paint.hint("try:"))?;
    }
    Ok(())
}

fn fetch_hint(err: &fetch::Error) -> Option<String> {
    use fetch::Error as E;
    Some(match err {
        E::NoCacheDir => "pass --cache-dir DIR or set IMGBAKE_CACHE_DIR".into(),
        E::OfflineMiss { .. } => "run the same command once without --offline".into(),
        E::OfflineSums { .. } => {
            "run once without --offline (that saves the list), or use a sha256: checksum".into()
        }
        E::Mismatch { .. } => {
            "check the recipe's checksum; the image may have been updated upstream".into()
        }
        E::SumsMissing { .. } | E::SumsMalformed { .. } | E::SumsConflict { .. } => {
            "check that the base url's file name is listed in the checksum file".into()
        }
        E::CacheDamaged { path, .. } => format!("rm {} and fetch again", path.display()),
        E::Http { .. } => "check the network and the url; run again to resume".into(),
        E::Status { status, .. } if status.as_u16() == 404 => {
            "check the url (for Ubuntu: codename and release)".into()
        }
        E::Cancelled => "run again to resume the download".into(),
        _ => return None,
    })
}
