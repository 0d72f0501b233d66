#!/bin/sh
# swap-host (a guest scenario for ../shared/tools/kernel-nbd's run.sh): swap on the NBD device
# while the host daemon does something to the pages underneath: writes idle ones back to its
# backing file (--writeback-idle-after, RealClientTests' writeback test), or is upgraded in
# place (`ctl upgrade`, UpgradeTests). memfill fills SWAP_FILL_MB MiB (default 2 x guest RAM);
# under TCG that takes a minute or more, then it reads everything back twice and checks every
# 64-bit word. Any NBD or I/O error in the guest's log fails it.
. /knbd/lib.sh
mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
FILL_MB=${SWAP_FILL_MB:-$((mem_kb * 2 / 1024))}

step mkswap mkswap "$DEV" || fail "mkswap"
step swapon swapon --discard "$DEV" || fail "swapon"
echo "before: $(meminfo 'MemTotal|MemFree|SwapTotal|SwapFree')"
t=$(up)
memfill "$FILL_MB"
rc=$?
echo "memfill rc=$rc in $(since "$t")s"
grep -E '^(pswpin|pswpout) ' /proc/vmstat | tr '\n' ' '; echo
step swapoff swapoff "$DEV" || fail "swapoff"
# The kernel client's complaints too: a timed-out or failed request, a dead connection.
if dmesg | grep -i -E 'I/O error|returned error|Read-error|Write-error|nbd.*(timed out|timeout|error|dead|shutting down)'; then
	echo "RESULT swap-host: FAIL the guest kernel logged I/O or NBD errors"
	exit 1
fi
if [ $rc = 0 ]; then
	echo "RESULT swap-host: OK (${FILL_MB}MiB filled and verified through swap)"
	exit 0
fi
echo "RESULT swap-host: FAIL memfill rc=$rc"
exit 1
