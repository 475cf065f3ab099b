//! The build itself: fetch, plan reuse, boot, run steps with a checkpoint after each, export.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use checkpoint::{CacheKey, ChainSecrets, CheckpointStore, PublishRequest, RunLease};
use provisioner::{BuildKeys, GuestFacts, StepEvent, StepOptions, StepOutcome, StepSpec};
use recipe::{CheckpointChain, Recipe, Step};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::error::io_err;
use crate::events::secs;
use crate::guest::{self, Guest};
use crate::resume::{self, StartPoint, StartRequest};
use crate::run::{RunRecord, StepRecord};
use crate::setup::{seed_config, vm_config};
use crate::{BakeEvent, Error, Result, StepFailure, output};

/// How long a guest gets to power off before QEMU is told to quit.
const POWERDOWN_DEADLINE: Duration = Duration::from_secs(120);
/// After a step's SSH session broke: how long to wait for QEMU's exit to be seen before
/// reporting the SSH error itself.
const VM_GONE_GRACE: Duration = Duration::from_secs(3);

/// One build's inputs.
#[derive(Clone, Debug)]
pub struct BakeRequest {
    /// The resolved recipe (CLI overrides such as `--accel` already applied).
    pub recipe: Recipe,
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
}

impl BakeRequest {
    /// A request with defaults: reuse checkpoints, online, runtime dir from `XDG_RUNTIME_DIR`
    /// or the system temp dir.
    pub fn new(recipe: Recipe, output_dir: PathBuf, cache_dir: PathBuf) -> Self {
        let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        Self {
            recipe,
            output_dir,
            cache_dir,
            runtime_dir,
            start: StartRequest::Reuse,
            offline: false,
            keep_on_failure: false,
        }
    }
}

/// Ctrl-C as the pipeline sees it: `graceful` stops the step and powers the guest off (the last
/// good checkpoint stays); `hard` kills QEMU at once.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    /// First Ctrl-C.
    pub graceful: CancellationToken,
    /// Second Ctrl-C.
    pub hard: CancellationToken,
}

/// What a finished build produced.
#[derive(Clone, Debug)]
pub struct BakeSummary {
    /// The output directory.
    pub output_dir: PathBuf,
    /// The final qcow2.
    pub qcow2: PathBuf,
    /// Other files written (raw, SHA256SUMS, manifest, payload, run.json).
    pub files: Vec<PathBuf>,
    /// The run record.
    pub run: RunRecord,
    /// The offline verification report of the exported image.
    pub verify: exporter::VerifyReport,
}

/// Sends events; a closed receiver is not an error (the build goes on).
#[derive(Clone, Debug)]
pub(crate) struct Emitter(UnboundedSender<BakeEvent>);

impl Emitter {
    pub(crate) fn emit(&self, event: BakeEvent) {
        let _ = self.0.send(event);
    }
}

/// Runs one build. See the crate docs.
pub async fn bake(
    request: BakeRequest,
    events: UnboundedSender<BakeEvent>,
    cancel: Cancel,
) -> Result<BakeSummary> {
    let events = Emitter(events);
    let began = Instant::now();
    let recipe = &request.recipe;

    let base = fetch_base(&request, &events, &cancel.graceful).await?;
    let fingerprint = seed_fingerprint(recipe);
    let chain = recipe.checkpoint_keys(&recipe::BaseIdentity::Digest(base.digest), &fingerprint);

    let store = CheckpointStore::open(&request.cache_dir.join("checkpoints"))?;
    for discarded in store.sweep_incomplete()? {
        events.emit(BakeEvent::CheckpointDiscarded {
            reason: discarded.to_string(),
        });
    }
    let mut start = resume::decide(recipe, &chain, &store, &request.start)?;
    for discarded in &start.discarded {
        events.emit(BakeEvent::CheckpointDiscarded {
            reason: discarded.to_string(),
        });
    }
    let secrets = store.chain_secrets(&chain.root)?;
    let keys = match chain_keys(&secrets, !start.reused.is_empty()) {
        Ok(keys) => keys,
        Err(reason) => {
            events.emit(BakeEvent::Warning { message: reason });
            start.reused.clear();
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

    let mut run = RunRecord {
        recipe: recipe.name.clone(),
        imgbake_version: env!("CARGO_PKG_VERSION").to_owned(),
        ..RunRecord::default()
    };
    for (step, layer) in recipe.steps.iter().zip(&start.reused) {
        run.steps.push(step_record(
            step,
            &layer.meta.key,
            "reused",
            0.0,
            Some(0),
            0,
        ));
    }

    let logs_dir = request.output_dir.join("logs");
    std::fs::create_dir_all(&logs_dir).map_err(io_err("create", &logs_dir))?;
    let run_dir = tempfile::Builder::new()
        .prefix("imgbake-")
        .tempdir_in(&request.runtime_dir)
        .map_err(io_err("create a run directory in", &request.runtime_dir))?;
    let mut lease = store.lease()?;

    // Every step reused: the newest layer is the result, no VM needed.
    let (final_image, facts) = if start.reused.len() == recipe.steps.len() {
        let last = start.reused.last().expect("a recipe has steps");
        (last.path.clone(), None)
    } else {
        let built = build_in_vm(
            &request,
            &chain,
            &start,
            &base.path,
            Arc::new(keys),
            &secrets,
            run_dir.path(),
            &mut lease,
            &mut run,
            &events,
            &cancel,
        )
        .await;
        // The serial log is worth keeping whatever happened.
        let _ = std::fs::copy(
            run_dir.path().join("serial.log"),
            logs_dir.join("serial.log"),
        );
        built?
    };

    let outcome = output::write_outputs(
        &request,
        &base,
        &final_image,
        facts.as_ref(),
        &mut run,
        began,
        &events,
        &cancel.graceful,
    )
    .await?;
    lease.finish()?;
    Ok(outcome)
}

async fn fetch_base(
    request: &BakeRequest,
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
        sha256: base.digest.to_hex(),
    });
    Ok(base)
}

/// The keys a chain's guests were seeded with. A chain with reused layers must use the keys it
/// was made with; a fresh chain makes them once (a concurrent build may win, then its keys are
/// used).
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
    // Stored whole by the checkpoint store; if a concurrent build stored its keys first, those
    // come back instead.
    let files = secrets
        .create_or_load(|| BuildKeys::generate().to_files())
        .map_err(|e| e.to_string())?;
    BuildKeys::from_files(&files, secrets.dir()).map_err(|e| e.to_string())
}

/// The digest of everything in the build's cloud-init seed except its per-chain keys and
/// instance id: the input the recipe's checkpoint keys take as "seed inputs".
pub fn seed_fingerprint(recipe: &Recipe) -> [u8; 32] {
    // Keys and instance id do not enter the fingerprint, so any pair will do here.
    let config = seed_config(recipe, "fingerprint", &BuildKeys::generate());
    qemu_driver::seed::fingerprint(&config).0
}

fn step_record(
    step: &Step,
    key: &CacheKey,
    status: &'static str,
    duration: f64,
    exit: Option<u32>,
    attempts: u32,
) -> StepRecord {
    StepRecord {
        id: step.id.to_string(),
        name: step.name.clone(),
        script_sha256: step.digest().to_string(),
        key: key.to_string(),
        status,
        duration_secs: duration,
        exit_code: exit,
        attempts,
    }
}

fn exit_code(exit: &provisioner::StepExit) -> Option<u32> {
    match exit {
        provisioner::StepExit::Status(status) => status.code(),
        provisioner::StepExit::TimedOut { .. } => None,
    }
}

fn step_spec(recipe: &Recipe, step: &Step) -> StepSpec {
    let mut env = recipe.step_env(step);
    env.insert("IMGBAKE_BUILD_USER".into(), crate::BUILD_USER.into());
    StepSpec {
        id: step.id.to_string(),
        name: step.name.clone(),
        script: step.contents.clone(),
        env,
        timeout: step.timeout,
        retries: step.retries,
        reboot: step.reboot,
    }
}

/// Boots the VM on the newest reused layer, runs the remaining steps with a checkpoint after
/// each, captures the facts and powers off. Returns the final top image and the facts.
#[allow(clippy::too_many_arguments)]
async fn build_in_vm(
    request: &BakeRequest,
    chain: &CheckpointChain,
    start: &StartPoint,
    base: &Path,
    keys: Arc<BuildKeys>,
    secrets: &ChainSecrets,
    run_dir: &Path,
    lease: &mut RunLease<'_>,
    run: &mut RunRecord,
    events: &Emitter,
    cancel: &Cancel,
) -> Result<(PathBuf, Option<GuestFacts>)> {
    let recipe = &request.recipe;
    let first = start.reused.len();
    let keys_of: Vec<CacheKey> = chain.steps.iter().map(|(_, key)| *key).collect();
    let root = chain.root;

    // The instance id is the chain's: a guest resumed from a checkpoint must not run
    // cloud-init's per-instance modules again.
    let instance_id = format!("imgbake-{}", &root.to_string()[..16]);
    let seed_path = run_dir.join("seed.iso");
    qemu_driver::seed::write_iso(&seed_config(recipe, &instance_id, &keys), &seed_path)?;

    let backing = match start.reused.last() {
        Some(layer) => layer.path.clone(),
        None => std::path::absolute(base).map_err(io_err("resolve", base))?,
    };
    let disk = lease.layer_path(&keys_of[first]);
    qemu_driver::overlay::create(&backing, &disk, Some(recipe.vm.disk_size.as_u64())).await?;

    let guest = guest::boot(
        vm_config(recipe, &disk, run_dir, seed_path),
        keys.clone(),
        recipe.vm.boot_timeout,
        events,
        &cancel.graceful,
    )
    .await;
    let Guest {
        vm,
        mut session,
        started,
        ssh_ready,
    } = match guest {
        Ok(guest) => guest,
        Err(_) if cancel.graceful.is_cancelled() => {
            return Err(Error::Interrupted {
                last_checkpoint: start.reused.last().map(|l| l.meta.step_id.clone()),
            });
        }
        Err(e) => return Err(e),
    };
    run.accel = vm.accel().accel.to_string();
    run.ssh_ready_secs = Some(secs(ssh_ready));

    let mut progress = StepsProgress {
        current: disk,
        backing_of_current: backing,
        parent: start.reused.last().map(|l| l.meta.key),
        last_published: start.reused.last().map(|l| l.meta.step_id.clone()),
        facts_before_last: None,
        final_top: run_dir.join("final.qcow2"),
    };
    let ran = run_steps(
        request,
        &keys_of,
        &root,
        first,
        &vm,
        &mut session,
        started,
        lease,
        run,
        &mut progress,
        events,
        cancel,
    )
    .await;
    if let Err(e) = ran {
        if let (Error::StepFailed(_), true) = (&e, request.keep_on_failure) {
            keep_for_debugging(&vm, &keys, secrets, run_dir, events, cancel).await;
        }
        stop_vm(vm, events, cancel).await;
        return Err(if cancel.graceful.is_cancelled() {
            Error::Interrupted {
                last_checkpoint: progress.last_published,
            }
        } else {
            e
        });
    }

    let facts = match session.facts(&cancel.graceful).await {
        Ok(facts) => Some(facts),
        Err(e) => {
            tracing::debug!("facts after the last step: {e}; using those from before it");
            progress.facts_before_last.take()
        }
    };
    session.close().await;
    events.emit(BakeEvent::ShuttingDown);
    tokio::select! {
        stopped = vm.shutdown(POWERDOWN_DEADLINE) => { stopped?; }
        () = cancel.hard.cancelled() => return Err(Error::Interrupted { last_checkpoint: progress.last_published }),
    }
    Ok((progress.current, facts))
}

/// Where the step loop is: the image the guest writes to, what it is backed by, the last
/// published checkpoint.
struct StepsProgress {
    current: PathBuf,
    backing_of_current: PathBuf,
    parent: Option<CacheKey>,
    last_published: Option<String>,
    facts_before_last: Option<GuestFacts>,
    /// The top image after the last step (in the private run dir; never published).
    final_top: PathBuf,
}

/// Runs the steps from `first` on, each followed by a checkpoint. Every wait is raced against
/// QEMU dying; cancellation surfaces as an error the caller turns into `Interrupted`.
#[allow(clippy::too_many_arguments)]
async fn run_steps(
    request: &BakeRequest,
    keys_of: &[CacheKey],
    root: &CacheKey,
    first: usize,
    vm: &qemu_driver::Vm,
    session: &mut provisioner::GuestSession,
    started: Instant,
    lease: &mut RunLease<'_>,
    run: &mut RunRecord,
    progress: &mut StepsProgress,
    events: &Emitter,
    cancel: &Cancel,
) -> Result<()> {
    let recipe = &request.recipe;
    let logs_dir = request.output_dir.join("logs");
    for (index, step) in recipe.steps.iter().enumerate().skip(first) {
        if run.first_step_secs.is_none() {
            run.first_step_secs = Some(secs(started.elapsed()));
        }
        let step_id = step.id.to_string();
        let ran = async {
            // The last step is usually the cleanup that removes the build user; after it SSH
            // may be gone, so take the facts before it as a fallback.
            if index + 1 == recipe.steps.len() {
                progress.facts_before_last = session.facts(&cancel.graceful).await.ok();
            }
            let spec = step_spec(recipe, step);
            let options = StepOptions::new(
                logs_dir.join(format!("{}.log", step.name)),
                recipe.vm.boot_timeout,
            );
            let on_event = |event: StepEvent| events.emit(step_event(event, &step.name));
            let outcome =
                provisioner::run_step(session, &spec, &options, on_event, &cancel.graceful).await?;
            let succeeded = match outcome {
                StepOutcome::Succeeded(ok) => ok,
                StepOutcome::Failed(failed) => {
                    run.steps.push(step_record(
                        step,
                        &keys_of[index],
                        "failed",
                        secs(failed.duration),
                        exit_code(&failed.exit),
                        failed.attempts,
                    ));
                    write_run_json(&request.output_dir, run);
                    return Err(Error::StepFailed(Box::new(StepFailure {
                        id: failed.id.clone(),
                        name: step.name.clone(),
                        exit: failed.exit.to_string(),
                        exit_code: exit_code(&failed.exit),
                        last_lines: failed.last_lines.clone(),
                        log: failed.log_path.clone(),
                        serial_log: logs_dir.join("serial.log"),
                    })));
                }
            };
            run.steps.push(step_record(
                step,
                &keys_of[index],
                "ran",
                secs(succeeded.duration),
                Some(0),
                succeeded.attempts,
            ));

            // Checkpoint: flush the guest, freeze the layer, continue on a new overlay.
            session
                .exec_capture_root("sync", Duration::from_secs(300), &cancel.graceful)
                .await?;
            let next = match keys_of.get(index + 1) {
                Some(key) => lease.layer_path(key),
                None => progress.final_top.clone(),
            };
            vm.snapshot_layer(&next, &progress.current).await?;
            let key = &keys_of[index];
            let published = lease.publish(&PublishRequest {
                key,
                parent: progress.parent.as_ref(),
                root,
                backing: &progress.backing_of_current,
                recipe: &recipe.name,
                step_id: &step_id,
                step_name: &step.name,
            })?;
            let size = std::fs::metadata(&progress.current).map_or(0, |m| m.len());
            events.emit(BakeEvent::CheckpointSaved {
                id: step_id.clone(),
                key: key.short(),
                size,
                published: published.is_some(),
            });
            if published.is_some() {
                progress.last_published = Some(step_id.clone());
            }
            progress.parent = Some(*key);
            progress.backing_of_current = std::mem::replace(&mut progress.current, next);
            Ok(())
        };
        tokio::select! {
            result = ran => {
                if let Err(e) = result {
                    // A dropped SSH connection is often noticed before QEMU's exit: if the VM
                    // is gone, its error (exit status, stderr and serial tails) says why.
                    if !cancel.graceful.is_cancelled()
                        && !matches!(e, Error::StepFailed(_))
                        && let Ok(vm_error) =
                            tokio::time::timeout(VM_GONE_GRACE, vm.wait_for_exit_or_error()).await
                    {
                        return Err(vm_error.into());
                    }
                    return Err(e);
                }
            }
            error = vm.wait_for_exit_or_error() => return Err(error.into()),
        }
    }
    Ok(())
}

/// After a failed step with `--keep-on-failure`: print the ssh command and wait for Ctrl-C (or
/// the VM to go away).
async fn keep_for_debugging(
    vm: &qemu_driver::Vm,
    keys: &BuildKeys,
    secrets: &ChainSecrets,
    run_dir: &Path,
    events: &Emitter,
    cancel: &Cancel,
) {
    let key = keys_dir_user_key(secrets);
    let known_hosts = write_known_hosts(run_dir, vm.ssh_addr(), keys);
    events.emit(BakeEvent::KeptForDebugging {
        ssh_command: crate::setup::ssh_command(vm.ssh_addr(), &key, &known_hosts),
    });
    tokio::select! {
        () = cancel.graceful.cancelled() => {}
        _ = vm.wait_for_exit_or_error() => {}
    }
}

fn keys_dir_user_key(secrets: &ChainSecrets) -> PathBuf {
    secrets.path(BuildKeys::USER_KEY_FILE)
}

fn write_known_hosts(run_dir: &Path, addr: std::net::SocketAddr, keys: &BuildKeys) -> PathBuf {
    let path = run_dir.join("known_hosts");
    let line = format!(
        "[{}]:{} {}\n",
        addr.ip(),
        addr.port(),
        keys.host_public_openssh()
    );
    let _ = std::fs::write(&path, line);
    path
}

/// Powers the guest off; a second Ctrl-C kills QEMU instead.
async fn stop_vm(vm: qemu_driver::Vm, events: &Emitter, cancel: &Cancel) {
    events.emit(BakeEvent::ShuttingDown);
    tokio::select! {
        stopped = vm.shutdown(POWERDOWN_DEADLINE) => {
            if let Err(e) = stopped {
                events.emit(BakeEvent::Warning { message: format!("powering the guest off: {e}") });
            }
        }
        () = cancel.hard.cancelled() => {}
    }
}

fn step_event(event: StepEvent, name: &str) -> BakeEvent {
    match event {
        StepEvent::Started { id, attempt, .. } => BakeEvent::StepStarted {
            id,
            name: name.to_owned(),
            attempt,
        },
        StepEvent::Output { id, stream, line } => BakeEvent::StepOutput {
            id,
            stream: match stream {
                provisioner::Stream::Stdout => "stdout",
                provisioner::Stream::Stderr => "stderr",
            },
            line,
        },
        StepEvent::Retrying { id, exit, .. } => BakeEvent::StepRetrying {
            id,
            exit: exit.to_string(),
        },
        StepEvent::Rebooting { id } => BakeEvent::Rebooting { id },
        StepEvent::Rebooted { id, downtime } => BakeEvent::Rebooted {
            id,
            downtime_secs: secs(downtime),
        },
        StepEvent::Finished { id, exit, duration } => BakeEvent::StepFinished {
            id,
            success: exit.success(),
            exit: exit.to_string(),
            duration_secs: secs(duration),
        },
    }
}

pub(crate) fn write_run_json(output_dir: &Path, run: &RunRecord) {
    let path = output_dir.join("run.json");
    let tmp = output_dir.join(".run.json.tmp");
    if let Ok(json) = serde_json::to_vec_pretty(run)
        && std::fs::write(&tmp, json).is_ok()
    {
        let _ = std::fs::rename(&tmp, &path);
    }
}
