//! `hygiene/machine-id`: `/etc/machine-id` exists and is empty (or `uninitialized`), and no
//! regular non-empty `/var/lib/dbus/machine-id`; else instances share an id and a DHCP client
//! id. An absent `/etc/machine-id` is dirty too: systemd then does not treat the boot as a
//! first boot (no `ConditionFirstBoot` units, no preset) and may fail to write one on a
//! read-only root.

use super::{Rule, judge, non_empty};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::report::Check;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let fs = &cx.image.fs;
    let mut ids = Vec::new();
    match fs.read_text("/etc/machine-id")? {
        Some(id) => {
            let id = id.trim();
            if !id.is_empty() && id != "uninitialized" {
                ids.push(format!(
                    "/etc/machine-id = {id} (fix: truncate it: `: > /etc/machine-id`)"
                ));
            }
        }
        None => ids.push(
            "/etc/machine-id is absent: systemd does not treat the boot as a first boot (fix: create it empty: `: > /etc/machine-id`)"
                .to_string(),
        ),
    }
    if fs.read_link("/var/lib/dbus/machine-id")?.is_none()
        && non_empty(fs, "/var/lib/dbus/machine-id")?
    {
        ids.push("/var/lib/dbus/machine-id is a non-empty file".to_string());
    }
    let rule = Rule {
        id: CheckId::HygieneMachineId,
        clean: "machine-id empty",
        dirty: "/etc/machine-id is not an empty file",
    };
    Ok(judge(cx, rule, ids))
}
