//! The cache as `imgbake cache ls|gc|rm` sees it: what the checkpoint store holds, and the
//! removals it plans and applies. The binary renders; this module decides.
//!
//! `gc` and `rm` need the store to themselves (the store's lock, exclusive): they refuse while
//! a build runs. A dry run asks the store for the same plan the real run applies, so the
//! preview can never disagree with it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use checkpoint::{CacheKey, CheckpointStore, GcPlan, GcPolicy};
pub use checkpoint::{Error as StoreError, LayerInfo, StoreUsage};

/// The checkpoint store under a cache root, or `None` while it does not exist (nothing is
/// created by looking).
fn store_dir(root: &Path) -> Option<PathBuf> {
    let dir = root.join("checkpoints");
    dir.join("layers").is_dir().then_some(dir)
}

/// Every published checkpoint and the space the store uses.
pub fn list(root: &Path) -> Result<(Vec<LayerInfo>, StoreUsage), StoreError> {
    match store_dir(root) {
        None => Ok((Vec::new(), StoreUsage::default())),
        Some(dir) => {
            let store = CheckpointStore::open(&dir)?;
            Ok((store.list()?, store.usage()?))
        }
    }
}

/// The store held exclusively: no build runs while it lives.
#[derive(Debug)]
pub struct NoBuildRunning {
    _store: CheckpointStore,
}

/// The store to itself, or `None` while a build runs: what removing an uncompressed base copy
/// needs, as a build holds the store from before it makes its copy until it ends.
pub fn no_build_running(root: &Path) -> Result<Option<NoBuildRunning>, StoreError> {
    let Some(dir) = store_dir(root) else {
        return Ok(None);
    };
    Ok(CheckpointStore::try_open_exclusive(&dir)?.map(|store| NoBuildRunning { _store: store }))
}

/// What `gc` is asked to remove.
#[derive(Clone, Debug, Default)]
pub struct GcRequest {
    /// Keep only the newest N checkpoints of each recipe step.
    pub keep_per_step: Option<usize>,
    /// Remove checkpoints older than this.
    pub older_than: Option<Duration>,
    /// Recipes as they are today (name, the keys a build of it makes now, from
    /// [`crate::BuildPlan`]): their other checkpoints go; other recipes' stay.
    pub live_recipes: Vec<(String, BTreeSet<CacheKey>)>,
    /// Plan only.
    pub dry_run: bool,
}

/// What a removal did (or, in a dry run, would do).
#[derive(Clone, Debug, Default)]
pub struct Removal {
    /// A dry run.
    pub dry_run: bool,
    /// The checkpoints removed (with every checkpoint built on one).
    pub removed: Vec<LayerInfo>,
    /// Bytes freed (allocated blocks).
    pub freed: u64,
    /// Incomplete layers swept away (cut off by a crash or a signal), as sentences.
    pub discarded: Vec<String>,
}

impl Removal {
    fn applied(removed: Vec<LayerInfo>, discarded: Vec<String>) -> Removal {
        Removal {
            dry_run: false,
            freed: removed.iter().map(|l| l.allocated).sum(),
            removed,
            discarded,
        }
    }

    fn planned(plan: GcPlan) -> Removal {
        Removal {
            dry_run: true,
            freed: plan.freed,
            removed: plan.layers,
            discarded: Vec::new(),
        }
    }
}

/// `imgbake cache gc`.
pub fn gc(root: &Path, request: &GcRequest) -> Result<Removal, StoreError> {
    let Some(dir) = store_dir(root) else {
        return Ok(Removal {
            dry_run: request.dry_run,
            ..Removal::default()
        });
    };
    let mut policy = GcPolicy {
        keep_per_step: request.keep_per_step,
        older_than: request.older_than,
        live_keys: None,
    };
    if request.dry_run {
        let store = CheckpointStore::open(&dir)?;
        policy.live_keys = live_keys(&store, &request.live_recipes)?;
        return Ok(Removal::planned(store.gc_plan(&policy)?));
    }
    let store = CheckpointStore::open_exclusive(&dir)?;
    policy.live_keys = live_keys(&store, &request.live_recipes)?;
    // No build runs while we hold the lock, so every unpublished layer file is a leftover.
    let discarded = store.sweep_incomplete()?;
    let removed = store.gc(&policy)?;
    Ok(Removal::applied(
        removed,
        discarded.iter().map(ToString::to_string).collect(),
    ))
}

/// Keys gc must keep: the named recipes' chains as of today, plus every layer of a recipe not
/// named (those are not this gc's business). `None` without recipes.
fn live_keys(
    store: &CheckpointStore,
    recipes: &[(String, BTreeSet<CacheKey>)],
) -> Result<Option<BTreeSet<CacheKey>>, StoreError> {
    if recipes.is_empty() {
        return Ok(None);
    }
    let named: BTreeSet<&str> = recipes.iter().map(|(name, _)| name.as_str()).collect();
    let mut live: BTreeSet<CacheKey> = recipes.iter().flat_map(|(_, keys)| keys.clone()).collect();
    live.extend(
        store
            .list()?
            .into_iter()
            .filter(|l| !named.contains(l.meta.recipe.as_str()))
            .map(|l| l.meta.key),
    );
    Ok(Some(live))
}

/// What `rm` found: the removal, and the recipes the store knows (to name them when a name
/// given matches none).
#[derive(Clone, Debug, Default)]
pub struct RecipeRemoval {
    /// What was (or would be) removed.
    pub removal: Removal,
    /// Recipe names with checkpoints, before the removal.
    pub known: BTreeSet<String>,
}

/// `imgbake cache rm`: every checkpoint of the named recipes.
pub fn remove_recipes(
    root: &Path,
    names: &[String],
    dry_run: bool,
) -> Result<RecipeRemoval, StoreError> {
    let Some(dir) = store_dir(root) else {
        return Ok(RecipeRemoval {
            removal: Removal {
                dry_run,
                ..Removal::default()
            },
            known: BTreeSet::new(),
        });
    };
    let store = if dry_run {
        CheckpointStore::open(&dir)?
    } else {
        CheckpointStore::open_exclusive(&dir)?
    };
    let known = store.list()?.into_iter().map(|l| l.meta.recipe).collect();
    let removal = if dry_run {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Removal::planned(store.recipe_plan(&names)?)
    } else {
        let mut removed = Vec::new();
        for name in names {
            removed.extend(store.remove_recipe(name)?);
        }
        Removal::applied(removed, Vec::new())
    };
    Ok(RecipeRemoval { removal, known })
}

/// The hint for a store error a person can act on.
pub fn store_hint(error: &StoreError) -> Option<String> {
    match error {
        StoreError::Busy { .. } => {
            Some("wait until the running build finishes (or stop it), then run this again".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_build_running_only_while_no_build_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        // No store yet: a build may be about to create it.
        assert!(no_build_running(dir.path()).unwrap().is_none());
        let build = CheckpointStore::open(&dir.path().join("checkpoints")).unwrap();
        assert!(
            no_build_running(dir.path()).unwrap().is_none(),
            "a running build's store was taken"
        );
        drop(build);
        let alone = no_build_running(dir.path()).unwrap();
        assert!(alone.is_some());
        assert!(
            matches!(
                CheckpointStore::open_exclusive(&dir.path().join("checkpoints")),
                Err(StoreError::Busy { .. })
            ),
            "the guard must hold the store"
        );
    }
}
