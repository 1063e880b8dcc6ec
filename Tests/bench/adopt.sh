#!/usr/bin/env bash
# Benchmark (not a test): what adopting a live LVM volume online costs, next to LVM's own ways of
# slipping a layer under a mounted volume; in one VM run, interleaved repetitions. Prints medians,
# ranges and same-run ratios; only the ratios mean anything (the VM is emulated, the host shared).
#
#   bash Tests/bench/adopt.sh [--reps N] [--runtime S] [--part all|freeze|write|readopt] [--json]
#                             [--binary PATH]
#   (defaults: 3 repetitions, 10 s per fio run, all; --json prints a JSON document on stdout and
#   the table on stderr; --binary or SNAPSTACK_BENCH_BINARY: the snapstack to time, otherwise the
#   release build with the Swift runtime linked in is built here and timed)
#
# Freeze: an ext4 file system on a 256 MiB LV, mounted, with a writer running (64 KiB pwrite at
# a random offset of a 32 MiB file, then fdatasync, every 5 ms). On that LV, each repetition runs,
# in a rotated order:
#   snapstack protect /dev/benchvg/lv --name bench    and  snapstack unprotect bench
#   lvconvert --type writecache --cachevol fast       and  lvconvert --splitcache
#   lvconvert --type cache --cachevol fast            and  lvconvert --splitcache
#   lvcreate -s -L 32M                                and  lvremove of the snapshot
# ("fast": a 64 MiB LV on another PV.) Each command runs once a repetition, under
# `strace -f -ttt -T -e trace=ioctl --seccomp-bpf` (only ioctls stop the process, so the trace
# costs little): the LV's freeze window is the time from the start of each DM_DEV_SUSPEND that
# suspends the LV (benchvg-lv) to the return of the DM_DEV_SUSPEND that resumes it, summed over
# the pairs; also the number of pairs and whether the suspend froze the file system (no
# DM_SKIP_LOCKFS_FLAG). Also the command's wall time, and the writer's longest write+fdatasync
# that overlapped it: the stall a program on the file system sees. After every detaching command
# the LV's table must be the one it had at the start.
#
# Write: fio, direct I/O, libaio, iodepth 8, 4k random writes and 1M sequential writes over a
# second 256 MiB LV (not mounted), each run --runtime seconds, on the bare LV, on the LV adopted
# by `snapstack protect` (a fresh era each repetition: the first write to each 1 MiB era block
# waits for a metadata commit) and on the LV with a writecache (lvconvert --type writecache, the
# same 64 MiB fast LV); rotated order; ratio to the bare LV of the same repetition.
#
# Re-adoption: the LV adopted (mounted) with `snapstack daemon` running; each repetition runs
# `lvextend -L+4M` and `lvchange --refresh` of it, each of which loads LVM's own table and so
# bypasses the stack. Timed: LVM's command (its wall time, the reference), and from its return to
# the moment `dmsetup table benchvg-lv` maps through snapstack-bench-real again (the daemon acting
# on the udev change event; polled every 10 ms). The ratio is re-adoption / LVM's command.
#
# Disks: RAM disks (brd), so an I/O costs only CPU and a layer's CPU cost shows at its largest;
# snapstack's state directory (era metadata) is ext4 on a RAM disk of its own.
#
# SNAPSTACK_BENCH_TRACES=DIR keeps the strace logs, the writer's log and every figure in DIR (on
# the host).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

usage() { sed -n '6,10p' "$0" | sed 's/^# \{0,3\}//' >&2; exit 64; }
reps=3 runtime=10 part=all json=0
binary=${SNAPSTACK_BENCH_BINARY:-}
while (($#)); do
    case $1 in
    --reps) reps=${2:-}; shift 2 || usage ;;
    --runtime) runtime=${2:-}; shift 2 || usage ;;
    --part) part=${2:-}; shift 2 || usage ;;
    --json) json=1; shift ;;
    --binary) binary=${2:-}; shift 2 || usage ;;
    -h | --help) sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    [0-9]*) reps=$1; shift ;;
    *) usage ;;
    esac
done
[[ $reps =~ ^[1-9][0-9]*$ && $runtime =~ ^[1-9][0-9]*$ ]] || usage
[[ $part == all || $part == freeze || $part == write || $part == readopt ]] || usage

if [[ ${SNAPSTACK_IN_VM:-} != 1 ]]; then
    bash Tests/lab/setup.sh
    if [[ -z $binary ]]; then
        swift build -c release --product snapstack --static-swift-stdlib 2>&1 | tail -n 1
        binary=.build/release/snapstack
    fi
    [[ -x $binary ]] || { echo "adopt.sh: no executable snapstack at '$binary'" >&2; exit 64; }
    # The guest sees this host's file system: an absolute path reaches it as it is.
    export SNAPSTACK_BENCH_BINARY=$(realpath "$binary")
    args=(--reps "$reps" --runtime "$runtime" --part "$part")
    ((json)) && args+=(--json)
    rwdir=()
    if [[ -n ${SNAPSTACK_BENCH_TRACES:-} ]]; then
        mkdir -p "$SNAPSTACK_BENCH_TRACES"
        export SNAPSTACK_BENCH_TRACES=$(cd "$SNAPSTACK_BENCH_TRACES" && pwd -P)
        rwdir=(--rwdir "$SNAPSTACK_BENCH_TRACES")
    fi
    exec Tests/lab/vm.sh --timeout 1800 --memory 3G "${rwdir[@]}" -- bash "$0" "${args[@]}"
fi

# ---- inside the VM ------------------------------------------------------------------------
snapstack=$SNAPSTACK_BENCH_BINARY
# The VM lab hands its console ports to the command; lvm would warn about each on every call.
export LVM_SUPPRESS_FD_WARNINGS=1
modprobe -a dm-writecache dm-cache dm-cache-smq
work=$(mktemp -d /tmp/adopt.XXXXXX)
state=$work/state mnt=$work/mnt runs=$work/runs writes=$work/writes wlog=$work/writer.log
lv_mb=256 fast_mb=64 snap_mb=32
touch "$runs" "$writes" "$wlog"
mkdir -p "$state" "$mnt"

# ram0: the two LVs; ram1: the fast LV and the snapshot's COW; ram2: the state directory.
modprobe brd rd_nr=3 rd_size=$(((2 * lv_mb + 80) * 1024)) # room to grow lv in the readopt part
mkfs.ext4 -q -E nodiscard /dev/ram2
mount /dev/ram2 "$state"
pvcreate -q /dev/ram0 /dev/ram1 >/dev/null
vgcreate -q benchvg /dev/ram0 /dev/ram1 >/dev/null
lvcreate -q -y -L ${lv_mb}M -n lv benchvg /dev/ram0 >/dev/null
lvcreate -q -y -L ${lv_mb}M -n wlv benchvg /dev/ram0 >/dev/null
# A writecache's cachevol must be inactive to be attached (and an inactive LV cannot be zeroed).
lvcreate -q -y -an -Zn -L ${fast_mb}M -n fast benchvg /dev/ram1 >/dev/null 2>&1
udevadm settle
# lvcreate -s registers its snapshot with dmeventd, starting the daemon when none runs: strace -f
# would follow it and wait for it forever. Started here, it is running before any traced command.
dmeventd

writer_pid=
cleanup() {
    set +e
    [[ -z ${SNAPSTACK_BENCH_TRACES:-} ]] || cp "$work"/*.trace "$runs" "$writes" "$wlog" "$SNAPSTACK_BENCH_TRACES/" 2>/dev/null
    # A device left suspended would hang every later step (a frozen file system above all).
    dmsetup info -c --noheadings -o name,suspended 2>/dev/null | awk -F: '$2 == "Suspended" {print $1}' |
        while read -r d; do dmsetup resume "$d"; done
    [[ -z $writer_pid ]] || { kill "$writer_pid"; wait "$writer_pid"; } 2>/dev/null
    for n in bench wbench; do "$snapstack" unprotect "$n" --force --state-dir "$state" >/dev/null 2>&1; done
    for lv in lv wlv; do lvconvert -q -y --splitcache benchvg/$lv >/dev/null 2>&1; done
    umount "$mnt" 2>/dev/null
    vgremove -q -y -ff benchvg >/dev/null 2>&1
    umount "$state" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

now_ns() { date +%s%N; }

# Runs a command; on failure prints what it said and stops the benchmark (the evidence). One that
# takes longer than $limit_s is taken to hang: what every blocked task waits in, the dm devices
# and their tables are printed, then it is killed and every suspended device resumed.
limit_s=180
dump_hang() {
    echo "adopt.sh: HUNG for ${limit_s} s: $*" >&2
    echo "    dmsetup info -c:" >&2
    dmsetup info -c 2>&1 | sed 's/^/    /' >&2
    echo "    dmsetup table:" >&2
    dmsetup table 2>&1 | sed 's/^/    /' >&2
    local p
    for p in /proc/[0-9]*; do
        [[ $(awk '{print $3}' "$p/stat" 2>/dev/null) == D || $(cat "$p/comm" 2>/dev/null) =~ ^(lv|strace|snapstack|python3) ]] || continue
        echo "    pid ${p#/proc/} $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null | cut -c1-120) state $(awk '{print $3}' "$p/stat" 2>/dev/null) wchan $(cat "$p/wchan" 2>/dev/null)" >&2
        sed 's/^/        /' "$p/stack" >&2 2>/dev/null || true
    done
}
must() {
    # The watchdog, in the background, so that the command itself runs in the foreground untouched.
    (exec 3>&2 2>/dev/null; sleep "$limit_s" && { dump_hang "$@" 2>&3; pkill -9 -P $$ -f "$1"; }) &
    local watchdog=$! status=0
    "$@" >"$work/out" 2>&1 || status=$?
    pkill -P $watchdog sleep 2>/dev/null || true
    wait $watchdog 2>/dev/null || true
    if ((status)); then
        echo "adopt.sh: FAILED: $*" >&2
        sed 's/^/    /' "$work/out" >&2
        echo "    dmsetup table:" >&2
        dmsetup table 2>&1 | sed 's/^/    /' >&2
        exit 1
    fi
}

# What attaches a layer under the LV (and takes it away again), per tool: prep runs first, untimed.
declare -A attach detach prep
attach[ss]="$snapstack protect /dev/benchvg/@LV@ --name @NAME@ --state-dir $state"
detach[ss]="$snapstack unprotect @NAME@ --state-dir $state"
prep[ss]=:
attach[wc]="lvconvert -q -y --type writecache --cachevol fast benchvg/@LV@"
detach[wc]="lvconvert -q -y --splitcache benchvg/@LV@"
prep[wc]="lvchange -q -an benchvg/fast"
attach[cache]="lvconvert -q -y --type cache --cachevol fast benchvg/@LV@"
detach[cache]="lvconvert -q -y --splitcache benchvg/@LV@"
prep[cache]="lvchange -q -an benchvg/fast"
attach[snap]="lvcreate -q -y -s -L ${snap_mb}M -n snap benchvg/@LV@ /dev/ram1"
detach[snap]="lvremove -q -y benchvg/snap"
prep[snap]=:
# The command lines for a given LV and snapstack name.
cmd() { local c=${1//@LV@/$2}; echo "${c//@NAME@/$3}"; }

# ---- freeze window ------------------------------------------------------------------------
# One command on the mounted LV, traced; appends "tool op rep t0 t1 trace" to $runs.
run_op() { # tool attach|detach rep
    local tool=$1 op=$2 rep=$3 c t0 t1 trace=$work/$1.$2.$3.trace
    if [[ $op == attach ]]; then c=$(cmd "${attach[$tool]}" lv bench); else c=$(cmd "${detach[$tool]}" lv bench); fi
    [[ $op == detach ]] || must ${prep[$tool]}
    udevadm settle
    sleep 0.5 # the writer's steady state before each command
    t0=$(now_ns)
    must strace -f -ttt -T -e trace=ioctl --seccomp-bpf -o "$trace" $c
    t1=$(now_ns)
    echo "$tool $op $rep $t0 $t1 $trace" | tee -a "$runs" >&2
    if [[ $op == detach ]]; then
        udevadm settle
        local now
        now=$(dmsetup table benchvg-lv)
        if [[ $now != "$lv_table" ]]; then
            echo "adopt.sh: after '$c' benchvg-lv maps '$now', not its own table '$lv_table'" >&2
            exit 1
        fi
    fi
}

freeze_part() {
    lv_table=$(dmsetup table benchvg-lv)
    mkfs.ext4 -q -E nodiscard /dev/benchvg/lv
    mount /dev/benchvg/lv "$mnt"
    dd if=/dev/urandom of="$mnt/writer" bs=1M count=32 conv=fsync status=none
    python3 - "$mnt/writer" "$wlog" <<'PY' &
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
size = os.fstat(fd).st_size
buf = os.urandom(64 << 10)
out = open(sys.argv[2], "w", buffering=1)
rng = random.Random(1)
while True:
    off = rng.randrange(size // len(buf)) * len(buf)
    t0 = time.time()
    os.pwrite(fd, buf, off)
    os.fdatasync(fd)
    out.write(f"{t0:.6f} {time.time():.6f}\n")
    time.sleep(0.005)
PY
    writer_pid=$!
    local tools=(ss wc cache snap) rep k tool
    for ((rep = 0; rep < reps; rep++)); do
        echo "freeze: repetition $((rep + 1)) of $reps" >&2
        for ((k = 0; k < ${#tools[@]}; k++)); do
            tool=${tools[$(((k + rep) % ${#tools[@]}))]}
            run_op "$tool" attach $rep
            run_op "$tool" detach $rep
        done
    done
    kill "$writer_pid"
    wait "$writer_pid" 2>/dev/null || true
    writer_pid=
    umount "$mnt"
}

# ---- write cost ---------------------------------------------------------------------------
# fio's write bandwidth in KiB/s (terse format, field 48).
fio_bw() { # rw bs
    fio --name=w --filename=/dev/benchvg/wlv --direct=1 --ioengine=libaio --iodepth=8 --rw="$1" --bs="$2" \
        --size=${lv_mb}M --runtime="$runtime" --time_based --randrepeat=1 --minimal 2>/dev/null | awk -F';' '{print $48}'
}
write_config() { # config rep
    local v
    for w in rand seq; do
        if [[ $w == rand ]]; then v=$(fio_bw randwrite 4k); else v=$(fio_bw write 1M); fi
        echo "$1|$w|$2|$v" | tee -a "$writes" >&2
    done
}
write_part() {
    # Every block written once, so that no configuration pays brd's first allocation of a page.
    dd if=/dev/zero of=/dev/benchvg/wlv bs=1M count=$lv_mb oflag=direct status=none
    local configs=(bare adopted writecache) rep k
    for ((rep = 0; rep < reps; rep++)); do
        echo "write: repetition $((rep + 1)) of $reps" >&2
        for ((k = 0; k < ${#configs[@]}; k++)); do
            case ${configs[$(((k + rep) % ${#configs[@]}))]} in
            bare) write_config bare $rep ;;
            adopted)
                must $(cmd "${attach[ss]}" wlv wbench)
                write_config adopted $rep
                must $(cmd "${detach[ss]}" wlv wbench)
                ;;
            writecache)
                must ${prep[wc]}
                must $(cmd "${attach[wc]}" wlv -)
                write_config writecache $rep
                must $(cmd "${detach[wc]}" wlv -)
                ;;
            esac
            udevadm settle
        done
    done
}

# ---- re-adoption by the daemon -------------------------------------------------------------
readopts=$work/readopts
touch "$readopts"
readopt_part() {
    mkfs.ext4 -q -E nodiscard /dev/benchvg/lv
    mount /dev/benchvg/lv "$mnt"
    printf 'rules:\n' >"$work/daemon.conf"
    "$snapstack" daemon --config "$work/daemon.conf" --state-dir "$state" >"$work/daemon.log" 2>&1 &
    local daemon_pid=$! i
    for ((i = 0; i < 600; i++)); do grep -q ready "$work/daemon.log" && break; sleep 0.1; done
    grep -q ready "$work/daemon.log" || { echo "adopt.sh: the daemon did not get ready:" >&2; cat "$work/daemon.log" >&2; exit 1; }
    must "$snapstack" protect /dev/benchvg/lv --name bench --state-dir "$state"
    udevadm settle
    local real rep op t0 t1 t2 c
    real=$(dmsetup info -c --noheadings -o major,minor --separator : snapstack-bench-real | tr -d ' ')
    for ((rep = 0; rep < reps; rep++)); do
        echo "readopt: repetition $((rep + 1)) of $reps" >&2
        for op in extend refresh; do
            if [[ $op == extend ]]; then c="lvextend -q -L+4M benchvg/lv"; else c="lvchange -q --refresh benchvg/lv"; fi
            sleep 1 # the daemon idle
            t0=$(now_ns)
            must $c
            t1=$(now_ns)
            for ((i = 0; i < 3000; i++)); do
                [[ $(dmsetup table benchvg-lv) =~ ^0\ [0-9]+\ linear\ $real\ 0$ ]] && break
                sleep 0.01
            done
            t2=$(now_ns)
            if ((i == 3000)); then
                echo "adopt.sh: benchvg-lv not re-adopted 30 s after '$c': $(dmsetup table benchvg-lv)" >&2
                cat "$work/daemon.log" >&2
                exit 1
            fi
            echo "$op $rep $t0 $t1 $t2" | tee -a "$readopts" >&2
        done
    done
    must "$snapstack" unprotect bench --state-dir "$state"
    kill "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
    umount "$mnt"
}

[[ $part == write || $part == readopt ]] || freeze_part
[[ $part == freeze || $part == readopt ]] || write_part
[[ $part == all || $part == readopt ]] && readopt_part

# ---- report -------------------------------------------------------------------------------
python3 - "$runs" "$wlog" "$writes" "$reps" "$runtime" "$json" "$lv_mb" "$fast_mb" "$snap_mb" "$readopts" <<'PY'
import collections, json, re, statistics, sys
runs, wlog, writes, readopts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[10]
reps, runtime, as_json = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
lv_mb, fast_mb, snap_mb = sys.argv[7], sys.argv[8], sys.argv[9]
table_out = sys.stderr if as_json else sys.stdout
def say(*a): print(*a, file=table_out)

LV = 'name="benchvg-lv"'
def windows(path):
    """The LV's suspend/resume pairs in one strace -f -ttt -T log: [(start, end, froze_fs)]."""
    pending, calls = {}, []
    for line in open(path):
        m = re.match(r"\s*(\d+)\s+(\d+\.\d+) (.*)", line)
        if not m:
            continue
        pid, t, rest = m.group(1), float(m.group(2)), m.group(3)
        if rest.startswith("ioctl(") and "DM_DEV_SUSPEND" in rest:
            if rest.rstrip().endswith("<unfinished ...>"):
                pending[pid] = (t, rest)
                continue
            start, text = t, rest
        elif rest.startswith("<... ioctl resumed>") and pid in pending:
            start, text = pending.pop(pid)
            text += rest
        else:
            continue
        d = re.search(r"<(\d+\.\d+)>\s*$", text)
        if not d or re.search(r"\)\s*=\s*-1", text) or LV not in text:
            continue
        inp = text.split("=>")[0]
        calls.append((start, start + float(d.group(1)), "DM_SUSPEND_FLAG" in inp, "DM_SKIP_LOCKFS_FLAG" not in inp))
    calls.sort()
    out, open_ = [], None
    for start, end, suspend, lockfs in calls:
        if suspend and open_ is None:
            open_ = (start, lockfs)
        elif not suspend and open_ is not None:
            out.append((open_[0], end, open_[1]))
            open_ = None
    return out

ops = []
for line in open(wlog):
    a, b = line.split()
    ops.append((float(a), float(b)))
def stall(t0, t1):
    """The writer's longest write+fdatasync overlapping [t0, t1] (seconds)."""
    return max((b - a for a, b in ops if b >= t0 and a <= t1), default=None)

data = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(runs):
    tool, op, rep, t0, t1, trace = line.split()
    t0, t1 = int(t0) / 1e9, int(t1) / 1e9
    d = data[(tool, op)]
    d["wall"].append(t1 - t0)
    s = stall(t0, t1)
    if s is not None:
        d["stall"].append(s)
    w = windows(trace)
    d["freeze"].append(sum(e - s for s, e, _ in w))
    d["pairs"].append(len(w))
    d["lockfs"].append(any(l for _, _, l in w))

ROWS = [("ss", "attach", "snapstack protect"), ("ss", "detach", "snapstack unprotect"),
        ("wc", "attach", "lvconvert --type writecache"), ("wc", "detach", "lvconvert --splitcache (writecache)"),
        ("cache", "attach", "lvconvert --type cache"), ("cache", "detach", "lvconvert --splitcache (cache)"),
        ("snap", "attach", "lvcreate -s"), ("snap", "detach", "lvremove (the snapshot)")]
def med(v): return statistics.median(v) if v else None
def cell(v):
    return f"{med(v)*1000:.1f} ({min(v)*1000:.1f}-{max(v)*1000:.1f})" if v else "-"
def summary(v):
    return {"median": med(v), "min": min(v), "max": max(v), "values": v} if v else None

doc = {"reps": reps, "lv_mib": int(lv_mb), "fast_mib": int(fast_mb), "snapshot_mib": int(snap_mb),
       "units": "seconds; write bandwidth KiB/s", "freeze": [], "write": []}
if data:
    typical = med([b - a for a, b in ops])
    say(f"Layering under a mounted LV: ext4 on a {lv_mb} MiB LV (RAM disk), a writer running (64 KiB write + fdatasync")
    say(f"every 5 ms; typical {typical*1000:.1f} ms each); fast LV {fast_mb} MiB on another PV; snapshot COW {snap_mb} MiB.")
    say(f"{reps} repetitions, median (min-max), ms; every command under strace -e trace=ioctl --seccomp-bpf. LV suspended:")
    say("from a DM_DEV_SUSPEND suspending benchvg-lv to the return of its resume, summed over the pairs.")
    say(f"{'':38}{'wall time':>26}{'LV suspended':>26}{'suspends':>10}{'fs frozen':>11}{'writer longest write':>26}")
    for tool, op, label in ROWS:
        d = data.get((tool, op))
        if not d:
            continue
        pairs = "/".join(str(p) for p in sorted(set(d["pairs"])))
        lockfs = "yes" if all(d["lockfs"]) else "no" if not any(d["lockfs"]) else "some"
        say(f"{label:38}{cell(d['wall']):>26}{cell(d['freeze']):>26}{pairs:>10}{lockfs:>11}{cell(d['stall']):>26}")
        doc["freeze"].append({"tool": tool, "op": op, "command": label, "wall": summary(d["wall"]),
                              "suspended": summary(d["freeze"]), "suspends": d["pairs"], "fs_frozen": d["lockfs"],
                              "writer_longest_write": summary(d["stall"])})
    ss = data.get(("ss", "attach"))
    ratios = {}
    if ss:
        say("ratio other / snapstack protect (medians):")
        for tool, op, label in ROWS[1:]:
            d = data.get((tool, op))
            if not d:
                continue
            r = {k: med(d[k]) / med(ss[k]) for k in ("wall", "freeze", "stall") if d[k] and ss[k] and med(ss[k]) > 0}
            ratios[label] = r
            say(f"  {label:36} wall {r.get('wall', 0):5.2f}x   LV suspended {r.get('freeze', 0):6.2f}x   writer's longest write {r.get('stall', 0):5.2f}x")
    doc["freeze_ratios_to_snapstack_protect"] = ratios

values = collections.defaultdict(dict)
for line in open(writes):
    config, workload, rep, value = line.rstrip("\n").split("|")
    values[(config, workload)][int(rep)] = float(value or 0)
if values:
    say()
    say(f"Write cost: fio direct libaio iodepth 8 on a {lv_mb} MiB LV (RAM disk), {runtime} s per run, {reps} repetitions;")
    say("MiB/s median, and the ratio to the bare LV of the same repetition, median (min-max)")
    say(f"{'':22}{'4k random writes':>34}{'1M sequential writes':>34}")
    for config, label in (("bare", "bare LV"), ("adopted", "adopted (snapstack)"), ("writecache", "writecache (lvm)")):
        cells, row = [], {"config": config}
        for w in ("rand", "seq"):
            got = values.get((config, w), {})
            ratios = [v / values[("bare", w)][r] for r, v in got.items() if values[("bare", w)].get(r)]
            mibs = med(list(got.values()))
            text = f"{mibs/1024:7.1f}" if mibs is not None else "      -"
            if ratios and config != "bare":
                text += f"  {med(ratios):5.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            else:
                text += " " * 21
            cells.append(text)
            row[w] = {"kib_s": [got[r] for r in sorted(got)], "ratio_to_bare": summary(ratios) if config != "bare" else None}
        if any(values.get((config, w)) for w in ("rand", "seq")):
            say(f"{label:22}{cells[0]:>34}{cells[1]:>34}")
            doc["write"].append(row)
readopt = collections.defaultdict(lambda: {"lvm": [], "readopt": []})
for line in open(readopts):
    op, rep, t0, t1, t2 = line.split()
    readopt[op]["lvm"].append((int(t1) - int(t0)) / 1e9)
    readopt[op]["readopt"].append((int(t2) - int(t1)) / 1e9)
doc["readopt"] = []
if readopt:
    say()
    say(f"Re-adoption by the daemon after LVM reloads the mounted LV: {reps} repetitions, median (min-max), ms;")
    say("from the LVM command's return until benchvg-lv maps through snapstack-bench-real again (polled every 10 ms).")
    say(f"{'':28}{'LVM command':>26}{'re-adopted after':>26}{'ratio':>10}")
    for op, label in (("extend", "lvextend -L+4M"), ("refresh", "lvchange --refresh")):
        d = readopt.get(op)
        if not d:
            continue
        ratio = med(d["readopt"]) / med(d["lvm"]) if med(d["lvm"]) else 0
        say(f"{label:28}{cell(d['lvm']):>26}{cell(d['readopt']):>26}{ratio:9.2f}x")
        doc["readopt"].append({"command": label, "lvm": summary(d["lvm"]), "readopted_after": summary(d["readopt"]),
                               "ratio_to_lvm_command": ratio})
if as_json:
    json.dump(doc, sys.stdout, indent=2)
    print()
PY
