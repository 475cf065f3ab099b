//! `imgbake plan RECIPE`: the resolved recipe and its checkpoint keys, as text or JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use recipe::{Recipe, format_duration};
use serde::Serialize;

use crate::cli::VarArgs;
use crate::output::Output;
use crate::report::{CliError, ExitStatus, exit_status_help, stdout_err};

pub const LONG_ABOUT: &str = "\
Show what a build of RECIPE would do, without doing it.

Prints the resolved recipe (every {{var}} substituted, --var and IMGBAKE_VAR_<name> \
overrides applied): each var with where its value came from (the recipe, derived from another \
var, the environment, or --var), the base image and how it is checked, the build VM, the export formats, the verify expectations, \
and each step with its id, script, options, the environment its checkpoint key covers, and \
its checkpoint key. The recipe's secrets are listed by name, with whether imgbake's \
environment sets them; their values are never shown (`<secret>`).

Checkpoint keys chain like image layers: a step's key covers the previous key, the script's \
bytes, the vars the script refers to ($NAME or ${NAME}), the step's own env, whether it \
reboots, and the names (never the values) of the secrets it refers to. Editing a step changes its key and the keys after it. Until the base image is \
fetched, keys identify it by URL and are marked provisional.

`--json` prints one JSON document (format \"imgbake-plan/1\") with the same content; keys are \
in full there, while the text shows their first 16 hex digits.";

pub const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    imgbake plan recipes/nvidia-fw1.yaml\n",
    "    imgbake plan recipes/nvidia-fw1.yaml --var nvidia_driver_branch=580\n",
    "    IMGBAKE_VAR_ubuntu_version=24.04 imgbake plan recipes/gpu-ready.yaml\n",
    "    imgbake plan --json recipes/gpu-ready.yaml | jq -r '.steps[].checkpoint_key'\n",
    "\n",
    exit_status_help!(),
);

/// `imgbake plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The recipe file
    #[arg(value_name = "RECIPE")]
    pub recipe: PathBuf,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Print one JSON document on stdout instead of text
    #[arg(long)]
    pub json: bool,
}

/// The plan as data; `--json` prints exactly this.
#[derive(Debug, Serialize)]
pub struct PlanDoc {
    format: &'static str,
    recipe: String,
    name: String,
    vars: BTreeMap<String, String>,
    /// Where each var's value came from: `recipe`, `derived`, `env` or `cli`.
    var_sources: BTreeMap<String, &'static str>,
    /// `IMGBAKE_VAR_…` variables set for vars this recipe does not have.
    ignored_env: Vec<String>,
    /// The recipe's secrets, by name; a value is never shown.
    secrets: Vec<SecretDoc>,
    base: BaseDoc,
    vm: VmDoc,
    export: ExportDoc,
    verify: VerifyDoc,
    payload: PayloadDoc,
    checkpoint: CheckpointDoc,
    steps: Vec<StepDoc>,
}

/// What the text and JSON plans show in place of a secret's value.
const SECRET_SHOWN: &str = "<secret>";

#[derive(Debug, Serialize)]
struct SecretDoc {
    name: String,
    /// Always [`SECRET_SHOWN`].
    value: &'static str,
    /// Whether imgbake's environment sets it (`imgbake recipe` may take it from
    /// `--secret-file` instead).
    set_in_environment: bool,
}

#[derive(Debug, Serialize)]
struct BaseDoc {
    url: String,
    checksum: String,
}

#[derive(Debug, Serialize)]
struct VmDoc {
    cpus: u32,
    memory: String,
    memory_bytes: u64,
    disk_size: String,
    disk_size_bytes: u64,
    firmware: recipe::Firmware,
    accel: recipe::AccelChoice,
    machine: String,
    boot_timeout_secs: u64,
}

#[derive(Debug, Serialize)]
struct ExportDoc {
    formats: Vec<recipe::ExportFormat>,
}

#[derive(Debug, Serialize)]
struct VerifyDoc {
    nvidia: Option<NvidiaDoc>,
    hygiene: bool,
}

#[derive(Debug, Serialize)]
struct NvidiaDoc {
    enable_gpu_firmware: Option<u32>,
    driver_branch: Option<String>,
}

#[derive(Debug, Serialize)]
struct PayloadDoc {
    name: String,
    virtualization: recipe::Virtualization,
    gpu: Option<GpuDoc>,
}

#[derive(Debug, Serialize)]
struct GpuDoc {
    vendor: recipe::GpuVendor,
    models: Vec<String>,
}

#[derive(Debug, Serialize)]
struct CheckpointDoc {
    /// True while the base is identified by URL rather than digest.
    provisional: bool,
    base_identity: String,
    seed_fingerprint: String,
    root: String,
}

#[derive(Debug, Serialize)]
struct StepDoc {
    id: String,
    name: String,
    script: String,
    script_sha256: String,
    reboot: bool,
    timeout_secs: u64,
    retries: u32,
    /// The step's own `env:`.
    env: BTreeMap<String, String>,
    /// What the checkpoint key covers: referenced vars (as env names) plus `env`.
    key_env: BTreeMap<String, String>,
    /// The names of the secrets the checkpoint key covers (their values never are).
    key_secrets: Vec<String>,
    checkpoint_key: String,
}

impl PlanDoc {
    pub fn new(r: &Recipe) -> PlanDoc {
        // The same plan a build makes, so the keys shown are the keys a build makes.
        let plan = pipeline::BuildPlan::new(r, r.base_identity());
        let chain = &plan.chain;
        PlanDoc {
            format: "imgbake-plan/1",
            recipe: r.path.display().to_string(),
            name: r.name.clone(),
            vars: r.vars.clone(),
            var_sources: r
                .var_sources
                .iter()
                .map(|(k, s)| (k.clone(), s.as_str()))
                .collect(),
            ignored_env: r.ignored_env.clone(),
            secrets: r
                .secrets
                .iter()
                .map(|name| SecretDoc {
                    name: name.clone(),
                    value: SECRET_SHOWN,
                    set_in_environment: std::env::var_os(name).is_some(),
                })
                .collect(),
            base: BaseDoc {
                url: r.base.location.to_string(),
                checksum: r.base.checksum.to_string(),
            },
            vm: VmDoc {
                cpus: r.vm.cpus,
                memory: r.vm.memory.to_string(),
                memory_bytes: r.vm.memory.as_u64(),
                disk_size: r.vm.disk_size.to_string(),
                disk_size_bytes: r.vm.disk_size.as_u64(),
                firmware: r.vm.firmware,
                accel: r.vm.accel,
                machine: r.vm.machine.clone(),
                boot_timeout_secs: r.vm.boot_timeout.as_secs(),
            },
            export: ExportDoc {
                formats: r.export.formats.clone(),
            },
            verify: VerifyDoc {
                nvidia: r.verify.nvidia.as_ref().map(|n| NvidiaDoc {
                    enable_gpu_firmware: n.enable_gpu_firmware,
                    driver_branch: n.driver_branch.clone(),
                }),
                hygiene: r.verify.hygiene,
            },
            payload: PayloadDoc {
                name: r.payload.name.clone(),
                virtualization: r.payload.virtualization,
                gpu: r.payload.gpu.as_ref().map(|g| GpuDoc {
                    vendor: g.vendor,
                    models: g.models.clone(),
                }),
            },
            checkpoint: CheckpointDoc {
                provisional: plan.provisional(),
                base_identity: plan.base.to_string(),
                seed_fingerprint: plan.seed_fingerprint.to_string(),
                root: chain.root.to_string(),
            },
            steps: r
                .steps
                .iter()
                .zip(&chain.steps)
                .map(|(s, (_, key))| StepDoc {
                    id: s.id.to_string(),
                    name: s.name.clone(),
                    script: s.script.display().to_string(),
                    script_sha256: s.digest().to_string(),
                    reboot: s.reboot,
                    timeout_secs: s.timeout.as_secs(),
                    retries: s.retries,
                    env: s.env.clone(),
                    key_env: r.step_key_env(s),
                    key_secrets: r.step_key_secrets(s),
                    checkpoint_key: key.to_string(),
                })
                .collect(),
        }
    }

    /// The human-readable plan.
    pub fn write_text(&self, w: &mut dyn Write, out: &Output) -> std::io::Result<()> {
        let p = out.stdout();
        let field = |w: &mut dyn Write, label: &str, value: &str| {
            writeln!(w, "{} {value}", p.bold(&format!("{label:<9}")))
        };
        field(w, "recipe", &self.recipe)?;
        field(w, "name", &self.name)?;
        // One var a line, each with where its value came from.
        let vars: Vec<String> = self.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let var_w = vars.iter().map(String::len).max().unwrap_or(0);
        let lines: Vec<String> = self
            .vars
            .keys()
            .zip(&vars)
            .map(|(k, kv)| {
                let source = source_label(k, self.var_sources.get(k).copied());
                format!("{kv:<var_w$}  {}", p.dim(&source))
            })
            .collect();
        field(w, "vars", &lines.join("\n          "))?;
        if !self.ignored_env.is_empty() {
            field(
                w,
                "ignored",
                &format!(
                    "{} (this recipe has no such var)",
                    self.ignored_env.join(", ")
                ),
            )?;
        }
        if !self.secrets.is_empty() {
            let lines: Vec<String> = self
                .secrets
                .iter()
                .map(|s| {
                    let source = if s.set_in_environment {
                        "environment".to_owned()
                    } else {
                        format!(
                            "not set: export {0}, or pass --secret-file {0}=PATH to imgbake recipe",
                            s.name
                        )
                    };
                    format!("{}={}  {}", s.name, s.value, p.dim(&source))
                })
                .collect();
            field(w, "secrets", &lines.join("\n          "))?;
        }
        field(w, "base", &self.base.url)?;
        field(w, "checksum", &self.base.checksum)?;
        let vm = &self.vm;
        field(
            w,
            "vm",
            &format!(
                "{} vCPUs, {} memory, {} disk, {} firmware, machine {}, accel {}, boot timeout {}",
                vm.cpus,
                vm.memory,
                vm.disk_size,
                vm.firmware,
                vm.machine,
                vm.accel,
                format_duration(std::time::Duration::from_secs(vm.boot_timeout_secs)),
            ),
        )?;
        let formats: Vec<&str> = self.export.formats.iter().map(|f| f.as_str()).collect();
        field(w, "export", &formats.join(", "))?;
        let mut verify = Vec::new();
        if let Some(n) = &self.verify.nvidia {
            if let Some(v) = n.enable_gpu_firmware {
                verify.push(format!("NVreg_EnableGpuFirmware={v}"));
            }
            if let Some(b) = &n.driver_branch {
                verify.push(format!("driver branch {b}"));
            }
        }
        verify.push(
            if self.verify.hygiene {
                "hygiene"
            } else {
                "no hygiene checks"
            }
            .to_owned(),
        );
        field(w, "verify", &verify.join(", "))?;
        let gpu = self.payload.gpu.as_ref().map_or_else(
            || "no GPU".to_owned(),
            |g| format!("{} {}", g.vendor, g.models.join(", ")),
        );
        field(
            w,
            "payload",
            &format!(
                "{}: {}, {gpu}",
                self.payload.name, self.payload.virtualization
            ),
        )?;

        writeln!(w)?;
        writeln!(w, "{}", p.bold(&format!("{} steps:", self.steps.len())))?;
        let options: Vec<String> = self.steps.iter().map(step_options).collect();
        let script_w = self
            .steps
            .iter()
            .map(|s| s.script.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let opt_w = options.iter().map(String::len).max().unwrap_or(7).max(7);
        writeln!(
            w,
            "  {}",
            p.bold(&format!(
                "{:<3} {:<script_w$}  {:<opt_w$}  CHECKPOINT KEY",
                "ID", "SCRIPT", "OPTIONS"
            ))
        )?;
        writeln!(
            w,
            "  {:<3} {:<script_w$}  {:<opt_w$}  {}",
            "--",
            format!("(first boot: base, {} disk, machine)", self.vm.disk_size),
            "",
            short(&self.checkpoint.root)
        )?;
        for (s, opts) in self.steps.iter().zip(&options) {
            writeln!(
                w,
                "  {:<3} {:<script_w$}  {:<opt_w$}  {}",
                s.id,
                s.script,
                opts,
                short(&s.checkpoint_key)
            )?;
            if !s.key_env.is_empty() || !s.key_secrets.is_empty() {
                let env: Vec<String> = s
                    .key_env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain(s.key_secrets.iter().map(|k| format!("{k}={SECRET_SHOWN}")))
                    .collect();
                writeln!(w, "      {}", p.dim(&format!("env: {}", env.join(" "))))?;
            }
        }
        if self.checkpoint.provisional {
            writeln!(w)?;
            writeln!(
                w,
                "{}",
                p.dim("keys are provisional: the base image is named by its URL until it is fetched and checked")
            )?;
        }
        Ok(())
    }
}

/// Where a var came from, as the text plan says it.
fn source_label(var: &str, source: Option<&str>) -> String {
    match source {
        Some("recipe") => "recipe".to_owned(),
        Some("derived") => match recipe::derived_from(var) {
            Some(from) => format!("derived from {from}"),
            None => "derived".to_owned(),
        },
        Some("env") => format!("environment ({}…)", recipe::ENV_VAR_PREFIX),
        Some("cli") => "--var".to_owned(),
        other => other.unwrap_or("?").to_owned(),
    }
}

fn step_options(s: &StepDoc) -> String {
    let mut opts = Vec::new();
    if s.reboot {
        opts.push("reboot".to_owned());
    }
    opts.push(format!(
        "timeout {}",
        format_duration(std::time::Duration::from_secs(s.timeout_secs))
    ));
    if s.retries > 0 {
        opts.push(format!("retries {}", s.retries));
    }
    opts.join(", ")
}

fn short(key: &str) -> &str {
    key.get(..16).unwrap_or(key)
}

pub fn run(args: &PlanArgs, out: &Output) -> Result<ExitStatus, CliError> {
    let recipe = Recipe::load(&args.recipe, &args.vars.vars)?;
    let doc = PlanDoc::new(&recipe);
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &doc).map_err(CliError::Json)?;
        writeln!(stdout).map_err(stdout_err)?;
    } else {
        doc.write_text(&mut stdout, out).map_err(stdout_err)?;
    }
    Ok(ExitStatus::Success)
}
