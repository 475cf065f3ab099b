//! The QMP client against a fake server on a real unix socket that replays transcripts in
//! QEMU's wire format (`fixtures/qmp/`). The real-QEMU tests are in `qemu_lifecycle.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu_driver::Error;
use qemu_driver::qmp::{Qmp, QmpEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

fn transcript(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/qmp")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Plays the server side of `script`; returns the commands the client sent, in order.
async fn serve(stream: UnixStream, script: String) -> anyhow::Result<Vec<String>> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut id = serde_json::Value::Null;
    let mut seen = Vec::new();
    for line in script.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(expected) = line.strip_prefix("C: ") {
            let sent = lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow::anyhow!("client closed; expected {expected}"))?;
            let value: serde_json::Value = serde_json::from_str(&sent)?;
            let name = value["execute"].as_str().unwrap_or_default().to_owned();
            anyhow::ensure!(name == expected, "client sent {sent}, expected {expected}");
            id = value["id"].clone();
            seen.push(name);
        } else if let Some(message) = line.strip_prefix("S: ") {
            let message = message.replace("$ID", &id.to_string());
            // QEMU ends lines with \r\n.
            write.write_all(format!("{message}\r\n").as_bytes()).await?;
        } else if line == "CLOSE" {
            break;
        } else {
            anyhow::bail!("bad transcript line {line:?}");
        }
    }
    Ok(seen)
}

async fn connect(
    name: &str,
) -> (
    Qmp,
    JoinHandle<anyhow::Result<Vec<String>>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let script = transcript(name);
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        serve(stream, script).await
    });
    let stream = UnixStream::connect(&socket).await.unwrap();
    let qmp = tokio::time::timeout(Duration::from_secs(10), Qmp::handshake(stream))
        .await
        .expect("handshake within 10 s")
        .expect("handshake");
    (qmp, server, dir)
}

#[tokio::test]
async fn recorded_qemu_7_2_session() {
    let (qmp, server, _dir) = connect("qemu-7.2-session.txt").await;
    assert_eq!(qmp.greeting().version.major, 7);
    assert_eq!(qmp.greeting().capabilities, ["oob"]);
    let mut events = qmp.events();

    let status = qmp.execute(qapi::qmp::query_status {}).await.unwrap();
    assert!(status.running);

    let err = qmp
        .execute_value("nope", serde_json::json!({}))
        .await
        .unwrap_err();
    match &err {
        Error::QmpCommand {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "nope");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("has not been found"));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().starts_with("qemu rejected nope: "), "{err}");

    qmp.execute(qapi::qmp::system_powerdown {}).await.unwrap();
    qmp.execute(qapi::qmp::stop {}).await.unwrap();
    qmp.execute(qapi::qmp::cont {}).await.unwrap();
    qmp.quit().await.unwrap();

    let mut names = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        names.push(event.name().to_owned());
        if let QmpEvent::Shutdown { guest, reason } = &event {
            assert!(!guest);
            assert_eq!(reason, "host-qmp-quit");
            break;
        }
    }
    assert_eq!(names, ["POWERDOWN", "STOP", "RESUME", "SHUTDOWN"]);
    let seen = server.await.unwrap().unwrap();
    assert_eq!(seen.last().map(String::as_str), Some("quit"));
    tokio::time::timeout(Duration::from_secs(5), qmp.closed())
        .await
        .expect("client notices the close");
}

#[tokio::test]
async fn unknown_events_and_enum_values_do_not_break_the_session() {
    let (qmp, server, _dir) = connect("unknown-events.txt").await;
    assert_eq!(qmp.greeting().version.major, 12);
    let mut events = qmp.events();

    // The reply carries a run state no qapi schema knows: the typed qapi reply type refuses it,
    // the loose one reads it — and either way the session goes on.
    let typed = qmp.execute(qapi::qmp::query_status {}).await;
    assert!(
        matches!(typed, Err(Error::QmpDecode { .. })),
        "qapi's closed RunState enum should reject it: {typed:?}"
    );
    // A line that is not JSON at all is skipped, too.
    let loose: serde_json::Value = qmp.execute_as(qapi::qmp::query_status {}).await.unwrap();
    assert_eq!(loose["status"], "running");

    let err = qmp
        .execute_value("nope", serde_json::json!(null))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::QmpCommand { class, .. } if class == "ClassFromTheFuture"),
        "{err:?}"
    );
    // The server closes without answering quit: that is success.
    qmp.quit().await.unwrap();

    let mut got = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        got.push(event);
        if got.len() == 3 {
            break;
        }
    }
    assert!(matches!(&got[0], QmpEvent::Other { name, .. } if name == "NIC_RX_FILTER_CHANGED"));
    assert!(
        matches!(&got[1], QmpEvent::JobStatusChange { status, .. } if status == "status-from-the-future")
    );
    assert_eq!(
        got[2],
        QmpEvent::Shutdown {
            guest: true,
            reason: "reason-from-the-future".into()
        }
    );
    server.await.unwrap().unwrap();
    // Commands after the close fail with "closed", promptly.
    let after = tokio::time::timeout(
        Duration::from_secs(5),
        qmp.execute(qapi::qmp::query_status {}),
    )
    .await
    .expect("no hang after close");
    assert!(matches!(after, Err(Error::QmpClosed { .. })), "{after:?}");
}

/// Why the client parses events itself: qapi 0.15's own event type fails on the same input,
/// which in its stream would end the session.
#[test]
fn qapi_event_enum_rejects_what_we_accept() {
    let unknown = r#"{"timestamp": {"seconds": 1, "microseconds": 1}, "event": "SOME_FUTURE_EVENT", "data": {}}"#;
    assert!(serde_json::from_str::<qapi::qmp::Event>(unknown).is_err());
    let odd_reason = r#"{"timestamp": {"seconds": 1, "microseconds": 1}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "reason-from-the-future"}}"#;
    assert!(serde_json::from_str::<qapi::qmp::Event>(odd_reason).is_err());
    assert!(matches!(
        qemu_driver::qmp::wire::parse_message(odd_reason),
        Ok(qemu_driver::qmp::wire::Message::Event(
            QmpEvent::Shutdown { .. }
        ))
    ));
}

#[tokio::test]
async fn server_that_closes_before_the_greeting_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        drop(stream);
    });
    let stream = UnixStream::connect(&socket).await.unwrap();
    let err = Qmp::handshake(stream).await.unwrap_err();
    assert!(matches!(err, Error::QmpClosed { .. }), "{err:?}");
    server.await.unwrap();
}
