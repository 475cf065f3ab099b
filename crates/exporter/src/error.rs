//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while exporting or verifying an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image file could not be opened or probed.
    #[error("cannot open image {path}")]
    OpenImage {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
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
        source: io::Error,
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
