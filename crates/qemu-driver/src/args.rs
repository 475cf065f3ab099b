//! Pure functions that build QEMU's command line (tested without QEMU).
//!
//! Block devices use `-blockdev` in its JSON form, so paths need no escaping and every node has
//! a known name that QMP block commands can address: the disk is `disk0` (format) on
//! `disk0-file` (protocol), the seed is `seed0`, the OVMF files are `ovmf-code`/`ovmf-vars`.
//! Option strings that are not JSON escape `,` as `,,` (QEMU's rule).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use serde_json::json;

use crate::accel::Accel;
use crate::config::{DiskCache, Firmware, RunPaths, VmConfig};
use crate::error::{Error, Result};

/// Node name of the guest disk's format (qcow2) node at launch.
pub const DISK_NODE: &str = "disk0";
/// Node name of the guest disk's file node at launch.
pub const DISK_FILE_NODE: &str = "disk0-file";
/// qdev id of the guest disk's virtio-blk device.
pub const DISK_DEVICE: &str = "vda";

/// Everything the command line depends on besides the config.
#[derive(Debug, Clone)]
pub struct LaunchPlan<'a> {
    /// The VM.
    pub config: &'a VmConfig,
    /// The accelerator decided on.
    pub accel: Accel,
    /// Host port forwarded to the guest's port 22 on 127.0.0.1.
    pub ssh_port: u16,
    /// Files in the run directory.
    pub paths: &'a RunPaths,
}

/// The full argument list (without the program name).
pub fn qemu_args(plan: &LaunchPlan<'_>) -> Result<Vec<OsString>> {
    let config = plan.config;
    let mut args = base_args(&config.name, config.cpus, config.memory_mib);
    args.extend(machine_args(config.machine_type(), config.firmware)?);
    args.extend(accel_args(plan.accel));
    if config.firmware == Firmware::Uefi {
        args.extend(uefi_args(&config.uefi.code, &plan.paths.uefi_vars)?);
    }
    args.extend(disk_args(&config.disk, config.disk_cache)?);
    if let Some(seed) = &config.seed_iso {
        args.extend(seed_args(seed)?);
    }
    args.extend(net_args(plan.ssh_port));
    args.extend(console_args(&plan.paths.serial_log));
    args.extend(qmp_args(&plan.paths.qmp_socket));
    Ok(args)
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// Joins `prefix` and a path, escaping commas in the path as QEMU's option parser requires.
pub fn opt_with_path(prefix: &str, path: &Path) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    OsString::from_vec(bytes)
}

fn utf8_path(path: &Path, what: &str) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::InvalidConfig {
            reason: format!("{what} path {} is not valid UTF-8", path.display()),
        })
}

/// `-name`, no defaults, no display, start paused (`-S`: the guest runs only after the QMP
/// handshake, so no event is missed), CPUs, memory, entropy, and a pvpanic device so a guest
/// kernel panic becomes a `GUEST_PANICKED` event.
pub fn base_args(name: &str, cpus: u32, memory_mib: u64) -> Vec<OsString> {
    let mut name_opt = String::from("guest=");
    name_opt.push_str(&name.replace(',', ",,"));
    [
        "-name".into(),
        name_opt,
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-S".into(),
        "-smp".into(),
        cpus.to_string(),
        "-m".into(),
        format!("{memory_mib}M"),
        "-object".into(),
        "rng-random,id=rng0,filename=/dev/urandom".into(),
        "-device".into(),
        "virtio-rng-pci,rng=rng0".into(),
        "-device".into(),
        "pvpanic".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// `-machine TYPE` (with the pflash nodes for UEFI).
pub fn machine_args(machine: &str, firmware: Firmware) -> Result<Vec<OsString>> {
    if machine.is_empty() || machine.contains(',') {
        return Err(Error::InvalidConfig {
            reason: format!("machine type {machine:?} is not a plain QEMU machine name"),
        });
    }
    let value = match firmware {
        Firmware::Bios => machine.to_owned(),
        Firmware::Uefi => format!("{machine},pflash0=ovmf-code,pflash1=ovmf-vars"),
    };
    Ok(vec![os("-machine"), os(value)])
}

/// Size of TCG's translation cache in MiB (`-accel tcg,tb-size=`).
///
/// Why not QEMU's default (1 GiB): QEMU keeps translated code across a guest reboot (a reset
/// does not flush it), and QEMU 7.2 keys translations by virtual address, so every process of
/// a boot adds its own copies: a first boot fills most of the 1 GiB (~1.7 M blocks). After a
/// `reboot: true` step the new boot writes over the RAM the old boot ran code from (GRUB
/// loading the kernel and initrd, the kernel decompressing and zeroing pages), and each such
/// write takes QEMU's self-modifying-code path, invalidating the stale blocks one by one:
/// ~480 k invalidations in the second boot against ~46 k in the first, and GRUB to `/init`
/// took 18–22 s of QEMU CPU against 7 s (up to 100 s of wall time on a loaded host). A
/// 128 MiB cache is flushed whole every few seconds of boot, so little stale code survives a
/// reboot (~50 k invalidations; GRUB to `/init` 9.4 s of CPU against 8.6 s), and QEMU holds
/// at most 128 MiB of generated code instead of ~0.98 GB (HMP `info jit`). The first boot's QEMU CPU to the login prompt stayed
/// within the noise (63–65 s against 58–64 s); 64 MiB flushed so often it cost ~10 % more.
pub const TCG_TB_SIZE_MIB: u32 = 128;

/// TCG: `-accel tcg,thread=multi,tb-size=`[`TCG_TB_SIZE_MIB`]` -cpu max`. KVM: `-accel kvm -cpu
/// host` — the host CPU gives the guest every feature; where KVM is broken (DESIGN.md §3) QEMU
/// fails at once or the guest stops with `internal-error`, both of which the driver reports as
/// [`Error::Kvm`].
pub fn accel_args(accel: Accel) -> Vec<OsString> {
    match accel {
        Accel::Tcg => vec![
            os("-accel"),
            os(format!("tcg,thread=multi,tb-size={TCG_TB_SIZE_MIB}")),
            os("-cpu"),
            os("max"),
        ],
        Accel::Kvm => ["-accel", "kvm", "-cpu", "host"]
            .into_iter()
            .map(os)
            .collect(),
    }
}

fn blockdev(value: serde_json::Value) -> [OsString; 2] {
    [os("-blockdev"), os(value.to_string())]
}

/// OVMF code (read-only) and the per-run vars copy as pflash block nodes.
pub fn uefi_args(code: &Path, vars: &Path) -> Result<Vec<OsString>> {
    let code = utf8_path(code, "OVMF code")?;
    let vars = utf8_path(vars, "OVMF vars")?;
    let mut args = Vec::new();
    args.extend(blockdev(json!({
        "driver": "file", "node-name": "ovmf-code", "filename": code, "read-only": true,
    })));
    args.extend(blockdev(json!({
        "driver": "file", "node-name": "ovmf-vars", "filename": vars,
    })));
    Ok(args)
}

/// The qcow2 disk as `disk0-file` → `disk0`, on a virtio-blk device that boots first. Both
/// nodes get `cache` (see [`DiskCache`]): with `-blockdev` a referenced child does not inherit
/// its parent's cache options, and QEMU skips the host flush of a node only when that node
/// itself has `no-flush`.
pub fn disk_args(disk: &Path, cache: DiskCache) -> Result<Vec<OsString>> {
    let filename = utf8_path(disk, "disk")?;
    let mut args = Vec::new();
    args.extend(blockdev(json!({
        "driver": "file", "node-name": DISK_FILE_NODE, "filename": filename,
        "discard": "unmap", "cache": cache.blockdev_cache(),
    })));
    args.extend(blockdev(json!({
        "driver": "qcow2", "node-name": DISK_NODE, "file": DISK_FILE_NODE,
        "discard": "unmap", "cache": cache.blockdev_cache(),
    })));
    args.push(os("-device"));
    args.push(os(format!(
        "virtio-blk-pci,drive={DISK_NODE},id={DISK_DEVICE},bootindex=1"
    )));
    Ok(args)
}

/// The seed image, read-only, as a second virtio disk (cloud-init finds it by label).
pub fn seed_args(seed: &Path) -> Result<Vec<OsString>> {
    let filename = utf8_path(seed, "seed")?;
    let mut args = Vec::new();
    args.extend(blockdev(json!({
        "driver": "file", "node-name": "seed0-file", "filename": filename, "read-only": true,
    })));
    args.extend(blockdev(json!({
        "driver": "raw", "node-name": "seed0", "file": "seed0-file", "read-only": true,
    })));
    args.push(os("-device"));
    args.push(os("virtio-blk-pci,drive=seed0,id=seed"));
    Ok(args)
}

/// User networking with the guest's port 22 forwarded from `127.0.0.1:ssh_port`.
pub fn net_args(ssh_port: u16) -> Vec<OsString> {
    vec![
        os("-netdev"),
        os(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22")),
        os("-device"),
        os("virtio-net-pci,netdev=net0"),
    ]
}

/// The serial console appended to a file.
pub fn console_args(serial_log: &Path) -> Vec<OsString> {
    vec![
        os("-chardev"),
        opt_with_path("file,id=serial0,append=on,path=", serial_log),
        os("-serial"),
        os("chardev:serial0"),
    ]
}

/// `-incoming defer`: QEMU starts paused and waits for `migrate-incoming` to load a saved VM
/// state (the devices must be the ones the state was saved from: same command line).
pub fn incoming_args() -> Vec<OsString> {
    vec![os("-incoming"), os("defer")]
}

/// QMP on a unix socket where imgbake listens and QEMU connects as client (so there is nothing
/// to poll for: imgbake accepts the connection, or sees QEMU exit).
pub fn qmp_args(socket: &Path) -> Vec<OsString> {
    vec![
        os("-chardev"),
        opt_with_path("socket,id=qmp,path=", socket),
        os("-mon"),
        os("chardev=qmp,mode=control"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value following `flag`, for each occurrence.
    fn values(args: &[OsString], flag: &str) -> Vec<String> {
        let args = strings(args);
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    fn config() -> VmConfig {
        let mut c = VmConfig::new("demo", "/runs/a/disk.qcow2", "/runs/a");
        c.seed_iso = Some(PathBuf::from("/runs/a/seed.iso"));
        c
    }

    #[test]
    fn tcg_uses_multithreaded_tcg_and_cpu_max() {
        assert_eq!(
            strings(&accel_args(Accel::Tcg)),
            ["-accel", "tcg,thread=multi,tb-size=128", "-cpu", "max"]
        );
        assert_eq!(
            strings(&accel_args(Accel::Kvm)),
            ["-accel", "kvm", "-cpu", "host"]
        );
    }

    /// QEMU's default 1 GiB translation cache keeps so much stale code across a guest reboot
    /// that the second boot runs twice as slowly (see [`TCG_TB_SIZE_MIB`]): TCG must bound it,
    /// and KVM has no translation cache to size.
    #[test]
    fn tcg_bounds_the_translation_cache() {
        let accel = values(&accel_args(Accel::Tcg), "-accel");
        let opts: Vec<&str> = accel[0].split(',').collect();
        assert_eq!(opts[0], "tcg");
        let tb_size: u32 = opts
            .iter()
            .find_map(|o| o.strip_prefix("tb-size="))
            .expect("tb-size is set")
            .parse()
            .unwrap();
        assert!((32..=256).contains(&tb_size), "tb-size={tb_size} MiB");
        let config = config();
        let paths = RunPaths::new(&config.run_dir);
        let plan = LaunchPlan {
            config: &config,
            accel: Accel::Tcg,
            ssh_port: 1,
            paths: &paths,
        };
        assert_eq!(values(&qemu_args(&plan).unwrap(), "-accel"), accel);
        let kvm = strings(&accel_args(Accel::Kvm));
        assert!(!kvm.iter().any(|a| a.contains("tb-size")), "{kvm:?}");
    }

    #[test]
    fn full_command_line_for_bios() {
        let config = config();
        let paths = RunPaths::new(&config.run_dir);
        let plan = LaunchPlan {
            config: &config,
            accel: Accel::Tcg,
            ssh_port: 40022,
            paths: &paths,
        };
        let args = qemu_args(&plan).unwrap();
        assert_eq!(values(&args, "-machine"), ["pc"]);
        assert_eq!(values(&args, "-smp"), ["2"]);
        assert_eq!(values(&args, "-m"), ["2048M"]);
        assert!(strings(&args).contains(&"-S".to_owned()));
        assert!(strings(&args).contains(&"-nodefaults".to_owned()));
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"]
        );
        assert_eq!(
            values(&args, "-chardev"),
            [
                "file,id=serial0,append=on,path=/runs/a/serial.log",
                "socket,id=qmp,path=/runs/a/qmp.sock"
            ]
        );
        // No pflash for BIOS.
        assert!(!strings(&args).iter().any(|a| a.contains("ovmf")));
        let devices = values(&args, "-device");
        assert!(devices.contains(&"virtio-blk-pci,drive=disk0,id=vda,bootindex=1".to_owned()));
        assert!(devices.contains(&"virtio-blk-pci,drive=seed0,id=seed".to_owned()));
    }

    #[test]
    fn blockdevs_are_json_with_node_names() {
        let args = disk_args(
            Path::new("/x/with,comma \"quoted\".qcow2"),
            DiskCache::Writeback,
        )
        .unwrap();
        let nodes: Vec<serde_json::Value> = values(&args, "-blockdev")
            .iter()
            .map(|v| serde_json::from_str(v).unwrap())
            .collect();
        assert_eq!(nodes[0]["driver"], "file");
        assert_eq!(nodes[0]["node-name"], DISK_FILE_NODE);
        assert_eq!(nodes[0]["filename"], "/x/with,comma \"quoted\".qcow2");
        assert_eq!(nodes[1]["driver"], "qcow2");
        assert_eq!(nodes[1]["node-name"], DISK_NODE);
        assert_eq!(nodes[1]["file"], DISK_FILE_NODE);
        // Writeback: guest flushes reach the host on both nodes.
        assert!(nodes.iter().all(|n| n["cache"]["no-flush"] == false));

        let seed = seed_args(Path::new("/s.iso")).unwrap();
        let nodes: Vec<serde_json::Value> = values(&seed, "-blockdev")
            .iter()
            .map(|v| serde_json::from_str(v).unwrap())
            .collect();
        assert!(nodes.iter().all(|n| n["read-only"] == true));
    }

    #[test]
    fn unsafe_cache_ignores_flushes_on_both_disk_nodes() {
        let args = disk_args(Path::new("/x/d.qcow2"), DiskCache::Unsafe).unwrap();
        let nodes: Vec<serde_json::Value> = values(&args, "-blockdev")
            .iter()
            .map(|v| serde_json::from_str(v).unwrap())
            .collect();
        assert_eq!(nodes.len(), 2);
        for node in &nodes {
            assert_eq!(
                node["cache"],
                json!({"direct": false, "no-flush": true}),
                "{node}"
            );
        }
    }

    #[test]
    fn uefi_uses_q35_and_pflash_nodes() {
        let mut config = config();
        config.firmware = Firmware::Uefi;
        let paths = RunPaths::new(&config.run_dir);
        let plan = LaunchPlan {
            config: &config,
            accel: Accel::Tcg,
            ssh_port: 1,
            paths: &paths,
        };
        let args = qemu_args(&plan).unwrap();
        assert_eq!(
            values(&args, "-machine"),
            ["q35,pflash0=ovmf-code,pflash1=ovmf-vars"]
        );
        let blockdevs = values(&args, "-blockdev");
        let code: serde_json::Value = serde_json::from_str(&blockdevs[0]).unwrap();
        assert_eq!(code["filename"], "/usr/share/OVMF/OVMF_CODE_4M.fd");
        assert_eq!(code["read-only"], true);
        let vars: serde_json::Value = serde_json::from_str(&blockdevs[1]).unwrap();
        assert_eq!(vars["filename"], "/runs/a/OVMF_VARS.fd");
        assert!(vars.get("read-only").is_none());
    }

    #[test]
    fn explicit_machine_wins() {
        let mut config = config();
        config.machine = Some("q35".into());
        assert_eq!(config.machine_type(), "q35");
        assert!(machine_args("pc,accel=kvm", Firmware::Bios).is_err());
        assert!(machine_args("", Firmware::Bios).is_err());
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let arg = opt_with_path("file,id=s,path=", Path::new("/a,b/serial.log"));
        assert_eq!(arg, "file,id=s,path=/a,,b/serial.log");
        let args = base_args("my,vm", 1, 512);
        assert_eq!(values(&args, "-name"), ["guest=my,,vm"]);
    }

    #[test]
    fn non_utf8_disk_path_is_an_error_not_a_panic() {
        let path = PathBuf::from(OsString::from_vec(vec![b'/', 0xff, b'x']));
        let err = disk_args(&path, DiskCache::Writeback).unwrap_err();
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    }
}
