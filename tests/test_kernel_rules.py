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
from pathlib import Path

import pytest

from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.families import FamilyTable
from tsemu.emulator.model.kernel import CgroupRef, Kernel, Listen, Send, Sender
from tsemu.emulator.model.profiles import PROFILES
from tsemu.emulator.model.table import ProcessTable
from tsemu.wire import GenlMessage, WireError, decode_error, decode_genl, split_datagram
from tsemu.wire.attributes import (
    LEFTOVER,
    AttrPolicy,
    encode_attr,
    leftover,
    parse_attrs,
    parse_warning,
)
from tsemu.wire.constants import AttrType
from tsemu.wire.controller import GETFAMILY_MAXATTR, GETFAMILY_POLICY
from tsemu.wire.cpulist import parse_cpulist, parse_cpumask_attr
from tsemu.wire.netlink import (
    RESERVED_FLAGS,
    RESERVED_NOT_ZERO,
    check_genl_header,
    pack_genl_header,
    pack_header,
)
from tsemu.wire.taskstats import carries_descriptor

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
# genetlink's genl_header_check: commands from the family's resv_start_op on (TASKSTATS 5,
# nlctrl 11) must have reserved 0 and no flags beyond REQUEST, ACK, ECHO and a whole DUMP;
# EINVAL with an extended-ack message, before the command is looked up.

MEASURED_GENL_HEADER: Measured = {
    "unknown cmd, reserved set": (
        _msg(F, 1, 1, 99, reserved=1), False, True,
        ["5000000002000002010000000df00000eaffffff140000001f000100010000000000000063010100270001"
         "0067656e6c6d73676864722e7265736572766564206669656c64206973206e6f7420300000"]),
    "unknown cmd, MULTI flag": (
        _msg(F, 3, 1, 99), False, True,
        ["5c00000002000002010000000df00000eaffffff140000001f000300010000000000000063010000320001"
         "00616d626967756f7573206f7220726573657276656420626974732073657420696e206e6c6d73675f666c"
         "616773000000"]),
    "unknown cmd, ROOT flag": (
        _msg(F, 0x101, 1, 99), False, False,
        ["2800000002000000010000000df00000eaffffff140000001f000101010000000000000063010000"]),
    "unknown cmd, DUMP and ACK": (
        _msg(F, 0x305, 1, 99), False, True,
        ["2800000002000000010000000df00000a1ffffff140000001f000503010000000000000063010000"]),
    "unknown cmd, ECHO": (
        _msg(F, 0x9, 1, 99), False, True,
        ["2800000002000000010000000df00000a1ffffff140000001f000900010000000000000063010000"]),
    "CGROUPSTATS_NEW, reserved set": (
        _msg(F, 1, 1, 5, reserved=1), False, False,
        ["2800000002000000010000000df00000eaffffff140000001f000100010000000000000005010100"]),
    "GET, reserved set": (
        _msg(F, 1, 1, 1, _attr(2, _u32(ABSENT)), reserved=0xFFFF), False, True,
        ["3000000002000000010000000df00000fdffffff1c0000001f00010001000000000000000101ffff0800"
         "0200f0ffff3f"]),
    "GET, MULTI flag": (
        _msg(F, 3, 1, 1, _attr(2, _u32(ABSENT))), False, True,
        ["3000000002000000010000000df00000fdffffff1c0000001f0003000100000000000000010100000800"
         "0200f0ffff3f"]),
    "nlctrl cmd 11, reserved set": (
        _msg(0x10, 1, 1, 11, reserved=1), False, True,
        ["5000000002000002010000000df00000eaffffff14000000100001000100000000000000"
         "0b0101002700010067656e6c6d73676864722e7265736572766564206669656c64206973206e6f7420300000"]),
    "nlctrl GETPOLICY, reserved set": (
        _msg(0x10, 1, 1, 10, reserved=1), False, True,
        ["2800000002000000010000000df00000a1ffffff140000001000010001000000000000000a010100"]),
}


@pytest.mark.parametrize("name", list(MEASURED_GENL_HEADER))
def test_genl_header_check_as_measured(name: str) -> None:
    _check(MEASURED_GENL_HEADER, name)


def test_genl_header_check_rule() -> None:
    def genl(flags: int, cmd: int, reserved: int = 0) -> GenlMessage:
        return decode_genl(split_datagram(_msg(F, flags, 1, cmd, reserved=reserved))[0])

    for flags in (0x1, 0x5, 0x9, 0x301, 0x305, 0x30D):
        check_genl_header(genl(flags, 5), 5)
    for flags, cmd, reserved, message in ((0x1, 5, 1, RESERVED_NOT_ZERO),
                                          (0x3, 5, 0, RESERVED_FLAGS),
                                          (0x101, 200, 0, RESERVED_FLAGS),
                                          (0x201, 6, 0, RESERVED_FLAGS),
                                          (0x1001, 5, 0, RESERVED_FLAGS)):
        with pytest.raises(WireError) as raised:
            check_genl_header(genl(flags, cmd, reserved), 5)
        assert raised.value.errno == errno.EINVAL and raised.value.ext_msg == message
    check_genl_header(genl(0x3, 4, 7), 5)  # older commands: no check


# ---------------------------------------------------------------------------------------
# nlattr's liberal parse: bytes left over after the last whole attribute set the extended-ack
# message "bytes leftover after parsing attributes" and the parse goes on; the request's ACK
# carries it, and so does an error whose cause sets no message of its own (ESRCH, a cpulist
# error, ENOENT, EINVAL for no attribute). A policy failure's own message wins.

_LEFTOVER_TLV = ("2c0001006279746573206c6566746f7665722061667465722070617273696e672061747472"
                 "69627574657300")

MEASURED_LEFTOVER: Measured = {
    "GET tgid, leftover": (
        _msg(F, 1, 2, 1, _attr(2, _u32(ABSENT)), tail=b"\0\0"), False, True,
        ["6000000002000002020000000df00000fdffffff1e0000001f0001000200000000000000010100000800"
         "0200f0ffff3f00000000" + _LEFTOVER_TLV]),
    "GET tgid, leftover, capped": (
        _msg(F, 1, 2, 1, _attr(2, _u32(ABSENT)), tail=b"\0\0"), True, True,
        ["5000000002000003020000000df00000fdffffff1e0000001f0001000200000000000000"
         + _LEFTOVER_TLV]),
    "GET tgid, leftover, no EXT_ACK": (
        _msg(F, 1, 2, 1, _attr(2, _u32(ABSENT)), tail=b"\0\0"), False, False,
        ["3400000002000000020000000df00000fdffffff1e0000001f0001000200000000000000010100000800"
         "0200f0ffff3f00000000"]),
    "GET tgid, cut attribute left over": (
        _msg(F, 1, 2, 1, _attr(2, _u32(ABSENT)), tail=b"\x08\0\x01\0"), False, True,
        ["6000000002000002020000000df00000fdffffff200000001f0001000200000000000000010100000800"
         "0200f0ffff3f08000100" + _LEFTOVER_TLV]),
    "REGISTER, leftover, ACK": (
        _msg(F, 5, 3, 1, _attr(3, b"0\0"), tail=b"\0\0\0"), False, True,
        ["5000000002000003030000000df00000000000001f0000001f0005000300000000000000"
         + _LEFTOVER_TLV]),
    "REGISTER zz, leftover": (
        _msg(F, 1, 3, 1, _attr(3, b"zz\0"), tail=b"\0"), False, True,
        ["6000000002000002030000000df00000eaffffff1d0000001f0001000300000000000000010100000700"
         "03007a7a000000000000" + _LEFTOVER_TLV]),
    "GET pid of 2 bytes, leftover": (
        _msg(F, 1, 3, 1, _attr(1, b"\1\0"), tail=b"\0\0"), False, True,
        ["8800000002000002030000000df00000deffffff1e0000001f0001000300000000000000010100000600"
         "0100010000000000000027000100417474726962757465206661696c656420706f6c6963792076616c69"
         "646174696f6e00000800020014000000240004800c00040000000000000000000c000500ffffffff0000"
         "00000800010004000000"]),
    "GET no attribute, leftover": (
        _msg(F, 1, 3, 1, tail=b"\0\0"), False, True,
        ["5800000002000002030000000df00000eaffffff160000001f0001000300000000000000010100000000"
         "0000" + _LEFTOVER_TLV]),
    "GETFAMILY nlctrl, leftover, ACK": (
        _msg(0x10, 5, 4, 3, _attr(2, b"nlctrl\0"), tail=b"\0\0"), False, True,
        ["8800000010000000040000000df00000010200000b0002006e6c6374726c000006000100100000000800"
         "030002000000080004000000000008000500000000002c000600140001000800010003000000080002000e"
         "00000014000200080001000a000000080002000c0000001c0007001800010008000200100000000b0001"
         "006e6f746966790000",
         "5000000002000003040000000df0000000000000220000001000050004000000000000002c000100627974"
         "6573206c6566746f7665722061667465722070617273696e67206174747269627574657300"]),
    "GETFAMILY unknown, leftover": (
        _msg(0x10, 1, 4, 3, _attr(2, b"NOPE\0"), tail=b"\0\0"), False, True,
        ["6400000002000002040000000df00000feffffff220000001000010004000000000000000301000009000200"
         "4e4f504500000000000000002c0001006279746573206c6566746f7665722061667465722070617273696e"
         "67206174747269627574657300"]),
}


@pytest.mark.parametrize("name", list(MEASURED_LEFTOVER))
def test_leftover_warning_as_measured(name: str) -> None:
    _check(MEASURED_LEFTOVER, name)


def test_leftover_counts_what_follows_the_last_whole_attribute() -> None:
    one = _attr(1, _u32(7))
    assert leftover(one) == 0 and parse_warning(one) is None
    assert leftover(one + b"\0\0") == 2
    assert leftover(one + b"\x08\0\x01\0") == 4, "an attribute claiming more than is left"
    assert leftover(one + b"\x02\0\x01\0") == 4, "an attribute shorter than its header"
    assert leftover(_attr(1, b"\1")[:5]) == 0, "an unpadded last attribute leaves nothing"
    assert parse_warning(b"\0") == LEFTOVER


def test_leftover_warning_is_not_sent_without_ext_ack() -> None:
    datagram = _msg(F, 5, 3, 1, _attr(3, b"0\0"), tail=b"\0\0")
    (ack,) = _answers(datagram)
    assert decode_error(split_datagram(ack)[0]).tlvs == []


# ---------------------------------------------------------------------------------------
# nlctrl's GETFAMILY dump is parsed strictly (the op lacks GENL_DONT_VALIDATE_DUMP_STRICT):
# an unknown attribute type, a fixed-size attribute of another length, a NESTED bit where no
# nest belongs, leftover bytes: EINVAL with the matching message, even though the dump
# itself ignores the lookup keys.

MEASURED_DUMP_STRICT: Measured = {
    "dump, unknown attribute": (
        _msg(0x10, 0x301, 5, 3, _attr(5, _u32(1))), False, True,
        ["5400000002000002050000000df00000eaffffff1c0000001000010305000000000000000301000008000500"
         "010000001b000100556e6b6e6f776e20617474726962757465207479706500000800020014000000"]),
    "dump, attribute type 0": (
        _msg(0x10, 0x301, 5, 3, _attr(0, _u32(1))), False, True,
        ["5400000002000002050000000df00000eaffffff1c0000001000010305000000000000000301000008000000"
         "010000001b000100556e6b6e6f776e20617474726962757465207479706500000800020014000000"]),
    "dump, leftover": (
        _msg(0x10, 0x301, 5, 3, tail=b"\0\0"), False, True,
        ["5800000002000002050000000df00000eaffffff16000000100001030500000000000000030100000000"
         "0000" + _LEFTOVER_TLV]),
    "dump, FAMILY_ID of 4 bytes": (
        _msg(0x10, 0x301, 5, 3, _attr(1, _u32(0x10))), False, True,
        ["7c00000002000002050000000df00000eaffffff1c0000001000010305000000000000000301000008000100"
         "100000001d000100696e76616c696420617474726962757465206c656e677468000000000800020014000000"
         "240004800c00040000000000000000000c000500ffff0000000000000800010003000000"]),
    "dump, FAMILY_ID of 4 bytes, no EXT_ACK": (
        _msg(0x10, 0x301, 5, 3, _attr(1, _u32(0x10))), False, False,
        ["3000000002000000050000000df00000eaffffff1c000000100001030500000000000000030100000800"
         "010010000000"]),
    "dump, NESTED name": (
        _msg(0x10, 0x301, 5, 3, _attr(0x8002, b"nlctrl\0")), False, True,
        ["7000000002000002050000000df00000eaffffff20000000100001030500000000000000030100000b00"
         "02806e6c6374726c00001e0001004e4c415f465f4e4553544544206e6f7420657870656374656400000008"
         "0002001400000014000480080007000f000000080001000c000000"]),
    "dump, unterminated name": (
        _msg(0x10, 0x301, 5, 3, _attr(2, b"nlctrl")), False, True,
        ["7800000002000002050000000df00000eaffffff20000000100001030500000000000000030100000a00"
         "02006e6c6374726c000027000100417474726962757465206661696c656420706f6c6963792076616c69"
         "646174696f6e0000080002001400000014000480080007000f000000080001000c000000"]),
}


@pytest.mark.parametrize("name", list(MEASURED_DUMP_STRICT))
def test_dump_strict_validation_as_measured(name: str) -> None:
    _check(MEASURED_DUMP_STRICT, name)


@pytest.mark.parametrize("attrs", [b"", _attr(2, b"nlctrl\0"), _attr(0x4001, b"\x10\0"),
                                   _attr(1, b"\x10\0") + _attr(2, b"TASKSTATS\0")],
                         ids=["none", "name", "BYTEORDER id", "id and name"])
def test_dump_with_valid_attributes_still_dumps(attrs: bytes) -> None:
    (answer,) = _answers(_msg(0x10, 0x301, 5, 3, attrs), ext_ack=True)
    types = [m.header.type for m in split_datagram(answer)]
    assert types == [0x10, 0x10, 3], "every family, then DONE: the keys are ignored"


def test_strict_parse_rule() -> None:
    with pytest.raises(WireError) as raised:
        parse_attrs(_attr(1, b"\x10\0\0\0"), GETFAMILY_POLICY, GETFAMILY_MAXATTR, strict=True)
    assert raised.value.errno == errno.EINVAL and raised.value.attr_offset == 0
    attrs = parse_attrs(_attr(1, b"\x10\0\0\0"), GETFAMILY_POLICY, GETFAMILY_MAXATTR)
    assert attrs[1].payload == b"\x10\0\0\0", "a liberal parse takes a longer integer"
    nest = {1: AttrPolicy(AttrType.NESTED)}
    assert parse_attrs(_attr(0x8001, b""), nest, 1, strict=True)[1].nested


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


# ---------------------------------------------------------------------------------------
# CGROUPSTATS descriptors: a client sends one with each CGROUPSTATS request whose FD attribute
# (of at least 4 bytes) names an open descriptor (shim/io.c); the kernel model pairs them with
# exactly those requests, so a request that has none (no FD attribute, a 2-byte one) or that
# is refused before its handler does not take the next request's descriptor.

def _cgroupstats(seq: int, fd_payload: bytes | None, flags: int = 5) -> bytes:
    attrs = _attr(1, fd_payload) if fd_payload is not None else b""
    return _msg(F, flags, seq, 4, attrs)


def test_carries_descriptor_follows_the_shims_rule() -> None:
    def carries(datagram: bytes) -> bool:
        return carries_descriptor(split_datagram(datagram)[0], F)

    assert carries(_cgroupstats(1, _u32(3)))
    assert carries(_cgroupstats(1, _u32(3) + b"\0\0\0\0"))
    assert carries(_msg(F, 1, 1, 4, _attr(0x4001, _u32(3))))
    assert not carries(_cgroupstats(1, None))
    assert not carries(_cgroupstats(1, b"\3\0"))
    assert not carries(_cgroupstats(1, _u32(3), flags=0x4))
    assert not carries(_cgroupstats(1, _u32(3), flags=0x301))
    assert not carries(_msg(F, 1, 1, 1, _attr(1, _u32(3))))
    assert not carries(_msg(0x10, 1, 1, 4, _attr(1, _u32(3))))


@pytest.mark.parametrize("first", [_cgroupstats(1, None), _cgroupstats(1, b"\3\0"),
                                   pack_header(18, F, 5, 1, 0) + b"\4\1\0\0"],
                         ids=["no FD", "short FD", "genl header cut"])
def test_a_request_without_a_descriptor_does_not_take_the_next_ones(first: bytes,
                                                                    tmp_path: Path) -> None:
    datagram = first + _cgroupstats(2, _u32(7))
    ref = CgroupRef(str(tmp_path), is_dir=True)
    kernel = _kernel(cgroup_roots=(str(tmp_path),))
    answers = [a.data for a in kernel.handle(datagram, Sender(PORT, cgroup_refs=[ref]))
               if isinstance(a, Send)]
    first_errno = -struct.unpack_from("<i", answers[0], 16)[0]
    assert first_errno in (errno.EINVAL, errno.ERANGE)
    assert split_datagram(answers[1])[0].header.type == F, "the second gets the descriptor"
    assert split_datagram(answers[1])[0].header.seq == 2
