#!/bin/bash
# protect --at-boot of a partition mounted from fstab: recorded as pending, stacked by the daemon
# at the next boot before fstab mounts it (so the mount is the top device), then backed up:
# a full export, and after a clean reboot an incremental, each equal to its snapshot (sha256):
# the daemon's stop at the shutdown recorded the filesystem's stamp, and the boot found it
# unchanged, so the change tracking continued. Then the two ways it must not continue: unclean
# reboots (SysRq b while a writer runs; 5 in a row) and the bare partition written while it had
# no stack (as a rescue system would); after each the incremental is refused (exit 10) and
# --allow-full gives an image equal to its snapshot.
# bootlab: about 550 s
. /root/bootlab/lib.sh

image=/root/srv.img

# Unclean reboots in a row, each checked: no clean stop was recorded, so the tracking must be
# interrupted and the incremental refused; never one that differs from its snapshot.
unclean_rounds=5

case $boot in
1)
    run sfdisk --quiet /dev/vdb <<<'label: gpt
start=2048, size=256MiB, type=linux'
    run udevadm settle
    run mkfs.ext4 -q -L srv /dev/vdb1
    mkdir -p /srv
    echo "LABEL=srv /srv ext4 defaults 0 2" >>/etc/fstab
    systemctl daemon-reload
    run mount /srv
    run dd if=/dev/urandom of=/srv/first bs=1M count=16 conv=fsync status=none
    sha256sum /srv/first >/root/first.sum
    check "protect without --at-boot is refused (exit 6) and names --at-boot" sh -c '
        snapstack protect /dev/vdb1 --name srv 2>/root/refusal; status=$?
        cat /root/refusal; [ $status = 6 ] && grep -q -- --at-boot /root/refusal'
    run snapstack protect /dev/vdb1 --name srv --at-boot
    check "devices shows srv pending" sh -c 'snapstack devices -o name,state --noheadings | grep -q "^ *srv  *pending"'
    check "nothing is stacked yet" sh -c '! dmsetup ls | grep snapstack'
    run systemctl enable snapstack.service
    reboot_now
    ;;
2)
    check "snapstack.service is active" systemctl is-active snapstack.service
    check "/srv is mounted from the top device /dev/mapper/snapstack-srv" test "$(findmnt -no SOURCE /srv)" = /dev/mapper/snapstack-srv
    check "devices shows srv protected" sh -c 'snapstack devices -o name,state --noheadings | grep -q "^ *srv  *protected"'
    check "the files written before are intact" sha256sum -c --quiet /root/first.sum
    snapstack devices -o name,source,state,tracking | sed 's/^/bootlab:   /'
    backup srv b2
    run dd if=/dev/urandom of=/srv/second bs=1M count=4 conv=fsync status=none
    reboot_now
    ;;
3)
    check "/srv is mounted from the top device after a clean reboot" test "$(findmnt -no SOURCE /srv)" = /dev/mapper/snapstack-srv
    snapstack devices -o name,state,tracking,interrupted_reason | sed 's/^/bootlab:   /'
    check "the shutdown's stop of the daemon recorded srv's filesystem" sh -c 'journalctl -b -1 -u snapstack.service | grep -q "clean stop recorded.*srv"'
    # lvm2's blkdeactivate removes dm devices at a shutdown; snapstack-blkdeactivate.service
    # holds it until the daemon is gone. Both write to the journal: the daemon's record first.
    journalctl -b -1 -o cat | grep -e "clean stop recorded" -e "Deactivating block devices" >/root/shutdown-order
    check "blkdeactivate ran at the shutdown, and only after the daemon's clean stop" sh -c \
        'grep -q "Deactivating block devices" /root/shutdown-order && head -n 1 /root/shutdown-order | grep -q "clean stop recorded"'
    check "the change tracking continued over the clean reboot" sh -c 'snapstack devices -o name,tracking --noheadings | grep -q "^ *srv  *continuous"'
    backup srv b3 "$(cat /root/last-export)"
    crash_now /srv
    ;;
4 | 5 | 6 | 7 | 8)
    round=$((boot - 3))
    check "/srv is mounted from the top device after unclean reboot $round" test "$(findmnt -no SOURCE /srv)" = /dev/mapper/snapstack-srv
    check "the files written before the first reboot are intact" sha256sum -c --quiet /root/first.sum
    snapstack devices -o name,tracking,interrupted_reason | sed 's/^/bootlab:   /'
    check "unclean reboot $round interrupted the change tracking: no clean stop was recorded" \
        sh -c 'snapstack devices -o name,tracking,interrupted_reason --noheadings | grep -q "^ *srv  *interrupted  *no clean stop"'
    refused_then_full srv "b$boot"
    ((round == unclean_rounds)) || crash_now /srv
    # A snapshot to keep, and a clean stop with srv unused; then what a rescue system does: the
    # stack removed, the bare partition mounted and written.
    run snapstack snapshot srv --as keep
    run umount /srv
    run systemctl stop snapstack.service
    check "the daemon's stop recorded srv's filesystem" sh -c 'journalctl -b -u snapstack.service | grep -q "clean stop recorded.*srv"'
    for pass in 1 2 3; do
        for name in $(dmsetup ls | awk '$1 ~ /^snapstack-/ { print $1 }'); do dmsetup remove "$name" 2>/dev/null || true; done
    done
    check "the stack is gone" sh -c '! dmsetup ls | grep snapstack-'
    mkdir -p /mnt/bare
    run mount /dev/vdb1 /mnt/bare
    run dd if=/dev/urandom of=/mnt/bare/bypass bs=1M count=2 conv=fsync status=none
    run umount /mnt/bare
    reboot_now
    ;;
9)
    check "/srv is mounted from the top device again" test "$(findmnt -no SOURCE /srv)" = /dev/mapper/snapstack-srv
    check "the write that bypassed the stack is there" test -s /srv/bypass
    snapstack devices -o name,tracking,interrupted_reason | sed 's/^/bootlab:   /'
    check "the bare partition's mount interrupted the change tracking, naming what changed" \
        sh -c 'snapstack devices -o name,tracking,interrupted_reason --noheadings | grep -q "^ *srv  *interrupted  *the filesystem on /dev/vdb1 changed while it had no stack: mount count"'
    # Invalid, then dropped by the daemon's store watch (an invalid snapshot only holds space).
    check "the snapshot that missed those writes was made invalid, and is no longer offered" sh -c '
        journalctl -b -u snapstack.service | grep -q "snapshot srv-keep is invalid: the filesystem on /dev/vdb1 changed" &&
        ! snapstack snapshots -o name,state --noheadings | grep -q "^ *srv-keep  *active"'
    refused_then_full srv b9
    done_now
    ;;
esac
