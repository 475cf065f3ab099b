//! The multipart upload: HEAD, create, parts in parallel, complete — or abort.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::client::{S3Answer, S3Client, S3Request, SentFn, status_error};
use super::credentials::AwsConfig;
use super::events::UploadEvent;
use super::location::{Addressing, Endpoint, S3Location, parse_http_url};
use super::{parts, xml};
use crate::error::DanglingUpload;
use crate::retry::RetryPolicy;
use crate::{Error, Result};
use digest::Sha256;

/// The metadata header that records the object's sha256.
const SHA256_META: &str = "x-amz-meta-sha256";
/// The canned-ACL header.
const ACL_HEADER: &str = "x-amz-acl";
/// How long an abort may take after the upload failed or was cancelled.
const ABORT_DEADLINE: Duration = Duration::from_secs(60);

/// Where and how to reach the S3 service. Unset fields fall back to [`AwsConfig`], then to AWS.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint URL of an S3-compatible service (`--endpoint`); default: AWS for the region.
    pub endpoint: Option<String>,
    /// Signing region (`--region`); default: the AWS config's, else `us-east-1`.
    pub region: Option<String>,
    /// Addressing style (`--path-style`); default: the profile's, else virtual-hosted.
    pub addressing: Option<Addressing>,
    /// Base URL under which objects are publicly readable (`--public-url-base`).
    pub public_url_base: Option<String>,
}

/// The canned ACL an upload asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acl {
    /// Send none: the bucket's default (usually private).
    #[default]
    BucketDefault,
    /// `x-amz-acl: public-read`, so the region API can read the object without credentials.
    PublicRead,
}

/// What became of a requested ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclOutcome {
    /// None was asked for.
    NotRequested,
    /// The object was stored with `public-read`.
    PublicRead,
    /// The endpoint refused the ACL (buckets with ACLs disabled, Block Public Access, or no
    /// ACL support); the object was stored without it. Only a bucket policy allowing anonymous
    /// reads can make it public then.
    Refused {
        /// The S3 error code (`AccessControlListNotSupported`, `AccessDenied`, …).
        code: String,
        /// The server's message.
        message: String,
    },
}

/// Error codes with which endpoints refuse an ACL header.
const ACL_REFUSALS: &[&str] = &[
    "AccessControlListNotSupported",
    "NotImplemented",
    "AccessDenied",
    "InvalidRequest",
];

/// Tuning of the multipart upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Wanted part size in bytes (5 MiB to 5 GiB; raised automatically so at most 10000 parts
    /// are needed). Default 64 MiB.
    pub part_size: u64,
    /// Parts in flight at once (1 to 64). Memory use is about `part_size * concurrency`.
    /// Default 4.
    pub concurrency: usize,
    /// Retries of each request.
    pub retry: RetryPolicy,
    /// The ACL to store the object with.
    pub acl: Acl,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            part_size: 64 << 20,
            concurrency: 4,
            retry: RetryPolicy::default(),
            acl: Acl::BucketDefault,
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStatus {
    /// The image was uploaded in this many parts.
    Uploaded {
        /// Number of parts.
        parts: u32,
    },
    /// An object with the same sha256 and size was already there; nothing was sent.
    AlreadyPresent,
}

/// The result of [`Uploader::upload`].
#[derive(Debug, Clone)]
pub struct UploadOutcome {
    /// `s3://bucket/key`.
    pub s3_uri: String,
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// The object's URL on the endpoint (needs credentials unless the bucket is public).
    pub object_url: Url,
    /// A public URL, when `public_url_base` was given or the endpoint is AWS.
    pub public_url: Option<Url>,
    /// The image's sha256 (also stored as `x-amz-meta-sha256`).
    pub sha256: Sha256,
    /// Its size in bytes.
    pub size: u64,
    /// Uploaded or already there.
    pub status: UploadStatus,
    /// What became of the requested ACL (also set on an object that was already there).
    pub acl: AclOutcome,
}

/// What a HEAD request tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// `Content-Length`.
    pub size: u64,
    /// The `x-amz-meta-sha256` it records, if any.
    pub sha256: Option<String>,
    /// The ETag, if any.
    pub etag: Option<String>,
}

/// A multipart upload the server still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The object key.
    pub key: String,
    /// The upload id.
    pub upload_id: String,
    /// When it started, as the server wrote it.
    pub initiated: Option<String>,
}

/// Uploads images to one S3 endpoint. Cheap to share by reference; each upload is independent.
pub struct Uploader {
    client: S3Client,
    endpoint: Endpoint,
    public_base: Option<Url>,
    region: String,
    options: UploadOptions,
}

type Sink = Arc<dyn Fn(UploadEvent) + Send + Sync>;

impl Uploader {
    /// Resolves endpoint, region and addressing from `settings` then `aws`, and checks `options`.
    pub fn new(settings: S3Settings, aws: AwsConfig, options: UploadOptions) -> Result<Self> {
        if !(parts::MIN_PART..=parts::MAX_PART).contains(&options.part_size) {
            return Err(Error::InvalidOptions {
                reason: format!(
                    "part size {} is outside S3's range of 5 MiB to 5 GiB",
                    options.part_size
                ),
            });
        }
        if !(1..=64).contains(&options.concurrency) {
            return Err(Error::InvalidOptions {
                reason: format!("concurrency {} is outside 1 to 64", options.concurrency),
            });
        }
        let region = settings
            .region
            .or(aws.region)
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = match settings.endpoint.or(aws.endpoint_url) {
            Some(given) => Some(parse_http_url("endpoint", &given)?),
            None => None,
        };
        let addressing = settings.addressing.or(aws.addressing).unwrap_or_default();
        let public_base = match settings.public_url_base {
            Some(given) => Some(parse_http_url("public URL base", &given)?),
            None => None,
        };
        Ok(Self {
            client: S3Client::new(&aws.credentials, region.clone(), options.retry)?,
            endpoint: Endpoint::new(endpoint, &region, addressing)?,
            public_base,
            region,
            options,
        })
    }

    /// Refuses an `http://` endpoint: the requests' signatures (replayable for minutes) and
    /// the image would cross the network in clear. Callers that talk to a test server on
    /// purpose skip this (imgbake's `--insecure-http`).
    pub fn refuse_plain_http(&self) -> Result<()> {
        let url = self.endpoint.base();
        if url.scheme() == "http" {
            return Err(Error::PlainHttp {
                what: "S3 endpoint",
                url: url.to_string(),
                credential: "request signatures",
            });
        }
        Ok(())
    }

    /// The signing region in use.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The URL of `key` in `bucket` on this endpoint.
    pub fn object_url(&self, bucket: &str, key: &str) -> Url {
        self.endpoint.object_url(bucket, key)
    }

    /// Uploads `image` to `to` (a prefix gets the image's file name appended).
    ///
    /// `sha256` is the image's digest when known (e.g. from the export manifest); otherwise the
    /// file is hashed first. An object already holding the same sha256 and size is left alone.
    /// Any failure or cancellation after the multipart upload was created aborts it.
    pub async fn upload(
        &self,
        image: &Path,
        to: &S3Location,
        sha256: Option<Sha256>,
        events: impl Fn(UploadEvent) + Send + Sync + 'static,
        cancel: &CancellationToken,
    ) -> Result<UploadOutcome> {
        let events: Sink = Arc::new(events);
        let file_name = image.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            Error::InvalidS3Location {
                given: to.to_string(),
                reason: "the image's file name is not UTF-8; give the full key instead of a prefix",
            }
        })?;
        let bucket = to.bucket().to_owned();
        let key = to.object_key(file_name);
        let s3_uri = format!("s3://{bucket}/{key}");
        let read_error = |source| Error::ReadImage {
            path: image.to_owned(),
            source,
        };
        let file = std::fs::File::open(image).map_err(read_error)?;
        let size = file.metadata().map_err(read_error)?.len();
        if size == 0 {
            return Err(Error::EmptyImage {
                path: image.to_owned(),
            });
        }
        let (part_size, part_count) = parts::plan(image, size, self.options.part_size)?;
        let cancelled = || Error::Cancelled {
            s3_uri: s3_uri.clone(),
        };
        let sha256 = match sha256 {
            Some(d) => d,
            None => {
                let ev = Arc::clone(&events);
                let report = move |done, total| ev(UploadEvent::Hashing { done, total });
                parts::hash_file(image, size, &report, cancel)
                    .await?
                    .ok_or_else(cancelled)?
            }
        };
        let object_url = self.endpoint.object_url(&bucket, &key);
        let mut outcome = UploadOutcome {
            s3_uri: s3_uri.clone(),
            public_url: self
                .endpoint
                .public_url(self.public_base.as_ref(), &bucket, &key),
            object_url,
            bucket,
            key,
            sha256,
            size,
            status: UploadStatus::AlreadyPresent,
            acl: AclOutcome::NotRequested,
        };

        events(UploadEvent::Checking {
            s3_uri: s3_uri.clone(),
        });
        let head = self
            .head(&outcome.bucket, &outcome.key, cancel)
            .await
            .map_err(|e| rename_cancel(e, &s3_uri))?;
        match head {
            Some(h) if h.size == size && h.sha256.as_deref() == Some(&sha256.to_hex()) => {
                events(UploadEvent::AlreadyPresent {
                    s3_uri: s3_uri.clone(),
                });
                if self.options.acl == Acl::PublicRead {
                    outcome.acl = self
                        .put_public_read_acl(&outcome, &events, cancel)
                        .await
                        .map_err(|e| rename_cancel(e, &s3_uri))?;
                }
                return Ok(outcome);
            }
            Some(h) => events(UploadEvent::Replacing {
                previous_sha256: h.sha256,
            }),
            None => {}
        }

        let (upload_id, acl) = self
            .create(&outcome, &events, cancel)
            .await
            .map_err(|e| rename_cancel(e, &s3_uri))?;
        outcome.acl = acl;
        events(UploadEvent::Started {
            upload_id: upload_id.clone(),
            total: size,
            parts: part_count,
            part_size,
        });
        let job = Job {
            file: Arc::new(file),
            path: image,
            bucket: &outcome.bucket,
            key: &outcome.key,
            upload_id: &upload_id,
            size,
            part_size,
            part_count,
        };
        let result = match self.send_parts(&job, &events, cancel).await {
            Ok(etags) => {
                events(UploadEvent::Completing);
                self.complete(&job, &etags, cancel).await
            }
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            let error = rename_cancel(error, &s3_uri);
            events(UploadEvent::Aborting {
                upload_id: upload_id.clone(),
            });
            return match self.abort_after_failure(&job).await {
                Ok(()) => {
                    events(UploadEvent::Aborted { upload_id });
                    Err(error)
                }
                Err(abort) => Err(Error::AbortFailed {
                    upload: Box::new(DanglingUpload {
                        s3_uri,
                        bucket: outcome.bucket.clone(),
                        key: outcome.key.clone(),
                        upload_id,
                        abort_error: abort.to_string(),
                    }),
                    source: Box::new(error),
                }),
            };
        }
        let stored = self
            .head(&outcome.bucket, &outcome.key, cancel)
            .await
            .map_err(|e| rename_cancel(e, &s3_uri))?;
        match stored {
            Some(h) if h.size == size => {}
            other => {
                return Err(Error::S3Response {
                    operation: "HeadObject".into(),
                    url: outcome.object_url.to_string(),
                    detail: format!(
                        "after completing the upload the object has size {:?}, expected {size}",
                        other.map(|h| h.size)
                    ),
                });
            }
        }
        outcome.status = UploadStatus::Uploaded { parts: part_count };
        Ok(outcome)
    }

    /// HEAD of an object; `None` when it does not exist.
    pub async fn head(
        &self,
        bucket: &str,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<ObjectHead>> {
        let req = request(
            "HeadObject",
            Method::HEAD,
            self.endpoint.object_url(bucket, key),
        );
        let answer = self.client.send(&req, true, cancel).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let size = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::S3Response {
                operation: "HeadObject".into(),
                url: req.url.to_string(),
                detail: "no Content-Length".into(),
            })?;
        Ok(Some(ObjectHead {
            size,
            sha256: header(SHA256_META).map(|v| v.to_ascii_lowercase()),
            etag: header("etag"),
        }))
    }

    /// Multipart uploads still open in `bucket` under `prefix` (all pages).
    pub async fn list_multipart_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<PendingUpload>> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = self.endpoint.object_url(bucket, "");
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("uploads", "");
                if !prefix.is_empty() {
                    q.append_pair("prefix", prefix);
                }
                if let Some((key, id)) = &markers {
                    q.append_pair("key-marker", key);
                    q.append_pair("upload-id-marker", id);
                }
            }
            let req = request("ListMultipartUploads", Method::GET, url);
            let answer = self.client.send(&req, false, cancel).await?;
            let doc: xml::ListUploadsDoc = parse_xml(&req, &answer)?;
            found.extend(doc.uploads.into_iter().map(|u| PendingUpload {
                key: u.key,
                upload_id: u.upload_id,
                initiated: u.initiated,
            }));
            match (
                doc.is_truncated,
                doc.next_key_marker,
                doc.next_upload_id_marker,
            ) {
                (true, Some(key), Some(id)) => markers = Some((key, id)),
                _ => return Ok(found),
            }
        }
    }

    /// Aborts a multipart upload; one that no longer exists counts as aborted.
    pub async fn abort_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let mut url = self.endpoint.object_url(bucket, key);
        url.query_pairs_mut().append_pair("uploadId", upload_id);
        let req = request("AbortMultipartUpload", Method::DELETE, url);
        match self.client.send(&req, true, cancel).await {
            Ok(_) => Ok(()),
            Err(Error::S3Status { code, .. }) if code == "NoSuchUpload" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the multipart upload, with the ACL when one is asked for; an endpoint that
    /// refuses the ACL gets the request again without it.
    async fn create(
        &self,
        outcome: &UploadOutcome,
        events: &Sink,
        cancel: &CancellationToken,
    ) -> Result<(String, AclOutcome)> {
        let mut url = self.endpoint.object_url(&outcome.bucket, &outcome.key);
        url.query_pairs_mut().append_pair("uploads", "");
        let mut req = request("CreateMultipartUpload", Method::POST, url);
        req.headers = vec![
            ("content-type", "application/octet-stream".to_owned()),
            (SHA256_META, outcome.sha256.to_hex()),
        ];
        let mut acl = AclOutcome::NotRequested;
        if self.options.acl == Acl::PublicRead {
            let mut with_acl = request(&req.operation, req.method.clone(), req.url.clone());
            with_acl.headers = req.headers.clone();
            with_acl
                .headers
                .push((ACL_HEADER, "public-read".to_owned()));
            match self.client.send(&with_acl, false, cancel).await {
                Ok(answer) => {
                    let doc: xml::InitiateDoc = parse_xml(&with_acl, &answer)?;
                    return Ok((doc.upload_id, AclOutcome::PublicRead));
                }
                Err(Error::S3Status { code, message, .. })
                    if ACL_REFUSALS.contains(&code.as_str()) =>
                {
                    events(UploadEvent::AclRefused { code: code.clone() });
                    acl = AclOutcome::Refused { code, message };
                }
                Err(e) => return Err(e),
            }
        }
        let answer = self.client.send(&req, false, cancel).await?;
        let doc: xml::InitiateDoc = parse_xml(&req, &answer)?;
        Ok((doc.upload_id, acl))
    }

    /// `PUT ?acl` with `public-read`, for an object that was already there.
    async fn put_public_read_acl(
        &self,
        outcome: &UploadOutcome,
        events: &Sink,
        cancel: &CancellationToken,
    ) -> Result<AclOutcome> {
        let mut url = self.endpoint.object_url(&outcome.bucket, &outcome.key);
        url.query_pairs_mut().append_pair("acl", "");
        let mut req = request("PutObjectAcl", Method::PUT, url);
        req.headers = vec![(ACL_HEADER, "public-read".to_owned())];
        match self.client.send(&req, false, cancel).await {
            Ok(_) => Ok(AclOutcome::PublicRead),
            Err(Error::S3Status { code, message, .. }) if ACL_REFUSALS.contains(&code.as_str()) => {
                events(UploadEvent::AclRefused { code: code.clone() });
                Ok(AclOutcome::Refused { code, message })
            }
            Err(e) => Err(e),
        }
    }

    /// Sends every part, at most `concurrency` at once; returns the ETags in part order.
    async fn send_parts(
        &self,
        job: &Job<'_>,
        events: &Sink,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>> {
        let sent = Arc::new(AtomicI64::new(0));
        let on_sent: SentFn = {
            let events = Arc::clone(events);
            let total = job.size;
            Arc::new(move |delta| {
                let now = sent.fetch_add(delta, Ordering::Relaxed) + delta;
                events(UploadEvent::Progress {
                    sent: u64::try_from(now.max(0)).unwrap_or(0),
                    total,
                });
            })
        };
        let mut etags = vec![String::new(); job.part_count as usize];
        let mut pending = futures::stream::iter(1..=job.part_count)
            .map(|number| self.send_part(job, number, &on_sent, cancel))
            .buffer_unordered(self.options.concurrency);
        let mut done = 0;
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(Error::Cancelled { s3_uri: String::new() }),
                next = pending.next() => next,
            };
            match next {
                None => return Ok(etags),
                Some(Ok((number, etag))) => {
                    done += 1;
                    etags[number as usize - 1] = etag;
                    events(UploadEvent::PartDone {
                        part: number,
                        done,
                        parts: job.part_count,
                    });
                }
                Some(Err(e)) => return Err(e),
            }
        }
    }

    async fn send_part(
        &self,
        job: &Job<'_>,
        number: u32,
        on_sent: &SentFn,
        cancel: &CancellationToken,
    ) -> Result<(u32, String)> {
        let (body, digest) =
            parts::read(&job.file, job.path, number, job.part_size, job.size).await?;
        let mut url = self.endpoint.object_url(job.bucket, job.key);
        url.query_pairs_mut()
            .append_pair("partNumber", &number.to_string())
            .append_pair("uploadId", job.upload_id);
        let mut req = request(&format!("UploadPart {number}"), Method::PUT, url);
        req.body = body;
        req.body_sha256 = Some(digest);
        req.on_sent = Some(Arc::clone(on_sent));
        let answer = self.client.send(&req, false, cancel).await?;
        let etag = answer
            .headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::S3Response {
                operation: req.operation.clone(),
                url: req.url.to_string(),
                detail: "no ETag in the answer".into(),
            })?;
        Ok((number, etag.to_owned()))
    }

    async fn complete(
        &self,
        job: &Job<'_>,
        etags: &[String],
        cancel: &CancellationToken,
    ) -> Result<()> {
        let mut url = self.endpoint.object_url(job.bucket, job.key);
        url.query_pairs_mut().append_pair("uploadId", job.upload_id);
        let mut req = request("CompleteMultipartUpload", Method::POST, url);
        let numbered: Vec<(u32, String)> = (1..).zip(etags.iter().cloned()).collect();
        req.body = Bytes::from(xml::complete_body(&numbered));
        req.headers = vec![("content-type", "application/xml".to_owned())];
        let answer = self.client.send(&req, false, cancel).await?;
        // S3 may answer 200 and still report an error in the body.
        let text = String::from_utf8_lossy(&answer.body);
        if xml::root_name(&text) == Some("Error") {
            let doc: xml::ErrorDoc = quick_xml::de::from_str(&text).unwrap_or_default();
            return Err(status_error(
                &req.operation,
                req.url.as_str(),
                answer.status.as_u16(),
                doc.code,
                doc.message,
            ));
        }
        Ok(())
    }

    /// Aborts after a failure or cancellation: the caller's token may be cancelled already, so
    /// this runs on its own deadline.
    async fn abort_after_failure(&self, job: &Job<'_>) -> Result<()> {
        let deadline = CancellationToken::new();
        let abort = self.abort_multipart_upload(job.bucket, job.key, job.upload_id, &deadline);
        tokio::select! {
            result = abort => result,
            () = tokio::time::sleep(ABORT_DEADLINE) => {
                deadline.cancel();
                Err(Error::Cancelled { s3_uri: format!("abort of {}", job.upload_id) })
            }
        }
    }
}

struct Job<'a> {
    file: Arc<std::fs::File>,
    path: &'a Path,
    bucket: &'a str,
    key: &'a str,
    upload_id: &'a str,
    size: u64,
    part_size: u64,
    part_count: u32,
}

fn request(operation: &str, method: Method, url: Url) -> S3Request {
    S3Request {
        operation: operation.to_owned(),
        method,
        url,
        headers: Vec::new(),
        body: Bytes::new(),
        body_sha256: None,
        on_sent: None,
    }
}

fn parse_xml<T: serde::de::DeserializeOwned>(req: &S3Request, answer: &S3Answer) -> Result<T> {
    let text = String::from_utf8_lossy(&answer.body);
    quick_xml::de::from_str(&text).map_err(|e| Error::S3Response {
        operation: req.operation.clone(),
        url: req.url.to_string(),
        detail: format!("{e} in {:?}", text.chars().take(200).collect::<String>()),
    })
}

/// Cancellation inside the client names a request URL; the user wants the destination.
fn rename_cancel(error: Error, s3_uri: &str) -> Error {
    match error {
        Error::Cancelled { .. } => Error::Cancelled {
            s3_uri: s3_uri.to_owned(),
        },
        other => other,
    }
}
