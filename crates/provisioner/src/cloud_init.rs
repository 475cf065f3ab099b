//! Waiting for cloud-init and telling "finished", "finished with errors" and "never ran" apart.
//!
//! `cloud-init status --wait --format json` is run as root. The exit code is not trusted:
//! 22.4 (Debian bookworm) returns 0 or 1; 23.4+ added 2 for recoverable errors, which Ubuntu
//! and RHEL patch back to 0 on stable releases. The JSON is what counts: `status`
//! (`done`/`error`/`disabled`/`running`/`not run`/`not started`), `boot_status_code`
//! (`disabled-by-*`), `errors`, and since 23.4 `extended_status` and `recoverable_errors`.
//!
//! cloud-init 22.4's `--wait` returns as soon as any stage has recorded an error, even while
//! later stages still run. For that version an error is followed by waiting for boot to finish
//! (`systemctl is-system-running --wait`) and asking again, so steps never race cloud-init.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exec::ExitStatus;
use crate::session::GuestSession;
use crate::{Error, Result};

/// How cloud-init's run in the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloudInitOutcome {
    /// Done without errors.
    Finished,
    /// Done, but with errors or recoverable errors (warnings). Worth showing; the build goes on.
    FinishedWithErrors {
        /// The errors, one per line.
        detail: String,
    },
    /// cloud-init did not run (not installed, disabled, no datasource found). The seed was
    /// not applied; the build must stop.
    NeverRan {
        /// Why.
        detail: String,
    },
}

/// What `cloud-init status` reported, from either its JSON or its tabular (`--long`) output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct CloudInitStatus {
    /// `done`, `error`, `disabled`, `running`, `not run` (22.4) / `not started` (24.1+).
    pub status: String,
    /// 23.4+: `done`, `degraded done`, `error - done`, … Absent on older versions.
    pub extended_status: Option<String>,
    /// `enabled-by-generator`, `disabled-by-marker-file`, …
    pub boot_status_code: String,
    /// Lower-case datasource name (`nocloud`), empty or `none` when none was found.
    pub datasource: Option<String>,
    /// A description (`DataSourceNoCloud [seed=/dev/sr0]`, or the reason it is disabled).
    pub detail: String,
    /// Critical errors.
    pub errors: Vec<String>,
    /// 23.4+: recoverable errors by log level (`WARNING`, `DEPRECATED`, …).
    pub recoverable_errors: BTreeMap<String, Vec<String>>,
}

impl CloudInitStatus {
    /// Parses `cloud-init status --format json` output (any version from 22.x on).
    pub fn from_json(text: &str) -> Result<Self> {
        // Anything printed before the JSON object (there should be nothing) is skipped.
        let start = text.find('{').ok_or_else(|| parse_err("no json object"))?;
        serde_json::from_str(&text[start..]).map_err(|e| parse_err(&e.to_string()))
    }

    /// Parses the tabular output of `cloud-init status --long` (with `--wait` it starts with
    /// progress dots on their own line).
    pub fn from_tabular(text: &str) -> Result<Self> {
        let mut status = Self::default();
        let mut lines = text.lines().peekable();
        let mut seen_status = false;
        while let Some(line) = lines.next() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_string();
            match key.trim() {
                "status" => {
                    status.status = value;
                    seen_status = true;
                }
                "extended_status" => status.extended_status = Some(value),
                "boot_status_code" => status.boot_status_code = value,
                "detail" => {
                    // 22.4 prints the detail on the following line(s).
                    let mut detail = value;
                    while let Some(next) = lines.peek() {
                        if next.contains(':') && !next.starts_with(char::is_whitespace) {
                            let k = next.split_once(':').map(|(k, _)| k.trim()).unwrap_or("");
                            if ["errors", "recoverable_errors", "last_update"].contains(&k) {
                                break;
                            }
                        }
                        if !detail.is_empty() {
                            detail.push('\n');
                        }
                        detail.push_str(next.trim());
                        lines.next();
                    }
                    status.detail = detail;
                }
                "errors" => {
                    while let Some(next) = lines.peek() {
                        let Some(item) = next.trim_start().strip_prefix("- ") else {
                            break;
                        };
                        status.errors.push(item.to_string());
                        lines.next();
                    }
                }
                _ => {}
            }
        }
        if !seen_status {
            return Err(parse_err("no `status:` line"));
        }
        Ok(status)
    }

    /// Whether cloud-init is still going (or has not started yet).
    pub fn in_progress(&self) -> bool {
        matches!(self.status.as_str(), "running" | "not run" | "not started")
    }

    /// Classifies a final status.
    pub fn outcome(&self) -> CloudInitOutcome {
        let disabled = self.status == "disabled" || self.boot_status_code.starts_with("disabled");
        if disabled {
            return CloudInitOutcome::NeverRan {
                detail: format!(
                    "cloud-init is disabled ({}): {}",
                    self.boot_status_code, self.detail
                ),
            };
        }
        if matches!(self.status.as_str(), "not run" | "not started") {
            return CloudInitOutcome::NeverRan {
                detail: format!("cloud-init has not started: {}", self.detail),
            };
        }
        if self.status == "done" && matches!(self.datasource.as_deref(), Some("none")) {
            return CloudInitOutcome::NeverRan {
                detail: "cloud-init found no datasource (DataSourceNone): the seed was not read"
                    .into(),
            };
        }
        let mut lines: Vec<String> = self.errors.clone();
        for (level, messages) in &self.recoverable_errors {
            lines.extend(messages.iter().map(|m| format!("{level}: {m}")));
        }
        if self.status == "error" || !lines.is_empty() || self.status != "done" {
            if lines.is_empty() {
                let extended = self.extended_status.as_deref().unwrap_or(&self.status);
                lines.push(format!("status {extended}: {}", self.detail));
            }
            return CloudInitOutcome::FinishedWithErrors {
                detail: lines.join("\n"),
            };
        }
        CloudInitOutcome::Finished
    }
}

fn parse_err(detail: &str) -> Error {
    Error::Parse {
        what: "cloud-init status".into(),
        detail: detail.into(),
    }
}

/// How often the cheap wait looks for `result.json` (each look under TCG is a `sleep` process).
const RESULT_POLL: Duration = Duration::from_millis(200);

/// Whether `result.json` (`{"v1": {"datasource": …, "errors": [], "recoverable_errors": {}}}`)
/// says cloud-init read a datasource and finished without an error or a warning.
pub(crate) fn result_is_clean(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Result {
        v1: V1,
    }
    #[derive(Deserialize)]
    struct V1 {
        datasource: Option<String>,
        #[serde(default)]
        errors: Vec<serde_json::Value>,
        #[serde(default)]
        recoverable_errors: BTreeMap<String, Vec<serde_json::Value>>,
    }
    let Ok(result) = serde_json::from_str::<Result>(text.trim()) else {
        return false;
    };
    let source = result.v1.datasource.unwrap_or_default();
    let no_source = source.is_empty() || source.starts_with("DataSourceNone");
    !no_source
        && result.v1.errors.is_empty()
        && result.v1.recoverable_errors.values().all(Vec::is_empty)
}

const WAIT_JSON: &str = "cloud-init status --wait --format json";
const NOW_JSON: &str = "cloud-init status --format json";
const WAIT_TABULAR: &str = "cloud-init status --wait --long";

impl GuestSession {
    /// Waits (at most `limit`) for cloud-init to finish and says how it went. Past `limit`:
    /// [`Error::CloudInitTimeout`] if it is still running, [`CloudInitOutcome::NeverRan`] if it
    /// never started.
    pub async fn cloud_init_wait(
        &self,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<CloudInitOutcome> {
        let deadline = Instant::now() + limit;
        let left = || deadline.saturating_duration_since(Instant::now());
        let present = self
            .exec_capture("command -v cloud-init", Duration::from_secs(30), cancel)
            .await?;
        if !present.status.success() {
            return Ok(CloudInitOutcome::NeverRan {
                detail: "cloud-init is not installed in the guest".into(),
            });
        }
        if self.finished_cleanly(left(), cancel).await? {
            return Ok(CloudInitOutcome::Finished);
        }
        let status = match self.status_json(WAIT_JSON, left(), cancel).await {
            Ok(Some(status)) => status,
            // `--format` unknown (very old cloud-init): fall back to the tabular form.
            Ok(None) => match self.exec_capture_root(WAIT_TABULAR, left(), cancel).await {
                Ok(out) => CloudInitStatus::from_tabular(&out.stdout)?,
                Err(Error::Timeout { .. }) => {
                    return Err(Error::CloudInitTimeout {
                        waited: limit,
                        status: "not done".into(),
                    });
                }
                Err(e) => return Err(e),
            },
            Err(Error::Timeout { .. }) => return self.timed_out(limit, cancel).await,
            Err(e) => return Err(e),
        };
        let status = if status.status == "error" && status.extended_status.is_none() {
            // 22.x: --wait returned at the first error; let boot (and cloud-final) finish.
            let settle = self
                .exec_capture_root("systemctl is-system-running --wait", left(), cancel)
                .await;
            match settle {
                Ok(_) => {}
                Err(Error::Timeout { .. }) => return self.timed_out(limit, cancel).await,
                Err(e) => return Err(e),
            }
            self.status_json(NOW_JSON, Duration::from_secs(60), cancel)
                .await?
                .unwrap_or(status)
        } else {
            status
        };
        Ok(status.outcome())
    }

    /// The cheap wait: polls (unprivileged, in `sh`) for the `result.json` cloud-init writes at
    /// the end of its last stage, and says whether it reports a clean finish. Anything else —
    /// cloud-init not running (no `status.json`), errors or warnings in the result, no result
    /// within `limit` — is `false`, and `cloud-init status` tells the rest. `cloud-init status
    /// --wait` is Python started under `sudo` while cloud-final still runs: from cloud-init's
    /// "finished" to imgbake knowing it took ~1.5 s under TCG that way, ~0.7 s this way.
    async fn finished_cleanly(&self, limit: Duration, cancel: &CancellationToken) -> Result<bool> {
        let polls = limit.as_millis() / RESULT_POLL.as_millis();
        let cmd = format!(
            "[ -e {STATUS} ] || exit 3; n=0; while [ ! -e {RESULT} ]; do n=$((n+1)); [ $n -gt {polls} ] && exit 3; sleep {poll}; done; cat {RESULT}",
            STATUS = "/run/cloud-init/status.json",
            RESULT = "/run/cloud-init/result.json",
            poll = RESULT_POLL.as_secs_f32(),
        );
        let out = match self
            .exec_capture(&cmd, limit + Duration::from_secs(30), cancel)
            .await
        {
            Ok(out) => out,
            Err(Error::Timeout { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(out.status.success() && result_is_clean(&out.stdout))
    }

    /// Runs a `--format json` status command; `None` if this cloud-init has no `--format`.
    async fn status_json(
        &self,
        cmd: &str,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<CloudInitStatus>> {
        let out = self.exec_capture_root(cmd, limit, cancel).await?;
        if out.status == ExitStatus::Code(2) && out.stderr.contains("unrecognized arguments") {
            return Ok(None);
        }
        match CloudInitStatus::from_json(&out.stdout) {
            Ok(status) => Ok(Some(status)),
            // No JSON at all: the command itself failed; report it with its stderr.
            Err(parse) => match out.check(cmd) {
                Err(failed) => Err(failed),
                Ok(_) => Err(parse),
            },
        }
    }

    /// After the overall limit: still running (error) or never started (outcome)?
    async fn timed_out(
        &self,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<CloudInitOutcome> {
        let now = self
            .status_json(NOW_JSON, Duration::from_secs(60), cancel)
            .await?;
        match now {
            Some(s) if matches!(s.status.as_str(), "not run" | "not started") => {
                Ok(CloudInitOutcome::NeverRan {
                    detail: format!(
                        "cloud-init had not started after {limit:?} ({})",
                        s.boot_status_code
                    ),
                })
            }
            Some(s) if !s.in_progress() => Ok(s.outcome()),
            other => Err(Error::CloudInitTimeout {
                waited: limit,
                status: other.map_or_else(|| "running".to_string(), |s| s.status),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
