#!/usr/bin/env bash
# Runs one command as root inside a throw-away VM that has device-mapper, so
# that dm tests run on hosts whose kernel has none (containers, CI sandboxes).
#
# The VM is booted with virtme-ng (vng) under qemu without KVM (TCG). The
# guest sees this host's root file system read-only (9p) with RAM overlays on
# /etc /usr /var /tmp /home /opt, starts in the current directory, and runs
# the command after loading the dm modules and letting udev settle.
set -euo pipefail

readonly DM_MODULES=(loop dm-mod dm-snapshot dm-era)

# Exit codes of our own; any other code is the command's.
readonly EXIT_TIMEOUT=124 # wall-clock limit hit, the VM was killed
readonly EXIT_LAB=125     # the lab failed (bad usage, VM or guest setup), not the command

# Kernel modules that udev would otherwise load at boot for qemu's emulated
# PC hardware (KVM, AHCI/CD-ROM, watchdogs, PC speaker, SMBus, AES-NI...).
# None is needed here, and under TCG loading them costs ~3 s of the boot
# (measured for `vm.sh -- true`: ~14 s with them, ~11.5 s without, ~8 s once
# --force-9p below also skips vng's virtiofsd probe).
# Explicit `modprobe NAME` still works: the list only stops alias (udev) loads.
readonly BOOT_BLACKLIST="modprobe.blacklist=kvm,kvm_amd,kvm_intel,powernow_k8,ahci,libahci,libata,sr_mod,cdrom,sg,i6300esb,iTCO_wdt,iTCO_vendor_support,pcspkr,i2c_i801,lpc_ich,aesni_intel,ghash_clmulni_intel,psmouse,serio_raw,evdev,button,joydev"

usage() {
    cat <<'EOF'
Usage: Tests/lab/vm.sh [--timeout SECONDS] [--rwdir DIR]... [--memory SIZE] [--hotplug] -- COMMAND [ARGS...]

Boots a VM (virtme-ng, qemu without KVM, 2 CPUs) with this host's root file
system and runs COMMAND as root in the current directory, after
`modprobe -a loop dm-mod dm-snapshot dm-era` and `udevadm settle`.
The guest's stdout and stderr are passed through; the exit code is COMMAND's.

Options:
  --timeout SECONDS  wall-clock limit for boot + command (default 600);
                     when hit, the VM is killed and vm.sh exits 124
  --rwdir DIR        make host directory DIR writable in the guest (repeatable);
                     everything else is read-only or a RAM overlay
  --memory SIZE      guest memory, qemu syntax (default 2G)
  --hotplug          let COMMAND hot-plug disk images: qemu gets a QMP socket
                     and 4 pcie-root-ports, and Tests/lab/hotplug-agent.py runs
                     on the host; the guest finds its request directory in
                     $SNAPSTACK_HOTPLUG_DIR (see the agent for the protocol)
  -h, --help         show this help

Exit codes: COMMAND's own; 124 on timeout; 125 when the VM or the guest
setup (modules, udev) failed before COMMAND could finish.

Environment:
  SNAPSTACK_VM_KERNEL  kernel image to boot (default: newest /boot/vmlinuz-*);
                       its modules must be in /lib/modules/<version>
  SNAPSTACK_VM=never   run COMMAND directly on this host instead, with the same
                       timeout; for hosts whose kernel has device-mapper
                       (check with `dmsetup version`). Default: always a VM.
  SNAPSTACK_*          all such variables are passed into the guest, which
                       also gets SNAPSTACK_IN_VM=1.
EOF
}

die() {
    echo "vm.sh: $*" >&2
    exit "$EXIT_LAB"
}

timeout_s=600
memory=2G
rwdirs=()
hotplug=
while (($#)); do
    case "$1" in
        --timeout)
            (($# >= 2)) || die "--timeout needs a value"
            timeout_s=$2
            shift 2
            ;;
        --timeout=*) timeout_s=${1#*=}; shift ;;
        --rwdir)
            (($# >= 2)) || die "--rwdir needs a value"
            rwdirs+=("$2")
            shift 2
            ;;
        --rwdir=*) rwdirs+=("${1#*=}"); shift ;;
        --memory)
            (($# >= 2)) || die "--memory needs a value"
            memory=$2
            shift 2
            ;;
        --memory=*) memory=${1#*=}; shift ;;
        --hotplug) hotplug=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *) break ;;
    esac
done
(($#)) || { usage >&2; die "no COMMAND given"; }
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number of seconds, not '$timeout_s'"
[[ $memory =~ ^[1-9][0-9]*[KMGTkmgt]?$ ]] || die "--memory must look like 2G or 2048M, not '$memory'"

# --- host mode -------------------------------------------------------------
case "${SNAPSTACK_VM:-always}" in
    always | "") ;;
    never)
        # No VM: the host's own kernel must provide device-mapper. Keep the
        # wall-clock limit so a hung test fails the same way as in a VM.
        status=0
        timeout --kill-after=10 "$timeout_s" "$@" || status=$?
        if ((status == EXIT_TIMEOUT)); then
            echo "vm.sh: TIMEOUT: '$1' did not finish within ${timeout_s} s (SNAPSTACK_VM=never, ran on the host); killed" >&2
        fi
        exit "$status"
        ;;
    *) die "SNAPSTACK_VM must be 'always' (default) or 'never', not '${SNAPSTACK_VM}'" ;;
esac

# --- VM mode ---------------------------------------------------------------
command -v vng >/dev/null 2>&1 || die "vng (virtme-ng) not found; run Tests/lab/setup.sh"

if [[ -n ${SNAPSTACK_VM_KERNEL:-} ]]; then
    kernel=$SNAPSTACK_VM_KERNEL
else
    kernel=$(printf '%s\n' /boot/vmlinuz-* | sort -V | tail -n 1)
fi
[[ -r $kernel ]] || die "no readable kernel image '$kernel' (install linux-image-amd64 or set SNAPSTACK_VM_KERNEL)"

# Everything the run needs lives in one host directory under /tmp: the guest
# script (the guest sees the host's /tmp at boot through its overlay) and the
# file where the guest records COMMAND's exit code. That directory is also
# passed as --rwdir so the guest can write that file: it proves that COMMAND
# really finished, independent of how the VM ends.
state=$(mktemp -d /tmp/snapstack-vm.XXXXXX)
vng_pid=
timer_pid=
agent_pid=
reader_pids=()

kill_vm() {
    # vng is started with setsid (below), so its process group holds
    # vng, virtme-run and qemu, and nothing else.
    [[ -n $vng_pid ]] || return 0
    kill -TERM -- "-$vng_pid" 2>/dev/null || return 0
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 -- "-$vng_pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL -- "-$vng_pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    [[ -z $timer_pid ]] || kill "$timer_pid" 2>/dev/null || true
    [[ -z $agent_pid ]] || kill "$agent_pid" 2>/dev/null || true
    rm -rf "$state"
}
trap cleanup EXIT
# Interrupting vm.sh must not leave a VM running: setsid detached it,
# so a terminal's Ctrl-C does not reach it by itself.
trap 'kill_vm; exit 130' INT
trap 'kill_vm; exit 143' TERM
trap 'kill_vm; exit 129' HUP

rwdir_args=(--rwdir "$state")
for d in "${rwdirs[@]}"; do
    [[ -d $d ]] || die "--rwdir '$d' is not a directory"
    abs=$(cd "$d" && pwd -P)
    # vng reads '=' as guestpath=hostpath and qemu splits options on ','.
    [[ $abs != *[=,]* ]] || die "--rwdir '$abs' must not contain '=' or ','"
    rwdir_args+=(--rwdir "$abs")
done

# Hotplug: a request directory inside $state (so the guest can write it), the
# QMP socket beside it, and root ports for the agent to plug disks into.
hotplug_ports=(hpport1 hpport2 hpport3 hpport4)
if [[ -n $hotplug ]]; then
    command -v python3 >/dev/null 2>&1 || die "--hotplug needs python3 on the host"
    mkdir "$state/hotplug"
    export SNAPSTACK_HOTPLUG_DIR=$state/hotplug
else
    unset SNAPSTACK_HOTPLUG_DIR
fi

# The guest script. It is generated with printf %q so that any argument
# (spaces, quotes, newlines) reaches COMMAND unchanged; it runs under bash
# (the guest uses the host's /bin/bash), which reads %q's quoting back.
script=$state/guest.sh
{
    printf '#!/bin/bash\n# Generated by Tests/lab/vm.sh; runs inside the VM.\n'
    # vng's --exec shell has a minimal PATH without the Swift toolchain.
    printf 'export PATH=/opt/swift/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n'
    printf 'export SNAPSTACK_IN_VM=1\n'
    while IFS= read -r name; do
        printf 'export %s=%q\n' "$name" "${!name}"
    done < <(compgen -e | grep '^SNAPSTACK_' || true)
    printf 'state=%q\n' "$state"
    printf 'cwd=%q\n' "$PWD"
    printf 'modules=(%s)\n' "${DM_MODULES[*]}"
    printf 'cmd=('
    printf ' %q' "$@"
    printf ' )\n'
    cat <<'GUEST'
fail() {
    echo "vm.sh (in VM): $*" >&2
    echo 125 >"$state/exit-code"
    exit 125
}
modprobe -a "${modules[@]}" ||
    fail "modprobe -a ${modules[*]} failed on kernel $(uname -r); are its modules in /lib/modules/$(uname -r)?"
# dm device nodes and their /dev/mapper links come from udev, so it must be
# running and done with the coldplug and module events before the tests.
for _ in $(seq 300); do
    [[ -S /run/udev/control ]] && break
    sleep 0.1
done
[[ -S /run/udev/control ]] || fail "systemd-udevd is not running (no /run/udev/control after 30 s)"
udevadm settle --timeout=60 || fail "udevadm settle did not finish within 60 s"
cd -- "$cwd" || fail "cannot enter $cwd in the VM"
status=0
"${cmd[@]}" || status=$?
echo "$status" >"$state/exit-code"
exit "$status"
GUEST
} >"$script"

vng_args=(
    -r "$kernel"
    --disable-kvm # KVM is not usable where this runs; TCG works everywhere.
    --force-9p    # skips a ~3 s virtiofsd probe; the root is 9p anyway.
    --cpus 2
    --memory "$memory"
    --user root # dmsetup, losetup and modprobe need root.
    --append "$BOOT_BLACKLIST"
    "${rwdir_args[@]}"
    # --exec travels on the kernel command line (2 KiB at most), so only the
    # short path of the script goes there, never the command itself.
    --exec "/bin/bash $script"
)
if [[ -n $hotplug ]]; then
    qemu_opts=(-qmp "unix:$state/qmp.sock,server=on,wait=off")
    for i in "${!hotplug_ports[@]}"; do
        qemu_opts+=(-device "pcie-root-port,id=${hotplug_ports[i]},bus=pcie.0,chassis=$((i + 1)),slot=$((i + 1))")
    done
    # One --qemu-opts=STRING: vng splits it on blanks (none of these has one), and
    # the '=' keeps argparse from reading "-qmp" as an option of vng's own.
    vng_args+=("--qemu-opts=${qemu_opts[*]}")
fi

# qemu reopens its stdout/stderr (/proc/self/fd/1, /proc/self/fd/2) with
# O_TRUNC: if vm.sh's output were a file, qemu would clobber it. So vng always
# writes into FIFOs, which two cat processes copy to our real stdout/stderr.
mkfifo "$state/stdout" "$state/stderr"
cat <"$state/stdout" &
reader_pids+=($!)
cat <"$state/stderr" >&2 &
reader_pids+=($!)

# setsid: a process group of their own for vng and qemu, so the timeout
# can kill all of them at once (and only them). stdin is /dev/null: without
# a valid fd 0 vng falls back to a mode that drops the guest's stderr, and a
# terminal on stdin would be put into raw mode by qemu.
setsid vng "${vng_args[@]}" </dev/null >"$state/stdout" 2>"$state/stderr" &
vng_pid=$!
if [[ -n $hotplug ]]; then
    python3 "$(dirname "${BASH_SOURCE[0]}")/hotplug-agent.py" "$state/qmp.sock" "$state/hotplug" "${hotplug_ports[@]}" \
        </dev/null >&2 &
    agent_pid=$!
fi
sleep "$timeout_s" &
timer_pid=$!

finished=
vng_status=0
# Whichever ends first, vng or the timer (wait -n -p needs bash >= 5.1).
wait -n -p finished "$vng_pid" "$timer_pid" || vng_status=$?

if [[ $finished == "$timer_pid" ]]; then
    timer_pid=
    kill_vm
    wait "$vng_pid" 2>/dev/null || true
    wait "${reader_pids[@]}" 2>/dev/null || true
    echo "vm.sh: TIMEOUT: '$1' did not finish within ${timeout_s} s (boot included); the VM was killed" >&2
    exit "$EXIT_TIMEOUT"
fi

kill "$timer_pid" 2>/dev/null || true
wait "$timer_pid" 2>/dev/null || true
timer_pid=
# The FIFOs reach EOF once qemu is gone; wait so that all guest output is
# out before we return.
wait "${reader_pids[@]}" 2>/dev/null || true

if [[ ! -s $state/exit-code ]]; then
    echo "vm.sh: the VM ended before '$1' finished (vng exit code $vng_status; kernel panic, out of memory, or qemu failed?)" >&2
    exit "$EXIT_LAB"
fi
status=$(<"$state/exit-code")
if [[ $status != "$vng_status" ]]; then
    # Should not happen: vng reports the guest script's exit code too.
    echo "vm.sh: warning: vng exited with $vng_status, but the command exited with $status; using $status" >&2
fi
exit "$status"
