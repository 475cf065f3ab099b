//! VM-state checkpoints: the guest's RAM and device state saved to a file next to a disk layer
//! (QMP `migrate` to a socket whose other end is `zstd`) and loaded into a new QEMU (`-incoming defer` +
//! `migrate-incoming`) instead of booting.
//!
//! - [`MachineProfile`]: what a saved state depends on besides its disk (QEMU version, machine
//!   type, CPU model, vCPUs, memory, the device set), taken from the launch configuration;
//!   [`StateKey`] adds the disk layer's key and is the one key a state is stored under.
//! - [`Vm::snapshot_layer_with_state`]: `stop`, freeze the disk layer, save the state, `cont`:
//!   the state and the layer describe the same stopped moment.
//! - [`Vm::restore`]: a new QEMU with the same devices on a fresh overlay over that layer,
//!   loaded from the state file and resumed.
//!
//! States are compressed with `zstd` (fast level, all cores; zero pages cost nothing): its
//! frame checksum makes a damaged file fail to load instead of loading garbage, and a failed
//! load is a QEMU that exits, which the caller turns into a boot from the disk checkpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use digest::{CacheKey, Hasher};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::accel::{Accel, AccelDecision};
use crate::args::{LaunchPlan, qemu_args};
use crate::config::{RunPaths, VmConfig};
use crate::error::{Error, Result};
use crate::launch::{self, LaunchMode};
use crate::qmp::QmpEvent;
use crate::vm::Vm;

/// The compressor states are written and read with (from `PATH`).
pub const STATE_COMPRESSOR: &str = "zstd";

/// How long saving or loading one state may take (a few GiB through zstd under load).
pub const STATE_TIMEOUT: Duration = Duration::from_secs(600);

/// What a saved VM state depends on besides the disk under it. A state loads only into a QEMU
/// of the same version with the same machine, CPU model, memory and devices; any difference
/// makes another [`StateKey`], so such a state is never tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineProfile {
    /// `qemu-system-x86_64 --version`'s first line.
    pub qemu_version: String,
    /// Machine type (`pc`, `q35` …).
    pub machine: String,
    /// The accelerator (`-accel`): TCG and KVM states are not interchangeable.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The device set: QEMU's whole command line for this config with the per-run paths and
    /// the SSH port replaced by fixed placeholders (the CPU model is in it as `-cpu`).
    pub devices: Vec<String>,
}

impl MachineProfile {
    /// The profile of `config` launched under `accel` by a QEMU reporting `qemu_version`.
    pub fn new(config: &VmConfig, accel: Accel, qemu_version: &str) -> Result<MachineProfile> {
        let mut canonical = config.clone();
        canonical.name = "vm".into();
        canonical.disk = PathBuf::from("/disk");
        canonical.seed_iso = config.seed_iso.as_ref().map(|_| PathBuf::from("/seed"));
        canonical.run_dir = PathBuf::from("/run");
        let paths = RunPaths::new(&canonical.run_dir);
        let plan = LaunchPlan {
            config: &canonical,
            accel,
            ssh_port: 0,
            paths: &paths,
        };
        let devices = qemu_args(&plan)?
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Ok(MachineProfile {
            qemu_version: qemu_version.trim().to_owned(),
            machine: config.machine_type().to_owned(),
            accel,
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            devices,
        })
    }

    /// The CPU model in the device set (`max` under TCG, `host` under KVM).
    pub fn cpu_model(&self) -> &str {
        self.devices
            .windows(2)
            .find(|w| w[0] == "-cpu")
            .map_or("", |w| w[1].as_str())
    }
}

/// The key a VM state is stored under: the disk layer it was saved with plus the
/// [`MachineProfile`] it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKey {
    /// The checkpoint key of the disk layer frozen at the same moment.
    pub layer: CacheKey,
    /// The machine it runs on.
    pub profile: MachineProfile,
}

impl StateKey {
    /// The key as a [`CacheKey`]: sha256 over a version tag and every input, each length-
    /// prefixed so no two input lists hash alike.
    pub fn cache_key(&self) -> CacheKey {
        let mut hasher = Hasher::new();
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        let p = &self.profile;
        field(b"imgbake-vm-state-v1");
        field(self.layer.0.as_bytes());
        field(p.qemu_version.as_bytes());
        field(p.machine.as_bytes());
        field(p.accel.to_string().as_bytes());
        field(p.cpu_model().as_bytes());
        field(&p.cpus.to_be_bytes());
        field(&p.memory_mib.to_be_bytes());
        field(&(p.devices.len() as u64).to_be_bytes());
        for device in &p.devices {
            field(device.as_bytes());
        }
        CacheKey(hasher.finish())
    }
}

/// `qemu --version`'s first line (`QEMU emulator version 7.2.22 (Debian …)`).
pub async fn qemu_version(binary: &Path) -> Result<String> {
    let output = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: binary.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().next() {
        Some(line) if output.status.success() && !line.trim().is_empty() => {
            Ok(line.trim().to_owned())
        }
        _ => Err(Error::InvalidConfig {
            reason: format!(
                "{} --version printed no version ({})",
                binary.display(),
                output.status
            ),
        }),
    }
}

/// Whether [`STATE_COMPRESSOR`] is on `PATH`.
pub fn compressor_available() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(STATE_COMPRESSOR).is_file())
    })
}

/// `path` quoted for `/bin/sh` (QEMU runs `exec:` URIs through it).
fn shell_quote(path: &Path) -> Result<String> {
    let text = utf8(path)?;
    Ok(format!("'{}'", text.replace('\'', r"'\''")))
}

pub(crate) fn utf8(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| Error::InvalidConfig {
        reason: format!("path {} is not valid UTF-8", path.display()),
    })
}

/// The `migrate-incoming` URI that reads a state from `path`. `exec:` is safe for reading:
/// QEMU has read the whole stream before it kills the child at the end.
pub fn load_uri(path: &Path) -> Result<String> {
    Ok(format!(
        "exec:{STATE_COMPRESSOR} -q -d -c {}",
        shell_quote(path)?
    ))
}

/// The end of a migration as its `MIGRATION` events tell it.
pub(crate) enum Outcome {
    Completed,
    Failed(String),
}

impl Vm {
    /// Starts QEMU for `config` paused with `-incoming defer`, loads the saved state from
    /// `state`, and resumes the guest. `config` must describe the same machine the state was
    /// saved on (the same [`MachineProfile`] under `accel`); its disk is a fresh overlay on
    /// the layer saved with the state. A state that does not load makes QEMU exit: that is
    /// [`Error::StateRestore`] with QEMU's stderr, and nothing is left running.
    pub async fn restore(
        config: VmConfig,
        accel: AccelDecision,
        state: &Path,
        cancel: CancellationToken,
    ) -> Result<Vm> {
        let vm = launch::start_mode(config, accel, LaunchMode::Incoming, &cancel).await?;
        let loaded = tokio::select! {
            loaded = vm.load_state(state) => loaded,
            () = cancel.cancelled() => Err(Error::Cancelled { during: "restoring the vm state".into() }),
        };
        match loaded {
            Ok(()) => Ok(vm),
            Err(e) => {
                let _ = vm.kill().await;
                Err(e)
            }
        }
    }

    async fn load_state(&self, path: &Path) -> Result<()> {
        let mut events = self.qmp.events();
        let fail = |detail: String, vm: &Vm| Error::StateRestore {
            path: path.to_path_buf(),
            detail,
            tails: vm.tails(),
        };
        self.qmp
            .execute_value(
                "migrate-set-capabilities",
                json!({ "capabilities": [{ "capability": "events", "state": true }] }),
            )
            .await?;
        let uri = load_uri(path)?;
        self.qmp
            .execute_value("migrate-incoming", json!({ "uri": uri }))
            .await?;
        let outcome = tokio::select! {
            outcome = migration_outcome(&mut events) => outcome,
            error = self.wait_for_exit_or_error() => {
                // A state that does not load makes QEMU exit; its stderr says why.
                return Err(fail(error.to_string(), self));
            }
            () = tokio::time::sleep(STATE_TIMEOUT) => Outcome::Failed(format!("not loaded after {STATE_TIMEOUT:?}")),
        };
        match outcome {
            Outcome::Completed => {}
            Outcome::Failed(why) => return Err(fail(why, self)),
        }
        self.qmp.execute(qapi::qmp::cont {}).await?;
        Ok(())
    }
}

/// QEMU's `error-desc` of the last migration, if it has one.
pub(crate) async fn migration_error(vm: &Vm) -> Option<String> {
    query_migrate(vm, "error-desc").await
}

/// A string field of `query-migrate`'s answer (`status`, `error-desc`), if there is one.
pub(crate) async fn query_migrate(vm: &Vm, field: &str) -> Option<String> {
    let info: Value = vm
        .qmp
        .execute_value("query-migrate", json!({}))
        .await
        .ok()?;
    info.get(field).and_then(Value::as_str).map(str::to_owned)
}

/// The outcome a migration status means, if it is a final one.
pub(crate) fn final_outcome(status: &str) -> Option<Outcome> {
    match status {
        "completed" => Some(Outcome::Completed),
        "failed" | "cancelled" => Some(Outcome::Failed(format!("migration {status}"))),
        _ => None,
    }
}

/// Waits for a `MIGRATION` event with a final status.
pub(crate) async fn migration_outcome(
    events: &mut tokio::sync::broadcast::Receiver<QmpEvent>,
) -> Outcome {
    loop {
        match events.recv().await {
            Ok(QmpEvent::Other { name, data }) if name == "MIGRATION" => {
                if let Some(outcome) =
                    final_outcome(data.get("status").and_then(Value::as_str).unwrap_or(""))
                {
                    return outcome;
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                return Outcome::Failed("the qmp connection closed".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        let mut c = VmConfig::new("demo", "/runs/a/disk.qcow2", "/runs/a");
        c.seed_iso = Some(PathBuf::from("/runs/a/seed.iso"));
        c.memory_mib = 1024;
        c
    }

    fn key(config: &VmConfig, accel: Accel, version: &str, layer: CacheKey) -> CacheKey {
        StateKey {
            layer,
            profile: MachineProfile::new(config, accel, version).unwrap(),
        }
        .cache_key()
    }

    const V: &str = "QEMU emulator version 7.2.22";

    fn layer(n: u8) -> CacheKey {
        CacheKey(digest::Sha256::of(&[n]))
    }

    #[test]
    fn per_run_paths_and_ports_do_not_change_the_key() {
        let a = config();
        let mut b = VmConfig::new("other", "/elsewhere/x.qcow2", "/tmp/imgbake-123");
        b.seed_iso = Some(PathBuf::from("/tmp/imgbake-123/seed.iso"));
        b.memory_mib = 1024;
        b.ssh_port = crate::SshPort::Fixed(2222);
        assert_eq!(
            key(&a, Accel::Tcg, V, layer(1)),
            key(&b, Accel::Tcg, V, layer(1))
        );
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = config();
        let reference = key(&base, Accel::Tcg, V, layer(1));
        let mut variants: Vec<(&str, CacheKey)> = vec![
            ("layer", key(&base, Accel::Tcg, V, layer(2))),
            (
                "qemu version",
                key(&base, Accel::Tcg, "QEMU emulator version 8.0.0", layer(1)),
            ),
            // KVM also changes the CPU model (`host` against `max`).
            ("accel and cpu model", key(&base, Accel::Kvm, V, layer(1))),
        ];
        let mut changed = |what: &'static str, edit: &dyn Fn(&mut VmConfig)| {
            let mut c = base.clone();
            edit(&mut c);
            variants.push((what, key(&c, Accel::Tcg, V, layer(1))));
        };
        changed("machine type", &|c| c.machine = Some("q35".into()));
        changed("memory", &|c| c.memory_mib = 2048);
        changed("cpus", &|c| c.cpus = 4);
        changed("firmware (devices)", &|c| {
            c.firmware = crate::Firmware::Uefi;
            c.machine = Some("pc".into());
        });
        changed("no seed disk (devices)", &|c| c.seed_iso = None);
        for (what, k) in &variants {
            assert_ne!(*k, reference, "{what} did not change the state key");
        }
        let mut all: Vec<CacheKey> = variants.iter().map(|(_, k)| *k).collect();
        all.sort_by_key(|k| k.to_string());
        all.dedup();
        assert_eq!(all.len(), variants.len(), "two inputs gave the same key");
    }

    #[test]
    fn profile_names_the_cpu_model() {
        let tcg = MachineProfile::new(&config(), Accel::Tcg, V).unwrap();
        assert_eq!(tcg.cpu_model(), "max");
        assert_eq!(tcg.machine, "pc");
        let kvm = MachineProfile::new(&config(), Accel::Kvm, V).unwrap();
        assert_eq!(kvm.cpu_model(), "host");
        assert!(tcg.devices.iter().any(|d| d.starts_with("virtio-rng-pci")));
        assert!(!tcg.devices.iter().any(|d| d.contains("/runs/a")));
    }

    #[test]
    fn uris_quote_the_path_for_the_shell() {
        assert_eq!(
            load_uri(Path::new("/c/it's.zst")).unwrap(),
            r"exec:zstd -q -d -c '/c/it'\''s.zst'"
        );
        assert_eq!(
            load_uri(Path::new("/c/s.zst")).unwrap(),
            "exec:zstd -q -d -c '/c/s.zst'"
        );
    }
}
