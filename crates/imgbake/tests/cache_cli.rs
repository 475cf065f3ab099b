//! `imgbake cache ls|gc|rm` against a cache holding real qcow2 layers: made with `qemu-img
//! create` on a backing chain, given real data with `qemu-io`, and published through the
//! checkpoint crate's own API, plus a base image in the fetch cache's layout.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output};

use assert_cmd::Command;
use serde_json::Value;
use test_support::checkpoints::{CacheKey, ChainSpec, CheckpointStore, LayerSpec};

fn imgbake(cache: &Path) -> Command {
    let mut cmd = Command::cargo_bin("imgbake").unwrap();
    cmd.env("IMGBAKE_CACHE_DIR", cache)
        .env("NO_COLOR", "1")
        .env_remove("IMGBAKE_LOG");
    cmd
}

/// Runs `cmd` and asserts its exit code, showing the command and its stderr when it differs.
fn expect_code(cmd: &mut Command, code: i32) -> Output {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tools() -> bool {
    test_support::require_tool("qemu-img") && test_support::require_tool("qemu-io")
}

fn run(program: &str, args: &[&str]) {
    let out = StdCommand::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn key(n: u32) -> CacheKey {
    format!("{n:064x}").parse().unwrap()
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A cache root with a base image in `base/` (a 1 GiB qcow2 with 2 MiB of data, named by its
/// sha256 as the fetch cache does).
struct Cache {
    _dir: tempfile::TempDir,
    root: PathBuf,
    base: PathBuf,
}

impl Cache {
    fn new() -> Cache {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let base_dir = root.join("base");
        std::fs::create_dir_all(&base_dir).unwrap();
        let made = dir.path().join("base.qcow2");
        let made_s = made.to_str().unwrap();
        run("qemu-img", &["create", "-q", "-f", "qcow2", made_s, "1G"]);
        run("qemu-io", &["-c", "write -P 0x11 0 2M", made_s]);
        let digest = fetch::Sha256::of(&std::fs::read(&made).unwrap());
        let base = base_dir.join(digest.to_hex());
        std::fs::rename(&made, &base).unwrap();
        Cache {
            _dir: dir,
            root,
            base,
        }
    }

    fn store_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Publishes a chain of layers for `recipe` (one per `(key, step id, MiB written)`), the
    /// first backed by the base image. Returns the layer files.
    fn chain(&self, recipe: &str, root: u32, steps: &[(u32, &str, u32)]) -> Vec<PathBuf> {
        let layers: Vec<LayerSpec> = steps
            .iter()
            .map(|(n, step, mib)| LayerSpec {
                key: key(*n),
                step_id: (*step).to_owned(),
                step_name: format!("{step}-step"),
                write_mib: Some(*mib),
            })
            .collect();
        publish_chain(self, recipe, &key(root), &layers)
    }

    /// Makes the layer `n` look `days` old (its record's timestamp).
    fn age(&self, n: u32, days: u64) {
        let record = self
            .store_dir()
            .join("layers")
            .join(format!("{}.json", key(n)));
        let mut meta: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        let created = meta["created_unix"].as_u64().unwrap();
        meta["created_unix"] = (created - days * 86_400).into();
        std::fs::write(&record, serde_json::to_vec(&meta).unwrap()).unwrap();
    }

    fn ls(&self) -> Value {
        let out = expect_code(imgbake(&self.root).args(["cache", "ls", "--json"]), 0);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn steps(&self) -> Vec<String> {
        self.ls()["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}",
                    c["recipe"].as_str().unwrap(),
                    c["step_id"].as_str().unwrap()
                )
            })
            .collect()
    }
}

#[test]
fn ls_shows_each_checkpoint_and_base_and_counts_allocated_blocks_once() {
    if !tools() {
        return;
    }
    let cache = Cache::new();
    let alpha = cache.chain("alpha", 100, &[(1, "01", 3), (2, "02", 1), (3, "03", 2)]);
    cache.chain("beta", 200, &[(4, "01", 1)]);

    let listing = cache.ls();
    let checkpoints = listing["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 4);
    let first = checkpoints
        .iter()
        .find(|c| c["key"] == key(1).to_string())
        .unwrap();
    assert_eq!(first["recipe"], "alpha");
    assert_eq!(first["step_id"], "01");
    assert_eq!(first["step_name"], "01-step");
    assert_eq!(first["allocated"], allocated(&alpha[0]));
    // A layer holds only its own writes (3 MiB here), not its 1 GiB disk or its backing.
    let own = first["allocated"].as_u64().unwrap();
    assert!(
        (3 << 20..8 << 20).contains(&own),
        "layer 01 allocates {own}"
    );

    let bases = listing["base_images"].as_array().unwrap();
    assert_eq!(bases.len(), 1);
    assert_eq!(bases[0]["path"], cache.base.to_str().unwrap());
    assert_eq!(bases[0]["allocated"], allocated(&cache.base));

    // The total is every file of the store plus the base, each counted once by its blocks.
    let mut expected = allocated(&cache.base);
    for entry in std::fs::read_dir(cache.store_dir().join("layers")).unwrap() {
        expected += allocated(&entry.unwrap().path());
    }
    let total = &listing["total"];
    assert_eq!(total["allocated"], expected);
    assert_eq!(total["checkpoints"], 4);
    assert_eq!(total["base_images"], 1);
    assert!(
        expected < 64 << 20,
        "sparse data counted by blocks: {expected}"
    );

    let out = expect_code(imgbake(&cache.root).args(["cache", "ls"]), 0);
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "alpha",
        "beta",
        "03-step",
        &key(3).to_string()[..12],
        "total",
        "base images",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
}

#[test]
fn ls_of_a_cache_that_does_not_exist_is_empty_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nothing-here");
    let out = expect_code(imgbake(&root).args(["cache", "ls", "--json"]), 0);
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["checkpoints"].as_array().unwrap().len(), 0);
    assert_eq!(listing["total"]["allocated"], 0);
    let out = imgbake(&root).args(["cache", "ls"]).output().unwrap();
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("no checkpoints")
    );
    assert!(!root.exists());
}

#[test]
fn gc_older_than_previews_with_dry_run_then_removes_the_old_chain_and_its_descendants() {
    if !tools() {
        return;
    }
    let cache = Cache::new();
    let old = cache.chain("alpha", 100, &[(1, "01", 1), (2, "02", 1)]);
    let new = cache.chain("alpha", 101, &[(11, "01", 1), (12, "02", 1)]);
    // Only the first layer of the old chain is old; its child must go with it.
    cache.age(1, 10);

    let out = expect_code(
        imgbake(&cache.root).args(["cache", "gc", "--older-than", "7d", "--dry-run", "--json"]),
        0,
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dry_run"], true);
    let doomed: Vec<&str> = plan["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(doomed.len(), 2, "{plan}");
    assert!(
        doomed.contains(&key(1).to_string().as_str())
            && doomed.contains(&key(2).to_string().as_str())
    );
    assert_eq!(plan["freed"], allocated(&old[0]) + allocated(&old[1]));
    assert!(old.iter().all(|f| f.exists()), "a dry run removed files");
    assert_eq!(cache.steps().len(), 4);

    let out = expect_code(
        imgbake(&cache.root).args(["cache", "gc", "--older-than", "7d"]),
        0,
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("removed 2 checkpoints")
    );
    assert!(old.iter().all(|f| !f.exists()));
    assert!(new.iter().all(|f| f.exists()));
    let keys: Vec<String> = cache.ls()["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, [key(11).to_string(), key(12).to_string()]);
}

#[test]
fn gc_keep_keeps_the_newest_per_step() {
    if !tools() {
        return;
    }
    let cache = Cache::new();
    let older = cache.chain("alpha", 100, &[(1, "01", 1), (2, "02", 1)]);
    let newer = cache.chain("alpha", 101, &[(11, "01", 1)]);
    cache.age(1, 2);
    cache.age(2, 2);
    expect_code(imgbake(&cache.root).args(["cache", "gc", "--keep", "1"]), 0);
    // Step 01 had two layers: the older goes, and layer 02 (built on it) with it.
    assert!(older.iter().all(|f| !f.exists()));
    assert!(newer[0].exists());
    assert_eq!(cache.steps(), ["alpha/01"]);
}

#[test]
fn gc_needs_a_rule() {
    let dir = tempfile::tempdir().unwrap();
    let out = expect_code(imgbake(dir.path()).args(["cache", "gc"]), 2);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--keep") && err.contains("--older-than"),
        "{err}"
    );
    expect_code(
        imgbake(dir.path()).args(["cache", "gc", "--older-than", "soon"]),
        2,
    );
}

#[test]
fn rm_removes_one_recipe_and_names_the_known_ones_for_a_typo() {
    if !tools() {
        return;
    }
    let cache = Cache::new();
    let alpha = cache.chain("alpha", 100, &[(1, "01", 1), (2, "02", 1)]);
    let beta = cache.chain("beta", 200, &[(4, "01", 1)]);

    let out = expect_code(
        imgbake(&cache.root).args(["cache", "rm", "alpha", "--dry-run"]),
        0,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("would remove 2 checkpoints"), "{text}");
    assert!(alpha.iter().all(|f| f.exists()));

    expect_code(imgbake(&cache.root).args(["cache", "rm", "alpha"]), 0);
    assert!(alpha.iter().all(|f| !f.exists()));
    assert!(beta[0].exists());
    assert_eq!(cache.steps(), ["beta/01"]);

    let out = expect_code(imgbake(&cache.root).args(["cache", "rm", "betta"]), 1);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no checkpoints of recipe `betta`"), "{err}");
    assert!(err.contains("recipes with checkpoints: beta"), "{err}");
    assert!(beta[0].exists());
}

#[test]
fn gc_and_rm_refuse_while_a_build_holds_the_store() {
    if !tools() {
        return;
    }
    let cache = Cache::new();
    let files = cache.chain("alpha", 100, &[(1, "01", 1)]);
    cache.age(1, 30);
    // A running build holds the store's lock shared, as `pipeline::bake` does.
    let build = CheckpointStore::open(&cache.store_dir()).unwrap();
    for args in [
        &["cache", "gc", "--older-than", "1d"][..],
        &["cache", "rm", "alpha"],
    ] {
        let out = expect_code(imgbake(&cache.root).args(args), 1);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("in use by a running build"), "{err}");
        assert!(err.contains("try:"), "{err}");
        assert!(files[0].exists());
    }
    // ls and a dry run still work next to a build.
    assert_eq!(cache.steps(), ["alpha/01"]);
    expect_code(
        imgbake(&cache.root).args(["cache", "gc", "--older-than", "1d", "-n"]),
        0,
    );
    drop(build);
    expect_code(
        imgbake(&cache.root).args(["cache", "gc", "--older-than", "1d"]),
        0,
    );
    assert!(!files[0].exists());
}

/// A recipe on the cache's base image (inline `sha256:`, so `imgbake plan` shows the very keys
/// a build makes) with steps 01 and 02.
fn recipe_on(cache: &Cache, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("steps")).unwrap();
    std::fs::write(dir.join("steps/01-one.sh"), "echo one\n").unwrap();
    std::fs::write(dir.join("steps/02-two.sh"), "echo two\n").unwrap();
    let digest = cache.base.file_name().unwrap().to_str().unwrap();
    let recipe = dir.join("gc.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: gc-demo\nbase:\n  url: {}\n  checksum: sha256:{digest}\n\
             vm: {{ cpus: 1, memory: 512M, disk_size: 1G, firmware: bios, accel: tcg }}\n\
             steps:\n  - steps/01-one.sh\n  - steps/02-two.sh\n",
            cache.base.display()
        ),
    )
    .unwrap();
    recipe
}

/// The checkpoint keys `imgbake plan` shows for a recipe.
fn planned_keys(cache: &Cache, recipe: &Path) -> Vec<CacheKey> {
    let out = expect_code(imgbake(&cache.root).args(["plan", "--json"]).arg(recipe), 0);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["checkpoint_key"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Publishes a chain under the given keys (the first backed by the base).
fn chain_with_keys(cache: &Cache, recipe: &str, keys: &[CacheKey]) -> Vec<PathBuf> {
    let layers: Vec<LayerSpec> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| LayerSpec {
            key: *k,
            step_id: format!("{:02}", i + 1),
            step_name: format!("{:02}", i + 1),
            write_mib: None,
        })
        .collect();
    publish_chain(cache, recipe, &key(999), &layers)
}

/// Publishes `layers` as one chain in the cache's store, the first backed by its base image.
fn publish_chain(
    cache: &Cache,
    recipe: &str,
    root: &CacheKey,
    layers: &[LayerSpec],
) -> Vec<PathBuf> {
    let store_dir = cache.store_dir();
    let chain = ChainSpec {
        store_dir: &store_dir,
        base: &cache.base,
        recipe,
        root,
        first_boot: false,
    };
    test_support::checkpoints::publish_chain(&chain, layers)
}

#[test]
fn gc_with_recipes_removes_what_they_no_longer_produce_and_leaves_other_recipes_alone() {
    if !tools() {
        return;
    }
    let cache = Cache::new();
    let work = tempfile::tempdir().unwrap();
    let recipe = recipe_on(&cache, work.path());
    let today = planned_keys(&cache, &recipe);
    assert_eq!(today.len(), 2);
    let live = chain_with_keys(&cache, "gc-demo", &today);
    let stale = cache.chain("gc-demo", 100, &[(1, "01", 1), (2, "02", 1)]);
    let other = cache.chain("other", 200, &[(3, "01", 1)]);

    expect_code(imgbake(&cache.root).args(["cache", "gc"]).arg(&recipe), 0);
    assert!(
        stale.iter().all(|f| !f.exists()),
        "the stale chain survived"
    );
    assert!(live.iter().all(|f| f.exists()), "today's chain was removed");
    assert!(other[0].exists(), "another recipe's checkpoint was removed");

    // Editing step 02 makes its checkpoint stale; 01's is still what the recipe makes.
    std::fs::write(work.path().join("steps/02-two.sh"), "echo two, edited\n").unwrap();
    let out = expect_code(
        imgbake(&cache.root)
            .args(["cache", "gc", "--dry-run", "--json"])
            .arg(&recipe),
        0,
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let doomed: Vec<&str> = plan["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(doomed, [today[1].to_string().as_str()]);
}

#[test]
fn gc_with_a_recipe_whose_base_is_not_cached_removes_nothing() {
    if !tools() {
        return;
    }
    let cache = Cache::new();
    let files = cache.chain("gc-demo", 100, &[(1, "01", 1)]);
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("steps")).unwrap();
    std::fs::write(work.path().join("steps/01-one.sh"), "echo one\n").unwrap();
    let recipe = work.path().join("gc.yaml");
    std::fs::write(
        &recipe,
        "name: gc-demo\nbase:\n  url: https://example.invalid/img.qcow2\n  \
         checksum: file:https://example.invalid/SHA256SUMS\n\
         vm: { cpus: 1, memory: 512M, disk_size: 1G, firmware: bios, accel: tcg }\n\
         steps:\n  - steps/01-one.sh\n",
    )
    .unwrap();
    let out = expect_code(imgbake(&cache.root).args(["cache", "gc"]).arg(&recipe), 1);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("base image's digest is unknown"), "{err}");
    assert!(err.contains("imgbake fetch"), "{err}");
    assert!(files[0].exists());
}

// `imgbake boot` needs a VM to do its job (`cargo xtask demo` and a manual run cover that);
// here, its help and its refusal of a bad recipe before anything starts.

#[test]
fn boot_help_says_how_to_reach_the_guest_and_how_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let out = expect_code(imgbake(dir.path()).args(["boot", "--help"]), 0);
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "ssh command",
        "known_hosts",
        "Ctrl-C",
        "--accel",
        "EXAMPLES:",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
}

#[test]
fn boot_with_a_bad_recipe_fails_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.yaml");
    std::fs::write(&recipe, "name: bad\nbase: {}\n").unwrap();
    let cache = dir.path().join("cache");
    let out = expect_code(imgbake(&cache).arg("boot").arg(&recipe), 3);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bad.yaml"), "{err}");
    expect_code(imgbake(&cache).args(["boot", "no-such-recipe.yaml"]), 3);
    assert!(!cache.exists(), "a failed boot touched the cache");
}

/// The uncompressed copy of a base, made by the fetch cache's own code as a build makes it.
fn plain_copy(base_dir: &Path, image: &Path) -> PathBuf {
    let cache = fetch::BaseCache::open(base_dir).unwrap();
    let base = fetch::CachedBase {
        path: image.to_path_buf(),
        digest: fetch::Sha256::of(&std::fs::read(image).unwrap()),
        size: std::fs::metadata(image).unwrap().len(),
        source: fetch::Location::File(image.to_path_buf()),
        outcome: fetch::Outcome::LocalFile,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let copy = runtime
        .block_on(cache.plain_copy(
            &base,
            false,
            &|_| {},
            &tokio_util::sync::CancellationToken::new(),
        ))
        .unwrap();
    assert!(copy.made);
    copy.path
}

#[test]
fn uncompressed_base_copies_are_listed_and_go_when_nothing_needs_them() {
    if !tools() {
        return;
    }
    let cache = Cache::new();
    let base_dir = cache.root.join("base");
    // The cached base's copy, and the copy of a local base outside the cache that a chain of
    // recipe `local` is backed by.
    let cached_copy = plain_copy(&base_dir, &cache.base);
    let local = cache._dir.path().join("local.qcow2");
    let local_s = local.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", local_s, "1G"]);
    run("qemu-io", &["-c", "write -P 0x22 0 1M", local_s]);
    let local_copy = plain_copy(&base_dir, &local);
    let store_dir = cache.store_dir();
    let chain = ChainSpec {
        store_dir: &store_dir,
        base: &local_copy,
        recipe: "local",
        root: &key(300),
        first_boot: false,
    };
    let layers = [LayerSpec {
        key: key(5),
        step_id: "01".into(),
        step_name: "01-step".into(),
        write_mib: Some(1),
    }];
    test_support::checkpoints::publish_chain(&chain, &layers);
    cache.chain("alpha", 100, &[(1, "01", 1)]);

    let listing = cache.ls();
    let copies = listing["plain_copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{listing:#}");
    let paths: Vec<&str> = copies.iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&cached_copy.to_str().unwrap()), "{paths:?}");
    assert!(paths.contains(&local_copy.to_str().unwrap()), "{paths:?}");
    assert_eq!(listing["total"]["plain_copies"], 2);
    // Counted with the base images, by their blocks.
    let bases = allocated(&cache.base) + allocated(&cached_copy) + allocated(&local_copy);
    assert_eq!(listing["total"]["base_allocated"], bases);
    let out = expect_code(imgbake(&cache.root).args(["cache", "ls"]), 0);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("uncompressed copies"), "{text}");

    // Removing another recipe's checkpoints leaves both: the local copy still backs `local`.
    expect_code(imgbake(&cache.root).args(["cache", "rm", "alpha"]), 0);
    assert!(cached_copy.exists() && local_copy.exists());

    // Once `local`'s checkpoints go, its copy goes too (a dry run first only says so); the
    // cached base keeps its copy.
    let out = expect_code(
        imgbake(&cache.root).args(["cache", "rm", "local", "--dry-run"]),
        0,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "would remove the uncompressed base copy {}",
            local_copy.display()
        )),
        "{text}"
    );
    assert!(local_copy.exists());
    let out = expect_code(
        imgbake(&cache.root).args(["cache", "rm", "local", "--json"]),
        0,
    );
    let removal: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        removal["plain_copies_removed"],
        serde_json::json!([local_copy.to_str().unwrap()])
    );
    assert!(!local_copy.exists());
    assert!(cached_copy.exists());
    assert_eq!(cache.ls()["total"]["plain_copies"], 1);
}

#[test]
fn a_relative_cache_dir_is_used_as_an_absolute_path() {
    // Layers name their backing files by path: a relative cache directory would be resolved
    // against each layer's own directory by QEMU. Every command makes it absolute first.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rel")).unwrap();
    let mut cmd = Command::cargo_bin("imgbake").unwrap();
    cmd.current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("IMGBAKE_CACHE_DIR")
        .args(["cache", "ls", "--json", "--cache-dir", "rel/cache"]);
    let out = expect_code(&mut cmd, 0);
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listing["cache_dir"],
        dir.path().join("rel/cache").to_str().unwrap(),
        "{listing}"
    );
}

#[test]
fn gc_forgets_the_recorded_hash_of_a_local_base_that_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("cache/base/.local");
    std::fs::create_dir_all(&local).unwrap();
    let kept = dir.path().join("kept.qcow2");
    std::fs::write(&kept, b"kept").unwrap();
    let gone = dir.path().join("gone.qcow2");
    // Records as the fetch writes them (path, stamp, sha256).
    for (name, path) in [("a", &kept), ("b", &gone)] {
        let record = serde_json::json!({
            "path": path,
            "stamp": {"ino": 1, "size": 4, "mtime_ns": 0, "ctime_ns": 0},
            "sha256": fetch::Sha256::of(b"kept").to_hex(),
        });
        std::fs::write(local.join(format!("{name}.json")), record.to_string()).unwrap();
    }
    let root = dir.path().join("cache");
    let gc = |extra: &[&str]| -> Value {
        let mut args = vec!["cache", "gc", "--older-than", "30d", "--json"];
        args.extend_from_slice(extra);
        let out = expect_code(imgbake(&root).args(&args), 0);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let gone_text = gone.display().to_string();
    let preview = gc(&["--dry-run"]);
    assert_eq!(
        preview["local_records_removed"],
        serde_json::json!([gone_text])
    );
    assert!(local.join("b.json").exists(), "a dry run removes nothing");
    let done = gc(&[]);
    assert_eq!(
        done["local_records_removed"],
        serde_json::json!([gone_text])
    );
    assert!(!local.join("b.json").exists());
    assert!(
        local.join("a.json").exists(),
        "the file is still there: its record stays"
    );
    let out = expect_code(
        imgbake(&root).args(["cache", "gc", "--older-than", "30d"]),
        0,
    );
    assert!(!String::from_utf8(out.stdout).unwrap().contains("forgot"));
}
