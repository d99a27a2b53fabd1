/*
 * Making and naming an emulated socket: socket, bind, connect, getsockname, getpeername, and the system call
 * layer's two address copies (move_addr_to_kernel, move_addr_to_user), as the kernel does
 * them (net/socket.c, then net/netlink/af_netlink.c), in its order and with its errno values.
 *
 * One implementation for both ways in: the shim's wrappers (sockops.c) and the supervisor's
 * trapped calls (supervisor/calls.c) call these with the caller's pointers, which are read
 * and written only through `who` (usermem.c). Results: 0 or a positive errno.
 */
#include "shim.h"

#include <errno.h>
#include <string.h>
#include <linux/capability.h>

int emu_socket(int type, int cloexec, int *kind, char *server, size_t size)
{
    *kind = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (*kind != SOCK_RAW && *kind != SOCK_DGRAM) {
        /* __sys_socket refuses unknown flags; netlink_create other types */
        errno = *kind & ~0xf ? EINVAL : ESOCKTNOSUPPORT;
        return -1;
    }
    if (server_path_from_env(server, size))
        return -1;
    int fd = real_socket(AF_UNIX, SOCK_DGRAM | (type & SOCK_NONBLOCK) |
                                      (cloexec ? SOCK_CLOEXEC : 0), 0);
    if (fd < 0)
        return -1;
    /* The kernel attaches the sender's credentials to every datagram from now on: only the
     * server's are taken (io.c). */
    int one = 1;
    if (real_setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
        int err = errno;
        real_close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

int emu_take_address(const struct caller_mem *who, const void *uaddr, socklen_t len,
                     struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if ((int)len < 0 || len > MAX_ADDRLEN)
        return EINVAL;
    return len && um_read(who, out, uaddr, len) ? EFAULT : 0;
}

int emu_give_address(const struct caller_mem *who, const void *kaddr, int klen, void *uaddr,
                     socklen_t *ulen)
{
    /* *ulen is read after the fact, as the kernel reads it; the name is cut to its room. */
    int len;
    if (um_read(who, &len, ulen, sizeof len))
        return EFAULT;
    if (len > klen)
        len = klen;
    if (len < 0)
        return EINVAL;
    struct iovec local[2] = {{(void *)kaddr, (size_t)len}, {&klen, sizeof klen}};
    struct iovec remote[2] = {{uaddr, (size_t)len}, {ulen, sizeof klen}};
    return um_writev(who, local, 2, remote, 2) == (ssize_t)(len + sizeof klen) ? 0 : EFAULT;
}

/* The caller's address, copied as the kernel copies it (move_addr_to_kernel), read as a
 * sockaddr_nl: what bind and connect start from. */
static int take_nl_address(const struct caller_mem *who, const void *uaddr, socklen_t len,
                           struct sockaddr_nl *nl)
{
    struct sockaddr_storage ss;
    int err = emu_take_address(who, uaddr, len, &ss);
    if (!err)
        memcpy(nl, &ss, sizeof *nl);
    return err;
}

int emu_bind(const struct caller_mem *who, struct emu_sock *es, int fd, const void *uaddr,
             socklen_t len)
{
    struct sockaddr_nl nl;
    int err = take_nl_address(who, uaddr, len, &nl);
    if (err)
        return err;
    if (len < sizeof nl || nl.nl_family != AF_NETLINK)
        return EINVAL;
    pthread_mutex_lock(&es->lock);
    int rc = 0;
    if (es->port) {
        /* Bound already (perhaps only on paper, while there is no server): the kernel
         * accepts the same port again and nothing else. */
        if (nl.nl_pid != es->port)
            err = EINVAL;
    } else if (nl.nl_pid) {
        rc = emu_bind_port(es, fd, nl.nl_pid);
    } else {
        rc = emu_autobind(es, fd);
    }
    if (rc)
        err = errno;
    if (!err) {
        es->groups = nl.nl_groups;
        if (nl.nl_groups)
            es->groups_allocated = 1;
    }
    pthread_mutex_unlock(&es->lock);
    return err;
}

int emu_connect(const struct caller_mem *who, struct emu_sock *es, int fd, const void *uaddr,
                socklen_t len)
{
    struct sockaddr_nl nl;
    int err = take_nl_address(who, uaddr, len, &nl);
    if (err)
        return err;
    if (len < sizeof(sa_family_t))
        return EINVAL;
    if (nl.nl_family == AF_UNSPEC) { /* disconnect: sends go to the kernel again */
        pthread_mutex_lock(&es->lock);
        es->dst_pid = es->dst_groups = 0;
        pthread_mutex_unlock(&es->lock);
        return 0;
    }
    if (nl.nl_family != AF_NETLINK || len < sizeof nl)
        return EINVAL;
    if ((nl.nl_pid || nl.nl_groups) && !shim_capable(CAP_NET_ADMIN))
        return EPERM; /* genetlink lets only CAP_NET_ADMIN talk to other sockets */
    pthread_mutex_lock(&es->lock);
    if (!es->port && emu_autobind(es, fd))
        err = errno;
    if (!err) {
        es->dst_pid = nl.nl_pid;
        es->dst_groups = nl.nl_groups ? (uint32_t)__builtin_ffs((int)nl.nl_groups) : 0;
    }
    pthread_mutex_unlock(&es->lock);
    return err;
}

int emu_getname(const struct caller_mem *who, struct emu_sock *es, int peer, void *uaddr,
                socklen_t *ulen)
{
    struct sockaddr_nl nl;
    memset(&nl, 0, sizeof nl);
    nl.nl_family = AF_NETLINK;
    pthread_mutex_lock(&es->lock);
    if (peer) {
        nl.nl_pid = es->dst_pid;
        nl.nl_groups = es->dst_groups ? 1u << (es->dst_groups - 1) : 0;
    } else {
        nl.nl_pid = es->port;
        nl.nl_groups = es->groups;
    }
    pthread_mutex_unlock(&es->lock);
    return emu_give_address(who, &nl, sizeof nl, uaddr, ulen);
}
