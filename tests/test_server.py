"""The emulated kernel over its real socket: GET, listeners, exit broadcasts, flow control,
permissions, CGROUPSTATS — driven by native clients, as a taskstats client would."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.client import Client, NetlinkError
from tsemu.emulator.shell.server import Server
from tsemu.wire import AcFlag, Flag, SockOpt, TaskstatsType, encode_taskstats_get

pytestmark = pytest.mark.trio


async def exit_and_settle(server: Server, tid: int, **kw: Any) -> None:
    await server.broadcast(server.tasks.exit_task(tid, **kw))
    await server.settle()


async def test_get_pid_returns_the_tasks_record(server: Server) -> None:
    task = server.tasks.spawn(comm="worker", uid=1000, gid=100, cpu=1,
                             counters={"cpu_count": 4, "cpu_delay_total": 9000,
                                       "read_bytes": 5000, "utime_ns": 2_500_000})
    async with await Client.connect(server.socket_path) as c:
        record = await c.get_pid(task.tid)
    values = record.values()
    assert record.aggr == TaskstatsType.AGGR_PID and record.id == task.tid
    assert len(record.stats) == 560 and values["version"] == 16
    assert values["ac_comm"] == b"worker" and values["ac_uid"] == 1000
    assert values["cpu_count"] == 4 and values["cpu_delay_total"] == 9000
    assert values["read_bytes"] == 4096, "rounded down to 1024 as the kernel does"
    assert values["ac_utime"] == 2500


async def test_get_unknown_pid_is_esrch(server: Server) -> None:
    async with await Client.connect(server.socket_path) as c:
        with pytest.raises(NetlinkError) as raised:
            await c.get_pid(31337)
    assert raised.value.errno == errno.ESRCH
    assert len(raised.value.reply.encode()) == 48


async def test_thread_group_exit_record_field_by_field(server: Server) -> None:
    leader = server.tasks.spawn(comm="svc", cpu=0, threads=2,
                               counters={"cpu_count": 3, "cpu_delay_total": 300,
                                         "cpu_delay_max": 200, "cpu_delay_min": 10,
                                         "nvcsw": 5, "utime_ns": 4_000_000})
    (worker_tid,) = [t for t in server.tasks.group(leader.tid).tids if t != leader.tid]
    server.tasks.set(worker_tid, cpu_count=2, cpu_delay_total=50, cpu_delay_max=30,
                    cpu_delay_min=20, nvcsw=1, nivcsw=7, blkio_count=1,
                    blkio_delay_total=1000)
    server.tasks.clock.advance(2.5)
    async with await Client.connect(server.socket_path) as c:
        await c.register("0")
        for report in server.tasks.exit_group(leader.tid, code=3, leader_last=True):
            await server.broadcast(report)
        await server.settle()
        with trio.fail_after(2):
            first = await c.next_event()
            last = await c.next_event()
    assert [r.aggr for r in first.records] == [TaskstatsType.AGGR_PID]
    assert first.records[0].id == worker_tid
    assert not first.records[0].values()["ac_flag"] & AcFlag.AGROUP
    pid_rec, tgid_rec = last.records
    assert (pid_rec.id, tgid_rec.id) == (leader.tid, leader.tid)
    assert len(last.encode()) == 1172
    leader_values = pid_rec.values()
    assert leader_values["ac_flag"] & AcFlag.AGROUP
    assert leader_values["ac_exitcode"] == 3 << 8
    tgid = tgid_rec.values()
    assert tgid["version"] == 16
    assert tgid["cpu_count"] == 5 and tgid["cpu_delay_total"] == 350
    assert (tgid["cpu_delay_max"], tgid["cpu_delay_min"]) == (200, 10), "the last thread's"
    assert tgid["blkio_count"] == 1 and tgid["blkio_delay_total"] == 1000
    assert tgid["nvcsw"] == 6 and tgid["nivcsw"] == 7
    assert tgid["ac_utime"] == 4000
    assert tgid["ac_etime"] == 2 * 2_500_000, "both threads lived 2.5 s"
    assert tgid["ac_pid"] == tgid["ac_tgid"] == tgid["ac_btime"] == 0
    assert tgid["ac_comm"] == b""
    assert (first.header.seq, last.header.seq) == (0, 1)
    assert first.header.pid == last.header.pid == 0


async def test_listeners_hear_only_their_cpus_in_sequence(server: Server) -> None:
    tasks = [server.tasks.spawn(comm=f"job{i}", cpu=i % 2) for i in range(6)]
    async with await Client.connect(server.socket_path) as a, \
            await Client.connect(server.socket_path) as b:
        await a.register("0")
        await b.register("1")
        for task in tasks:
            await server.broadcast(server.tasks.exit_task(task.tid))
        await server.settle()
        with trio.fail_after(2):
            got_a = [await a.next_event() for _ in range(3)]
            got_b = [await b.next_event() for _ in range(3)]
        with trio.move_on_after(0.1):
            extra = await a.next_event()
            pytest.fail(f"listener on CPU 0 got an extra event {extra}")
    assert [e.records[0].id for e in got_a] == [t.tid for t in tasks[0::2]]
    assert [e.records[0].id for e in got_b] == [t.tid for t in tasks[1::2]]
    assert [e.header.seq for e in got_a] == [0, 1, 2]
    assert [e.header.seq for e in got_b] == [0, 1, 2]


async def test_register_twice_is_one_listener_and_deregister_is_idempotent(
        server: Server) -> None:
    async with await Client.connect(server.socket_path) as c:
        await c.register("0-1")
        await c.register("0")
        assert server.listeners.listeners() == {0: [c.port], 1: [c.port]}
        await c.deregister("1")
        await c.deregister("1")
        assert server.listeners.listeners() == {0: [c.port]}
        task = server.tasks.spawn(comm="once", cpu=0)
        await exit_and_settle(server, task.tid)
        with trio.fail_after(2):
            event = await c.next_event()
        with trio.move_on_after(0.1):
            await c.next_event()
            pytest.fail("a socket registered twice heard one exit twice")
    assert event.records[0].id == task.tid


async def test_exit_on_a_cpu_without_listeners_takes_no_sequence_number(
        server: Server) -> None:
    async with await Client.connect(server.socket_path) as c:
        await c.register("0")
        await exit_and_settle(server, server.tasks.spawn(comm="a", cpu=1).tid)
        await exit_and_settle(server, server.tasks.spawn(comm="b", cpu=0).tid)
        with trio.fail_after(2):
            event = await c.next_event()
    assert event.header.seq == 0 and server.listeners.cpus[1].seq == 0


async def test_a_listener_that_stops_reading_gets_enobufs_the_other_loses_nothing(
        server: Server) -> None:
    count = 400
    async with await Client.connect(server.socket_path) as slow, \
            await Client.connect(server.socket_path) as fast:
        await slow.register("0")
        await fast.register("0")
        received = 0

        async def keep_reading() -> None:
            nonlocal received
            while received < count:
                await fast.next_event()
                received += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_reading)
            for i in range(count):
                task = server.tasks.spawn(comm=f"short{i}", cpu=0)
                await server.broadcast(server.tasks.exit_task(task.tid))
                if i % 20 == 0:
                    await server.settle()
                    await trio.sleep(0.001)
            await server.settle()
        slow_outbox = server.clients[slow.port].outbox
        assert received == count, "the listener that keeps up loses nothing"
        assert server.clients[fast.port].outbox.dropped == 0
        # 596-byte events cost 1280 bytes of a 212992-byte buffer: 166 fit, as on 6.18.
        kept = count - slow_outbox.dropped
        assert kept == 166
        events = []
        with trio.fail_after(5):
            while True:
                try:
                    events.append(await slow.next_event())
                except OSError as exc:
                    assert exc.errno == errno.ENOBUFS
                    break
            before = len(events)
            while len(events) < kept:
                with trio.move_on_after(1):
                    events.append(await slow.next_event())
                    continue
                pytest.fail(f"{before} events before ENOBUFS, {len(events)} in all; "
                            f"outbox {slow_outbox.__dict__}")
        with trio.move_on_after(0.1):
            await slow.next_event()
            pytest.fail("more events than the buffer held")
        assert [e.header.seq for e in events] == list(range(kept))


async def test_a_smaller_rcvbuf_holds_fewer_and_no_enobufs_hides_the_error(
        server: Server) -> None:
    async with await Client.connect(server.socket_path) as c:
        assert await c.set_rcvbuf(4096) == 8192
        await c.set_option(SockOpt.NO_ENOBUFS, 1)
        await c.register("0")
        for _ in range(30):
            task = server.tasks.spawn(comm="x", cpu=0)
            await server.broadcast(server.tasks.exit_task(task.tid))
        await server.settle()
        events = []
        with trio.move_on_after(0.2):
            while True:
                events.append(await c.next_event())
    assert len(events) == 6, "8192 // 1280 events fit; no ENOBUFS raised"


async def test_a_dead_listener_is_removed(server: Server) -> None:
    gone = await Client.connect(server.socket_path)
    async with await Client.connect(server.socket_path) as alive:
        await gone.register("0")
        await alive.register("0")
        gone.close()
        assert set(server.listeners.listeners()[0]) == {gone.port, alive.port}
        for _ in range(2):
            await exit_and_settle(server, server.tasks.spawn(comm="x", cpu=0).tid)
            await trio.sleep(0.05)
        with trio.fail_after(2):
            await alive.next_event()
            await alive.next_event()
        await server.settle()
        assert server.listeners.listeners()[0] == [alive.port]
        assert gone.port not in server.clients


async def test_ack_follows_the_reply_and_several_requests_are_answered_in_order(
        server: Server) -> None:
    task = server.tasks.spawn(comm="t")
    async with await Client.connect(server.socket_path) as c:
        fid = await c.family_id()
        datagram = (encode_taskstats_get(fid, pid=task.tid, seq=10,
                                         flags=Flag.REQUEST | Flag.ACK)
                    + encode_taskstats_get(fid, pid=999_999, seq=11)
                    + encode_taskstats_get(fid, tgid=task.tid, seq=12))
        await c.send(datagram)
        with trio.fail_after(2):
            replies = [await c.recv() for _ in range(4)]
    sizes = [len(r) for r in replies]
    seqs = [int.from_bytes(r[8:12], "little") for r in replies]
    assert sizes == [596, 36, 48, 596] and seqs == [10, 10, 11, 12]


async def test_cgroupstats_counts_the_tables_cgroup(server: Server, short_tmp: Path) -> None:
    from tsemu.emulator.model.tasks import TaskState

    root = short_tmp / "cgroup"
    (root / "jobs").mkdir(parents=True)
    server.kernel.cgroup_roots = (str(root),)
    for state in (TaskState.RUNNING, TaskState.SLEEPING, TaskState.SLEEPING):
        server.tasks.spawn(comm="j", cgroup="/jobs", state=state)
    async with await Client.connect(server.socket_path) as c:
        counts = await c.cgroupstats(root / "jobs")
        assert counts == {"nr_sleeping": 2, "nr_running": 1, "nr_stopped": 0,
                          "nr_uninterruptible": 0, "nr_io_wait": 0}
        (root / "other").mkdir()
        with pytest.raises(NetlinkError) as raised:
            await c.cgroupstats(root / "other")
        assert raised.value.errno == errno.EINVAL


_UNPRIVILEGED_GET = """
import os, sys, trio
from tsemu.client import Client, NetlinkError
# everything imported first: after the switch, root's Python installation may be unreadable
os.setgroups([]); os.setgid(65534); os.setuid(65534)
async def main():
    async with await Client.connect(sys.argv[1]) as c:
        try:
            await c.get_pid(1)
        except NetlinkError as e:
            print("errno", e.errno)
        print("cgroupstats-allowed", (await c.family()).name)
trio.run(main)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged uid needs root")
async def test_unprivileged_sender_gets_eperm(server: Server) -> None:
    server.tasks.spawn(comm="init", pid=1)
    os.chmod(server.socket_path.parent, 0o755)
    result = await trio.run_process(
        [sys.executable, "-c", _UNPRIVILEGED_GET, str(server.socket_path)],
        capture_stdout=True, capture_stderr=True, check=False)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert f"errno {errno.EPERM}" in out and "cgroupstats-allowed TASKSTATS" in out


async def test_root_sender_is_admin_by_default(server: Server) -> None:
    server.tasks.spawn(comm="init", pid=1)
    if os.geteuid() != 0:
        pytest.skip("the test process is not root: auto policy refuses it, as expected")
    async with await Client.connect(server.socket_path) as c:
        assert (await c.get_pid(1)).id == 1


async def test_arbitrary_bytes_do_not_disturb_the_server(server: Server) -> None:
    import random

    rng = random.Random(1234)
    server.tasks.spawn(comm="init", pid=1)
    async with await Client.connect(server.socket_path) as c:
        for size in list(range(0, 64)) + [rng.randrange(64, 4096) for _ in range(200)]:
            await c.send(bytes(rng.randrange(256) for _ in range(size)))
        await trio.sleep(0.1)
        assert server.stats.internal_errors == 0
        assert (await c.get_pid(1)).id == 1



_FAMILIES_OVER_SOCKET = """
import sys, trio
from tsemu.client import Client
async def main():
    async with await Client.connect(sys.argv[1]) as c:
        print(" ".join(f.name for f in await c.families()), (await c.get_pid(1)).id)
trio.run(main)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a new network namespace needs root")
async def test_a_client_in_another_network_namespace_shares_only_the_directory(
        server: Server) -> None:
    """Abstract Unix addresses do not cross network namespaces; file paths do."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("util-linux's unshare is not installed")
    server.tasks.spawn(comm="init", pid=1)
    result = await trio.run_process(
        ["unshare", "--net", sys.executable, "-c", _FAMILIES_OVER_SOCKET,
         str(server.socket_path)], capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["nlctrl", "TASKSTATS", "1"]
