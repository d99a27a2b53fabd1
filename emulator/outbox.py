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
"""

from __future__ import annotations

import array
import fcntl
import termios
from collections import deque
from collections.abc import Callable

import trio

from tsemu.wire.control import ENOBUFS_NOTICE

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


def unread_bytes(sock: trio.socket.SocketType) -> int:
    """Bytes this socket sent that its peer has not read yet (SIOCOUTQ)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]


class Outbox:
    """One client's queue on the server, with the netlink receive-buffer rules.

    `offer` is synchronous (a broadcast never waits for a slow client); `drain` is the
    client's one long-lived task that moves messages into its socket.
    """

    def __init__(self, sock: trio.socket.SocketType, budget: int,
                 check_after_add: bool = True, on_gone: Callable[[], None] | None = None) -> None:
        self.sock = sock
        self.budget = budget
        self.check_after_add = check_after_add
        self.no_enobufs = False
        self.congested = False
        self.dropped = 0
        self.delivered = 0
        self.gone = False
        self._queue: deque[bytes] = deque()
        self._queued = 0  # truesize held here
        # Datagrams sent, maybe not read yet: (size in the client's Unix queue, size charged
        # to the emulated netlink buffer; 0 for an ENOBUFS notice, which netlink never queues).
        self._inflight: deque[tuple[int, int]] = deque()
        self._inflight_unix = 0
        self._inflight_total = 0
        self._sending = 0  # truesize of the message whose send is under way
        self._wakeup = trio.Event()
        self._on_gone = on_gone

    def _charged(self) -> int:
        return self._queued + self._sending + self._inflight_total

    def _reconcile(self) -> None:
        """Forget in-flight messages the client has read since."""
        if not self._inflight:
            return
        try:
            outstanding = unread_bytes(self.sock)
        except OSError:
            outstanding = 0
        while self._inflight and self._inflight_unix - self._inflight[0][0] >= outstanding:
            unix, charged = self._inflight.popleft()
            self._inflight_unix -= unix
            self._inflight_total -= charged
        if outstanding == 0:
            self._inflight.clear()
            self._inflight_unix = self._inflight_total = 0

    def _fits(self, size: int) -> bool:
        charged = self._charged()
        if self.check_after_add:
            return charged == 0 or charged + size <= self.budget
        return charged <= self.budget

    def offer(self, data: bytes) -> bool:
        """Queue `data` if the emulated receive buffer takes it. False when the client is
        gone (its socket vanished): the caller drops it as a listener, as the kernel does."""
        if self.gone:
            return False
        size = truesize(len(data))
        if self.congested or not self._fits(size):
            self._reconcile()
            if self.congested and self._charged() == 0:
                self.congested = False
            if self.congested or not self._fits(size):
                self._overrun()
                return True
        self._queue.append(data)
        self._queued += size
        self._wakeup.set()
        return True

    def _overrun(self) -> None:
        self.dropped += 1
        if self.no_enobufs or self.congested:
            return
        self.congested = True
        self._queue.appendleft(ENOBUFS_NOTICE)
        self._wakeup.set()

    async def drain(self) -> None:
        """Move queued messages into the client's socket, waiting while its queue is full.
        Ends when the client's socket is gone."""
        while not self.gone:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            # Taken off the queue before the send: an ENOBUFS notice may be put in front
            # while the send waits for room in the client's socket.
            data = self._queue.popleft()
            notice = data is ENOBUFS_NOTICE
            size = 0 if notice else truesize(len(data))
            self._queued -= size
            self._sending = size  # still charged while the send waits for room
            try:
                await self.sock.send(data)
            except trio.ClosedResourceError:
                return
            except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError,
                    NotADirectoryError, PermissionError):
                self._mark_gone()
                return
            finally:
                self._sending = 0
            unix = truesize(len(data))
            self._inflight.append((unix, size))
            self._inflight_unix += unix
            self._inflight_total += size
            if not notice:
                self.delivered += 1

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
        if self._on_gone is not None:
            self._on_gone()
