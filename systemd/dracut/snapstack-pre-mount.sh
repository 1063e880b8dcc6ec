#!/bin/sh
# snapstack's dracut pre-mount hook, put into the initramfs by 90snapstack/module-setup.sh.
# Before / is mounted, it builds the stack of each device the plan names and makes dracut mount
# / from the top device of the disk root= names. When anything fails, / is left as it was and
# the boot goes on over the bare disk; snapstack's daemon then reports the change tracking
# interrupted.
#
# dracut sources this file (in dracut-pre-mount.service with systemd, in its init script
# without): no exit, and only snapstack_ names of its own.
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

SNAPSTACK_PLAN=/etc/snapstack/initramfs-plan.json

# snapstack_root_disk SECONDS: root= (/dev/sda2, UUID=..., PARTUUID=..., LABEL=...) resolved to
# the disk's own node, waiting for it. Resolved now, while only the disk carries its
# filesystem: once the top device exists, its by-uuid and by-label links may name either.
snapstack_root_disk() {
    local spec path delay=$1
    spec=$(getarg root=)
    spec=${spec#block:}
    case $spec in
    LABEL=* | UUID=* | PARTUUID=* | PARTLABEL=*) path=$(label_uuid_to_dev "$spec") ;;
    /dev/*) path=$spec ;;
    *) return 1 ;;
    esac
    while [ ! -b "$path" ]; do
        [ "$delay" -gt 0 ] || return 1
        sleep 1
        delay=$((delay - 1))
    done
    readlink -f "$path"
}

# snapstack_mount_from_systemd TOP: with systemd in the initramfs (Debian's dracut), / is
# mounted by sysroot.mount, which systemd-fstab-generator wrote from the kernel's root= (or
# dracut's rootfs generator from the initramfs's own), and checked first by the fsck unit it
# requires (systemd-fsck-root.service, or systemd-fsck@DEVICE.service), on the disk. Both are
# queued behind this hook (dracut-pre-mount.service runs before them): drop-ins in
# /run/systemd/system point them at the top device, and a daemon-reload makes systemd read
# them; the queued jobs then start the changed units. (dracut's $root is not read by anything
# in this mode; changing root= itself is not possible, it comes from the kernel.) The fsck
# must move too: the stack holds the disk open exclusively, so an fsck of the disk would fail,
# and with it the mount. snapstack-pre-pivot.sh removes the drop-ins before switch_root, so
# that the system's own systemd-fsck-root.service is not changed by them.
snapstack_mount_from_systemd() {
    local top=$1 device fsck unit dir units=sysroot.mount i=0
    device=$(systemd-escape -p --suffix=device "$top") || return 1
    # The new dependencies are not queued by the daemon-reload: wait until systemd has seen
    # the top device (udev has processed it), so that the mount does not start before.
    udevadm settle --timeout=10 >/dev/null 2>&1
    until systemctl -q is-active "$device"; do
        i=$((i + 1))
        if [ "$i" -gt 100 ]; then
            warn "snapstack: systemd has not seen $top within 10 s; mounting it anyway"
            break
        fi
        sleep 0.1
    done
    mkdir -p /run/systemd/system/sysroot.mount.d || return 1
    # Each drop-in is listed as soon as it exists: the pre-pivot hook, or the undo below when
    # a later step fails, removes what the list names.
    echo /run/systemd/system/sysroot.mount.d/50-snapstack.conf >>/run/snapstack/dracut-drop-ins
    printf '[Unit]\nAfter=%s\n[Mount]\nWhat=%s\n' "$device" "$top" \
        >/run/systemd/system/sysroot.mount.d/50-snapstack.conf || return 1
    for fsck in /usr/lib/systemd/systemd-fsck /lib/systemd/systemd-fsck; do
        [ -x "$fsck" ] && break
    done
    for unit in $(systemctl show -p Requires --value sysroot.mount); do
        case $unit in
        systemd-fsck*.service)
            dir=/run/systemd/system/$unit.d
            mkdir -p "$dir" || return 1
            echo "$dir/50-snapstack.conf" >>/run/snapstack/dracut-drop-ins
            printf '[Unit]\nAfter=%s\n[Service]\nExecStart=\nExecStart=%s %s\n' "$device" "$fsck" "$top" \
                >"$dir/50-snapstack.conf" || return 1
            units="$units $unit"
            ;;
        esac
    done
    systemctl daemon-reload || return 1
    info "snapstack: $units use $top"
}

# snapstack_take_back TOP: / cannot be mounted from TOP. The drop-ins written so far go (and
# systemd forgets them), and the stack is taken back: it holds the disk exclusively, so
# sysroot.mount could not mount the disk either. The boot then goes on over the bare disk, as
# when the stack could not be built.
snapstack_take_back() {
    local drop_in
    if [ -f /run/snapstack/dracut-drop-ins ]; then
        while read -r drop_in; do
            rm -f "$drop_in"
            rmdir "${drop_in%/*}" 2>/dev/null
        done </run/snapstack/dracut-drop-ins
        rm -f /run/snapstack/dracut-drop-ins
        systemctl daemon-reload
    fi
    /usr/sbin/snapstack initramfs unstack --plan "$SNAPSTACK_PLAN" --top "$1" >/dev/null ||
        warn "snapstack: cannot take back the stack of $1: / may not mount"
}

snapstack_stack_root() {
    local wait disk top
    [ -f "$SNAPSTACK_PLAN" ] || return 0
    modprobe -q dm_era
    wait=$(getarg rootdelay=)
    case $wait in '' | *[!0-9]*) wait=30 ;; esac
    if ! disk=$(snapstack_root_disk "$wait") || [ -z "$disk" ]; then
        warn "snapstack: the root device $(getarg root=) did not appear; nothing stacked"
        return 0
    fi
    top=$(/usr/sbin/snapstack initramfs stack --plan "$SNAPSTACK_PLAN" --root "$disk" --wait "$wait")
    [ -n "$top" ] && [ -b "$top" ] || return 0
    mkdir -p /run/snapstack
    if [ -n "$DRACUT_SYSTEMD" ]; then
        if ! snapstack_mount_from_systemd "$top"; then
            warn "snapstack: cannot point sysroot.mount at $top; taking its stack back"
            snapstack_take_back "$top"
            return 0
        fi
    else
        # dracut's own init: its mount hook (95rootfs-block's mount-root.sh) mounts $root. (Not
        # what Debian's dracut makes, and not exercised by the boot lab.)
        root="block:$top"
    fi
    info "snapstack: / is mounted from $top"
}

snapstack_stack_root
