"""Netlink framing: `struct nlmsghdr`, `struct genlmsghdr`, and datagrams of several messages.

What lives here: the two headers' layouts, how a datagram is cut into messages (the rules of the
kernel's `netlink_rcv_skb`), what genetlink checks of its header (`decode_genl`,
`check_genl_header`), and how one message is assembled from a header and a payload. What
must not: any family's meaning, attributes (see `attributes`), errors and acks (see `acks`).

Theory of operation: the kernel walks a datagram message by message. It stops silently at the
first header that claims fewer than 16 bytes or more than what is left, so `split_datagram` never
fails: it returns the messages the kernel would process, in order, each with its raw bytes kept
for the error echo.
"""

from __future__ import annotations

import errno
from typing import NamedTuple

import construct as cs

from .constants import GENL_HDRLEN, NLMSG_HDRLEN
from .derive import FastCodec
from .errors import WireError

#: struct nlmsghdr
NLMSGHDR = cs.Struct(
    "length" / cs.Int32ul,
    "type" / cs.Int16ul,
    "flags" / cs.Int16ul,
    "seq" / cs.Int32ul,
    "pid" / cs.Int32ul,
)

#: struct genlmsghdr
GENLMSGHDR = cs.Struct(
    "cmd" / cs.Int8ul,
    "version" / cs.Int8ul,
    "reserved" / cs.Int16ul,
)

NLMSGHDR_CODEC = FastCodec(NLMSGHDR)
GENLMSGHDR_CODEC = FastCodec(GENLMSGHDR)
_unpack_nlmsghdr = NLMSGHDR_CODEC.unpack_from
_pack_nlmsghdr = NLMSGHDR_CODEC.pack_values
_unpack_genlmsghdr = GENLMSGHDR_CODEC.unpack_from
_pack_genlmsghdr = GENLMSGHDR_CODEC.pack_values

assert NLMSGHDR_CODEC.size == NLMSG_HDRLEN and GENLMSGHDR_CODEC.size == GENL_HDRLEN


def align4(n: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN: round up to a multiple of 4."""
    return (n + 3) & ~3


class Header(NamedTuple):
    """A decoded nlmsghdr."""

    length: int
    type: int
    flags: int
    seq: int
    pid: int


class Message(NamedTuple):
    """One netlink message cut from a datagram.

    `raw` is the message's bytes as the header's length counts them (header included): what
    an NLMSG_ERROR echoes. `payload` is `raw` without the 16-byte header.
    """

    header: Header
    raw: bytes

    @property
    def payload(self) -> bytes:
        return self.raw[NLMSG_HDRLEN:]


class GenlMessage(NamedTuple):
    """A message of a generic-netlink family: its headers and the attribute bytes after them.

    `attrs_offset` is where the attributes start, counted from the nlmsghdr (20 for every
    family tsemu serves, whose hdrsize is 0); extended acks count offsets from there.
    """

    header: Header
    cmd: int
    version: int
    reserved: int
    attrs: bytes
    attrs_offset: int


def split_datagram(data: bytes) -> list[Message]:
    """The messages of a datagram in order, cut as the kernel cuts them. Never raises.

    Like `netlink_rcv_skb`: stop at a header whose length is below 16 or beyond the datagram;
    step over each message rounded up to 4 bytes (or to the datagram's end).
    """
    out: list[Message] = []
    pos = 0
    end = len(data)
    while end - pos >= NLMSG_HDRLEN:
        header = Header(*_unpack_nlmsghdr(data, pos))
        if header.length < NLMSG_HDRLEN or header.length > end - pos:
            break
        out.append(Message(header, bytes(data[pos : pos + header.length])))
        pos += min(align4(header.length), end - pos)
    return out


def decode_genl(message: Message, family_hdrsize: int = 0) -> GenlMessage:
    """The genetlink view of a message; EINVAL when it is too short, as `genl_family_rcv_msg`."""
    need = NLMSG_HDRLEN + GENL_HDRLEN + family_hdrsize
    if message.header.length < need:
        raise WireError(errno.EINVAL, f"message of {message.header.length} bytes has no room "
                        f"for the generic-netlink header ({need} bytes needed)")
    cmd, version, reserved = _unpack_genlmsghdr(message.raw, NLMSG_HDRLEN)
    offset = need
    return GenlMessage(message.header, cmd, version, reserved, message.raw[offset:], offset)


#: The flags genl_header_check lets through on a command it checks (a full DUMP aside).
_CHECKED_FLAGS_ALLOWED = 0x1 | 0x4 | 0x8  # NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO
_DUMP_BITS = 0x300

RESERVED_NOT_ZERO = "genlmsghdr.reserved field is not 0"
RESERVED_FLAGS = "ambiguous or reserved bits set in nlmsg_flags"


def check_genl_header(message: GenlMessage, resv_start_op: int) -> None:
    """genetlink's `genl_header_check`: for a command numbered `resv_start_op` or above (the
    family's commands added after genetlink began validating), a non-zero `reserved` field,
    or a flag other than REQUEST, ACK, ECHO and a whole DUMP, is EINVAL with an extended-ack
    message. Older commands are not checked. Runs after the header-length check and before
    the command is looked up, so an unknown command with bad flags is EINVAL, not
    EOPNOTSUPP."""
    if message.cmd < resv_start_op:
        return
    if message.reserved:
        raise WireError(errno.EINVAL, f"genlmsghdr.reserved is {message.reserved:#x}",
                        ext_msg=RESERVED_NOT_ZERO)
    flags = message.header.flags
    if flags & _DUMP_BITS == _DUMP_BITS:
        flags &= ~_DUMP_BITS
    if flags & ~_CHECKED_FLAGS_ALLOWED:
        raise WireError(errno.EINVAL, f"nlmsg_flags {message.header.flags:#x} has bits other "
                        "than REQUEST, ACK, ECHO and DUMP", ext_msg=RESERVED_FLAGS)


def encode_message(msg_type: int, flags: int, seq: int, pid: int, payload: bytes) -> bytes:
    """One netlink message: a header whose length counts `payload`, then `payload` padded to 4.

    The kernel's nlmsg_len excludes the final alignment padding only when nothing follows;
    every payload tsemu builds is already a multiple of 4, so the two readings agree.
    """
    length = NLMSG_HDRLEN + len(payload)
    pad = b"\0" * (align4(length) - length)
    return _pack_nlmsghdr(length, msg_type, flags, seq, pid) + payload + pad


def encode_genl(
    family: int, flags: int, seq: int, pid: int, cmd: int, version: int, attrs: bytes
) -> bytes:
    """A generic-netlink message: nlmsghdr, genlmsghdr (reserved 0), attributes."""
    return encode_message(family, flags, seq, pid, _pack_genlmsghdr(cmd, version, 0) + attrs)


def decode_header(data: bytes, offset: int = 0) -> Header:
    """The nlmsghdr at `offset`; EINVAL if fewer than 16 bytes remain."""
    if len(data) - offset < NLMSG_HDRLEN:
        raise WireError(errno.EINVAL, f"{len(data) - offset} bytes cannot hold a netlink header")
    return Header(*_unpack_nlmsghdr(data, offset))


def pack_header(length: int, msg_type: int, flags: int, seq: int, pid: int) -> bytes:
    """The 16 bytes of an nlmsghdr, for callers that assemble messages themselves."""
    return _pack_nlmsghdr(length, msg_type, flags, seq, pid)


def pack_genl_header(cmd: int, version: int, reserved: int = 0) -> bytes:
    """The 4 bytes of a genlmsghdr."""
    return _pack_genlmsghdr(cmd, version, reserved)
