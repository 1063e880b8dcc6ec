#!/usr/bin/env bash
# The real-boot lab: a Debian 12 disk image made with mmdebstrap from this machine's own apt
# sources, booted by qemu (TCG) from the image's own kernel and initramfs with systemd as PID 1,
# with snapstack installed as a package would install it (systemd/install.sh). A scenario is a
# guest script run at the end of every boot by a oneshot unit; it reboots (qemu exits, the lab
# boots the image again) until it says it is done.
set -euo pipefail

# bash reads a script as it runs it: a run of an hour must not take in an edit made meanwhile.
# The lab runs from a copy of itself (the scenarios are copied into each image when it starts).
if [[ ${BOOTLAB_REPOSITORY:-} == "" ]]; then
    copy=$(mktemp /tmp/snapstack-bootlab.XXXXXX.sh)
    cp "${BASH_SOURCE[0]}" "$copy"
    BOOTLAB_REPOSITORY=$(realpath "$(dirname "${BASH_SOURCE[0]}")/../..") exec bash "$copy" "$@"
fi
rm -f "${BASH_SOURCE[0]}"

usage() {
    cat <<'EOF'
Usage: Tests/lab/bootlab.sh [--binary FILE] [--boot-timeout S] [--jobs N] [SCENARIO...]
       Tests/lab/bootlab.sh --image-only

Boots a Debian 12 image with systemd as PID 1 and runs each SCENARIO (a script in
Tests/lab/boot/, without its .sh, or the path of a script elsewhere, as the benchmarks' in
Tests/bench/boot/; default: all of Tests/lab/boot/) inside it, over as many boots as
it asks for, up to N scenarios at once. Prints each scenario's checks when it ends, in the
order named, and ends with "N passed, M failed"; exits non-zero unless every scenario passed.

The image (mmdebstrap minbase + systemd, udev, lvm2, dmsetup, udisks2, linux-image-amd64,
initramfs-tools, the libraries snapstack links) is made once and kept under
.build/bootlab/, named by a hash of its recipe: a later run, or a later CI step of the same
job, reuses it (about 100 s to make, 700 MB). A scenario that says "# bootlab: image dracut"
boots a second image, whose initramfs dracut makes instead. --image-only makes the images the
scenarios named (default: all) boot, and stops.

What else a scenario may ask for, by a comment line of its own:
  # bootlab: about N s        how long it takes alone (the longest start first)
  # bootlab: data-disk SIZE   the second disk's size (default 1G)
  # bootlab: data-bus scsi    the second disk on a virtio-scsi controller, which the guest can
                              unplug and plug again (sysfs delete, host rescan); default virtio-blk

--binary FILE      the snapstack to install (default: .build/release/snapstack, the
                   release build with the Swift runtime linked in: the image has no Swift)
--boot-timeout S   the longest one boot may take, from qemu's start to its exit (default 900:
                   a boot that remakes the initramfs and hashes a 2 GB root takes 5 minutes)
--jobs N           scenarios run side by side, each in its own qemu (default: the number
                   of CPUs, at most 3; a TCG guest keeps about one CPU busy)
Needs root (loop devices, mkfs from a tree) and qemu-system-x86_64, mmdebstrap, sfdisk.
EOF
}

cd "$BOOTLAB_REPOSITORY"
binary=$PWD/.build/release/snapstack
boot_timeout=900
image_only=0
jobs=$(nproc)
((jobs <= 3)) || jobs=3
scenarios=()
while (($#)); do
    case "$1" in
        --binary) binary=$(realpath "${2:?--binary needs a file}"); shift 2 ;;
        --boot-timeout) boot_timeout=${2:?--boot-timeout needs seconds}; shift 2 ;;
        --image-only) image_only=1; shift ;;
        --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; echo "bootlab: unknown option $1" >&2; exit 64 ;;
        *) scenarios+=("$1"); shift ;;
    esac
done
[[ $boot_timeout =~ ^[1-9][0-9]*$ ]] || { echo "bootlab: --boot-timeout takes whole seconds, not '$boot_timeout'" >&2; exit 64; }
[[ $jobs =~ ^[1-9][0-9]?$ ]] || { echo "bootlab: --jobs takes a number from 1 to 99, not '$jobs'" >&2; exit 64; }
((EUID == 0)) || { echo "bootlab: needs root (loop devices, an image made from a tree)" >&2; exit 77; }

lab=$PWD/.build/bootlab
mkdir -p "$lab"

# The images' recipes. Anything that changes what an image holds must change its text, which
# names the cached image. "initramfs-tools", the default, or "dracut": the tool that makes the
# initramfs (Debian's packages conflict: one image each).
common_packages=(systemd systemd-sysv udev dmsetup lvm2 kmod e2fsprogs mount util-linux procps man-db fdisk
    linux-image-amd64 zstd thin-provisioning-tools udisks2
    libdevmapper1.02.1 liblvm2cmd2.03 libsqlite3-0 libudev1)
image_size=1536M
recipe_of() {
    case $1 in
    # MODULES=dep: an initramfs the guest remakes (protect of /) carries the modules this
    # machine needs, not every storage driver; under TCG that is minutes less (measured
    # natively: 2 s against 17 s for MODULES=most, the Debian default).
    initramfs-tools) echo "bookworm minbase ${common_packages[*]} initramfs-tools size=$image_size gpt-root-vda1 modules-dep v2" ;;
    # hostonly: the same for dracut (only what this machine boots from), once the image runs on
    # the machine it describes: the first initramfs is made in mmdebstrap's chroot, generic.
    dracut) echo "bookworm minbase ${common_packages[*]} dracut size=$image_size gpt-root-vda1 hostonly-after-first v1" ;;
    *) echo "bootlab: no image variant '$1' (initramfs-tools, dracut)" >&2; return 1 ;;
    esac
}
base_of() { echo "$lab/base-$1-$(recipe_of "$1" | sha256sum | cut -c1-12).img"; }

# The root partition: from 1 MiB to the end of the disk.
part_offset=$((1024 * 1024))

make_image() {
    local variant=$1 recipe base key packages tool_hooks
    recipe=$(recipe_of "$variant")
    base=$(base_of "$variant")
    key=$(basename "$base" .img)
    local tree=$lab/tree-$key tmp=$lab/$key.tmp
    rm -rf "$tree" "$tmp"
    echo "bootlab: making the $variant image ($recipe)"
    local started=$SECONDS
    # Images of this variant's other recipes are stale now: 1.5 GB each (sparse, about 700 MB
    # used).
    rm -f "$lab/base-$variant-"*.img
    packages=("${common_packages[@]}" "$variant")
    case $variant in
    initramfs-tools) tool_hooks=(--customize-hook='sed -i "s/^MODULES=most/MODULES=dep/" "$1/etc/initramfs-tools/initramfs.conf"') ;;
    dracut) tool_hooks=(--customize-hook='echo "hostonly=\"yes\"" >"$1/etc/dracut.conf.d/10-bootlab.conf"') ;;
    esac
    # The host's own deb822 sources file as the mirror: the same registry the machine uses.
    local sources=/etc/apt/sources.list.d/debian.sources
    [[ -f $sources ]] || sources=/etc/apt/sources.list
    mmdebstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
        --customize-hook='echo bootlab > "$1/etc/hostname"' \
        --customize-hook='passwd --root "$1" -d root' \
        "${tool_hooks[@]}" \
        bookworm "$tree" "$sources" >"$lab/mmdebstrap-$variant.log" 2>&1 ||
        { tail -30 "$lab/mmdebstrap-$variant.log" >&2; echo "bootlab: mmdebstrap failed (log: $lab/mmdebstrap-$variant.log)" >&2; exit 1; }
    truncate -s "$image_size" "$tmp"
    echo 'label: gpt
start=2048, type=linux, name=root' | sfdisk --quiet "$tmp"
    # The filesystem's size from the partition's, not the file's: the kernel refuses an ext4
    # larger than its partition.
    local sectors
    sectors=$(sfdisk --json "$tmp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][0]["size"])')
    local fs=$lab/root-$key.ext4
    rm -f "$fs"
    truncate -s $((sectors * 512)) "$fs"
    local uuid
    uuid=$(cat /proc/sys/kernel/random/uuid)
    printf 'UUID=%s / ext4 rw,errors=remount-ro 0 1\n' "$uuid" >"$tree/etc/fstab"
    mkfs.ext4 -q -U "$uuid" -L bootlab-root -d "$tree" "$fs"
    dd if="$fs" of="$tmp" bs=1M seek=1 conv=notrunc,sparse status=none
    rm -rf "$fs" "$tree"
    mv "$tmp" "$base"
    echo "bootlab: image made in $((SECONDS - started)) s: $base ($(du -h "$base" | cut -f1) used)"
}

if ((${#scenarios[@]} == 0)); then
    # Every script there but lib.sh, which they all source; the longest first ("# bootlab:
    # about N s", what one takes alone under TCG), so that side by side they end together.
    while read -r _ file; do
        scenarios+=("$(basename "$file" .sh)")
    done < <(for file in Tests/lab/boot/*.sh; do
        [[ $file == */lib.sh ]] || echo "$(sed -n 's/^# bootlab: about \([0-9]*\) s$/\1/p' "$file" | head -n 1 | grep . || echo 0) $file"
    done | sort -k1,1nr -k2)
fi

# A scenario is named (Tests/lab/boot/NAME.sh) or given by its path (a benchmark's, kept out of
# the default set: Tests/bench/boot/*.sh); it is known by its file's name either way.
script_of() { if [[ $1 == */* ]]; then echo "$1"; else echo "Tests/lab/boot/$1.sh"; fi; }
for index in "${!scenarios[@]}"; do
    if [[ ${scenarios[index]} == */* ]]; then
        [[ ${scenarios[index]} == *.sh && -f ${scenarios[index]} ]] || { echo "bootlab: no scenario file ${scenarios[index]}" >&2; exit 64; }
        scenarios[index]=$(realpath --relative-to=. "${scenarios[index]}")
    fi
done

# directive SCRIPT NAME: the value of the scenario's "# bootlab: NAME VALUE" line, if any.
directive() { sed -n "s/^# bootlab: $2 \\([^ ]*\\)\$/\\1/p" "$1" | head -n 1; }
variant_of() { local variant; variant=$(directive "$(script_of "$1")" image); echo "${variant:-initramfs-tools}"; }

# The images the scenarios boot, each made once.
variants=$(for scenario in "${scenarios[@]}"; do [[ ! -f $(script_of "$scenario") ]] || variant_of "$scenario"; done | sort -u)
for variant in $variants; do
    recipe_of "$variant" >/dev/null || exit 64
    [[ -f $(base_of "$variant") ]] || make_image "$variant"
done
((image_only == 0)) || exit 0
[[ -x $binary ]] || { echo "bootlab: no snapstack binary at $binary (swift build -c release --product snapstack --static-swift-stdlib)" >&2; exit 1; }

work=$(mktemp -d /tmp/snapstack-bootlab.XXXXXX)
# The scenarios started, as PID:NAME.
pids=()
# The image's root partition, when open on the host: its loop device and mount point.
loop=
mounted=
mnt=$work/root
cleanup_mounts() {
    set +e
    [[ -z $mounted ]] || umount "$mounted"
    [[ -z $loop ]] || losetup -d "$loop"
}
cleanup() {
    cleanup_mounts
    # Scenarios still running (an interrupted lab): their qemu, then their mounts.
    local children
    children=$(for entry in "${pids[@]}"; do echo "${entry%%:*}"; done)
    # Each one's timeout first (it passes the signal on to its qemu), then the subshell.
    for child in $children; do pkill -TERM -P "$child" 2>/dev/null; kill "$child" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# Opens the image's root partition on the host: mounted read-write at $mnt, or read-only.
open_root() {
    loop=$(losetup --find --show --offset "$part_offset" ${2:+--read-only} "$1")
    mkdir -p "$mnt"
    # noload: a guest killed mid-boot leaves a journal to replay, which a read-only mount
    # cannot; what is read here (/boot, the journal's files) does not need it.
    mount ${2:+-o ro,noload} "$loop" "$mnt"
    mounted=$mnt
}
close_root() {
    umount "$mounted" && mounted=
    losetup -d "$loop" && loop=
}

# Puts snapstack into the image as its package would, and the scenario's script with the unit
# that runs it at the end of each boot.
prepare() {
    local image=$1 scenario=$2
    open_root "$image"
    bash systemd/install.sh --root "$mnt" --binary "$binary" --no-reload >"$mnt.install.log" 2>&1 ||
        { cat "$mnt.install.log" >&2; echo "bootlab: systemd/install.sh failed" >&2; return 1; }
    mkdir -p "$mnt/root/bootlab"
    # A persistent journal: what the lab prints of a failed scenario's units.
    mkdir -p "$mnt/var/log/journal"
    install -m 0755 "$(script_of "$scenario")" "$mnt/root/bootlab/scenario"
    install -m 0644 Tests/lab/boot/lib.sh "$mnt/root/bootlab/lib.sh"
    cat >"$mnt/etc/systemd/system/bootlab.service" <<'EOF'
[Unit]
Description=boot lab scenario step
After=multi-user.target
[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/root/bootlab/scenario
[Install]
WantedBy=multi-user.target
EOF
    ln -sf /etc/systemd/system/bootlab.service "$mnt/etc/systemd/system/multi-user.target.wants/bootlab.service"
    # The console is the lab's only channel out: no login prompt to share it with.
    ln -sf /dev/null "$mnt/etc/systemd/system/serial-getty@ttyS0.service"
    close_root
}

# The kernel and initramfs the image's /boot holds now: a guest that rebuilt its initramfs boots
# the new one, as a real machine would. And the root device to boot: /dev/vda1, unless the
# scenario moved / elsewhere (an LVM volume it made), or names it as grub does (UUID=...), and
# wrote that into /root/bootlab/root-device of the first partition, which stays /boot's home.
kernel_of() {
    local image=$1 out=$2
    open_root "$image" ro
    cp "$(ls "$mnt"/boot/vmlinuz-* | sort -V | tail -n 1)" "$out/vmlinuz"
    cp "$(ls "$mnt"/boot/initrd.img-* | sort -V | tail -n 1)" "$out/initrd"
    root_device=/dev/vda1
    if [[ -f $mnt/root/bootlab/root-device ]]; then
        root_device=$(head -n 1 "$mnt/root/bootlab/root-device")
        [[ $root_device =~ ^(/dev/[A-Za-z0-9/_.-]+|UUID=[0-9A-Fa-f-]+)$ ]] || { echo "bootlab: the scenario's root device '$root_device' is not a /dev path nor UUID=" >&2; root_device=/dev/vda1; }
    fi
    close_root
}

# One scenario, to its end: prints its checks as they come and, last, its outcome line
# ("PASS  boot: NAME ..." or "FAIL ...  boot: NAME ..."). Run in a subshell of its own, with its
# own mount point, so that scenarios can run side by side.
run_scenario() {
    local scenario=$1 started=$SECONDS dir=$work/$(basename "$1" .sh) outcome= boots=0 status data_size data_disk
    mnt=$dir/mnt
    loop=
    mounted=
    trap cleanup_mounts EXIT
    mkdir -p "$dir"
    cp --sparse=always "$(base_of "$(variant_of "$scenario")")" "$dir/root.img"
    data_size=$(directive "$(script_of "$scenario")" data-disk)
    [[ -z $data_size || $data_size =~ ^[1-9][0-9]*[MG]$ ]] || { echo "FAIL (data-disk '$data_size' is not a size like 4G)  boot: $(basename "$scenario" .sh)"; return; }
    truncate -s "${data_size:-1G}" "$dir/data.img"
    # The second disk: virtio-blk, or on a virtio-scsi controller, with a serial, so that the
    # guest can unplug it and find it again by the same identity.
    case $(directive "$(script_of "$scenario")" data-bus) in
    "") data_disk=(-drive "file=$dir/data.img,format=raw,if=virtio") ;;
    scsi) data_disk=(-device virtio-scsi-pci,id=scsi0 -drive "file=$dir/data.img,format=raw,if=none,id=data"
        -device scsi-hd,drive=data,bus=scsi0.0,serial=bootlab-data) ;;
    *) echo "FAIL (data-bus '$(directive "$(script_of "$scenario")" data-bus)' is not scsi)  boot: $(basename "$scenario" .sh)"; return ;;
    esac
    prepare "$dir/root.img" "$scenario"
    while [[ -z $outcome ]]; do
        boots=$((boots + 1))
        if ((boots > 12)); then outcome="FAIL (more than 12 boots without an end)"; break; fi
        kernel_of "$dir/root.img" "$dir"
        echo "bootlab: $(basename "$scenario" .sh): boot $boots"
        set +e
        # -no-reboot: a guest reboot ends qemu, and the loop boots the image again.
        # rootdelay=60: initramfs-tools gives the root device 30 s from the initramfs's start,
        # which LVM's udev-driven activation of a root volume overran once under TCG with two
        # guests busy ("Gave up waiting for root file system device"); a slow machine's admin
        # sets it too. Not more: in these images initramfs-tools waits out the whole delay at
        # every boot, stacked or not (/ mounted about 129 s after power-on with 120, on the
        # first boot of rootfs too, before anything is protected), which cost each boot 90 s.
        timeout --kill-after=10 "$boot_timeout" qemu-system-x86_64 -accel tcg -m 2G -smp 2 -nographic -no-reboot \
            -kernel "$dir/vmlinuz" -initrd "$dir/initrd" \
            -append "root=$root_device rootdelay=60 rw console=ttyS0 quiet loglevel=3 systemd.show_status=1 panic=-1" \
            -drive "file=$dir/root.img,format=raw,if=virtio" "${data_disk[@]}" \
            -nic none </dev/null >"$dir/console-$boots.log" 2>&1
        status=$?
        set -e
        # The scenario's lines reach the console through the journal, behind a timestamp and
        # the unit's name.
        tr -d '\r' <"$dir/console-$boots.log" | grep -ao 'bootlab: .*' >"$dir/said-$boots" || true
        sed "s/^/  /" "$dir/said-$boots"
        if ((status == 124 || status == 137)); then
            tail -n 30 "$dir/console-$boots.log" | tr -d '\r'
            outcome="FAIL (boot $boots did not end within $boot_timeout s)"
        elif grep -q '^bootlab: FAIL' "$dir/said-$boots"; then
            outcome=FAIL
        elif grep -qx 'bootlab: done' "$dir/said-$boots"; then
            outcome=PASS
        elif ! grep -qx 'bootlab: reboot' "$dir/said-$boots"; then
            tail -n 30 "$dir/console-$boots.log" | tr -d '\r'
            outcome="FAIL (boot $boots ended without the scenario's word)"
        fi
    done
    if [[ $outcome != PASS ]]; then
        # The guest's own account of its last boot: snapstack's unit and the scenario's.
        open_root "$dir/root.img" ro
        journalctl --directory="$mnt/var/log/journal" -b -1 --no-pager -o short-monotonic \
            -u snapstack.service -u bootlab.service 2>/dev/null | tail -n 60 | sed 's/^/  journal: /' || true
        journalctl --directory="$mnt/var/log/journal" -b 0 --no-pager -o short-monotonic \
            -u snapstack.service -u bootlab.service 2>/dev/null | tail -n 60 | sed 's/^/  journal: /' || true
        close_root
    fi
    echo "$outcome  boot: $(basename "$scenario" .sh) ($boots boots, $((SECONDS - started)) s)"
}

# Up to --jobs scenarios at once, each in a subshell; each one's lines are printed when it ends,
# in the order the scenarios were named.
passed=0
failed=0
for scenario in "${scenarios[@]}"; do
    [[ -f $(script_of "$scenario") ]] || { echo "bootlab: no scenario $(script_of "$scenario")" >&2; failed=$((failed + 1)); continue; }
    # A slot: wait until fewer than --jobs scenarios run.
    while :; do
        running=0
        for entry in "${pids[@]}"; do kill -0 "${entry%%:*}" 2>/dev/null && running=$((running + 1)); done
        ((running >= jobs)) || break
        wait -n 2>/dev/null || sleep 1
    done
    echo "bootlab: $(basename "$scenario" .sh): started"
    (run_scenario "$scenario") >"$work/$(basename "$scenario" .sh).out" 2>&1 &
    pids+=("$!:$scenario")
done
for entry in "${pids[@]}"; do
    wait "${entry%%:*}" || true
    scenario=${entry#*:}
    out=$work/$(basename "$scenario" .sh).out
    cat "$out"
    if tail -n 1 "$out" | grep -q "^PASS  boot: $(basename "$scenario" .sh) "; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "$passed passed, $failed failed"
((failed == 0))
