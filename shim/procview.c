/*
 * The /proc view: where it is, who the caller is, and the shim's side of the path rules
 * (procroute.c has the rules themselves, shared with the seccomp supervisor: here are the
 * shim's answers to what they ask, from the caller's own process).
 *
 * A redirected call costs, beside the system call it makes, one getpid() and the rules'
 * string work; the real /proc itself is opened as PROC_REAL_ROOT (procroute.h), so that a
 * supervisor applying the same rules below the shim lets the merged listing through.
 */
#include "proc.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct proc_real proc_real;
static atomic_int resolved;

#define RESOLVE(field, name) (*(void **)&proc_real.field = dlsym(RTLD_NEXT, name))

void proc_resolve(void)
{
    if (atomic_load_explicit(&resolved, memory_order_acquire))
        return;
    /* Two threads may race through here: both store the same pointers, which is harmless. */
    RESOLVE(open, "open");
    RESOLVE(open64, "open64");
    RESOLVE(openat, "openat");
    RESOLVE(openat64, "openat64");
    RESOLVE(open_2, "__open_2");
    RESOLVE(open64_2, "__open64_2");
    RESOLVE(openat_2, "__openat_2");
    RESOLVE(openat64_2, "__openat64_2");
    RESOLVE(fopen, "fopen");
    RESOLVE(fopen64, "fopen64");
    RESOLVE(freopen, "freopen");
    RESOLVE(freopen64, "freopen64");
    RESOLVE(stat, "stat");
    RESOLVE(lstat, "lstat");
    RESOLVE(stat64, "stat64");
    RESOLVE(lstat64, "lstat64");
    RESOLVE(fstatat, "fstatat");
    RESOLVE(fstatat64, "fstatat64");
    RESOLVE(xstat, "__xstat");
    RESOLVE(lxstat, "__lxstat");
    RESOLVE(xstat64, "__xstat64");
    RESOLVE(lxstat64, "__lxstat64");
    RESOLVE(fxstatat, "__fxstatat");
    RESOLVE(fxstatat64, "__fxstatat64");
    RESOLVE(statx, "statx");
    RESOLVE(access, "access");
    RESOLVE(faccessat, "faccessat");
    RESOLVE(readlink, "readlink");
    RESOLVE(readlinkat, "readlinkat");
    RESOLVE(chdir, "chdir");
    RESOLVE(fchdir, "fchdir");
    RESOLVE(opendir, "opendir");
    RESOLVE(fdopendir, "fdopendir");
    RESOLVE(readdir, "readdir");
    RESOLVE(readdir64, "readdir64");
    RESOLVE(readdir_r, "readdir_r");
    RESOLVE(readdir64_r, "readdir64_r");
    RESOLVE(rewinddir, "rewinddir");
    RESOLVE(seekdir, "seekdir");
    RESOLVE(telldir, "telldir");
    RESOLVE(closedir, "closedir");
    RESOLVE(scandir, "scandir");
    RESOLVE(scandir64, "scandir64");
    RESOLVE(scandirat, "scandirat");
    RESOLVE(scandirat64, "scandirat64");
    RESOLVE(syscall, "syscall");
    RESOLVE(getpriority, "getpriority");
    RESOLVE(setpriority, "setpriority");
    RESOLVE(sched_getscheduler, "sched_getscheduler");
    RESOLVE(sched_getparam, "sched_getparam");
    RESOLVE(sched_setscheduler, "sched_setscheduler");
    RESOLVE(sched_setparam, "sched_setparam");
    RESOLVE(kill, "kill");
    RESOLVE(read, "read");
    RESOLVE(close, "close");
    atomic_store_explicit(&resolved, 1, memory_order_release);
}

/* ---- the view ---- */

enum { VIEW_UNKNOWN, VIEW_ON, VIEW_OFF, VIEW_RETRY };

static atomic_int view_state;
static atomic_long view_retry_at; /* VIEW_RETRY: when to look for the marker again */
static char view_path[PROC_VIEW_MAX];
static size_t view_len;
static pthread_mutex_t view_lock = PTHREAD_MUTEX_INITIALIZER;

static long coarse_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (long)ts.tv_sec;
}

/* Whether `dir` holds the marker with the expected first line. */
static int marker_ok(const char *dir, size_t len)
{
    char path[PROC_VIEW_MAX + sizeof "/" PROC_VIEW_MARKER];
    memcpy(path, dir, len);
    memcpy(path + len, "/" PROC_VIEW_MARKER, sizeof "/" PROC_VIEW_MARKER);
    int fd = proc_real.openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return 0;
    char buf[sizeof PROC_VIEW_MAGIC + 8];
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = proc_real.read(fd, buf + got, sizeof buf - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    proc_real.close(fd);
    return got == sizeof PROC_VIEW_MAGIC - 1 && !memcmp(buf, PROC_VIEW_MAGIC, got);
}

static const char *view_setup(size_t *len)
{
    int saved = errno;
    pthread_mutex_lock(&view_lock);
    int state = atomic_load(&view_state);
    if (state == VIEW_UNKNOWN || state == VIEW_RETRY) {
        const char *env = getenv(PROC_VIEW_ENV);
        size_t n = env ? strlen(env) : 0;
        while (n > 1 && env[n - 1] == '/')
            n--;
        if (!env || env[0] != '/' || n >= PROC_VIEW_MAX) {
            state = VIEW_OFF; /* unset, relative or too long: never a view */
        } else if (marker_ok(env, n)) {
            memcpy(view_path, env, n);
            view_path[n] = '\0';
            view_len = n;
            state = VIEW_ON;
        } else {
            atomic_store(&view_retry_at, coarse_seconds() + 1);
            state = VIEW_RETRY;
        }
        atomic_store_explicit(&view_state, state, memory_order_release);
    }
    pthread_mutex_unlock(&view_lock);
    errno = saved;
    *len = view_len;
    return state == VIEW_ON ? view_path : NULL;
}

/* A fork while another thread held the lock leaves it held by no one in the child. */
static void view_after_fork_child(void)
{
    pthread_mutex_init(&view_lock, NULL);
}

__attribute__((constructor)) static void procview_init(void)
{
    pthread_atfork(NULL, NULL, view_after_fork_child);
}

const char *proc_view(size_t *len)
{
    int state = atomic_load_explicit(&view_state, memory_order_acquire);
    if (state == VIEW_ON) {
        *len = view_len;
        return view_path;
    }
    if (state == VIEW_OFF)
        return NULL;
    if (state == VIEW_RETRY && coarse_seconds() < atomic_load(&view_retry_at))
        return NULL;
    proc_resolve();
    return view_setup(len);
}

/* ---- the caller ---- */

/* (pid << 32 | ppid): the parent of the process that last asked. A fork or a vfork child
 * (which shares our memory) sees another pid there and asks again. */
static _Atomic uint64_t parent_of;
/* This thread's tid, and the pid of the process it was read in (fork gives the thread a
 * new one; a vfork child runs on its parent's thread-local storage). */
static __thread pid_t tid_cache, tid_cache_pid;

pid_t proc_getpid(void)
{
    return getpid();
}

int proc_is_parent(unsigned long n)
{
    pid_t pid = getpid();
    uint64_t known = atomic_load_explicit(&parent_of, memory_order_relaxed);
    if ((pid_t)(known >> 32) != pid) {
        known = (uint64_t)(uint32_t)pid << 32 | (uint32_t)getppid();
        atomic_store_explicit(&parent_of, known, memory_order_relaxed);
    }
    return n == (uint32_t)known;
}

int proc_is_own(unsigned long n)
{
    pid_t pid = getpid();
    if (n == (unsigned long)pid)
        return 1;
    if (tid_cache_pid != pid) {
        tid_cache = gettid();
        tid_cache_pid = pid;
    }
    return n == (unsigned long)tid_cache;
}

int proc_own_thread(unsigned long n)
{
    char path[48];
    int saved = errno;
    snprintf(path, sizeof path, "/proc/self/task/%lu", n);
    int found = proc_real.faccessat(AT_FDCWD, path, F_OK, 0) == 0;
    errno = saved;
    return found;
}

/* ---- the caller's client family ---- */

/* TSEMU_ROOT, read once: the pid of the family's root (0: no family). */
static long family_root(void)
{
    static atomic_long root = -1;
    long known = atomic_load_explicit(&root, memory_order_relaxed);
    if (known < 0) {
        const char *text = getenv("TSEMU_ROOT");
        known = text ? strtol(text, NULL, 10) : 0;
        atomic_store_explicit(&root, known > 0 ? known : 0, memory_order_relaxed);
    }
    return known > 0 ? known : 0;
}

unsigned long proc_host_parent(unsigned long n)
{
    char path[48], buf[512];
    snprintf(path, sizeof path, PROC_REAL_ROOT "/%lu/stat", n);
    int fd = proc_real.open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t len = proc_real.read(fd, buf, sizeof buf - 1);
    proc_real.close(fd);
    if (len <= 0)
        return 0;
    buf[len] = '\0';
    return proc_stat_parent(buf);
}

static unsigned long host_parent(unsigned long n, void *ctx)
{
    (void)ctx;
    return proc_host_parent(n);
}

int proc_family_member(unsigned long n, unsigned long (*parent)(unsigned long, void *),
                       void *ctx)
{
    return proc_descends(n, (unsigned long)family_root(), parent ? parent : host_parent, ctx);
}

int proc_in_family(unsigned long n)
{
    int saved = errno;
    int member = proc_family_member(n, NULL, NULL);
    errno = saved;
    return member;
}

/* ---- /proc itself and the current directory ---- */

static int real_fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    return proc_real.fstatat(dirfd, path, st, flags);
}

static ssize_t real_readlinkat(int dirfd, const char *path, char *buf, size_t size)
{
    return proc_real.readlinkat(dirfd, path, buf, size);
}

static int is_proc_root(const struct stat *st)
{
    return proc_stat_is_root(st, real_fstatat);
}

int proc_fd_is_root(int fd)
{
    struct stat st;
    int saved = errno;
    int rc = fstat(fd, &st);
    errno = saved;
    return rc == 0 && is_proc_root(&st);
}

enum { CWD_UNKNOWN, CWD_PROC, CWD_ELSEWHERE };
static atomic_int cwd_state;

void proc_cwd_changed(void)
{
    atomic_store(&cwd_state, CWD_UNKNOWN);
}

static int cwd_is_root(void)
{
    int state = atomic_load(&cwd_state);
    if (state == CWD_UNKNOWN) {
        struct stat st;
        int saved = errno;
        state = proc_real.stat(".", &st) == 0 && is_proc_root(&st) ? CWD_PROC : CWD_ELSEWHERE;
        errno = saved;
        atomic_store(&cwd_state, state);
    }
    return state == CWD_PROC;
}


/* ---- the rules (procroute.c), asked from the caller's own process ---- */

static int own(void *ctx, unsigned long n)
{
    (void)ctx;
    return proc_is_own(n);
}

static int own_thread(void *ctx, unsigned long n)
{
    (void)ctx;
    return proc_own_thread(n);
}

static int is_parent(void *ctx, unsigned long n)
{
    (void)ctx;
    return proc_is_parent(n);
}

static int in_family(void *ctx, unsigned long n)
{
    (void)ctx;
    return proc_in_family(n);
}

/* The shim knows only whether a directory is /proc itself: its chdir into an emulated task's
 * directory goes into the view, where relative paths resolve by themselves. */
static long dir_below(void *ctx, int dirfd, char *out, size_t size)
{
    (void)ctx;
    if (!(dirfd == AT_FDCWD ? cwd_is_root() : proc_fd_is_root(dirfd)))
        return -1;
    if (size)
        out[0] = '\0';
    return 0;
}

static const struct proc_rules_ops shim_ops = {
    .is_own = own,
    .is_parent = is_parent,
    .own_thread = own_thread,
    .in_family = in_family,
    .dir_below = dir_below,
    .fstatat = real_fstatat,
    .readlinkat = real_readlinkat,
};

const char *proc_route_begin(struct proc_route *r, int dirfd, const char *path, int flags)
{
    size_t vlen = 0;
    const char *view = proc_view(&vlen);
    const char *p = proc_rules_begin(r, &shim_ops, NULL, view, vlen, dirfd, path, flags);
    return r->is_root ? PROC_REAL_ROOT : p;
}
