//! The crate's error type.

use std::path::PathBuf;

use crate::probe::UriProblem;
use crate::register::ImageState;
use crate::schema::Violation;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while uploading or registering an image.
///
/// Messages never contain a secret: not the AWS secret key or session token, not the API token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An `s3://bucket/key` destination could not be understood.
    #[error("invalid S3 destination {given:?}: {reason}")]
    InvalidS3Location {
        /// What the user gave.
        given: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A URL option (endpoint, public URL base, API URL) could not be parsed or used.
    #[error("invalid {what} url {given:?}")]
    InvalidUrl {
        /// Which option.
        what: &'static str,
        /// What the user gave.
        given: String,
        /// Why it does not parse.
        #[source]
        source: url::ParseError,
    },
    /// A URL option has a scheme other than http or https.
    #[error("invalid {what} url {given:?}: only http and https are supported")]
    UnsupportedScheme {
        /// Which option.
        what: &'static str,
        /// What the user gave.
        given: String,
    },
    /// No usable AWS credentials were found.
    #[error(
        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a \
         profile in AWS_PROFILE that has aws_access_key_id/aws_secret_access_key (looked in {searched})"
    )]
    NoCredentials {
        /// The files and profile that were searched.
        searched: String,
    },
    /// Only one half of an access key pair was given.
    #[error("{source_name} sets {present} but not {missing}")]
    IncompleteCredentials {
        /// Where the half pair came from (environment, or a profile in a file).
        source_name: String,
        /// The key that is set.
        present: &'static str,
        /// The key that is missing.
        missing: &'static str,
    },
    /// An AWS config or credentials file exists but could not be read.
    #[error("reading AWS file {path}")]
    ReadAwsFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Part size or concurrency out of the range S3 allows.
    #[error("invalid upload options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
    /// The image to upload could not be opened or read.
    #[error("reading image {path}")]
    ReadImage {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image to upload is empty.
    #[error("image {path} is empty; refusing to upload it")]
    EmptyImage {
        /// The image file.
        path: PathBuf,
    },
    /// The image is larger than S3 allows for one object.
    #[error("image {path} is {size} bytes, more than S3's limit of 10000 parts of 5 GiB")]
    ImageTooLarge {
        /// The image file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A request could not be signed.
    #[error("signing {operation} request for {url}")]
    Sign {
        /// The S3 operation.
        operation: String,
        /// The request URL.
        url: String,
        /// The cause.
        #[source]
        source: aws_sigv4::http_request::SigningError,
    },
    /// An S3 request failed at the transport level (after retries).
    #[error("{operation} {url} failed after {attempts} attempt(s)")]
    S3Transport {
        /// The S3 operation.
        operation: String,
        /// The request URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The S3 server refused a request.
    #[error("{operation} {url}: server answered {status} {code}: {message}{hint}")]
    S3Status {
        /// The S3 operation.
        operation: String,
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// S3 error code (`AccessDenied`, `SignatureDoesNotMatch`, …), or the status text.
        code: String,
        /// The server's message.
        message: String,
        /// A hint on what to try, starting with `; try: `, or empty.
        hint: &'static str,
    },
    /// An S3 answer could not be understood.
    #[error("{operation} {url}: unexpected answer from the server: {detail}")]
    S3Response {
        /// The S3 operation.
        operation: String,
        /// The request URL.
        url: String,
        /// What was unexpected.
        detail: String,
    },
    /// The upload was cancelled; the multipart upload was aborted.
    #[error("upload to {s3_uri} was cancelled")]
    Cancelled {
        /// The destination.
        s3_uri: String,
    },
    /// The upload failed and, on top of that, its multipart upload could not be aborted.
    #[error("{upload}")]
    AbortFailed {
        /// The upload left on the server.
        upload: Box<DanglingUpload>,
        /// Why the upload failed.
        #[source]
        source: Box<Error>,
    },
    /// The payload file could not be read.
    #[error("reading payload {path}")]
    ReadPayload {
        /// The payload file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The payload file is not JSON.
    #[error("payload {path} is not valid JSON")]
    ParsePayload {
        /// The payload file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The payload is JSON but not of the expected shape.
    #[error("payload {path}: {reason}")]
    PayloadShape {
        /// The payload file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The environment variable that should hold the API token is unset or empty.
    #[error("API token variable {var} is not set (export {var}=<token>)")]
    MissingToken {
        /// The variable's name.
        var: String,
    },
    /// The API token cannot be sent in an HTTP header.
    #[error("API token in {var} contains characters that cannot go in an HTTP header")]
    InvalidToken {
        /// The variable's name.
        var: String,
    },
    /// Credentials would travel over plain `http://`.
    #[error("the {what} {url} is plain http: the {credential} would cross the network unencrypted")]
    PlainHttp {
        /// `API URL`, `S3 endpoint`.
        what: &'static str,
        /// The URL.
        url: String,
        /// What would be exposed (`bearer token`, `request signatures`).
        credential: &'static str,
    },
    /// An organization or region id cannot be used in a URL path.
    #[error("invalid {what} {given:?}: {reason}")]
    InvalidApiTarget {
        /// `organization` or `region`.
        what: &'static str,
        /// What the user gave.
        given: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The payload would be refused by the region API: it breaks the `imageCreate` schema.
    #[error(
        "payload {path} would be refused by the region API:{}",
        list_violations(violations)
    )]
    PayloadInvalid {
        /// The payload file.
        path: PathBuf,
        /// Every violation, with its JSON Pointer.
        violations: Vec<Violation>,
    },
    /// The image URI fails the check the region API makes before it accepts an image.
    #[error("image uri {uri} {problem}")]
    ImageUri {
        /// The URI.
        uri: String,
        /// What is wrong.
        problem: UriProblem,
    },
    /// The image URI could not be read at the transport level (after retries).
    #[error("reading the first 512 bytes of {uri} failed after {attempts} attempt(s)")]
    ImageUriTransport {
        /// The URI.
        uri: String,
        /// How many attempts were made.
        attempts: u32,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Checking the image URI was cancelled.
    #[error("checking image uri {uri} was cancelled")]
    ImageUriCancelled {
        /// The URI.
        uri: String,
    },
    /// An image of this name is registered already; a second one is not created.
    #[error(
        "an image named {name} already exists ({id}, state {state}); registering again would \
         make a second one: use it, or delete it (DELETE {images_url}/{id}) and register again"
    )]
    ImageExists {
        /// Its name.
        name: String,
        /// Its id.
        id: String,
        /// Its state.
        state: ImageState,
        /// The images URL.
        images_url: String,
    },
    /// The POST failed in a way that may have created the image, and the image list that would
    /// tell could not be read. Nothing is retried: a blind retry could make a second image.
    #[error(
        "registering {name}: {post_failure}; whether the image was created is unknown because \
         listing the images failed; look for {name} in the region before registering again"
    )]
    RegistrationUnknown {
        /// The payload's name.
        name: String,
        /// How the POST failed.
        post_failure: String,
        /// Why the list failed.
        #[source]
        source: Box<Error>,
    },
    /// The region API refused a request.
    #[error("{method} {url}: {status} {meaning}: {body}")]
    ApiRejected {
        /// `POST` (create) or `GET` (list).
        method: &'static str,
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// What the status means here and what to try.
        meaning: String,
        /// The server's answer (truncated; any copy of the token redacted).
        body: String,
    },
    /// The region API answered with something its spec does not describe.
    #[error("{method} {url}: unexpected answer: {detail}")]
    ApiResponse {
        /// The method.
        method: &'static str,
        /// The request URL.
        url: String,
        /// What was unexpected.
        detail: String,
    },
    /// The region API could not be reached (after retries).
    #[error("{method} {url} failed after {attempts} attempt(s)")]
    ApiTransport {
        /// The method.
        method: &'static str,
        /// The request URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The region could not import the image.
    #[error(
        "image {name} ({id}) failed to import; try: check that its uri is a RAW disk readable \
         without credentials, delete the failed image (DELETE {images_url}/{id}) and register again"
    )]
    ImageFailed {
        /// Its name.
        name: String,
        /// Its id.
        id: String,
        /// The images URL.
        images_url: String,
    },
    /// The image was not `ready` before the deadline.
    #[error(
        "image {name} ({id}) is still {state} after {}; it may yet become ready: check later \
         (it is registered: do not register it again) or wait longer with --wait-timeout",
        humanize(*waited)
    )]
    WaitTimedOut {
        /// Its name.
        name: String,
        /// Its id.
        id: String,
        /// The last state seen.
        state: ImageState,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// The image disappeared from the list while waiting for it.
    #[error(
        "image {name} ({id}) is no longer listed in the region: it was deleted while importing"
    )]
    ImageVanished {
        /// Its name.
        name: String,
        /// Its id.
        id: String,
    },
    /// Registration was cancelled.
    #[error("registration at {url} was cancelled")]
    RegisterCancelled {
        /// The request URL.
        url: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    HttpClient {
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
}

/// A multipart upload that failed and could not be aborted: it is left on the server (and
/// billed) until removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DanglingUpload {
    /// The destination.
    pub s3_uri: String,
    /// Its bucket.
    pub bucket: String,
    /// Its key.
    pub key: String,
    /// The upload id.
    pub upload_id: String,
    /// Why the abort failed.
    pub abort_error: String,
}

impl std::fmt::Display for DanglingUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "upload to {} failed and multipart upload {} could not be aborted ({}); remove it with \
             `aws s3api abort-multipart-upload --bucket {} --key {} --upload-id {}`",
            self.s3_uri, self.upload_id, self.abort_error, self.bucket, self.key, self.upload_id
        )
    }
}

fn list_violations(violations: &[Violation]) -> String {
    violations.iter().map(|v| format!("\n  {v}")).collect()
}

fn humanize(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
