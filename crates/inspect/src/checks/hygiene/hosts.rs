//! `hygiene/hosts`: the build VM's hostname (the recipe name made RFC 1123) is not in
//! `/etc/hosts`; cloud-init's `manage_etc_hosts` writes it there during the build, and every
//! instance would resolve its own name to the build's entry. Passes when no build hostname is
//! known.

use super::{Rule, judge};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::report::Check;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let mut found = Vec::new();
    if let Some(host) = cx
        .expect
        .build_hostname
        .as_deref()
        .filter(|h| !h.is_empty())
        && let Some(text) = cx.image.fs.read_text("/etc/hosts")?
    {
        for (n, line) in text.lines().enumerate() {
            let body = line.split('#').next().unwrap_or("");
            if body.split_whitespace().skip(1).any(|name| {
                name.eq_ignore_ascii_case(host)
                    || name
                        .split('.')
                        .next()
                        .is_some_and(|s| s.eq_ignore_ascii_case(host))
            }) {
                found.push(format!("/etc/hosts:{} {}", n + 1, line.trim()));
            }
        }
    }
    let rule = Rule {
        id: CheckId::HygieneHosts,
        clean: "no build hostname in /etc/hosts",
        dirty: "the build hostname is left in /etc/hosts (fix: remove the line in the cleanup step)",
    };
    Ok(judge(cx, rule, found))
}
