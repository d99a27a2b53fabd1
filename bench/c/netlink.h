/*
 * What the benchmark's netlink clients (tsget.c, tslisten.c) share: the socket and receive
 * buffer, one-attribute genetlink requests, a request-then-reply exchange with the kernel
 * (or tsemu through the shim), and the TASKSTATS family lookup. Each program is one
 * translation unit, so the state lives here as statics.
 */
#ifndef BENCH_NETLINK_H
#define BENCH_NETLINK_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>

static int fd;
static char rx[1 << 16] __attribute__((aligned(8)));

/* Report a failure as the one JSON line the benchmark reads, and stop. */
static void fail(const char *what, int err)
{
    printf("{\"error\": \"%s: %s\"}\n", what, err ? strerror(err) : "unexpected reply");
    exit(1);
}

/* Build one request of `type` with one attribute into `buf`; returns its length. */
static size_t build(char *buf, uint16_t type, uint8_t cmd, uint16_t flags, uint32_t seq,
                    uint16_t attr, const void *data, uint16_t len)
{
    size_t total = NLMSG_LENGTH(GENL_HDRLEN) + NLA_ALIGN(NLA_HDRLEN + len);
    struct nlmsghdr *n = (struct nlmsghdr *)buf;
    struct genlmsghdr *g = (struct genlmsghdr *)NLMSG_DATA(n);
    struct nlattr *na = (struct nlattr *)((char *)g + GENL_HDRLEN);
    memset(buf, 0, total);
    na->nla_type = attr;
    na->nla_len = (uint16_t)(NLA_HDRLEN + len);
    memcpy((char *)na + NLA_HDRLEN, data, len);
    n->nlmsg_len = (uint32_t)total;
    n->nlmsg_type = type;
    n->nlmsg_flags = (uint16_t)(NLM_F_REQUEST | flags);
    n->nlmsg_seq = seq;
    g->cmd = cmd;
    g->version = 1;
    return total;
}

/* Send one request to the kernel's port and receive one datagram into `rx`. */
static ssize_t transact(const char *req, size_t len)
{
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, req, len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        fail("sendto", errno);
    ssize_t got = recv(fd, rx, sizeof rx, 0);
    if (got < 0)
        fail("recv", errno);
    return got;
}

/* The TASKSTATS family id, from nlctrl's CTRL_CMD_GETFAMILY. */
static int resolve_family(void)
{
    static const char name[] = TASKSTATS_GENL_NAME;
    char req[64];
    ssize_t got = transact(req, build(req, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 0, 1,
                                      CTRL_ATTR_FAMILY_NAME, name, sizeof name));
    struct nlmsghdr *n = (struct nlmsghdr *)rx;
    if (!NLMSG_OK(n, (size_t)got) || n->nlmsg_type != GENL_ID_CTRL)
        fail("resolving TASKSTATS", n->nlmsg_type == NLMSG_ERROR
             ? -((struct nlmsgerr *)NLMSG_DATA(n))->error : 0);
    char *at = (char *)NLMSG_DATA(n) + GENL_HDRLEN, *end = (char *)n + n->nlmsg_len;
    while (at + NLA_HDRLEN <= end) {
        struct nlattr *na = (struct nlattr *)at;
        if (na->nla_len < NLA_HDRLEN)
            break;
        if (na->nla_type == CTRL_ATTR_FAMILY_ID)
            return *(uint16_t *)(at + NLA_HDRLEN);
        at += NLA_ALIGN(na->nla_len);
    }
    fail("resolving TASKSTATS: no family id", 0);
    return -1;
}

#endif
