//! System packages imgbake and its tests need, checked (and optionally installed) in one place.

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// `qemu-system-x86` must be installed in an apt call of its own, before `qemu-utils`: on these
/// Debian 12 machines it removes the preinstalled qemu-utils 10.0, and qemu-utils 7.2 must then
/// come back in a second call (DESIGN.md §3).
const FIRST: &[&str] = &["qemu-system-x86"];

/// Everything else, as (package, a file it provides) so the check needs no dpkg query.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-utils", "/usr/bin/qemu-img"),
    ("ovmf", "/usr/share/OVMF/OVMF_CODE_4M.fd"),
    ("mmdebstrap", "/usr/bin/mmdebstrap"),
    ("e2fsprogs", "/usr/sbin/mkfs.ext4"),
    ("fdisk", "/usr/sbin/sfdisk"),
    ("dosfstools", "/usr/sbin/mkfs.vfat"),
    ("mtools", "/usr/bin/mcopy"),
    ("grub-pc-bin", "/usr/lib/grub/i386-pc/boot.img"),
    ("grub-efi-amd64-bin", "/usr/lib/grub/x86_64-efi/linux.mod"),
    ("grub-common", "/usr/bin/grub-mkstandalone"),
    ("genisoimage", "/usr/bin/isoinfo"),
    ("xorriso", "/usr/bin/xorriso"),
    ("openssh-server", "/usr/sbin/sshd"),
    ("openssh-client", "/usr/bin/ssh-keygen"),
    ("sudo", "/usr/bin/sudo"),
    (
        "python3-yaml",
        "/usr/lib/python3/dist-packages/yaml/__init__.py",
    ),
    ("shellcheck", "/usr/bin/shellcheck"),
    ("zstd", "/usr/bin/zstd"),
    ("cpio", "/usr/bin/cpio"),
    ("util-linux", "/usr/sbin/blkid"),
    ("ca-certificates", "/etc/ssl/certs/ca-certificates.crt"),
];

fn missing() -> Vec<&'static str> {
    let mut missing: Vec<&str> = Vec::new();
    if !std::path::Path::new("/usr/bin/qemu-system-x86_64").exists() {
        missing.extend(FIRST);
    }
    missing.extend(
        PACKAGES
            .iter()
            .filter(|(_, file)| !std::path::Path::new(file).exists())
            .map(|(package, _)| *package),
    );
    missing
}

/// Checks the packages; with `install`, apt-gets what is missing (needs root).
pub fn run(install: bool) -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        println!("deps: all system packages present");
        return Ok(());
    }
    if !install {
        bail!(
            "missing system packages: {}\n  try: cargo xtask deps --install   (as root)",
            missing.join(" ")
        );
    }
    let sh = Shell::new()?;
    sh.set_var("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update").run().context("apt-get update")?;
    let (first, rest): (Vec<&str>, Vec<&str>) = missing.iter().partition(|p| FIRST.contains(p));
    // A full list on the second call: installing qemu-system-x86 may have removed qemu-utils.
    let rest: Vec<&str> = if first.is_empty() {
        rest
    } else {
        PACKAGES.iter().map(|(package, _)| *package).collect()
    };
    for batch in [first, rest] {
        if !batch.is_empty() {
            cmd!(sh, "apt-get install -y --no-install-recommends {batch...}")
                .run()
                .context("apt-get install")?;
        }
    }
    let still = self::missing();
    if !still.is_empty() {
        bail!("still missing after install: {}", still.join(" "));
    }
    Ok(())
}
