/*
 * Reference for the broadcast benchmark: one-way throughput of SIZE-byte datagrams (596: an
 * exit event) from one process to another over socketpair(AF_UNIX, SOCK_DGRAM); blocking
 * sends, so the sender waits whenever the receiver's queue is full, as tsemu's outboxes do.
 *
 *   oneway [-n MAX_DATAGRAMS] [-t SECONDS] [-s SIZE] [-S CPU] [-C CPU]
 *
 * -S and -C pin the sending (server) and the receiving (client) process to a CPU.
 *
 * Prints one JSON line: {"datagrams", "seconds", "rate"} (counted at the receiver).
 */
#define _GNU_SOURCE /* sched_setaffinity */
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

int main(int argc, char **argv)
{
    long max = 5000000, size = 596;
    double seconds = 1.5;
    int opt, server_cpu = -1, client_cpu = -1;
    while ((opt = getopt(argc, argv, "S:C:n:t:s:")) != -1) {
        switch (opt) {
        case 'n': max = arg_long(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 's': size = arg_long(optarg); break;
        case 'S': server_cpu = (int)arg_long(optarg); break;
        case 'C': client_cpu = (int)arg_long(optarg); break;
        default: return 2;
        }
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) < 0) {
        perror("socketpair");
        return 1;
    }
    char buf[8192];
    memset(buf, 0x5a, sizeof buf);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0)
        pin(server_cpu);
    else
        pin(client_cpu);
    if (child == 0) { /* the sender: SIZE-byte datagrams until told to stop, then a 1-byte end */
        close(sv[0]);
        double deadline = now_s() + seconds;
        for (long i = 0; i < max; i++) {
            if (send(sv[1], buf, (size_t)size, 0) < 0)
                _exit(1);
            if ((i & 1023) == 0 && now_s() >= deadline)
                break;
        }
        send(sv[1], buf, 1, 0);
        _exit(0);
    }
    close(sv[1]);
    long got = 0;
    double start = 0, end = 0;
    for (;;) {
        ssize_t n = recv(sv[0], buf, sizeof buf, 0);
        if (n < 0) {
            perror("recv");
            return 1;
        }
        if (n == 1)
            break;
        if (got == 0)
            start = now_s();
        got++;
    }
    end = now_s();
    waitpid(child, NULL, 0);
    /* the first datagram starts the clock: count the ones after it */
    double rate = got > 1 ? (double)(got - 1) / (end - start) : 0.0;
    printf("{\"datagrams\": %ld, \"seconds\": %.6f, \"rate\": %.1f}\n", got, end - start, rate);
    return 0;
}
