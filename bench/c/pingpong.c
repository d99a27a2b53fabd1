/*
 * Reference for the GET benchmark: a strict request-then-reply ping-pong between two
 * processes over socketpair(AF_UNIX, SOCK_DGRAM), a REQ-byte request answered by a
 * REPLY-byte reply (40 and 596: a TASKSTATS GET and its answer).
 *
 *   pingpong [-n MAX_ROUND_TRIPS] [-t SECONDS] [-q REQ] [-r REPLY] [-S CPU] [-C CPU]
 *
 * -S and -C pin the answering (server) and the asking (client) process to a CPU.
 *
 * Prints one JSON line: {"round_trips", "seconds", "rate"}.
 */
#define _GNU_SOURCE /* sched_setaffinity */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

int main(int argc, char **argv)
{
    long max = 2000000, req = 40, reply = 596;
    double seconds = 2.0;
    int opt, server_cpu = -1, client_cpu = -1;
    while ((opt = getopt(argc, argv, "S:C:n:t:q:r:")) != -1) {
        switch (opt) {
        case 'n': max = arg_long(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'q': req = arg_long(optarg); break;
        case 'r': reply = arg_long(optarg); break;
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
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    char buf[4096];
    memset(buf, 0x5a, sizeof buf);
    if (child == 0)
        pin(server_cpu);
    else
        pin(client_cpu);
    if (child == 0) { /* the server: answer every request; a 1-byte request ends it */
        close(sv[0]);
        for (;;) {
            ssize_t n = recv(sv[1], buf, sizeof buf, 0);
            if (n <= 1)
                _exit(0);
            if (send(sv[1], buf, (size_t)reply, 0) < 0)
                _exit(1);
        }
    }
    close(sv[1]);
    long done = 0;
    /* warm-up */
    for (int i = 0; i < 1000; i++) {
        if (send(sv[0], buf, (size_t)req, 0) < 0 || recv(sv[0], buf, sizeof buf, 0) < 0) {
            perror("warm-up");
            return 1;
        }
    }
    double start = now_s(), deadline = start + seconds, end = start;
    while (done < max) {
        if (send(sv[0], buf, (size_t)req, 0) < 0) {
            perror("send");
            return 1;
        }
        ssize_t n = recv(sv[0], buf, sizeof buf, 0);
        if (n != reply) {
            fprintf(stderr, "short reply %zd\n", n);
            return 1;
        }
        done++;
        if ((done & 255) == 0 && (end = now_s()) >= deadline)
            break;
    }
    end = now_s();
    send(sv[0], buf, 1, 0);
    waitpid(child, NULL, 0);
    printf("{\"round_trips\": %ld, \"seconds\": %.6f, \"rate\": %.1f}\n", done, end - start,
           (double)done / (end - start));
    return 0;
}
