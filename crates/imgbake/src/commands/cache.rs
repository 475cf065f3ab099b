//! `imgbake cache ls|gc|rm`: what the cache holds, and removing what is no longer wanted.
//!
//! The cache root (`--cache-dir`, `IMGBAKE_CACHE_DIR`, default `$XDG_CACHE_HOME/imgbake`) holds
//! `base/` (verified base images, [`fetch::BaseCache`]) and `checkpoints/` (per-step qcow2
//! layers, [`pipeline::cache`]). Space is reported as allocated blocks: images are
//! sparse, and a layer holds only its step's writes while naming its backing by path, so summing
//! the files counts shared backing once.
//!
//! `gc` and `rm` take the store's lock exclusively and refuse while a build holds it. Their
//! `--dry-run` prints the checkpoint store's own plan (through [`pipeline::cache`]), the same plan
//! the real run applies, so the preview can never disagree with it.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use indicatif::HumanBytes;
use pipeline::cache::{LayerInfo, Removal as StoreRemoval};
use recipe::CacheKey;
use serde::Serialize;

use crate::cli::VarArgs;
use crate::output::Output;
use crate::report::{CliError, ExitStatus, exit_status_help, stdout_err};

pub const LONG_ABOUT: &str = "\
Show and clean imgbake's cache: the per-step checkpoints of earlier builds and the verified \
base images.

The cache is --cache-dir, else IMGBAKE_CACHE_DIR, else $XDG_CACHE_HOME/imgbake (~/.cache/imgbake): \
base images in base/, checkpoints in checkpoints/. Sizes are the space really used: sparse \
files count their allocated blocks, and a checkpoint layer holds only what its step wrote, \
backed by the layer before it, so shared backing is counted once.

gc and rm need the cache to themselves: they refuse while a build is running.";

pub const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    What is cached, and how much space it really takes:\n",
    "        imgbake cache ls\n",
    "\n",
    "    See what gc would remove, then remove it:\n",
    "        imgbake cache gc --keep 1 --older-than 14d --dry-run\n",
    "        imgbake cache gc --keep 1 --older-than 14d\n",
    "\n",
    "    Drop the checkpoints today's recipes no longer produce (edited steps, new base):\n",
    "        imgbake cache gc recipes/gpu-ready.yaml recipes/nvidia-fw1.yaml\n",
    "\n",
    "    Forget every checkpoint of one recipe:\n",
    "        imgbake cache rm ubuntu-2204-nvidia-565-firmware1\n",
    "\n",
    exit_status_help!(),
);

/// `imgbake cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The cache root (holding base/ and checkpoints/) [default: $XDG_CACHE_HOME/imgbake]
    #[arg(long, env = "IMGBAKE_CACHE_DIR", value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: CacheCommand,
}

/// The `cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List checkpoints and base images with their size, age and recipe/step, and the total
    /// space used
    Ls(LsArgs),
    /// Remove checkpoints by rule (and every checkpoint built on a removed one)
    #[command(group(ArgGroup::new("rule").required(true).multiple(true).args(["keep", "older_than", "recipes"])))]
    Gc(GcArgs),
    /// Remove every checkpoint of the named recipes
    Rm(RmArgs),
}

/// `imgbake cache ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print one JSON document instead of tables
    #[arg(long)]
    pub json: bool,
}

/// `imgbake cache gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Recipes as they are today: their checkpoints that today's recipe no longer produces
    /// (an edited step, a new base image, changed vars) are removed; other recipes' are kept
    #[arg(value_name = "RECIPE")]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Keep only the newest N checkpoints of each recipe step
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Remove checkpoints older than this (e.g. 7d, 12h, 2w)
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Show what would be removed; remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Print one JSON document instead of text
    #[arg(long)]
    pub json: bool,
}

/// `imgbake cache rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Recipe names (the `name:` of the recipe, as `cache ls` shows it)
    #[arg(required = true, value_name = "RECIPE_NAME")]
    pub recipes: Vec<String>,
    /// Show what would be removed; remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Print one JSON document instead of text
    #[arg(long)]
    pub json: bool,
}

/// A checkpoint as `ls --json` prints it.
#[derive(Debug, Serialize)]
struct CheckpointRow {
    recipe: String,
    step_id: String,
    step_name: String,
    key: String,
    parent: Option<String>,
    root: String,
    path: PathBuf,
    size: u64,
    /// The layer file and its saved VM states.
    allocated: u64,
    /// Of which the saved VM states (0: none).
    vm_state_allocated: u64,
    created_unix: u64,
    age_secs: u64,
}

impl From<&LayerInfo> for CheckpointRow {
    fn from(layer: &LayerInfo) -> Self {
        let m = &layer.meta;
        CheckpointRow {
            recipe: m.recipe.clone(),
            step_id: m.step_id.clone(),
            step_name: m.step_name.clone(),
            key: m.key.to_string(),
            parent: m.parent.as_ref().map(ToString::to_string),
            root: m.root.to_string(),
            path: layer.path.clone(),
            size: m.size,
            allocated: layer.allocated,
            vm_state_allocated: layer.state_allocated,
            created_unix: m.created_unix,
            age_secs: layer.age_secs,
        }
    }
}

/// A base image as `ls --json` prints it.
#[derive(Debug, Serialize)]
struct BaseRow {
    sha256: String,
    path: PathBuf,
    size: u64,
    allocated: u64,
    source: Option<String>,
    fetched_at: Option<String>,
}

/// An uncompressed copy of a base (what builds boot on) as `ls --json` prints it.
#[derive(Debug, Serialize)]
struct PlainRow {
    /// The digest of the base it copies.
    base_sha256: String,
    path: PathBuf,
    size: u64,
    allocated: u64,
    source: Option<String>,
}

/// The space used.
#[derive(Debug, Default, Serialize)]
struct Total {
    /// Bytes allocated on disk by the whole cache.
    allocated: u64,
    /// Of which the checkpoint store (layer files, records, layers still being written).
    checkpoints_allocated: u64,
    /// Of which the base images and their uncompressed copies.
    base_allocated: u64,
    /// Apparent size of the same files, for comparison.
    apparent: u64,
    checkpoints: usize,
    /// Saved VM states (counted in `checkpoints_allocated`).
    vm_states: usize,
    base_images: usize,
    plain_copies: usize,
}

#[derive(Debug, Serialize)]
struct Listing {
    cache_dir: PathBuf,
    checkpoints: Vec<CheckpointRow>,
    base_images: Vec<BaseRow>,
    plain_copies: Vec<PlainRow>,
    total: Total,
}

/// What `gc`/`rm` did (or would do).
#[derive(Debug, Serialize)]
struct Removal {
    dry_run: bool,
    removed: Vec<CheckpointRow>,
    freed: u64,
    /// Incomplete layers that `gc` swept away (cut off by a crash or Ctrl-C).
    discarded: Vec<String>,
    /// Uncompressed base copies removed: their base is not in the cache and no checkpoint is
    /// backed by them any more (a build makes one again when it needs it).
    plain_copies_removed: Vec<PathBuf>,
    /// Local base files (given by path in a recipe) that are gone: their hash records were
    /// removed (`gc` only).
    local_records_removed: Vec<PathBuf>,
}

/// Runs `imgbake cache`.
pub fn run(args: &CacheArgs, out: &Output) -> Result<ExitStatus, CliError> {
    let root = crate::commands::cache_dir(args.cache_dir.as_deref())?;
    let result = match &args.command {
        CacheCommand::Ls(ls) => list(&root).and_then(|l| print_listing(&l, ls.json, out)),
        CacheCommand::Gc(gc) => collect(&root, gc, out),
        CacheCommand::Rm(rm) => remove(&root, rm, out),
    };
    result.map_err(|failure| match failure {
        Failure::Cli(e) => e,
        Failure::Store(e) => CliError::CacheStore(e),
        Failure::Base(e) => CliError::Fetch(e),
        e @ Failure::Keys { .. } => CliError::GcKeys(Box::new(e)),
    })
}

/// The ways a cache command fails; the store's and fetch's errors are printed with their chain.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Cli(CliError),
    #[error(transparent)]
    Store(pipeline::cache::StoreError),
    #[error(transparent)]
    Base(fetch::Error),
    /// The base digest of a recipe given to `gc` is unknown, so its keys are too.
    #[error("cannot tell which checkpoints {} makes today: its base image's digest is unknown", recipe.display())]
    Keys {
        recipe: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Self {
        Failure::Cli(e)
    }
}
impl From<recipe::Error> for Failure {
    fn from(e: recipe::Error) -> Self {
        Failure::Cli(CliError::Recipe(e))
    }
}
impl From<pipeline::cache::StoreError> for Failure {
    fn from(e: pipeline::cache::StoreError) -> Self {
        Failure::Store(e)
    }
}
impl From<fetch::Error> for Failure {
    fn from(e: fetch::Error) -> Self {
        Failure::Base(e)
    }
}

fn allocated(path: &Path) -> (u64, u64) {
    std::fs::metadata(path).map_or((0, 0), |m| (m.blocks() * 512, m.len()))
}

/// Everything in the cache. Creates nothing: a cache that does not exist lists as empty.
fn list(root: &Path) -> Result<Listing, Failure> {
    let mut listing = Listing {
        cache_dir: root.to_path_buf(),
        checkpoints: Vec::new(),
        base_images: Vec::new(),
        plain_copies: Vec::new(),
        total: Total::default(),
    };
    let (layers, usage) = pipeline::cache::list(root)?;
    listing.checkpoints = layers.iter().map(CheckpointRow::from).collect();
    listing.total.checkpoints_allocated = usage.allocated;
    listing.total.vm_states = usage.states;
    listing.total.apparent += usage.apparent;
    let base_dir = root.join("base");
    if base_dir.is_dir() {
        for entry in fetch::BaseCache::open(&base_dir)?.list()? {
            let (allocated, apparent) = allocated(&entry.path);
            listing.total.base_allocated += allocated;
            listing.total.apparent += apparent;
            listing.base_images.push(BaseRow {
                sha256: entry.digest.to_hex(),
                path: entry.path,
                size: entry.size,
                allocated,
                source: entry.source,
                fetched_at: entry.fetched_at,
            });
        }
        for copy in fetch::BaseCache::open(&base_dir)?.plain_copies()? {
            let (allocated, apparent) = allocated(&copy.path);
            listing.total.base_allocated += allocated;
            listing.total.apparent += apparent;
            listing.plain_copies.push(PlainRow {
                base_sha256: copy.base.to_hex(),
                path: copy.path,
                size: copy.size,
                allocated,
                source: copy.source,
            });
        }
    }
    let t = &mut listing.total;
    t.allocated = t.checkpoints_allocated + t.base_allocated;
    t.checkpoints = listing.checkpoints.len();
    t.base_images = listing.base_images.len();
    t.plain_copies = listing.plain_copies.len();
    Ok(listing)
}

fn print_listing(listing: &Listing, json: bool, out: &Output) -> Result<ExitStatus, Failure> {
    let mut stdout = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, listing).map_err(CliError::Json)?;
        writeln!(stdout).map_err(stdout_err)?;
        return Ok(ExitStatus::Success);
    }
    let text = render_listing(listing, out);
    stdout.write_all(text.as_bytes()).map_err(stdout_err)?;
    Ok(ExitStatus::Success)
}

fn render_listing(listing: &Listing, out: &Output) -> String {
    let paint = out.stdout();
    let mut s = String::new();
    let store = listing.cache_dir.join("checkpoints");
    if listing.checkpoints.is_empty() {
        s.push_str(&format!("no checkpoints in {}\n", store.display()));
    } else {
        s.push_str(&format!(
            "{} in {}\n",
            paint.bold("checkpoints"),
            store.display()
        ));
        s.push_str(&checkpoint_table(&listing.checkpoints));
    }
    s.push('\n');
    let base = listing.cache_dir.join("base");
    if listing.base_images.is_empty() {
        s.push_str(&format!("no base images in {}\n", base.display()));
    } else {
        s.push_str(&format!(
            "{} in {}\n",
            paint.bold("base images"),
            base.display()
        ));
        let mut rows = vec![[
            "SHA256".to_owned(),
            "SIZE".into(),
            "ALLOCATED".into(),
            "FETCHED".into(),
            "SOURCE".into(),
        ]];
        for b in &listing.base_images {
            rows.push([
                b.sha256[..12].to_owned(),
                HumanBytes(b.size).to_string(),
                HumanBytes(b.allocated).to_string(),
                b.fetched_at.clone().unwrap_or_else(|| "-".into()),
                b.source.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        s.push_str(&columns(&rows, &[false, true, true, false, false]));
    }
    if !listing.plain_copies.is_empty() {
        s.push_str(&format!(
            "{} (what builds boot on)\n",
            paint.bold("uncompressed copies")
        ));
        let mut rows = vec![[
            "BASE".to_owned(),
            "SIZE".into(),
            "ALLOCATED".into(),
            "SOURCE".into(),
        ]];
        for c in &listing.plain_copies {
            rows.push([
                c.base_sha256[..12].to_owned(),
                HumanBytes(c.size).to_string(),
                HumanBytes(c.allocated).to_string(),
                c.source.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        s.push_str(&columns(&rows, &[false, true, true, false]));
    }
    let t = &listing.total;
    let states = match t.vm_states {
        0 => String::new(),
        n => format!(" + {n} {}", plural(n, "vm state", "vm states")),
    };
    s.push_str(&format!(
        "\n{} {} on disk: checkpoints {} ({} {}{states}), base images {} ({} {}, {} uncompressed {})\n",
        paint.bold("total"),
        HumanBytes(t.allocated),
        HumanBytes(t.checkpoints_allocated),
        t.checkpoints,
        plural(t.checkpoints, "layer", "layers"),
        HumanBytes(t.base_allocated),
        t.base_images,
        plural(t.base_images, "image", "images"),
        t.plain_copies,
        plural(t.plain_copies, "copy", "copies"),
    ));
    s.push_str(&format!(
        "  (allocated blocks; the files' apparent size is {}; local base files outside the cache are not counted)\n",
        HumanBytes(t.apparent)
    ));
    s
}

fn checkpoint_table(rows_in: &[CheckpointRow]) -> String {
    let mut rows = vec![[
        "RECIPE".to_owned(),
        "STEP".into(),
        "KEY".into(),
        "ALLOCATED".into(),
        "AGE".into(),
    ]];
    for c in rows_in {
        rows.push([
            c.recipe.clone(),
            c.step_name.clone(),
            c.key[..c.key.len().min(12)].to_owned(),
            HumanBytes(c.allocated).to_string(),
            age(c.age_secs),
        ]);
    }
    columns(&rows, &[false, false, false, true, true])
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// Rows as aligned columns, indented and separated by two spaces; `right[i]` right-aligns
/// column i.
fn columns<const N: usize>(rows: &[[String; N]], right: &[bool; N]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            line.push_str("  ");
            if right[i] {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < N {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// A short age: `45s`, `12m`, `5h`, `3d`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn collect(root: &Path, args: &GcArgs, out: &Output) -> Result<ExitStatus, Failure> {
    // Every recipe must load, and its keys be known, before anything is removed.
    let mut recipes = Vec::new();
    for path in &args.recipes {
        let recipe = recipe::Recipe::load(path, &args.vars.vars)?;
        let chain = live_chain(&recipe, root)?;
        recipes.push((recipe.name, chain));
    }
    let request = pipeline::cache::GcRequest {
        keep_per_step: args.keep,
        older_than: args.older_than,
        live_recipes: recipes,
        dry_run: args.dry_run,
    };
    let mut removal = removal(pipeline::cache::gc(root, &request)?);
    removal.plain_copies_removed = sweep_plain_copies(root, &removal)?;
    removal.local_records_removed = sweep_local_records(root, args.dry_run)?;
    print_removal(&removal, args.json, out)?;
    Ok(ExitStatus::Success)
}

/// The checkpoint keys a build of `recipe` makes today, computed as `pipeline::bake` does:
/// the base image's digest (from the recipe, else the cache, without touching the network) and
/// the seed fingerprint.
fn live_chain(recipe: &recipe::Recipe, root: &Path) -> Result<BTreeSet<CacheKey>, Failure> {
    let runtime = crate::commands::runtime()?;
    let plan = runtime
        .block_on(pipeline::BuildPlan::offline(recipe, root))
        .map_err(|e| Failure::Keys {
            recipe: recipe.path.clone(),
            // The fetch error itself says why the digest is unknown.
            source: match e {
                pipeline::Error::Fetch { source } => Box::new(source),
                other => Box::new(other),
            },
        })?;
    Ok(plan.step_keys().into_iter().collect())
}

fn remove(root: &Path, args: &RmArgs, out: &Output) -> Result<ExitStatus, Failure> {
    let store_dir = root.join("checkpoints");
    let found = pipeline::cache::remove_recipes(root, &args.recipes, args.dry_run)?;
    let known = found.known;
    let unknown: Vec<&String> = args
        .recipes
        .iter()
        .filter(|r| !known.contains(*r))
        .collect();
    let mut removal = removal(found.removal);
    removal.plain_copies_removed = sweep_plain_copies(root, &removal)?;
    print_removal(&removal, args.json, out)?;
    if unknown.is_empty() {
        return Ok(ExitStatus::Success);
    }
    let names: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
    let mut stderr = io::stderr().lock();
    let paint = out.stderr();
    let _ = writeln!(
        stderr,
        "{} no checkpoints of {} `{}` in {}",
        paint.error("error:"),
        plural(names.len(), "recipe", "recipes"),
        names.join("`, `"),
        store_dir.display()
    );
    let hint = if known.is_empty() {
        "the cache has no checkpoints at all; `imgbake cache ls` shows what it holds".to_owned()
    } else {
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        format!("recipes with checkpoints: {}", known.join(", "))
    };
    let _ = writeln!(stderr, "{} {hint}", paint.hint("try:"));
    Ok(ExitStatus::Failure)
}

fn removal(store: StoreRemoval) -> Removal {
    Removal {
        dry_run: store.dry_run,
        freed: store.freed,
        removed: store.removed.iter().map(CheckpointRow::from).collect(),
        discarded: store.discarded,
        plain_copies_removed: Vec::new(),
        local_records_removed: Vec::new(),
    }
}

/// After `gc`: forgets the last good hash of local base files that are gone (a small record
/// each, kept so an unchanged local base is not hashed on every build).
fn sweep_local_records(root: &Path, dry_run: bool) -> Result<Vec<PathBuf>, Failure> {
    let base_dir = root.join("base");
    if !base_dir.is_dir() {
        return Ok(Vec::new());
    }
    Ok(fetch::BaseCache::open(&base_dir)?.sweep_local_records(dry_run)?)
}

/// After `gc`/`rm`: removes (or, in a dry run, names) the uncompressed base copies that nothing
/// needs any more: the base is not in the cache (removed, or a local file outside it) and no
/// checkpoint left is backed by the copy. A build makes a copy again when it needs one.
fn sweep_plain_copies(root: &Path, removal: &Removal) -> Result<Vec<PathBuf>, Failure> {
    let base_dir = root.join("base");
    if !base_dir.is_dir() {
        return Ok(Vec::new());
    }
    let cache = fetch::BaseCache::open(&base_dir)?;
    let copies = cache.plain_copies()?;
    if copies.is_empty() {
        return Ok(Vec::new());
    }
    let gone: BTreeSet<&str> = removal.removed.iter().map(|c| c.key.as_str()).collect();
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let backing: BTreeSet<PathBuf> = pipeline::cache::list(root)?
        .0
        .iter()
        // A dry run removed nothing yet: leave out what it would remove.
        .filter(|l| !gone.contains(l.meta.key.to_string().as_str()))
        .map(|l| absolute(&l.meta.backing))
        .collect();
    // A build holds the store from before it makes its copy until the end: with the store to
    // itself, this sweep cannot take a copy a starting build is about to boot. While one runs,
    // the copies stay (a later gc removes them).
    let Some(_no_build) = pipeline::cache::no_build_running(root)? else {
        return Ok(Vec::new());
    };
    let mut swept = Vec::new();
    for copy in copies {
        if cache.get(&copy.base)?.is_some() || backing.contains(&absolute(&copy.path)) {
            continue;
        }
        if !removal.dry_run {
            cache.remove_plain(&copy.base)?;
        }
        swept.push(copy.path);
    }
    Ok(swept)
}

fn print_removal(removal: &Removal, json: bool, out: &Output) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, removal).map_err(CliError::Json)?;
        writeln!(stdout).map_err(stdout_err)?;
        return Ok(());
    }
    let mut s = String::new();
    for d in &removal.discarded {
        s.push_str(&format!("threw away: {d}\n"));
    }
    let n = removal.removed.len();
    let layers = plural(n, "checkpoint", "checkpoints");
    let tense = |would: &'static str, did: &'static str| if removal.dry_run { would } else { did };
    for path in &removal.plain_copies_removed {
        s.push_str(&format!(
            "{} the uncompressed base copy {} (no checkpoint uses it; builds make it again)\n",
            tense("would remove", "removed"),
            path.display()
        ));
    }
    for path in &removal.local_records_removed {
        s.push_str(&format!(
            "{} the recorded hash of {} (the file is gone)\n",
            tense("would forget", "forgot"),
            path.display()
        ));
    }
    if n == 0 {
        s.push_str(tense("nothing would be removed\n", "nothing to remove\n"));
    } else {
        s.push_str(&format!(
            "{} {n} {layers}, {} {}:\n",
            out.stdout().bold(tense("would remove", "removed")),
            tense("freeing", "freed"),
            HumanBytes(removal.freed)
        ));
        s.push_str(&checkpoint_table(&removal.removed));
        if removal.dry_run {
            s.push_str("(dry run: nothing was removed)\n");
        }
    }
    stdout.write_all(s.as_bytes()).map_err(stdout_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(60), "1m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(3 * 86_400 + 5), "3d");
    }

    #[test]
    fn columns_align_and_right_align_numbers() {
        let rows = [
            ["A".to_owned(), "SIZE".to_owned()],
            ["long-name".to_owned(), "1".to_owned()],
        ];
        assert_eq!(
            columns(&rows, &[false, true]),
            "  A          SIZE\n  long-name     1\n"
        );
    }
}
