# Sourced by every boot lab scenario (Tests/lab/boot/*.sh), which a oneshot unit runs at the end
# of each boot with its output on the serial console; Tests/lab/bootlab.sh reads the lines that
# start with "bootlab:" there. A scenario says `reboot_now` to be booted again, `done_now` when
# it has checked everything; a FAIL line fails it whatever follows.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
set -o pipefail
export PATH
boot=$(($(cat /root/bootlab/boots 2>/dev/null || echo 0) + 1))
echo "$boot" >/root/bootlab/boots
sync

say() { echo "bootlab: $*"; }

# check DESCRIPTION COMMAND...: one line, ok or FAIL, with what the command printed on failure.
check() {
    local description=$1 output
    shift
    if output=$("$@" 2>&1); then
        say "ok   $description"
    else
        say "FAIL $description"
        [ -z "$output" ] || printf '%s\n' "$output" | sed 's/^/bootlab:      /'
    fi
}

# run COMMAND...: a step the checks need; its failure fails the scenario and ends the boot,
# with what snapstack's unit logged last. At most 240 s.
run() { run_for 240 "$@"; }

# run_for SECONDS COMMAND...: run, with another time limit.
run_for() {
    local output limit=$1
    shift
    if ! output=$(timeout "$limit" "$@" 2>&1); then
        say "FAIL $*"
        printf '%s\n' "$output" | sed 's/^/bootlab:      /'
        journalctl -b -u snapstack.service --no-pager -o short-monotonic | tail -n 40 | sed 's/^/bootlab:      journal: /'
        done_now
    fi
    [ -z "$output" ] || printf '%s\n' "$output"
}

reboot_now() { say "reboot"; sync; systemctl reboot; exit 0; }
done_now() { say "done"; sync; systemctl poweroff; exit 0; }

# What the backup scenarios share. They set `image` (where exports go) and may set
# `snapshot_options` (e.g. "--store labvg --size 300M").
image=/root/backup.img
snapshot_options=

# backup_volume: the volume group labvg on the second disk, with a 2 GB volume for the images
# mounted at /backup from fstab (the root scenarios' image, and their snapshots' stores).
backup_volume() {
    run pvcreate -q /dev/vdb
    run vgcreate -q labvg /dev/vdb
    run lvcreate -q -y -L 2G -n backup labvg
    run mkfs.ext4 -q /dev/labvg/backup
    mkdir -p /backup
    echo "/dev/labvg/backup /backup ext4 defaults 0 2" >>/etc/fstab
    systemctl daemon-reload
    run mount /backup
}

# same FILE DEVICE: the same content, by sha256.
same() { test "$(sha256sum <"$1" | cut -c1-64)" = "$(sha256sum <"$2" | cut -c1-64)"; }

# snap NAME TAG: a snapshot of NAME called TAG; prints its device.
snap() {
    local device
    device=$(snapstack snapshot "$1" --as "$2" $snapshot_options 2>&1 | tail -n 1) || { say "FAIL snapshot $1 as $2: $device"; done_now; }
    echo "$device"
}

# backup NAME TAG [BASE]: a snapshot, exported to $image (an incremental since export BASE when
# given), checked equal to the snapshot and recorded as the kind it is, then dropped; the
# export's id goes to /root/last-export.
backup() {
    local name=$1 tag=$2 base=${3:-} device id kind=full
    device=$(snap "$name" "$tag")
    if ! id=$(snapstack export "$name-$tag" --to "$image" --no-progress ${base:+--since "$base"} 2>/root/export.err | tail -n 1); then
        say "FAIL export of $name-$tag ${base:+since $base}: $(cat /root/export.err)"
        done_now
    fi
    [ -z "$base" ] || kind=incremental
    check "export $tag of $name ($kind${base:+ since $base}) equals its snapshot (sha256)" same "$image" "$device"
    check "export $tag of $name is recorded as $kind" sh -c "snapstack exports -o name,kind --noheadings | grep -q '^ *$id  *$kind'"
    run snapstack drop "$name-$tag"
    echo "$id" >/root/last-export
}

# refused_then_full NAME TAG: after an interruption, the incremental since the last export is
# refused (exit 10, naming it), and with --allow-full it reads every block, equal to its snapshot.
refused_then_full() {
    local name=$1 tag=$2 device id
    device=$(snap "$name" "$tag")
    check "the incremental of $name-$tag across the interruption is refused (exit 10), naming it" sh -c "
        snapstack export $name-$tag --to $image --no-progress --since $(cat /root/last-export) 2>/root/refusal; status=\$?
        cat /root/refusal; [ \$status = 10 ] && grep -q interrupted /root/refusal"
    if ! id=$(snapstack export "$name-$tag" --to "$image" --no-progress --since "$(cat /root/last-export)" --allow-full 2>/root/export.err | tail -n 1); then
        say "FAIL export of $name-$tag with --allow-full: $(cat /root/export.err)"
        done_now
    fi
    echo "$id" >/root/last-export
    check "with --allow-full, export $tag of $name equals its snapshot (sha256)" same "$image" "$device"
    run snapstack drop "$name-$tag"
}

# crash_now DIR: a writer in DIR, then a reboot with nothing stopped, synced or unmounted.
crash_now() {
    (i=0; while :; do dd if=/dev/urandom of="$1/writer.$((i % 8))" bs=64k count=16 conv=fsync status=none; i=$((i + 1)); done) &
    sleep 3
    # Straight to the console: the journal's copy of this line would die with the machine.
    say reboot >/dev/console
    echo b >/proc/sysrq-trigger
    sleep 60
    say "FAIL SysRq b did not reboot the machine within 60 s"
    done_now
}
