"""The process table: every task of the emulated machine, and the only way to change them.

What lives here: every rule about which tasks exist and how they relate. How pids are handed
out (cyclically, skipping pids in use, wrapping to 300); how thread groups form (a leader whose
tid is the group's tgid, threads cloned into it sharing its parent); what a thread's exit does
to its group (the group's taskstats totals are allocated at the first exit that leaves other
threads behind and accumulate every later exit; the last thread out marks the group dead and,
if the totals exist, sends the TGID record; a leader that exits first stays a zombie whose pid
stays taken until the group dies; the dead group's children pass to init); and which tasks
cgroupstats counts in which state.

What must not: what a task is (`tasks`), the arithmetic that turns counters into field values
(`accounting`: this module decides *when* a record is made and of *what*, accounting decides
*what it says*), the wire format (`tsemu.wire`), and I/O, sockets, trio or real time: time
comes from the clock the table is given. An exit is a single call that computes the records
at the moment of exit and returns them in an `ExitReport` for whoever delivers events.
"""

from __future__ import annotations

import copy
import errno
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from tsemu.wire.constants import AcFlag

from . import accounting
from .clock import Clock
from .profiles import KernelProfile
from .tasks import (
    CGROUPSTATS_COUNTER,
    CGROUPSTATS_FIELDS,
    COMM_MAX,
    COUNTERS,
    IDENTITY,
    IDENTITY_SET,
    INT_COUNTER_SET,
    MAX_TS_COUNTER_SET,
    MM_COUNTERS,
    PF_DUMPCORE,
    PF_SIGNALED,
    PID_MAX_LIMIT,
    PROC_IDENTITY,
    RESERVED_PIDS,
    SIGNAL_MAX,
    U32_MAX,
    U64_MAX,
    ExitReport,
    FrozenCounters,
    NoSuchTask,
    ProcIdentity,
    RepeatExit,
    Task,
    TaskState,
    ThreadGroup,
    check_counter,
    check_counters,
    check_int,
    kernel_comm,
    unknown_counter,
)

#: What `ProcessTable.spawn_many` takes for each process: pid (None: automatic), comm, ppid,
#: uid, gid, cpu, cgroup, nice, policy, state, forked_no_exec, superuser, counters, start_ns
#: (None: now), proc (None: plain); the same values as `spawn`'s keywords.
SpawnRow = tuple[int | None, bytes | str, int, int, int, int, str | None, int, int, TaskState,
                 bool, bool, Mapping[str, object] | None, int | None, ProcIdentity | None]


class SpawnRefused(ValueError):
    """Row `index` of a `spawn_many` could not be made: `reason` says why; `made` are the
    leaders of the rows before it, which were."""

    def __init__(self, index: int, reason: Exception, made: list[Task]) -> None:
        super().__init__(f"process {index}: {reason}")
        self.index = index
        self.reason = reason
        self.made = made


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
        check_int("pid_max", pid_max, RESERVED_PIDS + 1, PID_MAX_LIMIT)
        check_int("next_pid", next_pid, 1, pid_max - 1)
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
        #: Pids automatic allocation skips: a scenario's timeline gives them to tasks it makes
        #: later (tsemu's rule, not the kernel's: a scripted machine stays playable whatever
        #: live control made before). An explicit pid may still take one.
        self.reserved: set[int] = set()
        #: the live tasks with counters that move with the clock (`set_rates`)
        self.moving: set[int] = set()
        #: While someone follows the table (the /proc view: `shell.procview`), the tgids of
        #: the processes each change touched since it last looked, and the tasks that have
        #: exited meanwhile; None when no one does (nothing is recorded).
        self.touched: set[int] | None = None
        self.departed: list[Task] = []

    def copy(self) -> ProcessTable:
        """An independent copy of the table as it is now (tasks, thread groups with their
        totals and zombie leaders, cgroups, parents, the pid cursor), on a copy of its
        clock: what the same calls on a new table would have made."""
        twin = copy.copy(self)
        twin.clock = copy.copy(self.clock)
        twin.reserved = set(self.reserved)
        twin.moving = set(self.moving)
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
        self._cursor = check_int("next_pid", next_pid, 1, self.pid_max - 1)

    # --- pids -------------------------------------------------------------------------------

    @property
    def last_pid(self) -> int:
        """The pid automatic allocation gave last (/proc/loadavg's last field)."""
        return self._cursor - 1

    def _touch(self, tgid: int) -> None:
        if self.touched is not None:
            self.touched.add(tgid)

    def _pid_taken(self, pid: int) -> bool:
        # A zombie leader's pid is its group's tgid: taken as long as the group exists.
        return pid in self._tasks or pid in self._groups

    def _alloc_pid(self) -> int:
        """The kernel's cyclic allocation: the lowest free pid at or above the cursor, else,
        wrapping, the lowest free one from RESERVED_PIDS (from 1 while the cursor has not yet
        passed RESERVED_PIDS); EAGAIN when every pid is taken."""
        cursor = self._cursor  # (never below 1, so the search starts at the cursor itself)
        if (cursor < self.pid_max and cursor not in self._tasks and cursor not in self._groups
                and cursor not in self.reserved):
            self._cursor = cursor + 1
            return cursor
        low = RESERVED_PIDS if self._cursor > RESERVED_PIDS else 1
        start = max(self._cursor, low)
        for first, stop in ((start, self.pid_max), (low, start)):
            pid = first
            while pid < stop:
                if not self._pid_taken(pid) and pid not in self.reserved:
                    self._cursor = pid + 1
                    return pid
                pid += 1
        raise OSError(errno.EAGAIN, f"no free pid below pid_max {self.pid_max}")

    def _claim_pid(self, pid: int | None) -> int:
        if pid is None:
            return self._alloc_pid()
        check_int("pid", pid, 1, self.pid_max - 1)
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
            return kernel_comm(value)
        if name in ("uid", "gid", "ppid"):
            return check_int(name, value, 0, U32_MAX)
        if name == "cpu":
            return self._check_cpu(value)
        if name == "nice":
            return check_int(name, value, -20, 19)
        if name == "policy":
            return check_int(name, value, 0, 255)
        if name == "state":
            if not isinstance(value, TaskState) or value is TaskState.ZOMBIE:
                raise ValueError(f"state must be a TaskState other than ZOMBIE, not {value!r}")
            return value
        if name == "cgroup":
            return self._check_cgroup(value)
        if name in ("forked_no_exec", "superuser", "kthread"):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, not {value!r}")
            return value
        if name == "cmdline":
            if value is None:
                return None
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(arg, (bytes, str)) for arg in value):
                raise ValueError(f"cmdline must be a list of arguments, not {value!r}")
            return tuple(a.encode() if isinstance(a, str) else a for a in value)
        if name == "ioprio":
            return check_int(name, value, 0, 0xFFFF)
        if name == "rt_priority":
            return check_int(name, value, 0, 99)
        raise ValueError(f"unknown task attribute {name!r}; valid: {', '.join(IDENTITY)} "
                         f"and the counters {', '.join(COUNTERS)}")

    @staticmethod
    def _check_cgroup(value: object) -> str | None:
        """A cgroup path (interned: many tasks share a few paths) or None."""
        if value is not None and not isinstance(value, str):
            raise ValueError(f"cgroup must be a path string or None, not {value!r}")
        return None if value is None else sys.intern(value)

    @staticmethod
    def check_counters(counters: Mapping[str, object] | None
                        ) -> dict[str, int | tuple[int, int]]:
        return check_counters(counters)

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
              start_ns: int | None = None, proc: ProcIdentity | None = None) -> Task:
        """A new process: its leader (returned, with `counters`) and `threads - 1` more threads
        cloned from it, all started at `start_ns` (default: now). The threads' own counters
        start at zero; what belongs to the mm they share with the leader (hiwater_rss,
        hiwater_vm, the executable's ac_exe_dev and ac_exe_inode, rss, vm) is the leader's,
        as a real thread reports it.

        As in copy_process, the cloned threads do not inherit PF_SUPERPRIV: `superuser` marks
        the leader only (set it on a thread with `set`)."""
        if type(threads) is not int or threads < 1:
            raise ValueError(f"threads must be an int of at least 1, not {threads!r}")
        row = (pid, comm, ppid, uid, gid, cpu, cgroup, nice, policy, state, forked_no_exec,
               superuser, counters, start_ns, proc)
        try:
            (leader,) = self.spawn_many((row,))
        except SpawnRefused as refused:
            raise refused.reason from None
        group = self._groups[leader.tid]
        for _ in range(threads - 1):
            self._clone(group, leader, pid=None, cpu=leader.cpu, counters=_shared_mm(leader),
                        start_ns=group.leader_start_ns)
        return leader

    def spawn_many(self, rows: Iterable[SpawnRow]) -> list[Task]:
        """New single-threaded processes, one per row, in order: what `spawn` makes of each
        (the same checks, in the same order), without a call per process, for a scenario's
        hundred thousand of them. A row that fails its checks raises `SpawnRefused` naming
        it; the rows before it are made, the rows after it are not."""
        made: list[Task] = []
        now = self.clock.monotonic_ns()
        nr_cpus = self.nr_cpus
        tasks = self._tasks
        groups = self._groups
        for index, (pid, comm, ppid, uid, gid, cpu, cgroup, nice, policy, state,
                    forked_no_exec, superuser, counters, start_ns, proc) in enumerate(rows):
            try:
                if start_ns is None:
                    start_ns = now
                elif type(start_ns) is not int or not 0 <= start_ns <= now:
                    check_int("start_ns", start_ns, 0, now)
                if not (type(ppid) is int and 0 <= ppid <= U32_MAX and type(uid) is int
                        and 0 <= uid <= U32_MAX and type(gid) is int and 0 <= gid <= U32_MAX
                        and type(cpu) is int and 0 <= cpu < nr_cpus and type(nice) is int
                        and -20 <= nice <= 19 and type(policy) is int and 0 <= policy <= 255
                        and type(state) is TaskState and state is not TaskState.ZOMBIE
                        and type(forked_no_exec) is bool and type(superuser) is bool):
                    # not the plain values the checks surely pass: one by one, in order
                    for attr, given in (("ppid", ppid), ("uid", uid), ("gid", gid),
                                        ("cpu", cpu), ("nice", nice), ("policy", policy),
                                        ("state", state), ("forked_no_exec", forked_no_exec),
                                        ("superuser", superuser)):
                        self._check_identity(attr, given)
                if type(comm) is not bytes or len(comm) > COMM_MAX or b"\0" in comm:
                    comm = kernel_comm(comm)
                if cgroup is not None:
                    cgroup = self._check_cgroup(cgroup)
                checked = counters if type(counters) is FrozenCounters \
                    else check_counters(counters)
                if proc is not None and type(proc) is not ProcIdentity:
                    raise ValueError(f"proc must be a ProcIdentity, not {proc!r}")
                if pid is None:
                    tid = self._alloc_pid()
                elif type(pid) is int and 0 < pid < self.pid_max and pid not in tasks \
                        and pid not in groups:
                    tid = pid  # an explicit pid (clone3's set_tid) leaves the cursor be
                else:
                    tid = self._claim_pid(pid)
            except (ValueError, OSError) as exc:
                self.generation += len(made)
                raise SpawnRefused(index, exc, made) from None
            leader = Task(tid, tid, ppid, comm, uid, gid, cpu, nice, policy, state, cgroup,
                          start_ns, forked_no_exec, superuser)
            leader._load(checked)
            if proc is not None:
                leader.proc = proc
            group = ThreadGroup(tid, start_ns)
            groups[tid] = group
            group._threads = tid
            tasks[tid] = leader
            if cgroup is not None:
                self._index_cgroup(leader)
            siblings = self._children.get(ppid)
            if siblings is None:
                self._children[ppid] = {tid}
            else:
                siblings.add(tid)
            made.append(leader)
        self.generation += len(made)
        if self.touched is not None:
            self.touched.update(task.tid for task in made)
        return made

    def clone_thread(self, tgid: int, *, pid: int | None = None, cpu: int | None = None,
                     counters: Mapping[str, object] | None = None) -> Task:
        """A new thread in process `tgid`, started now, with the identity of the leader (or
        of the zombie leader, if it has exited) and `counters`; on the leader's CPU unless
        `cpu` is given."""
        group = self.group(tgid)
        model = self._tasks.get(tgid) or group.zombie_leader
        assert model is not None  # a group exists only while it has its leader or a zombie
        checked = check_counters(counters)
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
        task = Task(tid, group.tgid, model.ppid, model.comm, model.uid, model.gid, cpu,
                    model.nice, model.policy, state, model.cgroup, start_ns, True)
        task._load(counters)
        task.proc = model.proc
        self._enter(group, task)
        return task

    def _enter(self, group: ThreadGroup, task: Task) -> None:
        self.generation += 1
        self._touch(group.tgid)
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
            if name in IDENTITY_SET:
                ident[name] = self._check_identity(name, value)
            elif name in INT_COUNTER_SET or name in MAX_TS_COUNTER_SET:
                counters[name] = check_counter(name, value)
            else:
                raise ValueError(f"unknown task attribute {name!r}; valid: "
                                 f"{', '.join(IDENTITY)} and the counters {', '.join(COUNTERS)}")
        self.generation += 1
        self._touch(task.tgid)
        now = self.clock.monotonic_ns()
        task._catch_up(now)
        for name, value in ident.items():
            if name == "ppid":
                assert isinstance(value, int)
                self._set_parent(self._groups[task.tgid], value)
            elif name == "cgroup":
                assert value is None or isinstance(value, str)
                self._unindex_cgroup(task)
                task.cgroup = value
                self._index_cgroup(task)
            elif name in PROC_IDENTITY:
                task.proc = replace(task.proc, **{name: value})  # type: ignore[arg-type]
            else:
                setattr(task, name, value)
        for name, count in counters.items():
            task._store(name, count)
            task._rebase(name, now)
        return task

    def set_rates(self, tid: int, rates: Mapping[str, object]) -> Task:
        """From now on, each named integer counter of live task `tid` grows by so much per
        second of the table's clock (0: it stops), in /proc and taskstats alike, from its
        value now."""
        task = self.get(tid)
        checked = {}
        for name, per_second in rates.items():
            if name not in INT_COUNTER_SET:
                if name in MAX_TS_COUNTER_SET:
                    raise ValueError(f"{name} is a timestamp: it cannot move by itself")
                raise unknown_counter(name)
            checked[name] = check_int(f"{name} per second", per_second, 0, U64_MAX)
        self.generation += 1
        self._touch(task.tgid)
        now = self.clock.monotonic_ns()
        for name, per_second in checked.items():
            task._rate(name, per_second, now)
        if task._rates:
            self.moving.add(task.tid)
        else:
            self.moving.discard(task.tid)
        return task

    def catch_up(self, task: Task) -> None:
        """Bring `task`'s moving counters to now (a new generation if any moved)."""
        if task._catch_up(self.clock.monotonic_ns()):
            self.generation += 1

    def add(self, tid: int, **deltas: int) -> Task:
        """Add to integer counters of live task `tid` (checked first: each result must stay a
        u64). The max/min and max timestamps are values, not sums: use `set` for them."""
        task = self.get(tid)
        results: dict[str, int] = {}
        for name, delta in deltas.items():
            if name not in INT_COUNTER_SET:
                if name in MAX_TS_COUNTER_SET:
                    raise ValueError(f"{name} is a timestamp: set it, do not add to it")
                raise unknown_counter(name)
            if isinstance(delta, bool) or not isinstance(delta, int):
                raise ValueError(f"{name} delta must be an int, not {type(delta).__name__}")
            task._catch_up(self.clock.monotonic_ns())
            results[name] = check_int(name, task.counter_map.get(name, 0) + delta, 0, U64_MAX)
        self.generation += 1
        self._touch(task.tgid)
        now = self.clock.monotonic_ns()
        for name, value in results.items():
            task._store(name, value)
            task._rebase(name, now)
        return task

    def move(self, tid: int, cpu: int) -> Task:
        """Migrate live task `tid` to `cpu` (where its exit will be reported)."""
        task = self.get(tid)
        task.cpu = self._check_cpu(cpu)
        self.generation += 1
        self._touch(task.tgid)
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
        if task._rates is not None:
            self.catch_up(task)
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
        if self.moving:
            for tid in group._tids:
                if tid in self.moving:
                    self.catch_up(self._tasks[tid])
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
                   core: bool = False, caller: int | None = None,
                   leader_last: bool = False) -> list[ExitReport]:
        """Every live thread of process `tgid` exits (exit_group(2), or a fatal signal), each on
        its own CPU; the reports come in exit order, the last one carrying AGROUP and, if the
        group's totals exist, the TGID record.

        Order: the caller (the thread that called exit_group or took the signal; by default
        the leader, or the lowest live tid once the leader has gone) exits first and the rest
        follow in tid order, as on a real kernel, where the caller exits while the others are
        still being woken: measured on Debian 6.1, 6.12 and 7.2, a 2-threaded process's leader
        reported first (ac_flag 0) and the other thread last, with AXSIG|AGROUP and the
        AGGR_TGID record, in 11 exits of 12. `leader_last` gives the rare order of the 12th:
        the other threads in tid order, then the leader, which then dumps core if any does.

        Flags, as the kernel sets them: the other threads die of the SIGKILL the group exit
        sends them (zap_other_threads), so each carries AXSIG even after a plain exit, with
        the group's exit code; with `core`, only the dumping thread (the caller, by default
        the leader) carries ACORE and the 0x80 bit, the others having taken the group's exit
        code before the dump finished."""
        group = self.group(tgid)
        if not group._tids:
            raise NoSuchTask(f"thread group {tgid} has no live threads")
        exit_code, signaled = _exit_code(code, signal, core)
        if caller is not None and leader_last:
            raise ValueError("name a caller or ask for the leader last, not both")
        if leader_last:
            others = sorted(t for t in group._tids if t != tgid)
            order = others + ([tgid] if tgid in group._tids else [])
            dumper = order[-1]
        else:
            if caller is None:
                caller = tgid if tgid in group._tids else min(group._tids)
            elif caller not in group._tids:
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

    def storm_exits(self, count: int, cpus: Sequence[int], *, comm: str = "storm",
                    model: ExitReport | None = None) -> list[ExitReport | RepeatExit]:
        """`count` single-threaded processes called `comm` (children of init, uid 0, no
        counters), each spawned and exiting at once with status 0, the i-th on
        `cpus[i % len(cpus)]`: what `spawn` then `exit_task` would report for each, made
        for load tests at a fraction of the cost.

        The first goes through `spawn` and `exit_task`; the others differ from it only in
        their pid (allocated as `spawn` allocates, and freed at once) and in their clock
        fields, so each is a `RepeatExit` of the first. Every one of them starts and exits
        at the instant the call began (ac_etime 0), as a process living less than a
        microsecond would. With `model` (the first exit of an earlier call for the same
        storm, same `comm`) all `count` are repeats of it: a paced storm's chunks then cost
        no spawn each."""
        if count <= 0:
            return []
        for cpu in cpus:
            self._check_cpu(cpu)
        ncpus = len(cpus)
        reports: list[ExitReport | RepeatExit] = []
        first = 0
        if model is None:
            model = self.exit_task(self.spawn(comm=comm, cpu=cpus[0]).tid)
            reports.append(model)
            first = 1
            if count == 1:
                return reports
        self.generation += 1
        now = self.clock.monotonic_ns()
        clock = accounting.clock_fields(now, now, now, self.clock.wall_seconds())
        alloc = self._alloc_pid
        append = reports.append
        for i in range(first, count):
            append(RepeatExit(cpus[i % ncpus], alloc(), model, clock))
        return reports

    def _exit(self, task: Task, *, exit_code: int, signaled: bool, core: bool,
              cpu: int) -> ExitReport:
        """taskstats_exit, then the task leaves the table."""
        self.generation += 1
        if self.touched is not None:
            self.touched.add(task.tgid)
            self.departed.append(task)
        if task._rates is not None:
            task._catch_up(self.clock.monotonic_ns())
            self.moving.discard(task.tid)
        group = self._groups[task.tgid]
        # taskstats_tgid_alloc: a thread leaving others behind (a zombie leader counts: it is
        # still on the thread list) allocates the group's totals, once.
        others = len(group._tids) - 1 + (group.zombie_leader is not None)
        if group.stats is None and others:
            group.stats = accounting.new_group_stats(self.profile)
        group_dead = len(group._tids) == 1
        task.exit_code = exit_code
        task._set_flag(PF_SIGNALED, signaled)
        task._set_flag(PF_DUMPCORE, core)
        now = self.clock.monotonic_ns()
        if group.stats is not None:
            accounting.accumulate_exit(group.stats, task, now_ns=now, profile=self.profile)
        pid_values = accounting.pid_record(task, leader_start_ns=group.leader_start_ns,
                                           now_ns=now, wall_seconds=self.clock.wall_seconds(),
                                           profile=self.profile)
        tgid_values = None
        if group_dead:
            if self.profile.exit_v12_flags:  # taskstats_exit marks the last thread, 5.17 on
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
                for name in MM_COUNTERS:
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
            self._touch(child)


def _shared_mm(leader: Task) -> dict[str, int | tuple[int, int]]:
    """The counters a new thread shares with `leader` through their one mm (and the mm's
    executable): the leader's values, those it has."""
    held = leader.counter_map
    return {name: held[name] for name in MM_COUNTERS if held.get(name)}


def _exit_code(code: int, signal: int | None, core: bool) -> tuple[int, bool]:
    """The kernel's exit_code and whether PF_SIGNALED is set: (code & 0xff) << 8 for exit(code);
    the signal number, | 0x80 if core was dumped, for a death by signal."""
    if signal is None:
        if core:
            raise ValueError("only a death by signal dumps core: give signal= with core=True")
        check_int("code", code, -(2**31), 2**31 - 1)
        return (code & 0xFF) << 8, False
    if code:
        raise ValueError("give an exit code or a signal, not both")
    check_int("signal", signal, 1, SIGNAL_MAX)
    return signal | (0x80 if core else 0), True
