"""Anonymizing a recording: the same name, command line or user id always becomes the same
replacement, wherever it appears.

Why consistently: a replay must stay a faithful picture of the machine, whose processes are
told apart and grouped by name and user (three `nginx` workers of one user stay three
`proc-3` of one user). The replacements: a comm becomes `proc-N` (N in order of first
appearance), a command line the replacement of its first argument's comm followed by
`arg-1`, `arg-2`... (the number of arguments is kept), a uid or gid other than 0 becomes
`10000 + N`; root (0) stays root, which says nothing about anyone and keeps
kernel threads and daemons recognisable as such.

The recorded exit events and sampled records are bytes: `message` rewrites ac_comm, ac_uid
and ac_gid in every record of a TASKSTATS_CMD_NEW message in place, at the offsets the
struct's layout gives, so nothing else in the bytes changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from tsemu.wire.attributes import NLATTR_CODEC
from tsemu.wire.constants import GENL_HDRLEN, NLA_HDRLEN, NLMSG_HDRLEN, TaskstatsCmd, TaskstatsType
from tsemu.wire.netlink import align4
from tsemu.wire.taskstats_struct import layout_for

_NESTS = (TaskstatsType.AGGR_PID, TaskstatsType.AGGR_TGID)
_TYPE_MASK = 0x3FFF


class Anonymizer:
    """One recording's replacements (see the module docstring)."""

    def __init__(self) -> None:
        self.comms: dict[bytes, bytes] = {}
        self.ids: dict[int, int] = {}

    def comm(self, comm: bytes) -> bytes:
        """The replacement of a comm (an empty comm stays empty: a TGID record's)."""
        if not comm:
            return comm
        found = self.comms.get(comm)
        if found is None:
            found = self.comms[comm] = f"proc-{len(self.comms) + 1}".encode()
        return found

    def uid(self, uid: int) -> int:
        """The replacement of a uid or gid (0 stays 0)."""
        if uid == 0:
            return 0
        found = self.ids.get(uid)
        if found is None:
            found = self.ids[uid] = 10000 + len(self.ids) + 1
        return found

    def cmdline(self, args: Sequence[bytes], comm: bytes) -> list[bytes]:
        """A command line's replacement: the comm's replacement, then numbered arguments."""
        if not args:
            return []
        return [self.comm(comm), *(f"arg-{i}".encode() for i in range(1, len(args)))]

    def stats(self, stats: bytes) -> bytes:
        """A struct taskstats with ac_comm, ac_uid and ac_gid replaced."""
        layout = layout_for(stats)
        buf = bytearray(stats)
        codec = layout.codec
        at, field = codec.field("ac_comm")
        comm = bytes(stats[at:at + field.size]).split(b"\0", 1)[0]
        field.pack_into(buf, at, self.comm(comm))
        for name in ("ac_uid", "ac_gid"):
            at, field = codec.field(name)
            field.pack_into(buf, at, self.uid(field.unpack_from(stats, at)[0]))
        return bytes(buf)

    def message(self, data: bytes) -> bytes:
        """A datagram with every struct taskstats of its TASKSTATS_CMD_NEW messages
        anonymized in place; any other message is left as it is."""
        buf = bytearray(data)
        pos = 0
        while len(data) - pos >= NLMSG_HDRLEN + GENL_HDRLEN:
            length = int.from_bytes(data[pos:pos + 4], "little")
            if length < NLMSG_HDRLEN or pos + length > len(data):
                break
            if data[pos + NLMSG_HDRLEN] == TaskstatsCmd.NEW and \
                    int.from_bytes(data[pos + 4:pos + 6], "little") >= 0x10:
                self._nests(data, buf, pos + NLMSG_HDRLEN + GENL_HDRLEN, pos + length)
            pos += align4(length)
        return bytes(buf)

    def _nests(self, data: bytes, buf: bytearray, start: int, end: int) -> None:
        for at, kind, payload_end in _attrs(data, start, end):
            if kind in _NESTS:
                for inner, inner_kind, inner_end in _attrs(data, at, payload_end):
                    if inner_kind == TaskstatsType.STATS:
                        buf[inner:inner_end] = self.stats(bytes(data[inner:inner_end]))


def _attrs(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(payload start, type without flag bits, payload end) of each attribute in
    data[start:end]."""
    out = []
    pos = start
    while end - pos >= NLA_HDRLEN:
        length, kind = NLATTR_CODEC.unpack_from(data, pos)
        if length < NLA_HDRLEN or pos + length > end:
            break
        out.append((pos + NLA_HDRLEN, kind & _TYPE_MASK, pos + length))
        pos += align4(length)
    return out
