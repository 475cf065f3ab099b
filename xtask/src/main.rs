//! Project automation: `cargo xtask <command>` (see `cargo xtask help`).
//!
//! CI (`.ci/run`) and the README call exactly these commands, so what a developer runs locally
//! is what CI runs.

mod bench;
mod demo;
mod deps;
mod e2e;
mod e2e_traps;
mod fixture;
mod nvidia_bytes;
mod test;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

const HELP: &str = "\
cargo xtask <command>

commands:
  deps [--install]   check the system packages imgbake needs; --install apt-gets the missing ones
  fixture            build the Debian fixture guest (target/fixture/debian-bookworm.qcow2)
  test               deps + fixture + fmt + clippy + the whole test suite, as CI runs it
  bench [NAME...] [--runs N] [--checkpoint-runs N]
                     speed goals as ratios against a baseline (checkpoint, export, verify,
                     fetch); prints a table, writes target/bench/report.json;
                     `bench packer` (only when named): imgbake vs Packer 1.6.6 head to head
                     (cold, warm, rebuild, reboot, --jobs 2, imgbake's peak RSS)
  demo               deps, fixture, then build and verify the fixture smoke recipe
                     into output/fixture-smoke/
  e2e nvidia [--open] [--traps] [--cache-dir DIR] [--output DIR] [--var NAME=VALUE]...
                     slow, never in CI: bake fixtures/recipes/nvidia-debian[-open].yaml (a real
                     NVIDIA 535 driver, DKMS under TCG, ~1 h) with checkpoints in
                     target/e2e-cache, verify the RAW, print wall times; --traps then breaks
                     copies of it (module, firmware) and checks verify exits 6 on each
  nvidia-bytes [--mirror URI]
                     real NVIDIA bytes for the inspection tests: firmware-nvidia-gsp unpacked
                     and nvidia.ko built on this host for the fixture kernel, cached in
                     target/nvidia-bytes/<key>/ (target/nvidia-bytes/current)
";

fn main() -> std::process::ExitCode {
    // Print the error chain once, without anyhow's backtrace (RUST_BACKTRACE is often set).
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "help".to_owned());
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "deps" => deps::run(rest.iter().any(|a| a == "--install")),
        "fixture" => fixture::run(&rest).map(|_| ()),
        "test" => test::run(&rest),
        "bench" => bench::run(&rest),
        "demo" => demo::run(&rest),
        "e2e" => e2e::run(&rest),
        "nvidia-bytes" => nvidia_bytes::run(&rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown xtask command `{other}`\n\n{HELP}"),
    }
}

/// `CARGO_TARGET_DIR` when set (several checkouts may share one), else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The workspace root, from xtask's own manifest location.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
