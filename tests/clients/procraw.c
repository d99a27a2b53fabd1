/*
 * procraw: the path calls a /proc reader makes, on each path given, with what each answers
 * printed in a form that is the same whichever way the answers came: built with -DRAW
 * (static, for the seccomp supervisor) every call is a raw system call; without it (dynamic,
 * for the shim) each is libc's function, which the shim wraps. tests/test_supervisor_proc.py
 * compares the two outputs.
 *
 *   procraw [cd:DIR | [=]PATH]...
 *
 * `cd:DIR` changes the current directory (relative paths after it are from there); a path
 * with `=` in front has its first line printed (only for files whose content is the same in
 * both runs: the view's). The caller's own pid, tid and parent pid are printed as SELF, SELF
 * and PARENT wherever they appear in a link's text. Raw only: openat2, printed as openat is.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef RAW
#define OPEN(p, f) ((int)syscall(SYS_open, (p), (f), 0))
#define OPENAT(d, p, f) ((int)syscall(SYS_openat, (d), (p), (f), 0))
#define STAT(p, s) ((int)syscall(SYS_stat, (p), (s)))
#define LSTAT(p, s) ((int)syscall(SYS_lstat, (p), (s)))
#define FSTATAT(d, p, s, f) ((int)syscall(SYS_newfstatat, (d), (p), (s), (f)))
#define STATX(d, p, f, m, s) ((int)syscall(SYS_statx, (d), (p), (f), (m), (s)))
#define READLINK(p, b, n) ((long)syscall(SYS_readlink, (p), (b), (n)))
#define READLINKAT(d, p, b, n) ((long)syscall(SYS_readlinkat, (d), (p), (b), (n)))
#define ACCESS(p, m) ((int)syscall(SYS_access, (p), (m)))
#define FACCESSAT(d, p, m) ((int)syscall(SYS_faccessat, (d), (p), (m)))
#define CHDIR(p) ((int)syscall(SYS_chdir, (p)))
#else
#define OPEN(p, f) open((p), (f))
#define OPENAT(d, p, f) openat((d), (p), (f))
#define STAT(p, s) stat((p), (s))
#define LSTAT(p, s) lstat((p), (s))
#define FSTATAT(d, p, s, f) fstatat((d), (p), (s), (f))
#define STATX(d, p, f, m, s) statx((d), (p), (f), (m), (s))
#define READLINK(p, b, n) ((long)readlink((p), (b), (n)))
#define READLINKAT(d, p, b, n) ((long)readlinkat((d), (p), (b), (n)))
#define ACCESS(p, m) access((p), (m))
#define FACCESSAT(d, p, m) faccessat((d), (p), (m), 0)
#define CHDIR(p) chdir(p)
#endif

static char self[16], parent[16];

static const char *err(void)
{
    const char *name = strerrorname_np(errno);
    return name ? name : "E?";
}

static const char *kind(mode_t mode)
{
    return S_ISREG(mode) ? "reg" : S_ISDIR(mode) ? "dir" : S_ISLNK(mode) ? "lnk" : "other";
}

/* `text` with our own pid (and tid: one thread) as SELF and the parent's as PARENT. */
static void print_link(const char *text)
{
    while (*text) {
        size_t digits = strspn(text, "0123456789");
        if (digits) {
            if (digits == strlen(self) && !strncmp(text, self, digits))
                fputs("SELF", stdout);
            else if (digits == strlen(parent) && !strncmp(text, parent, digits))
                fputs("PARENT", stdout);
            else
                fwrite(text, 1, digits, stdout);
            text += digits;
        } else {
            putchar(*text++);
        }
    }
}

static void opened(const char *call, int fd, int show)
{
    printf("  %s: ", call);
    if (fd < 0) {
        printf("%s\n", err());
        return;
    }
    struct stat st;
    fstat(fd, &st);
    char line[128] = "";
    if (show && S_ISREG(st.st_mode)) {
        ssize_t n = read(fd, line, sizeof line - 1);
        line[n > 0 ? n : 0] = '\0';
        line[strcspn(line, "\n")] = '\0';
    }
    printf("%s%s%s\n", kind(st.st_mode), *line ? " " : "", line);
    close(fd);
}

static void stated(const char *call, int rc, const struct stat *st, int show)
{
    if (rc != 0)
        printf("  %s: %s\n", call, err());
    else if (show)
        printf("  %s: %s size=%lld\n", call, kind(st->st_mode), (long long)st->st_size);
    else
        printf("  %s: %s\n", call, kind(st->st_mode));
}

static void linked(const char *call, long n, char *buf)
{
    printf("  %s: ", call);
    if (n < 0) {
        printf("%s\n", err());
        return;
    }
    buf[n] = '\0';
    print_link(buf);
    putchar('\n');
}

static void probe(const char *path, int show)
{
    struct stat st;
    struct statx stx;
    char buf[512];
    printf("%s\n", path);
    opened("open", OPEN(path, O_RDONLY | O_CLOEXEC), show);
    opened("openat", OPENAT(AT_FDCWD, path, O_RDONLY | O_CLOEXEC), show);
#ifdef RAW
    struct open_how how = {.flags = O_RDONLY | O_CLOEXEC};
    opened("openat", (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how), show);
#else
    opened("openat", OPENAT(AT_FDCWD, path, O_RDONLY | O_CLOEXEC), show);
#endif
    opened("open_dir", OPEN(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), 0);
    opened("open_write", OPEN(path, O_WRONLY | O_CLOEXEC), 0);
    stated("stat", STAT(path, &st), &st, show);
    stated("lstat", LSTAT(path, &st), &st, show);
    stated("fstatat", FSTATAT(AT_FDCWD, path, &st, 0), &st, show);
    stated("fstatat_nofollow", FSTATAT(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW), &st, show);
    int rc = STATX(AT_FDCWD, path, 0, STATX_BASIC_STATS, &stx);
    st.st_mode = stx.stx_mode;
    st.st_size = (off_t)stx.stx_size;
    stated("statx", rc, &st, show);
    linked("readlink", READLINK(path, buf, sizeof buf - 1), buf);
    linked("readlinkat", READLINKAT(AT_FDCWD, path, buf, sizeof buf - 1), buf);
    printf("  access_r: %s\n", ACCESS(path, R_OK) == 0 ? "ok" : err());
    printf("  access_w: %s\n", ACCESS(path, W_OK) == 0 ? "ok" : err());
    printf("  faccessat: %s\n", FACCESSAT(AT_FDCWD, path, F_OK) == 0 ? "ok" : err());
}

int main(int argc, char **argv)
{
    snprintf(self, sizeof self, "%d", getpid());
    snprintf(parent, sizeof parent, "%d", getppid());
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "cd:", 3)) {
            printf("cd %s: %s\n", argv[i] + 3, CHDIR(argv[i] + 3) == 0 ? "ok" : err());
            continue;
        }
        int show = argv[i][0] == '=';
        probe(argv[i] + show, show);
    }
    return 0;
}
