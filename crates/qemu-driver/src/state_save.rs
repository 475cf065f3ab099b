//! Saving a VM state with its disk layer (QMP `migrate` to a socket whose other end is the
//! compressor), in the background where the host allows it.
//!
//! The guest is stopped, its disk layer frozen and the save begun at one stopped moment. Then,
//! with QEMU's `background-snapshot` capability (userfaultfd write protection: a page the
//! guest writes is copied out first), QEMU resumes the guest itself once the device state is
//! taken (milliseconds) and writes the RAM as it was at that moment while the next step runs;
//! [`Vm::finish_state_save`] waits for the end. Where the host kernel refuses userfaultfd
//! (non-root with `vm.unprivileged_userfaultfd=0`, kernels before 5.7), the capability cannot be
//! set and the save happens with the guest stopped, as a plain migration, before `cont`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::broadcast;

use crate::block::Layer;
use crate::error::{Error, Result};
use crate::qmp::QmpEvent;
use crate::vm::Vm;
use crate::vmstate::{
    Outcome, STATE_COMPRESSOR, STATE_TIMEOUT, final_outcome, migration_error, migration_outcome,
    query_migrate, utf8,
};

/// Migration bandwidth while saving: QEMU's default (128 MiB/s) would make a save take seconds
/// per 128 MiB for no reason.
const MAX_BANDWIDTH: u64 = 1 << 40;

/// How long QEMU may take to resume the guest after a background save has begun (it saves
/// the device state first: milliseconds).
const RESUME_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the guest runs on while its RAM is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveMode {
    /// `background-snapshot` where the host kernel allows it (else [`SaveMode::Paused`]): the
    /// guest is stopped for milliseconds, and the save then competes with it for host CPUs.
    Background,
    /// The guest stays stopped until the whole state is written.
    Paused,
}

/// What a finished save wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    /// The state file.
    pub path: PathBuf,
    /// Its size in bytes (compressed).
    pub size: u64,
    /// How long the guest was stopped for the layer and the state together.
    pub paused: Duration,
    /// Whether the RAM was written while the guest ran on (`background-snapshot`).
    pub background: bool,
}

/// A save begun by [`Vm::snapshot_layer_with_state`]: still being written while the guest
/// runs ([`StateSaving::in_background`]), or already done. Hand it to
/// [`Vm::finish_state_save`] before the next checkpoint or the power-off. Dropped unfinished,
/// its compressor is killed (the caller removes the partial file with its run's leftovers).
#[derive(Debug)]
pub struct StateSaving {
    path: PathBuf,
    paused: Duration,
    stage: SaveStage,
}

#[derive(Debug)]
enum SaveStage {
    /// Still being written while the guest runs (boxed: the child and receiver are large).
    Running(Box<Running>),
    /// Written whole (this many bytes) with the guest stopped.
    Written(u64),
}

#[derive(Debug)]
struct Running {
    events: broadcast::Receiver<QmpEvent>,
    compressor: tokio::process::Child,
    deadline: tokio::time::Instant,
}

impl StateSaving {
    /// Whether the state is still being written while the guest runs.
    pub fn in_background(&self) -> bool {
        matches!(self.stage, SaveStage::Running(_))
    }
}

impl Vm {
    /// Freezes the disk layer like [`Vm::snapshot_layer`] and begins saving the VM state to
    /// `state` at the same stopped moment: `stop`, `blockdev-snapshot`, `migrate`. The guest
    /// runs on once the save no longer needs it stopped (at once for [`SaveMode::Background`]
    /// where the host allows it, else after the whole save). The layer is taken (or the call fails) whatever happens to
    /// the state; the second result is the save begun (or why it could not be), to finish
    /// with [`Vm::finish_state_save`].
    pub async fn snapshot_layer_with_state(
        &self,
        new_overlay: &Path,
        backing_name: &Path,
        state: &Path,
        mode: SaveMode,
    ) -> Result<(Layer, Result<StateSaving>)> {
        let began = Instant::now();
        self.qmp.execute(qapi::qmp::stop {}).await?;
        let layer = match self.snapshot_layer(new_overlay, backing_name).await {
            Ok(layer) => layer,
            Err(e) => {
                self.qmp.execute(qapi::qmp::cont {}).await?;
                return Err(e);
            }
        };
        let saving = match self.begin_save(state, mode).await {
            Ok(mut saving) => {
                if !saving.in_background() {
                    // A plain migration that completed has let go of the disks for a
                    // destination; `cont` takes them back.
                    self.qmp.execute(qapi::qmp::cont {}).await?;
                }
                saving.paused = began.elapsed();
                Ok(saving)
            }
            Err(e) => {
                let _ = std::fs::remove_file(state);
                // Whatever stage the save stopped at, the guest must run on.
                self.qmp.execute(qapi::qmp::cont {}).await?;
                Err(e)
            }
        };
        Ok((layer, saving))
    }

    /// Waits for a save begun by [`Vm::snapshot_layer_with_state`] to end; returns what it
    /// wrote. A failed save removes its file; the guest runs on either way.
    pub async fn finish_state_save(&self, saving: StateSaving) -> Result<SavedState> {
        let background = saving.in_background();
        let size = match saving.stage {
            SaveStage::Running(running) => self.finish_running(&saving.path, *running).await,
            SaveStage::Written(size) => Ok(size),
        };
        match size {
            Ok(size) => Ok(SavedState {
                path: saving.path,
                size,
                paused: saving.paused,
                background,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&saving.path);
                Err(e)
            }
        }
    }

    /// Starts the migration into the compressor. With `background-snapshot` on, returns once
    /// QEMU has resumed the guest; otherwise once the whole state is written.
    async fn begin_save(&self, path: &Path, mode: SaveMode) -> Result<StateSaving> {
        let fail = |detail: String| Error::StateSave {
            path: path.to_path_buf(),
            detail,
        };
        let socket = self.paths.dir.join("state.sock");
        let _ = std::fs::remove_file(&socket);
        let listener =
            tokio::net::UnixListener::bind(&socket).map_err(|source| Error::QmpSocket {
                path: socket.clone(),
                source,
            })?;
        let mut events = self.qmp.events();
        let background = set_migration_options(self, mode).await?;
        let uri = format!("unix:{}", utf8(&socket)?);
        self.qmp
            .execute_value("migrate", json!({ "uri": uri }))
            .await?;
        let deadline = tokio::time::Instant::now() + STATE_TIMEOUT;
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted.map_err(|e| fail(format!("qemu did not connect ({e})"))),
            outcome = migration_outcome(&mut events) => Err(fail(match outcome {
                Outcome::Failed(why) => migration_error(self).await.unwrap_or(why),
                Outcome::Completed => "the migration ended before it connected".into(),
            })),
            () = tokio::time::sleep_until(deadline) => Err(fail("qemu did not connect".into())),
        };
        drop(listener);
        let _ = std::fs::remove_file(&socket);
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                let _ = self.qmp.execute_value("migrate_cancel", json!({})).await;
                return Err(e);
            }
        };
        // Not `exec:zstd …`: QEMU 7.2 kills an `exec:` child that has not exited 10 ms after
        // the stream ends, which cuts off the compressor's last frame (measured: a 0-byte
        // file). Here the save is over when the compressor exits.
        let stream = stream
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
            .map_err(|e| fail(format!("cannot hand the stream on ({e})")))?;
        let mut command = tokio::process::Command::new(STATE_COMPRESSOR);
        command
            .args(["-q", "-1", "-T0", "-f", "-o"])
            .arg(path)
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                stream,
            )))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // Like QEMU: own process group, killed with imgbake (even by `kill -9`).
        let compressor = child::spawn(command).await.map_err(|source| Error::Spawn {
            program: STATE_COMPRESSOR.into(),
            source,
        })?;
        let mut running = Running {
            events,
            compressor,
            deadline,
        };
        let stage = if background {
            self.wait_for_resume(path, &mut running).await?;
            SaveStage::Running(Box::new(running))
        } else {
            SaveStage::Written(self.finish_running(path, running).await?)
        };
        Ok(StateSaving {
            path: path.to_path_buf(),
            paused: Duration::ZERO,
            stage,
        })
    }

    /// Waits until QEMU has resumed the guest during a background save (it does so itself
    /// once the device state is taken).
    async fn wait_for_resume(&self, path: &Path, running: &mut Running) -> Result<()> {
        let fail = |detail: String| Error::StateSave {
            path: path.to_path_buf(),
            detail,
        };
        let until = tokio::time::Instant::now() + RESUME_TIMEOUT;
        loop {
            let event = tokio::select! {
                event = running.events.recv() => event,
                () = tokio::time::sleep_until(until) => {
                    let _ = self.qmp.execute_value("migrate_cancel", json!({})).await;
                    return Err(fail(format!("the guest was not resumed after {RESUME_TIMEOUT:?}")));
                }
            };
            match event {
                Ok(QmpEvent::Other { name, .. }) if name == "RESUME" => return Ok(()),
                Ok(QmpEvent::Other { name, data }) if name == "MIGRATION" => {
                    let status = data.get("status").and_then(serde_json::Value::as_str);
                    match status.and_then(final_outcome) {
                        // Resumed already (its event came first) and done: nothing to wait for.
                        Some(Outcome::Completed) => return Ok(()),
                        Some(Outcome::Failed(why)) => {
                            let why = migration_error(self).await.unwrap_or(why);
                            let _ = running.compressor.start_kill();
                            return Err(fail(why));
                        }
                        None => {}
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // A lagging receiver may have missed the event: ask.
                    if self.query_status().await? == crate::VmState::Running {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(fail("the qmp connection closed".into()));
                }
            }
        }
    }

    /// Waits for the migration to complete and the compressor to exit; returns the file's
    /// size.
    async fn finish_running(&self, path: &Path, mut running: Running) -> Result<u64> {
        let fail = |detail: String| Error::StateSave {
            path: path.to_path_buf(),
            detail,
        };
        let outcome = tokio::select! {
            outcome = self.migration_end(&mut running.events) => outcome,
            () = tokio::time::sleep_until(running.deadline) => Outcome::Failed(format!("not done after {STATE_TIMEOUT:?}")),
        };
        if let Outcome::Failed(why) = outcome {
            let detail = migration_error(self).await.unwrap_or(why);
            let _ = self.qmp.execute_value("migrate_cancel", json!({})).await;
            let _ = running.compressor.start_kill();
            return Err(fail(detail));
        }
        // QEMU closed the socket when it completed: the compressor sees the end of its input.
        let exit = tokio::time::timeout_at(running.deadline, running.compressor.wait_with_output())
            .await
            .map_err(|_| fail(format!("{STATE_COMPRESSOR} did not finish")))?
            .map_err(|e| fail(format!("waiting for {STATE_COMPRESSOR}: {e}")))?;
        if !exit.status.success() {
            return Err(fail(format!(
                "{STATE_COMPRESSOR} failed ({}): {}",
                exit.status,
                String::from_utf8_lossy(&exit.stderr).trim()
            )));
        }
        let size = std::fs::metadata(path)
            .map_err(|e| fail(format!("the state file is missing ({e})")))?
            .len();
        Ok(size)
    }

    /// The migration's end: from its events, and (because a receiver left unpolled while a
    /// background save ran may have lagged past them) from `query-migrate` every second.
    async fn migration_end(&self, events: &mut broadcast::Receiver<QmpEvent>) -> Outcome {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                outcome = migration_outcome(events) => return outcome,
                _ = tick.tick() => {
                    let status = query_migrate(self, "status").await;
                    if let Some(outcome) = status.as_deref().and_then(final_outcome) {
                        return outcome;
                    }
                }
            }
        }
    }
}

/// `events` on, no bandwidth cap, and for [`SaveMode::Background`] `background-snapshot` where
/// the host allows it (returns whether it is on).
async fn set_migration_options(vm: &Vm, mode: SaveMode) -> Result<bool> {
    vm.qmp
        .execute_value(
            "migrate-set-parameters",
            json!({ "max-bandwidth": MAX_BANDWIDTH }),
        )
        .await?;
    let capabilities = |background: bool| {
        json!({ "capabilities": [
            { "capability": "events", "state": true },
            { "capability": "background-snapshot", "state": background },
        ] })
    };
    if mode == SaveMode::Background {
        // QEMU refuses the capability when userfaultfd write protection is not available (it
        // checks the host kernel): then the save runs with the guest stopped.
        match vm
            .qmp
            .execute_value("migrate-set-capabilities", capabilities(true))
            .await
        {
            Ok(_) => return Ok(true),
            Err(e) => tracing::debug!(error = %e, "no background-snapshot: saving stopped"),
        }
    }
    // Set either way: a capability stays on for this QEMU's later migrations.
    vm.qmp
        .execute_value("migrate-set-capabilities", capabilities(false))
        .await?;
    Ok(false)
}
