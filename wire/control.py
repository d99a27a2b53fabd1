"""tsemu's side channel: the few datagrams that are not netlink, between a client and the server.

A netlink client's socket options (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_NO_ENOBUFS, the
receive buffer size) change what the kernel answers, and an overflowed receive buffer must
surface as ENOBUFS on the client's next receive. On a Unix datagram socket neither can be
expressed in netlink, so the shim and the native client exchange these small control datagrams
with the server over the same sockets.

A control datagram starts with a 32-bit zero where a netlink message has its length: a datagram
whose first message claims fewer than 16 bytes is silently ignored by the kernel, so no netlink
client can depend on sending one, and the kernel never sends one. The magic that follows makes
an accidental match with a client's garbage practically impossible.
"""

from __future__ import annotations

import enum
import errno
import struct
from collections.abc import Sequence
from typing import NamedTuple

import construct as cs

from .derive import FastCodec
from .errors import WireError

MAGIC = b"tsEM"

#: The layout of every control datagram.
CONTROL = cs.Struct(
    "zero" / cs.Int32ul,  # where nlmsg_len would be: always 0
    "magic" / cs.Bytes(4),
    "op" / cs.Int16ul,
    "option" / cs.Int16ul,
    "reserved" / cs.Int32ul,
    "value" / cs.Int64sl,
)
CONTROL_CODEC = FastCodec(CONTROL)
CONTROL_SIZE = CONTROL_CODEC.size


class ControlOp(enum.IntEnum):
    #: client -> server: a socket option changed (`option`, `value`).
    SETOPT = 1
    #: server -> client: the receive buffer overflowed; the next receive fails with ENOBUFS.
    ENOBUFS = 2
    #: client -> server: the sending process (as its credentials say, never as the datagram
    #: says) is a client root: it and its descendants belong to the emulated machine.
    ROOT = 3
    #: client -> server: the sender's child `value` (a pid) has exited and is not reaped yet.
    EXITED = 4
    #: server -> client: the answer to ROOT, EXITED and THREADED: `value` is the pid the
    #: notice was about, `option` 0 when it was taken (an EXITED exit broadcast), else an errno.
    SEEN = 5
    #: client -> server: the sending process has started a second thread.
    THREADED = 6
    #: server -> client: several netlink messages in one datagram (`BATCH_HEADER`); sent
    #: only to a client that said it unpacks them (SETOPT BATCH).
    BATCH = 7


class ControlOption(enum.IntEnum):
    """The socket options a client reports with SETOPT."""

    #: the effective receive buffer in bytes, as getsockopt(SO_RCVBUF) would report it
    RCVBUF = 1
    CAP_ACK = 2
    EXT_ACK = 3
    NO_ENOBUFS = 4
    #: not a netlink option: the client hands a batch's messages out one per receive, so the
    #: server may send it batches (value 1)
    BATCH = 5


class Control(NamedTuple):
    op: ControlOp
    option: int
    value: int


def is_control(datagram: bytes) -> bool:
    """Whether `datagram` is a control datagram rather than netlink."""
    return len(datagram) >= CONTROL_SIZE and datagram[:8] == b"\0\0\0\0" + MAGIC


def encode_control(op: ControlOp, option: int = 0, value: int = 0) -> bytes:
    return CONTROL_CODEC.pack_values(0, MAGIC, op, option, 0, value)


def decode_control(datagram: bytes) -> Control:
    """The control message in `datagram`; EINVAL if it is not one or names an unknown op."""
    if not is_control(datagram):
        raise WireError(errno.EINVAL, "not a tsemu control datagram")
    _, _, op, option, _, value = CONTROL_CODEC.unpack_from(datagram)
    try:
        return Control(ControlOp(op), option, value)
    except ValueError:
        raise WireError(errno.EINVAL, f"unknown control operation {op}") from None


ENOBUFS_NOTICE = encode_control(ControlOp.ENOBUFS)


# -- batches: several netlink messages in one datagram, server -> client -------------------
#
# A listener that falls behind has many messages waiting; sending each as its own datagram
# costs a system call and a wake-up on both sides, and a Unix socket queues only
# net.unix.max_dgram_qlen (10) datagrams. A batch carries up to BATCH_MAX of them. It starts
# like a control datagram (a zero where nlmsg_len would be, then the magic), so no netlink
# datagram can be mistaken for one, and only the server's datagrams are taken by a client at
# all (SO_PASSCRED, the server socket file's owner): no one else can inject one. Its header
# has one size whatever the count (an unused length is 0): the shim reads it with one peek
# and then stands at the first message (SO_PEEK_OFF), which it hands out where it lies in
# the socket's queue, one message per receive, with the kernel copying it into the caller's
# buffers. The messages follow back to back, each exactly as long as its own datagram would
# have been.

#: the most messages in one batch
BATCH_MAX = 32
#: the most bytes in one batch datagram: up to this size a Unix datagram is one linear skb,
#: charged (truesize) as a netlink message of the same size is, which the server's outbox
#: relies on to know what the client has read (measured: 16,000 bytes cost 16,640, 16,100
#: already 20,736, paged)
BATCH_BYTES_MAX = 16000

#: The header of a batch datagram; `count` messages of `lengths[i]` bytes follow it.
BATCH_HEADER = cs.Struct(
    "zero" / cs.Const(0, cs.Int32ul),  # where nlmsg_len would be: always 0
    "magic" / cs.Const(MAGIC),
    "op" / cs.Const(int(ControlOp.BATCH), cs.Int16ul),
    "count" / cs.Int16ul,  # 2..BATCH_MAX
    "reserved" / cs.Const(0, cs.Int32ul),
    "total" / cs.Int64ul,  # the messages' bytes: the datagram is BATCH_HEADER_SIZE + total
    "lengths" / cs.Array(BATCH_MAX, cs.Int32ul),
)
BATCH_HEADER_SIZE = BATCH_HEADER.sizeof()

#: A whole batch datagram (the reference for the fast functions below and their tests).
BATCH = cs.Struct(
    "header" / BATCH_HEADER,
    "messages" / cs.Array(cs.this.header.count,
                          cs.Bytes(lambda ctx: ctx.header.lengths[ctx._index])),
    cs.Terminated,
)


_BATCH = FastCodec(BATCH_HEADER)
_BATCH_START = b"\0\0\0\0" + MAGIC + struct.pack("<H", ControlOp.BATCH)
_NO_LENGTHS = (0,) * BATCH_MAX


def is_batch(datagram: bytes) -> bool:
    """Whether `datagram` is a batch (test it before `is_control`, which says yes too)."""
    return len(datagram) >= BATCH_HEADER_SIZE and datagram[:10] == _BATCH_START


def encode_batch(messages: Sequence[bytes]) -> bytes:
    """One datagram holding `messages` (2..BATCH_MAX of them) in order."""
    return batch_header(list(map(len, messages))) + b"".join(messages)


def batch_header(lengths: Sequence[int]) -> bytes:
    """The header of a batch of messages of these lengths (2..BATCH_MAX of them), which
    follow it end to end: for a sender that has them end to end already (`MessageRun`)."""
    count = len(lengths)
    if not 2 <= count <= BATCH_MAX:
        raise ValueError(f"a batch holds 2 to {BATCH_MAX} messages, not {count}")
    return _BATCH.pack_values(0, MAGIC, ControlOp.BATCH, count, 0, sum(lengths), *lengths,
                              *_NO_LENGTHS[count:])


def decode_batch(datagram: bytes) -> list[bytes]:
    """The messages of a batch datagram, in order; EINVAL when it is not a well-formed one
    (a count out of range, lengths that do not add up to the datagram, a zero length)."""
    if not is_batch(datagram):
        raise WireError(errno.EINVAL, "not a tsemu batch datagram")
    fields = _BATCH.unpack_from(datagram)
    count, total = fields[3], fields[5]
    lengths = fields[6:6 + count]
    if (not 2 <= count <= BATCH_MAX or total != len(datagram) - BATCH_HEADER_SIZE
            or sum(lengths) != total or 0 in lengths or any(fields[6 + count:])):
        raise WireError(errno.EINVAL, "a malformed tsemu batch")
    out = []
    pos = BATCH_HEADER_SIZE
    for length in lengths:
        out.append(bytes(datagram[pos:pos + length]))
        pos += length
    return out
