//! The checkpoint store against real files (layers made by real `qemu-img`).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use checkpoint::{
    CacheKey, CheckpointStore, Discarded, Error, GcPlan, GcPolicy, Lookup, PublishRequest,
};

fn key(n: u8) -> CacheKey {
    format!("{:064x}", n).parse().unwrap()
}

fn qcow2(path: &Path, backing: Option<&Path>) {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some(b) = backing {
        cmd.arg("-u").arg("-b").arg(b).args(["-F", "qcow2"]);
    }
    let status = cmd.arg(path).arg("64M").status().unwrap();
    assert!(status.success());
}

fn request<'a>(
    k: &'a CacheKey,
    parent: Option<&'a CacheKey>,
    root: &'a CacheKey,
    backing: &'a Path,
) -> PublishRequest<'a> {
    PublishRequest {
        key: k,
        parent,
        root,
        backing,
        recipe: "smoke",
        step_id: "01",
        step_name: "01-marker",
    }
}

#[test]
fn published_layer_is_found_and_corruption_is_detected() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qcow2(&base, None);
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let (root, k1) = (key(0), key(1));
    let mut lease = store.lease().unwrap();
    qcow2(&lease.layer_path(&k1), Some(&base));
    assert_eq!(
        store.lookup(&k1).unwrap(),
        Lookup::Miss,
        "unpublished layer must not be visible"
    );
    let layer = lease
        .publish(&request(&k1, None, &root, &base))
        .unwrap()
        .expect("first publish wins");
    assert_eq!(store.lookup(&k1).unwrap(), Lookup::Hit(layer.clone()));

    // Flip one byte in the middle of the header's cluster: the digest no longer matches.
    let mut bytes = fs::read(&layer.path).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&layer.path, bytes).unwrap();
    match store.lookup(&k1).unwrap() {
        Lookup::Discarded(Discarded::Corrupt { key, .. }) => assert_eq!(key, k1),
        other => panic!("corruption not detected: {other:?}"),
    }
    assert!(!layer.path.exists(), "corrupt layer must be removed");
    assert_eq!(store.lookup(&k1).unwrap(), Lookup::Miss);
}

#[test]
fn cut_off_layers_are_swept_and_reported_but_live_runs_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    // A layer file of a run that died: no record, no live run lock.
    let dead = dir
        .path()
        .join("store/layers")
        .join(format!("{}.deadbeef.qcow2", key(7)));
    fs::write(&dead, b"half a layer").unwrap();
    // A layer file of a live run (this lease holds its lock).
    let lease = store.lease().unwrap();
    let live = lease.layer_path(&key(8));
    fs::write(&live, b"being written").unwrap();

    let discarded = store.sweep_incomplete().unwrap();
    assert_eq!(
        discarded,
        vec![Discarded::Incomplete {
            key: key(7).to_string(),
            file: dead.clone()
        }]
    );
    assert!(!dead.exists());
    assert!(live.exists(), "a live build's layer must survive a sweep");
    assert!(discarded[0].to_string().contains("cut off"));

    drop(lease);
    assert!(
        !live.exists(),
        "ending a lease removes its unpublished layers"
    );
}

#[test]
fn reusable_prefix_stops_at_the_first_gap() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fs::write(&base, b"base").unwrap();
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let root = key(0);
    let keys = [key(1), key(2), key(3)];
    let mut lease = store.lease().unwrap();
    let mut backing = base.clone();
    for (i, k) in keys.iter().enumerate().take(2) {
        qcow2(&lease.layer_path(k), Some(&backing));
        let parent = i.checked_sub(1).map(|p| &keys[p]);
        lease
            .publish(&request(k, parent, &root, &backing))
            .unwrap()
            .unwrap();
        backing = lease.layer_path(k);
    }
    let (layers, discarded) = store.reusable_prefix(&keys, &base).unwrap();
    assert_eq!(
        layers.iter().map(|l| l.meta.key).collect::<Vec<_>>(),
        keys[..2].to_vec()
    );
    assert!(discarded.is_empty());

    // A chain whose second key differs reuses only the first layer.
    let (layers, _) = store
        .reusable_prefix(&[key(1), key(9), key(3)], &base)
        .unwrap();
    assert_eq!(layers.len(), 1);
}

#[test]
fn a_lost_publish_race_keeps_the_winner_and_stops_publishing_this_run() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fs::write(&base, b"base").unwrap();
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let (root, k1, k2) = (key(0), key(1), key(2));
    let mut first = store.lease().unwrap();
    let mut second = store.lease().unwrap();
    qcow2(&first.layer_path(&k1), Some(&base));
    qcow2(&second.layer_path(&k1), Some(&base));
    qcow2(&second.layer_path(&k2), Some(&second.layer_path(&k1)));
    assert!(second.would_publish(&k1, &base), "nothing holds k1 yet");
    let winner = first
        .publish(&request(&k1, None, &root, &base))
        .unwrap()
        .unwrap();
    // A sibling on the same backing holds k1 now: it wins; on another backing it would be stale.
    assert!(!second.would_publish(&k1, &base));
    assert!(second.would_publish(&k1, &dir.path().join("other-base.img")));
    assert!(
        second
            .publish(&request(&k1, None, &root, &base))
            .unwrap()
            .is_none()
    );
    let backing = second.layer_path(&k1);
    assert!(
        !second.would_publish(&k2, &backing),
        "a run that lost a race publishes nothing more"
    );
    assert!(
        second
            .publish(&request(&k2, Some(&k1), &root, &backing))
            .unwrap()
            .is_none(),
        "a layer chained to an unpublished file must not be published"
    );
    assert_eq!(store.lookup(&k1).unwrap(), Lookup::Hit(winner));
    assert_eq!(store.lookup(&k2).unwrap(), Lookup::Miss);
}

#[test]
fn gc_removes_dead_keys_with_their_descendants_and_waits_for_builds() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fs::write(&base, b"base").unwrap();
    let store_dir = dir.path().join("store");
    {
        let store = CheckpointStore::open(&store_dir).unwrap();
        let root = key(0);
        let keys = [key(1), key(2), key(3)];
        let mut lease = store.lease().unwrap();
        for (i, k) in keys.iter().enumerate() {
            fs::write(lease.layer_path(k), vec![i as u8; 10_000]).unwrap();
            let parent = i.checked_sub(1).map(|p| &keys[p]);
            lease
                .publish(&request(k, parent, &root, &base))
                .unwrap()
                .unwrap();
        }
        assert!(matches!(
            CheckpointStore::open_exclusive(&store_dir),
            Err(Error::Busy { .. })
        ));
        let usage = store.usage().unwrap();
        assert_eq!(usage.layers, 3);
        assert!(usage.allocated >= 3 * 8192);
    }
    let store = CheckpointStore::open_exclusive(&store_dir).unwrap();
    // Key 2 is no longer produced by any recipe: it and key 3 (backed by it) go, key 1 stays.
    let live: BTreeSet<CacheKey> = [key(1), key(3)].into();
    let removed = store
        .gc(&GcPolicy {
            live_keys: Some(live),
            ..GcPolicy::default()
        })
        .unwrap();
    let removed: BTreeSet<_> = removed.into_iter().map(|l| l.meta.key).collect();
    assert_eq!(removed, [key(2), key(3)].into());
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(store.remove_recipe("smoke").unwrap().len(), 1);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_corrupt_layer_takes_its_descendants_along_so_a_rebuild_can_publish_them() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fs::write(&base, b"base").unwrap();
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let root = key(0);
    let keys = [key(1), key(2), key(3)];
    let mut lease = store.lease().unwrap();
    let mut backing = base.clone();
    for (i, k) in keys.iter().enumerate() {
        qcow2(&lease.layer_path(k), Some(&backing));
        let parent = i.checked_sub(1).map(|p| &keys[p]);
        lease
            .publish(&request(k, parent, &root, &backing))
            .unwrap()
            .unwrap();
        backing = lease.layer_path(k);
    }
    let layer_2 = lease.layer_path(&keys[1]);
    drop(lease);
    fs::write(&layer_2, b"layer 1, bit-rotted").unwrap();
    // Layer 2 rots: the walk stops there, and layer 3 (backed by it) goes too.
    let mut lease = store.lease().unwrap();
    let (layers, discarded) = store.reusable_prefix(&keys, &base).unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(discarded.len(), 1);
    assert_eq!(store.lookup(&key(3)).unwrap(), Lookup::Miss);
    // A rebuild of 2 and 3 on top of 1 publishes both again.
    let mut backing = layers[0].path.clone();
    for (i, k) in keys.iter().enumerate().skip(1) {
        qcow2(&lease.layer_path(k), Some(&backing));
        assert!(
            lease
                .publish(&request(k, Some(&keys[i - 1]), &root, &backing))
                .unwrap()
                .is_some(),
            "the rebuilt layer {i} was not published"
        );
        backing = lease.layer_path(k);
    }
    assert_eq!(store.reusable_prefix(&keys, &base).unwrap().0.len(), 3);
}

#[test]
fn finish_removes_unpublished_layers_and_the_run_lock_and_reports_success() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fs::write(&base, b"base").unwrap();
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let (root, k1, k2) = (key(0), key(1), key(2));
    let mut lease = store.lease().unwrap();
    let run_lock = dir
        .path()
        .join("store/runs")
        .join(format!("{}.lock", lease.run_id()));
    assert!(run_lock.exists());
    qcow2(&lease.layer_path(&k1), Some(&base));
    qcow2(&lease.layer_path(&k2), Some(&lease.layer_path(&k1)));
    let published = lease
        .publish(&request(&k1, None, &root, &base))
        .unwrap()
        .unwrap();
    let unpublished = lease.layer_path(&k2);
    lease.finish().unwrap();
    assert!(published.path.exists(), "finish must keep published layers");
    assert!(!unpublished.exists(), "finish removes unpublished layers");
    assert!(!run_lock.exists(), "finish removes the run's lock file");
    // The store is free for maintenance once the lease is gone and the store closed.
    drop(store);
    let store = CheckpointStore::open_exclusive(&dir.path().join("store")).unwrap();
    assert_eq!(store.lookup(&k1).unwrap(), Lookup::Hit(published));
}

#[test]
fn a_gc_plan_removes_nothing_until_applied_and_apply_needs_the_store_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fs::write(&base, b"base").unwrap();
    let store_dir = dir.path().join("store");
    let (old_root, new_root) = (key(0), key(10));
    let chain = |store: &CheckpointStore, root: &CacheKey, keys: &[CacheKey]| {
        store
            .chain_secrets(root)
            .unwrap()
            .create_or_load(|| [("k".to_owned(), b"secret".to_vec())].into())
            .unwrap();
        let mut lease = store.lease().unwrap();
        for (i, k) in keys.iter().enumerate() {
            fs::write(lease.layer_path(k), vec![i as u8 + 1; 10_000]).unwrap();
            let parent = i.checked_sub(1).map(|p| &keys[p]);
            lease
                .publish(&request(k, parent, root, &base))
                .unwrap()
                .unwrap();
        }
        lease.finish().unwrap();
    };
    {
        let store = CheckpointStore::open(&store_dir).unwrap();
        chain(&store, &old_root, &[key(1), key(2)]);
        chain(&store, &new_root, &[key(11)]);
        // Key 1 is dead: the plan takes key 2 (backed by it) and the now empty old chain.
        let policy = GcPolicy {
            live_keys: Some([key(2), key(11)].into()),
            ..GcPolicy::default()
        };
        let plan = store.gc_plan(&policy).unwrap();
        let keys: BTreeSet<_> = plan.layers.iter().map(|l| l.meta.key).collect();
        assert_eq!(keys, [key(1), key(2)].into());
        assert_eq!(plan.chains, [old_root]);
        assert_eq!(
            plan.freed,
            plan.layers.iter().map(|l| l.allocated).sum::<u64>()
        );
        assert!(plan.freed >= 2 * 8192);
        assert_eq!(store.list().unwrap().len(), 3, "a plan removed something");
        assert!(matches!(store.apply(plan), Err(Error::NotExclusive { .. })));
        assert_eq!(store.list().unwrap().len(), 3);
        let by_recipe = store.recipe_plan(&["smoke"]).unwrap();
        assert_eq!(by_recipe.layers.len(), 3);
        assert_eq!(by_recipe.chains, [old_root, new_root]);
        assert!(store.recipe_plan(&["other"]).unwrap().layers.is_empty());
    }
    let store = CheckpointStore::open_exclusive(&store_dir).unwrap();
    let plan = store
        .gc_plan(&GcPolicy {
            live_keys: Some([key(2), key(11)].into()),
            ..GcPolicy::default()
        })
        .unwrap();
    let files: Vec<_> = plan.layers.iter().map(|l| l.path.clone()).collect();
    let removed = store.apply(plan).unwrap();
    assert_eq!(removed.len(), 2);
    assert!(files.iter().all(|f| !f.exists()));
    let left: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.meta.key)
        .collect();
    assert_eq!(left, [key(11)]);
    let chains = store_dir.join("chains");
    assert!(!chains.join(old_root.to_string()).exists());
    assert!(chains.join(new_root.to_string()).join("keys/k").exists());
    // An empty plan applies to nothing.
    assert!(store.apply(GcPlan::default()).unwrap().is_empty());
}

#[test]
fn a_sweep_leaves_a_live_runs_record_being_published_and_removes_a_dead_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let layers = dir.path().join("store/layers");
    let lease = store.lease().unwrap();
    let live = layers.join(format!(".{}.{}.json.tmp", key(1), lease.run_id()));
    let dead = layers.join(format!(".{}.deadbeef.json.tmp", key(2)));
    fs::write(&live, b"{").unwrap();
    fs::write(&dead, b"{").unwrap();
    store.sweep_incomplete().unwrap();
    assert!(live.exists(), "a live build's record temp file was swept");
    assert!(!dead.exists(), "a dead run's record temp file was kept");
}

#[test]
fn the_run_lock_has_its_final_name_only_once_locked_and_the_store_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir_all(root.join("layers")).unwrap();
    fs::set_permissions(root.join("layers"), fs::Permissions::from_mode(0o755)).unwrap();
    let store = CheckpointStore::open(&root).unwrap();
    for d in ["", "layers", "chains", "runs"] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d:?}");
    }
    let lease = store.lease().unwrap();
    let lock = root.join("runs").join(format!("{}.lock", lease.run_id()));
    assert_eq!(mode(&lock), 0o600);
    let names: Vec<_> = fs::read_dir(root.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        [lock.file_name().unwrap()],
        "a temp lock name is left"
    );
    let file = fs::File::open(&lock).unwrap();
    assert!(file.try_lock().is_err(), "the run lock is not held");
    assert_eq!(mode(&root.join("lock")), 0o600);
}

#[test]
fn published_layers_and_records_are_private() {
    use std::os::unix::fs::PermissionsExt;
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qcow2(&base, None);
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let mut lease = store.lease().unwrap();
    qcow2(&lease.layer_path(&key(1)), Some(&base));
    let layer = lease
        .publish(&request(&key(1), None, &key(0), &base))
        .unwrap()
        .unwrap();
    assert_eq!(mode(&layer.path), 0o600);
    let record = dir.path().join(format!("store/layers/{}.json", key(1)));
    assert_eq!(mode(&record), 0o600);
}

/// Publishes key 1 (on `base`) and key 2 (on layer 1), then rewrites key 2's record with `edit`.
fn tampered_chain(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> CheckpointStore {
    let base = dir.join("base.qcow2");
    qcow2(&base, None);
    let store = CheckpointStore::open(&dir.join("store")).unwrap();
    let mut lease = store.lease().unwrap();
    qcow2(&lease.layer_path(&key(1)), Some(&base));
    let first = lease
        .publish(&request(&key(1), None, &key(0), &base))
        .unwrap()
        .unwrap();
    qcow2(&lease.layer_path(&key(2)), Some(&first.path));
    lease
        .publish(&request(&key(2), Some(&key(1)), &key(0), &first.path))
        .unwrap()
        .unwrap();
    drop(lease);
    let record = dir.join(format!("store/layers/{}.json", key(2)));
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
    edit(&mut json);
    fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();
    store
}

#[test]
fn a_record_whose_file_is_not_a_plain_name_is_discarded() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    for bad in ["/etc/passwd", "../base.qcow2", "sub/x.qcow2", ".."] {
        let dir = tempfile::tempdir().unwrap();
        let store = tampered_chain(dir.path(), |j| j["file"] = bad.into());
        match store.lookup(&key(2)).unwrap() {
            Lookup::Discarded(why @ Discarded::BadRecord { .. }) => {
                assert!(why.to_string().contains("plain file name"), "{why}");
            }
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
}

#[test]
fn a_layer_not_backed_by_its_parent_is_discarded() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    // The record claims the base as backing; the header names layer 1.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let store = tampered_chain(dir.path(), |j| j["backing"] = base.to_str().unwrap().into());
    match store.lookup(&key(2)).unwrap() {
        Lookup::Discarded(why @ Discarded::BadRecord { .. }) => {
            assert!(why.to_string().contains("backed by"), "{why}");
        }
        other => panic!("a wrong backing file was accepted: {other:?}"),
    }
    // The header and record agree on the base, but key 2 has a parent: still refused.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let store = tampered_chain(dir.path(), |j| j["backing"] = base.to_str().unwrap().into());
    let layer = dir.path().join("store/layers").join(
        fs::read_dir(dir.path().join("store/layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.starts_with(&key(2).to_string()) && n.ends_with(".qcow2"))
            .unwrap(),
    );
    let status = Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&layer)
        .status()
        .unwrap();
    assert!(status.success());
    let record = dir.path().join(format!("store/layers/{}.json", key(2)));
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
    json["sha256"] = digest::hash_file(&layer).unwrap().to_string().into();
    fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();
    match store.lookup(&key(2)).unwrap() {
        Lookup::Discarded(why @ Discarded::BadRecord { .. }) => {
            assert!(
                why.to_string().contains("not a layer of its parent"),
                "{why}"
            );
        }
        other => panic!("a layer backed by the base despite a parent was accepted: {other:?}"),
    }
    // The untouched parent is still fine.
    assert!(matches!(store.lookup(&key(1)).unwrap(), Lookup::Hit(_)));
}

#[test]
fn publish_hashed_records_the_given_digest_and_a_wrong_one_is_caught() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qcow2(&base, None);
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let mut lease = store.lease().unwrap();
    let (k1, k2) = (key(1), key(2));
    qcow2(&lease.layer_path(&k1), Some(&base));
    let right = digest::hash_file(&lease.layer_path(&k1)).unwrap();
    let layer = lease
        .publish_hashed(&request(&k1, None, &key(0), &base), right)
        .unwrap()
        .unwrap();
    assert_eq!(store.lookup(&k1).unwrap(), Lookup::Hit(layer));
    // Same base, another size: a layer whose digest differs from layer 1's.
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(lease.layer_path(&k2))
        .arg("32M")
        .status()
        .unwrap();
    assert!(status.success());
    lease
        .publish_hashed(&request(&k2, None, &key(0), &base), right)
        .unwrap()
        .unwrap();
    assert!(matches!(
        store.lookup(&k2).unwrap(),
        Lookup::Discarded(Discarded::Corrupt { .. })
    ));
}

fn state_request<'a>(key: &'a CacheKey, layer: &'a CacheKey) -> checkpoint::StatePublish<'a> {
    checkpoint::StatePublish {
        key,
        layer,
        machine: "QEMU 7.2, pc, max, 1 GiB",
    }
}

#[test]
fn a_vm_state_is_published_with_its_layer_counted_and_removed_with_it() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qcow2(&base, None);
    let store_dir = dir.path().join("store");
    let (root, k1, k2, s1, s2) = (key(0), key(1), key(2), key(101), key(102));
    {
        let store = CheckpointStore::open(&store_dir).unwrap();
        let mut lease = store.lease().unwrap();
        qcow2(&lease.layer_path(&k1), Some(&base));
        // A state whose layer is not published (yet) is never published: it is thrown away.
        fs::write(lease.state_path(&s1), b"too early").unwrap();
        assert!(
            lease
                .publish_state(&state_request(&s1, &k1))
                .unwrap()
                .is_none()
        );
        assert!(!lease.state_path(&s1).exists());
        assert!(store.lookup_state(&s1).unwrap().is_none());

        lease
            .publish(&request(&k1, None, &root, &base))
            .unwrap()
            .unwrap();
        fs::write(lease.state_path(&s1), vec![7u8; 10_000]).unwrap();
        let saved = lease
            .publish_state(&state_request(&s1, &k1))
            .unwrap()
            .expect("published");
        assert_eq!(saved.meta.layer, k1);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&saved.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a published state must be private");
        assert_eq!(saved.meta.size, 10_000);
        assert_eq!(store.lookup_state(&s1).unwrap(), Some(saved.clone()));
        // Publishing the same key again publishes nothing new and keeps the published file.
        assert!(
            lease
                .publish_state(&state_request(&s1, &k1))
                .unwrap()
                .is_none()
        );
        assert_eq!(store.lookup_state(&s1).unwrap(), Some(saved.clone()));

        // Step 2's layer and state, backed by step 1.
        let l1 = lease.layer_path(&k1);
        qcow2(&lease.layer_path(&k2), Some(&l1));
        let mut req2 = request(&k2, Some(&k1), &root, &l1);
        req2.step_id = "02";
        lease.publish(&req2).unwrap().unwrap();
        fs::write(lease.state_path(&s2), vec![9u8; 5_000]).unwrap();
        lease
            .publish_state(&state_request(&s2, &k2))
            .unwrap()
            .unwrap();

        // An unpublished state file of this run goes when the lease ends.
        let stray = lease.state_path(&key(103));
        fs::write(&stray, b"unpublished").unwrap();
        lease.finish().unwrap();
        assert!(!stray.exists(), "finish left an unpublished state");
        assert!(saved.path.exists(), "finish removed a published state");

        let usage = store.usage().unwrap();
        assert_eq!((usage.layers, usage.states), (2, 2));
        let listed = store.list().unwrap();
        let of = |k: &CacheKey| listed.iter().find(|l| l.meta.key == *k).unwrap().clone();
        assert!(of(&k1).state_allocated > 0 && of(&k1).allocated > of(&k1).state_allocated);
        assert!(of(&k2).state_allocated > 0);
    }

    // A state whose file was cut short is never offered, and is removed.
    {
        let store = CheckpointStore::open(&store_dir).unwrap();
        let s2_path = store.lookup_state(&s2).unwrap().unwrap().path;
        fs::write(&s2_path, b"short").unwrap();
        assert!(store.lookup_state(&s2).unwrap().is_none());
        assert!(!s2_path.exists());
    }

    // gc of step 1 takes step 2 (backed by it) and both their states.
    let store = CheckpointStore::open_exclusive(&store_dir).unwrap();
    let s1_path = store.lookup_state(&s1).unwrap().unwrap().path;
    let policy = GcPolicy {
        live_keys: Some(BTreeSet::new()),
        ..GcPolicy::default()
    };
    let plan = store.gc_plan(&policy).unwrap();
    assert!(
        plan.freed >= 10_000,
        "freed {} counts the state",
        plan.freed
    );
    store.apply(plan).unwrap();
    assert!(store.lookup_state(&s1).unwrap().is_none());
    assert!(!s1_path.exists(), "gc left the state file");
    let usage = store.usage().unwrap();
    assert_eq!((usage.layers, usage.states), (0, 0));
}

#[test]
fn a_dead_runs_unpublished_state_is_swept_and_a_corrupt_layer_takes_its_state() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qcow2(&base, None);
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let (root, k1, s1) = (key(0), key(1), key(101));
    let dead = store
        .root()
        .join("states")
        .join(format!("{}.deadbeef.zst", key(50)));
    fs::write(&dead, b"cut off").unwrap();
    store.sweep_incomplete().unwrap();
    assert!(!dead.exists(), "a dead run's state was not swept");

    let mut lease = store.lease().unwrap();
    qcow2(&lease.layer_path(&k1), Some(&base));
    let layer = lease
        .publish(&request(&k1, None, &root, &base))
        .unwrap()
        .unwrap();
    fs::write(lease.state_path(&s1), vec![1u8; 100]).unwrap();
    let state = lease
        .publish_state(&state_request(&s1, &k1))
        .unwrap()
        .unwrap();
    // Sweeping while the run lives keeps its files.
    store.sweep_incomplete().unwrap();
    assert!(state.path.exists());

    let mut bytes = fs::read(&layer.path).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&layer.path, bytes).unwrap();
    assert!(matches!(store.lookup(&k1).unwrap(), Lookup::Discarded(_)));
    assert!(
        !state.path.exists(),
        "the corrupt layer's state survived it"
    );
    assert!(store.lookup_state(&s1).unwrap().is_none());
}

/// Writes a file into `dir` until its file system is full.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).unwrap();
    let chunk = vec![0x77u8; 64 << 10];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            Err(e) if digest::is_full(&e) => return path,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

#[test]
fn a_full_file_system_publishes_nothing_and_the_same_layer_publishes_once_there_is_room() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let Some(tmpfs) = test_support::Tmpfs::mount("4m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qcow2(&base, None);
    let store = CheckpointStore::open(&tmpfs.path.join("store")).unwrap();
    let (root, k1) = (key(0), key(1));
    let mut lease = store.lease().unwrap();
    qcow2(&lease.layer_path(&k1), Some(&base));
    let filler = fill(&tmpfs.path);

    match lease.publish(&request(&k1, None, &root, &base)) {
        Err(Error::NoSpace(full)) => {
            assert!(full.path.starts_with(store.root().join("layers")), "{full}");
            assert!(full.to_string().contains("not enough space for"), "{full}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(
        store.lookup(&k1).unwrap(),
        Lookup::Miss,
        "nothing half published"
    );
    let records: Vec<String> = fs::read_dir(store.root().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".json"))
        .collect();
    assert!(
        records.is_empty(),
        "no record or record temp left: {records:?}"
    );

    fs::remove_file(filler).unwrap();
    let layer = lease
        .publish(&request(&k1, None, &root, &base))
        .unwrap()
        .expect("published once there is room");
    assert_eq!(store.lookup(&k1).unwrap(), Lookup::Hit(layer));
    lease.finish().unwrap();
}

/// A chain 1 → 2 published on `base` (a real qcow2), its lease ended.
fn chain_on(store: &CheckpointStore, base: &Path, keys: &[CacheKey]) {
    let mut lease = store.lease().unwrap();
    let mut backing = base.to_path_buf();
    for (i, k) in keys.iter().enumerate() {
        qcow2(&lease.layer_path(k), Some(&backing));
        let parent = i.checked_sub(1).map(|p| &keys[p]);
        lease
            .publish(&request(k, parent, &key(0), &backing))
            .unwrap()
            .expect("nothing else publishes these keys");
        backing = lease.layer_path(k);
    }
    lease.finish().unwrap();
}

#[test]
fn a_first_layer_on_another_base_path_is_not_reused_and_its_rebuild_replaces_the_chain() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (old_base, base) = (dir.path().join("old.qcow2"), dir.path().join("base.qcow2"));
    qcow2(&old_base, None);
    qcow2(&base, None);
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let keys = [key(1), key(2)];
    chain_on(&store, &old_base, &keys);
    // The old path still exists, but what it holds is not what this build's keys vouch for.
    let (layers, discarded) = store.reusable_prefix(&keys, &base).unwrap();
    assert!(
        layers.is_empty(),
        "reused a chain on {}",
        old_base.display()
    );
    assert!(discarded.is_empty());

    // The rebuild publishes over the stale records (before the fix it lost the race to them
    // and threw away every layer it built).
    let mut lease = store.lease().unwrap();
    qcow2(&lease.layer_path(&keys[0]), Some(&base));
    let first = lease
        .publish(&request(&keys[0], None, &key(0), &base))
        .unwrap()
        .expect("a stale record must not keep the rebuilt layer from being published");
    assert_eq!(first.meta.backing, base);
    assert_eq!(
        store.lookup(&keys[1]).unwrap(),
        Lookup::Miss,
        "the stale layer's descendant must go with it"
    );
    qcow2(&lease.layer_path(&keys[1]), Some(&first.path));
    assert!(
        lease
            .publish(&request(&keys[1], Some(&keys[0]), &key(0), &first.path))
            .unwrap()
            .is_some()
    );
    lease.finish().unwrap();
    assert_eq!(store.reusable_prefix(&keys, &base).unwrap().0.len(), 2);
    let layer_files = fs::read_dir(dir.path().join("store/layers"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("qcow2".as_ref()))
        .count();
    assert_eq!(layer_files, 2, "the replaced layer files must be removed");
}

#[test]
fn a_first_layer_whose_base_moved_is_rebased_and_keeps_its_chain() {
    if !test_support::require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (old_base, base) = (dir.path().join("old.qcow2"), dir.path().join("base.qcow2"));
    qcow2(&old_base, None);
    let root_dir = dir.path().join("store");
    let keys = [key(1), key(2)];
    chain_on(&CheckpointStore::open(&root_dir).unwrap(), &old_base, &keys);
    // The base moves (a checkout moved, or the cache's uncompressed copy replaced the file).
    fs::rename(&old_base, &base).unwrap();

    let shared = CheckpointStore::open(&root_dir).unwrap();
    let misbased = shared.misbased_roots(&key(0), &base).unwrap();
    assert_eq!(
        misbased.iter().map(|l| l.meta.key).collect::<Vec<_>>(),
        [keys[0]]
    );
    assert!(
        shared.misbased_roots(&key(9), &base).unwrap().is_empty(),
        "another chain's layers are not this chain's"
    );
    assert!(matches!(
        shared.record_rebased(&misbased[0], &base),
        Err(Error::NotExclusive { .. })
    ));
    drop(shared);

    let store = CheckpointStore::open_exclusive(&root_dir).unwrap();
    let err = store.record_rebased(&misbased[0], &base).unwrap_err();
    assert!(
        err.to_string().contains("rebase") && format!("{err:?}").contains("old.qcow2"),
        "a header that still names the old base must be refused: {err:?}"
    );
    let status = Command::new("qemu-img")
        .args(["rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&misbased[0].path)
        .status()
        .unwrap();
    assert!(status.success());
    let rebased = store.record_rebased(&misbased[0], &base).unwrap();
    assert_eq!(rebased.meta.backing, base);
    assert_ne!(rebased.meta.sha256, misbased[0].meta.sha256);
    assert!(store.misbased_roots(&key(0), &base).unwrap().is_empty());
    drop(store);

    let store = CheckpointStore::open(&root_dir).unwrap();
    let (layers, discarded) = store.reusable_prefix(&keys, &base).unwrap();
    assert!(discarded.is_empty(), "{discarded:?}");
    assert_eq!(
        layers.len(),
        2,
        "the chain after the first layer must be kept"
    );
    assert_eq!(layers[0], rebased);
}

/// A shared first boot (key `at`, `SHARED_RECIPE`) with one first step (key `at + 1 + i`) of
/// each of `recipes` on it.
fn shared_first_boot(store: &CheckpointStore, at: u8, recipes: &[&str]) {
    let mut lease = store.lease().unwrap();
    let root = key(at);
    let base = store.root().join(format!("base-{at}.img"));
    fs::write(&base, b"base").unwrap();
    let mut publish = |k: CacheKey, parent: Option<CacheKey>, recipe: &str| {
        fs::write(lease.layer_path(&k), k.to_string().repeat(64)).unwrap();
        let backing = parent.map_or(base.clone(), |p| lease.layer_path(&p));
        let mut req = request(&k, parent.as_ref(), &root, &backing);
        req.recipe = recipe;
        req.step_id = if parent.is_none() { "ready" } else { "01" };
        lease.publish(&req).unwrap().expect("published");
    };
    publish(key(at), None, checkpoint::SHARED_RECIPE);
    for (i, recipe) in recipes.iter().enumerate() {
        publish(key(at + 1 + i as u8), Some(key(at)), recipe);
    }
    lease.finish().unwrap();
}

fn keys_of(layers: Vec<checkpoint::LayerInfo>) -> BTreeSet<CacheKey> {
    layers.into_iter().map(|l| l.meta.key).collect()
}

#[test]
fn a_shared_first_boot_outlives_one_recipe_and_goes_with_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    shared_first_boot(&CheckpointStore::open(&store_dir).unwrap(), 10, &["a", "b"]);
    let store = CheckpointStore::open_exclusive(&store_dir).unwrap();
    assert_eq!(
        keys_of(store.remove_recipe("a").unwrap()),
        [key(11)].into(),
        "removing recipe a took more than its own step"
    );
    assert_eq!(
        keys_of(store.remove_recipe("b").unwrap()),
        [key(10), key(12)].into(),
        "the first boot no recipe builds on any more must go with b's step"
    );
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn keep_per_step_does_not_count_shared_first_boots_as_a_recipes_step() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    // Two bases, each with its first boot ("ready") and one recipe's step on it.
    let store = CheckpointStore::open(&store_dir).unwrap();
    shared_first_boot(&store, 10, &["a"]);
    shared_first_boot(&store, 20, &["b"]);
    drop(store);
    let store = CheckpointStore::open_exclusive(&store_dir).unwrap();
    let plan = store
        .gc_plan(&GcPolicy {
            keep_per_step: Some(1),
            ..GcPolicy::default()
        })
        .unwrap();
    // Counted as one group, keep 1 would remove one base's first boot and the chain on it.
    assert!(
        plan.layers.is_empty(),
        "keep 1 removed {:?}",
        keys_of(plan.layers)
    );
}

/// Sets the `created_unix` of `key`'s record to `days` days ago.
fn age_record(store_dir: &Path, key: &CacheKey, days: u64) {
    let record = store_dir.join(format!("layers/{key}.json"));
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json["created_unix"] = (now - days * 86_400).into();
    fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();
}

#[test]
fn older_than_takes_a_shared_first_boot_only_once_everything_on_it_is_old() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    shared_first_boot(&CheckpointStore::open(&store_dir).unwrap(), 10, &["a", "b"]);
    let week = GcPolicy {
        older_than: Some(std::time::Duration::from_secs(7 * 86_400)),
        ..GcPolicy::default()
    };
    let store = CheckpointStore::open_exclusive(&store_dir).unwrap();
    // Made a month ago, built on yesterday and a month ago.
    age_record(&store_dir, &key(10), 30);
    age_record(&store_dir, &key(11), 30);
    age_record(&store_dir, &key(12), 1);
    assert_eq!(
        keys_of(store.gc_plan(&week).unwrap().layers),
        [key(11)].into(),
        "the first boot went with a's old step although b built on it yesterday"
    );
    age_record(&store_dir, &key(12), 30);
    assert_eq!(
        keys_of(store.gc_plan(&week).unwrap().layers),
        [key(10), key(11), key(12)].into()
    );
}
