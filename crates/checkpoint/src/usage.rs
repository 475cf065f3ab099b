use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::io_err;
use digest::CacheKey;

use crate::layer::key_from_name;
use crate::{CheckpointStore, Error, LayerMeta, Result, SHARED_RECIPE};

/// One published layer as `imgbake cache ls` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerInfo {
    /// The layer's record.
    pub meta: LayerMeta,
    /// The layer file.
    pub path: PathBuf,
    /// Bytes really allocated on disk (sparse files and holes count as nothing), the layer's
    /// saved VM states included.
    pub allocated: u64,
    /// Of which the saved VM states (0: none).
    pub state_allocated: u64,
    /// Age in seconds.
    pub age_secs: u64,
}

/// Space used by the store, each file counted once (layers share their backing chain by
/// reference, so summing layer files is the real use).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreUsage {
    /// Published layers.
    pub layers: usize,
    /// Published VM states.
    pub states: usize,
    /// Allocated bytes of all files in the store.
    pub allocated: u64,
    /// Sum of apparent sizes.
    pub apparent: u64,
}

/// What a gc or rm would remove, from [`CheckpointStore::gc_plan`] or
/// [`CheckpointStore::recipe_plan`]: shown as a dry run, or carried out by
/// [`CheckpointStore::apply`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcPlan {
    /// The layers that go (those selected and every layer backed by one), oldest first.
    pub layers: Vec<LayerInfo>,
    /// Roots of the chains left without any layer: their secrets go too.
    pub chains: Vec<CacheKey>,
    /// Allocated bytes of the layer files that go.
    pub freed: u64,
}

/// What `imgbake cache gc` removes. A layer goes if any rule says so; everything backed by a
/// removed layer goes with it.
#[derive(Clone, Debug, Default)]
pub struct GcPolicy {
    /// Keep only the newest N layers per (recipe, step).
    pub keep_per_step: Option<usize>,
    /// Remove layers older than this.
    pub older_than: Option<Duration>,
    /// If set, remove every layer whose key is not in this set (the keys today's recipes produce).
    pub live_keys: Option<BTreeSet<CacheKey>>,
}

impl CheckpointStore {
    /// Every published layer, oldest first.
    pub fn list(&self) -> Result<Vec<LayerInfo>> {
        let dir = self.layers_dir();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json").and_then(key_from_name) else {
                continue;
            };
            let Ok(Some(meta)) = self.read_record(&key) else {
                continue;
            };
            let path = dir.join(&meta.file);
            let state_allocated = self.state_allocated(&meta.key);
            let allocated = fs::metadata(&path).map_or(0, |m| m.blocks() * 512) + state_allocated;
            let age_secs = now.saturating_sub(meta.created_unix);
            out.push(LayerInfo {
                meta,
                path,
                allocated,
                state_allocated,
                age_secs,
            });
        }
        out.sort_by(|a, b| {
            (a.meta.created_unix, &a.meta.step_id).cmp(&(b.meta.created_unix, &b.meta.step_id))
        });
        Ok(out)
    }

    /// Real space used by the store.
    pub fn usage(&self) -> Result<StoreUsage> {
        let mut usage = StoreUsage {
            layers: self.list()?.len(),
            states: self.state_records().len(),
            ..StoreUsage::default()
        };
        for dir in [self.layers_dir(), self.states_dir()] {
            for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))?.flatten() {
                if let Ok(meta) = entry.metadata() {
                    usage.allocated += meta.blocks() * 512;
                    usage.apparent += meta.len();
                }
            }
        }
        Ok(usage)
    }

    /// What [`CheckpointStore::gc`] would remove under `policy`. Removes nothing.
    pub fn gc_plan(&self, policy: &GcPolicy) -> Result<GcPlan> {
        let layers = self.list()?;
        let ages = ages_for_gc(&layers);
        let mut doomed: BTreeSet<CacheKey> = BTreeSet::new();
        let mut per_step: BTreeMap<(&str, &str), Vec<&LayerInfo>> = BTreeMap::new();
        for layer in &layers {
            // A shared first boot is every recipe's on its base, not a step of one.
            if layer.meta.recipe != SHARED_RECIPE {
                per_step
                    .entry((&layer.meta.recipe, &layer.meta.step_id))
                    .or_default()
                    .push(layer);
            }
            let too_old = policy
                .older_than
                .is_some_and(|age| ages[&layer.meta.key] > age.as_secs());
            let dead = policy
                .live_keys
                .as_ref()
                .is_some_and(|live| !live.contains(&layer.meta.key));
            if too_old || dead {
                doomed.insert(layer.meta.key);
            }
        }
        if let Some(keep) = policy.keep_per_step {
            for group in per_step.values() {
                // `list` is oldest first: all but the last `keep` go.
                let excess = group.len().saturating_sub(keep);
                doomed.extend(group[..excess].iter().map(|l| l.meta.key));
            }
        }
        Ok(self.plan(layers, doomed))
    }

    /// What [`CheckpointStore::remove_recipe`] would remove for each of `recipes`. Removes
    /// nothing.
    pub fn recipe_plan(&self, recipes: &[&str]) -> Result<GcPlan> {
        let layers = self.list()?;
        let doomed = layers
            .iter()
            .filter(|l| recipes.contains(&l.meta.recipe.as_str()))
            .map(|l| l.meta.key)
            .collect();
        Ok(self.plan(layers, doomed))
    }

    /// Carries a plan out: removes its layers (record first, so a layer is never published
    /// without its file) and its chains' secrets. Needs the store to itself
    /// ([`CheckpointStore::open_exclusive`]), so nothing changed since the plan was made and no
    /// build is using what goes. Returns the layers removed.
    pub fn apply(&self, plan: GcPlan) -> Result<Vec<LayerInfo>> {
        if !self.is_exclusive() {
            return Err(Error::NotExclusive {
                path: self.root().to_path_buf(),
            });
        }
        for layer in &plan.layers {
            self.unpublish(&layer.meta.key, Some(&layer.path))?;
        }
        for root in &plan.chains {
            let dir = self.chains_dir().join(root.to_string());
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &dir)(e)),
            }
        }
        Ok(plan.layers)
    }

    /// Removes layers the policy selects, plus everything backed by them, and the secrets of
    /// chains left empty: [`CheckpointStore::gc_plan`] then [`CheckpointStore::apply`].
    pub fn gc(&self, policy: &GcPolicy) -> Result<Vec<LayerInfo>> {
        let plan = self.gc_plan(policy)?;
        self.apply(plan)
    }

    /// Removes every layer a recipe made: [`CheckpointStore::recipe_plan`] then
    /// [`CheckpointStore::apply`].
    pub fn remove_recipe(&self, recipe: &str) -> Result<Vec<LayerInfo>> {
        let plan = self.recipe_plan(&[recipe])?;
        self.apply(plan)
    }

    /// The plan removing `doomed`, every layer backed by one of them, and the shared layers
    /// whose every child goes (a first boot no recipe builds on any more).
    fn plan(&self, layers: Vec<LayerInfo>, doomed: BTreeSet<CacheKey>) -> GcPlan {
        let mut doomed = with_descendants(&layers, doomed);
        doomed.extend(orphaned_shared(&layers, &doomed));
        let (going, staying): (Vec<LayerInfo>, Vec<LayerInfo>) = layers
            .into_iter()
            .partition(|l| doomed.contains(&l.meta.key));
        let kept_roots: BTreeSet<CacheKey> = staying.iter().map(|l| l.meta.root).collect();
        let chains: BTreeSet<CacheKey> = going
            .iter()
            .map(|l| l.meta.root)
            .filter(|root| !kept_roots.contains(root))
            .collect();
        GcPlan {
            freed: going.iter().map(|l| l.allocated).sum(),
            layers: going,
            chains: chains.into_iter().collect(),
        }
    }

    /// Removes `doomed` and every layer backed by one of them, whatever lock is held: for
    /// layers found broken, which no build can use anyway.
    pub(crate) fn remove_with_descendants(
        &self,
        layers: Vec<LayerInfo>,
        doomed: BTreeSet<CacheKey>,
    ) -> Result<Vec<LayerInfo>> {
        let doomed = with_descendants(&layers, doomed);
        let mut removed = Vec::new();
        for layer in layers {
            if doomed.contains(&layer.meta.key) {
                self.unpublish(&layer.meta.key, Some(&layer.path))?;
                removed.push(layer);
            }
        }
        Ok(removed)
    }
}

/// Each layer's age as `--older-than` sees it: its own, except for a shared first boot, which
/// is as young as the youngest layer built on it. It is made once and then built on by every
/// recipe on its base, so by its own age it would soon take every chain along.
fn ages_for_gc(layers: &[LayerInfo]) -> BTreeMap<CacheKey, u64> {
    let mut ages: BTreeMap<CacheKey, u64> =
        layers.iter().map(|l| (l.meta.key, l.age_secs)).collect();
    for shared in layers.iter().filter(|l| l.meta.recipe == SHARED_RECIPE) {
        let built_on = with_descendants(layers, BTreeSet::from([shared.meta.key]));
        let youngest = built_on
            .iter()
            .map(|k| ages[k])
            .fold(shared.age_secs, u64::min);
        ages.insert(shared.meta.key, youngest);
    }
    ages
}

/// The shared layers that have children, all of them in `doomed`.
fn orphaned_shared(layers: &[LayerInfo], doomed: &BTreeSet<CacheKey>) -> Vec<CacheKey> {
    layers
        .iter()
        .filter(|shared| shared.meta.recipe == SHARED_RECIPE && !doomed.contains(&shared.meta.key))
        .filter(|shared| {
            let mut children = layers
                .iter()
                .filter(|l| l.meta.parent == Some(shared.meta.key))
                .peekable();
            children.peek().is_some() && children.all(|c| doomed.contains(&c.meta.key))
        })
        .map(|shared| shared.meta.key)
        .collect()
}

/// Closes `doomed` over "backed by": repeats until no layer is added.
fn with_descendants(layers: &[LayerInfo], mut doomed: BTreeSet<CacheKey>) -> BTreeSet<CacheKey> {
    loop {
        let before = doomed.len();
        for layer in layers {
            if layer
                .meta
                .parent
                .as_ref()
                .is_some_and(|p| doomed.contains(p))
            {
                doomed.insert(layer.meta.key);
            }
        }
        if doomed.len() == before {
            return doomed;
        }
    }
}
