//! Full file systems and busy output directories, on real tmpfs mounts (root only: without
//! root the tests print SKIPPED, or fail under `IMGBAKE_REQUIRE_TOOLS=1`):
//! - `imgbake export` of a real qcow2 into a tmpfs too small for it fails before converting,
//!   naming the path, the space needed and the space free, and leaves nothing behind; with room
//!   the same command works;
//! - `imgbake fetch` into a tiny tmpfs cache fails the same way, nothing enters the cache, and
//!   the rerun with room fetches the image;
//! - a build into an output directory another build holds fails at once (before fetching or
//!   booting), naming the directory, the holder and `--output DIR`.

use std::path::Path;
use std::process::{Command as StdCommand, Output};

use assert_cmd::Command;
use test_support::Tmpfs;

fn imgbake() -> Command {
    let mut cmd = Command::cargo_bin("imgbake").unwrap();
    cmd.env("NO_COLOR", "1").env_remove("IMGBAKE_LOG");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(program: &str, args: &[&str]) {
    let out = StdCommand::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        text(&out.stderr)
    );
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The `not enough space` error: names `path`, a need and what is free, and the fix.
fn assert_no_space_error(stderr: &str, path: &Path) {
    let line = stderr
        .lines()
        .find(|l| l.contains("not enough space for"))
        .unwrap_or_else(|| panic!("no `not enough space` line in:\n{stderr}"));
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(line.contains("needed,") && line.ends_with("free"), "{line}");
    let hint = stderr
        .lines()
        .find(|l| l.starts_with("try: "))
        .unwrap_or_else(|| panic!("no try: line in:\n{stderr}"));
    assert!(hint.starts_with("try: free "), "{hint}");
    assert!(hint.contains("--output/--cache-dir elsewhere"), "{hint}");
}

#[test]
fn export_into_a_full_tmpfs_names_path_need_and_free_and_leaves_nothing_then_works_with_room() {
    if !(test_support::require_tool("qemu-img") && test_support::require_tool("qemu-io")) {
        return;
    }
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("disk.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            source.to_str().unwrap(),
            "64M",
        ],
    );
    // 24 MiB of data in two patterns: the RAW needs about that much, the tmpfs has 8.
    run(
        "qemu-io",
        &["-c", "write -P 0x5a 0 16M", source.to_str().unwrap()],
    );
    run(
        "qemu-io",
        &["-c", "write -P 0xa5 32M 8M", source.to_str().unwrap()],
    );
    let out_dir = tmpfs.path.join("out");
    let export = || {
        imgbake()
            .arg("export")
            .arg(&source)
            .arg("--output")
            .arg(&out_dir)
            .args(["--name", "img"])
            .output()
            .unwrap()
    };

    let full = export();
    let stderr = text(&full.stderr);
    assert_eq!(code(&full), Some(1), "exit 1 (an I/O error):\n{stderr}");
    assert_no_space_error(&stderr, &out_dir);
    assert!(stderr.contains("MiB needed, "), "{stderr}");
    assert_eq!(
        listing(&out_dir),
        Vec::<String>::new(),
        "no final name, no temp file, no lock left"
    );

    tmpfs.grow("64m");
    let ok = export();
    assert_eq!(code(&ok), Some(0), "{}", text(&ok.stderr));
    assert_eq!(listing(&out_dir), ["SHA256SUMS", "img.raw"]);
    let raw = std::fs::read(out_dir.join("img.raw")).unwrap();
    assert_eq!(raw.len(), 64 << 20);
    assert!(raw[..16 << 20].iter().all(|&b| b == 0x5a));
    assert!(raw[32 << 20..40 << 20].iter().all(|&b| b == 0xa5));
}

#[test]
fn fetch_into_a_tiny_tmpfs_cache_fails_clearly_keeps_the_cache_consistent_and_works_with_room() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        return;
    };
    // 12 MiB that do not compress, served by a real HTTP server on 127.0.0.1.
    let image: Vec<u8> = (0u32..(12 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    let digest = digest::Sha256::of(&image);
    let server = fetch::testserver::TestServer::start().unwrap();
    server.put("/base.qcow2", fetch::testserver::Resource::bytes(image));
    let work = tempfile::tempdir().unwrap();
    let recipe = work.path().join("r.yaml");
    std::fs::create_dir(work.path().join("steps")).unwrap();
    std::fs::write(work.path().join("steps/01-one.sh"), "true\n").unwrap();
    std::fs::write(
        &recipe,
        format!(
            "name: tiny-cache\nbase:\n  url: {}\n  checksum: sha256:{digest}\n\
             vm: {{ cpus: 1, memory: 512M, disk_size: 1G, firmware: bios, accel: tcg }}\n\
             steps:\n  - steps/01-one.sh\n",
            server.url("/base.qcow2")
        ),
    )
    .unwrap();
    let cache = tmpfs.path.join("cache");
    let fetch = || {
        imgbake()
            .arg("fetch")
            .arg(&recipe)
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .unwrap()
    };

    let full = fetch();
    let stderr = text(&full.stderr);
    assert_eq!(code(&full), Some(1), "{stderr}");
    assert_no_space_error(&stderr, &cache.join("base"));
    assert!(stderr.contains("12.0 MiB needed"), "{stderr}");
    let entry = cache.join("base").join(digest.to_hex());
    assert!(!entry.exists(), "nothing unverified enters the cache");
    assert_eq!(
        listing(&cache.join("base")),
        [".local", ".locks", ".partial", ".sums"],
        "only the cache's own dot-directories"
    );
    assert_eq!(
        listing(&cache.join("base/.partial")),
        Vec::<String>::new(),
        "no half download"
    );

    tmpfs.grow("64m");
    let ok = fetch();
    assert_eq!(code(&ok), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains(&format!("sha256:{digest}")));
    assert_eq!(digest::hash_file(&entry).unwrap(), digest);
}

#[test]
fn a_second_build_into_a_held_output_directory_fails_at_once_naming_the_holder() {
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let holder = exporter::OutputLock::acquire(&out_dir, "recipe first-build").unwrap();
    let cache = work.path().join("cache");
    let recipe = test_support::workspace_root().join("fixtures/recipes/smoke.yaml");
    let out = imgbake()
        // The smoke recipe's secret: checked before the lock, so it must be set.
        .env("SMOKE_SECRET", "unused: the build stops at the lock")
        .arg("recipe")
        .arg(&recipe)
        .arg("--output")
        .arg(&out_dir)
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the output directory {} is in use by another build (pid {}: imgbake recipe first-build",
            out_dir.display(),
            std::process::id()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--output DIR"), "{stderr}");
    assert!(!cache.exists(), "it stopped before fetching: {stderr}");
    assert_eq!(listing(&out_dir), [".imgbake.lock"]);

    // `imgbake export` into it is refused too, and once released the directory is free.
    let export = imgbake()
        .arg("export")
        .arg(work.path().join("missing.qcow2"))
        .arg("--output")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        text(&export.stderr).contains("is in use by another build"),
        "{}",
        text(&export.stderr)
    );
    holder.release();
    assert_eq!(listing(&out_dir), Vec::<String>::new());
}

/// A build whose every step is in the cache exports without a VM: with the verify passing it
/// publishes the outputs; with an expectation the image cannot meet it exits 6 and leaves the
/// image only as `<name>.raw.failed` (with its report), nothing under a final name.
#[test]
fn a_fully_reused_build_publishes_only_a_verified_image_and_sets_a_failed_one_aside() {
    if !(test_support::require_tool("qemu-img")
        && test_support::require_tool("qemu-io")
        && test_support::require_tool("ssh-keygen"))
    {
        return;
    }
    let Some(fixture) = test_support::fixture_image() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    std::fs::create_dir(work.path().join("steps")).unwrap();
    std::fs::write(work.path().join("steps/01-one.sh"), "true\n").unwrap();
    let digest = digest::hash_file(&fixture).unwrap();
    let recipe = work.path().join("r.yaml");
    let write_recipe = |verify: &str| {
        std::fs::write(
            &recipe,
            format!(
                "name: reused\nbase:\n  url: {}\n  checksum: sha256:{digest}\n\
                 vm: {{ cpus: 1, memory: 512M, disk_size: 4G, firmware: bios, accel: tcg }}\n\
                 steps:\n  - steps/01-one.sh\n{verify}",
                fixture.display()
            ),
        )
        .unwrap();
    };
    let plan = |_: ()| -> serde_json::Value {
        let out = imgbake()
            .env("IMGBAKE_CACHE_DIR", &cache)
            .args(["plan", "--json"])
            .arg(&recipe)
            .output()
            .unwrap();
        assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    write_recipe("");
    let planned = plan(());
    let key: test_support::checkpoints::CacheKey = planned["steps"][0]["checkpoint_key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let root: test_support::checkpoints::CacheKey = planned["checkpoint"]["root"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The chain: one real layer on the fixture, and the SSH keys a chain keeps.
    let store_dir = cache.join("checkpoints");
    test_support::checkpoints::publish_chain(
        &test_support::checkpoints::ChainSpec {
            store_dir: &store_dir,
            base: &fixture,
            recipe: "reused",
            root: &root,
            first_boot: true,
        },
        &[test_support::checkpoints::LayerSpec {
            key,
            step_id: "01".into(),
            step_name: "01-one".into(),
            write_mib: None,
        }],
    );
    let keys = work.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let mut files = std::collections::BTreeMap::new();
    for name in ["user_ed25519", "host_ed25519"] {
        let path = keys.join(name);
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                path.to_str().unwrap(),
            ],
        );
        files.insert(name.to_owned(), std::fs::read(&path).unwrap());
        let public = format!("{name}.pub");
        files.insert(public.clone(), std::fs::read(keys.join(&public)).unwrap());
    }
    let store = test_support::checkpoints::CheckpointStore::open(&store_dir).unwrap();
    store
        .chain_secrets(&root)
        .unwrap()
        .create_or_load(|| files)
        .unwrap();
    drop(store);

    let out_dir = work.path().join("out");
    let build = || {
        imgbake()
            .arg("recipe")
            .arg(&recipe)
            .arg("--output")
            .arg(&out_dir)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--json")
            .output()
            .unwrap()
    };
    let passed = build();
    let events = text(&passed.stdout);
    assert_eq!(code(&passed), Some(0), "{}", text(&passed.stderr));
    assert!(events.contains("\"steps_reused\""), "no VM: {events}");
    assert_eq!(
        listing(&out_dir),
        [
            "SHA256SUMS",
            "api-payload.json",
            "logs",
            "manifest.json",
            "reused.qcow2",
            "reused.raw",
            "run.json"
        ]
    );

    // An expectation the fixture cannot meet (it configures no NVreg_EnableGpuFirmware) does not
    // change the checkpoint keys: the same layer is reused and the verify fails.
    write_recipe("verify:\n  nvidia:\n    enable_gpu_firmware: 1\n");
    assert_eq!(
        plan(())["steps"][0]["checkpoint_key"].as_str().unwrap(),
        key.to_string()
    );
    let failed = build();
    assert_eq!(code(&failed), Some(6), "{}", text(&failed.stderr));
    assert_eq!(
        listing(&out_dir),
        [
            "logs",
            "reused.raw.failed",
            "reused.raw.failed.report.json",
            "run.json"
        ],
        "nothing under a final name claims the failed image"
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out_dir.join("reused.raw.failed.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["passed"], false, "{report}");
}
