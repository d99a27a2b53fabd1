"""The cpumask syntax of REGISTER/DEREGISTER: table of answers measured on a 6.18 host, and a
differential test that sends generated strings to the host kernel and compares errno.

`parse_cpulist` reads text (up to a NUL); `parse_cpumask_attr` reads an attribute's payload
as the kernel does, its last byte dropped (tests/test_kernel_rules.py has the measured rule).
The measured table's payloads end with a NUL where the NUL matters; " 0 , 1" was sent
without one, and the kernel read " 0 , " (an ACK either way)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.wire import (
    Flag,
    WireError,
    cpumask_maxlen,
    encode_taskstats_get,
    parse_cpulist,
    parse_cpumask_attr,
)

from .hostkernel import HostNetlink, host_cpu_counts, require_host_taskstats

#: payload -> CPUs on a 2-CPU machine, or the errno; measured on Linux 6.18 (NR_CPUS 256).
MEASURED_ON_2_CPUS: list[tuple[bytes, frozenset[int] | int]] = [
    (b"\0", frozenset()),
    (b"zz\0", errno.EINVAL),
    (b"0-9999\0", errno.ERANGE),
    (b" 0 , 1", frozenset({0, 1})),
    (b"N\0", frozenset({1})),
    (b"0-1:1/2\0", frozenset({0})),
    (b",\0", frozenset()),
    (b"0-\0", errno.EINVAL),
    (b"1-0\0", errno.EINVAL),
    (b" \0", frozenset()),
    (b"0\n\0", frozenset({0})),
    (b"\t0\0", frozenset({0})),
    (b"0-1:0/2\0", frozenset()),
    (b"0-1:3/2\0", errno.EINVAL),
    (b"0,\0", frozenset({0})),
    (b",0\0", frozenset({0})),
    (b"0\0zz", frozenset({0})),
    (b"0x1\0", errno.EINVAL),
    (b"+1\0", errno.EINVAL),
    (b"N-1\0", frozenset({1})),
    (b"0-N\0", frozenset({0, 1})),
    (b"0-1:\0", errno.EINVAL),
    (b"all\0", frozenset({0, 1})),
    (b"ALL\0", frozenset({0, 1})),
    (b"allx\0", errno.EINVAL),
    (b"0 1\0", frozenset({0, 1})),
    (b"2\0", errno.ERANGE),
    (b"4294967296\0", errno.EOVERFLOW),
    (b"4294967295\0", errno.EINVAL),
    (b"0-4294967295\0", errno.EINVAL),
    (b"99999999999999999999999\0", errno.EOVERFLOW),
    (b"0" * 1636, frozenset({0})),
    (b"0" * 1637, errno.E2BIG),
]


@pytest.mark.parametrize(("payload", "expected"), MEASURED_ON_2_CPUS,
                         ids=[repr(p[:16]) for p, _ in MEASURED_ON_2_CPUS])
def test_measured_answers(payload: bytes, expected: frozenset[int] | int) -> None:
    if isinstance(expected, int):
        with pytest.raises(WireError) as raised:
            parse_cpulist(payload, 2)
        assert raised.value.errno == expected
    else:
        assert parse_cpulist(payload, 2) == expected


@pytest.mark.parametrize(("payload", "expected"), MEASURED_ON_2_CPUS,
                         ids=[repr(p[:16]) for p, _ in MEASURED_ON_2_CPUS])
def test_measured_answers_as_attributes(payload: bytes, expected: frozenset[int] | int) -> None:
    """The same payloads as the kernel reads an attribute: those ending with a NUL read
    alike; the others lose their last byte."""
    if not payload.endswith(b"\0") and expected != errno.E2BIG:  # the length comes first
        expected = parse_cpulist(payload[:-1], 2) if len(payload) > 1 else frozenset()
    if isinstance(expected, int):
        with pytest.raises(WireError) as raised:
            parse_cpumask_attr(payload, 2)
        assert raised.value.errno == expected
    else:
        assert parse_cpumask_attr(payload, 2) == expected


def test_groups_and_newlines_follow_bitmap_parselist() -> None:
    assert parse_cpulist(b"0-15:2/4", 16) == {0, 1, 4, 5, 8, 9, 12, 13}
    assert parse_cpulist(b"0-1\n3", 16) == {0, 1}, "a newline after a plain region ends the list"
    assert parse_cpulist(b"0-1:1/2\n3", 16) == {0, 3}, "after a pattern the kernel reads on"
    assert parse_cpulist(b"\n3", 16) == {3}, "leading white space, newline included, is skipped"
    assert parse_cpulist(b"1\xa02", 16) == {1, 2}, "NBSP is white space in the kernel's ctype"


def test_maxlen_follows_nr_cpus_config() -> None:
    assert cpumask_maxlen(256) == 1636
    assert cpumask_maxlen(8192) == 49252
    with pytest.raises(WireError) as raised:
        parse_cpulist(b"0" * 101, 4, nr_cpus_config=0)
    assert raised.value.errno == errno.E2BIG


_cpulist_text = st.text(alphabet="0123456789-,:/N aAlL\n\t", max_size=24).map(str.encode)


@given(_cpulist_text)
def test_parser_raises_only_wire_errors(payload: bytes) -> None:
    try:
        cpus = parse_cpulist(payload, 4)
    except WireError as exc:
        assert exc.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW, errno.E2BIG)
    else:
        assert cpus <= {0, 1, 2, 3}


@pytest.fixture(scope="module")
def host() -> HostNetlink:
    return require_host_taskstats()


@pytest.mark.host
@settings(max_examples=300)
@given(payload=_cpulist_text | st.binary(max_size=12), nul=st.booleans())
def test_errno_matches_the_host_kernel(host: HostNetlink, payload: bytes, nul: bool) -> None:
    """Each generated payload, with or without a final NUL, gets the same errno from tsemu's
    parser as from the host."""
    nr_cpus, nr_config = host_cpu_counts()
    if nul:
        payload += b"\0"
    request = encode_taskstats_get(host.family, register=payload, seq=7,
                                   flags=Flag.REQUEST | Flag.ACK)
    answer = host.answer(request)
    kernel = -int.from_bytes(answer[16:20], "little", signed=True)
    host.answer(encode_taskstats_get(host.family, deregister=b"all\0", seq=8,
                                     flags=Flag.REQUEST | Flag.ACK))
    try:
        if not payload:  # an empty attribute fails the STRING policy first
            raise WireError(errno.ERANGE, "empty")
        parse_cpumask_attr(payload, nr_cpus, nr_config)
        ours = 0
    except WireError as exc:
        ours = exc.errno
    assert ours == kernel, f"payload {payload!r}"
