//! What an upload reports while it runs.

/// A step of an upload, for progress display. Emitted in order; `Progress` may repeat many times
/// and can go down when a part is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UploadEvent {
    /// Hashing the image (only when no sha256 was given).
    Hashing {
        /// Bytes hashed so far.
        done: u64,
        /// Image size.
        total: u64,
    },
    /// Looking for an existing object with the same sha256.
    Checking {
        /// The object's `s3://` URI.
        s3_uri: String,
    },
    /// The object is there with the same sha256 and size; nothing will be uploaded.
    AlreadyPresent {
        /// The object's `s3://` URI.
        s3_uri: String,
    },
    /// An object with other content (or no recorded sha256) is there and will be replaced.
    Replacing {
        /// The sha256 it records, if any.
        previous_sha256: Option<String>,
    },
    /// The endpoint refused the requested ACL; the object is stored without it.
    AclRefused {
        /// The S3 error code.
        code: String,
    },
    /// The multipart upload was created.
    Started {
        /// The server's upload id.
        upload_id: String,
        /// Bytes to send.
        total: u64,
        /// Number of parts.
        parts: u32,
        /// Size of each part but the last.
        part_size: u64,
    },
    /// Bytes handed to the network so far.
    Progress {
        /// Bytes sent (of parts in flight or done).
        sent: u64,
        /// Bytes to send.
        total: u64,
    },
    /// A part was stored by the server.
    PartDone {
        /// Its number (1-based).
        part: u32,
        /// Parts done so far.
        done: u32,
        /// Number of parts.
        parts: u32,
    },
    /// All parts are stored; asking the server to assemble the object.
    Completing,
    /// The upload failed or was cancelled; aborting the multipart upload.
    Aborting {
        /// The upload id.
        upload_id: String,
    },
    /// The multipart upload was aborted; nothing is left on the server.
    Aborted {
        /// The upload id.
        upload_id: String,
    },
}
