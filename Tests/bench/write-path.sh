#!/usr/bin/env bash
# Benchmark (not a test): what snapstack's stack costs the writes of the protected device, and
# how the freeze window of a snapshot set grows with its number of devices; in one VM run,
# REPS interleaved repetitions. Prints ratios to the raw disk measured in the same repetition,
# as median (min-max) over the repetitions: only same-run ratios mean anything (the VM is
# emulated and the host may be busy).
#
#   bash Tests/bench/write-path.sh [REPS]      (default 3)
#
# Write path: fio, direct I/O, libaio, iodepth 16: 4k random writes (the same offsets in every
# run, so a second run rewrites blocks the first one marked) and 1M sequential writes, on
#   - the raw disk;
#   - the stack without change tracking (--no-cbt): linear over linear;
#   - the stack with dm-era for several --cbt-block sizes, on a fresh era (cold: every first
#     write to a block waits for a metadata commit) and on blocks already marked in the current
#     era (warm: the steady state between two backups);
#   - the stack with a live snapshot (taking it starts a new era, so its writes are also cold
#     for dm-era) for several --chunk sizes, next to an LVM snapshot (`lvcreate -s -c`) of an LV
#     of the same size on the same kind of disk, and that LV without a snapshot.
# The disks are RAM disks (brd): O_DIRECT works on them, they allocate their pages once (the
# script writes them first) and afterwards cost the same for every run, so the differences left
# are the layers' own. A loop device over a file would add the backing filesystem's noise
# (the guest's /tmp is tmpfs, where loop devices cannot do direct I/O at all, and a host folder
# reaches the guest over 9p). brd is faster than any real disk, so every layer's CPU cost shows
# at its largest here: the ratios are upper bounds of the cost on real disks.
#
# Freeze window: `snapstack snapshot` of sets of 1, 2, 4, 8, 16 and 32 devices, the window
# recorded by snapstack itself (first suspend to last resume), and once per size read from
# strace's DM_DEV_SUSPEND timestamps; next to the same count of `lvcreate -s` run one after
# another (each freezes its own origin; the set's points in time spread over all of them).
#
# Environment: SNAPSTACK_BUILD_DIR (default .build) is the SwiftPM scratch path to build in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

reps=${1:-3}
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [REPS]" >&2; exit 64; }
build=${SNAPSTACK_BUILD_DIR:-.build}

if [[ ${SNAPSTACK_IN_VM:-} != 1 ]]; then
    bash Tests/lab/setup.sh
    command -v strace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends strace >/dev/null
    swift build -c release --scratch-path "$build" --product snapstack 2>&1 | tail -n 1
    export SNAPSTACK_BUILD_DIR=$build
    exec Tests/lab/vm.sh --timeout 7200 --memory 3G -- bash "$0" "$reps"
fi

# ---- inside the VM ------------------------------------------------------------------------
snapstack=$PWD/$build/release/snapstack
# The VM lab hands its console ports to the command; lvm would warn about each on every call.
export LVM_SUPPRESS_FD_WARNINGS=1
work=$(mktemp -d /tmp/bench.XXXXXX)
state=$work/state
results=$work/results
region_mb=256          # fio writes within the first 256 MiB of each disk
rand_io=16M            # 4096 random 4k writes per run
seq_io=128M            # 128 sequential 1M writes per run
cow_mb=300             # snapshot store: more than the region, so no snapshot ever fills up
disk_mb=$((region_mb + cow_mb + 44))
era_blocks=(64K 256K 1M 4M)
chunks=(4K 16K 64K 256K)
set_sizes=(1 2 4 8 16 32)

ss() { "$snapstack" "$@" --state-dir "$state"; }

# Two disks for the write path (snapstack's, and LVM's PV) and 33 for the freeze window.
modprobe brd rd_nr=35 rd_size=$((disk_mb * 1024))
ss_disk=/dev/ram0 lvm_disk=/dev/ram1 lvm_set_disk=/dev/ram34
for d in "$ss_disk" "$lvm_disk"; do dd if=/dev/zero of="$d" bs=1M count=$region_mb oflag=direct status=none; done
pvcreate -q "$lvm_disk" "$lvm_set_disk" >/dev/null
vgcreate -q benchvg "$lvm_disk" >/dev/null
vgcreate -q benchsetvg "$lvm_set_disk" >/dev/null
lvcreate -q -y -L ${region_mb}M -n origin benchvg >/dev/null
dd if=/dev/zero of=/dev/benchvg/origin bs=1M count=$region_mb oflag=direct status=none
# Inactive first, then one activation: no lvcreate per LV pays lvm's activation cost.
for i in $(seq 1 32); do lvcreate -q -y -an -Zn -L 16M -n o$i benchsetvg >/dev/null 2>&1; done
vgchange -q -ay benchsetvg >/dev/null
udevadm settle

cleanup() {
    for n in $("$snapstack" devices -o name --noheadings --state-dir "$state" 2>/dev/null); do
        "$snapstack" unprotect "$n" --force --state-dir "$state" >/dev/null 2>&1 || true
    done
    vgremove -q -y -ff benchvg benchsetvg >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# fio's write bandwidth in KiB/s (terse format, field 48).
fio_bw() { # target rw bs io_size
    fio --name=w --filename="$1" --direct=1 --ioengine=libaio --iodepth=16 --rw="$2" --bs="$3" \
        --size=${region_mb}M --io_size="$4" --randrepeat=1 --minimal 2>/dev/null | awk -F';' '{print $48}'
}
rand() { fio_bw "$1" randwrite 4k $rand_io; }
seqw() { fio_bw "$1" write 1M $seq_io; }
# Each figure also goes to stderr as it is measured, so that a run cut short still shows them.
record() { echo "$1|$2|$rep|$3" | tee -a "$results" >&2; } # config workload value

run_raw() {
    record raw rand "$(rand $ss_disk)"
    record raw seq "$(seqw $ss_disk)"
}

run_lv() {
    record "lvm LV, no snapshot" rand "$(rand /dev/benchvg/origin)"
    record "lvm LV, no snapshot" seq "$(seqw /dev/benchvg/origin)"
}

run_nocbt() {
    ss protect $ss_disk --name wb --no-cbt >/dev/null 2>&1
    record "stack, no CBT" rand "$(rand /dev/mapper/snapstack-wb)"
    record "stack, no CBT" seq "$(seqw /dev/mapper/snapstack-wb)"
    ss unprotect wb >/dev/null
}

run_cbt() { # block (or "default")
    local label="CBT $1" opt=(--cbt-block "$1")
    if [[ $1 == default ]]; then opt=(); fi
    ss protect $ss_disk --name wb "${opt[@]}" >/dev/null 2>&1
    if [[ $1 == default ]]; then
        label="CBT default ($("$snapstack" devices -o cbt_block --noheadings --units h --state-dir "$state" | tr -d ' '))"
    fi
    local top=/dev/mapper/snapstack-wb
    record "$label cold" rand "$(rand $top)"
    record "$label warm" rand "$(rand $top)"
    # A new era, as a snapshot would start: every block is unmarked again.
    dmsetup message snapstack-wb-real 0 checkpoint
    record "$label cold" seq "$(seqw $top)"
    record "$label warm" seq "$(seqw $top)"
    ss unprotect wb >/dev/null
}

run_snapshots() { # chunk
    local chunk=$1
    ss protect $ss_disk --name wb >/dev/null 2>&1
    for w in seq rand; do
        ss snapshot wb --as s --chunk "$chunk" --size ${cow_mb}M >/dev/null
        if [[ $w == seq ]]; then v=$(seqw /dev/mapper/snapstack-wb); else v=$(rand /dev/mapper/snapstack-wb); fi
        record "snapshot $chunk chunk: snapstack" $w "$v"
        ss drop wb-s >/dev/null
        lvcreate -q -y -s -c "$chunk" -L ${cow_mb}M -n s benchvg/origin >/dev/null
        if [[ $w == seq ]]; then v=$(seqw /dev/benchvg/origin); else v=$(rand /dev/benchvg/origin); fi
        record "snapshot $chunk chunk: lvm" $w "$v"
        lvremove -q -y benchvg/s >/dev/null
    done
    ss unprotect wb >/dev/null
}

# ---- write path: every repetition runs every configuration, in a rotated order ----------
cells=(run_raw run_lv run_nocbt "run_cbt default")
for b in "${era_blocks[@]}"; do cells+=("run_cbt $b"); done
for c in "${chunks[@]}"; do cells+=("run_snapshots $c"); done
for ((rep = 0; rep < reps; rep++)); do
    echo "write path: repetition $((rep + 1)) of $reps" >&2
    n=${#cells[@]}
    for ((k = 0; k < n; k++)); do
        ${cells[$(((k + rep * 5) % n))]}
    done
done

# ---- freeze window of a set of N devices --------------------------------------------------
set_names=()
for i in $(seq 1 32); do
    ss protect /dev/ram$((i + 1)) --name f$i >/dev/null 2>&1
    set_names+=(f$i)
done
freeze_self=$work/freeze-self
freeze_trace=$work/freeze-trace
set_freeze() { # count tag -> snapstack's own record of the window, in microseconds
    ss snapshot "${set_names[@]:0:$1}" --as "$2" --size 4M >/dev/null
    ss snapshots -o freeze --reportformat json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["report"][0]["snapshot"][0]["freeze"])'
    for name in "${set_names[@]:0:$1}"; do ss drop "$name-$2"; done
}
for ((rep = 0; rep < reps; rep++)); do
    echo "freeze window: repetition $((rep + 1)) of $reps" >&2
    for ((k = 0; k < ${#set_sizes[@]}; k++)); do
        count=${set_sizes[$(((k + rep * 2) % ${#set_sizes[@]}))]}
        echo "$count $(set_freeze "$count" r$rep)" | tee -a "$freeze_self" >&2
    done
done
for count in "${set_sizes[@]}"; do
    strace -f -ttt -T -e trace=ioctl -o "$work/ss.$count.trace" \
        "$snapstack" snapshot "${set_names[@]:0:$count}" --as st --size 4M --state-dir "$state" >/dev/null
    for name in "${set_names[@]:0:$count}"; do ss drop "$name-st"; done
    echo "snapstack $count $work/ss.$count.trace" >>"$freeze_trace"
done
# lvcreate -s of 32 LVs one after another, under one strace: the first N of them are what a
# set of N devices costs.
strace -f -ttt -T -e trace=ioctl -o "$work/lvm.trace" bash -c '
    for i in $(seq 1 32); do lvcreate -q -y -s -L 4M -n s$i benchsetvg/o$i >/dev/null; done'
lvremove -q -y $(for i in $(seq 1 32); do echo benchsetvg/s$i; done) >/dev/null
echo "lvm 32 $work/lvm.trace" >>"$freeze_trace"

# ---- report -------------------------------------------------------------------------------
report() {
python3 - "$results" "$freeze_self" "$freeze_trace" "$reps" <<'PY'
import collections, re, statistics, sys
results, freeze_self, freeze_trace, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

values = collections.defaultdict(dict)          # (config, workload) -> {rep: KiB/s}
order = []
for line in open(results):
    config, workload, rep, value = line.rstrip("\n").split("|")
    if config not in order:
        order.append(config)
    values[(config, workload)][int(rep)] = float(value or 0)

def key(config):
    # raw, LV, no CBT, default CBT, CBT by block size, snapshots by chunk size (snapstack, lvm).
    def size(text):
        m = re.search(r"(\d+)([KM])", text)
        return int(m.group(1)) * (1024 if m.group(2) == "M" else 1) if m else 0
    if config == "raw": return (0, 0, False)
    if config.startswith("lvm LV"): return (1, 0, False)
    if config.startswith("stack"): return (2, 0, False)
    if config.startswith("CBT default"): return (3, 0, "warm" in config)
    if config.startswith("CBT"): return (4, size(config), "warm" in config)
    return (5, size(config), "lvm" in config)

def cell(config, workload):
    ratios = [v / values[("raw", workload)][r] for r, v in values[(config, workload)].items()
              if values[("raw", workload)].get(r)]
    if not ratios: return "-"
    return f"{statistics.median(ratios):5.2f} ({min(ratios):.2f}-{max(ratios):.2f})"

raw = {w: statistics.median(values[("raw", w)].values()) / 1024 for w in ("rand", "seq")}
print(f"\nWrite path: ratio to the raw disk, median (min-max) over {reps} interleaved repetitions;")
print(f"fio direct libaio iodepth 16 on brd, within 256 MiB; raw: 4k random {raw['rand']:.0f} MiB/s, "
      f"1M sequential {raw['seq']:.0f} MiB/s (medians)")
print(f"{'':40}{'4k random writes':>22}{'1M sequential writes':>24}")
for config in sorted(order, key=key):
    print(f"{config:40}{cell(config, 'rand'):>22}{cell(config, 'seq'):>24}")

self_us = collections.defaultdict(list)
for line in open(freeze_self):
    count, us = line.split()
    self_us[int(count)].append(int(us))

def windows(path):
    """Per process: first suspend issued to last resume returned, in microseconds; and the span over all."""
    pending = {}                 # pid -> (start, is_suspend) of an unfinished ioctl
    per_pid = {}
    for line in open(path):
        m = re.match(r"\s*(\d+)\s+(\d+\.\d+) (.*)", line)
        if not m: continue
        pid, t, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        d = re.search(r"<(\d+\.\d+)>\s*$", rest)
        if rest.startswith("ioctl(") and "DM_DEV_SUSPEND" in rest:
            is_suspend = "DM_SUSPEND_FLAG" in rest.split("=>")[0]
            if "<unfinished" in rest:
                pending[pid] = (t, is_suspend)
                continue
            start, end = t, t + (float(d.group(1)) if d else 0)
        elif rest.startswith("<... ioctl resumed>") and pid in pending:
            start, is_suspend = pending.pop(pid)
            end = t
        else:
            continue
        first, last = per_pid.get(pid, (None, None))
        if is_suspend and (first is None or start < first): first = start
        if not is_suspend and first is not None: last = end
        per_pid[pid] = (first, last)
    return sorted((f, l) for f, l in per_pid.values() if f is not None and l is not None)

def span_us(windows):
    return int((max(l for _, l in windows) - windows[0][0]) * 1e6) if windows else -1

traced = {}
for line in open(freeze_trace):
    tool, count, path = line.split()
    traced[(tool, int(count))] = windows(path)
lvm = traced.get(("lvm", 32), [])

def ms(us): return f"{us / 1000:.1f}" if us >= 0 else "-"
print(f"\nFreeze window of a snapshot set, in ms: snapstack's own record, median (min-max) of {reps};")
print("strace: first DM_DEV_SUSPEND that suspends to the return of the last resume, one take;")
print("lvcreate -s, one after another: each LV's own window (median), and the span from the first")
print("suspend to the last resume, over which the set's points in time spread.")
print(f"{'devices':>8}{'snapstack':>22}{'x 1 device':>12}{'snapstack (strace)':>20}{'lvcreate -s each':>18}{'lvcreate -s span':>18}")
base = statistics.median(self_us[1])
for count in sorted(self_us):
    v = self_us[count]
    ss_trace = span_us(traced.get(("snapstack", count), []))
    lvm_each = [int((l - f) * 1e6) for f, l in lvm[:count]]
    lvm_span = span_us(lvm[:count]) if len(lvm) >= count else -1
    print(f"{count:>8}{ms(statistics.median(v)) + ' (' + ms(min(v)) + '-' + ms(max(v)) + ')':>22}"
          f"{statistics.median(v) / base:>11.2f}x{ms(ss_trace):>20}"
          f"{ms(statistics.median(lvm_each)) if lvm_each else '-':>18}{ms(lvm_span):>18}")
PY
}
if ! report; then
    echo "write-path.sh: the report failed; the raw figures (config|workload|rep|KiB/s, then devices µs):" >&2
    cat "$results" "$freeze_self" >&2
    exit 1
fi
