//! Renders build events: a line-per-event progress display for people (stderr), or one JSON
//! object per line for machines (stdout). Rendering is kept apart from the pipeline's logic.

use std::io::Write;
use std::time::Instant;

use pipeline::{BakeEvent, BakeSummary};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::output::Output;

/// How events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderMode {
    /// Progress lines on stderr.
    Human,
    /// JSON lines on stdout.
    Json,
}

/// Renders one build's events.
pub struct BakeRenderer {
    recipe: String,
    prefix_recipe: bool,
    mode: RenderMode,
    out: Output,
    started: Instant,
    last_fetch_percent: Option<u64>,
    last_export: Option<(String, u64)>,
}

impl BakeRenderer {
    pub fn new(recipe: String, prefix_recipe: bool, mode: RenderMode, out: Output) -> Self {
        Self {
            recipe,
            prefix_recipe,
            mode,
            out,
            started: Instant::now(),
            last_fetch_percent: None,
            last_export: None,
        }
    }

    /// Consumes events until the build ends.
    pub async fn run(mut self, mut events: UnboundedReceiver<BakeEvent>) {
        while let Some(event) = events.recv().await {
            match self.mode {
                RenderMode::Json => self.json(&event),
                RenderMode::Human => {
                    if let Some(line) = self.human(&event) {
                        let prefix = if self.prefix_recipe {
                            format!("{} ", self.recipe)
                        } else {
                            String::new()
                        };
                        let elapsed = self.started.elapsed().as_secs_f64();
                        let stamp = self.out.stderr().dim(&format!("{elapsed:>7.1}s"));
                        eprintln!("{stamp} {prefix}{line}");
                    }
                }
            }
        }
    }

    fn json(&self, event: &BakeEvent) {
        let mut value = serde_json::to_value(event).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("recipe".into(), self.recipe.clone().into());
            map.insert(
                "elapsed_secs".into(),
                (self.started.elapsed().as_millis() as f64 / 1000.0).into(),
            );
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{value}");
    }

    fn human(&mut self, event: &BakeEvent) -> Option<String> {
        let paint = self.out.stderr();
        Some(match event {
            BakeEvent::FetchProgress { done, total } => {
                let total = (*total)?;
                let percent = done.saturating_mul(100) / total.max(1);
                if self.last_fetch_percent.is_some_and(|p| p / 10 == percent / 10) {
                    return None;
                }
                self.last_fetch_percent = Some(percent);
                format!("base image {percent:>3}% ({} of {})", bytes(*done), bytes(total))
            }
            BakeEvent::BaseReady { path, sha256 } => {
                format!("base image ready: {} (sha256 {}…)", path.display(), &sha256[..12])
            }
            BakeEvent::PlainBaseReady { path, made_secs } => match made_secs {
                Some(secs) => format!(
                    "uncompressed copy of the base made in {secs:.1}s: {}",
                    path.display()
                ),
                None => return None,
            },
            BakeEvent::CheckpointDiscarded { reason } => paint.hint(&format!("note: {reason}")),
            BakeEvent::CheckpointRebased { step_id, from, to } => {
                let which = if step_id == pipeline::READY_STEP_ID {
                    "the first-boot checkpoint".to_owned()
                } else {
                    format!("checkpoint {step_id}")
                };
                paint.hint(&format!(
                    "note: {which} was made on this base at {}; it now names {}",
                    from.display(),
                    to.display()
                ))
            }
            BakeEvent::StepsReused { ids, resumed } => {
                let range = match (ids.first(), ids.last()) {
                    (Some(a), Some(b)) if a != b => format!("steps {a}–{b}"),
                    (Some(a), _) => format!("step {a}"),
                    _ => return None,
                };
                let how = if *resumed { "resumed from checkpoint" } else { "reused from cache" };
                paint.ok(&format!("{range} {how}"))
            }
            BakeEvent::VmStarted { reason, ssh_addr, serial_log, .. } => format!(
                "vm started: {reason}; ssh on {ssh_addr}; serial log {}",
                serial_log.display()
            ),
            BakeEvent::RestartedUnderTcg { reason } => paint.error(&format!(
                "KVM FAILED ({reason}) — RESTARTED THE VM UNDER TCG (slow software emulation); use --accel tcg to skip KVM"
            )),
            BakeEvent::SshReady { after_secs } => format!("ssh ready after {after_secs:.1}s"),
            BakeEvent::CloudInitWarning { detail } => {
                paint.hint(&format!("warning: cloud-init finished with errors (the build goes on):\n{detail}"))
            }
            BakeEvent::CloudInitDone { after_secs } => format!("cloud-init finished after {after_secs:.1}s"),
            BakeEvent::StepStarted { id, name, attempt } => {
                let attempt = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                paint.bold(&format!("[{id}] ▶ {name}{attempt}"))
            }
            BakeEvent::StepOutput { id, stream, line } => {
                let bar = if *stream == pipeline::OutputStream::Stderr { "┃" } else { "│" };
                format!("{}{bar} {line}", paint.dim(id))
            }
            BakeEvent::StepRetrying { id, exit } => paint.hint(&format!("[{id}] {exit}; retrying")),
            BakeEvent::Rebooting { id } => format!("[{id}] rebooting the guest"),
            BakeEvent::Rebooted { id, downtime_secs } => format!("[{id}] guest back after {downtime_secs:.1}s"),
            BakeEvent::StepFinished { id, success, exit, duration_secs } => {
                let text = format!("[{id}] {} {exit} in {duration_secs:.1}s", if *success { "✔" } else { "✘" });
                if *success { paint.ok(&text) } else { paint.error(&text) }
            }
            BakeEvent::CheckpointSaved { id, key, size, published } => {
                let note = if *published { "" } else { " (an earlier build already saved this checkpoint; kept it)" };
                paint.dim(&format!("[{id}] checkpoint {key} ({}){note}", bytes(*size)))
            }
            BakeEvent::VmStateSaved { id, size, paused_secs, background, published } => {
                let note = if *published { "" } else { " (not kept)" };
                let how = if *background { ", written while the guest ran on" } else { "" };
                paint.dim(&format!("[{id}] vm state ({}, guest paused {paused_secs:.2}s{how}){note}", bytes(*size)))
            }
            BakeEvent::VmStateRestored { id, after_secs } if id == pipeline::READY_STEP_ID => format!(
                "resumed the guest from the vm state of this base's first boot in {after_secs:.1}s (no boot)"
            ),
            BakeEvent::VmStateRestored { id, after_secs } => {
                format!("resumed the guest from the vm state after step {id} in {after_secs:.1}s (no boot)")
            }
            BakeEvent::WaitingForCheckpoint { id } if id == pipeline::READY_STEP_ID => paint.hint(
                "another build is booting this base for the first time: waiting to start from its first boot",
            ),
            BakeEvent::WaitingForCheckpoint { id } => paint.hint(&format!(
                "another build is making checkpoint {id} of this chain: waiting to start from it"
            )),
            BakeEvent::VmStateNotUsed { reason } => paint.hint(&format!("vm state not used: {reason}")),
            BakeEvent::Sealing => "sealing: removing what imgbake added (build user, keys, /var/lib/imgbake, host key, build hostname, cloud-init instance)".to_owned(),
            BakeEvent::ShuttingDown => "powering the guest off".to_owned(),
            BakeEvent::OutputWritten { path } => format!("wrote {}", path.display()),
            BakeEvent::Exporting { what, fraction } => match fraction {
                None => what.clone(),
                Some(f) => {
                    let percent = (f * 100.0) as u64;
                    if self.last_export.as_ref().is_some_and(|(w, p)| w == what && p / 25 == percent / 25) {
                        return None;
                    }
                    self.last_export = Some((what.clone(), percent));
                    format!("{what} {percent}%")
                }
            },
            BakeEvent::KeptForDebugging { ssh_command } => paint.hint(&format!(
                "the VM stays up for debugging (Ctrl-C to end it):\n    {ssh_command}"
            )),
            BakeEvent::Warning { message } => paint.hint(&format!("warning: {message}")),
            BakeEvent::GuestReady { ssh_command, .. } => format!("guest up: {ssh_command}"),
            BakeEvent::VmStopped { why } => format!("the vm stopped: {why}"),
            BakeEvent::TestStarted { image, instance_id, hostname } => paint.bold(&format!(
                "boot test of {}: fresh seed (instance {instance_id}, hostname {hostname}, user {}, no host key)",
                image.display(),
                pipeline::TEST_USER
            )),
            BakeEvent::TestRow { row } => {
                let text = format!("test: {} — {}: {}", row.name, row.verdict, row.detail);
                if row.verdict == pipeline::RowVerdict::Pass { paint.ok(&text) } else { paint.error(&text) }
            }
        })
    }
}

/// The table printed after a successful build.
pub fn print_summary(summary: &BakeSummary, out: Output) {
    let paint = out.stderr();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\n{}",
        paint.bold(&format!(
            "{} — done in {:.1}s",
            summary.run.recipe, summary.run.total_secs
        ))
    );
    for step in &summary.run.steps {
        let _ = writeln!(
            err,
            "  {:<4} {:<28} {:<7} {:>7.1}s",
            step.id, step.name, step.status, step.duration_secs
        );
    }
    let verdict = if summary.verify.passed {
        paint.ok("passed")
    } else {
        paint.error("FAILED")
    };
    let _ = writeln!(
        err,
        "  offline verification: {verdict} (imgbake verify {} for details)",
        summary.raw.display()
    );
    if let Some(test) = &summary.test {
        let verdict = if test.passed {
            paint.ok("passed")
        } else {
            paint.error("FAILED")
        };
        let _ = writeln!(err, "  boot test: {verdict}");
        let _ = write_test_table(&mut err, test, paint);
    }
    // A failed image has no final qcow2: only what was written is listed.
    let qcow2 = summary.verify.passed.then_some(&summary.qcow2);
    for file in qcow2.into_iter().chain(&summary.files) {
        let _ = writeln!(err, "  {}", file.display());
    }
}

/// The boot test's rows as a table: check, verdict, detail.
pub fn write_test_table(
    w: &mut dyn Write,
    report: &pipeline::ImageTestReport,
    paint: crate::output::Paint,
) -> std::io::Result<()> {
    let width = report
        .rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0);
    for row in &report.rows {
        let verdict = format!("{:<4}", row.verdict.to_string());
        let verdict = if row.verdict == pipeline::RowVerdict::Pass {
            paint.ok(&verdict)
        } else {
            paint.error(&verdict)
        };
        writeln!(w, "  {:<width$}  {verdict}  {}", row.name, row.detail)?;
    }
    Ok(())
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
