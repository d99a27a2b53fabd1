/*
 * Sending and receiving on an emulated socket.
 *
 * Send: the datagram goes, unchanged, to the server's socket (or, for a destination port
 * other than 0, to that client's port file: netlink unicast between user sockets). A socket
 * not bound yet is autobound first, as netlink does on a first send. A CGROUPSTATS_CMD_GET
 * names a descriptor of the sender's process; the server cannot open that, so the
 * descriptor travels along with SCM_RIGHTS (one per request, in request order).
 *
 * Receive: the server's datagrams are netlink bytes, except its control notice that the
 * receive buffer overflowed, which must surface as one receive failing with ENOBUFS. The
 * shim therefore has to see the head of the queue before it hands a datagram over, and two
 * threads must not both decide about the same head. Every receive is done as:
 *   1. under the socket's lock, a non-blocking attempt: a control datagram is consumed and
 *      reported; anything else goes into the caller's buffers as the caller asked (MSG_PEEK,
 *      MSG_TRUNC and a buffer too small included);
 *   2. when nothing was there and the caller wants to wait, a zero-length MSG_PEEK outside
 *      the lock waits for the next datagram. That wait is the kernel's own, so O_NONBLOCK,
 *      SO_RCVTIMEO (EAGAIN) and signals (EINTR) behave as they do on any socket.
 * The sender is reported as the kernel: {AF_NETLINK, nl_pid 0, nl_groups 0}, 12 bytes.
 */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <linux/netlink.h>

#define NLCTRL_ID 0x10
#define CTRL_CMD_NEWFAMILY 1
#define CTRL_ATTR_FAMILY_ID 1
#define CTRL_ATTR_FAMILY_NAME 2
#define CGROUPSTATS_CMD_GET 4
#define CGROUPSTATS_CMD_ATTR_FD 1
#define MAX_PASSED_FDS 16 /* the server reads at most 16 descriptors per datagram */

/* TASKSTATS' family id, learned from the nlctrl replies this process receives; 0 until then
 * (after an exec, say), when any family other than nlctrl may be TASKSTATS. */
static atomic_int taskstats_family;

static const unsigned char control_magic[8] = {0, 0, 0, 0, 't', 's', 'E', 'M'};

/* ---- helpers on scattered buffers ---- */

static size_t iov_total(const struct iovec *iov, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += iov[i].iov_len;
    return total;
}

/* Copy up to `size` leading bytes of the `len` bytes held in `iov` into `out`. */
static size_t iov_gather(const struct iovec *iov, size_t n, size_t len, void *out, size_t size)
{
    size_t want = len < size ? len : size, done = 0;
    for (size_t i = 0; i < n && done < want; i++) {
        size_t part = iov[i].iov_len < want - done ? iov[i].iov_len : want - done;
        memcpy((char *)out + done, iov[i].iov_base, part);
        done += part;
    }
    return done;
}

static int is_control(const unsigned char *head, size_t len)
{
    return len == CTL_SIZE && memcmp(head, control_magic, sizeof control_magic) == 0;
}

static uint16_t control_op(const unsigned char *head)
{
    uint16_t op;
    memcpy(&op, head + 8, 2);
    return op;
}

/* ---- netlink parsing: just enough to learn TASKSTATS' id and find CGROUPSTATS fds ---- */

#define ALIGN4(x) (((x) + 3u) & ~3u)

/* Call `fn` for each attribute in buf[0..len); stops when fn returns nonzero. */
static int each_attr(const unsigned char *buf, size_t len,
                     int (*fn)(uint16_t type, const unsigned char *data, size_t size, void *ctx),
                     void *ctx)
{
    size_t off = 0;
    while (off + 4 <= len) {
        uint16_t alen, atype;
        memcpy(&alen, buf + off, 2);
        memcpy(&atype, buf + off + 2, 2);
        if (alen < 4 || off + alen > len)
            break;
        int rc = fn(atype & 0x3fff, buf + off + 4, alen - 4u, ctx);
        if (rc)
            return rc;
        off += ALIGN4(alen);
    }
    return 0;
}

struct family_seen {
    int is_taskstats;
    int id;
};

static int family_attr(uint16_t type, const unsigned char *data, size_t size, void *ctx)
{
    struct family_seen *seen = ctx;
    if (type == CTRL_ATTR_FAMILY_NAME && size >= 9 && memcmp(data, "TASKSTATS", 9) == 0 &&
        (size == 9 || data[9] == '\0'))
        seen->is_taskstats = 1;
    else if (type == CTRL_ATTR_FAMILY_ID && size >= 2) {
        uint16_t id;
        memcpy(&id, data, 2);
        seen->id = id;
    }
    return 0;
}

/* Note TASKSTATS' id if this received datagram is an nlctrl reply that names it. */
static void learn_family(const unsigned char *buf, size_t len)
{
    size_t off = 0;
    while (off + NLMSG_HDRLEN + 4 <= len) {
        const struct nlmsghdr *h = (const void *)(buf + off);
        struct nlmsghdr hdr;
        memcpy(&hdr, h, sizeof hdr);
        if (hdr.nlmsg_len < NLMSG_HDRLEN || off + hdr.nlmsg_len > len)
            return;
        if (hdr.nlmsg_type == NLCTRL_ID && hdr.nlmsg_len >= NLMSG_HDRLEN + 4 &&
            buf[off + NLMSG_HDRLEN] == CTRL_CMD_NEWFAMILY) {
            struct family_seen seen = {0, 0};
            each_attr(buf + off + NLMSG_HDRLEN + 4, hdr.nlmsg_len - NLMSG_HDRLEN - 4u,
                      family_attr, &seen);
            if (seen.is_taskstats && seen.id)
                atomic_store(&taskstats_family, seen.id);
        }
        off += ALIGN4(hdr.nlmsg_len);
    }
}

static int fd_attr(uint16_t type, const unsigned char *data, size_t size, void *ctx)
{
    if (type != CGROUPSTATS_CMD_ATTR_FD || size < 4)
        return 0;
    uint32_t fd;
    memcpy(&fd, data, 4);
    *(int *)ctx = (int)fd;
    return 1;
}

/* The descriptors to pass with an outgoing datagram: one per CGROUPSTATS_CMD_GET request
 * (as the server counts them: REQUEST set, not a dump, TASKSTATS' family, command 4) whose
 * FD attribute names a descriptor open here. Returns how many were put in `fds`. */
static int cgroupstats_fds(const unsigned char *buf, size_t len, int *fds)
{
    int count = 0, family = atomic_load(&taskstats_family);
    size_t off = 0;
    while (off + NLMSG_HDRLEN <= len && count < MAX_PASSED_FDS) {
        struct nlmsghdr hdr;
        memcpy(&hdr, buf + off, sizeof hdr);
        if (hdr.nlmsg_len < NLMSG_HDRLEN || off + hdr.nlmsg_len > len)
            break;
        int ours = family ? hdr.nlmsg_type == family : hdr.nlmsg_type > NLCTRL_ID;
        if (ours && (hdr.nlmsg_flags & NLM_F_REQUEST) &&
            (hdr.nlmsg_flags & NLM_F_DUMP) != NLM_F_DUMP && hdr.nlmsg_len >= NLMSG_HDRLEN + 4 &&
            buf[off + NLMSG_HDRLEN] == CGROUPSTATS_CMD_GET) {
            int fd = -1;
            each_attr(buf + off + NLMSG_HDRLEN + 4, hdr.nlmsg_len - NLMSG_HDRLEN - 4u, fd_attr,
                      &fd);
            /* A descriptor that is not open travels as nothing: the kernel answers such a
             * request with nothing either. */
            if (fd >= 0 && real_fcntl(fd, F_GETFD) != -1)
                fds[count++] = fd;
        }
        off += ALIGN4(hdr.nlmsg_len);
    }
    return count;
}

/* ---- send ---- */

ssize_t emu_sendmsg(struct emu_sock *es, int fd, const struct msghdr *msg, int flags)
{
    uint32_t dst = 0;
    pthread_mutex_lock(&es->lock);
    dst = es->dst_pid;
    if (msg->msg_name && msg->msg_namelen) {
        struct sockaddr_nl nl;
        if (msg->msg_namelen < sizeof nl) {
            pthread_mutex_unlock(&es->lock);
            errno = EINVAL;
            return -1;
        }
        memcpy(&nl, msg->msg_name, sizeof nl);
        if (nl.nl_family != AF_NETLINK) {
            pthread_mutex_unlock(&es->lock);
            errno = EINVAL;
            return -1;
        }
        dst = nl.nl_pid; /* nl_groups: tsemu's families have no multicast listeners */
    }
    int rc = emu_ensure_bound(es, fd);
    char server[sizeof es->server];
    memcpy(server, es->server, sizeof server);
    pthread_mutex_unlock(&es->lock);
    if (rc)
        return -1;

    struct sockaddr_un to;
    memset(&to, 0, sizeof to);
    to.sun_family = AF_UNIX;
    if (dst == 0)
        strcpy(to.sun_path, server);
    else if (port_path(to.sun_path, sizeof to.sun_path, server, dst))
        return -1;

    /* Look for CGROUPSTATS requests: the datagram in one piece (most are in one already). */
    size_t len = iov_total(msg->msg_iov, msg->msg_iovlen);
    unsigned char stack[4096], *flat = stack;
    if (msg->msg_iovlen == 1)
        flat = msg->msg_iov[0].iov_base;
    else if (len > sizeof stack && !(flat = malloc(len)))
        return -1;
    if (msg->msg_iovlen != 1)
        iov_gather(msg->msg_iov, msg->msg_iovlen, len, flat, len);
    int fds[MAX_PASSED_FDS];
    int nfds = flat ? cgroupstats_fds(flat, len, fds) : 0;
    if (flat != stack && msg->msg_iovlen != 1)
        free(flat);

    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * MAX_PASSED_FDS)];
    } control;
    struct msghdr out = {
        .msg_name = &to,
        .msg_namelen = sizeof to,
        .msg_iov = msg->msg_iov,
        .msg_iovlen = msg->msg_iovlen,
    };
    if (nfds) {
        memset(&control, 0, sizeof control);
        out.msg_control = control.buf;
        out.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&out);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n;
    while ((n = real_sendmsg(fd, &out, flags | MSG_NOSIGNAL)) < 0 && dst == 0 &&
           (errno == EAGAIN || errno == EWOULDBLOCK)) {
        /* The kernel takes a message for itself at once, blocking socket or not; tsemu reads
         * its queue (net.unix.max_dgram_qlen datagrams) as fast as it can: wait for room.
         * (A Unix socket cannot poll for room at an address it is not connected to.) */
        struct timespec pause = {0, 200 * 1000};
        nanosleep(&pause, NULL);
    }
    if (n < 0 && (errno == ENOENT || errno == ENOTDIR || errno == ECONNREFUSED)) {
        /* Nobody at that address: what netlink says when no socket has the port. */
        if (dst == 0)
            shim_no_server(server);
        errno = ECONNREFUSED;
    }
    return n;
}

/* ---- receive ---- */

/* The sender as netlink reports it: the kernel (port 0), or a client's port for a datagram
 * another client sent straight to us. */
static void report_sender(struct msghdr *msg, const struct sockaddr_un *from, socklen_t fromlen)
{
    if (!msg->msg_name)
        return;
    struct sockaddr_nl nl;
    memset(&nl, 0, sizeof nl);
    nl.nl_family = AF_NETLINK;
    char server[sizeof from->sun_path];
    uint32_t port;
    if (fromlen > sizeof(sa_family_t) && from->sun_path[0] &&
        port_from_path(from->sun_path, server, sizeof server, &port) == 0)
        nl.nl_pid = port;
    size_t room = msg->msg_namelen < sizeof nl ? msg->msg_namelen : sizeof nl;
    memcpy(msg->msg_name, &nl, room);
    msg->msg_namelen = sizeof nl;
}

enum attempt { GOT_DATA, GOT_NOTHING, GOT_RETRY, GOT_ENOBUFS, GOT_ERROR };

/* One non-blocking attempt (es->lock held). */
static enum attempt try_receive(int fd, struct msghdr *msg, int flags, ssize_t *result)
{
    struct sockaddr_un from;
    struct msghdr real = *msg;
    real.msg_name = &from;
    real.msg_namelen = sizeof from;
    size_t room = iov_total(msg->msg_iov, msg->msg_iovlen);
    unsigned char head[CTL_SIZE];

    if ((flags & MSG_PEEK) || room < CTL_SIZE) {
        /* The caller's buffer cannot show us the head, or must not consume it: peek first. */
        ssize_t n = real_recv(fd, head, sizeof head, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? GOT_NOTHING : GOT_ERROR;
        if (is_control(head, (size_t)n)) {
            real_recv(fd, head, sizeof head, MSG_DONTWAIT);
            return control_op(head) == CTL_OP_ENOBUFS ? GOT_ENOBUFS : GOT_RETRY;
        }
    }
    ssize_t n = real_recvmsg(fd, &real, flags | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? GOT_NOTHING : GOT_ERROR;
    if (!(flags & MSG_PEEK) && room >= CTL_SIZE && (size_t)n == CTL_SIZE) {
        iov_gather(msg->msg_iov, msg->msg_iovlen, CTL_SIZE, head, sizeof head);
        if (is_control(head, CTL_SIZE))
            return control_op(head) == CTL_OP_ENOBUFS ? GOT_ENOBUFS : GOT_RETRY;
    }
    msg->msg_flags = real.msg_flags;
    msg->msg_controllen = real.msg_controllen;
    report_sender(msg, &from, real.msg_namelen);

    /* nlctrl replies teach us TASKSTATS' family id (for CGROUPSTATS sends). */
    size_t have = (size_t)n < room ? (size_t)n : room;
    if (have >= NLMSG_HDRLEN + 4) {
        unsigned char first[NLMSG_HDRLEN] = {0};
        iov_gather(msg->msg_iov, msg->msg_iovlen, have, first, sizeof first);
        uint16_t type;
        memcpy(&type, first + 4, 2);
        if (type == NLCTRL_ID) {
            if (msg->msg_iovlen == 1) {
                learn_family(msg->msg_iov[0].iov_base, have);
            } else {
                unsigned char *flat = malloc(have);
                if (flat) {
                    iov_gather(msg->msg_iov, msg->msg_iovlen, have, flat, have);
                    learn_family(flat, have);
                    free(flat);
                }
            }
        }
    }
    *result = n;
    return GOT_DATA;
}

ssize_t emu_recvmsg(struct emu_sock *es, int fd, struct msghdr *msg, int flags)
{
    for (;;) {
        ssize_t n = -1;
        pthread_mutex_lock(&es->lock);
        enum attempt got;
        if (es->enobufs) {
            es->enobufs = 0;
            got = GOT_ENOBUFS;
        } else {
            got = try_receive(fd, msg, flags, &n);
        }
        int err = errno;
        pthread_mutex_unlock(&es->lock);
        switch (got) {
        case GOT_DATA:
            return n;
        case GOT_ENOBUFS:
            errno = ENOBUFS;
            return -1;
        case GOT_ERROR:
            errno = err;
            return -1;
        case GOT_RETRY: /* a control datagram meant for no one: look again */
            continue;
        case GOT_NOTHING:
            break;
        }
        if (flags & MSG_DONTWAIT) {
            errno = EAGAIN;
            return -1;
        }
        /* Wait for the next datagram as the caller's socket would: blocks, or fails with
         * EAGAIN (O_NONBLOCK, SO_RCVTIMEO) or EINTR. */
        char byte;
        if (real_recv(fd, &byte, 0, MSG_PEEK) < 0)
            return -1;
    }
}
