/*
 * The /proc view: where it is, who the caller is, and what a path under /proc becomes.
 *
 * The rules (shim/README.md has them for users):
 *   - /proc itself, /proc/self and /proc/thread-self are always the real ones;
 *   - /proc/<N>[/rest], N all digits: the caller's own pid, this thread's tid and the
 *     parent's pid stay real; else VIEW/<N>/rest when VIEW/<N> exists; else, for a thread
 *     that is not a leader, VIEW/<tgid>/task/<N>/rest (VIEW/.tid/<N> says which tgid); else
 *     another thread of the caller's, or a process of the caller's client family (a
 *     descendant of TSEMU_ROOT: the processes the machine counts as its own, see
 *     emulator/shell/clientprocs.py), stays real; else ENOENT, as for a pid that does not
 *     exist. `.tsemu` inside a task's directory is the shim's and does not exist for clients;
 *   - /proc/<name>[/rest]: VIEW/<name>/rest when that is a file in the view; a directory
 *     only when the host has none (a host without /proc/pressure); else the real path;
 *   - the view is read-only: a call that would change a file there fails with EACCES;
 *   - `.`, `..`, `//` and a trailing `/` are resolved lexically before the rules apply;
 *     a relative path is under /proc when its directory (the current one, or an *at()
 *     call's descriptor) is the real /proc.
 *
 * A redirected call is tried on its first candidate at once: the common case (an emulated
 * pid's file) costs no system call beyond the caller's own, plus one getpid(). Only when it
 * fails with ENOENT/ENOTDIR are the fallbacks looked at.
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

int proc_is_own(unsigned long n)
{
    pid_t pid = getpid();
    if (n == (unsigned long)pid)
        return 1;
    uint64_t known = atomic_load_explicit(&parent_of, memory_order_relaxed);
    if ((pid_t)(known >> 32) != pid) {
        known = (uint64_t)(uint32_t)pid << 32 | (uint32_t)getppid();
        atomic_store_explicit(&parent_of, known, memory_order_relaxed);
    }
    if (n == (uint32_t)known)
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
    snprintf(path, sizeof path, "/proc/%lu/stat", n);
    int fd = proc_real.open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t len = proc_real.read(fd, buf, sizeof buf - 1);
    proc_real.close(fd);
    if (len <= 0)
        return 0;
    buf[len] = '\0';
    char *close = strrchr(buf, ')'); /* the comm may hold anything but ends at the last ) */
    if (!close || close[1] != ' ' || !close[2] || close[3] != ' ')
        return 0;
    return strtoul(close + 4, NULL, 10);
}

int proc_family_member(unsigned long n, unsigned long (*parent)(unsigned long, void *),
                       void *ctx)
{
    long root = family_root();
    if (!root)
        return 0;
    for (int depth = 0; depth < 64 && n > 1; depth++) {
        if (n == (unsigned long)root)
            return 1;
        n = parent ? parent(n, ctx) : proc_host_parent(n);
    }
    return 0;
}

int proc_in_family(unsigned long n)
{
    int saved = errno;
    int member = proc_family_member(n, NULL, NULL);
    errno = saved;
    return member;
}

/* ---- /proc itself and the current directory ---- */

static atomic_int root_known;
static dev_t root_dev;
static ino_t root_ino;

static int is_proc_root(const struct stat *st)
{
    if (!S_ISDIR(st->st_mode))
        return 0;
    if (!atomic_load_explicit(&root_known, memory_order_acquire)) {
        struct stat root;
        int saved = errno;
        int rc = proc_real.stat("/proc", &root);
        errno = saved;
        if (rc != 0)
            return 0;
        root_dev = root.st_dev;
        root_ino = root.st_ino;
        atomic_store_explicit(&root_known, 1, memory_order_release);
    }
    return st->st_dev == root_dev && st->st_ino == root_ino;
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

/* ---- paths ---- */

/* NULL, the page at 0 and what lies beyond user space are left to libc (EFAULT). */
static int bad_pointer(const void *p)
{
    return (uintptr_t)p < 65536 || (uintptr_t)p >= ((uintptr_t)1 << 47);
}

/* For an absolute path: what follows its /proc ("" or "/..."), or NULL when it is not under
 * /proc. `.` and `..` before "proc" are allowed (`/..` is `/`). */
static const char *below_proc(const char *p)
{
    for (;;) {
        while (*p == '/')
            p++;
        if (p[0] == '.' && (p[1] == '/' || !p[1]))
            p += 1;
        else if (p[0] == '.' && p[1] == '.' && (p[2] == '/' || !p[2]))
            p += 2;
        else
            break;
    }
    if (p[0] != 'p' || p[1] != 'r' || p[2] != 'o' || p[3] != 'c' || (p[4] && p[4] != '/'))
        return NULL;
    return p + 4;
}

/* Whether `s` (below /proc) is already normal: no empty, `.` or `..` component (so no
 * `.`-name at all) and no final '/'. Most paths are, and are used as they are. */
static size_t plain_length(const char *s, int *plain)
{
    size_t i = 0;
    *plain = s[0] != '.';
    for (; s[i]; i++)
        if (s[i] == '/' && (s[i + 1] == '/' || s[i + 1] == '.' || !s[i + 1]))
            *plain = 0;
    return i;
}

/* `s` (below /proc) as components joined by '/', `.` dropped and `..` applied, into out;
 * its length, or -1 when it leaves /proc or does not fit. *dir: the path ends with '/',
 * `.` or `..` (it names a directory). */
static long normalise(const char *s, char *out, size_t size, int *dir)
{
    size_t n = 0;
    *dir = 0;
    while (*s) {
        while (*s == '/')
            s++;
        if (!*s) {
            *dir = n > 0;
            break;
        }
        const char *end = s;
        while (*end && *end != '/')
            end++;
        size_t len = (size_t)(end - s);
        if (len == 1 && s[0] == '.') {
            *dir = !*end;
        } else if (len == 2 && s[0] == '.' && s[1] == '.') {
            if (n == 0)
                return -1;
            while (n > 0 && out[n - 1] != '/')
                n--;
            if (n > 0)
                n--;
            *dir = !*end;
        } else {
            if (n + 1 + len + 1 > size)
                return -1;
            if (n)
                out[n++] = '/';
            memcpy(out + n, s, len);
            n += len;
            *dir = 0;
        }
        s = end;
    }
    out[n] = '\0';
    return (long)n;
}

/* Whether the '/'-separated components of `s` include `name`. */
static int has_component(const char *s, const char *name, size_t len)
{
    while (*s) {
        while (*s == '/')
            s++;
        const char *end = s;
        while (*end && *end != '/')
            end++;
        if ((size_t)(end - s) == len && !memcmp(s, name, len))
            return 1;
        s = end;
    }
    return 0;
}

/* r->path = VIEW + a + b + c (each with its length) + "/" when `dir`; NULL if too long. */
static const char *join(struct proc_route *r, const char *view, size_t vlen, int dir,
                        const char *a, size_t alen, const char *b, size_t blen, const char *c,
                        size_t clen)
{
    if (vlen + alen + blen + clen + 2 > sizeof r->path)
        return NULL;
    char *out = r->path;
    memcpy(out, view, vlen);
    out += vlen;
    memcpy(out, a, alen);
    out += alen;
    memcpy(out, b, blen);
    out += blen;
    memcpy(out, c, clen);
    out += clen;
    if (dir)
        *out++ = '/';
    *out = '\0';
    return r->path;
}

static const char *fail(struct proc_route *r, int err)
{
    r->kind = PROUTE_ERROR;
    errno = err;
    return NULL;
}

static const char *real(struct proc_route *r)
{
    r->kind = PROUTE_REAL;
    errno = r->saved_errno;
    return r->orig;
}

/* Whether VIEW/<name> exists (not following a final link). */
static int view_has(const char *view, size_t vlen, const char *name, size_t len)
{
    char path[PROC_VIEW_MAX + 32];
    if (vlen + 1 + len + 1 > sizeof path)
        return 0;
    memcpy(path, view, vlen);
    path[vlen] = '/';
    memcpy(path + vlen + 1, name, len);
    path[vlen + 1 + len] = '\0';
    struct stat st;
    return proc_real.fstatat(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* The tgid of thread `tid` when VIEW/.tid/<tid> says it is not a leader, else 0. */
static unsigned long view_leader(const char *view, size_t vlen, unsigned long tid)
{
    char path[PROC_VIEW_MAX + 48], link[64];
    memcpy(path, view, vlen);
    snprintf(path + vlen, sizeof path - vlen, "/" PROC_TID_DIR "/%lu", tid);
    ssize_t n = proc_real.readlinkat(AT_FDCWD, path, link, sizeof link - 1);
    if (n <= 3 || memcmp(link, "../", 3) != 0)
        return 0;
    unsigned long tgid = 0;
    ssize_t i = 3;
    for (; i < n && link[i] >= '0' && link[i] <= '9' && i < 13; i++)
        tgid = tgid * 10 + (unsigned long)(link[i] - '0');
    return i > 3 && i < n && link[i] == '/' ? tgid : 0;
}

/* The rule for /proc/<N>[/rest]: r->path is already VIEW/<N>[/rest]. */
static const char *pid_rule(struct proc_route *r, const char *view, size_t vlen, int flags)
{
    if (r->c0len > 10)
        return fail(r, ENOENT); /* no pid is that long */
    unsigned long pid = 0;
    for (size_t i = 0; i < r->c0len; i++)
        pid = pid * 10 + (unsigned long)(r->norm[i] - '0');
    r->pid = pid;
    if (proc_is_own(pid))
        return real(r);
    /* Only a path with a `.`-component can name the shim's own .tsemu. */
    const char *rest = r->norm + r->c0len;
    if (r->norm == r->buf &&
        has_component(rest, PROC_TASK_ATTRS, sizeof PROC_TASK_ATTRS - 1))
        return fail(r, ENOENT);
    if (flags & PROUTE_WRITE) {
        /* The view is the server's: nothing there is the client's to change. */
        if (view_has(view, vlen, r->norm, r->c0len) || view_leader(view, vlen, pid))
            return fail(r, EACCES);
        return proc_own_thread(pid) ? real(r) : fail(r, ENOENT);
    }
    r->kind = PROUTE_VIEW;
    r->stage = 1;
    return r->path;
}

int proc_route_dir_kind(const struct proc_route *r)
{
    if (r->kind != PROUTE_VIEW || r->stage == 3)
        return -1;
    const char *rest = r->norm + r->c0len;
    if (!rest[0])
        return PROC_DIR_TASK;
    if (strncmp(rest, "/task", 5) != 0)
        return -1;
    if (!rest[5])
        return PROC_DIR_TASKS;
    return rest[5] == '/' && rest[6] && !strchr(rest + 6, '/') ? PROC_DIR_TASK : -1;
}

/* The rule for /proc/<name>[/rest]: r->path is already VIEW/<name>[/rest]. */
static const char *name_rule(struct proc_route *r, int flags)
{
    /* The view's own entries (.tsemu-view, .tid) are not part of /proc. */
    if (r->norm[0] == '.')
        return real(r);
    struct stat st;
    if (proc_real.fstatat(AT_FDCWD, r->path, &st, 0) != 0)
        return real(r);
    if (S_ISDIR(st.st_mode)) {
        /* The host's directory when it has one (it has more in it than the view). */
        if (proc_real.fstatat(r->orig_dirfd, r->orig, &st, 0) == 0 || errno != ENOENT)
            return real(r);
    }
    if (flags & PROUTE_WRITE)
        return fail(r, EACCES);
    r->kind = PROUTE_VIEW;
    r->stage = 3;
    return r->path;
}

const char *proc_route_begin(struct proc_route *r, int dirfd, const char *path, int flags)
{
    r->kind = PROUTE_REAL;
    r->orig = path;
    r->saved_errno = errno;
    r->is_root = 0;
    size_t vlen;
    const char *view = proc_view(&vlen);
    if (!view || bad_pointer(path))
        return path;
    const char *below;
    if (path[0] == '/') {
        below = below_proc(path);
        if (!below)
            return path;
    } else {
        if (!path[0] || (dirfd == AT_FDCWD ? !cwd_is_root() : !proc_fd_is_root(dirfd)))
            return path;
        below = path;
    }
    r->orig_dirfd = dirfd;
    r->stage = 0;
    r->dir = 0;
    /* r->path = VIEW/<below /proc, normalised>, and r->norm the part after VIEW/. */
    while (*below == '/')
        below++;
    int plain;
    size_t len = plain_length(below, &plain);
    if (plain) {
        if (vlen + 1 + len + 1 > sizeof r->path)
            return path;
        memcpy(r->path, view, vlen);
        r->path[vlen] = '/';
        memcpy(r->path + vlen + 1, below, len + 1);
        r->norm = r->path + vlen + 1;
    } else {
        long n = normalise(below, r->buf, sizeof r->buf, &r->dir);
        if (n < 0)
            return path; /* leaves /proc (or is too long to be anything of the view's) */
        len = (size_t)n;
        r->norm = r->buf;
        if (len && !join(r, view, vlen, r->dir, "/", 1, r->buf, len, "", 0))
            return path;
    }
    r->norm_len = len;
    if (!len) {
        r->is_root = 1;
        return path;
    }
    size_t c0len = 0;
    int digits = 1;
    for (; r->norm[c0len] && r->norm[c0len] != '/'; c0len++)
        digits &= r->norm[c0len] >= '0' && r->norm[c0len] <= '9';
    r->c0len = c0len;
    if (digits)
        return pid_rule(r, view, vlen, flags);
    if ((c0len == 4 && !memcmp(r->norm, "self", 4)) ||
        (c0len == 11 && !memcmp(r->norm, "thread-self", 11)))
        return path;
    return name_rule(r, flags);
}

const char *proc_route_next(struct proc_route *r)
{
    int err = errno;
    size_t vlen;
    const char *view = proc_view(&vlen);
    if (!view)
        return fail(r, err);
    if (r->stage == 3) /* a machine file that is gone from the view: the host's */
        return real(r);
    if (r->stage != 1)
        return fail(r, err);
    if (view_has(view, vlen, r->norm, r->c0len))
        return fail(r, err); /* an emulated process: what it lacks does not exist */
    unsigned long tgid = view_leader(view, vlen, r->pid);
    if (tgid) {
        /* A thread that is not a leader: /proc/<tid> is its task directory, but
         * /proc/<tid>/task lists its whole group, as the kernel's does. r->norm may lie in
         * r->path, which is about to be written: the new path is made apart first. */
        const char *rest = r->norm + r->c0len;
        size_t rlen = r->norm_len - r->c0len;
        char head[64], tail[PROC_REST_MAX];
        int group = !strncmp(rest, "/task", 5) && (!rest[5] || rest[5] == '/');
        int hlen = group ? snprintf(head, sizeof head, "/%lu", tgid)
                         : snprintf(head, sizeof head, "/%lu/task/%lu", tgid, r->pid);
        memcpy(tail, rest, rlen + 1);
        if (!join(r, view, vlen, r->dir, head, (size_t)hlen, tail, rlen, "", 0))
            return fail(r, ENAMETOOLONG);
        r->norm = r->path + vlen + 1; /* for proc_route_dir_kind: <tgid>/task/<tid>... */
        r->c0len = (size_t)(strchr(r->norm, '/') - r->norm);
        r->norm_len = strlen(r->norm);
        r->stage = 2;
        return r->path;
    }
    if (proc_own_thread(r->pid))
        return real(r); /* another thread of the caller's */
    if (proc_in_family(r->pid))
        return real(r); /* a process of the caller's family: part of the machine */
    return fail(r, ENOENT);
}
