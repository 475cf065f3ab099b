//! The build's deliverables: final qcow2, sparse RAW, SHA256SUMS, manifest, API payload,
//! run.json — and the offline verification of the RAW.

use std::path::{Path, PathBuf};
use std::time::Instant;

use provisioner::GuestFacts;
use recipe::ExportFormat;
use tokio_util::sync::CancellationToken;

use crate::bake::{BakeRequest, BakeSummary, Emitter, write_run_json};
use crate::error::io_err;
use crate::events::secs;
use crate::run::RunRecord;
use crate::{BakeEvent, Error, Result};

#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_outputs(
    request: &BakeRequest,
    base: &fetch::CachedBase,
    final_image: &Path,
    facts: Option<&GuestFacts>,
    run: &mut RunRecord,
    began: Instant,
    events: &Emitter,
    cancel: &CancellationToken,
) -> Result<BakeSummary> {
    let recipe = &request.recipe;
    let dir = &request.output_dir;
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
        flatten(final_image, &qcow2, cancel).await?;
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
                        what: format!("{stage:?}").to_lowercase(),
                        fraction: Some(f64::from(percent) / 100.0),
                    });
                }
            }
        })
    };
    let exported = exporter::export(&export, tx, cancel).await;
    let _ = forward.await;
    let exported = exported?;
    let mut sums: Vec<(String, exporter::Sha256)> = exported
        .files
        .iter()
        .map(|f| (file_name(&f.path), f.sha256))
        .collect();
    if !compressed_qcow2 {
        let digest = exporter::sha256_file(&qcow2, &mut |_, _| {}, cancel)?;
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
    let expectations = exporter::Expectations {
        enable_gpu_firmware: recipe
            .verify
            .nvidia
            .as_ref()
            .and_then(|n| n.enable_gpu_firmware),
        driver_branch: recipe
            .verify
            .nvidia
            .as_ref()
            .and_then(|n| n.driver_branch.clone()),
        hygiene: recipe.verify.hygiene,
        build_user: crate::BUILD_USER.to_owned(),
    };
    let raw_for_verify = raw.clone();
    let report =
        tokio::task::spawn_blocking(move || exporter::verify(&raw_for_verify, &expectations))
            .await
            .map_err(|e| io_err("verify", &raw)(std::io::Error::other(e)))??;

    let steps = run
        .steps
        .iter()
        .map(|s| exporter::StepRecord {
            id: s.id.clone(),
            script: s.name.clone(),
            digest: s.script_sha256.clone(),
            duration_ms: (s.duration_secs * 1000.0) as u64,
            exit_code: s.exit_code.map(|c| c as i32),
            cached: s.status == "reused",
        })
        .collect();
    let manifest_input = exporter::ManifestInput {
        recipe: name.clone(),
        vars: recipe.vars.clone(),
        base: exporter::BaseImage {
            url: base.source.redacted(),
            sha256: exporter::Sha256(*base.digest.as_bytes()),
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
    let payload = exporter::write_payload(dir, &payload_spec, &image_facts)?;

    run.guest_cloud_init_finished_uptime_secs =
        crate::timing::cloud_init_finished_uptime(&dir.join("logs").join("serial.log"));
    run.total_secs = secs(began.elapsed());
    write_run_json(dir, run);

    let mut files: Vec<PathBuf> = exported.files.iter().map(|f| f.path.clone()).collect();
    files.extend([sha256sums, manifest, payload, dir.join("run.json")]);
    Ok(BakeSummary {
        output_dir: dir.clone(),
        qcow2,
        files,
        run: run.clone(),
        verify: report,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `qemu-img convert -O qcow2` of a chain into one standalone file, via a temp name.
async fn flatten(source: &Path, target: &Path, cancel: &CancellationToken) -> Result<()> {
    let tmp = target.with_extension("qcow2.partial");
    let mut child = tokio::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(source)
        .arg(&tmp)
        .kill_on_drop(true)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io_err("run qemu-img convert for", target))?;
    let stderr = child.stderr.take();
    let status = tokio::select! {
        status = child.wait() => status.map_err(io_err("run qemu-img convert for", target))?,
        () = cancel.cancelled() => {
            let _ = child.kill().await;
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Interrupted { last_checkpoint: None });
        }
    };
    if !status.success() {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            use tokio::io::AsyncReadExt;
            let _ = stderr.read_to_string(&mut text).await;
        }
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("write", target)(std::io::Error::other(format!(
            "qemu-img convert exited with {status}: {}",
            text.trim()
        ))));
    }
    std::fs::rename(&tmp, target).map_err(io_err("rename", target))
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil-from-days (Howard Hinnant); avoids a date crate for one timestamp.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
