//! `cargo xtask nvidia-bytes [--mirror URI]`: real NVIDIA bytes for the inspection tests, so
//! they never read invented module or firmware files (issue 11).
//!
//! From the Debian mirror the host's apt already uses (the fixture guest's mirror), with the
//! suite and components the guest sees after `fixtures/recipes/nvidia-debian/01-apt-components.sh`
//! (`bookworm main contrib non-free non-free-firmware`, no security or updates suites):
//! - `firmware-nvidia-gsp`, unpacked (`dpkg-deb -x`): `lib/firmware/nvidia/<version>/gsp_*.bin`;
//! - `nvidia.ko` of `nvidia-kernel-dkms` (the proprietary 535 module) and of
//!   `nvidia-open-kernel-dkms` (the open one; Debian ships its RM core prebuilt as
//!   `nv-kernel.o_binary` too, so both are the same ~190-file build of the kernel interface),
//!   built on the host the way DKMS builds them in the guest (dkms.conf's `make modules`, i.e.
//!   NVIDIA's Makefile around `make -C <headers> M=…`), against the headers of the fixture's kernel
//!   (`linux-image-cloud-amd64` → `linux-headers-<release>` + its `-common` + `linux-kbuild-*`),
//!   unpacked into a directory: no root, nothing installed.
//!
//! The result goes to `target/nvidia-bytes/<key>/` where the key is a digest of the exact `.deb`
//! files (names and SHA-256s from `apt-get download --print-uris`), and `target/nvidia-bytes/current`
//! points at it. A second run only asks the mirror for the package list and reuses the result
//! (CI builds the module once per package versions). Layout of `<key>/`:
//! `firmware/lib/firmware/nvidia/<version>/…`, `module/nvidia.ko` (proprietary),
//! `module-open/nvidia.ko` (open), `manifest.json`.
//!
//! apt runs with its own state directory (`target/nvidia-bytes/apt/`): the host's apt
//! configuration is read for the mirror only and never changed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::project_root;

const USAGE: &str = "usage: cargo xtask nvidia-bytes [--mirror URI]";

/// The fixture guest's suite; its kernel and the driver come from it alone.
const SUITE: &str = "bookworm";
const COMPONENTS: &str = "main contrib non-free non-free-firmware";
const FIRMWARE_PACKAGE: &str = "firmware-nvidia-gsp";
/// The two module flavours: package, DKMS source directory prefix (`usr/src/<prefix><version>`)
/// and where the built `nvidia.ko` goes in the result.
const FLAVOURS: &[Flavour] = &[
    Flavour {
        package: "nvidia-kernel-dkms",
        source_prefix: "nvidia-current-",
        out_dir: "module",
    },
    Flavour {
        package: "nvidia-open-kernel-dkms",
        source_prefix: "nvidia-current-open-",
        out_dir: "module-open",
    },
];
/// The fixture's kernel metapackage (xtask/src/fixture/guest.rs).
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Bumped when the way the bytes are made changes, so old results are not reused.
const REVISION: &str = "2";

struct Flavour {
    package: &'static str,
    source_prefix: &'static str,
    out_dir: &'static str,
}

/// One `.deb` as apt would download it.
#[derive(Debug, Clone, PartialEq)]
struct Deb {
    file: String,
    sha256: String,
}

pub fn run(args: &[String]) -> Result<()> {
    let mut mirror = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mirror" => mirror = Some(it.next().context(USAGE)?.clone()),
            other => bail!("unknown nvidia-bytes option `{other}`\n  {USAGE}"),
        }
    }
    let mirror = match mirror {
        Some(m) => m.trim_end_matches('/').to_owned(),
        None => crate::fixture::mirror::find(Path::new("/etc/apt"), SUITE)?,
    };
    for tool in ["apt-get", "apt-cache", "dpkg-deb", "make", "gcc-12"] {
        ensure!(
            which(tool),
            "`{tool}` is missing: the module is built with the fixture kernel's compiler \
             (apt-get install gcc-12 make)"
        );
    }
    let started = Instant::now();
    let base = crate::target_dir(&project_root()).join("nvidia-bytes");
    let apt = Apt::new(&base.join("apt"), &mirror)?;
    note(&format!(
        "package lists from {mirror} ({SUITE}: {COMPONENTS})"
    ));
    apt.update()?;

    let kernel_image = apt.depends_on(KERNEL_METAPACKAGE, "linux-image-")?;
    let release = kernel_image
        .strip_prefix("linux-image-")
        .context("kernel package name")?
        .to_owned();
    let headers = format!("linux-headers-{release}");
    let mut packages = vec![FIRMWARE_PACKAGE.to_owned(), headers.clone()];
    packages.extend(FLAVOURS.iter().map(|f| f.package.to_owned()));
    packages.push(apt.depends_on(&headers, "linux-headers-")?);
    packages.push(apt.depends_on(&headers, "linux-kbuild-")?);
    let debs = apt.print_uris(&packages)?;
    let key = key_of(&debs);
    let dir = base.join(&key);
    let current = base.join("current");
    if dir.join("manifest.json").is_file() {
        point_current(&current, &key)?;
        note(&format!(
            "up to date: {} ({:.1}s)",
            current.display(),
            started.elapsed().as_secs_f64()
        ));
        return Ok(());
    }

    // Built in a private temp dir and renamed into place whole: a concurrent run (or one cut
    // off) never leaves a half-made result under the key.
    let work = tempfile::Builder::new()
        .prefix(".work-")
        .tempdir_in(&base)
        .context("temp dir under target/nvidia-bytes")?;
    let downloads = work.path().join("debs");
    std::fs::create_dir_all(&downloads)?;
    note(&format!("downloading {} packages", debs.len()));
    apt.download(&packages, &downloads)?;
    for deb in &debs {
        let got = digest::hash_file(&downloads.join(&deb.file))
            .with_context(|| format!("hash {}", deb.file))?;
        ensure!(
            got.to_hex() == deb.sha256,
            "{}: sha256 {} but the mirror's index says {}",
            deb.file,
            got.to_hex(),
            deb.sha256
        );
    }
    let out = work.path().join("result");
    let firmware = out.join("firmware");
    let tree = work.path().join("tree");
    for deb in &debs {
        let into = if deb.file.starts_with(FIRMWARE_PACKAGE) {
            &firmware
        } else {
            &tree
        };
        dpkg_extract(&downloads.join(&deb.file), into)?;
    }

    let version = driver_version(&tree, FLAVOURS[0].source_prefix)?;
    let headers = Headers::prepare(&tree, &release)?;
    let mut modules = serde_json::Map::new();
    for flavour in FLAVOURS {
        note(&format!(
            "building {}'s nvidia.ko {version} for {release} on this host",
            flavour.package
        ));
        let build_started = Instant::now();
        let source = tree
            .join("usr/src")
            .join(format!("{}{version}", flavour.source_prefix));
        let build = work.path().join(format!("build-{}", flavour.out_dir));
        let module = build_module(&headers, &source, &build)?;
        let build_secs = build_started.elapsed().as_secs_f64();
        std::fs::create_dir_all(out.join(flavour.out_dir))?;
        let path = format!("{}/nvidia.ko", flavour.out_dir);
        std::fs::rename(&module, out.join(&path))?;
        note(&format!("{path} built in {build_secs:.1}s"));
        modules.insert(
            flavour.package.to_owned(),
            serde_json::json!({ "path": path, "build_secs": build_secs }),
        );
    }

    let manifest = serde_json::json!({
        "revision": REVISION,
        "mirror": mirror,
        "suite": SUITE,
        "kernel_release": release,
        "driver_version": version,
        "modules": modules,
        "firmware_dir": format!("firmware/lib/firmware/nvidia/{version}"),
        "debs": debs.iter().map(|d| serde_json::json!({"file": d.file, "sha256": d.sha256})).collect::<Vec<_>>(),
    });
    digest::write_atomic(
        &out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    match std::fs::rename(&out, &dir) {
        Ok(()) => {}
        // Another run finished first with the same inputs: keep theirs.
        Err(_) if dir.join("manifest.json").is_file() => {}
        Err(e) => return Err(e).with_context(|| format!("rename into {}", dir.display())),
    }
    point_current(&current, &key)?;
    note(&format!(
        "done in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        current.display()
    ));
    Ok(())
}

/// The cache key: the revision and every `.deb`'s name and digest, in a fixed order.
fn key_of(debs: &[Deb]) -> String {
    let mut lines: Vec<String> = debs
        .iter()
        .map(|d| format!("{} {}\n", d.file, d.sha256))
        .collect();
    lines.sort();
    let text = format!("nvidia-bytes {REVISION}\n{}", lines.concat());
    digest::Sha256::of(text.as_bytes()).to_hex()[..16].to_owned()
}

/// `current` → `<key>` (a relative symlink, replaced atomically).
fn point_current(current: &Path, key: &str) -> Result<()> {
    let tmp = current.with_file_name(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(key, &tmp)?;
    std::fs::rename(&tmp, current)?;
    Ok(())
}

/// The driver version from a DKMS source directory (`usr/src/<prefix><version>`).
fn driver_version(tree: &Path, prefix: &str) -> Result<String> {
    let src = tree.join("usr/src");
    for entry in std::fs::read_dir(&src).with_context(|| format!("list {}", src.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        match name.strip_prefix(prefix) {
            Some(version) if version.starts_with(|c: char| c.is_ascii_digit()) => {
                return Ok(version.to_owned());
            }
            _ => {}
        }
    }
    bail!("no usr/src/{prefix}<version> in the unpacked packages")
}

/// The fixture kernel's unpacked headers: the flavour tree (`SYSOUT`) and the common tree it
/// includes (`SYSSRC`).
struct Headers {
    release: String,
    flavour: PathBuf,
    common: PathBuf,
}

impl Headers {
    fn prepare(tree: &Path, release: &str) -> Result<Headers> {
        let usr_src = tree.join("usr/src");
        let flavour = usr_src.join(format!("linux-headers-{release}"));
        // The flavour's Makefile includes the common tree by absolute path (/usr/src/…).
        let makefile = flavour.join("Makefile");
        let text = std::fs::read_to_string(&makefile)
            .with_context(|| format!("read {}", makefile.display()))?;
        let common = find_common(&usr_src, &text)?;
        let fixed = text.replace("/usr/src/", &format!("{}/", usr_src.display()));
        std::fs::write(&makefile, fixed)?;
        Ok(Headers {
            release: release.to_owned(),
            flavour,
            common,
        })
    }
}

/// Builds `nvidia.ko` from the DKMS source tree `source` (copied to `build`) as the package's
/// dkms.conf does (`make modules KERNEL_UNAME=…`), pointed at the unpacked headers with
/// SYSSRC/SYSOUT, and only the `nvidia` module (the others are not inspected). Returns the
/// module's path.
fn build_module(headers: &Headers, source: &Path, build: &Path) -> Result<PathBuf> {
    copy_dir(source, build)?;
    let log = build.join("make.log");
    let status = Command::new("make")
        .current_dir(build)
        .arg(format!("-j{}", jobs()))
        .arg("modules")
        .arg("NV_KERNEL_MODULES=nvidia")
        .arg(format!("SYSSRC={}", headers.common.display()))
        .arg(format!("SYSOUT={}", headers.flavour.display()))
        .arg(format!("KERNEL_UNAME={}", headers.release))
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::options().append(true).open(&log)?)
        .status()
        .context("run make")?;
    let module = build.join("nvidia.ko");
    if !status.success() || !module.is_file() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        bail!(
            "building {}/nvidia.ko failed ({status}); last lines of make's output:\n{}",
            source.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(module)
}

/// The `-common` headers tree the flavour's Makefile includes.
fn find_common(usr_src: &Path, makefile: &str) -> Result<PathBuf> {
    makefile
        .lines()
        .filter_map(|l| l.strip_prefix("include /usr/src/"))
        .filter_map(|rest| rest.strip_suffix("/Makefile"))
        .map(|dir| usr_src.join(dir))
        .find(|p| p.is_dir())
        .context("the headers' Makefile includes no /usr/src/<common>/Makefile")
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    ensure!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
    Ok(())
}

fn dpkg_extract(deb: &Path, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into)?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(into)
        .status()?;
    ensure!(status.success(), "dpkg-deb -x {}", deb.display());
    Ok(())
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

fn note(what: &str) {
    eprintln!("==> nvidia-bytes: {what}");
}

/// apt with its own sources, lists and cache: the host's apt state is left alone.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path, mirror: &str) -> Result<Apt> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let sources = dir.join("sources.list");
        digest::write_atomic(
            &sources,
            format!("deb {mirror} {SUITE} {COMPONENTS}\n").as_bytes(),
        )?;
        let d = |p: &str| dir.join(p).display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::Cache={}", d("cache")),
            "Dir::Etc::Preferences=/dev/null".to_owned(),
            "Dir::Etc::PreferencesParts=/dev/null".to_owned(),
            // Downloads land in our own directories, which apt's sandbox user may not write.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        Ok(Apt { options })
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.args(&self.options);
        c
    }

    fn output(&self, mut cmd: Command, what: &str) -> Result<String> {
        let out = cmd.output().with_context(|| format!("run {what}"))?;
        ensure!(
            out.status.success(),
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn update(&self) -> Result<()> {
        let mut c = self.command("apt-get");
        c.args(["-q", "update"]);
        self.output(c, "apt-get update").map(|_| ())
    }

    /// The first dependency of `package` whose name starts with `prefix`.
    fn depends_on(&self, package: &str, prefix: &str) -> Result<String> {
        let mut c = self.command("apt-cache");
        c.args(["depends", package]);
        let text = self.output(c, &format!("apt-cache depends {package}"))?;
        parse_depends(&text, prefix)
            .with_context(|| format!("{package} depends on no {prefix}* package"))
    }

    fn print_uris(&self, packages: &[String]) -> Result<Vec<Deb>> {
        let mut c = self.command("apt-get");
        c.args(["download", "--print-uris"]).args(packages);
        let text = self.output(c, "apt-get download --print-uris")?;
        let debs = parse_print_uris(&text)?;
        ensure!(
            debs.len() == packages.len(),
            "apt-get download --print-uris listed {} files for {} packages:\n{text}",
            debs.len(),
            packages.len()
        );
        Ok(debs)
    }

    fn download(&self, packages: &[String], into: &Path) -> Result<()> {
        let mut c = self.command("apt-get");
        c.current_dir(into).args(["-q", "download"]).args(packages);
        self.output(c, "apt-get download").map(|_| ())
    }
}

fn parse_depends(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| d.trim().trim_start_matches('<').trim_end_matches('>'))
        .find(|d| d.starts_with(prefix))
        .map(str::to_owned)
}

/// `'URL' FILE SIZE SHA256:HEX` lines.
fn parse_print_uris(text: &str) -> Result<Vec<Deb>> {
    text.lines()
        .filter(|l| l.starts_with('\''))
        .map(|l| {
            let mut f = l.split_whitespace();
            let _url = f.next();
            let file = f.next().context("file name")?.to_owned();
            let _size = f.next();
            let sha256 = f
                .next()
                .and_then(|h| h.strip_prefix("SHA256:"))
                .with_context(|| format!("no SHA256 in `{l}`"))?
                .to_owned();
            Ok(Deb { file, sha256 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines_are_parsed() {
        let text = "'http://deb.debian.org/debian/pool/non-free-firmware/n/nvidia-graphics-drivers/firmware-nvidia-gsp_535.261.03-1_amd64.deb' firmware-nvidia-gsp_535.261.03-1_amd64.deb 38550820 SHA256:0f1e\n";
        let debs = parse_print_uris(text).unwrap();
        assert_eq!(debs.len(), 1);
        assert_eq!(debs[0].file, "firmware-nvidia-gsp_535.261.03-1_amd64.deb");
        assert_eq!(debs[0].sha256, "0f1e");
        assert!(parse_print_uris("'u' f 1 MD5Sum:ab\n").is_err());
    }

    #[test]
    fn depends_finds_the_prefixed_package() {
        let text = "linux-headers-6.1.0-50-cloud-amd64\n  Depends: linux-headers-6.1.0-50-common\n  Depends: linux-kbuild-6.1\n  Depends: linux-compiler-gcc-12-x86\n";
        assert_eq!(
            parse_depends(text, "linux-kbuild-").as_deref(),
            Some("linux-kbuild-6.1")
        );
        assert_eq!(
            parse_depends(text, "linux-headers-").as_deref(),
            Some("linux-headers-6.1.0-50-common")
        );
        assert_eq!(parse_depends(text, "linux-image-"), None);
    }

    #[test]
    fn key_depends_on_every_deb_but_not_their_order() {
        let deb = |f: &str, h: &str| Deb {
            file: f.into(),
            sha256: h.into(),
        };
        let a = key_of(&[deb("a.deb", "1"), deb("b.deb", "2")]);
        assert_eq!(a, key_of(&[deb("b.deb", "2"), deb("a.deb", "1")]));
        assert_ne!(a, key_of(&[deb("a.deb", "1"), deb("b.deb", "3")]));
    }
}
