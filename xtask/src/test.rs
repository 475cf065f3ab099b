//! `cargo xtask test`: the whole check, exactly as CI runs it.

use anyhow::Result;
use xshell::{Shell, cmd};

use crate::project_root;

pub fn run(_args: &[String]) -> Result<()> {
    crate::deps::run(is_root())?;
    let fixture = crate::fixture::run(&[])?;
    // The inspection tests read real NVIDIA bytes (Debian's GSP firmware and a module built for
    // the fixture kernel); made once, cached by the packages' digests.
    crate::nvidia_bytes::run(&[])?;
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    cmd!(sh, "cargo fmt --all --check").run()?;
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --quiet -- -D warnings"
    )
    .run()?;
    let _require = sh.push_env("IMGBAKE_REQUIRE_TOOLS", "1");
    let _fixture = sh.push_env("IMGBAKE_FIXTURE", &fixture);
    cmd!(sh, "cargo test --workspace").run()?;
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
