//! Fetch against a real HTTP/1.1 server on 127.0.0.1 (`fetch::testserver`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fetch::testserver::{Resource, TestServer};
use fetch::{
    BaseCache, BaseSource, DigestOrigin, Error, ExpectedDigest, FetchEvent, FetchOptions, Location,
    Outcome, RestartReason, Sha256,
};
use tokio_util::sync::CancellationToken;

/// Deterministic, incompressible test data.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn opts() -> FetchOptions {
    FetchOptions {
        retries: 3,
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..FetchOptions::default()
    }
}

fn inline(url: &str, digest: Sha256) -> BaseSource {
    BaseSource {
        location: Location::parse(url).unwrap(),
        checksum: ExpectedDigest::Sha256(digest),
    }
}

/// A test server with `data(len, seed)` at one path, an empty cache in a temp dir, and the
/// inline-digest source for that path: the set-up most tests start from.
struct Served {
    server: TestServer,
    body: Vec<u8>,
    len: u64,
    digest: Sha256,
    tmp: tempfile::TempDir,
    cache: BaseCache,
    source: BaseSource,
}

fn served(path: &str, len: usize, seed: u64) -> Served {
    let server = TestServer::start().unwrap();
    let body = data(len, seed);
    let digest = Sha256::of(&body);
    server.put(path, Resource::bytes(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let cache = BaseCache::open(tmp.path()).unwrap();
    let source = inline(&server.url(path), digest);
    Served {
        len: body.len() as u64,
        server,
        body,
        digest,
        tmp,
        cache,
        source,
    }
}

/// Options for a first run meant to fail (and leave a partial) at the first cut.
fn no_retry() -> FetchOptions {
    FetchOptions {
        retries: 0,
        ..opts()
    }
}

/// Collects events for assertions.
#[derive(Default, Clone)]
struct Events(Arc<Mutex<Vec<FetchEvent>>>);

impl Events {
    fn sink(&self) -> impl Fn(FetchEvent) + Send + Sync + use<> {
        let events = self.0.clone();
        move |e| events.lock().unwrap().push(e)
    }
    fn all(&self) -> Vec<FetchEvent> {
        self.0.lock().unwrap().clone()
    }
    fn restarts(&self) -> Vec<RestartReason> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                FetchEvent::RestartedFromZero { reason } => Some(reason),
                _ => None,
            })
            .collect()
    }
    fn retries(&self) -> usize {
        self.all()
            .iter()
            .filter(|e| matches!(e, FetchEvent::Retrying { .. }))
            .count()
    }
}

async fn run(
    cache: &BaseCache,
    source: &BaseSource,
    opts: &FetchOptions,
    events: &Events,
) -> fetch::Result<fetch::CachedBase> {
    let sink = events.sink();
    cache
        .fetch(source, opts, &sink, CancellationToken::new())
        .await
}

fn partial_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join(".partial"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn part_path(dir: &Path, digest: &Sha256) -> PathBuf {
    dir.join(".partial").join(format!("{digest}.part"))
}

#[tokio::test]
async fn full_download_lands_in_the_cache_verified() {
    let Served {
        server,
        body,
        digest,
        tmp,
        cache,
        source,
        ..
    } = served("/img/base.img", 3 << 20, 1);
    let events = Events::default();

    let got = run(&cache, &source, &opts(), &events).await.unwrap();

    assert_eq!(got.path, tmp.path().join(digest.to_hex()));
    assert_eq!(got.digest, digest);
    assert_eq!(got.size, body.len() as u64);
    assert_eq!(got.outcome, Outcome::Downloaded { resumed_from: 0 });
    assert_eq!(std::fs::read(&got.path).unwrap(), body);
    assert!(partial_files(tmp.path()).is_empty());
    let reqs = server.body_requests("/img/base.img");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].range, None);
    let list = cache.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].source.as_deref(),
        Some(server.url("/img/base.img").as_str())
    );
    let all = events.all();
    assert!(matches!(
        all.first(),
        Some(FetchEvent::DigestResolved {
            origin: DigestOrigin::Inline,
            ..
        })
    ));
    assert!(all.contains(&FetchEvent::Downloading {
        done: body.len() as u64,
        total: Some(body.len() as u64)
    }));
    assert!(all.contains(&FetchEvent::Verified {
        digest,
        size: body.len() as u64
    }));
}

#[tokio::test]
async fn a_cut_download_resumes_in_a_later_run_fetching_only_the_rest() {
    let Served {
        server,
        body,
        len,
        digest,
        tmp,
        cache,
        source,
    } = served("/base.img", 4 << 20, 2);
    let half = len / 2;

    server.cut_next(1, half);
    let err = run(&cache, &source, &no_retry(), &Events::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert!(
        cache.list().unwrap().is_empty(),
        "nothing unverified in the cache"
    );
    assert_eq!(
        std::fs::metadata(part_path(tmp.path(), &digest))
            .unwrap()
            .len(),
        half
    );

    let events = Events::default();
    let got = run(&cache, &source, &opts(), &events).await.unwrap();
    assert_eq!(got.outcome, Outcome::Downloaded { resumed_from: half });
    assert_eq!(std::fs::read(&got.path).unwrap(), body);
    let reqs = server.body_requests("/base.img");
    assert_eq!(reqs.len(), 2);
    let resumed = &reqs[1];
    assert_eq!(
        resumed.range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(
        resumed.if_range.as_deref(),
        Some(format!("\"{len:x}-v1\"").as_str())
    );
    assert_eq!(resumed.status, 206);
    assert_eq!(resumed.body_bytes, len - half, "only the rest was sent");
    assert!(
        events
            .all()
            .iter()
            .any(|e| matches!(e, FetchEvent::Hashing { done, .. } if *done == half))
    );
    assert!(partial_files(tmp.path()).is_empty());
}

#[tokio::test]
async fn cuts_within_one_fetch_are_retried_with_range() {
    let Served {
        server,
        body,
        len,
        cache,
        source,
        tmp: _tmp,
        ..
    } = served("/base.img", 3 << 20, 3);
    let third = len / 3;
    server.cut_next(2, third);
    let events = Events::default();

    let got = run(&cache, &source, &opts(), &events).await.unwrap();

    assert_eq!(std::fs::read(&got.path).unwrap(), body);
    let ranges: Vec<_> = server
        .body_requests("/base.img")
        .into_iter()
        .map(|r| r.range)
        .collect();
    assert_eq!(
        ranges,
        [
            None,
            Some(format!("bytes={third}-")),
            Some(format!("bytes={}-", 2 * third))
        ]
    );
    assert_eq!(events.retries(), 2);
    // Within one fetch the hash state is kept: no re-hash of the partial.
    assert!(
        !events
            .all()
            .iter()
            .any(|e| matches!(e, FetchEvent::Hashing { .. }))
    );
}

#[tokio::test]
async fn a_server_without_range_support_restarts_from_zero() {
    let Served {
        server,
        body,
        len,
        cache,
        source,
        tmp: _tmp,
        ..
    } = served("/base.img", 2 << 20, 4);
    server.set_ranges(false);
    server.cut_next(1, len / 2);
    let events = Events::default();

    let got = run(&cache, &source, &opts(), &events).await.unwrap();

    assert_eq!(std::fs::read(&got.path).unwrap(), body);
    let reqs = server.body_requests("/base.img");
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].range.as_deref(),
        Some(format!("bytes={}-", len / 2).as_str())
    );
    assert_eq!((reqs[1].status, reqs[1].body_bytes), (200, len));
    assert_eq!(events.restarts(), [RestartReason::RangeIgnored]);
}

#[tokio::test]
async fn a_changed_etag_makes_if_range_fetch_everything() {
    let Served {
        server,
        body,
        len,
        tmp: _tmp,
        cache,
        source,
        ..
    } = served("/base.img", 2 << 20, 5);
    server.cut_next(1, len / 2);
    run(&cache, &source, &no_retry(), &Events::default())
        .await
        .unwrap_err();

    let mut changed = Resource::bytes(body.clone());
    changed.etag = Some("\"v2\"".into());
    server.put("/base.img", changed);
    let events = Events::default();
    let got = run(&cache, &source, &opts(), &events).await.unwrap();

    assert_eq!(got.outcome, Outcome::Downloaded { resumed_from: 0 });
    let last = server.body_requests("/base.img").pop().unwrap();
    assert_eq!(
        last.if_range.as_deref(),
        Some(format!("\"{len:x}-v1\"").as_str())
    );
    assert_eq!((last.status, last.body_bytes), (200, len));
    assert_eq!(events.restarts(), [RestartReason::RangeIgnored]);
}

#[tokio::test]
async fn a_bad_partial_without_validators_is_redone_once_from_scratch() {
    let Served {
        server,
        body,
        len,
        digest,
        tmp,
        cache,
        source,
    } = served("/base.img", 2 << 20, 6);
    let mut plain = Resource::bytes(body.clone());
    plain.etag = None;
    server.put("/base.img", plain);
    server.cut_next(1, len / 2);
    run(&cache, &source, &no_retry(), &Events::default())
        .await
        .unwrap_err();
    // Damage the kept half, as a file changed upstream without validators would.
    let part = part_path(tmp.path(), &digest);
    let mut kept = std::fs::read(&part).unwrap();
    kept[10] ^= 0xff;
    std::fs::write(&part, kept).unwrap();

    let events = Events::default();
    let got = run(&cache, &source, &opts(), &events).await.unwrap();

    assert_eq!(std::fs::read(&got.path).unwrap(), body);
    let reqs = server.body_requests("/base.img");
    assert_eq!(reqs[1].if_range, None, "no validator to send");
    assert_eq!(reqs[1].status, 206);
    assert_eq!((reqs[2].range.clone(), reqs[2].status), (None, 200));
    assert_eq!(events.restarts(), [RestartReason::ResumedMismatch]);
}

#[tokio::test]
async fn a_checksum_mismatch_names_both_digests_and_caches_nothing() {
    let Served {
        server,
        digest: actual,
        tmp,
        cache,
        ..
    } = served("/base.img", 1 << 20, 7);
    let expected = Sha256::of(b"something else");

    let err = run(
        &cache,
        &inline(&server.url("/base.img"), expected),
        &opts(),
        &Events::default(),
    )
    .await
    .unwrap_err();

    match &err {
        Error::Mismatch {
            expected: e,
            actual: a,
            ..
        } => assert_eq!((*e, *a), (expected, actual)),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&expected.to_hex()) && text.contains(&actual.to_hex()),
        "{text}"
    );
    assert!(cache.list().unwrap().is_empty());
    assert!(partial_files(tmp.path()).is_empty(), "partial removed");
    assert!(!tmp.path().join(expected.to_hex()).exists());
}

fn sums_source(server: &TestServer, image: &str) -> BaseSource {
    BaseSource {
        location: Location::parse(&server.url(image)).unwrap(),
        checksum: format!("file:{}", server.url("/dir/SHA256SUMS"))
            .parse()
            .unwrap(),
    }
}

#[tokio::test]
async fn sha256sums_list_gives_the_digest_and_a_hit_costs_only_that_request() {
    let server = TestServer::start().unwrap();
    let body = data(1 << 20, 8);
    let digest = Sha256::of(&body);
    let other = Sha256::of(b"other");
    server.put(
        "/dir/jammy-server-cloudimg-amd64.img",
        Resource::bytes(body.clone()),
    );
    let sums = format!(
        "{other} *jammy-server-cloudimg-arm64.img\n{digest} *jammy-server-cloudimg-amd64.img\n"
    );
    server.put("/dir/SHA256SUMS", Resource::bytes(sums.into_bytes()));
    let tmp = tempfile::tempdir().unwrap();
    let source = sums_source(&server, "/dir/jammy-server-cloudimg-amd64.img");

    let events = Events::default();
    let got = run(
        &BaseCache::open(tmp.path()).unwrap(),
        &source,
        &opts(),
        &events,
    )
    .await
    .unwrap();
    assert_eq!(got.digest, digest);
    assert!(matches!(
        &events.all()[0],
        FetchEvent::DigestResolved {
            origin: DigestOrigin::Sums { .. },
            ..
        }
    ));

    let before = server.requests().len();
    let again = run(
        &BaseCache::open(tmp.path()).unwrap(),
        &source,
        &opts(),
        &Events::default(),
    )
    .await
    .unwrap();
    assert_eq!(again.outcome, Outcome::CacheHit);
    let new: Vec<_> = server.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(new, ["/dir/SHA256SUMS"]);
}

#[tokio::test]
async fn a_local_sums_list_in_text_mode_form_works_too() {
    let server = TestServer::start().unwrap();
    let body = data(1 << 20, 9);
    let digest = Sha256::of(&body);
    server.put("/x/noble.img", Resource::bytes(body));
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("SHA256SUMS");
    std::fs::write(&list, format!("{digest}  noble.img\n")).unwrap();
    let source = BaseSource {
        location: Location::parse(&server.url("/x/noble.img")).unwrap(),
        checksum: format!("file:{}", list.display()).parse().unwrap(),
    };
    let cache = BaseCache::open(tmp.path().join("cache")).unwrap();
    let got = run(&cache, &source, &opts(), &Events::default())
        .await
        .unwrap();
    assert_eq!(got.digest, digest);
}

#[tokio::test]
async fn a_sums_list_without_the_file_is_a_clear_error_and_downloads_nothing() {
    let server = TestServer::start().unwrap();
    server.put(
        "/dir/SHA256SUMS",
        Resource::bytes(format!("{} *other.img\n", "a".repeat(64)).into_bytes()),
    );
    server.put("/dir/wanted.img", Resource::bytes(vec![1u8; 10]));
    let tmp = tempfile::tempdir().unwrap();
    let cache = BaseCache::open(tmp.path()).unwrap();

    let err = run(
        &cache,
        &sums_source(&server, "/dir/wanted.img"),
        &opts(),
        &Events::default(),
    )
    .await
    .unwrap_err();

    assert!(matches!(err, Error::SumsMissing { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&server.url("/dir/SHA256SUMS")) && text.contains("wanted.img"),
        "{text}"
    );
    assert!(server.body_requests("/dir/wanted.img").is_empty());
}

#[tokio::test]
async fn a_cache_hit_with_an_inline_digest_makes_no_request() {
    let Served {
        server,
        cache,
        source,
        tmp: _tmp,
        ..
    } = served("/base.img", 1 << 20, 10);
    run(&cache, &source, &opts(), &Events::default())
        .await
        .unwrap();
    let before = server.requests().len();

    let hit = run(&cache, &source, &opts(), &Events::default())
        .await
        .unwrap();
    let verified = FetchOptions {
        verify_cache_hits: true,
        ..opts()
    };
    let checked = run(&cache, &source, &verified, &Events::default())
        .await
        .unwrap();

    assert_eq!(hit.outcome, Outcome::CacheHit);
    assert_eq!(checked.outcome, Outcome::CacheHit);
    assert_eq!(server.requests().len(), before);
}

#[tokio::test]
async fn offline_uses_only_the_cache() {
    let server = TestServer::start().unwrap();
    let body = data(1 << 20, 11);
    let digest = Sha256::of(&body);
    server.put("/dir/base.img", Resource::bytes(body));
    server.put(
        "/dir/SHA256SUMS",
        Resource::bytes(format!("{digest} *base.img\n").into_bytes()),
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = BaseCache::open(tmp.path()).unwrap();
    let offline = FetchOptions {
        offline: true,
        ..opts()
    };
    let by_inline = inline(&server.url("/dir/base.img"), digest);
    let by_sums = sums_source(&server, "/dir/base.img");

    // Without a hit: clear errors, no request.
    let err = run(&cache, &by_inline, &offline, &Events::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::OfflineMiss { .. }), "{err:?}");
    assert!(err.to_string().contains(&digest.to_hex()));
    let err = run(&cache, &by_sums, &offline, &Events::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::OfflineSums { .. }), "{err:?}");
    assert!(server.requests().is_empty());

    // Online once (saves the SUMS copy), then offline hits with no request at all.
    run(&cache, &by_sums, &opts(), &Events::default())
        .await
        .unwrap();
    let before = server.requests().len();
    let hit = run(&cache, &by_inline, &offline, &Events::default())
        .await
        .unwrap();
    assert_eq!(hit.outcome, Outcome::CacheHit);
    let events = Events::default();
    let hit = run(&cache, &by_sums, &offline, &events).await.unwrap();
    assert_eq!(hit.outcome, Outcome::CacheHit);
    assert!(matches!(
        &events.all()[0],
        FetchEvent::DigestResolved {
            origin: DigestOrigin::SavedSums {
                fetched_at: Some(_),
                ..
            },
            ..
        }
    ));
    assert_eq!(server.requests().len(), before);
}

#[tokio::test]
async fn two_concurrent_fetches_download_once() {
    let Served {
        server,
        body,
        tmp,
        cache: a,
        source,
        ..
    } = served("/base.img", 2 << 20, 12);
    server.throttle(Some(Duration::from_millis(2)));
    let b = BaseCache::open(tmp.path()).unwrap();
    let (ea, eb) = (Events::default(), Events::default());

    let o = opts();
    let (ra, rb) = tokio::join!(run(&a, &source, &o, &ea), run(&b, &source, &o, &eb));

    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.path, rb.path);
    assert_eq!(std::fs::read(&ra.path).unwrap(), body);
    assert_eq!(server.body_requests("/base.img").len(), 1);
    let mut outcomes = [ra.outcome, rb.outcome].map(|o| matches!(o, Outcome::CacheHit));
    outcomes.sort();
    assert_eq!(
        outcomes,
        [false, true],
        "one downloads, the other finds the hit"
    );
    let waited = |e: &Events| {
        e.all()
            .iter()
            .any(|e| matches!(e, FetchEvent::WaitingForLock { .. }))
    };
    assert!(waited(&ea) || waited(&eb));
}

#[tokio::test]
async fn five_xx_is_retried_and_4xx_is_not() {
    let Served {
        server,
        digest,
        cache,
        source,
        tmp: _tmp,
        ..
    } = served("/base.img", 100_000, 13);
    server.fail_next(2, 503);
    let events = Events::default();
    run(&cache, &source, &opts(), &events).await.unwrap();
    assert_eq!(events.retries(), 2);

    server.fail_next(10, 500);
    let err = run(
        &cache,
        &inline(&server.url("/other.img"), digest),
        &opts(),
        &Events::default(),
    )
    .await;
    // Same digest is already cached: the inline hit needs no request, even with a failing server.
    assert!(err.is_ok());

    let missing = Sha256::of(b"missing");
    server.fail_next(0, 500);
    let secret_url = server
        .url("/nope.img")
        .replace("http://", "http://user:hunter2@")
        + "?token=s3cr3t";
    let events = Events::default();
    let err = run(&cache, &inline(&secret_url, missing), &opts(), &events)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Status { status, .. } if status.as_u16() == 404),
        "{err:?}"
    );
    assert_eq!(events.retries(), 0);
    let mut chain = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(&format!(" {cause} {cause:?}"));
        source = cause.source();
    }
    assert!(
        chain.contains("404") && chain.contains("/nope.img"),
        "{chain}"
    );
    assert!(
        !chain.contains("hunter2") && !chain.contains("s3cr3t"),
        "{chain}"
    );
}

#[tokio::test]
async fn connection_errors_are_retried_then_reported_without_credentials() {
    // A port nobody listens on.
    let port = test_support::free_port();
    let url = format!("http://user:hunter2@127.0.0.1:{port}/base.img?sig=s3cr3t");
    let tmp = tempfile::tempdir().unwrap();
    let cache = BaseCache::open(tmp.path()).unwrap();
    let events = Events::default();
    let err = run(&cache, &inline(&url, Sha256::of(b"x")), &opts(), &events)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert_eq!(events.retries(), 3);
    let mut chain = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(&format!(" {cause} {cause:?}"));
        source = cause.source();
    }
    for event in events.all() {
        chain.push_str(&format!(" {event:?}"));
    }
    assert!(
        !chain.contains("hunter2") && !chain.contains("s3cr3t"),
        "{chain}"
    );
}

#[tokio::test]
async fn an_unchanged_local_base_is_hashed_once_unless_cache_hits_are_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let body = data(1 << 20, 3);
    let digest = Sha256::of(&body);
    let image = tmp.path().join("base.img");
    std::fs::write(&image, &body).unwrap();
    let cache = BaseCache::open(tmp.path().join("cache")).unwrap();
    let source = inline(&image.display().to_string(), digest);
    let hashed = |events: &Events| {
        events
            .all()
            .iter()
            .any(|e| matches!(e, FetchEvent::Hashing { .. }))
    };
    let first = Events::default();
    run(&cache, &source, &opts(), &first).await.unwrap();
    assert!(hashed(&first), "the first fetch hashes the file");
    // Written a moment ago: a write in the same clock tick would not show, so it is hashed
    // until its change is over a second old.
    let racy = Events::default();
    run(&cache, &source, &opts(), &racy).await.unwrap();
    assert!(hashed(&racy), "a just-written file is hashed again");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run(&cache, &source, &opts(), &Events::default())
        .await
        .unwrap();
    let record_inode = || {
        use std::os::unix::fs::MetadataExt;
        let dir = cache.dir().join(".local");
        let entry = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
        entry.metadata().unwrap().ino()
    };
    let recorded = record_inode();
    let second = Events::default();
    let got = run(&cache, &source, &opts(), &second).await.unwrap();
    assert!(!hashed(&second), "unchanged: not hashed again");
    assert_eq!(
        record_inode(),
        recorded,
        "a trusted record is not written again"
    );
    assert_eq!((got.digest, got.size), (digest, body.len() as u64));
    let verify = FetchOptions {
        verify_cache_hits: true,
        ..opts()
    };
    let verified = Events::default();
    run(&cache, &source, &verify, &verified).await.unwrap();
    assert!(
        hashed(&verified),
        "verify_cache_hits hashes whatever the record says"
    );
    // Another name for the same bytes is another file: hashed.
    let copy = tmp.path().join("copy.img");
    std::fs::copy(&image, &copy).unwrap();
    let other = Events::default();
    run(
        &cache,
        &inline(&copy.display().to_string(), digest),
        &opts(),
        &other,
    )
    .await
    .unwrap();
    assert!(hashed(&other));
}

#[tokio::test]
async fn gc_forgets_the_hash_records_of_local_bases_that_are_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BaseCache::open(tmp.path().join("cache")).unwrap();
    let kept = tmp.path().join("kept.img");
    let gone = tmp.path().join("gone.img");
    for (path, seed) in [(&kept, 1), (&gone, 2)] {
        std::fs::write(path, data(64 << 10, seed)).unwrap();
    }
    // Records are written only for files whose last change is over a second old.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for path in [&kept, &gone] {
        let digest = Sha256::of(&std::fs::read(path).unwrap());
        run(
            &cache,
            &inline(&path.display().to_string(), digest),
            &opts(),
            &Events::default(),
        )
        .await
        .unwrap();
    }
    let records = || {
        std::fs::read_dir(cache.dir().join(".local"))
            .unwrap()
            .count()
    };
    assert_eq!(records(), 2);
    std::fs::remove_file(&gone).unwrap();
    let garbage = cache.dir().join(".local/garbage.json");
    std::fs::write(&garbage, b"{not json").unwrap();

    let named = cache.sweep_local_records(true).unwrap();
    assert_eq!(named, {
        let mut both = vec![gone.clone(), garbage.clone()];
        both.sort();
        both
    });
    assert_eq!(records(), 3, "a dry run removes nothing");
    cache.sweep_local_records(false).unwrap();
    assert_eq!(records(), 1, "the record of the file still there stays");
    assert!(cache.sweep_local_records(false).unwrap().is_empty());
}

#[tokio::test]
async fn local_bases_are_hashed_in_place_not_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let body = data(2 << 20, 14);
    let digest = Sha256::of(&body);
    let image = tmp.path().join("local base.img");
    std::fs::write(&image, &body).unwrap();
    let cache = BaseCache::open(tmp.path().join("cache")).unwrap();
    let file_url = url::Url::from_file_path(&image).unwrap().to_string();

    for spec in [image.display().to_string(), file_url] {
        let source = inline(&spec, digest);
        let got = run(&cache, &source, &opts(), &Events::default())
            .await
            .unwrap();
        assert_eq!(
            (got.path.as_path(), got.outcome),
            (image.as_path(), Outcome::LocalFile)
        );
        // Offline makes no difference for local files.
        let offline = FetchOptions {
            offline: true,
            ..opts()
        };
        run(&cache, &source, &offline, &Events::default())
            .await
            .unwrap();
    }
    assert!(
        cache.list().unwrap().is_empty(),
        "nothing copied into the cache"
    );

    // A changed local file is caught at the next fetch: a same-size rewrite too.
    let mut same_size = body.clone();
    same_size[0] ^= 0xff;
    for changed in [same_size.as_slice(), b"changed"] {
        std::fs::write(&image, changed).unwrap();
        let err = run(
            &cache,
            &inline(&image.display().to_string(), digest),
            &opts(),
            &Events::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Mismatch { .. }), "{err:?}");
    }
    // A local SHA256SUMS list next to a local image.
    std::fs::write(&image, &body).unwrap();
    std::fs::write(
        tmp.path().join("SHA256SUMS"),
        format!("{digest} *local base.img\n"),
    )
    .unwrap();
    let source = BaseSource {
        location: Location::File(image.clone()),
        checksum: format!("file:{}", tmp.path().join("SHA256SUMS").display())
            .parse()
            .unwrap(),
    };
    assert_eq!(
        run(&cache, &source, &opts(), &Events::default())
            .await
            .unwrap()
            .digest,
        digest
    );
}

#[tokio::test]
async fn cancelling_keeps_the_partial_for_a_later_resume() {
    let Served {
        server,
        body,
        digest,
        tmp,
        cache,
        source,
        ..
    } = served("/base.img", 4 << 20, 15);
    server.throttle(Some(Duration::from_millis(5)));
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let progress = move |e: FetchEvent| {
        if matches!(e, FetchEvent::Downloading { done, .. } if done > 0) {
            trigger.cancel();
        }
    };

    let err = cache
        .fetch(&source, &opts(), &progress, cancel)
        .await
        .unwrap_err();

    assert!(matches!(err, Error::Cancelled), "{err:?}");
    let kept = std::fs::metadata(part_path(tmp.path(), &digest))
        .unwrap()
        .len();
    assert!(kept > 0);
    server.throttle(None);
    let got = run(&cache, &source, &opts(), &Events::default())
        .await
        .unwrap();
    assert_eq!(got.outcome, Outcome::Downloaded { resumed_from: kept });
    assert_eq!(std::fs::read(&got.path).unwrap(), body);
}

#[tokio::test]
async fn a_complete_partial_from_a_crashed_run_is_verified_without_a_request() {
    let Served {
        server,
        body,
        len,
        digest,
        tmp,
        cache,
        source,
    } = served("/base.img", 1 << 20, 16);
    server.cut_next(1, len / 2);
    run(&cache, &source, &no_retry(), &Events::default())
        .await
        .unwrap_err();
    // As if the run had received everything and stopped before publishing.
    std::fs::write(part_path(tmp.path(), &digest), &body).unwrap();
    let before = server.requests().len();

    let got = run(&cache, &source, &opts(), &Events::default())
        .await
        .unwrap();

    assert_eq!(got.outcome, Outcome::Downloaded { resumed_from: len });
    assert_eq!(server.requests().len(), before);
    assert_eq!(std::fs::read(&got.path).unwrap(), body);
}
