//! The command line (clap derive). Each command's arguments live next to its code in
//! `commands/<name>.rs`; add a command by adding a variant here and a line in
//! `commands::run`.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands::recipe::RecipeArgs;
use crate::commands::{
    export::ExportArgs, plan::PlanArgs, validate::ValidateArgs, verify::VerifyArgs,
};
use crate::report::exit_status_help;

const LONG_ABOUT: &str = "\
imgbake bakes VM disk images for GPU clouds. It boots an Ubuntu cloud image under QEMU, \
feeds it a cloud-init seed it writes itself, runs a recipe's ordered shell steps over SSH, \
checkpoints the disk after each step, exports a sparse RAW image and verifies it offline.

A recipe is a YAML file naming the base image, the build VM, the steps and what to check; \
docs/recipes.md describes the format.";

const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    Check that the recipes are well-formed:\n",
    "        imgbake validate recipes/*.yaml\n",
    "\n",
    "    Show what a build would do, for Ubuntu 24.04:\n",
    "        imgbake plan recipes/nvidia-fw1.yaml --var ubuntu_version=24.04\n",
    "\n",
    exit_status_help!(),
);

/// Bake VM disk images for GPU clouds.
#[derive(Debug, Parser)]
#[command(
    name = "imgbake",
    version,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); IMGBAKE_LOG, a tracing
    /// filter such as `imgbake=debug`, overrides it
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// When to colour output: auto colours a terminal unless NO_COLOR is set
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true, value_name = "WHEN")]
    pub color: ColorChoice,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when the stream is a terminal and NO_COLOR is unset.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build images from recipes: boot, run the steps over SSH, checkpoint, export, verify
    Recipe(RecipeArgs),
    /// Check recipes for errors without building anything
    #[command(long_about = crate::commands::validate::LONG_ABOUT, after_long_help = crate::commands::validate::AFTER_HELP)]
    Validate(ValidateArgs),
    /// Show what a build of a recipe would do: base, VM, steps and checkpoint keys
    #[command(long_about = crate::commands::plan::LONG_ABOUT, after_long_help = crate::commands::plan::AFTER_HELP)]
    Plan(PlanArgs),
    /// Fetch recipes' base images into the verified cache (resumable, checked against sha256)
    Fetch(crate::commands::fetch::FetchArgs),
    /// Verify an exported image offline (GPU firmware option, driver, initramfs, hygiene), or a GPU host with --live
    Verify(VerifyArgs),
    /// Export a disk to sparse RAW (and compressed qcow2) with SHA256SUMS
    Export(ExportArgs),
    /// Upload an image to S3-compatible storage (multipart, parallel, skips identical objects)
    #[command(long_about = crate::commands::upload::LONG_ABOUT, after_long_help = crate::commands::upload::AFTER_HELP)]
    Upload(crate::commands::upload::UploadArgs),
    /// Register an uploaded image with the Nscale region API
    #[command(long_about = crate::commands::register::LONG_ABOUT, after_long_help = crate::commands::register::AFTER_HELP)]
    Register(crate::commands::register::RegisterArgs),
    /// Show and clean the cache: checkpoints and base images (ls, gc, rm)
    #[command(long_about = crate::commands::cache::LONG_ABOUT, after_long_help = crate::commands::cache::AFTER_HELP)]
    Cache(crate::commands::cache::CacheArgs),
    /// Boot a recipe's base image with a fresh overlay and the seed, for poking around over ssh
    #[command(long_about = crate::commands::boot::LONG_ABOUT, after_long_help = crate::commands::boot::AFTER_HELP)]
    Boot(crate::commands::boot::BootArgs),
    /// Boot an exported image as a new machine (fresh seed, throwaway overlay) and check it
    #[command(long_about = crate::commands::test::LONG_ABOUT, after_long_help = crate::commands::test::AFTER_HELP)]
    Test(crate::commands::test::TestArgs),
}

/// `--var NAME=VALUE` and the `IMGBAKE_VAR_<name>` environment variables, shared by every
/// command that loads a recipe.
///
/// clap parses the flags into [`VarFlags`]; parsing then adds the environment's overrides,
/// so every command gets both through `vars` (the recipe crate applies `--var` over the
/// environment whatever the order).
#[derive(Debug, Clone)]
pub struct VarArgs {
    /// The environment's overrides, then the command line's.
    pub vars: Vec<recipe::VarOverride>,
}

/// The `--var` flags as clap sees them.
#[derive(Debug, Clone, Args)]
pub struct VarFlags {
    /// Override a recipe var (repeatable); NAME must be a var the recipe defines, and scripts
    /// see it upper-cased (nvidia_driver_branch → NVIDIA_DRIVER_BRANCH). A var can also be set
    /// in the environment as IMGBAKE_VAR_<name> (e.g. IMGBAKE_VAR_ubuntu_version=24.04);
    /// --var wins over the environment, which wins over the recipe
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<recipe::VarOverride>,
}

impl VarArgs {
    /// `flags` plus the overrides in `env` (the process environment, or a map in tests).
    fn with_env<K, V>(
        flags: VarFlags,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<VarArgs, clap::Error>
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let mut vars = recipe::env_overrides(env).map_err(|e| {
            let hint = e.hint().map(|h| format!("\ntry: {h}")).unwrap_or_default();
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{e}{hint}\n"),
            )
        })?;
        vars.extend(flags.vars);
        Ok(VarArgs { vars })
    }
}

impl clap::FromArgMatches for VarArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        VarArgs::with_env(VarFlags::from_arg_matches(matches)?, std::env::vars_os())
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = VarArgs::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for VarArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        VarFlags::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        VarFlags::augment_args_for_update(cmd)
    }
}

/// `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    /// KVM if /dev/kvm is writable, else TCG; a KVM failure before the first step restarts
    /// the VM under TCG
    Auto,
    /// KVM only (fails at once if KVM cannot run the guest)
    Kvm,
    /// TCG software emulation (slow, works everywhere)
    Tcg,
}

impl From<AccelArg> for recipe::AccelChoice {
    fn from(accel: AccelArg) -> Self {
        match accel {
            AccelArg::Auto => recipe::AccelChoice::Auto,
            AccelArg::Kvm => recipe::AccelChoice::Kvm,
            AccelArg::Tcg => recipe::AccelChoice::Tcg,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_args_put_the_environment_before_the_flags() {
        let flags = VarFlags {
            vars: vec!["nvidia_driver_branch=565".parse().unwrap()],
        };
        let env = [
            ("IMGBAKE_VAR_nvidia_driver_branch", "580"),
            ("TERM", "dumb"),
        ];
        let args = VarArgs::with_env(flags, env).unwrap();
        let got: Vec<(recipe::VarSource, &str)> = args
            .vars
            .iter()
            .map(|o| (o.source, o.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (recipe::VarSource::Env, "580"),
                (recipe::VarSource::Cli, "565")
            ]
        );
    }

    #[test]
    fn a_bad_environment_variable_is_a_usage_error_with_a_hint() {
        let flags = VarFlags { vars: Vec::new() };
        let err = VarArgs::with_env(flags, [("IMGBAKE_VAR_Bad-Name", "1")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("IMGBAKE_VAR_Bad-Name"), "{text}");
        assert!(text.contains("try: "), "{text}");
    }
}
