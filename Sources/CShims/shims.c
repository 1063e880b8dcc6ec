#include "CShims.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/fiemap.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>

// libdm's levels (lib/log/log.h, not exported): the low bits are the level, higher bits flags.
enum { DM_LEVEL_MASK = 0x0f, DM_LOG_WARN = 4 };

static _Thread_local char captured[4096];
static _Thread_local size_t captured_len;
static _Thread_local int captured_errno;

static void trampoline(int level, const char *file, int line, int dm_errno_or_class,
                       const char *format, ...) {
    (void)file;
    (void)line;
    // Notices, info and debug (and debug's "class") are not failures: keep them out.
    if ((level & DM_LEVEL_MASK) > DM_LOG_WARN)
        return;
    if (dm_errno_or_class != 0)
        captured_errno = dm_errno_or_class;
    if (captured_len + 2 >= sizeof(captured))
        return;
    if (captured_len > 0)
        captured[captured_len++] = '\n';
    va_list args;
    va_start(args, format);
    int n = vsnprintf(captured + captured_len, sizeof(captured) - captured_len, format, args);
    va_end(args);
    if (n > 0) {
        size_t room = sizeof(captured) - captured_len - 1;
        captured_len += (size_t)n < room ? (size_t)n : room;
    }
    captured[captured_len] = '\0';
}

void snapstack_dm_log_install(void) { dm_log_with_errno_init(trampoline); }

void snapstack_dm_log_reset(void) {
    captured_len = 0;
    captured[0] = '\0';
    captured_errno = 0;
}

const char *snapstack_dm_log_text(void) { return captured; }
int snapstack_dm_log_errno(void) { return captured_errno; }

const char *snapstack_dm_names_name(const struct dm_names *names) { return names->name; }

struct dm_names *snapstack_dm_names_next(struct dm_names *names) {
    return names->next ? (struct dm_names *)((char *)names + names->next) : NULL;
}

const char *snapstack_dm_versions_name(const struct dm_versions *versions) { return versions->name; }

struct dm_versions *snapstack_dm_versions_next(struct dm_versions *versions) {
    return versions->next ? (struct dm_versions *)((char *)versions + versions->next) : NULL;
}

const int snapstack_O_DIRECT = O_DIRECT;
const int snapstack_SEEK_DATA = SEEK_DATA;
const int snapstack_SEEK_HOLE = SEEK_HOLE;

unsigned int snapstack_major(dev_t dev) { return major(dev); }
unsigned int snapstack_minor(dev_t dev) { return minor(dev); }
dev_t snapstack_makedev(unsigned int maj, unsigned int min) { return makedev(maj, min); }

int snapstack_blkgetsize64(int fd, uint64_t *bytes) { return ioctl(fd, BLKGETSIZE64, bytes); }
int snapstack_blksszget(int fd, int *bytes) { return ioctl(fd, BLKSSZGET, bytes); }
int snapstack_blkpbszget(int fd, unsigned int *bytes) { return ioctl(fd, BLKPBSZGET, bytes); }

// ---- loop devices --------------------------------------------------------------------------
#include <linux/loop.h>

const uint32_t snapstack_LO_FLAGS_READ_ONLY = LO_FLAGS_READ_ONLY;
const uint32_t snapstack_LO_FLAGS_AUTOCLEAR = LO_FLAGS_AUTOCLEAR;
const uint32_t snapstack_LO_FLAGS_DIRECT_IO = LO_FLAGS_DIRECT_IO;
const int snapstack_LO_NAME_SIZE = LO_NAME_SIZE;

static void set_file_name(struct loop_info64 *info, const char *file_name) {
    if (file_name != NULL)
        strncpy((char *)info->lo_file_name, file_name, LO_NAME_SIZE - 1);
    info->lo_file_name[LO_NAME_SIZE - 1] = '\0';
}

int snapstack_loop_ctl_get_free(int control_fd) { return ioctl(control_fd, LOOP_CTL_GET_FREE); }

int snapstack_loop_configure(int loop_fd, int file_fd, uint32_t flags, const char *file_name) {
    struct loop_config config;
    memset(&config, 0, sizeof(config));
    config.fd = (__u32)file_fd;
    config.block_size = 0;
    config.info.lo_flags = flags;
    set_file_name(&config.info, file_name);
    return ioctl(loop_fd, LOOP_CONFIGURE, &config);
}

int snapstack_loop_set_fd(int loop_fd, int file_fd) {
    return ioctl(loop_fd, LOOP_SET_FD, (unsigned long)file_fd);
}

int snapstack_loop_set_status64(int loop_fd, uint32_t flags, const char *file_name) {
    struct loop_info64 info;
    memset(&info, 0, sizeof(info));
    info.lo_flags = flags;
    set_file_name(&info, file_name);
    return ioctl(loop_fd, LOOP_SET_STATUS64, &info);
}

int snapstack_loop_set_direct_io(int loop_fd, int on) {
    return ioctl(loop_fd, LOOP_SET_DIRECT_IO, (unsigned long)(on != 0));
}

int snapstack_loop_get_flags(int loop_fd, uint32_t *flags) {
    struct loop_info64 info;
    memset(&info, 0, sizeof(info));
    int result = ioctl(loop_fd, LOOP_GET_STATUS64, &info);
    if (result == 0)
        *flags = info.lo_flags;
    return result;
}

int snapstack_loop_clr_fd(int loop_fd) { return ioctl(loop_fd, LOOP_CLR_FD, 0); }
int snapstack_loop_set_capacity(int loop_fd) { return ioctl(loop_fd, LOOP_SET_CAPACITY, 0); }

// ---- file allocation -----------------------------------------------------------------------
int snapstack_fs_type(const char *path, int64_t *type) {
    struct statfs result;
    if (statfs(path, &result) != 0) return -1;
    *type = (int64_t)result.f_type;
    return 0;
}

int snapstack_fallocate(int fd, int mode, int64_t offset, int64_t length) {
    return fallocate(fd, mode, (off_t)offset, (off_t)length);
}
int snapstack_fully_written(int fd, uint64_t length) {
    enum { batch = 64 };
    struct {
        struct fiemap map;
        struct fiemap_extent extents[batch];
    } request;
    uint64_t next = 0;  // the first byte not yet seen in a written extent
    while (next < length) {
        memset(&request, 0, sizeof request);
        request.map.fm_start = next;
        request.map.fm_length = length - next;
        request.map.fm_flags = FIEMAP_FLAG_SYNC;
        request.map.fm_extent_count = batch;
        if (ioctl(fd, FS_IOC_FIEMAP, &request.map) != 0) return -1;
        if (request.map.fm_mapped_extents == 0) return 0;  // a hole up to the end
        for (uint32_t i = 0; i < request.map.fm_mapped_extents; i++) {
            const struct fiemap_extent *extent = &request.extents[i];
            if (extent->fe_logical > next) return 0;  // a hole before this extent
            // Shared (reflinked) or encoded extents are copied or re-encoded on overwrite.
            if (extent->fe_flags & (FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC |
                                    FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_NOT_ALIGNED |
                                    FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_ENCODED))
                return 0;
            uint64_t end = extent->fe_logical + extent->fe_length;
            if (end > next) next = end;
            if (extent->fe_flags & FIEMAP_EXTENT_LAST) return next >= length;
        }
    }
    return 1;
}

const int snapstack_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
const int snapstack_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;

// ---- copy-out ------------------------------------------------------------------------------
int snapstack_set_no_copy_on_write(int fd) {
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) return -1;
    if (flags & FS_NOCOW_FL) return 0;
    flags |= FS_NOCOW_FL;
    return ioctl(fd, FS_IOC_SETFLAGS, &flags);
}

int snapstack_has_no_copy_on_write(int fd) {
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) return -1;
    return (flags & FS_NOCOW_FL) ? 1 : 0;
}

int snapstack_blkzeroout(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = {offset, length};
    return ioctl(fd, BLKZEROOUT, range);
}

int snapstack_sync_file_range(int fd, int64_t offset, int64_t length, unsigned int flags) {
    return sync_file_range(fd, (off64_t)offset, (off64_t)length, flags);
}
const unsigned int snapstack_SYNC_FILE_RANGE_WAIT_BEFORE = SYNC_FILE_RANGE_WAIT_BEFORE;
const unsigned int snapstack_SYNC_FILE_RANGE_WRITE = SYNC_FILE_RANGE_WRITE;
const unsigned int snapstack_SYNC_FILE_RANGE_WAIT_AFTER = SYNC_FILE_RANGE_WAIT_AFTER;

int snapstack_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int snapstack_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}
