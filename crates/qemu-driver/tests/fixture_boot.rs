//! The fixture guest (`cargo xtask fixture`) under TCG: boots from its own disk, takes a live
//! checkpoint layer, powers off cleanly.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use qemu_driver::{StopMethod, Vm};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn boots_from_its_own_disk_checkpoints_live_and_powers_off_cleanly() {
    if !have_qemu() {
        return;
    }
    let Some(fixture) = test_support::fixture_image() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.qcow2");
    qemu_driver::overlay::create(&fixture, &disk, None)
        .await
        .unwrap();
    let mut config = tcg_config(dir.path(), &disk);
    config.cpus = 2;
    config.memory_mib = 1024;
    let started = std::time::Instant::now();
    let vm = Vm::launch(config, CancellationToken::new()).await.unwrap();
    let serial = vm.serial_log().to_path_buf();

    // Booted from the disk: the kernel runs and userspace gets to a login prompt.
    let booted = tokio::select! {
        ok = wait_for_serial(&serial, "login:", GUEST_BOOT) => ok,
        error = vm.wait_for_exit_or_error() => panic!("vm died while booting: {error}"),
    };
    let log = String::from_utf8_lossy(&std::fs::read(&serial).unwrap()).into_owned();
    assert!(
        booted,
        "no login prompt within {GUEST_BOOT:?}; serial:\n{log}"
    );
    assert!(
        log.contains("Linux version"),
        "kernel did not log; serial:\n{log}"
    );
    eprintln!("login prompt after {:?}", started.elapsed());

    // A live checkpoint: the new overlay names the checkpoint's published path as backing.
    let before = vm.query_top_image().await.unwrap();
    assert_eq!(before.node_name, "disk0");
    assert_eq!(before.filename, disk);
    let checkpoint = dir.path().join("ckpt-01.qcow2");
    let top = dir.path().join("top.qcow2");
    let layer = vm.snapshot_layer(&top, &checkpoint).await.unwrap();
    assert_eq!(layer.frozen, disk);
    assert_eq!(layer.overlay_node, "layer1");
    // Publish the frozen layer under the name the new overlay expects.
    std::fs::hard_link(&layer.frozen, &checkpoint).unwrap();
    let after = vm.query_top_image().await.unwrap();
    assert_eq!(after.node_name, "layer1");
    assert_eq!(after.filename, top);
    assert_eq!(after.backing_chain.first(), Some(&disk));
    assert_eq!(after.virtual_size, before.virtual_size);

    // The guest keeps running on the new layer, and powers off on the ACPI button.
    vm.check().unwrap();
    let powerdown = std::time::Instant::now();
    let stopped = vm.shutdown(Duration::from_secs(180)).await.unwrap();
    eprintln!("powered off in {:?}", powerdown.elapsed());
    assert_eq!(stopped.method, StopMethod::Powerdown, "{stopped:?}");
    assert!(stopped.status.success(), "{stopped:?}");

    // The chain on disk: top -> checkpoint -> fixture, all consistent.
    qemu_img(&["check", top.to_str().unwrap()]);
    qemu_img(&["check", checkpoint.to_str().unwrap()]);
    let info = qemu_img(&[
        "info",
        "--output=json",
        "--backing-chain",
        top.to_str().unwrap(),
    ]);
    let chain: Vec<serde_json::Value> = serde_json::from_str(&info).unwrap();
    let names: Vec<&str> = chain
        .iter()
        .map(|i| i["filename"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            top.to_str().unwrap(),
            checkpoint.to_str().unwrap(),
            fixture.to_str().unwrap()
        ],
        "{info}"
    );
    assert_eq!(chain[0]["backing-filename"], checkpoint.to_str().unwrap());
    assert_eq!(chain[0]["backing-filename-format"], "qcow2");
    // The new layer holds what the guest wrote after the checkpoint (shutdown at least).
    let top_size = std::fs::metadata(&top).unwrap().len();
    assert!(top_size > 0);
    assert!(Path::new(&checkpoint).exists());
}
