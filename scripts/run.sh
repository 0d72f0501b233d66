#!/bin/bash
# run.sh - build zramnbd (release) and start the daemon on a sane default:
# one device zram0, lz4, min(RAM/2, 4 GiB), NBD on /run/zramnbd/zram0.sock,
# stats under /run/zramnbd/zram0/. Extra arguments go to `zramnbd serve`.
# Installs the build dependencies first (Debian packages; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --build
swift build -c release --product zramnbd >&2
exec .build/release/zramnbd serve "$@"
