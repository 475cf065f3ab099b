//! The rendered seed files parsed by PyYAML's `safe_load`, the parser cloud-init itself uses
//! (YAML 1.1, stricter than serde-saphyr about some characters): every value must come back
//! exactly as given, however awkward.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use seed::{HostKeyPair, NetworkConfig, SeedConfig};
use serde_json::{Value, json};

/// False (after printing SKIPPED) when python3 or its yaml module is missing; a failure instead
/// under `IMGBAKE_REQUIRE_TOOLS=1`.
fn pyyaml_available() -> bool {
    if !test_support::require_tool("python3") {
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let required = std::env::var(test_support::REQUIRE_TOOLS_ENV).is_ok_and(|v| v == "1");
        assert!(
            !required,
            "python3 module yaml (python3-yaml) not installed"
        );
        eprintln!("SKIPPED: python3 module yaml (python3-yaml) not installed");
    }
    ok
}

/// `yaml.safe_load(text)` as JSON.
fn pyyaml(text: &str) -> Value {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin.read()), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "PyYAML rejected:\n{text}\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn config() -> SeedConfig {
    SeedConfig {
        instance_id: "i-0123.abc_def".into(),
        hostname: "build-01.example.internal".into(),
        build_user: "imgbake".into(),
        user_authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser key: #not-a-comment 'q' \"d\""
            .into(),
        host_key: Some(HostKeyPair {
            private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNz+/aC1r\nAAAA==\n-----END OPENSSH PRIVATE KEY-----\n".into(),
            public_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost+/= host".into(),
        }),
        network: NetworkConfig::DhcpByMac("52:54:00:12:34:56".parse().unwrap()),
        extra_cloud_config: BTreeMap::new(),
    }
}

#[test]
fn pyyaml_reads_every_value_back_exactly() {
    if !pyyaml_available() {
        return;
    }
    let mut cfg = config();
    let awkward = json!({
        "yes": "yes", "on": "on", "null": "~", "octal": "0755", "float": "1e3",
        "doc": "---\n...\n", "anchor": "&a *a !!str", "flow": "{[,]}", "tab": "a\tb",
        "breaks": "nel\u{85}ls\u{2028}ps\u{2029}", "controls": "del\u{7f}c1\u{9f}",
        "bom": "\u{feff}", "astral": "\u{1F600}", "indent": "\n  - x: y\n",
    });
    cfg.extra_cloud_config
        .insert("imgbake_test".into(), awkward.clone());
    cfg.extra_cloud_config
        .insert("runcmd".into(), json!([["sh", "-c", "echo 'a: b' # c"]]));
    let files = seed::render(&cfg).unwrap();

    let user = pyyaml(&files.user_data);
    assert_eq!(user["imgbake_test"], awkward);
    assert_eq!(user["runcmd"], json!([["sh", "-c", "echo 'a: b' # c"]]));
    assert_eq!(
        user["users"][0]["ssh_authorized_keys"],
        json!([cfg.user_authorized_key])
    );
    assert_eq!(user["users"][0]["name"], "imgbake");
    assert_eq!(user["users"][0]["lock_passwd"], true);
    assert_eq!(
        user["ssh_keys"]["ed25519_private"],
        cfg.host_key.as_ref().unwrap().private_openssh
    );
    assert_eq!(
        user["ssh_keys"]["ed25519_public"],
        cfg.host_key.as_ref().unwrap().public_openssh
    );
    assert_eq!(user["ssh_genkeytypes"], json!([]));
    assert_eq!(user["locale"], false);
    assert_eq!(user["manage_etc_hosts"], "localhost");
    assert_eq!(user["apt"], json!({"preserve_sources_list": true}));

    let meta = pyyaml(&files.meta_data);
    assert_eq!(
        meta,
        json!({"instance-id": "i-0123.abc_def", "local-hostname": "build-01.example.internal"})
    );

    let net = pyyaml(files.network_config.as_deref().unwrap());
    assert_eq!(
        net,
        json!({"version": 2, "ethernets": {"imgbake0": {
            "match": {"macaddress": "52:54:00:12:34:56"}, "dhcp4": true}}})
    );
    cfg.network = NetworkConfig::Dhcp;
    let net = pyyaml(&seed::render(&cfg).unwrap().network_config.unwrap());
    assert_eq!(net["ethernets"]["imgbake0"]["match"], json!({"name": "e*"}));
}
