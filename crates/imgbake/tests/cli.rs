//! The `imgbake` binary: validate and plan on the shipped recipes and the malformed corpus,
//! exit codes, JSON output and help text.

use assert_cmd::Command;

mod cli_register;

fn imgbake() -> Command {
    let mut cmd = Command::cargo_bin("imgbake").unwrap();
    cmd.current_dir(test_support::workspace_root())
        .env_remove("NO_COLOR")
        .env_remove("IMGBAKE_LOG");
    // Recipe vars set in the caller's environment must not leak into the tests.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IMGBAKE_VAR_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Replaces checkpoint keys (16 or 64 hex digits) so snapshots survive script edits.
fn redact_keys(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_inclusive(|c: char| !c.is_ascii_hexdigit()) {
        let hex_len = word
            .trim_end_matches(|c: char| !c.is_ascii_hexdigit())
            .len();
        if hex_len == 16 || hex_len == 64 {
            out.push_str(&"#".repeat(hex_len));
            out.push_str(&word[hex_len..]);
        } else {
            out.push_str(word);
        }
    }
    out
}

#[test]
fn validate_accepts_the_shipped_recipes() {
    let out = imgbake()
        .args([
            "validate",
            "recipes/gpu-ready.yaml",
            "recipes/nvidia-fw1.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "ok recipes/gpu-ready.yaml\nok recipes/nvidia-fw1.yaml\n"
    );
    assert_eq!(stderr(&out), "");
}

#[test]
fn validate_reports_each_problem_with_location_and_fix() {
    let out = imgbake()
        .args([
            "validate",
            "fixtures/recipes/invalid/unknown-vm-key.yaml",
            "recipes/gpu-ready.yaml",
            "fixtures/recipes/invalid/many-problems.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "ok recipes/gpu-ready.yaml\n");
    insta::assert_snapshot!(stderr(&out));
}

#[test]
fn validate_json_lists_problems_by_kind() {
    let out = imgbake()
        .args([
            "validate",
            "--json",
            "recipes/gpu-ready.yaml",
            "fixtures/recipes/invalid/step-id-order.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let recipes = doc["recipes"].as_array().unwrap();
    assert_eq!(recipes[0]["ok"], true);
    assert_eq!(recipes[1]["ok"], false);
    let problem = &recipes[1]["problems"][0];
    assert_eq!(problem["kind"], "step_id_order");
    assert_eq!(problem["line"], 14);
    assert_eq!(problem["column"], 5);
    assert!(problem["hint"].as_str().unwrap().contains("ascending"));
}

#[test]
fn plan_shows_the_seven_steps_of_nvidia_fw1() {
    let out = imgbake()
        .args(["plan", "recipes/nvidia-fw1.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("7 steps:"), "{text}");
    insta::assert_snapshot!(redact_keys(&text));
}

#[test]
fn plan_json_is_one_stable_document() {
    let out = imgbake()
        .args([
            "plan",
            "--json",
            "recipes/nvidia-fw1.yaml",
            "--var",
            "nvidia_driver_branch=580",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["format"], "imgbake-plan/1");
    assert_eq!(doc["name"], "ubuntu-22.04-nvidia-580-firmware1");
    assert_eq!(doc["vm"]["disk_size_bytes"], 25u64 << 30);
    assert_eq!(doc["verify"]["nvidia"]["driver_branch"], "580");
    assert_eq!(doc["var_sources"]["nvidia_driver_branch"], "cli");
    assert_eq!(doc["var_sources"]["ubuntu_version"], "recipe");
    assert_eq!(doc["var_sources"]["ubuntu_codename"], "derived");
    assert_eq!(doc["vars"]["ubuntu_codename"], "jammy");
    assert_eq!(doc["ignored_env"], serde_json::json!([]));
    assert_eq!(doc["checkpoint"]["provisional"], true);
    let steps = doc["steps"].as_array().unwrap();
    let ids: Vec<&str> = steps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["01", "02", "03", "04", "05", "06", "99"]);
    assert_eq!(steps[3]["reboot"], true);
    assert_eq!(steps[3]["timeout_secs"], 2700);
    assert_eq!(steps[3]["key_env"]["NVIDIA_DRIVER_BRANCH"], "580");
    for s in steps {
        let key = s["checkpoint_key"].as_str().unwrap();
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    // Keys chain: the same input gives the same document.
    let again = imgbake()
        .args([
            "plan",
            "--json",
            "recipes/nvidia-fw1.yaml",
            "--var",
            "nvidia_driver_branch=580",
        ])
        .output()
        .unwrap();
    assert_eq!(out.stdout, again.stdout);
}

#[test]
fn plan_shows_where_each_var_came_from() {
    let out = imgbake()
        .args([
            "plan",
            "recipes/gpu-ready.yaml",
            "--var",
            "kubernetes_version=v1.31",
        ])
        .env("IMGBAKE_VAR_ubuntu_version", "24.04")
        .env("IMGBAKE_VAR_KUBERNETES_VERSION", "v1.29.3")
        .env("IMGBAKE_VAR_nvidia_driver_branch", "580")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("/noble/current/noble-server-cloudimg-amd64.img"),
        "{text}"
    );
    insta::assert_snapshot!(redact_keys(&text));

    let out = imgbake()
        .args([
            "plan",
            "--json",
            "recipes/gpu-ready.yaml",
            "--var",
            "kubernetes_version=v1.31",
        ])
        .env("IMGBAKE_VAR_ubuntu_version", "24.04")
        .env("IMGBAKE_VAR_KUBERNETES_VERSION", "v1.29.3")
        .env("IMGBAKE_VAR_nvidia_driver_branch", "580")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["vars"],
        serde_json::json!({
            "kubernetes_version": "v1.31",
            "ubuntu_codename": "noble",
            "ubuntu_version": "24.04",
        })
    );
    assert_eq!(
        doc["var_sources"],
        serde_json::json!({
            "kubernetes_version": "cli",
            "ubuntu_codename": "derived",
            "ubuntu_version": "env",
        })
    );
    assert_eq!(
        doc["ignored_env"],
        serde_json::json!(["IMGBAKE_VAR_nvidia_driver_branch"])
    );
}

#[test]
fn an_unknown_ubuntu_version_is_an_error_with_the_known_ones() {
    let out = imgbake()
        .args(["plan", "recipes/nvidia-fw1.yaml"])
        .env("IMGBAKE_VAR_ubuntu_version", "26.04")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("recipes/nvidia-fw1.yaml:11:19: IMGBAKE_VAR_ubuntu_version: no known Ubuntu codename for version `26.04`"),
        "{err}"
    );
    assert!(err.contains("24.04 (noble)"), "{err}");
}

#[test]
fn a_bad_var_environment_variable_is_a_usage_error() {
    let out = imgbake()
        .args(["plan", "recipes/gpu-ready.yaml"])
        .env("IMGBAKE_VAR_Ubuntu_Version", "24.04")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("IMGBAKE_VAR_Ubuntu_Version"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_var_names_the_recipe_and_the_known_vars() {
    let out = imgbake()
        .args([
            "plan",
            "recipes/gpu-ready.yaml",
            "--var",
            "ubuntu_codenam=noble",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "");
    insta::assert_snapshot!(stderr(&out));
}

#[test]
fn a_malformed_var_is_a_usage_error() {
    let out = imgbake()
        .args(["plan", "recipes/gpu-ready.yaml", "--var", "ubuntu_codename"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not of the form name=value"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_recipe_prints_the_error_chain_once() {
    let out = imgbake()
        .args(["plan", "recipes/no-such.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    insta::assert_snapshot!(stderr(&out));
}

#[test]
fn colour_follows_the_color_flag() {
    let args = ["validate", "fixtures/recipes/invalid/bad-cpus.yaml"];
    let plain = imgbake().args(args).output().unwrap();
    assert!(!stderr(&plain).contains('\x1b'));
    let coloured = imgbake()
        .args(["--color", "always"])
        .args(args)
        .output()
        .unwrap();
    assert!(stderr(&coloured).contains("\x1b[1;31merror:\x1b[0m"));
    let never = imgbake()
        .args(["--color", "never"])
        .args(args)
        .env("NO_COLOR", "")
        .output()
        .unwrap();
    assert!(!stderr(&never).contains('\x1b'));
}

#[test]
fn every_command_has_a_man_page_style_help() {
    for cmd in [
        &["--help"][..],
        &["validate", "--help"],
        &["plan", "--help"],
    ] {
        let out = imgbake().args(cmd).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let text = stdout(&out);
        for section in [
            "Usage:",
            "EXAMPLES:",
            "EXIT STATUS:",
            "    3  a recipe is invalid",
        ] {
            assert!(
                text.contains(section),
                "{cmd:?} help lacks {section:?}:\n{text}"
            );
        }
    }
    // The EXIT STATUS list grows with other commands; snapshot what `plan` owns.
    let out = imgbake().args(["plan", "--help"]).output().unwrap();
    let text = stdout(&out);
    insta::assert_snapshot!(text.split("EXIT STATUS:").next().unwrap());
}

#[test]
fn no_arguments_is_a_usage_error() {
    let out = imgbake().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = imgbake().arg("validate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Issue 15: `plan` names the secrets and never shows a value; the checkpoint key of the step
/// using one covers its name.
#[test]
fn plan_shows_secret_names_never_values() {
    let value = "plan-must-not-show-this-value";
    let out = imgbake()
        .args(["plan", "fixtures/recipes/smoke.yaml"])
        .env("SMOKE_SECRET", value)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(value), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("secrets") && l.contains("SMOKE_SECRET=<secret>  environment")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("env: ") && l.ends_with(" SMOKE_SECRET=<secret>")),
        "{text}"
    );

    let out = imgbake()
        .args(["plan", "--json", "fixtures/recipes/smoke.yaml"])
        .env("SMOKE_SECRET", value)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains(value));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["secrets"],
        serde_json::json!([{"name": "SMOKE_SECRET", "value": "<secret>", "set_in_environment": true}])
    );
    assert_eq!(
        doc["steps"][0]["key_secrets"],
        serde_json::json!(["SMOKE_SECRET"])
    );
    assert_eq!(doc["steps"][1]["key_secrets"], serde_json::json!([]));

    let out = imgbake()
        .args(["plan", "fixtures/recipes/smoke.yaml"])
        .env_remove("SMOKE_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains("not set: export SMOKE_SECRET, or pass --secret-file SMOKE_SECRET=PATH"),
        "{}",
        stdout(&out)
    );
}

/// Issue 15: a secret is never taken from the command line, and a build without its value
/// stops before anything is fetched or booted, naming the secret and not the value.
#[test]
fn recipe_refuses_secrets_on_the_command_line_and_unset_ones() {
    let cache = tempfile::tempdir().unwrap();
    let build = |args: &[&str]| {
        imgbake()
            .args(["recipe", "fixtures/recipes/smoke.yaml", "--cache-dir"])
            .arg(cache.path())
            .args(args)
            .env_remove("SMOKE_SECRET")
            .output()
            .unwrap()
    };
    let out = build(&["--var", "SMOKE_SECRET=typed-on-the-command-line"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("secrets are never taken from the command line")
            && err.contains("--secret-file SMOKE_SECRET=PATH"),
        "{err}"
    );

    let out = build(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("secret SMOKE_SECRET"), "{err}");
    assert!(
        err.contains("is not set") && err.contains("try: export SMOKE_SECRET"),
        "{err}"
    );

    let out = build(&["--secret-file", "SMOKE_SECRET=/nonexistent/secret"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot read secret SMOKE_SECRET from /nonexistent/secret"),
        "{}",
        stderr(&out)
    );

    let out = build(&["--secret-file", "SMOKE_SECRT=/tmp/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no recipe lists a secret `SMOKE_SECRT`")
            && stderr(&out).contains("SMOKE_SECRET"),
        "{}",
        stderr(&out)
    );
    // Nothing was fetched into the cache.
    assert!(std::fs::read_dir(cache.path()).unwrap().next().is_none());
}
