//! `hygiene/signing-keys`: no DKMS/MOK module-signing private key (`/var/lib/dkms/mok.key`,
//! `/var/lib/shim-signed/mok/*.priv`): whoever has the image could sign modules the
//! instances' Secure Boot trusts.

use super::{Rule, judge};
use crate::Result;
use crate::checks::{CheckId, Context};
use crate::report::Check;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let fs = &cx.image.fs;
    let mut keys = Vec::new();
    if fs.exists_no_follow("/var/lib/dkms/mok.key")? {
        keys.push("/var/lib/dkms/mok.key".to_string());
    }
    for e in fs.list("/var/lib/shim-signed/mok")? {
        if !e.is_dir && e.name.ends_with(".priv") {
            keys.push(format!("/var/lib/shim-signed/mok/{}", e.name));
        }
    }
    let rule = Rule {
        id: CheckId::HygieneSigningKeys,
        clean: "no module-signing private key",
        dirty: "a module-signing private key is left (fix: remove it after the DKMS build; keep only the enrolled public key)",
    };
    Ok(judge(cx, rule, keys))
}
