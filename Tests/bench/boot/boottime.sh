#!/bin/bash
# Boot-lab scenario of Tests/bench/boot-time.sh (not a test: it checks only that it could
# measure). Boots 2-4: / on its bare partition; then / is protected --at-boot (its stack built
# by the initramfs); boots 6-8: / on the stack. Each measured boot prints
# "bootlab: measure plain|protected SECONDS", the time from the kernel's start to
# multi-user.target (kernel, initramfs and userspace). Boot 1 makes the second disk a volume
# group and remakes the initramfs as protect will (MODULES=dep), so that both sides boot an
# initramfs made the same way; boot 5 is the first stacked boot, whose takeover formats the era
# metadata, and is not counted.
# bootlab: data-disk 1G
. /root/bootlab/lib.sh

# The time from the kernel's start to multi-user.target: its activation on the monotonic clock,
# which starts with the kernel (systemd-analyze time would wait for the boot to end, and this
# scenario's own unit is part of it).
measure() {
    local reached
    reached=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)
    [ "${reached:-0}" -gt 0 ] || { say "FAIL multi-user.target has no activation time: '$reached'"; done_now; }
    say "measure $1 $(echo "$reached" | awk '{ printf "%.2f", $1 / 1000000 }')"
}

case $boot in
1)
    run pvcreate -q /dev/vdb
    run vgcreate -q labvg /dev/vdb
    run systemctl enable snapstack.service
    run_for 900 update-initramfs -u -k all
    reboot_now
    ;;
2 | 3 | 4)
    measure plain
    ((boot < 4)) || run_for 900 snapstack protect /dev/vda1 --name root --at-boot --cbt-metadata labvg
    reboot_now
    ;;
5)
    check "/ is on the stack" test "$(findmnt -no SOURCE /)" = /dev/mapper/snapstack-root
    reboot_now
    ;;
6 | 7 | 8)
    check "/ is on the stack" test "$(findmnt -no SOURCE /)" = /dev/mapper/snapstack-root
    measure protected
    ((boot == 8)) && done_now
    reboot_now
    ;;
esac
