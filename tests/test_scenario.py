"""Tests for tsemu.emulator.scenario: the scenario file format, its checks and error messages,
the embedded default machine and the examples, generators, and carrying a scenario out on a
process table (build_table, apply_event, play)."""

from __future__ import annotations

import dataclasses
import math
import re
import string
import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.emulator.model.clock import NSEC_PER_SEC, RealClock, VirtualClock
from tsemu.emulator.model.families import FamilyTable
from tsemu.emulator.model.kernel import Kernel
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.model.tasks import ExitReport, TaskState
from tsemu.emulator.scenario import (
    Event,
    Scenario,
    ScenarioError,
    apply_event,
    build_table,
    default_scenario,
    format_duration,
    load_scenario,
    parse_counter_value,
    parse_duration,
    parse_scenario,
    parse_size,
    play,
    policy_number,
    signal_number,
)
from tsemu.emulator.scenario.files import check_document
from tsemu.wire import AcFlag, TaskstatsReply, TaskstatsType, decode_message, split_datagram

from .test_tasks import table_state

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BAD = Path(__file__).resolve().parent / "scenarios"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.toml"))

AGROUP = int(AcFlag.AGROUP)
AXSIG = int(AcFlag.AXSIG)
ACORE = int(AcFlag.ACORE)
AFORK = int(AcFlag.AFORK)
ASU = int(AcFlag.ASU)


def run_all(scenario: Scenario) -> tuple[ProcessTable, list[tuple[Event, ExitReport]]]:
    """Build the table and play the whole timeline on the virtual clock."""
    table = build_table(scenario)
    exits = [(event, report) for event, reports in play(table, scenario) for report in reports]
    return table, exits


def errors_of(text: str, source: str = "t.toml") -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source)
    return list(caught.value.problems)


def one_error(text: str) -> str:
    problems = errors_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# --- every example and the default ---------------------------------------------------------


def test_there_are_the_promised_examples() -> None:
    assert [p.name for p in EXAMPLE_FILES] == ["burst.toml", "cgroups.toml", "disk-busy.toml",
                                               "fleet.toml", "multithreaded.toml"]
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLE_FILES:
        assert path.name in readme, f"examples/README.md does not describe {path.name}"


def on_virtual_clock(scenario: Any) -> Any:
    """An example as it is, or on the virtual clock if it was written for the real one."""
    if scenario.machine.clock == "virtual":
        return scenario
    return scenario.with_overrides(clock="virtual")


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_parses_and_builds_every_task(path: Path) -> None:
    scenario = on_virtual_clock(load_scenario(path))
    assert scenario.source.startswith(str(path))
    table = build_table(scenario)
    expected = {tid for spec in scenario.processes for tid in spec.tids}
    assert {task.tid for task in table} == expected
    for spec in scenario.processes:
        leader = table.get(spec.pid)
        assert leader.comm == spec.comm.encode()
        assert leader.cpu == spec.cpu and leader.state is spec.state
        assert dict(leader.counters()) == {k: v for k, v in spec.counters.items() if v}
    assert isinstance(table.clock, VirtualClock)
    assert table.clock.monotonic_ns() == scenario.machine.start_ns


def test_the_default_scenario_is_a_small_realistic_machine() -> None:
    scenario = default_scenario()
    machine = scenario.machine
    assert (machine.cpus, machine.kernel, machine.clock) == (2, "6.18", "real")
    by_comm = {spec.comm: spec for spec in scenario.processes}
    assert by_comm["systemd"].pid == 1 and by_comm["systemd"].ppid == 0
    assert by_comm["kthreadd"].forked_no_exec
    assert len(by_comm["redis-server"].tids) == 4
    assert by_comm["redis-server"].counters["blkio_delay_total"] == 640_000_000
    assert by_comm["bash"].uid == 1000
    table = build_table(scenario)
    assert isinstance(table.clock, RealClock)
    assert table.get(1).comm == b"systemd"
    assert {t.comm for t in table if t.tgid == 733} == {
        b"redis-server", b"bio_close_file", b"bio_aof", b"bio_lazy_free"}
    assert table.get(742).counter("hiwater_rss") == 96 * 1024, "threads share the mm's"
    assert "/system.slice/logrotate.service" in table.cgroups()
    assert scenario.timeline[-1].at_ns < 4 * 60 * NSEC_PER_SEC, "it all happens in minutes"


def test_the_default_scenario_timeline_exits_jobs_on_both_cpus() -> None:
    scenario = default_scenario().with_overrides(clock="virtual")
    _, exits = run_all(scenario)
    assert {report.cpu for _, report in exits} == {0, 1}
    jobs = [r for _, r in exits if r.tgid > 2004]
    assert 80 <= len(jobs) <= 95, "a health check every 2 s for 3 minutes"
    assert all(10 * NSEC_PER_SEC <= e.at_ns <= 191 * NSEC_PER_SEC
               for e, r in exits if r.tgid > 2004)
    named = {r.tid: r for _, r in exits if r.tgid <= 2004}
    assert named[2001].pid_values["ac_exitcode"] == 0
    assert named[2001].pid_values["ac_comm"] == b"logrotate"
    assert any(r.tgid == 2002 and r.tgid_values is not None for _, r in exits), \
        "the two-threaded script's TGID record"
    assert named[2002].pid_values["ac_exitcode"] == 1 << 8
    assert named[2003].pid_values["ac_exitcode"] == 2  # SIGINT
    assert named[2003].pid_values["ac_flag"] & AXSIG
    assert named[2004].pid_values["ac_flag"] & AFORK, "the bgsave child never execs"


def test_the_default_scenario_ships_with_the_package() -> None:
    from importlib import resources

    text = resources.files("tsemu.emulator.scenario").joinpath("default.toml").read_text()
    assert parse_scenario(text, default_scenario().source) == default_scenario()


def reference_example() -> str:
    """The big example of the format's reference (FORMAT.md, under "## Example")."""
    text = (ROOT / "emulator" / "scenario" / "FORMAT.md").read_text()
    example = re.search(r"## Example\n+```toml\n(.*?)```", text, re.S)
    assert example is not None
    return example.group(1)


def test_the_reference_example_parses() -> None:
    scenario = parse_scenario(reference_example(), "reference")
    assert scenario.machine.kernel == "7.2"
    assert scenario.process(812).tids[:2] == (812, 813)
    _, exits = run_all(scenario)
    assert any(r.tgid == 4242 and r.tgid_values is not None for _, r in exits)


# --- the examples' timelines ---------------------------------------------------------------


def test_burst_exits_200_jobs_within_100ms_across_cpus_0_to_3() -> None:
    scenario = load_scenario(EXAMPLES / "burst.toml")
    _, exits = run_all(scenario)
    assert len(exits) == 200
    assert sorted(r.tid for _, r in exits) == list(range(10000, 10200))
    for event, report in exits:
        assert report.cpu == (report.tid - 10000) % 4
        assert 1_001_000_000 <= event.at_ns <= 1_100_000_000
        assert report.tgid == report.tid and report.group_dead
        assert report.tgid_values is None, "a single-threaded process never gets one"
        flag, code = report.pid_values["ac_flag"], report.pid_values["ac_exitcode"]
        assert flag & AGROUP
        if event.args["signal"] is None:
            assert (code, flag & AXSIG) == (0, 0)
        else:
            assert (code, flag & AXSIG) == (9, AXSIG)
        assert report.pid_values["ac_ppid"] == 4100
        assert report.pid_values["ac_comm"] == b"cc1"
    killed = sum(1 for e, _ in exits if e.args["signal"] is not None)
    assert 1 <= killed <= 25, "about 5% are killed"
    times = [event.at_ns for event, _ in exits]
    assert times == sorted(times)


def test_multithreaded_threads_exit_one_by_one_then_the_group() -> None:
    scenario = load_scenario(EXAMPLES / "multithreaded.toml")
    table, exits = run_all(scenario)
    got = [(e.at_ns // 10**9, r.tid, r.cpu, r.pid_values["ac_flag"], r.pid_values["ac_exitcode"],
            r.tgid_values is not None) for e, r in exits]
    assert got == [
        (2, 3104, 1, 0, 0, False),
        (3, 3103, 0, 0, 0, False),
        (5, 3102, 1, 0, 0, False),
        (6, 3100, 0, AXSIG, 15, False),
        (6, 3101, 0, AXSIG, 15, False),
        (6, 3105, 1, AXSIG | AGROUP, 15, True),
    ]
    assert 3100 not in table and not any(t.tgid == 3100 for t in table)
    # The TGID record accumulates every thread (6.18 adds times too).
    tgid_record = exits[-1][1].tgid_values
    assert tgid_record is not None
    for name in ("cpu_count", "cpu_delay_total", "blkio_count", "swapin_delay_total",
                 "ac_utime", "ac_stime", "nvcsw"):
        assert tgid_record[name] == sum(r.pid_values[name] for _, r in exits), name
    assert tgid_record["swapin_delay_total"] == 11_000_000
    assert tgid_record["ac_pid"] == 0 and tgid_record["ac_comm"] == b""


def test_multithreaded_exit_events_as_a_listener_receives_them() -> None:
    scenario = load_scenario(EXAMPLES / "multithreaded.toml")
    table, exits = run_all(scenario)
    machine = scenario.machine
    kernel = Kernel(table, profile=machine.profile, nr_cpus=machine.cpus,
                    families=FamilyTable.default(machine.family_id))
    sizes = []
    for seq, (_, report) in enumerate(exits):
        data = kernel.exit_event(seq, report.tid, report.pid_values, report.tgid,
                                 report.tgid_values)
        sizes.append(len(data))
        (message,) = split_datagram(data)
        assert (message.header.type, message.header.pid) == (0x1F, 0)
        reply = decode_message(message, taskstats_family=0x1F)
        assert isinstance(reply, TaskstatsReply)
        assert reply.records[0].aggr is TaskstatsType.AGGR_PID
        assert reply.records[0].id == report.tid
        assert reply.records[0].values()["ac_pid"] == report.tid
        if report.tgid_values is not None:
            assert reply.records[1].aggr is TaskstatsType.AGGR_TGID
            assert reply.records[1].id == 3100
    assert sizes == [596] * 5 + [1172]


def test_cgroups_example_counts_each_state_before_and_after() -> None:
    scenario = load_scenario(EXAMPLES / "cgroups.toml")
    table = build_table(scenario)

    def counts(path: str) -> tuple[int, ...] | None:
        c = table.cgroup_counts(path)
        return None if c is None else (c["nr_sleeping"], c["nr_running"], c["nr_stopped"],
                                       c["nr_uninterruptible"], c["nr_io_wait"])

    nginx, pg = "/system.slice/nginx.service", "/system.slice/postgresql.service"
    idle, session = "/system.slice/idle.service", "/user.slice/user-1000.slice/session-2.scope"
    encode = "/batch.slice/encode"
    assert counts(nginx) == (2, 1, 0, 0, 0)
    assert counts(pg) == (2, 0, 0, 1, 1)
    assert counts(idle) == (0, 0, 0, 0, 0), "declared, empty, yet it exists"
    assert counts(session) == (1, 1, 1, 0, 0), "the traced task counts nowhere"
    assert counts(encode) == (0, 1, 0, 1, 1), "each thread counts"
    assert counts("/batch.slice") == (0, 0, 0, 0, 0), "ancestors exist"
    assert counts("/nowhere") is None
    exits = [r for _, reports in play(table, scenario) for r in reports]
    assert [r.tid for r in exits] == [3020]
    assert counts(nginx) == (2, 0, 0, 0, 0)
    assert counts(idle) == (1, 0, 0, 0, 0)
    assert counts(pg) == (3, 0, 0, 0, 1)
    assert counts(session) == (1, 1, 0, 0, 0)
    assert counts(encode) == (0, 2, 0, 1, 1)


# --- the format: values, counters, identity, time ------------------------------------------


def test_readable_counters_become_kernel_counters_in_kernel_units() -> None:
    scenario = parse_scenario("""
        [machine]
        boot_time = 2024-01-01T00:00:00Z
        [[process]]
        pid = 50
        comm = "app"
        exe = { dev = "8:1", inode = 77 }
        delays.blkio = { count = 3, total = "3ms", max = "2ms", min = "250us" }
        delays.irq.max_at = 2024-01-01T00:01:40.5Z
        delays.cpu.max_at = "90s"
        times = { utime = "1.5s", stime = "2m", run_virtual = 1234 }
        memory = { coremem = 10, virtmem = 20, hiwater_rss = "2MiB", hiwater_vm = 4096 }
        io = { read_char = "1.5KiB", write_bytes = "1GiB", read_syscalls = 7 }
        faults = { minflt = 5, majflt = 1 }
        switches = { nvcsw = 8, nivcsw = 9 }
        counters = { wpcopy_count = 2, wpcopy_delay_total = "1us", swapin_delay_max_ts = [12, 34] }
        """)
    assert dict(scenario.process(50).counters) == {
        "ac_exe_dev": (8 << 8) | 1, "ac_exe_inode": 77,
        "blkio_count": 3, "blkio_delay_total": 3_000_000, "blkio_delay_max": 2_000_000,
        "blkio_delay_min": 250_000,
        "irq_delay_max_ts": (1_704_067_300, 500_000_000),
        "cpu_delay_max_ts": (1_704_067_290, 0),
        "utime_ns": 1_500_000_000, "stime_ns": 120 * NSEC_PER_SEC,
        "cpu_run_virtual_total": 1234,
        "coremem": 10, "virtmem": 20, "hiwater_rss": 2048, "hiwater_vm": 4096,
        "read_char": 1536, "write_bytes": 2**30, "read_syscalls": 7,
        "ac_minflt": 5, "ac_majflt": 1, "nvcsw": 8, "nivcsw": 9,
        "wpcopy_count": 2, "wpcopy_delay_total": 1000, "swapin_delay_max_ts": (12, 34),
    }


def test_identity_fields_reach_the_records() -> None:
    scenario = parse_scenario("""
        [machine]
        boot_time = "2024-01-01T00:00:00Z"
        start = "100s"
        [[process]]
        pid = 70
        comm = "daemon"
        ppid = 1
        uid = 1000
        gid = 100
        cgroup = "/svc"
        state = "stopped"
        cpu = 1
        start = "40s"
        nice = -5
        policy = "SCHED_RR"
        forked_no_exec = true
        superuser = true
        """)
    table = build_table(scenario)
    task = table.get(70)
    assert (task.uid, task.gid, task.cgroup, task.state, task.cpu) == (1000, 100, "/svc",
                                                                       TaskState.STOPPED, 1)
    record = table.pid_stats(70)
    assert record["ac_btime"] == 1_704_067_200 + 40
    assert record["ac_etime"] == 60 * 10**6
    assert record["ac_nice"] == 251 and record["ac_sched"] == 2
    assert record["ac_flag"] == AFORK | ASU
    assert record["ac_ppid"] == 1 and record["ac_comm"] == b"daemon"


def test_age_start_and_thread_start_times() -> None:
    scenario = parse_scenario("""
        [machine]
        start = "1h"
        [[process]]
        pid = 10
        comm = "old"
        [[process]]
        pid = 20
        comm = "svc"
        age = "10m"
        [[process.thread]]
        tid = 21
        age = "5m"
        [[process.thread]]
        tid = 22
        start = "3590s"
        """)
    table = build_table(scenario)
    hour = 3600 * NSEC_PER_SEC
    assert table.get(10).start_ns == 0, "a [[process]] starts at boot by default"
    assert table.get(20).start_ns == hour - 600 * NSEC_PER_SEC
    assert table.get(21).start_ns == hour - 300 * NSEC_PER_SEC
    assert table.get(22).start_ns == 3590 * NSEC_PER_SEC
    assert table.pid_stats(21)["ac_tgetime"] == 600 * 10**6, "measured from the leader"


def test_threads_count_entries_and_share_the_mm() -> None:
    scenario = parse_scenario("""
        [[process]]
        pid = 30
        comm = "srv"
        threads = 4
        cpu = 1
        state = "sleeping"
        memory = { hiwater_rss = "8MiB" }
        exe = { dev = 2049, inode = 5 }
        [[process.thread]]
        tid = 31
        comm = "io"
        cpu = 0
        state = "uninterruptible"
        delays.blkio = { count = 2, total = "5ms" }
        """)
    spec = scenario.process(30)
    assert spec.tids == (30, 31, 32, 33), "automatic tids continue after the highest written"
    table = build_table(scenario)
    io, plain = table.get(31), table.get(33)
    assert (io.comm, io.cpu, io.state) == (b"io", 0, TaskState.UNINTERRUPTIBLE)
    assert (plain.comm, plain.cpu, plain.state) == (b"srv", 1, TaskState.SLEEPING)
    assert io.counter("blkio_delay_total") == 5_000_000
    for task in (io, plain):
        assert task.counter("hiwater_rss") == 8192 and task.counter("ac_exe_inode") == 5


def test_timeline_actions_on_a_table() -> None:
    scenario = parse_scenario("""
        [machine]
        cpus = 4
        [[process]]
        pid = 100
        comm = "app"
        [[process.thread]]
        tid = 101
        [[timeline]]
        at = "1s"
        set = { pid = 100, comm = "app2", state = "sleeping", io = { read_bytes = "1MiB" } }
        [[timeline]]
        at = "1s"
        add = { pid = 100, io = { read_bytes = "1MiB" }, faults = { minflt = 3 } }
        [[timeline]]
        at = "2s"
        move = { pid = 101, cpu = 3 }
        [[timeline]]
        at = "2s"
        clone = { tgid = 100, tid = 150, cpu = 2, comm = "late" }
        [[timeline]]
        at = "3s"
        exit = { pid = 101, cpu = 1 }
        [[timeline]]
        at = "4s"
        spawn = { pid = 200, comm = "crash", cpu = 2, age = "500ms" }
        [[timeline]]
        at = "5s"
        exit = { pid = 200, signal = "SIGSEGV", core = true }
        [[timeline]]
        at = "6s"
        exit_group = { pid = 100, code = 3, caller = 150 }
        """)
    table = build_table(scenario)
    steps = list(play(table, scenario))
    assert [e.action for e, _ in steps] == ["set", "add", "move", "clone", "exit", "spawn",
                                            "exit", "exit_group"]
    # set then add at the same time, in file order: 1 MiB set, then 1 MiB added
    assert steps[4][1][0].pid_values["read_bytes"] == 0, "101 is a thread: counters are its own"
    (moved,) = steps[4][1]
    assert (moved.tid, moved.cpu) == (101, 1), "exit = {cpu} overrides the task's CPU"
    (crash,) = steps[6][1]
    assert crash.pid_values["ac_exitcode"] == 11 | 0x80
    assert crash.pid_values["ac_flag"] == ACORE | AXSIG | AGROUP
    assert crash.pid_values["ac_etime"] == 1_500_000, "spawned 0.5 s before the event"
    group = steps[7][1]
    assert [r.tid for r in group] == [150, 100], "the caller exits first"
    assert group[1].pid_values["ac_comm"] == b"app2"
    assert group[1].pid_values["read_bytes"] == 2 * 2**20
    assert group[1].pid_values["ac_minflt"] == 3
    assert group[0].pid_values["ac_comm"] == b"late" and group[0].cpu == 2
    assert group[1].tgid_values is not None
    assert len(table) == 0


def test_events_at_the_same_time_keep_file_order() -> None:
    text = """
        [[timeline]]
        at = "1s"
        spawn = { pid = 500, comm = "blink" }
        [[timeline]]
        at = "1s"
        exit = { pid = 500 }
        """
    assert [e.action for e in parse_scenario(text).timeline] == ["spawn", "exit"]
    swapped = """
        [[timeline]]
        at = "1s"
        exit = { pid = 500 }
        [[timeline]]
        at = "1s"
        spawn = { pid = 500, comm = "blink" }
        """
    assert "timeline[0].exit.pid: no task 500 exists at 1s" in one_error(swapped)


def test_apply_event_is_what_play_does() -> None:
    scenario = load_scenario(EXAMPLES / "multithreaded.toml")
    table = build_table(scenario)
    clock = table.clock
    assert isinstance(clock, VirtualClock)
    tids = []
    for event in scenario.timeline:
        clock.advance_ns(scenario.clock_ns(event) - clock.monotonic_ns())
        tids += [r.tid for r in apply_event(table, event)]
    assert tids == [3104, 3103, 3102, 3100, 3101, 3105]


def test_real_clock_keeps_ages_relative_to_now() -> None:
    scenario = parse_scenario("""
        [machine]
        clock = "real"
        start = "10s"
        [[process]]
        pid = 9
        comm = "r"
        age = "2s"
        """)
    before = RealClock().monotonic_ns()
    table = build_table(scenario)
    after = RealClock().monotonic_ns()
    assert isinstance(table.clock, RealClock)
    start = table.get(9).start_ns
    assert before - 2 * NSEC_PER_SEC <= start <= after - 2 * NSEC_PER_SEC


def test_with_overrides_rechecks_the_whole_scenario() -> None:
    scenario = load_scenario(EXAMPLES / "multithreaded.toml")
    assert scenario.with_overrides() is scenario
    newer = scenario.with_overrides(kernel="7.2", family_id=0x20)
    assert (newer.machine.kernel, newer.machine.family_id) == ("7.2", 0x20)
    assert newer.processes == scenario.processes
    with pytest.raises(ScenarioError) as caught:
        scenario.with_overrides(cpus=1)
    text = str(caught.value)
    assert "multithreaded.toml (with cpus=1)" in text
    assert "process[1].thread[1].cpu: cpu 1 does not exist" in text


def test_automatic_pids_start_after_the_highest_written() -> None:
    scenario = parse_scenario("""
        [[process]]
        pid = 1
        comm = "init"
        [[process]]
        comm = "auto"
        [[timeline]]
        at = "1s"
        spawn = { pid = 700, comm = "later" }
        [[timeline]]
        at = "2s"
        spawn = { comm = "auto2", threads = 2 }
        """)
    assert scenario.machine.next_pid == 701
    assert [p.pid for p in scenario.processes] == [1, 701]
    assert scenario.timeline[1].args["process"].tids == (702, 703)


def test_an_automatic_pid_that_takes_a_written_one_is_explained() -> None:
    problem = one_error("""
        [machine]
        next_pid = 5
        [[process]]
        comm = "auto"
        [[process]]
        pid = 5
        comm = "explicit"
        age = "1s"
        """)
    assert "process[1]" in problem and "pid 5 is in use" in problem
    assert "raise [machine] next_pid" in problem


def test_references_to_exited_and_zombie_tasks_are_explained() -> None:
    base = """
        [[process]]
        pid = 100
        comm = "app"
        threads = 2
        [[timeline]]
        at = "1s"
        exit = { pid = 100 }
        """
    assert "task 100 has exited (it is a zombie leader waiting for its threads 101)" in \
        one_error(base + '[[timeline]]\nat = "2s"\nset = { pid = 100, nice = 1 }\n')
    gone = one_error(base + '[[timeline]]\nat = "2s"\nexit = { pid = 101 }\n'
                     '[[timeline]]\nat = "3s"\nexit = { pid = 101 }\n')
    assert "timeline[2].exit.pid: task 101 is gone at 3s: it exited at 2s, timeline[1].exit" \
        in gone
    assert "exit_group takes the process's pid" in one_error(
        base.replace("exit = { pid = 100 }", "exit_group = { pid = 101 }"))


def test_a_spawn_on_a_pid_in_use_is_refused() -> None:
    problem = one_error("""
        [[process]]
        pid = 100
        comm = "app"
        [[timeline]]
        at = "1s"
        spawn = { pid = 100, comm = "again" }
        """)
    assert 'timeline[0].spawn.pid: pid 100 is in use at 1s by "app"' in problem


# --- generators ----------------------------------------------------------------------------

GENERATOR = """
[machine]
cpus = 4
next_pid = 1000
[[generator]]
kind = "short_jobs"
seed = {seed}
count = 30
duration = "1s"
arrival = "random"
lifetime = ["1ms", "50ms"]
threads = [1, 3]
cpus = "1-3"
comm = "w{{n}}"
code = [0, 1, 2]
killed = 0.3
signal = ["SIGTERM", "SIGKILL"]
times = {{ utime = ["1ms", "9ms"] }}
io = {{ read_bytes = ["1KiB", "4KiB"] }}
"""


def test_generators_are_deterministic() -> None:
    first = parse_scenario(GENERATOR.format(seed=1))
    again = parse_scenario(GENERATOR.format(seed=1))
    other = parse_scenario(GENERATOR.format(seed=2))
    assert first.timeline == again.timeline
    assert first.timeline != other.timeline
    assert len(first.timeline) == len(other.timeline) == 60


def test_generated_jobs_follow_their_keys() -> None:
    scenario = parse_scenario(GENERATOR.format(seed=3))
    spawns = [e for e in scenario.timeline if e.action == "spawn"]
    assert [e.args["process"].comm for e in spawns] == [f"w{n}" for n in range(30)]
    assert [e.args["process"].cpu for e in spawns] == [(1, 2, 3)[n % 3] for n in range(30)]
    assert all(0 <= e.at_ns <= NSEC_PER_SEC for e in spawns)
    for event in spawns:
        spec = event.args["process"]
        assert 1 <= len(spec.tids) <= 3
        assert 1_000_000 <= spec.counters["utime_ns"] <= 9_000_000
        assert 1024 <= spec.counters["read_bytes"] <= 4096
    _, exits = run_all(scenario)
    groups = [r for _, r in exits if r.group_dead]
    assert len(groups) == 30
    for report in groups:
        code, flag = report.pid_values["ac_exitcode"], report.pid_values["ac_flag"]
        assert code in (0, 1 << 8, 2 << 8, 9, 15)
        assert bool(flag & AXSIG) == (code in (9, 15)) or report.tid != report.tgid
        assert (report.tgid_values is not None) == (sum(r.tgid == report.tgid
                                                        for _, r in exits) > 1)


def test_rate_spaces_jobs_evenly() -> None:
    scenario = parse_scenario("""
        [[generator]]
        kind = "short_jobs"
        rate = 4
        duration = "2s"
        start = "1s"
        lifetime = "10ms"
        cpus = "0"
        """)
    spawns = [e.at_ns for e in scenario.timeline if e.action == "spawn"]
    assert spawns == [NSEC_PER_SEC + i * 250_000_000 for i in range(8)]
    exits = [e.at_ns for e in scenario.timeline if e.action == "exit_group"]
    assert exits == [t + 10_000_000 for t in spawns]


# --- every kind of bad file ----------------------------------------------------------------

BAD_FILES = [
    ("syntax_error.toml", "line 5, column 6: invalid TOML: Expected '=' after a key"),
    ("unknown_key.toml", 'process[0].stat: unknown key; did you mean "state"?'),
    ("wrong_type.toml", 'process[0].pid: expected an integer, got a string "100"'),
    ("bad_duration_unit.toml",
     'process[0].delays.blkio.total: "3 parsecs" is not a duration'),
    ("negative_count.toml", "generator[0].count: must not be negative (got -5)"),
    ("cpu_out_of_range.toml", "process[0].cpu: cpu 2 does not exist: the machine has CPUs 0-1"),
    ("unknown_profile.toml", 'machine.kernel: unknown kernel profile "4.4"; choose one of '
     '2.6.31, 3.10'),
    ("bad_family_id.toml", "machine.family_id: family id 0x10 is outside 0x11..0xffff"),
    ("duplicate_pid.toml", "process[1].pid: pid 100 is already taken by process[0].pid"),
    ("unknown_pid.toml", "timeline[0].exit.pid: no task 4242 exists at 1s"),
    ("unknown_signal.toml", 'timeline[0].exit.signal: unknown signal "SIGKILLL"; did you mean '
     '"SIGKILL"?'),
    ("bad_cpulist.toml", "generator[0].cpus: bad cpulist \"0-7\": at byte 3: CPU 7 beyond the "
     "machine's 4"),
]


@pytest.mark.parametrize(("name", "expected"), BAD_FILES, ids=[n for n, _ in BAD_FILES])
def test_each_bad_file_gets_its_promised_error(name: str, expected: str) -> None:
    path = BAD / name
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: ")
    assert expected in problem
    assert "\n" not in problem
    if name != "syntax_error.toml":
        assert re.search(r"\(the entry begins at line \d+\)$", problem)


def test_every_fixture_is_tested() -> None:
    tested = {name for name, _ in BAD_FILES} | {"many_errors.toml"}
    assert {p.name for p in BAD.glob("*.toml")} == tested


def test_all_problems_are_collected_in_file_order() -> None:
    path = BAD / "many_errors.toml"
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    problems = caught.value.problems
    assert str(caught.value) == "\n".join(problems)
    expected = [
        "machine.kernel: write the kernel profile as a string",
        'process[0].comn: unknown key; did you mean "comm"?',
        'process[0]: missing required key "comm"',
        "process[1].times.utime: a float (1.5) is not a duration",
        "process[1].cpu: cpu 5 does not exist",
        "timeline[0].exit.pid: no task 300 exists at 1s",
        'generator[0].lifetime: "10 fortnights" is not a duration',
    ]
    assert len(problems) == len(expected)
    for problem, part in zip(problems, expected, strict=True):
        assert problem.startswith(f"{path}: {part}"), problem


def test_a_missing_file_is_named() -> None:
    with pytest.raises(ScenarioError, match=r"^/no/such/dir/s\.toml: cannot read the scenario: "
                       r"No such file or directory$"):
        load_scenario("/no/such/dir/s.toml")


def test_a_directory_or_binary_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=f"^{re.escape(str(tmp_path))}: cannot read"):
        load_scenario(tmp_path)
    binary = tmp_path / "x.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(binary)


@pytest.mark.parametrize(("text", "expected"), [
    ('[machine]\nkernel = 6.18\n', 'kernel = "6.18" (a bare 6.18 is a TOML number)'),
    ('[machine]\ncpus = 0\n', "machine.cpus: 0 is out of range 1..8192"),
    ('[machine]\nclock = "wall"\n', 'clock must be "virtual" or "real"'),
    ('[machine]\nboot_time = "yesterday"\n', "is not an RFC 3339 date-time"),
    ('[machine]\nmirror_host = 1\n', "machine.mirror_host: expected true or false"),
    ("machine = 3\n", "machine: expected a table, got an integer 3"),
    ('[process]\ncomm = "x"\n', "process: expected an array of tables ([[process]])"),
    ("proces = []\n", 'proces: unknown key; did you mean "process"?'),
    ('[[process]]\ncomm = "a-very-long-command-name"\n',
     'is 24 bytes; the kernel keeps 15 (TASK_COMM_LEN - 1): write "a-very-long-com"'),
    ('[[process]]\ncomm = "x"\nstate = "zombie"\n', "a task becomes a zombie by exiting"),
    ('[[process]]\ncomm = "x"\npolicy = "SCHED_FIFOO"\n', 'did you mean "SCHED_FIFO"?'),
    ('[[process]]\ncomm = "x"\ncgroup = "system.slice"\n', "is not a cgroup path"),
    ('[[process]]\ncomm = "x"\nnice = 20\n', "process[0].nice: 20 is out of range -20..19"),
    ('[[process]]\ncomm = "x"\nmemory.hiwater_rss = "2MB"\n', "use binary units"),
    ('[[process]]\ncomm = "x"\ndelays.blkio = { max = "2ms", total = "1ms" }\n',
     "delays.blkio.max: 2ms is longer than total 1ms"),
    ('[[process]]\ncomm = "x"\ndelays.bklio.count = 1\n', 'did you mean "blkio"?'),
    ('[[process]]\ncomm = "x"\ntimes.utime = "1.5ns"\n', "not a whole number of nanoseconds"),
    ('[[process]]\ncomm = "x"\ntimes.utime = "10"\n', '"10" has no unit'),
    ('[[process]]\ncomm = "x"\ntimes.utime = -1\n', "a duration must not be negative"),
    ('[[process]]\ncomm = "x"\ncounters = { blkio_delay_total = 1 }\n'
     'delays.blkio.total = 2\n', "blkio_delay_total is given twice"),
    ('[[process]]\ncomm = "x"\nthreads = 1\n[[process.thread]]\ntid = 5\n',
     "threads = 1 counts the leader"),
    ('[[process]]\ncomm = "x"\nage = "1s"\nstart = "1s"\n', "give start or age, not both"),
    ('[[process]]\ncomm = "x"\nstart = "200s"\n', "is after the moment it is created"),
    ('[[process]]\ncomm = "x"\n[[process.thread]]\nage = "200s"\n', "reaches back before boot"),
    ('[[process]]\ncomm = "x"\nage = "5s"\n[[process.thread]]\nage = "9s"\n',
     "the thread starts 4s before its process"),
    ('[[process]]\ncomm = "x"\n[[process.thread]]\nexe.inode = 3\n',
     "belongs to the process (its executable)"),
    ('[[process]]\npid = 7\ncomm = "x"\n[[process.thread]]\ntid = 7\n',
     "tid 7 is given twice"),
    ('[[timeline]]\nexit = { pid = 1 }\n', 'timeline[0]: missing required key "at"'),
    ('[[timeline]]\nat = 0\n', "needs exactly one action"),
    ('[[timeline]]\nat = 0\nexit = { pid = 1 }\nmove = { pid = 1, cpu = 0 }\n',
     "has 2: move, exit"),
    ('[[process]]\npid = 1\ncomm = "x"\n[[timeline]]\nat = 0\n'
     'exit = { pid = 1, code = 1, signal = 9 }\n', "give an exit code or a signal, not both"),
    ('[[process]]\npid = 1\ncomm = "x"\n[[timeline]]\nat = 0\nexit = { pid = 1, core = true }\n',
     "only a death by signal dumps core"),
    ('[[process]]\npid = 1\ncomm = "x"\n[[timeline]]\nat = 0\n'
     'add = { pid = 1, delays.cpu.max = "1ms" }\n', "a value, not a sum"),
    ('[[process]]\npid = 1\ncomm = "x"\n[[timeline]]\nat = 0\nset = { pid = 1 }\n',
     "nothing to set"),
    ('[[timeline]]\nat = 0\nspawn = { comm = "x", threads = 2, thread = [{ age = "1s" }] }\n',
     "the threads of a timeline spawn start with it"),
    ('[[generator]]\ncount = 1\n', 'generator[0]: missing required key "kind"'),
    ('[[generator]]\nkind = "short_jobs"\n', "needs count (a number of jobs) or rate"),
    ('[[generator]]\nkind = "short_jobs"\ncount = 1\nrate = 1\nduration = "1s"\n',
     "give count or rate, not both"),
    ('[[generator]]\nkind = "short_jobs"\nrate = 2\n', "rate needs a duration"),
    ('[[generator]]\nkind = "short_jobs"\ncount = 200000\n', "200000 is out of range 0..100000"),
    ('[[generator]]\nkind = "short_jobs"\ncount = 1\ncomm = "{x}"\n',
     "only {n} (the job's index) may appear in braces"),
    ('[[generator]]\nkind = "short_jobs"\ncount = 1\nlifetime = ["2s", "1s"]\n',
     "has min above max"),
    ('[[generator]]\nkind = "short_jobs"\ncount = 1\nkilled = 1.5\n',
     "1.5 is not a share between 0.0 and 1.0"),
    ('[[generator]]\nkind = "short_jobs"\ncount = 1\ncpus = ""\n', 'cpulist "" names no CPU'),
    ('[[cgroup]]\npath = "/a//b"\n', 'cgroup[0].path: "/a//b" is not a cgroup path'),
])
def test_each_kind_of_mistake_is_named(text: str, expected: str) -> None:
    problems = errors_of(text, "m.toml")
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("m.toml: ") for p in problems)


# --- loading big scenarios: the table built once, nothing of the document kept -------------

_BUILT_ONCE = {
    "no timeline": """
        [machine]
        cpus = 2
        next_pid = 50
        [[cgroup]]
        path = "/a/b"
        [[process]]
        comm = "auto"
        age = "1s"
        threads = 3
        cgroup = "/a/b"
        delays.cpu = { count = 2, total = "3ms" }
        memory = { hiwater_rss = "1MiB" }
        [[process]]
        pid = 7
        comm = "seven"
        cpu = 1
        [[process.thread]]
        age = "500ms"
        comm = "t"
        io.read_bytes = 5000
        """,
    "generators and spawns": """
        [machine]
        start = "10s"
        [[process]]
        pid = 1
        comm = "init"
        [[timeline]]
        at = "1s"
        spawn = { comm = "later", threads = 2 }
        [[generator]]
        kind = "short_jobs"
        count = 5
        threads = [1, 3]
        duration = "2s"
        """,
}


@pytest.mark.parametrize("name", [*_BUILT_ONCE, "docstring", *(p.name for p in EXAMPLE_FILES),
                                  "default, virtual"])
def test_the_first_build_takes_the_checks_table_the_same_as_a_new_one(name: str) -> None:
    """Checking a scenario builds its start state; the first build_table hands that table
    over instead of building it again; later builds build: every one the same table, which
    plays the same timeline the same way."""
    if name in _BUILT_ONCE:
        scenario = parse_scenario(_BUILT_ONCE[name])
    elif name == "docstring":
        scenario = parse_scenario(reference_example())
    elif name.startswith("default"):
        scenario = default_scenario().with_overrides(clock="virtual")
    else:
        scenario = on_virtual_clock(load_scenario(EXAMPLES / name))
    assert len(scenario._start_table) == 1
    first = build_table(scenario)
    assert not scenario._start_table, "handed over once"
    second = build_table(scenario)
    assert second is not first
    assert table_state(first) == table_state(second)
    played = [[report for _, reports in play(table, scenario) for report in reports]
              for table in (first, second)]
    assert played[0] == played[1]
    assert table_state(first) == table_state(second)
    assert first.spawn(comm="next").tid == second.spawn(comm="next").tid


def test_a_real_clock_scenario_is_built_when_asked() -> None:
    scenario = default_scenario()
    assert scenario.machine.clock == "real" and not scenario._start_table
    assert isinstance(build_table(scenario).clock, RealClock)


def test_a_replaced_scenario_builds_its_own_table() -> None:
    scenario = parse_scenario('[[process]]\npid = 5\ncomm = "p"\n')
    wider = dataclasses.replace(
        scenario, machine=dataclasses.replace(scenario.machine, cpus=8))
    assert build_table(wider).nr_cpus == 8
    assert build_table(scenario).nr_cpus == 2


def test_overrides_add_up() -> None:
    scenario = load_scenario(EXAMPLES / "multithreaded.toml")
    newer = scenario.with_overrides(kernel="7.2").with_overrides(family_id=0x20)
    assert (newer.machine.kernel, newer.machine.family_id) == ("7.2", 0x20)
    assert newer.source.endswith('(with kernel="7.2") (with family_id=32)')
    assert dict(newer.overrides) == {"kernel": "7.2", "family_id": 0x20}
    assert newer.document is not None and newer.document["machine"]["kernel"] == "7.2"
    assert newer.text == scenario.text == (EXAMPLES / "multithreaded.toml").read_text()


def test_nothing_of_the_document_is_kept() -> None:
    """Every value a scenario keeps is a copy: one object of the TOML document left alive
    keeps the allocator's whole arena of it resident (hundreds of MB for a big scenario)."""
    text = """
        [machine]
        kernel = "7.2"
        [[cgroup]]
        path = "/kept/group"
        [[process]]
        pid = 12345
        comm = "kept-comm"
        cgroup = "/kept/group"
        io = { read_bytes = 987654 }
        exe = { dev = 2049, inode = 7777777 }
        [[process.thread]]
        tid = 23456
        comm = "kept-thread"
        [[timeline]]
        at = 3000000000
        set = { pid = 12345, comm = "renamed", uid = 4242 }
        """
    document = tomllib.loads(text)
    scenario = check_document(document, "d", text=text)
    process = document["process"][0]
    spec = scenario.process(12345)
    kept = [(spec.pid, process["pid"]), (spec.comm, process["comm"]),
            (spec.cgroup, process["cgroup"]), (scenario.cgroups[0], document["cgroup"][0]["path"]),
            (spec.counters["read_bytes"], process["io"]["read_bytes"]),
            (spec.counters["ac_exe_inode"], process["exe"]["inode"]),
            (spec.threads[0].tid, process["thread"][0]["tid"]),
            (spec.threads[0].comm, process["thread"][0]["comm"]),
            (scenario.machine.kernel, document["machine"]["kernel"]),
            (scenario.timeline[0].at_ns, document["timeline"][0]["at"])]
    values = scenario.timeline[0].args
    written = document["timeline"][0]["set"]
    kept += [(values["pid"], written["pid"]), (values["values"]["comm"], written["comm"]),
             (values["values"]["uid"], written["uid"])]
    for ours, theirs in kept:
        assert ours == theirs and ours is not theirs, ours
    assert scenario.text == text and scenario.document == document


def test_a_pid_written_twice_names_the_first_table_that_writes_it() -> None:
    problems = errors_of("""
        process = [5, { pid = 7, comm = "a", thread = [{ tid = 9 }] }, { pid = 9, comm = "b" },
                   { comm = "c", thread = [{ tid = 7 }] }]
        """)
    assert problems == [
        "t.toml: process[0]: expected a table, got an integer 5",
        "t.toml: process[2].pid: pid 9 is already taken by process[1].thread[0].tid",
        "t.toml: process[3].thread[0].tid: pid 7 is already taken by process[1].pid",
    ]


@given(st.from_regex(r"[0-9]{1,20}(\.[0-9]{1,20})? ?(ns|us|µs|μs|ms|s|m|min|h|d)",
                     fullmatch=True))
def test_a_simple_duration_reads_as_in_general(text: str) -> None:
    """The one-part durations read without Fraction read as the general reading does (which
    reads the same with a "0s" part in front)."""
    def outcome(written: str) -> int | str:
        try:
            return parse_duration(written)
        except ValueError as exc:
            return str(exc).split(" is ", 1)[1]  # the problem, without the value

    assert outcome(text) == outcome("0s " + text)


@given(st.from_regex(r"[0-9]{0,20}(\.[0-9]{1,20})?(B|KiB|MiB|GiB|TiB)", fullmatch=True),
       st.sampled_from(["B", "KiB"]))
def test_a_size_reads_as_the_floor_of_its_exact_value(text: str, unit: str) -> None:
    number = re.match(r"[0-9.]*", text).group()  # type: ignore[union-attr]
    scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
    if not number:
        return
    exact = Fraction(number) * scale[text[len(number):]] / scale[unit]
    if math.floor(exact) >= 2**64:
        with pytest.raises(ValueError, match="out of range"):
            parse_size(text, unit)
    else:
        assert parse_size(text, unit) == math.floor(exact)


# --- value helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ns"), [
    (0, 0), (17, 17), ("250ns", 250), ("3us", 3000), ("3µs", 3000), ("3μs", 3000),
    ("3ms", 3_000_000), ("1.5s", 1_500_000_000), ("2m", 120 * NSEC_PER_SEC),
    ("2min", 120 * NSEC_PER_SEC), ("1h", 3600 * NSEC_PER_SEC), ("1d", 86400 * NSEC_PER_SEC),
    ("1m30s", 90 * NSEC_PER_SEC), (" 1 s 500 ms ", 1_500_000_000), (".5ms", 500_000),
])
def test_parse_duration(text: Any, ns: int) -> None:
    assert parse_duration(text) == ns


@given(st.integers(0, 2**63 - 1))
def test_format_duration_round_trips(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


def test_sizes_signals_policies_and_control_values() -> None:
    assert parse_size("1.5KiB") == 1536 and parse_size("1.2MiB") == 1_258_291
    assert parse_size("2MiB", unit="KiB") == 2048 and parse_size(7, unit="KiB") == 7
    assert [signal_number(s) for s in ("SIGKILL", "kill", "9", 15, "SIGRTMIN+2", "RTMAX")] == \
        [9, 9, 9, 15, 36, 64]
    assert [policy_number(p) for p in ("SCHED_OTHER", "fifo", "SCHED_IDLE", 6)] == [0, 1, 5, 6]
    assert parse_counter_value("blkio_delay_total", "3ms") == 3_000_000
    assert parse_counter_value("hiwater_rss", "1MiB") == 1024
    assert parse_counter_value("read_bytes", "1KiB") == 1024
    assert parse_counter_value("ac_exe_dev", "8:1") == 2049
    assert parse_counter_value("cpu_delay_max_ts", [5, 6]) == (5, 6)
    with pytest.raises(ScenarioError, match="blkio_dely_total: unknown counter; did you mean"):
        parse_counter_value("blkio_dely_total", 1)
    with pytest.raises(ScenarioError, match="^nvcsw: must not be negative"):
        parse_counter_value("nvcsw", -1)


# --- robustness ----------------------------------------------------------------------------

_KEYS = ["machine", "process", "timeline", "generator", "cgroup", "thread", "pid", "tid",
         "comm", "cpus", "cpu", "kernel", "family_id", "clock", "start", "age", "at", "exit",
         "spawn", "set", "add", "move", "clone", "exit_group", "count", "rate", "duration",
         "kind", "threads", "signal", "code", "core", "delays", "blkio", "total", "io",
         "read_bytes", "times", "utime", "counters", "state", "cgroup", "path", "lifetime",
         "seed", "killed", "next_pid", "pid_max", "boot_time", "exe", "dev", "x"]
_SCALARS = st.one_of(
    st.integers(-3, 300).map(str),
    st.sampled_from(["2**64", "18446744073709551616", "-9223372036854775809", "0x1f", "1e9",
                     "nan", "inf", "true", "false", "1979-05-27T07:32:00Z", "1979-05-27",
                     "07:32:00", "[]", "{}", "[1, 2]", '["1ms", "2ms"]', "[[1]]"]),
    st.sampled_from(["1s", "3ms", "-1s", "1.5ns", "0-3", "7.2", "6.18", "SIGKILL", "running",
                     "zombie", "short_jobs", "/a/b", "8:1", "{n}", "{", "MiB", "4KiB", ""]
                    ).map(lambda s: f'"{s}"'),
    st.text(string.printable, max_size=8).map(repr),
)
_LINE = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(_KEYS), _SCALARS),
    st.builds(lambda k, j, v: f"{k}.{j} = {v}", st.sampled_from(_KEYS), st.sampled_from(_KEYS),
              _SCALARS),
    st.builds(lambda k, a, b: f"{k} = {{ {a} = {b} }}", st.sampled_from(_KEYS),
              st.sampled_from(_KEYS), _SCALARS),
    st.sampled_from(["[machine]", "[[process]]", "[[process.thread]]", "[[timeline]]",
                     "[[generator]]", "[[cgroup]]", "[process.io]", "[[timeline.spawn]]"]),
    st.text(max_size=12),
)


@settings(max_examples=400)
@given(st.lists(_LINE, max_size=14))
def test_arbitrary_toml_ish_text_raises_only_scenario_error(lines: list[str]) -> None:
    try:
        scenario = parse_scenario("\n".join(lines), "fuzz.toml")
    except ScenarioError as exc:
        assert exc.problems and all(p.startswith("fuzz.toml: ") for p in exc.problems)
        assert all("\n" not in p for p in exc.problems)
    else:
        table = build_table(scenario) if scenario.machine.clock == "virtual" else None
        if table is not None:
            for _ in play(table, scenario):
                pass


@given(st.binary(max_size=64))
def test_arbitrary_bytes_as_text_raise_only_scenario_error(data: bytes) -> None:
    try:
        parse_scenario(data.decode("utf-8", "replace"), "b.toml")
    except ScenarioError as exc:
        assert all(p.startswith("b.toml: ") for p in exc.problems)


def test_pathological_toml_is_a_scenario_error() -> None:
    for text in ("a = " + "[" * 5000, "a = " + "1" * 5000):
        with pytest.raises(ScenarioError, match="^deep.toml: invalid TOML"):
            parse_scenario(text, "deep.toml")


_PIDS = st.sampled_from(["1", "2", "100", "101", "102"])
_DURATIONS = st.sampled_from(['"0s"', '"1ms"', '"1s"', '"2s"', "5", '"90s"', '"200s"'])
_PROCESS_KEY = st.one_of(
    _PIDS.map("pid = {}".format), st.integers(0, 3).map("cpu = {}".format),
    st.integers(0, 3).map("threads = {}".format), _DURATIONS.map("age = {}".format),
    _DURATIONS.map("start = {}".format), st.sampled_from(['"/a"', '"/a/b"', '"x"']).map(
        "cgroup = {}".format),
    st.sampled_from(['"sleeping"', '"io_wait"', '"zombie"']).map("state = {}".format),
    st.sampled_from(['{ count = 1, total = "1ms", max = "2ms" }', '{ total = "3ms" }']).map(
        "delays.blkio = {}".format),
    st.sampled_from(['"1KiB"', "18446744073709551615", "-1"]).map("io.read_bytes = {}".format),
)
_ACTION = st.one_of(
    st.builds('spawn = {{ pid = {}, comm = "s", cpu = {} }}'.format, _PIDS, st.integers(0, 3)),
    st.just('spawn = { comm = "auto", threads = 2 }'),
    _PIDS.map("exit = {{ pid = {} }}".format),
    _PIDS.map("exit = {{ pid = {}, signal = 9, core = true }}".format),
    _PIDS.map("exit_group = {{ pid = {}, code = 1 }}".format),
    st.builds("exit_group = {{ pid = {}, caller = {} }}".format, _PIDS, _PIDS),
    st.builds("clone = {{ tgid = {}, tid = {} }}".format, _PIDS, _PIDS),
    _PIDS.map("clone = {{ tgid = {} }}".format),
    _PIDS.map('set = {{ pid = {}, state = "stopped", cgroup = "/c" }}'.format),
    _PIDS.map("add = {{ pid = {}, io = {{ read_bytes = 18446744073709551615 }} }}".format),
    st.builds("move = {{ pid = {}, cpu = {} }}".format, _PIDS, st.integers(0, 4)),
)
_BLOCK = st.one_of(
    st.lists(_PROCESS_KEY, max_size=4, unique_by=lambda s: s.split("=")[0]).map(
        lambda keys: '[[process]]\ncomm = "p"\n' + "\n".join(keys)),
    st.lists(st.one_of(_PIDS.map("tid = {}".format), _DURATIONS.map("age = {}".format)),
             max_size=2, unique_by=lambda s: s.split("=")[0]).map(
        lambda keys: "[[process.thread]]\n" + "\n".join(keys)),
    st.builds("[[timeline]]\nat = {}\n{}".format, _DURATIONS, _ACTION),
    st.builds('[[generator]]\nkind = "short_jobs"\ncount = {}\nthreads = {}\n{}'.format,
              st.integers(0, 6), st.integers(1, 3),
              st.sampled_from(["", 'arrival = "random"\nduration = "1s"', 'cpus = "0-1"',
                               'lifetime = ["0s", "3s"]', "killed = 0.5\ncore = true"])),
)
_HEAD = st.sampled_from(["", "[machine]\ncpus = 4\nnext_pid = 100\n",
                         "[machine]\npid_max = 301\nnext_pid = 299\n"])


@settings(max_examples=300)
@given(_HEAD, st.lists(_BLOCK, max_size=10))
def test_a_scenario_that_parses_always_builds_and_plays(head: str, blocks: list[str]) -> None:
    """Nothing half-loaded: whatever parse_scenario accepts, build_table and the whole
    timeline carry out without an error; whatever it refuses, it refuses with ScenarioError."""
    try:
        scenario = parse_scenario(head + "\n\n".join(blocks), "s.toml")
    except ScenarioError as exc:
        assert all(p.startswith("s.toml: ") and "\n" not in p for p in exc.problems)
        return
    table = build_table(scenario)
    live = {tid for spec in scenario.processes for tid in spec.tids}
    assert {task.tid for task in table} == live
    for _event, reports in play(table, scenario):
        for report in reports:
            assert report.tid not in table
