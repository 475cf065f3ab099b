use std::io;
use std::path::PathBuf;

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory of the store could not be read or written.
    #[error("checkpoint store: cannot {action} {path}")]
    Io {
        /// What was being done ("create", "read", "rename", …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A checkpoint key is not 64 lower-case hex digits.
    #[error("invalid checkpoint key `{0}` (expected 64 hex digits)")]
    InvalidKey(String),
    /// A layer record could not be encoded.
    #[error("cannot encode the record of checkpoint {key}")]
    Encode {
        /// The layer's key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `qemu-img` could not be run.
    #[error("cannot run qemu-img to check {path}")]
    QemuImgSpawn {
        /// The image being checked.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The store is locked by a running build (for operations that need it to themselves).
    #[error("the checkpoint store {path} is in use by a running build")]
    Busy {
        /// The store's lock file.
        path: PathBuf,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
