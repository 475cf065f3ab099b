use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::io_err;
use crate::layer::sha256_file;
use crate::{Discarded, Error, Layer, LayerKey, LayerMeta, Lookup, Result};

/// The checkpoint directory:
///
/// ```text
/// lock                      shared by running builds, exclusive for gc / rm
/// layers/<key>.<run>.qcow2  a layer file (in progress until its record exists)
/// layers/<key>.json         the record that publishes a layer
/// chains/<root key>/        files a chain needs to be resumable (the SSH keys)
/// runs/<run>.lock           held by a live build; lets a sweep tell its files from a dead one's
/// ```
#[derive(Debug)]
pub struct CheckpointStore {
    root: PathBuf,
    lock: File,
}

impl CheckpointStore {
    /// Opens (creating) the store and takes its shared lock, so gc waits for running builds.
    pub fn open(root: &Path) -> Result<Self> {
        let lock = Self::prepare(root)?;
        lock.lock_shared()
            .map_err(io_err("lock", root.join("lock")))?;
        Ok(Self {
            root: root.to_path_buf(),
            lock,
        })
    }

    /// Opens the store for maintenance (gc, rm): fails with [`Error::Busy`] while a build runs.
    pub fn open_exclusive(root: &Path) -> Result<Self> {
        let lock = Self::prepare(root)?;
        match lock.try_lock() {
            Ok(()) => Ok(Self {
                root: root.to_path_buf(),
                lock,
            }),
            Err(TryLockError::WouldBlock) => Err(Error::Busy {
                path: root.join("lock"),
            }),
            Err(TryLockError::Error(e)) => Err(io_err("lock", root.join("lock"))(e)),
        }
    }

    fn prepare(root: &Path) -> Result<File> {
        for dir in [
            root.to_path_buf(),
            root.join("layers"),
            root.join("chains"),
            root.join("runs"),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        let path = root.join("lock");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn record_path(&self, key: &LayerKey) -> PathBuf {
        self.layers_dir().join(format!("{key}.json"))
    }

    /// The directory where a chain keeps what resuming it needs (its SSH keys), created 0700.
    pub fn chain_dir(&self, root: &LayerKey) -> Result<PathBuf> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = self.root.join("chains").join(root.as_str());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", &dir))?;
        Ok(dir)
    }

    /// Removes layer files that no live build owns and no record publishes: what a crash or
    /// Ctrl-C cut off. Returns what it threw away so the caller can say so.
    pub fn sweep_incomplete(&self) -> Result<Vec<Discarded>> {
        let mut discarded = Vec::new();
        let dir = self.layers_dir();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((key, run)) = parse_layer_file_name(&name) else {
                if name.ends_with(".tmp") {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            };
            if self.run_is_live(run) || self.is_published_file(key, &name) {
                continue;
            }
            fs::remove_file(entry.path()).map_err(io_err("remove", entry.path()))?;
            discarded.push(Discarded::Incomplete {
                key: key.to_owned(),
                file: entry.path(),
            });
        }
        self.sweep_dead_runs()?;
        Ok(discarded)
    }

    fn is_published_file(&self, key: &str, file_name: &str) -> bool {
        let Ok(key) = key.parse::<LayerKey>() else {
            return false;
        };
        self.read_record(&key)
            .is_ok_and(|meta| meta.is_some_and(|m| m.file == file_name))
    }

    fn run_is_live(&self, run: &str) -> bool {
        let path = self.root.join("runs").join(format!("{run}.lock"));
        let Ok(file) = File::open(&path) else {
            return false;
        };
        matches!(file.try_lock(), Err(TryLockError::WouldBlock))
    }

    fn sweep_dead_runs(&self) -> Result<()> {
        let dir = self.root.join("runs");
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(run) = name.strip_suffix(".lock")
                && !self.run_is_live(run)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    pub(crate) fn read_record(
        &self,
        key: &LayerKey,
    ) -> std::result::Result<Option<LayerMeta>, Discarded> {
        let path = self.record_path(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Discarded::BadRecord {
                    file: path,
                    reason: e.to_string(),
                });
            }
        };
        match serde_json::from_slice::<LayerMeta>(&bytes) {
            Ok(meta) if &meta.key == key => Ok(Some(meta)),
            Ok(meta) => Err(Discarded::BadRecord {
                file: path,
                reason: format!("it is for key {}", meta.key),
            }),
            Err(e) => Err(Discarded::BadRecord {
                file: path,
                reason: e.to_string(),
            }),
        }
    }

    /// Looks a key up and verifies the layer file against its recorded sha256. A broken
    /// checkpoint is removed (record and file) and reported, never returned.
    pub fn lookup(&self, key: &LayerKey) -> Result<Lookup> {
        let meta = match self.read_record(key) {
            Ok(Some(meta)) => meta,
            Ok(None) => return Ok(Lookup::Miss),
            Err(why) => {
                self.discard(key, None)?;
                return Ok(Lookup::Discarded(why));
            }
        };
        let path = self.layers_dir().join(&meta.file);
        if !path.is_file() {
            self.discard(key, None)?;
            return Ok(Lookup::Discarded(Discarded::Missing {
                key: key.clone(),
                file: path,
            }));
        }
        let actual = sha256_file(&path)?;
        if actual != meta.sha256 {
            self.discard(key, Some(&path))?;
            return Ok(Lookup::Discarded(Discarded::Corrupt {
                key: key.clone(),
                expected: meta.sha256,
                actual,
            }));
        }
        Ok(Lookup::Hit(Layer { path, meta }))
    }

    /// The longest prefix of `keys` (a chain, first step first) that is published, intact and
    /// linked parent to child. Broken checkpoints met on the way are removed and returned.
    pub fn reusable_prefix(&self, keys: &[LayerKey]) -> Result<(Vec<Layer>, Vec<Discarded>)> {
        let mut layers: Vec<Layer> = Vec::new();
        let mut discarded = Vec::new();
        for key in keys {
            match self.lookup(key)? {
                Lookup::Hit(layer) => {
                    let linked = layer.meta.parent.as_ref() == layers.last().map(|l| &l.meta.key);
                    let backing_ok = layer.meta.backing.exists();
                    if !(linked && backing_ok) {
                        break;
                    }
                    layers.push(layer);
                }
                Lookup::Miss => break,
                Lookup::Discarded(why) => {
                    discarded.push(why);
                    break;
                }
            }
        }
        Ok((layers, discarded))
    }

    /// Removes a broken checkpoint and every layer built on it: those can never be booted
    /// without it, and their stale records would keep a rebuild of the same keys from being
    /// published.
    fn discard(&self, key: &LayerKey, file: Option<&Path>) -> Result<()> {
        let doomed = std::collections::BTreeSet::from([key.clone()]);
        self.remove_with_descendants(self.list()?, doomed)?;
        self.unpublish(key, file)
    }

    pub(crate) fn unpublish(&self, key: &LayerKey, file: Option<&Path>) -> Result<()> {
        for path in [Some(self.record_path(key).as_path()), file]
            .into_iter()
            .flatten()
        {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", path)(e)),
            }
        }
        Ok(())
    }

    /// Starts a build's lease: a run id, held by a lock, that names its layer files.
    pub fn lease(&self) -> Result<RunLease<'_>> {
        let run = format!("{:016x}", rand::random::<u64>());
        let path = self.root.join("runs").join(format!("{run}.lock"));
        let lock = File::create(&path).map_err(io_err("create", &path))?;
        lock.try_lock()
            .map_err(|e| io_err("lock", &path)(e.into()))?;
        Ok(RunLease {
            store: self,
            run,
            lock_path: path,
            _lock: lock,
            published: Vec::new(),
            diverged: false,
        })
    }
}

/// `<64 hex>.<run>.qcow2` → (key, run).
fn parse_layer_file_name(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".qcow2")?;
    let (key, run) = stem.split_once('.')?;
    (key.len() == 64 && !run.is_empty()).then_some((key, run))
}

/// One build's claim on the store. Layer files it names are its own until published; when the
/// lease ends (finish or drop) its unpublished files are removed.
#[derive(Debug)]
pub struct RunLease<'a> {
    store: &'a CheckpointStore,
    run: String,
    lock_path: PathBuf,
    _lock: File,
    published: Vec<PathBuf>,
    /// Set once another build won a publish race: this run's later layers chain to a file that
    /// will never be published, so they must not be published either.
    diverged: bool,
}

/// What a layer needs besides its file to be published.
#[derive(Clone, Debug)]
pub struct PublishRequest<'k> {
    /// The step's key.
    pub key: &'k LayerKey,
    /// The previous step's key (`None` for the first step).
    pub parent: Option<&'k LayerKey>,
    /// The chain's root key.
    pub root: &'k LayerKey,
    /// The backing file recorded in the layer's header.
    pub backing: &'k Path,
    /// The recipe's name.
    pub recipe: &'k str,
    /// The step id.
    pub step_id: &'k str,
    /// The step's name.
    pub step_name: &'k str,
}

impl RunLease<'_> {
    /// This run's id.
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// Where this run writes the layer for `key` (and what the next overlay names as backing).
    pub fn layer_path(&self, key: &LayerKey) -> PathBuf {
        self.store
            .layers_dir()
            .join(format!("{key}.{}.qcow2", self.run))
    }

    /// Publishes the frozen layer for `req.key`: hashes it and writes its record. If another
    /// build published the same key first, this one stays unpublished (theirs wins) and `None`
    /// is returned: this run's later layers still chain to its own file.
    pub fn publish(&mut self, req: &PublishRequest<'_>) -> Result<Option<Layer>> {
        if self.diverged {
            return Ok(None);
        }
        let path = self.layer_path(req.key);
        let sha256 = sha256_file(&path)?;
        let size = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
        let meta = LayerMeta {
            key: req.key.clone(),
            parent: req.parent.cloned(),
            root: req.root.clone(),
            file: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            backing: req.backing.to_path_buf(),
            sha256,
            size,
            recipe: req.recipe.to_owned(),
            step_id: req.step_id.to_owned(),
            step_name: req.step_name.to_owned(),
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|source| Error::Encode {
            key: req.key.to_string(),
            source,
        })?;
        let dir = self.store.layers_dir();
        let tmp = dir.join(format!(".{}.{}.json.tmp", req.key, self.run));
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(&json).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", &path))?;
        // hard_link fails if the record exists: publishing never replaces another build's layer.
        let record = self.store.record_path(req.key);
        let linked = fs::hard_link(&tmp, &record);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                self.published.push(path.clone());
                Ok(Some(Layer { path, meta }))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.diverged = true;
                Ok(None)
            }
            Err(e) => Err(io_err("publish", &record)(e)),
        }
    }

    /// Ends the lease: removes this run's layer files that were never published. Call it once the
    /// build no longer needs them (after the output was written); drop does the same.
    pub fn finish(self) {}

    fn remove_unpublished(&self) {
        let Ok(entries) = fs::read_dir(self.store.layers_dir()) else {
            return;
        };
        let suffix = format!(".{}.qcow2", self.run);
        for entry in entries.flatten() {
            let path = entry.path();
            let ours = entry.file_name().to_string_lossy().ends_with(&suffix);
            if ours && !self.published.contains(&path) {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

impl Drop for RunLease<'_> {
    fn drop(&mut self) {
        self.remove_unpublished();
        let _ = fs::remove_file(&self.lock_path);
    }
}

impl Drop for CheckpointStore {
    fn drop(&mut self) {
        let _ = self.lock.unlock();
    }
}
