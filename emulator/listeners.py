"""Per-CPU exit listeners: who hears about a task's exit, and in which order.

The kernel keeps one listener list per CPU (`listener_array`), each guarded by a reader/writer
semaphore: registering and deregistering write, an exit's broadcast reads. tsemu mirrors it:
one `CpuListeners` per CPU, each with an `RWLock` and its own trio task that broadcasts that
CPU's exits in order. The rules, from taskstats.c:

- a socket is listed once per CPU however often it registers (a REGISTER is deduplicated);
  new listeners go to the head of the list, so the newest hears an exit first;
- deregistering what was never registered succeeds;
- each exit on a CPU with listeners takes that CPU's next sequence number (from 0); an exit on
  a CPU with none takes nothing;
- the message is built once and the same bytes go to every listener;
- a listener whose socket is gone is dropped from the list it failed on (other CPUs' lists
  drop it on their own next failed send).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from .rwlock import RWLock

#: deliver(port, data) -> False when the port's socket is gone.
Deliver = Callable[[int, bytes], bool]
#: build(seq, exit) -> the event's bytes.
BuildEvent = Callable[[int, Any], bytes]


@dataclass
class BroadcastStats:
    events: int = 0
    deliveries: int = 0
    dropped_listeners: int = 0


class CpuListeners:
    """One CPU's listener list, its lock, its sequence counter and its broadcast task."""

    def __init__(self, cpu: int, buffer: int = 4096) -> None:
        self.cpu = cpu
        self.lock = RWLock()
        self.ports: list[int] = []
        self.seq = 0
        self.stats = BroadcastStats()
        self._send, self._receive = trio.open_memory_channel[Any](buffer)
        self._idle = trio.Event()
        self._idle.set()
        self._pending = 0

    async def register(self, port: int) -> None:
        async with self.lock.write():
            if port not in self.ports:
                self.ports.insert(0, port)

    async def deregister(self, port: int) -> None:
        async with self.lock.write():
            if port in self.ports:
                self.ports.remove(port)

    async def submit(self, exit_report: Any) -> None:
        """Queue an exit for broadcast; waits only when this CPU is far behind."""
        self._pending += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        await self._send.send(exit_report)

    async def wait_idle(self) -> None:
        """Return once every submitted exit has been broadcast."""
        if self._pending:
            await self._idle.wait()

    async def run(self, build: BuildEvent, deliver: Deliver) -> None:
        """The CPU's broadcast task: each exit, in order, to every listener of this CPU."""
        async for exit_report in self._receive:
            gone: list[int] = []
            async with self.lock.read():
                if self.ports:
                    seq = self.seq
                    self.seq = (seq + 1) & 0xFFFFFFFF
                    data = build(seq, exit_report)
                    self.stats.events += 1
                    for port in self.ports:
                        if deliver(port, data):
                            self.stats.deliveries += 1
                        else:
                            gone.append(port)
            if gone:
                async with self.lock.write():
                    for port in gone:
                        if port in self.ports:
                            self.ports.remove(port)
                            self.stats.dropped_listeners += 1
            self._pending -= 1
            if not self._pending:
                self._idle.set()


class ListenerTable:
    """The per-CPU lists of a machine with `nr_cpus` CPUs."""

    def __init__(self, nr_cpus: int) -> None:
        self.cpus = [CpuListeners(cpu) for cpu in range(nr_cpus)]

    async def apply(self, port: int, cpus: frozenset[int], register: bool) -> None:
        for cpu in sorted(cpus):
            if register:
                await self.cpus[cpu].register(port)
            else:
                await self.cpus[cpu].deregister(port)

    def listeners(self) -> dict[int, list[int]]:
        """cpu -> ports, for `ctl listeners` and tests."""
        return {c.cpu: list(c.ports) for c in self.cpus if c.ports}

    async def wait_idle(self) -> None:
        for cpu in self.cpus:
            await cpu.wait_idle()

    async def run(self, build: BuildEvent, deliver: Deliver) -> None:
        async with trio.open_nursery() as nursery:
            for cpu in self.cpus:
                nursery.start_soon(cpu.run, build, deliver)


