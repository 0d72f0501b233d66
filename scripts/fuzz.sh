#!/bin/bash
# fuzz.sh - build and run the libFuzzer target for the NBD wire parsers (handshake state machine,
# request parsing/validation, error chunk encoder) for a bounded time. Exit 0 when nothing crashed.
#   scripts/fuzz.sh [SECONDS]        default 30
# Uses the libFuzzer and ASan runtimes that ship with the Swift toolchain
# (/opt/swift/usr/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a): no Debian clang needed.
# The growing corpus and any crash reproducers land in fuzz-out/ (git-ignored); seeds are in Fuzz/corpus.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/fuzz-out
seconds=${1:-30}
mkdir -p "$out/corpus"
cp -n "$root"/Fuzz/corpus/* "$out/corpus/" 2>/dev/null || true

# NBD imports Posix (the system layer; nothing there parses input): built first as one object.
mkdir -p "$out/posix"
swiftc -sanitize=address -parse-as-library -O -wmo -module-name Posix -c "$root"/Sources/Posix/*.swift \
	-emit-module -emit-module-path "$out/posix/Posix.swiftmodule" -o "$out/posix/Posix.o"
# The NBD sources and the fuzz entry form one module, so the entry can use internal API.
swiftc -sanitize=fuzzer,address -parse-as-library -O -use-ld=lld -module-name NBD -I "$out/posix" \
	"$root"/Sources/NBD/*.swift "$root"/Fuzz/FuzzNBD.swift "$out/posix/Posix.o" -o "$out/nbd-fuzz"

# The Swift runtime backtracer fights ASan over a trapping input; libFuzzer reports crashes itself.
SWIFT_BACKTRACE=enable=no "$out/nbd-fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
	-artifact_prefix="$out/" -print_final_stats=1 "$out/corpus" 2>"$out/fuzz.log" || {
	rc=$?
	tail -40 "$out/fuzz.log" >&2
	echo "fuzz.sh: the fuzzer found a problem (exit $rc); reproducer in $out/" >&2
	exit "$rc"
}
grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$out/fuzz.log" >&2 || true
echo "fuzz.sh: no crash in ${seconds}s" >&2
