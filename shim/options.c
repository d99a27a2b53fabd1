/*
 * Socket options of an emulated socket: setsockopt and getsockopt as sk_setsockopt /
 * sk_getsockopt (SOL_SOCKET) and netlink_setsockopt / netlink_getsockopt (SOL_NETLINK) do
 * them, in their order and with their errno values. The options the server must know are
 * forwarded as control datagrams (addr.c); the others live in the emu_sock.
 *
 * One implementation for both ways in: the shim's wrappers (sockops.c) and the supervisor's
 * trapped calls (supervisor/calls.c); the caller's pointers are read and written only
 * through `who` (usermem.c). Results: 0, a positive errno, or EMU_PASS for the options a Unix
 * socket answers as netlink would (timeouts, filters...), which the Unix socket then does
 * with the caller's own arguments.
 */
#include "shim.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>

/* sk_setsockopt's reading of an int: fewer bytes than an int is EINVAL. */
static int int_option(const struct caller_mem *who, const void *value, socklen_t len, int *out)
{
    if (len < sizeof(int))
        return EINVAL;
    return um_read(who, out, value, sizeof *out) ? EFAULT : 0;
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

static int set_socket_level(const struct caller_mem *who, struct emu_sock *es, int fd, int opt,
                            const void *value, socklen_t len)
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
        if ((err = int_option(who, value, len, &val)))
            return err;
        break;
    default: /* timeouts, filters...: the Unix socket does them, with the kernel's checks */
        return EMU_PASS;
    }
    switch (opt) {
    case SO_PEEK_OFF:
        return EOPNOTSUPP; /* netlink has no peek offset (the shim uses the Unix one's) */
    case SO_RCVBUF:
    case SO_RCVBUFFORCE:
        /* FORCE needs CAP_NET_ADMIN: let the kernel judge, on the Unix socket. */
        if (opt == SO_RCVBUFFORCE && real_setsockopt(fd, SOL_SOCKET, opt, &val, sizeof val))
            return errno;
        pthread_mutex_lock(&es->lock);
        es->rcvbuf = buffer_size(val, opt == SO_RCVBUFFORCE, EMU_RMEM_MAX, EMU_MIN_RCVBUF);
        es->rcvbuf_set = 1;
        emu_send_control(es, fd, CTL_OPT_RCVBUF, es->rcvbuf);
        pthread_mutex_unlock(&es->lock);
        return 0;
    case SO_SNDBUF:
    case SO_SNDBUFFORCE:
        if (opt == SO_SNDBUFFORCE && real_setsockopt(fd, SOL_SOCKET, opt, &val, sizeof val))
            return errno;
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
        return ENOPROTOOPT;
    }
}

static int set_netlink_level(const struct caller_mem *who, struct emu_sock *es, int fd, int opt,
                             const void *value, socklen_t len)
{
    /* netlink_setsockopt reads an int when there is room for one, else uses 0. */
    int val = 0;
    if (len >= sizeof(int) && um_read(who, &val, value, sizeof val))
        return EFAULT;
    int rc = 0;
    pthread_mutex_lock(&es->lock);
    switch (opt) {
    case NLO_ADD_MEMBERSHIP:
    case NLO_DROP_MEMBERSHIP:
        es->groups_allocated = 1;
        if (val <= 0) {
            rc = EINVAL;
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
        rc = ENOPROTOOPT;
    }
    pthread_mutex_unlock(&es->lock);
    return rc;
}

int emu_setsockopt(const struct caller_mem *who, struct emu_sock *es, int fd, int level,
                   int opt, const void *value, socklen_t len)
{
    if ((int)len < 0)
        return EINVAL;
    if (level == SOL_SOCKET)
        return set_socket_level(who, es, fd, opt, value, len);
    if (level == SOL_NETLINK)
        return set_netlink_level(who, es, fd, opt, value, len);
    return ENOPROTOOPT;
}

/* sk_getsockopt's answer with an int: *len read (negative is EINVAL), the value cut to it,
 * then the length written back. */
static int socket_int(const struct caller_mem *who, void *value, socklen_t *len, int val)
{
    int room;
    if (um_read(who, &room, len, sizeof room))
        return EFAULT;
    if (room < 0)
        return EINVAL;
    if (room > (int)sizeof val)
        room = sizeof val;
    struct iovec local[2] = {{&val, (size_t)room}, {&room, sizeof room}};
    struct iovec remote[2] = {{value, (size_t)room}, {len, sizeof room}};
    if (um_writev(who, local, 2, remote, 2) != (ssize_t)(room + sizeof room))
        return EFAULT;
    return 0;
}

/* netlink_getsockopt: *len read, the option known, room for a whole int, then the length and
 * the value written. */
static int netlink_options(const struct caller_mem *who, struct emu_sock *now, int opt,
                           void *value, socklen_t *len)
{
    int room, val;
    if (um_read(who, &room, len, sizeof room))
        return EFAULT;
    if (room < 0)
        return EINVAL;
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
        if (size && room >= size && um_write(who, value, &now->groups, sizeof now->groups))
            err = EFAULT;
        if (um_write(who, len, &size, sizeof size))
            err = EFAULT;
        return err;
    }
    default:
        return ENOPROTOOPT;
    }
    if (room < (int)sizeof(int))
        return EINVAL;
    room = sizeof(int);
    struct iovec local[2] = {{&room, sizeof room}, {&val, sizeof val}};
    struct iovec remote[2] = {{len, sizeof room}, {value, sizeof val}};
    if (um_writev(who, local, 2, remote, 2) != (ssize_t)(sizeof room + sizeof val))
        return EFAULT;
    return 0;
}

int emu_getsockopt(const struct caller_mem *who, struct emu_sock *es, int level, int opt,
                   void *value, socklen_t *len)
{
    pthread_mutex_lock(&es->lock);
    struct emu_sock now = *es; /* a consistent snapshot of the fields */
    pthread_mutex_unlock(&es->lock);
    if (level == SOL_SOCKET) {
        switch (opt) {
        case SO_DOMAIN:
            return socket_int(who, value, len, AF_NETLINK);
        case SO_TYPE:
            return socket_int(who, value, len, now.type);
        case SO_PROTOCOL:
            return socket_int(who, value, len, TSEMU_NETLINK_GENERIC);
        case SO_RCVBUF:
            return socket_int(who, value, len, now.rcvbuf);
        case SO_SNDBUF:
            return socket_int(who, value, len, now.sndbuf);
        case SO_PASSCRED:
            return socket_int(who, value, len, now.passcred);
        case SO_PEEK_OFF: { /* sk_getsockopt: the length read and checked, then refused */
            int room;
            if (um_read(who, &room, len, sizeof room))
                return EFAULT;
            return room < 0 ? EINVAL : EOPNOTSUPP;
        }
        case SO_ERROR:
            if (now.sk_err) { /* the error an earlier recvmmsg left, reported (and gone) */
                int room;
                if (um_read(who, &room, len, sizeof room))
                    return EFAULT;
                pthread_mutex_lock(&es->lock);
                int err = es->sk_err;
                es->sk_err = 0;
                pthread_mutex_unlock(&es->lock);
                return socket_int(who, value, len, err);
            }
            return EMU_PASS; /* the Unix socket's own pending error */
        default: /* timeouts, SO_ACCEPTCONN...: the Unix socket's */
            return EMU_PASS;
        }
    }
    if (level != SOL_NETLINK)
        return ENOPROTOOPT;
    return netlink_options(who, &now, opt, value, len);
}
