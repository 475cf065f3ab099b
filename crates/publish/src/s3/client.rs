//! One signed S3 request with bounded retries: SigV4 from AWS's `aws-sigv4`, transport by
//! reqwest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::credentials::Credentials;
use super::xml;
use crate::retry::{self, RetryPolicy};
use crate::{Error, Result};

/// Size of the body chunks handed to the transport; progress is reported per chunk.
const CHUNK: usize = 1 << 20;

/// Called with the number of body bytes handed to the transport; negative after a failed
/// attempt, to take back what it had counted.
pub(crate) type SentFn = Arc<dyn Fn(i64) + Send + Sync>;

/// A request to sign and send.
pub(crate) struct S3Request {
    pub operation: String,
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Hex sha256 of `body` when the caller has it already.
    pub body_sha256: Option<String>,
    pub on_sent: Option<SentFn>,
}

/// A successful (2xx) answer, or a 404 for operations that ask for it.
pub(crate) struct S3Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub(crate) struct S3Client {
    http: reqwest::Client,
    credentials: aws_credential_types::Credentials,
    region: String,
    retry: RetryPolicy,
}

enum Attempt {
    Done(S3Answer),
    Retry { wait: Option<Duration>, last: Error },
}

impl S3Client {
    pub(crate) fn new(
        credentials: &Credentials,
        region: String,
        retry: RetryPolicy,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("imgbake/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        Ok(Self {
            http,
            credentials: credentials.to_aws(),
            region,
            retry,
        })
    }

    /// Sends `req`, retrying transport errors, 5xx, 429 and `SlowDown`. A 404 is returned as an
    /// answer when `allow_404`, otherwise every non-2xx status is an [`Error::S3Status`].
    pub(crate) async fn send(
        &self,
        req: &S3Request,
        allow_404: bool,
        cancel: &CancellationToken,
    ) -> Result<S3Answer> {
        let body_sha256 = req
            .body_sha256
            .clone()
            .unwrap_or_else(|| digest::Sha256::of(&req.body).to_hex());
        let mut attempt = 1;
        loop {
            let sent = Arc::new(AtomicU64::new(0));
            let outcome = tokio::select! {
                out = self.attempt(req, &body_sha256, allow_404, attempt, &sent) => out,
                () = cancel.cancelled() => Err(Error::Cancelled { s3_uri: req.url.to_string() }),
            };
            let retry = match outcome {
                Ok(Attempt::Done(answer)) => return Ok(answer),
                Ok(Attempt::Retry { wait, last }) => Some((wait, last)),
                Err(e) => {
                    take_back(req, &sent);
                    return Err(e);
                }
            };
            take_back(req, &sent);
            if let Some((wait, last)) = retry {
                if !self.retry.may_retry(attempt) {
                    return Err(last);
                }
                tracing::debug!(operation = %req.operation, url = %req.url, attempt, error = %last, "retrying S3 request");
                if !retry::wait(self.retry.backoff(attempt, wait), cancel).await {
                    return Err(Error::Cancelled {
                        s3_uri: req.url.to_string(),
                    });
                }
            }
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        req: &S3Request,
        body_sha256: &str,
        allow_404: bool,
        attempt: u32,
        sent: &Arc<AtomicU64>,
    ) -> Result<Attempt> {
        let signed = self.sign(req, body_sha256)?;
        // A stalled server must not hang the upload: allow a minute plus 256 KiB/s for the body.
        let deadline = Duration::from_secs(60 + req.body.len() as u64 / (256 << 10));
        let mut builder = self
            .http
            .request(req.method.clone(), req.url.clone())
            .timeout(deadline)
            .headers(signed);
        let body = if req.body.is_empty() {
            reqwest::Body::from(Bytes::new())
        } else {
            builder = builder.header(reqwest::header::CONTENT_LENGTH, req.body.len());
            let chunks: Vec<Bytes> = (0..req.body.len())
                .step_by(CHUNK)
                .map(|start| req.body.slice(start..(start + CHUNK).min(req.body.len())))
                .collect();
            let on_sent = req.on_sent.clone();
            let sent = Arc::clone(sent);
            reqwest::Body::wrap_stream(futures::stream::iter(chunks.into_iter().map(
                move |chunk| {
                    let len = chunk.len() as u64;
                    sent.fetch_add(len, Ordering::Relaxed);
                    if let Some(f) = &on_sent {
                        f(i64::try_from(len).unwrap_or(i64::MAX));
                    }
                    Ok::<_, std::io::Error>(chunk)
                },
            )))
        };
        let transport = |source| Error::S3Transport {
            operation: req.operation.clone(),
            url: req.url.to_string(),
            attempts: attempt,
            source,
        };
        let response = match builder.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Attempt::Retry {
                    wait: None,
                    last: transport(e),
                });
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Ok(Attempt::Retry {
                    wait: None,
                    last: transport(e),
                });
            }
        };
        if status.is_success() || (allow_404 && status == StatusCode::NOT_FOUND) {
            return Ok(Attempt::Done(S3Answer {
                status,
                headers,
                body,
            }));
        }
        let error = self.status_error(req, status, &body);
        let code = match &error {
            Error::S3Status { code, .. } => code.as_str(),
            _ => "",
        };
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || matches!(code, "SlowDown" | "RequestTimeout" | "InternalError")
        {
            return Ok(Attempt::Retry {
                wait: retry::retry_after(&headers),
                last: error,
            });
        }
        Err(error)
    }

    fn sign(&self, req: &S3Request, body_sha256: &str) -> Result<HeaderMap> {
        let sign_error = |source| Error::Sign {
            operation: req.operation.clone(),
            url: req.url.to_string(),
            source,
        };
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .expect("identity, region, name, time and settings are all set")
            .into();
        let signable = SignableRequest::new(
            req.method.as_str(),
            req.url.as_str(),
            req.headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Precomputed(body_sha256.to_owned()),
        )
        .map_err(sign_error)?;
        let (instructions, _signature) = sign(signable, &params).map_err(sign_error)?.into_parts();
        let mut headers = HeaderMap::new();
        let (signing_headers, _params) = instructions.into_parts();
        let invalid = |name: &str| Error::S3Response {
            operation: req.operation.clone(),
            url: req.url.to_string(),
            detail: format!("header {name} has a value that cannot be sent"),
        };
        for (name, value) in &req.headers {
            let value = HeaderValue::from_str(value).map_err(|_| invalid(name))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        for header in signing_headers {
            let mut value =
                HeaderValue::from_str(header.value()).map_err(|_| invalid(header.name()))?;
            value.set_sensitive(header.sensitive() || header.name() == "authorization");
            headers.insert(HeaderName::from_static(header.name()), value);
        }
        Ok(headers)
    }

    fn status_error(&self, req: &S3Request, status: StatusCode, body: &[u8]) -> Error {
        let text = String::from_utf8_lossy(body);
        let doc: xml::ErrorDoc = quick_xml::de::from_str(&text).unwrap_or_default();
        let code = if doc.code.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("error")
                .replace(' ', "")
        } else {
            doc.code
        };
        let message = if doc.message.is_empty() {
            "(no error details in the answer)".to_owned()
        } else {
            doc.message
        };
        status_error(
            &req.operation,
            req.url.as_str(),
            status.as_u16(),
            code,
            message,
        )
    }
}

/// Builds an [`Error::S3Status`] with a hint for the common codes.
pub(crate) fn status_error(
    operation: &str,
    url: &str,
    status: u16,
    code: String,
    message: String,
) -> Error {
    let hint = match code.as_str() {
        // A HEAD answer has no body, so only the status tells.
        "Forbidden" => {
            "; try: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), the region, \
             and the key's permissions on the bucket"
        }
        "SignatureDoesNotMatch" => {
            "; try: check AWS_SECRET_ACCESS_KEY and the region (--region / AWS_REGION)"
        }
        "InvalidAccessKeyId" => "; try: check AWS_ACCESS_KEY_ID or AWS_PROFILE",
        "AccessDenied" => "; try: check the key's permissions on the bucket",
        "NoSuchBucket" => "; try: create the bucket or fix the s3:// destination",
        "AuthorizationHeaderMalformed" => "; try: set the bucket's region with --region",
        "PermanentRedirect" => "; try: set the bucket's region with --region, or --endpoint",
        _ => "",
    };
    Error::S3Status {
        operation: operation.to_owned(),
        url: url.to_owned(),
        status,
        code,
        message,
        hint,
    }
}

/// Takes back the progress a failed attempt had reported.
fn take_back(req: &S3Request, sent: &AtomicU64) {
    let counted = sent.swap(0, Ordering::Relaxed);
    if counted > 0
        && let Some(f) = &req.on_sent
    {
        f(-i64::try_from(counted).unwrap_or(i64::MAX));
    }
}
