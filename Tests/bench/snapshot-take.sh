#!/usr/bin/env bash
# Benchmark (not a test): how long taking a snapshot takes, and how long the origin's I/O is held
# (the freeze window), for `snapstack snapshot` next to `lvcreate -s` on an LV of the same size,
# in one VM run, TAKES times each, interleaved. Prints medians and ranges; only the ratios of one
# run mean anything (the VM is emulated and the host may be busy).
#
#   bash Tests/bench/snapshot-take.sh [TAKES]      (default 10)
#
# The freeze window is read the same way for both tools: strace timestamps of the first
# DM_DEV_SUSPEND that suspends a device and the last one that resumes a device, in a separate
# strace'd take (so that strace's overhead never touches the wall-time takes). snapstack also
# records its own window, printed beside it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

takes=${1:-10}
[[ $takes =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [TAKES]" >&2; exit 64; }

if [[ ${SNAPSTACK_IN_VM:-} != 1 ]]; then
    bash Tests/lab/setup.sh
    command -v strace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends strace >/dev/null
    swift build -c release --product snapstack 2>&1 | tail -n 1
    exec Tests/lab/vm.sh --timeout 3000 --memory 3G -- bash "$0" "$takes"
fi

# ---- inside the VM ------------------------------------------------------------------------
snapstack=$PWD/.build/release/snapstack
# The VM lab hands its console ports to the command; lvm would warn about each on every call.
export LVM_SUPPRESS_FD_WARNINGS=1
work=$(mktemp -d /tmp/bench.XXXXXX)
state=$work/state
size_mb=256
store_mb=32

now_ns() { date +%s%N; }

# The freeze window of one command, from strace's DM_DEV_SUSPEND lines (-ttt: seconds.micros).
freeze_us() {
    python3 - "$1" <<'PY'
import re, sys
first = last = None
for line in open(sys.argv[1]):
    m = re.match(r'\s*(?:\d+\s+)?(\d+\.\d+) ioctl\(\d+, DM_DEV_SUSPEND', line)
    if not m or 'resumed>' in line and 'DM_DEV_SUSPEND' not in line:
        continue
    t = float(m.group(1))
    if 'DM_SUSPEND_FLAG' in line:
        first = t if first is None else first
    elif first is not None:
        last = t
print(int((last - first) * 1e6) if first is not None and last is not None else -1)
PY
}

# Same-size origins: a loop disk protected by snapstack, and an LV in a VG on another loop disk.
truncate -s ${size_mb}M "$work/ss.img"
ss_disk=$(losetup -f --show "$work/ss.img")
"$snapstack" protect "$ss_disk" --name bench --state-dir "$state" >/dev/null 2>&1
truncate -s $((size_mb + store_mb * 2 + 16))M "$work/lvm.img"
lvm_disk=$(losetup -f --show "$work/lvm.img")
pvcreate -q "$lvm_disk" >/dev/null
vgcreate -q benchvg "$lvm_disk" >/dev/null
lvcreate -q -y -L ${size_mb}M -n origin benchvg >/dev/null
udevadm settle

cleanup() {
    lvremove -q -y benchvg >/dev/null 2>&1 || true
    vgremove -q -y benchvg >/dev/null 2>&1 || true
    "$snapstack" unprotect bench --force --state-dir "$state" >/dev/null 2>&1 || true
    losetup -d "$ss_disk" "$lvm_disk" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

declare -a ss_wall lvm_wall ss_freeze_strace lvm_freeze_strace ss_freeze_self
for ((i = 0; i < takes; i++)); do
    # snapstack: a timed take, then a strace'd take for the window.
    t0=$(now_ns)
    "$snapstack" snapshot bench --as t$i --size ${store_mb}M --state-dir "$state" >/dev/null
    t1=$(now_ns)
    ss_wall+=($(((t1 - t0) / 1000)))
    ss_freeze_self+=("$("$snapstack" snapshots -o freeze --reportformat json --state-dir "$state" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["report"][0]["snapshot"][0]["freeze"])')")
    "$snapstack" drop bench-t$i --state-dir "$state"
    strace -f -ttt -e trace=ioctl -o "$work/ss.trace" "$snapstack" snapshot bench --as s$i --size ${store_mb}M --state-dir "$state" >/dev/null
    ss_freeze_strace+=("$(freeze_us "$work/ss.trace")")
    "$snapstack" drop bench-s$i --state-dir "$state"

    # lvcreate -s on the same size, the same way.
    t0=$(now_ns)
    lvcreate -q -y -s -L ${store_mb}M -n t$i benchvg/origin >/dev/null
    t1=$(now_ns)
    lvm_wall+=($(((t1 - t0) / 1000)))
    lvremove -q -y benchvg/t$i >/dev/null
    strace -f -ttt -e trace=ioctl -o "$work/lvm.trace" lvcreate -q -y -s -L ${store_mb}M -n s$i benchvg/origin >/dev/null
    lvm_freeze_strace+=("$(freeze_us "$work/lvm.trace")")
    lvremove -q -y benchvg/s$i >/dev/null
done

python3 - "$takes" "${ss_wall[*]}" "${lvm_wall[*]}" "${ss_freeze_strace[*]}" "${lvm_freeze_strace[*]}" "${ss_freeze_self[*]}" <<'PY'
import statistics, sys
takes = sys.argv[1]
ss_wall, lvm_wall, ss_fr, lvm_fr, ss_self = ([int(x) for x in a.split()] for a in sys.argv[2:7])
def cell(values):
    return f"{statistics.median(values)/1000:9.1f} ms ({min(values)/1000:.1f}-{max(values)/1000:.1f})"
print(f"snapshot take, {takes} takes each, median (min-max), origin 256 MiB, store 32 MiB")
print(f"{'':24}{'time to take':>30}{'freeze window (strace)':>34}{'freeze (self-reported)':>30}")
print(f"{'snapstack snapshot':24}{cell(ss_wall):>30}{cell(ss_fr):>34}{cell(ss_self):>30}")
print(f"{'lvcreate -s':24}{cell(lvm_wall):>30}{cell(lvm_fr):>34}{'-':>30}")
print(f"ratio lvcreate -s / snapstack: time to take {statistics.median(lvm_wall)/statistics.median(ss_wall):.1f}x, "
      f"freeze window {statistics.median(lvm_fr)/max(statistics.median(ss_fr),1):.1f}x")
PY
