/*
 * The descriptor table: which descriptors are emulated netlink sockets, and their state.
 *
 * Every read(), write() and close() of the process passes through the shim, so looking a
 * descriptor up must cost next to nothing for the ones that are not ours: the table is two
 * levels of atomic pointers (1024 chunks of 1024 slots, allocated on first use and never
 * freed) read without a lock; only changes take the table lock.
 *
 * Socket structures are recycled, never freed: a thread that races a close() on the same
 * descriptor (a bug in the program, but one that works on a real kernel) then sees a stale
 * structure, never freed memory.
 *
 * fork: the child inherits the table with the descriptors, and the port ids stay what they
 * were, as the kernel keeps them; locks are reset in the child (pthread_atfork).
 * vfork (posix_spawn, Python's subprocess): the child shares our memory, so this table, but
 * not our descriptor table, and no fork handler tells us. A child that closes descriptors
 * before its exec (close_fds) must not take the parent's sockets out of the parent's table:
 * the table is changed only by the process that owns it (owner_pid).
 * exec: the table is lost but the descriptors are not. The constructor rebuilds it from
 * the descriptors themselves: a Unix datagram socket bound to `<dir>.ports/<port id>` is an
 * emulated netlink socket whose server is `<dir>`. (A socket that was never bound has no
 * such name and is not recognised after exec; netlink clients bind before they talk.)
 */
#include "shim.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK_BITS 10
#define CHUNK_SLOTS (1u << CHUNK_BITS)
#define NCHUNKS 1024u /* descriptors below 1,048,576: beyond that, sockets are refused */

typedef _Atomic(struct emu_sock *) slot_t;

static _Atomic(slot_t *) chunks[NCHUNKS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct emu_sock *all_socks; /* every structure made, in use or free (table_lock) */
static pid_t owner_pid;            /* the process whose table this is (see vfork above) */

/* Whether this process may change the table: not a vfork child sharing its parent's. */
static int table_is_ours(void)
{
    pid_t self = getpid();
    if (!owner_pid)
        owner_pid = self;
    return self == owner_pid;
}

static slot_t *slot_of(int fd, int create)
{
    if (fd < 0 || (unsigned)fd >= NCHUNKS * CHUNK_SLOTS)
        return NULL;
    slot_t *chunk = atomic_load_explicit(&chunks[fd >> CHUNK_BITS], memory_order_acquire);
    if (!chunk && create) {
        chunk = calloc(CHUNK_SLOTS, sizeof *chunk);
        if (!chunk)
            return NULL;
        atomic_store_explicit(&chunks[fd >> CHUNK_BITS], chunk, memory_order_release);
    }
    return chunk ? &chunk[fd & (CHUNK_SLOTS - 1)] : NULL;
}

/* What a socket's last reference leaves to do once the table lock is released: the
 * structure itself may be recycled by then, so this is a copy. */
struct released {
    int bound;
    uint32_t port;
    char server[sizeof(((struct emu_sock *)0)->server)];
};

/* Drop one descriptor's reference (table_lock held). When it was the last, `out` says
 * which port file to release (see `release`). */
static void unref_locked(struct emu_sock *es, struct released *out)
{
    if (--es->refs > 0)
        return;
    out->bound = es->bound;
    out->port = es->port;
    memcpy(out->server, es->server, sizeof out->server);
    es->in_use = 0;
}

/* Unlink the port file of a socket this process no longer holds, if nobody else does. */
static void release(const struct released *r)
{
    if (r->bound)
        emu_release_port(r->server, r->port);
}

struct emu_sock *emu_get(int fd)
{
    slot_t *slot = slot_of(fd, 0);
    struct emu_sock *es = slot ? atomic_load_explicit(slot, memory_order_acquire) : NULL;
    if (!es)
        return NULL;
    /* The descriptor may have been closed and reused without us (a raw close syscall, a
     * library's internal close): check that it still is the same socket. */
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_dev != es->dev || st.st_ino != es->ino) {
        if (!table_is_ours())
            return NULL;
        struct released gone = {0};
        pthread_mutex_lock(&table_lock);
        if (atomic_load(slot) == es) {
            atomic_store(slot, NULL);
            unref_locked(es, &gone);
        }
        pthread_mutex_unlock(&table_lock);
        release(&gone); /* if nobody else holds the socket, its port file is stale */
        return NULL;
    }
    return es;
}

static struct emu_sock *alloc_locked(void)
{
    struct emu_sock *es;
    for (es = all_socks; es; es = es->next_all)
        if (!es->in_use)
            break;
    if (!es) {
        es = calloc(1, sizeof *es);
        if (!es)
            return NULL;
        es->next_all = all_socks;
        all_socks = es;
    }
    struct emu_sock *next = es->next_all;
    memset(es, 0, sizeof *es);
    es->next_all = next;
    pthread_mutex_init(&es->lock, NULL);
    es->in_use = 1;
    return es;
}

/* Put `es` in fd's slot (table_lock held), dropping whatever was there: a descriptor we
 * believed closed-behind-our-back and that the kernel has just handed out again. */
static void install_locked(slot_t *slot, struct emu_sock *es, struct released *gone)
{
    struct emu_sock *old = atomic_load(slot);
    if (old && old != es)
        unref_locked(old, gone);
    atomic_store_explicit(slot, es, memory_order_release);
}

struct emu_sock *emu_new(int fd, int type, const char *server)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return NULL;
    pthread_mutex_lock(&table_lock);
    slot_t *slot = slot_of(fd, 1);
    struct emu_sock *es = slot ? alloc_locked() : NULL;
    struct released gone = {0};
    if (es) {
        es->refs = 1;
        es->dev = st.st_dev;
        es->ino = st.st_ino;
        es->type = type;
        strncpy(es->server, server, sizeof es->server - 1);
        es->rcvbuf = EMU_RMEM_DEFAULT;
        es->sndbuf = EMU_WMEM_DEFAULT;
        install_locked(slot, es, &gone);
    }
    pthread_mutex_unlock(&table_lock);
    release(&gone);
    if (!es)
        errno = fd < 0 || (unsigned)fd >= NCHUNKS * CHUNK_SLOTS ? EMFILE : ENOMEM;
    return es;
}

void emu_share(int newfd, struct emu_sock *es)
{
    if (!table_is_ours())
        return;
    pthread_mutex_lock(&table_lock);
    slot_t *slot = slot_of(newfd, 1);
    struct released gone = {0};
    if (slot && atomic_load(slot) != es) {
        es->refs++;
        install_locked(slot, es, &gone);
    }
    pthread_mutex_unlock(&table_lock);
    release(&gone);
}

/* Empty fd's slot if it holds `expect` (anything, when NULL). */
static void forget_one(int fd, struct emu_sock *expect)
{
    slot_t *slot = slot_of(fd, 0);
    if (!slot || !atomic_load_explicit(slot, memory_order_acquire) || !table_is_ours())
        return;
    struct released gone = {0};
    pthread_mutex_lock(&table_lock);
    struct emu_sock *es = atomic_load(slot);
    if (es && (!expect || es == expect)) {
        atomic_store(slot, NULL);
        unref_locked(es, &gone);
    }
    pthread_mutex_unlock(&table_lock);
    release(&gone);
}

void emu_forget(int fd, struct emu_sock *expect)
{
    forget_one(fd, expect);
}

void emu_forget_range(unsigned int first, unsigned int last)
{
    if (last >= NCHUNKS * CHUNK_SLOTS)
        last = NCHUNKS * CHUNK_SLOTS - 1;
    for (unsigned int fd = first; fd <= last; fd++) {
        if ((fd & (CHUNK_SLOTS - 1)) == 0 &&
            !atomic_load_explicit(&chunks[fd >> CHUNK_BITS], memory_order_acquire)) {
            fd += CHUNK_SLOTS - 1; /* a chunk never used holds nothing of ours */
            continue;
        }
        forget_one((int)fd, NULL);
    }
}

int emu_owns_port(uint32_t port)
{
    int found = 0;
    pthread_mutex_lock(&table_lock);
    for (struct emu_sock *es = all_socks; es && !found; es = es->next_all)
        found = es->in_use && es->port == port;
    pthread_mutex_unlock(&table_lock);
    return found;
}

/* ---- fork ---- */

static void before_fork(void)
{
    pthread_mutex_lock(&table_lock);
}

static void after_fork_parent(void)
{
    pthread_mutex_unlock(&table_lock);
}

static void after_fork_child(void)
{
    /* Only the forking thread survives: any lock another thread held is held by no one. */
    owner_pid = getpid();
    pthread_mutex_init(&table_lock, NULL);
    for (struct emu_sock *es = all_socks; es; es = es->next_all)
        pthread_mutex_init(&es->lock, NULL);
}

/* ---- exec: find the emulated sockets a previous program image left us ---- */

static void adopt_inherited(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return;
    int skip = dirfd(dir);
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        char *end;
        long fd = strtol(entry->d_name, &end, 10);
        if (*end || end == entry->d_name || fd == skip || fd < 0)
            continue;
        struct stat st;
        if (fstat((int)fd, &st) != 0 || !S_ISSOCK(st.st_mode))
            continue;
        int value;
        socklen_t len = sizeof value;
        if (real_getsockopt((int)fd, SOL_SOCKET, SO_DOMAIN, &value, &len) || value != AF_UNIX)
            continue;
        len = sizeof value;
        if (real_getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &value, &len) || value != SOCK_DGRAM)
            continue;
        struct sockaddr_un name;
        socklen_t namelen = sizeof name;
        memset(&name, 0, sizeof name);
        if (real_getsockname((int)fd, (struct sockaddr *)&name, &namelen) ||
            namelen <= sizeof(sa_family_t) || name.sun_path[0] == '\0')
            continue;
        char server[sizeof name.sun_path];
        uint32_t port;
        if (port_from_path(name.sun_path, server, sizeof server, &port))
            continue;
        int one = 1; /* on already, unless something turned it off: only the server is heard */
        if (real_setsockopt((int)fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0)
            continue;
        struct emu_sock *es = emu_new((int)fd, SOCK_RAW, server);
        if (es) {
            es->port = port;
            es->bound = 1;
            emu_learn_server(es);
            emu_batch_adopt(es, (int)fd);
        }
    }
    closedir(dir);
}

__attribute__((constructor)) static void shim_init(void)
{
    shim_resolve();
    owner_pid = getpid();
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    adopt_inherited();
}

/* At a normal exit (exit(), a return from main), close our sockets so that their port files
 * go, as if the program had closed them: the files of a process that exits without closing
 * would stay behind until someone takes the name over. Preloaded libraries are finalized
 * last, after the program's own atexit handlers and destructors, so nothing uses the
 * sockets any more. (A child that inherited a socket keeps it: the port file stays then.)
 * After _exit() or a crash nothing runs; the next bind to the name takes the stale file. */
__attribute__((destructor)) static void shim_fini(void)
{
    if (!table_is_ours())
        return; /* exit() in a vfork child: the sockets are the parent's */
    shim_report();
    for (unsigned int c = 0; c < NCHUNKS; c++) {
        slot_t *chunk = atomic_load_explicit(&chunks[c], memory_order_acquire);
        for (unsigned int i = 0; chunk && i < CHUNK_SLOTS; i++) {
            struct emu_sock *es = atomic_load_explicit(&chunk[i], memory_order_acquire);
            if (!es)
                continue;
            int fd = (int)(c * CHUNK_SLOTS + i);
            struct stat st;
            if (fstat(fd, &st) == 0 && st.st_dev == es->dev && st.st_ino == es->ino)
                real_close(fd);
            forget_one(fd, es);
        }
    }
}
