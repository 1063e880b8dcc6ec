/*
 * Benchmark helper (not a test): the kernel's own floor for the freeze window of a set of
 * device-mapper devices on this machine. It does nothing but what the window must hold, with
 * nothing of snapstack's: from one thread per device, started and parked beforehand,
 * DM_DEV_SUSPEND (nolockfs) of every device at once, then a resume of every device at once
 * (which swaps in an inactive table where one is loaded), and prints the microseconds from
 * the first suspend issued to the last resume returned.
 *
 *   dm-suspend-floor NAME...
 *
 * Exit status 1 when an ioctl fails; every device that was suspended is resumed first.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#define MAX_DEVICES 256

static int control;
static const char *names[MAX_DEVICES];
static int failed[MAX_DEVICES];
static sem_t start[MAX_DEVICES], finished;

static int dm_suspend(const char *name, int suspend)
{
    struct dm_ioctl io;
    memset(&io, 0, sizeof io);
    io.version[0] = DM_VERSION_MAJOR;
    io.data_size = io.data_start = sizeof io;
    strncpy(io.name, name, sizeof io.name - 1);
    if (suspend)
        io.flags = DM_SUSPEND_FLAG | DM_SKIP_LOCKFS_FLAG;
    for (;;) {
        if (ioctl(control, DM_DEV_SUSPEND, &io) == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* Two jobs per thread: its device's suspend, then its resume. */
static void *worker(void *argument)
{
    long index = (long)argument;
    sem_wait(&start[index]);
    failed[index] = dm_suspend(names[index], 1) != 0;
    sem_post(&finished);
    sem_wait(&start[index]);
    if (!failed[index] && dm_suspend(names[index], 0) != 0 && dm_suspend(names[index], 0) != 0)
        fprintf(stderr, "dm-suspend-floor: resume of %s failed: %s\n", names[index], strerror(errno));
    sem_post(&finished);
    return NULL;
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    int count = argc - 1, status = 0;
    pthread_t threads[MAX_DEVICES];
    if (count < 1 || count > MAX_DEVICES) {
        fprintf(stderr, "usage: dm-suspend-floor NAME... (1 to %d dm devices)\n", MAX_DEVICES);
        return 64;
    }
    control = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    if (control < 0) {
        perror("dm-suspend-floor: /dev/mapper/control");
        return 1;
    }
    sem_init(&finished, 0, 0);
    for (long i = 0; i < count; i++) {
        names[i] = argv[i + 1];
        sem_init(&start[i], 0, 0);
        pthread_create(&threads[i], NULL, worker, (void *)i);
    }
    double first = now_us();
    for (int i = 0; i < count; i++)
        sem_post(&start[i]);
    for (int i = 0; i < count; i++)
        sem_wait(&finished);
    for (int i = 0; i < count; i++)
        sem_post(&start[i]);
    for (int i = 0; i < count; i++)
        sem_wait(&finished);
    double last = now_us();
    for (int i = 0; i < count; i++) {
        pthread_join(threads[i], NULL);
        if (failed[i]) {
            fprintf(stderr, "dm-suspend-floor: suspend of %s failed\n", names[i]);
            status = 1;
        }
    }
    printf("%.0f\n", last - first);
    return status;
}
