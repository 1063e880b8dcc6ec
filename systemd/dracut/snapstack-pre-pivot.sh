#!/bin/sh
# snapstack's dracut pre-pivot hook, put into the initramfs by 90snapstack/module-setup.sh.
# / is mounted now: the drop-ins snapstack-pre-mount.sh wrote for sysroot.mount and the root's
# fsck unit are removed before switch_root, which keeps /run -- the system's own
# systemd-fsck-root.service must not inherit them. systemd reads its units again at
# switch_root, so no daemon-reload is needed.
if [ -f /run/snapstack/dracut-drop-ins ]; then
    while read -r snapstack_drop_in; do
        rm -f "$snapstack_drop_in"
        rmdir "${snapstack_drop_in%/*}" 2>/dev/null
    done </run/snapstack/dracut-drop-ins
    rm -f /run/snapstack/dracut-drop-ins
    unset snapstack_drop_in
fi
