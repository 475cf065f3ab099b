//! Registering an uploaded image with the Nscale region API, once.
//!
//! The create call is not idempotent (a 500 can come after the record exists), so a failed POST
//! is never retried blindly: the image list is read first, and an image with the payload's name
//! there means it was created. Before the POST the payload is checked against the API's schema
//! and the image URI the way the API will read it ([`crate::UriCheck`]).
//!
//! The bearer token lives in [`ApiToken`], whose `Debug` and `Display` print `<redacted>`; it is
//! sent in a header marked sensitive (so HTTP-level debug output hides it too) and any copy the
//! server echoes back is cut out of error messages.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::probe::UriCheck;
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

    /// Refuses an `http://` API: the bearer token would be sent in clear. Callers that talk
    /// to a test server on purpose skip this (imgbake's `--insecure-http`).
    pub fn refuse_plain_http(&self) -> Result<()> {
        if self.api.scheme() == "http" {
            return Err(Error::PlainHttp {
                what: "API URL",
                url: self.api.to_string(),
                credential: "bearer token",
            });
        }
        Ok(())
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

    /// `metadata.name`, when it is a string.
    pub fn name(&self) -> Option<&str> {
        self.json.pointer("/metadata/name")?.as_str()
    }

    /// The file it came from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the payload against the region API's `imageCreate` schema; every violation is
    /// reported with its JSON Pointer.
    pub fn validate(&self) -> Result<()> {
        let violations = crate::schema::violations(&self.json);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::PayloadInvalid {
                path: self.path.clone(),
                violations,
            })
        }
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

/// An image's state in the region (`status.state`). Only `ready` images can be used.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageState {
    /// Accepted, not started.
    Pending,
    /// Being imported from its URI.
    Creating,
    /// Usable.
    Ready,
    /// The import failed.
    Failed,
    /// A state the spec does not list (kept as sent).
    Other(String),
}

impl ImageState {
    fn parse(text: &str) -> ImageState {
        match text {
            "pending" => ImageState::Pending,
            "creating" => ImageState::Creating,
            "ready" => ImageState::Ready,
            "failed" => ImageState::Failed,
            other => ImageState::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageState::Pending => "pending",
            ImageState::Creating => "creating",
            ImageState::Ready => "ready",
            ImageState::Failed => "failed",
            ImageState::Other(s) => s,
        })
    }
}

/// An image as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `metadata.id`.
    pub id: String,
    /// `metadata.name`.
    pub name: String,
    /// `status.state`.
    pub state: ImageState,
}

#[derive(Deserialize)]
struct ImageDoc {
    metadata: MetadataDoc,
    #[serde(default)]
    status: Option<StatusDoc>,
}

#[derive(Deserialize)]
struct MetadataDoc {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct StatusDoc {
    #[serde(default)]
    state: Option<String>,
}

impl From<ImageDoc> for Image {
    fn from(doc: ImageDoc) -> Self {
        Image {
            id: doc.metadata.id,
            name: doc.metadata.name,
            state: doc
                .status
                .and_then(|s| s.state)
                .map_or(ImageState::Pending, |s| ImageState::parse(&s)),
        }
    }
}

/// How [`Registrar::register`] got its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creation {
    /// The POST answered with the image.
    Created,
    /// A POST failed (5xx or no answer), and the list then showed an image of this name: the
    /// failed POST had created it.
    FoundAfterFailure {
        /// How that POST failed.
        failure: String,
    },
}

/// The API accepted the image.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// The images URL.
    pub url: Url,
    /// The last POST's status (200), or the failed one's when the image was found afterwards.
    pub status: u16,
    /// POSTs it took.
    pub attempts: u32,
    /// The image (its state is usually still `pending`: see [`Registrar::wait_until_ready`]).
    pub image: Image,
    /// How it was made.
    pub creation: Creation,
    /// The server's answer (JSON when it sent JSON, else a string; the listed image when found
    /// after a failure).
    pub response: Value,
}

/// What registration reports while it runs. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterEvent {
    /// Reading the first 512 bytes of the image URI anonymously.
    CheckingUri {
        /// The URI.
        uri: String,
    },
    /// The URI is readable without credentials and holds a RAW disk.
    UriReadable {
        /// The URI.
        uri: String,
        /// Its size, when the server said.
        size: Option<u64>,
    },
    /// Looking in the region's image list for the payload's name.
    LookingForName {
        /// The name.
        name: String,
    },
    /// Sending the create request.
    Posting {
        /// 1-based.
        attempt: u32,
    },
    /// The create request failed in a way that may or may not have created the image.
    PostFailed {
        /// 1-based.
        attempt: u32,
        /// What happened.
        reason: String,
        /// The wait before looking at the image list.
        wait: Duration,
    },
    /// The list does not show the image: the failed POST did not create it.
    NotCreated {
        /// The name.
        name: String,
    },
    /// The image exists.
    Registered {
        /// Its id.
        id: String,
        /// Its state.
        state: ImageState,
    },
    /// While waiting: the image's state (sent on the first poll and on every change).
    State {
        /// Its id.
        id: String,
        /// The state.
        state: ImageState,
        /// Time since waiting started.
        elapsed: Duration,
    },
}

/// How long and how often [`Registrar::wait_until_ready`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Time between two polls of the image list.
    pub interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60 * 60),
            interval: Duration::from_secs(10),
        }
    }
}

/// One answer of the API (any status), or why there was none.
enum Sent {
    Answer {
        status: StatusCode,
        text: String,
        retry_after: Option<Duration>,
    },
    Transport(reqwest::Error),
}

/// Sends payloads to one organization and region.
pub struct Registrar {
    http: reqwest::Client,
    uri_check: UriCheck,
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
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        Ok(Self {
            http,
            uri_check: UriCheck::new(retry)?,
            target,
            token,
            retry,
        })
    }

    /// The request [`Registrar::register`] would send, with the token redacted. Needs no token
    /// and sends nothing, but refuses a payload the API would refuse, like `register`.
    pub fn dry_run(target: &ApiTarget, payload: &Payload, token_origin: &str) -> Result<DryRun> {
        payload.validate()?;
        Ok(DryRun {
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
        })
    }

    /// [`Registrar::register_with_events`] without events.
    pub async fn register(
        &self,
        payload: &Payload,
        cancel: &CancellationToken,
    ) -> Result<Registered> {
        self.register_with_events(payload, |_| {}, cancel).await
    }

    /// Registers the payload's image, at most once:
    /// 1. the payload is checked against the API's schema, and its `spec.uri` is read the way
    ///    the API will (anonymous ranged GET; a RAW disk);
    /// 2. the image list is read: an image of the same name is an [`Error::ImageExists`];
    /// 3. the POST; after a 5xx or a lost answer, and after a backoff, the list is read again:
    ///    an image of the name there was made by that POST and is returned; otherwise the POST
    ///    is retried (bounded by the policy). A list that cannot be read stops everything with
    ///    [`Error::RegistrationUnknown`] instead of risking a second image.
    ///
    /// 4xx answers fail at once with a message naming the likely cause.
    pub async fn register_with_events(
        &self,
        payload: &Payload,
        events: impl Fn(RegisterEvent),
        cancel: &CancellationToken,
    ) -> Result<Registered> {
        payload.validate()?;
        let name = payload.name().unwrap_or_default().to_owned();
        let uri = payload
            .json()
            .pointer("/spec/uri")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        events(RegisterEvent::CheckingUri { uri: uri.clone() });
        let readable = self.uri_check.check(&uri, cancel).await?;
        events(RegisterEvent::UriReadable {
            uri,
            size: readable.size,
        });

        let url = self.target.images_url();
        events(RegisterEvent::LookingForName { name: name.clone() });
        if let Some(image) = self.find(&name, cancel).await? {
            return Err(Error::ImageExists {
                name,
                id: image.id,
                state: image.state,
                images_url: url.to_string(),
            });
        }

        let body = serde_json::to_vec(payload.json()).unwrap_or_default();
        let mut earlier_server_error = false;
        let mut attempt = 1;
        loop {
            events(RegisterEvent::Posting { attempt });
            let (failure, retry_after, surely_not_created) =
                match self.send(Method::Post, Some(&body), cancel).await? {
                    Sent::Answer { status, text, .. } if status.is_success() => {
                        let (image, response) = match serde_json::from_str::<Value>(&text) {
                            Ok(json) => match serde_json::from_value::<ImageDoc>(json.clone()) {
                                Ok(doc) => (Image::from(doc), json),
                                Err(_) => self.created_but_unclear(&name, json, cancel).await?,
                            },
                            Err(_) => {
                                let text = Value::String(self.token.redact(&text));
                                self.created_but_unclear(&name, text, cancel).await?
                            }
                        };
                        events(RegisterEvent::Registered {
                            id: image.id.clone(),
                            state: image.state.clone(),
                        });
                        return Ok(Registered {
                            url,
                            status: status.as_u16(),
                            attempts: attempt,
                            image,
                            creation: Creation::Created,
                            response,
                        });
                    }
                    Sent::Answer {
                        status,
                        text,
                        retry_after,
                    } => {
                        let error =
                            self.rejected("POST", &url, status, &text, earlier_server_error);
                        if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                            return Err(error);
                        }
                        earlier_server_error |= status.is_server_error();
                        (error, retry_after, false)
                    }
                    Sent::Transport(source) => {
                        // A refused connection never reached the server; anything later may
                        // have.
                        let never_sent = source.is_connect();
                        let error = Error::ApiTransport {
                            method: "POST",
                            url: url.to_string(),
                            attempts: attempt,
                            source,
                        };
                        (error, None, never_sent)
                    }
                };
            let wait = self.retry.backoff(attempt, retry_after);
            events(RegisterEvent::PostFailed {
                attempt,
                reason: failure.to_string(),
                wait,
            });
            // Give a server that failed after making the record time to list it.
            if !retry::wait(wait, cancel).await {
                return Err(Error::RegisterCancelled {
                    url: url.to_string(),
                });
            }
            if !surely_not_created {
                events(RegisterEvent::LookingForName { name: name.clone() });
                match self.find(&name, cancel).await {
                    Ok(Some(image)) => {
                        let response = serde_json::json!({
                            "metadata": {"id": image.id, "name": image.name},
                            "status": {"state": image.state.to_string()},
                        });
                        events(RegisterEvent::Registered {
                            id: image.id.clone(),
                            state: image.state.clone(),
                        });
                        let status = match &failure {
                            Error::ApiRejected { status, .. } => *status,
                            _ => 0,
                        };
                        return Ok(Registered {
                            url,
                            status,
                            attempts: attempt,
                            image,
                            creation: Creation::FoundAfterFailure {
                                failure: failure.to_string(),
                            },
                            response,
                        });
                    }
                    Ok(None) => events(RegisterEvent::NotCreated { name: name.clone() }),
                    Err(Error::RegisterCancelled { url }) => {
                        return Err(Error::RegisterCancelled { url });
                    }
                    Err(list) => {
                        return Err(Error::RegistrationUnknown {
                            name,
                            post_failure: failure.to_string(),
                            source: Box::new(list),
                        });
                    }
                }
            }
            if !self.retry.may_retry(attempt) {
                return Err(failure);
            }
            attempt += 1;
        }
    }

    /// The POST succeeded but its answer is not an image: the list says which one it made.
    async fn created_but_unclear(
        &self,
        name: &str,
        response: Value,
        cancel: &CancellationToken,
    ) -> Result<(Image, Value)> {
        match self.find(name, cancel).await? {
            Some(image) => Ok((image, response)),
            None => Err(Error::ApiResponse {
                method: "POST",
                url: self.target.images_url().to_string(),
                detail: format!(
                    "the create succeeded but its answer is not an image and no image named \
                     {name} is listed: {}",
                    truncate(&self.token.redact(&response.to_string()))
                ),
            }),
        }
    }

    /// Every image in the region (`GET …/images`), retrying connection errors and 5xx.
    pub async fn list_images(&self, cancel: &CancellationToken) -> Result<Vec<Image>> {
        let url = self.target.images_url();
        let mut attempt = 1;
        loop {
            let failure = match self.send(Method::Get, None, cancel).await? {
                Sent::Answer { status, text, .. } if status.is_success() => {
                    let docs: Vec<ImageDoc> =
                        serde_json::from_str(&text).map_err(|e| Error::ApiResponse {
                            method: "GET",
                            url: url.to_string(),
                            detail: format!(
                                "the image list is not a list of images ({e}): {}",
                                truncate(&self.token.redact(&text))
                            ),
                        })?;
                    return Ok(docs.into_iter().map(Image::from).collect());
                }
                Sent::Answer { status, text, .. } => {
                    let error = self.rejected("GET", &url, status, &text, false);
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Err(error);
                    }
                    error
                }
                Sent::Transport(source) => Error::ApiTransport {
                    method: "GET",
                    url: url.to_string(),
                    attempts: attempt,
                    source,
                },
            };
            if !self.retry.may_retry(attempt) {
                return Err(failure);
            }
            if !retry::wait(self.retry.backoff(attempt, None), cancel).await {
                return Err(Error::RegisterCancelled {
                    url: url.to_string(),
                });
            }
            attempt += 1;
        }
    }

    /// The first listed image named `name`.
    async fn find(&self, name: &str, cancel: &CancellationToken) -> Result<Option<Image>> {
        Ok(self
            .list_images(cancel)
            .await?
            .into_iter()
            .find(|i| i.name == name))
    }

    /// Polls the image list until `image` is `ready` ([`Error::ImageFailed`] when `failed`,
    /// [`Error::WaitTimedOut`] after `options.timeout`). Reports the state on the first poll
    /// and on each change.
    pub async fn wait_until_ready(
        &self,
        image: &Image,
        options: WaitOptions,
        events: impl Fn(RegisterEvent),
        cancel: &CancellationToken,
    ) -> Result<Image> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + options.timeout;
        let mut ticks = tokio::time::interval(options.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<ImageState> = None;
        let cancelled = || Error::RegisterCancelled {
            url: self.target.images_url().to_string(),
        };
        let timed_out = |state: &Option<ImageState>| Error::WaitTimedOut {
            name: image.name.clone(),
            id: image.id.clone(),
            state: state.clone().unwrap_or_else(|| image.state.clone()),
            waited: started.elapsed(),
        };
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = tokio::time::sleep_until(deadline) => return Err(timed_out(&last)),
                () = cancel.cancelled() => return Err(cancelled()),
            }
            let listed = tokio::select! {
                listed = self.list_images(cancel) => listed?,
                () = tokio::time::sleep_until(deadline) => return Err(timed_out(&last)),
            };
            let Some(now) = listed.into_iter().find(|i| i.id == image.id) else {
                return Err(Error::ImageVanished {
                    name: image.name.clone(),
                    id: image.id.clone(),
                });
            };
            if last.as_ref() != Some(&now.state) {
                events(RegisterEvent::State {
                    id: now.id.clone(),
                    state: now.state.clone(),
                    elapsed: started.elapsed(),
                });
                last = Some(now.state.clone());
            }
            match now.state {
                ImageState::Ready => return Ok(now),
                ImageState::Failed => {
                    return Err(Error::ImageFailed {
                        name: now.name,
                        id: now.id,
                        images_url: self.target.images_url().to_string(),
                    });
                }
                _ => {}
            }
        }
    }

    /// One request to the images URL with the token; `Err` only for cancellation or a token
    /// that cannot be sent.
    async fn send(
        &self,
        method: Method,
        body: Option<&[u8]>,
        cancel: &CancellationToken,
    ) -> Result<Sent> {
        let url = self.target.images_url();
        let mut request = match method {
            Method::Post => self.http.post(url.clone()),
            Method::Get => self.http.get(url.clone()),
        }
        .header(AUTHORIZATION, self.token.header()?)
        .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let cancelled = || Error::RegisterCancelled {
            url: url.to_string(),
        };
        let sent = tokio::select! {
            sent = request.send() => sent,
            () = cancel.cancelled() => return Err(cancelled()),
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(url = %url, method = method.as_str(), error = %e, "image registration request failed");
                return Ok(Sent::Transport(e));
            }
        };
        let status = response.status();
        let retry_after = retry::retry_after(response.headers());
        let text = tokio::select! {
            text = response.text() => text,
            () = cancel.cancelled() => return Err(cancelled()),
        };
        tracing::debug!(url = %url, method = method.as_str(), status = status.as_u16(), "image registration answered");
        match text {
            Ok(text) => Ok(Sent::Answer {
                status,
                text,
                retry_after,
            }),
            // The status came but the body was lost: as unclear as no answer at all.
            Err(e) if status.is_success() || status.is_server_error() => Ok(Sent::Transport(e)),
            Err(_) => Ok(Sent::Answer {
                status,
                text: String::new(),
                retry_after,
            }),
        }
    }

    fn rejected(
        &self,
        method: &'static str,
        url: &Url,
        status: StatusCode,
        body: &str,
        earlier_server_error: bool,
    ) -> Error {
        let (org, region) = (&self.target.organization, &self.target.region);
        let meaning = match status.as_u16() {
            400 => "bad request: the API's schema refused the payload (imgbake checks the \
                    schema it knows first, so the API's may have changed); the answer says which \
                    field"
                .to_owned(),
            401 => format!(
                "unauthorized: the token in {} is missing, expired or wrong; get a fresh one",
                self.token.origin()
            ),
            403 => format!(
                "forbidden: the token is valid but may not manage images in organization {org}, \
                 region {region}; ask for a role that may, or check --org and --region"
            ),
            404 => format!(
                "not found: the API at this URL has no organization {org} with region {region}; \
                 check --api, --org and --region"
            ),
            409 if earlier_server_error => {
                "conflict: the image already exists (an earlier attempt \
                 failed with a server error and may have created it)"
                    .to_owned()
            }
            409 => {
                "conflict: an image with this name already exists; rename it or delete the old one"
                    .to_owned()
            }
            422 => "unprocessable: the API could not use spec.uri: it reads the first 512 bytes \
                    without credentials and needs a RAW disk (bytes 510-511 = 55 AA); make the \
                    object public and point --uri at the .raw export"
                .to_owned(),
            429 => "too many requests: gave up after retrying".to_owned(),
            s if s >= 500 => "server error: gave up after retrying".to_owned(),
            _ => status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_owned(),
        };
        let mut body = truncate(&self.token.redact(body.trim()));
        if body.is_empty() {
            body = "(empty answer)".into();
        }
        Error::ApiRejected {
            method,
            url: url.to_string(),
            status: status.as_u16(),
            meaning,
            body,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Post,
    Get,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Get => "GET",
        }
    }
}

/// Cuts a server answer to what an error message can hold.
fn truncate(text: &str) -> String {
    let mut text = text.to_owned();
    if text.len() > MAX_BODY_IN_ERROR {
        let cut = (0..=MAX_BODY_IN_ERROR)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
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
        let plain = ApiTarget::new("http://api.example.com", "o", "r").unwrap();
        assert!(matches!(
            plain.refuse_plain_http(),
            Err(Error::PlainHttp {
                what: "API URL",
                ..
            })
        ));
        let tls = ApiTarget::new("https://api.example.com", "o", "r").unwrap();
        assert!(tls.refuse_plain_http().is_ok());
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

    fn valid_payload() -> Payload {
        Payload::from_json(
            json!({
                "metadata": {"name": "img"},
                "spec": {"uri": "https://cdn.example/x.raw", "architecture": "x86_64",
                         "virtualization": "virtualized",
                         "os": {"kernel": "linux", "family": "debian", "distro": "ubuntu", "version": "22.04"}}
            }),
            Path::new("p"),
        )
        .unwrap()
    }

    #[test]
    fn dry_run_shows_request_without_token() {
        let t = ApiTarget::new("http://127.0.0.1:1", "o", "r").unwrap();
        let text = Registrar::dry_run(&t, &valid_payload(), "$NSCALE_API_TOKEN")
            .unwrap()
            .to_string();
        assert!(
            text.starts_with("POST http://127.0.0.1:1/api/v1/organizations/o/regions/r/images\n")
        );
        assert!(text.contains("Authorization: Bearer <redacted, from $NSCALE_API_TOKEN>"));
        assert!(text.contains("\"uri\": \"https://cdn.example/x.raw\""));
    }

    #[test]
    fn dry_run_refuses_what_the_api_would_refuse() {
        let t = ApiTarget::new("http://127.0.0.1:1", "o", "r").unwrap();
        let payload =
            Payload::from_json(json!({"spec": {"uri": "u"}}), Path::new("p.json")).unwrap();
        let err = Registrar::dry_run(&t, &payload, "$T").unwrap_err();
        let Error::PayloadInvalid { violations, .. } = &err else {
            panic!("{err}");
        };
        let pointers: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        assert!(pointers.contains(&"/metadata"), "{pointers:?}");
        assert!(pointers.contains(&"/spec/os"), "{pointers:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("payload p.json would be refused by the region API:\n  /"),
            "{text}"
        );
    }

    #[test]
    fn image_states_parse_and_show() {
        for s in ["pending", "creating", "ready", "failed", "exploded"] {
            assert_eq!(ImageState::parse(s).to_string(), s);
        }
        assert_eq!(ImageState::parse("ready"), ImageState::Ready);
        let doc: ImageDoc = serde_json::from_value(json!({
            "metadata": {"id": "i-1", "name": "n", "creationTime": "2026-12-01T00:00:00Z"},
            "spec": {"sizeGiB": 20},
            "status": {"state": "creating"}
        }))
        .unwrap();
        assert_eq!(
            Image::from(doc),
            Image {
                id: "i-1".into(),
                name: "n".into(),
                state: ImageState::Creating
            }
        );
    }
}
