//! What to fetch: where the image is and how to learn its expected digest.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use url::Url;

use crate::error::{Error, Result};
use digest::Sha256;

/// Where a file lives: on an HTTP(S) server or on the local file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An `http://` or `https://` URL.
    Http(Url),
    /// A local path (`file://` URLs are turned into this).
    File(PathBuf),
}

impl Location {
    /// Parses `http(s)://…`, `file://…` or a plain path.
    pub fn parse(text: &str) -> Result<Self> {
        if let Ok(url) = Url::parse(text) {
            match url.scheme() {
                "http" | "https" => return Ok(Self::Http(url)),
                "file" => {
                    return url
                        .to_file_path()
                        .map(Self::File)
                        .map_err(|()| Error::BadFileUrl { url: redact(&url) });
                }
                // Anything else (a Windows drive letter, `c:foo`) is taken as a path.
                _ => {}
            }
        }
        Ok(Self::File(PathBuf::from(text)))
    }

    /// The last path segment (percent-decoded), which is what a SHA256SUMS list names.
    pub fn file_name(&self) -> Option<String> {
        match self {
            Self::Http(url) => {
                let last = url.path_segments()?.next_back()?;
                let decoded = percent_decode(last);
                (!decoded.is_empty()).then_some(decoded)
            }
            Self::File(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
        }
    }

    /// The location for messages and logs: URLs without password or query string.
    pub fn redacted(&self) -> String {
        match self {
            Self::Http(url) => redact(url),
            Self::File(path) => path.display().to_string(),
        }
    }
}

impl fmt::Display for Location {
    /// Same as [`Location::redacted`]: safe to print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for Location {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

/// How the expected digest of the image is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedDigest {
    /// Given inline: `sha256:<hex>`.
    Sha256(Sha256),
    /// Looked up by file name in a SHA256SUMS list: `file:<url or path>`.
    SumsFile(Location),
}

impl FromStr for ExpectedDigest {
    type Err = Error;

    /// Parses `sha256:<64 hex>` or `file:<url or path>` (e.g.
    /// `file:https://cloud-images.ubuntu.com/jammy/current/SHA256SUMS`).
    fn from_str(spec: &str) -> Result<Self> {
        if let Some(hex) = spec.strip_prefix("sha256:") {
            let digest = hex
                .parse::<Sha256>()
                .ok()
                .ok_or_else(|| Error::BadChecksum {
                    spec: spec.to_owned(),
                    reason: "expected sha256: followed by 64 hex digits",
                })?;
            return Ok(Self::Sha256(digest));
        }
        // `file:///x` is itself a file URL; `file:https://…` and `file:/x` name the list.
        if let Some(rest) = spec.strip_prefix("file:") {
            let target = if rest.starts_with("//") { spec } else { rest };
            if target.is_empty() {
                return Err(Error::BadChecksum {
                    spec: spec.to_owned(),
                    reason: "file: needs a url or path",
                });
            }
            return Location::parse(target).map(Self::SumsFile);
        }
        Err(Error::BadChecksum {
            spec: spec.to_owned(),
            reason: "expected sha256:<hex> or file:<url>",
        })
    }
}

/// A base image to fetch: where it is and how to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseSource {
    /// Where the image is.
    pub location: Location,
    /// How its expected digest is known.
    pub checksum: ExpectedDigest,
}

/// Redacts a URL for messages and logs: the password becomes `***` and the query string (which
/// may hold a presigned signature or token) becomes `?…`.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.set_fragment(None);
    if shown.query().is_some() {
        shown.set_query(None);
        return format!("{shown}?…");
    }
    shown.to_string()
}

/// Minimal percent-decoding of one URL path segment (invalid escapes are kept as they are).
/// Written here because `url` does not expose a decoder and one segment does not justify a crate.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert!(matches!(
            Location::parse("https://example.com/a/b.img").unwrap(),
            Location::Http(_)
        ));
        assert_eq!(
            Location::parse("file:///srv/images/x.img").unwrap(),
            Location::File("/srv/images/x.img".into())
        );
        assert_eq!(
            Location::parse("images/x.img").unwrap(),
            Location::File("images/x.img".into())
        );
        assert!(matches!(
            Location::parse("file://remotehost/x.img"),
            Err(Error::BadFileUrl { .. })
        ));
    }

    #[test]
    fn file_names() {
        let loc =
            Location::parse("https://h/jammy/current/jammy-server-cloudimg-amd64.img?x=1").unwrap();
        assert_eq!(
            loc.file_name().as_deref(),
            Some("jammy-server-cloudimg-amd64.img")
        );
        let loc = Location::parse("https://h/dir/my%20image.img").unwrap();
        assert_eq!(loc.file_name().as_deref(), Some("my image.img"));
        assert_eq!(Location::parse("https://h/dir/").unwrap().file_name(), None);
        assert_eq!(
            Location::parse("/a/b.qcow2")
                .unwrap()
                .file_name()
                .as_deref(),
            Some("b.qcow2")
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn parses_checksum_specs() {
        let hex = "a".repeat(64);
        assert!(matches!(
            format!("sha256:{hex}").parse::<ExpectedDigest>().unwrap(),
            ExpectedDigest::Sha256(_)
        ));
        assert_eq!(
            "file:https://h/x/SHA256SUMS"
                .parse::<ExpectedDigest>()
                .unwrap(),
            ExpectedDigest::SumsFile(Location::parse("https://h/x/SHA256SUMS").unwrap())
        );
        assert_eq!(
            "file:///srv/SHA256SUMS".parse::<ExpectedDigest>().unwrap(),
            ExpectedDigest::SumsFile(Location::File("/srv/SHA256SUMS".into()))
        );
        assert_eq!(
            "file:/srv/SHA256SUMS".parse::<ExpectedDigest>().unwrap(),
            ExpectedDigest::SumsFile(Location::File("/srv/SHA256SUMS".into()))
        );
        for bad in ["sha256:abc", "md5:abc", "file:", "", &hex] {
            assert!(bad.parse::<ExpectedDigest>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redaction_hides_password_and_query() {
        let url = Url::parse("https://user:hunter2@h/x.img?X-Amz-Signature=secret#frag").unwrap();
        let shown = redact(&url);
        assert_eq!(shown, "https://user:***@h/x.img?…");
        assert!(!shown.contains("hunter2") && !shown.contains("secret"));
        let plain = Url::parse("https://h/x.img").unwrap();
        assert_eq!(redact(&plain), "https://h/x.img");
    }
}
