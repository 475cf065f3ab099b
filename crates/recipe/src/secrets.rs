//! Secrets: the recipe lists their names (`secrets:`); their values come from imgbake's
//! environment (a variable of the same name) or from a file (`--secret-file NAME=PATH`), never
//! from the command line or the recipe. Values are [`SecretString`]s: their `Debug` prints
//! `[REDACTED]`, they have no `Display`, they are not `Serialize`, and they are zeroed on drop,
//! so a value cannot reach a log, a manifest or an error message by accident.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;

use secrecy::zeroize::Zeroize;
pub use secrecy::{ExposeSecret, SecretString};

use crate::vars::is_env_name;
use crate::{Error, Recipe, Result};

/// The values of a recipe's secrets, by name (from [`secret_values`]).
pub type SecretValues = BTreeMap<String, SecretString>;

/// A `--secret-file NAME=PATH`: the secret `NAME`'s value is the file's content, its one
/// trailing newline (`\n` or `\r\n`) dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// The secret's name, as the recipe lists it.
    pub name: String,
    /// The file holding the value.
    pub path: PathBuf,
}

impl FromStr for SecretFile {
    type Err = Error;
    fn from_str(arg: &str) -> Result<Self> {
        let bad = |reason| Error::BadSecretFileArg {
            arg: arg.to_owned(),
            reason,
        };
        let (name, path) = arg.split_once('=').ok_or_else(|| bad("no `=`"))?;
        if !is_env_name(name) {
            return Err(bad("NAME is an environment variable name"));
        }
        if path.is_empty() {
            return Err(bad("empty PATH"));
        }
        Ok(SecretFile {
            name: name.to_owned(),
            path: PathBuf::from(path),
        })
    }
}

/// Every `--secret-file` must name a secret one of `recipes` lists (a typo would otherwise
/// silently leave the secret to the environment).
pub fn check_secret_files<'r>(
    files: &[SecretFile],
    recipes: impl IntoIterator<Item = &'r Recipe>,
) -> Result<()> {
    let mut known: Vec<String> = recipes
        .into_iter()
        .flat_map(|r| r.secrets.iter().cloned())
        .collect();
    known.sort();
    known.dedup();
    match files.iter().find(|f| !known.contains(&f.name)) {
        Some(f) => Err(Error::UnknownSecretFile {
            name: f.name.clone(),
            known,
        }),
        None => Ok(()),
    }
}

/// The value of each of `recipe`'s secrets: from the last `--secret-file` naming it, else from
/// the environment variable of its name (`env` looks one up: pass
/// `|name| std::env::var_os(name)`; tests pass a map). An unset secret, an unreadable file, an
/// empty value (what CI systems give for a secret that is not configured), a value that is not
/// UTF-8 or holds a NUL byte: each is an error naming the secret, never showing its value.
pub fn secret_values(
    recipe: &Recipe,
    files: &[SecretFile],
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<SecretValues> {
    let mut values = SecretValues::new();
    for name in &recipe.secrets {
        let value = match files.iter().rfind(|f| &f.name == name) {
            Some(file) => from_file(file)?,
            None => {
                let raw = env(name).ok_or_else(|| Error::SecretNotSet {
                    name: name.clone(),
                    recipe: recipe.path.clone(),
                })?;
                let text = raw
                    .into_string()
                    .map_err(|_| bad_value(name, "the environment", "it is not UTF-8"))?;
                checked(name, "the environment", text)?
            }
        };
        values.insert(name.clone(), value);
    }
    Ok(values)
}

fn bad_value(name: &str, from: &str, reason: &'static str) -> Error {
    Error::BadSecretValue {
        name: name.to_owned(),
        from: from.to_owned(),
        reason,
    }
}

fn from_file(file: &SecretFile) -> Result<SecretString> {
    let mut bytes = std::fs::read(&file.path).map_err(|source| Error::SecretFile {
        name: file.name.clone(),
        path: file.path.clone(),
        source,
    })?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    let from = file.path.display().to_string();
    match String::from_utf8(bytes) {
        Ok(text) => checked(&file.name, &from, text),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(bad_value(&file.name, &from, "it is not UTF-8"))
        }
    }
}

fn checked(name: &str, from: &str, text: String) -> Result<SecretString> {
    let reason = if text.is_empty() {
        Some("it is empty")
    } else if text.contains('\0') {
        Some("it holds a NUL byte, which no environment variable can")
    } else {
        None
    };
    let value = SecretString::from(text);
    match reason {
        Some(reason) => Err(bad_value(name, from, reason)),
        None => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn recipe_with(secrets: &[&str]) -> Recipe {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("01-a.sh"), "echo $GITHUB_TOKEN\n").unwrap();
        let yaml = format!(
            "name: s\nsecrets: [{}]\nbase: {{ url: a.img, checksum: \"sha256:{}\" }}\nvm: {{ disk_size: 2G }}\nsteps: [01-a.sh]\n",
            secrets.join(", "),
            "a".repeat(64)
        );
        Recipe::from_source(&dir.path().join("r.yaml"), &yaml, &[]).unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn values_come_from_the_environment_or_a_file_which_wins() {
        let recipe = recipe_with(&["GITHUB_TOKEN", "API_PASS"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "from-file\r\n").unwrap();
        let files = [SecretFile {
            name: "API_PASS".into(),
            path: file,
        }];
        let values = secret_values(
            &recipe,
            &files,
            env(&[("GITHUB_TOKEN", "ghp_123456"), ("API_PASS", "from-env")]),
        )
        .unwrap();
        assert_eq!(values["GITHUB_TOKEN"].expose_secret(), "ghp_123456");
        // One trailing line ending is dropped, and the file beats the environment.
        assert_eq!(values["API_PASS"].expose_secret(), "from-file");
        // Debug never shows a value.
        let debug = format!("{values:?}");
        assert!(
            !debug.contains("ghp_123456") && !debug.contains("from-file"),
            "{debug}"
        );
        assert!(debug.contains("GITHUB_TOKEN"), "{debug}");
    }

    #[test]
    fn missing_and_bad_values_name_the_secret_not_the_value() {
        let recipe = recipe_with(&["GITHUB_TOKEN"]);
        let err = secret_values(&recipe, &[], env(&[])).unwrap_err();
        assert!(matches!(err, Error::SecretNotSet { .. }), "{err:?}");
        assert!(err.to_string().contains("secret GITHUB_TOKEN"), "{err}");
        assert!(
            err.hint()
                .unwrap()
                .contains("--secret-file GITHUB_TOKEN=PATH")
        );

        let err = secret_values(&recipe, &[], env(&[("GITHUB_TOKEN", "")])).unwrap_err();
        assert!(err.to_string().contains("is empty") || format!("{err:?}").contains("empty"));

        let dir = tempfile::tempdir().unwrap();
        let missing = SecretFile {
            name: "GITHUB_TOKEN".into(),
            path: dir.path().join("nope"),
        };
        let err = secret_values(&recipe, &[missing], env(&[])).unwrap_err();
        assert!(matches!(err, Error::SecretFile { .. }), "{err:?}");
        assert!(err.to_string().contains("GITHUB_TOKEN"), "{err}");

        let binary = dir.path().join("bin");
        std::fs::write(&binary, b"\xffsecret-bytes").unwrap();
        let files = [SecretFile {
            name: "GITHUB_TOKEN".into(),
            path: binary,
        }];
        let err = secret_values(&recipe, &files, env(&[])).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("not UTF-8") && !text.contains("secret-bytes"),
            "{text}"
        );
    }

    #[test]
    fn secret_file_arguments_parse_and_must_name_a_listed_secret() {
        let f: SecretFile = "GITHUB_TOKEN=/run/secrets/t=x".parse().unwrap();
        assert_eq!(f.name, "GITHUB_TOKEN");
        assert_eq!(f.path, PathBuf::from("/run/secrets/t=x"));
        assert!("GITHUB_TOKEN".parse::<SecretFile>().is_err());
        assert!("BAD-NAME=/x".parse::<SecretFile>().is_err());
        assert!("X=".parse::<SecretFile>().is_err());

        let recipe = recipe_with(&["GITHUB_TOKEN"]);
        assert!(check_secret_files(std::slice::from_ref(&f), [&recipe]).is_ok());
        let typo: SecretFile = "GITHUB_TOKNE=/x".parse().unwrap();
        let err = check_secret_files(&[typo], [&recipe]).unwrap_err();
        assert!(err.to_string().contains("GITHUB_TOKNE"), "{err}");
        assert!(err.hint().unwrap().contains("GITHUB_TOKEN"));
    }
}
