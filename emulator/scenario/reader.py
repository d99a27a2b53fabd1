"""Reading a scenario document: the machine, cgroups, processes, populations and the timeline.

What lives here: `read_document`, which turns a parsed document (the same schema, from TOML or
JSON) into a `Reading`: checked values, every problem of the file collected (see FORMAT.md
for what each key means). Processes become `ProcessSpec`s, a population (a [[process]] with
``count``) one spec per process it stands for, timeline entries and generated jobs `Draft`s
for the check (`check.simulate`) to play. What must not: parsing text (`files`), playing
(`check`), carrying out (`build`).

One reading: every [[process]] table, plain or a population, a timeline spawn's table, goes
through `_read_process`; a population reads the same keys with converters that also accept
drawn values (`draws`), then draws one process at a time.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..model.families import FamilyTable
from ..model.profiles import PROFILES, profile
from ..model.tasks import PID_MAX_LIMIT, RESERVED_PIDS, U32_MAX, ProcIdentity
from .check import Draft
from .draws import choosable, drawable, highest, is_drawn, lowest, number
from .faults import FAULT_KEYS, read_fault
from .generators import read_generators
from .problems import Problems
from .schema import (
    ACTION_KEYS,
    ACTIONS,
    CGROUP_KEYS,
    IDENTITY_KEYS,
    MACHINE_KEYS,
    PROC_KEYS,
    PROCESS_KEYS,
    THREAD_KEYS,
    TIMELINE_KEYS,
    TOP_KEYS,
)
from .specs import Machine, ProcessSpec, StormPlan, ThreadSpec, frozen
from .tables import MISSING, Context, Keys, Table, cpulist, read_counters, split_rates
from .values import (
    DURATION_MAX,
    Bad,
    boolean,
    boot_seconds,
    cgroup_path,
    cmdline_args,
    comm_name,
    comm_template,
    format_duration,
    integer,
    ioprio_value,
    nice_value,
    parse_duration,
    policy_number,
    ranged,
    recorded_message,
    recorded_tid,
    render_comm,
    show,
    signal_number,
    size_in_kib,
    string,
    task_state,
    thread_count,
    u32,
)

#: At most this many processes in one population, and tasks alive at the start in all.
MAX_POPULATION = 1_000_000
MAX_START_TASKS = 4_000_000

_TOP = Keys(TOP_KEYS)
_MACHINE = Keys(MACHINE_KEYS)
_CGROUP = Keys(CGROUP_KEYS)
_PROCESS = Keys(PROCESS_KEYS)
_THREAD = Keys(THREAD_KEYS)
_TIMELINE = Keys(TIMELINE_KEYS)
_FAULT = Keys(FAULT_KEYS)
_ACTION = {action: Keys(keys) for action, keys in ACTION_KEYS.items()}

#: How each identity key of a process is read (cpu: `Context.cpu`; comm apart).
_IDENTITY: Mapping[str, Callable[[object], Any]] = {
    "ppid": u32, "uid": u32, "gid": u32, "cgroup": cgroup_path, "state": task_state,
    "nice": nice_value, "policy": policy_number, "forked_no_exec": boolean,
    "superuser": boolean, "cmdline": cmdline_args, "ioprio": ioprio_value,
    "kthread": boolean, "rt_priority": ranged(0, 99),
}
#: The same keys in a population: numbers may be drawn, the others chosen.
_DRAWN_IDENTITY: Mapping[str, Callable[[object], Any]] = {
    "ppid": drawable(u32, 0, U32_MAX, spread=number),
    "uid": drawable(u32, 0, U32_MAX, spread=number),
    "gid": drawable(u32, 0, U32_MAX, spread=number),
    "nice": drawable(nice_value, -20, 19, spread=number),
    "cgroup": choosable(cgroup_path), "state": choosable(task_state),
    "policy": choosable(policy_number), "forked_no_exec": choosable(boolean),
    "superuser": choosable(boolean), "cmdline": cmdline_args,
    "ioprio": choosable(ioprio_value), "kthread": choosable(boolean),
    "rt_priority": drawable(ranged(0, 99), 0, 99, spread=number),
}
_POPULATION_COMM = comm_template("i", "the process's index in the population")
assert set(_IDENTITY) == set(_DRAWN_IDENTITY) == set(IDENTITY_KEYS) - {"comm", "cpu"}


@dataclass
class Reading:
    """A document read (nothing of it kept), before the check by playing."""

    machine: Machine
    cgroups: list[str]
    specs: list[ProcessSpec]
    #: per spec, its [[process]] entry's index in the file's array
    entries: list[int]
    drafts: list[Draft]
    dropped: set[int]
    #: the [[fault]] entries, as `model.faults.Fault` fields
    faults: list[dict[str, Any]]
    #: the storm generators
    storms: list[StormPlan]

    def where(self, position: int) -> str:
        """The key path of the entry spec `position` came from."""
        return f"process[{self.entries[position]}]"


def read_document(document: Mapping[str, Any], problems: Problems) -> Reading:
    """Read a parsed document; problems go to `problems` (the caller raises them)."""
    top = Table(problems, document, "", _TOP)
    machine = read_machine(top)
    ctx = Context(problems, machine)
    cgroups = [cg for t in top.tables("cgroup", _CGROUP)
               if (cg := t.require("path", cgroup_path)) is not None]
    specs, entries = _read_processes(ctx, top)
    drafts = _read_timeline(ctx, top)
    generated, storms = read_generators(ctx, top)
    drafts += generated
    faults = [f for t in top.tables("fault", _FAULT) if (f := _read_fault(t)) is not None]
    written = document.get("machine")
    if not (type(written) is dict and "next_pid" in written):
        highest = max(ctx.written_pids, default=0)
        next_pid = highest + 1 if highest + 1 < machine.pid_max else RESERVED_PIDS
        machine = dataclasses.replace(machine, next_pid=next_pid)
    return Reading(machine, cgroups, specs, entries, drafts, ctx.dropped, faults, storms)


# --- [machine] ---------------------------------------------------------------------------------


def read_machine(top: Table) -> Machine:
    """[machine]. A bad value is reported and replaced by the most permissive one (every CPU
    NR_CPUS allows, the largest pid_max...), so the rest of the file is still checked without
    follow-on complaints."""
    t = top.table("machine", _MACHINE)
    defaults = Machine()
    if t is None:
        return defaults
    table = t

    def pick(key: str, convert: Callable[[Any], Any], default: Any, permissive: Any) -> Any:
        value = table.get(key, convert, MISSING)
        if value is MISSING:
            return permissive if table.has(key) else default
        return value

    kernel = pick("kernel", _kernel, defaults.kernel, defaults.kernel)
    nr_cpus = pick("nr_cpus", ranged(1, NR_CPUS_LIMIT), defaults.nr_cpus, defaults.nr_cpus)
    pid_max = pick("pid_max", ranged(RESERVED_PIDS + 1, PID_MAX_LIMIT), defaults.pid_max,
                   PID_MAX_LIMIT)
    return Machine(
        cpus=pick("cpus", ranged(1, nr_cpus), defaults.cpus, nr_cpus),
        nr_cpus=nr_cpus,
        kernel=kernel,
        family_id=pick("family_id", _family_id, profile(kernel).taskstats_family_id,
                       profile(kernel).taskstats_family_id),
        clock=pick("clock", _clock_mode, defaults.clock, defaults.clock),
        boot_wall_seconds=pick("boot_time", boot_seconds, defaults.boot_wall_seconds,
                               defaults.boot_wall_seconds),
        start_ns=pick("start", parse_duration, defaults.start_ns, DURATION_MAX // 2),
        next_pid=pick("next_pid", ranged(1, pid_max - 1), defaults.next_pid, 1),
        pid_max=pid_max,
        mirror_host=pick("mirror_host", boolean, defaults.mirror_host, False),
        memory_kib=pick("memory", _memory, defaults.memory_kib, defaults.memory_kib),
        load=pick("load", _load_averages, defaults.load, defaults.load))


def _memory(value: object) -> int:
    kib = size_in_kib(value)
    if not 64 << 10 <= kib <= 1 << 40:
        raise Bad(f"memory {show(value)} is out of range: 64MiB to 1PiB")
    return kib


def _load_averages(value: object) -> tuple[float, float, float]:
    """[1-minute, 5-minute, 15-minute] load averages."""
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                       and 0 <= x < 1e6 for x in value)):
        raise Bad(f"load is [1-minute, 5-minute, 15-minute] averages, three numbers from 0, "
                  f"not {show(value)}")
    return (float(value[0]), float(value[1]), float(value[2]))


#: The largest CONFIG_NR_CPUS Linux accepts (x86_64 with MAXSMP).
NR_CPUS_LIMIT = 8192


def _kernel(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise Bad(f"write the kernel profile as a string: kernel = \"{value}\" (a bare "
                  f"{value} is a TOML number)")
    name = string(value)
    try:
        profile(name)
    except ValueError:
        raise Bad(f"unknown kernel profile {show(name)}; choose one of {', '.join(PROFILES)} "
                  "(or a point release of one, e.g. \"6.1.0\")") from None
    return name


def _family_id(value: object) -> int:
    number = integer(value)
    try:
        FamilyTable.default(number)
    except ValueError as exc:
        raise Bad(str(exc)) from None
    return number


def _clock_mode(value: object) -> str:
    name = string(value)
    if name not in ("virtual", "real"):
        raise Bad(f"clock must be \"virtual\" or \"real\", not {show(name)}")
    return name


# --- [[process]] -------------------------------------------------------------------------------


def _read_processes(ctx: Context, top: Table) -> tuple[list[ProcessSpec], list[int]]:
    """[[process]]: the specs of the valid entries (a population's, one per process), each
    with the index of its entry. A pid given twice is reported at the second entry that
    gives it, naming the first."""
    specs: list[ProcessSpec] = []
    entries: list[int] = []
    first: dict[int, Any] = {}  # pid -> the first entry that gives it (see `_taker`)
    tasks = 0
    ref_ns = ctx.machine.start_ns
    for t in top.entries("process", _PROCESS):
        taken = _claim_written(t, first)
        if "count" not in t.data:
            spec = _read_process(ctx, t, ref_ns=ref_ns, in_timeline=False)
            if spec is None or not taken:
                ctx.drop(t.data.get("pid"))
                continue
            tasks += 1 + len(spec.threads)
            specs.append(spec)
            entries.append(t.index)
        else:
            made = _read_population(ctx, t, first)
            if not made or not taken:
                ctx.drop(t.data.get("pid"))
                continue
            tasks += sum(1 + len(spec.threads) for spec in made)
            specs += made
            entries += [t.index] * len(made)
        if tasks > MAX_START_TASKS:
            t.fail(None, f"the processes have {tasks:,} tasks in all; at most "
                   f"{MAX_START_TASKS:,} at the start")
            break
    return specs, entries


def _claim_written(t: Table, first: dict[int, Any]) -> bool:
    """Record the pids the entry writes (whether or not the rest of it is valid); False, with
    the problem reported, when one was written before."""
    data = t.data
    pid = data.get("pid")
    threads = data.get("thread")
    if threads is None:  # (the usual table: a pid, no [[thread]] entries)
        if type(pid) is not int:
            return True
        if pid not in first:
            first[pid] = (t.index, "pid")
            return True
    ok = True
    written: list[tuple[int, str]] = []
    if type(pid) is int:
        written.append((pid, "pid"))
    for j, thread in enumerate(threads if type(threads) is list else ()):
        if type(thread) is dict and type(thread.get("tid")) is int:
            written.append((thread["tid"], f"thread[{j}].tid"))
    for tid, key in written:
        taker = first.get(tid)
        if taker is not None:
            t.fail(key, f"pid {tid} is already taken by {_taker(taker)}")
            ok = False
        else:
            first[tid] = (t.index, key)
    return ok


def _taker(taker: Any) -> str:
    """Who took a pid first: a [[process]] entry's (index, key), or a population's words."""
    if isinstance(taker, str):
        return taker
    index, key = taker
    return f"process[{index}].{key}"


def _read_process(ctx: Context, t: Table, *, ref_ns: int, in_timeline: bool
                  ) -> ProcessSpec | None:
    """A [[process]] or a spawn's table. An automatic pid stays None."""
    pid = t.get("pid", ctx.new_pid)
    comm = t.require("comm", comm_name)
    age = _read_age(t, ref_ns, default=0 if in_timeline else ref_ns, convert=parse_duration)
    counters, rates = split_rates(read_counters(ctx, t, "set"))
    threads = _read_threads(ctx, t, age, ref_ns, in_timeline)
    fields = _read_identity(ctx, t, _IDENTITY, ctx.cpu)
    if not t.ok:
        return None
    if "ppid" not in fields and pid == 1:
        fields["ppid"] = 0
    return ProcessSpec(pid=pid, comm=comm, age_ns=age, counters=frozen(counters),
                       threads=threads, proc=proc_identity(fields), rates=rates, **fields)


def proc_identity(fields: dict[str, Any]) -> ProcIdentity | None:
    """The /proc-only keys of `fields`, taken out, as a `ProcIdentity` (None: none given)."""
    given = {key: fields.pop(key) for key in PROC_KEYS if key in fields}
    if not given:
        return None
    if "cmdline" in given:
        given["cmdline"] = tuple(arg.encode() for arg in given["cmdline"])
    return ProcIdentity(**given)


def _read_identity(ctx: Context, t: Table, readers: Mapping[str, Callable[[object], Any]],
                   cpu: Callable[[object], Any]) -> dict[str, Any]:
    """The identity keys the table gives (comm apart), read by `readers`."""
    fields: dict[str, Any] = {}
    for key, value in t.data.items():
        convert = readers.get(key)
        if convert is None:
            if key != "cpu":
                continue
            convert = cpu
        try:
            fields[key] = convert(value)
        except Bad as exc:
            t.fail(key, str(exc))
    return fields


def _read_age(t: Table, ref_ns: int, *, default: int,
              convert: Callable[[object], Any]) -> Any:
    """How long before `ref_ns` (nanoseconds since boot) the task started, from `start` (since
    boot) or `age` (before the reference); a population's may be drawn (then the draw of a
    start, or of an age, as `_AgeDraw`)."""
    data = t.data
    if "start" not in data and "age" not in data:
        return default
    if "start" in data and "age" in data:
        t.fail("age", "give start or age, not both")
        return default
    key = "start" if "start" in data else "age"
    value = t.get(key, convert)
    if value is None:
        return default
    latest = highest(value)
    if latest > ref_ns:
        if key == "start":
            t.fail("start", f"{format_duration(latest)} since boot is after the moment it is "
                   f"created ({format_duration(ref_ns)} since boot)")
        else:
            t.fail("age", f"{format_duration(latest)} reaches back before boot (the "
                   f"reference moment is {format_duration(ref_ns)} after boot)")
        return default
    if is_drawn(value):
        return _AgeDraw(value, ref_ns if key == "start" else None)
    return int(ref_ns - value) if key == "start" else int(value)


@dataclass(frozen=True)
class _AgeDraw:
    """A population's drawn start (an age is `ref_ns` minus it) or age (`ref_ns` None)."""

    value: Any
    ref_ns: int | None

    def draw(self, rng: random.Random) -> int:
        drawn_value: int = self.value.draw(rng)
        return drawn_value if self.ref_ns is None else self.ref_ns - drawn_value


def _read_threads(ctx: Context, t: Table, age: Any, ref_ns: int, in_timeline: bool
                  ) -> tuple[ThreadSpec, ...]:
    """The threads besides the leader: [[process.thread]] entries, then plain ones up to
    `threads` (a population: plain ones are made per process, see `_read_population`)."""
    data = t.data
    if "thread" not in data and "threads" not in data:
        return ()
    population = "count" in data
    specs: list[ThreadSpec] = []
    entries = t.tables("thread", _THREAD)
    leader_age = age if type(age) is int else ref_ns
    for e in entries:
        if in_timeline and (e.has("start") or e.has("age")):
            e.fail("start" if e.has("start") else "age",
                   "the threads of a timeline spawn start with it")
        if population and e.has("tid"):
            e.fail("tid", "a population numbers its threads itself: leave tid out")
        tid = e.get("tid", ctx.new_pid)
        thread_age = leader_age if in_timeline else _read_age(
            e, ref_ns, default=leader_age, convert=parse_duration)
        if thread_age > leader_age:
            e.fail(None, f"the thread starts {format_duration(thread_age - leader_age)} before "
                   "its process")
        thread_counters, thread_rates = split_rates(read_counters(ctx, e, "set", thread=True))
        specs.append(ThreadSpec(
            tid=tid, comm=e.get("comm", comm_name), cpu=e.get("cpu", ctx.cpu),
            state=e.get("state", task_state), superuser=e.get("superuser", boolean, False),
            age_ns=0 if in_timeline else thread_age, counters=frozen(thread_counters),
            rates=thread_rates))
    pid = t.data.get("pid")
    tids = [s.tid for s in specs if s.tid is not None]
    for j, written in enumerate(specs):
        if written.tid is not None and (written.tid == pid or tids.count(written.tid) > 1):
            t.problems.add(f"{t.path}.thread[{j}].tid", f"tid {written.tid} is given twice in "
                           "this process")
            t.mark()
            break
    if population:
        return tuple(specs)
    count = t.get("threads", thread_count)
    if count is not None and count < 1 + len(entries):
        t.fail("threads", f"threads = {count} counts the leader, yet there are "
               f"{len(entries)} [[thread]] entries besides it")
    elif count is not None:  # plain threads: one spec for them all (the tids come later)
        specs += [ThreadSpec(tid=None, age_ns=0 if in_timeline else age)] * (
            count - 1 - len(entries))
    return tuple(specs)


# --- populations -------------------------------------------------------------------------------


def _read_population(ctx: Context, t: Table, first: dict[int, Any]) -> list[ProcessSpec]:
    """A [[process]] with `count`: that many processes, each drawn from the table's values
    (see FORMAT.md: pids from `pid` on, or automatic; `{i}` in comm; `cpus` round robin;
    ranges and distributions drawn in a fixed order from `seed`)."""
    machine = ctx.machine
    count = t.get("count", ranged(0, MAX_POPULATION))
    seed = t.get("seed", integer, 0)
    cpus = t.get("cpus", cpulist(machine.cpus))
    if t.has("cpus") and t.has("cpu"):
        t.fail("cpus", "give cpu or cpus, not both")
    fields = _read_identity(ctx, t, _DRAWN_IDENTITY,
                            drawable(ctx.cpu, 0, machine.cpus - 1, spread=number))
    first_pid = t.get("pid", ctx.pid)
    comm = t.require("comm", _POPULATION_COMM)
    ref_ns = machine.start_ns
    age = _read_age(t, ref_ns, default=ref_ns, convert=drawable(parse_duration, 0, ref_ns))
    counters = read_counters(ctx, t, "draw")
    threads = t.get("threads", drawable(thread_count, 1, 100_000, spread=number), 1)
    entries = _read_threads(ctx, t, age, ref_ns, in_timeline=False)
    if count is not None and comm is not None and count:
        for i in {0, count - 1}:
            try:
                comm_name(render_comm(comm, "i", i))
            except Bad as exc:
                t.fail("comm", f"for process {i}: {exc}")
                break
    if count is not None and t.ok:
        if lowest(threads) < 1 + len(entries):
            t.fail("threads", f"threads = {show(t.data['threads'])} counts the leader, yet "
                   f"there are {len(entries)} [[thread]] entries besides it")
    if not t.ok or count is None:
        return []
    if "ppid" not in fields and first_pid == 1:
        fields["ppid"] = 0
    proc_fields = {key: fields.pop(key) for key in PROC_KEYS if key in fields}
    specs = _expand(t, first, count, seed, first_pid, comm, fields, cpus, age, threads,
                    counters, entries, ctx.written_pids, machine.pid_max, proc_fields)
    if first_pid is not None and specs:
        last = specs[-1]
        end = (last.threads[-1].tid if last.threads else last.pid) + 1  # type: ignore[operator]
        where = f"{t.path} (the population's pids {first_pid}-{end - 1})"
        for tid in range(first_pid, end):
            first.setdefault(tid, where)
    return specs


_FIELDS = ProcessSpec._fields
_PID, _COMM, _CPU, _AGE, _COUNTERS, _THREADS, _PROC = (
    _FIELDS.index(name) for name in ("pid", "comm", "cpu", "age_ns", "counters", "threads",
                                     "proc"))


def _expand(t: Table, first: dict[int, Any], count: int, seed: int, first_pid: int | None,
            comm: str, fields: Mapping[str, Any], cpus: list[int] | None, age: Any,
            threads: Any, counters: Mapping[str, Any], entries: tuple[ThreadSpec, ...],
            written_pids: list[int], pid_max: int, proc_fields: Mapping[str, Any]
            ) -> list[ProcessSpec]:
    """A population's processes, drawn. The draws for each, in this order: its threads, its
    start (or age), its drawn identity keys by name (those only /proc shows after the
    others), its drawn counters by name. (Written for speed: a population may stand for a
    million processes.)"""
    rng = random.Random(seed)
    template: list[Any] = list(ProcessSpec(pid=None, comm=comm, **{
        key: value for key, value in fields.items() if not is_drawn(value)}))
    drawn_keys = [(_FIELDS.index(key), fields[key].draw)
                  for key in sorted(fields) if is_drawn(fields[key])]
    drawn_counters = [(name, counters[name].draw)
                      for name in sorted(counters) if is_drawn(counters[name])]
    fixed_counters = {name: value for name, value in counters.items() if not is_drawn(value)}
    template[_COUNTERS] = frozen(fixed_counters)
    drawn_proc = sorted(key for key, value in proc_fields.items() if is_drawn(value))
    template[_PROC] = proc_identity({k: v for k, v in proc_fields.items() if not is_drawn(v)})
    draw_threads = threads.draw if is_drawn(threads) else None
    draw_age = age.draw if isinstance(age, _AgeDraw) else None
    if draw_age is None:
        template[_AGE] = age
    render = "{" in comm or "}" in comm
    ncpus = len(cpus) if cpus is not None else 0
    plain = ThreadSpec(tid=None, age_ns=age if draw_age is None else 0)
    specs: list[ProcessSpec] = []
    make = tuple.__new__
    pid = first_pid
    for i in range(count):
        row = template.copy()
        nthreads = threads if draw_threads is None else draw_threads(rng)
        if draw_age is not None:
            row[_AGE] = task_age = draw_age(rng)
            plain = ThreadSpec(tid=None, age_ns=task_age)
        for index, draw in drawn_keys:
            row[index] = draw(rng)
        if drawn_proc:
            given = {k: v for k, v in proc_fields.items() if not is_drawn(v)}
            given.update((key, proc_fields[key].draw(rng)) for key in drawn_proc)
            row[_PROC] = proc_identity(given)
        if drawn_counters:
            own = dict(fixed_counters)
            for name, draw in drawn_counters:
                own[name] = draw(rng)
            row[_COUNTERS] = frozen(own)
        if ncpus:
            row[_CPU] = cpus[i % ncpus]  # type: ignore[index]
        if render:
            row[_COMM] = render_comm(comm, "i", i)
        thread_specs: tuple[ThreadSpec, ...] = ()
        if nthreads > 1:
            task_age = row[_AGE]
            thread_specs = tuple(e._replace(age_ns=min(e.age_ns, task_age)) for e in entries) \
                + (plain,) * (nthreads - 1 - len(entries))
        if pid is not None:
            if pid + nthreads - 1 >= pid_max:
                t.fail("pid", f"the population's pids run past pid_max {pid_max} "
                       f"(process {i} needs {pid}-{pid + nthreads - 1})")
                return []
            for tid in range(pid, pid + nthreads):
                taker = first.get(tid)
                if taker is not None and tid != first_pid:
                    t.fail("pid", f"process {i} of the population would take pid {tid}, "
                           f"already taken by {_taker(taker)}")
                    return []
            row[_PID] = pid
            if thread_specs:
                thread_specs = tuple(s._replace(tid=tid) for tid, s in enumerate(thread_specs,
                                                                                pid + 1))
            pid += nthreads
            written_pids.append(pid - 1)
        row[_THREADS] = thread_specs
        specs.append(make(ProcessSpec, row))
    return specs


def _read_fault(t: Table) -> dict[str, Any] | None:
    """A [[fault]]: in force from the scenario's start (or `at`) until `until`."""
    return read_fault(t.data, t.fail)


# --- [[timeline]] ------------------------------------------------------------------------------


def _read_timeline(ctx: Context, top: Table) -> list[Draft]:
    drafts = []
    for t in top.tables("timeline", _TIMELINE):
        at = t.require("at", parse_duration)
        actions = [a for a in ACTIONS if t.has(a)]
        if len(actions) != 1:
            t.fail(None, "needs exactly one action (" + ", ".join(ACTIONS) + "), "
                   + (f"has {len(actions)}: {', '.join(actions)}" if actions else "has none"))
            continue
        action = actions[0]
        sub = t.table(action, _ACTION[action])
        if sub is None:
            continue
        args = _read_action(ctx, sub, action, ref_ns=ctx.machine.start_ns + (at or 0))
        if args is not None and at is not None and t.ok:
            drafts.append(Draft(at, action, args, sub.path))
        elif action == "spawn":
            ctx.drop(sub.data.get("pid"))
    return drafts


def _read_action(ctx: Context, t: Table, action: str, *, ref_ns: int
                 ) -> dict[str, Any] | None:
    args: dict[str, Any]
    if action == "spawn":
        spec = _read_process(ctx, t, ref_ns=ref_ns, in_timeline=True)
        return {"process": spec} if spec is not None else None
    if action == "clone":
        thread = ThreadSpec(
            tid=t.get("tid", ctx.new_pid), comm=t.get("comm", comm_name),
            cpu=t.get("cpu", ctx.cpu), state=t.get("state", task_state),
            superuser=t.get("superuser", boolean, False),
            counters=frozen(read_counters(ctx, t, "set", thread=True)))
        args = {"tgid": t.require("tgid", ctx.pid), "thread": thread}
    elif action == "set":
        values = _read_identity(ctx, t, _IDENTITY, ctx.cpu)
        if "comm" in t.data:
            values["comm"] = t.get("comm", comm_name)
        if "cmdline" in values:
            values["cmdline"] = tuple(arg.encode() for arg in values["cmdline"])
        counters, rates = split_rates(read_counters(ctx, t, "set"))
        values.update(counters)
        if t.ok and not values and not rates:
            t.fail(None, "nothing to set: give fields or counters besides pid")
        args = {"pid": t.require("pid", ctx.pid), "values": values, "rates": rates}
    elif action == "add":
        deltas = read_counters(ctx, t, "add")
        if t.ok and not deltas:
            t.fail(None, "nothing to add: give counters besides pid")
        args = {"pid": t.require("pid", ctx.pid), "deltas": deltas}
    elif action == "move":
        args = {"pid": t.require("pid", ctx.pid), "cpu": t.require("cpu", ctx.cpu)}
    elif action == "recorded_exit":
        cpu = t.require("cpu", ctx.cpu)
        message = t.require("message", recorded_message)
        args = {"cpu": cpu, "message": message,
                "tid": recorded_tid(message) if message is not None else None}
    else:
        args = {"pid": t.require("pid", ctx.pid), **read_exit(t)}
        if action == "exit":
            args["cpu"] = t.get("cpu", ctx.cpu)
        else:
            args["caller"] = t.get("caller", ctx.pid)
            args["leader_last"] = t.get("leader_last", boolean, False)
            if t.ok and args["caller"] is not None and args["leader_last"]:
                t.fail("leader_last", "name a caller or ask for the leader last, not both")
    return args if t.ok else None


def read_exit(t: Table) -> dict[str, Any]:
    """An exit's code, signal and core flag (a timeline exit or exit_group)."""
    code = t.get("code", ranged(-(2**31), 2**31 - 1), 0)
    signal = t.get("signal", signal_number)
    core = t.get("core", boolean, False)
    if t.has("code") and t.has("signal"):
        t.fail("signal", "give an exit code or a signal, not both")
    if core and not t.has("signal"):
        t.fail("core", "only a death by signal dumps core: give signal too")
    return {"code": code, "signal": signal, "core": core}

