//! Fault tests of `imgbake recipe` on the fixture guest under TCG (issue 15): signals (a second
//! Ctrl-C mid-step, SIGTERM), a `reboot: true` step killed by a signal, `--keep-on-failure`,
//! `--no-cache`, builds at once sharing one cache (the same recipe twice, two recipes, `--jobs
//! 2`) and `kill -9` of imgbake while `qemu-img` exports. Each run ends with its exit code, no
//! QEMU or `qemu-img` of it left (by pid and process group), nothing under a final name it
//! should not have, and a next run that works.
//!
//! Boots are the cost (1–2 minutes each under TCG), so two tests share them: each runs its
//! builds in order on one cache, and later builds start from earlier builds' checkpoints.
//! `signals_a_killed_reboot_step_and_keep_on_failure` boots 3 times and
//! `builds_at_once_share_one_cache_and_kill_9_during_export` 3 times. The VM tests take the
//! e2e tests' file lock, so they run one at a time. Timings are printed, never asserted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Build, Finished, GuestDisk, NO_VM, SHORT_BUILD, Sandbox, assert_group_gone, children_named,
    have_vm_prerequisites, proc_state, vm_lock,
};
use serde_json::Value;

/// The `name:` of faults.yaml and reboot-killed.yaml.
const FAULTS: &str = "e2e-faults";
/// The `name:` of reuse.yaml.
const REUSE: &str = "e2e-reuse";
/// Two TCG guests at once on a busy 2-core machine take longer than one.
const TWO_AT_ONCE: Duration = Duration::from_secs(30 * 60);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Starts `imgbake recipe RECIPES… --accel tcg --cache-dir <sandbox cache> --output OUT EXTRA…`.
fn start_into(sandbox: &Sandbox, recipes: &[&Path], out: &Path, extra: &[&str]) -> Build {
    let mut args: Vec<String> = vec!["recipe".into()];
    args.extend(recipes.iter().map(|r| r.display().to_string()));
    for arg in ["--accel", "tcg", "--cache-dir"] {
        args.push(arg.into());
    }
    args.push(sandbox.cache.display().to_string());
    args.push("--output".into());
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    sandbox.start(&args)
}

/// Waits for step 02's first output line (the step is running in the guest).
fn wait_until_step_02_runs(build: &mut Build) {
    build.wait_for_event(SHORT_BUILD, |e| {
        e["event"] == "step_output" && e["id"] == "02"
    });
}

/// imgbake's QEMU while a step runs; it must lead its own process group (a terminal Ctrl-C
/// then reaches imgbake alone).
fn qemu_of(build: &Build) -> u32 {
    let qemu = build
        .qemu_child()
        .expect("imgbake has a QEMU child while a step runs");
    assert_eq!(
        proc_state(qemu).map(|(_, group)| group),
        Some(qemu),
        "QEMU {qemu} leads its own process group"
    );
    qemu
}

/// The end of every failed or killed run: its exit code, its QEMU's process group gone, no QEMU
/// of the sandbox left, nothing under a final output name in `out`.
fn assert_stopped_cleanly(
    sandbox: &Sandbox,
    run: &Finished,
    code: Option<i32>,
    group: Option<u32>,
    out: &Path,
    context: &str,
) {
    assert_eq!(
        run.code, code,
        "{context}: `{}` exit code; stderr:\n{}",
        run.command, run.stderr
    );
    if let Some(group) = group {
        assert_group_gone(group, context);
    }
    sandbox.assert_no_qemu_left(context);
    assert_no_final_outputs(out, FAULTS, context);
}

/// No image and no SHA256SUMS under their final names in `out`.
fn assert_no_final_outputs(out: &Path, name: &str, context: &str) {
    for file in [
        format!("{name}.raw"),
        format!("{name}.qcow2"),
        "SHA256SUMS".into(),
    ] {
        let path = out.join(&file);
        assert!(
            !path.exists(),
            "{context}: {} exists after a failed build",
            path.display()
        );
    }
}

/// The ids of the sandbox's published checkpoints (a step id per record, sorted).
fn checkpointed_steps(sandbox: &Sandbox) -> Vec<String> {
    sandbox
        .checkpoint_records()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// The store is consistent after builds have ended: `imgbake cache ls` reads it and lists each
/// record once, every record names an existing layer, every layer file has a record, one
/// record per key, and no temp file is left.
fn assert_store_consistent(sandbox: &Sandbox, context: &str) -> Vec<(String, Value)> {
    let ls = sandbox
        .start(&[
            "cache".into(),
            "ls".into(),
            "--json".into(),
            "--cache-dir".into(),
            sandbox.cache.display().to_string(),
        ])
        .finish(NO_VM);
    ls.expect_code(0, context);
    let listing: Value = serde_json::from_str(&ls.stdout).expect("cache ls --json prints JSON");
    let records = sandbox.checkpoint_records();
    let listed = listing["checkpoints"].as_array().map_or(0, Vec::len);
    assert_eq!(
        listed,
        records.len(),
        "{context}: cache ls lists {listed} checkpoints, the store holds {} records",
        records.len()
    );
    let layers = sandbox.cache.join("checkpoints/layers");
    let mut keys: Vec<&str> = Vec::new();
    for (id, record) in &records {
        let file = layers.join(record["file"].as_str().unwrap());
        assert!(
            file.is_file(),
            "{context}: record of {id} names a missing {}",
            file.display()
        );
        keys.push(record["key"].as_str().unwrap());
    }
    let before = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), before, "{context}: a key has two records");
    let files = sandbox.layer_files();
    assert_eq!(
        files.len(),
        records.len(),
        "{context}: layer files {files:?} vs records of {:?}",
        records.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    let temps: Vec<String> = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "{context}: temp files left: {temps:?}");
    records
}

/// Checks `out` holds a complete build of `name` (both images, SHA256SUMS listing them) and
/// returns the RAW's sha256 from SHA256SUMS. `sha256sum -c` is the smoke test's (here it would
/// read 4 GiB per image); comparing the digests imgbake wrote tells the same images apart.
fn assert_complete_output(out: &Path, name: &str, context: &str) -> String {
    let sums = std::fs::read_to_string(out.join("SHA256SUMS"))
        .unwrap_or_else(|e| panic!("{context}: {}/SHA256SUMS: {e}", out.display()));
    let digest_of = |file: &str| {
        // "<hex>  <name>" (or "<hex> *<name>").
        sums.lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(_, listed)| listed.trim_start().trim_start_matches('*') == file)
            .map(|(hex, _)| hex.to_owned())
            .unwrap_or_else(|| panic!("{context}: SHA256SUMS lists no {file}:\n{sums}"))
    };
    for ext in ["raw", "qcow2"] {
        let file = format!("{name}.{ext}");
        let image = out.join(&file);
        assert!(image.is_file(), "{context}: {} missing", image.display());
        assert_eq!(digest_of(&file).len(), 64, "{context}: {file} in:\n{sums}");
    }
    digest_of(&format!("{name}.raw"))
}

/// `runs.log` of a built image: `(step, boot id)` per line (reuse.yaml and faults.yaml write
/// `<id> <boot id>`).
fn runs_log(image: &Path) -> Vec<(String, String)> {
    GuestDisk::open(image)
        .must_text("/var/lib/imgbake-e2e/runs.log")
        .lines()
        .map(|l| {
            let mut words = l.split_whitespace();
            let step = words.next().unwrap_or_default().to_owned();
            (step, words.last().unwrap_or_default().to_owned())
        })
        .collect()
}

fn serial_log(out: &Path) -> String {
    std::fs::read_to_string(out.join("logs/serial.log")).unwrap_or_default()
}

/// The kernel's last words when the guest powered itself off.
const POWERED_OFF: &str = "reboot: Power down";

/// Prints how long a run took: its last event's `elapsed_secs` (the wall time of a run that
/// was collected after another one is only when it was collected).
fn timing(test: &str, what: &str, run: &Finished) {
    let last_event = run
        .events
        .iter()
        .rev()
        .find_map(|e| e["elapsed_secs"].as_f64());
    eprintln!(
        "TIMING {test}: {what}: exit {:?}, last event at {}, collected after {:.1}s",
        run.code,
        last_event.map_or("-".into(), |s| format!("{s:.1}s")),
        run.wall.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Signals, a reboot step killed by a signal, --keep-on-failure, --no-cache (3 boots)
// ---------------------------------------------------------------------------------------------

#[test]
fn signals_a_killed_reboot_step_and_keep_on_failure() {
    if !have_vm_prerequisites() {
        return;
    }
    let _vm = vm_lock();
    let began = Instant::now();
    let test = "signals";
    let sandbox = Sandbox::new("signals");
    let recipe = sandbox.copy_e2e_recipe("faults");
    let killed = sandbox.copy_e2e_recipe("reboot-killed");
    let out = sandbox.out.clone();

    // Run A: Ctrl-C during step 02, and a second one while the guest powers off: QEMU is
    // killed at once (the guest never reaches its power-down), exit 130, 01's checkpoint kept.
    let mut build = sandbox.start_recipe(&recipe, &["--json", "--var", "fault=wait"]);
    wait_until_step_02_runs(&mut build);
    let qemu = qemu_of(&build);
    build.signal("INT");
    // The first signal must have been seen before the second is sent (signals sent back to
    // back may arrive as one).
    build.wait_for_event(SHORT_BUILD, |e| e["event"] == "shutting_down");
    build.signal("INT");
    let a = build.finish(SHORT_BUILD);
    timing(test, "A (second SIGINT)", &a);
    assert_stopped_cleanly(&sandbox, &a, Some(130), Some(qemu), &out, "run A");
    assert!(
        a.stderr.contains("interrupted again: killing QEMU"),
        "{}",
        a.stderr
    );
    // A systemd powerdown under TCG takes seconds; the second signal came milliseconds after
    // it started.
    assert!(
        !serial_log(&out).contains(POWERED_OFF),
        "run A: the guest powered off by itself; QEMU was not killed at the second signal"
    );
    assert_eq!(
        checkpointed_steps(&sandbox),
        ["01", "ready"],
        "run A keeps its first boot and 01 only"
    );
    let record_01 = sandbox.checkpoint_records()[0].1.clone();
    assert_store_consistent(&sandbox, "after run A");

    // Run B: --no-cache, then SIGTERM during step 02: nothing reused, the guest powered off,
    // exit 143. The store keeps run A's checkpoint of 01 (this run's copy of the same key
    // loses to it and is removed), and nothing of 02.
    let mut build = sandbox.start_recipe(&recipe, &["--json", "--no-cache", "--var", "fault=wait"]);
    wait_until_step_02_runs(&mut build);
    let qemu = qemu_of(&build);
    build.signal("TERM");
    let b = build.finish(SHORT_BUILD);
    timing(test, "B (--no-cache, SIGTERM)", &b);
    assert_stopped_cleanly(&sandbox, &b, Some(143), Some(qemu), &out, "run B");
    assert_eq!(
        b.reused_steps().0,
        Vec::<String>::new(),
        "--no-cache reuses nothing"
    );
    assert_eq!(b.started_steps(), ["01", "02"], "--no-cache runs 01 again");
    assert!(!b.events_named("shutting_down").is_empty());
    let serial = serial_log(&out);
    assert!(
        serial.contains(POWERED_OFF) || serial.contains("Powering off"),
        "run B: SIGTERM did not power the guest off; serial log ends:\n{}",
        tail(&serial, 30)
    );
    let records = assert_store_consistent(&sandbox, "after run B");
    assert_eq!(records.len(), 2, "run B: {records:?}");
    assert_eq!(
        records[0].1, record_01,
        "--no-cache neither replaced nor duplicated 01's checkpoint"
    );

    // Run C: a `reboot: true` step that SIGKILLs its own shell while the guest stays up, with
    // --keep-on-failure. It resumes from run A's 01 (so the runs above left a usable cache),
    // fails, keeps the VM up at the failed state for ssh, and ends at the next signal with the
    // step's failure (exit 4). 02 is not checkpointed.
    let mut build = sandbox.start_recipe(&killed, &["--json", "--keep-on-failure"]);
    let kept = build.wait_for_event(SHORT_BUILD, |e| e["event"] == "kept_for_debugging");
    let qemu = qemu_of(&build);
    let ssh = kept["ssh_command"]
        .as_str()
        .expect("an ssh command")
        .to_owned();
    let ssh = ssh.replacen("ssh ", "ssh -o BatchMode=yes -o ConnectTimeout=120 ", 1);
    let probe = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{ssh} 'cat /proc/sys/kernel/random/boot_id /var/lib/imgbake-e2e/killed'"
        ))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&probe.stdout).into_owned();
    assert!(
        probe.status.success(),
        "run C: the printed ssh command does not get in ({ssh}): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines.len(), 2, "run C: {answer}");
    assert_eq!(
        lines[0], lines[1],
        "the kept VM is the boot in which the step was killed (it did not reboot)"
    );
    build.signal("INT");
    let c = build.finish(SHORT_BUILD);
    timing(test, "C (reboot step killed, --keep-on-failure)", &c);
    assert_stopped_cleanly(&sandbox, &c, Some(4), Some(qemu), &out, "run C");
    assert_eq!(c.reused_steps().0, ["01"], "run C resumes from 01");
    let err = &c.stderr;
    assert!(err.contains("step 02 (02-killed) failed"), "{err}");
    assert!(
        err.contains("KILL") || err.contains("signal 9") || err.contains("exit code 137"),
        "how the step ended, in:\n{err}"
    );
    assert!(c.events_named("rebooted").is_empty(), "nothing rebooted");
    let finished = c.events_named("step_finished");
    assert!(
        finished
            .iter()
            .any(|e| e["id"] == "02" && e["success"] == false),
        "02 finished as failed: {finished:?}"
    );
    assert!(
        c.events_named("checkpoint_saved")
            .iter()
            .all(|e| e["id"] != "02"),
        "the killed reboot step was checkpointed"
    );
    assert_eq!(checkpointed_steps(&sandbox), ["01", "ready"]);
    assert_store_consistent(&sandbox, "after run C");
    eprintln!(
        "TIMING {test}: whole test {:.1}s",
        began.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Builds at once on one cache, --jobs 2, kill -9 during export (3 boots)
// ---------------------------------------------------------------------------------------------

#[test]
fn builds_at_once_share_one_cache_and_kill_9_during_export() {
    if !have_vm_prerequisites() {
        return;
    }
    let _vm = vm_lock();
    let began = Instant::now();
    let test = "at-once";
    let sandbox = Sandbox::new("atonce");
    let faults = sandbox.copy_e2e_recipe("faults");
    let reuse = sandbox.copy_e2e_recipe("reuse");
    let dir = |name: &str| -> PathBuf { sandbox.root().join(name) };

    // A: the same recipe twice at once on an empty cache, into two output dirs. One makes the
    // chain, the other waits for it and exports it: one record per key, both images complete.
    let first = start_into(&sandbox, &[&reuse], &dir("r1"), &["--json"]);
    let second = start_into(&sandbox, &[&reuse], &dir("r2"), &["--json"]);
    let (first, second) = (first.finish(TWO_AT_ONCE), second.finish(TWO_AT_ONCE));
    timing(test, "A1 (same recipe, first)", &first);
    timing(test, "A2 (same recipe, second)", &second);
    for (run, out) in [(&first, dir("r1")), (&second, dir("r2"))] {
        run.expect_code(0, "the same recipe twice at once");
        assert_complete_output(&out, REUSE, "the same recipe twice at once");
        let log = runs_log(&out.join(format!("{REUSE}.raw")));
        let steps: Vec<&str> = log.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            steps,
            ["01", "02", "03", "04"],
            "{}: {log:?}",
            out.display()
        );
        assert!(
            log.iter().all(|(_, boot)| *boot == log[0].1),
            "each image is one build's, in one boot: {log:?}"
        );
    }
    sandbox.assert_no_qemu_left("A");
    let records = assert_store_consistent(&sandbox, "after A");
    let ids: Vec<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["01", "02", "03", "04", "99", "ready"],
        "one record per step and one first boot"
    );
    // Only one of them made the chain: the other waited for each checkpoint it would have
    // made (the first boot, then every step) and then reused the whole chain, with no VM.
    let waited: Vec<&Finished> = [&first, &second]
        .into_iter()
        .filter(|run| !run.events_named("waiting_for_checkpoint").is_empty())
        .collect();
    assert_eq!(
        waited.len(),
        1,
        "exactly one build waits for the other's checkpoints"
    );
    assert!(
        waited[0].events_named("vm_started").is_empty(),
        "the build that waited made checkpoints of its own"
    );
    assert_eq!(
        waited[0].reused_steps().0,
        ["01", "02", "03", "04", "99"],
        "the build that waited reuses the other's chain"
    );

    // B: `--jobs 2` with two recipes (faults: nothing cached yet; reuse: every step cached),
    // and meanwhile, from another process, reuse once more into its own dir.
    let jobs = start_into(
        &sandbox,
        &[&faults, &reuse],
        &dir("jobs"),
        &["--json", "--jobs", "2"],
    );
    let other = start_into(&sandbox, &[&reuse], &dir("r3"), &["--json"]);
    let (jobs, other) = (jobs.finish(TWO_AT_ONCE), other.finish(TWO_AT_ONCE));
    timing(test, "B (--jobs 2: faults + reuse)", &jobs);
    timing(test, "B (reuse at the same time)", &other);
    jobs.expect_code(0, "--jobs 2");
    other.expect_code(0, "reuse beside --jobs 2");
    sandbox.assert_no_qemu_left("B");
    assert_complete_output(&dir("jobs").join(FAULTS), FAULTS, "--jobs 2");
    let reuse_jobs_sha = assert_complete_output(&dir("jobs").join(REUSE), REUSE, "--jobs 2");
    let reuse_other_sha = assert_complete_output(&dir("r3"), REUSE, "reuse beside --jobs 2");
    assert_eq!(
        reuse_jobs_sha, reuse_other_sha,
        "two exports of one cached chain are the same image"
    );
    let faults_log = runs_log(&dir("jobs").join(FAULTS).join(format!("{FAULTS}.raw")));
    let steps: Vec<&str> = faults_log.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(steps, ["01", "02"], "faults image: {faults_log:?}");
    for recipe in [FAULTS, REUSE] {
        assert!(
            jobs.events.iter().any(|e| e["recipe"] == recipe),
            "--jobs 2 events name {recipe}"
        );
    }
    let reused = |run: &Finished, recipe: &str| -> usize {
        run.events
            .iter()
            .filter(|e| e["event"] == "steps_reused" && e["recipe"] == recipe)
            .map(|e| e["ids"].as_array().map_or(0, Vec::len))
            .sum()
    };
    assert_eq!(
        reused(&jobs, REUSE),
        5,
        "--jobs 2: reuse comes from the cache"
    );
    assert_eq!(
        reused(&other, REUSE),
        5,
        "the other build comes from the cache"
    );
    assert_eq!(reused(&jobs, FAULTS), 0, "faults had nothing cached");
    assert_store_consistent(&sandbox, "after B");

    // C: `kill -9` of imgbake while qemu-img exports (faults, every step cached, so no VM):
    // qemu-img dies with it (its parent-death signal), nothing gets a final name.
    let killed_out = dir("killed");
    let mut build = start_into(&sandbox, &[&faults], &killed_out, &["--json"]);
    build.wait_for_event(NO_VM, |e| e["event"] == "exporting");
    let deadline = Instant::now() + NO_VM;
    let qemu_img = loop {
        if let Some(pid) = children_named(build.pid, "qemu-img").first() {
            break *pid;
        }
        assert!(
            Instant::now() < deadline,
            "no qemu-img child of imgbake seen during the export"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        proc_state(qemu_img).map(|(_, group)| group),
        Some(qemu_img),
        "qemu-img leads its own process group"
    );
    build.signal("KILL");
    let k = build.finish(NO_VM);
    timing(test, "C (kill -9 during export)", &k);
    assert!(
        k.events_named("vm_started").is_empty(),
        "every step was cached: no VM"
    );
    assert_stopped_cleanly(
        &sandbox,
        &k,
        None,
        Some(qemu_img),
        &killed_out,
        "kill -9 during export",
    );
    assert_store_consistent(&sandbox, "after kill -9 during export");

    // D: the next run into the same dir works, and exports the chain B built.
    let d = start_into(&sandbox, &[&faults], &killed_out, &["--json"]).finish(SHORT_BUILD);
    timing(test, "D (rerun after kill -9)", &d);
    d.expect_code(0, "rerun after kill -9 during export");
    sandbox.assert_no_qemu_left("D");
    assert_complete_output(&killed_out, FAULTS, "rerun after kill -9");
    // The same steps, run in the same boot. Not the same bytes: B exported its VM's final
    // overlay, which also holds what the guest wrote while powering off; a rerun exports the
    // last checkpoint.
    assert_eq!(
        runs_log(&killed_out.join(format!("{FAULTS}.raw"))),
        faults_log,
        "the rerun exports the chain B built"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&killed_out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    eprintln!(
        "NOTE at-once: hidden files in {} after D: {leftovers:?}",
        killed_out.display()
    );
    assert_store_consistent(&sandbox, "after D");
    eprintln!(
        "TIMING {test}: whole test {:.1}s",
        began.elapsed().as_secs_f64()
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
