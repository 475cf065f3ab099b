//! A real boot of the fixture guest (TCG) with our seed: cloud-init must finish from the NoCloud
//! seed, sshd must serve exactly our host key, and the build user must log in with its key
//! (the real OpenSSH client, pinned to our host key) and have passwordless sudo.
//!
//! Plain `qemu-system-x86_64` on purpose: this tests the seed, not the crate's QEMU driver.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use seed::{HostKeyPair, NetworkConfig, SeedConfig};

/// Generous bound for a TCG boot on a busy 2-core machine (it takes ~30 s when idle).
const BOOT_DEADLINE: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(250);
const MAC: &str = "52:54:00:12:34:56";

/// Kills and reaps QEMU however the test ends.
struct Qemu {
    child: Child,
    stderr: PathBuf,
    serial: PathBuf,
}

impl Qemu {
    fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().expect("poll qemu")?;
        Some(format!(
            "qemu exited ({status}); stderr:\n{}\nserial tail:\n{}",
            fs::read_to_string(&self.stderr).unwrap_or_default(),
            tail(&fs::read_to_string(&self.serial).unwrap_or_default(), 30),
        ))
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn checked(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh ed25519 key pair from the real `ssh-keygen`: (private, public line).
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    checked(
        "ssh-keygen",
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output(),
    );
    let private = fs::read_to_string(&path).unwrap();
    let public = fs::read_to_string(path.with_extension("pub")).unwrap();
    (private, public.trim_end().to_owned())
}

/// `type base64` of a public key line (drops the comment).
fn key_material(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn fixture_guest_accepts_the_seed_and_serves_our_host_key() {
    for tool in [
        "qemu-system-x86_64",
        "qemu-img",
        "ssh-keygen",
        "ssh-keyscan",
        "ssh",
    ] {
        if !test_support::require_tool(tool) {
            return;
        }
    }
    let Some(base) = test_support::fixture_image() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (host_private, host_public) = keygen(dir.path(), "host_key");
    let (_, user_public) = keygen(dir.path(), "user_key");
    let config = SeedConfig {
        instance_id: "imgbake-seed-boot-test".into(),
        hostname: "imgbake-seedtest".into(),
        build_user: "imgbake".into(),
        user_authorized_key: user_public,
        host_key: Some(HostKeyPair {
            private_openssh: host_private,
            public_openssh: host_public.clone(),
        }),
        network: NetworkConfig::DhcpByMac(MAC.parse().unwrap()),
        extra_cloud_config: BTreeMap::new(),
    };
    let seed_path = dir.path().join("seed.iso");
    seed::write_iso(&config, &seed_path).unwrap();

    let overlay = dir.path().join("overlay.qcow2");
    checked(
        "qemu-img create",
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&overlay)
            .output(),
    );

    let port = test_support::free_port();
    let serial = dir.path().join("serial.log");
    let stderr = dir.path().join("qemu.stderr");
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-nodefaults", "-no-user-config"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!("file={},format=qcow2,if=virtio", overlay.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,media=cdrom,readonly=on,if=ide",
            seed_path.display()
        ))
        .arg("-netdev")
        .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={MAC}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .process_group(0)
        .spawn()
        .expect("start qemu-system-x86_64");
    let mut qemu = Qemu {
        child,
        stderr,
        serial: serial.clone(),
    };

    // 1. cloud-init's final message on the serial console, naming the NoCloud datasource.
    let started = Instant::now();
    let finished = loop {
        if let Some(why) = qemu.exited() {
            panic!("{why}");
        }
        let log = fs::read_to_string(&serial).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("Cloud-init v.") && l.contains(" finished at "))
        {
            break line.to_owned();
        }
        assert!(
            started.elapsed() < BOOT_DEADLINE,
            "no cloud-init final message within {BOOT_DEADLINE:?}; serial tail:\n{}",
            tail(&log, 40)
        );
        std::thread::sleep(POLL);
    };
    eprintln!(
        "cloud-init finished after {:.1} s: {finished}",
        started.elapsed().as_secs_f64()
    );
    assert!(finished.contains("DataSourceNoCloud"), "{finished}");

    // 2. sshd serves our host key and only it (sshd may restart once after ssh_pwauth).
    let scanned = loop {
        let out = Command::new("ssh-keyscan")
            .args(["-T", "5", "-p", &port.to_string(), "127.0.0.1"])
            .output()
            .expect("run ssh-keyscan");
        let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' ').map(|(_, key)| key_material(key)))
            .collect();
        if !keys.is_empty() {
            break keys;
        }
        if let Some(why) = qemu.exited() {
            panic!("{why}");
        }
        assert!(
            started.elapsed() < BOOT_DEADLINE,
            "sshd never answered ssh-keyscan"
        );
        std::thread::sleep(POLL);
    };
    assert_eq!(
        scanned,
        [key_material(&host_public)],
        "the guest serves other host keys"
    );

    // 3. The build user logs in with its key, the host key pinned, and has passwordless sudo.
    let known_hosts = dir.path().join("known_hosts");
    fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{port} {}\n", key_material(&host_public)),
    )
    .unwrap();
    let script = "set -e; hostname; sudo -n true && echo sudo-ok; \
                  cloud-init status --long; ls /etc/ssh/ | grep '^ssh_host_'; \
                  cat /etc/network/interfaces.d/50-cloud-init";
    let out = checked(
        "ssh imgbake@guest",
        Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg("-i")
            .arg(dir.path().join("user_key"))
            .args(["-p", &port.to_string(), "imgbake@127.0.0.1", script])
            .output(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"imgbake-seedtest"), "{text}");
    assert!(lines.contains(&"sudo-ok"), "{text}");
    assert!(
        lines.contains(&"status: done"),
        "cloud-init did not finish cleanly:\n{text}"
    );
    assert!(text.contains("DataSourceNoCloud [seed=/dev/sr0]"), "{text}");
    let host_keys: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("ssh_host_"))
        .collect();
    assert_eq!(
        host_keys,
        ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"],
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("iface ")
            && l.ends_with(" inet dhcp")
            && !l.contains("imgbake0")),
        "network-config did not render DHCP for the NIC matched by MAC:\n{text}"
    );
    drop(qemu);
}
