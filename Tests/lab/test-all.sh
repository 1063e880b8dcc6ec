#!/usr/bin/env bash
# Runs every test snapstack has, and is what CI runs (.ci/run):
#   1. Tests/lab/setup.sh        install build/test dependencies (idempotent)
#   2. swift build --build-tests all products, incl. snapstack-vmsuite, and tests
#   3. swift test                unit tests (Swift Testing; no root, no dm)
#   4. manuals and completions   Tests/lab/manuals-check.sh: man pages and
#                                shell completions generated from the binary
#   5. VM suite                  snapstack-vmsuite as root inside a VM with
#                                device-mapper (Tests/lab/vm.sh)
# Any argument is passed on to snapstack-vmsuite.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: Tests/lab/test-all.sh [VMSUITE-ARGS...]

Installs missing dependencies, builds everything, runs the unit tests, checks
the manual pages and shell completions (Tests/lab/manuals-check.sh), then
runs .build/debug/snapstack-vmsuite inside a VM (Tests/lab/vm.sh), passing it
VMSUITE-ARGS. Fails unless the VM suite ends with a line
"N passed, M failed" where N > 0 and M = 0.
Needs root (the installer and the VM suite do).
EOF
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# The Swift toolchain lives outside the system dirs; non-login shells such as
# CI's may lack it on PATH.
if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi

start=$SECONDS
step_name=
vm_log=

step() {
    step_name=$1
    echo "==> $step_name"
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
finish() {
    local status=$?
    [[ -z $vm_log ]] || rm -f "$vm_log"
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
SNAPSTACK_REQUIRE_ROOT_TESTS=1 swift test --skip-build --disable-xctest

step "manuals and completions"
bash Tests/lab/manuals-check.sh .build/debug/snapstack

step "VM suite"
vmsuite=.build/debug/snapstack-vmsuite
if [[ ! -x $vmsuite ]]; then
    echo "test-all: VM suite did not run: $vmsuite was not built" >&2
    exit 1
fi
vm_log=$(mktemp /tmp/snapstack-vmsuite.XXXXXX)
# stderr is merged so that the log holds everything the suite said, in order.
set +e
# --hotplug: the daemon scenarios hot-add and hot-remove disks through qemu.
Tests/lab/vm.sh --timeout 3600 --hotplug -- "$vmsuite" "$@" 2>&1 | tee "$vm_log"
vm_status=${PIPESTATUS[0]}
set -e

# The suite's closing line is the only proof that it really ran: a VM that
# failed to boot, a suite that crashed, or one that found nothing to run must
# never look like a pass.
summary=$(tr -d '\r' <"$vm_log" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1 || true)
if [[ ! $summary =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
    echo "test-all: VM suite did not run: no closing 'N passed, M failed' line (vm.sh exit $vm_status)" >&2
    exit 1
fi
passed=$((10#${BASH_REMATCH[1]}))
failed=$((10#${BASH_REMATCH[2]}))
if ((passed == 0 && failed == 0)); then
    echo "test-all: VM suite did not run: it reported '$summary' (vm.sh exit $vm_status)" >&2
    exit 1
fi
if ((failed > 0 || passed == 0 || vm_status != 0)); then
    echo "test-all: VM suite had failures: '$summary', vm.sh exit $vm_status" >&2
    exit 1
fi

step "done"
echo "test-all: PASSED: build, unit tests, manuals and completions, VM suite ($summary) in $((SECONDS - start)) s"
