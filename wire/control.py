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


class ControlOption(enum.IntEnum):
    """The socket options a client reports with SETOPT."""

    #: the effective receive buffer in bytes, as getsockopt(SO_RCVBUF) would report it
    RCVBUF = 1
    CAP_ACK = 2
    EXT_ACK = 3
    NO_ENOBUFS = 4


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
