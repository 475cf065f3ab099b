//! A chain's first layer moved onto the build's base file.
//!
//! The first layer's qcow2 header names the base it was made on by path. That path changes
//! while the base's content (the digest the chain's keys cover) does not: a local `file:` base in
//! a moved checkout, or an older imgbake that booted the compressed base instead of its
//! uncompressed copy. Such a layer is not reused as it is (the old path may hold anything by
//! now), and rebuilding it would throw away every step after it. Rewriting the header's backing
//! name (`qemu-img rebase -u`, done by the caller) and re-recording the layer keeps the chain.

use std::fs;
use std::path::Path;

use digest::{CacheKey, hash_file};

use crate::error::io_err;
use crate::store::{TempName, make_private_and_durable, qcow2_backing, write_private_new};
use crate::{CheckpointStore, Error, Layer, LayerMeta, Lookup, Result};

impl CheckpointStore {
    /// The published first-step layers of the chain rooted at `root` whose header names a backing
    /// file other than `base`, intact by their digest. `base` must be absolute.
    pub fn misbased_roots(&self, root: &CacheKey, base: &Path) -> Result<Vec<Layer>> {
        let mut out = Vec::new();
        for info in self.list()? {
            let meta = &info.meta;
            if meta.parent.is_some() || meta.root != *root || meta.backing == base {
                continue;
            }
            if let Lookup::Hit(layer) = self.lookup(&meta.key)? {
                out.push(layer);
            }
        }
        Ok(out)
    }

    /// Re-records `layer` (from [`CheckpointStore::misbased_roots`]) after the caller rewrote its
    /// header to name `base`: the header is checked, the file re-hashed and the record replaced
    /// (a temp name renamed over it). Needs the store to itself
    /// ([`CheckpointStore::open_exclusive`]): a build hashing the layer between the rewrite and
    /// the new record would take it for corrupt.
    pub fn record_rebased(&self, layer: &Layer, base: &Path) -> Result<Layer> {
        if !self.is_exclusive() {
            return Err(Error::NotExclusive {
                path: self.root().to_path_buf(),
            });
        }
        let named = qcow2_backing(&layer.path).map_err(io_err("read", &layer.path))?;
        if named.as_deref() != Some(base) {
            return Err(Error::Io {
                action: "rebase",
                path: layer.path.clone(),
                source: std::io::Error::other(format!(
                    "its header names {}, not {}",
                    named.map_or("no backing file".into(), |b| b.display().to_string()),
                    base.display()
                )),
            });
        }
        make_private_and_durable(&layer.path)?;
        let meta = LayerMeta {
            backing: base.to_path_buf(),
            sha256: hash_file(&layer.path)?,
            size: fs::metadata(&layer.path)
                .map_err(io_err("stat", &layer.path))?
                .len(),
            ..layer.meta.clone()
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|source| Error::Encode {
            key: meta.key.to_string(),
            source,
        })?;
        let record = self.record_path(&meta.key);
        let tmp = TempName(
            self.layers_dir()
                .join(format!(".{}.rebase.json.tmp", meta.key)),
        );
        // A crash between writing and renaming left it; this store is ours alone.
        let _ = fs::remove_file(&tmp.0);
        write_private_new(&tmp.0, &json)?;
        fs::rename(&tmp.0, &record).map_err(io_err("replace", &record))?;
        digest::fsync_dir(&self.layers_dir()).map_err(io_err("sync", self.layers_dir()))?;
        Ok(Layer {
            path: layer.path.clone(),
            meta,
        })
    }
}
