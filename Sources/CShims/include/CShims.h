#ifndef SNAPSTACK_CSHIMS_H
#define SNAPSTACK_CSHIMS_H

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

#endif
