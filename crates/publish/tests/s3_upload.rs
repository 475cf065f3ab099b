//! Multipart upload against a real SigV4-checking S3 server (s3s-fs) on 127.0.0.1.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use digest::Sha256;
use publish::{
    Acl, AclOutcome, Addressing, AwsConfig, Credentials, Error, RetryPolicy, S3Location,
    S3Settings, UploadEvent, UploadOptions, UploadOutcome, UploadStatus, Uploader, UriCheck,
    UriProblem,
};
use support::s3_server::{ACCESS_KEY, BUCKET, Inject, S3Server, SECRET_KEY};
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

fn aws(secret: &str) -> AwsConfig {
    AwsConfig {
        credentials: Credentials::new(ACCESS_KEY, secret, None),
        credentials_source: "test".into(),
        region: Some("us-east-1".into()),
        endpoint_url: None,
        addressing: None,
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

/// An S3 server and a directory of images: the set-up every test starts with.
struct Bench {
    server: S3Server,
    dir: tempfile::TempDir,
}

impl Bench {
    async fn start() -> Bench {
        Bench {
            server: S3Server::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An uploader with the right secret and no ACL.
    fn uploader(&self, concurrency: usize) -> Uploader {
        self.uploader_with(SECRET_KEY, concurrency, Acl::BucketDefault)
    }

    fn uploader_with(&self, secret: &str, concurrency: usize, acl: Acl) -> Uploader {
        let settings = S3Settings {
            endpoint: Some(self.server.endpoint.clone()),
            region: None,
            addressing: Some(Addressing::Path),
            public_url_base: Some("https://images.example.net/pub/".into()),
        };
        let options = UploadOptions {
            part_size: 5 * MIB as u64,
            concurrency,
            retry: fast_retry(),
            acl,
        };
        Uploader::new(settings, aws(secret), options).unwrap()
    }

    /// A file of `len` pseudo-random bytes (so misplaced parts cannot go unnoticed).
    fn image(&self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        self.write(name, data)
    }

    /// Like [`Bench::image`], with an MBR signature at 510, like a RAW disk.
    fn raw_disk(&self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let (_, mut data) = self.image(name, len, seed);
        data[510..512].copy_from_slice(&[0x55, 0xAA]);
        self.write(name, data)
    }

    fn write(&self, name: &str, data: Vec<u8>) -> (PathBuf, Vec<u8>) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }
}

/// Uploads with no events and a fresh token.
async fn upload(up: &Uploader, path: &Path, to: &str) -> publish::Result<UploadOutcome> {
    up.upload(
        path,
        &to.parse().unwrap(),
        None,
        |_| {},
        &CancellationToken::new(),
    )
    .await
}

/// The anonymous ranged read the region API makes.
async fn anonymous_check(url: &url::Url) -> publish::Result<publish::ReadableImage> {
    UriCheck::new(fast_retry())
        .unwrap()
        .check(url.as_str(), &CancellationToken::new())
        .await
}

type Events = Arc<Mutex<Vec<UploadEvent>>>;

fn recorder() -> (Events, impl Fn(UploadEvent) + Send + Sync + 'static) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    (events, move |e| sink.lock().unwrap().push(e))
}

#[tokio::test]
async fn multipart_upload_round_trips_and_second_upload_sends_nothing() {
    let bench = Bench::start().await;
    let server = &bench.server;
    let (path, data) = bench.image("gpu image.raw", 12 * MIB + 12345, 1);
    let up = bench.uploader(3);
    let to: S3Location = "s3://images/builds/".parse().unwrap();
    let (events, sink) = recorder();

    let outcome = up
        .upload(&path, &to, None, sink, &CancellationToken::new())
        .await
        .unwrap();

    assert_eq!(outcome.status, UploadStatus::Uploaded { parts: 3 });
    assert_eq!(outcome.key, "builds/gpu image.raw");
    assert_eq!(outcome.s3_uri, "s3://images/builds/gpu image.raw");
    assert_eq!(
        outcome.object_url.as_str(),
        format!("{}/images/builds/gpu%20image.raw", server.endpoint)
    );
    assert_eq!(
        outcome.public_url.as_ref().map(|u| u.as_str()),
        Some("https://images.example.net/pub/builds/gpu%20image.raw")
    );
    assert_eq!(outcome.sha256, Sha256::of(&data));
    assert_eq!(
        server.object("builds/gpu image.raw").as_deref(),
        Some(&data[..])
    );
    let head = up
        .head(BUCKET, "builds/gpu image.raw", &CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(head.sha256, Some(outcome.sha256.to_hex()));

    let mut calls = server.calls();
    calls.sort();
    assert_eq!(
        calls,
        [
            "CompleteMultipartUpload",
            "CreateMultipartUpload",
            "HeadObject",
            "HeadObject",
            "HeadObject",
            "UploadPart 1",
            "UploadPart 2",
            "UploadPart 3"
        ]
    );
    let events = events.lock().unwrap().clone();
    assert!(matches!(events[0], UploadEvent::Hashing { .. }));
    let parts_done = events
        .iter()
        .filter(|e| matches!(e, UploadEvent::PartDone { .. }))
        .count();
    assert_eq!(parts_done, 3);
    let last_progress = events
        .iter()
        .rev()
        .find_map(|e| match e {
            UploadEvent::Progress { sent, total } => Some((*sent, *total)),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_progress, (data.len() as u64, data.len() as u64));
    assert_eq!(events.last(), Some(&UploadEvent::Completing));

    // Same content again: one HEAD, no upload. The digest is passed in this time.
    server.clear_calls();
    let (events, sink) = recorder();
    let again = up
        .upload(
            &path,
            &to,
            Some(outcome.sha256),
            sink,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(again.status, UploadStatus::AlreadyPresent);
    assert_eq!(server.calls(), ["HeadObject"]);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, UploadEvent::AlreadyPresent { .. }))
    );
}

#[tokio::test]
async fn different_content_under_the_same_key_is_replaced() {
    let bench = Bench::start().await;
    let server = &bench.server;
    let up = bench.uploader(2);
    let to: S3Location = "s3://images/exact.raw".parse().unwrap();
    let (first, _) = bench.image("a.raw", 3 * MIB, 2);
    let (second, data) = bench.image("b.raw", 6 * MIB, 3);
    up.upload(&first, &to, None, |_| {}, &CancellationToken::new())
        .await
        .unwrap();
    let (events, sink) = recorder();
    let outcome = up
        .upload(&second, &to, None, sink, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.key, "exact.raw");
    assert_eq!(outcome.status, UploadStatus::Uploaded { parts: 2 });
    assert_eq!(server.object("exact.raw").as_deref(), Some(&data[..]));
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e,
        UploadEvent::Replacing {
            previous_sha256: Some(_)
        }
    )));
}

#[tokio::test]
async fn cancel_after_first_part_aborts_the_upload() {
    let bench = Bench::start().await;
    let server = &bench.server;
    let (path, _) = bench.image("big.raw", 16 * MIB, 4);
    let up = bench.uploader(1);
    let to: S3Location = "s3://images/cancel/".parse().unwrap();
    let cancel = CancellationToken::new();
    let events: Events = Arc::default();
    let sink = {
        let events = Arc::clone(&events);
        let cancel = cancel.clone();
        move |e: UploadEvent| {
            if matches!(e, UploadEvent::PartDone { part: 1, .. }) {
                cancel.cancel();
            }
            events.lock().unwrap().push(e);
        }
    };

    let err = up
        .upload(&path, &to, None, sink, &cancel)
        .await
        .unwrap_err();

    assert!(
        matches!(&err, Error::Cancelled { s3_uri } if s3_uri == "s3://images/cancel/big.raw"),
        "{err}"
    );
    let calls = server.calls();
    assert!(
        calls.contains(&"AbortMultipartUpload".to_owned()),
        "{calls:?}"
    );
    assert!(
        !calls.contains(&"CompleteMultipartUpload".to_owned()),
        "{calls:?}"
    );
    let events = events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, UploadEvent::Aborted { .. })),
        "{events:?}"
    );
    let pending = up
        .list_multipart_uploads(BUCKET, "", &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pending, []);
    assert_eq!(server.upload_files(), Vec::<String>::new());
    assert_eq!(server.object("cancel/big.raw"), None);
}

#[tokio::test]
async fn a_failing_part_aborts_the_upload() {
    let bench = Bench::start().await;
    let server = &bench.server;
    let (path, _) = bench.image("img.raw", 11 * MIB, 5);
    let up = bench.uploader(1);
    server.inject(2, Inject::Reject);

    let err = upload(&up, &path, "s3://images/").await.unwrap_err();

    match &err {
        Error::S3Status {
            operation,
            status,
            code,
            ..
        } => {
            assert_eq!(
                (operation.as_str(), *status, code.as_str()),
                ("UploadPart 2", 400, "InvalidArgument")
            );
        }
        other => panic!("unexpected error: {other}"),
    }
    // A 400 is not retried: part 2 was tried once.
    let calls = server.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "UploadPart 2").count(),
        1,
        "{calls:?}"
    );
    assert_eq!(
        calls.last().map(String::as_str),
        Some("AbortMultipartUpload")
    );
    let pending = up
        .list_multipart_uploads(BUCKET, "", &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pending, []);
    assert_eq!(server.object("img.raw"), None);
}

#[tokio::test]
async fn a_failed_abort_is_reported_and_the_upload_stays_listed() {
    // Also proves the abort tests' empty listings are not vacuous: an upload that could not be
    // aborted shows up in ListMultipartUploads until it is aborted by hand.
    let bench = Bench::start().await;
    let server = &bench.server;
    let (path, _) = bench.image("open.raw", 11 * MIB, 6);
    let up = bench.uploader(1);
    server.inject(2, Inject::Reject);
    server.log.lock().unwrap().refuse_abort = true;

    let err = upload(&up, &path, "s3://images/left/").await.unwrap_err();

    let Error::AbortFailed { upload, source } = &err else {
        panic!("unexpected error: {err}");
    };
    let (upload_id, key) = (&upload.upload_id, &upload.key);
    assert_eq!(key, "left/open.raw");
    assert!(
        matches!(**source, Error::S3Status { status: 400, .. }),
        "{source}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(upload_id.as_str()) && msg.contains("abort-multipart-upload"),
        "{msg}"
    );

    let cancel = CancellationToken::new();
    let pending = up
        .list_multipart_uploads(BUCKET, "left/", &cancel)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((&pending[0].key, &pending[0].upload_id), (key, upload_id));
    assert_eq!(
        up.list_multipart_uploads(BUCKET, "other/", &cancel)
            .await
            .unwrap(),
        []
    );

    server.log.lock().unwrap().refuse_abort = false;
    up.abort_multipart_upload(BUCKET, key, upload_id, &cancel)
        .await
        .unwrap();
    assert_eq!(
        up.list_multipart_uploads(BUCKET, "", &cancel)
            .await
            .unwrap(),
        []
    );
}

#[tokio::test]
async fn slow_down_answers_are_retried() {
    let bench = Bench::start().await;
    let server = &bench.server;
    let (path, data) = bench.image("retry.raw", 11 * MIB, 7);
    let up = bench.uploader(2);
    server.inject(2, Inject::SlowDown(2));

    let (events, sink) = recorder();
    let outcome = up
        .upload(
            &path,
            &"s3://images/".parse().unwrap(),
            None,
            sink,
            &CancellationToken::new(),
        )
        .await
        .unwrap();

    assert_eq!(outcome.status, UploadStatus::Uploaded { parts: 3 });
    assert_eq!(server.object("retry.raw").as_deref(), Some(&data[..]));
    let tries = server
        .calls()
        .iter()
        .filter(|c| *c == "UploadPart 2")
        .count();
    assert_eq!(tries, 3);
    // Progress took back the failed attempts' bytes, so it ends at the file size exactly.
    let last = events.lock().unwrap().iter().rev().find_map(|e| match e {
        UploadEvent::Progress { sent, .. } => Some(*sent),
        _ => None,
    });
    assert_eq!(last, Some(data.len() as u64));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_server() {
    let bench = Bench::start().await;
    let server = &bench.server;
    let (path, _) = bench.image("img.raw", MIB, 8);
    let up = bench.uploader_with("not-the-secret", 2, Acl::BucketDefault);

    let err = upload(&up, &path, "s3://images/").await.unwrap_err();

    // The first request is the HEAD, whose 403 has no body to name the cause.
    assert!(
        matches!(&err, Error::S3Status { status: 403, operation, .. } if operation == "HeadObject"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
    assert!(!msg.contains("not-the-secret"), "{msg}");
    // A request with a body to read says exactly what the server checked.
    let err = up
        .list_multipart_uploads(BUCKET, "", &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::S3Status { status: 403, code, .. } if code == "SignatureDoesNotMatch"),
        "{err}"
    );
    assert!(!err.to_string().contains("not-the-secret"), "{err}");
    assert_eq!(server.object("img.raw"), None);
    // The server checked and refused before any operation ran.
    assert_eq!(server.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn an_empty_or_missing_image_is_a_clear_error() {
    let bench = Bench::start().await;
    let up = bench.uploader(2);
    let empty = bench.dir.path().join("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    let err = upload(&up, &empty, "s3://images/").await.unwrap_err();
    assert!(matches!(err, Error::EmptyImage { .. }), "{err}");
    let err = upload(&up, &bench.dir.path().join("absent.raw"), "s3://images/")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReadImage { .. }), "{err}");
}

#[tokio::test]
async fn public_upload_sets_the_acl_and_passes_the_anonymous_check() {
    let bench = Bench::start().await;
    let (path, data) = bench.raw_disk("disk.raw", 6 * MIB, 9);
    let up = bench.uploader_with(SECRET_KEY, 2, Acl::PublicRead);
    let outcome = upload(&up, &path, "s3://images/pub/").await.unwrap();
    assert_eq!(outcome.acl, AclOutcome::PublicRead);
    assert_eq!(bench.server.acls(), [Some("public-read".to_owned())]);
    assert_eq!(
        bench.server.object("pub/disk.raw").as_deref(),
        Some(&data[..])
    );
    let readable = anonymous_check(&outcome.object_url).await.unwrap();
    assert_eq!(readable.size, Some(data.len() as u64));
    assert!(
        bench
            .server
            .calls()
            .contains(&"GetObject anonymous".to_owned()),
        "{:?}",
        bench.server.calls()
    );
}

#[tokio::test]
async fn a_private_upload_fails_the_anonymous_check() {
    // Also proves the check above is not vacuous: without the ACL the same read is refused.
    let bench = Bench::start().await;
    let (path, _) = bench.raw_disk("disk.raw", MIB, 10);
    let up = bench.uploader(2);
    let outcome = upload(&up, &path, "s3://images/").await.unwrap();
    assert_eq!(outcome.acl, AclOutcome::NotRequested);
    assert_eq!(bench.server.acls(), [None]);
    let err = anonymous_check(&outcome.object_url).await.unwrap_err();
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
    assert!(err.to_string().contains("bucket policy"), "{err}");
}

#[tokio::test]
async fn an_endpoint_that_refuses_acls_gets_the_object_without_one() {
    let bench = Bench::start().await;
    bench.server.log.lock().unwrap().refuse_acl = true;
    let (path, data) = bench.raw_disk("disk.raw", MIB, 11);
    let up = bench.uploader_with(SECRET_KEY, 2, Acl::PublicRead);
    let (events, sink) = recorder();
    let outcome = up
        .upload(
            &path,
            &"s3://images/".parse().unwrap(),
            None,
            sink,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(
        matches!(&outcome.acl, AclOutcome::Refused { code, .. } if code == "AccessControlListNotSupported"),
        "{:?}",
        outcome.acl
    );
    // Asked with the ACL, refused, asked again without.
    assert_eq!(bench.server.acls(), [Some("public-read".to_owned()), None]);
    assert_eq!(bench.server.object("disk.raw").as_deref(), Some(&data[..]));
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, UploadEvent::AclRefused { .. }))
    );
    let err = anonymous_check(&outcome.object_url).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ImageUri {
                problem: UriProblem::NotPublic { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_object_already_there_is_made_public_by_acl() {
    let bench = Bench::start().await;
    let (path, _) = bench.raw_disk("disk.raw", MIB, 12);
    let first = upload(&bench.uploader(2), &path, "s3://images/")
        .await
        .unwrap();
    assert!(anonymous_check(&first.object_url).await.is_err());
    bench.server.clear_calls();
    let again = upload(
        &bench.uploader_with(SECRET_KEY, 2, Acl::PublicRead),
        &path,
        "s3://images/",
    )
    .await
    .unwrap();
    assert_eq!(again.status, UploadStatus::AlreadyPresent);
    assert_eq!(again.acl, AclOutcome::PublicRead);
    assert_eq!(bench.server.calls(), ["HeadObject", "PutObjectAcl"]);
    anonymous_check(&again.object_url).await.unwrap();
}

#[tokio::test]
async fn a_public_qcow2_fails_the_check_as_not_raw() {
    let bench = Bench::start().await;
    let (_, mut data) = bench.image("disk.qcow2", MIB, 13);
    data[..4].copy_from_slice(b"QFI\xfb");
    let (path, _) = bench.write("disk.qcow2", data);
    let up = bench.uploader_with(SECRET_KEY, 2, Acl::PublicRead);
    let outcome = upload(&up, &path, "s3://images/").await.unwrap();
    let err = anonymous_check(&outcome.object_url).await.unwrap_err();
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
}
