"""The process table: the kernel's tasks and thread groups, as plain objects.

What lives here: every rule about which tasks exist and how they relate. How pids are handed
out (cyclically, skipping pids in use, wrapping to 300); how thread groups form (a leader whose
tid is the group's tgid, threads cloned into it sharing its parent); what a thread's exit does
to its group (the group's taskstats totals are allocated at the first exit that leaves other
threads behind and accumulate every later exit; the last thread out marks the group dead and,
if the totals exist, sends the TGID record; a leader that exits first stays a zombie whose pid
stays taken until the group dies; the dead group's children pass to init); and which tasks
cgroupstats counts in which state.

What must not: the struct taskstats layout and wire format (`tsemu.wire`), the arithmetic that
turns counters into field values (`accounting`: this module decides *when* a record is made
and of *what*, accounting decides *what it says*), and I/O, sockets, trio or real time: time
comes from the clock the table is given.

Theory of operation. A `Task` keeps identity as attributes and its counters, in the units the
kernel keeps them (nanoseconds of CPU time, raw byte counts), in one small dict holding only the
non-zero ones, so 100,000 idle tasks cost little (tasks made from a scenario's spec share its
`FrozenCounters` until their first change). A `ThreadGroup` holds the live tids of a process in
creation order (without a dict while there is only one), its leader's start time (which
outlives the leader: every thread's ac_tgetime is measured from it) and `stats`, the kernel's
`signal->stats`. `ProcessTable` owns both and is the only thing that changes them; an exit is
a single call that computes the records at the moment of exit and returns them in an
`ExitReport` for whoever delivers events.
"""

from __future__ import annotations

import copy
import enum
import errno
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

from tsemu.wire.constants import AcFlag

from . import accounting
from .clock import Clock
from .profiles import KernelProfile

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
)
#: The time each category's longest delay happened, as (tv_sec, tv_nsec): set, never added.
MAX_TS_COUNTERS: tuple[str, ...] = tuple(
    f"{cat}_delay_max_ts" for cat in accounting.DELAY_CATEGORIES)
#: Every counter name `set`, `spawn(counters=...)` and `clone_thread(counters=...)` accept.
COUNTERS: tuple[str, ...] = INT_COUNTERS + MAX_TS_COUNTERS

_INT_COUNTERS = frozenset(INT_COUNTERS)
_MAX_TS_COUNTERS = frozenset(MAX_TS_COUNTERS)
#: Counters that belong to the task's mm: gone once a leader is a zombie (exit_mm ran).
_MM_COUNTERS = ("hiwater_rss", "hiwater_vm", "ac_exe_dev", "ac_exe_inode")

#: Identity a `set` call may change. tid, tgid and start_ns never change.
IDENTITY: tuple[str, ...] = (
    "comm", "uid", "gid", "ppid", "cpu", "nice", "policy", "state", "cgroup",
    "forked_no_exec", "superuser",
)
_IDENTITY = frozenset(IDENTITY)

_EMPTY_INTS: Mapping[str, int] = MappingProxyType({})
_EMPTY_STAMPS: Mapping[str, tuple[int, int]] = MappingProxyType({})

# Task._flags bits, named after the PF_* flags they stand for.
_PF_FORKNOEXEC = 0x1
_PF_SUPERPRIV = 0x2
_PF_SIGNALED = 0x4
_PF_DUMPCORE = 0x8


def _unknown_counter(name: str) -> ValueError:
    return ValueError(f"unknown counter {name!r}; valid counters: {', '.join(COUNTERS)}")


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is out of range [{low}, {high}]")
    return value


def _check_counter(name: str, value: object) -> int | tuple[int, int]:
    """A validated counter value: a u64, or a (tv_sec, tv_nsec) pair for the max timestamps."""
    if name in _INT_COUNTERS:
        return _check_int(name, value, 0, U64_MAX)
    if name in _MAX_TS_COUNTERS:
        if not isinstance(value, tuple) or len(value) != 2:
            raise ValueError(f"{name} must be a (tv_sec, tv_nsec) pair, not {value!r}")
        sec = _check_int(f"{name} tv_sec", value[0], -(2**63), 2**63 - 1)
        nsec = _check_int(f"{name} tv_nsec", value[1], 0, 999_999_999)
        return (sec, nsec)
    raise _unknown_counter(name)


def _immutable(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError("FrozenCounters cannot be changed: make a dict of them")


class FrozenCounters(dict[str, Any]):
    """Counters that cannot change, as a scenario's specs hold them: a task created with
    them (`spawn(counters=...)`) shares this very dict with the spec until its first change
    instead of holding a copy. Reads like the dict it is; every change raises TypeError."""

    __slots__ = ()

    __setitem__ = __delitem__ = __ior__ = _immutable
    clear = pop = popitem = setdefault = update = _immutable

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenCounters, (dict(self),))

    def __copy__(self) -> FrozenCounters:
        return self

    def __deepcopy__(self, memo: object) -> FrozenCounters:
        return self


def _check_counters(counters: Mapping[str, object] | None) -> dict[str, int | tuple[int, int]]:
    """Validated counters (`_check_counter` on each, in order), in a new dict."""
    checked: dict[str, int | tuple[int, int]] = {}
    if counters:
        for name, value in counters.items():
            if type(value) is int and name in _INT_COUNTERS and 0 <= value <= U64_MAX:
                checked[name] = value  # what _check_counter returns, without the calls
            else:
                checked[name] = _check_counter(name, value)
    return checked


def _comm(value: object) -> bytes:
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
        "cgroup", "start_ns", "exit_code", "_flags", "_counters", "_stamps",
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

    def __init__(self, *, tid: int, tgid: int, ppid: int, comm: bytes, uid: int, gid: int,
                 cpu: int, nice: int, policy: int, state: TaskState, cgroup: str | None,
                 start_ns: int, forked_no_exec: bool = False, superuser: bool = False) -> None:
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
        self._flags = ((_PF_FORKNOEXEC if forked_no_exec else 0)
                       | (_PF_SUPERPRIV if superuser else 0))
        self._counters = None
        self._stamps = None

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
        return self._flag(_PF_FORKNOEXEC)

    @forked_no_exec.setter
    def forked_no_exec(self, on: bool) -> None:
        self._set_flag(_PF_FORKNOEXEC, on)

    @property
    def superuser(self) -> bool:
        return self._flag(_PF_SUPERPRIV)

    @superuser.setter
    def superuser(self, on: bool) -> None:
        self._set_flag(_PF_SUPERPRIV, on)

    @property
    def signaled(self) -> bool:
        """Killed by a signal (PF_SIGNALED: AXSIG)."""
        return self._flag(_PF_SIGNALED)

    @property
    def dumped_core(self) -> bool:
        """Dumped core on its way out (PF_DUMPCORE: ACORE)."""
        return self._flag(_PF_DUMPCORE)

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
        if name in _INT_COUNTERS:
            return self.counter_map.get(name, 0)
        if name in _MAX_TS_COUNTERS:
            raise ValueError(f"{name} is a (tv_sec, tv_nsec) pair: read it with max_ts()")
        raise _unknown_counter(name)

    def max_ts(self, name: str) -> tuple[int, int]:
        """One `<cat>_delay_max_ts` as (tv_sec, tv_nsec); (0, 0) when never set."""
        if name in _MAX_TS_COUNTERS:
            return self.max_ts_map.get(name, (0, 0))
        if name in _INT_COUNTERS:
            raise ValueError(f"{name} is an integer counter: read it with counter()")
        raise _unknown_counter(name)

    def counters(self) -> dict[str, int | tuple[int, int]]:
        """A copy of every counter that is not zero."""
        return {**self.counter_map, **self.max_ts_map}

    def _load(self, checked: dict[str, Any], given: object = None) -> None:
        """`_store` every validated counter of `checked`, on a task that has none yet. A dict
        of non-zero integers only (the usual case) is kept as it is: `checked` must be the
        caller's own; or, when the counters were `given` as `FrozenCounters`, those, shared
        until the task's first change."""
        if not checked:
            return
        for value in checked.values():
            if not value or isinstance(value, tuple):
                break
        else:
            self._counters = given if type(given) is FrozenCounters else checked
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
        return twin

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
        values["ac_pid"] = values["ac_tgid"] = self.tid
        for name, value in zip(accounting.CLOCK_FIELDS, self.clock, strict=True):
            if name in values:
                values[name] = value
        return values

    def __repr__(self) -> str:
        return f"<RepeatExit tid={self.tid} cpu={self.cpu} of {self.model.tid}>"


class ProcessTable:
    """Every task of the emulated machine, and the only way to change them.

    `next_pid` is where pid allocation starts (the kernel's idr cursor); `pid_max` is
    /proc/sys/kernel/pid_max: pids are below it.
    """

    #: PID records change only with `generation` and the clock (see `pid_clock_fields`).
    versioned_records = True

    def __init__(self, clock: Clock, profile: KernelProfile, nr_cpus: int, *,
                 pid_max: int = PID_MAX_LIMIT, next_pid: int = 1) -> None:
        if nr_cpus < 1:
            raise ValueError(f"nr_cpus must be at least 1, not {nr_cpus}")
        _check_int("pid_max", pid_max, RESERVED_PIDS + 1, PID_MAX_LIMIT)
        _check_int("next_pid", next_pid, 1, pid_max - 1)
        self.clock = clock
        self.profile = profile
        self.nr_cpus = nr_cpus
        self.pid_max = pid_max
        self._cursor = next_pid
        self._tasks: dict[int, Task] = {}
        self._groups: dict[int, ThreadGroup] = {}
        self._by_cgroup: dict[str, dict[int, None]] = {}
        #: cgroups that exist: declared with `add_cgroup`, or ever given a task
        self._cgroups: set[str] = {"/"}
        self._children: dict[int, set[int]] = {}
        #: Bumped by every change to a task or a group (see `pid_clock_fields`): a PID record
        #: taken at one generation is the record of any later moment of that generation,
        #: except for its clock fields.
        self.generation = 0

    def copy(self) -> ProcessTable:
        """An independent copy of the table as it is now (tasks, thread groups with their
        totals and zombie leaders, cgroups, parents, the pid cursor), on a copy of its
        clock: what the same calls on a new table would have made."""
        twin = copy.copy(self)
        twin.clock = copy.copy(self.clock)
        twin._tasks = {tid: task._copy() for tid, task in self._tasks.items()}
        twin._groups = {}
        for tgid, group in self._groups.items():
            other = ThreadGroup(tgid, group.leader_start_ns)
            threads = group._threads
            other._threads = dict(threads) if isinstance(threads, dict) else threads
            if group.stats is not None:
                other.stats = dict(group.stats)
            if group.zombie_leader is not None:
                other.zombie_leader = group.zombie_leader._copy()
            twin._groups[tgid] = other
        twin._by_cgroup = {path: dict(tids) for path, tids in self._by_cgroup.items()}
        twin._cgroups = set(self._cgroups)
        twin._children = {parent: set(tgids) for parent, tgids in self._children.items()}
        return twin

    def reset_pid_cursor(self, next_pid: int) -> None:
        """Start the next automatic pid allocation from `next_pid` again (as a table made
        with that `next_pid` whose tasks were all given their pids)."""
        self._cursor = _check_int("next_pid", next_pid, 1, self.pid_max - 1)

    # --- pids -------------------------------------------------------------------------------

    def _pid_taken(self, pid: int) -> bool:
        # A zombie leader's pid is its group's tgid: taken as long as the group exists.
        return pid in self._tasks or pid in self._groups

    def _alloc_pid(self) -> int:
        """The kernel's cyclic allocation: the lowest free pid at or above the cursor, else,
        wrapping, the lowest free one from RESERVED_PIDS (from 1 while the cursor has not yet
        passed RESERVED_PIDS); EAGAIN when every pid is taken."""
        cursor = self._cursor  # (never below 1, so the search starts at the cursor itself)
        if cursor < self.pid_max and cursor not in self._tasks and cursor not in self._groups:
            self._cursor = cursor + 1
            return cursor
        low = RESERVED_PIDS if self._cursor > RESERVED_PIDS else 1
        start = max(self._cursor, low)
        for first, stop in ((start, self.pid_max), (low, start)):
            pid = first
            while pid < stop:
                if not self._pid_taken(pid):
                    self._cursor = pid + 1
                    return pid
                pid += 1
        raise OSError(errno.EAGAIN, f"no free pid below pid_max {self.pid_max}")

    def _claim_pid(self, pid: int | None) -> int:
        if pid is None:
            return self._alloc_pid()
        _check_int("pid", pid, 1, self.pid_max - 1)
        if self._pid_taken(pid):
            raise ValueError(f"pid {pid} is in use")
        return pid  # an explicit pid (clone3's set_tid) leaves the cursor where it was

    # --- validation -------------------------------------------------------------------------

    def _check_cpu(self, cpu: object) -> int:
        if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < self.nr_cpus:
            raise ValueError(f"cpu {cpu!r} does not exist: the machine has CPUs "
                             f"0-{self.nr_cpus - 1}")
        return cpu

    def _check_identity(self, name: str, value: object) -> object:
        """A validated identity value (comm normalised to bytes)."""
        if name == "comm":
            return _comm(value)
        if name in ("uid", "gid", "ppid"):
            return _check_int(name, value, 0, U32_MAX)
        if name == "cpu":
            return self._check_cpu(value)
        if name == "nice":
            return _check_int(name, value, -20, 19)
        if name == "policy":
            return _check_int(name, value, 0, 255)
        if name == "state":
            if not isinstance(value, TaskState) or value is TaskState.ZOMBIE:
                raise ValueError(f"state must be a TaskState other than ZOMBIE, not {value!r}")
            return value
        if name == "cgroup":
            return self._check_cgroup(value)
        if name in ("forked_no_exec", "superuser"):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, not {value!r}")
            return value
        raise ValueError(f"unknown task attribute {name!r}; valid: {', '.join(IDENTITY)} "
                         f"and the counters {', '.join(COUNTERS)}")

    @staticmethod
    def _check_cgroup(value: object) -> str | None:
        """A cgroup path (interned: many tasks share a few paths) or None."""
        if value is not None and not isinstance(value, str):
            raise ValueError(f"cgroup must be a path string or None, not {value!r}")
        return None if value is None else sys.intern(value)

    @staticmethod
    def _check_counters(counters: Mapping[str, object] | None
                        ) -> dict[str, int | tuple[int, int]]:
        return _check_counters(counters)

    # --- indexes ----------------------------------------------------------------------------

    def _index_cgroup(self, task: Task) -> None:
        if task.cgroup is not None:
            self._cgroups.add(task.cgroup)
            self._by_cgroup.setdefault(task.cgroup, {})[task.tid] = None

    def _unindex_cgroup(self, task: Task) -> None:
        if task.cgroup is not None:
            members = self._by_cgroup[task.cgroup]
            del members[task.tid]
            if not members:
                del self._by_cgroup[task.cgroup]

    def _add_child(self, parent: int, tgid: int) -> None:
        self._children.setdefault(parent, set()).add(tgid)

    def _remove_child(self, parent: int, tgid: int) -> None:
        siblings = self._children.get(parent)
        if siblings is not None:
            siblings.discard(tgid)
            if not siblings:
                del self._children[parent]

    def _group_tasks(self, group: ThreadGroup) -> Iterator[Task]:
        """Every task of `group` still in the table: live threads and a zombie leader."""
        for tid in group._tids:
            yield self._tasks[tid]
        if group.zombie_leader is not None:
            yield group.zombie_leader

    def _set_parent(self, group: ThreadGroup, parent: int) -> None:
        """real_parent is the same for every thread (CLONE_THREAD copies it), so it is the
        process's: changing it changes every thread's ppid."""
        old = next(self._group_tasks(group)).ppid
        if old == parent:
            return
        self.generation += 1
        self._remove_child(old, group.tgid)
        for task in self._group_tasks(group):
            task.ppid = parent
        self._add_child(parent, group.tgid)

    # --- creating tasks ---------------------------------------------------------------------

    def spawn(self, *, pid: int | None = None, comm: bytes | str, ppid: int = 1, uid: int = 0,
              gid: int = 0, cpu: int = 0, threads: int = 1, cgroup: str | None = None,
              nice: int = 0, policy: int = 0, state: TaskState = TaskState.RUNNING,
              forked_no_exec: bool = False, superuser: bool = False,
              counters: Mapping[str, object] | None = None,
              start_ns: int | None = None) -> Task:
        """A new process: its leader (returned, with `counters`) and `threads - 1` more threads
        cloned from it with zeroed counters, all started at `start_ns` (default: now).

        As in copy_process, the cloned threads do not inherit PF_SUPERPRIV: `superuser` marks
        the leader only (set it on a thread with `set`)."""
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int of at least 1, not {threads!r}")
        now = self.clock.monotonic_ns()
        if start_ns is None:
            start_ns = now
        _check_int("start_ns", start_ns, 0, now)
        if not (type(ppid) is int and 0 <= ppid <= U32_MAX and type(uid) is int
                and 0 <= uid <= U32_MAX and type(gid) is int and 0 <= gid <= U32_MAX
                and type(cpu) is int and 0 <= cpu < self.nr_cpus and type(nice) is int
                and -20 <= nice <= 19 and type(policy) is int and 0 <= policy <= 255
                and type(state) is TaskState and state is not TaskState.ZOMBIE
                and type(forked_no_exec) is bool and type(superuser) is bool):
            # not the plain values the checks surely pass: check one by one, in order
            for attr, given in (("ppid", ppid), ("uid", uid), ("gid", gid), ("cpu", cpu),
                                ("nice", nice), ("policy", policy), ("state", state),
                                ("forked_no_exec", forked_no_exec), ("superuser", superuser)):
                self._check_identity(attr, given)
        comm = _comm(comm)
        cgroup = self._check_cgroup(cgroup)
        checked = _check_counters(counters)
        tid = self._claim_pid(pid)
        leader = Task(tid=tid, tgid=tid, ppid=ppid, comm=comm, uid=uid, gid=gid, cpu=cpu,
                      nice=nice, policy=policy, state=state, cgroup=cgroup, start_ns=start_ns,
                      forked_no_exec=forked_no_exec, superuser=superuser)
        leader._load(checked, counters)
        group = ThreadGroup(tid, start_ns)
        self._groups[tid] = group
        self._enter(group, leader)
        self._add_child(leader.ppid, tid)
        for _ in range(threads - 1):
            self._clone(group, leader, pid=None, cpu=leader.cpu, counters={}, start_ns=start_ns)
        return leader

    def clone_thread(self, tgid: int, *, pid: int | None = None, cpu: int | None = None,
                     counters: Mapping[str, object] | None = None) -> Task:
        """A new thread in process `tgid`, started now, with the identity of the leader (or
        of the zombie leader, if it has exited) and `counters`; on the leader's CPU unless
        `cpu` is given."""
        group = self.group(tgid)
        model = self._tasks.get(tgid) or group.zombie_leader
        assert model is not None  # a group exists only while it has its leader or a zombie
        checked = _check_counters(counters)
        if cpu is not None:
            self._check_cpu(cpu)
        return self._clone(group, model, pid=pid, cpu=model.cpu if cpu is None else cpu,
                           counters=checked, start_ns=self.clock.monotonic_ns())

    def _clone(self, group: ThreadGroup, model: Task, *, pid: int | None, cpu: int,
               counters: dict[str, int | tuple[int, int]], start_ns: int) -> Task:
        """(`counters`: validated, in the caller's own dict, which the task may keep)"""
        tid = self._claim_pid(pid)
        state = TaskState.RUNNING if model.state is TaskState.ZOMBIE else model.state
        # copy_process: PF_FORKNOEXEC set on every new task, PF_SUPERPRIV cleared.
        task = Task(tid=tid, tgid=group.tgid, ppid=model.ppid, comm=model.comm, uid=model.uid,
                    gid=model.gid, cpu=cpu, nice=model.nice, policy=model.policy, state=state,
                    cgroup=model.cgroup, start_ns=start_ns, forked_no_exec=True)
        task._load(counters)
        self._enter(group, task)
        return task

    def _enter(self, group: ThreadGroup, task: Task) -> None:
        self.generation += 1
        self._tasks[task.tid] = task
        group._add(task.tid)
        self._index_cgroup(task)

    # --- looking up -------------------------------------------------------------------------

    def get(self, tid: int) -> Task:
        """The live task `tid`; NoSuchTask if there is none (exited tasks included)."""
        task = self._tasks.get(tid)
        if task is None:
            group = self._groups.get(tid)
            if group is not None and group.zombie_leader is not None:
                raise NoSuchTask(f"task {tid} has exited: it is a zombie group leader waiting "
                                 f"for its threads {list(group.tids)}")
            raise NoSuchTask(f"no task with pid {tid}")
        return task

    def group(self, tgid: int) -> ThreadGroup:
        """The thread group (process) `tgid`; NoSuchTask if there is none."""
        group = self._groups.get(tgid)
        if group is None:
            raise NoSuchTask(f"no thread group with tgid {tgid}")
        return group

    def __contains__(self, tid: object) -> bool:
        return tid in self._tasks

    def __iter__(self) -> Iterator[Task]:
        """The live tasks, in the order they were created."""
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        """The number of live tasks."""
        return len(self._tasks)

    def groups(self) -> Iterator[ThreadGroup]:
        """The thread groups, in the order they were created."""
        return iter(list(self._groups.values()))

    # --- changing tasks ---------------------------------------------------------------------

    def set(self, tid: int, **values: object) -> Task:
        """Assign identity attributes and/or counters of live task `tid`. Everything is checked
        before anything changes. `ppid` is the process's parent: setting it on any thread sets
        it for the whole group. A max timestamp takes a (tv_sec, tv_nsec) pair."""
        task = self.get(tid)
        ident: dict[str, object] = {}
        counters: dict[str, int | tuple[int, int]] = {}
        for name, value in values.items():
            if name in _IDENTITY:
                ident[name] = self._check_identity(name, value)
            elif name in _INT_COUNTERS or name in _MAX_TS_COUNTERS:
                counters[name] = _check_counter(name, value)
            else:
                raise ValueError(f"unknown task attribute {name!r}; valid: "
                                 f"{', '.join(IDENTITY)} and the counters {', '.join(COUNTERS)}")
        self.generation += 1
        for name, value in ident.items():
            if name == "ppid":
                assert isinstance(value, int)
                self._set_parent(self._groups[task.tgid], value)
            elif name == "cgroup":
                assert value is None or isinstance(value, str)
                self._unindex_cgroup(task)
                task.cgroup = value
                self._index_cgroup(task)
            else:
                setattr(task, name, value)
        for name, count in counters.items():
            task._store(name, count)
        return task

    def add(self, tid: int, **deltas: int) -> Task:
        """Add to integer counters of live task `tid` (checked first: each result must stay a
        u64). The max/min and max timestamps are values, not sums: use `set` for them."""
        task = self.get(tid)
        results: dict[str, int] = {}
        for name, delta in deltas.items():
            if name not in _INT_COUNTERS:
                if name in _MAX_TS_COUNTERS:
                    raise ValueError(f"{name} is a timestamp: set it, do not add to it")
                raise _unknown_counter(name)
            if isinstance(delta, bool) or not isinstance(delta, int):
                raise ValueError(f"{name} delta must be an int, not {type(delta).__name__}")
            results[name] = _check_int(name, task.counter_map.get(name, 0) + delta, 0, U64_MAX)
        self.generation += 1
        for name, value in results.items():
            task._store(name, value)
        return task

    def move(self, tid: int, cpu: int) -> Task:
        """Migrate live task `tid` to `cpu` (where its exit will be reported)."""
        task = self.get(tid)
        task.cpu = self._check_cpu(cpu)
        self.generation += 1
        return task

    # --- cgroups ----------------------------------------------------------------------------

    def cgroup_tasks(self, path: str) -> list[Task]:
        """The live tasks in cgroup `path` itself (not its descendants), oldest first."""
        return [self._tasks[tid] for tid in self._by_cgroup.get(path, ())]

    def add_cgroup(self, path: str) -> None:
        """Declare cgroup `path` (and its ancestors), so it exists while empty."""
        path = self._check_cgroup(path) or "/"
        while path not in self._cgroups:
            self._cgroups.add(path)
            path = path.rsplit("/", 1)[0] or "/"

    def cgroups(self) -> list[str]:
        """Every cgroup the table knows, sorted."""
        return sorted(self._cgroups)

    def cgroup_counts(self, path: str) -> dict[str, int] | None:
        """struct cgroupstats for cgroup `path`, counted as cgroupstats_build counts (see
        `TaskState` and `CGROUPSTATS_COUNTER`); None for a cgroup the table does not know
        (the kernel answers EINVAL for a directory that is no cgroup)."""
        if path not in self._cgroups:
            return None
        counts = dict.fromkeys(CGROUPSTATS_FIELDS, 0)
        for tid in self._by_cgroup.get(path, ()):
            field = CGROUPSTATS_COUNTER[self._tasks[tid].state]
            if field is not None:
                counts[field] += 1
        return counts

    # --- queries ----------------------------------------------------------------------------

    def _find(self, tid: int) -> Task:
        """A task a GET can name: a live one or a zombie leader (find_task_by_vpid)."""
        task = self._tasks.get(tid)
        if task is None:
            group = self._groups.get(tid)
            task = group.zombie_leader if group is not None else None
        if task is None:
            raise NoSuchTask(f"no task with pid {tid}")
        return task

    def pid_stats(self, tid: int) -> dict[str, Any]:
        """What TASKSTATS_CMD_GET with PID `tid` answers now. A zombie leader still answers,
        with its exit code and without what went with its mm (hiwater, exe)."""
        task = self._find(tid)
        return accounting.pid_record(
            task, leader_start_ns=self._groups[task.tgid].leader_start_ns,
            now_ns=self.clock.monotonic_ns(), wall_seconds=self.clock.wall_seconds(),
            profile=self.profile)

    def pid_clock_fields(self, tid: int) -> tuple[int, int, int, int]:
        """The `accounting.CLOCK_FIELDS` of `pid_stats(tid)` now: with a record of `tid` taken
        earlier at the current `generation`, all a GET by PID needs to answer again."""
        task = self._find(tid)
        return accounting.clock_fields(task.start_ns, self._groups[task.tgid].leader_start_ns,
                                       self.clock.monotonic_ns(), self.clock.wall_seconds())

    def tgid_stats(self, tgid: int) -> dict[str, Any]:
        """What TASKSTATS_CMD_GET with TGID `tgid` answers now: the group's accumulated totals
        plus its live threads. As in the kernel, which looks the id up as any task and then
        walks that task's group, a non-leader's tid answers for its whole group."""
        group = self._groups[self._find(tgid).tgid]
        return accounting.tgid_query(group.stats, (self._tasks[t] for t in group._tids),
                                     now_ns=self.clock.monotonic_ns(), profile=self.profile)

    # --- exits ------------------------------------------------------------------------------

    def exit_task(self, tid: int, *, code: int = 0, signal: int | None = None,
                  core: bool = False, cpu: int | None = None) -> ExitReport:
        """Live task `tid` exits on `cpu` (default: its own): with exit(`code`), or killed by
        `signal` (dumping core if `core`). Returns the records the exit sends."""
        task = self.get(tid)
        if cpu is not None:
            self._check_cpu(cpu)
        exit_code, signaled = _exit_code(code, signal, core)
        return self._exit(task, exit_code=exit_code, signaled=signaled, core=core,
                          cpu=task.cpu if cpu is None else cpu)

    def exit_group(self, tgid: int, *, code: int = 0, signal: int | None = None,
                   core: bool = False, caller: int | None = None) -> list[ExitReport]:
        """Every live thread of process `tgid` exits (exit_group(2), or a fatal signal), each on
        its own CPU; the reports come in exit order, the last one carrying AGROUP and, if the
        group's totals exist, the TGID record.

        Order: by default the threads other than the leader in tid order, then the leader.
        With `caller` (the thread that called exit_group or took the signal) that thread goes
        first and the rest follow in tid order, as on a real kernel, where the caller exits
        while the others are still being woken.

        Flags, as the kernel sets them: the other threads die of the SIGKILL the group exit
        sends them (zap_other_threads), so each carries AXSIG even after a plain exit, with
        the group's exit code; with `core`, only the dumping thread (the caller, by default
        the leader) carries ACORE and the 0x80 bit, the others having taken the group's exit
        code before the dump finished."""
        group = self.group(tgid)
        if not group._tids:
            raise NoSuchTask(f"thread group {tgid} has no live threads")
        exit_code, signaled = _exit_code(code, signal, core)
        others = sorted(t for t in group._tids if t != tgid)
        if caller is None:
            order = others + ([tgid] if tgid in group._tids else [])
            dumper = order[-1]
        else:
            if caller not in group._tids:
                raise NoSuchTask(f"caller {caller} is not a live thread of group {tgid}")
            order = [caller] + sorted(t for t in group._tids if t != caller)
            dumper = caller
        reports = []
        for tid in order:
            mine = tid == dumper
            task_code = exit_code if mine or not core else exit_code & ~0x80
            reports.append(self._exit(self._tasks[tid], exit_code=task_code,
                                      signaled=signaled or not mine, core=core and mine,
                                      cpu=self._tasks[tid].cpu))
        return reports

    def storm_exits(self, count: int, cpus: Sequence[int], *,
                    comm: str = "storm") -> list[ExitReport | RepeatExit]:
        """`count` single-threaded processes called `comm` (children of init, uid 0, no
        counters), each spawned and exiting at once with status 0, the i-th on
        `cpus[i % len(cpus)]`: what `spawn` then `exit_task` would report for each, made
        for load tests at a fraction of the cost.

        The first goes through `spawn` and `exit_task`; the others differ from it only in
        their pid (allocated as `spawn` allocates, and freed at once) and in their clock
        fields, so each is a `RepeatExit` of the first. Every one of them starts and exits
        at the instant the call began (ac_etime 0), as a process living less than a
        microsecond would."""
        if count <= 0:
            return []
        for cpu in cpus:
            self._check_cpu(cpu)
        ncpus = len(cpus)
        model = self.exit_task(self.spawn(comm=comm, cpu=cpus[0]).tid)
        reports: list[ExitReport | RepeatExit] = [model]
        if count == 1:
            return reports
        self.generation += 1
        now = self.clock.monotonic_ns()
        clock = accounting.clock_fields(now, now, now, self.clock.wall_seconds())
        alloc = self._alloc_pid
        append = reports.append
        for i in range(1, count):
            append(RepeatExit(cpus[i % ncpus], alloc(), model, clock))
        return reports

    def _exit(self, task: Task, *, exit_code: int, signaled: bool, core: bool,
              cpu: int) -> ExitReport:
        """taskstats_exit, then the task leaves the table."""
        self.generation += 1
        group = self._groups[task.tgid]
        # taskstats_tgid_alloc: a thread leaving others behind (a zombie leader counts: it is
        # still on the thread list) allocates the group's totals, once.
        others = len(group._tids) - 1 + (group.zombie_leader is not None)
        if group.stats is None and others:
            group.stats = accounting.new_group_stats(self.profile)
        group_dead = len(group._tids) == 1
        task.exit_code = exit_code
        task._set_flag(_PF_SIGNALED, signaled)
        task._set_flag(_PF_DUMPCORE, core)
        now = self.clock.monotonic_ns()
        if group.stats is not None:
            accounting.accumulate_exit(group.stats, task, now_ns=now, profile=self.profile)
        pid_values = accounting.pid_record(task, leader_start_ns=group.leader_start_ns,
                                           now_ns=now, wall_seconds=self.clock.wall_seconds(),
                                           profile=self.profile)
        tgid_values = None
        if group_dead:
            pid_values["ac_flag"] |= int(AcFlag.AGROUP)
            if group.stats is not None:
                tgid_values = accounting.tgid_exit_record(group.stats, self.profile)
        self._leave(group, task, group_dead)
        return ExitReport(cpu=cpu, tid=task.tid, tgid=task.tgid, pid_values=pid_values,
                          tgid_values=tgid_values, group_dead=group_dead)

    def _leave(self, group: ThreadGroup, task: Task, group_dead: bool) -> None:
        del self._tasks[task.tid]
        group._remove(task.tid)
        self._unindex_cgroup(task)
        if not group_dead:
            if task.is_leader:  # the leader waits as a zombie for its threads; exit_mm ran
                task.state = TaskState.ZOMBIE
                for name in _MM_COUNTERS:
                    task._store(name, 0)
                group.zombie_leader = task
            return
        parent = task.ppid
        del self._groups[group.tgid]
        group.zombie_leader = None
        self._remove_child(parent, group.tgid)
        # forget_original_parent: the dead process's children pass to init.
        reaper = 1 if group.tgid != 1 else 0
        for child in self._children.pop(group.tgid, set()):
            self._set_parent(self._groups[child], reaper)


def _exit_code(code: int, signal: int | None, core: bool) -> tuple[int, bool]:
    """The kernel's exit_code and whether PF_SIGNALED is set: (code & 0xff) << 8 for exit(code);
    the signal number, | 0x80 if core was dumped, for a death by signal."""
    if signal is None:
        if core:
            raise ValueError("only a death by signal dumps core: give signal= with core=True")
        _check_int("code", code, -(2**31), 2**31 - 1)
        return (code & 0xFF) << 8, False
    if code:
        raise ValueError("give an exit code or a signal, not both")
    _check_int("signal", signal, 1, SIGNAL_MAX)
    return signal | (0x80 if core else 0), True
