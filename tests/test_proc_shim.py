"""The shim's /proc view (shim/proc*.c): with TSEMU_PROC_VIEW naming a view, a program that
lists /proc and reads its files sees the emulated machine's tasks.

The views here are made by hand (tests/clients/procview.py writes the layout the server
publishes), so no server is needed except for iotop-c, which asks taskstats too.
- procprobe (tests/clients/procprobe.c) makes each call and prints what it got;
- ls, cat, ps and top (procps) and iotop-c, unmodified, must list exactly the view's tasks;
- `tsemu run --proc`, and nothing changes without a view;
- a refresh over 10,000 emulated tasks, timed against the same work done on the view
  directly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tsemu.cli.run import ProcMode, run_command
from tsemu.shim import PROC_VIEW_ENV, proc_view_path, shim_environment

from .clients.harness import CLIENTS, compile_client, host_env, lines, run, shim_library
from .clients.procview import MARKER, Task, add_task, build_view

# Pids no host process has in practice (near the top of pid_max's range, where the
# emulator's own table also allows them), and pid 1, which every host has: the view's must
# replace it.
LEADER, THREAD_A, THREAD_B = 4190000, 4190001, 4190005
RTJOB, BUSY = 4190100, 4190200
TASKS = [
    Task(pid=1, comm="systemd", ppid=0, cmdline=["/sbin/init", "splash"]),
    Task(pid=LEADER, comm="redis", threads=[THREAD_A, THREAD_B], nice=5,
         ioprio=(2 << 13) | 4, cmdline=["redis-server", "*:6379"]),
    Task(pid=RTJOB, comm="rtjob", ppid=LEADER, policy=1, rt_priority=50, ioprio=(1 << 13) | 2),
    Task(pid=BUSY, comm="busy", state="R", utime=12345, stime=100, nice=-3),
]
VIEW_PIDS = sorted(t.pid for t in TASKS)


@pytest.fixture(scope="module")
def procprobe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_client(CLIENTS / "procprobe.c", tmp_path_factory.mktemp("procprobe"))


@pytest.fixture
def view(tmp_path: Path) -> Path:
    return build_view(tmp_path / "genl.sock.proc", TASKS)


@pytest.fixture
def sibling() -> Iterator[int]:
    """A host process that is neither the probe's own nor its parent: the view hides it."""
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def view_env(view: Path | None, **extra: str) -> dict[str, str]:
    """The shim preloaded, TSEMU_PROC_VIEW naming `view` (None: unset)."""
    shim_library()
    env = {k: v for k, v in shim_environment(base=host_env()).items() if k != PROC_VIEW_ENV}
    if view is not None:
        env[PROC_VIEW_ENV] = str(view)
    return {**env, **extra}


def probe(binary: Path, env: dict[str, str], *specs: str) -> list[str]:
    done = subprocess.run([str(binary), *specs], env=env, capture_output=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return lines(done.stdout)


def one(output: list[str], prefix: str) -> str:
    """The value after `prefix: ` on the line that starts with it."""
    found = [line for line in output if line.startswith(prefix + ":")]
    assert len(found) == 1, (prefix, output)
    return found[0][len(prefix) + 1:].strip()


def self_pid(output: list[str]) -> tuple[int, int]:
    match = re.fullmatch(r"pid=(\d+) ppid=(\d+)", one(output, "self"))
    assert match
    return int(match[1]), int(match[2])


def host_names() -> list[str]:
    return sorted(n for n in os.listdir("/proc") if not n.isdigit())


# -- the listing ----------------------------------------------------------------------------


def test_the_listing_is_the_views_pids_the_callers_and_the_hosts_names(
        procprobe: Path, view: Path, sibling: int) -> None:
    out = probe(procprobe, view_env(view), "self", "pids:/proc", "names:/proc", "ls:/proc")
    own, _ = self_pid(out)
    assert own not in VIEW_PIDS
    pids = [int(p) for p in one(out, "pids /proc").split()]
    assert pids == sorted([*VIEW_PIDS, own])  # in increasing order, as the kernel lists them
    assert sibling not in pids
    names = one(out, "names /proc").split()
    assert sorted(n for n in names if n not in (".", "..")) == host_names()
    listing = [line.split() for line in out if line.startswith("  ")]
    assert all(kind == "d" for name, kind in listing if name.isdigit())
    # the host's names first (".", ".." leading), then the pids
    first_pid = next(i for i, (name, _) in enumerate(listing) if name.isdigit())
    assert all(name.isdigit() for name, _ in listing[first_pid:])
    assert [name for name, _ in listing[:2]] == [".", ".."]


def test_directory_calls_agree(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), "self", "scandir:/proc", "readdir_r:/proc",
                "seek:/proc", "rewind:/proc", "fdopendir:/proc",
                f"scandir:/proc/{THREAD_A}/task", f"fdopendir:/proc/{LEADER}")
    own, _ = self_pid(out)
    scanned = one(out, "scandir /proc").split()
    assert sorted(n for n in scanned if n.isdigit()) == sorted(map(str, [*VIEW_PIDS, own]))
    assert scanned == sorted(scanned)  # alphasort ran on what the shim listed
    assert one(out, "readdir_r /proc").endswith(f", {len(VIEW_PIDS) + 1} pids")
    assert one(out, "seek /proc") == "same"
    assert one(out, "rewind /proc") == "same"
    assert one(out, "fdopendir /proc").split() == \
        [".", "..", *map(str, sorted([*VIEW_PIDS, own]))]
    # a thread's task/ is its group's; an emulated task's directory hides .tsemu
    assert one(out, f"scandir /proc/{THREAD_A}/task").split() == \
        [".", "..", str(LEADER), str(THREAD_A), str(THREAD_B)]
    assert one(out, f"fdopendir /proc/{LEADER}").split() == [".", ".."]


def test_task_lists_are_in_order_of_tids(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), f"ls:/proc/{LEADER}/task", f"ls:/proc/{LEADER}")
    tids = [line.split()[0] for line in out if line.startswith("  ") and line.split()[0].isdigit()]
    assert tids == [str(LEADER), str(THREAD_A), str(THREAD_B)]
    entries = {line.split()[0] for line in out if line.startswith("  ")}
    assert {"stat", "status", "statm", "comm", "cmdline", "io", "schedstat", "task"} <= entries
    assert ".tsemu" not in entries


# -- reading --------------------------------------------------------------------------------


def test_reads_come_from_the_view(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), f"cat:/proc/{LEADER}/status",
                f"fopen:/proc/{LEADER}/cmdline", f"open2:/proc/{RTJOB}/comm",
                f"openat:/proc:{BUSY}/stat", f"fstatat:/proc:{LEADER}", "cat:/proc/1/comm",
                "cat:/proc/loadavg", "cat:/proc/uptime", "fopen:/proc/pressure/io",
                "cat:/proc/sys/kernel/pid_max", "cat:/proc/sys/kernel/task_delayacct",
                f"stat:/proc/{LEADER}", f"stat:/proc/{LEADER}/stat", f"statx:/proc/{LEADER}/task",
                f"lstat:/proc/{LEADER}/io", f"access:/proc/{LEADER}/stat:r")
    status = one(out, f"cat /proc/{LEADER}/status")
    assert status.startswith("Name:\tredis\\nUmask:")
    assert f"\\nPid:\t{LEADER}\\n" in status and "\\nThreads:\t3\\n" in status
    assert one(out, f"fopen /proc/{LEADER}/cmdline") == "redis-server\\0*:6379\\0"
    assert one(out, f"open2 /proc/{RTJOB}/comm") == "rtjob\\n"
    assert one(out, f"openat /proc {BUSY}/stat").startswith(f"{BUSY} (busy) R 1 ")
    assert one(out, f"fstatat /proc {LEADER}") == "dir"
    assert one(out, "cat /proc/1/comm") == "systemd\\n"
    assert one(out, "cat /proc/loadavg") == (view / "loadavg").read_text().replace("\n", "\\n")
    assert one(out, "cat /proc/uptime") == "4242.42 8000.00\\n"
    assert one(out, "fopen /proc/pressure/io").startswith("some avg10=0.00")
    assert one(out, "cat /proc/sys/kernel/pid_max") == "4194304\\n"
    assert one(out, "cat /proc/sys/kernel/task_delayacct") == "1\\n"
    assert one(out, f"stat /proc/{LEADER}") == "dir"
    assert one(out, f"stat /proc/{LEADER}/stat") == "file"
    assert one(out, f"statx /proc/{LEADER}/task") == "dir"
    assert one(out, f"lstat /proc/{LEADER}/io") == "file"
    assert one(out, f"access /proc/{LEADER}/stat r") == "ok"


def test_paths_are_normalised(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), f"cat:/proc//{LEADER}/./comm",
                f"cat:/proc/{BUSY}/../{RTJOB}/comm", f"cat:/./proc/{RTJOB}/comm",
                f"stat:/proc/{LEADER}/", f"stat:/proc/{LEADER}/comm/", "cat:/proc/./loadavg")
    assert one(out, f"cat /proc//{LEADER}/./comm") == "redis\\n"
    assert one(out, f"cat /proc/{BUSY}/../{RTJOB}/comm") == "rtjob\\n"
    assert one(out, f"cat /./proc/{RTJOB}/comm") == "rtjob\\n"
    assert one(out, f"stat /proc/{LEADER}/") == "dir"
    assert one(out, f"stat /proc/{LEADER}/comm/") == "error ENOTDIR"
    assert one(out, "cat /proc/./loadavg").startswith("0.42 ")


def test_relative_paths_from_proc_and_from_a_task(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), "chdir:/proc", f"relcat:{LEADER}/comm",
                "relcat:self/comm", "relcat:loadavg", f"chdir:/proc/{RTJOB}", "relcat:comm",
                f"relcat:../{BUSY}/comm", "chdir:/", f"relcat:{LEADER}/comm")
    assert out == [
        "chdir /proc: ok", f"relcat {LEADER}/comm: redis\\n", "relcat self/comm: procprobe\\n",
        "relcat loadavg: " + (view / "loadavg").read_text().replace("\n", "\\n"),
        f"chdir /proc/{RTJOB}: ok", "relcat comm: rtjob\\n", f"relcat ../{BUSY}/comm: busy\\n",
        # from / the relative path is no /proc path at all
        "chdir /: ok", f"relcat {LEADER}/comm: error ENOENT",
    ]


def test_the_callers_own_files_stay_real(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), "self", "cat:/proc/self/status",
                "cat:/proc/thread-self/comm", "readlink:/proc/self")
    own, parent = self_pid(out)
    out += probe(procprobe, view_env(view), f"cat:/proc/{os.getpid()}/comm")
    status = one(out, "cat /proc/self/status")
    assert status.startswith("Name:\tprocprobe\\n")
    assert one(out, "cat /proc/thread-self/comm") == "procprobe\\n"
    assert one(out, "readlink /proc/self") == str(own)
    # a later probe's parent is this very process: real
    assert one(out, f"cat /proc/{os.getpid()}/comm").startswith(
        Path("/proc/self/comm").read_text()[:15].strip())
    assert parent == os.getpid()


def test_the_parents_pid_is_the_scenarios_where_the_view_has_it(procprobe: Path,
                                                               tmp_path: Path) -> None:
    """A scenario task answers for its pid even when it is the caller's parent's (in a client
    container the parent is pid 1, which the scenario's init holds), as the server answers
    GET for it; where the view has no such task the parent stays real."""
    parent = os.getpid()
    view = build_view(tmp_path / "genl.sock.proc",
                      [*TASKS, Task(pid=parent, comm="scenarioparent", ppid=1)])
    out = probe(procprobe, view_env(view), "self", f"cat:/proc/{parent}/comm")
    assert self_pid(out)[1] == parent
    assert one(out, f"cat /proc/{parent}/comm") == "scenarioparent\\n"


def test_a_pid_not_in_the_view_does_not_exist(procprobe: Path, view: Path,
                                              sibling: int) -> None:
    out = probe(procprobe, view_env(view), f"cat:/proc/{sibling}/status", f"stat:/proc/{sibling}",
                f"ls:/proc/{sibling}/task", f"readlink:/proc/{sibling}/exe",
                "cat:/proc/4190999/stat", f"readlink:/proc/{LEADER}/exe",
                f"readlink:/proc/{LEADER}/cwd", f"readlink:/proc/{LEADER}/root",
                f"cat:/proc/{LEADER}/environ")
    assert [line.split(": ", 1)[1] for line in out] == ["error ENOENT"] * len(out)


def test_threads_that_are_not_leaders_resolve_through_tid(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), "pids:/proc", f"cat:/proc/{THREAD_B}/status",
                f"stat:/proc/{THREAD_A}", f"lstat:/proc/{THREAD_A}",
                f"cat:/proc/{LEADER}/task/{THREAD_B}/stat", f"ls:/proc/{THREAD_A}")
    assert str(THREAD_A) not in one(out, "pids /proc").split()  # tids are not listed
    status = one(out, f"cat /proc/{THREAD_B}/status")
    assert f"\\nTgid:\t{LEADER}\\n" in status and f"\\nPid:\t{THREAD_B}\\n" in status
    assert one(out, f"stat /proc/{THREAD_A}") == "dir"
    assert one(out, f"lstat /proc/{THREAD_A}") == "dir"  # a directory, not the .tid link
    assert one(out, f"cat /proc/{LEADER}/task/{THREAD_B}/stat").startswith(f"{THREAD_B} (redis)")
    entries = {line.split()[0] for line in out if line.startswith("  ")}
    assert "status" in entries and ".tsemu" not in entries


def test_the_shims_own_files_are_hidden(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), f"cat:/proc/{LEADER}/.tsemu",
                f"cat:/proc/{LEADER}/task/{THREAD_A}/.tsemu", f"cat:/proc/{LEADER}/./.tsemu",
                "cat:/proc/.tsemu-view", "ls:/proc/.tid", f"stat:/proc/.tid/{THREAD_A}")
    assert [line.split(": ", 1)[1] for line in out] == ["error ENOENT"] * len(out)


def test_the_view_is_read_only(procprobe: Path, view: Path, sibling: int) -> None:
    out = probe(procprobe, view_env(view), f"write:/proc/{LEADER}/comm",
                f"write:/proc/{THREAD_A}/comm", "write:/proc/sys/kernel/task_delayacct",
                f"access:/proc/{LEADER}/stat:w", f"write:/proc/{sibling}/comm")
    assert [line.split(": ", 1)[1] for line in out] == \
        ["EACCES", "EACCES", "EACCES", "EACCES", "ENOENT"]
    assert (view / "sys/kernel/task_delayacct").read_text() == "1\n"


# -- system calls about a pid ---------------------------------------------------------------


def test_pid_system_calls_answer_from_the_view(procprobe: Path, view: Path,
                                               sibling: int) -> None:
    out = probe(procprobe, view_env(view),
                f"ioprio:{LEADER}", f"ioprio:{THREAD_A}", f"ioprio:{RTJOB}", f"ioprio:{sibling}",
                f"getprio:{LEADER}", f"getprio:{BUSY}", f"getprio:{THREAD_B}", f"getprio:{sibling}",
                f"sched:{RTJOB}", f"sched:{LEADER}", f"sched:{sibling}",
                f"kill:{LEADER}", f"kill:{THREAD_A}", f"kill:{LEADER}:15", f"kill:{LEADER}:999",
                f"kill:{sibling}", f"kill:{sibling}:15", "kill:4190999",
                f"setprio:{LEADER}:10", f"setprio:{sibling}:10")
    assert out == [
        f"ioprio {LEADER}: {(2 << 13) | 4}", f"ioprio {THREAD_A}: {(2 << 13) | 4}",
        f"ioprio {RTJOB}: {(1 << 13) | 2}", f"ioprio {sibling}: error ESRCH",
        f"getprio {LEADER}: 5", f"getprio {BUSY}: -3", f"getprio {THREAD_B}: 5",
        f"getprio {sibling}: error ESRCH",
        f"sched {RTJOB}: policy=1 rt_priority=50", f"sched {LEADER}: policy=0 rt_priority=0",
        f"sched {sibling}: error ESRCH ESRCH",
        f"kill {LEADER} 0: ok", f"kill {THREAD_A} 0: ok", f"kill {LEADER} 15: EPERM",
        f"kill {LEADER} 999: EINVAL", f"kill {sibling} 0: ESRCH", f"kill {sibling} 15: ESRCH",
        "kill 4190999 0: ESRCH", f"setprio {LEADER}: EPERM", f"setprio {sibling}: ESRCH",
    ]
    assert Path(f"/proc/{sibling}").exists()  # SIGTERM did not reach it


def test_the_callers_own_pids_and_pid_0_stay_real(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), "self", "ioprio:0", "getprio:0", "sched:0",
                f"kill:{os.getpid()}", "syscall")
    real = probe(procprobe, host_env(), "ioprio:0", "getprio:0", "sched:0")
    assert out[1:4] == real
    assert one(out, f"kill {os.getpid()} 0") == "ok"  # the parent
    assert one(out, "syscall") == "getpid same gettid same read(-1) -1 EBADF"


def test_children_of_the_caller_can_still_be_signalled(view: Path) -> None:
    script = "sleep 30 & child=$!; kill -0 $child && kill -TERM $child && wait $child; echo $?"
    done = subprocess.run(["sh", "-c", script], env=view_env(view), capture_output=True,
                          text=True, timeout=20, check=False)
    assert done.stdout.split() == [str(128 + 15)], done.stderr


# -- the process: fork, threads, bad pointers -----------------------------------------------


def test_fork_and_threads_keep_their_own_files(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), "fork", "thread")
    assert out == [
        "fork child: self-listed=1 parent-listed=0 parent-readable=1",
        "fork parent: self-readable=1 child-readable-after-exit=0",
        "thread: own-tid-readable=1",
        "thread: other-tid-readable=1 other-tid-listed=0",
    ]


def test_threads_listing_at_once_each_see_whole_listings(procprobe: Path, view: Path) -> None:
    out = probe(procprobe, view_env(view), "stress:200")
    assert one(out, "stress") == f"pids={len(VIEW_PIDS) + 1} bad=0"


def test_null_and_bad_pointers_get_libcs_answer(procprobe: Path, view: Path) -> None:
    assert probe(procprobe, view_env(view), "bad") == probe(procprobe, host_env(), "bad")


# -- when there is no view ------------------------------------------------------------------


@pytest.mark.parametrize("marker", [None, "tsemu proc view 2\n", ""])
def test_a_view_without_its_marker_is_refused(procprobe: Path, tmp_path: Path,
                                              sibling: int, marker: str | None) -> None:
    view = build_view(tmp_path / "view", TASKS, marker=marker)
    out = probe(procprobe, view_env(view), "pids:/proc", f"cat:/proc/{LEADER}/comm",
                f"stat:/proc/{sibling}", f"ioprio:{LEADER}")
    assert str(sibling) in one(out, "pids /proc").split()
    assert one(out, f"cat /proc/{LEADER}/comm") == "error ENOENT"
    assert one(out, f"stat /proc/{sibling}") == "dir"
    assert one(out, f"ioprio {LEADER}") == "error ESRCH"  # the kernel's answer


@pytest.mark.parametrize("setting", ["unset", "empty", "relative", "missing"])
def test_without_a_view_nothing_changes(procprobe: Path, view: Path, sibling: int,
                                        setting: str, tmp_path: Path) -> None:
    value = {"unset": None, "empty": "", "relative": os.path.relpath(view),
             "missing": str(tmp_path / "none")}[setting]
    env = view_env(None) if value is None else view_env(None, **{PROC_VIEW_ENV: value})
    out = probe(procprobe, env, "pids:/proc", f"stat:/proc/{sibling}", "cat:/proc/1/comm",
                f"kill:{sibling}")
    assert str(sibling) in one(out, "pids /proc").split()
    assert one(out, f"stat /proc/{sibling}") == "dir"
    assert one(out, "cat /proc/1/comm") == Path("/proc/1/comm").read_text().replace("\n", "\\n")
    assert one(out, f"kill {sibling} 0") == "ok"


def test_a_view_that_appears_later_is_found(procprobe: Path, tmp_path: Path) -> None:
    # While the marker is missing the shim looks for it again, at most once a second.
    view = build_view(tmp_path / "late", TASKS, marker=None)
    argv = [str(procprobe), f"cat:/proc/{LEADER}/comm", "sleep:1.5", f"cat:/proc/{LEADER}/comm"]
    with subprocess.Popen(argv, env=view_env(view), stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        first = child.stdout.readline().strip()
        (view / MARKER).write_text("tsemu proc view 1\n")
        rest, _ = child.communicate(timeout=20)
    assert [first, *rest.splitlines()] == [f"cat /proc/{LEADER}/comm: error ENOENT",
                                           f"cat /proc/{LEADER}/comm: redis\\n"]


def test_tasks_that_come_and_go_are_seen_at_once(procprobe: Path, view: Path) -> None:
    add_task(view, Task(pid=4190300, comm="newcomer"))
    shutil.rmtree(view / str(BUSY))
    out = probe(procprobe, view_env(view), "self", "pids:/proc", "cat:/proc/4190300/comm",
                f"cat:/proc/{BUSY}/comm")
    own, _ = self_pid(out)
    assert [int(p) for p in one(out, "pids /proc").split()] == \
        sorted([1, LEADER, RTJOB, 4190300, own])
    assert one(out, "cat /proc/4190300/comm") == "newcomer\\n"
    assert one(out, f"cat /proc/{BUSY}/comm") == "error ENOENT"


# -- unmodified tools -----------------------------------------------------------------------


def tool(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if not shutil.which(argv[0]):
        pytest.skip(f"{argv[0]} is not installed")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done


def test_ls_and_cat_see_the_view(view: Path) -> None:
    env = view_env(view)
    listed = tool(["ls", "/proc"], env).stdout.split()
    pids = [int(n) for n in listed if n.isdigit()]
    assert len(pids) == len(VIEW_PIDS) + 1 and set(VIEW_PIDS) < set(pids)  # and ls itself
    assert sorted(n for n in listed if not n.isdigit()) == host_names()
    assert tool(["cat", f"/proc/{LEADER}/status"], env).stdout == \
        (view / str(LEADER) / "status").read_text()
    assert tool(["cat", "/proc/loadavg"], env).stdout == (view / "loadavg").read_text()
    assert tool(["cat", "/proc/self/comm"], env).stdout == "cat\n"


def test_ps_lists_exactly_the_views_tasks(view: Path) -> None:
    out = tool(["ps", "-e", "-o", "pid,ppid,comm,nlwp,stat"], view_env(view)).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    by_pid = {int(row[0]): row for row in rows}
    ps_itself = [pid for pid, row in by_pid.items() if row[2] == "ps"]
    assert len(ps_itself) == 1 and sorted(by_pid) == sorted([*VIEW_PIDS, *ps_itself])
    assert by_pid[1][1:] == ["0", "systemd", "1", "Ss"]
    assert by_pid[LEADER][1:4] == ["1", "redis", "3"]
    assert set(by_pid[LEADER][4]) >= {"S", "N", "l"}  # sleeping, niced, multi-threaded
    assert by_pid[RTJOB][1:4] == [str(LEADER), "rtjob", "1"]
    assert by_pid[BUSY][4].startswith("R") and "<" in by_pid[BUSY][4]  # nice -3: high priority
    threads = tool(["ps", "-eL", "-o", "pid=,lwp="], view_env(view)).stdout.splitlines()
    lwps = [int(lwp) for pid, lwp in (row.split() for row in threads) if int(pid) == LEADER]
    assert lwps == [LEADER, THREAD_A, THREAD_B]  # task/ in order of tids


def test_top_lists_exactly_the_views_tasks(view: Path) -> None:
    out = tool(["top", "-b", "-n", "1", "-w", "200"], view_env(view)).stdout
    head, _, table = out.partition("\n\n")
    assert "load average: 0.42, 0.17, 0.05" in head
    assert re.search(r"Tasks:\s+5 total", head), head  # 4 of the view's and top itself
    rows = [line.split() for line in table.splitlines()[1:] if line.strip()]
    by_pid = {int(row[0]): row for row in rows}
    tops = [pid for pid, row in by_pid.items() if row[-1] == "top"]
    assert len(tops) == 1 and sorted(by_pid) == sorted([*VIEW_PIDS, *tops])
    assert by_pid[LEADER][3] == "5" and by_pid[BUSY][3] == "-3"  # NI
    assert by_pid[RTJOB][2] == "-51"  # PR of SCHED_FIFO priority 50
    assert by_pid[BUSY][-2] == "2:04.45"  # TIME+: 12445 ticks


async def test_iotop_c_lists_no_host_process(server: Any, tmp_path: Path) -> None:
    if not shutil.which("iotop-c"):
        pytest.skip("iotop-c is not installed (apt-get install iotop-c)")
    # The same tasks in the server's table (taskstats) and in the view (/proc).
    server.tasks.spawn(pid=LEADER, comm="redis", nice=5, counters={"read_bytes": 4 << 20})
    for tid in (THREAD_A, THREAD_B):
        server.tasks.clone_thread(LEADER, pid=tid)
    server.tasks.spawn(pid=RTJOB, comm="rtjob", ppid=LEADER, policy=1)
    server.tasks.spawn(pid=BUSY, comm="busy", nice=-3)
    view = build_view(tmp_path / "view", TASKS[1:])
    env = {**shim_environment(server.socket_path, base=host_env()), PROC_VIEW_ENV: str(view)}
    emulated = {LEADER, THREAD_A, THREAD_B, RTJOB, BUSY}
    for argv in (["iotop-c", "-b", "-o", "-n", "1"], ["iotop-c", "-b", "-n", "2", "-d", "0.2"],
                 ["iotop-c", "-b", "-P", "-n", "2", "-d", "0.2"]):
        host_pids = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        result = await run(argv, env, timeout=30)
        assert result.returncode == 0, result.stderr
        rows = [line.split() for line in lines(result.stdout) if re.match(r"\s*\d", line)]
        shown = {int(row[0]) for row in rows}
        itself = shown - emulated  # iotop-c lists itself: a process that did not exist before
        assert len(itself) <= 1 and not itself & host_pids, rows
        if "-o" not in argv:  # without --only every task of the view is listed
            expected = {LEADER, RTJOB, BUSY} | ({THREAD_A, THREAD_B} if "-P" not in argv
                                                else set())
            assert shown - itself == expected, rows


# -- tsemu run --proc -----------------------------------------------------------------------


def test_run_proc_emulated_names_the_servers_view(tmp_path: Path) -> None:
    socket = tmp_path / "genl.sock"
    out = tmp_path / "env.txt"
    show = f'printf "%s" "${{{PROC_VIEW_ENV}-unset}}" > {out}'
    assert run_command(["sh", "-c", show], socket) == 0  # no view published: unset
    assert out.read_text() == "unset"
    build_view(proc_view_path(socket), TASKS)
    assert proc_view_path(socket) == tmp_path / "genl.sock.proc"
    assert run_command(["sh", "-c", show], socket) == 0
    assert out.read_text() == str(tmp_path / "genl.sock.proc")
    assert run_command(["sh", "-c", show], socket, ProcMode.host) == 0
    assert out.read_text() == "unset"


def test_run_proc_emulated_shows_ps_the_emulated_machine(tmp_path: Path) -> None:
    if not shutil.which("ps"):
        pytest.skip("ps is not installed")
    socket = tmp_path / "genl.sock"
    build_view(proc_view_path(socket), TASKS)
    out = tmp_path / "ps.txt"
    for mode in ("emulated", "host"):
        command = [sys.executable, "-m", "tsemu", "run", "--socket", str(socket), "--proc", mode,
                   "--", "sh", "-c", f"ps -e -o pid= > {out}"]
        done = subprocess.run(command, env=host_env(), capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        pids = {int(p) for p in out.read_text().split()}
        if mode == "emulated":  # the view's, and ps itself
            assert set(VIEW_PIDS) <= pids and len(pids) == len(VIEW_PIDS) + 1
        else:
            assert not pids & {LEADER, RTJOB, BUSY} and os.getpid() in pids


def test_run_help_documents_proc() -> None:
    done = subprocess.run([sys.executable, "-m", "tsemu", "run", "--help"], env=host_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert "--proc" in done.stdout and "emulated" in done.stdout and "host" in done.stdout


def test_shim_environment_proc_modes(tmp_path: Path) -> None:
    socket = tmp_path / "genl.sock"
    base = {PROC_VIEW_ENV: "/elsewhere"}
    assert shim_environment(socket, base=base)[PROC_VIEW_ENV] == "/elsewhere"  # untouched
    assert PROC_VIEW_ENV not in shim_environment(socket, base=base, proc="emulated")
    assert PROC_VIEW_ENV not in shim_environment(socket, base=base, proc="host")
    proc_view_path(socket).mkdir()
    assert shim_environment(socket, base=base, proc="emulated")[PROC_VIEW_ENV] == \
        str(tmp_path / "genl.sock.proc")
    with pytest.raises(ValueError, match="proc must be"):
        shim_environment(socket, proc="guest")


# -- speed ----------------------------------------------------------------------------------


def bench_view(root: Path, count: int, first: int = 100_000) -> Path:
    """A view of `count` processes holding only what a refresh reads (cmdline, status and
    task/), every tenth with three threads: quick to write."""
    status = (Path("/proc/self/status").read_text())
    root.mkdir()
    (root / ".tid").mkdir()
    pid = first
    for i in range(count):
        tids = [pid, pid + 1, pid + 2] if i % 10 == 0 else [pid]
        task = root / str(pid)
        for tid in tids:
            os.makedirs(task / "task" / str(tid))
            if tid != pid:
                os.symlink(f"../{pid}/task/{tid}", root / ".tid" / str(tid))
        (task / "cmdline").write_bytes(f"/usr/bin/job{i}\0--serve\0".encode())
        (task / "status").write_text(status)
        pid += len(tids)
    (root / MARKER).write_text("tsemu proc view 1\n")
    return root


def test_a_refresh_of_10000_tasks_costs_little_more_than_reading_the_view(
        procprobe: Path, tmp_path: Path) -> None:
    # What iotop-c does each refresh: list /proc, read cmdline and status of every pid and
    # list its task/. Through the shim, and (the reference) the same calls on the view's
    # own paths without it.
    # On tmpfs where there is one, as /run and $XDG_RUNTIME_DIR are (and where the server's
    # view belongs): on a disk file system both sides take longer, and making and removing
    # the view takes longer than the test.
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) \
        else tmp_path
    view = bench_view(base / "view", 10_000)
    try:
        through = probe(procprobe, view_env(view), "bench:9")
        direct = probe(procprobe, host_env(), f"bench:9:{view}")
    finally:
        shutil.rmtree(base if base != tmp_path else view)
    numbers = {}
    for name, out in (("shim", through), ("direct", direct)):
        fields = dict(f.split("=") for f in one(out, "bench").split())
        numbers[name] = {k: float(v) for k, v in fields.items()}
    print(f"\nrefresh of 10,000 tasks: {numbers}")
    assert numbers["shim"]["tasks"] == 10_001 and numbers["direct"]["tasks"] == 10_000
    assert numbers["shim"]["threads"] == 12_001
    # The shim's work must stay small beside the file system's (~10% on a 2-CPU VM).
    assert numbers["shim"]["cpu_ms_best"] < 1.5 * numbers["direct"]["cpu_ms_best"] + 10
