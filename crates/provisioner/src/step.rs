//! Running one recipe step in the guest: upload, run as root with its environment, stream
//! and log its output, enforce its timeout, retry, reboot.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

use crate::exec::{ExitStatus, Stream};
use crate::mask::SecretMask;
use crate::session::GuestSession;
use crate::shell::{self, is_secret_name};
use crate::wait::wait_for_ssh;
use crate::{Error, Result};

/// Directory in the guest (root-only, 0700) where step scripts are uploaded. Each step's files
/// are removed after it ran, and the directory itself when empty, so a final cleanup step leaves
/// nothing behind.
pub const REMOTE_STEP_DIR: &str = "/var/lib/imgbake/steps";
/// Directory in the guest (root-only, 0700) for each step's secrets file. It must be on a tmpfs
/// (`/run` is one on Ubuntu and Debian): the file is removed before the script starts, but its
/// blocks would otherwise stay on the disk, in the step's checkpoint layer and in the image.
pub const REMOTE_SECRET_DIR: &str = "/run/imgbake-secrets";
/// Lines kept for the failure report.
pub const LAST_LINES: usize = 30;
/// Default command that reboots the guest after a `reboot: true` step that returned.
pub const DEFAULT_REBOOT_COMMAND: &str = "systemctl reboot";

/// One step, as plain data (the binary maps recipe steps to this).
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// The step id, e.g. `04`.
    pub id: String,
    /// Its name, e.g. `nvidia-driver`.
    pub name: String,
    /// The script's bytes (run with `bash`).
    pub script: Vec<u8>,
    /// Environment: the recipe's vars and the step's `env`. Values of names that look secret
    /// ([`crate::is_secret_name`]) are masked in output and logs.
    pub env: BTreeMap<String, String>,
    /// Secrets, exported to the script like `env` but written only to a tmpfs in the guest
    /// ([`REMOTE_SECRET_DIR`]) and removed before the script starts; every value is masked in
    /// output and logs ([`SecretMask`]). `Debug` shows the names only.
    pub secrets: BTreeMap<String, SecretString>,
    /// Time allowed for one attempt.
    pub timeout: Duration,
    /// Extra attempts after a failure (exit code, signal or timeout).
    pub retries: u32,
    /// The step reboots the guest, or is followed by a reboot.
    pub reboot: bool,
}

/// Options for [`run_step`] that come from the run rather than the step.
#[derive(Clone, Debug)]
pub struct StepOptions {
    /// Where the step's output goes (`<run>/logs/NN-name.log`); parents are created.
    pub log_path: PathBuf,
    /// Time allowed for the guest to come back after a reboot.
    pub reboot_timeout: Duration,
    /// Command (run as root) that reboots the guest: [`DEFAULT_REBOOT_COMMAND`].
    pub reboot_command: String,
    /// Directory in the guest for the step's files: [`REMOTE_STEP_DIR`].
    pub remote_dir: String,
    /// Directory in the guest, on a tmpfs, for the step's secrets: [`REMOTE_SECRET_DIR`].
    pub secret_dir: String,
    /// After a successful step, flush the guest's file systems (`sync`) in the same command
    /// that removes the step's files, and fail if it fails: what a checkpoint after the step
    /// needs, without another round trip through `sudo` (a second or so under TCG).
    pub sync_after: bool,
    /// Root shell commands run before the script in its first attempt's command (a restored
    /// guest's clock and entropy): no round trip of their own. If they fail, the step does not
    /// run and [`run_step`] returns [`Error::RemoteCommand`].
    pub preamble: Option<String>,
}

impl StepOptions {
    /// Options with the default reboot command.
    pub fn new(log_path: impl Into<PathBuf>, reboot_timeout: Duration) -> Self {
        Self {
            log_path: log_path.into(),
            reboot_timeout,
            reboot_command: DEFAULT_REBOOT_COMMAND.into(),
            remote_dir: REMOTE_STEP_DIR.into(),
            secret_dir: REMOTE_SECRET_DIR.into(),
            sync_after: false,
            preamble: None,
        }
    }
}

/// How an attempt of a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepExit {
    /// The script exited or was killed by a signal.
    Status(ExitStatus),
    /// It ran past its timeout and was killed.
    TimedOut {
        /// The step's timeout.
        after: Duration,
    },
}

impl StepExit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, StepExit::Status(s) if s.success())
    }
}

impl fmt::Display for StepExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepExit::Status(status) => status.fmt(f),
            StepExit::TimedOut { after } => write!(f, "timed out after {after:?}"),
        }
    }
}

/// What happens while a step runs. The library never prints; the binary renders these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEvent {
    /// An attempt started (1-based).
    Started {
        /// Step id.
        id: String,
        /// Attempt number.
        attempt: u32,
        /// Attempts allowed in all.
        of: u32,
    },
    /// A line of output (secret values masked).
    Output {
        /// Step id.
        id: String,
        /// Stdout or stderr.
        stream: Stream,
        /// The line.
        line: String,
    },
    /// An attempt failed and the step will run again.
    Retrying {
        /// Step id.
        id: String,
        /// How the failed attempt ended.
        exit: StepExit,
        /// The next attempt's number.
        next_attempt: u32,
        /// The pause before it.
        after: Duration,
    },
    /// The guest is rebooting; imgbake waits for it to come back.
    Rebooting {
        /// Step id.
        id: String,
    },
    /// The guest is back after the reboot, with a new boot id.
    Rebooted {
        /// Step id.
        id: String,
        /// How long it took from the reboot until SSH answered again and cloud-init was done.
        downtime: Duration,
    },
    /// The step is over (success or not).
    Finished {
        /// Step id.
        id: String,
        /// How the last attempt ended.
        exit: StepExit,
        /// Time since the first attempt started (reboot included).
        duration: Duration,
    },
}

/// A step that ran to success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSucceeded {
    /// Step id.
    pub id: String,
    /// Attempts used.
    pub attempts: u32,
    /// Wall time (reboot included).
    pub duration: Duration,
    /// Whether the guest was rebooted after it.
    pub rebooted: bool,
}

/// A step that failed after all its attempts: what the failure report shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailed {
    /// Step id.
    pub id: String,
    /// Step name.
    pub name: String,
    /// How the last attempt ended.
    pub exit: StepExit,
    /// Attempts used.
    pub attempts: u32,
    /// The last [`LAST_LINES`] lines of the last attempt (stdout and stderr interleaved).
    pub last_lines: Vec<String>,
    /// The full log.
    pub log_path: PathBuf,
    /// Wall time.
    pub duration: Duration,
}

/// How [`run_step`] ended when the runner itself worked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// The script exited 0 (and the reboot, if any, happened).
    Succeeded(StepSucceeded),
    /// The script failed every attempt.
    Failed(Box<StepFailed>),
}

impl StepOutcome {
    /// `Ok` for success, [`Error::StepFailed`] otherwise, for `?`.
    pub fn into_result(self) -> Result<StepSucceeded> {
        match self {
            StepOutcome::Succeeded(ok) => Ok(ok),
            StepOutcome::Failed(failed) => Err(Error::StepFailed(failed)),
        }
    }
}

/// The step's file name stem in the guest: `NN-name` with anything unusual replaced by `_`.
fn remote_stem(step: &StepSpec) -> String {
    format!("{}-{}", step.id, step.name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The mask for a step's output: its secrets, and env values whose names look secret.
fn step_mask(step: &StepSpec) -> SecretMask {
    let secrets = step
        .secrets
        .iter()
        .map(|(name, value)| (name.as_str(), value.expose_secret()));
    let env = step
        .env
        .iter()
        .filter(|(name, _)| is_secret_name(name))
        .map(|(name, value)| (name.as_str(), value.as_str()));
    SecretMask::new(secrets.chain(env))
}

/// The secrets file's text: `export NAME='value'` lines, zeroed when dropped.
fn secrets_file(secrets: &BTreeMap<String, SecretString>) -> Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    for (name, value) in secrets {
        shell::push_export(&mut text, name, value.expose_secret())?;
    }
    Ok(text)
}

struct StepLog {
    path: PathBuf,
    out: BufWriter<File>,
    failed: Option<std::io::Error>,
}

impl StepLog {
    fn create(path: &Path) -> Result<Self> {
        let err = |source| Error::Log {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(err)?;
        }
        let file = File::create(path).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            failed: None,
        })
    }

    fn line(&mut self, text: &str) {
        if self.failed.is_none()
            && let Err(e) = writeln!(self.out, "{text}")
        {
            self.failed = Some(e);
        }
    }

    fn finish(&mut self) -> Result<()> {
        let flushed = self.out.flush();
        match self.failed.take().map_or(flushed, Err) {
            Ok(()) => Ok(()),
            Err(source) => Err(Error::Log {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// Runs `step` in the guest.
///
/// Each attempt uploads the script and a private environment file (both 0600 under
/// [`REMOTE_STEP_DIR`]) and runs `bash <script>` as root (the session's [`crate::Privilege`]),
/// with the environment sourced from the file, which is deleted before the script starts, so
/// values never appear on a command line or in sudo's log. The step's secrets get a file of
/// their own in `options.secret_dir` ([`REMOTE_SECRET_DIR`]), which must be on a tmpfs
/// ([`Error::SecretsNotOnTmpfs`] otherwise, before anything is uploaded), sourced and deleted
/// the same way, so they never reach the disk. Output, with every secret value masked
/// ([`SecretMask`]: `[secret NAME]`), is streamed as [`StepEvent::Output`] and written to
/// `options.log_path`. A failed attempt is retried
/// `step.retries` times with a growing pause. For a `reboot: true` step that succeeded (or
/// dropped the connection: it rebooted itself), imgbake waits for the guest to go down and
/// come back and checks that the boot id changed; `session` is then the new connection.
///
/// Errors are for the runner itself (connection lost, cancelled, log not writable, reboot
/// failed); a step that fails is `Ok(StepOutcome::Failed)`.
pub async fn run_step(
    session: &mut GuestSession,
    step: &StepSpec,
    options: &StepOptions,
    mut events: impl FnMut(StepEvent),
    cancel: &CancellationToken,
) -> Result<StepOutcome> {
    let started = Instant::now();
    let id = step.id.clone();
    let stem = remote_stem(step);
    let dir = options.remote_dir.trim_end_matches('/');
    let script_path = format!("{dir}/{stem}.sh");
    let env_path = format!("{dir}/{stem}.env");
    let secret_dir = options.secret_dir.trim_end_matches('/');
    let secret_path = format!("{secret_dir}/{stem}.env");
    let has_secrets = !step.secrets.is_empty();
    let secret_text = secrets_file(&step.secrets)?;
    let mask = step_mask(step);
    let mut env = step.env.clone();
    env.insert("IMGBAKE_STEP_ID".into(), step.id.clone());
    env.insert("IMGBAKE_STEP_NAME".into(), step.name.clone());
    let env_file = shell::export_lines(&env)?;
    tracing::debug!(
        step = %id,
        vars = ?step.env.keys().collect::<Vec<_>>(),
        secrets = ?step.secrets.keys().collect::<Vec<_>>(),
        "running step"
    );
    let boot_before = if step.reboot {
        Some(session.boot_id(cancel).await?)
    } else {
        None
    };
    if has_secrets {
        // Before anything is uploaded: refused secrets leave nothing behind.
        prepare_secret_dir(session, secret_dir, cancel).await?;
    }
    let mut log = StepLog::create(&options.log_path)?;
    let attempts = step.retries.saturating_add(1);
    let q = |p: &str| shell::quote(p).unwrap_or_default();
    // Both files are sourced and removed before the script starts: values never appear on a
    // command line, and the secrets never leave the tmpfs.
    let (source_secrets, files) = if has_secrets {
        let secrets = q(&secret_path);
        (
            format!(" . {secrets};"),
            format!("{} {secrets}", q(&env_path)),
        )
    } else {
        (String::new(), q(&env_path))
    };
    // The script and its environment file come on the command's stdin, written by the same
    // root shell that runs them: no `sudo` round trip of their own (a second under TCG).
    let bundle = [env_file.as_bytes(), &step.script[..]].concat();
    let command = format!(
        "{deliver} set -a; . {env};{source_secrets} set +a; rm -f {files}; cd /; exec bash {script} </dev/null",
        deliver = deliver_from_stdin(
            dir,
            &[
                (&env_path, env_file.len()),
                (&script_path, step.script.len())
            ]
        )?,
        env = q(&env_path),
        script = q(&script_path),
    );
    let mut leftovers = vec![script_path.as_str(), env_path.as_str()];
    if has_secrets {
        leftovers.push(secret_path.as_str());
    }
    let cleanup = Cleanup {
        dirs: if has_secrets {
            vec![dir, secret_dir]
        } else {
            vec![dir]
        },
        files: &leftovers,
    };

    let mut attempt = 0;
    let (exit, last_lines, rebooting_itself) = loop {
        attempt += 1;
        events(StepEvent::Started {
            id: id.clone(),
            attempt,
            of: attempts,
        });
        log.line(&format!(
            "# imgbake: step {id} ({}) attempt {attempt}/{attempts}",
            step.name
        ));
        // The secrets file goes on its own, into the directory checked to be a tmpfs, from its
        // zeroized buffer (the bundle on stdin is a plain copy of the script and environment).
        if has_secrets {
            session
                .upload(secret_text.as_bytes(), &secret_path, 0o600, cancel)
                .await?;
        }
        let mut last = VecDeque::with_capacity(LAST_LINES);
        let what = format!("step {id}");
        let preamble = options.preamble.as_deref().filter(|_| attempt == 1);
        let cmd = match preamble {
            Some(preamble) => std::borrow::Cow::Owned(with_preamble(preamble, &command)),
            None => std::borrow::Cow::Borrowed(&command),
        };
        let remote = crate::session::Remote {
            cmd: &cmd,
            stdin: Some(&bundle),
            root: true,
            limit: step.timeout,
            what: &what,
            mask: Some(&mask),
        };
        let result = session
            .run(&remote, cancel, |out| {
                let line = out.line;
                log.line(&line);
                if last.len() == LAST_LINES {
                    last.pop_front();
                }
                last.push_back(line.clone());
                events(StepEvent::Output {
                    id: id.clone(),
                    stream: out.stream,
                    line,
                });
            })
            .await;
        let exit = match result {
            Ok(status) => StepExit::Status(status),
            Err(Error::Timeout { after, .. }) => StepExit::TimedOut { after },
            // A reboot step may reboot the guest itself: the connection drops.
            Err(Error::Disconnected { .. }) if step.reboot => StepExit::Status(ExitStatus::Code(0)),
            Err(e) => {
                log.line(&format!("# imgbake: step {id}: {e}"));
                let _ = log.finish();
                return Err(e);
            }
        };
        log.line(&format!("# imgbake: step {id} attempt {attempt}: {exit}"));
        if preamble.is_some()
            && let StepExit::Status(status @ ExitStatus::Code(PREAMBLE_FAILED_EXIT)) = &exit
        {
            let _ = log.finish();
            return Err(Error::RemoteCommand {
                what: format!("what runs before step {id}"),
                status: status.clone(),
                stderr: last.iter().cloned().collect::<Vec<_>>().join("\n"),
            });
        }
        // Killed by a signal during a reboot step: either the guest is going down (shutdown
        // kills it; the boot id check after reconnecting tells whether it really rebooted), or
        // something else killed it (the OOM killer during a driver install) — a failure.
        let rebooting_itself = step.reboot
            && matches!(&exit, StepExit::Status(ExitStatus::Signal { .. }))
            && guest_going_down(session, cancel).await;
        if exit.success() || rebooting_itself || attempt >= attempts {
            break (exit, last, rebooting_itself);
        }
        let pause = Duration::from_secs(2u64.saturating_pow(attempt).min(30));
        events(StepEvent::Retrying {
            id: id.clone(),
            exit,
            next_attempt: attempt + 1,
            after: pause,
        });
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = log.finish();
                return Err(Error::Cancelled { what: format!("step {id}") });
            }
            _ = sleep_until(Instant::now() + pause) => {}
        }
    };
    log.finish()?;

    let ok = exit.success() || rebooting_itself;
    if !ok {
        let _ = remove_step_files(session, &cleanup, false, cancel).await;
        events(StepEvent::Finished {
            id: id.clone(),
            exit: exit.clone(),
            duration: started.elapsed(),
        });
        return Ok(StepOutcome::Failed(Box::new(StepFailed {
            id,
            name: step.name.clone(),
            exit,
            attempts: attempt,
            last_lines: last_lines.into(),
            log_path: options.log_path.clone(),
            duration: started.elapsed(),
        })));
    }
    if let Some(before) = boot_before {
        events(StepEvent::Rebooting { id: id.clone() });
        let downtime = reboot_and_reconnect(session, step, options, &before, cancel).await?;
        events(StepEvent::Rebooted {
            id: id.clone(),
            downtime,
        });
    }
    let removed = remove_step_files(session, &cleanup, options.sync_after, cancel).await;
    if options.sync_after {
        removed?;
    }
    events(StepEvent::Finished {
        id: id.clone(),
        exit: StepExit::Status(ExitStatus::Code(0)),
        duration: started.elapsed(),
    });
    Ok(StepOutcome::Succeeded(StepSucceeded {
        id,
        attempts: attempt,
        duration: started.elapsed(),
        rebooted: step.reboot,
    }))
}

/// Exit status of a first attempt whose [`StepOptions::preamble`] failed: the script did not
/// run.
pub const PREAMBLE_FAILED_EXIT: u32 = 124;

/// `command` with `preamble` run first, in the same root shell; the step does not start if the
/// preamble fails.
fn with_preamble(preamble: &str, command: &str) -> String {
    format!(
        "{{ {preamble}; }} || {{ echo \"imgbake: what runs before the step failed\" >&2; exit {PREAMBLE_FAILED_EXIT}; }}; {command}"
    )
}

/// Exit status of a step attempt whose files did not arrive whole (the connection broke while
/// they were sent): the script did not run.
pub const DELIVERY_FAILED_EXIT: i32 = 125;

/// A shell prefix that writes `files` (path, length in bytes), in order, from stdin into
/// `dir` (created 0700), each as 0600 under a temporary name renamed once it is whole, and
/// exits [`DELIVERY_FAILED_EXIT`] if one is short. GNU `head -c` reads no further than it
/// writes, so each file takes exactly its own bytes off the pipe.
fn deliver_from_stdin(dir: &str, files: &[(&str, usize)]) -> Result<String> {
    let mut parts = vec![format!("mkdir -p {}", shell::checked_remote_path(dir)?)];
    for (path, len) in files {
        let path = shell::checked_remote_path(path)?;
        parts.push(format!(
            "head -c {len} > {path}.imgbake-tmp && [ \"$(wc -c < {path}.imgbake-tmp)\" -eq {len} ] && mv -f {path}.imgbake-tmp {path}"
        ));
    }
    Ok(format!(
        "(umask 077 && {}) || {{ echo \"imgbake: the step's files did not reach the guest whole\" >&2; exit {DELIVERY_FAILED_EXIT}; }};",
        parts.join(" && ")
    ))
}

/// After a reboot step's script died from a signal: is the guest shutting down? A dropped
/// connection or systemd saying `stopping` means yes; a guest that answers anything else is
/// up and running, so the signal came from elsewhere.
async fn guest_going_down(session: &GuestSession, cancel: &CancellationToken) -> bool {
    if session.is_closed() {
        return true;
    }
    match session
        .exec_capture(
            "systemctl is-system-running",
            Duration::from_secs(20),
            cancel,
        )
        .await
    {
        Ok(captured) => captured.stdout.trim() == "stopping",
        // No answer (connection dropped, timed out mid-shutdown): it is going down.
        Err(_) => true,
    }
}

/// What [`remove_step_files`] removes.
struct Cleanup<'a> {
    /// Directories removed when empty (the step files' first).
    dirs: Vec<&'a str>,
    /// The step's files.
    files: &'a [&'a str],
}

/// Makes the secrets directory (0700, root's) and checks that it is on a tmpfs.
async fn prepare_secret_dir(
    session: &GuestSession,
    dir: &str,
    cancel: &CancellationToken,
) -> Result<()> {
    let quoted = shell::checked_remote_path(dir)?;
    let cmd =
        format!("umask 077; mkdir -p {quoted} && chmod 0700 {quoted} && stat -f -c %T {quoted}");
    let out = session
        .exec_capture_root(&cmd, Duration::from_secs(30), cancel)
        .await?
        .check(&format!("prepare {dir} for the step's secrets"))?;
    let fstype = out.stdout.trim();
    if fstype == "tmpfs" || fstype == "ramfs" {
        Ok(())
    } else {
        Err(Error::SecretsNotOnTmpfs {
            dir: dir.to_owned(),
            fstype: fstype.to_owned(),
        })
    }
}

/// The step's files, then their directories if empty; with `sync`, then a flush of the guest's
/// file systems. The removal is best effort (its errors are only logged); the result is the
/// flush's.
async fn remove_step_files(
    session: &GuestSession,
    what: &Cleanup<'_>,
    sync: bool,
    cancel: &CancellationToken,
) -> Result<()> {
    if session.is_closed() && !sync {
        return Ok(());
    }
    let mut files: Vec<String> = what.files.iter().filter_map(|p| shell::quote(p)).collect();
    let mut dirs: Vec<String> = what
        .dirs
        .iter()
        .map(|d| shell::quote(d).unwrap_or_default())
        .collect();
    if what.dirs.first() == Some(&REMOTE_STEP_DIR) {
        dirs.push("/var/lib/imgbake".into());
    }
    files.retain(|f| !f.is_empty());
    dirs.retain(|d| !d.is_empty());
    let cmd = format!(
        "rm -f {}; rmdir {} 2>/dev/null; {}",
        files.join(" "),
        dirs.join(" "),
        if sync { "sync" } else { "true" }
    );
    // A flush of a large page cache can take minutes on a slow disk.
    let limit = Duration::from_secs(if sync { 300 } else { 30 });
    match session.exec_capture_root(&cmd, limit, cancel).await {
        Ok(out) if sync => out.check("sync after the step").map(drop),
        Ok(_) => Ok(()),
        Err(e) if sync => Err(e),
        Err(e) => {
            tracing::debug!(error = %e, "removing step files");
            Ok(())
        }
    }
}

/// Reboots the guest (unless it is already going down), waits for the old connection to end,
/// reconnects and checks the boot id. Returns the downtime.
async fn reboot_and_reconnect(
    session: &mut GuestSession,
    step: &StepSpec,
    options: &StepOptions,
    boot_before: &str,
    cancel: &CancellationToken,
) -> Result<Duration> {
    let started = Instant::now();
    let deadline = started + options.reboot_timeout;
    let reboot_err = |source: Error| Error::Reboot {
        step: step.id.clone(),
        source: Box::new(source),
    };
    if !session.is_closed() {
        // The step returned normally: reboot it ourselves. The command may not return (the
        // connection drops): any ending but a cancel is fine.
        match session
            .exec_capture_root(&options.reboot_command, Duration::from_secs(30), cancel)
            .await
        {
            Err(e @ Error::Cancelled { .. }) => return Err(e),
            Ok(out) if !out.status.success() => {
                return Err(reboot_err(Error::RemoteCommand {
                    what: options.reboot_command.clone(),
                    status: out.status,
                    stderr: out.stderr,
                }));
            }
            _ => {}
        }
    }
    let target = session.target().clone();
    loop {
        wait_until_gone(session, deadline, cancel).await?;
        if Instant::now() >= deadline && !session.is_closed() {
            let still = session.boot_id(cancel).await.map_err(reboot_err)?;
            return Err(Error::BootIdUnchanged {
                step: step.id.clone(),
                boot_id: still,
            });
        }
        let fresh = wait_for_ssh(&target, deadline, cancel)
            .await
            .map_err(|e| match e {
                Error::Cancelled { .. } => e,
                other => reboot_err(other),
            })?;
        *session = fresh;
        let now = session.boot_id(cancel).await.map_err(reboot_err)?;
        if now != boot_before {
            // cloud-init runs at every boot: the next step (a cleanup removing its logs and
            // state) must not race its later stages. How it went is the first boot's concern
            // (the seed was applied then); here only its end matters.
            let left = deadline.saturating_duration_since(Instant::now());
            session
                .cloud_init_wait(left, cancel)
                .await
                .map_err(reboot_err)?;
            return Ok(started.elapsed());
        }
        // Reached the old system before its sshd stopped: wait for it to go down again.
        if Instant::now() >= deadline {
            return Err(Error::BootIdUnchanged {
                step: step.id.clone(),
                boot_id: now,
            });
        }
    }
}

/// Waits until the guest drops this connection (it is shutting down), at most until
/// `deadline`: a harmless `sleep` runs until the guest kills it or the connection ends.
async fn wait_until_gone(
    session: &GuestSession,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<()> {
    if session.is_closed() {
        return Ok(());
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match session.exec_capture("exec sleep 3600", left, cancel).await {
        Err(e @ Error::Cancelled { .. }) => Err(e),
        // Exit, signal, disconnect, timeout: either it is gone or the deadline passed and
        // the reconnect/boot-id check will say so.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    /// Runs the delivery prefix in a real `sh` with `stdin`, then `echo delivered`.
    fn deliver(dir: &Path, files: &[(&str, usize)], stdin: &[u8]) -> std::process::Output {
        let files: Vec<(String, usize)> = files
            .iter()
            .map(|(name, len)| (dir.join(name).display().to_string(), *len))
            .collect();
        let files: Vec<(&str, usize)> = files.iter().map(|(p, l)| (p.as_str(), *l)).collect();
        let prefix = deliver_from_stdin(&dir.display().to_string(), &files).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", &format!("{prefix} echo delivered; cat")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn the_bundle_on_stdin_becomes_private_files_and_nothing_more_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("steps");
        let out = deliver(&dir, &[("a.env", 4), ("a.sh", 6)], b"A=1\necho 1left over");
        assert!(out.status.success(), "{out:?}");
        // What follows the files on stdin is left to the command after the prefix.
        assert_eq!(out.stdout, b"delivered\nleft over");
        assert_eq!(std::fs::read(dir.join("a.env")).unwrap(), b"A=1\n");
        assert_eq!(std::fs::read(dir.join("a.sh")).unwrap(), b"echo 1");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("a.sh")), 0o600);
        // The umask of the command after the prefix is not the prefix's.
        let umask = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("{} umask", deliver_from_stdin("/tmp", &[]).unwrap()),
            ])
            .output()
            .unwrap();
        let outer = std::process::Command::new("sh")
            .args(["-c", "umask"])
            .output()
            .unwrap();
        assert_eq!(umask.stdout, outer.stdout);
    }

    #[test]
    fn a_short_bundle_leaves_no_file_under_its_name_and_exits_125() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("steps");
        let out = deliver(&dir, &[("a.env", 4), ("a.sh", 6)], b"A=1\nech");
        assert_eq!(out.status.code(), Some(DELIVERY_FAILED_EXIT), "{out:?}");
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains("did not reach the guest whole"));
        assert!(dir.join("a.env").exists());
        assert!(!dir.join("a.sh").exists());
    }

    #[test]
    fn a_failing_preamble_stops_the_command_and_a_passing_one_runs_it() {
        let run = |preamble: &str| {
            std::process::Command::new("sh")
                .args(["-c", &with_preamble(preamble, "echo step ran")])
                .output()
                .unwrap()
        };
        let ok = run("true && echo renewed");
        assert!(ok.status.success(), "{ok:?}");
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "renewed\nstep ran\n");
        let failed = run("true && false");
        assert_eq!(
            failed.status.code(),
            Some(PREAMBLE_FAILED_EXIT as i32),
            "{failed:?}"
        );
        assert!(failed.stdout.is_empty());
        assert!(String::from_utf8_lossy(&failed.stderr).contains("before the step failed"));
    }

    #[test]
    fn remote_names_are_tame() {
        let step = StepSpec {
            id: "04".into(),
            name: "nvidia driver/../x".into(),
            script: vec![],
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            timeout: Duration::from_secs(1),
            retries: 0,
            reboot: false,
        };
        assert_eq!(remote_stem(&step), "04-nvidia_driver_.._x");
    }

    #[test]
    fn secrets_and_secret_looking_env_values_are_masked() {
        let step = StepSpec {
            id: "01".into(),
            name: "a".into(),
            script: vec![],
            env: BTreeMap::from([
                ("GITHUB_TOKEN".to_string(), "ghp_abcdef123".to_string()),
                ("VERSION".to_string(), "22.04".to_string()),
                ("API_KEY".to_string(), "abc".to_string()),
            ]),
            secrets: BTreeMap::from([(
                "REPO_PASS".to_string(),
                SecretString::from("hunter2-long"),
            )]),
            timeout: Duration::from_secs(1),
            retries: 0,
            reboot: false,
        };
        let m = step_mask(&step);
        assert_eq!(
            m.mask_str("token=ghp_abcdef123 v=22.04 p=hunter2-long"),
            "token=[secret GITHUB_TOKEN] v=22.04 p=[secret REPO_PASS]"
        );
        // Too short to mask without mangling ordinary output.
        assert_eq!(m.mask_str("abc"), "abc");
        // The spec's Debug shows the secret's name, not its value.
        let debug = format!("{step:?}");
        assert!(
            debug.contains("REPO_PASS") && !debug.contains("hunter2"),
            "{debug}"
        );
        // The secrets file exports it, quoted for the shell.
        let file = secrets_file(&step.secrets).unwrap();
        assert_eq!(file.as_str(), "export REPO_PASS=hunter2-long\n");
    }

    #[test]
    fn step_exit_display() {
        assert_eq!(
            StepExit::TimedOut {
                after: Duration::from_secs(5)
            }
            .to_string(),
            "timed out after 5s"
        );
        assert!(StepExit::Status(ExitStatus::Code(0)).success());
        assert!(!StepExit::Status(ExitStatus::Code(1)).success());
    }
}
