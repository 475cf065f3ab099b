//! `packer` (issue 14 item 5): imgbake against Packer 1.6.6 (Debian's `packer` package) on the
//! same fixture guest, steps, accelerator (TCG), 2 vCPU, 1 GiB and RAW output.
//!
//! The inputs live in `xtask/bench/`: `packer.json` (a plain JSON template, qemu builder,
//! `disk_image` + a `cd_files` cloud-init seed carrying an SSH key), `packer-bench.yaml` (the
//! imgbake recipe), `packer-bench-reboot.yaml` (the same with a reboot after step 02) and
//! `steps/`, the scripts both tools run (`../../recipes/scripts/99-cleanup.sh` is the third).
//!
//! Each of the `--runs` pairs, in a fresh directory:
//!
//! | row | imgbake | against |
//! |---|---|---|
//! | cold | `recipe --no-cache`, empty cache | `packer build` (first in even pairs, second in odd) |
//! | warm | a new recipe (every script carries a new marker line) on the cold build's cache | the same Packer build (Packer has no cache, so its warm build is its cold build) |
//! | rebuild | step 02 edited, plain rerun on that cache (01 reused) | imgbake cold |
//! | reboot | `packer-bench-reboot.yaml`, empty cache: `Rebooting` event → next step started | QEMU start → first step of the same build |
//! | jobs | both recipes, `--jobs 2`, empty cache | cold + reboot builds, one after the other |
//! | restore | command start → first step on the warm and rebuild builds, when the build says it restored a VM state | (absolute, ≤ 5 s) |
//! | rss | imgbake's own `VmHWM` (polled from `/proc/<pid>/status` until it exits; QEMU is a child and not counted), the largest over every imgbake run | (absolute, < 64 MB) |
//!
//! Values are ratios of medians; every pair's own ratio is in the detail and in `report.json`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::{Bench, Goal, Measurement, settle, which};

const TEMPLATE: &str = include_str!("../../bench/packer.json");
const RECIPE: &str = include_str!("../../bench/packer-bench.yaml");
const REBOOT_RECIPE: &str = include_str!("../../bench/packer-bench-reboot.yaml");
/// The bench's own step scripts (`xtask/bench/steps/`), written into each pair's directory.
const STEPS: &[(&str, &str)] = &[
    ("01-apt.sh", include_str!("../../bench/steps/01-apt.sh")),
    (
        "02-modprobe-firmware.sh",
        include_str!("../../bench/steps/02-modprobe-firmware.sh"),
    ),
];
/// The recipe's name as `packer-bench.yaml` spells it (the warm recipe gets another).
const RECIPE_NAME: &str = "packer-bench";
const REBOOT_NAME: &str = "packer-bench-reboot";
/// The rebuild row edits this text of step 02 (the last-but-one step).
const STEP_TO_EDIT: &str = "02-modprobe-firmware.sh";
const ORIGINAL: &str = "${BENCH_EDIT:-original}";
const EDITED: &str = "${BENCH_EDIT:-edited by cargo xtask bench packer}";
const PACKER_VERSION: &str = "1.6.6";

/// Where the rendered inputs point.
#[derive(Debug, Clone)]
pub struct TemplateVars {
    /// The fixture guest (`disk_image`).
    pub disk_image: PathBuf,
    /// `sha256:<hex>` of it.
    pub checksum: String,
    /// Packer's `output_directory` (must not exist yet).
    pub output_dir: PathBuf,
    /// Holds `user-data` and `meta-data` for the `cidata` CD.
    pub seed_dir: PathBuf,
    /// The private key whose public half is in `user-data`.
    pub ssh_key: PathBuf,
    /// The copy of `xtask/bench/steps/`.
    pub steps_dir: PathBuf,
    /// `recipes/scripts/99-cleanup.sh`.
    pub cleanup: PathBuf,
}

/// `packer.json` with every `@NAME@` placeholder replaced (JSON-escaped, as the template is
/// parsed and written back). A placeholder left over is an error naming it.
pub fn render_template(template: &str, vars: &TemplateVars) -> Result<String> {
    let mut value: Value =
        serde_json::from_str(template).context("xtask/bench/packer.json is not valid JSON")?;
    let pairs = [
        ("@DISK_IMAGE@", vars.disk_image.display().to_string()),
        ("@CHECKSUM@", vars.checksum.clone()),
        ("@OUTPUT_DIR@", vars.output_dir.display().to_string()),
        ("@SEED_DIR@", vars.seed_dir.display().to_string()),
        ("@SSH_KEY@", vars.ssh_key.display().to_string()),
        ("@STEPS_DIR@", vars.steps_dir.display().to_string()),
        ("@CLEANUP@", vars.cleanup.display().to_string()),
    ];
    fn walk(v: &mut Value, pairs: &[(&str, String)]) {
        match v {
            Value::String(s) => {
                for (from, to) in pairs {
                    if s.contains(from) {
                        *s = s.replace(from, to);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, pairs)),
            Value::Object(map) => map.values_mut().for_each(|i| walk(i, pairs)),
            _ => {}
        }
    }
    walk(&mut value, &pairs);
    let text = serde_json::to_string_pretty(&value)?;
    if let Some(left) = placeholders(&text).first() {
        bail!("xtask/bench/packer.json: placeholder {left} has no value in the bench");
    }
    Ok(text)
}

/// Every `@NAME@` (upper-case letters and `_`) in a text.
fn placeholders(text: &str) -> Vec<&str> {
    let at: Vec<usize> = text.match_indices('@').map(|(i, _)| i).collect();
    at.windows(2)
        .map(|w| &text[w[0]..=w[1]])
        .filter(|p| {
            p.len() > 2
                && p[1..p.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_')
        })
        .collect()
}

/// The step scripts Packer's shell provisioner runs, in order.
pub fn template_scripts(rendered: &str) -> Result<Vec<String>> {
    let value: Value = serde_json::from_str(rendered)?;
    let mut scripts = Vec::new();
    for p in value["provisioners"]
        .as_array()
        .context("no provisioners")?
    {
        if let Some(list) = p["scripts"].as_array() {
            scripts.extend(list.iter().filter_map(|s| s.as_str().map(str::to_owned)));
        }
    }
    Ok(scripts)
}

/// A recipe of `xtask/bench/` made usable from a scratch directory: `../../target/` points at
/// the real target dir (the fixture), `../../` at the workspace, `steps/` at `steps_dir`
/// (relative to the recipe), and the name is `name`.
pub fn render_recipe(
    text: &str,
    root: &Path,
    target: &Path,
    steps_dir: &str,
    name: &str,
) -> Result<String> {
    let original_name = text
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .context("the bench recipe has no `name:` line")?
        .trim()
        .to_owned();
    let text = text
        .replace("../../target/", &format!("{}/", target.display()))
        .replace("../../", &format!("{}/", root.display()))
        .replace("  - steps/", &format!("  - {steps_dir}/"))
        .replace("script: steps/", &format!("script: {steps_dir}/"))
        .replace(
            &format!("name: {original_name}\n"),
            &format!("name: {name}\n"),
        );
    Ok(text)
}

/// The step script paths of a rendered recipe, in order (`- path` or `- script: path`).
pub fn recipe_scripts(rendered: &str) -> Vec<String> {
    let mut in_steps = false;
    let mut out = Vec::new();
    for line in rendered.lines() {
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_steps = line.trim_end() == "steps:";
            continue;
        }
        if !in_steps {
            continue;
        }
        let item = line.trim_start();
        if let Some(rest) = item.strip_prefix("- ") {
            let path = rest.strip_prefix("script: ").unwrap_or(rest).trim();
            out.push(path.to_owned());
        }
    }
    out
}

/// cloud-init `user-data` for Packer's seed: a `packer` user with the key and sudo.
pub fn user_data(public_key: &str) -> String {
    format!(
        "#cloud-config\nusers:\n  - name: packer\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    shell: /bin/bash\n    ssh_authorized_keys:\n      - {}\nssh_pwauth: false\n",
        public_key.trim()
    )
}

/// What one timed command did.
#[derive(Debug, Default)]
struct Timed {
    wall: Duration,
    /// stdout lines, with seconds since the command started.
    lines: Vec<(f64, String)>,
    /// The largest `VmHWM` seen in `/proc/<pid>/status`, in kB.
    peak_rss_kb: Option<u64>,
}

impl Timed {
    /// `--json` events with their time.
    fn events(&self) -> impl Iterator<Item = (f64, Value)> + '_ {
        self.lines.iter().filter_map(|(t, l)| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("event").is_some())
                .map(|v| (*t, v))
        })
    }

    fn first_event(&self, name: &str) -> Option<f64> {
        self.events()
            .find(|(_, v)| v["event"] == name)
            .map(|(t, _)| t)
    }

    fn first_line(&self, needle: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }
}

/// Seconds from a `rebooting` event to the next `step_started` (the reboot as the build feels
/// it: down, boot, SSH, cloud-init, next step).
fn reboot_secs(events: &[(f64, Value)]) -> Option<f64> {
    let at = events.iter().position(|(_, v)| v["event"] == "rebooting")?;
    let (down, _) = events[at];
    events[at..]
        .iter()
        .find(|(_, v)| v["event"] == "step_started")
        .map(|(t, _)| t - down)
}

/// Whether a build says it restored a VM state (an event or a `run.json` field naming it).
/// Until VM-state checkpoints land, no build does.
fn restored_state(events: &[(f64, Value)], run: &Value) -> bool {
    let named = |s: &str| s.contains("restored") && !s.contains("fail");
    let truthy = |v: &Value| match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => true,
    };
    events
        .iter()
        .any(|(_, v)| v["event"].as_str().is_some_and(named))
        || run
            .as_object()
            .is_some_and(|m| m.iter().any(|(k, v)| named(k) && truthy(v)))
}

/// Runs `cmd`, stdout lines timestamped and copied to `logs/<log>.log` (stderr too), polling
/// the process's `VmHWM` until it exits. Fails (quoting the log's tail) unless it exits 0.
fn run_timed(bench: &Bench, log: &str, cmd: &mut Command) -> Result<Timed> {
    let log_path = bench.logs.join(format!("{log}.log"));
    let file = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let err = file.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("run {:?}", cmd.get_program()))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut file = file;
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let t = started.elapsed().as_secs_f64();
            let _ = writeln!(file, "{line}");
            lines.push((t, line));
        }
        lines
    });
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = None;
    let status = loop {
        // Read before try_wait: once reaped, the pid's /proc entry is gone.
        if let Some(kb) = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| vm_hwm_kb(&s))
        {
            peak = Some(peak.map_or(kb, |p: u64| p.max(kb)));
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = started.elapsed();
    let lines = reader.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}); last lines of {}:\n{}",
            log_path.display(),
            super::tail(&log_path, 20)
        );
    }
    Ok(Timed {
        wall,
        lines,
        peak_rss_kb: peak,
    })
}

/// `VmHWM` of a `/proc/<pid>/status` text, in kB.
fn vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("read {}", path.display()))?,
    )
    .with_context(|| format!("parse {}", path.display()))
}

/// Installs Debian's `packer` when missing (a bench-only dependency), and checks its version.
fn ensure_packer() -> Result<String> {
    if !which("packer") {
        eprintln!(
            "bench packer: `packer` is not installed; installing Debian's packer package (apt-get install -y packer, needed by this bench only)"
        );
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "packer"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
        };
        if !install().is_ok_and(|s| s.success()) {
            let _ = Command::new("apt-get").arg("update").status();
            let status = install().context("run apt-get")?;
            ensure!(
                status.success(),
                "apt-get install -y packer failed ({status})\n  try it by hand (as root), then rerun cargo xtask bench packer"
            );
        }
    }
    let out = Command::new("packer")
        .arg("version")
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .context("run packer version")?;
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if !version.contains(PACKER_VERSION) {
        eprintln!(
            "bench packer: warning: {version} is not Packer {PACKER_VERSION} (the template is written for Debian's 1.6.6)"
        );
    }
    Ok(version)
}

/// One pair's directory: scripts, recipes, seed, key, template.
struct Pair {
    dir: PathBuf,
    recipe: PathBuf,
    warm_recipe: PathBuf,
    reboot_recipe: PathBuf,
    template: PathBuf,
}

fn prepare_pair(bench: &Bench, ctx: &Setup, index: usize) -> Result<Pair> {
    let dir = bench.work.join(format!("pair-{index}"));
    std::fs::create_dir_all(&dir)?;
    for (steps_dir, marker) in [("steps", None), ("warm-steps", Some(index))] {
        let d = dir.join(steps_dir);
        std::fs::create_dir_all(&d)?;
        let cleanup = std::fs::read_to_string(&ctx.cleanup)
            .with_context(|| format!("read {}", ctx.cleanup.display()))?;
        for (name, text) in STEPS
            .iter()
            .copied()
            .chain([("99-cleanup.sh", cleanup.as_str())])
        {
            // A new marker line makes every script (and so every checkpoint key) new.
            let text = match marker {
                Some(n) => format!("{text}# warm recipe of bench pair {n}\n"),
                None => text.to_owned(),
            };
            std::fs::write(d.join(name), text)?;
        }
    }
    let write_recipe = |file: &str, text: &str, steps: &str, name: &str| -> Result<PathBuf> {
        let path = dir.join(file);
        let text = render_recipe(text, &ctx.root, &ctx.target, steps, name)?
            // The cleanup runs from the pair's copy, so both tools run the same file.
            .replace(
                &format!("{}/recipes/scripts/99-cleanup.sh", ctx.root.display()),
                &format!("{steps}/99-cleanup.sh"),
            );
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let recipe = write_recipe("packer-bench.yaml", RECIPE, "steps", RECIPE_NAME)?;
    let warm_recipe = write_recipe(
        "packer-bench-warm.yaml",
        RECIPE,
        "warm-steps",
        "packer-bench-warm",
    )?;
    let reboot_recipe = write_recipe(
        "packer-bench-reboot.yaml",
        REBOOT_RECIPE,
        "steps",
        REBOOT_NAME,
    )?;

    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed)?;
    let key = dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "packer-bench", "-f"])
        .arg(&key)
        .stdin(Stdio::null())
        .status()
        .context("run ssh-keygen")?;
    ensure!(status.success(), "ssh-keygen failed ({status})");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    std::fs::write(seed.join("user-data"), user_data(&public))?;
    std::fs::write(
        seed.join("meta-data"),
        format!("instance-id: packer-bench-{index}\nlocal-hostname: packer-bench\n"),
    )?;
    let vars = TemplateVars {
        disk_image: ctx.fixture.clone(),
        checksum: ctx.checksum.clone(),
        output_dir: dir.join("packer-out"),
        seed_dir: seed,
        ssh_key: key,
        steps_dir: dir.join("steps"),
        cleanup: dir.join("steps/99-cleanup.sh"),
    };
    let template = dir.join("packer.json");
    let rendered = render_template(TEMPLATE, &vars)?;
    // Both tools must run the very same files, in the same order.
    let recipe_text = std::fs::read_to_string(&recipe)?;
    let from_recipe: Vec<String> = recipe_scripts(&recipe_text)
        .iter()
        .map(|s| dir.join(s).display().to_string())
        .collect();
    let from_template = template_scripts(&rendered)?;
    ensure!(
        from_recipe == from_template,
        "the bench recipe runs {from_recipe:?} but the Packer template {from_template:?}"
    );
    std::fs::write(&template, rendered)?;
    Ok(Pair {
        dir,
        recipe,
        warm_recipe,
        reboot_recipe,
        template,
    })
}

/// What the whole bench needs to know about this checkout.
struct Setup {
    root: PathBuf,
    target: PathBuf,
    fixture: PathBuf,
    checksum: String,
    cleanup: PathBuf,
}

/// One imgbake build: its wall time, events, run.json(s), peak RSS.
struct Build {
    timed: Timed,
    events: Vec<(f64, Value)>,
    runs: Vec<Value>,
}

impl Build {
    fn secs(&self) -> f64 {
        self.timed.wall.as_secs_f64()
    }
}

/// How an imgbake build is run.
struct BuildSpec<'a> {
    log: String,
    recipes: &'a [&'a Path],
    cache: &'a Path,
    output: &'a Path,
    no_cache: bool,
    jobs: usize,
}

fn imgbake_build(bench: &Bench, spec: &BuildSpec<'_>) -> Result<Build> {
    let mut cmd = bench.imgbake();
    cmd.arg("recipe")
        .args(spec.recipes)
        .args(["--accel", "tcg", "--json", "--cache-dir"])
        .arg(spec.cache)
        .arg("--output")
        .arg(spec.output);
    if spec.no_cache {
        cmd.arg("--no-cache");
    }
    if spec.jobs > 1 {
        cmd.args(["--jobs", &spec.jobs.to_string()]);
    }
    eprintln!("bench packer: {}", spec.log);
    settle()?;
    let timed = run_timed(bench, &spec.log, &mut cmd)?;
    let events = timed.events().collect();
    let runs = if spec.recipes.len() == 1 {
        vec![read_json(&spec.output.join("run.json"))?]
    } else {
        let mut runs = Vec::new();
        for r in spec.recipes {
            let text = std::fs::read_to_string(r)?;
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("name: "))
                .context("recipe without name")?
                .trim()
                .to_owned();
            runs.push(read_json(&spec.output.join(name).join("run.json"))?);
        }
        runs
    };
    eprintln!(
        "bench packer: {}: {:.1}s",
        spec.log,
        timed.wall.as_secs_f64()
    );
    Ok(Build {
        timed,
        events,
        runs,
    })
}

fn statuses(run: &Value) -> Vec<(String, String)> {
    run["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap_or_default().to_owned(),
                        s["status"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn packer_build(bench: &Bench, pair: &Pair, index: usize) -> Result<Timed> {
    let log = format!("packer-packer-{index}");
    eprintln!("bench packer: {log}");
    settle()?;
    let mut cmd = Command::new("packer");
    cmd.args(["build", "-color=false"])
        .arg(&pair.template)
        .current_dir(&pair.dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_CACHE_DIR", pair.dir.join("packer_cache"));
    let timed = run_timed(bench, &log, &mut cmd)?;
    let raw = pair.dir.join("packer-out/packer-bench.raw");
    ensure!(
        raw.is_file(),
        "packer build succeeded but wrote no {}",
        raw.display()
    );
    eprintln!("bench packer: {log}: {:.1}s", timed.wall.as_secs_f64());
    // The RAW is 4 GiB apparent; it is not needed any more.
    let _ = std::fs::remove_dir_all(pair.dir.join("packer-out"));
    Ok(timed)
}

/// The median of some figures (the upper one for an even count); NaN when empty.
fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every figure of every pair, in seconds (NaN where a build did not report one).
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub packer: Vec<f64>,
    pub cold: Vec<f64>,
    pub warm: Vec<f64>,
    pub rebuild: Vec<f64>,
    /// The reboot build's wall time.
    pub reboot_build: Vec<f64>,
    /// `rebooting` → next step.
    pub reboot: Vec<f64>,
    /// QEMU start → first step, in the reboot build.
    pub first_boot: Vec<f64>,
    pub jobs: Vec<f64>,
    /// Command start → first step on a restored VM state (warm and rebuild builds that say so).
    pub restore_to_first_step: Vec<f64>,
    /// The largest imgbake `VmHWM`, in kB, and which run.
    pub peak_rss_kb: u64,
    pub peak_rss_run: String,
}

fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// The rows of the report, from the figures.
pub fn rows(f: &Figures, runs: usize, packer_version: &str) -> Vec<Measurement> {
    let m = median;
    let mut rows = Vec::new();
    let cold_pairs = ratios(&f.cold, &f.packer);
    rows.push(Measurement {
        name: "packer-cold",
        value: m(&f.cold) / m(&f.packer),
        unit: "ratio",
        goal: Goal::AtMost(0.75),
        runs,
        detail: format!(
            "imgbake --no-cache {:.1}s / {packer_version} {:.1}s (medians); pair ratios: {}",
            m(&f.cold),
            m(&f.packer),
            list(&cold_pairs)
        ),
        data: json!({ "imgbake_s": f.cold, "packer_s": f.packer, "pair_ratios": cold_pairs }),
    });
    let warm_pairs = ratios(&f.warm, &f.packer);
    rows.push(Measurement {
        name: "packer-warm",
        value: m(&f.warm) / m(&f.packer),
        unit: "ratio",
        goal: Goal::AtMost(0.45),
        runs,
        detail: format!(
            "imgbake, new recipe on a base booted before {:.1}s / Packer {:.1}s (its only build: Packer has no cache); pair ratios: {}",
            m(&f.warm),
            m(&f.packer),
            list(&warm_pairs)
        ),
        data: json!({ "imgbake_s": f.warm, "packer_s": f.packer, "pair_ratios": warm_pairs }),
    });
    let rebuild_pairs = ratios(&f.rebuild, &f.cold);
    rows.push(Measurement {
        name: "packer-rebuild",
        value: m(&f.rebuild) / m(&f.cold),
        unit: "ratio",
        goal: Goal::AtMost(0.15),
        runs,
        detail: format!(
            "rebuild after editing step 02 {:.1}s (01 reused) / imgbake cold {:.1}s; pair ratios: {}",
            m(&f.rebuild),
            m(&f.cold),
            list(&rebuild_pairs)
        ),
        data: json!({ "rebuild_s": f.rebuild, "cold_s": f.cold, "pair_ratios": rebuild_pairs }),
    });
    let reboot_pairs = ratios(&f.reboot, &f.first_boot);
    rows.push(Measurement {
        name: "packer-reboot",
        value: m(&f.reboot) / m(&f.first_boot),
        unit: "ratio",
        goal: Goal::AtMost(1.1),
        runs,
        detail: format!(
            "reboot step (rebooting -> next step) {:.1}s / first boot (QEMU start -> first step) {:.1}s; pair ratios: {}",
            m(&f.reboot),
            m(&f.first_boot),
            list(&reboot_pairs)
        ),
        data: json!({ "reboot_s": f.reboot, "first_boot_s": f.first_boot, "build_s": f.reboot_build, "pair_ratios": reboot_pairs }),
    });
    rows.push(if f.restore_to_first_step.is_empty() {
        Measurement::not_measured(
            "packer-restore",
            "s",
            Goal::AtMost(5.0),
            runs,
            "n/a — not implemented: no build reported restoring a VM state",
        )
    } else {
        Measurement {
            name: "packer-restore",
            value: m(&f.restore_to_first_step),
            unit: "s",
            goal: Goal::AtMost(5.0),
            runs,
            detail: format!(
                "command start -> first step on a restored VM state (warm and rebuild builds): {}s",
                list(&f.restore_to_first_step)
            ),
            data: json!({ "restore_to_first_step_s": f.restore_to_first_step }),
        }
    });
    let sequential: Vec<f64> = f
        .cold
        .iter()
        .zip(&f.reboot_build)
        .map(|(a, b)| a + b)
        .collect();
    let jobs_pairs = ratios(&f.jobs, &sequential);
    rows.push(Measurement {
        name: "packer-jobs2",
        value: m(&f.jobs) / m(&sequential),
        unit: "ratio",
        goal: Goal::None,
        runs,
        detail: format!(
            "both recipes with --jobs 2 {:.1}s / one after the other (cold + reboot builds) {:.1}s; pair ratios: {}",
            m(&f.jobs),
            m(&sequential),
            list(&jobs_pairs)
        ),
        data: json!({ "jobs2_s": f.jobs, "sequential_s": sequential, "pair_ratios": jobs_pairs }),
    });
    let mb = f.peak_rss_kb as f64 * 1024.0 / 1e6;
    rows.push(Measurement {
        name: "packer-rss",
        value: mb,
        unit: "MB",
        goal: Goal::Below(64.0),
        runs,
        detail: format!(
            "imgbake's own peak RSS (VmHWM, QEMU not counted): {} kB, in {}",
            f.peak_rss_kb, f.peak_rss_run
        ),
        data: json!({ "peak_rss_kb": f.peak_rss_kb, "run": f.peak_rss_run }),
    });
    rows
}

pub fn run(bench: &Bench) -> Result<Vec<Measurement>> {
    let root = crate::project_root();
    let target = crate::target_dir(&root);
    let fixture = target.join("fixture/debian-bookworm.qcow2");
    ensure!(
        fixture.is_file(),
        "the fixture guest is missing ({})\n  try: cargo xtask fixture",
        fixture.display()
    );
    let sum_file = fixture.with_extension("qcow2.sha256");
    let checksum = std::fs::read_to_string(&sum_file)
        .with_context(|| format!("read {}", sum_file.display()))?
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .with_context(|| format!("{} holds no sha256", sum_file.display()))?
        .to_owned();
    ensure!(
        which("ssh-keygen"),
        "`ssh-keygen` is not installed\n  try: apt-get install -y openssh-client"
    );
    ensure!(
        ["xorriso", "mkisofs", "genisoimage"]
            .iter()
            .any(|t| which(t)),
        "Packer's cd_files needs xorriso, mkisofs or genisoimage\n  try: apt-get install -y xorriso"
    );
    let packer_version = ensure_packer()?;
    let ctx = Setup {
        cleanup: root.join("recipes/scripts/99-cleanup.sh"),
        root,
        target,
        fixture,
        checksum: format!("sha256:{checksum}"),
    };

    let mut f = Figures::default();
    let mut pairs_data = Vec::new();
    let mut failures = Vec::new();
    for index in 0..bench.runs {
        let pair = prepare_pair(bench, &ctx, index)?;
        let mut data = json!({});
        pair_builds(
            bench,
            &pair,
            index,
            &packer_version,
            Progress {
                figures: &mut f,
                done: &pairs_data,
                data: &mut data,
                failures: &mut failures,
            },
        );
        pairs_data.push(data);
        // Layers and images are gigabytes; drop them before the next pair.
        let _ = std::fs::remove_dir_all(&pair.dir);
    }
    write_progress(bench, &f, &pairs_data, &packer_version, &failures)?;
    let mut rows = rows(&f, bench.runs, &packer_version);
    for row in &mut rows {
        if !failures.is_empty() {
            row.detail.push_str(&format!(
                " [{} build(s) failed, see target/bench/packer-pairs.json]",
                failures.len()
            ));
        }
    }
    Ok(rows)
}

/// Where one pair's figures go while it runs.
struct Progress<'a> {
    figures: &'a mut Figures,
    /// The pairs already finished.
    done: &'a [Value],
    /// This pair's builds, for `packer-pairs.json`.
    data: &'a mut Value,
    /// `"<build>: <error>"` for every build that failed.
    failures: &'a mut Vec<String>,
}

/// `target/bench/packer-pairs.json` and `packer-partial.txt`, rewritten after every build, so a
/// bench stopped half-way still leaves its figures.
fn write_progress(
    bench: &Bench,
    f: &Figures,
    pairs: &[Value],
    packer_version: &str,
    failures: &[String],
) -> Result<()> {
    let dir = bench.logs.parent().unwrap_or(&bench.logs);
    let report = json!({ "packer_version": packer_version, "pairs": pairs, "failures": failures });
    std::fs::write(
        dir.join("packer-pairs.json"),
        serde_json::to_vec_pretty(&report)?,
    )
    .with_context(|| format!("write {}", dir.join("packer-pairs.json").display()))?;
    let runs = f.packer.len().max(f.cold.len());
    std::fs::write(
        dir.join("packer-partial.txt"),
        super::report::table(&rows(f, runs, packer_version)),
    )?;
    Ok(())
}

/// One pair: Packer and the imgbake cold build (who goes first alternates), then warm, rebuild,
/// reboot and `--jobs 2`. A failed build is recorded and its figures stay NaN (`n/a`); the
/// others still run.
fn pair_builds(bench: &Bench, pair: &Pair, index: usize, packer_version: &str, p: Progress<'_>) {
    let Progress {
        figures: f,
        done,
        data,
        failures,
    } = p;
    let d = &pair.dir;
    for v in [
        &mut f.packer,
        &mut f.cold,
        &mut f.warm,
        &mut f.rebuild,
        &mut f.reboot_build,
        &mut f.reboot,
        &mut f.first_boot,
        &mut f.jobs,
    ] {
        v.push(f64::NAN);
    }
    let record = |label: &str, build: &Build, f: &mut Figures, data: &mut Value| {
        let kb = build.timed.peak_rss_kb.unwrap_or(0);
        if kb > f.peak_rss_kb {
            f.peak_rss_kb = kb;
            f.peak_rss_run = format!("the {label} build of pair {index}");
        }
        data[label] = json!({
            "wall_s": build.secs(),
            "peak_rss_kb": build.timed.peak_rss_kb,
            "first_step_event_s": build.timed.first_event("step_started"),
            "runs": build.runs,
        });
    };
    let progress = |f: &Figures, data: &Value, failures: &[String]| {
        let mut pairs = done.to_vec();
        pairs.push(data.clone());
        if let Err(e) = write_progress(bench, f, &pairs, packer_version, failures) {
            eprintln!("bench packer: warning: {e:#}");
        }
    };
    let failed = |label: &str, e: anyhow::Error, failures: &mut Vec<String>| {
        eprintln!("bench packer: {label} of pair {index} failed: {e:#}");
        failures.push(format!("pair {index} {label}: {e:#}"));
    };
    let spec =
        |log: &str, recipes: &'static [&'static str], cache: &str, out: &str, no_cache: bool| {
            (
                format!("packer-{log}-{index}"),
                recipes,
                d.join(cache),
                d.join(out),
                no_cache,
            )
        };
    let build =
        |(log, recipes, cache, output, no_cache): (String, &[&str], PathBuf, PathBuf, bool)| {
            let paths: Vec<&Path> = recipes
                .iter()
                .map(|r| match *r {
                    "main" => pair.recipe.as_path(),
                    "warm" => pair.warm_recipe.as_path(),
                    _ => pair.reboot_recipe.as_path(),
                })
                .collect();
            imgbake_build(
                bench,
                &BuildSpec {
                    log,
                    recipes: &paths,
                    cache: &cache,
                    output: &output,
                    no_cache,
                    jobs: paths.len(),
                },
            )
        };

    // Alternate who goes first, so neither always meets a warmer page cache.
    let packer_first = index.is_multiple_of(2);
    for first in [packer_first, !packer_first] {
        if first {
            match packer_build(bench, pair, index) {
                Ok(t) => {
                    f.packer[index] = t.wall.as_secs_f64();
                    data["packer"] = json!({
                        "wall_s": t.wall.as_secs_f64(),
                        "ssh_connected_s": t.first_line("Connected to SSH"),
                        "first_script_s": t.first_line("Provisioning with shell script"),
                    });
                }
                Err(e) => failed("packer", e, failures),
            }
        } else {
            match build(spec("cold", &["main"], "cache", "out-cold", true)) {
                Ok(b) => {
                    f.cold[index] = b.secs();
                    record("cold", &b, f, data);
                }
                Err(e) => failed("cold", e, failures),
            }
        }
        progress(f, data, failures);
    }

    let warm = build(spec("warm", &["warm"], "cache", "out-warm", false)).and_then(|b| {
        let s = statuses(&b.runs[0]);
        ensure!(
            s.iter().all(|(_, s)| s == "ran"),
            "the warm recipe should run every step, but run.json says {s:?}"
        );
        Ok(b)
    });
    match warm {
        Ok(b) => {
            f.warm[index] = b.secs();
            if restored_state(&b.events, &b.runs[0])
                && let Some(t) = b.timed.first_event("step_started")
            {
                f.restore_to_first_step.push(t);
            }
            record("warm", &b, f, data);
        }
        Err(e) => failed("warm", e, failures),
    }
    progress(f, data, failures);

    let rebuild = edit_step(d).and_then(|()| {
        let b = build(spec("rebuild", &["main"], "cache", "out-rebuild", false))?;
        let s = statuses(&b.runs[0]);
        let reused: Vec<&str> = s
            .iter()
            .filter(|(_, st)| st == "reused")
            .map(|(id, _)| id.as_str())
            .collect();
        ensure!(
            reused == ["01"],
            "the rebuild should reuse step 01 and rerun 02 and 99, but run.json says {s:?}"
        );
        Ok(b)
    });
    match rebuild {
        Ok(b) => {
            f.rebuild[index] = b.secs();
            if restored_state(&b.events, &b.runs[0])
                && let Some(t) = b.timed.first_event("step_started")
            {
                f.restore_to_first_step.push(t);
            }
            record("rebuild", &b, f, data);
        }
        Err(e) => failed("rebuild", e, failures),
    }
    progress(f, data, failures);

    match build(spec(
        "reboot",
        &["reboot"],
        "cache-reboot",
        "out-reboot",
        true,
    )) {
        Ok(b) => {
            f.reboot_build[index] = b.secs();
            f.reboot[index] = reboot_secs(&b.events).unwrap_or(f64::NAN);
            f.first_boot[index] = b.runs[0]["first_step_secs"].as_f64().unwrap_or(f64::NAN);
            record("reboot", &b, f, data);
        }
        Err(e) => failed("reboot", e, failures),
    }
    progress(f, data, failures);

    match build(spec(
        "jobs2",
        &["main", "reboot"],
        "cache-jobs",
        "out-jobs",
        true,
    )) {
        Ok(b) => {
            f.jobs[index] = b.secs();
            record("jobs2", &b, f, data);
        }
        Err(e) => failed("jobs2", e, failures),
    }
    progress(f, data, failures);
    eprintln!(
        "bench packer: pair {index}: packer {:.1}s, cold {:.1}s, warm {:.1}s, rebuild {:.1}s, reboot build {:.1}s (reboot {:.1}s, first boot {:.1}s), jobs2 {:.1}s",
        f.packer[index],
        f.cold[index],
        f.warm[index],
        f.rebuild[index],
        f.reboot_build[index],
        f.reboot[index],
        f.first_boot[index],
        f.jobs[index],
    );
}

/// The rebuild row's edit of step 02 (the last-but-one step) in the pair's scripts.
fn edit_step(pair_dir: &Path) -> Result<()> {
    super::edit_script(&pair_dir.join("steps").join(STEP_TO_EDIT), ORIGINAL, EDITED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(dir: &Path) -> TemplateVars {
        TemplateVars {
            disk_image: dir.join("base \"odd\".qcow2"),
            checksum: "sha256:00".into(),
            output_dir: dir.join("packer-out"),
            seed_dir: dir.join("seed"),
            ssh_key: dir.join("key"),
            steps_dir: dir.join("steps"),
            cleanup: dir.join("steps/99-cleanup.sh"),
        }
    }

    #[test]
    fn the_template_renders_to_the_fixture_settings() {
        let dir = Path::new("/tmp/x");
        let text = render_template(TEMPLATE, &vars(dir)).unwrap();
        assert!(
            !text.contains("@DISK_IMAGE@") && !text.contains("@STEPS_DIR@"),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        let b = &v["builders"][0];
        assert_eq!(b["iso_url"], json!("/tmp/x/base \"odd\".qcow2"));
        assert_eq!(b["iso_checksum"], json!("sha256:00"));
        assert_eq!(b["disk_image"], json!(true));
        assert_eq!(b["format"], json!("raw"));
        assert_eq!(b["accelerator"], json!("tcg"));
        assert_eq!(
            (b["cpus"].clone(), b["memory"].clone()),
            (json!(2), json!(1024))
        );
        assert_eq!(b["cd_label"], json!("cidata"));
        assert_eq!(
            b["cd_files"],
            json!(["/tmp/x/seed/user-data", "/tmp/x/seed/meta-data"])
        );
        assert_eq!(
            template_scripts(&text).unwrap(),
            [
                "/tmp/x/steps/01-apt.sh",
                "/tmp/x/steps/02-modprobe-firmware.sh",
                "/tmp/x/steps/99-cleanup.sh"
            ]
        );
    }

    #[test]
    fn placeholders_are_found_anywhere() {
        assert_eq!(placeholders("a @B_C@ x@y@z @D@"), ["@B_C@", "@D@"]);
        assert!(placeholders("user@host, @@").is_empty());
    }

    #[test]
    fn a_placeholder_without_a_value_is_an_error() {
        let template = r#"{"builders": [{"iso_url": "@DISK_IMAGE@", "x": "@NEW_THING@"}], "provisioners": []}"#;
        let err = render_template(template, &vars(Path::new("/tmp/x"))).unwrap_err();
        assert!(err.to_string().contains("@NEW_THING@"), "{err}");
        assert!(render_template("{", &vars(Path::new("/tmp/x"))).is_err());
    }

    #[test]
    fn the_recipes_match_the_template() {
        // Same machine on both sides: 2 vCPU, 1 GiB, 4 GiB disk, TCG.
        for text in [RECIPE, REBOOT_RECIPE] {
            for line in [
                "  cpus: 2\n",
                "  memory: 1G\n",
                "  disk_size: 4G\n",
                "  accel: tcg\n",
            ] {
                assert!(text.contains(line), "missing {line:?} in\n{text}");
            }
        }
        let t: Value = serde_json::from_str(TEMPLATE).unwrap();
        assert_eq!(t["builders"][0]["disk_size"], json!("4096M"));
        assert!(REBOOT_RECIPE.contains("    reboot: true\n"));
    }

    #[test]
    fn recipes_render_with_absolute_paths_and_a_new_name() {
        let text = render_recipe(
            RECIPE,
            Path::new("/src"),
            Path::new("/tgt"),
            "warm-steps",
            "packer-bench-warm",
        )
        .unwrap();
        assert!(text.contains("name: packer-bench-warm\n"), "{text}");
        assert!(
            text.contains("url: /tgt/fixture/debian-bookworm.qcow2\n"),
            "{text}"
        );
        assert!(!text.contains("../"), "{text}");
        assert_eq!(
            recipe_scripts(&text),
            [
                "warm-steps/01-apt.sh",
                "warm-steps/02-modprobe-firmware.sh",
                "/src/recipes/scripts/99-cleanup.sh"
            ]
        );
        let reboot = render_recipe(
            REBOOT_RECIPE,
            Path::new("/src"),
            Path::new("/tgt"),
            "steps",
            REBOOT_NAME,
        )
        .unwrap();
        assert_eq!(recipe_scripts(&reboot)[1], "steps/02-modprobe-firmware.sh");
        assert!(render_recipe("steps: []\n", Path::new("/"), Path::new("/"), "s", "n").is_err());
    }

    #[test]
    fn a_pair_directory_has_the_same_scripts_for_both_tools() {
        let work = tempfile::tempdir().unwrap();
        let root = crate::project_root();
        let bench = Bench {
            imgbake: PathBuf::from("/nonexistent"),
            work: work.path().to_path_buf(),
            logs: work.path().to_path_buf(),
            runs: 1,
        };
        let setup = Setup {
            cleanup: root.join("recipes/scripts/99-cleanup.sh"),
            target: PathBuf::from("/tgt"),
            fixture: PathBuf::from("/tgt/fixture/debian-bookworm.qcow2"),
            checksum: "sha256:00".into(),
            root,
        };
        let pair = prepare_pair(&bench, &setup, 1).unwrap();
        let step =
            |dir: &str, name: &str| std::fs::read_to_string(pair.dir.join(dir).join(name)).unwrap();
        assert!(step("steps", STEP_TO_EDIT).contains(ORIGINAL));
        assert!(step("steps", "99-cleanup.sh").contains("cloud-init clean"));
        assert_ne!(step("steps", "01-apt.sh"), step("warm-steps", "01-apt.sh"));
        let user_data = std::fs::read_to_string(pair.dir.join("seed/user-data")).unwrap();
        assert!(
            user_data.starts_with("#cloud-config\n") && user_data.contains("ssh-ed25519 "),
            "{user_data}"
        );
        let warm = std::fs::read_to_string(&pair.warm_recipe).unwrap();
        assert!(warm.contains("  - warm-steps/99-cleanup.sh\n"), "{warm}");
        assert!(pair.reboot_recipe.is_file() && pair.template.is_file());
    }

    #[test]
    fn proc_status_gives_a_peak_rss() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(vm_hwm_kb(&status).is_some_and(|kb| kb > 0));
        assert_eq!(vm_hwm_kb("VmHWM:\t   1234 kB\n"), Some(1234));
        assert_eq!(vm_hwm_kb("Name: x\n"), None);
    }

    #[test]
    fn events_give_the_reboot_time_and_restores() {
        let e = |t: f64, name: &str| (t, json!({ "event": name }));
        let events = [
            e(1.0, "vm_started"),
            e(60.0, "step_started"),
            e(100.0, "rebooting"),
            e(130.0, "rebooted"),
            e(170.0, "step_started"),
        ];
        assert_eq!(reboot_secs(&events), Some(70.0));
        assert_eq!(reboot_secs(&events[..2]), None);
        assert!(!restored_state(&events, &json!({ "first_step_secs": 3.0 })));
        assert!(restored_state(&[e(2.0, "state_restored")], &Value::Null));
        assert!(restored_state(&events, &json!({ "restored_state": "abc" })));
        assert!(!restored_state(&events, &json!({ "restored_state": null })));
        assert!(!restored_state(
            &events,
            &json!({ "restored_state": false })
        ));
        assert!(!restored_state(
            &[e(2.0, "state_restored_failed")],
            &Value::Null
        ));
    }

    #[test]
    fn rows_compare_medians_and_keep_pair_ratios() {
        let f = Figures {
            packer: vec![100.0, 120.0, 110.0],
            cold: vec![80.0, 90.0, 70.0],
            warm: vec![40.0, 50.0, 45.0],
            rebuild: vec![10.0, 12.0, 11.0],
            reboot_build: vec![150.0, 150.0, 150.0],
            reboot: vec![60.0, 66.0, 63.0],
            first_boot: vec![60.0, 60.0, 60.0],
            jobs: vec![160.0, 170.0, 150.0],
            restore_to_first_step: vec![],
            peak_rss_kb: 50_000,
            peak_rss_run: "the jobs2 build of pair 0".into(),
        };
        let rows = rows(&f, 3, "Packer v1.6.6");
        let by = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
        assert!((by("packer-cold").value - 80.0 / 110.0).abs() < 1e-9);
        assert_eq!(by("packer-cold").status(), "met");
        assert_eq!(by("packer-warm").status(), "met");
        assert!(
            by("packer-cold").detail.contains("0.80, 0.75, 0.64"),
            "{}",
            by("packer-cold").detail
        );
        assert_eq!(by("packer-rebuild").status(), "met");
        assert!((by("packer-reboot").value - 1.05).abs() < 1e-9);
        assert_eq!(by("packer-restore").status(), "n/a");
        assert_eq!(by("packer-jobs2").status(), "-");
        assert!((by("packer-jobs2").value - 160.0 / 230.0).abs() < 1e-9);
        assert!((by("packer-rss").value - 51.2).abs() < 1e-9);
        assert_eq!(by("packer-rss").status(), "met");
        // A row missing from every pair is NaN, never a panic.
        let empty = super::rows(&Figures::default(), 0, "Packer");
        assert!(empty.iter().any(|r| !r.measured()));
    }
}
