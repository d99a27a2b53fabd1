"""Faults on demand, for testing a client's error handling: which message a fault hits, and how.

What lives here: the fault rules (`Fault`) and the table that decides, message by message,
whether one applies (`FaultTable.hit`), deterministically (a seeded random number generator
for `probability`, exact counts for `count`). What the faults do is carried out elsewhere: an
`errno` by the kernel model (`kernel.Kernel`: the request is answered with that error), the
delivery faults (`drop`, `delay`, `duplicate`, `reorder`) and `budget`/`pause` by the shell
(`shell.server`). What must not: I/O, trio, real time (the caller passes the clock's now).

| kind      | what it does                                                    | parameters        |
|-----------|-----------------------------------------------------------------|-------------------|
| errno     | the request is answered with this error instead                | errno (name/number)|
| drop      | the message is not delivered (no ENOBUFS: it is lost on the way)| -                 |
| delay     | the message is delivered that much later                        | delay (duration)  |
| duplicate | the message is delivered twice                                  | -                 |
| reorder   | the message is held and delivered after the next one to its port| -                 |
| budget    | the port's receive budget becomes this many bytes              | budget (size)     |
| pause     | the server reads no request for that long                       | duration          |

Selectors (all given must match): `on` ("replies", "events" or "both": what a delivery fault
hits; errno: requests), `pid` (the task a GET asks about, or an event's task), `cpu` (an
event's CPU), `port` (the client's port id), `cmd` ("get", "register", "deregister",
"cgroupstats", "getfamily": for errno). Extent: `count` (the first N messages that match; then
the fault is spent) or none (every one), `probability` (each match is hit with this chance,
from the table's seed), and a window of scenario time (`at`, `until`, ns since the start).
"""

from __future__ import annotations

import errno as errno_names
import random
from dataclasses import dataclass, field

#: Fault kinds, and those that act on a delivered message.
KINDS = ("errno", "drop", "delay", "duplicate", "reorder", "budget", "pause")
DELIVERY = frozenset(("drop", "delay", "duplicate", "reorder"))
TARGETS = ("replies", "events", "both")
COMMANDS = ("get", "register", "deregister", "cgroupstats", "getfamily")


@dataclass
class Fault:
    """One rule. `remaining` counts down from `count` (None: no limit)."""

    id: int
    kind: str
    on: str = "both"
    pid: int | None = None
    cpu: int | None = None
    port: int | None = None
    cmd: str | None = None
    count: int | None = None
    probability: float = 1.0
    at_ns: int = 0
    until_ns: int | None = None
    errno: int = 0
    delay_ns: int = 0
    budget: int = 0
    duration_ns: int = 0
    hits: int = 0
    remaining: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.remaining is None:
            self.remaining = self.count

    def describe(self) -> dict[str, object]:
        """The rule as the control protocol lists it."""
        shown: dict[str, object] = {"id": self.id, "kind": self.kind, "hits": self.hits}
        for name in ("on", "pid", "cpu", "port", "cmd", "count", "remaining"):
            value = getattr(self, name)
            if value is not None and not (name == "on" and self.kind not in DELIVERY):
                shown[name] = value
        if self.probability != 1.0:
            shown["probability"] = self.probability
        if self.kind == "errno":
            shown["errno"] = errno_names.errorcode.get(self.errno, self.errno)
        extra = {"delay": ("delay_ns", self.delay_ns), "budget": ("budget", self.budget),
                 "pause": ("duration_ns", self.duration_ns)}.get(self.kind)
        if extra is not None:
            shown[extra[0]] = extra[1]
        return shown


class FaultTable:
    """The faults in force. `empty` is what hot paths test first: nothing else is looked at
    while there is no fault."""

    def __init__(self, seed: int = 0) -> None:
        self.faults: list[Fault] = []
        self.empty = True
        #: the kinds of the faults in force
        self.kinds: frozenset[str] = frozenset()
        self._rng = random.Random(seed)
        self._next_id = 1

    def add(self, kind: str, **options: object) -> Fault:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; kinds: {', '.join(KINDS)}")
        fault = Fault(self._next_id, kind, **options)  # type: ignore[arg-type]
        self._next_id += 1
        self.faults.append(fault)
        self._changed()
        return fault

    def _changed(self) -> None:
        self.empty = not self.faults
        self.kinds = frozenset(f.kind for f in self.faults)

    def clear(self, fault_id: int | None = None) -> int:
        """Remove one fault (or all of them); how many went."""
        before = len(self.faults)
        self.faults = [f for f in self.faults if fault_id is not None and f.id != fault_id]
        self._changed()
        return before - len(self.faults)

    def reset(self, seed: int = 0) -> None:
        self.clear()
        self._rng = random.Random(seed)
        self._next_id = 1

    def hit(self, kinds: frozenset[str] | tuple[str, ...], now_ns: int, *, on: str | None = None,
            pid: int | None = None, cpu: int | None = None, port: int | None = None,
            cmd: str | None = None) -> Fault | None:
        """The first fault of one of `kinds` that this message meets now, counted as hit."""
        for fault in self.faults:
            if fault.kind not in kinds or fault.remaining == 0:
                continue
            if now_ns < fault.at_ns or (fault.until_ns is not None and now_ns >= fault.until_ns):
                continue
            if on is not None and fault.on not in (on, "both"):
                continue
            if ((fault.pid is not None and fault.pid != pid)
                    or (fault.cpu is not None and fault.cpu != cpu)
                    or (fault.port is not None and fault.port != port)
                    or (fault.cmd is not None and fault.cmd != cmd)):
                continue
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            fault.hits += 1
            if fault.remaining is not None:
                fault.remaining -= 1
            return fault
        return None
