"""A structure-aware differential fuzz of netlink datagrams: the host kernel against tsemu.

What lives here: a corpus of valid requests (`corpus`), mutations that know the structure of
what they change (`mutate`: netlink and genetlink headers, attributes and their flag bits,
payloads, padding, truncation, several messages per datagram, socket options), the two sides
that answer the same bytes (`HostSide`: an AF_NETLINK socket on the running kernel;
`TsemuSide`: a tsemu server started in this process, on the host's profile), and the
comparison of their answers (`compare`), with the differences that must remain taken from
`known_differences.KNOWN`. What must not: any rule of the kernel (those live in `wire/` and
`emulator/model/`, and are what this module checks).

Theory of operation:
- each case is `random.Random(f"{seed}:{index}")` choosing a corpus entry and 1 to 4
  mutations, so a case is reproducible from (seed, index) alone (`make_case`);
- the same datagram goes to a fresh socket on each side, with the same NETLINK_CAP_ACK and
  NETLINK_EXT_ACK; on tsemu, CGROUPSTATS descriptors travel as the shim sends them
  (`shim_descriptors`), on the host the kernel reads them from this process;
- the host kernel answers a datagram inside its send() (genetlink is synchronous), so its
  answers are drained without waiting, except for the rest of a dump; tsemu's answers are
  read up to a fence (a GETFAMILY sent after the case);
- message types that name a family the host has but tsemu does not emulate are replaced by
  an unregistered id before anything is sent: fuzzed bytes never reach ethtool or mptcp_pm;
- answers are normalised where the machines must differ: port ids, exit events the host
  sends to listeners a mutated REGISTER made, the contents of struct taskstats and struct
  cgroupstats (two machines, two sets of counters), and dump entries for families tsemu does
  not emulate;
- the answers are grouped by the request they answer (in order, by seq), and each group that
  differs is either explained by a row of `KNOWN` or counted as an undocumented mismatch,
  classed by request kind and what each side said.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import fcntl
import os
import random
import select
import socket
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tsemu.wire import Flag, decode_genl, decode_newfamily, split_datagram
from tsemu.wire.constants import (
    CGROUPSTATS_CMD_ATTR_FD,
    GENL_ID_CTRL,
    NLM_F_ACK_TLVS,
    SOL_NETLINK,
    CtrlAttr,
    CtrlCmd,
    MsgType,
    SockOpt,
    TaskstatsCmd,
    TaskstatsCmdAttr,
)
from tsemu.wire.netlink import Message, pack_genl_header, pack_header

NETLINK_GENERIC = 16
#: The families tsemu emulates, by name.
EMULATED = frozenset({"nlctrl", "TASKSTATS"})
#: seq of the requests the harness itself sends (warm-up, fence, clean-up).
WARM_SEQ, FENCE_SEQ, CLEANUP_SEQ = 0x7A7A0001, 0x7A7A0002, 0x7A7A0003
#: ids tried, in order, as "a family nobody registered"
_UNREGISTERED_CANDIDATES = (0x7FF0, 0x7FF1, 0xFFF0, 0x3FF0)

# ---------------------------------------------------------------------------------------
# The machine: what both sides share


@dataclass(frozen=True)
class Machine:
    """The host facts a case depends on, found once (`Machine.probe`)."""

    family: int                   #: TASKSTATS' family id on the host (tsemu gets the same)
    nr_cpus: int                  #: possible CPUs
    nr_cpus_config: int           #: CONFIG_NR_CPUS
    pid: int                      #: a task on both sides: this process (spawned in tsemu too)
    absent_pid: int               #: a pid on neither side
    foreign: frozenset[int]       #: ids of host families tsemu does not emulate
    unregistered: int             #: a family id nobody registered
    cgroup_dir: str | None        #: a cgroup v1 hierarchy's root, if the host has one
    cgroup_fd: int                #: a descriptor of that directory (or of /)
    file_fd: int                  #: a descriptor of a regular file
    closed_fd: int                #: a descriptor number nothing has open

    @property
    def tsemu_pids(self) -> frozenset[int]:
        """The pids (and tgids) tsemu's table holds."""
        return frozenset({1, self.pid})

    @classmethod
    def probe(cls, family: int, nr_cpus: int, nr_cpus_config: int,
              families: Sequence[int]) -> Machine:
        foreign = frozenset(f for f in families if f not in (GENL_ID_CTRL, family))
        unregistered = next(i for i in _UNREGISTERED_CANDIDATES if i not in families)
        cgroup_dir = _cgroup_v1_root()
        cgroup_fd = os.open(cgroup_dir or "/", os.O_RDONLY | os.O_DIRECTORY)
        file_fd, _ = tempfile.mkstemp(prefix="tsemu-fuzz-")
        os.unlink(_)
        closed_fd = next(n for n in range(999, 2000) if not _is_open(n))
        return cls(family, nr_cpus, nr_cpus_config, os.getpid(), 0x3FFFFFF0, foreign,
                   unregistered, cgroup_dir, cgroup_fd, file_fd, closed_fd)

    def close(self) -> None:
        for fd in (self.cgroup_fd, self.file_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _cgroup_v1_root() -> str | None:
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup":
                    return parts[1]
    except OSError:
        pass
    return None


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------
# Cases: datagrams as structures


@dataclass
class FAttr:
    """An attribute as sent: `type` keeps the NESTED/BYTEORDER bits; `length` overrides
    nla_len and `pad` the bytes after the payload (None: the honest values)."""

    type: int
    payload: bytes
    length: int | None = None
    pad: bytes | None = None

    def encode(self) -> bytes:
        length = 4 + len(self.payload) if self.length is None else self.length
        pad = b"\0" * (-(4 + len(self.payload)) % 4) if self.pad is None else self.pad
        return struct.pack("<HH", length & 0xFFFF, self.type & 0xFFFF) + self.payload + pad


@dataclass
class FMsg:
    """A message as sent: `genl` is (cmd, version, reserved) or None for none; `tail` are
    bytes after the attributes inside nlmsg_len; `length` and `pad` override nlmsg_len and
    the padding after the message."""

    type: int
    flags: int
    seq: int
    genl: tuple[int, int, int] | None
    attrs: list[FAttr] = field(default_factory=list)
    pid: int = 0
    tail: bytes = b""
    length: int | None = None
    pad: bytes | None = None

    def encode(self) -> bytes:
        body = pack_genl_header(*self.genl) if self.genl is not None else b""
        body += b"".join(a.encode() for a in self.attrs) + self.tail
        length = 16 + len(body) if self.length is None else self.length
        pad = b"\0" * (-(16 + len(body)) % 4) if self.pad is None else self.pad
        return pack_header(length & 0xFFFFFFFF, self.type & 0xFFFF, self.flags & 0xFFFF,
                           self.seq & 0xFFFFFFFF, self.pid & 0xFFFFFFFF) + body + pad


@dataclass
class Case:
    """One datagram and the socket options it is sent with."""

    seed: str
    msgs: list[FMsg]
    cap_ack: bool = False
    ext_ack: bool = False
    cut: int | None = None
    extra: bytes = b""
    mutations: list[str] = field(default_factory=list)
    label: str = ""

    def datagram(self) -> bytes:
        data = b"".join(m.encode() for m in self.msgs) + self.extra
        return data[: self.cut] if self.cut is not None else data


REQ = int(Flag.REQUEST)
ACK = int(Flag.REQUEST | Flag.ACK)
DUMP = int(Flag.REQUEST | Flag.DUMP)


def _u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


def _u16(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


def _get(m: Machine, seq: int, attrs: list[FAttr], flags: int = REQ) -> FMsg:
    return FMsg(m.family, flags, seq, (TaskstatsCmd.GET, 1, 0), attrs)


def _ctrl(seq: int, attrs: list[FAttr], flags: int = REQ) -> FMsg:
    return FMsg(GENL_ID_CTRL, flags, seq, (CtrlCmd.GETFAMILY, 1, 0), attrs)


def _cgroup(m: Machine, seq: int, fd: int, flags: int = REQ) -> FMsg:
    return FMsg(m.family, flags, seq, (TaskstatsCmd.CGROUPSTATS_GET, 1, 0),
                [FAttr(CGROUPSTATS_CMD_ATTR_FD, _u32(fd))])


def corpus(m: Machine) -> list[Case]:
    """Valid requests, each a starting point for mutations."""
    pid, tgid = TaskstatsCmdAttr.PID, TaskstatsCmdAttr.TGID
    reg, dereg = TaskstatsCmdAttr.REGISTER_CPUMASK, TaskstatsCmdAttr.DEREGISTER_CPUMASK
    name, fid = CtrlAttr.FAMILY_NAME, CtrlAttr.FAMILY_ID
    last = m.nr_cpus - 1
    entries: dict[str, list[FMsg]] = {
        "getfamily name TASKSTATS": [_ctrl(1, [FAttr(name, b"TASKSTATS\0")])],
        "getfamily name nlctrl": [_ctrl(1, [FAttr(name, b"nlctrl\0")], ACK)],
        "getfamily name unknown": [_ctrl(1, [FAttr(name, b"NOPE\0")])],
        "getfamily id": [_ctrl(2, [FAttr(fid, _u16(m.family))])],
        "getfamily id nlctrl ack": [_ctrl(2, [FAttr(fid, _u16(GENL_ID_CTRL))], ACK)],
        "getfamily name and id": [_ctrl(2, [FAttr(fid, _u16(GENL_ID_CTRL)),
                                            FAttr(name, b"TASKSTATS\0")])],
        "getfamily dump": [_ctrl(3, [], DUMP)],
        "getfamily dump ack": [_ctrl(3, [], DUMP | Flag.ACK)],
        "get pid": [_get(m, 4, [FAttr(pid, _u32(m.pid))])],
        "get pid ack": [_get(m, 4, [FAttr(pid, _u32(m.pid))], ACK)],
        "get tgid": [_get(m, 5, [FAttr(tgid, _u32(m.pid))])],
        "get absent pid": [_get(m, 5, [FAttr(pid, _u32(m.absent_pid))], ACK)],
        "get absent tgid": [_get(m, 5, [FAttr(tgid, _u32(m.absent_pid))])],
        "get pid and tgid": [_get(m, 6, [FAttr(pid, _u32(m.absent_pid)),
                                         FAttr(tgid, _u32(m.pid))])],
        "register 0-N": [_get(m, 7, [FAttr(reg, f"0-{last}\0".encode())], ACK)],
        "register 0": [_get(m, 7, [FAttr(reg, b"0\0")], ACK)],
        "register last": [_get(m, 7, [FAttr(reg, f"{last}\0".encode())], ACK)],
        "register all": [_get(m, 7, [FAttr(reg, b"all\0")], ACK)],
        "register group": [_get(m, 7, [FAttr(reg, f"0-{last}:1/2\0".encode())], ACK)],
        "register no NUL": [_get(m, 7, [FAttr(reg, b"0,1")], ACK)],
        "deregister": [_get(m, 8, [FAttr(dereg, f"0-{last}\0".encode())], ACK)],
        "register and deregister": [_get(m, 8, [FAttr(reg, b"0\0"),
                                                FAttr(dereg, b"0\0")], ACK)],
        "cgroupstats dir": [_cgroup(m, 9, m.cgroup_fd, ACK)],
        "cgroupstats file": [_cgroup(m, 9, m.file_fd)],
        "cgroupstats closed fd": [_cgroup(m, 9, m.closed_fd, ACK)],
        "cgroupstats no fd": [FMsg(m.family, REQ, 9,
                                   (TaskstatsCmd.CGROUPSTATS_GET, 1, 0), [])],
        "several messages": [_ctrl(10, [FAttr(name, b"TASKSTATS\0")]),
                             _get(m, 11, [FAttr(pid, _u32(m.pid))], ACK),
                             _get(m, 12, [FAttr(reg, b"0\0")], ACK)],
        "register then get": [_get(m, 13, [FAttr(reg, b"0\0")], ACK),
                              _get(m, 14, [FAttr(tgid, _u32(m.absent_pid))], ACK)],
        "two cgroupstats": [_cgroup(m, 15, m.closed_fd, ACK), _cgroup(m, 16, m.file_fd, ACK)],
    }
    cases = [Case(seed, msgs) for seed, msgs in entries.items()]
    # The socket options, on a few of them.
    for seed in ("get absent pid", "register 0-N", "getfamily name unknown", "cgroupstats file"):
        msgs = entries[seed]
        cases.append(Case(seed + " [cap_ack]", copy.deepcopy(msgs), cap_ack=True))
        cases.append(Case(seed + " [ext_ack]", copy.deepcopy(msgs), ext_ack=True))
        cases.append(Case(seed + " [both]", copy.deepcopy(msgs), cap_ack=True, ext_ack=True))
    return cases


# ---------------------------------------------------------------------------------------
# Mutations

_FLAG_BITS = (0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x100, 0x200, 0x400, 0x800, 0x8000)
_CMDS = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 99, 255)
_CPULIST_TOKENS = ("0", "1", "2", "3", "N", "all", "ALL", "-", ",", ":", "/", " ", "\n",
                   "\t", "\xa0", "4294967295", "4294967296", "255", "256", "0-1", "1-0",
                   ":1/2", ":0/0", "x", "\0", "00", "65535")
_NAMES = (b"TASKSTATS", b"nlctrl", b"NOPE", b"TASKSTATS\0xxxxxx", b"A" * 15, b"A" * 16,
          b"nlctrl\0\0\0\0\0\0\0\0\0\0", b"", b"taskstats", b"TASKSTATS" * 2)


def _u32_values(m: Machine) -> tuple[int, ...]:
    return (0, 1, m.pid, m.absent_pid, 0xFFFFFFFF, 0x7FFFFFFF, 0x400000, m.cgroup_fd,
            m.file_fd, m.closed_fd, 3)


Mutator = Callable[[random.Random, Case, Machine], None]


def _msg(rng: random.Random, case: Case) -> FMsg:
    return rng.choice(case.msgs)


def _attr(rng: random.Random, case: Case) -> tuple[FMsg, FAttr | None]:
    msg = _msg(rng, case)
    return msg, (rng.choice(msg.attrs) if msg.attrs else None)


def _natural_len(msg: FMsg) -> int:
    return len(dataclasses.replace(msg, length=None, pad=b"").encode())


def m_hdr_len(rng: random.Random, case: Case, m: Machine) -> None:
    msg = _msg(rng, case)
    real = _natural_len(msg)
    msg.length = rng.choice([real + rng.randint(-8, 8), real - 1, real + 1, 0, 15, 16, 17,
                             19, 20, rng.randint(0, 200), 0xFFFFFFFF, real + 4])


def m_hdr_type(rng: random.Random, case: Case, m: Machine) -> None:
    _msg(rng, case).type = rng.choice([GENL_ID_CTRL, m.family, 0, 1, 2, 3, 4, 0xF, 0x11,
                                       m.unregistered, 0xFFFF, rng.randint(0, 0xFFFF)])


def m_hdr_flags(rng: random.Random, case: Case, m: Machine) -> None:
    msg = _msg(rng, case)
    how = rng.randrange(5)
    if how == 0:
        msg.flags ^= rng.choice(_FLAG_BITS)
    elif how == 1:
        msg.flags = rng.randint(0, 0xFFFF)
    elif how == 2:
        msg.flags |= int(Flag.DUMP)
    elif how == 3:
        msg.flags ^= int(Flag.ACK)
    else:
        msg.flags = rng.choice([0, REQ, ACK, DUMP, REQ | 0x8, REQ | 0x100, REQ | 0x200,
                                REQ | 0x2, ACK | 0x8])


def m_hdr_seq(rng: random.Random, case: Case, m: Machine) -> None:
    _msg(rng, case).seq = rng.choice([0, 0xFFFFFFFF, rng.getrandbits(32)])


def m_hdr_pid(rng: random.Random, case: Case, m: Machine) -> None:
    _msg(rng, case).pid = rng.choice([0, m.pid, 0xFFFFFFFF, rng.getrandbits(32)])


def m_genl_cmd(rng: random.Random, case: Case, m: Machine) -> None:
    msg = _msg(rng, case)
    cmd, version, reserved = msg.genl or (1, 1, 0)
    msg.genl = (rng.choice(_CMDS), version, reserved)


def m_genl_version(rng: random.Random, case: Case, m: Machine) -> None:
    msg = _msg(rng, case)
    cmd, version, reserved = msg.genl or (1, 1, 0)
    msg.genl = (cmd, rng.choice([0, 2, 255, rng.randint(0, 255)]), reserved)


def m_genl_reserved(rng: random.Random, case: Case, m: Machine) -> None:
    msg = _msg(rng, case)
    cmd, version, reserved = msg.genl or (1, 1, 0)
    msg.genl = (cmd, version, rng.choice([1, 0x100, 0xFFFF, rng.randint(0, 0xFFFF)]))


def m_genl_drop(rng: random.Random, case: Case, m: Machine) -> None:
    msg = _msg(rng, case)
    msg.genl, msg.attrs = None, []
    msg.tail = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 3)))


def m_attr_len(rng: random.Random, case: Case, m: Machine) -> None:
    _, attr = _attr(rng, case)
    if attr is not None:
        real = 4 + len(attr.payload)
        attr.length = rng.choice([0, 1, 3, 4, 5, real - 1, real + 1, real + 4, real + 100,
                                  0xFFFF, rng.randint(0, 64)])


def m_attr_type(rng: random.Random, case: Case, m: Machine) -> None:
    _, attr = _attr(rng, case)
    if attr is not None:
        how = rng.randrange(3)
        if how == 0:
            attr.type ^= rng.choice([0x8000, 0x4000, 0xC000])
        elif how == 1:
            attr.type = (attr.type & 0xC000) | rng.choice([0, 1, 2, 3, 4, 5, 6, 9, 0x3FFF])
        else:
            attr.type = rng.randint(0, 0xFFFF)


def m_attr_bytes(rng: random.Random, case: Case, m: Machine) -> None:
    _, attr = _attr(rng, case)
    if attr is not None and attr.payload:
        data = bytearray(attr.payload)
        i = rng.randrange(len(data))
        data[i] = rng.choice([0, 0xFF, 0x0A, 0x20, 0x2C, 0x2D, rng.randint(0, 255),
                              data[i] ^ (1 << rng.randrange(8))])
        attr.payload = bytes(data)


def m_attr_size(rng: random.Random, case: Case, m: Machine) -> None:
    _, attr = _attr(rng, case)
    if attr is not None:
        if attr.payload and rng.random() < 0.5:
            attr.payload = attr.payload[: rng.randrange(len(attr.payload))]
        else:
            attr.payload += bytes(rng.choice([0, 0, 0x30, rng.randint(0, 255)])
                                  for _ in range(rng.randint(1, 6)))


def m_attr_u32(rng: random.Random, case: Case, m: Machine) -> None:
    _, attr = _attr(rng, case)
    if attr is not None:
        value = rng.choice(_u32_values(m))
        size = rng.choice([4, 4, 4, 8, 2, 3, 5])
        attr.payload = (value & 0xFFFFFFFF).to_bytes(8, "little")[:size]


def m_attr_cpulist(rng: random.Random, case: Case, m: Machine) -> None:
    _, attr = _attr(rng, case)
    if attr is not None:
        text = "".join(rng.choice(_CPULIST_TOKENS) for _ in range(rng.randint(0, 5)))
        raw = text.encode("latin-1")
        attr.payload = raw + rng.choice([b"\0", b"\0", b"", b"\0\0", b"\0x"])


def m_attr_name(rng: random.Random, case: Case, m: Machine) -> None:
    _, attr = _attr(rng, case)
    if attr is not None:
        attr.payload = rng.choice(_NAMES) + rng.choice([b"\0", b"\0", b"", b"\0junk"])


def m_attr_dup(rng: random.Random, case: Case, m: Machine) -> None:
    msg, attr = _attr(rng, case)
    if attr is not None:
        twin = copy.deepcopy(attr)
        if rng.random() < 0.5:
            twin.payload = _u32(rng.choice(_u32_values(m)))
        msg.attrs.insert(rng.randint(0, len(msg.attrs)), twin)


def m_attr_delete(rng: random.Random, case: Case, m: Machine) -> None:
    msg, attr = _attr(rng, case)
    if attr is not None:
        msg.attrs.remove(attr)


def m_attr_insert(rng: random.Random, case: Case, m: Machine) -> None:
    msg = _msg(rng, case)
    kind = rng.choice([0, 1, 2, 3, 4, 5, 6, 0x8001, 0x4001, rng.randint(0, 0xFFFF)])
    payload = rng.choice([b"", _u32(rng.choice(_u32_values(m))), b"0\0", b"TASKSTATS\0",
                          bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 9)))])
    msg.attrs.insert(rng.randint(0, len(msg.attrs)), FAttr(kind, payload))


def m_attr_swap(rng: random.Random, case: Case, m: Machine) -> None:
    msg = _msg(rng, case)
    if len(msg.attrs) > 1:
        i, j = rng.sample(range(len(msg.attrs)), 2)
        msg.attrs[i], msg.attrs[j] = msg.attrs[j], msg.attrs[i]


def m_attr_pad(rng: random.Random, case: Case, m: Machine) -> None:
    _, attr = _attr(rng, case)
    if attr is not None:
        attr.pad = rng.choice([b"", b"\0" * 4, b"\xff" * (-(4 + len(attr.payload)) % 4),
                               b"\0" * rng.randint(0, 7)])


def m_msg_tail(rng: random.Random, case: Case, m: Machine) -> None:
    _msg(rng, case).tail = bytes(rng.choice([0, 0, 4, 8, rng.randint(0, 255)])
                                 for _ in range(rng.randint(1, 7)))


def m_msg_pad(rng: random.Random, case: Case, m: Machine) -> None:
    _msg(rng, case).pad = rng.choice([b"", b"\0" * 4, b"\0" * rng.randint(1, 7), b"\xff\xff"])


def m_msg_dup(rng: random.Random, case: Case, m: Machine) -> None:
    twin = copy.deepcopy(_msg(rng, case))
    if rng.random() < 0.5:
        twin.seq = rng.getrandbits(16)
    case.msgs.insert(rng.randint(0, len(case.msgs)), twin)


def m_msg_concat(rng: random.Random, case: Case, m: Machine) -> None:
    other = copy.deepcopy(rng.choice(corpus(m)).msgs)
    if rng.random() < 0.5:
        case.msgs.extend(other)
    else:
        case.msgs[0:0] = other


def m_msg_delete(rng: random.Random, case: Case, m: Machine) -> None:
    if len(case.msgs) > 1:
        case.msgs.remove(_msg(rng, case))


def m_cut(rng: random.Random, case: Case, m: Machine) -> None:
    size = len(case.datagram())
    case.cut = rng.choice([0, rng.randint(0, size), size - 1, size - 2, 16, 19, 20, 23])


def m_extra(rng: random.Random, case: Case, m: Machine) -> None:
    case.extra = bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 24)))


def m_sockopt(rng: random.Random, case: Case, m: Machine) -> None:
    if rng.random() < 0.5:
        case.cap_ack = not case.cap_ack
    else:
        case.ext_ack = not case.ext_ack


MUTATORS: dict[str, Mutator] = {
    "hdr.len": m_hdr_len, "hdr.type": m_hdr_type, "hdr.flags": m_hdr_flags,
    "hdr.seq": m_hdr_seq, "hdr.pid": m_hdr_pid,
    "genl.cmd": m_genl_cmd, "genl.version": m_genl_version, "genl.reserved": m_genl_reserved,
    "genl.drop": m_genl_drop,
    "attr.len": m_attr_len, "attr.type": m_attr_type, "attr.bytes": m_attr_bytes,
    "attr.size": m_attr_size, "attr.u32": m_attr_u32, "attr.cpulist": m_attr_cpulist,
    "attr.name": m_attr_name, "attr.dup": m_attr_dup, "attr.delete": m_attr_delete,
    "attr.insert": m_attr_insert, "attr.swap": m_attr_swap, "attr.pad": m_attr_pad,
    "msg.tail": m_msg_tail, "msg.pad": m_msg_pad, "msg.dup": m_msg_dup,
    "msg.concat": m_msg_concat, "msg.delete": m_msg_delete,
    "dgram.cut": m_cut, "dgram.extra": m_extra, "sockopt": m_sockopt,
}
#: Relative weights: attributes and headers most, whole-datagram damage least.
_WEIGHTS = {name: (3 if name.startswith("attr.") else 1 if name.startswith("dgram.") else 2)
            for name in MUTATORS}


def make_case(seed: int | str, index: int, m: Machine) -> Case:
    """Case `index` of run `seed`: a corpus entry (each in turn, unmutated, first), then
    1 to 4 mutations chosen by `random.Random(f"{seed}:{index}")`."""
    entries = corpus(m)
    if index < len(entries):
        return entries[index]
    rng = random.Random(f"{seed}:{index}")
    case = copy.deepcopy(rng.choice(entries))
    names = list(MUTATORS)
    weights = [_WEIGHTS[n] for n in names]
    for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
        name = rng.choices(names, weights)[0]
        MUTATORS[name](rng, case, m)
        case.mutations.append(name)
    return case


def sanitize(datagram: bytes, m: Machine) -> bytes:
    """`datagram` with every message the kernel would hand to a family tsemu does not
    emulate retyped to an unregistered id: fuzzed bytes go to nlctrl and TASKSTATS only.
    (The walk is `split_datagram`'s: the messages the kernel processes.)"""
    out = bytearray(datagram)
    pos = 0
    while len(datagram) - pos >= 16:
        length, mtype = struct.unpack_from("<IH", datagram, pos)
        if length < 16 or length > len(datagram) - pos:
            break
        if mtype in m.foreign:
            struct.pack_into("<H", out, pos + 4, m.unregistered)
        pos += min((length + 3) & ~3, len(datagram) - pos)
    return bytes(out)


def shim_descriptors(datagram: bytes, family: int) -> list[int]:
    """The descriptors the shim sends along with `datagram` (shim/io.c `cgroupstats_fds`):
    one per CGROUPSTATS_CMD_GET request (REQUEST set, not a dump, TASKSTATS' type, command
    4) whose first FD attribute of at least 4 bytes names a descriptor open here."""
    fds: list[int] = []
    off = 0
    while off + 16 <= len(datagram) and len(fds) < 16:
        length, mtype, flags = struct.unpack_from("<IHH", datagram, off)
        if length < 16 or off + length > len(datagram):
            break
        if (mtype == family and flags & 0x1 and flags & 0x300 != 0x300 and length >= 20
                and datagram[off + 16] == TaskstatsCmd.CGROUPSTATS_GET):
            fd = -1
            pos, end = off + 20, off + length
            while pos + 4 <= end:
                alen, atype = struct.unpack_from("<HH", datagram, pos)
                if alen < 4 or pos + alen > end:
                    break
                if atype & 0x3FFF == CGROUPSTATS_CMD_ATTR_FD and alen - 4 >= 4:
                    fd = struct.unpack_from("<i", datagram, pos + 4)[0]
                    break
                pos += (alen + 3) & ~3
            if fd >= 0 and _is_open(fd):
                fds.append(fd)
        off += (length + 3) & ~3
    return fds


# ---------------------------------------------------------------------------------------
# The two sides


@dataclass(frozen=True)
class SendFailed:
    """The datagram was refused by send() itself."""

    errno: int


Answer = list[bytes | SendFailed]


def _getfamily(seq: int, name: bytes = b"nlctrl") -> bytes:
    return FMsg(GENL_ID_CTRL, REQ, seq, (CtrlCmd.GETFAMILY, 1, 0),
                [FAttr(CtrlAttr.FAMILY_NAME, name + b"\0")]).encode()


class HostSide:
    """The running kernel, a fresh AF_NETLINK socket per case."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self._cleanup = FMsg(m.family, REQ, CLEANUP_SEQ, (TaskstatsCmd.GET, 1, 0),
                             [FAttr(TaskstatsCmdAttr.DEREGISTER_CPUMASK, b"all\0")]).encode()
        self.events_ignored = 0

    def exchange(self, datagram: bytes, cap_ack: bool, ext_ack: bool) -> tuple[Answer, int]:
        """(the datagrams answering `datagram`, the socket's port id)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            sock.bind((0, 0))
            port = sock.getsockname()[0]
            # A first receive with a large buffer, as most clients make one: the kernel then
            # sizes dump skbs for it (max_recvmsg_len) and a dump comes in one datagram.
            sock.send(_getfamily(WARM_SEQ))
            sock.recv(1 << 16)
            sock.setsockopt(SOL_NETLINK, SockOpt.CAP_ACK, int(cap_ack))
            sock.setsockopt(SOL_NETLINK, SockOpt.EXT_ACK, int(ext_ack))
            try:
                sock.send(datagram)
            except OSError as exc:
                return [SendFailed(exc.errno or 0)], port
            out = self._drain(sock)
            sock.send(self._cleanup)  # no listener left behind by a mutated REGISTER
            return out, port
        finally:
            sock.close()

    def _drain(self, sock: socket.socket) -> Answer:
        out: Answer = []
        dumping: set[int] = set()
        while True:
            try:
                data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if dumping and select.select([sock], [], [], 2.0)[0]:
                    continue
                return out
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # exit events overflowed: not an answer
                    continue
                raise
            kept = []
            for msg in split_datagram(data):
                h = msg.header
                if h.pid == 0 and h.type == self.m.family and msg.raw[16:17] == b"\x02":
                    self.events_ignored += 1  # an exit event for a listener: not an answer
                    continue
                if h.flags & Flag.MULTI and h.type != MsgType.DONE:
                    dumping.add(h.seq)
                elif h.type == MsgType.DONE:
                    dumping.discard(h.seq)
                kept.append(msg.raw)
            if kept:
                out.append(data if len(kept) == len(split_datagram(data)) else b"".join(kept))


class TsemuSide:
    """A tsemu server in this process, on the host's profile (6.18, the host's TASKSTATS
    family id, CPUs and NR_CPUS), every sender an administrator."""

    def __init__(self, m: Machine, socket_path: Path) -> None:
        self.m = m
        self.socket_path = socket_path
        self.server: Any = None

    def table(self) -> Any:
        from tsemu.emulator.model.clock import VirtualClock
        from tsemu.emulator.model.profiles import PROFILES
        from tsemu.emulator.model.table import ProcessTable

        profile = dataclasses.replace(PROFILES["6.18"], nr_cpus_config=self.m.nr_cpus_config)
        table = ProcessTable(VirtualClock(), profile, self.m.nr_cpus)
        for pid in sorted(self.m.tsemu_pids):
            table.spawn(pid=pid, comm="fuzz")
        return table, profile

    async def exchange(self, datagram: bytes, cap_ack: bool,
                       ext_ack: bool) -> tuple[Answer, int]:
        from tsemu.client import Client

        async with await Client.connect(self.socket_path) as client:
            if cap_ack:
                await client.set_option(SockOpt.CAP_ACK, 1)
            if ext_ack:
                await client.set_option(SockOpt.EXT_ACK, 1)
            await client.send(datagram, shim_descriptors(datagram, self.m.family) or None)
            await client.send(_getfamily(FENCE_SEQ))
            out: Answer = []
            with trio.fail_after(10):
                while True:
                    data = await client.recv()
                    msgs = split_datagram(data)
                    if (len(msgs) == 1 and msgs[0].header.seq == FENCE_SEQ
                            and msgs[0].header.type == GENL_ID_CTRL):
                        return out, client.port
                    out.append(data)


# ---------------------------------------------------------------------------------------
# Comparison


@dataclass(frozen=True)
class Reply:
    """One answering message, normalised: `port` is "PORT" for the receiving socket's own
    port id; struct taskstats / cgroupstats payloads are zeroed in `raw`."""

    first: bool  #: first message of its datagram
    type: int
    flags: int
    seq: int
    port: int | str
    raw: bytes   #: the message's bytes after the 16-byte header

    @property
    def errno(self) -> int | None:
        if self.type != MsgType.ERROR or len(self.raw) < 4:
            return None
        return -struct.unpack_from("<i", self.raw)[0]

    @property
    def cmd(self) -> int | None:
        return self.raw[0] if self.type >= 0x10 and self.raw else None

    @property
    def family_name(self) -> str | None:
        """The family a NEWFAMILY describes."""
        if self.type != GENL_ID_CTRL or self.cmd != CtrlCmd.NEWFAMILY:
            return None
        raw = pack_header(16 + len(self.raw), self.type, self.flags, self.seq, 0) + self.raw
        return decode_newfamily(decode_genl(Message(split_datagram(raw)[0].header, raw))).name

    def summary(self) -> str:
        if isinstance(self.errno, int):
            name = "ACK" if self.errno == 0 else f"ERR {_errname(self.errno)}"
            return name + ("+tlv" if self.flags & NLM_F_ACK_TLVS else "")
        if self.type == MsgType.DONE:
            return "DONE"
        if self.type == GENL_ID_CTRL and self.cmd == CtrlCmd.NEWFAMILY:
            return f"NEWFAMILY {self.family_name}"
        if self.cmd == TaskstatsCmd.NEW:
            return "NEW"
        if self.cmd == TaskstatsCmd.CGROUPSTATS_NEW:
            return "CGROUPSTATS_NEW"
        return f"type {self.type:#x}"


def _errname(number: int) -> str:
    return "EOPNOTSUPP" if number == errno.EOPNOTSUPP else errno.errorcode.get(number, str(number))


def _zero_records(raw: bytearray, family: int) -> None:
    """Zero the struct payloads of a TASKSTATS NEW or CGROUPSTATS NEW message in place."""
    if len(raw) < 20 or struct.unpack_from("<H", raw, 4)[0] != family:
        return
    cmd = raw[16]

    def attrs(start: int, end: int) -> list[tuple[int, int, int]]:
        out, pos = [], start
        while pos + 4 <= end:
            alen, atype = struct.unpack_from("<HH", raw, pos)
            if alen < 4 or pos + alen > end:
                break
            out.append((atype & 0x3FFF, pos + 4, pos + alen))
            pos += (alen + 3) & ~3
        return out

    if cmd == TaskstatsCmd.NEW:
        for kind, start, end in attrs(20, len(raw)):
            if kind in (4, 5):
                for inner, s, e in attrs(start, end):
                    if inner == 3:
                        raw[s:e] = bytes(e - s)
    elif cmd == TaskstatsCmd.CGROUPSTATS_NEW:
        for kind, start, end in attrs(20, len(raw)):
            if kind == 1:
                raw[start:end] = bytes(end - start)


@dataclass
class Normalised:
    replies: list[Reply]
    send_failed: SendFailed | None = None
    dropped: Counter[str] = field(default_factory=Counter)


def normalise(answer: Answer, port: int, m: Machine, *, host: bool) -> Normalised:
    out = Normalised([])
    for datagram in answer:
        if isinstance(datagram, SendFailed):
            out.send_failed = datagram
            continue
        first = True
        for msg in split_datagram(datagram):
            h = msg.header
            raw = bytearray(msg.raw)
            _zero_records(raw, m.family)
            reply = Reply(first, h.type, h.flags, h.seq, "PORT" if h.pid == port else h.pid,
                          bytes(raw[16:]))
            if (host and h.flags & Flag.MULTI and reply.family_name is not None
                    and reply.family_name not in EMULATED):
                out.dropped["dump entry of a family tsemu does not emulate"] += 1
                continue
            out.replies.append(reply)
            first = False
    return out


@dataclass
class Group:
    """The answers to one request message (or, with `request` None, the answers no request
    claims), from each side."""

    request: Message | None
    host: list[Reply]
    tsemu: list[Reply]


def _owner(requests: list[Message], reply: Reply, at: int,
           answered: set[int]) -> tuple[int | None, bool]:
    """(the index of the request `reply` answers, whether it is that request's last answer)."""
    seq = reply.seq
    candidates = range(at, len(requests))
    if reply.type == MsgType.ERROR:
        # An ACK answers a request that asked for one; an error, one not answered yet.
        if reply.errno == 0:
            fits = [k for k in candidates if requests[k].header.flags & Flag.ACK]
        else:
            fits = [k for k in candidates if k not in answered]
        echo = reply.raw[4:20]
        j = next((k for k in fits if requests[k].raw[:16] == echo), None)
        if j is None:
            j = next((k for k in fits if requests[k].header.seq == seq), None)
        return j, True
    if reply.type == MsgType.DONE or reply.flags & Flag.MULTI:
        j = next((k for k in candidates if requests[k].header.seq == seq), None)
        return j, reply.type == MsgType.DONE
    j = next((k for k in candidates if requests[k].header.seq == seq and k not in answered),
             None)
    if j is not None:
        answered.add(j)
    return j, False


def group_by_request(requests: list[Message], host: list[Reply],
                     tsemu: list[Reply]) -> list[Group]:
    """Answers assigned to the requests they answer. Answers come in request order, each
    request's reply (or dump) before its NLMSG_ERROR or DONE, which ends it; an NLMSG_ERROR
    echoes its request's header. So: an error or ACK goes to the next request with the
    header it echoes, a DONE or dump entry to the next with its seq, a reply to the next with
    its seq that has no reply yet. Answers no request claims form the last group."""
    groups = [Group(r, [], []) for r in requests] + [Group(None, [], [])]
    for side, replies in (("host", host), ("tsemu", tsemu)):
        at = 0
        answered: set[int] = set()
        for reply in replies:
            j, done = _owner(requests, reply, at, answered)
            if j is None:
                getattr(groups[-1], side).append(reply)
                continue
            getattr(groups[j], side).append(reply)
            at = j + 1 if done else j
    return groups


def request_kind(request: Message | None, m: Machine) -> str:
    if request is None:
        return "unclaimed"
    h = request.header
    name = {GENL_ID_CTRL: "nlctrl", m.family: "TASKSTATS"}.get(h.type)
    if name is None:
        return "control type" if h.type < 0x10 else "unknown family"
    dump = " dump" if h.flags & Flag.DUMP == Flag.DUMP else ""
    if h.length < 20:
        return f"{name} no genl header"
    return f"{name} cmd {request.raw[16]}{dump}"


def _detail(host: list[Reply], tsemu: list[Reply]) -> str:
    for a, b in zip(host, tsemu, strict=False):
        if a == b:
            continue
        for name in ("first", "flags", "port"):
            if getattr(a, name) != getattr(b, name):
                return f"{name} differ"
        if len(a.raw) != len(b.raw):
            return f"length {16 + len(a.raw)} vs {16 + len(b.raw)}"
        return "payload differs"
    return "count differs"


def mismatch_class(group: Group, m: Machine) -> str:
    host = ", ".join(r.summary() for r in group.host) or "nothing"
    ours = ", ".join(r.summary() for r in group.tsemu) or "nothing"
    key = f"{request_kind(group.request, m)}: kernel [{host}] / tsemu [{ours}]"
    if host == ours:
        key += f" ({_detail(group.host, group.tsemu)})"
    return key


@dataclass
class Outcome:
    """One case compared: `documented` names the KNOWN rows that explained its differences,
    `undocumented` the classes of those none explains."""

    case: Case
    datagram: bytes
    documented: list[str]
    undocumented: list[str]


def compare(case: Case, datagram: bytes, host: Normalised, tsemu: Normalised,
            m: Machine) -> Outcome:
    from .known_differences import KNOWN, Context

    outcome = Outcome(case, datagram, list(host.dropped.elements()), [])
    requests = split_datagram(datagram)
    ctx = Context(case, datagram, requests, m, host.send_failed)
    if host.send_failed is not None:
        groups = [Group(None, [], tsemu.replies)]
    else:
        groups = group_by_request(requests, host.replies, tsemu.replies)
    for group in groups:
        if host.send_failed is None and group.host == group.tsemu:
            continue
        known = next((k for k in KNOWN if k.explains(group, ctx)), None)
        if known is not None:
            outcome.documented.append(known.name)
        else:
            outcome.undocumented.append(
                f"send: kernel [send failed {_errname(host.send_failed.errno)}]"
                if host.send_failed is not None else mismatch_class(group, m))
    return outcome


# ---------------------------------------------------------------------------------------
# Runs


@dataclass
class Report:
    cases: int = 0
    same: int = 0
    documented_cases: int = 0
    undocumented_cases: int = 0
    documented: Counter[str] = field(default_factory=Counter)
    undocumented: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    events_ignored: int = 0
    seconds: float = 0.0

    def add(self, outcome: Outcome, seed: int | str, index: int) -> None:
        self.cases += 1
        self.documented.update(outcome.documented)
        if outcome.undocumented:
            self.undocumented_cases += 1
            for cls in set(outcome.undocumented):
                self.undocumented[cls] += 1
                self.examples.setdefault(
                    cls, f"seed {seed} case {index} ({outcome.case.label}): "
                         f"{outcome.datagram.hex()}")
        elif outcome.documented:
            self.documented_cases += 1
        else:
            self.same += 1

    def text(self, examples: bool = True) -> str:
        lines = [f"{self.cases} cases in {self.seconds:.1f} s: {self.same} the same, "
                 f"{self.documented_cases} differing only as documented, "
                 f"{self.undocumented_cases} with undocumented differences "
                 f"({100.0 * self.undocumented_cases / max(self.cases, 1):.2f}%)"]
        if self.documented:
            lines.append("documented differences (KNOWN rows, times applied):")
            lines += [f"  {n:6d}  {name}" for name, n in self.documented.most_common()]
        if self.undocumented:
            lines.append("undocumented mismatch classes (cases):")
            for cls, n in self.undocumented.most_common():
                lines.append(f"  {n:6d}  {cls}")
                if examples:
                    lines.append(f"          e.g. {self.examples[cls]}")
        if self.events_ignored:
            lines.append(f"exit events from the host ignored: {self.events_ignored}")
        return "\n".join(lines)


def host_machine() -> tuple[Machine, Callable[[], None]]:
    """The host's Machine (raises OSError where there is no taskstats to talk to)."""
    from .hostkernel import HostNetlink, host_cpu_counts

    host = HostNetlink()
    try:
        raw = host.ask(FMsg(GENL_ID_CTRL, DUMP, 1, (CtrlCmd.GETFAMILY, 1, 0)).encode(), 0.05)
        families = [decode_newfamily(decode_genl(msg)).id
                    for d in raw for msg in split_datagram(d) if msg.header.type == GENL_ID_CTRL]
        nr_cpus, nr_config = host_cpu_counts()
        m = Machine.probe(host.family, nr_cpus, nr_config, families)
    finally:
        host.close()
    return m, m.close


async def fuzz(seeds: Sequence[int | str], cases: int, *, m: Machine | None = None,
               progress: Callable[[str], None] | None = None) -> Report:
    """Run `cases` cases for each seed against the host kernel and an in-process tsemu."""
    from tsemu.emulator.model.families import FamilyTable
    from tsemu.emulator.shell.permissions import AdminPolicy
    from tsemu.emulator.shell.server import running_server

    close: Callable[[], None] = lambda: None  # noqa: E731
    if m is None:
        m, close = host_machine()
    report = Report()
    started = time.perf_counter()
    directory = Path(tempfile.mkdtemp(prefix="tsfz", dir="/tmp"))
    try:
        side = TsemuSide(m, directory / "genl.sock")
        table, profile = side.table()
        roots = (m.cgroup_dir,) if m.cgroup_dir else ("/sys/fs/cgroup",)
        async with running_server(side.socket_path, table, profile=profile, nr_cpus=m.nr_cpus,
                                  families=FamilyTable.default(m.family),
                                  admin=AdminPolicy("all"), cgroup_roots=roots):
            host = HostSide(m)
            for seed in seeds:
                for index in range(cases):
                    case = make_case(seed, index, m)
                    case.label = case.seed + (f" + {', '.join(case.mutations)}"
                                              if case.mutations else "")
                    datagram = sanitize(case.datagram(), m)
                    host_answer, host_port = host.exchange(datagram, case.cap_ack, case.ext_ack)
                    ours, our_port = await side.exchange(datagram, case.cap_ack, case.ext_ack)
                    outcome = compare(case, datagram,
                                      normalise(host_answer, host_port, m, host=True),
                                      normalise(ours, our_port, m, host=False), m)
                    report.add(outcome, seed, index)
                if progress is not None:
                    progress(f"seed {seed}: {report.cases} cases so far, "
                             f"{report.undocumented_cases} with undocumented differences")
            report.events_ignored = host.events_ignored
    finally:
        close()
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report
