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
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fs::write(&base, b"base").unwrap();
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let root = key(0);
    let keys = [key(1), key(2), key(3)];
    let mut lease = store.lease().unwrap();
    let mut backing = base.clone();
    for (i, k) in keys.iter().enumerate().take(2) {
        fs::write(lease.layer_path(k), format!("layer {i}")).unwrap();
        let parent = i.checked_sub(1).map(|p| &keys[p]);
        lease
            .publish(&request(k, parent, &root, &backing))
            .unwrap()
            .unwrap();
        backing = lease.layer_path(k);
    }
    let (layers, discarded) = store.reusable_prefix(&keys).unwrap();
    assert_eq!(
        layers.iter().map(|l| l.meta.key).collect::<Vec<_>>(),
        keys[..2].to_vec()
    );
    assert!(discarded.is_empty());

    // A chain whose second key differs reuses only the first layer.
    let (layers, _) = store.reusable_prefix(&[key(1), key(9), key(3)]).unwrap();
    assert_eq!(layers.len(), 1);
}

#[test]
fn a_lost_publish_race_keeps_the_winner_and_stops_publishing_this_run() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fs::write(&base, b"base").unwrap();
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let (root, k1, k2) = (key(0), key(1), key(2));
    let mut first = store.lease().unwrap();
    let mut second = store.lease().unwrap();
    fs::write(first.layer_path(&k1), b"first").unwrap();
    fs::write(second.layer_path(&k1), b"second").unwrap();
    fs::write(second.layer_path(&k2), b"second, step 2").unwrap();
    let winner = first
        .publish(&request(&k1, None, &root, &base))
        .unwrap()
        .unwrap();
    assert!(
        second
            .publish(&request(&k1, None, &root, &base))
            .unwrap()
            .is_none()
    );
    let backing = second.layer_path(&k1);
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
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    fs::write(&base, b"base").unwrap();
    let store = CheckpointStore::open(&dir.path().join("store")).unwrap();
    let root = key(0);
    let keys = [key(1), key(2), key(3)];
    let mut lease = store.lease().unwrap();
    let mut backing = base.clone();
    for (i, k) in keys.iter().enumerate() {
        fs::write(lease.layer_path(k), format!("layer {i}")).unwrap();
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
    let (layers, discarded) = store.reusable_prefix(&keys).unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(discarded.len(), 1);
    assert_eq!(store.lookup(&key(3)).unwrap(), Lookup::Miss);
    // A rebuild of 2 and 3 on top of 1 publishes both again.
    let mut backing = layers[0].path.clone();
    for (i, k) in keys.iter().enumerate().skip(1) {
        fs::write(lease.layer_path(k), format!("rebuilt {i}")).unwrap();
        assert!(
            lease
                .publish(&request(k, Some(&keys[i - 1]), &root, &backing))
                .unwrap()
                .is_some(),
            "the rebuilt layer {i} was not published"
        );
        backing = lease.layer_path(k);
    }
    assert_eq!(store.reusable_prefix(&keys).unwrap().0.len(), 3);
}

#[test]
fn finish_removes_unpublished_layers_and_the_run_lock_and_reports_success() {
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
    fs::write(lease.layer_path(&k1), b"published").unwrap();
    fs::write(lease.layer_path(&k2), b"never published").unwrap();
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
