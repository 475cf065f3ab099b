//! A small QMP client: qapi's typed command structs over an own transport.
//!
//! The transport is a tokio [`UnixStream`] carrying newline-delimited JSON. A reader task
//! matches replies to commands by `id` and broadcasts events; events are parsed loosely (see
//! [`event`]) so that nothing QEMU sends can end the session. Commands are qapi's generated
//! structs (`qapi::qmp::query_status`, `blockdev_add` …) with their `NAME` and return type:
//!
//! ```no_run
//! # async fn demo(qmp: &qemu_driver::qmp::Qmp) -> qemu_driver::Result<()> {
//! let status = qmp.execute(qapi::qmp::query_status {}).await?;
//! println!("running: {}", status.running);
//! # Ok(()) }
//! ```

pub mod event;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

pub use event::{BlockJobEventKind, QmpEvent};
pub use wire::{Greeting, QemuVersion, ReplyError};

use crate::error::{Error, Result, Tails};
use wire::Message;

/// How many events a slow subscriber may fall behind before it sees `Lagged`.
const EVENT_BUFFER: usize = 256;
/// Default time QEMU gets to answer one command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

type ReplySender = oneshot::Sender<std::result::Result<Value, ReplyError>>;

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, ReplySender>,
    closed: bool,
}

/// A connected QMP session (after the capabilities handshake). Cheap to clone.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed: CancellationToken,
    greeting: Greeting,
    command_timeout: Duration,
    /// Stops the reader task when the last handle goes.
    _reader: tokio_util::sync::DropGuard,
}

impl Qmp {
    /// Reads the greeting from `stream`, starts the reader task and negotiates capabilities.
    /// The caller bounds the whole handshake with its own deadline.
    pub async fn handshake(stream: UnixStream) -> Result<Qmp> {
        Self::handshake_with_timeout(stream, DEFAULT_COMMAND_TIMEOUT).await
    }

    /// Like [`Qmp::handshake`], with a different per-command reply timeout.
    pub async fn handshake_with_timeout(
        stream: UnixStream,
        command_timeout: Duration,
    ) -> Result<Qmp> {
        let (read, writer) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|source| Error::QmpIo {
                during: "reading the greeting".into(),
                source,
            })?;
        if n == 0 {
            return Err(Error::QmpClosed {
                command: "(greeting)".into(),
            });
        }
        let greeting = match wire::parse_message(&line) {
            Ok(Message::Greeting(g)) => g,
            Ok(other) => {
                return Err(Error::QmpProtocol {
                    detail: format!("expected the greeting, got {other:?}"),
                });
            }
            Err(e) => return Err(Error::QmpProtocol { detail: e.0 }),
        };

        let pending = Arc::new(Mutex::new(Pending::default()));
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let closed = CancellationToken::new();
        let stop_reader = CancellationToken::new();
        tokio::spawn(read_loop(
            reader,
            Arc::clone(&pending),
            events.clone(),
            closed.clone(),
            stop_reader.clone(),
        ));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                writer: tokio::sync::Mutex::new(writer),
                pending,
                next_id: AtomicU64::new(1),
                events,
                closed,
                greeting,
                command_timeout,
                _reader: stop_reader.drop_guard(),
            }),
        };
        qmp.execute(qapi::qmp::qmp_capabilities { enable: None })
            .await?;
        Ok(qmp)
    }

    /// The greeting QEMU sent (its version).
    pub fn greeting(&self) -> &Greeting {
        &self.inner.greeting
    }

    /// Subscribes to events from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.inner.events.subscribe()
    }

    /// Resolves once the connection is closed (QEMU exited or closed the socket).
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Runs a typed qapi command and decodes its typed reply.
    pub async fn execute<C: qapi::Command>(&self, command: C) -> Result<C::Ok> {
        self.execute_as::<C, C::Ok>(command).await
    }

    /// Runs a typed qapi command and decodes the reply into `T` — for replies whose qapi types
    /// are stricter than needed (closed enums from a newer schema).
    pub async fn execute_as<C: qapi::Command, T: DeserializeOwned>(&self, command: C) -> Result<T> {
        let arguments = serde_json::to_value(&command).map_err(|source| Error::QmpDecode {
            command: C::NAME.into(),
            source,
        })?;
        let value = self.execute_value(C::NAME, arguments).await?;
        serde_json::from_value(value).map_err(|source| Error::QmpDecode {
            command: C::NAME.into(),
            source,
        })
    }

    /// Runs a command given as name + JSON arguments and returns its raw `return` value.
    pub async fn execute_value(&self, name: &str, arguments: Value) -> Result<Value> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.inner.pending);
            if pending.closed {
                return Err(Error::QmpClosed {
                    command: name.into(),
                });
            }
            pending.waiters.insert(id, tx);
        }
        let line = wire::command_line(name, arguments, id);
        tracing::debug!(target: "qmp", "-> {}", line.trim_end());
        let written = {
            let mut writer = self.inner.writer.lock().await;
            match writer.write_all(line.as_bytes()).await {
                Ok(()) => writer.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(source) = written {
            lock(&self.inner.pending).waiters.remove(&id);
            // A write to a socket QEMU already closed is "closed", not an I/O mystery.
            if self.is_closed() || source.kind() == std::io::ErrorKind::BrokenPipe {
                return Err(Error::QmpClosed {
                    command: name.into(),
                });
            }
            return Err(Error::QmpIo {
                during: format!("sending {name}"),
                source,
            });
        }
        match tokio::time::timeout(self.inner.command_timeout, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(Error::QmpCommand {
                command: name.into(),
                class: e.class,
                desc: e.desc,
            }),
            Ok(Err(_)) => Err(Error::QmpClosed {
                command: name.into(),
            }),
            Err(_) => {
                lock(&self.inner.pending).waiters.remove(&id);
                Err(Error::Timeout {
                    during: format!("waiting for qemu's reply to {name}"),
                    after: self.inner.command_timeout,
                    tails: Tails::default(),
                })
            }
        }
    }

    /// `quit`: QEMU exits. The connection closing before or after the reply is success.
    pub async fn quit(&self) -> Result<()> {
        match self.execute(qapi::qmp::quit {}).await {
            Ok(_) | Err(Error::QmpClosed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("qemu", &self.inner.greeting.version)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A panic while holding this lock cannot leave the map inconsistent; keep going.
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    pending: Arc<Mutex<Pending>>,
    events: broadcast::Sender<QmpEvent>,
    closed: CancellationToken,
    stop: CancellationToken,
) {
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::select! {
            read = reader.read_line(&mut line) => read,
            () = stop.cancelled() => break,
        };
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(target: "qmp", "read error: {e}");
                break;
            }
        }
        tracing::debug!(target: "qmp", "<- {}", line.trim_end());
        match wire::parse_message(&line) {
            Ok(Message::Event(event)) => {
                // No subscribers is fine.
                let _ = events.send(event);
            }
            Ok(Message::Reply { id, result }) => {
                let waiter = id
                    .as_ref()
                    .and_then(Value::as_u64)
                    .and_then(|id| lock(&pending).waiters.remove(&id));
                match waiter {
                    // The waiter may have timed out and gone; nothing to do then.
                    Some(tx) => {
                        let _ = tx.send(result);
                    }
                    None => tracing::warn!(target: "qmp", "reply with unknown id {id:?}"),
                }
            }
            Ok(Message::Greeting(_)) => {
                tracing::warn!(target: "qmp", "unexpected second greeting")
            }
            // One bad line must not end the session; log it and read on.
            Err(e) => tracing::warn!(target: "qmp", "ignoring malformed message: {}", e.0),
        }
    }
    let mut pending = lock(&pending);
    pending.closed = true;
    // Dropping the senders wakes every waiter with "closed".
    pending.waiters.clear();
    closed.cancel();
}
