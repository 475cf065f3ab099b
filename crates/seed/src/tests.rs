use super::*;

use serde_json::{Value, json};

const PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\n\
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n\
QyNTUxOQAAACDDnW4o1v7oEXAMPLEONLYxx=\n\
-----END OPENSSH PRIVATE KEY-----\n";

fn config() -> SeedConfig {
    SeedConfig {
        instance_id: "imgbake-1234".into(),
        hostname: "imgbake-build".into(),
        build_user: "imgbake".into(),
        user_authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser imgbake@build".into(),
        host_key: Some(HostKeyPair {
            private_openssh: PRIVATE.into(),
            public_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost".into(),
        }),
        network: NetworkConfig::DhcpByMac("52:54:00:12:34:56".parse().unwrap()),
        extra_cloud_config: BTreeMap::new(),
    }
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

#[test]
fn two_builds_are_identical() {
    assert_eq!(build_iso(&config()).unwrap(), build_iso(&config()).unwrap());
}

#[test]
fn different_keys_give_different_bytes() {
    let a = build_iso(&config()).unwrap();
    let mut other = config();
    other.host_key.as_mut().unwrap().public_openssh =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther".into();
    assert_ne!(a, build_iso(&other).unwrap());
    let mut other = config();
    other.user_authorized_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser2".into();
    assert_ne!(a, build_iso(&other).unwrap());
}

#[test]
fn image_is_whole_sectors_and_holds_the_files_verbatim() {
    let iso = build_iso(&config()).unwrap();
    assert_eq!(iso.len() % 2048, 0);
    let files = render(&config()).unwrap();
    for text in [
        &files.user_data,
        &files.meta_data,
        files.network_config.as_ref().unwrap(),
    ] {
        let found = iso.windows(text.len()).any(|w| w == text.as_bytes());
        assert!(found, "file content missing from the image");
    }
}

#[test]
fn fingerprint_ignores_keys_and_instance_id() {
    let base = fingerprint(&config());
    let mut other = config();
    other.instance_id = "imgbake-9999".into();
    other.user_authorized_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser2".into();
    other.host_key = Some(HostKeyPair {
        private_openssh: PRIVATE.replace("xx=", "yy="),
        public_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther".into(),
    });
    assert_eq!(base, fingerprint(&other));
    assert_eq!(base.to_string().len(), 64);
}

#[test]
fn fingerprint_follows_what_shapes_the_guest() {
    let base = fingerprint(&config());
    let changes: [fn(&mut SeedConfig); 5] = [
        |c| c.build_user = "builder".into(),
        |c| c.hostname = "other".into(),
        |c| c.network = NetworkConfig::Dhcp,
        |c| c.network = NetworkConfig::None,
        |c| {
            c.extra_cloud_config.insert("timezone".into(), json!("UTC"));
        },
    ];
    for change in changes {
        let mut other = config();
        change(&mut other);
        assert_ne!(base, fingerprint(&other), "{other:?}");
    }
    let templates = [render::USER_DATA, render::META_DATA, render::NETWORK_CONFIG];
    assert_eq!(base, fingerprint_with(templates, &config()));
    let edited = format!("{}\n# edited\n", render::USER_DATA);
    let changed = [edited.as_str(), render::META_DATA, render::NETWORK_CONFIG];
    assert_ne!(base, fingerprint_with(changed, &config()));
}

#[test]
fn user_data_is_cloud_config_with_the_keys_exactly() {
    let cfg = config();
    let files = render(&cfg).unwrap();
    assert!(files.user_data.starts_with("#cloud-config\n"));
    let doc = yaml(&files.user_data);
    let user = &doc["users"][0];
    assert_eq!(user["name"], "imgbake");
    assert_eq!(
        user["ssh_authorized_keys"],
        json!([cfg.user_authorized_key])
    );
    assert_eq!(user["sudo"], "ALL=(ALL) NOPASSWD:ALL");
    assert_eq!(user["lock_passwd"], true);
    assert_eq!(user["shell"], "/bin/bash");
    assert_eq!(doc["users"].as_array().unwrap().len(), 1, "no default user");
    assert_eq!(doc["ssh_keys"]["ed25519_private"], PRIVATE);
    assert_eq!(
        doc["ssh_keys"]["ed25519_public"],
        cfg.host_key.as_ref().unwrap().public_openssh
    );
    assert_eq!(doc["ssh_genkeytypes"], json!([]));
    assert_eq!(doc["ssh_deletekeys"], true);
    assert_eq!(doc["disable_root"], true);
    assert_eq!(doc["ssh_pwauth"], false);
    assert_eq!(doc["locale"], false);
}

#[test]
fn private_key_gets_a_final_newline() {
    let mut cfg = config();
    cfg.host_key.as_mut().unwrap().private_openssh = PRIVATE.trim_end().into();
    let doc = yaml(&render(&cfg).unwrap().user_data);
    assert_eq!(doc["ssh_keys"]["ed25519_private"], PRIVATE);
}

#[test]
fn meta_data_and_network_config_parse() {
    let files = render(&config()).unwrap();
    let meta = yaml(&files.meta_data);
    assert_eq!(
        meta,
        json!({"instance-id": "imgbake-1234", "local-hostname": "imgbake-build"})
    );
    let net = yaml(files.network_config.as_deref().unwrap());
    assert_eq!(net["version"], 2);
    assert_eq!(
        net["ethernets"]["imgbake0"],
        json!({"match": {"macaddress": "52:54:00:12:34:56"}, "dhcp4": true})
    );

    let mut cfg = config();
    cfg.network = NetworkConfig::Dhcp;
    let net = yaml(&render(&cfg).unwrap().network_config.unwrap());
    assert_eq!(net["ethernets"]["imgbake0"]["match"], json!({"name": "e*"}));

    cfg.network = NetworkConfig::None;
    assert_eq!(render(&cfg).unwrap().network_config, None);
    let iso = build_iso(&cfg).unwrap();
    assert!(
        !iso.windows(14).any(|w| w == b"network-config"),
        "no network-config entry"
    );
}

#[test]
fn extra_cloud_config_round_trips_awkward_values() {
    let mut cfg = config();
    let runcmd = json!([["sh", "-c", "echo 'a: b' # \"c\"\n- d: {e}"]]);
    cfg.extra_cloud_config
        .insert("runcmd".into(), runcmd.clone());
    cfg.extra_cloud_config
        .insert("timezone".into(), json!("UTC"));
    let doc = yaml(&render(&cfg).unwrap().user_data);
    assert_eq!(doc["runcmd"], runcmd);
    assert_eq!(doc["timezone"], "UTC");
    assert_eq!(doc["users"][0]["name"], "imgbake", "template keys intact");
}

#[test]
fn extra_cloud_config_cannot_override_or_inject() {
    for (key, problem) in [
        ("users", "already set"),
        ("a: b\nc", "not a plain"),
        ("", "not a plain"),
    ] {
        let mut cfg = config();
        cfg.extra_cloud_config.insert(key.into(), json!(1));
        let err = render(&cfg).unwrap_err().to_string();
        assert!(err.contains(problem), "{key:?}: {err}");
    }
}

#[test]
fn bad_fields_are_rejected_without_echoing_them() {
    type Change = fn(&mut SeedConfig);
    let cases: [(&str, Change); 10] = [
        ("instance_id", |c| c.instance_id = "a/b".into()),
        ("instance_id", |c| c.instance_id = String::new()),
        ("hostname", |c| c.hostname = "-bad".into()),
        ("hostname", |c| c.hostname = "a b".into()),
        ("build_user", |c| c.build_user = "root".into()),
        ("build_user", |c| c.build_user = "Imgbake".into()),
        ("user_authorized_key", |c| {
            c.user_authorized_key = "ssh-ed25519 AAAA\nssh-rsa BBBB".into()
        }),
        ("host_key.public_openssh", |c| {
            c.host_key.as_mut().unwrap().public_openssh = "ssh-rsa AAAA".into()
        }),
        ("host_key.private_openssh", |c| {
            c.host_key.as_mut().unwrap().private_openssh = "secret-bytes".into()
        }),
        ("host_key.private_openssh", |c| {
            c.host_key.as_mut().unwrap().private_openssh =
                PRIVATE.replace("-----END OPENSSH PRIVATE KEY-----\n", "")
        }),
    ];
    for (field, change) in cases {
        let mut cfg = config();
        change(&mut cfg);
        let err = build_iso(&cfg).unwrap_err();
        assert!(
            matches!(&err, SeedError::InvalidField { field: f, .. } if *f == field),
            "{field}: {err:?}"
        );
        assert!(!err.to_string().contains("secret-bytes"));
    }
}

#[test]
fn debug_never_shows_the_private_key() {
    let cfg = config();
    let shown = format!("{cfg:?} {:?}", render(&cfg).unwrap());
    assert!(!shown.contains("b3BlbnNzaC1rZXkt"), "{shown}");
    assert!(shown.contains("<redacted>"));
}

#[test]
fn mac_addresses_parse_and_print() {
    let mac: MacAddress = "52:54:00:AB:cd:0f".parse().unwrap();
    assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
    for bad in [
        "",
        "52:54:00:ab:cd",
        "52:54:00:ab:cd:0f:00",
        "5254:00:ab:cd:0f",
        "52:54:00:ab:cd:zz",
        "+2:54:00:ab:cd:0f",
    ] {
        assert!(bad.parse::<MacAddress>().is_err(), "{bad}");
    }
}

#[test]
fn write_iso_is_private_and_atomic() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.iso");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_iso(&config(), &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), build_iso(&config()).unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["seed.iso"], "no temporary file left behind");
}

#[test]
fn write_iso_reports_the_path() {
    let err = write_iso(&config(), Path::new("/nonexistent-dir/seed.iso")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot write seed ISO /nonexistent-dir/seed.iso"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn oversized_extra_config_is_an_error_not_a_panic() {
    let mut cfg = config();
    cfg.extra_cloud_config
        .insert("bootcmd".into(), json!(["x".repeat(MAX_FILE_LEN)]));
    let err = build_iso(&cfg).unwrap_err();
    assert!(
        matches!(
            err,
            SeedError::TooLarge {
                file: "user-data",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn without_a_host_key_cloud_init_generates_them() {
    let pinned = render(&config()).unwrap();
    let mut cfg = config();
    cfg.host_key = None;
    let files = render(&cfg).unwrap();
    let doc = yaml(&files.user_data);
    assert!(doc.get("ssh_keys").is_none(), "{}", files.user_data);
    assert!(doc.get("ssh_genkeytypes").is_none(), "{}", files.user_data);
    assert_eq!(doc["ssh_deletekeys"], true);
    assert_eq!(doc["users"][0]["name"], "imgbake");
    assert!(!files.user_data.contains("PRIVATE KEY"));
    // The rest of the document is the pinned one's.
    let mut pinned_doc = yaml(&pinned.user_data);
    let map = pinned_doc.as_object_mut().unwrap();
    map.remove("ssh_keys");
    map.remove("ssh_genkeytypes");
    assert_eq!(doc, pinned_doc);
    assert_eq!(files.meta_data, pinned.meta_data);
    // A different guest, so a different fingerprint; the pinned one is unchanged.
    assert_ne!(fingerprint(&cfg), fingerprint(&config()));
}
