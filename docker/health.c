/*
 * tsemu-health: the image's HEALTHCHECK, cheap enough to run every second.
 *
 *   tsemu-health [SOCKET]        (default: $TSEMU_SOCKET, else /run/tsemu/genl.sock)
 *
 * Healthy (exit 0) when the server's control socket (SOCKET.ctl) answers a `now` request
 * within two seconds: the control socket and the netlink socket are served by the same
 * event loop, and the control socket is bound before the server prints its ready line
 * (`tsemu: listening on SOCKET`), so an answer means that the server is up and not stuck.
 * Unhealthy (exit 1) otherwise, with one line on stderr saying why (`docker inspect` shows it).
 *
 * Why C: Docker 20.10 has no --start-interval, so a health check that turns healthy within a
 * second of the start must run every second for the container's whole life. Python takes
 * 70 ms of CPU to start here, this about one; `tsemu families` (the former check) 250 ms.
 * It runs as the container's user, who owns the control socket (mode 0600).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/tsemu/genl.sock"
#define TIMEOUT_MS 2000

static int unhealthy(const char *what, const char *path)
{
    fprintf(stderr, "tsemu-health: %s %s%s%s\n", what, path, errno ? ": " : "",
            errno ? strerror(errno) : "");
    return 1;
}

static long elapsed_ms(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000 + (now.tv_nsec - start->tv_nsec) / 1000000;
}

int main(int argc, char **argv)
{
    const char *socket_path = argc > 1 ? argv[1] : getenv("TSEMU_SOCKET");
    if (!socket_path || !*socket_path)
        socket_path = DEFAULT_SOCKET;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (snprintf(sun.sun_path, sizeof sun.sun_path, "%s.ctl", socket_path) >=
        (int)sizeof sun.sun_path) {
        errno = ENAMETOOLONG;
        return unhealthy("cannot name the control socket of", socket_path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return unhealthy("no socket for", sun.sun_path);
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0)
        return unhealthy("no tsemu server at", sun.sun_path);
    static const char request[] = "{\"op\": \"now\"}\n";
    if (send(fd, request, sizeof request - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof request - 1))
        return unhealthy("cannot ask", sun.sun_path);
    char answer[256];
    size_t got = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (got < sizeof answer - 1 && !memchr(answer, '\n', got)) {
        long left = TIMEOUT_MS - elapsed_ms(&start);
        struct pollfd pfd = {fd, POLLIN, 0};
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) {
            errno = 0;
            return unhealthy("no answer within 2 s from", sun.sun_path);
        }
        ssize_t n = recv(fd, answer + got, sizeof answer - 1 - got, 0);
        if (n <= 0) {
            if (n == 0)
                errno = 0;
            return unhealthy("the connection ended early:", sun.sun_path);
        }
        got += (size_t)n;
    }
    answer[got] = '\0';
    close(fd);
    if (strncmp(answer, "{\"ok\": true", 11) != 0) {
        errno = 0;
        return unhealthy("an unexpected answer from", sun.sun_path);
    }
    return 0;
}
