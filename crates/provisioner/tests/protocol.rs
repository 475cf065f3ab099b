//! Protocol edge cases against an in-process russh server (things a real sshd does rarely or
//! never on demand): exit-signal, a channel closed without exit status, data after the exit
//! status. Host key pinning is tested against the real sshd in `sshd.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use provisioner::*;
use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, Sig};

#[derive(Clone)]
struct Scripted;

impl server::Handler for Scripted {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _: &str,
        _: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(data).into_owned();
        session.channel_success(channel)?;
        if cmd.contains("SIGNAL") {
            session.data(channel, b"partial line".to_vec())?;
            session.exit_signal_request(channel, Sig::SEGV, true, "boom", "en")?;
        } else if cmd.contains("NOSTATUS") {
            session.data(channel, b"x\n".to_vec())?;
        } else if cmd.contains("LATE") {
            session.exit_status_request(channel, 0)?;
            session.data(channel, b"after status\n".to_vec())?;
            session.extended_data(channel, 1, b"@@imgbake-pgid=1\nerr after status\n".to_vec())?;
        } else {
            session.exit_status_request(channel, 42)?;
        }
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

async fn serve(keys: &BuildKeys) -> SshTarget {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Arc::new(server::Config {
        keys: vec![keys.host_private().clone()],
        auth_rejection_time: Duration::from_millis(10),
        ..Default::default()
    });
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let config = config.clone();
            tokio::spawn(async move {
                if let Ok(running) = server::run_stream(config, socket, Scripted).await {
                    let _ = running.await;
                }
            });
        }
    });
    SshTarget {
        addr,
        user: "builder".into(),
        keys: Arc::new(keys.clone()),
        privilege: Privilege::Root,
        host_key: provisioner::HostKeyPolicy::Pinned,
    }
}

async fn connect() -> GuestSession {
    let keys = BuildKeys::generate();
    let target = serve(&keys).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    wait_for_ssh(&target, deadline, &CancellationToken::new())
        .await
        .unwrap()
}

async fn run(session: &GuestSession, cmd: &str) -> (Result<ExitStatus>, Vec<OutputLine>) {
    let mut lines = Vec::new();
    let result = session
        .exec(
            cmd,
            &BTreeMap::new(),
            Duration::from_secs(20),
            &CancellationToken::new(),
            |l| lines.push(l),
        )
        .await;
    (result, lines)
}

#[tokio::test]
async fn exit_signal_is_typed_and_partial_output_is_flushed() {
    let session = connect().await;
    let (result, lines) = run(&session, "SIGNAL").await;
    assert_eq!(
        result.unwrap(),
        ExitStatus::Signal {
            name: "SEGV".into(),
            core_dumped: true,
            message: "boom".into()
        }
    );
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].line, "partial line");
}

#[tokio::test]
async fn channel_closed_without_exit_status_is_disconnected() {
    let session = connect().await;
    let (result, lines) = run(&session, "NOSTATUS").await;
    assert!(
        matches!(result, Err(Error::Disconnected { .. })),
        "{result:?}"
    );
    assert_eq!(lines[0].line, "x");
}

#[tokio::test]
async fn output_after_exit_status_is_still_read() {
    let session = connect().await;
    let (result, lines) = run(&session, "LATE").await;
    assert_eq!(result.unwrap(), ExitStatus::Code(0));
    let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(texts, ["after status", "err after status"]);
    assert_eq!(lines[1].stream, Stream::Stderr);
    let (result, _) = run(&session, "other").await;
    assert_eq!(result.unwrap(), ExitStatus::Code(42));
}
