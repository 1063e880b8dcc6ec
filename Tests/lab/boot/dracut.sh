#!/bin/bash
# The root filesystem protected from an initramfs that dracut makes (Debian 12's dracut 059,
# systemd in the initramfs): `protect --at-boot` of /'s partition runs dracut, whose module
# 90snapstack puts the binary, the plan and its pre-mount hook in; at the next boot the hook
# stacks the partition and points sysroot.mount (and the fsck before it) at the top device, so
# / is mounted from it, and the daemon takes the stack over. Then a full backup of /, writes, a
# clean reboot with root=UUID=... (as grub writes it; the top device carries that UUID too), and
# an incremental with the tracking continued -- the model is rootfs.sh, with less written.
# bootlab: image dracut
# bootlab: data-disk 4G
# bootlab: about 540 s
. /root/bootlab/lib.sh

image=/backup/root.img
snapshot_options="--store labvg --size 300M"

case $boot in
1)
    backup_volume
    run dd if=/dev/urandom of=/root/first bs=1M count=2 conv=fsync status=none
    sha256sum /root/first >/root/first.sum
    check "the initramfs is made by dracut (no update-initramfs here)" sh -c '! command -v update-initramfs && command -v dracut'
    # dracut under TCG takes minutes.
    run_for 900 snapstack protect /dev/vda1 --name root --at-boot --cbt-metadata labvg
    check "devices shows root pending" sh -c 'snapstack devices -o name,state --noheadings | grep -q "^ *root  *pending"'
    check "dracut's initramfs carries snapstack, its plan for root and its pre-mount hook" sh -c '
        lsinitrd /boot/initrd.img-$(uname -r) >/root/initramfs.list
        grep -Eq " (usr/)?sbin/snapstack$" /root/initramfs.list && grep -Eq " etc/snapstack/initramfs-plan.json$" /root/initramfs.list &&
        grep -Eq " (usr/)?lib/dracut/hooks/pre-mount/50-snapstack-pre-mount.sh$" /root/initramfs.list &&
        lsinitrd -f etc/snapstack/initramfs-plan.json /boot/initrd.img-$(uname -r) | grep -q "\"name\":\"root\""'
    run systemctl enable snapstack.service
    reboot_now
    ;;
2)
    check "/ is mounted from the top device /dev/mapper/snapstack-root" test "$(findmnt -no SOURCE /)" = /dev/mapper/snapstack-root
    check "the stack under / is era over /dev/vda1" sh -c 'dmsetup table snapstack-root-real | grep -q " era "'
    # e2fsck names the filesystem by its label; its command line names the device (the disk
    # itself could not be checked: the stack holds it exclusively).
    check "the initramfs checked / through the top device (fsck.ext4 /dev/mapper/snapstack-root)" sh -c '
        journalctl -b -o verbose --no-pager -t systemd-fsck | grep -q "_CMDLINE=fsck.* /dev/mapper/snapstack-root\$"'
    check "the initramfs's drop-ins for sysroot.mount and the fsck are gone after switch_root" sh -c '
        ! ls /run/systemd/system/*.d/50-snapstack.conf 2>/dev/null'
    check "snapstack.service is active" systemctl is-active snapstack.service
    check "the daemon took over the initramfs's stack: root is protected" sh -c 'snapstack devices -o name,state --noheadings | grep -q "^ *root  *protected"'
    check "the daemon's journal says it took over the initramfs's stack" sh -c 'journalctl -b -u snapstack.service | grep -q "root: take over the stack the initramfs built over /dev/vda1, with new change tracking"'
    check "the files written before are intact" sha256sum -c --quiet /root/first.sum
    check "the bare partition is hidden from systemd (SYSTEMD_READY=0)" sh -c 'udevadm info -q property /dev/vda1 | grep -qx SYSTEMD_READY=0'
    backup root b2
    run dd if=/dev/urandom of=/root/second bs=1M count=2 conv=fsync status=none
    sha256sum /root/first /root/second >/root/first.sum
    # The next boot names / as grub does: by its filesystem's UUID, which the top device
    # carries too once it exists.
    awk '$2 == "/" && $1 ~ /^UUID=/ { print $1 }' /etc/fstab >/root/bootlab/root-device
    check "the next boot's root= is /'s UUID= from fstab" grep -q "^UUID=" /root/bootlab/root-device
    reboot_now
    ;;
3)
    check "this boot's root= is UUID=, as grub writes it" grep -Eq "(^| )root=UUID=" /proc/cmdline
    check "/ is mounted from the top device after a clean reboot" test "$(findmnt -no SOURCE /)" = /dev/mapper/snapstack-root
    check "the initramfs checked / through the top device again" sh -c '
        journalctl -b -o verbose --no-pager -t systemd-fsck | grep -q "_CMDLINE=fsck.* /dev/mapper/snapstack-root\$"'
    check "the files written before are intact" sha256sum -c --quiet /root/first.sum
    snapstack devices -o name,state,tracking,interrupted_reason | sed 's/^/bootlab:   /'
    check "the change tracking continued over the clean reboot" sh -c 'snapstack devices -o name,tracking --noheadings | grep -q "^ *root  *continuous"'
    backup root b3 "$(cat /root/last-export)"
    done_now
    ;;
esac
