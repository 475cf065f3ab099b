//! Image registration against a request-recording API stub on 127.0.0.1.

mod support;

use std::path::Path;
use std::time::Duration;

use publish::{ApiTarget, ApiToken, Error, Payload, Registrar, RetryPolicy};
use serde_json::{Value, json};
use support::api_stub::{ApiStub, refused_url};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "nsc-test-token-7f3a9c";

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

fn payload() -> Payload {
    Payload::from_json(
        json!({
            "metadata": {"name": "ubuntu-2204-nvidia-565-fw1"},
            "spec": {"uri": "PLACEHOLDER", "architecture": "x86_64", "virtualization": "virtualized",
                     "gpu": {"vendor": "NVIDIA", "driver": "565.57.01", "models": ["H100"]}}
        }),
        Path::new("api-payload.json"),
    )
    .unwrap()
    .with_uri("https://images.example.net/gpu/image.raw")
    .unwrap()
}

fn registrar(url: &str, attempts: u32) -> Registrar {
    let target = ApiTarget::new(url, "org-42", "eu-west-1").unwrap();
    Registrar::new(
        target,
        ApiToken::new(TOKEN, "$NSCALE_API_TOKEN"),
        fast_retry(attempts),
    )
    .unwrap()
}

#[tokio::test]
async fn posts_the_exact_request() {
    let stub = ApiStub::start(&[(201, r#"{"id":"img-1"}"#)]).await;
    let done = registrar(&stub.url, 3)
        .register(&payload(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(done.status, 201);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.response, json!({"id": "img-1"}));

    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path,
        "/api/v1/organizations/org-42/regions/eu-west-1/images"
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("accept"), Some("application/json"));
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(&body, payload().json());
    assert_eq!(
        body["spec"]["uri"],
        "https://images.example.net/gpu/image.raw"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let stub = ApiStub::start(&[(503, "busy"), (503, "busy"), (201, "{}")]).await;
    let done = registrar(&stub.url, 5)
        .register(&payload(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((done.status, done.attempts), (201, 3));
    let requests = stub.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests
            .iter()
            .all(|r| r.body == requests[0].body && r.path == requests[0].path)
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    let stub = ApiStub::start(&[(502, "bad gateway")]).await;
    let err = registrar(&stub.url, 3)
        .register(&payload(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ApiRejected { status: 502, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad gateway"), "{err}");
    assert_eq!(stub.requests().len(), 3);
}

#[tokio::test]
async fn client_errors_fail_at_once_with_a_clear_message() {
    let cases: [(u16, &str, &[&str]); 4] = [
        (
            400,
            r#"{"error":"spec.os is required"}"#,
            &["400", "bad request", "spec.os is required"],
        ),
        (
            401,
            r#"{"error":"token expired"}"#,
            &["401", "unauthorized", "$NSCALE_API_TOKEN", "token expired"],
        ),
        (
            403,
            r#"{"error":"no image:create"}"#,
            &["403", "forbidden", "org-42", "eu-west-1", "no image:create"],
        ),
        (
            409,
            r#"{"error":"name taken"}"#,
            &["409", "conflict", "already exists", "name taken"],
        ),
    ];
    for (status, body, wanted) in cases {
        let stub = ApiStub::start(&[(status, body)]).await;
        let err = registrar(&stub.url, 4)
            .register(&payload(), &CancellationToken::new())
            .await
            .unwrap_err();
        let msg = err.to_string();
        for w in wanted {
            assert!(msg.contains(w), "{status}: {msg:?} lacks {w:?}");
        }
        assert_eq!(stub.requests().len(), 1, "{status} must not be retried");
    }
}

#[tokio::test]
async fn conflict_after_a_server_error_says_it_may_be_ours() {
    let stub = ApiStub::start(&[(500, "oops"), (409, r#"{"error":"exists"}"#)]).await;
    let err = registrar(&stub.url, 4)
        .register(&payload(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("earlier attempt"), "{err}");
    assert_eq!(stub.requests().len(), 2);
}

#[tokio::test]
async fn connection_errors_are_retried_then_reported() {
    let url = refused_url().await;
    let err = registrar(&url, 2)
        .register(&payload(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ApiTransport { attempts: 2, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn cancellation_stops_the_backoff() {
    let stub = ApiStub::start(&[(503, "busy")]).await;
    let slow = RetryPolicy {
        attempts: 10,
        initial_backoff: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(3600),
    };
    let target = ApiTarget::new(&stub.url, "o", "r").unwrap();
    let registrar = Registrar::new(target, ApiToken::new(TOKEN, "t"), slow).unwrap();
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        let requests = stub.request_seen();
        tokio::spawn(async move {
            requests.notified().await;
            cancel.cancel();
        })
    };
    let err = registrar.register(&payload(), &cancel).await.unwrap_err();
    canceller.await.unwrap();
    assert!(matches!(err, Error::RegisterCancelled { .. }), "{err}");
    assert_eq!(stub.requests().len(), 1);
}

#[test]
fn a_missing_token_variable_is_named() {
    let err = ApiToken::from_env("IMGBAKE_TEST_UNSET_TOKEN_VARIABLE").unwrap_err();
    assert_eq!(
        err.to_string(),
        "API token variable IMGBAKE_TEST_UNSET_TOKEN_VARIABLE is not set (export IMGBAKE_TEST_UNSET_TOKEN_VARIABLE=<token>)"
    );
}
