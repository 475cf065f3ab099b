//! `imgbake test`: boot an exported image as a cloud would start a new machine from it, and
//! check that it behaves like one.
//!
//! The image is never written: it backs a throwaway qcow2 overlay in a private run directory.
//! The seed is fresh — a random instance id and hostname, a test user (not the build user)
//! with a new key, and **no** host key, so cloud-init must generate the host keys as on a
//! first boot; the client trusts the first key it is shown and reports it
//! ([`provisioner::HostKeyPolicy::TrustOnFirstUse`]). What the image held before it booted
//! (host keys, machine-id) is read offline, so "generated on this boot" is a comparison.
//!
//! Each check is a [`TestRow`] with a [`RowVerdict`]; the verdict logic is pure functions of
//! what was read ([`host_key_row`], [`machine_id_row`], …), unit-tested below.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use provisioner::{BuildKeys, Captured, GuestSession, HostKeyPolicy};
use qemu_driver::overlay::BaseFormat;
use recipe::Recipe;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::boot::{BootRequest, Guest, Login, stop_vm};
use crate::error::io_err;
use crate::events::Emitter;
use crate::{BakeEvent, Cancel, Error, Result};

/// The user the test seed creates and logs in as: never the build user, whose absence is one
/// of the checks.
pub const TEST_USER: &str = "imgbake-test";

/// How long one guest command (a check or a recipe `test:` command) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Boot timeout when no recipe is given (the recipes' default).
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// What to test.
#[derive(Clone, Debug)]
pub struct ImageTestRequest {
    /// The exported image (RAW or qcow2); only read.
    pub image: PathBuf,
    /// The recipe it was built from: VM settings, `verify.nvidia`, `test:` commands. Without
    /// one: 2 vCPUs, 2 GiB, BIOS, no NVIDIA or command checks.
    pub recipe: Option<Recipe>,
    /// Overrides the recipe's `vm.accel` (`--accel`).
    pub accel: Option<recipe::AccelChoice>,
    /// Where the private run directory is made (short, for the QMP socket path).
    pub runtime_dir: PathBuf,
    /// Where to keep the test boot's serial console log (the run directory is removed).
    pub serial_log: Option<PathBuf>,
}

impl ImageTestRequest {
    /// A request for `image` with no recipe, the default runtime dir and no kept log.
    pub fn new(image: PathBuf) -> Self {
        Self {
            image,
            recipe: None,
            accel: None,
            runtime_dir: crate::default_runtime_dir(),
            serial_log: None,
        }
    }
}

/// A row's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowVerdict {
    /// The check passed.
    Pass,
    /// The check failed; the detail says why.
    Fail,
}

impl std::fmt::Display for RowVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RowVerdict::Pass => "pass",
            RowVerdict::Fail => "FAIL",
        })
    }
}

/// One check of the booted image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TestRow {
    /// What is checked (`ssh host key`, `cloud-init`, `machine-id`, …; `test 1` for the
    /// recipe's first `test:` command).
    pub name: String,
    /// Pass or fail.
    pub verdict: RowVerdict,
    /// What was seen, and for a failure why it fails.
    pub detail: String,
}

impl TestRow {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            verdict: RowVerdict::Pass,
            detail: detail.into(),
        }
    }

    fn fail(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            verdict: RowVerdict::Fail,
            detail: detail.into(),
        }
    }

    fn check(name: &str, ok: bool, detail: impl Into<String>) -> Self {
        if ok {
            Self::pass(name, detail)
        } else {
            Self::fail(name, detail)
        }
    }
}

/// What `imgbake test` found.
#[derive(Clone, Debug, Serialize)]
pub struct ImageTestReport {
    /// The image tested.
    pub image: PathBuf,
    /// `kvm` or `tcg` (empty when QEMU never started).
    pub accel: String,
    /// The test seed's instance id.
    pub instance_id: String,
    /// The test seed's hostname.
    pub hostname: String,
    /// The host key sshd served (`SHA256:…`), when SSH came up.
    pub host_key_fingerprint: Option<String>,
    /// The checks, in order.
    pub rows: Vec<TestRow>,
    /// True when every row passed.
    pub passed: bool,
}

impl ImageTestReport {
    /// The names of the failed rows.
    pub fn failed(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.verdict == RowVerdict::Fail)
            .map(|r| r.name.as_str())
            .collect()
    }
}

/// Boots `request.image` with a fresh seed, runs the checks, powers off, removes the run
/// directory. A failed check is a report with `passed: false`, not an error; errors are QEMU
/// failing, an unreadable image, or `cancel`.
pub async fn test_image(
    request: ImageTestRequest,
    events: UnboundedSender<BakeEvent>,
    cancel: Cancel,
) -> Result<ImageTestReport> {
    test_image_with(&request, &Emitter::new(events), &cancel).await
}

/// [`test_image`] with the build's emitter (`imgbake recipe --test`).
pub(crate) async fn test_image_with(
    request: &ImageTestRequest,
    events: &Emitter,
    cancel: &Cancel,
) -> Result<ImageTestReport> {
    // inspect runs its own small runtime for qcow2 reads: keep it off this one's threads.
    let image_path = request.image.clone();
    let before = tokio::task::spawn_blocking(move || read_image(&image_path))
        .await
        .map_err(|e| Error::Io {
            action: "read",
            path: request.image.clone(),
            source: std::io::Error::other(e),
        })??;
    let suffix: u64 = rand::random();
    let hostname = format!("imgbake-test-{:06x}", suffix & 0xff_ffff);
    let instance_id = format!("imgbake-test-{suffix:016x}");
    events.emit(BakeEvent::TestStarted {
        image: request.image.clone(),
        instance_id: instance_id.clone(),
        hostname: hostname.clone(),
    });

    let run_dir = tempfile::Builder::new()
        .prefix("imgbake-test-")
        .tempdir_in(&request.runtime_dir)
        .map_err(io_err("create a run directory in", &request.runtime_dir))?;
    let dir = run_dir.path();
    let keys = BuildKeys::generate();
    let seed_config = seed::SeedConfig {
        instance_id: instance_id.clone(),
        hostname: hostname.clone(),
        build_user: TEST_USER.to_owned(),
        user_authorized_key: keys.user_public_openssh(),
        host_key: None,
        network: seed::NetworkConfig::None,
        extra_cloud_config: Default::default(),
    };
    let seed_path = dir.join("seed.iso");
    seed::write_iso(&seed_config, &seed_path)?;
    let disk = dir.join("disk.qcow2");
    let image = std::path::absolute(&request.image).map_err(io_err("resolve", &request.image))?;
    qemu_driver::overlay::create_on(&image, before.format, &disk, None).await?;

    let config = vm_config(request, &disk, dir, seed_path);
    let boot_timeout = request
        .recipe
        .as_ref()
        .map_or(DEFAULT_BOOT_TIMEOUT, |r| r.vm.boot_timeout);
    let booted = crate::boot::boot(
        BootRequest {
            config,
            keys: Arc::new(keys),
            login: Login {
                user: TEST_USER.to_owned(),
                host_key: HostKeyPolicy::TrustOnFirstUse,
            },
            boot_timeout,
        },
        events,
        &cancel.graceful,
    )
    .await;
    let keep_log = || {
        if let Some(to) = &request.serial_log {
            let _ = std::fs::copy(dir.join("serial.log"), to);
        }
    };
    let mut report = ImageTestReport {
        image: request.image.clone(),
        accel: String::new(),
        instance_id: instance_id.clone(),
        hostname: hostname.clone(),
        host_key_fingerprint: None,
        rows: Vec::new(),
        passed: false,
    };
    let Guest { vm, session, .. } = match booted {
        Ok(guest) => guest,
        Err(_) if cancel.graceful.is_cancelled() => {
            return Err(Error::Interrupted {
                last_checkpoint: None,
            });
        }
        // SSH never came up or cloud-init never ran: the image failed, QEMU did not.
        Err(e @ (Error::Guest { .. } | Error::CloudInitNeverRan { .. })) => {
            keep_log();
            report.rows.push(TestRow::fail("boot", error_chain(&e)));
            emit_rows(events, &report.rows);
            return Ok(report);
        }
        Err(e) => {
            keep_log();
            return Err(e);
        }
    };
    report.accel = vm.accel().accel.to_string();
    report.host_key_fingerprint = Some(session.host_key_fingerprint());
    let expected = Expected {
        instance_id: &instance_id,
        hostname: &hostname,
        recipe: request.recipe.as_ref(),
    };
    let checked = tokio::select! {
        rows = guest_rows(&session, &before, &expected, events, &cancel.graceful) => rows,
        error = vm.wait_for_exit_or_error() => Err(error.into()),
    };
    session.close().await;
    stop_vm(vm, events, cancel).await;
    keep_log();
    if cancel.graceful.is_cancelled() {
        return Err(Error::Interrupted {
            last_checkpoint: None,
        });
    }
    report.rows = checked?;
    report.passed = report.rows.iter().all(|r| r.verdict == RowVerdict::Pass);
    Ok(report)
}

fn emit_rows(events: &Emitter, rows: &[TestRow]) {
    for row in rows {
        events.emit(BakeEvent::TestRow { row: row.clone() });
    }
}

/// The error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The recipe's VM settings (or the defaults), `--accel` applied.
fn vm_config(
    request: &ImageTestRequest,
    disk: &Path,
    run_dir: &Path,
    seed: PathBuf,
) -> qemu_driver::VmConfig {
    let mut config = match &request.recipe {
        Some(recipe) => crate::setup::vm_config(recipe, disk, &run_dir.join("vm"), seed),
        None => {
            let mut config = qemu_driver::VmConfig::new("imgbake-test", disk, run_dir.join("vm"));
            config.seed_iso = Some(seed);
            config
        }
    };
    // The serial log where boot() looks for it.
    config.run_dir = run_dir.to_owned();
    if let Some(accel) = request.accel {
        config.accel = match accel {
            recipe::AccelChoice::Auto => qemu_driver::AccelChoice::Auto,
            recipe::AccelChoice::Kvm => qemu_driver::AccelChoice::Kvm,
            recipe::AccelChoice::Tcg => qemu_driver::AccelChoice::Tcg,
        };
    }
    config
}

/// What the image held before it booted.
#[derive(Clone, Debug)]
pub(crate) struct ImageBefore {
    format: BaseFormat,
    /// `(path, contents)` of every `/etc/ssh/ssh_host_*` file (contents empty for private
    /// keys, which are only named).
    host_keys: Vec<(String, String)>,
    /// `/etc/machine-id`, if the file exists.
    machine_id: Option<String>,
}

/// Reads [`ImageBefore`] offline. The only place this module reads the image's files.
fn read_image(path: &Path) -> Result<ImageBefore> {
    let disk = inspect::Disk::open(path)?;
    let format = match disk.format() {
        inspect::ImageFormat::Raw => BaseFormat::Raw,
        inspect::ImageFormat::Qcow2 => BaseFormat::Qcow2,
    };
    let fs = inspect::ImageFs::open(&disk)?;
    let mut host_keys = Vec::new();
    for entry in fs.list("/etc/ssh")? {
        if entry.is_dir || !entry.name.starts_with("ssh_host_") {
            continue;
        }
        let path = format!("/etc/ssh/{}", entry.name);
        let text = if entry.name.ends_with(".pub") {
            fs.read_text(&path)?.unwrap_or_default()
        } else {
            String::new()
        };
        host_keys.push((path, text));
    }
    Ok(ImageBefore {
        format,
        host_keys,
        machine_id: fs.read_text("/etc/machine-id")?,
    })
}

/// What the booted guest should show.
struct Expected<'a> {
    instance_id: &'a str,
    hostname: &'a str,
    recipe: Option<&'a Recipe>,
}

/// Runs the checks in the guest, emitting each row as it is decided.
async fn guest_rows(
    session: &GuestSession,
    before: &ImageBefore,
    expected: &Expected<'_>,
    events: &Emitter,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Vec<TestRow>> {
    let run = async |cmd: &str| -> Result<Captured> {
        Ok(session
            .exec_capture_root(cmd, COMMAND_TIMEOUT, cancel)
            .await?)
    };
    let mut rows = Vec::new();
    let mut push = |row: TestRow| {
        events.emit(BakeEvent::TestRow { row: row.clone() });
        rows.push(row);
    };

    let live_keys = run("cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null; true").await?;
    push(host_key_row(
        &session.host_key_openssh(),
        &before.host_keys,
        &live_keys.stdout,
    ));
    let instance = run("cat /var/lib/cloud/data/instance-id 2>/dev/null; true").await?;
    let status = run("cloud-init status --long 2>&1; true").await?;
    push(cloud_init_row(
        instance.stdout.trim(),
        expected.instance_id,
        &status.stdout,
    ));
    let machine_id = run("cat /etc/machine-id").await?;
    push(machine_id_row(
        machine_id.stdout.trim(),
        before.machine_id.as_deref(),
    ));
    let hostname = run("hostname").await?;
    push(hostname_row(hostname.stdout.trim(), expected.hostname));
    let user = run(&format!("getent passwd {}", crate::BUILD_USER)).await?;
    push(build_user_row(user.status.success(), &user.stdout));
    let leftovers = run(&format!(
        "for p in /var/lib/imgbake /home/{}; do [ -e \"$p\" ] && echo \"$p\"; done; true",
        crate::BUILD_USER
    ))
    .await?;
    push(leftovers_row(&leftovers.stdout));

    let Some(recipe) = expected.recipe else {
        return Ok(rows);
    };
    if let Some(want) = recipe
        .verify
        .nvidia
        .as_ref()
        .and_then(|n| n.enable_gpu_firmware)
    {
        let config = run("modprobe -c 2>&1 | grep -E '^options nvidia[[:space:]]'; true").await?;
        push(nvidia_row(&config.stdout, want));
    }
    for (index, command) in recipe.test.iter().enumerate() {
        let done = run(command).await?;
        push(command_row(index, command, &done));
    }
    Ok(rows)
}

/// `<type> <base64>` of an OpenSSH public key line, without its comment.
fn key_body(line: &str) -> Option<(&str, &str)> {
    let mut parts = line.split_whitespace();
    Some((parts.next()?, parts.next()?))
}

/// The host key sshd served must be one the guest generated on this boot: it is among the
/// guest's live `/etc/ssh/ssh_host_*_key.pub`, and the image held no host key at all (a baked
/// key is shared by every machine started from the image).
pub fn host_key_row(offered: &str, image_keys: &[(String, String)], live_keys: &str) -> TestRow {
    const NAME: &str = "ssh host key";
    let Some(offered_body) = key_body(offered) else {
        return TestRow::fail(NAME, "sshd's host key could not be read");
    };
    let kind = offered_body.0;
    let served = image_keys
        .iter()
        .find(|(_, text)| text.lines().any(|l| key_body(l) == Some(offered_body)));
    if let Some((path, _)) = served {
        return TestRow::fail(
            NAME,
            format!("host key baked into the image: sshd served {kind} from the image's {path}"),
        );
    }
    if !image_keys.is_empty() {
        let paths: Vec<&str> = image_keys.iter().map(|(p, _)| p.as_str()).collect();
        return TestRow::fail(
            NAME,
            format!("host key baked into the image: {}", paths.join(", ")),
        );
    }
    if !live_keys.lines().any(|l| key_body(l) == Some(offered_body)) {
        return TestRow::fail(
            NAME,
            format!(
                "sshd served a {kind} key that is not in the guest's /etc/ssh/ssh_host_*_key.pub"
            ),
        );
    }
    TestRow::pass(
        NAME,
        format!("{kind} generated on this boot; the image has no host keys"),
    )
}

/// cloud-init ran for this test's instance id, and `cloud-init status --long` says `done`.
pub fn cloud_init_row(live_instance: &str, expected: &str, status_long: &str) -> TestRow {
    const NAME: &str = "cloud-init";
    let status = status_long
        .lines()
        .find_map(|l| l.trim().strip_prefix("status:"))
        .map(str::trim)
        .unwrap_or("unknown");
    if live_instance != expected {
        let seen = if live_instance.is_empty() {
            "none"
        } else {
            live_instance
        };
        return TestRow::fail(
            NAME,
            format!(
                "instance id is {seen}, not this test's {expected}: cloud-init did not run as a new instance"
            ),
        );
    }
    if status != "done" {
        let errors: Vec<&str> = status_long
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("status:") && !l.starts_with("time:"))
            .take(5)
            .collect();
        return TestRow::fail(NAME, format!("status {status}: {}", errors.join("; ")));
    }
    TestRow::pass(NAME, format!("new instance {expected}, status done"))
}

/// `/etc/machine-id` is a valid id, made on this boot: the image's was empty or absent (a
/// non-empty one is kept by systemd and shared by every machine started from the image).
pub fn machine_id_row(live: &str, image: Option<&str>) -> TestRow {
    const NAME: &str = "machine-id";
    let valid = live.len() == 32 && live.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return TestRow::fail(
            NAME,
            format!("/etc/machine-id is `{live}`, not a 32-hex-digit id"),
        );
    }
    match image.map(str::trim) {
        Some(baked) if baked == live => TestRow::fail(
            NAME,
            format!(
                "machine-id {live} is baked into the image (empty /etc/machine-id in the cleanup step)"
            ),
        ),
        Some(baked) if !baked.is_empty() && baked != "uninitialized" => TestRow::fail(
            NAME,
            format!(
                "the image carries machine-id {baked}; it should be empty so each machine makes its own"
            ),
        ),
        _ => TestRow::pass(NAME, format!("{live}, generated on this boot")),
    }
}

/// The hostname is the test seed's.
pub fn hostname_row(live: &str, expected: &str) -> TestRow {
    TestRow::check(
        "hostname",
        live == expected,
        if live == expected {
            format!("{live}, from the seed")
        } else {
            format!("`{live}`, not the seed's {expected}")
        },
    )
}

/// The build user is gone (`getent passwd` found nothing).
pub fn build_user_row(found: bool, entry: &str) -> TestRow {
    TestRow::check(
        "build user",
        !found,
        if found {
            format!("the build user still exists: {}", entry.trim())
        } else {
            format!("no user {}", crate::BUILD_USER)
        },
    )
}

/// No build leftovers (`/var/lib/imgbake`, the build user's home).
pub fn leftovers_row(found: &str) -> TestRow {
    let found: Vec<&str> = found
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    TestRow::check(
        "build leftovers",
        found.is_empty(),
        if found.is_empty() {
            "none".to_owned()
        } else {
            format!("left in the image: {}", found.join(", "))
        },
    )
}

/// `modprobe -c` in the running guest carries `NVreg_EnableGpuFirmware=<want>` for `nvidia`
/// (the last occurrence wins, as when the module loads).
pub fn nvidia_row(options_lines: &str, want: u32) -> TestRow {
    const NAME: &str = "nvidia option";
    let value = options_lines
        .lines()
        .filter(|l| l.split_whitespace().take(2).eq(["options", "nvidia"]))
        .flat_map(|l| l.split_whitespace().skip(2))
        .filter_map(|o| o.strip_prefix("NVreg_EnableGpuFirmware="))
        .last();
    match value {
        None => TestRow::fail(
            NAME,
            format!(
                "modprobe -c has no `options nvidia … NVreg_EnableGpuFirmware=`; expected {want}"
            ),
        ),
        Some(v) if inspect::modprobe::parse_uint(v) == Some(want) => {
            TestRow::pass(NAME, format!("modprobe -c: NVreg_EnableGpuFirmware={v}"))
        }
        Some(v) => TestRow::fail(
            NAME,
            format!("modprobe -c: NVreg_EnableGpuFirmware={v}, expected {want}"),
        ),
    }
}

/// A recipe `test:` command (1-based in the row name) exited 0.
pub fn command_row(index: usize, command: &str, done: &Captured) -> TestRow {
    let name = format!("test {}", index + 1);
    if done.status.success() {
        return TestRow::pass(&name, format!("`{command}` exited 0"));
    }
    let stderr: Vec<&str> = done.stderr.lines().rev().take(3).collect();
    let stderr: Vec<&str> = stderr.into_iter().rev().collect();
    let mut detail = format!("`{command}` ended with {}", done.status);
    if !stderr.is_empty() {
        detail.push_str(": ");
        detail.push_str(&stderr.join(" | "));
    }
    TestRow::fail(&name, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA root@a";
    const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB root@b";

    fn image_key(text: &str) -> Vec<(String, String)> {
        vec![
            (
                "/etc/ssh/ssh_host_ed25519_key.pub".to_owned(),
                text.to_owned(),
            ),
            ("/etc/ssh/ssh_host_ed25519_key".to_owned(), String::new()),
        ]
    }

    #[test]
    fn a_key_generated_on_this_boot_passes() {
        let offered = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA";
        let row = host_key_row(offered, &[], &format!("{KEY_B}\n{KEY_A}\n"));
        assert_eq!(row.verdict, RowVerdict::Pass, "{row:?}");
    }

    #[test]
    fn a_baked_host_key_fails_and_says_so() {
        let offered = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA";
        let row = host_key_row(offered, &image_key(KEY_A), KEY_A);
        assert_eq!(row.verdict, RowVerdict::Fail);
        assert!(
            row.detail.contains("host key baked into the image"),
            "{row:?}"
        );
        assert!(row.detail.contains("ssh_host_ed25519_key.pub"), "{row:?}");
        // Baked but regenerated by cloud-init: still baked (every machine got it until then).
        let row = host_key_row(offered, &image_key(KEY_B), KEY_A);
        assert_eq!(row.verdict, RowVerdict::Fail);
        assert!(
            row.detail.contains("host key baked into the image"),
            "{row:?}"
        );
        // Served but not on the guest's disk: something else answers.
        let row = host_key_row(offered, &[], KEY_B);
        assert_eq!(row.verdict, RowVerdict::Fail);
        assert_eq!(host_key_row("", &[], KEY_A).verdict, RowVerdict::Fail);
    }

    #[test]
    fn cloud_init_must_be_this_instance_and_done() {
        let done = "status: done\ntime: Tue\ndetail:\nDataSourceNoCloud [seed=/dev/sr0]\n";
        assert_eq!(cloud_init_row("t-1", "t-1", done).verdict, RowVerdict::Pass);
        let row = cloud_init_row("imgbake-build", "t-1", done);
        assert_eq!(row.verdict, RowVerdict::Fail);
        assert!(row.detail.contains("not this test's t-1"), "{row:?}");
        let row = cloud_init_row("", "t-1", done);
        assert!(row.detail.contains("instance id is none"), "{row:?}");
        let error =
            "status: error\ntime: Tue\ndetail:\nDataSourceNoCloud\nerrors:\n\t('locale', ...)\n";
        let row = cloud_init_row("t-1", "t-1", error);
        assert_eq!(row.verdict, RowVerdict::Fail);
        assert!(row.detail.starts_with("status error: "), "{row:?}");
        assert!(row.detail.contains("locale"), "{row:?}");
    }

    #[test]
    fn machine_id_must_be_new() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(machine_id_row(id, Some("")).verdict, RowVerdict::Pass);
        assert_eq!(machine_id_row(id, None).verdict, RowVerdict::Pass);
        assert_eq!(
            machine_id_row(id, Some("uninitialized\n")).verdict,
            RowVerdict::Pass
        );
        let row = machine_id_row(id, Some(&format!("{id}\n")));
        assert_eq!(row.verdict, RowVerdict::Fail);
        assert!(row.detail.contains("baked into the image"), "{row:?}");
        let other = "fedcba9876543210fedcba9876543210";
        assert_eq!(machine_id_row(id, Some(other)).verdict, RowVerdict::Fail);
        assert_eq!(machine_id_row("", Some("")).verdict, RowVerdict::Fail);
    }

    #[test]
    fn hostname_user_and_leftovers() {
        assert_eq!(hostname_row("a", "a").verdict, RowVerdict::Pass);
        assert_eq!(hostname_row("fixture-smoke", "a").verdict, RowVerdict::Fail);
        assert_eq!(build_user_row(false, "").verdict, RowVerdict::Pass);
        let row = build_user_row(true, "imgbake:x:1000:1000::/home/imgbake:/bin/bash\n");
        assert_eq!(row.verdict, RowVerdict::Fail);
        assert!(row.detail.contains("/home/imgbake"), "{row:?}");
        assert_eq!(leftovers_row("\n").verdict, RowVerdict::Pass);
        let row = leftovers_row("/var/lib/imgbake\n");
        assert_eq!(row.verdict, RowVerdict::Fail);
        assert!(row.detail.contains("/var/lib/imgbake"), "{row:?}");
    }

    #[test]
    fn the_nvidia_option_is_read_from_modprobe_c() {
        let config = "options nvidia NVreg_OpenRmEnableUnsupportedGpus=1 NVreg_EnableGpuFirmware=0\n\
                      options nvidia NVreg_EnableGpuFirmware=1\n\
                      options nvidia_drm modeset=1\n";
        assert_eq!(nvidia_row(config, 1).verdict, RowVerdict::Pass);
        let row = nvidia_row(config, 0);
        assert_eq!(row.verdict, RowVerdict::Fail);
        assert!(row.detail.contains("=1, expected 0"), "{row:?}");
        assert_eq!(
            nvidia_row("options nvidia NVreg_EnableGpuFirmware=0x1\n", 1).verdict,
            RowVerdict::Pass
        );
        assert_eq!(
            nvidia_row("options nvidia_drm NVreg_EnableGpuFirmware=1\n", 1).verdict,
            RowVerdict::Fail
        );
        assert_eq!(nvidia_row("", 1).verdict, RowVerdict::Fail);
    }

    #[test]
    fn a_test_command_must_exit_zero() {
        let captured = |code, stderr: &str| Captured {
            status: provisioner::ExitStatus::Code(code),
            stdout: String::new(),
            stderr: stderr.to_owned(),
        };
        let row = command_row(0, "true", &captured(0, ""));
        assert_eq!(
            (row.name.as_str(), row.verdict),
            ("test 1", RowVerdict::Pass)
        );
        let row = command_row(
            1,
            "systemctl is-active foo",
            &captured(3, "a\nb\nc\ninactive\n"),
        );
        assert_eq!(
            (row.name.as_str(), row.verdict),
            ("test 2", RowVerdict::Fail)
        );
        assert!(row.detail.contains("exit code 3"), "{row:?}");
        assert!(row.detail.ends_with("b | c | inactive"), "{row:?}");
    }

    #[test]
    fn the_report_names_failed_rows() {
        let report = ImageTestReport {
            image: "x".into(),
            accel: "tcg".into(),
            instance_id: "i".into(),
            hostname: "h".into(),
            host_key_fingerprint: None,
            rows: vec![
                hostname_row("h", "h"),
                host_key_row("ssh-ed25519 AAAA", &image_key("ssh-ed25519 AAAA"), ""),
            ],
            passed: false,
        };
        assert_eq!(report.failed(), ["ssh host key"]);
    }
}
