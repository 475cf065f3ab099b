//! The uncompressed copy of a base (`BaseCache::plain_copy`) with the real `qemu-img`: made
//! once, same guest content, no compressed clusters, made again when damaged, removed with its
//! base.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use fetch::{
    BaseCache, BaseSource, ExpectedDigest, FetchEvent, FetchOptions, Location, Outcome, Sha256,
};
use test_support::require_tool;
use tokio_util::sync::CancellationToken;

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A compressed qcow2 (like a cloud image) of a 64 MiB disk holding 4 MiB of patterned data.
fn compressed_base(dir: &Path) -> PathBuf {
    let raw = dir.join("disk.raw");
    let mut bytes = vec![0u8; 64 << 20];
    for (i, b) in bytes[..4 << 20].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(&raw, &bytes).unwrap();
    let img = dir.join("base.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    img
}

/// How many compressed clusters `qemu-img check` counts.
fn compressed_clusters(path: &Path) -> u64 {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["compressed-clusters"].as_u64().unwrap_or(0)
}

struct Fixture {
    _tmp: tempfile::TempDir,
    cache: BaseCache,
    base: fetch::CachedBase,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let image = compressed_base(tmp.path());
    let digest = digest::hash_file(&image).unwrap();
    let cache = BaseCache::open(tmp.path().join("cache")).unwrap();
    let source = BaseSource {
        location: Location::File(image),
        checksum: ExpectedDigest::Sha256(digest),
    };
    let base = cache
        .fetch(
            &source,
            &FetchOptions::default(),
            &|_| {},
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(base.outcome, Outcome::LocalFile);
    Fixture {
        _tmp: tmp,
        cache,
        base,
    }
}

/// The events a call reported, as their `Debug` text.
#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl Events {
    fn push(&self, event: FetchEvent) {
        self.0.lock().unwrap().push(format!("{event:?}"));
    }
}

#[tokio::test]
async fn made_once_same_content_uncompressed() {
    if !require_tool("qemu-img") {
        return;
    }
    let f = fixture().await;
    assert!(
        compressed_clusters(&f.base.path) > 0,
        "the base is compressed"
    );
    let events = Events::default();
    let log = &events.0;
    let progress = |e| events.push(e);
    let cancel = CancellationToken::new();

    let copy = f
        .cache
        .plain_copy(&f.base, false, &progress, &cancel)
        .await
        .unwrap();
    assert!(copy.made);
    assert_eq!(copy.path, f.cache.plain_path(&f.base.digest));
    assert_eq!(copy.base, f.base.digest);
    assert!(
        std::fs::metadata(&copy.path)
            .unwrap()
            .permissions()
            .readonly()
    );
    assert_eq!(
        compressed_clusters(&copy.path),
        0,
        "the copy has no compressed clusters"
    );
    // Same guest-visible disk; the same bytes every time it is made.
    qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        f.base.path.to_str().unwrap(),
        copy.path.to_str().unwrap(),
    ]);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("MakingPlainCopy"))
    );

    // The second call finds it (also when verifying its hash) and makes nothing.
    let before = std::fs::metadata(&copy.path).unwrap().modified().unwrap();
    log.lock().unwrap().clear();
    let again = f
        .cache
        .plain_copy(&f.base, true, &progress, &cancel)
        .await
        .unwrap();
    assert!(!again.made);
    assert_eq!(again.path, copy.path);
    assert_eq!(
        std::fs::metadata(&copy.path).unwrap().modified().unwrap(),
        before
    );
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());

    // Listed (a local base: the copy is in the cache although the base is not).
    let listed = f.cache.plain_copies().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].base, f.base.digest);
    assert_eq!(listed[0].size, copy.size);
    assert!(
        f.cache.list().unwrap().is_empty(),
        "a copy is not a base entry"
    );
}

/// Makes the file writable again (the cache keeps copies read-only).
fn writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test]
async fn a_damaged_or_missing_copy_is_made_again() {
    if !require_tool("qemu-img") {
        return;
    }
    let f = fixture().await;
    let events = Events::default();
    let log = &events.0;
    let progress = |e| events.push(e);
    let cancel = CancellationToken::new();
    let copy = f
        .cache
        .plain_copy(&f.base, false, &progress, &cancel)
        .await
        .unwrap();
    let good = digest::hash_file(&copy.path).unwrap();

    // Truncated: the size no longer matches the record.
    writable(&copy.path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&copy.path)
        .unwrap();
    file.set_len(copy.size / 2).unwrap();
    drop(file);
    log.lock().unwrap().clear();
    let remade = f
        .cache
        .plain_copy(&f.base, false, &progress, &cancel)
        .await
        .unwrap();
    assert!(remade.made);
    assert_eq!(digest::hash_file(&remade.path).unwrap(), good);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("PlainCopyDamaged")),
        "{:?}",
        log.lock().unwrap()
    );

    // Same size, one data byte changed: only a verifying call can tell, and it does.
    writable(&remade.path);
    let mut bytes = std::fs::read(&remade.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&remade.path, &bytes).unwrap();
    let unverified = f
        .cache
        .plain_copy(&f.base, false, &progress, &cancel)
        .await
        .unwrap();
    assert!(!unverified.made);
    let verified = f
        .cache
        .plain_copy(&f.base, true, &progress, &cancel)
        .await
        .unwrap();
    assert!(verified.made);
    assert_eq!(digest::hash_file(&verified.path).unwrap(), good);

    // Header smashed (size kept): qemu-img check rejects it.
    writable(&verified.path);
    let mut bytes = std::fs::read(&verified.path).unwrap();
    bytes[..4].copy_from_slice(b"XXXX");
    std::fs::write(&verified.path, &bytes).unwrap();
    let remade = f
        .cache
        .plain_copy(&f.base, false, &progress, &cancel)
        .await
        .unwrap();
    assert!(remade.made);

    // Missing record: made again.
    std::fs::remove_file(
        f.cache
            .dir()
            .join(format!("{}.plain.json", f.base.digest.to_hex())),
    )
    .unwrap();
    assert!(
        f.cache
            .plain_copy(&f.base, false, &progress, &cancel)
            .await
            .unwrap()
            .made
    );

    // Missing copy: made again.
    std::fs::remove_file(&remade.path).unwrap();
    assert!(
        f.cache
            .plain_copy(&f.base, false, &progress, &cancel)
            .await
            .unwrap()
            .made
    );
    assert_eq!(digest::hash_file(&remade.path).unwrap(), good);
}

#[tokio::test]
async fn removing_a_base_removes_its_copy() {
    if !require_tool("qemu-img") {
        return;
    }
    let f = fixture().await;
    let cancel = CancellationToken::new();
    let copy = f
        .cache
        .plain_copy(&f.base, false, &|_| {}, &cancel)
        .await
        .unwrap();
    assert!(copy.path.exists());
    // The base is local (not in the cache), so `remove` reports no base, but the copy goes.
    assert!(!f.cache.remove(&f.base.digest).unwrap());
    assert!(!copy.path.exists());
    assert!(f.cache.plain_copies().unwrap().is_empty());
    assert!(!f.cache.remove_plain(&f.base.digest).unwrap());
}

#[tokio::test]
async fn a_failed_conversion_is_an_error_and_leaves_nothing() {
    if !require_tool("qemu-img") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = BaseCache::open(tmp.path().join("cache")).unwrap();
    let junk = tmp.path().join("not-an-image");
    std::fs::write(&junk, b"").unwrap();
    let base = fetch::CachedBase {
        path: tmp.path().join("gone.qcow2"),
        digest: Sha256::of(b"gone"),
        size: 0,
        source: Location::File(junk),
        outcome: Outcome::LocalFile,
    };
    let err = cache
        .plain_copy(&base, false, &|_| {}, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, fetch::Error::PlainCopy { .. }), "{err:?}");
    assert!(err.to_string().contains("gone.qcow2"), "{err}");
    assert!(cache.plain_copies().unwrap().is_empty());
    assert!(!cache.plain_path(&base.digest).exists());
}
