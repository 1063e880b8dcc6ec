#!/usr/bin/env bash
# Benchmark (not a test): how long taking a snapshot takes, and how long the origin's I/O is held
# (the freeze window), for `snapstack snapshot` next to `lvcreate -s` on an LV of the same size,
# and optionally next to a baseline build of snapstack from another commit; in one VM run, TAKES
# times each, interleaved (the order rotates every round). Prints medians and ranges; only the
# ratios of one run mean anything (the VM is emulated and the host may be busy).
#
#   bash Tests/bench/snapshot-take.sh [--baseline COMMIT] [TAKES]      (default 10)
#   SNAPSTACK_BENCH_BASELINE=COMMIT bash Tests/bench/snapshot-take.sh [TAKES]
#
# The freeze window is read the same way for every tool: strace timestamps of the first
# DM_DEV_SUSPEND that suspends a device and the last one that resumes a device, in a separate
# strace'd take (so that strace's overhead never touches the wall-time takes). snapstack also
# records its own window, printed beside it.
#
# Where a take's time goes: a few more takes of each snapstack binary run under a full
# `strace -f -ttt -T -y`, after the timed ones, and their wall time (execve to exit) is split into
# phases from the syscall timestamps. Two phases are spans: process start (execve to the first
# open of the state database: the dynamic loader, relocations, the Swift runtime, argument
# parsing, the state lock) and the freeze window (first suspending DM_DEV_SUSPEND to the return
# of the last resume). The rest of the timeline goes, piece by piece, to the syscall that a
# thread is in or has last returned from: that of the thread that entered one last, leaving out
# threads that wait on a futex or a poll (their wait is another thread's work). So a phase holds
# its syscalls and the user-space work after each. strace stops the process twice a syscall,
# milliseconds each on emulated CPUs, so phases with many syscalls swell most: each is printed as
# traced and less that cost for each of its syscalls, the cost read off the trace itself (the
# spacing of the dynamic loader's failed library lookups, which do nothing in between), beside
# the untraced median take.
#
# --baseline COMMIT builds that commit's release `snapstack` on the host in a git worktree under
# .build/bench-baseline/ (kept, and reused when the binary is there) and times it in the same
# VM, each binary over a loop disk of its own with a state directory of its own (a baseline may
# have another database schema), the same sizes for both.
#
# SNAPSTACK_BENCH_TRACES=DIR keeps the traced takes' strace logs and every timing in DIR (on the
# host), to look at where the phases come from.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

usage() { echo "usage: $0 [--baseline COMMIT] [TAKES]" >&2; exit 64; }
baseline=${SNAPSTACK_BENCH_BASELINE:-}
takes=10
while (($#)); do
    case $1 in
    --baseline) [[ -n ${2:-} ]] || usage; baseline=$2; shift 2 ;;
    --baseline=*) baseline=${1#*=}; shift ;;
    [0-9]*) takes=$1; shift ;;
    *) usage ;;
    esac
done
[[ $takes =~ ^[1-9][0-9]*$ ]] || usage

if [[ ${SNAPSTACK_IN_VM:-} != 1 ]]; then
    bash Tests/lab/setup.sh
    command -v strace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends strace >/dev/null
    swift build -c release --product snapstack 2>&1 | tail -n 1
    # What reaches the VM: the baseline's binary (its path, visible through 9p) and a label.
    # SNAPSTACK_* variables are passed in by vm.sh; the option itself is not looked at there.
    export SNAPSTACK_BENCH_BASELINE_BIN= SNAPSTACK_BENCH_BASELINE_LABEL=
    unset SNAPSTACK_BENCH_BASELINE
    if [[ -n $baseline ]]; then
        commit=$(git rev-parse --verify --quiet "$baseline^{commit}") || { echo "$0: no commit '$baseline'" >&2; exit 64; }
        short=$(git rev-parse --short "$commit")
        # One worktree and one binary per commit: a commit never changes, so a binary built
        # from it stays valid. The binary is copied out only after a build succeeded, so its
        # presence means a complete build.
        root=$PWD/.build/bench-baseline
        tree=$root/$commit
        binary=$root/snapstack-$commit
        if [[ ! -x $binary ]]; then
            mkdir -p "$root"
            if [[ ! -d $tree ]]; then
                git worktree prune # a worktree whose directory went with a deleted .build
                git worktree add -q --detach "$tree" "$commit"
            fi
            echo "building baseline $short in $tree"
            (cd "$tree" && swift build -c release --product snapstack 2>&1 | tail -n 1)
            [[ -x $tree/.build/release/snapstack ]] || { echo "$0: the baseline $short did not build" >&2; exit 1; }
            cp "$tree/.build/release/snapstack" "$binary.tmp"
            mv "$binary.tmp" "$binary"
        fi
        SNAPSTACK_BENCH_BASELINE_BIN=$binary
        SNAPSTACK_BENCH_BASELINE_LABEL=$short
    fi
    rwdir=()
    if [[ -n ${SNAPSTACK_BENCH_TRACES:-} ]]; then
        mkdir -p "$SNAPSTACK_BENCH_TRACES"
        SNAPSTACK_BENCH_TRACES=$(cd "$SNAPSTACK_BENCH_TRACES" && pwd -P)
        rwdir=(--rwdir "$SNAPSTACK_BENCH_TRACES")
    fi
    exec Tests/lab/vm.sh --timeout 3000 --memory 3G "${rwdir[@]}" -- bash "$0" "$takes"
fi

# ---- inside the VM ------------------------------------------------------------------------
snapstack=$PWD/.build/release/snapstack
baseline_bin=${SNAPSTACK_BENCH_BASELINE_BIN:-}
baseline_label=${SNAPSTACK_BENCH_BASELINE_LABEL:-}
# The VM lab hands its console ports to the command; lvm would warn about each on every call.
export LVM_SUPPRESS_FD_WARNINGS=1
work=$(mktemp -d /tmp/bench.XXXXXX)
results=$work/results
mkdir "$results"
size_mb=256
store_mb=32
# Traced takes for the phase breakdown: a few, so that one odd take shows as a wide range.
trace_takes=$((takes < 3 ? takes : 3))

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

# Same-size origins: a loop disk for each snapstack binary, protected by it with a state
# directory of its own (names of the same length, so that no name makes one slower), and an LV
# in a VG on another loop disk.
tools=(ss lvm)
declare -A bin=([ss]=$snapstack) name=([ss]=bench) state=([ss]=$work/state) disk=()
if [[ -n $baseline_bin ]]; then
    tools=(ss base lvm)
    bin[base]=$baseline_bin name[base]=basel state[base]=$work/state-base
fi
for tool in "${tools[@]}"; do
    [[ $tool != lvm ]] || continue
    truncate -s ${size_mb}M "$work/$tool.img"
    disk[$tool]=$(losetup -f --show "$work/$tool.img")
    "${bin[$tool]}" protect "${disk[$tool]}" --name "${name[$tool]}" --state-dir "${state[$tool]}" >/dev/null 2>&1
done
truncate -s $((size_mb + store_mb * 2 + 16))M "$work/lvm.img"
disk[lvm]=$(losetup -f --show "$work/lvm.img")
pvcreate -q "${disk[lvm]}" >/dev/null
vgcreate -q benchvg "${disk[lvm]}" >/dev/null
lvcreate -q -y -L ${size_mb}M -n origin benchvg >/dev/null
udevadm settle

cleanup() {
    lvremove -q -y benchvg >/dev/null 2>&1 || true
    vgremove -q -y benchvg >/dev/null 2>&1 || true
    for tool in "${tools[@]}"; do
        [[ $tool != lvm ]] || continue
        "${bin[$tool]}" unprotect "${name[$tool]}" --force --state-dir "${state[$tool]}" >/dev/null 2>&1 || true
    done
    losetup -d "${disk[@]}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# One timed take of TOOL, then a strace'd take for the window. Results are appended to files
# under $results, one value a line, read by the report at the end.
take() {
    local tool=$1 i=$2 t0 t1
    if [[ $tool == lvm ]]; then
        t0=$(now_ns)
        lvcreate -q -y -s -L ${store_mb}M -n t$i benchvg/origin >/dev/null
        t1=$(now_ns)
        echo $(((t1 - t0) / 1000)) >>"$results/$tool.wall"
        lvremove -q -y benchvg/t$i >/dev/null
        strace -f -ttt -e trace=ioctl -o "$work/lvm.trace" lvcreate -q -y -s -L ${store_mb}M -n s$i benchvg/origin >/dev/null
        freeze_us "$work/lvm.trace" >>"$results/$tool.freeze"
        lvremove -q -y benchvg/s$i >/dev/null
        return
    fi
    local b=${bin[$tool]} n=${name[$tool]} s=${state[$tool]}
    t0=$(now_ns)
    "$b" snapshot "$n" --as t$i --size ${store_mb}M --state-dir "$s" >/dev/null
    t1=$(now_ns)
    echo $(((t1 - t0) / 1000)) >>"$results/$tool.wall"
    "$b" snapshots -o freeze --reportformat json --state-dir "$s" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["report"][0]["snapshot"][0]["freeze"])' >>"$results/$tool.self"
    "$b" drop "$n-t$i" --state-dir "$s"
    strace -f -ttt -e trace=ioctl -o "$work/$tool.trace" "$b" snapshot "$n" --as s$i --size ${store_mb}M --state-dir "$s" >/dev/null
    freeze_us "$work/$tool.trace" >>"$results/$tool.freeze"
    "$b" drop "$n-s$i" --state-dir "$s"
}

for ((i = 0; i < takes; i++)); do
    # Each tool goes first in turn, so that none always follows another's clean-up (udev
    # still probing a removed device, the page cache of a dropped store).
    for ((k = 0; k < ${#tools[@]}; k++)); do
        take "${tools[(i + k) % ${#tools[@]}]}" $i
    done
done

# The takes for the phase breakdown, every syscall traced, after the timed ones.
for ((i = 0; i < trace_takes; i++)); do
    for tool in "${tools[@]}"; do
        [[ $tool != lvm ]] || continue
        strace -f -ttt -T -y -o "$results/$tool.full.$i" \
            "${bin[$tool]}" snapshot "${name[$tool]}" --as f$i --size ${store_mb}M --state-dir "${state[$tool]}" >/dev/null
        "${bin[$tool]}" drop "${name[$tool]}-f$i" --state-dir "${state[$tool]}"
    done
done
[[ -z ${SNAPSTACK_BENCH_TRACES:-} ]] || cp "$results"/* "$SNAPSTACK_BENCH_TRACES/"

python3 - "$takes" "$results" "$baseline_label" "$size_mb" "$store_mb" <<'PY'
import os, re, statistics, sys
from collections import defaultdict

takes, results, baseline, size_mb, store_mb = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

def values(tool, kind):
    path = os.path.join(results, f"{tool}.{kind}")
    return [int(x) for x in open(path).read().split()] if os.path.exists(path) else []

def cell(vals):
    if not vals:
        return "-"
    return f"{statistics.median(vals)/1000:9.1f} ms ({min(vals)/1000:.1f}-{max(vals)/1000:.1f})"

def med(tool, kind):
    return max(statistics.median(values(tool, kind)), 1)

rows = [("snapstack snapshot", "ss")]
if baseline:
    rows = [("snapstack (current)", "ss"), (f"snapstack ({baseline})", "base")]
rows.append(("lvcreate -s", "lvm"))
print(f"snapshot take, {takes} takes each, median (min-max), origin {size_mb} MiB, store {store_mb} MiB")
print(f"{'':24}{'time to take':>30}{'freeze window (strace)':>34}{'freeze (self-reported)':>30}")
for label, tool in rows:
    print(f"{label:24}{cell(values(tool, 'wall')):>30}{cell(values(tool, 'freeze')):>34}{cell(values(tool, 'self')):>30}")
if baseline:
    for other, label in (("base", f"baseline {baseline}"), ("lvm", "lvcreate -s")):
        print(f"ratio current / {label}: time to take {med('ss', 'wall')/med(other, 'wall'):.2f}x, "
              f"freeze window (strace) {med('ss', 'freeze')/med(other, 'freeze'):.2f}x")
else:
    print(f"ratio lvcreate -s / snapstack: time to take {med('lvm', 'wall')/med('ss', 'wall'):.1f}x, "
          f"freeze window {med('lvm', 'freeze')/med('ss', 'freeze'):.1f}x")

# ---- phase breakdown of traced takes ------------------------------------------------------
# strace -f -ttt -T -y lines: an optional pid ("123 " with -o, "[pid 123] " on a terminal),
# seconds.micros, then one of
#   name(args) = ret <dur>                 a whole call
#   name(args <unfinished ...>             its start, another thread printed in between
#   <... name resumed>args) = ret <dur>    its end (dur counts from the start)
#   +++ exited with N +++, --- SIGNAL ---  no call
LINE = re.compile(r'^\s*(?:\[pid\s+(\d+)\]\s*|(\d+)\s+)?(\d+\.\d+)\s+(.*)$')
CALL = re.compile(r'^([a-z_0-9?]+)\((.*)$')
RESUMED = re.compile(r'^<\.\.\. ([a-z_0-9?]+) resumed>(.*)$')
DURATION = re.compile(r'<(\d+\.\d+)>\s*$')
DB = re.compile(r'snapstack\.db(?:-wal|-shm|-journal)?\b')

def parse(path):
    calls, pending, exits, first_pid = [], {}, {}, None
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        pid = int(m.group(1) or m.group(2) or 0)
        t, rest = float(m.group(3)), m.group(4)
        if first_pid is None:
            first_pid = pid
        if rest.startswith("+++"):
            exits[pid] = t
            continue
        if rest.startswith("---"):
            continue
        r = RESUMED.match(rest)
        if r:
            call = pending.pop(pid, None)
            if call is not None:
                call["text"] += r.group(2)
                d = DURATION.search(rest)
                call["end"] = call["start"] + float(d.group(1)) if d else t
            continue
        c = CALL.match(rest)
        if not c:
            continue
        call = {"pid": pid, "name": c.group(1), "text": c.group(2), "start": t, "end": t}
        if rest.rstrip().endswith("<unfinished ...>"):
            pending[pid] = call
        else:
            d = DURATION.search(rest)
            call["end"] = t + float(d.group(1)) if d else t
        calls.append(call)
    end = exits.get(first_pid, max((c["end"] for c in calls), default=0.0))
    return calls, end, exits

PHASES = [
    ("start", "process start to main (execve to first open of the state db)"),
    ("db", "state database (snapstack.db, -wal, -shm: open, lock, read, write, sync)"),
    ("store", "COW store file (create, fallocate, fsync, zero fill)"),
    ("loop", "loop device (loop-control, LOOP_CTL_GET_FREE, LOOP_CONFIGURE, sysfs)"),
    ("dm", "dm create, table load, resume, remove (outside the freeze)"),
    ("era", "era checkpoint (DM_TARGET_MSG: waits for a metadata commit)"),
    ("dmquery", "dm queries (version, device and table status, list)"),
    ("udev", "udev waits (libdm's cookie semaphores: semget, semtimedop, semctl)"),
    ("freeze", "freeze window (first suspend to the last resume's return)"),
    ("memlock", "memory lock (mlockall, munlockall; /proc/self/maps, mountinfo, swaps)"),
    ("icu", "ICU and time zone data (Foundation's dates, after the db is open)"),
    ("threads", "waits for threads (futex)"),
    ("other", "other (sysfs, /proc, clocks, threads' start and exit)"),
]

DM_CHANGE = ("DM_DEV_CREATE", "DM_TABLE_LOAD", "DM_DEV_SUSPEND", "DM_DEV_REMOVE", "DM_TABLE_CLEAR", "DM_DEV_RENAME")

def classify(call):
    name, text = call["name"], call["text"]
    if DB.search(text):
        return "db"
    if name in ("semget", "semop", "semtimedop", "semctl"):
        return "udev"
    if name in ("mlockall", "munlockall", "mlock", "munlock") or re.search(r'/proc/(?:self|\d+)/(?:maps|mountinfo)|/proc/swaps', text):
        return "memlock"
    if name == "ioctl" and "DM_TARGET_MSG" in text:
        return "era"
    if name == "ioctl" and any(k in text for k in DM_CHANGE):
        return "dm"
    if name == "ioctl" and "DM_" in text or "/dev/mapper/control" in text:
        return "dmquery"
    if name == "fallocate" or "/stores/" in text or re.search(r'\.cow\b', text):
        return "store"
    if "LOOP_" in text or "/dev/loop" in text or re.search(r'/sys/(?:block|devices/virtual/block)/loop', text):
        return "loop"
    if re.search(r'/usr/share/(?:icu|zoneinfo)|/etc/localtime', text):
        return "icu"
    if name == "futex":
        return "threads"
    return "other"

def syscall_key(call):
    # What a syscall was about, for naming what fills a phase: its name and the file it
    # touched (-y shows a descriptor's path), without the variable parts.
    m = re.search(r'"(/[^"]*)"', call["text"]) or re.search(r'<(/[^<>]*)>', call["text"])
    target = m.group(1) if m else ""
    target = re.sub(r'\d+', 'N', target)[-48:]
    return f"{call['name']} {target}".strip()

# strace stops the process twice for every syscall, which on emulated CPUs costs
# milliseconds: a traced take runs several times as long as an untraced one, and phases with
# many syscalls (the loader's, SQLite's locks) swell most. Each trace measures that cost
# itself: the dynamic loader's failed library lookups (openat ... ENOENT) follow one another
# with next to nothing in between, so their spacing is strace's cost of one syscall. Each
# phase is printed as traced and with that cost taken off for every syscall it holds (not
# below zero); their sum is printed beside the untraced median take of the same binary.
def strace_cost(calls):
    main = [c for c in calls if c["pid"] == calls[0]["pid"]]
    gaps = [b["start"] - a["start"] for a, b in zip(main, main[1:])
            if a["name"] == "openat" and "ENOENT" in a["text"]]
    return statistics.median(gaps) if gaps else 0.0

# Calls that wait for something else to happen (another thread, a timeout) rather than work.
IDLE = {"futex", "poll", "ppoll", "epoll_wait", "epoll_pwait", "select", "pselect6", "nanosleep",
        "clock_nanosleep", "wait4", "rt_sigtimedwait", "rt_sigsuspend", "pause"}

def breakdown(path):
    calls, end, exits = parse(path)
    if not calls:
        return None
    calls.sort(key=lambda c: c["start"])
    begin = calls[0]["start"]
    db_open = next((c["start"] for c in calls if c["name"] in ("open", "openat", "openat2") and DB.search(c["text"])), begin)
    suspends = [c for c in calls if c["name"] == "ioctl" and "DM_DEV_SUSPEND" in c["text"]]
    first_suspend = next((c for c in suspends if "DM_SUSPEND_FLAG" in c["text"].split("=>")[0]), None)
    freeze = None
    if first_suspend is not None:
        resumes = [c for c in suspends if c["start"] > first_suspend["start"] and "DM_SUSPEND_FLAG" not in c["text"].split("=>")[0]]
        if resumes:
            freeze = (first_suspend["start"], max(c["end"] for c in resumes))
    phase, count = defaultdict(float), defaultdict(int)
    by_key = defaultdict(lambda: defaultdict(float))
    # Cut the timeline at every syscall's start and end, every thread's exit and the spans' edges. A piece in a
    # span goes to the span. Otherwise each live thread is in its latest syscall or in the
    # user-space code after it; the piece goes to the thread that started its latest syscall
    # last, among those not waiting (futex, poll, sleep: a thread that waits for another lets
    # that one's work count), or to the latest waiting one when all wait. With one thread, the
    # gap from each syscall's start to the next one's goes to that syscall.
    cuts = sorted({c["start"] for c in calls} | {c["end"] for c in calls} | set(exits.values())
                  | {db_open, end} | (set(freeze) if freeze else set()))
    cuts = [t for t in cuts if begin <= t <= end]
    latest, idx = {}, 0
    for a, b in zip(cuts, cuts[1:]):
        started = 0
        while idx < len(calls) and calls[idx]["start"] <= a:
            latest[calls[idx]["pid"]] = calls[idx]
            idx += 1
            started += 1
        live = [c for pid, c in latest.items() if a < exits.get(pid, float("inf"))] or list(latest.values())
        working = [c for c in live if not (c["name"] in IDLE and c["end"] > a)]
        current = max(working or live, key=lambda c: c["start"])
        if a < db_open:
            p = "start"
        elif freeze and freeze[0] <= a < freeze[1]:
            p = "freeze"
        else:
            p = classify(current)
        phase[p] += b - a
        count[p] += started
        by_key[p][syscall_key(current)] += b - a
    cost = strace_cost(calls)
    fixed = {p: max(v - count[p] * cost, 0.0) for p, v in phase.items()}
    return {"total": end - begin, "phase": phase, "count": count, "fixed": fixed, "cost": cost,
            "by_key": by_key, "calls": len(calls), "threads": len({c["pid"] for c in calls})}

def breakdowns(tool):
    out = []
    for i in range(100):
        path = os.path.join(results, f"{tool}.full.{i}")
        if not os.path.exists(path):
            break
        b = breakdown(path)
        if b:
            out.append(b)
    return out

columns = [("current", "ss", breakdowns("ss"))]
if baseline:
    columns.append((baseline, "base", breakdowns("base")))
columns = [c for c in columns if c[2]]
if not columns:
    print("phase breakdown: no traced take could be read")
    sys.exit(0)

def ms(v):
    return f"{v*1000:.0f}"

def row(title, cells):
    print(f"{title:72}" + "".join(f"{c:>9}" for cell in cells for c in cell) if cells else title)

print()
print(f"where a take's time goes, from {len(columns[0][2])} takes of each binary traced with "
      f"strace -f -ttt -T -y (medians; ms)")
row("", [(label[:18], "", "", "") for label, _, _ in columns])
row("phase", [("-strace", "share", "traced", "calls") for _ in columns])
for key, title in PHASES:
    cells = []
    for label, tool, bs in columns:
        raw = statistics.median(b["phase"].get(key, 0.0) for b in bs)
        fixed = statistics.median(b["fixed"].get(key, 0.0) for b in bs)
        share = fixed / statistics.median(sum(b["fixed"].values()) for b in bs)
        n = statistics.median(b["count"].get(key, 0) for b in bs)
        cells.append((ms(fixed), f"{100*share:.0f}%", ms(raw), f"{n:.0f}"))
    row(title, cells)
row("sum: execve to exit", [(ms(statistics.median(sum(b["fixed"].values()) for b in bs)), "",
                             ms(statistics.median(b["total"] for b in bs)), f"{statistics.median(b['calls'] for b in bs):.0f}")
                            for _, _, bs in columns])
row("traced takes, min-max", [("", "", ms(min(b["total"] for b in bs)), ms(max(b["total"] for b in bs))) for _, _, bs in columns])
row("untraced take (median of the timed takes above)", [(ms(statistics.median(values(tool, "wall")) / 1e6), "", "", "")
                                                         for _, tool, _ in columns])
row("strace's cost a syscall (spacing of the loader's failed lookups)",
    [(f"{statistics.median(b['cost'] for b in bs)*1000:.1f}", "", "", "") for _, _, bs in columns])
# The largest syscalls (with the time after them up to the next) in the phases that hold
# several kinds of work, as traced, for the current binary: what "start" and "other" are.
for key in ("start", "other", "db", "udev"):
    agg = defaultdict(float)
    for b in columns[0][2]:
        for k, v in b["by_key"][key].items():
            agg[k] += v / len(columns[0][2])
    top = sorted(agg.items(), key=lambda kv: -kv[1])[:5]
    if top:
        print(f"  largest in '{key}' (a syscall and the time to the next, traced, current): "
              + "; ".join(f"{k} {ms(v)}" for k, v in top))
PY
