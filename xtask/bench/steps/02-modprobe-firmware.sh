#!/usr/bin/env bash
# Bench step 02 (the last-but-one: `cargo xtask bench packer` edits BENCH_EDIT's default for
# its rebuild row): a modprobe option and a 1 MiB firmware file, what an NVIDIA recipe's
# firmware step writes, minus the driver.
set -euo pipefail
install -d -m 0755 /etc/modprobe.d /lib/firmware/nvidia/565.57.01
echo "options nvidia NVreg_EnableGpuFirmware=1" > /etc/modprobe.d/nvidia.conf
head -c 1048576 /dev/urandom > /lib/firmware/nvidia/565.57.01/gsp_ga10x.bin
echo "${BENCH_EDIT:-original}" > /etc/imgbake-bench-edit
cat /etc/modprobe.d/nvidia.conf
