//! Raw model → typed [`Recipe`]: vars and overrides, `{{var}}` substitution, value parsing,
//! step scripts and ids. Collects every problem rather than stopping at the first.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_saphyr::Location;

use crate::error::{Diagnostic, DiagnosticKind as K};
use crate::model::*;
use crate::raw::{Entries, RawRecipe, RawStep, S};
use crate::source::{Source, Spot};
use crate::suggest::{did_you_mean, did_you_mean_prefix, example_for};
use crate::ubuntu::{UBUNTU_CODENAME_VAR, UBUNTU_VERSION_VAR, known_releases, ubuntu_codename};
use crate::units::{ByteSize, SizeError, parse_duration};
use crate::vars::{TemplateProblem, VarOverride, VarSource, expand, is_env_name, is_var_name};
use crate::{Recipe, Sha256};

/// What a value parser says when it rejects a value: kind, message tail, hint.
type Reject = (K, String, Option<String>);

struct Resolver<'a> {
    src: &'a Source<'a>,
    dir: &'a Path,
    vars: BTreeMap<String, String>,
    /// Where each of `vars` came from.
    sources: BTreeMap<String, VarSource>,
    /// `IMGBAKE_VAR_…` names for vars this recipe does not have.
    ignored_env: Vec<String>,
    /// The names of `secrets:` (valid or not: a `--var` for any of them is refused).
    /// Each with where the recipe lists it.
    secret_names: Vec<(String, Spot)>,
    diags: Vec<Diagnostic>,
}

pub(crate) fn resolve(
    raw: RawRecipe,
    src: &Source<'_>,
    overrides: &[VarOverride],
) -> Result<Recipe, Vec<Diagnostic>> {
    let dir = src
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut r = Resolver {
        src,
        dir,
        vars: BTreeMap::new(),
        sources: BTreeMap::new(),
        ignored_env: Vec::new(),
        secret_names: Vec::new(),
        diags: Vec::new(),
    };
    let secrets = r.secrets(raw.secrets.as_deref(), raw.vars.as_ref());
    r.vars(raw.vars.as_ref(), overrides);
    let name = r.name(&raw.name);
    let base = r.base(&raw.base.url, &raw.base.checksum);
    let vm = r.vm(&raw.vm);
    let steps = r.steps(&raw.steps);
    let export = r.export(raw.export.as_ref());
    let verify = r.verify(raw.verify.as_ref());
    let payload = r.payload(raw.payload.as_ref(), name.as_deref());
    // Without `payload.name` the recipe's name is the image's name at the region API.
    if name.is_some() && raw.payload.as_ref().is_none_or(|p| p.name.is_none()) {
        r.value("name", &raw.name, |v| api_name(v, true));
    }
    let test = r.test(raw.test.as_deref());

    let mut diags = std::mem::take(&mut r.diags);
    if !diags.is_empty() {
        diags.sort_by_key(|d| d.position);
        return Err(diags);
    }
    let (
        Some(name),
        Some(base),
        Some(vm),
        Some(steps),
        Some(export),
        Some(verify),
        Some(payload),
        Some(test),
        Some(secrets),
    ) = (
        name, base, vm, steps, export, verify, payload, test, secrets,
    )
    else {
        // Every `None` above pushed a diagnostic, so this is unreachable; say so rather
        // than panic.
        return Err(vec![src.diag(
            K::BadValue,
            Spot::start(),
            "the recipe could not be resolved",
            None,
        )]);
    };
    Ok(Recipe {
        name,
        path: src.path.to_path_buf(),
        dir: dir.to_path_buf(),
        vars: r.vars,
        var_sources: r.sources,
        ignored_env: r.ignored_env,
        base,
        vm,
        steps,
        export,
        verify,
        payload,
        secrets,
        test,
    })
}

fn spot(loc: &Location) -> Spot {
    Spot::from_location(loc)
}

fn hint_example(key: &str) -> Option<String> {
    example_for(key).map(|e| format!("for example `{e}`"))
}

impl Resolver<'_> {
    fn push(&mut self, kind: K, spot: Spot, message: impl Into<String>, hint: Option<String>) {
        let d = self.src.diag(kind, spot, message, hint);
        self.diags.push(d);
    }

    // ---- vars -------------------------------------------------------------------------

    /// The recipe's vars, then derived ones, then the environment's and `--var` overrides (in
    /// that order of precedence, whatever order `overrides` is in).
    fn vars(&mut self, entries: Option<&Entries>, overrides: &[VarOverride]) {
        let entries_list = entries.map(|e| e.0.as_slice()).unwrap_or_default();
        for (name, value) in entries_list {
            if !is_var_name(name) {
                let spot = self.src.key_before(&value.referenced, name);
                self.push(
                    K::BadVarName,
                    spot,
                    format!("var name `{name}` is not lower_snake_case"),
                    Some(format!(
                        "rename it to `{}` (scripts see it as an upper-case env var)",
                        name.to_ascii_lowercase().replace(['-', ' ', '.'], "_")
                    )),
                );
            }
            self.vars.insert(name.clone(), value.value.clone());
            self.sources.insert(name.clone(), VarSource::Recipe);
        }
        // A recipe with `ubuntu_version` also has `ubuntu_codename`, derived below unless the
        // recipe, the environment or a --var sets it.
        let derives_codename = self.vars.contains_key(UBUNTU_VERSION_VAR)
            && !self.vars.contains_key(UBUNTU_CODENAME_VAR);
        let mut known: Vec<String> = self.vars.keys().cloned().collect();
        if derives_codename {
            known.push(UBUNTU_CODENAME_VAR.to_owned());
            known.sort();
        }
        let mut ordered: Vec<&VarOverride> = overrides.iter().collect();
        ordered.sort_by_key(|o| o.source == VarSource::Cli);
        for o in ordered {
            if known.contains(&o.key) {
                self.vars.insert(o.key.clone(), o.value.clone());
                self.sources.insert(o.key.clone(), o.source);
                continue;
            }
            if o.source == VarSource::Env {
                // The environment is shared by every recipe; a var for another recipe is no
                // error (plan lists it).
                self.ignored_env
                    .push(o.env_name.clone().unwrap_or_else(|| o.key.clone()));
                continue;
            }
            let spot = self.vars_spot(entries);
            if let Some((secret, listed)) = self
                .secret_names
                .iter()
                .find(|(s, _)| s.eq_ignore_ascii_case(&o.key))
                .cloned()
            {
                self.push(
                    K::SecretOnCommandLine,
                    listed,
                    format!("--var {}: `{secret}` is one of the recipe's secrets, and secrets are never taken from the command line (every user can read it)", o.key),
                    Some(format!("set the environment variable {secret}, or pass --secret-file {secret}=PATH")),
                );
                continue;
            }
            if !is_var_name(&o.key) {
                let lower = o.key.to_ascii_lowercase();
                let hint = if known.contains(&lower) {
                    format!("write --var {lower}=…")
                } else {
                    "var names are lower_snake_case, as in the recipe's `vars:`".to_owned()
                };
                self.push(
                    K::UnknownVarOverride,
                    spot,
                    format!(
                        "--var {}: the recipe defines no var `{}` (var names are lower_snake_case)",
                        o.key, o.key
                    ),
                    Some(hint),
                );
                continue;
            }
            let hint = if known.is_empty() {
                "this recipe defines no vars; remove the --var".to_owned()
            } else {
                format!(
                    "{}the recipe's vars are: {}",
                    did_you_mean_prefix(&o.key, known.iter().map(String::as_str)),
                    known.join(", ")
                )
            };
            self.push(
                K::UnknownVarOverride,
                spot,
                format!("--var {}: the recipe defines no var `{}`", o.key, o.key),
                Some(hint),
            );
        }
        self.ubuntu_codename(entries, overrides, derives_codename);
    }

    /// Derives `ubuntu_codename` from `ubuntu_version` when nothing set it, or checks that a
    /// codename set explicitly is the version's.
    fn ubuntu_codename(
        &mut self,
        entries: Option<&Entries>,
        overrides: &[VarOverride],
        derives: bool,
    ) {
        let Some(version) = self.vars.get(UBUNTU_VERSION_VAR).cloned() else {
            return;
        };
        let version_from = self.set_by(UBUNTU_VERSION_VAR, overrides);
        let version_spot = self.var_spot(entries, UBUNTU_VERSION_VAR);
        let derived = ubuntu_codename(&version);
        if derives && !self.vars.contains_key(UBUNTU_CODENAME_VAR) {
            match derived {
                Some(codename) => {
                    self.vars
                        .insert(UBUNTU_CODENAME_VAR.to_owned(), codename.to_owned());
                    self.sources
                        .insert(UBUNTU_CODENAME_VAR.to_owned(), VarSource::Derived);
                }
                None => {
                    // A stand-in, so every `{{ubuntu_codename}}` is not reported as undefined
                    // too; the recipe fails on the diagnostic below anyway.
                    self.vars
                        .insert(UBUNTU_CODENAME_VAR.to_owned(), "unknown".to_owned());
                    self.sources
                        .insert(UBUNTU_CODENAME_VAR.to_owned(), VarSource::Derived);
                    self.push(
                    K::UnknownUbuntuVersion,
                    version_spot,
                    format!(
                        "{version_from}: no known Ubuntu codename for version `{version}`, so `{UBUNTU_CODENAME_VAR}` cannot be derived"
                    ),
                    Some(format!(
                        "use a known version: {}; or set the codename too, e.g. --var {UBUNTU_CODENAME_VAR}=<codename>",
                        known_releases()
                    )),
                );
                }
            }
            return;
        }
        let (Some(expected), Some(codename)) = (derived, self.vars.get(UBUNTU_CODENAME_VAR)) else {
            return;
        };
        if codename == expected {
            return;
        }
        let codename = codename.clone();
        let codename_from = self.set_by(UBUNTU_CODENAME_VAR, overrides);
        let spot = match self.sources.get(UBUNTU_CODENAME_VAR) {
            Some(VarSource::Recipe) => self.var_spot(entries, UBUNTU_CODENAME_VAR),
            _ => version_spot,
        };
        let hint = if self.sources.get(UBUNTU_CODENAME_VAR) == Some(&VarSource::Recipe) {
            format!(
                "remove `{UBUNTU_CODENAME_VAR}` from the recipe's vars (it is derived from `{UBUNTU_VERSION_VAR}`), or set --var {UBUNTU_CODENAME_VAR}={expected}"
            )
        } else {
            format!(
                "drop the `{UBUNTU_CODENAME_VAR}` setting (it is derived from `{UBUNTU_VERSION_VAR}`), or set it to `{expected}`"
            )
        };
        self.push(
            K::VarConflict,
            spot,
            format!(
                "{codename_from} is `{codename}`, but {version_from} is `{version}`, whose codename is `{expected}`"
            ),
            Some(hint),
        );
    }

    /// How the current value of `var` was set, for messages: `--var ubuntu_version`,
    /// `IMGBAKE_VAR_ubuntu_version`, or `ubuntu_version` (the recipe's).
    fn set_by(&self, var: &str, overrides: &[VarOverride]) -> String {
        let source = self.sources.get(var).copied();
        let winner = overrides
            .iter()
            .rfind(|o| o.key == var && Some(o.source) == source);
        match (source, winner) {
            (Some(VarSource::Cli), _) => format!("--var {var}"),
            (Some(VarSource::Env), Some(o)) => o.env_name.clone().unwrap_or_else(|| var.to_owned()),
            _ => format!("`{var}`"),
        }
    }

    /// Where the recipe sets `var`'s value (or the `vars:` key when it does not).
    fn var_spot(&self, entries: Option<&Entries>, var: &str) -> Spot {
        entries
            .and_then(|e| e.0.iter().find(|(name, _)| name == var))
            .map(|(_, value)| spot(&value.referenced))
            .unwrap_or_else(|| self.vars_spot(entries))
    }

    /// Where the `vars:` key is (for problems about the vars as a whole).
    fn vars_spot(&self, entries: Option<&Entries>) -> Spot {
        let mut offset = 0;
        for line in self.src.text.split_inclusive('\n') {
            if line.starts_with("vars:") || line.starts_with("vars :") {
                return self.src.spot_at_byte(offset, 4);
            }
            offset += line.len();
        }
        match entries.and_then(|e| e.0.first()) {
            Some((name, value)) => self.src.key_before(&value.referenced, name),
            None => Spot::start(),
        }
    }

    // ---- scalar helpers ----------------------------------------------------------------

    /// Substitutes `{{var}}`s in a value, reporting each problem at its own `{{…}}`.
    fn expand(&mut self, key: &str, text: &str, loc: &Location) -> Option<String> {
        match expand(text, &self.vars) {
            Ok(s) => Some(s),
            Err(problems) => {
                let known: Vec<String> = self.vars.keys().cloned().collect();
                for p in problems {
                    match p {
                        TemplateProblem::Undefined { name, token } => {
                            let spot = self.src.find_from(loc, &token);
                            let secret = self
                                .secret_names
                                .iter()
                                .find(|(s, _)| s.eq_ignore_ascii_case(&name))
                                .map(|(s, _)| s.clone());
                            let hint = match did_you_mean(&name, known.iter().map(String::as_str)) {
                                _ if secret.is_some() => format!(
                                    "`{}` is a secret, and secrets are not template vars (their values stay out of every output); scripts read it as ${}",
                                    secret.as_deref().unwrap_or_default(),
                                    secret.as_deref().unwrap_or_default()
                                ),
                                Some(s) => format!(
                                    "did you mean `{{{{{s}}}}}`? or define `{name}` under `vars:`"
                                ),
                                None if known.is_empty() => {
                                    format!("define it: `vars: {{ {name}: … }}`")
                                }
                                None => format!(
                                    "define `{name}` under `vars:` (defined: {})",
                                    known.join(", ")
                                ),
                            };
                            self.push(
                                K::UndefinedVar,
                                spot,
                                format!("`{key}` uses undefined var `{name}`"),
                                Some(hint),
                            );
                        }
                        TemplateProblem::Unterminated { token } => {
                            let spot = self.src.find_from(loc, "{{");
                            self.push(
                                K::BadTemplate,
                                Spot { width: 2, ..spot },
                                format!("`{key}` has `{{{{` without a closing `}}}}` in `{token}`"),
                                Some("close it: `{{name}}`".into()),
                            );
                        }
                        TemplateProblem::BadName { token } => {
                            let spot = self.src.find_from(loc, &token);
                            self.push(
                                K::BadTemplate,
                                spot,
                                format!("`{key}` has `{token}`, which does not name a var"),
                                Some(
                                    "write `{{var_name}}` with a lower_snake_case var name".into(),
                                ),
                            );
                        }
                    }
                }
                None
            }
        }
    }

    /// Expands then parses a value; a rejection is reported at the value.
    fn value<T>(
        &mut self,
        key: &str,
        s: &S,
        parse: impl FnOnce(&str) -> Result<T, Reject>,
    ) -> Option<T> {
        let text = self.expand(key, &s.value, &s.referenced)?;
        match parse(&text) {
            Ok(v) => Some(v),
            Err((kind, message, hint)) => {
                self.push(
                    kind,
                    spot(&s.referenced),
                    format!("`{key}` {message}"),
                    hint,
                );
                None
            }
        }
    }

    fn opt<T>(
        &mut self,
        key: &str,
        s: Option<&S>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, Reject>,
    ) -> Option<T> {
        match s {
            Some(s) => self.value(key, s, parse),
            None => Some(default),
        }
    }

    // ---- sections ----------------------------------------------------------------------

    fn name(&mut self, s: &S) -> Option<String> {
        self.value("name", s, |v| {
            let ok = !v.is_empty()
                && v.len() <= 128
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if ok {
                Ok(v.to_owned())
            } else {
                Err((
                    K::BadValue,
                    format!("`{v}` is not a valid image name"),
                    Some("use letters, digits, `.`, `_` and `-` (it names output files), e.g. `ubuntu-2204-nvidia-565`".into()),
                ))
            }
        })
    }

    fn base(&mut self, url: &S, checksum: &S) -> Option<Base> {
        let dir = self.dir.to_path_buf();
        let location = self.value("base.url", url, |v| parse_location(v, &dir));
        let checksum = self.value("base.checksum", checksum, |v| parse_checksum(v, &dir));
        Some(Base {
            location: location?,
            checksum: checksum?,
        })
    }

    fn vm(&mut self, raw: &crate::raw::RawVm) -> Option<VmSpec> {
        let cpus = self.opt("vm.cpus", raw.cpus.as_ref(), VmSpec::DEFAULT_CPUS, |v| {
            parse_count(v, 1, 512, "cpus")
        });
        let memory = self.opt(
            "vm.memory",
            raw.memory.as_ref(),
            VmSpec::DEFAULT_MEMORY,
            |v| parse_size(v, ByteSize::mib(256), "memory"),
        );
        let disk_size = self.value("vm.disk_size", &raw.disk_size, |v| {
            parse_size(v, ByteSize::gib(1), "disk_size")
        });
        let firmware = self.opt("vm.firmware", raw.firmware.as_ref(), Firmware::Bios, |v| {
            parse_keyword(v, Firmware::KEYWORDS, "firmware")
        });
        let accel = self.opt("vm.accel", raw.accel.as_ref(), AccelChoice::Auto, |v| {
            parse_keyword(v, AccelChoice::KEYWORDS, "accel")
        });
        let machine = self.opt(
            "vm.machine",
            raw.machine.as_ref(),
            VmSpec::DEFAULT_MACHINE.to_owned(),
            |v| {
                if !v.is_empty()
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                {
                    Ok(v.to_owned())
                } else {
                    Err((
                        K::BadValue,
                        format!("`{v}` is not a QEMU machine type"),
                        Some("use a name from `qemu-system-x86_64 -machine help`, e.g. `q35` or `pc`".into()),
                    ))
                }
            },
        );
        let boot_timeout = self.opt(
            "vm.boot_timeout",
            raw.boot_timeout.as_ref(),
            VmSpec::DEFAULT_BOOT_TIMEOUT,
            |v| parse_positive_duration(v, "boot_timeout"),
        );
        Some(VmSpec {
            cpus: cpus?,
            memory: memory?,
            disk_size: disk_size?,
            firmware: firmware?,
            accel: accel?,
            machine: machine?,
            boot_timeout: boot_timeout?,
        })
    }

    fn steps(&mut self, raw: &[serde_saphyr::Spanned<RawStep>]) -> Option<Vec<Step>> {
        if raw.is_empty() {
            // A build with no step has nothing to checkpoint or export from.
            let at = crate::load::top_level_key(self.src, "steps")
                .unwrap_or_else(|| self.src.spot_at_byte(0, 1));
            self.push(
                K::BadValue,
                at,
                "`steps` is empty: a recipe needs at least one step",
                Some("list the scripts to run, e.g. `steps: [scripts/01-update.sh]`".into()),
            );
            return None;
        }
        let mut steps = Vec::with_capacity(raw.len());
        let mut seen: Vec<(StepId, String, u64)> = Vec::new();
        let mut ok = true;
        for (index, item) in raw.iter().enumerate() {
            let key = format!("steps[{index}]");
            let step = match &item.value {
                RawStep::Path(path) => self.step(&key, path, &item.referenced, None),
                RawStep::Table(t) => self.step(
                    &format!("{key}.script"),
                    &t.script.value,
                    &t.script.referenced,
                    Some(t),
                ),
            };
            let Some((step, at)) = step else {
                ok = false;
                continue;
            };
            if let Some((_, first, line)) = seen.iter().find(|(id, ..)| *id == step.id) {
                self.push(
                    K::DuplicateStepId,
                    at,
                    format!(
                        "step id {} is used twice (first by `{first}` on line {line})",
                        step.id
                    ),
                    Some("give each step's script its own two-digit prefix".into()),
                );
                ok = false;
            } else if let Some((last, last_name, _)) = seen.last().filter(|(id, ..)| *id > step.id)
            {
                self.push(
                    K::StepIdOrder,
                    at,
                    format!("step {} (`{}`) comes after step {last} (`{last_name}`)", step.id, step.name),
                    Some("list steps in ascending order of their two-digit prefix, or rename the script".into()),
                );
                ok = false;
            }
            seen.push((step.id, step.name.clone(), at.position.line));
            steps.push(step);
        }
        ok.then_some(steps)
    }

    fn step(
        &mut self,
        key: &str,
        path_text: &str,
        loc: &Location,
        table: Option<&crate::raw::RawStepTable>,
    ) -> Option<(Step, Spot)> {
        let at = spot(loc);
        let path = self.expand(key, path_text, loc)?;
        let script = self.dir.join(&path);
        let file_name = script
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = StepId::from_file_name(&file_name);
        if id.is_none() {
            self.push(
                K::BadStepName,
                at,
                format!("step script `{path}` does not start with a two-digit id"),
                Some("name scripts `NN-what.sh`, e.g. `04-nvidia-driver.sh`; the prefix is the step id".into()),
            );
        }
        let contents = match std::fs::read(&script) {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                let hint = self.missing_script_hint(&script);
                self.push(
                    K::MissingScript,
                    at,
                    format!("step script `{path}` cannot be read: {}", io_reason(&err)),
                    Some(hint),
                );
                None
            }
        };
        let options = match table {
            Some(t) => self.step_options(key.trim_end_matches(".script"), t),
            None => Some((false, Step::DEFAULT_TIMEOUT, BTreeMap::new(), 0)),
        };
        let (reboot, timeout, env, retries) = options?;
        let name = script
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some((
            Step {
                id: id?,
                name,
                script,
                contents: contents?,
                reboot,
                timeout,
                env,
                retries,
            },
            at,
        ))
    }

    fn missing_script_hint(&self, script: &Path) -> String {
        let base = format!(
            "step paths are relative to the recipe's directory ({})",
            self.dir.display()
        );
        let (Some(parent), Some(name)) = (script.parent(), script.file_name()) else {
            return base;
        };
        let siblings: Vec<String> = std::fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        match did_you_mean(&name.to_string_lossy(), siblings.iter().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`? {base}"),
            None => base,
        }
    }

    #[allow(clippy::type_complexity)]
    fn step_options(
        &mut self,
        key: &str,
        t: &crate::raw::RawStepTable,
    ) -> Option<(bool, Duration, BTreeMap<String, String>, u32)> {
        let reboot = self.opt(
            &format!("{key}.reboot"),
            t.reboot.as_ref(),
            false,
            parse_bool,
        );
        let timeout = self.opt(
            &format!("{key}.timeout"),
            t.timeout.as_ref(),
            Step::DEFAULT_TIMEOUT,
            |v| parse_positive_duration(v, "timeout"),
        );
        let retries = self.opt(&format!("{key}.retries"), t.retries.as_ref(), 0, |v| {
            parse_count(v, 0, Step::MAX_RETRIES, "retries")
        });
        let mut env = BTreeMap::new();
        let mut env_ok = true;
        for (name, value) in t.env.as_ref().map(|e| e.0.as_slice()).unwrap_or_default() {
            if !is_env_name(name) {
                let spot = self.src.key_before(&value.referenced, name);
                self.push(
                    K::BadValue,
                    spot,
                    format!("`{key}.env` key `{name}` is not an environment variable name"),
                    Some("use letters, digits and `_`, not starting with a digit, e.g. `DEBIAN_FRONTEND`".into()),
                );
                env_ok = false;
            } else if self.secret_names.iter().any(|(s, _)| s == name) {
                let spot = self.src.key_before(&value.referenced, name);
                self.push(
                    K::BadSecret,
                    spot,
                    format!("`{key}.env` key `{name}` is also one of the recipe's secrets"),
                    Some(format!("remove `{name}` from the step's env: every step gets the secret {name} already")),
                );
                env_ok = false;
            }
            match self.expand(
                &format!("{key}.env.{name}"),
                &value.value,
                &value.referenced,
            ) {
                Some(v) => {
                    env.insert(name.clone(), v);
                }
                None => env_ok = false,
            }
        }
        Some((reboot?, timeout?, env_ok.then_some(env)?, retries?))
    }

    /// `secrets:`: environment variable names, each once, none a var's name or reserved.
    fn secrets(&mut self, raw: Option<&[S]>, vars: Option<&Entries>) -> Option<Vec<String>> {
        let raw = raw.unwrap_or_default();
        self.secret_names = raw
            .iter()
            .map(|s| (s.value.clone(), spot(&s.referenced)))
            .collect();
        let var_names: Vec<&str> = vars
            .map(|e| e.0.iter().map(|(name, _)| name.as_str()).collect())
            .unwrap_or_default();
        let mut names: Vec<(String, u64)> = Vec::new();
        let mut ok = true;
        for (i, s) in raw.iter().enumerate() {
            let name = s.value.as_str();
            let at = spot(&s.referenced);
            let problem = if !is_env_name(name) {
                Some((
                    format!("`secrets[{i}]` `{name}` is not an environment variable name"),
                    "use letters, digits and `_`, not starting with a digit, e.g. `GITHUB_TOKEN` (steps see the secret under this name)".to_owned(),
                ))
            } else if name.to_ascii_uppercase().starts_with("IMGBAKE_") {
                Some((
                    format!("secret `{name}`: names starting with IMGBAKE_ are imgbake's own"),
                    "rename the secret, e.g. `GITHUB_TOKEN`".to_owned(),
                ))
            } else if let Some((_, line)) = names.iter().find(|(n, _)| n == name) {
                Some((
                    format!("secret `{name}` is listed twice (first on line {line})"),
                    "list each secret once".to_owned(),
                ))
            } else {
                var_names
                    .iter()
                    .find(|v| v.eq_ignore_ascii_case(name))
                    .map(|var| {
                        (
                            format!(
                                "secret `{name}` clashes with var `{var}` (scripts would see both as ${})",
                                name.to_ascii_uppercase()
                            ),
                            format!(
                                "a secret's value never belongs in the recipe: remove `{var}` from `vars:`, or rename one of them"
                            ),
                        )
                    })
            };
            match problem {
                Some((message, hint)) => {
                    self.push(K::BadSecret, at, message, Some(hint));
                    ok = false;
                }
                None => names.push((name.to_owned(), at.position.line)),
            }
        }
        ok.then(|| names.into_iter().map(|(n, _)| n).collect())
    }

    fn export(&mut self, raw: Option<&crate::raw::RawExport>) -> Option<ExportSpec> {
        let Some(formats) = raw.and_then(|r| r.formats.as_ref()) else {
            return Some(ExportSpec::default());
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, f) in formats.iter().enumerate() {
            let key = format!("export.formats[{i}]");
            let seen = out.clone();
            match self.value(&key, f, |v| {
                let format = parse_keyword::<ExportFormat>(v, ExportFormat::KEYWORDS, "formats")?;
                if seen.contains(&format) {
                    Err((
                        K::BadValue,
                        format!("lists `{format}` twice"),
                        Some("list each format once".into()),
                    ))
                } else {
                    Ok(format)
                }
            }) {
                Some(format) => out.push(format),
                None => ok = false,
            }
        }
        if ok && !out.contains(&ExportFormat::Raw) {
            let at = formats
                .first()
                .map_or_else(Spot::start, |f| spot(&f.referenced));
            self.push(
                K::BadValue,
                at,
                "`export.formats` must include `raw`",
                Some(
                    "RAW is what imgbake verifies and uploads; write `formats: [raw, qcow2]`"
                        .into(),
                ),
            );
            ok = false;
        }
        ok.then_some(ExportSpec { formats: out })
    }

    fn verify(&mut self, raw: Option<&crate::raw::RawVerify>) -> Option<VerifySpec> {
        let Some(raw) = raw else {
            return Some(VerifySpec::default());
        };
        let hygiene = self.opt("verify.hygiene", raw.hygiene.as_ref(), true, parse_bool);
        let nvidia = match &raw.nvidia {
            None => Some(None),
            Some(n) => {
                let fw = match &n.enable_gpu_firmware {
                    None => Some(None),
                    Some(s) => self
                        .value("verify.nvidia.enable_gpu_firmware", s, parse_firmware_value)
                        .map(Some),
                };
                let branch = match &n.driver_branch {
                    None => Some(None),
                    Some(s) => self
                        .value("verify.nvidia.driver_branch", s, |v| {
                            if !v.is_empty()
                                && v.len() <= 4
                                && v.bytes().all(|b| b.is_ascii_digit())
                            {
                                Ok(v.to_owned())
                            } else {
                                Err((
                                    K::BadValue,
                                    format!("`{v}` is not a driver branch"),
                                    Some(
                                        "a branch is the driver's major version, e.g. `\"565\"`"
                                            .into(),
                                    ),
                                ))
                            }
                        })
                        .map(Some),
                };
                let mut models = Some(Vec::new());
                for (i, m) in n.gpu_models.iter().flatten().enumerate() {
                    let parsed = self.value(&format!("verify.nvidia.gpu_models[{i}]"), m, |v| {
                        if v.trim().is_empty() {
                            Err((K::BadValue, "is empty".into(), hint_example("models")))
                        } else {
                            Ok(v.trim().to_owned())
                        }
                    });
                    match (parsed, models.as_mut()) {
                        (Some(m), Some(list)) => list.push(m),
                        _ => models = None,
                    }
                }
                match (fw, branch, models) {
                    (Some(enable_gpu_firmware), Some(driver_branch), Some(gpu_models)) => {
                        Some(Some(NvidiaExpect {
                            enable_gpu_firmware,
                            driver_branch,
                            gpu_models,
                        }))
                    }
                    _ => None,
                }
            }
        };
        Some(VerifySpec {
            nvidia: nvidia?,
            hygiene: hygiene?,
        })
    }

    /// `test:`: each command with its vars expanded; an empty command is an error.
    fn test(&mut self, raw: Option<&[S]>) -> Option<Vec<String>> {
        let mut commands = Vec::new();
        let mut ok = true;
        for (i, s) in raw.unwrap_or_default().iter().enumerate() {
            let key = format!("test[{i}]");
            let command = self.value(&key, s, |v| {
                if v.trim().is_empty() {
                    Err((
                        K::BadValue,
                        "is empty".to_owned(),
                        Some("write a shell command that exits 0 when the image is good, e.g. `\"systemctl is-active ssh\"`".into()),
                    ))
                } else {
                    Ok(v.to_owned())
                }
            });
            match command {
                Some(c) => commands.push(c),
                None => ok = false,
            }
        }
        ok.then_some(commands)
    }

    fn payload(
        &mut self,
        raw: Option<&crate::raw::RawPayload>,
        recipe_name: Option<&str>,
    ) -> Option<PayloadSpec> {
        let default_name = recipe_name.unwrap_or_default().to_owned();
        let Some(raw) = raw else {
            return Some(PayloadSpec {
                name: default_name,
                virtualization: Virtualization::Virtualized,
                gpu: None,
            });
        };
        let name = match &raw.name {
            Some(s) => self.value("payload.name", s, |v| {
                if v.trim().is_empty() {
                    Err((K::BadValue, "is empty".into(), hint_example("name")))
                } else {
                    api_name(v, false)
                }
            }),
            None => Some(default_name),
        };
        let virtualization = self.opt(
            "payload.virtualization",
            raw.virtualization.as_ref(),
            Virtualization::Virtualized,
            |v| parse_keyword(v, Virtualization::KEYWORDS, "virtualization"),
        );
        let gpu = match &raw.gpu {
            None => Some(None),
            Some(g) => {
                let vendor = self.value("payload.gpu.vendor", &g.vendor, |v| {
                    parse_keyword(v, GpuVendor::KEYWORDS, "vendor")
                });
                let mut models = Vec::new();
                let mut ok = true;
                for (i, m) in g.models.iter().enumerate() {
                    match self.value(&format!("payload.gpu.models[{i}]"), m, |v| {
                        if v.trim().is_empty() {
                            Err((K::BadValue, "is empty".into(), hint_example("models")))
                        } else {
                            Ok(v.trim().to_owned())
                        }
                    }) {
                        Some(m) => models.push(m),
                        None => ok = false,
                    }
                }
                if ok && models.is_empty() {
                    // No element to point at: point at the vendor line, the gpu's first key.
                    self.push(
                        K::BadValue,
                        spot(&g.vendor.referenced),
                        "`payload.gpu.models` is empty",
                        hint_example("models"),
                    );
                    ok = false;
                }
                match (vendor, ok) {
                    (Some(vendor), true) => Some(Some(GpuSpec { vendor, models })),
                    _ => None,
                }
            }
        };
        Some(PayloadSpec {
            name: name?,
            virtualization: virtualization?,
            gpu: gpu?,
        })
    }
}

// ---- value parsers (pure) ------------------------------------------------------------------

/// The region API's image name rule (`metadata.name`, pattern
/// `^[0-9A-Za-z](?:[0-9A-Za-z-_.]{0,61}[0-9A-Za-z])?$`): checked here so a recipe the API
/// would answer 400 fails at `validate`, not after an hour of baking. `recipe_name`: the
/// value is the top-level `name` (so `payload.name` is a way out).
fn api_name(v: &str, recipe_name: bool) -> Result<String, Reject> {
    const MAX: usize = 63;
    let len = v.chars().count();
    let bad = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)));
    let problem = if len > MAX {
        Some(format!(
            "is {len} characters; the region API takes at most {MAX}"
        ))
    } else if let Some(c) = bad {
        Some(format!(
            "`{v}` has `{c}`; the region API takes letters, digits, `-`, `_` and `.`"
        ))
    } else if !v.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !v.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        Some(format!(
            "`{v}` must start and end with a letter or digit for the region API"
        ))
    } else {
        None
    };
    let Some(message) = problem else {
        return Ok(v.to_owned());
    };
    let mut hint = format!(
        "use at most {MAX} letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit, e.g. `ubuntu-2204-nvidia-580`"
    );
    if recipe_name {
        hint.push_str(", or give the image another name with `payload.name`");
    }
    Err((K::BadValue, message, Some(hint)))
}

fn io_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::IsADirectory => "it is a directory".to_owned(),
        _ => err.to_string().to_lowercase(),
    }
}

fn parse_bool(v: &str) -> Result<bool, Reject> {
    match v {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        _ => Err((
            K::WrongType,
            format!("must be true or false, not `{v}`"),
            Some(
                "YAML 1.1 spellings like yes/no/on/off are not accepted; write true or false"
                    .into(),
            ),
        )),
    }
}

fn parse_count(v: &str, min: u32, max: u32, key: &str) -> Result<u32, Reject> {
    match v.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err((
            K::BadValue,
            format!("must be a whole number from {min} to {max}, not `{v}`"),
            hint_example(key),
        )),
    }
}

fn parse_size(v: &str, min: ByteSize, key: &str) -> Result<ByteSize, Reject> {
    let size: ByteSize = v.parse().map_err(|e: SizeError| {
        let hint = match &e {
            SizeError::NoUnit(_) => format!("add a unit: `{v}G` or `{v}M`"),
            SizeError::DecimalUnit(_) => format!(
                "units are binary (K, M, G, T = powers of 1024): write `{}`",
                v.trim_end_matches(['B', 'b'])
            ),
            _ => "write a whole number with a binary unit K, M, G or T, e.g. `512M` or `25G`"
                .to_owned(),
        };
        (K::BadSize, format!("is not a valid size: {e}"), Some(hint))
    })?;
    if size < min {
        return Err((
            K::BadSize,
            format!("is {size}, below the minimum of {min}"),
            hint_example(key),
        ));
    }
    if !size.as_u64().is_multiple_of(1 << 20) {
        return Err((
            K::BadSize,
            format!("is {size}, not a whole number of MiB"),
            Some("round it to a multiple of 1M".into()),
        ));
    }
    Ok(size)
}

fn parse_positive_duration(v: &str, key: &str) -> Result<Duration, Reject> {
    match parse_duration(v) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err((
            K::BadDuration,
            "must be longer than zero".into(),
            hint_example(key),
        )),
        Err(e) => Err((
            K::BadDuration,
            format!("is not a duration: `{v}` ({e})"),
            Some(format!(
                "write a number with a unit: s, m, h (e.g. `{}`)",
                example_for(key)
                    .and_then(|e| e.split(": ").nth(1))
                    .unwrap_or("30m")
            )),
        )),
    }
}

fn parse_keyword<T: std::str::FromStr>(v: &str, keywords: &[&str], key: &str) -> Result<T, Reject> {
    v.parse::<T>().map_err(|_| {
        (
            K::BadValue,
            format!("must be one of {}, not `{v}`", keywords.join(", ")),
            Some(format!(
                "{}for example `{}`",
                did_you_mean_prefix(v, keywords.iter().copied()),
                example_for(key).map_or_else(|| format!("{key}: {}", keywords[0]), str::to_owned)
            )),
        )
    })
}

fn parse_firmware_value(v: &str) -> Result<u32, Reject> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => v.parse::<u32>().ok(),
    };
    match parsed {
        Some(n) if n <= 0xff => Ok(n),
        _ => Err((
            K::BadValue,
            format!("must be a number from 0 to 255 (decimal or 0x hex), not `{v}`"),
            Some(
                "1 forces GSP firmware on; 18 (0x12) is the driver's default; see docs/recipes.md"
                    .into(),
            ),
        )),
    }
}

/// A base or SHA256SUMS location: `http(s)://…`, `file://…`, or a path (relative to `dir`).
fn parse_location(v: &str, dir: &Path) -> Result<BaseLocation, Reject> {
    let bad = |msg: String| {
        (
            K::BadUrl,
            msg,
            Some(
                "use an https://, http:// or file:// URL, or a path relative to the recipe".into(),
            ),
        )
    };
    if v.trim().is_empty() {
        return Err(bad("is empty".into()));
    }
    if !v.contains("://") {
        return Ok(BaseLocation::File(dir.join(v)));
    }
    let url = url::Url::parse(v).map_err(|e| bad(format!("is not a valid URL: `{v}` ({e})")))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(BaseLocation::Http(url)),
        "http" | "https" => Err(bad(format!("has no host: `{v}`"))),
        "file" => url
            .to_file_path()
            .map(BaseLocation::File)
            .map_err(|()| bad(format!("is not a local file URL: `{v}`"))),
        other => Err(bad(format!("uses unsupported scheme `{other}`: `{v}`"))),
    }
}

fn parse_checksum(v: &str, dir: &Path) -> Result<Checksum, Reject> {
    let form_hint =
        Some("write `sha256:<64 hex digits>` or `file:<SHA256SUMS url or path>`".to_owned());
    if let Some(hex) = v.strip_prefix("sha256:") {
        return hex
            .trim()
            .parse::<Sha256>()
            .map(Checksum::Sha256)
            .map_err(|_| {
                (
                    K::BadChecksum,
                    format!(
                        "has `sha256:` followed by {} characters that are not 64 hex digits",
                        hex.trim().chars().count()
                    ),
                    Some("copy the digest from SHA256SUMS or `sha256sum IMAGE`".into()),
                )
            });
    }
    if let Some(location) = v.strip_prefix("file:") {
        return parse_location(location, dir).map(Checksum::SumsFile);
    }
    if v.parse::<Sha256>().is_ok() {
        return Err((
            K::BadChecksum,
            "is a bare digest".into(),
            Some(format!("prefix it: `sha256:{v}`")),
        ));
    }
    let shown: String = v.chars().take(40).collect();
    Err((
        K::BadChecksum,
        format!("must start with `sha256:` or `file:`, not `{shown}`"),
        form_hint,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_name_follows_the_region_api_pattern() {
        let ok = |v: &str| api_name(v, true).is_ok();
        assert!(ok("a"));
        assert!(ok("ubuntu-22.04_nvidia-580"));
        assert!(ok(&"a".repeat(63)));
        assert!(!ok(&"a".repeat(64)));
        assert!(!ok("-a"));
        assert!(!ok("a."));
        assert!(!ok("a b"));
        assert!(!ok("ubuntu/2204"));
        assert!(!ok(""));
    }
    use std::path::PathBuf;

    #[test]
    fn locations() {
        let dir = Path::new("/r");
        assert!(matches!(
            parse_location("https://x/y.img", dir),
            Ok(BaseLocation::Http(_))
        ));
        assert_eq!(
            parse_location("img/a.qcow2", dir).unwrap(),
            BaseLocation::File(PathBuf::from("/r/img/a.qcow2"))
        );
        assert_eq!(
            parse_location("file:///abs/a.img", dir).unwrap(),
            BaseLocation::File(PathBuf::from("/abs/a.img"))
        );
        assert_eq!(parse_location("ftp://x/y", dir).unwrap_err().0, K::BadUrl);
        assert_eq!(parse_location("https://", dir).unwrap_err().0, K::BadUrl);
    }

    #[test]
    fn checksums() {
        let dir = Path::new("/r");
        let hex = "a".repeat(64);
        assert!(matches!(
            parse_checksum(&format!("sha256:{hex}"), dir),
            Ok(Checksum::Sha256(_))
        ));
        assert!(matches!(
            parse_checksum("file:https://x/SHA256SUMS", dir),
            Ok(Checksum::SumsFile(BaseLocation::Http(_)))
        ));
        assert_eq!(parse_checksum(&hex, dir).unwrap_err().0, K::BadChecksum);
        assert_eq!(
            parse_checksum("sha256:abc", dir).unwrap_err().0,
            K::BadChecksum
        );
        assert_eq!(
            parse_checksum("md5:abc", dir).unwrap_err().0,
            K::BadChecksum
        );
    }

    #[test]
    fn firmware_values() {
        assert_eq!(parse_firmware_value("1"), Ok(1));
        assert_eq!(parse_firmware_value("0x11"), Ok(17));
        assert!(parse_firmware_value("256").is_err());
        assert!(parse_firmware_value("on").is_err());
    }
}
