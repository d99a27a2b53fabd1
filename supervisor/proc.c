/*
 * /proc for the clients the shim cannot reach: open, openat and newfstatat of paths under
 * /proc, answered from the server's /proc view (shim/README.md describes the view and the
 * shim's rules; these are a subset of them, see README.md here).
 *
 * Only absolute paths are looked at (a relative path, or one with `..`, is the kernel's):
 *
 *   /proc                     the view's directory itself, injected: listing it lists the
 *                             scenario's processes (and the view's machine files); openat
 *                             relative to it stays in the view, natively;
 *   /proc/self, thread-self   real;
 *   /proc/N[/rest]            real for the caller's own pid and tid and for the client family
 *                             (descendants of TSEMU_ROOT, else of tsemu-run); else VIEW/N/rest when the view
 *                             has process N, VIEW/.tid/N/rest when it has thread N; else ENOENT,
 *                             as for a pid that does not exist;
 *   /proc/NAME[/rest]         the view's regular file when it has one (stat, loadavg, uptime,
 *                             pressure/io, sys/kernel/pid_max...), else real.
 *
 * Opens of the view are read-only: O_WRONLY, O_RDWR, O_CREAT, O_TRUNC fail with EACCES. An
 * open is answered by opening the view's file here and injecting the descriptor
 * (SECCOMP_ADDFD_FLAG_SEND, O_CLOEXEC as asked); a newfstatat by writing the view's stat.
 */
#include "supervisor.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MARKER ".tsemu-view"
#define MAGIC "tsemu proc view 1\n"

static char view[512];
static size_t view_len;

int sv_proc_setup(const char *dir)
{
    char marker[600], text[64] = {0};
    if (!dir || !*dir || dir[0] != '/' || strlen(dir) >= sizeof view)
        return -1;
    snprintf(marker, sizeof marker, "%s/" MARKER, dir);
    int fd = open(marker, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n != (ssize_t)strlen(MAGIC) || memcmp(text, MAGIC, strlen(MAGIC)) != 0)
        return -1;
    snprintf(view, sizeof view, "%s", dir);
    view_len = strlen(view);
    return 0;
}

int sv_proc_enabled(void)
{
    return view_len > 0;
}

/* A NUL-terminated string from the caller, read page by page (it may end just before an
 * unmapped page). 0, or -EFAULT, or -ENAMETOOLONG. */
static int read_string(const struct caller_mem *cm, uint64_t at, char *out, size_t size)
{
    size_t have = 0;
    while (have < size) {
        size_t page_left = 4096 - ((at + have) & 4095);
        size_t want = size - have < page_left ? size - have : page_left;
        if (um_read(cm, out + have, (void *)(uintptr_t)(at + have), want))
            return -EFAULT;
        void *nul = memchr(out + have, 0, want);
        if (nul)
            return 0;
        have += want;
    }
    return -ENAMETOOLONG;
}

static unsigned long parent_of(unsigned long pid)
{
    char text[512];
    if (sv_read_proc(pid, "stat", text, sizeof text) < 0)
        return 0;
    char *close_paren = strrchr(text, ')');
    if (!close_paren)
        return 0;
    char state;
    unsigned long ppid = 0;
    if (sscanf(close_paren + 1, " %c %lu", &state, &ppid) != 2)
        return 0;
    return ppid;
}

/* Whether host process `pid` is of the client family: the root `tsemu run` or the fixture
 * registered (TSEMU_ROOT), else tsemu-run itself, or one of its descendants. */
static int in_family(unsigned long pid)
{
    const char *root = getenv("TSEMU_ROOT");
    unsigned long self = root && *root ? strtoul(root, NULL, 10) : (unsigned long)getpid();
    for (int depth = 0; pid > 1 && depth < 256; depth++) {
        if (pid == self)
            return 1;
        pid = parent_of(pid);
    }
    return 0;
}

static int is_view_file(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Where an absolute path under /proc goes: 0 real (CONTINUE), 1 the view (`out`), or -errno. */
static int route(struct caller *c, const char *path, char *out, size_t size)
{
    if (strncmp(path, "/proc", 5) != 0 || (path[5] != '\0' && path[5] != '/'))
        return 0;
    if (strstr(path, "/..") || strstr(path, "/./") || strstr(path, "//"))
        return 0; /* unusual spellings are the kernel's (README) */
    const char *rest = path + 5;
    while (*rest == '/')
        rest++;
    if (*rest == '\0') {
        snprintf(out, size, "%s", view);
        return 1;
    }
    const char *slash = strchr(rest, '/');
    size_t first = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *tail = slash ? slash : "";
    if (first < 16 && strspn(rest, "0123456789") == first) {
        unsigned long n = strtoul(rest, NULL, 10);
        if (n == (unsigned long)c->tgid || n == (unsigned long)c->tid || in_family(n))
            return 0;
        char top[700];
        snprintf(top, sizeof top, "%s/%.*s", view, (int)first, rest);
        if (exists(top)) {
            if (snprintf(out, size, "%s%s", top, tail) >= (int)size)
                return -ENAMETOOLONG;
            return 1;
        }
        snprintf(top, sizeof top, "%s/.tid/%.*s", view, (int)first, rest);
        if (exists(top)) {
            if (snprintf(out, size, "%s%s", top, tail) >= (int)size)
                return -ENAMETOOLONG;
            return 1;
        }
        return -ENOENT;
    }
    if (first == 4 && !strncmp(rest, "self", 4))
        return 0;
    if (first == 11 && !strncmp(rest, "thread-self", 11))
        return 0;
    if (rest[0] == '.')
        return 0; /* the view's own files (.tsemu-view, .tid) are not the client's */
    if (snprintf(out, size, "%s/%s", view, rest) >= (int)size)
        return 0;
    return is_view_file(out) ? 1 : 0;
}

/* open(2) / openat(2) of a /proc path; 1 when answered, 0 to let the kernel do it. */
static int do_open(struct caller *c, uint64_t upath, int flags)
{
    char path[4096], target[1400];
    struct caller_mem cm = sv_mem(c);
    int err = read_string(&cm, upath, path, sizeof path);
    if (err)
        return 0; /* the kernel says EFAULT or ENAMETOOLONG itself */
    int where = route(c, path, target, sizeof target);
    if (where == 0)
        return 0;
    if (where < 0) {
        sv_reply(c->id, 0, -where);
        return 1;
    }
    if ((flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0) {
        sv_reply(c->id, 0, EACCES);
        return 1;
    }
    int keep = flags & (O_DIRECTORY | O_NOFOLLOW | O_PATH | O_NONBLOCK | O_NOATIME | O_NOCTTY);
    int fd = open(target, O_RDONLY | O_CLOEXEC | keep);
    if (fd < 0) {
        sv_reply(c->id, 0, errno);
        return 1;
    }
    sv_inject(c->id, fd, flags & O_CLOEXEC);
    return 1;
}

static int do_fstatat(struct caller *c, const struct seccomp_data *d)
{
    char path[4096], target[1400];
    struct caller_mem cm = sv_mem(c);
    if (read_string(&cm, d->args[1], path, sizeof path))
        return 0;
    int where = route(c, path, target, sizeof target);
    if (where == 0)
        return 0;
    if (where < 0) {
        sv_reply(c->id, 0, -where);
        return 1;
    }
    struct stat st;
    int flags = (int)d->args[3] & AT_SYMLINK_NOFOLLOW;
    if (fstatat(AT_FDCWD, target, &st, flags) != 0) {
        sv_reply(c->id, 0, errno);
        return 1;
    }
    sv_reply(c->id, 0, um_write(&cm, (void *)(uintptr_t)d->args[2], &st, sizeof st) ? EFAULT : 0);
    return 1;
}

int sv_proc_handle(struct caller *c, const struct seccomp_data *d)
{
    if (!view_len)
        return 0;
    switch (d->nr) {
    case SYS_open:
        return do_open(c, d->args[0], (int)d->args[1]);
    case SYS_openat:
        return do_open(c, d->args[1], (int)d->args[2]);
    case SYS_newfstatat:
        return do_fstatat(c, d);
    default:
        return 0;
    }
}
