#!/bin/bash
# test.sh - the whole zramnbd test suite, from a fresh Debian 12 machine:
# installs the Debian packages it needs, builds, and runs every test.
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --filter X only swift tests matching X (passed to `swift test --filter`)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build          # the end-to-end tests drive the built zramnbd binary
# The kernel-client test boots a guest from ../shared/tools/kernel-nbd; build it once (idempotent).
# Best effort: without it that one test skips with its reason.
knbd=../shared/tools/kernel-nbd/build.sh
if [[ -x $knbd && $(id -u) == 0 ]]; then
	"$knbd" >&2 || echo "test.sh: kernel-nbd guest build failed; the kernel-client test will skip" >&2
fi
if [[ ${1:-} == --filter ]]; then
	exec swift test --filter "$2"
fi
swift test
