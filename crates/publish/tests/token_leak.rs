//! The API token never appears in any output: error Display/Debug, dry-run, or logs — with a
//! global TRACE subscriber that also captures the `log` records of reqwest and hyper.
//!
//! Its own test binary, because it installs a global subscriber.

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use publish::{ApiTarget, ApiToken, Payload, Registrar, RetryPolicy};
use serde_json::json;
use support::region_api::{ORG, PostFault, REGION, RegionApi, refused_url};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "nsc-LEAKCHECK-b1d2e3f4a5";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn token_appears_in_no_output_at_trace_level() {
    let logs = Buffer::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .unwrap();

    let retry = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    let token = ApiToken::new(TOKEN, "$NSCALE_API_TOKEN");
    let mut outputs: Vec<String> = vec![token.to_string(), format!("{token:?}")];

    // Success; a 401 whose body echoes the token; a 5xx retried; a refused connection.
    let echo = format!(r#"{{"error":"bad token","got":"Bearer {TOKEN}"}}"#);
    let stubs = [
        RegionApi::start(TOKEN).await,
        RegionApi::start(TOKEN).await,
        RegionApi::start(TOKEN).await,
    ];
    stubs[1].fail_list(401, &echo);
    stubs[2].fail_post(PostFault::Answer(503, "busy".into()));
    stubs[2].fail_post(PostFault::Answer(500, echo.clone()));
    let uri = stubs[0].put_raw_disk("image.raw");
    let payload = Payload::from_json(
        json!({
            "metadata": {"name": "leak-check"},
            "spec": {"uri": uri, "architecture": "x86_64", "virtualization": "virtualized",
                     "os": {"kernel": "linux", "family": "debian", "distro": "ubuntu", "version": "22.04"}}
        }),
        Path::new("p.json"),
    )
    .unwrap();
    let mut urls: Vec<String> = stubs.iter().map(|s| s.url.clone()).collect();
    urls.push(refused_url().await);
    for url in &urls {
        let target = ApiTarget::new(url, ORG, REGION).unwrap();
        let registrar = Registrar::new(target.clone(), token.clone(), retry).unwrap();
        outputs.push(format!("{registrar:?}"));
        match registrar
            .register(&payload, &CancellationToken::new())
            .await
        {
            Ok(done) => outputs.push(format!("{done:?}")),
            Err(err) => {
                outputs.push(err.to_string());
                outputs.push(format!("{err:?}"));
            }
        }
        let dry = Registrar::dry_run(&target, &payload, token.origin()).unwrap();
        outputs.push(dry.to_string());
        outputs.push(format!("{dry:?}"));
    }
    // The stubs really got the token, so its absence below is not vacuous.
    for stub in &stubs {
        assert_eq!(
            stub.api_requests()[0].header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    assert_eq!(stubs[0].images().len(), 1, "the successful case registered");

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // The capture works: our own events and the HTTP stack's records are in it.
    assert!(logs.contains("image registration answered"), "{logs}");
    assert!(logs.contains("TRACE"), "no trace-level records captured");
    assert!(!logs.contains(TOKEN), "token in logs");
    assert!(!logs.contains("LEAKCHECK"), "part of the token in logs");
    for out in &outputs {
        assert!(!out.contains("LEAKCHECK"), "token in output: {out}");
    }
    // The echoed token was redacted, not dropped with the whole body.
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("bad token") && o.contains("<redacted>"))
    );
}
