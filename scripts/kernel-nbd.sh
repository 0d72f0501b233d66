#!/bin/bash
# kernel-nbd.sh - let the real Linux NBD client (nbd.ko + nbd-client, in a
# qemu guest) use the NBD server on a host unix socket.
#
#   scripts/kernel-nbd.sh SOCKET [SCENARIOS] [--build]
#
# SCENARIOS  comma-separated, default fs,trim,swap: the scenarios of
#            shared/tools/kernel-nbd (ext4 write/fsck/verify, discard paths,
#            swapping 2x guest RAM), run in one boot on the same /dev/nbd0.
# --build    first run the harness's build.sh (apt-get + guest kernel and
#            initramfs into /var/cache/kernel-nbd); without it an unbuilt
#            guest is a skip, never a silent build.
# The harness lives in ../shared/tools/kernel-nbd next to the checkout
# (override: KNBD_TOOL=DIR).  Every KNBD_* variable of its run.sh passes
# through (KNBD_EXPORT, KNBD_CONNECTIONS, KNBD_S_FS_RAND_MB, ...).
# Without the harness, qemu or a built guest it prints the reason and
# "0 passed, 0 failed, 1 skipped" and exits 0.  Otherwise PASS/FAIL per
# scenario, "N passed, N failed", exit 1 on failure.  Takes minutes (TCG):
# fs ~2 min, trim ~30 s, swap ~3.5 min against nbdkit.
set -uo pipefail

usage() { echo "usage: $0 SOCKET [SCENARIOS] [--build]" >&2; exit 2; }
SOCK="" SCEN="" BUILD=0
for a in "$@"; do
	case $a in
	--build) BUILD=1 ;;
	-h|--help) sed -n '2,21p' "$0"; exit 0 ;;
	-*) usage ;;
	*) if [[ -z $SOCK ]]; then SOCK=$a; elif [[ -z $SCEN ]]; then SCEN=$a; else usage; fi ;;
	esac
done
[[ -n $SOCK ]] || usage
SCEN=${SCEN:-fs,trim,swap}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOL=${KNBD_TOOL:-$ROOT/../shared/tools/kernel-nbd}
CACHE=${KNBD_CACHE:-/var/cache/kernel-nbd}

skip() {
	echo "SKIP kernel-nbd: $*"
	echo "0 passed, 0 failed, 1 skipped"
	exit 0
}

[[ -x $TOOL/run.sh ]] || skip "no harness at $TOOL (../shared is absent next to the checkout)"
[[ -S $SOCK ]] || { echo "$0: $SOCK is not a unix socket (start the NBD server first)" >&2; exit 2; }
if ((BUILD)); then
	"$TOOL/build.sh" || { echo "FAIL build: $TOOL/build.sh failed"; echo "0 passed, 1 failed"; exit 1; }
fi
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is not installed (run with --build)"
[[ -f $CACHE/vmlinuz && -f $CACHE/initramfs-base.cpio.gz ]] ||
	skip "guest not built in $CACHE (run with --build, or $TOOL/build.sh)"

OUT=${KNBD_OUT:-$(mktemp -d /tmp/kernel-nbd.XXXXXX)}
export KNBD_OUT=$OUT
T0=$(date +%s)
# run.sh streams the guest's results; keep them for the log, show progress.
"$TOOL/run.sh" "$SOCK" "$SCEN" 2>&1 | tee "$OUT/run.out" | sed -u 's/^/  | /'
RC=${PIPESTATUS[0]}

PASSED=0 FAILED=0
IFS=, read -r -a want <<<"$SCEN"
for s in "${want[@]}"; do
	name=$(basename "$s" .sh)
	end=$(grep -a "^=== KNBD_SCENARIO_END $name " "$OUT/results.log" 2>/dev/null | tail -1)
	if [[ $end =~ rc=([0-9]+)\ seconds=([0-9.]+) ]]; then
		if [[ ${BASH_REMATCH[1]} == 0 ]]; then
			PASSED=$((PASSED + 1)); echo "PASS kernel.$name [${BASH_REMATCH[2]}s guest]"
		else
			FAILED=$((FAILED + 1))
			echo "FAIL kernel.$name rc=${BASH_REMATCH[1]}: $(grep -a -i 'fail\|error' "$OUT/results.log" | tail -n 2 | tr '\n' ' ' | cut -c1-300)"
		fi
	else
		FAILED=$((FAILED + 1))
		case $RC in
		96) why="nbd-client could not connect/negotiate" ;;
		97) why="virtio ports missing in the guest" ;;
		124) why="hard timeout (KNBD_TIMEOUT)" ;;
		*) why="guest ended without finishing it (run.sh exit $RC)" ;;
		esac
		echo "FAIL kernel.$name: not completed: $why"
	fi
done
if ((RC != 0 && FAILED == 0)); then
	FAILED=$((FAILED + 1)); echo "FAIL kernel.run: run.sh exit $RC after all scenarios passed"
fi
echo "# $(($(date +%s) - T0))s, logs in $OUT"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
