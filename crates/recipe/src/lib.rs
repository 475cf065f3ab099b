//! imgbake's recipe model: parse and validate a YAML recipe, resolve its vars, list its steps
//! and compute their checkpoint keys.
//!
//! The main types:
//! - [`Recipe`] — the resolved recipe, from [`Recipe::load`] (a file) or
//!   [`Recipe::from_source`] (text already in memory);
//! - [`VarOverride`] — a `--var key=value`, or an `IMGBAKE_VAR_<name>` environment variable
//!   read by [`env_overrides`]; [`VarSource`] says where each resolved var came from
//!   ([`Recipe::var_sources`]);
//! - [`ubuntu_codename`] / [`UBUNTU_RELEASES`] — the table that derives `ubuntu_codename` from
//!   `ubuntu_version` when nothing sets the codename;
//! - [`Step`] and [`StepId`] — the ordered shell steps and their two-digit ids;
//! - [`CheckpointChain`] / [`CacheKey`] — per-step checkpoint keys ([`keys`] has the rule);
//! - [`SecretFile`], [`secret_values`] → [`SecretValues`] — the values of the recipe's
//!   `secrets:` (from the environment or `--secret-file`, never the command line), as
//!   [`SecretString`]s that cannot be printed by accident;
//! - [`Error`] — every problem; [`Error::Invalid`] carries located [`Diagnostic`]s, each with
//!   `file:line:col`, a snippet and a hint.
//!
//! Scripts see the recipe's vars as environment variables named by [`env_name`]
//! (`nvidia_driver_branch` → `NVIDIA_DRIVER_BRANCH`); see [`Recipe::step_env`]. They see
//! each secret under its own name too, but secrets travel apart from the env (see
//! [`Recipe::secrets`]).
//!
//! ```
//! use recipe::{BaseIdentity, Recipe, VarOverride};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # std::fs::create_dir(dir.path().join("scripts"))?;
//! # std::fs::write(dir.path().join("scripts/01-hello.sh"), "echo \"$GREETING\"\n")?;
//! let yaml = r#"
//! name: demo
//! vars: { greeting: hello }
//! base:
//!   url: https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img
//!   checksum: file:https://cloud-images.ubuntu.com/jammy/current/SHA256SUMS
//! vm: { disk_size: 20G }
//! steps:
//!   - scripts/01-hello.sh
//! "#;
//! let path = dir.path().join("demo.yaml");
//! let overrides = ["greeting=bonjour".parse::<VarOverride>()?];
//! let recipe = Recipe::from_source(&path, yaml, &overrides)?;
//! let step = recipe.step(&"01".parse()?)?;
//! assert_eq!(recipe.step_env(step)["GREETING"], "bonjour");
//! let keys = recipe.checkpoint_keys(&recipe.base_identity(), b"seed-v1");
//! assert_eq!(keys.steps.len(), 1);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod error;
pub mod keys;
mod load;
mod model;
mod raw;
mod resolve;
mod secrets;
mod source;
mod suggest;
mod ubuntu;
mod units;
mod vars;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The digest and key types are the workspace's `digest` crate's, re-exported so recipe users
/// need not name that crate.
pub use digest::{BadSha256, CacheKey, Sha256};
pub use error::{Diagnostic, DiagnosticKind, Error, Position, Result};
pub use keys::{BaseIdentity, CheckpointChain};
pub use model::{
    AccelChoice, Base, BaseLocation, Checksum, ExportFormat, ExportSpec, Firmware, GpuSpec,
    GpuVendor, NvidiaExpect, PayloadSpec, Step, StepId, VerifySpec, Virtualization, VmSpec,
};
pub use secrets::{
    ExposeSecret, SecretFile, SecretString, SecretValues, check_secret_files, secret_values,
};
pub use ubuntu::{
    UBUNTU_CODENAME_VAR, UBUNTU_RELEASES, UBUNTU_VERSION_VAR, derived_from, ubuntu_codename,
};
pub use units::{ByteSize, SizeError, format_duration};
pub use vars::{
    ENV_VAR_PREFIX, VarOverride, VarSource, env_name, env_overrides, is_var_name, script_references,
};

/// A resolved recipe: every `{{var}}` substituted, every value typed, every script read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The image name.
    pub name: String,
    /// The recipe file as given.
    pub path: PathBuf,
    /// The directory relative paths in the recipe are resolved against.
    pub dir: PathBuf,
    /// The vars after derivation and overrides (`--var` over `IMGBAKE_VAR_<name>` over the
    /// recipe's own value).
    pub vars: BTreeMap<String, String>,
    /// Where each of [`Recipe::vars`] came from (same keys).
    pub var_sources: BTreeMap<String, VarSource>,
    /// `IMGBAKE_VAR_…` environment variables given for vars this recipe does not have
    /// (ignored: the environment is shared by every recipe), in name order.
    pub ignored_env: Vec<String>,
    /// The base image.
    pub base: Base,
    /// The build VM.
    pub vm: VmSpec,
    /// The steps, in ascending id order.
    pub steps: Vec<Step>,
    /// What to export.
    pub export: ExportSpec,
    /// What offline verification expects.
    pub verify: VerifySpec,
    /// Facts for the region API payload.
    pub payload: PayloadSpec,
    /// `secrets:`: the names of the secrets every step gets as environment variables, in
    /// recipe order. The recipe holds names only; [`secret_values`] finds the values. A
    /// step's checkpoint key covers the names it refers to, never the values
    /// ([`keys`]).
    pub secrets: Vec<String>,
    /// `test:`: shell commands `imgbake test` runs as root in the booted image, in order;
    /// each must exit 0. Not part of any checkpoint key (they never touch the build).
    pub test: Vec<String>,
}

impl Recipe {
    /// Reads and resolves the recipe at `path`, applying `overrides` to its vars: environment
    /// ones ([`env_overrides`]) first, then `--var` ones, whatever their order in the slice.
    pub fn load(path: &Path, overrides: &[VarOverride]) -> Result<Recipe> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        match std::str::from_utf8(&bytes) {
            Ok(text) => Recipe::from_source(path, text, overrides),
            Err(e) => {
                let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
                let src = source::Source { path, text: valid };
                let spot = src.spot_at_byte(valid.len(), 1);
                Err(Error::Invalid {
                    path: path.to_path_buf(),
                    diagnostics: vec![src.diag(
                        DiagnosticKind::Syntax,
                        spot,
                        "the recipe is not UTF-8 text",
                        Some("save the file as UTF-8".into()),
                    )],
                })
            }
        }
    }

    /// Resolves recipe text as if read from `path` (scripts are read relative to its
    /// directory).
    pub fn from_source(path: &Path, text: &str, overrides: &[VarOverride]) -> Result<Recipe> {
        let src = source::Source { path, text };
        let invalid = |diagnostics| Error::Invalid {
            path: path.to_path_buf(),
            diagnostics,
        };
        let raw = load::parse(&src).map_err(|d| invalid(vec![d]))?;
        resolve::resolve(raw, &src, overrides).map_err(invalid)
    }

    /// The step with id `id`, or [`Error::NoSuchStep`] listing the valid ids.
    pub fn step(&self, id: &StepId) -> Result<&Step> {
        self.steps
            .iter()
            .find(|s| s.id == *id)
            .ok_or_else(|| Error::NoSuchStep {
                id: id.to_string(),
                valid: self.step_ids(),
            })
    }

    /// Like [`Recipe::step`] for an id typed by a user (`4` or `04`).
    pub fn step_by_arg(&self, arg: &str) -> Result<&Step> {
        let id: StepId = arg.parse().map_err(|_| Error::NoSuchStep {
            id: arg.to_owned(),
            valid: self.step_ids(),
        })?;
        self.step(&id)
    }

    /// The step ids, in order.
    pub fn step_ids(&self) -> Vec<StepId> {
        self.steps.iter().map(|s| s.id).collect()
    }

    /// The environment a step's script runs with (besides what the runner itself sets, such
    /// as `IMGBAKE_BUILD_USER`): every recipe var under its [`env_name`], then the step's own
    /// `env`, which wins on a clash.
    pub fn step_env(&self, step: &Step) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self
            .vars
            .iter()
            .map(|(k, v)| (env_name(k), v.clone()))
            .collect();
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}
