/*
 * What the shim's rule files (shim/addr.c, cmsg.c, io.c, naming.c, options.c, usermem.c,
 * compiled into tsemu-run as they are) need from the rest of the shim: the "real" functions,
 * which here are simply libc's (nothing is interposed in this process), and the one
 * descriptor-table question addr.c asks (emu_owns_port), answered from the table of emulated
 * sockets, which lives here too.
 */
#include "supervisor.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int (*real_socket)(int, int, int) = socket;
int (*real_bind)(int, const struct sockaddr *, socklen_t) = bind;
int (*real_connect)(int, const struct sockaddr *, socklen_t) = connect;
int (*real_close)(int) = close;
ssize_t (*real_write)(int, const void *, size_t) = write;
ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *,
                       socklen_t) = sendto;
ssize_t (*real_recvmsg)(int, struct msghdr *, int) = recvmsg;
ssize_t (*real_sendmsg)(int, const struct msghdr *, int) = sendmsg;
ssize_t (*real_recv)(int, void *, size_t, int) = recv;
ssize_t (*real_read)(int, void *, size_t) = read;
int (*real_setsockopt)(int, int, int, const void *, socklen_t) = setsockopt;
int (*real_getsockopt)(int, int, int, void *, socklen_t *) = getsockopt;
int (*real_fcntl)(int, int, ...) = fcntl;

#define BUCKETS 1024
static struct sv_sock *table[BUCKETS];

struct sv_sock *sv_find(ino_t ino)
{
    for (struct sv_sock *s = table[ino % BUCKETS]; s; s = s->next)
        if (s->ino == ino)
            return s;
    return NULL;
}

struct sv_sock *sv_add(ino_t ino, int type, const char *server)
{
    struct sv_sock *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->ino = ino;
    pthread_mutex_init(&s->es.lock, NULL);
    s->es.refs = 1;
    s->es.ino = ino;
    s->es.type = type;
    snprintf(s->es.server, sizeof s->es.server, "%s", server);
    s->es.rcvbuf = EMU_RMEM_DEFAULT;
    s->es.sndbuf = EMU_WMEM_DEFAULT;
    s->es.in_use = 1;
    /* No batches (io.c): read() and readv() on an emulated socket are not trapped here, so
     * they would hand a client a whole batch's bytes, header and all, where the shim's
     * wrappers hand out one message. One message per datagram, as the kernel's. */
    s->es.batching = -1;
    s->next = table[ino % BUCKETS];
    table[ino % BUCKETS] = s;
    return s;
}

int emu_owns_port(uint32_t port)
{
    for (size_t b = 0; b < BUCKETS; b++)
        for (struct sv_sock *s = table[b]; s; s = s->next)
            if (s->es.port == port)
                return 1;
    return 0;
}
