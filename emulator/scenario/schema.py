"""The scenario format's keys, as tables: which keys each table takes and how each counter is
spelled and written.

What lives here: the key lists of every kind of table (the machine, a cgroup, a process, a
thread, each timeline action, a generator, a distribution), and the counter tables: for every
counter of `model.tasks.COUNTERS`, its readable spelling (``delays.blkio.total``), the kind of
value it takes, and whether `add` and threads may give it. The reference (FORMAT.md) documents
the same keys in words. What must not: reading (`reader`), values (`values`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from ..model import accounting
from ..model.tasks import COUNTERS

TOP_KEYS = ("machine", "cgroup", "process", "timeline", "generator", "fault")
MACHINE_KEYS = ("cpus", "nr_cpus", "kernel", "family_id", "clock", "boot_time", "start", "next_pid",
                "pid_max", "mirror_host", "memory", "load")
CGROUP_KEYS = ("path",)
#: The counter tables, in the order they are read.
COUNTER_TABLES = ("delays", "times", "memory", "io", "faults", "switches", "exe", "counters")
#: What identifies a task besides its pid, and what `set` may change.
IDENTITY_KEYS = ("comm", "ppid", "uid", "gid", "cgroup", "state", "cpu", "nice", "policy",
                 "forked_no_exec", "superuser", "cmdline", "ioprio", "kthread", "rt_priority")
#: The identity keys only /proc shows (`model.tasks.ProcIdentity`).
PROC_KEYS = ("cmdline", "ioprio", "kthread", "rt_priority")
#: What makes a [[process]] table stand for many processes (a population).
POPULATION_KEYS = ("count", "seed", "cpus")
PROCESS_KEYS = ("pid", *IDENTITY_KEYS, "start", "age", "threads", "thread", *POPULATION_KEYS,
                *COUNTER_TABLES)
THREAD_KEYS = ("tid", "comm", "cpu", "state", "start", "age", "superuser", *COUNTER_TABLES)
#: The timeline's actions, in the order the reference lists them.
ACTIONS = ("spawn", "clone", "set", "add", "move", "exit", "exit_group", "recorded_exit")
TIMELINE_KEYS = ("at", *ACTIONS)
ACTION_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "spawn": tuple(k for k in PROCESS_KEYS if k not in POPULATION_KEYS),
    "clone": ("tgid", "tid", "comm", "cpu", "state", "superuser", *COUNTER_TABLES),
    "set": ("pid", *IDENTITY_KEYS, *COUNTER_TABLES),
    "add": ("pid", *COUNTER_TABLES),
    "move": ("pid", "cpu"),
    "exit": ("pid", "code", "signal", "core", "cpu"),
    "exit_group": ("pid", "code", "signal", "core", "caller", "leader_last"),
    "recorded_exit": ("cpu", "message"),
})
#: The generator kinds, and the keys of each.
GENERATOR_KIND_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "short_jobs": ("kind", "seed", "count", "rate", "start", "duration", "arrival", "lifetime",
                   "cpus", "threads", "comm", "uid", "gid", "ppid", "cgroup", "nice", "policy",
                   "state", "code", "signal", "killed", "core", *COUNTER_TABLES),
    "storm": ("kind", "rate", "count", "duration", "start", "cpus", "threads"),
})
GENERATOR_KINDS = tuple(GENERATOR_KIND_KEYS)
#: Every key some generator kind takes.
GENERATOR_KEYS = tuple(dict.fromkeys(k for keys in GENERATOR_KIND_KEYS.values() for k in keys))
#: The distributions a drawn value may follow, and the keys of each.
DISTRIBUTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "uniform": ("distribution", "min", "max"),
    "normal": ("distribution", "mean", "stddev", "min", "max"),
    "lognormal": ("distribution", "median", "sigma", "min", "max"),
    "choice": ("distribution", "values", "weights"),
})


# --- counters ----------------------------------------------------------------------------------

#: How a counter's value is written: "count" (an integer), "duration" (ns), "kib" and "bytes"
#: (sizes), "dev" (a device), "stamp" (a delay's max timestamp).
KINDS = ("count", "duration", "kib", "bytes", "dev", "stamp")


class Leaf(NamedTuple):
    """One key of a counter table: the counter it gives, how its value is written, and its
    full spelling (for "given twice" and the reference)."""

    counter: str
    kind: str
    spelled: str


#: A delay category's keys: key -> (counter template, kind).
_DELAY_FIELDS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "count": ("{}_count", "count"),
    "total": ("{}_delay_total", "duration"),
    "max": ("{}_delay_max", "duration"),
    "min": ("{}_delay_min", "duration"),
    "max_at": ("{}_delay_max_ts", "stamp"),
})
DELAY_KEYS = tuple(_DELAY_FIELDS)

#: The readable counter tables other than delays: table -> key -> (counter, kind).
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
        "rss": ("rss", "kib"), "vm": ("vm", "kib"),
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

#: Per delay category, its table's leaves by key.
DELAY_LEAVES: Mapping[str, Mapping[str, Leaf]] = MappingProxyType({
    cat: MappingProxyType({key: Leaf(template.format(cat), kind, f"delays.{cat}.{key}")
                           for key, (template, kind) in _DELAY_FIELDS.items()})
    for cat in accounting.DELAY_CATEGORIES})
#: The other readable tables' leaves by key.
GROUP_LEAVES: Mapping[str, Mapping[str, Leaf]] = MappingProxyType({
    group: MappingProxyType({key: Leaf(counter, kind, f"{group}.{key}")
                             for key, (counter, kind) in keys.items()})
    for group, keys in _GROUPS.items()})
#: Every counter's readable leaf.
READABLE: Mapping[str, Leaf] = MappingProxyType({
    leaf.counter: leaf
    for tables in (DELAY_LEAVES, GROUP_LEAVES) for leaves in tables.values()
    for leaf in leaves.values()})
assert set(READABLE) == set(COUNTERS), "every counter has a readable spelling"
#: The raw `counters` table's leaves: every counter by its own name.
RAW_LEAVES: Mapping[str, Leaf] = MappingProxyType({
    name: Leaf(name, READABLE[name].kind, f"counters.{name}") for name in COUNTERS})

#: What belongs to the process's mm: set on the process, every thread reports the leader's.
MM_COUNTERS = ("hiwater_rss", "hiwater_vm", "ac_exe_dev", "ac_exe_inode", "rss", "vm")
#: Values, not sums: `add` refuses them.
NOT_ADDABLE = frozenset(
    [c for c in COUNTERS if c.endswith(("_delay_max", "_delay_min", "_delay_max_ts"))]
    + ["ac_exe_dev", "ac_exe_inode"])
#: Per delay category, its (min, max, total) counters, which must be in that order.
DELAY_ORDER: Mapping[str, tuple[str, str, str]] = MappingProxyType({
    cat: (f"{cat}_delay_min", f"{cat}_delay_max", f"{cat}_delay_total")
    for cat in accounting.DELAY_CATEGORIES})
