"""Populations: one [[process]] table with `count` standing for many processes, with values
constant, ranged or drawn from a seeded distribution; and the draws themselves."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsemu.emulator.model.tasks import TaskState
from tsemu.emulator.scenario import ScenarioError, build_table, parse_scenario
from tsemu.emulator.scenario.draws import Choice, LogNormal, Normal, Uniform


def errors_of(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "p.toml")
    return list(caught.value.problems)


def test_a_population_numbers_its_tasks_from_its_first_pid() -> None:
    scenario = parse_scenario("""
        [machine]
        cpus = 4
        [[process]]
        count = 5
        pid = 500
        comm = "worker-{i}"
        cpus = "1-2"
        threads = 3
        state = "sleeping"
        """)
    specs = scenario.processes
    assert [s.pid for s in specs] == [500, 503, 506, 509, 512]
    assert [s.tids for s in specs][1] == (503, 504, 505)
    assert [s.comm for s in specs] == [f"worker-{i}" for i in range(5)]
    assert [s.cpu for s in specs] == [1, 2, 1, 2, 1]
    assert all(s.state is TaskState.SLEEPING for s in specs)
    table = build_table(scenario)
    assert len(table) == 15
    assert table.get(505).tgid == 503
    assert scenario.machine.next_pid == 515


def test_a_population_without_a_pid_takes_automatic_ones_after_the_written() -> None:
    scenario = parse_scenario("""
        [[process]]
        pid = 40
        comm = "a"
        [[process]]
        count = 3
        comm = "b{i}"
        """)
    assert [s.pid for s in scenario.processes] == [40, 41, 42, 43]


def test_the_same_seed_makes_the_same_machine_and_another_seed_another() -> None:
    text = """
        [[process]]
        count = 200
        seed = {seed}
        comm = "w"
        threads = [1, 4]
        age = ["1s", "90s"]
        nice = {{ distribution = "normal", mean = 0, stddev = 5 }}
        state = {{ distribution = "choice", values = ["sleeping", "running"] }}
        io.write_bytes = {{ distribution = "lognormal", median = "4MiB", sigma = 1.0 }}
        delays.blkio = {{ count = [0, 9], total = ["1ms", "1s"] }}
        """
    first = parse_scenario(text.format(seed=1))
    again = parse_scenario(text.format(seed=1))
    other = parse_scenario(text.format(seed=2))
    assert first.processes == again.processes
    assert first.processes != other.processes
    assert table_summary(first) == table_summary(again)


def table_summary(scenario: object) -> list[tuple[int, int, int]]:
    table = build_table(scenario)  # type: ignore[arg-type]
    return [(t.tid, t.start_ns, t.counter("write_bytes")) for t in table]


def test_drawn_values_stay_within_their_bounds() -> None:
    scenario = parse_scenario("""
        [[process]]
        count = 2000
        comm = "w"
        uid = [1000, 1009]
        nice = { distribution = "normal", mean = 0, stddev = 30, min = -5, max = 5 }
        times.stime = { distribution = "uniform", min = "2ms", max = "3ms" }
        cgroup = { distribution = "choice", values = ["/a", "/b"], weights = [3, 1] }
        [process.times.utime]
        distribution = "lognormal"
        median = "10ms"
        sigma = 2.0
        min = "1ms"
        max = "1s"
        """)
    specs = scenario.processes
    assert {s.uid for s in specs} == set(range(1000, 1010))
    assert all(-5 <= s.nice <= 5 for s in specs)
    utimes = [s.counters["utime_ns"] for s in specs]
    assert all(1_000_000 <= u <= 1_000_000_000 for u in utimes)
    assert 5_000_000 < statistics.median(utimes) < 20_000_000
    assert all(2_000_000 <= s.counters["stime_ns"] <= 3_000_000 for s in specs)
    share = sum(s.cgroup == "/a" for s in specs) / len(specs)
    assert 0.7 < share < 0.8


def test_constant_counters_are_shared_by_every_process_of_a_population() -> None:
    scenario = parse_scenario("""
        [[process]]
        count = 50
        comm = "w"
        delays.cpu = { count = 3, total = "5ms" }
        """)
    counters = {id(s.counters) for s in scenario.processes}
    assert len(counters) == 1


def test_thread_entries_describe_every_process_first_threads() -> None:
    scenario = parse_scenario("""
        [[process]]
        count = 3
        pid = 100
        comm = "w"
        threads = 3
        [[process.thread]]
        comm = "io"
        cpu = 1
        """)
    for spec in scenario.processes:
        assert [t.comm for t in spec.threads] == ["io", None]
        assert spec.threads[0].cpu == 1
    assert scenario.processes[1].tids == (103, 104, 105)


@pytest.mark.parametrize(("text", "expected"), [
    ('count = 3\ncomm = "w{x}"', "only {i} (the process's index in the population) may appear"),
    ('count = 3\ncomm = "a-very-long-name-{i}"', "comm: for process 0"),
    ('count = 3\ncomm = "w"\ncpu = 0\ncpus = "0-1"', "give cpu or cpus, not both"),
    ('count = 3\ncomm = "w"\n[[process.thread]]\ntid = 9', "a population numbers its threads"),
    ('count = 3\ncomm = "w"\nuid = [5, 1]', "has min above max"),
    ('count = 3\ncomm = "w"\nuid = { distribution = "zipf" }', 'unknown distribution "zipf"'),
    ('count = 3\ncomm = "w"\nuid = { min = 1 }', "needs distribution ="),
    ('count = 3\ncomm = "w"\nuid = { distribution = "uniform", min = 1, mean = 3 }',
     'not "mean"'),
    ('count = 3\ncomm = "w"\nuid = { distribution = "normal", mean = 3 }',
     "needs mean and stddev"),
    ('count = 3\ncomm = "w"\ntimes.utime = { distribution = "lognormal", median = 0, sigma = 1 }',
     "median must be above 0"),
    ('count = 3\ncomm = "w"\ntimes.utime = { distribution = "lognormal", median = "1s", '
     'sigma = -1 }', "sigma must be a number above 0"),
    ('count = 3\ncomm = "w"\nstate = ["sleeping", "running"]', "expected a string"),
    ('count = 3\ncomm = "w"\nstate = { distribution = "uniform", min = 1, max = 2 }',
     "only a choice can be drawn"),
    ('count = 3\ncomm = "w"\ncgroup = { distribution = "choice", values = [] }',
     "a non-empty array"),
    ('count = 3\ncomm = "w"\nuid = { distribution = "choice", values = [1, 2], weights = [1] }',
     "as long as its values"),
    ('count = 3\ncomm = "w"\nuid = { distribution = "choice", values = [1], weights = [0] }',
     "must not all be 0"),
    ('count = 3\ncomm = "w"\ncpu = [0, 7]', "cpu 7 does not exist"),
    ('count = 3\ncomm = "w"\nstart = ["1s", "200s"]', "is after the moment it is created"),
    ('count = 3\ncomm = "w"\nthreads = [1, 2]\n[[process.thread]]\ncomm = "t"',
     "counts the leader"),
    ('count = 2000000\ncomm = "w"', "2000000 is out of range 0..1000000"),
    ('count = 3\npid = 4194300\ncomm = "w"\nthreads = 2', "run past pid_max"),
])
def test_each_population_mistake_is_named(text: str, expected: str) -> None:
    problems = errors_of("[[process]]\n" + text + "\n")
    assert any(expected in p for p in problems), problems


def test_a_pid_a_population_takes_is_not_written_again() -> None:
    problems = errors_of("""
        [[process]]
        count = 10
        pid = 100
        comm = "w"
        [[process]]
        pid = 105
        comm = "x"
        """)
    assert problems == ["p.toml: process[1].pid: pid 105 is already taken by process[0] (the "
                        "population's pids 100-109) (the entry begins at line 6)"]
    problems = errors_of("""
        [[process]]
        pid = 105
        comm = "x"
        [[process]]
        count = 10
        pid = 100
        comm = "w"
        """)
    assert len(problems) == 1
    assert "process 5 of the population would take pid 105, already taken by process[0].pid" \
        in problems[0]


def test_a_timeline_can_name_a_population_s_processes() -> None:
    scenario = parse_scenario("""
        [[process]]
        count = 4
        pid = 10
        comm = "w{i}"
        [[timeline]]
        at = "1s"
        exit = { pid = 12, code = 3 }
        """)
    assert scenario.timeline[0].args["pid"] == 12


# --- the draws themselves --------------------------------------------------------------------


@given(st.integers(0, 2**64), st.integers(0, 2**20), st.integers(0, 2**32))
def test_a_uniform_draw_is_in_its_range(low: int, width: int, seed: int) -> None:
    draw = Uniform(low, low + width)
    rng = random.Random(seed)
    for _ in range(20):
        assert low <= draw.draw(rng) <= low + width


def test_a_wide_uniform_range_reaches_its_whole_width() -> None:
    draw = Uniform(0, 2**64 - 1)
    rng = random.Random(3)
    values = [draw.draw(rng) for _ in range(200)]
    assert max(values) > 2**63 and all(0 <= v < 2**64 for v in values)


@given(st.floats(-1e6, 1e6), st.floats(0, 1e6), st.integers(-1000, 1000),
       st.integers(0, 1000), st.integers(0, 2**32))
def test_a_normal_draw_is_an_integer_within_its_bounds(mean: float, stddev: float, low: int,
                                                       width: int, seed: int) -> None:
    draw = Normal(mean, stddev, low, low + width)
    value = draw.draw(random.Random(seed))
    assert type(value) is int and low <= value <= low + width


def test_lognormal_and_choice_draws() -> None:
    rng = random.Random(0)
    lognormal = LogNormal(1000.0, 0.5, 0, 10**9)
    values = [lognormal.draw(rng) for _ in range(2000)]
    assert 900 < statistics.median(values) < 1100
    choice = Choice(("a", "b", "c"), (1.0, 1.0, 3.0))
    picks = [choice.draw(rng) for _ in range(2000)]
    assert set(picks) == {"a", "c"}  # cumulative weights: "b" has none, "c" twice "a"'s
    assert 0.6 < picks.count("c") / len(picks) < 0.73
