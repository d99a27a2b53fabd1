"""NLMSG_ERROR (errors and ACKs) and NLMSG_DONE, as the kernel's `netlink_ack` builds them.

What lives here: the layout of `struct nlmsgerr`, the rules for how much of the request is
echoed (whole, or only its header: CAPPED), which extended-ack TLVs follow (ACK_TLVS), and the
end-of-dump message. What must not: deciding which errno a request earns (the emulator does).

The rules, from net/netlink/af_netlink.c:
- an error echoes the whole offending message unless the socket set NETLINK_CAP_ACK; an ACK
  (error 0) always echoes only the header; either way the reply's flags carry CAPPED when the
  echo is only the header;
- TLVs are added only when the socket set NETLINK_EXT_ACK: the message text (errors and acks),
  then, for errors only, the offset of the bad attribute and the policy it failed;
- the reply's seq is the request's, its pid the requesting socket's port id.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import construct as cs

from .attributes import (
    Attr,
    encode_attr,
    encode_string,
    encode_u32,
    get_string,
    get_u32,
    iter_attrs,
)
from .constants import (
    NLA_F_NESTED,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLMSG_HDRLEN,
    ErrAttr,
    Flag,
    MsgType,
)
from .derive import FastCodec
from .errors import WireError
from .netlink import NLMSGHDR, NLMSGHDR_CODEC, Header, Message, align4, encode_message

#: struct nlmsgerr: the negative errno (0 for an ACK) and the request's header.
NLMSGERR = cs.Struct(
    "error" / cs.Int32sl,
    "msg" / NLMSGHDR,
)
NLMSGERR_CODEC = FastCodec(NLMSGERR)
_ERROR_CODE = FastCodec(cs.Struct("error" / cs.Int32sl))


@dataclass(frozen=True)
class ExtAck:
    """Extended-ack details of one error, as TLVs carry them."""

    message: str | None = None
    offset: int | None = None
    policy: bytes | None = None

    @classmethod
    def of(cls, error: WireError) -> ExtAck:
        return cls(error.ext_msg, error.attr_offset, error.policy)

    def tlvs(self, is_error: bool) -> bytes:
        parts = []
        if self.message is not None:
            parts.append(encode_string(ErrAttr.MSG, self.message))
        if is_error:
            if self.offset is not None:
                parts.append(encode_u32(ErrAttr.OFFS, self.offset))
            if self.policy is not None:
                parts.append(encode_attr(ErrAttr.POLICY | NLA_F_NESTED, self.policy))
        return b"".join(parts)


def encode_error(
    request: Message,
    error: int,
    portid: int,
    *,
    cap_ack: bool = False,
    ext_ack: bool = False,
    ext: ExtAck | None = None,
) -> bytes:
    """The NLMSG_ERROR the kernel sends for `request`: `error` is a negative errno, or 0 for
    an ACK. `cap_ack`/`ext_ack` are the requesting socket's NETLINK_CAP_ACK/NETLINK_EXT_ACK."""
    flags = 0
    if error and not cap_ack:
        echo = request.raw
    else:
        echo = request.raw[:NLMSG_HDRLEN]
        flags |= NLM_F_CAPPED
    tlvs = ext.tlvs(error != 0) if (ext is not None and ext_ack) else b""
    if tlvs:
        flags |= NLM_F_ACK_TLVS
    body = _ERROR_CODE.pack_values(error) + echo
    body += b"\0" * (align4(len(body)) - len(body)) + tlvs
    return encode_message(MsgType.ERROR, flags, request.header.seq, portid, body)


def encode_done(seq: int, portid: int) -> bytes:
    """NLMSG_DONE closing a dump: MULTI, a zero error code as payload."""
    return encode_message(MsgType.DONE, Flag.MULTI, seq, portid, _ERROR_CODE.pack_values(0))


@dataclass(frozen=True)
class ErrorMessage:
    """A decoded NLMSG_ERROR. `error` is negative (0: an ACK). `echo` is the echoed request,
    whole or only its header (`capped`). `tlvs` are the extended-ack attributes."""

    header: Header
    error: int
    echo: bytes
    tlvs: list[Attr] = field(default_factory=list)

    @property
    def capped(self) -> bool:
        return bool(self.header.flags & NLM_F_CAPPED)

    @property
    def echoed_header(self) -> Header:
        """The header of the request this error answers (the echo always holds it)."""
        return Header(*NLMSGHDR_CODEC.unpack_from(self.echo))

    @property
    def ext(self) -> ExtAck:
        by_type = {a.type: a for a in self.tlvs}
        msg = by_type.get(ErrAttr.MSG)
        offs = by_type.get(ErrAttr.OFFS)
        pol = by_type.get(ErrAttr.POLICY)
        return ExtAck(
            get_string(msg).decode(errors="replace") if msg is not None else None,
            get_u32(offs) if offs is not None and len(offs.payload) >= 4 else None,
            pol.payload if pol is not None else None,
        )

    def encode(self) -> bytes:
        body = _ERROR_CODE.pack_values(self.error) + self.echo
        body += b"\0" * (align4(len(body)) - len(body)) + b"".join(a.encode() for a in self.tlvs)
        h = self.header
        return encode_message(h.type, h.flags, h.seq, h.pid, body)


def decode_error(message: Message) -> ErrorMessage:
    """An NLMSG_ERROR message's parts; EINVAL if it is too short for what its flags claim."""
    data = message.raw
    if message.header.type != MsgType.ERROR:
        raise WireError(errno.EINVAL, f"message type {message.header.type} is not NLMSG_ERROR")
    if len(data) < NLMSG_HDRLEN + NLMSGERR_CODEC.size:
        raise WireError(errno.EINVAL, f"NLMSG_ERROR of {len(data)} bytes is shorter than 36")
    error = int(_ERROR_CODE.unpack_from(data, NLMSG_HDRLEN)[0])
    echo_start = NLMSG_HDRLEN + 4
    inner_len = int(NLMSGERR_CODEC.unpack_from(data, NLMSG_HDRLEN)[1])
    if message.header.flags & NLM_F_CAPPED:
        echo_len = NLMSG_HDRLEN
    else:
        echo_len = inner_len
        if echo_len < NLMSG_HDRLEN or echo_start + echo_len > len(data):
            raise WireError(errno.EINVAL, f"NLMSG_ERROR echoes a request of {echo_len} bytes "
                            f"but carries {len(data) - echo_start}")
    echo = data[echo_start : echo_start + echo_len]
    tlvs: list[Attr] = []
    if message.header.flags & NLM_F_ACK_TLVS:
        tlv_start = align4(echo_start + echo_len)
        tlvs = iter_attrs(data[tlv_start:])
    return ErrorMessage(message.header, error, echo, tlvs)
