//! pipeline: one build of one recipe, from base image to exported, verified disk.
//!
//! [`bake`] wires the stage crates in the order data flows — `fetch` → `qemu-driver` →
//! `provisioner` (with a `checkpoint` after every step) → `exporter` — and reports progress as
//! [`BakeEvent`]s on a channel. It never prints and installs no signal handler: the binary owns
//! the terminal and maps signals onto [`Cancel`].
//!
//! Main types: [`BakeRequest`] (one build's inputs), [`BuildPlan`] (the checkpoint key chain,
//! computed once for builds, `imgbake plan` and `imgbake cache gc`), [`StartRequest`] /
//! [`StartPoint`] (reuse, resume, fresh), [`BakeEvent`], [`RunRecord`] (`run.json`),
//! [`BakeSummary`], [`Error`]. [`boot_interactive`] boots a recipe's base the way a build does,
//! for `imgbake boot`. [`test_image`] boots an exported image as a new machine and checks it
//! ([`ImageTestRequest`] → [`ImageTestReport`] of [`TestRow`]s), for `imgbake test` and
//! `imgbake recipe --test`.
//!
//! Modules, in the order a build passes through them: `plan` → `build` (fetch, reuse, the
//! [`Build`](build) context) → `boot` → `steps` → `outputs`; `events`, `run` and `setup` are
//! shared leaves.
//!
//! ```no_run
//! # async fn demo(recipe: recipe::Recipe) -> pipeline::Result<()> {
//! let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! tokio::spawn(async move { while let Some(e) = rx.recv().await { eprintln!("{e:?}") } });
//! let request = pipeline::BakeRequest::new(recipe, "output/demo".into(), "/var/cache/imgbake".into());
//! let summary = pipeline::bake(request, events, pipeline::Cancel::default()).await?;
//! println!("{}", summary.qcow2.display());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod boot;
mod build;
pub mod cache;
mod error;
mod events;
pub mod image_test;
mod making;
mod outputs;
pub mod plan;
mod resume;
mod run;
pub mod setup;
mod steps;
pub mod timing;

pub use boot::{InteractiveBoot, boot_interactive};
pub use build::{BakeRequest, BakeSummary, Cancel, bake, default_runtime_dir};
pub use error::{Error, Result, StepFailure};
pub use events::{BakeEvent, OutputStream};
pub use image_test::{
    ImageTestReport, ImageTestRequest, RowVerdict, TEST_USER, TestRow, test_image,
};
pub use plan::{
    BuildPlan, READY_STEP_ID, StartPoint, StartRequest, expectations, seed_fingerprint,
};
pub use run::{RunRecord, StepRecord, StepStatus};

/// The user the seed creates and imgbake logs in as; the seal after the last step removes it.
pub const BUILD_USER: &str = "imgbake";
