//! One checkpoint, one maker: builds that share a chain (the same recipe twice, or recipes with
//! the same first steps on the same base, e.g. `--jobs 2`) take turns at the checkpoint they
//! would both make. The first takes the checkpoint's lock
//! (`checkpoint::ChainSecrets::try_lock_making`) and holds it until the layer is published;
//! the other waits, then plans again and starts from that layer. Without this both would make
//! it and the loser of the race to publish it would keep none of its later layers.

use std::path::Path;
use std::time::Duration;

use checkpoint::{CacheKey, ChainSecrets, CheckpointStore, Lookup, MakingLock};
use recipe::Recipe;
use tokio_util::sync::CancellationToken;

use crate::events::Emitter;
use crate::plan::{BuildPlan, READY_STEP_ID, StartPoint, StartRequest};
use crate::{BakeEvent, Error, Result};

/// How often a waiting build looks again (making a checkpoint takes seconds to hours).
const POLL: Duration = Duration::from_millis(500);

/// What planning a build's start needs.
pub(crate) struct Planner<'x> {
    pub plan: &'x BuildPlan,
    pub recipe: &'x Recipe,
    pub store: &'x CheckpointStore,
    pub request: &'x StartRequest,
    pub base: &'x Path,
    pub secrets: &'x ChainSecrets,
    pub events: &'x Emitter,
}

impl Planner<'_> {
    /// Where the build starts, with the lock on the first checkpoint it makes. While another
    /// build makes that checkpoint, waits for it (saying so once per checkpoint) and plans
    /// again. `--no-cache` builds neither wait nor lock.
    pub async fn start(
        &self,
        cancel: &CancellationToken,
    ) -> Result<(StartPoint, Option<MakingLock>)> {
        let mut start = self.plan_once()?;
        if *self.request == StartRequest::Fresh {
            return Ok((start, None));
        }
        loop {
            let Some((id, key)) = next_to_make(self.plan, &start) else {
                return Ok((start, None));
            };
            let lock = match self.secrets.try_lock_making(&key)? {
                Some(lock) => lock,
                None => {
                    self.events.emit(BakeEvent::WaitingForCheckpoint { id });
                    self.wait_for(&key, cancel).await?
                }
            };
            // Still not published (the common case: no other build made it): the plan stands,
            // without hashing the reused layers once more.
            match self.store.lookup(&key)? {
                Lookup::Miss => return Ok((start, Some(lock))),
                Lookup::Discarded(why) => self.events.emit(BakeEvent::CheckpointDiscarded {
                    reason: why.to_string(),
                }),
                Lookup::Hit(_) => {}
            }
            // Published meanwhile, by the build this one waited for or between planning and
            // locking: plan again. `--resume-from` remakes a published checkpoint on purpose.
            start = self.plan_once()?;
            if next_to_make(self.plan, &start).is_some_and(|(_, next)| next == key) {
                return Ok((start, Some(lock)));
            }
        }
    }

    fn plan_once(&self) -> Result<StartPoint> {
        let start = self
            .plan
            .start(self.recipe, self.store, self.request, self.base)?;
        for discarded in &start.discarded {
            self.events.emit(BakeEvent::CheckpointDiscarded {
                reason: discarded.to_string(),
            });
        }
        Ok(start)
    }

    async fn wait_for(&self, key: &CacheKey, cancel: &CancellationToken) -> Result<MakingLock> {
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = cancel.cancelled() => return Err(Error::Interrupted { last_checkpoint: None }),
            }
            if let Some(lock) = self.secrets.try_lock_making(key)? {
                return Ok(lock);
            }
        }
    }
}

/// The first checkpoint a build starting at `start` makes (its id and key), if any.
pub(crate) fn next_to_make(plan: &BuildPlan, start: &StartPoint) -> Option<(String, CacheKey)> {
    if start.ready.is_none() {
        return Some((READY_STEP_ID.to_owned(), plan.root_key()));
    }
    plan.chain
        .steps
        .get(start.reused.len())
        .map(|(id, key)| (id.to_string(), *key))
}
