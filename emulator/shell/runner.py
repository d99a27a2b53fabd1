"""A whole emulated machine: a scenario's process table, its server, its timeline and its clock.

`Emulator` is what `tsemu serve`, the control socket and the pytest plugin drive. It owns the
one process table, and every change to it goes through here, so that each exit is broadcast
exactly once, on its CPU, in the order it happened:

- with a virtual clock, time moves only through `advance`: the timeline's events that fall
  due are applied in order, the clock set to each event's time first, so every time-derived
  field (ac_btime, ac_etime) is exactly reproducible;
- with the real clock, a task applies each timeline event when its time comes.

Direct operations (`spawn`, `exit`, `set`, `storm`) act at the clock's current time.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ..model.clock import NSEC_PER_SEC, VirtualClock
from ..model.kernel import TaskSource
from ..model.recorded import RecordedExit
from ..model.table import ProcessTable
from ..model.tasks import ExitReport, RepeatExit
from ..scenario import Event, Scenario, apply_event, build_table, format_duration
from ..scenario.tables import split_rates
from .addressing import proc_view_dir
from .busypoll import DEFAULT_WINDOW_NS
from .clients import DEFAULT_MAX_CLIENTS
from .hostmirror import HostMirror
from .permissions import AdminPolicy
from .procview import ProcView, machine_facts
from .server import Server


def _made_by(event: Event) -> list[int]:
    """The pids a timeline event gives to new tasks."""
    if event.action == "spawn":
        return [tid for tid in event.args["process"].tids if tid is not None]
    if event.action == "clone" and event.args["thread"].tid is not None:
        return [event.args["thread"].tid]
    return []


def _timeline_pids(timeline: Collection[Event]) -> dict[int, int]:
    """pid -> when (ns after the start) a timeline event first makes a task of that pid."""
    pids: dict[int, int] = {}
    for event in timeline:
        for pid in _made_by(event):
            pids.setdefault(pid, event.at_ns)
    return pids


@contextlib.contextmanager
def loading_for_good() -> Iterator[None]:
    """The scope in which a server loads its machine (the scenario, the table, the server):
    the cyclic garbage collector is paused meanwhile, and what was made is then frozen
    (`gc.freeze`), so that no collection ever scans the machine's hundred thousand tasks
    again: they live as long as the server. (Frozen objects are still freed when their last
    reference goes; only cycles among them would stay.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


#: Exits a storm makes before handing them to the CPU tasks as one batch.
STORM_CHUNK = 256


@dataclass
class StormResult:
    exits: int
    seconds: float
    deliveries: int

    @property
    def rate(self) -> float:
        return self.exits / self.seconds if self.seconds else float("inf")


class Emulator:
    """One emulated machine, built from a scenario, served on `socket_path`."""

    def __init__(self, scenario: Scenario, socket_path: Path, *,
                 admin: AdminPolicy | None = None,
                 cgroup_roots: tuple[str, ...] = ("/sys/fs/cgroup",),
                 busy_poll_ns: int = DEFAULT_WINDOW_NS,
                 max_clients: int = DEFAULT_MAX_CLIENTS, shared_dir: bool = False,
                 ctl_group: str | None = None, proc_view: bool = True) -> None:
        machine = scenario.machine
        self.scenario = scenario
        self.table: ProcessTable = build_table(scenario)
        answers: TaskSource = self.table
        if machine.mirror_host:  # pids the scenario does not define: the host's /proc
            answers = HostMirror(self.table, machine.profile)
        self.server = Server(
            socket_path, answers, profile=machine.profile, nr_cpus=machine.cpus,
            nr_cpus_config=machine.nr_cpus, families=machine.families(),
            admin=admin, cgroup_roots=cgroup_roots, busy_poll_ns=busy_poll_ns,
            max_clients=max_clients, shared_dir=shared_dir)
        self.ctl_group = ctl_group
        self.timeline: deque[Event] = deque(scenario.timeline)
        self.start_ns = self.table.clock.monotonic_ns()
        self._lock = trio.Lock()
        #: timeline events that could not be carried out (live control changed the table)
        self.skipped = 0
        #: pid -> when the timeline makes a task of that pid: automatic pids avoid them
        self._reserved_by = _timeline_pids(scenario.timeline)
        self.table.reserved = set(self._reserved_by)
        for fault in scenario.faults:
            self.add_fault(**fault)
        #: the /proc view the shim shows clients (`procview`), made when serving starts
        self.view: ProcView | None = None
        if proc_view:
            self.view = ProcView(self.table, proc_view_dir(self.server.socket_path),
                                 profile=machine.profile, facts=machine_facts(machine),
                                 boot_wall_seconds=machine.boot_wall_seconds)

    def add_fault(self, kind: str, **fields: Any) -> Any:
        """Put a fault in force (`model.faults`); its window (at, until) is scenario time."""
        for key in ("at_ns", "until_ns"):
            if fields.get(key) is not None:
                fields[key] += self.start_ns
        return self.server.add_fault(kind, **fields)

    @property
    def socket_path(self) -> Path:
        return self.server.socket_path

    @property
    def virtual(self) -> bool:
        return isinstance(self.table.clock, VirtualClock)

    def now_seconds(self) -> float:
        """Scenario time: seconds since the scenario started."""
        return (self.table.clock.monotonic_ns() - self.start_ns) / NSEC_PER_SEC

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                  announce: bool = False) -> None:
        """Serve until cancelled (and, with the real clock, play the timeline)."""
        from .control import serve_control

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda task_status: self.server.serve(
                    task_status=task_status, announce=False))
                await nursery.start(lambda task_status: serve_control(
                    self, group=self.ctl_group, task_status=task_status))
                if self.view is not None:
                    self.view.open()
                    nursery.start_soon(functools.partial(self.view.run, virtual=self.virtual))
                if self.virtual:
                    await self.advance(0)  # events due at the start happen at the start
                else:
                    nursery.start_soon(self._play_in_real_time)
                if announce:
                    print(f"tsemu: listening on {self.socket_path}", file=sys.stderr,
                          flush=True)
                task_status.started(self)
        finally:
            if self.view is not None:
                self.view.close()

    async def _play_in_real_time(self) -> None:
        start = trio.current_time()
        while self.timeline:
            event = self.timeline[0]
            await trio.sleep_until(start + event.at_ns / NSEC_PER_SEC)
            async with self._lock:
                self.timeline.popleft()
                await self._broadcast(self._apply(event))

    def _apply(self, event: Event) -> list[ExitReport | RecordedExit]:
        """Carry out a timeline event. One that live control made impossible (a task it made
        exit, say) is skipped, said on stderr and counted: no event ends the server."""
        for pid in _made_by(event):
            self.table.reserved.discard(pid)
        try:
            return apply_event(self.table, event)
        except (ValueError, LookupError, OSError) as exc:
            self.skipped += 1
            print(f"tsemu: the timeline's {event.action} at "
                  f"{format_duration(event.at_ns)} was skipped: {exc}", file=sys.stderr,
                  flush=True)
            return []

    def _show(self) -> None:
        """The /proc view follows what the table's last change did."""
        if self.view is not None:
            self.view.sync()

    async def _broadcast(self, reports: Sequence[ExitReport | RecordedExit]) -> None:
        self._show()  # the exited are gone from /proc before anyone hears of their exit
        for report in reports:
            await self.server.broadcast(report)
            if type(report) is RecordedExit:
                # Each CPU broadcasts on its own: a recording's order across CPUs holds
                # only if each recorded exit is out before the next is handed over.
                await self.server.settle()

    # -- operations ------------------------------------------------------------------------

    async def advance(self, seconds: float) -> list[Event]:
        """Move the virtual clock forward, applying the timeline events that fall due."""
        if not self.virtual:
            raise ValueError("the clock is real: advance works only with clock = \"virtual\"")
        if seconds < 0:
            raise ValueError(f"cannot move the clock back ({seconds} s)")
        clock = self.table.clock
        assert isinstance(clock, VirtualClock)
        target = clock.monotonic_ns() + round(seconds * NSEC_PER_SEC)
        fired: list[Event] = []
        async with self._lock:
            while self.timeline and self.start_ns + self.timeline[0].at_ns <= target:
                event = self.timeline.popleft()
                clock.advance_ns(max(0, self.start_ns + event.at_ns - clock.monotonic_ns()))
                await self._broadcast(self._apply(event))
                fired.append(event)
            clock.advance_ns(target - clock.monotonic_ns())
            if self.view is not None:
                self.view.sync()
                await self.view.refresh()
                self.view.write_machine()
        await self.server.settle()
        return fired

    async def spawn(self, **spec: Any) -> list[int]:
        """Create a process now; returns its tids, the leader's (the pid) first."""
        pid = spec.get("pid")
        if pid in self._reserved_by and pid in self.table.reserved:
            raise ValueError(f"pid {pid} is the timeline's: it spawns a task of that pid at "
                             f"{format_duration(self._reserved_by[pid])}")
        async with self._lock:
            task = self.table.spawn(**spec)
            self._show()
            return list(self.table.group(task.tid).tids)

    async def exit(self, pid: int, *, code: int = 0, signal: int | None = None,
                   core: bool = False, cpu: int | None = None,
                   leader_last: bool = False) -> list[ExitReport]:
        """Exit `pid` now: a whole process when `pid` leads one (its leader first, unless
        `leader_last`), else the one thread."""
        async with self._lock:
            group = self._group_led_by(pid)
            if group is not None and len(group) > 1:
                if cpu is not None:
                    for tid in group.tids:
                        self.table.move(tid, cpu)
                reports = self.table.exit_group(pid, code=code, signal=signal, core=core,
                                                leader_last=leader_last)
            else:
                reports = [self.table.exit_task(pid, code=code, signal=signal, core=core,
                                                cpu=cpu)]
            await self._broadcast(reports)
        await self.server.settle()
        return reports

    def _group_led_by(self, pid: int) -> Any:
        try:
            group = self.table.group(pid)
        except LookupError:
            return None
        return group if group.leader_tid == pid else None

    async def set(self, pid: int, values: Mapping[str, Any]) -> None:
        """Change a task's fields or counters; a counter given as a `Rate` moves from now."""
        plain, rates = split_rates(values)
        async with self._lock:
            try:
                if plain:
                    self.table.set(pid, **plain)
                if rates:
                    self.table.set_rates(pid, rates)
            finally:
                self._show()

    async def storm(self, count: int, cpus: list[int], threads: int = 1) -> StormResult:
        """`count` processes exit as fast as the server sends them (for load tests)."""
        if count < 0 or threads < 1 or not cpus:
            raise ValueError("storm needs count >= 0, threads >= 1 and at least one CPU")
        deliveries_before = sum(c.stats.deliveries for c in self.server.listeners.cpus)
        started = time.perf_counter()
        async with self._lock:
            await self._storm(count, cpus, threads)
        await self.server.settle()
        seconds = time.perf_counter() - started
        deliveries = sum(c.stats.deliveries for c in self.server.listeners.cpus)
        return StormResult(count, seconds, deliveries - deliveries_before)

    async def _storm(self, count: int, cpus: list[int], threads: int) -> None:
        """The storm's exits, made `STORM_CHUNK` at a time and handed to the CPU tasks as one
        ordered batch per chunk: no await per exit. Exits that happened are broadcast even
        when something fails (or the caller is cancelled) halfway through a chunk."""
        listeners = self.server.listeners
        table = self.table
        spawn, exit_group = table.spawn, table.exit_group
        ncpus = len(cpus)
        done = 0
        while done < count:
            end = min(count, done + STORM_CHUNK)
            reports: list[ExitReport | RepeatExit] = []
            try:
                if threads == 1:  # the same process again and again: one built, the rest patched
                    turn = done % ncpus
                    reports.extend(table.storm_exits(end - done, cpus[turn:] + cpus[:turn]))
                else:
                    for i in range(done, end):
                        task = spawn(comm="storm", cpu=cpus[i % ncpus], threads=threads)
                        reports.extend(exit_group(task.tid))
            except BaseException:
                listeners.submit_nowait(reports)
                raise
            self._show()  # (drains what the chunk's short-lived processes left to follow)
            try:
                await listeners.submit_many(reports)
            except BaseException:  # cancelled waiting for room, none queued; they happened
                listeners.submit_nowait(reports)
                raise
            done = end

    async def wait_for_listener(self, cpus: Collection[int] | None = None) -> None:
        """Return once some listener is registered (on one of `cpus`, if given)."""
        while True:
            listening = self.server.listeners.listeners()
            if any(cpus is None or cpu in cpus for cpu in listening):
                return
            await trio.sleep(0.005)
