/*
 * A taskstats client in the style of the kernel's tools/accounting/getdelays.c: plain libc
 * netlink calls (socket, setsockopt, bind, sendto, recv) and nothing else, so that it runs
 * unmodified against the kernel and, through tsemu's LD_PRELOAD shim, against tsemu.
 * The tests compile it with -O2 -D_FORTIFY_SOURCE=2, which turns recv() into __recv_chk().
 *
 *   getdelays -p PID|self      stats of one task
 *   getdelays -t TGID|self     stats of a thread group
 *   getdelays -m CPUMASK       listen for exits on those CPUs (-n N: stop after N messages;
 *                              -w: wait for a line on stdin before reading any; -R: read
 *                              them with read(2))
 *   getdelays -C DIR           cgroupstats of a cgroup directory
 *   getdelays -F FD            cgroupstats naming descriptor FD as it is (asks for an ACK)
 *   getdelays -c CMD [ARGS]    run CMD (fork, exec), ask about the child by pid while it
 *                              runs, then wait for it (getdelays' run-a-command mode); with
 *                              -m, its exit event is read afterwards
 *   -r BYTES                   SO_RCVBUF for the socket (before bind, as getdelays does)
 *
 * Every result is one line of `key=value` words on stdout; errors are `error=NAME` lines.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/cgroupstats.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>

#define GENLMSG_DATA(glh) ((void *)((char *)NLMSG_DATA(glh) + GENL_HDRLEN))
#define GENLMSG_PAYLOAD(glh) (NLMSG_PAYLOAD(glh, 0) - GENL_HDRLEN)
#define NLA_DATA(na) ((void *)((char *)(na) + NLA_HDRLEN))
#define NLA_PAYLOAD(len) ((len) - NLA_HDRLEN)

#define MAX_MSG_SIZE 2048

struct msgtemplate {
    struct nlmsghdr n;
    struct genlmsghdr g;
    char buf[MAX_MSG_SIZE];
};

static int rcvbufsz;
static int use_read; /* -R: receive events with read(2) instead of recv(2) */
/* Not a constant, so that _FORTIFY_SOURCE calls __recv_chk / __read_chk at run time. */
size_t recv_size = sizeof(struct msgtemplate);

static const char *errname(int err)
{
    switch (err) {
    case ENOBUFS: return "ENOBUFS";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ESRCH: return "ESRCH";
    case EINVAL: return "EINVAL";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EAGAIN: return "EAGAIN";
    default: {
        static char other[32];
        snprintf(other, sizeof other, "errno%d", err);
        return other;
    }
    }
}

static int create_nl_socket(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC);
    if (fd < 0)
        return -1;
    if (rcvbufsz && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbufsz, sizeof rcvbufsz) < 0) {
        printf("error=setsockopt errno=%s\n", errname(errno));
        close(fd);
        return -1;
    }
    struct sockaddr_nl local;
    memset(&local, 0, sizeof local);
    local.nl_family = AF_NETLINK;
    if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_cmd(int fd, __u16 type, __u32 pid, __u8 cmd, __u16 flags, __u16 attr,
                    const void *data, int len)
{
    struct msgtemplate msg;
    memset(&msg, 0, sizeof msg);
    msg.n.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
    msg.n.nlmsg_type = type;
    msg.n.nlmsg_flags = NLM_F_REQUEST | flags;
    msg.n.nlmsg_seq = 0;
    msg.n.nlmsg_pid = pid;
    msg.g.cmd = cmd;
    msg.g.version = 0x1;
    struct nlattr *na = (struct nlattr *)GENLMSG_DATA(&msg);
    na->nla_type = attr;
    na->nla_len = (__u16)(len + NLA_HDRLEN);
    memcpy(NLA_DATA(na), data, (size_t)len);
    msg.n.nlmsg_len += NLMSG_ALIGN(na->nla_len);

    struct sockaddr_nl nladdr;
    memset(&nladdr, 0, sizeof nladdr);
    nladdr.nl_family = AF_NETLINK;
    char *buf = (char *)&msg;
    int buflen = (int)msg.n.nlmsg_len;
    int r;
    while ((r = (int)sendto(fd, buf, (size_t)buflen, 0, (struct sockaddr *)&nladdr,
                            sizeof nladdr)) < buflen) {
        if (r > 0) {
            buf += r;
            buflen -= r;
        } else if (errno != EAGAIN) {
            return -1;
        }
    }
    return 0;
}

/* One reply (an ACK counts); -1 with errno for a receive error or an NLMSG_ERROR. */
static int recv_reply(int fd, struct msgtemplate *ans)
{
    ssize_t len = recv(fd, ans, recv_size, 0);
    if (len < 0)
        return -1;
    if (!NLMSG_OK(&ans->n, (size_t)len)) {
        errno = EINVAL;
        return -1;
    }
    if (ans->n.nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *err = NLMSG_DATA(&ans->n);
        if (err->error) {
            errno = -err->error;
            return -1;
        }
    }
    return (int)len;
}

static int get_family_id(int fd)
{
    static const char name[] = TASKSTATS_GENL_NAME;
    struct msgtemplate ans;
    if (send_cmd(fd, GENL_ID_CTRL, (__u32)getpid(), CTRL_CMD_GETFAMILY, 0,
                 CTRL_ATTR_FAMILY_NAME, name, sizeof name) < 0)
        return -1;
    if (recv_reply(fd, &ans) < 0)
        return -1;
    struct nlattr *na = (struct nlattr *)GENLMSG_DATA(&ans);
    na = (struct nlattr *)((char *)na + NLA_ALIGN(na->nla_len));
    if (na->nla_type != CTRL_ATTR_FAMILY_ID)
        return 0;
    return *(__u16 *)NLA_DATA(na);
}

static void print_stats(const char *what, __u32 id, const struct taskstats *t)
{
    char comm[TS_COMM_LEN + 1];
    memcpy(comm, t->ac_comm, TS_COMM_LEN);
    comm[TS_COMM_LEN] = '\0';
    for (char *c = comm; *c; c++)
        if (*c == ' ')
            *c = '_';
    printf("%s=%u version=%u comm=%s pid=%u ppid=%u tgid=%u uid=%u exitcode=%u flag=0x%x "
           "cpu_count=%llu cpu_delay_total=%llu blkio_count=%llu blkio_delay_total=%llu "
           "swapin_count=%llu freepages_count=%llu thrashing_count=%llu "
           "utime=%llu stime=%llu etime=%llu minflt=%llu majflt=%llu "
           "read_bytes=%llu write_bytes=%llu nvcsw=%llu nivcsw=%llu\n",
           what, id, t->version, comm[0] ? comm : "-", t->ac_pid, t->ac_ppid, t->ac_tgid,
           t->ac_uid, t->ac_exitcode, t->ac_flag,
           (unsigned long long)t->cpu_count, (unsigned long long)t->cpu_delay_total,
           (unsigned long long)t->blkio_count, (unsigned long long)t->blkio_delay_total,
           (unsigned long long)t->swapin_count, (unsigned long long)t->freepages_count,
           (unsigned long long)t->thrashing_count,
           (unsigned long long)t->ac_utime, (unsigned long long)t->ac_stime,
           (unsigned long long)t->ac_etime, (unsigned long long)t->ac_minflt,
           (unsigned long long)t->ac_majflt, (unsigned long long)t->read_bytes,
           (unsigned long long)t->write_bytes, (unsigned long long)t->nvcsw,
           (unsigned long long)t->nivcsw);
}

/* Print every AGGR_PID / AGGR_TGID record of one TASKSTATS_CMD_NEW message. */
static void print_records(struct msgtemplate *msg, int len, const char *prefix)
{
    int rep_len = (int)GENLMSG_PAYLOAD(&msg->n);
    struct nlattr *na = (struct nlattr *)GENLMSG_DATA(msg);
    int at = 0;
    (void)len;
    while (at < rep_len) {
        int aggr_len = NLA_PAYLOAD(na->nla_len);
        if (na->nla_type == TASKSTATS_TYPE_AGGR_PID || na->nla_type == TASKSTATS_TYPE_AGGR_TGID) {
            const char *what = na->nla_type == TASKSTATS_TYPE_AGGR_PID ? "pid" : "tgid";
            __u32 id = 0;
            struct nlattr *in = (struct nlattr *)NLA_DATA(na);
            int off = 0;
            while (off < aggr_len) {
                if (in->nla_type == TASKSTATS_TYPE_PID || in->nla_type == TASKSTATS_TYPE_TGID)
                    id = *(__u32 *)NLA_DATA(in);
                else if (in->nla_type == TASKSTATS_TYPE_STATS) {
                    printf("%s", prefix);
                    print_stats(what, id, (struct taskstats *)NLA_DATA(in));
                } /* anything else (TASKSTATS_TYPE_NULL padding) is skipped */
                off += NLA_ALIGN(in->nla_len);
                in = (struct nlattr *)((char *)in + NLA_ALIGN(in->nla_len));
            }
        }
        at += NLA_ALIGN(na->nla_len);
        na = (struct nlattr *)((char *)na + NLA_ALIGN(na->nla_len));
    }
}

static int query(int fd, int family, __u16 attr, __u32 id)
{
    struct msgtemplate msg;
    if (send_cmd(fd, (__u16)family, (__u32)getpid(), TASKSTATS_CMD_GET, 0, attr, &id,
                 sizeof id) < 0 ||
        recv_reply(fd, &msg) < 0) {
        printf("error=%s\n", errname(errno));
        return 1;
    }
    print_records(&msg, 0, "");
    return 0;
}

static int register_mask(int fd, int family, const char *mask)
{
    struct msgtemplate msg;
    if (send_cmd(fd, (__u16)family, (__u32)getpid(), TASKSTATS_CMD_GET, NLM_F_ACK,
                 TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, mask, (int)strlen(mask) + 1) < 0 ||
        recv_reply(fd, &msg) < 0) {
        printf("error=%s\n", errname(errno));
        return -1;
    }
    printf("registered cpumask=%s\n", mask);
    fflush(stdout);
    return 0;
}

/* Print `count` exit events (0: for ever). */
static int read_exits(int fd, int count)
{
    struct msgtemplate msg;
    for (int seen = 0; count <= 0 || seen < count;) {
        ssize_t len = use_read ? read(fd, &msg, recv_size) : recv(fd, &msg, recv_size, 0);
        if (len < 0) {
            printf("error=%s\n", errname(errno));
            fflush(stdout);
            if (errno == ENOBUFS)
                continue; /* what getdelays does: "nonfatal reply error" */
            return 1;
        }
        if (msg.n.nlmsg_type == NLMSG_ERROR)
            continue;
        print_records(&msg, (int)len, "exit ");
        fflush(stdout);
        seen++;
    }
    return 0;
}

static int listen_exits(int fd, int family, const char *mask, int count, int wait_stdin)
{
    if (register_mask(fd, family, mask) < 0)
        return 1;
    if (wait_stdin) {
        char line[64];
        if (!fgets(line, sizeof line, stdin))
            return 1;
    }
    if (read_exits(fd, count))
        return 1;
    send_cmd(fd, (__u16)family, (__u32)getpid(), TASKSTATS_CMD_GET, 0,
             TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, mask, (int)strlen(mask) + 1);
    return 0;
}

static int cgroupstats(int fd, int family, int cfd)
{
    struct msgtemplate msg;
    __u32 value = (__u32)cfd;
    if (send_cmd(fd, (__u16)family, (__u32)getpid(), CGROUPSTATS_CMD_GET, NLM_F_ACK,
                 CGROUPSTATS_CMD_ATTR_FD, &value, sizeof value) < 0) {
        printf("error=%s\n", errname(errno));
        return 1;
    }
    for (;;) {
        ssize_t len = recv(fd, &msg, recv_size, 0);
        if (len < 0) {
            printf("error=%s\n", errname(errno));
            return 1;
        }
        if (msg.n.nlmsg_type == NLMSG_ERROR) {
            struct nlmsgerr *err = NLMSG_DATA(&msg.n);
            if (err->error) {
                printf("error=%s\n", errname(-err->error));
                return 1;
            }
            printf("ack\n");
            return 0;
        }
        struct nlattr *na = (struct nlattr *)GENLMSG_DATA(&msg);
        if (na->nla_type == CGROUPSTATS_TYPE_CGROUP_STATS) {
            struct cgroupstats *c = NLA_DATA(na);
            printf("cgroupstats sleeping=%llu running=%llu stopped=%llu uninterruptible=%llu "
                   "io_wait=%llu\n", (unsigned long long)c->nr_sleeping,
                   (unsigned long long)c->nr_running, (unsigned long long)c->nr_stopped,
                   (unsigned long long)c->nr_uninterruptible,
                   (unsigned long long)c->nr_io_wait);
        }
    }
}

static __u32 id_arg(const char *arg)
{
    return strcmp(arg, "self") == 0 ? (__u32)getpid() : (__u32)strtoul(arg, NULL, 10);
}

int main(int argc, char **argv)
{
    const char *pid = NULL, *tgid = NULL, *mask = NULL, *cgroup = NULL;
    int count = 0, wait_stdin = 0, rawfd = -1, opt;
    setvbuf(stdout, NULL, _IOLBF, 0);
    char **command = NULL;
    while ((opt = getopt(argc, argv, "+p:t:m:n:wRC:F:r:c")) != -1) {
        switch (opt) {
        case 'p': pid = optarg; break;
        case 't': tgid = optarg; break;
        case 'm': mask = optarg; break;
        case 'n': count = atoi(optarg); break;
        case 'w': wait_stdin = 1; break;
        case 'R': use_read = 1; break;
        case 'C': cgroup = optarg; break;
        case 'F': rawfd = atoi(optarg); break;
        case 'r': rcvbufsz = atoi(optarg); break;
        case 'c': command = argv + optind; break;
        default:
            fprintf(stderr, "usage: %s [-r BYTES] -p PID | -t TGID | -m MASK [-n N] [-w] [-R] "
                    "| -C DIR | -F FD\n", argv[0]);
            return 2;
        }
    }
    int fd = create_nl_socket();
    if (fd < 0) {
        printf("error=%s\n", errname(errno));
        return 1;
    }
    int family = get_family_id(fd);
    if (family <= 0) {
        printf("error=%s\n", family < 0 ? errname(errno) : "nofamily");
        return 1;
    }
    printf("family=TASKSTATS id=0x%x\n", family);
    int rc = 0;
    if (pid)
        rc |= query(fd, family, TASKSTATS_CMD_ATTR_PID, id_arg(pid));
    if (tgid)
        rc |= query(fd, family, TASKSTATS_CMD_ATTR_TGID, id_arg(tgid));
    if (cgroup) {
        int cfd = open(cgroup, O_RDONLY);
        if (cfd < 0) {
            printf("error=open\n");
            return 1;
        }
        rc |= cgroupstats(fd, family, cfd);
        close(cfd);
    }
    if (rawfd >= 0)
        rc |= cgroupstats(fd, family, rawfd);
    if (command && *command) {
        if (mask && register_mask(fd, family, mask) < 0)
            return 1;
        pid_t child = fork();
        if (child == 0) {
            execvp(command[0], command);
            _exit(127);
        }
        rc |= query(fd, family, TASKSTATS_CMD_ATTR_PID, (__u32)child);
        int status;
        if (waitpid(child, &status, 0) == child)
            printf("child=%d status=%d\n", (int)child, status);
        if (mask)
            rc |= read_exits(fd, count);
        close(fd);
        return rc;
    }
    if (mask)
        rc |= listen_exits(fd, family, mask, count, wait_stdin);
    close(fd);
    return rc;
}
