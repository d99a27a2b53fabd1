/*
 * The trapped socket calls, answered for the client.
 *
 * Each call on a descriptor is first identified: a copy of the caller's descriptor
 * (pidfd_getfd), its inode looked up in the table of emulated sockets. Not one of ours (or
 * not a descriptor at all): CONTINUE, the kernel does the call as if nothing had trapped it.
 * Ours: what is the supervisor's own is done here (the trapped call's arguments decoded from
 * seccomp_data; the msghdr, iovec and mmsghdr structures copied out of the caller; parking;
 * the reply); the netlink rules are the shim's own code, compiled in (io.c for send and
 * receive, naming.c for bind, connect and names, options.c for socket options), given the
 * caller as a `struct caller_mem` (sv_mem): its memory read and written with
 * process_vm_readv / process_vm_writev (a bad pointer is EFAULT, as on the kernel), the
 * descriptors a CGROUPSTATS request names copied with pidfd_getfd.
 *
 * The sender the server sees is this process (a descendant of the client family's root
 * when `tsemu run` started it); as root, requests carry the client's pid in SCM_CREDENTIALS
 * instead, which only a privileged sender may claim (io.c, who->speak_for).
 *
 * Nothing here blocks: sends and receives are made with MSG_DONTWAIT. When nothing is queued
 * and the caller's socket is blocking, a receive is parked (loop.c polls its socket) and
 * answered when data comes, when SO_RCVTIMEO runs out (EAGAIN), or when a signal is pending
 * for the caller (ERESTARTSYS: the kernel then restarts the call after the handler when
 * SA_RESTART asks it, or fails it with EINTR, as for any interrupted receive). Before a
 * parked call consumes a datagram its notification is checked (ID_VALID).
 */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define ERESTARTSYS 512
#define CONTINUE_CALL INT64_MIN /* a result that means "let the kernel do it" */

/* The caller's own descriptor `fd`, copied here; -errno. ESRCH refreshes a stale pidfd. */
static int grab(struct caller *c, int fd)
{
    int copy = (int)syscall(SYS_pidfd_getfd, c->pidfd, fd, 0);
    if (copy < 0 && errno == ESRCH) {
        struct caller *fresh = sv_caller(c->id, c->tid, 1);
        if (!fresh)
            return -ESRCH;
        copy = (int)syscall(SYS_pidfd_getfd, fresh->pidfd, fd, 0);
    }
    return copy < 0 ? -errno : copy;
}

/* ---- socket() ---- */

static void do_socket(struct caller *c, const struct seccomp_data *d)
{
    int type = (int)d->args[1];
    char server[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int kind, fd = emu_socket(type, 1, &kind, server, sizeof server);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        sv_reply(c->id, 0, err);
        return;
    }
    struct sv_sock *s = sv_add(st.st_ino, kind, server);
    if (!s) {
        close(fd);
        sv_reply(c->id, 0, ENOBUFS);
        return;
    }
    emu_learn_server(&s->es);
    int got = sv_inject(c->id, fd, type & SOCK_CLOEXEC);
    if (got >= 0)
        sv_say("socket: fd %d for pid %d (tid %d)", got, (int)c->tgid, (int)c->tid);
}

/* ---- the caller, for the shim's rules ---- */

static int fd_of_caller(const struct caller_mem *who, int theirs)
{
    int mine = grab(who->host, theirs);
    return mine < 0 ? -1 : mine;
}

struct caller_mem sv_mem(struct caller *c)
{
    static pid_t self;
    if (!self)
        self = getpid();
    return (struct caller_mem){.pid = c->tid,
                               .speak_for = c->tgid != self ? c->tgid : 0,
                               .judge_creds = 0, /* our rights are not the client's */
                               .fd_of = fd_of_caller,
                               .fd_copies = 1,
                               .host = c};
}

int rm_read(pid_t tid, void *to, uint64_t from, size_t len)
{
    struct caller_mem m = {.pid = tid};
    return um_read(&m, to, (const void *)(uintptr_t)from, len) ? -EFAULT : 0;
}

int rm_write(pid_t tid, uint64_t to, const void *from, size_t len)
{
    struct caller_mem m = {.pid = tid};
    return um_write(&m, (void *)(uintptr_t)to, from, len) ? -EFAULT : 0;
}

/* A result of the shim's rules (0 or a positive errno, or EMU_PASS) as a reply. */
static int64_t verdict(int err)
{
    return err == EMU_PASS ? CONTINUE_CALL : -(int64_t)err;
}

/* The caller's iovec array: EMSGSIZE beyond UIO_MAXIOV, EFAULT, EINVAL for a negative length;
 * the total is cut to MAX_RW_COUNT as the kernel cuts it. */
static int take_iovs(const struct caller_mem *m, uint64_t at, size_t n, struct iovec **out,
                     size_t *total)
{
    *out = NULL;
    *total = 0;
    if (n > UIO_MAXIOV)
        return -EMSGSIZE;
    if (!n)
        return 0;
    struct iovec *v = malloc(n * sizeof *v);
    if (!v)
        return -ENOMEM;
    if (um_read(m, v, (void *)(uintptr_t)at, n * sizeof *v)) {
        free(v);
        return -EFAULT;
    }
    size_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        if ((ssize_t)v[i].iov_len < 0) {
            free(v);
            return -EINVAL;
        }
        if (v[i].iov_len > MAX_RW_COUNT - sum)
            v[i].iov_len = MAX_RW_COUNT - sum;
        sum += v[i].iov_len;
    }
    *out = v;
    *total = sum;
    return 0;
}

/* ---- sending ---- */

static int64_t send_msghdr(const struct caller_mem *cm, struct emu_sock *es, int fd,
                           uint64_t umsg, int flags)
{
    struct msghdr m;
    if (um_read(cm, &m, (void *)(uintptr_t)umsg, sizeof m))
        return -EFAULT;
    struct iovec *iov;
    size_t total;
    int err = take_iovs(cm, (uint64_t)(uintptr_t)m.msg_iov, m.msg_iovlen, &iov, &total);
    if (err)
        return err;
    struct sockaddr_storage name;
    size_t namelen = 0;
    if (m.msg_name && m.msg_namelen) {
        if ((err = emu_take_address(cm, m.msg_name, m.msg_namelen, &name))) {
            free(iov);
            return -err;
        }
        namelen = m.msg_namelen;
    }
    unsigned char *control = NULL;
    if (m.msg_controllen) {
        if (m.msg_controllen > INT_MAX || !(control = malloc(m.msg_controllen))) {
            free(iov);
            return -ENOBUFS;
        }
        if (um_read(cm, control, m.msg_control, m.msg_controllen)) {
            free(iov);
            free(control);
            return -EFAULT;
        }
    }
    struct nl_out o = {.iov = iov, .iovlen = m.msg_iovlen, .len = total, .name = &name,
                       .namelen = namelen, .control = control, .controllen = m.msg_controllen};
    ssize_t n = emu_send(cm, es, fd, &o, flags | MSG_DONTWAIT);
    err = errno;
    free(iov);
    free(control);
    return n < 0 ? -err : n;
}

typedef int64_t (*msghdr_call)(const struct caller_mem *cm, struct emu_sock *es, int fd,
                               uint64_t umsg, int flags);

/* sendmmsg's and recvmmsg's loop: the caller's mmsghdrs at args[1] (args[2] of them, at most
 * UIO_MAXIOV) through `one` in turn, each one's length written back to its msg_len, until one
 * fails. Returns how many went; *err is what stopped them (0: nothing did). */
static unsigned int each_mmsghdr(const struct caller_mem *cm, struct emu_sock *es, int fd,
                                 const struct seccomp_data *d, int flags, msghdr_call one,
                                 int64_t *err)
{
    unsigned int vlen = (unsigned int)d->args[2], done = 0;
    if (vlen > UIO_MAXIOV)
        vlen = UIO_MAXIOV;
    *err = 0;
    for (; done < vlen; done++) {
        uint64_t entry = d->args[1] + (uint64_t)done * sizeof(struct mmsghdr);
        int64_t n = one(cm, es, fd, entry, flags);
        if (n < 0) {
            *err = n;
            break;
        }
        unsigned int len = (unsigned int)n;
        if (um_write(cm, (void *)(uintptr_t)(entry + offsetof(struct mmsghdr, msg_len)), &len,
                     sizeof len)) {
            *err = -EFAULT;
            break;
        }
    }
    return done;
}

static int64_t do_sendmmsg(const struct caller_mem *cm, struct emu_sock *es, int fd,
                           const struct seccomp_data *d)
{
    int flags = (int)d->args[3];
    if (flags & MSG_CMSG_COMPAT)
        return -EINVAL;
    int64_t err;
    unsigned int sent = each_mmsghdr(cm, es, fd, d, flags, send_msghdr, &err);
    return sent ? sent : err;
}

static int64_t do_sendto(const struct caller_mem *cm, struct emu_sock *es, int fd,
                         const struct seccomp_data *d)
{
    size_t len = d->args[2] > MAX_RW_COUNT ? MAX_RW_COUNT : (size_t)d->args[2];
    struct iovec iov = {(void *)(uintptr_t)d->args[1], len};
    struct nl_out o = {.iov = &iov, .iovlen = 1, .len = len};
    if (d->args[4]) { /* move_addr_to_kernel's check; the copy is emu_send's */
        if ((int)d->args[5] < 0 || (int)d->args[5] > MAX_ADDRLEN)
            return -EINVAL;
        o.uname = (const void *)(uintptr_t)d->args[4];
        o.namelen = (size_t)(int)d->args[5];
    }
    ssize_t n = emu_send(cm, es, fd, &o, (int)d->args[3] | MSG_DONTWAIT);
    return n < 0 ? -errno : n;
}

/* ---- receiving (never waiting: MSG_DONTWAIT, and parked by sv_handle) ---- */

static int64_t recv_msghdr(const struct caller_mem *cm, struct emu_sock *es, int fd,
                           uint64_t umsg, int flags)
{
    struct msghdr m;
    if (um_read(cm, &m, (void *)(uintptr_t)umsg, sizeof m))
        return -EFAULT;
    struct iovec *iov;
    size_t room;
    int err = take_iovs(cm, (uint64_t)(uintptr_t)m.msg_iov, m.msg_iovlen, &iov, &room);
    if (err)
        return err;
    struct nl_in in = {.iov = iov, .iovlen = m.msg_iovlen, .ucontrol = m.msg_control,
                       .ucontrollen = m.msg_controllen};
    ssize_t n = emu_recv(cm, es, fd, &in, flags | MSG_DONTWAIT);
    err = errno;
    free(iov);
    if (n < 0)
        return -err;
    if (emu_recvmsg_result(cm, (struct msghdr *)(uintptr_t)umsg, &m, &in))
        return -EFAULT;
    return n;
}

static int64_t do_recvfrom(const struct caller_mem *cm, struct emu_sock *es, int fd,
                           const struct seccomp_data *d, int flags)
{
    struct iovec iov = {(void *)(uintptr_t)d->args[1],
                        d->args[2] > MAX_RW_COUNT ? MAX_RW_COUNT : (size_t)d->args[2]};
    struct nl_in in = {.iov = &iov, .iovlen = 1};
    ssize_t n = emu_recv(cm, es, fd, &in, flags | MSG_DONTWAIT);
    if (n < 0)
        return -errno;
    if (d->args[4]) {
        int err = emu_give_address(cm, &in.name, sizeof in.name, (void *)(uintptr_t)d->args[4],
                                   (socklen_t *)(uintptr_t)d->args[5]);
        if (err)
            return -err;
    }
    return n;
}

static int64_t do_recvmmsg(const struct caller_mem *cm, struct emu_sock *es, int fd,
                           const struct seccomp_data *d, int flags)
{
    if (flags & MSG_CMSG_COMPAT)
        return -EINVAL;
    int64_t err;
    unsigned int got = each_mmsghdr(cm, es, fd, d, flags & ~MSG_WAITFORONE, recv_msghdr, &err);
    if (!got)
        return err;
    if (err && err != -EAGAIN)
        es->sk_err = (int)-err; /* for the next receive, as the kernel leaves it in sk_err */
    return got;
}

/* ---- dispatch ---- */

static int is_receive(int nr)
{
    return nr == SYS_recvfrom || nr == SYS_recvmsg || nr == SYS_recvmmsg;
}

/* The call on an emulated socket, once (a receive never waits: a blocking caller's EAGAIN
 * is what parks it, sv_handle). */
static int64_t run_call(struct caller *c, struct emu_sock *es, int fd,
                        const struct seccomp_data *d)
{
    emu_client_tgid = c->tgid;
    struct caller_mem cm = sv_mem(c);
    void *arg1 = (void *)(uintptr_t)d->args[1];
    int flags;
    switch (d->nr) {
    case SYS_bind: return verdict(emu_bind(&cm, es, fd, arg1, (socklen_t)d->args[2]));
    case SYS_connect: return verdict(emu_connect(&cm, es, fd, arg1, (socklen_t)d->args[2]));
    case SYS_getsockname:
        return verdict(emu_getname(&cm, es, 0, arg1, (socklen_t *)(uintptr_t)d->args[2]));
    case SYS_getpeername:
        return verdict(emu_getname(&cm, es, 1, arg1, (socklen_t *)(uintptr_t)d->args[2]));
    case SYS_setsockopt:
        return verdict(emu_setsockopt(&cm, es, fd, (int)d->args[1], (int)d->args[2],
                                      (const void *)(uintptr_t)d->args[3],
                                      (socklen_t)d->args[4]));
    case SYS_getsockopt:
        return verdict(emu_getsockopt(&cm, es, (int)d->args[1], (int)d->args[2],
                                      (void *)(uintptr_t)d->args[3],
                                      (socklen_t *)(uintptr_t)d->args[4]));
    case SYS_sendmsg:
        flags = (int)d->args[2];
        if (flags & MSG_CMSG_COMPAT)
            return -EINVAL;
        return send_msghdr(&cm, es, fd, d->args[1], flags);
    case SYS_sendmmsg: return do_sendmmsg(&cm, es, fd, d);
    case SYS_sendto: return do_sendto(&cm, es, fd, d);
    case SYS_recvfrom: return do_recvfrom(&cm, es, fd, d, (int)d->args[3]);
    case SYS_recvmsg:
        flags = (int)d->args[2];
        if (flags & MSG_CMSG_COMPAT)
            return -EINVAL;
        return recv_msghdr(&cm, es, fd, d->args[1], flags);
    case SYS_recvmmsg: return do_recvmmsg(&cm, es, fd, d, (int)d->args[3]);
    default:
        return CONTINUE_CALL;
    }
}

/* ---- parked receives ---- */

struct parked {
    struct caller who; /* a copy: the cache entry may be reused meanwhile */
    struct seccomp_data data;
    struct sv_sock *sock;
    int fd;            /* our copy of the caller's socket */
    int64_t deadline;  /* CLOCK_MONOTONIC ms, or -1 */
    struct parked *next;
};
static struct parked *parked;
static int nparked;

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int sv_parked_count(void)
{
    return nparked;
}

#define SIGNAL_TICK_MS 50 /* how often a parked caller's pending signals are looked at */

int sv_parked_fds(struct pollfd *fds, int max, int *timeout_ms)
{
    int n = 0;
    int64_t now = now_ms();
    for (struct parked *p = parked; p && n < max; p = p->next) {
        fds[n++] = (struct pollfd){.fd = p->fd, .events = POLLIN};
        int wait = SIGNAL_TICK_MS;
        if (p->deadline >= 0 && p->deadline - now < wait)
            wait = p->deadline > now ? (int)(p->deadline - now) : 0;
        if (*timeout_ms < 0 || wait < *timeout_ms)
            *timeout_ms = wait;
    }
    return n;
}

/* Whether a signal the thread does not block is pending for it or its process. */
static int signal_pending(pid_t tid)
{
    char text[4096];
    if (sv_read_proc((unsigned long)tid, "status", text, sizeof text) < 0)
        return 0;
    unsigned long long pnd = 0, shd = 0, blk = 0;
    char *at;
    if ((at = strstr(text, "\nSigPnd:")))
        pnd = strtoull(at + 8, NULL, 16);
    if ((at = strstr(text, "\nShdPnd:")))
        shd = strtoull(at + 8, NULL, 16);
    if ((at = strstr(text, "\nSigBlk:")))
        blk = strtoull(at + 8, NULL, 16);
    return ((pnd | shd) & ~blk) != 0;
}

static void unpark(struct parked **link)
{
    struct parked *p = *link;
    *link = p->next;
    close(p->fd);
    free(p);
    nparked--;
}

void sv_retry_parked(void)
{
    int64_t now = now_ms();
    for (struct parked **link = &parked; *link;) {
        struct parked *p = *link;
        if (!sv_valid(p->who.id)) { /* the caller is gone (killed) */
            unpark(link);
            continue;
        }
        int64_t n = run_call(&p->who, &p->sock->es, p->fd, &p->data);
        if (n == -EAGAIN) {
            if (p->deadline >= 0 && now >= p->deadline) {
                sv_reply(p->who.id, 0, EAGAIN);
            } else if (signal_pending(p->who.tid)) {
                sv_reply(p->who.id, 0, ERESTARTSYS);
            } else {
                link = &p->next;
                continue;
            }
        } else {
            sv_reply(p->who.id, n < 0 ? 0 : n, n < 0 ? (int)-n : 0);
        }
        unpark(link);
    }
}

static void park(struct caller *c, const struct seccomp_data *d, struct sv_sock *s, int fd)
{
    struct parked *p = calloc(1, sizeof *p);
    if (!p) {
        sv_reply(c->id, 0, ENOMEM);
        close(fd);
        return;
    }
    p->who = *c;
    p->who.pidfd = -1; /* not needed again: the copy `fd` is ours */
    p->data = *d;
    p->sock = s;
    p->fd = fd;
    p->deadline = -1;
    struct timeval tv;
    socklen_t len = sizeof tv;
    if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0 && (tv.tv_sec || tv.tv_usec))
        p->deadline = now_ms() + (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
    p->next = parked;
    parked = p;
    nparked++;
}

enum outcome sv_handle(struct caller *c, const struct seccomp_data *d)
{
    if (d->nr == SYS_socket) {
        do_socket(c, d);
        return DONE;
    }
    int fd = grab(c, (int)d->args[0]);
    struct stat st;
    struct sv_sock *s = NULL;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
        s = sv_find(st.st_ino);
    if (!s) {
        if (fd >= 0)
            close(fd);
        sv_continue(c->id);
        return DONE;
    }
    int64_t n = run_call(c, &s->es, fd, d);
    if (n == CONTINUE_CALL) {
        close(fd);
        sv_continue(c->id);
        return DONE;
    }
    if (n == -EAGAIN && is_receive(d->nr)) {
        int dontwait = is_receive(d->nr) &&
                       ((int)d->args[d->nr == SYS_recvfrom || d->nr == SYS_recvmmsg ? 3 : 2] &
                        MSG_DONTWAIT);
        if (!dontwait && !(fcntl(fd, F_GETFL) & O_NONBLOCK)) {
            park(c, d, s, fd);
            return PARKED;
        }
    }
    close(fd);
    sv_reply(c->id, n < 0 ? 0 : n, n < 0 ? (int)-n : 0);
    return DONE;
}
