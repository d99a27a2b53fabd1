/*
 * tsemu's LD_PRELOAD shim: shared declarations.
 *
 * The shim turns every AF_NETLINK/NETLINK_GENERIC socket a process creates into a Unix
 * datagram socket talking to a tsemu server, and leaves every other socket alone. The
 * emulated socket IS the Unix socket's descriptor, so poll, select, epoll, O_NONBLOCK,
 * SO_RCVTIMEO and fork need no help: the kernel already does them right on that descriptor.
 * What the shim adds is what a Unix socket cannot say by itself:
 *
 *   - netlink addressing: the socket is bound to `<server>.ports/<port id>`, so the port id
 *     lives in the file system, where the server reads it from every datagram's source;
 *   - destinations: every send goes to the server's path (or to another client's port file);
 *   - what a netlink socket reports: sockaddr_nl names, SO_DOMAIN/SO_TYPE/SO_PROTOCOL, the
 *     emulated SO_RCVBUF, the SOL_NETLINK options (forwarded to the server as control
 *     datagrams, see wire/control.py), ENOBUFS from the server's overrun notice;
 *   - CGROUPSTATS: the descriptor a request names travels to the server with SCM_RIGHTS.
 *
 * Files: real.c (the libc functions we wrap), state.c (the descriptor table, fork and exec),
 * addr.c (paths, binding, control datagrams, who the server is), io.c (send and receive),
 * naming.c (socket, bind, connect, names), options.c (socket options), sockops.c (the
 * wrapped calls: the system call layer's checks, descriptor bookkeeping), usermem.c (the
 * caller's memory, touched only through the kernel). addr.c, cmsg.c, io.c, naming.c,
 * options.c and usermem.c are the supervisor's too (supervisor/): the caller is an argument
 * (struct caller_mem), so they hold one implementation of each rule for both. emulator/addressing.py is the reference for the
 * addressing rules; tsemu/client.py for the conversation with the server.
 */
#ifndef TSEMU_SHIM_H
#define TSEMU_SHIM_H

#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <linux/netlink.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#define TSEMU_NETLINK_GENERIC 16
#ifndef MSG_CMSG_COMPAT
#define MSG_CMSG_COMPAT 0x80000000 /* the kernel's, for 32-bit callers: refused by (rec|se)nd(m)msg */
#endif

/* A flags bit the kernel ignores on a Unix datagram socket (MSG_SYN: a BSD leftover no Linux
 * protocol reads), set on every send and receive the shim makes on its own Unix sockets. The
 * supervisor's seccomp filter lets a sendmsg, recvmsg, sendto or recvfrom that carries it
 * through untrapped (supervisor/main.c): under `tsemu run --via auto` the shim's calls then
 * cost no round trip through the supervisor. */
#define EMU_UNTRAPPED MSG_SYN

/* SOL_NETLINK options (uapi <linux/netlink.h>). */
#define NLO_ADD_MEMBERSHIP 1
#define NLO_DROP_MEMBERSHIP 2
#define NLO_PKTINFO 3
#define NLO_BROADCAST_ERROR 4
#define NLO_NO_ENOBUFS 5
#define NLO_LISTEN_ALL_NSID 8
#define NLO_LIST_MEMBERSHIPS 9
#define NLO_CAP_ACK 10
#define NLO_EXT_ACK 11
#define NLO_GET_STRICT_CHK 12

/* The control datagram (wire/control.py): u32 0, "tsEM", u16 op, u16 option, u32 0, s64. */
#define CTL_SIZE 24
#define CTL_OP_SETOPT 1
#define CTL_OP_ENOBUFS 2
#define CTL_OP_ROOT 3     /* client -> server: this process is a client family's root */
#define CTL_OP_EXITED 4   /* client -> server: my child (a zombie still) has exited */
#define CTL_OP_SEEN 5     /* server -> client: the answer to ROOT, EXITED, THREADED */
#define CTL_OP_THREADED 6 /* client -> server: this process started a second thread */
#define CTL_OPT_RCVBUF 1
#define CTL_OPT_CAP_ACK 2
#define CTL_OPT_EXT_ACK 3
#define CTL_OPT_NO_ENOBUFS 4
#define CTL_OP_BATCH 7   /* server -> client: several netlink messages in one datagram */
#define CTL_OPT_BATCH 5  /* client -> server: this socket unpacks batches */
/* A batch (wire/control.py BATCH_HEADER): the control header with op BATCH, u16 count in
 * `option`, u64 total in `value`, then BATCH_MAX u32 lengths; the messages follow. */
#define BATCH_MAX 32
#define BATCH_HDR (CTL_SIZE + 4 * BATCH_MAX)

/* The emulated kernel's socket-buffer sysctls (tsemu's profiles: rmem_default = rmem_max =
 * wmem_default = wmem_max = 212992) and the kernel's floors (SOCK_MIN_RCVBUF = 2048 +
 * sizeof(struct sk_buff) aligned, SOCK_MIN_SNDBUF twice that). */
#define EMU_RMEM_DEFAULT 212992
#define EMU_RMEM_MAX 212992
#define EMU_WMEM_DEFAULT 212992
#define EMU_WMEM_MAX 212992
#define EMU_MIN_RCVBUF 2304
#define EMU_MIN_SNDBUF 4608

/* One emulated netlink socket. Several descriptors (dup, dup2, fcntl F_DUPFD) share one. */
struct emu_sock {
    pthread_mutex_t lock; /* guards the fields below and serializes receives */
    int refs;             /* descriptors of this process that refer to it (table lock) */
    dev_t dev;            /* identity of the Unix socket: a table entry whose descriptor */
    ino_t ino;            /*   no longer has it was closed behind our back (raw syscall) */
    int type;             /* SOCK_RAW or SOCK_DGRAM, as the client asked */
    char server[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* the server socket path */
    uint32_t port;        /* netlink port id; 0 while unbound */
    int bound;            /* the Unix socket is bound to port's file */
    int autobound;        /* port was chosen by autobind (may be re-chosen if still pending) */
    uint32_t groups;      /* multicast groups 1..32 (bind, ADD_MEMBERSHIP): reported only */
    uint32_t dst_pid;     /* connect(): default destination port (0: the kernel) */
    uint32_t dst_groups;
    int rcvbuf, sndbuf;   /* what getsockopt reports */
    int rcvbuf_set;       /* the client changed SO_RCVBUF: the server must be told */
    int cap_ack, ext_ack, no_enobufs, pktinfo, broadcast_error, listen_all_nsid, strict_chk;
    int passcred;         /* SO_PASSCRED as the application set it (the Unix socket's is on) */
    int groups_allocated; /* a membership was asked once: LIST_MEMBERSHIPS reports 32 groups */
    int sk_err;           /* an error for the next receive (ENOBUFS, recvmmsg's left-over) */
    int batching;         /* 1: the server was told we unpack batches; -1: we cannot (io.c) */
    unsigned batch_count; /* the batch at the head of the Unix queue (0: none), handed out */
    unsigned batch_next;  /*   message by message where it lies: the next one, */
    uint32_t batch_off;   /*   its offset in the datagram (= the socket's SO_PEEK_OFF), */
    uint32_t batch_total; /*   the datagram's length, and each message's */
    uint32_t batch_len[BATCH_MAX];
    uid_t server_uid;     /* the server socket file's owner: only its datagrams are taken */
    int server_known;     /* server_uid is set */
    int in_use;           /* 0: on the free list (structures are recycled, never freed) */
    struct emu_sock *next_all; /* every structure ever made, for fork and port look-ups */
};

/* ---- real.c: the next definitions of the functions we wrap (normally libc's) ---- */
struct msghdr;
struct mmsghdr;
struct timespec;
struct iovec;
extern int (*real_socket)(int, int, int);
extern int (*real_bind)(int, const struct sockaddr *, socklen_t);
extern int (*real_connect)(int, const struct sockaddr *, socklen_t);
extern int (*real_getsockname)(int, struct sockaddr *, socklen_t *);
extern int (*real_getpeername)(int, struct sockaddr *, socklen_t *);
extern ssize_t (*real_send)(int, const void *, size_t, int);
extern ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *,
                              socklen_t);
extern ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
extern int (*real_sendmmsg)(int, struct mmsghdr *, unsigned int, int);
extern ssize_t (*real_recv)(int, void *, size_t, int);
extern ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
extern ssize_t (*real_recvmsg)(int, struct msghdr *, int);
extern int (*real_recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
extern ssize_t (*real_read)(int, void *, size_t);
extern ssize_t (*real_write)(int, const void *, size_t);
extern ssize_t (*real_readv)(int, const struct iovec *, int);
extern ssize_t (*real_writev)(int, const struct iovec *, int);
extern int (*real_close)(int);
extern int (*real_dup)(int);
extern int (*real_dup2)(int, int);
extern int (*real_dup3)(int, int, int);
extern int (*real_fcntl)(int, int, ...);
extern int (*real_fcntl64)(int, int, ...);
extern int (*real_close_range)(unsigned int, unsigned int, int);
extern void (*real_closefrom)(int);
extern int (*real_setsockopt)(int, int, int, const void *, socklen_t);
extern int (*real_getsockopt)(int, int, int, void *, socklen_t *);
extern int (*real_ioctl)(int, unsigned long, ...);
extern ssize_t (*real___recv_chk)(int, void *, size_t, size_t, int);
extern ssize_t (*real___recvfrom_chk)(int, void *, size_t, size_t, int, struct sockaddr *,
                                      socklen_t *);
extern ssize_t (*real___read_chk)(int, void *, size_t, size_t);
void shim_resolve(void);

/* ---- state.c: the descriptor table ---- */
struct emu_sock *emu_get(int fd);               /* NULL when fd is not an emulated socket */
struct emu_sock *emu_new(int fd, int type, const char *server);
void emu_share(int newfd, struct emu_sock *es); /* newfd is a duplicate of es */
void emu_forget(int fd, struct emu_sock *expect); /* fd was closed; expect: its socket or NULL */
void emu_forget_range(unsigned int first, unsigned int last);
int emu_owns_port(uint32_t port);                  /* a socket of ours uses that port */

/* ---- cmsg.c: put_cmsg()'s arithmetic (shared with the supervisor) ---- */
#define NL_CMSG_MAX CMSG_SPACE(16) /* the longest control message a netlink receive gives */
/* One control message of `len` (at most 16) bytes for a buffer of `room` bytes (0: none):
 * its bytes in `out`, how many to write (0: none fits; MSG_CTRUNC set in *msg_flags when it
 * is cut or dropped) and, in *step, how far the buffer moves on once they are written. */
size_t nl_cmsg_build(unsigned char out[NL_CMSG_MAX], size_t room, int level, int type,
                     const void *data, size_t len, int *msg_flags, size_t *step);

/* ---- addr.c: paths, binding, the server's side channel ---- */
int server_path_from_env(char *out, size_t size);
int port_path(char *out, size_t size, const char *server, uint32_t port);
int port_from_path(const char *path, char *server, size_t size, uint32_t *port);
int emu_bind_port(struct emu_sock *es, int fd, uint32_t port); /* caller holds es->lock */
int emu_autobind(struct emu_sock *es, int fd);                 /* caller holds es->lock */
extern pid_t emu_client_tgid; /* autobind's first candidate when set (supervisor/); else getpid() */
int emu_ensure_bound(struct emu_sock *es, int fd);             /* caller holds es->lock */
void emu_learn_server(struct emu_sock *es);                    /* caller holds es->lock */
void emu_send_control(struct emu_sock *es, int fd, int option, int64_t value);
/* A control datagram's bytes (memcpy only: a signal handler may call it). */
void emu_control_encode(unsigned char msg[CTL_SIZE], int op, int option, int64_t value);
/* Take one datagram from `fd` (SO_PASSCRED on): whether it is the SEEN about `about` from the
 * user owning the socket file `server` (a link followed). System calls only (recvmsg, lstat,
 * stat): a signal handler may call it. */
int emu_seen_from_server(int fd, const char *server, int64_t about);
void emu_send_options(struct emu_sock *es, int fd);
void emu_release_port(const char *server, uint32_t port);
void shim_hint(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* TSEMU_DEBUG */
/* One line on stderr, `prefix` first, cut to 510 bytes, written with two write(2)s. */
void emu_say_line(const char *prefix, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
void shim_no_server(const char *server);
void shim_foreign(uid_t uid, pid_t pid, uid_t server_uid); /* a datagram dropped: not the server's */
void shim_report(void);                                     /* at exit: what was dropped */
int shim_capable(int cap);                                  /* cap is in our effective set */

/* ---- usermem.c: the caller's memory, through the kernel (never dereferenced) ---- */

/* Whose call the rules below serve. The shim serves its own process; the supervisor
 * (supervisor/) a thread it traces. Everything that differs between the two hosts is a field
 * here, so io.c, naming.c and options.c hold one implementation of each rule for both. */
struct caller_mem {
    pid_t pid;       /* whose memory: 0 this process, else that thread's (process_vm_*) */
    pid_t speak_for; /* sends claim this pid in SCM_CREDENTIALS while the kernel lets us
                      * (a privileged supervisor speaking for its client); 0: never */
    int judge_creds; /* SCM_CREDENTIALS a client sends are judged by a dry run on our own
                      * socket: only where our rights are the caller's (the shim) */
    /* Our descriptor for the caller's descriptor `theirs` (a CGROUPSTATS request names
     * one), or -1 when it has none; when `fd_copies`, a copy the send closes afterwards. */
    int (*fd_of)(const struct caller_mem *who, int theirs);
    int fd_copies;
    void *host; /* the host's own (supervisor: its struct caller) */
};
extern const struct caller_mem um_self; /* the shim's: this process */

int um_read(const struct caller_mem *who, void *to, const void *from, size_t len);
int um_write(const struct caller_mem *who, void *to, const void *from, size_t len);
/* Scattered copies: the bytes copied, short where a remote (caller's) piece faults. */
ssize_t um_readv(const struct caller_mem *who, const struct iovec *local, size_t nlocal,
                 const struct iovec *remote, size_t nremote);
ssize_t um_writev(const struct caller_mem *who, const struct iovec *local, size_t nlocal,
                  const struct iovec *remote, size_t nremote);
/* recvmsg(2) on our socket `fd` into the caller's pieces (msg->msg_iov; the name and control
 * buffers are ours): the kernel writes them directly for this process, through a buffer of
 * ours and process_vm_writev for another (EFAULT when that fails: the datagram is taken,
 * unless MSG_PEEK, as the kernel takes it). The leading bytes received are also copied to
 * `head`: at most *headlen, and *headlen becomes how many (no system call more). */
ssize_t um_recvmsg(const struct caller_mem *who, int fd, struct msghdr *msg, int flags,
                   void *head, size_t *headlen);
int um_access_ok(const void *addr, size_t len); /* this process: the kernel's access_ok() */

/* The kernel's limits on what one call moves (MAX_RW_COUNT) and on its pieces (UIO_MAXIOV),
 * and the largest address a sockaddr may have (sizeof(struct sockaddr_storage)). */
#define MAX_RW_COUNT ((size_t)(INT32_MAX & ~4095))
#define UIO_MAXIOV 1024
#define MAX_ADDRLEN 128

/* ---- io.c: send and receive, as netlink_sendmsg and netlink_recvmsg do them ---- */

/* A datagram to send, past the system call layer's checks (sockops.c; supervisor/calls.c):
 * its pieces are the caller's memory, within access_ok() but not read yet. */
struct nl_out {
    const struct iovec *iov;
    size_t iovlen;
    size_t len;            /* their total, at most MAX_RW_COUNT */
    const void *uname;     /* an address still in the caller's memory (sendto), or NULL */
    const void *name;      /* ... or one readable here (sendmsg) */
    size_t namelen;        /* 0: none (the connected destination); at most MAX_ADDRLEN */
    const void *control;   /* sendmsg's control messages, readable here */
    size_t controllen;
};
ssize_t emu_send(const struct caller_mem *who, struct emu_sock *es, int fd,
                 const struct nl_out *out, int flags);

/* A receive, past the system call layer's checks: the pieces (the caller's) are within
 * access_ok(); what the kernel would write besides the data comes back in the structure.
 * It waits for a datagram unless `flags` has MSG_DONTWAIT (the supervisor always sets it:
 * it parks a waiting call instead, supervisor/calls.c). */
struct nl_in {
    const struct iovec *iov;
    size_t iovlen;
    void *ucontrol;           /* the caller's control buffer (recvmsg), or NULL */
    size_t ucontrollen;
    struct sockaddr_nl name;  /* out: the sender */
    size_t controlled;        /* out: bytes of control messages written at ucontrol */
    int msg_flags;            /* out */
};
ssize_t emu_recv(const struct caller_mem *who, struct emu_sock *es, int fd, struct nl_in *in,
                 int flags);
/* ____sys_recvmsg's write-back into the caller's msghdr `umsg` (`m`: its fields as read): the
 * sender's address cut to msg_namelen, which becomes its full length, then msg_flags and
 * msg_controllen. 0, or EFAULT (the datagram is gone all the same, as on the kernel). */
int emu_recvmsg_result(const struct caller_mem *who, struct msghdr *umsg, const struct msghdr *m,
                       const struct nl_in *in);
/* A socket inherited across exec: it may be in the middle of a batch (caller holds es->lock). */
void emu_batch_adopt(struct emu_sock *es, int fd);

/* ---- naming.c and options.c: the other socket calls' rules, past the system call layer ----
 * Each returns 0, a positive errno, or EMU_PASS: not netlink's business, the Unix socket
 * does the call with the caller's own arguments (the shim calls libc; the supervisor lets
 * the trapped call CONTINUE). Pointers are the caller's, read and written through `who`. */
#define EMU_PASS (-1)
/* socket(AF_NETLINK, type, NETLINK_GENERIC): the Unix datagram socket that stands for it
 * (SO_PASSCRED on; SOCK_NONBLOCK as asked, O_CLOEXEC here when `cloexec`), its kind
 * (SOCK_RAW or SOCK_DGRAM) and the server's path (TSEMU_SOCKET). Its descriptor, or -1 and
 * errno (the type's check first, EINVAL or ESOCKTNOSUPPORT, as the kernel's). */
int emu_socket(int type, int cloexec, int *kind, char *server, size_t size);
/* move_addr_to_kernel(): len as an int, negative or longer than MAX_ADDRLEN is EINVAL. */
int emu_take_address(const struct caller_mem *who, const void *uaddr, socklen_t len,
                     struct sockaddr_storage *out);
/* move_addr_to_user(): `klen` bytes cut to *ulen's room, then the full length into *ulen. */
int emu_give_address(const struct caller_mem *who, const void *kaddr, int klen, void *uaddr,
                     socklen_t *ulen);
int emu_bind(const struct caller_mem *who, struct emu_sock *es, int fd, const void *uaddr,
             socklen_t len);
int emu_connect(const struct caller_mem *who, struct emu_sock *es, int fd, const void *uaddr,
                socklen_t len);
/* getsockname (peer 0) and getpeername (peer 1). */
int emu_getname(const struct caller_mem *who, struct emu_sock *es, int peer, void *uaddr,
                socklen_t *ulen);
int emu_setsockopt(const struct caller_mem *who, struct emu_sock *es, int fd, int level,
                   int opt, const void *value, socklen_t len);
int emu_getsockopt(const struct caller_mem *who, struct emu_sock *es, int level, int opt,
                   void *value, socklen_t *len);

#endif
