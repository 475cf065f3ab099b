//! One build: fetch the base, plan reuse, run the steps in a VM (see [`crate::steps`]), write
//! the outputs (see [`crate::outputs`]). [`Build`] is the context every stage shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use checkpoint::{CacheKey, ChainSecrets, CheckpointStore};
use provisioner::BuildKeys;
use recipe::{BaseIdentity, Recipe, Step};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::error::io_err;
use crate::events::{Emitter, secs};
use crate::plan::{BuildPlan, StartPoint, StartRequest};
use crate::run::{RunRecord, StepRecord, StepStatus};
use crate::steps::VmSetup;
use crate::{BakeEvent, Error, Result};

/// One build's inputs.
#[derive(Clone, Debug)]
pub struct BakeRequest {
    /// The resolved recipe (CLI overrides such as `--accel` already applied).
    pub recipe: Recipe,
    /// The values of the recipe's `secrets:` ([`recipe::secret_values`]). Every step gets
    /// them as environment variables; they are masked in its output and never written to the
    /// outputs, the events or the cache. `Debug` shows the names only.
    pub secrets: recipe::SecretValues,
    /// Where the results go (`output/<recipe name>/` by default).
    pub output_dir: PathBuf,
    /// The cache root: `base/` (fetch) and `checkpoints/` live under it.
    pub cache_dir: PathBuf,
    /// Where QEMU's private run directories are made (short, for the QMP socket path).
    pub runtime_dir: PathBuf,
    /// Reuse, resume or start fresh.
    pub start: StartRequest,
    /// Use only cached base images.
    pub offline: bool,
    /// On a failed step, keep the VM running for `ssh` until cancelled.
    pub keep_on_failure: bool,
    /// Save the VM state with each step's checkpoint and restore the newest matching one
    /// instead of booting (`--no-vm-state` turns it off: disk checkpoints only).
    pub vm_state: bool,
    /// After the outputs are written, boot the exported image with a fresh seed and check it
    /// (`imgbake recipe --test`; see [`crate::test_image`]).
    pub test_after_export: bool,
}

impl BakeRequest {
    /// A request with defaults: reuse checkpoints, online, runtime dir from `XDG_RUNTIME_DIR`
    /// or the system temp dir.
    pub fn new(recipe: Recipe, output_dir: PathBuf, cache_dir: PathBuf) -> Self {
        Self {
            recipe,
            secrets: recipe::SecretValues::new(),
            output_dir,
            cache_dir,
            runtime_dir: default_runtime_dir(),
            start: StartRequest::Reuse,
            offline: false,
            keep_on_failure: false,
            vm_state: true,
            test_after_export: false,
        }
    }
}

/// `XDG_RUNTIME_DIR` when it exists, else the system temp dir: short paths, for QMP sockets.
pub fn default_runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// A stop request as the pipeline sees it: `graceful` stops the step and powers the guest off
/// (the last good checkpoint stays); `hard` kills QEMU at once. The binary maps signals onto it.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    /// First signal.
    pub graceful: CancellationToken,
    /// Second signal.
    pub hard: CancellationToken,
}

/// What a finished build produced.
#[derive(Clone, Debug)]
pub struct BakeSummary {
    /// The output directory.
    pub output_dir: PathBuf,
    /// The final qcow2 (not written when the verification failed).
    pub qcow2: PathBuf,
    /// The RAW that was verified: `<name>.raw`, or `<name>.raw.failed` when it failed.
    pub raw: PathBuf,
    /// Other files written (raw, SHA256SUMS, manifest, payload, run.json).
    pub files: Vec<PathBuf>,
    /// The run record.
    pub run: RunRecord,
    /// The offline verification report of the exported image.
    pub verify: inspect::VerifyReport,
    /// The boot test of the exported image, with `test_after_export`.
    pub test: Option<crate::ImageTestReport>,
}

/// The context of one build in progress, shared by its stages.
pub(crate) struct Build<'a> {
    pub request: &'a BakeRequest,
    pub recipe: &'a Recipe,
    pub events: Emitter,
    pub cancel: &'a Cancel,
    pub plan: BuildPlan,
    pub run: RunRecord,
    pub logs_dir: PathBuf,
    pub began: Instant,
}

impl Build<'_> {
    /// The record of step `index` ending with `status`.
    pub fn step_record(&self, index: usize, status: StepStatus, end: StepEnd) -> StepRecord {
        let step: &Step = &self.recipe.steps[index];
        StepRecord {
            id: step.id.to_string(),
            name: step.name.clone(),
            script_sha256: step.digest().to_string(),
            key: self.plan.chain.steps[index].1.to_string(),
            status,
            duration_secs: end.duration_secs,
            exit_code: end.exit_code,
            attempts: end.attempts,
        }
    }

    /// Writes `run.json`; a failure to write it is a warning, not a failed build.
    pub fn save_run(&self) {
        if let Err(e) = self.run.write(&self.request.output_dir) {
            self.events.emit(BakeEvent::Warning {
                message: format!(
                    "cannot write {}: {e}",
                    self.request.output_dir.join("run.json").display()
                ),
            });
        }
    }
}

/// How a step ended, for its record.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StepEnd {
    pub duration_secs: f64,
    pub exit_code: Option<u32>,
    pub attempts: u32,
}

/// Runs one build. See the crate docs.
pub async fn bake(
    request: BakeRequest,
    events: UnboundedSender<BakeEvent>,
    cancel: Cancel,
) -> Result<BakeSummary> {
    let events = Emitter::new(events);
    let began = Instant::now();
    let recipe = &request.recipe;
    // Before anything boots: a step must never run with a secret silently unset.
    if let Some(name) = recipe
        .secrets
        .iter()
        .find(|name| !request.secrets.contains_key(*name))
    {
        return Err(Error::Recipe {
            source: recipe::Error::SecretNotSet {
                name: name.clone(),
                recipe: recipe.path.clone(),
            },
        });
    }

    // Before anything else, so a second build into the same directory fails at once.
    let output_lock =
        exporter::OutputLock::acquire(&request.output_dir, &format!("recipe {}", recipe.name))
            .map_err(|source| Error::OutputDir { source })?;
    for stale in output_lock.swept() {
        events.emit(BakeEvent::Warning {
            message: format!("removed {}, left by a build that died", stale.display()),
        });
    }

    let fetch = FetchRequest {
        recipe,
        cache_dir: &request.cache_dir,
        offline: request.offline,
    };
    let base = fetch_base(&fetch, &events, &cancel.graceful).await?;
    let plan = BuildPlan::new(recipe, BaseIdentity::Digest(base.digest));

    // First layers are made on the uncompressed copy of the base; one that names the same base
    // elsewhere is moved onto it while no build holds the store.
    let copy_path =
        fetch::BaseCache::open(request.cache_dir.join("base"))?.plain_path(&base.digest);
    let copy_path = std::path::absolute(&copy_path).map_err(io_err("resolve", &copy_path))?;
    let store_dir = request.cache_dir.join("checkpoints");
    rebase_first_layers(&store_dir, &plan.root_key(), &copy_path, &events).await?;
    // Held until the build ends. `cache gc` / `rm` sweep unused copies only with the store to
    // themselves, so the copy made next cannot go before a checkpoint names it.
    let store = CheckpointStore::open(&store_dir)?;
    let boot_base = plain_base(&request.cache_dir, &base, &events, &cancel.graceful).await?;
    for discarded in store.sweep_incomplete()? {
        events.emit(BakeEvent::CheckpointDiscarded {
            reason: discarded.to_string(),
        });
    }
    let secrets = store.chain_secrets(&plan.chain.root)?;
    let planner = crate::making::Planner {
        plan: &plan,
        recipe,
        store: &store,
        request: &request.start,
        base: &boot_base,
        secrets: &secrets,
        events: &events,
    };
    let (mut start, mut making) = planner.start(&cancel.graceful).await?;
    let keys = match chain_keys(&secrets, start.newest().is_some()) {
        Ok(keys) => keys,
        Err(reason) => {
            events.emit(BakeEvent::Warning { message: reason });
            start.ready = None;
            start.reused.clear();
            // It was the lock on another checkpoint than the first boot made now.
            making = None;
            chain_keys(&secrets, false).map_err(|reason| Error::Io {
                action: "store the build keys in",
                path: secrets.dir().to_path_buf(),
                source: std::io::Error::other(reason),
            })?
        }
    };
    if !start.reused.is_empty() {
        events.emit(BakeEvent::StepsReused {
            ids: start
                .reused
                .iter()
                .map(|l| l.meta.step_id.clone())
                .collect(),
            resumed: matches!(request.start, StartRequest::ResumeFrom(_)),
        });
    }

    let mut build = Build {
        request: &request,
        recipe,
        events,
        cancel: &cancel,
        plan,
        run: RunRecord {
            recipe: recipe.name.clone(),
            imgbake_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..RunRecord::default()
        },
        logs_dir: request.output_dir.join("logs"),
        began,
    };
    for index in 0..start.reused.len() {
        let record = build.step_record(
            index,
            StepStatus::Reused,
            StepEnd {
                exit_code: Some(0),
                ..StepEnd::default()
            },
        );
        build.run.steps.push(record);
    }

    std::fs::create_dir_all(&build.logs_dir).map_err(io_err("create", &build.logs_dir))?;
    let run_dir = tempfile::Builder::new()
        .prefix("imgbake-")
        .tempdir_in(&request.runtime_dir)
        .map_err(io_err("create a run directory in", &request.runtime_dir))?;
    let mut lease = store.lease()?;

    let final_image = match reused_result(&start, recipe) {
        // Every step reused: the newest layer is the result, no VM needed.
        Some(last) => last,
        None => {
            let setup = VmSetup {
                start: &start,
                base: &boot_base,
                keys: Arc::new(keys),
                secrets: &secrets,
                run_dir: run_dir.path(),
                lease: &mut lease,
                making,
            };
            let built = crate::steps::build_in_vm(&mut build, setup)
                .await
                .map_err(|e| guest_disk_full(e, store.root()));
            // The serial log is worth keeping whatever happened.
            let _ = std::fs::copy(
                run_dir.path().join("serial.log"),
                build.logs_dir.join("serial.log"),
            );
            built?
        }
    };

    let mut summary = crate::outputs::write_outputs(&mut build, &base, &final_image).await?;
    lease.finish()?;
    // An image that failed verification is not booted: the build fails with exit 6 anyway.
    if request.test_after_export && summary.verify.passed {
        let test = crate::image_test::ImageTestRequest {
            image: summary.qcow2.clone(),
            recipe: Some(recipe.clone()),
            accel: None,
            runtime_dir: request.runtime_dir.clone(),
            serial_log: Some(build.logs_dir.join("test-serial.log")),
        };
        summary.test =
            Some(crate::image_test::test_image_with(&test, &build.events, &cancel).await?);
    }
    output_lock.release();
    Ok(summary)
}

/// QEMU stops the guest in `io-error` when a write to its disk fails with `ENOSPC` (the
/// default `werror=enospc`): the disk being written is the top layer in the checkpoint store,
/// so that file system is full. Said as such, with the store's path and its free space.
fn guest_disk_full(e: Error, store: &Path) -> Error {
    match &e {
        Error::Vm { source }
            if matches!(
                **source,
                qemu_driver::Error::Stopped {
                    state: qemu_driver::VmState::IoError,
                    ..
                }
            ) =>
        {
            Error::NoSpace(digest::NoSpace::now(store.join("layers"), None))
        }
        _ => e,
    }
}

/// The newest reused layer when it covers every step of the recipe.
fn reused_result(start: &StartPoint, recipe: &Recipe) -> Option<PathBuf> {
    if start.reused.len() < recipe.steps.len() {
        return None;
    }
    start.reused.last().map(|layer| layer.path.clone())
}

/// What [`fetch_base`] needs.
pub(crate) struct FetchRequest<'a> {
    pub recipe: &'a Recipe,
    pub cache_dir: &'a Path,
    pub offline: bool,
}

/// The recipe's base image, fetched into the cache (or found there), with progress events.
pub(crate) async fn fetch_base(
    request: &FetchRequest<'_>,
    events: &Emitter,
    cancel: &CancellationToken,
) -> Result<fetch::CachedBase> {
    let source = crate::setup::base_source(&request.recipe.base);
    let cache = fetch::BaseCache::open(request.cache_dir.join("base"))?;
    let options = fetch::FetchOptions {
        offline: request.offline,
        ..fetch::FetchOptions::default()
    };
    // One event per percent at most: --json readers get a progress stream, not a flood.
    let last_percent = std::sync::atomic::AtomicU64::new(u64::MAX);
    let emit_progress = |done: u64, total: Option<u64>| {
        let percent = total.map_or(done >> 26, |t| done.saturating_mul(100) / t.max(1));
        if last_percent.swap(percent, std::sync::atomic::Ordering::Relaxed) != percent {
            events.emit(BakeEvent::FetchProgress { done, total });
        }
    };
    let progress = |event: fetch::FetchEvent| match event {
        fetch::FetchEvent::Downloading { done, total } => emit_progress(done, total),
        fetch::FetchEvent::Hashing { done, total, .. } => emit_progress(done, Some(total)),
        _ => {}
    };
    let base = cache
        .fetch(&source, &options, &progress, cancel.clone())
        .await?;
    events.emit(BakeEvent::BaseReady {
        path: base.path.clone(),
        sha256: base.digest.to_string(),
    });
    Ok(base)
}

/// Moves the chain's first layers that name another path for this base onto `base` (see
/// `checkpoint::CheckpointStore::record_rebased`), while no other build uses the store. When one
/// does, they stay as they are: this build does not reuse them, and publishing its own first
/// layer replaces them.
async fn rebase_first_layers(
    store_dir: &Path,
    root: &CacheKey,
    base: &Path,
    events: &Emitter,
) -> Result<()> {
    let Some(store) = CheckpointStore::try_open_exclusive(store_dir)? else {
        return Ok(());
    };
    for layer in store.misbased_roots(root, base)? {
        qemu_driver::overlay::rebase_unattached(&layer.path, base).await?;
        store.record_rebased(&layer, base)?;
        events.emit(BakeEvent::CheckpointRebased {
            step_id: layer.meta.step_id.clone(),
            from: layer.meta.backing.clone(),
            to: base.to_path_buf(),
        });
    }
    Ok(())
}

/// The uncompressed copy of `base` in the cache (see [`fetch::PlainCopy`]), made if it is missing
/// or damaged: what a VM boots its overlay on. The checkpoint keys stay those of `base`'s
/// digest, as the copy has the same content.
pub(crate) async fn plain_base(
    cache_dir: &Path,
    base: &fetch::CachedBase,
    events: &Emitter,
    cancel: &CancellationToken,
) -> Result<PathBuf> {
    let cache = fetch::BaseCache::open(cache_dir.join("base"))?;
    let began = Instant::now();
    let progress = |event: fetch::FetchEvent| {
        if let fetch::FetchEvent::PlainCopyDamaged { reason, .. } = event {
            events.emit(BakeEvent::Warning {
                message: format!(
                    "the uncompressed copy of the base is damaged ({reason}); making it again"
                ),
            });
        }
    };
    let copy = cache.plain_copy(base, false, &progress, cancel).await?;
    let path = std::path::absolute(&copy.path).map_err(io_err("resolve", &copy.path))?;
    events.emit(BakeEvent::PlainBaseReady {
        path: path.clone(),
        made_secs: copy.made.then(|| elapsed_secs(began)),
    });
    Ok(path)
}

/// The SSH keys a chain's guests were seeded with, kept in the store's chain secrets. A chain
/// with reused layers must use the keys it was made with; a fresh chain makes them once (a
/// concurrent build may win, then its keys are used).
fn chain_keys(secrets: &ChainSecrets, must_exist: bool) -> std::result::Result<BuildKeys, String> {
    let unreadable = |e: &dyn std::fmt::Display| {
        format!("the checkpoint chain's SSH keys are unreadable ({e}); starting from the base")
    };
    match secrets.load() {
        Ok(Some(files)) => {
            return BuildKeys::from_files(&files, secrets.dir()).map_err(|e| unreadable(&e));
        }
        Err(e) => return Err(unreadable(&e)),
        Ok(None) if must_exist => {
            return Err(
                "the checkpoint chain has lost its SSH keys; starting from the base".into(),
            );
        }
        Ok(None) => {}
    }
    let files = secrets
        .create_or_load(|| BuildKeys::generate().to_files())
        .map_err(|e| e.to_string())?;
    BuildKeys::from_files(&files, secrets.dir()).map_err(|e| e.to_string())
}

pub(crate) fn elapsed_secs(since: Instant) -> f64 {
    secs(since.elapsed())
}
