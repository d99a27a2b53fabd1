"""The host mirror: pids the process table does not know, answered from the host's /proc.

`HostMirror` wraps any `kernel.TaskSource` (normally a `tasks.ProcessTable`) and is one itself.
A GET by PID or TGID goes to the table first; only an id the table answers with LookupError is
looked up on the host, so a scenario's task shadows the host task with the same number. An id
neither knows raises the table's own LookupError (the kernel's ESRCH). CGROUPSTATS is the
table's alone. Any other attribute (`spawn`, `clock`, ...) is the table's, so the mirror can
stand wherever the table stood.

Where the values come from. Every file is a task's own, read through one directory
descriptor of /proc/<tid>/task/<tid>: procfs resolves any thread's tid under the task/
directory of any thread of the same group, so this is the same directory as
/proc/<tgid>/task/<tid> without first reading /proc/<tid>/status for the Tgid. The per-task
directory matters: /proc/<tgid>/stat and /proc/<tgid>/io of a process sum all its threads,
while the kernel's PID record is the one task's. The directory descriptor pins the task: if it
exits (and its pid is reused) between two reads, the next read fails instead of reading
another process. Conversions into struct taskstats are `accounting`'s own rules
(`accounting.pid_record` and `accounting.tgid_query` run on a `_HostTask` built from /proc),
so a mirrored record rounds, sums and drops fields of other versions exactly as a table
task's. stat <n> is the n-th field of /proc/.../stat (proc(5) numbering, 1 = pid); CLK_TCK is
sysconf(_SC_CLK_TCK) (100 on x86_64: a tick is 10 ms).

=========================  ==========================================  ===========================
field                      source                                      conversion
=========================  ==========================================  ===========================
version                    the profile                                 taskstats_version
ac_comm                    stat 2 (between the first '(' and the LAST  raw bytes, cut to 15; a
                           ')': a comm may hold spaces, parentheses)   workqueue worker's "+desc"
                                                                       / "-desc" suffix dropped
ac_pid                     the tid asked for                           as is
ac_tgid                    status Tgid                                 as is
ac_ppid                    stat 4 (the real parent's tgid)             as is
ac_uid, ac_gid             status Uid, Gid (first column: real ids)    as is
ac_nice                    stat 19                                     as a u8 (-5 reads 251)
ac_sched                   stat 41 policy                              as is
ac_flag                    stat 9 flags: PF_FORKNOEXEC 0x40 (leader    AFORK, ASU, ACORE, AXSIG
                           only), PF_SUPERPRIV 0x100, PF_DUMPCORE
                           0x200, PF_SIGNALED 0x400
ac_exitcode                stat 52 exit_code, for a leader with        as is (0 otherwise)
                           PF_EXITING 0x4 (a zombie)
ac_etime                   CLOCK_BOOTTIME now - stat 22 starttime      ticks * 10**9/CLK_TCK ns,
                           (the clock /proc/uptime shows, unrounded)   then ns // 1000 (µs)
ac_tgetime                 the same from the group leader's stat 22    µs
ac_btime, ac_btime64       wall seconds now - ac_etime // 10**6        the kernel's own formula;
                           (not /proc/stat btime: same value within    ac_btime clamped to u32
                           1 s, without reading the big /proc/stat)
ac_utime, ac_stime         stat 14 utime, 15 stime (ticks)             ticks -> ns -> ns // 1000
ac_utimescaled, ..stime..  the same (x86: no frequency scaling)        the same
ac_minflt, ac_majflt       stat 10, stat 12                            as is
cpu_count                  schedstat 3rd field (timeslices, pcount)    as is
cpu_delay_total            schedstat 2nd field (run_delay, ns)         as is
cpu_run_real_total         stat 14 + 15                                ticks -> ns
cpu_run_virtual_total      schedstat 1st field (sum_exec_runtime, ns)  as is
cpu_scaled_run_real_total  stat 14 + 15                                ticks -> ns
blkio_delay_total          stat 42 delayacct_blkio_ticks               ticks -> ns
blkio_count                not in /proc                                1 if the total is non-zero
                                                                       else 0 (see below)
hiwater_rss, hiwater_vm    status VmHWM, VmPeak (kB)                   as is (KiB); 0 without mm
read_char, write_char      io rchar, wchar                             rounded DOWN to a
read_syscalls, write_sys.  io syscr, syscw                             multiple of 1024, like
read_bytes, write_bytes    io read_bytes, write_bytes                  the kernel (the syscall
cancelled_write_bytes      io cancelled_write_bytes                    counts too); 0 if io is
                                                                       unreadable (EACCES)
nvcsw, nivcsw              status voluntary_ctxt_switches,             as is
                           nonvoluntary_ctxt_switches
ac_exe_dev, ac_exe_inode   stat(2) of exe (the link followed)          dev as huge_encode_dev:
                                                                       (minor & 0xff) | major<<8
                                                                       | (minor & ~0xff) << 12;
                                                                       0 if unreadable / no mm
coremem, virtmem           status VmRSS, VmSize (KiB) x schedstat's    KiB * (ns >> 10) // 1000
                           sum_exec_runtime: the integral as if the    (MB-usec, as xacct_add_tsk)
                           process had always had today's sizes
everything else            not in /proc: the other
                           delay categories, every _delay_max/_min
                           and _delay_max_ts
=========================  ==========================================  ===========================

A TGID query sums, over the live threads listed in /proc/<tgid>/task (zombies skipped, as
the kernel skips tasks with an exit_state), each thread's delay fields above plus its etime,
utime, stime, nvcsw and nivcsw (`accounting.tgid_query`); everything else stays zero. The
kernel adds these to the group's accumulation of already-exited threads (signal->stats),
which /proc does not show: a mirrored TGID record counts the live threads only. A thread that
exits while the group is being read is left out.

Known differences from the kernel's own record (see tests/test_hostmirror.py, which compares
them on the host):

- ac_utime, ac_stime, cpu_run_real_total: /proc gives the times whole ticks and *adjusted*
  (cputime_adjust scales them so that their sum follows sum_exec_runtime); taskstats gives the
  raw task_cputime in µs. They differ by a few ticks.
- ac_etime, ac_tgetime: starttime is in whole ticks, and on the boot-time clock; the kernel
  measures on the monotonic clock, so a process that lived through a suspend looks older here
  by the time the machine slept. ac_btime follows from ac_etime, as in the kernel.
- hiwater_rss: status reads the mm's RSS counters exactly (percpu_counter_sum); taskstats
  reads their approximate central value, which lags by up to the per-CPU batches.
- blkio_count: /proc shows only the blkio delay total, rounded down to ticks. The count is 1
  when that total is non-zero: a lower bound that keeps averages (total / count) finite, and
  never the kernel's overflow signature (count non-zero, total zero).
- ac_exe_dev / ac_exe_inode come from stat(2), which on overlayfs and btrfs reports the
  overlay's or the subvolume's device where the kernel reports the inode's superblock.

Errors: a task whose directory is missing, or which vanishes between two reads (its stat or
status cannot be read, or io, schedstat or exe fail with ENOENT/ESRCH and its stat is gone
afterwards), is unknown: the table's LookupError. Unparsable files count as vanished. No
other exception leaves `pid_stats` / `tgid_stats` because of the host. Nothing is cached:
each call reads /proc afresh (stat, status, schedstat, io and a stat(2) of exe for a PID, plus
the leader's stat for a thread; stat, status and schedstat per thread for a TGID): about 50 µs
for a PID on the measured host.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from tsemu.wire.constants import AcFlag

from ..model import accounting
from ..model.kernel import TaskSource
from ..model.profiles import KernelProfile
from ..model.tasks import ExitReport

if TYPE_CHECKING:
    from ..model.tasks import Task

# task->flags bits as stat field 9 shows them (include/linux/sched.h).
PF_EXITING = 0x00000004
PF_WQ_WORKER = 0x00000020
PF_FORKNOEXEC = 0x00000040
PF_SUPERPRIV = 0x00000100
PF_DUMPCORE = 0x00000200
PF_SIGNALED = 0x00000400

#: TASK_COMM_LEN - 1.
COMM_MAX = 15
#: A regular workqueue worker's comm ("kworker/3:1H", "kworker/u8:2"), which /proc shows with
#: "+desc" (running a work item) or "-desc" (idle) appended.
_KWORKER = re.compile(rb"kworker/u?\d+:\d+H?(?=[+-])")

#: Errors that mean "no such task (any more)" rather than "not allowed to read this".
_GONE = frozenset({errno.ENOENT, errno.ESRCH})

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def huge_encode_dev(major: int, minor: int) -> int:
    """The kernel's huge_encode_dev (new_encode_dev): how ac_exe_dev encodes a device."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def _boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _wall_seconds() -> int:
    return int(time.time())


@dataclass
class _HostTask:
    """What `accounting` reads from a `tasks.Task`, filled from /proc."""

    tid: int
    tgid: int
    ppid: int
    comm: bytes
    uid: int
    gid: int
    nice: int
    policy: int
    start_ns: int
    exit_code: int | None
    forked_no_exec: bool
    superuser: bool
    dumped_core: bool
    signaled: bool
    zombie: bool
    #: the CPU it last ran on (stat 39)
    cpu: int = 0
    counter_map: dict[str, int] = field(default_factory=dict)
    max_ts_map: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def is_leader(self) -> bool:
        return self.tid == self.tgid


class _Vanished(Exception):
    """The task is not there (any more), or its files make no sense."""


def _read(dfd: int, name: str) -> bytes:
    """The whole of file `name` in directory `dfd`."""
    fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _split_stat(raw: bytes) -> tuple[int, bytes, list[bytes]]:
    """(pid, comm, fields from field 3 on) of a stat line. The comm is everything between the
    first '(' and the LAST ')', whatever it holds."""
    head, paren, rest = raw.rpartition(b")")
    pid, open_paren, comm = head.partition(b"(")
    if not paren or not open_paren:
        raise _Vanished("stat: no (comm)")
    fields = rest.split()
    if len(fields) < 20:
        raise _Vanished(f"stat: {len(fields) + 2} fields")
    return int(pid), comm, fields


def _stat_field(fields: list[bytes], number: int) -> int:
    """Field `number` (proc(5) numbering) as an int; 0 when this kernel does not show it."""
    index = number - 3
    return int(fields[index]) if index < len(fields) else 0


def _status(raw: bytes) -> dict[bytes, bytes]:
    out = {}
    for line in raw.splitlines():
        key, colon, value = line.partition(b":")
        if colon:
            out[key] = value.strip()
    return out


def _kib(value: bytes | None) -> int:
    """A status "   1836 kB" value in KiB (0 when absent: no mm)."""
    return int(value.split()[0]) if value else 0


def _comm(comm: bytes, flags: int) -> bytes:
    """task->comm as taskstats shows it, from the name /proc shows."""
    if flags & PF_WQ_WORKER:
        worker = _KWORKER.match(comm)
        if worker:
            comm = worker.group(0)
    return comm.split(b"\0", 1)[0][:COMM_MAX]


class HostMirror:
    """A TaskSource answering from `table`, else from the host's /proc (see the module doc).

    `proc`, `clk_tck`, `boottime_ns` and `wall_seconds` default to the host's /proc, CLK_TCK,
    CLOCK_BOOTTIME and wall clock; tests give a fake /proc tree and fixed clocks."""

    #: Host tasks change all the time: no PID reply is kept (see `PidReplyCache`).
    versioned_records = False

    def __init__(self, table: TaskSource, profile: KernelProfile, *, proc: str = "/proc",
                 clk_tck: int | None = None, boottime_ns: Callable[[], int] = _boottime_ns,
                 wall_seconds: Callable[[], int] = _wall_seconds) -> None:
        self.table = table
        self.profile = profile
        self.proc = os.fspath(proc).rstrip("/") or "/"
        tck = clk_tck if clk_tck is not None else os.sysconf("SC_CLK_TCK")
        if tck <= 0:
            raise ValueError(f"clk_tck must be positive, not {tck}")
        self._ns_per_tick = 10**9 // tck
        self._boottime_ns = boottime_ns
        self._wall_seconds = wall_seconds

    def __getattr__(self, name: str) -> Any:
        # Only called for what HostMirror itself lacks: the table's API (spawn, clock, ...).
        if name == "table":
            raise AttributeError(name)
        return getattr(self.table, name)

    # --- TaskSource -----------------------------------------------------------------------

    def pid_stats(self, tid: int) -> Mapping[str, Any]:
        """The table's PID record for `tid`, else the host task's, else the table's
        LookupError."""
        try:
            return self.table.pid_stats(tid)
        except LookupError:
            stats = self.host_pid_stats(tid)
            if stats is None:
                raise
            return stats

    def tgid_stats(self, tgid: int) -> Mapping[str, Any]:
        """The table's TGID record for `tgid`, else the host process's (its live threads
        summed), else the table's LookupError."""
        try:
            return self.table.tgid_stats(tgid)
        except LookupError:
            stats = self.host_tgid_stats(tgid)
            if stats is None:
                raise
            return stats

    def cgroup_counts(self, path: str) -> Mapping[str, int] | None:
        return self.table.cgroup_counts(path)

    # --- the host -------------------------------------------------------------------------

    def host_pid_stats(self, tid: int) -> dict[str, Any] | None:
        """The PID record of host task `tid` from /proc, or None if there is no such task."""
        if tid <= 0:
            return None
        try:
            task = self._task(f"{self.proc}/{tid}/task/{tid}", tid, full=True)
            leader_start_ns = task.start_ns
            if not task.is_leader:
                leader_start_ns = self._leader_start_ns(task)
            now = max(self._boottime_ns(), task.start_ns, leader_start_ns)
            stats = accounting.pid_record(
                cast("Task", task), leader_start_ns=leader_start_ns, now_ns=now,
                wall_seconds=self._wall_seconds(), profile=self.profile)
        except _Vanished:
            return None
        return stats

    def host_tgid_stats(self, tgid: int) -> dict[str, Any] | None:
        """The TGID record of the host process that task `tgid` belongs to, summed over its
        live threads, or None if there is no such task."""
        if tgid <= 0:
            return None
        base = f"{self.proc}/{tgid}/task"
        try:
            names = os.listdir(base)
        except OSError:
            return None
        threads = []
        for name in names:
            if not name.isdigit():
                continue
            try:
                task = self._task(f"{base}/{name}", int(name), full=False)
            except _Vanished:
                continue  # exited meanwhile: the kernel would have it in signal->stats
            if not task.zombie:
                threads.append(task)
        if not threads and not os.path.isdir(base):
            return None
        now = max([self._boottime_ns(), *(t.start_ns for t in threads)])
        return accounting.tgid_query(None, cast("list[Task]", threads), now_ns=now,
                                     profile=self.profile)

    def host_exit_report(self, tid: int, *, nr_cpus: int, threaded: bool
                         ) -> ExitReport | None:
        """What the kernel broadcast when host process `tid` exited, read from its zombie (its
        parent has not reaped it yet; its other threads are gone): the leader's PID record
        with AGROUP and its exit code and signal flags, and, for a process that had threads
        (`threaded`), an AGGR_TGID record. None if `tid` is not a zombie group leader.

        The event goes to emulated CPU (host CPU it last ran on) mod `nr_cpus`. Limits: the
        threads that died before the leader are not in /proc any more, so they get no PID
        record and the AGGR_TGID record holds the leader's own share; a zombie has no mm, so
        hiwater_rss, hiwater_vm and the exe are 0; nvcsw and nivcsw count the few switches the
        dying task made after the kernel took its record (measured: up to 3)."""
        try:
            task = self._task(f"{self.proc}/{tid}/task/{tid}", tid, full=True)
        except _Vanished:
            return None
        if not task.zombie or not task.is_leader:
            return None
        now = max(self._boottime_ns(), task.start_ns)
        pid_values = accounting.pid_record(
            cast("Task", task), leader_start_ns=task.start_ns, now_ns=now,
            wall_seconds=self._wall_seconds(), profile=self.profile)
        pid_values["ac_flag"] |= int(AcFlag.AGROUP)
        tgid_values = None
        if threaded:
            stats = accounting.new_group_stats(self.profile)
            accounting.accumulate_exit(stats, cast("Task", task), now_ns=now,
                                       profile=self.profile)
            tgid_values = accounting.tgid_exit_record(stats, self.profile)
        return ExitReport(cpu=task.cpu % nr_cpus, tid=tid, tgid=tid, pid_values=pid_values,
                          tgid_values=tgid_values, group_dead=True)

    def _leader_start_ns(self, task: _HostTask) -> int:
        """The group leader's start (ac_tgetime's origin); the task's own if unreadable."""
        try:
            raw = _read_path(f"{self.proc}/{task.tid}/task/{task.tgid}/stat")
            return _stat_field(_split_stat(raw)[2], 22) * self._ns_per_tick
        except (OSError, ValueError, _Vanished):
            return task.start_ns

    def _task(self, path: str, tid: int, *, full: bool) -> _HostTask:
        """Task `tid` read from its /proc directory `path`: stat, status and schedstat, and
        with `full` also io and exe. _Vanished if it is not there or goes away meanwhile."""
        try:
            dfd = os.open(path, _DIR_FLAGS)
        except OSError:
            raise _Vanished(path) from None
        try:
            try:
                stat = _read(dfd, "stat")
                status = _status(_read(dfd, "status"))
            except OSError:
                raise _Vanished(path) from None
            try:
                task = self._parse(tid, stat, status)
            except (ValueError, IndexError, KeyError):
                raise _Vanished(f"{path}: unparsable") from None
            gone = False
            counters = task.counter_map
            optional = (("schedstat", self._schedstat), ("io", _io)) if full \
                else (("schedstat", self._schedstat),)
            for name, parse in optional:
                try:
                    counters.update(parse(_read(dfd, name)))
                except OSError as exc:
                    gone |= exc.errno in _GONE
                except (ValueError, IndexError):
                    pass
            if full and not task.zombie:
                # acct_update_integrals: RSS and VM size (pages) times CPU time (ns >> 10),
                # reported in MB-usec (x PAGE_SIZE / 1000 KB). /proc shows the sizes now, not
                # their history: the integral as if the process had had today's size all along.
                run_units = counters.get("cpu_run_virtual_total", 0) >> 10
                counters["coremem"] = _kib(status.get(b"VmRSS")) * run_units // 1000
                counters["virtmem"] = _kib(status.get(b"VmSize")) * run_units // 1000
            if full:
                try:
                    st = os.stat("exe", dir_fd=dfd)
                except OSError as exc:
                    gone |= exc.errno in _GONE and not task.zombie
                else:
                    counters["ac_exe_dev"] = huge_encode_dev(os.major(st.st_dev),
                                                             os.minor(st.st_dev))
                    counters["ac_exe_inode"] = st.st_ino
            if gone:
                # ENOENT/ESRCH: either a file this task lacks (a kernel thread's exe) or
                # the task died after its stat was read. Its stat tells which.
                try:
                    os.stat("stat", dir_fd=dfd)
                except OSError:
                    raise _Vanished(path) from None
            return task
        finally:
            os.close(dfd)

    def _parse(self, tid: int, raw_stat: bytes, status: dict[bytes, bytes]) -> _HostTask:
        _, comm, f = _split_stat(raw_stat)
        flags = _stat_field(f, 9)
        tgid = int(status[b"Tgid"])
        leader = tid == tgid
        zombie = f[0] in (b"Z", b"X")
        tick = self._ns_per_tick
        utime_ns = _stat_field(f, 14) * tick
        stime_ns = _stat_field(f, 15) * tick
        blkio_ns = _stat_field(f, 42) * tick
        counters = {
            "utime_ns": utime_ns,
            "stime_ns": stime_ns,
            "utimescaled_ns": utime_ns,
            "stimescaled_ns": stime_ns,
            "ac_minflt": _stat_field(f, 10),
            "ac_majflt": _stat_field(f, 12),
            "blkio_delay_total": blkio_ns,
            "blkio_count": 1 if blkio_ns else 0,
            "hiwater_rss": _kib(status.get(b"VmHWM")),
            "hiwater_vm": _kib(status.get(b"VmPeak")),
            "nvcsw": int(status.get(b"voluntary_ctxt_switches", b"0")),
            "nivcsw": int(status.get(b"nonvoluntary_ctxt_switches", b"0")),
        }
        exiting = leader and bool(flags & PF_EXITING)
        return _HostTask(
            tid=tid, tgid=tgid, ppid=_stat_field(f, 4), comm=_comm(comm, flags),
            uid=int(status[b"Uid"].split()[0]), gid=int(status[b"Gid"].split()[0]),
            nice=_stat_field(f, 19), policy=_stat_field(f, 41),
            start_ns=_stat_field(f, 22) * tick,
            exit_code=_stat_field(f, 52) if exiting else None,
            forked_no_exec=bool(flags & PF_FORKNOEXEC), superuser=bool(flags & PF_SUPERPRIV),
            dumped_core=bool(flags & PF_DUMPCORE), signaled=bool(flags & PF_SIGNALED),
            zombie=zombie, cpu=_stat_field(f, 39), counter_map=counters)

    @staticmethod
    def _schedstat(raw: bytes) -> dict[str, int]:
        run, delay, count = raw.split()[:3]
        return {"cpu_run_virtual_total": int(run), "cpu_delay_total": int(delay),
                "cpu_count": int(count)}


#: /proc/<tid>/io keys -> taskstats fields (accounting rounds them to 1024).
_IO_KEYS: Mapping[bytes, str] = {
    b"rchar": "read_char", b"wchar": "write_char", b"syscr": "read_syscalls",
    b"syscw": "write_syscalls", b"read_bytes": "read_bytes", b"write_bytes": "write_bytes",
    b"cancelled_write_bytes": "cancelled_write_bytes",
}


def _io(raw: bytes) -> dict[str, int]:
    out = {}
    for key, value in _status(raw).items():
        name = _IO_KEYS.get(key)
        if name is not None:
            out[name] = int(value)
    return out


def _read_path(path: str) -> bytes:
    fd = os.open(path, _FILE_FLAGS)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)
