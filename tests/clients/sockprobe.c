/*
 * sockprobe: exercises what a netlink client can observe about its NETLINK_GENERIC socket,
 * with plain libc calls, and prints one line per observation. The lines are chosen to be the
 * same on any kernel with generic netlink (no pids, no family ids, nothing timing-dependent),
 * so the tests run it against the host kernel and, through tsemu's shim, against tsemu, and
 * compare the two outputs line by line.
 *
 *   sockprobe               run every probe
 *   sockprobe PROBE...      run the named probes (see `probes` at the end)
 *   sockprobe --exec-child FD PORT   (internal) the program image after an exec
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

static const char *self_path;

static const char *err(int e)
{
    switch (e) {
    case 0: return "ok";
    case EINVAL: return "EINVAL";
    case EADDRINUSE: return "EADDRINUSE";
    case EAGAIN: return "EAGAIN";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EBADF: return "EBADF";
    case ENOBUFS: return "ENOBUFS";
    default: {
        static char other[32];
        snprintf(other, sizeof other, "errno%d", e);
        return other;
    }
    }
}

/* A port id without the numbers that differ from run to run. */
static const char *port_kind(uint32_t port)
{
    if (port == 0)
        return "0";
    if (port == (uint32_t)getpid())
        return "tgid";
    if ((int32_t)port < 0)
        return "negative";
    return "other";
}

static uint32_t port_of(int fd)
{
    struct sockaddr_nl nl;
    socklen_t len = sizeof nl;
    memset(&nl, 0xff, sizeof nl);
    if (getsockname(fd, (struct sockaddr *)&nl, &len) < 0)
        return 0xdeadbeef;
    return nl.nl_pid;
}

static int nl_socket(int flags)
{
    return socket(AF_NETLINK, SOCK_RAW | flags, NETLINK_GENERIC);
}

static int bound_socket(void)
{
    int fd = nl_socket(0);
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
    if (fd < 0 || bind(fd, (struct sockaddr *)&nl, sizeof nl) < 0)
        return -1;
    return fd;
}

/* CTRL_CMD_GETFAMILY by name, REQUEST | `flags`, sequence `seq`. */
static size_t getfamily(void *out, const char *name, uint32_t seq, uint16_t flags)
{
    unsigned char *buf = out;
    size_t namelen = strlen(name) + 1;
    size_t len = NLMSG_HDRLEN + GENL_HDRLEN + NLA_HDRLEN + namelen;
    memset(buf, 0, NLMSG_ALIGN(len));
    struct nlmsghdr *h = out;
    h->nlmsg_len = (uint32_t)len;
    h->nlmsg_type = GENL_ID_CTRL;
    h->nlmsg_flags = NLM_F_REQUEST | flags;
    h->nlmsg_seq = seq;
    h->nlmsg_pid = 12345; /* ignored by the kernel, as clients' getpid() here often is */
    struct genlmsghdr *g = (void *)(buf + NLMSG_HDRLEN);
    g->cmd = CTRL_CMD_GETFAMILY;
    g->version = 1;
    struct nlattr *a = (void *)(buf + NLMSG_HDRLEN + GENL_HDRLEN);
    a->nla_len = (uint16_t)(NLA_HDRLEN + namelen);
    a->nla_type = CTRL_ATTR_FAMILY_NAME;
    memcpy((char *)a + NLA_HDRLEN, name, namelen);
    return NLMSG_ALIGN(len);
}

static ssize_t send_kernel(int fd, const void *buf, size_t len)
{
    struct sockaddr_nl to = {.nl_family = AF_NETLINK};
    return sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to);
}

/* Ask for TASKSTATS' family and return the reply's length (or -errno). */
static long lookup(int fd, uint32_t seq)
{
    unsigned char req[64], rep[4096];
    size_t len = getfamily(req, "TASKSTATS", seq, 0);
    if (send_kernel(fd, req, len) < 0)
        return -errno;
    ssize_t n = recv(fd, rep, sizeof rep, 0);
    if (n < 0)
        return -errno;
    struct nlmsghdr *h = (void *)rep;
    if (h->nlmsg_seq != seq)
        return -1000;
    return n;
}

static void line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void line(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* ---- the probes ---- */

static void probe_create(void)
{
    int types[] = {SOCK_RAW, SOCK_DGRAM, SOCK_STREAM, SOCK_SEQPACKET};
    const char *names[] = {"raw", "dgram", "stream", "seqpacket"};
    for (int i = 0; i < 4; i++) {
        int fd = socket(AF_NETLINK, types[i], NETLINK_GENERIC);
        line("create %s: %s", names[i], err(fd < 0 ? errno : 0));
        if (fd >= 0)
            close(fd);
    }
}

static void probe_options(void)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_GENERIC);
    int v;
    socklen_t len;
    int names[] = {SO_DOMAIN, SO_TYPE, SO_PROTOCOL, SO_RCVBUF, SO_SNDBUF};
    const char *labels[] = {"SO_DOMAIN", "SO_TYPE", "SO_PROTOCOL", "SO_RCVBUF", "SO_SNDBUF"};
    for (int i = 0; i < 5; i++) {
        len = sizeof v;
        int rc = getsockopt(fd, SOL_SOCKET, names[i], &v, &len);
        line("getsockopt %s: %s value=%d len=%u", labels[i], err(rc ? errno : 0), v, len);
    }
    int sizes[] = {0, 1000, 100000, 212992, -1};
    for (int i = 0; i < 5; i++) {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sizes[i], sizeof sizes[i]);
        len = sizeof v;
        getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &len);
        int r = v;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sizes[i], sizeof sizes[i]);
        len = sizeof v;
        getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, &len);
        if (sizes[i] >= 0)
            line("set buffers %d: SO_RCVBUF=%d SO_SNDBUF=%d", sizes[i], r, v);
        else /* -1 is capped by the host's rmem_max, which is not tsemu's: just its floor */
            line("set buffers %d: SO_RCVBUF>=2304 %s", sizes[i], r >= 2304 ? "yes" : "no");
    }
    int force = 4096;
    int rc = setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &force, sizeof force);
    len = sizeof v;
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &len);
    line("SO_RCVBUFFORCE 4096 (as %s): %s SO_RCVBUF=%d", geteuid() ? "user" : "root",
         err(rc ? errno : 0), v);
    short tiny;
    len = sizeof tiny;
    rc = getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &tiny, &len);
    line("getsockopt SO_PROTOCOL into 2 bytes: %s len=%u", err(rc ? errno : 0), len);
    rc = setsockopt(fd, SOL_SOCKET, SO_TYPE, &force, sizeof force);
    line("setsockopt SO_TYPE: %s", err(rc ? errno : 0));

    int nlopts[] = {10, 11, 5, 3, 4, 12};
    const char *nlnames[] = {"CAP_ACK", "EXT_ACK", "NO_ENOBUFS", "PKTINFO", "BROADCAST_ERROR",
                             "GET_STRICT_CHK"};
    for (int i = 0; i < 6; i++) {
        int before, after, one = 1;
        len = sizeof before;
        getsockopt(fd, SOL_NETLINK, nlopts[i], &before, &len);
        int set = setsockopt(fd, SOL_NETLINK, nlopts[i], &one, sizeof one);
        len = sizeof after;
        getsockopt(fd, SOL_NETLINK, nlopts[i], &after, &len);
        line("NETLINK_%s: before=%d set=%s after=%d", nlnames[i], before, err(set ? errno : 0),
             after);
    }
    int one = 1;
    rc = setsockopt(fd, SOL_NETLINK, 99, &one, sizeof one);
    line("setsockopt SOL_NETLINK 99: %s", err(rc ? errno : 0));
    len = sizeof v;
    rc = getsockopt(fd, SOL_NETLINK, 99, &v, &len);
    line("getsockopt SOL_NETLINK 99: %s", err(rc ? errno : 0));
    len = 2;
    rc = getsockopt(fd, SOL_NETLINK, 10, &v, &len);
    line("getsockopt NETLINK_CAP_ACK into 2 bytes: %s", err(rc ? errno : 0));
    rc = setsockopt(fd, 6 /* IPPROTO_TCP */, 1, &one, sizeof one);
    line("setsockopt level TCP: %s", err(rc ? errno : 0));
    int zero = 0;
    rc = setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &zero, sizeof zero);
    line("ADD_MEMBERSHIP 0: %s", err(rc ? errno : 0));
    close(fd);
}

static void probe_names(void)
{
    int a = nl_socket(0);
    struct sockaddr_nl nl;
    socklen_t len = sizeof nl;
    memset(&nl, 0xff, sizeof nl);
    int rc = getsockname(a, (struct sockaddr *)&nl, &len);
    line("unbound getsockname: %s family=%d port=%s groups=%u len=%u", err(rc ? errno : 0),
         nl.nl_family, port_kind(nl.nl_pid), nl.nl_groups, len);
    len = sizeof nl;
    memset(&nl, 0xff, sizeof nl);
    rc = getpeername(a, (struct sockaddr *)&nl, &len);
    line("unbound getpeername: %s family=%d port=%s len=%u", err(rc ? errno : 0), nl.nl_family,
         port_kind(nl.nl_pid), len);
    struct sockaddr_nl addr = {.nl_family = AF_NETLINK};
    rc = bind(a, (struct sockaddr *)&addr, sizeof addr - 1);
    line("bind short address: %s", err(rc ? errno : 0));
    addr.nl_family = AF_INET;
    rc = bind(a, (struct sockaddr *)&addr, sizeof addr);
    line("bind wrong family: %s", err(rc ? errno : 0));
    addr.nl_family = AF_NETLINK;
    rc = bind(a, (struct sockaddr *)&addr, sizeof addr);
    line("bind 0: %s port=%s", err(rc ? errno : 0), port_kind(port_of(a)));
    rc = bind(a, (struct sockaddr *)&addr, sizeof addr);
    line("bind 0 again: %s", err(rc ? errno : 0));
    addr.nl_pid = port_of(a);
    rc = bind(a, (struct sockaddr *)&addr, sizeof addr);
    line("bind same port again: %s", err(rc ? errno : 0));

    int b = nl_socket(0);
    rc = bind(b, (struct sockaddr *)&addr, sizeof addr);
    line("bind a port in use: %s", err(rc ? errno : 0));
    addr.nl_pid = 0;
    rc = bind(b, (struct sockaddr *)&addr, sizeof addr);
    line("second socket bind 0: %s port=%s", err(rc ? errno : 0), port_kind(port_of(b)));
    int c = nl_socket(0);
    addr.nl_pid = 0x7ffe1234;
    rc = bind(c, (struct sockaddr *)&addr, sizeof addr);
    line("bind explicit 0x7ffe1234: %s port=0x%x", err(rc ? errno : 0), port_of(c));
    int d = nl_socket(0);
    long n = lookup(d, 7);
    line("first send autobinds: reply=%ld port=%s", n, port_kind(port_of(d)));
    int e = nl_socket(0);
    addr.nl_pid = 0;
    rc = connect(e, (struct sockaddr *)&addr, sizeof addr);
    line("connect to the kernel: %s port=%s", err(rc ? errno : 0), port_kind(port_of(e)));
    close(a);
    close(b);
    close(c);
    close(d);
    close(e);
    int f = bound_socket();
    line("after closing all, bind 0 takes: port=%s", port_kind(port_of(f)));
    close(f);
}

static void probe_replies(void)
{
    int fd = bound_socket();
    unsigned char req[64], rep[4096];
    size_t len = getfamily(req, "TASKSTATS", 1, 0);
    line("sendto: %zd of %zu", send_kernel(fd, req, len), len);

    /* libnl and iproute2 size a datagram with MSG_PEEK | MSG_TRUNC and no buffer. */
    struct iovec none = {NULL, 0};
    struct msghdr peek = {.msg_iov = &none, .msg_iovlen = 1};
    ssize_t n = recvmsg(fd, &peek, MSG_PEEK | MSG_TRUNC);
    line("peek|trunc with no buffer: %zd flags_trunc=%d", n, !!(peek.msg_flags & MSG_TRUNC));
    n = recv(fd, rep, 8, MSG_PEEK);
    line("peek 8 bytes: %zd", n);

    struct sockaddr_nl from;
    socklen_t fromlen = sizeof from;
    memset(&from, 0xff, sizeof from);
    n = recvfrom(fd, rep, sizeof rep, 0, (struct sockaddr *)&from, &fromlen);
    struct nlmsghdr *h = (void *)rep;
    line("recvfrom: %zd from family=%d port=%u groups=%u len=%u type=0x%x seq=%u pid=%s", n,
         from.nl_family, from.nl_pid, from.nl_groups, fromlen, h->nlmsg_type, h->nlmsg_seq,
         port_kind(h->nlmsg_pid) == port_kind(port_of(fd)) ? "port" : "not-port");

    send_kernel(fd, req, len);
    struct iovec small = {rep, 20};
    struct sockaddr_nl name;
    struct msghdr m = {.msg_name = &name, .msg_namelen = sizeof name, .msg_iov = &small,
                       .msg_iovlen = 1};
    n = recvmsg(fd, &m, MSG_TRUNC);
    line("recvmsg into 20 bytes with MSG_TRUNC: %zd flags_trunc=%d namelen=%u", n,
         !!(m.msg_flags & MSG_TRUNC), m.msg_namelen);
    send_kernel(fd, req, len);
    n = recv(fd, rep, 20, 0);
    line("recv into 20 bytes: %zd", n);
    n = recv(fd, rep, sizeof rep, MSG_DONTWAIT);
    line("the rest of it is gone: %s", err(n < 0 ? errno : 0));

    /* Errors: the request echoed whole, or only its header with NETLINK_CAP_ACK. */
    len = getfamily(req, "NOSUCHFAMILY", 2, 0);
    send_kernel(fd, req, len);
    n = recv(fd, rep, sizeof rep, 0);
    struct nlmsgerr *e = NLMSG_DATA((struct nlmsghdr *)rep);
    line("unknown family: %zd type=%d error=%s flags=0x%x", n, h->nlmsg_type, err(-e->error),
         h->nlmsg_flags);
    int one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
    send_kernel(fd, req, len);
    n = recv(fd, rep, sizeof rep, 0);
    line("unknown family, CAP_ACK: %zd error=%s flags=0x%x", n, err(-e->error), h->nlmsg_flags);
    len = getfamily(req, "TASKSTATS", 3, NLM_F_ACK);
    send_kernel(fd, req, len);
    n = recv(fd, rep, sizeof rep, 0);
    ssize_t n2 = recv(fd, rep + 2048, 2048, 0);
    struct nlmsghdr *ack = (void *)(rep + 2048);
    line("lookup with ACK: reply=%zd ack=%zd ack_error=%d", n, n2,
         ((struct nlmsgerr *)NLMSG_DATA(ack))->error);

    /* Two requests in one datagram: two answers, each its own datagram. */
    size_t l1 = getfamily(req, "nlctrl", 4, 0);
    unsigned char two[128];
    memcpy(two, req, l1);
    size_t l2 = getfamily(two + l1, "TASKSTATS", 5, 0);
    send_kernel(fd, two, l1 + l2);
    n = recv(fd, rep, sizeof rep, 0);
    n2 = recv(fd, rep + 2048, 2048, 0);
    line("two requests in one datagram: %zd (seq %u) then %zd (seq %u)", n, h->nlmsg_seq, n2,
         ack->nlmsg_seq);
    close(fd);
}

static void probe_io_calls(void)
{
    int fd = nl_socket(0);
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    int rc = connect(fd, (struct sockaddr *)&kernel, sizeof kernel);
    unsigned char req[64], rep[4096];
    size_t len = getfamily(req, "TASKSTATS", 1, 0);
    ssize_t n = send(fd, req, len, 0);
    ssize_t r = recv(fd, rep, sizeof rep, 0);
    line("connect %s, send %zd, recv %zd", err(rc ? errno : 0), n, r);
    n = write(fd, req, len);
    r = read(fd, rep, sizeof rep);
    line("write %zd, read %zd", n, r);

    /* Scattered: header, genl header and attribute in separate pieces. */
    struct iovec out[3] = {{req, 16}, {req + 16, 4}, {req + 20, len - 20}};
    struct msghdr m = {.msg_name = &kernel, .msg_namelen = sizeof kernel, .msg_iov = out,
                       .msg_iovlen = 3};
    n = sendmsg(fd, &m, 0);
    struct iovec in[2] = {{rep, 10}, {rep + 10, sizeof rep - 10}};
    struct msghdr mi = {.msg_iov = in, .msg_iovlen = 2};
    r = recvmsg(fd, &mi, 0);
    line("sendmsg 3 pieces %zd, recvmsg 2 pieces %zd", n, r);
    n = writev(fd, out, 3);
    r = readv(fd, in, 2);
    line("writev %zd, readv %zd", n, r);

    struct mmsghdr vec[2];
    unsigned char req2[64], rep2[4096];
    size_t len2 = getfamily(req2, "nlctrl", 2, 0);
    struct iovec o1 = {req, len}, o2 = {req2, len2};
    memset(vec, 0, sizeof vec);
    vec[0].msg_hdr.msg_iov = &o1;
    vec[0].msg_hdr.msg_iovlen = 1;
    vec[1].msg_hdr.msg_iov = &o2;
    vec[1].msg_hdr.msg_iovlen = 1;
    int sent = sendmmsg(fd, vec, 2, 0);
    struct iovec i1 = {rep, sizeof rep}, i2 = {rep2, sizeof rep2};
    memset(vec, 0, sizeof vec);
    vec[0].msg_hdr.msg_iov = &i1;
    vec[0].msg_hdr.msg_iovlen = 1;
    vec[1].msg_hdr.msg_iov = &i2;
    vec[1].msg_hdr.msg_iovlen = 1;
    int got = recvmmsg(fd, vec, 2, 0, NULL);
    line("sendmmsg %d, recvmmsg %d: %u and %u bytes", sent, got, vec[0].msg_len,
         vec[1].msg_len);
    struct sockaddr_nl peer;
    socklen_t plen = sizeof peer;
    rc = getpeername(fd, (struct sockaddr *)&peer, &plen);
    line("getpeername: %s port=%u len=%u", err(rc ? errno : 0), peer.nl_pid, plen);
    struct sockaddr un = {.sa_family = AF_UNSPEC};
    rc = connect(fd, &un, sizeof un);
    line("connect AF_UNSPEC: %s", err(rc ? errno : 0));
    close(fd);
}

static int readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

static void probe_waiting(void)
{
    int fd = bound_socket();
    unsigned char req[64], rep[4096];
    size_t len = getfamily(req, "TASKSTATS", 1, 0);
    ssize_t n = recv(fd, rep, sizeof rep, MSG_DONTWAIT);
    line("MSG_DONTWAIT on an empty socket: %s", err(n < 0 ? errno : 0));
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    n = recv(fd, rep, sizeof rep, 0);
    line("O_NONBLOCK, empty: %s", err(n < 0 ? errno : 0));
    fcntl(fd, F_SETFL, flags);
    int nb = nl_socket(SOCK_NONBLOCK | SOCK_CLOEXEC);
    n = recv(nb, rep, sizeof rep, 0);
    line("SOCK_NONBLOCK, empty: %s cloexec=%d", err(n < 0 ? errno : 0),
         !!(fcntl(nb, F_GETFD) & FD_CLOEXEC));
    close(nb);

    line("poll before a request: %d", readable(fd, 0));
    send_kernel(fd, req, len);
    line("poll after a request: %d", readable(fd, 2000));
    fd_set set;
    FD_ZERO(&set);
    FD_SET(fd, &set);
    struct timeval tv = {2, 0};
    line("select: %d", select(fd + 1, &set, NULL, NULL, &tv));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd}, got;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    line("epoll: %d", epoll_wait(ep, &got, 1, 2000));
    recv(fd, rep, sizeof rep, 0);
    line("epoll once read: %d", epoll_wait(ep, &got, 1, 0));
    close(ep);

    struct timeval timeout = {0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    struct timeval t0, t1;
    gettimeofday(&t0, NULL);
    n = recv(fd, rep, sizeof rep, 0);
    gettimeofday(&t1, NULL);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_usec - t0.tv_usec) / 1000;
    line("SO_RCVTIMEO 100ms: %s after>=90ms=%d", err(n < 0 ? errno : 0), ms >= 90);
    close(fd);
}

static void probe_descriptors(void)
{
    int fd = bound_socket();
    uint32_t port = port_of(fd);
    int copy = dup(fd);
    int copy2 = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    int target = nl_socket(0); /* dup2 onto a netlink socket closes that one */
    dup2(fd, target);
    line("dup, F_DUPFD_CLOEXEC, dup2 share the port: %d %d %d", port_of(copy) == port,
         port_of(copy2) == port, port_of(target) == port);
    int type;
    socklen_t len = sizeof type;
    getsockopt(copy2, SOL_SOCKET, SO_TYPE, &type, &len);
    line("the copy is a netlink socket: type=%d", type);
    unsigned char req[64], rep[4096];
    size_t l = getfamily(req, "TASKSTATS", 1, 0);
    send_kernel(copy, req, l);
    line("sent on a copy, received on the original: %zd", recv(fd, rep, sizeof rep, 0));
    close(fd);
    line("original closed, copy still works: %ld", lookup(copy, 2));
    close(copy);
    close(copy2);
    line("one copy left: %ld port kept=%d", lookup(target, 3), port_of(target) == port);
    close(target);
    line("closed: getsockname %s", err(port_of(target) == 0xdeadbeef ? errno : 0));
}

static void probe_fork(void)
{
    int fd = bound_socket();
    uint32_t port = port_of(fd);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        /* the child's socket is the parent's: same port, and it can talk on it */
        int same = port_of(fd) == port;
        long n = lookup(fd, 9);
        int own = bound_socket();
        line("child: inherited port kept=%d lookup=%ld own new socket port=%s", same, n,
             port_kind(port_of(own)));
        close(own);
        close(fd); /* closing the child's copy leaves the parent's socket working */
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    line("parent after the child closed its copy: lookup=%ld", lookup(fd, 10));
    close(fd);
}

/* A vfork child (posix_spawn, Python's subprocess) shares the parent's memory: what it closes
 * before exec is its own copy of the descriptor. */
static void probe_vfork(void)
{
    int fd = bound_socket();
    pid_t child = vfork();
    if (child == 0) {
        close(fd);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    line("after a vfork child closed its copy: lookup=%ld", lookup(fd, 1));
    close(fd);
}

struct worker {
    int fd;
    int ok;
};

static void *transactions(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 50; i++)
        if (lookup(w->fd, (uint32_t)i + 1) > 0)
            w->ok++;
    return NULL;
}

static void *receive_one(void *arg)
{
    struct worker *w = arg;
    unsigned char rep[4096];
    w->ok = (int)recv(w->fd, rep, sizeof rep, 0);
    return NULL;
}

static void probe_threads(void)
{
    /* One socket, two threads: one waits in recv, the other sends the request. */
    struct worker waiter = {bound_socket(), 0};
    pthread_t thread;
    pthread_create(&thread, NULL, receive_one, &waiter);
    usleep(50000);
    unsigned char req[64];
    send_kernel(waiter.fd, req, getfamily(req, "TASKSTATS", 1, 0));
    pthread_join(thread, NULL);
    line("a thread waiting in recv gets what another thread asked for: %d", waiter.ok);

    pthread_t threads[4];
    struct worker workers[4];
    for (int i = 0; i < 4; i++) {
        workers[i].fd = bound_socket();
        workers[i].ok = 0;
        pthread_create(&threads[i], NULL, transactions, &workers[i]);
    }
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        ok += workers[i].ok;
        close(workers[i].fd);
    }
    line("4 threads x 50 lookups on their own sockets: %d ok", ok);
    close(waiter.fd);
}

static void probe_exec(void)
{
    int fd = bound_socket(); /* not close-on-exec: it survives the exec */
    char fdarg[16], portarg[16];
    snprintf(fdarg, sizeof fdarg, "%d", fd);
    snprintf(portarg, sizeof portarg, "%u", port_of(fd));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        execl(self_path, self_path, "--exec-child", fdarg, portarg, (char *)NULL);
        _exit(127);
    }
    int status;
    waitpid(child, &status, 0);
    line("after the exec'd child: lookup=%ld", lookup(fd, 12));
    close(fd);
}

static int exec_child(int fd, uint32_t port)
{
    int type;
    socklen_t len = sizeof type;
    int rc = getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &type, &len);
    line("exec'd: inherited socket protocol=%d (%s) port kept=%d lookup=%ld", type,
         err(rc ? errno : 0), port_of(fd) == port, lookup(fd, 11));
    return 0;
}

static void probe_taskstats(void)
{
    int fd = bound_socket();
    unsigned char req[64], rep[4096];
    size_t len = getfamily(req, "TASKSTATS", 1, 0);
    send_kernel(fd, req, len);
    recv(fd, rep, sizeof rep, 0);
    /* the family id is the second attribute of the reply */
    struct nlattr *name = (void *)(rep + NLMSG_HDRLEN + GENL_HDRLEN);
    struct nlattr *id = (void *)((char *)name + NLA_ALIGN(name->nla_len));
    uint16_t family = *(uint16_t *)((char *)id + NLA_HDRLEN);
    struct {
        struct nlmsghdr n;
        struct genlmsghdr g;
        struct nlattr a;
        uint32_t pid;
    } get = {{sizeof get, family, NLM_F_REQUEST, 2, 0}, {1, 1, 0}, {8, 1}, 0};
    send_kernel(fd, &get, sizeof get);
    ssize_t n = recv(fd, rep, sizeof rep, 0);
    struct nlmsgerr *e = NLMSG_DATA((struct nlmsghdr *)rep);
    line("TASKSTATS GET pid 0: %zd error=%s", n, err(-e->error));
    get.a.nla_type = 9;
    send_kernel(fd, &get, sizeof get);
    n = recv(fd, rep, sizeof rep, 0);
    line("TASKSTATS GET unknown attribute: %zd error=%s", n, err(-e->error));
    close(fd);
}

/* A burst of requests on a non-blocking socket, read only afterwards: the kernel takes every
 * request at once and queues every answer (100 fit in the default receive buffer). */
static void probe_burst(void)
{
    int fd = nl_socket(SOCK_NONBLOCK);
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
    bind(fd, (struct sockaddr *)&nl, sizeof nl);
    unsigned char req[64], rep[4096];
    int sent = 0, got = 0, ordered = 1;
    for (uint32_t seq = 1; seq <= 100; seq++)
        if (send_kernel(fd, req, getfamily(req, "TASKSTATS", seq, 0)) > 0)
            sent++;
    while (got < 100 && readable(fd, 2000)) {
        if (recv(fd, rep, sizeof rep, 0) <= 0)
            break;
        ordered &= ((struct nlmsghdr *)rep)->nlmsg_seq == (uint32_t)++got;
    }
    line("100 requests sent without reading on a non-blocking socket: %d sent, %d answers, "
         "in order=%d", sent, got, ordered);
    close(fd);
}

/* Netlink unicast between two user sockets: the sender is reported by its port. */
static void probe_unicast(void)
{
    int a = bound_socket(), b = bound_socket();
    struct {
        struct nlmsghdr n;
        char text[8];
    } note = {{sizeof note, 0x20, 0, 1, 0}, "hello"};
    struct sockaddr_nl to = {.nl_family = AF_NETLINK, .nl_pid = port_of(b)};
    ssize_t n = sendto(a, &note, sizeof note, 0, (struct sockaddr *)&to, sizeof to);
    struct sockaddr_nl from;
    socklen_t len = sizeof from;
    char buf[64];
    ssize_t r = recvfrom(b, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    line("a to b: sent %zd received %zd from the sender's port=%d text=%s", n, r,
         from.nl_pid == port_of(a), buf + sizeof(struct nlmsghdr));
    to.nl_pid = 0x7ffe4321; /* nobody's */
    n = sendto(a, &note, sizeof note, 0, (struct sockaddr *)&to, sizeof to);
    line("to a port nobody has: %s", err(n < 0 ? errno : 0));
    close(a);
    close(b);
}

static const struct {
    const char *name;
    void (*run)(void);
} probes[] = {
    {"create", probe_create},       {"options", probe_options},
    {"names", probe_names},         {"replies", probe_replies},
    {"io", probe_io_calls},         {"waiting", probe_waiting},
    {"descriptors", probe_descriptors}, {"fork", probe_fork}, {"vfork", probe_vfork},
    {"threads", probe_threads},     {"exec", probe_exec},
    {"taskstats", probe_taskstats}, {"burst", probe_burst},
    {"unicast", probe_unicast},
};

int main(int argc, char **argv)
{
    self_path = argv[0];
    if (argc == 4 && strcmp(argv[1], "--exec-child") == 0)
        return exec_child(atoi(argv[2]), (uint32_t)strtoul(argv[3], NULL, 10));
    size_t count = sizeof probes / sizeof probes[0];
    for (size_t i = 0; i < count; i++) {
        int wanted = argc == 1;
        for (int a = 1; a < argc; a++)
            wanted |= strcmp(argv[a], probes[i].name) == 0;
        if (wanted) {
            line("== %s", probes[i].name);
            probes[i].run();
        }
    }
    return 0;
}
