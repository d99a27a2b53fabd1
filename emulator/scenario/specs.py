"""A checked scenario, as values: the machine, the processes alive at its start, the timeline.

What lives here: the types a reading produces and the rest of tsemu consumes (`Machine`,
`ProcessSpec`, `ThreadSpec`, `Event`, `StormPlan`, `Scenario`). Specs and events are named
tuples: a big scenario makes a hundred thousand of them, and a tuple is made several times
faster than a frozen dataclass. What must not: reading (`reader`), carrying a scenario out
(`build`).
"""

from __future__ import annotations

import json
import math
import tomllib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from ..model.clock import DEFAULT_BOOT_WALL_SECONDS, NSEC_PER_SEC
from ..model.families import DEFAULT_TASKSTATS_ID, FamilyTable
from ..model.kernel import DEFAULT_NR_CPUS_CONFIG
from ..model.profiles import KernelProfile
from ..model.profiles import profile as profile_named
from ..model.tasks import PID_MAX_LIMIT, FrozenCounters, ProcIdentity, TaskState

if TYPE_CHECKING:
    from ..model.table import ProcessTable

#: Where a scenario starts on the virtual clock, by default: 100 s after boot.
DEFAULT_START_NS = 100 * NSEC_PER_SEC


#: The emulated machine's memory when the scenario says nothing: 8 GiB.
DEFAULT_MEMORY_KIB = 8 << 20


@dataclass(frozen=True)
class Machine:
    """`[machine]`, with defaults filled in; see FORMAT.md."""

    cpus: int = 2
    kernel: str = "6.18"
    #: the TASKSTATS family id (a scenario that names none gets its kernel profile's)
    family_id: int = DEFAULT_TASKSTATS_ID
    #: CONFIG_NR_CPUS of the emulated build: the most CPUs `cpus` may say, and what bounds a
    #: cpumask string (100 + 6 * nr_cpus bytes)
    nr_cpus: int = DEFAULT_NR_CPUS_CONFIG
    clock: str = "virtual"
    boot_wall_seconds: int = DEFAULT_BOOT_WALL_SECONDS
    #: the scenario's start on the virtual clock: nanoseconds since boot
    start_ns: int = DEFAULT_START_NS
    next_pid: int = 1
    pid_max: int = PID_MAX_LIMIT
    mirror_host: bool = False
    #: /proc/meminfo's MemTotal (KiB)
    memory_kib: int = DEFAULT_MEMORY_KIB
    #: /proc/loadavg's three averages; None: the number of running and D-state tasks
    load: tuple[float, float, float] | None = None

    @property
    def profile(self) -> KernelProfile:
        return profile_named(self.kernel)

    def families(self) -> FamilyTable:
        """nlctrl and TASKSTATS as the profile's kernel registers them, with `family_id`."""
        return FamilyTable.default(self.family_id, self.profile)


#: The counters of a spec that gives none: one shared empty mapping, not a dict per spec.
NO_COUNTERS = FrozenCounters()
NO_RATES: Mapping[str, int] = MappingProxyType({})


def frozen(counters: Mapping[str, Any]) -> FrozenCounters:
    """A spec's counters: immutable, so that the tasks made from the spec can share them."""
    if type(counters) is FrozenCounters:
        return counters
    return FrozenCounters(counters) if counters else NO_COUNTERS


class ThreadSpec(NamedTuple):
    """A thread besides the leader. None means "as the leader" (cpu, state), "its own name is
    the leader's" (comm), or, for `tid`, "automatic" until the scenario is checked. `age_ns`
    is how long before its creation point (the scenario start, or the spawn) it started;
    threads of a timeline spawn start with it (0). `counters` are `tasks.COUNTERS` values;
    the mm's counters come from the leader."""

    tid: int | None
    comm: str | None = None
    cpu: int | None = None
    state: TaskState | None = None
    superuser: bool = False
    age_ns: int = 0
    counters: Mapping[str, int | tuple[int, int]] = NO_COUNTERS
    #: counters that move with the clock: name -> per second (from the scenario's start)
    rates: Mapping[str, int] = NO_RATES

    def with_tid(self, tid: int) -> ThreadSpec:
        """This thread with its tid filled in (itself if it already has that one)."""
        return self if self.tid == tid else self._replace(tid=tid)


class ProcessSpec(NamedTuple):
    """A process: its leader's identity and counters, and its other threads. `age_ns` is how
    long before its creation point (the scenario start for [[process]], the event's time for
    a spawn) it started. `pid` None: automatic, until the scenario is checked."""

    pid: int | None
    comm: str
    ppid: int = 1
    uid: int = 0
    gid: int = 0
    cgroup: str | None = None
    state: TaskState = TaskState.RUNNING
    cpu: int = 0
    age_ns: int = 0
    nice: int = 0
    policy: int = 0
    forked_no_exec: bool = False
    superuser: bool = False
    counters: Mapping[str, int | tuple[int, int]] = NO_COUNTERS
    threads: tuple[ThreadSpec, ...] = ()
    #: what /proc shows and taskstats does not (None: plain: arguments its comm, ...)
    proc: ProcIdentity | None = None
    #: counters that move with the clock: name -> per second (from the scenario's start, or
    #: the spawn)
    rates: Mapping[str, int] = NO_RATES

    @property
    def tids(self) -> tuple[int | None, ...]:
        """Every thread's tid, the leader's first."""
        return (self.pid, *(t.tid for t in self.threads))

    def with_tids(self, pid: int, tids: Sequence[int]) -> ProcessSpec:
        """This process with its pid and its threads' tids filled in (itself if it already
        has those)."""
        if not self.threads and pid == self.pid:
            return self
        threads = tuple(t.with_tid(tid) for t, tid in zip(self.threads, tids, strict=True))
        if pid == self.pid and all(a is b for a, b in zip(threads, self.threads, strict=True)):
            return self
        return self._replace(pid=pid, threads=threads)


class Event(NamedTuple):
    """One timeline action at `at_ns` nanoseconds after the scenario start.

    `args`, by action (every pid explicit):
    - spawn: {"process": ProcessSpec}
    - clone: {"tgid": int, "thread": ThreadSpec}
    - set: {"pid": int, "values": {identity or counter name: value}} (as `ProcessTable.set`)
    - add: {"pid": int, "deltas": {counter name: int}}
    - move: {"pid": int, "cpu": int}
    - exit: {"pid": int, "code": int, "signal": int | None, "core": bool, "cpu": int | None}
    - exit_group: {"pid": int, "code": int, "signal": int | None, "core": bool,
      "caller": int | None, "leader_last": bool}
    """

    at_ns: int
    action: str
    args: dict[str, Any]


class StormPlan(NamedTuple):
    """A storm generator: `exits` processes exit at `rate` a second, the i-th at `start_ns +
    i / rate` (nanoseconds after the scenario start, rounded down) on `cpus[i % len(cpus)]`,
    each spawned and exiting at once as `tsemu ctl storm`'s do. Played as time passes, not
    expanded into the timeline (a storm is millions of exits)."""

    start_ns: int
    rate: Fraction
    exits: int
    cpus: tuple[int, ...]
    threads: int = 1

    def due_ns(self, index: int) -> int:
        """When exit `index` is due (ns after the scenario start)."""
        return self.start_ns + math.floor(index * NSEC_PER_SEC / self.rate)

    def due_before(self, end_ns: int) -> int:
        """How many exits are due before `end_ns` (ns after the scenario start): the
        smallest i with due_ns(i) >= end_ns, at most `exits`."""
        if end_ns <= self.start_ns:
            return 0
        # due_ns(i) < end  <=>  i * NSEC / rate < end - start  (both sides integers once
        # floored: floor(x) < n <=> x < n for an integer n)
        below = (end_ns - self.start_ns) * self.rate / NSEC_PER_SEC
        return min(self.exits, math.ceil(below))


def _no_overrides() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Scenario:
    """A checked scenario: the machine, declared cgroups, the processes alive at the start
    (every pid explicit, populations expanded) and the timeline, generators expanded, sorted
    by time (stable)."""

    source: str
    machine: Machine
    cgroups: tuple[str, ...]
    processes: tuple[ProcessSpec, ...]
    timeline: tuple[Event, ...]
    #: the [[fault]] entries (`model.faults.Fault` fields; times since the scenario start)
    faults: tuple[Mapping[str, Any], ...] = ()
    #: the storm generators, played as time passes (not in the timeline)
    storms: tuple[StormPlan, ...] = ()
    #: the text it was read from, zlib-compressed (for `with_overrides`): neither the text
    #: nor its document is kept as such (~2.2 KB per [[process]] table)
    packed_text: bytes | None = field(default=None, repr=False, compare=False)
    #: the language of that text: "toml" or "json"
    syntax: str = field(default="toml", repr=False, compare=False)
    #: the [machine] keys `with_overrides` replaced in that text to make this scenario
    overrides: Mapping[str, Any] = field(default_factory=_no_overrides, repr=False,
                                         compare=False)
    #: the table the check built at the scenario's start, for the first `build_table` to
    #: take instead of building it again (a list: empty once taken, or if there is none;
    #: not an argument, so that `dataclasses.replace` makes a scenario without it)
    _start_table: list[ProcessTable] = field(default_factory=list, init=False, repr=False,
                                             compare=False)

    @property
    def text(self) -> str | None:
        """The text it was read from (None if it was not read from a text)."""
        if self.packed_text is None:
            return None
        return zlib.decompress(self.packed_text).decode("utf-8", "surrogatepass")

    @property
    def document(self) -> Mapping[str, Any] | None:
        """The document it was read from (with the `overrides`), read again from `text` on
        each access."""
        text = self.text
        if text is None:
            return None
        document = json.loads(text) if self.syntax == "json" else tomllib.loads(text)
        if self.overrides:
            document.setdefault("machine", {}).update(self.overrides)
        return MappingProxyType(document)

    @property
    def task_count(self) -> int:
        """How many tasks are alive at the scenario's start."""
        return sum(1 + len(p.threads) for p in self.processes)

    def clock_ns(self, event: Event) -> int:
        """When `event` happens on the virtual clock (nanoseconds since boot)."""
        return self.machine.start_ns + event.at_ns

    def process(self, pid: int) -> ProcessSpec:
        """The process with that pid alive at the start; KeyError if none."""
        for spec in self.processes:
            if spec.pid == pid:
                return spec
        raise KeyError(pid)

    def with_overrides(self, *, kernel: str | None = None, cpus: int | None = None,
                       family_id: int | None = None, clock: str | None = None) -> Scenario:
        """The same scenario with [machine] keys replaced (None keeps the file's), checked
        again as a whole: ScenarioError if, say, a process runs on a CPU the new count lacks."""
        overrides = {key: value for key, value in (
            ("kernel", kernel), ("cpus", cpus), ("family_id", family_id), ("clock", clock))
            if value is not None}
        if not overrides:
            return self
        text = self.text
        if text is None:
            raise ValueError("this Scenario was not read from a document: build it anew")
        from .files import read_text
        from .values import show
        label = ", ".join(f"{k}={show(v)}" for k, v in overrides.items())
        applied = {**self.overrides, **overrides}
        return read_text(text, f"{self.source} (with {label})", syntax=self.syntax,
                         overrides=applied, packed_text=self.packed_text)
