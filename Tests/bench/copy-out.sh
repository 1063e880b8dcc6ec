#!/usr/bin/env bash
# Benchmark (not a test): the copy-out path against dd and cp, on this machine (no VM), as root.
#
#   bash Tests/bench/copy-out.sh [--reps N] [--size-gib G] [--dir DIR] [-- COPYBENCH-OPTIONS...]
#
# A G GiB (default 4) loop device with direct I/O (`losetup --direct-io=on`) over a file on a
# real disk file system (not tmpfs), laid out as: the first half random data, the next quarter
# written zeros, the last quarter never written (a hole). In one run, N times (default 3)
# interleaved, with the page cache dropped before every timed command and every image on the
# same file system as the device's backing file:
#   - full export: CopyBench (the engine + a sparse image + a sums file of every block's
#     XXH3-128, i.e. an export's work) vs `dd iflag=direct bs=4M` vs `cp --sparse=always`;
#   - the dense half alone: CopyBench vs dd over the same 2 GiB of random data (and, as the
#     strongest dd, with oflag=direct too);
#   - an incremental: 1% of the blocks (random, a tenth of them now zero) changed on the device,
#     copied by CopyBench into the previous image with hole punching, vs the full export;
#   - peak memory (max RSS, /usr/bin/time) of the full export of a 1 GiB and a G GiB device.
# Every command that writes an image is timed up to the image being on disk (CopyBench fsyncs;
# dd runs with conv=fsync; cp is followed by `sync IMG`). Prints medians, ranges and ratios;
# only ratios measured in one run mean anything (the machine is shared).
#
# Disk use is bounded: the backing files (G GiB + 1 GiB, about 3/4 of it allocated) plus at most
# three images at a time; everything is removed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

reps=3
size_gib=4
base_dir=/var/tmp
bench_args=()
while (($#)); do
    case $1 in
        --reps) reps=$2; shift 2 ;;
        --size-gib) size_gib=$2; shift 2 ;;
        --dir) base_dir=$2; shift 2 ;;
        --) shift; bench_args=("$@"); break ;;
        -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "copy-out.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
[[ $reps =~ ^[1-9][0-9]*$ && $size_gib =~ ^[1-9][0-9]*$ && $size_gib -ge 2 ]] ||
    { echo "copy-out.sh: --reps needs N >= 1 and --size-gib G >= 2" >&2; exit 64; }
[[ $(id -u) == 0 ]] || { echo "copy-out.sh: run as root (loop devices, drop_caches)" >&2; exit 1; }
fs_type=$(stat -f -c %T "$base_dir")
[[ $fs_type != tmpfs ]] || { echo "copy-out.sh: $base_dir is tmpfs; the device needs a disk file system for direct I/O (--dir)" >&2; exit 1; }
need_kib=$(((size_gib * 3 + 4) * 1024 * 1024))
free_kib=$(df -k --output=avail "$base_dir" | tail -n 1)
((free_kib > need_kib)) || { echo "copy-out.sh: $base_dir has $((free_kib >> 20)) GiB free; $((need_kib >> 20)) GiB needed" >&2; exit 1; }

if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
[[ -x /usr/bin/time ]] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null
echo "building CopyBench (release)..." >&2
if ! swift build -c release --scratch-path .build-bench --product CopyBench > "${TMPDIR:-/tmp}/copy-out-build.log" 2>&1; then
    tail -n 30 "${TMPDIR:-/tmp}/copy-out-build.log" >&2
    echo "copy-out.sh: building CopyBench failed (log: ${TMPDIR:-/tmp}/copy-out-build.log)" >&2
    exit 1
fi
bench=$PWD/.build-bench/release/CopyBench

work=$(mktemp -d "$base_dir/snapstack-copy-bench.XXXXXX")
loops=()
cleanup() {
    for loop in "${loops[@]}"; do losetup -d "$loop" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

block=$((64 << 10))
mib=$((1 << 20))

# A device of $2 GiB over backing file $1: random data, written zeros, a hole. Sets $device
# (not printed: a command substitution's subshell would lose the loop device from $loops, and
# cleanup would leave it bound).
make_device() {
    local file=$1 gib=$2 total=$(($2 * 1024))
    truncate -s "${gib}G" "$file"
    dd if=/dev/urandom of="$file" bs=4M count=$((total / 2 / 4)) conv=notrunc status=none
    dd if=/dev/zero of="$file" bs=4M seek=$((total / 2 / 4)) count=$((total / 4 / 4)) conv=notrunc status=none
    sync "$file"
    local loop
    loop=$(losetup --direct-io=on -f --show "$file")
    loops+=("$loop")
    [[ $(cat "/sys/block/${loop#/dev/}/loop/dio") == 1 ]] ||
        { echo "copy-out.sh: $loop did not get direct I/O" >&2; exit 1; }
    device=$loop
}

echo "laying out a ${size_gib} GiB and a 1 GiB device in $work ($fs_type)..." >&2
make_device "$work/dev.img" "$size_gib"; dev=$device
make_device "$work/small.img" 1; small=$device
dev_bytes=$(blockdev --getsize64 "$dev")
blocks=$((dev_bytes / block))
dense_blocks=$((blocks / 2))
seq 0 $((dense_blocks - 1)) > "$work/dense.list"

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now_ns() { date +%s%N; }

# The base image for the incremental: an export of the device before the change.
"$bench" export --source "$dev" --image "$work/base.img" "${bench_args[@]}" >/dev/null

# Change 1% of the blocks, a tenth of those to zeros, and list them.
python3 - "$dev" "$blocks" "$block" "$work/changed.list" <<'PY'
import os, random, sys
dev, blocks, size, listing = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(20240601)
changed = sorted(rng.sample(range(blocks), blocks // 100))
fd = os.open(dev, os.O_WRONLY)
for n, index in enumerate(changed):
    os.pwrite(fd, bytes(size) if n % 10 == 0 else rng.randbytes(size), index * size)
os.fsync(fd)
os.close(fd)
open(listing, "w").write("".join(f"{i}\n" for i in changed))
PY
changed=$(wc -l < "$work/changed.list")

declare -A times rss
record() { times[$1]+="$2 "; }
# The engine's own time (copy + finish, without process start) from CopyBench's JSON line.
record_engine() {
    times[$1]+="$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(int(1000 * (s["seconds"] + s["finishSeconds"])))' "$work/stdout") "
}

# Runs a command with caches dropped first; prints "MILLISECONDS MAXRSS_KIB". The programs
# themselves are loaded again right after the drop (dd, cp and sync live in the page cache on
# any running system; CopyBench, with the Swift runtime, would otherwise pay ~0.1 s of disk
# reads at exec that have nothing to do with copying).
timed() {
    drop_caches
    "$bench" >/dev/null 2>&1 || true
    dd --version >/dev/null; cp --version >/dev/null; sync --version >/dev/null
    local t0 t1 out
    t0=$(now_ns)
    out=$(/usr/bin/time -f '%M' "$@" 2>&1 >"$work/stdout") || { echo "copy-out.sh: failed: $* ($out)" >&2; exit 1; }
    t1=$(now_ns)
    echo "$(((t1 - t0) / 1000000)) ${out##*$'\n'}"
}

for ((rep = 1; rep <= reps; rep++)); do
    echo "rep $rep/$reps..." >&2
    read -r ms kib < <(timed "$bench" export --source "$dev" --image "$work/export.img" --sums "$work/export.sums" "${bench_args[@]}")
    record export "$ms"; rss[big]+="$kib "; record_engine export_engine
    read -r ms _ < <(timed dd if="$dev" of="$work/dd.img" iflag=direct bs=4M conv=fsync status=none)
    record dd "$ms"; rm -f "$work/dd.img"
    read -r ms _ < <(timed sh -c 'cp --sparse=always "$1" "$2" && sync "$2"' cp "$dev" "$work/cp.img")
    record cp "$ms"
    cmp -s "$work/cp.img" "$work/export.img" || { echo "copy-out.sh: the export differs from cp's copy" >&2; exit 1; }
    rm -f "$work/cp.img"

    read -r ms _ < <(timed "$bench" export --source "$dev" --image "$work/dense.img" --blocks "$work/dense.list" "${bench_args[@]}")
    record dense_export "$ms"; rm -f "$work/dense.img"
    read -r ms _ < <(timed dd if="$dev" of="$work/dense.img" iflag=direct bs=4M count=$((dense_blocks * block / (4 * mib))) conv=fsync status=none)
    record dense_dd "$ms"; rm -f "$work/dense.img"
    read -r ms _ < <(timed dd if="$dev" of="$work/dense.img" iflag=direct oflag=direct bs=4M count=$((dense_blocks * block / (4 * mib))) conv=fsync status=none)
    record dense_dd_direct "$ms"; rm -f "$work/dense.img"

    cp --sparse=always "$work/base.img" "$work/inc.img"
    read -r ms _ < <(timed "$bench" export --source "$dev" --image "$work/inc.img" --punch-holes --blocks "$work/changed.list" --sums "$work/inc.sums" "${bench_args[@]}")
    record incremental "$ms"; record_engine incremental_engine
    cmp -s "$work/inc.img" "$work/export.img" || { echo "copy-out.sh: the incremental image differs from the full export" >&2; exit 1; }
    rm -f "$work/inc.img" "$work/export.img"

    read -r ms kib < <(timed "$bench" export --source "$small" --image "$work/small-export.img" "${bench_args[@]}")
    record small_export "$ms"; rss[small]+="$kib "
    rm -f "$work/small-export.img"
done

python3 - "$size_gib" "$reps" "$changed" "$blocks" \
    "${times[export]}" "${times[dd]}" "${times[cp]}" "${times[dense_export]}" "${times[dense_dd]}" \
    "${times[incremental]}" "${times[small_export]}" "${rss[big]}" "${rss[small]}" \
    "${times[dense_dd_direct]}" "${times[export_engine]}" "${times[incremental_engine]}" <<'PY'
import statistics, sys
gib, reps, changed, blocks = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
series = [[int(x) for x in s.split()] for s in sys.argv[5:]]
export, dd, cp, dense_export, dense_dd, inc, small, rss_big, rss_small, dense_dd_direct, export_engine, inc_engine = series
med = statistics.median
def row(name, ms, size_mib=None):
    rate = f"{size_mib / (med(ms) / 1000):8.0f} MiB/s" if size_mib else ""
    print(f"  {name:<44} {med(ms) / 1000:7.2f} s  ({min(ms) / 1000:.2f}-{max(ms) / 1000:.2f})  {rate}")
print(f"copy-out: {gib} GiB loop device (direct I/O): 1/2 random, 1/4 written zeros, 1/4 hole; "
      f"{reps} interleaved reps, page cache dropped before each command; medians (min-max)")
row(f"export {gib} GiB (CopyBench: image + sums)", export, gib * 1024)
row(f"dd iflag=direct bs=4M conv=fsync", dd, gib * 1024)
row(f"cp --sparse=always + sync", cp, gib * 1024)
row(f"dense half: export", dense_export, gib * 512)
row(f"dense half: dd iflag=direct bs=4M", dense_dd, gib * 512)
row(f"dense half: dd iflag=direct oflag=direct bs=4M", dense_dd_direct, gib * 512)
row(f"incremental: {changed} of {blocks} blocks (1%)", inc)
row(f"  full export, engine time only", export_engine)
row(f"  incremental, engine time only", inc_engine)
row(f"export 1 GiB", small, 1024)
print(f"  {'peak RSS of the export, 1 GiB / ' + str(gib) + ' GiB':<44} {med(rss_small) / 1024:7.1f} MiB / {med(rss_big) / 1024:.1f} MiB")
print("ratios (goal):")
print(f"  export throughput / dd, dense half       {med(dense_dd) / med(dense_export):5.2f}x  (>= 0.95)")
print(f"  export throughput / dd, whole device     {med(dd) / med(export):5.2f}x")
print(f"  export throughput / cp, whole device     {med(cp) / med(export):5.2f}x  (>= 1)")
print(f"  incremental 1% / full export time        {100 * med(inc) / med(export):5.1f}%  (<= 5%)")
print(f"    the same, engine time only             {100 * med(inc_engine) / med(export_engine):5.1f}%  (without process start)")
print(f"  export throughput / dd oflag=direct, dense half {med(dense_dd_direct) / med(dense_export):5.2f}x")
print(f"  peak RSS {gib} GiB / 1 GiB                  {med(rss_big) / med(rss_small):5.2f}x  (independent of size: ~1)")
PY
