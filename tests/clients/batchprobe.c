/*
 * Every kind of receive on a listener whose events arrive in batches (several netlink
 * messages per Unix datagram, shim/io.c), each expected to hand out one message as netlink
 * does: registers for CPU 0's exits, says "registered", waits for "go" on stdin (the test
 * broadcasts meanwhile, so that the events wait together on the server), then receives with
 * each call kind in turn and prints one line per step: the call, its result (length or
 * errno name) and the sequence number of the message it got.
 *
 *   batchprobe
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>

static int fd;
static char buf[65536];

static const char *err_name(int e)
{
    switch (e) {
    case EAGAIN: return "EAGAIN";
    case ENOTTY: return "ENOTTY";
    case ENOBUFS: return "ENOBUFS";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    default: return "other";
    }
}

static uint32_t seq_of(const char *p) { uint32_t s; memcpy(&s, p + 8, 4); return s; }

static void say(const char *what, ssize_t n, const char *msg)
{
    if (n < 0)
        printf("%s %s\n", what, err_name(errno));
    else if (msg && n >= 16)
        printf("%s %zd seq=%u\n", what, n, seq_of(msg));
    else
        printf("%s %zd\n", what, n);
}

/* A request and its first answer. */
static ssize_t ask(uint16_t type, uint16_t flags, uint8_t cmd, uint16_t attr, const void *val,
                   uint16_t vlen)
{
    char req[256] = {0};
    struct nlmsghdr *n = (struct nlmsghdr *)req;
    struct genlmsghdr *g = NLMSG_DATA(n);
    struct nlattr *a = (struct nlattr *)((char *)g + GENL_HDRLEN);
    g->cmd = cmd;
    g->version = 1;
    a->nla_type = attr;
    a->nla_len = (uint16_t)(NLA_HDRLEN + vlen);
    memcpy((char *)a + NLA_HDRLEN, val, vlen);
    n->nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN + NLA_ALIGN(a->nla_len));
    n->nlmsg_type = type;
    n->nlmsg_flags = NLM_F_REQUEST | flags;
    n->nlmsg_seq = 1;
    if (send(fd, req, n->nlmsg_len, 0) < 0)
        return -1;
    return recv(fd, buf, sizeof buf, 0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC);
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (fd < 0 || bind(fd, (struct sockaddr *)&local, sizeof local) < 0)
        return 1;
    if (ask(GENL_ID_CTRL, 0, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME, "TASKSTATS", 10) <= 0)
        return 1;
    uint16_t family = 0;
    struct nlmsghdr *reply = (struct nlmsghdr *)buf;
    for (size_t off = NLMSG_HDRLEN + GENL_HDRLEN; off + NLA_HDRLEN <= reply->nlmsg_len;) {
        struct nlattr *a = (struct nlattr *)(buf + off);
        if (a->nla_len < NLA_HDRLEN)
            break;
        if (a->nla_type == CTRL_ATTR_FAMILY_ID)
            memcpy(&family, (char *)a + NLA_HDRLEN, 2);
        off += NLA_ALIGN(a->nla_len);
    }
    if (!family || ask(family, NLM_F_ACK, TASKSTATS_CMD_GET,
                       TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, "0", 2) <= 0)
        return 1;
    printf("registered\n");
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return 1;

    int v = 0;
    say("fionread", ioctl(fd, FIONREAD, &v), NULL);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int ready = poll(&p, 1, 0);
    printf("poll %d revents=%d\n", ready, p.revents);
    say("peek", recv(fd, buf, sizeof buf, MSG_PEEK), buf);
    say("recv", recv(fd, buf, sizeof buf, 0), buf);
    say("recvfrom", recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, NULL, NULL), buf);

    char small[16];
    struct iovec iov = {small, sizeof small};
    struct sockaddr_nl from;
    struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                       .msg_iovlen = 1};
    ssize_t n = recvmsg(fd, &m, MSG_TRUNC);
    say("trunc", n, small);
    printf("trunc flags=%s\n", (m.msg_flags & MSG_TRUNC) ? "MSG_TRUNC" : "none");
    n = recv(fd, small, sizeof small, MSG_PEEK);
    say("shortpeek", n, small);
    say("short", recv(fd, small, sizeof small, 0), small);

    iov.iov_base = buf;
    iov.iov_len = sizeof buf;
    memset(&from, 0xff, sizeof from);
    m.msg_namelen = sizeof from;
    m.msg_flags = -1;
    n = recvmsg(fd, &m, 0);
    say("recvmsg", n, buf);
    printf("recvmsg name=%u,%u,%u flags=%d\n", m.msg_namelen, from.nl_family, from.nl_pid,
           m.msg_flags);

    static char bufs[3][4096];
    struct iovec iovs[3];
    struct mmsghdr mm[3];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 3; i++) {
        iovs[i].iov_base = bufs[i];
        iovs[i].iov_len = sizeof bufs[i];
        mm[i].msg_hdr.msg_iov = &iovs[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    int got = recvmmsg(fd, mm, 3, MSG_DONTWAIT, NULL);
    printf("recvmmsg %d", got);
    for (int i = 0; i < got; i++)
        printf(" %u:seq=%u", mm[i].msg_len, seq_of(bufs[i]));
    printf("\n");

    say("read", read(fd, buf, sizeof buf), buf);
    char head8[8];
    struct iovec two[2] = {{head8, 8}, {buf + 8, sizeof buf - 8}};
    n = readv(fd, two, 2);
    memcpy(buf, head8, 8);
    say("readv", n, buf);

    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(fd, &rd);
    struct timeval zero = {0, 0};
    printf("select %d\n", select(fd + 1, &rd, NULL, NULL, &zero));

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = fd}, out[4];
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    printf("epollet %d\n", epoll_wait(ep, out, 4, 0));
    say("afteredge", recv(fd, buf, sizeof buf, MSG_DONTWAIT), buf);
    printf("epollet-again %d\n", epoll_wait(ep, out, 4, 0));
    /* Edge-triggered: read until EAGAIN. */
    long rest = 0;
    uint32_t first = 0, last = 0;
    for (;;) {
        n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0)
            break;
        if (!rest++)
            first = seq_of(buf);
        last = seq_of(buf);
    }
    printf("drain %ld first=%u last=%u end=%s\n", rest, first, last, err_name(errno));
    printf("poll-empty %d\n", poll(&p, 1, 0));
    printf("peekoff %s\n", setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &v, sizeof v) < 0
                               ? err_name(errno) : "0");
    /* The next exit (after "more"): a single one, a plain datagram; waits for it. */
    printf("waiting\n");
    if (!fgets(line, sizeof line, stdin))
        return 1;
    say("single", recv(fd, buf, sizeof buf, 0), buf);
    return 0;
}
