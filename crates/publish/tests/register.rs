//! Image registration against a stand-in region API on 127.0.0.1 that records every request,
//! validates bodies, reads the image URI itself and keeps a list of images.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use publish::{
    ApiTarget, ApiToken, Creation, Error, ImageState, Payload, RegisterEvent, Registrar,
    RetryPolicy, UriProblem, WaitOptions,
};
use serde_json::{Value, json};
use support::region_api::{ORG, PostFault, REGION, RegionApi, refused_url};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "nsc-test-token-7f3a9c";
const NAME: &str = "ubuntu-2204-nvidia-565-fw1";

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

fn body(uri: &str) -> Value {
    json!({
        "metadata": {"name": NAME},
        "spec": {"uri": uri, "architecture": "x86_64", "virtualization": "virtualized",
                 "os": {"kernel": "linux", "family": "debian", "distro": "ubuntu",
                        "version": "22.04", "variant": "server", "codename": "jammy"},
                 "softwareVersions": {"kubernetes": "v1.30.0"},
                 "gpu": {"vendor": "NVIDIA", "driver": "565.57.01", "models": ["H100"]}}
    })
}

fn payload(uri: &str) -> Payload {
    Payload::from_json(body("PLACEHOLDER"), Path::new("api-payload.json"))
        .unwrap()
        .with_uri(uri)
        .unwrap()
}

fn registrar(url: &str, attempts: u32) -> Registrar {
    registrar_with(url, TOKEN, attempts)
}

fn registrar_with(url: &str, token: &str, attempts: u32) -> Registrar {
    let target = ApiTarget::new(url, ORG, REGION).unwrap();
    Registrar::new(
        target,
        ApiToken::new(token, "$NSCALE_API_TOKEN"),
        fast_retry(attempts),
    )
    .unwrap()
}

/// A stand-in API with a RAW disk to register.
async fn api() -> (RegionApi, String) {
    let api = RegionApi::start(TOKEN).await;
    let uri = api.put_raw_disk("gpu/image.raw");
    (api, uri)
}

type Events = Arc<Mutex<Vec<RegisterEvent>>>;

/// What a case is called, how it spoils a valid payload, where the violation is.
type Case = (&'static str, fn(&mut Value), &'static str);

fn recorder() -> (Events, impl Fn(RegisterEvent)) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    (events, move |e| sink.lock().unwrap().push(e))
}

#[tokio::test]
async fn checks_the_uri_then_lists_then_posts_the_exact_request() {
    let (api, uri) = api().await;
    let (events, sink) = recorder();
    let done = registrar(&api.url, 3)
        .register_with_events(&payload(&uri), sink, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((done.status, done.attempts), (200, 1));
    assert_eq!(done.creation, Creation::Created);
    assert_eq!(done.image.name, NAME);
    assert_eq!(done.image.state, ImageState::Pending);
    assert_eq!(done.response["metadata"]["id"], done.image.id.as_str());

    let requests = api.requests();
    let seen: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    let images = format!("/api/v1/organizations/{ORG}/regions/{REGION}/images");
    assert_eq!(
        seen,
        [
            // imgbake's own check, then the list, the POST, and the server's read of the URI.
            ("GET", "/objects/gpu/image.raw"),
            ("GET", images.as_str()),
            ("POST", images.as_str()),
            ("GET", "/objects/gpu/image.raw"),
        ]
    );
    let check = &requests[0];
    assert_eq!(check.header("range"), Some("bytes=0-511"));
    assert_eq!(
        check.header("authorization"),
        None,
        "the check is anonymous"
    );
    let post = &requests[2];
    assert_eq!(
        post.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(post.header("accept"), Some("application/json"));
    let sent: Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(sent, body(&uri));
    assert_eq!(api.images().len(), 1);

    let events = events.lock().unwrap().clone();
    assert!(
        matches!(events[0], RegisterEvent::CheckingUri { .. }),
        "{events:?}"
    );
    assert!(
        matches!(
            events[1],
            RegisterEvent::UriReadable {
                size: Some(4096),
                ..
            }
        ),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(RegisterEvent::Registered { .. })),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_500_after_the_record_was_made_leaves_exactly_one_image() {
    let (api, uri) = api().await;
    api.fail_post(PostFault::CreateThenAnswer(500));
    let done = registrar(&api.url, 5)
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        matches!(&done.creation, Creation::FoundAfterFailure { failure } if failure.contains("500")),
        "{done:?}"
    );
    assert_eq!(done.status, 500);
    assert_eq!(api.posts().len(), 1, "the POST was not retried");
    let images = api.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, done.image.id);
}

#[tokio::test]
async fn a_lost_reply_after_the_record_was_made_leaves_exactly_one_image() {
    let (api, uri) = api().await;
    api.fail_post(PostFault::CreateThenHangUp);
    let (events, sink) = recorder();
    let done = registrar(&api.url, 5)
        .register_with_events(&payload(&uri), sink, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(done.creation, Creation::FoundAfterFailure { .. }));
    assert_eq!(api.posts().len(), 1);
    assert_eq!(api.images().len(), 1);
    let events = events.lock().unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RegisterEvent::PostFailed { attempt: 1, .. })),
        "{events:?}"
    );
}

#[tokio::test]
async fn server_errors_that_made_nothing_are_retried_until_success() {
    let (api, uri) = api().await;
    api.fail_post(PostFault::Answer(503, "busy".into()));
    api.fail_post(PostFault::Answer(503, "busy".into()));
    let done = registrar(&api.url, 5)
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((done.status, done.attempts), (200, 3));
    assert_eq!(done.creation, Creation::Created);
    let posts = api.posts();
    assert_eq!(posts.len(), 3);
    assert!(posts.iter().all(|r| r.body == posts[0].body));
    // Before each retry the list was read: initial check + one per failure.
    let lists = api
        .api_requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(lists, 3);
    assert_eq!(api.images().len(), 1);
}

#[tokio::test]
async fn retries_are_bounded() {
    let (api, uri) = api().await;
    for _ in 0..5 {
        api.fail_post(PostFault::Answer(502, "bad gateway".into()));
    }
    let err = registrar(&api.url, 3)
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ApiRejected { status: 502, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad gateway"), "{err}");
    assert_eq!(api.posts().len(), 3);
    assert_eq!(api.images().len(), 0);
}

#[tokio::test]
async fn a_list_that_fails_after_a_500_stops_without_a_second_post() {
    let (api, uri) = api().await;
    api.fail_post(PostFault::CreateThenAnswer(500));
    // The first list (before the POST) works; every one after it fails.
    let (events, sink) = recorder();
    let seen = Arc::new(Mutex::new(false));
    let err = {
        let api_ref = &api;
        let seen = Arc::clone(&seen);
        registrar(&api.url, 2)
            .register_with_events(
                &payload(&uri),
                move |e| {
                    if matches!(e, RegisterEvent::PostFailed { .. }) && !*seen.lock().unwrap() {
                        *seen.lock().unwrap() = true;
                        for _ in 0..4 {
                            api_ref.fail_list(503, "list down");
                        }
                    }
                    sink(e);
                },
                &CancellationToken::new(),
            )
            .await
            .unwrap_err()
    };
    assert!(matches!(err, Error::RegistrationUnknown { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("look for ubuntu-2204-nvidia-565-fw1"), "{msg}");
    assert_eq!(api.posts().len(), 1);
    assert_eq!(api.images().len(), 1);
    drop(events);
}

#[tokio::test]
async fn client_errors_fail_at_once_with_a_clear_message() {
    let cases: [(u16, &str, &[&str]); 5] = [
        (
            400,
            r#"{"error":"spec.os is required"}"#,
            &["400", "bad request", "spec.os is required"],
        ),
        (
            403,
            r#"{"error":"no image:create"}"#,
            &["403", "forbidden", ORG, REGION, "no image:create"],
        ),
        (
            409,
            r#"{"error":"name taken"}"#,
            &["409", "conflict", "already exists", "name taken"],
        ),
        (
            422,
            r#"{"error":"image unreadable"}"#,
            &[
                "422",
                "512 bytes",
                "without credentials",
                "RAW",
                "image unreadable",
            ],
        ),
        (
            404,
            r#"{"error":"region gone"}"#,
            &["404", "not found", "--org", "--region", "region gone"],
        ),
    ];
    for (status, body, wanted) in cases {
        let (api, uri) = api().await;
        api.fail_post(PostFault::Answer(status, body.into()));
        let err = registrar(&api.url, 4)
            .register(&payload(&uri), &CancellationToken::new())
            .await
            .unwrap_err();
        let msg = err.to_string();
        for w in wanted {
            assert!(msg.contains(w), "{status}: {msg:?} lacks {w:?}");
        }
        assert_eq!(api.posts().len(), 1, "{status} must not be retried");
    }
}

#[tokio::test]
async fn a_wrong_token_or_region_is_named_before_any_post() {
    let (api, uri) = api().await;
    let err = registrar_with(&api.url, "wrong-token", 4)
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    for w in [
        "GET",
        "401",
        "unauthorized",
        "$NSCALE_API_TOKEN",
        "token validation failed",
    ] {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
    let target = ApiTarget::new(&api.url, ORG, "us-east-9").unwrap();
    let err = Registrar::new(target, ApiToken::new(TOKEN, "$T"), fast_retry(2))
        .unwrap()
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("404") && msg.contains("us-east-9"), "{msg}");
    assert_eq!(api.posts().len(), 0);
}

#[tokio::test]
async fn conflict_after_a_server_error_says_it_may_be_ours() {
    let (api, uri) = api().await;
    api.fail_post(PostFault::Answer(500, "oops".into()));
    api.fail_post(PostFault::Answer(409, r#"{"error":"exists"}"#.into()));
    let err = registrar(&api.url, 4)
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("earlier attempt"), "{err}");
    assert_eq!(api.posts().len(), 2);
}

#[tokio::test]
async fn an_existing_name_is_not_registered_twice() {
    let (api, uri) = api().await;
    let id = api.add_image(NAME);
    let err = registrar(&api.url, 4)
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ImageExists { id: found, .. } if *found == id),
        "{err}"
    );
    assert!(err.to_string().contains("DELETE"), "{err}");
    assert_eq!(api.posts().len(), 0);
    assert_eq!(api.images().len(), 1);
}

#[tokio::test]
async fn a_qcow2_uri_is_refused_before_any_post() {
    let (api, _) = api().await;
    let mut qcow2 = vec![0u8; 1024];
    qcow2[..4].copy_from_slice(b"QFI\xfb");
    let uri = api.put_object("gpu/image.qcow2", qcow2);
    let err = registrar(&api.url, 3)
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ImageUri {
                problem: UriProblem::NotRaw {
                    format: Some("qcow2"),
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("qcow2 file, not a RAW disk"),
        "{err}"
    );
    assert_eq!(api.api_requests().len(), 0, "nothing reached the API");
}

#[tokio::test]
async fn a_private_or_missing_uri_is_refused_before_any_post() {
    let (api, uri) = api().await;
    api.make_private("gpu/image.raw");
    let err = registrar(&api.url, 3)
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ImageUri {
                problem: UriProblem::NotPublic { status: 403 },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--public"), "{err}");
    let missing = format!("{}/objects/none.raw", api.url);
    let err = registrar(&api.url, 3)
        .register(&payload(&missing), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ImageUri {
                problem: UriProblem::NotFound,
                ..
            }
        ),
        "{err}"
    );
    let short = api.put_object("short.raw", vec![0x55, 0xAA]);
    let err = registrar(&api.url, 3)
        .register(&payload(&short), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ImageUri {
                problem: UriProblem::TooShort { len: 2 },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(api.api_requests().len(), 0);
}

#[tokio::test]
async fn payloads_the_api_refuses_are_never_sent() {
    let (api, uri) = api().await;
    let cases: [Case; 5] = [
        (
            "gpu.driver null",
            |p| p["spec"]["gpu"]["driver"] = Value::Null,
            "/spec/gpu/driver",
        ),
        (
            "kubernetes v1.30",
            |p| p["spec"]["softwareVersions"]["kubernetes"] = json!("v1.30"),
            "/spec/softwareVersions/kubernetes",
        ),
        (
            "a 70-character name",
            |p| p["metadata"]["name"] = json!("a".repeat(70)),
            "/metadata/name",
        ),
        (
            "distro debian",
            |p| p["spec"]["os"]["distro"] = json!("debian"),
            "/spec/os/distro",
        ),
        (
            "gpu without vendor",
            |p| {
                p["spec"]["gpu"].as_object_mut().unwrap().remove("vendor");
            },
            "/spec/gpu/vendor",
        ),
    ];
    for (what, change, pointer) in cases {
        let mut json = body(&uri);
        change(&mut json);
        let payload = Payload::from_json(json, Path::new("api-payload.json")).unwrap();
        let err = registrar(&api.url, 3)
            .register(&payload, &CancellationToken::new())
            .await
            .unwrap_err();
        let Error::PayloadInvalid { violations, .. } = &err else {
            panic!("{what}: {err}");
        };
        assert_eq!(violations.len(), 1, "{what}: {violations:?}");
        assert_eq!(violations[0].pointer, pointer, "{what}");
        assert!(err.to_string().contains(pointer), "{what}: {err}");
    }
    assert_eq!(api.requests().len(), 0);
}

#[tokio::test]
async fn connection_errors_are_retried_then_reported() {
    let (api, uri) = api().await;
    let url = refused_url().await;
    let err = registrar(&url, 2)
        .register(&payload(&uri), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ApiTransport { attempts: 2, .. }),
        "{err}"
    );
    drop(api);
}

#[tokio::test]
async fn cancellation_stops_the_backoff() {
    let (api, uri) = api().await;
    api.fail_post(PostFault::Answer(503, "busy".into()));
    let slow = RetryPolicy {
        attempts: 10,
        initial_backoff: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(3600),
    };
    let target = ApiTarget::new(&api.url, ORG, REGION).unwrap();
    let registrar = Registrar::new(target, ApiToken::new(TOKEN, "t"), slow).unwrap();
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        let posted = api.post_seen();
        tokio::spawn(async move {
            posted.notified().await;
            cancel.cancel();
        })
    };
    let err = registrar
        .register(&payload(&uri), &cancel)
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert!(matches!(err, Error::RegisterCancelled { .. }), "{err}");
    assert_eq!(api.posts().len(), 1);
}

fn fast_wait(timeout: Duration) -> WaitOptions {
    WaitOptions {
        timeout,
        interval: Duration::from_millis(5),
    }
}

#[tokio::test]
async fn wait_returns_once_the_image_is_ready() {
    let (api, uri) = api().await;
    api.set_progression(&["pending", "pending", "creating", "creating", "ready"]);
    let registrar = registrar(&api.url, 3);
    let cancel = CancellationToken::new();
    let done = registrar.register(&payload(&uri), &cancel).await.unwrap();
    let (events, sink) = recorder();
    let ready = registrar
        .wait_until_ready(
            &done.image,
            fast_wait(Duration::from_secs(600)),
            sink,
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(ready.state, ImageState::Ready);
    assert_eq!(ready.id, done.image.id);
    let states: Vec<ImageState> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            RegisterEvent::State { state, .. } => Some(state.clone()),
            _ => None,
        })
        .collect();
    // One event per state seen, in order; the image was polled until ready.
    assert_eq!(
        states,
        [ImageState::Pending, ImageState::Creating, ImageState::Ready]
    );
}

#[tokio::test]
async fn a_failed_import_is_an_error_saying_what_to_do() {
    let (api, uri) = api().await;
    api.set_progression(&["pending", "creating", "failed"]);
    let registrar = registrar(&api.url, 3);
    let cancel = CancellationToken::new();
    let done = registrar.register(&payload(&uri), &cancel).await.unwrap();
    let err = registrar
        .wait_until_ready(
            &done.image,
            fast_wait(Duration::from_secs(600)),
            |_| {},
            &cancel,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ImageFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("failed to import") && msg.contains("DELETE"),
        "{msg}"
    );
}

#[tokio::test]
async fn waiting_past_the_deadline_is_an_error_naming_the_state() {
    let (api, uri) = api().await;
    api.set_progression(&["creating"]);
    let registrar = registrar(&api.url, 3);
    let cancel = CancellationToken::new();
    let done = registrar.register(&payload(&uri), &cancel).await.unwrap();
    let err = registrar
        .wait_until_ready(
            &done.image,
            fast_wait(Duration::from_millis(100)),
            |_| {},
            &cancel,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::WaitTimedOut {
                state: ImageState::Creating,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("do not register it again"),
        "{err}"
    );
    assert_eq!(api.images().len(), 1);
}

#[test]
fn a_missing_token_variable_is_named() {
    let err = ApiToken::from_env("IMGBAKE_TEST_UNSET_TOKEN_VARIABLE").unwrap_err();
    assert_eq!(
        err.to_string(),
        "API token variable IMGBAKE_TEST_UNSET_TOKEN_VARIABLE is not set (export IMGBAKE_TEST_UNSET_TOKEN_VARIABLE=<token>)"
    );
}
