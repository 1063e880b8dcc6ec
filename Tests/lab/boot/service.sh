#!/bin/bash
# snapstack.service under systemd as PID 1: the unit verifies clean; at boot it is active before
# local-fs-pre.target and an fstab-mounted LV that was adopted comes up mounted through its stack;
# reload re-reads the policy, the watchdog is fed, stop leaves nothing suspended.
# bootlab: about 110 s
. /root/bootlab/lib.sh

case $boot in
1)
    check "systemd-analyze verify snapstack.service: no complaint" \
        sh -c 'out=$(systemd-analyze verify snapstack.service 2>&1); [ -z "$out" ] || { echo "$out"; false; }'
    run pvcreate -q /dev/vdb
    run vgcreate -q bvg /dev/vdb
    run lvcreate -q -y -L 128M -n data bvg
    run mkfs.ext4 -q /dev/bvg/data
    mkdir -p /data
    echo "UUID=$(blkid -s UUID -o value /dev/bvg/data) /data ext4 defaults 0 2" >>/etc/fstab
    systemctl daemon-reload
    run mount /data
    run dd if=/dev/urandom of=/data/first bs=1M count=8 conv=fsync status=none
    run snapstack protect bvg/data --name data
    run systemctl enable snapstack.service
    reboot_now
    ;;
2)
    check "snapstack.service is active" systemctl is-active snapstack.service
    service=$(systemctl show -P ActiveEnterTimestampMonotonic snapstack.service)
    pre=$(systemctl show -P ActiveEnterTimestampMonotonic local-fs-pre.target)
    check "snapstack.service was ready ($service us) before local-fs-pre.target ($pre us)" \
        test "$service" -gt 0 -a "$service" -le "$pre"
    check "/data is mounted from /dev/mapper/bvg-data" test "$(findmnt -no SOURCE /data)" = /dev/mapper/bvg-data
    check "bvg-data maps through snapstack's layers (dmsetup deps)" sh -c 'dmsetup deps -o devname bvg-data | grep snapstack'
    snapstack devices -o name,source,state,tracking | sed 's/^/bootlab:   /'
    run dd if=/dev/urandom of=/data/second bs=1M count=4 conv=fsync status=none
    snap=$(snapstack snapshot data --as boot2 2>&1) || { say "FAIL snapshot: $snap"; done_now; }
    run snapstack export data-boot2 --to /root/data.img --no-progress
    image=$(sha256sum </root/data.img | cut -c1-64)
    device=$(sha256sum <"$snap" | cut -c1-64)
    check "full export equals its snapshot (sha256 $image)" test "$image" = "$device"
    run snapstack drop data-boot2

    check "systemctl reload: the daemon re-reads its policy (journal)" sh -c '
        systemctl reload snapstack.service || exit 1
        for _ in $(seq 50); do
            journalctl -b -u snapstack.service | grep -q "configuration reloaded" && exit 0
            sleep 0.2
        done
        journalctl -b -u snapstack.service | tail -n 5; exit 1'

    # The watchdog, at a period a test can wait for: the daemon must keep pinging.
    mkdir -p /etc/systemd/system/snapstack.service.d
    printf '[Service]\nWatchdogSec=4s\n' >/etc/systemd/system/snapstack.service.d/watchdog.conf
    run systemctl daemon-reload
    run timeout 120 systemctl restart snapstack.service
    first=$(systemctl show -P WatchdogTimestampMonotonic snapstack.service)
    sleep 12
    last=$(systemctl show -P WatchdogTimestampMonotonic snapstack.service)
    check "watchdog fed: last ping moved from $first to $last us, no restart" \
        test "$last" -gt "$first" -a "$(systemctl show -P NRestarts snapstack.service)" = 0 -a "$(systemctl is-active snapstack.service)" = active
    rm -r /etc/systemd/system/snapstack.service.d
    systemctl daemon-reload

    check "the unit's hardening leaves the daemon what it uses: no 'Failed to ...' in its journal" \
        sh -c '! journalctl -b -u snapstack.service -o cat | grep -i "failed to"'
    run systemctl stop snapstack.service
    check "systemctl stop leaves no device suspended" sh -c '! dmsetup info | grep -B3 "^State: *SUSPENDED"'
    check "/data still takes writes after the daemon stopped" dd if=/dev/zero of=/data/third bs=1M count=1 conv=fsync status=none
    done_now
    ;;
esac
