//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that makes an image unreadable. Whatever is found *inside* a readable image is a
/// check in the report, not an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the running driver (`/proc/driver/nvidia/…`, `--nvidia-smi`) could not be
    /// read for `verify --live`.
    #[error("cannot read {path} (is the nvidia module loaded? --proc points at another /proc)")]
    ReadLive {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image file could not be opened or probed.
    #[error("cannot open image {path}")]
    OpenImage {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A qcow2's backing chain leaves the image's own directory, and that was not allowed
    /// ([`crate::OpenOptions::allow_backing`]): the image would make us read any file it names.
    #[error(
        "image {image} is backed by {backing}, outside the image's directory; \
         pass --allow-backing to read it anyway"
    )]
    BackingOutside {
        /// The image given.
        image: PathBuf,
        /// The backing file it names (resolved).
        backing: PathBuf,
    },
    /// The image is in a format this crate does not read.
    #[error("image {path} is {format}, which cannot be inspected (convert it to raw or qcow2)")]
    UnsupportedFormat {
        /// The image.
        path: PathBuf,
        /// What the image looks like.
        format: &'static str,
    },
    /// Reading from the image failed (truncated file, broken qcow2 chain, I/O error).
    #[error("cannot read {len} bytes at offset {offset} of image {path}")]
    ReadImage {
        /// The image.
        path: PathBuf,
        /// Byte offset in the virtual disk.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Neither a GPT, an MBR nor a bare ext4 filesystem was found.
    #[error(
        "image {path} has no partition table (neither GPT nor MBR) and no bare ext4 filesystem"
    )]
    NoPartitionTable {
        /// The image.
        path: PathBuf,
    },
    /// The GPT is present but unreadable.
    #[error("cannot read the GPT of image {path}")]
    Gpt {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: gpt::GptError,
    },
    /// No ext4 partition looks like a root filesystem.
    #[error(
        "image {path} has no root filesystem (no ext4 partition labelled cloudimg-rootfs or holding /etc/os-release)"
    )]
    NoRootFs {
        /// The image.
        path: PathBuf,
    },
    /// A partition that claims to be ext4 could not be opened.
    #[error("cannot open the ext4 filesystem in partition {partition} of image {path}")]
    Ext4 {
        /// The image.
        path: PathBuf,
        /// Partition number (1-based, as in `/dev/sda1`; 0 for a bare filesystem).
        partition: u32,
        /// The cause.
        #[source]
        source: ext4_view::Ext4Error,
    },
    /// A file inside the image could not be read.
    #[error("cannot read {file} inside the image")]
    ReadGuestFile {
        /// Path inside the guest.
        file: String,
        /// The cause.
        #[source]
        source: ext4_view::Ext4Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
