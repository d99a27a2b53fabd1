/*
 * Reference for the paced listener benchmark: what the kernel's own netlink does on this
 * machine with the same stream. A sender paced at RATE messages a second (handed over in
 * pieces of PACE_US microseconds' worth, as tsemu's paced storms are) sends COUNT SIZE-byte
 * messages to a NETLINK_USERSOCK socket of another process that reads them as a listener
 * does, with SO_RCVBUF asked plainly (capped by net.core.rmem_max, as a standard taskstats
 * listener's). A kernel producer cannot wait for a slow listener: when the listener's buffer
 * is full its message is dropped and the listener told ENOBUFS. Between two user processes
 * the sender hears EAGAIN instead (MSG_DONTWAIT); it drops the message there, which is what
 * the kernel would have done, and counts it.
 *
 *   nlpaced [-r RATE] [-n COUNT] [-s SIZE] [-b RCVBUF] [-p PACE_US] [-S CPU] [-C CPU]
 *
 * Prints one JSON line: {"sent", "dropped", "received", "rate", "rcvbuf"}: "rate" is what the
 * receiver got a second, between its first and its last message.
 */
#define _GNU_SOURCE /* sched_setaffinity */
#include <errno.h>
#include <linux/netlink.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

static int open_usersock(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_USERSOCK);
    if (fd < 0) {
        perror("socket(NETLINK_USERSOCK)");
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv)
{
    long rate = 300000, count = 1000000, size = 596, rcvbuf = 8 << 20, pace_us = 50;
    int opt, server_cpu = -1, client_cpu = -1;
    while ((opt = getopt(argc, argv, "r:n:s:b:p:S:C:")) != -1) {
        switch (opt) {
        case 'r': rate = arg_long(optarg); break;
        case 'n': count = arg_long(optarg); break;
        case 's': size = arg_long(optarg); break;
        case 'b': rcvbuf = arg_long(optarg); break;
        case 'p': pace_us = arg_long(optarg); break;
        case 'S': server_cpu = (int)arg_long(optarg); break;
        case 'C': client_cpu = (int)arg_long(optarg); break;
        default: return 2;
        }
    }
    if (rate <= 0 || count <= 0 || size < (long)sizeof(struct nlmsghdr) || size > 8192)
        return 2;
    int ready[2], result[2];
    if (pipe(ready) < 0 || pipe(result) < 0) {
        perror("pipe");
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    char buf[8192];
    if (child == 0) { /* the listener */
        pin(client_cpu);
        int fd = open_usersock();
        int v = (int)rcvbuf;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
        struct sockaddr_nl self = {.nl_family = AF_NETLINK, .nl_pid = (unsigned)getpid()};
        if (bind(fd, (struct sockaddr *)&self, sizeof self) < 0) {
            perror("bind");
            _exit(1);
        }
        struct timeval idle = {.tv_sec = 1};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
        if (write(ready[1], "r", 1) != 1)
            _exit(1);
        long got = 0;
        double first = 0, last = 0;
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n < 0) {
                if (errno == EINTR || errno == ENOBUFS)
                    continue;
                break; /* idle: the stream is over */
            }
            last = now_s();
            if (!got)
                first = last;
            got++;
        }
        socklen_t len = sizeof v;
        getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &len);
        double out[4] = {(double)got, first, last, (double)v};
        if (write(result[1], out, sizeof out) != (ssize_t)sizeof out)
            _exit(1);
        _exit(0);
    }
    pin(server_cpu);
    char r;
    if (read(ready[0], &r, 1) != 1)
        return 1;
    int fd = open_usersock();
    struct sockaddr_nl to = {.nl_family = AF_NETLINK, .nl_pid = (unsigned)child};
    memset(buf, 0x5a, sizeof buf);
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    h->nlmsg_len = (unsigned)size;
    h->nlmsg_type = NLMSG_MIN_TYPE;
    long quantum = rate * pace_us / 1000000;
    if (quantum < 1)
        quantum = 1;
    long sent = 0, dropped = 0;
    double start = now_s();
    while (sent < count) {
        long due = (long)((now_s() - start) * (double)rate) + 1;
        if (due > count)
            due = count;
        if (due - sent < quantum && due < count)
            continue; /* (a busy wait: the sender's CPU is its own) */
        for (; sent < due; sent++) {
            h->nlmsg_seq = (unsigned)sent;
            if (sendto(fd, buf, (size_t)size, MSG_DONTWAIT, (struct sockaddr *)&to,
                       sizeof to) < 0) {
                if (errno != EAGAIN && errno != ENOBUFS) {
                    perror("sendto");
                    return 1;
                }
                dropped++;
            }
        }
    }
    double out[4];
    if (read(result[0], out, sizeof out) != (ssize_t)sizeof out)
        return 1;
    waitpid(child, NULL, 0);
    double span = out[2] - out[1];
    printf("{\"sent\": %ld, \"dropped\": %ld, \"received\": %.0f, \"rate\": %.1f, "
           "\"rcvbuf\": %.0f}\n", sent, dropped, out[0], span > 0 ? (out[0] - 1) / span : 0.0,
           out[3]);
    return 0;
}
