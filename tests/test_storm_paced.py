"""Paced exits: `storm` with a rate (control op, `tsemu ctl storm --rate`) and the scenario's
storm generator, on the virtual clock (exact instants) and on the real one (paced)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from tsemu.client import Client
from tsemu.emulator.model.clock import NSEC_PER_SEC
from tsemu.emulator.scenario import ScenarioError, parse_scenario
from tsemu.emulator.shell.control import answer
from tsemu.wire import TaskstatsReply

from .emulating import emulator, listen

VIRTUAL = '[machine]\ncpus = 2\nclock = "virtual"\n'
REAL = '[machine]\ncpus = 2\nclock = "real"\n'

async def events(client: Client, count: int, timeout: float = 30) -> list[TaskstatsReply]:
    got = []
    with trio.fail_after(timeout):
        for _ in range(count):
            got.append(await client.next_event())
    return got


def btime(event: TaskstatsReply) -> int:
    return int(event.records[0].values()["ac_btime"])


# -- storm with a rate -------------------------------------------------------------------------


async def test_a_paced_storm_takes_count_over_rate_and_loses_nothing(short_tmp: Path) -> None:
    async with emulator(short_tmp, VIRTUAL) as emu:
        both = await listen(emu, "0-1")
        result = await emu.storm(600, [0, 1], rate=2000)
        got = await events(both, 600)
        both.close()
    # 600 exits at 2000 a second: the last is due 599/2000 s after the first.
    assert 0.29 <= result.seconds < 0.6
    assert result.exits == 600 and result.deliveries == 600 and not result.stopped
    pids = sorted(e.records[0].id for e in got)
    on = {pid: i % 2 for i, pid in enumerate(pids)}  # spread evenly over the CPUs, in turn
    for cpu in (0, 1):
        mine = [e for e in got if on[e.records[0].id] == cpu]
        assert [e.header.seq for e in mine] == list(range(300))
        assert [e.records[0].id for e in mine] == pids[cpu::2]


async def test_a_paced_storm_is_spread_over_its_time(short_tmp: Path) -> None:
    """Exits arrive as they fall due, not in one burst at the end."""
    async with emulator(short_tmp, VIRTUAL) as emu:
        client = await listen(emu, "0")
        arrivals: list[float] = []

        async def read() -> None:
            for _ in range(200):
                await client.next_event()
                arrivals.append(time.perf_counter())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            started = time.perf_counter()
            await emu.storm(200, [0], rate=500)
        client.close()
    offsets = [t - started for t in arrivals]
    # exit i is due i/500 s after the first; allow the scheduler its slack
    assert offsets[99] > 0.15 and offsets[-1] > 0.35
    assert offsets[0] < 0.1


async def test_a_paced_storm_leaves_the_table_to_others_meanwhile(short_tmp: Path) -> None:
    async with emulator(short_tmp, VIRTUAL) as emu:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: emu.storm(100, [0], rate=200))  # half a second
            await trio.sleep(0.1)
            with trio.fail_after(0.2):  # not after the storm: between its exits
                tids = await emu.spawn(comm="between")
            assert tids[0] in emu.table


@pytest.mark.parametrize("request_line, problem", [
    ('{"op": "storm", "duration": "1s"}', "a duration needs a rate"),
    ('{"op": "storm", "count": 5, "duration": "1s", "rate": 10}', "not both"),
    ('{"op": "storm"}', "missing argument 'count'"),
    ('{"op": "storm", "count": 5, "rate": 0}', "rate: a rate is a number"),
    ('{"op": "storm", "count": 5, "rate": -3}', "rate: a rate is a number"),
    ('{"op": "storm", "count": 5, "rate": true}', "rate: a rate is a number"),
    ('{"op": "storm", "count": 5, "rate": 1e300}', "rate: a rate is a number"),
    ('{"op": "storm", "rate": 1e9, "duration": "1h"}', "at most 10,000,000"),
])
async def test_storm_arguments_are_checked(short_tmp: Path, request_line: str,
                                           problem: str) -> None:
    async with emulator(short_tmp, VIRTUAL) as emu:
        reply = await answer(emu, request_line.encode())
    assert reply["ok"] is False and problem in reply["error"]


async def test_storm_by_rate_and_duration(short_tmp: Path) -> None:
    async with emulator(short_tmp, VIRTUAL) as emu:
        reply = await answer(emu, b'{"op": "storm", "rate": 400, "duration": "250ms"}')
    assert reply["ok"] is True and reply["exits"] == 100 and reply["stopped"] is False
    assert reply["seconds"] >= 0.24


def test_ctl_storm_rate(tmp_path: Path) -> None:
    from tsemu.pytest_plugin import EMPTY_VIRTUAL_MACHINE, TsemuMachines

    machines = TsemuMachines()
    try:
        handle = machines.handle(EMPTY_VIRTUAL_MACHINE)
        env = {**os.environ, "TSEMU_SOCKET": str(handle.socket_path)}
        tsemu = [sys.executable, "-m", "tsemu.cli.app", "ctl"]
        done = subprocess.run([*tsemu, "storm", "--rate", "1000", "--count", "200", "--cpus",
                               "0"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("200 exits in 0.")
        seconds = float(done.stdout.split()[3])
        assert seconds >= 0.19
        done = subprocess.run([*tsemu, "storm", "--rate", "1000", "--duration", "50ms"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("50 exits"), done.stderr
        done = subprocess.run([*tsemu, "storm", "--duration", "50ms"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "--duration needs --rate" in done.stderr
        handle.close()
    finally:
        machines.close()


# -- the storm generator -----------------------------------------------------------------------

STORMY = VIRTUAL + """
[[process]]
pid = 700
comm = "svc"
cpu = 0

[[timeline]]
at = "1600ms"
exit = { pid = 700 }

[[generator]]
kind = "storm"
rate = 4
count = 6
start = "1s"
cpus = "0"
"""


async def test_a_storm_generator_exits_at_its_instants_among_the_timeline(
        short_tmp: Path) -> None:
    async with emulator(short_tmp, STORMY) as emu:
        client = await listen(emu, "0")
        boot = emu.scenario.machine.boot_wall_seconds
        start_s = emu.scenario.machine.start_ns // NSEC_PER_SEC
        await emu.advance(1.3)  # exits due at 1.0 and 1.25 s
        first = await events(client, 2)
        with trio.move_on_after(0.1):
            await client.next_event()
            pytest.fail("an exit before its time")
        await emu.advance(10)  # 1.5, then the timeline's exit of 700 at 1.6, then 1.75 ...
        rest = await events(client, 5)
        client.close()
        stats = emu.storms[0][1]
    got = first + rest
    assert [e.header.seq for e in got] == list(range(7))
    assert got[3].records[0].id == 700
    storm_pids = [e.records[0].id for e in got if e.records[0].id != 700]
    assert storm_pids == sorted(storm_pids) and len(set(storm_pids)) == 6
    # ac_btime: the wall second of each exit (boot + start + 1 s, then + 2 s from 2.0 s on)
    assert [btime(e) for e in got if e.records[0].id != 700] == \
        [boot + start_s + 1] * 4 + [boot + start_s + 2] * 2
    assert stats.done == 6


async def test_two_storm_generators_interleave_by_time(short_tmp: Path) -> None:
    text = VIRTUAL + """
[[generator]]
kind = "storm"
rate = 10
count = 5
cpus = "0"

[[generator]]
kind = "storm"
rate = 20
count = 4
start = "50ms"
cpus = "0"
"""
    async with emulator(short_tmp, text) as emu:
        client = await listen(emu, "0")
        await emu.advance(1)
        got = await events(client, 8)  # (the first storm's first exit was at the start)
        client.close()
    # a: 0 (at the start: before the listener), 100, 200, 300, 400 ms; b: 50, 100, 150, 200
    # ms. At the same instant the earlier generator goes first. Pids in the order of exits.
    pids = [e.records[0].id for e in got]
    assert pids == sorted(pids)
    assert [e.header.seq for e in got] == list(range(8))


async def test_a_storm_generator_on_the_real_clock_paces_itself(short_tmp: Path) -> None:
    text = REAL + """
[[generator]]
kind = "storm"
rate = 1000
duration = "300ms"
start = "200ms"
cpus = "1"
"""
    async with emulator(short_tmp, text) as emu:
        client = await listen(emu, "1")
        started = time.perf_counter()
        got = await events(client, 300)
        took = time.perf_counter() - started
        client.close()
        assert emu.storms[0][1].done == 300
    assert [e.header.seq for e in got] == list(range(300))
    assert 0.45 <= took < 5


async def test_a_reset_plays_the_storm_generator_again(short_tmp: Path) -> None:
    async with emulator(short_tmp, STORMY) as emu:
        await emu.advance(5)
        first = [progress.done for _, progress in emu.storms]
        await emu.reset()
        again = [progress.done for _, progress in emu.storms]
        await emu.advance(5)
        assert [progress.done for _, progress in emu.storms] == [6]
    assert first == [6] and again == [0]


@pytest.mark.parametrize("table, problem", [
    ('kind = "storm"\nrate = 5', r"needs count \(exits\) or duration"),
    ('kind = "storm"\nrate = 5\ncount = 3\nduration = "1s"', "not both"),
    ('kind = "storm"\ncount = 3', "rate"),
    ('kind = "storm"\nrate = 5\ncount = 3\nseed = 1', "a storm generator has no seed"),
    ('kind = "storm"\nrate = 1e9\nduration = "1h"', "at most 10,000,000"),
    ('kind = "storm"\nrate = 1\nduration = "10ms"', "make none"),
    ('kind = "storm"\nrate = 5\ncount = 3\ncpus = "7"', "cpus"),
])
def test_storm_generator_keys_are_checked(table: str, problem: str) -> None:
    with pytest.raises(ScenarioError, match=problem):
        parse_scenario(VIRTUAL + "\n[[generator]]\n" + table + "\n")


def test_a_storm_plan_says_when_each_exit_is_due() -> None:
    plan = parse_scenario(VIRTUAL + '[[generator]]\nkind = "storm"\nrate = 3\ncount = 7\n'
                          'start = "1s"\n').storms[0]
    due = [plan.due_ns(i) for i in range(7)]
    assert due == [1_000_000_000, 1_333_333_333, 1_666_666_666, 2_000_000_000,
                   2_333_333_333, 2_666_666_666, 3_000_000_000]
    for end in (0, 1_000_000_000, 1_000_000_001, 2_000_000_000, 2_000_000_001, 10**10):
        assert plan.due_before(end) == sum(1 for d in due if d < end)

