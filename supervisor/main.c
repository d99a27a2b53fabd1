/*
 * tsemu-run's entry point: the command line, the child, its seccomp filter, and handing the
 * filter's listener over to this process.
 *
 * The child: PR_SET_NO_NEW_PRIVS (needed to install a filter without privilege; it also
 * means set-user-id programs the client starts run with the client's rights), then the
 * filter with SECCOMP_FILTER_FLAG_NEW_LISTENER (and WAIT_KILLABLE_RECV where the kernel has
 * it: once this process has read a notification, only a fatal signal interrupts the call, so
 * an emulated sendmsg interrupted by one of Go's constant SIGURGs is not restarted and sent a
 * second time). The listener comes back here through a pipe that carries its number and
 * pidfd_getfd, never sendmsg (trapped by the filter just installed); the child closes its copy
 * and execs. An exec that fails is reported through a close-on-exec pipe (127: not found,
 * 126: not executable).
 *
 * The filter (x86_64 only): a system call of another ABI (i386 `int 0x80`, x32) kills the
 * process (SIGSYS): its socket calls would slip past the rules below, and "never the host by
 * accident" comes first. socket() is trapped only for AF_NETLINK with protocol
 * NETLINK_GENERIC (the arguments are checked in the filter, every other socket() stays
 * native); the address- and option-carrying socket calls are trapped whatever their
 * descriptor, and answered CONTINUE for descriptors that are not emulated sockets.
 */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
#ifndef __X32_SYSCALL_BIT
#define __X32_SYSCALL_BIT 0x40000000
#endif

static const char usage[] =
    "usage: tsemu-run [--socket PATH] [--proc emulated|host] [--debug] -- CMD [ARGS...]\n"
    "Runs CMD with its generic-netlink sockets answered by the tsemu server at PATH\n"
    "(default: $TSEMU_SOCKET, else $XDG_RUNTIME_DIR/tsemu/genl.sock, else\n"
    "/tmp/tsemu-UID/genl.sock), whether CMD reaches the kernel through libc or not.\n"
    "--proc emulated (the default): paths under /proc are answered from the server's\n"
    "/proc view ($TSEMU_PROC_VIEW, else PATH.proc) when it publishes one.\n"
    "`tsemu-run --check` exits 0 when this kernel can run the supervisor.\n";

#define TRAPPED_CALLS                                                                        \
    X(bind) X(connect) X(getsockname) X(getpeername) X(sendto) X(sendmsg) X(sendmmsg)        \
    X(recvfrom) X(recvmsg) X(recvmmsg) X(setsockopt) X(getsockopt)

#define LOAD(field) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, field))
#define RET(value) BPF_STMT(BPF_RET | BPF_K, value)

/* The filter's program: the ABI check, socket() by its arguments, the socket calls, and with
 * a /proc view the path calls that may name /proc (proc.c). */
static int install_filter(unsigned int flags)
{
    /* Argument words: the low 32 bits of args[i] (x86_64 is little-endian); socket()'s
     * arguments are ints, so the high half does not matter to the kernel either. */
    enum { ARG0 = offsetof(struct seccomp_data, args[0]),
           ARG2 = offsetof(struct seccomp_data, args[2]) };
    static const int trapped[] = {
#define X(name) SYS_##name,
        TRAPPED_CALLS
#undef X
    };
    static const int path_calls[] = {SYS_open,     SYS_openat,     SYS_openat2,  SYS_stat,
                                     SYS_lstat,    SYS_newfstatat, SYS_statx,    SYS_readlink,
                                     SYS_readlinkat, SYS_access,   SYS_faccessat, SYS_faccessat2,
                                     SYS_chdir,    SYS_fchdir};
    struct sock_filter code[96];
    unsigned short n = 0;
    struct sock_filter head[] = {
        LOAD(arch),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        RET(SECCOMP_RET_KILL_PROCESS),
        LOAD(nr),
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 3),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0xffffffffU, 0, 1), /* syscall(-1): ENOSYS */
        RET(SECCOMP_RET_ALLOW),
        RET(SECCOMP_RET_KILL_PROCESS),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 0, 6), /* no: to the list */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_NETLINK, 0, 2),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG2),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TSEMU_NETLINK_GENERIC, 1, 0),
        RET(SECCOMP_RET_ALLOW),
        RET(SECCOMP_RET_USER_NOTIF),
    };
    memcpy(code, head, sizeof head);
    n = sizeof head / sizeof head[0];
    /* sendmsg/recvmsg with MSG_OOB: the kernel answers them alike on a Unix datagram socket
     * and on a netlink one (the msghdr's checks, then EOPNOTSUPP, nothing sent or taken), so
     * they need no round trip here. The shim makes such "dry runs" before each msghdr call:
     * under `--via auto` they stay untrapped. So do the calls that carry EMU_UNTRAPPED
     * (shim.h: a flags bit a Unix datagram socket ignores), which the shim sets on its own
     * calls on its own Unix sockets. No netlink socket reaches the host kernel through them:
     * socket(AF_NETLINK, *, NETLINK_GENERIC) is always trapped, so the only such sockets a
     * supervised program holds are the Unix sockets made here, which the bit leaves Unix
     * sockets (a program that sets it on one talks to it as the Unix socket it is). */
    enum { ARG3 = offsetof(struct seccomp_data, args[3]) };
    struct sock_filter untrapped[] = {
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendmsg, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_recvmsg, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG2), /* their flags */
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, MSG_OOB | EMU_UNTRAPPED, 0, 1),
        RET(SECCOMP_RET_ALLOW),
        LOAD(nr), /* back to the number */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendto, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_recvfrom, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG3), /* their flags */
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, EMU_UNTRAPPED, 0, 1),
        RET(SECCOMP_RET_ALLOW),
        LOAD(nr), /* back to the number, for the list */
    };
    memcpy(code + n, untrapped, sizeof untrapped);
    n += sizeof untrapped / sizeof untrapped[0];
    for (size_t i = 0; i < sizeof trapped / sizeof trapped[0]; i++) {
        code[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)trapped[i],
                                                 0, 1);
        code[n++] = (struct sock_filter)RET(SECCOMP_RET_USER_NOTIF);
    }
    for (size_t i = 0; sv_proc_enabled() && i < sizeof path_calls / sizeof path_calls[0]; i++) {
        code[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                                 (unsigned)path_calls[i], 0, 1);
        code[n++] = (struct sock_filter)RET(SECCOMP_RET_USER_NOTIF);
    }
    code[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {n, code};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static int install(void)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    int fd = install_filter(SECCOMP_FILTER_FLAG_NEW_LISTENER |
                            SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
    if (fd < 0 && errno == EINVAL) /* before 5.19 */
        fd = install_filter(SECCOMP_FILTER_FLAG_NEW_LISTENER);
    return fd;
}

/* Whether this kernel lets us supervise: a filter with a listener, ADDFD's SEND flag (5.14),
 * pidfd_getfd (5.6). Tried in a throw-away child, whose filter dies with it. */
static int check_kernel(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        int fd = install();
        if (fd < 0)
            _exit(2);
        struct seccomp_notif_addfd probe;
        memset(&probe, 0, sizeof probe);
        probe.id = 1;
        probe.flags = SECCOMP_ADDFD_FLAG_SEND;
        probe.srcfd = (unsigned)fd;
        /* An unknown id is ENOENT; a kernel without the flag says EINVAL. */
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_ADDFD, &probe) == 0 || errno != ENOENT)
            _exit(3);
        if (syscall(SYS_pidfd_getfd, -1, 0, 0) == 0 || errno == ENOSYS)
            _exit(4);
        /* Allowed, the call fails on the descriptor (EBADF); refused by a seccomp profile
         * (Docker's default without CAP_SYS_PTRACE), it is EPERM: no run could take the
         * listener, nor a caller's descriptor. */
        if (errno != EBADF)
            _exit(5);
        _exit(0);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static void child(int report, int go, int failed, char **argv)
{
    int fd = install();
    if (fd < 0) {
        int err = errno;
        ssize_t ignored = write(failed, &err, sizeof err);
        (void)ignored;
        _exit(125);
    }
    char byte = 0;
    if (write(report, &fd, sizeof fd) != sizeof fd || read(go, &byte, 1) != 1)
        _exit(125);
    close(fd);
    close(report);
    close(go);
    execvp(argv[0], argv);
    int err = errno;
    ssize_t ignored = write(failed, &err, sizeof err);
    (void)ignored;
    _exit(err == ENOENT ? 127 : 126);
}

/* The /proc view to answer from: $TSEMU_PROC_VIEW, else the server's PATH.proc. */
static void find_view(void)
{
    const char *named = getenv("TSEMU_PROC_VIEW");
    if (named && *named) {
        if (sv_proc_setup(named) != 0)
            sv_say("TSEMU_PROC_VIEW=%s is not a tsemu /proc view: /proc stays the host's", named);
        return;
    }
    char server[sizeof(((struct sockaddr_un *)0)->sun_path)], dir[sizeof server + 8];
    if (server_path_from_env(server, sizeof server) == 0) {
        snprintf(dir, sizeof dir, "%s.proc", server);
        sv_proc_setup(dir);
    }
}

int main(int argc, char **argv)
{
    int i = 1, proc_host = 0;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
            setenv("TSEMU_SOCKET", argv[++i], 1);
        } else if (strncmp(argv[i], "--socket=", 9) == 0) {
            setenv("TSEMU_SOCKET", argv[i] + 9, 1);
        } else if (strcmp(argv[i], "--proc") == 0 && i + 1 < argc) {
            proc_host = strcmp(argv[++i], "host") == 0;
        } else if (strcmp(argv[i], "--debug") == 0) {
            sv_debug = 1;
        } else if (strcmp(argv[i], "--check") == 0) {
            int rc = check_kernel();
            if (rc)
                fprintf(stderr, "tsemu-run: this kernel cannot run the supervisor (%s)\n",
                        rc == 2 ? "no seccomp user notification"
                        : rc == 3 ? "no SECCOMP_ADDFD_FLAG_SEND: Linux 5.14 or newer is needed"
                        : rc == 4 ? "no pidfd_getfd: Linux 5.6 or newer is needed"
                        : rc == 5 ? "pidfd_getfd is refused: a seccomp profile (Docker's "
                                    "default: run the container with --cap-add SYS_PTRACE)"
                                  : "the probe failed");
            return rc ? 1 : 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else {
            break;
        }
    }
    if (i >= argc) {
        fputs(usage, stderr);
        return 2;
    }
    if (getenv("TSEMU_DEBUG") && *getenv("TSEMU_DEBUG"))
        sv_debug = 1;
    char **command = argv + i;
    if (!proc_host)
        find_view();

    int report[2], go[2], failed[2];
    if (pipe2(report, O_CLOEXEC) || pipe2(go, O_CLOEXEC) || pipe2(failed, O_CLOEXEC)) {
        perror("tsemu-run: pipe");
        return 125;
    }
    sv_catch_signals();
    pid_t pid = fork();
    if (pid < 0) {
        perror("tsemu-run: fork");
        return 125;
    }
    if (pid == 0)
        child(report[1], go[0], failed[1], command);
    close(report[1]);
    close(go[0]);
    close(failed[1]);

    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int remote = -1;
    ssize_t got = read(report[0], &remote, sizeof remote);
    if (got == sizeof remote && pidfd >= 0)
        sv_listener = (int)syscall(SYS_pidfd_getfd, pidfd, remote, 0);
    if (got == sizeof remote && sv_listener < 0) {
        int err = errno;
        fprintf(stderr, "tsemu-run: cannot take the seccomp listener from the child: %s%s\n",
                strerror(err), err == EPERM ? " (pidfd_getfd refused by a seccomp profile? "
                                              "Docker's default: --cap-add SYS_PTRACE)" : "");
        kill(pid, SIGKILL); /* never let it run unsupervised */
    } else if (got == sizeof remote) {
        fcntl(sv_listener, F_SETFD, FD_CLOEXEC);
        char byte = 1;
        if (write(go[1], &byte, 1) != 1)
            kill(pid, SIGKILL);
    }
    close(report[0]);
    close(go[1]);
    int err = 0;
    if (read(failed[0], &err, sizeof err) == sizeof err && err) {
        fprintf(stderr, "tsemu-run: %s: %s\n", command[0],
                got != sizeof remote ? "cannot install the seccomp filter" : strerror(err));
        if (got != sizeof remote)
            fprintf(stderr, "tsemu-run: %s\n", strerror(err));
    }
    close(failed[0]);

    int status = sv_loop(pid, pidfd);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 125;
}
