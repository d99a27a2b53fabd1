"""The `reset` control op and the session-wide fixture built on it: a test must not be able to
see anything a test before it did on the same server.

Each test here plays two tests in a row on one `TsemuMachines` (the fixture's session object):
the first leaves every trace it can (listeners, exits, table changes, faults, the clock, pids,
clients still bound, files in the ports directory and the /proc view, client roots, a storm
still running), the second, on the handle the next test would get, looks for them. The last
two use the `tsemu` fixture itself, in order, as a suite would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tsemu.client import Client
from tsemu.emulator.shell.control import ControlClient, ControlError
from tsemu.pytest_plugin import EMPTY_VIRTUAL_MACHINE, TsemuHandle, TsemuMachines

TIMELINE_MACHINE = EMPTY_VIRTUAL_MACHINE + """
[[process]]
pid = 700
comm = "svc"
threads = 2
io = { read_bytes = "4MiB" }

[[timeline]]
at = "1s"
exit = { pid = 700 }

[[fault]]
kind = "errno"
cmd = "get"
pid = 9999
errno = "EAGAIN"
"""


@pytest.fixture
def machines() -> Iterator[TsemuMachines]:
    machines = TsemuMachines()
    try:
        yield machines
    finally:
        machines.close()


def view(handle: TsemuHandle) -> Path:
    return handle.socket_path.with_name(handle.socket_path.name + ".proc")


def ports(handle: TsemuHandle) -> set[str]:
    return set(os.listdir(handle.socket_path.with_name(handle.socket_path.name + ".ports")))


def test_the_machine_is_the_scenarios_again(machines: TsemuMachines) -> None:
    first = machines.handle(TIMELINE_MACHINE)
    fresh_ps = first.ps()
    fresh_pid = first.spawn(comm="probe")
    first.exit(fresh_pid)
    fresh_stats = first.stats()
    # What a test may do to the machine:
    job = first.spawn(comm="leftover", cpu=1, threads=3)
    first.set(1, comm="renamed", nvcsw=77)
    assert first.advance(2.5) == 2.5  # the timeline's exit of 700 happens
    first.call("fault", fault={"kind": "drop", "on": "events"})
    assert (view(first) / str(job)).is_dir()
    first.close()

    second = machines.handle(TIMELINE_MACHINE)
    assert second.process is first.process  # the same server, put back
    assert second.call("now")["now"] == 0
    assert [t for t in second.ps() if not t["real"]] == [t for t in fresh_ps if not t["real"]]
    assert second.spawn(comm="probe") == fresh_pid  # pids are allocated from the start again
    assert not (view(second) / str(job)).exists()
    assert (view(second) / "1" / "comm").read_text() == "init\n"
    assert (view(second) / "700").is_dir()
    assert [f["kind"] for f in second.call("faults")["faults"]] == ["errno"]  # the scenario's
    stats = second.stats()
    assert stats["timeline_skipped"] == 0
    # the one client: this test's handle (the test process as a client root)
    assert [str(c["port"]) for c in stats["clients"]] == sorted(ports(second))
    assert stats["server"]["datagrams"] == 0
    assert [(c["events"], c["seq"]) for c in stats["cpus"]] == [(0, 0), (0, 0)]
    assert fresh_stats["cpus"][0]["seq"] == 0  # (no listener: an exit takes no number)
    # and the timeline plays again
    second.advance(1)
    assert 700 not in {t["pid"] for t in second.ps()}
    second.close()


async def _listen(socket_path: Path, cpus: str) -> Client:
    client = await Client.connect(socket_path)
    await client.register(cpus)
    return client


def test_listeners_and_their_clients_are_dropped(machines: TsemuMachines) -> None:
    first = machines.handle(EMPTY_VIRTUAL_MACHINE)
    sock = first.socket_path

    async def before() -> Client:
        old = await _listen(sock, "0-1")
        heard = first.spawn(comm="heard", cpu=0)
        first.exit(heard)
        with trio.fail_after(5):
            event = await old.next_event()
        assert event.records[0].id == heard
        return old

    old = trio.run(before)
    assert first.listeners() == {0: [old.port], 1: [old.port]}
    assert old.path is not None
    assert old.path.name in ports(first)
    first.close()

    second = machines.handle(EMPTY_VIRTUAL_MACHINE)
    assert second.listeners() == {}
    # The old socket, still bound, keeps its port id (as on the kernel, no new socket can be
    # given it while it lives): besides it, only the new handle's own family socket.
    assert old.path.name in ports(second)
    assert len(ports(second)) == 2

    async def after() -> None:
        # The old client, still bound, hears nothing of the new test's exits...
        new = await _listen(sock, "0")
        assert new.port != old.port
        pid = second.spawn(comm="new", cpu=0)
        second.exit(pid)
        with trio.fail_after(5):
            event = await new.next_event()
        assert event.records[0].id == pid
        assert event.header.seq == 0  # the CPU's sequence numbers start again
        with trio.move_on_after(0.3):
            await old.next_event()
            pytest.fail("a client of the test before heard an exit")
        # ...and is answered nothing: it is no client any more.
        await old.send(b"\x14\x00\x00\x00\x10\x00\x05\x00\x01\x00\x00\x00\x00\x00\x00\x00"
                       b"\x03\x01\x00\x00")
        with trio.move_on_after(0.3):
            await old.recv()
            pytest.fail("a client of the test before was answered")
        new.close()
        old.close()

    trio.run(after)
    assert second.stats()["refused_senders"] >= 1
    # Once closed, its file is gone too.
    assert old.path.name not in ports(second)
    second.close()


def test_client_roots_of_the_test_before_are_forgotten(machines: TsemuMachines,
                                                       tmp_path: Path) -> None:
    first = machines.handle(EMPTY_VIRTUAL_MACHINE)
    # A process of the first test that registered itself as a client root, and stays: an
    # orphan (a child of the test process would be in the test process's family anyway).
    said = tmp_path / "root"
    script = ("import sys, time; from pathlib import Path; "
              "from tsemu.family import FamilyChannel; "
              "c = FamilyChannel.open(Path(sys.argv[1])); ok = c.register_root(); "
              "Path(sys.argv[2]).write_text(f'{ok} {__import__(\"os\").getpid()}'); "
              "time.sleep(60)")
    subprocess.run(["sh", "-c", 'setsid "$0" -c "$1" "$2" "$3" >/dev/null 2>&1 &',
                    sys.executable, script, str(first.socket_path), str(said)], check=True)
    deadline = time.monotonic() + 20
    while not said.exists() or not said.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ok, pid_text = said.read_text().split()
    stray = int(pid_text)
    try:
        assert ok == "True"
        assert stray in {t["pid"] for t in first.ps() if t["real"]}
        first.close()

        second = machines.handle(EMPTY_VIRTUAL_MACHINE)
        real = {t["pid"] for t in second.ps() if t["real"]}
        assert stray not in real
        assert os.getpid() in real  # the fixture registers the test process again
        # and the test process's children are reported as before
        done = second.run([sys.executable, "-c", "pass"])
        assert done.returncode == 0
        second.close()
    finally:
        os.kill(stray, signal.SIGKILL)


def test_a_stale_port_file_and_a_killed_client_leave_nothing(machines: TsemuMachines) -> None:
    first = machines.handle(EMPTY_VIRTUAL_MACHINE)
    listener = first.popen([sys.executable, "-c",
                            "import socket, time\n"
                            "s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)\n"
                            "s.bind((0, 0)); print(s.getsockname()[0], flush=True)\n"
                            "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None
    port = listener.stdout.readline().strip()
    assert port in ports(first)
    listener.send_signal(signal.SIGKILL)  # its port file stays behind
    listener.wait()
    assert port in ports(first)
    first.close()
    second = machines.handle(EMPTY_VIRTUAL_MACHINE)
    assert port not in ports(second)
    second.close()


def test_a_storm_under_way_is_stopped(machines: TsemuMachines) -> None:
    first = machines.handle(EMPTY_VIRTUAL_MACHINE)
    fresh_pid = first.spawn(comm="probe")
    answers: list[dict[str, object]] = []

    def storm() -> None:
        with ControlClient(first.socket_path) as c:
            answers.append(c.call("storm", count=1_000_000, rate=1000, cpus="0"))

    thread = threading.Thread(target=storm)
    thread.start()
    deadline = time.monotonic() + 10
    while first.spawn(comm="probe") < fresh_pid + 20:  # the storm takes pids as it goes
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first.close()
    second = machines.handle(EMPTY_VIRTUAL_MACHINE)
    thread.join(timeout=10)
    assert answers and answers[0]["stopped"] is True
    made = answers[0]["exits"]
    assert isinstance(made, int) and 0 < made < 1_000_000
    time.sleep(0.05)  # (a storm still running would take the next pid meanwhile)
    assert second.spawn(comm="after") == fresh_pid
    second.close()


def test_a_broken_server_is_started_again(machines: TsemuMachines) -> None:
    first = machines.handle(EMPTY_VIRTUAL_MACHINE)
    first.process.kill()
    first.process.wait()
    first.close()
    second = machines.handle(EMPTY_VIRTUAL_MACHINE)
    assert second.process is not first.process
    assert [t["pid"] for t in second.ps() if not t["real"]] == [1]
    second.close()


def test_ctl_reset(machines: TsemuMachines) -> None:
    handle = machines.handle(EMPTY_VIRTUAL_MACHINE)
    handle.spawn(comm="gone")
    env = {**os.environ, "TSEMU_SOCKET": str(handle.socket_path)}
    done = subprocess.run([sys.executable, "-m", "tsemu.cli.app", "ctl", "reset"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [t["comm"] for t in handle.ps() if not t["real"]] == ["init"]
    with pytest.raises(ControlError, match="unknown argument"):
        handle.call("reset", everything=True)
    handle.close()


# -- the fixture, as a suite uses it: these two run in this order, on one server -------------

_SEEN: dict[str, object] = {}


def test_fixture_first_leaves_traces(tsemu: TsemuHandle) -> None:
    _SEEN["process"] = tsemu.process.pid
    _SEEN["pid"] = tsemu.spawn(comm="first")
    tsemu.advance(3)
    tsemu.call("fault", fault={"kind": "pause", "duration": "1h"})
    _SEEN["leftover"] = tsemu.spawn(comm="left")


def test_fixture_second_sees_none_of_them(tsemu: TsemuHandle) -> None:
    if "process" not in _SEEN:
        pytest.skip("runs after test_fixture_first_leaves_traces")
    assert tsemu.process.pid == _SEEN["process"]  # one server for the session
    assert tsemu.call("now")["now"] == 0
    assert tsemu.call("faults")["faults"] == []
    assert [t["comm"] for t in tsemu.ps() if not t["real"]] == ["init"]
    assert tsemu.spawn(comm="second") == _SEEN["pid"]
    # a pause fault of the test before would hold this GET for an hour
    env = tsemu.env
    done = tsemu.run([sys.executable, "-c",
                      "import json, os, trio\n"
                      "from tsemu.client import Client\n"
                      "async def main():\n"
                      "    async with await Client.connect(os.environ['TSEMU_SOCKET']) as c:\n"
                      "        with trio.fail_after(5):\n"
                      "            print(json.dumps((await c.get_pid(1)).values()['ac_pid']))\n"
                      "trio.run(main)\n"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 1
