#!/bin/bash
# The root filesystem on an LVM volume, the layout of a default Debian install with LVM: / is
# moved onto rootvg/root (the first partition stays /boot's home), then protected online --
# adopted, no reboot -- with its change-tracking metadata on another volume group. At every
# boot LVM activates the volume with its plain table; the initramfs adopts it again before /
# is mounted from it, and the daemon takes it over. Backups of /: a full export, 3 cycles of
# writes, a clean reboot and an incremental (the tracking continued), then an unclean reboot:
# the incremental refused and --allow-full exact; each image equal to its snapshot (sha256).
# bootlab: data-disk 4G
# bootlab: about 1100 s
. /root/bootlab/lib.sh

image=/backup/root.img
snapshot_options="--store labvg --size 300M"
last_cycle=5

# The volume maps through snapstack's stack: its table is linear over snapstack-root-real.
through_stack() {
    dmsetup table rootvg-root | grep -q "linear $(dmsetup info -c --noheadings -o major,minor snapstack-root-real | tr -d ' ')"
}

case $boot in
1)
    run sfdisk --quiet /dev/vdb <<<'label: gpt
start=2048, size=1200MiB, type=linux
type=linux'
    run udevadm settle
    run pvcreate -q /dev/vdb1 /dev/vdb2
    run vgcreate -q rootvg /dev/vdb1
    run vgcreate -q labvg /dev/vdb2
    run lvcreate -q -y -L 1100M -n root rootvg
    run lvcreate -q -y -L 2G -n backup labvg
    run mkfs.ext4 -q /dev/rootvg/root
    run mkfs.ext4 -q /dev/labvg/backup
    mkdir -p /mnt/newroot
    run mount /dev/rootvg/root /mnt/newroot
    run_for 600 cp -ax /. /mnt/newroot/
    # The first partition keeps /boot, where the lab takes the kernel and initramfs from.
    mkdir -p /mnt/newroot/mnt/first /mnt/newroot/backup
    cat >/mnt/newroot/etc/fstab <<'FSTAB'
/dev/mapper/rootvg-root / ext4 rw,errors=remount-ro 0 1
/dev/vda1 /mnt/first ext4 defaults 0 2
/mnt/first/boot /boot none bind 0 0
/dev/labvg/backup /backup ext4 defaults 0 2
FSTAB
    run dd if=/dev/urandom of=/mnt/newroot/root/first bs=1M count=8 conv=fsync status=none
    (cd /mnt/newroot && sha256sum root/first) >/mnt/newroot/root/first.sum
    run umount /mnt/newroot
    echo /dev/mapper/rootvg-root >/root/bootlab/root-device
    say "ok   / copied onto rootvg/root"
    reboot_now
    ;;
2)
    check "/ is mounted from the volume rootvg/root" test "$(findmnt -no SOURCE /)" = /dev/mapper/rootvg-root
    check "/boot is the first partition's" sh -c 'ls /boot/vmlinuz-* && findmnt /mnt/first'
    run systemctl enable --now snapstack.service
    # No --at-boot: a volume is adopted online. update-initramfs under TCG takes minutes.
    run_for 900 snapstack protect rootvg/root --name root --cbt-metadata labvg
    check "devices shows root protected, adopted as rootvg/root" sh -c 'snapstack devices -o name,state,adopted --noheadings | grep -q "^ *root  *protected  *rootvg/root"'
    check "/ stayed mounted from rootvg/root" test "$(findmnt -no SOURCE /)" = /dev/mapper/rootvg-root
    check "rootvg-root maps through snapstack-root-real now" through_stack
    check "the initramfs carries snapstack and its plan for root" sh -c '
        lsinitramfs /boot/initrd.img-$(uname -r) | grep -qx conf/snapstack-plan.json'
    backup root b2
    check "fsck.ext4 -n -f of the image passes" fsck.ext4 -n -f "$image"
    run dd if=/dev/urandom of=/root/second bs=1M count=4 conv=fsync status=none
    reboot_now
    ;;
3 | 4 | 5)
    cycle=$((boot - 2))
    check "/ is mounted from rootvg/root after clean reboot $cycle" test "$(findmnt -no SOURCE /)" = /dev/mapper/rootvg-root
    check "the initramfs adopted it again: it maps through the stack" through_stack
    check "the files written before are intact" sh -c 'cd / && sha256sum -c --quiet /root/first.sum'
    snapstack devices -o name,state,tracking,interrupted_reason | sed 's/^/bootlab:   /'
    check "the daemon's journal says it took over the initramfs's stack, keeping its tracking" sh -c 'journalctl -b -u snapstack.service | grep -q "root: take over the stack the initramfs built over .*, keeping its change tracking"'
    check "the change tracking continued over clean reboot $cycle" sh -c 'snapstack devices -o name,tracking --noheadings | grep -q "^ *root  *continuous"'
    backup root "b$boot" "$(cat /root/last-export)"
    run dd if=/dev/urandom of="/root/cycle$cycle" bs=1M count=4 conv=fsync status=none
    ((boot == last_cycle)) || reboot_now
    crash_now /root
    ;;
6)
    check "/ is mounted from rootvg/root after an unclean reboot" test "$(findmnt -no SOURCE /)" = /dev/mapper/rootvg-root
    check "the initramfs adopted it again: it maps through the stack" through_stack
    snapstack devices -o name,state,tracking,interrupted_reason | sed 's/^/bootlab:   /'
    check "the unclean reboot interrupted the change tracking, saying why" sh -c 'snapstack devices -o name,tracking,interrupted_reason --noheadings | grep -q "^ *root  *interrupted  *no clean shutdown of /dev/mapper/rootvg-root"'
    refused_then_full root b6
    done_now
    ;;
esac
