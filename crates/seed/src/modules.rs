//! The lean module lists of a build seed: the cloud-init modules a build boot runs.
//!
//! cloud-init runs every module of `/etc/cloud/cloud.cfg` in four stages, and under TCG even a
//! module with nothing to do costs its Python import, and some spawn processes (`keys-to-console`
//! runs `ssh-keygen` per key, `ssh-authkey-fingerprints` too). user-data may replace the three
//! lists (`cloud_init_modules`, `cloud_config_modules`, `cloud_final_modules`; user-data wins
//! over cloud.cfg key by key), and imgbake's seed does: it lists the modules a build needs and
//! leaves out those that do nothing for it. Only the build boot sees these lists; the image
//! keeps the distribution's cloud.cfg, so a machine started from it runs every module.
//!
//! Kept: users, SSH keys, host name and `/etc/hosts` (reaching and pinning the guest),
//! `growpart` + `resizefs` (steps see the whole disk), `mounts`, `grub-dpkg` (2.7–7.8 s at load
//! 16, but it records the boot disk in debconf, which a step's `grub-pc` upgrade needs),
//! `apt-pipelining`, `bootcmd`, `runcmd`, `write-files`, the package and script modules,
//! `final-message`. Every kept name exists in
//! cloud-init 22.4 (Debian 12) through 24.x (Ubuntu 24.04): an unknown name would be a warning
//! and make cloud-init report "done with errors".
//!
//! Left out, each idle without its config key: a module comes back when the recipe's extra
//! cloud-config sets one of its keys, and a recipe that sets a list itself gets its own.

use std::collections::BTreeMap;

/// One module: its name and the cloud-config keys that make it do something, or `None` for a
/// module a build always runs.
type Module = (&'static str, Option<&'static [&'static str]>);

const ALWAYS: Option<&[&str]> = None;

/// `cloud_init_modules` (the network stage).
const INIT: &[Module] = &[
    ("seed_random", ALWAYS),
    ("bootcmd", ALWAYS),
    ("write-files", ALWAYS),
    ("growpart", ALWAYS),
    ("resizefs", ALWAYS),
    ("disk_setup", Some(&["disk_setup", "fs_setup"])),
    ("mounts", ALWAYS),
    ("set_hostname", ALWAYS),
    ("update_hostname", ALWAYS),
    ("update_etc_hosts", ALWAYS),
    ("ca-certs", Some(&["ca_certs", "ca-certs"])),
    ("rsyslog", Some(&["rsyslog"])),
    ("users-groups", ALWAYS),
    ("ssh", ALWAYS),
];

/// `cloud_config_modules`.
const CONFIG: &[Module] = &[
    ("snap", Some(&["snap"])),
    ("ssh-import-id", Some(&["ssh_import_id"])),
    ("keyboard", Some(&["keyboard"])),
    ("locale", Some(&["locale", "locale_configfile"])),
    // 5.4–7.9 s at load 16 (cloud-init analyze blame): it rewrites sshd_config and restarts
    // sshd. Nothing to do in a build: the build user's password is locked, root is disabled.
    (
        "set-passwords",
        Some(&["ssh_pwauth", "chpasswd", "password"]),
    ),
    ("grub-dpkg", ALWAYS),
    ("apt-pipelining", ALWAYS),
    // 1.1–2.8 s: the seed keeps the image's sources (`apt: preserve_sources_list`), so it has
    // nothing to write; a recipe that wants a proxy gets it back.
    (
        "apt-configure",
        Some(&["apt_proxy", "apt_http_proxy", "apt_https_proxy"]),
    ),
    ("ntp", Some(&["ntp"])),
    ("timezone", Some(&["timezone"])),
    ("disable-ec2-metadata", Some(&["disable_ec2_metadata"])),
    ("runcmd", ALWAYS),
    ("byobu", Some(&["byobu_by_default"])),
];

/// `cloud_final_modules`.
const FINAL: &[Module] = &[
    ("package-update-upgrade-install", ALWAYS),
    ("fan", Some(&["fan"])),
    ("landscape", Some(&["landscape"])),
    ("lxd", Some(&["lxd"])),
    ("write-files-deferred", ALWAYS),
    ("puppet", Some(&["puppet"])),
    ("chef", Some(&["chef"])),
    ("salt-minion", Some(&["salt_minion"])),
    ("scripts-vendor", ALWAYS),
    ("scripts-per-once", ALWAYS),
    ("scripts-per-boot", ALWAYS),
    ("scripts-per-instance", ALWAYS),
    ("scripts-user", ALWAYS),
    // Only logs fingerprints (one `ssh-keygen -l` per key); no key turns it on.
    ("ssh-authkey-fingerprints", Some(&[])),
    ("keys-to-console", Some(&["ssh"])),
    ("phone-home", Some(&["phone_home"])),
    ("final-message", ALWAYS),
    ("power-state-change", Some(&["power_state"])),
];

/// The three lists as user-data lines (`key: ["a", "b"]`), each list a JSON flow sequence;
/// a list the recipe's extra cloud-config sets itself is left to it.
pub(crate) fn lines(extra: &BTreeMap<String, serde_json::Value>) -> String {
    let mut out = String::new();
    for (key, modules) in [
        ("cloud_init_modules", INIT),
        ("cloud_config_modules", CONFIG),
        ("cloud_final_modules", FINAL),
    ] {
        if extra.contains_key(key) {
            continue;
        }
        let names: Vec<&str> = modules
            .iter()
            .filter(|(_, keys)| keys.is_none_or(|keys| keys.iter().any(|k| extra.contains_key(*k))))
            .map(|(name, _)| *name)
            .collect();
        out.push_str(key);
        out.push_str(": ");
        out.push_str(&serde_json::Value::from(names).to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {text}"));
        line.trim_matches(['[', ']'])
            .split(',')
            .map(|s| s.trim_matches('"'))
            .collect()
    }

    #[test]
    fn a_build_keeps_what_it_needs_and_drops_idle_modules() {
        let text = lines(&BTreeMap::new());
        let init = list(&text, "cloud_init_modules");
        for needed in [
            "growpart",
            "resizefs",
            "users-groups",
            "ssh",
            "update_etc_hosts",
        ] {
            assert!(init.contains(&needed), "{needed}: {init:?}");
        }
        assert!(!init.contains(&"ca-certs"));
        let config = list(&text, "cloud_config_modules");
        assert!(config.contains(&"grub-dpkg") && config.contains(&"runcmd"));
        for idle in [
            "set-passwords",
            "apt-configure",
            "snap",
            "ntp",
            "locale",
            "keyboard",
            "ssh-import-id",
            "byobu",
        ] {
            assert!(!config.contains(&idle), "{idle}: {config:?}");
        }
        let final_ = list(&text, "cloud_final_modules");
        assert!(final_.contains(&"scripts-user") && final_.contains(&"final-message"));
        for idle in [
            "keys-to-console",
            "ssh-authkey-fingerprints",
            "lxd",
            "landscape",
            "phone-home",
        ] {
            assert!(!final_.contains(&idle), "{idle}: {final_:?}");
        }
    }

    #[test]
    fn a_key_in_the_extra_config_brings_its_module_back_and_a_list_is_the_recipes() {
        let extra: BTreeMap<String, serde_json::Value> = [
            ("timezone".to_owned(), "UTC".into()),
            (
                "power_state".to_owned(),
                serde_json::json!({"mode": "reboot"}),
            ),
            ("cloud_init_modules".to_owned(), serde_json::json!(["ssh"])),
        ]
        .into_iter()
        .collect();
        let text = lines(&extra);
        assert!(list(&text, "cloud_config_modules").contains(&"timezone"));
        assert!(list(&text, "cloud_final_modules").contains(&"power-state-change"));
        assert!(!text.contains("cloud_init_modules"), "{text}");
    }

    #[test]
    fn every_list_keeps_the_distribution_order() {
        // cloud-init runs a list in order: the kept modules keep cloud.cfg's order.
        let text = lines(&BTreeMap::new());
        let init = list(&text, "cloud_init_modules");
        let pos = |m| init.iter().position(|x| *x == m).unwrap();
        assert!(pos("growpart") < pos("resizefs"));
        assert!(pos("users-groups") < pos("ssh"));
    }
}
