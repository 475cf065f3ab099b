//! "Did you mean" suggestions and per-key examples used in hints.

/// The candidate closest to `input`, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let input_lower = input.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&input_lower, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "did you mean `x`? " (with trailing space) or "".
pub(crate) fn did_you_mean_prefix<'a, I>(input: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    did_you_mean(input, candidates).map_or_else(String::new, |c| format!("did you mean `{c}`? "))
}

/// An example of a correct value for a key, used in hints.
pub(crate) fn example_for(key: &str) -> Option<&'static str> {
    Some(match key {
        "name" => "name: ubuntu-2204-nvidia-565",
        "vars" => "vars: { ubuntu_codename: jammy }",
        "base" => {
            "base: { url: https://…/jammy-server-cloudimg-amd64.img, checksum: file:https://…/SHA256SUMS }"
        }
        "url" => {
            "url: https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img"
        }
        "checksum" => {
            "checksum: sha256:<64 hex digits>  or  checksum: file:<SHA256SUMS url or path>"
        }
        "vm" => "vm: { cpus: 4, memory: 8G, disk_size: 25G }",
        "cpus" => "cpus: 4",
        "memory" => "memory: 8G",
        "disk_size" => "disk_size: 25G",
        "firmware" => "firmware: bios  (or uefi)",
        "accel" => "accel: auto  (or kvm, tcg)",
        "machine" => "machine: q35",
        "boot_timeout" => "boot_timeout: 10m",
        "steps" => "steps: [scripts/01-system-update.sh]",
        "script" => "script: scripts/04-nvidia-driver.sh",
        "reboot" => "reboot: true",
        "timeout" => "timeout: 45m",
        "env" => "env: { DEBIAN_FRONTEND: noninteractive }",
        "retries" => "retries: 2",
        "export" => "export: { formats: [raw, qcow2] }",
        "formats" => "formats: [raw, qcow2]",
        "verify" => {
            "verify: { nvidia: { enable_gpu_firmware: 1, driver_branch: \"565\" }, hygiene: true }"
        }
        "nvidia" => "nvidia: { enable_gpu_firmware: 1, driver_branch: \"565\" }",
        "enable_gpu_firmware" => "enable_gpu_firmware: 1",
        "driver_branch" => "driver_branch: \"565\"",
        "hygiene" => "hygiene: true",
        "payload" => {
            "payload: { virtualization: virtualized, gpu: { vendor: NVIDIA, models: [H100] } }"
        }
        "secrets" => "secrets: [GITHUB_TOKEN]",
        "test" => "test: [\"systemctl is-active ssh\", \"test -s /etc/machine-id\"]",
        "virtualization" => "virtualization: virtualized  (or baremetal, any)",
        "gpu" => "gpu: { vendor: NVIDIA, models: [A100, H100] }",
        "vendor" => "vendor: NVIDIA  (or AMD)",
        "models" => "models: [A100, H100, H200]",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["cpus", "memory", "disk_size", "firmware"];
        assert_eq!(did_you_mean("cpu", keys), Some("cpus"));
        assert_eq!(did_you_mean("disksize", keys), Some("disk_size"));
        assert_eq!(did_you_mean("Memroy", keys), Some("memory"));
        assert_eq!(did_you_mean("zzz", keys), None);
    }
}
