//! Running `qemu-img`: own process group with SIGKILL as parent-death signal (through
//! [`child::spawn`], so it cannot outlive `kill -9 imgbake`), stderr drained into a bounded
//! tail, killed (the whole group) on cancel, deadline or drop.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

const TAIL_LINES: usize = 20;

/// A command line as one string, for messages.
pub(crate) fn command_line(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

async fn drain_tail<R: AsyncRead + Unpin>(mut r: R) -> String {
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            tail.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
            if tail.len() > TAIL_LINES {
                tail.pop_front();
            }
        }
        if pending.len() > 64 * 1024 {
            pending.clear();
        }
    }
    if !pending.is_empty() {
        tail.push_back(String::from_utf8_lossy(&pending).trim_end().to_string());
    }
    tail.into_iter()
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills the child's whole process group and reaps it.
async fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill().await;
}

/// Why a run stopped early.
pub(crate) enum Stop {
    Cancelled,
    Deadline,
}

/// Runs `program args`, passing stdout chunks to `on_stdout`, until it exits, `cancel` fires or
/// `deadline` passes. Returns all of stdout (bounded to 1 MiB) on success.
pub(crate) async fn run(
    program: &Path,
    args: &[OsString],
    cancel: &CancellationToken,
    deadline: Instant,
    on_stdout: &mut (dyn FnMut(&str) + Send),
    output_for_errors: &Path,
    ok_codes: &[i32],
) -> Result<(i32, String)> {
    let command = command_line(program, args);
    let mut spawn = Command::new(program);
    spawn
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = child::spawn(spawn).await.map_err(|source| Error::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    let stderr = child.stderr.take().map(|s| tokio::spawn(drain_tail(s)));
    let mut stdout = child.stdout.take();
    let mut collected = Vec::new();
    let mut buf = vec![0u8; 4096];
    let stop = loop {
        let read = async {
            match stdout.as_mut() {
                Some(s) => s.read(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = read => match r {
                Ok(0) | Err(_) => { stdout = None; }
                Ok(n) => {
                    on_stdout(&String::from_utf8_lossy(&buf[..n]));
                    if collected.len() < (1 << 20) {
                        collected.extend_from_slice(&buf[..n]);
                    }
                }
            },
            status = child.wait() => {
                // Drain what is left of stdout after exit.
                if let Some(mut s) = stdout.take() {
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                    on_stdout(&String::from_utf8_lossy(&rest));
                    collected.extend_from_slice(&rest);
                }
                let status = status.map_err(|source| Error::Spawn { program: program.display().to_string(), source })?;
                let tail = match stderr {
                    Some(h) => h.await.unwrap_or_default(),
                    None => String::new(),
                };
                let code = status.code().unwrap_or(-1);
                if status.success() || ok_codes.contains(&code) {
                    return Ok((code, String::from_utf8_lossy(&collected).into_owned()));
                }
                return Err(Error::ToolFailed { command, status: status.to_string(), stderr: tail });
            },
            _ = cancel.cancelled() => break Stop::Cancelled,
            _ = tokio::time::sleep_until(deadline) => break Stop::Deadline,
        }
    };
    kill_group(&mut child).await;
    Err(match stop {
        Stop::Cancelled => Error::Cancelled {
            path: PathBuf::from(output_for_errors),
        },
        Stop::Deadline => Error::ToolFailed {
            command,
            status: "killed at its deadline".into(),
            stderr: String::new(),
        },
    })
}
