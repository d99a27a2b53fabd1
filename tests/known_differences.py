"""The differences between tsemu and the host kernel that remain, each named once, with why.

The differential fuzz (`tests/fuzzing.py`) reads this table: a group of answers that differs
between the two sides counts as documented only when a row below explains it; anything else
is an undocumented mismatch, and the fuzz test asserts there are none. A row says what
differs, why it must (or where the limit lives, when it is not the kernel model's to fix),
and holds the predicate that recognises it. Keep the predicates narrow: a row must not hide
a difference it does not name.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tsemu.wire.constants import GENL_ID_CTRL, CtrlCmd, Flag, TaskstatsCmd
from tsemu.wire.netlink import Message

if TYPE_CHECKING:
    from .fuzzing import Case, Group, Machine, Reply, SendFailed


@dataclass(frozen=True)
class Context:
    """What a row may look at besides the group: the case, the datagram as sent, its
    messages as the kernel cuts them, the machine, and a failed send()."""

    case: Case
    datagram: bytes
    requests: list[Message]
    machine: Machine
    send_failed: SendFailed | None


@dataclass(frozen=True)
class Known:
    name: str
    reason: str
    explains: Callable[[Group, Context], bool]


def _errnos(replies: list[Reply]) -> list[int | None]:
    return [r.errno for r in replies]


def _is_cmd(request: Message | None, family: int, cmd: int) -> bool:
    return (request is not None and request.header.type == family
            and request.header.length >= 20 and request.raw[16] == cmd)


def _empty_datagram(group: Group, ctx: Context) -> bool:
    return (ctx.send_failed is not None and ctx.send_failed.errno == errno.ENODATA
            and ctx.datagram == b"" and not group.tsemu)


def _foreign_family(group: Group, ctx: Context) -> bool:
    if not _is_cmd(group.request, GENL_ID_CTRL, CtrlCmd.GETFAMILY) or not group.host:
        return False
    name = group.host[0].family_name
    return (name is not None and name not in ("nlctrl", "TASKSTATS")
            and all(r.errno == 0 for r in group.host[1:])
            and _errnos(group.tsemu) == [errno.ENOENT])


def _getpolicy(group: Group, ctx: Context) -> bool:
    request = group.request
    return (_is_cmd(request, GENL_ID_CTRL, CtrlCmd.GETPOLICY) and request is not None
            and request.header.flags & Flag.DUMP == Flag.DUMP
            and _errnos(group.tsemu) == [errno.EOPNOTSUPP])


def _host_only_pid(group: Group, ctx: Context) -> bool:
    if not _is_cmd(group.request, ctx.machine.family, TaskstatsCmd.GET) or not group.host:
        return False
    reply = group.host[0]
    if reply.cmd != TaskstatsCmd.NEW or len(reply.raw) < 16:
        return False
    ident = struct.unpack_from("<I", reply.raw, 12)[0]  # genl, AGGR nest, PID/TGID attr
    return (ident not in ctx.machine.tsemu_pids
            and all(r.errno == 0 for r in group.host[1:])
            and _errnos(group.tsemu) == [errno.ESRCH])


def _fd_attrs(request: Message) -> list[tuple[int, int]]:
    """(size, value) of each FD attribute of a CGROUPSTATS request, in order."""
    out, pos, end = [], 20, len(request.raw)
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("<HH", request.raw, pos)
        if alen < 4 or pos + alen > end:
            break
        if atype & 0x3FFF == 1:
            out.append((alen - 4, struct.unpack_from("<I", request.raw, pos + 4)[0]
                        if alen >= 8 else -1))
        pos += (alen + 3) & ~3
    return out


def _cgroupstats_first_fd(group: Group, ctx: Context) -> bool:
    request = group.request
    if request is None or not _is_cmd(request, ctx.machine.family,
                                       TaskstatsCmd.CGROUPSTATS_GET):
        return False
    fds = _fd_attrs(request)
    shim = next((value for size, value in fds if size >= 4), None)
    return len(fds) > 1 and fds[-1][1] != shim


def _cgroupstats_in_order(group: Group, ctx: Context) -> bool:
    from .fuzzing import shim_descriptors

    family = ctx.machine.family
    if not _is_cmd(group.request, family, TaskstatsCmd.CGROUPSTATS_GET):
        return False
    candidates = [r for r in ctx.requests
                  if _is_cmd(r, family, TaskstatsCmd.CGROUPSTATS_GET)
                  and r.header.flags & Flag.REQUEST and r.header.flags & Flag.DUMP != Flag.DUMP
                  and any(size >= 4 for size, _ in _fd_attrs(r))]
    # Only the answers a descriptor decides differ: nothing (not open), EINVAL (not a cgroup
    # tsemu knows), a CGROUPSTATS_NEW; and the ACK that may follow.
    kinds = {r.summary().removesuffix("+tlv") for r in group.host + group.tsemu}
    return (len(candidates) > 1
            and len(shim_descriptors(ctx.datagram, family)) < len(candidates)
            and kinds <= {"ACK", "ERR EINVAL", "CGROUPSTATS_NEW"})


#: The table. The fuzz reports how often each row applied.
KNOWN: tuple[Known, ...] = (
    Known("empty datagram: send() fails with ENODATA",
          "netlink_sendmsg refuses a zero-length datagram before any netlink processing; on "
          "a Unix datagram socket the send succeeds and the server answers nothing. Only "
          "the shim (shim/io.c) could fail such a send, not the kernel model.",
          _empty_datagram),
    Known("lookup of a family tsemu does not emulate",
          "tsemu registers nlctrl and TASKSTATS only (README, Limits): GETFAMILY by the id "
          "or name of another family the host has is ENOENT.",
          _foreign_family),
    Known("dump entry of a family tsemu does not emulate",
          "the same limit in a GETFAMILY dump: the host's entries for other families are "
          "dropped from its answer before comparing (tests/fuzzing.py `normalise`).",
          lambda group, ctx: False),
    Known("nlctrl GETPOLICY dump is not emulated",
          "README, Limits: answered EOPNOTSUPP where the host dumps policies (or refuses "
          "the request's attributes).",
          _getpolicy),
    Known("a pid only the host has",
          "the two machines are different: a mutated PID or TGID that names a task of the "
          "host (init, a kernel thread) names none in tsemu's table, which holds only the "
          "fuzzing process and pid 1 (tests/fuzzing.py `Machine.tsemu_pids`).",
          _host_only_pid),
    Known("CGROUPSTATS with several FD attributes: the shim passes the first's descriptor",
          "the kernel reads the last FD attribute (nla_parse keeps the last of a type); "
          "the shim (shim/io.c `fd_attr`) passes the descriptor of the first, so the server "
          "answers for that one. Only the shim can fix it.",
          _cgroupstats_first_fd),
    Known("several CGROUPSTATS requests in a datagram, some naming closed descriptors",
          "README, Limits: descriptors travel with SCM_RIGHTS, one per request whose FD is "
          "open, and are matched to the requests in order; the server cannot tell which "
          "request's descriptor was not open once there are fewer than requests.",
          _cgroupstats_in_order),
)
