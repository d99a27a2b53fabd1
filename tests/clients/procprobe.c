/*
 * procprobe: what a /proc reader sees, call by call, for tests/test_proc_shim.py.
 *
 * Each argument is one probe, `name` or `name:arg[:arg]`, run in order; each prints one
 * line (a listing prints one line per entry, indented). Errors print as errno names
 * (ENOENT), so the expected output is the same on any host.
 *
 *   ls:DIR  pids:DIR  names:DIR    readdir's entries / only the numeric ones / the others
 *   scandir:DIR  readdir_r:DIR  seek:DIR  rewind:DIR  fdopendir:DIR
 *   cat:PATH  fopen:PATH  open2:PATH  openat:DIR:REL  fstatat:DIR:REL  relcat:REL
 *   stat:PATH  lstat:PATH  statx:PATH  access:PATH:r|w  readlink:PATH  write:PATH
 *   chdir:PATH  ioprio:PID  getprio:PID  setprio:PID:N  sched:PID  kill:PID:SIG
 *   self  bad  syscall  fork  thread  stress:N  sleep:SECONDS  bench:N[:ROOT]
 *
 * bench:N[:ROOT] times N refreshes of what iotop-c does (ROOT instead of /proc: the same
 * work on a directory directly, the reference without the shim).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int __open_2(const char *path, int flags);

static const char *err(int e)
{
    const char *name = strerrorname_np(e);
    return name ? name : "E?";
}

static int numeric(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static char type_letter(unsigned char t)
{
    return t == DT_DIR ? 'd' : t == DT_REG ? 'f' : t == DT_LNK ? 'l' : t == DT_UNKNOWN ? 'u'
                                                                                      : '?';
}

/* Print a file's content on one line, newlines and NULs shown as \n and \0. */
static void show(const char *what, const char *arg, const char *buf, ssize_t n)
{
    printf("%s %s: ", what, arg);
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n')
            fputs("\\n", stdout);
        else if (buf[i] == '\0')
            fputs("\\0", stdout);
        else
            putchar(buf[i]);
    }
    putchar('\n');
}

static void read_fd(const char *what, const char *arg, int fd)
{
    if (fd < 0) {
        printf("%s %s: error %s\n", what, arg, err(errno));
        return;
    }
    static char buf[1 << 16];
    ssize_t n, got = 0;
    while ((n = read(fd, buf + got, sizeof buf - (size_t)got)) > 0)
        got += n;
    close(fd);
    show(what, arg, buf, got);
}

static const char *kind(mode_t m)
{
    return S_ISDIR(m) ? "dir" : S_ISREG(m) ? "file" : S_ISLNK(m) ? "link" : "other";
}

static void ls(const char *dir, int which) /* 0 all, 1 pids, 2 names */
{
    DIR *d = opendir(dir);
    if (!d) {
        printf("ls %s: error %s\n", dir, err(errno));
        return;
    }
    struct dirent *e;
    if (which == 0) {
        printf("ls %s:\n", dir);
        while ((e = readdir(d)))
            printf("  %s %c\n", e->d_name, type_letter(e->d_type));
    } else {
        printf("%s %s:", which == 1 ? "pids" : "names", dir);
        while ((e = readdir(d)))
            if (numeric(e->d_name) == (which == 1))
                printf(" %s%s", e->d_name, which == 1 && e->d_type != DT_DIR ? "(!dir)" : "");
        putchar('\n');
    }
    closedir(d);
}

static int count(DIR *d)
{
    int n = 0;
    while (readdir(d))
        n++;
    return n;
}

static void probe_scandir(const char *dir)
{
    struct dirent **list;
    int n = scandir(dir, &list, NULL, alphasort);
    if (n < 0) {
        printf("scandir %s: error %s\n", dir, err(errno));
        return;
    }
    printf("scandir %s:", dir);
    for (int i = 0; i < n; i++) {
        printf(" %s", list[i]->d_name);
        free(list[i]);
    }
    free(list);
    putchar('\n');
}

static void probe_readdir_r(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        printf("readdir_r %s: error %s\n", dir, err(errno));
        return;
    }
    struct dirent entry, *result;
    int pids = 0, all = 0;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    while (readdir_r(d, &entry, &result) == 0 && result) {
#pragma GCC diagnostic pop
        all++;
        pids += numeric(entry.d_name);
    }
    closedir(d);
    printf("readdir_r %s: %d entries, %d pids\n", dir, all, pids);
}

static void probe_seek(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        printf("seek %s: error %s\n", dir, err(errno));
        return;
    }
    for (int i = 0; i < 3; i++)
        readdir(d);
    long pos = telldir(d);
    struct dirent *e = readdir(d);
    char first[256];
    snprintf(first, sizeof first, "%s", e ? e->d_name : "(end)");
    for (int i = 0; i < 5; i++)
        readdir(d);
    seekdir(d, pos);
    e = readdir(d);
    printf("seek %s: %s\n", dir, e && !strcmp(e->d_name, first) ? "same" : "differs");
    closedir(d);
}

static void probe_rewind(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        printf("rewind %s: error %s\n", dir, err(errno));
        return;
    }
    int a = count(d);
    rewinddir(d);
    int b = count(d);
    closedir(d);
    printf("rewind %s: %s\n", dir, a == b && a > 0 ? "same" : "differs");
}

static void probe_fdopendir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    if (!d) {
        printf("fdopendir %s: error %s\n", dir, err(errno));
        return;
    }
    printf("fdopendir %s:", dir);
    struct dirent *e;
    while ((e = readdir(d)))
        if (numeric(e->d_name) || e->d_name[0] == '.')
            printf(" %s", e->d_name);
    putchar('\n');
    closedir(d);
}

static void probe_stat(const char *what, const char *path)
{
    struct stat st;
    int rc = !strcmp(what, "lstat") ? lstat(path, &st) : stat(path, &st);
    if (rc)
        printf("%s %s: error %s\n", what, path, err(errno));
    else
        printf("%s %s: %s\n", what, path, kind(st.st_mode));
}

static void probe_statx(const char *path)
{
    struct statx sx;
    if (statx(AT_FDCWD, path, 0, STATX_TYPE, &sx))
        printf("statx %s: error %s\n", path, err(errno));
    else
        printf("statx %s: %s\n", path, kind(sx.stx_mode));
}

static void probe_at(const char *what, const char *dir, const char *rel)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    char label[512];
    snprintf(label, sizeof label, "%s %s", dir, rel);
    if (dfd < 0) {
        printf("%s %s: error %s\n", what, label, err(errno));
        return;
    }
    if (!strcmp(what, "openat")) {
        read_fd(what, label, openat(dfd, rel, O_RDONLY));
    } else {
        struct stat st;
        if (fstatat(dfd, rel, &st, 0))
            printf("%s %s: error %s\n", what, label, err(errno));
        else
            printf("%s %s: %s\n", what, label, kind(st.st_mode));
    }
    close(dfd);
}

static void probe_fopen(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("fopen %s: error %s\n", path, err(errno));
        return;
    }
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    show("fopen", path, buf, (ssize_t)n);
}

static void probe_pid_calls(const char *what, const char *arg, const char *arg2)
{
    pid_t pid = (pid_t)atoi(arg);
    errno = 0;
    if (!strcmp(what, "ioprio")) {
        long v = syscall(SYS_ioprio_get, 1 /* IOPRIO_WHO_PROCESS */, pid);
        if (v < 0)
            printf("ioprio %s: error %s\n", arg, err(errno));
        else
            printf("ioprio %s: %ld\n", arg, v);
    } else if (!strcmp(what, "getprio")) {
        int v = getpriority(PRIO_PROCESS, (id_t)pid);
        if (v == -1 && errno)
            printf("getprio %s: error %s\n", arg, err(errno));
        else
            printf("getprio %s: %d\n", arg, v);
    } else if (!strcmp(what, "setprio")) {
        int rc = setpriority(PRIO_PROCESS, (id_t)pid, arg2 ? atoi(arg2) : 0);
        printf("setprio %s: %s\n", arg, rc ? err(errno) : "ok");
    } else if (!strcmp(what, "sched")) {
        int policy = sched_getscheduler(pid);
        int e1 = errno;
        struct sched_param sp = {.sched_priority = -1};
        int rc = sched_getparam(pid, &sp);
        if (policy < 0 || rc < 0)
            printf("sched %s: error %s %s\n", arg, err(e1), err(errno));
        else
            printf("sched %s: policy=%d rt_priority=%d\n", arg, policy, sp.sched_priority);
    } else if (!strcmp(what, "kill")) {
        int rc = kill(pid, arg2 ? atoi(arg2) : 0);
        printf("kill %s %s: %s\n", arg, arg2 ? arg2 : "0", rc ? err(errno) : "ok");
    }
}

/* NULL and bad pointers: libc answers (EFAULT), nothing crashes. (Not opendir(NULL):
 * glibc's own opendir reads the name before anything else.) */
static void probe_bad(void)
{
    /* volatile: the compiler must not see (and refuse) the NULLs at compile time */
    const char *volatile bad = (const char *)(uintptr_t)8, *volatile nothing = NULL;
    struct stat *volatile no_buf = NULL;
    struct stat st;
    errno = 0;
    int a = open(nothing, O_RDONLY);
    int ea = errno;
    int b = stat(bad, &st);
    int eb = errno;
    int c = open(bad, O_RDONLY);
    int ec = errno;
    int d = access(bad, F_OK);
    int ed = errno;
    int e = stat("/proc/loadavg", no_buf);
    int ee = errno;
    int f = stat("/proc/self/status", (struct stat *)(uintptr_t)8);
    int ef = errno;
    printf("bad: open=%d %s stat=%d %s open=%d %s access=%d %s stat-buf=%d %s %d %s\n", a,
           err(ea), b, err(eb), c, err(ec), d, err(ed), e, err(ee), f, err(ef));
}

static void probe_syscall(void)
{
    long a = syscall(SYS_getpid), b = getpid();
    long t = syscall(SYS_gettid);
    char buf[8];
    long n = syscall(SYS_read, -1, buf, sizeof buf);
    printf("syscall: getpid %s gettid %s read(-1) %ld %s\n", a == b ? "same" : "differs",
           t == gettid() ? "same" : "differs", n, err(errno));
}

static int listed(pid_t pid)
{
    char name[16];
    snprintf(name, sizeof name, "%d", pid);
    DIR *d = opendir("/proc");
    struct dirent *e;
    int found = 0;
    while (d && (e = readdir(d)))
        found |= !strcmp(e->d_name, name);
    if (d)
        closedir(d);
    return found;
}

static int readable(pid_t pid, const char *file)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, file);
    int fd = open(path, O_RDONLY);
    if (fd >= 0)
        close(fd);
    return fd >= 0;
}

/* After fork the child is a new caller: its own pid is listed, its parent's is real. */
static void probe_fork(void)
{
    pid_t parent = getpid();
    int before = readable(parent, "status");
    pid_t child = fork();
    if (child == 0) {
        printf("fork child: self-listed=%d parent-listed=%d parent-readable=%d\n",
               listed(getpid()), listed(parent), readable(parent, "status"));
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    printf("fork parent: self-readable=%d child-readable-after-exit=%d\n", before,
           readable(child, "status"));
}

static pid_t other_tid;
static pthread_barrier_t barrier;

static void *thread_main(void *arg)
{
    (void)arg;
    other_tid = gettid();
    int own = readable(gettid(), "status");
    printf("thread: own-tid-readable=%d\n", own);
    fflush(stdout);
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier);
    return NULL;
}

static void probe_thread(void)
{
    pthread_t t;
    pthread_barrier_init(&barrier, NULL, 2);
    pthread_create(&t, NULL, thread_main, NULL);
    pthread_barrier_wait(&barrier);
    printf("thread: other-tid-readable=%d other-tid-listed=%d\n", readable(other_tid, "status"),
           listed(other_tid));
    pthread_barrier_wait(&barrier);
    pthread_join(t, NULL);
}

/* Threads listing /proc and task/ directories at once: every listing must be whole. */
static int stress_rounds;
static atomic_int stress_bad;

static void *stress_main(void *arg)
{
    int expect = *(int *)arg;
    for (int r = 0; r < stress_rounds; r++) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        int pids = 0;
        while (d && (e = readdir(d))) {
            if (!numeric(e->d_name))
                continue;
            pids++;
            char path[300];
            snprintf(path, sizeof path, "/proc/%s/task", e->d_name);
            DIR *t = opendir(path);
            int tids = 0;
            struct dirent *te;
            while (t && (te = readdir(t)))
                tids += numeric(te->d_name);
            if (t)
                closedir(t);
            if (!t || tids < 1)
                atomic_fetch_add(&stress_bad, 1);
        }
        if (d)
            closedir(d);
        if (pids != expect)
            atomic_fetch_add(&stress_bad, 1);
    }
    return NULL;
}

static void probe_stress(int rounds)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int expect = 0;
    while (d && (e = readdir(d)))
        expect += numeric(e->d_name);
    if (d)
        closedir(d);
    stress_rounds = rounds;
    pthread_t threads[6];
    for (int i = 0; i < 6; i++)
        pthread_create(&threads[i], NULL, stress_main, &expect);
    for (int i = 0; i < 6; i++)
        pthread_join(threads[i], NULL);
    printf("stress: pids=%d bad=%d\n", expect, atomic_load(&stress_bad));
}

static double now(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* What iotop-c does each refresh: list /proc; for each pid read cmdline and status and
 * list task/. Prints the best and median refresh in ms, wall and CPU (this process's). */
static void probe_bench(int rounds, const char *root)
{
    static char buf[8192];
    double wall[64], cpu[64], user[64];
    int tasks = 0, threads = 0;
    if (rounds > 64)
        rounds = 64;
    for (int r = 0; r < rounds; r++) {
        double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
        struct rusage ru0, ru1;
        getrusage(RUSAGE_SELF, &ru0);
        tasks = threads = 0;
        DIR *d = opendir(root);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!numeric(e->d_name))
                continue;
            char path[600];
            const char *files[] = {"cmdline", "status"};
            for (int i = 0; i < 2; i++) {
                snprintf(path, sizeof path, "%s/%s/%s", root, e->d_name, files[i]);
                int fd = open(path, O_RDONLY);
                if (fd >= 0) {
                    while (read(fd, buf, sizeof buf) > 0)
                        ;
                    close(fd);
                }
            }
            snprintf(path, sizeof path, "%s/%s/task", root, e->d_name);
            DIR *t = opendir(path);
            struct dirent *te;
            while (t && (te = readdir(t)))
                threads += numeric(te->d_name);
            if (t)
                closedir(t);
            tasks++;
        }
        if (d)
            closedir(d);
        wall[r] = (now(CLOCK_MONOTONIC) - w0) * 1e3;
        cpu[r] = (now(CLOCK_PROCESS_CPUTIME_ID) - c0) * 1e3;
        getrusage(RUSAGE_SELF, &ru1);
        user[r] = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) * 1e3 +
                  (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e3;
    }
    qsort(wall, (size_t)rounds, sizeof *wall, by_value);
    qsort(cpu, (size_t)rounds, sizeof *cpu, by_value);
    qsort(user, (size_t)rounds, sizeof *user, by_value);
    printf("bench: tasks=%d threads=%d wall_ms_best=%.2f wall_ms_median=%.2f "
           "cpu_ms_best=%.2f cpu_ms_median=%.2f user_ms_median=%.2f\n",
           tasks, threads, wall[0], wall[rounds / 2], cpu[0], cpu[rounds / 2],
           user[rounds / 2]);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        char *spec = strdup(argv[i]);
        char *what = strtok(spec, ":");
        char *arg = strtok(NULL, ":");
        char *arg2 = strtok(NULL, ":");
        if (!strcmp(what, "ls"))
            ls(arg, 0);
        else if (!strcmp(what, "pids"))
            ls(arg, 1);
        else if (!strcmp(what, "names"))
            ls(arg, 2);
        else if (!strcmp(what, "scandir"))
            probe_scandir(arg);
        else if (!strcmp(what, "readdir_r"))
            probe_readdir_r(arg);
        else if (!strcmp(what, "seek"))
            probe_seek(arg);
        else if (!strcmp(what, "rewind"))
            probe_rewind(arg);
        else if (!strcmp(what, "fdopendir"))
            probe_fdopendir(arg);
        else if (!strcmp(what, "cat"))
            read_fd("cat", arg, open(arg, O_RDONLY));
        else if (!strcmp(what, "relcat"))
            read_fd("relcat", arg, open(arg, O_RDONLY));
        else if (!strcmp(what, "open2")) {
            volatile int flags = O_RDONLY; /* not a constant: fortified open calls __open_2 */
            read_fd("open2", arg, __open_2(arg, flags));
        } else if (!strcmp(what, "fopen"))
            probe_fopen(arg);
        else if (!strcmp(what, "openat") || !strcmp(what, "fstatat"))
            probe_at(what, arg, arg2);
        else if (!strcmp(what, "stat") || !strcmp(what, "lstat"))
            probe_stat(what, arg);
        else if (!strcmp(what, "statx"))
            probe_statx(arg);
        else if (!strcmp(what, "access")) {
            int rc = access(arg, arg2 && *arg2 == 'w' ? W_OK : R_OK);
            printf("access %s %s: %s\n", arg, arg2 ? arg2 : "r", rc ? err(errno) : "ok");
        } else if (!strcmp(what, "readlink")) {
            char buf[512];
            ssize_t n = readlink(arg, buf, sizeof buf - 1);
            if (n < 0)
                printf("readlink %s: error %s\n", arg, err(errno));
            else
                printf("readlink %s: %.*s\n", arg, (int)n, buf);
        } else if (!strcmp(what, "write")) {
            int fd = open(arg, O_WRONLY);
            printf("write %s: %s\n", arg, fd < 0 ? err(errno) : "opened");
            if (fd >= 0)
                close(fd);
        } else if (!strcmp(what, "chdir")) {
            int rc = chdir(arg);
            printf("chdir %s: %s\n", arg, rc ? err(errno) : "ok");
        } else if (!strcmp(what, "self"))
            printf("self: pid=%d ppid=%d\n", getpid(), getppid());
        else if (!strcmp(what, "bad"))
            probe_bad();
        else if (!strcmp(what, "syscall"))
            probe_syscall();
        else if (!strcmp(what, "fork"))
            probe_fork();
        else if (!strcmp(what, "thread"))
            probe_thread();
        else if (!strcmp(what, "stress"))
            probe_stress(arg ? atoi(arg) : 20);
        else if (!strcmp(what, "sleep")) {
            double seconds = arg ? atof(arg) : 0;
            struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
            nanosleep(&ts, NULL);
        } else if (!strcmp(what, "bench"))
            probe_bench(arg ? atoi(arg) : 5, arg2 ? arg2 : "/proc");
        else
            probe_pid_calls(what, arg ? arg : "0", arg2);
        free(spec);
    }
    return 0;
}
