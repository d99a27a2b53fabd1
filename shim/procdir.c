/*
 * Listing /proc through the view.
 *
 * opendir("/proc") (or fdopendir on a descriptor of it, or scandir) gives a real DIR on the
 * real /proc, which the shim adopts: readdir then returns the host's entries that are not
 * pids (self, cpuinfo, sys, ...: in the host's order, as the kernel puts them first), then
 * the view's pids and the caller's own, in increasing order as the kernel lists them, all
 * DT_DIR. The listing is read when the first entry is asked for, and again after
 * rewinddir(). dirfd() is the real /proc's descriptor; openat() and fstatat() relative to
 * it follow the rules of procview.c.
 *
 * A redirected opendir of an emulated process's task/ lists its tids in increasing order,
 * as the kernel does (the view's file system has an order of its own); one of an emulated
 * task's own directory is the view's, with the shim's `.tsemu` left out. Every other DIR
 * is libc's alone: readdir looks it up among the few adopted ones (no lock, nothing at all
 * when none is open), and that is all it costs.
 *
 * glibc's scandir reads its directory with an internal readdir the shim cannot see, so
 * scandir and scandirat of /proc paths are done here, with the same filter and sort
 * callbacks.
 */
#include "proc.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(sizeof(struct dirent) == sizeof(struct dirent64) &&
               offsetof(struct dirent, d_name) == offsetof(struct dirent64, d_name),
               "struct dirent and dirent64 are one layout on this ABI");

struct named {
    uint64_t ino;
    unsigned char type;
    char name[sizeof(((struct dirent64 *)0)->d_name)];
};

struct pident {
    uint64_t ino;
    uint32_t pid;
};

struct pdir {
    DIR *dir;
    int mode;            /* PROC_DIR_* */
    int built;           /* sorted modes: the entries below have been read */
    size_t pos;          /* sorted modes: the next entry */
    struct named *named; /* root: the host's non-pid entries, then the view's the host lacks;
                            task/: . and .. */
    size_t n_named, cap_named;
    struct pident *pids; /* root: the view's pids and the caller's; task/: the tids; sorted */
    size_t n_pids, cap_pids;
    struct dirent64 ent; /* what readdir returned last */
};

/* The DIRs adopted, in slots read without a lock (readdir of any directory looks here):
 * a slot is claimed and emptied under the lock. A program holding more than SLOTS of them
 * open at once gets the rest listed as libc lists them. */
#define SLOTS 64
static _Atomic(struct pdir *) slots[SLOTS];
static _Atomic(DIR *) slot_dirs[SLOTS]; /* slots[i]->dir: compared without touching *slots[i],
                                           which another thread may be releasing */
static atomic_int n_pdirs;
static atomic_int slots_used; /* no slot at or above this index has ever been claimed */
static pthread_mutex_t pdir_lock = PTHREAD_MUTEX_INITIALIZER;

static struct pdir *find(DIR *dir)
{
    if (!atomic_load_explicit(&n_pdirs, memory_order_acquire) || !dir)
        return NULL;
    int used = atomic_load_explicit(&slots_used, memory_order_acquire);
    for (int i = 0; i < used; i++)
        if (atomic_load_explicit(&slot_dirs[i], memory_order_acquire) == dir)
            return atomic_load_explicit(&slots[i], memory_order_acquire);
    return NULL;
}

/* The last structure released, kept with its arrays for the next DIR: a tool lists the
 * task/ of every process in turn, one open at a time (pdir_lock). */
static struct pdir *spare;

void proc_dir_adopt(DIR *dir, int mode)
{
    pthread_mutex_lock(&pdir_lock);
    struct pdir *pd = spare;
    spare = NULL;
    pthread_mutex_unlock(&pdir_lock);
    if (!pd)
        pd = calloc(1, sizeof *pd);
    if (!pd)
        return; /* then it is listed as libc lists it: better than failing the opendir */
    pd->dir = dir;
    pd->mode = mode;
    pd->built = 0;
    pd->pos = 0;
    pd->n_named = pd->n_pids = 0;
    pthread_mutex_lock(&pdir_lock);
    int i = 0;
    while (i < SLOTS && atomic_load_explicit(&slots[i], memory_order_relaxed))
        i++;
    if (i < SLOTS) {
        atomic_store_explicit(&slots[i], pd, memory_order_release);
        atomic_store_explicit(&slot_dirs[i], dir, memory_order_release);
        if (i >= atomic_load_explicit(&slots_used, memory_order_relaxed))
            atomic_store_explicit(&slots_used, i + 1, memory_order_release);
        atomic_fetch_add_explicit(&n_pdirs, 1, memory_order_release);
    }
    pthread_mutex_unlock(&pdir_lock);
    if (i == SLOTS)
        free(pd);
}

static void release(struct pdir *pd)
{
    if (pd->cap_named <= 16 && pd->cap_pids <= 64) { /* small: kept for the next one */
        pthread_mutex_lock(&pdir_lock);
        struct pdir *old = spare;
        spare = pd;
        pthread_mutex_unlock(&pdir_lock);
        pd = old;
        if (!pd)
            return;
    }
    free(pd->named);
    free(pd->pids);
    free(pd);
}

/* Take `dir` out of the slots (closedir); NULL when it was not in them. */
static struct pdir *forget(DIR *dir)
{
    if (!atomic_load_explicit(&n_pdirs, memory_order_acquire) || !dir)
        return NULL;
    struct pdir *pd = NULL;
    pthread_mutex_lock(&pdir_lock);
    for (int i = 0; i < SLOTS && !pd; i++) {
        struct pdir *slot = atomic_load_explicit(&slots[i], memory_order_relaxed);
        if (slot && slot->dir == dir) {
            pd = slot;
            atomic_store_explicit(&slot_dirs[i], NULL, memory_order_release);
            atomic_store_explicit(&slots[i], NULL, memory_order_release);
            atomic_fetch_sub_explicit(&n_pdirs, 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&pdir_lock);
    return pd;
}

/* ---- the merged listing ---- */

/* The number a pid's name spells (canonically: no leading zero, at most 10 digits, below
 * 2^32), or -1 for any other name. */
static long pid_name(const char *s)
{
    if (*s < '1' || *s > '9')
        return *s == '0' && !s[1] ? 0 : -1;
    long v = 0;
    int n = 0;
    for (; *s; s++, n++) {
        if (*s < '0' || *s > '9' || n == 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v <= UINT32_MAX ? v : -1;
}

static int digits_only(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static int add_named(struct pdir *pd, uint64_t ino, unsigned char type, const char *name)
{
    if (pd->n_named == pd->cap_named) {
        size_t cap = pd->cap_named ? pd->cap_named * 2 : pd->mode == PROC_DIR_ROOT ? 128 : 2;
        struct named *more = realloc(pd->named, cap * sizeof *more);
        if (!more)
            return -1;
        pd->named = more;
        pd->cap_named = cap;
    }
    struct named *n = &pd->named[pd->n_named++];
    n->ino = ino;
    n->type = type;
    size_t len = strnlen(name, sizeof n->name - 1);
    memcpy(n->name, name, len);
    n->name[len] = '\0';
    return 0;
}

static int add_pid(struct pdir *pd, uint64_t ino, uint32_t pid)
{
    if (pd->n_pids == pd->cap_pids) {
        size_t cap = pd->cap_pids ? pd->cap_pids * 2 : pd->mode == PROC_DIR_ROOT ? 1024 : 8;
        struct pident *more = realloc(pd->pids, cap * sizeof *more);
        if (!more)
            return -1;
        pd->pids = more;
        pd->cap_pids = cap;
    }
    pd->pids[pd->n_pids].ino = ino;
    pd->pids[pd->n_pids++].pid = pid;
    return 0;
}

static int by_pid(const void *a, const void *b)
{
    uint32_t x = ((const struct pident *)a)->pid, y = ((const struct pident *)b)->pid;
    return (x > y) - (x < y);
}

/* Radix sort, four passes of 8 bits: the view's pids, every time /proc is listed. */
static int radix_sort(struct pident *p, size_t n)
{
    struct pident *tmp = malloc(n * sizeof *tmp);
    if (!tmp)
        return -1;
    for (int shift = 0; shift < 32; shift += 8) {
        size_t counts[256] = {0};
        for (size_t i = 0; i < n; i++)
            counts[(p[i].pid >> shift) & 0xff]++;
        if (counts[0] == n)
            continue; /* every pid has 0 there (the high bytes, usually) */
        size_t sum = 0;
        for (size_t d = 0; d < 256; d++) {
            size_t c = counts[d];
            counts[d] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++)
            tmp[counts[(p[i].pid >> shift) & 0xff]++] = p[i];
        memcpy(p, tmp, n * sizeof *p);
    }
    free(tmp);
    return 0;
}

/* A host process and its parent, for the family's part of a /proc listing. */
struct host_proc {
    unsigned long pid, ppid;
    uint64_t ino;
};
struct host_procs {
    struct host_proc *at;
    size_t n;
};

static int by_host_pid(const void *a, const void *b)
{
    unsigned long x = ((const struct host_proc *)a)->pid, y = ((const struct host_proc *)b)->pid;
    return (x > y) - (x < y);
}

static unsigned long host_parent_of(unsigned long pid, void *ctx)
{
    const struct host_procs *all = ctx;
    struct host_proc key = {pid, 0, 0};
    const struct host_proc *found = bsearch(&key, all->at, all->n, sizeof key, by_host_pid);
    return found ? found->ppid : 0;
}

static void sort_pids(struct pdir *pd)
{
    struct pident *p = pd->pids;
    size_t n = pd->n_pids;
    if (n > 16) {
        if (n < 1024 || radix_sort(p, n) != 0)
            qsort(p, n, sizeof *p, by_pid);
        return;
    }
    for (size_t i = 1; i < n; i++) { /* a task/ holds a few threads: no qsort for that */
        struct pident x = p[i];
        size_t j = i;
        for (; j > 0 && p[j - 1].pid > x.pid; j--)
            p[j] = p[j - 1];
        p[j] = x;
    }
}

static int has_named(const struct pdir *pd, const char *name)
{
    for (size_t i = 0; i < pd->n_named; i++)
        if (!strcmp(pd->named[i].name, name))
            return 1;
    return 0;
}

/* Read the entries into pd: for /proc, the host's (through the DIR itself) and the view's;
 * for a task/ of the view, its own. */
static void build(struct pdir *pd)
{
    int saved = errno;
    pd->n_named = pd->n_pids = 0;
    pd->pos = 0;
    pd->built = 1;
    struct dirent64 *e;
    if (pd->mode == PROC_DIR_TASKS) {
        while ((e = proc_real.readdir64(pd->dir))) {
            long tid = pid_name(e->d_name);
            if (tid > 0)
                add_pid(pd, e->d_ino, (uint32_t)tid);
            else
                add_named(pd, e->d_ino, e->d_type, e->d_name);
        }
        sort_pids(pd);
        errno = saved;
        return;
    }
    long own = proc_getpid();
    /* The host's processes, with their parents, when the caller belongs to a client family
     * (TSEMU_ROOT): the family's processes are listed too, as part of the machine. */
    int family = getenv("TSEMU_ROOT") != NULL;
    struct host_proc *host = NULL;
    size_t n_host = 0, cap_host = 0;
    while ((e = proc_real.readdir64(pd->dir))) {
        if (!digits_only(e->d_name)) {
            add_named(pd, e->d_ino, e->d_type, e->d_name);
            continue;
        }
        long pid = pid_name(e->d_name);
        if (pid == own)
            add_pid(pd, e->d_ino, (uint32_t)own);
        else if (family && pid > 0) {
            if (n_host == cap_host) {
                size_t cap = cap_host ? 2 * cap_host : 256;
                struct host_proc *more = realloc(host, cap * sizeof *host);
                if (!more)
                    break;
                host = more;
                cap_host = cap;
            }
            host[n_host++] = (struct host_proc){(unsigned long)pid,
                                                proc_host_parent((unsigned long)pid), e->d_ino};
        }
    }
    if (n_host) {
        qsort(host, n_host, sizeof *host, by_host_pid);
        struct host_procs all = {host, n_host};
        for (size_t i = 0; i < n_host; i++)
            if (proc_family_member(host[i].pid, host_parent_of, &all))
                add_pid(pd, host[i].ino, (uint32_t)host[i].pid);
    }
    free(host);
    size_t vlen;
    const char *view = proc_view(&vlen);
    DIR *v = view ? proc_real.opendir(view) : NULL;
    while (v && (e = proc_real.readdir64(v))) {
        long pid = pid_name(e->d_name);
        if (pid > 0) {
            if (pid != own && (e->d_type == DT_DIR || e->d_type == DT_UNKNOWN))
                add_pid(pd, e->d_ino, (uint32_t)pid);
        } else if (e->d_name[0] != '.' && !digits_only(e->d_name) &&
                   !has_named(pd, e->d_name)) {
            add_named(pd, e->d_ino, e->d_type, e->d_name); /* e.g. pressure, on a host without */
        }
    }
    if (v)
        proc_real.closedir(v);
    sort_pids(pd);
    /* A pid both the view and the family have is listed once (the view's answers for it). */
    size_t kept = 0;
    for (size_t i = 0; i < pd->n_pids; i++)
        if (!kept || pd->pids[kept - 1].pid != pd->pids[i].pid)
            pd->pids[kept++] = pd->pids[i];
    pd->n_pids = kept;
    errno = saved;
}

static void fill(struct pdir *pd, uint64_t ino, unsigned char type, const char *name,
                 size_t len)
{
    struct dirent64 *d = &pd->ent;
    d->d_ino = ino;
    d->d_off = (off64_t)pd->pos;
    d->d_type = type;
    memcpy(d->d_name, name, len);
    d->d_name[len] = '\0';
    d->d_reclen = (unsigned short)((offsetof(struct dirent64, d_name) + len + 1 + 7) & ~7ul);
}

/* A sorted listing's next entry, or NULL at its end (errno untouched). */
static struct dirent64 *sorted_next(struct pdir *pd)
{
    if (!pd->built)
        build(pd);
    size_t i = pd->pos;
    if (i < pd->n_named) {
        pd->pos++;
        const struct named *n = &pd->named[i];
        fill(pd, n->ino, n->type, n->name, strlen(n->name));
        return &pd->ent;
    }
    i -= pd->n_named;
    if (i < pd->n_pids) {
        pd->pos++;
        char name[16], *p = name + sizeof name;
        uint32_t v = pd->pids[i].pid;
        do
            *--p = (char)('0' + v % 10);
        while (v /= 10);
        fill(pd, pd->pids[i].ino, DT_DIR, p, (size_t)(name + sizeof name - p));
        return &pd->ent;
    }
    return NULL;
}

/* An emulated task's directory: libc's entries without the shim's own file. */
static int hidden(const char *name)
{
    return !strcmp(name, PROC_TASK_ATTRS);
}

/* ---- opening ---- */

/* A DIR opened by the rules: /proc, a task's directory or a task/ list are adopted. */
static void adopt_routed(DIR *dir, const struct proc_route *r)
{
    int kind = r->is_root ? PROC_DIR_ROOT : proc_route_dir_kind(r);
    if (kind >= 0)
        proc_dir_adopt(dir, kind);
}

DIR *opendir(const char *path)
{
    proc_resolve();
    struct proc_route r;
    const char *p = proc_route_begin(&r, AT_FDCWD, path, 0);
    for (;;) {
        if (r.kind == PROUTE_ERROR)
            return NULL;
        DIR *dir = proc_real.opendir(p);
        if (!dir) {
            if (!proc_route_retry(&r, 1, errno))
                return NULL;
            p = proc_route_next(&r);
            continue;
        }
        adopt_routed(dir, &r);
        errno = r.saved_errno;
        return dir;
    }
}

DIR *fdopendir(int fd)
{
    proc_resolve();
    DIR *dir = proc_real.fdopendir(fd);
    size_t vlen;
    if (!dir || !proc_view(&vlen))
        return dir;
    int saved = errno;
    struct stat st;
    if (proc_fd_is_root(fd))
        proc_dir_adopt(dir, PROC_DIR_ROOT);
    else if (proc_real.fstatat(fd, PROC_TASK_ATTRS, &st, AT_SYMLINK_NOFOLLOW) == 0)
        proc_dir_adopt(dir, PROC_DIR_TASK); /* a task's directory of the view, via open() */
    errno = saved;
    return dir;
}

/* opendir relative to dirfd (scandirat), by the same rules. */
static DIR *routed_opendirat(int dirfd, const char *path, struct proc_route *r)
{
    const char *p = proc_route_begin(r, dirfd, path, 0);
    for (;;) {
        if (r->kind == PROUTE_ERROR)
            return NULL;
        int fd = proc_real.openat(dirfd, p, O_RDONLY | O_NONBLOCK | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            if (!proc_route_retry(r, 1, errno))
                return NULL;
            p = proc_route_next(r);
            continue;
        }
        DIR *dir = proc_real.fdopendir(fd);
        if (!dir) {
            int err = errno;
            proc_real.close(fd);
            errno = err;
            return NULL;
        }
        adopt_routed(dir, r);
        return dir;
    }
}

/* ---- reading ---- */

static struct dirent64 *pdir_readdir(struct pdir *pd, DIR *dir)
{
    if (pd->mode != PROC_DIR_TASK)
        return sorted_next(pd);
    struct dirent64 *e;
    while ((e = proc_real.readdir64(dir)) && hidden(e->d_name))
        ;
    return e;
}

struct dirent64 *readdir64(DIR *dir)
{
    proc_resolve();
    struct pdir *pd = find(dir);
    return pd ? pdir_readdir(pd, dir) : proc_real.readdir64(dir);
}

struct dirent *readdir(DIR *dir)
{
    proc_resolve();
    struct pdir *pd = find(dir);
    return pd ? (struct dirent *)pdir_readdir(pd, dir) : proc_real.readdir(dir);
}

static int pdir_readdir_r(struct pdir *pd, DIR *dir, struct dirent64 *entry,
                          struct dirent64 **result)
{
    if (pd->mode != PROC_DIR_TASK) {
        struct dirent64 *e = sorted_next(pd);
        if (e)
            memcpy(entry, e, e->d_reclen);
        *result = e ? entry : NULL;
        return 0;
    }
    int rc;
    while ((rc = proc_real.readdir64_r(dir, entry, result)) == 0 && *result &&
           hidden((*result)->d_name))
        ;
    return rc;
}

int readdir64_r(DIR *dir, struct dirent64 *entry, struct dirent64 **result)
{
    proc_resolve();
    struct pdir *pd = find(dir);
    if (!pd)
        return proc_real.readdir64_r(dir, entry, result);
    return pdir_readdir_r(pd, dir, entry, result);
}

int readdir_r(DIR *dir, struct dirent *entry, struct dirent **result)
{
    proc_resolve();
    struct pdir *pd = find(dir);
    if (!pd)
        return proc_real.readdir_r(dir, entry, result);
    return pdir_readdir_r(pd, dir, (struct dirent64 *)entry, (struct dirent64 **)result);
}

void rewinddir(DIR *dir)
{
    proc_resolve();
    struct pdir *pd = find(dir);
    proc_real.rewinddir(dir);
    if (pd && pd->mode != PROC_DIR_TASK) {
        pd->built = 0; /* read again: tasks come and go */
        pd->pos = 0;
    }
}

long telldir(DIR *dir)
{
    proc_resolve();
    struct pdir *pd = find(dir);
    if (pd && pd->mode != PROC_DIR_TASK)
        return (long)pd->pos;
    return proc_real.telldir(dir);
}

void seekdir(DIR *dir, long pos)
{
    proc_resolve();
    struct pdir *pd = find(dir);
    if (pd && pd->mode != PROC_DIR_TASK) {
        if (!pd->built)
            build(pd);
        pd->pos = pos < 0 ? 0 : (size_t)pos;
        return;
    }
    proc_real.seekdir(dir, pos);
}

int closedir(DIR *dir)
{
    proc_resolve();
    struct pdir *pd = forget(dir);
    if (pd)
        release(pd);
    return proc_real.closedir(dir);
}

/* ---- scandir ---- */

typedef int (*filter64_t)(const struct dirent64 *);
typedef int (*compar64_t)(const struct dirent64 **, const struct dirent64 **);

/* scandir's work on a DIR of ours, through the wrappers above. */
static int scan(DIR *dir, struct dirent64 ***out, filter64_t filter, compar64_t compar)
{
    struct dirent64 **list = NULL;
    size_t n = 0, cap = 0;
    int saved = errno, err = 0;
    errno = 0;
    struct dirent64 *e;
    while ((e = readdir64(dir))) {
        if (filter && !filter(e))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            struct dirent64 **more = realloc(list, cap * sizeof *more);
            if (!more) {
                err = ENOMEM;
                break;
            }
            list = more;
        }
        struct dirent64 *copy = malloc(e->d_reclen);
        if (!copy) {
            err = ENOMEM;
            break;
        }
        memcpy(copy, e, e->d_reclen);
        list[n++] = copy;
        errno = 0;
    }
    if (!err && errno)
        err = errno;
    closedir(dir);
    if (err) {
        while (n)
            free(list[--n]);
        free(list);
        errno = err;
        return -1;
    }
    if (compar && n > 1)
        qsort(list, n, sizeof *list, (int (*)(const void *, const void *))compar);
    *out = list;
    errno = saved;
    return (int)n;
}

/* /proc itself and paths the rules send to the view are listed here; others by libc. */
int scandirat64(int dirfd, const char *path, struct dirent64 ***list, filter64_t filter,
                compar64_t compar)
{
    proc_resolve();
    struct proc_route r;
    int saved = errno;
    proc_route_begin(&r, dirfd, path, 0);
    errno = saved;
    if (r.kind == PROUTE_REAL && !r.is_root)
        return proc_real.scandirat64(dirfd, path, list, filter, compar);
    DIR *dir = routed_opendirat(dirfd, path, &r);
    if (!dir)
        return -1;
    return scan(dir, list, filter, compar);
}

int scandirat(int dirfd, const char *path, struct dirent ***list,
              int (*filter)(const struct dirent *),
              int (*compar)(const struct dirent **, const struct dirent **))
{
    return scandirat64(dirfd, path, (struct dirent64 ***)list, (filter64_t)filter,
                       (compar64_t)compar);
}

int scandir64(const char *path, struct dirent64 ***list, filter64_t filter, compar64_t compar)
{
    return scandirat64(AT_FDCWD, path, list, filter, compar);
}

int scandir(const char *path, struct dirent ***list, int (*filter)(const struct dirent *),
            int (*compar)(const struct dirent **, const struct dirent **))
{
    return scandirat64(AT_FDCWD, path, (struct dirent64 ***)list, (filter64_t)filter,
                       (compar64_t)compar);
}

/* ---- fork ---- */

static void after_fork_child(void)
{
    pthread_mutex_init(&pdir_lock, NULL);
}

__attribute__((constructor)) static void procdir_init(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
}
