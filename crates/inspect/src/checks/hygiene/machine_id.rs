//! `hygiene/machine-id`: `/etc/machine-id` empty (or `uninitialized`) and no regular non-empty
//! `/var/lib/dbus/machine-id`; else instances share an id and a DHCP client id.

use super::{Rule, judge, non_empty};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::report::Check;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let fs = &cx.image.fs;
    let mut ids = Vec::new();
    if let Some(id) = fs.read_text("/etc/machine-id")? {
        let id = id.trim();
        if !id.is_empty() && id != "uninitialized" {
            ids.push(format!("/etc/machine-id = {id}"));
        }
    }
    if fs.read_link("/var/lib/dbus/machine-id")?.is_none()
        && non_empty(fs, "/var/lib/dbus/machine-id")?
    {
        ids.push("/var/lib/dbus/machine-id is a non-empty file".to_string());
    }
    let rule = Rule {
        id: CheckId::HygieneMachineId,
        clean: "machine-id empty or absent",
        dirty: "a machine-id is set",
    };
    Ok(judge(cx, rule, ids))
}
