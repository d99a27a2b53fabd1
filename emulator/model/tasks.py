"""Tasks and thread groups: what a kernel task is, as a plain object.

What lives here: the task (`Task`: identity, flags, counters in the units the kernel keeps
them), the process (`ThreadGroup`: its live threads, its leader's start, the kernel's
`signal->stats`), the scheduler states and what cgroupstats counts each as, the counters a task
keeps and how each is checked, and what an exit reports (`ExitReport`, `RepeatExit`). What
must not: which tasks exist and how they change (`table`, the only thing that changes tasks),
the arithmetic that turns counters into field values (`accounting`), the wire format
(`tsemu.wire`), and I/O, sockets, trio or real time.

Theory of operation. A `Task` keeps identity as attributes and its counters in one small dict
holding only the non-zero ones, so 100,000 idle tasks cost little (tasks made from a
scenario's spec share its `FrozenCounters` until their first change). A `ThreadGroup` holds
the live tids of a process in creation order (without a dict while there is only one), its
leader's start time (which outlives the leader: every thread's ac_tgetime is measured from
it) and `stats`, the group's taskstats totals. The `_`-methods of both are `table`'s: nothing
else changes a task.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

from . import accounting

#: The largest pid_max a 64-bit kernel accepts (PID_MAX_LIMIT), and the default tsemu uses.
PID_MAX_LIMIT = 4_194_304
#: After wrapping, pids are handed out again from here: the low ones are left to daemons.
RESERVED_PIDS = 300
#: TASK_COMM_LEN - 1: the longest comm the kernel keeps.
COMM_MAX = 15
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
#: The highest signal number (SIGRTMAX on x86_64).
SIGNAL_MAX = 64


class NoSuchTask(LookupError):
    """No live task (or no thread group) has that id: what the kernel answers with ESRCH."""


class TaskState(enum.Enum):
    """A task's scheduler state, as far as cgroupstats can tell states apart.

    cgroupstats_build switches on the exact state word: TASK_RUNNING, TASK_INTERRUPTIBLE,
    TASK_UNINTERRUPTIBLE and TASK_STOPPED each have a counter; any other state word counts
    only as nr_io_wait, and only while the task is in an I/O wait. So a task sleeping on I/O in
    plain TASK_UNINTERRUPTIBLE is `UNINTERRUPTIBLE` (nr_uninterruptible, not nr_io_wait), and
    `IO_WAIT` is an I/O sleep in a state word the switch does not name (TASK_KILLABLE,
    TASK_IDLE: uninterruptible plus a modifier bit), which is the only way nr_io_wait grows.
    """

    RUNNING = "running"                  # TASK_RUNNING: nr_running
    SLEEPING = "sleeping"                # TASK_INTERRUPTIBLE: nr_sleeping
    UNINTERRUPTIBLE = "uninterruptible"  # TASK_UNINTERRUPTIBLE: nr_uninterruptible
    STOPPED = "stopped"                  # TASK_STOPPED: nr_stopped
    IO_WAIT = "io_wait"                  # TASK_KILLABLE / TASK_IDLE, in_iowait: nr_io_wait
    IDLE = "idle"                        # TASK_IDLE, not on I/O (kernel threads): counted nowhere
    TRACED = "traced"                    # TASK_TRACED: counted nowhere
    ZOMBIE = "zombie"                    # an exited leader waiting for its threads: not iterated


#: cgroupstats' counters, in struct cgroupstats order.
CGROUPSTATS_FIELDS: tuple[str, ...] = (
    "nr_sleeping", "nr_running", "nr_stopped", "nr_uninterruptible", "nr_io_wait",
)

#: Which cgroupstats counter each state adds to (None: counted nowhere).
CGROUPSTATS_COUNTER: Mapping[TaskState, str | None] = MappingProxyType({
    TaskState.RUNNING: "nr_running",
    TaskState.SLEEPING: "nr_sleeping",
    TaskState.UNINTERRUPTIBLE: "nr_uninterruptible",
    TaskState.STOPPED: "nr_stopped",
    TaskState.IO_WAIT: "nr_io_wait",
    TaskState.IDLE: None,
    TaskState.TRACED: None,
    TaskState.ZOMBIE: None,
})


def _delay_counters(cat: str) -> tuple[str, ...]:
    return (f"{cat}_count", f"{cat}_delay_total", f"{cat}_delay_max", f"{cat}_delay_min")


#: The integer counters a task keeps, in kernel-native units: delays and CPU times in ns,
#: memory integrals in MB-usec, high-water marks in KiB, I/O raw (accounting rounds it).
INT_COUNTERS: tuple[str, ...] = (
    *_delay_counters("cpu"),
    "cpu_run_virtual_total",
    *(name for cat in accounting.DELAY_CATEGORIES[1:] for name in _delay_counters(cat)),
    "utime_ns", "stime_ns", "utimescaled_ns", "stimescaled_ns",
    "ac_minflt", "ac_majflt",
    "coremem", "virtmem", "hiwater_rss", "hiwater_vm",
    *accounting.IO_FIELDS,
    "nvcsw", "nivcsw",
    "ac_exe_dev", "ac_exe_inode",
    # not in struct taskstats: what /proc shows of the mm now (KiB)
    "rss", "vm",
)
#: The time each category's longest delay happened, as (tv_sec, tv_nsec): set, never added.
MAX_TS_COUNTERS: tuple[str, ...] = tuple(
    f"{cat}_delay_max_ts" for cat in accounting.DELAY_CATEGORIES)
#: Every counter name `set`, `spawn(counters=...)` and `clone_thread(counters=...)` accept.
COUNTERS: tuple[str, ...] = INT_COUNTERS + MAX_TS_COUNTERS

INT_COUNTER_SET = frozenset(INT_COUNTERS)
MAX_TS_COUNTER_SET = frozenset(MAX_TS_COUNTERS)
#: Counters that belong to the task's mm: gone once a leader is a zombie (exit_mm ran).
MM_COUNTERS = ("hiwater_rss", "hiwater_vm", "ac_exe_dev", "ac_exe_inode", "rss", "vm")

#: Identity a `set` call may change. tid, tgid and start_ns never change. The last four are
#: what only /proc shows (`ProcIdentity`).
IDENTITY: tuple[str, ...] = (
    "comm", "uid", "gid", "ppid", "cpu", "nice", "policy", "state", "cgroup",
    "forked_no_exec", "superuser", "cmdline", "ioprio", "kthread", "rt_priority",
)
IDENTITY_SET = frozenset(IDENTITY)
PROC_IDENTITY = ("cmdline", "ioprio", "kthread", "rt_priority")


@dataclass(frozen=True, slots=True)
class ProcIdentity:
    """What /proc shows of a task and taskstats does not: its arguments (None: just its
    comm, as for a process that set none), its I/O priority as ioprio_get(2) returns it
    (class << 13 | level; 0: none, which the kernel derives from nice), whether it is a kernel
    thread (no mm, no arguments: ps shows it in brackets), and its real-time priority (1-99
    under SCHED_FIFO or SCHED_RR). Shared by every task that has the same."""

    cmdline: tuple[bytes, ...] | None = None
    ioprio: int = 0
    kthread: bool = False
    rt_priority: int = 0


PLAIN = ProcIdentity()

_EMPTY_INTS: Mapping[str, int] = MappingProxyType({})
_EMPTY_STAMPS: Mapping[str, tuple[int, int]] = MappingProxyType({})

# Task._flags bits, named after the PF_* flags they stand for.
PF_FORKNOEXEC = 0x1
PF_SUPERPRIV = 0x2
PF_SIGNALED = 0x4
PF_DUMPCORE = 0x8


def unknown_counter(name: str) -> ValueError:
    return ValueError(f"unknown counter {name!r}; valid counters: {', '.join(COUNTERS)}")


def check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is out of range [{low}, {high}]")
    return value


def check_counter(name: str, value: object) -> int | tuple[int, int]:
    """A validated counter value: a u64, or a (tv_sec, tv_nsec) pair for the max timestamps."""
    if name in INT_COUNTER_SET:
        return check_int(name, value, 0, U64_MAX)
    if name in MAX_TS_COUNTER_SET:
        if not isinstance(value, tuple) or len(value) != 2:
            raise ValueError(f"{name} must be a (tv_sec, tv_nsec) pair, not {value!r}")
        sec = check_int(f"{name} tv_sec", value[0], -(2**63), 2**63 - 1)
        nsec = check_int(f"{name} tv_nsec", value[1], 0, 999_999_999)
        return (sec, nsec)
    raise unknown_counter(name)


def _immutable(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError("FrozenCounters cannot be changed: make a dict of them")


class FrozenCounters(dict[str, Any]):
    """Counters that cannot change, checked once when made (ValueError as `set` would give),
    as a scenario's specs hold them: a task created with them (`spawn(counters=...)`) takes
    them without checking them again, and shares this very dict with the spec until its
    first change instead of holding a copy. Reads like the dict it is; every change raises
    TypeError."""

    __slots__ = ("shareable",)

    shareable: bool

    def __init__(self, counters: Mapping[str, object] | None = None, /) -> None:
        shareable = True
        if counters:
            for name, value in counters.items():
                if type(value) is int and 0 < value <= U64_MAX and name in INT_COUNTER_SET:
                    continue  # (what check_counter passes as it is, without the call)
                if check_counter(name, value) != value or type(value) is not int or not value:
                    shareable = False  # a zero, a stamp, or a value not as it is kept
            dict.__init__(self, check_counters(counters) if not shareable else counters)
        #: only non-zero integers: what a task keeps as its counter map, as it is
        self.shareable = shareable

    __setitem__ = __delitem__ = __ior__ = _immutable
    clear = pop = popitem = setdefault = update = _immutable

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenCounters, (dict(self),))

    def __copy__(self) -> FrozenCounters:
        return self

    def __deepcopy__(self, memo: object) -> FrozenCounters:
        return self


def check_counters(counters: Mapping[str, object] | None) -> dict[str, int | tuple[int, int]]:
    """Validated counters (`check_counter` on each, in order), in a new dict."""
    checked: dict[str, int | tuple[int, int]] = {}
    if counters:
        for name, value in counters.items():
            if type(value) is int and name in INT_COUNTER_SET and 0 <= value <= U64_MAX:
                checked[name] = value  # what check_counter returns, without the calls
            else:
                checked[name] = check_counter(name, value)
    return checked


def kernel_comm(value: object) -> bytes:
    """comm as the kernel keeps it: bytes up to the first NUL, cut to 15 bytes."""
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise ValueError(f"comm must be bytes or str, not {type(value).__name__}")
    return value.split(b"\0", 1)[0][:COMM_MAX]


class Task:
    """One kernel task (a thread). Identity is attributes; counters live in `counter_map`.

    Flags: `forked_no_exec` (PF_FORKNOEXEC, reported as AFORK for a leader only), `superuser`
    (PF_SUPERPRIV: ASU), and, once the task exits, `signaled` (AXSIG) and `dumped_core`
    (ACORE); `exit_code` is None until then.
    """

    __slots__ = (
        "tid", "tgid", "ppid", "comm", "uid", "gid", "cpu", "nice", "policy", "state",
        "cgroup", "start_ns", "exit_code", "_flags", "_counters", "_stamps", "proc", "_rates",
    )

    tid: int
    tgid: int
    ppid: int
    comm: bytes
    uid: int
    gid: int
    cpu: int
    nice: int
    policy: int
    state: TaskState
    cgroup: str | None
    start_ns: int
    exit_code: int | None
    _flags: int
    _counters: dict[str, int] | None
    _stamps: dict[str, tuple[int, int]] | None
    proc: ProcIdentity
    #: counters that move with the clock: name -> (per second, since (ns), value then)
    _rates: dict[str, tuple[int, int, int]] | None

    def __init__(self, tid: int, tgid: int, ppid: int, comm: bytes, uid: int, gid: int,
                 cpu: int, nice: int, policy: int, state: TaskState, cgroup: str | None,
                 start_ns: int, forked_no_exec: bool = False, superuser: bool = False) -> None:
        """(The table makes tasks with positional arguments, in this order: several times
        faster than keywords, which counts for a hundred thousand of them.)"""
        self.tid = tid
        self.tgid = tgid
        self.ppid = ppid
        self.comm = comm
        self.uid = uid
        self.gid = gid
        self.cpu = cpu
        self.nice = nice
        self.policy = policy
        self.state = state
        self.cgroup = cgroup
        self.start_ns = start_ns
        self.exit_code = None
        self._flags = ((PF_FORKNOEXEC if forked_no_exec else 0)
                       | (PF_SUPERPRIV if superuser else 0))
        self._counters = None
        self._stamps = None
        self.proc = PLAIN
        self._rates = None

    def __repr__(self) -> str:
        return (f"<Task tid={self.tid} tgid={self.tgid} comm={self.comm!r} "
                f"state={self.state.value}>")

    # flags

    def _flag(self, bit: int) -> bool:
        return bool(self._flags & bit)

    def _set_flag(self, bit: int, on: bool) -> None:
        self._flags = self._flags | bit if on else self._flags & ~bit

    @property
    def forked_no_exec(self) -> bool:
        return self._flag(PF_FORKNOEXEC)

    @forked_no_exec.setter
    def forked_no_exec(self, on: bool) -> None:
        self._set_flag(PF_FORKNOEXEC, on)

    @property
    def superuser(self) -> bool:
        return self._flag(PF_SUPERPRIV)

    @superuser.setter
    def superuser(self, on: bool) -> None:
        self._set_flag(PF_SUPERPRIV, on)

    @property
    def signaled(self) -> bool:
        """Killed by a signal (PF_SIGNALED: AXSIG)."""
        return self._flag(PF_SIGNALED)

    @property
    def dumped_core(self) -> bool:
        """Dumped core on its way out (PF_DUMPCORE: ACORE)."""
        return self._flag(PF_DUMPCORE)

    @property
    def is_leader(self) -> bool:
        return self.tid == self.tgid

    # counters

    @property
    def counter_map(self) -> Mapping[str, int]:
        """The non-zero integer counters, read-only by convention (accounting reads this)."""
        return self._counters or _EMPTY_INTS

    @property
    def max_ts_map(self) -> Mapping[str, tuple[int, int]]:
        """The `<cat>_delay_max_ts` pairs that were set, read-only by convention."""
        return self._stamps or _EMPTY_STAMPS

    def counter(self, name: str) -> int:
        """One integer counter's value (0 when never set)."""
        if name in INT_COUNTER_SET:
            return self.counter_map.get(name, 0)
        if name in MAX_TS_COUNTER_SET:
            raise ValueError(f"{name} is a (tv_sec, tv_nsec) pair: read it with max_ts()")
        raise unknown_counter(name)

    def max_ts(self, name: str) -> tuple[int, int]:
        """One `<cat>_delay_max_ts` as (tv_sec, tv_nsec); (0, 0) when never set."""
        if name in MAX_TS_COUNTER_SET:
            return self.max_ts_map.get(name, (0, 0))
        if name in INT_COUNTER_SET:
            raise ValueError(f"{name} is an integer counter: read it with counter()")
        raise unknown_counter(name)

    def counters(self) -> dict[str, int | tuple[int, int]]:
        """A copy of every counter that is not zero."""
        return {**self.counter_map, **self.max_ts_map}

    def _load(self, checked: Mapping[str, Any]) -> None:
        """`_store` every validated counter of `checked`, on a task that has none yet: a
        shareable `FrozenCounters` is kept as it is (shared until the task's first change),
        and so is a dict of non-zero integers only (the usual case), which must then be the
        caller's own."""
        if not checked:
            return
        if type(checked) is FrozenCounters:
            if checked.shareable:
                self._counters = checked
                return
        else:
            for value in checked.values():
                if not value or isinstance(value, tuple):
                    break
            else:
                self._counters = checked  # type: ignore[assignment]
                return
        for name, value in checked.items():
            self._store(name, value)

    def _own_counters(self) -> dict[str, int]:
        """The integer counters, for a change: a dict of the task's own (copied on the first
        change from shared `FrozenCounters`)."""
        counters = self._counters
        if counters is None:
            counters = self._counters = {}
        elif type(counters) is not dict:
            counters = self._counters = dict(counters)
        return counters

    def _copy(self) -> Task:
        """An independent copy (`ProcessTable.copy`)."""
        twin = Task.__new__(Task)
        for name in _TASK_SLOTS:
            setattr(twin, name, getattr(self, name))
        if type(self._counters) is dict:  # (FrozenCounters are shared as they are)
            twin._counters = dict(self._counters)
        if self._stamps is not None:
            twin._stamps = dict(self._stamps)
        if self._rates is not None:
            twin._rates = dict(self._rates)
        return twin

    # counters that move

    @property
    def rates(self) -> Mapping[str, int]:
        """The counters that move with the clock, and how much each grows per second."""
        return {name: per_second for name, (per_second, _, _) in (self._rates or {}).items()}

    def _rate(self, name: str, per_second: int, now_ns: int) -> None:
        """From `now_ns` on, `name` grows by `per_second` (0: it stops moving)."""
        self._catch_up(now_ns)
        rates = self._rates if self._rates is not None else {}
        if per_second:
            rates[name] = (per_second, now_ns, self.counter_map.get(name, 0))
        else:
            rates.pop(name, None)
        self._rates = rates or None

    def _catch_up(self, now_ns: int) -> bool:
        """Bring the moving counters to `now_ns` (each from the moment its rate was set, so
        that reading often or seldom gives the same values); whether any changed."""
        if self._rates is None:
            return False
        changed = False
        for name, (per_second, since, then) in self._rates.items():
            value = min(then + per_second * max(0, now_ns - since) // 1_000_000_000, U64_MAX)
            if value != self.counter_map.get(name, 0):
                self._store(name, value)
                changed = True
        return changed

    def _rebase(self, name: str, now_ns: int) -> None:
        """`name` was set or added to now: its rate (if any) goes on from its new value."""
        if self._rates is not None and name in self._rates:
            per_second = self._rates[name][0]
            self._rates[name] = (per_second, now_ns, self.counter_map.get(name, 0))

    def _store(self, name: str, value: int | tuple[int, int]) -> None:
        """Store an already validated counter value, keeping only non-zero ones."""
        if isinstance(value, tuple):
            if value == (0, 0):
                if self._stamps is not None:
                    self._stamps.pop(name, None)
            else:
                if self._stamps is None:
                    self._stamps = {}
                self._stamps[name] = value
        elif value:
            self._own_counters()[name] = value
        elif self._counters is not None and name in self._counters:
            del self._own_counters()[name]


_TASK_SLOTS: tuple[str, ...] = Task.__slots__


class ThreadGroup:
    """A process: its live threads, its leader and its taskstats totals.

    `stats` is the kernel's `signal->stats`: None until a thread exits while another thread
    of the group remains; from then on every exiting thread is accumulated into it, so it
    holds the dead threads' totals. `zombie_leader` is the leader's task once it has exited
    ahead of its threads: its pid stays taken, it still answers a GET by PID, and the group's
    tgid still answers a GET by TGID, until the last thread exits.
    """

    __slots__ = ("tgid", "_threads", "leader_start_ns", "stats", "zombie_leader")

    tgid: int
    #: the live threads' tids: None (none), the tid itself while it is the only one (most
    #: processes never have another: no dict for them), else a dict used as an ordered set
    _threads: int | dict[int, None] | None
    leader_start_ns: int
    stats: dict[str, Any] | None
    zombie_leader: Task | None

    def __init__(self, tgid: int, leader_start_ns: int) -> None:
        self.tgid = tgid
        self._threads = None
        self.leader_start_ns = leader_start_ns
        self.stats = None
        self.zombie_leader = None

    @property
    def _tids(self) -> Collection[int]:
        """The live threads' tids, in creation order (read-only: `_add`, `_remove`)."""
        threads = self._threads
        if isinstance(threads, dict):
            return threads
        return () if threads is None else (threads,)

    def _add(self, tid: int) -> None:
        threads = self._threads
        if isinstance(threads, dict):
            threads[tid] = None
        elif threads is None:
            self._threads = tid
        else:
            self._threads = {threads: None, tid: None}

    def _remove(self, tid: int) -> None:
        threads = self._threads
        if isinstance(threads, dict):
            del threads[tid]
        elif threads is not None and threads == tid:
            self._threads = None
        else:
            raise KeyError(tid)

    def __repr__(self) -> str:
        return f"<ThreadGroup tgid={self.tgid} tids={list(self._tids)}>"

    @property
    def leader_tid(self) -> int:
        return self.tgid

    @property
    def tids(self) -> tuple[int, ...]:
        """The live threads' tids, in the order they were created."""
        return tuple(self._tids)

    def __len__(self) -> int:
        """The number of live threads."""
        return len(self._tids)


@dataclass(frozen=True, slots=True)
class ExitReport:
    """What one task's exit sends: the CPU it exits on (whose listeners get the event), the
    AGGR_PID record's values, and the AGGR_TGID record's values when the group dies with its
    totals allocated (None otherwise)."""

    cpu: int
    tid: int
    tgid: int
    pid_values: dict[str, Any]
    tgid_values: dict[str, Any] | None
    group_dead: bool


class RepeatExit:
    """The exit of a process identical to the one `model` reports except for its pid and its
    clock fields: what a storm's processes after the first send (`ProcessTable.storm_exits`).
    Its AGGR_PID record is `model.pid_values` with ac_pid and ac_tgid set to `tid` and the
    `accounting.CLOCK_FIELDS` set to `clock`; a repeat is always a whole process's last exit
    without group totals (no AGGR_TGID record), as its model is."""

    __slots__ = ("cpu", "tid", "model", "clock")

    tgid_values = None
    group_dead = True

    def __init__(self, cpu: int, tid: int, model: ExitReport,
                 clock: tuple[int, int, int, int]) -> None:
        self.cpu = cpu
        self.tid = tid
        self.model = model
        self.clock = clock

    @property
    def tgid(self) -> int:
        return self.tid

    @property
    def pid_values(self) -> dict[str, Any]:
        """The record as a full exit computes it (for readers other than the hot path)."""
        values = dict(self.model.pid_values)
        values["ac_pid"] = self.tid
        if "ac_tgid" in values:  # (struct v12 on)
            values["ac_tgid"] = self.tid
        for name, value in zip(accounting.CLOCK_FIELDS, self.clock, strict=True):
            if name in values:
                values[name] = value
        return values

    def __repr__(self) -> str:
        return f"<RepeatExit tid={self.tid} cpu={self.cpu} of {self.model.tid}>"
