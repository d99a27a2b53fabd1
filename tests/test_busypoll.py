"""The receive loop's busy wait: catches a datagram sent during its window, gives up after
it, rests after several misses in a row, and does nothing with a window of 0."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tsemu.client import Client
from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.profiles import PROFILES
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.shell.busypoll import MISSES, REST, BusyPoll
from tsemu.emulator.shell.server import Server, running_server


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield a, b
    a.close()
    b.close()


def test_a_datagram_sent_during_the_window_is_caught(
        pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    spin = BusyPoll(reader, window_ns=2_000_000_000)
    sender = threading.Timer(0.01, writer.send, args=(b"x",))
    sender.start()
    try:
        started = time.monotonic()
        assert spin.wait()
        assert time.monotonic() - started < 1.5
    finally:
        sender.join()
    assert (spin.caught, spin.missed) == (1, 0)


def test_nothing_sent_means_a_miss_then_a_rest(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    spin = BusyPoll(reader, window_ns=20_000)
    for _ in range(MISSES):
        assert not spin.wait()
    assert spin.missed == MISSES
    writer.send(b"x")
    for _ in range(REST):  # resting: no look at the socket, even with a datagram waiting
        assert not spin.wait()
    assert spin.rested == REST
    assert spin.wait() and spin.caught == 1


def test_a_window_of_zero_never_spins(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    writer.send(b"x")
    spin = BusyPoll(reader, window_ns=0)
    assert not spin.wait()
    assert (spin.caught, spin.missed, spin.rested) == (0, 0, 0)
    with pytest.raises(ValueError, match="negative"):
        BusyPoll(reader, window_ns=-1)


async def _gets_from_another_thread(server: Server, count: int) -> None:
    """`count` GETs in a loop by a client with its own trio run in another thread, as a
    client process would ask (the server's trio run cannot answer its own thread's spin)."""
    pid = server.tasks.spawn(comm="asked").tid  # type: ignore[attr-defined]

    async def ask() -> None:
        async with await Client.connect(server.socket_path) as client:
            for _ in range(count):
                assert (await client.get_pid(pid)).id == pid

    await trio.to_thread.run_sync(trio.run, ask)


@pytest.mark.parametrize("window_ns", [0, 5_000_000])
async def test_a_request_loop_is_answered_with_and_without_spinning(
        short_tmp: Path, window_ns: int) -> None:
    table = ProcessTable(VirtualClock(), PROFILES["6.18"], 2)
    async with running_server(short_tmp / "s.sock", table, busy_poll_ns=window_ns) as server:
        await _gets_from_another_thread(server, 200)
        spin = server.busy_poll
        assert spin is not None
        if window_ns:
            assert spin.caught > 100  # a 5 ms window catches a thread's next request
        else:
            assert spin.caught == spin.missed == spin.rested == 0


def test_a_negative_window_is_refused(short_tmp: Path) -> None:
    table = ProcessTable(VirtualClock(), PROFILES["6.18"], 2)
    with pytest.raises(ValueError, match="negative"):
        Server(short_tmp / "s.sock", table, busy_poll_ns=-5)
