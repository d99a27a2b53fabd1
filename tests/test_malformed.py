"""Arbitrary bytes never make a decoder raise anything but WireError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.wire import (
    WireError,
    decode_cgroupstats_get,
    decode_cgroupstats_new,
    decode_error,
    decode_genl,
    decode_getfamily,
    decode_message,
    decode_newfamily,
    decode_taskstats_get,
    decode_taskstats_new,
    iter_attrs,
    layout_for,
    parse_cpulist,
    parse_cpumask_attr,
    split_datagram,
)
from tsemu.wire.netlink import pack_header

DECODERS = (decode_getfamily, decode_newfamily, decode_taskstats_get, decode_taskstats_new,
            decode_cgroupstats_get, decode_cgroupstats_new)


def _exercise(datagram: bytes) -> None:
    for message in split_datagram(datagram):
        assert 16 <= message.header.length == len(message.raw)
        for family in (0x10, 0x1F):
            try:
                decoded = decode_message(message, family)
                decoded.encode()
                for record in getattr(decoded, "records", ()):
                    record.values()
            except WireError:
                pass
        try:
            decode_error(message)
        except WireError:
            pass
        try:
            genl = decode_genl(message)
        except WireError:
            continue
        for decoder in DECODERS:
            try:
                decoder(genl)
            except WireError:
                pass
        try:
            decode_getfamily(genl, strict=True)
        except WireError:
            pass


@settings(max_examples=500)
@given(st.binary(max_size=256))
def test_arbitrary_bytes(data: bytes) -> None:
    _exercise(data)


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    """Plausible messages: a valid header for a random type, random payload, wrong lengths."""
    payload = draw(st.binary(max_size=120))
    kind = draw(st.sampled_from([1, 2, 3, 0x10, 0x1F, 0x20]))
    length = draw(st.one_of(st.just(16 + len(payload)), st.integers(0, 200)))
    flags = draw(st.integers(0, 0xFFFF))
    return pack_header(length, kind, flags, 1, 2) + payload


@settings(max_examples=1000)
@given(st.lists(framed(), min_size=1, max_size=3))
def test_framed_garbage(parts: list[bytes]) -> None:
    _exercise(b"".join(parts))


@given(st.binary(max_size=700))
def test_taskstats_struct_of_any_size(data: bytes) -> None:
    try:
        layout_for(data).parse(data)
    except WireError:
        pass


@given(st.binary(max_size=64))
def test_attribute_walk_and_cpulist(data: bytes) -> None:
    for attr in iter_attrs(data):
        assert len(attr.payload) <= len(data)
    for parse in (parse_cpulist, parse_cpumask_attr):
        try:
            parse(data, 8)
        except WireError:
            pass
