//! [`GuestSession`]: one authenticated SSH connection to the guest, host key pinned (or, for
//! `imgbake test`'s freshly keyed guest, trusted on first use and reported: [`HostKeyPolicy`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::exec::{ExitStatus, LineSplitter, OutputLine, Stream, signal_name};
use crate::keys::{BuildKeys, fingerprint};
use crate::mask::{MaskStream, SecretMask};
use crate::shell::{self, Privilege};
use crate::{Error, Result};

/// Keepalive interval: with [`KEEPALIVE_MAX`] unanswered keepalives the connection is
/// declared dead, so a hung guest is noticed within about half a minute.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered keepalives before the connection is dropped.
pub const KEEPALIVE_MAX: usize = 6;
/// Time allowed for key exchange and authentication once the server has sent its banner.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// After a timeout or cancel, how long the command gets to end after SIGTERM before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Where and as whom to log in. Cheap to clone; kept by the session so it can reconnect after
/// a reboot.
#[derive(Clone, Debug)]
pub struct SshTarget {
    /// The forwarded port on the loopback interface (`127.0.0.1:<port>`); any other address
    /// is refused.
    pub addr: SocketAddr,
    /// The build user created by the seed.
    pub user: String,
    /// The build's keys: user key to log in, host key to pin.
    pub keys: Arc<BuildKeys>,
    /// How root commands (steps, uploads into root-owned places, reboot) are run.
    pub privilege: Privilege,
    /// Which host key to accept: the build's pinned one unless said otherwise.
    pub host_key: HostKeyPolicy,
}

/// Which SSH host key a connection accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Only [`BuildKeys::host_public`], the key the seed installed; anything else is
    /// [`Error::HostKeyMismatch`]. Every build uses this.
    #[default]
    Pinned,
    /// The first plain public key the server offers (trust on first use), reported by
    /// [`GuestSession::host_key_openssh`]. Only for a guest that generates its own keys on this
    /// boot (`imgbake test`), where there is nothing to pin and the key itself is the finding.
    TrustOnFirstUse,
}

/// The russh client handler: checks the host key against the [`HostKeyPolicy`].
pub(crate) struct PinnedHostKey {
    expected: PublicKey,
    policy: HostKeyPolicy,
    /// The key the server showed when it was not the expected one.
    rejected: Arc<Mutex<Option<String>>>,
    /// The key that was accepted.
    accepted: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // A certificate is refused even when it certifies our key: the seed installs a plain
        // host key (or cloud-init generates plain ones), so a certificate means something else
        // answers.
        let (shown, matches) = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => (
                key.key_data(),
                self.policy == HostKeyPolicy::TrustOnFirstUse
                    || key.key_data() == self.expected.key_data(),
            ),
            PublicKeyOrCertificate::Certificate(cert) => (cert.public_key(), false),
        };
        let shown = PublicKey::from(shown.clone());
        if matches {
            *self.accepted.lock().unwrap_or_else(|e| e.into_inner()) = Some(shown);
        } else {
            *self.rejected.lock().unwrap_or_else(|e| e.into_inner()) = Some(fingerprint(&shown));
        }
        Ok(matches)
    }
}

/// An authenticated SSH connection to the guest.
///
/// Every method that runs something takes a [`CancellationToken`] and a timeout, never blocks a
/// thread, and kills what it started in the guest when it gives up.
pub struct GuestSession {
    handle: Handle<PinnedHostKey>,
    target: SshTarget,
    /// The host key the server authenticated with.
    host_key: PublicKey,
}

impl std::fmt::Debug for GuestSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSession")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// One command for [`GuestSession::run`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Remote<'a> {
    /// The shell command.
    pub cmd: &'a str,
    /// Bytes fed to its stdin.
    pub stdin: Option<&'a [u8]>,
    /// Run it with the session's privilege prefix (`sudo -n`).
    pub root: bool,
    /// How long it may take.
    pub limit: Duration,
    /// What it is, for errors.
    pub what: &'a str,
    /// Secret values to mask in its output, before it is cut into lines.
    pub mask: Option<&'a SecretMask>,
}

/// What a captured command produced.
#[derive(Clone, Debug)]
pub struct Captured {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Captured {
    /// The status if it exited 0, else a [`Error::RemoteCommand`] quoting the end of stderr.
    pub fn check(self, what: &str) -> Result<Self> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(Error::RemoteCommand {
                what: what.into(),
                status: self.status.clone(),
                stderr: tail_chars(self.stderr.trim(), 2000),
            })
        }
    }
}

fn tail_chars(text: &str, max: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(max)).collect()
}

/// First stderr line the wrapper prints: the process group of the remote command.
const PGID_MARKER: &str = "@@imgbake-pgid=";

/// Feeds stderr bytes; the first line is the wrapper's process group marker, not output.
fn feed_stderr(
    err: &mut LineSplitter,
    data: &[u8],
    header_done: &mut bool,
    pgid: &mut Option<u32>,
    on_output: &mut impl FnMut(OutputLine),
) {
    err.feed(data, |line| {
        if !*header_done {
            *header_done = true;
            if let Some(n) = line.strip_prefix(PGID_MARKER) {
                *pgid = n.trim().parse().ok();
                return;
            }
        }
        on_output(OutputLine {
            stream: Stream::Stderr,
            line,
        });
    });
}

/// `data` with secret values masked, through `mask` (or `data` itself without one); `buf` holds
/// the result.
fn masked_bytes<'b>(
    mask: Option<&mut MaskStream<'_>>,
    data: &'b [u8],
    buf: &'b mut Vec<u8>,
) -> &'b [u8] {
    match mask {
        Some(mask) => {
            buf.clear();
            mask.feed(data, buf);
            buf
        }
        None => data,
    }
}

impl GuestSession {
    /// One connection attempt: TCP, wait up to `banner_wait` for the server's banner, key
    /// exchange (host key pinned), public-key authentication.
    pub async fn connect(target: &SshTarget, banner_wait: Duration) -> Result<Self> {
        let addr = target.addr;
        if !addr.ip().is_loopback() {
            return Err(Error::NotLoopback { addr });
        }
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        // QEMU's user network accepts the connection before the guest listens; wait for the
        // server to speak first (SSH servers send their banner at once) without consuming it.
        let mut probe = [0u8; 4];
        match timeout(banner_wait, stream.peek(&mut probe)).await {
            Err(_) => {
                return Err(Error::NoBanner {
                    addr,
                    waited: banner_wait,
                });
            }
            Ok(Ok(0)) => {
                return Err(Error::Connect {
                    addr,
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed before the ssh banner",
                    ),
                });
            }
            Ok(Ok(_)) => {}
            Ok(Err(source)) => return Err(Error::Connect { addr, source }),
        }
        let rejected = Arc::new(Mutex::new(None));
        let accepted = Arc::new(Mutex::new(None));
        let handler = PinnedHostKey {
            expected: target.keys.host_public().clone(),
            policy: target.host_key,
            rejected: rejected.clone(),
            accepted: accepted.clone(),
        };
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: KEEPALIVE_MAX,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        });
        let handshake = async {
            let mut handle = client::connect_stream(config, stream, handler).await?;
            let key =
                PrivateKeyWithHashAlg::new(Arc::new(target.keys.user_private().clone()), None);
            let auth = handle
                .authenticate_publickey(target.user.clone(), key)
                .await?;
            Ok::<_, russh::Error>((handle, auth.success()))
        };
        let result = timeout(HANDSHAKE_TIMEOUT, handshake).await;
        let seen = rejected.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(got_fingerprint) = seen {
            return Err(Error::HostKeyMismatch {
                addr,
                expected_fingerprint: target.keys.host_fingerprint(),
                got_fingerprint,
            });
        }
        match result {
            Err(_) => Err(Error::HandshakeTimeout {
                addr,
                waited: HANDSHAKE_TIMEOUT,
            }),
            Ok(Err(source)) => Err(Error::Handshake { addr, source }),
            Ok(Ok((_, false))) => Err(Error::AuthRejected {
                addr,
                user: target.user.clone(),
            }),
            Ok(Ok((handle, true))) => Ok(Self {
                handle,
                target: target.clone(),
                // russh checks the host key before authentication can succeed.
                host_key: accepted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_else(|| target.keys.host_public().clone()),
            }),
        }
    }

    /// Where this session is connected, to reconnect after a reboot.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The host key the server authenticated with, one OpenSSH line without comment
    /// (`ssh-ed25519 AAAA…`); empty if it cannot be encoded.
    pub fn host_key_openssh(&self) -> String {
        let mut key = self.host_key.clone();
        key.set_comment("");
        key.to_openssh().unwrap_or_default()
    }

    /// `SHA256:…` fingerprint of the host key the server authenticated with.
    pub fn host_key_fingerprint(&self) -> String {
        fingerprint(&self.host_key)
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Says goodbye to the server: every later command fails with [`Error::Disconnected`].
    /// Dropping the session also closes the connection.
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "imgbake done", "en")
            .await;
    }

    /// Runs `cmd` with the build user's login shell, `env` exported first, streaming output
    /// line by line (stdout and stderr apart, each in order) to `on_output`.
    ///
    /// Returns how the command ended. On timeout or cancel the command's whole process group in
    /// the guest gets SIGTERM, then SIGKILL after [`KILL_GRACE`], and
    /// [`Error::Timeout`] / [`Error::Cancelled`] is returned. A connection that ends before an
    /// exit status arrives gives [`Error::Disconnected`]. Values in `env` end up on the remote
    /// command line: pass secrets to steps, which get their environment from a private file.
    pub async fn exec(
        &self,
        cmd: &str,
        env: &BTreeMap<String, String>,
        timeout: Duration,
        cancel: &CancellationToken,
        on_output: impl FnMut(OutputLine),
    ) -> Result<ExitStatus> {
        let script = format!("{}{cmd}", shell::export_lines(env)?);
        let command = Remote {
            cmd: &script,
            stdin: None,
            root: false,
            limit: timeout,
            what: cmd,
            mask: None,
        };
        self.run(&command, cancel, on_output).await
    }

    /// Runs `cmd` and collects its output (for short helper commands).
    pub async fn exec_capture(
        &self,
        cmd: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Captured> {
        self.capture(cmd, None, false, timeout, cancel).await
    }

    /// Like [`GuestSession::exec_capture`] but run with the session's [`Privilege`] prefix
    /// (`sudo -n`), through `sh -c`.
    pub async fn exec_capture_root(
        &self,
        cmd: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Captured> {
        self.capture(cmd, None, true, timeout, cancel).await
    }

    pub(crate) async fn capture(
        &self,
        cmd: &str,
        stdin: Option<&[u8]>,
        root: bool,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Captured> {
        let mut stdout = String::new();
        let mut stderr = String::new();
        let command = Remote {
            cmd,
            stdin,
            root,
            limit: timeout,
            what: cmd,
            mask: None,
        };
        let status = self
            .run(&command, cancel, |line| {
                let buf = match line.stream {
                    Stream::Stdout => &mut stdout,
                    Stream::Stderr => &mut stderr,
                };
                buf.push_str(&line.line);
                buf.push('\n');
            })
            .await?;
        Ok(Captured {
            status,
            stdout,
            stderr,
        })
    }

    /// Writes `bytes` to `remote_path` in the guest (binary-safe: the bytes travel as the
    /// channel's stdin into `cat`), with `mode`, as root (through the session's
    /// [`Privilege`]). Parent directories are created with mode 0700. The file is written to
    /// a temporary name, renamed into place, and its size checked.
    pub async fn upload(
        &self,
        bytes: &[u8],
        remote_path: &str,
        mode: u32,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let path = shell::checked_remote_path(remote_path)?;
        let cmd = format!(
            "set -e; umask 077; p={path}; mkdir -p \"$(dirname \"$p\")\"; \
             cat > \"$p.imgbake-tmp\"; chmod {mode:o} \"$p.imgbake-tmp\"; \
             mv -f \"$p.imgbake-tmp\" \"$p\"; wc -c < \"$p\""
        );
        // Generous: ~1 MB/s would still pass for a multi-megabyte payload over TCG.
        let limit = Duration::from_secs(60) + Duration::from_millis(bytes.len() as u64 / 1000);
        let out = self
            .capture(&cmd, Some(bytes), true, limit, cancel)
            .await?
            .check(&format!("upload to {remote_path}"))?;
        let got: u64 = out.stdout.trim().parse().map_err(|_| Error::Parse {
            what: format!("upload to {remote_path}"),
            detail: format!("size {:?}", out.stdout.trim()),
        })?;
        if got != bytes.len() as u64 {
            return Err(Error::UploadSize {
                path: remote_path.into(),
                expected: bytes.len() as u64,
                got,
            });
        }
        Ok(())
    }

    /// The guest kernel's boot id (`/proc/sys/kernel/random/boot_id`), which changes on every
    /// boot.
    pub async fn boot_id(&self, cancel: &CancellationToken) -> Result<String> {
        let out = self
            .exec_capture(
                "cat /proc/sys/kernel/random/boot_id",
                Duration::from_secs(30),
                cancel,
            )
            .await?
            .check("read boot id")?;
        let id = out.stdout.trim().to_string();
        let ok = id.len() == 36 && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit());
        if ok {
            Ok(id)
        } else {
            Err(Error::Parse {
                what: "read boot id".into(),
                detail: format!("{id:?} is not a uuid"),
            })
        }
    }

    /// The core: runs `cmd` in the guest as
    /// `printf pgid >&2; [sudo -n] sh -c CMD` so that the process group is known (OpenSSH
    /// starts each session command as a session leader, so `$$` is its process group) and can
    /// be killed on timeout or cancel.
    pub(crate) async fn run(
        &self,
        command: &Remote<'_>,
        cancel: &CancellationToken,
        mut on_output: impl FnMut(OutputLine),
    ) -> Result<ExitStatus> {
        let Remote {
            cmd,
            stdin,
            root,
            limit,
            what,
            mask,
        } = *command;
        let inner = shell::quote(cmd).ok_or_else(|| Error::BadEnvValue {
            name: "command".into(),
        })?;
        let prefix = if root {
            self.target.privilege.prefix()
        } else {
            ""
        };
        let wrapped = format!("printf '{PGID_MARKER}%s\\n' $$ >&2; {prefix}sh -c {inner}");
        let channel_err = |source| Error::Channel {
            what: what.to_string(),
            source,
        };
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(channel_err)?;
        channel.exec(true, wrapped).await.map_err(channel_err)?;
        let (mut reader, writer) = channel.split();
        let deadline = Instant::now() + limit;

        let write = async {
            if let Some(bytes) = stdin {
                writer.data_bytes(bytes.to_vec()).await?;
            }
            writer.eof().await
        };
        tokio::pin!(write);
        let mut writing = true;

        let mut out = LineSplitter::default();
        let mut err = LineSplitter::default();
        // Masking happens on the bytes, before lines are cut, so a value split across packets
        // (or a multi-line value) is still found; the wrapper's first stderr line is ours and
        // passes unmasked.
        let mut out_mask = mask.map(SecretMask::stream);
        let mut err_mask = mask.map(SecretMask::stream);
        let mut err_header_raw = true;
        let mut masked = Vec::new();
        let mut pgid: Option<u32> = None;
        let mut header_done = false;
        let mut status: Option<ExitStatus> = None;
        enum Stop {
            Timeout,
            Cancelled,
        }
        let mut stop = None;

        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if stop.is_none() => { stop = Some(Stop::Cancelled); break; }
                _ = sleep_until(deadline), if stop.is_none() => { stop = Some(Stop::Timeout); break; }
                done = &mut write, if writing => {
                    writing = false;
                    done.map_err(channel_err)?;
                }
                msg = reader.wait() => match msg {
                    None => break,
                    Some(ChannelMsg::Data { data }) => {
                        let data = masked_bytes(out_mask.as_mut(), &data, &mut masked);
                        out.feed(data, |line| on_output(OutputLine { stream: Stream::Stdout, line }));
                    }
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                        let mut data: &[u8] = &data;
                        if err_header_raw {
                            let header_end = data.iter().position(|&b| b == b'\n').map(|at| at + 1);
                            let (header, rest) = data.split_at(header_end.unwrap_or(data.len()));
                            feed_stderr(&mut err, header, &mut header_done, &mut pgid, &mut on_output);
                            err_header_raw = header_end.is_none();
                            data = rest;
                        }
                        let data = masked_bytes(err_mask.as_mut(), data, &mut masked);
                        feed_stderr(&mut err, data, &mut header_done, &mut pgid, &mut on_output);
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        status = Some(ExitStatus::Code(exit_status));
                    }
                    Some(ChannelMsg::ExitSignal { signal_name: sig, core_dumped, error_message, .. }) => {
                        status = Some(ExitStatus::Signal {
                            name: signal_name(&sig),
                            core_dumped,
                            message: error_message,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        for (mask, splitter, stream) in [
            (out_mask.as_mut(), &mut out, Stream::Stdout),
            (err_mask.as_mut(), &mut err, Stream::Stderr),
        ] {
            if let Some(mask) = mask {
                masked.clear();
                mask.finish(&mut masked);
                splitter.feed(&masked, |line| on_output(OutputLine { stream, line }));
            }
        }
        out.finish(|line| {
            on_output(OutputLine {
                stream: Stream::Stdout,
                line,
            })
        });
        err.finish(|line| {
            on_output(OutputLine {
                stream: Stream::Stderr,
                line,
            })
        });

        match stop {
            None => status.ok_or_else(|| Error::Disconnected {
                what: what.to_string(),
            }),
            Some(why) => {
                if !header_done {
                    // stdout and stderr travel apart: the process group line (first on stderr)
                    // may still be on its way although the command has already printed.
                    let _ = timeout(KILL_GRACE, async {
                        while !header_done {
                            match reader.wait().await {
                                None => break,
                                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => feed_stderr(
                                    &mut err,
                                    &data,
                                    &mut header_done,
                                    &mut pgid,
                                    &mut |_: OutputLine| {},
                                ),
                                Some(_) => {}
                            }
                        }
                    })
                    .await;
                }
                tracing::debug!(what, ?pgid, "stopping remote command");
                if let Some(pgid) = pgid {
                    self.kill_group(pgid, root, &mut reader).await;
                }
                Err(match why {
                    Stop::Timeout => Error::Timeout {
                        what: what.to_string(),
                        after: limit,
                    },
                    Stop::Cancelled => Error::Cancelled {
                        what: what.to_string(),
                    },
                })
            }
        }
    }

    /// SIGTERM the remote process group, give it [`KILL_GRACE`] to end (its channel closes),
    /// then SIGKILL. Best effort: the connection may be gone.
    async fn kill_group(&self, pgid: u32, root: bool, reader: &mut russh::ChannelReadHalf) {
        let prefix = if root {
            self.target.privilege.prefix()
        } else {
            ""
        };
        for signal in ["TERM", "KILL"] {
            let cmd = format!("{prefix}kill -{signal} -- -{pgid}");
            if let Ok(mut channel) = self.handle.channel_open_session().await
                && channel.exec(true, cmd).await.is_ok()
            {
                let _ = timeout(KILL_GRACE, async {
                    while channel.wait().await.is_some() {}
                })
                .await;
            }
            let ended = timeout(KILL_GRACE, async { while reader.wait().await.is_some() {} }).await;
            if ended.is_ok() {
                return;
            }
        }
    }
}
