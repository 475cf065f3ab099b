//! `hygiene/authorized-keys`: no non-empty `authorized_keys`/`authorized_keys2` under
//! `/root/.ssh` or `/home/*/.ssh`.

use super::{Rule, judge, non_empty};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::report::Check;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let fs = &cx.image.fs;
    let mut keys = Vec::new();
    let mut homes = vec!["/root".to_string()];
    homes.extend(
        fs.list("/home")?
            .into_iter()
            .filter(|e| e.is_dir)
            .map(|e| format!("/home/{}", e.name)),
    );
    for home in homes {
        for name in ["authorized_keys", "authorized_keys2"] {
            let path = format!("{home}/.ssh/{name}");
            if non_empty(fs, &path)? {
                keys.push(path);
            }
        }
    }
    let rule = Rule {
        id: CheckId::HygieneAuthorizedKeys,
        clean: "no authorized_keys",
        dirty: "authorized_keys left in the image",
    };
    Ok(judge(cx, rule, keys))
}
