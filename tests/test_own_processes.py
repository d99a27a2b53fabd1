"""The client belongs to the machine: questions about itself and its own children are
answered, and their exits are broadcast, as a real kernel does (emulator/shell/clientprocs.py,
shim/exits.c, tsemu/family.py).

Run through the `tsemu` fixture: the test process is the family's root, its clients run
through the shim, and the children it reaps with `tsemu.run`/`tsemu.wait` are reported.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tsemu.pytest_plugin import TsemuHandle

from .clients.harness import CLIENTS, compile_client, host_env, require_host_taskstats

#: ac_flag bits (include/uapi/linux/acct.h).
AFORK, ACORE, AXSIG, AGROUP = 0x01, 0x08, 0x10, 0x20


@pytest.fixture(scope="module")
def getdelays(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(compile_client(CLIENTS / "getdelays.c", tmp_path_factory.mktemp("own")))


def records(output: str, prefix: str) -> list[dict[str, str]]:
    """The `key=value` lines of getdelays' output that start with `prefix` ("pid=",
    "exit tgid="...), each as a dict (its first word's key included)."""
    found = []
    for line in output.splitlines():
        if line.startswith(prefix):
            words = line.removeprefix("exit ").split()
            record: dict[str, str] = {}
            for word in words:
                key, _, value = word.partition("=")
                record.setdefault(key, value)  # (the second pid= is ac_pid: keep the first)
            found.append(record)
    return found


def test_a_client_asking_about_itself_is_answered(tsemu: TsemuHandle, getdelays: str) -> None:
    done = tsemu.run([getdelays, "-p", "self", "-t", "self"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (pid_record,) = records(done.stdout, "pid=")
    (tgid_record,) = records(done.stdout, "tgid=")
    assert pid_record["comm"] == "getdelays" and pid_record["ppid"] == str(os.getpid())
    assert int(pid_record["cpu_count"]) > 0 and pid_record["tgid"] == tgid_record["tgid"]


def test_pyroute2s_own_self_test_passes(tsemu: TsemuHandle) -> None:
    pytest.importorskip("pyroute2")
    code = textwrap.dedent("""
        import os
        from pyroute2 import TaskStats
        ts = TaskStats()
        ts.bind()
        stats = ts.get_pid_stat(os.getpid())[0].get_attr("TASKSTATS_TYPE_AGGR_PID") \\
            .get_attr("TASKSTATS_TYPE_STATS")
        assert stats["cpu_count"] > 0, stats
        assert stats["ac_pid"] == os.getpid(), stats
        assert stats["coremem"] > 0 and stats["virtmem"] > 0, stats
        print("ok")
    """)
    done = tsemu.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


def test_run_a_command_mode_asks_about_its_child_and_hears_it_exit(
        tsemu: TsemuHandle, getdelays: str) -> None:
    done = tsemu.run([getdelays, "-m", "0-1", "-n", "2", "-c", "sh", "-c", "sleep 0.1; exit 3"],
                     capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    child = next(line for line in done.stdout.splitlines() if line.startswith("child="))
    child_pid = child.split()[0].split("=")[1]
    asked = records(done.stdout, "pid=")
    assert [r["pid"] for r in asked] == [child_pid]  # the GET about the running child
    exits = records(done.stdout, "exit pid=")
    assert [r["comm"] for r in exits] == ["sleep", "sh"]  # reaped by sh, then by getdelays
    assert exits[1]["pid"] == child_pid and exits[1]["exitcode"] == str(3 << 8)
    assert int(exits[1]["flag"], 16) == AGROUP


def test_a_listener_hears_real_children_exit(tsemu: TsemuHandle, getdelays: str,
                                             tmp_path: Path) -> None:
    listener = tsemu.popen([getdelays, "-m", "0-1", "-n", "3"], stdout=subprocess.PIPE,
                           text=True)
    tsemu.wait_for_listener()
    plain = tsemu.run(["sh", "-c", "exit 7"])
    killed = tsemu.run([sys.executable, "-c",
                        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    threaded = tsemu.run([sys.executable, "-c", "import threading\n"
                          "t = threading.Thread(target=print)\nt.start()\nt.join()\n"
                          "raise SystemExit(5)"], stdout=subprocess.DEVNULL)
    assert (plain.returncode, killed.returncode, threaded.returncode) == (7, -9, 5)
    assert listener.stdout is not None
    out = listener.stdout.read()
    assert tsemu.wait(listener) == 0, out
    pids = records(out, "exit pid=")
    python = os.path.basename(sys.executable)[:15]  # (comm: the name it was run by)
    assert [(r["comm"], r["exitcode"]) for r in pids] == [
        ("sh", str(7 << 8)), (python, "9"), (python, str(5 << 8))], out
    assert [int(r["flag"], 16) for r in pids] == [AGROUP, AXSIG | AGROUP, AGROUP]
    assert all(r["ppid"] == str(os.getpid()) for r in pids)
    (group,) = records(out, "exit tgid=")  # the threaded one's AGGR_TGID record
    assert group["tgid"] == pids[2]["pid"]


def test_a_core_dump_is_reported_as_the_kernel_reports_it(
        tsemu: TsemuHandle, getdelays: str, tmp_path: Path) -> None:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|"):
        pytest.skip(f"core dumps go to a helper here (core_pattern {pattern!r}), which may "
                    "refuse them: the ACORE flag cannot be shown")
    listener = tsemu.popen([getdelays, "-m", "0-1", "-n", "1"], stdout=subprocess.PIPE,
                           text=True)
    tsemu.wait_for_listener()

    def allow_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,
                                                  resource.RLIM_INFINITY))

    done = tsemu.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), "
                      "signal.SIGSEGV)"], preexec_fn=allow_core, cwd=tmp_path)
    assert done.returncode == -signal.SIGSEGV
    assert listener.stdout is not None
    out = listener.stdout.read()
    tsemu.wait(listener)
    (record,) = records(out, "exit pid=")
    assert record["exitcode"] == str(signal.SIGSEGV | 0x80)
    assert int(record["flag"], 16) == ACORE | AXSIG | AGROUP


def test_ctl_ps_shows_the_clients_own_processes(tsemu: TsemuHandle) -> None:
    sleeper = tsemu.popen(["sleep", "30"])
    try:
        real = {t["pid"]: t for t in tsemu.ps() if t.get("real")}
        assert sleeper.pid in real and real[sleeper.pid]["comm"] == "sleep"
        assert os.getpid() in real  # the family's root
    finally:
        sleeper.kill()
        tsemu.wait(sleeper)


def test_a_real_exit_record_equals_the_host_kernels(tsemu: TsemuHandle, getdelays: str) -> None:
    """The same child's exit, heard from tsemu and from the host kernel in the same run:
    equal field by field, except what /proc cannot show of a zombie (the times, in ticks
    there; the final context switch, counted after the kernel's record was made)."""
    require_host_taskstats()
    host = subprocess.Popen([getdelays, "-m", f"0-{os.cpu_count() - 1}"], env=host_env(),
                            stdout=subprocess.PIPE, text=True)
    emulated = tsemu.popen([getdelays, "-m", "0-1", "-n", "1"], stdout=subprocess.PIPE,
                           text=True)
    try:
        tsemu.wait_for_listener()
        assert host.stdout is not None and emulated.stdout is not None
        assert host.stdout.readline().startswith("family=")
        assert host.stdout.readline().startswith("registered")
        child = tsemu.popen(["sh", "-c", "echo x > /dev/null; exit 9"])
        tsemu.wait(child)
        out = emulated.stdout.read()
        tsemu.wait(emulated)
        (ours,) = records(out, "exit pid=")
        theirs: dict[str, Any] | None = None
        while theirs is None:
            line = host.stdout.readline()
            assert line, "the host listener ended"
            found = records(line, "exit pid=")
            if found and found[0]["pid"] == str(child.pid):
                theirs = found[0]
    finally:
        host.kill()
        host.wait()
    same = ("version", "comm", "pid", "ppid", "tgid", "uid", "exitcode", "flag", "minflt",
            "majflt", "read_bytes", "write_bytes")
    assert {k: ours[k] for k in same} == {k: theirs[k] for k in same}
    # The zombie's counts include the switches the dying task made after the kernel's record
    # (preempted on its way out, and the last one away from it): a few.
    extra = [int(ours[k]) - int(theirs[k]) for k in ("nvcsw", "nivcsw")]
    assert min(extra) >= 0 and sum(extra) <= 4, (ours, theirs)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_users_client_can_neither_see_nor_report_the_familys_processes(
        tsemu: TsemuHandle) -> None:
    from .test_security import as_nobody

    os.chmod(tsemu.socket_path.parent, 0o755)
    sleeper = tsemu.popen(["sleep", "30"])
    try:
        code = """
            import errno, sys, trio
            from tsemu.client import Client, NetlinkError
            from tsemu.family import FamilyChannel
            from tsemu.wire.control import ControlOp

            async def main():
                async with await Client.connect(sys.argv[1]) as client:
                    for pid in map(int, sys.argv[2:]):
                        try:
                            await client.get_pid(pid)
                            print("seen", pid)
                        except NetlinkError as exc:
                            print("refused", pid, errno.errorcode[exc.errno])
            trio.run(main)
            channel = FamilyChannel.open(__import__("pathlib").Path(sys.argv[1]))
            print("root", channel.register_root())
            print("exited", channel.tell(ControlOp.EXITED, int(sys.argv[3])))
            channel.close()
        """
        done = as_nobody(code, str(tsemu.socket_path), str(os.getpid()), str(sleeper.pid))
        assert done.returncode == 0, done.stderr
        # (an unprivileged GET is refused before anything else, as the kernel refuses it)
        assert done.stdout.split("\n")[:4] == [
            f"refused {os.getpid()} EPERM", f"refused {sleeper.pid} EPERM", "root True",
            "exited False"]
    finally:
        sleeper.kill()
        tsemu.wait(sleeper)


def test_the_family_rules_as_the_server_applies_them(tmp_path: Path) -> None:
    """Who may see which host process, decided from credentials alone: a process of another
    user is out of reach of a non-root asker even inside the family; a process outside any
    registered family sees only itself and its descendants."""
    from tsemu.emulator.model.clock import VirtualClock
    from tsemu.emulator.model.profiles import DEFAULT_PROFILE
    from tsemu.emulator.model.table import ProcessTable
    from tsemu.emulator.shell.clientprocs import ClientProcesses
    from tsemu.emulator.shell.hostmirror import HostMirror

    own = ClientProcesses(HostMirror(ProcessTable(VirtualClock(), DEFAULT_PROFILE, 2),
                                     DEFAULT_PROFILE))
    me = os.getpid()
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert own.may_see(me, os.getuid(), child.pid)  # a descendant, unregistered
        assert not own.may_see(child.pid, os.getuid(), me)  # not its descendant
        assert own.register_root(me)
        assert own.family_root(child.pid) == me
        assert own.may_see(child.pid, os.getuid(), me)  # one family now
        assert not own.may_see(child.pid, os.getuid() + 1, me)  # another user's process
        assert not own.may_see(me, os.getuid(), 1) or os.getppid() == 1
        assert own.exit_report(me, os.getuid(), child.pid, 2) is None  # alive: no report
    finally:
        child.kill()
        child.wait()
