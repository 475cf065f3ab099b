//! The seed ISO read back with real tools: isoinfo (primary, Joliet, Rock Ridge), blkid, xorriso.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use seed::{HostKeyPair, NetworkConfig, SeedConfig};

fn config() -> SeedConfig {
    SeedConfig {
        instance_id: "imgbake-test-1".into(),
        hostname: "imgbake-build".into(),
        build_user: "imgbake".into(),
        user_authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser imgbake@test".into(),
        host_key: Some(HostKeyPair {
            private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r\n-----END OPENSSH PRIVATE KEY-----\n".into(),
            public_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost".into(),
        }),
        network: NetworkConfig::DhcpByMac("52:54:00:12:34:56".parse().unwrap()),
        extra_cloud_config: BTreeMap::new(),
    }
}

struct Seed {
    _dir: tempfile::TempDir,
    path: PathBuf,
    files: seed::SeedFiles,
}

fn write_seed(config: &SeedConfig) -> Seed {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.iso");
    seed::write_iso(config, &path).unwrap();
    Seed {
        files: seed::render(config).unwrap(),
        path,
        _dir: dir,
    }
}

/// Runs a tool and returns its stdout; a failure shows the command and its stderr.
fn run(program: &str, args: &[&str], iso: &Path) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .arg(iso)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {stderr}",
        out.status
    );
    out.stdout
}

fn run_text(program: &str, args: &[&str], iso: &Path) -> String {
    String::from_utf8(run(program, args, iso)).unwrap()
}

/// File names in an `isoinfo -l` listing (last column of each entry line).
fn listed_names(listing: &str) -> Vec<String> {
    let mut names: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|n| n.trim_end_matches(";1").to_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

#[test]
fn isoinfo_sees_label_joliet_and_rock_ridge() {
    if !test_support::require_tool("isoinfo") {
        return;
    }
    let seed = write_seed(&config());
    let info = run_text("isoinfo", &["-d", "-i"], &seed.path);
    assert!(info.contains("Volume id: cidata\n"), "{info}");
    assert!(info.contains("Joliet with UCS level 3 found"), "{info}");
    assert!(
        info.contains("Rock Ridge signatures version 1 found"),
        "{info}"
    );
    assert!(info.contains("Logical block size is: 2048"), "{info}");
    let blocks = seed.path.metadata().unwrap().len() / 2048;
    assert!(
        info.contains(&format!("Volume size is: {blocks}\n")),
        "{info}"
    );
}

#[test]
fn long_names_are_listed_through_joliet_and_rock_ridge() {
    if !test_support::require_tool("isoinfo") {
        return;
    }
    let seed = write_seed(&config());
    let expected = ["meta-data", "network-config", "user-data"];
    for flag in ["-J", "-R"] {
        let listing = run_text("isoinfo", &["-l", flag, "-i"], &seed.path);
        assert_eq!(
            listed_names(&listing),
            expected,
            "isoinfo -l {flag}:\n{listing}"
        );
    }
    let plain = run_text("isoinfo", &["-l", "-i"], &seed.path);
    assert_eq!(
        listed_names(&plain),
        ["METADATA.", "NETWORKC.", "USERDATA."],
        "{plain}"
    );
}

#[test]
fn file_contents_round_trip_byte_for_byte() {
    if !test_support::require_tool("isoinfo") {
        return;
    }
    let seed = write_seed(&config());
    let files = [
        ("/user-data", "/USERDATA.;1", &seed.files.user_data),
        ("/meta-data", "/METADATA.;1", &seed.files.meta_data),
        (
            "/network-config",
            "/NETWORKC.;1",
            seed.files.network_config.as_ref().unwrap(),
        ),
    ];
    for (long, short, content) in files {
        for flag in ["-J", "-R"] {
            let got = run("isoinfo", &[flag, "-x", long, "-i"], &seed.path);
            assert_eq!(
                String::from_utf8_lossy(&got),
                content.as_str(),
                "isoinfo {flag} -x {long}"
            );
        }
        let got = run("isoinfo", &["-x", short, "-i"], &seed.path);
        assert_eq!(
            String::from_utf8_lossy(&got),
            content.as_str(),
            "isoinfo -x {short}"
        );
    }
}

#[test]
fn without_network_config_only_two_files_exist() {
    if !test_support::require_tool("isoinfo") {
        return;
    }
    let mut cfg = config();
    cfg.network = NetworkConfig::None;
    let seed = write_seed(&cfg);
    let listing = run_text("isoinfo", &["-l", "-J", "-i"], &seed.path);
    assert_eq!(
        listed_names(&listing),
        ["meta-data", "user-data"],
        "{listing}"
    );
}

#[test]
fn blkid_reports_iso9660_labelled_cidata() {
    if !test_support::require_tool("blkid") {
        return;
    }
    let seed = write_seed(&config());
    let export = run_text("blkid", &["-p", "-o", "export"], &seed.path);
    let fields: Vec<&str> = export.lines().collect();
    assert!(fields.contains(&"TYPE=iso9660"), "{export}");
    assert!(fields.contains(&"LABEL=cidata"), "{export}");
    assert!(fields.contains(&"USAGE=filesystem"), "{export}");
}

#[test]
fn xorriso_reads_the_tree_without_complaint() {
    if !test_support::require_tool("xorriso") {
        return;
    }
    let seed = write_seed(&config());
    let out_dir = tempfile::tempdir().unwrap();
    let extract = out_dir.path().join("x");
    // -return_with SORRY 32: any message of severity SORRY or worse (a malformed descriptor,
    // directory record or Rock Ridge entry) makes xorriso exit non-zero.
    let out = Command::new("xorriso")
        .args(["-return_with", "SORRY", "32", "-indev"])
        .arg(&seed.path)
        .args([
            "-toc",
            "-check_media",
            "--",
            "-osirrox",
            "on",
            "-extract",
            "/",
        ])
        .arg(&extract)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "xorriso failed ({}): {stderr}",
        out.status
    );
    assert!(stderr.contains("Volume id    : 'cidata'"), "{stderr}");
    assert!(
        stdout.contains("ISO offers   : Rock_Ridge Joliet\n"),
        "{stdout}"
    );
    assert!(stdout.contains("ISO loaded   : Rock_Ridge\n"), "{stdout}");
    let blocks = seed.path.metadata().unwrap().len() / 2048;
    let words: Vec<String> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let session = format!("ISO session : 1 , 0 , {blocks}s , cidata");
    assert!(words.contains(&session), "{stdout}");
    // -check_media reads every block and rates the one region it finds.
    let region = format!("Media region : 0 , {blocks} , + good");
    assert!(words.contains(&region), "{stdout}");
    let user_data = std::fs::read_to_string(extract.join("user-data")).unwrap();
    assert_eq!(user_data, seed.files.user_data);
    let names: Vec<String> = {
        let mut n: Vec<String> = std::fs::read_dir(&extract)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names, ["meta-data", "network-config", "user-data"]);
}
