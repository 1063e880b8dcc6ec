#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what snapstack needs, build it, and show
# a backup cycle on a loop device holding an ext4 filesystem — protect, write, snapshot, full
# export, write more, snapshot, incremental export, verify — where device-mapper is: on this
# host if its kernel has it, else in the VM lab (Tests/lab/vm.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ ${1:-} != --inside ]]; then
    # The Swift toolchain lives outside the system dirs; a non-login shell may lack it on PATH.
    if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
        export PATH="/opt/swift/usr/bin:$PATH"
    fi
    bash Tests/lab/setup.sh
    # The binary that ships: optimised, the Swift runtime linked in (the same build test-all.sh
    # gives the VM suite, so that the tests that follow reuse it).
    swift build -c release --product snapstack --static-swift-stdlib 2>&1 | tail -n 1
    if dmsetup version >/dev/null 2>&1; then
        exec bash Tests/lab/demo.sh --inside
    fi
    echo "== this host's kernel has no device-mapper: running the demonstration in the VM lab"
    exec bash Tests/lab/vm.sh --timeout 600 -- bash Tests/lab/demo.sh --inside
fi

snapstack=$PWD/.build/release/snapstack
# One stream for everything the demonstration says, so that it reads in order (the VM lab hands
# stdout and stderr back through separate pipes). Inside $(...) stderr still goes here.
exec 2>&1
work=$(mktemp -d /tmp/snapstack-demo.XXXXXX)
export SNAPSTACK_STATE_DIR=$work/state
disk=
step() { printf '\n== %s\n' "$*"; }
# The command line goes to stderr, so that `x=$(show cmd ...)` captures only what cmd prints.
show() { printf '$ %s\n' "$*" >&2; "$@"; }
cleanup() {
    set +e
    umount "$work/mnt" 2>/dev/null
    for snap in $("$snapstack" snapshots --noheadings -o name 2>/dev/null); do "$snapstack" drop "$snap" >/dev/null; done
    "$snapstack" unprotect demo >/dev/null 2>&1
    [[ -n $disk ]] && losetup -d "$disk"
    rm -rf "$work"
}
trap cleanup EXIT

modprobe -a loop dm-mod dm-snapshot dm-era 2>/dev/null || true
step "a 256 MiB disk (a loop device) with an ext4 filesystem on it"
truncate -s 256M "$work/disk.img"
disk=$(losetup --find --show "$work/disk.img")
echo "disk: $disk"

step "protect it: snapstack stacks change tracking and a snapshot-ready layer above it"
top=$(show "$snapstack" protect "$disk" --name demo)
echo "$top"
show mkfs.ext4 -q "$top"
mkdir -p "$work/mnt" "$work/backup"
show mount "$top" "$work/mnt"
show "$snapstack" devices

step "write 64 MiB of files, then take a snapshot while the filesystem stays mounted"
dd if=/dev/urandom of="$work/mnt/photos" bs=1M count=64 status=none conv=fsync
snap1=$(show "$snapstack" snapshot demo --as monday)
echo "$snap1"
show "$snapstack" snapshots

step "full export of the snapshot to a sparse image, with a manifest and per-block checksums"
full=$(show "$snapstack" export demo-monday --to "$work/backup/demo.img" | tail -n 1)
echo "export id: $full"
show ls -ls "$work/backup"
show "$snapstack" drop demo-monday

step "change 3 MiB of the 64 MiB file and add a small file, then snapshot again"
dd if=/dev/urandom of="$work/mnt/photos" bs=1M count=3 seek=20 conv=notrunc,fsync status=none
echo "notes" > "$work/mnt/notes.txt"; sync
snap2=$(show "$snapstack" snapshot demo --as tuesday)
echo "$snap2"
show "$snapstack" changes demo --since "$full" -o offset,length,blocks

step "incremental export: only the blocks that changed since export $full are read"
incr=$(show "$snapstack" export demo-tuesday --to "$work/backup/demo.img" --since "$full" | tail -n 1)
echo "export id: $incr"
show "$snapstack" exports -o name,snapshot,kind,base,read,written

step "verify the image against its checksums, and against the snapshot device itself"
show "$snapstack" verify "$work/backup/demo.img"
image_sum=$(sha256sum < "$work/backup/demo.img" | cut -c1-64)
snap_sum=$(dd if="$snap2" bs=1M iflag=direct status=none | sha256sum | cut -c1-64)
echo "sha256 image:    $image_sum"
echo "sha256 snapshot: $snap_sum"
[[ $image_sum == "$snap_sum" ]] || { echo "the image differs from the snapshot" >&2; exit 1; }
show "$snapstack" drop demo-tuesday
step "done: the image holds Tuesday's disk, made from one full and one incremental export"
