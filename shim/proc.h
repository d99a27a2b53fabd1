/*
 * The shim's /proc view: what procview.c, procpath.c, procdir.c and procsys.c share.
 *
 * When TSEMU_PROC_VIEW names a tsemu /proc view (a directory holding the marker file
 * `.tsemu-view`, written by the server), path-based libc calls under /proc are redirected to
 * it, so that tools which list /proc and read each task's files (ps, top, iotop-c, exporters)
 * see the emulated machine's tasks instead of the host's. The view's layout is the contract
 * between the server and the shim (see shim/README.md):
 *
 *   VIEW/.tsemu-view            "tsemu proc view 1\n"
 *   VIEW/<pid>/...              one directory per emulated process: stat status statm comm
 *                               cmdline io schedstat, .tsemu (nice, policy, rt_priority,
 *                               ioprio), task/<tid>/ with the same files
 *   VIEW/.tid/<tid>             -> ../<tgid>/task/<tid>, for threads that are not leaders
 *   VIEW/stat uptime ...        machine files, pressure/{cpu,io,memory,irq}, sys/kernel/...
 *
 * None of this runs, and no wrapper does more than one load and a branch before calling
 * libc, while TSEMU_PROC_VIEW is unset.
 *
 * This file is independent of shim.h (the netlink socket emulation): the two halves of the
 * shim share nothing but the library.
 */
#ifndef TSEMU_PROC_H
#define TSEMU_PROC_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "procroute.h"

/* ---- libc's own functions (the next definitions), resolved on first use ---- */
struct proc_real {
    int (*open)(const char *, int, ...);
    int (*open64)(const char *, int, ...);
    int (*openat)(int, const char *, int, ...);
    int (*openat64)(int, const char *, int, ...);
    int (*open_2)(const char *, int);
    int (*open64_2)(const char *, int);
    int (*openat_2)(int, const char *, int);
    int (*openat64_2)(int, const char *, int);
    FILE *(*fopen)(const char *, const char *);
    FILE *(*fopen64)(const char *, const char *);
    FILE *(*freopen)(const char *, const char *, FILE *);
    FILE *(*freopen64)(const char *, const char *, FILE *);
    int (*stat)(const char *, struct stat *);
    int (*lstat)(const char *, struct stat *);
    int (*stat64)(const char *, struct stat64 *);
    int (*lstat64)(const char *, struct stat64 *);
    int (*fstatat)(int, const char *, struct stat *, int);
    int (*fstatat64)(int, const char *, struct stat64 *, int);
    int (*xstat)(int, const char *, struct stat *);
    int (*lxstat)(int, const char *, struct stat *);
    int (*xstat64)(int, const char *, struct stat64 *);
    int (*lxstat64)(int, const char *, struct stat64 *);
    int (*fxstatat)(int, int, const char *, struct stat *, int);
    int (*fxstatat64)(int, int, const char *, struct stat64 *, int);
    int (*statx)(int, const char *, int, unsigned int, struct statx *);
    int (*access)(const char *, int);
    int (*faccessat)(int, const char *, int, int);
    ssize_t (*readlink)(const char *, char *, size_t);
    ssize_t (*readlinkat)(int, const char *, char *, size_t);
    int (*chdir)(const char *);
    int (*fchdir)(int);
    DIR *(*opendir)(const char *);
    DIR *(*fdopendir)(int);
    struct dirent *(*readdir)(DIR *);
    struct dirent64 *(*readdir64)(DIR *);
    int (*readdir_r)(DIR *, struct dirent *, struct dirent **);
    int (*readdir64_r)(DIR *, struct dirent64 *, struct dirent64 **);
    void (*rewinddir)(DIR *);
    void (*seekdir)(DIR *, long);
    long (*telldir)(DIR *);
    int (*closedir)(DIR *);
    int (*scandir)(const char *, struct dirent ***, int (*)(const struct dirent *),
                   int (*)(const struct dirent **, const struct dirent **));
    int (*scandir64)(const char *, struct dirent64 ***, int (*)(const struct dirent64 *),
                     int (*)(const struct dirent64 **, const struct dirent64 **));
    int (*scandirat)(int, const char *, struct dirent ***, int (*)(const struct dirent *),
                     int (*)(const struct dirent **, const struct dirent **));
    int (*scandirat64)(int, const char *, struct dirent64 ***,
                       int (*)(const struct dirent64 *),
                       int (*)(const struct dirent64 **, const struct dirent64 **));
    long (*syscall)(long, ...);
    int (*getpriority)(int, id_t);
    int (*setpriority)(int, id_t, int);
    int (*sched_getscheduler)(pid_t);
    int (*sched_getparam)(pid_t, void *);
    int (*sched_setscheduler)(pid_t, int, const void *);
    int (*sched_setparam)(pid_t, const void *);
    int (*kill)(pid_t, int);
    ssize_t (*read)(int, void *, size_t);
    int (*close)(int);
};
extern struct proc_real proc_real;
void proc_resolve(void);

/* ---- procview.c: the caller's client family (TSEMU_ROOT and its descendants) ---- */
unsigned long proc_host_parent(unsigned long pid); /* 0 when unknown */
/* Whether host process `pid` descends from TSEMU_ROOT, walking parents with `parent` (NULL:
 * read from the host's /proc). */
int proc_family_member(unsigned long pid, unsigned long (*parent)(unsigned long, void *),
                       void *ctx);
int proc_in_family(unsigned long pid);

/* ---- procview.c: the view, the caller's own pids, the path rules ---- */

/* The view's path (no trailing slash) while TSEMU_PROC_VIEW names a valid view, else NULL.
 * The first call reads the environment and checks the marker; a missing marker is looked
 * for again at most once a second. */
const char *proc_view(size_t *len);

/* Whether pid N is the caller's own, which stays real whatever the view holds: its pid,
 * this thread's tid. (Other threads of the caller are found by proc_own_thread, its parent by
 * proc_is_parent: those are real only where the view has no task of that number.) */
int proc_is_own(unsigned long n);
int proc_is_parent(unsigned long n);
int proc_own_thread(unsigned long n); /* the real /proc/self/task/N exists */
pid_t proc_getpid(void);

/* What a path under /proc becomes (procroute.h: struct proc_route, the rules), asked with the
 * shim's answers about the caller. A wrapper calls proc_route_begin() and tries the call with
 * the path it returns; when that fails with ENOENT or ENOTDIR, proc_route_next() gives the
 * rules' next candidate, if any. PROC_ROUTED below does all of it. The real /proc itself is
 * given as PROC_REAL_ROOT. */
const char *proc_route_begin(struct proc_route *r, int dirfd, const char *path, int flags);
static inline const char *proc_route_next(struct proc_route *r)
{
    return proc_rules_next(r);
}

/* Calls EXPR, with P bound to each path the rules give for PATH, until one answers; returns
 * EXPR's value (FAIL, of TYPE, is how the call reports an error). */
#define PROC_ROUTED(TYPE, FAIL, DIRFD, PATH, FLAGS, P, EXPR)                                  \
    do {                                                                                      \
        struct proc_route route_;                                                             \
        const char *P = proc_route_begin(&route_, (DIRFD), (PATH), (FLAGS));                  \
        for (;;) {                                                                            \
            if (route_.kind == PROUTE_ERROR)                                                  \
                return (FAIL);                                                                \
            TYPE rv_ = (EXPR);                                                                \
            if (!proc_route_retry(&route_, rv_ == (FAIL), errno)) {                           \
                if (rv_ != (FAIL))                                                            \
                    errno = route_.saved_errno;                                               \
                return rv_;                                                                   \
            }                                                                                 \
            P = proc_route_next(&route_);                                                     \
        }                                                                                     \
    } while (0)

/* Whether the descriptor is the real /proc directory (procfs's root). */
int proc_fd_is_root(int fd);
/* The current directory changed: find out again whether it is /proc. */
void proc_cwd_changed(void);

/* ---- procdir.c ---- */
void proc_dir_adopt(DIR *dir, int mode);

/* ---- procsys.c ---- */
/* Reads VIEW/<pid>/.tsemu (or a thread's through .tid): 0 and the values, or -1 with errno
 * ENOENT when pid is not emulated. */
struct proc_task_attrs {
    int nice, policy, rt_priority, ioprio;
};
int proc_task_attrs(unsigned long pid, struct proc_task_attrs *out);

#endif
