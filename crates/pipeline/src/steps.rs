//! The VM phase of a build: boot on the newest reused layer, run the remaining steps with a
//! checkpoint after each, seal, power off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use checkpoint::{CacheKey, ChainSecrets, PublishRequest, RunLease};
use provisioner::{BuildKeys, GuestSession, StepOptions, StepOutcome, StepSpec};
use qemu_driver::Vm;
use recipe::{Recipe, Step};

use crate::boot::{BootRequest, Guest, POWERDOWN_DEADLINE, stop_vm};
use crate::build::{Build, StepEnd, elapsed_secs};
use crate::error::io_err;
use crate::events::secs;
use crate::plan::StartPoint;
use crate::resume::StateSupport;
use crate::run::StepStatus;
use crate::setup::{seed_config, vm_config};
use crate::{BakeEvent, Error, Result, StepFailure};

/// After a step's SSH session broke: how long to wait for QEMU's exit to be seen before
/// reporting the SSH error itself.
const VM_GONE_GRACE: Duration = Duration::from_secs(3);

/// What the VM phase starts from.
pub(crate) struct VmSetup<'x, 'l> {
    pub start: &'x StartPoint,
    pub base: &'x Path,
    pub keys: Arc<BuildKeys>,
    pub secrets: &'x ChainSecrets,
    pub run_dir: &'x Path,
    pub lease: &'x mut RunLease<'l>,
    /// The lock on the first checkpoint this build makes (see [`crate::making`]); released
    /// once it is published.
    pub making: Option<checkpoint::MakingLock>,
}

/// Boots, runs the steps not reused, powers off. Returns the final top image.
pub(crate) async fn build_in_vm(build: &mut Build<'_>, setup: VmSetup<'_, '_>) -> Result<PathBuf> {
    let recipe = build.recipe;
    let start = setup.start;
    let first = start.reused.len();
    let step_keys = build.plan.step_keys();

    let seed_path = setup.run_dir.join("seed.iso");
    let seed = seed_config(&build.plan.instance_id(), &setup.keys);
    seed::write_iso(&seed, &seed_path)?;

    let newest = start.newest();
    let backing = match newest {
        Some(layer) => layer.path.clone(),
        None => std::path::absolute(setup.base).map_err(io_err("resolve", setup.base))?,
    };
    // Booting the base, the guest first writes the chain's first-boot layer (the root key's).
    let boots_base = newest.is_none();
    let disk = if boots_base {
        setup.lease.layer_path(&build.plan.root_key())
    } else {
        setup.lease.layer_path(&step_keys[first])
    };
    let disk_size = Some(recipe.vm.disk_size.as_u64());
    qemu_driver::overlay::create(&backing, &disk, disk_size).await?;
    let config = vm_config(recipe, &disk, setup.run_dir, seed_path);

    let support = if build.request.vm_state {
        match StateSupport::probe(&config).await {
            Ok(support) => Some(support),
            Err(reason) => {
                build.events.emit(BakeEvent::VmStateNotUsed { reason });
                None
            }
        }
    } else {
        None
    };
    let restored = match (&support, newest) {
        (Some(support), Some(layer)) => {
            let request = RestoreFrom {
                store: setup.lease.store(),
                support,
                config: &config,
                layer,
                keys: &setup.keys,
            };
            try_restore(build, request).await
        }
        _ => None,
    };
    let booted = match restored {
        Some(guest) => Ok(guest),
        None => {
            // A failed restore may have run the guest on the overlay: start the boot clean.
            qemu_driver::overlay::create(&backing, &disk, disk_size).await?;
            crate::boot::boot(
                BootRequest {
                    config,
                    keys: setup.keys.clone(),
                    login: crate::boot::Login::build(),
                    boot_timeout: recipe.vm.boot_timeout,
                },
                &build.events,
                &build.cancel.graceful,
            )
            .await
        }
    };
    let Guest {
        vm,
        session,
        started,
        ssh_ready,
        needs_renewal,
    } = match booted {
        Ok(guest) => guest,
        Err(_) if build.cancel.graceful.is_cancelled() => {
            return Err(Error::Interrupted {
                last_checkpoint: start.last_step(),
            });
        }
        Err(e) => return Err(e),
    };
    build.run.accel = vm.accel().accel.to_string();
    build.run.ssh_ready_secs = Some(secs(ssh_ready));

    // The first boot is taken before any step ran: no secret can be in its memory.
    let ready_support = boots_base.then(|| support.clone()).flatten();
    let support = saving_support(build, support);
    let mut runner = StepRunner {
        progress: Progress {
            current: disk,
            backing_of_current: backing,
            parent: newest.map(|l| l.meta.key),
            last_published: start.last_step(),
        },
        root: build.plan.root_key(),
        step_keys,
        build,
        lease: setup.lease,
        session,
        started,
        user_public_key: setup.keys.user_public_openssh(),
        support,
        secrets: setup.secrets,
        making: setup.making,
        sealed: None,
        pending_state: None,
        needs_renewal,
    };
    let ready = boots_base.then(|| runner.ready_point(ready_support));
    if let Err(e) = runner.run_steps(&vm, ready, first).await {
        // Another build waiting for the checkpoint this one failed to make may make it now,
        // even while this VM is kept for debugging.
        runner.making = None;
        let cancel = runner.build.cancel;
        // The signal that ends a kept VM is how the user says "done debugging": the build
        // still failed because of its step, and says so (exit 4, not 130).
        let kept = matches!(e, Error::StepFailed(_)) && runner.build.request.keep_on_failure;
        if kept {
            let access = DebugAccess {
                keys: &setup.keys,
                secrets: setup.secrets,
                run_dir: setup.run_dir,
            };
            keep_for_debugging(&vm, runner.build, &access).await;
        }
        stop_vm(vm, &runner.build.events, cancel).await;
        return Err(if cancel.graceful.is_cancelled() && !kept {
            Error::Interrupted {
                last_checkpoint: runner.progress.last_published,
            }
        } else {
            e
        });
    }

    runner.session.close().await;
    runner.build.events.emit(BakeEvent::ShuttingDown);
    let stopped = tokio::select! {
        stopped = vm.shutdown(POWERDOWN_DEADLINE) => stopped?,
        () = runner.build.cancel.hard.cancelled() => {
            return Err(Error::Interrupted { last_checkpoint: runner.progress.last_published });
        }
    };
    // The disk ignored the guest's flushes (`DiskCache::Unsafe`): QEMU wrote everything out
    // when it closed the image, but only into the host's page cache. Make it durable before
    // it is exported.
    let top = &runner.progress.current;
    std::fs::File::open(top)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", top))?;
    runner.publish_sealed(stopped.method).await?;
    Ok(runner.progress.current)
}

/// One checkpoint to take: the layer's key and record, and what comes after it.
struct CheckpointPoint {
    key: CacheKey,
    /// The next layer's key (`None` after the last step, whose layer is published once the
    /// guest is off: see [`StepRunner::publish_sealed`]).
    next: Option<CacheKey>,
    step_id: String,
    step_name: String,
    /// The recipe the record names ([`checkpoint::SHARED_RECIPE`] for the first boot).
    recipe: String,
    /// Flush the guest first: the first boot. A step flushes it itself
    /// (`StepOptions::sync_after`), and so does the seal (after which no sudo is left).
    flush: bool,
    /// Set to save a VM state with the layer.
    support: Option<StateSupport>,
}

/// Where the step loop is: the image the guest writes to, what it is backed by, the last
/// published checkpoint.
struct Progress {
    current: PathBuf,
    backing_of_current: PathBuf,
    parent: Option<CacheKey>,
    last_published: Option<String>,
}

/// Runs steps one by one in a booted guest, with a checkpoint after each.
struct StepRunner<'s, 'a, 'l> {
    build: &'s mut Build<'a>,
    lease: &'s mut RunLease<'l>,
    session: GuestSession,
    started: Instant,
    root: CacheKey,
    step_keys: Vec<CacheKey>,
    progress: Progress,
    /// The build user's public key (its stub in root's `authorized_keys` is sealed away).
    user_public_key: String,
    /// Set when VM states are saved with the checkpoints.
    support: Option<StateSupport>,
    /// Where the locks on making checkpoints are taken.
    secrets: &'s ChainSecrets,
    /// The lock on the checkpoint being made now, if this build got it (see [`crate::making`]).
    making: Option<checkpoint::MakingLock>,
    /// The last step's checkpoint, taken once the sealed guest has powered off.
    sealed: Option<CheckpointPoint>,
    /// The VM state of the last checkpoint while it is written in the background.
    pending_state: Option<PendingState>,
    /// The guest was restored: the next step's command renews its clock and entropy first.
    needs_renewal: bool,
}

/// A VM state being saved beside its (published) layer while the guest runs on.
struct PendingState {
    step_id: String,
    state_key: CacheKey,
    profile: qemu_driver::MachineProfile,
    /// The layer it belongs to.
    layer: CacheKey,
    saving: qemu_driver::Result<qemu_driver::StateSaving>,
}

impl PendingState {
    fn in_background(&self) -> bool {
        self.saving.as_ref().is_ok_and(|s| s.in_background())
    }
}

impl StepRunner<'_, '_, '_> {
    /// Takes the first-boot checkpoint (`ready`, from [`StepRunner::ready_point`]), then runs
    /// the steps from `first` on. Every wait is raced against QEMU dying; cancellation
    /// surfaces as an error the caller turns into `Interrupted`.
    async fn run_steps(
        &mut self,
        vm: &Vm,
        ready: Option<CheckpointPoint>,
        first: usize,
    ) -> Result<()> {
        if let Some(point) = ready
            && let Some(next) = point.next
        {
            let result = tokio::select! {
                result = self.checkpoint(vm, point, next) => result,
                error = vm.wait_for_exit_or_error() => return Err(error.into()),
            };
            if let Err(e) = result {
                return Err(self.explain(vm, e).await);
            }
        }
        for index in first..self.build.recipe.steps.len() {
            // A guest reset while its RAM is being written out is a case not worth having.
            if self.build.recipe.steps[index].reboot {
                self.finish_pending_state(vm).await?;
            }
            let result = tokio::select! {
                result = self.run_step(vm, index) => result,
                error = vm.wait_for_exit_or_error() => return Err(error.into()),
            };
            if let Err(e) = result {
                // The state before a failed step is what `--resume-from` restores: keep it.
                if let Err(save) = self.finish_pending_state(vm).await {
                    tracing::debug!(error = %save, "vm state after a failed step");
                }
                return Err(self.explain(vm, e).await);
            }
        }
        self.finish_pending_state(vm).await
    }

    /// A dropped SSH connection is often noticed before QEMU's exit: if the VM is gone, its
    /// error (exit status, stderr and serial tails) says why.
    async fn explain(&self, vm: &Vm, error: Error) -> Error {
        if self.build.cancel.graceful.is_cancelled() || matches!(error, Error::StepFailed(_)) {
            return error;
        }
        match tokio::time::timeout(VM_GONE_GRACE, vm.wait_for_exit_or_error()).await {
            Ok(vm_error) => vm_error.into(),
            Err(_) => error,
        }
    }

    async fn run_step(&mut self, vm: &Vm, index: usize) -> Result<()> {
        let recipe = self.build.recipe;
        let step = &recipe.steps[index];
        let key = self.step_keys[index];
        self.claim(&key);
        let cancel = &self.build.cancel.graceful;
        if self.build.run.first_step_secs.is_none() {
            self.build.run.first_step_secs = Some(elapsed_secs(self.started));
        }
        let mut options = StepOptions::new(
            self.build.logs_dir.join(format!("{}.log", step.name)),
            recipe.vm.boot_timeout,
        );
        // The checkpoint after the step needs the guest flushed; after the last one the seal
        // does it.
        let sealed = index + 1 == recipe.steps.len();
        options.sync_after = !sealed;
        if std::mem::take(&mut self.needs_renewal) {
            options.preamble = Some(crate::resume::renew_command()?);
        }
        let events = &self.build.events;
        let on_event = |event| events.step_event(event, &step.name);
        let spec = step_spec(recipe, step, &self.build.request.secrets);
        let outcome =
            provisioner::run_step(&mut self.session, &spec, &options, on_event, cancel).await?;
        match outcome {
            StepOutcome::Succeeded(ok) => {
                let end = StepEnd {
                    duration_secs: secs(ok.duration),
                    exit_code: Some(0),
                    attempts: ok.attempts,
                };
                let record = self.build.step_record(index, StepStatus::Ran, end);
                self.build.run.steps.push(record);
            }
            StepOutcome::Failed(failed) => {
                let end = StepEnd {
                    duration_secs: secs(failed.duration),
                    exit_code: exit_code(&failed.exit),
                    attempts: failed.attempts,
                };
                let record = self.build.step_record(index, StepStatus::Failed, end);
                self.build.run.steps.push(record);
                self.build.save_run();
                return Err(Error::StepFailed(Box::new(StepFailure {
                    id: failed.id.clone(),
                    name: step.name.clone(),
                    exit: failed.exit.to_string(),
                    exit_code: exit_code(&failed.exit),
                    last_lines: failed.last_lines.clone(),
                    log: failed.log_path.clone(),
                    serial_log: self.build.logs_dir.join("serial.log"),
                })));
            }
        }
        if sealed {
            // imgbake removes what it added itself; the recipe's cleanup need not know it.
            let spec = provisioner::SealSpec {
                build_user: crate::BUILD_USER.to_owned(),
                build_hostname: crate::setup::BUILD_HOSTNAME.to_owned(),
                user_public_key: self.user_public_key.clone(),
            };
            self.build.events.emit(BakeEvent::Sealing);
            provisioner::seal(&self.session, &spec, cancel).await?;
        }
        // After the seal the build user is gone: a state after the last step could never run
        // another step, so none is saved.
        let point = CheckpointPoint {
            key,
            next: self.step_keys.get(index + 1).copied(),
            step_id: step.id.to_string(),
            step_name: step.name.clone(),
            recipe: recipe.name.clone(),
            flush: false,
            support: if sealed { None } else { self.support.clone() },
        };
        // Only the last step has no layer after it.
        match point.next {
            Some(next) => self.checkpoint(vm, point, next).await,
            None => {
                self.sealed = Some(point);
                Ok(())
            }
        }
    }

    /// Publishes the last step's layer once the guest is off: the disk as the power-off left
    /// it (filesystems unmounted, journal clean), the same bytes the build exports, so a
    /// rerun that reuses every step exports the same image. A guest that had to be stopped
    /// by `quit` or a kill left its filesystems mounted: that disk is exported (and its
    /// verification says so) but not kept.
    async fn publish_sealed(&mut self, stopped: qemu_driver::StopMethod) -> Result<()> {
        let Some(point) = self.sealed.take() else {
            return Ok(());
        };
        if !matches!(stopped, qemu_driver::StopMethod::Powerdown) {
            self.making = None;
            self.build.events.emit(BakeEvent::Warning {
                message: format!(
                    "[{}] the guest did not power off by itself ({stopped:?}): its last checkpoint is not kept",
                    point.step_id
                ),
            });
            return Ok(());
        }
        let (file, backing) = (
            self.progress.current.clone(),
            self.progress.backing_of_current.clone(),
        );
        self.publish_layer(&point, &file, &backing).await?;
        self.after_publish(&point);
        Ok(())
    }

    /// The first-boot checkpoint: keyed by the chain's root, owned by no recipe, the first
    /// step's layer next.
    fn ready_point(&self, support: Option<StateSupport>) -> CheckpointPoint {
        CheckpointPoint {
            key: self.root,
            next: self.step_keys.first().copied(),
            step_id: crate::plan::READY_STEP_ID.to_owned(),
            step_name: "first boot (cloud-init done)".to_owned(),
            recipe: checkpoint::SHARED_RECIPE.to_owned(),
            flush: true,
            support,
        }
    }

    /// Flushes the guest (unless the step just did), freezes the layer, continues on a new
    /// overlay (`next`'s layer), publishes the frozen one.
    async fn checkpoint(&mut self, vm: &Vm, point: CheckpointPoint, next: CacheKey) -> Result<()> {
        // One migration at a time.
        self.finish_pending_state(vm).await?;
        if point.flush {
            let cancel = &self.build.cancel.graceful;
            // sync(2) needs no privilege: no `sudo` round trip (most of a second under TCG).
            self.session
                .exec_capture("sync", Duration::from_secs(300), cancel)
                .await?
                .check("sync before the checkpoint")?;
        }
        let next = self.lease.layer_path(&next);
        let key = &point.key;
        // A layer another build published already wins over this one (a `--no-cache` build on
        // a filled cache): a state saved beside it would be thrown away.
        let state = match &point.support {
            Some(support)
                if self
                    .lease
                    .would_publish(key, &self.progress.backing_of_current) =>
            {
                Some(support.key(vm.config(), vm.accel(), key)?)
            }
            _ => None,
        };
        let saving = match &state {
            Some((state_key, profile)) => {
                let path = self.lease.state_path(state_key);
                let (_, saving) = vm
                    .snapshot_layer_with_state(
                        &next,
                        &self.progress.current,
                        &path,
                        save_mode(vm.config().cpus),
                    )
                    .await?;
                Some(PendingState {
                    step_id: point.step_id.clone(),
                    state_key: *state_key,
                    profile: profile.clone(),
                    layer: *key,
                    saving,
                })
            }
            None => {
                vm.snapshot_layer(&next, &self.progress.current).await?;
                None
            }
        };
        let frozen = std::mem::replace(&mut self.progress.current, next);
        let backing = std::mem::replace(&mut self.progress.backing_of_current, frozen.clone());
        let published = self.publish_layer(&point, &frozen, &backing).await;
        // The state is published after its layer: kept while the next step runs, finished
        // before the next checkpoint, a reboot or the power-off.
        self.pending_state = saving;
        published?;
        if !self
            .pending_state
            .as_ref()
            .is_some_and(|p| p.in_background())
        {
            self.finish_pending_state(vm).await?;
        }
        self.after_publish(&point);
        Ok(())
    }

    /// Waits for the VM state still being written (saved in the background while the guest
    /// ran on) and publishes it beside its layer; a failed save is a warning.
    async fn finish_pending_state(&mut self, vm: &Vm) -> Result<()> {
        let Some(pending) = self.pending_state.take() else {
            return Ok(());
        };
        let saved = match pending.saving {
            // A second signal means now: the unfinished file goes with the run's leftovers.
            Ok(saving) => tokio::select! {
                saved = vm.finish_state_save(saving) => saved,
                () = self.build.cancel.hard.cancelled() => return Ok(()),
            },
            Err(e) => Err(e),
        };
        self.publish_state(
            &pending.step_id,
            (&pending.state_key, &pending.profile, &pending.layer),
            saved,
        )
    }

    /// Hashes the frozen layer `file` (backed by `backing`) and publishes it as `point`'s
    /// checkpoint.
    async fn publish_layer(
        &mut self,
        point: &CheckpointPoint,
        file: &Path,
        backing: &Path,
    ) -> Result<()> {
        let key = &point.key;
        // Hashing a multi-GB layer must not stall the executor (another build, --jobs 2).
        let layer = file.to_path_buf();
        let sha256 = tokio::task::spawn_blocking(move || digest::hash_file(&layer))
            .await
            .map_err(|e| io_err("hash", file)(std::io::Error::other(e)))?
            .map_err(|e| io_err("hash", file)(std::io::Error::other(e)))?;
        let published = self.lease.publish_hashed(
            &PublishRequest {
                key,
                parent: self.progress.parent.as_ref(),
                root: &self.root,
                backing,
                recipe: &point.recipe,
                step_id: &point.step_id,
                step_name: &point.step_name,
            },
            sha256,
        )?;
        let size = std::fs::metadata(file).map_or(0, |m| m.len());
        self.build.events.emit(BakeEvent::CheckpointSaved {
            id: point.step_id.clone(),
            key: key.short().to_owned(),
            size,
            published: published.is_some(),
        });
        if published.is_some() && point.recipe != checkpoint::SHARED_RECIPE {
            self.progress.last_published = Some(point.step_id.clone());
        }
        Ok(())
    }

    /// Moves the lock on making a checkpoint on to the next one and makes `point` the parent
    /// of the next layer.
    fn after_publish(&mut self, point: &CheckpointPoint) {
        // The next checkpoint's lock is taken before this one's goes, so a build waiting for
        // this one never finds the next unclaimed and makes it alongside.
        match &point.next {
            Some(next) => self.claim(next),
            None => self.making = None,
        }
        self.progress.parent = Some(point.key);
    }
}

impl StepRunner<'_, '_, '_> {
    /// Holds the lock on making `key`, if no other build holds it: this build goes on either
    /// way (a build that waits does so before it starts, in [`crate::making`]).
    fn claim(&mut self, key: &CacheKey) {
        if self.making.as_ref().is_some_and(|lock| lock.key() == key) {
            return;
        }
        self.making = match self.secrets.try_lock_making(key) {
            Ok(lock) => lock,
            Err(e) => {
                tracing::debug!(error = %e, "lock on making a checkpoint");
                None
            }
        };
    }

    /// Publishes the state saved with `layer` (kept only if this run published the layer) and
    /// says so; a failed save is a warning: the disk checkpoint is there either way.
    fn publish_state(
        &mut self,
        step_id: &str,
        (state_key, profile, layer): (&CacheKey, &qemu_driver::MachineProfile, &CacheKey),
        saved: qemu_driver::Result<qemu_driver::SavedState>,
    ) -> Result<()> {
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                self.build.events.emit(BakeEvent::Warning {
                    message: format!("[{step_id}] the vm state was not saved: {e}"),
                });
                return Ok(());
            }
        };
        let machine = crate::resume::describe(profile);
        let published = self.lease.publish_state(&checkpoint::StatePublish {
            key: state_key,
            layer,
            machine: &machine,
        })?;
        self.build.events.emit(BakeEvent::VmStateSaved {
            id: step_id.to_owned(),
            size: saved.size,
            paused_secs: secs(saved.paused),
            background: saved.background,
            published: published.is_some(),
        });
        Ok(())
    }
}

/// What saves states after the steps: nothing when the recipe has secrets, because a RAM image
/// taken after a step that saw them could hold their values (freed tmpfs pages, a process's
/// memory) and the store keeps it. Restoring an earlier state stays allowed.
fn saving_support(build: &Build<'_>, support: Option<StateSupport>) -> Option<StateSupport> {
    if support.is_some() && !build.request.secrets.is_empty() {
        build.events.emit(BakeEvent::VmStateNotUsed {
            reason: "no vm states are saved for a recipe with secrets: guest memory could hold their values".into(),
        });
        return None;
    }
    support
}

/// A background save pays only where the host has cores the guest does not use: measured on
/// 2 cores with a 2-vCPU TCG guest, the save (QEMU's migration thread and zstd) and the guest
/// slowed each other so much that a rebuild took 23.3–23.8 s against 21.5–22.0 s with the
/// guest stopped for ~1.1 s per state. Two spare cores for the save's two threads.
fn save_mode(guest_cpus: u32) -> qemu_driver::SaveMode {
    let host = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if host >= guest_cpus as usize + 2 {
        qemu_driver::SaveMode::Background
    } else {
        qemu_driver::SaveMode::Paused
    }
}

/// Where [`try_restore`] looks for a state.
struct RestoreFrom<'x> {
    store: &'x checkpoint::CheckpointStore,
    support: &'x StateSupport,
    config: &'x qemu_driver::VmConfig,
    layer: &'x checkpoint::Layer,
    keys: &'x Arc<BuildKeys>,
}

/// The guest restored from the state saved with the newest reused layer, or `None` after
/// saying why not (no state, another machine's, or a restore that failed): then the build
/// boots from the disk checkpoint.
async fn try_restore(build: &Build<'_>, from: RestoreFrom<'_>) -> Option<Guest> {
    let (state, accel) = match crate::resume::find_state(
        from.store,
        from.support,
        from.config,
        &from.layer.meta.key,
    ) {
        Ok(found) => found,
        Err(reason) => {
            build.events.emit(BakeEvent::VmStateNotUsed { reason });
            return None;
        }
    };
    let request = crate::resume::RestoreRequest {
        config: from.config.clone(),
        accel,
        state: state.path.clone(),
        step_id: from.layer.meta.step_id.clone(),
        keys: from.keys.clone(),
        timeout: build
            .recipe
            .vm
            .boot_timeout
            .min(crate::resume::RESTORE_SSH_TIMEOUT),
    };
    match crate::resume::restore(request, &build.events, &build.cancel.graceful).await {
        Ok(guest) => Some(guest),
        Err(e) => {
            build.events.emit(BakeEvent::VmStateNotUsed {
                reason: format!("restoring the vm state failed: {e}"),
            });
            None
        }
    }
}

fn exit_code(exit: &provisioner::StepExit) -> Option<u32> {
    match exit {
        provisioner::StepExit::Status(status) => status.code(),
        provisioner::StepExit::TimedOut { .. } => None,
    }
}

fn step_spec(recipe: &Recipe, step: &Step, secrets: &recipe::SecretValues) -> StepSpec {
    let mut env = recipe.step_env(step);
    env.insert("IMGBAKE_BUILD_USER".into(), crate::BUILD_USER.into());
    StepSpec {
        id: step.id.to_string(),
        name: step.name.clone(),
        script: step.contents.clone(),
        env,
        // Every step gets every secret, as every var; its key covers only the names it uses.
        secrets: secrets.clone(),
        timeout: step.timeout,
        retries: step.retries,
        reboot: step.reboot,
    }
}

/// What a person needs to log in to a kept VM.
struct DebugAccess<'x> {
    keys: &'x BuildKeys,
    secrets: &'x ChainSecrets,
    run_dir: &'x Path,
}

/// After a failed step with `--keep-on-failure`: announce the ssh command and wait for a stop
/// request (or the VM to go away).
async fn keep_for_debugging(vm: &Vm, build: &Build<'_>, access: &DebugAccess<'_>) {
    let (events, cancel) = (&build.events, build.cancel);
    let key = access.secrets.path(BuildKeys::USER_KEY_FILE);
    match crate::setup::write_known_hosts(access.run_dir, vm.ssh_addr(), access.keys) {
        Ok(known_hosts) => events.emit(BakeEvent::KeptForDebugging {
            ssh_command: crate::setup::ssh_command(vm.ssh_addr(), &key, &known_hosts),
        }),
        Err(e) => events.emit(BakeEvent::Warning {
            message: format!("cannot keep the VM for debugging: {e}"),
        }),
    }
    tokio::select! {
        () = cancel.graceful.cancelled() => {}
        _ = vm.wait_for_exit_or_error() => {}
    }
}
