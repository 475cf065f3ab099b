//! `--accel kvm` and `auto` with the fixture guest. On machines where KVM is broken for guests
//! (DESIGN.md §3: nested `kvm-pvm`), the guest stops with `internal-error`; the driver must
//! report that as [`Error::Kvm`] at once (never hang), and `auto` must restart under TCG.
//! Where KVM works, the same tests expect a boot.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use qemu_driver::{Accel, AccelChoice, AccelReason, Error, Vm};
use tokio_util::sync::CancellationToken;

fn kvm_device_usable() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("SKIPPED: /dev/kvm does not open read-write (nothing to test about KVM)");
    }
    ok
}

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
    if !have_qemu() || !kvm_device_usable() {
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
    let vm = match Vm::launch(config, CancellationToken::new()).await {
        Ok(vm) => vm,
        // QEMU refused KVM outright: that is the KVM error too.
        Err(error) => {
            assert!(error.is_kvm_failure(), "{error}");
            return;
        }
    };
    assert_eq!(vm.accel().accel, Accel::Kvm);
    let serial = vm.serial_log().to_path_buf();
    tokio::select! {
        error = vm.wait_for_exit_or_error() => {
            let text = error.to_string();
            assert!(matches!(error, Error::Kvm { .. }), "{text}");
            assert!(text.contains("try: --accel tcg"), "{text}");
            assert!(text.to_lowercase().contains("kvm internal error"), "{text}");
            eprintln!("kvm failure reported after {:?}: {text}", started.elapsed());
        }
        booted = wait_for_serial(&serial, "login:", GUEST_BOOT) => {
            assert!(booted, "neither a boot nor a KVM error within {GUEST_BOOT:?}");
            eprintln!("KVM works here: booted in {:?}", started.elapsed());
        }
    }
    vm.kill().await.unwrap();
}

#[tokio::test]
async fn auto_restarts_under_tcg_when_kvm_fails() {
    if !have_qemu() || !kvm_device_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = fixture_overlay(dir.path()).await else {
        return;
    };
    let mut config = tcg_config(dir.path(), &disk);
    config.accel = AccelChoice::Auto;
    config.memory_mib = 1024;
    let mut attempts = Vec::new();
    let (vm, booted) = Vm::launch_with_fallback(config, CancellationToken::new(), async |vm| {
        attempts.push(vm.accel().clone());
        wait_for_serial(vm.serial_log(), "login:", GUEST_BOOT).await
    })
    .await
    .unwrap();
    assert!(booted, "no login prompt; accel attempts {attempts:?}");
    match &attempts[..] {
        // KVM worked.
        [only] => assert_eq!(only.reason, AccelReason::KvmUsable),
        [first, second] => {
            assert_eq!(first.accel, Accel::Kvm);
            assert_eq!(second.accel, Accel::Tcg);
            let AccelReason::KvmFailed(why) = &second.reason else {
                panic!("{second:?}")
            };
            assert!(why.to_lowercase().contains("kvm"), "{why}");
            assert!(
                second.to_string().contains("restarted under TCG"),
                "{second}"
            );
            assert_eq!(vm.accel(), second);
        }
        other => panic!("unexpected attempts {other:?}"),
    }
    let stopped = vm
        .shutdown(std::time::Duration::from_secs(180))
        .await
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
}
