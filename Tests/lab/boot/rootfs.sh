#!/bin/bash
# The root filesystem, protected from the initramfs: `protect --at-boot` of /'s partition (its
# change-tracking metadata on a volume group of the second disk) records it as pending and
# remakes the initramfs with snapstack's hook; at the next boot the initramfs's local-top script
# stacks the partition before it mounts /, so / is mounted from the top device, and the daemon
# takes the stack over. Then backups of / (snapshots with their store on the volume group): a
# full export, then 3 cycles of writes, a clean reboot and an incremental, each image equal to
# its snapshot (sha256) and none needing --allow-full -- the shutdown recorded /'s stamp once
# it was read-only, and the initramfs found the same -- then an unclean reboot (SysRq b while a
# writer runs): the tracking interrupted, the incremental refused (exit 10), --allow-full exact.
# bootlab: data-disk 4G
# bootlab: about 1000 s
. /root/bootlab/lib.sh

image=/backup/root.img
snapshot_options="--store labvg --size 300M"
# Boots 3 to 5 are the clean cycles; the last of them ends with the unclean reboot.
last_cycle=5

case $boot in
1)
    backup_volume
    run dd if=/dev/urandom of=/root/first bs=1M count=8 conv=fsync status=none
    sha256sum /root/first >/root/first.sum
    check "protect of / without --at-boot is refused (exit 6) and names --at-boot" sh -c '
        snapstack protect /dev/vda1 --name root 2>/root/refusal; status=$?
        cat /root/refusal; [ $status = 6 ] && grep -q -- --at-boot /root/refusal'
    check "protect --at-boot of / without --cbt-metadata is refused (exit 6) and names --cbt-metadata" sh -c '
        snapstack protect /dev/vda1 --name root --at-boot 2>/root/refusal; status=$?
        cat /root/refusal; [ $status = 6 ] && grep -q -- --cbt-metadata /root/refusal'
    # update-initramfs under TCG takes minutes.
    run_for 900 snapstack protect /dev/vda1 --name root --at-boot --cbt-metadata labvg
    check "devices shows root pending" sh -c 'snapstack devices -o name,state --noheadings | grep -q "^ *root  *pending"'
    check "the era metadata volume exists in labvg" sh -c 'lvs --noheadings -o lv_name labvg | grep -q "snapstack-.*-era"'
    check "the initramfs carries snapstack and its plan for root" sh -c '
        lsinitramfs /boot/initrd.img-$(uname -r) >/root/initramfs.list
        grep -qx conf/snapstack-plan.json /root/initramfs.list && grep -qx usr/sbin/snapstack /root/initramfs.list &&
        grep -qx scripts/local-top/snapstack /root/initramfs.list'
    run systemctl enable snapstack.service
    reboot_now
    ;;
2)
    check "/ is mounted from the top device /dev/mapper/snapstack-root" test "$(findmnt -no SOURCE /)" = /dev/mapper/snapstack-root
    check "the stack under / is era over /dev/vda1" sh -c 'dmsetup table snapstack-root-real | grep -q " era "'
    check "snapstack.service is active" systemctl is-active snapstack.service
    check "the daemon took over the initramfs's stack: root is protected" sh -c 'snapstack devices -o name,state --noheadings | grep -q "^ *root  *protected"'
    check "the daemon's journal says it took over the initramfs's stack" sh -c 'journalctl -b -u snapstack.service | grep -q "root: take over the stack the initramfs built over /dev/vda1, with new change tracking"'
    check "the files written before are intact" sha256sum -c --quiet /root/first.sum
    check "the bare partition is hidden from systemd (SYSTEMD_READY=0)" sh -c 'udevadm info -q property /dev/vda1 | grep -qx SYSTEMD_READY=0'
    snapstack devices -o name,source,state,tracking | sed 's/^/bootlab:   /'
    backup root b2
    check "fsck.ext4 -n -f of the image passes" fsck.ext4 -n -f "$image"
    # One snapshot kept over the reboot: the initramfs mounts / before it could come back, so
    # it must come back invalid, never silently wrong.
    check "a snapshot to keep over the reboot" snap root keep
    run dd if=/dev/urandom of=/root/second bs=1M count=4 conv=fsync status=none
    reboot_now
    ;;
3 | 4 | 5)
    cycle=$((boot - 2))
    check "/ is mounted from the top device after clean reboot $cycle" test "$(findmnt -no SOURCE /)" = /dev/mapper/snapstack-root
    check "the files written before are intact" sha256sum -c --quiet /root/first.sum
    snapstack devices -o name,state,tracking,interrupted_reason | sed 's/^/bootlab:   /'
    if ((cycle == 1)); then
        check "the snapshot kept over the reboot was made invalid, and is no longer offered" sh -c '
            journalctl -b -u snapstack.service | grep -q "snapshot root-keep is invalid: the initramfs mounted /dev/vda1" &&
            ! snapstack snapshots -o name,state --noheadings | grep -q "^ *root-keep  *active"'
        # The daemon's store watch drops an invalid snapshot, store volume included (LVM writes
        # its metadata archive in /etc/lvm, which the unit must leave writable).
        check "the store watch dropped it and removed its store volume" sh -c '
            for i in $(seq 30); do lvs --noheadings -o lv_name labvg | grep -Eq "snapstack-[0-9a-f]{8}-[0-9a-f]{8} *$" || exit 0; sleep 1; done
            lvs labvg; journalctl -b -u snapstack.service | grep -i "cannot drop"; exit 1'
    fi
    # The shutdown recorded /'s stamp once it was read-only; the initramfs found the same.
    check "the change tracking continued over clean reboot $cycle" sh -c 'snapstack devices -o name,tracking --noheadings | grep -q "^ *root  *continuous"'
    backup root "b$boot" "$(cat /root/last-export)"
    run dd if=/dev/urandom of="/root/cycle$cycle" bs=1M count=4 conv=fsync status=none
    ((boot == last_cycle)) || reboot_now
    crash_now /root
    ;;
6)
    check "/ is mounted from the top device after an unclean reboot" test "$(findmnt -no SOURCE /)" = /dev/mapper/snapstack-root
    check "the files written before are intact" sha256sum -c --quiet /root/first.sum
    snapstack devices -o name,state,tracking,interrupted_reason | sed 's/^/bootlab:   /'
    check "the unclean reboot interrupted the change tracking, saying why" sh -c 'snapstack devices -o name,tracking,interrupted_reason --noheadings | grep -q "^ *root  *interrupted  *no clean shutdown of /dev/vda1"'
    refused_then_full root b6
    done_now
    ;;
esac
