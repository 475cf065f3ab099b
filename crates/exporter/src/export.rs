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
    /// The space all outputs together need, when `qemu-img measure` could tell.
    needed: Option<u64>,
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

async fn convert(ctx: &Ctx<'_>, format: ExportFormat) -> Result<Converted> {
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
    let ran = process::run(
        &ctx.req.qemu_img,
        &args,
        ctx.cancel,
        ctx.deadline,
        &mut on_stdout,
        &final_path,
        &[],
    )
    .await;
    if let Err(e) = ran {
        // The partial file goes first, so the free space in the error is what is really free.
        drop(guard);
        return Err(crate::no_space_from_tool(e, &final_path, ctx.needed));
    }
    ctx.emit(ExportEvent::Finished {
        stage,
        elapsed: started.elapsed(),
    });
    Ok(Converted {
        temp: guard,
        target: final_path,
    })
}

/// A converted output under its temp name (removed when dropped, unless taken).
struct Converted {
    temp: TempGuard,
    target: PathBuf,
}

/// Hashes `path` on a blocking thread, forwarding progress as events.
async fn hash(ctx: &Ctx<'_>, format: ExportFormat, mut converted: Converted) -> Result<Staged> {
    let path = converted.temp.0.clone().unwrap_or_default();
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
    Ok(Staged {
        file: ExportedFile {
            format,
            allocated: allocated_bytes(&path),
            path: converted.target,
            size,
            sha256,
        },
        temp: converted.temp.0.take(),
    })
}

/// One format's branch of [`export_staged`]: convert, then hash the output (empty if the
/// format was not asked for). The output is held in a [`StagedExport`] at once, so a branch
/// dropped by the other's failure still removes its temp file.
async fn branch(ctx: &Ctx<'_>, format: ExportFormat) -> Result<StagedExport> {
    let mut staged = StagedExport { files: Vec::new() };
    if ctx.req.formats.contains(&format) {
        let converted = convert(ctx, format).await?;
        staged.files.push(hash(ctx, format, converted).await?);
    }
    Ok(staged)
}

/// Exports `req.source` ([`export_staged`]) and gives the outputs their final names at once
/// ([`StagedExport::publish`]), then writes `SHA256SUMS`: for callers that verify nothing in
/// between (`imgbake export`). Events go to `events` (dropped if the receiver is gone). On
/// cancel the running `qemu-img` is killed and partial files removed.
pub async fn export(
    req: &ExportRequest,
    events: mpsc::UnboundedSender<ExportEvent>,
    cancel: &CancellationToken,
) -> Result<ExportOutput> {
    let files = export_staged(req, events, cancel).await?.publish().await?;
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

/// `qemu-img check`, a free-space check (what `qemu-img measure` says the data needs, once
/// per format), conversion to sparse RAW, then (while the RAW is hashed) to compressed qcow2
/// if asked, and hashing. The outputs stay under hidden temp names in `req.output_dir` until
/// [`StagedExport::publish`] (or [`StagedExport::set_aside`] for an image that failed its
/// verification); dropped, they are removed. A full file system gives [`Error::NoSpace`]
/// (before converting, when the sizes are known) and leaves nothing behind.
pub async fn export_staged(
    req: &ExportRequest,
    events: mpsc::UnboundedSender<ExportEvent>,
    cancel: &CancellationToken,
) -> Result<StagedExport> {
    let (staged, ()) = export_staged_with(req, events, cancel, |_| async {}).await?;
    Ok(staged)
}

/// [`export_staged`], running `alongside` on the RAW's temp path while the RAW is hashed
/// (hashing a RAW is seconds of one core; reading it offline, as `imgbake verify` does, fits
/// beside it on another), and returning its result. Without a RAW in `req.formats` it runs
/// on nothing and is not called: the result is then `R::default()`.
pub async fn export_staged_with<F, Fut, R>(
    req: &ExportRequest,
    events: mpsc::UnboundedSender<ExportEvent>,
    cancel: &CancellationToken,
    alongside: F,
) -> Result<(StagedExport, R)>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = R>,
    R: Default,
{
    std::fs::create_dir_all(&req.output_dir).map_err(|source| Error::Write {
        path: req.output_dir.clone(),
        source,
    })?;
    let mut formats = vec![ExportFormat::Raw];
    formats.retain(|f| req.formats.contains(f));
    if req.formats.contains(&ExportFormat::Qcow2) {
        formats.push(ExportFormat::Qcow2);
    }
    let mut ctx = Ctx {
        req,
        cancel,
        deadline: tokio::time::Instant::now() + req.timeout,
        events,
        needed: None,
    };
    check_source(&ctx).await?;
    // A compressed qcow2 is at most about the data's size: counting it in full keeps the check
    // on the safe side.
    let data = measure(&req.qemu_img, &req.source, cancel).await?;
    ctx.needed = data.map(|d| d.saturating_mul(formats.len() as u64));
    if let Some(needed) = ctx.needed {
        digest::ensure_space(&req.output_dir, needed)?;
    }
    // Each format is one branch (convert, then hash its output), and the branches run at the
    // same time: the compressed qcow2 (zlib, one core) is by far the longest, and the RAW's
    // convert (mostly I/O) and hash (the other core) fit inside it, so the export takes about
    // as long as its slowest branch instead of the sum. Both read the same source, which the
    // first read leaves in the page cache. try_join: the first failure drops the other branch,
    // whose qemu-img is killed and whose temp file is removed.
    let ((mut staged, beside), mut qcow2) = tokio::try_join!(
        raw_branch(&ctx, alongside),
        branch(&ctx, ExportFormat::Qcow2)
    )?;
    // RAW first, as documented.
    staged.files.append(&mut qcow2.files);
    Ok((staged, beside))
}

/// The RAW's branch: convert, then hash it while `alongside` reads it.
async fn raw_branch<F, Fut, R>(ctx: &Ctx<'_>, alongside: F) -> Result<(StagedExport, R)>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = R>,
    R: Default,
{
    let mut staged = StagedExport { files: Vec::new() };
    if !ctx.req.formats.contains(&ExportFormat::Raw) {
        return Ok((staged, R::default()));
    }
    let converted = convert(ctx, ExportFormat::Raw).await?;
    let temp = converted.temp.0.clone().unwrap_or_default();
    // join, not try_join: `alongside` is never cut off midway by a failed hash.
    let (hashed, beside) = tokio::join!(hash(ctx, ExportFormat::Raw, converted), alongside(temp));
    staged.files.push(hashed?);
    Ok((staged, beside))
}

/// The bytes the data of `source` (and its backing chain) takes, as `qemu-img measure` reports
/// for a qcow2 holding it: an upper bound for a sparse RAW of it. `None` when `qemu-img` cannot
/// tell (then only an `ENOSPC` while writing reports a full disk).
pub async fn measure(
    qemu_img: &Path,
    source: &Path,
    cancel: &CancellationToken,
) -> Result<Option<u64>> {
    #[derive(Deserialize)]
    struct Measure {
        required: u64,
    }
    let args: Vec<OsString> = vec![
        "measure".into(),
        "--output=json".into(),
        "-O".into(),
        "qcow2".into(),
        source.into(),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    match process::run(qemu_img, &args, cancel, deadline, &mut |_| {}, source, &[]).await {
        Ok((_, out)) => Ok(serde_json::from_str::<Measure>(&out)
            .ok()
            .map(|m| m.required)),
        Err(e @ Error::Cancelled { .. }) => Err(e),
        Err(_) => Ok(None),
    }
}

/// One output under its temp name; `temp` is `None` once it has been renamed.
#[derive(Debug)]
struct Staged {
    file: ExportedFile,
    temp: Option<PathBuf>,
}

/// The outputs of [`export_staged`]: complete, hashed, still under hidden temp names beside
/// their final names. Dropped without [`StagedExport::publish`] or [`StagedExport::set_aside`],
/// the temp files are removed.
#[derive(Debug)]
pub struct StagedExport {
    files: Vec<Staged>,
}

impl StagedExport {
    /// The outputs, RAW first; `path` is the final name each gets from [`StagedExport::publish`].
    pub fn files(&self) -> impl Iterator<Item = &ExportedFile> {
        self.files.iter().map(|s| &s.file)
    }

    /// Where the output of `format` is now (its temp name): what to verify before publishing.
    pub fn temp_path(&self, format: ExportFormat) -> Option<&Path> {
        self.files
            .iter()
            .find(|s| s.file.format == format)
            .and_then(|s| s.temp.as_deref())
    }

    /// Gives each output its final name: fsync of the file, rename, fsync of the directory.
    pub async fn publish(self) -> Result<Vec<ExportedFile>> {
        self.rename_all(None).await
    }

    /// Renames each output to `<final name>.<suffix>` (fsynced as [`StagedExport::publish`]
    /// does), for an image that must not look publishable (`failed`: it failed verification).
    /// Returns the outputs with their new paths.
    pub async fn set_aside(self, suffix: &str) -> Result<Vec<ExportedFile>> {
        self.rename_all(Some(suffix.to_owned())).await
    }

    async fn rename_all(mut self, suffix: Option<String>) -> Result<Vec<ExportedFile>> {
        tokio::task::spawn_blocking(move || {
            let mut done = Vec::new();
            for staged in &mut self.files {
                let mut file = staged.file.clone();
                if let Some(suffix) = &suffix {
                    let mut name = file.path.clone().into_os_string();
                    name.push(format!(".{suffix}"));
                    file.path = name.into();
                }
                if let Some(temp) = &staged.temp {
                    crate::persist(temp, &file.path)?;
                    staged.temp = None;
                    // Written back now: the blocks the file really takes.
                    file.allocated = allocated_bytes(&file.path);
                    staged.file.allocated = file.allocated;
                }
                done.push(file);
            }
            Ok(done)
        })
        .await
        .map_err(|source| Error::Task {
            what: "renaming the outputs",
            source,
        })?
    }
}

impl Drop for StagedExport {
    fn drop(&mut self) {
        for staged in &mut self.files {
            if let Some(temp) = staged.temp.take() {
                let _ = std::fs::remove_file(temp);
            }
        }
    }
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
