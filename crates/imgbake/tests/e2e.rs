//! End-to-end tests of `imgbake recipe` on the fixture guest under TCG (issues 4 and 5): the
//! smoke build with every step's effect read back from the output disk; checkpoint reuse,
//! `--resume-from` and a corrupted checkpoint, proved by what the guest wrote; and the faults
//! (failing step, step timeout, Ctrl-C, QEMU killed, Ctrl-C while checkpointing), each ending
//! with its exit code, no QEMU left and no image under the final name.
//!
//! The VM tests take a file lock so they run one at a time: two TCG guests on two cores only
//! make both slower. Each uses its own sandbox (cache, output and QEMU run dir), so they stay
//! independent. Timings are printed (`--nocapture`), never asserted.

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    Finished, GuestDisk, LONG_BUILD, NO_VM, SHORT_BUILD, Sandbox, have_vm_prerequisites, vm_lock,
};
use serde_json::Value;

/// The steps of `fixtures/recipes/smoke.yaml`.
const SMOKE_STEPS: [&str; 6] = ["01", "02", "03", "04", "05", "99"];

// ---------------------------------------------------------------------------------------------
// 1. The smoke build (issue 4, "Done when" 1)
// ---------------------------------------------------------------------------------------------

#[test]
fn smoke_recipe_builds_and_every_step_is_on_the_output_disk() {
    if !have_vm_prerequisites() {
        return;
    }
    let _vm = vm_lock();
    let sandbox = Sandbox::new("smoke");
    let recipe = test_support::workspace_root().join("fixtures/recipes/smoke.yaml");
    // Issue 15: the recipe's secret comes from imgbake's environment only; step 01 echoes it
    // on both streams and writes its sha256 into the image.
    let secret = smoke_secret();
    // `--test` (issue 13) boots the exported image once more as a new machine and checks it.
    let run = sandbox
        .start_recipe_with_env(
            &recipe,
            &["--json", "--test"],
            &[("SMOKE_SECRET", secret.as_str())],
        )
        .finish(LONG_BUILD);
    run.expect_code(0, "smoke build");
    sandbox.assert_no_qemu_left("smoke build");

    // The event stream: JSON lines (checked while reading), each step started, finished well
    // and checkpointed, in order; the reboot of step 04 was seen.
    assert_eq!(run.started_steps(), SMOKE_STEPS, "step_started events");
    for id in SMOKE_STEPS {
        let finished: Vec<&Value> = run
            .events_named("step_finished")
            .into_iter()
            .filter(|e| e["id"] == id)
            .collect();
        assert_eq!(finished.len(), 1, "one step_finished for {id}");
        assert_eq!(finished[0]["success"], true, "step {id}: {}", finished[0]);
        let saved = run.events_named("checkpoint_saved");
        assert!(
            saved
                .iter()
                .any(|e| e["id"] == id && e["published"] == true),
            "no published checkpoint_saved for step {id}"
        );
    }
    assert!(
        run.events
            .iter()
            .all(|e| e["event"].is_string() && e["recipe"] == "fixture-smoke")
    );
    assert!(
        run.events_named("rebooted").iter().any(|e| e["id"] == "04"),
        "no rebooted event for 04"
    );
    assert!(run.events_named("vm_started")[0]["accel"] == "tcg");
    assert_eq!(
        run.reused_steps().0,
        Vec::<String>::new(),
        "a fresh cache reuses nothing"
    );

    let out = &sandbox.out;
    let raw = out.join("fixture-smoke.raw");
    let qcow2 = out.join("fixture-smoke.qcow2");
    for file in [&raw, &qcow2] {
        assert!(file.is_file(), "{} missing", file.display());
    }

    // Every step's effect, read from the exported RAW without mounting it.
    let disk = GuestDisk::open(&raw);
    assert_smoke_effects(&disk, "raw");
    // The flattened qcow2 holds the same.
    assert_smoke_effects(&GuestDisk::open(&qcow2), "qcow2");

    // RAW is sparse: far fewer blocks allocated than its 4 GiB size.
    assert_sparse(&raw);

    // SHA256SUMS lists both images and checks out.
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for name in ["fixture-smoke.raw", "fixture-smoke.qcow2"] {
        assert!(
            sums.contains(name),
            "SHA256SUMS does not list {name}:\n{sums}"
        );
    }
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    // manifest.json, api-payload.json, run.json.
    let manifest = read_json(&out.join("manifest.json"));
    let manifest_text = manifest.to_string();
    assert!(
        manifest_text.contains("fixture-smoke"),
        "manifest names the recipe: {manifest_text}"
    );
    for id in SMOKE_STEPS {
        assert!(
            manifest_text.contains(&format!("\"{id}\"")),
            "manifest lists step {id}"
        );
    }
    let base_sha = std::fs::read_to_string(
        test_support::workspace_root().join("target/fixture/debian-bookworm.qcow2.sha256"),
    )
    .unwrap();
    let base_sha = base_sha.split_whitespace().next().unwrap();
    assert!(
        manifest_text.contains(base_sha),
        "manifest records the base image's sha256"
    );
    assert!(
        manifest_text.contains("bookworm") || manifest_text.contains("Debian"),
        "manifest has os-release facts"
    );
    let payload = read_json(&out.join("api-payload.json"));
    assert!(payload.is_object(), "api-payload.json: {payload}");
    assert!(
        payload.to_string().contains("virtualized"),
        "payload: {payload}"
    );
    let run_json = read_json(&out.join("run.json"));
    assert_eq!(run_json["recipe"], "fixture-smoke");
    assert_eq!(run_json["accel"], "tcg");
    let steps = run_json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), SMOKE_STEPS.len());
    for (step, id) in steps.iter().zip(SMOKE_STEPS) {
        assert_eq!(step["id"], id);
        assert_eq!(step["status"], "ran", "{step}");
        assert_eq!(step["exit_code"], 0, "{step}");
    }
    let first_step = run_json["first_step_secs"]
        .as_f64()
        .expect("first_step_secs");
    let cloud_init = run_json["guest_cloud_init_finished_uptime_secs"].as_f64();
    assert!(out.join("logs/serial.log").is_file());
    for name in [
        "01-marker",
        "02-install-package",
        "03-nvidia-config",
        "99-cleanup",
    ] {
        assert!(
            out.join(format!("logs/{name}.log")).is_file(),
            "logs/{name}.log missing"
        );
    }

    // The exported image passes `imgbake verify` on its own.
    let verify = sandbox
        .start(&[
            "verify".into(),
            raw.display().to_string(),
            "--recipe".into(),
            recipe.display().to_string(),
            "--json".into(),
        ])
        .finish(NO_VM);
    verify.expect_code(0, "imgbake verify of the smoke RAW");
    let report: Value = serde_json::from_str(&verify.stdout).expect("verify --json prints JSON");
    assert_eq!(report["passed"], true, "{report}");
    let decoded = report["gpu_firmware"]["decoded"]
        .as_str()
        .unwrap_or_default();
    assert!(
        decoded.starts_with("1 = "),
        "effective NVreg_EnableGpuFirmware: {decoded}"
    );

    // run.json's figure is the last boot's (after the reboot of step 04); the first boot's is
    // the one to compare with the time to the first step.
    let serial = std::fs::read_to_string(out.join("logs/serial.log")).unwrap_or_default();
    let finished_uptimes: Vec<f64> = serial
        .lines()
        .filter(|l| l.contains("Cloud-init v.") && l.contains("finished at"))
        .filter_map(|l| {
            l.rsplit_once("Up ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let event_secs = |name: &str| {
        run.events_named(name)
            .first()
            .and_then(|e| e["after_secs"].as_f64())
    };
    eprintln!(
        "TIMING smoke build: wall {:.1}s, total_secs {}; QEMU start -> ssh ready {:?}s -> \
         cloud-init done {:?}s -> first step {first_step:.1}s; guest cloud-init finished at \
         uptime {finished_uptimes:?}s (one per boot; run.json says {cloud_init:?})",
        run.wall.as_secs_f64(),
        run_json["total_secs"],
        event_secs("ssh_ready"),
        event_secs("cloud_init_done"),
    );

    // Issue 15: the step saw the secret's value, and the value is in no file of the sandbox
    // (outputs, logs, the exported RAW, the cache with its qcow2 layers) nor on imgbake's
    // stdout or stderr: only its mask is.
    assert_secret_used_masked_and_never_written(&sandbox, &run, &disk, &secret);

    // Issue 13: the boot test after export passed, and the same image with SSH host keys
    // written into it fails, naming the host key.
    assert_boot_test_passed(&run);
    assert_baked_host_keys_fail_the_boot_test(&sandbox, &raw, &recipe);
}

/// A value no file holds by chance: unique per run.
fn smoke_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("imgbake-smoke-secret-{:x}-{nanos:x}", std::process::id())
}

/// Issue 15's "grep of every output, log and the image for a secret's value finds nothing but
/// masks", for the smoke build.
fn assert_secret_used_masked_and_never_written(
    sandbox: &Sandbox,
    run: &Finished,
    disk: &GuestDisk,
    secret: &str,
) {
    // The step got the right value: its sha256 is in the image.
    assert_eq!(
        disk.must_text("/var/lib/imgbake-smoke/secret.sha256"),
        format!("{}\n", digest::Sha256::of(secret.as_bytes())),
        "the sha256 step 01 wrote of SMOKE_SECRET"
    );
    // What it echoed on both streams is masked in the log and in the events.
    let mask = "[secret SMOKE_SECRET]";
    let log = std::fs::read_to_string(sandbox.out.join("logs/01-marker.log")).unwrap();
    for line in [
        format!("secret on stdout: {mask}"),
        format!("secret on stderr: {mask}"),
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "01-marker.log lacks `{line}`:\n{log}"
        );
        assert!(
            run.events_named("step_output")
                .iter()
                .any(|e| e["id"] == "01" && e["line"] == line.as_str()),
            "no step_output event `{line}`"
        );
    }
    // Nothing else anywhere: every file under the sandbox (output dir with logs, RAW, qcow2,
    // manifest, run.json; cache with the base, the layers and their records; QEMU's run
    // directories), byte for byte, and imgbake's own stdout and stderr.
    let (files, bytes, found) = files_containing(sandbox.root(), secret.as_bytes());
    assert!(found.is_empty(), "the secret's value is in {found:?}");
    assert!(
        files > 10 && bytes > 1 << 30,
        "searched only {files} files, {bytes} bytes"
    );
    for (what, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(!text.contains(secret), "imgbake's {what} holds the secret");
    }
    eprintln!("secret scan: {files} files, {} MiB, no match", bytes >> 20);
    // VM states are compressed RAM images the scan above cannot read into: a recipe with
    // secrets saves none after its steps, and says so. The first boot's is saved: it is taken
    // before any step ran, and no secret is in the seed.
    assert_eq!(
        states_saved(run),
        ["ready"],
        "a recipe with secrets saved vm states after its steps"
    );
    assert!(
        run.events_named("vm_state_not_used")
            .iter()
            .any(|e| e.to_string().contains("secrets")),
        "no event says why no vm state was saved"
    );
}

/// The scan above can fail: it finds a value in a sparse file, straddling two of its reads,
/// and in a nested directory.
#[test]
fn the_secret_scan_finds_a_value_anywhere_in_a_file() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let needle = b"needle-of-a-secret";
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    let mut sparse = std::fs::File::create(dir.path().join("a/b/disk.raw")).unwrap();
    // Across the end of the scan's first 8 MiB read.
    sparse.seek(SeekFrom::Start((8 << 20) - 5)).unwrap();
    sparse.write_all(needle).unwrap();
    sparse.set_len(100 << 20).unwrap();
    std::fs::write(dir.path().join("clean.log"), "nothing here\n").unwrap();
    let (files, bytes, found) = files_containing(dir.path(), needle);
    assert_eq!(files, 2);
    assert!(bytes >= 8 << 20, "{bytes}");
    assert_eq!(found, [dir.path().join("a/b/disk.raw")]);
}

/// Searches every regular file under `dir` (recursively, symlinks not followed) for `needle`:
/// `(files searched, bytes searched, files holding it)`.
fn files_containing(dir: &Path, needle: &[u8]) -> (usize, u64, Vec<std::path::PathBuf>) {
    use std::io::Read;
    let finder = memchr::memmem::Finder::new(needle);
    let (mut files, mut bytes, mut found) = (0, 0u64, Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    let mut buf = vec![0u8; 8 << 20];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let mut file = std::fs::File::open(&path).unwrap();
            files += 1;
            // Keep the last needle-1 bytes of each read so a match across two reads is seen.
            let keep = needle.len() - 1;
            let mut filled = 0;
            loop {
                let n = file.read(&mut buf[filled..]).unwrap();
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                let end = filled + n;
                if finder.find(&buf[..end]).is_some() {
                    found.push(path.clone());
                    break;
                }
                let tail = end.min(keep);
                buf.copy_within(end - tail..end, 0);
                filled = tail;
            }
        }
    }
    (files, bytes, found)
}

/// The rows every boot test of the smoke image has (the recipe verifies NVIDIA settings and
/// has two `test:` commands).
const BOOT_TEST_ROWS: [&str; 9] = [
    "ssh host key",
    "cloud-init",
    "machine-id",
    "hostname",
    "build user",
    "build leftovers",
    "nvidia option",
    "test 1",
    "test 2",
];

/// `recipe --test`: one `test_row` event per check, all passing, after the outputs.
fn assert_boot_test_passed(run: &Finished) {
    let started = run.events_named("test_started");
    assert_eq!(started.len(), 1, "one test_started event");
    let hostname = started[0]["hostname"].as_str().unwrap();
    assert!(hostname.starts_with("imgbake-test-"), "{}", started[0]);
    let rows = run.events_named("test_row");
    let names: Vec<&str> = rows
        .iter()
        .map(|e| e["row"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BOOT_TEST_ROWS, "boot test rows");
    for row in &rows {
        assert_eq!(row["row"]["verdict"], "pass", "{row}");
    }
    let host_key = &rows[0]["row"]["detail"];
    assert!(
        host_key
            .as_str()
            .unwrap()
            .contains("generated on this boot"),
        "{host_key}"
    );
    let index = |name: &str| run.events.iter().position(|e| e["event"] == name).unwrap();
    assert!(
        index("output_written") < index("test_started"),
        "the test runs after export"
    );
    let test_secs = run.events.last().unwrap()["elapsed_secs"].as_f64().unwrap()
        - started[0]["elapsed_secs"].as_f64().unwrap();
    eprintln!("TIMING boot test after export (recipe --test): {test_secs:.1}s");
}

/// Writes an ed25519 host key pair into a copy of the RAW (offline: `debugfs -w` on the root
/// partition at its offset) and checks that `imgbake test` fails with exit 7, naming the host
/// key row and only it.
fn assert_baked_host_keys_fail_the_boot_test(sandbox: &Sandbox, raw: &Path, recipe: &Path) {
    let baked = sandbox.root().join("baked.raw");
    let copy = Command::new("cp")
        .args(["--sparse=always"])
        .arg(raw)
        .arg(&baked)
        .status()
        .unwrap();
    assert!(copy.success(), "cp {}", raw.display());
    let keys = sandbox.root().join("hostkeys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = keys.join("ssh_host_ed25519_key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "baked", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success(), "ssh-keygen");
    let offset = root_partition_offset(&baked);
    let script = keys.join("debugfs.cmd");
    std::fs::write(
        &script,
        format!(
            "cd /etc/ssh
             write {key} ssh_host_ed25519_key
             write {key}.pub ssh_host_ed25519_key.pub
             sif ssh_host_ed25519_key uid 0
sif ssh_host_ed25519_key gid 0
             sif ssh_host_ed25519_key.pub uid 0
sif ssh_host_ed25519_key.pub gid 0
",
            key = key.display()
        ),
    )
    .unwrap();
    let debugfs = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(format!("{}?offset={offset}", baked.display()))
        .output()
        .unwrap();
    assert!(
        debugfs.status.success(),
        "debugfs: {}",
        String::from_utf8_lossy(&debugfs.stderr)
    );
    let disk = GuestDisk::open(&baked);
    assert!(
        disk.exists("/etc/ssh/ssh_host_ed25519_key.pub"),
        "debugfs wrote the key into the copy"
    );

    let test = sandbox
        .start(&[
            "test".into(),
            baked.display().to_string(),
            "--recipe".into(),
            recipe.display().to_string(),
            "--accel".into(),
            "tcg".into(),
            "--json".into(),
        ])
        .finish(SHORT_BUILD);
    test.expect_code(7, "imgbake test of the image with baked host keys");
    sandbox.assert_no_qemu_left("imgbake test");
    assert!(
        test.stderr
            .contains("error: the image failed its boot test: ssh host key\n"),
        "stderr names the failed row:\n{}",
        test.stderr
    );
    assert!(test.stderr.contains("try: "), "{}", test.stderr);
    let report: Value = serde_json::from_str(&test.stdout).expect("test --json prints JSON");
    assert_eq!(report["passed"], false, "{report}");
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, BOOT_TEST_ROWS, "{report}");
    for row in rows {
        let expected = if row["name"] == "ssh host key" {
            "fail"
        } else {
            "pass"
        };
        assert_eq!(row["verdict"], expected, "{row}");
    }
    let detail = rows[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("host key baked into the image")
            && detail.contains("/etc/ssh/ssh_host_ed25519_key.pub"),
        "{detail}"
    );
    // The image under test was only read.
    assert!(
        GuestDisk::open(&baked).exists("/etc/ssh/ssh_host_ed25519_key.pub"),
        "the tested image was modified"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&sandbox.run)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("imgbake-test-"))
        .collect();
    assert!(leftovers.is_empty(), "run dir left: {leftovers:?}");
    eprintln!(
        "TIMING imgbake test (baked host keys, RAW): wall {:.1}s",
        test.wall.as_secs_f64()
    );
    let _ = std::fs::remove_file(&baked);
}

/// The byte offset of the largest partition (the root filesystem), from `sfdisk --json`.
fn root_partition_offset(image: &Path) -> u64 {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "sfdisk --json {}", image.display());
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = &table["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let root = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|p| p["size"].as_u64().unwrap_or(0))
        .expect("a partition");
    root["start"].as_u64().unwrap() * sector
}

fn assert_smoke_effects(disk: &GuestDisk, what: &str) {
    // 01: marker and the run log (each step once, in order).
    assert_eq!(
        disk.must_text("/etc/imgbake-smoke/marker"),
        "smoke marker for imgbake\n",
        "{what}"
    );
    assert_eq!(
        disk.must_text("/var/lib/imgbake-smoke/runs.log"),
        "01 ran\n02 ran\n03 ran\n04 ran\n05 ran\n",
        "{what}: runs.log"
    );
    // 02: the package is installed.
    let status = disk.must_text("/var/lib/dpkg/status");
    let hello = status
        .split("\n\n")
        .find(|stanza| stanza.starts_with("Package: hello\n"))
        .unwrap_or_else(|| panic!("{what}: hello is not in dpkg status"));
    assert!(
        hello.contains("Status: install ok installed"),
        "{what}: {hello}"
    );
    assert!(disk.exists("/usr/bin/hello"), "{what}: /usr/bin/hello");
    // 03: the modprobe option and the placeholder firmware.
    assert_eq!(
        disk.must_text("/etc/modprobe.d/nvidia.conf"),
        "options nvidia NVreg_EnableGpuFirmware=1\n",
        "{what}"
    );
    let firmware = disk.list("/lib/firmware/nvidia/565.57.01");
    assert_eq!(
        firmware,
        ["gsp_ga10x.bin", "gsp_tu10x.bin"],
        "{what}: firmware dir"
    );
    // 04/05: the reboot happened (05 compared boot ids and wrote this).
    let rebooted = disk.must_text("/var/lib/imgbake-smoke/rebooted");
    let (before, after) = rebooted
        .trim()
        .strip_prefix("rebooted: ")
        .and_then(|s| s.split_once(" -> "))
        .unwrap_or_else(|| panic!("{what}: rebooted file: {rebooted}"));
    assert_ne!(before, after, "{what}");
    assert_eq!(
        disk.must_text("/var/lib/imgbake-smoke/step05-edition"),
        "original\n"
    );
    // 99: hygiene.
    let host_keys: Vec<String> = disk
        .list("/etc/ssh")
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_"))
        .collect();
    assert!(
        host_keys.is_empty(),
        "{what}: host keys left: {host_keys:?}"
    );
    let passwd = disk.must_text("/etc/passwd");
    assert!(
        !passwd.lines().any(|l| l.starts_with("imgbake:")),
        "{what}: build user left"
    );
    assert!(
        !disk.exists("/home/imgbake"),
        "{what}: build user's home left"
    );
    assert_eq!(
        disk.must_text("/etc/machine-id"),
        "",
        "{what}: machine-id not emptied"
    );
    assert!(
        !disk.exists("/var/lib/cloud/instance"),
        "{what}: cloud-init state left"
    );
}

fn assert_sparse(raw: &Path) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(raw).unwrap();
    let allocated = meta.blocks() * 512;
    assert_eq!(meta.len(), 4 << 30, "RAW has the recipe's 4G disk size");
    assert!(
        allocated < meta.len() / 2,
        "{} is not sparse: {allocated} of {} bytes allocated",
        raw.display(),
        meta.len()
    );
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// 2. Checkpoint reuse, --resume-from, a corrupted checkpoint (issue 5)
// ---------------------------------------------------------------------------------------------

/// `runs.log` of the e2e-reuse recipe: one `(step, edition or "", boot id)` per line.
fn reuse_runs_log(image: &Path) -> Vec<(String, String, String)> {
    GuestDisk::open(image)
        .must_text("/var/lib/imgbake-e2e/runs.log")
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                [id, boot] => (id.to_string(), String::new(), boot.to_string()),
                [id, edition, boot] => (id.to_string(), edition.to_string(), boot.to_string()),
                _ => panic!("unexpected runs.log line {line:?}"),
            }
        })
        .collect()
}

/// Fails unless `log` is exactly `expected` (step, edition, which boot: index into `boots`).
fn assert_runs_log(
    log: &[(String, String, String)],
    expected: &[(&str, &str, &str)],
    context: &str,
) {
    let got: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(got, expected, "{context}: runs.log in the final image");
}

/// What step 03 of the last build found: `03 <edition> present|absent`, whether step 01's file
/// in /run (a tmpfs: lost on every boot) was still there.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn reuse_run_file(image: &Path) -> String {
    GuestDisk::open(image)
        .must_text("/var/lib/imgbake-e2e/run-file.log")
        .trim()
        .to_owned()
}

/// Step ids of the `vm_state_saved` events that kept their state.
fn states_saved(run: &Finished) -> Vec<String> {
    run.events_named("vm_state_saved")
        .iter()
        .filter(|e| e["published"] == true)
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn edit_step_03(recipe: &Path, edition: &str) {
    let script = recipe.parent().unwrap().join("reuse/03-middle.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    // The assignment at the start of a line (the header comment mentions it too).
    let start = text.find("\nedition=").expect("an `edition=` line") + 1;
    let end = start + text[start..].find('\n').unwrap();
    let edited = format!("{}edition={edition}{}", &text[..start], &text[end..]);
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&script, edited).unwrap();
}

#[test]
fn edited_middle_step_resumes_and_reuses_earlier_checkpoints() {
    if !have_vm_prerequisites() {
        return;
    }
    let _vm = vm_lock();
    let sandbox = Sandbox::new("reuse");
    let recipe = sandbox.copy_e2e_recipe("reuse");
    let raw = sandbox.out.join("e2e-reuse.raw");
    let all = ["01", "02", "03", "04", "99"];

    // Build 1: everything runs, in one boot.
    let first = sandbox.recipe(&recipe, &["--json"], SHORT_BUILD);
    first.expect_code(0, "build 1");
    assert_eq!(first.started_steps(), all);
    let log = reuse_runs_log(&raw);
    let boot1 = log[0].2.clone();
    assert_runs_log(
        &log,
        &[
            ("01", "", &boot1),
            ("02", "", &boot1),
            ("03", "original", &boot1),
            ("04", "", &boot1),
        ],
        "build 1",
    );
    assert_eq!(reuse_run_file(&raw), "03 original present", "build 1");
    // A VM state with the first boot and every checkpoint but the sealed last one.
    assert_eq!(
        states_saved(&first),
        ["ready", "01", "02", "03", "04"],
        "build 1 states"
    );

    // Build 2: step 03 edited, --resume-from 03 with disk checkpoints only (--no-vm-state):
    // boots from 02's checkpoint, runs 03 on.
    edit_step_03(&recipe, "edit-1");
    let resumed = sandbox.recipe(
        &recipe,
        &["--json", "--resume-from", "03", "--no-vm-state"],
        SHORT_BUILD,
    );
    resumed.expect_code(0, "build 2 (--resume-from 03)");
    assert!(resumed.events_named("vm_state_restored").is_empty());
    assert!(
        states_saved(&resumed).is_empty(),
        "--no-vm-state saved a state"
    );
    assert_eq!(
        resumed.reused_steps(),
        (vec!["01".into(), "02".into()], Some(true))
    );
    assert_eq!(resumed.started_steps(), ["03", "04", "99"], "build 2 ran");
    let log = reuse_runs_log(&raw);
    let boot2 = log[2].2.clone();
    assert_ne!(boot2, boot1, "build 2 ran 03 in a new boot");
    assert_runs_log(
        &log,
        &[
            ("01", "", &boot1),
            ("02", "", &boot1),
            ("03", "edit-1", &boot2),
            ("04", "", &boot2),
        ],
        "build 2: 01 and 02 ran once, in build 1's boot",
    );
    assert_eq!(reuse_run_file(&raw), "03 edit-1 absent", "build 2 booted");

    // Build 3: step 03 edited again, plain rerun (human output): reuses 01-02 automatically
    // and, instead of booting, restores the VM state saved with 02's checkpoint in build 1.
    edit_step_03(&recipe, "edit-2");
    let build_3_began = unix_now();
    let rerun = sandbox.recipe(&recipe, &[], SHORT_BUILD);
    rerun.expect_code(0, "build 3 (plain rerun)");
    assert!(
        rerun.stderr.contains("steps 01–02 reused from cache"),
        "build 3 says what it reused:\n{}",
        rerun.stderr
    );
    assert!(
        !rerun.stderr.contains("[01] ▶"),
        "build 3 ran step 01:\n{}",
        rerun.stderr
    );
    assert!(
        rerun.stderr.contains("[03] ▶"),
        "build 3 did not run step 03:\n{}",
        rerun.stderr
    );
    assert!(
        rerun
            .stderr
            .contains("resumed the guest from the vm state after step 02"),
        "build 3 did not restore the vm state:\n{}",
        rerun.stderr
    );
    let log = reuse_runs_log(&raw);
    let boot3 = log[2].2.clone();
    // The restored guest is build 1's, still running: same boot, /run still holds 01's file.
    assert_eq!(boot3, boot1, "build 3 booted instead of restoring");
    assert_ne!(boot3, boot2);
    assert_eq!(reuse_run_file(&raw), "03 edit-2 present", "build 3");
    // The state was saved during build 1, minutes ago: the step's command renewed the clock.
    let guest_clock: u64 = GuestDisk::open(&raw)
        .must_text("/var/lib/imgbake-e2e/clock-03.log")
        .trim()
        .parse()
        .expect("clock-03.log holds seconds");
    assert!(
        (build_3_began.saturating_sub(5)..=unix_now() + 5).contains(&guest_clock),
        "build 3's restored guest read its clock as {guest_clock}, the host's was {build_3_began}.."
    );
    assert_runs_log(
        &log,
        &[
            ("01", "", &boot1),
            ("02", "", &boot1),
            ("03", "edit-2", &boot3),
            ("04", "", &boot3),
        ],
        "build 3: 01 and 02 ran once, in build 1's boot",
    );

    // Build 4: nothing changed: every step reused, no VM at all, same image content — the
    // same bytes, even: the last checkpoint is the disk build 3 powered off and exported.
    let raw_sum = || {
        std::fs::read_to_string(raw.with_file_name("SHA256SUMS"))
            .unwrap()
            .lines()
            .find(|l| l.ends_with(".raw"))
            .map(str::to_owned)
            .expect("a SHA256SUMS line for the raw")
    };
    let sum_of_build_3 = raw_sum();
    let unchanged = sandbox.recipe(&recipe, &["--json"], SHORT_BUILD);
    unchanged.expect_code(0, "build 4 (nothing changed)");
    assert_eq!(
        unchanged.reused_steps(),
        (all.map(String::from).to_vec(), Some(false))
    );
    assert!(
        unchanged.events_named("vm_started").is_empty(),
        "build 4 booted a VM"
    );
    assert_eq!(reuse_runs_log(&raw), log, "build 4 image");
    assert_eq!(raw_sum(), sum_of_build_3, "build 4 exported other bytes");

    // Build 5: step 02's published layer is corrupted: detected by its hash, removed, never
    // booted; 01 is still reused and 02 on are rebuilt.
    let records = sandbox.checkpoint_records();
    let (_, record_02) = records
        .iter()
        .find(|(id, _)| id == "02")
        .expect("a record for 02");
    let layer_02 = sandbox
        .cache
        .join("checkpoints/layers")
        .join(record_02["file"].as_str().unwrap());
    flip_bytes(&layer_02);
    let states_of = |key: &Value| -> usize {
        let dir = sandbox.cache.join("checkpoints/states");
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .filter(|e| {
                        let v: Value =
                            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
                        v["layer"] == *key
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(states_of(&record_02["key"]), 1, "02's state before build 5");
    // Disk checkpoints only, so that this build boots like before VM states existed.
    let repaired = sandbox.recipe(&recipe, &["--json", "--no-vm-state"], SHORT_BUILD);
    repaired.expect_code(0, "build 5 (corrupt layer 02)");
    assert_eq!(
        states_of(&record_02["key"]),
        0,
        "the corrupt layer's vm state was not removed with it"
    );
    let discarded = repaired.discarded();
    assert!(
        discarded
            .iter()
            .any(|r| r.contains("corrupt") && r.contains("rebuilt")),
        "build 5 says the checkpoint was corrupt: {discarded:?}"
    );
    assert!(!layer_02.exists(), "the corrupt layer file is still there");
    assert_eq!(repaired.reused_steps(), (vec!["01".into()], Some(false)));
    assert_eq!(repaired.started_steps(), ["02", "03", "04", "99"]);
    let log = reuse_runs_log(&raw);
    let boot5 = log[1].2.clone();
    assert!(![&boot1, &boot2, &boot3].contains(&&boot5));
    assert_runs_log(
        &log,
        &[
            ("01", "", &boot1),
            ("02", "", &boot5),
            ("03", "edit-2", &boot5),
            ("04", "", &boot5),
        ],
        "build 5",
    );
    sandbox.assert_no_qemu_left("build 5");

    // Build 6: the rebuilt chain is published again, so nothing runs.
    let after_repair = sandbox.recipe(&recipe, &["--json"], SHORT_BUILD);
    after_repair.expect_code(0, "build 6 (after the repair)");
    assert_eq!(
        after_repair.reused_steps().0,
        all.map(String::from).to_vec(),
        "build 6 reuses the whole repaired chain; it started {:?}; discarded {:?}",
        after_repair.started_steps(),
        after_repair.discarded()
    );

    // Build 7: the chain's first layer (the first boot) names the same base at another path
    // (what an older imgbake, or a `file:` base in a checkout that moved, left): its header is
    // moved onto this build's base and the whole chain is still reused, no VM.
    let moved = move_first_layer_to_another_base_path(&sandbox);
    let after_move = sandbox.recipe(&recipe, &["--json"], SHORT_BUILD);
    after_move.expect_code(0, "build 7 (first layer on another base path)");
    let rebased = after_move.events_named("checkpoint_rebased");
    assert_eq!(rebased.len(), 1, "build 7 rebased events: {rebased:?}");
    assert_eq!(rebased[0]["step_id"], "ready");
    assert_eq!(rebased[0]["from"], moved.to_str().unwrap());
    assert_eq!(
        after_move.reused_steps().0,
        all.map(String::from).to_vec(),
        "build 7 must keep the chain; it started {:?}; discarded {:?}",
        after_move.started_steps(),
        after_move.discarded()
    );
    assert!(after_move.events_named("vm_started").is_empty());
    assert_eq!(reuse_runs_log(&raw), log, "build 7 image");
    let record_ready = sandbox
        .checkpoint_records()
        .into_iter()
        .find(|(id, _)| id == "ready")
        .expect("a record for the first boot")
        .1;
    assert_eq!(record_ready["backing"], rebased[0]["to"]);

    // Build 8: another recipe (another name, another step 01) on the same base: no step of it
    // was ever built, but the base's first boot is shared, so the guest of build 1's first
    // boot is restored (same boot id) instead of booting, and every step runs in it.
    let other = other_recipe_on_the_same_base(&recipe);
    let shared = sandbox.recipe(&other, &["--json"], SHORT_BUILD);
    shared.expect_code(0, "build 8 (another recipe on the same base)");
    let restored = shared.events_named("vm_state_restored");
    assert_eq!(restored.len(), 1, "build 8 restored {restored:?}");
    assert_eq!(restored[0]["id"], "ready", "build 8 restored {restored:?}");
    assert!(
        shared.events_named("ssh_ready").is_empty(),
        "build 8 booted"
    );
    assert_eq!(shared.started_steps(), all, "build 8 ran");
    let other_log = reuse_runs_log(&sandbox.out.join("e2e-reuse-other.raw"));
    assert_runs_log(
        &other_log,
        &[
            ("01", "other", &boot1),
            ("02", "", &boot1),
            ("03", "edit-2", &boot1),
            ("04", "", &boot1),
        ],
        "build 8: every step in build 1's first boot, restored",
    );
    let shared_layers: Vec<Value> = sandbox
        .checkpoint_records()
        .into_iter()
        .filter(|(id, _)| id == "ready")
        .map(|(_, record)| record)
        .collect();
    assert_eq!(shared_layers.len(), 1, "one first boot for both recipes");
    assert_eq!(shared_layers[0]["recipe"], "(shared)");

    eprintln!(
        "TIMING reuse: build 1 {:.1}s, resume-from 03 {:.1}s, rerun after edit {:.1}s, \
         unchanged rerun {:.1}s, corrupt-02 rebuild {:.1}s, rerun after repair {:.1}s, \
         other recipe on the first boot {:.1}s",
        first.wall.as_secs_f64(),
        resumed.wall.as_secs_f64(),
        rerun.wall.as_secs_f64(),
        unchanged.wall.as_secs_f64(),
        repaired.wall.as_secs_f64(),
        after_repair.wall.as_secs_f64(),
        shared.wall.as_secs_f64()
    );
}

/// A copy of the reuse recipe named `e2e-reuse-other` whose step 01 writes the edition
/// `other`: no step key of it matches the reuse recipe's.
fn other_recipe_on_the_same_base(recipe: &Path) -> std::path::PathBuf {
    let dir = recipe.parent().unwrap();
    let yaml = std::fs::read_to_string(recipe).unwrap();
    let yaml = yaml
        .replace("name: e2e-reuse", "name: e2e-reuse-other")
        .replace("reuse/01-first.sh", "reuse/01-other.sh");
    let script = std::fs::read_to_string(dir.join("reuse/01-first.sh")).unwrap();
    let marked = script.replace(
        "echo \"01 $(cat /proc/sys/kernel/random/boot_id)\" >> ",
        "echo \"01 other $(cat /proc/sys/kernel/random/boot_id)\" >> ",
    );
    assert_ne!(marked, script, "01-first.sh no longer logs as expected");
    std::fs::write(dir.join("reuse/01-other.sh"), marked).unwrap();
    let path = dir.join("other.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Rewrites the first boot's layer and record as if it had been made on the same base at another path
/// (a hard link to the base file: same content, other name). Returns that path.
fn move_first_layer_to_another_base_path(sandbox: &Sandbox) -> std::path::PathBuf {
    let layers = sandbox.cache.join("checkpoints/layers");
    let (_, mut record) = sandbox
        .checkpoint_records()
        .into_iter()
        .find(|(id, _)| id == "ready")
        .expect("a record for the first boot");
    let base = std::path::PathBuf::from(record["backing"].as_str().unwrap());
    let other = sandbox.cache.join("base-at-another-path.qcow2");
    std::fs::hard_link(&base, &other).unwrap();
    let layer = layers.join(record["file"].as_str().unwrap());
    let status = Command::new("qemu-img")
        .args(["rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&other)
        .arg(&layer)
        .status()
        .unwrap();
    assert!(status.success(), "qemu-img rebase");
    let sum = Command::new("sha256sum").arg(&layer).output().unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    record["backing"] = Value::from(other.to_str().unwrap());
    record["sha256"] = Value::from(sum.split_whitespace().next().unwrap());
    let path = layers.join(format!("{}.json", record["key"].as_str().unwrap()));
    std::fs::write(path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    other
}

/// Flips a run of bytes in the middle of a file (data clusters, not the qcow2 header).
fn flip_bytes(path: &Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = file.metadata().unwrap().len();
    let at = len / 2;
    let mut buf = [0u8; 64];
    file.read_exact_at(&mut buf, at).unwrap();
    for b in &mut buf {
        *b ^= 0xff;
    }
    file.write_all_at(&buf, at).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn resume_from_an_unknown_step_lists_the_valid_ids() {
    let sandbox = Sandbox::new("resume-bad-id");
    let recipe = sandbox.copy_e2e_recipe("reuse");
    let run = sandbox.recipe(&recipe, &["--resume-from", "42"], NO_VM);
    run.expect_code(2, "--resume-from 42");
    for id in ["01", "02", "03", "04", "99"] {
        assert!(
            run.stderr.contains(id),
            "the error lists step {id}:\n{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("42"), "{}", run.stderr);
    assert!(sandbox.qemu_processes().is_empty());
}

#[test]
fn resume_without_the_previous_checkpoint_names_the_step_to_run_first() {
    if test_support::fixture_image().is_none() {
        return;
    }
    let sandbox = Sandbox::new("resume-missing");
    let recipe = sandbox.copy_e2e_recipe("reuse");
    let run = sandbox.recipe(&recipe, &["--resume-from", "03"], NO_VM);
    run.expect_code(2, "--resume-from 03 on an empty cache");
    assert!(
        run.stderr.contains("cannot resume from step 03")
            && run.stderr.contains("no checkpoint after step 01"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--resume-from 01"),
        "the hint says which step to run first:\n{}",
        run.stderr
    );
    assert!(sandbox.qemu_processes().is_empty());
    sandbox.assert_no_final_output("e2e-reuse", "--resume-from 03 on an empty cache");
}

// ---------------------------------------------------------------------------------------------
// 3. Faults during a step (issue 4)
// ---------------------------------------------------------------------------------------------

/// Waits for step 02's first output line (the step is running in the guest).
fn wait_until_step_02_runs(build: &mut common::Build) -> Value {
    build.wait_for_event(SHORT_BUILD, |e| {
        e["event"] == "step_output" && e["id"] == "02"
    })
}

fn assert_clean_failure(sandbox: &Sandbox, run: &Finished, code: i32, context: &str) {
    run.expect_code(code, context);
    sandbox.assert_no_qemu_left(context);
    sandbox.assert_no_final_output("e2e-faults", context);
}

#[test]
fn a_failing_step_reports_its_exit_code_last_lines_logs_and_how_to_resume() {
    if !have_vm_prerequisites() {
        return;
    }
    let _vm = vm_lock();
    let sandbox = Sandbox::new("fail");
    let recipe = sandbox.copy_e2e_recipe("faults");
    let run = sandbox.recipe(&recipe, &["--json", "--var", "fault=fail"], SHORT_BUILD);
    assert_clean_failure(&sandbox, &run, 4, "failing step");
    let err = &run.stderr;
    assert!(err.contains("step 02 (02-fault) failed"), "{err}");
    assert!(
        err.contains("exit code 3") || err.contains("exit 3"),
        "exit code in:\n{err}"
    );
    // The last 30 lines: the end of the output, not its beginning.
    assert!(
        err.contains("about to fail") && err.contains("failing step line 40"),
        "{err}"
    );
    assert!(
        !err.contains("failing step line 5\n"),
        "more than the last lines:\n{err}"
    );
    let log = sandbox.out.join("logs/02-fault.log");
    assert!(
        err.contains(&log.display().to_string()),
        "the step log path in:\n{err}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("failing step line 1")
    );
    assert!(err.contains("serial log:"), "{err}");
    assert!(err.contains("--resume-from 02"), "how to resume in:\n{err}");
    assert!(
        err.contains("--keep-on-failure"),
        "how to get in, in:\n{err}"
    );
    let run_json = read_json(&sandbox.out.join("run.json"));
    let step = &run_json["steps"][1];
    assert_eq!(
        (
            step["id"].as_str(),
            step["status"].as_str(),
            step["exit_code"].as_u64()
        ),
        (Some("02"), Some("failed"), Some(3))
    );
    // Step 01's checkpoint survives for the rerun.
    assert!(
        sandbox
            .checkpoint_records()
            .iter()
            .any(|(id, _)| id == "01")
    );
}

#[test]
fn a_step_past_its_timeout_is_stopped() {
    if !have_vm_prerequisites() {
        return;
    }
    let _vm = vm_lock();
    let sandbox = Sandbox::new("hang");
    let recipe = sandbox.copy_e2e_recipe("faults");
    let run = sandbox.recipe(&recipe, &["--json", "--var", "fault=hang"], SHORT_BUILD);
    assert_clean_failure(&sandbox, &run, 4, "hanging step");
    assert!(
        run.stderr
            .contains("step 02 (02-fault) failed: timed out after 20s"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hanging"),
        "its last lines:\n{}",
        run.stderr
    );
    let finished = run.events_named("step_finished");
    let step02 = finished
        .iter()
        .find(|e| e["id"] == "02")
        .expect("step_finished for 02");
    assert_eq!(step02["success"], false);
    let took = step02["duration_secs"].as_f64().unwrap();
    eprintln!(
        "TIMING hang: step 02 stopped after {took:.1}s (timeout 20s), whole run {:.1}s",
        run.wall.as_secs_f64()
    );
}

#[test]
fn sigint_during_a_step_powers_the_guest_off_and_exits_130() {
    if !have_vm_prerequisites() {
        return;
    }
    let _vm = vm_lock();
    let sandbox = Sandbox::new("sigint");
    let recipe = sandbox.copy_e2e_recipe("faults");
    let mut build = sandbox.start_recipe(&recipe, &["--json", "--var", "fault=wait"]);
    wait_until_step_02_runs(&mut build);
    let qemu = build
        .qemu_child()
        .expect("imgbake has a QEMU child while a step runs");
    build.signal("INT");
    let run = build.finish(SHORT_BUILD);
    assert_clean_failure(&sandbox, &run, 130, "SIGINT during step 02");
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
    assert!(
        run.stderr.contains("the last checkpoint is after step 01"),
        "{}",
        run.stderr
    );
    // Gone, or at most a zombie on its way to being reaped (an empty command line).
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap_or_default();
    assert!(cmdline.is_empty(), "QEMU {qemu} is still running");
    // A graceful powerdown: the event, and the guest's kernel powering off on the console.
    assert!(
        !run.events_named("shutting_down").is_empty(),
        "no shutting_down event"
    );
    let serial = std::fs::read_to_string(sandbox.out.join("logs/serial.log")).unwrap_or_default();
    assert!(
        serial.contains("reboot: Power down") || serial.contains("Powering off"),
        "the serial log shows no guest powerdown:\n{}",
        tail(&serial, 30)
    );
    assert!(
        sandbox
            .checkpoint_records()
            .iter()
            .any(|(id, _)| id == "01"),
        "01's checkpoint kept"
    );
    assert!(
        sandbox
            .checkpoint_records()
            .iter()
            .all(|(id, _)| id != "02"),
        "an interrupted step must not be checkpointed"
    );
}

#[test]
fn qemu_killed_during_a_step_fails_fast_with_its_tails() {
    if !have_vm_prerequisites() {
        return;
    }
    let _vm = vm_lock();
    let sandbox = Sandbox::new("qemukill");
    let recipe = sandbox.copy_e2e_recipe("faults");
    let mut build = sandbox.start_recipe(&recipe, &["--json", "--var", "fault=wait"]);
    let output = wait_until_step_02_runs(&mut build);
    let killed_at = output["elapsed_secs"].as_f64().unwrap();
    let qemu = build
        .qemu_child()
        .expect("imgbake has a QEMU child while a step runs");
    common::signal(qemu, "KILL");
    let run = build.finish(SHORT_BUILD);
    assert_clean_failure(&sandbox, &run, 5, "QEMU killed during step 02");
    let err = &run.stderr;
    assert!(err.contains("virtual machine"), "{err}");
    assert!(
        err.contains("SIGKILL") || err.contains("signal 9") || err.contains("killed"),
        "how QEMU ended, in:\n{err}"
    );
    assert!(err.contains("serial"), "the serial log in:\n{err}");
    // No step is reported as succeeded after the kill, and 02 was not checkpointed.
    assert!(
        sandbox
            .checkpoint_records()
            .iter()
            .all(|(id, _)| id != "02")
    );
    let last = run
        .events
        .last()
        .map(|e| e["elapsed_secs"].as_f64().unwrap_or(0.0))
        .unwrap_or(0.0);
    eprintln!(
        "TIMING qemu-kill: killed at {killed_at:.1}s, last event at {last:.1}s, imgbake exited after {:.1}s; its report:\n{}",
        run.wall.as_secs_f64(),
        tail(err, 25)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Faults while checkpointing (issue 5)
// ---------------------------------------------------------------------------------------------

#[test]
fn interrupted_checkpoints_are_never_used_and_a_rerun_builds_correctly() {
    if !have_vm_prerequisites() {
        return;
    }
    let _vm = vm_lock();
    let sandbox = Sandbox::new("ckpt");
    let recipe = sandbox.copy_e2e_recipe("faults");

    // Run A: SIGINT as soon as step 01 has finished, i.e. while its checkpoint is taken
    // (sync in the guest, new overlay over QMP, hash, record).
    let mut build = sandbox.start_recipe(&recipe, &["--json"]);
    build.wait_for_event(SHORT_BUILD, |e| {
        e["event"] == "step_finished" && e["id"] == "01"
    });
    build.signal("INT");
    let a = build.finish(SHORT_BUILD);
    let published_a = a
        .events_named("checkpoint_saved")
        .iter()
        .any(|e| e["id"] == "01");
    eprintln!(
        "CHECKPOINT-SIGINT run A: exit {:?}, checkpoint_saved(01) emitted: {published_a}, records {:?}, layer files {:?}\n{}",
        a.code,
        sandbox
            .checkpoint_records()
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        sandbox.layer_files(),
        tail(&a.stderr, 12)
    );
    assert_clean_failure(&sandbox, &a, 130, "SIGINT while checkpointing step 01");
    assert_every_layer_is_published(&sandbox, "after run A");

    // Run B: SIGKILL (a crash: no cleanup at all) right after a step finished, so its layer
    // file is left without a record.
    let mut build = sandbox.start_recipe(&recipe, &["--json"]);
    let finished = build.wait_for_event(SHORT_BUILD, |e| e["event"] == "step_finished");
    build.signal("KILL");
    let b = build.finish(SHORT_BUILD);
    assert_eq!(b.code, None, "run B was killed");
    sandbox.assert_no_qemu_left("imgbake SIGKILLed while checkpointing");
    sandbox.assert_no_final_output("e2e-faults", "run B");
    let records_b: Vec<String> = sandbox
        .checkpoint_records()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let files_b = sandbox.layer_files();
    eprintln!(
        "CHECKPOINT-SIGKILL run B: killed after step_finished({}), records {records_b:?}, layer files {files_b:?}",
        finished["id"]
    );
    let incomplete = files_b.len() > records_b.len();

    // Run C: a plain rerun throws the cut-off layer away, reuses what was published, and
    // builds a correct image.
    let c = sandbox.recipe(&recipe, &["--json"], SHORT_BUILD);
    c.expect_code(0, "rerun after the interrupted checkpoints");
    sandbox.assert_no_qemu_left("run C");
    if incomplete {
        assert!(
            c.discarded()
                .iter()
                .any(|r| r.contains("cut off before it was complete")),
            "run C does not say it threw the cut-off checkpoint away: {:?}",
            c.discarded()
        );
    }
    for file in &files_b {
        let published = sandbox.checkpoint_records().iter().any(|(_, r)| {
            Some(r["file"].as_str().unwrap()) == file.file_name().and_then(|n| n.to_str())
        });
        assert!(
            published || !file.exists(),
            "unpublished layer {} survived run C",
            file.display()
        );
    }
    let disk = GuestDisk::open(&sandbox.out.join("e2e-faults.raw"));
    let log = disk.must_text("/var/lib/imgbake-e2e/runs.log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "runs.log: {log}");
    assert!(
        lines[0].starts_with("01 ") && lines[1].starts_with("02 "),
        "runs.log: {log}"
    );
    assert!(disk.exists("/var/lib/imgbake-e2e/ballast"));
    assert_every_layer_is_published(&sandbox, "after run C");
    eprintln!(
        "CHECKPOINT run C: reused {:?}, ran {:?}, discarded {:?}",
        c.reused_steps().0,
        c.started_steps(),
        c.discarded()
    );
}

/// After a build has ended, every layer file in the store is published (no orphans) and every
/// record names an existing file.
fn assert_every_layer_is_published(sandbox: &Sandbox, context: &str) {
    let records = sandbox.checkpoint_records();
    let files = sandbox.layer_files();
    for (id, record) in &records {
        let file = sandbox
            .cache
            .join("checkpoints/layers")
            .join(record["file"].as_str().unwrap());
        assert!(
            file.is_file(),
            "{context}: record of {id} names a missing {}",
            file.display()
        );
    }
    assert_eq!(
        files.len(),
        records.len(),
        "{context}: layer files {files:?} vs records of {:?}",
        records.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
