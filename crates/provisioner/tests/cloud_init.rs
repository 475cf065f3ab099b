//! `cloud_init_wait` over a real sshd, with a stand-in `cloud-init` on the PATH that replays
//! real outputs of cloud-init 22.4 / 24.x (see testdata/cloud-init/README.md) in order, so the
//! orchestration (fallbacks, the 22.4 early return, classification) is exercised end to end.
//! The real guest is covered by the binary's end-to-end test on the fixture guest.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Sshd, tools_present};
use provisioner::*;

const FAKE: &str = r#"#!/bin/sh
d=$(dirname "$0")/..
n=$(( $(cat "$d/count" 2>/dev/null || echo 0) + 1 )); echo $n > "$d/count"
echo "$*" >> "$d/calls"
case "$*" in *--format*) f=json ;; *) f=txt ;; esac
if [ $f = json ] && [ -e "$d/no-format" ]; then
  echo "usage: /usr/bin/cloud-init status [-h] [-l] [-w]" >&2
  echo "/usr/bin/cloud-init status: error: unrecognized arguments: --format json" >&2
  exit 2
fi
cat "$d/resp.$n.$f"; exit "$(cat "$d/rc.$n" 2>/dev/null || echo 0)"
"#;

const SYSTEMCTL: &str =
    "#!/bin/sh\necho \"systemctl $*\" >> \"$(dirname \"$0\")/../calls\"\necho running\n";

fn data(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/testdata/cloud-init/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn start() -> Sshd {
    let sshd = Sshd::start_extra(|d| format!("SetEnv PATH={}/bin:/usr/bin:/bin\n", d.display()));
    let bin = sshd.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, text) in [("cloud-init", FAKE), ("systemctl", SYSTEMCTL)] {
        std::fs::write(bin.join(name), text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    sshd
}

fn respond(dir: &Path, n: u32, ext: &str, file: &str, rc: u32) {
    std::fs::write(dir.join(format!("resp.{n}.{ext}")), data(file)).unwrap();
    std::fs::write(dir.join(format!("rc.{n}")), rc.to_string()).unwrap();
}

async fn wait(sshd: &Sshd) -> Result<CloudInitOutcome> {
    let mut target = sshd.target();
    // The stand-in is found through sshd's PATH; sudo would reset PATH to its secure_path.
    target.privilege = Privilege::Root;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let session = wait_for_ssh(&target, deadline, &CancellationToken::new())
        .await
        .unwrap();
    session
        .cloud_init_wait(Duration::from_secs(30), &CancellationToken::new())
        .await
}

fn calls(sshd: &Sshd) -> String {
    std::fs::read_to_string(sshd.path("calls")).unwrap_or_default()
}

#[tokio::test]
async fn finished_24x_degraded_and_done() {
    if !tools_present() {
        return;
    }
    let sshd = start();
    respond(sshd.dir.path(), 1, "json", "24.x-degraded-done.json", 2);
    respond(sshd.dir.path(), 2, "json", "24.x-done.json", 0);
    let outcome = wait(&sshd).await.unwrap();
    let CloudInitOutcome::FinishedWithErrors { detail } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(detail.contains("Failed to create group docker"), "{detail}");
    assert_eq!(calls(&sshd), "status --wait --format json\n");
    assert_eq!(wait(&sshd).await.unwrap(), CloudInitOutcome::Finished);
}

#[tokio::test]
async fn cloud_init_22_4_error_waits_for_boot_then_asks_again() {
    if !tools_present() {
        return;
    }
    let sshd = start();
    respond(sshd.dir.path(), 1, "json", "22.4-error.json", 1);
    respond(sshd.dir.path(), 2, "json", "22.4-error.json", 1);
    let outcome = wait(&sshd).await.unwrap();
    assert!(
        matches!(&outcome, CloudInitOutcome::FinishedWithErrors { detail } if detail.contains("locale-gen")),
        "{outcome:?}"
    );
    assert_eq!(
        calls(&sshd),
        "status --wait --format json\nsystemctl is-system-running --wait\nstatus --format json\n"
    );
}

#[tokio::test]
async fn disabled_never_ran_and_tabular_fallback() {
    if !tools_present() {
        return;
    }
    let sshd = start();
    std::fs::write(sshd.path("no-format"), "").unwrap();
    respond(sshd.dir.path(), 2, "txt", "22.4-disabled.txt", 0);
    let outcome = wait(&sshd).await.unwrap();
    assert!(
        matches!(&outcome, CloudInitOutcome::NeverRan { detail } if detail.contains("disabled-by-generator")),
        "{outcome:?}"
    );
    assert_eq!(
        calls(&sshd),
        "status --wait --format json\nstatus --wait --long\n"
    );
}

#[tokio::test]
async fn missing_cloud_init_never_ran() {
    if !tools_present() {
        return;
    }
    // A PATH with nothing but `sh`: the wrapper runs, `cloud-init` is not found.
    let sshd = Sshd::start_extra(|d| format!("SetEnv PATH={}/only-sh\n", d.display()));
    std::fs::create_dir_all(sshd.path("only-sh")).unwrap();
    std::os::unix::fs::symlink("/bin/sh", sshd.path("only-sh/sh")).unwrap();
    let outcome = wait(&sshd).await.unwrap();
    assert!(
        matches!(&outcome, CloudInitOutcome::NeverRan { detail } if detail.contains("not installed")),
        "{outcome:?}"
    );
}
