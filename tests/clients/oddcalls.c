/*
 * oddcalls: every socket call a program can make on a NETLINK_GENERIC socket, made with odd
 * arguments -- bad pointers, NULL with and without lengths, negative and huge counts and
 * lengths, short and long addresses, unknown flags, empty queues -- one case per line, with
 * what the call returned and errno. The kernel answers each with a value or an errno and never
 * harms the caller; the tests run this against the host kernel (tests/clients/oddcalls.expected
 * is its output) and through tsemu's shim, and compare case by case.
 *
 * Each case runs in a child process of its own, on a socket of its own, so that a case that
 * kills its process (SIGSEGV, ...) or hangs (SIGALRM after 5 s) is reported and the rest still
 * run. Each line is `NAME: RESULT [key=value...]`, where RESULT is the return value or the
 * errno's name, and the keys say what the call left behind: `after=` what a non-blocking
 * receive finds next (the reply queued before the call was consumed or not; an error the call
 * left on the socket), `sent=` how many datagrams the call delivered (the kernel answers each
 * request; counted up to a marker request's answer). Nothing printed depends on pids, port
 * ids, family ids or timing.
 *
 *   oddcalls            every case
 *   oddcalls NAME...    the named cases (a name ending in `*` is a prefix)
 *   oddcalls --list     the case names
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
#ifndef MSG_CMSG_COMPAT
#define MSG_CMSG_COMPAT 0x80000000
#endif

/* An address nothing is ever mapped at (below vm.mmap_min_addr). */
#define BAD opaque((void *)8)
/* An address in the kernel's half: not even a user address (access_ok fails on it). */
#define KERNEL_ADDR opaque((void *)0xffff888000000000UL)
#define MARK_SEQ 99
#define REPLY_ROOM 4096

/* The compiler must not know what these point at: no fortify check, no warning, for the odd
 * arguments the cases pass on purpose. */
static void *opaque(void *p)
{
    __asm__ volatile("" : "+r"(p));
    return p;
}

static size_t opaque_size(size_t n)
{
    __asm__ volatile("" : "+r"(n));
    return n;
}

static char *guard;      /* two pages: read-write, then PROT_NONE */
static char *readonly;   /* one read-only page of zeros */
static unsigned char big[1 << 20]; /* a valid buffer larger than any socket buffer */

/* The last `n` bytes of the guard's first page: whatever lies beyond them faults. */
static void *edge(size_t n)
{
    return guard + 4096 - n;
}

static const char *errname(int e)
{
    const char *name = strerrorname_np(e);
    static char other[32];
    if (name)
        return name;
    snprintf(other, sizeof other, "errno%d", e);
    return other;
}

/* ---- the line being built for the current case ---- */

static char out[512];
static size_t outlen;

static void add(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void add(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + outlen, sizeof out - outlen, fmt, ap);
    va_end(ap);
    if (n > 0)
        outlen = outlen + (size_t)n < sizeof out ? outlen + (size_t)n : sizeof out - 1;
}

/* The call's result: `rc` as it returned, with the errno it left when negative. */
static void result(long rc, int err)
{
    if (rc < 0)
        add(" %s", errname(err));
    else
        add(" %ld", rc);
}

#define CALL(expr)                                                                           \
    do {                                                                                     \
        errno = 0;                                                                           \
        long rc_ = (long)(expr);                                                             \
        result(rc_, errno);                                                                  \
    } while (0)

/* ---- requests ---- */

/* CTRL_CMD_GETFAMILY for TASKSTATS (its answer is 112 bytes on 6.x), sequence `seq`. */
static size_t request(void *buf, uint32_t seq)
{
    static const char name[] = "TASKSTATS";
    size_t len = NLMSG_HDRLEN + GENL_HDRLEN + NLA_HDRLEN + sizeof name;
    memset(buf, 0, NLMSG_ALIGN(len));
    struct nlmsghdr *h = buf;
    h->nlmsg_len = (uint32_t)len;
    h->nlmsg_type = GENL_ID_CTRL;
    h->nlmsg_flags = NLM_F_REQUEST;
    h->nlmsg_seq = seq;
    struct genlmsghdr *g = (void *)((char *)buf + NLMSG_HDRLEN);
    g->cmd = CTRL_CMD_GETFAMILY;
    g->version = 1;
    struct nlattr *a = (void *)((char *)buf + NLMSG_HDRLEN + GENL_HDRLEN);
    a->nla_len = (uint16_t)(NLA_HDRLEN + sizeof name);
    a->nla_type = CTRL_ATTR_FAMILY_NAME;
    memcpy((char *)a + NLA_HDRLEN, name, sizeof name);
    return NLMSG_ALIGN(len);
}

static unsigned char req[64];
static size_t reqlen;
static struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};

static int readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Queue one answer on `fd` (a request sent the ordinary way, then wait for the answer). */
static void prime(int fd)
{
    unsigned char r[64];
    sendto(fd, r, request(r, 1), 0, (struct sockaddr *)&kernel, sizeof kernel);
    readable(fd, 3000);
}

/* What a non-blocking receive finds now: a datagram's size, or an errno. */
static void after(int fd)
{
    unsigned char buf[REPLY_ROOM];
    errno = 0;
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0)
        add(" after=%s", errname(errno));
    else
        add(" after=%zd", n);
}

/* How many answers arrive before the answer to a marker request: what the case sent. */
static void sent(int fd)
{
    unsigned char r[64], buf[REPLY_ROOM];
    int count = 0, errors = 0;
    if (sendto(fd, r, request(r, MARK_SEQ), 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
        add(" sent=marker-%s", errname(errno));
        return;
    }
    for (int i = 0; i < 64; i++) {
        if (!readable(fd, 3000)) {
            add(" sent=timeout");
            return;
        }
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno != EAGAIN)
                add(" error-%s", errname(errno)), errors++;
            continue;
        }
        if (n >= (ssize_t)NLMSG_HDRLEN && ((struct nlmsghdr *)buf)->nlmsg_seq == MARK_SEQ) {
            add(" sent=%d", count);
            return;
        }
        count++;
    }
    add(" sent=overflow");
}

static int bound(int fd)
{
    struct sockaddr_nl nl;
    socklen_t len = sizeof nl;
    memset(&nl, 0, sizeof nl);
    return getsockname(fd, (struct sockaddr *)&nl, &len) == 0 && nl.nl_pid != 0;
}

/* ---- the cases ---- */

/* What each case starts from and what is reported after it. */
enum {
    UNBOUND = 1,  /* the socket is not bound first */
    PRIMED = 2,   /* one answer waits in the queue */
    PRIMED2 = 4,  /* two answers wait */
    SENT = 8,     /* report `sent=` */
    AFTER = 16,   /* report `after=` */
    BOUNDQ = 32,  /* report whether the socket is bound afterwards */
    PASSCRED = 64, /* SO_PASSCRED set on the socket */
};

/* -- send, sendto, write -- */

static void send_bad_buffer(int fd) { CALL(send(fd, BAD, 100, 0)); }
static void send_kernel_buffer(int fd) { CALL(send(fd, KERNEL_ADDR, 100, 0)); }
static void send_bad_buffer_huge(int fd) { CALL(send(fd, BAD, 1 << 30, 0)); }
static void send_kernel_buffer_huge(int fd) { CALL(send(fd, KERNEL_ADDR, 1 << 30, 0)); }
static void send_null_zero(int fd) { CALL(send(fd, opaque(NULL), 0, 0)); }
static void send_zero(int fd) { CALL(send(fd, req, 0, 0)); }
static void send_null_len(int fd) { CALL(send(fd, opaque(NULL), 36, 0)); }
static void send_len_size_max(int fd) { CALL(send(fd, opaque(big), opaque_size(SIZE_MAX), 0)); }
static void send_over_sndbuf(int fd) { CALL(send(fd, big, 300000, 0)); }
static void send_partly_mapped(int fd)
{
    /* a request whose first 20 bytes are readable and the rest is not */
    memcpy(edge(20), req, 20);
    CALL(send(fd, edge(20), reqlen, 0));
}
static void send_ok(int fd) { CALL(send(fd, req, reqlen, 0)); }
static void send_oob(int fd) { CALL(send(fd, req, reqlen, MSG_OOB)); }
static void send_compat_flag(int fd) { CALL(send(fd, req, reqlen, MSG_CMSG_COMPAT)); }
static void send_unknown_flags(int fd) { CALL(send(fd, req, reqlen, 0x20000000)); }
static void send_dontwait_more(int fd) { CALL(send(fd, req, reqlen, MSG_DONTWAIT | MSG_MORE)); }
static void send_unbound_bad_buffer(int fd)
{
    CALL(send(fd, BAD, 100, 0));
    add(" bound=%d", bound(fd));
}
static void sendto_bad_addr(int fd) { CALL(sendto(fd, req, reqlen, 0, BAD, sizeof kernel)); }
static void sendto_addr_len_short(int fd)
{
    CALL(sendto(fd, req, reqlen, 0, (struct sockaddr *)&kernel, 4));
}
static void sendto_addr_len_2(int fd)
{
    CALL(sendto(fd, req, reqlen, 0, (struct sockaddr *)&kernel, 2));
}
static void sendto_addr_len_zero(int fd)
{
    CALL(sendto(fd, req, reqlen, 0, (struct sockaddr *)&kernel, 0));
}
static void sendto_addr_len_129(int fd)
{
    struct sockaddr_storage ss = {.ss_family = AF_NETLINK};
    CALL(sendto(fd, req, reqlen, 0, (struct sockaddr *)&ss, sizeof ss + 1));
}
static void sendto_addr_len_128(int fd)
{
    struct sockaddr_storage ss = {.ss_family = AF_NETLINK};
    CALL(sendto(fd, req, reqlen, 0, (struct sockaddr *)&ss, sizeof ss));
}
static void sendto_addr_len_negative(int fd)
{
    CALL(sendto(fd, req, reqlen, 0, (struct sockaddr *)&kernel, (socklen_t)-1));
}
static void sendto_null_addr_len(int fd) { CALL(sendto(fd, req, reqlen, 0, opaque(NULL), 12)); }
static void sendto_wrong_family(int fd)
{
    struct sockaddr_nl to = {.nl_family = AF_INET};
    CALL(sendto(fd, req, reqlen, 0, (struct sockaddr *)&to, sizeof to));
}
static void sendto_wrong_family_bad_buffer(int fd)
{
    struct sockaddr_nl to = {.nl_family = AF_INET};
    CALL(sendto(fd, BAD, 100, 0, (struct sockaddr *)&to, sizeof to));
}
static void sendto_bad_addr_bad_buffer(int fd) { CALL(sendto(fd, BAD, 100, 0, BAD, 12)); }
static void sendto_addr_at_edge(int fd)
{
    /* 12 readable bytes of address, then a page that faults: the kernel copies only 12 */
    memcpy(edge(sizeof kernel), &kernel, sizeof kernel);
    CALL(sendto(fd, req, reqlen, 0, edge(sizeof kernel), sizeof kernel));
}
static void write_bad_buffer(int fd) { CALL(write(fd, BAD, 100)); }
static void write_zero(int fd) { CALL(write(fd, req, 0)); }
static void write_null_zero(int fd) { CALL(write(fd, opaque(NULL), 0)); }
static void write_len_size_max(int fd) { CALL(write(fd, opaque(big), opaque_size(SIZE_MAX))); }

/* -- sendmsg, writev, sendmmsg -- */

static struct iovec req_iov;
static struct msghdr plain(void)
{
    req_iov.iov_base = req;
    req_iov.iov_len = reqlen;
    struct msghdr m = {.msg_iov = &req_iov, .msg_iovlen = 1};
    return m;
}

static void sendmsg_null(int fd) { CALL(sendmsg(fd, opaque(NULL), 0)); }
static void sendmsg_bad_msg(int fd) { CALL(sendmsg(fd, BAD, 0)); }
static void sendmsg_msg_at_edge(int fd)
{
    /* a msghdr whose last bytes are not mapped */
    struct msghdr m = plain();
    memcpy(edge(sizeof m - 8), &m, sizeof m - 8);
    CALL(sendmsg(fd, edge(sizeof m - 8), 0));
}
static void sendmsg_iov_null_len1(int fd)
{
    struct msghdr m = {.msg_iov = opaque(NULL), .msg_iovlen = 1};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iov_null_len0(int fd)
{
    struct msghdr m = {.msg_iov = opaque(NULL), .msg_iovlen = 0};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iov_bad(int fd)
{
    struct msghdr m = {.msg_iov = BAD, .msg_iovlen = 1};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iovlen_1025(int fd)
{
    struct msghdr m = plain();
    m.msg_iovlen = 1025;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iovlen_1024(int fd)
{
    /* 1024 pieces, each empty but the first */
    static struct iovec many[1024];
    many[0].iov_base = req;
    many[0].iov_len = reqlen;
    struct msghdr m = {.msg_iov = many, .msg_iovlen = 1024};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iovlen_huge(int fd)
{
    struct msghdr m = plain();
    m.msg_iovlen = SIZE_MAX;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iov_array_at_edge(int fd)
{
    /* msg_iovlen 2, but only the first iovec is mapped */
    struct iovec *v = edge(sizeof *v);
    v->iov_base = req;
    v->iov_len = reqlen;
    struct msghdr m = {.msg_iov = v, .msg_iovlen = 2};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iov_base_bad(int fd)
{
    struct iovec v = {BAD, 36};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iov_base_kernel(int fd)
{
    struct iovec v = {KERNEL_ADDR, 36};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iov_second_bad(int fd)
{
    struct iovec v[2] = {{req, 16}, {BAD, reqlen - 16}};
    struct msghdr m = {.msg_iov = v, .msg_iovlen = 2};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iov_len_negative(int fd)
{
    struct iovec v = {req, (size_t)-1};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iov_lens_overflow(int fd)
{
    /* two lengths that are each fine but add up past SSIZE_MAX */
    struct iovec v[2] = {{big, (size_t)SSIZE_MAX}, {big, (size_t)SSIZE_MAX}};
    struct msghdr m = {.msg_iov = v, .msg_iovlen = 2};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_iov_null_base_len0(int fd)
{
    struct iovec v[2] = {{opaque(NULL), 0}, {req, reqlen}};
    struct msghdr m = {.msg_iov = v, .msg_iovlen = 2};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_name_bad(int fd)
{
    struct msghdr m = plain();
    m.msg_name = BAD;
    m.msg_namelen = sizeof kernel;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_name_null_len12(int fd)
{
    struct msghdr m = plain();
    m.msg_name = opaque(NULL);
    m.msg_namelen = sizeof kernel;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_name_len0(int fd)
{
    struct msghdr m = plain();
    m.msg_name = BAD; /* not looked at when its length is 0 */
    m.msg_namelen = 0;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_namelen_short(int fd)
{
    struct msghdr m = plain();
    m.msg_name = &kernel;
    m.msg_namelen = 8;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_namelen_1000(int fd)
{
    static struct sockaddr_storage ss[8];
    ss[0].ss_family = AF_NETLINK;
    struct msghdr m = plain();
    m.msg_name = ss;
    m.msg_namelen = 1000;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_namelen_negative(int fd)
{
    struct msghdr m = plain();
    m.msg_name = &kernel;
    m.msg_namelen = (socklen_t)-1;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_namelen_negative_null(int fd)
{
    struct msghdr m = plain();
    m.msg_name = opaque(NULL);
    m.msg_namelen = (socklen_t)-1;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_name_wrong_family_bad_iov(int fd)
{
    struct sockaddr_nl to = {.nl_family = AF_INET};
    struct msghdr m = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = BAD,
                       .msg_iovlen = 1};
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_control_bad(int fd)
{
    struct msghdr m = plain();
    m.msg_control = BAD;
    m.msg_controllen = 16;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_control_null_len(int fd)
{
    struct msghdr m = plain();
    m.msg_control = opaque(NULL);
    m.msg_controllen = 16;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_controllen_huge(int fd)
{
    struct msghdr m = plain();
    m.msg_control = big;
    m.msg_controllen = (size_t)INT_MAX + 1;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_controllen_short(int fd)
{
    /* fewer bytes than one cmsghdr: no control message at all */
    struct msghdr m = plain();
    m.msg_control = big;
    m.msg_controllen = 8;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_cmsg_len_short(int fd)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } c;
    memset(&c, 0, sizeof c);
    c.h.cmsg_len = 4;
    c.h.cmsg_level = SOL_SOCKET;
    c.h.cmsg_type = SCM_RIGHTS;
    struct msghdr m = plain();
    m.msg_control = c.buf;
    m.msg_controllen = sizeof c.buf;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_cmsg_rights(int fd)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } c;
    memset(&c, 0, sizeof c);
    c.h.cmsg_len = CMSG_LEN(sizeof(int));
    c.h.cmsg_level = SOL_SOCKET;
    c.h.cmsg_type = SCM_RIGHTS;
    int zero = 0;
    memcpy(CMSG_DATA(&c.h), &zero, sizeof zero);
    struct msghdr m = plain();
    m.msg_control = c.buf;
    m.msg_controllen = sizeof c.buf;
    CALL(sendmsg(fd, &m, 0));
}
static void send_creds(int fd, pid_t pid)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(struct ucred))];
    } c;
    memset(&c, 0, sizeof c);
    c.h.cmsg_len = CMSG_LEN(sizeof(struct ucred));
    c.h.cmsg_level = SOL_SOCKET;
    c.h.cmsg_type = SCM_CREDENTIALS;
    struct ucred u = {pid, getuid(), getgid()};
    memcpy(CMSG_DATA(&c.h), &u, sizeof u);
    struct msghdr m = plain();
    m.msg_control = c.buf;
    m.msg_controllen = sizeof c.buf;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_cmsg_creds_own(int fd) { send_creds(fd, getpid()); }
static void sendmsg_cmsg_creds_no_such_pid(int fd) { send_creds(fd, 0x3ffffff0); }
static void sendmsg_cmsg_unknown_type(int fd)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } c;
    memset(&c, 0, sizeof c);
    c.h.cmsg_len = CMSG_LEN(sizeof(int));
    c.h.cmsg_level = SOL_SOCKET;
    c.h.cmsg_type = 77;
    struct msghdr m = plain();
    m.msg_control = c.buf;
    m.msg_controllen = sizeof c.buf;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_cmsg_other_level(int fd)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } c;
    memset(&c, 0, sizeof c);
    c.h.cmsg_len = CMSG_LEN(sizeof(int));
    c.h.cmsg_level = SOL_NETLINK;
    c.h.cmsg_type = 3;
    struct msghdr m = plain();
    m.msg_control = c.buf;
    m.msg_controllen = sizeof c.buf;
    CALL(sendmsg(fd, &m, 0));
}
static void sendmsg_compat_flag(int fd)
{
    struct msghdr m = plain();
    CALL(sendmsg(fd, &m, MSG_CMSG_COMPAT));
}
static void sendmsg_compat_flag_null(int fd) { CALL(sendmsg(fd, opaque(NULL), MSG_CMSG_COMPAT)); }
static void sendmsg_oob(int fd)
{
    struct msghdr m = plain();
    CALL(sendmsg(fd, &m, MSG_OOB));
}
static void sendmsg_msg_flags_ignored(int fd)
{
    struct msghdr m = plain();
    m.msg_flags = -1;
    CALL(sendmsg(fd, &m, 0));
}
static void writev_count_negative(int fd)
{
    struct iovec v = {req, reqlen};
    CALL(writev(fd, &v, (int)opaque_size((size_t)-1)));
}
static void writev_count_1025(int fd)
{
    static struct iovec many[1025];
    CALL(writev(fd, many, 1025));
}
static void writev_count_zero(int fd) { CALL(writev(fd, opaque(NULL), 0)); }
static void writev_empty_pieces(int fd)
{
    struct iovec v[2] = {{req, 0}, {opaque(NULL), 0}};
    CALL(writev(fd, v, 2));
}
static void writev_iov_null(int fd) { CALL(writev(fd, opaque(NULL), 1)); }
static void writev_iov_bad(int fd) { CALL(writev(fd, BAD, 1)); }
static void writev_base_bad(int fd)
{
    struct iovec v = {BAD, 36};
    CALL(writev(fd, &v, 1));
}
static void writev_len_negative(int fd)
{
    struct iovec v = {req, (size_t)-1};
    CALL(writev(fd, &v, 1));
}
static void sendmmsg_null(int fd) { CALL(sendmmsg(fd, opaque(NULL), 1, 0)); }
static void sendmmsg_vlen_zero(int fd) { CALL(sendmmsg(fd, opaque(NULL), 0, 0)); }
static void sendmmsg_vlen_huge(int fd)
{
    /* two good entries, then the end of the mapping */
    struct mmsghdr *v = edge(2 * sizeof *v);
    memset(v, 0, 2 * sizeof *v);
    static struct iovec io;
    io.iov_base = req;
    io.iov_len = reqlen;
    for (int i = 0; i < 2; i++) {
        v[i].msg_hdr.msg_iov = &io;
        v[i].msg_hdr.msg_iovlen = 1;
    }
    CALL(sendmmsg(fd, v, UINT_MAX, 0));
    add(" len0=%u len1=%u", v[0].msg_len, v[1].msg_len);
}
static void sendmmsg_second_bad(int fd)
{
    struct mmsghdr v[2];
    memset(v, 0, sizeof v);
    static struct iovec io;
    io.iov_base = req;
    io.iov_len = reqlen;
    v[0].msg_hdr.msg_iov = &io;
    v[0].msg_hdr.msg_iovlen = 1;
    v[1].msg_hdr.msg_iov = opaque(NULL);
    v[1].msg_hdr.msg_iovlen = 1;
    CALL(sendmmsg(fd, v, 2, 0));
    add(" len0=%u", v[0].msg_len);
}
static void sendmmsg_first_bad(int fd)
{
    struct mmsghdr v[2];
    memset(v, 0, sizeof v);
    v[0].msg_hdr.msg_iov = BAD;
    v[0].msg_hdr.msg_iovlen = 1;
    CALL(sendmmsg(fd, v, 2, 0));
}
static void sendmmsg_first_empty(int fd)
{
    struct mmsghdr v[2];
    memset(v, 0, sizeof v);
    static struct iovec io;
    io.iov_base = req;
    io.iov_len = reqlen;
    v[1].msg_hdr.msg_iov = &io;
    v[1].msg_hdr.msg_iovlen = 1;
    CALL(sendmmsg(fd, v, 2, 0));
}
static void sendmmsg_readonly_vector(int fd)
{
    /* the kernel sends, then cannot write msg_len back */
    CALL(sendmmsg(fd, (struct mmsghdr *)readonly, 1, 0));
}

/* -- recv, recvfrom, read -- */

static unsigned char in[REPLY_ROOM];

static void recv_bad_buffer(int fd) { CALL(recv(fd, BAD, 100, 0)); }
static void recv_bad_buffer_empty(int fd) { CALL(recv(fd, BAD, 100, MSG_DONTWAIT)); }
static void recv_kernel_buffer(int fd) { CALL(recv(fd, KERNEL_ADDR, 100, 0)); }
static void recv_null_zero(int fd) { CALL(recv(fd, opaque(NULL), 0, 0)); }
static void recv_null_zero_trunc(int fd) { CALL(recv(fd, opaque(NULL), 0, MSG_TRUNC)); }
static void recv_null_len(int fd) { CALL(recv(fd, opaque(NULL), 100, 0)); }
static void recv_partly_mapped(int fd) { CALL(recv(fd, edge(20), 200, 0)); }
static void recv_partly_mapped_peek(int fd) { CALL(recv(fd, edge(20), 200, MSG_PEEK)); }
static void recv_len_size_max(int fd) { CALL(recv(fd, opaque(in), opaque_size(SIZE_MAX), 0)); }
static void recv_oob(int fd) { CALL(recv(fd, in, sizeof in, MSG_OOB)); }
static void recv_errqueue(int fd) { CALL(recv(fd, in, sizeof in, MSG_ERRQUEUE | MSG_DONTWAIT)); }
static void recv_compat_flag(int fd) { CALL(recv(fd, in, sizeof in, MSG_CMSG_COMPAT)); }
static void recv_peek_trunc_empty(int fd)
{
    CALL(recv(fd, opaque(NULL), 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT));
}
static void recv_trunc_empty(int fd) { CALL(recv(fd, in, sizeof in, MSG_TRUNC | MSG_DONTWAIT)); }
static void recv_waitall(int fd) { CALL(recv(fd, in, sizeof in, MSG_WAITALL)); }
static void recv_readonly_buffer(int fd) { CALL(recv(fd, readonly, 100, 0)); }
static void recvfrom_bad_addr(int fd)
{
    socklen_t len = sizeof(struct sockaddr_nl);
    CALL(recvfrom(fd, in, sizeof in, 0, BAD, &len));
    add(" len=%u", len);
}
static void recvfrom_bad_addrlen(int fd)
{
    struct sockaddr_nl nl;
    CALL(recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&nl, BAD));
}
static void recvfrom_null_addrlen(int fd)
{
    struct sockaddr_nl nl;
    CALL(recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&nl, opaque(NULL)));
}
static void recvfrom_null_addr(int fd)
{
    socklen_t len = sizeof(struct sockaddr_nl);
    CALL(recvfrom(fd, in, sizeof in, 0, opaque(NULL), &len));
    add(" len=%u", len);
}
static void recvfrom_addrlen_negative(int fd)
{
    struct sockaddr_nl nl;
    socklen_t len = (socklen_t)-1;
    CALL(recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&nl, &len));
}
static void recvfrom_addrlen_zero(int fd)
{
    struct sockaddr_nl nl;
    memset(&nl, 0xee, sizeof nl);
    socklen_t len = 0;
    CALL(recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&nl, &len));
    add(" len=%u untouched=%d", len, nl.nl_family == 0xeeee);
}
static void recvfrom_addrlen_short(int fd)
{
    struct sockaddr_nl nl;
    memset(&nl, 0xee, sizeof nl);
    socklen_t len = 4;
    CALL(recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&nl, &len));
    add(" len=%u family=%d pid=0x%x", len, nl.nl_family, nl.nl_pid);
}
static void recvfrom_addrlen_huge(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = 100000;
    CALL(recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&ss, &len));
    add(" len=%u", len);
}
static void recvfrom_addr_at_edge(int fd)
{
    /* 8 writable bytes for a 12-byte address */
    socklen_t len = sizeof(struct sockaddr_nl);
    CALL(recvfrom(fd, in, sizeof in, 0, edge(8), &len));
}
static void recvfrom_addrlen_readonly(int fd)
{
    /* *addrlen can be read (0) but not written back */
    struct sockaddr_nl nl;
    CALL(recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&nl, (socklen_t *)readonly));
}
static void recvfrom_bad_everything_empty(int fd)
{
    CALL(recvfrom(fd, BAD, 100, MSG_DONTWAIT, BAD, BAD));
}
static void read_bad_buffer(int fd) { CALL(read(fd, BAD, 100)); }
static void read_zero(int fd) { CALL(read(fd, in, 0)); }
static void read_null_zero(int fd) { CALL(read(fd, opaque(NULL), 0)); }
static void read_len_size_max(int fd) { CALL(read(fd, opaque(in), opaque_size(SIZE_MAX))); }

/* -- recvmsg, readv, recvmmsg -- */

static struct iovec in_iov;
static struct msghdr inbox(void)
{
    in_iov.iov_base = in;
    in_iov.iov_len = sizeof in;
    struct msghdr m = {.msg_iov = &in_iov, .msg_iovlen = 1};
    return m;
}

static void recvmsg_null(int fd) { CALL(recvmsg(fd, opaque(NULL), 0)); }
static void recvmsg_bad_msg(int fd) { CALL(recvmsg(fd, BAD, 0)); }
static void recvmsg_msg_at_edge(int fd)
{
    struct msghdr m = inbox();
    memcpy(edge(sizeof m - 8), &m, sizeof m - 8);
    CALL(recvmsg(fd, edge(sizeof m - 8), 0));
}
static void recvmsg_readonly_msg(int fd)
{
    /* readable, all zeros (no buffers): receives, then cannot write msg_flags back */
    CALL(recvmsg(fd, (struct msghdr *)readonly, 0));
}
static void recvmsg_iov_null_len1(int fd)
{
    struct msghdr m = {.msg_iov = opaque(NULL), .msg_iovlen = 1};
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_iov_null_len0(int fd)
{
    struct msghdr m = {.msg_iov = opaque(NULL), .msg_iovlen = 0};
    CALL(recvmsg(fd, &m, 0));
    add(" flags=0x%x", m.msg_flags);
}
static void recvmsg_iovlen_1025(int fd)
{
    struct msghdr m = inbox();
    m.msg_iovlen = 1025;
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_iovlen_huge(int fd)
{
    struct msghdr m = inbox();
    m.msg_iovlen = SIZE_MAX;
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_iov_bad(int fd)
{
    struct msghdr m = {.msg_iov = BAD, .msg_iovlen = 1};
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_iov_base_bad(int fd)
{
    struct iovec v = {BAD, 100};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1};
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_iov_second_bad(int fd)
{
    struct iovec v[2] = {{in, 16}, {BAD, 200}};
    struct msghdr m = {.msg_iov = v, .msg_iovlen = 2};
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_iov_len_negative(int fd)
{
    struct iovec v = {in, (size_t)-1};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1};
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_iov_base_kernel(int fd)
{
    struct iovec v = {KERNEL_ADDR, 100};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1};
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_name_bad(int fd)
{
    struct msghdr m = inbox();
    m.msg_name = BAD;
    m.msg_namelen = sizeof(struct sockaddr_nl);
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_name_bad_len0(int fd)
{
    struct msghdr m = inbox();
    m.msg_name = BAD;
    m.msg_namelen = 0;
    CALL(recvmsg(fd, &m, 0));
    add(" namelen=%u", m.msg_namelen);
}
static void recvmsg_name_null_len12(int fd)
{
    struct msghdr m = inbox();
    m.msg_name = opaque(NULL);
    m.msg_namelen = sizeof(struct sockaddr_nl);
    CALL(recvmsg(fd, &m, 0));
    add(" namelen=%u", m.msg_namelen);
}
static void recvmsg_namelen_negative(int fd)
{
    struct sockaddr_nl nl;
    struct msghdr m = inbox();
    m.msg_name = &nl;
    m.msg_namelen = (socklen_t)-1;
    CALL(recvmsg(fd, &m, 0));
}
static void recvmsg_namelen_1000(int fd)
{
    struct sockaddr_storage ss;
    struct msghdr m = inbox();
    m.msg_name = &ss;
    m.msg_namelen = 1000;
    CALL(recvmsg(fd, &m, 0));
    add(" namelen=%u", m.msg_namelen);
}
static void recvmsg_namelen_short(int fd)
{
    struct sockaddr_nl nl;
    memset(&nl, 0xee, sizeof nl);
    struct msghdr m = inbox();
    m.msg_name = &nl;
    m.msg_namelen = 6;
    CALL(recvmsg(fd, &m, 0));
    add(" namelen=%u family=%d pid=0x%x", m.msg_namelen, nl.nl_family, nl.nl_pid);
}
static void recvmsg_control_bad(int fd)
{
    struct msghdr m = inbox();
    m.msg_control = BAD;
    m.msg_controllen = 64;
    CALL(recvmsg(fd, &m, 0));
    add(" controllen=%zu flags=0x%x", (size_t)m.msg_controllen, m.msg_flags);
}
static void recvmsg_control_unused(int fd)
{
    char c[64];
    struct msghdr m = inbox();
    m.msg_control = c;
    m.msg_controllen = sizeof c;
    CALL(recvmsg(fd, &m, 0));
    add(" controllen=%zu flags=0x%x", (size_t)m.msg_controllen, m.msg_flags);
}
static void show_creds(struct msghdr *m)
{
    int found = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred u;
            memcpy(&u, CMSG_DATA(c), sizeof u);
            add(" creds=pid%d,uid%u,gid%u", u.pid, u.uid, u.gid);
        } else {
            add(" cmsg=%d/%d", c->cmsg_level, c->cmsg_type);
        }
        found++;
    }
    add(" controllen=%zu cmsgs=%d flags=0x%x", (size_t)m->msg_controllen, found,
        m->msg_flags);
}
static void recvmsg_passcred(int fd)
{
    union {
        struct cmsghdr h;
        char buf[256];
    } c;
    struct msghdr m = inbox();
    m.msg_control = c.buf;
    m.msg_controllen = sizeof c.buf;
    CALL(recvmsg(fd, &m, 0));
    show_creds(&m);
}
static void recvmsg_passcred_peek(int fd)
{
    union {
        struct cmsghdr h;
        char buf[256];
    } c;
    struct msghdr m = inbox();
    m.msg_control = c.buf;
    m.msg_controllen = sizeof c.buf;
    CALL(recvmsg(fd, &m, MSG_PEEK));
    show_creds(&m);
}
static void recvmsg_passcred_short_control(int fd)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_LEN(4)];
    } c;
    struct msghdr m = inbox();
    m.msg_control = c.buf;
    m.msg_controllen = sizeof c.buf;
    CALL(recvmsg(fd, &m, 0));
    add(" controllen=%zu flags=0x%x", (size_t)m.msg_controllen, m.msg_flags);
}
static void recvmsg_passcred_no_control(int fd)
{
    struct msghdr m = inbox();
    CALL(recvmsg(fd, &m, 0));
    add(" controllen=%zu flags=0x%x", (size_t)m.msg_controllen, m.msg_flags);
}
static void recvmsg_passcred_control_bad(int fd)
{
    struct msghdr m = inbox();
    m.msg_control = BAD;
    m.msg_controllen = 64;
    CALL(recvmsg(fd, &m, 0));
    add(" controllen=%zu flags=0x%x", (size_t)m.msg_controllen, m.msg_flags);
}
static void recvmsg_compat_flag(int fd)
{
    struct msghdr m = inbox();
    CALL(recvmsg(fd, &m, MSG_CMSG_COMPAT));
}
static void recvmsg_oob(int fd)
{
    struct msghdr m = inbox();
    CALL(recvmsg(fd, &m, MSG_OOB));
}
static void recvmsg_flags_in(int fd)
{
    /* msg_flags is output only: what the caller left there is not looked at */
    struct msghdr m = inbox();
    m.msg_flags = -1;
    CALL(recvmsg(fd, &m, 0));
    add(" flags=0x%x", m.msg_flags);
}
static void recvmsg_trunc_small(int fd)
{
    struct iovec v = {in, 10};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1};
    CALL(recvmsg(fd, &m, MSG_TRUNC));
    add(" flags=0x%x", m.msg_flags);
}
static void readv_count_negative(int fd)
{
    struct iovec v = {in, sizeof in};
    CALL(readv(fd, &v, (int)opaque_size((size_t)-1)));
}
static void readv_count_1025(int fd)
{
    static struct iovec many[1025];
    CALL(readv(fd, many, 1025));
}
static void readv_count_zero(int fd) { CALL(readv(fd, opaque(NULL), 0)); }
static void readv_empty_pieces(int fd)
{
    struct iovec v[2] = {{in, 0}, {opaque(NULL), 0}};
    CALL(readv(fd, v, 2));
}
static void readv_iov_null(int fd) { CALL(readv(fd, opaque(NULL), 1)); }
static void readv_iov_bad(int fd) { CALL(readv(fd, BAD, 1)); }
static void readv_base_bad(int fd)
{
    struct iovec v = {BAD, 100};
    CALL(readv(fd, &v, 1));
}
static void readv_len_negative(int fd)
{
    struct iovec v = {in, (size_t)-1};
    CALL(readv(fd, &v, 1));
}
static void recvmmsg_null(int fd) { CALL(recvmmsg(fd, opaque(NULL), 1, 0, NULL)); }
static void recvmmsg_null_vlen_zero(int fd) { CALL(recvmmsg(fd, opaque(NULL), 0, 0, NULL)); }
static void recvmmsg_bad_timeout(int fd)
{
    struct mmsghdr v;
    memset(&v, 0, sizeof v);
    CALL(recvmmsg(fd, &v, 1, 0, BAD));
}
static void recvmmsg_invalid_timeout(int fd)
{
    struct mmsghdr v;
    memset(&v, 0, sizeof v);
    v.msg_hdr = inbox();
    struct timespec t = {0, 2000000000L};
    CALL(recvmmsg(fd, &v, 1, 0, &t));
}
static void recvmmsg_negative_timeout(int fd)
{
    struct mmsghdr v;
    memset(&v, 0, sizeof v);
    v.msg_hdr = inbox();
    struct timespec t = {-1, 0};
    CALL(recvmmsg(fd, &v, 1, 0, &t));
}
static void recvmmsg_zero_timeout_empty(int fd)
{
    struct mmsghdr v;
    memset(&v, 0, sizeof v);
    v.msg_hdr = inbox();
    struct timespec t = {0, 0};
    CALL(recvmmsg(fd, &v, 1, MSG_DONTWAIT, &t));
}
static void recvmmsg_vlen_huge(int fd)
{
    /* one good entry, then the end of the mapping */
    struct mmsghdr *v = edge(sizeof *v);
    memset(v, 0, sizeof *v);
    v->msg_hdr = inbox();
    CALL(recvmmsg(fd, v, UINT_MAX, MSG_DONTWAIT, NULL));
    add(" len0=%u", v->msg_len);
}
static void recvmmsg_second_bad(int fd)
{
    struct mmsghdr v[2];
    memset(v, 0, sizeof v);
    v[0].msg_hdr = inbox();
    v[1].msg_hdr.msg_iov = opaque(NULL);
    v[1].msg_hdr.msg_iovlen = 1;
    CALL(recvmmsg(fd, v, 2, 0, NULL));
    add(" len0=%u", v[0].msg_len);
}
static void recvmmsg_second_bad_buffer(int fd)
{
    static struct iovec bad;
    bad.iov_base = BAD;
    bad.iov_len = 100;
    struct mmsghdr v[2];
    memset(v, 0, sizeof v);
    v[0].msg_hdr = inbox();
    v[1].msg_hdr.msg_iov = &bad;
    v[1].msg_hdr.msg_iovlen = 1;
    CALL(recvmmsg(fd, v, 2, 0, NULL));
    add(" len0=%u", v[0].msg_len);
}
static void recvmmsg_first_bad_buffer(int fd)
{
    static struct iovec bad;
    bad.iov_base = BAD;
    bad.iov_len = 100;
    struct mmsghdr v[2];
    memset(v, 0, sizeof v);
    v[0].msg_hdr.msg_iov = &bad;
    v[0].msg_hdr.msg_iovlen = 1;
    CALL(recvmmsg(fd, v, 2, MSG_DONTWAIT, NULL));
}
static void recvmmsg_vlen_zero(int fd)
{
    struct mmsghdr v;
    memset(&v, 0, sizeof v);
    CALL(recvmmsg(fd, &v, 0, 0, NULL));
}
static void recvmmsg_compat_flag(int fd)
{
    struct mmsghdr v;
    memset(&v, 0, sizeof v);
    v.msg_hdr = inbox();
    CALL(recvmmsg(fd, &v, 1, MSG_CMSG_COMPAT, NULL));
}
static void recvmmsg_readonly_vector(int fd)
{
    CALL(recvmmsg(fd, (struct mmsghdr *)readonly, 1, MSG_DONTWAIT, NULL));
}

/* -- options and names -- */

static void getsockopt_null_len(int fd)
{
    int v;
    CALL(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, opaque(NULL)));
}
static void getsockopt_bad_value(int fd)
{
    socklen_t len = sizeof(int);
    CALL(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, BAD, &len));
}
static void getsockopt_null_value_len0(int fd)
{
    socklen_t len = 0;
    CALL(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, opaque(NULL), &len));
    add(" len=%u", len);
}
static void getsockopt_len_negative(int fd)
{
    int v;
    socklen_t len = (socklen_t)-1;
    CALL(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &len));
}
static void getsockopt_len_huge(int fd)
{
    int v[4] = {0};
    socklen_t len = 1000;
    CALL(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, v, &len));
    add(" len=%u value=%d", len, v[0]);
}
static void getsockopt_type_short(int fd)
{
    unsigned char v[4] = {0xee, 0xee, 0xee, 0xee};
    socklen_t len = 1;
    CALL(getsockopt(fd, SOL_SOCKET, SO_TYPE, v, &len));
    add(" len=%u bytes=%02x%02x", len, v[0], v[1]);
}
static void getsockopt_len_readonly(int fd)
{
    /* *optlen reads as 0 and cannot be written */
    int v;
    CALL(getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, (socklen_t *)readonly));
}
static void getsockopt_netlink_null_len(int fd)
{
    int v;
    CALL(getsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &v, opaque(NULL)));
}
static void getsockopt_netlink_bad_value(int fd)
{
    socklen_t len = sizeof(int);
    CALL(getsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, BAD, &len));
}
static void getsockopt_netlink_len_negative(int fd)
{
    int v;
    socklen_t len = (socklen_t)-1;
    CALL(getsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &v, &len));
}
static void getsockopt_netlink_len_huge(int fd)
{
    int v[4] = {0};
    socklen_t len = 1000;
    CALL(getsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, v, &len));
    add(" len=%u", len);
}
static void getsockopt_memberships_len0(int fd)
{
    socklen_t len = 0;
    CALL(getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, opaque(NULL), &len));
    add(" len=%u", len);
}
static void getsockopt_memberships_bad_value(int fd)
{
    socklen_t len = 4;
    CALL(getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, BAD, &len));
}
static void getsockopt_unknown_level(int fd)
{
    socklen_t len = 4;
    CALL(getsockopt(fd, 1234, 1, BAD, &len));
}
static void getsockopt_rcvtimeo_short(int fd)
{
    struct timeval tv;
    socklen_t len = 4;
    CALL(getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &len));
    add(" len=%u", len);
}
static void getsockopt_passcred_bad_len(int fd)
{
    int v;
    CALL(getsockopt(fd, SOL_SOCKET, SO_PASSCRED, &v, BAD));
}
static void setsockopt_null_value(int fd)
{
    CALL(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, opaque(NULL), sizeof(int)));
}
static void setsockopt_bad_value(int fd)
{
    CALL(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, BAD, sizeof(int)));
}
static void setsockopt_short_len(int fd)
{
    int v = 4096;
    CALL(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, 2));
}
static void setsockopt_len_negative(int fd)
{
    int v = 4096;
    CALL(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, (socklen_t)-1));
}
static void setsockopt_len_huge(int fd)
{
    static int v[256] = {4096};
    CALL(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, v, sizeof v));
    int got;
    socklen_t len = sizeof got;
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &len);
    add(" rcvbuf=%d", got);
}
static void setsockopt_sndbuf_bad_value(int fd)
{
    CALL(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, BAD, sizeof(int)));
}
static void setsockopt_rcvbufforce_bad_value(int fd)
{
    CALL(setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, BAD, sizeof(int)));
}
static void setsockopt_netlink_null_value(int fd)
{
    CALL(setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, opaque(NULL), sizeof(int)));
}
static void setsockopt_netlink_bad_value(int fd)
{
    CALL(setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, BAD, sizeof(int)));
}
static void setsockopt_netlink_short_len(int fd)
{
    int one = 1, v = 7;
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
    CALL(setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &v, 2));
    socklen_t len = sizeof v;
    getsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &v, &len);
    add(" now=%d", v);
}
static void setsockopt_netlink_null_len0(int fd)
{
    CALL(setsockopt(fd, SOL_NETLINK, NETLINK_PKTINFO, opaque(NULL), 0));
}
static void setsockopt_netlink_len_negative(int fd)
{
    int one = 1;
    CALL(setsockopt(fd, SOL_NETLINK, NETLINK_PKTINFO, &one, (socklen_t)-1));
}
static void setsockopt_membership_bad_value(int fd)
{
    CALL(setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, BAD, sizeof(int)));
}
static void setsockopt_rcvtimeo_short(int fd)
{
    struct timeval tv = {1, 0};
    CALL(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, 4));
}
static void setsockopt_unknown_level(int fd)
{
    CALL(setsockopt(fd, 1234, 1, BAD, sizeof(int)));
}
static void bind_null(int fd) { CALL(bind(fd, opaque(NULL), sizeof(struct sockaddr_nl))); }
static void bind_bad(int fd) { CALL(bind(fd, BAD, sizeof(struct sockaddr_nl))); }
static void bind_len_zero(int fd) { CALL(bind(fd, (struct sockaddr *)&kernel, 0)); }
static void bind_null_len_zero(int fd) { CALL(bind(fd, opaque(NULL), 0)); }
static void bind_len_short(int fd) { CALL(bind(fd, (struct sockaddr *)&kernel, 11)); }
static void bind_len_129(int fd)
{
    struct sockaddr_storage ss[2] = {{.ss_family = AF_NETLINK}};
    CALL(bind(fd, (struct sockaddr *)ss, sizeof ss[0] + 1));
}
static void bind_len_128(int fd)
{
    struct sockaddr_storage ss = {.ss_family = AF_NETLINK};
    CALL(bind(fd, (struct sockaddr *)&ss, sizeof ss));
    add(" bound=%d", bound(fd));
}
static void bind_len_negative(int fd)
{
    CALL(bind(fd, (struct sockaddr *)&kernel, (socklen_t)-1));
}
static void bind_wrong_family(int fd)
{
    struct sockaddr_nl nl = {.nl_family = AF_UNIX};
    CALL(bind(fd, (struct sockaddr *)&nl, sizeof nl));
}
static void bind_at_edge(int fd)
{
    memcpy(edge(sizeof kernel), &kernel, sizeof kernel);
    CALL(bind(fd, edge(sizeof kernel), sizeof kernel));
    add(" bound=%d", bound(fd));
}
static void connect_null(int fd) { CALL(connect(fd, opaque(NULL), sizeof(struct sockaddr_nl))); }
static void connect_bad(int fd) { CALL(connect(fd, BAD, sizeof(struct sockaddr_nl))); }
static void connect_len_zero(int fd) { CALL(connect(fd, (struct sockaddr *)&kernel, 0)); }
static void connect_len_1(int fd) { CALL(connect(fd, (struct sockaddr *)&kernel, 1)); }
static void connect_len_short(int fd) { CALL(connect(fd, (struct sockaddr *)&kernel, 8)); }
static void connect_len_129(int fd)
{
    struct sockaddr_storage ss[2] = {{.ss_family = AF_NETLINK}};
    CALL(connect(fd, (struct sockaddr *)ss, sizeof ss[0] + 1));
}
static void connect_len_negative(int fd)
{
    CALL(connect(fd, (struct sockaddr *)&kernel, (socklen_t)-1));
}
static void connect_unspec_short(int fd)
{
    struct sockaddr sa = {.sa_family = AF_UNSPEC};
    CALL(connect(fd, &sa, sizeof(sa_family_t)));
}
static void connect_wrong_family(int fd)
{
    struct sockaddr_nl nl = {.nl_family = AF_INET};
    CALL(connect(fd, (struct sockaddr *)&nl, sizeof nl));
}
static void getsockname_null_len(int fd)
{
    struct sockaddr_nl nl;
    CALL(getsockname(fd, (struct sockaddr *)&nl, opaque(NULL)));
}
static void getsockname_bad_len(int fd)
{
    struct sockaddr_nl nl;
    CALL(getsockname(fd, (struct sockaddr *)&nl, BAD));
}
static void getsockname_bad_addr(int fd)
{
    socklen_t len = sizeof(struct sockaddr_nl);
    CALL(getsockname(fd, BAD, &len));
}
static void getsockname_null_addr_len0(int fd)
{
    socklen_t len = 0;
    CALL(getsockname(fd, opaque(NULL), &len));
    add(" len=%u", len);
}
static void getsockname_len_negative(int fd)
{
    struct sockaddr_nl nl;
    socklen_t len = (socklen_t)-1;
    CALL(getsockname(fd, (struct sockaddr *)&nl, &len));
}
static void getsockname_len_short(int fd)
{
    struct sockaddr_nl nl;
    memset(&nl, 0xee, sizeof nl);
    socklen_t len = 2;
    CALL(getsockname(fd, (struct sockaddr *)&nl, &len));
    add(" len=%u family=%d pad=0x%x", len, nl.nl_family, nl.nl_pad);
}
static void getsockname_addr_at_edge(int fd)
{
    socklen_t len = sizeof(struct sockaddr_nl);
    CALL(getsockname(fd, edge(8), &len));
}
static void getsockname_len_readonly(int fd)
{
    CALL(getsockname(fd, BAD, (socklen_t *)readonly));
}
static void getpeername_null_len(int fd)
{
    struct sockaddr_nl nl;
    CALL(getpeername(fd, (struct sockaddr *)&nl, opaque(NULL)));
}
static void getpeername_bad_addr(int fd)
{
    socklen_t len = sizeof(struct sockaddr_nl);
    CALL(getpeername(fd, BAD, &len));
}
static void getpeername_len_negative(int fd)
{
    struct sockaddr_nl nl;
    socklen_t len = (socklen_t)-1;
    CALL(getpeername(fd, (struct sockaddr *)&nl, &len));
}

static const struct odd {
    const char *name;
    int setup;
    void (*run)(int fd);
} cases[] = {
#define CASE(fn, setup) {#fn, setup, fn}
    CASE(send_bad_buffer, SENT),
    CASE(send_kernel_buffer, SENT),
    CASE(send_bad_buffer_huge, SENT),
    CASE(send_kernel_buffer_huge, SENT),
    CASE(send_null_zero, SENT),
    CASE(send_zero, SENT),
    CASE(send_null_len, SENT),
    CASE(send_len_size_max, SENT),
    CASE(send_over_sndbuf, SENT),
    CASE(send_partly_mapped, SENT),
    CASE(send_ok, SENT),
    CASE(send_oob, SENT),
    CASE(send_compat_flag, SENT),
    CASE(send_unknown_flags, SENT),
    CASE(send_dontwait_more, SENT),
    CASE(send_unbound_bad_buffer, UNBOUND),
    CASE(sendto_bad_addr, SENT),
    CASE(sendto_addr_len_short, SENT),
    CASE(sendto_addr_len_2, SENT),
    CASE(sendto_addr_len_zero, SENT),
    CASE(sendto_addr_len_129, SENT),
    CASE(sendto_addr_len_128, SENT),
    CASE(sendto_addr_len_negative, SENT),
    CASE(sendto_null_addr_len, SENT),
    CASE(sendto_wrong_family, SENT),
    CASE(sendto_wrong_family_bad_buffer, SENT),
    CASE(sendto_bad_addr_bad_buffer, SENT),
    CASE(sendto_addr_at_edge, SENT),
    CASE(write_bad_buffer, SENT),
    CASE(write_zero, SENT),
    CASE(write_null_zero, SENT),
    CASE(write_len_size_max, SENT),
    CASE(sendmsg_null, SENT),
    CASE(sendmsg_bad_msg, SENT),
    CASE(sendmsg_msg_at_edge, SENT),
    CASE(sendmsg_iov_null_len1, SENT),
    CASE(sendmsg_iov_null_len0, SENT),
    CASE(sendmsg_iov_bad, SENT),
    CASE(sendmsg_iovlen_1025, SENT),
    CASE(sendmsg_iovlen_1024, SENT),
    CASE(sendmsg_iovlen_huge, SENT),
    CASE(sendmsg_iov_array_at_edge, SENT),
    CASE(sendmsg_iov_base_bad, SENT),
    CASE(sendmsg_iov_base_kernel, SENT),
    CASE(sendmsg_iov_second_bad, SENT),
    CASE(sendmsg_iov_len_negative, SENT),
    CASE(sendmsg_iov_lens_overflow, SENT),
    CASE(sendmsg_iov_null_base_len0, SENT),
    CASE(sendmsg_name_bad, SENT),
    CASE(sendmsg_name_null_len12, SENT),
    CASE(sendmsg_name_len0, SENT),
    CASE(sendmsg_namelen_short, SENT),
    CASE(sendmsg_namelen_1000, SENT),
    CASE(sendmsg_namelen_negative, SENT),
    CASE(sendmsg_namelen_negative_null, SENT),
    CASE(sendmsg_name_wrong_family_bad_iov, SENT),
    CASE(sendmsg_control_bad, SENT),
    CASE(sendmsg_control_null_len, SENT),
    CASE(sendmsg_controllen_huge, SENT),
    CASE(sendmsg_controllen_short, SENT),
    CASE(sendmsg_cmsg_len_short, SENT),
    CASE(sendmsg_cmsg_rights, SENT),
    CASE(sendmsg_cmsg_creds_own, SENT),
    CASE(sendmsg_cmsg_creds_no_such_pid, SENT),
    CASE(sendmsg_cmsg_unknown_type, SENT),
    CASE(sendmsg_cmsg_other_level, SENT),
    CASE(sendmsg_compat_flag, SENT),
    CASE(sendmsg_compat_flag_null, SENT),
    CASE(sendmsg_oob, SENT),
    CASE(sendmsg_msg_flags_ignored, SENT),
    CASE(writev_count_negative, SENT),
    CASE(writev_count_1025, SENT),
    CASE(writev_count_zero, SENT),
    CASE(writev_empty_pieces, SENT),
    CASE(writev_iov_null, SENT),
    CASE(writev_iov_bad, SENT),
    CASE(writev_base_bad, SENT),
    CASE(writev_len_negative, SENT),
    CASE(sendmmsg_null, SENT),
    CASE(sendmmsg_vlen_zero, SENT),
    CASE(sendmmsg_vlen_huge, SENT),
    CASE(sendmmsg_second_bad, SENT),
    CASE(sendmmsg_first_bad, SENT),
    CASE(sendmmsg_first_empty, SENT),
    CASE(sendmmsg_readonly_vector, SENT),
    CASE(recv_bad_buffer, PRIMED | AFTER),
    CASE(recv_bad_buffer_empty, AFTER),
    CASE(recv_kernel_buffer, PRIMED | AFTER),
    CASE(recv_null_zero, PRIMED | AFTER),
    CASE(recv_null_zero_trunc, PRIMED | AFTER),
    CASE(recv_null_len, PRIMED | AFTER),
    CASE(recv_partly_mapped, PRIMED | AFTER),
    CASE(recv_partly_mapped_peek, PRIMED | AFTER),
    CASE(recv_len_size_max, PRIMED | AFTER),
    CASE(recv_oob, PRIMED | AFTER),
    CASE(recv_errqueue, PRIMED | AFTER),
    CASE(recv_compat_flag, PRIMED | AFTER),
    CASE(recv_peek_trunc_empty, AFTER),
    CASE(recv_trunc_empty, AFTER),
    CASE(recv_waitall, PRIMED | AFTER),
    CASE(recv_readonly_buffer, PRIMED | AFTER),
    CASE(recvfrom_bad_addr, PRIMED | AFTER),
    CASE(recvfrom_bad_addrlen, PRIMED | AFTER),
    CASE(recvfrom_null_addrlen, PRIMED | AFTER),
    CASE(recvfrom_null_addr, PRIMED | AFTER),
    CASE(recvfrom_addrlen_negative, PRIMED | AFTER),
    CASE(recvfrom_addrlen_zero, PRIMED | AFTER),
    CASE(recvfrom_addrlen_short, PRIMED | AFTER),
    CASE(recvfrom_addrlen_huge, PRIMED | AFTER),
    CASE(recvfrom_addr_at_edge, PRIMED | AFTER),
    CASE(recvfrom_addrlen_readonly, PRIMED | AFTER),
    CASE(recvfrom_bad_everything_empty, AFTER),
    CASE(read_bad_buffer, PRIMED | AFTER),
    CASE(read_zero, PRIMED | AFTER),
    CASE(read_null_zero, PRIMED | AFTER),
    CASE(read_len_size_max, PRIMED | AFTER),
    CASE(recvmsg_null, PRIMED | AFTER),
    CASE(recvmsg_bad_msg, PRIMED | AFTER),
    CASE(recvmsg_msg_at_edge, PRIMED | AFTER),
    CASE(recvmsg_readonly_msg, PRIMED | AFTER),
    CASE(recvmsg_iov_null_len1, PRIMED | AFTER),
    CASE(recvmsg_iov_null_len0, PRIMED | AFTER),
    CASE(recvmsg_iovlen_1025, PRIMED | AFTER),
    CASE(recvmsg_iovlen_huge, PRIMED | AFTER),
    CASE(recvmsg_iov_bad, PRIMED | AFTER),
    CASE(recvmsg_iov_base_bad, PRIMED | AFTER),
    CASE(recvmsg_iov_second_bad, PRIMED | AFTER),
    CASE(recvmsg_iov_len_negative, PRIMED | AFTER),
    CASE(recvmsg_iov_base_kernel, PRIMED | AFTER),
    CASE(recvmsg_name_bad, PRIMED | AFTER),
    CASE(recvmsg_name_bad_len0, PRIMED | AFTER),
    CASE(recvmsg_name_null_len12, PRIMED | AFTER),
    CASE(recvmsg_namelen_negative, PRIMED | AFTER),
    CASE(recvmsg_namelen_1000, PRIMED | AFTER),
    CASE(recvmsg_namelen_short, PRIMED | AFTER),
    CASE(recvmsg_control_bad, PRIMED | AFTER),
    CASE(recvmsg_control_unused, PRIMED | AFTER),
    CASE(recvmsg_passcred, PRIMED | AFTER | PASSCRED),
    CASE(recvmsg_passcred_peek, PRIMED | AFTER | PASSCRED),
    CASE(recvmsg_passcred_short_control, PRIMED | AFTER | PASSCRED),
    CASE(recvmsg_passcred_no_control, PRIMED | AFTER | PASSCRED),
    CASE(recvmsg_passcred_control_bad, PRIMED | AFTER | PASSCRED),
    CASE(recvmsg_compat_flag, PRIMED | AFTER),
    CASE(recvmsg_oob, PRIMED | AFTER),
    CASE(recvmsg_flags_in, PRIMED | AFTER),
    CASE(recvmsg_trunc_small, PRIMED | AFTER),
    CASE(readv_count_negative, PRIMED | AFTER),
    CASE(readv_count_1025, PRIMED | AFTER),
    CASE(readv_count_zero, PRIMED | AFTER),
    CASE(readv_empty_pieces, PRIMED | AFTER),
    CASE(readv_iov_null, PRIMED | AFTER),
    CASE(readv_iov_bad, PRIMED | AFTER),
    CASE(readv_base_bad, PRIMED | AFTER),
    CASE(readv_len_negative, PRIMED | AFTER),
    CASE(recvmmsg_null, PRIMED | AFTER),
    CASE(recvmmsg_null_vlen_zero, PRIMED | AFTER),
    CASE(recvmmsg_bad_timeout, PRIMED | AFTER),
    CASE(recvmmsg_invalid_timeout, PRIMED | AFTER),
    CASE(recvmmsg_negative_timeout, PRIMED | AFTER),
    CASE(recvmmsg_zero_timeout_empty, AFTER),
    CASE(recvmmsg_vlen_huge, PRIMED2 | AFTER),
    CASE(recvmmsg_second_bad, PRIMED2 | AFTER),
    CASE(recvmmsg_second_bad_buffer, PRIMED2 | AFTER),
    CASE(recvmmsg_first_bad_buffer, PRIMED2 | AFTER),
    CASE(recvmmsg_vlen_zero, PRIMED | AFTER),
    CASE(recvmmsg_compat_flag, PRIMED | AFTER),
    CASE(recvmmsg_readonly_vector, PRIMED | AFTER),
    CASE(getsockopt_null_len, 0),
    CASE(getsockopt_bad_value, 0),
    CASE(getsockopt_null_value_len0, 0),
    CASE(getsockopt_len_negative, 0),
    CASE(getsockopt_len_huge, 0),
    CASE(getsockopt_type_short, 0),
    CASE(getsockopt_len_readonly, 0),
    CASE(getsockopt_netlink_null_len, 0),
    CASE(getsockopt_netlink_bad_value, 0),
    CASE(getsockopt_netlink_len_negative, 0),
    CASE(getsockopt_netlink_len_huge, 0),
    CASE(getsockopt_memberships_len0, 0),
    CASE(getsockopt_memberships_bad_value, 0),
    CASE(getsockopt_unknown_level, 0),
    CASE(getsockopt_rcvtimeo_short, 0),
    CASE(getsockopt_passcred_bad_len, 0),
    CASE(setsockopt_null_value, 0),
    CASE(setsockopt_bad_value, 0),
    CASE(setsockopt_short_len, 0),
    CASE(setsockopt_len_negative, 0),
    CASE(setsockopt_len_huge, 0),
    CASE(setsockopt_sndbuf_bad_value, 0),
    CASE(setsockopt_rcvbufforce_bad_value, 0),
    CASE(setsockopt_netlink_null_value, 0),
    CASE(setsockopt_netlink_bad_value, 0),
    CASE(setsockopt_netlink_short_len, 0),
    CASE(setsockopt_netlink_null_len0, 0),
    CASE(setsockopt_netlink_len_negative, 0),
    CASE(setsockopt_membership_bad_value, 0),
    CASE(setsockopt_rcvtimeo_short, 0),
    CASE(setsockopt_unknown_level, 0),
    CASE(bind_null, UNBOUND),
    CASE(bind_bad, UNBOUND),
    CASE(bind_len_zero, UNBOUND),
    CASE(bind_null_len_zero, UNBOUND),
    CASE(bind_len_short, UNBOUND),
    CASE(bind_len_129, UNBOUND),
    CASE(bind_len_128, UNBOUND),
    CASE(bind_len_negative, UNBOUND),
    CASE(bind_wrong_family, UNBOUND),
    CASE(bind_at_edge, UNBOUND),
    CASE(connect_null, UNBOUND),
    CASE(connect_bad, UNBOUND),
    CASE(connect_len_zero, UNBOUND),
    CASE(connect_len_1, UNBOUND),
    CASE(connect_len_short, UNBOUND),
    CASE(connect_len_129, UNBOUND),
    CASE(connect_len_negative, UNBOUND),
    CASE(connect_unspec_short, UNBOUND),
    CASE(connect_wrong_family, UNBOUND),
    CASE(getsockname_null_len, 0),
    CASE(getsockname_bad_len, 0),
    CASE(getsockname_bad_addr, 0),
    CASE(getsockname_null_addr_len0, 0),
    CASE(getsockname_len_negative, 0),
    CASE(getsockname_len_short, 0),
    CASE(getsockname_addr_at_edge, 0),
    CASE(getsockname_len_readonly, 0),
    CASE(getpeername_null_len, 0),
    CASE(getpeername_bad_addr, 0),
    CASE(getpeername_len_negative, 0),
#undef CASE
};

static void run_case(const struct odd *c)
{
    outlen = 0;
    out[0] = '\0';
    add("%s:", c->name);
    fflush(stdout);
    int pipefd[2];
    if (pipe(pipefd) < 0) {
        perror("pipe");
        exit(2);
    }
    pid_t child = fork();
    if (child == 0) {
        close(pipefd[0]);
        alarm(5);
        int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC);
        if (fd < 0) {
            add(" socket-%s", errname(errno));
        } else {
            if (!(c->setup & UNBOUND)) {
                struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
                bind(fd, (struct sockaddr *)&nl, sizeof nl);
            }
            if (c->setup & PASSCRED) {
                int one = 1;
                setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
            }
            if (c->setup & (PRIMED | PRIMED2))
                prime(fd);
            if (c->setup & PRIMED2) {
                prime(fd);
                /* the second answer must be there too */
                usleep(20000);
            }
            c->run(fd);
            if (c->setup & SENT)
                sent(fd);
            if (c->setup & AFTER)
                after(fd);
            close(fd);
        }
        add("\n");
        ssize_t w = write(pipefd[1], out, outlen);
        (void)w;
        exit(0); /* not _exit: the shim removes the socket's port file at exit */
    }
    close(pipefd[1]);
    char line[512];
    size_t have = 0;
    ssize_t n;
    while (have < sizeof line - 1 && (n = read(pipefd[0], line + have, sizeof line - 1 - have)) > 0)
        have += (size_t)n;
    close(pipefd[0]);
    int status;
    waitpid(child, &status, 0);
    if (have && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        fwrite(line, 1, have, stdout);
    } else if (WIFSIGNALED(status)) {
        printf("%s: killed by %s\n", c->name, sigabbrev_np(WTERMSIG(status)) ?: "signal");
    } else {
        printf("%s: child exit %d\n", c->name, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    fflush(stdout);
}

static int wanted(const char *name, int argc, char **argv)
{
    if (argc < 2)
        return 1;
    for (int i = 1; i < argc; i++) {
        size_t len = strlen(argv[i]);
        if (len && argv[i][len - 1] == '*' ? strncmp(name, argv[i], len - 1) == 0
                                           : strcmp(name, argv[i]) == 0)
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    size_t count = sizeof cases / sizeof cases[0];
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < count; i++)
            puts(cases[i].name);
        return 0;
    }
    guard = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    readonly = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard == MAP_FAILED || readonly == MAP_FAILED || mprotect(guard + 4096, 4096, PROT_NONE)) {
        perror("mmap");
        return 2;
    }
    reqlen = request(req, 1);
    for (size_t i = 0; i < count; i++)
        if (wanted(cases[i].name, argc, argv))
            run_case(&cases[i]);
    return 0;
}
