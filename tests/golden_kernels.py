"""The captures from other kernels (tests/golden/kernel-MAJOR.MINOR.json), for their tests.

`make golden KERNEL=6.1` (scripts/golden_vm.py) boots Debian's own kernel of a generation
under QEMU and stores what it answered. Each capture is held against the tsemu profile named
after its major.minor; where tsemu has no such profile yet the tests skip, naming the profile,
and where tsemu is known to answer differently the difference is written down in `KNOWN`, a
table, so that each one is an expected failure with its reason (strict: once tsemu is fixed,
the test fails until the entry is removed, and the table stays true).

What a capture shows about the kernel's rules without depending on what ran inside it (its
pids, times, memory) is reduced here to small comparable facts ("shapes"), computed the same
way from the kernel's datagrams and from tsemu's.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tsemu.wire import TaskstatsReply, TaskstatsType, decode_message, split_datagram

GOLDEN_DIR = Path(__file__).parent / "golden"
CAPTURE_FILE = re.compile(r"^kernel-(\d+\.\d+)\.json$")

#: Where tsemu is known to differ from a captured kernel: (major.minor, check) -> why.
#: A check is a replayed case's name or one of the rule checks of test_golden_kernels.py.
#: Measured against Debian 6.1.192 (bookworm), 6.12.118 (trixie) and 7.2.13 (sid).
#: (Empty since the profile table, issue 14, took in what the three captures showed: the
#: machine's NR_CPUS, each generation's family id, the 6.1/6.12 TGID backports, exit_group's
#: leader-first order and the threads' shared mm.)
KNOWN: dict[tuple[str, str], str] = {}


def captures() -> dict[str, dict[str, Any]]:
    """Every stored capture of another kernel, by major.minor (kernel.json is the host's)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(GOLDEN_DIR.iterdir()):
        m = CAPTURE_FILE.match(path.name)
        if m and path.is_file() and not path.is_symlink():
            out[m.group(1)] = json.loads(path.read_text())
    return out


def known(kernel: str, check: str) -> list[pytest.MarkDecorator]:
    """The xfail mark for a known difference, or none."""
    reason = KNOWN.get((kernel, check)) or KNOWN.get(("*", check))
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def profile_or_skip(kernel: str, capture: dict[str, Any]) -> Any:
    """tsemu's profile for this capture's kernel; skips, naming the missing profile, if none."""
    from tsemu.emulator.model.profiles import profile

    try:
        return profile(kernel)
    except ValueError:
        pytest.skip(f"no tsemu profile {kernel!r} yet for the capture of Linux "
                    f"{capture['kernel']} (tests/golden/kernel-{kernel}.json)")


def cases_by_name(capture: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in capture["cases"]}


def replies(case: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(r) for r in case["replies"]]


def events(datagrams: list[bytes], family: int) -> list[TaskstatsReply]:
    out = []
    for datagram in datagrams:
        for message in split_datagram(datagram):
            decoded = decode_message(message, family)
            assert isinstance(decoded, TaskstatsReply)
            out.append(decoded)
    return out


Shape = tuple[tuple[int, tuple[tuple[str, bool, int, int], ...]], ...]


def exit_shape(datagrams: list[bytes], family: int, tgid: int) -> Shape:
    """Per datagram: its length and, per record, (aggregate, is it the leader's, ac_flag,
    ac_exitcode): what a listener can tell of an exit apart from times and counts."""
    return tuple(
        (len(datagram), tuple((r.aggr.name, r.id == tgid, r.values()["ac_flag"],
                               r.values()["ac_exitcode"]) for r in event.records))
        for datagram in datagrams for event in events([datagram], family))


def usual_group_exit(capture: dict[str, Any]) -> tuple[Shape, int, int]:
    """The most frequent shape among the exit_group samples; how often; of how many."""
    family = capture["taskstats_family"]
    shapes = Counter(exit_shape(replies(c), family, c["pid"]) for c in capture["cases"]
                     if c["name"].startswith("exit_group_2_thread_"))
    if not shapes:
        pytest.skip(f"the capture of {capture['kernel']} has no exit_group samples")
    shape, count = shapes.most_common(1)[0]
    return shape, count, sum(shapes.values())


def thread_has_leaders_mm(datagrams: list[bytes], family: int, tgid: int) -> bool:
    """Whether, in a group's exit events, the other thread's AGGR_PID record carries the same
    executable as the leader's and non-zero high-water marks (its mm is the leader's)."""
    recs = [r.values() for e in events(datagrams, family) for r in e.records
            if r.aggr == TaskstatsType.AGGR_PID]
    leader = next(v for v in recs if v["ac_pid"] == tgid)
    thread = next(v for v in recs if v["ac_pid"] != tgid)
    return (thread["ac_exe_inode"] == leader["ac_exe_inode"] != 0
            and thread["ac_exe_dev"] == leader["ac_exe_dev"]
            and thread["hiwater_rss"] > 0 and thread["hiwater_vm"] > 0)


def tgid_exit_sums_times(datagrams: list[bytes], family: int) -> bool:
    """Whether the AGGR_TGID exit record holds the threads' elapsed times and context switches
    (newer rule) rather than their delays alone (zeros there)."""
    recs = [(r.aggr, r.values()) for e in events(datagrams, family) for r in e.records]
    tgid = next(v for a, v in recs if a == TaskstatsType.AGGR_TGID)
    threads = [v for a, v in recs if a == TaskstatsType.AGGR_PID]
    switches = sum(v["nvcsw"] + v["nivcsw"] for v in threads)
    return tgid["ac_etime"] > 0 and tgid["nvcsw"] + tgid["nivcsw"] == switches > 0


#: CPU time (utime + stime, µs) the capture's worker thread burned before exiting, less a
#: margin: a TGID query that counts the dead thread shows at least this much over its leader.
DEAD_THREAD_CPU_US = 100_000


def tgid_query_keeps_dead_threads(tgid_values: dict[str, Any],
                                  leader_values: dict[str, Any]) -> bool:
    extra = (tgid_values["ac_utime"] + tgid_values["ac_stime"]
             - leader_values["ac_utime"] - leader_values["ac_stime"])
    return extra >= DEAD_THREAD_CPU_US
