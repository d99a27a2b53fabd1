/*
 * The client's own processes are part of the emulated machine: their exits are broadcast.
 *
 * A real kernel sends a process's exit records to the listeners of its CPU as it dies. tsemu
 * learns of a real process's death from its parent: when a process of a client family
 * (TSEMU_ROOT is set: `tsemu run` or the pytest fixture registered the family's root) waits
 * for a child, the wrappers below first look at the child with waitid(WNOWAIT), which leaves
 * it a zombie, tell the server "my child PID has exited" (ControlOp EXITED) and wait for the
 * server's answer (SEEN): the server reads the zombie's /proc entry, still there because it
 * is not reaped, and broadcasts its records. Only then is the child reaped, by the wait the
 * caller asked for, narrowed to that child so that the child reported is the child reaped.
 * A process's first second thread is told too (THREADED), so that its group exit carries an
 * AGGR_TGID record as the kernel's does.
 *
 * Everything here uses system calls only (socket, bind, sendto, poll, recv, unlink, close):
 * a SIGCHLD handler that calls waitpid() is common, and must not meet a lock or malloc. The
 * notice socket is bound in the server's ports directory under a negative port id (as
 * autobind names them) and removed at once; nothing else of the shim's state is touched.
 * The server trusts the notice only as far as it can check it: the sender's credentials
 * (SO_PASSCRED) must be the zombie's parent, in a registered family, of the same user. The
 * answer is judged as every datagram a shim socket takes (io.c): the notice socket's name is
 * in a directory everyone may write, so a SEEN counts only when the kernel's credentials say
 * it comes from the server socket file's owner.
 */
#include "shim.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How long a notice waits for the server's answer before the wait goes on without it. */
#define NOTICE_TIMEOUT_MS 2000

static pid_t (*real_waitpid)(pid_t, int *, int);
static pid_t (*real_wait4)(pid_t, int *, int, struct rusage *);
static int (*real_waitid)(idtype_t, id_t, siginfo_t *, int);
static int (*real_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *),
                                  void *);

/* The server's socket, when this process belongs to a client family; "" otherwise. */
static char family_server[sizeof(((struct sockaddr_un *)0)->sun_path)];
static atomic_int threaded_told;

static void resolve_exits(void)
{
    if (real_waitid)
        return;
    *(void **)&real_waitpid = dlsym(RTLD_NEXT, "waitpid");
    *(void **)&real_wait4 = dlsym(RTLD_NEXT, "wait4");
    *(void **)&real_pthread_create = dlsym(RTLD_NEXT, "pthread_create");
    *(void **)&real_waitid = dlsym(RTLD_NEXT, "waitid");
}

static void forget_thread_notice(void)
{
    atomic_store(&threaded_told, 0); /* a forked child is single-threaded again */
}

__attribute__((constructor)) static void exits_init(void)
{
    resolve_exits();
    const char *root = getenv("TSEMU_ROOT");
    if (root && *root && server_path_from_env(family_server, sizeof family_server) != 0)
        family_server[0] = '\0';
    if (!root || !*root)
        family_server[0] = '\0';
    pthread_atfork(NULL, NULL, forget_thread_notice);
}

/* Decimal digits of `value` (which may be negative) at `out`; returns the end. */
static char *put_int(char *out, long value)
{
    char digits[24];
    int n = 0;
    unsigned long magnitude = value < 0 ? (unsigned long)-value : (unsigned long)value;
    do {
        digits[n++] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (value < 0)
        *out++ = '-';
    while (n)
        *out++ = digits[--n];
    *out = '\0';
    return out;
}

/* Send one control datagram and wait for the server's SEEN about `about`; 0 when it came. */
static int tell_server(int op, long about)
{
    if (!family_server[0])
        return -1;
    shim_resolve();
    int saved = errno;
    int fd = real_socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || real_setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
        if (fd >= 0)
            real_close(fd);
        errno = saved;
        return -1;
    }
    struct sockaddr_un me = {.sun_family = AF_UNIX};
    size_t base = strlen(family_server);
    if (base + 24 >= sizeof me.sun_path) {
        real_close(fd);
        errno = saved;
        return -1;
    }
    memcpy(me.sun_path, family_server, base);
    memcpy(me.sun_path + base, ".ports/", 7);
    char *name = me.sun_path + base + 7;
    /* A negative port id as autobind names them, spread by thread id so that two notices
     * rarely meet; a taken name (live or stale) is skipped, never taken over. */
    long start = -4096 - (long)(syscall(SYS_gettid) % 60000);
    int bound = -1;
    for (long port = start; port > start - 4096 && bound < 0; port--) {
        put_int(name, port);
        bound = real_bind(fd, (struct sockaddr *)&me, sizeof me);
        if (bound < 0 && errno != EADDRINUSE)
            break;
    }
    int result = -1;
    if (bound == 0) {
        unsigned char msg[CTL_SIZE];
        emu_control_encode(msg, op, 0, about);
        struct sockaddr_un server = {.sun_family = AF_UNIX};
        memcpy(server.sun_path, family_server, base);
        if (real_sendto(fd, msg, sizeof msg, EMU_UNTRAPPED, (struct sockaddr *)&server,
                        sizeof server) ==
            (ssize_t)sizeof msg) {
            struct timespec until, now;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += NOTICE_TIMEOUT_MS / 1000;
            for (;;) {
                clock_gettime(CLOCK_MONOTONIC, &now);
                long left = (until.tv_sec - now.tv_sec) * 1000 +
                            (until.tv_nsec - now.tv_nsec) / 1000000;
                struct pollfd p = {.fd = fd, .events = POLLIN};
                if (left <= 0 || poll(&p, 1, (int)left) <= 0)
                    break;
                if (emu_seen_from_server(fd, family_server, about)) {
                    result = 0;
                    break;
                }
            }
        }
        unlink(me.sun_path);
    }
    real_close(fd);
    errno = saved;
    return result;
}

/* The idtype and id of waitid() that waits for what waitpid(pid) waits for. */
static void wait_target(pid_t pid, idtype_t *idtype, id_t *id)
{
    if (pid > 0) {
        *idtype = P_PID;
        *id = (id_t)pid;
    } else if (pid == -1) {
        *idtype = P_ALL;
        *id = 0;
    } else {
        *idtype = P_PGID;
        *id = (id_t)(pid == 0 ? getpgid(0) : -pid);
    }
}

/*
 * Before a wait that would reap: wait (as the caller asked: blocking or not) for the same
 * children without reaping, and if one of them has exited, report it. Returns the child the
 * real wait must then be narrowed to; 0 when nothing is ready (WNOHANG); -1 with errno when
 * the look itself failed (ECHILD, EINTR: the caller's wait would have failed alike).
 */
static pid_t look_before_reaping(idtype_t idtype, id_t id, int waitid_options)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (real_waitid(idtype, id, &info, waitid_options | WNOWAIT) < 0)
        return -1;
    if (info.si_pid == 0)
        return 0;
    if (info.si_code == CLD_EXITED || info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED)
        tell_server(CTL_OP_EXITED, info.si_pid);
    return info.si_pid;
}

/* waitpid()'s options as waitid() spells them (WUNTRACED is WSTOPPED). */
static int as_waitid_options(int options)
{
    return WEXITED | (options & (WNOHANG | WUNTRACED | WCONTINUED | __WALL | __WCLONE |
                                 __WNOTHREAD));
}

pid_t wait4(pid_t pid, int *status, int options, struct rusage *usage)
{
    resolve_exits();
    if (family_server[0]) {
        idtype_t idtype;
        id_t id;
        wait_target(pid, &idtype, &id);
        pid_t child = look_before_reaping(idtype, id, as_waitid_options(options));
        if (child < 0)
            return -1;
        if (child == 0)
            return 0; /* WNOHANG, nothing ready */
        pid = child;
    }
    return real_wait4(pid, status, options, usage);
}

pid_t waitpid(pid_t pid, int *status, int options)
{
    return wait4(pid, status, options, NULL);
}

pid_t wait(int *status)
{
    return wait4(-1, status, 0, NULL);
}

pid_t wait3(int *status, int options, struct rusage *usage)
{
    return wait4(-1, status, options, usage);
}

int waitid(idtype_t idtype, id_t id, siginfo_t *info, int options)
{
    resolve_exits();
    if (family_server[0] && (options & WEXITED) && !(options & WNOWAIT)) {
        pid_t child = look_before_reaping(idtype, id, options);
        if (child < 0)
            return -1;
        if (child == 0) { /* WNOHANG, nothing ready: as waitid reports it */
            if (info)
                memset(info, 0, sizeof *info);
            return 0;
        }
        idtype = P_PID;
        id = (id_t)child;
    }
    return real_waitid(idtype, id, info, options);
}

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *),
                   void *arg)
{
    resolve_exits();
    int err = real_pthread_create(thread, attr, start, arg);
    if (err == 0 && family_server[0] && !atomic_exchange(&threaded_told, 1))
        tell_server(CTL_OP_THREADED, (long)getpid());
    return err;
}
