"""Scenario files: a machine, its processes and what happens to them, as TOML.

What lives here: the scenario file format (this docstring is its reference), the reader that
turns a file into a fully checked `Scenario`, and the two functions that carry a scenario out on
a `ProcessTable`: `build_table` (the machine at the scenario's start) and `apply_event` (one
timeline action). Beside it: how each kind of value is read (`scenario_values`) and how the
TOML is parsed (`scenario_toml`). What must not: the rules of the process table itself
(`tasks`), accounting (`accounting`), time keeping (`clock`), sockets and trio (`server`,
`runner`).

Theory of operation. Reading is all-or-nothing: `parse_scenario` checks every key, then *plays
the whole timeline* on a private process table with a virtual clock, so that every pid a
timeline entry names is checked against the tasks alive at that moment, and every pid the
table hands out automatically is known. The `Scenario` it returns holds only explicit pids;
`build_table` and `apply_event` on it cannot fail (unless live control has changed the table
in between). All problems found are reported together by one `ScenarioError`, one per line,
each naming the file, the key path (`process[2].delays.blkio.total`, indexes counting from 0
in file order, with the line where that entry begins) or the line and column of a TOML syntax
error, and the problem.

Big scenarios (100,000 processes) are read in one pass and built once. The TOML is parsed by
a compiled parser when there is one (`scenario_toml`: toml-rs, ten times tomllib's speed,
the same document), by tomllib otherwise, and for every TOML error, which tomllib words. The
[[process]] tables of the usual kind are read by `_QuickProcess`, without the readers'
bookkeeping; any other by the readers, which report what is wrong.
The table the check builds at the scenario's start (with a virtual clock) is kept in the
`Scenario`, and the first `build_table` takes it instead of building it again. Nothing of the
TOML document outlives the reading: every value kept is a copy (equal values shared), since a
single object left alive would keep the allocator's whole arena of the document resident; the
file's text is kept zlib-compressed, for `with_overrides`. Specs hold their counters as
`tasks.FrozenCounters`, which the tasks made from them share until they change.

The format
==========

A file has up to five parts; all are optional (an empty file is a machine with no processes).

Values
------
- **durations**: an integer is nanoseconds; a string has a unit: ``"250ns"``, ``"3us"``
  (or ``"3µs"``), ``"3ms"``, ``"1.5s"``, ``"2m"`` (or ``"2min"``), ``"1h"``, ``"1d"``; parts
  add up (``"1m30s"``). Decimals are fine as long as the result is a whole number of ns.
  Floats (``1.5`` without quotes) are refused: write ``"1.5s"``.
- **sizes**: fields kept in KiB or in bytes take an integer in that unit or a string with a
  binary unit: ``"512B"``, ``"4KiB"``, ``"1.5MiB"``, ``"2GiB"``, ``"1TiB"`` (``"MB"``,
  ``"K"`` etc. are refused as ambiguous); a decimal size is rounded down to a whole number of
  the field's unit (``"1.2MiB"`` is 1258291 bytes, or 1228 KiB).
- **tables**: TOML 1.0 inline tables stay on one line (``io = { read_bytes = "4MiB" }``);
  for longer ones write a sub-table (``[process.io]``) or dotted keys (``io.read_bytes = ...``).
- **date-times** (``boot_time``, ``max_at``): a TOML date-time (``2024-01-01T00:00:00Z``) or
  an RFC 3339 string; without an offset it is UTC.
- **signals**: a number 1-64 or a name: ``"SIGKILL"``, ``"KILL"``, ``"SIGRTMIN+3"``.
- **policies**: a number 0-255 or a name: ``"SCHED_OTHER"`` (``"SCHED_NORMAL"``) 0,
  ``"SCHED_FIFO"`` 1, ``"SCHED_RR"`` 2, ``"SCHED_BATCH"`` 3, ``"SCHED_IDLE"`` 5,
  ``"SCHED_DEADLINE"`` 6, ``"SCHED_EXT"`` 7 (the ``SCHED_`` prefix may be left out).
- **states**: ``"running"`` (cgroupstats nr_running), ``"sleeping"`` (nr_sleeping),
  ``"uninterruptible"`` (nr_uninterruptible), ``"stopped"`` (nr_stopped), ``"io_wait"``
  (nr_io_wait: an I/O sleep in TASK_KILLABLE/TASK_IDLE), ``"idle"`` and ``"traced"`` (counted
  nowhere). See `tasks.TaskState`.

``[machine]``
-------------
=============  ===========================================================  ==================
key            meaning                                                      default
=============  ===========================================================  ==================
cpus           number of possible CPUs, 1 up to the kernel's NR_CPUS (256)  2
kernel         kernel profile: "6.1", "6.18" or "7.2" (a string: quote it)  "6.18"
family_id      TASKSTATS generic-netlink family id, 0x11-0xffff             0x1f
clock          "virtual" (time moves only when told to) or "real"           "virtual"
boot_time      wall-clock time of boot (date-time); virtual clock only      2024-01-01T00:00Z
start          the scenario's start, as a duration since boot               "100s"
next_pid       where automatic pid allocation starts                        see below
pid_max        /proc/sys/kernel/pid_max: pids are below it (301-4194304)    4194304
mirror_host    answer pids the scenario does not define from the host's     false
               /proc (the flag only: the server implements it)
=============  ===========================================================  ==================

``next_pid`` defaults to one past the highest pid the file gives a task (processes, threads,
spawns, clones), so that automatically numbered tasks never collide with numbered ones; with
no pid given anywhere, 1. Automatic pids follow the kernel's cyclic allocation:
the lowest free pid at or above the cursor.

With ``clock = "real"`` the scenario starts when the table is built: processes keep their ages
(``start`` only serves to turn their ``start`` times into ages; clamped at the host's boot),
``boot_time`` is ignored (the host's clocks rule), and the timeline's ``at`` times are
measured from that moment.

``[[cgroup]]``
--------------
``path`` (required): a cgroup, as an absolute path below the hierarchy's root
(``"/system.slice/nginx.service"``). Declared cgroups and their ancestors exist even while no
task is in them (CGROUPSTATS answers zeros rather than EINVAL). A process's ``cgroup`` need
not be declared: it (and its ancestors) exists from then on.

``[[process]]``: the tasks alive when the scenario starts
---------------------------------------------------------
=================  ==========================================================  ==============
key                meaning                                                     default
=================  ==========================================================  ==============
pid                the process id (its leader's tid, its tgid): 1..pid_max-1   automatic
comm               command name (ac_comm), at most 15 bytes                    required
ppid               parent's tgid (ac_ppid); need not exist                     1 (0 for pid 1)
uid, gid           ac_uid, ac_gid                                              0
cgroup             the cgroup path                                             none
state              scheduler state (see Values)                                "running"
cpu                the CPU it runs, and exits, on                              0
start              start time, a duration since boot; or:                     boot (0)
age                how long before the scenario start it started
nice               -20..19 (ac_nice)                                           0
policy             scheduling policy (ac_sched)                                "SCHED_OTHER"
forked_no_exec     forked and never exec'd: AFORK in ac_flag                   false
superuser          used superuser privileges: ASU in ac_flag                   false
exe                {dev, inode}: the executable's device (an integer as the    0, 0
                   kernel encodes it, or "MAJOR:MINOR") and inode number
threads            the number of threads, the leader included (1-100000)       1
[[process.thread]] threads besides the leader, described one by one            -
counters           see below: delays, times, memory, io, faults, switches,     all zero
                   and the raw ``counters`` table
=================  ==========================================================  ==============

``threads = N`` and ``[[process.thread]]`` entries combine: the entries describe the first
threads after the leader, the rest are plain (N counts the leader and must be at least one more
than the number of entries; without it, the entries give the count). A thread entry takes
``tid`` (default automatic), ``comm`` (its own name, pthread_setname_np), ``cpu``, ``state``
(default the leader's), ``start`` or ``age`` (default the leader's; never earlier),
``superuser``, and the counter tables except ``exe`` and ``memory.hiwater_*``: those belong
to the process's mm, and every thread reports the leader's.

Counters, per task, in the units the kernel reports them:

=========================================  =================================================
key                                        unit and field
=========================================  =================================================
delays.<cat>.count                         count (<cat>_count)
delays.<cat>.total                         duration (<cat>_delay_total, ns)
delays.<cat>.max, .min                     duration (<cat>_delay_max/_min, ns; v16+)
delays.<cat>.max_at                        when the longest delay happened (<cat>_delay_max_ts,
                                           CLOCK_REALTIME; v17): a date-time, or a duration
                                           since boot (converted with ``boot_time``)
times.utime, .stime                        duration (ac_utime/ac_stime, reported in µs; their
                                           sum is cpu_run_real_total, in ns)
times.utimescaled, .stimescaled            duration (ac_utimescaled/ac_stimescaled, µs;
                                           cpu_scaled_run_real_total)
times.run_virtual                          duration (cpu_run_virtual_total, ns)
memory.coremem, .virtmem                   integer, MB-usec (RSS, VM size in MB integrated
                                           over the task's CPU time in µs)
memory.hiwater_rss, .hiwater_vm            size, KiB
io.read_char, .write_char                  size, bytes (rchar/wchar: all read()/write() bytes)
io.read_bytes, .write_bytes                size, bytes (storage I/O)
io.cancelled_write_bytes                   size, bytes
io.read_syscalls, .write_syscalls          count
faults.minflt, .majflt                     count (ac_minflt, ac_majflt)
switches.nvcsw, .nivcsw                    count (voluntary, involuntary context switches)
counters.<name>                            any `tasks.COUNTERS` name, in its kernel unit: an
                                           integer, or a string in the unit its field takes
                                           above ("3ms", "4KiB"); ``<cat>_delay_max_ts`` takes
                                           [tv_sec, tv_nsec] or a date-time
=========================================  =================================================

<cat> is one of cpu, blkio, swapin, freepages, thrashing, compact, wpcopy, irq. The I/O
counters are kept exact; records round them down to a multiple of 1024, as the kernel does.
Within a category, min <= max <= total when they are given together.

``[[timeline]]``: what happens, and when
----------------------------------------
Each entry has ``at`` (a duration since the scenario start; required) and exactly one action:

==========================  =====================================================================
action                      keys
==========================  =====================================================================
spawn = {...}               a new process, started at ``at``: every [[process]] key (``start``,
                            a duration since boot, or ``age`` place its start earlier; its
                            threads start at ``at``)
clone = {...}               a new thread of a live process: ``tgid`` (required), ``tid``, ``cpu``
                            (default the leader's), ``comm``, ``state``, ``superuser``, counters
set = {...}                 ``pid`` (required) and any of comm, ppid, uid, gid, cgroup, state,
                            cpu, nice, policy, forked_no_exec, superuser and the counter tables
                            (values replace the task's)
add = {...}                 ``pid`` (required) and counter tables: deltas added to the task's
                            counters (not max, min, max_at or exe: those are values, use set)
move = {pid, cpu}           migrate a task to another CPU (where its exit will be reported)
exit = {...}                one task exits: ``pid``; ``code`` (exit(code): ac_exitcode is
                            (code & 0xff) << 8) or ``signal`` (killed: ac_exitcode is the
                            signal, AXSIG set); ``core = true`` with a signal (ACORE, | 0x80);
                            ``cpu`` (exit on another CPU than the task's)
exit_group = {...}          a whole process exits (exit_group(2) or a fatal signal): ``pid``
                            (the process's), ``code`` or ``signal``, ``core``, ``caller`` (the
                            thread that exits first; default: the others in tid order, then the
                            leader). Each thread exits on its own CPU; the threads other than
                            the caller die of the group's SIGKILL (AXSIG) with the group's code.
                            The last thread carries AGROUP and, for a process that ever had
                            several threads, the AGGR_TGID record follows.
==========================  =====================================================================

Every pid an action names must be alive at that moment (the file's processes, plus what
earlier entries spawned or cloned, minus what exited). Entries at the same time happen in
file order: the [[timeline]] entries first, then each generator's events in generator order.

``[[generator]]``: load, expanded into timeline events
------------------------------------------------------
Expansion is deterministic: ``random.Random(seed)``, drawn in a fixed order (arrival times when
random; then per job: lifetime, threads, killed or not, code, signal, then the counter ranges
by counter name). Each job is a spawn at its arrival time and an ``exit_group`` at arrival +
lifetime; jobs take automatic pids. At most 100000 jobs in all; since reading a scenario plays
its timeline, each job costs about 0.1 ms at load time (``tsemu ctl storm`` is the tool for
exits by the million).

==============  ==============================================================  ==============
key             meaning                                                         default
==============  ==============================================================  ==============
kind            "short_jobs" (the only kind so far)                             required
seed            integer seed                                                    0
count           number of jobs; or:                                             one of the two
rate            jobs per second (over ``duration``, which is then required)
start           first arrival, a duration since the scenario start              0
duration        the window arrivals are spread over                             "0s"
arrival         "even" (job i at start + i * duration / count; with rate,       "even"
                every 1/rate s) or "random" (uniform in the window, sorted)
lifetime        a duration, or [min, max] drawn uniformly                       "10ms"
cpus            the CPUs jobs run on, a cpulist ("0-3", "0,2", "0-7:2/4");      every CPU
                job i runs on the i-th CPU of the list, round robin
threads         threads per job (1-1000), an integer or [min, max]              1
comm            command name; "{n}" is replaced by the job's index              "job{n}"
uid, gid, ppid  as for processes                                                0, 0, 1
cgroup, nice,   as for processes                                                -
policy, state
code            exit code, or a list of codes to pick from                      0
signal          a signal, or a list to pick from, for the killed jobs           "SIGKILL"
killed          the share of jobs killed by ``signal`` (0.0-1.0)                1.0 with
                                                                                signal, else 0
core            killed jobs dump core                                           false
delays, times,  the counter tables, as for processes, where any value but       all zero
memory, io,     max_at may be a [min, max] range (each job draws an integer)
faults,
switches, exe,
counters
==============  ==============================================================  ==============

Example
-------
```toml
[machine]
cpus = 4
kernel = "7.2"
clock = "virtual"
boot_time = 2024-06-01T08:00:00Z
start = "1h"
next_pid = 5000

[[cgroup]]
path = "/system.slice/backup.service"

[[process]]
pid = 1
comm = "systemd"
state = "sleeping"
cgroup = "/init.scope"
times = { utime = "1.2s", stime = "3.4s" }

[[process]]
pid = 812
comm = "nginx"
ppid = 1
uid = 33
gid = 33
cgroup = "/system.slice/nginx.service"
state = "sleeping"
cpu = 1
age = "50m"
policy = "SCHED_OTHER"
nice = -5
exe = { dev = "8:1", inode = 1835012 }
threads = 4
delays.cpu = { count = 1200, total = "85ms", max = "4ms", min = "2us" }
delays.blkio = { count = 40, total = "120ms", max = "15ms", max_at = 2024-06-01T08:42:10Z }
times = { utime = "12.5s", stime = "4.1s" }
faults = { minflt = 21000, majflt = 12 }
switches = { nvcsw = 15000, nivcsw = 800 }
counters = { irq_count = 3, irq_delay_total = "40us" }

[process.memory]
coremem = 52_000_000
virtmem = 410_000_000
hiwater_rss = "48MiB"
hiwater_vm = "310MiB"

[process.io]
read_char = "35MiB"
write_char = "210MiB"
read_syscalls = 9000
write_syscalls = 41000
read_bytes = "4MiB"
write_bytes = "180MiB"

[[process.thread]]
tid = 813
comm = "nginx-cache"
cpu = 2
delays.blkio = { count = 7, total = "9ms" }

[[timeline]]
at = "1s"
spawn = { pid = 4242, comm = "backup", cgroup = "/system.slice/backup.service", threads = 2 }

[[timeline]]
at = "1.5s"
add = { pid = 4242, io = { read_bytes = "64MiB" }, delays.blkio = { count = 1, total = "3ms" } }

[[timeline]]
at = "2s"
exit_group = { pid = 4242, signal = "SIGKILL" }

[[generator]]
kind = "short_jobs"
seed = 7
rate = 20
duration = "10s"
start = "3s"
lifetime = ["5ms", "200ms"]
cpus = "0-3"
comm = "cc1-{n}"
uid = 1000
killed = 0.05
times = { utime = ["1ms", "150ms"], stime = ["100us", "20ms"] }
io = { read_char = ["4KiB", "2MiB"] }
```
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import functools
import gc
import math
import random
import re
import tomllib
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from tsemu.wire import WireError, parse_cpulist

from ..model import accounting
from ..model.clock import DEFAULT_BOOT_WALL_SECONDS, NSEC_PER_SEC, RealClock, VirtualClock
from ..model.families import DEFAULT_TASKSTATS_ID, FamilyTable
from ..model.profiles import PROFILES, KernelProfile
from ..model.tasks import (
    COUNTERS,
    PID_MAX_LIMIT,
    RESERVED_PIDS,
    U32_MAX,
    U64_MAX,
    ExitReport,
    FrozenCounters,
    NoSuchTask,
    ProcessTable,
    TaskState,
)
from . import toml_fast
from .values import (
    _SIGNALS,
    _VALUES,
    DURATION_MAX,
    _Bad,
    _boolean,
    _boot_seconds,
    _cgroup,
    _comm,
    _device,
    _integer,
    _nice,
    _ranged,
    _show,
    _string,
    _suggest,
    _thread_count,
    _timestamp,
    _toml_type,
    _u32,
    _u64,
    format_duration,
    parse_duration,
    parse_size,
    policy_number,
    signal_number,
    task_state,
)

__all__ = [
    "ACTIONS", "Event", "GENERATOR_KINDS", "Machine", "ProcessSpec", "Scenario",
    "ScenarioError", "ThreadSpec", "apply_event", "build_table", "default_scenario",
    "format_duration", "load_scenario", "parse_counter_value", "parse_duration",
    "parse_scenario", "parse_size", "play", "policy_number", "signal_number", "task_state",
]

T = TypeVar("T")

#: The timeline's actions, in the order the docs list them.
ACTIONS: tuple[str, ...] = ("spawn", "clone", "set", "add", "move", "exit", "exit_group")
#: The generator kinds.
GENERATOR_KINDS: tuple[str, ...] = ("short_jobs",)
#: At most this many generated jobs per scenario, all generators together.
MAX_JOBS = 100_000
DEFAULT_START_NS = 100 * NSEC_PER_SEC
DEFAULT_SOURCE = "<string>"
DEFAULT_SCENARIO_RESOURCE = "default.toml"


# --- errors ----------------------------------------------------------------------------------


class ScenarioError(ValueError):
    """A scenario that cannot be used. `problems` holds one line per problem, each naming the
    file, the key path or line, and what is wrong; str() is those lines joined."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


class _Problems:
    """Collects problems as complete lines: file, key path, problem, and where the entry the
    path points into begins in the file."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self._found: list[tuple[int, int, str]] = []  # (entry line or 0, order, line)
        self._text = text
        self._entries: dict[str, int] | None = None  # scanned at the first problem

    @property
    def found(self) -> bool:
        """Whether any problem was found so far."""
        return bool(self._found)

    @property
    def lines(self) -> list[str]:
        """The problems, in the order of the entries they are in (file order)."""
        return [text for _, _, text in sorted(self._found)]

    def add(self, path: str, problem: str) -> None:
        where = f"{path}: " if path else ""
        line = self._entry_line(path)
        suffix = f" (the entry begins at line {line})" if line else ""
        text = f"{self.source}: {where}{problem}{suffix}"
        self._found.append((line or 0, len(self._found), text))

    def _entry_line(self, path: str) -> int | None:
        if self._entries is None:
            self._entries = _entry_lines(self._text) if self._text else {}
        best: tuple[int, int] | None = None
        for key, line in self._entries.items():
            if path == key or path.startswith(key + ".") or path.startswith(key + "["):
                if best is None or len(key) > best[0]:
                    best = (len(key), line)
        return best[1] if best else None

    def raise_if_any(self) -> None:
        if self._found:
            raise ScenarioError(self.lines)


_HEADER = re.compile(r"\s*\[\[\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*\]\]")
_MACHINE_HEADER = re.compile(r"\s*\[\s*machine\s*\]")


def _entry_lines(text: str) -> dict[str, int]:
    """Where each array-of-tables entry begins: {"process[2]": 14, "process[2].thread[0]": 30}.
    (A plain scan of the headers: good enough to point a reader at the right entry.)"""
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    process: str | None = None
    threads = 0
    for number, line in enumerate(text.splitlines(), 1):
        if _MACHINE_HEADER.match(line):
            lines.setdefault("machine", number)
            continue
        match = _HEADER.match(line)
        if not match:
            continue
        name = re.sub(r"\s*\.\s*", ".", match.group(1))
        if name in ("process", "timeline", "generator", "cgroup"):
            key = f"{name}[{counts.get(name, 0)}]"
            counts[name] = counts.get(name, 0) + 1
            lines[key] = number
            if name == "process":
                process, threads = key, 0
        elif name == "process.thread" and process is not None:
            lines[f"{process}.thread[{threads}]"] = number
            threads += 1
    return lines


# --- counters --------------------------------------------------------------------------------

#: How a counter's value is written: "count" (integer), "duration" (ns), "kib" and "bytes"
#: (sizes), "dev" (a device), "stamp" (a max timestamp).
_DELAY_FIELDS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "count": ("{}_count", "count"),
    "total": ("{}_delay_total", "duration"),
    "max": ("{}_delay_max", "duration"),
    "min": ("{}_delay_min", "duration"),
    "max_at": ("{}_delay_max_ts", "stamp"),
})

#: The readable counter tables other than delays: table -> key -> (counter, how it is written).
_GROUPS: Mapping[str, Mapping[str, tuple[str, str]]] = MappingProxyType({
    "times": {
        "utime": ("utime_ns", "duration"), "stime": ("stime_ns", "duration"),
        "utimescaled": ("utimescaled_ns", "duration"),
        "stimescaled": ("stimescaled_ns", "duration"),
        "run_virtual": ("cpu_run_virtual_total", "duration"),
    },
    "memory": {
        "coremem": ("coremem", "count"), "virtmem": ("virtmem", "count"),
        "hiwater_rss": ("hiwater_rss", "kib"), "hiwater_vm": ("hiwater_vm", "kib"),
    },
    "io": {
        "read_char": ("read_char", "bytes"), "write_char": ("write_char", "bytes"),
        "read_syscalls": ("read_syscalls", "count"),
        "write_syscalls": ("write_syscalls", "count"),
        "read_bytes": ("read_bytes", "bytes"), "write_bytes": ("write_bytes", "bytes"),
        "cancelled_write_bytes": ("cancelled_write_bytes", "bytes"),
    },
    "faults": {"minflt": ("ac_minflt", "count"), "majflt": ("ac_majflt", "count")},
    "switches": {"nvcsw": ("nvcsw", "count"), "nivcsw": ("nivcsw", "count")},
    "exe": {"dev": ("ac_exe_dev", "dev"), "inode": ("ac_exe_inode", "count")},
})

#: Every counter's readable spelling and how it is written.
_COUNTER_SPELLING: dict[str, tuple[str, str]] = {
    counter: (f"{group}.{key}", kind)
    for group, keys in _GROUPS.items() for key, (counter, kind) in keys.items()
}
_COUNTER_SPELLING.update({
    template.format(cat): (f"delays.{cat}.{key}", kind)
    for cat in accounting.DELAY_CATEGORIES for key, (template, kind) in _DELAY_FIELDS.items()
})
assert set(_COUNTER_SPELLING) == set(COUNTERS), "every counter has a readable spelling"

#: The counter names as `tasks.COUNTERS` spells them: one string object per name, which every
#: spec's and task's counters share.
_COUNTER_NAMES: Mapping[str, str] = MappingProxyType({name: name for name in COUNTERS})
#: Per delay category, (key, counter, how it is written, its spelling) for each of its keys.
_DELAY_LEAVES: Mapping[str, tuple[tuple[str, str, str, str], ...]] = MappingProxyType({
    cat: tuple((key, _COUNTER_NAMES[template.format(cat)], kind, f"delays.{cat}.{key}")
               for key, (template, kind) in _DELAY_FIELDS.items())
    for cat in accounting.DELAY_CATEGORIES})
_DELAY_KEYS: tuple[str, ...] = tuple(_DELAY_FIELDS)
_DELAY_KEY_SET = frozenset(_DELAY_KEYS)
_DELAY_CATEGORY_SET = frozenset(accounting.DELAY_CATEGORIES)
#: The other tables: (table, its keys, (key, counter, how it is written, its spelling)...).
_GROUP_LEAVES: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, str, str, str], ...]], ...] = (
    tuple((group, tuple(keys), tuple((key, _COUNTER_NAMES[counter], kind, f"{group}.{key}")
                                     for key, (counter, kind) in keys.items()))
          for group, keys in _GROUPS.items()))
_RAW_LEAVES: tuple[tuple[str, str, str, str], ...] = tuple(
    (name, name, _COUNTER_SPELLING[name][1], f"counters.{name}") for name in COUNTERS)
#: How counter values are written (`_converter`).
_KINDS: tuple[str, ...] = ("count", "duration", "kib", "bytes", "dev", "stamp")

#: What belongs to the process's mm: set on the process, every thread reports the leader's.
_MM_COUNTERS: tuple[str, ...] = ("hiwater_rss", "hiwater_vm", "ac_exe_dev", "ac_exe_inode")
#: Values, not sums: `add` refuses them.
_NOT_ADDABLE = frozenset(
    [c for c in COUNTERS if c.endswith(("_delay_max", "_delay_min", "_delay_max_ts"))]
    + ["ac_exe_dev", "ac_exe_inode"])
_COUNTER_TABLES: tuple[str, ...] = (
    "delays", "times", "memory", "io", "faults", "switches", "exe", "counters")


class _Range(NamedTuple):
    """A generator's [min, max]: each job draws an integer in it."""

    low: int
    high: int


def _converter(kind: str, boot_wall_seconds: int) -> Callable[[object], Any]:
    if kind == "duration":
        return parse_duration
    if kind == "kib":
        return functools.partial(parse_size, unit="KiB")
    if kind == "bytes":
        return parse_size
    if kind == "dev":
        return _device
    if kind == "stamp":
        return _timestamp(boot_wall_seconds)
    return _u64


def parse_counter_value(name: str, value: object, *,
                        boot_wall_seconds: int = DEFAULT_BOOT_WALL_SECONDS
                        ) -> int | tuple[int, int]:
    """One counter (a `tasks.COUNTERS` name) from what a scenario's raw ``counters`` table or
    a control request gives: an integer in the kernel's unit, or a string in the unit the
    counter takes ("3ms" for a delay or a CPU time, "4KiB" for a high-water mark or an I/O
    byte count, "8:1" for ac_exe_dev), or for `<cat>_delay_max_ts` [tv_sec, tv_nsec] or a
    date-time. ScenarioError naming the counter otherwise."""
    if name not in _COUNTER_SPELLING:
        raise ScenarioError([f"{name}: unknown counter; {_suggest(name, COUNTERS)}"])
    try:
        result: int | tuple[int, int] = _converter(
            _COUNTER_SPELLING[name][1], boot_wall_seconds)(value)
    except _Bad as exc:
        raise ScenarioError([f"{name}: {exc}"]) from None
    return result


# --- reading tables --------------------------------------------------------------------------

_MISSING: Any = object()


#: The key sets of the key lists readers are given, by the list's id (with the list, which
#: keeps the id from being reused).
_KEY_SETS: dict[int, tuple[Sequence[str], frozenset[str]]] = {}


def _key_set(keys: Sequence[str]) -> frozenset[str]:
    known = _KEY_SETS.get(id(keys))
    if known is None or known[0] is not keys:
        if len(_KEY_SETS) >= 256:
            _KEY_SETS.clear()
        known = _KEY_SETS[id(keys)] = (keys, frozenset(keys))
    return known[1]


class _Reader:
    """One TOML table being read: converted values come out, problems go to `problems` under
    the key's path, and keys that are not in `keys` are reported when the reader is made."""

    __slots__ = ("problems", "data", "parent", "ok", "_path", "_key", "_index")

    def __init__(self, problems: _Problems, data: Mapping[str, Any], path: str | None,
                 keys: Sequence[str], parent: _Reader | None = None, key: str = "",
                 index: int = -1) -> None:
        """`path` None: the table at `key` of `parent` (entry `index` of the array there if
        not -1), a path spelled out only if needed."""
        self.problems = problems
        self.data = data
        self.parent = parent
        self.ok = True
        self._path = path
        self._key = key
        self._index = index
        known = _key_set(keys)
        for name in data:
            if name not in known:
                self.fail(name, f"unknown key; {_suggest(name, keys)}")

    @property
    def path(self) -> str:
        """The table's key path: "process[2].delays"."""
        path = self._path
        if path is None:
            assert self.parent is not None
            path = self.parent.sub(self._key)
            if self._index >= 0:
                path = f"{path}[{self._index}]"
            self._path = path
        return path

    def sub(self, key: str) -> str:
        path = self.path
        return f"{path}.{key}" if path else key

    def fail(self, key: str | None, problem: str) -> None:
        self.problems.add(self.sub(key) if key else self.path, problem)
        self._mark()

    def _mark(self) -> None:
        self.ok = False
        if self.parent is not None:
            self.parent._mark()

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, convert: Callable[[Any], T], default: Any = None) -> Any:
        """`convert(value)`, `default` when the key is absent or its value is bad."""
        if key not in self.data:
            return default
        try:
            return convert(self.data[key])
        except _Bad as exc:
            self.fail(key, str(exc))
            return default

    def require(self, key: str, convert: Callable[[Any], T]) -> Any:
        if key not in self.data:
            self.fail(None, f"missing required key {_show(key)}")
            return None
        return self.get(key, convert)

    def table(self, key: str, keys: Sequence[str]) -> _Reader | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, dict):
            self.fail(key, f"expected a table, got {_toml_type(value)} {_show(value)}")
            return None
        return _Reader(self.problems, value, None, keys, parent=self, key=key)

    def tables(self, key: str, keys: Sequence[str]) -> list[_Reader]:
        """An array of tables: a reader for each entry."""
        if key not in self.data:
            return []
        value = self.data[key]
        if not isinstance(value, list):
            self.fail(key, f"expected an array of tables ([[{self.sub(key)}]]), got "
                      f"{_toml_type(value)}")
            return []
        readers = []
        for i, entry in enumerate(value):
            reader = self.entry(key, i, entry, keys)
            if reader is not None:
                readers.append(reader)
        return readers

    def entry(self, key: str, index: int, entry: object, keys: Sequence[str]
              ) -> _Reader | None:
        """A reader for entry `index` of the array of tables at `key`; None (reported) if
        the entry is not a table."""
        if not isinstance(entry, dict):
            self.problems.add(f"{self.sub(key)}[{index}]",
                              f"expected a table, got {_toml_type(entry)} {_show(entry)}")
            self._mark()
            return None
        return _Reader(self.problems, entry, None, keys, parent=self, key=key, index=index)


# --- the parsed form -------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """`[machine]`, with defaults filled in; see the module docstring."""

    cpus: int = 2
    kernel: str = "6.18"
    family_id: int = DEFAULT_TASKSTATS_ID
    clock: str = "virtual"
    boot_wall_seconds: int = DEFAULT_BOOT_WALL_SECONDS
    #: the scenario's start on the virtual clock: nanoseconds since boot
    start_ns: int = DEFAULT_START_NS
    next_pid: int = 1
    pid_max: int = PID_MAX_LIMIT
    mirror_host: bool = False

    @property
    def profile(self) -> KernelProfile:
        return PROFILES[self.kernel]

    def families(self) -> FamilyTable:
        return FamilyTable.default(self.family_id)


#: The counters of a spec that gives none: one shared empty mapping, not a dict per spec.
_NO_COUNTERS = FrozenCounters()


def _no_counters() -> Mapping[str, int | tuple[int, int]]:
    return _NO_COUNTERS


def _frozen(counters: Mapping[str, Any]) -> FrozenCounters:
    """A spec's counters: immutable, so that the tasks made from the spec can share them."""
    return FrozenCounters(counters) if counters else _NO_COUNTERS


@dataclass(frozen=True, slots=True)
class ThreadSpec:
    """A thread besides the leader. None means "as the leader" (cpu, state) or "its own
    name is the leader's" (comm). `age_ns` is how long before its creation point (the
    scenario start, or the spawn) it started; threads of a timeline spawn start with it (0).
    `counters` are `tasks.COUNTERS` values; the mm's counters come from the leader."""

    tid: int
    comm: str | None = None
    cpu: int | None = None
    state: TaskState | None = None
    superuser: bool = False
    age_ns: int = 0
    counters: Mapping[str, int | tuple[int, int]] = field(default_factory=_no_counters)

    def _with_tid(self, tid: int) -> ThreadSpec:
        """This thread with its tid filled in (itself if it already has that one)."""
        if self.tid == tid:
            return self
        return ThreadSpec(tid=tid, comm=self.comm, cpu=self.cpu, state=self.state,
                          superuser=self.superuser, age_ns=self.age_ns, counters=self.counters)


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """A process: its leader's identity and counters, and its other threads. `age_ns` is how
    long before its creation point (the scenario start for [[process]], the event's time for
    a spawn) it started."""

    pid: int
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
    counters: Mapping[str, int | tuple[int, int]] = field(default_factory=_no_counters)
    threads: tuple[ThreadSpec, ...] = ()

    @property
    def tids(self) -> tuple[int, ...]:
        """Every thread's tid, the leader's first."""
        return (self.pid, *(t.tid for t in self.threads))

    def _with_tids(self, pid: int, tids: Sequence[int]) -> ProcessSpec:
        """This process with its pid and its threads' tids filled in (itself if it already
        has those)."""
        if not self.threads and not tids and pid == self.pid:
            return self
        threads = tuple(t._with_tid(tid) for t, tid in zip(self.threads, tids, strict=True))
        if pid == self.pid and all(a is b for a, b in zip(threads, self.threads, strict=True)):
            return self
        return dataclasses.replace(self, pid=pid, threads=threads)


#: ProcessSpec's fields, in order, each with its slot's setter (`_new_process_spec`).
_SPEC_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ProcessSpec))
(_set_pid, _set_comm, _set_ppid, _set_uid, _set_gid, _set_cgroup, _set_state, _set_cpu,
 _set_age_ns, _set_nice, _set_policy, _set_forked_no_exec, _set_superuser, _set_counters,
 _set_threads) = (getattr(ProcessSpec, name).__set__ for name in _SPEC_FIELDS)


def _new_process_spec(pid: int | None, comm: str, ppid: int, uid: int, gid: int,
                      cgroup: str | None,
                      state: TaskState, cpu: int, age_ns: int, nice: int, policy: int,
                      forked_no_exec: bool, superuser: bool,
                      counters: Mapping[str, int | tuple[int, int]],
                      threads: tuple[ThreadSpec, ...]) -> ProcessSpec:
    """ProcessSpec(...) of checked values, filled slot by slot: the same object, made three
    times faster than through the frozen dataclass's __init__ (which sets each field through
    object.__setattr__): that counts when a scenario has 100,000 processes. (`pid` None:
    automatic, until the simulation fills it in, as for the readers' specs.)"""
    spec: ProcessSpec = object.__new__(ProcessSpec)
    _set_pid(spec, pid)
    _set_comm(spec, comm)
    _set_ppid(spec, ppid)
    _set_uid(spec, uid)
    _set_gid(spec, gid)
    _set_cgroup(spec, cgroup)
    _set_state(spec, state)
    _set_cpu(spec, cpu)
    _set_age_ns(spec, age_ns)
    _set_nice(spec, nice)
    _set_policy(spec, policy)
    _set_forked_no_exec(spec, forked_no_exec)
    _set_superuser(spec, superuser)
    _set_counters(spec, counters)
    _set_threads(spec, threads)
    return spec


assert _SPEC_FIELDS == tuple(_new_process_spec.__code__.co_varnames[:len(_SPEC_FIELDS)]), (
    "_new_process_spec takes ProcessSpec's fields, in order")


@dataclass(frozen=True, slots=True)
class Event:
    """One timeline action at `at_ns` nanoseconds after the scenario start.

    `args`, by action (every pid explicit):
    - spawn: {"process": ProcessSpec}
    - clone: {"tgid": int, "thread": ThreadSpec}
    - set: {"pid": int, "values": {identity or counter name: value}} (as `ProcessTable.set`)
    - add: {"pid": int, "deltas": {counter name: int}}
    - move: {"pid": int, "cpu": int}
    - exit: {"pid": int, "code": int, "signal": int | None, "core": bool, "cpu": int | None}
    - exit_group: {"pid": int, "code": int, "signal": int | None, "core": bool,
      "caller": int | None}
    """

    at_ns: int
    action: str
    args: dict[str, Any]


def _no_overrides() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Scenario:
    """A checked scenario: the machine, declared cgroups, the processes alive at the start
    (every pid explicit) and the timeline, generators expanded, sorted by time (stable)."""

    source: str
    machine: Machine
    cgroups: tuple[str, ...]
    processes: tuple[ProcessSpec, ...]
    timeline: tuple[Event, ...]
    #: the text it was read from, zlib-compressed (for `with_overrides`): neither the text
    #: nor its TOML document is kept as such (~2.2 KB per [[process]] table)
    packed_text: bytes | None = field(default=None, repr=False, compare=False)
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
        """The TOML document it was read from (with the `overrides`), read again from `text`
        on each access."""
        text = self.text
        if text is None:
            return None
        document = tomllib.loads(text)
        if self.overrides:
            document.setdefault("machine", {}).update(self.overrides)
        return MappingProxyType(document)

    def clock_ns(self, event: Event) -> int:
        """When `event` happens on the virtual clock (nanoseconds since boot)."""
        return self.machine.start_ns + event.at_ns

    def process(self, pid: int) -> ProcessSpec:
        """The [[process]] with that pid; KeyError if none."""
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
        label = ", ".join(f"{k}={_show(v)}" for k, v in overrides.items())
        applied = {**self.overrides, **overrides}
        return _check_text(text, f"{self.source} (with {label})", applied, self.packed_text)


# --- parsing ---------------------------------------------------------------------------------

_MACHINE_KEYS = ("cpus", "kernel", "family_id", "clock", "boot_time", "start", "next_pid",
                 "pid_max", "mirror_host")
_TOP_KEYS = ("machine", "cgroup", "process", "timeline", "generator")
_IDENTITY_KEYS = ("comm", "ppid", "uid", "gid", "cgroup", "state", "cpu", "nice", "policy",
                  "forked_no_exec", "superuser")
_PROCESS_KEYS = ("pid", *_IDENTITY_KEYS, "start", "age", "threads", "thread", *_COUNTER_TABLES)
_THREAD_KEYS = ("tid", "comm", "cpu", "state", "start", "age", "superuser", *_COUNTER_TABLES)
_ACTION_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "spawn": _PROCESS_KEYS,
    "clone": ("tgid", "tid", "comm", "cpu", "state", "superuser", *_COUNTER_TABLES),
    "set": ("pid", *_IDENTITY_KEYS, *_COUNTER_TABLES),
    "add": ("pid", *_COUNTER_TABLES),
    "move": ("pid", "cpu"),
    "exit": ("pid", "code", "signal", "core", "cpu"),
    "exit_group": ("pid", "code", "signal", "core", "caller"),
})
_GENERATOR_KEYS = ("kind", "seed", "count", "rate", "start", "duration", "arrival", "lifetime",
                   "cpus", "threads", "comm", "uid", "gid", "ppid", "cgroup", "nice", "policy",
                   "state", "code", "signal", "killed", "core", *_COUNTER_TABLES)


class _Ref(NamedTuple):
    """A generated job's pid, known once the simulation has spawned it."""

    key: str


@dataclass
class _Draft:
    """A timeline event being checked: pids may still be automatic (None) or _Refs."""

    at_ns: int
    action: str
    args: dict[str, Any]
    where: str
    ref: str | None = None


class _Context:
    """What readers need to know about the machine, and what they learn about pids."""

    def __init__(self, problems: _Problems, machine: Machine) -> None:
        self.problems = problems
        self.machine = machine
        boot = machine.boot_wall_seconds
        #: how to read each kind of counter value (`_converter`); for a generator's ranges
        self.converters = {kind: _converter(kind, boot) for kind in _KINDS}
        self.range_converters = {kind: convert if kind == "stamp" else _range_of(convert)
                                 for kind, convert in self.converters.items()}
        self._pid = _ranged(1, machine.pid_max - 1)
        self.written_pids: list[int] = []
        #: pids of entries left out for their problems: what refers to them is not reported
        self.dropped: set[int] = set()

    def drop(self, pid: object) -> None:
        if isinstance(pid, int) and not isinstance(pid, bool):
            self.dropped.add(pid)

    def pid(self, value: object) -> int:
        """A pid an entry refers to."""
        return self._pid(value)

    def new_pid(self, value: object) -> int:
        """A pid an entry gives to a new task (the default next_pid goes past these)."""
        number = self.pid(value)
        self.written_pids.append(number)
        return number

    def cpu(self, value: object) -> int:
        number = _integer(value)
        cpus = self.machine.cpus
        if not 0 <= number < cpus:
            have = "CPU 0" if cpus == 1 else f"CPUs 0-{cpus - 1}"
            raise _Bad(f"cpu {number} does not exist: the machine has {have} "
                       f"([machine] cpus = {cpus})")
        return number


def parse_scenario(text: str, source: str = DEFAULT_SOURCE) -> Scenario:
    """Read and check a scenario; ScenarioError listing every problem found."""
    return _check_text(text, source)


def _check_text(text: str, source: str, overrides: Mapping[str, Any] | None = None,
                packed_text: bytes | None = None) -> Scenario:
    """Read `text` (with [machine] `overrides`) and check it: the Scenario, or ScenarioError.

    The compiled TOML parser reads the text first (`scenario_toml`), into the document
    tomllib would make of it, checked as tomllib's would be. The text is read by tomllib
    instead when the compiled parser does not read it (not there, a text it might read
    otherwise, or a TOML error: tomllib words it), and, to be safe, when reading its document
    failed unexpectedly."""
    with _collector_paused():
        try:
            reading = _read_text(text, source, overrides, fast=True)
            if reading is not None:
                return _conclude(reading, packed_text, overrides)
        except ScenarioError:
            raise  # the scenario's problems: the same on either parser's document
        except Exception:  # noqa: BLE001 - not expected: tomllib's document, then, to be safe
            pass
        reading = None  # (the fast reading, if any, gone before the second)
        reading = _read_text(text, source, overrides, fast=False)
        assert reading is not None
        return _conclude(reading, packed_text, overrides)


def _read_text(text: str, source: str, overrides: Mapping[str, Any] | None, *, fast: bool
               ) -> _Reading | None:
    """The reading of `text`'s document, by the compiled parser (None if it does not read
    this text) or by tomllib (ScenarioError for a syntax error). The document lives only
    here: it is gone before the check builds a table, whose tasks then reuse its memory."""
    if fast:
        document = toml_fast.fast_document(text)
        if document is None:
            return None
    else:
        document = _reference_document(text, source)
    if overrides:
        machine = document.setdefault("machine", {})
        machine.update(overrides)
        del machine
    return _read_document(document, source, text)


def _reference_document(text: str, source: str) -> dict[str, Any]:
    """tomllib's document of `text`; ScenarioError saying what is wrong with the TOML."""
    try:
        return toml_fast.reference_document(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([_syntax_problem(source, str(exc))]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ScenarioError([f"{source}: invalid TOML: {exc}"]) from None
    except RecursionError:
        raise ScenarioError([f"{source}: invalid TOML: arrays or tables nested too deeply"]
                            ) from None


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a scenario is read or built: that makes
    millions of objects (the TOML document, the specs, the tasks) and no garbage cycles, and
    the collections they would trigger cost a tenth of the time."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _syntax_problem(source: str, message: str) -> str:
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        return (f"{source}: line {match.group(1)}, column {match.group(2)}: invalid TOML: "
                f"{message[:match.start()]}")
    match = re.search(r"\s*\(at end of document\)$", message)
    if match:
        return f"{source}: at the end of the file: invalid TOML: {message[:match.start()]}"
    return f"{source}: invalid TOML: {message}"


def load_scenario(path: str | Path) -> Scenario:
    """Read and check the scenario file at `path` (ScenarioError naming it if unreadable)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read the scenario: {exc.strerror or exc}"]
                            ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError([f"{path}: not UTF-8 text (byte {exc.start}): a scenario is a "
                             "TOML file"]) from None
    del raw
    return parse_scenario(text, str(path))


@functools.cache
def default_scenario() -> Scenario:
    """The embedded default machine (`tsemu serve` without --scenario, `make run`)."""
    resource = resources.files("tsemu.emulator.scenario").joinpath(DEFAULT_SCENARIO_RESOURCE)
    return parse_scenario(resource.read_text(encoding="utf-8"),
                          f"tsemu.emulator.scenario/{DEFAULT_SCENARIO_RESOURCE}")


@dataclass
class _Reading:
    """A document read (nothing of it kept), before the check by playing."""

    problems: _Problems
    text: str | None
    machine: Machine
    cgroups: list[str]
    processes: _Processes
    drafts: list[_Draft]
    dropped: set[int]


def _read_document(document: Mapping[str, Any], source: str, text: str | None) -> _Reading:
    token = _VALUES.set({})
    try:
        problems = _Problems(source, text)
        top = _Reader(problems, document, "", _TOP_KEYS)
        machine = _read_machine(top)
        ctx = _Context(problems, machine)
        cgroups = [cg for r in top.tables("cgroup", ("path",))
                   if (cg := r.require("path", _cgroup)) is not None]
        processes = _read_processes(ctx, top)
        drafts = _read_timeline(ctx, top)
        drafts += _read_generators(ctx, top)
    finally:
        _VALUES.reset(token)
    written = document.get("machine")
    if not (isinstance(written, dict) and "next_pid" in written):
        highest = max(ctx.written_pids, default=0)
        next_pid = highest + 1 if highest + 1 < machine.pid_max else RESERVED_PIDS
        machine = dataclasses.replace(machine, next_pid=next_pid)
    return _Reading(problems, text, machine, cgroups, processes, drafts, ctx.dropped)


def _conclude(reading: _Reading, packed_text: bytes | None = None,
              overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Check a reading by playing it; the Scenario, with the table built at its start."""
    problems, machine = reading.problems, reading.machine
    resolved, timeline, start = _simulate(problems, machine, reading.cgroups,
                                          reading.processes, reading.drafts, reading.dropped)
    problems.raise_if_any()
    if packed_text is None and reading.text is not None:
        packed_text = zlib.compress(reading.text.encode("utf-8", "surrogatepass"), 1)
    scenario = Scenario(source=problems.source, machine=machine,
                        cgroups=tuple(dict.fromkeys(reading.cgroups)),
                        processes=tuple(resolved), timeline=tuple(timeline),
                        packed_text=packed_text,
                        overrides=MappingProxyType(dict(overrides or {})))
    if start is not None:
        scenario._start_table.append(start)
    return scenario


def _read_machine(top: _Reader) -> Machine:
    """[machine]. A bad value is reported and replaced by the most permissive one (every
    CPU NR_CPUS allows, the largest pid_max...), so the rest of the file is still checked
    without follow-on complaints."""
    r = top.table("machine", _MACHINE_KEYS)
    defaults = Machine()
    if r is None:
        return defaults

    def pick(key: str, convert: Callable[[Any], Any], default: Any, permissive: Any) -> Any:
        value = r.get(key, convert, _MISSING)
        if value is _MISSING:
            return permissive if r.has(key) else default
        return value

    kernel = pick("kernel", _kernel, defaults.kernel, defaults.kernel)
    nr_cpus_config = PROFILES[kernel].nr_cpus_config
    pid_max = pick("pid_max", _ranged(RESERVED_PIDS + 1, PID_MAX_LIMIT), defaults.pid_max,
                   PID_MAX_LIMIT)
    return Machine(
        cpus=pick("cpus", _ranged(1, nr_cpus_config), defaults.cpus, nr_cpus_config),
        kernel=kernel,
        family_id=pick("family_id", _family_id, defaults.family_id, defaults.family_id),
        clock=pick("clock", _clock_mode, defaults.clock, defaults.clock),
        boot_wall_seconds=pick("boot_time", _boot_seconds, defaults.boot_wall_seconds,
                               defaults.boot_wall_seconds),
        start_ns=pick("start", parse_duration, defaults.start_ns, DURATION_MAX // 2),
        next_pid=pick("next_pid", _ranged(1, pid_max - 1), defaults.next_pid, 1),
        pid_max=pid_max,
        mirror_host=pick("mirror_host", _boolean, defaults.mirror_host, False))


def _kernel(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise _Bad(f"write the kernel profile as a string: kernel = \"{value}\" (a bare "
                   f"{value} is a TOML number)")
    name = _string(value)
    if name not in PROFILES:
        raise _Bad(f"unknown kernel profile {_show(name)}; choose one of {', '.join(PROFILES)}")
    return name


def _family_id(value: object) -> int:
    number = _integer(value)
    try:
        FamilyTable.default(number)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return number


def _clock_mode(value: object) -> str:
    name = _string(value)
    if name not in ("virtual", "real"):
        raise _Bad(f"clock must be \"virtual\" or \"real\", not {_show(name)}")
    return name


def _read_age(ctx: _Context, r: _Reader, ref_ns: int, default: int) -> int:
    """How long before `ref_ns` (nanoseconds since boot) the task started, from `start` (since
    boot) or `age` (before the reference)."""
    if r.has("start") and r.has("age"):
        r.fail("age", "give start or age, not both")
        return default
    if r.has("start"):
        start = r.get("start", parse_duration)
        if start is None:
            return default
        if start > ref_ns:
            r.fail("start", f"{format_duration(start)} since boot is after the moment it is "
                   f"created ({format_duration(ref_ns)} since boot)")
            return default
        return int(ref_ns - start)
    if r.has("age"):
        age = r.get("age", parse_duration)
        if age is None:
            return default
        if age > ref_ns:
            r.fail("age", f"{format_duration(age)} reaches back before boot (the reference "
                   f"moment is {format_duration(ref_ns)} after boot)")
            return default
        return int(age)
    return default


def _read_counters(ctx: _Context, r: _Reader, mode: str, *, thread: bool = False
                   ) -> dict[str, Any]:
    """The counters given by the readable tables and the raw `counters` table of `r`.
    `mode`: "set" (values), "add" (deltas: no max/min/max_at/exe) or "range" (a generator's:
    any value may be [min, max])."""
    converters = ctx.range_converters if mode == "range" else ctx.converters
    quick = _counters_without_problems(r.data, converters, mode, thread)
    if quick is not None:
        return quick
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}

    adding = mode == "add"

    def leaves(reader: _Reader, table: Sequence[tuple[str, str, str, str]]) -> None:
        data = reader.data
        for key, counter, kind, spelled in table:
            if key not in data:
                continue
            if adding and counter in _NOT_ADDABLE:
                reader.fail(key, "a value, not a sum: change it with set, not add")
                continue
            if thread and counter in _MM_COUNTERS and not spelled.startswith("counters."):
                reader.fail(key, "belongs to the process's memory map: give it on the "
                            "process; every thread reports the leader's")
                continue
            value = reader.get(key, converters[kind], _MISSING)
            if value is _MISSING:
                continue
            if counter in origin:
                reader.fail(key, f"{counter} is given twice (also as {origin[counter]})")
                continue
            origin[counter] = spelled
            out[counter] = value

    data = r.data
    if "delays" in data:
        delays = r.table("delays", accounting.DELAY_CATEGORIES)
        if delays is not None:
            for cat, cat_leaves in _DELAY_LEAVES.items():
                if cat not in delays.data:
                    continue
                table = delays.table(cat, _DELAY_KEYS)
                if table is None:
                    continue
                leaves(table, cat_leaves)
                if mode == "set" and "max" in table.data:  # (the order needs max)
                    _check_delay_order(table, cat, out)
    for group, keys, group_leaves in _GROUP_LEAVES:
        if group not in data:
            continue
        table = r.table(group, keys)
        if table is None:
            continue
        if thread and group == "exe":
            r.fail(group, "belongs to the process (its executable): every thread reports the "
                   "leader's")
            continue
        leaves(table, group_leaves)
    if "counters" in data:
        raw = r.table("counters", COUNTERS)
        if raw is not None:
            leaves(raw, _RAW_LEAVES)
    return out


def _counters_without_problems(data: Mapping[str, Any],
                               converters: Mapping[str, Callable[[object], Any]], mode: str,
                               thread: bool) -> dict[str, Any] | None:
    """What `_read_counters` returns, read without its readers, or None at the first thing
    that is not plainly right (then `_read_counters` reads again and reports it). Checks what
    it checks, in the same order, so that the counters come out in the same order too."""
    adding = mode == "add"
    out: dict[str, Any] = {}

    def leaves(table: Mapping[str, Any], known: frozenset[str],
               table_leaves: Sequence[tuple[str, str, str, str]]) -> bool:
        if type(table) is not dict or not known.issuperset(table):
            return False
        for key, counter, kind, spelled in table_leaves:
            if key not in table:
                continue
            if counter in out or (adding and counter in _NOT_ADDABLE) or (
                    thread and counter in _MM_COUNTERS and not spelled.startswith("counters.")):
                return False
            try:
                out[counter] = converters[kind](table[key])
            except _Bad:
                return False
        return True

    if "delays" in data:
        delays = data["delays"]
        if type(delays) is not dict or not _DELAY_CATEGORY_SET.issuperset(delays):
            return None
        for cat, cat_leaves in _DELAY_LEAVES.items():
            if cat not in delays:
                continue
            table = delays[cat]
            if not leaves(table, _DELAY_KEY_SET, cat_leaves):
                return None
            if mode == "set" and "max" in table:
                low, high, total = (out.get(name) for name in _DELAY_ORDER[cat])
                if (low is not None and low > high) or (total is not None and high > total):
                    return None
    for group, keys, group_leaves in _GROUP_LEAVES:
        if group not in data:
            continue
        if thread and group == "exe":
            return None
        if not leaves(data[group], _key_set(keys), group_leaves):
            return None
    if "counters" in data and not leaves(data["counters"], _key_set(COUNTERS), _RAW_LEAVES):
        return None
    return out


_DELAY_ORDER: Mapping[str, tuple[str, str, str]] = MappingProxyType({
    cat: (f"{cat}_delay_min", f"{cat}_delay_max", f"{cat}_delay_total")
    for cat in accounting.DELAY_CATEGORIES})


def _check_delay_order(table: _Reader, cat: str, values: Mapping[str, Any]) -> None:
    low, high, total = (values.get(name) for name in _DELAY_ORDER[cat])
    if table.has("min") and table.has("max") and low is not None and high is not None \
            and low > high:
        table.fail("min", f"{format_duration(low)} is longer than max "
                   f"{format_duration(high)}")
    if table.has("max") and table.has("total") and high is not None and total is not None \
            and high > total:
        table.fail("max", f"{format_duration(high)} is longer than total "
                   f"{format_duration(total)}")


def _range_of(convert: Callable[[object], int]) -> Callable[[object], Any]:
    def either(value: object) -> Any:
        if isinstance(value, list):
            if len(value) != 2:
                raise _Bad(f"a range is [min, max], got an array of {len(value)}")
            low, high = convert(value[0]), convert(value[1])
            if low > high:
                raise _Bad(f"range {_show(value)} has min above max")
            return _Range(low, high)
        return convert(value)
    return either


class _Processes(NamedTuple):
    """The valid [[process]] entries: specs with pids possibly None, and the index of each in
    the file's array (its path is "process[index]": spelled out only for a problem, as
    nothing is kept per process while reading but what the scenario keeps)."""

    specs: list[ProcessSpec]
    indexes: array.array[int]

    def where(self, position: int) -> str:
        return f"process[{self.indexes[position]}]"


def _read_processes(ctx: _Context, top: _Reader) -> _Processes:
    """[[process]]: each valid entry.

    As the readers would, in two passes: every entry's reader is made first (which reports
    the entries that are not tables and the unknown keys), then each entry is read in file
    order (its values, then whether a pid it writes was written before). An entry of the
    usual, plainly right kind is read by `_QuickProcess` instead, without a reader: nothing
    of it would be reported in the first pass, and in the second only a pid written before,
    for which a reader is made then."""
    read = _Processes([], array.array("q"))
    entries = top.data.get("process")
    if type(entries) is not list:
        top.tables("process", _PROCESS_KEYS)  # none, or not an array (which it reports)
        return read
    quick = _QuickProcess(ctx)
    first: list[ProcessSpec | _Reader | None] = []
    for index, entry in enumerate(entries):
        spec = quick.read(entry) if type(entry) is dict else None
        first.append(spec if spec is not None
                     else top.entry("process", index, entry, _PROCESS_KEYS))
    del quick
    seen: set[int] = set()  # the pids written so far, valid entries or not
    for index, item in enumerate(first):
        if item is None:
            continue
        if type(item) is ProcessSpec:
            pid = item.pid
            if pid is None or pid not in seen:
                if pid is not None:
                    seen.add(pid)
                read.specs.append(item)
                read.indexes.append(index)
                continue
            item = top.entry("process", index, entries[index], _PROCESS_KEYS)
            assert item is not None
        assert isinstance(item, _Reader)
        spec = _read_process(ctx, item, ref_ns=ctx.machine.start_ns, in_timeline=False)
        for tid, key in _written_tids(item.data):
            if tid in seen:
                item.fail(key, f"pid {tid} is already taken by {_first_taker(top, tid)}")
                spec = None
            else:
                seen.add(tid)
        if spec is None:
            ctx.drop(item.data.get("pid"))
            continue
        read.specs.append(spec)
        read.indexes.append(index)
    return read


def _first_taker(top: _Reader, tid: int) -> str:
    """The key path of the first [[process]] table that writes pid `tid`."""
    for i, entry in enumerate(top.data["process"]):
        if isinstance(entry, dict):
            for written, key in _written_tids(entry):
                if written == tid:
                    return f"process[{i}].{key}"
    raise AssertionError(f"no [[process]] table writes pid {tid}")


def _written_tids(data: Mapping[str, Any]) -> Iterator[tuple[int, str]]:
    """The pids a [[process]] table writes, whether or not the rest of it is valid."""
    if isinstance(data.get("pid"), int):
        yield data["pid"], "pid"
    threads = data.get("thread")
    for j, thread in enumerate(threads if isinstance(threads, list) else ()):
        if isinstance(thread, dict) and isinstance(thread.get("tid"), int):
            yield thread["tid"], f"thread[{j}].tid"


def _read_process(ctx: _Context, r: _Reader, *, ref_ns: int, in_timeline: bool
                  ) -> ProcessSpec | None:
    """A [[process]] or a spawn's table. Automatic pids stay None (typed as int: the
    simulation fills them in before anyone else sees the spec)."""
    pid = r.get("pid", ctx.new_pid)
    comm = r.require("comm", _comm)
    age = _read_age(ctx, r, ref_ns, default=0 if in_timeline else ref_ns)
    leader_counters = _read_counters(ctx, r, "set")
    spec_threads: list[ThreadSpec] = []
    entries = r.tables("thread", _THREAD_KEYS)
    for t in entries:
        if in_timeline and (t.has("start") or t.has("age")):
            t.fail("start" if t.has("start") else "age",
                   "the threads of a timeline spawn start with it")
        tid = t.get("tid", ctx.new_pid)
        thread_age = age if in_timeline else _read_age(ctx, t, ref_ns, default=age)
        if thread_age > age:
            t.fail(None, f"the thread starts {format_duration(thread_age - age)} before its "
                   "process")
        spec_threads.append(ThreadSpec(
            tid=tid, comm=t.get("comm", _comm), cpu=t.get("cpu", ctx.cpu),
            state=t.get("state", task_state), superuser=t.get("superuser", _boolean, False),
            age_ns=0 if in_timeline else thread_age,
            counters=_frozen(_read_counters(ctx, t, "set", thread=True))))
    count = r.get("threads", _thread_count)
    if count is not None and count < 1 + len(entries):
        r.fail("threads", f"threads = {count} counts the leader, yet there are "
               f"{len(entries)} [[thread]] entries besides it")
    elif count is not None:  # plain threads: one spec for them all (the pids come later)
        plain = ThreadSpec(tid=None, age_ns=0 if in_timeline else age)  # type: ignore[arg-type]
        spec_threads += [plain] * (count - 1 - len(entries))
    tids = [t.tid for t in spec_threads if t.tid is not None]
    for j, written in enumerate(spec_threads):
        if written.tid is not None and (written.tid == pid or tids.count(written.tid) > 1):
            r.problems.add(f"{r.path}.thread[{j}].tid", f"tid {written.tid} is given twice in "
                           "this process")
            r._mark()
            break
    spec = ProcessSpec(
        pid=pid, comm=comm or "", ppid=r.get("ppid", _u32, 0 if pid == 1 else 1),
        uid=r.get("uid", _u32, 0), gid=r.get("gid", _u32, 0),
        cgroup=r.get("cgroup", _cgroup), state=r.get("state", task_state, TaskState.RUNNING),
        cpu=r.get("cpu", ctx.cpu, 0), age_ns=age, nice=r.get("nice", _nice, 0),
        policy=r.get("policy", policy_number, 0),
        forked_no_exec=r.get("forked_no_exec", _boolean, False),
        superuser=r.get("superuser", _boolean, False), counters=_frozen(leader_counters),
        threads=tuple(spec_threads))
    return spec if r.ok else None


class _QuickProcess:
    """Reads a [[process]] table of the usual kind, plainly right, into the ProcessSpec
    `_read_process` would make of it (equal values, shared alike, counters in the same
    order), without readers or key paths, converting each distinct string of the document
    ("5ms", "sleeping", a comm) once. `read` answers None for anything else (a table with
    [[process.thread]] entries, a value it does not plainly accept...): the readers then read
    that entry and say what is wrong with it. (At 100,000 processes the readers' way costs
    about 1.5 s, this one a fraction of that.)

    Lives as long as one reading: the caches hold strings of the document as keys."""

    def __init__(self, ctx: _Context) -> None:
        machine = ctx.machine
        values = _VALUES.get()
        assert values is not None, "made while a document is read (_read_document)"
        self._ctx = ctx
        self._values: dict[int | str, Any] = values
        self._pid_max = machine.pid_max
        self._cpus = machine.cpus
        self._start_ns = machine.start_ns
        #: per converter, what each string it was given converts to
        self._strings: dict[Callable[[object], Any], dict[str, Any]] = {}
        #: per counter table ("times", or a delay category: "cpu"), per tuple of the keys a
        #: table of it has, in the order written: its leaves, in the readers' order (None if
        #: a key is unknown)
        self._plans: dict[str, dict[tuple[str, ...], tuple[_Leaf, ...] | None]] = {
            group: {} for group in _QUICK_LEAVES}
        self._leaf_cache = {kind: self._strings.setdefault(convert, {})
                            for kind, convert in ctx.converters.items()}
        self._converters = ctx.converters
        self._comms: dict[str, str] = self._strings.setdefault(_comm, {})
        self._states: dict[str, TaskState] = self._strings.setdefault(task_state, {})
        #: per tuple of a table's keys, in the order written: what `read` makes of it
        self._shapes: dict[tuple[str, ...], _Shape] = {}

    def read(self, data: dict[str, Any]) -> ProcessSpec | None:
        """The spec of a [[process]] table, or None (not plainly right: ask the readers).
        (Written for speed: the usual keys inline, the others through `_rare`.)"""
        keys = tuple(data)
        shape = self._shapes.get(keys)
        if shape is None:
            shape = self._shapes[keys] = _process_shape(keys)
        if not shape.quick:
            return None
        values = self._values
        pid = data.get("pid")
        if pid is not None:
            if type(pid) is not int or not 0 < pid < self._pid_max:
                return None
            if pid > 256:  # `_own_int`, inline (as below)
                shared = values.get(pid)
                if shared is None:
                    shared = pid + 0
                    values[shared] = shared
                pid = shared
        comm = data["comm"]
        if type(comm) is not str:
            return None
        if (known := self._comms.get(comm)) is not None:
            comm = known
        elif (comm := self._string(_comm, comm)) is None:
            return None
        ppid = data.get("ppid")
        if ppid is None:
            ppid = 0 if pid == 1 else 1
        elif (type(ppid) is not int or not 0 <= ppid <= 256) and (
                ppid := self._int(ppid, 0, U32_MAX)) is None:
            return None
        cpu = data.get("cpu", 0)
        if (type(cpu) is not int or not 0 <= cpu <= 256) and (
                cpu := self._int(cpu, 0, U32_MAX)) is None:
            return None
        if cpu >= self._cpus:
            return None
        state = data.get("state")
        if state is None:
            state = TaskState.RUNNING
        elif type(state) is not str:
            return None
        elif (known_state := self._states.get(state)) is not None:
            state = known_state
        elif (state := self._string(task_state, state)) is None:
            return None
        if shape.rare:
            rare = self._rare(data)
            if rare is None:
                return None
            uid, gid, cgroup, nice, policy, forked_no_exec, superuser, age, count = rare
        else:
            uid = gid = nice = policy = 0
            cgroup = None
            forked_no_exec = superuser = False
            age = self._start_ns
            count = 1
        counters: Mapping[str, Any] = _NO_COUNTERS
        if shape.tables:
            read = self._counters(data, shape.tables)
            if read is None:
                return None
            if read:
                counters = FrozenCounters(read)
        threads: tuple[ThreadSpec, ...] = ()
        if count > 1:  # plain threads, as the readers make them: one spec for them all
            threads = (ThreadSpec(tid=None, age_ns=age),) * (count - 1)  # type: ignore[arg-type]
        if pid is not None:
            self._ctx.written_pids.append(pid)
        return _new_process_spec(pid, comm, ppid, uid, gid, cgroup, state, cpu, age, nice,
                                 policy, forked_no_exec, superuser, counters, threads)

    def _rare(self, data: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The less usual keys of a process: uid, gid, cgroup, nice, policy,
        forked_no_exec, superuser, the age (start or age) and the number of threads."""
        get = data.get
        uid = self._int(get("uid"), 0, U32_MAX, 0)
        gid = self._int(get("gid"), 0, U32_MAX, 0)
        nice = self._int(get("nice"), -20, 19, 0)
        if uid is None or gid is None or nice is None:
            return None
        cgroup = get("cgroup")
        if cgroup is not None and (cgroup := self._string(_cgroup, cgroup)) is None:
            return None
        policy = get("policy")
        if policy is None:
            policy = 0
        elif (policy := self._int(policy, 0, 255) if type(policy) is int
              else self._string(policy_number, policy)) is None:
            return None
        forked_no_exec = get("forked_no_exec", False)
        superuser = get("superuser", False)
        if type(forked_no_exec) is not bool or type(superuser) is not bool:
            return None
        age = self._age(data)
        count = self._int(get("threads"), 1, 100_000, 1)
        if age is None or count is None:
            return None
        return uid, gid, cgroup, nice, policy, forked_no_exec, superuser, age, count

    def _own(self, value: int) -> int:
        """`_own_int`, with the reading's shared values at hand."""
        if -5 <= value <= 256:
            return value
        shared: int | None = self._values.get(value)
        if shared is None:
            shared = value + 0
            self._values[shared] = shared
        return shared

    def _int(self, value: object, low: int, high: int, default: int | None = None
             ) -> int | None:
        """An integer in low..high, owned; `default` if absent (None); None if not so."""
        if value is None:
            return default
        if type(value) is not int or not low <= value <= high:
            return None
        return self._own(value)

    def _string(self, convert: Callable[[object], T], value: object) -> T | None:
        """`convert(value)` for a string, once per distinct string; None if `value` is not
        a string, or the conversion refuses it."""
        if type(value) is not str:
            return None
        cache = self._strings.get(convert)
        if cache is None:
            cache = self._strings[convert] = {}
        converted = cache.get(value, _MISSING)
        if converted is _MISSING:
            try:
                converted = cache[value] = convert(value)
            except _Bad:
                return None
        result: T = converted
        return result

    def _duration(self, value: object) -> int | None:
        if type(value) is int:
            return self._own(value) if 0 <= value <= DURATION_MAX else None
        return self._string(parse_duration, value)

    def _age(self, data: Mapping[str, Any]) -> int | None:
        """`_read_age` of a [[process]] (its default: started at boot)."""
        ref = self._start_ns
        if "start" in data:
            if "age" in data:
                return None
            start = self._duration(data["start"])
            if start is None or start > ref:
                return None
            return int(ref - start)
        if "age" in data:
            age = self._duration(data["age"])
            if age is None or age > ref:
                return None
            return age
        return ref

    def _counters(self, data: Mapping[str, Any], tables: tuple[str, ...]
                  ) -> dict[str, Any] | None:
        """`_counters_without_problems` of a process's counter `tables` (in the readers'
        order; mode "set")."""
        out: dict[str, Any] = {}
        for group in tables:
            if group != "delays":
                if not self._leaves(group, data[group], out):
                    return None
                continue
            delays = data["delays"]
            if type(delays) is not dict or not _DELAY_CATEGORY_SET.issuperset(delays):
                return None
            categories = delays if len(delays) < 2 else [
                cat for cat in accounting.DELAY_CATEGORIES if cat in delays]
            for cat in categories:
                table = delays[cat]
                if not self._leaves(cat, table, out):
                    return None
                if "max" in table:
                    low, high, total = (out.get(name) for name in _DELAY_ORDER[cat])
                    if (low is not None and low > high) or (total is not None and high > total):
                        return None
        return out

    def _leaves(self, group: str, table: object, out: dict[str, Any]) -> bool:
        """Read the counters of one table of `group` (a delay category or a table name)
        into `out`; False at anything not plainly right (an unknown key, a value its
        converter refuses, a counter given twice)."""
        if type(table) is not dict:
            return False
        plans = self._plans[group]
        shape = tuple(table)
        plan = plans.get(shape, _MISSING)
        if plan is _MISSING:
            known, leaves = _QUICK_LEAVES[group]
            plan = plans[shape] = None if not known.issuperset(shape) else tuple(
                _Leaf(key, counter, _INT_HIGH.get(kind, -1), self._leaf_cache[kind],
                      self._converters[kind])
                for key, counter, kind, _ in leaves if key in table)
        if plan is None:
            return False
        values = self._values
        raw = group == "counters"  # (only a raw table can give a counter twice)
        for key, counter, high, cache, convert in plan:
            value = table[key]
            if type(value) is int and 0 <= value <= high:
                if not -5 <= value <= 256:  # `_own_int`, inline: this is the hot loop
                    shared = values.get(value)
                    if shared is None:
                        shared = value + 0
                        values[shared] = shared
                    value = shared
            elif type(value) is str and (converted := cache.get(value)) is not None:
                value = converted
            else:
                try:
                    converted = convert(value)
                except _Bad:
                    return False
                if type(value) is str:
                    cache[value] = converted
                value = converted
            if raw and counter in out:
                return False
            out[counter] = value
        return True


class _Leaf(NamedTuple):
    """One counter of a table, as `_QuickProcess` reads it: its key, its counter, the
    largest integer it takes as it is (-1: none, it converts every value), and its
    converter with the strings converted so far."""

    key: str
    counter: str
    high: int
    cache: dict[str, Any]
    convert: Callable[[object], Any]


#: The integers counter values of each kind take as they are (the converter's own range).
_INT_HIGH: Mapping[str, int] = MappingProxyType({
    "count": U64_MAX, "bytes": U64_MAX, "kib": U64_MAX, "dev": U64_MAX,
    "duration": DURATION_MAX})
#: Per counter table `_QuickProcess` reads: its keys and its leaves, in the readers' order.
_QUICK_LEAVES: Mapping[str, tuple[frozenset[str], tuple[tuple[str, str, str, str], ...]]] = (
    MappingProxyType({
        **{cat: (_DELAY_KEY_SET, leaves) for cat, leaves in _DELAY_LEAVES.items()},
        **{group: (frozenset(keys), leaves) for group, keys, leaves in _GROUP_LEAVES},
        "counters": (frozenset(COUNTERS), _RAW_LEAVES),
    }))
_PROCESS_KEY_SET = frozenset(_PROCESS_KEYS)
#: The keys `_QuickProcess.read` leaves to `_rare`.
_RARE_PROCESS_KEYS = frozenset(("uid", "gid", "cgroup", "nice", "policy", "forked_no_exec",
                                "superuser", "start", "age", "threads"))


class _Shape(NamedTuple):
    """What `_QuickProcess.read` makes of a [[process]] table's keys: whether it reads such
    a table at all (every key known, a comm, no [[process.thread]] entries), whether any of
    the `_RARE_PROCESS_KEYS` is there, and the counter tables there, in the readers' order."""

    quick: bool
    rare: bool
    tables: tuple[str, ...]


def _process_shape(keys: tuple[str, ...]) -> _Shape:
    return _Shape(quick="comm" in keys and "thread" not in keys
                  and _PROCESS_KEY_SET.issuperset(keys),
                  rare=not _RARE_PROCESS_KEYS.isdisjoint(keys),
                  tables=tuple(table for table in _COUNTER_TABLES if table in keys))


def _read_timeline(ctx: _Context, top: _Reader) -> list[_Draft]:
    drafts = []
    for r in top.tables("timeline", ("at", *ACTIONS)):
        at = r.require("at", parse_duration)
        actions = [a for a in ACTIONS if r.has(a)]
        if len(actions) != 1:
            r.fail(None, "needs exactly one action (" + ", ".join(ACTIONS) + "), "
                   + (f"has {len(actions)}: {', '.join(actions)}" if actions else "has none"))
            continue
        action = actions[0]
        sub = r.table(action, _ACTION_KEYS[action])
        if sub is None:
            continue
        args = _read_action(ctx, sub, action, ref_ns=ctx.machine.start_ns + (at or 0))
        if args is not None and at is not None and r.ok:
            drafts.append(_Draft(at, action, args, sub.path))
        elif action == "spawn":
            ctx.drop(sub.data.get("pid"))
    return drafts


def _read_action(ctx: _Context, r: _Reader, action: str, *, ref_ns: int
                 ) -> dict[str, Any] | None:
    args: dict[str, Any]
    if action == "spawn":
        spec = _read_process(ctx, r, ref_ns=ref_ns, in_timeline=True)
        return {"process": spec} if spec is not None else None
    if action == "clone":
        thread = ThreadSpec(
            tid=r.get("tid", ctx.new_pid), comm=r.get("comm", _comm),
            cpu=r.get("cpu", ctx.cpu),
            state=r.get("state", task_state), superuser=r.get("superuser", _boolean, False),
            counters=_frozen(_read_counters(ctx, r, "set", thread=True)))
        args = {"tgid": r.require("tgid", ctx.pid), "thread": thread}
    elif action == "set":
        values: dict[str, Any] = {}
        for key, convert in (("comm", _comm), ("ppid", _u32), ("uid", _u32), ("gid", _u32),
                             ("cgroup", _cgroup), ("state", task_state), ("cpu", ctx.cpu),
                             ("nice", _ranged(-20, 19)), ("policy", policy_number),
                             ("forked_no_exec", _boolean), ("superuser", _boolean)):
            value = r.get(key, convert, _MISSING)
            if value is not _MISSING:
                values[key] = value
        values.update(_read_counters(ctx, r, "set"))
        if r.ok and not values:
            r.fail(None, "nothing to set: give fields or counters besides pid")
        args = {"pid": r.require("pid", ctx.pid), "values": values}
    elif action == "add":
        deltas = _read_counters(ctx, r, "add")
        if r.ok and not deltas:
            r.fail(None, "nothing to add: give counters besides pid")
        args = {"pid": r.require("pid", ctx.pid), "deltas": deltas}
    elif action == "move":
        args = {"pid": r.require("pid", ctx.pid), "cpu": r.require("cpu", ctx.cpu)}
    else:
        args = {"pid": r.require("pid", ctx.pid), **_read_exit(r)}
        if action == "exit":
            args["cpu"] = r.get("cpu", ctx.cpu)
        else:
            args["caller"] = r.get("caller", ctx.pid)
    return args if r.ok else None


def _read_exit(r: _Reader) -> dict[str, Any]:
    code = r.get("code", _ranged(-(2**31), 2**31 - 1), 0)
    signal = r.get("signal", signal_number)
    core = r.get("core", _boolean, False)
    if r.has("code") and r.has("signal"):
        r.fail("signal", "give an exit code or a signal, not both")
    if core and not r.has("signal"):
        r.fail("core", "only a death by signal dumps core: give signal too")
    return {"code": code, "signal": signal, "core": core}


# --- generators ------------------------------------------------------------------------------


def _read_generators(ctx: _Context, top: _Reader) -> list[_Draft]:
    drafts: list[_Draft] = []
    jobs = 0
    for g, r in enumerate(top.tables("generator", _GENERATOR_KEYS)):
        kind = r.require("kind", _string)
        if kind is not None and kind not in GENERATOR_KINDS:
            r.fail("kind", f"unknown generator kind {_show(kind)}; "
                   f"{_suggest(kind, GENERATOR_KINDS)}")
        plan = _read_short_jobs(ctx, r)
        if plan is None or not r.ok:
            continue
        jobs += plan.count
        if jobs > MAX_JOBS:
            r.fail("count", f"the generators make {jobs} jobs in all; at most {MAX_JOBS}")
            continue
        drafts += plan.expand(f"generator[{g}]")
    return drafts


@dataclass
class _ShortJobs:
    """A checked short_jobs generator, ready to expand."""

    seed: int
    count: int
    start_ns: int
    interval: Fraction
    random_arrival: bool
    window_ns: int
    lifetime: _Range
    cpus: list[int]
    threads: _Range
    comm: str
    identity: dict[str, Any]
    codes: list[int]
    signals: list[int]
    killed: float
    core: bool
    counters: dict[str, Any]

    def expand(self, where: str) -> list[_Draft]:
        rng = random.Random(self.seed)
        if self.random_arrival:
            arrivals = sorted(self.start_ns + rng.randint(0, self.window_ns)
                              for _ in range(self.count))
        else:
            arrivals = [self.start_ns + math.floor(i * self.interval) for i in range(self.count)]
        drafts = []
        for i, at in enumerate(arrivals):
            lifetime = rng.randint(*self.lifetime)
            threads = rng.randint(*self.threads)
            killed = rng.random() < self.killed
            code = rng.choice(self.codes)
            signal = rng.choice(self.signals)
            counters = {name: rng.randint(*value) if isinstance(value, _Range) else value
                        for name, value in sorted(self.counters.items())}
            spec = ProcessSpec(
                pid=None, comm=self.comm.format(n=i), cpu=self.cpus[i % len(self.cpus)],  # type: ignore[arg-type]
                counters=_frozen(counters),
                threads=(ThreadSpec(tid=None),) * (threads - 1),  # type: ignore[arg-type]
                **self.identity)
            ref = f"{where}#{i}"
            drafts.append(_Draft(at, "spawn", {"process": spec},
                                 f"{where} (job {i}, spawned at {format_duration(at)})", ref))
            exit_args = {"pid": _Ref(ref), "code": 0 if killed else code,
                         "signal": signal if killed else None, "core": self.core and killed,
                         "caller": None}
            drafts.append(_Draft(min(at + lifetime, DURATION_MAX), "exit_group", exit_args,
                                 f"{where} (job {i}, exiting)"))
        return drafts


def _read_short_jobs(ctx: _Context, r: _Reader) -> _ShortJobs | None:
    seed = r.get("seed", _integer, 0)
    count = r.get("count", _ranged(0, MAX_JOBS))
    rate = r.get("rate", _rate)
    start = r.get("start", parse_duration, 0)
    duration = r.get("duration", parse_duration, 0)
    arrival = r.get("arrival", _arrival, "even")
    if r.has("count") and r.has("rate"):
        r.fail("rate", "give count or rate, not both")
    elif not r.has("count") and not r.has("rate"):
        r.fail(None, "needs count (a number of jobs) or rate (jobs per second, with duration)")
    elif r.has("rate") and not r.has("duration"):
        r.fail("duration", "rate needs a duration to run over")
    interval = Fraction(0)
    if rate is not None and duration is not None:
        count = math.floor(rate * Fraction(duration, NSEC_PER_SEC))
        if count > MAX_JOBS:
            r.fail("rate", f"{rate} per second over {format_duration(duration)} makes {count} "
                   f"jobs; at most {MAX_JOBS}")
        interval = NSEC_PER_SEC / rate
    elif count:
        interval = Fraction(duration, count)
    lifetime = r.get("lifetime", _range_of(parse_duration), 10_000_000)
    threads = r.get("threads", _range_of(_ranged(1, 1000)), 1)
    cpus = r.get("cpus", _cpulist(ctx.machine.cpus), list(range(ctx.machine.cpus)))
    comm = r.get("comm", _comm_template, "job{n}")
    identity = {
        "uid": r.get("uid", _u32, 0), "gid": r.get("gid", _u32, 0),
        "ppid": r.get("ppid", _u32, 1), "cgroup": r.get("cgroup", _cgroup),
        "nice": r.get("nice", _ranged(-20, 19), 0), "policy": r.get("policy", policy_number, 0),
        "state": r.get("state", task_state, TaskState.RUNNING),
    }
    codes = r.get("code", _one_or_list(_ranged(-(2**31), 2**31 - 1)), [0])
    signals = r.get("signal", _one_or_list(signal_number), [_SIGNALS["SIGKILL"]])
    killed = r.get("killed", _share, 1.0 if r.has("signal") else 0.0)
    core = r.get("core", _boolean, False)
    counters = _read_counters(ctx, r, "range")
    if not r.ok or count is None:
        return None
    if comm is not None and count:
        _check_rendered_comm(r, comm, count)
    if not r.ok:
        return None
    return _ShortJobs(
        seed=seed, count=count, start_ns=start, interval=interval,
        random_arrival=arrival == "random", window_ns=duration,
        lifetime=lifetime if isinstance(lifetime, _Range) else _Range(lifetime, lifetime),
        cpus=cpus, threads=threads if isinstance(threads, _Range) else _Range(threads, threads),
        comm=comm, identity=identity, codes=codes, signals=signals, killed=killed, core=core,
        counters=counters)


def _rate(value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"expected a number of jobs per second, got {_toml_type(value)} "
                   f"{_show(value)}")
    if not math.isfinite(value) or not 0 < value <= 1e9:
        raise _Bad(f"rate {value} must be above 0 and at most 1e9 per second")
    return Fraction(repr(value))  # the decimal as written: 0.3 is 3/10, not a binary fraction


def _arrival(value: object) -> str:
    name = _string(value)
    if name not in ("even", "random"):
        raise _Bad(f"arrival must be \"even\" or \"random\", not {_show(name)}")
    return name


def _share(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"expected a share between 0.0 and 1.0, got {_toml_type(value)} "
                   f"{_show(value)}")
    if not 0 <= value <= 1:
        raise _Bad(f"{value} is not a share between 0.0 and 1.0")
    return float(value)


def _one_or_list(convert: Callable[[object], int]) -> Callable[[object], list[int]]:
    def many(value: object) -> list[int]:
        if isinstance(value, list):
            if not value:
                raise _Bad("an empty list gives nothing to pick from")
            return [convert(v) for v in value]
        return [convert(value)]
    return many


def _cpulist(nr_cpus: int) -> Callable[[object], list[int]]:
    def convert(value: object) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        text = _string(value)
        if not text.strip():
            raise _Bad(f"cpulist {_show(text)} names no CPU")
        try:
            cpus = parse_cpulist(text.encode(), nr_cpus)
        except WireError as exc:
            detail = re.sub(r"^cpulist b?(['\"]).*?\1 ", "", exc.detail)
            raise _Bad(f"bad cpulist {_show(text)}: {detail}") from None
        if not cpus:
            raise _Bad(f"cpulist {_show(text)} names no CPU")
        return sorted(cpus)
    return convert


def _comm_template(value: object) -> str:
    text = _string(value)
    try:
        text.format(n=0)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise _Bad(f"{_show(text)}: only {{n}} (the job's index) may appear in braces; write "
                   f"{{{{ and }}}} for literal braces ({exc})") from None
    return text


def _check_rendered_comm(r: _Reader, template: str, count: int) -> None:
    for n in {0, count - 1}:
        try:
            _comm(template.format(n=n))
        except _Bad as exc:
            r.fail("comm", f"for job {n}: {exc}")
            return


# --- checking by playing ---------------------------------------------------------------------


def _simulate(problems: _Problems, machine: Machine, cgroups: Sequence[str],
              processes: _Processes, drafts: Sequence[_Draft],
              dropped: set[int]
              ) -> tuple[list[ProcessSpec], list[Event], ProcessTable | None]:
    """Play the scenario on a private table: automatic pids become explicit, and every
    reference is checked against the tasks alive at its moment. Problems go to `problems`;
    entries that fail are left out (and what refers to them is not reported again).

    Also returns, with a virtual clock and no problem, the table at the scenario's start:
    what `build_table` would build (the private table itself when there is no timeline to
    play on it, a copy made before playing otherwise)."""
    clock = VirtualClock(0, machine.boot_wall_seconds)
    table = ProcessTable(clock, machine.profile, machine.cpus, pid_max=machine.pid_max,
                         next_pid=machine.next_pid)
    for path in cgroups:
        table.add_cgroup(path)
    resolved, failed = _create(table, clock, machine.start_ns, processes.specs, problems,
                               processes.where)
    start: ProcessTable | None = None
    if machine.clock == "virtual" and not problems.found:
        start = table.copy() if drafts else table
        # build_table creates the tasks with their pids explicit, which leaves the
        # allocation cursor where it starts
        start.reset_pid_cursor(machine.next_pid)
    failed |= dropped
    refs: dict[str, int] = {}
    history: dict[int, str] = {}
    timeline: list[Event] = []
    for draft in sorted(drafts, key=lambda d: d.at_ns):
        clock.advance_ns(machine.start_ns + draft.at_ns - clock.monotonic_ns())
        args = dict(draft.args)
        unresolved = False
        for key in ("pid", "tgid"):
            if isinstance(args.get(key), _Ref):
                if args[key].key not in refs:
                    unresolved = True
                    break
                args[key] = refs[args[key].key]
        if unresolved or any(args.get(k) in failed for k in ("pid", "tgid") if k in args):
            continue
        now = format_duration(draft.at_ns)
        problem = _check_references(table, draft.action, args, history, now)
        if problem is not None:
            key, text = problem
            problems.add(f"{draft.where}.{key}" if key else draft.where, text)
            failed.update(_defined_pids(draft.action, args))
            continue
        try:
            concrete, reports = _run(table, draft.action, args)
        except (ValueError, LookupError, OSError) as exc:
            problems.add(draft.where, f"at {now}: {exc}")
            failed.update(_defined_pids(draft.action, args))
            continue
        if draft.ref is not None:
            refs[draft.ref] = concrete["process"].pid
        for report in reports:
            history[report.tid] = f"it exited at {now}, {draft.where}"
        timeline.append(Event(draft.at_ns, draft.action, concrete))
    if problems.found:
        start = None
    return resolved, timeline, start


def _defined_pids(action: str, args: Mapping[str, Any]) -> set[int]:
    if action == "spawn":
        return {t for t in args["process"].tids if t is not None}
    if action == "clone" and args["thread"].tid is not None:
        return {args["thread"].tid}
    return set()


def _taken_by(table: ProcessTable, pid: int) -> str | None:
    if pid in table:
        return f'"{table.get(pid).comm.decode(errors="replace")}"'
    try:
        table.group(pid)
    except NoSuchTask:
        return None
    return "a zombie leader waiting for its threads"


def _missing(table: ProcessTable, pid: int, history: Mapping[int, str], now: str) -> str:
    try:
        group = table.group(pid)
    except NoSuchTask:
        group = None
    if group is not None and pid not in table:
        return (f"task {pid} has exited (it is a zombie leader waiting for its threads "
                f"{', '.join(map(str, group.tids))})")
    if pid in history:
        return f"task {pid} is gone at {now}: {history[pid]}"
    return (f"no task {pid} exists at {now}: no [[process]] and no earlier spawn or clone "
            "defines it")


def _check_references(table: ProcessTable, action: str, args: Mapping[str, Any],
                      history: Mapping[int, str], now: str) -> tuple[str, str] | None:
    """The first reference of an action that does not hold at this moment: (key, problem)."""
    if action == "spawn":
        spec: ProcessSpec = args["process"]
        for j, tid in enumerate(spec.tids):
            if tid is not None and (who := _taken_by(table, tid)) is not None:
                return ("pid" if j == 0 else f"thread[{j - 1}].tid",
                        f"pid {tid} is in use at {now} by {who}")
        return None
    if action == "clone":
        tgid = args["tgid"]
        if tgid not in table:
            return "tgid", _missing(table, tgid, history, now)
        if table.get(tgid).tgid != tgid:
            return "tgid", (f"task {tgid} is a thread of process {table.get(tgid).tgid}: clone "
                            "takes the process's pid")
        tid = args["thread"].tid
        if tid is not None and (who := _taken_by(table, tid)) is not None:
            return "tid", f"pid {tid} is in use at {now} by {who}"
        return None
    pid = args["pid"]
    if action == "exit_group":
        try:
            group = table.group(pid)
        except NoSuchTask:
            group = None
        if group is None:
            if pid in table:
                return "pid", (f"task {pid} is a thread of process {table.get(pid).tgid}: "
                               "exit_group takes the process's pid")
            return "pid", _missing(table, pid, history, now)
        caller = args.get("caller")
        if caller is not None and caller not in group.tids:
            return "caller", f"task {caller} is not a live thread of process {pid} at {now}"
        return None
    if pid not in table:
        return "pid", _missing(table, pid, history, now)
    return None


def _create(table: ProcessTable, clock: VirtualClock, base_ns: int,
            specs: Sequence[ProcessSpec], problems: _Problems | None = None,
            where: Callable[[int], str] | None = None) -> tuple[list[ProcessSpec], set[int]]:
    """Create the scenario's processes on `table`, each task at its start time: the clock is
    moved from 0 through every start (oldest first) to `base_ns`, the scenario's start, so
    that threads too start when they should. Returns the specs with every pid filled in, and
    the pids of the processes that could not be created (with `problems` only, under the
    path `where` gives for a spec's position)."""
    # The steps, each a leader (its process's index) or a thread (~ its index in `threads`),
    # in file order (a leader, then its threads), with their start times; made in the order
    # of their starts (a stable sort: file order among equal starts).
    steps: list[int] = []
    starts: list[int] = []
    threads: list[tuple[int, int]] = []  # (process index, thread index)
    for i, spec in enumerate(specs):
        steps.append(i)
        start = base_ns - spec.age_ns
        starts.append(start if start > 0 else 0)
        for j, thread in enumerate(spec.threads):
            steps.append(~len(threads))
            threads.append((i, j))
            start = base_ns - thread.age_ns
            starts.append(start if start > 0 else 0)
    leaders: dict[int, int] = {}
    tids: dict[int, list[int | None]] = {}  # process index: its threads' tids, once made
    failed: set[int] = set()
    comms: dict[str, bytes] = {}
    now = clock.monotonic_ns()
    for k in sorted(range(len(steps)), key=starts.__getitem__):
        start, step = starts[k], steps[k]
        if start > now:
            clock.advance_ns(start - now)
            now = start
        i, j = (step, -1) if step >= 0 else threads[~step]
        spec = specs[i]
        if j >= 0 and i not in leaders:
            continue  # its process could not be created
        try:
            if j < 0:
                leaders[i] = _spawn_leader(table, spec, start, comms)
                if spec.threads:
                    tids[i] = [None] * len(spec.threads)
            else:
                tids[i][j] = _clone(table, leaders[i], spec.threads[j], comms)
        except (ValueError, LookupError, OSError) as exc:
            if problems is None or where is None:
                raise
            path = where(i)
            problems.add(path if j < 0 else f"{path}.thread[{j}]", _creation_problem(exc))
            failed.update(t for t in spec.tids if t is not None)
            leaders.pop(i, None)
    clock.advance_ns(max(0, base_ns - clock.monotonic_ns()))
    resolved = []
    for i, spec in enumerate(specs):
        pid = leaders.get(i)
        if pid is None:
            continue
        if not spec.threads:  # (`_with_tids`, without the call)
            resolved.append(spec if pid == spec.pid else spec._with_tids(pid, ()))
            continue
        made = tids.get(i, ())
        if len(made) == len(spec.threads) and None not in made:
            resolved.append(spec._with_tids(pid, made))  # type: ignore[arg-type]
    return resolved, failed


def _creation_problem(exc: Exception) -> str:
    text = str(exc)
    if "is in use" in text:
        return (f"{text}: an earlier process took it automatically; give that one a pid, or "
                "raise [machine] next_pid")
    return text


# --- carrying a scenario out -----------------------------------------------------------------


def build_table(scenario: Scenario) -> ProcessTable:
    """A fresh process table at the scenario's start: cgroups declared, processes and threads
    created with their counters, the clock at the start (a VirtualClock at machine.start_ns,
    or the RealClock, whose "now" is then the scenario's start)."""
    machine = scenario.machine
    if machine.clock != "real":
        try:  # the first build takes the table the check built: the same, built once
            return scenario._start_table.pop()
        except IndexError:
            pass
    real = RealClock() if machine.clock == "real" else None
    base = real.monotonic_ns() if real is not None else machine.start_ns
    clock = VirtualClock(0, machine.boot_wall_seconds)
    table = ProcessTable(clock, machine.profile, machine.cpus, pid_max=machine.pid_max,
                         next_pid=machine.next_pid)
    for path in scenario.cgroups:
        table.add_cgroup(path)
    with _collector_paused():
        _create(table, clock, base, scenario.processes)
    if real is not None:
        table.clock = real
    return table


def apply_event(table: ProcessTable, event: Event) -> list[ExitReport]:
    """Carry out one timeline action on `table` at the table's current time (the caller moves
    a virtual clock to the event's time first, and broadcasts the reports). On the table
    `build_table` made, with the events applied in order, this cannot fail; if live control
    has changed the table, the table's errors (NoSuchTask, ValueError) come through."""
    return _run(table, event.action, event.args)[1]


def play(table: ProcessTable, scenario: Scenario) -> Iterator[tuple[Event, list[ExitReport]]]:
    """Apply the whole timeline on a table with a virtual clock, moving the clock to each
    event's time first; yields each event with its exit reports (tests, batch runs)."""
    clock = table.clock
    if not isinstance(clock, VirtualClock):
        raise ValueError("play needs a table with a virtual clock")
    for event in scenario.timeline:
        clock.advance_ns(max(0, scenario.clock_ns(event) - clock.monotonic_ns()))
        yield event, apply_event(table, event)


def _run(table: ProcessTable, action: str, args: Mapping[str, Any]
         ) -> tuple[dict[str, Any], list[ExitReport]]:
    """Apply one action; returns its arguments with every pid explicit, and the reports."""
    if action == "spawn":
        spec: ProcessSpec = args["process"]
        now = table.clock.monotonic_ns()
        pid = _spawn_leader(table, spec, max(0, now - spec.age_ns))
        tids = [_clone(table, pid, t) for t in spec.threads]
        return {"process": spec._with_tids(pid, tids)}, []
    if action == "clone":
        thread: ThreadSpec = args["thread"]
        tid = _clone(table, args["tgid"], thread)
        return {"tgid": args["tgid"], "thread": thread._with_tid(tid)}, []
    if action == "set":
        values = args["values"]
        if values.get("cgroup") is not None:
            table.add_cgroup(values["cgroup"])
        table.set(args["pid"], **values)
        return dict(args), []
    if action == "add":
        table.add(args["pid"], **args["deltas"])
        return dict(args), []
    if action == "move":
        table.move(args["pid"], args["cpu"])
        return dict(args), []
    if action == "exit":
        return dict(args), [table.exit_task(args["pid"], code=args["code"],
                                            signal=args["signal"], core=args["core"],
                                            cpu=args["cpu"])]
    if action == "exit_group":
        return dict(args), table.exit_group(args["pid"], code=args["code"],
                                            signal=args["signal"], core=args["core"],
                                            caller=args["caller"])
    raise ValueError(f"unknown timeline action {action!r}; valid: {', '.join(ACTIONS)}")


def _spawn_leader(table: ProcessTable, spec: ProcessSpec, start_ns: int,
                  comms: dict[str, bytes] | None = None) -> int:
    """The process's leader; `comms` shares the encoded names (a task keeps its comm as
    bytes) between the processes created together."""
    if spec.cgroup is not None:
        table.add_cgroup(spec.cgroup)
    comm: str | bytes | None = comms.get(spec.comm) if comms is not None else None
    if comm is None:
        comm = _encoded(spec.comm, comms)
    leader = table.spawn(
        pid=spec.pid, comm=comm, ppid=spec.ppid, uid=spec.uid, gid=spec.gid, cpu=spec.cpu,
        cgroup=spec.cgroup, nice=spec.nice, policy=spec.policy, state=spec.state,
        forked_no_exec=spec.forked_no_exec, superuser=spec.superuser,
        counters=spec.counters, start_ns=start_ns)
    return leader.tid


def _encoded(comm: str, comms: dict[str, bytes] | None) -> str | bytes:
    """`comm` as the table would encode it, shared through `comms`."""
    if comms is None:
        return comm
    encoded = comms.get(comm)
    if encoded is None:
        try:
            encoded = comms[comm] = comm.encode()
        except UnicodeEncodeError:
            return comm  # the table says what is wrong with it, when it should
    return encoded


def _clone(table: ProcessTable, tgid: int, thread: ThreadSpec,
           comms: dict[str, bytes] | None = None) -> int:
    """A thread of `tgid`, now, with the leader's mm counters under its own."""
    counters: dict[str, Any] = {}
    if tgid in table:
        held = table.get(tgid).counter_map
        counters = {name: held[name] for name in _MM_COUNTERS if held.get(name)}
    if thread.counters:
        counters.update(thread.counters)
    task = table.clone_thread(tgid, pid=thread.tid, cpu=thread.cpu, counters=counters)
    extra: dict[str, Any] = {}
    if thread.comm is not None:
        extra["comm"] = _encoded(thread.comm, comms)
    if thread.state is not None:
        extra["state"] = thread.state
    if thread.superuser:
        extra["superuser"] = True
    if extra:
        table.set(task.tid, **extra)
    return task.tid
