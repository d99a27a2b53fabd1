"""Generators: load described by a few numbers, expanded into timeline events.

What lives here: the [[generator]] kinds, each read from its table: ``short_jobs`` expanded,
deterministically, into spawn and exit_group drafts for the check to play; ``storm`` kept as a
`StormPlan` that the emulator plays as time passes (millions of exits are not a timeline). See
FORMAT.md for the keys. What must not: the timeline's checks (`check`), reading counters
(`tables.read_counters`, which this uses in its "draw" mode).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..model.clock import NSEC_PER_SEC
from ..model.tasks import U32_MAX, TaskState
from .check import Draft, Ref
from .draws import Draw, Uniform, choosable, drawable, is_drawn, number
from .schema import GENERATOR_KEYS, GENERATOR_KIND_KEYS, GENERATOR_KINDS
from .specs import ProcessSpec, StormPlan, ThreadSpec, frozen
from .tables import Context, Keys, Table, cpulist, one_or_list, read_counters
from .values import (
    DURATION_MAX,
    SIGNALS,
    Bad,
    boolean,
    cgroup_path,
    comm_name,
    comm_template,
    format_duration,
    integer,
    nice_value,
    parse_duration,
    policy_number,
    ranged,
    render_comm,
    share,
    show,
    signal_number,
    string,
    suggest,
    task_state,
    type_name,
    u32,
)

#: At most this many generated jobs per scenario, all generators together.
MAX_JOBS = 100_000
#: At most this many exits per storm (as per `tsemu ctl storm`).
MAX_STORM_EXITS = 10_000_000
_GENERATOR = Keys(GENERATOR_KEYS)
_JOB_COMM = comm_template("n", "the job's index")
#: The identity keys of a job, how each is read, and its default.
_IDENTITY: tuple[tuple[str, Any, Any], ...] = (
    ("uid", drawable(u32, 0, U32_MAX, spread=number), 0),
    ("gid", drawable(u32, 0, U32_MAX, spread=number), 0),
    ("ppid", drawable(u32, 0, U32_MAX, spread=number), 1),
    ("cgroup", choosable(cgroup_path), None),
    ("nice", drawable(nice_value, -20, 19, spread=number), 0),
    ("policy", choosable(policy_number), 0),
    ("state", choosable(task_state), TaskState.RUNNING),
)


def read_generators(ctx: Context, top: Table) -> tuple[list[Draft], list[StormPlan]]:
    """Every [[generator]]: the short_jobs expanded into drafts, and the storms."""
    drafts: list[Draft] = []
    storms: list[StormPlan] = []
    jobs = 0
    for g, t in enumerate(top.tables("generator", _GENERATOR)):
        kind = t.require("kind", string)
        if kind is not None and kind not in GENERATOR_KINDS:
            t.fail("kind", f"unknown generator kind {show(kind)}; "
                   f"{suggest(kind, GENERATOR_KINDS)}")
            continue
        if kind is not None:
            for key in t.data:
                if key in _GENERATOR.known and key not in GENERATOR_KIND_KEYS[kind]:
                    t.fail(key, f"a {kind} generator has no {key}; its keys: "
                           f"{', '.join(GENERATOR_KIND_KEYS[kind])}")
        if kind == "storm":
            storm = _read_storm(ctx, t)
            if storm is not None and t.ok:
                storms.append(storm)
            continue
        plan = _read_short_jobs(ctx, t)
        if plan is None or not t.ok:
            continue
        jobs += plan.count
        if jobs > MAX_JOBS:
            t.fail("count", f"the generators make {jobs} jobs in all; at most {MAX_JOBS}")
            continue
        drafts += plan.expand(f"generator[{g}]")
    return drafts, storms


def _read_storm(ctx: Context, t: Table) -> StormPlan | None:
    """A storm generator: `rate` exits a second, `count` of them or as many as `duration`
    holds, from `start` on, on `cpus` in turn (see `StormPlan`)."""
    rate = t.require("rate", _rate)
    count = t.get("count", ranged(1, MAX_STORM_EXITS))
    duration = t.get("duration", parse_duration)
    start = t.get("start", parse_duration, 0)
    cpus = t.get("cpus", cpulist(ctx.machine.cpus), list(range(ctx.machine.cpus)))
    threads = t.get("threads", ranged(1, 1000), 1)
    if t.has("count") and t.has("duration"):
        t.fail("duration", "give count or duration, not both")
    elif not t.has("count") and not t.has("duration"):
        t.fail(None, "a storm needs count (exits) or duration (how long it lasts)")
    if rate is not None and duration is not None:
        count = math.floor(rate * Fraction(duration, NSEC_PER_SEC))
        if count > MAX_STORM_EXITS:
            t.fail("duration", f"{rate} exits a second for {format_duration(duration)} make "
                   f"{count}; at most {MAX_STORM_EXITS:,}")
        elif count < 1:
            t.fail("duration", f"{rate} exits a second for {format_duration(duration)} make "
                   "none")
    if not t.ok or rate is None or count is None or cpus is None or threads is None:
        return None
    return StormPlan(start_ns=start, rate=rate, exits=count, cpus=tuple(cpus), threads=threads)


@dataclass
class _ShortJobs:
    """A checked short_jobs generator, ready to expand."""

    seed: int
    count: int
    start_ns: int
    interval: Fraction
    random_arrival: bool
    window_ns: int
    lifetime: Draw
    cpus: list[int]
    threads: Draw
    comm: str
    identity: dict[str, Any]
    codes: list[int]
    signals: list[int]
    killed: float
    core: bool
    counters: dict[str, Any]

    def expand(self, where: str) -> list[Draft]:
        """The jobs' spawns and exits. The draws, in this order: the arrivals (when random),
        then per job its lifetime, threads, whether it is killed, its code, its signal, its
        drawn counters by name, its drawn identity keys by name."""
        rng = random.Random(self.seed)
        if self.random_arrival:
            arrivals = sorted(self.start_ns + rng.randint(0, self.window_ns)
                              for _ in range(self.count))
        else:
            arrivals = [self.start_ns + math.floor(i * self.interval) for i in range(self.count)]
        drawn_identity = sorted(k for k, v in self.identity.items() if is_drawn(v))
        drafts = []
        for i, at in enumerate(arrivals):
            lifetime = self.lifetime.draw(rng)
            threads = self.threads.draw(rng)
            killed = rng.random() < self.killed
            code = rng.choice(self.codes)
            signal = rng.choice(self.signals)
            counters = {name: value.draw(rng) if is_drawn(value) else value
                        for name, value in sorted(self.counters.items())}
            identity = dict(self.identity)
            for key in drawn_identity:
                identity[key] = identity[key].draw(rng)
            spec = ProcessSpec(
                pid=None, comm=render_comm(self.comm, "n", i), cpu=self.cpus[i % len(self.cpus)],
                counters=frozen(counters), threads=(ThreadSpec(tid=None),) * (threads - 1),
                **identity)
            ref = f"{where}#{i}"
            drafts.append(Draft(at, "spawn", {"process": spec},
                                f"{where} (job {i}, spawned at {format_duration(at)})", ref))
            exit_args = {"pid": Ref(ref), "code": 0 if killed else code,
                         "signal": signal if killed else None, "core": self.core and killed,
                         "caller": None, "leader_last": False}
            drafts.append(Draft(min(at + lifetime, DURATION_MAX), "exit_group", exit_args,
                                f"{where} (job {i}, exiting)"))
        return drafts


def _read_short_jobs(ctx: Context, t: Table) -> _ShortJobs | None:
    seed = t.get("seed", integer, 0)
    count = t.get("count", ranged(0, MAX_JOBS))
    rate = t.get("rate", _rate)
    start = t.get("start", parse_duration, 0)
    duration = t.get("duration", parse_duration, 0)
    arrival = t.get("arrival", _arrival, "even")
    if t.has("count") and t.has("rate"):
        t.fail("rate", "give count or rate, not both")
    elif not t.has("count") and not t.has("rate"):
        t.fail(None, "needs count (a number of jobs) or rate (jobs per second, with duration)")
    elif t.has("rate") and not t.has("duration"):
        t.fail("duration", "rate needs a duration to run over")
    interval = Fraction(0)
    if rate is not None and duration is not None:
        count = math.floor(rate * Fraction(duration, NSEC_PER_SEC))
        if count > MAX_JOBS:
            t.fail("rate", f"{rate} per second over {format_duration(duration)} makes {count} "
                   f"jobs; at most {MAX_JOBS}")
        interval = NSEC_PER_SEC / rate
    elif count:
        interval = Fraction(duration, count)
    lifetime = t.get("lifetime", drawable(parse_duration, 0, DURATION_MAX), 10_000_000)
    threads = t.get("threads", drawable(ranged(1, 1000), 1, 1000, spread=number), 1)
    cpus = t.get("cpus", cpulist(ctx.machine.cpus), list(range(ctx.machine.cpus)))
    comm = t.get("comm", _JOB_COMM, "job{n}")
    identity = {key: t.get(key, convert, default) for key, convert, default in _IDENTITY}
    codes = t.get("code", one_or_list(ranged(-(2**31), 2**31 - 1)), [0])
    signals = t.get("signal", one_or_list(signal_number), [SIGNALS["SIGKILL"]])
    killed = t.get("killed", share, 1.0 if t.has("signal") else 0.0)
    core = t.get("core", boolean, False)
    counters = read_counters(ctx, t, "draw")
    if not t.ok or count is None:
        return None
    if comm is not None and count:
        for n in {0, count - 1}:
            try:
                comm_name(render_comm(comm, "n", n))
            except Bad as exc:
                t.fail("comm", f"for job {n}: {exc}")
                break
    if not t.ok:
        return None
    return _ShortJobs(
        seed=seed, count=count, start_ns=start, interval=interval,
        random_arrival=arrival == "random", window_ns=duration,
        # (a constant draws too, from a range of one: the jobs' draws stay in step)
        lifetime=lifetime if is_drawn(lifetime) else Uniform(lifetime, lifetime),
        cpus=cpus, threads=threads if is_drawn(threads) else Uniform(threads, threads),
        comm=comm, identity=identity, codes=codes, signals=signals, killed=killed, core=core,
        counters=counters)


def _rate(value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Bad(f"expected a number of jobs per second, got {type_name(value)} "
                  f"{show(value)}")
    if not math.isfinite(value) or not 0 < value <= 1e9:
        raise Bad(f"rate {value} must be above 0 and at most 1e9 per second")
    return Fraction(repr(value))  # the decimal as written: 0.3 is 3/10, not a binary fraction


def _arrival(value: object) -> str:
    name = string(value)
    if name not in ("even", "random"):
        raise Bad(f"arrival must be \"even\" or \"random\", not {show(name)}")
    return name

