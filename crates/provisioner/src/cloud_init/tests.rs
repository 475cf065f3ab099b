use super::*;

fn data(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/cloud-init/");
    std::fs::read_to_string(format!("{path}{name}")).unwrap()
}

fn json(name: &str) -> CloudInitOutcome {
    CloudInitStatus::from_json(&data(name)).unwrap().outcome()
}

fn tabular(name: &str) -> CloudInitOutcome {
    CloudInitStatus::from_tabular(&data(name))
        .unwrap()
        .outcome()
}

fn detail(outcome: CloudInitOutcome) -> String {
    match outcome {
        CloudInitOutcome::FinishedWithErrors { detail } | CloudInitOutcome::NeverRan { detail } => {
            detail
        }
        CloudInitOutcome::Finished => panic!("expected a detail"),
    }
}

#[test]
fn finished_in_both_versions_and_formats() {
    assert_eq!(json("22.4-done.json"), CloudInitOutcome::Finished);
    assert_eq!(tabular("22.4-done.txt"), CloudInitOutcome::Finished);
    assert_eq!(json("24.x-done.json"), CloudInitOutcome::Finished);
}

#[test]
fn errors_are_finished_with_errors_and_show_the_error() {
    let d = detail(json("22.4-error.json"));
    assert!(d.contains("locale-gen"), "{d}");
    assert!(matches!(
        json("22.4-error.json"),
        CloudInitOutcome::FinishedWithErrors { .. }
    ));
    let d = detail(tabular("22.4-error.txt"));
    assert!(d.contains("locale"), "{d}");
    // 24.x: status error with an empty error list (a failed systemd unit).
    let d = detail(json("24.x-error-systemd.json"));
    assert!(d.contains("status error: DataSourceOracle"), "{d}");
    let d = detail(tabular("24.x-error-long.txt"));
    assert!(d.contains("Unknown network config version"), "{d}");
}

#[test]
fn degraded_done_is_finished_with_errors_listing_warnings() {
    let d = detail(json("24.x-degraded-done.json"));
    assert!(d.contains("WARNING: Failed to create group docker"), "{d}");
}

#[test]
fn disabled_means_never_ran() {
    for outcome in [
        json("22.4-disabled.json"),
        tabular("22.4-disabled.txt"),
        json("24.x-disabled.json"),
    ] {
        let CloudInitOutcome::NeverRan { detail } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(detail.contains("disabled-by-generator"), "{detail}");
    }
}

#[test]
fn datasource_none_and_not_started_mean_never_ran() {
    let s = CloudInitStatus {
        status: "done".into(),
        datasource: Some("none".into()),
        ..Default::default()
    };
    assert!(matches!(s.outcome(), CloudInitOutcome::NeverRan { .. }));
    for status in ["not run", "not started"] {
        let s = CloudInitStatus {
            status: status.into(),
            ..Default::default()
        };
        assert!(s.in_progress());
        assert!(matches!(s.outcome(), CloudInitOutcome::NeverRan { .. }));
    }
}

#[test]
fn garbage_is_a_parse_error() {
    assert!(CloudInitStatus::from_json("Traceback (most recent call last):").is_err());
    assert!(CloudInitStatus::from_tabular("usage: cloud-init [-h]").is_err());
    assert!(CloudInitStatus::from_json("{\"status\": 3}").is_err());
}

#[test]
fn a_result_is_clean_only_with_a_datasource_and_no_error_or_warning() {
    use super::result_is_clean;
    // cloud-init 22.4 (Debian 12) after a NoCloud seed.
    assert!(result_is_clean(
        r#"{"v1": {"datasource": "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]", "errors": []}}"#
    ));
    // 23.4+ adds the recoverable errors.
    assert!(result_is_clean(
        r#"{"v1": {"datasource": "DataSourceNoCloud", "errors": [], "recoverable_errors": {}}}"#
    ));
    assert!(!result_is_clean(
        r#"{"v1": {"datasource": "DataSourceNoCloud", "errors": [], "recoverable_errors": {"WARNING": ["x"]}}}"#
    ));
    assert!(!result_is_clean(
        r#"{"v1": {"datasource": "DataSourceNoCloud", "errors": ["('init', RuntimeError())"]}}"#
    ));
    assert!(!result_is_clean(
        r#"{"v1": {"datasource": null, "errors": []}}"#
    ));
    assert!(!result_is_clean(
        r#"{"v1": {"datasource": "DataSourceNone", "errors": []}}"#
    ));
    // Cut off while cloud-init was writing it.
    assert!(!result_is_clean(r#"{"v1": {"datasource": "DataSourceNoC"#));
    assert!(!result_is_clean(""));
}
