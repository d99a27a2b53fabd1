/*
 * The functions the shim wraps, as the next library in the lookup order defines them (libc).
 *
 * They are resolved with dlsym(RTLD_NEXT) once, before the first wrapped call needs one:
 * the library constructor does it, but another library's constructor may call socket() or
 * close() before ours runs, so every wrapper calls shim_resolve() first (a cheap check).
 */
#include "shim.h"

#include <dlfcn.h>
#include <stdatomic.h>

int (*real_socket)(int, int, int);
int (*real_bind)(int, const struct sockaddr *, socklen_t);
int (*real_connect)(int, const struct sockaddr *, socklen_t);
int (*real_getsockname)(int, struct sockaddr *, socklen_t *);
int (*real_getpeername)(int, struct sockaddr *, socklen_t *);
ssize_t (*real_send)(int, const void *, size_t, int);
ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
int (*real_sendmmsg)(int, struct mmsghdr *, unsigned int, int);
ssize_t (*real_recv)(int, void *, size_t, int);
ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
ssize_t (*real_recvmsg)(int, struct msghdr *, int);
int (*real_recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
ssize_t (*real_read)(int, void *, size_t);
ssize_t (*real_write)(int, const void *, size_t);
ssize_t (*real_readv)(int, const struct iovec *, int);
ssize_t (*real_writev)(int, const struct iovec *, int);
int (*real_close)(int);
int (*real_dup)(int);
int (*real_dup2)(int, int);
int (*real_dup3)(int, int, int);
int (*real_fcntl)(int, int, ...);
int (*real_fcntl64)(int, int, ...);
int (*real_close_range)(unsigned int, unsigned int, int);
void (*real_closefrom)(int);
int (*real_setsockopt)(int, int, int, const void *, socklen_t);
int (*real_getsockopt)(int, int, int, void *, socklen_t *);
int (*real_ioctl)(int, unsigned long, ...);
ssize_t (*real___recv_chk)(int, void *, size_t, size_t, int);
ssize_t (*real___recvfrom_chk)(int, void *, size_t, size_t, int, struct sockaddr *,
                               socklen_t *);
ssize_t (*real___read_chk)(int, void *, size_t, size_t);

static atomic_int resolved;

#define RESOLVE(name) (*(void **)&real_##name = dlsym(RTLD_NEXT, #name))

void shim_resolve(void)
{
    if (atomic_load_explicit(&resolved, memory_order_acquire))
        return;
    /* Two threads may race through here: both store the same pointers, which is harmless. */
    RESOLVE(socket);
    RESOLVE(bind);
    RESOLVE(connect);
    RESOLVE(getsockname);
    RESOLVE(getpeername);
    RESOLVE(send);
    RESOLVE(sendto);
    RESOLVE(sendmsg);
    RESOLVE(sendmmsg);
    RESOLVE(recv);
    RESOLVE(recvfrom);
    RESOLVE(recvmsg);
    RESOLVE(recvmmsg);
    RESOLVE(read);
    RESOLVE(write);
    RESOLVE(readv);
    RESOLVE(writev);
    RESOLVE(close);
    RESOLVE(dup);
    RESOLVE(dup2);
    RESOLVE(dup3);
    RESOLVE(fcntl);
    RESOLVE(fcntl64);
    RESOLVE(close_range); /* glibc 2.34 and newer; NULL before */
    RESOLVE(closefrom);   /* likewise */
    RESOLVE(setsockopt);
    RESOLVE(getsockopt);
    RESOLVE(ioctl);
    RESOLVE(__recv_chk);
    RESOLVE(__recvfrom_chk);
    RESOLVE(__read_chk);
    if (!real_fcntl64)
        real_fcntl64 = real_fcntl;
    atomic_store_explicit(&resolved, 1, memory_order_release);
}
