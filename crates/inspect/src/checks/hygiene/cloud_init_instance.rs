//! `hygiene/cloud-init-instance`: no `/var/lib/cloud/instance` nor `/var/lib/cloud/instances/*`;
//! else cloud-init treats the first boot as already done (and the build's user-data is there).

use super::{Rule, judge};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::report::Check;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let fs = &cx.image.fs;
    let mut cloud = Vec::new();
    if fs.exists_no_follow("/var/lib/cloud/instance")? {
        cloud.push("/var/lib/cloud/instance".to_string());
    }
    for e in fs.list("/var/lib/cloud/instances")? {
        cloud.push(format!("/var/lib/cloud/instances/{}", e.name));
    }
    let rule = Rule {
        id: CheckId::HygieneCloudInitInstance,
        clean: "no cloud-init instance state",
        dirty: "cloud-init instance state left (run `cloud-init clean`)",
    };
    Ok(judge(cx, rule, cloud))
}
