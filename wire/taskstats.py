"""Messages of the TASKSTATS family: GET requests, NEW replies and exit events, CGROUPSTATS.

What lives here: the request policies (taskstats_cmd_get_policy, cgroupstats_cmd_get_policy),
decoding a request into what it asks, and the shape of a NEW message: one AGGR_PID or
AGGR_TGID nest per record, each holding the PID or TGID (u32) then STATS (struct taskstats).
On architectures that need 64-bit alignment the kernel's `nla_reserve_64bit` puts a NULL
attribute before STATS when its payload would be misaligned (never on x86_64); `align64` asks
for that, and decoders skip NULL attributes wherever they are.
What must not: which fields a record holds (the emulator's accounting rules), cpulist syntax
(`cpulist`), the struct's layout (`taskstats_struct`).
"""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any

import construct as cs

from .attributes import (
    NLATTR,
    U32,
    Attr,
    AttrPolicy,
    encode_attr,
    encode_u32,
    get_u32,
    iter_attrs,
    parse_attrs,
)
from .constants import (
    CGROUPSTATS_CMD_ATTR_FD,
    CGROUPSTATS_TYPE_CGROUP_STATS,
    GENL_HDRLEN,
    NLA_HDRLEN,
    NLMSG_HDRLEN,
    TASKSTATS_GENL_VERSION,
    AttrType,
    Flag,
    TaskstatsCmd,
    TaskstatsCmdAttr,
    TaskstatsType,
)
from .derive import FastCodec
from .errors import WireError
from .netlink import (
    GENLMSGHDR,
    NLMSGHDR,
    NLMSGHDR_CODEC,
    GenlMessage,
    Message,
    encode_genl,
    pack_header,
)
from .runs import MessageRun
from .taskstats_struct import CGROUPSTATS_CODEC, FIELDS, TaskstatsLayout, layout_for

#: taskstats_cmd_get_policy
GET_POLICY: dict[int, AttrPolicy] = {
    TaskstatsCmdAttr.PID: AttrPolicy(AttrType.U32),
    TaskstatsCmdAttr.TGID: AttrPolicy(AttrType.U32),
    TaskstatsCmdAttr.REGISTER_CPUMASK: AttrPolicy(AttrType.STRING),
    TaskstatsCmdAttr.DEREGISTER_CPUMASK: AttrPolicy(AttrType.STRING),
}
GET_MAXATTR = int(TaskstatsCmdAttr.DEREGISTER_CPUMASK)

#: The common TASKSTATS_CMD_GET, 28 bytes: one message holding one attribute with a u32
#: payload (PID or TGID). The layout the emulator's fast path recognises with one unpack
#: before anything else; whatever does not match it exactly takes the general way
#: (`split_datagram`, `decode_genl`, `decode_taskstats_get`).
SINGLE_U32_REQUEST = cs.Struct(
    "header" / NLMSGHDR,
    "genl" / GENLMSGHDR,
    "attr" / NLATTR,
    "value" / U32,
)
SINGLE_U32_REQUEST_CODEC = FastCodec(SINGLE_U32_REQUEST)

#: cgroupstats_cmd_get_policy
CGROUPSTATS_POLICY: dict[int, AttrPolicy] = {CGROUPSTATS_CMD_ATTR_FD: AttrPolicy(AttrType.U32)}
CGROUPSTATS_MAXATTR = CGROUPSTATS_CMD_ATTR_FD


@dataclass(frozen=True)
class TaskstatsRequest:
    """What a TASKSTATS_CMD_GET asks. Cpumasks are the raw attribute payloads, parsed by
    `cpulist.parse_cpulist`, which needs the machine's CPU count (the kernel reports cpulist
    errors without extended-ack details, so no offsets are kept)."""

    pid: int | None = None
    tgid: int | None = None
    register: bytes | None = None
    deregister: bytes | None = None


def _parse(message: GenlMessage, policy: Mapping[int, AttrPolicy], maxattr: int) -> dict[int, Attr]:
    try:
        return parse_attrs(message.attrs, policy, maxattr)
    except WireError as exc:
        raise exc.at_offset(message.attrs_offset) from None


def decode_taskstats_get(message: GenlMessage) -> TaskstatsRequest:
    """The attributes of a TASKSTATS_CMD_GET, validated by its policy (WireError if not)."""
    attrs = _parse(message, GET_POLICY, GET_MAXATTR)
    pid = attrs.get(TaskstatsCmdAttr.PID)
    tgid = attrs.get(TaskstatsCmdAttr.TGID)
    reg = attrs.get(TaskstatsCmdAttr.REGISTER_CPUMASK)
    dereg = attrs.get(TaskstatsCmdAttr.DEREGISTER_CPUMASK)
    return TaskstatsRequest(
        pid=get_u32(pid) if pid is not None else None,
        tgid=get_u32(tgid) if tgid is not None else None,
        register=reg.payload if reg is not None else None,
        deregister=dereg.payload if dereg is not None else None,
    )


def encode_taskstats_get(
    family_id: int, *, pid: int | None = None, tgid: int | None = None,
    register: str | bytes | None = None, deregister: str | bytes | None = None,
    seq: int = 0, portid: int = 0, flags: int = Flag.REQUEST, version: int = 1,
) -> bytes:
    """A TASKSTATS_CMD_GET request. Cpumask strings get a trailing NUL, as getdelays sends
    them; pass bytes to send a payload exactly."""
    attrs = b""
    if pid is not None:
        attrs += encode_u32(TaskstatsCmdAttr.PID, pid)
    if tgid is not None:
        attrs += encode_u32(TaskstatsCmdAttr.TGID, tgid)
    for kind, mask in ((TaskstatsCmdAttr.REGISTER_CPUMASK, register),
                       (TaskstatsCmdAttr.DEREGISTER_CPUMASK, deregister)):
        if mask is not None:
            attrs += encode_attr(kind, mask.encode() + b"\0" if isinstance(mask, str) else mask)
    return encode_genl(family_id, flags, seq, portid, TaskstatsCmd.GET, version, attrs)


def decode_cgroupstats_get(message: GenlMessage) -> int | None:
    """The descriptor number a CGROUPSTATS_CMD_GET names, or None when it names none."""
    attrs = _parse(message, CGROUPSTATS_POLICY, CGROUPSTATS_MAXATTR)
    fd = attrs.get(CGROUPSTATS_CMD_ATTR_FD)
    return get_u32(fd) if fd is not None else None


def carries_descriptor(message: Message, family_id: int) -> bool:
    """Whether a client sends a descriptor along with this message (SCM_RIGHTS), by tsemu's
    convention for CGROUPSTATS (shim/io.c `cgroupstats_fds`, followed by `tsemu.client`): a
    CGROUPSTATS_CMD_GET request (REQUEST set, not a whole DUMP, TASKSTATS' type, command 4)
    with an FD attribute (flag bits aside) of at least 4 bytes, when the descriptor it names
    is open in the client. The server pairs the descriptors it receives with the messages
    for which this is true, in order, whatever answer those messages then earn."""
    h = message.header
    if (h.type != family_id or not h.flags & Flag.REQUEST or h.flags & Flag.DUMP == Flag.DUMP
            or h.length < NLMSG_HDRLEN + GENL_HDRLEN
            or message.raw[NLMSG_HDRLEN] != TaskstatsCmd.CGROUPSTATS_GET):
        return False
    return any(a.type == CGROUPSTATS_CMD_ATTR_FD and len(a.payload) >= U32.sizeof()
               for a in iter_attrs(message.raw[NLMSG_HDRLEN + GENL_HDRLEN:]))


def encode_cgroupstats_get(
    family_id: int, fd: int | None, *, seq: int = 0, portid: int = 0,
    flags: int = Flag.REQUEST, version: int = 1,
) -> bytes:
    """A CGROUPSTATS_CMD_GET naming descriptor `fd` (None: the attribute left out)."""
    attrs = encode_u32(CGROUPSTATS_CMD_ATTR_FD, fd) if fd is not None else b""
    return encode_genl(family_id, flags, seq, portid, TaskstatsCmd.CGROUPSTATS_GET, version,
                       attrs)


@dataclass(frozen=True)
class Record:
    """One AGGR_PID or AGGR_TGID nest of a NEW message.

    `stats` is the struct's raw bytes (any version); `values()` decodes them. `padded`
    records whether a NULL attribute preceded STATS.
    """

    aggr: TaskstatsType  # AGGR_PID or AGGR_TGID
    id: int
    stats: bytes
    padded: bool = False

    def layout(self) -> TaskstatsLayout:
        return layout_for(self.stats)

    def values(self) -> dict[str, Any]:
        """The struct's fields, read with the layout its version field names."""
        return self.layout().parse(self.stats)


_ID_TYPE = {TaskstatsType.AGGR_PID: TaskstatsType.PID, TaskstatsType.AGGR_TGID: TaskstatsType.TGID}
_NULL_ATTR = encode_attr(TaskstatsType.NULL, b"")


def encode_record(aggr: TaskstatsType, ident: int, stats: bytes, *, align64: bool = False,
                  offset: int = NLMSG_HDRLEN + GENL_HDRLEN) -> bytes:
    """An AGGR nest. `offset` is where the nest starts in its message: with `align64` the
    NULL pad goes in when STATS' payload would otherwise not be 8-byte aligned."""
    inner = encode_u32(_ID_TYPE[aggr], ident)
    stats_payload_at = offset + NLA_HDRLEN + len(inner) + NLA_HDRLEN
    if align64 and stats_payload_at % 8:
        inner += _NULL_ATTR
    inner += encode_attr(TaskstatsType.STATS, stats)
    return encode_attr(aggr, inner)


def encode_taskstats_new(
    family_id: int, records: Sequence[tuple[TaskstatsType, int, bytes]], *, seq: int,
    portid: int, flags: int = 0, align64: bool = False,
) -> bytes:
    """A TASKSTATS_CMD_NEW message: a GET reply (seq and port id of the request) or an exit
    event (per-CPU seq, port id 0). Records are (AGGR_PID|AGGR_TGID, id, struct bytes)."""
    body = b""
    at = NLMSG_HDRLEN + GENL_HDRLEN
    for aggr, ident, stats in records:
        body += encode_record(aggr, ident, stats, align64=align64, offset=at + len(body))
    return encode_genl(family_id, flags, seq, portid, TaskstatsCmd.NEW, TASKSTATS_GENL_VERSION,
                       body)


#: The id inside an AGGR nest (TASKSTATS_TYPE_PID / TGID): a u32.
_ID_CODEC = FastCodec(cs.Struct("id" / U32))
#: Fields that are only padding (ac_pad): a record leaves them out, they go out as zeros.
_PAD_FIELDS = frozenset(f.name for f in FIELDS if f.ctype.startswith("pad"))
_FORMAT_ITEM = re.compile(r"(\d*)([a-zA-Z?])")


def _format_items(fmt: str) -> list[tuple[int, str]]:
    """(count, code) of each item of a derived little-endian struct format:
    "<H2x32s" gives (1, "H"), (2, "x"), (32, "s"). TypeError for anything else."""
    if not fmt.startswith("<"):
        raise TypeError(f"not a little-endian struct format: {fmt!r}")
    found = _FORMAT_ITEM.findall(fmt[1:])
    if "".join(count + code for count, code in found) != fmt[1:]:
        raise TypeError(f"cannot split the struct format {fmt!r}")
    return [(int(count) if count else 1, code) for count, code in found]


class ReplyTemplate:
    """A TASKSTATS_CMD_NEW with one record, prebuilt so a reply costs one struct fill.

    The hot path of a GET: header, genl header, the AGGR nest and the STATS attribute header
    are fixed for a given struct size; only seq, port id, the id and the struct change. The
    bytes are the same as `encode_taskstats_new` gives (the tests check it).

    Given the struct's `layout`, `build_values` goes one step further: the whole message,
    header to the record's last field, in one `struct.pack` from the record's values, with a
    format put together from the derived codecs (nlmsghdr's, the id's, the layout's)."""

    def __init__(self, family_id: int, aggr: TaskstatsType, stats_size: int,
                 layout: TaskstatsLayout | None = None) -> None:
        probe = encode_taskstats_new(family_id, [(aggr, 0, b"\0" * stats_size)], seq=0, portid=0)
        self.length = len(probe)
        fixed_end = NLMSG_HDRLEN + GENL_HDRLEN + 2 * NLA_HDRLEN  # genl hdr, AGGR, PID headers
        self._prefix_after_header = probe[NLMSG_HDRLEN:fixed_end]
        self._stats_hdr = probe[self.length - stats_size - NLA_HDRLEN : self.length - stats_size]
        self._family = family_id
        self._tail_pad = b"\0" * (-stats_size % 4)
        self._pack_message: Callable[..., bytes] | None = None
        self._record_fields: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
        self._pads: tuple[str, ...] = ()
        self._layout = layout
        self._record_offset = self.length - stats_size - len(self._tail_pad)
        self._ident_offset = NLMSG_HDRLEN + len(self._prefix_after_header)
        if layout is not None:
            if layout.size != stats_size:
                raise ValueError(f"a {stats_size}-byte template for a {layout.size}-byte layout")
            self._derive(layout)

    def _derive(self, layout: TaskstatsLayout) -> None:
        """Prepare `build_values` for `layout`: leaves it off (None) for a layout with nested
        fields (the v17 timespecs), whose records go the general way."""
        leaves = iter(layout.codec.leaves)
        if any(len(leaf.path) != 1 for leaf in layout.codec.leaves):
            return
        pieces: list[str] = []
        names: list[str] = []
        pads: list[str] = []
        for count, code in _format_items(layout.codec.struct.format):
            if code == "x":
                pieces.append(f"{count}x")
                continue
            if count != 1 and code != "s":
                raise TypeError(f"unexpected repeated item {count}{code} in a derived format")
            name = next(leaves).path[0]
            if name in _PAD_FIELDS and code == "s":
                pieces.append(f"{count}x")  # packed as zeros, as the codec packs it when absent
                pads.append(name)
            else:
                pieces.append(f"{count}{code}" if code == "s" else code)
                names.append(name)
        if next(leaves, None) is not None or len(names) < 2:
            raise TypeError("the derived format and the layout's fields do not pair up")
        fmt = "".join((
            "<", NLMSGHDR_CODEC.struct.format[1:],
            f"{len(self._prefix_after_header)}s",
            _ID_CODEC.struct.format[1:],
            f"{len(self._stats_hdr)}s",
            *pieces,
            f"{len(self._tail_pad)}x" if self._tail_pad else "",
        ))
        packer = struct.Struct(fmt)
        if packer.size != self.length:
            raise TypeError(f"derived reply format of {packer.size} bytes, {self.length} expected")
        self._pack_message = packer.pack
        self._record_fields = itemgetter(*names)
        self._pads = tuple(pads)

    def build(self, seq: int, portid: int, ident: int, stats: bytes, flags: int = 0) -> bytes:
        return b"".join((
            pack_header(self.length, self._family, flags, seq, portid),
            self._prefix_after_header,
            ident.to_bytes(4, "little"),
            self._stats_hdr,
            stats,
            self._tail_pad,
        ))

    def build_values(self, seq: int, portid: int, ident: int, values: Mapping[str, Any],
                     flags: int = 0) -> bytes | None:
        """The bytes of `build(seq, portid, ident, layout.build(values), flags)` in one pack,
        for a record as the accounting makes it: a plain dict holding every field of the
        layout (`version` included) except the padding. None for anything else (a missing or
        extra field, a value that does not pack, no layout given): the caller then goes the
        general way, which gives the bytes or raises the error."""
        pack = self._pack_message
        if pack is None or type(values) is not dict:
            return None
        assert self._record_fields is not None
        try:
            fields = self._record_fields(values)
        except KeyError:
            return None
        for name in self._pads:
            if name in values:
                return None
        try:
            return pack(self.length, self._family, flags, seq, portid, self._prefix_after_header,
                        ident, self._stats_hdr, *fields)
        except Exception:  # struct.error, OverflowError...: the general way raises it properly
            return None


    def patcher(self, names: Sequence[str], *, absent_ok: bool = False) -> ReplyPatch:
        """A `ReplyPatch` rewriting seq, port id, the id and the record fields `names` of a
        message this template built (see `ReplyPatch`). With `absent_ok`, a name the layout
        lacks (a field of a later struct version) is accepted and its value ignored; else it
        is a KeyError."""
        layout = self._layout
        if layout is None:
            raise ValueError("a template without a layout cannot patch record fields")
        seq_at, seq_codec = NLMSGHDR_CODEC.field("seq")
        pid_at, pid_codec = NLMSGHDR_CODEC.field("pid")
        id_at, id_codec = _ID_CODEC.field("id")
        places: dict[str, tuple[int, struct.Struct]] = {
            "seq": (seq_at, seq_codec), "portid": (pid_at, pid_codec),
            "ident": (self._ident_offset + id_at, id_codec)}
        for name in names:
            if absent_ok and name not in layout.codec.fields:
                continue
            offset, codec = layout.codec.field(name)
            places[name] = (self._record_offset + offset, codec)
        return ReplyPatch(self.length, places, tuple(names))


class ReplyPatch:
    """Rewrite a few values of a one-record message already built, at offsets taken from the
    construct definitions (nlmsghdr's, the id's, the struct's): the cheap way to answer the
    same record again with another seq and port (a GET whose task has not changed, only the
    clock fields move) or to send the same exit record for another pid.

    `patch(base, seq, portid, ident, *values)` gives `base` with those values in place; the
    values are the fields named when the patch was made, in that order (those of fields the
    layout lacks, when the patch accepted them, are ignored). A value that does not fit its
    field raises `struct.error`, as the full build would.

    `splicer(base, ...)` is the way to make many messages from one base that differ in a few
    places only (a storm's exits: seq and pid): one struct call each."""

    __slots__ = ("length", "_seq", "_pid", "_ident", "_fields", "_skips", "_places", "_names")

    def __init__(self, length: int, places: Mapping[str, tuple[int, struct.Struct]],
                 names: Sequence[str]) -> None:
        """`places`: where each value this patch may set lies (offset, one-item codec):
        "seq", "portid", "ident" and those of `names` (the record fields, in the order
        `__call__` takes their values) that the layout has."""
        def packer(name: str) -> tuple[Callable[..., None], int]:
            offset, codec = places[name]
            return codec.pack_into, offset

        self.length = length
        self._seq = packer("seq")
        self._pid = packer("portid")
        self._ident = packer("ident")
        self._fields = tuple(packer(name) if name in places else None for name in names)
        self._skips = None in self._fields
        self._places = places
        self._names = frozenset(names) | {"seq", "portid", "ident"}

    def splicer(self, base: bytes, **argument_of: int) -> Splice:
        """A `Splice` of `base`: messages equal to it but for each named place ("seq",
        "portid", "ident" or one of this patch's record fields), which takes the value of
        argument `argument_of[place]`. A place of a field the layout lacks (accepted with
        `absent_ok`) is left out."""
        if len(base) != self.length:
            raise ValueError(f"a {len(base)}-byte message, {self.length} expected")
        unknown = set(argument_of) - self._names
        if unknown:
            raise KeyError(f"no place {sorted(unknown)!r} in this patch")
        chosen = sorted((self._places[name][0], self._places[name][1], argument)
                        for name, argument in argument_of.items() if name in self._places)
        return Splice(base, chosen, max(argument_of.values(), default=-1) + 1)

    def __call__(self, base: bytes, seq: int, portid: int, ident: int, *values: Any) -> bytes:
        if len(base) != self.length:
            raise ValueError(f"a {len(base)}-byte message, {self.length} expected")
        buf = bytearray(base)
        pack, at = self._seq
        pack(buf, at, seq)
        pack, at = self._pid
        pack(buf, at, portid)
        pack, at = self._ident
        pack(buf, at, ident)
        if self._skips:
            for field, value in zip(self._fields, values, strict=True):
                if field is not None:
                    field[0](buf, field[1], value)
        else:
            for (pack, at), value in zip(self._fields, values, strict=True):  # type: ignore[misc]
                pack(buf, at, value)
        return bytes(buf)


@lru_cache(maxsize=64)
def _run_packer(fmt: str, rows: int) -> Callable[..., bytes]:
    """The pack of `rows` messages of one splice format: compiled once, as a storm makes
    splices anew for each clock, all of one format (runs come in a few lengths)."""
    return struct.Struct("<" + fmt * rows).pack


class Splice:
    """Messages made from one base that differ from it in a few places only (a storm's exit
    events: seq and pid), a whole run of them in a single `struct.pack` into one bytes
    object (`MessageRun`): the format is, once per message, the base's bytes between the
    places as `s` items and the places' own codecs.

    `run(*columns)`: one message per row, where columns[i] holds argument i's values (the
    places take their arguments as `ReplyPatch.splicer` was told). Columns of unequal
    length are a ValueError, a value that does not fit its field a `struct.error`."""

    __slots__ = ("length", "_pattern", "_slots", "_format", "_arguments")

    def __init__(self, base: bytes, places: Sequence[tuple[int, struct.Struct, int]],
                 arguments: int) -> None:
        self.length = len(base)
        pattern: list[Any] = []
        fmt: list[str] = []
        slots: list[tuple[int, int]] = []
        at = 0
        for offset, codec, argument in places:  # in offset order
            if offset < at:
                raise ValueError("two places of a splice overlap")
            fmt.append(f"{offset - at}s{codec.format.lstrip('<')}")
            pattern.append(base[at:offset])
            slots.append((len(pattern), argument))
            pattern.append(0)
            at = offset + codec.size
        fmt.append(f"{len(base) - at}s")
        pattern.append(base[at:])
        self._pattern = pattern
        self._slots = tuple(slots)
        self._format = "".join(fmt)
        self._arguments = arguments

    def run(self, *columns: Sequence[Any]) -> MessageRun:
        if len(columns) != self._arguments:
            raise TypeError(f"{self._arguments} columns expected, not {len(columns)}")
        rows = len(columns[0]) if columns else 1
        if not rows:
            return MessageRun(b"", self.length)
        width = len(self._pattern)
        args = self._pattern * rows
        for slot, argument in self._slots:
            args[slot::width] = columns[argument]  # (a column of another length: ValueError)
        return MessageRun(_run_packer(self._format, rows)(*args), self.length)


def decode_taskstats_new(message: GenlMessage) -> list[Record]:
    """The records of a NEW message, in order. NULL attributes are skipped; a nest without a
    STATS attribute, or an id shorter than 4 bytes, is EINVAL."""
    records: list[Record] = []
    for nest in iter_attrs(message.attrs):
        if nest.type == TaskstatsType.NULL:
            continue
        if nest.type not in _ID_TYPE:
            raise WireError(errno.EINVAL, f"unexpected attribute {nest.type} in a taskstats "
                            "message (AGGR_PID 4 or AGGR_TGID 5 expected)")
        aggr = TaskstatsType(nest.type)
        ident: int | None = None
        stats: bytes | None = None
        padded = False
        for attr in iter_attrs(nest.payload):
            if attr.type == TaskstatsType.NULL:
                padded = True
            elif attr.type == _ID_TYPE[aggr] and len(attr.payload) >= 4:
                ident = get_u32(attr)
            elif attr.type == TaskstatsType.STATS:
                stats = attr.payload
        if ident is None or stats is None:
            raise WireError(errno.EINVAL, f"{aggr.name} nest lacks its id or its STATS")
        records.append(Record(aggr, ident, stats, padded))
    return records


def encode_cgroupstats_new(family_id: int, values: Mapping[str, int], *, seq: int, portid: int,
                           flags: int = 0, version: int = TASKSTATS_GENL_VERSION) -> bytes:
    """A CGROUPSTATS_CMD_NEW reply holding one struct cgroupstats."""
    attrs = encode_attr(CGROUPSTATS_TYPE_CGROUP_STATS, CGROUPSTATS_CODEC.build(values))
    return encode_genl(family_id, flags, seq, portid, TaskstatsCmd.CGROUPSTATS_NEW, version,
                       attrs)


def decode_cgroupstats_new(message: GenlMessage) -> dict[str, int]:
    """The struct cgroupstats of a CGROUPSTATS_CMD_NEW; EINVAL when it is missing or short."""
    for attr in iter_attrs(message.attrs):
        if attr.type == CGROUPSTATS_TYPE_CGROUP_STATS:
            if len(attr.payload) < CGROUPSTATS_CODEC.size:
                raise WireError(errno.EINVAL, f"cgroupstats of {len(attr.payload)} bytes, "
                                f"{CGROUPSTATS_CODEC.size} expected")
            return CGROUPSTATS_CODEC.parse(attr.payload)
    raise WireError(errno.EINVAL, "CGROUPSTATS_CMD_NEW without CGROUPSTATS_TYPE_CGROUP_STATS")

