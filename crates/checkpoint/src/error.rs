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
    /// A layer file could not be hashed.
    #[error("checkpoint store: cannot hash a layer")]
    Hash(#[from] digest::HashError),
    /// [`CheckpointStore::apply`](crate::CheckpointStore::apply) was called on a store opened without
    /// [`CheckpointStore::open_exclusive`](crate::CheckpointStore::open_exclusive): a running build could be using what it removes.
    #[error("the checkpoint store {path} must be opened exclusively to remove checkpoints")]
    NotExclusive {
        /// The store's directory.
        path: PathBuf,
    },
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
    /// The store's file system is full: the path, the space needed (when known), the space
    /// free. Nothing half-written is published.
    #[error(transparent)]
    NoSpace(#[from] digest::NoSpace),
    /// The store is locked by a running build (for operations that need it to themselves).
    #[error("the checkpoint store {path} is in use by a running build")]
    Busy {
        /// The store's lock file.
        path: PathBuf,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The full file system behind this error, if that is what it is.
    pub fn no_space(&self) -> Option<&digest::NoSpace> {
        match self {
            Error::NoSpace(full) => Some(full),
            _ => None,
        }
    }
}

/// Maps an `io::Error` to this crate's `Error::Io` with what was being done and to which path
/// (`.map_err(io_err("reading", &path))`), or to `Error::NoSpace` when the file system is
/// full. `pipeline::error` has the same helper on purpose: each crate
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
