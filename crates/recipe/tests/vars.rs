//! Vars as users set them: `ubuntu_version` alone picks the codename, `IMGBAKE_VAR_<name>`
//! from the environment, `--var` over the environment over the recipe, and each value's
//! source.

use std::path::PathBuf;

use recipe::{DiagnosticKind, Error, Recipe, VarOverride, VarSource, env_overrides};

fn recipe_path(name: &str) -> PathBuf {
    test_support::workspace_root().join("recipes").join(name)
}

fn cli(args: &[&str]) -> Vec<VarOverride> {
    args.iter().map(|s| s.parse().unwrap()).collect()
}

/// The 1-based line of `recipes/<name>` that starts with `prefix` (after indentation).
fn line_of(name: &str, prefix: &str) -> u64 {
    let text = std::fs::read_to_string(recipe_path(name)).unwrap();
    let index = text
        .lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("{name} has no line starting with {prefix}"));
    index as u64 + 1
}

fn only_diagnostic(err: Error) -> recipe::Diagnostic {
    match err {
        Error::Invalid {
            mut diagnostics, ..
        } => {
            assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
            diagnostics.remove(0)
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn ubuntu_version_alone_selects_the_codename_in_both_recipes() {
    for name in ["nvidia-fw1.yaml", "gpu-ready.yaml"] {
        let r = Recipe::load(&recipe_path(name), &cli(&["ubuntu_version=24.04"])).unwrap();
        assert_eq!(r.vars["ubuntu_codename"], "noble", "{name}");
        assert_eq!(
            r.base.location.to_string(),
            "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
            "{name}"
        );
        assert!(r.name.starts_with("ubuntu-24.04-"), "{name}: {}", r.name);
        assert_eq!(r.var_sources["ubuntu_version"], VarSource::Cli);
        assert_eq!(r.var_sources["ubuntu_codename"], VarSource::Derived);
        // Scripts see the derived var like any other.
        assert_eq!(r.step_env(&r.steps[0])["UBUNTU_CODENAME"], "noble");

        let r = Recipe::load(&recipe_path(name), &[]).unwrap();
        assert_eq!(r.vars["ubuntu_codename"], "jammy", "{name}");
        assert_eq!(r.var_sources["ubuntu_version"], VarSource::Recipe);
        assert_eq!(r.var_sources["ubuntu_codename"], VarSource::Derived);
        assert_eq!(
            r.vars.keys().collect::<Vec<_>>(),
            r.var_sources.keys().collect::<Vec<_>>()
        );
    }
}

#[test]
fn cli_beats_env_beats_recipe_whatever_the_order() {
    let env = env_overrides([
        ("IMGBAKE_VAR_nvidia_driver_branch", "580"),
        ("IMGBAKE_VAR_KUBERNETES_VERSION", "v1.31.2"),
        ("HOME", "/root"),
    ])
    .unwrap();
    let from_cli = cli(&["nvidia_driver_branch=565"]);
    // The --var is given first: precedence must not depend on the order.
    let overrides: Vec<VarOverride> = from_cli.into_iter().chain(env).collect();
    let r = Recipe::load(&recipe_path("nvidia-fw1.yaml"), &overrides).unwrap();
    let got = |k: &str| (r.vars[k].as_str(), r.var_sources[k]);
    assert_eq!(got("nvidia_driver_branch"), ("565", VarSource::Cli));
    assert_eq!(got("kubernetes_version"), ("v1.31.2", VarSource::Env));
    assert_eq!(
        got("nvidia_kernel_modules"),
        ("proprietary", VarSource::Recipe)
    );
    assert_eq!(got("ubuntu_codename"), ("jammy", VarSource::Derived));
    assert_eq!(
        r.step_env(r.step(&"03".parse().unwrap()).unwrap())["KUBERNETES_VERSION"],
        "v1.31.2"
    );
    assert!(r.ignored_env.is_empty());
}

#[test]
fn env_sets_the_ubuntu_version_and_the_codename_follows() {
    let env = env_overrides([("IMGBAKE_VAR_UBUNTU_VERSION", "20.04")]).unwrap();
    let r = Recipe::load(&recipe_path("gpu-ready.yaml"), &env).unwrap();
    assert_eq!(r.vars["ubuntu_version"], "20.04");
    assert_eq!(r.vars["ubuntu_codename"], "focal");
    assert_eq!(r.var_sources["ubuntu_version"], VarSource::Env);
}

#[test]
fn env_vars_for_other_recipes_are_ignored_but_a_cli_typo_is_an_error() {
    // gpu-ready has no driver vars; the same shell may be used for both recipes.
    let env = env_overrides([("IMGBAKE_VAR_nvidia_driver_branch", "580")]).unwrap();
    let r = Recipe::load(&recipe_path("gpu-ready.yaml"), &env).unwrap();
    assert!(!r.vars.contains_key("nvidia_driver_branch"));
    assert_eq!(r.ignored_env, ["IMGBAKE_VAR_nvidia_driver_branch"]);

    let err = Recipe::load(
        &recipe_path("gpu-ready.yaml"),
        &cli(&["nvidia_driver_branch=580"]),
    )
    .unwrap_err();
    let d = only_diagnostic(err);
    assert_eq!(d.kind, DiagnosticKind::UnknownVarOverride);
    assert!(
        d.hint.unwrap().contains("ubuntu_codename"),
        "derived vars are known vars"
    );
}

#[test]
fn an_unknown_version_is_an_error_at_the_recipes_line_listing_the_known_ones() {
    let path = recipe_path("nvidia-fw1.yaml");
    let err = Recipe::load(&path, &cli(&["ubuntu_version=26.04"])).unwrap_err();
    let d = only_diagnostic(err);
    assert_eq!(d.kind, DiagnosticKind::UnknownUbuntuVersion);
    assert_eq!(
        d.position.line,
        line_of("nvidia-fw1.yaml", "ubuntu_version:")
    );
    let text = d.to_string();
    let prefix = format!("{}:{}:", path.display(), d.position.line);
    assert!(text.starts_with(&prefix), "{text}");
    assert!(
        text.contains("--var ubuntu_version: no known Ubuntu codename for version `26.04`"),
        "{text}"
    );
    let hint = d.hint.unwrap();
    for known in [
        "20.04 (focal)",
        "22.04 (jammy)",
        "24.04 (noble)",
        "24.10 (oracular)",
        "25.04 (plucky)",
        "25.10 (questing)",
    ] {
        assert!(hint.contains(known), "{hint}");
    }
    assert!(hint.contains("--var ubuntu_codename="), "{hint}");

    // Set from the environment, the message names the environment variable.
    let env = env_overrides([("IMGBAKE_VAR_ubuntu_version", "26.04")]).unwrap();
    let d = only_diagnostic(Recipe::load(&path, &env).unwrap_err());
    assert!(
        d.message.starts_with("IMGBAKE_VAR_ubuntu_version: "),
        "{}",
        d.message
    );
}

#[test]
fn an_explicit_codename_wins_and_allows_any_version() {
    let r = Recipe::load(
        &recipe_path("gpu-ready.yaml"),
        &cli(&["ubuntu_version=26.04", "ubuntu_codename=resolute"]),
    )
    .unwrap();
    assert_eq!(r.vars["ubuntu_codename"], "resolute");
    assert_eq!(r.var_sources["ubuntu_codename"], VarSource::Cli);
    assert!(r.base.location.to_string().contains("/resolute/current/"));
}

#[test]
fn a_codename_that_contradicts_the_version_is_an_error() {
    let err = Recipe::load(
        &recipe_path("gpu-ready.yaml"),
        &cli(&["ubuntu_version=24.04", "ubuntu_codename=jammy"]),
    )
    .unwrap_err();
    let d = only_diagnostic(err);
    assert_eq!(d.kind, DiagnosticKind::VarConflict);
    assert_eq!(
        d.message,
        "--var ubuntu_codename is `jammy`, but --var ubuntu_version is `24.04`, whose codename is `noble`"
    );
}

#[test]
fn a_recipe_may_still_set_its_codename() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    std::fs::write(dir.path().join("scripts/01-a.sh"), "true\n").unwrap();
    let yaml = "\
name: t
vars:
  ubuntu_version: \"22.04\"
  ubuntu_codename: jammy
base:
  url: https://cloud-images.ubuntu.com/{{ubuntu_codename}}/current/x.img
  checksum: file:https://cloud-images.ubuntu.com/{{ubuntu_codename}}/current/SHA256SUMS
vm: { disk_size: 20G }
steps: [scripts/01-a.sh]
";
    let path = dir.path().join("t.yaml");
    let r = Recipe::from_source(&path, yaml, &[]).unwrap();
    assert_eq!(r.var_sources["ubuntu_codename"], VarSource::Recipe);
    // Overriding only the version would leave the recipe's codename stale: an error at the
    // codename's line, saying what to do.
    let d = only_diagnostic(
        Recipe::from_source(&path, yaml, &cli(&["ubuntu_version=24.04"])).unwrap_err(),
    );
    assert_eq!(d.kind, DiagnosticKind::VarConflict);
    assert_eq!(d.position.line, 4);
    assert!(
        d.hint
            .unwrap()
            .contains("remove `ubuntu_codename` from the recipe's vars")
    );
}
