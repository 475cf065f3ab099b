//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while exporting an image or writing its files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An external program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An external program failed; `stderr` is the tail of what it printed.
    #[error("`{command}` failed ({status}): {stderr}")]
    ToolFailed {
        /// The command line (program and arguments).
        command: String,
        /// Exit status as text.
        status: String,
        /// Last lines of its standard error.
        stderr: String,
    },
    /// An external program printed output that could not be understood.
    #[error("cannot understand the output of `{command}`")]
    ToolOutput {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `qemu-img check` found corruption in the source image.
    #[error("`qemu-img check` found {corruptions} corruption(s) in {path}; refusing to export it")]
    SourceCorrupt {
        /// The source image.
        path: PathBuf,
        /// Number of corruptions reported.
        corruptions: u64,
    },
    /// The operation was cancelled through its token.
    #[error("export of {path} was cancelled")]
    Cancelled {
        /// The file being produced.
        path: PathBuf,
    },
    /// Writing an output file failed.
    #[error("cannot write {path}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading a file to hash it failed.
    #[error("cannot hash {path}")]
    Hash {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: digest::HashError,
    },
    /// A value could not be turned into JSON.
    #[error("cannot serialize {what} as JSON")]
    Json {
        /// What was being serialized.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file system of an output is full, or would be: the path, the space needed, the
    /// space free.
    #[error(transparent)]
    NoSpace(#[from] digest::NoSpace),
    /// Another build holds the output directory's lock.
    #[error("the output directory {} is in use by another build ({holder})", dir.display())]
    OutputBusy {
        /// The output directory.
        dir: PathBuf,
        /// Who holds it, as its lock file says (`pid 1234: imgbake recipe x, since …`).
        holder: String,
    },
    /// A background task died.
    #[error("background task for {what} failed")]
    Task {
        /// What the task did.
        what: &'static str,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The full file system behind this error, if that is what it is.
    pub fn no_space(&self) -> Option<&digest::NoSpace> {
        match self {
            Error::NoSpace(full) => Some(full),
            _ => None,
        }
    }
}
