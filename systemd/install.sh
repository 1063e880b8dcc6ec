#!/usr/bin/env bash
# Installs snapstack's system integration: the systemd unit, the udev rules, the module list
# and the example configuration -- what a package would ship. Run from anywhere.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: systemd/install.sh [--root DIR] [--prefix DIR] [--binary FILE] [--sbindir DIR]
                          [--state-dir DIR] [--no-reload]

Places, under DIR (default /; a package's staging directory when packaging):
  PREFIX/lib/systemd/system/snapstack.service    Type=notify, before local-fs-pre.target
  PREFIX/lib/systemd/system/snapstack-blkdeactivate.service
                                                 at a shutdown, holds lvm2's blkdeactivate
                                                 until the daemon has stopped
  PREFIX/lib/systemd/system/snapstack-backup@.service, snapstack-backup@.timer
                                                 scheduled backups of the device the instance names
  PREFIX/lib/udev/rules.d/61-snapstack.rules     hides protected disks and hidden layers
  PREFIX/lib/modules-load.d/snapstack.conf       dm-mod dm-era dm-snapshot loop
  PREFIX/lib/systemd/system-shutdown/snapstack  records a clean shutdown of / for the next boot
  /usr/share/initramfs-tools/hooks/snapstack, scripts/local-top/snapstack
  /usr/lib/dracut/modules.d/90snapstack/         stack / from the initramfs when it is protected,
                                                 made by initramfs-tools or by dracut (protect
                                                 --at-boot runs update-initramfs, or dracut)
  PREFIX/share/doc/snapstack/snapstack.conf.example, backup.conf.example
  /etc/snapstack/snapstack.conf                  the example, only if there is none yet
  SBINDIR/snapstack                              with --binary FILE (e.g. .build/release/snapstack)
and, generated from the --binary FILE (without it they are skipped, with a line saying so):
  PREFIX/share/man/man8/snapstack.8.gz, snapstack-VERB.8.gz    systemd/make-manuals.sh
  PREFIX/share/bash-completion/completions/snapstack
  PREFIX/share/zsh/vendor-completions/_snapstack
  PREFIX/share/fish/vendor_completions.d/snapstack.fish
PREFIX defaults to /usr, SBINDIR to PREFIX/sbin; the unit runs SBINDIR/snapstack.
--state-dir DIR   a state directory other than /var/lib/snapstack: written into the unit
                  (SNAPSTACK_STATE_DIR) and into the udev rules' marker lookups. It must be on
                  the root filesystem, which is mounted before the daemon starts.
--no-reload       do not run `systemctl daemon-reload` and `udevadm control --reload`
                  (they run only when installing into / on a running system).
Then: systemctl enable --now snapstack.service
EOF
}

die() { echo "install.sh: $*" >&2; exit 1; }

root=/
prefix=/usr
sbindir=
binary=
state_dir=/var/lib/snapstack
reload=1
while (($#)); do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --sbindir) sbindir=${2:?--sbindir needs a directory}; shift 2 ;;
        --binary) binary=${2:?--binary needs a file}; shift 2 ;;
        --state-dir) state_dir=${2:?--state-dir needs a directory}; shift 2 ;;
        --no-reload) reload=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
sbindir=${sbindir:-$prefix/sbin}
for path in "$prefix" "$sbindir" "$state_dir"; do
    [[ $path == /* ]] || die "'$path' must be an absolute path"
    # The paths go into a unit file and udev rules, where these would break the syntax.
    [[ $path != *[[:space:]\"\'\\\$%]* ]] || die "'$path' must not contain blanks, quotes, \\, \$ or %"
done
[[ -z $binary || -x $binary ]] || die "--binary '$binary' is not an executable file"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=$(dirname "$here")
dest() { printf '%s%s' "${root%/}" "$1"; }

put() { # put MODE SOURCE-TEXT-FILE TARGET
    install -D -m "$1" "$2" "$(dest "$3")"
    echo "installed $3"
}

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

# The unit, with the binary's path and the state directory.
sed -e "s|^ExecStart=/usr/sbin/snapstack |ExecStart=$sbindir/snapstack |" "$here/snapstack.service" >"$staging/unit"
if [[ $state_dir != /var/lib/snapstack ]]; then
    sed -i "/^\[Service\]/a Environment=SNAPSTACK_STATE_DIR=$state_dir" "$staging/unit"
fi
put 0644 "$staging/unit" "$prefix/lib/systemd/system/snapstack.service"
sed -e "s|/var/lib/snapstack/daemon.lock|$state_dir/daemon.lock|" "$here/snapstack-blkdeactivate.service" >"$staging/barrier"
put 0644 "$staging/barrier" "$prefix/lib/systemd/system/snapstack-blkdeactivate.service"
sed -e "s|^ExecStart=/usr/sbin/snapstack |ExecStart=$sbindir/snapstack |" "$here/snapstack-backup@.service" >"$staging/backup-unit"
put 0644 "$staging/backup-unit" "$prefix/lib/systemd/system/snapstack-backup@.service"
put 0644 "$here/snapstack-backup@.timer" "$prefix/lib/systemd/system/snapstack-backup@.timer"

sed -e "s|/var/lib/snapstack/members/|$state_dir/members/|g" "$source_dir/udev-rules/61-snapstack.rules" >"$staging/rules"
put 0644 "$staging/rules" "$prefix/lib/udev/rules.d/61-snapstack.rules"

put 0644 "$here/modules-load.conf" "$prefix/lib/modules-load.d/snapstack.conf"
sed -e "s|^exec /usr/sbin/snapstack |exec $sbindir/snapstack |" "$here/snapstack.shutdown" >"$staging/shutdown-hook"
put 0755 "$staging/shutdown-hook" "$prefix/lib/systemd/system-shutdown/snapstack"
# initramfs-tools reads its hooks and scripts from /usr/share, whatever the prefix.
sed -e "s|^SNAPSTACK=/usr/sbin/snapstack$|SNAPSTACK=$sbindir/snapstack|" -e "s|^STATE_DIR=/var/lib/snapstack$|STATE_DIR=$state_dir|" \
    "$here/initramfs-tools/hook" >"$staging/initramfs-hook"
put 0755 "$staging/initramfs-hook" /usr/share/initramfs-tools/hooks/snapstack
put 0755 "$here/initramfs-tools/local-top" /usr/share/initramfs-tools/scripts/local-top/snapstack
# dracut reads its modules from /usr/lib/dracut, whatever the prefix.
sed -e "s|^SNAPSTACK_BINARY=/usr/sbin/snapstack$|SNAPSTACK_BINARY=$sbindir/snapstack|" \
    -e "s|^SNAPSTACK_STATE_DIR=/var/lib/snapstack$|SNAPSTACK_STATE_DIR=$state_dir|" \
    "$here/dracut/module-setup.sh" >"$staging/dracut-module-setup"
put 0755 "$staging/dracut-module-setup" /usr/lib/dracut/modules.d/90snapstack/module-setup.sh
put 0755 "$here/dracut/snapstack-pre-mount.sh" /usr/lib/dracut/modules.d/90snapstack/snapstack-pre-mount.sh
put 0755 "$here/dracut/snapstack-pre-pivot.sh" /usr/lib/dracut/modules.d/90snapstack/snapstack-pre-pivot.sh
put 0644 "$here/snapstack.conf.example" "$prefix/share/doc/snapstack/snapstack.conf.example"
put 0644 "$here/backup.conf.example" "$prefix/share/doc/snapstack/backup.conf.example"
if [[ -e $(dest /etc/snapstack/snapstack.conf) ]]; then
    echo "kept /etc/snapstack/snapstack.conf"
else
    put 0644 "$here/snapstack.conf.example" /etc/snapstack/snapstack.conf
fi
if [[ -n $binary ]]; then
    # Stripped, as a package ships it: the initramfs carries it too when / is protected.
    if command -v strip >/dev/null; then
        strip -o "$staging/snapstack" "$binary"
        put 0755 "$staging/snapstack" "$sbindir/snapstack"
    else
        put 0755 "$binary" "$sbindir/snapstack"
    fi

    # Manual pages and completions say what this binary's own help says, so they are made
    # from it here rather than kept in the tree; gzip'd as Debian ships manual pages.
    bash "$here/make-manuals.sh" --binary "$binary" --out "$staging/man"
    for page in "$staging"/man/*.8; do
        gzip -9n <"$page" >"$page.gz"
        put 0644 "$page.gz" "$prefix/share/man/man8/$(basename "$page").gz"
    done
    "$binary" --generate-completion-script bash >"$staging/completion.bash"
    "$binary" --generate-completion-script zsh >"$staging/completion.zsh"
    "$binary" --generate-completion-script fish >"$staging/completion.fish"
    put 0644 "$staging/completion.bash" "$prefix/share/bash-completion/completions/snapstack"
    put 0644 "$staging/completion.zsh" "$prefix/share/zsh/vendor-completions/_snapstack"
    put 0644 "$staging/completion.fish" "$prefix/share/fish/vendor_completions.d/snapstack.fish"
else
    echo "skipped manual pages and shell completions: they are generated from the binary; pass --binary FILE"
fi

if ((reload)) && [[ $(cd "$root" && pwd -P) == / ]]; then
    if [[ -d /run/systemd/system ]]; then systemctl daemon-reload; fi
    if [[ -S /run/udev/control ]]; then udevadm control --reload; fi
fi
