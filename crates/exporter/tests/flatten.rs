//! Flattening a qcow2 chain with the real qemu-img: one standalone qcow2 that reads the same
//! as the chain; cancel and failure leave no partial file.

use std::fs;
use std::path::Path;
use std::process::Command;

use exporter::{Error, FlattenRequest, flatten};
use tokio_util::sync::CancellationToken;

fn tools() -> bool {
    test_support::require_tool("qemu-img") && test_support::require_tool("qemu-io")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// base.qcow2 with 0xaa at 0, overlay top.qcow2 (backed by it) with 0x55 at 1 MiB.
fn chain(dir: &Path) -> std::path::PathBuf {
    let base = dir.join("base.qcow2");
    let top = dir.join("top.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("16M"));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0xaa 0 64k"])
        .arg(&base));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&top));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x55 1M 64k"])
        .arg(&top));
    top
}

#[tokio::test]
async fn flattens_a_chain_into_one_standalone_qcow2() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let top = chain(dir.path());
    let target = dir.path().join("out.qcow2");
    let written = flatten(
        &FlattenRequest::new(&top, &target),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(written, target);
    let info: serde_json::Value = serde_json::from_str(&run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&target)))
    .unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(info.get("backing-filename").is_none(), "{info}");
    // Same guest-visible bytes as the chain, both layers' data included.
    run(Command::new("qemu-img")
        .arg("compare")
        .arg(&top)
        .arg(&target));
    run(Command::new("qemu-io")
        .args([
            "-r",
            "-c",
            "read -P 0xaa 0 64k",
            "-c",
            "read -P 0x55 1M 64k",
        ])
        .arg(&target));
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("partial")), "{names:?}");
}

#[tokio::test]
async fn cancel_and_failure_leave_no_partial_file() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let top = chain(dir.path());
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let e = flatten(&FlattenRequest::new(&top, out.join("x.qcow2")), &cancel)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);

    let e = flatten(
        &FlattenRequest::new(dir.path().join("nope.qcow2"), out.join("y.qcow2")),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    match e {
        Error::ToolFailed {
            command, stderr, ..
        } => {
            assert!(
                command.starts_with("qemu-img convert -O qcow2"),
                "{command}"
            );
            assert!(stderr.contains("nope.qcow2"), "{stderr}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}
