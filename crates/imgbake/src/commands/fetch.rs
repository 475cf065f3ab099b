//! `imgbake fetch RECIPE...`: fetch each recipe's base image into the content-addressed cache,
//! with a progress bar (bytes, rate, ETA).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use fetch::{
    BaseCache, CachedBase, DigestOrigin, FetchEvent, FetchOptions, HashPurpose, Outcome,
    RestartReason,
};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::VarArgs;
use crate::output::Output;
use crate::report::{self, CliError, ExitStatus, exit_status_help, stdout_err};

const LONG_ABOUT: &str = "\
Fetch the base image of each RECIPE into the cache, checked against its sha256.

The expected digest comes from the recipe's `checksum:`: `sha256:<hex>`, or `file:<url>` \
naming a SHA256SUMS list, where the line for the image's file name is used (both the \
`<hex>  name` and `<hex> *name` forms). The image is streamed and hashed as it arrives, a cut \
download resumes where it stopped (HTTP Range; from zero when the server does not support \
it), and failures are retried with backoff. Only an image whose digest matches enters the \
cache; a mismatch deletes the download and names both digests.

The cache keeps one file per digest: $XDG_CACHE_HOME/imgbake/base/<sha256> (default \
~/.cache/imgbake/base), or --cache-dir. An image already there is not downloaded again (only \
the SHA256SUMS list is fetched, to learn the digest). Several imgbake processes fetching the \
same image download it once. Local bases (a path or file:// URL) are hashed where they are, \
not copied.

--offline uses only the cache; a `file:<url>` checksum is then looked up in the copy of the \
list saved when it was last fetched.

Prints one line per recipe on stdout: `ok <recipe> sha256:<digest> <path> (<how>)`.";

const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    imgbake fetch recipes/nvidia-fw1.yaml\n",
    "    imgbake fetch recipes/*.yaml --var ubuntu_version=24.04\n",
    "    imgbake fetch --offline --cache-dir /var/cache/imgbake recipes/gpu-ready.yaml\n",
    "\n",
    exit_status_help!(),
    "\n",
    "A failed fetch exits with 1 after the other recipes were tried.\n",
);

/// `imgbake fetch`.
#[derive(Debug, Args)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
pub struct FetchArgs {
    /// Recipe files whose base images to fetch
    #[arg(required = true, value_name = "RECIPE")]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Use only the cache; never touch the network
    #[arg(long)]
    pub offline: bool,
    /// Cache directory; base images live in its base/ [default: $XDG_CACHE_HOME/imgbake]
    #[arg(long, value_name = "DIR", env = "IMGBAKE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Re-hash a cached image before trusting it
    #[arg(long)]
    pub verify_cache: bool,
}

/// The fetch source for a recipe's base (the recipe crate's types mapped onto fetch's).
pub fn run(args: &FetchArgs, out: &Output) -> Result<ExitStatus, CliError> {
    // Every recipe must load before anything is downloaded.
    let recipes = args
        .recipes
        .iter()
        .map(|path| recipe::Recipe::load(path, &args.vars.vars))
        .collect::<Result<Vec<_>, _>>()?;
    let cache = BaseCache::open(super::cache_dir(args.cache_dir.as_deref())?.join("base"))?;
    let runtime = super::runtime()?;
    let opts = FetchOptions {
        offline: args.offline,
        verify_cache_hits: args.verify_cache,
        ..FetchOptions::default()
    };
    let mut stdout = std::io::stdout().lock();
    let mut failed = 0usize;
    runtime.block_on(async {
        let signals = crate::signals::Signals::listen(crate::signals::announce_nothing);
        let cancel = signals.token();
        for recipe in &recipes {
            let source = pipeline::setup::base_source(&recipe.base);
            let bar = Bar::new(&recipe.name);
            let progress = |event| bar.on(event);
            match cache.fetch(&source, &opts, &progress, cancel.clone()).await {
                Ok(base) => {
                    bar.bar.finish_and_clear();
                    let line = format!(
                        "{} {} sha256:{} {} ({})",
                        out.stdout().ok("ok"),
                        recipe.path.display(),
                        base.digest,
                        base.path.display(),
                        how(&base)
                    );
                    writeln!(stdout, "{line}").map_err(stdout_err)?;
                }
                Err(err) => {
                    bar.bar.finish_and_clear();
                    failed += 1;
                    let cancelled = matches!(err, fetch::Error::Cancelled);
                    report::report_item(&recipe.path.display().to_string(), &err.into(), out);
                    if cancelled {
                        break;
                    }
                }
            }
        }
        Ok::<_, CliError>(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(if failed > 0 {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

fn how(base: &CachedBase) -> String {
    match base.outcome {
        Outcome::CacheHit => "cached".to_owned(),
        Outcome::Downloaded { resumed_from: 0 } => format!("downloaded {}", HumanBytes(base.size)),
        Outcome::Downloaded { resumed_from } => format!(
            "downloaded {}, resumed after {}",
            HumanBytes(base.size),
            HumanBytes(resumed_from)
        ),
        Outcome::LocalFile => "local file, checked in place".to_owned(),
    }
}

/// Renders [`FetchEvent`]s as one progress bar on stderr (hidden when stderr is not a terminal).
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(name: &str) -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style("{spinner} {prefix} {msg}"));
        bar.set_prefix(name.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar { bar }
    }

    fn on(&self, event: FetchEvent) {
        let bar = &self.bar;
        match event {
            FetchEvent::DigestResolved { digest, origin } => {
                let from = match origin {
                    DigestOrigin::Inline => "recipe".to_owned(),
                    DigestOrigin::Sums { location } => location,
                    DigestOrigin::SavedSums {
                        location,
                        fetched_at,
                    } => format!(
                        "saved copy of {location} from {}",
                        fetched_at.as_deref().unwrap_or("an earlier run")
                    ),
                };
                let short = &digest.to_hex()[..16];
                tracing::info!("expecting sha256:{digest} (from {from})");
                bar.set_message(format!("expecting sha256:{short}… (from {from})"));
            }
            FetchEvent::CacheHit { .. } => bar.set_message("in the cache"),
            FetchEvent::WaitingForLock { .. } => {
                bar.set_message("waiting for another imgbake fetching the same image");
            }
            FetchEvent::Hashing {
                purpose,
                done,
                total,
            } => {
                if bar.length() != Some(total) {
                    let what = match purpose {
                        HashPurpose::LocalBase => "checking local file",
                        HashPurpose::ResumePrefix => "re-hashing partial download",
                        HashPurpose::CacheEntry => "checking cached image",
                    };
                    bar.set_style(style(
                        "{prefix} {msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
                    ));
                    bar.set_message(what);
                    bar.set_length(total);
                    bar.reset();
                }
                bar.set_position(done);
            }
            FetchEvent::DownloadStarted {
                url,
                total,
                resumed_from,
            } => {
                match total {
                    Some(total) => {
                        bar.set_style(style(
                            "{prefix} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                        ));
                        bar.set_length(total);
                    }
                    None => {
                        bar.set_style(style("{spinner} {prefix} {bytes} {binary_bytes_per_sec}"));
                        bar.unset_length();
                    }
                }
                bar.reset();
                bar.set_position(resumed_from);
                // Rate and ETA count from here, not from byte 0.
                bar.reset_eta();
                if resumed_from > 0 {
                    bar.println(format!(
                        "{}: resuming {url} after {}",
                        bar.prefix(),
                        HumanBytes(resumed_from)
                    ));
                }
            }
            FetchEvent::Downloading { done, .. } => bar.set_position(done),
            FetchEvent::Retrying {
                attempt,
                delay,
                reason,
            } => bar.println(format!(
                "{}: retry {attempt} in {:.1}s: {reason}",
                bar.prefix(),
                delay.as_secs_f64()
            )),
            FetchEvent::RestartedFromZero { reason } => {
                let why = match reason {
                    RestartReason::RangeIgnored => "the server sent the whole file",
                    RestartReason::RangeRejected => "the server rejected the range",
                    RestartReason::ResumedMismatch => "the resumed download did not match",
                };
                bar.println(format!("{}: starting over: {why}", bar.prefix()));
            }
            FetchEvent::Verified { .. } => bar.set_message("verified"),
            _ => {}
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
