//! Spawning the children imgbake must never leave behind (QEMU, `qemu-img`).
//!
//! [`spawn`] starts a [`tokio::process::Command`] so that
//! - it runs in its **own process group**: a Ctrl-C in the terminal signals the foreground
//!   group, which then holds imgbake alone; imgbake stops its children itself, in order
//!   (powerdown, then kill);
//! - it gets **SIGKILL as parent-death signal** (`PR_SET_PDEATHSIG`): even `kill -9 imgbake`
//!   takes it along;
//! - it inherits **only a few environment variables** ([`INHERITED_ENV`]): a recipe's secrets
//!   reach imgbake through its environment, and a child's environment stays readable in
//!   `/proc/<pid>/environ` for as long as it runs (a QEMU for hours).
//!
//! Linux sends the parent-death signal when the *thread* that forked the child ends, not the
//! process. A tokio worker thread is not a safe parent (a `block_in_place` anywhere turns it
//! into a pool thread that ends after idling, and `spawn_blocking` threads end after 10 s
//! idle), so every fork happens on one spawner thread that lives until the process exits.
//!
//! [`spawn_with`] takes [`SpawnOptions`]: [`SpawnOptions::transparent_huge_pages`] `false`
//! starts the child with `PR_SET_THP_DISABLE` (QEMU under TCG, see its docs).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let mut command = tokio::process::Command::new("true");
//! command.kill_on_drop(true);
//! let mut child = child::spawn(command).await?;
//! assert!(child.wait().await?.success());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// The variables a child gets from imgbake's environment (when set); nothing else is passed on.
/// QEMU and `qemu-img` need none of them to work; these keep paths, temp files, locale and time
/// zone what the user expects.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];

/// What a child gets besides what [`spawn`] always does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpawnOptions {
    /// Whether the kernel may back the child's anonymous memory with transparent huge pages
    /// (the default). `false` sets `PR_SET_THP_DISABLE` before exec: the child's memory is
    /// then faulted in 4 KiB pages. On a host that is itself a VM handing freed memory back to
    /// its hypervisor (free page reporting), a huge page's first touch there costs the
    /// hypervisor a fault on every 4 KiB of it: loading a 540 MB VM state took QEMU 2.2 s of
    /// system time with huge pages and 0.6 s without (an otherwise idle 2-core VM).
    pub transparent_huge_pages: bool,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        Self {
            transparent_huge_pages: true,
        }
    }
}

/// One spawn request for the spawner thread.
struct Request {
    command: Command,
    /// The caller's runtime: the child is registered with its process driver.
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// The spawner thread's queue. The sender lives in this static, so the thread's `recv` never
/// fails and the thread lives as long as the process.
static SPAWNER: OnceLock<io::Result<mpsc::Sender<Request>>> = OnceLock::new();

fn spawner() -> io::Result<&'static mpsc::Sender<Request>> {
    let started = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("imgbake-spawner".into())
            .spawn(move || {
                while let Ok(request) = rx.recv() {
                    let Request {
                        mut command,
                        runtime,
                        reply,
                    } = request;
                    let _context = runtime.enter();
                    // The caller may have given up (its task was cancelled); the child is then
                    // dropped here, and `kill_on_drop` (if set) ends it.
                    let _ = reply.send(command.spawn());
                }
            })
            .map(|_| tx)
    });
    started
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start the spawner thread: {e}")))
}

/// Spawns `command` in its own process group with SIGKILL as parent-death signal, from the
/// process-long spawner thread (see the crate docs). Call it inside a tokio runtime; the child
/// belongs to that runtime as if spawned with [`Command::spawn`]. Its environment is
/// [`INHERITED_ENV`] only (variables set on `command` are cleared too). Everything else about the
/// command (pipes, `kill_on_drop`) is the caller's.
pub async fn spawn(command: Command) -> io::Result<Child> {
    spawn_with(command, SpawnOptions::default()).await
}

/// [`spawn`] with `options`.
pub async fn spawn_with(mut command: Command, options: SpawnOptions) -> io::Result<Child> {
    command.env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.process_group(0);
    set_up_before_exec(&mut command, options);
    let (reply, answer) = oneshot::channel();
    let request = Request {
        command,
        runtime: tokio::runtime::Handle::try_current().map_err(io::Error::other)?,
        reply,
    };
    spawner()?
        .send(request)
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

// `pre_exec` is unsafe because the closure runs between fork and exec. It only makes
// async-signal-safe syscalls (prctl, getppid) and allocates nothing. No crate offers
// PR_SET_PDEATHSIG (or PR_SET_THP_DISABLE) on tokio's Command without this.
#[allow(unsafe_code)]
fn set_up_before_exec(command: &mut Command, options: SpawnOptions) {
    use rustix::process::{Signal, getpid, getppid, set_parent_process_death_signal};
    let parent = getpid();
    // SAFETY: see above; the closure touches no shared state.
    unsafe {
        command.pre_exec(move || {
            if !options.transparent_huge_pages {
                // Inherited across execve: QEMU's guest RAM is then never a huge page.
                rustix::thread::disable_transparent_huge_pages(true)?;
            }
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // imgbake may have died before prctl took effect: then nobody would kill us.
            if getppid() != Some(parent) {
                return Err(io::Error::other("imgbake exited during the spawn"));
            }
            Ok(())
        });
    }
}
