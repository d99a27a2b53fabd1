/*
 * A delaytop-style client: the way the kernel's tools/accounting/delaytop.c, iotop and most
 * exporters find their tasks. It lists /proc with opendir/readdir, reads each numeric
 * entry's comm with fopen, asks TASKSTATS_CMD_GET for that pid over plain libc netlink
 * calls, and prints the tasks sorted by a delay total, the largest first:
 *
 *   delaytop_lite [-s blkio|cpu|swapin|freepages|thrashing|compact|wpcopy] [-n N]
 *
 * (struct taskstats as the build's uapi header has it: v13 on Debian 12, no irq delays.)
 *
 * One line per task: `pid=N comm=NAME delay_ns=N cpu_ns=N read_bytes=N write_bytes=N`.
 * A pid that is gone by the time it is asked (ESRCH) is skipped, as delaytop skips it.
 * A last line `listed=N asked=N` says how many /proc entries it saw and asked about.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>

#define ATTR_DATA(na) ((void *)((char *)(na) + NLA_HDRLEN))

struct request {
    struct nlmsghdr n;
    struct genlmsghdr g;
    char buf[256];
};

struct row {
    int pid;
    char comm[64];
    unsigned long long delay, cpu, read_bytes, write_bytes;
};

static int nl_fd;
static unsigned short family;

static int ask(unsigned short type, unsigned char cmd, unsigned short attr, const void *data,
               int len, char *reply, size_t size)
{
    struct request req;
    memset(&req, 0, sizeof req);
    req.n.nlmsg_type = type;
    req.n.nlmsg_flags = NLM_F_REQUEST;
    req.n.nlmsg_pid = (unsigned)getpid();
    req.g.cmd = cmd;
    req.g.version = 1;
    struct nlattr *na = (struct nlattr *)((char *)NLMSG_DATA(&req.n) + GENL_HDRLEN);
    na->nla_type = attr;
    na->nla_len = (unsigned short)(NLA_HDRLEN + len);
    memcpy(ATTR_DATA(na), data, (size_t)len);
    req.n.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN) + NLA_ALIGN(na->nla_len);
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(nl_fd, &req, req.n.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        return -1;
    ssize_t got = recv(nl_fd, reply, size, 0);
    if (got < 0)
        return -1;
    struct nlmsghdr *n = (struct nlmsghdr *)reply;
    if (!NLMSG_OK(n, (size_t)got)) {
        errno = EINVAL;
        return -1;
    }
    if (n->nlmsg_type == NLMSG_ERROR) {
        errno = -((struct nlmsgerr *)NLMSG_DATA(n))->error;
        return -1;
    }
    return (int)got;
}

/* The attributes of a genetlink reply, walked: calls `found` for each (nested included). */
static void walk(char *start, int len, void (*found)(struct nlattr *, void *), void *ctx)
{
    while (len >= NLA_HDRLEN) {
        struct nlattr *na = (struct nlattr *)start;
        if (na->nla_len < NLA_HDRLEN || na->nla_len > len)
            return;
        found(na, ctx);
        if (na->nla_type == TASKSTATS_TYPE_AGGR_PID || na->nla_type == TASKSTATS_TYPE_AGGR_TGID)
            walk((char *)ATTR_DATA(na), na->nla_len - NLA_HDRLEN, found, ctx);
        len -= NLA_ALIGN(na->nla_len);
        start += NLA_ALIGN(na->nla_len);
    }
}

static void family_id(struct nlattr *na, void *ctx)
{
    if (na->nla_type == CTRL_ATTR_FAMILY_ID)
        *(unsigned short *)ctx = *(unsigned short *)ATTR_DATA(na);
}

static const char *sort_key = "blkio";

static void stats(struct nlattr *na, void *ctx)
{
    if (na->nla_type != TASKSTATS_TYPE_STATS)
        return;
    struct taskstats ts;
    memset(&ts, 0, sizeof ts);
    size_t have = (size_t)(na->nla_len - NLA_HDRLEN);
    memcpy(&ts, ATTR_DATA(na), have < sizeof ts ? have : sizeof ts);
    struct row *row = ctx;
    unsigned long long delays[] = {ts.blkio_delay_total, ts.cpu_delay_total,
                                   ts.swapin_delay_total, ts.freepages_delay_total,
                                   ts.thrashing_delay_total, ts.compact_delay_total,
                                   ts.wpcopy_delay_total};
    const char *names[] = {"blkio", "cpu", "swapin", "freepages", "thrashing", "compact",
                           "wpcopy"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i], sort_key) == 0)
            row->delay = delays[i];
    row->cpu = ts.cpu_run_real_total;
    row->read_bytes = ts.read_bytes;
    row->write_bytes = ts.write_bytes;
}

static int by_delay(const void *a, const void *b)
{
    const struct row *x = a, *y = b;
    if (x->delay != y->delay)
        return x->delay < y->delay ? 1 : -1;
    return x->pid - y->pid;
}

int main(int argc, char **argv)
{
    int limit = 1 << 30, opt;
    while ((opt = getopt(argc, argv, "s:n:")) != -1) {
        if (opt == 's')
            sort_key = optarg;
        else if (opt == 'n')
            limit = atoi(optarg);
        else
            return 2;
    }
    nl_fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC);
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (nl_fd < 0 || bind(nl_fd, (struct sockaddr *)&local, sizeof local) < 0) {
        printf("error=socket errno=%d\n", errno);
        return 1;
    }
    static char reply[8192];
    int got = ask(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME,
                  TASKSTATS_GENL_NAME, sizeof TASKSTATS_GENL_NAME, reply, sizeof reply);
    if (got < 0) {
        printf("error=getfamily errno=%d\n", errno);
        return 1;
    }
    struct nlmsghdr *n = (struct nlmsghdr *)reply;
    walk((char *)NLMSG_DATA(n) + GENL_HDRLEN, (int)n->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN),
         family_id, &family);

    DIR *proc = opendir("/proc");
    if (!proc) {
        printf("error=opendir errno=%d\n", errno);
        return 1;
    }
    size_t cap = 64, count = 0;
    int listed = 0, asked = 0;
    struct row *rows = calloc(cap, sizeof *rows);
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL) {
        if (!isdigit((unsigned char)entry->d_name[0]))
            continue;
        listed++;
        struct row row;
        memset(&row, 0, sizeof row);
        row.pid = atoi(entry->d_name);
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/comm", row.pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* gone meanwhile */
        if (!fgets(row.comm, sizeof row.comm, f))
            row.comm[0] = '\0';
        fclose(f);
        row.comm[strcspn(row.comm, "\n")] = '\0';
        __u32 pid = (__u32)row.pid;
        asked++;
        got = ask(family, TASKSTATS_CMD_GET, TASKSTATS_CMD_ATTR_PID, &pid, sizeof pid, reply,
                  sizeof reply);
        if (got < 0) {
            if (errno == ESRCH)
                continue;
            printf("error=get pid=%d errno=%d\n", row.pid, errno);
            return 1;
        }
        n = (struct nlmsghdr *)reply;
        walk((char *)NLMSG_DATA(n) + GENL_HDRLEN, (int)n->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN),
             stats, &row);
        if (count == cap)
            rows = realloc(rows, (cap *= 2) * sizeof *rows);
        rows[count++] = row;
    }
    closedir(proc);
    qsort(rows, count, sizeof *rows, by_delay);
    for (size_t i = 0; i < count && (int)i < limit; i++)
        printf("pid=%d comm=%s delay_ns=%llu cpu_ns=%llu read_bytes=%llu write_bytes=%llu\n",
               rows[i].pid, rows[i].comm, rows[i].delay, rows[i].cpu, rows[i].read_bytes,
               rows[i].write_bytes);
    printf("listed=%d asked=%d\n", listed, asked);
    free(rows);
    return 0;
}
