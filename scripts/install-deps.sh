#!/bin/bash
# install-deps.sh - install every Debian package zramnbd needs to build, test
# and benchmark. Idempotent: installs only what is missing. Needs root.
#   --build   only what `swift build` needs (C libraries)
#   (default) build + test tools (libnbd tools, qemu-utils, fio, nbdkit, ...)
set -euo pipefail
BUILD_PKGS=(pkg-config liblz4-dev libzstd-dev zlib1g-dev liblzo2-dev libnbd-dev libgnutls28-dev)
TEST_PKGS=(libnbd-bin python3-libnbd nbdkit qemu-utils fio e2fsprogs util-linux jq
           fuse3 kmod procps socat lz4 zstd gnutls-bin
           gcc libglib2.0-dev dpkg-dev)   # last line: nbd-tester-client build
pkgs=("${BUILD_PKGS[@]}")
[[ ${1:-} == --build ]] || pkgs+=("${TEST_PKGS[@]}")
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) != 0 ]]; then
	echo "install-deps.sh: missing packages: ${missing[*]} (run as root to install them)" >&2
	exit 1
fi
echo "install-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
