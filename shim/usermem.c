/*
 * The application's memory, read and written without trusting it.
 *
 * The kernel never lets a bad pointer hurt the caller of a system call: it checks the range
 * (access_ok) and copies with fault handling, and the call fails with EFAULT. The shim runs in
 * the caller's process, where touching such a pointer is a SIGSEGV, so every pointer an
 * application hands to a wrapped call is either passed to a real system call that checks it
 * (see the "dry runs" in sockops.c) or copied with these functions, which let the kernel do the
 * copying: process_vm_readv / process_vm_writev on our own process (always permitted on
 * oneself, whatever ptrace_scope says). Where a seccomp filter refuses those (EPERM, ENOSYS),
 * the copies go through a private pipe instead: write(2) reads the source and read(2) writes
 * the destination, each with the kernel's fault handling.
 *
 * The same rules serve the supervisor (supervisor/), whose caller is a thread of another
 * process: there `who->pid` names it, the copies are process_vm_readv / process_vm_writev on
 * that thread, and a receive lands in a buffer of ours before it is copied out (um_recvmsg).
 * The shim passes &um_self.
 */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* The highest address a range may end at and surely pass access_ok(): TASK_SIZE_MAX with
 * 4-level page tables on x86_64 (measured: a range ending exactly there passes). Ranges ending
 * above it are asked of the kernel (5-level paging allows more). */
#if defined(__x86_64__)
#define SURELY_USER_END 0x00007ffffffff000UL
#else
#define SURELY_USER_END ((1UL << 39) - 4096)
#endif
#define UIO_MAX 1024 /* IOV_MAX: the most pieces one process_vm_* call takes */

static atomic_int use_pipe; /* process_vm_* refused here: copy through the pipe */

/* ---- the pipe, for when process_vm_* is not allowed ---- */

static pthread_mutex_t pipe_lock = PTHREAD_MUTEX_INITIALIZER;
static int pipe_fd[2] = {-1, -1};
static pid_t pipe_owner;
static struct stat pipe_id[2];

static int same_file(int fd, const struct stat *id)
{
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_dev == id->st_dev && st.st_ino == id->st_ino;
}

/* A pipe of our own, in this process (pipe_lock held). A descriptor the program closed or
 * reused is not ours any more and is left alone; a forked child makes its own pipe. */
static int pipe_ready(void)
{
    pid_t self = getpid();
    if (pipe_fd[0] >= 0 && same_file(pipe_fd[0], &pipe_id[0]) &&
        same_file(pipe_fd[1], &pipe_id[1])) {
        if (pipe_owner == self)
            return 0;
        real_close(pipe_fd[0]); /* the parent's pipe, inherited: ours to close here */
        real_close(pipe_fd[1]);
    }
    pipe_fd[0] = pipe_fd[1] = -1;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    if (fstat(fds[0], &pipe_id[0]) != 0 || fstat(fds[1], &pipe_id[1]) != 0) {
        real_close(fds[0]);
        real_close(fds[1]);
        return -1;
    }
    pipe_fd[0] = fds[0];
    pipe_fd[1] = fds[1];
    pipe_owner = self;
    return 0;
}

static void pipe_drain(void)
{
    char scratch[4096];
    while (real_read(pipe_fd[0], scratch, sizeof scratch) > 0)
        ;
}

#define PIPE_CHUNK 16384 /* below any pipe's capacity: a write is never cut short for room */

/* One region through the pipe: write(2) reads `src`, read(2) writes `dst`. */
static int pipe_copy(void *dst, const void *src, size_t len)
{
    int rc = 0;
    pthread_mutex_lock(&pipe_lock);
    if (pipe_ready() != 0) {
        pthread_mutex_unlock(&pipe_lock);
        errno = EFAULT;
        return -1;
    }
    for (size_t done = 0; done < len && rc == 0;) {
        size_t chunk = len - done < PIPE_CHUNK ? len - done : PIPE_CHUNK;
        ssize_t in = real_write(pipe_fd[1], (const char *)src + done, chunk);
        if (in <= 0) { /* the source faulted at its start */
            rc = -1;
            break;
        }
        ssize_t out = real_read(pipe_fd[0], (char *)dst + done, (size_t)in);
        if (out != in || (size_t)in != chunk) {
            rc = -1; /* the destination faulted, or the source part way */
            pipe_drain();
            break;
        }
        done += chunk;
    }
    pthread_mutex_unlock(&pipe_lock);
    if (rc)
        errno = EFAULT;
    return rc;
}

/* ---- process_vm_readv / process_vm_writev ---- */

static int self_fd_of(const struct caller_mem *who, int theirs)
{
    (void)who;
    return real_fcntl(theirs, F_GETFD) != -1 ? theirs : -1;
}

const struct caller_mem um_self = {.pid = 0, .speak_for = 0, .judge_creds = 1,
                                   .fd_of = self_fd_of, .fd_copies = 0, .host = NULL};

/* Copy between `local` and `remote` (the caller's) pieces; returns the bytes copied, which
 * stop short where a remote piece faults, or -1 (EFAULT) when nothing could be copied.
 * Another process's memory has no pipe to fall back on: a refusal there is EFAULT. */
static ssize_t vm_copy(const struct caller_mem *who, int to_app, const struct iovec *local,
                       size_t nlocal, const struct iovec *remote, size_t nremote)
{
    int self = who->pid == 0;
    if ((!self || !atomic_load_explicit(&use_pipe, memory_order_relaxed)) &&
        nremote <= UIO_MAX && nlocal <= UIO_MAX) {
        pid_t pid = self ? getpid() : who->pid;
        ssize_t n = to_app ? process_vm_writev(pid, local, nlocal, remote, nremote, 0)
                           : process_vm_readv(pid, local, nlocal, remote, nremote, 0);
        if (n >= 0 || errno == EFAULT)
            return n;
        if (!self || (errno != EPERM && errno != ENOSYS)) {
            errno = EFAULT;
            return -1;
        }
        atomic_store(&use_pipe, 1); /* a seccomp filter says no: the pipe from now on */
    }
    /* Piece by piece: through the pipe, or more pieces than one call takes. */
    size_t li = 0, loff = 0;
    ssize_t copied = 0;
    for (size_t ri = 0; ri < nremote; ri++) {
        for (size_t roff = 0; roff < remote[ri].iov_len;) {
            while (li < nlocal && loff == local[li].iov_len) {
                li++;
                loff = 0;
            }
            if (li == nlocal)
                return copied;
            size_t n = remote[ri].iov_len - roff;
            if (n > local[li].iov_len - loff)
                n = local[li].iov_len - loff;
            char *l = (char *)local[li].iov_base + loff;
            char *r = (char *)remote[ri].iov_base + roff;
            int rc;
            if (self && atomic_load_explicit(&use_pipe, memory_order_relaxed)) {
                rc = to_app ? pipe_copy(r, l, n) : pipe_copy(l, r, n);
            } else {
                pid_t pid = self ? getpid() : who->pid;
                struct iovec lv = {l, n}, rv = {r, n};
                ssize_t got = to_app ? process_vm_writev(pid, &lv, 1, &rv, 1, 0)
                                     : process_vm_readv(pid, &lv, 1, &rv, 1, 0);
                rc = got == (ssize_t)n ? 0 : -1;
            }
            if (rc) {
                errno = EFAULT;
                return copied ? copied : -1;
            }
            copied += (ssize_t)n;
            roff += n;
            loff += n;
        }
    }
    return copied;
}

int um_read(const struct caller_mem *who, void *to, const void *from, size_t len)
{
    if (!len)
        return 0;
    struct iovec l = {to, len}, r = {(void *)from, len};
    if (vm_copy(who, 0, &l, 1, &r, 1) == (ssize_t)len)
        return 0;
    errno = EFAULT;
    return -1;
}

int um_write(const struct caller_mem *who, void *to, const void *from, size_t len)
{
    if (!len)
        return 0;
    struct iovec l = {(void *)from, len}, r = {to, len};
    if (vm_copy(who, 1, &l, 1, &r, 1) == (ssize_t)len)
        return 0;
    errno = EFAULT;
    return -1;
}

ssize_t um_readv(const struct caller_mem *who, const struct iovec *local, size_t nlocal,
                 const struct iovec *remote, size_t nremote)
{
    return vm_copy(who, 0, local, nlocal, remote, nremote);
}

ssize_t um_writev(const struct caller_mem *who, const struct iovec *local, size_t nlocal,
                  const struct iovec *remote, size_t nremote)
{
    return vm_copy(who, 1, local, nlocal, remote, nremote);
}

/* ---- receiving into the caller's buffers ---- */

#define RECV_ROOM (256 * 1024) /* more than any Unix datagram a server sends */

static pthread_mutex_t bounce_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char *bounce; /* another process's receives land here first */

/* The first `size` bytes of the `have` the kernel just wrote into our pieces: readable. */
static size_t gather_head(const struct iovec *iov, size_t n, size_t have, void *head, size_t size)
{
    size_t want = have < size ? have : size, done = 0;
    for (size_t i = 0; i < n && done < want; i++) {
        size_t part = iov[i].iov_len < want - done ? iov[i].iov_len : want - done;
        memcpy((char *)head + done, iov[i].iov_base, part);
        done += part;
    }
    return done;
}

ssize_t um_recvmsg(const struct caller_mem *who, int fd, struct msghdr *msg, int flags,
                   void *head, size_t *headlen)
{
    size_t headroom = *headlen;
    *headlen = 0;
    if (who->pid == 0) {
        ssize_t n = real_recvmsg(fd, msg, flags);
        if (n > 0 && headroom) {
            size_t room = 0;
            for (size_t i = 0; i < msg->msg_iovlen && room < headroom; i++)
                room += msg->msg_iov[i].iov_len;
            *headlen = gather_head(msg->msg_iov, msg->msg_iovlen,
                                   (size_t)n < room ? (size_t)n : room, head, headroom);
        }
        return n;
    }
    /* As much room as the caller's pieces have (up to more than any datagram), so that the
     * kernel's MSG_TRUNC and returned length are what the caller's buffers would give. */
    size_t room = 0;
    for (size_t i = 0; i < msg->msg_iovlen && room < RECV_ROOM; i++)
        room += msg->msg_iov[i].iov_len < RECV_ROOM ? msg->msg_iov[i].iov_len : RECV_ROOM;
    if (room > RECV_ROOM)
        room = RECV_ROOM;
    pthread_mutex_lock(&bounce_lock);
    if (!bounce && !(bounce = malloc(RECV_ROOM))) {
        pthread_mutex_unlock(&bounce_lock);
        errno = ENOBUFS;
        return -1;
    }
    struct iovec *theirs = msg->msg_iov;
    size_t ntheirs = msg->msg_iovlen;
    struct iovec ours = {bounce, room};
    msg->msg_iov = &ours;
    msg->msg_iovlen = 1;
    ssize_t n = real_recvmsg(fd, msg, flags);
    int err = errno;
    msg->msg_iov = theirs;
    msg->msg_iovlen = ntheirs;
    if (n > 0) {
        size_t have = (size_t)n < room ? (size_t)n : room;
        ours.iov_len = have;
        if (have && vm_copy(who, 1, &ours, 1, theirs, ntheirs) != (ssize_t)have) {
            n = -1;
            err = EFAULT;
        } else {
            *headlen = gather_head(&ours, 1, have, head, headroom);
        }
    }
    pthread_mutex_unlock(&bounce_lock);
    errno = err;
    return n;
}

int um_access_ok(const void *addr, size_t len)
{
    uintptr_t start = (uintptr_t)addr, end = start + len;
    if (end < start)
        return 0; /* wraps around */
    if (end <= SURELY_USER_END)
        return 1;
    if (len > (size_t)SSIZE_MAX)
        return 0;
    if (atomic_load_explicit(&use_pipe, memory_order_relaxed))
        return 0;
    /* Ask the kernel: process_vm_readv checks its local pieces with access_ok() before it
     * copies anything, and copies nothing into a piece the remote side gives no bytes for. */
    char nothing;
    struct iovec l = {(void *)addr, len}, r = {&nothing, 0};
    errno = 0;
    if (process_vm_readv(getpid(), &l, 1, &r, 1, 0) < 0 && errno == EFAULT)
        return 0;
    return 1;
}
