/*
 * tsemu-run: the seccomp user-notification supervisor, shared declarations.
 *
 * `tsemu-run [--socket PATH] -- CMD [ARGS...]` reaches clients the LD_PRELOAD shim cannot:
 * Go programs (which make their system calls themselves), static binaries, raw syscall(2).
 * The child installs a seccomp filter before exec that hands the socket calls to this
 * process (SECCOMP_RET_USER_NOTIF); this process answers them:
 *
 *   - socket(AF_NETLINK, SOCK_RAW|SOCK_DGRAM, NETLINK_GENERIC): an AF_UNIX datagram socket is
 *     made here and injected into the caller (SECCOMP_IOCTL_NOTIF_ADDFD with
 *     SECCOMP_ADDFD_FLAG_SEND: installed at the lowest free descriptor and returned as the
 *     call's result in one step). From then on fcntl, epoll, poll, close, dup, fork and exec
 *     are the kernel's own, on a real socket;
 *   - the calls that carry netlink addresses or options (bind, connect, getsockname,
 *     getpeername, sendto, sendmsg, sendmmsg, recvfrom, recvmsg, recvmmsg, setsockopt,
 *     getsockopt): on a descriptor that is one of those sockets (recognised by its inode,
 *     through a copy of the caller's descriptor taken with pidfd_getfd: robust across dup,
 *     fork, exec and close) they are done here on that copy, the caller's memory read and
 *     written with process_vm_readv/writev; on any other descriptor they get CONTINUE (the
 *     kernel does them as if nothing had trapped them).
 *
 * The netlink rules are the shim's own code, compiled in: addressing (shim/addr.c), send and
 * receive (io.c), socket, bind, connect and names (naming.c), options (options.c), the
 * caller's memory (usermem.c); they are given the caller as a struct caller_mem (sv_mem).
 * calls.c keeps the supervisor's own part (see README.md for what differs).
 *
 * With a /proc view, the path calls (open, openat, openat2, the stat family, statx, readlink,
 * readlinkat, access, faccessat, faccessat2) are trapped too, and paths under /proc are
 * answered from the view by the shim's own rules (proc.c, shim/procroute.c).
 *
 * Files: main.c (arguments, the child, the filter, the listener's hand-over, waiting),
 * loop.c (the event loop: notifications, parked receives, signals), calls.c (the trapped
 * socket calls: their arguments, the caller's structures, parking), glue.c (what the shim's
 * rule files need from the shim: libc's own functions, the table of sockets).
 */
#ifndef TSEMU_SUPERVISOR_H
#define TSEMU_SUPERVISOR_H

#define _GNU_SOURCE
#include "../shim/shim.h"

#include <linux/seccomp.h>
#include <poll.h>
#include <stdint.h>
#include <sys/types.h>

/* One emulated socket, known by its inode (the same for every descriptor and process that
 * holds it). The supervisor keeps no descriptor of its own: the socket lives as long as
 * the client holds it, so its port file's liveness stays the client's. */
struct sv_sock {
    ino_t ino;
    struct emu_sock es; /* the shim's state: port, options, the server's path and owner */
    struct sv_sock *next;
};

struct sv_sock *sv_find(ino_t ino);
struct sv_sock *sv_add(ino_t ino, int type, const char *server);

/* The caller of one trapped system call. */
struct caller {
    uint64_t id;   /* the notification's id */
    pid_t tid;     /* the thread that made the call (what notifications name) */
    pid_t tgid;    /* its process: autobind's first candidate, credentials */
    int pidfd;     /* a pidfd of tid (cached: see loop.c) */
};

/* ---- loop.c ---- */
extern int sv_listener;
extern int sv_debug;
void sv_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* /proc/ID/NAME (status, stat) read whole into `text` (NUL-terminated, cut at size - 1):
 * its length, or -1 when it cannot be read (the task is gone). */
ssize_t sv_read_proc(unsigned long id, const char *name, char *text, size_t size);
int sv_valid(uint64_t id);             /* the notification is still pending */
int sv_reply(uint64_t id, int64_t val, int err);
/* Answer the call with a copy of our `fd` at the caller's lowest free descriptor (ADDFD with
 * SEND, as the call's own result; O_CLOEXEC if `cloexec`); `fd` is closed. The descriptor
 * number, or -1 (the call then answered with the error, unless the caller is gone). */
int sv_inject(uint64_t id, int fd, int cloexec);
int sv_continue(uint64_t id);
int sv_loop(pid_t child, int child_pidfd); /* returns the child's wait status */
void sv_catch_signals(void);               /* before the fork: TERM, HUP, CHLD */
struct caller *sv_caller(uint64_t id, pid_t tid, int fresh); /* fresh: reopen its pidfd */

/* ---- calls.c ---- */
/* What became of a trapped call. */
enum outcome { DONE, PARKED };
/* A trapped call: answered (a reply sent) or parked (a receive waiting for data; calls.c
 * keeps it and sv_retry_parked answers it later). */
enum outcome sv_handle(struct caller *c, const struct seccomp_data *d);
/* Parked receives: their descriptors to poll (filled into fds, at most max; returns how
 * many), the earliest deadline (ms, -1 none), and a pass over those that are ready. */
int sv_parked_fds(struct pollfd *fds, int max, int *timeout_ms);
void sv_retry_parked(void);
int sv_parked_count(void);

/* ---- proc.c: /proc paths answered from the server's /proc view ---- */
int sv_proc_setup(const char *view); /* 0 when `view` is a tsemu /proc view (marker checked) */
int sv_proc_enabled(void);
int sv_proc_traps(int nr); /* one of the path calls the filter traps with a view */
int sv_proc_handle(struct caller *c, const struct seccomp_data *d); /* 1: answered */

/* The caller as the shim's rules (shim/io.c, naming.c, options.c) see it: its memory (the
 * thread's, through process_vm_readv/writev), its descriptors (copied with pidfd_getfd), the
 * pid its sends claim (calls.c). */
struct caller_mem sv_mem(struct caller *c);
/* A thread's memory, for proc.c: usermem.c's copies with the pid as an argument (calls.c). */
int rm_read(pid_t tid, void *to, uint64_t from, size_t len);        /* 0 or -EFAULT */
int rm_write(pid_t tid, uint64_t to, const void *from, size_t len); /* 0 or -EFAULT */

#endif
