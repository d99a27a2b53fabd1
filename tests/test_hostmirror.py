"""Tests for tsemu.emulator.shell.hostmirror: pids the table does not know, answered from /proc.

Three kinds: a fake /proc tree with fixed clocks (every conversion of the module's field table,
exactly); the live host's /proc (the test process, one of its threads, sleeping children);
and, where the host kernel has TASKSTATS and the tests run as root, the host kernel's own
records for the same sleeping tasks, field by field (skipped with the reason otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.kernel import Kernel, Send, Sender
from tsemu.emulator.model.profiles import DEFAULT_PROFILE, PROFILES
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.model.tasks import NoSuchTask
from tsemu.emulator.shell import hostmirror
from tsemu.emulator.shell.hostmirror import HostMirror, huge_encode_dev
from tsemu.wire import (
    AcFlag,
    ErrorMessage,
    TaskstatsReply,
    decode_message,
    encode_taskstats_get,
    layout,
    split_datagram,
)

from .hostkernel import HostNetlink, require_host_taskstats

PROFILE = DEFAULT_PROFILE
TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK")
TICK_US = TICK_NS // 1000
#: A pid above any pid_max: no task anywhere has it.
NOBODY = 0x3FFFFFF0


def _table() -> ProcessTable:
    return ProcessTable(VirtualClock(start_ns=10**9), PROFILE, 2)


@pytest.fixture
def mirror() -> HostMirror:
    return HostMirror(_table(), PROFILE)


def _stat_comm(pid: int, tid: int) -> bytes:
    raw = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
    return raw[raw.index(b"(") + 1:raw.rindex(b")")][:15]


# --- a fake /proc ------------------------------------------------------------------------

FAKE_TCK = 100
FAKE_NOW_NS = 110_500_000_000   # CLOCK_BOOTTIME: 110.5 s after boot
FAKE_WALL = 1_700_000_000


def fake_task(root: Path, tgid: int, tid: int, *, comm: bytes = b"worker", state: str = "S",
              ppid: int = 1, flags: int = 0, minflt: int = 0, majflt: int = 0, utime: int = 0,
              stime: int = 0, nice: int = 0, starttime: int = 0, policy: int = 0,
              blkio: int = 0, exit_code: int = 0, uid: int = 1000, gid: int = 1000,
              vmpeak: int | None = None, vmhwm: int | None = None, nvcsw: int = 0,
              nivcsw: int = 0, schedstat: tuple[int, int, int] = (0, 0, 0),
              io: Mapping[str, int] | None = None, exe: Path | None = None) -> Path:
    """One task's directory, /<tgid>/task/<tid>, as procfs lays it out; /<tid> resolves to
    /<tgid> for a thread, as procfs resolves a thread's tid."""
    d = root / str(tgid) / "task" / str(tid)
    d.mkdir(parents=True)
    if tid != tgid and not (root / str(tid)).exists():
        (root / str(tid)).symlink_to(str(tgid))
    f = ["0"] * 53  # f[n] is proc(5)'s field n
    for n, v in {4: ppid, 9: flags, 10: minflt, 12: majflt, 14: utime, 15: stime, 19: nice,
                 20: 1, 22: starttime, 41: policy, 42: blkio, 52: exit_code}.items():
        f[n] = str(v)
    f[3] = state
    (d / "stat").write_bytes(f"{tid} (".encode() + comm + b") "
                             + " ".join(f[3:]).encode() + b"\n")
    lines = [f"Name:\t{comm.decode(errors='replace')}", f"State:\t{state} (x)", f"Tgid:\t{tgid}",
             f"Pid:\t{tid}", f"PPid:\t{ppid}", f"Uid:\t{uid}\t{uid + 1}\t{uid + 2}\t{uid + 3}",
             f"Gid:\t{gid}\t{gid + 1}\t{gid + 2}\t{gid + 3}"]
    if vmpeak is not None:
        lines.append(f"VmPeak:\t{vmpeak:8d} kB")
    if vmhwm is not None:
        lines.append(f"VmHWM:\t{vmhwm:8d} kB")
    lines += [f"voluntary_ctxt_switches:\t{nvcsw}", f"nonvoluntary_ctxt_switches:\t{nivcsw}"]
    (d / "status").write_text("\n".join(lines) + "\n")
    (d / "schedstat").write_text("{} {} {}\n".format(*schedstat))
    if io is not None:
        (d / "io").write_text("".join(f"{k}: {v}\n" for k, v in io.items()))
    if exe is not None:
        (d / "exe").symlink_to(exe)
    return d


def fake_mirror(root: Path, profile: Any = PROFILE) -> HostMirror:
    return HostMirror(_table(), profile, proc=str(root), clk_tck=FAKE_TCK,
                      boottime_ns=lambda: FAKE_NOW_NS, wall_seconds=lambda: FAKE_WALL)


IO = {"rchar": 5000, "wchar": 1023, "syscr": 2047, "syscw": 3, "read_bytes": 4096,
      "write_bytes": 8191, "cancelled_write_bytes": 1024}


@pytest.fixture
def exe(tmp_path: Path) -> Path:
    path = tmp_path / "bin-worker"
    path.write_bytes(b"\x7fELF")
    return path


def test_fake_leader_every_field(tmp_path: Path, exe: Path) -> None:
    root = tmp_path / "proc"
    fake_task(root, 500, 500, comm=b"my worker", ppid=42, flags=0x40 | 0x100, minflt=77,
              majflt=3, utime=250, stime=125, nice=-5, starttime=1000, policy=3, blkio=7,
              uid=1001, gid=1002, vmpeak=2920, vmhwm=1836, nvcsw=11, nivcsw=4,
              schedstat=(556938, 1585600, 9), io=IO, exe=exe)
    v = fake_mirror(root).pid_stats(500)
    st = os.stat(exe)
    etime_us = (FAKE_NOW_NS - 1000 * 10**7) // 1000
    expected = {
        "version": PROFILE.taskstats_version, "ac_comm": b"my worker", "ac_pid": 500,
        "ac_tgid": 500, "ac_ppid": 42, "ac_uid": 1001, "ac_gid": 1002, "ac_nice": 251,
        "ac_sched": 3, "ac_flag": AcFlag.AFORK | AcFlag.ASU, "ac_exitcode": 0,
        "ac_etime": etime_us, "ac_tgetime": etime_us,
        "ac_btime": FAKE_WALL - etime_us // 10**6, "ac_btime64": FAKE_WALL - 100,
        "ac_utime": 2_500_000, "ac_stime": 1_250_000, "ac_utimescaled": 2_500_000,
        "ac_stimescaled": 1_250_000, "ac_minflt": 77, "ac_majflt": 3,
        "cpu_count": 9, "cpu_delay_total": 1585600, "cpu_run_virtual_total": 556938,
        "cpu_run_real_total": 3_750_000_000, "cpu_scaled_run_real_total": 3_750_000_000,
        "blkio_delay_total": 70_000_000, "blkio_count": 1,
        "hiwater_rss": 1836, "hiwater_vm": 2920,
        "read_char": 4096, "write_char": 0, "read_syscalls": 1024, "write_syscalls": 0,
        "read_bytes": 4096, "write_bytes": 7168, "cancelled_write_bytes": 1024,
        "nvcsw": 11, "nivcsw": 4,
        "ac_exe_dev": huge_encode_dev(os.major(st.st_dev), os.minor(st.st_dev)),
        "ac_exe_inode": st.st_ino,
    }
    assert {k: v[k] for k in expected} == expected
    assert expected["ac_btime"] == FAKE_WALL - 100
    rest = {k: x for k, x in v.items() if k not in expected}
    assert all(x in (0, b"") or x == {"tv_sec": 0, "tv_nsec": 0} for x in rest.values()), rest
    assert len(layout(PROFILE.taskstats_version).build(v)) == layout(
        PROFILE.taskstats_version).size


def test_huge_encode_dev_is_the_kernels() -> None:
    assert huge_encode_dev(254, 0) == 65024
    assert huge_encode_dev(8, 1) == 0x801
    assert huge_encode_dev(0, 0x12345) == 0x45 | (0x12300 << 12)
    assert huge_encode_dev(259, 3) == (259 << 8) | 3


@pytest.mark.parametrize("comm", [b"a) (b c)", b"x)", b"((", b"sp ace", b")", b""])
def test_fake_comm_with_spaces_and_parentheses(tmp_path: Path, comm: bytes) -> None:
    fake_task(tmp_path, 7, 7, comm=comm, utime=3, nice=2, ppid=6)
    v = fake_mirror(tmp_path).pid_stats(7)
    assert (v["ac_comm"], v["ac_ppid"], v["ac_utime"], v["ac_nice"]) == (comm, 6, 30_000, 2)


@pytest.mark.parametrize(("shown", "flags", "comm"), [
    (b"a-very-long-kernel-thread-name", 0x200000, b"a-very-long-ker"),
    (b"kworker/0:1-events", 0x4208060, b"kworker/0:1"),
    (b"kworker/u8:2+flush-254:0", 0x4208060, b"kworker/u8:2"),
    (b"kworker/R-rcu_gp", 0x4208060, b"kworker/R-rcu_g"),
    (b"not-a-worker-xx+y", 0, b"not-a-worker-xx"),
])
def test_fake_comm_as_task_comm(tmp_path: Path, shown: bytes, flags: int, comm: bytes) -> None:
    fake_task(tmp_path, 9, 9, comm=shown, flags=flags)
    assert fake_mirror(tmp_path).pid_stats(9)["ac_comm"] == comm


def test_fake_thread_record(tmp_path: Path) -> None:
    fake_task(tmp_path, 500, 500, starttime=1000)
    fake_task(tmp_path, 500, 503, comm=b"helper", flags=0x40 | 0x100, starttime=3000,
              utime=5, nvcsw=2)
    v = fake_mirror(tmp_path).pid_stats(503)
    assert (v["ac_pid"], v["ac_tgid"], v["ac_comm"], v["ac_utime"], v["nvcsw"]) == \
        (503, 500, b"helper", 50_000, 2)
    assert v["ac_flag"] == AcFlag.ASU  # AFORK only for a group leader
    assert v["ac_etime"] == (FAKE_NOW_NS - 30 * 10**9) // 1000
    assert v["ac_tgetime"] == (FAKE_NOW_NS - 10 * 10**9) // 1000


def test_fake_tgid_sums_live_threads(tmp_path: Path) -> None:
    fake_task(tmp_path, 600, 600, comm=b"svc", starttime=1000, utime=10, stime=1, nvcsw=5,
              nivcsw=1, schedstat=(100, 10, 1), blkio=2, minflt=99, io=IO, vmhwm=5, vmpeak=6)
    fake_task(tmp_path, 600, 601, starttime=2000, utime=20, stime=2, nvcsw=7, nivcsw=2,
              schedstat=(200, 20, 2))
    fake_task(tmp_path, 600, 602, starttime=3000, utime=30, stime=3, nvcsw=11, nivcsw=3,
              schedstat=(300, 30, 3))
    mirror = fake_mirror(tmp_path)
    v = mirror.tgid_stats(600)
    assert v == mirror.tgid_stats(601)  # any thread's id names its group, as in the kernel
    etimes = sum((FAKE_NOW_NS - s * 10**9) // 1000 for s in (10, 20, 30))
    expected = {"ac_etime": etimes, "ac_utime": 600_000, "ac_stime": 60_000, "nvcsw": 23,
                "nivcsw": 6, "cpu_count": 6, "cpu_delay_total": 60,
                "cpu_run_virtual_total": 600, "cpu_run_real_total": 660_000_000,
                "cpu_scaled_run_real_total": 660_000_000, "blkio_count": 1,
                "blkio_delay_total": 20_000_000, "version": PROFILE.taskstats_version}
    assert {k: v[k] for k in expected} == expected
    rest = {k: x for k, x in v.items() if k not in expected}
    assert all(x in (0, b"") or x == {"tv_sec": 0, "tv_nsec": 0} for x in rest.values()), rest


def test_fake_tgid_skips_a_zombie_leader(tmp_path: Path) -> None:
    fake_task(tmp_path, 700, 700, state="Z", flags=0x4 | 0x400, exit_code=9, utime=10,
              nvcsw=5, starttime=1000)
    fake_task(tmp_path, 700, 701, utime=20, nvcsw=7, starttime=2000)
    mirror = fake_mirror(tmp_path)
    v = mirror.tgid_stats(700)
    assert (v["ac_utime"], v["nvcsw"]) == (200_000, 7)
    leader = mirror.pid_stats(700)  # a zombie leader still answers a PID query
    assert (leader["ac_exitcode"], leader["ac_flag"], leader["hiwater_rss"]) == \
        (9, AcFlag.AXSIG, 0)


def test_fake_profiles_shape_the_record(tmp_path: Path) -> None:
    fake_task(tmp_path, 5, 5, utime=1)
    for profile in PROFILES.values():
        mirror = fake_mirror(tmp_path, profile)
        for v in (mirror.pid_stats(5), mirror.tgid_stats(5)):
            assert v["version"] == profile.taskstats_version
            assert set(v) <= set(layout(profile.taskstats_version).names)
            layout(profile.taskstats_version).build(v)
    assert "irq_count" not in fake_mirror(tmp_path, PROFILES["6.1"]).pid_stats(5)


def test_fake_unreadable_io_and_exe_read_zero(tmp_path: Path, exe: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake_task(tmp_path, 8, 8, io=IO, exe=exe, minflt=4)
    real_read = hostmirror._read

    def denied(dfd: int, name: str) -> bytes:
        if name == "io":
            raise PermissionError(13, "Permission denied")
        return real_read(dfd, name)

    monkeypatch.setattr(hostmirror, "_read", denied)
    (tmp_path / "8" / "task" / "8" / "exe").unlink()  # no exe: as for a kernel thread
    v = fake_mirror(tmp_path).pid_stats(8)
    assert v["ac_minflt"] == 4
    assert all(v[k] == 0 for k in ("read_char", "write_bytes", "ac_exe_dev", "ac_exe_inode"))


@pytest.mark.parametrize("during", ["status", "io", "schedstat"])
def test_fake_task_vanishing_between_reads(tmp_path: Path, during: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    fake_task(tmp_path, 8, 8, io=IO)
    real_read = hostmirror._read

    def racing(dfd: int, name: str) -> bytes:
        if name == during:
            shutil.rmtree(tmp_path / "8")
        return real_read(dfd, name)

    monkeypatch.setattr(hostmirror, "_read", racing)
    with pytest.raises(NoSuchTask):
        fake_mirror(tmp_path).pid_stats(8)


@pytest.mark.parametrize("stat", [b"", b"8 (x S 1", b"8 (x) S 1 2", b"garbage (x) S " * 9,
                                  b"8 (x) " + b"y " * 60])
def test_fake_unparsable_stat_is_no_task(tmp_path: Path, stat: bytes) -> None:
    d = fake_task(tmp_path, 8, 8)
    (d / "stat").write_bytes(stat)
    mirror = fake_mirror(tmp_path)
    with pytest.raises(LookupError):
        mirror.pid_stats(8)


# --- the table first --------------------------------------------------------------------


def test_a_table_task_shadows_the_host_pid() -> None:
    pid = os.getpid()
    table = _table()
    mirror = HostMirror(table, PROFILE)
    table.spawn(pid=pid, comm="shadow", ppid=1, threads=2)
    assert mirror.pid_stats(pid)["ac_comm"] == b"shadow"
    assert mirror.pid_stats(pid)["ac_ppid"] == 1
    assert mirror.tgid_stats(pid) == table.tgid_stats(pid)
    assert mirror.cgroup_counts("/") == table.cgroup_counts("/")
    assert mirror.cgroup_counts("/nope") is None
    # table attributes pass through, so the mirror stands wherever the table stood
    assert mirror.get(pid).comm == b"shadow"


def test_unknown_on_both_sides_is_the_tables_lookup_error(mirror: HostMirror) -> None:
    for query in (mirror.pid_stats, mirror.tgid_stats):
        for ident in (NOBODY, 0, -1):
            with pytest.raises(NoSuchTask):
                query(ident)


def test_the_kernel_model_answers_host_pids_through_the_mirror(mirror: HostMirror) -> None:
    kernel = Kernel(mirror, profile=PROFILE, nr_cpus=2)
    sender = Sender(port=77, admin=True)
    fid = kernel.taskstats.id
    [reply] = kernel.handle(encode_taskstats_get(fid, pid=os.getpid(), seq=5), sender)
    assert isinstance(reply, Send)
    msg = decode_message(split_datagram(reply.data)[0], fid)
    assert isinstance(msg, TaskstatsReply)
    assert msg.records[0].values()["ac_pid"] == os.getpid()
    [refused] = kernel.handle(encode_taskstats_get(fid, tgid=NOBODY, seq=6), sender)
    assert isinstance(refused, Send)
    error = decode_message(split_datagram(refused.data)[0], fid)
    assert isinstance(error, ErrorMessage) and error.error == -3  # ESRCH


# --- the live host -----------------------------------------------------------------------


def test_own_pid_mirrored(mirror: HostMirror) -> None:
    pid = os.getpid()
    before = os.times()
    thread_before = time.thread_time_ns()
    v = mirror.pid_stats(pid)
    thread_after = time.thread_time_ns()
    assert (v["ac_pid"], v["ac_tgid"], v["ac_ppid"]) == (pid, pid, os.getppid())
    assert (v["ac_uid"], v["ac_gid"]) == (os.getuid(), os.getgid())
    assert v["ac_comm"] == _stat_comm(pid, pid)
    assert v["version"] == PROFILE.taskstats_version
    # CPU times: whole ticks of this (main) thread, no more than the process's, and close to
    # the thread's exact CPU clock (/proc's times are adjusted to follow it)
    assert v["ac_utime"] % TICK_US == 0 and v["ac_stime"] % TICK_US == 0
    assert v["ac_utime"] <= (before.user + 0.05) * 10**6 + TICK_US * 2
    assert v["ac_stime"] <= (before.system + 0.05) * 10**6 + TICK_US * 2
    cpu_us = v["ac_utime"] + v["ac_stime"]
    assert thread_before // 1000 - 3 * TICK_US <= cpu_us <= thread_after // 1000 + TICK_US
    assert v["cpu_run_real_total"] == cpu_us * 1000
    assert thread_before - 50_000_000 <= v["cpu_run_virtual_total"] <= thread_after
    assert v["cpu_count"] >= 1
    for name in ("read_char", "write_char", "read_syscalls", "write_syscalls", "read_bytes",
                 "write_bytes", "cancelled_write_bytes"):
        assert v[name] % 1024 == 0
    assert v["read_char"] > 0  # python read its own modules
    assert v["hiwater_rss"] > 1000 and v["hiwater_vm"] >= v["hiwater_rss"]
    st = os.stat(sys.executable)
    assert (v["ac_exe_dev"], v["ac_exe_inode"]) == \
        (huge_encode_dev(os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino)
    start_age = time.clock_gettime(time.CLOCK_BOOTTIME) - _start_seconds(pid)
    assert abs(v["ac_etime"] / 10**6 - start_age) < 1
    assert abs(v["ac_btime"] + v["ac_etime"] / 10**6 - time.time()) < 2
    assert v["ac_btime64"] == v["ac_btime"]
    built = layout(PROFILE.taskstats_version).build(v)
    assert layout(PROFILE.taskstats_version).parse(built)["ac_pid"] == pid


def _start_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rindex(b")") + 2:].split()[19]) * TICK_NS / 10**9


@pytest.fixture
def busy_thread() -> Iterator[tuple[int, int]]:
    """A thread of the test process that burned some CPU and now waits: (tid, its CPU ns)."""
    box: list[int] = []
    ready, done = threading.Event(), threading.Event()

    def run() -> None:
        try:
            end = time.thread_time_ns() + 60_000_000
            while time.thread_time_ns() < end:
                pass
            box.extend((threading.get_native_id(), time.thread_time_ns()))
        finally:
            ready.set()
        done.wait(60)

    thread = threading.Thread(target=run, name="hostmirror-test", daemon=True)
    thread.start()
    assert ready.wait(10) and box, "the test thread did not start"
    yield box[0], box[1]
    done.set()
    thread.join()


def test_a_thread_of_the_test_process(mirror: HostMirror,
                                      busy_thread: tuple[int, int]) -> None:
    tid, cpu_ns = busy_thread
    pid = os.getpid()
    assert tid != pid
    v = mirror.pid_stats(tid)
    assert (v["ac_pid"], v["ac_tgid"], v["ac_ppid"]) == (tid, pid, os.getppid())
    assert v["ac_comm"] == _stat_comm(pid, tid)
    assert not v["ac_flag"] & AcFlag.AFORK
    # the thread's own times, not the process's
    assert abs(v["ac_utime"] + v["ac_stime"] - cpu_ns // 1000) <= 3 * TICK_US
    assert abs(v["cpu_run_virtual_total"] - cpu_ns) <= 5_000_000
    leader = mirror.pid_stats(pid)
    assert v["ac_etime"] < leader["ac_etime"]
    # ac_tgetime is measured from the leader's start (looked at a moment later here)
    assert 0 <= leader["ac_etime"] - v["ac_tgetime"] < 500_000
    assert (v["ac_exe_dev"], v["ac_exe_inode"]) == (leader["ac_exe_dev"], leader["ac_exe_inode"])


MONOTONIC = ("ac_utime", "ac_stime", "nvcsw", "nivcsw", "cpu_count", "cpu_delay_total",
             "cpu_run_virtual_total", "cpu_run_real_total", "ac_etime")


def test_tgid_of_the_test_process_sums_its_threads(mirror: HostMirror,
                                                   busy_thread: tuple[int, int]) -> None:
    pid = os.getpid()

    def each_thread() -> dict[int, Mapping[str, Any]]:
        out = {}
        for name in os.listdir(f"/proc/{pid}/task"):
            try:
                out[int(name)] = mirror.pid_stats(int(name))
            except LookupError:
                pass
        return out

    before = each_thread()
    total = mirror.tgid_stats(pid)
    after = each_thread()
    assert busy_thread[0] in before and busy_thread[0] in after
    common = before.keys() & after.keys()
    for name in MONOTONIC:
        # counters only grow: the sum lies between the threads' values before and after
        assert total[name] >= sum(before[t][name] for t in common), name
        if before.keys() == after.keys():
            assert total[name] <= sum(after[t][name] for t in after), name
    assert (total["ac_pid"], total["ac_tgid"], total["ac_comm"], total["ac_btime"]) == \
        (0, 0, b"", 0)
    assert total["read_char"] == total["hiwater_rss"] == total["ac_minflt"] == 0
    assert total["version"] == PROFILE.taskstats_version


def test_a_vanished_process_is_no_task(mirror: HostMirror) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    if os.path.exists(f"/proc/{child.pid}"):
        pytest.skip(f"pid {child.pid} was reused at once")
    with pytest.raises(NoSuchTask):
        mirror.pid_stats(child.pid)
    with pytest.raises(NoSuchTask):
        mirror.tgid_stats(child.pid)


# --- sleeping children: static values, exact sums, and the host kernel's records ----------

CHILD = r"""
import os, signal, sys, threading, time
box, ready = [], threading.Event()
def sleeper():
    box.append(threading.get_native_id())
    ready.set()
    time.sleep(120)
threading.Thread(target=sleeper, daemon=True).start()
ready.wait()
child = os.fork()
if child == 0:
    time.sleep(120)
    os._exit(0)
def stop(*_):
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print(box[0], child, flush=True)
time.sleep(120)
"""


def _asleep(tids: list[tuple[int, int]]) -> bool:
    for pid, tid in tids:
        raw = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
        if raw[raw.rindex(b")") + 2:][:1] != b"S":
            return False
    return True


def _schedstats(tids: list[tuple[int, int]]) -> list[bytes]:
    return [Path(f"/proc/{p}/task/{t}/schedstat").read_bytes() for p, t in tids]


@pytest.fixture(scope="module")
def sleepers() -> Iterator[dict[str, tuple[int, int]]]:
    """Sleeping tasks whose counters stand still, by role: (tgid, tid) of `sleep 120`, a
    Python process, one of its threads, and a child it forked without exec."""
    sleep = subprocess.Popen(["sleep", "120"])
    py = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    try:
        assert py.stdout is not None
        thread, forked = map(int, py.stdout.readline().split())
        roles = {"sleep": (sleep.pid, sleep.pid), "python": (py.pid, py.pid),
                 "thread": (py.pid, thread), "forked": (forked, forked)}
        tids = list(roles.values())
        deadline = time.monotonic() + 10
        while True:  # asleep, exec'd, and their scheduler counters settled
            if _asleep(tids) and _stat_comm(sleep.pid, sleep.pid) == b"sleep":
                snap = _schedstats(tids)
                time.sleep(0.05)
                if _asleep(tids) and _schedstats(tids) == snap:
                    break
            assert time.monotonic() < deadline, "children did not fall asleep"
            time.sleep(0.02)
        yield roles
    finally:
        sleep.kill()
        py.terminate()
        sleep.wait()
        py.wait()


def _strip_time(v: Mapping[str, Any]) -> dict[str, Any]:
    return {k: x for k, x in v.items()
            if k not in ("ac_etime", "ac_tgetime", "ac_btime", "ac_btime64")}


def test_sleeping_children_mirrored(mirror: HostMirror,
                                    sleepers: dict[str, tuple[int, int]]) -> None:
    pids = {role: tid for role, (_, tid) in sleepers.items()}
    records = {role: mirror.pid_stats(tid) for role, tid in pids.items()}
    assert records["sleep"]["ac_comm"] == b"sleep"
    assert records["sleep"]["ac_ppid"] == os.getpid()
    assert records["thread"]["ac_tgid"] == pids["python"]
    assert records["thread"]["ac_pid"] == pids["thread"]
    assert records["forked"]["ac_ppid"] == pids["python"]
    assert records["forked"]["ac_flag"] & AcFlag.AFORK
    assert not records["python"]["ac_flag"] & AcFlag.AFORK
    assert not records["thread"]["ac_flag"] & AcFlag.AFORK
    # asleep: a second look sees the same counters
    for role, tid in pids.items():
        assert _strip_time(mirror.pid_stats(tid)) == _strip_time(records[role]), role


def test_sleeping_process_tgid_is_the_exact_sum(mirror: HostMirror,
                                                sleepers: dict[str, tuple[int, int]]) -> None:
    tgid = sleepers["python"][0]
    threads = [mirror.pid_stats(tgid), mirror.pid_stats(sleepers["thread"][1])]
    total = mirror.tgid_stats(tgid)
    after = [mirror.pid_stats(tgid), mirror.pid_stats(sleepers["thread"][1])]
    for name in MONOTONIC[:-1]:
        assert total[name] == sum(t[name] for t in threads), name
    assert sum(t["ac_etime"] for t in threads) <= total["ac_etime"] <= \
        sum(t["ac_etime"] for t in after)
    assert mirror.tgid_stats(sleepers["thread"][1])["nvcsw"] == total["nvcsw"]


# --- the host kernel ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def host() -> Iterator[HostNetlink]:
    netlink = require_host_taskstats()
    yield netlink
    netlink.close()


def _host_record(host: HostNetlink, **which: int) -> dict[str, Any]:
    [datagram] = host.ask(encode_taskstats_get(host.family, seq=1, **which), quiet=0.05)
    msg = decode_message(split_datagram(datagram)[0], host.family)
    assert isinstance(msg, TaskstatsReply), msg
    return msg.records[0].values()


def _bracketed(host: HostNetlink, mirror: HostMirror, query: str, ident: int
               ) -> tuple[dict[str, Any], Mapping[str, Any], Mapping[str, Any]]:
    """The kernel's record, with the mirror's just before and just after it."""
    source = getattr(mirror, query)
    before = source(ident)
    kernel = _host_record(host, **{"pid" if query == "pid_stats" else "tgid": ident})
    after = source(ident)
    return kernel, before, after


#: Fields the mirror reads from the same kernel variable the taskstats record is filled from.
EXACT_PID = ("version", "ac_pid", "ac_tgid", "ac_ppid", "ac_uid", "ac_gid", "ac_comm",
             "ac_nice", "ac_sched", "ac_flag", "ac_exitcode", "ac_minflt", "ac_majflt",
             "hiwater_vm", "nvcsw", "nivcsw", "cpu_count", "cpu_delay_total",
             "cpu_run_virtual_total", "read_char", "write_char", "read_syscalls",
             "write_syscalls", "read_bytes", "write_bytes", "cancelled_write_bytes",
             "ac_exe_dev", "ac_exe_inode")
EXACT_TGID = ("version", "ac_pid", "ac_tgid", "ac_comm", "ac_btime", "nvcsw", "nivcsw",
              "cpu_count", "cpu_delay_total", "cpu_run_virtual_total", "ac_minflt",
              "hiwater_rss", "read_char")
#: /proc's times are whole ticks and cputime-adjusted, taskstats' raw: a few ticks apart.
TIMES = ("ac_utime", "ac_stime", "ac_utimescaled", "ac_stimescaled")


def _rss_slack_kib() -> int:
    """How far the kernel's approximate RSS (percpu counters' central value) may lag the
    exact sum /proc/<pid>/status shows: a batch per CPU for each of the three counters."""
    cpus = os.cpu_count() or 1
    return 3 * max(32, 2 * cpus) * cpus * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.host
@pytest.mark.parametrize("role", ["sleep", "python", "thread", "forked"])
def test_pid_record_against_the_host_kernel(role: str, host: HostNetlink,
                                            sleepers: dict[str, tuple[int, int]]) -> None:
    mirror = HostMirror(_table(), PROFILE)
    tid = sleepers[role][1]
    kernel, before, after = _bracketed(host, mirror, "pid_stats", tid)
    if kernel["version"] != PROFILE.taskstats_version:
        mirror = HostMirror(_table(), _profile_for(kernel["version"]))
        kernel, before, after = _bracketed(host, mirror, "pid_stats", tid)
    assert {k: after[k] for k in EXACT_PID} == {k: kernel[k] for k in EXACT_PID}
    # time: the kernel answered between the mirror's two looks; /proc's start is whole ticks
    for name in ("ac_etime", "ac_tgetime"):
        assert before[name] - TICK_US <= kernel[name] <= after[name], name
    assert abs(after["ac_btime"] - kernel["ac_btime"]) <= 1
    assert abs(after["ac_btime64"] - kernel["ac_btime64"]) <= 1
    for name in TIMES:
        assert abs(after[name] - kernel[name]) <= 3 * TICK_US, name
    for name in ("cpu_run_real_total", "cpu_scaled_run_real_total"):
        assert abs(after[name] - kernel[name]) <= 3 * TICK_NS, name
    assert kernel["blkio_delay_total"] - TICK_NS < after["blkio_delay_total"] <= \
        kernel["blkio_delay_total"]
    assert abs(after["hiwater_rss"] - kernel["hiwater_rss"]) <= _rss_slack_kib()


@pytest.mark.host
@pytest.mark.parametrize("role", ["sleep", "python", "thread"])
def test_tgid_record_against_the_host_kernel(role: str, host: HostNetlink,
                                             sleepers: dict[str, tuple[int, int]]) -> None:
    profile = _profile_for(_host_record(host, pid=os.getpid())["version"])
    mirror = HostMirror(_table(), profile)
    ident = sleepers[role][1]
    kernel, before, after = _bracketed(host, mirror, "tgid_stats", ident)
    threads = len(os.listdir(f"/proc/{ident}/task"))
    assert {k: after[k] for k in EXACT_TGID} == {k: kernel[k] for k in EXACT_TGID}
    assert before["ac_etime"] - threads * TICK_US <= kernel["ac_etime"] <= after["ac_etime"]
    for name in ("ac_utime", "ac_stime"):
        assert abs(after[name] - kernel[name]) <= 3 * threads * TICK_US, name
    assert abs(after["cpu_run_real_total"] - kernel["cpu_run_real_total"]) <= \
        3 * threads * TICK_NS


def _profile_for(version: int) -> Any:
    for profile in PROFILES.values():
        if profile.taskstats_version == version:
            return profile
    pytest.skip(f"the host kernel speaks taskstats v{version}, which no profile offers")
