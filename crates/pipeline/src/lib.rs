//! pipeline: one build of one recipe, from base image to exported, verified disk.
//!
//! [`bake`] wires the stage crates in the order data flows — `fetch` → `qemu-driver` →
//! `provisioner` (with a `checkpoint` after every step) → `exporter` — and reports progress as
//! [`BakeEvent`]s on a channel. It never prints and installs no signal handler: the binary owns
//! the terminal and turns Ctrl-C into the [`Cancel`] tokens.
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

mod bake;
mod error;
mod events;
mod guest;
mod output;
pub mod resume;
mod run;
pub mod setup;
pub mod timing;

pub use bake::{BakeRequest, BakeSummary, Cancel, bake, seed_fingerprint};
pub use error::{Error, Result, StepFailure};
pub use events::BakeEvent;
pub use resume::StartRequest;
pub use run::{RunRecord, StepRecord};

/// The user the seed creates and imgbake logs in as; `99-cleanup` removes it.
pub const BUILD_USER: &str = "imgbake";
