"""Micro-benchmark: encoding one TASKSTATS GET reply (v16, 596 bytes).

Reference: the same message built by construct alone (every header and the struct through
construct's `build`). Measured: the derived fast path the server uses (the struct through the
`struct` format derived from the same construct definition, the framing from a prebuilt
`ReplyTemplate`). Both produce the same bytes; the benchmark checks that first.
"""

from __future__ import annotations

import timeit
from typing import Any

from tsemu.wire import TaskstatsType, layout
from tsemu.wire.attributes import NLATTR
from tsemu.wire.netlink import GENLMSGHDR, NLMSGHDR
from tsemu.wire.taskstats import ReplyTemplate

FAMILY = 0x1F
VALUES: dict[str, Any] = {
    "version": 16, "ac_exitcode": 0, "ac_flag": 0x20, "ac_nice": 0, "cpu_count": 12,
    "cpu_delay_total": 4_500_000, "blkio_count": 3, "blkio_delay_total": 3_000_000,
    "ac_comm": b"bash", "ac_uid": 1000, "ac_gid": 1000, "ac_pid": 4242, "ac_ppid": 1,
    "ac_btime": 1_700_000_000, "ac_etime": 2_000_000, "ac_utime": 120_000, "ac_stime": 30_000,
    "ac_minflt": 900, "read_char": 4096, "write_char": 1024, "nvcsw": 50, "nivcsw": 4,
    "ac_btime64": 1_700_000_000, "ac_tgid": 4242, "cpu_delay_max": 900_000,
    "cpu_delay_min": 1000,
}


def construct_only(seq: int, portid: int) -> bytes:
    lay = layout(16)
    stats = lay.struct.build(VALUES | {"ac_pad": b"\0\0\0"} | {
        n: 0 for n in lay.names if n not in VALUES and n != "ac_pad"})
    pid_attr = NLATTR.build({"length": 8, "type": 1}) + (4242).to_bytes(4, "little")
    stats_attr = NLATTR.build({"length": 4 + len(stats), "type": 3}) + stats
    aggr = NLATTR.build({"length": 4 + len(pid_attr) + len(stats_attr), "type": 4})
    body = GENLMSGHDR.build({"cmd": 2, "version": 1, "reserved": 0}) + aggr + pid_attr + stats_attr
    head = NLMSGHDR.build({"length": 16 + len(body), "type": FAMILY, "flags": 0, "seq": seq,
                           "pid": portid})
    return bytes(head + body)


_TEMPLATE = ReplyTemplate(FAMILY, TaskstatsType.AGGR_PID, layout(16).size)
_BUILD = layout(16).codec.build


def fast_path(seq: int, portid: int) -> bytes:
    return _TEMPLATE.build(seq, portid, 4242, _BUILD(VALUES))


def per_call_us(fn: Any, number: int) -> float:
    best = min(timeit.repeat(lambda: fn(7, 99), number=number, repeat=5))
    return best / number * 1e6


def run() -> dict[str, Any]:
    assert construct_only(7, 99) == fast_path(7, 99), "the two paths must build the same bytes"
    assert len(fast_path(7, 99)) == 596
    slow = per_call_us(construct_only, 500)
    fast = per_call_us(fast_path, 20000)
    return {
        "name": "encode v16 GET reply",
        "construct_us": round(slow, 2),
        "fast_us": round(fast, 2),
        "speedup": round(slow / fast, 1),
    }


def report(result: dict[str, Any]) -> str:
    return (f"{result['name']}: construct-only {result['construct_us']:.1f} us, derived fast "
            f"path {result['fast_us']:.2f} us per reply ({result['speedup']:.0f}x faster)")
