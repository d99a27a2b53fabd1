"""Tests for tsemu.emulator.model.accounting: the records a task and its group turn into, field by
field, checked against the rules of the kernel's taskstats.c / tsacct.c / delayacct.c and
against the host kernel's own records in tests/golden/kernel.json."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsemu.emulator.model import accounting
from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.profiles import PROFILES, KernelProfile
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.model.tasks import COUNTERS, Task, TaskState
from tsemu.wire import AcFlag, TaskstatsReply, TaskstatsType, decode_message, layout, split_datagram

P618 = PROFILES["6.18"]
P61 = PROFILES["6.1"]
P72 = PROFILES["7.2"]
BOOT_WALL = 1_700_000_000
START_NS = 1000 * 10**9  # the clock starts 1000 s after boot

SIGKILL, SIGSEGV = 9, 11
DELAY_FIELDS = tuple(
    f"{cat}_{what}" for cat in accounting.DELAY_CATEGORIES
    for what in ("count", "delay_total", "delay_max", "delay_min")
) + ("cpu_run_real_total", "cpu_run_virtual_total", "cpu_scaled_run_real_total")


def make_table(profile: KernelProfile = P618, *,
               boot_wall_seconds: int = BOOT_WALL) -> tuple[ProcessTable, VirtualClock]:
    clock = VirtualClock(start_ns=START_NS, boot_wall_seconds=boot_wall_seconds)
    return ProcessTable(clock, profile, nr_cpus=2), clock


def delays(cpu: int, blkio: int = 0, *, count: int = 1) -> dict[str, object]:
    """Counters for a task that waited `cpu` ns for a CPU and `blkio` ns for I/O."""
    return {"cpu_count": count, "cpu_delay_total": cpu, "cpu_delay_max": cpu,
            "cpu_delay_min": max(cpu // 2, 1), "blkio_count": count, "blkio_delay_total": blkio,
            "blkio_delay_max": blkio, "blkio_delay_min": blkio // 3}


# --- the PID record ------------------------------------------------------------------------


def test_pid_record_field_by_field() -> None:
    table, clock = make_table()
    task = table.spawn(pid=4242, comm=b"worker", ppid=17, uid=1000, gid=1001, cpu=1, nice=-5,
                       policy=3, forked_no_exec=True, counters={
                           "cpu_count": 12, "cpu_delay_total": 134_057, "cpu_delay_max": 79_768,
                           "cpu_delay_min": 22_221, "cpu_run_virtual_total": 77_891_552,
                           "utime_ns": 56_000_999, "stime_ns": 19_987_001,
                           "utimescaled_ns": 28_000_500, "stimescaled_ns": 9_999_999,
                           "swapin_count": 2, "swapin_delay_total": 777,
                           "swapin_delay_max": 700, "swapin_delay_min": 77,
                           "ac_minflt": 3525, "ac_majflt": 4, "coremem": 1_052_480,
                           "virtmem": 1_344_111, "hiwater_rss": 22_200, "hiwater_vm": 28_072,
                           "read_char": 2_548_999, "write_char": 1023, "read_syscalls": 2047,
                           "write_syscalls": 3072, "read_bytes": 8191,
                           "write_bytes": 1_048_576, "cancelled_write_bytes": 5000,
                           "nvcsw": 9, "nivcsw": 2, "ac_exe_dev": 65024, "ac_exe_inode": 26723})
    clock.advance(2.3307609)
    v = table.pid_stats(task.tid)
    expected = {
        "version": 16, "ac_exitcode": 0, "ac_flag": AcFlag.AFORK, "ac_nice": 251,
        "cpu_count": 12, "cpu_delay_total": 134_057, "cpu_delay_max": 79_768,
        "cpu_delay_min": 22_221, "cpu_run_virtual_total": 77_891_552,
        "cpu_run_real_total": 75_988_000, "cpu_scaled_run_real_total": 38_000_499,
        "swapin_count": 2, "swapin_delay_total": 777, "swapin_delay_max": 700,
        "swapin_delay_min": 77, "blkio_count": 0,
        "ac_comm": b"worker", "ac_sched": 3, "ac_uid": 1000, "ac_gid": 1001,
        "ac_pid": 4242, "ac_tgid": 4242, "ac_ppid": 17,
        "ac_etime": 2_330_760, "ac_tgetime": 2_330_760,
        "ac_btime": BOOT_WALL + 1002 - 2, "ac_btime64": BOOT_WALL + 1002 - 2,
        "ac_utime": 56_000, "ac_stime": 19_987, "ac_utimescaled": 28_000,
        "ac_stimescaled": 9_999, "ac_minflt": 3525, "ac_majflt": 4,
        "coremem": 1_052_480, "virtmem": 1_344_111, "hiwater_rss": 22_200, "hiwater_vm": 28_072,
        "read_char": 2_548_736, "write_char": 0, "read_syscalls": 1024,
        "write_syscalls": 3072, "read_bytes": 7168, "write_bytes": 1_048_576,
        "cancelled_write_bytes": 4096, "nvcsw": 9, "nivcsw": 2,
        "ac_exe_dev": 65024, "ac_exe_inode": 26723,
    }
    assert {k: v[k] for k in expected} == expected
    assert set(v) == set(layout(16).names) - {"ac_pad"}, "every v16 field, nothing newer"
    assert layout(16).parse(layout(16).build(v))["ac_comm"] == b"worker"


def test_round_io_rounds_down_to_1024() -> None:
    assert [accounting.round_io(n) for n in (0, 1, 1023, 1024, 1025, 4095, 2**64 - 1)] == [
        0, 0, 0, 1024, 1024, 3072, 2**64 - 1024]


def test_btime_follows_the_clock_and_clamps() -> None:
    table, clock = make_table(boot_wall_seconds=2**32 + 100)
    task = table.spawn(comm=b"p", start_ns=START_NS - 10 * 10**9)  # started 10 s ago
    v = table.pid_stats(task.tid)
    assert v["ac_btime64"] == 2**32 + 100 + 1000 - 10 and v["ac_btime"] == 2**32 - 1
    clock.advance(5)
    assert table.pid_stats(task.tid)["ac_btime64"] == 2**32 + 1090, "btime is age-derived"

    table, _ = make_table(boot_wall_seconds=-2000)  # a wall clock before the epoch
    v = table.pid_stats(table.spawn(comm=b"p").tid)
    assert v["ac_btime"] == 0 and v["ac_btime64"] == 2**64 - 1000, "s64 stored in a u64"


def test_flags_afork_only_for_a_leader_asu_for_any() -> None:
    table, _ = make_table()
    leader = table.spawn(comm=b"p", forked_no_exec=True, threads=2)
    table.set(2, superuser=True)
    assert table.pid_stats(leader.tid)["ac_flag"] == AcFlag.AFORK
    assert table.pid_stats(2)["ac_flag"] == AcFlag.ASU, "a thread has PF_FORKNOEXEC, no AFORK"
    table.set(leader.tid, forked_no_exec=False, superuser=True)
    assert table.pid_stats(leader.tid)["ac_flag"] == AcFlag.ASU


@pytest.mark.parametrize(("kwargs", "exitcode", "flag"), [
    ({"code": 3}, 768, 0),
    ({"code": 0}, 0, 0),
    ({"code": 256 + 7}, 7 << 8, 0),
    ({"code": -1}, 0xFF00, 0),
    ({"signal": SIGKILL}, 9, AcFlag.AXSIG),
    ({"signal": SIGSEGV, "core": True}, 0x8B, AcFlag.ACORE | AcFlag.AXSIG),
])
def test_exit_codes(kwargs: dict[str, Any], exitcode: int, flag: int) -> None:
    table, _ = make_table()
    task = table.spawn(comm=b"p", superuser=True)
    values = table.exit_task(task.tid, **kwargs).pid_values
    assert values["ac_exitcode"] == exitcode
    assert values["ac_flag"] == flag | AcFlag.ASU | AcFlag.AGROUP


def test_a_live_task_has_no_exit_code() -> None:
    table, _ = make_table()
    leader = table.spawn(comm=b"p", threads=2)
    table.exit_task(2, code=5)
    assert table.pid_stats(leader.tid)["ac_exitcode"] == 0


def test_tgetime_measures_from_the_leaders_start() -> None:
    table, clock = make_table()
    leader = table.spawn(comm=b"p")
    clock.advance(3)
    thread = table.clone_thread(leader.tid)
    clock.advance(1)
    table.exit_task(leader.tid)
    clock.advance(1)
    v = table.exit_task(thread.tid).pid_values
    assert v["ac_etime"] == 2_000_000 and v["ac_tgetime"] == 5_000_000, "zombie leader's start"


# --- thread groups -------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [P618, P61], ids=lambda p: p.name)
def test_two_threads_non_leader_first(profile: KernelProfile) -> None:
    table, clock = make_table(profile)
    leader = table.spawn(comm=b"p", counters={
        **delays(cpu=5000, blkio=900, count=3), "utime_ns": 7_000_999, "stime_ns": 2_000_000,
        "nvcsw": 10, "nivcsw": 1})
    clock.advance(1)
    thread = table.clone_thread(leader.tid, counters={
        **delays(cpu=800, blkio=300, count=2), "utime_ns": 3_000_999, "stime_ns": 1_000_000,
        "nvcsw": 4, "nivcsw": 6})
    clock.advance(1)

    first = table.exit_task(thread.tid)
    assert first.tgid_values is None and not first.group_dead
    assert not first.pid_values["ac_flag"] & AcFlag.AGROUP

    clock.advance(1)
    last = table.exit_task(leader.tid)
    assert last.group_dead and last.pid_values["ac_flag"] & AcFlag.AGROUP
    tgid = last.tgid_values
    assert tgid is not None
    assert tgid["version"] == profile.taskstats_version
    assert (tgid["cpu_count"], tgid["cpu_delay_total"]) == (5, 5800)
    assert (tgid["blkio_count"], tgid["blkio_delay_total"]) == (5, 1200)
    assert tgid["cpu_run_real_total"] == 9_000_999 + 4_000_999
    if profile.taskstats_version >= 16:
        # max and min are the last exiting thread's (the leader's here), not max()/min()
        assert (tgid["cpu_delay_max"], tgid["cpu_delay_min"]) == (5000, 2500)
        assert (tgid["blkio_delay_max"], tgid["blkio_delay_min"]) == (900, 300)
    else:
        assert "cpu_delay_max" not in tgid, "v13 has no max/min"
    times = (tgid["ac_etime"], tgid["ac_utime"], tgid["ac_stime"], tgid["nvcsw"],
             tgid["nivcsw"])
    if profile.tgid_exit_adds_times:
        assert times == (1_000_000 + 3_000_000, 3000 + 7000, 1000 + 2000, 14, 7)
    else:
        assert times == (0, 0, 0, 0, 0), "6.1 accumulates the delay fields only"
    assert (tgid["ac_pid"], tgid["ac_tgid"], tgid["ac_comm"], tgid["ac_btime"],
            tgid["ac_flag"]) == (0, 0, b"", 0, 0)


def test_max_and_min_are_the_last_threads_even_when_lower() -> None:
    table, _ = make_table(P72)
    leader = table.spawn(comm=b"p", counters={
        **delays(cpu=9000), "cpu_delay_max_ts": (1_700_000_100, 5)}, threads=1)
    table.clone_thread(leader.tid, counters={
        **delays(cpu=100), "cpu_delay_max_ts": (1_700_000_050, 7)})
    reports = table.exit_group(leader.tid, caller=leader.tid)
    tgid = reports[-1].tgid_values
    assert tgid is not None and tgid["version"] == 17
    assert tgid["cpu_delay_max"] == 100 and tgid["cpu_delay_total"] == 9100
    assert tgid["cpu_delay_max_ts"] == {"tv_sec": 1_700_000_050, "tv_nsec": 7}
    assert reports[0].pid_values["cpu_delay_max_ts"] == {"tv_sec": 1_700_000_100, "tv_nsec": 5}
    assert layout(17).parse(layout(17).build(tgid))["cpu_delay_max_ts"] == {
        "tv_sec": 1_700_000_050, "tv_nsec": 7}


def test_a_single_threaded_process_never_gets_a_tgid_record() -> None:
    table, _ = make_table()
    cases: list[dict[str, Any]] = [{"code": 0}, {"signal": SIGKILL},
                                   {"signal": SIGSEGV, "core": True}]
    for kwargs in cases:
        task = table.spawn(comm=b"solo", counters=delays(cpu=10))
        report = table.exit_task(task.tid, **kwargs)
        assert report.group_dead and report.tgid_values is None
        assert report.pid_values["ac_flag"] & AcFlag.AGROUP
    (report,) = table.exit_group(table.spawn(comm=b"solo").tid)
    assert report.tgid_values is None


def test_a_process_that_once_had_threads_gets_one() -> None:
    table, _ = make_table()
    leader = table.spawn(comm=b"p", threads=2, counters=delays(cpu=40))
    table.exit_task(2)
    report = table.exit_task(leader.tid)
    assert report.tgid_values is not None and report.tgid_values["cpu_delay_total"] == 40


@pytest.mark.parametrize("profile", [P618, P61], ids=lambda p: p.name)
def test_tgid_query_one_dead_one_live(profile: KernelProfile) -> None:
    table, clock = make_table(profile)
    leader = table.spawn(comm=b"p", counters={
        **delays(cpu=1000, count=4), "utime_ns": 5_000_000, "nvcsw": 3})
    thread = table.clone_thread(leader.tid, counters={
        **delays(cpu=200, count=1), "utime_ns": 2_000_999, "stime_ns": 999, "nivcsw": 8})
    clock.advance(2)
    table.exit_task(thread.tid)
    clock.advance(3)
    q = table.tgid_stats(leader.tid)
    assert q["version"] == profile.taskstats_version
    assert (q["cpu_count"], q["cpu_delay_total"]) == (5, 1200)
    # the live leader's times always count; the dead thread's only if its exit added them
    dead = (2_000_000, 2000, 0, 0, 8) if profile.tgid_exit_adds_times else (0, 0, 0, 0, 0)
    live = (5_000_000, 5000, 0, 3, 0)
    assert (q["ac_etime"], q["ac_utime"], q["ac_stime"], q["nvcsw"], q["nivcsw"]) == tuple(
        d + lv for d, lv in zip(dead, live, strict=True))
    assert (q["ac_pid"], q["ac_tgid"], q["ac_comm"], q["ac_btime"], q["ac_flag"],
            q["ac_minflt"]) == (0, 0, b"", 0, 0, 0)
    assert table.tgid_stats(leader.tid) == q, "a query changes nothing"


def test_tgid_query_of_a_single_threaded_process() -> None:
    table, clock = make_table()
    task = table.spawn(comm=b"p", counters={**delays(cpu=77), "stime_ns": 4_000_000})
    clock.advance(1)
    q = table.tgid_stats(task.tid)
    assert (q["cpu_delay_total"], q["ac_etime"], q["ac_stime"]) == (77, 1_000_000, 4000)
    assert table.group(task.tid).stats is None, "a query allocates nothing"


def test_tgid_query_by_a_threads_id_answers_for_its_group() -> None:
    table, _ = make_table()
    leader = table.spawn(comm=b"p", threads=2, counters=delays(cpu=5))
    table.set(2, **delays(cpu=7))
    assert table.tgid_stats(2) == table.tgid_stats(leader.tid)
    assert table.tgid_stats(2)["cpu_delay_total"] == 12


# --- the overflow rules --------------------------------------------------------------------


def test_overflow_rules() -> None:
    s64_max, u64_max = 2**63 - 1, 2**64 - 1
    assert accounting.add_s64_or_zero(10, 5) == 15
    assert accounting.add_s64_or_zero(s64_max - 5, 5) == s64_max
    assert accounting.add_s64_or_zero(s64_max - 5, 6) == 0, "past 2**63 - 1: zero"
    assert accounting.add_s64_or_zero(0, 2**63) == 0, "one task's value read as negative"
    assert accounting.add_u64_or_zero(s64_max, 6) == s64_max + 6, "u64 fields go further"
    assert accounting.add_u64_or_zero(u64_max - 1, 1) == u64_max
    assert accounting.add_u64_or_zero(u64_max - 1, 2) == 0, "the u64 sum wrapped: zero"


def test_overflowing_group_totals_drop_to_zero() -> None:
    table, _ = make_table()
    leader = table.spawn(comm=b"p", threads=3, counters={
        "cpu_count": 1, "cpu_delay_total": 2**62, "blkio_count": 1,
        "blkio_delay_total": 2**63})
    for tid in (2, 3):
        table.set(tid, cpu_count=1, cpu_delay_total=2**62, blkio_count=1,
                  blkio_delay_total=2**63)
    reports = table.exit_group(leader.tid)
    one = reports[1].pid_values  # each PID record holds its own task's values only
    assert (one["cpu_delay_total"], one["blkio_delay_total"]) == (2**62, 2**63)
    tgid = reports[-1].tgid_values
    assert tgid is not None
    # cpu: 2**62 + 2**62 passes 2**63 - 1 -> 0, then 0 + 2**62
    assert (tgid["cpu_count"], tgid["cpu_delay_total"]) == (3, 2**62)
    # blkio: 2**63 + 2**63 wraps the u64 -> 0, then 0 + 2**63
    assert (tgid["blkio_count"], tgid["blkio_delay_total"]) == (3, 2**63)
    layout(16).build(tgid)


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**12),
                          st.integers(0, 10**9), st.integers(0, 10**9)),
                min_size=2, max_size=8))
def test_group_record_sums_counts_and_keeps_the_last_max_min(
        threads: list[tuple[int, int, int, int]]) -> None:
    table, _ = make_table()
    counters = [{"cpu_count": c, "cpu_delay_total": t, "cpu_delay_max": mx,
                 "cpu_delay_min": mn, "irq_count": c, "irq_delay_total": t,
                 "irq_delay_max": mx, "irq_delay_min": mn} for c, t, mx, mn in threads]
    leader = table.spawn(comm=b"p", counters=counters[-1])
    for c in counters[:-1]:
        table.clone_thread(leader.tid, counters=c)
    tgid = table.exit_group(leader.tid, leader_last=True)[-1].tgid_values
    assert tgid is not None
    for cat in ("cpu", "irq"):
        assert tgid[f"{cat}_count"] == sum(t[0] for t in threads)
        assert tgid[f"{cat}_delay_total"] == sum(t[1] for t in threads)
        assert (tgid[f"{cat}_delay_max"], tgid[f"{cat}_delay_min"]) == threads[-1][2:]


# --- every record builds, in every profile -------------------------------------------------


@pytest.mark.parametrize("profile", [P61, P618, P72], ids=lambda p: p.name)
def test_records_build_for_every_profile(profile: KernelProfile) -> None:
    table, clock = make_table(profile)
    every: dict[str, object] = {name: i + 1 for i, name in enumerate(
        n for n in COUNTERS if not n.endswith("_ts"))}
    every.update({f"{c}_delay_max_ts": (1_700_000_000 + i, i)
                  for i, c in enumerate(accounting.DELAY_CATEGORIES)})
    leader = table.spawn(comm=b"p" * 20, nice=-20, policy=6, threads=2, counters=every,
                         superuser=True, forked_no_exec=True)
    clock.advance(1.5)
    wire = layout(profile.taskstats_version)
    records = [table.pid_stats(leader.tid), table.tgid_stats(leader.tid)]
    for report in table.exit_group(leader.tid, signal=SIGSEGV, core=True):
        records.append(report.pid_values)
        if report.tgid_values is not None:
            records.append(report.tgid_values)
    assert len(records) == 5
    for values in records:
        assert values["version"] == profile.taskstats_version
        assert set(values) == set(wire.names) - {"ac_pad"}
        raw = wire.build(values)
        assert len(raw) == wire.size
        parsed = wire.parse(raw)
        assert {k: parsed[k] for k in values} == values, "every value fits its field"


# --- against the host kernel's records -----------------------------------------------------


def _records(golden: dict[str, Any], case: str) -> list[list[Any]]:
    """The records of each datagram a golden case holds, decoded with tsemu.wire."""
    found = next(c for c in golden["cases"] if c["name"] == case)
    out = []
    for datagram in found["replies"]:
        reply = decode_message(split_datagram(bytes.fromhex(datagram))[0],
                               golden["taskstats_family"])
        assert isinstance(reply, TaskstatsReply)
        out.append(list(reply.records))
    return out


def counters_of(values: dict[str, Any]) -> dict[str, int]:
    """Task counters that reproduce a PID record's values (CPU times back to ns; the I/O
    counters are already multiples of 1024, so rounding them again changes nothing)."""
    out: dict[str, int] = {}
    for cat in accounting.DELAY_CATEGORIES:
        for what in ("count", "delay_total", "delay_max", "delay_min"):
            out[f"{cat}_{what}"] = values.get(f"{cat}_{what}", 0)
    for name in ("cpu_run_virtual_total", "ac_minflt", "ac_majflt", "coremem", "virtmem",
                 "hiwater_rss", "hiwater_vm", *accounting.IO_FIELDS, "nvcsw", "nivcsw",
                 "ac_exe_dev", "ac_exe_inode"):
        out[name] = values[name]
    for name in ("utime", "stime", "utimescaled", "stimescaled"):
        out[f"{name}_ns"] = values[f"ac_{name}"] * 1000
    return out


def task_from_record(values: dict[str, Any]) -> Task:
    task = Task(tid=values["ac_pid"], tgid=values["ac_tgid"], ppid=values["ac_ppid"],
                comm=values["ac_comm"], uid=values["ac_uid"], gid=values["ac_gid"], cpu=0,
                nice=0, policy=0, state=TaskState.RUNNING, cgroup=None, start_ns=0)
    for name, value in counters_of(values).items():
        task._store(name, value)
    return task


def test_golden_exit_2_thread_tgid_delays_from_its_pid_records(
        golden: dict[str, Any]) -> None:
    """Accumulating the two PID records of the kernel's exit events, in the order they came,
    gives the delay fields of the kernel's TGID record exactly."""
    (first,), (last_pid, kernel_tgid) = _records(golden, "exit_2_thread")
    assert kernel_tgid.aggr == TaskstatsType.AGGR_TGID
    stats = accounting.new_group_stats(P618)
    for record in (first, last_pid):
        accounting.accumulate_exit(stats, task_from_record(record.values()), now_ns=0,
                                   profile=P618)
    ours = accounting.tgid_exit_record(stats, P618)
    kernel = kernel_tgid.values()
    assert {k: ours[k] for k in DELAY_FIELDS} == {k: kernel[k] for k in DELAY_FIELDS}
    assert kernel["cpu_delay_max"] < first.values()["cpu_delay_max"], "the last thread's max"
    assert (ours["nvcsw"], ours["nivcsw"]) == (kernel["nvcsw"], kernel["nivcsw"])


def _golden_table(exit_wall_seconds: int, exit_ns: int) -> tuple[ProcessTable, VirtualClock]:
    """A table whose clock reads `exit_wall_seconds` on the wall at monotonic `exit_ns`."""
    clock = VirtualClock(start_ns=START_NS,
                         boot_wall_seconds=exit_wall_seconds - exit_ns // 10**9)
    return ProcessTable(clock, P618, nr_cpus=2), clock


def test_golden_exit_1_thread_record_byte_for_byte(golden: dict[str, Any]) -> None:
    ((kernel,),) = _records(golden, "exit_1_thread")
    values = kernel.values()
    table, clock = _golden_table(values["ac_btime64"], START_NS + values["ac_etime"] * 1000)
    task = table.spawn(pid=values["ac_pid"], ppid=values["ac_ppid"], comm=values["ac_comm"],
                       forked_no_exec=True, counters=counters_of(values))
    clock.advance_ns(values["ac_etime"] * 1000)
    report = table.exit_task(task.tid, code=3)
    assert report.tgid_values is None and report.tid == kernel.id
    assert layout(16).build(report.pid_values) == kernel.stats


def test_golden_exit_2_thread_scenario(golden: dict[str, Any]) -> None:
    """The capture's 2-thread child: the leader called exit_group (exits first, AFORK), the
    worker, zapped, exits last with AXSIG|AGROUP and the TGID record. Everything matches the
    kernel's bytes except what depends on the 47 us between the two kernel exits (tsemu's
    exit_group exits every thread at one instant): the worker's ac_tgetime and the TGID
    record's summed ac_etime."""
    (leader_rec,), (worker_rec, tgid_rec) = _records(golden, "exit_2_thread")
    lv, wv, tv = leader_rec.values(), worker_rec.values(), tgid_rec.values()
    table, clock = _golden_table(lv["ac_btime64"], START_NS + lv["ac_etime"] * 1000)
    leader = table.spawn(pid=lv["ac_pid"], ppid=lv["ac_ppid"], comm=lv["ac_comm"],
                         forked_no_exec=True)
    clock.advance_ns((lv["ac_etime"] - wv["ac_etime"]) * 1000)
    worker = table.clone_thread(leader.tid, pid=wv["ac_pid"])
    clock.advance_ns(wv["ac_etime"] * 1000)
    table.set(leader.tid, **counters_of(lv))
    table.set(worker.tid, **counters_of(wv))

    first, last = table.exit_group(leader.tid, caller=leader.tid)
    assert (first.tid, last.tid, last.tgid) == (leader_rec.id, worker_rec.id, tgid_rec.id)
    assert first.tgid_values is None and last.tgid_values is not None
    assert layout(16).build(first.pid_values) == leader_rec.stats
    timing = {"ac_tgetime": wv["ac_tgetime"]}
    assert layout(16).build({**last.pid_values, **timing}) == worker_rec.stats
    assert last.pid_values["ac_tgetime"] == lv["ac_etime"]
    assert layout(16).build({**last.tgid_values, "ac_etime": tv["ac_etime"]}) == tgid_rec.stats
    assert last.tgid_values["ac_etime"] == lv["ac_etime"] + wv["ac_etime"]


# -- add_delays' no-overflow shortcut against the rules spelled out --------------------------

_SUMS = st.integers(0, 2**64 - 1) | st.integers(2**63 - 10, 2**63 + 10) | st.integers(0, 100)


def _add_delays_by_the_rules(stats: dict[str, Any], task: Task) -> None:
    """delayacct_add_tsk as the module docstring tables it, every sum through its rule."""
    get = task.counter_map.get
    s64, u64 = accounting.add_s64_or_zero, accounting.add_u64_or_zero
    for name, value in (
            ("cpu_run_real_total", (get("utime_ns", 0) + get("stime_ns", 0)) % 2**64),
            ("cpu_scaled_run_real_total",
             (get("utimescaled_ns", 0) + get("stimescaled_ns", 0)) % 2**64),
            ("cpu_delay_total", get("cpu_delay_total", 0)),
            ("cpu_run_virtual_total", get("cpu_run_virtual_total", 0))):
        stats[name] = s64(stats.get(name, 0), value)
    for cat in accounting.DELAY_CATEGORIES:
        stats[f"{cat}_count"] = (stats.get(f"{cat}_count", 0) + get(f"{cat}_count", 0)) % 2**64
        for kind in ("max", "min"):
            stats[f"{cat}_delay_{kind}"] = get(f"{cat}_delay_{kind}", 0)
        if cat != "cpu":
            stats[f"{cat}_delay_total"] = u64(stats.get(f"{cat}_delay_total", 0),
                                              get(f"{cat}_delay_total", 0))


@given(st.data())
def test_add_delays_sums_as_the_overflow_rules_do(data: st.DataObject) -> None:
    table = ProcessTable(VirtualClock(), P618, nr_cpus=2)
    names = [n for n in COUNTERS if n.endswith(("_total", "_count", "_ns", "_max", "_min"))
             and not n.endswith("_max_ts")]
    counters = data.draw(st.dictionaries(st.sampled_from(names), _SUMS, max_size=12))
    start = data.draw(st.dictionaries(st.sampled_from(
        [n for n in accounting.empty_record(16) if n.endswith(("_total", "_count"))]),
        _SUMS, max_size=12))
    task = table.spawn(comm="sum", counters=counters)
    got = accounting.empty_record(16) | start
    want = dict(got)
    accounting.add_delays(got, task)
    _add_delays_by_the_rules(want, task)
    assert {k: v for k, v in got.items() if not k.endswith("_max_ts")} == want
