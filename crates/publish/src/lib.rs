//! Publishing a baked image: upload the RAW file to S3-compatible storage and register it with
//! the Nscale region API.
//!
//! Main types:
//! - [`Uploader`] runs an S3 multipart upload (SigV4-signed with AWS's `aws-sigv4`, parts sent in
//!   parallel with bounded concurrency), skips objects that already hold the same sha256
//!   (`x-amz-meta-sha256`), and aborts the multipart upload on any error or cancellation.
//!   [`AwsConfig`] loads credentials, region and endpoint the way the AWS CLI does (environment
//!   variables, `AWS_PROFILE`, `~/.aws/credentials`, `~/.aws/config`).
//! - [`Registrar`] POSTs an image payload to
//!   `{api}/api/v1/organizations/{org}/regions/{region}/images` with a bearer token that is never
//!   printed or logged ([`ApiToken`] redacts itself), retrying 5xx answers and connection errors.
//!
//! The library never prints: progress arrives as [`UploadEvent`]s through a callback, results as
//! [`UploadOutcome`] / [`Registered`].
//!
//! ```no_run
//! # async fn demo() -> publish::Result<()> {
//! use publish::{AwsConfig, S3Location, S3Settings, UploadOptions, Uploader};
//! use tokio_util::sync::CancellationToken;
//!
//! let aws = AwsConfig::from_env()?;
//! let uploader = Uploader::new(S3Settings::default(), aws, UploadOptions::default())?;
//! let to: S3Location = "s3://images/gpu/".parse()?;
//! let cancel = CancellationToken::new();
//! let outcome = uploader
//!     .upload("out/image.raw".as_ref(), &to, None, |event| eprintln!("{event:?}"), &cancel)
//!     .await?;
//! println!("{}", outcome.object_url);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod error;
mod probe;
mod register;
mod retry;
mod s3;
mod schema;

pub use error::{DanglingUpload, Error, Result};
pub use probe::{ReadableImage, UriCheck, UriProblem};
pub use register::{
    ApiTarget, ApiToken, Creation, DEFAULT_TOKEN_ENV, DryRun, Image, ImageState, Payload,
    RegisterEvent, Registered, Registrar, WaitOptions,
};
pub use retry::RetryPolicy;
pub use s3::{
    Acl, AclOutcome, Addressing, AwsConfig, Credentials, ObjectHead, PendingUpload, S3Location,
    S3Settings, UploadEvent, UploadOptions, UploadOutcome, UploadStatus, Uploader,
};
pub use schema::{IMAGE_CREATE_SCHEMA, Violation, violations};
