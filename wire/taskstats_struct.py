"""`struct taskstats` of every version tsemu offers, and `struct cgroupstats`.

Everything about the layout of struct taskstats lives in the table `FIELDS` below: each row is
a field, its C type, the version that added it, and any `__attribute__((aligned(8)))` the uapi
header gives it. Offsets and padding follow from C's rules; the construct `Struct` of a version is
generated from the rows of that version and older; its fast codec is derived from that Struct.
Nothing else in tsemu knows an offset.

Versions: each version's struct is a prefix of the next, except 15, which placed the delay
max/min fields in the middle and was replaced by 16 (max/min moved to the end); tsemu leaves 15
out. Version 7 (Linux 2.6.28 to about 2.6.35) added freepages_count and freepages_delay_total;
version 8 changed no field (it came with the TASKSTATS_TYPE_NULL padding attribute), so 7 and 8
have the same 328 bytes. The fields between cpu_run_virtual_total ("version 1 ends here", the
uapi header says) and freepages came in versions 2 to 6, whose exact steps the header does not
record: they are tagged 6, as tsemu offers nothing older than 7.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import construct as cs

from .derive import FastCodec, nul_padded
from .errors import WireError

TS_COMM_LEN = 32

#: The C types the table uses, with their natural alignment.
_TIMESPEC = cs.Struct("tv_sec" / cs.Int64sl, "tv_nsec" / cs.Int64sl)
_TYPES: dict[str, tuple[Any, int]] = {
    "u8": (cs.Int8ul, 1),
    "u16": (cs.Int16ul, 2),
    "u32": (cs.Int32ul, 4),
    "u64": (cs.Int64ul, 8),
    "comm": (nul_padded(TS_COMM_LEN), 1),
    "pad3": (cs.Bytes(3), 1),
    "timespec": (_TIMESPEC, 8),
}


#: The zero value of each non-integer C type, for fields a caller leaves out.
_ZERO: dict[str, Any] = {"comm": b"", "pad3": b"\0\0\0", "timespec": {"tv_sec": 0, "tv_nsec": 0}}


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str
    since: int
    align: int = 0  # an explicit __attribute__((aligned(N))), 0 for none


#: The delay-accounting categories, in the order the struct lists their max/min fields.
DELAY_CATEGORIES: tuple[str, ...] = (
    "cpu", "blkio", "swapin", "freepages", "thrashing", "compact", "wpcopy", "irq",
)


def _delay_max_min(since: int) -> tuple[Field, ...]:
    return tuple(Field(f"{c}_delay_{m}", "u64", since)
                 for c in DELAY_CATEGORIES for m in ("max", "min"))


def _delay_max_ts(since: int) -> tuple[Field, ...]:
    return tuple(Field(f"{c}_delay_max_ts", "timespec", since) for c in DELAY_CATEGORIES)


#: struct taskstats, in declaration order (uapi <linux/taskstats.h>).
FIELDS: tuple[Field, ...] = (
    Field("version", "u16", 1),
    Field("ac_exitcode", "u32", 1),
    Field("ac_flag", "u8", 1),
    Field("ac_nice", "u8", 1),
    Field("cpu_count", "u64", 1, align=8),
    Field("cpu_delay_total", "u64", 1),
    Field("blkio_count", "u64", 1),
    Field("blkio_delay_total", "u64", 1),
    Field("swapin_count", "u64", 1),
    Field("swapin_delay_total", "u64", 1),
    Field("cpu_run_real_total", "u64", 1),
    Field("cpu_run_virtual_total", "u64", 1),
    Field("ac_comm", "comm", 6),
    Field("ac_sched", "u8", 6, align=8),
    Field("ac_pad", "pad3", 6),
    Field("ac_uid", "u32", 6, align=8),
    Field("ac_gid", "u32", 6),
    Field("ac_pid", "u32", 6),
    Field("ac_ppid", "u32", 6),
    Field("ac_btime", "u32", 6),
    Field("ac_etime", "u64", 6, align=8),
    Field("ac_utime", "u64", 6),
    Field("ac_stime", "u64", 6),
    Field("ac_minflt", "u64", 6),
    Field("ac_majflt", "u64", 6),
    Field("coremem", "u64", 6),
    Field("virtmem", "u64", 6),
    Field("hiwater_rss", "u64", 6),
    Field("hiwater_vm", "u64", 6),
    Field("read_char", "u64", 6),
    Field("write_char", "u64", 6),
    Field("read_syscalls", "u64", 6),
    Field("write_syscalls", "u64", 6),
    Field("read_bytes", "u64", 6),
    Field("write_bytes", "u64", 6),
    Field("cancelled_write_bytes", "u64", 6),
    Field("nvcsw", "u64", 6),
    Field("nivcsw", "u64", 6),
    Field("ac_utimescaled", "u64", 6),
    Field("ac_stimescaled", "u64", 6),
    Field("cpu_scaled_run_real_total", "u64", 6),
    Field("freepages_count", "u64", 7),
    Field("freepages_delay_total", "u64", 7),
    Field("thrashing_count", "u64", 9),
    Field("thrashing_delay_total", "u64", 9),
    Field("ac_btime64", "u64", 10),
    Field("compact_count", "u64", 11),
    Field("compact_delay_total", "u64", 11),
    Field("ac_tgid", "u32", 12),
    Field("ac_tgetime", "u64", 12, align=8),
    Field("ac_exe_dev", "u64", 12),
    Field("ac_exe_inode", "u64", 12),
    Field("wpcopy_count", "u64", 13),
    Field("wpcopy_delay_total", "u64", 13),
    Field("irq_count", "u64", 14),
    Field("irq_delay_total", "u64", 14),
    *_delay_max_min(16),
    *_delay_max_ts(17),
)

#: Versions tsemu can speak, oldest first (15 left out: see the module docstring).
VERSIONS: tuple[int, ...] = (7, 8, 9, 10, 11, 12, 13, 14, 16, 17)
#: What Linux 6.18 (the measured host) speaks.
DEFAULT_VERSION = 16

#: The kind of each field for tools: counters and times are ints, ac_comm bytes, the max
#: timestamps a {tv_sec, tv_nsec} mapping.
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)


def _build_struct(version: int) -> cs.Struct:
    """The construct Struct of `version`, with C's padding made explicit."""
    subcons: list[cs.Construct] = []
    offset = 0
    max_align = 1
    for f in FIELDS:
        if f.since > version:
            continue
        con, natural = _TYPES[f.ctype]
        align = max(natural, f.align)
        max_align = max(max_align, align)
        gap = -offset % align
        if gap:
            subcons.append(cs.Padding(gap))
            offset += gap
        subcons.append(f.name / con)
        offset += con.sizeof()
    tail = -offset % max_align
    if tail:
        subcons.append(cs.Padding(tail))
    return cs.Struct(*subcons)


@dataclass(frozen=True)
class TaskstatsLayout:
    """One version of struct taskstats: its construct definition and derived fast codec."""

    version: int
    struct: cs.Struct
    codec: FastCodec

    @property
    def size(self) -> int:
        return self.codec.size

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in this version, in order (ac_pad included)."""
        return tuple(f.name for f in FIELDS if f.since <= self.version)

    def build(self, values: Mapping[str, Any]) -> bytes:
        """The struct's bytes; absent fields are zero and `version` defaults to this layout's.
        Uses the derived fast codec; `build_construct` is the reference it is tested against."""
        if "version" not in values:
            values = {**values, "version": self.version}
        try:
            return self.codec.build(values)
        except Exception as exc:  # struct.error, TypeError: a value of the wrong type or range
            raise WireError(errno.EINVAL, f"cannot encode taskstats v{self.version}: {exc}") \
                from None

    def build_construct(self, values: Mapping[str, Any]) -> bytes:
        """The same bytes through construct alone: slower, the reference for the fast path."""
        full = {f.name: values.get(f.name, _ZERO.get(f.ctype, 0))
                for f in FIELDS if f.since <= self.version}
        if "version" not in values:
            full["version"] = self.version
        return bytes(self.struct.build(full))

    def parse(self, data: bytes, offset: int = 0) -> dict[str, Any]:
        """Field values from `data` at `offset` (which must hold `size` bytes)."""
        return self.codec.parse(data, offset)


@cache
def layout(version: int) -> TaskstatsLayout:
    """The layout of `version`; EINVAL for a version tsemu does not offer."""
    if version not in VERSIONS:
        raise WireError(errno.EINVAL, f"taskstats version {version} is not offered "
                        f"(offered: {', '.join(map(str, VERSIONS))})")
    definition = _build_struct(version)
    return TaskstatsLayout(version, definition, FastCodec(definition))


def layout_for(raw: bytes) -> TaskstatsLayout:
    """The layout a received struct is read with: the one its `version` field names if that
    fits in the bytes, else the newest that fits (versions only ever append fields)."""
    if len(raw) < 2:
        raise WireError(errno.EINVAL, f"a {len(raw)}-byte taskstats has no version field")
    named = int.from_bytes(raw[:2], "little")
    if named in VERSIONS and layout(named).size <= len(raw):
        return layout(named)
    fitting = [v for v in VERSIONS if layout(v).size <= len(raw)]
    if not fitting:
        raise WireError(errno.EINVAL, f"a {len(raw)}-byte taskstats is shorter than any "
                        f"version tsemu knows ({layout(VERSIONS[0]).size} bytes for "
                        f"v{VERSIONS[0]})")
    return layout(max(fitting, key=lambda v: (layout(v).size, v)))  # 7 and 8: 8


#: struct cgroupstats (uapi <linux/cgroupstats.h>).
CGROUPSTATS = cs.Struct(
    "nr_sleeping" / cs.Int64ul,
    "nr_running" / cs.Int64ul,
    "nr_stopped" / cs.Int64ul,
    "nr_uninterruptible" / cs.Int64ul,
    "nr_io_wait" / cs.Int64ul,
)
CGROUPSTATS_CODEC = FastCodec(CGROUPSTATS)
