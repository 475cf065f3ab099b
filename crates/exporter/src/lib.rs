//! exporter: imgbake's last stage and the one place that runs `qemu-img convert`.
//!
//! Main entry points:
//! - [`export()`] with an [`ExportRequest`] runs `qemu-img check` and `qemu-img convert` to
//!   sparse RAW (and compressed qcow2), reports [`ExportEvent`]s, hashes the outputs with
//!   [`digest::Sha256`], writes `SHA256SUMS` and returns an [`ExportOutput`];
//! - [`flatten()`] with a [`FlattenRequest`] turns a qcow2 and its backing chain into one
//!   standalone qcow2;
//! - [`write_sha256sums`] writes the `SHA256SUMS` file `sha256sum -c` reads;
//! - [`write_manifest`] and [`build_payload`]/[`write_payload`] produce `manifest.json` and
//!   `api-payload.json` from plain input types ([`ManifestInput`], [`PayloadSpec`]) and the
//!   [`inspect::GuestFacts`] read from the image.
//!
//! Offline verification of the result lives in the `inspect` crate (`inspect::verify`); this
//! crate only reads the facts type from there. Every file is written through
//! [`digest::write_atomic`]/[`digest::AtomicFile`] or a temp name renamed when complete. The
//! crate never prints: progress comes as events, results as data, failures as [`Error`].
#![warn(missing_docs)]

mod checksum;
mod error;
mod export;
mod flatten;
mod manifest;
mod payload;
mod process;

pub use checksum::write_sha256sums;
pub use error::{Error, Result};
pub use export::{
    ExportEvent, ExportFormat, ExportOutput, ExportRequest, ExportedFile, Stage, export,
};
pub use flatten::{FlattenRequest, flatten};
pub use manifest::{BaseImage, ManifestInput, StepRecord, write_manifest};
pub use payload::{GpuSpec, PayloadSpec, build_payload, write_payload};

/// Writes `bytes` to `path` atomically, mapping a failure to [`Error::Write`].
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    digest::write_atomic(path, bytes).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}
