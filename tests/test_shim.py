"""The LD_PRELOAD shim itself, and `tsemu run`.

- sockprobe (tests/clients/sockprobe.c) observes what a netlink client can see of its socket:
  names and port ids, socket options, MSG_PEEK / MSG_TRUNC sizing, errors, non-blocking and
  timed receives, poll / select / epoll, dup / fork / exec / threads. Its output on a Linux
  6.18 kernel is the reference (tests/clients/sockprobe.expected); through the shim, tsemu
  must reproduce it line for line, and the host kernel must still agree with it.
- what only the shim has: no server (ECONNREFUSED, a hint with TSEMU_DEBUG, a server that
  starts later), port files, other sockets left alone.
- `tsemu run` (cli/run.py) and locating the library (tsemu/shim.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import tsemu.shim as shim_module
from tsemu.cli.run import exit_status, run_command
from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.profiles import DEFAULT_PROFILE
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.shell.addressing import ports_dir
from tsemu.emulator.shell.server import running_server
from tsemu.shim import ShimNotBuilt, shim_environment, shim_path

from .clients.harness import (
    CLIENTS,
    compile_client,
    host_env,
    lines,
    require_host_taskstats,
    run,
    running,
    shim_env,
    shim_library,
)

REFERENCE = CLIENTS / "sockprobe.expected"


def reference_sections() -> dict[str, list[str]]:
    """sockprobe.expected, by probe: {name: the probe's lines, its `== name` header first}."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("== "):
            current = sections.setdefault(line[3:], [])
        current.append(line)
    return sections


PROBES = list(reference_sections())


def comparable(output: list[str]) -> list[str]:
    """The lines to compare: SO_RCVBUFFORCE's result depends on being root (the reference is)."""
    if os.geteuid() == 0:
        return output
    return [line for line in output if not line.startswith("SO_RCVBUFFORCE")]


@pytest.fixture(scope="module")
def sockprobe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_client(CLIENTS / "sockprobe.c", tmp_path_factory.mktemp("sockprobe"))


# -- the library --------------------------------------------------------------------------


def test_the_shim_is_built_and_found() -> None:
    library = shim_library()
    assert library.name == "libtsemu-shim.so"
    assert library.read_bytes()[:4] == b"\x7fELF"


def test_a_missing_shim_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.delenv("TSEMU_SHIM", raising=False)
    monkeypatch.setattr(shim_module, "__file__", str(tmp_path / "shim.py"))
    with pytest.raises(ShimNotBuilt, match=r"pip install -e \."):
        shim_path()
    monkeypatch.setenv("TSEMU_SHIM", str(tmp_path / "nothing.so"))
    with pytest.raises(ShimNotBuilt, match="TSEMU_SHIM"):
        shim_path()


def test_the_shim_goes_first_in_ld_preload(tmp_path: Path) -> None:
    env = shim_environment(tmp_path / "genl.sock", base={"LD_PRELOAD": "/lib/other.so"})
    assert env["LD_PRELOAD"] == f"{shim_library()} /lib/other.so"
    assert env["TSEMU_SOCKET"] == str(tmp_path / "genl.sock")


# -- socket semantics, against the kernel's reference -------------------------------------


@pytest.mark.parametrize("probe", PROBES)
async def test_sockprobe_through_the_shim_matches_the_kernel(probe: str, server: Any,
                                                             sockprobe: Path) -> None:
    result = await run([str(sockprobe), probe], shim_env(server.socket_path))
    assert result.returncode == 0, result.stderr
    assert comparable(lines(result.stdout)) == comparable(reference_sections()[probe])


@pytest.mark.host
@pytest.mark.parametrize("probe", PROBES)
def test_sockprobe_reference_is_what_the_host_kernel_says(probe: str, sockprobe: Path) -> None:
    require_host_taskstats()
    result = subprocess.run([str(sockprobe), probe], env=host_env(), capture_output=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert comparable(lines(result.stdout)) == comparable(reference_sections()[probe])


REOPEN = """
import socket, struct
request = struct.pack("=IHHII", 36, 0x10, 1, 1, 0) + bytes([3, 1, 0, 0]) \\
    + struct.pack("=HH", 14, 2) + b"TASKSTATS\\0" + b"\\0\\0"
for round in range(3):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
    s.bind((0, 0))
    s.settimeout(2)
    s.sendto(request, (0, 0))
    print(round, s.getsockname()[0] == __import__("os").getpid(), len(s.recv(4096)), flush=True)
    s.close()
"""


async def test_a_socket_closed_and_opened_again_gets_its_replies(server: Any) -> None:
    # The kernel gives the process's tgid to its next socket again; tsemu must answer it.
    result = await run([sys.executable, "-c", REOPEN], shim_env(server.socket_path), timeout=10)
    assert lines(result.stdout) == ["0 True 112", "1 True 112", "2 True 112"], result.stderr


# -- what only the shim has ---------------------------------------------------------------

NO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
s.bind((0, 0))
print("bound", s.getsockname()[0] == __import__("os").getpid(), flush=True)
if len(sys.argv) > 1:
    sys.stdin.readline()  # the test starts the server meanwhile
try:
    s.sendto(b"\\x14\\0\\0\\0\\x10\\0\\x01\\0\\x01\\0\\0\\0\\0\\0\\0\\0\\x03\\x01\\0\\0", (0, 0))
    print("sent", len(s.recv(4096)), flush=True)
except OSError as exc:
    print("error", exc.errno == __import__("errno").ECONNREFUSED, flush=True)
"""


async def test_without_a_server_sends_are_refused_quietly(short_tmp: Path) -> None:
    env = shim_env(short_tmp / "nobody.sock")
    result = await run([sys.executable, "-c", NO_SERVER], env)
    assert lines(result.stdout) == ["bound True", "error True"]
    assert result.stderr == b""


async def test_without_a_server_tsemu_debug_gives_one_hint(short_tmp: Path) -> None:
    env = shim_env(short_tmp / "nobody.sock", TSEMU_DEBUG="1")
    result = await run([sys.executable, "-c", NO_SERVER], env)
    assert lines(result.stdout) == ["bound True", "error True"]
    hint = lines(result.stderr)
    assert len(hint) == 1 and hint[0].startswith("tsemu-shim: no tsemu server at ")
    assert str(short_tmp / "nobody.sock") in hint[0]


async def test_a_socket_path_too_long_for_port_names_is_refused(short_tmp: Path) -> None:
    # `<path>.ports/-2147483648` must fit in sun_path (108 bytes).
    path = short_tmp / ("x" * (100 - len(str(short_tmp))))
    code = ("import socket\ntry:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)\n"
            "except OSError as exc:\n    print(exc.strerror)")
    result = await run([sys.executable, "-c", code], shim_env(path, TSEMU_DEBUG="1"))
    assert lines(result.stdout) == ["File name too long"]
    assert "too long" in result.stderr.decode()


async def test_a_server_that_starts_after_bind_is_reached(short_tmp: Path) -> None:
    path = short_tmp / "late.sock"
    async with running([sys.executable, "-c", NO_SERVER, "wait"], shim_env(path)) as client:
        assert await client.line() == "bound True"
        table = ProcessTable(VirtualClock(), DEFAULT_PROFILE, 2)
        async with running_server(path, table, nr_cpus=2):
            await client.send(b"go\n")
            # a GETFAMILY without a name: EINVAL, a 40-byte NLMSG_ERROR
            assert await client.line() == "sent 40"
            assert await client.wait() == 0


async def test_port_files_are_removed_on_close_and_stale_ones_taken_over(server: Any) -> None:
    ports = ports_dir(server.socket_path)
    leave = ("import socket, os; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16); "
             "s.bind((4242, 0)); os._exit(0)")  # dies without closing: the file stays
    result = await run([sys.executable, "-c", leave], shim_env(server.socket_path))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(ports)) == ["4242"]
    take = ("import socket; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16); "
            "s.bind((4242, 0)); print(s.getsockname()); s.close()")
    result = await run([sys.executable, "-c", take], shim_env(server.socket_path))
    assert lines(result.stdout) == ["(4242, 0)"], result.stderr
    assert os.listdir(ports) == []


async def test_a_normal_exit_removes_port_files(server: Any) -> None:
    # A descriptor nobody closes (os.dup'd, so Python's finalization does not close it
    # either): the shim closes it when the process exits, and its port file goes.
    code = ("import os, socket; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16); "
            "s.bind((0, 0)); os.dup(s.fileno()); s.close(); "
            "ports = os.listdir(os.environ['TSEMU_SOCKET'] + '.ports'); "
            "print(ports == [str(os.getpid())])")
    result = await run([sys.executable, "-c", code], shim_env(server.socket_path))
    assert lines(result.stdout) == ["True"], result.stderr
    assert os.listdir(ports_dir(server.socket_path)) == []


OVERFLOW = """
import errno, socket, sys
from tsemu.wire import Flag, encode_taskstats_get
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.setsockopt(270, 5, int(sys.argv[1]))  # NETLINK_NO_ENOBUFS, set before bind
s.bind((0, 0))
s.sendto(encode_taskstats_get(0x1F, register="0-1", seq=1, flags=Flag.REQUEST | Flag.ACK), (0, 0))
s.recv(4096)
print("registered", flush=True)
sys.stdin.readline()
s.setblocking(False)
got = []
while True:
    try:
        s.recv(65536)
        got.append("event")
    except BlockingIOError:
        break
    except OSError as exc:
        got.append(errno.errorcode[exc.errno])
print(" ".join(got))
"""


@pytest.mark.parametrize("no_enobufs", [0, 1])
async def test_netlink_no_enobufs_reaches_the_server(server: Any, no_enobufs: int) -> None:
    tasks = [server.tasks.spawn(comm=f"t{i}") for i in range(20)]
    async with running([sys.executable, "-c", OVERFLOW, str(no_enobufs)],
                       shim_env(server.socket_path)) as client:
        assert await client.line() == "registered"
        for task in tasks:
            await server.broadcast(server.tasks.exit_task(task.tid))
        await server.settle()
        (conn,) = server.clients.values()
        with trio.fail_after(5):  # until what tsemu kept has reached the client's socket
            while conn.outbox.delivered + conn.outbox.dropped < 1 + len(tasks):
                await trio.sleep(0.01)
        await client.send(b"go\n")
        got = (await client.line()).split()
    kept = conn.outbox.delivered - 1
    assert conn.outbox.budget == 8192 and 5 <= kept <= 6
    assert got.count("event") == kept
    assert got.count("ENOBUFS") == (0 if no_enobufs else 1)


SPAWN = """
import socket, struct, subprocess
request = struct.pack("=IHHII", 36, 0x10, 1, 1, 0) + bytes([3, 1, 0, 0]) \\
    + struct.pack("=HH", 14, 2) + b"TASKSTATS\\0" + b"\\0\\0"
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
s.bind((0, 0))
s.settimeout(5)
subprocess.run(["true"], check=True)  # vfork, then close_fds in the child
s.sendto(request, (0, 0))
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), len(s.recv(4096)))
"""


async def test_a_subprocess_leaves_the_parents_socket_alone(server: Any) -> None:
    result = await run([sys.executable, "-c", SPAWN], shim_env(server.socket_path))
    assert lines(result.stdout) == ["16 112"], result.stderr


OTHER_SOCKETS = """
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.send(b"unix"); print(b.recv(10).decode())
r = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE: the kernel's
r.bind((0, 0)); print("route", r.getsockname()[0] > 0)
print("generic", socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16).fileno() > 0)
with open("/proc/self/status") as f:  # read() of a file, through the shim's read()
    print("file", len(f.read(10)))
"""


async def test_other_sockets_and_files_are_left_alone(server: Any) -> None:
    result = await run([sys.executable, "-c", OTHER_SOCKETS], shim_env(server.socket_path))
    assert lines(result.stdout) == ["unix", "route True", "generic True", "file 10"], \
        result.stderr
    assert os.listdir(ports_dir(server.socket_path)) == []


# -- tsemu run -----------------------------------------------------------------------------


def test_run_command_returns_the_commands_status() -> None:
    assert run_command(["sh", "-c", "exit 7"]) == 7
    assert run_command(["sh", "-c", "kill -TERM $$"]) == 128 + 15
    assert run_command(["/nonexistent/tsemu-test-command"]) == 127
    assert run_command([]) == 2
    assert exit_status(-9) == 137 and exit_status(0) == 0


def test_run_command_passes_sigterm_on(tmp_path: Path) -> None:
    # The command asks for SIGTERM to be sent to `tsemu run` (this very process, whose
    # handler must pass it on) and reports that it got it.
    script = "trap 'exit 42' TERM; kill -TERM $PPID; while :; do sleep 0.05; done"
    assert run_command(["sh", "-c", script]) == 42


def test_run_command_preloads_the_shim_and_names_the_socket(tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    sock = tmp_path / "genl.sock"
    assert run_command(["sh", "-c", f'printf "%s|%s" "$LD_PRELOAD" "$TSEMU_SOCKET" > {out}'],
                       sock) == 0
    assert out.read_text() == f"{shim_library()}|{sock}"


async def test_run_command_runs_an_unmodified_client(server: Any, short_tmp: Path) -> None:
    out = short_tmp / "out.txt"
    argv = [sys.executable, str(CLIENTS / "pysocket.py"), "0"]
    status = await trio.to_thread.run_sync(
        lambda: run_command(["sh", "-c", f'"$0" "$@" > {out}', *argv], server.socket_path,
                            proc="host"))  # (a bare server keeps no /proc view)
    assert status == 1  # pid 0 does not exist: the client says so and fails
    assert out.read_text().splitlines() == ["family=TASKSTATS id=0x1f port=tgid", "error=ESRCH"]
