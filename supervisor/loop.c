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
 * tsemu-run is the subreaper of the client's descendants. Before it reaps one it tells the
 * server (control op EXITED from a socket bound in the ports directory, as the shim's wait
 * wrappers and `tsemu run` do; up to 2 s for the answer), which reads the zombie's records
 * and broadcasts its exit to the listeners, as the kernel would. It reaps them all, and returns when
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
#include <time.h>
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
    va_list ap;
    va_start(ap, fmt);
    emu_say_line("tsemu-run: ", fmt, ap);
    va_end(ap);
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

int sv_inject(uint64_t id, int fd, int cloexec)
{
    struct seccomp_notif_addfd add;
    memset(&add, 0, sizeof add);
    add.id = id;
    add.flags = SECCOMP_ADDFD_FLAG_SEND;
    add.srcfd = (uint32_t)fd;
    add.newfd_flags = cloexec ? O_CLOEXEC : 0;
    int got = ioctl(sv_listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    int err = errno;
    close(fd);
    if (got < 0 && err != ENOENT) /* ENOENT: the caller is gone */
        sv_reply(id, 0, err);
    return got;
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

ssize_t sv_read_proc(unsigned long id, const char *name, char *text, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%lu/%s", id, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, text, size - 1);
    close(fd);
    if (n <= 0)
        return -1;
    text[n] = '\0';
    return n;
}

static pid_t tgid_of(pid_t tid)
{
    char text[4096];
    if (sv_read_proc((unsigned long)tid, "status", text, sizeof text) < 0)
        return tid;
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

/* Tell the server something of our own family (wire/control.py): ROOT (this process and its
 * descendants are a client family: `tsemu run` does it when it starts us, so we do it only
 * when nobody did, TSEMU_ROOT unset) or EXITED (our child `pid` has exited and is still a
 * zombie: the server reads its /proc entry and broadcasts its exit), and wait up to 2 s for the
 * answer. Nothing happens without a server. */
static void tell_server(int what, pid_t pid)
{
    struct emu_sock es;
    memset(&es, 0, sizeof es);
    if (server_path_from_env(es.server, sizeof es.server))
        return;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
        if (fd >= 0)
            close(fd);
        return;
    }
    emu_client_tgid = 0; /* our own port: this process speaks for its child */
    if (emu_autobind(&es, fd) != 0 || !es.bound) {
        close(fd);
        return;
    }
    unsigned char msg[CTL_SIZE];
    emu_control_encode(msg, what, 0, pid);
    struct sockaddr_un to = {.sun_family = AF_UNIX};
    snprintf(to.sun_path, sizeof to.sun_path, "%s", es.server);
    if (sendto(fd, msg, sizeof msg, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof to) ==
        (ssize_t)sizeof msg) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        for (int waited = 0; waited < 2000 && poll(&p, 1, 100) >= 0; waited += 100)
            if (emu_seen_from_server(fd, es.server, pid))
                break;
    }
    close(fd);
    char path[sizeof to.sun_path];
    if (port_path(path, sizeof path, es.server, es.port) == 0)
        unlink(path);
}

/* Before the child exists: a SIGTERM it sends us at once must be passed back to it, not
 * kill us. (Caught signals are reset by exec; the ignored ones are set after the fork.) */
void sv_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = note_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
}

/* What was trapped, said at the end with --debug: all calls, and the sends and receives
 * among them (under --via auto none of the shim's own: they carry EMU_UNTRAPPED). */
static unsigned long trapped_calls, trapped_io;

static void say_counts(void)
{
    sv_say("%lu calls trapped, %lu of them sends and receives", trapped_calls, trapped_io);
}

static void handle_notification(void)
{
    struct seccomp_notif notif;
    memset(&notif, 0, sizeof notif);
    if (ioctl(sv_listener, SECCOMP_IOCTL_NOTIF_RECV, &notif) != 0)
        return; /* ENOENT: the caller was interrupted before we read it */
    trapped_calls++;
    switch (notif.data.nr) {
    case SYS_sendto: case SYS_sendmsg: case SYS_sendmmsg:
    case SYS_recvfrom: case SYS_recvmsg: case SYS_recvmmsg:
        trapped_io++;
        break;
    }
    struct caller *c = sv_caller(notif.id, (pid_t)notif.pid, 0);
    if (!c)
        return; /* the thread is gone: its notification with it */
    if (sv_proc_traps(notif.data.nr)) { /* a path call: trapped only with a /proc view */
        if (!sv_proc_handle(c, &notif.data))
            sv_continue(c->id);
        return;
    }
    sv_handle(c, &notif.data);
}

int sv_loop(pid_t child, int child_pidfd)
{
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    /* TERM, HUP and CHLD are taken only inside ppoll: none can slip in between the check of
     * what arrived and the wait. */
    sigset_t caught, open_mask;
    sigemptyset(&caught);
    sigaddset(&caught, SIGTERM);
    sigaddset(&caught, SIGHUP);
    sigaddset(&caught, SIGCHLD);
    sigprocmask(SIG_BLOCK, &caught, &open_mask);
    sigdelset(&open_mask, SIGTERM);
    sigdelset(&open_mask, SIGHUP);
    sigdelset(&open_mask, SIGCHLD);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    if (!getenv("TSEMU_ROOT"))
        tell_server(CTL_OP_ROOT, getpid());
    for (size_t i = 0; i < CALLERS; i++)
        callers[i].pidfd = -1;

    int status = 0, child_done = 0;
    enum { MAX_POLL = 1024 };
    static struct pollfd fds[MAX_POLL];
    for (;;) {
        /* Reap whatever has exited: the command (its status is ours), and orphans. */
        for (;;) {
            siginfo_t info;
            memset(&info, 0, sizeof info);
            if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL) != 0 ||
                info.si_pid <= 0)
                break;
            tell_server(CTL_OP_EXITED, info.si_pid);
            int st;
            pid_t who = waitpid(info.si_pid, &st, WNOHANG | __WALL);
            if (who <= 0)
                break;
            if (who == child) {
                status = st;
                child_done = 1;
            }
        }
        forward_signals(child, !child_done);
        if (child_done && sv_listener < 0) {
            say_counts();
            return status;
        }

        int n = 0, timeout = -1;
        if (sv_listener >= 0)
            fds[n++] = (struct pollfd){.fd = sv_listener, .events = POLLIN};
        if (child_pidfd >= 0 && !child_done)
            fds[n++] = (struct pollfd){.fd = child_pidfd, .events = POLLIN};
        int first_parked = n;
        n += sv_parked_fds(fds + n, MAX_POLL - n, &timeout);
        if (child_done && timeout < 0)
            timeout = 200; /* orphans without SIGCHLD to us yet: look again */
        struct timespec wait = {timeout / 1000, (long)(timeout % 1000) * 1000000L};
        int ready = ppoll(fds, (nfds_t)n, timeout >= 0 ? &wait : NULL, &open_mask);
        if (ready < 0 && errno != EINTR) {
            say_counts();
            return status;
        }
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
