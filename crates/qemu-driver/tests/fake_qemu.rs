//! A KVM internal error cannot be produced quickly on demand (on these machines the real one
//! arrives minutes into a boot, DESIGN.md §3), so these tests run the driver against a fake
//! `qemu-system-x86_64` that speaks QEMU's real QMP wire format and replays the stderr QEMU 7.2
//! printed when it happened here (`fixtures/qmp/kvm-internal-error.stderr`).
//!
//! The fake is this test binary itself: a small shell wrapper re-executes it with
//! `--exact fake_qemu_main -- <qemu args>`, and [`fake_qemu_main`] plays QEMU when it sees
//! the `FAKE_QEMU` variable.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu_driver::{
    Accel, AccelChoice, AccelDecision, AccelReason, Error, StopMethod, Vm, VmConfig, VmState,
};
use tokio_util::sync::CancellationToken;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;

fn event(name: &str, data: Option<&str>) -> String {
    let data = data
        .map(|d| format!(r#", "data": {d}"#))
        .unwrap_or_default();
    format!(
        r#"{{"timestamp": {{"seconds": 1795632470, "microseconds": 603780}}, "event": "{name}"{data}}}"#
    )
}

/// Plays QEMU when started by the wrapper; a no-op test otherwise.
#[test]
fn fake_qemu_main() {
    if std::env::var_os("FAKE_QEMU").is_none() {
        return;
    }
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let socket = args
        .iter()
        .find_map(|a| a.strip_prefix("socket,id=qmp,path="))
        .expect("qmp socket argument")
        .replace(",,", ",");
    let kvm = args
        .windows(2)
        .any(|w| w[0] == "-accel" && w[1].starts_with("kvm"));
    let stream = UnixStream::connect(&socket).expect("connect to the driver's qmp socket");
    let mut out = stream.try_clone().unwrap();
    let mut send = |line: &str| {
        out.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    };
    send(GREETING);
    let mut stopped = false;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let command: serde_json::Value = serde_json::from_str(&line).unwrap();
        let id = command["id"].clone();
        let ok = |ret: &str| format!(r#"{{"return": {ret}, "id": {id}}}"#);
        match command["execute"].as_str().unwrap_or_default() {
            "qmp_capabilities" => send(&ok("{}")),
            "cont" => {
                send(&ok("{}"));
                send(&event("RESUME", None));
                if kvm {
                    // What QEMU does on a KVM internal error: print, stop the guest.
                    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("fixtures/qmp/kvm-internal-error.stderr");
                    eprint!("{}", std::fs::read_to_string(path).unwrap());
                    stopped = true;
                    send(&event("STOP", None));
                }
            }
            "query-status" if stopped => send(&ok(
                r#"{"status": "internal-error", "singlestep": false, "running": false}"#,
            )),
            "query-status" => send(&ok(
                r#"{"status": "running", "singlestep": false, "running": true}"#,
            )),
            "system_powerdown" if !stopped => {
                // A guest that powers off on the ACPI button.
                send(&ok("{}"));
                send(&event("POWERDOWN", None));
                send(&event(
                    "SHUTDOWN",
                    Some(r#"{"guest": true, "reason": "guest-shutdown"}"#),
                ));
                std::process::exit(0);
            }
            "quit" => {
                send(&ok("{}"));
                send(&event(
                    "SHUTDOWN",
                    Some(r#"{"guest": false, "reason": "host-qmp-quit"}"#),
                ));
                std::process::exit(0);
            }
            other => send(&format!(
                r#"{{"id": {id}, "error": {{"class": "CommandNotFound", "desc": "The command {other} has not been found"}}}}"#
            )),
        }
    }
    std::process::exit(0);
}

/// A `qemu-system-x86_64` stand-in: a script that re-executes this test binary as the fake.
fn fake_qemu(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let script = dir.join("fake-qemu-system-x86_64");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nFAKE_QEMU=1 exec '{}' --exact fake_qemu_main --nocapture --test-threads=1 -- \"$@\"\n",
            exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn config(dir: &Path) -> VmConfig {
    let disk = dir.join("disk.qcow2");
    std::fs::write(&disk, b"").unwrap();
    let mut config = VmConfig::new("fake", disk, dir.join("run"));
    config.qemu_binary = fake_qemu(dir);
    config
}

fn kvm_requested() -> AccelDecision {
    AccelDecision {
        accel: Accel::Kvm,
        reason: AccelReason::Requested,
    }
}

#[tokio::test]
async fn kvm_internal_error_is_reported_at_once_with_the_advice() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let vm = Vm::launch_with_accel(config, kvm_requested(), CancellationToken::new())
        .await
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), vm.wait_for_exit_or_error())
        .await
        .expect("reported within seconds, not a hang");
    let text = error.to_string();
    let Error::Kvm { detail, tails } = &error else {
        panic!("expected a kvm error, got: {text}")
    };
    assert_eq!(detail, "KVM internal error. Suberror: 1");
    assert!(text.contains("(try: --accel tcg)"), "{text}");
    assert!(tails.stderr.contains("emulation failure"), "{text}");
    assert!(error.is_kvm_failure());
    assert_eq!(vm.state(), VmState::InternalError);
    // A stopped guest cannot power off: shutdown goes straight to quit, without waiting.
    let stopped = tokio::time::timeout(
        Duration::from_secs(20),
        vm.shutdown(Duration::from_secs(600)),
    )
    .await
    .expect("no wait for a powerdown that cannot happen")
    .unwrap();
    assert_eq!(stopped.method, StopMethod::Quit);
}

#[tokio::test]
async fn internal_error_under_tcg_is_not_blamed_on_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // The fake stops the guest only under KVM; under TCG the guest powers off on request.
    config.accel = AccelChoice::Tcg;
    let vm = Vm::launch(config, CancellationToken::new()).await.unwrap();
    let stopped = vm.shutdown(Duration::from_secs(20)).await.unwrap();
    assert_eq!(stopped.method, StopMethod::Powerdown);
    assert!(stopped.status.success());
}

#[tokio::test]
async fn auto_restarts_once_under_tcg_after_a_kvm_internal_error() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.accel = AccelChoice::Auto;
    // The disk is an overlay made for this run; the restart recreates it empty.
    let base = dir.path().join("base.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("16M")
        .status()
        .unwrap();
    assert!(status.success());
    qemu_driver::overlay::create(&base, &config.disk, Some(32 << 20))
        .await
        .unwrap();
    let first = AccelDecision {
        accel: Accel::Kvm,
        reason: AccelReason::KvmUsable,
    };
    let mut seen = Vec::new();
    let (vm, ready) = Vm::launch_with_fallback_from(
        config.clone(),
        first,
        CancellationToken::new(),
        async |vm| {
            seen.push(vm.accel().clone());
            // "Ready" = the guest ran for a while without dying.
            tokio::time::sleep(Duration::from_millis(300)).await;
            "ready"
        },
    )
    .await
    .unwrap();
    assert_eq!(ready, "ready");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].accel, Accel::Kvm);
    assert_eq!(vm.accel().accel, Accel::Tcg);
    let AccelReason::KvmFailed(why) = &vm.accel().reason else {
        panic!("{:?}", vm.accel())
    };
    assert_eq!(why, "KVM internal error. Suberror: 1");
    assert!(vm.accel().to_string().contains("restarted under TCG"));
    let info = qemu_driver::overlay::info(&config.disk).await.unwrap();
    assert_eq!(info.virtual_size, 32 << 20);
    assert_eq!(info.backing_filename.as_deref(), base.to_str());
    vm.shutdown(Duration::from_secs(20)).await.unwrap();

    // Without `auto` there is no restart: the KVM error is the result.
    config.accel = AccelChoice::Kvm;
    config.run_dir = dir.path().join("run-kvm");
    let err = Vm::launch_with_fallback_from(
        config,
        kvm_requested(),
        CancellationToken::new(),
        async |_vm| std::future::pending::<()>().await,
    )
    .await
    .unwrap_err();
    assert!(err.is_kvm_failure(), "{err}");
}
