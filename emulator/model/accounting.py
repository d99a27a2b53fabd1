"""The kernel's accounting rules: how tasks become struct taskstats field values.

What lives here: every rule that turns a task's counters (kept by `tasks.Task` in the units the
kernel keeps them) into the values of a struct taskstats, for the three records the kernel makes:

- a PID record (`pid_record`, the kernel's `fill_stats`): a TASKSTATS_CMD_GET by PID, and the
  AGGR_PID record of an exit event;
- a TGID query (`tgid_query`, `fill_stats_for_tgid`): the group's accumulated totals of exited
  threads plus each live thread's share;
- the group accumulation (`accumulate_exit`, `fill_tgid_exit`), which every exiting thread adds to
  once the group's totals exist, and the AGGR_TGID record sent from it (`tgid_exit_record`).

What must not: which tasks exist and when a group's totals are allocated (`tasks`), the struct's
layout and bytes (`tsemu.wire.taskstats_struct`), I/O of any kind. Records are plain dicts keyed
by the field names of `tsemu.wire.taskstats_struct.FIELDS`, holding every field of the profile's
struct version (zeros included, `ac_pad` left to the codec), ready for
`layout(version).build(values)`.

The rules, field by field (task counters in the middle column are `tasks.Task` counter names;
<c> is each of blkio, swapin, freepages, thrashing, compact, wpcopy, irq):

==========================  =================================  ==================================
field                       source                             conversion / rule
==========================  =================================  ==================================
**delay accounting** (`add_delays`, delayacct_add_tsk): PID record, TGID query, group accumulation
cpu_count                   cpu_count                          added
cpu_delay_total             cpu_delay_total (ns)               added, s64 overflow rule
cpu_run_real_total          utime_ns + stime_ns                added, s64 overflow rule
cpu_run_virtual_total       cpu_run_virtual_total (ns)         added, s64 overflow rule
cpu_scaled_run_real_total   utimescaled_ns + stimescaled_ns    added, s64 overflow rule
cpu_delay_max, _min         cpu_delay_max, _min (ns)           ASSIGNED: the last task's
cpu_delay_max_ts            cpu_delay_max_ts (sec, nsec)       ASSIGNED
<c>_count                   <c>_count                          added
<c>_delay_total             <c>_delay_total (ns)               added, u64 overflow rule
<c>_delay_max, _min         <c>_delay_max, _min (ns)           ASSIGNED: the last task's
<c>_delay_max_ts            <c>_delay_max_ts (sec, nsec)       ASSIGNED
**basic accounting** (`fill_basic`, bacct_add_tsk): PID record only
ac_etime                    now - start_ns                     ns // 1000 (microseconds)
ac_tgetime                  now - group leader's start_ns      ns // 1000
ac_btime64                  wall seconds - ac_etime // 10**6   an s64 stored in a u64
ac_btime                    the same                           clamped to [0, 2**32 - 1]
ac_exitcode                 the exit code                      only once the task is exiting;
                                                               before 5.17, the leader's only
ac_flag                     AFORK (leader only), ASU,          AGROUP is added by the exit path
                            ACORE, AXSIG                       (5.17 on)
ac_nice                     nice (-20..19)                     as a u8: -5 reads 251
ac_sched                    policy                             as is
ac_pid, ac_tgid, ac_ppid    tid, tgid, ppid (parent's tgid)    as is
ac_uid, ac_gid, ac_comm     uid, gid, comm                     as is
ac_utime, ac_stime          utime_ns, stime_ns                 ns // 1000
ac_utimescaled, ..._stime.. utimescaled_ns, stimescaled_ns     ns // 1000
ac_minflt, ac_majflt        ac_minflt, ac_majflt               as is
nvcsw, nivcsw               nvcsw, nivcsw                      as is (set by fill_stats itself)
**extended accounting** (`fill_extended`, xacct_add_tsk; `fill_exe`, exe_add_tsk): PID record
coremem, virtmem            coremem, virtmem (MB-usec)         as is
hiwater_rss, hiwater_vm     hiwater_rss, hiwater_vm (KiB)      as is
read_char, write_char       the same counters                  `round_io`: rounded DOWN to a
read_syscalls, write_sys..  the same counters                  multiple of 1024, the syscall
read_bytes, write_bytes     the same counters                  counts too (the kernel masks
cancelled_write_bytes       the same counter                   each with KB_MASK)
ac_exe_dev, ac_exe_inode    ac_exe_dev, ac_exe_inode           as is
**per-thread times** (`add_thread_times`): TGID query (2.6.37 on: `tgid_query_times`); group
accumulation (`tgid_exit_times`: the 2026 fix and its backports)
ac_etime                    now - start_ns                     += ns // 1000
ac_utime, ac_stime          utime_ns, stime_ns                 += ns // 1000, per thread
**per-thread switches** (`add_switches`): TGID query (every kernel); group accumulation
(`tgid_exit_times`)
nvcsw, nivcsw               nvcsw, nivcsw                      +=
==========================  =================================  ==================================

Everything else in a TGID record stays zero: ac_comm empty, ac_pid, ac_tgid, ac_btime, ac_flag.

The two overflow rules are the kernel's, not a saturating add: when a sum overflows, the result
is 0 ("zero XXX_total, non-zero XXX_count implies XXX stat overflowed", delayacct.c). The CPU
sums cast both sides to s64 before comparing, so they drop to 0 as soon as the sum passes
2**63 - 1; the other categories compare as u64 and drop to 0 only when the u64 sum wraps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tsemu.wire import taskstats_struct
from tsemu.wire.constants import AcFlag
from tsemu.wire.taskstats_struct import FIELDS

if TYPE_CHECKING:
    from .profiles import KernelProfile
    from .tasks import Task

#: A record: struct taskstats field name -> value (int, bytes for ac_comm, a {tv_sec, tv_nsec}
#: mapping for the `_delay_max_ts` timespecs).
Values = dict[str, Any]

U32_MAX = 2**32 - 1
U64_MASK = 2**64 - 1
_S64_SIGN = 2**63
NSEC_PER_USEC = 1000
USEC_PER_SEC = 1_000_000
#: Linux's KB_MASK (~(KB - 1)) as applied to the I/O counters.
KB_MASK = U64_MASK & ~1023

#: The delay-accounting categories, in struct order (defined with the struct's layout); "cpu"
#: comes from the scheduler's sched_info, the others from the task's delay-accounting block.
DELAY_CATEGORIES = taskstats_struct.DELAY_CATEGORIES
_BLOCK_CATEGORIES = DELAY_CATEGORIES[1:]
#: Each block category's field names: max, min, max timestamp, total, count (spelled once).
_BLOCK_NAMES: tuple[tuple[str, str, str, str, str], ...] = tuple(
    (f"{c}_delay_max", f"{c}_delay_min", f"{c}_delay_max_ts", f"{c}_delay_total", f"{c}_count")
    for c in _BLOCK_CATEGORIES)

#: The I/O counters the kernel rounds down to a multiple of 1024.
IO_FIELDS: tuple[str, ...] = (
    "read_char", "write_char", "read_syscalls", "write_syscalls", "read_bytes", "write_bytes",
    "cancelled_write_bytes",
)

_ZERO_TIMESPEC: Mapping[str, int] = MappingProxyType({"tv_sec": 0, "tv_nsec": 0})
#: The ac_flag bits as plain ints (IntFlag arithmetic costs ten times more, on every GET).
_AFORK, _ASU, _ACORE, _AXSIG = (int(f) for f in (AcFlag.AFORK, AcFlag.ASU, AcFlag.ACORE,
                                                  AcFlag.AXSIG))


# --- the two overflow rules ---------------------------------------------------------------


def _as_s64(value: int) -> int:
    value &= U64_MASK
    return value - 2**64 if value & _S64_SIGN else value


def add_s64_or_zero(total: int, value: int) -> int:
    """`total + value` as the kernel sums the CPU fields: both sides read as s64, and a sum that
    compares below the old total (it went past 2**63 - 1) becomes 0."""
    old = _as_s64(total)
    tmp = _as_s64(total + value)
    return 0 if tmp < old else tmp & U64_MASK


def add_u64_or_zero(total: int, value: int) -> int:
    """`total + value` as the kernel sums the other delay totals: a u64 sum that wraps (comes
    out below the old total) becomes 0."""
    tmp = (total + value) & U64_MASK
    return 0 if tmp < total else tmp


def _add_u64(total: int, value: int) -> int:
    """A plain C `u64 +=`: wraps silently."""
    return (total + value) & U64_MASK


def round_io(value: int) -> int:
    """An I/O counter as taskstats reports it: rounded down to a multiple of 1024. The kernel
    masks with KB_MASK even the syscall counts, which are not byte counts at all, so a client
    sees read_syscalls 0 until the task has made 1024 reads."""
    return value & KB_MASK


# --- record skeletons ----------------------------------------------------------------------


def _zero(ctype: str) -> Any:
    if ctype == "comm":
        return b""
    if ctype == "timespec":
        return _ZERO_TIMESPEC
    return 0


@cache
def _template(version: int) -> Values:
    """Every field of `version` at zero (fill_stats' memset); ac_pad is left to the codec.
    (A plain dict, copied by `empty_record` and never handed out: a dict copies fastest.)"""
    return {f.name: _zero(f.ctype) for f in FIELDS if f.since <= version and f.name != "ac_pad"}


@cache
def _absent(version: int) -> tuple[str, ...]:
    """Fields newer than `version`: the rules may compute them, the record must not carry them."""
    return tuple(f.name for f in FIELDS if f.since > version)


def empty_record(version: int) -> Values:
    """A record of `version` with every field zero and `version` itself still 0."""
    return _template(version).copy()


def _restrict(values: Values, version: int) -> Values:
    for name in _absent(version):
        values.pop(name, None)
    return values


def new_group_stats(profile: KernelProfile) -> Values:
    """A thread group's accumulation as taskstats_tgid_alloc makes it: all zeros."""
    return empty_record(profile.taskstats_version)


def _timespec(stamps: Mapping[str, tuple[int, int]], name: str) -> Mapping[str, int]:
    """A (tv_sec, tv_nsec) pair as the codec takes a struct __kernel_timespec."""
    pair = stamps.get(name)
    if pair is None:
        return _ZERO_TIMESPEC
    return {"tv_sec": pair[0], "tv_nsec": pair[1]}


# --- the rules -----------------------------------------------------------------------------


def add_delays(stats: Values, task: Task) -> None:
    """delayacct_add_tsk: add `task`'s delay accounting into `stats`.

    Counts and totals are added (totals with the overflow-to-zero rules above); the max, min and
    max-timestamp of each category are ASSIGNED, not compared: a sum over several tasks carries
    the last task's max and min, which the kernel's own TGID records show (a group's
    cpu_delay_max lower than its leader's)."""
    get = task.counter_map.get
    stamps = task.max_ts_map
    have = stats.get
    # Every GET computes this: the sums take the overflow rules' functions only when they
    # could apply (a sum past 2**63 - 1 for the s64 rule, past 2**64 - 1 for the u64 one);
    # below that, both rules give the plain sum.
    for name, value in (
            ("cpu_run_real_total", _add_u64(get("utime_ns", 0), get("stime_ns", 0))),
            ("cpu_scaled_run_real_total",
             _add_u64(get("utimescaled_ns", 0), get("stimescaled_ns", 0))),
            ("cpu_delay_total", get("cpu_delay_total", 0)),
            ("cpu_run_virtual_total", get("cpu_run_virtual_total", 0))):
        old = have(name, 0)
        total = old + value
        stats[name] = total if total < _S64_SIGN else add_s64_or_zero(old, value)
    stats["cpu_count"] = _add_u64(have("cpu_count", 0), get("cpu_count", 0))
    stats["cpu_delay_max"] = get("cpu_delay_max", 0)
    stats["cpu_delay_min"] = get("cpu_delay_min", 0)
    stats["cpu_delay_max_ts"] = _timespec(stamps, "cpu_delay_max_ts")
    for max_name, min_name, ts_name, total_name, count_name in _BLOCK_NAMES:
        stats[max_name] = get(max_name, 0)
        stats[min_name] = get(min_name, 0)
        stats[ts_name] = _timespec(stamps, ts_name) if stamps else _ZERO_TIMESPEC
        old = have(total_name, 0)
        value = get(total_name, 0)
        total = old + value
        stats[total_name] = total if total <= U64_MASK else add_u64_or_zero(old, value)
        stats[count_name] = (have(count_name, 0) + get(count_name, 0)) & U64_MASK


#: The fields of a PID record that move with the clock alone, in `clock_fields` order: all
#: the rest changes only when the task does.
CLOCK_FIELDS: tuple[str, ...] = ("ac_etime", "ac_tgetime", "ac_btime", "ac_btime64")


def clock_fields(start_ns: int, leader_start_ns: int, now_ns: int,
                 wall_seconds: int) -> tuple[int, int, int, int]:
    """The `CLOCK_FIELDS` of a task started at `start_ns` in a group whose leader started at
    `leader_start_ns`: ages in microseconds, and the start in wall seconds (ac_btime clamped
    to a u32, ac_btime64 an s64 stored in a u64)."""
    etime = (now_ns - start_ns) // NSEC_PER_USEC
    btime = wall_seconds - etime // USEC_PER_SEC
    return (etime, (now_ns - leader_start_ns) // NSEC_PER_USEC,
            min(max(btime, 0), U32_MAX), btime & U64_MASK)


def fill_basic(stats: Values, task: Task, *, leader_start_ns: int, now_ns: int,
               wall_seconds: int, every_exit_code: bool = True) -> None:
    """bacct_add_tsk: identity, times and faults.

    ac_btime is not stored anywhere: it is derived now, as wall-clock seconds minus the task's
    age in whole seconds, so it moves if the wall clock is stepped. ac_exitcode is only filled
    once the task is exiting (PF_EXITING), and before 5.17 (`every_exit_code` False) only for
    a group leader; AFORK only for a group leader that has not exec'd."""
    (stats["ac_etime"], stats["ac_tgetime"], stats["ac_btime"],
     stats["ac_btime64"]) = clock_fields(task.start_ns, leader_start_ns, now_ns, wall_seconds)
    if task.exit_code is not None and (every_exit_code or task.is_leader):
        stats["ac_exitcode"] = task.exit_code
    flag = 0
    if task.is_leader and task.forked_no_exec:
        flag |= _AFORK
    if task.superuser:
        flag |= _ASU
    if task.dumped_core:
        flag |= _ACORE
    if task.signaled:
        flag |= _AXSIG
    stats["ac_flag"] = flag
    stats["ac_nice"] = task.nice & 0xFF
    stats["ac_sched"] = task.policy
    stats["ac_pid"] = task.tid
    stats["ac_tgid"] = task.tgid
    stats["ac_uid"] = task.uid
    stats["ac_gid"] = task.gid
    stats["ac_ppid"] = task.ppid
    get = task.counter_map.get
    stats["ac_utime"] = get("utime_ns", 0) // NSEC_PER_USEC
    stats["ac_stime"] = get("stime_ns", 0) // NSEC_PER_USEC
    stats["ac_utimescaled"] = get("utimescaled_ns", 0) // NSEC_PER_USEC
    stats["ac_stimescaled"] = get("stimescaled_ns", 0) // NSEC_PER_USEC
    stats["ac_minflt"] = get("ac_minflt", 0)
    stats["ac_majflt"] = get("ac_majflt", 0)
    stats["ac_comm"] = task.comm


def fill_extended(stats: Values, task: Task) -> None:
    """xacct_add_tsk: memory integrals and high-water marks as kept, I/O through `round_io`."""
    get = task.counter_map.get
    for name in ("coremem", "virtmem", "hiwater_rss", "hiwater_vm"):
        stats[name] = get(name, 0)
    for name in IO_FIELDS:
        stats[name] = round_io(get(name, 0))


def fill_exe(stats: Values, task: Task) -> None:
    """exe_add_tsk: the executable's device and inode (zero once the task has no mm)."""
    get = task.counter_map.get
    stats["ac_exe_dev"] = get("ac_exe_dev", 0)
    stats["ac_exe_inode"] = get("ac_exe_inode", 0)


def add_thread_times(stats: Values, task: Task, now_ns: int) -> None:
    """The per-thread times a TGID total sums: the thread's age and CPU times, each converted
    to microseconds before adding, as the kernel divides per thread."""
    get = task.counter_map.get
    stats["ac_etime"] = _add_u64(stats.get("ac_etime", 0),
                                 (now_ns - task.start_ns) // NSEC_PER_USEC)
    stats["ac_utime"] = _add_u64(stats.get("ac_utime", 0), get("utime_ns", 0) // NSEC_PER_USEC)
    stats["ac_stime"] = _add_u64(stats.get("ac_stime", 0), get("stime_ns", 0) // NSEC_PER_USEC)


def add_switches(stats: Values, task: Task) -> None:
    """The context switches a TGID total sums (every kernel's TGID query has summed them)."""
    get = task.counter_map.get
    stats["nvcsw"] = _add_u64(stats.get("nvcsw", 0), get("nvcsw", 0))
    stats["nivcsw"] = _add_u64(stats.get("nivcsw", 0), get("nivcsw", 0))


# --- the records ---------------------------------------------------------------------------


def pid_record(task: Task, *, leader_start_ns: int, now_ns: int, wall_seconds: int,
               profile: KernelProfile) -> Values:
    """fill_stats: the record a GET by PID answers, and an exit event's AGGR_PID record (the
    exit path adds AGROUP itself). `leader_start_ns` is the group leader's start time, which
    outlives the leader if it exits first."""
    version = profile.taskstats_version
    stats = empty_record(version)
    add_delays(stats, task)
    stats["version"] = version
    get = task.counter_map.get
    stats["nvcsw"] = get("nvcsw", 0)
    stats["nivcsw"] = get("nivcsw", 0)
    fill_basic(stats, task, leader_start_ns=leader_start_ns, now_ns=now_ns,
               wall_seconds=wall_seconds, every_exit_code=profile.exit_v12_flags)
    fill_extended(stats, task)
    fill_exe(stats, task)
    return _restrict(stats, version)


def tgid_query(group_stats: Mapping[str, Any] | None, live_threads: Iterable[Task], *,
               now_ns: int, profile: KernelProfile) -> Values:
    """fill_stats_for_tgid: a copy of the group's accumulation (zeros if it was never
    allocated), plus, for each live thread, its delays, its `add_thread_times` (2.6.37 on:
    `profile.tgid_query_times`) and its `add_switches`. Exited threads (a zombie leader
    included) are in the accumulation already, so only live ones are added."""
    version = profile.taskstats_version
    times = profile.tgid_query_times
    stats = empty_record(version)
    if group_stats is not None:
        stats.update(group_stats)
    for task in live_threads:
        add_delays(stats, task)
        if times:
            add_thread_times(stats, task, now_ns)
        add_switches(stats, task)
    stats["version"] = version
    return _restrict(stats, version)


def accumulate_exit(group_stats: Values, task: Task, *, now_ns: int,
                    profile: KernelProfile) -> None:
    """fill_tgid_exit: an exiting thread's share, added to its group's accumulation. Kernels
    add the delay fields; those with the 2026 fix ("retain dead thread stats in TGID queries",
    mainline and its stable backports: `profile.tgid_exit_times`) also the thread's times and
    context switches."""
    add_delays(group_stats, task)
    if profile.tgid_exit_times:
        add_thread_times(group_stats, task, now_ns)
        add_switches(group_stats, task)


def tgid_exit_record(group_stats: Mapping[str, Any], profile: KernelProfile) -> Values:
    """The AGGR_TGID record of the group's last exit: the accumulation as it stands, version
    set."""
    version = profile.taskstats_version
    stats = empty_record(version)
    stats.update(group_stats)
    stats["version"] = version
    return _restrict(stats, version)
