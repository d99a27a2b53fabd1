"""A `Recording` as a scenario document: what `tsemu record` writes, `tsemu serve` replays.

What lives here: `to_document`, the one mapping from what the kernel said to the scenario
format's keys (FORMAT.md), and `dump`, its JSON text. What must not: talking to the kernel
(`host`), checking (the scenario reader checks a recording as any file: `tsemu scenario
check`).

The mapping, decided once:

- `[machine]`: the profile nearest the recorded release (`profiles.nearest`, as `serve
  --kernel host` picks it), the recorded TASKSTATS family id, the possible CPUs, NR_CPUS,
  pid_max, MemTotal; on the virtual clock, boot_time and start place the scenario where the
  recording began, so ages and ac_btime come out as recorded;
- each process and thread of the snapshot: identity from its GET reply (ac_comm, ac_uid,
  ac_gid, ac_ppid, ac_nice, ac_sched, ac_flag's AFORK and ASU) and from /proc (state, CPU,
  cmdline, kernel thread), its age from ac_etime, and every counter under `counters` by its
  kernel name in the kernel's unit (ac_utime's µs as `utime_ns`, ...);
- counters that move: a `set` event at each sample's time with the counters that changed
  since the task's previous record. Sampled values rather than rates: a GET at a sample's
  instant answers the recorded value itself, not a rate's approximation of it, and counters
  that move in bursts (a compile's I/O) replay as bursts;
- each exit event: a `recorded_exit` at its time, on its CPU, with its message's bytes: the
  replayed event is the recorded one but for seq and port id (`model.recorded`). Samples of
  a task after its exit are left out (the replay has no such task then).

What the model derives rather than keeps (its accounting rules, `model.accounting`), a replay
answers its own way: cpu_run_real_total and cpu_scaled_run_real_total (utime + stime there,
sum_exec_runtime on a real kernel), the clock fields between samples. Exit events carry the
recorded bytes and are exact.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import Any

from tsemu.wire.constants import AcFlag
from tsemu.wire.taskstats_struct import DELAY_CATEGORIES, layout_for

from ..model.profiles import nearest
from ..model.tasks import COUNTERS, MM_COUNTERS
from ..scenario.writer import dump_document
from .anonymize import Anonymizer
from .host import Recording

#: counter name -> (struct field, factor): the struct field times the factor is the counter
_TIMES = {"utime_ns": ("ac_utime", 1000), "stime_ns": ("ac_stime", 1000),
          "utimescaled_ns": ("ac_utimescaled", 1000), "stimescaled_ns": ("ac_stimescaled", 1000)}
_STAMPS = tuple(f"{cat}_delay_max_ts" for cat in DELAY_CATEGORIES)
#: the counters kept by their struct field's own name and unit
_SAME = tuple(c for c in COUNTERS if c not in _TIMES and c not in _STAMPS
              and c not in ("rss", "vm"))


def counters_of(values: Mapping[str, Any], *, thread: bool) -> dict[str, Any]:
    """The scenario counters (kernel names, kernel units) of one record's field values. A
    thread leaves out what belongs to the process's mm (the leader gives it); a delay
    category whose max or min does not fit min <= max <= total (a record taken between two
    updates) gives its count and total only, which the reader then accepts."""
    out: dict[str, Any] = {}
    for name in _SAME:
        if thread and name in MM_COUNTERS:
            continue
        value = values.get(name)
        if value:
            out[name] = value
    for name, (source, factor) in _TIMES.items():
        if values.get(source):
            out[name] = values[source] * factor
    for name in _STAMPS:
        stamp = values.get(name)
        if isinstance(stamp, Mapping) and (stamp.get("tv_sec") or stamp.get("tv_nsec")):
            out[name] = [stamp["tv_sec"], stamp["tv_nsec"]]
    for cat in DELAY_CATEGORIES:
        low, high = out.get(f"{cat}_delay_min", 0), out.get(f"{cat}_delay_max", 0)
        total = out.get(f"{cat}_delay_total", 0)
        if not low <= high <= total and (low or high):
            out.pop(f"{cat}_delay_min", None)
            out.pop(f"{cat}_delay_max", None)
    return out


def _age(values: Mapping[str, Any], at_ns: int, most: int) -> int:
    """How long before the recording began a task started: its ac_etime (µs, as of its GET,
    `at_ns` after the beginning) less the time since; at most `most` (boot, or a thread's
    leader's age) and at least 0."""
    return max(0, min(int(values["ac_etime"]) * 1000 - at_ns, most))


def _text(raw: bytes) -> str:
    return raw.decode(errors="replace")


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The counters of `new` that differ from `old`; one that fell back to zero is set to
    zero (a delay's max and min aside: those are left as they were, since setting one alone
    could break min <= max)."""
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    for name in old:
        if name not in new and not name.endswith(("_delay_max", "_delay_min", "_max_ts")):
            changed[name] = 0
    return changed


def to_document(rec: Recording, *, clock: str = "real",
                anonymizer: Anonymizer | None = None) -> dict[str, Any]:
    """The scenario document of a recording (see the module docstring)."""
    profile, _exact = nearest(rec.release)
    machine: dict[str, Any] = {
        "cpus": rec.cpus, "nr_cpus": max(rec.nr_cpus, rec.cpus), "kernel": profile.name,
        "family_id": rec.family.id, "clock": clock, "pid_max": rec.pid_max,
        "memory": f"{max(rec.memory_kib, 64 << 10)}KiB",
    }
    # The start places the scenario where the recording began: ages reach back from it to
    # the tasks' real starts (on the real clock too, where it only bounds the ages).
    machine["start"] = rec.start_since_boot_ns
    if clock == "virtual":
        boot = dt.datetime.fromtimestamp(rec.boot_wall_ns // 10**9, dt.UTC)
        machine["boot_time"] = boot.isoformat()
        machine["start"] = rec.start_since_boot_ns + rec.boot_wall_ns % 10**9
    anon = anonymizer
    processes: list[dict[str, Any]] = []
    state: dict[int, dict[str, Any]] = {}
    leaders: set[int] = set()
    for proc in rec.processes:
        leader = proc.tasks[0]
        values = layout_for(leader.stats).parse(leader.stats)
        comm = values["ac_comm"] or leader.comm
        flag = values["ac_flag"]
        nice = values["ac_nice"]
        entry: dict[str, Any] = {
            "pid": proc.tgid,
            "comm": _text(anon.comm(comm) if anon else comm),
            "ppid": proc.ppid,
            "uid": anon.uid(values["ac_uid"]) if anon else values["ac_uid"],
            "gid": anon.uid(values["ac_gid"]) if anon else values["ac_gid"],
            "state": leader.state, "cpu": leader.cpu % rec.cpus,
            "age": _age(values, leader.at_ns, rec.start_since_boot_ns),
            "nice": nice - 256 if nice >= 128 else nice, "policy": values["ac_sched"],
        }
        if flag & AcFlag.AFORK:
            entry["forked_no_exec"] = True
        if flag & AcFlag.ASU:
            entry["superuser"] = True
        if proc.kthread:
            entry["kthread"] = True
        elif proc.cmdline:
            args = anon.cmdline(proc.cmdline, comm) if anon else proc.cmdline
            entry["cmdline"] = [_text(a) for a in args]
        counters = counters_of(values, thread=False)
        if counters:
            entry["counters"] = counters
        state[proc.tgid] = counters
        leaders.add(proc.tgid)
        threads = []
        for task in proc.tasks[1:]:
            tvalues = layout_for(task.stats).parse(task.stats)
            tcomm = tvalues["ac_comm"] or task.comm
            thread: dict[str, Any] = {
                "tid": task.tid, "cpu": task.cpu % rec.cpus, "state": task.state,
                "age": _age(tvalues, task.at_ns, entry["age"]),
            }
            if tcomm != comm:
                thread["comm"] = _text(anon.comm(tcomm) if anon else tcomm)
            if tvalues["ac_flag"] & AcFlag.ASU:
                thread["superuser"] = True
            tcounters = counters_of(tvalues, thread=True)
            if tcounters:
                thread["counters"] = tcounters
            state[task.tid] = tcounters
            threads.append(thread)
        if threads:  # oldest first, so that file order is the order they started in
            entry["thread"] = sorted(threads, key=lambda t: -t["age"])
        processes.append(entry)
    exited_at: dict[int, int] = {}
    timeline: list[tuple[int, int, dict[str, Any]]] = []
    for heard in rec.exits:
        message = anon.message(heard.message) if anon else heard.message
        tid = _event_tid(message)
        if tid is not None:
            exited_at.setdefault(tid, heard.at_ns)
        timeline.append((heard.at_ns, 1, {
            "at": heard.at_ns, "recorded_exit": {
                "cpu": heard.cpu % rec.cpus,
                "message": base64.b64encode(message).decode()}}))
    for sample in rec.samples:
        if sample.tid not in state or exited_at.get(sample.tid, sample.at_ns + 1) <= sample.at_ns:
            continue
        values = layout_for(sample.stats).parse(sample.stats)
        counters = counters_of(values, thread=sample.tid not in leaders)
        changed = _changed(state[sample.tid], counters)
        state[sample.tid] = counters
        if changed:
            timeline.append((sample.at_ns, 0, {
                "at": sample.at_ns, "set": {"pid": sample.tid, "counters": changed}}))
    timeline.sort(key=lambda item: (item[0], item[1]))
    document: dict[str, Any] = {"machine": machine, "process": processes}
    if timeline:
        document["timeline"] = [entry for _at, _kind, entry in timeline]
    return document


def _event_tid(message: bytes) -> int | None:
    from tsemu.emulator.scenario.values import recorded_tid

    try:
        return recorded_tid(message)
    except Exception:
        return None


def dump(document: Mapping[str, Any]) -> str:
    """The document as JSON text (one timeline entry, process or thread list per line)."""
    return dump_document(document, "json")
