//! The build's deliverables: final qcow2, sparse RAW, SHA256SUMS, manifest, API payload,
//! run.json — and the offline verification of the RAW.

use std::path::{Path, PathBuf};

use provisioner::GuestFacts;
use recipe::ExportFormat;

use crate::build::{BakeSummary, Build, elapsed_secs};
use crate::error::io_err;
use crate::run::StepStatus;
use crate::{BakeEvent, Error, Result};

/// Exports `final_image` into the output directory and verifies the RAW offline.
pub(crate) async fn write_outputs(
    build: &mut Build<'_>,
    base: &fetch::CachedBase,
    final_image: &Path,
    facts: Option<&GuestFacts>,
) -> Result<BakeSummary> {
    let recipe = build.recipe;
    let dir = &build.request.output_dir;
    let events = &build.events;
    let cancel = &build.cancel.graceful;
    let name = &recipe.name;
    let compressed_qcow2 = recipe.export.formats.contains(&ExportFormat::Qcow2);

    // The final qcow2: standalone (the chain flattened), published under its name only when
    // complete. A recipe that asks for qcow2 gets the exporter's compressed one instead.
    let qcow2 = dir.join(format!("{name}.qcow2"));
    if !compressed_qcow2 {
        events.emit(BakeEvent::Exporting {
            what: format!("writing {}", qcow2.display()),
            fraction: None,
        });
        exporter::flatten(&exporter::FlattenRequest::new(final_image, &qcow2), cancel)
            .await
            .map_err(|e| match e {
                exporter::Error::Cancelled { .. } => Error::Interrupted {
                    last_checkpoint: None,
                },
                e => e.into(),
            })?;
        events.emit(BakeEvent::OutputWritten {
            path: qcow2.clone(),
        });
    }

    let mut export = exporter::ExportRequest::new(final_image, dir, name.clone());
    export.formats = vec![exporter::ExportFormat::Raw];
    if compressed_qcow2 {
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
    let exported = exporter::export(&export, tx, cancel).await;
    let _ = forward.await;
    let exported = exported?;
    let mut sums: Vec<(String, digest::Sha256)> = exported
        .files
        .iter()
        .map(|f| (file_name(&f.path), f.sha256))
        .collect();
    if !compressed_qcow2 {
        let path = qcow2.clone();
        let digest = tokio::task::spawn_blocking(move || digest::hash_file(&path))
            .await
            .map_err(|e| io_err("hash", &qcow2)(std::io::Error::other(e)))?
            .map_err(|e| io_err("hash", &qcow2)(std::io::Error::other(e)))?;
        sums.push((file_name(&qcow2), digest));
    }
    let sha256sums = exporter::write_sha256sums(dir, &sums)?;
    let raw = exported
        .files
        .iter()
        .find(|f| f.format == exporter::ExportFormat::Raw)
        .map(|f| f.path.clone())
        .expect("the exporter always writes RAW");
    for file in &exported.files {
        events.emit(BakeEvent::OutputWritten {
            path: file.path.clone(),
        });
    }

    events.emit(BakeEvent::Exporting {
        what: format!("verifying {} offline", raw.display()),
        fraction: None,
    });
    let expectations = crate::plan::expectations(recipe);
    let raw_for_verify = raw.clone();
    let report =
        tokio::task::spawn_blocking(move || inspect::verify(&raw_for_verify, &expectations))
            .await
            .map_err(|e| io_err("verify", &raw)(std::io::Error::other(e)))??;

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
    let mut image_facts = report.facts.clone();
    if image_facts.nvidia_driver.is_none() {
        image_facts.nvidia_driver = facts.and_then(|f| f.nvidia_driver.clone());
    }
    let manifest = exporter::write_manifest(dir, &manifest_input, &exported.files, &image_facts)?;
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

    build.run.guest_cloud_init_finished_uptime_secs =
        crate::timing::cloud_init_finished_uptime(&build.logs_dir.join("serial.log"));
    build.run.total_secs = elapsed_secs(build.began);
    build.save_run();

    let mut files: Vec<PathBuf> = exported.files.iter().map(|f| f.path.clone()).collect();
    files.extend([sha256sums, manifest, payload, dir.join("run.json")]);
    Ok(BakeSummary {
        output_dir: dir.clone(),
        qcow2,
        files,
        run: build.run.clone(),
        verify: report,
        test: None,
    })
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
        exporter::Stage::Hash(format) => format!("hashing the {}", format_name(format)),
    }
}

fn format_name(format: exporter::ExportFormat) -> &'static str {
    match format {
        exporter::ExportFormat::Raw => "raw",
        exporter::ExportFormat::Qcow2 => "qcow2",
    }
}
