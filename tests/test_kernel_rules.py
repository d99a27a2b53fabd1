"""The kernel rules the differential fuzz (tests/fuzzing.py) found tsemu missing, one section
each: the host kernel's own answers, byte for byte, and the wire-level rule behind them.

The `MEASURED_*` tables were captured from Linux 6.18.44 (x86_64, NR_CPUS 256, 2 CPUs,
TASKSTATS family 0x1f) by sending each datagram on a fresh AF_NETLINK socket with the socket
options shown; the replies' port id is written as 0xf00d. They run without the host kernel:
each datagram is answered by `Kernel.handle` of a machine like the one measured.
"""

from __future__ import annotations

import errno
import struct

import pytest

from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.families import FamilyTable
from tsemu.emulator.model.kernel import CgroupRef, Kernel, Listen, Send, Sender
from tsemu.emulator.model.profiles import PROFILES
from tsemu.emulator.model.table import ProcessTable
from tsemu.wire import WireError
from tsemu.wire.attributes import encode_attr, parse_attrs
from tsemu.wire.controller import GETFAMILY_MAXATTR, GETFAMILY_POLICY
from tsemu.wire.cpulist import parse_cpulist, parse_cpumask_attr
from tsemu.wire.netlink import pack_genl_header, pack_header

F = 0x1F
PORT = 0xF00D
ABSENT = 0x3FFFFFF0


def _attr(kind: int, payload: bytes) -> bytes:
    return encode_attr(kind, payload)


def _msg(mtype: int, flags: int, seq: int, cmd: int, attrs: bytes = b"", *, reserved: int = 0,
         tail: bytes = b"") -> bytes:
    body = pack_genl_header(cmd, 1, reserved) + attrs + tail
    return pack_header(16 + len(body), mtype, flags, seq, 0) + body


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def _kernel(cgroup_roots: tuple[str, ...] = ("/sys/fs/cgroup",)) -> Kernel:
    profile = PROFILES["6.18"]
    return Kernel(ProcessTable(VirtualClock(), profile, 2), profile=profile, nr_cpus=2,
                  families=FamilyTable.default(F), cgroup_roots=cgroup_roots)


def _answers(datagram: bytes, cap_ack: bool = False, ext_ack: bool = False,
             refs: list[CgroupRef | None] | None = None) -> list[bytes]:
    sender = Sender(PORT, admin=True, cap_ack=cap_ack, ext_ack=ext_ack, cgroup_refs=refs or [])
    return [a.data for a in _kernel().handle(datagram, sender) if isinstance(a, Send)]


Measured = dict[str, tuple[bytes, bool, bool, list[str]]]


def _check(table: Measured, name: str) -> None:
    datagram, cap_ack, ext_ack, expected = table[name]
    assert [d.hex() for d in _answers(datagram, cap_ack, ext_ack)] == expected


# ---------------------------------------------------------------------------------------
# NLA_NUL_STRING falls through to NLA_STRING's check in validate_nla: a NUL within max_len + 1
# bytes is not enough, more than max_len bytes before a final NUL is ERANGE.

MEASURED_NUL_STRING: Measured = {
    "name of 18 bytes, NUL inside": (
        _msg(0x10, 1, 6, 3, _attr(2, b"TASKSTATS\0xxxxxxxxx\0")), False, True,
        ["8400000002000002060000000df00000deffffff2c0000001000010006000000000000000301000018"
         "0002005441534b5354415453007878787878787878780027000100417474726962757465206661696c6564"
         "20706f6c6963792076616c69646174696f6e0000080002001400000014000480080007000f0000000800"
         "01000c000000"]),
    "name of 16 bytes, NUL at 10": (
        _msg(0x10, 1, 6, 3, _attr(2, b"TASKSTATS\0xxxxxx")), False, False,
        ["3c00000002000000060000000df00000deffffff280000001000010006000000000000000301000014"
         "0002005441534b535441545300787878787878"]),
    "name of 15 bytes and NUL": (
        _msg(0x10, 1, 6, 3, _attr(2, b"TASKSTATS\0xxxxx\0")), False, False,
        ["7000000010000000060000000df00000010200000e0002005441534b5354415453000000060001001f00"
         "00000800030001000000080004000000000008000500000000002c0006001400010008000100010000000800"
         "02000b000000140002000800010004000000080002000a000000"]),
}


@pytest.mark.parametrize("name", list(MEASURED_NUL_STRING))
def test_nul_string_length_as_measured(name: str) -> None:
    _check(MEASURED_NUL_STRING, name)


def test_nul_string_rule() -> None:
    for payload, expected in ((b"A" * 15 + b"\0", None), (b"A" * 16 + b"\0", errno.EINVAL),
                              (b"A\0" + b"B" * 14, errno.ERANGE), (b"A\0" + b"B" * 13, None),
                              (b"", errno.EINVAL)):
        try:
            parse_attrs(_attr(2, payload), GETFAMILY_POLICY, GETFAMILY_MAXATTR)
            got = None
        except WireError as exc:
            got = exc.errno
        assert got == expected, payload


# ---------------------------------------------------------------------------------------
# taskstats.c's parse(): nla_strscpy(data, na, len) into a buffer of the payload's length
# keeps len - 1 bytes, so the last byte goes whether or not it is a NUL; and
# bitmap_parse_region computes a plain region's group as end + 1 in 32 bits.

MEASURED_CPUMASK: Measured = {
    "REGISTER 0-1 without NUL": (
        _msg(F, 5, 7, 1, _attr(3, b"0-1")), False, False,
        ["3000000002000000070000000df00000eaffffff1c0000001f000500070000000000000001010000070003"
         "00302d3100"]),
    "REGISTER 0- without NUL": (
        _msg(F, 5, 7, 1, _attr(3, b"0-")), False, False,
        ["2400000002000001070000000df00000000000001c0000001f0005000700000000000000"]),
    "REGISTER 2 without NUL": (
        _msg(F, 5, 7, 1, _attr(3, b"2")), False, False,
        ["2400000002000001070000000df00000000000001c0000001f0005000700000000000000"]),
    "REGISTER 4294967295": (
        _msg(F, 5, 7, 1, _attr(3, b"4294967295\0")), False, False,
        ["3800000002000000070000000df00000eaffffff240000001f000500070000000000000001010000"
         "0f000300343239343936373239350000"]),
    "REGISTER 0-4294967295": (
        _msg(F, 5, 7, 1, _attr(3, b"0-4294967295\0")), False, False,
        ["3c00000002000000070000000df00000eaffffff280000001f000500070000000000000001010000"
         "11000300302d3432393439363732393500000000"]),
    "DEREGISTER 1 and a NUL inside": (
        _msg(F, 5, 7, 1, _attr(4, b"1\0zz")), False, False,
        ["2400000002000001070000000df00000000000001c0000001f0005000700000000000000"]),
}


@pytest.mark.parametrize("name", list(MEASURED_CPUMASK))
def test_cpumask_attribute_as_measured(name: str) -> None:
    _check(MEASURED_CPUMASK, name)


def test_cpumask_attribute_rule() -> None:
    assert parse_cpumask_attr(b"0-", 2) == {0}
    assert parse_cpumask_attr(b"0-1\0", 2) == {0, 1}
    assert parse_cpumask_attr(b"0,1", 2) == {0}
    assert parse_cpumask_attr(b"1", 2) == frozenset(), "a lone byte without NUL is nothing"
    assert parse_cpulist(b"0-1", 2) == {0, 1}, "text (control socket, scenarios) keeps it all"
    for text in (b"4294967295\0", b"0-4294967295\0", b"4294967295-4294967295\0"):
        with pytest.raises(WireError) as raised:
            parse_cpumask_attr(text, 2)
        assert raised.value.errno == errno.EINVAL, text
    with pytest.raises(WireError) as raised:
        parse_cpumask_attr(b"4294967294\0", 2)
    assert raised.value.errno == errno.ERANGE
    registered = [a for a in _kernel().handle(_msg(F, 1, 7, 1, _attr(3, b"0-")),
                                              Sender(PORT, admin=True))
                  if isinstance(a, Listen)]
    assert registered == [Listen(frozenset({0}), True)]
