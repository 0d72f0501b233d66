#!/bin/bash
# nbd-tester-client.sh - run nbd 3.24's own test client against any NBD server.
#
#   scripts/nbd-tester-client.sh SOCKET [EXPORT]
#
# Builds `nbd-tester-client` from the nbd 3.24 sources into a cache outside the
# repository (default /var/cache/zramnbd/nbd-tester, override with
# NBD_TESTER_CACHE) and runs, against the unix socket SOCKET:
#   -h           handshake test
#   -o           oversize requests (1 MiB, 1 MiB+14, 2 MiB+28)
#   -w -f        write the whole export in 1 KiB requests, with flushes
#   -i -t integrity-test.tr       replay of parallel reads/writes/flushes/FUA,
#   -i -t integrityhuge-test.tr   every block checked (export zeroed first)
# The export is overwritten.  Prints PASS/FAIL per test and "N passed, N failed";
# exits 1 on any failure.
#
# Sources, first that works:
#   1. the Debian source package nbd 1:3.24-1.1 through `apt-get source`, with
#      a private deb-src list (the system's apt configuration is not touched);
#   2. NBD_SOURCE=PATH: an unpacked nbd-3.24 tree, a tarball of it, or a git
#      repository of NetworkBlockDevice/nbd (tag nbd-3.24 is used).
# Nothing from nbd is copied into this repository.
set -uo pipefail

usage() { echo "usage: $0 SOCKET [EXPORT]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 && $1 != -* ]] || usage
SOCK=$(realpath "$1")
EXPORT=${2-}
[[ -S $SOCK ]] || { echo "$0: $SOCK is not a socket" >&2; exit 2; }

VERSION=3.24 DEBVERSION=1:3.24-1.1
CACHE=${NBD_TESTER_CACHE:-/var/cache/zramnbd/nbd-tester}
BIN=$CACHE/nbd-$VERSION/nbd-tester-client-r2   # -rN: bump when build() changes
TRACES=$CACHE/nbd-$VERSION/tests/run
TIMEOUT=${NBD_TESTER_TIMEOUT:-600}   # per test, seconds
export PATH=/usr/bin:$PATH           # nbdsh must exec Debian's python3 (has nbd)

PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
finish() { echo "$PASSED passed, $FAILED failed"; ((FAILED == 0)); exit; }

# --- getting the sources ----------------------------------------------------
# apt-get with a private source list, list directory and cache.
apt_private() {
	apt-get -q -o Dir::Etc::SourceList=/dev/null \
		-o Dir::Etc::SourceParts="$CACHE/apt/sources.list.d" \
		-o Dir::State::Lists="$CACHE/apt/lists" \
		-o Dir::Cache="$CACHE/apt/cache" "$@"
}

source_from_debian() {
	local codename
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[[ -n $codename ]] || return 1
	command -v dpkg-source >/dev/null || { echo "dpkg-source missing (package dpkg-dev)"; return 1; }
	mkdir -p "$CACHE/apt/sources.list.d" "$CACHE/apt/lists/partial" "$CACHE/apt/cache/archives/partial" "$CACHE/dl"
	cat >"$CACHE/apt/sources.list.d/nbd-src.sources" <<-EOF
		Types: deb-src
		URIs: http://deb.debian.org/debian
		Suites: $codename
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	apt_private update >/dev/null || return 1
	(cd "$CACHE/dl" && apt_private source --download-only "nbd=$DEBVERSION") || return 1
	rm -rf "$CACHE/nbd-$VERSION"
	dpkg-source -x "$CACHE/dl/nbd_${DEBVERSION#1:}.dsc" "$CACHE/nbd-$VERSION" >/dev/null
}

source_from_path() {
	local src=${NBD_SOURCE:-}
	[[ -n $src ]] || { echo "NBD_SOURCE not set"; return 1; }
	rm -rf "$CACHE/nbd-$VERSION"
	mkdir -p "$CACHE/nbd-$VERSION"
	if [[ -f $src ]]; then
		tar -xf "$src" -C "$CACHE/nbd-$VERSION" --strip-components=1
	elif [[ -f $src/tests/run/nbd-tester-client.c ]]; then
		cp -a "$src/." "$CACHE/nbd-$VERSION/"
	elif git --git-dir="$src" rev-parse -q --verify "nbd-$VERSION^{commit}" >/dev/null 2>&1 ||
		git --git-dir="$src/.git" rev-parse -q --verify "nbd-$VERSION^{commit}" >/dev/null 2>&1; then
		[[ -d $src/.git ]] && src=$src/.git
		git --git-dir="$src" archive "nbd-$VERSION" | tar -x -C "$CACHE/nbd-$VERSION"
	else
		echo "NBD_SOURCE=$src: not a tarball, an nbd tree or a git repository with tag nbd-$VERSION"
		return 1
	fi
}

build() {
	local d=$CACHE/nbd-$VERSION
	[[ -f $d/tests/run/nbd-tester-client.c && -f $TRACES/integrity-test.tr ]] || return 1
	# What ./configure would find on Linux/x86-64 and glibc; NOTLS drops GnuTLS.
	cat >"$d/config.h" <<-'EOF'
		#define SIZEOF_UNSIGNED_INT 4
		#define SIZEOF_UNSIGNED_LONG_INT 8
		#define SIZEOF_UNSIGNED_LONG_LONG_INT 8
		#define SIZEOF_UNSIGNED_SHORT_INT 2
		#define NBD_LFS 1
		#define HAVE_MKSTEMP 1
		#define PACKAGE_VERSION "3.24"
	EOF
	# 3.24 treats writing a 0-byte name as an error, so it could not ask for
	# the default export "": skip that write when the name is empty.
	sed -i 's/^\(\s*\)WRITE_ALL_ERRCHK(sock, name, strlen(name), err,/\1if (strlen(name)) WRITE_ALL_ERRCHK(sock, name, strlen(name), err,/' \
		"$d/tests/run/nbd-tester-client.c"
	grep -q 'if (strlen(name)) WRITE_ALL_ERRCHK' "$d/tests/run/nbd-tester-client.c" || { echo "patch failed"; return 1; }
	pkg-config --exists glib-2.0 || { echo "glib-2.0 missing (package libglib2.0-dev)"; return 1; }
	# shellcheck disable=SC2046
	gcc -O2 -w -I"$d" -DNOTLS -o "$BIN.tmp" "$d/tests/run/nbd-tester-client.c" "$d/cliserv.c" \
		$(pkg-config --cflags --libs glib-2.0) && mv "$BIN.tmp" "$BIN"
}

ensure_tester() {
	[[ -x $BIN && -f $TRACES/integrityhuge-test.tr ]] && return 0
	# Sources already unpacked by an earlier run: just (re)build.
	build >"$CACHE/build.log" 2>&1 && { echo "# built $BIN"; return 0; }
	mkdir -p "$CACHE"
	local log=$CACHE/build.log
	: >"$log"
	for how in source_from_debian source_from_path; do
		echo "== $how" >>"$log"
		if $how >>"$log" 2>&1 && build >>"$log" 2>&1; then
			echo "# built $BIN ($how)"
			return 0
		fi
	done
	fail "build: could not get and build nbd $VERSION's nbd-tester-client ($(grep -E 'E:|NBD_SOURCE|missing|error' "$log" | tail -n 3 | tr '\n' ' '))"
	echo "# Debian's source tarballs may be unreachable here; set NBD_SOURCE to an nbd-$VERSION tree," \
		"tarball or a git repository of NetworkBlockDevice/nbd. Log: $log"
	return 1
}

# --- tests ------------------------------------------------------------------
wipe() {
	nbdsh -u "nbd+unix:///${EXPORT}?socket=$SOCK" -c '
size = h.get_size()
for off in range(0, size, 1 << 30):
    h.zero(min(1 << 30, size - off), off)
h.flush()'
}

# run NAME ARGS...: one nbd-tester-client run.
run() {
	local name=$1 t0 rc dt log
	shift
	log=$(mktemp /tmp/nbd-tester.XXXXXX)
	t0=$(date +%s.%N)
	NBD_TEST_SILENT=1 timeout "$TIMEOUT" "$BIN" -N "$EXPORT" -u "$SOCK" "$@" >"$log" 2>&1
	rc=$?
	dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	local info
	info=$(grep -Eo '[0-9.]+ [KMG]iB/s|No errors encountered|[0-9.]+ seconds' "$log" | head -2 | paste -sd ' ' -)
	if ((rc == 0)); then
		pass "$name [${dt}s]${info:+ ($info)}"
	else
		fail "$name [${dt}s] rc=$rc$( ((rc == 124)) && echo " (timeout ${TIMEOUT}s)"): $(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-400)"
	fi
	rm -f "$log"
}

T0=$(date +%s)
ensure_tester || finish
run handshake -h
run oversize -o
run write_flush -w -f
if wipe; then
	run integrity -i -t "$TRACES/integrity-test.tr"
else
	fail "integrity: could not zero the export with nbdsh"
fi
if wipe; then
	run integrityhuge -i -t "$TRACES/integrityhuge-test.tr"
else
	fail "integrityhuge: could not zero the export with nbdsh"
fi
echo "# $(($(date +%s) - T0))s against $SOCK export '${EXPORT}'"
finish
