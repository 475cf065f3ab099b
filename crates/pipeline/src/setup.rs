//! How a build VM is set up from a recipe — base source, seed, VM settings, the ssh command —
//! shared by the build and by `imgbake boot`, so both boot the guest the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use provisioner::BuildKeys;
use qemu_driver::VmConfig;
use recipe::Recipe;
use seed::{HostKeyPair, NetworkConfig, SeedConfig};

/// The recipe's base image as the fetch crate sees it.
pub fn base_source(base: &recipe::Base) -> fetch::BaseSource {
    let location = |l: &recipe::BaseLocation| match l {
        recipe::BaseLocation::Http(url) => fetch::Location::Http(url.clone()),
        recipe::BaseLocation::File(path) => fetch::Location::File(path.clone()),
    };
    fetch::BaseSource {
        location: location(&base.location),
        checksum: match &base.checksum {
            recipe::Checksum::Sha256(d) => fetch::ExpectedDigest::Sha256(*d),
            recipe::Checksum::SumsFile(list) => fetch::ExpectedDigest::SumsFile(location(list)),
        },
    }
}

/// The build VM's hostname, whatever the recipe. Not the recipe's name: the hostname is in the
/// seed, the seed in the chain's root key, and the guest's first boot (the chain's first layer
/// and VM state) is shared by every recipe on the same base only if no recipe input is in it.
/// The seal removes it from `/etc/hosts`; `verify` checks it is gone.
pub const BUILD_HOSTNAME: &str = "imgbake-build";

/// The cloud-init seed of a build VM: the build user with the chain's user key, the pinned
/// host key, DHCP by cloud-init's fallback (works with netplan, ENI and networkd alike). Nothing
/// in it comes from the recipe (see [`BUILD_HOSTNAME`]).
pub fn seed_config(instance_id: &str, keys: &BuildKeys) -> SeedConfig {
    SeedConfig {
        instance_id: instance_id.to_owned(),
        hostname: BUILD_HOSTNAME.to_owned(),
        build_user: crate::BUILD_USER.to_owned(),
        user_authorized_key: keys.user_public_openssh(),
        host_key: Some(HostKeyPair {
            private_openssh: keys.host_private_openssh(),
            public_openssh: keys.host_public_openssh(),
        }),
        network: NetworkConfig::None,
        extra_cloud_config: BTreeMap::new(),
    }
}

/// The recipe's `vm` section as QEMU settings.
pub fn vm_config(recipe: &Recipe, disk: &Path, run_dir: &Path, seed: PathBuf) -> VmConfig {
    let mut config = VmConfig::new(&recipe.name, disk, run_dir);
    config.cpus = recipe.vm.cpus;
    config.memory_mib = recipe.vm.memory.as_u64() / (1024 * 1024);
    config.machine = Some(recipe.vm.machine.clone());
    config.firmware = match recipe.vm.firmware {
        recipe::Firmware::Bios => qemu_driver::Firmware::Bios,
        recipe::Firmware::Uefi => qemu_driver::Firmware::Uefi,
    };
    config.accel = match recipe.vm.accel {
        recipe::AccelChoice::Auto => qemu_driver::AccelChoice::Auto,
        recipe::AccelChoice::Kvm => qemu_driver::AccelChoice::Kvm,
        recipe::AccelChoice::Tcg => qemu_driver::AccelChoice::Tcg,
    };
    config.seed_iso = Some(seed);
    // Every disk a recipe's VM writes is a fresh overlay that is thrown away on a crash: a
    // build publishes a layer only after QEMU froze it and the store fsynced it, and fsyncs the
    // final top after QEMU exits. So guest flushes need not reach the host's disk; under TCG
    // each one costs a host fdatasync while the vCPUs wait, and apt/dpkg issue hundreds.
    config.disk_cache = qemu_driver::DiskCache::Unsafe;
    config
}

/// The `ssh` command a person can paste to get into the build VM.
pub fn ssh_command(addr: SocketAddr, key: &Path, known_hosts: &Path) -> String {
    format!(
        "ssh -i {} -p {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes {}@{}",
        key.display(),
        addr.port(),
        known_hosts.display(),
        crate::BUILD_USER,
        addr.ip()
    )
}

/// Writes `<dir>/known_hosts` pinning the guest's host key (mode 0600), for [`ssh_command`].
pub fn write_known_hosts(dir: &Path, addr: SocketAddr, keys: &BuildKeys) -> crate::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("known_hosts");
    let line = format!(
        "[{}]:{} {}\n",
        addr.ip(),
        addr.port(),
        keys.host_public_openssh()
    );
    let mut file =
        digest::AtomicFile::create(&path).map_err(crate::error::io_err("create", &path))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.commit())
        .map_err(crate::error::io_err("write", &path))?;
    Ok(path)
}
