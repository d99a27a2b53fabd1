"""A client's receive buffer, emulated: what netlink would keep, drop, and report as ENOBUFS.

A netlink socket's receive queue is bounded in bytes (SO_RCVBUF, charged with each message's
skb truesize, not its length); a Unix datagram socket's is bounded in datagrams
(net.unix.max_dgram_qlen, 10 by default), whatever its buffer size. Relying on the Unix queue
would lose exit events a kernel would have kept, so each client has an `Outbox` on the server
that holds messages until the client's socket can take them, and accounts for them the
kernel's way (`netlink_attachskb`, `netlink_overrun`, Linux 6.14 and newer):

- a message is accepted when the queue is empty, or when the queued truesize plus its own
  stays within the budget (older kernels: when the queued truesize alone does not exceed it);
- otherwise it is dropped and counted; unless the client set NETLINK_NO_ENOBUFS, the socket
  becomes congested and its next receive fails with ENOBUFS, once;
- while congested every message is dropped, until the client has read everything queued.

"Queued" counts both the messages still here and those already in the client's Unix queue
but not read yet; the latter are known from the sending socket's unread bytes (SIOCOUTQ, which
for a Unix datagram socket counts what the peer has not consumed).

The ENOBUFS notice travels as a control datagram (`wire.control`) ahead of the messages still
held here; messages already in the client's Unix queue (at most max_dgram_qlen) are read
before it. A kernel would report ENOBUFS before those too: that reordering is the one
difference a client can observe.

How messages move (the accounting above does not depend on it): an accepted message that
finds nothing held here goes straight into the client's socket with one non-blocking send,
from `offer` itself; only when the client's Unix queue is full (EAGAIN) is it held, and
`drain` then sends the held messages in a plain loop of non-blocking sends, waiting for the
socket to become writable only when the client's queue is full again. Messages therefore
reach the socket in the order they were accepted, one netlink message per datagram.

Batches: a client that said it unpacks them (`batching`, SETOPT BATCH: the shim and
`tsemu.client` do) gets the messages that wait here together, when more than one does, as one
datagram of up to `BATCH_MAX` messages (`wire.control.BATCH_HEADER`); a broadcast's run
(`offer_many`) waits here as a whole. The accounting above is untouched: each message is
accepted or dropped, and charged, on its own, exactly as before; a batch in flight is one
datagram in the client's Unix queue (charged there as one skb of its size: batches stay under
`BATCH_BYTES_MAX`, where that truesize is known) and its messages' charges are released
together when the client has read the whole batch. Until then the emulated buffer counts the
batch's messages already handed out as still queued (at most `BATCH_MAX` - 1 of them): a
client may see ENOBUFS up to that many messages earlier than a kernel would show it, never
later. Control datagrams (the ENOBUFS notice, SEEN) are never put in a batch.
"""

from __future__ import annotations

import array
import errno
import fcntl
import socket
import termios
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import accumulate, islice, repeat
from operator import itemgetter
from time import perf_counter_ns
from typing import Any, cast

import trio

from tsemu.wire.control import (
    BATCH_BYTES_MAX,
    BATCH_HEADER_SIZE,
    BATCH_MAX,
    ENOBUFS_NOTICE,
    batch_header,
    encode_batch,
)
from tsemu.wire.runs import MessageRun

#: sizeof(struct sk_buff) and sizeof(struct skb_shared_info), each SKB_DATA_ALIGNed, x86_64.
_SKB_OVERHEAD = 256
_SHINFO = 320


def truesize(length: int) -> int:
    """The skb truesize the kernel charges for a `length`-byte netlink message.

    The data area (the message, cache-aligned, plus skb_shared_info) comes from a kmalloc
    bucket, a power of two of at least 512 bytes; truesize is that bucket plus the sk_buff.
    Measured on 6.18: a 596-byte event costs 1280 (166 fit in 212992 bytes), a 1172-byte
    one 2304. A Unix datagram skb is charged the same way (measured with SIOCOUTQ: 768
    for up to 64 bytes, 1280 for 596, 2304 for 1172, 8448 for 4000), which is what lets
    `Outbox._reconcile` compare the two."""
    need = ((length + 63) & ~63) + _SHINFO
    bucket = 512
    while bucket < need:
        bucket <<= 1
    return bucket + _SKB_OVERHEAD


class _Truesizes(dict[int, int]):
    """`truesize` by length, memoised: a broadcast looks it up for every message, and
    `map(_TRUESIZE.__getitem__, lengths)` does a run of them without a Python call."""

    def __missing__(self, length: int) -> int:
        size = self[length] = truesize(length)
        return size


_TRUESIZE = _Truesizes()

#: A message's nlmsg_pid (0: a broadcast; a reply carries its requester's port) and its
#: first four bytes (a control datagram starts with a zero length): what may go in a batch.
_PORT_ID = itemgetter(slice(12, 16))
_FIRST_WORD = itemgetter(slice(0, 4))
_ZERO4 = bytes(4)


def _batchable(messages: list[bytes]) -> int:
    """How many of `messages`, from the first, may go in a batch: broadcasts only, never a
    control datagram. (The common case, all of them, is found without a loop in Python.)"""
    ports = list(map(_PORT_ID, messages))
    firsts = list(map(_FIRST_WORD, messages))
    if ports.count(_ZERO4) == len(ports) and _ZERO4 not in firsts:
        return len(messages)
    for n, (port, first) in enumerate(zip(ports, firsts, strict=True)):
        if port != _ZERO4 or first == _ZERO4:
            return n
    return len(messages)


_NOTICE_UNIX = truesize(len(ENOBUFS_NOTICE))


def unread_bytes(sock: Any) -> int:
    """Bytes this socket sent that its peer has not read yet (SIOCOUTQ)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]


def _stdlib_socket(sock: Any) -> socket.socket:
    """The standard-library socket under a trio socket (or `sock` itself), non-blocking: the
    one both `offer` and `drain` send on without going through trio's per-call machinery.
    Closing the trio socket closes this one (its fileno() becomes -1: never a stale fd)."""
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "_sock", None)
    if not isinstance(raw, socket.socket):
        raise TypeError(f"Outbox needs a trio or standard-library socket, not {sock!r}")
    raw.setblocking(False)
    return raw


#: While messages are held, `offer` retries sending them at most this often (ns): a reader
#: that keeps up reads max_dgram_qlen (10) datagrams in a few microseconds.
RETRY_NS = 4_000

#: In-flight records kept at most before the client's reads are reconciled with them.
_RECONCILE_AFTER = 1024

#: What a send fails with when the client's socket is gone.
_GONE = (ConnectionError, FileNotFoundError, NotADirectoryError, PermissionError)
#: What `Outbox._send_batch` did.
_B_SENT, _B_FULL, _B_GONE, _B_ALONE = range(4)
_GONE_ERRNOS = frozenset({errno.ENOTCONN, errno.EPIPE, errno.ECONNREFUSED, errno.ECONNRESET})


@lru_cache(maxsize=256)
def _run_header(size: int, count: int) -> bytes:
    """The batch header of `count` messages of `size` bytes (a run's batches are alike)."""
    return batch_header([size] * count)


class Outbox:
    """One client's queue on the server, with the netlink receive-buffer rules.

    `offer` is synchronous (a broadcast never waits for a slow client): it sends at once when
    it can, else holds the message; `drain` is the client's one long-lived task that moves
    held messages into its socket.
    """

    def __init__(self, sock: Any, budget: int,
                 check_after_add: bool = True, on_gone: Callable[[], None] | None = None) -> None:
        self.sock = sock
        self._raw = _stdlib_socket(sock)
        self.budget = budget
        self.check_after_add = check_after_add
        self.no_enobufs = False
        #: the client unpacks batches: messages that wait here together go out as one
        self.batching = False
        self.congested = False
        self.dropped = 0
        self.delivered = 0
        self.gone = False
        self._queue: deque[bytes | MessageRun] = deque()
        self._queued = 0  # truesize held here
        # Datagrams sent, maybe not read yet: (size in the client's Unix queue, size charged
        # to the emulated netlink buffer; 0 for an ENOBUFS notice, which netlink never queues).
        self._inflight: deque[tuple[int, int]] = deque()
        self._inflight_unix = 0
        self._inflight_total = 0
        self._wakeup = trio.Event()
        self._on_gone = on_gone
        self._blocked_at = 0  # perf_counter_ns() of the last send that found the queue full

    def _charged(self) -> int:
        return self._queued + self._inflight_total

    def _reconcile(self) -> None:
        """Forget in-flight messages the client has read since."""
        if not self._inflight:
            return
        try:
            outstanding = unread_bytes(self._raw)
        except (OSError, ValueError):
            outstanding = 0
        while self._inflight and self._inflight_unix - self._inflight[0][0] >= outstanding:
            unix, charged = self._inflight.popleft()
            self._inflight_unix -= unix
            self._inflight_total -= charged
        if outstanding == 0:
            self._inflight.clear()
            self._inflight_unix = self._inflight_total = 0

    def _fits(self, size: int) -> bool:
        charged = self._queued + self._inflight_total
        if self.check_after_add:
            return charged == 0 or charged + size <= self.budget
        return charged <= self.budget

    def _takes_when_tight(self, size: int) -> bool:
        """The slow half of admitting a message of truesize `size` (the fast half, nothing
        congested and room by the charges known, is inline in `offer` and `offer_many`): what
        the client has read since is taken into account; a congested buffer takes nothing until
        the client has read all of it, as netlink's; a refusal is an overrun (ENOBUFS)."""
        self._reconcile()
        if self.congested and self._charged() == 0:
            self.congested = False
        if self.congested or not self._fits(size):
            self._overrun()
            return False
        return True

    def offer(self, data: bytes) -> bool:
        """Accept `data` if the emulated receive buffer takes it (sending it at once when
        nothing is held here and the client's socket has room). False when the client is
        gone (its socket vanished): the caller drops it as a listener, as the kernel does."""
        if self.gone:
            return False
        size = _TRUESIZE[len(data)]
        charged = self._queued + self._inflight_total  # `_fits`, inline: this is the hot path
        if self.congested or not (
                (charged == 0 or charged + size <= self.budget) if self.check_after_add
                else charged <= self.budget):
            if not self._takes_when_tight(size):
                return True
        if not self._queue:
            try:
                self._raw.send(data)
            except BlockingIOError:
                self._blocked_at = perf_counter_ns()  # the client's queue is full: hold it
            except OSError as exc:
                if self._send_failed(exc):
                    return False
                # Anything else: hold it, and let drain meet the error as it always has.
            else:
                inflight = self._inflight
                inflight.append((size, size))
                self._inflight_unix += size
                self._inflight_total += size
                self.delivered += 1
                if len(inflight) > _RECONCILE_AFTER:  # (a budget so large it never fills
                    self._reconcile()                  # would keep every record otherwise)
                return True
            self._queue.append(data)
            self._queued += size
            self._wakeup.set()
            return True
        self._queue.append(data)
        self._queued += size
        self._wakeup.set()
        # Held messages wait for drain, which runs only when the broadcasting task lets the
        # scheduler in; a reader that keeps up empties its Unix queue (max_dgram_qlen
        # datagrams) long before that, so a burst retries now and then from here.
        if perf_counter_ns() - self._blocked_at >= RETRY_NS and self._flush() is None:
            return False
        return True

    def offer_many(self, messages: Sequence[bytes]) -> int:
        """`offer` each of `messages` in order; how many were offered before the client
        turned out to be gone (all of them, when it is not). A `MessageRun` a batching
        client takes whole is held as it is, and goes out in batches cut from it."""
        if not self.batching or len(messages) < 2:
            offer = self.offer
            for n, data in enumerate(messages):
                if not offer(data):
                    return n
            return len(messages)
        # A batching client: the run waits here as a whole (each message accepted or dropped
        # by the same rules as in `offer`), then goes out in batches.
        if self.gone:
            return 0
        queue = self._queue
        budget = self.budget
        after_add = self.check_after_add
        if isinstance(messages, MessageRun):
            one = _TRUESIZE[messages.size]
            sizes = [one] * messages.n
            total = one * messages.n
        else:
            sizes = list(map(_TRUESIZE.__getitem__, map(len, messages)))
            total = sum(sizes)
        last = self._queued + self._inflight_total + total  # charged after the whole run
        if not self.congested and last > budget and self._inflight:
            self._reconcile()  # what the client has read since: before any per-message look
            last = self._queued + self._inflight_total + total
        if not self.congested and (last <= budget if after_add else last - sizes[-1] <= budget):
            # The charge only grows along the run: when its last message fits, all do.
            if isinstance(messages, MessageRun):
                queue.append(messages)
            else:
                queue.extend(messages)
            self._queued += total
        else:
            for data, size in zip(messages, sizes, strict=True):
                charged = self._queued + self._inflight_total
                if self.congested or not (
                        (charged == 0 or charged + size <= budget) if after_add
                        else charged <= budget):
                    if not self._takes_when_tight(size):
                        continue
                queue.append(data)
                self._queued += size
        if queue:
            self._wakeup.set()
            if self._flush() is None:
                return 0  # gone before any of the run was sent
        return len(messages)

    def _overrun(self) -> None:
        self.dropped += 1
        if self.no_enobufs or self.congested:
            return
        self.congested = True
        self._queue.appendleft(ENOBUFS_NOTICE)
        self._wakeup.set()

    def _send_failed(self, exc: OSError) -> bool:
        """Deal with a failed send: True when the client turned out to be gone (or the
        server closed its socket), in which case nothing more is sent."""
        if self._raw.fileno() == -1:  # closed by the server: shut down, no client to forget
            self.gone = True
            self._queue.clear()
            self._queued = 0
            self._wakeup.set()
            return True
        if isinstance(exc, _GONE) or exc.errno in _GONE_ERRNOS:
            self._mark_gone()
            return True
        return False

    def _flush(self) -> bool | None:
        """Send held messages, in order, until none is left (True), the client's queue is
        full (False) or its socket is gone (None). The head stays held until its send
        succeeds, so an ENOBUFS notice put in front meanwhile goes out first."""
        queue = self._queue
        batching = self.batching
        while queue:
            data = queue[0]
            if isinstance(data, MessageRun):
                sent = self._send_run(data)
            elif batching and len(queue) > 1:
                sent = self._send_batch()
            else:
                sent = _B_ALONE
            if sent == _B_ALONE:
                if isinstance(data, MessageRun):  # its messages wait one by one
                    queue.popleft()
                    queue.extendleft(reversed(list(data)))
                    continue
                sent = self._send_alone(data)
            if sent == _B_FULL:
                return False
            if sent == _B_GONE:
                return None
        return True

    def _transmit(self, pieces: list[bytes | memoryview], unix: int, charged: int,
                  messages: int) -> int:
        """Send one datagram (its `pieces` end to end) to the client: _B_SENT, and then it
        is in flight (`unix`: its truesize in the client's queue, `charged`: what it
        carries of the emulated buffer, `messages`: how many it delivers); _B_FULL (the
        client's queue is full: the head stays held), or _B_GONE."""
        try:
            self._raw.sendmsg(pieces)
        except BlockingIOError:
            self._blocked_at = perf_counter_ns()
            return _B_FULL
        except OSError as exc:
            if self._send_failed(exc):
                return _B_GONE
            raise
        self._queued -= charged
        self._inflight.append((unix, charged))
        self._inflight_unix += unix
        self._inflight_total += charged
        self.delivered += messages
        return _B_SENT

    def _send_alone(self, data: bytes) -> int:
        """The head of the queue as a datagram of its own (an ENOBUFS notice, which netlink
        never queues, carries no charge and delivers nothing)."""
        if data is ENOBUFS_NOTICE:
            sent = self._transmit([data], _NOTICE_UNIX, 0, 0)
        else:
            size = _TRUESIZE[len(data)]
            sent = self._transmit([data], size, size, 1)
        if sent == _B_SENT:
            self._queue.popleft()
        return sent

    def _send_batch(self) -> int:
        """Send the messages at the head of the queue as one batch: _B_SENT, _B_FULL (the
        client's queue is), _B_GONE (the client is), or _B_ALONE when the head cannot go in a
        batch with what follows it (a control datagram, or too long)."""
        queue = self._queue
        entries = list(islice(queue, BATCH_MAX))
        kinds = list(map(type, entries))
        if MessageRun in kinds:  # a held run goes in batches of its own
            entries = entries[:kinds.index(MessageRun)]
        head = cast(list[bytes], entries)
        lengths = list(map(len, head))
        # The most that fit in BATCH_BYTES_MAX with the header, then the batchable ones.
        fit = bisect_right(list(accumulate(lengths, initial=BATCH_HEADER_SIZE)),
                           BATCH_BYTES_MAX) - 1
        count = _batchable(head[:fit])
        if count < 2:
            return _B_ALONE
        datagram = encode_batch(head[:count])
        sent = self._transmit([datagram], _TRUESIZE[len(datagram)],
                              sum(map(_TRUESIZE.__getitem__, lengths[:count])), count)
        if sent == _B_SENT:
            for _ in repeat(None, count):
                queue.popleft()
        return sent

    def _send_run(self, run: MessageRun) -> int:
        """Send the first messages of the held run at the head of the queue as one batch,
        the header and the run's bytes as they lie (scatter-gather): _B_SENT, _B_FULL,
        _B_GONE, or _B_ALONE when its messages cannot go in a batch (one left, or too long).
        """
        count = min(run.n, BATCH_MAX, (BATCH_BYTES_MAX - BATCH_HEADER_SIZE) // run.size)
        if count < 2:
            return _B_ALONE
        header = _run_header(run.size, count)
        sent = self._transmit([header, run.body(count)],
                              _TRUESIZE[len(header) + count * run.size],
                              _TRUESIZE[run.size] * count, count)
        if sent == _B_SENT:
            if count == run.n:
                self._queue.popleft()
            else:
                self._queue[0] = run.tail(count)
        return sent

    def held(self) -> list[bytes]:
        """The messages held here, in order (for tests and inspection)."""
        return [message for entry in self._queue
                for message in (entry if isinstance(entry, MessageRun) else [entry])]

    async def drain(self) -> None:
        """Move held messages into the client's socket, in batches, waiting only while its
        queue is full. Ends when the client's socket is gone."""
        while not self.gone:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            if self._flush() is not False:
                continue
            try:
                await trio.lowlevel.wait_writable(self._raw)
            except (trio.ClosedResourceError, OSError):
                if self._raw.fileno() == -1:
                    self.gone = True
                    self._queue.clear()
                    self._queued = 0
                    return
                raise

    def close(self) -> None:
        """The client's socket was replaced by a new one on the same port: drop what is
        queued for the old one and end `drain`."""
        if not self.gone:
            self._mark_gone()
        self._wakeup.set()

    def _mark_gone(self) -> None:
        self.gone = True
        self._queue.clear()
        self._queued = 0
        self._wakeup.set()
        if self._on_gone is not None:
            self._on_gone()
