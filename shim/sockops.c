/*
 * The wrapped libc entry points. Each one first asks whether its descriptor is an emulated
 * netlink socket (state.c); if not, it calls libc's own function and nothing else happens.
 *
 * What a netlink socket answers here follows net/netlink/af_netlink.c: the checks bind,
 * connect and the socket options make, in the same order, with the same errno values.
 */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/netlink.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

extern void __chk_fail(void) __attribute__((noreturn));

/* ---- creating, naming, connecting ---- */

int socket(int domain, int type, int protocol)
{
    shim_resolve();
    if (domain != AF_NETLINK || protocol != TSEMU_NETLINK_GENERIC)
        return real_socket(domain, type, protocol);
    int kind = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (kind != SOCK_RAW && kind != SOCK_DGRAM) {
        errno = ESOCKTNOSUPPORT;
        return -1;
    }
    char server[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (server_path_from_env(server, sizeof server))
        return -1;
    int fd = real_socket(AF_UNIX, SOCK_DGRAM | (type & (SOCK_NONBLOCK | SOCK_CLOEXEC)), 0);
    if (fd < 0)
        return -1;
    if (!emu_new(fd, kind, server)) {
        int err = errno;
        real_close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* A sockaddr_nl from the caller, checked as netlink_bind and netlink_connect check it. */
static int netlink_address(const struct sockaddr *addr, socklen_t len, struct sockaddr_nl *nl)
{
    if (!addr || len < sizeof *nl) {
        errno = EINVAL;
        return -1;
    }
    memcpy(nl, addr, sizeof *nl);
    if (nl->nl_family != AF_NETLINK) {
        errno = EINVAL;
        return -1;
    }
    return 0;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_bind(fd, addr, len);
    struct sockaddr_nl nl;
    if (netlink_address(addr, len, &nl))
        return -1;
    pthread_mutex_lock(&es->lock);
    int rc = 0;
    if (es->port) {
        /* Bound already (perhaps only on paper, while there is no server): the kernel
         * accepts the same port again and nothing else. */
        if (nl.nl_pid != es->port) {
            errno = EINVAL;
            rc = -1;
        }
    } else if (nl.nl_pid) {
        rc = emu_bind_port(es, fd, nl.nl_pid);
    } else {
        rc = emu_autobind(es, fd);
    }
    if (rc == 0)
        es->groups = nl.nl_groups;
    pthread_mutex_unlock(&es->lock);
    return rc;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_connect(fd, addr, len);
    if (!addr || len < sizeof(sa_family_t)) {
        errno = EINVAL;
        return -1;
    }
    if (addr->sa_family == AF_UNSPEC) { /* disconnect: sends go to the kernel again */
        pthread_mutex_lock(&es->lock);
        es->dst_pid = es->dst_groups = 0;
        pthread_mutex_unlock(&es->lock);
        return 0;
    }
    struct sockaddr_nl nl;
    if (netlink_address(addr, len, &nl))
        return -1;
    pthread_mutex_lock(&es->lock);
    int rc = es->port ? 0 : emu_autobind(es, fd);
    if (rc == 0) {
        es->dst_pid = nl.nl_pid;
        es->dst_groups = nl.nl_groups ? (uint32_t)__builtin_ffs((int)nl.nl_groups) : 0;
    }
    pthread_mutex_unlock(&es->lock);
    return rc;
}

static int give_address(struct sockaddr *addr, socklen_t *len, uint32_t pid, uint32_t groups)
{
    if (!addr || !len) {
        errno = EFAULT;
        return -1;
    }
    struct sockaddr_nl nl;
    memset(&nl, 0, sizeof nl);
    nl.nl_family = AF_NETLINK;
    nl.nl_pid = pid;
    nl.nl_groups = groups;
    memcpy(addr, &nl, *len < sizeof nl ? *len : sizeof nl);
    *len = sizeof nl;
    return 0;
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_getsockname(fd, addr, len);
    pthread_mutex_lock(&es->lock);
    uint32_t port = es->port, groups = es->groups;
    pthread_mutex_unlock(&es->lock);
    return give_address(addr, len, port, groups);
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_getpeername(fd, addr, len);
    pthread_mutex_lock(&es->lock);
    uint32_t pid = es->dst_pid, group = es->dst_groups;
    pthread_mutex_unlock(&es->lock);
    return give_address(addr, len, pid, group ? 1u << (group - 1) : 0);
}

/* ---- sending ---- */

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    return es ? emu_sendmsg(es, fd, msg, flags) : real_sendmsg(fd, msg, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr,
               socklen_t alen)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_sendto(fd, buf, len, flags, addr, alen);
    struct iovec iov = {(void *)buf, len};
    struct msghdr msg = {.msg_name = (void *)addr, .msg_namelen = addr ? alen : 0,
                         .msg_iov = &iov, .msg_iovlen = 1};
    return emu_sendmsg(es, fd, &msg, flags);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_send(fd, buf, len, flags);
    struct iovec iov = {(void *)buf, len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    return emu_sendmsg(es, fd, &msg, flags);
}

ssize_t write(int fd, const void *buf, size_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_write(fd, buf, len);
    struct iovec iov = {(void *)buf, len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    return emu_sendmsg(es, fd, &msg, 0);
}

ssize_t writev(int fd, const struct iovec *iov, int count)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_writev(fd, iov, count);
    struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)count};
    return emu_sendmsg(es, fd, &msg, 0);
}

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_sendmmsg(fd, vec, vlen, flags);
    unsigned int sent = 0;
    for (; sent < vlen; sent++) {
        ssize_t n = emu_sendmsg(es, fd, &vec[sent].msg_hdr, flags);
        if (n < 0)
            return sent ? (int)sent : -1;
        vec[sent].msg_len = (unsigned int)n;
    }
    return (int)sent;
}

/* ---- receiving ---- */

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    return es ? emu_recvmsg(es, fd, msg, flags) : real_recvmsg(fd, msg, flags);
}

static ssize_t emu_recvfrom(struct emu_sock *es, int fd, void *buf, size_t len, int flags,
                            struct sockaddr *addr, socklen_t *alen)
{
    struct iovec iov = {buf, len};
    struct msghdr msg = {.msg_name = addr && alen ? addr : NULL,
                         .msg_namelen = addr && alen ? *alen : 0,
                         .msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = emu_recvmsg(es, fd, &msg, flags);
    if (n >= 0 && addr && alen)
        *alen = msg.msg_namelen;
    return n;
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr,
                 socklen_t *alen)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_recvfrom(fd, buf, len, flags, addr, alen);
    return emu_recvfrom(es, fd, buf, len, flags, addr, alen);
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_recv(fd, buf, len, flags);
    return emu_recvfrom(es, fd, buf, len, flags, NULL, NULL);
}

ssize_t read(int fd, void *buf, size_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_read(fd, buf, len);
    return emu_recvfrom(es, fd, buf, len, 0, NULL, NULL);
}

ssize_t readv(int fd, const struct iovec *iov, int count)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_readv(fd, iov, count);
    struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)count};
    return emu_recvmsg(es, fd, &msg, 0);
}

int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *timeout)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_recvmmsg(fd, vec, vlen, flags, timeout);
    /* One datagram at a time; after the first, MSG_WAITFORONE stops waiting. (`timeout` is
     * checked by the kernel only between datagrams, and tsemu's clients do not use it.) */
    int each = flags & ~MSG_WAITFORONE;
    unsigned int got = 0;
    for (; got < vlen; got++) {
        ssize_t n = emu_recvmsg(es, fd, &vec[got].msg_hdr, each);
        if (n < 0) {
            if (!got)
                return -1;
            if (errno == ENOBUFS) { /* keep it for the next call, as the kernel's sk_err */
                pthread_mutex_lock(&es->lock);
                es->enobufs = 1;
                pthread_mutex_unlock(&es->lock);
            }
            break;
        }
        vec[got].msg_len = (unsigned int)n;
        if (flags & MSG_WAITFORONE)
            each |= MSG_DONTWAIT;
    }
    return (int)got;
}

/* _FORTIFY_SOURCE: the compiler knows the buffer's size and lets libc check the length. */

ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real___recv_chk(fd, buf, len, buflen, flags);
    if (len > buflen)
        __chk_fail();
    return emu_recvfrom(es, fd, buf, len, flags, NULL, NULL);
}

ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags,
                       struct sockaddr *addr, socklen_t *alen)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real___recvfrom_chk(fd, buf, len, buflen, flags, addr, alen);
    if (len > buflen)
        __chk_fail();
    return emu_recvfrom(es, fd, buf, len, flags, addr, alen);
}

ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real___read_chk(fd, buf, len, buflen);
    if (len > buflen)
        __chk_fail();
    return emu_recvfrom(es, fd, buf, len, 0, NULL, NULL);
}

/* ---- socket options ---- */

static int int_option(const void *value, socklen_t len, int *out)
{
    if (!value || len < sizeof(int)) {
        errno = EINVAL;
        return -1;
    }
    memcpy(out, value, sizeof(int));
    return 0;
}

/* sock_setsockopt's buffer arithmetic: the value is doubled (room for sk_buff overhead),
 * at least the floor, at most INT_MAX; without FORCE first capped at the sysctl maximum. */
static int buffer_size(int requested, int force, int sysctl_max, int floor)
{
    long long val;
    if (force)
        val = requested < 0 ? 0 : requested;
    else /* min_t(u32, ...): a negative request counts as huge */
        val = (unsigned)requested < (unsigned)sysctl_max ? (long long)(unsigned)requested
                                                         : (long long)sysctl_max;
    if (val > INT_MAX / 2)
        val = INT_MAX / 2;
    return val * 2 > floor ? (int)(val * 2) : floor;
}

static int set_socket_level(struct emu_sock *es, int fd, int opt, const void *value,
                            socklen_t len)
{
    int val;
    switch (opt) {
    case SO_RCVBUF:
    case SO_RCVBUFFORCE:
        if (int_option(value, len, &val))
            return -1;
        /* FORCE needs CAP_NET_ADMIN: let the kernel judge, on the Unix socket. */
        if (opt == SO_RCVBUFFORCE && real_setsockopt(fd, SOL_SOCKET, opt, value, len))
            return -1;
        pthread_mutex_lock(&es->lock);
        es->rcvbuf = buffer_size(val, opt == SO_RCVBUFFORCE, EMU_RMEM_MAX, EMU_MIN_RCVBUF);
        es->rcvbuf_set = 1;
        emu_send_control(es, fd, CTL_OPT_RCVBUF, es->rcvbuf);
        pthread_mutex_unlock(&es->lock);
        return 0;
    case SO_SNDBUF:
    case SO_SNDBUFFORCE:
        if (int_option(value, len, &val))
            return -1;
        if (opt == SO_SNDBUFFORCE && real_setsockopt(fd, SOL_SOCKET, opt, value, len))
            return -1;
        pthread_mutex_lock(&es->lock);
        es->sndbuf = buffer_size(val, opt == SO_SNDBUFFORCE, EMU_WMEM_MAX, EMU_MIN_SNDBUF);
        pthread_mutex_unlock(&es->lock);
        return 0;
    case SO_DOMAIN:
    case SO_TYPE:
    case SO_PROTOCOL:
        errno = ENOPROTOOPT; /* read-only */
        return -1;
    default: /* timeouts, SO_PASSCRED, filters...: the Unix socket does them */
        return real_setsockopt(fd, SOL_SOCKET, opt, value, len);
    }
}

static int set_netlink_level(struct emu_sock *es, int fd, int opt, const void *value,
                             socklen_t len)
{
    /* netlink_setsockopt reads an int when there is room for one, else uses 0. */
    int val = 0;
    if (value && len >= sizeof(int))
        memcpy(&val, value, sizeof val);
    int rc = 0;
    pthread_mutex_lock(&es->lock);
    switch (opt) {
    case NLO_ADD_MEMBERSHIP:
    case NLO_DROP_MEMBERSHIP:
        if (val <= 0) {
            errno = EINVAL;
            rc = -1;
        } else if (val <= 32) {
            uint32_t bit = 1u << (val - 1);
            es->groups = opt == NLO_ADD_MEMBERSHIP ? es->groups | bit : es->groups & ~bit;
        }
        break;
    case NLO_PKTINFO:
        es->pktinfo = !!val;
        break;
    case NLO_BROADCAST_ERROR:
        es->broadcast_error = !!val;
        break;
    case NLO_LISTEN_ALL_NSID:
        es->listen_all_nsid = !!val;
        break;
    case NLO_GET_STRICT_CHK:
        es->strict_chk = !!val;
        break;
    case NLO_NO_ENOBUFS:
        es->no_enobufs = !!val;
        emu_send_control(es, fd, CTL_OPT_NO_ENOBUFS, es->no_enobufs);
        break;
    case NLO_CAP_ACK:
        es->cap_ack = !!val;
        emu_send_control(es, fd, CTL_OPT_CAP_ACK, es->cap_ack);
        break;
    case NLO_EXT_ACK:
        es->ext_ack = !!val;
        emu_send_control(es, fd, CTL_OPT_EXT_ACK, es->ext_ack);
        break;
    default:
        errno = ENOPROTOOPT;
        rc = -1;
    }
    pthread_mutex_unlock(&es->lock);
    return rc;
}

int setsockopt(int fd, int level, int opt, const void *value, socklen_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_setsockopt(fd, level, opt, value, len);
    if (level == SOL_SOCKET)
        return set_socket_level(es, fd, opt, value, len);
    if (level == SOL_NETLINK)
        return set_netlink_level(es, fd, opt, value, len);
    errno = ENOPROTOOPT;
    return -1;
}

static int give_int(void *value, socklen_t *len, int val, int exact)
{
    if (!value || !len) {
        errno = EFAULT;
        return -1;
    }
    if ((int)*len < 0 || (exact && *len < sizeof(int))) {
        errno = EINVAL;
        return -1;
    }
    socklen_t n = *len < sizeof val ? *len : sizeof val; /* sock_getsockopt truncates */
    memcpy(value, &val, n);
    *len = n;
    return 0;
}

int getsockopt(int fd, int level, int opt, void *value, socklen_t *len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_getsockopt(fd, level, opt, value, len);
    pthread_mutex_lock(&es->lock);
    struct emu_sock now = *es; /* a consistent snapshot of the fields */
    pthread_mutex_unlock(&es->lock);
    if (level == SOL_SOCKET) {
        switch (opt) {
        case SO_DOMAIN:
            return give_int(value, len, AF_NETLINK, 0);
        case SO_TYPE:
            return give_int(value, len, now.type, 0);
        case SO_PROTOCOL:
            return give_int(value, len, TSEMU_NETLINK_GENERIC, 0);
        case SO_RCVBUF:
            return give_int(value, len, now.rcvbuf, 0);
        case SO_SNDBUF:
            return give_int(value, len, now.sndbuf, 0);
        default:
            return real_getsockopt(fd, level, opt, value, len);
        }
    }
    if (level != SOL_NETLINK) {
        errno = ENOPROTOOPT;
        return -1;
    }
    switch (opt) {
    case NLO_PKTINFO:
        return give_int(value, len, now.pktinfo, 1);
    case NLO_BROADCAST_ERROR:
        return give_int(value, len, now.broadcast_error, 1);
    case NLO_NO_ENOBUFS:
        return give_int(value, len, now.no_enobufs, 1);
    case NLO_LIST_MEMBERSHIPS:
        return give_int(value, len, (int)now.groups, 1);
    case NLO_CAP_ACK:
        return give_int(value, len, now.cap_ack, 1);
    case NLO_EXT_ACK:
        return give_int(value, len, now.ext_ack, 1);
    case NLO_GET_STRICT_CHK:
        return give_int(value, len, now.strict_chk, 1);
    default:
        errno = ENOPROTOOPT;
        return -1;
    }
}

/* ---- descriptors: close and duplicate ---- */

int close(int fd)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_close(fd);
    int rc = real_close(fd);
    int err = errno;
    emu_forget(fd, es); /* after the real close: the port file goes once nobody holds it */
    errno = err;
    return rc;
}

int dup(int fd)
{
    shim_resolve();
    int copy = real_dup(fd);
    struct emu_sock *es = copy >= 0 ? emu_get(fd) : NULL;
    if (es)
        emu_share(copy, es);
    return copy;
}

static int after_dup2(int oldfd, int newfd, int rc)
{
    if (rc < 0 || oldfd == newfd)
        return rc;
    int err = errno;
    struct emu_sock *es = emu_get(oldfd);
    if (es)
        emu_share(newfd, es); /* also drops what newfd was, if it was ours */
    else
        emu_forget(newfd, NULL);
    errno = err;
    return rc;
}

int dup2(int oldfd, int newfd)
{
    shim_resolve();
    return after_dup2(oldfd, newfd, real_dup2(oldfd, newfd));
}

int dup3(int oldfd, int newfd, int flags)
{
    shim_resolve();
    return after_dup2(oldfd, newfd, real_dup3(oldfd, newfd, flags));
}

/* fcntl's third argument is an int or a pointer depending on the command; glibc itself
 * forwards it as a pointer-sized value, and so do we. */
static int after_fcntl(int fd, int cmd, int rc)
{
    if (rc >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) {
        struct emu_sock *es = emu_get(fd);
        if (es)
            emu_share(rc, es);
    }
    return rc;
}

int fcntl(int fd, int cmd, ...)
{
    shim_resolve();
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return after_fcntl(fd, cmd, real_fcntl(fd, cmd, arg));
}

int fcntl64(int fd, int cmd, ...)
{
    shim_resolve();
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return after_fcntl(fd, cmd, real_fcntl64(fd, cmd, arg));
}

int close_range(unsigned int first, unsigned int last, int flags)
{
    shim_resolve();
    if (!real_close_range) {
        errno = ENOSYS;
        return -1;
    }
    int rc = real_close_range(first, last, flags);
    if (rc == 0 && !(flags & CLOSE_RANGE_CLOEXEC))
        emu_forget_range(first, last);
    return rc;
}

void closefrom(int lowfd)
{
    shim_resolve();
    if (real_closefrom)
        real_closefrom(lowfd);
    if (lowfd >= 0)
        emu_forget_range((unsigned int)lowfd, UINT_MAX);
}
