//! `qemu-img convert -O qcow2` of a qcow2 and its backing chain into one standalone file.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::export::TempGuard;
use crate::process;
use crate::{Error, Result};

/// What to flatten.
#[derive(Debug, Clone)]
pub struct FlattenRequest {
    /// The top of the chain.
    pub source: PathBuf,
    /// The standalone qcow2 to write; it appears under this name only when complete.
    pub target: PathBuf,
    /// The `qemu-img` to run.
    pub qemu_img: PathBuf,
    /// Longest time the conversion may take.
    pub timeout: Duration,
}

impl FlattenRequest {
    /// `qemu-img` from `PATH`, a 4-hour limit.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        FlattenRequest {
            source: source.into(),
            target: target.into(),
            qemu_img: PathBuf::from("qemu-img"),
            timeout: Duration::from_secs(4 * 3600),
        }
    }
}

/// Writes `req.target`, a qcow2 without backing file holding what `req.source` (and its
/// backing chain) reads as. Uncompressed, so it stays fast to boot from and to layer on.
/// Checks the free space first (`qemu-img measure`; [`Error::NoSpace`] when short), writes
/// through a hidden temp name in the target's directory, fsynced and renamed when complete; on
/// cancel ([`Error::Cancelled`]), deadline or failure `qemu-img` is killed and the temp file
/// removed.
pub async fn flatten(req: &FlattenRequest, cancel: &CancellationToken) -> Result<PathBuf> {
    let needed = crate::measure(&req.qemu_img, &req.source, cancel).await?;
    if let Some(needed) = needed {
        let dir = match req.target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        digest::ensure_space(dir, needed)?;
    }
    let tmp = crate::partial_path(&req.target)?;
    let guard = TempGuard(Some(tmp.clone()));
    let args: Vec<OsString> = vec![
        "convert".into(),
        "-O".into(),
        "qcow2".into(),
        req.source.clone().into(),
        tmp.clone().into(),
    ];
    let ran = process::run(
        &req.qemu_img,
        &args,
        cancel,
        tokio::time::Instant::now() + req.timeout,
        &mut |_| {},
        &req.target,
        &[],
    )
    .await;
    if let Err(e) = ran {
        drop(guard);
        return Err(crate::no_space_from_tool(e, &req.target, needed));
    }
    let target = req.target.clone();
    let persisted = tokio::task::spawn_blocking(move || crate::persist(&tmp, &target))
        .await
        .map_err(|source| Error::Task {
            what: "renaming the flattened qcow2",
            source,
        })?;
    persisted?;
    std::mem::forget(guard);
    Ok(req.target.clone())
}
