//! Where a build starts: which checkpoints it reuses and which steps it runs.

use checkpoint::{CacheKey, CheckpointStore, Discarded, Layer};
use recipe::{CheckpointChain, Recipe, StepId};

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

/// The decision: layers to boot from (a prefix of the chain) and what was thrown away.
#[derive(Debug)]
pub struct StartPoint {
    /// Reused layers, first step first; the build boots from the last one (or the base if empty).
    pub reused: Vec<Layer>,
    /// Broken checkpoints removed on the way.
    pub discarded: Vec<Discarded>,
}

/// Decides where the build starts.
pub fn decide(
    recipe: &Recipe,
    chain: &CheckpointChain,
    store: &CheckpointStore,
    request: &StartRequest,
) -> Result<StartPoint> {
    let keys: Vec<CacheKey> = chain.steps.iter().map(|(_, key)| *key).collect();
    match request {
        StartRequest::Fresh => Ok(StartPoint {
            reused: Vec::new(),
            discarded: Vec::new(),
        }),
        StartRequest::Reuse => {
            let (reused, discarded) = store.reusable_prefix(&keys)?;
            Ok(StartPoint { reused, discarded })
        }
        StartRequest::ResumeFrom(id) => {
            recipe.step(id).map_err(|source| Error::Recipe { source })?;
            let index = chain
                .steps
                .iter()
                .position(|(step, _)| step == id)
                .expect("a step of the recipe is in its chain");
            let (mut reused, discarded) = store.reusable_prefix(&keys[..index])?;
            if reused.len() < index {
                let missing = chain.steps[reused.len()].0;
                return Err(Error::NoCheckpoint {
                    resume_from: *id,
                    missing,
                    before: chain.steps[index - 1].0,
                    discarded: discarded.iter().map(ToString::to_string).collect(),
                });
            }
            reused.truncate(index);
            Ok(StartPoint { reused, discarded })
        }
    }
}
