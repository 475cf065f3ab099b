//! `cargo xtask bench [NAME...] [--runs N]`: the speed goals of issues 5, 6 and 7, each measured
//! against a baseline run alongside it on this machine, printed as a table and written to
//! `target/bench/report.json`.
//!
//! | bench | what | baseline | goal |
//! |---|---|---|---|
//! | `checkpoint` | rebuild of the fixture smoke recipe after editing step 05 | the full build | ≤ 0.25 |
//! | `export` | `imgbake export` throughput | `qemu-img convert -O raw` of the same qcow2 | ≥ 0.95 |
//! | `verify` | `imgbake verify` wall time on a 25 GB sparse RAW | (absolute) | < 1 s |
//! | `fetch` | `imgbake fetch` throughput from 127.0.0.1 (hash on the fly) | `curl -o` | ≥ 0.9 |
//! | `packer` | cold, warm, rebuild, reboot, `--jobs 2`, peak RSS (issue 14; see [`packer`]) | Packer 1.6.6 on the same guest and steps | cold ≤ 0.75, warm ≤ 0.45, … |
//!
//! Timings use the release binary (`cargo build --release -p imgbake`). Short benches are run
//! `--runs` times (default 3, alternating with their baseline) and report medians; the checkpoint
//! bench boots a guest under TCG and runs once unless `--runs` says otherwise. A missed goal is
//! reported, never an error: nothing here asserts on time. Work files go to `target/bench/work/`
//! (removed afterwards); the logs of every command stay in `target/bench/logs/`. (`target` is
//! `CARGO_TARGET_DIR` when set.)
//!
//! `packer` is not part of a bare `cargo xtask bench`: it boots about seven TCG guests per pair
//! (roughly half an hour on a 2-core machine) and needs Debian's `packer` package, which it
//! installs when missing. Name it: `cargo xtask bench packer --runs 3`.

mod checkpoint;
mod export;
mod fetch;
mod packer;
mod report;
mod verify;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::{project_root, target_dir};
pub use report::{Goal, Measurement};

const USAGE: &str = "usage: cargo xtask bench [checkpoint|export|verify|fetch|packer ...] [--runs N] [--checkpoint-runs N]";

/// Every bench a bare `cargo xtask bench` runs, in order.
const ALL: &[&str] = &["export", "verify", "fetch", "checkpoint"];
/// Benches that run only when named (long, or with dependencies of their own).
const ON_REQUEST: &[&str] = &["packer"];

#[derive(Debug, PartialEq)]
struct Options {
    names: Vec<String>,
    runs: usize,
    checkpoint_runs: usize,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        names: Vec::new(),
        runs: 3,
        checkpoint_runs: 1,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut count = |flag: &str| -> Result<usize> {
            let n: usize = it
                .next()
                .with_context(|| format!("{flag} needs a number\n  {USAGE}"))?
                .parse()
                .with_context(|| format!("{flag} needs a number\n  {USAGE}"))?;
            ensure!(n >= 1, "{flag} must be at least 1");
            Ok(n)
        };
        match arg.as_str() {
            "--runs" => opts.runs = count("--runs")?,
            "--checkpoint-runs" => opts.checkpoint_runs = count("--checkpoint-runs")?,
            name if ALL.contains(&name) || ON_REQUEST.contains(&name) => {
                opts.names.push(name.to_owned())
            }
            other => bail!("unknown bench or option `{other}`\n  {USAGE}"),
        }
    }
    if opts.names.is_empty() {
        opts.names = ALL.iter().map(|s| (*s).to_owned()).collect();
    }
    Ok(opts)
}

/// Shared state of one `cargo xtask bench` invocation.
pub struct Bench {
    /// The release `imgbake` binary.
    pub imgbake: PathBuf,
    /// Scratch space for one bench (`target/bench/work/<name>`), emptied before and after.
    pub work: PathBuf,
    /// Where command logs go (`target/bench/logs`).
    pub logs: PathBuf,
    /// Repetitions for short benches.
    pub runs: usize,
}

impl Bench {
    /// Runs `cmd` to completion with its output in `logs/<log>.log`; returns its wall time.
    /// Fails (quoting the log's tail) unless it exits with one of `ok_codes`.
    pub fn time(&self, log: &str, cmd: &mut Command, ok_codes: &[i32]) -> Result<Duration> {
        let log_path = self.logs.join(format!("{log}.log"));
        let out =
            File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let started = Instant::now();
        let status = cmd
            .status()
            .with_context(|| format!("run {:?}", cmd.get_program()))?;
        let took = started.elapsed();
        if !status.code().is_some_and(|c| ok_codes.contains(&c)) {
            bail!(
                "{:?} failed ({status}); last lines of {}:\n{}",
                cmd,
                log_path.display(),
                tail(&log_path, 20)
            );
        }
        Ok(took)
    }

    /// `imgbake` with the given arguments, coloured output off.
    pub fn imgbake(&self) -> Command {
        let mut cmd = Command::new(&self.imgbake);
        cmd.env("NO_COLOR", "1");
        cmd
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The median of some durations (the upper one for an even count).
pub fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// A rebuild row's edit of one step script: `original` becomes `edited`, or an error if the
/// script no longer holds `original` (the bench would then measure no edit at all).
pub fn edit_script(script: &Path, original: &str, edited: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(script).with_context(|| format!("read {}", script.display()))?;
    ensure!(
        text.contains(original),
        "{} no longer contains `{original}`; update the bench's edit",
        script.display()
    );
    std::fs::write(script, text.replace(original, edited))
        .with_context(|| format!("write {}", script.display()))?;
    Ok(())
}

/// `sync`: no dirty pages of one run slow down the next.
pub fn settle() -> Result<()> {
    let status = Command::new("sync").status().context("run sync")?;
    ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let root = project_root();
    for tool in ["qemu-img", "curl", "sfdisk"] {
        ensure!(
            which(tool),
            "`{tool}` is not installed\n  try: cargo xtask deps --install"
        );
    }
    eprintln!("bench: building the release binary (cargo build --release -p imgbake)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--release", "--quiet", "-p", "imgbake"])
        .status()
        .context("run cargo build")?;
    ensure!(status.success(), "cargo build --release -p imgbake failed");

    let target = target_dir(&root);
    let out_dir = target.join("bench");
    let logs = out_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut results = Vec::new();
    for name in &opts.names {
        let work = out_dir.join("work").join(name);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let bench = Bench {
            imgbake: target.join("release/imgbake"),
            work: work.clone(),
            logs: logs.clone(),
            runs: opts.runs,
        };
        eprintln!("bench: {name}");
        let measured = match name.as_str() {
            "checkpoint" => checkpoint::run(&bench, opts.checkpoint_runs).map(|m| vec![m]),
            "export" => export::run(&bench).map(|m| vec![m]),
            "verify" => verify::run(&bench).map(|m| vec![m]),
            "fetch" => fetch::run(&bench).map(|m| vec![m]),
            "packer" => packer::run(&bench),
            _ => unreachable!("parse_args only accepts known names"),
        };
        let _ = std::fs::remove_dir_all(&work);
        for m in measured.with_context(|| format!("bench {name}"))? {
            eprintln!("bench: {}: {}", m.name, m.detail);
            results.push(m);
        }
    }
    print!("{}", report::table(&results));
    let path = out_dir.join("report.json");
    report::write_json(&path, &results)?;
    println!("report: {}", path.display());
    Ok(())
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn no_names_means_every_bench() {
        let opts = parse_args(&[]).unwrap();
        assert_eq!(opts.names, ALL);
        assert_eq!((opts.runs, opts.checkpoint_runs), (3, 1));
    }

    #[test]
    fn names_and_counts_are_parsed() {
        let opts = parse_args(&args(&["fetch", "--runs", "5", "verify"])).unwrap();
        assert_eq!(opts.names, ["fetch", "verify"]);
        assert_eq!(opts.runs, 5);
    }

    #[test]
    fn packer_runs_only_when_named() {
        assert!(
            !parse_args(&[])
                .unwrap()
                .names
                .contains(&"packer".to_owned())
        );
        let opts = parse_args(&args(&["packer", "--runs", "1"])).unwrap();
        assert_eq!(opts.names, ["packer"]);
        assert_eq!(opts.runs, 1);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(parse_args(&args(&["nope"])).is_err());
        assert!(parse_args(&args(&["--runs"])).is_err());
        assert!(parse_args(&args(&["--runs", "0"])).is_err());
        assert!(parse_args(&args(&["--runs", "x"])).is_err());
    }

    #[test]
    fn median_takes_the_middle() {
        let d = Duration::from_secs;
        assert_eq!(median(&[d(3), d(1), d(2)]), d(2));
        assert_eq!(median(&[d(5)]), d(5));
    }
}
