#!/bin/bash
# fuzz.sh - build and run the libFuzzer targets. Exit 0 when nothing crashed.
#   scripts/fuzz.sh [SECONDS]     the NBD target (handshake state machine with TLS off/on/required,
#                                 request parsing/validation, error chunk encoder, connection
#                                 engine) for SECONDS, default 30: what the test suite runs
#   scripts/fuzz.sh --long [N] [TARGET...]
#                                 every target (or those named) for N inputs each, side by side
#                                 (default 10000000): nbd, config (config file, size expressions,
#                                 memparse sizes, `ctl add` settings) and control (control-socket
#                                 requests, records, replies, the server's per-connection code)
# Uses the libFuzzer and ASan runtimes that ship with the Swift toolchain
# (/opt/swift/usr/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a): no Debian clang needed.
# Growing corpora and any crash reproducers land in fuzz-out/ (git-ignored; FUZZ_OUT=DIR elsewhere,
# which the tests use so that runs side by side do not share objects); seeds are in
# Fuzz/corpus (nbd), Fuzz/corpus-config and Fuzz/corpus-control.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${FUZZ_OUT:-$root/fuzz-out}
long=0
if [[ ${1:-} == --long ]]; then
	long=1
	runs=${2:-10000000}
	[[ $runs =~ ^[0-9]+$ ]] || { echo "usage: fuzz.sh [SECONDS] | --long [N] [TARGET...]" >&2; exit 2; }
	targets=("${@:3}")
	((${#targets[@]})) || targets=(nbd config control)
	for t in "${targets[@]}"; do
		[[ $t =~ ^(nbd|config|control)$ ]] || { echo "fuzz.sh: unknown target '$t' (nbd, config, control)" >&2; exit 2; }
	done
else
	seconds=${1:-30}
	targets=(nbd)
fi
wants() { [[ " ${targets[*]} " == *" $1 "* ]]; }
mkdir -p "$out"

# Posix, the system layer every module imports (nothing there parses input): one object,
# address-sanitized but not coverage-instrumented.
build_module() { # NAME DIR [swiftc options...]
	local name=$1 dir=$2
	shift 2
	mkdir -p "$out/mod"
	swiftc -sanitize=address -parse-as-library -O -wmo -module-name "$name" -I "$out/mod" "$@" \
		-c "$root/Sources/$dir"/*.swift -emit-module -emit-module-path "$out/mod/$name.swiftmodule" -o "$out/mod/$name.o"
}
build_module Posix Posix

# The NBD sources and the fuzz entry form one module, so the entry can use internal API.
if wants nbd; then
	swiftc -sanitize=fuzzer,address -parse-as-library -O -use-ld=lld -module-name NBD -I "$out/mod" \
		"$root"/Sources/NBD/*.swift "$root"/Fuzz/FuzzNBD.swift "$root"/Fuzz/FuzzSupport.swift "$out/mod/Posix.o" -o "$out/nbd-fuzz"
fi

if wants config || wants control; then
	# The daemon's parsers import ZramDevice (size limits, chain sizes), Codec (algorithm
	# names), which need ZsPool, and NBD (TLS modes and settings); built whole, without
	# coverage. The daemon files below are the ones that parse input and build without
	# ArgumentParser or the TLS module.
	build_module NBD NBD
	build_module ZsPool ZsPool
	cmods=(-I "$root/Sources/CLZ4" -I "$root/Sources/CZstd" -I "$root/Sources/CZlib")
	build_module Codec Codec "${cmods[@]}"
	build_module ZramDevice ZramDevice "${cmods[@]}"
	daemon=()
	for f in DaemonError Sizes SizeExpression DeviceSpec TLSSettings ConfigFile ZramGeneratorConfig ShellCommand FileSystem ControlProtocol ControlActions Control; do
		daemon+=("$root/Sources/ZramDaemon/$f.swift")
	done
	for target in config control; do
		wants "$target" || continue
		entry=Fuzz/Fuzz${target^}.swift
		swiftc -sanitize=fuzzer,address -parse-as-library -O -use-ld=lld -module-name ZramDaemon \
			-I "$out/mod" "${cmods[@]}" \
			"${daemon[@]}" "$root/$entry" "$root"/Fuzz/FuzzSupport.swift \
			"$out"/mod/{ZramDevice,Codec,ZsPool,NBD,Posix}.o -llz4 -lzstd -lz -o "$out/$target-fuzz"
	done
fi
# -runs counts every input, the corpus replayed at the start included. A long run trades ASan's
# allocation stacks in reports (the crash stack stays) for 1.6x the inputs per second: Swift
# allocates on most string and array operations, and each allocation recorded 30 frames.
if ((long)); then
	budget=(-runs="$runs")
	export ASAN_OPTIONS=${ASAN_OPTIONS:-malloc_context_size=0:quarantine_size_mb=16}
else
	budget=(-max_total_time="$seconds")
fi

# One target: its corpus, its log, its verdict. Returns libFuzzer's exit status.
run_target() { # TARGET
	local target=$1 seeds=$root/Fuzz/corpus corpus=$out/corpus log=$out/fuzz.log rc=0
	if [[ $target != nbd ]]; then
		seeds=$root/Fuzz/corpus-$target corpus=$out/corpus-$target log=$out/fuzz-$target.log
	fi
	mkdir -p "$corpus"
	cp -n "$seeds"/* "$corpus/" 2>/dev/null || true
	# The Swift runtime backtracer fights ASan over a trapping input; libFuzzer reports crashes itself.
	SWIFT_BACKTRACE=enable=no "$out/$target-fuzz" "${budget[@]}" -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix="$out/$target-" -print_final_stats=1 "$corpus" 2>"$log" || rc=$?
	if ((rc != 0)); then
		tail -40 "$log" >&2
		local reproducer
		reproducer=$(grep -o "Test unit written to .*" "$log" | tail -1 | sed 's/Test unit written to //')
		echo "fuzz.sh: $target: the fuzzer found a problem (exit $rc); reproducer: ${reproducer:-in $out/}" >&2
		echo "fuzz.sh: replay it with: SWIFT_BACKTRACE=enable=no $out/$target-fuzz ${reproducer:-REPRODUCER}" >&2
		return "$rc"
	fi
	grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" >&2 || true
	if ((long)); then
		local executed
		executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
		if [[ -z $executed ]] || ((executed < runs)); then
			echo "fuzz.sh: $target: only ${executed:-no} inputs ran (asked for $runs); see $log" >&2
			return 1
		fi
		echo "fuzz.sh: $target: $executed inputs, no crash" >&2
	fi
}

if ((long)); then
	# The targets are independent single-threaded processes: run side by side, each reports
	# when it ends; the first failure's status is ours.
	pids=()
	for target in "${targets[@]}"; do
		run_target "$target" &
		pids+=($!)
	done
	status=0
	for pid in "${pids[@]}"; do
		wait "$pid" || { rc=$?; ((status != 0)) || status=$rc; }
	done
	exit "$status"
fi
run_target nbd || exit $?
echo "fuzz.sh: no crash in ${seconds}s" >&2
