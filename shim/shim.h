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
 * addr.c (paths, binding, control datagrams), io.c (send and receive), sockops.c (the other
 * socket calls and descriptor bookkeeping). emulator/addressing.py is the reference for the
 * addressing rules; tsemu/client.py for the conversation with the server.
 */
#ifndef TSEMU_SHIM_H
#define TSEMU_SHIM_H

#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#define TSEMU_NETLINK_GENERIC 16

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
#define CTL_OPT_RCVBUF 1
#define CTL_OPT_CAP_ACK 2
#define CTL_OPT_EXT_ACK 3
#define CTL_OPT_NO_ENOBUFS 4

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
    int enobufs;          /* an ENOBUFS still to report on the next receive */
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

/* ---- addr.c: paths, binding, the server's side channel ---- */
int server_path_from_env(char *out, size_t size);
int port_path(char *out, size_t size, const char *server, uint32_t port);
int port_from_path(const char *path, char *server, size_t size, uint32_t *port);
int emu_bind_port(struct emu_sock *es, int fd, uint32_t port); /* caller holds es->lock */
int emu_autobind(struct emu_sock *es, int fd);                 /* caller holds es->lock */
int emu_ensure_bound(struct emu_sock *es, int fd);             /* caller holds es->lock */
void emu_send_control(struct emu_sock *es, int fd, int option, int64_t value);
void emu_send_options(struct emu_sock *es, int fd);
void emu_release_port(const char *server, uint32_t port);
void shim_hint(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* TSEMU_DEBUG */
void shim_no_server(const char *server);

/* ---- io.c: send and receive ---- */
ssize_t emu_sendmsg(struct emu_sock *es, int fd, const struct msghdr *msg, int flags);
ssize_t emu_recvmsg(struct emu_sock *es, int fd, struct msghdr *msg, int flags);

#endif
