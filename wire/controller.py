"""The generic-netlink controller's messages (family `nlctrl`, id 0x10).

What lives here: CTRL_CMD_GETFAMILY requests (by name, by id, dump) and CTRL_CMD_NEWFAMILY
replies, with the controller's request policy. The reply's attributes come in the order the
kernel's `ctrl_fill_info` writes them: FAMILY_NAME, FAMILY_ID, VERSION, HDRSIZE, MAXATTR, OPS
(a nest of nests {OP_ID, OP_FLAGS}, numbered from 1), then MCAST_GROUPS (a nest of nests
{GRP_ID, GRP_NAME}) only when the family has groups. Nests carry no NESTED bit.
What must not: which families exist (the emulator's family table decides).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .attributes import (
    Attr,
    AttrPolicy,
    encode_nest,
    encode_string,
    encode_u16,
    encode_u32,
    get_string,
    get_u16,
    get_u32,
    iter_attrs,
    parse_attrs,
)
from .constants import GENL_ID_CTRL, AttrType, CtrlAttr, CtrlCmd, CtrlMcastAttr, CtrlOpAttr, Flag
from .errors import WireError
from .netlink import GenlMessage, encode_genl

#: GENL_NAMSIZ: family names are at most 15 characters and a NUL.
GENL_NAMSIZ = 16

#: ctrl_policy_family: the policy of GETFAMILY's attributes.
GETFAMILY_POLICY: dict[int, AttrPolicy] = {
    CtrlAttr.FAMILY_ID: AttrPolicy(AttrType.U16),
    CtrlAttr.FAMILY_NAME: AttrPolicy(AttrType.NUL_STRING, GENL_NAMSIZ - 1),
}
GETFAMILY_MAXATTR = int(CtrlAttr.FAMILY_NAME)

#: The version nlctrl puts in its genl headers.
CTRL_VERSION = 2


@dataclass(frozen=True)
class Family:
    """What nlctrl reports of a family."""

    name: str
    id: int
    version: int
    hdrsize: int = 0
    maxattr: int = 0
    ops: tuple[tuple[int, int], ...] = ()  # (op id, op flags)
    mcast_groups: tuple[tuple[int, str], ...] = ()  # (group id, group name)


@dataclass(frozen=True)
class GetFamily:
    """A decoded GETFAMILY request. The kernel looks up by name when a name is given (even
    alongside an id), else by id; `name` is the bytes before the NUL."""

    name: bytes | None = None
    id: int | None = None
    extra: dict[int, bytes] = field(default_factory=dict)


def decode_getfamily(message: GenlMessage, *, strict: bool = False) -> GetFamily:
    """The lookup keys of a GETFAMILY request, validated by nlctrl's policy: liberally for a
    lookup (GENL_DONT_VALIDATE_STRICT), strictly for a dump (`strict`: GETFAMILY lacks
    GENL_DONT_VALIDATE_DUMP_STRICT, so genl_start parses a dump's attributes strictly, and
    a dump carrying an unknown attribute, a FAMILY_ID that is not exactly 2 bytes, a NESTED
    bit or leftover bytes is refused with EINVAL even though a dump ignores the keys).

    Raises `WireError` (offsets counted from the nlmsghdr) for a policy failure."""
    try:
        attrs = parse_attrs(message.attrs, GETFAMILY_POLICY, GETFAMILY_MAXATTR, strict=strict)
    except WireError as exc:
        raise exc.at_offset(message.attrs_offset) from None
    name_attr = attrs.get(CtrlAttr.FAMILY_NAME)
    id_attr = attrs.get(CtrlAttr.FAMILY_ID)
    return GetFamily(
        name=get_string(name_attr) if name_attr is not None else None,
        id=get_u16(id_attr) if id_attr is not None else None,
    )


def encode_getfamily(
    *, name: str | bytes | None = None, family_id: int | None = None, seq: int = 0, pid: int = 0,
    flags: int = Flag.REQUEST, version: int = 1,
) -> bytes:
    """A GETFAMILY request by name or id; with flags including DUMP, a request for the list."""
    attrs = b""
    if family_id is not None:
        attrs += encode_u16(CtrlAttr.FAMILY_ID, family_id)
    if name is not None:
        attrs += encode_string(CtrlAttr.FAMILY_NAME, name)
    return encode_genl(GENL_ID_CTRL, flags, seq, pid, CtrlCmd.GETFAMILY, version, attrs)


def family_attrs(family: Family) -> bytes:
    """The attributes of a NEWFAMILY reply, in ctrl_fill_info's order."""
    parts = [
        encode_string(CtrlAttr.FAMILY_NAME, family.name),
        encode_u16(CtrlAttr.FAMILY_ID, family.id),
        encode_u32(CtrlAttr.VERSION, family.version),
        encode_u32(CtrlAttr.HDRSIZE, family.hdrsize),
        encode_u32(CtrlAttr.MAXATTR, family.maxattr),
    ]
    if family.ops:
        parts.append(encode_nest(CtrlAttr.OPS, (
            encode_nest(i, (encode_u32(CtrlOpAttr.ID, op), encode_u32(CtrlOpAttr.FLAGS, fl)))
            for i, (op, fl) in enumerate(family.ops, 1)
        )))
    if family.mcast_groups:
        parts.append(encode_nest(CtrlAttr.MCAST_GROUPS, (
            encode_nest(i, (encode_u32(CtrlMcastAttr.ID, gid),
                            encode_string(CtrlMcastAttr.NAME, name)))
            for i, (gid, name) in enumerate(family.mcast_groups, 1)
        )))
    return b"".join(parts)


def encode_newfamily(family: Family, *, seq: int, pid: int, flags: int = 0) -> bytes:
    """A NEWFAMILY reply (flags 0 for a lookup, MULTI for each entry of a dump)."""
    return encode_genl(GENL_ID_CTRL, flags, seq, pid, CtrlCmd.NEWFAMILY, CTRL_VERSION,
                       family_attrs(family))


def decode_newfamily(message: GenlMessage) -> Family:
    """The family a NEWFAMILY message describes. Missing attributes read as empty or zero;
    never raises."""
    by_type = {a.type: a for a in iter_attrs(message.attrs)}
    ops = tuple(
        (_u32_or_zero(inner.get(CtrlOpAttr.ID)), _u32_or_zero(inner.get(CtrlOpAttr.FLAGS)))
        for inner in _entries(by_type.get(CtrlAttr.OPS))
    )
    groups = tuple(
        (_u32_or_zero(inner.get(CtrlMcastAttr.ID)), _text(inner.get(CtrlMcastAttr.NAME)))
        for inner in _entries(by_type.get(CtrlAttr.MCAST_GROUPS))
    )
    fid = by_type.get(CtrlAttr.FAMILY_ID)
    return Family(
        name=_text(by_type.get(CtrlAttr.FAMILY_NAME)),
        id=get_u16(fid) if fid is not None and len(fid.payload) >= 2 else 0,
        version=_u32_or_zero(by_type.get(CtrlAttr.VERSION)),
        hdrsize=_u32_or_zero(by_type.get(CtrlAttr.HDRSIZE)),
        maxattr=_u32_or_zero(by_type.get(CtrlAttr.MAXATTR)),
        ops=ops,
        mcast_groups=groups,
    )


def _u32_or_zero(attr: Attr | None) -> int:
    return get_u32(attr) if attr is not None and len(attr.payload) >= 4 else 0


def _text(attr: Attr | None) -> str:
    return get_string(attr).decode(errors="replace") if attr is not None else ""


def _entries(nest: Attr | None) -> list[dict[int, Attr]]:
    """The entries of a nest of nests (OPS, MCAST_GROUPS), each as a by-type table."""
    if nest is None:
        return []
    return [{a.type: a for a in iter_attrs(entry.payload)} for entry in iter_attrs(nest.payload)]
