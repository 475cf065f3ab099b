//! Export with the real qemu-img: sparse RAW, compressed qcow2, SHA256SUMS checked by
//! `sha256sum -c`, manifest and API payload read from the exported image.

// The guest image builder of inspect's corpus tests, shared rather than copied.
#[path = "../../inspect/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::{Spec, run, ubuntu};
use digest::Sha256;
use exporter::{
    BaseImage, Error, ExportEvent, ExportFormat, ExportRequest, GpuSpec, ManifestInput,
    PayloadSpec, Stage, StepRecord, export, write_manifest, write_payload,
};
use inspect::{Expectations, inspect, verify};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn tools() -> bool {
    common::tools()
        && test_support::require_tool("qemu-img")
        && test_support::require_tool("sha256sum")
}

fn source_qcow2(dir: &std::path::Path) -> (common::Guest, std::path::PathBuf) {
    let g = ubuntu(&Spec::default());
    let raw = g.build();
    let src = dir.join("baked.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&src));
    (g, src)
}

#[tokio::test]
async fn exports_sparse_raw_and_qcow2_with_checksums_manifest_and_payload() {
    if !tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_guest, src) = source_qcow2(work.path());
    let out = work.path().join("out");
    let mut req = ExportRequest::new(&src, &out, "ubuntu-2204-nvidia-565");
    req.formats = vec![ExportFormat::Qcow2, ExportFormat::Raw];
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = export(&req, tx, &CancellationToken::new()).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }

    // Files: RAW first, final names, nothing partial left.
    let names: Vec<String> = result
        .files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["ubuntu-2204-nvidia-565.raw", "ubuntu-2204-nvidia-565.qcow2"]
    );
    let mut listing: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    assert_eq!(
        listing,
        [
            "SHA256SUMS",
            "ubuntu-2204-nvidia-565.qcow2",
            "ubuntu-2204-nvidia-565.raw"
        ]
    );

    // Sparse: 128 MiB apparent, a few MiB allocated.
    let raw = &result.files[0];
    assert_eq!(raw.size, 128 << 20);
    let meta = fs::metadata(&raw.path).unwrap();
    assert_eq!(raw.allocated, meta.blocks() * 512);
    assert!(
        raw.allocated * 8 < raw.size,
        "raw not sparse: {} allocated of {}",
        raw.allocated,
        raw.size
    );
    let qcow = &result.files[1];
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow.path)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 128 << 20);

    // sha256sum -c accepts SHA256SUMS.
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout)
            .matches(": OK")
            .count(),
        2
    );

    // Events: every stage started and finished; convert progress reached 100.
    for stage in [
        Stage::Check,
        Stage::Convert(ExportFormat::Raw),
        Stage::Hash(ExportFormat::Raw),
        Stage::Convert(ExportFormat::Qcow2),
        Stage::Hash(ExportFormat::Qcow2),
    ] {
        assert!(
            events.contains(&ExportEvent::Started { stage }),
            "{stage:?} not started: {events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ExportEvent::Finished { stage: s, .. } if *s == stage)),
            "{stage:?}"
        );
    }
    assert!(events.iter().any(|e| matches!(e, ExportEvent::Progress { stage: Stage::Convert(ExportFormat::Raw), percent } if *percent >= 100.0)), "{events:?}");

    // The exported RAW verifies, and its facts feed manifest and payload.
    let report = verify(
        &raw.path,
        &Expectations {
            enable_gpu_firmware: Some(1),
            driver_branch: Some("565".into()),
            ..Expectations::default()
        },
    )
    .unwrap();
    assert!(report.passed, "{report}");
    let facts = inspect(&raw.path).unwrap();
    assert_eq!(facts, report.facts);
    let input = ManifestInput {
        recipe: "ubuntu-2204-nvidia-565-firmware1".into(),
        vars: BTreeMap::from([("nvidia_driver_branch".to_string(), "565".to_string())]),
        base: BaseImage {
            url: "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img"
                .into(),
            sha256: Sha256::from_bytes([7; 32]),
        },
        steps: vec![StepRecord {
            id: "01".into(),
            script: "scripts/01-system-update.sh".into(),
            digest: "abc".into(),
            duration_ms: 1234,
            exit_code: Some(0),
            cached: false,
        }],
        imgbake_version: "0.1.0".into(),
        built_at: "2026-11-25T18:00:00Z".into(),
    };
    let manifest_path = write_manifest(&out, &input, &result.files, &facts).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["recipe"], "ubuntu-2204-nvidia-565-firmware1");
    assert_eq!(manifest["vars"]["nvidia_driver_branch"], "565");
    assert_eq!(manifest["base"]["sha256"], "07".repeat(32));
    assert_eq!(manifest["steps"][0]["exit_code"], 0);
    assert_eq!(manifest["outputs"][0]["file"], "ubuntu-2204-nvidia-565.raw");
    assert_eq!(manifest["outputs"][0]["sha256"], raw.sha256.to_string());
    assert_eq!(manifest["guest"]["nvidia_driver"], common::DRIVER);
    assert_eq!(manifest["guest"]["kernel"], common::KERNEL);
    assert_eq!(manifest["guest"]["os_release"]["VERSION_ID"], "22.04");
    assert_eq!(manifest["guest"]["packages"]["kubelet"], "1.30.5-1.1");

    let spec = PayloadSpec {
        name: "ubuntu-2204-nvidia-565".into(),
        virtualization: "virtualized".into(),
        gpu: Some(GpuSpec {
            vendor: "NVIDIA".into(),
            models: vec!["A100".into(), "H100".into(), "H200".into()],
        }),
        uri: None,
    };
    let payload_path = write_payload(&out, &spec, &facts).unwrap();
    let payload: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(payload_path).unwrap()).unwrap();
    assert_eq!(payload["metadata"]["name"], "ubuntu-2204-nvidia-565");
    assert_eq!(payload["spec"]["os"]["version"], "22.04");
    assert_eq!(payload["spec"]["os"]["codename"], "jammy");
    assert_eq!(payload["spec"]["os"]["distro"], "ubuntu");
    assert_eq!(payload["spec"]["softwareVersions"]["kubernetes"], "v1.30.5");
    assert_eq!(payload["spec"]["gpu"]["driver"], common::DRIVER);
    assert_eq!(payload["spec"]["architecture"], "x86_64");
}

#[tokio::test]
async fn cancel_kills_qemu_img_and_leaves_no_partial_file() {
    if !tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_guest, src) = source_qcow2(work.path());
    let out = work.path().join("out");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let e = export(
        &ExportRequest::new(&src, &out, "x"),
        mpsc::unbounded_channel().0,
        &cancel,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}

#[tokio::test]
async fn a_missing_source_reports_qemu_img_stderr() {
    if !tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let e = export(
        &ExportRequest::new(work.path().join("nope.qcow2"), work.path().join("out"), "x"),
        mpsc::unbounded_channel().0,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    match e {
        Error::ToolFailed {
            command, stderr, ..
        } => {
            assert!(
                command.starts_with("qemu-img check --output=json"),
                "{command}"
            );
            assert!(stderr.contains("nope.qcow2"), "{stderr}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn verification_alongside_the_hash_reads_the_whole_raw_under_its_temp_name() {
    if !tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_guest, src) = source_qcow2(work.path());
    let out = work.path().join("out");
    let req = ExportRequest::new(&src, &out, "beside");
    let (tx, _rx) = mpsc::unbounded_channel();
    let (staged, (seen, report)) =
        exporter::export_staged_with(&req, tx, &CancellationToken::new(), |raw_temp| async move {
            let report = verify(&raw_temp, &Expectations::default());
            (Some(raw_temp), Some(report))
        })
        .await
        .unwrap();
    let seen = seen.expect("called with the RAW");
    // It ran on the hidden temp file, which is the RAW the staged export publishes.
    assert_eq!(staged.temp_path(ExportFormat::Raw), Some(seen.as_path()));
    assert_ne!(seen, out.join("beside.raw"));
    // It read the whole disk: the size and the OS inside.
    let report = report.unwrap().expect("the RAW is read");
    let raw = staged.files().next().unwrap().clone();
    assert_eq!(report.virtual_size, raw.size);
    assert!(report.os.is_some(), "{report:?}");
    assert_eq!(raw.sha256, digest::hash_file(&seen).unwrap());
    let published = staged.publish().await.unwrap();
    assert_eq!(published[0].path, out.join("beside.raw"));
    assert!(!seen.exists());
}
