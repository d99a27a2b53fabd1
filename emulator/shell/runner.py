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
import math
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
from ..scenario import Event, Scenario, StormPlan, apply_event, build_table, format_duration
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


#: A paced storm hands its exits over once at least this long's worth of them are due (s):
#: a trip through trio's scheduler per exit would cap the rate, and a listener cannot tell
#: exits 50 us apart from exits spread evenly within those 50 us.
PACE_QUANTUM = 50e-6
#: A paced storm sleeps in trio when its next exit is further away than this (s); closer, it
#: waits by yielding to the scheduler (trio's sleeps wake a millisecond late, at best).
PACE_SLEEP = 2e-3
#: A paced storm that fell behind (the server busy elsewhere for a few milliseconds) makes
#: up for it in pieces of at most this many exits, no faster than `PACE_CATCH_UP` times its
#: rate: caught up at full speed, the backlog of a 3 ms pause went out as one burst of 900
#: events, more than a listener's default buffer holds (332 of them), and a listener that
#: keeps up with the rate got ENOBUFS all the same. (Pieces much smaller cost more than they
#: spare: each is a send to every listener.)
PACE_BURST = 64
PACE_CATCH_UP = 1.5


@dataclass
class StormResult:
    exits: int
    seconds: float
    deliveries: int
    #: a reset stopped the storm before all its exits were made (`exits` were)
    stopped: bool = False

    @property
    def rate(self) -> float:
        return self.exits / self.seconds if self.seconds else float("inf")


@dataclass
class _Progress:
    """How many exits of a storm have been made so far (what a stopped storm reports), and
    the process its later exits repeat."""

    done: int = 0
    #: the storm's first process: every later exit of the storm repeats it
    #: (`ProcessTable.storm_exits`), so that a chunk costs no spawn of its own
    model: ExitReport | None = None


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
        self.ctl_group = ctl_group
        self._lock = trio.Lock()
        #: pid -> when the timeline makes a task of that pid: automatic pids avoid them
        self._reserved_by = _timeline_pids(scenario.timeline)
        table = build_table(scenario)
        self._start_table(table)
        answers = self._answers(table)
        self.server = Server(
            socket_path, answers, profile=machine.profile, nr_cpus=machine.cpus,
            nr_cpus_config=machine.nr_cpus, families=machine.families(),
            admin=admin, cgroup_roots=cgroup_roots, busy_poll_ns=busy_poll_ns,
            max_clients=max_clients, shared_dir=shared_dir)
        for fault in scenario.faults:
            self.add_fault(**fault)
        #: what the machine is running that a reset stops: the real-time timeline and
        #: generator storms (one scope), and the storms control asked for (one each)
        self._nursery: trio.Nursery | None = None
        self._playing = trio.CancelScope()
        self._storms: set[trio.CancelScope] = set()
        #: the /proc view the shim shows clients (`procview`), made when serving starts
        self.view: ProcView | None = None
        if proc_view:
            self.view = ProcView(self.table, proc_view_dir(self.server.socket_path),
                                 profile=machine.profile, facts=machine_facts(machine),
                                 boot_wall_seconds=machine.boot_wall_seconds)

    def _answers(self, table: ProcessTable) -> TaskSource:
        """What the server answers from: `table`, or with `mirror_host` the table and, for
        the pids the scenario does not define, the host's /proc."""
        if self.scenario.machine.mirror_host:
            return HostMirror(table, self.scenario.machine.profile)
        return table

    def _start_table(self, table: ProcessTable) -> None:
        """Take `table` (the scenario's at its start) as the machine's, with the timeline and
        the generators' storms from their beginning."""
        self.table: ProcessTable = table
        self.timeline: deque[Event] = deque(self.scenario.timeline)
        #: the generators' storms, each with how many of its exits were made
        self.storms: list[tuple[StormPlan, _Progress]] = [
            (plan, _Progress()) for plan in self.scenario.storms]
        self.start_ns = table.clock.monotonic_ns()
        #: timeline events that could not be carried out (live control changed the table)
        self.skipped = 0
        table.reserved = set(self._reserved_by)

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
                self._nursery = nursery
                await nursery.start(lambda task_status: self.server.serve(
                    task_status=task_status, announce=False))
                await nursery.start(lambda task_status: serve_control(
                    self, group=self.ctl_group, task_status=task_status))
                if self.view is not None:
                    self.view.open()
                    nursery.start_soon(functools.partial(self.view.run, virtual=self.virtual))
                await self._play()
                if announce:
                    print(f"tsemu: listening on {self.socket_path}", file=sys.stderr,
                          flush=True)
                task_status.started(self)
        finally:
            self._nursery = None
            if self.view is not None:
                self.view.close()

    async def _play(self) -> None:
        """Start the scenario's time: on a virtual clock, what is due at the start happens now;
        on the real clock, the timeline and the generators' storms play by themselves."""
        if self.virtual:
            await self.advance(0)
            return
        assert self._nursery is not None
        self._playing = trio.CancelScope()
        self._nursery.start_soon(self._play_in_real_time, self._playing, trio.current_time())

    async def _play_in_real_time(self, scope: trio.CancelScope, start: float) -> None:
        """The timeline and each storm generator, from `start` (trio time) on, until over or
        `scope` is cancelled (a reset)."""
        with scope:
            async with trio.open_nursery() as nursery:
                for plan, progress in self.storms:
                    nursery.start_soon(self._play_storm, start, plan, progress)
                while self.timeline:
                    event = self.timeline[0]
                    await trio.sleep_until(start + event.at_ns / NSEC_PER_SEC)
                    async with self._lock:
                        self.timeline.popleft()
                        await self._broadcast(self._apply(event))

    async def _play_storm(self, start: float, plan: StormPlan, progress: _Progress) -> None:
        """A generator's storm on the real clock: paced from its start on."""
        await trio.sleep_until(start + plan.start_ns / NSEC_PER_SEC)
        await self._paced(plan.exits, list(plan.cpus), plan.threads, float(plan.rate),
                          progress)
        await self.server.settle()

    async def reset(self) -> None:
        """Put the machine back as the scenario starts it, as a server just started on it
        would be (the `reset` control op; the pytest fixture's between tests): what runs is
        stopped (the real-time timeline, storms), the clients are dropped (`Server.reset`),
        then the table is the scenario's again (its tasks, clock, timeline, pid allocation),
        with the scenario's faults and nothing else in force, and the /proc view shows it
        from scratch. Nothing a client did before can be seen after."""
        self._playing.cancel()
        for scope in list(self._storms):
            scope.cancel()
        async with self._lock:
            table = build_table(self.scenario)
            # (drops the clients, lets the exits under way go out, then answers from `table`)
            await self.server.reset(self._answers(table))
            # From here on nothing awaits until the machine is whole again.
            self._start_table(table)
            for fault in self.scenario.faults:
                self.add_fault(**fault)
            if self.view is not None:
                self.view.reopen(table)
        await self._play()

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
            while True:
                # What happens next: the timeline's next event, or the next exit of a storm
                # (at the same instant: the timeline first, then the storms in order).
                event_at = (self.start_ns + self.timeline[0].at_ns if self.timeline
                            else target + 1)
                storm = self._next_storm()
                if storm is not None and storm[0] < event_at and storm[0] <= target:
                    await self._storm_until(storm[1], min(event_at, target + 1))
                elif event_at <= target:
                    event = self.timeline.popleft()
                    clock.advance_ns(max(0, event_at - clock.monotonic_ns()))
                    await self._broadcast(self._apply(event))
                    fired.append(event)
                else:
                    break
            clock.advance_ns(target - clock.monotonic_ns())
            if self.view is not None:
                self.view.sync()
                await self.view.refresh()
                self.view.write_machine()
        await self.server.settle()
        return fired

    def _next_storm(self) -> tuple[int, int] | None:
        """(when, which) of the storm whose next exit comes first (on the clock; the first
        storm in the scenario's order at a tie); None when every storm is over."""
        best: tuple[int, int] | None = None
        for which, (plan, progress) in enumerate(self.storms):
            if progress.done < plan.exits:
                at = self.start_ns + plan.due_ns(progress.done)
                if best is None or at < best[0]:
                    best = (at, which)
        return best

    async def _storm_until(self, which: int, end: int) -> None:
        """On the virtual clock: the next exits of storm `which`, the clock set to the first
        one's time, as many as come before `end` (the next timeline event, or the end of the
        advance), before the next exit of another storm (after it, for a storm earlier in
        order) and within the same wall-clock second, `STORM_CHUNK` at most. Exits made
        together share their clock fields; these differ in nothing but the second of
        ac_btime, so each exit is reported exactly as at its own instant."""
        plan, progress = self.storms[which]
        clock = self.table.clock
        assert isinstance(clock, VirtualClock)
        first = progress.done
        at = self.start_ns + plan.due_ns(first)
        clock.advance_ns(max(0, at - clock.monotonic_ns()))
        now = clock.monotonic_ns()
        end = min(end, (now // NSEC_PER_SEC + 1) * NSEC_PER_SEC)
        for other, (other_plan, other_progress) in enumerate(self.storms):
            if other != which and other_progress.done < other_plan.exits:
                other_at = self.start_ns + other_plan.due_ns(other_progress.done)
                end = min(end, other_at + (other > which))
        upto = max(first + 1, min(plan.due_before(end - self.start_ns), first + STORM_CHUNK))
        await self._storm_chunk(progress, upto - first, list(plan.cpus), plan.threads)
        progress.done = upto

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

    async def storm(self, count: int, cpus: list[int], threads: int = 1,
                    rate: float | None = None) -> StormResult:
        """`count` processes exit, for load tests: as fast as the server sends them, or with a
        `rate`, that many a second, spread evenly (the i-th due `i / rate` seconds after the
        first), on `cpus` in turn. A reset stops it (`stopped`)."""
        if count < 0 or threads < 1 or not cpus:
            raise ValueError("storm needs count >= 0, threads >= 1 and at least one CPU")
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"a storm's rate is a number of exits per second above 0, not "
                             f"{rate}")
        deliveries_before = sum(c.stats.deliveries for c in self.server.listeners.cpus)
        progress = _Progress()
        started = time.perf_counter()
        with trio.CancelScope() as scope:
            self._storms.add(scope)
            try:
                if rate is None:
                    async with self._lock:
                        await self._unpaced(count, cpus, threads, progress)
                else:
                    await self._paced(count, cpus, threads, rate, progress)
            finally:
                self._storms.discard(scope)
        await self.server.settle()
        seconds = time.perf_counter() - started
        deliveries = sum(c.stats.deliveries for c in self.server.listeners.cpus)
        return StormResult(progress.done, seconds, deliveries - deliveries_before,
                           stopped=scope.cancelled_caught)

    async def _unpaced(self, count: int, cpus: list[int], threads: int,
                       progress: _Progress) -> None:
        """The storm's exits, `STORM_CHUNK` at a time, back to back (the lock held)."""
        while progress.done < count:
            n = min(STORM_CHUNK, count - progress.done)
            await self._storm_chunk(progress, n, cpus, threads)
            progress.done += n

    async def _paced(self, count: int, cpus: list[int], threads: int, rate: float,
                     progress: _Progress) -> None:
        """The storm's exits at `rate` a second: exit i is due `i / rate` seconds after the
        first. Due exits are made as soon as `PACE_QUANTUM`'s worth of them are due (or the
        last ones), the lock taken for each such chunk only, so that other operations go on
        meanwhile. Late exits are made up for `PACE_BURST` at a time, at most
        `PACE_CATCH_UP` times faster than the rate. When the server cannot keep even the
        pace, the storm ends late (the rate it reports says so)."""
        quantum = max(1, min(STORM_CHUNK, int(rate * PACE_QUANTUM)))
        burst = max(quantum, PACE_BURST)
        clock = time.perf_counter
        start = clock() - progress.done / rate
        not_before = 0.0  # the earliest the next piece may go (catching up, not faster)
        while progress.done < count:
            done = progress.done
            now = clock()
            due = min(count, int((now - start) * rate) + 1)
            if (due - done >= quantum or due == count > done) and now >= not_before:
                n = min(burst, due - done)
                async with self._lock:
                    await self._storm_chunk(progress, n, cpus, threads)
                progress.done = done + n
                not_before = now + n / (PACE_CATCH_UP * rate)
                continue
            wait = max(start + (min(done + quantum, count) - 1) / rate, not_before) - clock()
            if wait > PACE_SLEEP:
                await trio.sleep(wait - PACE_SLEEP / 2)
            else:
                await trio.lowlevel.checkpoint()

    async def _storm_chunk(self, progress: _Progress, n: int, cpus: list[int],
                           threads: int) -> None:
        """The storm's next `n` exits, from `progress.done` on (the i-th on
        `cpus[i % len(cpus)]`), made at once and handed to the CPU tasks as one ordered
        batch: no await per exit. Exits that happened are broadcast even when something
        fails (or the caller is cancelled) halfway through."""
        listeners = self.server.listeners
        table = self.table
        first = progress.done
        ncpus = len(cpus)
        reports: list[ExitReport | RepeatExit] = []
        try:
            if threads == 1:  # the same process again and again: one built, the rest patched
                turn = first % ncpus
                reports.extend(table.storm_exits(n, cpus[turn:] + cpus[:turn],
                                                 model=progress.model))
                if progress.model is None and isinstance(reports[0], ExitReport):
                    progress.model = reports[0]
            else:
                for i in range(first, first + n):
                    task = table.spawn(comm="storm", cpu=cpus[i % ncpus], threads=threads)
                    reports.extend(table.exit_group(task.tid))
        except BaseException:
            listeners.submit_nowait(reports)
            raise
        self._show()  # (drains what the chunk's short-lived processes left to follow)
        try:
            await listeners.submit_many(reports)
        except BaseException:  # cancelled waiting for room, none queued; they happened
            listeners.submit_nowait(reports)
            raise

    async def wait_for_listener(self, cpus: Collection[int] | None = None) -> None:
        """Return once some listener is registered (on one of `cpus`, if given)."""
        while True:
            listening = self.server.listeners.listeners()
            if any(cpus is None or cpu in cpus for cpu in listening):
                return
            await trio.sleep(0.005)
