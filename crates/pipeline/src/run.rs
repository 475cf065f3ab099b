//! `run.json`: what a build did, step by step. Written from one place, [`RunRecord::write`].

use std::path::Path;

use serde::Serialize;

/// How a step ended in this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// It ran and succeeded.
    Ran,
    /// Its checkpoint was reused; it did not run.
    Reused,
    /// It ran and failed.
    Failed,
}

impl StepStatus {
    /// `ran`, `reused` or `failed`, as `run.json` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Ran => "ran",
            StepStatus::Reused => "reused",
            StepStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: tables align it with `{:<7}`.
        f.pad(self.as_str())
    }
}

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
    /// How it ended.
    pub status: StepStatus,
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

impl RunRecord {
    /// Writes `<dir>/run.json` atomically. Best effort: a build is not failed for its report,
    /// so the error is returned for the caller to turn into a warning.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        digest::write_atomic(&dir.join("run.json"), &json)
    }
}
