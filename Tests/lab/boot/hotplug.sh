#!/bin/bash
# Hotplug without a race, under systemd and udisks2: a disk an auto-protect rule matches is
# never shown to mounters through its raw node. The second disk sits on a virtio-scsi
# controller, so the guest unplugs it (sysfs delete) and plugs it again (host rescan): 10
# cycles, each an unplug of the disk and a plug the daemon answers with a stack -- on the
# even cycles a disk it protects anew (it was unprotected while away), on the odd ones a disk it
# protects already. udevadm monitor records every event: the raw partition's all say
# SYSTEMD_READY=0 and UDISKS_IGNORE=1, from the first (the policy's udev rules, which the daemon
# compiled) to the last (its member marker); udisks hints it hidden, systemd never has it
# plugged, and udisks mounts the top device, with the file written before the first cycle.
# The same record gives the time from the kernel's add of the partition to the top device's
# resume, "bootlab: measure hotplug-to-stack S", and, for scale, to the end of udev's own rules
# for the partition, "bootlab: measure udev-add S", per cycle (Tests/bench/hotplug.sh).
# bootlab: data-bus scsi
# bootlab: about 300 s
. /root/bootlab/lib.sh

cycles=10
# The disk with the serial the lab gave it; its only partition.
disk_of() { lsblk -dno NAME,SERIAL | awk '$2 == "bootlab-data" { print "/dev/" $1 }'; }
# wait_for TEST...: up to 60 s.
wait_for() { local i; for i in $(seq 600); do "$@" && return 0; sleep 0.1; done; return 1; }
no_disk() { [ -z "$(disk_of)" ]; }
stacked() { [ -b /dev/mapper/snapstack-hot ] && dmsetup info snapstack-hot | grep -q "^State: *ACTIVE"; }
unstacked() { ! dmsetup info snapstack-hot >/dev/null 2>&1; }
unplug() {
    local disk
    disk=$(disk_of)
    echo 1 >"/sys/block/${disk#/dev/}/device/delete"
    wait_for no_disk || { say "FAIL $disk did not go away"; done_now; }
    udevadm settle
}
plug() { for host in /sys/class/scsi_host/host*; do echo "- - -" >"$host/scan"; done; }

case $boot in
1)
    disk=$(disk_of)
    [ -b "$disk" ] || { say "FAIL no disk with serial bootlab-data"; lsblk -o NAME,SERIAL | sed 's/^/bootlab:   /'; done_now; }
    run sfdisk --quiet "$disk" <<<'label: gpt
start=2048, type=linux, name=hot'
    udevadm settle
    run mkfs.ext4 -q -L hotdata "${disk}1"
    mkdir -p /mnt/hot
    run mount "${disk}1" /mnt/hot
    run dd if=/dev/urandom of=/mnt/hot/first bs=1M count=8 conv=fsync status=none
    (cd /mnt/hot && sha256sum first >/root/first.sum)
    run umount /mnt/hot
    mkdir -p /etc/snapstack
    cat >/etc/snapstack/snapstack.conf <<'EOF'
version: 1
rules:
  - name: the lab's hot disk
    match:
      ID_SERIAL: "*bootlab-data"
      DEVTYPE: partition
    protect:
      name: hot
EOF
    run systemctl enable --now snapstack.service
    check "the daemon protected the present partition the policy matches" wait_for stacked
    check "the daemon compiled its policy into udev rules" \
        grep -q 'ENV{ID_SERIAL}=="\*bootlab-data", ENV{DEVTYPE}=="partition", ENV{SNAPSTACK_POLICY}="1"' /run/udev/rules.d/61-snapstack-policy.rules
    run systemctl start udisks2.service
    unplug
    check "the daemon removed the stack of the disk that went away" wait_for unstacked
    run snapstack unprotect hot
    udevadm monitor --kernel --udev --property --subsystem-match=block >/root/events 2>&1 &
    monitor=$!
    sleep 1
    for cycle in $(seq "$cycles"); do
        plug
        if ! wait_for stacked; then
            say "FAIL cycle $cycle: the disk was not stacked within 60 s"
            journalctl -b -u snapstack.service --no-pager | tail -n 20 | sed 's/^/bootlab:      journal: /'
            done_now
        fi
        udevadm settle
        part=$(disk_of)1
        check "cycle $cycle: $part is hidden (SYSTEMD_READY=0, UDISKS_IGNORE=1)" \
            sh -c "udevadm info -q property $part | grep -qx SYSTEMD_READY=0 && udevadm info -q property $part | grep -qx UDISKS_IGNORE=1"
        unit=$(systemd-escape -p --suffix=device "$part")
        check "cycle $cycle: systemd does not have $part plugged ($unit)" \
            sh -c "[ \"\$(systemctl show -P ActiveState $unit)\" != active ]"
        check "cycle $cycle: udisks hints $part hidden and the top device shown" wait_for sh -c "
            udisksctl info -b $part | grep -q 'HintIgnore: *true' && udisksctl info -b /dev/mapper/snapstack-hot | grep -q 'HintIgnore: *false'"
        mounted=$(udisksctl mount -b /dev/mapper/snapstack-hot --no-user-interaction 2>&1)
        check "cycle $cycle: udisks mounts the top device; the file is intact ($mounted)" \
            sh -c "cd \"\$(findmnt -no TARGET /dev/mapper/snapstack-hot)\" && sha256sum -c --quiet /root/first.sum"
        run udisksctl unmount -b /dev/mapper/snapstack-hot --no-user-interaction
        unplug
        check "cycle $cycle: the stack went with the disk" wait_for unstacked
        # Every other cycle the disk comes back to a daemon that has never seen it.
        ((cycle % 2 == 0)) || run snapstack unprotect hot
    done
    sleep 1
    kill "$monitor"
    # The monitor's record: blocks of "SOURCE[time] action devpath (block)" and KEY=value
    # lines. Every udev event of the raw partition must hide it; each kernel add of it starts
    # a clock that the first udev change of the top device stops.
    awk -v cycles="$cycles" '
        /^(KERNEL|UDEV) *\[/ { source = substr($0, 1, index($0, "[") - 1); sub(/ +$/, "", source)
            time = substr($0, index($0, "[") + 1); time = substr(time, 1, index(time, "]") - 1)
            split("", p); next }
        /^[A-Z_0-9]+=/ { key = substr($0, 1, index($0, "=") - 1); p[key] = substr($0, index($0, "=") + 1); next }
        /^$/ {
            if (source == "KERNEL" && p["ACTION"] == "add" && p["DEVTYPE"] == "partition" && p["DEVNAME"] ~ /^(\/dev\/)?sd[a-z]+1$/) start = time
            if (source == "UDEV" && p["DEVTYPE"] == "partition" && p["DEVNAME"] ~ /^\/dev\/sd[a-z]+1$/ && p["ACTION"] != "remove") {
                if (p["ACTION"] == "add" && start != "") printf "bootlab: measure udev-add %.3f\n", time - start
                seen++
                if (p["SYSTEMD_READY"] != "0" || p["UDISKS_IGNORE"] != "1") { shown++; print "bootlab:      shown: " p["ACTION"] " " p["DEVNAME"] " SYSTEMD_READY=" p["SYSTEMD_READY"] " UDISKS_IGNORE=" p["UDISKS_IGNORE"] }
            }
            if (source == "UDEV" && p["ACTION"] == "change" && p["DM_NAME"] == "snapstack-hot" && start != "") {
                printf "bootlab: measure hotplug-to-stack %.3f\n", time - start; start = ""; stacks++ }
            source = ""
        }
        END { print "bootlab: events of the raw partition: " seen ", shown: " shown + 0 ", stacks timed: " stacks + 0 " of " cycles
              exit !(seen >= cycles && shown == 0 && stacks == cycles) }' /root/events >/root/verdict
    status=$?
    cat /root/verdict
    check "over $cycles plug cycles, every udev event of the raw partition hid it, and each plug was timed to its stack" test "$status" = 0
    # The rules exist only while the daemon runs: with no daemon to stack or release a disk,
    # hiding one would only lose it.
    check "systemctl stop ends the daemon within 30 s and removes its policy's udev rules" sh -c '
        start=$(cut -d" " -f1 /proc/uptime); timeout 90 systemctl stop snapstack.service || exit 1
        end=$(cut -d" " -f1 /proc/uptime); echo "stopped in $start .. $end s"
        awk -v a="$start" -v b="$end" "BEGIN { exit !(b - a < 30) }" && [ ! -e /run/udev/rules.d/61-snapstack-policy.rules ]'
    done_now
    ;;
esac
