"""A whole emulated machine: scenarios served, timelines played on the virtual clock, the
control protocol answering — checked by what a listener receives over the socket."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.client import Client
from tsemu.emulator.model.kernel import Kernel
from tsemu.emulator.scenario import build_table, load_scenario, parse_scenario, play
from tsemu.emulator.shell.control import ControlClient, answer, control_path
from tsemu.emulator.shell.runner import Emulator

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))


def load_virtual(path: Path) -> Any:
    """An example on the virtual clock (one written for the real clock too), so that its
    timeline plays the same bytes on each run."""
    return load_scenario(path).with_overrides(clock="virtual")


def expected_events(scenario_path: Path) -> dict[int, list[bytes]]:
    """Per CPU, the exit events a listener of every CPU must receive, built apart from the
    server: the scenario played on its own table, each CPU numbering its events from 0."""
    scenario = load_virtual(scenario_path)
    table = build_table(scenario)
    kernel = Kernel(table, profile=scenario.machine.profile, nr_cpus=scenario.machine.cpus,
                    families=scenario.machine.families())
    per_cpu: dict[int, list[bytes]] = defaultdict(list)
    for _event, reports in play(table, scenario):
        for report in reports:
            seq = len(per_cpu[report.cpu])
            per_cpu[report.cpu].append(kernel.exit_event(seq, report.tid, report.pid_values,
                                                         report.tgid, report.tgid_values))
    return per_cpu


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_each_example_delivers_the_exact_bytes(path: Path, short_tmp: Path) -> None:
    scenario = load_virtual(path)
    expected = expected_events(path)
    assert sum(len(v) for v in expected.values()) > 0, "every example exits something"
    emulator = Emulator(scenario, short_tmp / "genl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        async with await Client.connect(emulator.socket_path) as client:
            await client.set_rcvbuf(1 << 20)
            await client.register(f"0-{scenario.machine.cpus - 1}")
            end = max(e.at_ns for e in scenario.timeline) / 1e9
            await emulator.advance(end + 1)
            owner = {data: cpu for cpu, events in expected.items() for data in events}
            total = sum(len(v) for v in expected.values())
            assert len(owner) == total, "every expected event is distinct"
            received: dict[int, list[bytes]] = defaultdict(list)
            with trio.fail_after(10):
                for _ in range(total):
                    data = (await client.next_event()).encode()
                    assert data in owner, "an event the scenario does not produce"
                    received[owner[data]].append(data)
            with trio.move_on_after(0.1):
                extra = await client.next_event()
                pytest.fail(f"an extra event: {extra}")
        nursery.cancel_scope.cancel()
    assert dict(received) == dict(expected), "each CPU's events, in order, byte for byte"


VIRTUAL = """
[machine]
cpus = 2
clock = "virtual"

[[process]]
pid = 100
comm = "svc"

[[timeline]]
at = "1s"
exit = { pid = 100, code = 7 }
"""


async def test_advance_applies_due_events_in_order_and_sets_the_clock(short_tmp: Path) -> None:
    emulator = Emulator(parse_scenario(VIRTUAL), short_tmp / "genl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        async with await Client.connect(emulator.socket_path) as client:
            await client.register("0")
            assert await emulator.advance(0.5) == []
            assert 100 in emulator.table
            fired = await emulator.advance(0.5)
            assert [e.action for e in fired] == ["exit"]
            with trio.fail_after(2):
                event = await client.next_event()
        nursery.cancel_scope.cancel()
    values = event.records[0].values()
    assert values["ac_pid"] == 100 and values["ac_exitcode"] == 7 << 8
    assert emulator.now_seconds() == 1.0


async def test_control_socket_drives_the_machine(short_tmp: Path) -> None:
    emulator = Emulator(parse_scenario(VIRTUAL), short_tmp / "genl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        assert control_path(emulator.socket_path).exists()

        def script() -> dict[str, object]:
            with ControlClient(emulator.socket_path) as ctl:
                pid = ctl.call("spawn", comm="job", threads=3, cpu=1)["pid"]
                ps = ctl.call("ps")["tasks"]
                ctl.call("set", pid=pid, values={"nvcsw": 5, "blkio_delay_total": "3ms"})
                exited = ctl.call("exit", pid=pid, signal="SIGKILL")
                stats = ctl.call("stats")
                return {"pid": pid, "ps": ps, "exited": exited, "stats": stats}

        result = await trio.to_thread.run_sync(script)
        nursery.cancel_scope.cancel()
    pid = result["pid"]
    assert [t["comm"] for t in result["ps"] if t["tgid"] == pid] == ["job"] * 3  # type: ignore
    assert result["exited"] == {"exited": [pid, pid + 1, pid + 2], "tgid_record": True}
    assert result["stats"]["tasks"] == 1  # type: ignore[index]


@pytest.mark.parametrize(("line", "error"), [
    (b"not json", "Expecting value"),
    (b"[1, 2]", 'JSON object with an "op"'),
    (b'{"op": "fly"}', "unknown op 'fly'"),
    (b'{"op": "exit"}', "missing argument 'pid'"),
    (b'{"op": "exit", "pid": 4242}', "no task with pid 4242"),
    (b'{"op": "exit", "pid": 100, "signal": "SIGNOPE"}', "unknown signal"),
    (b'{"op": "spawn", "comm": "x", "cpu": 9}', "cpu"),
    (b'{"op": "spawn", "comm": "x", "counters": {"nope": 1}}', "nope"),
    (b'{"op": "set", "pid": 100, "values": {}}', "at least one"),
    (b'{"op": "storm", "count": 5, "cpus": "7"}', 'storm: cpus: bad cpulist "7"'),
    (b'{"op": "advance", "seconds": -1}', "-1 is not a number of seconds of at least 0"),
    # each of these once ended the server
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"op": "exit", "pid": 1e400}', "1e400 is too large a number"),
    (b'{"op": "exit", "pid": 100, "code": Infinity}', "Infinity is not a number"),
    (b'{"op": "set", "pid": -Infinity, "values": {"uid": 1}}', "-Infinity is not a number"),
    (b'{"op": "storm", "count": 1e400}', "too large a number"),
    (b'{"op": "advance", "seconds": 1e300}', "further than the kernel's clock goes"),
    (b'{"op": "spawn", "threads": 1000000}', "1000000 is out of range 1..10000"),
    (b'{"op": "spawn", "pid": 100}', "pid 100 is in use"),
    (b'{"op": "exit", "pid": 100, "code": "1"}', "expected an integer"),
    (b'{"op": "exit", "pid": 100, "bogus": 1}', "unknown argument 'bogus'"),
    (b'{"op": "set", "pid": 100, "values": {"uid": 1.5}}', "values: uid: expected an integer"),
    (b'{"op": "wait_listener", "timeout": 1e9}', "from 0 to 3600"),
    (b'{"op": "ps"}\xff', "not a JSON request"),
])
async def test_control_errors_are_answers_not_crashes(line: bytes, error: str,
                                                      short_tmp: Path) -> None:
    emulator = Emulator(parse_scenario(VIRTUAL), short_tmp / "genl.sock")
    reply = await answer(emulator, line)
    assert reply["ok"] is False and error in reply["error"], reply
    assert json.dumps(reply)


async def test_advance_is_refused_on_the_real_clock(short_tmp: Path) -> None:
    real = VIRTUAL.replace('clock = "virtual"', 'clock = "real"')
    emulator = Emulator(parse_scenario(real), short_tmp / "genl.sock")
    reply = await answer(emulator, b'{"op": "advance", "seconds": 1}')
    assert reply == {"ok": False, "error": 'the clock is real: advance works only with clock '
                                           '= "virtual"'}


async def test_mirror_host_answers_pids_the_scenario_does_not_define(short_tmp: Path) -> None:
    import os

    mirrored = VIRTUAL.replace('clock = "virtual"', 'clock = "virtual"\nmirror_host = true')
    emulator = Emulator(parse_scenario(mirrored), short_tmp / "genl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        async with await Client.connect(emulator.socket_path) as client:
            own = (await client.get_pid(os.getpid())).values()
            scripted = (await client.get_pid(100)).values()
        nursery.cancel_scope.cancel()
    assert own["ac_pid"] == os.getpid() and own["ac_uid"] == os.getuid()
    assert scripted["ac_comm"] == b"svc", "the scenario's own pids come from the table"
