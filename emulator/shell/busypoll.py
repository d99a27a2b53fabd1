"""A short busy wait for the next datagram before the receive loop sleeps through trio.

Why: a client that asks, waits for the answer and asks again (getdelays, a GET loop, most
exporters) sends its next request a few microseconds after our reply reaches it. Going back
to sleep in trio in between costs a full trip through its scheduler and epoll (about as much
as the whole round trip of a C client and server), so the server polls its socket without a
timeout for up to `window_ns` first, as a kernel's SO_BUSY_POLL or a spinning mutex does. The
spin yields the CPU on every turn (`sched_yield`), so a client sharing our CPU gets to run and
send during it.

The cost is bounded and adaptive: a spin happens only right after a datagram was answered,
lasts at most `window_ns`, and after `MISSES` spins in a row that caught nothing (a client
that asks now and then, not in a loop) the next `REST` wake-ups sleep at once; a spin that
catches a datagram puts it back in favour. With `window_ns` 0 there is no spinning at all
(`tsemu serve --busy-poll 0`).
"""

from __future__ import annotations

import os
import select
from time import perf_counter_ns
from typing import Any

#: The default window: several times a client's turnaround through the shim.
DEFAULT_WINDOW_NS = 50_000
#: Spins in a row that catch nothing before spinning rests...
MISSES = 4
#: ...for this many wake-ups.
REST = 64


class BusyPoll:
    """Busy waits for `fd` to become readable, with the statistics of how they went."""

    def __init__(self, fd: Any, window_ns: int = DEFAULT_WINDOW_NS) -> None:
        if window_ns < 0:
            raise ValueError(f"a busy-poll window cannot be negative ({window_ns} ns)")
        self.window_ns = window_ns
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._misses = 0
        self._rest = 0
        #: spins that found a datagram, spins that did not, wake-ups that did not spin
        self.caught = 0
        self.missed = 0
        self.rested = 0

    def wait(self) -> bool:
        """Spin until `fd` is readable (True) or the window has passed or spinning rests
        (False: sleep the usual way)."""
        window = self.window_ns
        if not window:
            return False
        if self._rest:
            self._rest -= 1
            self.rested += 1
            return False
        poll = self._poll.poll
        yield_cpu = os.sched_yield
        deadline = perf_counter_ns() + window
        while True:
            if poll(0):
                self._misses = 0
                self.caught += 1
                return True
            if perf_counter_ns() >= deadline:
                break
            yield_cpu()
        self.missed += 1
        self._misses += 1
        if self._misses >= MISSES:
            self._misses = 0
            self._rest = REST
        return False
