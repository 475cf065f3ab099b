//! VM-state save and restore against a real `qemu-system-x86_64` under TCG, without a guest OS
//! (a blank disk: SeaBIOS idles), so it costs seconds, not a boot. The fixture guest's restore
//! is proven end to end in `crates/imgbake/tests/e2e.rs`.

mod common;

use std::time::Duration;

use common::*;
use qemu_driver::{AccelDecision, Error, Vm, VmState};
use tokio_util::sync::CancellationToken;

fn tcg() -> AccelDecision {
    qemu_driver::accel::decide(qemu_driver::AccelChoice::Tcg)
}

#[tokio::test]
async fn state_saved_with_its_layer_restores_into_the_same_machine_only() {
    if !have_qemu() || !test_support::require_tool("zstd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = tcg_config(dir.path(), &blank_disk(dir.path()));
    let vm = tokio::time::timeout(
        QEMU_START,
        Vm::launch(config.clone(), CancellationToken::new()),
    )
    .await
    .expect("launch in time")
    .expect("launch");
    // Let SeaBIOS run for a moment so the state has something in it.
    assert!(wait_for_serial(vm.serial_log(), "", Duration::from_secs(5)).await);

    let next = dir.path().join("next.qcow2");
    let state = dir.path().join("state.zst");
    let (layer, saved) = vm
        .snapshot_layer_with_state(&next, &config.disk, &state)
        .await
        .expect("layer");
    let saved = saved.expect("state saved");
    assert_eq!(layer.frozen, config.disk);
    assert_eq!(saved.path, state);
    assert!(saved.size > 0 && saved.size == std::fs::metadata(&state).unwrap().len());
    // The compressor finished its stream: the file is a whole zstd frame.
    let check = std::process::Command::new("zstd")
        .arg("-q")
        .arg("-t")
        .arg(&state)
        .status()
        .unwrap();
    assert!(check.success(), "zstd -t {}: {check}", state.display());
    // The guest runs on after the save, on the new overlay.
    assert_eq!(vm.query_status().await.unwrap(), VmState::Running);
    assert_eq!(vm.query_top_image().await.unwrap().filename, next);
    vm.kill().await.unwrap();

    // Restore on a fresh overlay over the frozen layer, same machine.
    let overlay = dir.path().join("restored.qcow2");
    qemu_driver::overlay::create(&config.disk, &overlay, None)
        .await
        .unwrap();
    let mut same = config.clone();
    same.disk = overlay.clone();
    same.run_dir = dir.path().join("run2");
    let restored = Vm::restore(same.clone(), tcg(), &state, CancellationToken::new())
        .await
        .expect("restore");
    assert_eq!(restored.query_status().await.unwrap(), VmState::Running);
    assert_eq!(restored.state(), VmState::Running);
    assert_eq!(restored.query_top_image().await.unwrap().filename, overlay);
    restored.kill().await.unwrap();

    // Another memory size is another machine: the load fails, QEMU exits, the error says so.
    let mut other = same;
    other.memory_mib *= 2;
    other.run_dir = dir.path().join("run3");
    let error = Vm::restore(other, tcg(), &state, CancellationToken::new())
        .await
        .expect_err("a state from another machine must not load");
    assert!(
        matches!(error, Error::StateRestore { .. }),
        "unexpected error: {error}"
    );
}
