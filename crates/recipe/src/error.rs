//! Errors and located diagnostics.

use std::fmt;
use std::path::PathBuf;

use crate::model::StepId;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a recipe or looking things up in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The recipe file could not be read.
    #[error("cannot read recipe {}", path.display())]
    Read {
        /// The recipe file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The recipe was read but has one or more problems, each located in the file.
    #[error("{}", invalid_summary(path, diagnostics))]
    Invalid {
        /// The recipe file.
        path: PathBuf,
        /// Every problem found, in file order (never empty).
        diagnostics: Vec<Diagnostic>,
    },
    /// A `--var` argument is not of the form `key=value`.
    #[error("`{arg}` is not of the form name=value ({reason})")]
    BadVarOverride {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An `IMGBAKE_VAR_<name>` environment variable that cannot be used.
    #[error("environment variable {name}: {reason}")]
    BadEnvVar {
        /// The environment variable's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `--secret-file` argument is not of the form `NAME=PATH`.
    #[error("--secret-file `{arg}` is not of the form NAME=PATH ({reason})")]
    BadSecretFileArg {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `--secret-file` names a secret that no recipe being built lists.
    #[error("--secret-file {name}: no recipe lists a secret `{name}`")]
    UnknownSecretFile {
        /// The secret name given.
        name: String,
        /// The secrets the recipes list.
        known: Vec<String>,
    },
    /// A secret the recipe lists has no value: its environment variable is unset and no
    /// `--secret-file` names it.
    #[error("secret {name} (listed in {}) is not set", recipe.display())]
    SecretNotSet {
        /// The secret's name.
        name: String,
        /// The recipe listing it.
        recipe: PathBuf,
    },
    /// A secret's value cannot be used (empty, not UTF-8, or holding a NUL byte). The value
    /// itself is never part of the message.
    #[error("secret {name} from {from}: {reason}")]
    BadSecretValue {
        /// The secret's name.
        name: String,
        /// Where the value came from: "the environment" or the file.
        from: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `--secret-file` could not be read.
    #[error("cannot read secret {name} from {}", path.display())]
    SecretFile {
        /// The secret's name.
        name: String,
        /// The file given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A string that is not a step id (one or two digits).
    #[error("`{input}` is not a step id")]
    BadStepId {
        /// The string as given.
        input: String,
    },
    /// A step id was asked for that the recipe does not have.
    #[error("{}", no_such_step(id, valid))]
    NoSuchStep {
        /// The id asked for.
        id: String,
        /// The ids the recipe has, in order.
        valid: Vec<StepId>,
    },
}

impl Error {
    /// How to fix the error, when there is one thing to say (for `try: …` lines).
    /// For [`Error::Invalid`] each diagnostic carries its own [`Diagnostic::hint`].
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Read { .. } => Some(
                "check the path; recipes are YAML files such as recipes/nvidia-fw1.yaml".into(),
            ),
            Error::Invalid { diagnostics, .. } => match diagnostics.as_slice() {
                [only] => only.hint.clone(),
                _ => None,
            },
            Error::BadVarOverride { .. } => {
                Some("write --var name=value, e.g. --var nvidia_driver_branch=580".into())
            }
            Error::BadEnvVar { .. } => Some(
                "name it IMGBAKE_VAR_<var> with the var's name as in the recipe, e.g. IMGBAKE_VAR_ubuntu_version=24.04, or unset it".into(),
            ),
            Error::BadSecretFileArg { .. } => Some(
                "write --secret-file NAME=PATH, e.g. --secret-file GITHUB_TOKEN=/run/secrets/github-token".into(),
            ),
            Error::UnknownSecretFile { known, .. } if known.is_empty() => {
                Some("the recipes list no `secrets:`; drop the --secret-file".into())
            }
            Error::UnknownSecretFile { known, .. } => {
                Some(format!("the recipes' secrets are: {}", known.join(", ")))
            }
            Error::SecretNotSet { name, .. } => Some(format!(
                "export {name} in imgbake's environment, or pass --secret-file {name}=PATH (never --var: the command line is visible to every user)"
            )),
            Error::BadSecretValue { name, .. } => Some(format!(
                "set {name} to the secret's text (a file's one trailing newline is dropped)"
            )),
            Error::SecretFile { name, .. } => Some(format!(
                "check the path and its permissions, or set {name} in the environment instead"
            )),
            Error::BadStepId { .. } => {
                Some("a step id is the two-digit prefix of the step's script, e.g. 04".into())
            }
            Error::NoSuchStep { valid, .. } => Some(format!(
                "use one of the recipe's step ids: {}",
                join_ids(valid)
            )),
        }
    }
}

fn join_ids(ids: &[StepId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_such_step(id: &str, valid: &[StepId]) -> String {
    if valid.is_empty() {
        format!("no step `{id}`: the recipe has no steps")
    } else {
        format!(
            "no step `{id}` (the recipe's steps are {})",
            join_ids(valid)
        )
    }
}

fn invalid_summary(path: &std::path::Path, diagnostics: &[Diagnostic]) -> String {
    match diagnostics {
        [] => format!("{} is invalid", path.display()),
        [only] => only.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more problems)", rest.len()),
    }
}

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

/// What kind of problem a [`Diagnostic`] reports (stable, for tests and tooling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiagnosticKind {
    /// The file is not valid YAML.
    Syntax,
    /// A key the schema does not know.
    UnknownKey,
    /// A required key is missing.
    MissingKey,
    /// A key appears twice in one mapping.
    DuplicateKey,
    /// A value of the wrong shape (a list where a single value belongs, a number for a bool…).
    WrongType,
    /// A value of the right shape but not allowed (zero cpus, unknown firmware…).
    BadValue,
    /// A size such as `8G` could not be read.
    BadSize,
    /// A duration such as `45m` could not be read.
    BadDuration,
    /// A step's script does not exist or cannot be read.
    MissingScript,
    /// A step's file name does not start with a two-digit id.
    BadStepName,
    /// Two steps have the same id.
    DuplicateStepId,
    /// Step ids are not in ascending order.
    StepIdOrder,
    /// A `{{var}}` names a variable the recipe does not define.
    UndefinedVar,
    /// A `secrets:` entry that is not an environment variable name, is listed twice, or
    /// clashes with a var or a step's `env` key.
    BadSecret,
    /// A `--var` names one of the recipe's secrets (secrets never come from the command line).
    SecretOnCommandLine,
    /// A `{{` without `}}`, or a `{{…}}` that does not hold a var name.
    BadTemplate,
    /// A `--var` names a variable the recipe does not define.
    UnknownVarOverride,
    /// A variable name is not lower_snake_case.
    BadVarName,
    /// `ubuntu_version` is not in the codename table and `ubuntu_codename` is not set.
    UnknownUbuntuVersion,
    /// Two vars contradict each other (`ubuntu_codename` not the codename of `ubuntu_version`).
    VarConflict,
    /// A checksum is neither `sha256:<hex>` nor `file:<sums location>`.
    BadChecksum,
    /// A URL or location cannot be used.
    BadUrl,
}

impl DiagnosticKind {
    /// A stable snake_case name (for `--json` output and tooling).
    pub fn as_str(self) -> &'static str {
        match self {
            DiagnosticKind::Syntax => "syntax",
            DiagnosticKind::UnknownKey => "unknown_key",
            DiagnosticKind::MissingKey => "missing_key",
            DiagnosticKind::DuplicateKey => "duplicate_key",
            DiagnosticKind::WrongType => "wrong_type",
            DiagnosticKind::BadValue => "bad_value",
            DiagnosticKind::BadSize => "bad_size",
            DiagnosticKind::BadDuration => "bad_duration",
            DiagnosticKind::MissingScript => "missing_script",
            DiagnosticKind::BadStepName => "bad_step_name",
            DiagnosticKind::DuplicateStepId => "duplicate_step_id",
            DiagnosticKind::StepIdOrder => "step_id_order",
            DiagnosticKind::UndefinedVar => "undefined_var",
            DiagnosticKind::BadSecret => "bad_secret",
            DiagnosticKind::SecretOnCommandLine => "secret_on_command_line",
            DiagnosticKind::BadTemplate => "bad_template",
            DiagnosticKind::UnknownVarOverride => "unknown_var_override",
            DiagnosticKind::BadVarName => "bad_var_name",
            DiagnosticKind::UnknownUbuntuVersion => "unknown_ubuntu_version",
            DiagnosticKind::VarConflict => "var_conflict",
            DiagnosticKind::BadChecksum => "bad_checksum",
            DiagnosticKind::BadUrl => "bad_url",
        }
    }
}

/// One located problem in a recipe: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The recipe file.
    pub file: PathBuf,
    /// Where in the file.
    pub position: Position,
    /// The kind of problem.
    pub kind: DiagnosticKind,
    /// What is wrong (lower case, no location).
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The offending source line with a caret under the problem, ready to print.
    pub snippet: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.position.line,
            self.position.column,
            self.message
        )
    }
}
