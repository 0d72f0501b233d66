#!/bin/bash
# bench.sh - zramnbd side by side with its peers, in the same run, on the same data (issue 6):
# kernel zram (a private device, lz4), nbdkit memory allocator=zstd and allocator=sparse, and
# zramnbd with lz4 and zstd (level 3). Prints a table of absolute numbers and zramnbd/peer ratios
# and the issue's targets marked PASS/MISS (informational: the exit status says only whether
# something broke, e.g. data read back differs from what was written).
#
#   scripts/bench.sh [--quick] [--only WORKLOAD] [--out DIR] [--targets LIST] [--bin PATH] [--no-build]
#     --quick          small corpora, sub-second fio runs: under a minute (the test suite runs it)
#     --only W         seq | rand | latency | memory | scaling | tls | writeback | recompress | pool
#                      (seq and memory share one pass; tls = unix vs TCP vs TCP+TLS (PSK) for
#                      zramnbd and nbdkit; writeback = zramnbd-lz4 writing idle pages to a file on
#                      this disk; recompress = zramnbd with each primary algorithm, then lz4 with
#                      `recompress type=idle` to zstd (plain and with a train-dict dictionary),
#                      beside nbdkit zstd's RSS; pool = the zsmalloc port's own micro-benchmark,
#                      zspool-bench, full runs only)
#     --out DIR        where report.txt, results.tsv and raw fio output go
#                      (default /tmp/zramnbd-bench-<date>)
#     --targets LIST   comma list out of kzram,nbdkit-zstd,nbdkit-sparse,zramnbd-lz4,zramnbd-zstd
#     --bin PATH       the zramnbd binary to run (default: build release; --quick: newest built)
#     --no-build       do not run `swift build -c release --product zramnbd`
#
# Corpora are built once and cached in /var/tmp/zramnbd-bench/ (scripts/bench/corpus.py).
# Needs root (kernel zram, /proc/PID/mem). Cleans up every process, socket, zram device and temp
# file it made on exit, even on failure. Never touches zram0.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HELPERS=$ROOT/scripts/bench
PY=/usr/bin/python3     # not the pyenv shim: the system python
CACHE=/var/tmp/zramnbd-bench

QUICK=0 ONLY=all OUT="" TARGET_LIST="" BIN="" BUILD=1
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
	case $1 in
	--quick) QUICK=1 ;;
	--only) ONLY=${2:?}; shift ;;
	--out) OUT=${2:?}; shift ;;
	--targets) TARGET_LIST=${2:?}; shift ;;
	--bin) BIN=${2:?}; shift ;;
	--no-build) BUILD=0 ;;
	-h|--help) usage 0 ;;
	*) echo "bench.sh: unknown argument $1" >&2; usage 2 ;;
	esac
	shift
done
case $ONLY in all|seq|rand|latency|memory|scaling|tls|writeback|recompress|pool) ;; *) echo "bench.sh: unknown workload $ONLY" >&2; exit 2 ;; esac
want() { [[ $ONLY == all || $ONLY == "$1" ]]; }

# Quick mode keeps every code path but the 2-job and split-CPU repeats, with sub-second fio runs
# and one connection count for scaling, and two primaries for recompress (the debug build's
# Swift LZO is slow): five targets in well under a minute.
if ((QUICK)); then
	CORPUS_SET=quick FIO_MIB=32 RUNTIME=500ms LAT_RUNTIME=300ms JOB_COUNTS="1" SCALE_JOBS="" PINS="same" CONNS="2"
	PRIMARIES="lz4 zstd"
else
	CORPUS_SET=full FIO_MIB=256 RUNTIME=10 LAT_RUNTIME=5 JOB_COUNTS="1 2" SCALE_JOBS="4" PINS="same split" CONNS="1 2 4"
	PRIMARIES="lz4 lz4hc lzo lzo-rle zstd deflate"
fi
OUT=${OUT:-/tmp/zramnbd-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/raw"
: >"$OUT/results.tsv"
WORK=$(mktemp -d /tmp/zramnbd-bench-work.XXXXXX)
SOCK=$WORK/nbd.sock
UNIX_URI="nbd+unix:///zram0?socket=$SOCK"   # zramnbd's export name; nbdkit memory takes any
URI=$UNIX_URI
TRANSPORT=unix   # unix | tcp | tls (127.0.0.1:$PORT, TLS with the PSK in $PSK): tls_pass sets it
NCPU=$(nproc)
ZRAMNBD_EXTRA=()   # more zramnbd serve flags for the next start_target (writeback_pass, recompress_pass);
                   # they come last, so an --algorithm there wins

T_START=$EPOCHREALTIME
log() { printf 'bench: %5.1fs %s\n' "$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')" "$*" >&2; }
put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$OUT/results.tsv"; }   # TARGET KEY VALUE
note() { log "note: $2"; put "$1" note "$2"; }
# Something broke (not merely slow): noted in the report, and the exit status is 1. Written to
# the results file because it is often called from a subshell.
broke() { log "ERROR: $*"; put - note "ERROR: $*"; }

# ---------------------------------------------------------------- process and device hygiene
# Job control gives every background job its own process group, so one kill stops a whole
# pipeline; long commands run in the background and are waited for, so a signal is handled at
# once (bash defers traps while a foreground child runs).
set -m
BG=""        # the running client job (pipeline), if any
SERVER=""    # the running NBD server's pid, if any
KZ_ID=""     # our private kernel zram device number, if any

run() { "$@" & BG=$!; local rc=0; wait "$BG" || rc=$?; BG=""; return $rc; }

stop_pid() {   # stop_pid PID [group]: TERM, up to 5 s, then KILL
	local pid=$1 target=$1
	[[ ${2:-} == group ]] && target=-$1
	kill -TERM -- "$target" 2>/dev/null || return 0
	for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL -- "$target" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	set +e
	[[ -n $BG ]] && stop_pid "$BG" group
	[[ -n $SERVER ]] && stop_pid "$SERVER" group
	if [[ -n $KZ_ID && $KZ_ID != 0 ]]; then
		for _ in $(seq 20); do   # EBUSY while a killed client still holds it open: retry
			echo 1 >"/sys/block/zram$KZ_ID/reset" 2>/dev/null
			echo "$KZ_ID" >/sys/class/zram-control/hot_remove 2>/dev/null && break
			sleep 0.25
		done
		[[ -e /sys/block/zram$KZ_ID ]] && log "could not remove zram$KZ_ID"
	fi
	rm -rf "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
rss_bytes() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }

# ---------------------------------------------------------------- setup
[[ $(id -u) == 0 ]] || { echo "bench.sh: needs root (kernel zram, /proc/PID/mem)" >&2; exit 1; }
"$ROOT/scripts/install-deps.sh"   # fio, nbdkit, libnbd-bin, e2fsprogs, util-linux (idempotent)

ALL_TARGETS=(kzram nbdkit-zstd nbdkit-sparse zramnbd-lz4 zramnbd-zstd)
TARGETS=()
for t in "${ALL_TARGETS[@]}"; do
	[[ -z $TARGET_LIST || ,$TARGET_LIST, == *,$t,* ]] && TARGETS+=("$t")
done
((${#TARGETS[@]})) || { echo "bench.sh: no known target in --targets $TARGET_LIST" >&2; exit 2; }
SKIP=" "     # targets that cannot run here, with a note saying why

# zramnbd: the binary, and whether it serves yet (it is written in parallel with this script).
if [[ -z $BIN ]]; then
	if ((BUILD && !QUICK)); then
		log "building zramnbd (release)"
		(cd "$ROOT" && swift build -c release --product zramnbd >&2) || broke "swift build -c release failed"
		if want pool; then
			(cd "$ROOT" && swift build -c release --product zspool-bench >&2) || broke "swift build zspool-bench failed"
		fi
		BIN=$ROOT/.build/release/zramnbd
	else   # quick mode runs inside the test suite: use what is built, the newest binary
		BIN=$(ls -t "$ROOT"/.build/{release,debug}/zramnbd 2>/dev/null | head -1 || true)
	fi
fi
if [[ -z $BIN || ! -x $BIN ]]; then
	SKIP+="zramnbd-lz4 zramnbd-zstd "; note - "zramnbd: no binary built (swift build --product zramnbd): its columns are n/a"
elif [[ $("$BIN" serve --help 2>&1) != *--socket* ]]; then   # not `| grep -q`: pipefail and SIGPIPE
	SKIP+="zramnbd-lz4 zramnbd-zstd "; note - "zramnbd: $BIN has no 'serve' command yet: its columns are n/a"
else
	put - info.zramnbd "$BIN"
fi

# Kernel zram: a private device from hot_add; skipped with a note where absent.
if [[ " ${TARGETS[*]} " == *" kzram "* ]]; then
	[[ -e /sys/class/zram-control/hot_add ]] || modprobe zram 2>/dev/null || true
	if [[ ! -e /sys/class/zram-control/hot_add ]]; then
		SKIP+="kzram "; note kzram "kernel zram is absent here (no /sys/class/zram-control): skipped"
	else
		KZ_ID=$(cat /sys/class/zram-control/hot_add)
		if [[ $KZ_ID == 0 || ! -d /sys/block/zram$KZ_ID ]]; then
			KZ_ID=""; SKIP+="kzram "; note kzram "hot_add did not give a private device: skipped"
		elif ! grep -qw lz4 "/sys/block/zram$KZ_ID/comp_algorithm"; then
			SKIP+="kzram "; note kzram "kernel zram has no lz4: skipped"
		else
			KZ=/sys/block/zram$KZ_ID KZ_DEV=/dev/zram$KZ_ID
			for _ in $(seq 50); do [[ -b $KZ_DEV ]] && break; sleep 0.1; done
			put - info.kernel-zram "zram$KZ_ID (private, removed on exit), lz4"
		fi
	fi
fi
active() { [[ $SKIP != *" $1 "* ]]; }

put - info.mode "$([[ $QUICK == 1 ]] && echo quick || echo full), started $(date '+%F %T')"
put - info.machine "$NCPU CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
put - info.tools "$(fio --version), $(nbdkit --version), $(nbdcopy --version | head -1)"

log "corpora ($CORPUS_SET) in $CACHE"
CORPORA=()
while IFS=$'\t' read -r name path bytes desc; do
	CORPORA+=("$name:$path:$bytes")
	put - "corpus.$name.bytes" "$bytes"
	put - "corpus.$name.desc" "$desc"
done < <("$PY" "$HELPERS/corpus.py" "$CACHE" "$CORPUS_SET")
((${#CORPORA[@]} == 4)) || { broke "corpus.py did not build the corpora"; exit 1; }

# ---------------------------------------------------------------- targets
# A target is either the kernel device (dd, fio libaio) or an NBD server on $SOCK (nbdcopy, fio nbd).
is_nbd() { [[ $1 != kzram ]]; }

start_target() {   # start_target TARGET BYTES: a fresh, empty device of exactly BYTES
	local t=$1 bytes=$2 size=$(($2 / 1048576))M
	if [[ $t == kzram ]]; then
		echo 1 >"$KZ/reset"
		echo lz4 >"$KZ/comp_algorithm"
		echo "$bytes" >"$KZ/disksize"
		return
	fi
	rm -f "$SOCK"
	rm -rf "$WORK/stats"; mkdir -p "$WORK/stats"
	local argv
	case $t in
	nbdkit-zstd|nbdkit-sparse)
		argv=(nbdkit -f --exit-with-parent)
		if [[ $TRANSPORT == unix ]]; then argv+=(-U "$SOCK"); else argv+=(-i 127.0.0.1 -p "$PORT"); fi
		[[ $TRANSPORT == tls ]] && argv+=(--tls=require "--tls-psk=$PSK")
		argv+=(memory "$size" "allocator=${t#nbdkit-}") ;;
	zramnbd-lz4|zramnbd-zstd)
		# Its own control socket: a system daemon or a test may hold the default one.
		argv=("$BIN" serve --device zram0 --size "$size" --chain-size 8 --socket "$SOCK"
			--stats-dir "$WORK/stats" --stats-interval 0.2 --control-socket "$WORK/ctl.sock" --no-mlock)
		if [[ $t == zramnbd-lz4 ]]; then argv+=(--algorithm lz4); else argv+=(--algorithm zstd --level 3); fi
		argv+=("${ZRAMNBD_EXTRA[@]}")
		[[ $TRANSPORT != unix ]] && argv+=(--listen "127.0.0.1:$PORT")
		[[ $TRANSPORT == tls ]] && argv+=(--tls=require --tls-psk "$PSK") ;;
	esac
	"${argv[@]}" >>"$OUT/raw/$t.server.log" 2>&1 &
	SERVER=$!
	for _ in $(seq 100); do
		{ [[ -S $SOCK || $TRANSPORT != unix ]]; } && nbdinfo --size "$URI" >/dev/null 2>&1 && return 0
		kill -0 "$SERVER" 2>/dev/null || break
		sleep 0.1
	done
	broke "$t did not start serving (see $OUT/raw/$t.server.log): its remaining workloads are skipped"
	stop_target "$t"
	SKIP+="$t "
	return 1
}

stop_target() {
	if [[ $1 == kzram ]]; then echo 1 >"$KZ/reset"; return; fi
	[[ -n $SERVER ]] && stop_pid "$SERVER" group
	SERVER=""
}

mm_stat() {   # the 9 mm_stat fields of the running target (kernel or zramnbd), or nothing
	if [[ $1 == kzram ]]; then cat "$KZ/mm_stat"; return; fi
	local f
	for f in "$WORK/stats/mm_stat" "$WORK"/stats/*/mm_stat; do
		[[ -r $f ]] && { cat "$f"; return; }
	done
}

mm_stat_settled() {   # mm_stat once orig_data_size counts all BYTES written (stats may lag)
	local t=$1 bytes=$2 m=""
	for _ in $(seq 50); do
		m=$(mm_stat "$t")
		[[ -n $m && $(awk '{ print $1 }' <<<"$m") == "$bytes" ]] && break
		sleep 0.1
	done
	echo "$m"
}

pin_server() {   # pin_server CPULIST: every thread of the server (new ones inherit it)
	taskset -a -p -c "$1" "$SERVER" >/dev/null
}

# ---------------------------------------------------------------- workloads
write_corpus() {   # write_corpus TARGET PATH [CONNS]
	if [[ $1 == kzram ]]; then
		run dd if="$2" of="$KZ_DEV" bs=1M oflag=direct status=none
	else
		run nbdcopy -S 0 --no-extents ${3:+--connections=$3} "$2" "$URI"
	fi
}

read_back() {   # read_back TARGET [CONNS]: the timed read, into nothing
	if [[ $1 == kzram ]]; then
		run dd if="$KZ_DEV" of=/dev/null bs=1M iflag=direct status=none
	else
		run nbdcopy --no-extents ${2:+--connections=$2} "$URI" null:
	fi
}

verify() {   # verify TARGET PATH: what the device holds is byte for byte the corpus
	local ok=1
	if [[ $1 == kzram ]]; then
		run bash -c 'dd if="$1" bs=1M iflag=direct status=none | cmp -s - "$2"' _ "$KZ_DEV" "$2" || ok=0
	else
		run bash -c 'nbdcopy --no-extents "$1" - | cmp -s - "$2"' _ "$URI" "$2" || ok=0
	fi
	((ok)) || broke "$1: data read back differs from $(basename "$2")"
	return 0
}

corpus_pass() {   # 1. sequential write + read-back, and 4. memory, per corpus
	local t=$1 c name path bytes t0 t1 t2 m rss0
	for c in "${CORPORA[@]}"; do
		IFS=: read -r name path bytes <<<"$c"
		active "$t" || return 0
		log "$t: $name: write, read-back, verify"
		cat "$path" >/dev/null   # corpus in the page cache: time the device, not the disk
		start_target "$t" "$bytes" || continue
		is_nbd "$t" && rss0=$(rss_bytes "$SERVER")
		t0=$(now); write_corpus "$t" "$path"; t1=$(now)
		put "$t" "seq.$name.write_s" "$(elapsed "$t0" "$t1")"
		if [[ $t == kzram || $t == zramnbd-* ]]; then
			m=$(mm_stat_settled "$t" "$bytes")
			if [[ -n $m ]]; then
				read -r -a f <<<"$m"
				put "$t" "mem.$name.orig" "${f[0]}"; put "$t" "mem.$name.compr" "${f[1]}"
				put "$t" "mem.$name.mem_used" "${f[2]}"; put "$t" "mem.$name.same" "${f[5]}"
				put "$t" "mem.$name.huge" "${f[7]}"; put "$t" "mem.$name.mm_stat" "$m"
				[[ ${f[0]} == "$bytes" ]] || note "$t" "$name: mm_stat orig_data_size ${f[0]} != $bytes written"
			else
				note "$t" "no mm_stat found"
			fi
		fi
		if is_nbd "$t"; then
			put "$t" "mem.$name.rss0" "$rss0"
			put "$t" "mem.$name.rss" "$(rss_bytes "$SERVER")"
		fi
		t1=$(now); read_back "$t"; t2=$(now)
		put "$t" "seq.$name.read_s" "$(elapsed "$t1" "$t2")"
		verify "$t" "$path"
		stop_target "$t"
	done
}

fio_run() {   # fio_run TARGET TAG JOBFILE [ENV=VAL...]: run one fio job, record its summary under TAG
	local t=$1 tag=$2 job=$3 json=$OUT/raw/$1.$2.json
	shift 3
	local engine target
	if [[ $t == kzram ]]; then engine=libaio target="filename=$KZ_DEV"; else engine=nbd target="uri=$URI"; fi
	if ! run env FIO_ENGINE=$engine FIO_TARGET="$target" FIO_OFFSET=0 FIO_SIZE=${FIO_MIB}M "$@" \
		${CLIENT_CPU:+taskset -c $CLIENT_CPU} fio --output-format=json --output="$json" "$HELPERS/$job"; then
		broke "$t: fio $tag failed (see $json)"
		return 1
	fi
	"$PY" "$HELPERS/report.py" fio "$json"
}

rand_pass() {   # 2. 4k random QD32 (1 and 2 jobs; 4 jobs for scaling), 3. QD1 latency
	local t=$1 j op s
	log "$t: fio prefill + 4k random I/O"
	start_target "$t" $((FIO_MIB * 1048576)) || return 0
	CLIENT_CPU=""
	fio_run "$t" prefill prefill.fio >/dev/null || { stop_target "$t"; return 0; }
	if want rand || want scaling; then
		local counts=$JOB_COUNTS
		want scaling && counts+=" $SCALE_JOBS"
		for j in $counts; do
			for op in write read; do
				s=$(fio_run "$t" "rand$op.j$j" rand4k.fio RW=rand$op QD=32 JOBS=$j RUNTIME=$RUNTIME) || continue
				put "$t" "rand.$op.j$j.iops" "$(cut -d' ' -f1 <<<"$s")"
			done
		done
	fi
	if want latency; then
		log "$t: QD1 latency"
		local pins=same
		if is_nbd "$t" && ((NCPU > 1)); then pins=$PINS; fi
		for pin in $pins; do
			CLIENT_CPU=0
			if is_nbd "$t"; then
				if [[ $pin == same ]]; then pin_server 0; else pin_server 1; fi
			fi
			for op in read write; do
				s=$(fio_run "$t" "lat$op.$pin" rand4k.fio RW=rand$op QD=1 JOBS=1 RUNTIME=$LAT_RUNTIME) || continue
				put "$t" "lat.$op.$pin.p50" "$(cut -d' ' -f3 <<<"$s")"
				put "$t" "lat.$op.$pin.p99" "$(cut -d' ' -f4 <<<"$s")"
			done
			CLIENT_CPU=""
		done
	fi
	stop_target "$t"
}

scaling_pass() {   # 5. nbdcopy of the ext4 corpus with 1, 2, 4 connections
	local t=$1 c name path bytes t0 t1 t2
	is_nbd "$t" || return 0
	IFS=: read -r name path bytes <<<"${CORPORA[0]}"
	for c in $CONNS; do
		log "$t: nbdcopy $name with $c connection(s)"
		start_target "$t" "$bytes" || return 0
		t0=$(now); write_corpus "$t" "$path" "$c"; t1=$(now); read_back "$t" "$c"; t2=$(now)
		put "$t" "scale.write.c$c" "$(awk -v b="$bytes" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", b / s / 1e6 }')"
		put "$t" "scale.read.c$c" "$(awk -v b="$bytes" -v s="$(elapsed "$t1" "$t2")" 'BEGIN { printf "%.1f", b / s / 1e6 }')"
		verify "$t" "$path"
		stop_target "$t"
	done
}

tls_pass() {   # 7. the same device over the unix socket, TCP, and TCP with TLS (PSK)
	local t=$1 name path bytes t0 t1 t2 s op
	is_nbd "$t" || return 0
	IFS=: read -r name path bytes <<<"${CORPORA[0]}"
	for TRANSPORT in unix tcp tls; do
		case $TRANSPORT in
		unix) URI=$UNIX_URI ;;
		tcp) URI="nbd://127.0.0.1:$PORT/zram0" ;;
		tls) URI="nbds://bench@127.0.0.1:$PORT/zram0?tls-psk-file=$PSK" ;;
		esac
		log "$t over $TRANSPORT: nbdcopy $name, 4k random QD32 (nbd-iops)"
		start_target "$t" "$bytes" || break
		t0=$(now); write_corpus "$t" "$path"; t1=$(now); read_back "$t"; t2=$(now)
		put "$t" "tls.$TRANSPORT.write" "$(awk -v b="$bytes" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", b / s / 1e6 }')"
		put "$t" "tls.$TRANSPORT.read" "$(awk -v b="$bytes" -v s="$(elapsed "$t1" "$t2")" 'BEGIN { printf "%.1f", b / s / 1e6 }')"
		verify "$t" "$path"
		for op in write read; do
			if s=$("$WORK/nbd-iops" "$URI" "$op" 32 "${RUNTIME%ms}$([[ $RUNTIME == *ms ]] && echo e-3)" 2>>"$OUT/raw/$t.nbd-iops.log"); then
				put "$t" "tls.$TRANSPORT.rand$op" "$s"
			else
				broke "$t: nbd-iops $op over $TRANSPORT failed (see $OUT/raw/$t.nbd-iops.log)"
			fi
		done
		stop_target "$t"
	done
	TRANSPORT=unix URI=$UNIX_URI
}

writeback_pass() {   # 8. writeback of the real corpora to a file on this disk (zramnbd-lz4)
	local t=$1 c name path bytes mode m0 m1 rss0 rss1 t0 t1 s pages during
	[[ $t == zramnbd-lz4 ]] || return 0
	for c in "${CORPORA[@]}"; do
		IFS=: read -r name path bytes <<<"$c"
		[[ $name == ext4 || $name == procmem ]] || continue
		for mode in plain compressed packed; do
			log "$t: $name: writeback ($mode) to $WORK/backing"
			ZRAMNBD_EXTRA=(--backing-dev "$WORK/backing")
			[[ $mode != plain ]] && ZRAMNBD_EXTRA+=(--compressed-writeback)
			[[ $mode == packed ]] && ZRAMNBD_EXTRA+=(--writeback-packing)
			start_target "$t" "$bytes" || { ZRAMNBD_EXTRA=(); continue; }
			ZRAMNBD_EXTRA=()
			write_corpus "$t" "$path"
			m0=$(mm_stat_settled "$t" "$bytes"); rss0=$(rss_bytes "$SERVER")
			local fsize=FIO_SIZE=$((bytes / 1048576))M
			s=$(fio_run "$t" "wb.$name.$mode.ram" rand4k.fio RW=randread QD=1 JOBS=1 RUNTIME=$LAT_RUNTIME "$fsize") || true
			put "$t" "wb.$name.$mode.ram.p50" "$(cut -d' ' -f3 <<<"$s")"; put "$t" "wb.$name.$mode.ram.p99" "$(cut -d' ' -f4 <<<"$s")"
			# Reads of the first half, in RAM, while the second half is written back (started a moment
			# later); then the first half, with nothing else running.
			local half_mib=$((bytes / 2 / 1048576)) s2
			local half=$((half_mib * 256))   # pages
			during=$WORK/during.txt
			( fio_run "$t" "wb.$name.$mode.during" rand4k.fio RW=randread QD=1 JOBS=1 RUNTIME=$LAT_RUNTIME \
				FIO_SIZE=${half_mib}M >"$during" ) &
			local fio_pid=$!
			sleep 0.5
			t0=$(now)
			s=$("$BIN" ctl --control-socket "$WORK/ctl.sock" zram0 writeback "page_indexes=$half-$((bytes / 4096 - 1))") || broke "$t: ctl writeback failed: $s"
			t1=$(now)
			wait "$fio_pid" || true
			put "$t" "wb.$name.$mode.during.p50" "$(cut -d' ' -f3 <"$during")"; put "$t" "wb.$name.$mode.during.p99" "$(cut -d' ' -f4 <"$during")"
			"$BIN" ctl --control-socket "$WORK/ctl.sock" zram0 idle all
			local t2=$(now)
			s2=$("$BIN" ctl --control-socket "$WORK/ctl.sock" zram0 writeback type=idle) || broke "$t: ctl writeback failed: $s2"
			local t3=$(now)
			pages=$(($(sed -n 's/^wrote back \([0-9]*\) pages.*/\1/p' <<<"$s") + $(sed -n 's/^wrote back \([0-9]*\) pages.*/\1/p' <<<"$s2")))
			t1=$(awk -v a="$t1" -v b="$t2" -v c="$t3" 'BEGIN { printf "%.6f", a + (c - b) }')
			m1=$(mm_stat "$t"); rss1=$(rss_bytes "$SERVER")
			read -r -a a <<<"$m0"; read -r -a b <<<"$m1"
			put "$t" "wb.$name.$mode.pages" "$pages"
			put "$t" "wb.$name.$mode.mbs" "$(awk -v p="$pages" -v s="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", p * 4096 / s / 1e6 }')"
			put "$t" "wb.$name.$mode.freed_per_mib" "$(awk -v f=$((a[2] - b[2])) -v p="$pages" 'BEGIN { printf "%.3f", p ? f / (p * 4096) : 0 }')"
			put "$t" "wb.$name.$mode.rss_freed_per_mib" "$(awk -v f=$((rss0 - rss1)) -v p="$pages" 'BEGIN { printf "%.3f", p ? f / (p * 4096) : 0 }')"
			put "$t" "wb.$name.$mode.mem_used" "${a[2]} ${b[2]}"
			# Blocks in use (bd_count), not the file's allocation: freed blocks are reused, not punched.
			local blocks
			read -r blocks _ <"$WORK/stats/bd_stat"
			put "$t" "wb.$name.$mode.backing_per_page" "$(awk -v b=$((blocks * 4096)) -v p="$pages" 'BEGIN { printf "%.0f", p ? b / p : 0 }')"
			s=$(fio_run "$t" "wb.$name.$mode.back" rand4k.fio RW=randread QD=1 JOBS=1 RUNTIME=$LAT_RUNTIME "$fsize") || true
			put "$t" "wb.$name.$mode.back.p50" "$(cut -d' ' -f3 <<<"$s")"; put "$t" "wb.$name.$mode.back.p99" "$(cut -d' ' -f4 <<<"$s")"
			verify "$t" "$path"
			stop_target "$t"
			[[ -e $WORK/backing ]] && broke "$t: the backing file it created is still there after exit"
		done
	done
}

recompress_pass() {   # 9. every primary algorithm, then lz4 recompressed to zstd; nbdkit zstd beside them
	local t=$1 c name path bytes a t0 t1 m0 m1 rss0 rss1 s mode
	[[ $t == zramnbd-lz4 || $t == nbdkit-zstd ]] || return 0
	for c in "${CORPORA[@]}"; do
		IFS=: read -r name path bytes <<<"$c"
		[[ $name == ext4 || $name == procmem ]] || continue
		cat "$path" >/dev/null
		if [[ $t == nbdkit-zstd ]]; then   # what zramnbd's memory goal is measured against
			log "$t: $name: RSS growth"
			start_target "$t" "$bytes" || continue
			rss0=$(rss_bytes "$SERVER"); write_corpus "$t" "$path"; rss1=$(rss_bytes "$SERVER")
			put "$t" "rc.$name.nbdkit.rss_growth" $((rss1 - rss0))
			verify "$t" "$path"
			stop_target "$t"
			continue
		fi
		for a in $PRIMARIES; do
			log "$t: $name: primary $a"
			ZRAMNBD_EXTRA=(--algorithm "$a")
			start_target "$t" "$bytes" || { ZRAMNBD_EXTRA=(); continue; }
			ZRAMNBD_EXTRA=()
			t0=$(now); write_corpus "$t" "$path"; t1=$(now)
			read -r -a m0 <<<"$(mm_stat_settled "$t" "$bytes")"
			put "$t" "rc.$name.primary.$a.write_s" "$(elapsed "$t0" "$t1")"
			put "$t" "rc.$name.primary.$a.mem" "${m0[2]:-}"; put "$t" "rc.$name.primary.$a.compr" "${m0[1]:-}"
			verify "$t" "$path"
			stop_target "$t"
		done
		# lz4, then idle pages recompressed with zstd-3: as it is, and with a dictionary trained
		# from the device's own pages first (train-dict's defaults).
		for mode in zstd dict; do
			log "$t: $name: lz4, then recompress type=idle with $mode"
			ZRAMNBD_EXTRA=(--recomp-algorithm zstd)
			start_target "$t" "$bytes" || { ZRAMNBD_EXTRA=(); continue; }
			ZRAMNBD_EXTRA=()
			rss0=$(rss_bytes "$SERVER")
			write_corpus "$t" "$path"
			read -r -a m0 <<<"$(mm_stat_settled "$t" "$bytes")"
			local fsize=FIO_SIZE=$((bytes / 1048576))M ctl=("$BIN" ctl --control-socket "$WORK/ctl.sock" zram0)
			s=$(fio_run "$t" "rc.$name.$mode.before" rand4k.fio RW=randread QD=1 JOBS=1 RUNTIME=$LAT_RUNTIME "$fsize") || true
			put "$t" "rc.$name.$mode.before.p50" "$(cut -d' ' -f3 <<<"$s")"
			if [[ $mode == dict ]]; then
				t0=$(now)
				s=$("${ctl[@]}" train-dict) || broke "$t: ctl train-dict failed: $s"
				t1=$(now)
				put "$t" "rc.$name.$mode.train_s" "$(elapsed "$t0" "$t1")"
				put "$t" "rc.$name.$mode.trained" "$s"
			fi
			"${ctl[@]}" idle all
			t0=$(now)
			s=$("${ctl[@]}" recompress type=idle) || broke "$t: ctl recompress failed: $s"
			t1=$(now)
			read -r -a m1 <<<"$(mm_stat "$t")"
			put "$t" "rc.$name.$mode.recompress_s" "$(elapsed "$t0" "$t1")"
			put "$t" "rc.$name.$mode.pages" "$(sed -n 's/^recompressed \([0-9]*\) of.*/\1/p' <<<"$s")"
			put "$t" "rc.$name.$mode.mem_before" "${m0[2]:-}"; put "$t" "rc.$name.$mode.mem" "${m1[2]:-}"
			put "$t" "rc.$name.$mode.compr" "${m1[1]:-}"
			# Recompression leaves the old objects' zspages partly empty, as in the kernel: compact.
			"${ctl[@]}" compact >/dev/null || broke "$t: ctl compact failed"
			read -r -a m1 <<<"$(mm_stat "$t")"
			rss1=$(rss_bytes "$SERVER")
			put "$t" "rc.$name.$mode.mem_compacted" "${m1[2]:-}"; put "$t" "rc.$name.$mode.rss_growth" $((rss1 - rss0))
			s=$(fio_run "$t" "rc.$name.$mode.after" rand4k.fio RW=randread QD=1 JOBS=1 RUNTIME=$LAT_RUNTIME "$fsize") || true
			put "$t" "rc.$name.$mode.after.p50" "$(cut -d' ' -f3 <<<"$s")"
			verify "$t" "$path"
			stop_target "$t"
		done
	done
}

# ---------------------------------------------------------------- run
if want tls; then
	PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	PSK=$WORK/bench.psk
	psktool -u bench -p "$PSK" >/dev/null
	gcc -O2 -o "$WORK/nbd-iops" "$HELPERS/nbd-iops.c" $(pkg-config --cflags --libs libnbd) || broke "cannot build nbd-iops"
	put - info.tls "$(gnutls-cli --version | head -1); kernel TLS (kTLS): $(grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp && echo available || echo 'not in this kernel (no tls ULP): GnuTLS does the records')"
fi
START=$(now)
for t in "${TARGETS[@]}"; do
	if active "$t" && { want seq || want memory; }; then corpus_pass "$t"; fi
	if active "$t" && { want rand || want latency || want scaling; }; then rand_pass "$t"; fi
	if active "$t" && want scaling; then scaling_pass "$t"; fi
	if active "$t" && want tls && [[ $t == zramnbd-lz4 || $t == nbdkit-sparse ]]; then tls_pass "$t"; fi
	if active "$t" && want writeback; then writeback_pass "$t"; fi
	if active "$t" && want recompress; then recompress_pass "$t"; fi
done
# 6. The pool alone (no compression, no NBD): the zsmalloc port's own numbers. Release build
# only, so full runs only.
if ((!QUICK)) && want pool; then
	if [[ -x $ROOT/.build/release/zspool-bench ]]; then
		log "zspool-bench"
		run "$ROOT/.build/release/zspool-bench" >"$OUT/raw/zspool-bench.txt" 2>&1 || broke "zspool-bench failed"
		n=0
		while IFS= read -r line; do put - "pool.$((n++))" "$line"; done <"$OUT/raw/zspool-bench.txt"
	else
		note - "zspool-bench is not built (swift build -c release --product zspool-bench): pool numbers left out"
	fi
fi
put - info.duration "$(awk -v s="$(elapsed "$START" "$(now)")" 'BEGIN { printf "%.0f s", s }') for the workloads"

"$PY" "$HELPERS/report.py" table "$OUT/results.tsv" "$ONLY" | tee "$OUT/report.txt"
log "report saved to $OUT/report.txt"
! grep -q $'\tnote\tERROR: ' "$OUT/results.tsv"
