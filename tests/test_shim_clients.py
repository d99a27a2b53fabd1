"""Real, unmodified taskstats clients, run through the shim against a live server, and run as
they are against the host kernel for comparison:

- iproute2's `genl` (C, libc netlink calls through iproute2's libnetlink);
- pyroute2's `TaskStats` (Python, asyncio on a non-blocking socket, its own port ids);
- Python's own `socket` module (tests/clients/pysocket.py);
- a getdelays-style C client (tests/clients/getdelays.c) compiled with -D_FORTIFY_SOURCE=2:
  family lookup, stats by pid and by tgid, listening for exits, ENOBUFS, CGROUPSTATS.

Against tsemu the output is checked value by value (the test scripted the process table);
against the host it is checked by shape (`harness.shape`: the same lines with the same keys),
where the host has taskstats; otherwise those tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.profiles import DEFAULT_PROFILE
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.model.tasks import TaskState
from tsemu.emulator.shell.addressing import ports_dir
from tsemu.emulator.shell.server import running_server

from .clients.harness import (
    CLIENTS,
    broadcast,
    compile_client,
    host_env,
    lines,
    require_host_taskstats,
    run,
    running,
    shape,
    shim_env,
    wait_for_listeners,
)
from .hostkernel import host_cpu_counts


def find_genl() -> str | None:
    candidates = [shutil.which("genl"), "/usr/sbin/genl", "/sbin/genl"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


GENL = find_genl()
needs_genl = pytest.mark.skipif(GENL is None, reason="iproute2's genl is not installed "
                                "(apt-get install iproute2)")

#: What `genl ctrl get name TASKSTATS` prints on Linux 6.18 (iproute2 6.1), byte for byte.
GENL_TASKSTATS = ("\nName: TASKSTATS\n\tID: 0x1f  Version: 0x1  header size: 0  max attribs: 0 \n"
                  "\tcommands supported: \n\t\t#1:  ID-0x1 \n\t\t#2:  ID-0x4 \n\n")
GENL_NLCTRL = ("\nName: nlctrl\n\tID: 0x10  Version: 0x2  header size: 0  max attribs: 0 \n"
               "\tcommands supported: \n\t\t#1:  ID-0x3 \n\t\tCapabilities (0xe):\n"
               " \t\t  can doit; can dumpit; has policy\n\n\t\t#2:  ID-0xa \n"
               "\t\tCapabilities (0xc):\n \t\t  can dumpit; has policy\n\n\n"
               "\tmulticast groups:\n\t\t#1:  ID-0x10  name: notify \n\n")
GENL_UNKNOWN = "RTNETLINK answers: No such file or directory\nError talking to the kernel\n"


def genl_blocks(output: str) -> dict[str, str]:
    """`genl ctrl list` output, one block per family, by name."""
    blocks = {}
    for part in output.split("\nName: ")[1:]:
        blocks[part.split("\n", 1)[0]] = "\nName: " + part
    return blocks


def fields(line: str) -> dict[str, str]:
    """`a=1 b=x` -> {"a": "1", "b": "x"}; the first word is kept as "_" if it has no `=`."""
    out: dict[str, str] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep:
            out.setdefault(key, value)  # getdelays' second pid= is ac_pid: keep the first
        else:
            out["_"] = word
    return out


def host_run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env=host_env(), capture_output=True, timeout=timeout,
                          check=False)


# -- iproute2 genl --------------------------------------------------------------------------


@needs_genl
async def test_genl_ctrl_get_name_taskstats(server: Any) -> None:
    assert GENL is not None
    result = await run([GENL, "ctrl", "get", "name", "TASKSTATS"], shim_env(server.socket_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == GENL_TASKSTATS
    result = await run([GENL, "ctrl", "get", "id", "0x1f"], shim_env(server.socket_path))
    assert result.stdout.decode() == GENL_TASKSTATS


@needs_genl
async def test_genl_ctrl_list(server: Any) -> None:
    assert GENL is not None
    result = await run([GENL, "ctrl", "list"], shim_env(server.socket_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == GENL_NLCTRL + GENL_TASKSTATS
    assert os.listdir(ports_dir(server.socket_path)) == []  # genl closed: its port file went


@needs_genl
async def test_genl_unknown_family(server: Any) -> None:
    assert GENL is not None
    result = await run([GENL, "ctrl", "get", "name", "NOSUCH"], shim_env(server.socket_path))
    assert (result.returncode, result.stdout, result.stderr.decode()) == (255, b"", GENL_UNKNOWN)


@pytest.mark.host
@needs_genl
def test_genl_says_the_same_on_the_host() -> None:
    require_host_taskstats()
    assert GENL is not None
    got = host_run([GENL, "ctrl", "get", "name", "TASKSTATS"]).stdout.decode()
    # The family id is assigned at boot: only it may differ.
    host_id = got.split("ID: ", 1)[1].split()[0]
    assert got.replace(f"ID: {host_id} ", "ID: 0x1f ") == GENL_TASKSTATS
    blocks = genl_blocks(host_run([GENL, "ctrl", "list"]).stdout.decode())
    assert blocks["nlctrl"] == GENL_NLCTRL
    assert blocks["TASKSTATS"].replace(f"ID: {host_id} ", "ID: 0x1f ") == GENL_TASKSTATS
    unknown = host_run([GENL, "ctrl", "get", "name", "NOSUCH"])
    assert (unknown.returncode, unknown.stderr.decode()) == (255, GENL_UNKNOWN)


# -- pyroute2 -------------------------------------------------------------------------------

PYROUTE2 = [sys.executable, str(CLIENTS / "pyroute2_taskstats.py")]


@pytest.fixture
def pyroute2() -> None:
    pytest.importorskip("pyroute2", reason="pyroute2 is not installed (pip install pyroute2)")


async def test_pyroute2_get_pid_stat(server: Any, pyroute2: None) -> None:
    task = server.tasks.spawn(comm="pyr-target", uid=1000, counters={
        "cpu_count": 7, "cpu_delay_total": 12345, "utime_ns": 3_000_000, "nvcsw": 9,
        "read_bytes": 5000})
    result = await run([*PYROUTE2, "stat", str(task.tid)], shim_env(server.socket_path))
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [
        f"pid={task.tid} comm=pyr-target version=16 ac_exitcode=0 ac_flag=0 ac_uid=1000 "
        f"ac_pid={task.tid} ac_ppid=1 cpu_count=7 cpu_delay_total=12345 ac_utime=3000 "
        f"ac_stime=0 read_bytes=4096 write_bytes=0 nvcsw=9"]


async def test_pyroute2_exit_events(server: Any, pyroute2: None) -> None:
    sync = server.tasks.spawn(comm="sync")
    one = server.tasks.spawn(comm="one", cpu=0)
    two = server.tasks.spawn(comm="two", cpu=1, threads=2)
    thread = next(t.tid for t in server.tasks if t.tgid == two.tid and t.tid != two.tid)
    argv = [*PYROUTE2, "listen", "0-1", str(sync.tid), "3"]
    async with running(argv, shim_env(server.socket_path)) as client:
        assert await client.line() == "registered"
        await wait_for_listeners(server)
        await broadcast(server, server.tasks.exit_task(one.tid, code=3))
        await broadcast(server, server.tasks.exit_group(two.tid))
        events = await client.rest()
        assert await client.wait() == 0
    got = [fields(line) for line in events]
    assert [(f["_"], f.get("pid") or f.get("tgid"), f["comm"]) for f in got] == [
        ("exit", str(one.tid), "one"), ("exit", str(two.tid), "two"),
        ("exit", str(thread), "two"), ("exit", str(two.tid), "-")]
    assert got[0]["ac_exitcode"] == str(3 << 8) and got[0]["ac_flag"] == "32"  # AGROUP
    # the leader exits first; the other thread dies of the group's SIGKILL, last: AXSIG|AGROUP
    assert "tgid" in got[3] and (got[1]["ac_flag"], got[2]["ac_flag"]) == ("0", "48")


@pytest.mark.host
def test_pyroute2_says_the_same_on_the_host(pyroute2: None) -> None:
    require_host_taskstats()
    stat = host_run([*PYROUTE2, "stat", "self"])
    assert stat.returncode == 0, stat.stderr
    assert shape(lines(stat.stdout)) == shape([
        "pid= comm= version= ac_exitcode= ac_flag= ac_uid= ac_pid= ac_ppid= cpu_count= "
        "cpu_delay_total= ac_utime= ac_stime= read_bytes= write_bytes= nvcsw="])
    nr_cpus, _ = host_cpu_counts()
    with subprocess.Popen([*PYROUTE2, "listen", f"0-{nr_cpus - 1}", "self", "1"],
                          env=host_env(), stdout=subprocess.PIPE) as client:
        assert client.stdout is not None
        assert client.stdout.readline() == b"registered\n"
        subprocess.run(["true"], check=True)  # at least one exit
        event = client.stdout.readline().decode().rstrip("\n")
        client.wait(timeout=10)
    assert shape([event]) == shape(["exit pid= comm= version= ac_exitcode= ac_flag= ac_uid= "
                                    "ac_pid= ac_ppid= cpu_count= cpu_delay_total= ac_utime= "
                                    "ac_stime= read_bytes= write_bytes= nvcsw="])


# -- Python's socket module -----------------------------------------------------------------

PYSOCKET = [sys.executable, str(CLIENTS / "pysocket.py")]


async def test_python_socket_module(server: Any) -> None:
    task = server.tasks.spawn(comm="pysock", uid=7, gid=8, ppid=1, counters={"cpu_count": 3})
    result = await run([*PYSOCKET, str(task.tid), "0"], shim_env(server.socket_path))
    assert result.returncode == 1, result.stderr  # the second pid does not exist
    assert lines(result.stdout) == [
        "family=TASKSTATS id=0x1f port=tgid",
        f"pid={task.tid} version=16 size=560 comm=pysock ac_pid={task.tid} ppid=1 uid=7 gid=8 "
        "exitcode=0 flag=0x0 cpu_count=3 cpu_delay_total=0 utime=0 stime=0",
        "error=ESRCH"]


@pytest.mark.host
def test_python_socket_module_says_the_same_on_the_host() -> None:
    require_host_taskstats()
    result = host_run([*PYSOCKET, "self", "0"])
    assert result.returncode == 1, result.stderr
    got = lines(result.stdout)
    assert got[0].startswith("family=TASKSTATS id=0x") and got[0].endswith(" port=tgid")
    assert shape(got[1:]) == shape([
        "pid= version= size= comm= ac_pid= ppid= uid= gid= exitcode= flag= cpu_count= "
        "cpu_delay_total= utime= stime=", "error="])
    assert fields(got[1])["size"] == "560" and got[2] == "error=ESRCH"


# -- getdelays ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def getdelays(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(compile_client(CLIENTS / "getdelays.c", tmp_path_factory.mktemp("getdelays")))


#: getdelays' key for each field of the record `pid_stats` / `tgid_stats` return.
GETDELAYS_FIELDS = {
    "version": "version", "pid": "ac_pid", "ppid": "ac_ppid", "tgid": "ac_tgid",
    "uid": "ac_uid", "exitcode": "ac_exitcode", "cpu_count": "cpu_count",
    "cpu_delay_total": "cpu_delay_total", "blkio_count": "blkio_count",
    "blkio_delay_total": "blkio_delay_total", "swapin_count": "swapin_count",
    "freepages_count": "freepages_count", "thrashing_count": "thrashing_count",
    "utime": "ac_utime", "stime": "ac_stime", "etime": "ac_etime", "minflt": "ac_minflt",
    "majflt": "ac_majflt", "read_bytes": "read_bytes", "write_bytes": "write_bytes",
    "nvcsw": "nvcsw", "nivcsw": "nivcsw",
}


def getdelays_line(what: str, ident: int, record: dict[str, Any]) -> str:
    """The line getdelays prints for `record` (a pid_stats / tgid_stats value mapping)."""
    comm = record["ac_comm"].decode().replace(" ", "_") or "-"
    values = {key: record[name] for key, name in GETDELAYS_FIELDS.items()}
    return (f"{what}={ident} version={values['version']} comm={comm} pid={values['pid']} "
            f"ppid={values['ppid']} tgid={values['tgid']} uid={values['uid']} "
            f"exitcode={values['exitcode']} flag={record['ac_flag']:#x} "
            + " ".join(f"{k}={values[k]}" for k in list(GETDELAYS_FIELDS)[6:]))


async def test_getdelays_stats_by_pid_and_tgid(server: Any, getdelays: str) -> None:
    server.tasks.clock.advance(2.5)
    leader = server.tasks.spawn(comm="gd target", threads=3, uid=1000, counters={
        "cpu_count": 7, "cpu_delay_total": 12345, "blkio_count": 2, "utime_ns": 3_000_000,
        "ac_minflt": 11, "read_bytes": 5000, "nvcsw": 9})
    server.tasks.clock.advance(1)
    thread = [t.tid for t in server.tasks if t.tgid == leader.tid][1]
    server.tasks.add(thread, cpu_count=4, stime_ns=2_000_000, nivcsw=5)
    result = await run([getdelays, "-p", str(thread), "-t", str(leader.tid)],
                       shim_env(server.socket_path))
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [
        "family=TASKSTATS id=0x1f",
        getdelays_line("pid", thread, server.tasks.pid_stats(thread)),
        getdelays_line("tgid", leader.tid, server.tasks.tgid_stats(leader.tid))]
    assert "comm=gd_target" in lines(result.stdout)[1]
    result = await run([getdelays, "-p", "999999"], shim_env(server.socket_path))
    assert lines(result.stdout) == ["family=TASKSTATS id=0x1f", "error=ESRCH"]


async def test_getdelays_listens_for_scripted_exits(server: Any, getdelays: str) -> None:
    one = server.tasks.spawn(comm="one", cpu=1)
    elsewhere = server.tasks.spawn(comm="elsewhere", cpu=0)
    two = server.tasks.spawn(comm="two", cpu=1, threads=2)
    thread = next(t.tid for t in server.tasks if t.tgid == two.tid and t.tid != two.tid)
    async with running([getdelays, "-m", "1", "-n", "3"], shim_env(server.socket_path)) as gd:
        assert await gd.until(lambda line: line.startswith("registered")) == [
            "family=TASKSTATS id=0x1f", "registered cpumask=1"]
        one_exit = server.tasks.exit_task(one.tid, code=3)
        await broadcast(server, one_exit)
        await broadcast(server, server.tasks.exit_task(elsewhere.tid))  # CPU 0: not listened to
        group = server.tasks.exit_group(two.tid, signal=9)
        await broadcast(server, group)
        events = await gd.rest()
        assert await gd.wait() == 0
    assert events == [
        "exit " + getdelays_line("pid", one.tid, one_exit.pid_values),
        "exit " + getdelays_line("pid", two.tid, group[0].pid_values),
        "exit " + getdelays_line("pid", thread, group[1].pid_values),
        "exit " + getdelays_line("tgid", two.tid, group[1].tgid_values or {})]
    assert "exitcode=768 flag=0x20" in events[0]  # exit(3), AGROUP: the last thread
    assert "flag=0x30" in events[2]  # killed by a signal (AXSIG) and the last thread


async def test_getdelays_reads_exits_with_read(server: Any, getdelays: str) -> None:
    task = server.tasks.spawn(comm="viaread")
    async with running([getdelays, "-m", "0-1", "-n", "1", "-R"],
                       shim_env(server.socket_path)) as gd:
        await gd.until(lambda line: line.startswith("registered"))
        report = server.tasks.exit_task(task.tid)
        await broadcast(server, report)
        assert await gd.rest() == ["exit " + getdelays_line("pid", task.tid, report.pid_values)]


async def test_getdelays_overflowing_listener_gets_enobufs(server: Any, getdelays: str) -> None:
    # SO_RCVBUF 4096 is 8192 bytes of receive buffer: room for about six 596-byte events
    # (1280 bytes of truesize each). The client reads nothing until the test says so (-w).
    tasks = [server.tasks.spawn(comm=f"burst{i}") for i in range(30)]
    late = server.tasks.spawn(comm="late")
    argv = [getdelays, "-r", "4096", "-m", "0-1", "-w"]
    async with running(argv, shim_env(server.socket_path)) as gd:
        await gd.until(lambda line: line.startswith("registered"))
        await wait_for_listeners(server)
        await broadcast(server, [server.tasks.exit_task(t.tid) for t in tasks])
        # What tsemu kept is on its way to the client: two replies (family, register ACK)
        # and the events the buffer admitted.
        (client,) = server.clients.values()
        with trio.fail_after(5):
            while client.outbox.delivered + client.outbox.dropped < 2 + len(tasks):
                await trio.sleep(0.01)
        kept = client.outbox.delivered - 2
        await gd.send(b"go\n")
        before = [await gd.line() for _ in range(kept + 1)]
        # Reading everything clears the congestion: the next exit is delivered again.
        await broadcast(server, server.tasks.exit_task(late.tid))
        after = await gd.line()
    # The notice comes before the events still queued in tsemu and after those already in the
    # client's socket; the kernel reports it before all of them. Either way the events kept
    # are the first of the burst, the rest are dropped, and ENOBUFS is reported once.
    assert 5 <= kept <= 6, kept
    assert before.count("error=ENOBUFS") == 1
    assert [fields(line)["pid"] for line in before if line != "error=ENOBUFS"] == [
        str(t.tid) for t in tasks[:kept]]
    assert fields(after)["pid"] == str(late.tid)


@pytest.mark.host
def test_getdelays_says_the_same_on_the_host(getdelays: str) -> None:
    require_host_taskstats()
    result = host_run([getdelays, "-p", "self", "-t", "self"])
    assert result.returncode == 0, result.stderr
    got = lines(result.stdout)
    record = {name: 0 for name in GETDELAYS_FIELDS.values()} | {"ac_comm": b"x", "ac_flag": 0}
    assert got[0].startswith("family=TASKSTATS id=0x")
    assert shape(got[1:]) == shape([getdelays_line("pid", 1, record),
                                    getdelays_line("tgid", 1, record)])
    assert lines(host_run([getdelays, "-p", "999999999"]).stdout)[1:] == ["error=ESRCH"]

    nr_cpus, _ = host_cpu_counts()
    mask = f"0-{nr_cpus - 1}"
    # Listening: a single-threaded and a two-threaded process exit; other processes of the
    # host may exit meanwhile, so read until both of ours were reported.
    with subprocess.Popen([getdelays, "-m", mask], env=host_env(), stdout=subprocess.PIPE,
                          text=True) as gd:
        assert gd.stdout is not None
        assert gd.stdout.readline().startswith("family=")
        assert gd.stdout.readline() == f"registered cpumask={mask}\n"
        threaded = subprocess.run(
            [sys.executable, "-c", "import os, threading; t = threading.Thread(target=print, "
             "args=('',)); t.start(); t.join(); print(os.getpid())"],
            capture_output=True, text=True, check=True)
        tgid = threaded.stdout.split()[-1]
        seen: list[str] = []
        while not any(line.startswith(f"exit tgid={tgid} ") for line in seen):
            line = gd.stdout.readline()
            assert line, f"getdelays ended before reporting process {tgid}: {seen}"
            seen.append(line.rstrip("\n"))
        gd.kill()
    ours = [line for line in seen if f"tgid={tgid} " in line]
    assert shape(ours[-2:]) == shape([
        "exit " + getdelays_line("pid", 1, record), "exit " + getdelays_line("tgid", 1, record)])


@pytest.mark.host
def test_getdelays_enobufs_on_the_host(getdelays: str) -> None:
    require_host_taskstats()
    nr_cpus, _ = host_cpu_counts()
    argv = [getdelays, "-r", "4096", "-m", f"0-{nr_cpus - 1}", "-w", "-n", "3"]
    with subprocess.Popen(argv, env=host_env(), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as gd:
        assert gd.stdin is not None and gd.stdout is not None
        gd.stdout.readline()
        assert gd.stdout.readline().startswith("registered")
        for _ in range(30):
            subprocess.run(["true"], check=True)
        try:
            out = gd.communicate("go\n", timeout=20)[0].splitlines()
        finally:
            gd.kill()
    # The kernel reports ENOBUFS before what it kept; tsemu after what already reached the
    # client's socket (at most a few: see emulator/outbox.py). The lines are the same.
    assert out.count("error=ENOBUFS") == 1
    assert {shape([line])[0] for line in out if line.startswith("exit ")} == {
        shape(["exit " + getdelays_line("pid", 1, {name: 0 for name in GETDELAYS_FIELDS.values()}
                                        | {"ac_comm": b"x", "ac_flag": 0})])[0]}


# -- CGROUPSTATS -----------------------------------------------------------------------------


async def test_getdelays_cgroupstats_passes_the_descriptor(short_tmp: Path,
                                                           getdelays: str) -> None:
    root = short_tmp / "cg"
    (root / "jobs").mkdir(parents=True)
    (short_tmp / "plain").write_text("not a directory")
    table = ProcessTable(VirtualClock(), DEFAULT_PROFILE, 2)
    states = [TaskState.RUNNING, TaskState.RUNNING, TaskState.SLEEPING, TaskState.STOPPED,
              TaskState.UNINTERRUPTIBLE, TaskState.IO_WAIT, TaskState.IDLE]
    for state in states:
        table.spawn(comm="job", cgroup="/jobs", state=state)
    table.spawn(comm="other", cgroup="/", state=TaskState.RUNNING)
    path = short_tmp / "genl.sock"
    async with running_server(path, table, nr_cpus=2, cgroup_roots=(str(root),)):
        env = shim_env(path)
        result = await run([getdelays, "-C", str(root / "jobs")], env)
        assert lines(result.stdout) == [
            "family=TASKSTATS id=0x1f",
            "cgroupstats sleeping=1 running=2 stopped=1 uninterruptible=1 io_wait=1", "ack"]
        result = await run([getdelays, "-C", str(root)], env)
        assert lines(result.stdout)[1] == ("cgroupstats sleeping=0 running=1 stopped=0 "
                                           "uninterruptible=0 io_wait=0")
        result = await run([getdelays, "-C", str(short_tmp / "plain")], env)
        assert lines(result.stdout)[1:] == ["error=EINVAL"]
        result = await run([getdelays, "-F", "99"], env)  # not open: no reply, only the ACK
        assert lines(result.stdout)[1:] == ["ack"]
        result = await run([getdelays, "-F", "0"], env)  # open, but not a cgroup
        assert lines(result.stdout)[1:] == ["error=EINVAL"]


def v1_cgroup_directory() -> str | None:
    """A cgroup v1 hierarchy's root on the host (CGROUPSTATS answers only for v1)."""
    with open("/proc/self/mounts") as mounts:
        for entry in mounts:
            parts = entry.split()
            if len(parts) > 2 and parts[2] == "cgroup":
                return parts[1]
    return None


@pytest.mark.host
def test_getdelays_cgroupstats_on_the_host(getdelays: str) -> None:
    require_host_taskstats()
    assert lines(host_run([getdelays, "-F", "99"]).stdout)[1:] == ["ack"]
    assert lines(host_run([getdelays, "-F", "0"], timeout=10).stdout)[1:] == ["error=EINVAL"]
    directory = v1_cgroup_directory()
    if directory is None:
        pytest.skip("host comparison: no cgroup v1 hierarchy mounted (CGROUPSTATS needs one)")
    got = lines(host_run([getdelays, "-C", directory]).stdout)[1:]
    assert shape(got) == shape(["cgroupstats sleeping= running= stopped= uninterruptible= "
                                "io_wait=", "ack"])


async def test_clients_leave_no_port_files(server: Any, getdelays: str) -> None:
    await run([getdelays, "-p", "1"], shim_env(server.socket_path))
    await trio.sleep(0)
    assert os.listdir(ports_dir(server.socket_path)) == []
