//! Lifecycle against a real `qemu-system-x86_64` under TCG, without a guest OS (a blank disk:
//! SeaBIOS finds nothing to boot and idles). The fixture guest tests are in `fixture_boot.rs`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use qemu_driver::{Accel, AccelReason, Error, Firmware, StopMethod, Vm, VmConfig, VmState};
use rustix::process::Signal;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A temp dir holding a blank disk and a small TCG config on it; `None` (after SKIPPED) when
/// QEMU is not installed. Keep the dir alive for the test's length.
fn blank_vm() -> Option<(TempDir, VmConfig)> {
    if !have_qemu() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = tcg_config(dir.path(), &blank_disk(dir.path()));
    Some((dir, config))
}

/// Launches `config`, which must succeed. The bound only turns a hang into a failure.
async fn launch(config: VmConfig) -> Vm {
    tokio::time::timeout(QEMU_START, Vm::launch(config, CancellationToken::new()))
        .await
        .expect("launch in time")
        .expect("launch")
}

/// Launches `config`, which must fail, and returns the error.
async fn launch_err(config: VmConfig) -> Error {
    Vm::launch(config, CancellationToken::new())
        .await
        .expect_err("launch must fail")
}

/// Sends `signal` to process `pid` (QEMU, from outside the driver).
fn send_signal(pid: u32, signal: Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a real pid");
    rustix::process::kill_process(pid, signal).unwrap();
}

#[tokio::test]
async fn handshake_status_and_quit_is_a_clean_exit() {
    let Some((_dir, config)) = blank_vm() else {
        return;
    };
    let run_dir = config.run_dir.clone();
    let vm = launch(config).await;

    assert_eq!(vm.accel().accel, Accel::Tcg);
    assert_eq!(vm.accel().reason, AccelReason::Requested);
    assert!(vm.qmp().greeting().version.major >= 7);
    assert_eq!(vm.query_status().await.unwrap(), VmState::Running);
    assert_eq!(vm.state(), VmState::Running);
    assert!(vm.ssh_addr().ip().is_loopback());
    assert_ne!(vm.ssh_addr().port(), 0);

    // Private run directory with the logs; QEMU in its own process group.
    let mode = std::fs::metadata(&run_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(vm.serial_log().exists());
    assert!(vm.paths().qemu_log.exists());
    assert_eq!(pgrp(vm.pid()), Some(vm.pid()));
    assert_ne!(pgrp(vm.pid()), pgrp(std::process::id()));
    // Under TCG the guest's RAM is never a transparent huge page (PR_SET_THP_DISABLE).
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
    assert!(status.contains("THP_enabled:\t0"), "{status}");

    // The guest's port 22 is forwarded: QEMU listens on the address it gave.
    let connect = tokio::net::TcpStream::connect(vm.ssh_addr()).await;
    assert!(connect.is_ok(), "hostfwd port not listening: {connect:?}");

    // quit: the socket closing is success, the VM sees SHUTDOWN and the exit.
    let pid = vm.pid();
    vm.qmp().quit().await.expect("quit");
    let error = tokio::time::timeout(Duration::from_secs(10), vm.wait_for_exit_or_error())
        .await
        .expect("exit noticed");
    assert!(
        matches!(&error, Error::ShutDown { reason, .. } if reason == "host-qmp-quit")
            || matches!(&error, Error::Exited { status, .. } if status.success()),
        "{error}"
    );
    let stopped = vm.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(stopped.status.success());
    assert!(
        matches!(
            stopped.method,
            StopMethod::AlreadyExited | StopMethod::Powerdown
        ),
        "{stopped:?}"
    );
    assert!(
        wait_reaped(pid, Duration::from_secs(10)).await,
        "qemu {pid} not reaped"
    );
}

#[tokio::test]
async fn a_killed_qemu_is_reported_at_once_with_its_output() {
    let Some((_dir, config)) = blank_vm() else {
        return;
    };
    let vm = launch(config).await;
    let pid = vm.pid();

    // SIGTERM makes QEMU say why it exits on stderr; the error must quote it.
    send_signal(pid, Signal::TERM);
    let error = tokio::time::timeout(Duration::from_secs(5), vm.wait_for_exit_or_error())
        .await
        .expect("a dead qemu is noticed within seconds");
    let text = error.to_string();
    match &error {
        Error::ShutDown { tails, .. } | Error::Exited { tails, .. } => {
            assert!(tails.stderr.contains("terminating on signal 15"), "{text}");
            assert!(text.contains("qemu stderr, last lines"), "{text}");
            assert!(text.contains("serial console"), "{text}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(wait_reaped(pid, Duration::from_secs(10)).await);
    assert!(vm.check().is_err());
}

#[tokio::test]
async fn sigkill_mid_run_is_reported_as_an_exit() {
    let Some((_dir, config)) = blank_vm() else {
        return;
    };
    let vm = launch(config).await;
    send_signal(vm.pid(), Signal::KILL);
    let error = tokio::time::timeout(Duration::from_secs(5), vm.wait_for_exit_or_error())
        .await
        .expect("noticed within seconds");
    match error {
        Error::Exited { status, .. } => assert!(!status.success(), "{status}"),
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn shutdown_of_a_guest_that_ignores_powerdown_falls_back_to_quit() {
    let Some((_dir, config)) = blank_vm() else {
        return;
    };
    let vm = launch(config).await;
    let pid = vm.pid();
    // SeaBIOS without an OS does not act on the ACPI power button.
    let stopped =
        tokio::time::timeout(Duration::from_secs(60), vm.shutdown(Duration::from_secs(2)))
            .await
            .expect("shutdown never hangs")
            .unwrap();
    assert_eq!(stopped.method, StopMethod::Quit);
    assert!(stopped.status.success(), "{:?}", stopped.status);
    assert!(wait_reaped(pid, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn kill_and_drop_leave_no_qemu_behind() {
    let Some((dir, config)) = blank_vm() else {
        return;
    };
    let disk = config.disk.clone();

    let vm = launch(config).await;
    let pid = vm.pid();
    let status = vm.kill().await.unwrap();
    assert!(!status.success());
    assert!(
        wait_reaped(pid, Duration::from_secs(10)).await,
        "killed qemu {pid} remains"
    );

    let mut config = tcg_config(dir.path(), &disk);
    config.run_dir = dir.path().join("run2");
    let vm = launch(config).await;
    let pid = vm.pid();
    assert!(alive(pid));
    drop(vm);
    assert!(
        wait_reaped(pid, Duration::from_secs(10)).await,
        "dropped vm's qemu {pid} remains"
    );
}

#[tokio::test]
async fn cancelled_launch_starts_nothing_that_survives() {
    let Some((_dir, config)) = blank_vm() else {
        return;
    };
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = Vm::launch(config, cancel).await.unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
}

#[tokio::test]
async fn bad_configs_fail_before_qemu_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tcg_config(dir.path(), &dir.path().join("missing.qcow2"));
    let err = launch_err(config.clone()).await;
    assert!(err.to_string().contains("missing.qcow2"), "{err}");

    std::fs::write(dir.path().join("disk"), b"").unwrap();
    config.disk = dir.path().join("disk");
    config.cpus = 0;
    let err = launch_err(config.clone()).await;
    assert!(err.to_string().contains("cpus"), "{err}");

    config.cpus = 1;
    config.run_dir = dir.path().join("x".repeat(120));
    let err = launch_err(config).await;
    assert!(
        err.to_string().contains("too long for a unix socket"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_qemu_binary_is_a_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("disk"), b"").unwrap();
    let mut config = tcg_config(dir.path(), &dir.path().join("disk"));
    config.qemu_binary = "/nonexistent/qemu-system-x86_64".into();
    let err = launch_err(config).await;
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/qemu-system-x86_64"),
        "{err}"
    );
}

#[tokio::test]
async fn qemu_rejecting_its_arguments_is_reported_with_stderr() {
    let Some((_dir, mut config)) = blank_vm() else {
        return;
    };
    config.machine = Some("no-such-machine".into());
    let err = launch_err(config).await;
    match &err {
        Error::Exited { status, tails } => {
            assert!(!status.success());
            assert!(tails.stderr.contains("unsupported machine type"), "{err}");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn uefi_gets_a_private_vars_copy() {
    let Some((_dir, mut config)) = blank_vm() else {
        return;
    };
    if !config.uefi.code.is_file() {
        assert!(
            std::env::var("IMGBAKE_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "OVMF missing"
        );
        eprintln!("SKIPPED: OVMF not installed");
        return;
    }
    config.firmware = Firmware::Uefi;
    let vm = launch(config).await;
    let vars = &vm.paths().uefi_vars;
    let mode = std::fs::metadata(vars).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(vm.query_status().await.unwrap(), VmState::Running);
    let stopped = vm.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(stopped.status.success());
}

#[tokio::test]
async fn overlays_are_made_with_qemu_img() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = blank_disk(dir.path());
    let overlay = dir.path().join("disk.qcow2");
    qemu_driver::overlay::create(&base, &overlay, Some(128 << 20))
        .await
        .unwrap();
    let info = qemu_driver::overlay::info(&overlay).await.unwrap();
    assert_eq!(info.virtual_size, 128 << 20);
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.backing_filename.as_deref(), base.to_str());

    // Smaller than the base: refused with both sizes named.
    let err = qemu_driver::overlay::create(&base, &dir.path().join("small.qcow2"), Some(1 << 20))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("smaller than the base image"),
        "{err}"
    );
    // qemu-img's own failure carries its stderr.
    let err = qemu_driver::overlay::create(
        &dir.path().join("no-base.qcow2"),
        &dir.path().join("o.qcow2"),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::QemuImg { .. }), "{err}");
    assert!(err.to_string().contains("no-base.qcow2"), "{err}");
    // A failed create leaves nothing under the final names either.
    assert!(!dir.path().join("small.qcow2").exists());
    assert!(!dir.path().join("o.qcow2").exists());
    // No temp files left behind (digest::AtomicFile names them `.<name>.<random>.tmp`).
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with('.') || name.contains(".tmp")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_taken_fixed_ssh_port_is_reported_with_qemus_message() {
    let Some((_dir, mut config)) = blank_vm() else {
        return;
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    config.ssh_port = qemu_driver::SshPort::Fixed(port);
    let err = launch_err(config).await;
    match &err {
        Error::PortForward { attempts, tails } => {
            assert_eq!(*attempts, 1);
            assert!(tails.stderr.contains(&port.to_string()), "{err}");
        }
        other => panic!("unexpected error: {other}"),
    }
}
