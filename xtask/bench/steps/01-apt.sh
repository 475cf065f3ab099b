#!/usr/bin/env bash
# Bench step 01 (imgbake and Packer run this same file): a network-bound apt step, as most
# image builds start. The fixture guest's apt sources point at the Debian mirrors.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends cowsay jq
jq --version
