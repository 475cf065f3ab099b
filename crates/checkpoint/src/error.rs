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
    /// [`CheckpointStore::apply`] was called on a store opened without
    /// [`CheckpointStore::open_exclusive`]: a running build could be using what it removes.
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
