//! `cargo xtask fixture [--force] [--mirror URI]`: builds the Debian fixture guest,
//! `target/fixture/debian-bookworm.qcow2`, and a `sha256sum`-style `.sha256` beside it.
//!
//! No Ubuntu image can be downloaded on the machines imgbake is developed on, so the tests boot
//! a Debian bookworm guest built from nothing but Debian's package mirror (the one the host's apt
//! uses). It is laid out like the Ubuntu cloud image and boots by itself from its disk with
//! SeaBIOS or OVMF. See `fixtures/README.md` for the why; the parts are:
//! [`guest`] (packages, files, mmdebstrap), [`disk`] (layout, GRUB, assembly), [`biosboot`]
//! (GRUB's BIOS boot code), [`mirror`] (apt sources).
//!
//! The build is reused while its inputs are unchanged: every input (see [`inputs`]) goes into a
//! fingerprint kept in `debian-bookworm.qcow2.stamp`. Same fingerprint, image present and its
//! sha256 matching → "fixture up to date". Progress goes to stderr; stdout gets only the image
//! path, last, so `$(cargo xtask fixture)` works.

mod biosboot;
mod disk;
mod guest;
pub(crate) mod mirror;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};
use xshell::{Cmd, Shell, cmd};

use crate::project_root;

const IMAGE_NAME: &str = "debian-bookworm.qcow2";
/// Bump when the build changes in a way [`inputs`] does not already capture.
const BUILD_REVISION: u32 = 1;

/// Tools the build runs, with the package that provides each (for the error message).
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("grub-mkimage", "grub-common"),
    ("mkfs.ext4", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
    ("sfdisk", "fdisk"),
    ("dd", "coreutils"),
    ("qemu-img", "qemu-utils"),
];

#[derive(Debug, Default, PartialEq)]
struct Options {
    force: bool,
    mirror: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut opts = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--force" => opts.force = true,
            "--mirror" => {
                let uri = it.next().context("--mirror needs a URI")?;
                opts.mirror = Some(uri.trim_end_matches('/').to_owned());
            }
            other => match other.strip_prefix("--mirror=") {
                Some(uri) => opts.mirror = Some(uri.trim_end_matches('/').to_owned()),
                None => bail!(
                    "unknown fixture option `{other}`\n  usage: cargo xtask fixture [--force] [--mirror URI]"
                ),
            },
        }
    }
    Ok(opts)
}

/// Builds the fixture guest unless an up-to-date one exists; returns its path.
pub fn run(args: &[String]) -> Result<PathBuf> {
    let opts = parse_args(args)?;
    let dir = project_root().join("target/fixture");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = lock(&dir)?;
    let image = dir.join(IMAGE_NAME);
    let mirror = match opts.mirror {
        Some(uri) => uri,
        None => mirror::find(Path::new("/etc/apt"), guest::SUITE)?,
    };
    let sh = Shell::new()?;
    let inputs = inputs(&mirror, &tool_versions(&sh));
    let fingerprint = hex::encode(Sha256::digest(inputs.as_bytes()));

    if !opts.force && up_to_date(&image, &fingerprint)? {
        eprintln!("fixture up to date ({})", &fingerprint[..16]);
        println!("{}", image.display());
        return Ok(image);
    }
    preflight()?;
    let started = Instant::now();
    build(&sh, &dir, &image, &mirror)?;
    write_atomic(
        &sha256_path(&image),
        format!("{}  {IMAGE_NAME}\n", sha256_file(&image)?),
    )?;
    write_atomic(
        &stamp_path(&image),
        format!("fingerprint {fingerprint}\n{inputs}"),
    )?;
    let size = std::fs::metadata(&image)
        .map(|m| m.len())
        .unwrap_or_default();
    eprintln!(
        "fixture built in {:.0?}: {} MB",
        started.elapsed(),
        size / 1_000_000
    );
    println!("{}", image.display());
    Ok(image)
}

/// Everything the image is made from, one item per line. Its sha256 is the fingerprint; the
/// text is kept in the stamp file so a rebuild can be explained with `diff`.
fn inputs(mirror: &str, tools: &str) -> String {
    let mut s = format!(
        "build-revision {BUILD_REVISION}\nsuite {}\nvariant {}\nmirror {mirror}\npackages {}\n",
        guest::SUITE,
        guest::VARIANT,
        guest::PACKAGES.join(",")
    );
    s += &format!("dpkg-options {}\n", guest::DPKG_OPTIONS.join(" "));
    for c in guest::CUSTOMIZE_COMMANDS {
        s += &format!("customize {c}\n");
    }
    for (stage, files) in [
        ("early", guest::early_files()),
        ("late", guest::late_files()),
    ] {
        for f in files {
            s += &format!("file {stage} /{} {:?}\n", f.path, f.content);
        }
    }
    s += &format!("grub-early-cfg {:?}\n", disk::early_cfg());
    s += &format!(
        "grub-modules {} | pc {} | efi {}\n",
        disk::GRUB_MODULES.join(" "),
        disk::GRUB_PC_MODULES.join(" "),
        disk::GRUB_EFI_MODULES.join(" ")
    );
    s += &format!("layout {}", disk::sfdisk_script("disk"));
    s += &format!(
        "filesystems ext4 {} {} | vfat {} {}\n",
        disk::ROOT_LABEL,
        disk::EXT4_UUID,
        disk::ESP_LABEL,
        disk::VFAT_ID
    );
    s += tools;
    s
}

/// Versions of the tools whose output ends up in the image.
fn tool_versions(sh: &Shell) -> String {
    let version = |c: Cmd<'_>| {
        c.quiet()
            .ignore_stderr()
            .read()
            .map(|v| v.lines().next().unwrap_or_default().to_owned())
            .unwrap_or_else(|_| "not installed".to_owned())
    };
    format!(
        "tool {}\ntool {}\n",
        version(cmd!(sh, "mmdebstrap --version")),
        version(cmd!(sh, "grub-mkimage --version"))
    )
}

fn up_to_date(image: &Path, fingerprint: &str) -> Result<bool> {
    let stamp = std::fs::read_to_string(stamp_path(image)).unwrap_or_default();
    if stamp.lines().next() != Some(&format!("fingerprint {fingerprint}")) {
        if !stamp.is_empty() {
            eprintln!("fixture inputs changed: rebuilding");
        }
        return Ok(false);
    }
    let recorded = std::fs::read_to_string(sha256_path(image)).unwrap_or_default();
    let recorded = recorded.split_whitespace().next().unwrap_or_default();
    if !image.is_file() || recorded.is_empty() {
        return Ok(false);
    }
    let actual = sha256_file(image)?;
    if actual != recorded {
        eprintln!(
            "fixture image changed since it was built (sha256 {actual}, recorded {recorded}): rebuilding"
        );
        return Ok(false);
    }
    Ok(true)
}

/// The build needs root: mmdebstrap's root mode and `mkfs.ext4 -d` keep the files' owners.
fn preflight() -> Result<()> {
    ensure!(
        rustix::process::geteuid().is_root(),
        "building the fixture guest needs root (mmdebstrap and `mkfs.ext4 -d` must keep file owners)\n  \
         try: sudo cargo xtask fixture"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .collect();
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !dirs.iter().any(|d| d.join(tool).is_file()))
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        bail!(
            "the fixture build needs packages that are not installed: {}\n  try: cargo xtask deps --install",
            missing.join(" ")
        );
    }
    Ok(())
}

fn build(sh: &Shell, dir: &Path, image: &Path, mirror: &str) -> Result<()> {
    // The stamp goes first: an interrupted build must never look up to date.
    for old in [stamp_path(image), sha256_path(image)] {
        match std::fs::remove_file(&old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", old.display()));
            }
            _ => {}
        }
    }
    let prefix = work_prefix(dir);
    let parent = work_parent(dir);
    remove_stale_work_dirs(&[dir, &parent], &prefix)?;
    let work_dir = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(&parent)
        .with_context(|| format!("creating a work directory in {}", parent.display()))?;
    let work = work_dir.path();
    // mmdebstrap splits special hooks (`sync-in SRC DST`) on whitespace.
    ensure!(
        !work.to_string_lossy().contains(char::is_whitespace),
        "the fixture work directory {} contains whitespace, which mmdebstrap hooks cannot take",
        work.display()
    );

    let step = Step::start(format!("1/3 mmdebstrap {} from {mirror}", guest::SUITE));
    let (early, late, rootfs) = (work.join("early"), work.join("late"), work.join("rootfs"));
    guest::write_tree(&early, &guest::early_files())?;
    guest::write_tree(&late, &guest::late_files())?;
    let args = guest::mmdebstrap_args(mirror, &early, &late, &rootfs);
    run_streamed(cmd!(sh, "mmdebstrap {args...}"))?;
    step.done();

    let step = Step::start("2/3 disk: GRUB (BIOS + UEFI), ext4 root, ESP, GPT".to_owned());
    let raw = work.join("disk.raw");
    disk::assemble(sh, work, &rootfs, &raw)?;
    step.done();

    let step = Step::start("3/3 qemu-img convert to compressed qcow2".to_owned());
    let tmp = dir.join(format!(".{IMAGE_NAME}.tmp"));
    run_quiet(cmd!(sh, "qemu-img convert -O qcow2 -c {raw} {tmp}"))?;
    std::fs::rename(&tmp, image)
        .with_context(|| format!("renaming {} to {}", tmp.display(), image.display()))?;
    let shown = work.display().to_string();
    work_dir
        .close()
        .with_context(|| format!("removing the work directory {shown}"))?;
    step.done();
    Ok(())
}

/// Work directory names for this checkout's target directory (several checkouts may share
/// /dev/shm, so the name carries a hash of the output directory).
fn work_prefix(dir: &Path) -> String {
    let hash = hex::encode(Sha256::digest(dir.as_os_str().as_encoded_bytes()));
    format!(".imgbake-fixture-{}-", &hash[..12])
}

/// Scratch space: a RAM disk when one with room is mounted (here the build's ~1.5 GB of
/// scratch files would otherwise cost ~40 s just to delete, because / is mounted with `discard`),
/// else the output directory.
fn work_parent(dir: &Path) -> PathBuf {
    use rustix::fs::StatVfsMountFlags as F;
    const SHM: &str = "/dev/shm";
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const NEEDED: u64 = 4 << 30;
    let tmpfs = rustix::fs::statfs(SHM).is_ok_and(|s| s.f_type as u64 == TMPFS_MAGIC);
    let roomy = rustix::fs::statvfs(SHM).is_ok_and(|s| {
        !s.f_flag.intersects(F::NOEXEC | F::NODEV | F::RDONLY)
            && s.f_bavail.saturating_mul(s.f_frsize) >= NEEDED
    });
    if tmpfs && roomy {
        PathBuf::from(SHM)
    } else {
        dir.to_path_buf()
    }
}

/// Work directories left by a build that was killed (we hold the lock, so none is in use).
fn remove_stale_work_dirs(parents: &[&Path], prefix: &str) -> Result<()> {
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let path = entry.path();
                eprintln!(
                    "fixture: removing {} left by an interrupted build",
                    path.display()
                );
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// One build at a time per target directory (helpers and CI may call this concurrently).
fn lock(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(".lock");
    // Read-only is enough for flock, and lets a non-root user reuse a fixture root built.
    let file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .or_else(|_| std::fs::File::open(&path))
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        eprintln!(
            "fixture: waiting for another build ({} is locked)",
            path.display()
        );
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(file)
}

fn stamp_path(image: &Path) -> PathBuf {
    image.with_extension("qcow2.stamp")
}

fn sha256_path(image: &Path) -> PathBuf {
    image.with_extension("qcow2.sha256")
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

fn write_atomic(path: &Path, content: String) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Runs a long command with its output shown live; its stdout goes to our stderr because our
/// stdout carries only the image path.
fn run_streamed(cmd: Cmd<'_>) -> Result<()> {
    let shown = cmd.to_string();
    eprintln!("$ {shown}");
    let mut command = Command::from(cmd);
    command.stdout(Stdio::from(std::io::stderr()));
    let status = command
        .status()
        .with_context(|| format!("running `{shown}`"))?;
    ensure!(status.success(), "`{shown}` failed ({status})");
    Ok(())
}

/// Runs a short command, returning its stdout; on failure the error quotes its output's end.
fn run_quiet(cmd: Cmd<'_>) -> Result<String> {
    let shown = cmd.to_string();
    let out = cmd
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("running `{shown}`"))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text += &String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        bail!("`{shown}` failed ({}):\n{tail}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A build step announced on stderr and timed.
struct Step {
    name: String,
    started: Instant,
}

impl Step {
    fn start(name: String) -> Step {
        eprintln!("fixture: {name}");
        let _ = std::io::stderr().flush();
        Step {
            name,
            started: Instant::now(),
        }
    }

    fn done(self) {
        eprintln!(
            "fixture: {} done in {:.1?}",
            self.name,
            self.started.elapsed()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_options() {
        assert_eq!(parse_args(&[]).unwrap(), Options::default());
        let o = parse_args(&args(&["--force", "--mirror", "http://m.example/debian/"])).unwrap();
        assert_eq!(
            o,
            Options {
                force: true,
                mirror: Some("http://m.example/debian".into())
            }
        );
        let o = parse_args(&args(&["--mirror=http://x/debian"])).unwrap();
        assert_eq!(o.mirror.as_deref(), Some("http://x/debian"));
        assert!(parse_args(&args(&["--mirror"])).is_err());
        let err = parse_args(&args(&["--frobnicate"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--frobnicate") && err.contains("usage"),
            "{err}"
        );
    }

    #[test]
    fn fingerprint_covers_mirror_packages_files_and_tools() {
        let base = inputs("http://a/debian", "tool mmdebstrap 1\n");
        assert_eq!(
            base,
            inputs("http://a/debian", "tool mmdebstrap 1\n"),
            "deterministic"
        );
        assert_ne!(base, inputs("http://b/debian", "tool mmdebstrap 1\n"));
        assert_ne!(base, inputs("http://a/debian", "tool mmdebstrap 2\n"));
        for needle in [
            "linux-image-cloud-amd64",
            "/etc/fstab",
            "/boot/grub/grub.cfg",
            "datasource_list",
            "search --no-floppy --label cloudimg-rootfs",
            "biosdisk",
            "start=227328",
        ] {
            assert!(
                base.contains(needle),
                "{needle} not in the fingerprint inputs"
            );
        }
    }

    #[test]
    fn up_to_date_needs_stamp_image_and_matching_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join(IMAGE_NAME);
        assert!(!up_to_date(&image, "f1").unwrap(), "nothing built");
        std::fs::write(&image, b"qcow2 bytes").unwrap();
        let sum = sha256_file(&image).unwrap();
        assert_eq!(sum, hex::encode(Sha256::digest(b"qcow2 bytes")));
        write_atomic(&sha256_path(&image), format!("{sum}  {IMAGE_NAME}\n")).unwrap();
        write_atomic(&stamp_path(&image), "fingerprint f1\ninputs\n".into()).unwrap();
        assert!(up_to_date(&image, "f1").unwrap());
        assert!(!up_to_date(&image, "f2").unwrap(), "other inputs");
        std::fs::write(&image, b"changed").unwrap();
        assert!(!up_to_date(&image, "f1").unwrap(), "image modified");
        std::fs::remove_file(&image).unwrap();
        assert!(!up_to_date(&image, "f1").unwrap(), "image gone");
    }

    #[test]
    fn sha256_file_is_in_sha256sum_format_next_to_the_image() {
        let image = Path::new("/x/target/fixture").join(IMAGE_NAME);
        assert_eq!(
            sha256_path(&image),
            Path::new("/x/target/fixture/debian-bookworm.qcow2.sha256")
        );
        assert_eq!(
            stamp_path(&image),
            Path::new("/x/target/fixture/debian-bookworm.qcow2.stamp")
        );
    }

    #[test]
    fn work_dirs_are_named_per_output_directory() {
        let a = work_prefix(Path::new("/a/target/fixture"));
        assert_eq!(a, work_prefix(Path::new("/a/target/fixture")));
        assert_ne!(a, work_prefix(Path::new("/b/target/fixture")));
        assert!(a.starts_with(".imgbake-fixture-") && a.ends_with('-'));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(format!("{a}old"))).unwrap();
        std::fs::create_dir(dir.path().join("keep")).unwrap();
        remove_stale_work_dirs(&[dir.path()], &a).unwrap();
        assert!(!dir.path().join(format!("{a}old")).exists());
        assert!(dir.path().join("keep").exists());
    }

    #[test]
    fn failing_commands_report_their_output() {
        let sh = Shell::new().unwrap();
        let err = run_quiet(cmd!(sh, "sh -c 'echo oops >&2; exit 3'"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("oops") && err.contains("exit status: 3"),
            "{err}"
        );
        assert_eq!(run_quiet(cmd!(sh, "echo hi")).unwrap(), "hi\n");
    }
}
