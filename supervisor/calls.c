/*
 * The trapped socket calls, answered for the client.
 *
 * Each call on a descriptor is first identified: a copy of the caller's descriptor
 * (pidfd_getfd), its inode looked up in the table of emulated sockets. Not one of ours (or
 * not a descriptor at all): CONTINUE, the kernel does the call as if nothing had trapped it.
 * Ours: the call is done here, on the copy, as the shim does it in the client's process
 * (sockops.c, io.c: the same checks in the same order, the same errno values, the same
 * addressing through shim/addr.c), the caller's memory read and written with
 * process_vm_readv / process_vm_writev (a bad pointer is EFAULT, as on the kernel).
 *
 * The sender the server sees is this process (a descendant of the client family's root
 * when `tsemu run` started it); as root, requests carry the client's pid in SCM_CREDENTIALS
 * instead, which only a privileged sender may claim.
 *
 * Receives: one non-blocking attempt on the copy; a datagram from anyone but the server's
 * user is dropped unseen, the server's control notices are consumed (an overrun notice
 * fails the receive with ENOBUFS). When nothing is queued and the caller's socket is
 * blocking, the call is parked (loop.c polls its socket) and answered when data comes, when
 * SO_RCVTIMEO runs out (EAGAIN), or when a signal is pending for the caller (ERESTARTSYS:
 * the kernel then restarts the call after the handler when SA_RESTART asks it, or fails it
 * with EINTR, as for any interrupted receive). Before a parked call consumes a datagram its
 * notification is checked (ID_VALID).
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
#include <linux/capability.h>

#define ERESTARTSYS 512
#define RECV_ROOM (256 * 1024) /* more than any Unix datagram the server can send */
#define NLCTRL_ID 0x10
#define CTRL_CMD_NEWFAMILY 1
#define CGROUPSTATS_CMD_GET 4
#define MAX_PASSED_FDS 16
#define ALIGN4(x) (((x) + 3u) & ~3u)


/* ---- the caller's memory ---- */

int rm_read(pid_t tid, void *to, uint64_t from, size_t len)
{
    if (!len)
        return 0;
    struct iovec l = {to, len}, r = {(void *)(uintptr_t)from, len};
    return process_vm_readv(tid, &l, 1, &r, 1, 0) == (ssize_t)len ? 0 : -EFAULT;
}

int rm_write(pid_t tid, uint64_t to, const void *from, size_t len)
{
    if (!len)
        return 0;
    struct iovec l = {(void *)from, len}, r = {(void *)(uintptr_t)to, len};
    return process_vm_writev(tid, &l, 1, &r, 1, 0) == (ssize_t)len ? 0 : -EFAULT;
}

/* Scattered: `len` bytes between `local` and the caller's pieces `remote` (n of them). */
static int rm_scatter(pid_t tid, int to_caller, void *local, size_t len,
                      const struct iovec *remote, size_t n)
{
    struct iovec l = {local, len};
    size_t done = 0;
    for (size_t first = 0; first < n && done < len; first += IOV_MAX) {
        size_t count = n - first < IOV_MAX ? n - first : IOV_MAX;
        size_t part = 0;
        for (size_t i = 0; i < count; i++)
            part += remote[first + i].iov_len;
        if (part > len - done)
            part = len - done;
        l.iov_base = (char *)local + done;
        l.iov_len = part;
        ssize_t got = to_caller ? process_vm_writev(tid, &l, 1, remote + first, count, 0)
                                : process_vm_readv(tid, &l, 1, remote + first, count, 0);
        if (got != (ssize_t)part)
            return -EFAULT;
        done += part;
    }
    return done == len ? 0 : -EFAULT;
}

/* The caller's iovec array: EMSGSIZE beyond UIO_MAXIOV, EFAULT, EINVAL for a negative length;
 * the total is cut to MAX_RW_COUNT as the kernel cuts it. */
static int take_iovs(pid_t tid, uint64_t at, size_t n, struct iovec **out, size_t *total)
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
    if (rm_read(tid, v, at, n * sizeof *v)) {
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

/* move_addr_to_kernel() */
static int take_address(pid_t tid, uint64_t uaddr, uint64_t ulen, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if ((int)ulen < 0 || (int)ulen > MAX_ADDRLEN)
        return -EINVAL;
    return rm_read(tid, ss, uaddr, (size_t)(int)ulen);
}

/* move_addr_to_user(): the name cut to *ulen's room, then its full length into *ulen. */
static int give_address(pid_t tid, const void *name, int klen, uint64_t uaddr, uint64_t ulen)
{
    int len;
    if (rm_read(tid, &len, ulen, sizeof len))
        return -EFAULT;
    if (len > klen)
        len = klen;
    if (len < 0)
        return -EINVAL;
    if (rm_write(tid, uaddr, name, (size_t)len) || rm_write(tid, ulen, &klen, sizeof klen))
        return -EFAULT;
    return 0;
}

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

static int capable_net_admin(void)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    if (syscall(SYS_capget, &header, data) != 0)
        return 0;
    return (int)((data[CAP_NET_ADMIN / 32].effective >> (CAP_NET_ADMIN % 32)) & 1);
}

/* ---- socket() ---- */

static void do_socket(struct caller *c, const struct seccomp_data *d)
{
    int type = (int)d->args[1];
    int kind = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (kind != SOCK_RAW && kind != SOCK_DGRAM) {
        sv_reply(c->id, 0, kind & ~0xf ? EINVAL : ESOCKTNOSUPPORT);
        return;
    }
    char server[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (server_path_from_env(server, sizeof server)) {
        sv_reply(c->id, 0, errno);
        return;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | (type & SOCK_NONBLOCK), 0);
    int one = 1;
    struct stat st;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) ||
        fstat(fd, &st)) {
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

/* ---- naming ---- */

static int do_bind(struct caller *c, struct emu_sock *es, int fd, const struct seccomp_data *d)
{
    struct sockaddr_storage ss;
    struct sockaddr_nl nl;
    int err = take_address(c->tid, d->args[1], d->args[2], &ss);
    if (err)
        return err;
    memcpy(&nl, &ss, sizeof nl);
    if ((int)d->args[2] < (int)sizeof nl || nl.nl_family != AF_NETLINK)
        return -EINVAL;
    int rc = 0;
    if (es->port)
        rc = nl.nl_pid != es->port ? (errno = EINVAL, -1) : 0;
    else if (nl.nl_pid)
        rc = emu_bind_port(es, fd, nl.nl_pid);
    else
        rc = emu_autobind(es, fd);
    if (rc)
        return -errno;
    es->groups = nl.nl_groups;
    if (nl.nl_groups)
        es->groups_allocated = 1;
    return 0;
}

static int do_connect(struct caller *c, struct emu_sock *es, int fd,
                      const struct seccomp_data *d)
{
    struct sockaddr_storage ss;
    struct sockaddr_nl nl;
    int err = take_address(c->tid, d->args[1], d->args[2], &ss);
    if (err)
        return err;
    memcpy(&nl, &ss, sizeof nl);
    if ((int)d->args[2] < (int)sizeof(sa_family_t))
        return -EINVAL;
    if (nl.nl_family == AF_UNSPEC) {
        es->dst_pid = es->dst_groups = 0;
        return 0;
    }
    if (nl.nl_family != AF_NETLINK || (int)d->args[2] < (int)sizeof nl)
        return -EINVAL;
    if ((nl.nl_pid || nl.nl_groups) && !capable_net_admin())
        return -EPERM;
    if (!es->port && emu_autobind(es, fd))
        return -errno;
    es->dst_pid = nl.nl_pid;
    es->dst_groups = nl.nl_groups ? (uint32_t)__builtin_ffs((int)nl.nl_groups) : 0;
    return 0;
}

static int give_name(struct caller *c, uint32_t pid, uint32_t groups,
                     const struct seccomp_data *d)
{
    struct sockaddr_nl nl;
    memset(&nl, 0, sizeof nl);
    nl.nl_family = AF_NETLINK;
    nl.nl_pid = pid;
    nl.nl_groups = groups;
    return give_address(c->tid, &nl, sizeof nl, d->args[1], d->args[2]);
}

/* ---- sending ---- */

static int taskstats_family; /* learned from nlctrl replies, as io.c does */

static int check_control(const unsigned char *control, size_t len)
{
    size_t off = 0;
    while (len - off >= sizeof(struct cmsghdr)) {
        struct cmsghdr cm;
        memcpy(&cm, control + off, sizeof cm);
        if (cm.cmsg_len < sizeof cm || cm.cmsg_len > len - off)
            return -EINVAL;
        if (cm.cmsg_level == SOL_SOCKET &&
            (cm.cmsg_type != SCM_CREDENTIALS || cm.cmsg_len != CMSG_LEN(sizeof(struct ucred))))
            return -EINVAL;
        size_t step = CMSG_ALIGN(cm.cmsg_len);
        if (step > len - off)
            break;
        off += step;
    }
    return 0;
}

/* The CGROUPSTATS requests' descriptors (the caller's), copied here to travel with
 * SCM_RIGHTS, one per request as the server counts them. */
static int cgroupstats_fds(struct caller *c, const unsigned char *buf, size_t len, int *fds)
{
    int count = 0;
    size_t off = 0;
    while (off + NLMSG_HDRLEN <= len && count < MAX_PASSED_FDS) {
        struct nlmsghdr h;
        memcpy(&h, buf + off, sizeof h);
        if (h.nlmsg_len < NLMSG_HDRLEN || off + h.nlmsg_len > len)
            break;
        int ours = taskstats_family ? h.nlmsg_type == taskstats_family : h.nlmsg_type > NLCTRL_ID;
        if (ours && (h.nlmsg_flags & NLM_F_REQUEST) && (h.nlmsg_flags & NLM_F_DUMP) != NLM_F_DUMP &&
            h.nlmsg_len >= NLMSG_HDRLEN + 4 && buf[off + NLMSG_HDRLEN] == CGROUPSTATS_CMD_GET) {
            size_t a = off + NLMSG_HDRLEN + 4, end = off + h.nlmsg_len;
            while (a + 4 <= end) {
                uint16_t alen, atype;
                memcpy(&alen, buf + a, 2);
                memcpy(&atype, buf + a + 2, 2);
                if (alen < 4 || a + alen > end)
                    break;
                if ((atype & 0x3fff) == 1 && alen >= 8) {
                    uint32_t theirs;
                    memcpy(&theirs, buf + a + 4, 4);
                    int mine = grab(c, (int)theirs);
                    if (mine >= 0)
                        fds[count++] = mine;
                    break;
                }
                a += ALIGN4(alen);
            }
        }
        off += ALIGN4(h.nlmsg_len);
    }
    return count;
}

struct out {
    const struct iovec *iov; /* the caller's pieces */
    size_t iovlen, len;
    const struct sockaddr_storage *name;
    size_t namelen;
    const unsigned char *control;
    size_t controllen;
};

static int64_t do_send(struct caller *c, struct emu_sock *es, int fd, const struct out *o,
                       int flags)
{
    static int claim_pid = 1; /* SCM_CREDENTIALS with the client's pid, while allowed */
    size_t limit = es->sndbuf > 32 ? (size_t)es->sndbuf - 32 : 0;
    uint32_t dst = es->dst_pid;
    if (flags & MSG_OOB)
        return -EOPNOTSUPP;
    if (o->len == 0)
        return -ENODATA;
    if (o->controllen) {
        int err = check_control(o->control, o->controllen);
        if (err)
            return err;
    }
    if (o->namelen) {
        struct sockaddr_nl nl;
        memcpy(&nl, o->name, sizeof nl);
        if (o->namelen < sizeof nl || nl.nl_family != AF_NETLINK)
            return -EINVAL;
        if ((nl.nl_pid || nl.nl_groups) && !capable_net_admin())
            return -EPERM;
        dst = nl.nl_pid;
    }
    if (emu_ensure_bound(es, fd))
        return -errno;
    if (o->len > limit)
        return -EMSGSIZE;
    unsigned char *flat = malloc(o->len);
    if (!flat)
        return -ENOBUFS;
    if (rm_scatter(c->tid, 0, flat, o->len, o->iov, o->iovlen)) {
        free(flat);
        return -EFAULT;
    }
    struct sockaddr_un to;
    memset(&to, 0, sizeof to);
    to.sun_family = AF_UNIX;
    if (dst == 0)
        snprintf(to.sun_path, sizeof to.sun_path, "%s", es->server);
    else if (port_path(to.sun_path, sizeof to.sun_path, es->server, dst)) {
        free(flat);
        return -errno;
    }
    int fds[MAX_PASSED_FDS];
    int nfds = cgroupstats_fds(c, flat, o->len, fds);
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * MAX_PASSED_FDS)];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec data = {flat, o->len};
    struct msghdr m = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &data,
                       .msg_iovlen = 1, .msg_control = control.buf};
    size_t used = 0;
    if (claim_pid && c->tgid != getpid()) {
        struct cmsghdr *cm = (struct cmsghdr *)control.buf;
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_CREDENTIALS;
        cm->cmsg_len = CMSG_LEN(sizeof(struct ucred));
        struct ucred who = {c->tgid, getuid(), getgid()};
        memcpy(CMSG_DATA(cm), &who, sizeof who);
        used += CMSG_SPACE(sizeof(struct ucred));
    }
    if (nfds) {
        struct cmsghdr *cm = (struct cmsghdr *)(control.buf + used);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
        used += CMSG_SPACE(sizeof(int) * (size_t)nfds);
    }
    m.msg_controllen = used;
    if (!used)
        m.msg_control = NULL;
    ssize_t n;
    for (;;) {
        n = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EPERM && claim_pid && m.msg_controllen) {
            /* Not privileged to speak for the client's pid: the server hears this process. */
            claim_pid = 0;
            size_t cred = CMSG_SPACE(sizeof(struct ucred));
            memmove(control.buf, control.buf + cred, used - cred);
            used -= cred;
            m.msg_controllen = used;
            if (!used)
                m.msg_control = NULL;
            continue;
        }
        if (n < 0 && dst == 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct timespec pause = {0, 200 * 1000};
            nanosleep(&pause, NULL); /* the server's queue is full: it reads it at once */
            continue;
        }
        break;
    }
    int err = errno;
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    free(flat);
    if (n < 0)
        return -(err == ENOENT || err == ENOTDIR || err == ECONNREFUSED ? ECONNREFUSED : err);
    return n;
}

static int64_t send_msghdr(struct caller *c, struct emu_sock *es, int fd, uint64_t umsg,
                           int flags)
{
    struct msghdr m;
    if (rm_read(c->tid, &m, umsg, sizeof m))
        return -EFAULT;
    struct iovec *iov;
    size_t total;
    int err = take_iovs(c->tid, (uint64_t)(uintptr_t)m.msg_iov, m.msg_iovlen, &iov, &total);
    if (err)
        return err;
    struct sockaddr_storage name;
    size_t namelen = 0;
    if (m.msg_name && m.msg_namelen) {
        if ((err = take_address(c->tid, (uint64_t)(uintptr_t)m.msg_name, m.msg_namelen, &name))) {
            free(iov);
            return err;
        }
        namelen = m.msg_namelen;
    }
    unsigned char *control = NULL;
    if (m.msg_controllen) {
        if (m.msg_controllen > INT_MAX || !(control = malloc(m.msg_controllen))) {
            free(iov);
            return -ENOBUFS;
        }
        if (rm_read(c->tid, control, (uint64_t)(uintptr_t)m.msg_control, m.msg_controllen)) {
            free(iov);
            free(control);
            return -EFAULT;
        }
    }
    struct out o = {iov, m.msg_iovlen, total, &name, namelen, control, m.msg_controllen};
    int64_t n = do_send(c, es, fd, &o, flags);
    free(iov);
    free(control);
    return n;
}

/* ---- receiving ---- */

static const unsigned char control_magic[8] = {0, 0, 0, 0, 't', 's', 'E', 'M'};

static void learn_family(const unsigned char *buf, size_t len)
{
    size_t off = 0;
    while (off + NLMSG_HDRLEN + 4 <= len) {
        struct nlmsghdr h;
        memcpy(&h, buf + off, sizeof h);
        if (h.nlmsg_len < NLMSG_HDRLEN + 4 || off + h.nlmsg_len > len)
            return;
        if (h.nlmsg_type == NLCTRL_ID && buf[off + NLMSG_HDRLEN] == CTRL_CMD_NEWFAMILY) {
            int is_taskstats = 0, id = 0;
            size_t a = off + NLMSG_HDRLEN + 4, end = off + h.nlmsg_len;
            while (a + 4 <= end) {
                uint16_t alen, atype;
                memcpy(&alen, buf + a, 2);
                memcpy(&atype, buf + a + 2, 2);
                if (alen < 4 || a + alen > end)
                    break;
                if ((atype & 0x3fff) == 2 && alen >= 13 && !memcmp(buf + a + 4, "TASKSTATS", 9))
                    is_taskstats = 1;
                if ((atype & 0x3fff) == 1 && alen >= 6) {
                    uint16_t v;
                    memcpy(&v, buf + a + 4, 2);
                    id = v;
                }
                a += ALIGN4(alen);
            }
            if (is_taskstats && id)
                taskstats_family = id;
        }
        off += ALIGN4(h.nlmsg_len);
    }
}

/* What one receive wants (recvfrom's or one msghdr's), and what it got. */
struct in {
    struct iovec *iov;
    size_t iovlen, room;
    uint64_t ucontrol;
    size_t ucontrollen, controlled;
    struct sockaddr_nl name;
    int msg_flags;
};

/* put_cmsg() (shim/cmsg.c) into the caller's buffer, written through the kernel. */
static void put_cmsg(pid_t tid, struct in *in, int level, int type, const void *data,
                     size_t len)
{
    unsigned char cm[NL_CMSG_MAX];
    size_t step;
    size_t n = nl_cmsg_build(cm, in->ucontrol ? in->ucontrollen : 0, level, type, data, len,
                             &in->msg_flags, &step);
    if (n == 0 || rm_write(tid, in->ucontrol, cm, n))
        return;
    in->ucontrol += step;
    in->ucontrollen -= step;
    in->controlled += step;
}

/* One non-blocking receive into the caller's buffers: its length, -EAGAIN when nothing is
 * queued, or -errno. */
static int64_t try_receive(struct caller *c, struct emu_sock *es, int fd, struct in *in,
                           int flags)
{
    static unsigned char *buf;
    if (!buf && !(buf = malloc(RECV_ROOM)))
        return -ENOBUFS;
    if (es->sk_err) {
        int err = es->sk_err;
        es->sk_err = 0;
        return -err;
    }
    if (flags & MSG_OOB)
        return -EOPNOTSUPP;
    size_t want = in->room < RECV_ROOM ? in->room : RECV_ROOM;
    if (want < CTL_SIZE)
        want = CTL_SIZE; /* room to tell a control notice, cut to the caller's room after */
    for (;;) {
        struct sockaddr_un from;
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int))];
        } ours;
        struct iovec v = {buf, want};
        struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &v,
                           .msg_iovlen = 1, .msg_control = ours.buf,
                           .msg_controllen = sizeof ours.buf};
        int peek = flags & MSG_PEEK;
        ssize_t full = recvmsg(fd, &m, peek | MSG_TRUNC | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (full < 0)
            return -errno;
        struct ucred creds = {0, (uid_t)-1, (gid_t)-1};
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS)
                memcpy(&creds, CMSG_DATA(cm), sizeof creds);
            else if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
                for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++)
                    close(((int *)CMSG_DATA(cm))[i]);
        }
        if (!es->server_known)
            emu_learn_server(es);
        if (!es->server_known || creds.uid != es->server_uid) {
            if (peek)
                recv(fd, buf, 0, MSG_DONTWAIT); /* a stranger's: dropped unseen */
            continue;
        }
        uint32_t port = 0;
        size_t namelen = m.msg_namelen;
        if (namelen > offsetof(struct sockaddr_un, sun_path) && from.sun_path[0]) {
            char path[sizeof from.sun_path + 1], server[sizeof from.sun_path + 1];
            size_t len = namelen - offsetof(struct sockaddr_un, sun_path);
            memcpy(path, from.sun_path, len);
            path[len] = '\0';
            if (port_from_path(path, server, sizeof server, &port) != 0)
                port = 0;
        }
        if (!port && full == CTL_SIZE && !memcmp(buf, control_magic, sizeof control_magic)) {
            if (peek)
                recv(fd, buf, 0, MSG_DONTWAIT);
            uint16_t op;
            memcpy(&op, buf + 8, 2);
            if (op == CTL_OP_ENOBUFS)
                return -ENOBUFS;
            continue;
        }
        size_t have = (size_t)full < in->room ? (size_t)full : in->room;
        if (have > want)
            have = want;
        if (have >= NLMSG_HDRLEN + 4)
            learn_family(buf, have);
        if (rm_scatter(c->tid, 1, buf, have, in->iov, in->iovlen))
            return -EFAULT;
        in->msg_flags = (size_t)full > in->room ? MSG_TRUNC : 0;
        memset(&in->name, 0, sizeof in->name);
        in->name.nl_family = AF_NETLINK;
        in->name.nl_pid = port;
        in->controlled = 0;
        if (es->pktinfo) {
            uint32_t group = 0;
            put_cmsg(c->tid, in, SOL_NETLINK, NLO_PKTINFO, &group, sizeof group);
        }
        if (es->passcred) {
            struct ucred kernel = {0, 0, 0};
            put_cmsg(c->tid, in, SOL_SOCKET, SCM_CREDENTIALS, port ? &creds : &kernel,
                     sizeof kernel);
        }
        return (flags & MSG_TRUNC) ? full : (int64_t)have;
    }
}

static int64_t recv_msghdr(struct caller *c, struct emu_sock *es, int fd, uint64_t umsg,
                           int flags)
{
    struct msghdr m;
    if (rm_read(c->tid, &m, umsg, sizeof m))
        return -EFAULT;
    struct in in;
    memset(&in, 0, sizeof in);
    int err = take_iovs(c->tid, (uint64_t)(uintptr_t)m.msg_iov, m.msg_iovlen, &in.iov, &in.room);
    if (err)
        return err;
    in.iovlen = m.msg_iovlen;
    in.ucontrol = (uint64_t)(uintptr_t)m.msg_control;
    in.ucontrollen = m.msg_controllen;
    int64_t n = try_receive(c, es, fd, &in, flags);
    free(in.iov);
    if (n < 0)
        return n;
    int klen = sizeof in.name;
    if (m.msg_name) {
        int room = (int)m.msg_namelen < klen ? (int)m.msg_namelen : klen;
        if (room < 0)
            room = 0;
        if (rm_write(c->tid, (uint64_t)(uintptr_t)m.msg_name, &in.name, (size_t)room) ||
            rm_write(c->tid, umsg + offsetof(struct msghdr, msg_namelen), &klen, sizeof klen))
            return -EFAULT;
    }
    size_t controlled = in.controlled;
    if (rm_write(c->tid, umsg + offsetof(struct msghdr, msg_flags), &in.msg_flags,
                 sizeof in.msg_flags) ||
        rm_write(c->tid, umsg + offsetof(struct msghdr, msg_controllen), &controlled,
                 sizeof controlled))
        return -EFAULT;
    return n;
}

static int64_t do_recvmmsg(struct caller *c, struct emu_sock *es, int fd,
                           const struct seccomp_data *d, int flags)
{
    if (flags & MSG_CMSG_COMPAT)
        return -EINVAL;
    unsigned int vlen = (unsigned int)d->args[2], got = 0;
    if (vlen > UIO_MAXIOV)
        vlen = UIO_MAXIOV;
    int each = flags & ~MSG_WAITFORONE;
    int64_t err = 0;
    while (got < vlen) {
        uint64_t entry = d->args[1] + (uint64_t)got * sizeof(struct mmsghdr);
        int64_t n = recv_msghdr(c, es, fd, entry, got ? each | MSG_DONTWAIT : each);
        if (n < 0) {
            err = n;
            break;
        }
        unsigned int len = (unsigned int)n;
        if (rm_write(c->tid, entry + offsetof(struct mmsghdr, msg_len), &len, sizeof len)) {
            err = -EFAULT;
            break;
        }
        got++;
    }
    if (!got)
        return err;
    if (err && err != -EAGAIN)
        es->sk_err = (int)-err;
    return got;
}

/* ---- options ---- */

static int buffer_size(int requested, int force, int sysctl_max, int floor)
{
    long long val;
    if (force)
        val = requested < 0 ? 0 : requested;
    else
        val = (unsigned)requested < (unsigned)sysctl_max ? (long long)(unsigned)requested
                                                         : (long long)sysctl_max;
    if (val > INT_MAX / 2)
        val = INT_MAX / 2;
    return val * 2 > floor ? (int)(val * 2) : floor;
}

#define CONTINUE_CALL INT64_MIN /* a result that means "let the kernel do it" */

static int64_t do_setsockopt(struct caller *c, struct emu_sock *es, int fd,
                             const struct seccomp_data *d)
{
    int level = (int)d->args[1], opt = (int)d->args[2];
    uint64_t value = d->args[3];
    int len = (int)d->args[4], val = 0;
    if (len < 0)
        return -EINVAL;
    if (level == SOL_SOCKET) {
        switch (opt) {
        case SO_RCVBUF: case SO_RCVBUFFORCE: case SO_SNDBUF: case SO_SNDBUFFORCE:
        case SO_DOMAIN: case SO_TYPE: case SO_PROTOCOL: case SO_PASSCRED:
            if (len < (int)sizeof(int))
                return -EINVAL;
            if (rm_read(c->tid, &val, value, sizeof val))
                return -EFAULT;
            break;
        default:
            return CONTINUE_CALL;
        }
        if ((opt == SO_RCVBUFFORCE || opt == SO_SNDBUFFORCE) && !capable_net_admin())
            return -EPERM;
        switch (opt) {
        case SO_RCVBUF: case SO_RCVBUFFORCE:
            es->rcvbuf = buffer_size(val, opt == SO_RCVBUFFORCE, EMU_RMEM_MAX, EMU_MIN_RCVBUF);
            es->rcvbuf_set = 1;
            emu_send_control(es, fd, CTL_OPT_RCVBUF, es->rcvbuf);
            return 0;
        case SO_SNDBUF: case SO_SNDBUFFORCE:
            es->sndbuf = buffer_size(val, opt == SO_SNDBUFFORCE, EMU_WMEM_MAX, EMU_MIN_SNDBUF);
            return 0;
        case SO_PASSCRED:
            es->passcred = !!val;
            return 0;
        default:
            return -ENOPROTOOPT;
        }
    }
    if (level != SOL_NETLINK)
        return -ENOPROTOOPT;
    if (len >= (int)sizeof(int) && rm_read(c->tid, &val, value, sizeof val))
        return -EFAULT;
    switch (opt) {
    case NLO_ADD_MEMBERSHIP: case NLO_DROP_MEMBERSHIP:
        es->groups_allocated = 1;
        if (val <= 0)
            return -EINVAL;
        if (val <= 32) {
            uint32_t bit = 1u << (val - 1);
            es->groups = opt == NLO_ADD_MEMBERSHIP ? es->groups | bit : es->groups & ~bit;
        }
        return 0;
    case NLO_PKTINFO: es->pktinfo = !!val; return 0;
    case NLO_BROADCAST_ERROR: es->broadcast_error = !!val; return 0;
    case NLO_LISTEN_ALL_NSID: es->listen_all_nsid = !!val; return 0;
    case NLO_GET_STRICT_CHK: es->strict_chk = !!val; return 0;
    case NLO_NO_ENOBUFS:
        es->no_enobufs = !!val;
        emu_send_control(es, fd, CTL_OPT_NO_ENOBUFS, es->no_enobufs);
        return 0;
    case NLO_CAP_ACK:
        es->cap_ack = !!val;
        emu_send_control(es, fd, CTL_OPT_CAP_ACK, es->cap_ack);
        return 0;
    case NLO_EXT_ACK:
        es->ext_ack = !!val;
        emu_send_control(es, fd, CTL_OPT_EXT_ACK, es->ext_ack);
        return 0;
    default:
        return -ENOPROTOOPT;
    }
}

static int64_t socket_int(struct caller *c, uint64_t value, uint64_t ulen, int val)
{
    int room;
    if (rm_read(c->tid, &room, ulen, sizeof room))
        return -EFAULT;
    if (room < 0)
        return -EINVAL;
    if (room > (int)sizeof val)
        room = sizeof val;
    if (rm_write(c->tid, value, &val, (size_t)room) || rm_write(c->tid, ulen, &room, sizeof room))
        return -EFAULT;
    return 0;
}

static int64_t do_getsockopt(struct caller *c, struct emu_sock *es,
                             const struct seccomp_data *d)
{
    int level = (int)d->args[1], opt = (int)d->args[2];
    uint64_t value = d->args[3], ulen = d->args[4];
    if (level == SOL_SOCKET) {
        switch (opt) {
        case SO_DOMAIN: return socket_int(c, value, ulen, AF_NETLINK);
        case SO_TYPE: return socket_int(c, value, ulen, es->type);
        case SO_PROTOCOL: return socket_int(c, value, ulen, TSEMU_NETLINK_GENERIC);
        case SO_RCVBUF: return socket_int(c, value, ulen, es->rcvbuf);
        case SO_SNDBUF: return socket_int(c, value, ulen, es->sndbuf);
        case SO_PASSCRED: return socket_int(c, value, ulen, es->passcred);
        case SO_ERROR:
            if (es->sk_err) {
                int err = es->sk_err;
                es->sk_err = 0;
                return socket_int(c, value, ulen, err);
            }
            return CONTINUE_CALL;
        default: return CONTINUE_CALL;
        }
    }
    if (level != SOL_NETLINK)
        return -ENOPROTOOPT;
    int room, val;
    if (rm_read(c->tid, &room, ulen, sizeof room))
        return -EFAULT;
    if (room < 0)
        return -EINVAL;
    switch (opt) {
    case NLO_PKTINFO: val = es->pktinfo; break;
    case NLO_BROADCAST_ERROR: val = es->broadcast_error; break;
    case NLO_NO_ENOBUFS: val = es->no_enobufs; break;
    case NLO_CAP_ACK: val = es->cap_ack; break;
    case NLO_EXT_ACK: val = es->ext_ack; break;
    case NLO_GET_STRICT_CHK: val = es->strict_chk; break;
    case NLO_LIST_MEMBERSHIPS: {
        int size = es->groups_allocated ? (int)sizeof(uint32_t) : 0;
        if (size && room >= size && rm_write(c->tid, value, &es->groups, sizeof es->groups))
            return -EFAULT;
        return rm_write(c->tid, ulen, &size, sizeof size) ? -EFAULT : 0;
    }
    default:
        return -ENOPROTOOPT;
    }
    if (room < (int)sizeof(int))
        return -EINVAL;
    room = sizeof(int);
    if (rm_write(c->tid, ulen, &room, sizeof room) || rm_write(c->tid, value, &val, sizeof val))
        return -EFAULT;
    return 0;
}

/* ---- dispatch ---- */

static int is_receive(int nr)
{
    return nr == SYS_recvfrom || nr == SYS_recvmsg || nr == SYS_recvmmsg;
}

/* The call on an emulated socket, once (`force_dontwait` for a parked call's retries). */
static int64_t run_call(struct caller *c, struct emu_sock *es, int fd,
                        const struct seccomp_data *d, int force_dontwait)
{
    emu_client_tgid = c->tgid;
    int flags;
    switch (d->nr) {
    case SYS_bind: return do_bind(c, es, fd, d);
    case SYS_connect: return do_connect(c, es, fd, d);
    case SYS_getsockname: return give_name(c, es->port, es->groups, d);
    case SYS_getpeername:
        return give_name(c, es->dst_pid, es->dst_groups ? 1u << (es->dst_groups - 1) : 0, d);
    case SYS_setsockopt: return do_setsockopt(c, es, fd, d);
    case SYS_getsockopt: return do_getsockopt(c, es, d);
    case SYS_sendmsg:
        flags = (int)d->args[2];
        if (flags & MSG_CMSG_COMPAT)
            return -EINVAL;
        return send_msghdr(c, es, fd, d->args[1], flags);
    case SYS_sendmmsg: {
        flags = (int)d->args[3];
        if (flags & MSG_CMSG_COMPAT)
            return -EINVAL;
        unsigned int vlen = (unsigned int)d->args[2], sent = 0;
        if (vlen > UIO_MAXIOV)
            vlen = UIO_MAXIOV;
        int64_t err = 0;
        for (; sent < vlen; sent++) {
            uint64_t entry = d->args[1] + (uint64_t)sent * sizeof(struct mmsghdr);
            int64_t n = send_msghdr(c, es, fd, entry, flags);
            if (n < 0) {
                err = n;
                break;
            }
            unsigned int len = (unsigned int)n;
            if (rm_write(c->tid, entry + offsetof(struct mmsghdr, msg_len), &len, sizeof len)) {
                err = -EFAULT;
                break;
            }
        }
        return sent ? sent : err;
    }
    case SYS_sendto: {
        size_t len = d->args[2] > MAX_RW_COUNT ? MAX_RW_COUNT : (size_t)d->args[2];
        struct iovec iov = {(void *)(uintptr_t)d->args[1], len};
        struct sockaddr_storage name;
        size_t namelen = 0;
        if (d->args[4]) {
            int err = take_address(c->tid, d->args[4], d->args[5], &name);
            if (err)
                return err;
            namelen = (size_t)(int)d->args[5];
        }
        struct out o = {&iov, 1, len, &name, namelen, NULL, 0};
        return do_send(c, es, fd, &o, (int)d->args[3]);
    }
    case SYS_recvfrom: {
        flags = (int)d->args[3] | (force_dontwait ? MSG_DONTWAIT : 0);
        struct in in;
        memset(&in, 0, sizeof in);
        struct iovec iov = {(void *)(uintptr_t)d->args[1],
                            d->args[2] > MAX_RW_COUNT ? MAX_RW_COUNT : (size_t)d->args[2]};
        in.iov = &iov;
        in.iovlen = 1;
        in.room = iov.iov_len;
        int64_t n = try_receive(c, es, fd, &in, flags);
        if (n >= 0 && d->args[4]) {
            int err = give_address(c->tid, &in.name, sizeof in.name, d->args[4], d->args[5]);
            if (err)
                return err;
        }
        return n;
    }
    case SYS_recvmsg:
        flags = (int)d->args[2] | (force_dontwait ? MSG_DONTWAIT : 0);
        if (flags & MSG_CMSG_COMPAT)
            return -EINVAL;
        return recv_msghdr(c, es, fd, d->args[1], flags);
    case SYS_recvmmsg:
        return do_recvmmsg(c, es, fd, d, (int)d->args[3] | (force_dontwait ? MSG_DONTWAIT : 0));
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
        int64_t n = run_call(&p->who, &p->sock->es, p->fd, &p->data, 1);
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
    if (d->nr == SYS_open || d->nr == SYS_openat || d->nr == SYS_newfstatat) {
        if (!sv_proc_handle(c, d))
            sv_continue(c->id);
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
    int64_t n = run_call(c, &s->es, fd, d, 0);
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
