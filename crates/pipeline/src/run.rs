//! `run.json`: what a build did, step by step.

use serde::Serialize;

/// One step's record.
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    /// Step id.
    pub id: String,
    /// Step name.
    pub name: String,
    /// sha256 of the script.
    pub script_sha256: String,
    /// Its checkpoint key.
    pub key: String,
    /// `ran`, `reused` or `failed`.
    pub status: &'static str,
    /// Seconds it took (0 when reused).
    pub duration_secs: f64,
    /// Its exit code (0 when reused).
    pub exit_code: Option<u32>,
    /// Attempts it took.
    pub attempts: u32,
}

/// The whole build.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunRecord {
    /// Recipe name.
    pub recipe: String,
    /// imgbake's version.
    pub imgbake_version: String,
    /// `kvm` or `tcg` (empty when no VM was needed).
    pub accel: String,
    /// Steps in order.
    pub steps: Vec<StepRecord>,
    /// Seconds from QEMU start until SSH answered.
    pub ssh_ready_secs: Option<f64>,
    /// Seconds from QEMU start until the first step started.
    pub first_step_secs: Option<f64>,
    /// The guest's own uptime when cloud-init finished (from the serial log).
    pub guest_cloud_init_finished_uptime_secs: Option<f64>,
    /// Wall time of the whole build.
    pub total_secs: f64,
}
