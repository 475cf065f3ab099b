//! qemu-driver: QEMU process, QMP client, cloud-init seed ISO, accelerator choice, checkpoints.
#![warn(missing_docs)]

pub mod seed;
