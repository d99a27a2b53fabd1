"""A storm's exits: the first process goes through spawn and exit, the others are repeats of
it. A repeat must be what spawning and exiting the same process would have reported and sent:
same record but for pid and clock fields, same bytes on the wire, pids allocated as spawn
allocates them, CPUs taken in turn."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.emulator.model.accounting import CLOCK_FIELDS
from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.kernel import Kernel
from tsemu.emulator.model.profiles import PROFILES
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.model.tasks import ExitReport, RepeatExit


def _table(profile_name: str = "6.18") -> ProcessTable:
    table = ProcessTable(VirtualClock(start_ns=5 * 10**9), PROFILES[profile_name], 4)
    table.spawn(comm="init", pid=1)
    return table


def _one_by_one(table: ProcessTable, count: int, cpus: list[int]) -> list[ExitReport]:
    return [table.exit_task(table.spawn(comm="storm", cpu=cpus[i % len(cpus)]).tid)
            for i in range(count)]


def _sent_alike(kernel: Kernel, reports: list[ExitReport | RepeatExit],
                expected: list[ExitReport]) -> None:
    """Each report has the record of its one-by-one twin and sends its bytes (on a virtual
    clock every process of both runs starts and exits at the same instant)."""
    for seq, (got, want) in enumerate(zip(reports, expected, strict=True)):
        assert got.pid_values == want.pid_values
        event = (kernel.repeat_exit_event(seq, got) if isinstance(got, RepeatExit)
                 else kernel.exit_event(seq, got.tid, got.pid_values, got.tgid, None))
        assert event == kernel.exit_event(seq, want.tid, want.pid_values, want.tgid, None)


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
def test_repeats_are_what_spawn_and_exit_report_and_send(profile_name: str) -> None:
    stormed, plain = _table(profile_name), _table(profile_name)
    cpus = [2, 0, 3]
    reports = stormed.storm_exits(7, cpus)
    expected = _one_by_one(plain, 7, cpus)
    assert isinstance(reports[0], ExitReport)
    assert all(isinstance(r, RepeatExit) for r in reports[1:])
    assert [(r.cpu, r.tid, r.tgid, r.group_dead, r.tgid_values) for r in reports] == \
        [(r.cpu, r.tid, r.tgid, r.group_dead, r.tgid_values) for r in expected]
    _sent_alike(Kernel(stormed, profile=PROFILES[profile_name], nr_cpus=4), reports, expected)
    assert len(stormed) == len(plain) == 1
    assert stormed.spawn(comm="after").tid == plain.spawn(comm="after").tid


def test_repeats_skip_taken_pids_and_leave_nothing_behind() -> None:
    table = _table()
    table.spawn(comm="squatter", pid=table.spawn(comm="x").tid + 2)
    before = {t.tid for t in table}
    tids = [r.tid for r in table.storm_exits(6, [0])]
    assert len(set(tids)) == 6 and not set(tids) & before
    assert {t.tid for t in table} == before


def test_the_clock_fields_of_a_repeat_are_its_own() -> None:
    table = _table()
    assert isinstance(table.clock, VirtualClock)
    table.clock.advance(3.0)
    first, second = table.storm_exits(2, [1])
    assert isinstance(second, RepeatExit)
    values = second.pid_values
    assert [values[n] for n in CLOCK_FIELDS] == list(second.clock)
    assert values["ac_etime"] == 0 and values["ac_btime"] == table.clock.wall_seconds()
    assert values["ac_pid"] == values["ac_tgid"] == second.tid != first.tid


def test_a_storm_of_nothing_and_bad_cpus() -> None:
    table = _table()
    assert table.storm_exits(0, [0]) == []
    with pytest.raises(ValueError):
        table.storm_exits(3, [0, 9])
    assert len(table) == 1


def test_a_model_with_a_tgid_record_is_refused() -> None:
    table = _table()
    kernel = Kernel(table, profile=PROFILES["6.18"], nr_cpus=4)
    leader = table.spawn(comm="pair", threads=2)
    last = table.exit_group(leader.tid)[-1]
    assert last.tgid_values is not None
    with pytest.raises(ValueError, match="AGGR_TGID"):
        kernel.repeat_exit_event(0, RepeatExit(0, 77, last, (0, 0, 0, 0)))


@settings(max_examples=80, deadline=None)
@given(taken=st.sets(st.integers(2, 339), max_size=30), start=st.integers(290, 339),
       count=st.integers(1, 120))
def test_a_storms_pids_are_spawns_pids_through_wraps_and_gaps(taken: set[int], start: int,
                                                               count: int) -> None:
    """Taken in one go, a storm's pids are what spawning and exiting its processes one by one
    allocates: gaps skipped, the wrap to 300 at pid_max (several times over: a repeat's pid
    is free again at once), the cursor left where it would be."""
    def machine() -> ProcessTable:
        table = ProcessTable(VirtualClock(), PROFILES["6.18"], 1, pid_max=340, next_pid=start)
        table.spawn(comm="init", pid=1)
        for pid in sorted(taken):
            table.spawn(comm="squatter", pid=pid)
        return table

    stormed, plain = machine(), machine()
    assert [r.tid for r in stormed.storm_exits(count, [0])] == \
        [r.tid for r in _one_by_one(plain, count, [0])]
    assert stormed.spawn(comm="after").tid == plain.spawn(comm="after").tid


@pytest.mark.parametrize("profile_name", ["2.6.31", "6.18"])
def test_a_run_of_repeats_of_several_storms_across_the_seq_wrap(profile_name: str) -> None:
    """Repeats of two storms (two models, two clocks) mixed in one run, numbered across the
    2**32 wrap: each event is the one its record alone would make, under its own number."""
    table = _table(profile_name)
    assert isinstance(table.clock, VirtualClock)
    one = table.storm_exits(4, [0])[1:]
    table.clock.advance(2.5)
    two = table.storm_exits(4, [0])[1:]
    run = [one[0], one[1], two[0], one[2], two[1], two[2]]
    kernel = Kernel(table, profile=PROFILES[profile_name], nr_cpus=4)
    first = 2**32 - 3
    events = list(kernel.repeat_exit_events(first, run))
    assert events == [kernel.exit_event((first + i) % 2**32, r.tid, r.pid_values, r.tid, None)
                      for i, r in enumerate(run)]
    assert list(kernel.repeat_exit_events(5, two)) == [
        kernel.exit_event(5 + i, r.tid, r.pid_values, r.tid, None) for i, r in enumerate(two)]
    assert list(kernel.repeat_exit_events(0, [])) == []


@pytest.mark.parametrize("profile_name", ["2.6.31", "6.18"])
def test_a_storms_later_chunks_repeat_its_first_process(profile_name: str) -> None:
    """Chunks after the first repeat the storm's first process (no spawn each): their
    records, pids and events are still those of processes spawned and exited one by one."""
    stormed, plain = _table(profile_name), _table(profile_name)
    first = stormed.storm_exits(3, [0, 1])
    model = first[0]
    assert isinstance(model, ExitReport)
    later = stormed.storm_exits(5, [1, 0], model=model)
    assert all(isinstance(r, RepeatExit) and r.model is model for r in later)
    expected = _one_by_one(plain, 3, [0, 1]) + _one_by_one(plain, 5, [1, 0])
    got = first + later
    assert [(r.cpu, r.tid) for r in got] == [(r.cpu, r.tid) for r in expected]
    _sent_alike(Kernel(stormed, profile=PROFILES[profile_name], nr_cpus=4), got, expected)
    assert len(stormed) == len(plain) == 1
