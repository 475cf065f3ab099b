//! seed: the cloud-init NoCloud seed of an imgbake build VM, a small ISO 9660 image labelled `cidata` that holds
//! `user-data`, `meta-data` and (optionally) `network-config`, rendered from the templates in the
//! repository's `cloud-init/` directory (embedded at compile time).
//!
//! - [`SeedConfig`] says what goes in: instance id, host name, the build user and its per-build
//!   public key, the ed25519 [`HostKeyPair`] the guest's sshd will serve (so later stages can pin
//!   it; or none, and cloud-init generates keys as on a first boot), the [`NetworkConfig`] and optional extra cloud-config keys.
//! - [`render`] fills the templates into [`SeedFiles`]; [`build_iso`] returns the image bytes;
//!   [`write_iso`] writes them atomically with mode 0600 ([`digest::write_atomic`]). The image
//!   is deterministic: the same config gives the same bytes.
//! - [`fingerprint`] is a [`digest::Sha256`] of everything that shapes the guest *except* the
//!   per-build random parts (keys, instance id), for checkpoint cache keys.
//! - [`SeedError`] is every way the above can fail.
//!
//! The image has both Joliet and Rock Ridge names, so Linux (which prefers Rock Ridge), `isoinfo
//! -J` and `isoinfo -R` all see `user-data`, and `blkid` reports `TYPE="iso9660"
//! LABEL="cidata"`, which is what cloud-init's NoCloud datasource looks for.
//!
//! The private host key is a secret: it goes only into the image (mode 0600), and the [`Debug`]
//! output of [`HostKeyPair`], [`SeedConfig`] and [`SeedFiles`] never shows it.
//!
//! ```
//! use seed::{HostKeyPair, NetworkConfig, SeedConfig};
//!
//! let config = SeedConfig {
//!     instance_id: "imgbake-0f3a".into(),
//!     hostname: "imgbake-build".into(),
//!     build_user: "imgbake".into(),
//!     user_authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4Y imgbake".into(),
//!     host_key: Some(HostKeyPair {
//!         private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n".into(),
//!         public_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsx".into(),
//!     }),
//!     network: NetworkConfig::DhcpByMac("52:54:00:12:34:56".parse()?),
//!     extra_cloud_config: Default::default(),
//! };
//! let iso = seed::build_iso(&config)?;
//! assert_eq!(iso, seed::build_iso(&config)?); // deterministic
//! let key = seed::fingerprint(&config); // a digest::Sha256, stable across builds
//! assert_eq!(key.to_string().len(), 64);
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("seed.iso");
//! seed::write_iso(&config, &path)?;
//! assert_eq!(std::fs::read(&path)?, iso);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

mod iso;
mod modules;
mod render;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use digest::{Hasher, Sha256};

/// The volume label cloud-init's NoCloud datasource looks for.
pub const VOLUME_LABEL: &str = "cidata";

/// The largest file the seed accepts (16 MiB); real seeds are a few KiB.
pub const MAX_FILE_LEN: usize = 16 << 20;

/// Errors of the seed module.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// A [`SeedConfig`] field is unusable. The value is not shown: it may be a key.
    #[error("invalid seed {field}: {problem}")]
    InvalidField {
        /// The field, e.g. `build_user`.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A MAC address did not parse.
    #[error("invalid MAC address `{text}`: expected six hex pairs like 52:54:00:12:34:56")]
    InvalidMac {
        /// The text given.
        text: String,
    },
    /// An extra cloud-config key cannot be added.
    #[error("extra cloud-config key `{key}` {problem}")]
    ExtraKey {
        /// The key.
        key: String,
        /// Why it cannot be added.
        problem: &'static str,
    },
    /// A rendered file is implausibly large for a seed.
    #[error("seed file {file} would be {len} bytes; the limit is {MAX_FILE_LEN} bytes")]
    TooLarge {
        /// The file, e.g. `user-data`.
        file: &'static str,
        /// Its rendered size.
        len: usize,
    },
    /// An embedded template and the code disagree (a bug in imgbake).
    #[error("cloud-init template {template} is broken: {problem}")]
    Template {
        /// The template's file name.
        template: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// Writing the ISO file failed.
    #[error("cannot write seed ISO {}", path.display())]
    Write {
        /// The destination.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result of the seed module.
pub type Result<T, E = SeedError> = std::result::Result<T, E>;

/// Everything the seed carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedConfig {
    /// cloud-init instance id (`meta-data`); a new one makes cloud-init run its per-instance
    /// modules again. Letters, digits, `.`, `_`, `-`; at most 128. Usually per build.
    pub instance_id: String,
    /// Host name of the build VM (`meta-data` `local-hostname`), RFC 1123.
    pub hostname: String,
    /// The user imgbake logs in as (passwordless sudo, locked password, bash). A POSIX user
    /// name: `[a-z_][a-z0-9_-]*`, at most 32 characters, not `root`.
    pub build_user: String,
    /// The build user's OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub user_authorized_key: String,
    /// The guest's ed25519 SSH host key, so the client can pin it. `None` (`imgbake test`):
    /// no `ssh_keys`, so cloud-init generates the distribution's default host keys as on a
    /// first boot in a cloud, and the client must trust the first key it is shown.
    pub host_key: Option<HostKeyPair>,
    /// How the guest configures its network.
    pub network: NetworkConfig,
    /// Extra top-level cloud-config keys appended to `user-data` (e.g. `{"timezone": "UTC"}`).
    /// A key imgbake's template already sets is an error rather than a silent override.
    pub extra_cloud_config: BTreeMap<String, serde_json::Value>,
}

/// An ed25519 SSH host key pair in OpenSSH formats. `Debug` hides the private half.
#[derive(Clone, PartialEq, Eq)]
pub struct HostKeyPair {
    /// The private key, `-----BEGIN OPENSSH PRIVATE KEY-----` … (a secret).
    pub private_openssh: String,
    /// The public key line, `ssh-ed25519 AAAA… [comment]`.
    pub public_openssh: String,
}

impl fmt::Debug for HostKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKeyPair")
            .field("private_openssh", &"<redacted>")
            .field("public_openssh", &self.public_openssh)
            .finish()
    }
}

/// The guest's network configuration (`network-config`, version 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkConfig {
    /// DHCPv4 on every NIC whose name matches `e*` (`ens3`, `enp0s2`, `eth0`). Only netplan
    /// (Ubuntu) honours a name glob: cloud-init's ENI and networkd renderers (Debian) use the
    /// entry's id as the interface name instead, so this does not configure a Debian guest.
    Dhcp,
    /// DHCPv4 on the NIC with this MAC address (give QEMU's `-device virtio-net-pci` the same
    /// `mac=`). Works with every cloud-init renderer: netplan, ENI and networkd. Preferred.
    DhcpByMac(MacAddress),
    /// No `network-config` file: cloud-init's fallback (DHCP on the first connected NIC).
    None,
}

/// A MAC address, written `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl FromStr for MacAddress {
    type Err = SeedError;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || SeedError::InvalidMac {
            text: text.to_owned(),
        };
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            Some(_) => Err(bad()),
            None => Ok(Self(bytes)),
        }
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The rendered seed files. `Debug` shows only their sizes (`user_data` holds the private key).
#[derive(Clone, PartialEq, Eq)]
pub struct SeedFiles {
    /// `user-data` (`#cloud-config`).
    pub user_data: String,
    /// `meta-data`.
    pub meta_data: String,
    /// `network-config`, unless [`NetworkConfig::None`].
    pub network_config: Option<String>,
}

impl fmt::Debug for SeedFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedFiles")
            .field(
                "user_data",
                &format_args!("<{} bytes, redacted>", self.user_data.len()),
            )
            .field("meta_data", &self.meta_data)
            .field("network_config", &self.network_config)
            .finish()
    }
}

/// Renders the three files from the embedded templates after checking every field.
pub fn render(config: &SeedConfig) -> Result<SeedFiles> {
    validate(config)?;
    let user_values = render::Values::default()
        .string("build_user", &config.build_user)
        .string("user_authorized_key", config.user_authorized_key.trim_end());
    let mut user_data = match &config.host_key {
        Some(host_key) => {
            let mut private = host_key.private_openssh.trim_end().to_owned();
            private.push('\n'); // OpenSSH writes, and some readers want, a final newline
            let values = user_values
                .string("host_key_private", &private)
                .string("host_key_public", host_key.public_openssh.trim_end());
            render::render("user-data.yaml", render::USER_DATA, &values)?
        }
        // Cut in code rather than in a second template, so the pinned case (and with it the
        // seed fingerprint of every checkpoint key) stays byte for byte what it was.
        None => render::render(
            "user-data.yaml",
            &render::without_host_key(render::USER_DATA)?,
            &user_values,
        )?,
    };
    // The lean module lists (see `modules`): what a build boot runs.
    user_data.push_str("\n# cloud-init modules a build needs (the image keeps its cloud.cfg)\n");
    user_data.push_str(&modules::lines(&config.extra_cloud_config));
    render::append_extra(&mut user_data, &config.extra_cloud_config)?;

    let meta_values = render::Values::default()
        .string("instance_id", &config.instance_id)
        .string("hostname", &config.hostname);
    let meta_data = render::render("meta-data.yaml", render::META_DATA, &meta_values)?;

    let network_config = network_match(&config.network)
        .map(|nic_match| {
            let values = render::Values::default().json("nic_match", &nic_match);
            render::render("network-config.yaml", render::NETWORK_CONFIG, &values)
        })
        .transpose()?;
    Ok(SeedFiles {
        user_data,
        meta_data,
        network_config,
    })
}

/// The seed ISO's bytes: ISO 9660 + Joliet + Rock Ridge, volume label `cidata`. Deterministic.
pub fn build_iso(config: &SeedConfig) -> Result<Vec<u8>> {
    let files = render(config)?;
    let mut entries = vec![
        iso::IsoFile {
            name: "user-data",
            short_name: "USERDATA",
            data: files.user_data.as_bytes(),
        },
        iso::IsoFile {
            name: "meta-data",
            short_name: "METADATA",
            data: files.meta_data.as_bytes(),
        },
    ];
    if let Some(network) = &files.network_config {
        entries.push(iso::IsoFile {
            name: "network-config",
            short_name: "NETWORKC",
            data: network.as_bytes(),
        });
    }
    if let Some(big) = entries.iter().find(|e| e.data.len() > MAX_FILE_LEN) {
        return Err(SeedError::TooLarge {
            file: big.name,
            len: big.data.len(),
        });
    }
    Ok(iso::build(VOLUME_LABEL, &entries))
}

/// Writes the seed ISO to `path` with mode 0600, atomically: a temporary file in the same
/// directory, fsync, rename, so `path` is never half-written.
pub fn write_iso(config: &SeedConfig, path: &Path) -> Result<()> {
    let bytes = build_iso(config)?;
    // The temp file is created 0600 and the rename keeps that mode, as the private host key
    // inside needs.
    digest::write_atomic(path, &bytes).map_err(|source| SeedError::Write {
        path: path.to_owned(),
        source,
    })
}

/// A digest of everything in the seed that shapes the guest, except the per-build random parts:
/// the three template files, host name, build user, network config and extra cloud-config.
/// The keys and the instance id are left out, so two builds of the same recipe agree.
pub fn fingerprint(config: &SeedConfig) -> Sha256 {
    fingerprint_with(
        [render::USER_DATA, render::META_DATA, render::NETWORK_CONFIG],
        config,
    )
}

/// [`fingerprint`] over the given template texts (user-data, meta-data, network-config).
fn fingerprint_with(templates: [&str; 3], config: &SeedConfig) -> Sha256 {
    let mut hash = Hasher::new();
    let mut field = |bytes: &[u8]| {
        hash.update(&(bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b"imgbake seed fingerprint v1");
    for template in templates {
        field(template.as_bytes());
    }
    field(config.hostname.as_bytes());
    field(config.build_user.as_bytes());
    match network_match(&config.network) {
        Some(nic_match) => field(nic_match.to_string().as_bytes()),
        None => field(b"none"),
    }
    field(modules::lines(&config.extra_cloud_config).as_bytes());
    field(
        serde_json::Value::from_iter(config.extra_cloud_config.clone())
            .to_string()
            .as_bytes(),
    );
    if config.host_key.is_none() {
        // Only in this case, so pinned seeds keep their fingerprint.
        field(b"host keys generated by cloud-init");
    }
    hash.finish()
}

/// The `match:` object of the network-config, or `None` when no file is written.
fn network_match(network: &NetworkConfig) -> Option<serde_json::Value> {
    match network {
        NetworkConfig::Dhcp => Some(serde_json::json!({ "name": "e*" })),
        NetworkConfig::DhcpByMac(mac) => Some(serde_json::json!({ "macaddress": mac.to_string() })),
        NetworkConfig::None => None,
    }
}

fn validate(config: &SeedConfig) -> Result<()> {
    let invalid = |field, problem| Err(SeedError::InvalidField { field, problem });
    let id = &config.instance_id;
    if id.is_empty()
        || id.len() > 128
        || id == "."
        || id == ".."
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return invalid(
            "instance_id",
            "must be 1 to 128 letters, digits, `.`, `_` or `-`",
        );
    }
    if !is_hostname(&config.hostname) {
        return invalid(
            "hostname",
            "must be an RFC 1123 host name (labels of letters, digits, `-`)",
        );
    }
    if !is_user_name(&config.build_user) {
        return invalid(
            "build_user",
            "must match [a-z_][a-z0-9_-]*, at most 32 characters, and not be root",
        );
    }
    let user_key = config.user_authorized_key.trim_end();
    if !is_public_key_line(user_key, &["ssh-", "ecdsa-", "sk-"]) {
        return invalid(
            "user_authorized_key",
            "must be one OpenSSH public key line (`ssh-ed25519 AAAA… comment`)",
        );
    }
    let Some(host_key) = &config.host_key else {
        return Ok(());
    };
    if !is_public_key_line(host_key.public_openssh.trim_end(), &["ssh-ed25519 "]) {
        return invalid(
            "host_key.public_openssh",
            "must be one `ssh-ed25519 AAAA…` line",
        );
    }
    let private = host_key.private_openssh.trim();
    if !private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        || !private.ends_with("\n-----END OPENSSH PRIVATE KEY-----")
        || private.contains(['\0', '\r'])
    {
        return invalid(
            "host_key.private_openssh",
            "must be an OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`)",
        );
    }
    Ok(())
}

fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_user_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 32
        && name != "root"
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `<type> <base64> [comment]` on one line, the type starting with one of `prefixes`.
fn is_public_key_line(line: &str, prefixes: &[&str]) -> bool {
    let mut parts = line.splitn(3, ' ');
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return false;
    };
    let comment = parts.next().unwrap_or("");
    prefixes.iter().any(|p| line.starts_with(p))
        && kind.bytes().all(|b| b.is_ascii_graphic())
        && !blob.is_empty()
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        && !comment.chars().any(char::is_control)
}

#[cfg(test)]
mod tests;
