"""The /proc view: the kernel's formats (checked against the host's own files), the same values
as taskstats at the same instant, counters that move, and a view that follows the table
(exits gone before they are broadcast, threads, the machine's files, the directory's safety).
"""

from __future__ import annotations

import json
import os
import platform
import stat
import subprocess
import sys
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from tsemu.emulator.model import procfs
from tsemu.emulator.model.profiles import PROFILES
from tsemu.emulator.shell.addressing import proc_view_dir
from tsemu.emulator.shell.control import answer
from tsemu.emulator.shell.runner import Emulator
from tsemu.emulator.shell.sockdir import DirectoryRefused

from .emulating import emulator as served

SCENARIO = """
[machine]
cpus = 2
clock = "virtual"
start = "1h"
memory = "16GiB"
load = [1.5, 0.75, 0.25]

[[process]]
pid = 1
comm = "init"
ppid = 0
state = "sleeping"
start = 0
cmdline = ["/sbin/init", "splash"]

[[process]]
pid = 2
comm = "kthreadd"
ppid = 0
kthread = true
state = "sleeping"
start = 0

[[process]]
pid = 500
comm = "db"
uid = 1000
gid = 1000
cpu = 1
nice = 5
state = "io_wait"
age = "10m"
cmdline = "/usr/bin/db --serve"
ioprio = "be/2"
times = { utime = "12.34s", stime = "5.67s", run_virtual = "18s" }
io = { read_bytes = "3MiB", write_bytes = 123457, read_char = "10MiB", write_char = 999 }
delays.cpu = { count = 42, total = "300ms" }
delays.blkio = { count = 7, total = "2.5s" }
memory = { hiwater_rss = "40MiB", hiwater_vm = "90MiB", rss = "32MiB", vm = "80MiB" }
faults = { minflt = 100, majflt = 3 }
switches = { nvcsw = 77, nivcsw = 8 }
threads = 3

[[process.thread]]
tid = 501
comm = "db-writer"
times = { utime = "1s" }
io = { write_bytes = "40MiB/s" }
delays.blkio = { count = "10/s", total = "300ms/s" }
"""


def running(short_tmp: Path, text: str = SCENARIO) -> AbstractAsyncContextManager[Emulator]:
    """This file's scenario (or `text`) served until the block ends."""
    return served(short_tmp, text)


def read(view: Path, name: str) -> str:
    return (view / name).read_text()


def status_of(view: Path, name: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in read(view, name).splitlines())


# --- the kernel's formats ---------------------------------------------------------------------


def host_profile() -> str:
    release = platform.release()
    version = ".".join(release.split(".")[:2])
    if not Path("/proc/self/status").exists():
        pytest.skip("format check: this platform has no /proc")
    if version not in PROFILES:
        pytest.skip(f"format check: no profile for the host's kernel {release} "
                    f"(profiles: {', '.join(PROFILES)})")
    return version


def test_the_views_printing_reproduces_the_host_kernels_files_field_by_field() -> None:
    """Every host task's stat, status and io, read into fields and printed by the view's
    printers for the host's kernel version, come out byte for byte: the same fields, lines,
    labels, alignment, and the same set of status lines for that version. Kernel threads,
    multi-threaded processes and this process are among them."""
    profile = PROFILES[host_profile()]
    checked = kthreads = 0
    pids = [1, 2, os.getpid()] + sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in pids[:200]:
        try:
            texts = [Path(f"/proc/{pid}/{name}").read_text() for name in ("stat", "status")]
            io_text = Path(f"/proc/{pid}/io").read_text()
        except OSError:
            continue  # gone meanwhile
        stat_text, status_text = texts
        assert procfs.stat(procfs.parse_stat(stat_text)) == stat_text
        status = procfs.parse_status(status_text)
        assert procfs.status(status, profile) == status_text, pid
        assert procfs.io(procfs.parse_io(io_text)) == io_text
        kthreads += not status["has_mm"]
        checked += 1
    assert checked >= 3 and kthreads >= 1


def test_status_lines_follow_the_kernel_generation() -> None:
    view = {name: 0 for _, name, _, _ in procfs.STATUS_LINES}
    view.update(has_mm=True, untag_mask="0xffffffffffffffff")
    old = procfs.status(view, PROFILES["6.1"])
    new = procfs.status(view, PROFILES["6.18"])
    assert "Kthread:" not in old and "untag_mask:" not in old and "Kthread:" in new
    assert "Seccomp_filters:" in old  # (5.9)


# --- the same values as taskstats --------------------------------------------------------------


async def test_task_files_agree_with_taskstats_at_the_same_instant(short_tmp: Path) -> None:
    async with running(short_tmp) as emu:
        view = proc_view_dir(emu.socket_path)
        assert read(view, ".tsemu-view") == "tsemu proc view 1\n"
        record = emu.table.pid_stats(500)
        fields = procfs.parse_stat(read(view, "500/task/500/stat"))
        assert fields["utime"] == record["ac_utime"] // 10_000
        assert fields["stime"] == record["ac_stime"] // 10_000
        assert fields["starttime"] == emu.table.get(500).start_ns // 10_000_000
        assert fields["minflt"] == record["ac_minflt"] and fields["majflt"] == 3
        assert fields["delayacct_blkio_ticks"] == record["blkio_delay_total"] // 10_000_000
        assert fields["nice"] == 5 and fields["priority"] == 25 and fields["processor"] == 1
        assert fields["state"] == "D" and fields["num_threads"] == 3 and fields["ppid"] == 1
        assert fields["vsize"] == 80 << 20 and fields["rss"] == (32 << 10) // 4
        # the process's own stat sums its threads' times
        whole = procfs.parse_stat(read(view, "500/stat"))
        assert whole["utime"] == fields["utime"] + 100
        io = dict(line.split(": ") for line in read(view, "500/io").splitlines())
        assert int(io["write_bytes"]) == 123457  # exact; taskstats rounds it to 1024
        assert record["write_bytes"] == 123457 // 1024 * 1024
        sched = read(view, "500/task/500/schedstat").split()
        assert sched == [str(18 * 10**9), str(record["cpu_delay_total"]),
                         str(record["cpu_count"])]
        status = status_of(view, "500/status")
        assert status["Name"] == "db" and status["Uid"] == "1000\t1000\t1000\t1000"
        assert status["State"] == "D (disk sleep)" and status["Threads"] == "3"
        assert status["VmHWM"].strip() == f"{record['hiwater_rss']} kB"
        assert status["VmRSS"].strip() == "32768 kB" and status["Kthread"] == "0"
        assert (view / "500/cmdline").read_bytes() == b"/usr/bin/db\0--serve\0"
        assert read(view, "500/comm") == "db\n"
        assert read(view, "500/task/501/comm") == "db-writer\n"
        assert read(view, "500/.tsemu") == "nice=5\npolicy=0\nrt_priority=0\nioprio=16386\n"
        assert sorted(os.listdir(view / "500/task")) == ["500", "501", "502"]
        assert os.readlink(view / ".tid/501") == "../500/task/501"
        assert read(view, ".tid/502/stat").startswith("502 (db) ")


async def test_kernel_threads_and_ownership(short_tmp: Path) -> None:
    async with running(short_tmp) as emu:
        view = proc_view_dir(emu.socket_path)
        status = status_of(view, "2/status")
        assert status["Kthread"] == "1" and "VmRSS" not in status
        assert (view / "2/cmdline").read_bytes() == b""
        fields = procfs.parse_stat(read(view, "2/stat"))
        assert fields["flags"] & 0x00200000 and fields["vsize"] == 0 and fields["pgrp"] == 0
        assert (view / "1/cmdline").read_bytes() == b"/sbin/init\0splash\0"
        io = os.lstat(view / "500/io")
        assert stat.S_IMODE(io.st_mode) == 0o400
        assert stat.S_IMODE(os.lstat(view / "500/stat").st_mode) == 0o444
        if os.geteuid() == 0:
            assert (io.st_uid, io.st_gid) == (1000, 1000)
            assert os.lstat(view / "500").st_uid == 1000


# --- counters that move ------------------------------------------------------------------------


async def test_rates_move_with_the_virtual_clock_in_proc_and_taskstats(short_tmp: Path) -> None:
    async with running(short_tmp) as emu:
        view = proc_view_dir(emu.socket_path)
        io = dict(line.split(": ") for line in read(view, "500/task/501/io").splitlines())
        assert io["write_bytes"] == "0"
        await emu.advance(2.5)
        io = dict(line.split(": ") for line in read(view, "500/task/501/io").splitlines())
        assert int(io["write_bytes"]) == 100 << 20
        record = emu.table.pid_stats(501)
        assert record["write_bytes"] == 100 << 20
        assert record["blkio_delay_total"] == 750_000_000 and record["blkio_count"] == 25
        assert procfs.parse_stat(read(view, "500/task/501/stat"))["delayacct_blkio_ticks"] \
            == 75
        # the machine's io pressure: 0.3 s of delay per second over 2 CPUs
        assert read(view, "pressure/io").startswith("some avg10=15.00 avg60=15.00 ")
        reply = await answer(emu, json.dumps(
            {"op": "set", "pid": 501, "values": {"write_bytes": "0/s"}}).encode())
        assert reply["ok"], reply
        await emu.advance(1)
        assert emu.table.pid_stats(501)["write_bytes"] == 100 << 20


# --- following the table -----------------------------------------------------------------------


async def test_an_exit_leaves_the_view_before_it_is_broadcast(short_tmp: Path) -> None:
    async with running(short_tmp) as emu:
        view = proc_view_dir(emu.socket_path)
        (pid, *tids) = await emu.spawn(comm="job", threads=2, cpu=1)
        assert (view / str(pid) / "task" / str(tids[0])).is_dir()
        seen = []
        original = emu.server.broadcast

        async def broadcast(report: object) -> None:
            seen.append((view / str(pid)).exists() or (view / ".tid" / str(tids[0])).exists())
            await original(report)  # type: ignore[arg-type]

        emu.server.broadcast = broadcast  # type: ignore[method-assign]
        await emu.exit(pid)
        assert seen == [False, False]
        assert not [n for n in os.listdir(view) if n.startswith(".new")]


async def test_threads_come_and_go_and_a_zombie_leader_stays(short_tmp: Path) -> None:
    async with running(short_tmp) as emu:
        view = proc_view_dir(emu.socket_path)
        emu.table.exit_task(500)  # the leader only: a zombie while its threads live
        emu.table.clone_thread(500, pid=520)
        await emu.exit(501)
        emu._show()
        assert sorted(os.listdir(view / "500/task")) == ["500", "502", "520"]
        assert status_of(view, "500/status")["State"] == "Z (zombie)"
        assert status_of(view, "500/status")["Threads"] == "2"
        assert not (view / ".tid/501").exists() and (view / ".tid/520").is_symlink()


def _wait_for_zombie(pid: int) -> None:
    """Until host task `pid` is a zombie (State: Z), ten seconds at most."""
    deadline = time.monotonic() + 10
    while procfs.parse_stat(Path(f"/proc/{pid}/stat").read_text())["state"] != "Z":
        assert time.monotonic() < deadline, f"task {pid} never became a zombie"
        time.sleep(0.01)


def test_a_zombies_files_round_trip(tmp_path: Path) -> None:
    """A zombie's status has no Umask line (its fs_struct is gone) and no memory lines: the
    printers reproduce it too (a zombie among the host's tasks made the test above fail now
    and then)."""
    profile = PROFILES[host_profile()]
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        _wait_for_zombie(child.pid)
        status_text = Path(f"/proc/{child.pid}/status").read_text()
        stat_text = Path(f"/proc/{child.pid}/stat").read_text()
    finally:
        child.wait()
    assert "\nUmask:" not in status_text and "\nVmRSS:" not in status_text
    assert procfs.status(procfs.parse_status(status_text), profile) == status_text
    assert procfs.stat(procfs.parse_stat(stat_text)) == stat_text


def _labels(text: str) -> list[str]:
    return [line.split(":\t", 1)[0] for line in text.splitlines()]


async def test_a_zombie_leader_shows_what_the_kernel_shows_of_one(short_tmp: Path) -> None:
    """A leader that exited while its threads live on has let go of its memory, files and
    fs_struct: the view shows what the kernel shows of one, file by file; and, where the
    host runs the view's kernel generation, the same status lines as the host's own zombie
    leader (tests/clients/zombieleader.c)."""
    async with running(short_tmp) as emu:
        view = proc_view_dir(emu.socket_path)
        emu.table.exit_task(500)
        emu._show()
        status_text = read(view, "500/status")
        status = status_of(view, "500/status")
        assert status["State"] == "Z (zombie)" and status["Threads"] == "2"
        assert status["FDSize"] == "0" and status["Kthread"] == "0"
        assert "Umask" not in status and not any(k.startswith(("Vm", "Rss")) for k in status)
        stat = procfs.parse_stat(read(view, "500/stat"))
        assert stat["state"] == "Z" and stat["num_threads"] == 2
        assert stat["vsize"] == stat["rss"] == stat["startcode"] == stat["arg_start"] == 0
        assert stat["flags"] & 0x4  # PF_EXITING
        assert read(view, "500/statm") == "0 0 0 0 0 0 0\n"
        assert read(view, "500/cmdline") == ""
        assert read(view, "500/task/500/status") == status_text
        assert "VmRSS" in status_of(view, "500/task/501/status")  # its threads' memory stays
        profile = emu.scenario.machine.profile
    if ".".join(platform.release().split(".")[:2]) != profile.generation:
        pytest.skip(f"the host runs {platform.release()}, the view {profile.release}: the "
                    "zombie leader's status lines are compared only on the same kernel")
    from tests.clients.harness import compile_client

    binary = compile_client(Path(__file__).parent / "clients" / "zombieleader.c", short_tmp)
    leader = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, text=True)
    try:
        assert leader.stdout is not None
        pid = int(leader.stdout.readline())
        _wait_for_zombie(pid)
        real = Path(f"/proc/{pid}/status").read_text()
        real_statm = Path(f"/proc/{pid}/statm").read_text()
        real_cmdline = Path(f"/proc/{pid}/cmdline").read_text()
    finally:
        leader.kill()
        leader.wait()
    assert _labels(status_text) == [label for label in _labels(real)
                                    if label != "untag_mask"]
    assert (real_statm, real_cmdline) == ("0 0 0 0 0 0 0\n", "")


async def test_machine_files(short_tmp: Path) -> None:
    async with running(short_tmp) as emu:
        view = proc_view_dir(emu.socket_path)
        assert read(view, "loadavg").startswith("1.50 0.75 0.25 0/5 ")
        assert read(view, "meminfo").startswith(f"MemTotal:       {16 << 20:8d} kB\n")
        assert read(view, "sys/kernel/task_delayacct") == "1\n"
        assert read(view, "sys/kernel/pid_max") == "4194304\n"
        uptime = float(read(view, "uptime").split()[0])
        assert uptime == 3600.0
        cpu_lines = [line for line in read(view, "stat").splitlines() if line.startswith("cpu")]
        assert len(cpu_lines) == 3
        # user time of CPU 1 is db's leader (12.34 s, nice 5: the nice column) and threads
        user, nice = (int(x) for x in cpu_lines[2].split()[1:3])
        assert (user, nice) == (0, 1234 + 100)
        assert "procs_blocked 3" in read(view, "stat")  # db and its threads
        before = dict(line.split() for line in read(view, "vmstat").splitlines())
        await emu.exit(500)
        await emu.advance(0)
        after = dict(line.split() for line in read(view, "vmstat").splitlines())
        assert int(after["pgpgin"]) == int(before["pgpgin"]) == 3 << 10  # the exited count
        assert {"some", "full"} <= {line.split()[0] for line in
                                    read(view, "pressure/memory").splitlines()}
        assert read(view, "pressure/irq").startswith("full ")


async def test_the_view_goes_with_the_server(short_tmp: Path) -> None:
    async with running(short_tmp) as emu:
        view = proc_view_dir(emu.socket_path)
        assert view.is_dir()
    assert not view.exists()


async def test_a_stale_view_is_taken_over_and_anything_else_refused(short_tmp: Path) -> None:
    view = short_tmp / "genl.sock.proc"
    view.mkdir()
    (view / ".tsemu-view").write_bytes(b"tsemu proc view 1\n")
    (view / "4242").mkdir()
    async with running(short_tmp) as emu:
        assert not (view / "4242").exists() and (view / "500").is_dir()
        assert emu.view is not None
    (short_tmp / "genl.sock.proc").mkdir()  # not a view: the server will not remove it
    with pytest.raises(BaseException) as caught:
        async with running(short_tmp):
            pass
    assert "is not a tsemu /proc view" in repr(caught.value)
    os.rmdir(view)
    os.symlink(short_tmp / "elsewhere", view)
    with pytest.raises(BaseException) as caught:
        async with running(short_tmp):
            pass
    assert "is not a directory" in repr(caught.value)


def test_the_refusal_is_one_line() -> None:
    assert "\n" not in str(DirectoryRefused("x is not a directory"))


async def test_a_big_machines_view_is_finished_after_the_server_listens(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond PUBLISH_AT_ONCE processes, the rest is published in the background and the
    marker comes last: a shim takes the view only once it is whole."""
    from tsemu.emulator.shell import procview

    monkeypatch.setattr(procview, "PUBLISH_AT_ONCE", 3)
    monkeypatch.setattr(procview, "PUBLISH_SLICE", 0.0)
    text = SCENARIO + "\n[[process]]\ncount = 20\npid = 7000\ncomm = \"w{i}\"\n"
    async with running(short_tmp, text) as emu:
        view = proc_view_dir(emu.socket_path)
        assert emu.view is not None
        with trio.fail_after(10):
            while not emu.view.complete:
                assert not (view / ".tsemu-view").exists()
                await trio.sleep(0.01)
        assert (view / ".tsemu-view").exists()
        assert {str(7000 + i) for i in range(20)} <= set(os.listdir(view))
