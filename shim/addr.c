/*
 * Addressing: where the server is, how a socket becomes netlink port N, and the small
 * control datagrams that carry socket options to the server.
 *
 * The rules are emulator/addressing.py's (the reference):
 *   - server socket: $TSEMU_SOCKET, else $XDG_RUNTIME_DIR/tsemu/genl.sock, else
 *     /tmp/tsemu-<uid>/genl.sock;
 *   - port N is the Unix socket bound to `<server>.ports/<N as a signed decimal>`: the file
 *     system keeps port ids unique and the server reads the sender's port from its address;
 *   - autobind (bind with nl_pid 0, connect, or a first send) takes the process's tgid when
 *     free, else -4096, -4097, ...; a name whose socket nobody listens on (connect() gives
 *     ECONNREFUSED) is stale: it is unlinked and taken;
 *   - a bound port's file is made 0666: the server (maybe another user) must connect to it.
 *
 * When the server is not running its ports directory does not exist. The kernel's bind
 * cannot fail for that reason, so bind records the port and succeeds; the real bind is tried
 * again on the first send, which fails with ECONNREFUSED while there still is no server, the
 * way a send to a netlink port nobody holds fails.
 *
 * Who the server is: the user owning the server's socket file, as lstat sees it when the
 * socket is made (or, when there is no server yet, once there is: at bind or at the first
 * receive). Only datagrams whose kernel-attached credentials carry that uid are taken (io.c).
 */
#include "shim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>

#define PORTS_SUFFIX ".ports"
#define AUTOBIND_START (-4096)
#define AUTOBIND_TRIES 65536

/* Room for "<server>.ports/-2147483648". */
#define PORT_NAME_ROOM (sizeof PORTS_SUFFIX - 1 + 1 + 11)

void emu_say_line(const char *prefix, const char *fmt, va_list ap)
{
    char line[512];
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* write(2) directly: stdio may be mid-use in the program, and this must stay one line. */
    ssize_t ignored = real_write(2, prefix, strlen(prefix));
    ignored = real_write(2, line, (size_t)n);
    (void)ignored;
}

void shim_hint(const char *fmt, ...)
{
    const char *debug = getenv("TSEMU_DEBUG");
    if (!debug || !*debug)
        return;
    va_list ap;
    va_start(ap, fmt);
    emu_say_line("tsemu-shim: ", fmt, ap);
    va_end(ap);
}

/* The hint for a missing server, once per process: a client retrying would repeat it. */
void shim_no_server(const char *server)
{
    static atomic_int said;
    if (!atomic_exchange(&said, 1))
        shim_hint("no tsemu server at %s (start one with `tsemu serve`, or set TSEMU_SOCKET "
                  "to its socket)", server);
}

/* Datagrams dropped because they were not the server's: said once as they begin (with
 * TSEMU_DEBUG), counted, and the count said at exit (shim_report, from state.c). */
static atomic_ulong foreign;

void shim_foreign(uid_t uid, pid_t pid, uid_t server_uid)
{
    if (atomic_fetch_add(&foreign, 1) == 0)
        shim_hint("dropped a datagram from uid %d pid %d: only the server's user (uid %u) is "
                  "heard (more are counted; the count is said at exit)", (int)uid, (int)pid,
                  (unsigned)server_uid);
}

void shim_report(void)
{
    unsigned long dropped = atomic_load(&foreign);
    if (dropped)
        shim_hint("%lu datagram%s dropped: not from the tsemu server's user", dropped,
                  dropped == 1 ? "" : "s");
}

int shim_capable(int cap)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    if (syscall(SYS_capget, &header, data) != 0)
        return 0;
    return (int)((data[cap / 32].effective >> (cap % 32)) & 1);
}

void emu_learn_server(struct emu_sock *es)
{
    /* The socket file's owner. A link (TSEMU_SOCKET naming one) is followed: requests go to
     * the socket it reaches, so that socket's owner is the server. */
    struct stat st;
    if (lstat(es->server, &st) != 0)
        return;
    if (S_ISLNK(st.st_mode) && stat(es->server, &st) != 0)
        return;
    if (!S_ISSOCK(st.st_mode))
        return;
    es->server_uid = st.st_uid;
    es->server_known = 1;
}

int server_path_from_env(char *out, size_t size)
{
    const char *env = getenv("TSEMU_SOCKET");
    char path[4096];
    int n;
    if (env && *env)
        n = snprintf(path, sizeof path, "%s", env);
    else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
        n = snprintf(path, sizeof path, "%s/tsemu/genl.sock", env);
    else
        n = snprintf(path, sizeof path, "/tmp/tsemu-%u/genl.sock", (unsigned)getuid());
    if (n < 0 || (size_t)n >= sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (path[0] != '/') {
        /* A relative path would name another place after the program's next chdir(). */
        char cwd[4096], joined[4096 * 2];
        if (!getcwd(cwd, sizeof cwd))
            return -1;
        snprintf(joined, sizeof joined, "%s/%s", cwd, path);
        n = snprintf(path, sizeof path, "%s", joined);
        if ((size_t)n >= sizeof path) {
            errno = ENAMETOOLONG;
            return -1;
        }
    }
    if ((size_t)n + PORT_NAME_ROOM >= size) {
        shim_hint("server path %s is too long for a Unix socket's port names", path);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(out, path, (size_t)n + 1);
    return 0;
}

int port_path(char *out, size_t size, const char *server, uint32_t port)
{
    int n = snprintf(out, size, "%s" PORTS_SUFFIX "/%d", server, (int32_t)port);
    if (n < 0 || (size_t)n >= size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* Whether `path` is `<server>.ports/<port>`; fills `server` and `port` if so. The name must
 * be a port id as the server would write it: a signed decimal, no sign on zero, no padding. */
int port_from_path(const char *path, char *server, size_t size, uint32_t *port)
{
    const char *slash = strrchr(path, '/');
    size_t suffix = sizeof PORTS_SUFFIX - 1;
    if (!slash || (size_t)(slash - path) <= suffix ||
        memcmp(slash - suffix, PORTS_SUFFIX, suffix) != 0)
        return -1;
    const char *name = slash + 1;
    char *end;
    errno = 0;
    long long value = strtoll(name, &end, 10);
    if (errno || *end || end == name || value == 0 || value < INT32_MIN || value > INT32_MAX)
        return -1;
    char canonical[16];
    snprintf(canonical, sizeof canonical, "%lld", value);
    if (strcmp(canonical, name) != 0)
        return -1;
    size_t dirlen = (size_t)(slash - path) - suffix;
    if (dirlen + 1 > size)
        return -1;
    memcpy(server, path, dirlen);
    server[dirlen] = '\0';
    *port = (uint32_t)(int32_t)value;
    return 0;
}

static int unix_address(struct sockaddr_un *sun, const char *path)
{
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun->sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sun->sun_path, path);
    return 0;
}

/* Whether the socket file at `path` has a live socket behind it (-1: cannot tell). */
static int is_stale(const char *path)
{
    struct sockaddr_un sun;
    if (unix_address(&sun, path))
        return -1;
    int probe = real_socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return -1;
    int rc = real_connect(probe, (struct sockaddr *)&sun, sizeof sun);
    int err = errno;
    real_close(probe);
    if (rc == 0)
        return 0;
    return err == ECONNREFUSED || err == ENOENT ? 1 : -1;
}

void emu_release_port(const char *server, uint32_t port)
{
    /* Called once this process's last descriptor for the socket is closed. A forked child
     * or an exec'd program may still hold the socket: unlink only a name nobody listens on. */
    char path[sizeof((struct sockaddr_un *)0)->sun_path];
    if (port_path(path, sizeof path, server, port) == 0 && is_stale(path) == 1)
        unlink(path);
}

/* Bind the Unix socket to port's file. 0: bound; 1: the server's ports directory does not
 * exist (no server): nothing bound; -1: errno (EADDRINUSE when a live socket has it). */
static int bind_name(int fd, const char *server, uint32_t port)
{
    char path[sizeof((struct sockaddr_un *)0)->sun_path];
    struct sockaddr_un sun;
    if (port_path(path, sizeof path, server, port) || unix_address(&sun, path))
        return -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (real_bind(fd, (struct sockaddr *)&sun, sizeof sun) == 0) {
            /* Connecting needs write permission on the file, and the server may be another
             * user (a container's): 0666, as emulator/shell/addressing.py says. The ports
             * directory is sticky: nobody else can put another file under this name. */
            chmod(path, 0666);
            return 0;
        }
        if (errno == ENOENT || errno == ENOTDIR)
            return 1;
        if (errno != EADDRINUSE || attempt)
            return -1;
        if (is_stale(path) != 1) {
            errno = EADDRINUSE;
            return -1;
        }
        unlink(path); /* its process died without closing it: take the name over */
    }
    return -1;
}

int emu_bind_port(struct emu_sock *es, int fd, uint32_t port)
{
    int rc = bind_name(fd, es->server, port);
    if (rc < 0)
        return -1;
    es->port = port;
    es->bound = rc == 0;
    es->autobound = 0;
    if (es->bound && !es->server_known)
        emu_learn_server(es);
    if (es->bound)
        emu_send_options(es, fd);
    else
        shim_no_server(es->server);
    return 0;
}

/* Whose tgid autobind tries first: 0 is this process (the shim); the supervisor
 * (supervisor/) sets it to the client process it is answering for. */
pid_t emu_client_tgid;

int emu_autobind(struct emu_sock *es, int fd)
{
    int32_t candidate = (int32_t)(emu_client_tgid ? emu_client_tgid : getpid());
    for (int i = 0; i < AUTOBIND_TRIES; i++) {
        if (i > 0)
            candidate = AUTOBIND_START - (i - 1);
        /* Without a server nothing on disk says which ids this process already took. */
        if (es->port != (uint32_t)candidate && emu_owns_port((uint32_t)candidate))
            continue;
        int rc = bind_name(fd, es->server, (uint32_t)candidate);
        if (rc < 0 && errno == EADDRINUSE)
            continue;
        if (rc < 0)
            return -1;
        es->port = (uint32_t)candidate;
        es->bound = rc == 0;
        es->autobound = 1;
        if (es->bound && !es->server_known)
            emu_learn_server(es);
        if (es->bound)
            emu_send_options(es, fd);
        else
            shim_no_server(es->server);
        return 0;
    }
    errno = EADDRINUSE;
    return -1;
}

int emu_ensure_bound(struct emu_sock *es, int fd)
{
    if (es->bound)
        return 0;
    int rc;
    if (es->port && !es->autobound) {
        rc = bind_name(fd, es->server, es->port);
        if (rc == 0) {
            es->bound = 1;
            if (!es->server_known)
                emu_learn_server(es);
            emu_send_options(es, fd);
        }
    } else {
        rc = emu_autobind(es, fd);
        if (rc == 0 && !es->bound)
            rc = 1;
    }
    if (rc == 1) {
        shim_no_server(es->server);
        errno = ECONNREFUSED;
        return -1;
    }
    return rc;
}

void emu_control_encode(unsigned char msg[CTL_SIZE], int op, int option, int64_t value)
{
    static const unsigned char head[8] = {0, 0, 0, 0, 't', 's', 'E', 'M'};
    uint16_t op16 = (uint16_t)op, opt16 = (uint16_t)option;
    memset(msg, 0, CTL_SIZE);
    memcpy(msg, head, sizeof head);
    memcpy(msg + 8, &op16, 2); /* little-endian: x86_64 and every other Linux target tsemu
                                  runs on; the server decodes little-endian */
    memcpy(msg + 10, &opt16, 2);
    memcpy(msg + 16, &value, 8);
}

int emu_seen_from_server(int fd, const char *server, int64_t about)
{
    unsigned char reply[CTL_SIZE];
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(struct ucred))];
    } control;
    struct iovec iov = {reply, sizeof reply};
    struct msghdr in = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                        .msg_controllen = sizeof control.buf};
    if (real_recvmsg(fd, &in, MSG_DONTWAIT | EMU_UNTRAPPED) != CTL_SIZE)
        return 0;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&in);
    struct ucred cred;
    if (!cm || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_CREDENTIALS ||
        cm->cmsg_len < CMSG_LEN(sizeof cred))
        return 0;
    memcpy(&cred, CMSG_DATA(cm), sizeof cred);
    unsigned char expected[CTL_SIZE];
    emu_control_encode(expected, CTL_OP_SEEN, 0, about);
    uint16_t option;
    memcpy(&option, reply + 10, 2);
    /* The header, the op and the value must be the SEEN's (its option says what was taken). */
    if (memcmp(reply, expected, 10) != 0 || memcmp(reply + 16, expected + 16, 8) != 0)
        return 0;
    struct stat st;
    if (lstat(server, &st) != 0)
        return 0;
    if (S_ISLNK(st.st_mode) && stat(server, &st) != 0)
        return 0;
    return S_ISSOCK(st.st_mode) && cred.uid == st.st_uid;
}

void emu_send_control(struct emu_sock *es, int fd, int option, int64_t value)
{
    if (!es->bound)
        return; /* sent by emu_send_options once bound: the server only hears named ports */
    unsigned char msg[CTL_SIZE];
    emu_control_encode(msg, CTL_OP_SETOPT, option, value);
    struct sockaddr_un sun;
    if (unix_address(&sun, es->server))
        return;
    /* With no server there is nobody to tell (the next bind tells again). A server whose
     * queue is full (net.unix.max_dgram_qlen datagrams) is busy, not gone: wait for room, as
     * io.c does for requests, or the option would be lost silently. Bounded at about 2 s so
     * that a stuck server cannot hang a setsockopt for ever. */
    for (int tries = 0; tries < 10000; tries++) {
        if (real_sendto(fd, msg, sizeof msg, MSG_DONTWAIT | MSG_NOSIGNAL | EMU_UNTRAPPED,
                        (struct sockaddr *)&sun, sizeof sun) >= 0 ||
            (errno != EAGAIN && errno != EWOULDBLOCK))
            return;
        struct timespec pause = {0, 200 * 1000};
        nanosleep(&pause, NULL);
    }
}

void emu_send_options(struct emu_sock *es, int fd)
{
    if (es->rcvbuf_set)
        emu_send_control(es, fd, CTL_OPT_RCVBUF, es->rcvbuf);
    if (es->cap_ack)
        emu_send_control(es, fd, CTL_OPT_CAP_ACK, 1);
    if (es->ext_ack)
        emu_send_control(es, fd, CTL_OPT_EXT_ACK, 1);
    if (es->no_enobufs)
        emu_send_control(es, fd, CTL_OPT_NO_ENOBUFS, 1);
}
