//! The plan of a build, computed in one place for `bake`, `imgbake plan` and `imgbake cache gc`:
//! the checkpoint key chain (from the base's identity and the seed fingerprint), where the
//! build starts (reuse, `--resume-from`, fresh), and what the exported image is verified
//! against.

use std::path::Path;

use checkpoint::{CacheKey, CheckpointStore, Discarded, Layer};
use provisioner::BuildKeys;
use recipe::{BaseIdentity, CheckpointChain, Recipe, StepId};

use crate::setup::seed_config;
use crate::{Error, Result};

/// How the user asked the build to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartRequest {
    /// Reuse the longest chain of matching checkpoints (the default).
    Reuse,
    /// Start from the checkpoint after the step before this one (`--resume-from`).
    ResumeFrom(StepId),
    /// Ignore checkpoints (`--no-cache`); the build still publishes its own.
    Fresh,
}

/// The step id of the chain's layer before step one: the guest's first boot, taken once
/// cloud-init is done ("ready"). Its key is the chain's root key, which depends on the base,
/// the disk and the machine only, so every recipe on the same base builds on it.
pub const READY_STEP_ID: &str = "ready";

/// Where a build starts: layers to boot from (a prefix of the chain) and what was thrown away.
#[derive(Debug)]
pub struct StartPoint {
    /// The chain's first-boot layer ([`READY_STEP_ID`]), when it is reused: the first step's
    /// layer is backed by it.
    pub ready: Option<Layer>,
    /// Reused step layers, first step first; the build boots from the last one (else from
    /// `ready`, else the base).
    pub reused: Vec<Layer>,
    /// Broken checkpoints removed on the way.
    pub discarded: Vec<Discarded>,
}

impl StartPoint {
    /// The id of the newest reused step, if any.
    pub fn last_step(&self) -> Option<String> {
        self.reused.last().map(|l| l.meta.step_id.clone())
    }

    /// The newest reused layer, step or first boot: what the build boots (or restores) from.
    pub fn newest(&self) -> Option<&Layer> {
        self.reused.last().or(self.ready.as_ref())
    }
}

/// The checkpoint keys of one recipe, as a build makes them.
#[derive(Clone, Debug)]
pub struct BuildPlan {
    /// How the base image entered the keys.
    pub base: BaseIdentity,
    /// The seed fingerprint that entered key(0).
    pub seed_fingerprint: digest::Sha256,
    /// key(0) and the key after each step.
    pub chain: CheckpointChain,
}

impl BuildPlan {
    /// The plan of `recipe` on a base identified by `base` (its digest once fetched).
    pub fn new(recipe: &Recipe, base: BaseIdentity) -> BuildPlan {
        let seed_fingerprint = seed_fingerprint();
        let chain = recipe.checkpoint_keys(&base, seed_fingerprint.as_bytes());
        BuildPlan {
            base,
            seed_fingerprint,
            chain,
        }
    }

    /// The plan as a build would make it today, without the network: the recipe's own
    /// `sha256:`, else the digest of the base already in the cache under `cache_dir`.
    pub async fn offline(recipe: &Recipe, cache_dir: &Path) -> Result<BuildPlan> {
        let identity = match recipe.base_identity() {
            BaseIdentity::Unfetched { .. } => {
                let cache = fetch::BaseCache::open(cache_dir.join("base"))?;
                let options = fetch::FetchOptions {
                    offline: true,
                    ..fetch::FetchOptions::default()
                };
                let source = crate::setup::base_source(&recipe.base);
                let base = cache
                    .fetch(
                        &source,
                        &options,
                        &|_| {},
                        tokio_util::sync::CancellationToken::new(),
                    )
                    .await?;
                BaseIdentity::Digest(base.digest)
            }
            known => known,
        };
        Ok(BuildPlan::new(recipe, identity))
    }

    /// True while the base is identified by URL rather than digest (keys are provisional).
    pub fn provisional(&self) -> bool {
        !matches!(self.base, BaseIdentity::Digest(_))
    }

    /// The store key before step one.
    pub fn root_key(&self) -> CacheKey {
        self.chain.root
    }

    /// The store key after each step, in step order.
    pub fn step_keys(&self) -> Vec<CacheKey> {
        self.chain.steps.iter().map(|(_, k)| *k).collect()
    }

    /// The chain's cloud-init instance id: a guest resumed from a checkpoint must not run
    /// cloud-init's per-instance modules again, so every build of the chain uses the same one.
    pub fn instance_id(&self) -> String {
        format!("imgbake-{}", &self.chain.root.to_string()[..16])
    }

    /// The store keys of the whole chain: the first boot's (the root key), then each step's.
    pub fn layer_keys(&self) -> Vec<CacheKey> {
        std::iter::once(self.root_key())
            .chain(self.step_keys())
            .collect()
    }

    /// Decides where the build starts.
    pub fn start(
        &self,
        recipe: &Recipe,
        store: &CheckpointStore,
        request: &StartRequest,
        base: &Path,
    ) -> Result<StartPoint> {
        let keys = self.layer_keys();
        let (mut layers, discarded) = match request {
            StartRequest::Fresh => (Vec::new(), Vec::new()),
            StartRequest::Reuse => store.reusable_prefix(&keys, base)?,
            StartRequest::ResumeFrom(id) => {
                recipe.step(id).map_err(|source| Error::Recipe { source })?;
                // The chain has one key per recipe step, so a step of the recipe is in it.
                let index = self
                    .chain
                    .steps
                    .iter()
                    .position(|(step, _)| step == id)
                    .unwrap_or(self.chain.steps.len());
                // The first boot and the steps before `id`; the first boot is required only
                // when a step is.
                let (mut layers, discarded) = store.reusable_prefix(&keys[..=index], base)?;
                let steps = layers.len().saturating_sub(1);
                if index > 0 && steps < index {
                    return Err(Error::NoCheckpoint {
                        resume_from: *id,
                        missing: self.chain.steps[steps].0,
                        before: self.chain.steps[index - 1].0,
                        discarded: discarded.iter().map(ToString::to_string).collect(),
                    });
                }
                layers.truncate(index + 1);
                (layers, discarded)
            }
        };
        let ready = (!layers.is_empty()).then(|| layers.remove(0));
        Ok(StartPoint {
            ready,
            reused: layers,
            discarded,
        })
    }
}

/// The digest of everything in the build's cloud-init seed except its per-chain keys and
/// instance id: the input the recipe's checkpoint keys take as "seed inputs". No recipe input
/// is in the seed, so this changes only with imgbake's seed itself.
pub fn seed_fingerprint() -> digest::Sha256 {
    // Keys and instance id do not enter the fingerprint, so any pair will do here.
    let config = seed_config("fingerprint", &BuildKeys::generate());
    seed::fingerprint(&config)
}

/// What the exported image of `recipe` is verified against offline.
pub fn expectations(recipe: &Recipe) -> inspect::Expectations {
    let nvidia = recipe.verify.nvidia.as_ref();
    inspect::Expectations {
        enable_gpu_firmware: nvidia.and_then(|n| n.enable_gpu_firmware),
        driver_branch: nvidia.and_then(|n| n.driver_branch.clone()),
        hygiene: recipe.verify.hygiene,
        build_user: crate::BUILD_USER.to_owned(),
        // The recipe's own list, else the models the image is published for.
        gpu_models: nvidia
            .map(|n| n.gpu_models.clone())
            .filter(|m| !m.is_empty())
            .or_else(|| recipe.payload.gpu.as_ref().map(|g| g.models.clone()))
            .unwrap_or_default(),
        build_hostname: Some(crate::setup::BUILD_HOSTNAME.to_owned()),
    }
}
