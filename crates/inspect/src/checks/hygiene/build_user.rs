//! `hygiene/build-user`: the user the build logged in as is neither in `/etc/passwd` nor has a
//! `/home/<user>`.

use super::{Rule, judge};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::report::Check;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let fs = &cx.image.fs;
    let build_user = cx.expect.build_user.as_str();
    let mut user = Vec::new();
    if let Some(passwd) = fs.read_text("/etc/passwd")? {
        for (n, line) in passwd.lines().enumerate() {
            if line.split(':').next() == Some(build_user) {
                user.push(format!("/etc/passwd:{} {line}", n + 1));
            }
        }
    }
    if fs.exists_no_follow(&format!("/home/{build_user}"))? {
        user.push(format!("/home/{build_user}"));
    }
    let clean = format!("no build user `{build_user}`");
    let dirty = format!("build user `{build_user}` left in the image");
    let rule = Rule {
        id: CheckId::HygieneBuildUser,
        clean: &clean,
        dirty: &dirty,
    };
    Ok(judge(cx, rule, user))
}
