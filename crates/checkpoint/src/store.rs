use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use digest::{CacheKey, hash_file};

use crate::error::io_err;
use crate::layer::key_from_name;
use crate::{ChainSecrets, Discarded, Error, Layer, LayerMeta, Lookup, Result};

/// The checkpoint directory:
///
/// ```text
/// lock                      shared by running builds, exclusive for gc / rm
/// layers/<key>.<run>.qcow2  a layer file (in progress until its record exists)
/// layers/<key>.json         the record that publishes a layer
/// states/<state key>.<run>.zst  a saved VM state (see `state.rs`), published by
/// states/<state key>.json   its record; removed with its layer
/// chains/<root key>/        files a chain needs to be resumable (the SSH keys)
/// runs/<run>.lock           held by a live build; lets a sweep tell its files from a dead one's
/// ```
#[derive(Debug)]
pub struct CheckpointStore {
    root: PathBuf,
    lock: File,
    /// Opened with [`CheckpointStore::open_exclusive`]: no build can be running.
    exclusive: bool,
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
            exclusive: false,
        })
    }

    /// Opens the store for maintenance (gc, rm): fails with [`Error::Busy`] while a build runs.
    pub fn open_exclusive(root: &Path) -> Result<Self> {
        let lock = Self::prepare(root)?;
        match lock.try_lock() {
            Ok(()) => Ok(Self {
                root: root.to_path_buf(),
                lock,
                exclusive: true,
            }),
            Err(TryLockError::WouldBlock) => Err(Error::Busy {
                path: root.join("lock"),
            }),
            Err(TryLockError::Error(e)) => Err(io_err("lock", root.join("lock"))(e)),
        }
    }

    /// [`CheckpointStore::open_exclusive`], but `None` instead of [`Error::Busy`] while a build
    /// runs: for work that can wait for a later build.
    pub fn try_open_exclusive(root: &Path) -> Result<Option<Self>> {
        match Self::open_exclusive(root) {
            Ok(store) => Ok(Some(store)),
            Err(Error::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn prepare(root: &Path) -> Result<File> {
        for dir in [
            root.to_path_buf(),
            root.join("layers"),
            root.join("states"),
            root.join("chains"),
            root.join("runs"),
        ] {
            // The store holds chains' private keys and layers with each step's env files:
            // only the owner may look. An existing directory keeps its mode; tighten it.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
                .map_err(io_err("create", &dir))?;
        }
        let path = root.join("lock");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
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

    pub(crate) fn record_path(&self, key: &CacheKey) -> PathBuf {
        self.layers_dir().join(format!("{key}.json"))
    }

    pub(crate) fn chains_dir(&self) -> PathBuf {
        self.root.join("chains")
    }

    /// Whether this store was opened with [`CheckpointStore::open_exclusive`].
    pub(crate) fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// The secrets of the chain rooted at `root` (its SSH keys): what resuming the chain needs.
    /// Its directory, `chains/<root>/`, is created 0700 now; the secrets themselves are made by
    /// [`ChainSecrets::create_or_load`].
    pub fn chain_secrets(&self, root: &CacheKey) -> Result<ChainSecrets> {
        ChainSecrets::open(self.chains_dir().join(root.to_string()))
    }

    /// Removes layer files and temp files of dead runs (the run id is in every name this store
    /// writes) that no record publishes: what a crash or Ctrl-C cut off. Files of live runs and
    /// temp names without a run id are left alone: another build may be writing them. Returns
    /// what it threw away so the caller can say so.
    pub fn sweep_incomplete(&self) -> Result<Vec<Discarded>> {
        let mut discarded = Vec::new();
        let dir = self.layers_dir();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((key, run)) = parse_layer_file_name(&name) else {
                if let Some(run) = parse_record_temp_name(&name)
                    && !self.run_is_live(run)
                {
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
        self.sweep_incomplete_states(|run| self.run_is_live(run))?;
        self.sweep_dead_runs()?;
        Ok(discarded)
    }

    fn is_published_file(&self, key: &str, file_name: &str) -> bool {
        let Some(key) = key_from_name(key) else {
            return false;
        };
        self.read_record(&key)
            .is_ok_and(|meta| meta.is_some_and(|m| m.file == file_name))
    }

    fn run_is_live(&self, run: &str) -> bool {
        self.locked(&self.root.join("runs").join(format!("{run}.lock")))
    }

    /// Whether someone holds the lock on `path` (a non-blocking attempt; a missing file is not).
    fn locked(&self, path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        matches!(file.try_lock(), Err(TryLockError::WouldBlock))
    }

    fn sweep_dead_runs(&self) -> Result<()> {
        let dir = self.root.join("runs");
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // `.<run>.lock.tmp`: a lease cut off between creating and naming its lock.
            let run = name.strip_suffix(".lock").or_else(|| {
                name.strip_prefix('.')
                    .and_then(|n| n.strip_suffix(".lock.tmp"))
            });
            if run.is_some() && !self.locked(&entry.path()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    pub(crate) fn read_record(
        &self,
        key: &CacheKey,
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
            Ok(meta) if &meta.key == key && !is_plain_file_name(&meta.file) => {
                Err(Discarded::BadRecord {
                    file: path,
                    reason: format!(
                        "its layer file {:?} is not a plain file name inside the store",
                        meta.file
                    ),
                })
            }
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
    pub fn lookup(&self, key: &CacheKey) -> Result<Lookup> {
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
                key: *key,
                file: path,
            }));
        }
        let actual = hash_file(&path)?;
        if actual != meta.sha256 {
            self.discard(key, Some(&path))?;
            return Ok(Lookup::Discarded(Discarded::Corrupt {
                key: *key,
                expected: meta.sha256,
                actual,
            }));
        }
        if let Err(reason) = self.check_backing(&path, &meta) {
            self.discard(key, Some(&path))?;
            return Ok(Lookup::Discarded(Discarded::BadRecord {
                file: self.record_path(key),
                reason,
            }));
        }
        Ok(Lookup::Hit(Layer { path, meta }))
    }

    /// The layer's qcow2 header must name the backing file its record names, and a layer with
    /// a parent must be backed by a layer of the parent's key in this store: otherwise booting
    /// it would read some other disk than the one the record vouches for.
    fn check_backing(&self, path: &Path, meta: &LayerMeta) -> std::result::Result<(), String> {
        let header =
            qcow2_backing(path).map_err(|e| format!("its layer {}: {e}", path.display()))?;
        let actual = header.map(|b| {
            if b.is_absolute() {
                b
            } else {
                path.parent().unwrap_or(Path::new("")).join(b)
            }
        });
        if actual.as_deref() != Some(meta.backing.as_path()) {
            return Err(format!(
                "its layer {} is backed by {}, not by the recorded {}",
                path.display(),
                actual.map_or("nothing".into(), |b| b.display().to_string()),
                meta.backing.display()
            ));
        }
        if let Some(parent) = &meta.parent {
            let parent_layer = meta.backing.parent() == Some(self.layers_dir().as_path())
                && meta
                    .backing
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_layer_file_name)
                    .is_some_and(|(k, _)| k == parent.to_string());
            if !parent_layer {
                return Err(format!(
                    "its backing file {} is not a layer of its parent {}",
                    meta.backing.display(),
                    parent.short()
                ));
            }
        }
        Ok(())
    }

    /// The longest prefix of `keys` (a chain, first step first) that is published, intact and
    /// linked parent to child, its first layer backed by `base` (this build's base file). A first
    /// layer backed by another path is not used: that file's content is not what the key vouches
    /// for (see [`CheckpointStore::record_rebased`]). Broken checkpoints met on the way are removed
    /// and returned.
    pub fn reusable_prefix(
        &self,
        keys: &[CacheKey],
        base: &Path,
    ) -> Result<(Vec<Layer>, Vec<Discarded>)> {
        let mut layers: Vec<Layer> = Vec::new();
        let mut discarded = Vec::new();
        for key in keys {
            match self.lookup(key)? {
                Lookup::Hit(layer) => {
                    let expected_backing = layers.last().map_or(base, |p| p.path.as_path());
                    let linked = layer.meta.parent.as_ref() == layers.last().map(|l| &l.meta.key)
                        && layer.meta.backing == expected_backing;
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
    fn discard(&self, key: &CacheKey, file: Option<&Path>) -> Result<()> {
        let doomed = std::collections::BTreeSet::from([*key]);
        self.remove_with_descendants(self.list()?, doomed)?;
        self.unpublish(key, file)
    }

    pub(crate) fn unpublish(&self, key: &CacheKey, file: Option<&Path>) -> Result<()> {
        // A state without its layer can never be restored: it goes first.
        self.remove_states_of(key)?;
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
        let runs = self.root.join("runs");
        let path = runs.join(format!("{run}.lock"));
        // Locked before it has its final name: a sweep that sees `<run>.lock` unlocked may
        // take the run for dead and delete its files.
        let tmp = runs.join(format!(".{run}.lock.tmp"));
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        lock.try_lock()
            .map_err(|e| io_err("lock", &tmp)(e.into()))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        Ok(RunLease {
            store: self,
            run,
            lock_path: path,
            lock: Some(lock),
            published: Vec::new(),
            published_states: Vec::new(),
            diverged: false,
        })
    }
}

/// `.<64 hex>.<run>.json.tmp` (a record being published) → run.
pub(crate) fn parse_record_temp_name(name: &str) -> Option<&str> {
    let stem = name.strip_prefix('.')?.strip_suffix(".json.tmp")?;
    let (key, run) = stem.split_once('.')?;
    (key.len() == 64 && !run.is_empty() && !run.contains('.')).then_some(run)
}

/// A record's `file` must name a file directly inside `layers/`: no path, no `..`.
fn is_plain_file_name(file: &str) -> bool {
    let mut parts = Path::new(file).components();
    matches!(parts.next(), Some(Component::Normal(n)) if n == file) && parts.next().is_none()
}

/// The backing file name in a qcow2 header (`None`: no backing file). The header is big-endian:
/// magic `QFI\xfb`, then at byte 8 the name's offset (u64) and at 16 its length (u32).
pub(crate) fn qcow2_backing(path: &Path) -> io::Result<Option<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let mut file = File::open(path)?;
    let mut header = [0u8; 20];
    file.read_exact(&mut header)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a qcow2 image"))?;
    if header[..4] != *b"QFI\xfb" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a qcow2 image",
        ));
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(header[16..20].try_into().unwrap_or_default());
    if offset == 0 || len == 0 {
        return Ok(None);
    }
    // qemu limits the name to 1023 bytes; a larger one is a broken header.
    if len > 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "backing file name too long",
        ));
    }
    let mut name = vec![0u8; len as usize];
    io::Seek::seek(&mut file, io::SeekFrom::Start(offset))?;
    file.read_exact(&mut name)?;
    Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(&name))))
}

/// `<64 hex>.<run>.qcow2` → (key, run).
fn parse_layer_file_name(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".qcow2")?;
    let (key, run) = stem.split_once('.')?;
    (key.len() == 64 && !run.is_empty()).then_some((key, run))
}

/// One build's claim on the store. Layer files it names are its own until published; when the
/// lease ends ([`RunLease::finish`], or drop as a backstop) its unpublished files are removed
/// and its run lock is released.
#[derive(Debug)]
pub struct RunLease<'a> {
    store: &'a CheckpointStore,
    run: String,
    lock_path: PathBuf,
    /// The run lock; `None` once [`RunLease::finish`] released it.
    lock: Option<File>,
    published: Vec<PathBuf>,
    /// State files this run published.
    pub(crate) published_states: Vec<PathBuf>,
    /// Set once another build won a publish race: this run's later layers chain to a file that
    /// will never be published, so they must not be published either.
    diverged: bool,
}

/// What a layer needs besides its file to be published.
#[derive(Clone, Debug)]
pub struct PublishRequest<'k> {
    /// The step's key.
    pub key: &'k CacheKey,
    /// The previous step's key (`None` for the first step).
    pub parent: Option<&'k CacheKey>,
    /// The chain's root key.
    pub root: &'k CacheKey,
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

    /// The store this lease is on.
    pub fn store(&self) -> &CheckpointStore {
        self.store
    }

    /// Where this run writes the layer for `key` (and what the next overlay names as backing).
    pub fn layer_path(&self, key: &CacheKey) -> PathBuf {
        self.store
            .layers_dir()
            .join(format!("{key}.{}.qcow2", self.run))
    }

    /// Whether a layer for `key` on `backing` would be published, as far as can be told
    /// without hashing anything: not after this run diverged, and not when an intact-looking
    /// sibling (a record for `key` on the same backing file whose layer file is there) holds
    /// the key already — that one wins. A build skips what only a published layer needs (its
    /// VM state, a RAM image of ~0.2 GB and a second of the guest stopped) when this says no;
    /// a `true` may still end unpublished if another build gets there first.
    pub fn would_publish(&self, key: &CacheKey, backing: &Path) -> bool {
        if self.diverged {
            return false;
        }
        match self.store.read_record(key) {
            Ok(Some(meta)) => {
                meta.backing != backing || !self.store.layers_dir().join(&meta.file).is_file()
            }
            Ok(None) | Err(_) => true,
        }
    }

    /// Publishes the frozen layer for `req.key`: hashes it and writes its record. If another
    /// build published the same key first, this one stays unpublished (theirs wins) and `None`
    /// is returned: this run's later layers still chain to its own file.
    pub fn publish(&mut self, req: &PublishRequest<'_>) -> Result<Option<Layer>> {
        if self.diverged {
            return Ok(None);
        }
        let sha256 = hash_file(&self.layer_path(req.key))?;
        self.publish_hashed(req, sha256)
    }

    /// [`RunLease::publish`] with the layer's sha256 already taken (by `digest::hash_file` of
    /// [`RunLease::layer_path`]), so an async caller can hash a multi-GB layer off its executor.
    /// A wrong digest publishes nothing usable: the next lookup discards the layer.
    pub fn publish_hashed(
        &mut self,
        req: &PublishRequest<'_>,
        sha256: digest::Sha256,
    ) -> Result<Option<Layer>> {
        if self.diverged {
            return Ok(None);
        }
        let path = self.layer_path(req.key);
        let size = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
        let meta = LayerMeta {
            key: *req.key,
            parent: req.parent.copied(),
            root: *req.root,
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
        let record = self.store.record_path(req.key);
        // Another build's record for this key wins (see `link_record`).
        make_private_and_durable(&path)?;
        let tmp = dir.join(format!(".{}.{}.json.tmp", req.key, self.run));
        if link_record(tmp.clone(), &json, &record)?
            || (self.replace_stale(req)? && link_record(tmp, &json, &record)?)
        {
            self.published.push(path.clone());
            Ok(Some(Layer { path, meta }))
        } else {
            self.diverged = true;
            Ok(None)
        }
    }

    /// Another record holds `req.key`. If it is a sibling of this layer (an intact layer on the
    /// same backing file: a concurrent build got there first) it wins. Anything else is stale —
    /// broken, or chained to a file this build did not reuse (a first layer on an older base
    /// path) — and would otherwise keep this build's layer, and every layer after it, from ever
    /// being published: it is removed with its descendants, and `true` says to publish again.
    fn replace_stale(&self, req: &PublishRequest<'_>) -> Result<bool> {
        match self.store.lookup(req.key)? {
            Lookup::Hit(existing) if existing.meta.backing == req.backing => Ok(false),
            Lookup::Hit(existing) => {
                self.store.discard(req.key, Some(&existing.path))?;
                Ok(true)
            }
            // Lookup already removed a broken one.
            Lookup::Miss | Lookup::Discarded(_) => Ok(true),
        }
    }

    /// Ends the lease: removes this run's layer files that were never published, then its run
    /// lock file, and releases the lock. Call it once the build no longer needs the files (after
    /// the output was written); drop does the same as a backstop but cannot report errors.
    pub fn finish(mut self) -> Result<()> {
        let removed = self.remove_unpublished();
        let released = self.release();
        removed.and(released)
    }

    fn remove_unpublished(&self) -> Result<()> {
        let layers = self.remove_unpublished_in(
            &self.store.layers_dir(),
            &format!(".{}.qcow2", self.run),
            &self.published,
        );
        let states = self.remove_unpublished_in(
            &self.store.states_dir(),
            &format!(".{}.zst", self.run),
            &self.published_states,
        );
        layers.and(states)
    }

    fn remove_unpublished_in(&self, dir: &Path, suffix: &str, published: &[PathBuf]) -> Result<()> {
        let mut first_error = None;
        for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
            let entry = entry.map_err(io_err("read", dir))?;
            let path = entry.path();
            let ours = entry.file_name().to_string_lossy().ends_with(suffix);
            if ours && !published.contains(&path) {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // Keep going: the other files should still go.
                    Err(e) => {
                        first_error.get_or_insert_with(|| io_err("remove", &path)(e));
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the run lock file (while still holding the lock, so no sweep sees it dead while
    /// this run's files exist), then releases the lock. Does nothing the second time.
    fn release(&mut self) -> Result<()> {
        let Some(lock) = self.lock.take() else {
            return Ok(());
        };
        let removed = match fs::remove_file(&self.lock_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &self.lock_path)(e)),
        };
        let unlocked = lock.unlock().map_err(io_err("unlock", &self.lock_path));
        removed.and(unlocked)
    }
}

/// Makes a file about to be published owner-only (layers and states hold a chain's keys, env
/// files, guest RAM) and flushes it to disk, so a record never names data still in flight.
pub(crate) fn make_private_and_durable(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err("chmod", path))?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", path))
}

/// Publishes `json` as `record`: written under `tmp` (whose name carries the run id, so a sweep
/// can tell a live run's temp from a dead one's), then hard-linked into place, not renamed:
/// hard_link fails if the record exists, so publishing never replaces another build's record.
/// `false` when another build's record was there first; the temp is removed either way.
pub(crate) fn link_record(tmp: PathBuf, json: &[u8], record: &Path) -> Result<bool> {
    let tmp = TempName(tmp);
    write_private_new(&tmp.0, json)?;
    let linked = fs::hard_link(&tmp.0, record);
    drop(tmp);
    match linked {
        Ok(()) => {
            let dir = record.parent().unwrap_or(Path::new("."));
            digest::fsync_dir(dir).map_err(io_err("sync", dir))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err("publish", record)(e)),
    }
}

/// Writes `json` to a new owner-only file at `path` and flushes it (a record about to be linked or
/// renamed into place).
pub(crate) fn write_private_new(path: &Path, json: &[u8]) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(json).and_then(|()| f.sync_all()))
        .map_err(io_err("write", path))
}

/// A temp file removed when dropped (its contents live on under the name it was linked to).
pub(crate) struct TempName(pub(crate) PathBuf);

impl Drop for TempName {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Drop for RunLease<'_> {
    /// The backstop for a lease that was not finished (an error or a panic on the way): the same
    /// clean-up, errors ignored.
    fn drop(&mut self) {
        if self.lock.is_some() {
            let _ = self.remove_unpublished();
            let _ = self.release();
        }
    }
}

impl Drop for CheckpointStore {
    fn drop(&mut self) {
        let _ = self.lock.unlock();
    }
}
