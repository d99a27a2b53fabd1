/*
 * The path-based calls a /proc reader makes, routed by procview.c's rules: open and its
 * fortified and 64-bit spellings, fopen, freopen, the stat family (the glibc 2.33 functions
 * and the __xstat ones older binaries call), statx, access, faccessat, readlink,
 * readlinkat, chdir and fchdir. Directory listings are procdir.c's.
 *
 * Without TSEMU_PROC_VIEW each of these is one load and a branch in front of libc's own.
 */
#include "proc.h"

#include <fcntl.h>
#include <stdarg.h>
#include <unistd.h>

/* Not declared by glibc's headers any more (2.33 made them compatibility symbols) or only
 * under _FORTIFY_SOURCE, but still what binaries built against older glibc, or fortified,
 * call. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);
int __xstat(int ver, const char *path, struct stat *buf);
int __lxstat(int ver, const char *path, struct stat *buf);
int __xstat64(int ver, const char *path, struct stat64 *buf);
int __lxstat64(int ver, const char *path, struct stat64 *buf);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags);

/* ---- open ---- */

static int open_changes(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC)) ||
           (flags & O_TMPFILE) == O_TMPFILE ? PROUTE_WRITE : 0;
}

static mode_t open_mode(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, mode_t) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, open_changes(flags), p,
                proc_real.open(p, flags, mode));
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, open_changes(flags), p,
                proc_real.open64(p, flags, mode));
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, open_changes(flags), p,
                proc_real.openat(dirfd, p, flags, mode));
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, open_changes(flags), p,
                proc_real.openat64(dirfd, p, flags, mode));
}

int __open_2(const char *path, int flags)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, open_changes(flags), p, proc_real.open_2(p, flags));
}

int __open64_2(const char *path, int flags)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, open_changes(flags), p,
                proc_real.open64_2(p, flags));
}

int __openat_2(int dirfd, const char *path, int flags)
{
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, open_changes(flags), p,
                proc_real.openat_2(dirfd, p, flags));
}

int __openat64_2(int dirfd, const char *path, int flags)
{
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, open_changes(flags), p,
                proc_real.openat64_2(dirfd, p, flags));
}

/* ---- stdio ---- */

static int fopen_changes(const char *mode)
{
    if (!mode)
        return 0; /* libc's to answer */
    for (; *mode; mode++)
        if (*mode == 'w' || *mode == 'a' || *mode == '+')
            return PROUTE_WRITE;
    return 0;
}

FILE *fopen(const char *path, const char *mode)
{
    proc_resolve();
    PROC_ROUTED(FILE *, NULL, AT_FDCWD, path, fopen_changes(mode), p, proc_real.fopen(p, mode));
}

FILE *fopen64(const char *path, const char *mode)
{
    proc_resolve();
    PROC_ROUTED(FILE *, NULL, AT_FDCWD, path, fopen_changes(mode), p,
                proc_real.fopen64(p, mode));
}

/* freopen(NULL, mode, stream) changes the mode of the stream's own file: libc's. */
FILE *freopen(const char *path, const char *mode, FILE *stream)
{
    proc_resolve();
    PROC_ROUTED(FILE *, NULL, AT_FDCWD, path, fopen_changes(mode), p,
                proc_real.freopen(p, mode, stream));
}

FILE *freopen64(const char *path, const char *mode, FILE *stream)
{
    proc_resolve();
    PROC_ROUTED(FILE *, NULL, AT_FDCWD, path, fopen_changes(mode), p,
                proc_real.freopen64(p, mode, stream));
}

/* ---- stat ---- */

int stat(const char *path, struct stat *buf)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, 0, p, proc_real.stat(p, buf));
}

int lstat(const char *path, struct stat *buf)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, 0, p, proc_real.lstat(p, buf));
}

int stat64(const char *path, struct stat64 *buf)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, 0, p, proc_real.stat64(p, buf));
}

int lstat64(const char *path, struct stat64 *buf)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, 0, p, proc_real.lstat64(p, buf));
}

int fstatat(int dirfd, const char *path, struct stat *buf, int flags)
{
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, 0, p, proc_real.fstatat(dirfd, p, buf, flags));
}

int fstatat64(int dirfd, const char *path, struct stat64 *buf, int flags)
{
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, 0, p, proc_real.fstatat64(dirfd, p, buf, flags));
}

int __xstat(int ver, const char *path, struct stat *buf)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, 0, p, proc_real.xstat(ver, p, buf));
}

int __lxstat(int ver, const char *path, struct stat *buf)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, 0, p, proc_real.lxstat(ver, p, buf));
}

int __xstat64(int ver, const char *path, struct stat64 *buf)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, 0, p, proc_real.xstat64(ver, p, buf));
}

int __lxstat64(int ver, const char *path, struct stat64 *buf)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, 0, p, proc_real.lxstat64(ver, p, buf));
}

int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags)
{
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, 0, p, proc_real.fxstatat(ver, dirfd, p, buf, flags));
}

int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags)
{
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, 0, p, proc_real.fxstatat64(ver, dirfd, p, buf, flags));
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf)
{
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, 0, p, proc_real.statx(dirfd, p, flags, mask, buf));
}

/* ---- access, links, the current directory ---- */

int access(const char *path, int mode)
{
    proc_resolve();
    PROC_ROUTED(int, -1, AT_FDCWD, path, mode & W_OK ? PROUTE_WRITE : 0, p,
                proc_real.access(p, mode));
}

int faccessat(int dirfd, const char *path, int mode, int flags)
{
    proc_resolve();
    PROC_ROUTED(int, -1, dirfd, path, mode & W_OK ? PROUTE_WRITE : 0, p,
                proc_real.faccessat(dirfd, p, mode, flags));
}

/* An emulated task has no exe, cwd, root or fd/ links: the view has none, so ENOENT. */
ssize_t readlink(const char *path, char *buf, size_t size)
{
    proc_resolve();
    PROC_ROUTED(ssize_t, -1, AT_FDCWD, path, 0, p, proc_real.readlink(p, buf, size));
}

ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size)
{
    proc_resolve();
    PROC_ROUTED(ssize_t, -1, dirfd, path, 0, p, proc_real.readlinkat(dirfd, p, buf, size));
}

/* chdir into an emulated task's directory goes into the view, where relative paths then
 * resolve by themselves (getcwd() shows the view's path). chdir("/proc") stays real, and
 * relative paths from there follow the rules. */
static int routed_chdir(const char *path)
{
    PROC_ROUTED(int, -1, AT_FDCWD, path, 0, p, proc_real.chdir(p));
}

int chdir(const char *path)
{
    proc_resolve();
    int rc = routed_chdir(path);
    if (rc == 0)
        proc_cwd_changed();
    return rc;
}

int fchdir(int fd)
{
    proc_resolve();
    int rc = proc_real.fchdir(fd);
    if (rc == 0)
        proc_cwd_changed();
    return rc;
}
