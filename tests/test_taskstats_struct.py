"""struct taskstats of each version: sizes, offsets, and the fast codec against construct."""

from __future__ import annotations

import itertools

import construct as cs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsemu.wire import VERSIONS, WireError, layout, layout_for
from tsemu.wire.derive import FastCodec, nul_padded
from tsemu.wire.taskstats_struct import CGROUPSTATS_CODEC, FIELDS

#: Sizes from KERNEL-FACTS.md (v8, 13 = Linux 6.1, 14, 16 = Linux 6.18, 17 = Linux 7.2) and
#: from the field table for the versions in between.
SIZES = {7: 328, 8: 328, 9: 344, 10: 352, 11: 368, 12: 400, 13: 416, 14: 432, 16: 560, 17: 688}

#: Offsets from the layout table in KERNEL-FACTS.md.
OFFSETS = {
    "version": 0, "ac_exitcode": 4, "ac_flag": 8, "ac_nice": 9, "cpu_count": 16,
    "cpu_delay_total": 24, "blkio_count": 32, "cpu_run_virtual_total": 72, "ac_comm": 80,
    "ac_sched": 112, "ac_pad": 113, "ac_uid": 120, "ac_gid": 124, "ac_pid": 128,
    "ac_ppid": 132, "ac_btime": 136, "ac_etime": 144, "ac_utime": 152, "ac_stime": 160,
    "ac_minflt": 168, "ac_majflt": 176, "coremem": 184, "virtmem": 192, "hiwater_rss": 200,
    "hiwater_vm": 208, "read_char": 216, "write_char": 224, "read_syscalls": 232,
    "write_syscalls": 240, "read_bytes": 248, "write_bytes": 256, "cancelled_write_bytes": 264,
    "nvcsw": 272, "nivcsw": 280, "ac_utimescaled": 288, "ac_stimescaled": 296,
    "cpu_scaled_run_real_total": 304, "freepages_count": 312, "freepages_delay_total": 320,
    "thrashing_count": 328, "thrashing_delay_total": 336, "ac_btime64": 344,
    "compact_count": 352, "compact_delay_total": 360, "ac_tgid": 368, "ac_tgetime": 376,
    "ac_exe_dev": 384, "ac_exe_inode": 392, "wpcopy_count": 400, "wpcopy_delay_total": 408,
    "irq_count": 416, "irq_delay_total": 424, "cpu_delay_max": 432, "cpu_delay_min": 440,
    "irq_delay_min": 552, "cpu_delay_max_ts": 560, "irq_delay_max_ts": 672,
}


@pytest.mark.parametrize("version", VERSIONS)
def test_size_of_each_version(version: int) -> None:
    assert layout(version).size == SIZES[version]
    assert layout(version).struct.sizeof() == SIZES[version]


@pytest.mark.parametrize("name", sorted(OFFSETS))
def test_field_offsets(name: str) -> None:
    full = layout(17)
    marker = {"tv_sec": 0x0102030405060708, "tv_nsec": 0} if name.endswith("_ts") else 0x5A
    if name == "ac_comm":
        marker = b"\x5a"
    elif name == "ac_pad":
        marker = b"\x5a\0\0"
    probe = {"version": 0, name: marker}
    data = full.build(probe)
    expect = 0x08 if name.endswith("_ts") else 0x5A
    assert data.index(bytes([expect])) == OFFSETS[name]


def test_each_version_is_a_prefix_of_the_next() -> None:
    values = {"ac_pid": 7, "cpu_count": 3, "ac_comm": b"init", "irq_count": 2}
    for older, newer in itertools.pairwise(VERSIONS):
        a = layout(older).build({**values, "version": 1})
        b = layout(newer).build({**values, "version": 1})
        assert b[: len(a)] == a


def test_unoffered_version_is_refused() -> None:
    with pytest.raises(WireError):
        layout(15)


def test_layout_for_reads_the_version_field_then_the_size() -> None:
    assert layout_for(layout(13).build({})).version == 13
    assert layout_for(layout(16).build({}) + b"\0" * 40).version == 16
    newer = layout(17).build({}) + b"\0" * 16
    assert layout_for(newer[:2].replace(b"\x11", b"\x12") + newer[2:]).version == 17
    with pytest.raises(WireError):
        layout_for(b"\x10\0" + b"\0" * 100)


_u64 = st.integers(0, 2**64 - 1)


def _values(version: int) -> st.SearchStrategy[dict[str, object]]:
    fields = {}
    for f in FIELDS:
        if f.since > version:
            continue
        fields[f.name] = {
            "u8": st.integers(0, 255), "u16": st.integers(0, 2**16 - 1),
            "u32": st.integers(0, 2**32 - 1), "u64": _u64,
            "comm": st.binary(max_size=32).map(lambda b: b.rstrip(b"\0")),
            "pad3": st.binary(min_size=3, max_size=3),
            "timespec": st.fixed_dictionaries({"tv_sec": st.integers(-2**63, 2**63 - 1),
                                               "tv_nsec": st.integers(-2**63, 2**63 - 1)}),
        }[f.ctype]
    return st.fixed_dictionaries(fields)


@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
def test_fast_codec_equals_construct(version: int, data: st.DataObject) -> None:
    values = data.draw(_values(version))
    lay = layout(version)
    fast = lay.build(values)
    assert fast == lay.build_construct(values)
    parsed = lay.parse(fast)
    assert parsed == values
    via_construct = lay.struct.parse(fast)
    for name in lay.names:
        got = via_construct[name]
        if isinstance(got, cs.Container):
            got = {k: v for k, v in got.items() if not k.startswith("_")}
        assert got == parsed[name]


def test_out_of_range_value_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        layout(16).build({"ac_pid": 2**32})
    with pytest.raises(WireError):
        layout(16).build({"ac_comm": "not bytes"})


def test_cgroupstats_layout() -> None:
    assert CGROUPSTATS_CODEC.size == 40
    data = CGROUPSTATS_CODEC.build({"nr_running": 2, "nr_io_wait": 5})
    assert data == (0).to_bytes(8, "little") + (2).to_bytes(8, "little") + bytes(16) + (
        5).to_bytes(8, "little")


def test_deriver_refuses_what_it_cannot_express() -> None:
    with pytest.raises(TypeError):
        FastCodec(cs.Struct("x" / cs.Int32ub))
    with pytest.raises(TypeError):
        FastCodec(cs.Struct("x" / cs.PrefixedArray(cs.Int8ul, cs.Int8ul)))
    codec = FastCodec(cs.Struct("a" / cs.Int8ul, cs.Padding(3), "n" / nul_padded(4)))
    assert codec.build({"a": 1, "n": b"ab"}) == b"\x01\0\0\0ab\0\0"
    assert codec.parse(b"\x01\0\0\0ab\0\0") == {"a": 1, "n": b"ab"}
