use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::io_err;
use crate::{CheckpointStore, LayerKey, LayerMeta, Result};

/// One published layer as `imgbake cache ls` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerInfo {
    /// The layer's record.
    pub meta: LayerMeta,
    /// The layer file.
    pub path: PathBuf,
    /// Bytes really allocated on disk (sparse files and holes count as nothing).
    pub allocated: u64,
    /// Age in seconds.
    pub age_secs: u64,
}

/// Space used by the store, each file counted once (layers share their backing chain by
/// reference, so summing layer files is the real use).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreUsage {
    /// Published layers.
    pub layers: usize,
    /// Allocated bytes of all files in the store.
    pub allocated: u64,
    /// Sum of apparent sizes.
    pub apparent: u64,
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
    pub live_keys: Option<BTreeSet<LayerKey>>,
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
            let Some(key) = name
                .strip_suffix(".json")
                .and_then(|k| k.parse::<LayerKey>().ok())
            else {
                continue;
            };
            let Ok(Some(meta)) = self.read_record(&key) else {
                continue;
            };
            let path = dir.join(&meta.file);
            let allocated = fs::metadata(&path).map_or(0, |m| m.blocks() * 512);
            let age_secs = now.saturating_sub(meta.created_unix);
            out.push(LayerInfo {
                meta,
                path,
                allocated,
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
            ..StoreUsage::default()
        };
        let dir = self.layers_dir();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))?.flatten() {
            if let Ok(meta) = entry.metadata() {
                usage.allocated += meta.blocks() * 512;
                usage.apparent += meta.len();
            }
        }
        Ok(usage)
    }

    /// Removes layers the policy selects, plus everything backed by them. Returns what went.
    pub fn gc(&self, policy: &GcPolicy) -> Result<Vec<LayerInfo>> {
        let layers = self.list()?;
        let mut doomed: BTreeSet<LayerKey> = BTreeSet::new();
        let mut per_step: BTreeMap<(&str, &str), Vec<&LayerInfo>> = BTreeMap::new();
        for layer in &layers {
            per_step
                .entry((&layer.meta.recipe, &layer.meta.step_id))
                .or_default()
                .push(layer);
            let too_old = policy
                .older_than
                .is_some_and(|age| layer.age_secs > age.as_secs());
            let dead = policy
                .live_keys
                .as_ref()
                .is_some_and(|live| !live.contains(&layer.meta.key));
            if too_old || dead {
                doomed.insert(layer.meta.key.clone());
            }
        }
        if let Some(keep) = policy.keep_per_step {
            for group in per_step.values() {
                // `list` is oldest first: all but the last `keep` go.
                let excess = group.len().saturating_sub(keep);
                doomed.extend(group[..excess].iter().map(|l| l.meta.key.clone()));
            }
        }
        self.remove_with_descendants(layers, doomed)
    }

    /// Removes every layer a recipe made. Returns what went.
    pub fn remove_recipe(&self, recipe: &str) -> Result<Vec<LayerInfo>> {
        let layers = self.list()?;
        let doomed = layers
            .iter()
            .filter(|l| l.meta.recipe == recipe)
            .map(|l| l.meta.key.clone())
            .collect();
        self.remove_with_descendants(layers, doomed)
    }

    pub(crate) fn remove_with_descendants(
        &self,
        layers: Vec<LayerInfo>,
        mut doomed: BTreeSet<LayerKey>,
    ) -> Result<Vec<LayerInfo>> {
        // Close the set over "backed by": repeat until no layer is added.
        loop {
            let before = doomed.len();
            for layer in &layers {
                if layer
                    .meta
                    .parent
                    .as_ref()
                    .is_some_and(|p| doomed.contains(p))
                {
                    doomed.insert(layer.meta.key.clone());
                }
            }
            if doomed.len() == before {
                break;
            }
        }
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
