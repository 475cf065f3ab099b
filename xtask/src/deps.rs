//! System packages imgbake and its tests need, checked (and optionally installed) in one place:
//! the list is `xtask/system-packages.txt`, which `.ci/run` reads too.

use std::path::Path;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

const LIST: &str = include_str!("../system-packages.txt");

/// Installed alone, before the rest (see the comment at the top of the list).
const FIRST: &str = "qemu-system-x86";

/// (package, a file it provides), in the list's order.
fn packages() -> impl Iterator<Item = (&'static str, &'static str)> {
    LIST.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(char::is_whitespace))
        .map(|(package, file)| (package, file.trim()))
}

fn missing() -> Vec<&'static str> {
    packages()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| package)
        .collect()
}

/// Checks the packages; with `install`, apt-gets what is missing (needs root).
pub fn run(install: bool) -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        println!("deps: all system packages present");
        return Ok(());
    }
    if !install {
        bail!(
            "missing system packages: {}\n  try: cargo xtask deps --install   (as root)",
            missing.join(" ")
        );
    }
    let sh = Shell::new()?;
    sh.set_var("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update").run().context("apt-get update")?;
    if missing.contains(&FIRST) {
        cmd!(sh, "apt-get install -y --no-install-recommends {FIRST}")
            .run()
            .context("apt-get install")?;
    }
    // Everything else by name, not only what was missing: installing qemu-system-x86 may have
    // removed qemu-utils.
    let rest: Vec<&str> = packages().map(|(p, _)| p).filter(|p| *p != FIRST).collect();
    cmd!(sh, "apt-get install -y --no-install-recommends {rest...}")
        .run()
        .context("apt-get install")?;
    let still = self::missing();
    if !still.is_empty() {
        bail!("still missing after install: {}", still.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_names_qemu_system_first() {
        let all: Vec<_> = packages().collect();
        assert_eq!(all.first().map(|(p, _)| *p), Some(FIRST));
        assert!(all.len() > 10);
        assert!(all.iter().all(|(_, file)| file.starts_with('/')));
    }
}
