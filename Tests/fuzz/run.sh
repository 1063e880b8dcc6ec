#!/usr/bin/env bash
# Fuzzes the parsers of what others write with libFuzzer: each target of Tests/fuzz/Harnesses.swift
# for SECONDS (default 20), starting from the committed corpus (Tests/fuzz/corpus/TARGET) and
# growing a working copy of it under .build/fuzz-corpus. Prints, per target, the executions,
# the coverage libFuzzer reached and its peak memory; fails on the first crash, leak, timeout
# or out-of-memory (libFuzzer leaves the input as crash-*/leak-*/timeout-*/oom-* in the
# current directory).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: Tests/fuzz/run.sh [--seconds N] [--runs N] [TARGET...]

Targets: delta manifest era table status policy template size stamp (default: all).
--seconds N   time per target (default 20)
--runs N      stop each target after N executions instead (a long run: --runs 10000000)
USAGE
}

seconds=20
runs=
targets=()
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --seconds) seconds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        -*) usage >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
((${#targets[@]})) || targets=(delta manifest era table status policy template size stamp)

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PATH=/opt/swift/usr/bin:$PATH
# A build of its own: every module instrumented for coverage, the replay entry point left out.
swift build --build-path .build/fuzz --product snapstack-fuzz \
    -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING -Xswiftc -parse-as-library >&2
binary=.build/fuzz/debug/snapstack-fuzz

for target in "${targets[@]}"; do
    [[ -d Tests/fuzz/corpus/$target ]] || { echo "run.sh: no corpus for $target" >&2; exit 2; }
    work=.build/fuzz-corpus/$target
    mkdir -p "$work"
    limit=(-max_total_time="$seconds")
    [[ -n $runs ]] && limit=(-runs="$runs")
    log=$(mktemp)
    # -max_len: the era seed is 572 KiB of metadata; the other formats stay far below.
    if ! SNAPSTACK_FUZZ_TARGET=$target "$binary" "${limit[@]}" -max_len=1048576 -rss_limit_mb=2048 -timeout=20 \
            -print_final_stats=1 "$work" "Tests/fuzz/corpus/$target" >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "run.sh: $target FAILED" >&2
        rm -f "$log"
        exit 1
    fi
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    memory=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    coverage=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    echo "fuzz $target: ${executions:-?} executions, ${coverage:-cov: ?}, peak ${memory:-?} MB, no crash"
    rm -f "$log"
done
