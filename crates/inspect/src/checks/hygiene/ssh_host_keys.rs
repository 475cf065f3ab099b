//! `hygiene/ssh-host-keys`: no `/etc/ssh/ssh_host_*`; every instance would share them.

use super::{Rule, judge};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::report::Check;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let keys: Vec<String> = cx
        .image
        .fs
        .list("/etc/ssh")?
        .into_iter()
        .filter(|e| e.name.starts_with("ssh_host_"))
        .map(|e| format!("/etc/ssh/{}", e.name))
        .collect();
    let rule = Rule {
        id: CheckId::HygieneSshHostKeys,
        clean: "no SSH host keys",
        dirty: "SSH host keys left in the image",
    };
    Ok(judge(cx, rule, keys))
}
