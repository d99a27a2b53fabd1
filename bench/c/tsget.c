/*
 * The GET benchmark's client: strict request-then-reply TASKSTATS_CMD_GET by pid over an
 * AF_NETLINK / NETLINK_GENERIC socket, with plain libc calls, so it runs unmodified against
 * the host kernel and, with the LD_PRELOAD shim, against tsemu. Every reply is checked: its
 * type is the family's, its seq echoes the request's, its AGGR_PID record names the pid asked.
 *
 *   tsget [-f FAMILY] [-p PID | -P FIRST -c COUNT] [-n MAX] [-t SECONDS] [-w WARMUP]
 *
 *   -f FAMILY   the TASKSTATS family id (default: resolved with CTRL_CMD_GETFAMILY)
 *   -p PID      ask for this pid every time (default: this process's pid)
 *   -P/-c       ask for pseudo-random pids in [FIRST, FIRST+COUNT)
 *
 * Prints one JSON line: {"gets", "seconds", "rate", "mean_us", "p50_us", "p99_us",
 * "reply_bytes"}; on failure {"error": "..."} and exit status 1.
 */
#define _GNU_SOURCE /* sched_setaffinity */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>

#include "common.h"
#include "netlink.h"


/* Check one GET reply; returns its length. */
static size_t check(ssize_t got, int family, uint32_t seq, uint32_t pid)
{
    struct nlmsghdr *n = (struct nlmsghdr *)rx;
    if (!NLMSG_OK(n, (size_t)got))
        fail("truncated reply", 0);
    if (n->nlmsg_type == NLMSG_ERROR)
        fail("GET", -((struct nlmsgerr *)NLMSG_DATA(n))->error);
    if (n->nlmsg_type != family || n->nlmsg_seq != seq)
        fail("reply of another type or seq", 0);
    struct nlattr *aggr = (struct nlattr *)((char *)NLMSG_DATA(n) + GENL_HDRLEN);
    struct nlattr *inner = (struct nlattr *)((char *)aggr + NLA_HDRLEN);
    if (aggr->nla_type != TASKSTATS_TYPE_AGGR_PID || inner->nla_type != TASKSTATS_TYPE_PID ||
        *(uint32_t *)((char *)inner + NLA_HDRLEN) != pid)
        fail("reply for another pid", 0);
    return (size_t)got;
}

int main(int argc, char **argv)
{
    long max = 1000000, warmup = 200, first = 0, count = 0;
    long pid_fixed = getpid();
    double seconds = 2.0;
    int family = 0, opt;
    while ((opt = getopt(argc, argv, "f:p:P:c:n:t:w:")) != -1) {
        switch (opt) {
        case 'f': family = (int)arg_long(optarg); break;
        case 'p': pid_fixed = arg_long(optarg); break;
        case 'P': first = arg_long(optarg); break;
        case 'c': count = arg_long(optarg); break;
        case 'n': max = arg_long(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'w': warmup = arg_long(optarg); break;
        default: return 2;
        }
    }
    fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC);
    if (fd < 0)
        fail("socket", errno);
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0)
        fail("bind", errno);
    if (!family)
        family = resolve_family();
    double *lat = malloc(sizeof(double) * (size_t)(max > 0 ? max : 1));
    if (!lat)
        fail("malloc", errno);
    char req[64];
    uint32_t seq = 100, rng = 2463534242u;
    size_t reply_bytes = 0;
    for (long i = 0; i < warmup + max; i++) {
        uint32_t pid = (uint32_t)pid_fixed;
        if (count > 0) {
            rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5;
            pid = (uint32_t)(first + (long)(rng % (uint32_t)count));
        }
        size_t len = build(req, (uint16_t)family, TASKSTATS_CMD_GET, 0, ++seq,
                           TASKSTATS_CMD_ATTR_PID, &pid, sizeof pid);
        (void)len;
        static double start, deadline;
        if (i == warmup) {
            start = now_s();
            deadline = start + seconds;
        }
        double t0 = i >= warmup ? now_s() : 0;
        reply_bytes = check(transact(req, len), family, seq, pid);
        if (i >= warmup) {
            double t1 = now_s();
            lat[i - warmup] = t1 - t0;
            if (t1 >= deadline || i + 1 == warmup + max) {
                long done = i - warmup + 1;
                double total = t1 - start;
                double sum = 0;
                for (long k = 0; k < done; k++)
                    sum += lat[k];
                qsort(lat, (size_t)done, sizeof(double), cmp_double);
                printf("{\"gets\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"mean_us\": %.3f, "
                       "\"p50_us\": %.3f, \"p99_us\": %.3f, \"reply_bytes\": %zu, "
                       "\"family\": %d}\n",
                       done, total, (double)done / total, sum / (double)done * 1e6,
                       quantile(lat, done, 0.5) * 1e6, quantile(lat, done, 0.99) * 1e6,
                       reply_bytes, family);
                return 0;
            }
        }
    }
    return 0;
}
