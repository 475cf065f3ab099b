//! A file system that fills up while `qemu-img convert` writes (real `ENOSPC` on a real tmpfs,
//! root only): [`Error::NoSpace`] naming the file, no partial file left; with room the same
//! export works.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use exporter::{Error, ExportRequest, export};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `qemu-img` whose `measure` fails (as a tool too old for it would), so the free-space
/// check before converting cannot know the size and the write itself runs out of space.
fn qemu_img_without_measure(dir: &Path) -> std::path::PathBuf {
    let real = test_support::find_tool("qemu-img").unwrap();
    let wrapper = dir.join("qemu-img");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ \"$1\" = measure ] && exit 1\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

#[tokio::test]
async fn running_out_of_space_while_converting_is_no_space_and_leaves_nothing() {
    if !(test_support::require_tool("qemu-img") && test_support::require_tool("qemu-io")) {
        return;
    }
    let Some(tmpfs) = test_support::Tmpfs::mount("8m") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&source)
        .arg("64M"));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x5a 0 24M"])
        .arg(&source));
    let out = tmpfs.path.join("out");
    let mut req = ExportRequest::new(&source, &out, "img");
    req.qemu_img = qemu_img_without_measure(work.path());

    let e = export(&req, mpsc::unbounded_channel().0, &CancellationToken::new())
        .await
        .unwrap_err();
    match &e {
        Error::NoSpace(full) => {
            assert_eq!(full.path, out.join("img.raw"));
            assert_eq!(full.needed, None, "measure failed: the need is unknown");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!(
                    "not enough space for {}: the file system is full, ",
                    out.join("img.raw").display()
                )),
                "{text}"
            );
            // The partial file was removed before the free space was read.
            assert!(full.free > 4 << 20, "{text}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "no partial file"
    );

    tmpfs.grow("64m");
    let done = export(&req, mpsc::unbounded_channel().0, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(done.files.len(), 1);
    assert_eq!(
        std::fs::metadata(&done.files[0].path).unwrap().len(),
        64 << 20
    );
}
