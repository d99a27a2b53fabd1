/*
 * The wrapped libc entry points. Each one first asks whether its descriptor is an emulated
 * netlink socket (state.c); if not, it calls libc's own function and nothing else happens.
 *
 * For an emulated socket each call does what the kernel does, in the kernel's order, with
 * its errno values: first the system call layer (net/socket.c, fs/read_write.c: copying the
 * msghdr, the address, the iovecs and their access_ok() checks, the limits on counts and
 * lengths), then netlink's own checks (net/netlink/af_netlink.c; io.c for send and receive).
 * No pointer the application passes is dereferenced unchecked (usermem.c): where the kernel
 * would fault, the call fails with EFAULT and the program goes on, as it would on the kernel.
 *
 * The msghdr-based calls let the kernel do the system call layer's checks: a "dry run" of the
 * same call on the Unix socket with MSG_OOB, which a Unix datagram socket refuses
 * (EOPNOTSUPP) only once the kernel has copied and checked everything the application
 * passed, and which neither sends nor receives anything. After it, the msghdr and its iovec
 * array are known readable; the data is then read (usermem.c) or written (by the real receive)
 * with the kernel's checks, and what the kernel writes back into the msghdr goes through
 * usermem.c too.
 */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/netlink.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

extern void __chk_fail(void) __attribute__((noreturn));

static int fail(int err)
{
    errno = err;
    return -1;
}

/* ---- the system call layer ---- */

/* The dry runs: 0 when the kernel found nothing wrong before the protocol, else its errno. */
static int dry_sendmsg(int fd, const struct msghdr *msg, int flags)
{
    if (real_sendmsg(fd, msg, flags | MSG_OOB | MSG_DONTWAIT) >= 0)
        return 0; /* cannot happen: a Unix datagram socket has no out-of-band data */
    return errno == EOPNOTSUPP ? 0 : errno;
}

static int dry_recvmsg(int fd, struct msghdr *msg, int flags)
{
    if (real_recvmsg(fd, msg, flags | MSG_OOB | MSG_DONTWAIT) >= 0)
        return 0;
    return errno == EOPNOTSUPP ? 0 : errno;
}

/* The application's iovecs as import_iovec leaves them: copied (they are readable: a dry run
 * just read them), the total cut at MAX_RW_COUNT. */
struct iovs {
    struct iovec *v;
    size_t n, total;
    struct iovec few[8];
};

static int take_iovs(struct iovs *out, const struct iovec *from, size_t n)
{
    out->v = n <= sizeof out->few / sizeof out->few[0] ? out->few : malloc(n * sizeof *out->v);
    if (!out->v)
        return ENOMEM;
    out->n = n;
    out->total = 0;
    for (size_t i = 0; i < n; i++) {
        out->v[i] = from[i];
        if (out->v[i].iov_len > MAX_RW_COUNT - out->total)
            out->v[i].iov_len = MAX_RW_COUNT - out->total;
        out->total += out->v[i].iov_len;
    }
    return 0;
}

static void drop_iovs(struct iovs *iovs)
{
    if (iovs->v != iovs->few)
        free(iovs->v);
}

/* move_addr_to_kernel(): the caller's address (len as an int: negative or longer than a
 * sockaddr_storage is EINVAL; 0 copies nothing). 0 or an errno. */
static int take_address(const void *uaddr, socklen_t len, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if ((int)len < 0 || len > MAX_ADDRLEN)
        return EINVAL;
    return len && um_read(out, uaddr, len) ? EFAULT : 0;
}

/* move_addr_to_user(): `klen` bytes of address for the caller, cut to the room *ulen says
 * (read after the fact, as the kernel reads it), then the full length into *ulen. */
static int give_address(const void *kaddr, int klen, void *uaddr, socklen_t *ulen)
{
    int len;
    if (um_read(&len, ulen, sizeof len))
        return EFAULT;
    if (len > klen)
        len = klen;
    if (len < 0)
        return EINVAL;
    struct iovec local[2] = {{(void *)kaddr, (size_t)len}, {&klen, sizeof klen}};
    struct iovec remote[2] = {{uaddr, (size_t)len}, {ulen, sizeof klen}};
    return um_writev(local, 2, remote, 2) == (ssize_t)(len + sizeof klen) ? 0 : EFAULT;
}

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
    /* The kernel attaches the sender's credentials to every datagram from now on: only the
     * server's are taken (io.c). */
    int one = 1;
    struct emu_sock *es = NULL;
    if (real_setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0 ||
        !(es = emu_new(fd, kind, server))) {
        int err = errno;
        real_close(fd);
        errno = err;
        return -1;
    }
    pthread_mutex_lock(&es->lock);
    emu_learn_server(es);
    pthread_mutex_unlock(&es->lock);
    return fd;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_bind(fd, addr, len);
    struct sockaddr_storage ss;
    struct sockaddr_nl nl;
    int err = take_address(addr, len, &ss);
    if (err)
        return fail(err);
    memcpy(&nl, &ss, sizeof nl);
    if (len < sizeof nl || nl.nl_family != AF_NETLINK)
        return fail(EINVAL);
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
    if (rc == 0) {
        es->groups = nl.nl_groups;
        if (nl.nl_groups)
            es->groups_allocated = 1;
    }
    pthread_mutex_unlock(&es->lock);
    return rc;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_connect(fd, addr, len);
    struct sockaddr_storage ss;
    struct sockaddr_nl nl;
    int err = take_address(addr, len, &ss);
    if (err)
        return fail(err);
    memcpy(&nl, &ss, sizeof nl);
    if (len < sizeof(sa_family_t))
        return fail(EINVAL);
    if (nl.nl_family == AF_UNSPEC) { /* disconnect: sends go to the kernel again */
        pthread_mutex_lock(&es->lock);
        es->dst_pid = es->dst_groups = 0;
        pthread_mutex_unlock(&es->lock);
        return 0;
    }
    if (nl.nl_family != AF_NETLINK || len < sizeof nl)
        return fail(EINVAL);
    if ((nl.nl_pid || nl.nl_groups) && !shim_capable(CAP_NET_ADMIN))
        return fail(EPERM); /* genetlink lets only CAP_NET_ADMIN talk to other sockets */
    pthread_mutex_lock(&es->lock);
    int rc = es->port ? 0 : emu_autobind(es, fd);
    if (rc == 0) {
        es->dst_pid = nl.nl_pid;
        es->dst_groups = nl.nl_groups ? (uint32_t)__builtin_ffs((int)nl.nl_groups) : 0;
    }
    pthread_mutex_unlock(&es->lock);
    return rc;
}

static int give_name(uint32_t pid, uint32_t groups, struct sockaddr *addr, socklen_t *len)
{
    struct sockaddr_nl nl;
    memset(&nl, 0, sizeof nl);
    nl.nl_family = AF_NETLINK;
    nl.nl_pid = pid;
    nl.nl_groups = groups;
    int err = give_address(&nl, sizeof nl, addr, len);
    return err ? fail(err) : 0;
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
    return give_name(port, groups, addr, len);
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
    return give_name(pid, group ? 1u << (group - 1) : 0, addr, len);
}

/* ---- sending ---- */

/* sendmsg(2): ___sys_sendmsg's copies and checks (by a dry run), then netlink's (emu_send). */
static ssize_t user_sendmsg(struct emu_sock *es, int fd, const struct msghdr *umsg, int flags)
{
    int err = dry_sendmsg(fd, umsg, flags);
    if (err) {
        /* The Unix socket judges control messages its own way (it takes descriptors, and
         * refuses bad ones with EBADF): judge the rest without them. What the control
         * messages are worth to netlink emu_send says, at the point netlink would. */
        struct msghdr m;
        if (err == EFAULT || err == ENOBUFS || um_read(&m, umsg, sizeof m) || !m.msg_controllen)
            return fail(err);
        m.msg_control = NULL;
        m.msg_controllen = 0;
        if ((err = dry_sendmsg(fd, &m, flags)))
            return fail(err);
    }
    struct msghdr m;
    memcpy(&m, umsg, sizeof m);
    struct iovs iovs;
    if ((err = take_iovs(&iovs, m.msg_iov, m.msg_iovlen)))
        return fail(err);
    size_t namelen = m.msg_name ? m.msg_namelen : 0;
    struct nl_out out = {
        .iov = iovs.v,
        .iovlen = iovs.n,
        .len = iovs.total,
        .name = m.msg_name,
        .namelen = namelen < MAX_ADDRLEN ? namelen : MAX_ADDRLEN,
        .control = m.msg_control,
        .controllen = m.msg_controllen,
    };
    ssize_t n = emu_send(es, fd, &out, flags);
    err = errno;
    drop_iovs(&iovs);
    errno = err;
    return n;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    return es ? user_sendmsg(es, fd, msg, flags) : real_sendmsg(fd, msg, flags);
}

/* send, sendto (__sys_sendto) and write (vfs_write: access_ok before the length is cut). */
static ssize_t send_buffer(struct emu_sock *es, int fd, const void *buf, size_t len, int flags,
                           const struct sockaddr *addr, socklen_t alen, int is_write)
{
    if (is_write && !um_access_ok(buf, len))
        return fail(EFAULT);
    if (len > MAX_RW_COUNT)
        len = MAX_RW_COUNT;
    if (!is_write && !um_access_ok(buf, len))
        return fail(EFAULT);
    size_t namelen = 0;
    if (addr) {
        if ((int)alen < 0 || alen > MAX_ADDRLEN)
            return fail(EINVAL);
        namelen = alen;
    }
    struct iovec iov = {(void *)buf, len};
    struct nl_out out = {.iov = &iov, .iovlen = 1, .len = len,
                         .uname = namelen ? addr : NULL, .namelen = namelen};
    return emu_send(es, fd, &out, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr,
               socklen_t alen)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_sendto(fd, buf, len, flags, addr, alen);
    return send_buffer(es, fd, buf, len, flags, addr, alen, 0);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_send(fd, buf, len, flags);
    return send_buffer(es, fd, buf, len, flags, NULL, 0, 0);
}

ssize_t write(int fd, const void *buf, size_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_write(fd, buf, len);
    return send_buffer(es, fd, buf, len, 0, NULL, 0, 1);
}

ssize_t writev(int fd, const struct iovec *iov, int count)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_writev(fd, iov, count);
    /* vfs_writev: import_iovec (a count beyond UIO_MAXIOV is EINVAL here), nothing to write
     * is 0 without the socket hearing of it. */
    if (count < 0 || count > UIO_MAXIOV)
        return fail(EINVAL);
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)count};
    int err = dry_sendmsg(fd, &m, 0);
    struct iovs iovs;
    if (err || (err = take_iovs(&iovs, iov, (size_t)count)))
        return fail(err);
    ssize_t n = 0;
    if (iovs.total) {
        struct nl_out out = {.iov = iovs.v, .iovlen = iovs.n, .len = iovs.total};
        n = emu_send(es, fd, &out, 0);
        err = errno;
    }
    drop_iovs(&iovs);
    errno = err;
    return n;
}

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_sendmmsg(fd, vec, vlen, flags);
    /* __sys_sendmmsg: each entry as sendmsg, its length written back; the count of those
     * sent, or the first entry's error. */
    if (flags & MSG_CMSG_COMPAT)
        return fail(EINVAL);
    if (vlen > UIO_MAXIOV)
        vlen = UIO_MAXIOV;
    unsigned int sent = 0;
    int err = 0;
    for (; sent < vlen; sent++) {
        ssize_t n = user_sendmsg(es, fd, &vec[sent].msg_hdr, flags);
        if (n < 0) {
            err = errno;
            break;
        }
        unsigned int len = (unsigned int)n;
        if (um_write(&vec[sent].msg_len, &len, sizeof len)) {
            err = EFAULT;
            break;
        }
    }
    if (sent)
        return (int)sent;
    return err ? fail(err) : 0;
}

/* ---- receiving ---- */

/* recvmsg(2): ___sys_recvmsg's copies and checks (by a dry run), netlink's receive
 * (emu_recv), then what ____sys_recvmsg writes back: the sender's address (cut to
 * msg_namelen, which becomes its full length), msg_flags, msg_controllen. */
static ssize_t user_recvmsg(struct emu_sock *es, int fd, struct msghdr *umsg, int flags)
{
    int err = dry_recvmsg(fd, umsg, flags);
    if (err)
        return fail(err);
    struct msghdr m;
    memcpy(&m, umsg, sizeof m);
    struct iovs iovs;
    if ((err = take_iovs(&iovs, m.msg_iov, m.msg_iovlen)))
        return fail(err);
    struct nl_in in = {.iov = iovs.v, .iovlen = iovs.n, .ucontrol = m.msg_control,
                       .ucontrollen = m.msg_controllen};
    ssize_t n = emu_recv(es, fd, &in, flags);
    err = errno;
    drop_iovs(&iovs);
    if (n < 0)
        return fail(err);

    int klen = sizeof in.name, msg_flags = in.msg_flags;
    size_t controllen = in.controlled, k = 0;
    struct iovec local[4], remote[4];
    if (m.msg_name) {
        int room = (int)m.msg_namelen < klen ? (int)m.msg_namelen : klen;
        local[k] = (struct iovec){&in.name, (size_t)room};
        remote[k++] = (struct iovec){m.msg_name, (size_t)room};
        local[k] = (struct iovec){&klen, sizeof klen};
        remote[k++] = (struct iovec){&umsg->msg_namelen, sizeof klen};
    }
    local[k] = (struct iovec){&msg_flags, sizeof msg_flags};
    remote[k++] = (struct iovec){&umsg->msg_flags, sizeof msg_flags};
    local[k] = (struct iovec){&controllen, sizeof controllen};
    remote[k++] = (struct iovec){&umsg->msg_controllen, sizeof controllen};
    size_t want = 0;
    for (size_t i = 0; i < k; i++)
        want += local[i].iov_len;
    if (um_writev(local, k, remote, k) != (ssize_t)want)
        return fail(EFAULT); /* the datagram is gone, as on the kernel */
    return n;
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    return es ? user_recvmsg(es, fd, msg, flags) : real_recvmsg(fd, msg, flags);
}

/* recv, recvfrom (__sys_recvfrom) and read (vfs_read: access_ok before the length is cut, and
 * nothing to read is 0 without the socket hearing of it). */
static ssize_t recv_buffer(struct emu_sock *es, int fd, void *buf, size_t len, int flags,
                           struct sockaddr *addr, socklen_t *alen, int is_read)
{
    if (is_read && !um_access_ok(buf, len))
        return fail(EFAULT);
    if (len > MAX_RW_COUNT)
        len = MAX_RW_COUNT;
    if (!is_read && !um_access_ok(buf, len))
        return fail(EFAULT);
    if (is_read && len == 0)
        return 0;
    struct iovec iov = {buf, len};
    struct nl_in in = {.iov = &iov, .iovlen = 1};
    ssize_t n = emu_recv(es, fd, &in, flags);
    if (n >= 0 && addr) {
        int err = give_address(&in.name, sizeof in.name, addr, alen);
        if (err)
            return fail(err);
    }
    return n;
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr,
                 socklen_t *alen)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_recvfrom(fd, buf, len, flags, addr, alen);
    return recv_buffer(es, fd, buf, len, flags, addr, alen, 0);
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_recv(fd, buf, len, flags);
    return recv_buffer(es, fd, buf, len, flags, NULL, NULL, 0);
}

ssize_t read(int fd, void *buf, size_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_read(fd, buf, len);
    return recv_buffer(es, fd, buf, len, 0, NULL, NULL, 1);
}

ssize_t readv(int fd, const struct iovec *iov, int count)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_readv(fd, iov, count);
    /* vfs_readv: as writev */
    if (count < 0 || count > UIO_MAXIOV)
        return fail(EINVAL);
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)count};
    int err = dry_recvmsg(fd, &m, 0);
    struct iovs iovs;
    if (err || (err = take_iovs(&iovs, iov, (size_t)count)))
        return fail(err);
    ssize_t n = 0;
    if (iovs.total) {
        struct nl_in in = {.iov = iovs.v, .iovlen = iovs.n};
        n = emu_recv(es, fd, &in, 0);
        err = errno;
    }
    drop_iovs(&iovs);
    errno = err;
    return n;
}

static int64_t ns_of(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *timeout)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_recvmmsg(fd, vec, vlen, flags, timeout);
    /* __sys_recvmmsg and do_recvmmsg: the timeout read and checked, an error left by an
     * earlier call reported first; each entry as recvmsg, its length written back; after
     * each datagram the time left is computed (and written back at the end), and when none
     * is left no more datagrams are taken. An error after some datagrams is left for the
     * next receive, as the kernel leaves it in sk_err (except EAGAIN). */
    if (flags & MSG_CMSG_COMPAT)
        return fail(EINVAL);
    struct timespec limit, now;
    int64_t end = 0, left = 0;
    if (timeout) {
        if (um_read(&limit, timeout, sizeof limit))
            return fail(EFAULT);
        if (limit.tv_sec < 0 || (unsigned long)limit.tv_nsec >= 1000000000UL)
            return fail(EINVAL);
        clock_gettime(CLOCK_MONOTONIC, &now);
        end = ns_of(&now) + ns_of(&limit);
    }
    pthread_mutex_lock(&es->lock);
    int err = es->sk_err;
    es->sk_err = 0;
    pthread_mutex_unlock(&es->lock);
    if (err)
        return fail(err);
    int each = flags & ~MSG_WAITFORONE;
    unsigned int got = 0;
    while (got < vlen) {
        ssize_t n = user_recvmsg(es, fd, &vec[got].msg_hdr, each);
        if (n < 0) {
            err = errno;
            break;
        }
        unsigned int len = (unsigned int)n;
        if (um_write(&vec[got].msg_len, &len, sizeof len)) {
            err = EFAULT;
            break;
        }
        got++;
        if (flags & MSG_WAITFORONE)
            each |= MSG_DONTWAIT;
        if (timeout) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            left = end - ns_of(&now);
            if (left <= 0) {
                left = 0;
                break;
            }
        }
    }
    if (err && !got)
        return fail(err);
    if (err && err != EAGAIN) {
        pthread_mutex_lock(&es->lock);
        es->sk_err = err;
        pthread_mutex_unlock(&es->lock);
    }
    if (timeout && got) {
        limit.tv_sec = (time_t)(left / 1000000000);
        limit.tv_nsec = (long)(left % 1000000000);
        if (um_write(timeout, &limit, sizeof limit))
            return fail(EFAULT);
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
    return recv_buffer(es, fd, buf, len, flags, NULL, NULL, 0);
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
    return recv_buffer(es, fd, buf, len, flags, addr, alen, 0);
}

ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real___read_chk(fd, buf, len, buflen);
    if (len > buflen)
        __chk_fail();
    return recv_buffer(es, fd, buf, len, 0, NULL, NULL, 1);
}

/* ---- socket options ---- */

/* sk_setsockopt's reading of an int: fewer bytes than an int is EINVAL. */
static int int_option(const void *value, socklen_t len, int *out)
{
    if (len < sizeof(int))
        return EINVAL;
    return um_read(out, value, sizeof *out) ? EFAULT : 0;
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
    int val, err;
    switch (opt) {
    case SO_RCVBUF:
    case SO_RCVBUFFORCE:
    case SO_SNDBUF:
    case SO_SNDBUFFORCE:
    case SO_DOMAIN:
    case SO_TYPE:
    case SO_PROTOCOL:
    case SO_PASSCRED:
    case SO_PEEK_OFF:
        if ((err = int_option(value, len, &val)))
            return fail(err);
        break;
    default: /* timeouts, filters...: the Unix socket does them, with the kernel's checks */
        return real_setsockopt(fd, SOL_SOCKET, opt, value, len);
    }
    switch (opt) {
    case SO_PEEK_OFF:
        return fail(EOPNOTSUPP); /* netlink has no peek offset (the shim uses the Unix one's) */
    case SO_RCVBUF:
    case SO_RCVBUFFORCE:
        /* FORCE needs CAP_NET_ADMIN: let the kernel judge, on the Unix socket. */
        if (opt == SO_RCVBUFFORCE && real_setsockopt(fd, SOL_SOCKET, opt, &val, sizeof val))
            return -1;
        pthread_mutex_lock(&es->lock);
        es->rcvbuf = buffer_size(val, opt == SO_RCVBUFFORCE, EMU_RMEM_MAX, EMU_MIN_RCVBUF);
        es->rcvbuf_set = 1;
        emu_send_control(es, fd, CTL_OPT_RCVBUF, es->rcvbuf);
        pthread_mutex_unlock(&es->lock);
        return 0;
    case SO_SNDBUF:
    case SO_SNDBUFFORCE:
        if (opt == SO_SNDBUFFORCE && real_setsockopt(fd, SOL_SOCKET, opt, &val, sizeof val))
            return -1;
        pthread_mutex_lock(&es->lock);
        es->sndbuf = buffer_size(val, opt == SO_SNDBUFFORCE, EMU_WMEM_MAX, EMU_MIN_SNDBUF);
        pthread_mutex_unlock(&es->lock);
        return 0;
    case SO_PASSCRED:
        /* Netlink's credentials are what the application asked for; the Unix socket's stay
         * on, for the shim (io.c). */
        pthread_mutex_lock(&es->lock);
        es->passcred = !!val;
        pthread_mutex_unlock(&es->lock);
        return 0;
    default: /* SO_DOMAIN, SO_TYPE, SO_PROTOCOL: read-only */
        return fail(ENOPROTOOPT);
    }
}

static int set_netlink_level(struct emu_sock *es, int fd, int opt, const void *value,
                             socklen_t len)
{
    /* netlink_setsockopt reads an int when there is room for one, else uses 0. */
    int val = 0;
    if (len >= sizeof(int) && um_read(&val, value, sizeof val))
        return fail(EFAULT);
    int rc = 0;
    pthread_mutex_lock(&es->lock);
    switch (opt) {
    case NLO_ADD_MEMBERSHIP:
    case NLO_DROP_MEMBERSHIP:
        es->groups_allocated = 1;
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
    if ((int)len < 0)
        return fail(EINVAL);
    if (level == SOL_SOCKET)
        return set_socket_level(es, fd, opt, value, len);
    if (level == SOL_NETLINK)
        return set_netlink_level(es, fd, opt, value, len);
    return fail(ENOPROTOOPT);
}

/* sk_getsockopt's answer with an int: *len read (negative is EINVAL), the value cut to it,
 * then the length written back. */
static int socket_int(void *value, socklen_t *len, int val)
{
    int room;
    if (um_read(&room, len, sizeof room))
        return fail(EFAULT);
    if (room < 0)
        return fail(EINVAL);
    if (room > (int)sizeof val)
        room = sizeof val;
    struct iovec local[2] = {{&val, (size_t)room}, {&room, sizeof room}};
    struct iovec remote[2] = {{value, (size_t)room}, {len, sizeof room}};
    if (um_writev(local, 2, remote, 2) != (ssize_t)(room + sizeof room))
        return fail(EFAULT);
    return 0;
}

/* netlink_getsockopt: *len read, the option known, room for a whole int, then the length and
 * the value written. */
static int netlink_options(struct emu_sock *now, int opt, void *value, socklen_t *len)
{
    int room, val;
    if (um_read(&room, len, sizeof room))
        return fail(EFAULT);
    if (room < 0)
        return fail(EINVAL);
    switch (opt) {
    case NLO_PKTINFO:
        val = now->pktinfo;
        break;
    case NLO_BROADCAST_ERROR:
        val = now->broadcast_error;
        break;
    case NLO_NO_ENOBUFS:
        val = now->no_enobufs;
        break;
    case NLO_CAP_ACK:
        val = now->cap_ack;
        break;
    case NLO_EXT_ACK:
        val = now->ext_ack;
        break;
    case NLO_GET_STRICT_CHK:
        val = now->strict_chk;
        break;
    case NLO_LIST_MEMBERSHIPS: {
        /* The groups' bitmap, 32 bits a word, as far as there is room for whole words; then
         * the bitmap's size, which is nothing until a membership was first asked for. */
        int err = 0, size = now->groups_allocated ? (int)sizeof(uint32_t) : 0;
        if (size && room >= size && um_write(value, &now->groups, sizeof now->groups))
            err = EFAULT;
        if (um_write(len, &size, sizeof size))
            err = EFAULT;
        return err ? fail(err) : 0;
    }
    default:
        return fail(ENOPROTOOPT);
    }
    if (room < (int)sizeof(int))
        return fail(EINVAL);
    room = sizeof(int);
    struct iovec local[2] = {{&room, sizeof room}, {&val, sizeof val}};
    struct iovec remote[2] = {{len, sizeof room}, {value, sizeof val}};
    if (um_writev(local, 2, remote, 2) != (ssize_t)(sizeof room + sizeof val))
        return fail(EFAULT);
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
            return socket_int(value, len, AF_NETLINK);
        case SO_TYPE:
            return socket_int(value, len, now.type);
        case SO_PROTOCOL:
            return socket_int(value, len, TSEMU_NETLINK_GENERIC);
        case SO_RCVBUF:
            return socket_int(value, len, now.rcvbuf);
        case SO_SNDBUF:
            return socket_int(value, len, now.sndbuf);
        case SO_PASSCRED:
            return socket_int(value, len, now.passcred);
        case SO_PEEK_OFF: { /* sk_getsockopt: the length read and checked, then refused */
            int room;
            if (um_read(&room, len, sizeof room))
                return fail(EFAULT);
            return fail(room < 0 ? EINVAL : EOPNOTSUPP);
        }
        case SO_ERROR:
            if (now.sk_err) { /* the error an earlier recvmmsg left, reported (and gone) */
                int room;
                if (um_read(&room, len, sizeof room))
                    return fail(EFAULT);
                pthread_mutex_lock(&es->lock);
                int err = es->sk_err;
                es->sk_err = 0;
                pthread_mutex_unlock(&es->lock);
                return socket_int(value, len, err);
            }
            return real_getsockopt(fd, level, opt, value, len);
        default:
            return real_getsockopt(fd, level, opt, value, len);
        }
    }
    if (level != SOL_NETLINK)
        return fail(ENOPROTOOPT);
    return netlink_options(&now, opt, value, len);
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

/* ioctl: a netlink socket has no ioctls of its own, so FIONREAD (SIOCINQ) and TIOCOUTQ
 * (SIOCOUTQ) fail with ENOTTY (measured on 6.18), where the Unix socket would answer with its
 * own queue (the size of a whole batch, io.c). Every other request goes to the Unix socket. */
int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    shim_resolve();
    if ((request == FIONREAD || request == TIOCOUTQ) && emu_get(fd))
        return fail(ENOTTY);
    return real_ioctl(fd, request, arg);
}
