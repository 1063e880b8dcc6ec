#!/usr/bin/env bash
# Benchmark (not a test): what snapstack's stack costs the writes of the protected device, and
# how the freeze window of a snapshot set grows with its number of devices; in one VM run,
# interleaved repetitions. Prints ratios to the raw disk measured in the same repetition, as
# median (min-max) over the repetitions: only same-run ratios mean anything (the VM is emulated
# and the host may be busy).
#
#   bash Tests/bench/write-path.sh [--reps N] [--disk ram|latency] [--latency-us US]
#                                  [--part all|write|freeze] [--only REGEX]
#   (a bare number is --reps; defaults: 3 repetitions, ram disks, 2000 us, all; --only keeps the
#   write-path configurations whose cell matches, e.g. 'default|64K|run_snapshots 4K', and raw)
#
# Write path: fio, direct I/O, libaio, iodepth 16: 4k random writes and 1M sequential writes,
# within the first 256 MiB of the disk, on
#   - the raw disk;
#   - an LV (one linear layer), for scale;
#   - the stack without change tracking (--no-cbt);
#   - the stack with dm-era for several --cbt-block sizes (and the default): *cold* is the first
#     write to each block of a fresh era (dm-era holds it until a metadata commit is on disk);
#     *warm* writes blocks already marked in the current era (the steady state between backups);
#   - the stack with a live snapshot (taking it starts a new era, so these writes are cold for
#     dm-era too) for several --chunk sizes, the store a file in the state directory (the
#     default) and a disk of its own (--store DEV); next to an LVM snapshot (`lvcreate -s -c`)
#     of an LV of the same size whose COW is a disk of its own.
# Steady states (raw, LV, no CBT, warm) are timed runs; first writes (cold, snapshots) write a
# fixed amount, so every write is a first write of its chunk or nearly.
#
# Disks, all of the same kind, created in the VM:
#   ram      RAM disks (brd). No latency at all: every layer's CPU cost shows at its largest,
#            so the ratios are upper bounds of the cost on real disks.
#   latency  null_blk, memory-backed, each I/O completing after --latency-us: a disk whose
#            time is spent waiting, as a real one's is, rather than copying memory.
# The state directory (era metadata, store files) is ext4 on a disk of the same kind, as it
# would be on a real machine.
#
# Freeze window (always on RAM disks: a suspend waits for in-flight I/O, and there is none):
# `snapstack snapshot` of sets of 1, 2, 4, 8, 16 and 32 devices, the window recorded by
# snapstack itself (first suspend to last resume), and once per size read from strace's
# DM_DEV_SUSPEND timestamps; next to the kernel's floor on this machine (dm-suspend-floor.c:
# the same side-by-side suspends and table-swapping resumes of as many bare `zero` devices,
# from a C program that does nothing else) and the same count of `lvcreate -s` run one after
# another (each freezes its own origin; the set's points in time spread over all of them).
#
# Environment: SNAPSTACK_BUILD_DIR (default .build) is the SwiftPM scratch path to build in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

usage() { sed -n '8,11p' "$0" | sed 's/^# \{0,3\}//' >&2; exit 64; }
reps=3 disk=ram latency_us=2000 part=all only=
while (($#)); do
    case $1 in
    --reps) reps=${2:-}; shift 2 || usage ;;
    --disk) disk=${2:-}; shift 2 || usage ;;
    --latency-us) latency_us=${2:-}; shift 2 || usage ;;
    --part) part=${2:-}; shift 2 || usage ;;
    --only) only=${2:-}; shift 2 || usage ;;
    [0-9]*) reps=$1; shift ;;
    *) usage ;;
    esac
done
[[ $reps =~ ^[1-9][0-9]*$ && $latency_us =~ ^[1-9][0-9]*$ ]] || usage
[[ $disk == ram || $disk == latency ]] || usage
[[ $part == all || $part == write || $part == freeze ]] || usage
build=${SNAPSTACK_BUILD_DIR:-.build}

if [[ ${SNAPSTACK_IN_VM:-} != 1 ]]; then
    bash Tests/lab/setup.sh
    for tool in strace gcc; do
        command -v $tool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $tool >/dev/null
    done
    swift build -c release --scratch-path "$build" --product snapstack 2>&1 | tail -n 1
    gcc -O2 -Wall -o "$build/release/dm-suspend-floor" Tests/bench/dm-suspend-floor.c -lpthread
    export SNAPSTACK_BUILD_DIR=$build
    exec Tests/lab/vm.sh --timeout 7200 --memory 3G -- bash "$0" --reps "$reps" --disk "$disk" \
        --latency-us "$latency_us" --part "$part" --only "$only"
fi

# ---- inside the VM ------------------------------------------------------------------------
snapstack=$PWD/$build/release/snapstack
# The VM lab hands its console ports to the command; lvm would warn about each on every call.
export LVM_SUPPRESS_FD_WARNINGS=1
work=$(mktemp -d /tmp/bench.XXXXXX)
state=$work/state
results=$work/results
region_mb=256          # fio writes within the first 256 MiB of each disk
rand_io=32M            # 8192 random 4k first writes per cold or snapshot run
seq_io=128M            # 128 sequential 1M first writes per cold or snapshot run
steady_s=4             # seconds per steady-state run
cow_mb=300             # snapshot store: more than the region, so no snapshot ever fills up
disk_mb=$((region_mb + cow_mb + 44))
era_blocks=(64K 256K 1M 4M)
chunks=(4K 16K 64K 256K)
set_sizes=(1 2 4 8 16 32)

ss() { "$snapstack" "$@" --state-dir "$state"; }

# brd: 5 disks for the write path (when they are RAM disks), 33 for the freeze window.
modprobe brd rd_nr=38 rd_size=$((disk_mb * 1024))
if [[ $disk == ram ]]; then
    disks=(/dev/ram0 /dev/ram1 /dev/ram2 /dev/ram3 /dev/ram4)
    disk_label="RAM disks (brd)"
else
    modprobe null_blk nr_devices=5 gb=1 memory_backed=1 queue_mode=2 hw_queue_depth=64 \
        irqmode=2 completion_nsec=$((latency_us * 1000))
    disks=(/dev/nullb0 /dev/nullb1 /dev/nullb2 /dev/nullb3 /dev/nullb4)
    # lvm accepts only block device types it knows; null_blk is not among them by default.
    export LVM_SYSTEM_DIR=$work/lvm
    mkdir -p "$LVM_SYSTEM_DIR"
    echo 'devices { types = [ "nullb", 16 ] }' >"$LVM_SYSTEM_DIR/lvm.conf"
    disk_label="null_blk, memory-backed, ${latency_us} us per I/O"
fi
ss_disk=${disks[0]} ss_cow_disk=${disks[1]} lvm_disk=${disks[2]} lvm_cow_disk=${disks[3]} state_disk=${disks[4]}
set_disk() { echo "/dev/ram$((4 + $1))"; }    # 1..32
lvm_set_disk=/dev/ram37

for d in "$ss_disk" "$lvm_disk"; do dd if=/dev/zero of="$d" bs=1M count=$region_mb oflag=direct status=none; done
mkfs.ext4 -q -E nodiscard "$state_disk"
mkdir -p "$state"
mount "$state_disk" "$state"
pvcreate -q "$lvm_disk" "$lvm_cow_disk" "$lvm_set_disk" >/dev/null
vgcreate -q benchvg "$lvm_disk" "$lvm_cow_disk" >/dev/null
vgcreate -q benchsetvg "$lvm_set_disk" >/dev/null
lvcreate -q -y -L ${region_mb}M -n origin benchvg "$lvm_disk" >/dev/null
dd if=/dev/zero of=/dev/benchvg/origin bs=1M count=$region_mb oflag=direct status=none
# Inactive first, then one activation: no lvcreate per LV pays lvm's activation cost.
for i in $(seq 1 32); do lvcreate -q -y -an -Zn -L 8M -n o$i benchsetvg >/dev/null 2>&1; done
vgchange -q -ay benchsetvg >/dev/null
udevadm settle

cleanup() {
    for n in $("$snapstack" devices -o name --noheadings --state-dir "$state" 2>/dev/null); do
        "$snapstack" unprotect "$n" --force --state-dir "$state" >/dev/null 2>&1 || true
    done
    vgremove -q -y -ff benchvg benchsetvg >/dev/null 2>&1 || true
    umount "$state" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# fio's write bandwidth in KiB/s (terse format, field 48): a fixed amount, or for steady_s.
fio_bw() { # target rw bs io_size|timed
    local amount=(--io_size="$4")
    [[ $4 == timed ]] && amount=(--runtime="$steady_s" --time_based)
    fio --name=w --filename="$1" --direct=1 --ioengine=libaio --iodepth=16 --rw="$2" --bs="$3" \
        --size=${region_mb}M "${amount[@]}" --randrepeat=1 --minimal 2>/dev/null | awk -F';' '{print $48}'
}
rand() { fio_bw "$1" randwrite 4k "${2:-$rand_io}"; }
seqw() { fio_bw "$1" write 1M "${2:-$seq_io}"; }
# Each figure also goes to stderr as it is measured, so that a run cut short still shows them.
record() { echo "$1|$2|$rep|$3" | tee -a "$results" >&2; } # config workload value
fill() { dd if=/dev/zero of="$1" bs=1M count=$region_mb oflag=direct status=none; }

run_raw() {
    record raw rand "$(rand $ss_disk timed)"
    record raw seq "$(seqw $ss_disk timed)"
}

run_lv() {
    record "lvm LV, no snapshot" rand "$(rand /dev/benchvg/origin timed)"
    record "lvm LV, no snapshot" seq "$(seqw /dev/benchvg/origin timed)"
}

run_nocbt() {
    ss protect $ss_disk --name wb --no-cbt >/dev/null 2>&1
    record "stack, no CBT" rand "$(rand /dev/mapper/snapstack-wb timed)"
    record "stack, no CBT" seq "$(seqw /dev/mapper/snapstack-wb timed)"
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
    fill $top        # every block of the region marked in this era
    record "$label warm" rand "$(rand $top timed)"
    record "$label warm" seq "$(seqw $top timed)"
    # A new era, as a snapshot would start: every block is unmarked again.
    dmsetup message snapstack-wb-real 0 checkpoint
    record "$label cold" seq "$(seqw $top)"
    ss unprotect wb >/dev/null
}

run_snapshots() { # chunk
    local chunk=$1 v
    ss protect $ss_disk --name wb >/dev/null 2>&1
    for w in seq rand; do
        ss snapshot wb --as s --chunk "$chunk" --size ${cow_mb}M >/dev/null
        if [[ $w == seq ]]; then v=$(seqw /dev/mapper/snapstack-wb); else v=$(rand /dev/mapper/snapstack-wb); fi
        record "snapshot $chunk chunk: snapstack" $w "$v"
        ss drop wb-s >/dev/null
        # A disk of its own as the store; its old header must not look like a store to reuse.
        dd if=/dev/zero of=$ss_cow_disk bs=1M count=1 oflag=direct status=none
        ss snapshot wb --as s --chunk "$chunk" --store $ss_cow_disk >/dev/null
        if [[ $w == seq ]]; then v=$(seqw /dev/mapper/snapstack-wb); else v=$(rand /dev/mapper/snapstack-wb); fi
        record "snapshot $chunk chunk: snapstack, store a disk" $w "$v"
        ss drop wb-s >/dev/null
        lvcreate -q -y -s -c "$chunk" -L ${cow_mb}M -n s benchvg/origin "$lvm_cow_disk" >/dev/null
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
if [[ -n $only ]]; then
    kept=(run_raw)
    for cell in "${cells[@]:1}"; do [[ $cell =~ $only ]] && kept+=("$cell"); done
    cells=("${kept[@]}")
fi
touch "$results"
if [[ $part != freeze ]]; then
    for ((rep = 0; rep < reps; rep++)); do
        echo "write path: repetition $((rep + 1)) of $reps" >&2
        n=${#cells[@]}
        for ((k = 0; k < n; k++)); do
            ${cells[$(((k + rep * 5) % n))]}
        done
    done
fi

# ---- freeze window of a set of N devices --------------------------------------------------
freeze_self=$work/freeze-self
freeze_floor=$work/freeze-floor
freeze_trace=$work/freeze-trace
touch "$freeze_self" "$freeze_floor" "$freeze_trace"
if [[ $part != write ]]; then
    set_names=()
    for i in $(seq 1 32); do
        ss protect "$(set_disk $i)" --name f$i >/dev/null 2>&1
        set_names+=(f$i)
    done
    set_freeze() { # count tag -> snapstack's own record of the window, in microseconds
        ss snapshot "${set_names[@]:0:$1}" --as "$2" --size 4M >/dev/null
        ss snapshots -o freeze --reportformat json |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["report"][0]["snapshot"][0]["freeze"])'
        for name in "${set_names[@]:0:$1}"; do ss drop "$name-$2"; done
    }
    floor_names=()
    for i in $(seq 1 32); do
        dmsetup create "floor$i" --table "0 16384 zero"
        floor_names+=("floor$i")
    done
    floor_freeze() { # count -> microseconds; every resume swaps tables, as snapstack's do
        for name in "${floor_names[@]:0:$1}"; do dmsetup load "$name" --table "0 16384 zero"; done
        "$PWD/$build/release/dm-suspend-floor" "${floor_names[@]:0:$1}"
        udevadm settle
    }
    for ((rep = 0; rep < reps; rep++)); do
        echo "freeze window: repetition $((rep + 1)) of $reps" >&2
        for ((k = 0; k < ${#set_sizes[@]}; k++)); do
            count=${set_sizes[$(((k + rep * 2) % ${#set_sizes[@]}))]}
            echo "$count $(set_freeze "$count" r$rep)" | tee -a "$freeze_self" >&2
            echo "$count $(floor_freeze "$count") floor" | tee -a "$freeze_floor" >&2
        done
    done
    for name in "${floor_names[@]}"; do dmsetup remove "$name"; done
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
fi

# ---- report -------------------------------------------------------------------------------
report() {
python3 - "$results" "$freeze_self" "$freeze_trace" "$reps" "$disk_label" "$steady_s" "$freeze_floor" <<'PY'
import collections, re, statistics, sys
results, freeze_self, freeze_trace, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
disk_label, steady_s, freeze_floor = sys.argv[5], sys.argv[6], sys.argv[7]

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
    return (5, size(config), 2 if "lvm" in config else 1 if "store a disk" in config else 0)

def cell(config, workload):
    ratios = [v / values[("raw", workload)][r] for r, v in values[(config, workload)].items()
              if values[("raw", workload)].get(r)]
    if not ratios: return "-"
    return f"{statistics.median(ratios):5.2f} ({min(ratios):.2f}-{max(ratios):.2f})"

if values:
    raw = {w: statistics.median(values[("raw", w)].values()) / 1024 for w in ("rand", "seq")}
    print(f"\nWrite path: ratio to the raw disk, median (min-max) over {reps} interleaved repetitions;")
    print(f"{disk_label}; fio direct libaio iodepth 16 within 256 MiB; steady states timed ({steady_s} s),")
    print(f"first writes a fixed amount; raw: 4k random {raw['rand']:.0f} MiB/s, 1M sequential {raw['seq']:.0f} MiB/s (medians)")
    print(f"{'':48}{'4k random writes':>22}{'1M sequential writes':>24}")
    for config in sorted(order, key=key):
        print(f"{config:48}{cell(config, 'rand'):>22}{cell(config, 'seq'):>24}")

def read_windows(path):
    us = collections.defaultdict(list)
    for line in open(path):
        fields = line.split()
        us[int(fields[0])].append(int(fields[1]))
    return us
self_us, floor_us = read_windows(freeze_self), read_windows(freeze_floor)

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

if not self_us:
    sys.exit(0)

def ms(us): return f"{us / 1000:.1f}" if us >= 0 else "-"
def spread(v): return f"{ms(statistics.median(v))} ({ms(min(v))}-{ms(max(v))})" if v else "-"
print(f"\nFreeze window of a snapshot set, in ms: snapstack's own record, median (min-max) of {reps};")
print("kernel floor: the same suspends and table-swapping resumes of bare zero devices from a C")
print("program that does nothing else (dm-suspend-floor.c), median (min-max) of the same repetitions;")
print("strace: first DM_DEV_SUSPEND that suspends to the return of the last resume, one take;")
print("lvcreate -s, one after another: each LV's own window (median), and the span from the first")
print("suspend to the last resume, over which the set's points in time spread.")
print(f"{'devices':>8}{'snapstack':>22}{'x 1 device':>12}{'kernel floor':>22}{'x 1 device':>12}"
      f"{'snapstack (strace)':>20}{'lvcreate -s each':>18}{'lvcreate -s span':>18}")
base = statistics.median(self_us[1])
floor_base = statistics.median(floor_us[1]) if floor_us[1] else 0
for count in sorted(self_us):
    v, f = self_us[count], floor_us[count]
    ss_trace = span_us(traced.get(("snapstack", count), []))
    lvm_each = [int((l - f) * 1e6) for f, l in lvm[:count]]
    lvm_span = span_us(lvm[:count]) if len(lvm) >= count else -1
    floor_ratio = f"{statistics.median(f) / floor_base:>11.2f}x" if f and floor_base else f"{'-':>12}"
    print(f"{count:>8}{spread(v):>22}{statistics.median(v) / base:>11.2f}x{spread(f):>22}{floor_ratio}"
          f"{ms(ss_trace):>20}{ms(statistics.median(lvm_each)) if lvm_each else '-':>18}{ms(lvm_span):>18}")
PY
}
if ! report; then
    echo "write-path.sh: the report failed; the raw figures (config|workload|rep|KiB/s, then devices µs):" >&2
    cat "$results" "$freeze_self" >&2
    exit 1
fi
