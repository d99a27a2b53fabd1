"""Unmodified tools that list /proc, run through `tsemu run` against a served scenario: they
see the scenario's machine (its tasks, their I/O rates and delays) and nothing of the host's
but their own process family (issue 13).

The scenario runs on the real clock, so that counters given as rates move while the tools
sample them twice a second apart, as they do on a real machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tsemu.pytest_plugin import TsemuHandle, start_tsemu

from .clients.harness import CLIENTS, compile_client

SCENARIO = """
[machine]
cpus = 2
clock = "real"
start = "1h"

[[process]]
pid = 1
comm = "init"
ppid = 0
state = "sleeping"
cmdline = "/sbin/init"

[[process]]
pid = 4100
comm = "writer"
uid = 0
state = "io_wait"
cmdline = ["/usr/bin/writer", "--fast"]
io = { write_bytes = "4MiB/s", write_char = "4MiB/s" }
delays.blkio = { count = "10/s", total = "300ms/s" }
times = { utime = "200ms/s" }

[[process]]
pid = 4200
comm = "reader"
state = "sleeping"
threads = 2
io = { read_bytes = "2MiB/s" }
delays.swapin = { count = "1/s", total = "100ms/s" }

[[process]]
pid = 4300
comm = "idle"
state = "sleeping"
"""
#: The scenario's processes (the reader's second thread takes an automatic tid).
SCENARIO_PIDS = {1, 4100, 4200, 4300}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (the Makefile's system-deps installs it)")
    return path


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TsemuHandle]:
    directory = tmp_path_factory.mktemp("machine")
    os.chmod(directory, 0o755)
    handle = start_tsemu(SCENARIO, directory)
    try:
        yield handle
    finally:
        handle.close()
        handle.process.terminate()
        handle.process.wait(timeout=10)
        if handle.process.stderr is not None:
            handle.process.stderr.close()


def through_tsemu(machine: TsemuHandle, argv: list[str]) -> str:
    done = machine.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return str(done.stdout)


def family_pids(machine: TsemuHandle, output_pids: set[int]) -> set[int]:
    """The pids of `output_pids` that are not the scenario's (threads included): they must be
    the tool's own family (the test process's descendants), never another host process."""
    emulated = {t["pid"] for t in machine.ps() if not t["real"]}
    return {pid for pid in output_pids if pid not in emulated}


def is_descendant(pid: int) -> bool:
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True  # (gone: a short-lived process of the tool's own)
        pid = int(stat.rpartition(")")[2].split()[1])
        if pid <= 1:
            return False
    return False


def iotop_rows(output: str) -> list[list[str]]:
    """The task rows of iotop-c's last batch iteration."""
    last = output.rsplit("Current DISK READ", 1)[1]
    return [line.split() for line in last.splitlines()[2:] if line.strip()]


def rate_kib(value: str, unit: str) -> float:
    scale = {"B/s": 1 / 1024, "K/s": 1, "M/s": 1024, "G/s": 1024 * 1024}
    return float(value) * scale[unit]


@pytest.mark.parametrize("mode", [[], ["-P"], ["-k"]], ids=["threads", "processes", "kib"])
def test_iotop_shows_the_scenarios_active_tasks_at_their_rates(machine: TsemuHandle,
                                                               mode: list[str]) -> None:
    iotop = need("iotop-c")
    rows = iotop_rows(through_tsemu(machine, [iotop, "-b", "-o", "-n", "2", "-d", "1", *mode]))
    seen = {int(row[0]): row for row in rows}
    assert all(is_descendant(pid) for pid in family_pids(machine, set(seen))), rows
    assert {4100, 4200} <= set(seen), rows
    assert 4300 not in seen  # idle: -o leaves it out
    # a row: TID PRIO USER READ unit WRITE unit SWAPIN % IO % COMMAND
    writer, reader = seen[4100], seen[4200]
    assert 4096 * 0.9 <= rate_kib(writer[5], writer[6]) <= 4096 * 1.1, writer
    assert 2048 * 0.9 <= rate_kib(reader[3], reader[4]) <= 2048 * 1.1, reader
    assert 27 <= float(writer[9]) <= 33, writer  # 300 ms of block I/O wait per second
    assert 8 <= float(reader[7]) <= 12, reader  # 100 ms of swap-in wait per second
    assert writer[11:] == ["/usr/bin/writer", "--fast"] or writer[11] == "writer", writer


def test_ps_lists_the_scenarios_tasks_threads_included(machine: TsemuHandle) -> None:
    need("ps")
    out = through_tsemu(machine, ["ps", "-e", "-o", "pid=,ppid=,comm=,nlwp=,stat="])
    rows = {int(line.split()[0]): line.split() for line in out.splitlines()}
    assert SCENARIO_PIDS <= set(rows)
    assert rows[4200][2:4] == ["reader", "2"] and rows[4100][4].startswith("D")
    assert all(is_descendant(pid) for pid in family_pids(machine, set(rows))), rows
    threads = through_tsemu(machine, ["ps", "-eL", "-o", "pid=,lwp="])
    reader = [line.split() for line in threads.splitlines() if line.split()[0] == "4200"]
    assert len(reader) == 2 and reader[0][1] == "4200", threads


def test_top_lists_the_scenarios_tasks(machine: TsemuHandle) -> None:
    need("top")
    out = through_tsemu(machine, ["top", "-b", "-n", "1", "-w", "200"])
    pids = {int(line.split()[0]) for line in out.splitlines()
            if re.match(r"\s*\d+\s", line)}
    assert SCENARIO_PIDS <= pids
    assert all(is_descendant(pid) for pid in family_pids(machine, pids)), out


def test_a_delaytop_style_client_sees_the_scenarios_order(machine: TsemuHandle,
                                                         tmp_path: Path) -> None:
    client = str(compile_client(CLIENTS / "delaytop_lite.c", tmp_path))
    out = through_tsemu(machine, [client, "-s", "blkio", "-n", "3"])
    rows = [dict(word.split("=", 1) for word in line.split())
            for line in out.splitlines() if line.startswith("pid=")]
    assert rows[0]["pid"] == "4100" and rows[0]["comm"] == "writer"
    assert int(rows[0]["delay_ns"]) > 0 and all(int(r["delay_ns"]) == 0 for r in rows[1:])
    swap = through_tsemu(machine, [client, "-s", "swapin", "-n", "1"])
    assert swap.startswith("pid=4200 comm=reader ")
    listed = re.search(r"listed=(\d+) asked=(\d+)", out)
    assert listed is not None
    assert int(listed.group(1)) == int(listed.group(2))  # every listed pid was answered


def test_without_the_view_the_host_is_seen(machine: TsemuHandle) -> None:
    need("ps")
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "tsemu"), "run", "--proc", "host",
         "--socket", str(machine.socket_path), "--", "ps", "-e", "-o", "pid="],
        capture_output=True, text=True, timeout=60, check=True)
    assert 4100 not in {int(x) for x in done.stdout.split()}


def test_iotop_on_the_disk_busy_example(tmp_path: Path) -> None:
    """The README's recipe: `tsemu run -- iotop-c -b -o -n 2` on examples/disk-busy.toml."""
    iotop = need("iotop-c")
    example = Path(__file__).parent.parent / "examples" / "disk-busy.toml"
    os.chmod(tmp_path, 0o755)
    handle = start_tsemu(example.read_text(), tmp_path)
    try:
        rows = iotop_rows(through_tsemu(handle, [iotop, "-b", "-o", "-n", "2", "-d", "1"]))
    finally:
        handle.close()
        handle.process.terminate()
        handle.process.wait(timeout=10)
        if handle.process.stderr is not None:
            handle.process.stderr.close()
    seen = {int(row[0]): row for row in rows}
    assert {2213, 3301} <= set(seen), rows
    assert 40 * 1024 * 0.9 <= rate_kib(seen[2213][5], seen[2213][6]) <= 40 * 1024 * 1.1
    assert seen[3301][1] == "id/0"  # ioprio "idle", as iotop-c prints class idle, level 0
    assert 12 * 1024 * 0.9 <= rate_kib(seen[3301][3], seen[3301][4]) <= 12 * 1024 * 1.1
    assert 27 <= float(seen[2213][9]) <= 33
