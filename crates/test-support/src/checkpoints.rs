//! Real checkpoint stores for tests of the commands that read them (`imgbake cache …`): chains
//! of real qcow2 layers published through the checkpoint crate's own API.

use std::path::{Path, PathBuf};
use std::process::Command;

use checkpoint::PublishRequest;
pub use checkpoint::{CacheKey, CheckpointStore};

/// One layer for [`publish_chain`].
pub struct LayerSpec {
    /// Its key.
    pub key: CacheKey,
    /// Its step id (`01`).
    pub step_id: String,
    /// Its step name.
    pub step_name: String,
    /// MiB of data written into the layer at 4 MiB (none: an empty overlay).
    pub write_mib: Option<u32>,
}

/// What [`publish_chain`] publishes.
pub struct ChainSpec<'a> {
    /// The store directory (`<cache>/checkpoints`).
    pub store_dir: &'a Path,
    /// The base image the first layer is backed by.
    pub base: &'a Path,
    /// The recipe name recorded.
    pub recipe: &'a str,
    /// The chain's root key.
    pub root: &'a CacheKey,
    /// Publish the chain's first-boot layer (key `root`, step `ready`, recipe
    /// `checkpoint::SHARED_RECIPE`) before `layers`, as a build makes it.
    pub first_boot: bool,
}

/// Publishes `layers` as one chain of real qcow2 files, the first backed by the base image (or
/// by the first boot), each by the one before. Returns the files of `layers`. Needs `qemu-img` and `qemu-io`.
pub fn publish_chain(chain: &ChainSpec<'_>, layers: &[LayerSpec]) -> Vec<PathBuf> {
    let store = CheckpointStore::open(chain.store_dir).unwrap();
    let mut lease = store.lease().unwrap();
    let (mut backing, mut parent, mut files) =
        (chain.base.to_path_buf(), None::<CacheKey>, Vec::new());
    let first_boot = chain.first_boot.then(|| LayerSpec {
        key: *chain.root,
        step_id: "ready".into(),
        step_name: "first boot (cloud-init done)".into(),
        write_mib: None,
    });
    for layer in first_boot.iter().chain(layers) {
        let recipe = if first_boot.as_ref().is_some_and(|f| f.key == layer.key) {
            checkpoint::SHARED_RECIPE
        } else {
            chain.recipe
        };
        let path = lease.layer_path(&layer.key);
        let p = path.to_str().unwrap();
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                backing.to_str().unwrap(),
                p,
            ],
        );
        if let Some(mib) = layer.write_mib {
            run("qemu-io", &["-c", &format!("write -P 0x22 4M {mib}M"), p]);
        }
        let published = lease
            .publish(&PublishRequest {
                key: &layer.key,
                parent: parent.as_ref(),
                root: chain.root,
                backing: &backing,
                recipe,
                step_id: &layer.step_id,
                step_name: &layer.step_name,
            })
            .unwrap();
        assert!(published.is_some());
        if recipe != checkpoint::SHARED_RECIPE {
            files.push(path.clone());
        }
        parent = Some(layer.key);
        backing = path;
    }
    lease.finish().unwrap();
    files
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
