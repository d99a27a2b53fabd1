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

/* ---- creating, naming, connecting ---- */

int socket(int domain, int type, int protocol)
{
    shim_resolve();
    if (domain != AF_NETLINK || protocol != TSEMU_NETLINK_GENERIC)
        return real_socket(domain, type, protocol);
    char server[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int kind, fd = emu_socket(type, type & SOCK_CLOEXEC, &kind, server, sizeof server);
    if (fd < 0)
        return -1;
    struct emu_sock *es = emu_new(fd, kind, server);
    if (!es) {
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
    int err = emu_bind(&um_self, es, fd, addr, len);
    return err ? fail(err) : 0;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_connect(fd, addr, len);
    int err = emu_connect(&um_self, es, fd, addr, len);
    return err ? fail(err) : 0;
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_getsockname(fd, addr, len);
    int err = emu_getname(&um_self, es, 0, addr, len);
    return err ? fail(err) : 0;
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_getpeername(fd, addr, len);
    int err = emu_getname(&um_self, es, 1, addr, len);
    return err ? fail(err) : 0;
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
        if (err == EFAULT || err == ENOBUFS || um_read(&um_self, &m, umsg, sizeof m) ||
            !m.msg_controllen)
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
    ssize_t n = emu_send(&um_self, es, fd, &out, flags);
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
    return emu_send(&um_self, es, fd, &out, flags);
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
        n = emu_send(&um_self, es, fd, &out, 0);
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
        if (um_write(&um_self, &vec[sent].msg_len, &len, sizeof len)) {
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
    ssize_t n = emu_recv(&um_self, es, fd, &in, flags);
    err = errno;
    drop_iovs(&iovs);
    if (n < 0)
        return fail(err);

    if (emu_recvmsg_result(&um_self, umsg, &m, &in))
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
    ssize_t n = emu_recv(&um_self, es, fd, &in, flags);
    if (n >= 0 && addr) {
        int err = emu_give_address(&um_self, &in.name, sizeof in.name, addr, alen);
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
        n = emu_recv(&um_self, es, fd, &in, 0);
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
        if (um_read(&um_self, &limit, timeout, sizeof limit))
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
        if (um_write(&um_self, &vec[got].msg_len, &len, sizeof len)) {
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
        if (um_write(&um_self, timeout, &limit, sizeof limit))
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

/* ---- socket options (the rules: options.c) ---- */

int setsockopt(int fd, int level, int opt, const void *value, socklen_t len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_setsockopt(fd, level, opt, value, len);
    int err = emu_setsockopt(&um_self, es, fd, level, opt, value, len);
    if (err == EMU_PASS)
        return real_setsockopt(fd, level, opt, value, len);
    return err ? fail(err) : 0;
}

int getsockopt(int fd, int level, int opt, void *value, socklen_t *len)
{
    shim_resolve();
    struct emu_sock *es = emu_get(fd);
    if (!es)
        return real_getsockopt(fd, level, opt, value, len);
    int err = emu_getsockopt(&um_self, es, level, opt, value, len);
    if (err == EMU_PASS)
        return real_getsockopt(fd, level, opt, value, len);
    return err ? fail(err) : 0;
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
