//! checkpoint: imgbake's store of per-step disk checkpoints.
//!
//! After each successful step imgbake freezes the guest's top qcow2 image (a live
//! `blockdev-snapshot` over QMP) and continues on a fresh overlay. The frozen image — a *layer*
//! holding only that step's writes, backed by the previous layer — is published here under the
//! step's checkpoint key. A later build whose keys match boots straight from the newest layer.
//!
//! Main types:
//! - [`CheckpointStore`]: the directory, its lock, and lookups ([`CheckpointStore::lookup`]).
//! - [`RunLease`]: one build's claim on the store; names its in-progress layer files,
//!   publishes them ([`RunLease::publish`]) and ends with [`RunLease::finish`].
//! - [`CacheKey`] (the workspace's `digest::CacheKey`) and [`LayerMeta`]: a checkpoint's
//!   identity and its record.
//! - [`SavedState`] / [`StateMeta`]: a saved VM state (RAM and devices) stored next to its
//!   layer under its own key ([`RunLease::publish_state`], [`CheckpointStore::lookup_state`]),
//!   counted with the layer and removed with it.
//! - [`ChainSecrets`]: the files a chain needs to be resumed (its SSH keys), kept private
//!   (dir 0700, files 0600) and created once per chain ([`CheckpointStore::chain_secrets`]).
//! - [`GcPolicy`] → [`GcPlan`] ([`CheckpointStore::gc_plan`]): what gc would remove and the
//!   bytes it would free, shown as a dry run or carried out by [`CheckpointStore::apply`].
//!
//! A layer counts only once its record (`<key>.json`) exists and the layer file still hashes to
//! the digest in it; anything else is thrown away and reported as a [`Discarded`] item.
//!
//! ```no_run
//! use checkpoint::{CacheKey, CheckpointStore};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = CheckpointStore::open("/var/cache/imgbake/checkpoints".as_ref())?;
//! let key: CacheKey = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".parse()?;
//! match store.lookup(&key)? {
//!     checkpoint::Lookup::Hit(layer) => println!("reuse {}", layer.path.display()),
//!     checkpoint::Lookup::Miss => println!("no checkpoint yet"),
//!     checkpoint::Lookup::Discarded(why) => println!("threw away a broken one: {why}"),
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod error;
mod layer;
mod rebase;
mod secrets;
mod state;
mod store;
mod usage;

/// Checkpoint keys are the workspace's [`digest::CacheKey`], re-exported for callers.
pub use digest::{CacheKey, Sha256};
pub use error::{Error, Result};
pub use layer::{Discarded, Layer, LayerMeta, Lookup, SHARED_RECIPE};
pub use secrets::{ChainSecrets, MakingLock, SecretFiles};
pub use state::{SavedState, StateMeta, StatePublish};
pub use store::{CheckpointStore, PublishRequest, RunLease};
pub use usage::{GcPlan, GcPolicy, LayerInfo, StoreUsage};
