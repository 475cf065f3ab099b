//! `--accel kvm` and `auto` with the fixture guest, on the real machine.
//!
//! Where `/dev/kvm` is missing, inaccessible or provided by `kvm_pvm` alone (these CI machines,
//! DESIGN.md §3), `--accel kvm` must fail at once with the KVM error and the advice to use TCG,
//! and `auto` must pick TCG and boot. Where KVM works, both boot under KVM. (The detection of a
//! KVM internal error in a running guest is tested in `fake_qemu.rs`.)

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use qemu_driver::{Accel, AccelChoice, AccelReason, Error, Vm};
use tokio_util::sync::CancellationToken;

async fn fixture_overlay(dir: &Path) -> Option<std::path::PathBuf> {
    let fixture = test_support::fixture_image()?;
    let disk = dir.join("disk.qcow2");
    qemu_driver::overlay::create(&fixture, &disk, None)
        .await
        .unwrap();
    Some(disk)
}

#[tokio::test]
async fn accel_kvm_ends_with_the_kvm_error_or_boots() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = fixture_overlay(dir.path()).await else {
        return;
    };
    let mut config = tcg_config(dir.path(), &disk);
    config.accel = AccelChoice::Kvm;
    config.memory_mib = 1024;
    let started = Instant::now();
    let launched = tokio::time::timeout(QEMU_START, Vm::launch(config, CancellationToken::new()))
        .await
        .expect("launch never hangs");
    let vm = match launched {
        Ok(vm) => vm,
        Err(error) => {
            let text = error.to_string();
            assert!(matches!(error, Error::Kvm { .. }), "{text}");
            assert!(text.contains("(try: --accel tcg)"), "{text}");
            eprintln!("--accel kvm refused after {:?}: {text}", started.elapsed());
            return;
        }
    };
    // KVM accepted: it must boot, or fail with the KVM error (never hang).
    assert_eq!(vm.accel().accel, Accel::Kvm);
    let serial = vm.serial_log().to_path_buf();
    tokio::select! {
        error = vm.wait_for_exit_or_error() => {
            let text = error.to_string();
            assert!(matches!(error, Error::Kvm { .. }), "{text}");
            assert!(text.contains("(try: --accel tcg)"), "{text}");
        }
        booted = wait_for_serial(&serial, "login:", GUEST_BOOT) => {
            assert!(booted, "neither a boot nor a KVM error within {GUEST_BOOT:?}");
            eprintln!("KVM works here: booted in {:?}", started.elapsed());
        }
    }
    vm.kill().await.unwrap();
}

#[tokio::test]
async fn auto_picks_an_accelerator_that_boots_and_says_which() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = fixture_overlay(dir.path()).await else {
        return;
    };
    let mut config = tcg_config(dir.path(), &disk);
    config.accel = AccelChoice::Auto;
    config.cpus = 2;
    config.memory_mib = 1024;
    let mut attempts = Vec::new();
    let (vm, booted) = Vm::launch_with_fallback(config, CancellationToken::new(), async |vm| {
        attempts.push(vm.accel().clone());
        wait_for_serial(vm.serial_log(), "login:", GUEST_BOOT).await
    })
    .await
    .unwrap();
    assert!(booted, "no login prompt; accel attempts {attempts:?}");
    eprintln!("auto: {}", vm.accel());
    match &attempts[..] {
        [only] => match &only.reason {
            AccelReason::KvmUsable => assert_eq!(only.accel, Accel::Kvm),
            AccelReason::KvmUnavailable(why) => {
                assert_eq!(only.accel, Accel::Tcg);
                assert!(!why.is_empty());
            }
            other => panic!("unexpected reason {other:?}"),
        },
        [first, second] => {
            assert_eq!(first.accel, Accel::Kvm);
            assert_eq!(second.accel, Accel::Tcg);
            assert!(
                matches!(second.reason, AccelReason::KvmFailed(_)),
                "{second:?}"
            );
        }
        other => panic!("unexpected attempts {other:?}"),
    }
    let stopped = vm.shutdown(Duration::from_secs(180)).await.unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
}
