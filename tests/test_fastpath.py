"""The GET fast path against the general path, and the server's cheap client identity check.

`Kernel.handle` answers the common request (one 28-byte TASKSTATS_CMD_GET by PID or TGID)
without cutting or decoding it; `Kernel.handle_general` is the general path alone. For any
datagram, valid or not, both must give the same actions, byte for byte. The server trusts a
client's socket file until the ports directory's watch reports a change of its name; a new
socket on a port id must still get its own connection, options and replies.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.client import Client, NetlinkError
from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.families import FamilyTable
from tsemu.emulator.model.kernel import Kernel, Listen, Send, Sender
from tsemu.emulator.model.profiles import PROFILES
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.shell import portwatch as portwatch_module
from tsemu.emulator.shell.server import Server, running_server
from tsemu.wire import (
    Flag,
    SockOpt,
    TaskstatsType,
    encode_taskstats_get,
    encode_taskstats_new,
    layout,
)
from tsemu.wire.attributes import NLATTR_CODEC, encode_attr
from tsemu.wire.netlink import GENLMSGHDR_CODEC, NLMSGHDR_CODEC
from tsemu.wire.taskstats import SINGLE_U32_REQUEST_CODEC, ReplyTemplate
from tsemu.wire.taskstats_struct import FIELDS

FAMILY = 0x1F
u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 0xFFFF)


# -- the emulated machines the properties run against ------------------------------------------


def _table(profile_name: str) -> tuple[ProcessTable, list[int]]:
    """A table with a plain process, a three-thread process whose leader is a zombie (its
    threads still live), and a process of two threads; returns it and the ids in use."""
    table = ProcessTable(VirtualClock(), PROFILES[profile_name], 2)
    plain = table.spawn(comm="plain", uid=1000, cpu=1,
                        counters={"cpu_count": 4, "cpu_delay_total": 9000,
                                  "read_bytes": 5000, "utime_ns": 2_500_000})
    group = table.spawn(comm="group", threads=3, counters={"nvcsw": 7})
    pair = table.spawn(comm="pair", threads=2)
    table.clock.advance(1.5)
    table.exit_task(group.tid, code=1)  # the leader waits as a zombie for its threads
    ids = [plain.tid, *table.group(group.tid).tids, group.tid, *table.group(pair.tid).tids]
    return table, ids


TABLES = {name: _table(name) for name in PROFILES}
KERNELS = {name: Kernel(table, profile=PROFILES[name], nr_cpus=2,
                        families=FamilyTable.default(FAMILY, PROFILES[name]))
           for name, (table, _ids) in TABLES.items()}
KNOWN_IDS = sorted({i for _table_, ids in TABLES.values() for i in ids})


class OddSource:
    """A TaskSource whose records are whatever a test puts there (complete or not, of
    any mapping type, values that do not pack)."""

    def __init__(self, records: Mapping[int, Mapping[str, Any]]) -> None:
        self.records = records

    def pid_stats(self, tid: int) -> Mapping[str, Any]:
        if tid not in self.records:
            raise LookupError(tid)
        return self.records[tid]

    def tgid_stats(self, tgid: int) -> Mapping[str, Any]:
        return self.pid_stats(tgid)

    def cgroup_counts(self, path: str) -> Mapping[str, int] | None:
        return None


def _odd_records() -> dict[int, Mapping[str, Any]]:
    table, ids = TABLES["6.18"]
    full = dict(table.pid_stats(ids[0]))

    class Sub(dict):  # type: ignore[type-arg]
        pass

    return {
        1: full,
        2: MappingProxyType(full),
        3: {k: v for k, v in full.items() if k != "version"},
        4: {**full, "ac_pad": b"\1\2\3"},
        5: {**full, "ac_uid": 2**32},  # does not fit a u32: EINVAL
        6: {**full, "ac_comm": "text"},  # not bytes: EINVAL
        7: Sub(full),
        8: {k: v for k, v in full.items() if k not in ("ac_comm", "nvcsw")},
        9: {**full, "unknown_field": 5},
        10: {},
    }


ODD = Kernel(OddSource(_odd_records()), profile=PROFILES["6.18"], nr_cpus=2)


# -- requests ------------------------------------------------------------------------------------

_REQUEST, _ACK, _DUMP = int(Flag.REQUEST), int(Flag.ACK), int(Flag.DUMP)
_FLAGS = st.one_of(
    st.sampled_from([_REQUEST, _REQUEST | _ACK, 0, _ACK, _REQUEST | _DUMP, _REQUEST | 0x100,
                     _REQUEST | 0x200, _REQUEST | _ACK | _DUMP, _REQUEST | int(Flag.ECHO),
                     _REQUEST | 0x400 | _ACK]),
    u16)
_IDS = st.one_of(st.sampled_from(KNOWN_IDS), st.sampled_from([0, 1, 2**31, 2**32 - 1]), u32)


def _header(length: int, msg_type: int, flags: int, seq: int, pid: int) -> bytes:
    return NLMSGHDR_CODEC.pack_values(length, msg_type, flags, seq, pid)


@st.composite
def canonical(draw: st.DrawFn) -> bytes:
    """The fast path's request, with an id the table may or may not know."""
    flags = draw(st.sampled_from([_REQUEST, _REQUEST | _ACK, _REQUEST | int(Flag.ECHO)]))
    ident = draw(_IDS)
    seq, pid = draw(u32), draw(u32)
    if draw(st.booleans()):
        return encode_taskstats_get(FAMILY, pid=ident, seq=seq, portid=pid, flags=flags)
    return encode_taskstats_get(FAMILY, tgid=ident, seq=seq, portid=pid, flags=flags)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A canonical request with one byte changed, or cut short, or lengthened."""
    raw = bytearray(draw(canonical()))
    how = draw(st.sampled_from(["byte", "cut", "extend"]))
    if how == "byte":
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif how == "cut":
        del raw[draw(st.integers(0, len(raw) - 1)):]
    else:
        raw += draw(st.binary(min_size=1, max_size=24))
    return bytes(raw)


@st.composite
def field_changed(draw: st.DrawFn) -> bytes:
    """A canonical request with one of its fields (as the request codec cuts it) set to a
    nearby or arbitrary value: every check of the fast path meets its edge."""
    raw = draw(canonical())
    values = list(SINGLE_U32_REQUEST_CODEC.unpack_from(raw))
    index = draw(st.integers(0, len(values) - 1))
    fmt = SINGLE_U32_REQUEST_CODEC.struct.format[1:][index]
    top = 2 ** (8 * struct.calcsize("<" + fmt)) - 1
    values[index] = draw(st.one_of(
        st.sampled_from([max(0, values[index] - 1), min(top, values[index] + 1), 0, top]),
        st.integers(0, top)))
    return SINGLE_U32_REQUEST_CODEC.pack_values(*values)


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """Any message: header fields, genl header and attributes each usual or not."""
    msg_type = draw(st.one_of(st.sampled_from([FAMILY, 0x10, 2, 3, 0x11, FAMILY + 1]), u16))
    cmd = draw(st.one_of(st.sampled_from([1, 4, 3, 2, 0, 10]), st.integers(0, 255)))
    genl = GENLMSGHDR_CODEC.pack_values(cmd, draw(st.integers(0, 255)), draw(u16))
    attrs = b""
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.one_of(st.sampled_from([1, 2, 3, 4, 0, 5, 1 | 0x8000, 2 | 0x4000]), u16))
        if draw(st.booleans()):
            payload = struct.pack("<I", draw(_IDS))
        else:
            payload = draw(st.one_of(st.sampled_from([b"0\0", b"0-1\0", b"1\0", b"7\0"]),
                                     st.binary(max_size=12)))
        attr = encode_attr(kind, payload)
        if draw(st.integers(0, 9)) == 0:  # a lying nla_len
            attr = NLATTR_CODEC.pack_values(draw(u16), kind) + attr[4:]
        attrs += attr
    body = genl[: draw(st.sampled_from([4, 4, 4, 0, 2]))] + attrs
    length = 16 + len(body)
    if draw(st.integers(0, 9)) == 0:
        length = draw(st.one_of(st.integers(0, 40), u32))
    return _header(length, msg_type, draw(_FLAGS), draw(u32), draw(u32)) + body


@st.composite
def datagram(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["canonical", "field", "mutated", "message", "several",
                                 "random"]))
    if kind == "canonical":
        return draw(canonical())
    if kind == "field":
        return draw(field_changed())
    if kind == "mutated":
        return draw(mutated())
    if kind == "message":
        return draw(message())
    if kind == "random":
        return draw(st.binary(min_size=draw(st.sampled_from([0, 16, 28])), max_size=40))
    parts = draw(st.lists(st.one_of(canonical(), message()), min_size=2, max_size=4))
    glue = draw(st.sampled_from([b"", b"\0\0\0"]))
    return glue.join(parts) + draw(st.sampled_from([b"", b"\0" * 3, b"\0" * 20]))


senders = st.builds(Sender, port=u32, admin=st.booleans(), cap_ack=st.booleans(),
                    ext_ack=st.booleans())


# -- the properties -------------------------------------------------------------------------------


@settings(max_examples=600)
@given(st.sampled_from(sorted(KERNELS)), datagram(), senders)
def test_fast_and_general_paths_answer_alike(profile_name: str, data: bytes,
                                              sender: Sender) -> None:
    kernel = KERNELS[profile_name]
    assert kernel.handle(data, sender) == kernel.handle_general(data, sender)


@given(st.sampled_from(sorted(KERNELS)), canonical(), senders)
def test_canonical_requests_answer_alike(profile_name: str, data: bytes, sender: Sender) -> None:
    kernel = KERNELS[profile_name]
    assert kernel.handle(data, sender) == kernel.handle_general(data, sender)


@settings(max_examples=300)
@given(st.sampled_from(sorted(KERNELS)), field_changed(), senders)
def test_requests_one_field_away_answer_alike(profile_name: str, data: bytes,
                                              sender: Sender) -> None:
    kernel = KERNELS[profile_name]
    assert kernel.handle(data, sender) == kernel.handle_general(data, sender)


@given(st.sampled_from(sorted(_odd_records()) + [999]), st.booleans(),
       st.sampled_from([_REQUEST, _REQUEST | _ACK]), u32, senders)
def test_records_the_fast_packer_leaves_alone_answer_alike(ident: int, by_tgid: bool,
                                                           flags: int, seq: int,
                                                           sender: Sender) -> None:
    data = encode_taskstats_get(FAMILY, pid=None if by_tgid else ident,
                                tgid=ident if by_tgid else None, seq=seq, flags=flags)
    assert ODD.handle(data, sender) == ODD.handle_general(data, sender)


def test_the_fast_path_is_taken_for_the_common_request() -> None:
    """The properties above would hold vacuously if the fast path never answered."""
    kernel = KERNELS["6.18"]
    ident = TABLES["6.18"][1][0]
    admin = Sender(4242, admin=True)
    for data in (encode_taskstats_get(FAMILY, pid=ident, seq=3),
                 encode_taskstats_get(FAMILY, tgid=ident, seq=3),
                 encode_taskstats_get(FAMILY, pid=ident, seq=3, flags=_REQUEST | _ACK),
                 encode_taskstats_get(FAMILY, pid=31337, seq=3)):
        assert len(data) == SINGLE_U32_REQUEST_CODEC.size
        assert kernel._fast_get(data, admin) is not None
    # ... and not for what it must leave to the general path
    plain = encode_taskstats_get(FAMILY, pid=ident, seq=3)
    assert kernel._fast_get(plain, Sender(4242, admin=False)) is None  # EPERM
    dump = encode_taskstats_get(FAMILY, pid=ident, flags=_REQUEST | _DUMP)
    assert kernel._fast_get(dump, admin) is None
    register = encode_taskstats_get(FAMILY, register=b"0\0\0\0")
    assert len(register) == 28 and kernel._fast_get(register, admin) is None


def test_a_custom_family_id_is_served_by_the_fast_path() -> None:
    table, ids = TABLES["6.18"]
    kernel = Kernel(table, profile=PROFILES["6.18"], nr_cpus=2,
                    families=FamilyTable.default(0x2A))
    data = encode_taskstats_get(0x2A, pid=ids[0], seq=9)
    sender = Sender(77, admin=True)
    assert kernel._fast_get(data, sender) is not None
    assert kernel.handle(data, sender) == kernel.handle_general(data, sender)
    stale = encode_taskstats_get(FAMILY, pid=ids[0], seq=9)
    assert kernel._fast_get(stale, sender) is None


def test_register_is_left_to_the_general_path() -> None:
    kernel = KERNELS["6.18"]
    data = encode_taskstats_get(FAMILY, register="0-1", seq=4, flags=_REQUEST | _ACK)
    actions = kernel.handle(data, Sender(5, admin=True))
    assert isinstance(actions[0], Listen) and isinstance(actions[1], Send)


# -- the reply packer ----------------------------------------------------------------------------


def _value(ctype: str) -> st.SearchStrategy[Any]:
    return {
        "u8": st.integers(0, 0xFF), "u16": st.integers(0, 0xFFFF), "u32": u32,
        "u64": st.integers(0, 2**64 - 1), "comm": st.binary(max_size=32),
    }[ctype]


@st.composite
def records(draw: st.DrawFn, version: int) -> dict[str, Any]:
    return {f.name: draw(_value(f.ctype)) for f in FIELDS
            if f.since <= version and not f.ctype.startswith("pad")}


@pytest.mark.parametrize("version", [8, 13, 16])
@given(data=st.data(), seq=u32, portid=u32, ident=u32,
       aggr=st.sampled_from([TaskstatsType.AGGR_PID, TaskstatsType.AGGR_TGID]))
def test_build_values_is_build_of_the_layouts_bytes(version: int, data: st.DataObject, seq: int,
                                                    portid: int, ident: int,
                                                    aggr: TaskstatsType) -> None:
    lay = layout(version)
    values = data.draw(records(version))
    template = ReplyTemplate(FAMILY, aggr, lay.size, lay)
    packed = template.build_values(seq, portid, ident, values)
    assert packed == template.build(seq, portid, ident, lay.build(values))
    assert packed == encode_taskstats_new(FAMILY, [(aggr, ident, lay.build(values))], seq=seq,
                                          portid=portid)


def test_build_values_declines_what_it_cannot_pack_exactly() -> None:
    lay = layout(16)
    template = ReplyTemplate(FAMILY, TaskstatsType.AGGR_PID, lay.size, lay)
    full = dict(TABLES["6.18"][0].pid_stats(TABLES["6.18"][1][0]))
    assert template.build_values(1, 2, 3, full) is not None
    for odd in (MappingProxyType(full), {**full, "ac_pad": b"\0\0\0"},
                {k: v for k, v in full.items() if k != "version"},
                {**full, "nvcsw": -1}, {**full, "ac_comm": "x"}):
        assert template.build_values(1, 2, 3, odd) is None
    assert ReplyTemplate(FAMILY, TaskstatsType.AGGR_PID, lay.size).build_values(
        1, 2, 3, full) is None  # no layout given
    v17 = layout(17)  # nested timespecs: the general way only
    assert ReplyTemplate(FAMILY, TaskstatsType.AGGR_PID, v17.size, v17).build_values(
        1, 2, 3, full) is None


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
def test_exit_events_are_the_bytes_they_were(profile_name: str) -> None:
    table = ProcessTable(VirtualClock(), PROFILES[profile_name], 2)
    kernel = Kernel(table, profile=PROFILES[profile_name], nr_cpus=2,
                    families=FamilyTable.default(FAMILY, PROFILES[profile_name]))
    lay = kernel.layout
    lone = table.spawn(comm="lone")
    report = table.exit_task(lone.tid, code=3)
    expected = encode_taskstats_new(FAMILY, [(TaskstatsType.AGGR_PID, lone.tid,
                                              lay.build(report.pid_values))], seq=7, portid=0)
    assert kernel.exit_event(7, report.tid, report.pid_values, report.tgid, None) == expected
    group = table.spawn(comm="group", threads=2)
    reports = table.exit_group(group.tid)
    last = reports[-1]
    assert last.tgid_values is not None
    expected = encode_taskstats_new(
        FAMILY, [(TaskstatsType.AGGR_PID, last.tid, lay.build(last.pid_values)),
                 (TaskstatsType.AGGR_TGID, last.tgid, lay.build(last.tgid_values))],
        seq=8, portid=0)
    assert kernel.exit_event(8, last.tid, last.pid_values, last.tgid,
                             last.tgid_values) == expected


# -- the server: who a client is ------------------------------------------------------------------


@pytest.fixture(params=["watched", "stat"])
async def any_server(request: Any, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A server with the ports directory watched (trusted clients), and one without a watch
    (every datagram's socket file checked): both must tell sockets apart the same way."""
    if request.param == "stat":
        monkeypatch.setattr(portwatch_module.PortWatch, "open", classmethod(lambda cls, d: None))
    table = ProcessTable(VirtualClock(), PROFILES["6.18"], 2)
    async with running_server(short_tmp / "genl.sock", table, nr_cpus=2) as server:
        assert (server._watch is not None) == (request.param == "watched")
        yield server


async def test_a_port_reused_at_once_gets_its_own_replies(any_server: Server) -> None:
    task = any_server.tasks.spawn(comm="target")
    for _ in range(20):
        async with await Client.connect(any_server.socket_path, port=4000) as c:
            with trio.fail_after(5):
                record = await c.get_pid(task.tid)
                assert record.id == task.tid
                record = await c.get_pid(task.tid)  # the second: served as a known client
                assert record.id == task.tid
    assert len(any_server.clients) <= 1 and any_server.stats.internal_errors == 0


async def test_a_new_socket_on_a_port_does_not_inherit_the_old_ones_options(
        any_server: Server) -> None:
    task = any_server.tasks.spawn(comm="target")
    async with await Client.connect(any_server.socket_path, port=4001) as old:
        with trio.fail_after(5):
            await old.get_pid(task.tid)
            with pytest.raises(NetlinkError) as whole:
                await old.get_pid(31337)
            assert len(whole.value.reply.encode()) == 48, "the whole request echoed"
            await old.set_option(SockOpt.CAP_ACK, 1)  # an option changed after requests
            with pytest.raises(NetlinkError) as capped:
                await old.get_pid(31337)
        assert len(capped.value.reply.encode()) == 36, "NETLINK_CAP_ACK: header only"
    async with await Client.connect(any_server.socket_path, port=4001) as new:
        with pytest.raises(NetlinkError) as whole, trio.fail_after(5):
            await new.get_pid(31337)
        assert whole.value.errno == errno.ESRCH
        assert len(whole.value.reply.encode()) == 48, "the whole request echoed"


async def test_a_register_without_ack_from_a_reused_port_reaches_the_new_socket(
        any_server: Server) -> None:
    """A datagram that earns no reply still tells the server who is there now."""
    task = any_server.tasks.spawn(comm="target", cpu=0)
    async with await Client.connect(any_server.socket_path, port=4002) as old:
        with trio.fail_after(5):
            await old.get_pid(task.tid)
    async with await Client.connect(any_server.socket_path, port=4002) as new:
        await new.send(encode_taskstats_get(FAMILY, register="0", seq=5))
        with trio.fail_after(5):
            while not any_server.listeners.listeners():
                await trio.sleep(0.005)
        await any_server.broadcast(any_server.tasks.exit_task(task.tid))
        await any_server.settle()
        with trio.fail_after(5):
            event = await new.next_event()
    assert event.records[0].id == task.tid


async def test_a_changed_socket_file_is_checked_again(any_server: Server) -> None:
    """Changing the file's attributes changes its identity (ctime): the next datagram is
    checked and, as always, starts a new connection."""
    task = any_server.tasks.spawn(comm="target")
    async with await Client.connect(any_server.socket_path, port=4003) as c:
        with trio.fail_after(5):
            await c.get_pid(task.tid)
            before = any_server.clients[4003]
            await c.get_pid(task.tid)
            assert any_server.clients[4003] is before
            assert c.path is not None
            os.chmod(c.path, 0o600)
            await c.get_pid(task.tid)
        assert any_server.clients[4003] is not before


async def test_a_client_outside_the_ports_directory_is_refused(
        server: Server, short_tmp: Path) -> None:
    """A socket bound elsewhere, even under a port id's name, is no netlink client: the
    kernel answers no datagram from a socket that is not netlink's (test_security.py has the
    attacks this stops)."""
    task = server.tasks.spawn(comm="target")
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
        raw.bind(str(elsewhere / "5000"))
        raw.settimeout(0.3)
        request = encode_taskstats_get(FAMILY, pid=task.tid, seq=1)
        await trio.to_thread.run_sync(raw.sendto, request, str(server.socket_path))
        with pytest.raises(TimeoutError):
            await trio.to_thread.run_sync(raw.recv, 4096)
    assert server.stats.unaddressed == 1 and 5000 not in server.clients


async def test_a_burst_is_answered_in_order(server: Server) -> None:
    task = server.tasks.spawn(comm="target")
    async with await Client.connect(server.socket_path) as c:
        for seq in range(1, 101):
            await c.send(encode_taskstats_get(FAMILY, pid=task.tid, seq=seq, portid=c.port))
        seqs = []
        with trio.fail_after(10):
            while len(seqs) < 100:
                reply = await c.recv()
                seqs.append(struct.unpack_from("<I", reply, 8)[0])
    assert seqs == list(range(1, 101))
    assert server.stats.datagrams == 100 and server.stats.internal_errors == 0


# -- the watch itself ------------------------------------------------------------------------------


def test_the_watch_names_what_changed_and_gives_up_when_its_directory_moves(
        short_tmp: Path) -> None:
    ports = short_tmp / "genl.sock.ports"
    ports.mkdir()
    watch = portwatch_module.PortWatch.open(ports)
    if watch is None:
        pytest.skip("no inotify here")
    try:
        assert watch.prefix == f"{ports}/"
        (ports / "12").touch()
        os.chmod(ports / "12", 0o600)
        os.rename(ports / "12", ports / "13")
        os.unlink(ports / "13")
        changed = watch.changes()
        assert changed is not None and set(changed) == {"12", "13"}
        assert watch.changes() == []
        os.rename(ports, short_tmp / "moved")
        assert watch.changes() is None and not watch.alive
    finally:
        watch.close()


def test_lost_events_mean_nothing_is_trusted(short_tmp: Path) -> None:
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except OSError:
        pytest.skip("no inotify limits to read")
    if limit > 70000:
        pytest.skip(f"max_queued_events is {limit}: too many events to overflow quickly")
    ports = short_tmp / "genl.sock.ports"
    ports.mkdir()
    watch = portwatch_module.PortWatch.open(ports)
    if watch is None:
        pytest.skip("no inotify here")
    try:
        for name in ("1", "2"):
            (ports / name).touch()
        for i in range(limit + 10):  # alternate names: identical events would be merged
            os.utime(ports / ("1" if i % 2 else "2"))
        assert watch.changes() is None
        assert watch.alive, "an overflow loses events, not the watch"
        os.utime(ports / "1")
        assert watch.changes() == ["1"]
    finally:
        watch.close()
