#!/usr/bin/env bash
# Installs what snapstack needs to build and to run its tests on a Debian 12
# machine: C libraries for the build, and qemu + virtme-ng + device-mapper
# tools for the VM test lab (Tests/lab/vm.sh).
#
# Idempotent: it only installs what is missing, runs `apt-get update` only
# when an apt package has to be installed, and prints nothing on success
# except one line per thing it installed.
set -euo pipefail

readonly VIRTME_NG_VERSION=1.42

# Build: headers and pkg-config files for the C libraries the package links.
# Lab: qemu + a distribution kernel boot the VM; the guest reuses this host's
# root file system, so the device-mapper tools, udev, kmod (modprobe) and the
# file system / I/O tools the VM suite calls must be installed on the host.
# busybox-static and file are used by virtme-ng to build its initramfs and to
# inspect the kernel image. restic: the backup scenarios store images in a
# repository. man-db, groff-base, bash-completion, zsh, fish: the manual pages
# are rendered and the completions parsed and run (Tests/lab/manuals-check.sh).
# python3-prometheus-client: a real Prometheus text-format parser for the
# metrics scenario, for the guest's /usr/bin/python3 (the guest's PATH has no
# pyenv). strace: the witness of whether a command locks its memory.
# mmdebstrap, fdisk (sfdisk): the boot lab makes a partitioned Debian image.
# xfsprogs: the filesystem stamp of xfs is checked against xfs_db, in the unit tests and the
# VM suite.
readonly APT_PACKAGES=(
    libdevmapper-dev libudev-dev liblvm2-dev libsqlite3-dev libxxhash-dev pkg-config
    qemu-system-x86 linux-image-amd64
    dmsetup lvm2 thin-provisioning-tools udev kmod busybox-static
    e2fsprogs btrfs-progs fio util-linux file sqlite3 xxhash strace
    restic python3-prometheus-client
    man-db groff-base bash-completion zsh fish
    mmdebstrap fdisk
    xfsprogs
)

usage() {
    cat <<EOF
Usage: Tests/lab/setup.sh [--help]

Installs (as root, on Debian 12) the packages needed to build snapstack and
run its tests: ${APT_PACKAGES[*]}
and virtme-ng==${VIRTME_NG_VERSION} from PyPI. Then checks that swift is on PATH.
Safe to run repeatedly; it does nothing when everything is present.
EOF
}

die() {
    echo "setup.sh: $*" >&2
    exit 1
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
esac

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs system packages)"

# apt/pip output goes to this log, shown only when a step fails, so a
# successful run stays quiet.
log=$(mktemp /tmp/snapstack-setup.XXXXXX)
trap 'rm -f "$log"' EXIT

run_logged() {
    if ! "$@" >>"$log" 2>&1; then
        cat "$log" >&2
        die "failed: $*"
    fi
}

is_installed() {
    # "ii " = wanted install, currently installed. Anything else (absent,
    # half-configured, removed with config left) counts as missing.
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == "ii " ]]
}

apt_install() {
    # Refresh the package lists only when something really has to be
    # installed: `apt-get update` is the slow, network-bound part.
    if [[ ${apt_updated:-0} -eq 0 ]]; then
        run_logged apt-get update
        apt_updated=1
    fi
    run_logged env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$@"
    local p
    for p in "$@"; do echo "setup.sh: installed $p"; done
}

# --- Debian packages -------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
fi

# --- virtme-ng (vng) from PyPI --------------------------------------------
vng_ok() {
    command -v vng >/dev/null 2>&1 &&
        [[ $(vng --version 2>/dev/null) == "virtme-ng ${VIRTME_NG_VERSION}" ]]
}

pip_install() {
    command -v python3 >/dev/null 2>&1 || apt_install python3
    # A bare Debian python3 ships without pip.
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    local pip_args=(install --quiet --disable-pip-version-check "$@")
    # Debian's own python3 refuses system-wide pip installs (PEP 668); a
    # python3 from pyenv or a virtualenv has no such marker file.
    if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        pip_args+=(--break-system-packages)
    fi
    run_logged python3 -m pip "${pip_args[@]}"
    # pyenv only finds new console scripts after a rehash of its shims.
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash >/dev/null 2>&1 || true
    fi
    hash -r
}

if ! vng_ok; then
    pip_install "virtme-ng==${VIRTME_NG_VERSION}"
    vng_ok || die "installed virtme-ng==${VIRTME_NG_VERSION}, but 'vng --version' does not report it (is pip's bin directory on PATH?)"
    echo "setup.sh: installed virtme-ng==${VIRTME_NG_VERSION}"
fi

# --- Swift toolchain -------------------------------------------------------
# The toolchain is not a Debian package; it is expected at /opt/swift.
if ! command -v swift >/dev/null 2>&1; then
    if [[ -x /opt/swift/usr/bin/swift ]]; then
        die "swift is not on PATH; it is installed in /opt/swift/usr/bin: export PATH=/opt/swift/usr/bin:\$PATH"
    fi
    die "swift not found on PATH nor in /opt/swift/usr/bin; install a Swift 6 toolchain"
fi
