//! A real OpenSSH `sshd` on 127.0.0.1 for the integration tests: started as the current user
//! (root here) with a generated config, our host key and our user key authorised.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use provisioner::{BuildKeys, CancellationToken, GuestSession, Privilege, SshTarget, wait_for_ssh};

/// `sshd` plus `sudo` (the step runner's default privilege prefix) are needed.
pub fn tools_present() -> bool {
    test_support::require_tool("sshd") && test_support::require_tool("sudo")
}

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Keys the client uses (the host key pinned here may differ from the one sshd serves).
    pub keys: Arc<BuildKeys>,
    child: Option<Child>,
}

impl Sshd {
    /// Starts sshd serving `served_host`'s host key and authorising `keys`' user key.
    pub fn start_with(keys: Arc<BuildKeys>, served_host: &BuildKeys, port: u16) -> Self {
        Self::start_full(keys, served_host, port, |_| String::new())
    }

    /// Starts sshd with extra config lines, computed from the temp dir.
    pub fn start_extra(extra: impl FnOnce(&Path) -> String) -> Self {
        let keys = Arc::new(BuildKeys::generate());
        let served = (*keys).clone();
        Self::start_full(keys, &served, test_support::free_port(), extra)
    }

    fn start_full(
        keys: Arc<BuildKeys>,
        served_host: &BuildKeys,
        port: u16,
        extra: impl FnOnce(&Path) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let extra = extra(dir.path());
        let mut sshd = Self {
            dir,
            port,
            keys,
            child: None,
        };
        sshd.write_config(served_host, &extra);
        sshd.spawn();
        sshd
    }

    pub fn start() -> Self {
        let keys = Arc::new(BuildKeys::generate());
        let served = (*keys).clone();
        Self::start_with(keys, &served, test_support::free_port())
    }

    fn write_config(&self, served_host: &BuildKeys, extra: &str) {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let d = self.dir.path();
        std::fs::write(d.join("host_ed25519"), served_host.host_private_openssh()).unwrap();
        set_mode(&d.join("host_ed25519"), 0o600);
        std::fs::write(
            d.join("authorized_keys"),
            format!("{}\n", self.keys.user_public_openssh()),
        )
        .unwrap();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\n\
             PermitRootLogin prohibit-password\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nLogLevel ERROR\nMaxStartups 100\n{extra}",
            port = self.port,
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
    }

    fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let sshd = test_support::find_tool("sshd").unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start sshd");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn target(&self) -> SshTarget {
        SshTarget {
            addr: format!("127.0.0.1:{}", self.port).parse().unwrap(),
            user: whoami(),
            keys: self.keys.clone(),
            privilege: Privilege::Sudo,
            host_key: provisioner::HostKeyPolicy::Pinned,
        }
    }

    pub async fn session(&self) -> GuestSession {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        wait_for_ssh(&self.target(), deadline, &CancellationToken::new())
            .await
            .expect("ssh to the test sshd")
    }

    /// Kills every process below the listening sshd (the per-connection sshd processes and
    /// the commands they run): the connection drops as if the guest died.
    pub fn drop_connections(&self) {
        kill_descendants(self.pid());
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_descendants(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Parent pid of every process, from /proc.
fn parents() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

pub fn descendants(root: u32) -> Vec<u32> {
    let table = parents();
    let mut found = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &table {
            if ppid == p && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

fn kill_descendants(root: u32) {
    let pids = descendants(root);
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether any process has `needle` in its command line.
pub fn process_running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                let c: Vec<u8> = c
                    .into_iter()
                    .map(|b| if b == 0 { b' ' } else { b })
                    .collect();
                String::from_utf8_lossy(&c).contains(needle)
            })
            .unwrap_or(false)
    })
}
