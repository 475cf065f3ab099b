//! Saved VM states next to their layers: `states/<state key>.<run>.zst` (written by the
//! compressor), published by `states/<state key>.json`. A state is only as good as its layer:
//! it is published only for a layer this run published, looked up only while that layer is
//! published, and removed with it (gc, rm, a corrupt layer).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use digest::CacheKey;

use crate::error::io_err;
use crate::layer::key_from_name;
use crate::store::{link_record, make_private_and_durable};
use crate::{CheckpointStore, Error, Result, RunLease};

/// The record published beside a state file (`states/<key>.json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateMeta {
    /// The state's key (its layer's key and the machine it needs, see `qemu_driver::StateKey`).
    pub key: CacheKey,
    /// The key of the disk layer frozen at the same moment.
    pub layer: CacheKey,
    /// The state file's name inside `states/`.
    pub file: String,
    /// Its size in bytes (compressed).
    pub size: u64,
    /// The machine it was saved on, for people (QEMU version, machine type, CPU, memory).
    pub machine: String,
    /// When it was published (seconds since the Unix epoch).
    pub created_unix: u64,
}

/// A published VM state whose layer is published too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedState {
    /// The state file.
    pub path: PathBuf,
    /// Its record.
    pub meta: StateMeta,
}

/// What a state needs besides its file to be published.
#[derive(Clone, Debug)]
pub struct StatePublish<'k> {
    /// The state's key.
    pub key: &'k CacheKey,
    /// Its layer's key; the layer must have been published by this run.
    pub layer: &'k CacheKey,
    /// The machine, for people.
    pub machine: &'k str,
}

/// `<64 hex>.<run>.zst` → (key, run).
pub(crate) fn parse_state_file_name(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".zst")?;
    let (key, run) = stem.split_once('.')?;
    (key.len() == 64 && !run.is_empty() && !run.contains('.')).then_some((key, run))
}

impl CheckpointStore {
    pub(crate) fn states_dir(&self) -> PathBuf {
        self.root().join("states")
    }

    fn state_record_path(&self, key: &CacheKey) -> PathBuf {
        self.states_dir().join(format!("{key}.json"))
    }

    fn read_state_record(&self, key: &CacheKey) -> Option<StateMeta> {
        let bytes = fs::read(self.state_record_path(key)).ok()?;
        let meta: StateMeta = serde_json::from_slice(&bytes).ok()?;
        let plain = parse_state_file_name(&meta.file).is_some_and(|(k, _)| k == key.to_string());
        (meta.key == *key && plain).then_some(meta)
    }

    /// Every published state record (unchecked), in no order.
    pub(crate) fn state_records(&self) -> Vec<StateMeta> {
        let Ok(entries) = fs::read_dir(self.states_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.strip_suffix(".json").and_then(key_from_name)?;
                self.read_state_record(&key)
            })
            .collect()
    }

    /// The state published under `key`, if its file is whole (the recorded size) and its layer
    /// is still published. Anything else under the key is removed: it can never be restored.
    pub fn lookup_state(&self, key: &CacheKey) -> Result<Option<SavedState>> {
        let record = self.state_record_path(key);
        if !record.exists() {
            return Ok(None);
        }
        let Some(meta) = self.read_state_record(key) else {
            self.remove_state(key, None)?;
            return Ok(None);
        };
        let path = self.states_dir().join(&meta.file);
        let whole = fs::metadata(&path).is_ok_and(|m| m.len() == meta.size);
        let layer_published = matches!(self.read_record(&meta.layer), Ok(Some(_)));
        if !(whole && layer_published) {
            self.remove_state(key, Some(&meta.file))?;
            return Ok(None);
        }
        Ok(Some(SavedState { path, meta }))
    }

    /// How many states are published for `layer` (whatever machine they need).
    pub fn states_of(&self, layer: &CacheKey) -> Result<usize> {
        Ok(self
            .state_records()
            .iter()
            .filter(|m| m.layer == *layer)
            .count())
    }

    /// Allocated bytes of the states of `layer`.
    pub(crate) fn state_allocated(&self, layer: &CacheKey) -> u64 {
        self.state_records()
            .iter()
            .filter(|m| m.layer == *layer)
            .map(|m| {
                fs::metadata(self.states_dir().join(&m.file)).map_or(0, |md| md.blocks() * 512)
            })
            .sum()
    }

    /// Removes every state of `layer` (record first, then file).
    pub(crate) fn remove_states_of(&self, layer: &CacheKey) -> Result<()> {
        for meta in self.state_records() {
            if meta.layer == *layer {
                self.remove_state(&meta.key, Some(&meta.file))?;
            }
        }
        Ok(())
    }

    fn remove_state(&self, key: &CacheKey, file: Option<&str>) -> Result<()> {
        let record = self.state_record_path(key);
        let file = file.map(|f| self.states_dir().join(f));
        for path in [Some(record), file].into_iter().flatten() {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// Removes state files of dead runs that no record publishes.
    pub(crate) fn sweep_incomplete_states(&self, live: impl Fn(&str) -> bool) -> Result<()> {
        let dir = self.states_dir();
        let published: Vec<String> = self.state_records().into_iter().map(|m| m.file).collect();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let run = parse_state_file_name(&name)
                .map(|(_, run)| run)
                .or_else(|| crate::store::parse_record_temp_name(&name));
            if let Some(run) = run
                && !live(run)
                && !published.contains(&name)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

impl RunLease<'_> {
    /// Where this run writes the state saved with the layer of `key` (a state key).
    pub fn state_path(&self, key: &CacheKey) -> PathBuf {
        self.store()
            .states_dir()
            .join(format!("{key}.{}.zst", self.run_id()))
    }

    /// Publishes the state file at [`RunLease::state_path`] for `req.key`. Only a state whose
    /// layer this run published can be restored later; otherwise (another build won the layer,
    /// or a state is already published under the key) the file is removed and `None` returned.
    pub fn publish_state(&mut self, req: &StatePublish<'_>) -> Result<Option<SavedState>> {
        let store = self.store();
        let path = self.state_path(req.key);
        if self.published_states.contains(&path) {
            return Ok(None);
        }
        let ours = self.layer_path(req.layer);
        let layer_is_ours = matches!(
            store.read_record(req.layer),
            Ok(Some(layer)) if Some(layer.file.as_str()) == ours.file_name().and_then(|n| n.to_str())
        );
        if !layer_is_ours {
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        let size = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
        let meta = StateMeta {
            key: *req.key,
            layer: *req.layer,
            file: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            size,
            machine: req.machine.to_owned(),
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|source| Error::Encode {
            key: req.key.to_string(),
            source,
        })?;
        // Guest RAM holds whatever the steps had in memory (secrets included): owner only, as
        // the layers.
        make_private_and_durable(&path)?;
        // Like a layer's record: temp name, then a hard link that fails if the key is taken.
        let tmp = store
            .states_dir()
            .join(format!(".{}.{}.json.tmp", req.key, self.run_id()));
        if link_record(tmp, &json, &store.state_record_path(req.key))? {
            self.published_states.push(path.clone());
            Ok(Some(SavedState { path, meta }))
        } else {
            let _ = fs::remove_file(&path);
            Ok(None)
        }
    }
}
