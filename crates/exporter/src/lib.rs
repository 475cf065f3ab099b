//! exporter: imgbake's last stage and the one place that runs `qemu-img convert`.
//!
//! Main entry points:
//! - [`export()`] with an [`ExportRequest`] runs `qemu-img check` and `qemu-img convert` to
//!   sparse RAW (and compressed qcow2), reports [`ExportEvent`]s, hashes the outputs with
//!   [`digest::Sha256`], writes `SHA256SUMS` and returns an [`ExportOutput`];
//! - [`flatten()`] with a [`FlattenRequest`] turns a qcow2 and its backing chain into one
//!   standalone qcow2;
//! - [`export_staged`] does the same but leaves the outputs under temp names in a
//!   [`StagedExport`], to be verified and then published ([`StagedExport::publish`]) or set
//!   aside as failed ([`StagedExport::set_aside`]); [`measure`] tells the space a source needs;
//! - [`OutputLock`] locks an output directory for one build and removes dead builds' temp files;
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
mod lock;
mod manifest;
mod payload;
mod process;

pub use checksum::write_sha256sums;
pub use error::{Error, Result};
pub use export::{
    ExportEvent, ExportFormat, ExportOutput, ExportRequest, ExportedFile, Stage, StagedExport,
    export, export_staged, export_staged_with, measure,
};
pub use flatten::{FlattenRequest, flatten};
pub use lock::{LOCK_FILE, OutputLock};
pub use manifest::{BaseImage, ManifestInput, StepRecord, write_manifest};
pub use payload::{GpuSpec, PayloadSpec, build_payload, semver, write_payload};

/// Writes `bytes` to `path` atomically, mapping a failure to [`Error::Write`] (or
/// [`Error::NoSpace`]).
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    digest::write_atomic(path, bytes).map_err(write_error(path, Some(bytes.len() as u64)))
}

/// Maps a failed write of `path` to [`Error::NoSpace`] when the file system is full, else to
/// [`Error::Write`].
pub(crate) fn write_error(
    path: &std::path::Path,
    needed: Option<u64>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| match digest::NoSpace::from_io(&path, needed, &source) {
        Some(full) => Error::NoSpace(full),
        None => Error::Write { path, source },
    }
}

/// `qemu-img` failing with "No space left on device" (or a used-up quota) while writing
/// `target` becomes [`Error::NoSpace`]; other errors pass through. Call it after the partial
/// file is removed, so the free space reported is what is really free.
pub(crate) fn no_space_from_tool(e: Error, target: &std::path::Path, needed: Option<u64>) -> Error {
    match &e {
        Error::ToolFailed { stderr, .. }
            if stderr.contains("No space left on device")
                || stderr.contains("Disk quota exceeded") =>
        {
            Error::NoSpace(digest::NoSpace::now(target, needed))
        }
        _ => e,
    }
}

/// Gives the complete file `tmp` the name `target`: fsync of the file, rename, fsync of the
/// directory, so after a crash the name holds the whole file or is absent.
pub(crate) fn persist(tmp: &std::path::Path, target: &std::path::Path) -> Result<()> {
    let err = write_error(target, None);
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(tmp, target))
        .and_then(|()| {
            digest::fsync_dir(match target.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            })
        })
        .map_err(err)
}

/// A fresh hidden temp name beside `target`, `.<name>.<random>.partial`, created empty (mode
/// 0644 less the umask, as the final file gets). The random part keeps two builds writing the
/// same output from overwriting each other's partial files.
pub(crate) fn partial_path(target: &std::path::Path) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let write_err = |source| write_error(target, None)(source);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.into_temp_path().keep().map_err(|e| write_err(e.error))
}

#[cfg(test)]
mod tests {
    #[test]
    fn partial_names_are_unique_hidden_and_beside_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("img.raw");
        let a = super::partial_path(&target).unwrap();
        let b = super::partial_path(&target).unwrap();
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert_eq!(p.parent(), Some(dir.path()));
            let n = p.file_name().unwrap().to_str().unwrap();
            assert!(n.starts_with(".img.raw.") && n.ends_with(".partial"), "{n}");
        }
    }
}
