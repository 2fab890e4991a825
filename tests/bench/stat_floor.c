/* The floor under a snapshot: lstat every file of the 10,000-file tree that
 * tests/bench/history.sh builds (100 directories m00..m99 of 100 files f00..f99.rs),
 * relative to each open directory, on 1 then 2 threads, and nothing else.
 *
 *   gcc -O2 -pthread tests/bench/stat_floor.c -o /tmp/stat_floor
 *   /tmp/stat_floor WORKDIR/tree/src          (WORKDIR as given to history.sh)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *src;
static int nthreads;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void *work(void *arg) {
    long id = (long)arg;
    char dir[4096], name[16];
    struct stat st;
    for (int d = (int)id; d < 100; d += nthreads) {
        snprintf(dir, sizeof dir, "%s/m%02d", src, d);
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) { perror(dir); continue; }
        for (int f = 0; f < 100; f++) {
            snprintf(name, sizeof name, "f%02d.rs", f);
            fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW);
        }
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s TREE/src\n", argv[0]); return 2; }
    src = argv[1];
    for (nthreads = 1; nthreads <= 2; nthreads++) {
        pthread_t th[2];
        double t0 = now_ms();
        for (long i = 0; i < nthreads; i++) pthread_create(&th[i], NULL, work, (void *)i);
        for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
        printf("%d thread(s): %.2f ms for 10,000 lstat\n", nthreads, now_ms() - t0);
    }
    return 0;
}
