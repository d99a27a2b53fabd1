"""Faults on demand: what each kind does to a real client over the socket, from the control
protocol and from a scenario's [[fault]] table."""

from __future__ import annotations

import errno
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.client import Client, NetlinkError
from tsemu.emulator.scenario import ScenarioError, parse_scenario
from tsemu.emulator.shell.control import answer
from tsemu.emulator.shell.runner import Emulator

from .emulating import emulator as served

SCENARIO = """
[machine]
cpus = 2
clock = "virtual"
[[process]]
pid = 100
comm = "app"
"""


def running(short_tmp: Path, text: str = SCENARIO) -> AbstractAsyncContextManager[Emulator]:
    """This file's scenario (or `text`) served until the block ends."""
    return served(short_tmp, text)


async def fault(emulator: Emulator, **keys: Any) -> dict[str, Any]:
    import json

    reply = await answer(emulator, json.dumps({"op": "fault", "fault": keys}).encode())
    assert reply["ok"], reply
    return reply["fault"]  # type: ignore[no-any-return]


async def exits(emulator: Emulator, count: int, cpu: int = 0) -> list[int]:
    pids = []
    for _ in range(count):
        (pid, *_) = await emulator.spawn(comm="job", cpu=cpu)
        await emulator.exit(pid)
        pids.append(pid)
    return pids


async def received(client: Client, seconds: float = 0.3) -> list[int]:
    got = []
    with trio.move_on_after(seconds):
        while True:
            event = await client.next_event()
            got.append(event.records[0].id)
    return got


async def test_an_errno_fault_answers_the_request_it_hits_then_is_spent(short_tmp: Path) -> None:
    async with running(short_tmp) as emu, await Client.connect(emu.socket_path) as client:
        await fault(emu, kind="errno", cmd="get", pid=100, errno="EAGAIN", count=1)
        with pytest.raises(NetlinkError) as caught:
            await client.get_pid(100)
        assert caught.value.errno == errno.EAGAIN
        assert (await client.get_pid(100)).id == 100
        assert (await client.family_id()) == 0x1F  # other commands untouched


async def test_dropped_events_are_lost_silently_and_the_rest_arrive(short_tmp: Path) -> None:
    async with running(short_tmp) as emu, await Client.connect(emu.socket_path) as client:
        await client.register("0-1")
        await fault(emu, kind="drop", on="events", cpu=1, count=2)
        on_zero = await exits(emu, 2, cpu=0)
        on_one = await exits(emu, 4, cpu=1)
        got = await received(client)
    assert got == on_zero + on_one[2:]


async def test_duplicated_and_reordered_events(short_tmp: Path) -> None:
    async with running(short_tmp) as emu, await Client.connect(emu.socket_path) as client:
        await client.register("0")
        await fault(emu, kind="duplicate", on="events", count=1)
        first = await exits(emu, 2)
        await fault(emu, kind="reorder", on="events", count=1)
        second = await exits(emu, 2)
        got = await received(client)
    assert got == [first[0], first[0], first[1], second[1], second[0]]


async def test_a_delayed_reply_and_a_paused_server_arrive_late(short_tmp: Path) -> None:
    async with running(short_tmp) as emu, await Client.connect(emu.socket_path) as client:
        await fault(emu, kind="delay", on="replies", delay="300ms", count=1)
        started = time.monotonic()
        await client.get_pid(100)
        assert time.monotonic() - started >= 0.3
        await fault(emu, kind="pause", duration="400ms")
        started = time.monotonic()
        await client.get_pid(100)
        assert time.monotonic() - started >= 0.35


async def test_a_budget_fault_shrinks_a_listeners_receive_buffer(short_tmp: Path) -> None:
    async with running(short_tmp) as emu, await Client.connect(emu.socket_path) as client:
        await client.register("0")
        await fault(emu, kind="budget", port=client.port, budget="8KiB")
        await exits(emu, 20)
        with pytest.raises(OSError) as caught:
            await received(client)
        assert caught.value.errno == errno.ENOBUFS
        assert emu.server.clients[client.port].outbox.dropped > 0


async def test_faults_are_listed_and_cleared(short_tmp: Path) -> None:
    async with running(short_tmp) as emu:
        made = await fault(emu, kind="drop", pid=7, probability=0.5)
        assert made == {"id": 1, "kind": "drop", "hits": 0, "on": "both", "pid": 7,
                        "probability": 0.5}
        listed = await answer(emu, b'{"op": "faults"}')
        assert listed["faults"] == [made]
        assert (await answer(emu, b'{"op": "fault_clear", "id": 9}'))["ok"] is False
        assert (await answer(emu, b'{"op": "fault_clear"}'))["cleared"] == 1


@pytest.mark.parametrize(("keys", "error"), [
    ('{"kind": "explode"}', 'unknown fault kind "explode"'),
    ('{"kind": "errno"}', "a fault of kind errno needs errno"),
    ('{"kind": "errno", "errno": "EWHAT"}', 'unknown errno "EWHAT"'),
    ('{"kind": "budget", "budget": "8KiB"}', "needs the port"),
    ('{"kind": "drop", "on": "sideways"}', 'unknown target "sideways"'),
    ('{"kind": "drop", "probability": 2}', "not a share"),
    ('{"kind": "drop", "at": "2s", "until": "1s"}', "ends before it begins"),
    ('{"kind": "drop", "bogus": 1}', "bogus: unknown key"),
])
async def test_a_bad_fault_is_refused(short_tmp: Path, keys: str, error: str) -> None:
    async with running(short_tmp) as emu:
        reply = await answer(emu, b'{"op": "fault", "fault": ' + keys.encode() + b"}")
        assert reply["ok"] is False and error in reply["error"], reply


async def test_a_scenarios_fault_holds_in_its_window_of_scenario_time(short_tmp: Path) -> None:
    text = SCENARIO + """
[[fault]]
kind = "errno"
cmd = "get"
errno = "ENOMEM"
at = "1s"
until = "2s"
"""
    async with running(short_tmp, text) as emu, await Client.connect(emu.socket_path) as client:
        assert (await client.get_pid(100)).id == 100
        await emu.advance(1.5)
        with pytest.raises(NetlinkError) as caught:
            await client.get_pid(100)
        assert caught.value.errno == errno.ENOMEM
        await emu.advance(1)
        assert (await client.get_pid(100)).id == 100


def test_a_scenarios_bad_fault_is_named() -> None:
    with pytest.raises(ScenarioError, match=r"fault\[0\]: a fault of kind delay needs delay"):
        parse_scenario('[[fault]]\nkind = "delay"\n', "f.toml")
