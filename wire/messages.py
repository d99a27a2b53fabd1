"""Any message of the protocol as one typed value, and back to its bytes.

`decode_message` is the entry point for code that receives arbitrary traffic (the client, the
golden tests, tools that print what they see): it recognises netlink's own messages, nlctrl
and the TASKSTATS family and returns one of the dataclasses below, each of which encodes back
to the bytes it came from when those bytes were well formed (the kernel's always are).
It raises nothing but `WireError`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from .acks import ErrorMessage, decode_error, encode_done
from .constants import GENL_ID_CTRL, CtrlCmd, MsgType, TaskstatsCmd
from .controller import (
    Family,
    GetFamily,
    decode_getfamily,
    decode_newfamily,
    encode_getfamily,
    family_attrs,
)
from .errors import WireError
from .netlink import Header, Message, decode_genl, encode_genl
from .taskstats import (
    Record,
    TaskstatsRequest,
    decode_cgroupstats_get,
    decode_cgroupstats_new,
    decode_taskstats_get,
    decode_taskstats_new,
    encode_cgroupstats_get,
    encode_cgroupstats_new,
    encode_record,
    encode_taskstats_get,
)


@dataclass(frozen=True)
class Done:
    header: Header

    def encode(self) -> bytes:
        return encode_done(self.header.seq, self.header.pid)


@dataclass(frozen=True)
class FamilyReply:
    """CTRL_CMD_NEWFAMILY."""

    header: Header
    version: int
    family: Family

    def encode(self) -> bytes:
        h = self.header
        return encode_genl(h.type, h.flags, h.seq, h.pid, CtrlCmd.NEWFAMILY, self.version,
                           family_attrs(self.family))


@dataclass(frozen=True)
class FamilyRequest:
    """CTRL_CMD_GETFAMILY (a lookup, or a dump when the flags say so)."""

    header: Header
    version: int
    lookup: GetFamily

    def encode(self) -> bytes:
        h = self.header
        return encode_getfamily(name=self.lookup.name, family_id=self.lookup.id, seq=h.seq,
                                pid=h.pid, flags=h.flags, version=self.version)


@dataclass(frozen=True)
class TaskstatsReply:
    """TASKSTATS_CMD_NEW: a GET reply or an exit event."""

    header: Header
    version: int
    records: tuple[Record, ...]

    def encode(self) -> bytes:
        h = self.header
        body = b""
        for r in self.records:
            body += encode_record(r.aggr, r.id, r.stats, align64=r.padded,
                                  offset=20 + len(body))
        return encode_genl(h.type, h.flags, h.seq, h.pid, TaskstatsCmd.NEW, self.version, body)


@dataclass(frozen=True)
class TaskstatsGet:
    header: Header
    version: int
    request: TaskstatsRequest

    def encode(self) -> bytes:
        h, r = self.header, self.request
        return encode_taskstats_get(h.type, pid=r.pid, tgid=r.tgid, register=r.register,
                                    deregister=r.deregister, seq=h.seq, portid=h.pid,
                                    flags=h.flags, version=self.version)


@dataclass(frozen=True)
class CgroupstatsGet:
    header: Header
    version: int
    fd: int | None

    def encode(self) -> bytes:
        h = self.header
        return encode_cgroupstats_get(h.type, self.fd, seq=h.seq, portid=h.pid, flags=h.flags,
                                      version=self.version)


@dataclass(frozen=True)
class CgroupstatsReply:
    header: Header
    version: int
    stats: dict[str, int]

    def encode(self) -> bytes:
        h = self.header
        return encode_cgroupstats_new(h.type, self.stats, seq=h.seq, portid=h.pid, flags=h.flags,
                                      version=self.version)


Decoded = (Done | ErrorMessage | FamilyReply | FamilyRequest | TaskstatsReply | TaskstatsGet
           | CgroupstatsGet | CgroupstatsReply)


def decode_message(message: Message, taskstats_family: int) -> Decoded:
    """The typed value of one message. `taskstats_family` is the TASKSTATS family id in use.

    Raises `WireError` (EINVAL for malformed bytes, EOPNOTSUPP for a command this module does
    not know, ENOENT for a message type that is neither netlink's, nlctrl nor TASKSTATS)."""
    h = message.header
    if h.type == MsgType.ERROR:
        return decode_error(message)
    if h.type == MsgType.DONE:
        return Done(h)
    if h.type not in (GENL_ID_CTRL, taskstats_family):
        raise WireError(errno.ENOENT, f"message type {h.type:#x} is no family tsemu knows")
    genl = decode_genl(message)
    if h.type == GENL_ID_CTRL:
        if genl.cmd == CtrlCmd.NEWFAMILY:
            return FamilyReply(h, genl.version, decode_newfamily(genl))
        if genl.cmd == CtrlCmd.GETFAMILY:
            return FamilyRequest(h, genl.version, decode_getfamily(genl))
    else:
        if genl.cmd == TaskstatsCmd.NEW:
            return TaskstatsReply(h, genl.version, tuple(decode_taskstats_new(genl)))
        if genl.cmd == TaskstatsCmd.GET:
            return TaskstatsGet(h, genl.version, decode_taskstats_get(genl))
        if genl.cmd == TaskstatsCmd.CGROUPSTATS_GET:
            return CgroupstatsGet(h, genl.version, decode_cgroupstats_get(genl))
        if genl.cmd == TaskstatsCmd.CGROUPSTATS_NEW:
            return CgroupstatsReply(h, genl.version, decode_cgroupstats_new(genl))
    raise WireError(errno.EOPNOTSUPP, f"command {genl.cmd} of family {h.type:#x} is unknown")

