"""Carrying a scenario out on a process table: its machine at the start, then its timeline.

What lives here: `build_table` (a fresh `ProcessTable` at the scenario's start), `apply_event`
(one timeline action), `play` (the whole timeline on a virtual clock), and `create`, which
both `build_table` and the check (`check`) use to make the processes alive at the start, each
task at its own start time. On a checked scenario none of them can fail, unless live control
has changed the table in between. What must not: reading or checking files (`reader`,
`check`), and the table's own rules (`model.tasks`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..model.clock import RealClock, VirtualClock
from ..model.recorded import RecordedExit
from ..model.table import ProcessTable, SpawnRefused, SpawnRow
from ..model.tasks import ExitReport
from .problems import Problems
from .schema import ACTIONS, MM_COUNTERS
from .specs import Event, ProcessSpec, Scenario, ThreadSpec


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a scenario is read or built: that makes
    millions of objects (the document, the specs, the tasks) and no garbage cycles, and the
    collections they would trigger cost a tenth of the time."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def new_table(scenario_machine: Any, clock: VirtualClock) -> ProcessTable:
    """An empty table for `scenario_machine` (a `Machine`) on `clock`."""
    return ProcessTable(clock, scenario_machine.profile, scenario_machine.cpus,
                        pid_max=scenario_machine.pid_max, next_pid=scenario_machine.next_pid)


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
    table = new_table(machine, clock)
    for path in scenario.cgroups:
        table.add_cgroup(path)
    with collector_paused():
        create(table, clock, base, scenario.processes)
    if real is not None:
        table.clock = real
    return table


def apply_event(table: ProcessTable, event: Event) -> list[ExitReport | RecordedExit]:
    """Carry out one timeline action on `table` at the table's current time (the caller moves
    a virtual clock to the event's time first, and broadcasts the reports). On the table
    `build_table` made, with the events applied in order, this cannot fail; if live control
    has changed the table, the table's errors (NoSuchTask, ValueError) come through."""
    return run_action(table, event.action, event.args)[1]


def play(table: ProcessTable, scenario: Scenario
         ) -> Iterator[tuple[Event, list[ExitReport | RecordedExit]]]:
    """Apply the whole timeline on a table with a virtual clock, moving the clock to each
    event's time first; yields each event with its exit reports (tests, batch runs)."""
    clock = table.clock
    if not isinstance(clock, VirtualClock):
        raise ValueError("play needs a table with a virtual clock")
    for event in scenario.timeline:
        clock.advance_ns(max(0, scenario.clock_ns(event) - clock.monotonic_ns()))
        yield event, apply_event(table, event)


def run_action(table: ProcessTable, action: str, args: Mapping[str, Any]
               ) -> tuple[dict[str, Any], list[ExitReport | RecordedExit]]:
    """Apply one action; returns its arguments with every pid explicit, and the reports."""
    if action == "spawn":
        spec: ProcessSpec = args["process"]
        now = table.clock.monotonic_ns()
        pid = spawn_leader(table, spec, max(0, now - spec.age_ns))
        tids = [clone(table, pid, t) for t in spec.threads]
        _set_rates(table, pid, spec, tids)
        return {"process": spec.with_tids(pid, tids)}, []
    if action == "clone":
        thread: ThreadSpec = args["thread"]
        tid = clone(table, args["tgid"], thread)
        if thread.rates:
            table.set_rates(tid, thread.rates)
        return {"tgid": args["tgid"], "thread": thread.with_tid(tid)}, []
    if action == "set":
        values = args["values"]
        if values.get("cgroup") is not None:
            table.add_cgroup(values["cgroup"])
        if values:
            table.set(args["pid"], **values)
        if args.get("rates"):
            table.set_rates(args["pid"], args["rates"])
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
        return dict(args), [*table.exit_group(args["pid"], code=args["code"],
                                              signal=args["signal"], core=args["core"],
                                              caller=args["caller"],
                                              leader_last=args.get("leader_last", False))]
    if action == "recorded_exit":
        tid = args["tid"]
        if tid in table:  # a task of the snapshot: it leaves the table; its record is the
            table.exit_task(tid, cpu=args["cpu"])  # recorded one, not the model's
        return dict(args), [RecordedExit(args["cpu"], tid, args["message"])]
    raise ValueError(f"unknown timeline action {action!r}; valid: {', '.join(ACTIONS)}")


def create(table: ProcessTable, clock: VirtualClock, base_ns: int,
           specs: Sequence[ProcessSpec], problems: Problems | None = None,
           where: Callable[[int], str] | None = None) -> tuple[list[ProcessSpec], set[int]]:
    """Create the scenario's processes on `table`, each task at its start time: the clock is
    moved from 0 through every start (oldest first) to `base_ns`, the scenario's start, so
    that threads too start when they should. Returns the specs with every pid filled in, and
    the pids of the processes that could not be created (with `problems` only, under the
    path `where` gives for a spec's position).

    Leaders that start one after the other, with no thread to clone between them, are made
    in one `ProcessTable.spawn_many`."""
    # The steps, each a leader (its process's index) or a thread (~ its index in `threads`),
    # in file order (a leader, then its threads), with their start times; made in the order
    # of their starts (a stable sort: file order among equal starts).
    steps: list[int] = []
    starts: list[int] = []
    threads: list[tuple[int, int]] = []  # (process index, thread index)
    cgroups: set[str] = set()
    for i, spec in enumerate(specs):
        steps.append(i)
        start = base_ns - spec.age_ns
        starts.append(start if start > 0 else 0)
        if spec.cgroup is not None and spec.cgroup not in cgroups:
            cgroups.add(spec.cgroup)
            table.add_cgroup(spec.cgroup)
        for j, thread in enumerate(spec.threads):
            steps.append(~len(threads))
            threads.append((i, j))
            start = base_ns - thread.age_ns
            starts.append(start if start > 0 else 0)
    leaders: dict[int, int] = {}
    tids: dict[int, list[int | None]] = {}  # process index: its threads' tids, once made
    failed: set[int] = set()
    comms: dict[str, bytes] = {}
    batch: list[int] = []  # leaders waiting for `spawn_many`, by process index

    def fail(i: int, j: int, exc: Exception) -> None:
        if problems is None or where is None:
            raise exc
        path = where(i)
        problems.add(path if j < 0 else f"{path}.thread[{j}]", _creation_problem(exc))
        failed.update(t for t in specs[i].tids if t is not None)
        leaders.pop(i, None)

    def spawn_batch() -> None:
        rows = [_row(specs[i], starts_of[i], comms) for i in batch]
        done = 0
        while done < len(rows):
            try:
                made = table.spawn_many(rows[done:])
            except SpawnRefused as refused:
                for k, task in enumerate(refused.made):
                    leaders[batch[done + k]] = task.tid
                fail(batch[done + refused.index], -1, refused.reason)
                done += refused.index + 1
                continue
            for k, task in enumerate(made):
                leaders[batch[done + k]] = task.tid
            done = len(rows)
        batch.clear()

    starts_of: dict[int, int] = {}
    now = clock.monotonic_ns()
    for k in sorted(range(len(steps)), key=starts.__getitem__):
        start, step = starts[k], steps[k]
        if start > now:
            clock.advance_ns(start - now)
            now = start
        if step >= 0:
            batch.append(step)
            starts_of[step] = start
            continue
        if batch:
            spawn_batch()
        i, j = threads[~step]
        if i not in leaders:
            continue  # its process could not be created
        spec = specs[i]
        if i not in tids:  # (its first thread made: not always thread[0], which may have
            tids[i] = [None] * len(spec.threads)  # started after a later entry)
        try:
            tids[i][j] = clone(table, leaders[i], spec.threads[j], comms)
        except (ValueError, LookupError, OSError) as exc:
            fail(i, j, exc)
    if batch:
        spawn_batch()
    clock.advance_ns(max(0, base_ns - clock.monotonic_ns()))
    for i, spec in enumerate(specs):  # counters move from the scenario's start on
        if i in leaders and (spec.rates or any(thread.rates for thread in spec.threads)):
            _set_rates(table, leaders[i], spec, tids.get(i, ()))
    resolved = []
    for i, spec in enumerate(specs):
        pid = leaders.get(i)
        if pid is None:
            continue
        if not spec.threads:
            resolved.append(spec if pid == spec.pid else spec._replace(pid=pid))
            continue
        made = tids.get(i, ())
        if len(made) == len(spec.threads) and None not in made:
            resolved.append(spec.with_tids(pid, made))  # type: ignore[arg-type]
    return resolved, failed


def _row(spec: ProcessSpec, start_ns: int, comms: dict[str, bytes]) -> SpawnRow:
    """What `ProcessTable.spawn_many` takes to make `spec`'s leader."""
    (pid, name, ppid, uid, gid, cgroup, state, cpu, _age, nice, policy, forked_no_exec,
     superuser, counters, _threads, proc, _rates) = spec
    comm = comms.get(name)
    return (pid, _encoded(name, comms) if comm is None else comm, ppid, uid, gid, cpu, cgroup,
            nice, policy, state, forked_no_exec, superuser, counters, start_ns, proc)


def _set_rates(table: ProcessTable, pid: int, spec: ProcessSpec,
               tids: Sequence[int | None]) -> None:
    """The moving counters of a process just made (its leader's, its threads')."""
    if spec.rates:
        table.set_rates(pid, spec.rates)
    for thread, tid in zip(spec.threads, tids, strict=False):
        if thread.rates and tid is not None:
            table.set_rates(tid, thread.rates)


def _creation_problem(exc: Exception) -> str:
    text = str(exc)
    if "is in use" in text:
        return (f"{text}: an earlier process took it automatically; give that one a pid, or "
                "raise [machine] next_pid")
    return text


def spawn_leader(table: ProcessTable, spec: ProcessSpec, start_ns: int,
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
        counters=spec.counters, start_ns=start_ns, proc=spec.proc)
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


def clone(table: ProcessTable, tgid: int, thread: ThreadSpec,
          comms: dict[str, bytes] | None = None) -> int:
    """A thread of `tgid`, now, with the leader's mm counters under its own."""
    counters: dict[str, Any] = {}
    if tgid in table:
        held = table.get(tgid).counter_map
        counters = {name: held[name] for name in MM_COUNTERS if held.get(name)}
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
