"""Reading a document's tables: values out, problems to the file's list, under their key paths.

What lives here: `Table` (one table of the document being read: its values converted, unknown
keys and bad values reported under the key's path), `Context` (what the readers know about
the machine and learn about pids while reading) and `read_counters`, the one reading of the
counter tables (delays, times, memory, io, faults, switches, exe, counters) for processes,
threads, timeline actions, populations and generators. What must not: which tables a document
has and what they mean (`reader`, `generators`).

Speed matters here: a machine-written scenario has a hundred thousand process tables. A table
reads only the keys it holds, a path is spelled out only for a problem, and each distinct
string is converted once (`values.remembers_strings`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from tsemu.wire import WireError, parse_cpulist

from ..model import accounting
from ..model.clock import DEFAULT_BOOT_WALL_SECONDS
from ..model.tasks import COUNTERS, U64_MAX
from .draws import drawable
from .problems import Problems, ScenarioError
from .schema import (
    DELAY_KEYS,
    DELAY_LEAVES,
    DELAY_ORDER,
    GROUP_LEAVES,
    KINDS,
    MM_COUNTERS,
    NOT_ADDABLE,
    RAW_LEAVES,
    READABLE,
    Leaf,
)
from .specs import Machine
from .values import (
    Bad,
    Rate,
    device,
    format_duration,
    integer,
    own_int,
    parse_duration,
    ranged,
    rated,
    show,
    size_in_bytes,
    size_in_kib,
    string,
    suggest,
    timestamp,
    type_name,
    u64,
)

T = TypeVar("T")
MISSING: Any = object()


class Keys:
    """A table's key names (for suggestions) and their set (for the check)."""

    __slots__ = ("names", "known")

    def __init__(self, names: Iterable[str]) -> None:
        self.names: tuple[str, ...] = tuple(names)
        self.known: frozenset[str] = frozenset(self.names)


class Table:
    """One table of the document being read: converted values come out, problems go to the
    file's `Problems` under the key's path, and keys that are not in `keys` are reported when
    the table is made. `ok` turns False (here and in every enclosing table) at the first
    problem."""

    __slots__ = ("problems", "data", "parent", "ok", "_path", "_key", "index")

    def __init__(self, problems: Problems, data: Mapping[str, Any], path: str | None,
                 keys: Keys, parent: Table | None = None, key: str = "",
                 index: int = -1) -> None:
        """`path` None: the table at `key` of `parent` (entry `index` of the array there if
        not -1), its path spelled out only if needed."""
        self.problems = problems
        self.data = data
        self.parent = parent
        self.ok = True
        self._path = path
        self._key = key
        self.index = index
        if not keys.known.issuperset(data):
            for name in data:
                if name not in keys.known:
                    self.fail(name, f"unknown key; {suggest(name, keys.names)}")

    @property
    def path(self) -> str:
        """The table's key path: "process[2].delays"."""
        path = self._path
        if path is None:
            assert self.parent is not None
            path = self.parent.sub(self._key)
            if self.index >= 0:
                path = f"{path}[{self.index}]"
            self._path = path
        return path

    def sub(self, key: str) -> str:
        path = self.path
        return f"{path}.{key}" if path else key

    def fail(self, key: str | None, problem: str) -> None:
        self.problems.add(self.sub(key) if key else self.path, problem)
        self.mark()

    def mark(self) -> None:
        """Not ok, and neither is any table this one is in."""
        table: Table | None = self
        while table is not None and table.ok:
            table.ok = False
            table = table.parent

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, convert: Callable[[Any], T], default: Any = None) -> Any:
        """`convert(value)`; `default` when the key is absent or its value is bad."""
        value = self.data.get(key, MISSING)
        if value is MISSING:
            return default
        try:
            return convert(value)
        except Bad as exc:
            self.fail(key, str(exc))
            return default

    def require(self, key: str, convert: Callable[[Any], T]) -> Any:
        if key not in self.data:
            self.fail(None, f"missing required key {show(key)}")
            return None
        return self.get(key, convert)

    def table(self, key: str, keys: Keys) -> Table | None:
        """The table at `key` (None if absent, or reported if it is not a table)."""
        value = self.data.get(key, MISSING)
        if value is MISSING:
            return None
        if type(value) is not dict:
            self.fail(key, f"expected a table, got {type_name(value)} {show(value)}")
            return None
        return Table(self.problems, value, None, keys, parent=self, key=key)

    def tables(self, key: str, keys: Keys) -> list[Table]:
        """An array of tables: a table for each entry (those that are not tables reported)."""
        return list(self.entries(key, keys))

    def entries(self, key: str, keys: Keys) -> Iterator[Table]:
        """`tables`, one entry at a time (a big array's tables are not all alive at once)."""
        value = self.data.get(key, MISSING)
        if value is MISSING:
            return
        if type(value) is not list:
            self.fail(key, f"expected an array of tables ([[{self.sub(key)}]]), got "
                      f"{type_name(value)}")
            return
        for i, entry in enumerate(value):
            table = self.entry(key, i, entry, keys)
            if table is not None:
                yield table

    def entry(self, key: str, index: int, entry: object, keys: Keys) -> Table | None:
        """A table for entry `index` of the array of tables at `key`; None (reported) if the
        entry is not a table."""
        if type(entry) is not dict:
            self.problems.add(f"{self.sub(key)}[{index}]",
                              f"expected a table, got {type_name(entry)} {show(entry)}")
            self.mark()
            return None
        return Table(self.problems, entry, None, keys, parent=self, key=key, index=index)


class Context:
    """What readers know about the machine, and what they learn about pids."""

    def __init__(self, problems: Problems, machine: Machine) -> None:
        self.problems = problems
        self.machine = machine
        #: how to read each kind of counter value, constant or drawn
        self.converters = counter_converters(machine.boot_wall_seconds)
        drawn_converters = {
            kind: convert if kind == "stamp" else drawable(convert, 0, U64_MAX)
            for kind, convert in self.converters.items()}
        # (a value may also be a rate, "40MiB/s", where a value is set)
        rated_converters = {kind: convert if kind in ("stamp", "dev") else
                            rated(convert, counts=kind == "count")
                            for kind, convert in self.converters.items()}
        by_mode = {"set": rated_converters, "add": self.converters, "draw": drawn_converters}
        #: per (mode, thread): per counter table, how each of its keys is read
        self.plans = {(mode, thread): _plans(by_mode[mode], mode, thread)
                      for mode in ("set", "add", "draw") for thread in (False, True)}
        self.pid = ranged(1, machine.pid_max - 1)
        #: the pids entries give to new tasks (the default next_pid goes past these)
        self.written_pids: list[int] = []
        #: pids of entries left out for their problems: what refers to them is not reported
        self.dropped: set[int] = set()

    def drop(self, pid: object) -> None:
        if isinstance(pid, int) and not isinstance(pid, bool):
            self.dropped.add(pid)

    def new_pid(self, value: object) -> int:
        """A pid an entry gives to a new task."""
        number = self.pid(value)
        self.written_pids.append(number)
        return number

    def cpu(self, value: object) -> int:
        if type(value) is int and 0 <= value < self.machine.cpus:
            return value if value <= 256 else own_int(value)
        number = integer(value)
        cpus = self.machine.cpus
        if not 0 <= number < cpus:
            have = "CPU 0" if cpus == 1 else f"CPUs 0-{cpus - 1}"
            raise Bad(f"cpu {number} does not exist: the machine has {have} "
                      f"([machine] cpus = {cpus})")
        return number


def counter_converters(boot_wall_seconds: int) -> dict[str, Callable[[object], Any]]:
    """How each kind of counter value (`schema.KINDS`) is read."""
    converters: dict[str, Callable[[object], Any]] = {
        "count": u64, "duration": parse_duration, "kib": size_in_kib, "bytes": size_in_bytes,
        "dev": device, "stamp": timestamp(boot_wall_seconds)}
    assert tuple(converters) == KINDS
    return converters


def parse_counter_value(name: str, value: object, *,
                        boot_wall_seconds: int = DEFAULT_BOOT_WALL_SECONDS,
                        rates: bool = False) -> Any:
    """One counter (a `tasks.COUNTERS` name) from what a scenario's raw ``counters`` table or
    a control request gives: an integer in the kernel's unit, or a string in the unit the
    counter takes ("3ms" for a delay or a CPU time, "4KiB" for a high-water mark or an I/O
    byte count, "8:1" for ac_exe_dev), or for `<cat>_delay_max_ts` [tv_sec, tv_nsec] or a
    date-time; with `rates`, also a `Rate` ("40MiB/s"). ScenarioError naming the counter
    otherwise."""
    leaf = RAW_LEAVES.get(name)
    if leaf is None:
        raise ScenarioError([f"{name}: unknown counter; {suggest(name, COUNTERS)}"])
    convert = counter_converters(boot_wall_seconds)[leaf.kind]
    if rates and leaf.kind not in ("stamp", "dev"):
        convert = rated(convert, counts=leaf.kind == "count")
    try:
        return convert(value)
    except Bad as exc:
        raise ScenarioError([f"{name}: {exc}"]) from None


_CATEGORIES = Keys(accounting.DELAY_CATEGORIES)
_DELAY = Keys(DELAY_KEYS)
_RAW = Keys(COUNTERS)
_GROUP_KEYS = {group: Keys(leaves) for group, leaves in GROUP_LEAVES.items()}


#: How one key of a counter table is read: the counter, its converter, and the problem of
#: giving it here (None: none).
_Plan = tuple[str, Callable[[object], Any], str | None]
_RAW_TABLE = "counters"


def _plans(converters: Mapping[str, Callable[[object], Any]], mode: str, thread: bool
           ) -> dict[str, dict[str, _Plan]]:
    """Per counter table (a delay category's by the category's name, the raw table as
    "counters"), how each of its keys is read in `mode`, by a thread or not: the rules of
    `read_counters`, decided once per reading rather than once per key."""
    def plan(leaf: Leaf, raw: bool) -> _Plan:
        problem = None
        if mode == "add" and leaf.counter in NOT_ADDABLE:
            problem = "a value, not a sum: change it with set, not add"
        elif thread and not raw and leaf.counter in MM_COUNTERS:
            problem = ("belongs to the process's memory map: give it on the process; every "
                       "thread reports the leader's")
        return (leaf.counter, converters[leaf.kind], problem)

    plans = {cat: {key: plan(leaf, False) for key, leaf in leaves.items()}
             for cat, leaves in DELAY_LEAVES.items()}
    plans.update({group: {key: plan(leaf, False) for key, leaf in leaves.items()}
                  for group, leaves in GROUP_LEAVES.items()})
    plans[_RAW_TABLE] = {key: plan(leaf, True) for key, leaf in RAW_LEAVES.items()}
    return plans


def read_counters(ctx: Context, t: Table, mode: str, *, thread: bool = False
                  ) -> dict[str, Any]:
    """The counters given by the readable tables and the raw `counters` table of `t`: a
    value, or in "set" mode a `values.Rate` (see `split_rates`).

    `mode`: "set" (values), "add" (deltas: no max, min, max_at or exe), "draw" (a
    population's or a generator's: any value but max_at may be drawn). `thread`: the mm's
    counters (exe, hiwater) belong to the process, not to a thread.

    A sub-table becomes a `Table` only when it has something to report (see `_Owner`): the
    usual one is read straight from its dict."""
    data = t.data
    out: dict[str, Any] = {}
    plans = ctx.plans[mode, thread]
    for group in data:
        if group == "delays":
            delays = _sub(t, "delays", _CATEGORIES)
            if delays is None:
                continue
            for cat in _data(delays):
                if cat not in DELAY_LEAVES:
                    continue  # (reported as an unknown key)
                table = _sub(delays, cat, _DELAY)
                if table is not None:
                    _read_leaves(table, plans[cat], out)
                    if mode == "set" and "max" in _data(table):
                        _check_delay_order(table, cat, out)
        elif group in GROUP_LEAVES or group == _RAW_TABLE:
            if thread and group == "exe":
                t.fail(group, "belongs to the process (its executable): every thread reports "
                       "the leader's")
                continue
            raw = group == _RAW_TABLE
            table = _sub(t, group, _RAW if raw else _GROUP_KEYS[group])
            if table is not None:
                _read_leaves(table, plans[group], out, raw=raw)
    return out


#: A sub-table being read: its `Table`, or, while it has nothing to report, (the table it is
#: in, its key, its keys, its dict), from which `_reporter` makes its `Table` when it does.
_Owner = Table | tuple[Any, str, Keys, Mapping[str, Any]]


def _sub(parent: _Owner, key: str, keys: Keys) -> _Owner | None:
    value = (parent.data if isinstance(parent, Table) else parent[3]).get(key)
    if type(value) is dict and keys.known.issuperset(value):
        return (parent, key, keys, value)
    return _reporter(parent).table(key, keys)  # reports what is wrong with it


def _data(owner: _Owner) -> Mapping[str, Any]:
    return owner.data if isinstance(owner, Table) else owner[3]


def _reporter(owner: _Owner) -> Table:
    """The `Table` of a sub-table, to report a problem with: made now if need be (once per
    problem: it reports nothing by being made, its keys being known)."""
    if type(owner) is Table:
        return owner
    parent, key, keys, data = owner  # type: ignore[misc]
    reporter = _reporter(parent)
    return Table(reporter.problems, data, None, keys, parent=reporter, key=key)


def _read_leaves(table: _Owner, plans: Mapping[str, _Plan], out: dict[str, Any], *,
                 raw: bool = False) -> None:
    for key, value in _data(table).items():
        plan = plans.get(key)
        if plan is None:
            continue  # (reported as an unknown key)
        counter, convert, problem = plan
        if problem is not None:
            _reporter(table).fail(key, problem)
            continue
        try:
            converted = convert(value)
        except Bad as exc:
            _reporter(table).fail(key, str(exc))
            continue
        if counter in out:
            other = READABLE[counter].spelled if raw else RAW_LEAVES[counter].spelled
            _reporter(table).fail(key, f"{counter} is given twice (also as {other})")
            continue
        out[counter] = converted


def split_rates(counters: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """`read_counters`' values, and apart the counters that move: name -> per second."""
    rates = {name: v.per_second for name, v in counters.items() if isinstance(v, Rate)}
    if not rates:
        return dict(counters), rates
    return {name: v for name, v in counters.items() if name not in rates}, rates


def _check_delay_order(owner: _Owner, cat: str, values: Mapping[str, Any]) -> None:
    low, high, total = (values.get(name) for name in DELAY_ORDER[cat])
    if any(isinstance(v, Rate) for v in (low, high, total)):
        return  # (a total that moves outgrows any max)
    data = _data(owner)
    if "min" in data and "max" in data and low is not None and high is not None \
            and low > high:
        _reporter(owner).fail("min", f"{format_duration(low)} is longer than max "
                   f"{format_duration(high)}")
    if "max" in data and "total" in data and high is not None and total is not None \
            and high > total:
        _reporter(owner).fail("max", f"{format_duration(high)} is longer than total "
                   f"{format_duration(total)}")


def cpulist(nr_cpus: int) -> Callable[[object], list[int]]:
    """A cpulist ("0-3", "0,2", "0-7:2/4") of the machine's CPUs, sorted; at least one."""
    def convert(value: object) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        text = string(value)
        if not text.strip():
            raise Bad(f"cpulist {show(text)} names no CPU")
        try:
            cpus = parse_cpulist(text.encode(), nr_cpus)
        except WireError as exc:
            detail = re.sub(r"^cpulist b?([\'\"]).*?\1 ", "", exc.detail)
            raise Bad(f"bad cpulist {show(text)}: {detail}") from None
        if not cpus:
            raise Bad(f"cpulist {show(text)} names no CPU")
        return sorted(cpus)
    return convert


def one_or_list(convert: Callable[[object], T]) -> Callable[[object], list[T]]:
    """A value, or a non-empty list of values to pick from."""
    def many(value: object) -> list[T]:
        if isinstance(value, list):
            if not value:
                raise Bad("an empty list gives nothing to pick from")
            return [convert(v) for v in value]
        return [convert(value)]
    return many
