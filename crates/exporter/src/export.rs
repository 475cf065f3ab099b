//! `qemu-img check` + `qemu-img convert` to sparse RAW (and compressed qcow2), then hashes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use digest::Sha256;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checksum::{sha256_file, write_sha256sums};
use crate::process;
use crate::{Error, Result};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// Sparse RAW (`qemu-img convert -O raw`).
    Raw,
    /// Compressed qcow2 (`qemu-img convert -O qcow2 -c`).
    Qcow2,
}

impl ExportFormat {
    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Raw => "raw",
            ExportFormat::Qcow2 => "qcow2",
        }
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The baked disk (qcow2, possibly with a backing chain).
    pub source: PathBuf,
    /// Directory for the outputs (created if missing).
    pub output_dir: PathBuf,
    /// Base name of the outputs: `<name>.raw`, `<name>.qcow2`.
    pub name: String,
    /// Formats to write; RAW first whatever the order.
    pub formats: Vec<ExportFormat>,
    /// The `qemu-img` to run.
    pub qemu_img: PathBuf,
    /// Longest time the whole export may take.
    pub timeout: Duration,
}

impl ExportRequest {
    /// RAW only, `qemu-img` from `PATH`, a 4-hour limit.
    pub fn new(
        source: impl Into<PathBuf>,
        output_dir: impl Into<PathBuf>,
        name: impl Into<String>,
    ) -> Self {
        ExportRequest {
            source: source.into(),
            output_dir: output_dir.into(),
            name: name.into(),
            formats: vec![ExportFormat::Raw],
            qemu_img: PathBuf::from("qemu-img"),
            timeout: Duration::from_secs(4 * 3600),
        }
    }
}

/// Which phase an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// `qemu-img check` of the source.
    Check,
    /// `qemu-img convert` to a format.
    Convert(ExportFormat),
    /// Hashing an output.
    Hash(ExportFormat),
}

/// Progress of an export, for the binary to render.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ExportEvent {
    /// A stage began.
    Started {
        /// The stage.
        stage: Stage,
    },
    /// Progress within a stage, 0–100.
    Progress {
        /// The stage.
        stage: Stage,
        /// Percent done.
        percent: f32,
    },
    /// The source has leaked clusters (harmless; reported by `qemu-img check`).
    SourceLeaks {
        /// Number of leaked clusters.
        leaks: u64,
    },
    /// A stage ended.
    Finished {
        /// The stage.
        stage: Stage,
        /// How long it took.
        elapsed: Duration,
    },
}

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFile {
    /// Its format.
    pub format: ExportFormat,
    /// Where it is.
    pub path: PathBuf,
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes actually allocated on disk.
    pub allocated: u64,
    /// Its SHA-256.
    pub sha256: Sha256,
}

/// The result of [`export`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOutput {
    /// Files written, RAW first.
    pub files: Vec<ExportedFile>,
    /// The `SHA256SUMS` file.
    pub sha256sums: PathBuf,
}

/// Parses `qemu-img -p` output (`    (12.34/100%)\r`), returning the last percentage seen.
pub(crate) fn parse_progress(text: &str) -> Option<f32> {
    text.split(['\r', '\n']).rev().find_map(|chunk| {
        let inner = chunk.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
        inner.parse::<f32>().ok()
    })
}

#[derive(Deserialize)]
struct CheckJson {
    #[serde(default)]
    corruptions: u64,
    #[serde(default)]
    leaks: u64,
    #[serde(rename = "check-errors", default)]
    check_errors: u64,
}

struct Ctx<'a> {
    req: &'a ExportRequest,
    cancel: &'a CancellationToken,
    deadline: tokio::time::Instant,
    events: mpsc::UnboundedSender<ExportEvent>,
}

impl Ctx<'_> {
    fn emit(&self, e: ExportEvent) {
        let _ = self.events.send(e);
    }
}

async fn check_source(ctx: &Ctx<'_>) -> Result<()> {
    let started = Instant::now();
    ctx.emit(ExportEvent::Started {
        stage: Stage::Check,
    });
    let args: Vec<OsString> = vec![
        "check".into(),
        "--output=json".into(),
        ctx.req.source.clone().into(),
    ];
    // 2 = corruptions, 3 = leaks only, 63 = the format has no check (raw).
    let (code, out) = process::run(
        &ctx.req.qemu_img,
        &args,
        ctx.cancel,
        ctx.deadline,
        &mut |_| {},
        &ctx.req.source,
        &[2, 3, 63],
    )
    .await?;
    if code != 63 {
        let parsed: CheckJson = serde_json::from_str(&out).map_err(|source| Error::ToolOutput {
            command: process::command_line(&ctx.req.qemu_img, &args),
            source,
        })?;
        if parsed.corruptions > 0 || parsed.check_errors > 0 {
            return Err(Error::SourceCorrupt {
                path: ctx.req.source.clone(),
                corruptions: parsed.corruptions + parsed.check_errors,
            });
        }
        if parsed.leaks > 0 {
            ctx.emit(ExportEvent::SourceLeaks {
                leaks: parsed.leaks,
            });
        }
    }
    ctx.emit(ExportEvent::Finished {
        stage: Stage::Check,
        elapsed: started.elapsed(),
    });
    Ok(())
}

/// Removes a temp file unless disarmed (on error, cancel or panic).
pub(crate) struct TempGuard(pub(crate) Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

async fn convert(ctx: &Ctx<'_>, format: ExportFormat) -> Result<PathBuf> {
    let started = Instant::now();
    let stage = Stage::Convert(format);
    ctx.emit(ExportEvent::Started { stage });
    let final_path = ctx
        .req
        .output_dir
        .join(format!("{}.{}", ctx.req.name, format.extension()));
    let tmp = crate::partial_path(&final_path)?;
    let guard = TempGuard(Some(tmp.clone()));
    let mut args: Vec<OsString> = vec!["convert".into(), "-p".into()];
    match format {
        ExportFormat::Raw => args.extend(["-O".into(), "raw".into()]),
        ExportFormat::Qcow2 => args.extend(["-O".into(), "qcow2".into(), "-c".into()]),
    }
    args.push(ctx.req.source.clone().into());
    args.push(tmp.clone().into());
    let events = ctx.events.clone();
    let mut on_stdout = move |text: &str| {
        if let Some(percent) = parse_progress(text) {
            let _ = events.send(ExportEvent::Progress { stage, percent });
        }
    };
    process::run(
        &ctx.req.qemu_img,
        &args,
        ctx.cancel,
        ctx.deadline,
        &mut on_stdout,
        &final_path,
        &[],
    )
    .await?;
    std::fs::rename(&tmp, &final_path).map_err(|source| Error::Write {
        path: final_path.clone(),
        source,
    })?;
    std::mem::forget(guard);
    ctx.emit(ExportEvent::Finished {
        stage,
        elapsed: started.elapsed(),
    });
    Ok(final_path)
}

/// Hashes `path` on a blocking thread, forwarding progress as events.
async fn hash(ctx: &Ctx<'_>, format: ExportFormat, path: PathBuf) -> Result<ExportedFile> {
    let started = Instant::now();
    let stage = Stage::Hash(format);
    ctx.emit(ExportEvent::Started { stage });
    let events = ctx.events.clone();
    let cancel = ctx.cancel.clone();
    let p = path.clone();
    let sha256 = tokio::task::spawn_blocking(move || {
        let mut last = -1.0f32;
        let mut progress = |done: u64, total: u64| {
            let percent = if total == 0 {
                100.0
            } else {
                (done as f64 * 100.0 / total as f64) as f32
            };
            if percent - last >= 1.0 || done == total {
                last = percent;
                let _ = events.send(ExportEvent::Progress { stage, percent });
            }
        };
        sha256_file(&p, &mut progress, &cancel)
    })
    .await
    .map_err(|source| Error::Task {
        what: "hashing",
        source,
    })??;
    ctx.emit(ExportEvent::Finished {
        stage,
        elapsed: started.elapsed(),
    });
    let size = std::fs::metadata(&path)
        .map(|m| m.len())
        .map_err(|source| Error::Hash {
            path: path.clone(),
            source: digest::HashError::Read {
                path: path.clone(),
                source,
            },
        })?;
    Ok(ExportedFile {
        format,
        allocated: allocated_bytes(&path),
        path,
        size,
        sha256,
    })
}

/// One format's branch of [`export`]: convert, then hash the output (`None` if not asked for).
async fn branch(ctx: &Ctx<'_>, format: ExportFormat) -> Result<Option<ExportedFile>> {
    if !ctx.req.formats.contains(&format) {
        return Ok(None);
    }
    let path = convert(ctx, format).await?;
    hash(ctx, format, path).await.map(Some)
}

/// Exports `req.source`: `qemu-img check`, then sparse RAW and (if asked) compressed qcow2 at
/// the same time, each hashed as soon as it is written, and `SHA256SUMS`. Outputs appear under
/// their final names only when complete. Events go to `events` (dropped if the receiver is
/// gone). On cancel the running `qemu-img` is killed and partial files removed.
pub async fn export(
    req: &ExportRequest,
    events: mpsc::UnboundedSender<ExportEvent>,
    cancel: &CancellationToken,
) -> Result<ExportOutput> {
    std::fs::create_dir_all(&req.output_dir).map_err(|source| Error::Write {
        path: req.output_dir.clone(),
        source,
    })?;
    let ctx = Ctx {
        req,
        cancel,
        deadline: tokio::time::Instant::now() + req.timeout,
        events,
    };
    check_source(&ctx).await?;
    // Each format is one branch (convert, then hash its output), and the branches run at the
    // same time: the compressed qcow2 (zlib, one core) is by far the longest, and the RAW's
    // convert (mostly I/O) and hash (the other core) fit inside it, so the export takes about
    // as long as its slowest branch instead of the sum. Both read the same source, which the
    // first read leaves in the page cache.
    // try_join: the first failure drops the other branch, whose qemu-img is killed and whose
    // temp file is removed.
    let (raw, qcow2) = tokio::try_join!(
        branch(&ctx, ExportFormat::Raw),
        branch(&ctx, ExportFormat::Qcow2)
    )?;
    // RAW first, as documented.
    let files: Vec<ExportedFile> = [raw, qcow2].into_iter().flatten().collect();
    let entries: Vec<(String, Sha256)> = files
        .iter()
        .map(|f| {
            let name = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, f.sha256)
        })
        .collect();
    let sha256sums = write_sha256sums(&req.output_dir, &entries)?;
    Ok(ExportOutput { files, sha256sums })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress("    (0.00/100%)\r    (12.50/100%)\r"),
            Some(12.5)
        );
        assert_eq!(parse_progress("    (100.00/100%)\n"), Some(100.0));
        assert_eq!(parse_progress("garbage"), None);
    }
}
