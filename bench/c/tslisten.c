/*
 * The broadcast benchmark's listener: registers for exit events on CPUMASK over an AF_NETLINK
 * / NETLINK_GENERIC socket (plain libc calls: it runs on the host kernel and, with the
 * LD_PRELOAD shim, against tsemu) and reads them as fast as it can, checking that the
 * per-CPU sequence numbers are contiguous. A datagram may hold several netlink messages.
 *
 *   tslisten -m CPUMASK [-n EXPECTED] [-r RCVBUF] [-R RCVBUF] [-i IDLE_S] [-T TOTAL_S] [-f FAMILY]
 *
 * -r asks SO_RCVBUFFORCE (SO_RCVBUF when refused), -R plain SO_RCVBUF (capped by rmem_max).
 *
 * After registering (and its ACK) it prints "ready PORT" (its netlink port id); at the end one JSON
 * line: {"received", "first_seq", "last_seq", "gaps", "missing", "enobufs", "t_first",
 * "t_last", "rcvbuf"} (times on CLOCK_MONOTONIC). It stops after EXPECTED events, after
 * IDLE_S seconds without one (once the first came), or after TOTAL_S seconds in all.
 */
#define _GNU_SOURCE /* sched_setaffinity */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>

#include "common.h"
#include "netlink.h"


int main(int argc, char **argv)
{
    const char *mask = "0";
    long expected = 0, rcvbuf = 0;
    double idle = 3.0, total = 60.0;
    int family = 0, opt, plain = 0;
    while ((opt = getopt(argc, argv, "m:n:r:R:i:T:f:")) != -1) {
        switch (opt) {
        case 'm': mask = optarg; break;
        case 'n': expected = arg_long(optarg); break;
        case 'r': rcvbuf = arg_long(optarg); break;
        case 'R': rcvbuf = arg_long(optarg); plain = 1; break;
        case 'i': idle = atof(optarg); break;
        case 'T': total = atof(optarg); break;
        case 'f': family = (int)arg_long(optarg); break;
        default: return 2;
        }
    }
    fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC);
    if (fd < 0)
        fail("socket", errno);
    if (rcvbuf > 0) {
        int v = (int)rcvbuf;
        if ((plain || setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) < 0) &&
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v) < 0)
            fail("SO_RCVBUF", errno);
    }
    int effective = 0;
    socklen_t elen = sizeof effective;
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &effective, &elen);
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0)
        fail("bind", errno);
    if (!family)
        family = resolve_family();
    char req[256];
    ssize_t got = transact(req, build(req, (uint16_t)family, TASKSTATS_CMD_GET, NLM_F_ACK, 2,
                                      TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, mask,
                                      (uint16_t)(strlen(mask) + 1)));
    struct nlmsghdr *n = (struct nlmsghdr *)rx;
    if (!NLMSG_OK(n, (size_t)got) || n->nlmsg_type != NLMSG_ERROR)
        fail("register: no ACK", 0);
    if (((struct nlmsgerr *)NLMSG_DATA(n))->error)
        fail("register", -((struct nlmsgerr *)NLMSG_DATA(n))->error);
    /* Until the first event: at most TOTAL_S; after it, IDLE_S without one ends the run. */
    struct timeval tv = {.tv_sec = (long)total, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_nl self = {0};
    socklen_t slen = sizeof self;
    getsockname(fd, (struct sockaddr *)&self, &slen);
    printf("ready %u\n", self.nl_pid);
    fflush(stdout);

    long received = 0, gaps = 0, enobufs = 0, errors = 0;
    uint32_t first_seq = 0, next_seq = 0, last_seq = 0;
    double t_first = 0, t_last = 0, deadline = now_s() + total;
    while (expected <= 0 || received < expected) {
        ssize_t len = recv(fd, rx, sizeof rx, 0);
        if (len < 0) {
            if (errno == ENOBUFS) {
                enobufs++;
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break; /* idle */
            if (errno == EINTR)
                continue;
            fail("recv", errno);
        }
        double t = now_s();
        for (struct nlmsghdr *m = (struct nlmsghdr *)rx; NLMSG_OK(m, (size_t)len);
             m = NLMSG_NEXT(m, len)) {
            if (m->nlmsg_type != family || m->nlmsg_pid != 0) {
                errors++;
                continue;
            }
            if (received == 0) {
                first_seq = m->nlmsg_seq;
                t_first = t;
                tv.tv_sec = (long)idle;
                tv.tv_usec = (long)((idle - (double)(long)idle) * 1e6);
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            } else if (m->nlmsg_seq != next_seq) {
                gaps++;
            }
            next_seq = m->nlmsg_seq + 1;
            last_seq = m->nlmsg_seq;
            received++;
        }
        t_last = t;
        if (t > deadline)
            break;
    }
    long span = received ? (long)(uint32_t)(last_seq - first_seq) + 1 : 0;
    printf("{\"received\": %ld, \"first_seq\": %u, \"last_seq\": %u, \"gaps\": %ld, "
           "\"missing\": %ld, \"enobufs\": %ld, \"other\": %ld, \"t_first\": %.6f, "
           "\"t_last\": %.6f, \"rcvbuf\": %d}\n",
           received, first_seq, last_seq, gaps, span - received, enobufs, errors, t_first,
           t_last, effective);
    return 0;
}
