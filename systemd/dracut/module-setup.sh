#!/bin/bash
# snapstack's dracut module, installed as /usr/lib/dracut/modules.d/90snapstack/ by
# systemd/install.sh. When a protected (or pending) device holds /, it puts into the initramfs
# what the pre-mount hook needs to stack it before / is mounted: the snapstack binary, the
# device-mapper modules, LVM's configuration and the device's record ("plan"), read from
# snapstack's state database now -- the initramfs cannot read it, it lives on /. With no such
# device the module is left out. The same rules as snapstack's initramfs-tools hook.

SNAPSTACK_BINARY=/usr/sbin/snapstack
SNAPSTACK_STATE_DIR=/var/lib/snapstack
# Where the plan goes in the initramfs; the hook reads it there.
SNAPSTACK_PLAN=/etc/snapstack/initramfs-plan.json

# snapstack_plan FILE: writes the plan to FILE and prints the names of its devices (nothing,
# and no FILE, when no protected device holds /); fails when the state cannot be read.
snapstack_plan() {
    "$SNAPSTACK_BINARY" initramfs plan --state-dir "$SNAPSTACK_STATE_DIR" --output "$1"
}

# Included when the plan names a device. A plan that cannot be read includes the module too:
# its install() then fails the dracut run, saying why, rather than leave / silently unstacked.
check() {
    [[ -x $SNAPSTACK_BINARY ]] || return 1
    [[ -e $SNAPSTACK_STATE_DIR/snapstack.db ]] || return 1
    local plan names
    [[ -d $DRACUT_TMPDIR ]] || return 0
    # depends() reads it, to know whether LVM is needed. (dracut's own temporary directory.)
    plan=$DRACUT_TMPDIR/snapstack-plan.json
    rm -f "$plan"
    names=$(snapstack_plan "$plan") || return 0
    [[ -n $names ]]
}

# dm, and lvm when the era metadata (or / itself, adopted) is a logical volume: snapstack
# activates the volume itself, with the LVM built into it, but LVM's udev rules make its node.
depends() {
    local plan=$DRACUT_TMPDIR/snapstack-plan.json
    if [[ -z $DRACUT_TMPDIR || ! -f $plan ]] || grep -Eq '"(eraMetadataPath|adoptedName)" *: *"' "$plan"; then
        echo dm lvm
    else
        echo dm
    fi
    return 0
}

# Not only the modules this machine has loaded now (hostonly): before the first stack, dm-era
# is not loaded. dm-snapshot serves the top device when snapshots exist.
installkernel() {
    hostonly='' instmods dm_mod dm_era dm_snapshot
}

install() {
    local names
    mkdir -p "$initdir${SNAPSTACK_PLAN%/*}"
    # An initramfs that silently left / unstacked would break the change tracking at every
    # boot: a plan that cannot be read fails the dracut run, with snapstack's own reason.
    if ! names=$(snapstack_plan "$initdir$SNAPSTACK_PLAN"); then
        dfatal "snapstack: cannot read which protected devices hold / from $SNAPSTACK_STATE_DIR"
        exit 1
    fi
    if [[ -z $names ]]; then
        # The state changed since check(): nothing to stack, nothing of snapstack's.
        dwarn "snapstack: no protected device holds / any more; the initramfs stacks nothing"
        return 0
    fi
    inst_binary "$SNAPSTACK_BINARY" /usr/sbin/snapstack || {
        dfatal "snapstack: cannot put $SNAPSTACK_BINARY into the initramfs"
        exit 1
    }
    # The era metadata is on an LVM volume: LVM's configuration (lvm's module copies it only
    # when hostonly).
    [[ ! -f /etc/lvm/lvm.conf ]] || inst_simple /etc/lvm/lvm.conf
    inst_multiple -o readlink
    inst_hook pre-mount 50 "$moddir/snapstack-pre-mount.sh"
    inst_hook pre-pivot 50 "$moddir/snapstack-pre-pivot.sh"
    local name
    for name in $names; do
        dinfo "snapstack: the initramfs stacks $name before it mounts /"
    done
}
