//! AWS credentials, region and endpoint from the environment and the profile files, the way the
//! AWS CLI finds them.
//!
//! Written by hand because the crate that does this (`aws-config`) pulls in the whole AWS SDK
//! runtime; the files' format (INI with indented sub-sections such as `s3 =`) is small.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::location::Addressing;
use crate::{Error, Result};

/// An AWS access key with its secret (and session token, for temporary credentials). `Debug`
/// shows only the access key id.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl Credentials {
    /// Wraps an access key pair and optional session token.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
        }
    }

    /// The access key id (not secret).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// Converts to the signer's type (which also redacts itself in `Debug`).
    pub(crate) fn to_aws(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
            self.session_token.clone(),
            None,
            "imgbake",
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// What the AWS environment says: credentials, and the region, endpoint and addressing style
/// when it names them.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// The credentials.
    pub credentials: Credentials,
    /// Where they came from (`environment` or `profile NAME in FILE`), for messages.
    pub credentials_source: String,
    /// `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile's `region`.
    pub region: Option<String>,
    /// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or the profile's `endpoint_url` (also inside
    /// its `s3 =` sub-section).
    pub endpoint_url: Option<String>,
    /// The profile's `s3 = addressing_style = path|virtual`.
    pub addressing: Option<Addressing>,
}

impl AwsConfig {
    /// Reads the process environment and `~/.aws/{credentials,config}` (or the files named by
    /// `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`).
    pub fn from_env() -> Result<Self> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self::from_lookup(&|name| std::env::var(name).ok(), home.as_deref())
    }

    /// Like [`AwsConfig::from_env`], with the variables from `lookup` and the home directory
    /// `home` (for tests and embedding).
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let profile_name = var("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
        let aws_dir = home.map(|h| h.join(".aws"));
        let credentials_path = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| aws_dir.as_ref().map(|d| d.join("credentials")));
        let config_path = var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| aws_dir.as_ref().map(|d| d.join("config")));

        let cred_section = match &credentials_path {
            Some(path) => read_ini(path)?
                .and_then(|mut ini| ini.remove(&profile_name))
                .map(|s| (s, path.clone())),
            None => None,
        };
        let config_header = if profile_name == "default" {
            "default".to_owned()
        } else {
            format!("profile {profile_name}")
        };
        let config_section = match &config_path {
            Some(path) => read_ini(path)?
                .and_then(|mut ini| ini.remove(&config_header))
                .map(|s| (s, path.clone())),
            None => None,
        };

        let from_env = key_pair(
            var("AWS_ACCESS_KEY_ID"),
            var("AWS_SECRET_ACCESS_KEY"),
            "the environment",
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        )?;
        let (credentials, credentials_source) = if let Some((id, secret)) = from_env {
            (
                Credentials::new(id, secret, var("AWS_SESSION_TOKEN")),
                "the environment".to_owned(),
            )
        } else {
            let mut found = None;
            for (section, path) in [&cred_section, &config_section].into_iter().flatten() {
                let origin = format!("profile {profile_name:?} in {}", path.display());
                let pair = key_pair(
                    section.get("aws_access_key_id").cloned(),
                    section.get("aws_secret_access_key").cloned(),
                    &origin,
                    ("aws_access_key_id", "aws_secret_access_key"),
                )?;
                if let Some((id, secret)) = pair {
                    let token = section.get("aws_session_token").cloned();
                    found = Some((Credentials::new(id, secret, token), origin));
                    break;
                }
            }
            found.ok_or_else(|| Error::NoCredentials {
                searched: searched(&profile_name, &credentials_path, &config_path),
            })?
        };

        let profile = config_section.as_ref().map(|(s, _)| s);
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| profile.and_then(|s| s.get("region").cloned()));
        let endpoint_url = var("AWS_ENDPOINT_URL_S3")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| profile.and_then(|s| s.get("s3.endpoint_url").cloned()))
            .or_else(|| profile.and_then(|s| s.get("endpoint_url").cloned()));
        let addressing = profile
            .and_then(|s| s.get("s3.addressing_style"))
            .and_then(|v| match v.as_str() {
                "path" => Some(Addressing::Path),
                "virtual" => Some(Addressing::VirtualHosted),
                _ => None,
            });
        Ok(Self {
            credentials,
            credentials_source,
            region,
            endpoint_url,
            addressing,
        })
    }
}

fn key_pair(
    id: Option<String>,
    secret: Option<String>,
    origin: &str,
    (id_name, secret_name): (&'static str, &'static str),
) -> Result<Option<(String, String)>> {
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Some((id, secret))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::IncompleteCredentials {
            source_name: origin.to_owned(),
            present: id_name,
            missing: secret_name,
        }),
        (None, Some(_)) => Err(Error::IncompleteCredentials {
            source_name: origin.to_owned(),
            present: secret_name,
            missing: id_name,
        }),
    }
}

fn searched(profile: &str, credentials: &Option<PathBuf>, config: &Option<PathBuf>) -> String {
    let files: Vec<String> = [credentials, config]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
    if files.is_empty() {
        format!("the environment; no HOME, so no profile files for profile {profile:?}")
    } else {
        format!(
            "the environment and profile {profile:?} in {}",
            files.join(", ")
        )
    }
}

type Sections = HashMap<String, HashMap<String, String>>;

/// Reads an AWS INI file; a missing file is `None`, not an error.
fn read_ini(path: &Path) -> Result<Option<Sections>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(parse_ini(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::ReadAwsFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses the AWS flavour of INI: `[section]`, `key = value`, `#`/`;` comment lines, and
/// sub-sections (`s3 =` followed by indented `key = value` lines, stored as `s3.key`).
fn parse_ini(text: &str) -> Sections {
    let mut sections = Sections::new();
    let mut current: Option<String> = None;
    let mut parent: Option<String> = None;
    for raw in text.lines() {
        let indented = raw.starts_with([' ', '\t']);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            sections.entry(name.clone()).or_default();
            current = Some(name);
            parent = None;
            continue;
        }
        let (Some(section), Some((key, value))) = (&current, line.split_once('=')) else {
            continue;
        };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim().to_owned());
        let entry = sections.entry(section.clone()).or_default();
        match (&parent, indented) {
            (Some(p), true) => {
                entry.insert(format!("{p}.{key}"), value);
            }
            _ if value.is_empty() => parent = Some(key),
            _ => {
                parent = None;
                entry.insert(key, value);
            }
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn environment_wins_and_debug_redacts() {
        let env = lookup(&[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t-env"),
            ("AWS_SESSION_TOKEN", "tok3n-env"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ]);
        let cfg = AwsConfig::from_lookup(&env, None).unwrap();
        assert_eq!(cfg.credentials.access_key_id(), "AKIDENV");
        assert_eq!(cfg.region.as_deref(), Some("eu-west-1"));
        assert_eq!(cfg.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains("s3cr3t-env") && !debug.contains("tok3n-env"),
            "{debug}"
        );
        assert!(debug.contains("AKIDENV"));
    }

    #[test]
    fn half_a_key_pair_is_an_error_naming_the_missing_half() {
        let env = lookup(&[("AWS_ACCESS_KEY_ID", "AKID")]);
        let err = AwsConfig::from_lookup(&env, None).unwrap_err();
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    }

    #[test]
    fn nothing_anywhere_lists_where_it_looked() {
        let home = tempfile::tempdir().unwrap();
        let err = AwsConfig::from_lookup(&lookup(&[]), Some(home.path())).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::NoCredentials { .. }));
        assert!(
            msg.contains(".aws/credentials") && msg.contains("\"default\""),
            "{msg}"
        );
    }

    #[test]
    fn named_profile_from_both_files() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "# comment\n[default]\naws_access_key_id = AKIDDEF\naws_secret_access_key = def\n\n\
             [build]\naws_access_key_id = AKIDBUILD\naws_secret_access_key = bs\naws_session_token = bt\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = us-west-2\n[profile build]\nregion = eu-north-1\ns3 =\n  \
             endpoint_url = https://objects.example.net\n  addressing_style = path\n",
        )
        .unwrap();
        let cfg = AwsConfig::from_lookup(&lookup(&[("AWS_PROFILE", "build")]), Some(home.path()))
            .unwrap();
        assert_eq!(cfg.credentials.access_key_id(), "AKIDBUILD");
        assert_eq!(cfg.credentials.session_token.as_deref(), Some("bt"));
        assert_eq!(cfg.region.as_deref(), Some("eu-north-1"));
        assert_eq!(
            cfg.endpoint_url.as_deref(),
            Some("https://objects.example.net")
        );
        assert_eq!(cfg.addressing, Some(Addressing::Path));
        assert!(cfg.credentials_source.contains("\"build\""));

        let def =
            AwsConfig::from_lookup(&lookup(&[("AWS_REGION", "ap-south-1")]), Some(home.path()))
                .unwrap();
        assert_eq!(def.credentials.access_key_id(), "AKIDDEF");
        assert_eq!(def.region.as_deref(), Some("ap-south-1"));
        assert_eq!(def.endpoint_url, None);
    }

    #[test]
    fn keys_in_the_config_file_and_explicit_file_paths() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cfg");
        std::fs::write(
            &config,
            "[profile ci]\naws_access_key_id=AKIDCFG\naws_secret_access_key=x\n",
        )
        .unwrap();
        let env = lookup(&[
            ("AWS_PROFILE", "ci"),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
        ]);
        let cfg = AwsConfig::from_lookup(&env, None).unwrap();
        assert_eq!(cfg.credentials.access_key_id(), "AKIDCFG");
    }

    #[test]
    fn unreadable_file_is_an_error_not_a_silent_skip() {
        let dir = tempfile::tempdir().unwrap();
        let env = lookup(&[("AWS_SHARED_CREDENTIALS_FILE", dir.path().to_str().unwrap())]);
        let err = AwsConfig::from_lookup(&env, None).unwrap_err();
        assert!(matches!(err, Error::ReadAwsFile { .. }), "{err}");
    }

    #[test]
    fn ini_parser_tolerates_junk() {
        let s = parse_ini("junk before\n[ a ]\n=\nk=v=w\n  orphan = 1\n[b]\nx =\n\ty = 2\nz = 3\n");
        assert_eq!(s["a"]["k"], "v=w");
        assert_eq!(s["b"]["x.y"], "2");
        assert_eq!(s["b"]["z"], "3");
    }
}
