//! Checkpoint keys: a chain of SHA-256s, like image build layers.
//!
//! ```text
//! root    = H("imgbake-checkpoint-root-v1", base identity, disk size, firmware, machine,
//!             seed fingerprint)
//! step(N) = H("imgbake-checkpoint-step-v1", key(N-1), script bytes, env, reboot
//!             [, "secrets", secret names] [, "sealed"])
//! ```
//! where `env` is the sorted `NAME=value` list the script sees *and refers to*: the recipe vars
//! whose env name appears in the script as `$NAME` or `${NAME…}`, plus every entry of the step's
//! own `env:`. So a var change invalidates only the steps that use it (and those after them).
//! `timeout` and `retries` do not change what ends up on the disk and are left out; `reboot`
//! does (the checkpoint is taken after the reboot).
//!
//! Secrets count by **name** only: the names of the recipe's `secrets:` the script refers to
//! (the same `$NAME` scan), never their values. Rotating a token must not rebuild the image, and
//! a key derived from a value would be a hash of the secret sitting in every record and plan
//! (`--no-cache` forces a rebuild when a new value should change the disk). The field is left
//! out when a step refers to no secret, so recipes without secrets keep their keys.
//!
//! The last step's layer is not the same disk as that step's layer would be in a longer recipe:
//! imgbake seals the guest after it (removes its build user, keys and cloud-init instance) and
//! powers it off, and the layer is the powered-off disk. So the last step's key has the
//! `sealed` field, and a recipe that goes on after that step never reuses the sealed layer.
//!
//! Every field is length-prefixed, so no two different inputs hash the same bytes.

use std::collections::BTreeMap;
use std::fmt;

use crate::Recipe;
use crate::model::{BaseLocation, Step, StepId};
use crate::vars::{env_name, script_references};
use digest::{CacheKey, Hasher, Sha256};

/// What is known about the base image when keys are computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseIdentity {
    /// The image's SHA-256 (from the recipe's `sha256:` or after fetching and checking it).
    Digest(Sha256),
    /// Before fetching, for a `file:` checksum: the image location and the sums file. Keys
    /// computed from this are provisional; once fetched, use [`BaseIdentity::Digest`].
    Unfetched {
        /// The image location.
        image: BaseLocation,
        /// The SHA256SUMS location.
        sums: BaseLocation,
    },
}

impl fmt::Display for BaseIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseIdentity::Digest(d) => write!(f, "sha256:{d}"),
            BaseIdentity::Unfetched { image, sums } => {
                write!(f, "{image} (checked against {sums}, not fetched yet)")
            }
        }
    }
}

/// The checkpoint keys of a recipe: one for the prepared base disk, one per step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointChain {
    /// The key of the state before step one (base + disk size + seed).
    pub root: CacheKey,
    /// The key of the state after each step, in step order.
    pub steps: Vec<(StepId, CacheKey)>,
}

impl CheckpointChain {
    /// The key after step `id`.
    pub fn key(&self, id: &StepId) -> Option<CacheKey> {
        self.steps.iter().find(|(s, _)| s == id).map(|(_, k)| *k)
    }

    /// The key of the state a run resuming *at* step `id` starts from (the key after the step
    /// before it, or the root for the first step).
    pub fn key_before(&self, id: &StepId) -> Option<CacheKey> {
        let index = self.steps.iter().position(|(s, _)| s == id)?;
        Some(match index {
            0 => self.root,
            i => self.steps[i - 1].1,
        })
    }
}

struct KeyHasher(Hasher);

impl KeyHasher {
    fn new(domain: &str) -> KeyHasher {
        let mut h = KeyHasher(Hasher::new());
        h.field(domain.as_bytes());
        h
    }
    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }
    fn finish(self) -> CacheKey {
        CacheKey(self.0.finish())
    }
}

fn location_bytes(l: &BaseLocation) -> Vec<u8> {
    match l {
        BaseLocation::Http(u) => format!("http:{u}").into_bytes(),
        BaseLocation::File(p) => format!("file:{}", p.display()).into_bytes(),
    }
}

impl Recipe {
    /// What the recipe alone says about the base image: the digest when the checksum is an
    /// inline `sha256:`, else the image and sums locations.
    pub fn base_identity(&self) -> BaseIdentity {
        match &self.base.checksum {
            crate::Checksum::Sha256(d) => BaseIdentity::Digest(*d),
            crate::Checksum::SumsFile(sums) => BaseIdentity::Unfetched {
                image: self.base.location.clone(),
                sums: sums.clone(),
            },
        }
    }

    /// The environment a step's checkpoint key covers: the vars the script refers to (by env
    /// name) and the step's own `env`, as `NAME → value`.
    pub fn step_key_env(&self, step: &Step) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self
            .vars
            .iter()
            .map(|(k, v)| (env_name(k), v.clone()))
            .filter(|(name, _)| script_references(&step.contents, name))
            .collect();
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// The secrets a step's checkpoint key covers: the names of [`Recipe::secrets`] the script
    /// refers to as `$NAME` or `${NAME…}` (names only, never values).
    pub fn step_key_secrets(&self, step: &Step) -> Vec<String> {
        self.secrets
            .iter()
            .filter(|name| script_references(&step.contents, name))
            .cloned()
            .collect()
    }

    /// Computes the checkpoint chain (see the [module docs](crate::keys) for the rule).
    /// `seed_fingerprint` covers the cloud-init seed inputs that shape the disk (user name,
    /// user-data template…); pass the same bytes for the same seed.
    pub fn checkpoint_keys(&self, base: &BaseIdentity, seed_fingerprint: &[u8]) -> CheckpointChain {
        let mut h = KeyHasher::new("imgbake-checkpoint-root-v1");
        match base {
            BaseIdentity::Digest(d) => h.field(b"digest").field(d.as_bytes()),
            BaseIdentity::Unfetched { image, sums } => h
                .field(b"unfetched")
                .field(&location_bytes(image))
                .field(&location_bytes(sums)),
        };
        h.field(&self.vm.disk_size.as_u64().to_le_bytes())
            .field(self.vm.firmware.as_str().as_bytes())
            .field(self.vm.machine.as_bytes())
            .field(seed_fingerprint);
        let root = h.finish();

        let mut prev = root;
        let last = self.steps.len().saturating_sub(1);
        let steps = self
            .steps
            .iter()
            .enumerate()
            .map(|(index, step)| {
                let mut h = KeyHasher::new("imgbake-checkpoint-step-v1");
                h.field(prev.0.as_bytes()).field(&step.contents);
                let env = self.step_key_env(step);
                h.field(&(env.len() as u64).to_le_bytes());
                for (k, v) in &env {
                    h.field(k.as_bytes()).field(v.as_bytes());
                }
                h.field(&[u8::from(step.reboot)]);
                let secrets = self.step_key_secrets(step);
                if !secrets.is_empty() {
                    h.field(b"secrets")
                        .field(&(secrets.len() as u64).to_le_bytes());
                    for name in &secrets {
                        h.field(name.as_bytes());
                    }
                }
                if index == last {
                    h.field(b"sealed");
                }
                prev = h.finish();
                (step.id, prev)
            })
            .collect();
        CheckpointChain { root, steps }
    }
}
