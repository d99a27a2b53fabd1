"""Batches (several netlink messages in one datagram from the server to a listener,
`wire.control.BATCH_HEADER`): the shim and `tsemu.client` hand them out one message per
receive, whatever the call, as netlink does; the server's accounting stays per message; and a
batch decodes to exactly the messages that went into it."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.client import Client
from tsemu.emulator.shell.outbox import Outbox, truesize
from tsemu.wire import split_datagram
from tsemu.wire.control import (
    BATCH,
    BATCH_HEADER_SIZE,
    BATCH_MAX,
    decode_batch,
    encode_batch,
    is_batch,
    is_control,
)
from tsemu.wire.errors import WireError
from tsemu.wire.runs import MessageRun

from .clients.harness import CLIENTS, compile_client, running, shim_env, wait_for_listeners

# -- the framing ------------------------------------------------------------------------------

_messages = st.lists(st.binary(min_size=1, max_size=700), min_size=2, max_size=BATCH_MAX)


@given(st.lists(_messages, min_size=1, max_size=6))
def test_any_sequence_of_batches_decodes_to_the_messages_one_by_one(batches: list[Any]) -> None:
    out = []
    for messages in batches:
        datagram = encode_batch(messages)
        assert is_batch(datagram) and len(datagram) == BATCH_HEADER_SIZE + sum(map(len, messages))
        parsed = BATCH.parse(datagram)  # the construct definition agrees with the fast path
        assert list(parsed.messages) == messages
        out.extend(decode_batch(datagram))
    assert out == [m for messages in batches for m in messages]


def test_a_batch_is_never_a_netlink_datagram_nor_a_plain_control() -> None:
    datagram = encode_batch([b"\x14\0\0\0" + bytes(16), b"\x14\0\0\0" + bytes(16)])
    assert split_datagram(datagram) == []  # nlmsg_len 0: the kernel would stop at once
    assert is_control(datagram)  # the control prefix, with an op of its own
    for bad in (datagram[:-1], datagram + b"x", datagram[:10] + b"\x01" + datagram[11:]):
        with pytest.raises(WireError):
            decode_batch(bad)
    with pytest.raises(ValueError):
        encode_batch([b"one"])


# -- the server's accounting ------------------------------------------------------------------

def _sent_and_held(client: socket.socket, box: Outbox) -> list[bytes]:
    """Every message `box` sent to `client` (batches unpacked), then those it still holds
    (nothing drains in these tests), in order."""
    client.setblocking(False)
    got: list[bytes] = []
    while True:
        try:
            data = client.recv(1 << 16)
        except BlockingIOError:
            break
        got.extend(decode_batch(data) if is_batch(data) else [data])
    return got + box.held()


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    return a, b


@pytest.mark.parametrize("count", [5, 40, 400])
async def test_batching_keeps_and_drops_exactly_the_same_messages(count: int) -> None:
    """A reader that reads nothing: with or without batches, the same messages are kept, the
    same dropped, and one ENOBUFS notice follows."""
    events = [bytes([16 + (i % 200)]) + bytes(595) for i in range(count)]
    results = []
    for batching in (False, True):
        server, client = _pair()
        with server, client:
            box = Outbox(server, budget=20 * truesize(596))
            box.batching = batching
            assert box.offer_many(events) == count
            got = _sent_and_held(client, box)
            # (where the notice goes among the messages depends on what was in the client's
            # queue already; that it comes once, and the messages, do not)
            notices = sum(1 for m in got if is_control(m))
            results.append((box.dropped, notices,
                            [m for m in got if not is_control(m)]))
    assert results[0] == results[1]
    assert results[0][1] == (1 if count > 20 else 0)
    assert len(results[0][2]) == min(count, 20)


def _message(length: int, port: int, tag: int) -> bytes:
    """A netlink-looking message of `length` bytes (at least 16) sent to `port`."""
    return (length.to_bytes(4, "little") + bytes(8) + port.to_bytes(4, "little")
            + bytes([tag % 256]) * (length - 16))


_mixed_run = st.lists(st.tuples(st.sampled_from([16, 20, 596, 1172, 4000, 15_000]),
                                st.sampled_from([0, 0, 0, 0, 77])), min_size=1, max_size=60)
_storm_run = st.integers(1, 60).map(lambda n: [(596, 0)] * n)  # what a storm offers
_runs = st.lists(st.one_of(_storm_run, _mixed_run), min_size=1, max_size=5)


@settings(max_examples=100, deadline=None)
@given(runs=_runs, budget_events=st.integers(0, 60), after_add=st.booleans(),
       as_runs=st.booleans())
def test_batched_runs_keep_what_messages_one_by_one_keep(
        runs: list[list[tuple[int, int]]], budget_events: int, after_add: bool,
        as_runs: bool) -> None:
    """Runs of broadcasts and replies of any size, offered to a reader that reads nothing:
    a batching outbox (a run admitted at once when its last message fits, batches cut by
    count, bytes and kind; a `MessageRun` held whole and sent in slices) keeps and drops
    exactly what message-by-message offers do."""
    results = []
    for batching in (False, True):
        server, client = _pair()
        with server, client:
            box = Outbox(server, budget=budget_events * truesize(596), check_after_add=after_add)
            box.batching = batching
            tag = 0
            for run in runs:
                messages = []
                for length, port in run:
                    messages.append(_message(length, port, tag))
                    tag += 1
                offered: Sequence[bytes] = messages
                if batching and as_runs and len({len(m) for m in messages}) == 1:
                    offered = MessageRun(b"".join(messages), len(messages[0]))
                assert box.offer_many(offered) == len(messages)
            got = _sent_and_held(client, box)
            results.append((box.dropped, [m for m in got if not is_control(m)]))
    assert results[0] == results[1]


# -- through the shim -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batchprobe(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(compile_client(CLIENTS / "batchprobe.c", tmp_path_factory.mktemp("batchprobe")))


EXPECTED = [
    "fionread ENOTTY", "poll 1 revents=1", "peek 596 seq=0", "recv 596 seq=0",
    "recvfrom 596 seq=1", "trunc 596 seq=2", "trunc flags=MSG_TRUNC", "shortpeek 16 seq=3",
    "short 16 seq=3", "recvmsg 596 seq=4", "recvmsg name=12,16,0 flags=0",
    "recvmmsg 3 596:seq=5 596:seq=6 596:seq=7", "read 596 seq=8", "readv 596 seq=9",
    "select 1", "epollet 1", "afteredge 596 seq=10", "epollet-again 0",
    "drain 29 first=11 last=39 end=EAGAIN", "poll-empty 0", "peekoff EOPNOTSUPP", "waiting",
]


async def test_every_receive_hands_out_one_message(server: Any, batchprobe: str) -> None:
    batch = "1"
    tasks = [server.tasks.spawn(comm=f"b{i}", cpu=0) for i in range(41)]
    async with running([batchprobe], shim_env(server.socket_path, TSEMU_BATCH=batch)) as probe:
        await probe.until(lambda line: line == "registered")
        await wait_for_listeners(server)
        (client,) = server.clients.values()
        assert client.outbox.batching == (batch == "1")
        await server.listeners.submit_many([server.tasks.exit_task(t.tid) for t in tasks[:40]])
        await server.settle()
        with trio.fail_after(5):
            while client.outbox.delivered + len(client.outbox.held()) < 2 + 40:
                await trio.sleep(0.01)
        await probe.send(b"go\n")
        lines = await probe.until(lambda line: line == "waiting")
        await server.broadcast(server.tasks.exit_task(tasks[40].tid))
        await probe.send(b"more\n")
        lines += await probe.rest()
    assert lines == [*EXPECTED, "single 596 seq=40"]
    assert client.outbox.dropped == 0


async def test_the_native_client_hands_out_one_message_per_receive(server: Any) -> None:
    tasks = [server.tasks.spawn(comm=f"n{i}", cpu=0) for i in range(60)]
    async with await Client.connect(server.socket_path) as c:
        await c.register("0")
        await wait_for_listeners(server)
        (conn,) = server.clients.values()
        assert conn.outbox.batching
        await server.listeners.submit_many([server.tasks.exit_task(t.tid) for t in tasks])
        await server.settle()
        seqs = []
        for _ in tasks:
            data = await c.recv()
            (message,) = split_datagram(data)
            assert len(data) == message.header.length
            seqs.append(message.header.seq)
    assert seqs == list(range(60))


async def test_the_native_client_gets_enobufs_per_message(server: Any) -> None:
    tasks = [server.tasks.spawn(comm=f"o{i}", cpu=0) for i in range(50)]
    async with await Client.connect(server.socket_path) as c:
        await c.set_rcvbuf(4096)  # 8192 bytes: six 596-byte events
        await c.register("0")
        await wait_for_listeners(server)
        (conn,) = server.clients.values()
        await server.listeners.submit_many([server.tasks.exit_task(t.tid) for t in tasks])
        await server.settle()
        assert (conn.outbox.delivered - 2, conn.outbox.dropped) == (6, 44)  # (2: replies)
        # The run waited on the server as a whole: the notice goes ahead of all of it, as
        # the kernel reports ENOBUFS before the messages its buffer kept.
        with pytest.raises(OSError, match="No buffer"):
            await c.recv()
        seqs = [split_datagram(await c.recv())[0].header.seq for _ in range(6)]
    assert seqs == list(range(6))


def test_shim_sources_know_the_layout() -> None:
    header = (Path(__file__).parent.parent / "shim" / "shim.h").read_text()
    assert f"#define BATCH_MAX {BATCH_MAX}" in header
    assert "#define BATCH_HDR (CTL_SIZE + 4 * BATCH_MAX)" in header
