//! Starting QEMU: run directory, free port (with retries), spawn, QMP handshake, `cont`.

use std::fs::DirBuilder;
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::accel::{Accel, AccelDecision, stderr_shows_kvm_failure};
use crate::args::{DISK_NODE, LaunchPlan, qemu_args};
use crate::config::{Firmware, RunPaths, SshPort, VmConfig};
use crate::error::{Error, Result, Tails};
use crate::process::{self, Spawned};
use crate::qmp::Qmp;
use crate::state::VmState;
use crate::supervisor::{Supervisor, VmStatus};
use crate::vm::{BlockTop, Vm};

/// How often a port already taken is retried with another one.
const PORT_ATTEMPTS: u32 = 5;
/// QEMU connects to the QMP socket within milliseconds; this only bounds a wedged start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failed start may take to exit after SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest path a unix socket address holds (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// QEMU's message when a hostfwd port is taken.
const HOSTFWD_FAILED: &str = "Could not set up host forwarding rule";

fn invalid(reason: String) -> Error {
    Error::InvalidConfig { reason }
}

fn validate(config: &VmConfig, paths: &RunPaths) -> Result<()> {
    if config.cpus == 0 {
        return Err(invalid("cpus must be at least 1".into()));
    }
    if config.memory_mib < 64 {
        return Err(invalid(format!(
            "memory of {} MiB is too small (at least 64 MiB)",
            config.memory_mib
        )));
    }
    if !config.disk.is_file() {
        return Err(invalid(format!(
            "disk {} does not exist",
            config.disk.display()
        )));
    }
    if let Some(seed) = &config.seed_iso
        && !seed.is_file()
    {
        return Err(invalid(format!(
            "seed image {} does not exist",
            seed.display()
        )));
    }
    if paths.qmp_socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(invalid(format!(
            "run directory {} is too long for a unix socket path (max {MAX_SOCKET_PATH} bytes)",
            paths.dir.display()
        )));
    }
    Ok(())
}

/// Creates the run directory with mode 0700 (and tightens an existing one).
fn prepare_run_dir(dir: &Path) -> Result<()> {
    let err = |source| Error::RunDir {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

fn copy_uefi_vars(config: &VmConfig, paths: &RunPaths) -> Result<()> {
    if !config.uefi.code.is_file() {
        return Err(Error::Firmware {
            path: config.uefi.code.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    std::fs::copy(&config.uefi.vars_template, &paths.uefi_vars).map_err(|source| {
        Error::Firmware {
            path: config.uefi.vars_template.clone(),
            source,
        }
    })?;
    std::fs::set_permissions(&paths.uefi_vars, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| Error::RunDir {
            path: paths.uefi_vars.clone(),
            source,
        },
    )
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::FreePort { source })
}

/// Starts QEMU for `config` with the accelerator already decided.
pub(crate) async fn start(
    config: VmConfig,
    accel: AccelDecision,
    cancel: &CancellationToken,
) -> Result<Vm> {
    start_mode(config, accel, LaunchMode::Run, cancel).await
}

/// How a started QEMU begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaunchMode {
    /// `cont` right after the QMP handshake: the guest boots.
    Run,
    /// `-incoming defer`: QEMU waits, paused, for `migrate-incoming` (a saved VM state).
    Incoming,
}

/// [`start`] in the given mode.
pub(crate) async fn start_mode(
    config: VmConfig,
    accel: AccelDecision,
    mode: LaunchMode,
    cancel: &CancellationToken,
) -> Result<Vm> {
    let paths = RunPaths::new(&config.run_dir);
    validate(&config, &paths)?;
    prepare_run_dir(&paths.dir)?;
    let attempts = match config.ssh_port {
        SshPort::Auto => PORT_ATTEMPTS,
        SshPort::Fixed(_) => 1,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = match config.ssh_port {
            SshPort::Auto => free_port()?,
            SshPort::Fixed(port) => port,
        };
        match start_once(&config, &paths, &accel, (port, mode), cancel).await {
            Ok(vm) => return Ok(vm),
            Err(Failure::PortTaken(tails)) if attempt >= attempts => {
                return Err(Error::PortForward {
                    attempts: attempt,
                    tails,
                });
            }
            Err(Failure::PortTaken(_)) => {
                tracing::debug!("port {port} was taken; retrying with another");
            }
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
}

enum Failure {
    PortTaken(Tails),
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

/// How the startup phase ended when it did not succeed.
enum Startup {
    Failed(Error),
    Exited(std::io::Result<ExitStatus>),
    Timeout,
    Cancelled,
}

async fn start_once(
    config: &VmConfig,
    paths: &RunPaths,
    accel: &AccelDecision,
    (ssh_port, mode): (u16, LaunchMode),
    cancel: &CancellationToken,
) -> Result<Vm, Failure> {
    match std::fs::remove_file(&paths.qmp_socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::QmpSocket {
                path: paths.qmp_socket.clone(),
                source,
            }
            .into());
        }
    }
    let listener = UnixListener::bind(&paths.qmp_socket).map_err(|source| Error::QmpSocket {
        path: paths.qmp_socket.clone(),
        source,
    })?;
    if config.firmware == Firmware::Uefi {
        copy_uefi_vars(config, paths)?;
    }
    let plan = LaunchPlan {
        config,
        accel: accel.accel,
        ssh_port,
        paths,
    };
    let mut args = qemu_args(&plan)?;
    if mode == LaunchMode::Incoming {
        args.extend(crate::args::incoming_args());
    }
    tracing::debug!("starting {} {:?}", config.qemu_binary.display(), args);
    let options = child::SpawnOptions {
        transparent_huge_pages: accel.accel.transparent_huge_pages(),
    };
    let mut spawned = process::spawn(&config.qemu_binary, &args, &paths.qemu_log, options).await?;

    let connect = async {
        let (stream, _) = listener.accept().await.map_err(|source| Error::QmpSocket {
            path: paths.qmp_socket.clone(),
            source,
        })?;
        let qmp = Qmp::handshake(stream).await?;
        // Subscribe before `cont`, so the supervisor sees every event of the guest's life.
        let events = qmp.events();
        if mode == LaunchMode::Run {
            qmp.execute(qapi::qmp::cont {}).await?;
        }
        Ok::<_, Error>((qmp, events))
    };
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let outcome = tokio::select! {
        result = connect => result.map_err(Startup::Failed),
        exit = spawned.child.wait() => Err(Startup::Exited(exit)),
        () = tokio::time::sleep_until(deadline) => Err(Startup::Timeout),
        () = cancel.cancelled() => Err(Startup::Cancelled),
    };
    // QEMU is connected (or gone); the socket file has served its purpose.
    drop(listener);
    let _ = std::fs::remove_file(&paths.qmp_socket);

    match outcome {
        Ok((qmp, events)) => {
            let initial = match mode {
                LaunchMode::Run => VmState::Running,
                LaunchMode::Incoming => VmState::Paused,
            };
            Ok(into_vm(
                config,
                paths,
                accel,
                (ssh_port, initial),
                spawned,
                (qmp, events),
            ))
        }
        Err(startup) => Err(fail_start(config, paths, accel, spawned, startup).await),
    }
}

fn into_vm(
    config: &VmConfig,
    paths: &RunPaths,
    accel: &AccelDecision,
    (ssh_port, initial): (u16, VmState),
    spawned: Spawned,
    (qmp, events): (Qmp, tokio::sync::broadcast::Receiver<crate::qmp::QmpEvent>),
) -> Vm {
    let (status_tx, status_rx) = watch::channel(VmStatus::new(initial));
    let kill = CancellationToken::new();
    let supervisor = Supervisor {
        child: spawned.child,
        qmp: qmp.clone(),
        events,
        status: status_tx,
        kill: kill.clone(),
        drain: spawned.drain,
        stderr: Arc::clone(&spawned.stderr),
    };
    tokio::spawn(supervisor.run());
    Vm {
        config: config.clone(),
        paths: paths.clone(),
        accel: accel.clone(),
        ssh_port,
        pid: spawned.pid,
        qmp,
        status: status_rx,
        _kill_guard: kill.clone().drop_guard(),
        kill,
        stderr: Arc::clone(&spawned.stderr),
        block: tokio::sync::Mutex::new(BlockTop {
            node: DISK_NODE.into(),
            layers: 0,
        }),
    }
}

/// Kills and reaps a QEMU whose start failed and explains why it failed.
async fn fail_start(
    config: &VmConfig,
    paths: &RunPaths,
    accel: &AccelDecision,
    mut spawned: Spawned,
    startup: Startup,
) -> Failure {
    // When the QMP session broke, QEMU is probably exiting by itself: give it a moment so its
    // own exit status (and stderr) is what gets reported, not our SIGKILL.
    let connection_lost = matches!(
        &startup,
        Startup::Failed(Error::QmpClosed { .. } | Error::QmpIo { .. })
    );
    let natural_exit = match &startup {
        Startup::Exited(exit) => exit.as_ref().ok().copied(),
        _ if connection_lost => tokio::time::timeout(REAP_TIMEOUT, spawned.child.wait())
            .await
            .ok()
            .and_then(|r| r.ok()),
        _ => None,
    };
    if natural_exit.is_none() {
        let _ = spawned.child.start_kill();
        let _ = tokio::time::timeout(REAP_TIMEOUT, spawned.child.wait()).await;
    }
    let exit = natural_exit;
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut spawned.drain).await;
    let tails = process::tails(&spawned.stderr, &paths.serial_log);
    let qemu_died = exit.is_some();
    if qemu_died && tails.stderr.contains(HOSTFWD_FAILED) {
        return Failure::PortTaken(tails);
    }
    if qemu_died && accel.accel == Accel::Kvm && stderr_shows_kvm_failure(&tails.stderr) {
        let detail = match exit {
            Some(status) => format!("qemu exited during startup ({status})"),
            None => "qemu failed during startup".into(),
        };
        return Failure::Fatal(Error::Kvm { detail, tails });
    }
    let error = match (startup, exit) {
        (Startup::Timeout, _) => Error::Timeout {
            during: format!(
                "starting {} and connecting to its qmp socket",
                config.qemu_binary.display()
            ),
            after: STARTUP_TIMEOUT,
            tails,
        },
        (Startup::Cancelled, _) => Error::Cancelled {
            during: "starting qemu".into(),
        },
        (Startup::Exited(Err(source)), _) => Error::Wait {
            pid: spawned.pid,
            source,
        },
        // The QMP session broke because QEMU exited: report the exit, with its output.
        (Startup::Exited(Ok(status)), _) | (Startup::Failed(_), Some(status)) => {
            Error::Exited { status, tails }
        }
        (Startup::Failed(e), None) => e,
    };
    Failure::Fatal(error)
}
