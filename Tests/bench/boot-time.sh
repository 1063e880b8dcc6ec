#!/usr/bin/env bash
# Boot time with and without a protected root, in the boot lab (TCG, so the absolute numbers
# are slow; the ratio is what counts): the time to multi-user.target that systemd-analyze
# reports, 3 boots of each in the same run, their medians and the ratio. Needs what
# Tests/lab/bootlab.sh needs, and a release build (.build/release/snapstack, or --binary FILE).
# About 15 minutes.
#   bash Tests/bench/boot-time.sh [--binary FILE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
log=$(mktemp /tmp/snapstack-boottime.XXXXXX)
trap 'rm -f "$log"' EXIT
bash Tests/lab/bootlab.sh --jobs 1 --boot-timeout 900 "$@" Tests/bench/boot/boottime.sh | tee "$log"
python3 - "$log" <<'PY'
import statistics, sys
samples = {"plain": [], "protected": []}
for line in open(sys.argv[1]):
    words = line.split()
    if len(words) == 4 and words[:2] == ["bootlab:", "measure"] and words[2] in samples:
        samples[words[2]].append(float(words[3]))
if any(len(v) != 3 for v in samples.values()):
    sys.exit(f"boot-time: expected 3 measures of each, got {samples}")
plain, protected = (statistics.median(samples[k]) for k in ("plain", "protected"))
print(f"boot to multi-user.target, median of 3: plain {plain:.2f} s ({samples['plain']}), "
      f"/ protected {protected:.2f} s ({samples['protected']}); ratio protected/plain {protected / plain:.3f}")
PY
