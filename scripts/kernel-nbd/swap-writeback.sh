#!/bin/sh
# swap-writeback (a guest scenario for ../shared/tools/kernel-nbd's run.sh): swap on the NBD
# device while the host daemon writes idle pages back to its backing file (its
# --writeback-idle-after policy, a second or two). memfill fills SWAP_FILL_MB MiB (default
# 2 x guest RAM); under TCG that takes a minute, so what went out to swap first is idle and
# written back long before memfill reads everything back twice and checks every 64-bit word:
# those pages come back from the backing file. Any NBD or I/O error in the guest's log fails it.
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
if dmesg | grep -i -E 'I/O error|returned error|Read-error|Write-error'; then
	echo "RESULT swap-writeback: FAIL the guest kernel logged I/O errors"
	exit 1
fi
if [ $rc = 0 ]; then
	echo "RESULT swap-writeback: OK (${FILL_MB}MiB filled and verified through swap with writeback on the host)"
	exit 0
fi
echo "RESULT swap-writeback: FAIL memfill rc=$rc"
exit 1
