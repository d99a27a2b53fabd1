"""Kept GET replies against records computed afresh.

`PidReplyCache` answers a GET by PID from the reply it packed the first time, patching seq,
port id and the clock fields, for as long as the process table's generation stands. Whatever
happens to the table and the clock in between, its answer must be the general path's (which
computes the record and builds it through the layout every time), byte for byte.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.families import FamilyTable
from tsemu.emulator.model.kernel import Kernel, Send, Sender
from tsemu.emulator.model.profiles import PROFILES
from tsemu.emulator.model.replycache import DEFAULT_LIMIT
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.model.tasks import NoSuchTask
from tsemu.wire import TaskstatsType, encode_taskstats_get, layout
from tsemu.wire.taskstats import ReplyTemplate

FAMILY = 0x1F
SENDER = Sender(4242, admin=True, cap_ack=False, ext_ack=False)


def _machine(profile_name: str) -> tuple[ProcessTable, Kernel]:
    table = ProcessTable(VirtualClock(), PROFILES[profile_name], 2)
    return table, Kernel(table, profile=PROFILES[profile_name], nr_cpus=2,
                         families=FamilyTable.default(FAMILY, PROFILES[profile_name]))


def _answers(kernel: Kernel, tid: int, seq: int) -> tuple[list[bytes], list[bytes]]:
    request = encode_taskstats_get(FAMILY, pid=tid, seq=seq)
    fast = [a.data for a in kernel.handle(request, SENDER) if isinstance(a, Send)]
    general = [a.data for a in kernel.handle_general(request, SENDER) if isinstance(a, Send)]
    return fast, general


# One step of what a scenario or `tsemu ctl` does to a machine between two GETs.
step = st.one_of(
    st.tuples(st.just("advance"), st.integers(0, 3_000_000_000)),
    st.tuples(st.just("spawn"), st.integers(1, 3)),
    st.tuples(st.just("set"), st.integers(0, 50), st.sampled_from(
        ["cpu_count", "cpu_delay_total", "read_bytes", "utime_ns", "nvcsw", "hiwater_rss",
         "blkio_delay_max"]), st.integers(0, 2**40)),
    st.tuples(st.just("identity"), st.integers(0, 50), st.sampled_from(["nice", "uid", "ppid"]),
              st.integers(0, 19)),
    st.tuples(st.just("add"), st.integers(0, 50), st.integers(0, 10**9)),
    st.tuples(st.just("move"), st.integers(0, 50), st.integers(0, 1)),
    st.tuples(st.just("exit"), st.integers(0, 50)),
    st.tuples(st.just("clone"), st.integers(0, 50)),
)


def _apply(table: ProcessTable, action: tuple) -> None:  # type: ignore[type-arg]
    live = sorted(t.tid for t in table)
    kind = action[0]
    if kind == "advance":
        assert isinstance(table.clock, VirtualClock)
        table.clock.advance(action[1] / 1e9)
        return
    if kind == "spawn":
        table.spawn(comm="job", threads=action[1], counters={"cpu_count": 3})
        return
    if not live:
        return
    tid = live[action[1] % len(live)]
    if kind == "set":
        table.set(tid, **{action[2]: action[3]})
    elif kind == "identity":
        table.set(tid, **{action[2]: action[3]})
    elif kind == "add":
        table.add(tid, stime_ns=action[2])
    elif kind == "move":
        table.move(tid, action[2])
    elif kind == "exit":
        table.exit_task(tid, code=3)
    elif kind == "clone":
        table.clone_thread(table.get(tid).tgid)


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
@settings(max_examples=60, deadline=None)
@given(steps=st.lists(step, max_size=25))
def test_kept_replies_are_the_records_of_the_moment(profile_name: str,
                                                    steps: list[tuple]) -> None:  # type: ignore[type-arg]
    table, kernel = _machine(profile_name)
    table.spawn(comm="first", threads=2, counters={"cpu_count": 1, "read_bytes": 4096})
    seq = 0
    for action in steps:
        try:
            _apply(table, action)
        except (ValueError, NoSuchTask):
            pass  # a step the table refuses (a ppid with no process...) changes nothing
        ids = {t.tid for t in table} | {g.tgid for g in table.groups()} | {99999}
        for tid in sorted(ids):
            for _ in range(2):  # the second GET is answered from the kept reply
                seq += 1
                fast, general = _answers(kernel, tid, seq)
                assert fast == general
    assert kernel._pid_cache is not None and kernel._pid_cache.hits >= len(steps) // 3


def test_a_kept_reply_is_used_until_the_table_changes() -> None:
    table, kernel = _machine("6.18")
    task = table.spawn(comm="kept", counters={"cpu_count": 5})
    cache = kernel._pid_cache
    assert cache is not None
    kernel.handle(encode_taskstats_get(FAMILY, pid=task.tid, seq=1), SENDER)
    assert cache.hits == 0
    assert isinstance(table.clock, VirtualClock)
    table.clock.advance(2.5)
    fast, general = _answers(kernel, task.tid, 2)
    assert fast == general and cache.hits == 1
    table.add(task.tid, cpu_count=1)
    fast, general = _answers(kernel, task.tid, 3)
    assert fast == general and cache.hits == 1  # a new generation: packed afresh
    values = layout(16).parse(fast[0], len(fast[0]) - layout(16).size)
    assert values["cpu_count"] == 6 and values["ac_etime"] == 2_500_000


def test_host_mirrors_keep_nothing() -> None:
    from tsemu.emulator.shell.hostmirror import HostMirror

    table, _kernel = _machine("6.18")
    mirror = HostMirror(table, PROFILES["6.18"])
    assert Kernel(mirror, profile=PROFILES["6.18"], nr_cpus=2)._pid_cache is None


@pytest.mark.parametrize("version", [8, 13, 16, 17])
def test_a_patch_is_a_build_with_those_values(version: int) -> None:
    shape = layout(version)
    template = ReplyTemplate(FAMILY, TaskstatsType.AGGR_PID, shape.size, shape)
    names = [n for n in ("ac_etime", "ac_btime", "ac_pid", "cpu_count") if n in shape.names]
    base = template.build(1, 2, 3, shape.build({"ac_comm": b"x", "nvcsw": 9}))
    values = [1000 + i for i in range(len(names))]
    patched = template.patcher(names)(base, 70, 80, 90, *values)
    rebuilt = template.build(70, 80, 90, shape.build(
        {"ac_comm": b"x", "nvcsw": 9, **dict(zip(names, values, strict=True))}))
    assert patched == rebuilt
    with pytest.raises(ValueError):
        template.patcher(names)(base[:-1], 1, 1, 1, *values)
    with pytest.raises(struct.error):
        template.patcher(names)(base, 2**32, 1, 1, *values)
    with pytest.raises(KeyError, match="no field"):
        template.patcher(["no_such_field"])


def test_the_oldest_reply_goes_when_the_cache_is_full() -> None:
    table, kernel = _machine("6.18")
    cache = kernel._pid_cache
    assert cache is not None
    tids = [table.spawn(comm=f"t{i}").tid for i in range(DEFAULT_LIMIT + 1)]
    for tid in tids:
        _answers(kernel, tid, 1)
    assert list(cache._replies) == tids[1:]
    _answers(kernel, tids[-1], 2)
    assert cache.hits == 1
    _answers(kernel, tids[0], 3)  # gone: packed again, pushing out the next oldest
    assert cache.hits == 1 and tids[1] not in cache._replies


def test_a_patch_may_skip_fields_the_layout_lacks() -> None:
    shape = layout(8)  # no ac_btime64, no ac_tgetime
    template = ReplyTemplate(FAMILY, TaskstatsType.AGGR_PID, shape.size, shape)
    base = template.build(1, 2, 3, shape.build({}))
    patched = template.patcher(["ac_etime", "ac_tgetime", "ac_btime64"], absent_ok=True)(
        base, 4, 5, 6, 111, 222, 333)
    assert patched == template.build(4, 5, 6, shape.build({"ac_etime": 111}))
    with pytest.raises(KeyError, match="ac_tgetime"):
        template.patcher(["ac_etime", "ac_tgetime"])


@settings(max_examples=60, deadline=None)
@given(version=st.sampled_from([8, 13, 16, 17]),
       rows=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                               st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
                     max_size=40))
def test_a_splice_is_the_patch_of_those_values(version: int,
                                               rows: list[tuple[int, int, int, int]]) -> None:
    """A splice makes a run of messages in one pack; each is the patch's own result for its
    row, for any values, whatever order the places come in, and with places the layout
    lacks left out."""
    shape = layout(version)
    template = ReplyTemplate(FAMILY, TaskstatsType.AGGR_PID, shape.size, shape)
    base = template.build(1, 2, 3, shape.build({"ac_comm": b"base", "nvcsw": 9, "ac_pid": 5}))
    patch = template.patcher(["ac_pid", "ac_tgid", "ac_etime"], absent_ok=True)
    splice = patch.splicer(base, ac_etime=2, seq=0, ident=1, ac_pid=1, ac_tgid=1, portid=3)
    columns = [[row[i] for row in rows] for i in range(4)]
    run = splice.run(*columns)
    assert run.size == len(base) and len(run) == len(rows)
    assert list(run) == [patch(base, seq, port, pid, pid, pid, etime)
                         for seq, pid, etime, port in rows]


def test_a_splice_refuses_what_it_cannot_make() -> None:
    shape = layout(17)
    template = ReplyTemplate(FAMILY, TaskstatsType.AGGR_PID, shape.size, shape)
    base = template.build(1, 2, 3, shape.build({}))
    patch = template.patcher(["ac_pid"])
    splice = patch.splicer(base, seq=0, ac_pid=1)
    assert list(splice.run([7], [8])) == [patch(base, 7, 2, 3, 8)]
    with pytest.raises(TypeError):
        splice.run([7])  # a column missing is never a byte of the base packed in its place
    with pytest.raises(ValueError):
        splice.run([1, 2], [3])  # columns of unequal length
    with pytest.raises(struct.error):
        splice.run([2**32], [8])
    with pytest.raises(KeyError, match="ac_uid"):
        patch.splicer(base, ac_uid=0)  # not one of the patch's places
    with pytest.raises(ValueError):
        patch.splicer(base[:-1], seq=0)
