//! qemu-driver: runs a guest under QEMU for imgbake and drives it over QMP.
//!
//! - [`Vm`] owns one QEMU process: [`Vm::launch`] starts it from a [`VmConfig`] (qcow2 overlay
//!   as virtio disk, read-only seed, user networking with SSH forwarded from 127.0.0.1, serial
//!   console to a file, QMP on a unix socket in a private run directory), [`Vm::shutdown`]
//!   stops it the clean way, [`Vm::kill`] and `Drop` kill it. QEMU runs in its own process
//!   group and dies with imgbake.
//! - [`Vm::wait_for_exit_or_error`] resolves as soon as the VM dies or stops for good (crash,
//!   KVM internal error, panic, I/O error) with an [`Error`] quoting QEMU's stderr and the
//!   serial console; the state itself is a [`VmState`] on a watch channel ([`Vm::status`]).
//! - [`accel`] decides between KVM and TCG and says why; [`Vm::launch_with_fallback`] restarts
//!   once under TCG when KVM fails.
//! - [`qmp::Qmp`] is the QMP client (qapi's typed commands, loosely parsed events).
//! - [`overlay`] makes qcow2 overlays with `qemu-img` (through a temp file and a rename);
//!   [`Vm::snapshot_layer`] takes a live per-step checkpoint layer ([`Layer`], [`TopImage`]).
//! - [`vmstate`]: the VM's RAM and device state saved next to a layer
//!   ([`Vm::snapshot_layer_with_state`]) and loaded instead of a boot ([`Vm::restore`]), keyed
//!   by [`StateKey`].
//! - [`args`] turns a [`VmConfig`] into QEMU's command line; [`process`] starts QEMU so that it
//!   cannot outlive imgbake.
//!
//! The cloud-init seed image the guest boots with is written by the `seed` crate; this crate
//! only attaches it read-only ([`VmConfig::seed_iso`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use qemu_driver::{AccelChoice, Vm, VmConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> qemu_driver::Result<()> {
//! qemu_driver::overlay::create("base.qcow2".as_ref(), "run/disk.qcow2".as_ref(), Some(20 << 30)).await?;
//! let mut config = VmConfig::new("demo", "run/disk.qcow2", "run/vm");
//! config.accel = AccelChoice::Tcg;
//! let vm = Vm::launch(config, CancellationToken::new()).await?;
//! println!("accelerator: {}; ssh on {}", vm.accel(), vm.ssh_addr());
//! tokio::select! {
//!     error = vm.wait_for_exit_or_error() => return Err(error),
//!     () = tokio::time::sleep(Duration::from_secs(60)) => {}
//! }
//! let stopped = vm.shutdown(Duration::from_secs(60)).await?;
//! println!("qemu exited with {} ({:?})", stopped.status, stopped.method);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod accel;
pub mod args;
mod block;
pub mod config;
mod error;
mod fallback;
mod launch;
pub mod overlay;
pub mod process;
pub mod qmp;
pub mod state;
mod state_save;
mod supervisor;
mod vm;
pub mod vmstate;

pub use accel::{Accel, AccelChoice, AccelDecision, AccelReason};
pub use block::{Layer, TopImage};
pub use config::{DiskCache, Firmware, RunPaths, SshPort, UefiFirmware, VmConfig};
pub use error::{Error, Result, Tails};
pub use state::VmState;
pub use state_save::{SaveMode, SavedState, StateSaving};
pub use supervisor::{ShutdownCause, VmStatus};
pub use vm::{StopMethod, Stopped, Vm};
pub use vmstate::{MachineProfile, StateKey};
