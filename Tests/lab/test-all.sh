#!/usr/bin/env bash
# Runs every test snapstack has; without --nightly it is what CI runs (.ci/run):
#   1. Tests/lab/setup.sh        install build/test dependencies (idempotent)
#   2. swift build --build-tests all products, incl. snapstack-vmsuite, and tests; and
#                                snapstack's release build with the Swift runtime linked in
#   3. swift test                unit tests (Swift Testing; no root, no dm)
#   4. manuals and completions   Tests/lab/manuals-check.sh: man pages and
#                                shell completions generated from the binary
#   5. fuzz corpora              every committed fuzz input replayed (Tests/fuzz)
#   6. VM suite                  snapstack-vmsuite as root inside two VMs with
#                                device-mapper (Tests/lab/vm.sh) sharing its scenarios
#   7. boot lab                  Tests/lab/bootlab.sh: a Debian image (made once, cached in
#                                .build/bootlab) booted with systemd as PID 1, snapstack
#                                installed by systemd/install.sh, its scenarios over real reboots
# With --nightly, step 6 runs the VM suite's nightly tier (its long repetitions and
# measurements too) and, beside the VMs, a libFuzzer pass over every parser (Tests/fuzz/run.sh).
# Any other argument is passed on to snapstack-vmsuite.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: Tests/lab/test-all.sh [--nightly] [VMSUITE-ARGS...]

Installs missing dependencies, builds everything, runs the unit tests, checks
the manual pages and shell completions (Tests/lab/manuals-check.sh), replays
the fuzz corpora, then runs .build/debug/snapstack-vmsuite inside two VMs
(Tests/lab/vm.sh) that share its scenarios through a queue, passing it
VMSUITE-ARGS. The VM suite tests the release build of snapstack with the Swift
runtime linked in (the binary that ships, and one that starts in a third of the
debug build's time under emulation). Fails unless every VM ends with a line
"N passed, M failed" with M = 0 and together they passed every scenario selected.

Without --nightly this is CI's run: every VM scenario of the CI tier, each
repeated scenario at CI length.
--nightly   the VM suite's nightly tier too (snapstack-vmsuite --tier nightly: the
            long repetitions and measurements, every failpoint, 25 signal rounds a
            series) and a libFuzzer pass beside the VMs (Tests/fuzz/run.sh).
Needs root (the installer and the VM suite do).
Environment: SNAPSTACK_VM_WORKERS=N runs N VMs (default 2); SNAPSTACK_FUZZ_SECONDS=N
fuzzes each parser N seconds in the nightly run (default 60).
EOF
}

tier=ci
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    --nightly) tier=nightly; shift ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# The Swift toolchain lives outside the system dirs; non-login shells such as
# CI's may lack it on PATH.
if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi

start=$SECONDS
step_name=
step_start=$SECONDS
vm_log=
image_pid=

# Each step's time is printed as the next one starts: CI's budget is spent where these say.
step() {
    [[ -z $step_name ]] || echo "test-all: '$step_name' took $((SECONDS - step_start)) s"
    step_name=$1
    step_start=$SECONDS
    echo "==> $step_name"
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
finish() {
    local status=$?
    # The boot lab's image build runs in the background, in a session of its own: it must not
    # outlive a failed run.
    [[ -z $image_pid ]] || kill -- -"$image_pid" 2>/dev/null || true
    [[ -z $vm_log ]] || rm -rf "$vm_log"
    if [[ -n ${extent_tmp:-} ]]; then umount "$extent_tmp" 2>/dev/null; rm -rf "$extent_tmp" "$extent_tmp.img"; fi
    if ((status != 0)); then
        echo "test-all: FAILED at '$step_name' (exit $status) after $((SECONDS - start)) s" >&2
    fi
}
trap finish EXIT

step "setup"
bash Tests/lab/setup.sh

step "swift build"
swift build --build-tests

step "unit tests"
# --skip-build: step 2 built the tests already. --disable-xctest: the tests
# use Swift Testing only, so the XCTest runner has nothing to do.
# Tests that need root (loop devices) must run here, never skip.
# The file-allocation tests witness unwritten extents, which only ext4 and xfs keep: when
# the temporary directory is on anything else (tmpfs, overlayfs), they get an ext4 mount.
unit_tmp=${TMPDIR:-/tmp}
case $(stat -f -c %T "$unit_tmp") in
    ext2/ext3 | xfs) ;;
    *)
        extent_tmp=$(mktemp -d /var/tmp/snapstack-ext4.XXXXXX)
        truncate -s 512M "$extent_tmp.img"
        mkfs.ext4 -q -F "$extent_tmp.img"
        mount -o loop "$extent_tmp.img" "$extent_tmp"
        unit_tmp=$extent_tmp
        ;;
esac
TMPDIR=$unit_tmp SNAPSTACK_REQUIRE_ROOT_TESTS=1 swift test --skip-build --disable-xctest
if [[ -n ${extent_tmp:-} ]]; then
    umount "$extent_tmp" && rm -rf "$extent_tmp" "$extent_tmp.img"
    extent_tmp=
fi

step "manuals and completions"
bash Tests/lab/manuals-check.sh .build/debug/snapstack

step "fuzz corpora"
# Every committed fuzz input through its parser, in the build under test: none may trap.
for target in delta manifest era table status policy template size stamp; do
    .build/debug/snapstack-fuzz "$target" "Tests/fuzz/corpus/$target"
done

step "release build for the VM suite"
# The binary that ships: optimised, the Swift runtime linked in (it runs where /opt/swift is
# not). Under emulation it also starts in about 0.9 s against the debug build's 2.5 s, and the
# VM suite starts snapstack hundreds of times.
swift build -c release --product snapstack --static-swift-stdlib
release_binary=$PWD/.build/release/snapstack

step "VM suite"
vmsuite=.build/debug/snapstack-vmsuite
if [[ ! -x $vmsuite ]]; then
    echo "test-all: VM suite did not run: $vmsuite was not built" >&2
    exit 1
fi
# What must run: the scenarios selected by the arguments, as the suite itself lists them.
expected=$("$vmsuite" --list --tier "$tier" "$@" | wc -l)
((expected > 0)) || { echo "test-all: VM suite did not run: it selects no scenario for '$*'" >&2; exit 1; }
echo "VM suite: $expected scenarios of the $tier tier"
# Two VMs share the scenarios through a queue on the host (each claims the next one, longest
# first): a scenario mostly keeps one emulated CPU busy, and this machine has two cores.
workers=${SNAPSTACK_VM_WORKERS:-2}
[[ $workers =~ ^[1-9]$ ]] || { echo "test-all: SNAPSTACK_VM_WORKERS must be 1 to 9, not '$workers'" >&2; exit 1; }
vm_work=$(mktemp -d /tmp/snapstack-vmsuite.XXXXXX)
vm_log=$vm_work # removed by finish()
mkdir "$vm_work/queue"
# The nightly run fuzzes every parser (Tests/fuzz/run.sh) beside the VMs. Not in CI: its
# instrumented build alone keeps both cores busy for minutes, slowing the emulated guests.
fuzz_pid=
if [[ $tier == nightly ]]; then
    (
        set +e
        bash Tests/fuzz/run.sh --seconds "${SNAPSTACK_FUZZ_SECONDS:-60}" >"$vm_work/fuzz.log" 2>&1
        echo $? >"$vm_work/fuzz-status"
    ) &
    fuzz_pid=$!
fi
# The boot lab's image is made (or found in its cache) beside the VMs: mostly downloads and
# package unpacking, which leave the emulated guests their CPU.
setsid bash -c 'bash Tests/lab/bootlab.sh --image-only >"$1/bootlab-image.log" 2>&1; echo $? >"$1/bootlab-image-status"' \
    image "$vm_work" &
image_pid=$!
pids=()
for ((w = 1; w <= workers; w++)); do
    # stderr is merged so that each log holds everything its worker said, in order; the
    # terminal gets the same lines tagged with the worker.
    # --hotplug: the daemon scenarios hot-add and hot-remove disks through qemu. 70 minutes:
    # each worker takes about half the suite's 60-odd emulated minutes, and two VMs at once
    # slow each other; the scenarios' own 900 s watchdog stops a hang long before.
    (
        set +e
        Tests/lab/vm.sh --timeout 4200 --hotplug --rwdir "$vm_work/queue" -- \
            env SNAPSTACK_VM_BINARY="$release_binary" "$vmsuite" --queue "$vm_work/queue" --tier "$tier" "$@" 2>&1 | tee "$vm_work/log-$w" | sed -u "s/^/[vm$w] /"
        echo "${PIPESTATUS[0]}" >"$vm_work/status-$w"
    ) &
    pids+=($!)
    sleep 5 # the boots one after the other: two at once slow each other down
done
wait "${pids[@]}" || true
if [[ -n $fuzz_pid ]]; then
    wait "$fuzz_pid" || true
    grep '^fuzz ' "$vm_work/fuzz.log" || true
    if [[ $(cat "$vm_work/fuzz-status" 2>/dev/null) != 0 ]]; then
        tail -40 "$vm_work/fuzz.log" >&2
        echo "test-all: the fuzz pass failed" >&2
        exit 1
    fi
    if (($(grep -c '^fuzz .* no crash$' "$vm_work/fuzz.log") != 8)); then
        echo "test-all: the fuzz pass did not report all 8 targets" >&2
        exit 1
    fi
fi

# Each worker's closing line is the only proof that it really ran: a VM that failed to
# boot, a suite that crashed, or one that found nothing to run must never look like a pass.
# Together they must account for every scenario selected.
passed=0
failed=0
for ((w = 1; w <= workers; w++)); do
    vm_status=$(cat "$vm_work/status-$w" 2>/dev/null || echo "?")
    summary=$(tr -d '\r' <"$vm_work/log-$w" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1 || true)
    if [[ ! $summary =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
        echo "test-all: VM suite worker $w did not run: no closing 'N passed, M failed' line (vm.sh exit $vm_status)" >&2
        exit 1
    fi
    passed=$((passed + 10#${BASH_REMATCH[1]}))
    failed=$((failed + 10#${BASH_REMATCH[2]}))
    if [[ $vm_status != 0 ]] && ((10#${BASH_REMATCH[2]} == 0)); then
        # A clean summary but a failed exit: the suite or the VM ended badly after it.
        echo "test-all: VM suite worker $w: '$summary', but vm.sh exit $vm_status" >&2
        failed=$((failed + 1))
    fi
done
summary="$passed passed, $failed failed"
if ((failed > 0)); then
    echo "test-all: VM suite had failures: $summary" >&2
    # Each FAIL line with the problem lines under it (indented), so that the end of the log
    # carries the cause and not just the name.
    tr -d '\r' <<<"$(cat "$vm_work"/log-*)" | awk '/^FAIL/ { show = 1; print; next } show && /^      / { print; next } { show = 0 }' >&2 || true
    exit 1
fi
if ((passed != expected)); then
    echo "test-all: VM suite ran $passed of the $expected scenarios selected" >&2
    exit 1
fi

step "boot lab"
wait "$image_pid" || true
image_pid=
cat "$vm_work/bootlab-image.log"
if [[ $(cat "$vm_work/bootlab-image-status" 2>/dev/null) != 0 ]]; then
    echo "test-all: the boot lab's image could not be made" >&2
    exit 1
fi
boot_expected=$(find Tests/lab/boot -name '*.sh' ! -name lib.sh | wc -l)
boot_log=$vm_work/bootlab.log
bash Tests/lab/bootlab.sh --binary "$release_binary" 2>&1 | tee "$boot_log" || true
boot_summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$boot_log" | tail -n 1 || true)
if [[ $boot_summary != "$boot_expected passed, 0 failed" ]]; then
    echo "test-all: the boot lab did not pass its $boot_expected scenarios: '${boot_summary:-no closing line}'" >&2
    exit 1
fi

step "done"
if [[ $tier == nightly ]]; then
    echo "test-all: PASSED: build, unit tests, manuals and completions, fuzz corpora and pass, VM suite's nightly tier ($summary), boot lab ($boot_summary) in $((SECONDS - start)) s"
else
    more=$(($("$vmsuite" --list --tier nightly "$@" | wc -l) - expected))
    echo "test-all: PASSED: build, unit tests, manuals and completions, fuzz corpora, VM suite's CI tier ($summary), boot lab ($boot_summary) in $((SECONDS - start)) s"
    echo "test-all: not run here: $more nightly scenarios, the long repetitions and the libFuzzer pass (Tests/lab/test-all.sh --nightly)"
fi
