//! `cargo xtask e2e nvidia [--open] [--cache-dir DIR] [--output DIR]`: the slow end-to-end
//! scenarios, never part of `cargo xtask test` or CI.
//!
//! `nvidia` bakes `fixtures/recipes/nvidia-debian.yaml` (or `nvidia-debian-open.yaml` with
//! `--open`) on the fixture guest under TCG: a real NVIDIA 535 driver built by DKMS inside the
//! guest (about 50 minutes of the hour the build takes here), the real GSP firmware package and
//! `NVreg_EnableGpuFirmware=1`; then `imgbake verify` on the exported RAW with the recipe's
//! expectations. Checkpoints go to `target/e2e-cache/` (or `--cache-dir`) and persist between
//! runs, so a rerun after editing a step after the driver restarts from the driver's layer, and
//! the open variant starts from the proprietary one's checkpoint after step 02 (both recipes
//! have the same steps and vars up to there). Prints the wall time of the build, of each step
//! (from the build's run.json) and of the verify.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::project_root;

const USAGE: &str = "usage: cargo xtask e2e nvidia [--open] [--traps] [--cache-dir DIR] [--output DIR] [--var NAME=VALUE]...";

/// `imgbake`'s exit code when the build's own verify found a problem (the RAW is kept as
/// `<name>.raw.failed`).
pub(crate) const VERIFY_FAILED: i32 = 6;

#[derive(Debug, PartialEq)]
struct Options {
    open: bool,
    /// After a passing verify, break copies of the image (`e2e_traps`).
    traps: bool,
    cache_dir: Option<PathBuf>,
    output: Option<PathBuf>,
    vars: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("nvidia") => {}
        Some(other) => bail!("unknown e2e scenario `{other}`\n  {USAGE}"),
        None => bail!("which scenario?\n  {USAGE}"),
    }
    let mut opts = Options {
        open: false,
        traps: false,
        cache_dir: None,
        output: None,
        vars: Vec::new(),
    };
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| -> Result<String> {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value\n  {USAGE}"))
        };
        match arg.as_str() {
            "--open" => opts.open = true,
            "--traps" => opts.traps = true,
            "--cache-dir" => opts.cache_dir = Some(value("--cache-dir")?.into()),
            "--output" => opts.output = Some(value("--output")?.into()),
            "--var" => opts.vars.push(value("--var")?),
            other => bail!("unknown e2e option `{other}`\n  {USAGE}"),
        }
    }
    Ok(opts)
}

/// The recipe and the output subdirectory of a variant. Both recipes share one image name (it
/// is the build guest's hostname, which every checkpoint key covers), so the variants get
/// separate output directories.
fn variant(open: bool) -> (&'static str, &'static str) {
    if open {
        ("fixtures/recipes/nvidia-debian-open.yaml", "open")
    } else {
        ("fixtures/recipes/nvidia-debian.yaml", "proprietary")
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let root = project_root();
    let target = crate::target_dir(&root);
    let (recipe, flavour) = variant(opts.open);
    let cache = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| target.join("e2e-cache"));
    let output = opts
        .output
        .clone()
        .unwrap_or_else(|| target.join("e2e").join(format!("nvidia-{flavour}")));

    step("checking system packages");
    crate::deps::run(false)?;
    step("building the fixture guest (reused when up to date)");
    crate::fixture::run(&[])?;

    step("building the release imgbake");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "--release", "--quiet", "-p", "imgbake"])
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p imgbake failed");
    }
    let imgbake = target.join("release/imgbake");

    step(&format!(
        "baking {recipe} under TCG (the DKMS build alone takes ~50 min here); checkpoints in {}",
        cache.display()
    ));
    let mut bake = Command::new(&imgbake);
    bake.current_dir(&root)
        .arg("recipe")
        .arg(recipe)
        .args(["--accel", "tcg", "--cache-dir"])
        .arg(&cache)
        .arg("--output")
        .arg(&output);
    for var in &opts.vars {
        bake.args(["--var", var]);
    }
    let started = Instant::now();
    let status = bake.status().context("run imgbake recipe")?;
    let build_time = started.elapsed();
    // The build verifies its own export; a verify failure still leaves the RAW to look at, and
    // the verify below shows why.
    if !status.success() && status.code() != Some(VERIFY_FAILED) {
        bail!(
            "imgbake recipe {recipe} failed ({status}) after {}; rerun to continue from the last checkpoint",
            secs(build_time)
        );
    }

    let raw = find_raw(&output)?;
    step(&format!("verifying {} offline", raw.display()));
    let started = Instant::now();
    let verified = verify_command(&imgbake, &root, &raw, recipe, &opts.vars)
        .status()
        .context("run imgbake verify")?;
    let verify_time = started.elapsed();

    println!();
    println!("e2e nvidia ({flavour}): {}", output.display());
    print_steps(&output.join("run.json"));
    println!("  {:<34} {:>9}", "build (imgbake recipe)", secs(build_time));
    println!(
        "  {:<34} {:>9}",
        "verify (imgbake verify)",
        secs(verify_time)
    );
    if !verified.success() {
        bail!("imgbake verify {} failed ({verified})", raw.display());
    }
    if opts.traps {
        crate::e2e_traps::run(&crate::e2e_traps::TrapRun {
            imgbake: &imgbake,
            root: &root,
            recipe,
            raw: &raw,
            vars: &opts.vars,
        })?;
    }
    Ok(())
}

/// `imgbake verify RAW --recipe RECIPE [--var …]`, run from the project root (the recipe's
/// expectations, as the build's own verify uses them).
pub(crate) fn verify_command(
    imgbake: &Path,
    root: &Path,
    raw: &Path,
    recipe: &str,
    vars: &[String],
) -> Command {
    let mut verify = Command::new(imgbake);
    verify
        .current_dir(root)
        .arg("verify")
        .arg(raw)
        .arg("--recipe")
        .arg(recipe);
    for var in vars {
        verify.args(["--var", var]);
    }
    verify
}

/// The one `*.raw` in the build's output directory (or `*.raw.failed`, what a build whose own
/// verify failed leaves).
fn find_raw(output: &Path) -> Result<PathBuf> {
    let mut raws: Vec<PathBuf> = std::fs::read_dir(output)
        .with_context(|| format!("list {}", output.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".raw") || n.ends_with(".raw.failed"))
        })
        .collect();
    match raws.len() {
        1 => Ok(raws.remove(0)),
        0 => bail!("the build wrote no .raw into {}", output.display()),
        _ => bail!(
            "more than one .raw in {}: {raws:?}; remove the stale ones",
            output.display()
        ),
    }
}

/// One line per step from run.json (read loosely: it is only printed).
fn print_steps(run_json: &Path) {
    let Ok(text) = std::fs::read_to_string(run_json) else {
        println!("  (no {})", run_json.display());
        return;
    };
    let Ok(run) = serde_json::from_str::<serde_json::Value>(&text) else {
        println!("  ({} is not JSON)", run_json.display());
        return;
    };
    if let Some(ssh) = run["ssh_ready_secs"].as_f64() {
        println!("  {:<34} {:>8.1}s", "first boot: ssh ready", ssh);
    }
    for step in run["steps"].as_array().into_iter().flatten() {
        let name = step["name"].as_str().unwrap_or("?");
        let status = step["status"].as_str().unwrap_or("?");
        let duration = step["duration_secs"].as_f64().unwrap_or(0.0);
        println!("  {:<34} {:>8.1}s  {status}", name, duration);
    }
    if let Some(total) = run["total_secs"].as_f64() {
        println!("  {:<34} {:>8.1}s", "run.json total", total);
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn step(what: &str) {
    eprintln!("==> e2e: {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_the_nvidia_scenario_and_its_options() {
        let o = parse_args(&args(&["nvidia"])).unwrap();
        assert_eq!(
            o,
            Options {
                open: false,
                traps: false,
                cache_dir: None,
                output: None,
                vars: vec![],
            }
        );
        let o = parse_args(&args(&[
            "nvidia",
            "--open",
            "--traps",
            "--cache-dir",
            "/c",
            "--output",
            "/o",
            "--var",
            "nvidia_enable_gpu_firmware=17",
        ]))
        .unwrap();
        assert!(o.open && o.traps);
        assert_eq!(o.cache_dir, Some(PathBuf::from("/c")));
        assert_eq!(o.output, Some(PathBuf::from("/o")));
        assert_eq!(o.vars, vec!["nvidia_enable_gpu_firmware=17".to_owned()]);
    }

    #[test]
    fn rejects_unknown_scenarios_and_options() {
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&["smoke"])).is_err());
        assert!(parse_args(&args(&["nvidia", "--fast"])).is_err());
        assert!(parse_args(&args(&["nvidia", "--cache-dir"])).is_err());
    }

    #[test]
    fn variants_name_existing_recipes() {
        for open in [false, true] {
            let (recipe, _) = variant(open);
            assert!(project_root().join(recipe).is_file(), "{recipe} missing");
        }
    }
}
