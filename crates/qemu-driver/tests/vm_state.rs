//! VM-state save and restore against a real `qemu-system-x86_64` under TCG, without a guest OS
//! (a blank disk: SeaBIOS idles), so it costs seconds, not a boot. The fixture guest's restore
//! is proven end to end in `crates/imgbake/tests/e2e.rs`.

mod common;

use std::time::Duration;

use common::*;
use qemu_driver::{AccelDecision, Error, SaveMode, Vm, VmState};
use tokio_util::sync::CancellationToken;

/// Whether this process may use userfaultfd (QEMU's `background-snapshot` needs it): root, or
/// `vm.unprivileged_userfaultfd=1`.
fn userfaultfd_allowed() -> bool {
    let unprivileged = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .is_ok_and(|v| v.trim() == "1");
    unprivileged || rustix::process::geteuid().is_root()
}

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
    let (layer, saving) = vm
        .snapshot_layer_with_state(&next, &config.disk, &state, SaveMode::Background)
        .await
        .expect("layer");
    let saving = saving.expect("state save begun");
    if userfaultfd_allowed() {
        // Written while the guest runs on: it is running before the save is finished.
        assert!(saving.in_background(), "background-snapshot was not used");
        assert_eq!(vm.query_status().await.unwrap(), VmState::Running);
    }
    let saved = vm.finish_state_save(saving).await.expect("state saved");
    assert_eq!(saved.background, userfaultfd_allowed());
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
    // A paused save is written whole before the guest runs on.
    let again = dir.path().join("again.zst");
    let (_, saving) = restored
        .snapshot_layer_with_state(
            &dir.path().join("next2.qcow2"),
            &overlay,
            &again,
            SaveMode::Paused,
        )
        .await
        .expect("second layer");
    let saving = saving.expect("second save begun");
    assert!(!saving.in_background());
    let saved = restored
        .finish_state_save(saving)
        .await
        .expect("second state saved");
    assert!(!saved.background);
    assert_eq!(saved.size, std::fs::metadata(&again).unwrap().len());
    assert_eq!(restored.query_status().await.unwrap(), VmState::Running);
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
