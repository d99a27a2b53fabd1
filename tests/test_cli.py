"""The command line as a user drives it: `tsemu serve` in the background, `tsemu ctl` verbs
from a shell, error messages and exit statuses, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tsemu.client import Client

TSEMU = [sys.executable, "-m", "tsemu.cli.app"]
ROOT = Path(__file__).parent.parent

VIRTUAL = """
[machine]
cpus = 2
clock = "virtual"

[[process]]
pid = 1
comm = "init"
state = "sleeping"

[[timeline]]
at = "2s"
spawn = { pid = 500, comm = "late" }
"""


def tsemu(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TSEMU, *args], capture_output=True, text=True, timeout=60,
                          check=check)


class Served:
    def __init__(self, socket: Path, proc: subprocess.Popen[str]) -> None:
        self.socket = socket
        self.proc = proc

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return tsemu("ctl", "--socket", str(self.socket), *args)


def start(socket: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*TSEMU, "serve", "--socket", str(socket), *args],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.strip() == f"tsemu: listening on {socket}", line + proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    status = proc.wait(timeout=20)
    if proc.stderr is not None:
        proc.stderr.close()
    return status


@pytest.fixture
def served(short_tmp: Path) -> Iterator[Served]:
    scenario = short_tmp / "machine.toml"
    scenario.write_text(VIRTUAL)
    socket = short_tmp / "genl.sock"
    proc = start(socket, "--scenario", str(scenario))
    try:
        yield Served(socket, proc)
    finally:
        if proc.poll() is None:
            stop(proc)


def test_shell_session_with_ctl(served: Served) -> None:
    spawned = served.ctl("spawn", "--comm", "worker", "--threads", "2", "--cpu", "1",
                         "--counter", "blkio_delay_total=3ms")
    assert spawned.returncode == 0, spawned.stderr
    pid = int(spawned.stdout)
    ps = served.ctl("ps")
    rows = [line.split() for line in ps.stdout.splitlines()[1:]]
    assert [r[-1] for r in rows if r[1] == str(pid)] == ["worker", "worker"]
    assert served.ctl("set", str(pid), "nvcsw=4", "state=sleeping").returncode == 0
    assert "2 s" not in served.ctl("advance", "1").stdout
    advanced = served.ctl("advance", "1.5")
    assert advanced.stdout.startswith("now 2.500000 s; 1 event(s)")
    assert "late" in served.ctl("ps").stdout
    exited = served.ctl("exit", str(pid), "--signal", "KILL")
    assert exited.returncode == 0 and exited.stdout.split() == [str(pid), str(pid + 1)]
    assert served.ctl("listeners").stdout.strip() == "no listeners"
    stats = json.loads(served.ctl("stats").stdout)
    assert stats["tasks"] == 2 and stats["now"] == 2.5
    storm = served.ctl("storm", "--count", "50", "--cpus", "0-1")
    assert storm.returncode == 0 and storm.stdout.startswith("50 exits in ")


def test_a_client_can_query_the_served_machine(served: Served) -> None:
    async def query() -> int:
        async with await Client.connect(served.socket) as client:
            return (await client.get_pid(1)).id

    assert trio.run(query) == 1


@pytest.mark.parametrize(("args", "status", "message"), [
    (("exit", "424242"), 1, "tsemu: no task with pid 424242"),
    (("exit", "1", "--code", "1", "--signal", "KILL"), 2, "not both"),
    (("exit", "1", "--core"), 2, "--core needs --signal"),
    (("exit", "1", "--signal", "SIGWHAT"), 1, "unknown signal"),
    (("set", "1", "bogus"), 2, "expected FIELD=VALUE"),
    (("set", "1", "bogus=1"), 1, 'set: values: bogus: unknown field "bogus"; fields: comm,'),
    (("advance", "-1"), 2, ""),
    (("spawn", "--cpu", "7"), 1, "cpu"),
    (("storm", "--count", "5", "--cpus", "9"), 1, 'storm: cpus: bad cpulist "9"'),
])
def test_ctl_errors(served: Served, args: tuple[str, ...], status: int, message: str) -> None:
    result = served.ctl(*args)
    assert result.returncode == status, result
    assert message in result.stderr


def test_ctl_without_a_server_names_the_socket(short_tmp: Path) -> None:
    result = tsemu("ctl", "--socket", str(short_tmp / "none.sock"), "ps")
    assert result.returncode == 1
    assert f"no tsemu control socket at {short_tmp / 'none.sock.ctl'}" in result.stderr


def test_serve_rejects_a_bad_scenario_with_its_name(short_tmp: Path) -> None:
    bad = short_tmp / "bad.toml"
    bad.write_text("[machine]\ncpus = 0\n")
    result = tsemu("serve", "--socket", str(short_tmp / "s.sock"), "--scenario", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "machine.cpus" in result.stderr
    assert not (short_tmp / "s.sock").exists()


def test_serve_options_are_checked(short_tmp: Path) -> None:
    sock = str(short_tmp / "s.sock")
    assert tsemu("serve", "--socket", sock, "--kernel", "9.9").returncode == 2
    assert "unknown kernel profile" in tsemu("serve", "--socket", sock, "--kernel",
                                             "9.9").stderr
    assert tsemu("serve", "--socket", sock, "--admin", "root").returncode == 2
    assert tsemu("serve", "--socket", sock, "--cpus", "0").returncode == 2


def test_second_server_on_the_same_socket_is_refused(served: Served) -> None:
    result = tsemu("serve", "--socket", str(served.socket))
    assert result.returncode == 1
    assert "another server is listening" in result.stderr


def test_sigterm_and_sigint_stop_cleanly_and_remove_the_sockets(short_tmp: Path) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        socket = short_tmp / "genl.sock"
        proc = start(socket)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        proc.stderr.close()
        assert not socket.exists()
        assert not Path(str(socket) + ".ctl").exists()


def test_help_teaches_with_examples() -> None:
    for verb in (["serve"], ["run"], ["ctl"], ["ctl", "spawn"], ["ctl", "exit"]):
        result = tsemu(*verb, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, verb


def test_make_run_serves_the_default_machine_at_once(short_tmp: Path) -> None:
    socket = short_tmp / "genl.sock"
    env = {**os.environ, "TSEMU_SOCKET": str(socket)}
    started = time.monotonic()
    proc = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
        assert socket.exists(), "make run did not bring the emulator up"

        async def query() -> list[str]:
            async with await Client.connect(socket) as client:
                await client.get_pid(1)
                return [f.name for f in await client.families()]

        assert trio.run(query) == ["nlctrl", "TASKSTATS"]
        assert time.monotonic() - started < 60
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()


def test_a_long_load_shows_progress(short_tmp: Path) -> None:
    big = short_tmp / "big.toml"
    rows = ["[machine]", "cpus = 2", 'clock = "virtual"']
    for i in range(8000):
        rows += ["[[process]]", f"pid = {1000 + i}", f'comm = "p{i}"', "# padding " + "x" * 20]
    big.write_text("\n".join(rows) + "\n")
    socket = short_tmp / "genl.sock"
    proc = subprocess.Popen([*TSEMU, "serve", "--socket", str(socket), "--scenario", str(big)],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = [proc.stderr.readline().strip() for _ in range(3)]
    stop(proc)
    assert lines[0].startswith(f"tsemu: loading {big} (") and lines[0].endswith("KiB)...")
    assert lines[1].startswith("tsemu: loaded 8000 tasks and 0 timeline events in ")
    assert lines[2] == f"tsemu: listening on {socket}"
