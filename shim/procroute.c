/*
 * The /proc rules (procroute.h says who applies them; shim/README.md has them for users):
 *   - /proc itself, /proc/self and /proc/thread-self are always the real ones (the shim lists
 *     /proc merged; the supervisor answers an open of /proc itself with the view's directory,
 *     supervisor/proc.c);
 *   - /proc/<N>[/rest], N all digits: the caller's own pid and this thread's tid stay real;
 *     else VIEW/<N>/rest when VIEW/<N> exists (a scenario task answers for its pid, as the
 *     server answers GET for it); else, for a thread that is not a leader,
 *     VIEW/<tgid>/task/<N>/rest (VIEW/.tid/<N> says which tgid); else another thread of
 *     the caller's, its parent, or a process of the caller's client family (a
 *     descendant of TSEMU_ROOT: the processes the machine counts as its own, see
 *     emulator/shell/clientprocs.py), stays real; else ENOENT, as for a pid that does not
 *     exist. `.tsemu` inside a task's directory is the shim's and does not exist for clients;
 *   - /proc/<name>[/rest]: VIEW/<name>/rest when that is a file in the view; a directory
 *     only when the host has none (a host without /proc/pressure); else the real path;
 *   - the view is read-only: a call that would change a file there fails with EACCES;
 *   - `.`, `..`, `//` and a trailing `/` are resolved lexically before the rules apply;
 *     a relative path is under /proc when its directory (the current one, or an *at()
 *     call's descriptor) is the real /proc or, where the side applying the rules can tell
 *     (the supervisor), a real directory below it (/proc/N: the path is then /proc/N/path).
 *
 * A redirected call is tried on its first candidate at once: the common case (an emulated
 * pid's file) costs no system call beyond the caller's own. Only when it fails with
 * ENOENT/ENOTDIR are the fallbacks looked at.
 */
#include "procroute.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- /proc itself, parents ---- */

int proc_stat_is_root(const struct stat *st,
                      int (*fstatat)(int, const char *, struct stat *, int))
{
    static atomic_int known;
    static dev_t root_dev;
    static ino_t root_ino;
    if (!S_ISDIR(st->st_mode))
        return 0;
    if (!atomic_load_explicit(&known, memory_order_acquire)) {
        struct stat root;
        int saved = errno;
        int rc = fstatat(AT_FDCWD, "/proc", &root, 0);
        errno = saved;
        if (rc != 0)
            return 0;
        root_dev = root.st_dev; /* two threads may race here: both store the same values */
        root_ino = root.st_ino;
        atomic_store_explicit(&known, 1, memory_order_release);
    }
    return st->st_dev == root_dev && st->st_ino == root_ino;
}

unsigned long proc_stat_parent(const char *text)
{
    const char *close = strrchr(text, ')'); /* the comm may hold anything but ends at the last ) */
    if (!close || close[1] != ' ' || !close[2] || close[3] != ' ')
        return 0;
    return strtoul(close + 4, NULL, 10);
}

int proc_descends(unsigned long n, unsigned long root,
                  unsigned long (*parent)(unsigned long, void *), void *ctx)
{
    if (!root)
        return 0;
    for (int depth = 0; depth < 64 && n > 1; depth++) {
        if (n == root)
            return 1;
        n = parent(n, ctx);
    }
    return 0;
}

/* ---- paths ---- */

/* NULL, the page at 0 and what lies beyond user space are left to the kernel (EFAULT). */
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
static int view_has(const struct proc_route *r, const char *name, size_t len)
{
    const char *view = r->view;
    size_t vlen = r->view_len;
    char path[PROC_VIEW_MAX + 32];
    if (vlen + 1 + len + 1 > sizeof path)
        return 0;
    memcpy(path, view, vlen);
    path[vlen] = '/';
    memcpy(path + vlen + 1, name, len);
    path[vlen + 1 + len] = '\0';
    struct stat st;
    return r->ops->fstatat(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* The tgid of thread `tid` when VIEW/.tid/<tid> says it is not a leader, else 0. */
static unsigned long view_leader(const struct proc_route *r, unsigned long tid)
{
    const char *view = r->view;
    size_t vlen = r->view_len;
    char path[PROC_VIEW_MAX + 48], link[64];
    memcpy(path, view, vlen);
    snprintf(path + vlen, sizeof path - vlen, "/" PROC_TID_DIR "/%lu", tid);
    ssize_t n = r->ops->readlinkat(AT_FDCWD, path, link, sizeof link - 1);
    if (n <= 3 || memcmp(link, "../", 3) != 0)
        return 0;
    unsigned long tgid = 0;
    ssize_t i = 3;
    for (; i < n && link[i] >= '0' && link[i] <= '9' && i < 13; i++)
        tgid = tgid * 10 + (unsigned long)(link[i] - '0');
    return i > 3 && i < n && link[i] == '/' ? tgid : 0;
}

/* The rule for /proc/<N>[/rest]: r->path is already VIEW/<N>[/rest]. */
static const char *pid_rule(struct proc_route *r, int flags)
{
    if (r->c0len > 10)
        return fail(r, ENOENT); /* no pid is that long */
    unsigned long pid = 0;
    for (size_t i = 0; i < r->c0len; i++)
        pid = pid * 10 + (unsigned long)(r->norm[i] - '0');
    r->pid = pid;
    if (r->ops->is_own(r->ctx, pid))
        return real(r);
    /* Only a path with a `.`-component can name the shim's own .tsemu. */
    const char *rest = r->norm + r->c0len;
    if (r->norm == r->buf &&
        has_component(rest, PROC_TASK_ATTRS, sizeof PROC_TASK_ATTRS - 1))
        return fail(r, ENOENT);
    if (flags & PROUTE_WRITE) {
        /* The view is the server's: nothing there is the client's to change. */
        if (view_has(r, r->norm, r->c0len) || view_leader(r, pid))
            return fail(r, EACCES);
        return r->ops->own_thread(r->ctx, pid) ? real(r) : fail(r, ENOENT);
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
    if (r->ops->fstatat(AT_FDCWD, r->path, &st, 0) != 0)
        return real(r);
    if (S_ISDIR(st.st_mode)) {
        /* The host's directory when it has one (it has more in it than the view). */
        char host[PROC_REST_MAX + sizeof "/proc/"];
        if (r->norm_len + sizeof "/proc/" > sizeof host)
            return real(r);
        memcpy(host, "/proc/", 6);
        memcpy(host + 6, r->norm, r->norm_len + 1);
        if (r->ops->fstatat(AT_FDCWD, host, &st, 0) == 0 || errno != ENOENT)
            return real(r);
    }
    if (flags & PROUTE_WRITE)
        return fail(r, EACCES);
    r->kind = PROUTE_VIEW;
    r->stage = 3;
    return r->path;
}

const char *proc_rules_begin(struct proc_route *r, const struct proc_rules_ops *ops, void *ctx,
                             const char *view, size_t vlen, int dirfd, const char *path,
                             int flags)
{
    r->kind = PROUTE_REAL;
    r->orig = path;
    r->saved_errno = errno;
    r->is_root = 0;
    r->ops = ops;
    r->ctx = ctx;
    r->view = view;
    r->view_len = vlen;
    if (!view || bad_pointer(path))
        return path;
    const char *below;
    char joined[PROC_REST_MAX];
    if (path[0] == '/') {
        below = below_proc(path);
        if (!below)
            return path;
    } else {
        if (!path[0])
            return path;
        long n = ops->dir_below(ctx, dirfd, joined, sizeof joined);
        if (n < 0)
            return path; /* not relative to a directory of /proc */
        if (n > 0) {
            size_t len = strlen(path);
            if ((size_t)n + 1 + len + 1 > sizeof joined)
                return path; /* nothing of the view's is that long */
            joined[n] = '/';
            memcpy(joined + n + 1, path, len + 1);
            below = joined;
        } else {
            below = path;
        }
    }
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
        return pid_rule(r, flags);
    if ((c0len == 4 && !memcmp(r->norm, "self", 4)) ||
        (c0len == 11 && !memcmp(r->norm, "thread-self", 11)))
        return path;
    return name_rule(r, flags);
}

const char *proc_rules_next(struct proc_route *r)
{
    int err = errno;
    const char *view = r->view;
    size_t vlen = r->view_len;
    if (!view)
        return fail(r, err);
    if (r->stage == 3) /* a machine file that is gone from the view: the host's */
        return real(r);
    if (r->stage != 1)
        return fail(r, err);
    if (view_has(r, r->norm, r->c0len))
        return fail(r, err); /* an emulated process: what it lacks does not exist */
    unsigned long tgid = view_leader(r, r->pid);
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
    if (r->ops->own_thread(r->ctx, r->pid))
        return real(r); /* another thread of the caller's */
    if (r->ops->is_parent(r->ctx, r->pid))
        return real(r); /* the caller's parent, where the view has no task of its pid */
    if (r->ops->in_family(r->ctx, r->pid))
        return real(r); /* a process of the caller's family: part of the machine */
    return fail(r, ENOENT);
}
