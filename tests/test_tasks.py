"""Tests for tsemu.emulator.model.tasks: pid allocation, thread groups, changing tasks,
cgroup counts, and what an exit does to the table (which records it sends is tested in
test_accounting)."""

from __future__ import annotations

import copy
import errno
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.profiles import PROFILES
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.model.tasks import (
    COUNTERS,
    INT_COUNTERS,
    MAX_TS_COUNTERS,
    FrozenCounters,
    NoSuchTask,
    Task,
    TaskState,
)
from tsemu.wire import AcFlag

START_NS = 5 * 10**9


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start_ns=START_NS)


@pytest.fixture
def table(clock: VirtualClock) -> ProcessTable:
    return ProcessTable(clock, PROFILES["6.18"], nr_cpus=4)


# --- pid allocation ------------------------------------------------------------------------


def test_pids_increase_from_one(table: ProcessTable) -> None:
    assert [table.spawn(comm=b"p").tid for _ in range(3)] == [1, 2, 3]


def test_next_pid_sets_where_allocation_starts(clock: VirtualClock) -> None:
    table = ProcessTable(clock, PROFILES["6.18"], 1, next_pid=1000)
    assert table.spawn(comm=b"p").tid == 1000
    assert table.spawn(comm=b"p").tid == 1001


def test_allocation_skips_pids_in_use(table: ProcessTable) -> None:
    table.spawn(pid=2, comm=b"explicit")
    table.spawn(pid=3, comm=b"explicit")
    assert [table.spawn(comm=b"p").tid for _ in range(2)] == [1, 4]


def test_explicit_pid_leaves_the_cursor_and_must_be_free(table: ProcessTable) -> None:
    table.spawn(comm=b"a")
    table.spawn(pid=500, comm=b"b")
    assert table.spawn(comm=b"c").tid == 2, "set_tid does not move the cyclic cursor"
    with pytest.raises(ValueError, match="pid 500 is in use"):
        table.spawn(pid=500, comm=b"dup")
    with pytest.raises(ValueError, match="out of range"):
        table.spawn(pid=0, comm=b"zero")
    with pytest.raises(ValueError, match="out of range"):
        table.spawn(pid=table.pid_max, comm=b"too big")


def test_freed_pids_are_not_reused_before_the_cursor_wraps(table: ProcessTable) -> None:
    first = table.spawn(comm=b"a")
    table.exit_task(first.tid)
    assert table.spawn(comm=b"b").tid == 2, "cyclic: a freed pid waits for the wrap"


def test_pids_wrap_to_300_at_pid_max(clock: VirtualClock) -> None:
    table = ProcessTable(clock, PROFILES["6.18"], 1, pid_max=310, next_pid=308)
    assert [table.spawn(comm=b"p").tid for _ in range(2)] == [308, 309]
    table.spawn(pid=300, comm=b"taken")
    assert table.spawn(comm=b"p").tid == 301, "wraps to RESERVED_PIDS, skipping 300 (in use)"
    table.spawn(pid=5, comm=b"low")  # explicit low pids are allowed, never handed out
    assert table.spawn(comm=b"p").tid == 302


def test_pid_space_exhausted_is_eagain(clock: VirtualClock) -> None:
    table = ProcessTable(clock, PROFILES["6.18"], 1, pid_max=310, next_pid=300)
    for _ in range(10):
        table.spawn(comm=b"p")
    with pytest.raises(OSError) as raised:
        table.spawn(comm=b"one too many")
    assert raised.value.errno == errno.EAGAIN


def test_threads_take_pids_from_the_same_space(table: ProcessTable) -> None:
    a = table.spawn(comm=b"a", threads=3)
    b = table.spawn(comm=b"b")
    c = table.clone_thread(a.tid)
    assert (a.tid, b.tid, c.tid) == (1, 4, 5)
    assert table.group(a.tid).tids == (1, 2, 3, 5)


def test_a_zombie_leaders_pid_stays_taken(clock: VirtualClock) -> None:
    table = ProcessTable(clock, PROFILES["6.18"], 1, pid_max=310, next_pid=309)
    leader = table.spawn(comm=b"p", threads=2)  # 309 and, wrapping, 300
    table.exit_task(leader.tid)
    assert table.spawn(comm=b"q").tid == 301
    with pytest.raises(ValueError, match="in use"):
        table.spawn(pid=309, comm=b"q")
    table.exit_task(300)
    assert table.spawn(pid=309, comm=b"q").tid == 309, "free once the whole group is gone"


def test_bad_table_parameters(clock: VirtualClock) -> None:
    with pytest.raises(ValueError, match="nr_cpus"):
        ProcessTable(clock, PROFILES["6.18"], 0)
    with pytest.raises(ValueError, match="pid_max"):
        ProcessTable(clock, PROFILES["6.18"], 1, pid_max=300)
    with pytest.raises(ValueError, match="next_pid"):
        ProcessTable(clock, PROFILES["6.18"], 1, next_pid=0)


# --- groups and threads --------------------------------------------------------------------


def test_spawn_with_threads_builds_one_group(table: ProcessTable, clock: VirtualClock) -> None:
    leader = table.spawn(comm="server", ppid=77, uid=1000, gid=100, cpu=2, threads=3,
                         cgroup="/sys/fs/cgroup/cpu/app", nice=5, policy=3, superuser=True,
                         forked_no_exec=True, counters={"cpu_count": 4})
    group = table.group(leader.tid)
    assert group.tids == (1, 2, 3) and group.leader_tid == 1 and len(group) == 3
    assert group.stats is None and group.leader_start_ns == START_NS
    assert len(table) == 3 and [t.tid for t in table] == [1, 2, 3]
    for tid in group.tids:
        task = table.get(tid)
        assert (task.tgid, task.ppid, task.comm, task.uid, task.gid, task.cpu, task.nice,
                task.policy, task.cgroup) == (1, 77, b"server", 1000, 100, 2, 5, 3,
                                              "/sys/fs/cgroup/cpu/app")
        assert task.start_ns == START_NS and task.is_leader == (tid == 1)
    assert leader.counter("cpu_count") == 4 and table.get(2).counters() == {}
    assert leader.superuser and not table.get(2).superuser, "copy_process clears PF_SUPERPRIV"
    assert table.get(2).forked_no_exec


def test_spawn_checks_its_arguments(table: ProcessTable, clock: VirtualClock) -> None:
    with pytest.raises(ValueError, match="threads"):
        table.spawn(comm=b"p", threads=0)
    with pytest.raises(ValueError, match="nice"):
        table.spawn(comm=b"p", nice=20)
    with pytest.raises(ValueError, match="cpu 4 does not exist"):
        table.spawn(comm=b"p", cpu=4)
    with pytest.raises(ValueError, match="start_ns"):
        table.spawn(comm=b"p", start_ns=clock.monotonic_ns() + 1)
    with pytest.raises(ValueError, match="unknown counter 'cpu_cnt'"):
        table.spawn(comm=b"p", counters={"cpu_cnt": 1})
    assert len(table) == 0, "a refused spawn leaves nothing behind"
    assert table.spawn(comm=b"p").tid == 1, "nor uses up a pid"


def test_comm_is_cut_like_the_kernels(table: ProcessTable) -> None:
    assert table.spawn(comm=b"a-very-long-process-name").comm == b"a-very-long-pro"
    assert table.spawn(comm="nul\0after").comm == b"nul"


def test_clone_thread_copies_identity(table: ProcessTable, clock: VirtualClock) -> None:
    leader = table.spawn(comm=b"p", uid=5, cpu=1, state=TaskState.SLEEPING)
    clock.advance(2)
    thread = table.clone_thread(leader.tid, counters={"nvcsw": 3})
    assert (thread.tgid, thread.uid, thread.cpu, thread.state) == (1, 5, 1, TaskState.SLEEPING)
    assert thread.start_ns == START_NS + 2 * 10**9 and thread.counter("nvcsw") == 3
    other = table.clone_thread(leader.tid, pid=40, cpu=3)
    assert (other.tid, other.cpu) == (40, 3)


def test_clone_thread_errors(table: ProcessTable) -> None:
    leader = table.spawn(comm=b"p", threads=2)
    with pytest.raises(NoSuchTask, match="no thread group with tgid 9"):
        table.clone_thread(9)
    with pytest.raises(NoSuchTask):
        table.clone_thread(2), "a thread's tid is not a tgid"
    with pytest.raises(ValueError, match="cpu 7"):
        table.clone_thread(leader.tid, cpu=7)
    with pytest.raises(ValueError, match="in use"):
        table.clone_thread(leader.tid, pid=2)
    assert table.group(leader.tid).tids == (1, 2)


def test_unknown_tasks_raise_no_such_task(table: ProcessTable) -> None:
    table.spawn(comm=b"p")
    calls: list[Callable[[], object]] = [
        lambda: table.get(42), lambda: table.set(42, uid=1), lambda: table.add(42, nvcsw=1),
        lambda: table.move(42, 0), lambda: table.exit_task(42), lambda: table.pid_stats(42),
        lambda: table.tgid_stats(42), lambda: table.group(42), lambda: table.pid_stats(0),
        lambda: table.exit_group(42)]
    for call in calls:
        with pytest.raises(NoSuchTask, match="42|0"):
            call()
    assert issubclass(NoSuchTask, LookupError)
    assert 1 in table and 42 not in table


# --- set, add, move ------------------------------------------------------------------------


def test_set_identity_and_counters(table: ProcessTable) -> None:
    task = table.spawn(comm=b"p")
    table.set(task.tid, comm=b"renamed", uid=7, nice=-3, state=TaskState.STOPPED,
              superuser=True, read_bytes=4096, cpu_delay_max_ts=(1700000000, 5))
    assert (task.comm, task.uid, task.nice, task.state, task.superuser) == (
        b"renamed", 7, -3, TaskState.STOPPED, True)
    assert task.counter("read_bytes") == 4096
    assert task.max_ts("cpu_delay_max_ts") == (1700000000, 5)
    table.set(task.tid, read_bytes=0)
    assert "read_bytes" not in task.counters(), "only non-zero counters are stored"


def test_set_is_all_or_nothing(table: ProcessTable) -> None:
    task = table.spawn(comm=b"p")
    with pytest.raises(ValueError, match="uid"):
        table.set(task.tid, comm=b"changed", nvcsw=5, uid=-1)
    assert task.comm == b"p" and task.counter("nvcsw") == 0


def test_unknown_names_are_named_with_the_valid_ones(table: ProcessTable) -> None:
    task = table.spawn(comm=b"p")
    with pytest.raises(ValueError) as raised:
        table.set(task.tid, wibble=1)
    assert "'wibble'" in str(raised.value) and "cpu_delay_total" in str(raised.value)
    with pytest.raises(ValueError) as raised:
        table.add(task.tid, blkio_delay=1)
    assert "'blkio_delay'" in str(raised.value) and "blkio_delay_total" in str(raised.value)
    with pytest.raises(ValueError, match="unknown counter 'nope'"):
        task.counter("nope")
    with pytest.raises(ValueError, match="max_ts"):
        task.counter("irq_delay_max_ts")
    with pytest.raises(ValueError, match="counter"):
        task.max_ts("irq_count")


def test_set_checks_values(table: ProcessTable) -> None:
    task = table.spawn(comm=b"p")
    with pytest.raises(ValueError, match="out of range"):
        table.set(task.tid, cpu_count=2**64)
    with pytest.raises(ValueError, match="pair"):
        table.set(task.tid, blkio_delay_max_ts=5)
    with pytest.raises(ValueError, match="tv_nsec"):
        table.set(task.tid, blkio_delay_max_ts=(1, 10**9))
    with pytest.raises(ValueError, match="TaskState"):
        table.set(task.tid, state="running")
    with pytest.raises(ValueError, match="TaskState"):
        table.set(task.tid, state=TaskState.ZOMBIE)
    with pytest.raises(ValueError, match="cpu 9"):
        table.set(task.tid, cpu=9)


def test_set_ppid_is_the_whole_processs(table: ProcessTable) -> None:
    leader = table.spawn(comm=b"p", threads=2)
    table.set(2, ppid=99)
    assert leader.ppid == 99 and table.get(2).ppid == 99


def test_add_counters(table: ProcessTable) -> None:
    task = table.spawn(comm=b"p", counters={"cpu_count": 2})
    table.add(task.tid, cpu_count=3, read_char=100)
    table.add(task.tid, read_char=-40)
    assert (task.counter("cpu_count"), task.counter("read_char")) == (5, 60)
    with pytest.raises(ValueError, match="out of range"):
        table.add(task.tid, read_char=-61)
    with pytest.raises(ValueError, match="out of range"):
        table.add(task.tid, cpu_count=2**64)
    with pytest.raises(ValueError, match="timestamp"):
        table.add(task.tid, cpu_delay_max_ts=1)
    not_an_int: Any = 1.5
    with pytest.raises(ValueError, match="int"):
        table.add(task.tid, cpu_count=not_an_int)
    assert task.counter("cpu_count") == 5 and task.counter("read_char") == 60


def test_move(table: ProcessTable) -> None:
    task = table.spawn(comm=b"p")
    assert table.move(task.tid, 3).cpu == 3
    with pytest.raises(ValueError, match="cpu 4 does not exist: the machine has CPUs 0-3"):
        table.move(task.tid, 4)
    with pytest.raises(ValueError, match="cpu -1"):
        table.move(task.tid, -1)
    assert task.cpu == 3


def test_counter_names() -> None:
    assert len(set(COUNTERS)) == len(COUNTERS) == len(INT_COUNTERS) + len(MAX_TS_COUNTERS)
    assert len(MAX_TS_COUNTERS) == 8 and "wpcopy_delay_min" in COUNTERS
    assert {"utime_ns", "cancelled_write_bytes", "ac_exe_inode", "irq_count"} <= set(COUNTERS)


def test_tasks_are_compact() -> None:
    """100,000 tasks must fit a benchmark's memory budget: no per-instance __dict__."""
    task = Task(tid=1, tgid=1, ppid=0, comm=b"p", uid=0, gid=0, cpu=0, nice=0, policy=0,
                state=TaskState.RUNNING, cgroup=None, start_ns=0)
    assert not hasattr(task, "__dict__")
    counter = "cpu_count"
    with pytest.raises(AttributeError):
        setattr(task, counter, 5)


# --- cgroups -------------------------------------------------------------------------------


def test_cgroup_counts_by_state(table: ProcessTable) -> None:
    """cgroupstats_build's switch: an exact state word per counter, nr_io_wait only for an
    I/O sleep in a state word the switch does not name, idle/traced counted nowhere."""
    path = "/sys/fs/cgroup/cpu/app"
    states = [TaskState.RUNNING, TaskState.RUNNING, TaskState.SLEEPING, TaskState.SLEEPING,
              TaskState.SLEEPING, TaskState.UNINTERRUPTIBLE, TaskState.STOPPED,
              TaskState.IO_WAIT, TaskState.IO_WAIT, TaskState.IDLE, TaskState.TRACED]
    for state in states:
        table.spawn(comm=b"p", cgroup=path, state=state)
    table.spawn(comm=b"elsewhere", cgroup="/sys/fs/cgroup/cpu", state=TaskState.RUNNING)
    assert table.cgroup_counts(path) == {"nr_sleeping": 3, "nr_running": 2, "nr_stopped": 1,
                                         "nr_uninterruptible": 1, "nr_io_wait": 2}
    assert len(table.cgroup_tasks(path)) == len(states)
    assert table.cgroup_counts("/nowhere") is None, "a cgroup the table does not know"
    table.add_cgroup("/empty/child")
    assert table.cgroup_counts("/empty/child") == dict.fromkeys(
        ("nr_sleeping", "nr_running", "nr_stopped", "nr_uninterruptible", "nr_io_wait"), 0)
    assert "/empty" in table.cgroups(), "ancestors are declared too"


def test_cgroup_membership_follows_set_and_exit(table: ProcessTable) -> None:
    a, b = "/sys/fs/cgroup/cpu/a", "/sys/fs/cgroup/cpu/b"
    leader = table.spawn(comm=b"p", cgroup=a, threads=2)
    table.set(2, cgroup=b, state=TaskState.SLEEPING)
    assert [t.tid for t in table.cgroup_tasks(a)] == [leader.tid]
    assert table.cgroup_counts(b)["nr_sleeping"] == 1
    table.exit_task(leader.tid)  # the leader is now a zombie: not counted anywhere
    assert table.cgroup_tasks(a) == [] and table.cgroup_counts(a)["nr_running"] == 0
    table.set(2, cgroup=None)
    assert table.cgroup_tasks(b) == []


# --- exits ---------------------------------------------------------------------------------


def test_exit_removes_the_task_and_reports_its_cpu(table: ProcessTable) -> None:
    task = table.spawn(comm=b"p", cpu=1)
    report = table.exit_task(task.tid)
    assert (report.cpu, report.tid, report.tgid, report.group_dead) == (1, 1, 1, True)
    assert len(table) == 0 and 1 not in table
    with pytest.raises(NoSuchTask):
        table.group(1)
    other = table.spawn(comm=b"q", cpu=1)
    assert table.exit_task(other.tid, cpu=3).cpu == 3
    with pytest.raises(ValueError, match="cpu 4"):
        table.exit_task(table.spawn(comm=b"r").tid, cpu=4)


def test_exit_argument_errors(table: ProcessTable) -> None:
    task = table.spawn(comm=b"p")
    with pytest.raises(ValueError, match="signal"):
        table.exit_task(task.tid, core=True)
    with pytest.raises(ValueError, match="not both"):
        table.exit_task(task.tid, code=1, signal=9)
    with pytest.raises(ValueError, match="signal 65"):
        table.exit_task(task.tid, signal=65)
    assert task.tid in table, "a refused exit changes nothing"


def test_leader_exiting_first_waits_as_a_zombie(table: ProcessTable) -> None:
    leader = table.spawn(comm=b"p", threads=2, counters={"hiwater_rss": 5000, "nvcsw": 2})
    first = table.exit_task(leader.tid, code=1)
    assert not first.group_dead and first.tgid_values is None
    with pytest.raises(NoSuchTask, match="zombie"):
        table.get(leader.tid)
    group = table.group(leader.tid)
    assert group.tids == (2,) and group.zombie_leader is leader
    assert leader.state is TaskState.ZOMBIE and len(table) == 1
    zombie = table.pid_stats(leader.tid)
    assert zombie["ac_pid"] == 1 and zombie["ac_exitcode"] == 1 << 8
    assert zombie["nvcsw"] == 2 and zombie["hiwater_rss"] == 0, "its mm is gone"
    assert table.tgid_stats(leader.tid)["ac_pid"] == 0
    last = table.exit_task(2)
    assert last.group_dead and last.tgid_values is not None
    assert last.pid_values["ac_flag"] & AcFlag.AGROUP
    with pytest.raises(NoSuchTask):
        table.pid_stats(leader.tid)


def test_group_totals_are_allocated_at_the_first_exit_leaving_others(
        table: ProcessTable) -> None:
    leader = table.spawn(comm=b"p", threads=3)
    group = table.group(leader.tid)
    assert group.stats is None
    table.exit_task(2)
    assert group.stats is not None and group.stats["cpu_count"] == 0
    table.exit_task(3)
    assert group.stats["cpu_count"] == 0 and table.group(leader.tid).tids == (1,)
    solo = table.spawn(comm=b"solo", threads=1)
    assert table.exit_task(solo.tid).tgid_values is None, "alone: nothing allocated"


def test_exit_group_order_and_flags(table: ProcessTable) -> None:
    leader = table.spawn(comm=b"p", cpu=0)
    for cpu in (3, 1):
        table.clone_thread(leader.tid, cpu=cpu)
    table.clone_thread(leader.tid, pid=100)
    reports = table.exit_group(leader.tid, code=2, leader_last=True)
    assert [(r.tid, r.cpu) for r in reports] == [(2, 3), (3, 1), (100, 0), (1, 0)]
    assert [r.group_dead for r in reports] == [False, False, False, True]
    assert [r.tgid_values is not None for r in reports] == [False, False, False, True]
    assert all(r.pid_values["ac_exitcode"] == 2 << 8 for r in reports)
    flags = [r.pid_values["ac_flag"] for r in reports]
    assert flags[:3] == [AcFlag.AXSIG] * 3, "zap_other_threads kills them with SIGKILL"
    assert flags[3] == AcFlag.AGROUP
    assert len(table) == 0


def test_exit_group_by_a_caller_goes_first(table: ProcessTable) -> None:
    leader = table.spawn(comm=b"p", threads=3, forked_no_exec=True)
    reports = table.exit_group(leader.tid, caller=leader.tid)
    assert [r.tid for r in reports] == [1, 2, 3]
    assert reports[0].pid_values["ac_flag"] == AcFlag.AFORK
    assert reports[-1].pid_values["ac_flag"] == AcFlag.AXSIG | AcFlag.AGROUP
    assert reports[-1].tgid_values is not None
    with pytest.raises(NoSuchTask, match="caller 9"):
        table.exit_group(table.spawn(comm=b"q").tid, caller=9)


def test_exit_group_core_dump(table: ProcessTable) -> None:
    leader = table.spawn(comm=b"p", threads=2)
    reports = table.exit_group(leader.tid, signal=11, core=True)
    lead, thread = (r.pid_values for r in reports)  # the leader, dumping, goes first
    assert lead["ac_exitcode"] == 0x8B and lead["ac_flag"] == AcFlag.ACORE | AcFlag.AXSIG
    assert thread["ac_exitcode"] == 11 and thread["ac_flag"] == AcFlag.AXSIG | AcFlag.AGROUP
    leader = table.spawn(comm=b"p", threads=2)
    reports = table.exit_group(leader.tid, signal=11, core=True, leader_last=True)
    thread, lead = (r.pid_values for r in reports)
    assert lead["ac_exitcode"] == 0x8B and lead["ac_flag"] == (
        AcFlag.ACORE | AcFlag.AXSIG | AcFlag.AGROUP)
    assert thread["ac_exitcode"] == 11 and thread["ac_flag"] == AcFlag.AXSIG


def test_exit_group_after_the_leader_left(table: ProcessTable) -> None:
    leader = table.spawn(comm=b"p", threads=3)
    table.exit_task(leader.tid)
    reports = table.exit_group(leader.tid, signal=9)
    assert [r.tid for r in reports] == [2, 3] and reports[-1].group_dead
    assert all(r.pid_values["ac_exitcode"] == 9 for r in reports)


def test_orphans_pass_to_init(table: ProcessTable) -> None:
    table.spawn(comm=b"init", ppid=0)
    parent = table.spawn(comm=b"parent")
    child = table.spawn(comm=b"child", ppid=parent.tid, threads=2)
    grandchild = table.spawn(comm=b"grandchild", ppid=child.tid)
    table.exit_task(parent.tid)
    assert child.ppid == 1 and table.get(child.tid + 1).ppid == 1
    assert table.pid_stats(child.tid)["ac_ppid"] == 1
    assert grandchild.ppid == child.tid, "only the dead process's own children move"


# --- compact storage, copies ---------------------------------------------------------------


def table_state(table: ProcessTable) -> dict[str, Any]:
    """Everything a table holds, as plain values: two tables with the same state answer every
    call the same way."""
    def task_state(task: Task) -> tuple[Any, ...]:
        return (task.tid, task.tgid, task.ppid, task.comm, task.uid, task.gid, task.cpu,
                task.nice, task.policy, task.state, task.cgroup, task.start_ns, task.exit_code,
                task.forked_no_exec, task.superuser, task.signaled, task.dumped_core,
                task.counters())

    return {
        "clock": (table.clock.monotonic_ns(), table.clock.wall_seconds()),
        "limits": (table.nr_cpus, table.pid_max, table.profile, table._cursor),
        "tasks": [task_state(t) for t in table],
        "groups": [(g.tgid, g.tids, g.leader_start_ns, g.stats,
                    None if g.zombie_leader is None else task_state(g.zombie_leader))
                   for g in table.groups()],
        "cgroups": {path: ([t.tid for t in table.cgroup_tasks(path)],
                           table.cgroup_counts(path)) for path in table.cgroups()},
        "children": table._children,
    }


def test_copy_is_an_equal_independent_table(table: ProcessTable, clock: VirtualClock) -> None:
    table.spawn(comm=b"init", ppid=0, cgroup="/init.scope")
    app = table.spawn(comm=b"app", threads=3, counters={"cpu_count": 2, "hiwater_rss": 9,
                                                        "cpu_delay_max_ts": (5, 6)})
    table.clone_thread(app.tid, pid=50, cpu=2, counters={"nvcsw": 4})
    assert table.group(app.tid).tids == (2, 3, 4, 50)
    table.exit_task(3)  # group totals allocated
    table.exit_task(app.tid)  # a zombie leader
    clock.advance(1)
    twin = table.copy()
    assert table_state(twin) == table_state(table)
    assert twin.clock is not table.clock and twin._tasks is not table._tasks
    # what happens to one does not happen to the other
    before = table_state(twin)
    table.add(4, cpu_count=1)
    table.set(50, comm="renamed", cgroup="/moved")
    table.exit_group(app.tid)
    new = table.spawn(comm=b"new")
    clock.advance(1)
    assert table_state(twin) == before
    assert twin.exit_group(app.tid)[-1].tgid_values is not None
    assert twin.spawn(comm=b"x").tid == new.tid, "the same cursor"


def test_reset_pid_cursor(table: ProcessTable) -> None:
    for _ in range(3):
        table.spawn(comm=b"p")
    table.reset_pid_cursor(2)
    assert table.spawn(comm=b"q").tid == 4, "the lowest free pid at or above the cursor"
    with pytest.raises(ValueError, match="next_pid"):
        table.reset_pid_cursor(table.pid_max)


def test_a_groups_threads_from_one_to_many_and_back(table: ProcessTable) -> None:
    leader = table.spawn(comm=b"p")
    group = table.group(leader.tid)
    assert group.tids == (1,) and len(group) == 1 and list(group._tids) == [1]
    table.clone_thread(1)
    table.clone_thread(1, pid=9)
    assert group.tids == (1, 2, 9) and len(group) == 3
    table.exit_task(2)
    table.exit_task(1)
    assert group.tids == (9,) and group.zombie_leader is leader
    assert table.tgid_stats(9)["ac_etime"] == 0
    table.exit_task(9)
    with pytest.raises(NoSuchTask):
        table.group(1)
    single = table.group(table.spawn(comm=b"q").tid)
    assert table.exit_task(single.tgid).group_dead and len(single) == 0


def test_frozen_counters_are_shared_until_the_task_changes() -> None:
    frozen = FrozenCounters({"cpu_count": 3, "utime_ns": 5000})
    changes: list[Callable[[FrozenCounters], object]] = [
        lambda f: f.update(a=1), lambda f: f.pop("cpu_count"), lambda f: f.clear(),
        lambda f: f.setdefault("x", 1), lambda f: f.popitem()]
    for change in changes:
        with pytest.raises(TypeError, match="cannot be changed"):
            change(frozen)
    with pytest.raises(TypeError):
        frozen["cpu_count"] = 4
    with pytest.raises(TypeError):
        del frozen["cpu_count"]
    assert frozen == {"cpu_count": 3, "utime_ns": 5000} and isinstance(frozen, dict)
    assert copy.deepcopy(frozen) is frozen and pickle.loads(pickle.dumps(frozen)) == frozen
    table = ProcessTable(VirtualClock(START_NS), PROFILES["6.18"], nr_cpus=1)
    a = table.spawn(comm=b"a", counters=frozen)
    b = table.spawn(comm=b"b", counters=frozen)
    assert a.counter_map is frozen and b.counter_map is frozen
    table.add(a.tid, cpu_count=1)
    table.set(b.tid, utime_ns=0)
    assert a.counters() == {"cpu_count": 4, "utime_ns": 5000}
    assert b.counters() == {"cpu_count": 3}
    assert frozen == {"cpu_count": 3, "utime_ns": 5000}, "the shared counters never change"
    zeros = FrozenCounters({"cpu_count": 0, "nvcsw": 2})
    assert table.spawn(comm=b"z", counters=zeros).counter_map == {"nvcsw": 2}, \
        "zeros are not kept: not shared"
    plain = {"nvcsw": 7}
    c = table.spawn(comm=b"c", counters=plain)
    plain["nvcsw"] = 8
    assert c.counter("nvcsw") == 7, "a plain dict is copied"
