#!/bin/bash
# client-suite.sh - drive an NBD server with real clients (qemu-io, qemu-img,
# nbdinfo, fio, nbdcopy, nbdfuse + loop + ext4) and check the data survives.
#
#   scripts/client-suite.sh URI_OR_SOCKET [--quick] [--export NAME] [--skip STEP]...
#
# URI_OR_SOCKET: nbd+unix:///EXPORT?socket=PATH, nbd://HOST:PORT/EXPORT, or a
# unix socket path.  The export is overwritten: use a scratch device of at
# least 256 MiB (--quick: 128 MiB).  Needs root (loop devices, mount) and the
# tools from scripts/install-deps.sh.  Prints PASS/FAIL per step and a final
# "N passed, N failed"; exits 1 on any failure.  --quick shrinks every size so
# the whole run stays under a minute.
set -uo pipefail

usage() { echo "usage: $0 URI_OR_SOCKET [--quick] [--export NAME] [--skip STEP]..." >&2; exit 2; }
TARGET="" QUICK=0 EXPORT="" SKIPS=()
while (($#)); do
	case $1 in
	--quick) QUICK=1 ;;
	--export) EXPORT=${2:?}; shift ;;
	--skip) SKIPS+=("${2:?}"); shift ;;   # steps whose name contains this (diagnosis)
	-h|--help) sed -n '2,13p' "$0"; exit 0 ;;
	-*) usage ;;
	*) [[ -z $TARGET ]] || usage; TARGET=$1 ;;
	esac
	shift
done
[[ -n $TARGET ]] || usage
if [[ $TARGET == nbd* ]]; then
	URI=$TARGET
else
	[[ -S $TARGET ]] || { echo "$0: $TARGET is not a socket" >&2; exit 2; }
	URI="nbd+unix:///${EXPORT}?socket=$(realpath "$TARGET")"
fi

PY=/usr/bin/python3                  # has python3-libnbd (the pyenv one does not)
export PATH=/usr/sbin:/sbin:/usr/bin:$PATH   # nbdsh execs `python3 -mnbd`
TMP=$(mktemp -d /tmp/client-suite.XXXXXX)
FM=$TMP/fuse MNT=$TMP/mnt
mkdir -p "$FM" "$MNT"

# Sizes in MiB: qemu-img convert source, fio per job (4 jobs), nbdcopy
# round trip, files written on ext4.
if ((QUICK)); then
	CONVERT_MB=16 FIO_MB=8 COPY_MB=32 FS_MB=16
else
	CONVERT_MB=64 FIO_MB=64 COPY_MB=256 FS_MB=100
fi

# --- cleanup: runs on every exit, also after failures and signals ----------
fuse_pid() { [[ -s $TMP/fuse.pid ]] && cat "$TMP/fuse.pid"; }
cleanup() {
	mountpoint -q "$MNT" 2>/dev/null && { umount "$MNT" 2>/dev/null || umount -l "$MNT"; }
	# Detach only the loop device that we attached to our fuse file.
	if [[ -s $TMP/loop ]]; then
		local l; l=$(cat "$TMP/loop")
		[[ $(cat "/sys/block/${l#/dev/}/loop/backing_file" 2>/dev/null) == "$FM/nbd" ]] && losetup -d "$l"
	fi
	mountpoint -q "$FM" 2>/dev/null && { umount "$FM" 2>/dev/null || umount -l "$FM"; }
	local pid; pid=$(fuse_pid)
	if [[ -n $pid ]]; then   # nbdfuse exits by itself shortly after the unmount
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill "$pid" 2>/dev/null
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- runner ----------------------------------------------------------------
PASSED=0 FAILED=0 BROKEN=""
# step NAME FUNCTION: run FUNCTION under `set -e` in a subshell, log to a file.
step() {
	local name=$1 fn=$2 t0 rc dt
	local k
	for k in "${SKIPS[@]}"; do
		[[ $name == *"$k"* ]] && { echo "SKIP $name: --skip $k"; return; }
	done
	if [[ -n $BROKEN && $name == "$BROKEN".* ]]; then
		echo "SKIP $name: an earlier $BROKEN step failed"
		return
	fi
	t0=$(date +%s.%N)
	( set -e; "$fn" ) >"$TMP/$name.log" 2>&1
	rc=$?
	dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	if ((rc == 0)); then
		PASSED=$((PASSED + 1))
		local note; note=$(grep -h '^NOTE ' "$TMP/$name.log" | cut -c6- | paste -sd ';' -)
		echo "PASS $name [${dt}s]${note:+ ($note)}"
	else
		FAILED=$((FAILED + 1))
		echo "FAIL $name [${dt}s] rc=$rc: $(grep -v '^NOTE ' "$TMP/$name.log" | tail -n 3 | tr '\n' ' ' | cut -c1-400)"
		[[ $name == *.* ]] && BROKEN=${name%%.*}
	fi
}
note() { echo "NOTE $*"; }
die() { echo "$*" >&2; return 1; }

need() {
	local t missing=()
	for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
	((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (run scripts/install-deps.sh)"
}

nbdsh_() { nbdsh -u "$URI" "$@"; }

# Zero the whole export (WRITE_ZEROES without NO_HOLE: a store may free it).
wipe() {
	nbdsh_ -c '
size = h.get_size()
step = 1 << 30
for off in range(0, size, step):
    h.zero(min(step, size - off), off)
h.flush()'
}

# gen FILE MiB SEED: deterministic mix of random, zero, text and half-zero
# 64 KiB chunks (compressible and not, like real data).
gen() {
	"$PY" - "$@" <<'EOF'
import random, sys
path, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
K = 64 * 1024
text = b"".join(b"line %08d: the quick brown fox jumps over the lazy dog\n" % i for i in range(2000))
with open(path, "wb") as f:
    for i in range(mib * 16):
        k = i % 4
        if k == 0:
            f.write(r.randbytes(K))
        elif k == 1:
            f.write(bytes(K))
        elif k == 2:
            o = r.randrange(len(text) - K)
            f.write(text[o:o + K])
        else:
            f.write(r.randbytes(K // 2) + bytes(K // 2))
EOF
}

# --- steps -----------------------------------------------------------------
SIZE=0
s_connect() {
	need nbdinfo nbdsh "$PY"
	SIZE=$(nbdinfo --size "$URI")
	echo "$SIZE" >"$TMP/size"
	((SIZE >= (QUICK ? 128 : 256) * 1048576)) || die "export is $SIZE bytes; need $((QUICK ? 128 : 256)) MiB"
	note "size $SIZE"
}

s_nbdinfo_json() {
	nbdinfo --json "$URI" >"$TMP/info.json"
	jq -e --argjson size "$(cat "$TMP/size")" '
		.protocol == "newstyle-fixed" and .structured == true and
		(.exports | length) == 1 and
		(.exports[0] | ."export-size" == $size and .is_read_only == false and
		 .can_flush and .can_fua and .can_trim and .can_zero and .can_multi_conn and
		 .can_df and .can_cache and .can_fast_zero and
		 (.contexts | index("base:allocation") != null))' "$TMP/info.json" \
		|| { cat "$TMP/info.json"; die "nbdinfo --json: unexpected values"; }
	nbdinfo --list --json "$URI" >"$TMP/list.json"
	jq -e '(.exports | length) >= 1' "$TMP/list.json" >/dev/null || die "nbdinfo --list: no exports"
	note "$(jq -r '[.exports[]."export-name"] | map(@json) | join(",") | "list: " + .' "$TMP/list.json")"
}

s_nbdinfo_map() {
	wipe
	# 1 MiB of data at 0, then 1 MiB of zeros written as data at 1 MiB.
	nbdsh_ -c 'import random; h.pwrite(random.Random(1).randbytes(1 << 20), 0)' \
		-c 'h.pwrite(bytes(1 << 20), 1 << 20); h.flush()'
	nbdinfo --map --json "$URI" >"$TMP/map.json"
	# Extents tile the export; [0,1M) is data; everything from 1 MiB on reads as zero.
	jq -e --argjson size "$(cat "$TMP/size")" '
		(map(.length) | add) == $size and
		(reduce .[] as $e ({ok: true, pos: 0}; {ok: (.ok and $e.offset == .pos), pos: (.pos + $e.length)}) | .ok) and
		all(.[]; if .offset < 1048576 then .type == 0 and .offset + .length <= 1048576
		         else (.type | . == 2 or . == 3) end)' "$TMP/map.json" \
		|| { head -20 "$TMP/map.json"; die "nbdinfo --map: unexpected extents"; }
	nbdinfo --map --totals "$URI" >"$TMP/totals"
	note "$(wc -l <"$TMP/totals") totals lines: $(paste -sd ' ' "$TMP/totals" | tr -s ' ' | cut -c1-160)"
}

s_qemu_io() {
	need qemu-io
	# Pattern write/read-verify, write zeroes (with and without unmap),
	# discard, flush, FUA write, async I/O; every `read -P` verifies.
	qemu-io -f raw \
		-c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' \
		-c 'write -z 1M 1M' -c 'read -P 0 1M 1M' \
		-c 'write -P 0x11 2M 1M' -c 'discard 2M 1M' -c 'read -P 0 2M 1M' \
		-c 'write -P 0x22 3M 64k' -c 'write -z -u 3M 64k' -c 'read -P 0 3M 64k' \
		-c 'flush' -c 'write -f -P 0xcd 4M 64k' -c 'read -P 0xcd 4M 64k' \
		-c 'write -P 0x33 5M 2k' -c 'write -P 0x44 5243904 512' -c 'read -P 0x33 5M 512' \
		-c 'read -P 0x44 5243904 512' -c 'read -P 0x33 5244416 512' \
		-c 'aio_write -P 0x55 6M 64k' -c 'aio_write -P 0x66 7M 64k' -c 'aio_flush' \
		-c 'read -P 0x55 6M 64k' -c 'read -P 0x66 7M 64k' \
		-c 'read -P 0xab 0 1M' \
		"$URI" >"$TMP/qemu-io.out" 2>&1 || { grep -Ei -B2 'fail|error' "$TMP/qemu-io.out"; die "qemu-io failed"; }
	if grep -Eiq 'fail|error|mismatch' "$TMP/qemu-io.out"; then
		grep -Ei 'fail|error|mismatch' "$TMP/qemu-io.out" | head -5
		die "qemu-io reported a failure"
	fi
	note "$(grep -c '^read ' "$TMP/qemu-io.out") verified reads"
}

s_qemu_img() {
	need qemu-img
	gen "$TMP/convert.img" "$CONVERT_MB" 7
	wipe
	qemu-img convert -n -f raw -O raw "$TMP/convert.img" "$URI" 2>&1 | grep -v 'Image size mismatch' || true
	# The export is larger than the image: compare checks the rest reads as zero.
	qemu-img compare -f raw -F raw "$TMP/convert.img" "$URI" | tee "$TMP/compare.out"
	grep -q 'Images are identical' "$TMP/compare.out"
	rm -f "$TMP/convert.img"
	note "$CONVERT_MB MiB identical"
}

s_fio_verify() {
	need fio
	# 4 jobs = 4 NBD connections, each on its own range, mixed block sizes,
	# written randomly then read back and checked with crc32c.
	# Run in $TMP: fio would otherwise leave verify state files in the cwd.
	cd "$TMP"
	fio --name=verify --ioengine=nbd --uri="$URI" --rw=randwrite \
		--bssplit=4k/50:16k/20:64k/20:512k/10 --iodepth=16 --numjobs=4 \
		--size="${FIO_MB}M" --offset_increment="${FIO_MB}M" \
		--verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=1 --verify_state_save=0 \
		--group_reporting --output="$TMP/fio.out" || { tail -20 "$TMP/fio.out"; die "fio failed"; }
	grep -Eq 'err= *0' "$TMP/fio.out" || { grep -E 'err=' "$TMP/fio.out"; die "fio reported errors"; }
	note "4 jobs x ${FIO_MB} MiB, $(grep -Eo 'WRITE: bw=[^ ]+' "$TMP/fio.out" | head -1)"
}

s_nbdcopy() {
	need nbdcopy sha256sum
	gen "$TMP/copy.img" "$COPY_MB" 11
	local want got
	want=$(sha256sum <"$TMP/copy.img" | cut -d' ' -f1)
	wipe
	# Byte for byte like dd (no zero detection, no extents), then back with
	# the defaults (extents, zero detection, 4 connections).
	nbdcopy -S 0 --no-extents "$TMP/copy.img" "$URI"
	rm -f "$TMP/copy.img"
	nbdcopy "$URI" "$TMP/back.img"
	got=$(head -c "$((COPY_MB * 1048576))" "$TMP/back.img" | sha256sum | cut -d' ' -f1)
	[[ $got == "$want" ]] || die "sha256 mismatch: $got != $want"
	rm -f "$TMP/back.img"
	# Default direction too (zero detection -> WRITE_ZEROES, 4 connections).
	gen "$TMP/copy2.img" "$((COPY_MB / 4))" 12
	want=$(sha256sum <"$TMP/copy2.img" | cut -d' ' -f1)
	nbdcopy "$TMP/copy2.img" "$URI"
	got=$(nbdsh_ -c "import hashlib,sys; n=$((COPY_MB / 4 * 1048576)); b=bytearray()
for o in range(0, n, 1<<24): b += h.pread(min(1<<24, n-o), o)
print(hashlib.sha256(b).hexdigest())")
	[[ $got == "$want" ]] || die "sha256 mismatch after default nbdcopy: $got != $want"
	rm -f "$TMP/copy2.img"
	note "$COPY_MB MiB round trip sha256 ${want:0:16}"
}

# nbdfuse + loop + ext4 chain (fs.*): state between steps lives in $TMP.
s_fs_attach() {
	need nbdfuse losetup mkfs.ext4 e2fsck fstrim mountpoint
	nbdfuse -P "$TMP/fuse.pid" "$FM/nbd" "$URI" >"$TMP/nbdfuse.log" 2>&1 </dev/null &
	for _ in $(seq 100); do [[ -s $TMP/fuse.pid && -e $FM/nbd ]] && break; sleep 0.1; done
	[[ -e $FM/nbd ]] || { cat "$TMP/nbdfuse.log"; die "nbdfuse did not come up within 10 s"; }
	local l
	l=$(losetup -f --show "$FM/nbd")
	echo "$l" >"$TMP/loop"
	note "$l on $(stat -c %s "$FM/nbd") bytes"
}

s_fs_mkfs_write() {
	local l; l=$(cat "$TMP/loop")
	mkfs.ext4 -q -F "$l"    # discards the whole device first -> one big TRIM
	mount "$l" "$MNT"
	mkdir "$MNT/tree"
	gen "$MNT/big" "$FS_MB" 21
	"$PY" - "$MNT/tree" <<'EOF'
import os, random, sys
r = random.Random(5)
for i in range(300):   # small files, 0-16 KiB, half of them text
    d = os.path.join(sys.argv[1], "d%02d" % (i % 20))
    os.makedirs(d, exist_ok=True)
    n = r.randrange(16384)
    data = r.randbytes(n) if i % 2 else (b"%d small file\n" % i) * (n // 16)
    open(os.path.join(d, "f%03d" % i), "wb").write(data)
EOF
	(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$TMP/fs.sha"
	sync
	umount "$MNT"
	note "$(wc -l <"$TMP/fs.sha") files"
}

s_fs_fsck() {
	e2fsck -f -n "$(cat "$TMP/loop")"
}

s_fs_verify() {
	mount "$(cat "$TMP/loop")" "$MNT"
	(cd "$MNT" && sha256sum --quiet -c "$TMP/fs.sha")
}

s_fs_fstrim() {
	rm -f "$MNT/big"
	sync
	fstrim -v "$MNT" | tee "$TMP/fstrim.out"
	grep -q 'trimmed' "$TMP/fstrim.out"
	(cd "$MNT" && sha256sum --quiet -c <(grep -v ' ./big$' "$TMP/fs.sha"))
	umount "$MNT"
	e2fsck -f -n "$(cat "$TMP/loop")" >/dev/null
	note "$(cut -d' ' -f2- "$TMP/fstrim.out")"
}

s_fs_detach() {
	local l pid; l=$(cat "$TMP/loop")
	losetup -d "$l"
	rm -f "$TMP/loop"
	umount "$FM"
	pid=$(fuse_pid)
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	! kill -0 "$pid" 2>/dev/null || die "nbdfuse still running 10 s after unmount"
	rm -f "$TMP/fuse.pid"
}

s_still_serving() {
	# After every client above has gone, a fresh connection works.
	nbdsh_ -c 'h.pwrite(b"ok" * 2048, 0); assert h.pread(4096, 0) == b"ok" * 2048'
}

T0=$(date +%s)
step connect s_connect
if ((FAILED)); then
	echo "0 passed, 1 failed"
	exit 1
fi
step nbdinfo_json s_nbdinfo_json
step nbdinfo_map s_nbdinfo_map
step qemu_io_patterns s_qemu_io
step qemu_img_convert_compare s_qemu_img
step fio_verify_crc32c_4conn s_fio_verify
step nbdcopy_roundtrip_sha256 s_nbdcopy
step fs.nbdfuse_losetup s_fs_attach
step fs.mkfs_ext4_mount_write s_fs_mkfs_write
step fs.e2fsck s_fs_fsck
step fs.remount_verify s_fs_verify
step fs.fstrim s_fs_fstrim
step fs.detach s_fs_detach
step still_serving s_still_serving
echo "# $(($(date +%s) - T0))s, $URI$( ((QUICK)) && echo ', quick')"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
