"""The exit broadcast's fast paths: `Outbox.offer` sending at once, `Outbox.drain` sending held
messages in batches, `CpuListeners` broadcasting a run of exits under one read lock, and
`Emulator.storm` handing exits over in chunks. Each must keep what the slow paths guaranteed:
order, contiguous per-CPU sequence numbers, the netlink receive-buffer budget and its ENOBUFS
rule, and dead listeners dropped."""

from __future__ import annotations

import errno
import socket
import struct
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.client import Client
from tsemu.emulator.shell.listeners import BATCH, CpuListeners, ListenerTable
from tsemu.emulator.shell.outbox import Outbox, truesize
from tsemu.emulator.shell.runner import STORM_CHUNK
from tsemu.wire.control import ENOBUFS_NOTICE

from .emulating import emulator, listen

SIZE = 596  # an exit event: 1280 bytes of truesize
BUDGET = 212992  # rmem_default: 166 events fit


def msg(i: int) -> bytes:
    return struct.pack("<I", i) + bytes(SIZE - 4)


def index(data: bytes) -> int:
    value: int = struct.unpack_from("<I", data)[0]
    return value


class Peer:
    """A client's socket (bound to a path, non-blocking, read by the test) and the server's
    socket connected to it, as `Server._client` makes them: the peer's queue holds at most
    max_dgram_qlen datagrams, so a reader that does not read makes sends fail with EAGAIN."""

    def __init__(self, tmp: Path) -> None:
        path = str(tmp / "client.sock")
        self.client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.client.bind(path)
        self.client.setblocking(False)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.connect(path)
        self.server = trio.socket.from_stdlib_socket(server)

    def read_now(self) -> list[bytes]:
        """Every datagram the client's socket holds now."""
        got = []
        while True:
            try:
                got.append(self.client.recv(1 << 16))
            except BlockingIOError:
                return got

    async def read(self, count: int, timeout: float = 5) -> list[bytes]:
        """The next `count` datagrams (ENOBUFS notices included), waiting for them."""
        got: list[bytes] = []
        with trio.fail_after(timeout):
            while len(got) < count:
                try:
                    got.append(self.client.recv(1 << 16))
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self.client)
        return got

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
async def peer(short_tmp: Path) -> Any:
    p = Peer(short_tmp)
    yield p
    p.close()


@asynccontextmanager
async def draining(box: Outbox) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.drain)
        yield nursery
        nursery.cancel_scope.cancel()


# -- Outbox: immediate send, batched drain -------------------------------------------------


async def test_offer_sends_at_once_when_nothing_is_held(peer: Peer) -> None:
    box = Outbox(peer.server, BUDGET)
    assert box.offer(msg(7))  # no drain task, no checkpoint: the send happened in offer
    assert peer.read_now() == [msg(7)]
    assert box.delivered == 1 and not box._queue and box._queued == 0
    assert box._charged() == truesize(SIZE), "sent but maybe unread: still charged"


async def test_a_full_client_queue_holds_messages_and_drain_keeps_their_order(
        peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    waits = 0
    wait_writable = trio.lowlevel.wait_writable

    async def counting(sock: Any) -> None:
        nonlocal waits
        waits += 1
        await wait_writable(sock)

    monkeypatch.setattr(trio.lowlevel, "wait_writable", counting)
    box = Outbox(peer.server, 1 << 24)
    for i in range(200):
        assert box.offer(msg(i))
    direct = box.delivered
    assert 0 < direct < 200, "the client's Unix queue takes a few, the rest are held"
    assert len(box._queue) == 200 - direct
    got: list[bytes] = []
    async with draining(box):
        got += await peer.read(100)
        for i in range(200, 300):  # offered while others are still held: queued behind them
            assert box.offer(msg(i))
        got += await peer.read(200)
        with trio.fail_after(5):
            while box._queue:
                await trio.sleep(0.001)
    assert [index(d) for d in got] == list(range(300))
    assert box.delivered == 300 and box.dropped == 0
    assert waits <= 300 // 5, f"{waits} waits for 300 messages: the drain sends in batches"
    # Caught up: the next one goes straight out again.
    assert box.offer(msg(300)) and peer.read_now() == [msg(300)]


async def test_budget_and_enobufs_are_the_same_when_sends_and_the_queue_mix(
        peer: Peer) -> None:
    box = Outbox(peer.server, BUDGET)
    async with draining(box):
        for i in range(150):  # 150 x 1280 = 192000: all fit
            assert box.offer(msg(i))
        assert box.dropped == 0
        first = await peer.read(100)
        assert [index(d) for d in first] == list(range(100))
        # 50 are still unread (in the client's socket or held here): 166 - 50 = 116 more fit.
        for i in range(150, 350):
            assert box.offer(msg(i))
        assert box.dropped == 84 and box.congested
        rest = await peer.read(50 + 116 + 1)  # and one ENOBUFS notice
        with trio.move_on_after(0.1):
            extra = await peer.read(1)
            pytest.fail(f"more than the budget held: {extra}")
        assert rest.count(ENOBUFS_NOTICE) == 1
        assert [index(d) for d in rest if d != ENOBUFS_NOTICE] == list(range(100, 266))
        # Everything read: the congestion ends with the next message, which is delivered.
        assert box.offer(msg(1000))
        assert await peer.read(1) == [msg(1000)]
        assert not box.congested and box.dropped == 84


async def test_166_of_a_burst_fit_and_enobufs_comes_once(peer: Peer) -> None:
    box = Outbox(peer.server, BUDGET)
    for i in range(400):
        box.offer(msg(i))
    assert 400 - box.dropped == 166
    async with draining(box):
        got = await peer.read(167)
        with trio.move_on_after(0.1):
            await peer.read(1)
            pytest.fail("more than 166 events and one notice")
    assert got.count(ENOBUFS_NOTICE) == 1
    assert [index(d) for d in got if d != ENOBUFS_NOTICE] == list(range(166))


async def test_no_enobufs_drops_the_same_without_a_notice(peer: Peer) -> None:
    box = Outbox(peer.server, BUDGET)
    box.no_enobufs = True
    for i in range(400):
        box.offer(msg(i))
    async with draining(box):
        got = await peer.read(166)
        with trio.move_on_after(0.1):
            await peer.read(1)
            pytest.fail("a notice or an extra event")
    assert [index(d) for d in got] == list(range(166)) and box.dropped == 234


async def test_a_vanished_client_is_gone_at_the_first_send(peer: Peer) -> None:
    calls = []
    box = Outbox(peer.server, BUDGET, on_gone=lambda: calls.append(1))
    assert box.offer(msg(0))
    peer.client.close()
    assert box.offer(msg(1)) is False, "the immediate send found the socket gone"
    assert box.gone and calls == [1]
    assert box.offer(msg(2)) is False and calls == [1]
    with trio.fail_after(1):
        await box.drain()  # ends at once


async def test_a_client_that_vanishes_with_messages_held_ends_the_drain(peer: Peer) -> None:
    calls = []
    box = Outbox(peer.server, 1 << 24, on_gone=lambda: calls.append(1))
    for i in range(50):
        box.offer(msg(i))
    assert box._queue
    peer.client.close()
    with trio.fail_after(2):
        await box.drain()
    assert box.gone and calls == [1] and not box._queue and box._queued == 0


async def test_the_server_closing_the_socket_ends_the_drain_quietly(peer: Peer) -> None:
    calls = []
    box = Outbox(peer.server, 1 << 24, on_gone=lambda: calls.append(1))
    for i in range(50):
        box.offer(msg(i))
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.drain)
            await trio.sleep(0.01)
            peer.server.close()
    assert box.offer(msg(99)) is False and calls == []


# -- CpuListeners: a run of exits under one read lock ----------------------------------------


class Fake:
    """build/deliver for a `CpuListeners`, recording every delivery."""

    def __init__(self) -> None:
        self.log: list[tuple[int, bytes]] = []
        self.fail_from: dict[int, int] = {}  # port -> the first seq its socket is gone at
        self.failed: list[tuple[int, int]] = []  # (port, seq) of each failed delivery

    def build(self, seq: int, reports: list[Any]) -> list[bytes]:
        return [f"{(seq + i) & 0xFFFFFFFF}:{report}".encode() for i, report in enumerate(reports)]

    def deliver(self, port: int, events: list[bytes], cpu: int = 0) -> int:
        for n, data in enumerate(events):
            seq = int(data.split(b":")[0])
            if seq >= self.fail_from.get(port, 1 << 40):
                self.failed.append((port, seq))
                return n
            self.log.append((port, data))
        return len(events)

    def heard(self, port: int) -> list[tuple[int, int]]:
        """(seq, report) of each event `port` got, in order."""
        heard = []
        for p, d in self.log:
            if p == port:
                seq, report = d.split(b":")
                heard.append((int(seq), int(report)))
        return heard


@asynccontextmanager
async def broadcasting(cpu: CpuListeners, fake: Fake) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cpu.run, fake.build, fake.deliver)
        yield
        await cpu.wait_idle()
        nursery.cancel_scope.cancel()


async def test_batches_keep_order_seq_newest_first_and_one_message_for_all() -> None:
    cpu, fake = CpuListeners(0), Fake()
    for port in (1, 2, 3, 2):
        await cpu.register(port)
    assert cpu.ports == [3, 2, 1]
    total = 2 * BATCH + 100
    async with broadcasting(cpu, fake):
        await cpu.submit_many(range(0, 10))
        for r in range(10, 20):
            await cpu.submit(r)
        await cpu.submit_many(range(20, total))
    expected = [(i, i) for i in range(total)]
    for port in (1, 2, 3):
        assert fake.heard(port) == expected
    by_seq: dict[bytes, list[int]] = defaultdict(list)
    objects: dict[bytes, set[int]] = defaultdict(set)
    for port, data in fake.log:
        by_seq[data].append(port)
        objects[data].add(id(data))
    assert all(ports == [3, 2, 1] for ports in by_seq.values()), "the newest hears first"
    assert all(len(ids) == 1 for ids in objects.values()), "built once, the same bytes to all"
    assert cpu.seq == total and cpu.stats.events == total
    assert cpu.stats.deliveries == 3 * total


async def test_the_read_lock_is_taken_once_per_batch() -> None:
    cpu, fake = CpuListeners(0), Fake()
    await cpu.register(1)
    taken = 0
    acquire = cpu.lock.acquire_read

    async def counting() -> None:
        nonlocal taken
        taken += 1
        await acquire()

    cpu.lock.acquire_read = counting
    await cpu.submit_many(range(BATCH - 1))
    await cpu.submit_many([BATCH - 1])  # queued before the task runs: one run of BATCH
    async with broadcasting(cpu, fake):
        pass
    assert taken == 1
    taken = 0
    await cpu.submit_many(range(BATCH, 4 * BATCH))
    async with broadcasting(cpu, fake):
        pass
    assert taken == 3
    assert [s for s, _ in fake.heard(1)] == list(range(4 * BATCH))


async def test_a_listener_vanishing_mid_batch_hears_nothing_after_and_is_dropped() -> None:
    cpu, fake = CpuListeners(0), Fake()
    await cpu.register(1)
    await cpu.register(2)
    fake.fail_from[2] = 5
    await cpu.submit_many(range(20))
    async with broadcasting(cpu, fake):
        pass
    assert fake.heard(1) == [(i, i) for i in range(20)]
    assert fake.heard(2) == [(i, i) for i in range(5)]
    assert fake.failed == [(2, 5)], "tried once, then no more"
    assert cpu.ports == [1] and cpu.stats.dropped_listeners == 1
    assert cpu.seq == 20 and cpu.stats.deliveries == 25


async def test_exits_after_the_last_listener_vanished_take_no_sequence_number() -> None:
    cpu, fake = CpuListeners(0), Fake()
    await cpu.register(1)
    await cpu.register(2)
    fake.fail_from.update({1: 3, 2: 6})
    await cpu.submit_many(range(20))
    async with broadcasting(cpu, fake):
        pass
    # Exit 6 still found port 2 listed (its send failed), so it took seq 6; 7..19 took none.
    assert sorted(fake.failed) == [(1, 3), (2, 6)]
    assert cpu.ports == [] and cpu.seq == 7 and cpu.stats.events == 7
    await cpu.register(3)
    await cpu.submit_many(["late"])
    async with broadcasting(cpu, fake):
        pass
    assert fake.log[-1] == (3, b"7:late")


async def test_a_cpu_without_listeners_takes_no_sequence_numbers() -> None:
    cpu, fake = CpuListeners(0), Fake()
    await cpu.submit_many(range(50))
    async with broadcasting(cpu, fake):
        pass
    assert cpu.seq == 0 and cpu.stats.events == 0 and fake.log == []


async def test_a_registration_during_a_storm_hears_a_contiguous_tail() -> None:
    cpu, fake = CpuListeners(0), Fake()
    await cpu.register(1)
    total = 20 * BATCH
    async with broadcasting(cpu, fake):
        await cpu.submit_many(range(total // 2))
        await cpu.register(2)  # waits for the batch under way, not for the backlog
        await cpu.submit_many(range(total // 2, total))
    tail = [s for s, _ in fake.heard(2)]
    assert tail and tail == list(range(tail[0], total)) and tail[0] < total // 2
    assert [s for s, _ in fake.heard(1)] == list(range(total))


async def test_submit_is_all_or_nothing_when_cancelled_waiting_for_room() -> None:
    table = ListenerTable(2)
    table.cpus[1] = CpuListeners(1, buffer=4)
    await table.cpus[1].submit_many(range(4))  # full; no broadcast task runs

    class Report:
        def __init__(self, cpu: int) -> None:
            self.cpu = cpu

    with trio.move_on_after(0.05) as scope:
        await table.submit_many([Report(0), Report(1), Report(0)])
    assert scope.cancelled_caught
    assert len(table.cpus[0]._backlog) == 0 and table.cpus[0]._pending == 0
    assert len(table.cpus[1]._backlog) == 4
    table.submit_nowait([Report(0), Report(1)])  # what a cancelled storm falls back on
    assert len(table.cpus[0]._backlog) == 1 and len(table.cpus[1]._backlog) == 5


# -- the whole path: Emulator.storm to real clients ----------------------------------------


async def read_events(client: Client, count: int) -> list[tuple[int, int]]:
    """(seq, pid) of the next `count` events."""
    got = []
    with trio.fail_after(30):
        for _ in range(count):
            event = await client.next_event()
            got.append((event.header.seq, event.records[0].id))
    return got


async def test_storm_delivers_every_exit_in_order_to_every_listener(short_tmp: Path) -> None:
    count = 4 * STORM_CHUNK + 7
    on_zero = (count + 1) // 2  # exit i happens on cpus[i % 2]
    async with emulator(short_tmp) as emu:
        both = await listen(emu, "0-1")
        zero = await listen(emu, "0")
        result = await emu.storm(count, [0, 1])
        got_both = await read_events(both, count)
        got_zero = await read_events(zero, on_zero)
        with trio.move_on_after(0.1):
            await zero.next_event()
            pytest.fail("an event of CPU 1 reached a listener of CPU 0 only")
        both.close()
        zero.close()
    assert result.exits == count and result.deliveries == count + on_zero
    in_exit_order = sorted(pid for _, pid in got_both)  # pids are allocated in order
    cpu_of = {pid: i % 2 for i, pid in enumerate(in_exit_order)}
    per_cpu: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for seq, pid in got_both:
        per_cpu[cpu_of[pid]].append((seq, pid))
    for cpu in (0, 1):
        # Each CPU's exits in the order they happened, numbered from 0 without a gap.
        assert per_cpu[cpu] == list(enumerate(in_exit_order[cpu::2]))
    assert got_zero == per_cpu[0], "the same events, in the same order, to both listeners"


async def test_storm_drops_a_vanished_listener_and_the_others_lose_nothing(
        short_tmp: Path) -> None:
    async with emulator(short_tmp) as emu:
        alive = await listen(emu, "0")
        vanished = await listen(emu, "0")
        vanished.close()
        result = await emu.storm(300, [0])
        got = await read_events(alive, 300)
        alive.close()
        stats = emu.server.listeners.cpus[0].stats
        assert emu.server.listeners.listeners() == {0: [alive.port]}
    assert [seq for seq, _ in got] == list(range(300))
    # Dropped either when its file went (the server forgets a client whose socket is gone)
    # or at the first send to it that failed, as the kernel drops it.
    assert result.deliveries == 300
    assert stats.dropped_listeners + emu.server.stats.clients_gone >= 1


async def test_storm_with_threads_broadcasts_each_thread_then_the_group(
        short_tmp: Path) -> None:
    async with emulator(short_tmp) as emu:
        client = await listen(emu, "0")
        result = await emu.storm(STORM_CHUNK + 1, [0], threads=3)
        got = []
        with trio.fail_after(30):
            for _ in range(3 * (STORM_CHUNK + 1)):
                got.append(await client.next_event())
        client.close()
    assert result.exits == STORM_CHUNK + 1
    assert [e.header.seq for e in got] == list(range(3 * (STORM_CHUNK + 1)))
    assert [len(e.records) for e in got] == [1, 1, 2] * (STORM_CHUNK + 1)


def test_the_errno_of_a_vanished_peer_is_what_offer_expects(short_tmp: Path) -> None:
    """The kernel's answer for a send to a closed client (what `Outbox` treats as gone)."""
    path = str(short_tmp / "c.sock")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.connect(path)
    server.setblocking(False)
    client.close()
    with pytest.raises(OSError) as raised:
        server.send(b"x")
    server.close()
    assert raised.value.errno == errno.ECONNREFUSED
