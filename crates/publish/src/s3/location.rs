//! `s3://bucket/key` destinations, endpoints and the URLs of objects on them.

use std::fmt;
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

use crate::{Error, Result};

/// Characters SigV4 leaves alone in a key path: RFC 3986 unreserved plus `/`.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Where to upload: `s3://bucket/prefix/` (the image's file name is appended) or
/// `s3://bucket/exact/key.raw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    bucket: String,
    key: String,
}

impl S3Location {
    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key or key prefix as given (without a leading `/`).
    pub fn key_or_prefix(&self) -> &str {
        &self.key
    }

    /// The object key for a file called `file_name`: the prefix plus the name when the location
    /// is empty or ends with `/`, otherwise the key as given.
    pub fn object_key(&self, file_name: &str) -> String {
        if self.key.is_empty() || self.key.ends_with('/') {
            format!("{}{file_name}", self.key)
        } else {
            self.key.clone()
        }
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl FromStr for S3Location {
    type Err = Error;

    fn from_str(given: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidS3Location {
            given: given.to_owned(),
            reason,
        };
        let rest = given
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("expected s3://bucket/prefix/"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("the bucket name is missing"));
        }
        if bucket.len() > 255
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(invalid(
                "a bucket name has only letters, digits, '.', '-' and '_'",
            ));
        }
        if key.len() > 1024 {
            return Err(invalid("an S3 key is at most 1024 bytes"));
        }
        if key.starts_with('/') || key.contains("//") {
            return Err(invalid("the key has an empty path segment ('//')"));
        }
        if key.chars().any(char::is_control) {
            return Err(invalid("the key contains control characters"));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }
}

/// How a bucket is addressed on the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Addressing {
    /// `https://bucket.host/key` (AWS's default).
    #[default]
    VirtualHosted,
    /// `https://host/bucket/key` (needed by many S3-compatible servers and for IP endpoints).
    Path,
}

/// The endpoint requests go to, after defaults were applied.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    base: Url,
    is_aws: bool,
    addressing: Addressing,
}

impl Endpoint {
    /// AWS's regional endpoint, or `custom`.
    pub(crate) fn new(custom: Option<Url>, region: &str, addressing: Addressing) -> Result<Self> {
        let (base, is_aws) = match custom {
            Some(url) => (url, false),
            None => {
                let given = format!("https://s3.{region}.amazonaws.com/");
                let url = Url::parse(&given).map_err(|source| Error::InvalidUrl {
                    what: "AWS endpoint (from the region)",
                    given,
                    source,
                })?;
                (url, true)
            }
        };
        Ok(Self {
            base,
            is_aws,
            addressing,
        })
    }

    /// The endpoint's base URL.
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `key` in `bucket` (key `""` gives the bucket URL).
    pub(crate) fn object_url(&self, bucket: &str, key: &str) -> Url {
        let encoded = utf8_percent_encode(key, KEY_ENCODE).to_string();
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        match self.addressing {
            Addressing::Path => url.set_path(&format!("{base_path}/{bucket}/{encoded}")),
            Addressing::VirtualHosted => {
                if let Some(host) = self.base.host_str() {
                    // A bucket name is a valid DNS label sequence; a failure here leaves the
                    // host as is and the server answers with a clear error.
                    let _ = url.set_host(Some(&format!("{bucket}.{host}")));
                }
                url.set_path(&format!("{base_path}/{encoded}"));
            }
        }
        url
    }

    /// A URL anyone can fetch the object from, when one is known: `public_base` + key, or the
    /// virtual-hosted AWS URL.
    pub(crate) fn public_url(
        &self,
        public_base: Option<&Url>,
        bucket: &str,
        key: &str,
    ) -> Option<Url> {
        let encoded = utf8_percent_encode(key, KEY_ENCODE).to_string();
        if let Some(base) = public_base {
            let mut url = base.clone();
            let path = format!("{}/{encoded}", url.path().trim_end_matches('/'));
            url.set_path(&path);
            return Some(url);
        }
        if self.is_aws {
            let mut url = self.base.clone();
            let host = url.host_str()?.to_owned();
            url.set_host(Some(&format!("{bucket}.{host}"))).ok()?;
            url.set_path(&format!("/{encoded}"));
            return Some(url);
        }
        None
    }
}

/// Parses an http(s) URL option.
pub(crate) fn parse_http_url(what: &'static str, given: &str) -> Result<Url> {
    let url = Url::parse(given).map_err(|source| Error::InvalidUrl {
        what,
        given: given.to_owned(),
        source,
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::UnsupportedScheme {
            what,
            given: given.to_owned(),
        });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefix_and_exact_key() {
        let prefix: S3Location = "s3://images/gpu/".parse().unwrap();
        assert_eq!(prefix.bucket(), "images");
        assert_eq!(prefix.object_key("a.raw"), "gpu/a.raw");
        let bare: S3Location = "s3://images".parse().unwrap();
        assert_eq!(bare.object_key("a.raw"), "a.raw");
        let slash: S3Location = "s3://images/".parse().unwrap();
        assert_eq!(slash.object_key("a.raw"), "a.raw");
        let exact: S3Location = "s3://images/gpu/b.raw".parse().unwrap();
        assert_eq!(exact.object_key("a.raw"), "gpu/b.raw");
        assert_eq!(exact.to_string(), "s3://images/gpu/b.raw");
    }

    #[test]
    fn rejects_bad_locations_without_panicking() {
        for bad in [
            "",
            "images/gpu",
            "https://images/gpu",
            "s3://",
            "s3:///key",
            "s3://bad bucket/x",
            "s3://b//x",
            "s3://b/a\nb",
        ] {
            let err = bad.parse::<S3Location>().unwrap_err();
            assert!(
                matches!(err, Error::InvalidS3Location { .. }),
                "{bad:?}: {err}"
            );
        }
        let long = format!("s3://b/{}", "k".repeat(1025));
        assert!(long.parse::<S3Location>().is_err());
    }

    #[test]
    fn path_style_urls_keep_the_endpoint_path_and_encode_the_key() {
        let base = Url::parse("http://127.0.0.1:9000/s3/").unwrap();
        let ep = Endpoint::new(Some(base), "us-east-1", Addressing::Path).unwrap();
        assert_eq!(
            ep.object_url("bkt", "dir/a b+c.raw").as_str(),
            "http://127.0.0.1:9000/s3/bkt/dir/a%20b%2Bc.raw"
        );
        assert_eq!(
            ep.object_url("bkt", "").as_str(),
            "http://127.0.0.1:9000/s3/bkt/"
        );
        assert_eq!(ep.public_url(None, "bkt", "k"), None);
        let public = Url::parse("https://cdn.example.com/images").unwrap();
        assert_eq!(
            ep.public_url(Some(&public), "bkt", "dir/a.raw")
                .unwrap()
                .as_str(),
            "https://cdn.example.com/images/dir/a.raw"
        );
    }

    #[test]
    fn aws_default_is_virtual_hosted_and_public() {
        let ep = Endpoint::new(None, "eu-west-2", Addressing::VirtualHosted).unwrap();
        assert_eq!(
            ep.object_url("bkt", "gpu/a.raw").as_str(),
            "https://bkt.s3.eu-west-2.amazonaws.com/gpu/a.raw"
        );
        assert_eq!(
            ep.public_url(None, "bkt", "gpu/a.raw").unwrap().as_str(),
            "https://bkt.s3.eu-west-2.amazonaws.com/gpu/a.raw"
        );
        let path = Endpoint::new(None, "eu-west-2", Addressing::Path).unwrap();
        assert_eq!(
            path.object_url("bkt", "gpu/a.raw").as_str(),
            "https://s3.eu-west-2.amazonaws.com/bkt/gpu/a.raw"
        );
    }

    #[test]
    fn url_options_must_be_http() {
        assert!(parse_http_url("endpoint", "http://127.0.0.1:9000").is_ok());
        assert!(matches!(
            parse_http_url("endpoint", "ftp://x"),
            Err(Error::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            parse_http_url("endpoint", "not a url"),
            Err(Error::InvalidUrl { .. })
        ));
    }
}
