//! Variables: `--var` and `IMGBAKE_VAR_<name>` overrides, where each value came from,
//! `{{var}}` templates, env names, and which scripts use a var.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The prefix of environment variables that set recipe vars (as Packer's `PKR_VAR_`).
pub const ENV_VAR_PREFIX: &str = "IMGBAKE_VAR_";

/// Where a resolved var's value came from. Precedence, lowest first: the recipe (or a derived
/// default), then the environment, then `--var`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VarSource {
    /// The recipe's `vars:`.
    Recipe,
    /// Computed from another var (`ubuntu_codename` from `ubuntu_version`).
    Derived,
    /// An `IMGBAKE_VAR_<name>` environment variable.
    Env,
    /// A `--var name=value` on the command line.
    Cli,
}

impl VarSource {
    /// A stable lower-case name: `recipe`, `derived`, `env` or `cli` (for `--json`).
    pub fn as_str(self) -> &'static str {
        match self {
            VarSource::Recipe => "recipe",
            VarSource::Derived => "derived",
            VarSource::Env => "env",
            VarSource::Cli => "cli",
        }
    }
}

impl fmt::Display for VarSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A var set from outside the recipe: a `--var key=value` (parsed with [`str::parse`]) or an
/// `IMGBAKE_VAR_<name>` environment variable (from [`env_overrides`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarOverride {
    /// The variable name.
    pub key: String,
    /// Its new value (may be empty).
    pub value: String,
    /// [`VarSource::Cli`] or [`VarSource::Env`]. A `--var` for a var the recipe does not have
    /// is an error; an environment variable for one is ignored (the environment is shared by
    /// every recipe) and listed in [`crate::Recipe::ignored_env`].
    pub source: VarSource,
    /// For [`VarSource::Env`], the environment variable's name as it was set.
    pub env_name: Option<String>,
}

impl VarOverride {
    /// How a user would write this override, for messages: `--var k=v` or `IMGBAKE_VAR_k=v`.
    pub fn as_written(&self) -> String {
        match &self.env_name {
            Some(name) => format!("{name}={}", self.value),
            None => format!("--var {}={}", self.key, self.value),
        }
    }
}

/// The recipe-var overrides in an environment: every `IMGBAKE_VAR_<name>=value`, where
/// `<name>` is the var's name as written in the recipe (`IMGBAKE_VAR_ubuntu_version`) or
/// upper-cased (`IMGBAKE_VAR_UBUNTU_VERSION`). Pass `std::env::vars_os()`; tests pass a map.
///
/// Returned sorted by var name. Errors: a name after the prefix that is neither form, a
/// non-UTF-8 value, or both spellings of one var set to different values.
pub fn env_overrides<K, V>(env: impl IntoIterator<Item = (K, V)>) -> Result<Vec<VarOverride>, Error>
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut found: BTreeMap<String, VarOverride> = BTreeMap::new();
    for (name, value) in env {
        let (name, value) = (name.as_ref(), value.as_ref());
        let Some(name) = name.to_str() else {
            if name
                .as_encoded_bytes()
                .starts_with(ENV_VAR_PREFIX.as_bytes())
            {
                return Err(bad_env(
                    &name.to_string_lossy(),
                    "the name is not UTF-8".into(),
                ));
            }
            continue;
        };
        let Some(suffix) = name.strip_prefix(ENV_VAR_PREFIX) else {
            continue;
        };
        let key = if is_var_name(suffix) {
            suffix.to_owned()
        } else if is_var_name(&suffix.to_ascii_lowercase()) && suffix == suffix.to_ascii_uppercase()
        {
            suffix.to_ascii_lowercase()
        } else {
            return Err(bad_env(
                name,
                format!(
                    "`{suffix}` is not a var name (write it as in the recipe, lower_snake_case, or all upper case)"
                ),
            ));
        };
        let Some(value) = value.to_str() else {
            return Err(bad_env(name, "the value is not UTF-8".into()));
        };
        if let Some(earlier) = found.get(&key) {
            if earlier.value != value {
                return Err(bad_env(
                    name,
                    format!(
                        "it sets `{key}` to `{value}` but {} sets it to `{}`",
                        earlier.env_name.as_deref().unwrap_or_default(),
                        earlier.value
                    ),
                ));
            }
            continue;
        }
        found.insert(
            key.clone(),
            VarOverride {
                key,
                value: value.to_owned(),
                source: VarSource::Env,
                env_name: Some(name.to_owned()),
            },
        );
    }
    Ok(found.into_values().collect())
}

fn bad_env(name: &str, reason: String) -> Error {
    Error::BadEnvVar {
        name: name.to_owned(),
        reason,
    }
}

impl FromStr for VarOverride {
    type Err = Error;
    fn from_str(arg: &str) -> Result<Self, Error> {
        let bad = |reason| Error::BadVarOverride {
            arg: arg.to_owned(),
            reason,
        };
        let (key, value) = arg.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(bad("empty name"));
        }
        // Any environment-variable-like name passes here, so that resolving the recipe can
        // tell `--var GITHUB_TOKEN=…` for a secret apart from a mistyped var.
        if !is_env_name(key) {
            return Err(bad("names are lower_snake_case"));
        }
        Ok(VarOverride {
            key: key.to_owned(),
            value: value.to_owned(),
            source: VarSource::Cli,
            env_name: None,
        })
    }
}

/// Whether `name` is a valid variable name: lower_snake_case, starting with a letter.
pub fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// Whether `name` can be an environment variable name for a step (`[A-Za-z_][A-Za-z0-9_]*`).
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | 'A'..='Z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The environment variable a recipe var is given to scripts as: its name upper-cased
/// (`nvidia_driver_branch` → `NVIDIA_DRIVER_BRANCH`).
pub fn env_name(var: &str) -> String {
    var.to_ascii_uppercase()
}

/// A problem inside one `{{…}}` of a string value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TemplateProblem {
    /// `{{name}}` where `name` is not defined. `token` is the full `{{…}}` text.
    Undefined { name: String, token: String },
    /// `{{` with no closing `}}`.
    Unterminated { token: String },
    /// `{{…}}` whose inside is not a var name.
    BadName { token: String },
}

/// Replaces every `{{name}}` (spaces inside the braces allowed) with the var's value. Values
/// are inserted literally (they are not expanded again). Returns every problem found.
pub(crate) fn expand(
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, Vec<TemplateProblem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            problems.push(TemplateProblem::Unterminated {
                token: rest[open..].to_owned(),
            });
            rest = "";
            break;
        };
        let token = &rest[open..open + 2 + close + 2];
        let name = after[..close].trim();
        if !is_var_name(name) {
            problems.push(TemplateProblem::BadName {
                token: token.to_owned(),
            });
        } else if let Some(value) = vars.get(name) {
            out.push_str(value);
        } else {
            problems.push(TemplateProblem::Undefined {
                name: name.to_owned(),
                token: token.to_owned(),
            });
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Whether a script refers to environment variable `name` as `$NAME` or `${NAME…}`.
///
/// This is what decides which vars a step's checkpoint key covers. It is deliberately a plain
/// text scan: a mention in a comment counts too (a needless rebuild, never a stale one).
pub fn script_references(script: &[u8], name: &str) -> bool {
    let name = name.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while let Some(pos) = script[i..].iter().position(|&b| b == b'$') {
        let start = i + pos + 1;
        let (body, braced) = match script.get(start) {
            Some(b'{') => (start + 1, true),
            _ => (start, false),
        };
        if script[body..].starts_with(name) {
            let next = script.get(body + name.len()).copied();
            let ends = match next {
                None => !braced,
                Some(b) => !is_ident(b),
            };
            if ends {
                return true;
            }
        }
        i = start;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("codename".to_owned(), "jammy".to_owned()),
            ("branch".to_owned(), "565".to_owned()),
        ])
    }

    #[test]
    fn expands_with_and_without_spaces() {
        assert_eq!(
            expand("a/{{codename}}/{{ branch }}-x", &vars()).unwrap(),
            "a/jammy/565-x"
        );
        assert_eq!(expand("plain", &vars()).unwrap(), "plain");
        assert_eq!(expand("{{branch}}{{branch}}", &vars()).unwrap(), "565565");
    }

    #[test]
    fn reports_every_problem() {
        let problems = expand("{{nope}} {{Bad-Name}} {{branch", &vars()).unwrap_err();
        assert_eq!(
            problems,
            vec![
                TemplateProblem::Undefined {
                    name: "nope".into(),
                    token: "{{nope}}".into()
                },
                TemplateProblem::BadName {
                    token: "{{Bad-Name}}".into()
                },
                TemplateProblem::Unterminated {
                    token: "{{branch".into()
                },
            ]
        );
    }

    #[test]
    fn var_overrides_parse() {
        let o: VarOverride = "nvidia_driver_branch=570".parse().unwrap();
        assert_eq!(
            (o.key.as_str(), o.value.as_str()),
            ("nvidia_driver_branch", "570")
        );
        assert_eq!(
            (o.source, o.as_written().as_str()),
            (VarSource::Cli, "--var nvidia_driver_branch=570")
        );
        let o: VarOverride = "x=a=b".parse().unwrap();
        assert_eq!(o.value, "a=b");
        assert!("x".parse::<VarOverride>().is_err());
        assert!("=x".parse::<VarOverride>().is_err());
        assert!("Bad-Name=x".parse::<VarOverride>().is_err());
    }

    #[test]
    fn env_overrides_read_both_spellings_and_ignore_other_vars() {
        let env = [
            ("PATH", "/usr/bin"),
            ("IMGBAKE_VAR_ubuntu_version", "24.04"),
            ("IMGBAKE_VAR_NVIDIA_DRIVER_BRANCH", "580"),
            ("IMGBAKE_VARX", "1"),
            ("IMGBAKE_VAR_empty", ""),
        ];
        let got = env_overrides(env).unwrap();
        let got: Vec<(&str, &str, VarSource, Option<&str>)> = got
            .iter()
            .map(|o| {
                (
                    o.key.as_str(),
                    o.value.as_str(),
                    o.source,
                    o.env_name.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("empty", "", VarSource::Env, Some("IMGBAKE_VAR_empty")),
                (
                    "nvidia_driver_branch",
                    "580",
                    VarSource::Env,
                    Some("IMGBAKE_VAR_NVIDIA_DRIVER_BRANCH")
                ),
                (
                    "ubuntu_version",
                    "24.04",
                    VarSource::Env,
                    Some("IMGBAKE_VAR_ubuntu_version")
                ),
            ]
        );
        assert!(
            env_overrides(Vec::<(String, String)>::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn env_overrides_reject_bad_names_and_conflicts() {
        let err = env_overrides([("IMGBAKE_VAR_Ubuntu_Version", "24.04")]).unwrap_err();
        assert!(
            err.to_string().contains("IMGBAKE_VAR_Ubuntu_Version"),
            "{err}"
        );
        assert!(env_overrides([("IMGBAKE_VAR_", "x")]).is_err());
        let err = env_overrides([
            ("IMGBAKE_VAR_ubuntu_version", "24.04"),
            ("IMGBAKE_VAR_UBUNTU_VERSION", "22.04"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("sets `ubuntu_version`"), "{err}");
        // The same value under both spellings is not a conflict.
        let same = env_overrides([
            ("IMGBAKE_VAR_ubuntu_version", "24.04"),
            ("IMGBAKE_VAR_UBUNTU_VERSION", "24.04"),
        ])
        .unwrap();
        assert_eq!(same.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn env_overrides_reject_non_utf8_values() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let env = [(
            OsString::from("IMGBAKE_VAR_x"),
            OsString::from_vec(vec![0xff]),
        )];
        assert!(env_overrides(env).is_err());
        // A non-UTF-8 variable without the prefix is none of our business.
        let env = [(OsString::from_vec(vec![b'A', 0xff]), OsString::from("1"))];
        assert!(env_overrides(env).unwrap().is_empty());
    }

    #[test]
    fn finds_references() {
        let s = b"echo $BRANCH ${BRANCH} ${BRANCH:-1} \"$BRANCH\"";
        assert!(script_references(s, "BRANCH"));
        assert!(script_references(b"x=${BRANCH}", "BRANCH"));
        assert!(script_references(b"x=$BRANCH", "BRANCH"));
        assert!(script_references(b"x=${BRANCH:-565}", "BRANCH"));
        assert!(!script_references(b"x=$BRANCHES", "BRANCH"));
        assert!(!script_references(b"x=${BRANCH_X}", "BRANCH"));
        assert!(!script_references(b"BRANCH=1", "BRANCH"));
        assert!(!script_references(b"x=${BRANCH", "BRANCH"));
        assert!(!script_references(b"$", "BRANCH"));
    }

    #[test]
    fn env_names_are_upper_case() {
        assert_eq!(env_name("nvidia_driver_branch"), "NVIDIA_DRIVER_BRANCH");
        assert!(is_var_name("ubuntu_version"));
        assert!(!is_var_name("Ubuntu"));
        assert!(!is_var_name("1x"));
        assert!(!is_var_name(""));
    }
}
