//! The one place imgbake handles signals. SIGINT (Ctrl-C), SIGTERM (CI cancellation,
//! Kubernetes) and SIGHUP (a closed terminal) all mean "stop": the first asks for a graceful
//! stop (the step is stopped, finished checkpoints are kept, the guest is powered off), the
//! second, at any moment, kills QEMU. The exit status says which signal came first
//! (130 / 143 / 129), as shells report a process killed by it.

use std::sync::atomic::{AtomicI32, Ordering};

use tokio::signal::unix::{SignalKind, signal};

use crate::report::ExitStatus;

/// The first signal received (0 = none).
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Listens for stop signals while alive (call inside the runtime) and maps them onto a
/// [`pipeline::Cancel`].
pub struct Signals {
    cancel: pipeline::Cancel,
    task: tokio::task::JoinHandle<()>,
}

impl Signals {
    /// Starts listening. `announce` is told what is happening, for the terminal.
    pub fn listen(announce: fn(Stage)) -> Signals {
        let cancel = pipeline::Cancel::default();
        let tokens = cancel.clone();
        let task = tokio::spawn(async move {
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            for stage in [Stage::Graceful, Stage::Kill] {
                let number = tokio::select! {
                    _ = int.recv() => libc_number::SIGINT,
                    _ = term.recv() => libc_number::SIGTERM,
                    _ = hup.recv() => libc_number::SIGHUP,
                };
                let _ =
                    FIRST_SIGNAL.compare_exchange(0, number, Ordering::SeqCst, Ordering::SeqCst);
                announce(stage);
                match stage {
                    Stage::Graceful => tokens.graceful.cancel(),
                    Stage::Kill => {
                        tokens.graceful.cancel();
                        tokens.hard.cancel();
                    }
                }
            }
        });
        Signals { cancel, task }
    }

    /// The tokens the pipeline watches.
    pub fn cancel(&self) -> pipeline::Cancel {
        self.cancel.clone()
    }

    /// The graceful-stop token alone (for fetch, export, upload, …).
    pub fn token(&self) -> tokio_util::sync::CancellationToken {
        self.cancel.graceful.clone()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which signal this is for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The first: stop gracefully.
    Graceful,
    /// The second: kill.
    Kill,
}

/// What a build says on the terminal when a signal arrives.
pub fn announce_build(stage: Stage) {
    eprintln!(
        "{}",
        match stage {
            Stage::Graceful =>
                "\ninterrupted: stopping the step and powering the guest off (a second Ctrl-C or signal kills it)",
            Stage::Kill => "\ninterrupted again: killing QEMU",
        }
    );
}

/// Commands without a VM stop at the first signal; nothing to say beyond their error.
pub fn announce_nothing(_: Stage) {}

/// The exit status of an interrupted run: by the first signal received.
pub fn interrupted_status() -> ExitStatus {
    match FIRST_SIGNAL.load(Ordering::SeqCst) {
        libc_number::SIGTERM => ExitStatus::Terminated,
        libc_number::SIGHUP => ExitStatus::HungUp,
        _ => ExitStatus::Interrupted,
    }
}

/// Signal numbers (Linux, every architecture imgbake runs on).
mod libc_number {
    pub const SIGHUP: i32 = 1;
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
}
