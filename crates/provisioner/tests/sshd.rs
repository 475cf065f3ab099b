//! Integration tests against a real OpenSSH sshd on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Sshd, process_running, tools_present};
use provisioner::*;

fn cancel() -> CancellationToken {
    CancellationToken::new()
}

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn output_streams_live_line_by_line_per_stream() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let session = sshd.session().await;
    let marker = sshd.path("go");
    // The command blocks until the test has seen "ready": only live streaming lets it finish.
    let cmd = format!(
        "echo ready; while [ ! -e {m} ]; do sleep 0.05; done; \
         for i in 1 2 3; do echo out$i; echo err$i >&2; done; printf tail",
        m = marker.display()
    );
    let mut lines = Vec::new();
    let status = session
        .exec(&cmd, &BTreeMap::new(), T, &cancel(), |line| {
            if line.line == "ready" {
                std::fs::write(&marker, "").unwrap();
            }
            lines.push(line);
        })
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    let of = |s: Stream| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.stream == s)
            .map(|l| l.line.clone())
            .collect()
    };
    assert_eq!(
        of(Stream::Stdout),
        ["ready", "out1", "out2", "out3", "tail"]
    );
    assert_eq!(of(Stream::Stderr), ["err1", "err2", "err3"]);
}

#[tokio::test]
async fn exit_codes_and_signals_are_typed() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let session = sshd.session().await;
    let none = BTreeMap::new();
    let token = cancel();
    let run = |cmd: &'static str| session.exec(cmd, &none, T, &token, |_| {});
    assert_eq!(run("true").await.unwrap(), ExitStatus::Code(0));
    assert_eq!(run("exit 3").await.unwrap(), ExitStatus::Code(3));
    let killed = run("kill -KILL $$").await.unwrap();
    assert!(
        matches!(&killed, ExitStatus::Signal { name, .. } if name == "KILL"),
        "{killed:?}"
    );
    // exec's env is exported for the command.
    let env = BTreeMap::from([("GREETING".to_string(), "hello world".to_string())]);
    let mut got = Vec::new();
    session
        .exec("echo \"$GREETING\"", &env, T, &cancel(), |l| {
            got.push(l.line)
        })
        .await
        .unwrap();
    assert_eq!(got, ["hello world"]);
}

#[tokio::test]
async fn exec_timeout_kills_the_remote_process_group() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let session = sshd.session().await;
    let err = session
        .exec(
            "sleep 987601 & sleep 987602; echo never",
            &BTreeMap::new(),
            Duration::from_secs(1),
            &cancel(),
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        !process_running("sleep 987601"),
        "background child survived"
    );
    assert!(
        !process_running("sleep 987602"),
        "foreground child survived"
    );
}

#[tokio::test]
async fn cancel_stops_a_running_command() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let session = sshd.session().await;
    let token = cancel();
    let trigger = token.clone();
    let err = session
        .exec(
            "echo started; sleep 987603",
            &BTreeMap::new(),
            T,
            &token,
            |l| {
                if l.line == "started" {
                    trigger.cancel();
                }
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
    assert!(!process_running("sleep 987603"));
}

#[tokio::test]
async fn wrong_host_key_is_refused_at_once() {
    if !tools_present() {
        return;
    }
    let ours = Arc::new(BuildKeys::generate());
    let impostor = BuildKeys::generate();
    let sshd = Sshd::start_with(ours.clone(), &impostor, test_support::free_port());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let err = wait_for_ssh(&sshd.target(), deadline, &cancel())
        .await
        .unwrap_err();
    match err {
        Error::HostKeyMismatch {
            expected_fingerprint,
            got_fingerprint,
            ..
        } => {
            assert_eq!(expected_fingerprint, ours.host_fingerprint());
            assert_eq!(got_fingerprint, impostor.host_fingerprint());
        }
        other => panic!("expected HostKeyMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn trust_on_first_use_accepts_and_reports_the_offered_key() {
    if !tools_present() {
        return;
    }
    let ours = Arc::new(BuildKeys::generate());
    let served = BuildKeys::generate();
    let sshd = Sshd::start_with(ours.clone(), &served, test_support::free_port());
    let mut target = sshd.target();
    target.host_key = provisioner::HostKeyPolicy::TrustOnFirstUse;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let session = wait_for_ssh(&target, deadline, &cancel()).await.unwrap();
    let served_line = served.host_public_openssh();
    let served_key: Vec<&str> = served_line.split(' ').take(2).collect();
    assert_eq!(session.host_key_openssh(), served_key.join(" "));
    assert_eq!(session.host_key_fingerprint(), served.host_fingerprint());
    assert_ne!(session.host_key_fingerprint(), ours.host_fingerprint());
    // Pinned (the default) still refuses the same server.
    let pinned = sshd.target();
    assert_eq!(pinned.host_key, provisioner::HostKeyPolicy::default());
    let err = wait_for_ssh(&pinned, deadline, &cancel())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HostKeyMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn only_loopback_addresses_are_accepted() {
    let target = SshTarget {
        addr: "192.0.2.1:22".parse().unwrap(),
        user: "x".into(),
        keys: Arc::new(BuildKeys::generate()),
        privilege: Privilege::Sudo,
        host_key: provisioner::HostKeyPolicy::Pinned,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let err = wait_for_ssh(&target, deadline, &cancel())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotLoopback { .. }), "{err:?}");
}

#[tokio::test]
async fn wait_for_ssh_catches_a_late_sshd_and_times_out_on_none() {
    if !tools_present() {
        return;
    }
    let port = test_support::free_port();
    let keys = Arc::new(BuildKeys::generate());
    let target = SshTarget {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        user: common::whoami(),
        keys: keys.clone(),
        privilege: Privilege::Sudo,
        host_key: provisioner::HostKeyPolicy::Pinned,
    };
    // Nothing listens: refused until the deadline, which names the last failure.
    let short = tokio::time::Instant::now() + Duration::from_millis(1200);
    let err = wait_for_ssh(&target, short, &cancel()).await.unwrap_err();
    match &err {
        Error::SshWaitTimeout { attempts, last, .. } => {
            assert!(*attempts >= 2, "{err:?}");
            assert!(
                matches!(last.as_deref(), Some(Error::Connect { .. })),
                "{err:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // sshd starts while we wait.
    let starter = {
        let keys = keys.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let served = (*keys).clone();
            Sshd::start_with(keys, &served, port)
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let session = wait_for_ssh(&target, deadline, &cancel()).await.unwrap();
    let _sshd = starter.await.unwrap();
    let id = session.boot_id(&cancel()).await.unwrap();
    assert_eq!(
        id,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
    );
}

#[tokio::test]
async fn wait_for_ssh_stops_when_cancelled() {
    let port = test_support::free_port();
    let target = SshTarget {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        user: "x".into(),
        keys: Arc::new(BuildKeys::generate()),
        privilege: Privilege::Sudo,
        host_key: provisioner::HostKeyPolicy::Pinned,
    };
    let token = cancel();
    token.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let err = wait_for_ssh(&target, deadline, &token).await.unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
}

#[tokio::test]
async fn upload_is_binary_safe_and_sets_the_mode() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let session = sshd.session().await;
    let mut bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 4).collect();
    bytes.extend((0..600_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    bytes.extend(b"\r\n\0no newline at end");
    let path = sshd.path("sub dir/up'load.bin");
    session
        .upload(&bytes, path.to_str().unwrap(), 0o640, &cancel())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let err = session
        .upload(b"x", "relative/path", 0o600, &cancel())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadRemotePath { .. }), "{err:?}");
}

fn step(id: &str, script: &str) -> StepSpec {
    StepSpec {
        id: id.into(),
        name: "test".into(),
        script: script.as_bytes().to_vec(),
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        timeout: T,
        retries: 0,
        reboot: false,
    }
}

fn options(sshd: &Sshd, id: &str) -> StepOptions {
    let mut o = StepOptions::new(sshd.path(&format!("logs/{id}-test.log")), T);
    o.remote_dir = sshd.path("guest-steps").display().to_string();
    o
}

type Events = Arc<Mutex<Vec<StepEvent>>>;

fn recorder() -> (Events, impl FnMut(StepEvent)) {
    let events: Events = Arc::default();
    let sink = events.clone();
    (events, move |e| sink.lock().unwrap().push(e))
}

#[tokio::test]
async fn step_runs_as_root_with_nasty_env_and_masks_secrets() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let mut session = sshd.session().await;
    let nasty = "it's \"q\" $HOME `id` \\ a\nb\t* ; | & 💥";
    let mut spec = step(
        "01",
        "set -eu\nprintf '%s' \"$NASTY\" > \"$OUT\"\necho \"uid=$(id -u) step=$IMGBAKE_STEP_ID\"\n\
         echo \"token is $GITHUB_TOKEN\"\necho warn >&2\n\
         printf 'pass %s\\n' \"$REPO_PASS\" >&2\nprintf '%s' \"$REPO_PASS\" > \"$OUT.pass\"\n\
         ls -A \"$SECRET_DIR\" > \"$OUT.left\"\n",
    );
    let out = sshd.path("nasty.out");
    spec.env = BTreeMap::from([
        ("NASTY".into(), nasty.into()),
        ("OUT".into(), out.display().to_string()),
        ("GITHUB_TOKEN".into(), "ghp_s3cr3tvalue".into()),
    ]);
    // A recipe secret: written only to a tmpfs (here /dev/shm: this host's /run is not one),
    // gone before the script starts, masked on stderr too.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut opts = options(&sshd, "01");
    opts.secret_dir = shm.path().join("secrets").display().to_string();
    spec.env
        .insert("SECRET_DIR".into(), opts.secret_dir.clone());
    spec.secrets = BTreeMap::from([("REPO_PASS".into(), SecretString::from("hunter2-is-long"))]);
    let (events, sink) = recorder();
    let outcome = run_step(&mut session, &spec, &opts, sink, &cancel())
        .await
        .unwrap();
    let ok = outcome.into_result().unwrap();
    assert_eq!(ok.attempts, 1);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), nasty);
    let events = events.lock().unwrap().clone();
    assert!(matches!(
        events.first(),
        Some(StepEvent::Started {
            attempt: 1,
            of: 1,
            ..
        })
    ));
    assert!(matches!(events.last(), Some(StepEvent::Finished { exit, .. }) if exit.success()));
    let lines: Vec<(Stream, String)> = events
        .iter()
        .filter_map(|e| match e {
            StepEvent::Output { stream, line, .. } => Some((*stream, line.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        lines,
        [
            (Stream::Stdout, "uid=0 step=01".to_string()),
            (Stream::Stdout, "token is [secret GITHUB_TOKEN]".to_string()),
            (Stream::Stderr, "warn".to_string()),
            (Stream::Stderr, "pass [secret REPO_PASS]".to_string()),
        ]
    );
    let log = std::fs::read_to_string(&opts.log_path).unwrap();
    assert!(log.contains("token is [secret GITHUB_TOKEN]"), "{log}");
    assert!(!log.contains("ghp_s3cr3tvalue"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    // The script saw the secret's value, and its file was gone by then; then its directory.
    assert_eq!(
        std::fs::read_to_string(format!("{}.pass", out.display())).unwrap(),
        "hunter2-is-long"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{}.left", out.display())).unwrap(),
        ""
    );
    assert!(!std::path::Path::new(&opts.secret_dir).exists());
    // Script and env file are gone, and the step directory with them.
    assert!(!std::path::Path::new(&opts.remote_dir).exists());
}

#[tokio::test]
async fn secrets_are_refused_where_they_would_reach_a_disk() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let mut session = sshd.session().await;
    let marker = sshd.path("ran");
    let mut spec = step("05", &format!("touch {}\n", marker.display()));
    spec.secrets = BTreeMap::from([("REPO_PASS".into(), SecretString::from("hunter2-is-long"))]);
    let mut opts = options(&sshd, "05");
    // The sandbox is on this host's disk, not a tmpfs.
    opts.secret_dir = sshd.path("secrets-on-disk").display().to_string();
    let err = run_step(&mut session, &spec, &opts, |_| {}, &cancel())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SecretsNotOnTmpfs { .. }), "{err:?}");
    assert!(err.to_string().contains("not a tmpfs"), "{err}");
    assert!(!marker.exists(), "the step must not run");
    let dir = std::path::Path::new(&opts.secret_dir);
    assert!(!dir.exists() || std::fs::read_dir(dir).unwrap().next().is_none());
}

#[tokio::test]
async fn failing_step_reports_exit_and_last_30_lines() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let mut session = sshd.session().await;
    let spec = step("02", "for i in $(seq 1 50); do echo line$i; done\nexit 7\n");
    let opts = options(&sshd, "02");
    let outcome = run_step(&mut session, &spec, &opts, |_| {}, &cancel())
        .await
        .unwrap();
    let StepOutcome::Failed(failed) = outcome.clone() else {
        panic!("{outcome:?}");
    };
    assert_eq!(failed.exit, StepExit::Status(ExitStatus::Code(7)));
    let expected: Vec<String> = (21..=50).map(|i| format!("line{i}")).collect();
    assert_eq!(failed.last_lines, expected);
    assert_eq!(failed.log_path, opts.log_path);
    let log = std::fs::read_to_string(&opts.log_path).unwrap();
    assert!(log.contains("line1\n") && log.contains("line50\n"), "{log}");
    let err = outcome.into_result().unwrap_err();
    assert!(
        err.to_string()
            .contains("step 02 (test) failed: exit code 7"),
        "{err}"
    );
}

#[tokio::test]
async fn step_timeout_kills_it_and_retries_count() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let mut session = sshd.session().await;
    let mut spec = step("03", "sleep 987611 &\nsleep 987612\n");
    spec.timeout = Duration::from_secs(1);
    spec.retries = 1;
    let opts = options(&sshd, "03");
    let (events, sink) = recorder();
    let outcome = run_step(&mut session, &spec, &opts, sink, &cancel())
        .await
        .unwrap();
    let StepOutcome::Failed(failed) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        matches!(failed.exit, StepExit::TimedOut { .. }),
        "{failed:?}"
    );
    assert_eq!(failed.attempts, 2);
    assert!(
        !process_running("sleep 987611"),
        "root background child survived"
    );
    assert!(!process_running("sleep 987612"));
    let retried = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e,
                StepEvent::Retrying {
                    next_attempt: 2,
                    ..
                }
            )
        })
        .count();
    assert_eq!(retried, 1);
}

#[tokio::test]
async fn flaky_step_succeeds_on_retry() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let mut session = sshd.session().await;
    let counter = sshd.path("count");
    let mut spec = step(
        "04",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo try$n; [ $n -ge 2 ]\n",
            c = counter.display()
        ),
    );
    spec.retries = 3;
    let outcome = run_step(
        &mut session,
        &spec,
        &options(&sshd, "04"),
        |_| {},
        &cancel(),
    )
    .await
    .unwrap();
    let ok = outcome.into_result().unwrap();
    assert_eq!(ok.attempts, 2);
}

#[tokio::test]
async fn connection_dropping_mid_step_is_disconnected() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let mut session = sshd.session().await;
    let spec = step("05", "echo started\nsleep 987621\n");
    let opts = options(&sshd, "05");
    let err = run_step(
        &mut session,
        &spec,
        &opts,
        |e| {
            if matches!(&e, StepEvent::Output { line, .. } if line == "started") {
                sshd.drop_connections();
            }
        },
        &cancel(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    assert!(session.is_closed());
}

#[tokio::test]
async fn reboot_step_that_does_not_reboot_is_caught() {
    if !tools_present() {
        return;
    }
    let sshd = Sshd::start();
    let mut session = sshd.session().await;
    let mut spec = step("06", "echo before reboot\n");
    spec.reboot = true;
    let mut opts = options(&sshd, "06");
    // "Reboot" = drop every connection, as a real reboot does, but the boot id stays.
    opts.reboot_command = format!(
        "for p in $(cat /proc/{pid}/task/{pid}/children); do kill -KILL $p; done",
        pid = sshd.pid()
    );
    opts.reboot_timeout = Duration::from_secs(5);
    let (events, sink) = recorder();
    let err = run_step(&mut session, &spec, &opts, sink, &cancel())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BootIdUnchanged { .. }), "{err:?}");
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, StepEvent::Rebooting { .. }))
    );
}
