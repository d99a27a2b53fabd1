"""Time as the emulated kernel sees it.

The kernel's accounting reads two clocks: a monotonic one (`ktime_get_ns`, which task start times
and ac_etime are measured on) and the wall clock (`ktime_get_real_seconds`, from which ac_btime
is derived as now minus the task's age). tsemu gives both from one source:

- `VirtualClock`: time moves only when told to (`advance`), so a scenario's timeline and every
  field derived from time are exactly reproducible;
- `RealClock`: the machine's clocks, for interactive use.
"""

from __future__ import annotations

import time
from typing import Protocol

NSEC_PER_SEC = 1_000_000_000

#: The wall-clock time a virtual machine "booted" at by default: 2024-01-01T00:00:00Z.
DEFAULT_BOOT_WALL_SECONDS = 1_704_067_200


class Clock(Protocol):
    def monotonic_ns(self) -> int:
        """Nanoseconds since boot (ktime_get_ns)."""
        ...

    def wall_seconds(self) -> int:
        """Seconds since the epoch (ktime_get_real_seconds)."""
        ...


class VirtualClock:
    """A clock that starts at `start_ns` after a boot at `boot_wall_seconds` and moves only
    through `advance`."""

    def __init__(self, start_ns: int = 0,
                 boot_wall_seconds: int = DEFAULT_BOOT_WALL_SECONDS) -> None:
        self._now = start_ns
        self.boot_wall_seconds = boot_wall_seconds

    def monotonic_ns(self) -> int:
        return self._now

    def wall_seconds(self) -> int:
        return self.boot_wall_seconds + self._now // NSEC_PER_SEC

    def advance(self, seconds: float) -> None:
        """Move time forward; negative steps are refused (the kernel's clocks never go back)."""
        if seconds < 0:
            raise ValueError(f"cannot move the clock back ({seconds} s)")
        self._now += round(seconds * NSEC_PER_SEC)

    def advance_ns(self, nanoseconds: int) -> None:
        if nanoseconds < 0:
            raise ValueError(f"cannot move the clock back ({nanoseconds} ns)")
        self._now += nanoseconds


class RealClock:
    """The host's clocks: CLOCK_MONOTONIC stands in for ktime_get_ns."""

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_seconds(self) -> int:
        return int(time.time())
