//! `hygiene/build-logs`: no non-empty `/var/log/cloud-init.log` or `cloud-init-output.log`
//! (the build's seed and step output).

use super::{Rule, judge, non_empty};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::report::Check;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let mut logs = Vec::new();
    for path in ["/var/log/cloud-init.log", "/var/log/cloud-init-output.log"] {
        if non_empty(&cx.image.fs, path)? {
            logs.push(path.to_string());
        }
    }
    let rule = Rule {
        id: CheckId::HygieneBuildLogs,
        clean: "no cloud-init/build logs",
        dirty: "cloud-init logs from the build left (run `cloud-init clean --logs`)",
    };
    Ok(judge(cx, rule, logs))
}
