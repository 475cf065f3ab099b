//! `hygiene/build-state`: nothing under `/var/lib/imgbake` (the build's step scripts and
//! state; the cleanup step removes it).

use super::{Rule, judge};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::imagefs::ImageFs;
use crate::report::Check;

const DIR: &str = "/var/lib/imgbake";

/// Every non-directory under `dir`, at most `limit` of them (a listing, not an inventory).
fn files_under(fs: &ImageFs, dir: &str, out: &mut Vec<String>, depth: usize) -> Result<()> {
    for e in fs.list(dir)? {
        if out.len() >= 20 {
            return Ok(());
        }
        let path = format!("{dir}/{}", e.name);
        if e.is_dir && depth < 8 {
            files_under(fs, &path, out, depth + 1)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let mut files = Vec::new();
    files_under(&cx.image.fs, DIR, &mut files, 0)?;
    let rule = Rule {
        id: CheckId::HygieneBuildState,
        clean: "no build state under /var/lib/imgbake",
        dirty: "build files left under /var/lib/imgbake (fix: rm -rf /var/lib/imgbake in the cleanup step)",
    };
    Ok(judge(cx, rule, files))
}
