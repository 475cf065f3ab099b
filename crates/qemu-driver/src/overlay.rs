//! qcow2 overlays made with the real `qemu-img`.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use digest::AtomicFile;
use serde::Deserialize;
use tokio::process::Command;

use crate::error::{Error, Result};

/// The `qemu-img` program used (from `PATH`).
pub const QEMU_IMG: &str = "qemu-img";

/// What `qemu-img info` says about an image (the fields imgbake needs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageInfo {
    /// Guest-visible size in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// Format (`qcow2`, `raw` …).
    pub format: String,
    /// Backing file name as written in the header, if any.
    #[serde(rename = "backing-filename")]
    pub backing_filename: Option<String>,
    /// Backing file name resolved against the image's directory, if any.
    #[serde(rename = "full-backing-filename")]
    pub full_backing_filename: Option<String>,
}

/// Runs `qemu-img ARGS` to the end (through [`child::spawn`]: own process group, killed with
/// imgbake) and returns its stdout.
async fn run_qemu_img(action: String, args: Vec<OsString>) -> Result<Vec<u8>> {
    let spawn_err = |source| Error::Spawn {
        program: QEMU_IMG.into(),
        source,
    };
    let mut command = Command::new(QEMU_IMG);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = child::spawn(command)
        .await
        .map_err(spawn_err)?
        .wait_with_output()
        .await
        .map_err(spawn_err)?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(Error::QemuImg {
            action,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `qemu-img create` into a temp file beside `overlay`, then renames it into place, so a
/// crash or a failed `qemu-img` never leaves a half-made overlay under the final name.
async fn create_renamed(
    action: String,
    overlay: &Path,
    mut args: Vec<OsString>,
    size: Option<u64>,
) -> Result<()> {
    let run_dir_err = |source| Error::RunDir {
        path: overlay.to_path_buf(),
        source,
    };
    let tmp = AtomicFile::create(overlay).map_err(run_dir_err)?;
    // qemu-img truncates and rewrites the file it is given, keeping its mode; 0644 is what
    // qemu-img gives a file it creates itself (under the usual umask).
    tmp.make_readable().map_err(run_dir_err)?;
    args.push(tmp.temp_path().as_os_str().to_owned());
    if let Some(size) = size {
        args.push(size.to_string().into());
    }
    // On error the temp file is dropped, which removes it.
    run_qemu_img(action, args).await?;
    tmp.commit().map_err(run_dir_err)
}

/// Creates `overlay`, a qcow2 image backed by the qcow2 `base`, optionally grown to `size`
/// bytes (`qemu-img create -f qcow2 -b BASE -F qcow2 OVERLAY [SIZE]`). The base is recorded as
/// an absolute path. A size smaller than the base is refused. Written to a temp name, then
/// renamed.
pub async fn create(base: &Path, overlay: &Path, size: Option<u64>) -> Result<()> {
    create_on(base, BaseFormat::Qcow2, overlay, size).await
}

/// The format of an overlay's backing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseFormat {
    /// qcow2 (bases, checkpoints).
    Qcow2,
    /// RAW (an exported image under `imgbake test`).
    Raw,
}

/// [`create`] on a base of either format: `imgbake test` boots an exported RAW image
/// read-only through a qcow2 overlay.
pub async fn create_on(
    base: &Path,
    format: BaseFormat,
    overlay: &Path,
    size: Option<u64>,
) -> Result<()> {
    let base = std::path::absolute(base).map_err(|source| Error::RunDir {
        path: base.to_path_buf(),
        source,
    })?;
    if let Some(size) = size {
        let info = info(&base).await?;
        if size < info.virtual_size {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "disk size {size} bytes is smaller than the base image {} ({} bytes)",
                    base.display(),
                    info.virtual_size
                ),
            });
        }
    }
    let args: Vec<OsString> = vec![
        "create".into(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-b".into(),
        base.clone().into_os_string(),
        "-F".into(),
        match format {
            BaseFormat::Qcow2 => "qcow2",
            BaseFormat::Raw => "raw",
        }
        .into(),
    ];
    let action = format!("create overlay {} on {}", overlay.display(), base.display());
    create_renamed(action, overlay, args, size).await
}

/// Creates `overlay` (qcow2, `size` bytes) whose header names `backing_name` as its qcow2
/// backing file **without opening it** (`qemu-img create -u`): the name may be where a
/// checkpoint will be published later. A relative `backing_name` is resolved by QEMU against
/// the overlay's directory, which keeps a cache directory relocatable.
pub async fn create_unattached(backing_name: &Path, overlay: &Path, size: u64) -> Result<()> {
    let args: Vec<OsString> = vec![
        "create".into(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-u".into(),
        "-b".into(),
        backing_name.as_os_str().to_owned(),
        "-F".into(),
        "qcow2".into(),
    ];
    let action = format!(
        "create overlay {} naming {} as backing file",
        overlay.display(),
        backing_name.display()
    );
    create_renamed(action, overlay, args, Some(size)).await
}

/// Rewrites the backing file name in `image`'s header to the qcow2 `backing` **without reading
/// either image** (`qemu-img rebase -u`): only for a backing file with the same content as the
/// one named before (a checkpoint's base that moved).
pub async fn rebase_unattached(image: &Path, backing: &Path) -> Result<()> {
    let args: Vec<OsString> = vec![
        "rebase".into(),
        "-q".into(),
        "-u".into(),
        "-f".into(),
        "qcow2".into(),
        "-b".into(),
        backing.as_os_str().to_owned(),
        "-F".into(),
        "qcow2".into(),
        image.as_os_str().to_owned(),
    ];
    let action = format!("rebase {} onto {}", image.display(), backing.display());
    run_qemu_img(action, args).await.map(drop)
}

/// `qemu-img info --output=json IMAGE`. `force_share` (`-U`) reads an image a running QEMU
/// holds open.
pub async fn info_with(image: &Path, force_share: bool) -> Result<ImageInfo> {
    let mut args: Vec<OsString> = vec!["info".into(), "--output=json".into()];
    if force_share {
        args.push("-U".into());
    }
    args.push(image.as_os_str().to_owned());
    let action = format!("info {}", image.display());
    let stdout = run_qemu_img(action.clone(), args).await?;
    serde_json::from_slice(&stdout).map_err(|source| Error::QemuImgOutput { action, source })
}

/// `qemu-img info --output=json IMAGE`.
pub async fn info(image: &Path) -> Result<ImageInfo> {
    info_with(image, false).await
}
