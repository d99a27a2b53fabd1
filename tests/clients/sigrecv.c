/*
 * A signal during a blocking receive on a netlink socket: the receive must be interrupted as
 * the kernel interrupts it (EINTR for a handler without SA_RESTART; restarted, and then
 * answered by the next datagram, with SA_RESTART). Built -static for the supervisor's tests.
 *
 *   sigrecv        prints "ready" once its socket waits, then one line per receive:
 *                  "first=EINTR" (SIGUSR1, no SA_RESTART), then, after SIGUSR2 (SA_RESTART)
 *                  "second=N handled=1" when a datagram (an exit of CPU 0's) arrives
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>

static volatile sig_atomic_t handled;

static void on_signal(int sig)
{
    (void)sig;
    handled = 1;
}

static int family_id(int fd)
{
    struct {
        struct nlmsghdr n;
        struct genlmsghdr g;
        char buf[256];
    } req;
    memset(&req, 0, sizeof req);
    const char *name = TASKSTATS_GENL_NAME;
    struct nlattr *a = (struct nlattr *)req.buf;
    a->nla_type = CTRL_ATTR_FAMILY_NAME;
    a->nla_len = (unsigned short)(NLA_HDRLEN + strlen(name) + 1);
    memcpy((char *)a + NLA_HDRLEN, name, strlen(name) + 1);
    req.n.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN + NLA_ALIGN(a->nla_len));
    req.n.nlmsg_type = GENL_ID_CTRL;
    req.n.nlmsg_flags = NLM_F_REQUEST;
    req.g.cmd = CTRL_CMD_GETFAMILY;
    req.g.version = 1;
    if (send(fd, &req, req.n.nlmsg_len, 0) < 0)
        return -1;
    char reply[4096];
    ssize_t n = recv(fd, reply, sizeof reply, 0);
    if (n < (ssize_t)(NLMSG_HDRLEN + GENL_HDRLEN))
        return -1;
    char *at = reply + NLMSG_HDRLEN + GENL_HDRLEN, *end = reply + n;
    while (at + NLA_HDRLEN <= end) {
        struct nlattr *x = (struct nlattr *)at;
        if (x->nla_len < NLA_HDRLEN)
            break;
        if (x->nla_type == CTRL_ATTR_FAMILY_ID)
            return *(unsigned short *)(at + NLA_HDRLEN);
        at += NLA_ALIGN(x->nla_len);
    }
    return -1;
}

int main(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC);
    struct sockaddr_nl me = {.nl_family = AF_NETLINK};
    if (fd < 0 || bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
        printf("error=%s\n", strerror(errno));
        return 1;
    }
    int family = family_id(fd);
    if (family < 0) {
        printf("error=family\n");
        return 1;
    }
    struct {
        struct nlmsghdr n;
        struct genlmsghdr g;
        char buf[64];
    } req;
    memset(&req, 0, sizeof req);
    struct nlattr *a = (struct nlattr *)req.buf;
    a->nla_type = TASKSTATS_CMD_ATTR_REGISTER_CPUMASK;
    a->nla_len = NLA_HDRLEN + 2;
    memcpy((char *)a + NLA_HDRLEN, "0", 2);
    req.n.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN + NLA_ALIGN(a->nla_len));
    req.n.nlmsg_type = (unsigned short)family;
    req.n.nlmsg_flags = NLM_F_REQUEST;
    req.g.cmd = TASKSTATS_CMD_GET;
    req.g.version = 1;
    if (send(fd, &req, req.n.nlmsg_len, 0) < 0) {
        printf("error=%s\n", strerror(errno));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    printf("first=%s\n", n < 0 ? (errno == EINTR ? "EINTR" : strerror(errno)) : "data");
    fflush(stdout);
    handled = 0;
    n = recv(fd, buf, sizeof buf, 0);
    printf("second=%zd handled=%d\n", n, (int)handled);
    return 0;
}
