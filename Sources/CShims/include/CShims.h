#ifndef SNAPSTACK_CSHIMS_H
#define SNAPSTACK_CSHIMS_H

#include <spawn.h>
#include <stdint.h>
#include <sys/types.h>
#include <libdevmapper.h>

// ---- libdm logging -------------------------------------------------------------------------
// libdm reports failures through a process-global, variadic log callback that Swift cannot
// implement. The trampoline formats each message and keeps the errors and warnings of the
// current thread in a thread-local buffer, so that the Swift caller can put libdm's own words
// into the error it throws instead of letting libdm print to stderr behind its back.

/// Installs the trampoline (idempotent). Until then libdm logs to stderr.
void snapstack_dm_log_install(void);
/// Forgets what the calling thread has captured so far.
void snapstack_dm_log_reset(void);
/// The captured messages of the calling thread, separated by "\n" ("" when none).
const char *snapstack_dm_log_text(void);
/// The last non-zero errno libdm attached to a captured message on this thread, or 0.
int snapstack_dm_log_errno(void);

// ---- flexible array members the importer drops -------------------------------------------
const char *snapstack_dm_names_name(const struct dm_names *names);
/// The next entry, or NULL after the last one.
struct dm_names *snapstack_dm_names_next(struct dm_names *names);
const char *snapstack_dm_versions_name(const struct dm_versions *versions);
struct dm_versions *snapstack_dm_versions_next(struct dm_versions *versions);

// ---- kernel constants and macros Glibc's module map hides --------------------------------
extern const int snapstack_O_DIRECT;
extern const int snapstack_SEEK_DATA;
extern const int snapstack_SEEK_HOLE;

unsigned int snapstack_major(dev_t dev);
unsigned int snapstack_minor(dev_t dev);
dev_t snapstack_makedev(unsigned int major, unsigned int minor);

/// BLKGETSIZE64: the size of a block device in bytes. Returns 0 or -1 with errno set.
int snapstack_blkgetsize64(int fd, uint64_t *bytes);
/// BLKSSZGET: the logical sector size. Returns 0 or -1 with errno set.
int snapstack_blksszget(int fd, int *bytes);
/// BLKPBSZGET: the physical sector size. Returns 0 or -1 with errno set.
int snapstack_blkpbszget(int fd, unsigned int *bytes);

// ---- loop devices (linux/loop.h) -----------------------------------------------------------
// The loop ioctls take kernel structs whose layout Swift should not have to mirror; these
// wrappers fill them in C. Each returns what ioctl returns (-1 with errno set on failure).

extern const uint32_t snapstack_LO_FLAGS_READ_ONLY;
extern const uint32_t snapstack_LO_FLAGS_AUTOCLEAR;
extern const uint32_t snapstack_LO_FLAGS_DIRECT_IO;
/// LO_NAME_SIZE: lo_file_name holds this many bytes including the terminating NUL.
extern const int snapstack_LO_NAME_SIZE;

/// LOOP_CTL_GET_FREE on /dev/loop-control: the index of a free loop device (made if needed).
int snapstack_loop_ctl_get_free(int control_fd);
/// LOOP_CONFIGURE (kernel >= 5.8): binds `file_fd` with `flags` and `file_name` (truncated to
/// LO_NAME_SIZE - 1 bytes) in one step; block size 0 keeps the default.
int snapstack_loop_configure(int loop_fd, int file_fd, uint32_t flags, const char *file_name);
/// LOOP_SET_FD: the pre-5.8 bind. Read-only follows the backing descriptor's access mode.
int snapstack_loop_set_fd(int loop_fd, int file_fd);
/// LOOP_SET_STATUS64 with `flags` (only AUTOCLEAR and PARTSCAN are settable) and `file_name`.
int snapstack_loop_set_status64(int loop_fd, uint32_t flags, const char *file_name);
/// LOOP_SET_DIRECT_IO (kernel >= 4.10).
int snapstack_loop_set_direct_io(int loop_fd, int on);
/// LOOP_GET_STATUS64, reduced to lo_flags. Fails with ENXIO when the device is not bound.
int snapstack_loop_get_flags(int loop_fd, uint32_t *flags);
/// LOOP_CLR_FD.
int snapstack_loop_clr_fd(int loop_fd);
/// LOOP_SET_CAPACITY: re-reads the backing file's size.
int snapstack_loop_set_capacity(int loop_fd);

// ---- file allocation -----------------------------------------------------------------------
/// fallocate(2), which Glibc's module map does not show to Swift.
int snapstack_fallocate(int fd, int mode, int64_t offset, int64_t length);

/// Whether every byte of [0, length) of the open file `fd` lies in an extent the file system
/// has allocated and written, to be overwritten in place (FS_IOC_FIEMAP, after syncing: no hole,
/// no unwritten, delayed, unknown, shared or encoded extent, nothing inline): 1 if so, 0 if not,
/// -1 with errno set when the file system cannot tell (EOPNOTSUPP: no FIEMAP).
int snapstack_fully_written(int fd, uint64_t length);
/// statfs(2)'s f_type for `path` into `type` (sys/vfs.h is not in Glibc's module map).
int snapstack_fs_type(const char *path, int64_t *type);
/// Sets FS_NOCOW_FL (`chattr +C`) on an empty file: on btrfs its blocks are then overwritten
/// in place. Returns 0 or -1 with errno set (ENOTTY or EOPNOTSUPP where there is no such flag).
int snapstack_set_no_copy_on_write(int fd);
/// Whether FS_NOCOW_FL is set: 1, 0, or -1 with errno set.
int snapstack_has_no_copy_on_write(int fd);
extern const int snapstack_FALLOC_FL_KEEP_SIZE;
extern const int snapstack_FALLOC_FL_PUNCH_HOLE;

// ---- copy-out ------------------------------------------------------------------------------
/// BLKZEROOUT: makes [offset, offset + length) of a block device read as zeros (the device
/// may unmap or write zeros). Returns 0 or -1 with errno set.
int snapstack_blkzeroout(int fd, uint64_t offset, uint64_t length);
/// sync_file_range(2), which Glibc's module map does not show to Swift.
int snapstack_sync_file_range(int fd, int64_t offset, int64_t length, unsigned int flags);
extern const unsigned int snapstack_SYNC_FILE_RANGE_WAIT_BEFORE;
extern const unsigned int snapstack_SYNC_FILE_RANGE_WRITE;
extern const unsigned int snapstack_SYNC_FILE_RANGE_WAIT_AFTER;

// ---- device-mapper ioctls without libdm (dm_ioctl.c) ----------------------------------------
/// DM_DEV_SUSPEND on `control_fd` (/dev/mapper/control): suspends `name` (`suspend` != 0; with
/// DM_SKIP_LOCKFS_FLAG and DM_NOFLUSH_FLAG as asked) or resumes it, swapping in its inactive
/// table if one is loaded; a resume carries `event_nr` (udev cookie and flags) into its uevent.
/// Safe to call from several threads at once. Returns 0, or -1 with errno set.
int snapstack_dm_suspend(int control_fd, const char *name, int suspend, int skip_lockfs, int no_flush,
                         uint32_t event_nr);
/// DM_TARGET_MSG: sends `message` to the target at `sector` of `name`, ignoring any answer.
/// Safe to call from several threads at once. Returns 0, or -1 with errno set.
int snapstack_dm_message(int control_fd, const char *name, uint64_t sector, const char *message);

// ---- processes -----------------------------------------------------------------------------
/// pipe2(fds, O_CLOEXEC), which Glibc's module map does not show to Swift: both ends close at
/// exec, with no moment in which another thread's spawn could inherit them.
int snapstack_pipe_cloexec(int fds[2]);
/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34): the child closes every descriptor
/// from `from` up, so that none this process opened without close-on-exec (a lock, another
/// thread's pipe) lives on in it.
int snapstack_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);

#endif
