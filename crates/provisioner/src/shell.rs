//! Building shell command lines for the guest: quoting, environment, privilege prefix.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// How commands that need root are run in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Privilege {
    /// Prefix with `sudo -n` (the build user has password-less sudo from the seed). Default.
    #[default]
    Sudo,
    /// The build user is root already: no prefix.
    Root,
}

impl Privilege {
    /// The prefix, with a trailing space when not empty.
    pub(crate) fn prefix(&self) -> &'static str {
        match self {
            Privilege::Sudo => "sudo -n ",
            Privilege::Root => "",
        }
    }
}

/// Quotes one word for a POSIX shell (via the `shlex` crate). Fails only on NUL bytes, which no
/// shell word can carry.
pub(crate) fn quote(word: &str) -> Option<String> {
    shlex::try_quote(word).ok().map(|q| q.into_owned())
}

/// Whether `name` is a valid shell variable name.
pub(crate) fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Whether a variable's value must never be logged, judged by its name.
pub fn is_secret_name(name: &str) -> bool {
    const MARKERS: [&str; 7] = [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "KEY",
        "CREDENTIAL",
        "AUTH",
    ];
    let upper = name.to_ascii_uppercase();
    MARKERS.iter().any(|m| upper.contains(m))
}

/// `export NAME='value'` lines, one per variable, for sourcing by the shell.
pub(crate) fn export_lines(env: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    for (name, value) in env {
        push_export(&mut out, name, value)?;
    }
    Ok(out)
}

/// Appends `export NAME='value'` to `out`. Errors name the variable, never show the value.
pub(crate) fn push_export(out: &mut String, name: &str, value: &str) -> Result<()> {
    if !valid_env_name(name) {
        return Err(Error::BadEnvName { name: name.into() });
    }
    let quoted = shlex::try_quote(value).map_err(|_| Error::BadEnvValue { name: name.into() })?;
    out.push_str("export ");
    out.push_str(name);
    out.push('=');
    out.push_str(&quoted);
    out.push('\n');
    Ok(())
}

/// Checks a remote path: absolute, no control characters, no `..` components.
pub(crate) fn checked_remote_path(path: &str) -> Result<String> {
    let ok = path.starts_with('/')
        && !path.chars().any(char::is_control)
        && !path.split('/').any(|part| part == "..");
    if ok {
        quote(path).ok_or_else(|| Error::BadRemotePath { path: path.into() })
    } else {
        Err(Error::BadRemotePath { path: path.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for name in [
            "GITHUB_TOKEN",
            "aws_secret_access_key",
            "DB_PASSWORD",
            "API_KEY",
            "ssh_key",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["UBUNTU_VERSION", "NVIDIA_DRIVER_BRANCH", "DEBIAN_FRONTEND"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn env_names_are_checked() {
        assert!(valid_env_name("_A1"));
        assert!(!valid_env_name("1A"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
        let env = BTreeMap::from([("A B".to_string(), "x".to_string())]);
        assert!(matches!(export_lines(&env), Err(Error::BadEnvName { .. })));
        let env = BTreeMap::from([("A".to_string(), "x\0y".to_string())]);
        assert!(matches!(export_lines(&env), Err(Error::BadEnvValue { .. })));
    }

    #[test]
    fn export_lines_round_trip_through_a_real_shell() {
        let nasty = "it's \"quoted\" $HOME `id` \\ back\nnew line\t* ; & |";
        let env = BTreeMap::from([
            ("NASTY".to_string(), nasty.to_string()),
            ("EMPTY".to_string(), String::new()),
        ]);
        let script = format!(
            "{}printf '%s|%s' \"$NASTY\" \"$EMPTY\"",
            export_lines(&env).unwrap()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{nasty}|"));
    }

    #[test]
    fn remote_paths() {
        assert_eq!(checked_remote_path("/tmp/a b").unwrap(), "'/tmp/a b'");
        assert!(checked_remote_path("tmp/x").is_err());
        assert!(checked_remote_path("/tmp/../etc").is_err());
        assert!(checked_remote_path("/tmp/x\ny").is_err());
    }
}
