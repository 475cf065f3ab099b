//! The children [`child::spawn`] starts: in their own process group, alive after the thread
//! that asked for them ended, and gone when their parent process is SIGKILLed.
//!
//! The parent of the last test is this test binary run again as a helper (selected by an
//! environment variable), so the test can `kill -9` it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HELPER_ENV: &str = "IMGBAKE_CHILD_TEST_HELPER";

/// `/proc/PID/stat`: (state, process group), or `None` once the process is gone.
fn state_and_group(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// Waits (up to 10 s) until `pid` is gone or a zombie (killed, not yet reaped by init).
fn wait_until_dead(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match state_and_group(pid) {
            None | Some(('Z', _)) => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

fn sleeper() -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sleep");
    command
        .arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

#[test]
fn the_child_has_its_own_group_and_outlives_the_thread_that_asked_for_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    // A thread that ends right after the spawn: were it the forking thread, the parent-death
    // signal would kill the child now.
    let mut child = std::thread::spawn(move || handle.block_on(child::spawn(sleeper())))
        .join()
        .unwrap()
        .unwrap();
    let pid = child.id().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (state, group) = state_and_group(pid).expect("the child is alive");
    assert_ne!(
        state, 'Z',
        "the child died with the thread that asked for it"
    );
    assert_eq!(group, pid, "the child leads its own process group");
    runtime.block_on(async {
        child.kill().await.unwrap();
    });
}

#[test]
fn a_missing_program_is_an_error() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = runtime
        .block_on(child::spawn(tokio::process::Command::new(
            "/nonexistent/imgbake-child-test",
        )))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}

/// The helper side: spawn a sleeper, print its pid, wait to be killed.
fn helper() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let child = child::spawn(sleeper()).await.unwrap();
        // On a line of its own: libtest has printed "test … ... " without a newline.
        println!("\nchild-pid {}", child.id().unwrap());
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(child);
    });
}

#[test]
fn sigkill_of_the_parent_takes_the_child_along() {
    if std::env::var_os(HELPER_ENV).is_some() {
        helper();
        return;
    }
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_of_the_parent_takes_the_child_along",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    let pid: u32 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("child-pid ")
                .and_then(|p| p.trim().parse().ok())
        })
        .expect("the helper prints its child's pid");
    assert!(state_and_group(pid).is_some_and(|(s, _)| s != 'Z'));
    parent.kill().unwrap(); // SIGKILL: no cleanup in the helper at all
    parent.wait().unwrap();
    assert!(
        wait_until_dead(pid),
        "child {pid} outlived its SIGKILLed parent"
    );
}

const ENV_HELPER: &str = "IMGBAKE_CHILD_TEST_ENV_HELPER";

#[test]
fn a_child_inherits_only_the_listed_environment() {
    if std::env::var_os(ENV_HELPER).is_some() {
        // The helper: run `env` as a child and pass its output on.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = runtime.block_on(async {
            let mut command = tokio::process::Command::new("env");
            command.stdout(Stdio::piped());
            command.env("SET_ON_THE_COMMAND", "also-cleared");
            child::spawn(command)
                .await
                .unwrap()
                .wait_with_output()
                .await
                .unwrap()
        });
        print!("{}", String::from_utf8_lossy(&out.stdout));
        return;
    }
    // A recipe secret reaches imgbake as an environment variable: no child may see it.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_child_inherits_only_the_listed_environment",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_HELPER, "1")
        .env("SMOKE_SECRET", "s3cr3t-value")
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(
        env.contains("\nTZ=UTC\n") || env.starts_with("TZ=UTC\n"),
        "{env}"
    );
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    for leaked in ["s3cr3t-value", "SET_ON_THE_COMMAND", ENV_HELPER] {
        assert!(!env.contains(leaked), "{leaked} reached the child:\n{env}");
    }
}

#[tokio::test]
async fn transparent_huge_pages_can_be_turned_off_for_a_child() {
    let thp = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_owned())
    };
    let Some(ours) = thp(std::process::id()) else {
        eprintln!("SKIPPED: this kernel's /proc/PID/status has no THP_enabled line");
        return;
    };
    assert_eq!(ours, "1", "the test itself runs with huge pages allowed");
    let mut default = child::spawn(sleeper()).await.unwrap();
    let off = child::SpawnOptions {
        transparent_huge_pages: false,
    };
    let mut without = child::spawn_with(sleeper(), off).await.unwrap();
    assert_eq!(thp(default.id().unwrap()).as_deref(), Some("1"));
    assert_eq!(thp(without.id().unwrap()).as_deref(), Some("0"));
    for child in [&mut default, &mut without] {
        child.kill().await.unwrap();
    }
}
