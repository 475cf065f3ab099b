//! `cargo xtask fixture`: builds the Debian fixture guest. (Being written; see fixtures/README.md.)

use std::path::PathBuf;

use anyhow::{Result, bail};

pub fn run(_args: &[String]) -> Result<PathBuf> {
    bail!("fixture build not written yet")
}
