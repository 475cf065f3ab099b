//! The build's deliverables: final qcow2, sparse RAW, SHA256SUMS, manifest, API payload,
//! run.json — and the offline verification of the RAW, done before any of them gets its final
//! name.

use std::path::{Path, PathBuf};

use recipe::ExportFormat;

use crate::build::{BakeSummary, Build, elapsed_secs};
use crate::error::io_err;
use crate::run::StepStatus;
use crate::{BakeEvent, Error, Result};

/// The suffix of an image that failed its offline verification: `<name>.raw.failed`.
pub(crate) const FAILED_SUFFIX: &str = "failed";

/// Exports `final_image` into the output directory, verifies the RAW offline under its temp
/// name, and only then gives the outputs their final names (fsynced). An image that fails
/// verification is left as `<name>.raw.failed` with `<name>.raw.failed.report.json` beside it,
/// and no SHA256SUMS, manifest or payload; the caller exits 6.
pub(crate) async fn write_outputs(
    build: &mut Build<'_>,
    base: &fetch::CachedBase,
    final_image: &Path,
) -> Result<BakeSummary> {
    let recipe = build.recipe;
    let dir = &build.request.output_dir;
    let events = &build.events;
    let cancel = &build.cancel.graceful;
    let name = &recipe.name;
    let compressed_qcow2 = recipe.export.formats.contains(&ExportFormat::Qcow2);

    // The directory tells one story: the last build's. An earlier build's outputs of this
    // recipe go before the export starts (which also frees their space for it).
    remove_previous_outputs(dir, name)?;
    // RAW plus a qcow2 (flattened, or the exporter's compressed one, at most about as big).
    let data = exporter::measure(Path::new("qemu-img"), final_image, cancel)
        .await
        .map_err(interrupted)?;
    if let Some(data) = data {
        digest::ensure_space(dir, data.saturating_mul(2))?;
    }

    let qcow2 = dir.join(format!("{name}.qcow2"));
    // The final qcow2: standalone (the chain flattened), under a hidden name until everything
    // is ready. A recipe that asks for qcow2 gets the exporter's compressed one instead.
    let mut published = Published::default();
    let hidden = (!compressed_qcow2)
        .then(|| dir.join(format!(".{name}.qcow2.{}.partial", std::process::id())));
    published.paths.extend(hidden.clone());
    // Written while the RAW is exported, hashed and verified (the RAW's hash is a CPU's work,
    // the flattening another's), and thrown away if the RAW fails.
    let flatten = async {
        let Some(hidden) = &hidden else {
            return Ok(None);
        };
        events.emit(BakeEvent::Exporting {
            what: format!("writing {}", qcow2.display()),
            fraction: None,
        });
        exporter::flatten(&exporter::FlattenRequest::new(final_image, hidden), cancel)
            .await
            .map_err(interrupted)?;
        let path = hidden.clone();
        let digest = tokio::task::spawn_blocking(move || digest::hash_file(&path))
            .await
            .map_err(|e| io_err("hash", hidden)(std::io::Error::other(e)))?
            .map_err(|e| io_err("hash", hidden)(std::io::Error::other(e)))?;
        Ok::<_, Error>(Some((hidden.clone(), digest)))
    };
    let raw_request = RawExport {
        final_image,
        dir,
        name,
        compressed_qcow2,
    };
    let (flattened, verified) = tokio::join!(flatten, export_and_verify(build, raw_request));
    let (staged, report) = verified?;
    let flattened = flattened?;
    if !report.passed {
        drop(published);
        return set_aside_failed(build, staged, report, qcow2).await;
    }

    // From here on every final name given is taken back if a later one fails (a full disk
    // while writing the manifest, say): a directory with only some of the outputs claims a
    // build that did not finish.
    let exported = staged.publish().await?;
    published
        .paths
        .extend(exported.iter().map(|f| f.path.clone()));
    let mut sums: Vec<(String, digest::Sha256)> = exported
        .iter()
        .map(|f| (file_name(&f.path), f.sha256))
        .collect();
    if let Some((hidden, digest)) = flattened {
        std::fs::rename(&hidden, &qcow2)
            .and_then(|()| digest::fsync_dir(dir))
            .map_err(io_err("rename", &hidden))?;
        published.paths.push(qcow2.clone());
        sums.push((file_name(&qcow2), digest));
        events.emit(BakeEvent::OutputWritten {
            path: qcow2.clone(),
        });
    }
    let sha256sums = exporter::write_sha256sums(dir, &sums)?;
    published.paths.push(sha256sums.clone());
    let raw = exported
        .iter()
        .find(|f| f.format == exporter::ExportFormat::Raw)
        .map_or_else(|| dir.join(format!("{name}.raw")), |f| f.path.clone());
    for file in &exported {
        events.emit(BakeEvent::OutputWritten {
            path: file.path.clone(),
        });
    }

    let steps = build
        .run
        .steps
        .iter()
        .map(|s| exporter::StepRecord {
            id: s.id.clone(),
            script: s.name.clone(),
            digest: s.script_sha256.clone(),
            duration_ms: (s.duration_secs * 1000.0) as u64,
            exit_code: s.exit_code.map(|c| c as i32),
            cached: s.status == StepStatus::Reused,
        })
        .collect();
    let manifest_input = exporter::ManifestInput {
        recipe: name.clone(),
        vars: recipe.vars.clone(),
        base: exporter::BaseImage {
            url: base.source.redacted(),
            sha256: base.digest,
        },
        steps,
        imgbake_version: env!("CARGO_PKG_VERSION").to_owned(),
        built_at: now_rfc3339(),
    };
    // The facts are the exported disk's, read offline (os-release, kernel, packages, the
    // NVIDIA module's `.modinfo` or dpkg's version): the same whether the steps ran or were
    // all reused.
    let manifest = exporter::write_manifest(dir, &manifest_input, &exported, &report.facts)?;
    published.paths.push(manifest.clone());
    let payload_spec = exporter::PayloadSpec {
        name: recipe.payload.name.clone(),
        virtualization: recipe.payload.virtualization.as_str().to_owned(),
        gpu: recipe.payload.gpu.as_ref().map(|g| exporter::GpuSpec {
            vendor: g.vendor.as_str().to_owned(),
            models: g.models.clone(),
        }),
        uri: None,
    };
    // The payload's `gpu` says a driver is in the exported disk: only the offline facts of
    // the RAW count, not what the live guest reported during the build.
    let payload = exporter::write_payload(dir, &payload_spec, &report.facts)?;
    published.paths.clear();

    build.run.guest_cloud_init_finished_uptime_secs =
        crate::timing::cloud_init_finished_uptime(&build.logs_dir.join("serial.log"));
    build.run.total_secs = elapsed_secs(build.began);
    build.save_run();

    let mut files: Vec<PathBuf> = exported.iter().map(|f| f.path.clone()).collect();
    files.extend([sha256sums, manifest, payload, dir.join("run.json")]);
    Ok(BakeSummary {
        output_dir: dir.clone(),
        qcow2,
        raw,
        files,
        run: build.run.clone(),
        verify: report,
        test: None,
    })
}

/// What [`export_and_verify`] exports.
struct RawExport<'x> {
    final_image: &'x Path,
    dir: &'x Path,
    name: &'x str,
    compressed_qcow2: bool,
}

/// Exports the RAW (and the compressed qcow2, if asked) under temp names and verifies the RAW
/// offline.
async fn export_and_verify(
    build: &Build<'_>,
    raw: RawExport<'_>,
) -> Result<(exporter::StagedExport, inspect::VerifyReport)> {
    let events = &build.events;
    let cancel = &build.cancel.graceful;
    let mut export = exporter::ExportRequest::new(raw.final_image, raw.dir, raw.name.to_owned());
    export.formats = vec![exporter::ExportFormat::Raw];
    if raw.compressed_qcow2 {
        export.formats.push(exporter::ExportFormat::Qcow2);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let forward = {
        let events = events.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let exporter::ExportEvent::Progress { stage, percent } = event {
                    events.emit(BakeEvent::Exporting {
                        what: stage_text(stage),
                        fraction: Some(f64::from(percent) / 100.0),
                    });
                }
            }
        })
    };
    let raw_final = raw.dir.join(format!("{}.raw", raw.name));
    let expectations = crate::plan::expectations(build.recipe);
    // The offline verification reads the RAW while it is hashed: on another core, and the
    // file is in the page cache for both.
    let verify = |raw_temp: PathBuf| async move {
        Some(tokio::task::spawn_blocking(move || inspect::verify(&raw_temp, &expectations)).await)
    };
    let exported = exporter::export_staged_with(&export, tx, cancel, verify).await;
    let _ = forward.await;
    let (staged, verified) = exported.map_err(interrupted)?;
    let report = verified
        .ok_or_else(|| {
            io_err("export", &raw_final)(std::io::Error::other("the exporter wrote no RAW"))
        })?
        .map_err(|e| io_err("verify", &raw_final)(std::io::Error::other(e)))??;
    Ok((staged, report))
}

/// A cancelled export is an interrupted build.
fn interrupted(e: exporter::Error) -> Error {
    match e {
        exporter::Error::Cancelled { .. } => Error::Interrupted {
            last_checkpoint: None,
        },
        e => e.into(),
    }
}

/// An image that failed verification: renamed to `<name>.raw.failed` (and `.qcow2.failed`),
/// its report beside it as `<name>.raw.failed.report.json`, `run.json` written. Nothing under a
/// final name claims it.
async fn set_aside_failed(
    build: &mut Build<'_>,
    staged: exporter::StagedExport,
    report: inspect::VerifyReport,
    qcow2: PathBuf,
) -> Result<BakeSummary> {
    let dir = build.request.output_dir.clone();
    let failed = staged.set_aside(FAILED_SUFFIX).await?;
    let raw = failed
        .iter()
        .find(|f| f.format == exporter::ExportFormat::Raw)
        .map_or_else(
            || dir.join(format!("{}.raw.{FAILED_SUFFIX}", build.recipe.name)),
            |f| f.path.clone(),
        );
    let mut report_path = raw.clone().into_os_string();
    report_path.push(".report.json");
    let report_path = PathBuf::from(report_path);
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| io_err("encode", &report_path)(std::io::Error::other(e)))?;
    digest::AtomicFile::create(&report_path)
        .and_then(|mut f| {
            f.make_readable()?;
            std::io::Write::write_all(&mut f, &json)?;
            f.commit()
        })
        .map_err(io_err("write", &report_path))?;
    for file in &failed {
        build.events.emit(BakeEvent::OutputWritten {
            path: file.path.clone(),
        });
    }
    build.run.guest_cloud_init_finished_uptime_secs =
        crate::timing::cloud_init_finished_uptime(&build.logs_dir.join("serial.log"));
    build.run.total_secs = elapsed_secs(build.began);
    build.save_run();
    let mut files: Vec<PathBuf> = failed.into_iter().map(|f| f.path).collect();
    files.extend([report_path, dir.join("run.json")]);
    Ok(BakeSummary {
        output_dir: dir,
        qcow2,
        raw,
        files,
        run: build.run.clone(),
        verify: report,
        test: None,
    })
}

/// Outputs given their final names (or hidden ones) so far; removed when dropped, unless the
/// list was cleared because the whole set is complete.
#[derive(Default)]
struct Published {
    paths: Vec<PathBuf>,
}

impl Drop for Published {
    fn drop(&mut self) {
        for path in self.paths.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes what an earlier build of `name` left under the names this build writes, failed
/// images included.
fn remove_previous_outputs(dir: &Path, name: &str) -> Result<()> {
    let failed = |ext: &str| format!("{name}.{ext}.{FAILED_SUFFIX}");
    let names = [
        format!("{name}.raw"),
        format!("{name}.qcow2"),
        failed("raw"),
        failed("qcow2"),
        format!("{}.report.json", failed("raw")),
        "SHA256SUMS".to_owned(),
        "manifest.json".to_owned(),
        "api-payload.json".to_owned(),
    ];
    for name in names {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Now, as RFC 3339 in UTC to the second (`2026-12-01T10:00:00Z`).
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An export stage as people read it.
fn stage_text(stage: exporter::Stage) -> String {
    match stage {
        exporter::Stage::Check => "checking the disk".to_owned(),
        exporter::Stage::Convert(format) => format!("converting to {}", format_name(format)),
        // The RAW is verified offline while it is hashed.
        exporter::Stage::Hash(exporter::ExportFormat::Raw) => {
            "hashing and verifying the raw offline".to_owned()
        }
        exporter::Stage::Hash(format) => format!("hashing the {}", format_name(format)),
    }
}

fn format_name(format: exporter::ExportFormat) -> &'static str {
    match format {
        exporter::ExportFormat::Raw => "raw",
        exporter::ExportFormat::Qcow2 => "qcow2",
    }
}
