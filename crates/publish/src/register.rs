//! Registering an uploaded image with the Nscale region API.
//!
//! The bearer token lives in [`ApiToken`], whose `Debug` and `Display` print `<redacted>`; it is
//! sent in a header marked sensitive (so HTTP-level debug output hides it too) and any copy the
//! server echoes back is cut out of error messages.

use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::retry::{self, RetryPolicy};
use crate::s3::parse_http_url;
use crate::{Error, Result};

/// The environment variable read for the token unless another is named.
pub const DEFAULT_TOKEN_ENV: &str = "NSCALE_API_TOKEN";

/// Longest server answer quoted in an error.
const MAX_BODY_IN_ERROR: usize = 2000;

/// The API bearer token. Never shown: `Debug` and `Display` print `<redacted>`.
#[derive(Clone)]
pub struct ApiToken {
    value: String,
    origin: String,
}

impl ApiToken {
    /// Wraps a token; `origin` names where it came from for messages (e.g. `$NSCALE_API_TOKEN`).
    pub fn new(value: impl Into<String>, origin: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            origin: origin.into(),
        }
    }

    /// Reads the token from environment variable `var` (unset or blank is an error).
    pub fn from_env(var: &str) -> Result<Self> {
        match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Ok(Self::new(value.trim(), format!("${var}"))),
            _ => Err(Error::MissingToken {
                var: var.to_owned(),
            }),
        }
    }

    /// Where the token came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn header(&self) -> Result<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.value)).map_err(|_| {
            Error::InvalidToken {
                var: self.origin.clone(),
            }
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Replaces every copy of the token in `text`.
    fn redact(&self, text: &str) -> String {
        if self.value.is_empty() {
            text.to_owned()
        } else {
            text.replace(&self.value, "<redacted>")
        }
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken(<redacted> from {})", self.origin)
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which API, organization and region to register in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTarget {
    api: Url,
    organization: String,
    region: String,
}

impl ApiTarget {
    /// Checks the API base URL and the two ids (which become path segments).
    pub fn new(api: &str, organization: &str, region: &str) -> Result<Self> {
        let api = parse_http_url("API", api)?;
        for (what, given) in [("organization", organization), ("region", region)] {
            let reason = if given.is_empty() {
                Some("it is empty")
            } else if !given
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                || given == "."
                || given == ".."
            {
                Some("only letters, digits, '-', '_' and '.' are allowed")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::InvalidApiTarget {
                    what,
                    given: given.to_owned(),
                    reason,
                });
            }
        }
        Ok(Self {
            api,
            organization: organization.to_owned(),
            region: region.to_owned(),
        })
    }

    /// `{api}/api/v1/organizations/{org}/regions/{region}/images`.
    pub fn images_url(&self) -> Url {
        let mut url = self.api.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!(
            "{base}/api/v1/organizations/{}/regions/{}/images",
            self.organization, self.region
        ));
        url
    }
}

/// The image payload (`api-payload.json`), a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    json: Value,
    path: PathBuf,
}

impl Payload {
    /// Reads and checks a payload file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadPayload {
            path: path.to_owned(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|source| Error::ParsePayload {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(json, path)
    }

    /// Wraps a payload already in memory; `path` names it in messages.
    pub fn from_json(json: Value, path: &Path) -> Result<Self> {
        if !json.is_object() {
            return Err(Error::PayloadShape {
                path: path.to_owned(),
                reason: "the payload must be a JSON object",
            });
        }
        Ok(Self {
            json,
            path: path.to_owned(),
        })
    }

    /// Sets `spec.uri` (creating `spec` when missing).
    pub fn with_uri(mut self, uri: &str) -> Result<Self> {
        let shape = |reason| Error::PayloadShape {
            path: self.path.clone(),
            reason,
        };
        if uri.trim().is_empty() {
            return Err(shape("the image uri is empty"));
        }
        let Some(object) = self.json.as_object_mut() else {
            return Err(shape("the payload must be a JSON object"));
        };
        let spec = object
            .entry("spec")
            .or_insert_with(|| Value::Object(Default::default()));
        let Some(spec) = spec.as_object_mut() else {
            return Err(shape("`spec` must be a JSON object"));
        };
        spec.insert("uri".into(), Value::String(uri.to_owned()));
        Ok(self)
    }

    /// The JSON.
    pub fn json(&self) -> &Value {
        &self.json
    }
}

/// The request `--dry-run` shows instead of sending. `Display` renders it like an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// Always `POST`.
    pub method: &'static str,
    /// The images URL.
    pub url: Url,
    /// Headers, the token replaced by `<redacted>`.
    pub headers: Vec<(String, String)>,
    /// The JSON body, pretty-printed.
    pub body: String,
}

impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {}", self.method, self.url)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {value}")?;
        }
        writeln!(f)?;
        writeln!(f, "{}", self.body)
    }
}

/// The API accepted the image.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// The images URL.
    pub url: Url,
    /// The success status (200 or 201).
    pub status: u16,
    /// Attempts it took.
    pub attempts: u32,
    /// The server's answer (JSON when it sent JSON, else a string).
    pub response: Value,
}

/// Sends payloads to one organization and region.
pub struct Registrar {
    http: reqwest::Client,
    target: ApiTarget,
    token: ApiToken,
    retry: RetryPolicy,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrar")
            .field("target", &self.target)
            .field("token", &self.token)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Registrar {
    /// A registrar for `target` authenticating with `token`.
    pub fn new(target: ApiTarget, token: ApiToken, retry: RetryPolicy) -> Result<Self> {
        token.header()?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("imgbake/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        Ok(Self {
            http,
            target,
            token,
            retry,
        })
    }

    /// The request [`Registrar::register`] would send, with the token redacted. Needs no token.
    pub fn dry_run(target: &ApiTarget, payload: &Payload, token_origin: &str) -> DryRun {
        DryRun {
            method: "POST",
            url: target.images_url(),
            headers: vec![
                (
                    "Authorization".into(),
                    format!("Bearer <redacted, from {token_origin}>"),
                ),
                ("Content-Type".into(), "application/json".into()),
                ("Accept".into(), "application/json".into()),
            ],
            body: serde_json::to_string_pretty(payload.json()).unwrap_or_default(),
        }
    }

    /// POSTs the payload. Retries connection errors, 5xx and 429 with backoff (bounded by the
    /// policy); 4xx answers fail at once with a message naming the likely cause.
    pub async fn register(
        &self,
        payload: &Payload,
        cancel: &CancellationToken,
    ) -> Result<Registered> {
        let url = self.target.images_url();
        let body = serde_json::to_vec(payload.json()).unwrap_or_default();
        let mut earlier_server_error = false;
        let mut attempt = 1;
        loop {
            let request = self
                .http
                .post(url.clone())
                .header(AUTHORIZATION, self.token.header()?)
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json")
                .body(body.clone())
                .send();
            let sent = tokio::select! {
                sent = request => sent,
                () = cancel.cancelled() => return Err(Error::RegisterCancelled { url: url.to_string() }),
            };
            let failure = match sent {
                Ok(response) => {
                    let status = response.status();
                    let wait = retry::retry_after(response.headers());
                    let text = tokio::select! {
                        text = response.text() => text.unwrap_or_default(),
                        () = cancel.cancelled() => return Err(Error::RegisterCancelled { url: url.to_string() }),
                    };
                    tracing::debug!(url = %url, status = status.as_u16(), attempt, "image registration answered");
                    if status.is_success() {
                        let response = serde_json::from_str(&text)
                            .unwrap_or_else(|_| Value::String(self.token.redact(&text)));
                        return Ok(Registered {
                            url,
                            status: status.as_u16(),
                            attempts: attempt,
                            response,
                        });
                    }
                    let error = self.rejected(&url, status, &text, earlier_server_error);
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Err(error);
                    }
                    earlier_server_error |= status.is_server_error();
                    (error, wait)
                }
                Err(source) => {
                    tracing::debug!(url = %url, attempt, error = %source, "image registration failed to connect");
                    (
                        Error::ApiTransport {
                            url: url.to_string(),
                            attempts: attempt,
                            source,
                        },
                        None,
                    )
                }
            };
            let (error, wait) = failure;
            if !self.retry.may_retry(attempt) {
                return Err(error);
            }
            if !retry::wait(self.retry.backoff(attempt, wait), cancel).await {
                return Err(Error::RegisterCancelled {
                    url: url.to_string(),
                });
            }
            attempt += 1;
        }
    }

    fn rejected(
        &self,
        url: &Url,
        status: StatusCode,
        body: &str,
        earlier_server_error: bool,
    ) -> Error {
        let (org, region) = (&self.target.organization, &self.target.region);
        let meaning = match status.as_u16() {
            400 => {
                "bad request: the API rejected the payload; check it against the API's image schema"
                    .to_owned()
            }
            401 => format!(
                "unauthorized: the token in {} is missing, expired or wrong",
                self.token.origin()
            ),
            403 => format!(
                "forbidden: the token may not create images in organization {org}, region {region}"
            ),
            404 => format!("not found: check the API URL, organization {org} and region {region}"),
            409 if earlier_server_error => {
                "conflict: the image already exists (an earlier attempt \
                 failed with a server error and may have created it)"
                    .to_owned()
            }
            409 => {
                "conflict: an image with this name already exists; rename it or delete the old one"
                    .to_owned()
            }
            422 => "unprocessable: the API rejected the payload's values".to_owned(),
            429 => "too many requests: gave up after retrying".to_owned(),
            s if s >= 500 => "server error: gave up after retrying".to_owned(),
            _ => status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_owned(),
        };
        let mut body = self.token.redact(body.trim());
        if body.len() > MAX_BODY_IN_ERROR {
            let cut = (0..=MAX_BODY_IN_ERROR)
                .rev()
                .find(|&i| body.is_char_boundary(i))
                .unwrap_or(0);
            body.truncate(cut);
            body.push('…');
        }
        if body.is_empty() {
            body = "(empty answer)".into();
        }
        Error::ApiRejected {
            url: url.to_string(),
            status: status.as_u16(),
            meaning,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_never_shows() {
        let token = ApiToken::new("tok-SECRET-123", "$NSCALE_API_TOKEN");
        assert_eq!(token.to_string(), "<redacted>");
        assert!(!format!("{token:?}").contains("SECRET"));
        assert_eq!(token.redact("a tok-SECRET-123 b"), "a <redacted> b");
        let header = token.header().unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("SECRET"));
    }

    #[test]
    fn images_url_and_target_checks() {
        let t = ApiTarget::new("https://api.example.com/base/", "org-1", "reg_2").unwrap();
        assert_eq!(
            t.images_url().as_str(),
            "https://api.example.com/base/api/v1/organizations/org-1/regions/reg_2/images"
        );
        for (org, region) in [("", "r"), ("o/x", "r"), ("o", ".."), ("o", "r?x")] {
            assert!(
                matches!(
                    ApiTarget::new("https://a", org, region),
                    Err(Error::InvalidApiTarget { .. })
                ),
                "{org} {region}"
            );
        }
        assert!(ApiTarget::new("ftp://a", "o", "r").is_err());
    }

    #[test]
    fn with_uri_sets_spec_uri() {
        let p = Path::new("p.json");
        let payload = Payload::from_json(json!({"metadata": {"name": "n"}, "spec": {"uri": "PLACEHOLDER", "architecture": "x86_64"}}), p)
            .unwrap()
            .with_uri("https://cdn/x.raw")
            .unwrap();
        assert_eq!(payload.json()["spec"]["uri"], "https://cdn/x.raw");
        assert_eq!(payload.json()["spec"]["architecture"], "x86_64");
        let created = Payload::from_json(json!({}), p)
            .unwrap()
            .with_uri("u")
            .unwrap();
        assert_eq!(created.json(), &json!({"spec": {"uri": "u"}}));
        assert!(Payload::from_json(json!([1]), p).is_err());
        assert!(
            Payload::from_json(json!({"spec": 3}), p)
                .unwrap()
                .with_uri("u")
                .is_err()
        );
        assert!(
            Payload::from_json(json!({}), p)
                .unwrap()
                .with_uri(" ")
                .is_err()
        );
    }

    #[test]
    fn payload_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        assert!(matches!(
            Payload::from_file(&missing),
            Err(Error::ReadPayload { .. })
        ));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{nope").unwrap();
        let err = Payload::from_file(&bad).unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");
    }

    #[test]
    fn dry_run_shows_request_without_token() {
        let t = ApiTarget::new("http://127.0.0.1:1", "o", "r").unwrap();
        let payload = Payload::from_json(json!({"spec": {"uri": "u"}}), Path::new("p")).unwrap();
        let text = Registrar::dry_run(&t, &payload, "$NSCALE_API_TOKEN").to_string();
        assert!(
            text.starts_with("POST http://127.0.0.1:1/api/v1/organizations/o/regions/r/images\n")
        );
        assert!(text.contains("Authorization: Bearer <redacted, from $NSCALE_API_TOKEN>"));
        assert!(text.contains("\"uri\": \"u\""));
    }
}
