//! Variables: `--var` overrides, `{{var}}` templates, env names, and which scripts use a var.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::error::Error;

/// A `--var key=value` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarOverride {
    /// The variable name.
    pub key: String,
    /// Its new value (may be empty).
    pub value: String,
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
        if !is_var_name(key) {
            return Err(bad("names are lower_snake_case"));
        }
        Ok(VarOverride {
            key: key.to_owned(),
            value: value.to_owned(),
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
        let o: VarOverride = "x=a=b".parse().unwrap();
        assert_eq!(o.value, "a=b");
        assert!("x".parse::<VarOverride>().is_err());
        assert!("=x".parse::<VarOverride>().is_err());
        assert!("Bad-Name=x".parse::<VarOverride>().is_err());
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
