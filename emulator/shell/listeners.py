"""Per-CPU exit listeners: who hears about a task's exit, and in which order.

The kernel keeps one listener list per CPU (`listener_array`), each guarded by a reader/writer
semaphore: registering and deregistering write, an exit's broadcast reads. tsemu mirrors it:
one `CpuListeners` per CPU, each with an `RWLock` and its own trio task that broadcasts that
CPU's exits in order. The rules, from taskstats.c:

- a socket is listed once per CPU however often it registers (a REGISTER is deduplicated,
  Linux 3.0 on); before, each REGISTER added an entry, every entry hears each exit, and a
  DEREGISTER removes one entry per CPU (`dedupe`, the profile's `listener_dedupe`);
  new listeners go to the head of the list, so the newest hears an exit first;
- deregistering what was never registered succeeds;
- each exit on a CPU with listeners takes that CPU's next sequence number (from 0); an exit on
  a CPU with none takes nothing;
- the message is built once and the same bytes go to every listener;
- a listener whose socket is gone is dropped from the list it failed on, every entry of it
  (other CPUs' lists drop it on their own next failed send).

Exits reach a CPU's task one at a time (`submit`) or as an ordered batch (`submit_many`, what
a storm uses); either way they wait in one backlog, and the task broadcasts them in order,
taking the read lock once for each run of up to `BATCH` exits rather than once per exit: it
builds the run's events (consecutive sequence numbers), then offers them listener by listener,
newest listener first, each listener getting the whole run in order. What one listener sees
is exactly what exit-by-exit delivery gives it; only the interleaving of sends across
listeners differs, which no listener can observe, and a reader is woken once per run instead
of once per event. A listener whose send fails in the middle of a run hears none of the run's
later exits (the kernel would have dropped it before the next one), and the exits that come
after every listener of the run is gone take no sequence number (their events, already built,
are never sent).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .rwlock import RWLock

#: deliver(port, events, cpu) offers a run's events (of that CPU) to one port, in order, and
#: returns how many it took before the port's socket turned out to be gone (all of them when
#: it is not).
Deliver = Callable[[int, Sequence[bytes], int], int]
#: build(seq, exits) -> their events' bytes, in order, with consecutive sequence numbers from
#: `seq` (wrapping at 2**32): a run at a time, so that a storm's events are made in one loop.
BuildEvents = Callable[[int, list[Any]], Sequence[bytes]]

#: Exits broadcast under one read-lock acquisition: a registration waits at most this many.
BATCH = 256


@dataclass
class BroadcastStats:
    events: int = 0
    deliveries: int = 0
    dropped_listeners: int = 0

    def clear(self) -> None:
        self.events = self.deliveries = self.dropped_listeners = 0


class CpuListeners:
    """One CPU's listener list, its lock, its sequence counter and its broadcast task."""

    def __init__(self, cpu: int, buffer: int = 4096, *, dedupe: bool = True) -> None:
        self.cpu = cpu
        self.dedupe = dedupe
        self.lock = RWLock()
        self.ports: list[int] = []
        self.seq = 0
        self.stats = BroadcastStats()
        self._limit = buffer
        self._backlog: deque[Any] = deque()
        self._more = trio.Event()  # set when the backlog has something for `run`
        self._room = trio.Event()  # set when the backlog drops below the limit
        self._room.set()
        self._idle = trio.Event()
        self._idle.set()
        self._pending = 0

    async def register(self, port: int) -> None:
        async with self.lock.write():
            if not self.dedupe or port not in self.ports:
                self.ports.insert(0, port)

    async def deregister(self, port: int) -> None:
        """Take `port`'s first entry off the list (its only one, when entries are deduped)."""
        async with self.lock.write():
            if port in self.ports:
                self.ports.remove(port)

    async def drop(self, port: int) -> None:
        """Take every entry of `port` off the list: its socket is gone."""
        async with self.lock.write():
            self._drop(port)

    def _drop(self, port: int) -> int:
        before = len(self.ports)
        self.ports[:] = [p for p in self.ports if p != port]
        return before - len(self.ports)

    def reset(self) -> None:
        """No listener, sequence numbers from 0, counters at 0: as a fresh CPU's (a server's
        `reset`). Only once every submitted exit has been broadcast (`wait_idle`): this
        CPU's task then holds nothing of the past."""
        if self._pending:
            raise RuntimeError(f"CPU {self.cpu} still has {self._pending} exits to broadcast")
        self.ports.clear()
        self.seq = 0
        self.stats.clear()  # (in place: the broadcast task holds the object)

    async def submit(self, exit_report: Any) -> None:
        """Queue an exit for broadcast; waits only when this CPU is far behind."""
        await self.submit_many((exit_report,))

    async def submit_many(self, exit_reports: Iterable[Any]) -> None:
        """Queue exits for broadcast, in this order; one checkpoint for the lot, and a wait
        only when this CPU is far behind (`buffer` exits)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.wait_for_room()
        self.submit_nowait(exit_reports)
        # Queued: from here on nothing is cancellable, so a caller cancelled here never sees
        # an exception for exits that will be broadcast anyway (and cancelled earlier, none
        # of them was queued).
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_for_room(self) -> None:
        """Wait while this CPU is `buffer` exits behind."""
        while len(self._backlog) >= self._limit:
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()

    def submit_nowait(self, exit_reports: Iterable[Any]) -> None:
        """Queue exits for broadcast at once, however far behind this CPU is (for exits that
        have happened and must be broadcast even while their caller is being cancelled)."""
        before = len(self._backlog)
        self._backlog.extend(exit_reports)
        added = len(self._backlog) - before
        if added:
            self._pending += added
            if self._idle.is_set():
                self._idle = trio.Event()
            self._more.set()

    async def wait_idle(self) -> None:
        """Return once every submitted exit has been broadcast."""
        if self._pending:
            await self._idle.wait()

    async def run(self, build: BuildEvents, deliver: Deliver) -> None:
        """The CPU's broadcast task: each exit, in order, to every listener of this CPU."""
        backlog = self._backlog
        stats = self.stats
        while True:
            if not backlog:
                self._more = trio.Event()
                await self._more.wait()
                continue
            if len(backlog) <= BATCH:
                batch = list(backlog)
                backlog.clear()
            else:
                batch = [backlog.popleft() for _ in range(BATCH)]
            if len(backlog) < self._limit:
                self._room.set()
            gone: list[int] = []
            async with self.lock.read():
                ports = self.ports  # not changed while the read side is held
                if ports:
                    events = build(self.seq, batch)
                    # Listener by listener: each hears the run's events in order (their
                    # interleaving across listeners is not observable), and a sleeping
                    # reader is woken once per run rather than once per event.
                    delivered = 0
                    taken = 0  # exits of the run that found some listener still listed
                    for port in ports:
                        n = deliver(port, events, self.cpu)
                        if n < len(events):
                            # Gone: listed (so heard of) up to this exit, not after.
                            gone.append(port)
                            taken = max(taken, n + 1)
                        else:
                            taken = len(events)
                        delivered += n
                    # The exits after every listener was gone went to no one: no seq.
                    self.seq = (self.seq + taken) & 0xFFFFFFFF
                    stats.events += taken
                    stats.deliveries += delivered
            if gone:
                async with self.lock.write():
                    for port in set(gone):
                        if self._drop(port):
                            stats.dropped_listeners += 1
            self._pending -= len(batch)
            if not self._pending:
                self._idle.set()


class ListenerTable:
    """The per-CPU lists of a machine with `nr_cpus` CPUs (`dedupe`: see the module
    docstring)."""

    def __init__(self, nr_cpus: int, *, dedupe: bool = True) -> None:
        self.cpus = [CpuListeners(cpu, dedupe=dedupe) for cpu in range(nr_cpus)]

    async def apply(self, port: int, cpus: frozenset[int], register: bool) -> None:
        for cpu in sorted(cpus):
            if register:
                await self.cpus[cpu].register(port)
            else:
                await self.cpus[cpu].deregister(port)

    def reset(self) -> None:
        """Every CPU as a fresh one (see `CpuListeners.reset`)."""
        for cpu in self.cpus:
            cpu.reset()

    def listening(self, port: int) -> bool:
        """Whether `port` is registered on some CPU."""
        return any(port in cpu.ports for cpu in self.cpus)

    async def forget(self, port: int) -> None:
        """`port`'s socket is gone: off every CPU's list."""
        for cpu in self.cpus:
            if port in cpu.ports:
                await cpu.drop(port)

    def listeners(self) -> dict[int, list[int]]:
        """cpu -> ports, for `ctl listeners` and tests."""
        return {c.cpu: list(c.ports) for c in self.cpus if c.ports}

    async def wait_idle(self) -> None:
        for cpu in self.cpus:
            await cpu.wait_idle()

    async def submit_many(self, exit_reports: Iterable[Any]) -> None:
        """Queue exits for broadcast, each on its CPU, keeping their order per CPU. One
        checkpoint; either all of them are queued, or (cancelled while waiting for room)
        none."""
        by_cpu = _by_cpu(exit_reports)
        await trio.lowlevel.checkpoint_if_cancelled()
        for cpu in by_cpu:
            await self.cpus[cpu].wait_for_room()
        for cpu, reports in by_cpu.items():
            self.cpus[cpu].submit_nowait(reports)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def submit_nowait(self, exit_reports: Iterable[Any]) -> None:
        """`submit_many` without waiting (see `CpuListeners.submit_nowait`)."""
        for cpu, reports in _by_cpu(exit_reports).items():
            self.cpus[cpu].submit_nowait(reports)

    async def run(self, build: BuildEvents, deliver: Deliver) -> None:
        async with trio.open_nursery() as nursery:
            for cpu in self.cpus:
                nursery.start_soon(cpu.run, build, deliver)


def _by_cpu(exit_reports: Iterable[Any]) -> dict[int, list[Any]]:
    by_cpu: dict[int, list[Any]] = {}
    for report in exit_reports:
        reports = by_cpu.get(report.cpu)
        if reports is None:
            by_cpu[report.cpu] = [report]
        else:
            reports.append(report)
    return by_cpu
