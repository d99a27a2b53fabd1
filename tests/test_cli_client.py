"""The client verbs as a user runs them: `tsemu get`, `tsemu listen`, `tsemu families`, against a
`tsemu serve` subprocess on a known virtual-clock machine and, with --host, against the running
kernel (skipped, with the reason, where it has no taskstats)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostkernel import host_cpu_counts, require_host_taskstats
from tsemu.wire.taskstats_struct import layout

TSEMU = [sys.executable, "-m", "tsemu.cli.app"]

#: A machine with known counters (records round the I/O counters, syscall counts included, down
#: to a multiple of 1024, as the kernel does). Boot at 2024-01-01T00:00:00Z (1704067200), the
#: scenario starts one hour later; db started 10 s before that, at 00:59:50 (btime 1704070790).
MACHINE = """
[machine]
cpus = 2
kernel = "6.18"
clock = "virtual"
start = "1h"
boot_time = 2024-01-01T00:00:00Z

[[process]]
pid = 1
comm = "init"
state = "sleeping"

[[process]]
pid = 700
comm = "db"
ppid = 1
uid = 1000
gid = 1001
cpu = 1
age = "10s"
exe = { dev = "259:2", inode = 4242 }
delays.cpu = { count = 4, total = "10ms", max = "5ms", min = "1ms" }
delays.blkio = { count = 2, total = "3ms" }
times = { utime = "1.5s", stime = "250ms" }
memory = { hiwater_rss = "8MiB", hiwater_vm = "64MiB" }
io.read_char = "1MiB"
io.write_char = "4KiB"
io.read_syscalls = 3_100
io.write_syscalls = 2_050
io.read_bytes = "2MiB"
io.write_bytes = "1MiB"
faults = { minflt = 1200, majflt = 3 }
switches = { nvcsw = 50, nivcsw = 7 }

[[process]]
pid = 800
comm = "web"
ppid = 1
uid = 33
gid = 33
cpu = 0
age = "1m"
delays.cpu = { count = 10, total = "20ms" }
times = { utime = "2s", stime = "1s" }

[[process.thread]]
tid = 801
comm = "web:worker"
cpu = 1
delays.cpu = { count = 30, total = "60ms" }
delays.swapin = { count = 1, total = "7ms" }
times = { utime = "4s", stime = "3s" }
"""


def tsemu(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TSEMU, *args], capture_output=True, text=True, timeout=timeout)


class Served:
    """A `tsemu serve` subprocess and the verbs pointed at it."""

    def __init__(self, socket: Path, proc: subprocess.Popen[str]) -> None:
        self.socket = socket
        self.proc = proc

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return tsemu(*args, "--socket", str(self.socket))

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = tsemu("ctl", "--socket", str(self.socket), *args)
        assert result.returncode == 0, result.stderr
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*TSEMU, *args, "--socket", str(self.socket)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for_listener(self, timeout: float = 20) -> str:
        """Until `ctl listeners` shows one; returns its output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.ctl("listeners").stdout.strip()
            if shown != "no listeners":
                return shown
            time.sleep(0.05)
        raise TimeoutError("no listener registered")


def serve(directory: Path, *args: str) -> Served:
    scenario = directory / "machine.toml"
    scenario.write_text(MACHINE)
    socket = directory / "genl.sock"
    proc = subprocess.Popen([*TSEMU, "serve", "--socket", str(socket), "--scenario",
                             str(scenario), *args], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.strip() == f"tsemu: listening on {socket}", line + proc.stderr.read()
    return Served(socket, proc)


def stop(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGINT)
        served.proc.wait(timeout=20)
    if served.proc.stderr is not None:
        served.proc.stderr.close()


@pytest.fixture
def served(short_tmp: Path) -> Iterator[Served]:
    """A fresh server: for tests that make tasks exit."""
    server = serve(short_tmp)
    try:
        yield server
    finally:
        stop(server)


@pytest.fixture(scope="module")
def machine() -> Iterator[Served]:
    """One server for the tests that only read."""
    directory = Path(tempfile.mkdtemp(prefix="ts", dir="/tmp"))
    server = serve(directory)
    try:
        yield server
    finally:
        stop(server)
        shutil.rmtree(directory, ignore_errors=True)


class Lines:
    """The lines of a Popen pipe as they come (the verbs flush every line), read by a thread."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.queue.put(line)

    def next(self, timeout: float = 20) -> str:
        """The next line; TimeoutError when none comes in time."""
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no line within {timeout} s; had {self.seen[-3:]}") from None
        self.seen.append(line)
        return line

    def until(self, predicate: Any, timeout: float = 20) -> list[str]:
        """Lines up to and including the first that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        taken: list[str] = []
        while not taken or not predicate(taken[-1]):
            taken.append(self.next(max(0.0, deadline - time.monotonic())))
        return taken


# -- get ---------------------------------------------------------------------------------------

def test_get_pid_prints_a_getdelays_like_report(machine: Served) -> None:
    result = machine.run("get", "--pid", "700")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "TASKSTATS pid 700: db (taskstats version 16, AGGR_PID)"
    rows = {line[2:15].strip(): line[15:] for line in lines[1:] if line.startswith("  ")}
    assert rows["comm"] == "db"
    assert rows["task"] == "pid 700  tgid 700  ppid 1"
    assert rows["user"] == "uid 1000  gid 1001"
    assert rows["exit"] == "- (ac_exitcode 0)"
    assert rows["started"] == "2024-01-01 00:59:50 UTC (btime 1704070790)"
    assert rows["elapsed"] == "10.000000 s"
    assert rows["user time"] == "1.500000 s"
    assert rows["system time"] == "0.250000 s"
    assert rows["cpu run"] == "real 1750000000 ns  virtual 0 ns"
    assert rows["switches"] == "voluntary 50  involuntary 7"
    assert rows["faults"] == "minor 1200  major 3"
    assert rows["memory"] == "hiwater rss 8192 KiB  hiwater vm 65536 KiB"
    assert rows["read"] == "1048576 B (1.0 MiB) in 3072 syscalls; storage 2097152 B (2.0 MiB)"
    assert rows["written"] == ("4096 B (4.0 KiB) in 2048 syscalls; storage 1048576 B (1.0 MiB); "
                               "cancelled 0 B")
    assert rows["executable"] == "dev 259:2  inode 4242"
    table = lines[lines.index("") + 1:]
    assert table[0].split() == ["DELAY", "count", "delay", "total", "delay", "average",
                                "delay", "max", "delay", "min"]
    delays = {row.split()[0]: row.split()[1:] for row in table[1:-1]}
    assert list(delays) == ["CPU", "IO", "SWAP", "RECLAIM", "THRASHING", "COMPACT", "WPCOPY",
                            "IRQ"]
    assert delays["CPU"] == ["4", "10000000", "2.500ms", "5.000ms", "1.000ms"]
    assert delays["IO"] == ["2", "3000000", "1.500ms", "0.000ms", "0.000ms"]
    assert delays["SWAP"] == ["0", "0", "0.000ms", "0.000ms", "0.000ms"]
    # Columns line up: every row is as wide as the header.
    assert {len(row) for row in table[:-1]} == {len(table[0])}


def test_get_json_is_the_whole_record(machine: Served) -> None:
    result = machine.run("get", "--pid", "801", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["aggr"] == "AGGR_PID" and record["id"] == 801
    assert record["ac_comm"] == "web:worker"  # bytes come out as strings
    assert record["ac_pad"] == "\0\0\0"
    assert (record["ac_pid"], record["ac_tgid"], record["ac_uid"]) == (801, 800, 33)
    assert (record["cpu_count"], record["cpu_delay_total"]) == (30, 60_000_000)
    assert (record["swapin_count"], record["swapin_delay_total"]) == (1, 7_000_000)
    assert record["ac_utime"] == 4_000_000 and record["version"] == 16
    assert list(record) == ["aggr", "id", *layout(16).names]


def test_get_tgid_sums_the_threads(machine: Served) -> None:
    record = json.loads(machine.run("get", "--tgid", "800", "--json").stdout)
    assert record["aggr"] == "AGGR_TGID" and record["id"] == 800
    assert (record["cpu_count"], record["cpu_delay_total"]) == (40, 80_000_000)
    text = machine.run("get", "--tgid", "800").stdout.splitlines()
    assert text[0].startswith("TASKSTATS tgid 800: ")
    assert text[0].endswith("(taskstats version 16, AGGR_TGID)")
    cpu = next(line for line in text if line.startswith("CPU "))
    assert cpu.split()[:3] == ["CPU", "40", "80000000"]


@pytest.mark.parametrize(("args", "status", "message"), [
    (("get", "--pid", "4242"), 1, "tsemu: no task with pid 4242\n"),
    (("get", "--tgid", "4242"), 1, "tsemu: no task with tgid 4242\n"),
    (("get", "--pid", "1", "--tgid", "1"), 2, "tsemu: give exactly one of --pid or --tgid\n"),
    (("get",), 2, "tsemu: give exactly one of --pid or --tgid\n"),
    (("get", "--pid", "1", "--host"), 2, "tsemu: give --host or --socket, not both\n"),
    (("get", "--pid", "0"), 2, "Invalid value for '--pid'"),
    (("listen", "--cpus", "7"), 2, "names a CPU that the tsemu server at"),
    (("listen", "--cpus", "1-0"), 2, "tsemu: --cpus '1-0' is not a valid cpulist (EINVAL)\n"),
    (("listen",), 2, "Missing option '--cpus'"),
])
def test_usage_and_lookup_errors(machine: Served, args: tuple[str, ...], status: int,
                                 message: str) -> None:
    result = machine.run(*args)
    assert result.returncode == status, result
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("verb", [("get", "--pid", "1"), ("listen", "--cpus", "0"),
                                  ("families",)])
def test_without_a_server_the_socket_is_named(short_tmp: Path, verb: tuple[str, ...]) -> None:
    socket = short_tmp / "none.sock"
    result = tsemu(*verb, "--socket", str(socket))
    assert result.returncode == 1
    assert result.stderr.startswith(f"tsemu: no tsemu server at {socket} (start one with "
                                    f"`tsemu serve`")
    assert len(result.stderr.splitlines()) == 1


def test_a_stale_socket_is_reported(short_tmp: Path) -> None:
    import socket as sockets

    path = short_tmp / "stale.sock"
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM) as dead:
        dead.bind(str(path))
    (short_tmp / "stale.sock.ports").mkdir()
    result = tsemu("get", "--pid", "1", "--socket", str(path))
    assert result.returncode == 1
    assert f"tsemu: no tsemu server is listening on {path}" in result.stderr


def test_without_cap_net_admin_the_admin_option_is_named(short_tmp: Path) -> None:
    server = serve(short_tmp, "--admin", "none")
    try:
        for verb in (("get", "--pid", "700"), ("listen", "--cpus", "0-1")):
            result = server.run(*verb)
            assert result.returncode == 1, result
            assert result.stderr.startswith("tsemu: TASKSTATS needs CAP_NET_ADMIN and the tsemu "
                                            f"server at {server.socket} refused you")
            assert "`tsemu serve --admin`" in result.stderr
        # families needs no privilege
        assert server.run("families").returncode == 0
    finally:
        stop(server)


# -- families ------------------------------------------------------------------------------------

def test_families_lists_nlctrl_and_taskstats(machine: Served) -> None:
    result = machine.run("families")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "nlctrl",
        "  id 0x10  version 2  hdrsize 0  maxattr 0",
        "  ops:",
        "    0x0003 GETFAMILY          flags 0x0e do,dump,has-policy",
        "    0x000a GETPOLICY          flags 0x0c dump,has-policy",
        "  multicast groups:",
        "    0x0010 notify",
        "TASKSTATS",
        "  id 0x1f  version 1  hdrsize 0  maxattr 0",
        "  ops:",
        "    0x0001 GET                flags 0x0b admin-perm,do,has-policy",
        "    0x0004 CGROUPSTATS_GET    flags 0x0a do,has-policy",
        "  multicast groups: none",
    ]


def test_families_json(machine: Served) -> None:
    families = json.loads(machine.run("families", "--json").stdout)
    assert [f["name"] for f in families] == ["nlctrl", "TASKSTATS"]
    taskstats = families[1]
    assert (taskstats["id"], taskstats["version"], taskstats["mcast_groups"]) == (0x1F, 1, [])
    assert taskstats["ops"][0] == {"id": 1, "name": "GET", "flags": 0xB,
                                   "flag_names": ["admin-perm", "do", "has-policy"]}
    assert families[0]["mcast_groups"] == [{"id": 0x10, "name": "notify"}]


# -- listen --------------------------------------------------------------------------------------

def test_listen_json_reports_two_exits_then_deregisters(served: Served) -> None:
    listener = served.popen("listen", "--cpus", "0-1", "--count", "2", "--json")
    try:
        port = served.wait_for_listener()
        assert port.startswith("cpu 0: ") and "cpu 1: " in port
        served.ctl("exit", "700", "--code", "3")
        served.ctl("exit", "801", "--signal", "KILL")
        out, err = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
    assert listener.returncode == 0, err
    assert err.startswith("tsemu: listening for exits on cpus 0-1 of the tsemu server at ")
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 2
    (db,), (worker,) = events[0]["records"], events[1]["records"]
    assert (db["aggr"], db["id"], db["ac_comm"]) == ("AGGR_PID", 700, "db")
    assert (db["ac_exitcode"], db["ac_flag"] & 0x10) == (3 << 8, 0)
    assert (worker["aggr"], worker["id"], worker["ac_comm"]) == ("AGGR_PID", 801, "web:worker")
    assert (worker["ac_exitcode"], worker["ac_flag"] & 0x10) == (9, 0x10)
    assert served.ctl("listeners").stdout.strip() == "no listeners"


def test_listen_text_marks_the_group_totals(served: Served) -> None:
    listener = served.popen("listen", "--cpus", "0-1", "--count", "2")
    try:
        served.wait_for_listener()
        served.ctl("exit", "800", "--signal", "TERM", "--leader-last")  # 801, then 800, TGID
        out, err = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
    assert listener.returncode == 0, err
    assert out.splitlines() == [
        "RECORD     PID    TGID COMM             STATUS                 FLAGS               "
        " ETIME        UTIME        STIME  DELAYS total/count",
        "pid        801     800 web:worker       signal 15 (SIGTERM)    AXSIG           "
        "60.000000s    4.000000s    3.000000s  cpu 60.000ms/30, swap 7.000ms/1",
        "pid        800     800 web              signal 15 (SIGTERM)    AXSIG|AGROUP    "
        "60.000000s    2.000000s    1.000000s  cpu 20.000ms/10",
        "TGID         -     800 -                (group totals)         -              "
        "120.000000s    6.000000s    4.000000s  cpu 80.000ms/40, swap 7.000ms/1",
    ]


def test_listen_stops_cleanly_on_ctrl_c(served: Served) -> None:
    listener = served.popen("listen", "--cpus", "1")
    try:
        served.wait_for_listener()
        assert listener.stderr is not None
        out = Lines(listener.stdout)
        assert out.next().startswith("RECORD")
        served.ctl("exit", "700")
        assert out.next().split()[:6] == ["pid", "700", "700", "db", "exit", "0"]
        listener.send_signal(signal.SIGINT)
        listener.wait(timeout=20)
        err = listener.stderr.read()
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait()
    assert listener.returncode == 130
    assert err.startswith("tsemu: listening for exits on cpus 1 ") and err.count("\n") == 1
    assert served.ctl("listeners").stdout.strip() == "no listeners"


def test_listen_warns_of_lost_events_and_goes_on(served: Served) -> None:
    listener = served.popen("listen", "--cpus", "0-1")
    try:
        served.wait_for_listener()
        out, err = Lines(listener.stdout), Lines(listener.stderr)
        assert err.next().startswith("tsemu: listening for exits on cpus 0-1")
        listener.send_signal(signal.SIGSTOP)  # it reads nothing while 2000 exits are sent
        served.ctl("storm", "--count", "2000", "--cpus", "0-1")
        listener.send_signal(signal.SIGCONT)
        assert err.next() == ("tsemu: exit events were lost (the receive buffer overflowed: "
                              "ENOBUFS); listening on\n")
        # Still listening: a later exit is reported.
        served.ctl("exit", "700", "--code", "5")
        lines = out.until(lambda line: line.split()[:2] == ["pid", "700"])
        listener.send_signal(signal.SIGINT)
        listener.wait(timeout=20)
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait()
    received = [line for line in lines if line.startswith("pid ")]
    assert 100 < len(received) < 2000  # what the receive buffer held, then the last exit
    assert received[-1].split()[4:6] == ["exit", "5"]
    assert listener.returncode == 130


def test_every_client_verb_has_examples_in_its_help() -> None:
    for verb in ("get", "listen", "families"):
        result = tsemu(verb, "--help")
        assert result.returncode == 0
        assert "Examples:" in result.stdout and f"tsemu {verb} " in result.stdout
        assert "--host" in result.stdout and "--socket" in result.stdout
    assert all(v in tsemu("--help").stdout for v in ("get", "listen", "families"))


# -- the host kernel -----------------------------------------------------------------------------

@pytest.mark.host
def test_host_get_own_pid() -> None:
    require_host_taskstats().close()
    pid = os.getpid()
    text = tsemu("get", "--host", "--pid", str(pid))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"TASKSTATS pid {pid}: ")
    assert f"  task         pid {pid}  tgid {pid}  ppid {os.getppid()}" in text.stdout
    record = json.loads(tsemu("get", "--host", "--pid", str(pid), "--json").stdout)
    assert (record["aggr"], record["id"], record["ac_pid"]) == ("AGGR_PID", pid, pid)
    assert (record["ac_uid"], record["ac_ppid"]) == (os.getuid(), os.getppid())
    assert record["ac_utime"] + record["ac_stime"] > 0 and record["version"] >= 8
    group = json.loads(tsemu("get", "--host", "--tgid", str(pid), "--json").stdout)
    assert (group["aggr"], group["id"]) == ("AGGR_TGID", pid)


@pytest.mark.host
def test_host_get_unknown_pid() -> None:
    require_host_taskstats().close()
    result = tsemu("get", "--host", "--pid", str(2**31 - 1))
    assert (result.returncode, result.stderr) == (1, f"tsemu: no task with pid {2**31 - 1}\n")


@pytest.mark.host
def test_host_families() -> None:
    host = require_host_taskstats()
    family = host.family
    host.close()
    text = tsemu("families", "--host")
    assert text.returncode == 0, text.stderr
    names = [line for line in text.stdout.splitlines() if not line.startswith(" ")]
    assert "nlctrl" in names and "TASKSTATS" in names
    families = {f["name"]: f for f in json.loads(tsemu("families", "--host", "--json").stdout)}
    assert families["TASKSTATS"]["id"] == family
    assert families["nlctrl"]["id"] == 0x10


@pytest.mark.host
def test_host_listen_sees_a_child_exit() -> None:
    require_host_taskstats().close()
    cpus = f"0-{host_cpu_counts()[0] - 1}"
    listener = subprocess.Popen([*TSEMU, "listen", "--host", "--cpus", cpus, "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = Lines(listener.stdout), Lines(listener.stderr)
        assert err.next().startswith(f"tsemu: listening for exits on cpus {cpus} of the host "
                                     f"kernel")
        child = subprocess.Popen(["sh", "-c", "exit 7"])
        assert child.wait() == 7

        def is_child(line: str) -> bool:
            return any(r["aggr"] == "AGGR_PID" and r["ac_pid"] == child.pid
                       for r in json.loads(line)["records"])

        (mine,) = (r for r in json.loads(out.until(is_child)[-1])["records"]
                   if r["ac_pid"] == child.pid)
        assert (mine["ac_exitcode"], mine["ac_ppid"], mine["ac_comm"]) == (7 << 8, os.getpid(),
                                                                            "sh")
        listener.send_signal(signal.SIGINT)
        listener.wait(timeout=20)
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait()
    assert listener.returncode == 130
