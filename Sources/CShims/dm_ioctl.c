// Device-mapper ioctls issued directly on /dev/mapper/control, without libdm: libdm keeps
// process-global state (its node-operation stack, counters), so its tasks must run one at a
// time, while these calls only touch the buffer they build and may run on many threads at once.
#include "CShims.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/dm-ioctl.h>

static void dm_header(struct dm_ioctl *dmi, size_t size, const char *name) {
    memset(dmi, 0, size);
    // The oldest interface version that has these commands; the kernel answers with its own.
    dmi->version[0] = DM_VERSION_MAJOR;
    dmi->version[1] = 0;
    dmi->version[2] = 0;
    dmi->data_size = (uint32_t)size;
    dmi->data_start = sizeof(struct dm_ioctl);
    strncpy(dmi->name, name, sizeof(dmi->name) - 1);
}

int snapstack_dm_suspend(int control_fd, const char *name, int suspend, int skip_lockfs, int no_flush,
                         uint32_t event_nr) {
    if (strlen(name) >= DM_NAME_LEN) {
        errno = ENAMETOOLONG;
        return -1;
    }
    struct dm_ioctl dmi;
    dm_header(&dmi, sizeof(dmi), name);
    if (suspend) {
        dmi.flags |= DM_SUSPEND_FLAG;
        if (skip_lockfs) dmi.flags |= DM_SKIP_LOCKFS_FLAG;
        if (no_flush) dmi.flags |= DM_NOFLUSH_FLAG;
    } else {
        // The kernel puts event_nr into the change uevent as DM_COOKIE.
        dmi.event_nr = event_nr;
    }
    return ioctl(control_fd, DM_DEV_SUSPEND, &dmi);
}

int snapstack_dm_message(int control_fd, const char *name, uint64_t sector, const char *message) {
    if (strlen(name) >= DM_NAME_LEN) {
        errno = ENAMETOOLONG;
        return -1;
    }
    size_t length = strlen(message) + 1;
    // Room for the header, the message and the target's answer (unused here).
    size_t size = sizeof(struct dm_ioctl) + sizeof(struct dm_target_msg) + length + 1024;
    struct dm_ioctl *dmi = malloc(size);
    if (dmi == NULL) return -1;
    dm_header(dmi, size, name);
    struct dm_target_msg *msg = (struct dm_target_msg *)((char *)dmi + dmi->data_start);
    msg->sector = sector;
    memcpy(msg->message, message, length);
    int result = ioctl(control_fd, DM_TARGET_MSG, dmi);
    int saved = errno;
    free(dmi);
    errno = saved;
    return result;
}
