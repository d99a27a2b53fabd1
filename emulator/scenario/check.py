"""Checking a scenario by playing it: every pid a timeline entry names must be alive then.

What lives here: `simulate`, which plays what a reading made of a document (the processes at
the start, then the timeline's drafts in time order) on a private table with a virtual clock.
Automatic pids become explicit; each reference is checked against the tasks alive at its
moment, with the history of what exited to explain a miss; what cannot be carried out is a
problem of the entry that asked for it. The `Draft` and `Ref` the readers hand over are
defined here. What must not: reading values or tables (`reader`), the table's rules
(`model.tasks`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..model.clock import VirtualClock
from ..model.table import ProcessTable
from ..model.tasks import NoSuchTask
from .build import create, new_table, run_action
from .problems import Problems
from .specs import Event, Machine, ProcessSpec
from .values import format_duration


class Ref(NamedTuple):
    """A generated job's pid, known once the simulation has spawned it."""

    key: str


@dataclass(slots=True)
class Draft:
    """A timeline event being checked: pids may still be automatic (None) or `Ref`s."""

    at_ns: int
    action: str
    args: dict[str, Any]
    where: str
    ref: str | None = None


def simulate(problems: Problems, machine: Machine, cgroups: Sequence[str],
             specs: Sequence[ProcessSpec], where: Callable[[int], str],
             drafts: Sequence[Draft], dropped: set[int]
             ) -> tuple[list[ProcessSpec], list[Event], ProcessTable | None]:
    """Play the scenario on a private table: automatic pids become explicit, and every
    reference is checked against the tasks alive at its moment. Problems go to `problems`;
    entries that fail are left out (and what refers to them is not reported again).

    Also returns, with a virtual clock and no problem, the table at the scenario's start:
    what `build_table` would build (the private table itself when there is no timeline to
    play on it, a copy made before playing otherwise)."""
    clock = VirtualClock(0, machine.boot_wall_seconds)
    table = new_table(machine, clock)
    for path in cgroups:
        table.add_cgroup(path)
    resolved, failed = create(table, clock, machine.start_ns, specs, problems, where)
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
            if isinstance(args.get(key), Ref):
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
            concrete, reports = run_action(table, draft.action, args)
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
    if action == "recorded_exit":
        return None  # a recorded task need not be in the table: it may have lived unseen
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
