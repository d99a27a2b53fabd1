/*
 * What a seccomp supervisor adds to a system call it traps and hands back (CONTINUE): a
 * sendmsg and a recvmsg of 64 bytes on a socketpair(AF_UNIX, SOCK_DGRAM), N times, timed; run
 * with and without the supervisor, the difference per call is the supervisor's cost.
 *
 *   trapcost [-n COUNT]     prints {"pairs": N, "ns_per_call": X}
 *
 * With `-o PATH` the call is an open of PATH (and its close, which is not trapped): what a
 * supervisor with a /proc view, which traps every path call, adds to one outside /proc;
 * `-d DIR` changes to DIR first (for a relative PATH).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long count = 100000;
    const char *path = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "n:o:d:")) != -1)
        if (opt == 'n')
            count = atol(optarg);
        else if (opt == 'o')
            path = optarg;
        else if (opt == 'd' && chdir(optarg) != 0) {
            printf("{\"error\": \"chdir\"}\n");
            return 1;
        }
    struct timespec a, b;
    if (path) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < count; i++) {
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                printf("{\"error\": \"open\"}\n");
                return 1;
            }
            close(fd);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
        printf("{\"opens\": %ld, \"ns_per_call\": %.1f}\n", count, ns / (double)count);
        return 0;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0) {
        printf("{\"error\": \"socketpair\"}\n");
        return 1;
    }
    char buf[64];
    memset(buf, 7, sizeof buf);
    struct iovec iov = {buf, sizeof buf};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < count; i++) {
        if (sendmsg(sv[0], &m, 0) != sizeof buf || recvmsg(sv[1], &m, 0) != sizeof buf) {
            printf("{\"error\": \"io\"}\n");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    printf("{\"pairs\": %ld, \"ns_per_call\": %.1f}\n", count, ns / (double)count / 2);
    return 0;
}
