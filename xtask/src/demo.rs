//! `cargo xtask demo`: imgbake's main job on a new machine, start to finish.
//!
//! 1. `deps`: installs missing system packages when run as root; otherwise stops and says what
//!    to run as root.
//! 2. `fixture`: builds (or reuses) the Debian fixture guest.
//! 3. builds imgbake, then `imgbake recipe fixtures/recipes/smoke.yaml --accel auto` into
//!    `output/fixture-smoke/`, with the default cache (`$XDG_CACHE_HOME/imgbake`, or
//!    `IMGBAKE_CACHE_DIR`), so a second demo reuses every checkpoint;
//! 4. `imgbake verify` of the RAW image with the recipe's expectations;
//! 5. prints where the outputs are.

use std::path::Path;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::project_root;

const RECIPE: &str = "fixtures/recipes/smoke.yaml";
const NAME: &str = "fixture-smoke";

pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("unknown demo option `{arg}`\n  usage: cargo xtask demo");
    }
    let root = project_root();
    step("checking system packages");
    if let Err(e) = crate::deps::run(is_root()) {
        bail!(
            "{e:#}\n  the demo needs them; as root run `cargo xtask deps --install` \
             (it runs apt-get install, qemu-system-x86 first), then `cargo xtask demo` again"
        );
    }
    step("building the fixture guest (reused when up to date)");
    let fixture = crate::fixture::run(&[])?;

    let sh = Shell::new()?;
    sh.change_dir(&root);
    step("building imgbake");
    cmd!(sh, "cargo build --quiet -p imgbake")
        .run()
        .context("cargo build -p imgbake")?;
    let imgbake = root.join("target/debug/imgbake");
    let output = Path::new("output").join(NAME);

    step("baking the fixture smoke recipe (--accel auto: KVM if it works here, else TCG)");
    // The recipe lists a secret, SMOKE_SECRET: its step echoes it (masked in the output) and
    // writes its sha256 into the image. Secrets come from the environment or --secret-file.
    cmd!(
        sh,
        "{imgbake} recipe {RECIPE} --accel auto --output {output}"
    )
    .env("SMOKE_SECRET", "demo-secret-not-for-real-use")
    .run()
    .context("imgbake recipe failed; its message above says what to try")?;

    let raw = output.join(format!("{NAME}.raw"));
    step("verifying the exported RAW image offline");
    cmd!(sh, "{imgbake} verify {raw} --recipe {RECIPE}")
        .run()
        .context("imgbake verify reported a problem (see its table above)")?;

    let dir = root.join(&output);
    println!();
    println!("demo done. Outputs in {}:", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    files.sort();
    for file in files {
        println!("  {file}");
    }
    println!("fixture guest: {}", fixture.display());
    println!(
        "checkpoints and base cache: `{} cache ls`",
        imgbake.display()
    );
    println!(
        "boot the base yourself:     `{} boot {RECIPE}`",
        imgbake.display()
    );
    Ok(())
}

fn step(what: &str) {
    eprintln!("==> demo: {what}");
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
