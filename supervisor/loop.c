/*
 * The event loop: one thread, one poll over the seccomp listener and the sockets of parked
 * receives (a blocking receive with nothing queued is answered when data comes, never by
 * blocking this process). Notifications are read one per readiness of the listener (a
 * RECV blocks when there is none).
 *
 * A notification names the calling thread (its tid), not its process. Each thread's pidfd
 * and tgid are cached; a cached pidfd of a thread that has died (and whose tid a new thread
 * may have) fails pidfd_getfd with ESRCH, and is then opened again (calls.c). After a pidfd
 * is opened the notification's id is checked again (SECCOMP_IOCTL_NOTIF_ID_VALID): had the
 * thread died meanwhile and its tid been reused, the id would no longer be valid.
 *
 * tsemu-run is the subreaper of the client's descendants, reaps them all, and returns when
 * the command has exited and no process uses the filter any longer (the listener polls
 * POLLHUP once the last one is reaped): descendants left running keep being answered.
 * SIGTERM and SIGHUP are passed on to the command; SIGINT and SIGQUIT, which a terminal sends
 * to the whole foreground group, are left to it.
 */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

int sv_listener = -1;
int sv_debug;

void sv_say(const char *fmt, ...)
{
    if (!sv_debug)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    ssize_t ignored = write(2, "tsemu-run: ", 11);
    ignored = write(2, line, (size_t)n);
    (void)ignored;
}

int sv_valid(uint64_t id)
{
    return ioctl(sv_listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

int sv_reply(uint64_t id, int64_t val, int err)
{
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    resp.val = err ? 0 : val;
    resp.error = err ? -err : 0;
    return ioctl(sv_listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

int sv_continue(uint64_t id)
{
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    return ioctl(sv_listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

/* ---- the callers: each thread's pidfd and tgid ---- */

#define CALLERS 256
static struct caller callers[CALLERS];

static pid_t tgid_of(pid_t tid)
{
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tid;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return tid;
    text[n] = '\0';
    char *at = strstr(text, "\nTgid:");
    return at ? (pid_t)strtol(at + 6, NULL, 10) : tid;
}

/* The caller of notification `id` from thread `tid`, its pidfd opened (or refreshed with
 * `fresh`); NULL when the thread is gone. */
struct caller *sv_caller(uint64_t id, pid_t tid, int fresh)
{
    struct caller *c = &callers[(unsigned)tid % CALLERS];
    if (c->tid == tid && c->pidfd >= 0 && !fresh) {
        c->id = id;
        return c;
    }
    if (c->pidfd >= 0)
        close(c->pidfd);
    c->tid = tid;
    c->id = id;
    c->pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    if (c->pidfd < 0)
        c->pidfd = (int)syscall(SYS_pidfd_open, tid, 0); /* before 6.9: leaders only */
    c->tgid = tgid_of(tid);
    if (c->pidfd < 0 || !sv_valid(id)) {
        if (c->pidfd >= 0)
            close(c->pidfd);
        c->pidfd = -1;
        c->tid = 0;
        return NULL;
    }
    return c;
}

/* ---- signals ---- */

static volatile sig_atomic_t pending[65];

static void note_signal(int sig)
{
    pending[sig] = 1;
}

static void on_child(int sig)
{
    (void)sig; /* only interrupts poll: the loop reaps */
}

static void forward_signals(pid_t child, int alive)
{
    static const int forwarded[] = {SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
        int sig = forwarded[i];
        if (pending[sig]) {
            pending[sig] = 0;
            if (alive)
                kill(child, sig);
        }
    }
}

static void handle_notification(void)
{
    struct seccomp_notif notif;
    memset(&notif, 0, sizeof notif);
    if (ioctl(sv_listener, SECCOMP_IOCTL_NOTIF_RECV, &notif) != 0)
        return; /* ENOENT: the caller was interrupted before we read it */
    struct caller *c = sv_caller(notif.id, (pid_t)notif.pid, 0);
    if (!c)
        return; /* the thread is gone: its notification with it */
    sv_handle(c, &notif.data);
}

int sv_loop(pid_t child, int child_pidfd)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = note_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    for (size_t i = 0; i < CALLERS; i++)
        callers[i].pidfd = -1;

    int status = 0, child_done = 0;
    enum { MAX_POLL = 1024 };
    static struct pollfd fds[MAX_POLL];
    for (;;) {
        /* Reap whatever has exited: the command (its status is ours), and orphans. */
        for (;;) {
            int st;
            pid_t who = waitpid(-1, &st, WNOHANG | __WALL);
            if (who <= 0)
                break;
            if (who == child) {
                status = st;
                child_done = 1;
            }
        }
        forward_signals(child, !child_done);
        if (child_done && sv_listener < 0)
            return status;

        int n = 0, timeout = -1;
        if (sv_listener >= 0)
            fds[n++] = (struct pollfd){.fd = sv_listener, .events = POLLIN};
        if (child_pidfd >= 0 && !child_done)
            fds[n++] = (struct pollfd){.fd = child_pidfd, .events = POLLIN};
        int first_parked = n;
        n += sv_parked_fds(fds + n, MAX_POLL - n, &timeout);
        if (child_done && timeout < 0)
            timeout = 200; /* orphans without SIGCHLD to us yet: look again */
        int ready = poll(fds, (nfds_t)n, timeout);
        if (ready < 0 && errno != EINTR)
            return status;
        if (ready < 0)
            continue;
        if (sv_listener >= 0 && (fds[0].revents & POLLIN))
            handle_notification();
        else if (sv_listener >= 0 && (fds[0].revents & (POLLHUP | POLLERR))) {
            if (child_done) { /* no process uses the filter any more */
                close(sv_listener);
                sv_listener = -1;
            }
        }
        if (sv_parked_count() && (n > first_parked || timeout >= 0))
            sv_retry_parked();
    }
}
