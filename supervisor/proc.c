/*
 * /proc for the clients the shim cannot reach: the path-based system calls under /proc,
 * answered from the server's /proc view by the shim's own rules (shim/procroute.c: one
 * reading of them for both ways in). Here are the supervisor's answers to what the rules ask
 * about the caller (read from its /proc entries) and the calls themselves:
 *
 *   open, openat, openat2       the view's file opened here and the descriptor injected
 *                               (SECCOMP_ADDFD_FLAG_SEND, O_CLOEXEC as asked): reads,
 *                               getdents64, fstat, openat relative to it are then native;
 *   stat, lstat, newfstatat,    done here on the view's path, the result written into the
 *   statx, readlink,            caller's memory;
 *   readlinkat, access,
 *   faccessat, faccessat2
 *
 * A path the rules leave real gets CONTINUE (the kernel does the call as if nothing had
 * trapped it), one they refuse gets its errno. Where the supervisor's answer differs from the
 * shim's: an open of /proc itself gets the view's directory (the shim keeps the real one and
 * merges its listing in readdir, which raw getdents64 never reaches), so listing /proc lists
 * the view; stat of /proc itself stays real. README.md ("/proc") says so for users.
 */
#include "supervisor.h"

#include "../shim/procroute.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static char view[PROC_VIEW_MAX];
static size_t view_len;

int sv_proc_setup(const char *dir)
{
    char marker[PROC_VIEW_MAX + sizeof "/" PROC_VIEW_MARKER], text[64] = {0};
    size_t len = dir ? strlen(dir) : 0;
    while (len > 1 && dir[len - 1] == '/')
        len--;
    if (!len || dir[0] != '/' || len >= sizeof view)
        return -1;
    snprintf(marker, sizeof marker, "%.*s/" PROC_VIEW_MARKER, (int)len, dir);
    int fd = open(marker, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n != (ssize_t)strlen(PROC_VIEW_MAGIC) || memcmp(text, PROC_VIEW_MAGIC, (size_t)n) != 0)
        return -1;
    memcpy(view, dir, len);
    view[len] = '\0';
    view_len = len;
    return 0;
}

int sv_proc_enabled(void)
{
    return view_len > 0;
}

int sv_proc_traps(int nr)
{
    switch (nr) {
    case SYS_open: case SYS_openat: case SYS_openat2: case SYS_stat: case SYS_lstat:
    case SYS_newfstatat: case SYS_statx: case SYS_readlink: case SYS_readlinkat:
    case SYS_access: case SYS_faccessat: case SYS_faccessat2: case SYS_chdir: case SYS_fchdir:
        return 1;
    default:
        return 0;
    }
}

/* A NUL-terminated string from the caller, read page by page (it may end just before an
 * unmapped page). 0, or -EFAULT, or -ENAMETOOLONG. */
static int read_string(pid_t tid, uint64_t at, char *out, size_t size)
{
    size_t have = 0;
    while (have < size) {
        size_t page_left = 4096 - ((at + have) & 4095);
        size_t want = size - have < page_left ? size - have : page_left;
        if (rm_read(tid, out + have, at + have, want))
            return -EFAULT;
        if (memchr(out + have, 0, want))
            return 0;
        have += want;
    }
    return -ENAMETOOLONG;
}

/* ---- what the rules ask about the caller ---- */

struct asker {
    struct caller *c;
    unsigned long parent; /* the caller's parent pid, read at the first question (0: not yet) */
};

static unsigned long host_parent(unsigned long pid, void *ctx)
{
    (void)ctx;
    char text[512];
    return sv_read_proc(pid, "stat", text, sizeof text) < 0 ? 0 : proc_stat_parent(text);
}

static int is_own(void *ctx, unsigned long n)
{
    struct asker *a = ctx;
    return n == (unsigned long)a->c->tgid || n == (unsigned long)a->c->tid;
}

static int is_parent(void *ctx, unsigned long n)
{
    struct asker *a = ctx;
    if (!a->parent)
        a->parent = host_parent((unsigned long)a->c->tgid, NULL);
    return n == a->parent;
}

static int own_thread(void *ctx, unsigned long n)
{
    struct asker *a = ctx;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%lu", a->c->tgid, n);
    return access(path, F_OK) == 0;
}

/* The client family: descendants of TSEMU_ROOT (`tsemu run`, the fixture), else of tsemu-run
 * itself (alone, it registers itself as the family's root). */
static int in_family(void *ctx, unsigned long n)
{
    (void)ctx;
    static unsigned long root;
    if (!root) {
        const char *text = getenv("TSEMU_ROOT");
        root = text && *text ? strtoul(text, NULL, 10) : 0;
        if (!root)
            root = (unsigned long)getpid();
    }
    return proc_descends(n, root, host_parent, NULL);
}

/* Threads whose current directory is known to be outside /proc (by tid, 0: unknown): a
 * relative path is mostly that, and looking at /proc/TID/cwd each time would double what the
 * supervisor adds to an unrelated open. Forgotten whenever a supervised thread calls chdir or
 * fchdir (trapped for that alone): a thread's directory changes only so, or by being another
 * thread (a new tid). */
#define CWDS 256
static pid_t cwd_elsewhere[CWDS];

static void cwd_forget(void)
{
    memset(cwd_elsewhere, 0, sizeof cwd_elsewhere);
}

/* The caller's directory, from its /proc entry: /proc itself, or a real directory below it
 * (a raw chdir("/proc/1") is the kernel's: relative paths from there follow the rules). */
static long dir_below(void *ctx, int dirfd, char *out, size_t size)
{
    struct asker *a = ctx;
    char path[64], link[PROC_REST_MAX + 8];
    if (dirfd == AT_FDCWD && cwd_elsewhere[(unsigned)a->c->tid % CWDS] == a->c->tid)
        return -1;
    long below = -1;
    if (dirfd == AT_FDCWD)
        snprintf(path, sizeof path, "/proc/%d/cwd", a->c->tid);
    else if (dirfd >= 0)
        snprintf(path, sizeof path, "/proc/%d/fd/%d", a->c->tid, dirfd);
    else
        return -1; /* a bad descriptor: the kernel's EBADF */
    static dev_t procfs; /* /proc's device, read once */
    struct stat st;
    if (!procfs && stat("/proc", &st) == 0)
        procfs = st.st_dev;
    if (stat(path, &st) != 0 || st.st_dev != procfs) {
        /* not on procfs (the view's injected directory is not) */
    } else if (proc_stat_is_root(&st, fstatat)) {
        out[0] = '\0';
        below = 0;
    } else {
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n >= 7 && !memcmp(link, "/proc/", 6) && (size_t)n - 6 < size) {
            memcpy(out, link + 6, (size_t)n - 6);
            out[n - 6] = '\0';
            below = n - 6;
        }
    }
    if (dirfd == AT_FDCWD && below < 0)
        cwd_elsewhere[(unsigned)a->c->tid % CWDS] = a->c->tid;
    return below;
}

static const struct proc_rules_ops ops = {
    .is_own = is_own,
    .is_parent = is_parent,
    .own_thread = own_thread,
    .in_family = in_family,
    .dir_below = dir_below,
    .fstatat = fstatat,
    .readlinkat = readlinkat,
};

/* ---- the calls ---- */

/* A trapped call's arguments, by what they are. */
struct pathcall {
    int dirfd;        /* AT_FDCWD for the calls without one */
    uint64_t path;    /* the path's address in the caller */
    int write;        /* PROUTE_WRITE when the call would change the file */
    int open;         /* an open: answered with a descriptor */
    uint64_t oflags;  /* open's flags */
    uint64_t mode;
    uint64_t resolve; /* openat2's */
};

/* What openat2's `how` says (its size checked as the kernel checks it), into p: 0, or 1 when
 * the kernel must judge it itself (a size it refuses, a path it resolves its own way). */
static int read_how(struct caller *c, const struct seccomp_data *d, struct pathcall *p)
{
    struct open_how how;
    uint64_t size = d->args[3];
    if (size < sizeof how || size > 4096 || rm_read(c->tid, &how, d->args[2], sizeof how))
        return 1; /* EINVAL, E2BIG, EFAULT: the kernel's */
    unsigned char tail[64];
    for (uint64_t at = sizeof how; at < size; at += sizeof tail) {
        size_t n = size - at < sizeof tail ? (size_t)(size - at) : sizeof tail;
        if (rm_read(c->tid, tail, d->args[2] + at, n))
            return 1;
        for (size_t i = 0; i < n; i++)
            if (tail[i])
                return 1; /* E2BIG */
    }
    p->oflags = how.flags;
    p->mode = how.mode;
    p->resolve = how.resolve;
    /* RESOLVE_IN_ROOT makes an absolute path relative to dirfd, RESOLVE_BENEATH refuses it
     * (EXDEV): not a /proc path either way. */
    return (how.resolve & RESOLVE_IN_ROOT) != 0;
}

static int open_write(uint64_t flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC)) ||
           (flags & O_TMPFILE) == O_TMPFILE ? PROUTE_WRITE : 0;
}

/* The call's arguments; 1 when the kernel must do it whatever the path. */
static int arguments(struct caller *c, const struct seccomp_data *d, struct pathcall *p)
{
    memset(p, 0, sizeof *p);
    p->dirfd = AT_FDCWD;
    switch (d->nr) {
    case SYS_open:
        p->path = d->args[0], p->oflags = d->args[1], p->mode = d->args[2], p->open = 1;
        break;
    case SYS_openat:
        p->dirfd = (int)d->args[0], p->path = d->args[1], p->oflags = d->args[2];
        p->mode = d->args[3], p->open = 1;
        break;
    case SYS_openat2:
        p->dirfd = (int)d->args[0], p->path = d->args[1], p->open = 1;
        if (read_how(c, d, p))
            return 1;
        break;
    case SYS_stat: case SYS_lstat:
        p->path = d->args[0];
        break;
    case SYS_newfstatat: case SYS_statx: case SYS_readlinkat:
        p->dirfd = (int)d->args[0], p->path = d->args[1];
        if (d->nr == SYS_readlinkat && (int)d->args[3] <= 0)
            return 1; /* EINVAL before the path is looked at */
        break;
    case SYS_readlink:
        p->path = d->args[0];
        if ((int)d->args[2] <= 0)
            return 1;
        break;
    case SYS_access:
        p->path = d->args[0], p->write = d->args[1] & W_OK ? PROUTE_WRITE : 0;
        break;
    case SYS_faccessat: case SYS_faccessat2:
        p->dirfd = (int)d->args[0], p->path = d->args[1];
        p->write = d->args[2] & W_OK ? PROUTE_WRITE : 0;
        break;
    default:
        return 1;
    }
    if (p->open)
        p->write = open_write(p->oflags);
    return 0;
}

/* The call done here on `path` (in the view): its result, or -errno. An open's descriptor is
 * ours until injected. */
static long act(struct caller *c, const struct seccomp_data *d, const struct pathcall *p,
                const char *path)
{
    long rc;
    switch (d->nr) {
    case SYS_open: case SYS_openat: case SYS_openat2: {
        /* The caller's flags as they are (the kernel judges them), close-on-exec here. */
        struct open_how how = {.flags = p->oflags | O_CLOEXEC, .mode = p->mode,
                               .resolve = p->resolve & ~(uint64_t)RESOLVE_BENEATH};
        if (d->nr == SYS_openat2)
            rc = syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
        else
            rc = syscall(SYS_openat, AT_FDCWD, path, (int)how.flags, (mode_t)p->mode);
        return rc < 0 ? -errno : rc;
    }
    case SYS_stat: case SYS_lstat: case SYS_newfstatat: {
        struct stat st;
        int flags = d->nr == SYS_stat ? 0 : d->nr == SYS_lstat ? AT_SYMLINK_NOFOLLOW
                                                               : (int)d->args[3];
        if (syscall(SYS_newfstatat, AT_FDCWD, path, &st, flags) != 0)
            return -errno;
        uint64_t to = d->nr == SYS_newfstatat ? d->args[2] : d->args[1];
        return rm_write(c->tid, to, &st, sizeof st) ? -EFAULT : 0;
    }
    case SYS_statx: {
        struct statx stx;
        if (syscall(SYS_statx, AT_FDCWD, path, (int)d->args[2], (unsigned)d->args[3], &stx))
            return -errno;
        return rm_write(c->tid, d->args[4], &stx, sizeof stx) ? -EFAULT : 0;
    }
    case SYS_readlink: case SYS_readlinkat: {
        char link[PATH_MAX];
        uint64_t to = d->nr == SYS_readlink ? d->args[1] : d->args[2];
        size_t size = (size_t)(int)(d->nr == SYS_readlink ? d->args[2] : d->args[3]);
        rc = syscall(SYS_readlinkat, AT_FDCWD, path, link, size < sizeof link ? size : sizeof link);
        if (rc < 0)
            return -errno;
        return rm_write(c->tid, to, link, (size_t)rc) ? -EFAULT : rc;
    }
    case SYS_access:
        rc = syscall(SYS_faccessat, AT_FDCWD, path, (int)d->args[1]);
        return rc < 0 ? -errno : rc;
    case SYS_faccessat:
        rc = syscall(SYS_faccessat, AT_FDCWD, path, (int)d->args[2]);
        return rc < 0 ? -errno : rc;
    default: /* SYS_faccessat2 */
        rc = syscall(SYS_faccessat2, AT_FDCWD, path, (int)d->args[2], (int)d->args[3]);
        return rc < 0 ? -errno : rc;
    }
}

/* Answer with `rc` (an open's descriptor injected). */
static void answer(struct caller *c, const struct pathcall *p, long rc)
{
    if (rc < 0)
        sv_reply(c->id, 0, (int)-rc);
    else if (p->open)
        sv_inject(c->id, (int)rc, (p->oflags & O_CLOEXEC) != 0);
    else
        sv_reply(c->id, rc, 0);
}

int sv_proc_handle(struct caller *c, const struct seccomp_data *d)
{
    struct pathcall p;
    char path[PATH_MAX];
    if (d->nr == SYS_chdir || d->nr == SYS_fchdir) {
        cwd_forget(); /* the kernel's chdir (README.md): only what we knew of it changes */
        return 0;
    }
    if (!view_len || arguments(c, d, &p) || read_string(c->tid, p.path, path, sizeof path))
        return 0; /* the kernel says EFAULT or ENAMETOOLONG itself */
    /* Cheap before the rules: an absolute path outside /proc (most opens) is not theirs. */
    if (path[0] == '/' && !strstr(path, "proc"))
        return 0;
    if (d->nr == SYS_openat2 && (p.resolve & RESOLVE_BENEATH) && path[0] == '/')
        return 0; /* EXDEV */
    struct asker asker = {c, 0};
    struct proc_route r;
    const char *at = proc_rules_begin(&r, &ops, &asker, view, view_len, p.dirfd, path, p.write);
    if (r.kind == PROUTE_REAL && r.is_root && p.open && !p.write)
        at = view; /* /proc itself: the view's directory, for raw getdents64 */
    else if (r.kind == PROUTE_REAL)
        return 0;
    for (;;) {
        if (r.kind == PROUTE_ERROR) {
            sv_reply(c->id, 0, errno);
            return 1;
        }
        long rc = act(c, d, &p, at);
        if (!proc_route_retry(&r, rc < 0, (int)-rc)) {
            answer(c, &p, rc);
            return 1;
        }
        errno = (int)-rc;
        at = proc_rules_next(&r);
        if (r.kind == PROUTE_REAL)
            return 0;
    }
}
