"""The emulated kernel's answer to a datagram: a pure function of (state, datagram, sender).

Everything that decides what a request earns lives here, in the order the kernel decides it:

1. `netlink_rcv_skb`: the datagram is cut into messages (`wire.split_datagram`); a message
   without NLM_F_REQUEST, or of a control type (< 0x10), is not handed to a family but still
   acknowledged if it asks for an ACK; every error, and every success with NLM_F_ACK, gets an
   NLMSG_ERROR after the replies (none after a dump, which ends with NLMSG_DONE instead).
2. `genl_rcv_msg`: unknown family id: ENOENT; no room for the genl header: EINVAL; for a
   command at or above the family's `resv_start_op`, a reserved field or flag genetlink does
   not allow: EINVAL with an extended-ack message (`wire.netlink.check_genl_header`); no such
   command, or a dump of a command without one, or a request of a dump-only command:
   EOPNOTSUPP; ADMIN_PERM without CAP_NET_ADMIN: EPERM; then the op's policy (`wire`):
   liberal for a request, whose leftover bytes only leave a warning that the ACK, or an error
   with no message of its own, carries as its extended-ack message; strict for nlctrl's
   GETFAMILY dump.
3. the family's handler: nlctrl's GETFAMILY (by name over id, else EINVAL; unknown: ENOENT;
   dump: every family then DONE), TASKSTATS_CMD_GET (register, deregister, pid, tgid in that
   order; none: EINVAL), CGROUPSTATS_CMD_GET (no FD: EINVAL; FD not open: nothing; not a
   cgroup the table knows: EINVAL). The descriptors a datagram brought are paired, in order,
   with the messages a client sends one for (`wire.taskstats.carries_descriptor`), before
   anything decides their answers.

Nothing here does I/O or awaits: the result is a list of actions (`Send`, `Listen`) that the
trio shell carries out in order, so a REGISTER's ACK leaves only after the listener is in place.

The fast path: the common request, one 28-byte TASKSTATS_CMD_GET by PID or TGID from a sender
allowed to make it, is recognised with one unpack (`wire.taskstats.SINGLE_U32_REQUEST_CODEC`)
and answered without cutting, decoding or validating anything; its reply is packed in one go
from the record (`ReplyTemplate.build_values`). Anything else, down to an unusual flag or
attribute type, goes the general way; `handle_general` is that way alone, the reference the
fast path is tested against (tests/test_fastpath.py): both give the same actions.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from tsemu.wire import (
    ExtAck,
    Family,
    Flag,
    GenlMessage,
    Message,
    TaskstatsType,
    WireError,
    decode_cgroupstats_get,
    decode_genl,
    decode_getfamily,
    decode_taskstats_get,
    encode_cgroupstats_new,
    encode_done,
    encode_error,
    encode_newfamily,
    layout,
    parse_cpumask_attr,
    split_datagram,
)
from tsemu.wire.attributes import U32, parse_warning
from tsemu.wire.constants import (
    NLA_HDRLEN,
    NLMSG_MIN_TYPE,
    CtrlCmd,
    OpFlag,
    TaskstatsCmd,
    TaskstatsCmdAttr,
)
from tsemu.wire.netlink import Header, check_genl_header
from tsemu.wire.runs import MessageRun
from tsemu.wire.taskstats import (
    SINGLE_U32_REQUEST_CODEC,
    ReplyTemplate,
    Splice,
    carries_descriptor,
    encode_taskstats_new,
)

from .accounting import CLOCK_FIELDS
from .families import FamilyTable
from .faults import FaultTable
from .profiles import KernelProfile
from .replycache import PidReplyCache

#: what a storm's repeats are made from, and each one's pid
_MODEL_CLOCK = attrgetter("model", "clock")
_TID = attrgetter("tid")

if TYPE_CHECKING:
    from .tasks import ExitReport, RepeatExit


#: CONFIG_NR_CPUS of distribution kernels (Debian, Ubuntu, RHEL build with 8192): what an
#: emulated machine is built with unless it says otherwise (`[machine] nr_cpus`).
DEFAULT_NR_CPUS_CONFIG = 8192


class TaskSource(Protocol):
    """What the kernel model reads from the process table. `pid_stats` and `tgid_stats`
    raise LookupError for an id no task has (answered ESRCH); `cgroup_counts` returns None
    for a cgroup the table does not know."""

    def pid_stats(self, tid: int) -> Mapping[str, Any]: ...

    def tgid_stats(self, tgid: int) -> Mapping[str, Any]: ...

    def cgroup_counts(self, path: str) -> Mapping[str, int] | None: ...

    #: Optional, default False: True for a source whose PID records change only with its
    #: `generation` and the clock (it then has `pid_clock_fields`): see `PidReplyCache`.
    #: versioned_records: bool


@dataclass(frozen=True)
class CgroupRef:
    """A descriptor a CGROUPSTATS request passed along: what it is on the server's side."""

    path: str
    is_dir: bool


@dataclass
class Sender:
    """Who sent a datagram, and the socket options that shape its answers."""

    port: int
    admin: bool = False
    cap_ack: bool = False
    ext_ack: bool = False
    #: descriptors passed with the datagram (SCM_RIGHTS), one for each message that
    #: `wire.taskstats.carries_descriptor` picks, in order (a client sends none for a
    #: descriptor that is not open: the requests past the last one get none).
    cgroup_refs: list[CgroupRef | None] = field(default_factory=list)
    #: where an id the task source does not know is looked up for this sender ("pid" or
    #: "tgid", the id): its own processes (`shell.clientprocs`); LookupError is ESRCH
    own: Callable[[str, int], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class Send:
    """Queue these bytes for the sender, as one datagram."""

    data: bytes


@dataclass(frozen=True)
class Listen:
    """Register (or deregister) the sender as a listener for these CPUs."""

    cpus: frozenset[int]
    register: bool


Action = Send | Listen

# Flag and op-flag bits as plain ints: an IntFlag operand costs ~0.6 us per operation.
_REQUEST = int(Flag.REQUEST)
_ACK = int(Flag.ACK)
_DUMP = int(Flag.DUMP)
_CAP_DO = int(OpFlag.CMD_CAP_DO)
_CAP_DUMP = int(OpFlag.CMD_CAP_DUMP)
_ADMIN_PERM = int(OpFlag.ADMIN_PERM)
_GET = int(TaskstatsCmd.GET)
_ATTR_PID = int(TaskstatsCmdAttr.PID)
_ATTR_TGID = int(TaskstatsCmdAttr.TGID)
_GET_SIZE = SINGLE_U32_REQUEST_CODEC.size
_unpack_get = SINGLE_U32_REQUEST_CODEC.unpack_from
#: nla_len of an attribute holding exactly a u32
_U32_ATTR_LEN = NLA_HDRLEN + U32.sizeof()


class _Refused(Exception):
    """An errno a handler answers with, and any extended-ack details."""

    def __init__(self, err: int, ext: ExtAck | None = None) -> None:
        self.err = err
        self.ext = ext


class Kernel:
    """The kernel model: families, the process table's answers, the machine's CPUs."""

    def __init__(self, tasks: TaskSource, *, profile: KernelProfile, nr_cpus: int,
                 families: FamilyTable | None = None,
                 cgroup_roots: tuple[str, ...] = ("/sys/fs/cgroup",),
                 nr_cpus_config: int = DEFAULT_NR_CPUS_CONFIG) -> None:
        self.tasks = tasks
        self.profile = profile
        self.nr_cpus = nr_cpus
        #: CONFIG_NR_CPUS of the emulated build: bounds a cpumask string's length (a value
        #: pinned on the profile wins)
        self.nr_cpus_config = (nr_cpus_config if profile.nr_cpus_config is None
                               else profile.nr_cpus_config)
        self.families = families or FamilyTable.default(profile=profile)
        self.taskstats = self.families.families[1]
        self.cgroup_roots = cgroup_roots
        self.layout = layout(profile.taskstats_version)
        self._pid_reply = ReplyTemplate(self.taskstats.id, TaskstatsType.AGGR_PID,
                                        self.layout.size, self.layout)
        self._tgid_reply = ReplyTemplate(self.taskstats.id, TaskstatsType.AGGR_TGID,
                                         self.layout.size, self.layout)
        # The family table's answers, looked up once (the table is frozen): the first family
        # with an id and the first op with a command win, as FamilyTable's lookups find them.
        self._by_id: dict[int, Family] = {}
        self._op_flags: dict[tuple[int, int], int] = {}
        for family in self.families.families:
            self._by_id.setdefault(family.id, family)
            for cmd, flags in family.ops:
                self._op_flags.setdefault((family.id, int(cmd)), int(flags))
        # The fast path serves TASKSTATS_CMD_GET when the table routes it as the general path
        # would: TASKSTATS found by its id, no family header, GET answered as a request.
        ts_id = self.taskstats.id
        get_flags = self._op_flags.get((ts_id, _GET))
        self._fast_family: int | None = (
            ts_id if (self.taskstats.hdrsize == 0 and self._by_id.get(ts_id) is self.taskstats
                      and ts_id >= NLMSG_MIN_TYPE and get_flags is not None
                      and get_flags & _CAP_DO) else None)
        self._get_needs_admin = bool(get_flags is not None and get_flags & _ADMIN_PERM)
        # A repeated exit's event: its model's bytes with pid and clock fields patched in.
        self._repeat_patch = self._pid_reply.patcher(("ac_pid", "ac_tgid", *CLOCK_FIELDS),
                                                     absent_ok=True)
        self._repeat_model: Any = None
        self._repeat_splice: Splice | None = None
        #: Faults in force (`faults`): an `errno` fault answers a request with that error.
        self.faults = FaultTable()
        #: the clock faults' windows are read on (ns): the table's, when it has one
        self.now_ns: Callable[[], int] = getattr(getattr(tasks, "clock", None), "monotonic_ns",
                                                 lambda: 0)
        # A table whose records change only with its generation and the clock: keep replies.
        self._pid_cache = (PidReplyCache(tasks, self._pid_reply, self.layout)  # type: ignore[arg-type]
                           if getattr(tasks, "versioned_records", False) else None)

    # -- netlink_rcv_skb -------------------------------------------------------------------

    def handle(self, datagram: bytes, sender: Sender) -> list[Action]:
        """The actions answering one datagram from `sender`, in order."""
        if len(datagram) == _GET_SIZE and "errno" not in self.faults.kinds:
            actions = self._fast_get(datagram, sender)
            if actions is not None:
                return actions
        return self.handle_general(datagram, sender)

    def handle_general(self, datagram: bytes, sender: Sender) -> list[Action]:
        """`handle` without the fast path: what every datagram earns, the general way."""
        actions: list[Action] = []
        refs = iter(sender.cgroup_refs)
        ts_id = self.taskstats.id
        for message in split_datagram(datagram):
            h = message.header
            err, ext = 0, None
            ref = next(refs, None) if carries_descriptor(message, ts_id) else None
            if h.flags & _REQUEST and h.type >= NLMSG_MIN_TYPE:
                try:
                    dumped, ext = self._family_message(message, sender, ref, actions)
                    if dumped:
                        continue  # a dump: DONE ends it, no ACK
                except _Refused as refused:
                    err, ext = refused.err, refused.ext
            if h.flags & _ACK or err:
                actions.append(self._error(message, err, sender, ext))
        return actions

    def _error(self, message: Message, err: int, sender: Sender, ext: ExtAck | None) -> Send:
        """The NLMSG_ERROR (an ACK for err 0) answering `message`, shaped by the sender's
        NETLINK_CAP_ACK and NETLINK_EXT_ACK where the profile's kernel has them (4.3 and 4.12
        on): an older kernel refuses to set them, so it answers as if they were off."""
        return Send(encode_error(message, -err, sender.port,
                                 cap_ack=sender.cap_ack and self.profile.cap_ack,
                                 ext_ack=sender.ext_ack and self.profile.ext_ack, ext=ext))

    def _fast_get(self, datagram: bytes, sender: Sender) -> list[Action] | None:
        """The actions for a lone 28-byte TASKSTATS_CMD_GET by PID or TGID, or None for any
        datagram that is not exactly that (the general path answers it then)."""
        (length, msg_type, flags, seq, pid, cmd, _version, _reserved, attr_len, attr_type,
         ident) = _unpack_get(datagram)
        if (msg_type != self._fast_family or length != _GET_SIZE or cmd != _GET
                or attr_len != _U32_ATTR_LEN or not flags & _REQUEST or flags & _DUMP == _DUMP
                or (self._get_needs_admin and not sender.admin)):
            return None
        source: Callable[[int], Mapping[str, Any]]
        if attr_type == _ATTR_PID:
            source, template = self.tasks.pid_stats, self._pid_reply
        elif attr_type == _ATTR_TGID:
            source, template = self.tasks.tgid_stats, self._tgid_reply
        else:
            return None
        port = sender.port
        try:
            data = None
            if attr_type == _ATTR_PID and self._pid_cache is not None:
                try:
                    data = self._pid_cache.reply(seq, port, ident)
                except LookupError:  # not the table's: the sender's own, or ESRCH
                    data = None
            if data is None:
                values = self._lookup(source, ident, sender,
                                      "pid" if attr_type == _ATTR_PID else "tgid")
            if data is None:
                data = template.build_values(seq, port, ident, values)
            if data is None:
                data = template.build(seq, port, ident, self.layout.build(values))
        except WireError as exc:
            return [self._refusal(datagram, length, msg_type, flags, seq, pid, sender,
                                  exc.errno, ExtAck.of(exc))]
        except _Refused as refused:
            return [self._refusal(datagram, length, msg_type, flags, seq, pid, sender,
                                  refused.err, refused.ext)]
        if flags & _ACK:
            return [Send(data), self._refusal(datagram, length, msg_type, flags, seq, pid,
                                              sender, 0, None)]
        return [Send(data)]

    def _refusal(self, datagram: bytes, length: int, msg_type: int, flags: int, seq: int,
                 pid: int, sender: Sender, err: int, ext: ExtAck | None) -> Send:
        """The NLMSG_ERROR (or ACK, for err 0) answering a lone message, as the general path
        builds it."""
        message = Message(Header(length, msg_type, flags, seq, pid), bytes(datagram[:length]))
        return self._error(message, err, sender, ext)

    # -- genl_rcv_msg ----------------------------------------------------------------------

    def _family_message(self, message: Message, sender: Sender, ref: CgroupRef | None,
                        actions: list[Action]) -> tuple[bool, ExtAck | None]:
        """Handle one request: (whether it was a dump, the extended-ack warning its ACK
        carries). Raises _Refused for an errno."""
        family = self._by_id.get(message.header.type)
        if family is None:
            raise _Refused(errno.ENOENT)
        try:
            genl = decode_genl(message, family.hdrsize)
            check_genl_header(genl, self.families.resv_start_op(family))
        except WireError as exc:
            raise _Refused(exc.errno, ExtAck.of(exc)) from None
        flags = self._op_flags.get((family.id, genl.cmd))
        dump = message.header.flags & _DUMP == _DUMP
        if flags is None or not flags & (_CAP_DUMP if dump else _CAP_DO):
            raise _Refused(errno.EOPNOTSUPP)
        if flags & _ADMIN_PERM and not sender.admin:
            raise _Refused(errno.EPERM)
        # A request's attributes are parsed liberally before its handler runs: leftover
        # bytes set the extended-ack message and the parse goes on.
        text = None if dump else parse_warning(genl.attrs)
        warning = ExtAck(text) if text is not None else None
        try:
            if family.id == self.taskstats.id:
                if genl.cmd == TaskstatsCmd.GET:
                    self._taskstats_get(genl, sender, actions)
                else:
                    self._cgroupstats_get(genl, sender, ref, actions)
            elif dump:
                if genl.cmd != CtrlCmd.GETFAMILY:
                    # GETPOLICY dumps are not emulated: answered as if the op were absent.
                    raise _Refused(errno.EOPNOTSUPP)
                self._ctrl_dump(genl, sender, actions)
                return True, None
            else:
                self._ctrl_getfamily(genl, sender, actions)
        except WireError as exc:
            # A policy failure brings its own message; a handler's errno (a cpulist's) the
            # parse's warning, if any.
            ext = ExtAck.of(exc) if exc.ext_msg is not None else warning
            raise _Refused(exc.errno, ext) from None
        except _Refused as refused:
            if refused.ext is None and warning is not None:
                raise _Refused(refused.err, warning) from None
            raise
        return False, warning

    # -- nlctrl ----------------------------------------------------------------------------

    def _ctrl_getfamily(self, genl: GenlMessage, sender: Sender, actions: list[Action]) -> None:
        lookup = decode_getfamily(genl)
        self._forced("getfamily", sender)
        if lookup.name is not None:
            found = self.families.by_name(lookup.name)
        elif lookup.id is not None:
            found = self.families.by_id(lookup.id)
        else:
            raise _Refused(errno.EINVAL)
        if found is None:
            raise _Refused(errno.ENOENT)
        actions.append(Send(encode_newfamily(found, seq=genl.header.seq, pid=sender.port)))

    def _ctrl_dump(self, genl: GenlMessage, sender: Sender, actions: list[Action]) -> None:
        """Every family, then NLMSG_DONE, in one datagram as the kernel fills one skb; the
        attributes, ignored, must pass a strict parse first (genl_start)."""
        decode_getfamily(genl, strict=True)
        seq = genl.header.seq
        parts = [encode_newfamily(f, seq=seq, pid=sender.port, flags=Flag.MULTI)
                 for f in self.families.families]
        actions.append(Send(b"".join(parts) + encode_done(seq, sender.port)))

    # -- TASKSTATS -------------------------------------------------------------------------

    def _forced(self, cmd: str, sender: Sender, pid: int | None = None) -> None:
        """Answer with a fault's errno, if an `errno` fault hits this request."""
        if "errno" in self.faults.kinds:
            fault = self.faults.hit(("errno",), self.now_ns(), cmd=cmd, pid=pid,
                                    port=sender.port)
            if fault is not None:
                raise _Refused(fault.errno)

    def _taskstats_get(self, genl: GenlMessage, sender: Sender, actions: list[Action]) -> None:
        request = decode_taskstats_get(genl)
        if request.register is not None:
            self._forced("register", sender)
        elif request.deregister is not None:
            self._forced("deregister", sender)
        else:
            self._forced("get", sender, request.pid if request.pid is not None else request.tgid)
        for mask, register in ((request.register, True), (request.deregister, False)):
            if mask is not None:
                cpus = parse_cpumask_attr(mask, self.nr_cpus, self.nr_cpus_config)
                actions.append(Listen(cpus, register))
                return
        seq, port = genl.header.seq, sender.port
        if request.pid is not None:
            values = self._stats(self.tasks.pid_stats, request.pid, sender, "pid")
            actions.append(Send(self._pid_reply.build(seq, port, request.pid, values)))
        elif request.tgid is not None:
            values = self._stats(self.tasks.tgid_stats, request.tgid, sender, "tgid")
            actions.append(Send(self._tgid_reply.build(seq, port, request.tgid, values)))
        else:
            raise _Refused(errno.EINVAL)

    def _stats(self, source: Any, ident: int, sender: Sender, kind: str) -> bytes:
        return self.layout.build(self._lookup(source, ident, sender, kind))

    @staticmethod
    def _lookup(source: Callable[[int], Mapping[str, Any]], ident: int, sender: Sender,
                kind: str) -> Mapping[str, Any]:
        """The values of task `ident` from the task source, else from the sender's own
        processes; ESRCH if neither has it."""
        try:
            return source(ident)
        except LookupError:
            if sender.own is None:
                raise _Refused(errno.ESRCH) from None
        try:
            return sender.own(kind, ident)
        except LookupError:
            raise _Refused(errno.ESRCH) from None

    def _cgroupstats_get(self, genl: GenlMessage, sender: Sender, ref: CgroupRef | None,
                         actions: list[Action]) -> None:
        fd = decode_cgroupstats_get(genl)
        self._forced("cgroupstats", sender)
        if fd is None:
            raise _Refused(errno.EINVAL)
        if ref is None:
            return  # the descriptor is not open in the client: the kernel answers nothing
        counts = self._cgroup_counts(ref)
        if counts is None:
            raise _Refused(errno.EINVAL)
        actions.append(Send(encode_cgroupstats_new(self.taskstats.id, counts,
                                                   seq=genl.header.seq, portid=sender.port)))

    def _cgroup_counts(self, ref: CgroupRef) -> Mapping[str, int] | None:
        """The counts of the table's cgroup at `ref`: a directory under a cgroup root, named
        by its path below that root ("/sys/fs/cgroup/cpu/jobs" is "/jobs" under the root
        "/sys/fs/cgroup/cpu"); None for anything else."""
        if not ref.is_dir:
            return None
        for root in self.cgroup_roots:
            root = root.rstrip("/")
            if ref.path == root or ref.path.startswith(root + "/"):
                counts = self.tasks.cgroup_counts(ref.path[len(root):] or "/")
                if counts is not None:
                    return counts
        return None

    # -- exit events -----------------------------------------------------------------------

    def repeat_exit_event(self, seq: int, report: RepeatExit) -> bytes:
        """The event of a `RepeatExit`: its model's event with seq, the pid and the clock
        fields in place."""
        return self.repeat_exit_events(seq, [report])[0]

    def repeat_exit_events(self, seq: int, reports: Sequence[RepeatExit]) -> MessageRun:
        """The events of consecutive `RepeatExit`s, with sequence numbers from `seq`, as one
        run. A storm's repeats share their model and (per chunk) their clock: the model's
        event with that clock is made once, and the run's events from it in one pack of
        their seq and pid (`Splice`)."""
        if not reports:
            return MessageRun(b"", 1)
        parts = []
        for (model, clock), group in groupby(reports, _MODEL_CLOCK):  # (one, in a storm)
            repeats = list(group)
            parts.append(self._repeat_run(seq, model, clock, repeats))
            seq = (seq + len(repeats)) & 0xFFFFFFFF
        if len(parts) == 1:
            return parts[0]
        joined = MessageRun.join(parts)
        assert joined is not None  # (repeats of models of one profile: one length)
        return joined

    def _repeat_run(self, seq: int, model: ExitReport, clock: tuple[int, ...],
                    reports: Sequence[RepeatExit]) -> MessageRun:
        """The events of repeats of one model at one clock, in one pack."""
        splice = self._repeat_splice
        if splice is None or model is not self._repeat_model:
            splice = self._repeat_splice = self._repeat_splicer(model)
        count = len(reports)
        seqs = (range(seq, seq + count) if seq + count <= 1 << 32
                else [(seq + at) & 0xFFFFFFFF for at in range(count)])
        return splice.run(seqs, list(map(_TID, reports)), *([value] * count for value in clock))

    def _repeat_splicer(self, model: ExitReport) -> Splice:
        """The splice making repeats of `model`: seq, then the pid, then the
        `CLOCK_FIELDS`; kept as the current one (a storm's chunks share their model)."""
        if model.tgid_values is not None:
            raise ValueError("a repeated exit's model must send no AGGR_TGID record")
        base = self.exit_event(0, model.tid, model.pid_values, model.tgid, None)
        self._repeat_model = model
        return self._repeat_patch.splicer(
            base, seq=0, ident=1, ac_pid=1, ac_tgid=1,
            **{name: 2 + at for at, name in enumerate(CLOCK_FIELDS)})

    def exit_event(self, seq: int, pid: int, pid_values: Mapping[str, Any], tgid: int,
                   tgid_values: Mapping[str, Any] | None) -> bytes:
        """The TASKSTATS_CMD_NEW a CPU's listeners get for one exit: nlmsg_pid 0, that CPU's
        sequence number, the AGGR_PID record and, when due, the AGGR_TGID record."""
        if tgid_values is None:
            data: bytes | None = self._pid_reply.build_values(seq, 0, pid, pid_values)
            if data is not None:
                return data
        records = [(TaskstatsType.AGGR_PID, pid, self.layout.build(pid_values))]
        if tgid_values is not None:
            records.append((TaskstatsType.AGGR_TGID, tgid, self.layout.build(tgid_values)))
            return encode_taskstats_new(self.taskstats.id, records, seq=seq, portid=0)
        return self._pid_reply.build(seq, 0, pid, records[0][2])
