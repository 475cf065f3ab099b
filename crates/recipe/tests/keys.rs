//! Checkpoint keys: a change invalidates exactly the steps it can affect.

use std::path::{Path, PathBuf};

use recipe::{BaseIdentity, CacheKey, Recipe, Sha256, VarOverride};

/// A copy of recipes/ in a temp dir, so scripts can be edited.
fn copy_recipes() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = test_support::workspace_root().join("recipes");
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    for entry in std::fs::read_dir(src.join("scripts")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join("scripts").join(p.file_name().unwrap())).unwrap();
    }
    for name in ["nvidia-fw1.yaml", "gpu-ready.yaml"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn keys(path: &Path, overrides: &[&str], seed: &[u8]) -> (CacheKey, Vec<CacheKey>) {
    let overrides: Vec<VarOverride> = overrides.iter().map(|s| s.parse().unwrap()).collect();
    let r = Recipe::load(path, &overrides).unwrap();
    let chain = r.checkpoint_keys(&r.base_identity(), seed);
    (
        chain.root,
        chain.steps.into_iter().map(|(_, k)| k).collect(),
    )
}

/// Indexes of the steps whose keys differ.
fn changed(a: &[CacheKey], b: &[CacheKey]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

fn recipe(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("nvidia-fw1.yaml")
}

#[test]
fn keys_are_stable() {
    let dir = copy_recipes();
    assert_eq!(
        keys(&recipe(&dir), &[], b"seed"),
        keys(&recipe(&dir), &[], b"seed")
    );
    let (_, steps) = keys(&recipe(&dir), &[], b"seed");
    let unique: std::collections::BTreeSet<_> = steps.iter().collect();
    assert_eq!(unique.len(), 7);
}

#[test]
fn editing_one_script_changes_that_step_and_the_ones_after() {
    let dir = copy_recipes();
    let (root, before) = keys(&recipe(&dir), &[], b"seed");
    let script = dir.path().join("scripts/05-nvidia-firmware-config.sh");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("# an edit\n");
    std::fs::write(&script, text).unwrap();
    let (root2, after) = keys(&recipe(&dir), &[], b"seed");
    assert_eq!(root, root2);
    // Steps are 01 02 03 04 05 06 99: index 4 is 05.
    assert_eq!(changed(&before, &after), [4, 5, 6]);
}

#[test]
fn a_var_invalidates_only_the_steps_that_use_it_and_later() {
    let dir = copy_recipes();
    let (root, before) = keys(&recipe(&dir), &[], b"seed");
    // kubernetes_version is used first by 03.
    let (root2, after) = keys(&recipe(&dir), &["kubernetes_version=v1.31"], b"seed");
    assert_eq!(root, root2);
    assert_eq!(changed(&before, &after), [2, 3, 4, 5, 6]);
    // nvidia_driver_branch is used first by 04.
    let (_, after) = keys(&recipe(&dir), &["nvidia_driver_branch=570"], b"seed");
    assert_eq!(changed(&before, &after), [3, 4, 5, 6]);
    // nvidia_kernel_modules is used by 04 only.
    let (_, after) = keys(&recipe(&dir), &["nvidia_kernel_modules=open"], b"seed");
    assert_eq!(changed(&before, &after), [3, 4, 5, 6]);
}

#[test]
fn a_var_no_script_uses_changes_no_step_key() {
    // A point release keeps the derived codename (jammy), so ubuntu_version only feeds the
    // name; the codename feeds the base URL (so the root).
    let dir = copy_recipes();
    let before = keys(&recipe(&dir), &[], b"seed");
    let after = keys(&recipe(&dir), &["ubuntu_version=22.04.5"], b"seed");
    assert_eq!(before, after);
}

#[test]
fn the_base_disk_size_and_seed_change_every_key() {
    let dir = copy_recipes();
    let (root, before) = keys(&recipe(&dir), &[], b"seed");
    let all: Vec<usize> = (0..7).collect();

    // 24.04 derives ubuntu_codename=noble, which is in the base URL.
    let (root2, after) = keys(&recipe(&dir), &["ubuntu_version=24.04"], b"seed");
    assert_ne!(root, root2);
    assert_eq!(changed(&before, &after), all);

    let (root2, after) = keys(&recipe(&dir), &[], b"other seed");
    assert_ne!(root, root2);
    assert_eq!(changed(&before, &after), all);

    let text = std::fs::read_to_string(recipe(&dir)).unwrap();
    std::fs::write(
        recipe(&dir),
        text.replace("disk_size: 25G", "disk_size: 30G"),
    )
    .unwrap();
    let (root2, after) = keys(&recipe(&dir), &[], b"seed");
    assert_ne!(root, root2);
    assert_eq!(changed(&before, &after), all);
}

#[test]
fn timeout_and_retries_do_not_change_keys_but_reboot_does() {
    let dir = copy_recipes();
    let before = keys(&recipe(&dir), &[], b"seed");
    let text = std::fs::read_to_string(recipe(&dir)).unwrap();
    std::fs::write(
        recipe(&dir),
        text.replace("timeout: 45m", "timeout: 2h\n    retries: 3"),
    )
    .unwrap();
    assert_eq!(before, keys(&recipe(&dir), &[], b"seed"));
    let text = std::fs::read_to_string(recipe(&dir)).unwrap();
    std::fs::write(recipe(&dir), text.replace("reboot: true", "reboot: false")).unwrap();
    let (_, after) = keys(&recipe(&dir), &[], b"seed");
    assert_eq!(changed(&before.1, &after), [3, 4, 5, 6]);
}

#[test]
fn a_known_digest_replaces_the_provisional_identity() {
    let dir = copy_recipes();
    let r = Recipe::load(&recipe(&dir), &[]).unwrap();
    let provisional = r.checkpoint_keys(&r.base_identity(), b"seed");
    let digest = BaseIdentity::Digest(Sha256::of(b"image bytes"));
    let fetched = r.checkpoint_keys(&digest, b"seed");
    assert_ne!(provisional.root, fetched.root);
    let id = "04".parse().unwrap();
    assert_eq!(fetched.key_before(&id), fetched.key(&"03".parse().unwrap()));
    assert_eq!(
        fetched.key_before(&"01".parse().unwrap()),
        Some(fetched.root)
    );
    assert!(fetched.key(&"07".parse().unwrap()).is_none());
}

#[test]
fn secrets_count_by_name_in_the_steps_that_use_them_and_recipes_without_keep_their_keys() {
    let dir = copy_recipes();
    let path = recipe(&dir);
    let (root, before) = keys(&path, &[], b"seed");
    // Listing a secret no script refers to changes no key (so adding `secrets:` to a recipe
    // does not rebuild it).
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("secrets: [UNUSED_TOKEN]\n{text}")).unwrap();
    let (root2, unused) = keys(&path, &[], b"seed");
    assert_eq!((root, &before), (root2, &unused));
    // A secret step 05 refers to changes 05 and what follows, whatever its value (the key
    // takes no value at all).
    let script = dir.path().join("scripts/05-nvidia-firmware-config.sh");
    let body = std::fs::read_to_string(&script).unwrap();
    std::fs::write(&script, format!("{body}\n: \"${{REPO_TOKEN:-}}\"\n")).unwrap();
    let (_, referenced_unlisted) = keys(&path, &[], b"seed");
    std::fs::write(&path, format!("secrets: [REPO_TOKEN]\n{text}")).unwrap();
    let (_, listed) = keys(&path, &[], b"seed");
    assert_eq!(changed(&referenced_unlisted, &listed), [4, 5, 6]);
    let r = Recipe::load(&path, &[]).unwrap();
    assert_eq!(r.step_key_secrets(&r.steps[4]), ["REPO_TOKEN"]);
    assert!(r.step_key_secrets(&r.steps[0]).is_empty());
}

#[test]
fn the_last_step_is_keyed_as_sealed_so_a_longer_recipe_does_not_reuse_it() {
    let dir = copy_recipes();
    let (root, full) = keys(&recipe(&dir), &[], b"seed");
    // The same recipe without 99: 06 is now the last step, sealed and powered off after it.
    let text = std::fs::read_to_string(recipe(&dir)).unwrap();
    let shorter = dir.path().join("shorter.yaml");
    std::fs::write(&shorter, text.replace("  - scripts/99-cleanup.sh\n", "")).unwrap();
    let (root2, short) = keys(&shorter, &[], b"seed");
    assert_eq!(root, root2);
    assert_eq!(short.len(), 6);
    // 01–05 are shared; 06 is the last step of one recipe only.
    assert_eq!(full[..5], short[..5]);
    assert_ne!(full[5], short[5]);
}
