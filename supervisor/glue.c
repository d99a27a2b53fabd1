/*
 * What shim/addr.c (compiled into tsemu-run as it is) needs from the rest of the shim: the
 * "real" functions, which here are simply libc's (nothing is interposed in this process),
 * and the one descriptor-table question it asks (emu_owns_port), answered from the table of
 * emulated sockets, which lives here too.
 */
#include "supervisor.h"

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
