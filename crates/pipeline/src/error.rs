use std::io;
use std::path::PathBuf;

use recipe::StepId;

/// A step that failed, with what a person needs to act on it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepFailure {
    /// Step id.
    pub id: String,
    /// Step name.
    pub name: String,
    /// How it ended ("exit 3", "timed out after 30s", "killed by signal KILL").
    pub exit: String,
    /// The exit code, when it exited.
    pub exit_code: Option<u32>,
    /// Its last lines of output.
    pub last_lines: Vec<String>,
    /// Its full log.
    pub log: PathBuf,
    /// The serial console log.
    pub serial_log: PathBuf,
}

/// Errors of a build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The recipe was rejected (bad `--resume-from` id and the like).
    #[error("recipe")]
    Recipe {
        /// The cause.
        #[source]
        source: recipe::Error,
    },
    /// The base image could not be fetched.
    #[error("fetching the base image")]
    Fetch {
        /// The cause.
        #[source]
        source: fetch::Error,
    },
    /// The checkpoint store failed.
    #[error("checkpoint store")]
    Checkpoint {
        /// The cause.
        #[source]
        source: checkpoint::Error,
    },
    /// `--resume-from` needs a checkpoint that does not exist.
    #[error(
        "cannot resume from step {resume_from}: there is no checkpoint after step {missing}{}",
        if discarded.is_empty() { String::new() } else { format!(" ({})", discarded.join("; ")) }
    )]
    NoCheckpoint {
        /// The step asked for.
        resume_from: StepId,
        /// The first step whose checkpoint is missing.
        missing: StepId,
        /// The step right before `resume_from`.
        before: StepId,
        /// Broken checkpoints thrown away on the way.
        discarded: Vec<String>,
    },
    /// The VM failed (QEMU died, KVM error, guest stopped, …).
    #[error("virtual machine")]
    Vm {
        /// The cause.
        #[source]
        source: Box<qemu_driver::Error>,
    },
    /// The cloud-init seed could not be written.
    #[error("writing the cloud-init seed")]
    Seed {
        /// The cause.
        #[source]
        source: seed::SeedError,
    },
    /// SSH to the guest failed.
    #[error("guest session")]
    Guest {
        /// The cause.
        #[source]
        source: Box<provisioner::Error>,
    },
    /// cloud-init never ran in the guest, so the seed was not applied.
    #[error("cloud-init never ran in the guest: {detail} (serial log: {})", serial_log.display())]
    CloudInitNeverRan {
        /// What `cloud-init status` said.
        detail: String,
        /// The serial console log.
        serial_log: PathBuf,
    },
    /// A step failed.
    #[error("step {} ({}) failed: {}", .0.id, .0.name, .0.exit)]
    StepFailed(Box<StepFailure>),
    /// The build was interrupted (Ctrl-C).
    #[error("interrupted{}", match last_checkpoint { Some(id) => format!("; the last checkpoint is after step {id}"), None => String::new() })]
    Interrupted {
        /// The last step whose checkpoint is published.
        last_checkpoint: Option<String>,
    },
    /// Export or verification of the result failed.
    #[error("export")]
    Export {
        /// The cause.
        #[source]
        source: exporter::Error,
    },
    /// The output directory could not be locked (another build holds it) or prepared.
    #[error("output directory")]
    OutputDir {
        /// The cause.
        #[source]
        source: exporter::Error,
    },
    /// A file system under the output or the cache is full, or would be.
    #[error(transparent)]
    NoSpace(#[from] digest::NoSpace),
    /// The offline verification could not read the exported image.
    #[error("verify")]
    Verify {
        /// The cause.
        #[source]
        source: inspect::Error,
    },
    /// A file of the build could not be written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The full file system behind this error (the output's or the cache's), wherever in the
    /// build it was met.
    pub fn no_space(&self) -> Option<&digest::NoSpace> {
        match self {
            Error::NoSpace(full) => Some(full),
            Error::Export { source } | Error::OutputDir { source } => source.no_space(),
            Error::Fetch { source } => source.no_space(),
            Error::Checkpoint { source } => source.no_space(),
            _ => None,
        }
    }
}

/// Maps an `io::Error` to this crate's `Error::Io` with what was being done and to which path
/// (`.map_err(io_err("reading", &path))`), or to `Error::NoSpace` when the file system is
/// full. `checkpoint::error` has the same helper on purpose: each crate
/// builds its own error type, and a shared generic version would need a trait both error
/// enums implement, more machinery than these eight lines.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| match digest::NoSpace::from_io(&path, None, &source) {
        Some(full) => Error::NoSpace(full),
        None => Error::Io {
            action,
            path,
            source,
        },
    }
}

impl From<checkpoint::Error> for Error {
    fn from(source: checkpoint::Error) -> Self {
        Error::Checkpoint { source }
    }
}
impl From<qemu_driver::Error> for Error {
    fn from(source: qemu_driver::Error) -> Self {
        Error::Vm {
            source: Box::new(source),
        }
    }
}
impl From<provisioner::Error> for Error {
    fn from(source: provisioner::Error) -> Self {
        Error::Guest {
            source: Box::new(source),
        }
    }
}
impl From<fetch::Error> for Error {
    fn from(source: fetch::Error) -> Self {
        Error::Fetch { source }
    }
}
impl From<exporter::Error> for Error {
    fn from(source: exporter::Error) -> Self {
        Error::Export { source }
    }
}
impl From<inspect::Error> for Error {
    fn from(source: inspect::Error) -> Self {
        Error::Verify { source }
    }
}
impl From<seed::SeedError> for Error {
    fn from(source: seed::SeedError) -> Self {
        Error::Seed { source }
    }
}
