"""Netlink attributes: `struct nlattr` streams, nests, and policy validation.

What lives here: the attribute header's layout, how a stream of attributes is walked (the
kernel's `nla_ok`/`nla_next`), how attributes and nests are encoded (4-byte alignment, the
NESTED and BYTEORDER type bits), and how a request's attributes are checked against a policy
the way the kernel's liberal and strict validations check them, errno, extended-ack details
and warnings included. What must not: what any family's attributes mean.

Theory of operation, following lib/nlattr.c:
- a stream ends at the first attribute whose length is below 4 or beyond what is left; bytes
  left over after the last whole attribute (1 to 3, or an attribute cut short) are ignored by
  a liberal parse, which only leaves the extended-ack warning "bytes leftover after parsing
  attributes" (`parse_warning`: it then rides on the request's ACK, or on an error that sets
  no message of its own), and refused by a strict one (EINVAL, that message);
- in a parse against a policy, types above the policy's maximum and type 0 are skipped (a
  strict parse refuses them: EINVAL "Unknown attribute type"), each known attribute is
  validated when it is met (so the first bad one decides the error), and a later attribute of
  the same type replaces an earlier one;
- liberal validation (GENL_DONT_VALIDATE_STRICT: every do-operation tsemu serves) accepts
  integers longer than their type (their low bytes are read); shorter ones fail with ERANGE
  and the extended-ack message "Attribute failed policy validation". A NUL_STRING must hold a
  NUL within its first max_len + 1 bytes (else EINVAL) and then passes the STRING check as
  well (the kernel falls through): more than max_len bytes before a final NUL is ERANGE;
- strict validation (NL_VALIDATE_STRICT: nlctrl's GETFAMILY dump, which lacks
  GENL_DONT_VALIDATE_DUMP_STRICT) adds, before the liberal checks: a fixed-size type of any
  other length is EINVAL "invalid attribute length", NLA_F_NESTED on a type that is not a
  nest is EINVAL "NLA_F_NESTED not expected" (both with the attribute's offset and policy).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import construct as cs

from .constants import (
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLA_HDRLEN,
    NLA_TYPE_MASK,
    AttrType,
    PolicyTypeAttr,
)
from .derive import FastCodec
from .errors import WireError

#: struct nlattr
NLATTR = cs.Struct(
    "length" / cs.Int16ul,
    "type" / cs.Int16ul,
)
NLATTR_CODEC = FastCodec(NLATTR)
_unpack_nlattr = NLATTR_CODEC.unpack_from
_pack_nlattr = NLATTR_CODEC.pack_values

#: Payload layouts of scalar attributes.
U8 = cs.Int8ul
U16 = cs.Int16ul
U32 = cs.Int32ul
U64 = cs.Int64ul
_U16_CODEC = FastCodec(cs.Struct("value" / U16))
_U32_CODEC = FastCodec(cs.Struct("value" / U32))
_U64_CODEC = FastCodec(cs.Struct("value" / U64))

_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")

assert NLATTR_CODEC.size == NLA_HDRLEN


class Attr(NamedTuple):
    """One attribute of a stream.

    `type` has the flag bits removed; `flags` keeps them (NLA_F_NESTED, NLA_F_NET_BYTEORDER) so
    a decoded stream re-encodes to the same bytes. `offset` is where the attribute's header
    starts within the stream that was walked.
    """

    type: int
    payload: bytes
    flags: int = 0
    offset: int = 0

    @property
    def nested(self) -> bool:
        return bool(self.flags & NLA_F_NESTED)

    def encode(self) -> bytes:
        return encode_attr(self.type | self.flags, self.payload)


def iter_attrs(data: bytes) -> list[Attr]:
    """Every attribute of a stream, in order, as `nla_for_each_attr` walks it. Never raises."""
    out: list[Attr] = []
    pos = 0
    end = len(data)
    while end - pos >= NLA_HDRLEN:
        length, raw_type = _unpack_nlattr(data, pos)
        if length < NLA_HDRLEN or length > end - pos:
            break
        out.append(Attr(raw_type & NLA_TYPE_MASK, bytes(data[pos + NLA_HDRLEN : pos + length]),
                        raw_type & (NLA_F_NESTED | NLA_F_NET_BYTEORDER), pos))
        pos += (length + 3) & ~3
    return out


def encode_attr(attr_type: int, payload: bytes) -> bytes:
    """One attribute: header, payload, zero padding to 4 bytes. `attr_type` may carry flags."""
    length = NLA_HDRLEN + len(payload)
    return _pack_nlattr(length, attr_type) + payload + _PADS[length & 3]


def encode_nest(attr_type: int, children: Iterable[bytes], *, flag: bool = False) -> bytes:
    """A nest of already encoded attributes. The kernel's `nla_nest_start_noflag` leaves the
    NESTED bit clear (taskstats, nlctrl); `flag=True` sets it, as `nla_nest_start` does."""
    body = b"".join(children)
    return encode_attr(attr_type | (NLA_F_NESTED if flag else 0), body)


def encode_u16(attr_type: int, value: int) -> bytes:
    return encode_attr(attr_type, _U16_CODEC.pack_values(value))


def encode_u32(attr_type: int, value: int) -> bytes:
    return encode_attr(attr_type, _U32_CODEC.pack_values(value))


def encode_u64(attr_type: int, value: int) -> bytes:
    return encode_attr(attr_type, _U64_CODEC.pack_values(value))


def encode_string(attr_type: int, value: str | bytes) -> bytes:
    """A NUL-terminated string attribute, as `nla_put_string` writes it."""
    raw = value.encode() if isinstance(value, str) else value
    return encode_attr(attr_type, raw + b"\0")


def get_u16(attr: Attr) -> int:
    """The low 16 bits of an attribute that policy validation let through (>= 2 bytes)."""
    return int(_U16_CODEC.unpack_from(attr.payload)[0])


def get_u32(attr: Attr) -> int:
    """The low 32 bits of an attribute that policy validation let through (>= 4 bytes)."""
    return int(_U32_CODEC.unpack_from(attr.payload)[0])


def get_u64(attr: Attr) -> int:
    return int(_U64_CODEC.unpack_from(attr.payload)[0])


def get_string(attr: Attr) -> bytes:
    """A string payload up to its first NUL, as `nla_strscpy` copies it."""
    return attr.payload.split(b"\0", 1)[0]


@dataclass(frozen=True)
class AttrPolicy:
    """One entry of a kernel `nla_policy`: the attribute's type and, for strings, `max_len`."""

    kind: AttrType
    max_len: int = 0


#: Minimum payload length of each policy type in liberal validation (nla_attr_minlen).
_MIN_LEN = {
    AttrType.U8: 1,
    AttrType.U16: 2,
    AttrType.U32: 4,
    AttrType.U64: 8,
    AttrType.S8: 1,
    AttrType.S16: 2,
    AttrType.S32: 4,
    AttrType.S64: 8,
    AttrType.FLAG: 0,
    AttrType.BINARY: 0,
    AttrType.NESTED: 0,
}

#: The largest value of each unsigned type, reported in a policy dump as MAX_VALUE_U.
_UNSIGNED_MAX = {AttrType.U8: 0xFF, AttrType.U16: 0xFFFF, AttrType.U32: 0xFFFFFFFF,
                 AttrType.U64: 0xFFFFFFFFFFFFFFFF}

POLICY_FAILED = "Attribute failed policy validation"


def encode_policy(policy: AttrPolicy) -> bytes:
    """The body of an NLMSGERR_ATTR_POLICY nest describing `policy`, in the kernel's order
    (netlink_policy_dump_write_attr: the type's bounds first, then its TYPE)."""
    parts: list[bytes] = []
    if policy.kind in _UNSIGNED_MAX:
        parts.append(encode_u64(PolicyTypeAttr.MIN_VALUE_U, 0))
        parts.append(encode_u64(PolicyTypeAttr.MAX_VALUE_U, _UNSIGNED_MAX[policy.kind]))
    elif policy.kind in (AttrType.STRING, AttrType.NUL_STRING) and policy.max_len:
        parts.append(encode_u32(PolicyTypeAttr.MAX_LENGTH, policy.max_len))
    parts.append(encode_u32(PolicyTypeAttr.TYPE, policy.kind))
    return b"".join(parts)


def _policy_error(err: int, detail: str, attr: Attr, policy: AttrPolicy) -> WireError:
    return WireError(err, detail, ext_msg=POLICY_FAILED, attr_offset=attr.offset,
                     policy=encode_policy(policy))


#: Payload length of each fixed-size policy type (nla_attr_len): a strict parse wants exactly it.
_EXACT_LEN = {
    AttrType.U8: 1, AttrType.U16: 2, AttrType.U32: 4, AttrType.U64: 8,
    AttrType.S8: 1, AttrType.S16: 2, AttrType.S32: 4, AttrType.S64: 8,
}
_NEST_TYPES = (AttrType.NESTED, AttrType.NESTED_ARRAY)

#: The extended-ack messages of nlattr.c this module reproduces.
LEFTOVER = "bytes leftover after parsing attributes"
UNKNOWN_TYPE = "Unknown attribute type"
INVALID_LENGTH = "invalid attribute length"
NESTED_NOT_EXPECTED = "NLA_F_NESTED not expected"


def _validate(attr: Attr, policy: AttrPolicy, strict: bool = False) -> None:
    """Raise what `validate_nla` raises for `attr` (liberal validation, or `strict`)."""
    size = len(attr.payload)
    kind = policy.kind
    if strict:
        exact = _EXACT_LEN.get(kind)
        if exact is not None and size != exact:
            raise WireError(errno.EINVAL, f"attribute {attr.type}: {size} bytes, "
                            f"{kind.name} is {exact}", ext_msg=INVALID_LENGTH,
                            attr_offset=attr.offset, policy=encode_policy(policy))
        if attr.nested and kind not in _NEST_TYPES and kind != AttrType.INVALID:
            raise WireError(errno.EINVAL, f"attribute {attr.type}: NLA_F_NESTED on a "
                            f"{kind.name}", ext_msg=NESTED_NOT_EXPECTED,
                            attr_offset=attr.offset, policy=encode_policy(policy))
    if kind == AttrType.NUL_STRING:
        window = min(size, policy.max_len + 1) if policy.max_len else size
        if window == 0 or b"\0" not in attr.payload[:window]:
            raise _policy_error(errno.EINVAL, f"attribute {attr.type}: string not NUL-terminated"
                                + (f" within {policy.max_len + 1} bytes" if policy.max_len else ""),
                                attr, policy)
    if kind in (AttrType.STRING, AttrType.NUL_STRING):  # NUL_STRING falls through, as in C
        if size < 1:
            raise _policy_error(errno.ERANGE, f"attribute {attr.type}: empty string", attr, policy)
        if policy.max_len:
            text_len = size - 1 if attr.payload[-1] == 0 else size
            if text_len > policy.max_len:
                raise _policy_error(errno.ERANGE, f"attribute {attr.type}: string longer than "
                                    f"{policy.max_len}", attr, policy)
    elif size < _MIN_LEN.get(kind, 0):
        raise _policy_error(errno.ERANGE, f"attribute {attr.type}: {size} bytes, "
                            f"{_MIN_LEN[kind]} needed for {kind.name}", attr, policy)


def leftover(data: bytes) -> int:
    """How many bytes of an attribute stream follow its last whole attribute (`rem` after
    nla_for_each_attr; 0 when the last attribute ends the stream, padding or not)."""
    pos = 0
    end = len(data)
    while end - pos >= NLA_HDRLEN:
        length = _unpack_nlattr(data, pos)[0]
        if length < NLA_HDRLEN or length > end - pos:
            break
        pos += (length + 3) & ~3
    return max(end - pos, 0)


def parse_warning(data: bytes) -> str | None:
    """The extended-ack warning a liberal parse of `data` leaves behind, or None: with bytes
    left over, the kernel sets its message and goes on."""
    return LEFTOVER if leftover(data) else None


def parse_attrs(data: bytes, policy: Mapping[int, AttrPolicy], max_type: int, *,
                strict: bool = False) -> dict[int, Attr]:
    """The attributes of a request, validated against `policy` as `__nla_parse` does.

    Returns the last attribute of each type 1..max_type. Attributes without a policy entry
    are kept unvalidated. Raises `WireError` for the first attribute that fails validation;
    with `strict` (NL_VALIDATE_STRICT) also for an unknown type and for leftover bytes.
    """
    table: dict[int, Attr] = {}
    for attr in iter_attrs(data):
        if attr.type == 0 or attr.type > max_type:
            if strict:
                raise WireError(errno.EINVAL, f"attribute type {attr.type} is unknown "
                                f"(maximum {max_type})", ext_msg=UNKNOWN_TYPE,
                                attr_offset=attr.offset)
            continue
        rule = policy.get(attr.type)
        if rule is not None:
            _validate(attr, rule, strict)
        table[attr.type] = attr
    if strict and leftover(data):
        raise WireError(errno.EINVAL, f"{leftover(data)} bytes after the last attribute",
                        ext_msg=LEFTOVER)
    return table
