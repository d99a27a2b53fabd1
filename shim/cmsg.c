/*
 * cmsg.c: the kernel's put_cmsg() (net/core/scm.c) for the control messages a netlink
 * receive gives (SCM_CREDENTIALS, NETLINK_PKTINFO): what one message's bytes are in a buffer
 * of a given room, whether it is cut (MSG_CTRUNC), and how far the buffer then moves on.
 * Shared at source level by the shim (io.c) and the supervisor (supervisor/calls.c), which
 * differ only in how they write the application's memory.
 */
#include "shim.h"

#include <string.h>

size_t nl_cmsg_build(unsigned char out[NL_CMSG_MAX], size_t room, int level, int type,
                     const void *data, size_t len, int *msg_flags, size_t *step)
{
    *step = 0;
    if (room < sizeof(struct cmsghdr)) { /* no buffer, or not even a header fits */
        *msg_flags |= MSG_CTRUNC;
        return 0;
    }
    size_t cmlen = CMSG_LEN(len);
    if (room < cmlen) {
        *msg_flags |= MSG_CTRUNC;
        cmlen = room;
    }
    struct cmsghdr head = {.cmsg_len = cmlen, .cmsg_level = level, .cmsg_type = type};
    memset(out, 0, NL_CMSG_MAX);
    memcpy(out, &head, sizeof head);
    memcpy(out + CMSG_LEN(0), data, len);
    *step = CMSG_SPACE(len) < room ? CMSG_SPACE(len) : room;
    return cmlen;
}
