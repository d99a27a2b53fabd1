/*
 * The /proc rules, once, for both ways in: the shim (procview.c, in the caller's own process,
 * for libc's path calls) and the seccomp supervisor (supervisor/proc.c, for a trapped caller's
 * system calls). Which path under /proc is the view's, which stays real, which fails with
 * ENOENT, what is refused as a write (EACCES); `//`, `/./`, `..` and a trailing `/` resolved
 * lexically; relative paths from the real /proc; self and thread-self; the caller's own pids
 * and its client family's. shim/README.md has the rules for users.
 *
 * Nothing here interposes on libc or knows who the caller is: what the rules must ask about
 * the caller (its pids, threads, family, current directory) and the file system (the view's
 * entries) comes through `struct proc_rules_ops`, which each side fills with its own answers
 * (the shim from its own process with libc's real functions, the supervisor from the
 * caller's /proc entries). So the two cannot disagree on a rule, only on a fact.
 */
#ifndef TSEMU_PROCROUTE_H
#define TSEMU_PROCROUTE_H

#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#define PROC_VIEW_ENV "TSEMU_PROC_VIEW"
#define PROC_VIEW_MARKER ".tsemu-view"
#define PROC_VIEW_MAGIC "tsemu proc view 1\n"
#define PROC_TASK_ATTRS ".tsemu" /* per-task attributes: hidden from the client */
#define PROC_TID_DIR ".tid"

/* The real /proc spelled so that the rules leave it to the kernel (`..` leaving /proc is not
 * theirs): what the shim opens for its merged listing and its reads of host processes' parents,
 * so that a supervisor applying the rules below it (which answers an open of /proc itself with
 * the view's directory) lets them through untouched. */
#define PROC_REAL_ROOT "/proc/../proc"

/* Room for the view's own path, and for what follows /proc/ in a redirected path: longer
 * paths are never redirected (a view path that long is refused; /proc has no such files). */
#define PROC_VIEW_MAX 512
#define PROC_REST_MAX 1024
#define PROC_PATH_MAX (PROC_VIEW_MAX + PROC_REST_MAX + 64)

/* What the rules ask of the side applying them. `ctx` is passed back as it was given. */
struct proc_rules_ops {
    int (*is_own)(void *ctx, unsigned long n);     /* the caller's pid, its thread's tid */
    int (*own_thread)(void *ctx, unsigned long n); /* another thread of the caller's process */
    int (*is_parent)(void *ctx, unsigned long n);  /* the caller's parent */
    int (*in_family)(void *ctx, unsigned long n);  /* a descendant of the family's root */
    /* Where the caller's dirfd (AT_FDCWD: its current directory) is: its path below the real
     * /proc into out ("" for /proc itself; at most size - 1 bytes) and that path's length,
     * or -1 when it is not in the real /proc. */
    long (*dir_below)(void *ctx, int dirfd, char *out, size_t size);
    /* The file system, for the view's entries and the host's /proc/<name> (plain paths). */
    int (*fstatat)(int dirfd, const char *path, struct stat *st, int flags);
    ssize_t (*readlinkat)(int dirfd, const char *path, char *buf, size_t size);
};

/* What a path under /proc becomes. proc_rules_begin() gives the path to try the call with;
 * when that fails with ENOENT or ENOTDIR (proc_route_retry), proc_rules_next() gives the
 * rules' next candidate, if any. */
enum proc_route_kind {
    PROUTE_REAL,  /* the caller's own path (not ours, or real /proc) */
    PROUTE_VIEW,  /* a path in the view */
    PROUTE_ERROR, /* fail with errno */
};

#define PROUTE_WRITE 1 /* the call would change the file: refused in the view (EACCES) */

struct proc_route {
    int kind;
    int stage;         /* which of the rules' candidates `path` is */
    int is_root;       /* the path is the real /proc directory itself */
    int dir;           /* the path ends with '/', `.` or `..`: it names a directory */
    int saved_errno;   /* errno when the call began: restored when it succeeds */
    const char *orig;  /* the caller's path */
    unsigned long pid; /* the pid rule's N */
    const char *norm;  /* the path below /proc, normalised ("123/status"): in `path`, after
                          VIEW/, or in `buf` */
    size_t norm_len;
    size_t c0len;      /* its first component's length; what follows is the rest */
    const struct proc_rules_ops *ops;
    void *ctx;
    const char *view;  /* the view's path (no trailing slash) and its length */
    size_t view_len;
    char path[PROC_PATH_MAX]; /* the candidate in the view */
    char buf[PROC_REST_MAX];  /* room to normalise an unusual path in */
};

/* The path to call with: `path` itself (REAL: a NULL or bad pointer is returned untouched,
 * for the kernel to answer EFAULT), r->path (VIEW); r->kind is PROUTE_ERROR when the call
 * must fail with errno. `dirfd` is what a relative path is relative to (AT_FDCWD: the current
 * directory); `flags` PROUTE_WRITE or 0. */
const char *proc_rules_begin(struct proc_route *r, const struct proc_rules_ops *ops, void *ctx,
                             const char *view, size_t view_len, int dirfd, const char *path,
                             int flags);
/* After the call failed with errno: the next path to try (r->kind PROUTE_ERROR when errno
 * is the answer). */
const char *proc_rules_next(struct proc_route *r);
/* Whether the candidate just tried is worth a fallback, given the call's errno. */
static inline int proc_route_retry(const struct proc_route *r, int failed, int err)
{
    return failed && r->kind == PROUTE_VIEW && (err == ENOENT || err == ENOTDIR);
}

/* The directories a lister treats apart: /proc itself, an emulated task's directory
 * (/proc/N, /proc/N/task/T), an emulated process's task/. */
enum { PROC_DIR_ROOT, PROC_DIR_TASK, PROC_DIR_TASKS };
/* For a path the rules sent to the view: PROC_DIR_TASK or PROC_DIR_TASKS, else -1. */
int proc_route_dir_kind(const struct proc_route *r);

/* Whether `st` is the real /proc directory (procfs's root; /proc's own stat read once with
 * `fstatat`). */
int proc_stat_is_root(const struct stat *st,
                      int (*fstatat)(int, const char *, struct stat *, int));

/* The parent pid in the text of a /proc/<pid>/stat file (0 when it cannot be read there). */
unsigned long proc_stat_parent(const char *text);
/* Whether host process `n` is `root` or descends from it, walking up with `parent` (0: the
 * parent is unknown), at most 64 generations. */
int proc_descends(unsigned long n, unsigned long root,
                  unsigned long (*parent)(unsigned long, void *), void *ctx);

#endif
