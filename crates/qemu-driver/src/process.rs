//! Starting QEMU as a child that cannot outlive imgbake, and keeping the tails of its output.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;

use crate::error::{Error, Result, Tails};

/// How many stderr / serial lines an error quotes.
pub const TAIL_LINES: usize = 20;
/// How many stderr lines are kept in memory.
const STDERR_KEEP: usize = 200;
/// How much of the serial log's end is read for its tail.
const SERIAL_TAIL_BYTES: u64 = 16 * 1024;

/// The last lines QEMU wrote to stderr, kept while a task drains the pipe.
#[derive(Debug, Default)]
pub struct StderrTail {
    lines: Mutex<VecDeque<String>>,
    pushed: tokio::sync::Notify,
}

impl StderrTail {
    fn push(&self, line: String) {
        {
            let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            if lines.len() == STDERR_KEEP {
                lines.pop_front();
            }
            lines.push_back(line);
        }
        self.pushed.notify_waiters();
    }

    /// Waits until no new line has arrived for `quiet`, at most `cap` in all. QEMU prints a
    /// failure (e.g. a KVM register dump) just before it reports it over QMP; this lets the
    /// drain catch up so the error quotes all of it.
    pub async fn settle(&self, quiet: std::time::Duration, cap: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + cap;
        loop {
            tokio::select! {
                () = self.pushed.notified() => {}
                () = tokio::time::sleep(quiet) => return,
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// The last `n` lines, joined.
    pub fn last(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let skip = lines.len().saturating_sub(n);
        lines
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A started QEMU.
pub struct Spawned {
    /// The child (killed on drop as a backstop).
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// Tail of its stderr.
    pub stderr: Arc<StderrTail>,
    /// The task draining stderr; it ends when QEMU closes stderr (exits).
    pub drain: JoinHandle<()>,
}

/// Starts `program args` in its own process group (a terminal Ctrl-C reaches only imgbake),
/// with SIGKILL as parent-death signal (even `kill -9 imgbake` takes QEMU along; both through
/// [`child::spawn`], which forks on a thread that lives as long as imgbake) and
/// `kill_on_drop` as backstop. stderr is drained all the time into `log` and a bounded tail.
pub async fn spawn(
    program: &Path,
    args: &[OsString],
    log: &Path,
    options: child::SpawnOptions,
) -> Result<Spawned> {
    let log_file = std::fs::File::create(log).map_err(|source| Error::RunDir {
        path: log.to_path_buf(),
        source,
    })?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = child::spawn_with(command, options)
        .await
        .map_err(|source| Error::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let pid = child.id().unwrap_or_default();
    let stderr = Arc::new(StderrTail::default());
    let drain = match child.stderr.take() {
        Some(pipe) => tokio::spawn(drain(
            pipe,
            tokio::fs::File::from_std(log_file),
            Arc::clone(&stderr),
        )),
        None => tokio::spawn(async {}),
    };
    Ok(Spawned {
        child,
        pid,
        stderr,
        drain,
    })
}

async fn drain(pipe: ChildStderr, mut log: tokio::fs::File, tail: Arc<StderrTail>) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                // The log is best effort: a full disk must not stop the draining.
                let _ = log.write_all(&buf).await;
                let line = String::from_utf8_lossy(&buf);
                tail.push(clean(line.trim_end()));
            }
        }
    }
    let _ = log.flush().await;
}

/// Drops ANSI escape sequences and control characters (GRUB and the kernel paint the console).
pub fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The last `n` non-empty lines of the serial log (read from its last 16 KiB), cleaned.
pub fn serial_tail(path: &Path, n: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(SERIAL_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    // Consoles end lines with \r\n and redraw with bare \r.
    let lines: Vec<String> = text
        .split(['\n', '\r'])
        .map(clean)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let skip = lines.len().saturating_sub(n);
    lines[skip..].join("\n")
}

/// The tails an error quotes.
pub fn tails(stderr: &StderrTail, serial_log: &Path) -> Tails {
    Tails {
        stderr: stderr.last(TAIL_LINES),
        serial: serial_tail(serial_log, TAIL_LINES),
        serial_log: serial_log.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_strips_escapes_and_controls() {
        assert_eq!(
            clean("\u{1b}[2J\u{1b}[01;01HGRUB\u{7} loading"),
            "GRUB loading"
        );
        assert_eq!(clean("a\tb\u{1b}cd"), "a bd");
        assert_eq!(clean("plain"), "plain");
    }

    #[test]
    fn stderr_tail_is_bounded() {
        let tail = StderrTail::default();
        for i in 0..(STDERR_KEEP + 50) {
            tail.push(format!("line {i}"));
        }
        let last = tail.last(3);
        assert_eq!(
            last,
            format!(
                "line {}\nline {}\nline {}",
                STDERR_KEEP + 47,
                STDERR_KEEP + 48,
                STDERR_KEEP + 49
            )
        );
        assert_eq!(tail.last(10_000).lines().count(), STDERR_KEEP);
    }

    #[test]
    fn serial_tail_reads_the_end_of_big_logs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!("boot line {i}\r\n"));
        }
        text.push_str("\u{1b}[0mlogin: ");
        std::fs::write(&path, text).unwrap();
        let tail = serial_tail(&path, 3);
        assert_eq!(tail, "boot line 4998\nboot line 4999\nlogin: ");
        assert_eq!(serial_tail(&dir.path().join("missing"), 3), "");
    }
}
