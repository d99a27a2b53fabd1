"""Property tests: every message type encodes and decodes back to the same values and bytes."""

from __future__ import annotations

import errno

from hypothesis import given
from hypothesis import strategies as st

from tsemu.wire import (
    VERSIONS,
    CgroupstatsGet,
    CgroupstatsReply,
    Done,
    ErrorMessage,
    ExtAck,
    Family,
    FamilyReply,
    FamilyRequest,
    Flag,
    TaskstatsGet,
    TaskstatsReply,
    TaskstatsType,
    decode_message,
    encode_cgroupstats_get,
    encode_cgroupstats_new,
    encode_done,
    encode_error,
    encode_getfamily,
    encode_newfamily,
    encode_taskstats_get,
    encode_taskstats_new,
    iter_attrs,
    layout,
    split_datagram,
)
from tsemu.wire.attributes import encode_attr, encode_nest
from tsemu.wire.constants import NLA_F_NESTED, NLA_F_NET_BYTEORDER

FAMILY = 0x1F
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
name_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                    max_size=15)


def one(datagram: bytes) -> object:
    (msg,) = split_datagram(datagram)
    decoded = decode_message(msg, FAMILY)
    assert decoded.encode() == datagram
    return decoded


@given(st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=40),
                          st.sampled_from([0, NLA_F_NESTED, NLA_F_NET_BYTEORDER])), max_size=8))
def test_attribute_streams(attrs: list[tuple[int, bytes, int]]) -> None:
    stream = b"".join(encode_attr(t | f, p) for t, p, f in attrs)
    assert len(stream) % 4 == 0
    decoded = iter_attrs(stream)
    assert [(a.type, a.payload, a.flags) for a in decoded] == attrs
    assert b"".join(a.encode() for a in decoded) == stream


@given(st.lists(st.binary(max_size=12), max_size=5), st.booleans())
def test_nests(children: list[bytes], flag: bool) -> None:
    nest = encode_nest(7, [encode_attr(i + 1, c) for i, c in enumerate(children)], flag=flag)
    (outer,) = iter_attrs(nest)
    assert outer.type == 7 and outer.nested == flag
    assert [a.payload for a in iter_attrs(outer.payload)] == children


@given(u32, u32, st.one_of(st.none(), name_text), st.one_of(st.none(), u16),
       st.sampled_from([Flag.REQUEST, Flag.REQUEST | Flag.ACK, Flag.REQUEST | Flag.DUMP]))
def test_getfamily(seq: int, pid: int, name: str | None, fid: int | None, flags: int) -> None:
    decoded = one(encode_getfamily(name=name, family_id=fid, seq=seq, pid=pid, flags=flags))
    assert isinstance(decoded, FamilyRequest)
    assert decoded.lookup.name == (name.encode() if name is not None else None)
    assert decoded.lookup.id == fid and decoded.header.flags == flags


families = st.builds(
    Family, name=name_text, id=u16, version=u32, hdrsize=u32, maxattr=u32,
    ops=st.lists(st.tuples(u32, u32), max_size=4).map(tuple),
    mcast_groups=st.lists(st.tuples(u32, name_text), max_size=3).map(tuple),
)


@given(families, u32, u32, st.sampled_from([0, Flag.MULTI]))
def test_newfamily(family: Family, seq: int, pid: int, flags: int) -> None:
    decoded = one(encode_newfamily(family, seq=seq, pid=pid, flags=flags))
    assert isinstance(decoded, FamilyReply)
    assert decoded.family == family and decoded.version == 2


masks = st.one_of(st.none(), st.binary(min_size=1, max_size=20))


@given(st.one_of(st.none(), u32), st.one_of(st.none(), u32), masks, masks, u32, u32)
def test_taskstats_get(pid: int | None, tgid: int | None, reg: bytes | None,
                       dereg: bytes | None, seq: int, portid: int) -> None:
    decoded = one(encode_taskstats_get(FAMILY, pid=pid, tgid=tgid, register=reg,
                                       deregister=dereg, seq=seq, portid=portid))
    assert isinstance(decoded, TaskstatsGet)
    r = decoded.request
    assert (r.pid, r.tgid, r.register, r.deregister) == (pid, tgid, reg, dereg)


@st.composite
def records(draw: st.DrawFn) -> tuple[TaskstatsType, int, bytes, dict[str, object]]:
    version = draw(st.sampled_from(VERSIONS))
    lay = layout(version)
    values = {name: draw(u64) for name in ("cpu_count", "cpu_delay_total", "ac_etime",
                                           "read_bytes")}
    values |= {"ac_pid": draw(u32), "ac_comm": draw(st.binary(max_size=31)).rstrip(b"\0")}
    aggr = draw(st.sampled_from([TaskstatsType.AGGR_PID, TaskstatsType.AGGR_TGID]))
    return aggr, draw(u32), lay.build(values), values


@given(st.lists(records(), min_size=1, max_size=2), u32, u32, st.booleans())
def test_taskstats_new(recs: list[tuple[TaskstatsType, int, bytes, dict[str, object]]],
                       seq: int, portid: int, align64: bool) -> None:
    datagram = encode_taskstats_new(FAMILY, [(a, i, s) for a, i, s, _ in recs], seq=seq,
                                    portid=portid, align64=align64)
    decoded = one(datagram)
    assert isinstance(decoded, TaskstatsReply)
    assert decoded.version == 1
    for got, (aggr, ident, stats, values) in zip(decoded.records, recs, strict=True):
        assert (got.aggr, got.id, got.stats) == (aggr, ident, stats)
        parsed = got.values()
        assert {k: parsed[k] for k in values} == values
        if align64:
            stats_at = datagram.index(stats) if stats else 0
            assert stats_at % 8 == 0, "STATS payload 8-byte aligned when align64 is asked"


@given(st.one_of(st.none(), u32), u32)
def test_cgroupstats_get(fd: int | None, seq: int) -> None:
    decoded = one(encode_cgroupstats_get(FAMILY, fd, seq=seq))
    assert isinstance(decoded, CgroupstatsGet) and decoded.fd == fd


@given(st.fixed_dictionaries({k: u64 for k in ("nr_sleeping", "nr_running", "nr_stopped",
                                                 "nr_uninterruptible", "nr_io_wait")}), u32)
def test_cgroupstats_new(values: dict[str, int], seq: int) -> None:
    decoded = one(encode_cgroupstats_new(FAMILY, values, seq=seq, portid=9))
    assert isinstance(decoded, CgroupstatsReply) and decoded.stats == values


@given(st.sampled_from([0, -errno.EINVAL, -errno.ESRCH, -errno.EPERM, -errno.E2BIG]),
       st.booleans(), st.booleans(),
       st.builds(ExtAck, st.one_of(st.none(), st.text(max_size=40)),
                 st.one_of(st.none(), u32), st.one_of(st.none(), st.binary(max_size=24))),
       st.one_of(st.none(), u32), u32)
def test_errors_and_acks(err: int, cap: bool, ext_on: bool, ext: ExtAck, pid: int | None,
                         portid: int) -> None:
    request_bytes = encode_taskstats_get(FAMILY, pid=pid, seq=77)
    (request,) = split_datagram(request_bytes)
    decoded = one(encode_error(request, err, portid, cap_ack=cap, ext_ack=ext_on, ext=ext))
    assert isinstance(decoded, ErrorMessage)
    assert decoded.error == err and decoded.header.seq == 77 and decoded.header.pid == portid
    assert decoded.echoed_header == request.header
    assert decoded.capped == (err == 0 or cap)
    assert decoded.echo == (request.raw[:16] if decoded.capped else request.raw)
    got = decoded.ext
    if not ext_on:
        assert decoded.tlvs == []
    else:
        assert got.message == ext.message
        assert got.offset == (ext.offset if err else None)


@given(u32, u32)
def test_done(seq: int, portid: int) -> None:
    decoded = one(encode_done(seq, portid))
    assert isinstance(decoded, Done) and decoded.header.flags == Flag.MULTI


@given(st.lists(st.tuples(u32, st.one_of(st.none(), u32)), min_size=1, max_size=5))
def test_datagram_of_several_messages(requests: list[tuple[int, int | None]]) -> None:
    parts = [encode_taskstats_get(FAMILY, pid=pid, seq=seq) for seq, pid in requests]
    messages = split_datagram(b"".join(parts))
    assert [m.raw for m in messages] == parts
