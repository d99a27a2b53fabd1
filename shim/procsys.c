/*
 * System calls about a pid, answered for the view's tasks: ioprio_get (through syscall(),
 * which glibc has no wrapper for), getpriority, sched_getscheduler, sched_getparam and
 * kill. Their setter counterparts (ioprio_set, setpriority, sched_setscheduler,
 * sched_setparam) refuse an emulated pid with EPERM, so that a tool's "renice" or "set I/O
 * priority" never lands on a host process that happens to have the same number.
 *
 * Which pid is what (procview.c): pid 0 and negative ones (the caller, process groups),
 * the caller's own pid, this thread, its parent and its other threads are the kernel's;
 * a pid of the view (VIEW/<pid>, or VIEW/.tid/<pid> for a thread) is answered from its
 * `.tsemu` file; any other pid does not exist (ESRCH), as it does not in the listing.
 * kill() makes one exception: the caller's own children stay real, so that a shell, a
 * supervisor or `timeout` run through the shim can still signal what it started.
 */
#include "proc.h"

#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define IOPRIO_WHO_PROCESS 1

/* Parse "nice=N\npolicy=N\nrt_priority=N\nioprio=N\n"; absent keys stay 0. */
static int read_attrs(const char *path, struct proc_task_attrs *out)
{
    int fd = proc_real.openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -1;
    char buf[512];
    size_t got = 0;
    for (;;) {
        ssize_t n = proc_real.read(fd, buf + got, sizeof buf - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got == sizeof buf - 1)
            break;
    }
    proc_real.close(fd);
    buf[got] = '\0';
    memset(out, 0, sizeof *out);
    static const struct {
        const char *key;
        size_t offset;
    } keys[] = {
        {"nice=", offsetof(struct proc_task_attrs, nice)},
        {"policy=", offsetof(struct proc_task_attrs, policy)},
        {"rt_priority=", offsetof(struct proc_task_attrs, rt_priority)},
        {"ioprio=", offsetof(struct proc_task_attrs, ioprio)},
    };
    for (char *line = buf; *line;) {
        char *end = strchrnul(line, '\n');
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            size_t len = strlen(keys[i].key);
            if (!strncmp(line, keys[i].key, len)) {
                long v = strtol(line + len, NULL, 10);
                *(int *)((char *)out + keys[i].offset) =
                    v > INT_MAX ? INT_MAX : v < INT_MIN ? INT_MIN : (int)v;
            }
        }
        line = *end ? end + 1 : end;
    }
    return 0;
}

int proc_task_attrs(unsigned long pid, struct proc_task_attrs *out)
{
    size_t vlen;
    const char *view = proc_view(&vlen);
    if (!view) {
        errno = ENOENT;
        return -1;
    }
    static const char *const forms[] = {"%s/%lu/" PROC_TASK_ATTRS,
                                        "%s/" PROC_TID_DIR "/%lu/" PROC_TASK_ATTRS};
    for (size_t i = 0; i < 2; i++) {
        char path[PROC_VIEW_MAX + 64];
        snprintf(path, sizeof path, forms[i], view, pid);
        if (read_attrs(path, out) == 0)
            return 0;
        /* A task directory without the file: the task exists, with default attributes. */
        char *slash = strrchr(path, '/');
        *slash = '\0';
        struct stat st;
        if (proc_real.fstatat(AT_FDCWD, path, &st, 0) == 0 && S_ISDIR(st.st_mode)) {
            memset(out, 0, sizeof *out);
            return 0;
        }
    }
    errno = ENOENT;
    return -1;
}

enum { PID_REAL, PID_EMULATED, PID_NONE };

/* What `pid` is, and an emulated one's attributes. errno is left as it was. */
static int classify(long pid, struct proc_task_attrs *attrs)
{
    size_t vlen;
    if (pid <= 0 || pid > INT_MAX || !proc_view(&vlen) || proc_is_own((unsigned long)pid))
        return PID_REAL;
    int saved = errno;
    int kind = proc_task_attrs((unsigned long)pid, attrs) == 0 ? PID_EMULATED
               : proc_own_thread((unsigned long)pid)            ? PID_REAL
               : proc_is_parent((unsigned long)pid)             ? PID_REAL
               : proc_in_family((unsigned long)pid)             ? PID_REAL
                                                                 : PID_NONE;
    errno = saved;
    return kind;
}

static int refuse(int err)
{
    errno = err;
    return -1;
}

/* ---- syscall(): ioprio_get and ioprio_set, every other number passed through ---- */

long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    proc_resolve();
    if ((number == SYS_ioprio_get || number == SYS_ioprio_set) &&
        (int)a1 == IOPRIO_WHO_PROCESS) {
        struct proc_task_attrs attrs;
        switch (classify((int)a2, &attrs)) {
        case PID_EMULATED:
            return number == SYS_ioprio_get ? attrs.ioprio : refuse(EPERM);
        case PID_NONE:
            return refuse(ESRCH);
        }
    }
    return proc_real.syscall(number, a1, a2, a3, a4, a5, a6);
}

/* ---- priorities and scheduling ---- */

int getpriority(__priority_which_t which, id_t who)
{
    proc_resolve();
    struct proc_task_attrs attrs;
    if (which == PRIO_PROCESS) {
        switch (classify((long)who, &attrs)) {
        case PID_EMULATED:
            return attrs.nice; /* glibc's getpriority gives the nice value itself */
        case PID_NONE:
            return refuse(ESRCH);
        }
    }
    return proc_real.getpriority(which, who);
}

int setpriority(__priority_which_t which, id_t who, int prio)
{
    proc_resolve();
    struct proc_task_attrs attrs;
    if (which == PRIO_PROCESS) {
        switch (classify((long)who, &attrs)) {
        case PID_EMULATED:
            return refuse(EPERM);
        case PID_NONE:
            return refuse(ESRCH);
        }
    }
    return proc_real.setpriority(which, who, prio);
}

int sched_getscheduler(pid_t pid)
{
    proc_resolve();
    struct proc_task_attrs attrs;
    switch (classify(pid, &attrs)) {
    case PID_EMULATED:
        return attrs.policy;
    case PID_NONE:
        return refuse(ESRCH);
    }
    return proc_real.sched_getscheduler(pid);
}

int sched_getparam(pid_t pid, struct sched_param *param)
{
    proc_resolve();
    struct proc_task_attrs attrs;
    switch (classify(pid, &attrs)) {
    case PID_EMULATED:
        if (!param)
            return refuse(EINVAL); /* as the kernel checks it first */
        memset(param, 0, sizeof *param);
        param->sched_priority = attrs.rt_priority;
        return 0;
    case PID_NONE:
        return refuse(param ? ESRCH : EINVAL);
    }
    return proc_real.sched_getparam(pid, param);
}

int sched_setscheduler(pid_t pid, int policy, const struct sched_param *param)
{
    proc_resolve();
    struct proc_task_attrs attrs;
    switch (classify(pid, &attrs)) {
    case PID_EMULATED:
        return refuse(EPERM);
    case PID_NONE:
        return refuse(ESRCH);
    }
    return proc_real.sched_setscheduler(pid, policy, param);
}

int sched_setparam(pid_t pid, const struct sched_param *param)
{
    proc_resolve();
    struct proc_task_attrs attrs;
    switch (classify(pid, &attrs)) {
    case PID_EMULATED:
        return refuse(EPERM);
    case PID_NONE:
        return refuse(ESRCH);
    }
    return proc_real.sched_setparam(pid, param);
}

/* ---- kill ---- */

/* Whether the host's process `pid` is a child of the caller (its real /proc stat says so). */
static int own_child(pid_t pid)
{
    char path[48], buf[512];
    int saved = errno;
    snprintf(path, sizeof path, PROC_REAL_ROOT "/%d/stat", pid);
    int fd = proc_real.openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    ssize_t n = fd < 0 ? -1 : proc_real.read(fd, buf, sizeof buf - 1);
    if (fd >= 0)
        proc_real.close(fd);
    errno = saved;
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *comm_end = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
    char state;
    int ppid;
    return comm_end && sscanf(comm_end + 1, " %c %d", &state, &ppid) == 2 &&
           ppid == proc_getpid();
}

int kill(pid_t pid, int sig)
{
    proc_resolve();
    struct proc_task_attrs attrs;
    switch (classify(pid, &attrs)) {
    case PID_EMULATED:
        if (sig < 0 || sig >= NSIG)
            return refuse(EINVAL);
        return sig == 0 ? 0 : refuse(EPERM);
    case PID_NONE:
        if (!own_child(pid))
            return refuse(ESRCH);
    }
    return proc_real.kill(pid, sig);
}
