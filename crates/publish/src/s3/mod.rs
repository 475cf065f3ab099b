//! S3 multipart upload.

mod client;
mod credentials;
mod events;
mod location;
mod parts;
mod upload;
mod xml;

pub use credentials::{AwsConfig, Credentials};
pub use events::UploadEvent;
pub(crate) use location::parse_http_url;
pub use location::{Addressing, S3Location};
pub use upload::{
    Acl, AclOutcome, ObjectHead, PendingUpload, S3Settings, UploadOptions, UploadOutcome,
    UploadStatus, Uploader,
};
