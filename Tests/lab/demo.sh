#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what snapstack needs, build it, and run
# `snapstack doctor` where device-mapper is — on this host if its kernel has it, else in the
# VM lab (Tests/lab/vm.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

bash Tests/lab/setup.sh
swift build --product snapstack 2>&1 | tail -n 1

if dmsetup version >/dev/null 2>&1; then
    echo "== snapstack doctor (this host)"
    exec .build/debug/snapstack doctor "$@"
fi
echo "== this host's kernel has no device-mapper: snapstack doctor in the VM lab"
exec Tests/lab/vm.sh --timeout 300 -- .build/debug/snapstack doctor --state-dir /tmp/snapstack-state "$@"
