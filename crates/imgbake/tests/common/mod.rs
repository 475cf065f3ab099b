//! Harness for the end-to-end tests: a private sandbox per test (cache, output, QEMU run dir),
//! the `imgbake` binary run with its `--json` event stream read live, signals, the QEMU
//! processes a sandbox owns, and offline reads of the disk a build produced.
//!
//! Every wait here is bounded; a test that overruns kills its own `imgbake` (QEMU follows
//! through its parent-death signal) and fails with the tail of imgbake's stderr. Only processes
//! whose command line names the test's own sandbox are ever signalled.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for a whole build of the small e2e recipes under TCG on a busy 2-core machine.
pub const SHORT_BUILD: Duration = Duration::from_secs(15 * 60);
/// Upper bound for the smoke build (it installs a package and reboots once).
pub const LONG_BUILD: Duration = Duration::from_secs(25 * 60);
/// Upper bound for commands that never boot a VM.
pub const NO_VM: Duration = Duration::from_secs(120);

/// Runs the VM tests one at a time, across threads (`cargo test`) and processes (`nextest`):
/// two TCG guests at once on two cores only make both slow. Hold the guard for the whole test.
pub fn vm_lock() -> File {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-vm.lock");
    let file = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}

/// True when QEMU and the fixture guest are there (otherwise the test prints SKIPPED and
/// returns, or fails under IMGBAKE_REQUIRE_TOOLS=1).
pub fn have_vm_prerequisites() -> bool {
    test_support::require_tool("qemu-system-x86_64")
        && test_support::require_tool("qemu-img")
        && test_support::fixture_image().is_some()
}

/// A test's private directories. QEMU's run directory lives under it too (through
/// `XDG_RUNTIME_DIR`), so every QEMU this test starts names the sandbox on its command line.
pub struct Sandbox {
    dir: tempfile::TempDir,
    /// `--cache-dir`.
    pub cache: PathBuf,
    /// `--output`.
    pub out: PathBuf,
    /// `XDG_RUNTIME_DIR` of imgbake (QEMU's run directories).
    pub run: PathBuf,
    /// Copies of recipes the test may edit.
    pub recipes: PathBuf,
}

impl Sandbox {
    /// A sandbox under /tmp (short paths: the QMP socket path must fit in 108 bytes).
    pub fn new(tag: &str) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ibe2e-{tag}-"))
            .tempdir_in("/tmp")
            .expect("create the sandbox");
        let make = |name: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (cache, out, run, recipes) = (make("cache"), make("out"), make("run"), make("recipes"));
        Sandbox {
            dir,
            cache,
            out,
            run,
            recipes,
        }
    }

    /// The sandbox root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `fixtures/recipes/e2e/<name>.yaml` and its `<name>/` scripts into the sandbox,
    /// pointing the base image at the fixture guest and `../../../recipes/` at the repo's.
    /// Returns the copied recipe.
    pub fn copy_e2e_recipe(&self, name: &str) -> PathBuf {
        let root = test_support::workspace_root();
        let src = root.join("fixtures/recipes/e2e");
        let fixture = std::env::var_os(test_support::FIXTURE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(test_support::default_fixture_path);
        let yaml = std::fs::read_to_string(src.join(format!("{name}.yaml"))).unwrap();
        let yaml = yaml
            .replace(
                "../../../target/fixture/debian-bookworm.qcow2",
                &fixture.display().to_string(),
            )
            .replace("../../../", &format!("{}/", root.display()));
        let target = self.recipes.join(format!("{name}.yaml"));
        std::fs::write(&target, yaml).unwrap();
        let scripts = self.recipes.join(name);
        std::fs::create_dir_all(&scripts).unwrap();
        for entry in std::fs::read_dir(src.join(name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), scripts.join(entry.file_name())).unwrap();
        }
        target
    }

    /// Starts `imgbake recipe RECIPE --accel tcg --cache-dir … --output … EXTRA…` in the
    /// workspace root.
    pub fn start_recipe(&self, recipe: &Path, extra: &[&str]) -> Build {
        self.start_recipe_with_env(recipe, extra, &[])
    }

    /// Like [`Sandbox::start_recipe`], with extra environment variables (a recipe's secrets).
    pub fn start_recipe_with_env(
        &self,
        recipe: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Build {
        let mut args: Vec<String> = vec![
            "recipe".into(),
            recipe.display().to_string(),
            "--accel".into(),
            "tcg".into(),
            "--cache-dir".into(),
            self.cache.display().to_string(),
            "--output".into(),
            self.out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.start_with_env(&args, env)
    }

    /// Starts `imgbake ARGS…` with this sandbox's runtime dir, colour off.
    pub fn start(&self, args: &[String]) -> Build {
        self.start_with_env(args, &[])
    }

    /// Like [`Sandbox::start`], with extra environment variables.
    pub fn start_with_env(&self, args: &[String], env: &[(&str, &str)]) -> Build {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgbake"));
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .current_dir(test_support::workspace_root())
            .env("XDG_RUNTIME_DIR", &self.run)
            .env("NO_COLOR", "1")
            .env_remove("IMGBAKE_LOG")
            .env_remove("IMGBAKE_CACHE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let jsonl =
            args.first().is_some_and(|a| a == "recipe") && args.iter().any(|a| a == "--json");
        Build::spawn(cmd, args.join(" "), jsonl)
    }

    /// Runs `imgbake recipe …` to the end (bounded by `limit`).
    pub fn recipe(&self, recipe: &Path, extra: &[&str], limit: Duration) -> Finished {
        self.start_recipe(recipe, extra).finish(limit)
    }

    /// QEMU processes whose command line names this sandbox: `(pid, command line)`.
    pub fn qemu_processes(&self) -> Vec<(u32, String)> {
        let needle = self.root().display().to_string();
        processes()
            .into_iter()
            .filter(|p| p.is_qemu() && p.cmdline.contains(&needle))
            .map(|p| (p.pid, p.cmdline))
            .collect()
    }

    /// Fails unless no QEMU of this sandbox is left. A process killed by its parent-death signal
    /// can take a moment to be reaped, so this waits up to 10 s for them to go.
    pub fn assert_no_qemu_left(&self, context: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.qemu_processes();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{context}: QEMU still running after imgbake exited: {left:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Fails if an image is published under its final name in the output dir.
    pub fn assert_no_final_output(&self, recipe_name: &str, context: &str) {
        for ext in ["raw", "qcow2"] {
            let path = self.out.join(format!("{recipe_name}.{ext}"));
            assert!(
                !path.exists(),
                "{context}: {} exists after a failed build",
                path.display()
            );
        }
    }

    /// Published checkpoint records in the store: `(step id, record)`, by step id.
    pub fn checkpoint_records(&self) -> Vec<(String, Value)> {
        let dir = self.cache.join("checkpoints/layers");
        let mut records: Vec<(String, Value)> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| {
                        let v: Value =
                            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
                        (v["step_id"].as_str().unwrap_or_default().to_owned(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        records
    }

    /// Layer files (`*.qcow2`) in the store.
    pub fn layer_files(&self) -> Vec<PathBuf> {
        let dir = self.cache.join("checkpoints/layers");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "qcow2"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }
}

impl Drop for Sandbox {
    /// Backstop for a failed test: kill what is left of this sandbox's own QEMUs.
    fn drop(&mut self) {
        for (pid, _) in self.qemu_processes() {
            signal(pid, "KILL");
        }
    }
}

/// A running `imgbake`: with `recipe --json`, its events arrive as they are printed, and every
/// stdout line must be a JSON object.
pub struct Build {
    pub pid: u32,
    command: String,
    jsonl: bool,
    started: Instant,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_done: Receiver<()>,
    exit: Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

impl Build {
    fn spawn(mut cmd: Command, command: String, jsonl: bool) -> Build {
        let mut child = cmd.spawn().expect("start imgbake");
        let pid = child.id();
        let (line_tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        let (done_tx, stderr_done) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            let _ = done_tx.send(());
        });
        let (exit_tx, exit) = mpsc::channel();
        thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Build {
            pid,
            command,
            jsonl,
            started: Instant::now(),
            lines,
            stdout: Vec::new(),
            stderr,
            stderr_done,
            exit,
            status: None,
        }
    }

    fn stderr_tail(&self) -> String {
        let text = self.stderr.lock().unwrap().clone();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn record(&mut self, line: String) -> Value {
        let value = if self.jsonl {
            let value = serde_json::from_str::<Value>(&line).unwrap_or_else(|e| {
                panic!(
                    "`{}` printed a stdout line that is not JSON ({e}): {line}",
                    self.command
                )
            });
            assert!(
                value["event"].is_string(),
                "`{}`: not an event: {line}",
                self.command
            );
            value
        } else {
            Value::String(line.clone())
        };
        self.stdout.push(line);
        value
    }

    /// Waits (at most `limit`) for the first event from now on that `pred` accepts.
    pub fn wait_for_event(&mut self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let value = self.record(line);
                    if pred(&value) {
                        return value;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "`{}`: the awaited event did not come within {limit:?}; stderr:\n{}",
                        self.command,
                        self.stderr_tail()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "`{}` ended before the awaited event; stderr:\n{}",
                    self.command,
                    self.stderr_tail()
                ),
            }
        }
    }

    /// Sends signal `name` (`INT`, `KILL`, …) to imgbake.
    pub fn signal(&self, name: &str) {
        signal(self.pid, name);
    }

    /// imgbake's QEMU child, if it has one now.
    pub fn qemu_child(&self) -> Option<u32> {
        processes()
            .into_iter()
            .find(|p| p.ppid == self.pid && p.is_qemu())
            .map(|p| p.pid)
    }

    fn kill(&mut self) {
        if self.status.is_none() {
            signal(self.pid, "KILL");
            self.status = self.exit.recv_timeout(Duration::from_secs(30)).ok();
        }
    }

    /// Waits (at most `limit`, counted from the start) for imgbake to exit and collects what it
    /// printed. Every stdout line must be a JSON object.
    pub fn finish(mut self, limit: Duration) -> Finished {
        let deadline = self.started + limit;
        let status = match self
            .exit
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(status) => status,
            Err(_) => {
                self.kill();
                panic!(
                    "`{}` did not finish within {limit:?}; killed it; stderr:\n{}",
                    self.command,
                    self.stderr_tail()
                );
            }
        };
        self.status = Some(status);
        let wall = self.started.elapsed();
        // The stdout pipe closes when imgbake exits; its reader hands over what is left.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.record(line);
        }
        // The stderr reader may still be copying the last bytes.
        let _ = self.stderr_done.recv_timeout(Duration::from_secs(10));
        let events = if self.jsonl {
            self.stdout
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        } else {
            Vec::new()
        };
        Finished {
            command: self.command.clone(),
            code: status.code(),
            events,
            stdout: self.stdout.join("\n"),
            stderr: self.stderr.lock().unwrap().clone(),
            wall,
        }
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a finished imgbake run printed.
#[derive(Debug)]
pub struct Finished {
    pub command: String,
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// The `recipe --json` events, in order.
    pub events: Vec<Value>,
    /// Everything on stdout.
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
}

impl Finished {
    /// Fails (with stderr) unless the exit code is `code`.
    pub fn expect_code(&self, code: i32, context: &str) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{context}: `{}` exited with {:?}, expected {code}; stderr:\n{}",
            self.command,
            self.code,
            self.stderr
        );
        self
    }

    /// The events named `name`.
    pub fn events_named(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }

    /// Step ids of the `step_started` events, in order (retries repeat an id).
    pub fn started_steps(&self) -> Vec<String> {
        self.events_named("step_started")
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The ids of the `steps_reused` event (empty without one) and its `resumed` flag.
    pub fn reused_steps(&self) -> (Vec<String>, Option<bool>) {
        match self.events_named("steps_reused").first() {
            Some(e) => (
                e["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect(),
                e["resumed"].as_bool(),
            ),
            None => (Vec::new(), None),
        }
    }

    /// The `reason`s of `checkpoint_discarded` events.
    pub fn discarded(&self) -> Vec<String> {
        self.events_named("checkpoint_discarded")
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// One process from /proc.
struct Proc {
    pid: u32,
    ppid: u32,
    argv0: String,
    cmdline: String,
}

impl Proc {
    fn is_qemu(&self) -> bool {
        Path::new(&self.argv0)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system"))
    }
}

fn processes() -> Vec<Proc> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(cmdline), Ok(stat)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("stat")),
        ) else {
            continue;
        };
        // stat: "pid (comm) state ppid …"; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(argv0) = args.first().cloned() else {
            continue; // a kernel thread or a zombie
        };
        found.push(Proc {
            pid,
            ppid,
            argv0,
            cmdline: args.join(" "),
        });
    }
    found
}

/// `/proc/PID/stat` of one process: `(state, process group)`; `None` once it is gone.
pub fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// Children of `parent` whose program's file name starts with `name` (`qemu-img`, `qemu-system`).
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == parent)
        .filter(|p| {
            Path::new(&p.argv0)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(name))
        })
        .map(|p| p.pid)
        .collect()
}

/// Live members (zombies excluded) of process group `group`, by pid.
pub fn group_members(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| proc_state(*pid).is_some_and(|(state, g)| g == group && state != 'Z'))
        .collect()
}

/// Fails unless process group `group` (a child imgbake started in its own group) has no live
/// member left. A process killed by its parent-death signal may take a moment to go (and may
/// stay a zombie where PID 1 does not reap), so this waits up to 10 s.
pub fn assert_group_gone(group: u32, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = group_members(group);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{context}: process group {group} still has live members {left:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `kill -NAME PID` (the test crate has no signal crate; this keeps it that way).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Reads files out of a disk image offline (RAW, or qcow2 through its backing chain).
pub struct GuestDisk {
    fs: inspect::ImageFs,
    path: PathBuf,
}

impl GuestDisk {
    pub fn open(image: &Path) -> GuestDisk {
        let disk =
            inspect::Disk::open(image).unwrap_or_else(|e| panic!("open {}: {e}", image.display()));
        let fs = inspect::ImageFs::open(&disk)
            .unwrap_or_else(|e| panic!("find the root filesystem of {}: {e}", image.display()));
        GuestDisk {
            fs,
            path: image.to_path_buf(),
        }
    }

    /// A guest file as text; `None` when it does not exist.
    pub fn text(&self, path: &str) -> Option<String> {
        self.fs
            .read_text(path)
            .unwrap_or_else(|e| panic!("read {path} from {}: {e}", self.path.display()))
    }

    /// A guest file as text; fails when it does not exist.
    pub fn must_text(&self, path: &str) -> String {
        self.text(path)
            .unwrap_or_else(|| panic!("{path} is missing from {}", self.path.display()))
    }

    pub fn exists(&self, path: &str) -> bool {
        self.fs
            .exists_no_follow(path)
            .unwrap_or_else(|e| panic!("look up {path} in {}: {e}", self.path.display()))
    }

    /// Names in a guest directory (empty when it does not exist).
    pub fn list(&self, path: &str) -> Vec<String> {
        self.fs
            .list(path)
            .unwrap_or_else(|e| panic!("list {path} in {}: {e}", self.path.display()))
            .into_iter()
            .map(|e| e.name)
            .collect()
    }
}
