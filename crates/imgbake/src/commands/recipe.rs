//! `imgbake recipe`: build images from recipes.

use std::path::PathBuf;

use clap::Args;

use crate::cli::{AccelArg, VarArgs};
use crate::output::Output;
use crate::render::{BakeRenderer, RenderMode};
use crate::report::{CliError, ExitStatus, exit_status_help};

const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    Build the NVIDIA image (reuses checkpoints of earlier builds):\n",
    "        imgbake recipe recipes/nvidia-fw1.yaml\n",
    "\n",
    "    You fixed step 04: rerun from it, skipping 01-03:\n",
    "        imgbake recipe recipes/nvidia-fw1.yaml --resume-from 04\n",
    "\n",
    "    A recipe with `secrets: [GITHUB_TOKEN]`: from the environment, or from a file:\n",
    "        GITHUB_TOKEN=\"$(cat token)\" imgbake recipe recipes/private.yaml\n",
    "        imgbake recipe recipes/private.yaml --secret-file GITHUB_TOKEN=/run/secrets/gh\n",
    "\n",
    "    Two images at once, CI-friendly output:\n",
    "        imgbake recipe recipes/gpu-ready.yaml recipes/nvidia-fw1.yaml --jobs 2 --json\n",
    "\n",
    "OUTPUT (in --output, default output/<recipe name>/):\n",
    "    <name>.qcow2, <name>.raw (sparse), SHA256SUMS, manifest.json, api-payload.json,\n",
    "    run.json, logs/NN-<step>.log, logs/serial.log (and logs/test-serial.log with --test).\n",
    "    The RAW is verified before any output gets its final name; an image that fails is\n",
    "    left as <name>.raw.failed with <name>.raw.failed.report.json, and no SHA256SUMS.\n",
    "    One build at a time per directory (.imgbake.lock); a second fails at once.\n",
    "\n",
    "CTRL-C, SIGTERM, SIGHUP:\n",
    "    The first signal stops the running step and powers the guest off; checkpoints of\n",
    "    finished steps are kept, so a rerun resumes. A second signal kills QEMU at once.\n",
    "\n",
    exit_status_help!(),
);

/// Arguments of `imgbake recipe`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct RecipeArgs {
    /// The recipes to build
    #[arg(required = true, value_name = "RECIPE")]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Read the value of the recipe's secret NAME from PATH (its one trailing newline dropped)
    /// instead of the environment variable NAME (repeatable). Secrets are never taken from the
    /// command line: --var refuses them
    #[arg(long = "secret-file", value_name = "NAME=PATH")]
    pub secret_files: Vec<recipe::SecretFile>,
    /// Accelerator: auto uses KVM if /dev/kvm is writable (and restarts once under TCG if KVM
    /// fails); overrides the recipe's vm.accel
    #[arg(long, value_enum, value_name = "ACCEL")]
    pub accel: Option<AccelArg>,
    /// Output directory (with several recipes, each gets <DIR>/<recipe name>/)
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Cache directory for base images and checkpoints [default: $XDG_CACHE_HOME/imgbake]
    #[arg(long, env = "IMGBAKE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Start from the checkpoint after the step before NN, then run NN and everything after
    #[arg(long, value_name = "NN", conflicts_with = "no_cache")]
    pub resume_from: Option<String>,
    /// Do not reuse checkpoints (new ones are still saved)
    #[arg(long)]
    pub no_cache: bool,
    /// Disk checkpoints only: do not save the VM state with each checkpoint, and boot instead
    /// of restoring a saved one
    #[arg(long)]
    pub no_vm_state: bool,
    /// Use only cached base images; never touch the network
    #[arg(long)]
    pub offline: bool,
    /// When a step fails, keep the VM running and print the ssh command; Ctrl-C ends it
    #[arg(long)]
    pub keep_on_failure: bool,
    /// Print one JSON object per event on stdout instead of the progress display
    #[arg(long)]
    pub json: bool,
    /// After export, boot the image as a new machine and check it (as `imgbake test`)
    #[arg(long)]
    pub test: bool,
    /// Build this many recipes at once
    #[arg(long, short, default_value_t = 1, value_name = "N")]
    pub jobs: usize,
}

/// Runs `imgbake recipe`.
pub fn run(args: &RecipeArgs, out: &Output) -> Result<ExitStatus, CliError> {
    let mut recipes = Vec::new();
    for path in &args.recipes {
        let mut recipe = recipe::Recipe::load(path, &args.vars.vars)?;
        if let Some(accel) = args.accel {
            recipe.vm.accel = accel.into();
        }
        recipes.push(recipe);
    }
    recipe::check_secret_files(&args.secret_files, &recipes)?;
    let mut secrets = Vec::with_capacity(recipes.len());
    for recipe in &recipes {
        secrets.push(recipe::secret_values(recipe, &args.secret_files, |name| {
            std::env::var_os(name)
        })?);
    }
    let several = recipes.len() > 1;
    let mut seen = std::collections::BTreeSet::new();
    for recipe in &recipes {
        if several && !seen.insert(recipe.name.clone()) {
            return Err(CliError::DuplicateRecipeName(recipe.name.clone()));
        }
    }
    let start = match (&args.resume_from, args.no_cache) {
        (Some(_), _) if several => return Err(CliError::ResumeWithSeveralRecipes),
        (Some(id), _) => {
            let step = recipes[0].step_by_arg(id)?;
            pipeline::StartRequest::ResumeFrom(step.id)
        }
        (None, true) => pipeline::StartRequest::Fresh,
        (None, false) => pipeline::StartRequest::Reuse,
    };
    let cache_dir = crate::commands::cache_dir(args.cache_dir.as_deref())?;
    let requests: Vec<pipeline::BakeRequest> = recipes
        .into_iter()
        .zip(secrets)
        .map(|(recipe, secrets)| {
            let output_dir = match (&args.output, several) {
                (Some(dir), false) => dir.clone(),
                (Some(dir), true) => dir.join(&recipe.name),
                (None, _) => PathBuf::from("output").join(&recipe.name),
            };
            let mut request = pipeline::BakeRequest::new(recipe, output_dir, cache_dir.clone());
            request.secrets = secrets;
            request.start = start.clone();
            request.offline = args.offline;
            request.keep_on_failure = args.keep_on_failure;
            request.vm_state = !args.no_vm_state;
            request.test_after_export = args.test;
            request
        })
        .collect();

    let runtime = crate::commands::runtime()?;
    let mode = if args.json {
        RenderMode::Json
    } else {
        RenderMode::Human
    };
    let results = runtime.block_on(bake_all(requests, args.jobs.max(1), mode, *out));
    let mut worst = ExitStatus::Success;
    for result in results {
        let status = match result {
            Ok(summary) if !summary.verify.passed => ExitStatus::VerifyFailed,
            Ok(pipeline::BakeSummary {
                test: Some(test), ..
            }) if !test.passed => {
                let failed = test.failed().into_iter().map(str::to_owned).collect();
                crate::report::report(&CliError::TestFailed { failed }, out)
            }
            Ok(_) => ExitStatus::Success,
            Err(err) => crate::report::report(&CliError::Bake(Box::new(err)), out),
        };
        if status != ExitStatus::Success && worst == ExitStatus::Success {
            worst = status;
        }
    }
    Ok(worst)
}

async fn bake_all(
    requests: Vec<pipeline::BakeRequest>,
    jobs: usize,
    mode: RenderMode,
    out: Output,
) -> Vec<pipeline::Result<pipeline::BakeSummary>> {
    let signals = crate::signals::Signals::listen(crate::signals::announce_build);
    let cancel = signals.cancel();
    let limit = tokio::sync::Semaphore::new(jobs);
    let several = requests.len() > 1;
    // Polled in this task rather than spawned: the pipeline's future is not `Send` (its boot
    // step holds an async closure), and concurrency, not parallelism, is what --jobs needs.
    let builds = requests.into_iter().map(|request| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let renderer = BakeRenderer::new(request.recipe.name.clone(), several, mode, out);
        let render = tokio::spawn(renderer.run(rx));
        let cancel = cancel.clone();
        let limit = &limit;
        async move {
            let _permit = limit.acquire().await;
            let result = pipeline::bake(request, tx, cancel).await;
            let _ = render.await;
            if let (RenderMode::Human, Ok(summary)) = (mode, &result) {
                crate::render::print_summary(summary, out);
            }
            result
        }
    });
    futures::future::join_all(builds).await
}
