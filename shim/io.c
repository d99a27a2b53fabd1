/*
 * Sending and receiving on an emulated socket: what netlink_sendmsg and netlink_recvmsg do,
 * in their order, once the system call layer's checks are done (sockops.c).
 *
 * Send: the checks netlink makes (MSG_OOB, an empty datagram, control messages, the
 * destination, autobind, the send buffer), then the data is copied in from the application
 * (through the kernel: a bad buffer is EFAULT, usermem.c) and goes, as it is, to the server's
 * socket (or, for a destination port other than 0, to that client's port file: netlink
 * unicast between user sockets). A CGROUPSTATS_CMD_GET names a descriptor of the sender's
 * process; the server cannot open that, so the descriptor travels along with SCM_RIGHTS (one
 * per request, in request order).
 *
 * Receive: only the server's datagrams (and other clients' unicasts) are taken. The Unix
 * socket has SO_PASSCRED on, so the kernel attaches the sender's credentials to each datagram;
 * one whose uid is not the server socket file's owner is dropped unseen, whatever it says
 * (another local user cannot inject a reply or an ENOBUFS). The server's datagrams are netlink
 * bytes, except its control notice that the receive buffer overflowed, which must surface as
 * one receive failing with ENOBUFS. The shim therefore has to see the head of the queue before
 * it hands a datagram over, and two threads must not both decide about the same head. Every
 * receive is done as:
 *   1. under the socket's lock, a non-blocking attempt: a stranger's datagram is dropped and a
 *      control datagram consumed and reported; anything else goes into the caller's buffers as
 *      the caller asked (MSG_PEEK, MSG_TRUNC and a buffer too small included);
 *   2. when nothing was there and the caller wants to wait, a zero-length MSG_PEEK outside
 *      the lock waits for the next datagram. That wait is the kernel's own, so O_NONBLOCK,
 *      SO_RCVTIMEO (EAGAIN) and signals (EINTR) behave as they do on any socket.
 * The sender is reported as the kernel: {AF_NETLINK, nl_pid 0, nl_groups 0}, 12 bytes (a
 * client's port for another client's unicast). The credentials never reach the application:
 * it gets netlink's control messages (NETLINK_PKTINFO, and SCM_CREDENTIALS when it asked for
 * SO_PASSCRED: the kernel's, pid 0, uid 0, gid 0, for the server's datagrams).
 *
 * The caller (`who`, usermem.c) is the shim's own process or, in the supervisor, a traced
 * thread: its buffers are touched only through usermem.c, the descriptors a CGROUPSTATS
 * request names are had through who->fd_of, and a supervisor's sends claim who->speak_for.
 */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>
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

/* ---- helpers on scattered buffers (our copies of the caller's iovecs, whose pieces are the
 * caller's memory: read through usermem.c) ---- */

static size_t iov_total(const struct iovec *iov, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += iov[i].iov_len;
    return total;
}

/* Copy up to `size` leading bytes of the `len` bytes the kernel has just written into the
 * caller's pieces `iov` into `out`: how many. */
static size_t iov_gather(const struct caller_mem *who, const struct iovec *iov, size_t n,
                         size_t len, void *out, size_t size)
{
    struct iovec local = {out, len < size ? len : size};
    ssize_t got = um_readv(who, &local, 1, iov, n);
    return got > 0 ? (size_t)got : 0;
}

/* Zeros over the first `len` bytes of the caller's pieces `iov` (a stranger's datagram: rare,
 * so a page of zeros at a time). */
static void iov_wipe(const struct caller_mem *who, const struct iovec *iov, size_t n, size_t len)
{
    static const unsigned char zeros[4096];
    for (size_t i = 0; i < n && len; i++)
        for (size_t off = 0; off < iov[i].iov_len && len;) {
            size_t step = iov[i].iov_len - off;
            if (step > sizeof zeros)
                step = sizeof zeros;
            if (step > len)
                step = len;
            um_write(who, (char *)iov[i].iov_base + off, zeros, step);
            off += step;
            len -= step;
        }
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

static int is_batch_head(const unsigned char *head, size_t len)
{
    return len > BATCH_HDR && memcmp(head, control_magic, sizeof control_magic) == 0 &&
           control_op(head) == CTL_OP_BATCH;
}

/* ---- batches (wire/control.py): several messages in one datagram from the server ----
 *
 * A listener that falls behind gets the messages waiting for it on the server together, up
 * to BATCH_MAX in one datagram, and only once it said it unpacks them (SETOPT BATCH, at its
 * first send). Each receive hands out one message, as netlink's recvmsg does for a
 * broadcast. The batch is never taken out of the Unix queue until its last message is handed
 * out: each message is read where it lies, with MSG_PEEK at the socket's peek offset
 * (SO_PEEK_OFF, on only while a batch is being handed out), the kernel copying it straight
 * into the caller's buffers (the iovec trimmed to the message, so nothing past it is
 * written); after the last one the datagram is dropped. So the descriptor stays readable
 * while messages of a batch remain, for poll, select and epoll alike (edge-triggered too: a
 * reader that reads until EAGAIN gets them all before EAGAIN; one that does not gets one edge
 * per batch, not per message), and the server sees the batch's bytes read only when all its
 * messages were. Another process sharing the socket (a fork) that reads it too interleaves
 * badly: the peek offset is the socket's, the batch's table ours; a batch whose remaining
 * length is not what it should be is abandoned (what is left of it dropped). */

static int set_peek_off(int fd, int off)
{
    return real_setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
}

/* Tell the server this socket unpacks batches, once SO_PEEK_OFF has shown it works here
 * (es->lock held; bound). TSEMU_BATCH=0 keeps one message per datagram. */
static void batching_on(struct emu_sock *es, int fd)
{
    const char *env = getenv("TSEMU_BATCH");
    if ((env && strcmp(env, "0") == 0) || set_peek_off(fd, -1) != 0) {
        es->batching = -1;
        return;
    }
    emu_send_control(es, fd, CTL_OPT_BATCH, 1);
    es->batching = 1;
}

static void batch_forget(struct emu_sock *es, int fd)
{
    es->batch_count = 0;
    set_peek_off(fd, -1);
}

/* Take in a batch's header (peeked, `total` bytes in all; es->lock held): 0 when it is
 * well formed, and then the next receives hand out its messages; -1 when it is not. */
static int batch_begin(struct emu_sock *es, const unsigned char *head, size_t total)
{
    uint16_t count;
    uint64_t sum;
    memcpy(&count, head + 10, 2);
    memcpy(&sum, head + 16, 8);
    if (count < 2 || count > BATCH_MAX || total > UINT32_MAX || sum != total - BATCH_HDR)
        return -1;
    uint64_t add = 0;
    for (unsigned i = 0; i < BATCH_MAX; i++) {
        uint32_t len;
        memcpy(&len, head + CTL_SIZE + 4 * i, 4);
        if ((i < count) != (len != 0))
            return -1;
        es->batch_len[i] = len;
        add += len;
    }
    if (add != sum)
        return -1;
    es->batch_count = count;
    es->batch_next = 0;
    es->batch_off = BATCH_HDR;
    es->batch_total = (uint32_t)total;
    return 0;
}

void emu_batch_adopt(struct emu_sock *es, int fd)
{
    /* The server still sends this port batches if the previous program image said it takes
     * them; a batch half handed out left the peek offset where its next message starts. */
    es->batching = 1;
    int off = -1;
    socklen_t len = sizeof off;
    if (real_getsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, &len) != 0) {
        es->batching = -1;
        return;
    }
    if (off < 0)
        return;
    set_peek_off(fd, -1);
    unsigned char head[BATCH_HDR];
    struct iovec h = {head, sizeof head};
    struct msghdr peek = {.msg_iov = &h, .msg_iovlen = 1};
    ssize_t n = real_recvmsg(fd, &peek, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT | EMU_UNTRAPPED);
    if (n < 0 || !is_batch_head(head, (size_t)n) || batch_begin(es, head, (size_t)n))
        return;
    while (es->batch_next < es->batch_count && es->batch_off < (uint32_t)off)
        es->batch_off += es->batch_len[es->batch_next++];
    if (es->batch_off != (uint32_t)off || es->batch_next == es->batch_count)
        es->batch_count = 0;
    else
        set_peek_off(fd, off);
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
 * FD attribute names a descriptor the caller has open (ours for it: who->fd_of). Returns how
 * many were put in `fds`. */
static int cgroupstats_fds(const struct caller_mem *who, const unsigned char *buf, size_t len,
                           int *fds)
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
            if (fd >= 0 && (fd = who->fd_of(who, fd)) >= 0)
                fds[count++] = fd;
        }
        off += ALIGN4(hdr.nlmsg_len);
    }
    return count;
}

/* ---- send ---- */

#define CMSG_ROUND(len) (((len) + sizeof(size_t) - 1) & ~(sizeof(size_t) - 1))

/* sendmsg's control messages, judged as netlink's scm_send judges them (walking them as the
 * kernel's for_each_cmsghdr does): messages of other levels than SOL_SOCKET are skipped; at
 * SOL_SOCKET only SCM_CREDENTIALS is taken, a descriptor (SCM_RIGHTS) or any other type is
 * EINVAL. Whether the credentials may be claimed (one's own pid, uid and gid, or the
 * capabilities to claim others'; a pid that exists) the kernel says: they are offered alone on
 * the Unix socket with MSG_OOB, which fails with EOPNOTSUPP only once they passed scm_send.
 * They go no further: the kernel's genetlink never looks at them, and the server judges a
 * request by the credentials the kernel attaches to it. That dry run judges by our rights, so
 * only where they are the caller's (who->judge_creds: the shim, not the supervisor). 0, or
 * an errno. */
static int check_control(const struct caller_mem *who, int fd, const unsigned char *control,
                         size_t len)
{
    size_t off = 0;
    while (len - off >= sizeof(struct cmsghdr)) {
        struct cmsghdr c;
        memcpy(&c, control + off, sizeof c);
        if (c.cmsg_len < sizeof c || c.cmsg_len > len - off)
            return EINVAL; /* !CMSG_OK */
        if (c.cmsg_level == SOL_SOCKET) {
            if (c.cmsg_type != SCM_CREDENTIALS || c.cmsg_len != CMSG_LEN(sizeof(struct ucred)))
                return EINVAL;
        }
        if (c.cmsg_level == SOL_SOCKET && who->judge_creds) {
            union {
                struct cmsghdr align;
                unsigned char buf[CMSG_SPACE(sizeof(struct ucred))];
            } one;
            memset(&one, 0, sizeof one);
            memcpy(one.buf, control + off, CMSG_LEN(sizeof(struct ucred)));
            struct msghdr probe = {.msg_control = one.buf, .msg_controllen = sizeof one.buf};
            if (real_sendmsg(fd, &probe, MSG_OOB | MSG_DONTWAIT) >= 0 || errno != EOPNOTSUPP)
                return errno ? errno : EINVAL;
        }
        size_t step = CMSG_ROUND(c.cmsg_len);
        if (step > len - off)
            break;
        off += step;
    }
    return 0;
}

/* Whether sends may still claim who->speak_for's pid (the kernel refused it once: never). */
static atomic_int claim_refused;

ssize_t emu_send(const struct caller_mem *who, struct emu_sock *es, int fd,
                 const struct nl_out *o, int flags)
{
    pthread_mutex_lock(&es->lock);
    size_t limit = es->sndbuf > 32 ? (size_t)es->sndbuf - 32 : 0;
    pthread_mutex_unlock(&es->lock);

    /* What the kernel copies in: the address first (the system call layer), the data last
     * (netlink_sendmsg, once everything else passed). When both are needed, one copy does
     * both; the data is sent from the shim's copy. */
    int want_data = !(flags & MSG_OOB) && o->len > 0 && o->len <= limit;
    unsigned char stack[4096], *flat = stack;
    struct sockaddr_storage name;
    memset(&name, 0, sizeof name);
    if (want_data && o->len > sizeof stack && !(flat = malloc(o->len))) {
        errno = ENOBUFS; /* netlink: no skb */
        return -1;
    }
    int name_ok = 1, data_ok = 0, err = 0;
    if (o->uname) { /* sendto: at most one piece of data */
        struct iovec local[2] = {{&name, o->namelen}, {flat, 0}};
        struct iovec remote[2] = {{(void *)o->uname, o->namelen}, {NULL, 0}};
        if (want_data && o->iovlen) {
            local[1].iov_len = o->len;
            remote[1] = o->iov[0];
        }
        ssize_t got = um_readv(who, local, 2, remote, 2);
        name_ok = o->namelen == 0 || got >= (ssize_t)o->namelen;
        data_ok = want_data && got == (ssize_t)(o->namelen + o->len);
    } else {
        if (o->namelen)
            memcpy(&name, o->name, o->namelen);
        if (want_data) {
            struct iovec local = {flat, o->len};
            data_ok = um_readv(who, &local, 1, o->iov, o->iovlen) == (ssize_t)o->len;
        }
    }

    uint32_t dst = 0;
    char server[sizeof es->server];
    if (!name_ok) {
        err = EFAULT;
    } else if (flags & MSG_OOB) {
        err = EOPNOTSUPP;
    } else if (o->len == 0) {
        err = ENODATA; /* the kernel: "Zero length message leads to an empty skb" */
    } else if (o->controllen && (err = check_control(who, fd, o->control, o->controllen))) {
        /* err set */
    } else if (o->namelen) {
        struct sockaddr_nl nl;
        memcpy(&nl, &name, sizeof nl);
        if (o->namelen < sizeof nl || nl.nl_family != AF_NETLINK)
            err = EINVAL;
        else if ((nl.nl_pid || nl.nl_groups) && !shim_capable(CAP_NET_ADMIN))
            err = EPERM; /* genetlink lets only CAP_NET_ADMIN send to other sockets */
        dst = nl.nl_pid; /* nl_groups: tsemu's families have no multicast listeners */
    } else {
        pthread_mutex_lock(&es->lock);
        dst = es->dst_pid;
        pthread_mutex_unlock(&es->lock);
    }
    if (!err) {
        pthread_mutex_lock(&es->lock);
        if (emu_ensure_bound(es, fd))
            err = errno;
        else if (!es->batching)
            batching_on(es, fd);
        memcpy(server, es->server, sizeof server);
        pthread_mutex_unlock(&es->lock);
    }
    if (!err && o->len > limit)
        err = EMSGSIZE;
    if (!err && !data_ok)
        err = EFAULT; /* the data could not be read: nothing was sent */

    struct sockaddr_un to;
    memset(&to, 0, sizeof to);
    to.sun_family = AF_UNIX;
    if (!err) {
        if (dst == 0)
            strcpy(to.sun_path, server);
        else if (port_path(to.sun_path, sizeof to.sun_path, server, dst))
            err = errno;
    }
    if (err) {
        if (flat != stack)
            free(flat);
        errno = err;
        return -1;
    }

    int fds[MAX_PASSED_FDS];
    int nfds = cgroupstats_fds(who, flat, o->len, fds);
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * MAX_PASSED_FDS)];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec data = {flat, o->len};
    struct msghdr out = {
        .msg_name = &to,
        .msg_namelen = sizeof to,
        .msg_iov = &data,
        .msg_iovlen = 1,
    };
    size_t creds = 0, used = 0;
    if (who->speak_for && !atomic_load_explicit(&claim_refused, memory_order_relaxed)) {
        /* The server hears the caller's pid rather than ours (a privileged sender may). */
        struct cmsghdr *cm = (struct cmsghdr *)control.buf;
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_CREDENTIALS;
        cm->cmsg_len = CMSG_LEN(sizeof(struct ucred));
        struct ucred claim = {who->speak_for, getuid(), getgid()};
        memcpy(CMSG_DATA(cm), &claim, sizeof claim);
        used = creds = CMSG_SPACE(sizeof(struct ucred));
    }
    if (nfds) {
        struct cmsghdr *cm = (struct cmsghdr *)(control.buf + used);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
        used += CMSG_SPACE(sizeof(int) * (size_t)nfds);
    }
    out.msg_control = used ? control.buf : NULL;
    out.msg_controllen = used;
    ssize_t n;
    for (;;) {
        n = real_sendmsg(fd, &out, (flags & MSG_DONTWAIT) | MSG_NOSIGNAL | EMU_UNTRAPPED);
        if (n < 0 && errno == EPERM && creds) {
            /* Not privileged to speak for the caller: the server hears us, from now on. */
            atomic_store(&claim_refused, 1);
            memmove(control.buf, control.buf + creds, used - creds);
            used -= creds;
            creds = 0;
            out.msg_control = used ? control.buf : NULL;
            out.msg_controllen = used;
            continue;
        }
        if (n < 0 && dst == 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* The kernel takes a message for itself at once, blocking socket or not; tsemu
             * reads its queue (net.unix.max_dgram_qlen datagrams) as fast as it can: wait for
             * room. (A Unix socket cannot poll for room at an address it is not connected
             * to.) */
            struct timespec pause = {0, 200 * 1000};
            nanosleep(&pause, NULL);
            continue;
        }
        break;
    }
    err = errno;
    if (who->fd_copies)
        for (int i = 0; i < nfds; i++)
            real_close(fds[i]);
    if (flat != stack)
        free(flat);
    if (n < 0 && (err == ENOENT || err == ENOTDIR || err == ECONNREFUSED)) {
        /* Nobody at that address: what netlink says when no socket has the port. */
        if (dst == 0)
            shim_no_server(server);
        err = ECONNREFUSED;
    }
    errno = err;
    return n;
}

/* ---- receive ---- */

/* A small file read with the system calls themselves: a /proc view in this library that
 * answers open() must not answer for the host's /proc. Its text, NUL-terminated, or NULL. */
static char *read_small(const char *path)
{
    enum { ROOM = 16384 }; /* a uid_map has at most 340 lines */
    char *text = malloc(ROOM);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    size_t have = 0;
    while (text && fd >= 0 && have < ROOM - 1) {
        ssize_t n = syscall(SYS_read, fd, text + have, ROOM - 1 - have);
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    if (fd >= 0)
        syscall(SYS_close, fd);
    if (text && (fd < 0 || have == 0)) {
        free(text);
        return NULL;
    }
    if (text)
        text[have] = '\0';
    return text;
}

/* The kernel's own uid or gid (0) as this process's user namespace sees it: where 0 is mapped,
 * what it maps to, else the overflow id (what from_kuid_munged gives). */
static uint32_t map_root(const char *map, const char *overflow)
{
    uint32_t id = 65534;
    char *text = read_small(map);
    for (char *line = text; line && *line;) {
        char *end;
        unsigned long inside = strtoul(line, &end, 10);
        unsigned long outside = strtoul(end, &end, 10);
        unsigned long count = strtoul(end, &end, 10);
        if (outside == 0 && count > 0) {
            free(text);
            return (uint32_t)inside;
        }
        line = strchr(end, '\n');
        line = line ? line + 1 : NULL;
    }
    free(text);
    if ((text = read_small(overflow))) {
        id = (uint32_t)strtoul(text, NULL, 10);
        free(text);
    }
    return id;
}

static void kernel_credentials(struct ucred *creds)
{
    static atomic_int known;
    static uid_t uid;
    static gid_t gid;
    if (!atomic_load_explicit(&known, memory_order_acquire)) {
        uid = map_root("/proc/self/uid_map", "/proc/sys/kernel/overflowuid");
        gid = map_root("/proc/self/gid_map", "/proc/sys/kernel/overflowgid");
        atomic_store_explicit(&known, 1, memory_order_release);
    }
    creds->pid = 0;
    creds->uid = uid;
    creds->gid = gid;
}

enum sender { FROM_SERVER, FROM_PEER, FROM_STRANGER };

/* Descriptors a stranger attached (SCM_RIGHTS), installed by the receive: closed unseen. */
static void close_rights(struct msghdr *real)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(real); c; c = CMSG_NXTHDR(real, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof fd, sizeof fd);
                real_close(fd);
            }
}

/* Who sent a datagram the Unix socket gave us (es->lock held): someone of the server's user
 * (the uid in the credentials the kernel attached), or a stranger, whose datagram no one must
 * see. Of the server's user, a port file is another client (a unicast, reported from that
 * port); anything else is the server: tsemu's sockets are unnamed, and a server of another
 * make (the benchmark's echo server) may answer from its own bound socket. */
static enum sender judge(struct emu_sock *es, struct msghdr *real, struct ucred *creds,
                         uint32_t *port)
{
    const struct sockaddr_un *from = real->msg_name;
    int found = 0;
    close_rights(real);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(real); c; c = CMSG_NXTHDR(real, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
            c->cmsg_len >= CMSG_LEN(sizeof *creds)) {
            memcpy(creds, CMSG_DATA(c), sizeof *creds);
            found = 1;
        }
    if (!es->server_known)
        emu_learn_server(es);
    if (!found || !es->server_known || creds->uid != es->server_uid) {
        shim_foreign(found ? creds->uid : (uid_t)-1, found ? creds->pid : 0, es->server_uid);
        return FROM_STRANGER;
    }
    *port = 0;
    if (real->msg_namelen <= sizeof(sa_family_t) || from->sun_path[0] == '\0')
        return FROM_SERVER; /* unnamed (or, with SO_PASSCRED set there, autobound) */
    char server[sizeof from->sun_path + 1];
    char path[sizeof from->sun_path + 1];
    size_t len = real->msg_namelen - offsetof(struct sockaddr_un, sun_path);
    if (len > sizeof from->sun_path)
        len = sizeof from->sun_path;
    memcpy(path, from->sun_path, len);
    path[len] = '\0';
    if (port_from_path(path, server, sizeof server, port) == 0)
        return FROM_PEER;
    *port = 0;
    return FROM_SERVER;
}

enum attempt { GOT_DATA, GOT_NOTHING, GOT_RETRY, GOT_ENOBUFS, GOT_ERROR };

/* Space for the credentials and whatever else strangers may attach (SCM_RIGHTS that do not fit
 * are closed by the kernel, never installed). */
#define OUR_CONTROL (CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int)))

/* Drop the datagram at the head of the queue. */
static void drop_head(int fd)
{
    char byte;
    real_recv(fd, &byte, 0, MSG_DONTWAIT | EMU_UNTRAPPED);
}

/* Hand out the next message of the batch at the head of the queue (es->lock held): one
 * peek at its offset, into the caller's buffers trimmed to the message. */
static enum attempt batch_receive(const struct caller_mem *who, struct emu_sock *es, int fd,
                                  struct nl_in *in, int flags, ssize_t *result,
                                  struct ucred *creds)
{
    size_t len = es->batch_len[es->batch_next];
    size_t room = iov_total(in->iov, in->iovlen);
    size_t want = len < room ? len : room;
    struct iovec stack[8], *trim = stack;
    if (in->iovlen > 8 && !(trim = malloc(in->iovlen * sizeof *trim))) {
        errno = ENOMEM;
        return GOT_ERROR;
    }
    size_t pieces = 0;
    for (size_t left = want, i = 0; i < in->iovlen && left; i++) {
        trim[pieces] = in->iov[i];
        if (trim[pieces].iov_len > left)
            trim[pieces].iov_len = left;
        left -= trim[pieces++].iov_len;
    }
    struct sockaddr_un from;
    union {
        struct cmsghdr align;
        char buf[OUR_CONTROL];
    } ours;
    struct msghdr real = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = trim,
                          .msg_iovlen = pieces, .msg_control = ours.buf,
                          .msg_controllen = sizeof ours.buf};
    size_t none = 0;
    ssize_t n = um_recvmsg(who, fd, &real,
                           MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT | MSG_CMSG_CLOEXEC | EMU_UNTRAPPED,
                           NULL, &none);
    int err = errno;
    if (trim != stack)
        free(trim);
    uint32_t port = 0;
    if (n < 0 && err != EFAULT) {
        /* Nothing there: someone else took the batch. */
        batch_forget(es, fd);
        errno = err;
        return err == EAGAIN || err == EWOULDBLOCK ? GOT_NOTHING : GOT_ERROR;
    }
    if (n >= 0 && (size_t)n != es->batch_total - es->batch_off)
        close_rights(&real);
    if (n >= 0 && ((size_t)n != es->batch_total - es->batch_off ||
                   judge(es, &real, creds, &port) != FROM_SERVER)) {
        batch_forget(es, fd); /* not the batch we were handing out: look again */
        return GOT_RETRY;
    }
    if (flags & MSG_PEEK) {
        if (n >= 0 && want)
            set_peek_off(fd, (int)es->batch_off); /* the kernel moved it: put it back */
    } else {
        /* Netlink's recvmsg takes the message, however little of it fitted (or EFAULT). */
        es->batch_off += (uint32_t)len;
        if (++es->batch_next == es->batch_count) {
            drop_head(fd);
            batch_forget(es, fd);
        } else if (n < 0 || want < len) {
            set_peek_off(fd, (int)es->batch_off);
        }
    }
    if (n < 0) {
        errno = EFAULT;
        return GOT_ERROR;
    }
    in->msg_flags = len > room ? MSG_TRUNC : 0;
    memset(&in->name, 0, sizeof in->name);
    in->name.nl_family = AF_NETLINK;
    kernel_credentials(creds);
    *result = (flags & MSG_TRUNC) ? (ssize_t)len : (ssize_t)want;
    return GOT_DATA;
}

/* One non-blocking attempt (es->lock held). */
static enum attempt try_receive(const struct caller_mem *who, struct emu_sock *es, int fd,
                                struct nl_in *in, int flags, ssize_t *result,
                                struct ucred *creds)
{
    struct sockaddr_un from;
    union {
        struct cmsghdr align;
        char buf[OUR_CONTROL];
    } ours;
    size_t room = iov_total(in->iov, in->iovlen);
    unsigned char head[BATCH_HDR];
    uint32_t port = 0;

    if (es->batch_count)
        return batch_receive(who, es, fd, in, flags, result, creds);
    if ((flags & MSG_PEEK) || room < CTL_SIZE || es->batching > 0) {
        /* The caller's buffer cannot show us the head, or must not consume it: peek first. */
        struct iovec h = {head, sizeof head};
        struct msghdr peek = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &h,
                              .msg_iovlen = 1, .msg_control = ours.buf,
                              .msg_controllen = sizeof ours.buf};
        ssize_t n = real_recvmsg(fd, &peek, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT |
                                                MSG_CMSG_CLOEXEC | EMU_UNTRAPPED);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? GOT_NOTHING : GOT_ERROR;
        enum sender heard = judge(es, &peek, creds, &port);
        if (heard == FROM_STRANGER) {
            drop_head(fd);
            return GOT_RETRY;
        }
        if (heard == FROM_SERVER && is_batch_head(head, (size_t)n)) {
            if (batch_begin(es, head, (size_t)n) || set_peek_off(fd, BATCH_HDR)) {
                es->batch_count = 0;
                drop_head(fd); /* malformed: meant for no one */
                return GOT_RETRY;
            }
            return batch_receive(who, es, fd, in, flags, result, creds);
        }
        if (heard == FROM_SERVER && is_control(head, (size_t)n)) {
            drop_head(fd);
            return control_op(head) == CTL_OP_ENOBUFS ? GOT_ENOBUFS : GOT_RETRY;
        }
    }
    struct msghdr real = {.msg_name = &from, .msg_namelen = sizeof from,
                          .msg_iov = (struct iovec *)in->iov, .msg_iovlen = in->iovlen,
                          .msg_control = ours.buf, .msg_controllen = sizeof ours.buf};
    unsigned char lead[CTL_SIZE]; /* the datagram's first bytes, as received */
    size_t leadlen = sizeof lead;
    ssize_t n = um_recvmsg(who, fd, &real,
                           (flags & ~MSG_CMSG_COMPAT) | MSG_DONTWAIT | MSG_CMSG_CLOEXEC |
                               EMU_UNTRAPPED,
                           lead, &leadlen);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? GOT_NOTHING : GOT_ERROR;
    enum sender heard = judge(es, &real, creds, &port);
    if (heard == FROM_STRANGER) {
        /* Not even its bytes stay behind in the caller's buffers (which the kernel has just
         * written, so they can be written again). */
        iov_wipe(who, in->iov, in->iovlen, (size_t)n < room ? (size_t)n : room);
        if (flags & MSG_PEEK)
            drop_head(fd);
        return GOT_RETRY;
    }
    if (heard == FROM_SERVER && !(flags & MSG_PEEK) && leadlen == CTL_SIZE &&
        (size_t)n == CTL_SIZE && is_control(lead, CTL_SIZE))
        return control_op(lead) == CTL_OP_ENOBUFS ? GOT_ENOBUFS : GOT_RETRY;
    /* MSG_CTRUNC is our control buffer's, not the caller's; MSG_CMSG_CLOEXEC ours unless the
     * caller asked for it too (the kernel reports it back). */
    in->msg_flags = real.msg_flags & ~MSG_CTRUNC & ~(MSG_CMSG_CLOEXEC & ~flags);
    memset(&in->name, 0, sizeof in->name);
    in->name.nl_family = AF_NETLINK;
    in->name.nl_pid = port;
    if (heard == FROM_SERVER)
        kernel_credentials(creds);

    /* nlctrl replies teach us TASKSTATS' family id (for CGROUPSTATS sends). */
    size_t have = (size_t)n < room ? (size_t)n : room;
    if (have >= NLMSG_HDRLEN + 4 && leadlen >= NLMSG_HDRLEN) {
        uint16_t type;
        memcpy(&type, lead + 4, 2);
        unsigned char *whole = type == NLCTRL_ID ? malloc(have) : NULL;
        if (whole) {
            learn_family(whole, iov_gather(who, in->iov, in->iovlen, have, whole, have));
            free(whole);
        }
    }
    *result = n;
    return GOT_DATA;
}

/* put_cmsg(): one control message into the caller's buffer, as much of it as fits (MSG_CTRUNC
 * when it does not all fit, or when there is no buffer); a buffer the kernel cannot write to
 * takes nothing, silently. */
static void put_cmsg(const struct caller_mem *who, struct nl_in *in, int level, int type,
                     const void *data, size_t len)
{
    unsigned char cm[NL_CMSG_MAX];
    size_t step;
    size_t n = nl_cmsg_build(cm, in->ucontrol ? in->ucontrollen : 0, level, type, data, len,
                             &in->msg_flags, &step);
    if (n == 0 || um_write(who, in->ucontrol, cm, n))
        return;
    in->ucontrol = (char *)in->ucontrol + step;
    in->ucontrollen -= step;
    in->controlled += step;
}

ssize_t emu_recv(const struct caller_mem *who, struct emu_sock *es, int fd, struct nl_in *in,
                 int flags)
{
    in->controlled = 0;
    in->msg_flags = 0;
    if (flags & MSG_OOB) {
        errno = EOPNOTSUPP;
        return -1;
    }
    for (;;) {
        ssize_t n = -1;
        struct ucred creds = {0, 0, 0};
        pthread_mutex_lock(&es->lock);
        enum attempt got;
        int err = 0;
        if (es->sk_err) { /* sock_error(): an error left for this receive, reported once */
            err = es->sk_err;
            es->sk_err = 0;
            got = GOT_ERROR;
        } else {
            got = try_receive(who, es, fd, in, flags, &n, &creds);
            err = errno;
        }
        int pktinfo = es->pktinfo, passcred = es->passcred;
        pthread_mutex_unlock(&es->lock);
        switch (got) {
        case GOT_DATA:
            /* netlink_recvmsg's control messages, in its order */
            if (pktinfo) {
                uint32_t group = 0; /* struct nl_pktinfo: unicast */
                put_cmsg(who, in, SOL_NETLINK, NLO_PKTINFO, &group, sizeof group);
            }
            if (passcred)
                put_cmsg(who, in, SOL_SOCKET, SCM_CREDENTIALS, &creds, sizeof creds);
            return n;
        case GOT_ENOBUFS:
            errno = ENOBUFS;
            return -1;
        case GOT_ERROR:
            errno = err;
            return -1;
        case GOT_RETRY: /* a datagram meant for no one: look again */
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
        if (real_recv(fd, &byte, 0, MSG_PEEK | EMU_UNTRAPPED) < 0)
            return -1;
    }
}

int emu_recvmsg_result(const struct caller_mem *who, struct msghdr *umsg, const struct msghdr *m,
                       const struct nl_in *in)
{
    int klen = sizeof in->name, msg_flags = in->msg_flags;
    size_t controllen = in->controlled, k = 0;
    struct iovec local[4], remote[4];
    if (m->msg_name) {
        int room = (int)m->msg_namelen < klen ? (int)m->msg_namelen : klen;
        if (room < 0)
            room = 0;
        local[k] = (struct iovec){(void *)&in->name, (size_t)room};
        remote[k++] = (struct iovec){m->msg_name, (size_t)room};
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
    return um_writev(who, local, k, remote, k) == (ssize_t)want ? 0 : EFAULT;
}
