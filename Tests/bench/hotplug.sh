#!/usr/bin/env bash
# Hotplug to stack: in the boot lab's hotplug scenario (Tests/lab/boot/hotplug.sh: 10 plugs of
# a virtio-scsi disk the auto-protect policy matches, under systemd and udisks2), the time from
# the kernel's add of the partition to the first udev change of its top device (the stack
# resumed, ready to mount), and, for scale, to the end of udev's own rules for the partition,
# both read from udevadm monitor's record in the same run: their medians and ratio. TCG, so the
# absolute numbers are slow. Needs what Tests/lab/bootlab.sh needs, and a release build
# (.build/release/snapstack, or --binary FILE). About 5 minutes.
#   bash Tests/bench/hotplug.sh [--binary FILE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
log=$(mktemp /tmp/snapstack-hotplug.XXXXXX)
trap 'rm -f "$log"' EXIT
bash Tests/lab/bootlab.sh --jobs 1 "$@" hotplug | tee "$log"
python3 - "$log" <<'PY'
import statistics, sys
samples = {"hotplug-to-stack": [], "udev-add": []}
for line in open(sys.argv[1]):
    words = line.split()
    if len(words) == 4 and words[:2] == ["bootlab:", "measure"] and words[2] in samples:
        samples[words[2]].append(float(words[3]))
if len(samples["hotplug-to-stack"]) != 10 or not samples["udev-add"]:
    sys.exit(f"hotplug: expected 10 timed plugs, got {samples}")
stack, udev = (statistics.median(samples[k]) for k in ("hotplug-to-stack", "udev-add"))
print(f"kernel add of the partition to its stack ready, median of {len(samples['hotplug-to-stack'])}: {stack:.3f} s "
      f"(min {min(samples['hotplug-to-stack']):.3f}, max {max(samples['hotplug-to-stack']):.3f}); "
      f"to the end of udev's rules for it: {udev:.3f} s; ratio {stack / udev:.1f}")
PY
