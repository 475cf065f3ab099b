//! `checkpoint` (issue 5): on the fixture smoke recipe, a full build from a fresh cache, then —
//! after editing the last-but-one step (05-after-reboot.sh; its new text is written into the
//! image) — a plain rerun, which reuses the checkpoints of 01–04 and runs 05 and 99 again.
//! The figure is rebuild time / full time (goal ≤ 0.25).
//!
//! The recipe and its scripts are copied to a scratch directory (so the edit never touches the
//! repository), with its `../../` paths made absolute so the copy still uses the fixture guest.
//! Both builds run under TCG (`--accel tcg`), so the guest's boot weighs heavily in both.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::{Bench, Goal, Measurement, median};
use crate::{project_root, target_dir};

const STEP_TO_EDIT: &str = "05-after-reboot.sh";
const ORIGINAL: &str = "${SMOKE_EDIT:-original}";
const EDITED: &str = "${SMOKE_EDIT:-edited by cargo xtask bench}";

/// The smoke recipe copied into `dir`; returns the copy's path.
fn copy_recipe(dir: &Path) -> Result<PathBuf> {
    let root = project_root();
    let recipes = root.join("fixtures/recipes");
    let text = std::fs::read_to_string(recipes.join("smoke.yaml")).context("read smoke.yaml")?;
    // The fixture lives in the target dir (CARGO_TARGET_DIR when set), the rest in the checkout.
    let text = text
        .replace(
            "../../target/",
            &format!("{}/", target_dir(&root).display()),
        )
        .replace("../../", &format!("{}/", root.display()));
    let recipe = dir.join("smoke.yaml");
    std::fs::write(&recipe, text)?;
    let scripts = dir.join("smoke");
    std::fs::create_dir_all(&scripts)?;
    for entry in std::fs::read_dir(recipes.join("smoke"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), scripts.join(entry.file_name()))?;
    }
    Ok(recipe)
}

/// The statuses of the steps in a build's `run.json`, as `(id, status)`.
fn step_statuses(output: &Path) -> Result<(Vec<(String, String)>, Value)> {
    let path = output.join("run.json");
    let run: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    )?;
    let steps = run["steps"]
        .as_array()
        .context("run.json has no steps")?
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_owned(),
                s["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    Ok((steps, run))
}

pub fn run(bench: &Bench, runs: usize) -> Result<Measurement> {
    let fixture = target_dir(&project_root()).join("fixture/debian-bookworm.qcow2");
    ensure!(
        fixture.is_file(),
        "the fixture guest is missing ({})\n  try: cargo xtask fixture",
        fixture.display()
    );
    let (mut full, mut rebuild) = (Vec::new(), Vec::new());
    let mut runs_data = Vec::new();
    for run in 0..runs {
        let dir = bench.work.join(format!("run-{run}"));
        std::fs::create_dir_all(&dir)?;
        let recipe = copy_recipe(&dir)?;
        let cache = dir.join("cache");
        let build = |label: &str, output: &Path| {
            bench.time(
                &format!("checkpoint-{label}-{run}"),
                bench
                    .imgbake()
                    .arg("recipe")
                    .arg(&recipe)
                    .args(["--accel", "tcg", "--json", "--cache-dir"])
                    .arg(&cache)
                    .arg("--output")
                    .arg(output)
                    // The smoke recipe's secret (step 01 uses it; keys cover its name only).
                    .env("SMOKE_SECRET", "bench-secret-value"),
                &[0],
            )
        };
        let full_out = dir.join("out-full");
        full.push(build("full", &full_out)?);
        let (_, full_run) = step_statuses(&full_out)?;

        super::edit_script(&dir.join("smoke").join(STEP_TO_EDIT), ORIGINAL, EDITED)?;

        let rebuild_out = dir.join("out-rebuild");
        rebuild.push(build("rebuild", &rebuild_out)?);
        let (statuses, rebuild_run) = step_statuses(&rebuild_out)?;
        let reused: Vec<&str> = statuses
            .iter()
            .filter(|(_, s)| s == "reused")
            .map(|(id, _)| id.as_str())
            .collect();
        ensure!(
            reused == ["01", "02", "03", "04"],
            "the rebuild should reuse steps 01-04 and rerun 05 and 99, but run.json says {statuses:?}"
        );
        runs_data.push(json!({
            "full_s": full[run].as_secs_f64(),
            "rebuild_s": rebuild[run].as_secs_f64(),
            "full_run": full_run,
            "rebuild_run": rebuild_run,
        }));
        // The build outputs and layers are gigabytes; drop them before the next run.
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (f, r) = (median(&full), median(&rebuild));
    let ratio = r.as_secs_f64() / f.as_secs_f64();
    let last = runs_data.last().cloned().unwrap_or(Value::Null);
    let boot = |which: &str| last[which]["first_step_secs"].as_f64().unwrap_or(f64::NAN);
    Ok(Measurement {
        name: "checkpoint",
        value: ratio,
        unit: "ratio",
        goal: Goal::AtMost(0.25),
        runs,
        detail: format!(
            "rebuild after editing step 05 {:.1}s (01-04 reused) / full build {:.1}s under TCG; QEMU start to first step: {:.1}s full, {:.1}s rebuild",
            r.as_secs_f64(),
            f.as_secs_f64(),
            boot("full_run"),
            boot("rebuild_run"),
        ),
        data: json!({
            "full_s": f.as_secs_f64(),
            "rebuild_s": r.as_secs_f64(),
            "accel": "tcg",
            "runs": runs_data,
        }),
    })
}
