"""Another local user against a server run as root: each attack that once worked, made as
uid 65534, must fail; and clients that go are forgotten with everything they held."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.client import Client
from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.profiles import DEFAULT_PROFILE
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.shell.control import ControlClient, ControlError, control_path
from tsemu.emulator.shell.server import Server, running_server
from tsemu.emulator.shell.sockdir import DirectoryRefused
from tsemu.wire import encode_taskstats_get
from tsemu.wire.control import ControlOp, ControlOption, encode_control

NOBODY = 65534
FAMILY = 0x1F

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def as_nobody(code: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run Python `code` as uid/gid 65534 (in a forked child: the interpreter's own files may
    be out of that user's reach); its stdout is the result, its exit status 1 on an
    exception (stderr says which)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 0
        try:
            os.close(out_r)
            os.close(err_r)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = os.fdopen(1, "w")
            sys.stderr = os.fdopen(2, "w")
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sys.argv = ["-c", *args]
            exec(compile(textwrap.dedent(code), "<as_nobody>", "exec"), {"__name__": "__main__"})
        except BaseException:  # noqa: BLE001 - reported through stderr and the status
            import traceback

            traceback.print_exc()
            status = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out, os.fdopen(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess([code], os.waitstatus_to_exitcode(status), stdout, stderr)


@contextlib.contextmanager
def refused(pattern: str) -> Iterator[None]:
    """The block fails with a DirectoryRefused matching `pattern` (trio may wrap it)."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001
        leaves = [exc]
        while any(isinstance(e, BaseExceptionGroup) for e in leaves):
            leaves = [leaf for e in leaves for leaf in (
                e.exceptions if isinstance(e, BaseExceptionGroup) else (e,))]
        assert any(isinstance(e, DirectoryRefused) and re.search(pattern, str(e))
                   for e in leaves), leaves
    else:
        pytest.fail(f"not refused ({pattern})")


@pytest.fixture
def public_tmp(short_tmp: Path) -> Path:
    """A root-owned directory others may enter (0755), as /run/tsemu would be."""
    os.chmod(short_tmp, 0o755)
    return short_tmp


def table() -> ProcessTable:
    return ProcessTable(VirtualClock(), DEFAULT_PROFILE, 2)


# --- the socket's directory --------------------------------------------------------------


async def test_a_directory_another_user_made_first_is_refused(public_tmp: Path) -> None:
    world = public_tmp / "tmp"  # as /tmp: anyone may make a directory there
    world.mkdir()
    os.chmod(world, 0o1777)
    planted = world / "tsemu-0"
    assert as_nobody(f"import os; os.mkdir({str(planted)!r}, 0o777)").returncode == 0
    with refused(r"belongs to uid 65534"):
        async with running_server(planted / "genl.sock", table()):
            pass


async def test_a_directory_others_can_write_is_refused_unless_shared(public_tmp: Path) -> None:
    shared = public_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with refused(r"can be written by other users"):
        async with running_server(shared / "genl.sock", table()):
            pass
    async with running_server(shared / "genl.sock", table(), shared_dir=True) as server:
        assert server.socket_path.exists()


async def test_a_link_planted_as_the_ports_directory_is_neither_used_nor_followed(
        public_tmp: Path) -> None:
    shared = public_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    victim = public_tmp / "victim"
    victim.mkdir(mode=0o700)
    planted = shared / "genl.sock.ports"
    result = as_nobody(f"import os; os.symlink({str(victim)!r}, {str(planted)!r})")
    assert result.returncode == 0, result.stderr
    with refused("not a directory of the server's"):
        async with running_server(shared / "genl.sock", table(), shared_dir=True):
            pass
    assert stat.S_IMODE(victim.stat().st_mode) == 0o700, "chmod went through the link"


async def test_another_users_socket_where_the_control_socket_goes_is_refused(
        public_tmp: Path) -> None:
    from tsemu.emulator.scenario import parse_scenario
    from tsemu.emulator.shell.runner import Emulator

    shared = public_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    planted = control_path(shared / "genl.sock")
    code = f"""
        import socket, time
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind({str(planted)!r})
        """
    assert as_nobody(code).returncode == 0
    emulator = Emulator(parse_scenario(""), shared / "genl.sock", shared_dir=True)
    with refused("belongs to uid 65534"):
        async with trio.open_nursery() as nursery:
            await nursery.start(emulator.run)
    with pytest.raises(ControlError, match=r"another user could have put genl.sock.ctl there"):
        ControlClient(shared / "genl.sock")


def test_the_control_socket_is_the_servers_users_alone(public_tmp: Path) -> None:
    from tsemu.emulator.scenario import parse_scenario
    from tsemu.emulator.shell.runner import Emulator

    async def main() -> None:
        emulator = Emulator(parse_scenario(""), public_tmp / "genl.sock")
        async with trio.open_nursery() as nursery:
            await nursery.start(emulator.run)
            mode = stat.S_IMODE(os.lstat(control_path(emulator.socket_path)).st_mode)
            assert mode == 0o600
            code = f"""
                import socket
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect({str(control_path(emulator.socket_path))!r})
                    print("connected")
                except PermissionError:
                    print("refused")
                """
            result = await trio.to_thread.run_sync(as_nobody, code)
            assert result.stdout.strip() == "refused", result
            nursery.cancel_scope.cancel()

    trio.run(main)


# --- taking another client's port id ---------------------------------------------------------


async def events_of(client: Client, seconds: float = 0.5) -> list[Any]:
    got = []
    with trio.move_on_after(seconds):
        while True:
            got.append(await client.next_event())
    return got


async def test_a_socket_bound_elsewhere_cannot_speak_for_a_port(public_tmp: Path) -> None:
    async with running_server(public_tmp / "genl.sock", table()) as server:
        first = await Client.connect(server.socket_path)  # (the process's tgid)
        async with first, await Client.connect(server.socket_path) as victim:
            signed = victim.port - 2**32 if victim.port >= 2**31 else victim.port
            assert signed < 0, "a second socket of a process gets a negative port id"
            await victim.register("0")
            elsewhere = public_tmp / "elsewhere"
            elsewhere.mkdir()
            os.chmod(elsewhere, 0o1777)
            deregister = encode_taskstats_get(FAMILY, deregister="0-1", seq=7)
            code = f"""
                import socket, sys
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.bind(sys.argv[1])
                s.settimeout(0.5)
                s.sendto(bytes.fromhex(sys.argv[2]), {str(server.socket_path)!r})
                try:
                    print(s.recv(4096).hex())
                except TimeoutError:
                    print("nothing")
                """
            ports = server.socket_path.with_name("genl.sock.ports")
            for path in (elsewhere / str(signed),  # the victim's name, in another directory
                         ports / str(signed + 2**32)):  # its unsigned spelling, in ports/
                result = await trio.to_thread.run_sync(
                    as_nobody, code, str(path), deregister.hex())
                assert result.stdout.strip() == "nothing", result
            assert server.listeners.listeners() == {0: [victim.port]}
            task = server.tasks.spawn(comm="job", cpu=0)
            await server.broadcast(server.tasks.exit_task(task.tid))
            await server.settle()
            (event,) = await events_of(victim)
            assert event.records[0].id == task.tid
        assert server.client_table.refused >= 2


async def test_a_link_in_the_ports_directory_sends_nothing_anywhere(public_tmp: Path) -> None:
    async with running_server(public_tmp / "genl.sock", table()) as server:
        secret = public_tmp / "secret.sock"
        target = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        target.bind(str(secret))
        target.setblocking(False)
        link = server.socket_path.with_name("genl.sock.ports") / "777"
        elsewhere = public_tmp / "elsewhere"
        elsewhere.mkdir()
        os.chmod(elsewhere, 0o1777)
        code = f"""
            import os, socket
            os.symlink({str(secret)!r}, {str(link)!r})
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind({str(elsewhere / "777")!r})
            s.sendto(bytes.fromhex({encode_taskstats_get(FAMILY, pid=1).hex()!r}),
                     {str(server.socket_path)!r})
            """
        assert (await trio.to_thread.run_sync(as_nobody, code)).returncode == 0
        await trio.sleep(0.3)
        with pytest.raises(BlockingIOError):
            target.recv(4096)
        target.close()


# --- privilege and budgets -------------------------------------------------------------------


def test_a_process_that_drops_cap_net_admin_is_refused_from_its_next_request(
        public_tmp: Path) -> None:
    """The kernel judges CAP_NET_ADMIN per request: dropping it mid-session matters."""
    code = f"""
        import ctypes, os, trio
        from tsemu.client import Client, NetlinkError

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [("e", ctypes.c_uint32), ("p", ctypes.c_uint32), ("i", ctypes.c_uint32)]

        def drop_net_admin():
            libc = ctypes.CDLL(None, use_errno=True)
            header, data = Header(0x20080522, 0), (Data * 2)()
            assert libc.capget(ctypes.byref(header), data) == 0
            data[0].e &= ~(1 << 12)
            assert libc.capset(ctypes.byref(header), data) == 0

        async def main():
            async with await Client.connect({str(public_tmp / "genl.sock")!r}) as c:
                await c.get_pid(1)
                print("before: answered")
                drop_net_admin()
                try:
                    await c.get_pid(1)
                    print("after: answered")
                except NetlinkError as exc:
                    print(f"after: errno {{exc.errno}}")
        trio.run(main)
        """

    async def main() -> None:
        tasks = table()
        tasks.spawn(pid=1, comm="init")
        async with running_server(public_tmp / "genl.sock", tasks):
            result = await trio.to_thread.run_sync(
                lambda: subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                                       capture_output=True, text=True, timeout=30))
            assert result.stdout.split("\n")[:2] == ["before: answered", "after: errno 1"], \
                result

    trio.run(main)


async def test_an_unprivileged_budget_is_bounded_by_rmem_max(public_tmp: Path) -> None:
    async with running_server(public_tmp / "genl.sock", table()) as server:
        ports = server.socket_path.with_name("genl.sock.ports")
        request = encode_control(ControlOp.SETOPT, ControlOption.RCVBUF, 2**62)
        code = f"""
            import os, socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind({str(ports / "4321")!r})
            s.sendto(bytes.fromhex({request.hex()!r}), {str(server.socket_path)!r})
            s.sendto(bytes.fromhex({encode_taskstats_get(FAMILY, pid=1).hex()!r}),
                     {str(server.socket_path)!r})
            s.settimeout(5)
            s.recv(4096)
            """
        assert (await trio.to_thread.run_sync(as_nobody, code)).returncode == 0
        assert server.clients[4321].outbox.budget == 2 * DEFAULT_PROFILE.rmem_max


# --- clients that go ---------------------------------------------------------------------------


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def wait_until(condition: Any, seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.02)


async def test_closed_clients_are_forgotten_with_their_descriptors(server: Server) -> None:
    task = server.tasks.spawn(comm="target")
    async with await Client.connect(server.socket_path) as warm:
        await warm.get_pid(task.tid)
    await wait_until(lambda: not server.clients)
    before = open_descriptors()
    for _ in range(300):
        async with await Client.connect(server.socket_path) as client:
            await client.get_pid(task.tid)
    await wait_until(lambda: not server.clients)
    assert open_descriptors() <= before + 2
    assert server.stats.clients_gone >= 300


async def test_a_killed_clients_socket_is_found_gone_and_its_registration_dropped(
        server: Server) -> None:
    code = f"""
        import os, signal, trio
        from tsemu.client import Client
        async def main():
            c = await Client.connect({str(server.socket_path)!r})
            await c.register("0-1")
            print(c.port, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        trio.run(main)
        """
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                               capture_output=True, text=True, timeout=30))
    port = int(result.stdout)
    assert (server.socket_path.with_name("genl.sock.ports") / str(port)).exists(), \
        "a killed process leaves its file"
    await wait_until(lambda: port not in server.clients and not server.listeners.listeners())


async def test_the_ports_directory_is_made_again_when_it_goes(server: Server) -> None:
    import shutil

    task = server.tasks.spawn(comm="target")
    ports = server.socket_path.with_name("genl.sock.ports")
    async with await Client.connect(server.socket_path) as before:
        await before.get_pid(task.tid)
        shutil.rmtree(ports)
        await wait_until(lambda: ports.is_dir() and not server.clients)
    assert stat.S_IMODE(ports.stat().st_mode) == 0o1777
    async with await Client.connect(server.socket_path) as after:
        assert (await after.get_pid(task.tid)).id == task.tid


async def test_a_datagram_longer_than_64_kib_is_answered(server: Server) -> None:
    """Netlink takes a message up to the sender's send buffer; attributes of an unknown type
    are skipped (the host kernel answers this one too: test_differential)."""
    task = server.tasks.spawn(comm="target")
    filler = b"".join(struct.pack("<HH", 60004, 99) + bytes(60000) for _ in range(3))
    request = encode_taskstats_get(FAMILY, pid=task.tid, seq=3)
    body = request[16:] + filler
    big = struct.pack("<IHHII", 16 + len(body), FAMILY, 1, 3, 0) + body
    assert len(big) > 180_000
    async with await Client.connect(server.socket_path) as client:
        raw = client.sock
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        await client.send(big)
        with trio.fail_after(5):
            reply = await client.recv()
    assert struct.unpack_from("<HH", reply, 4)[0] == FAMILY
    assert server.stats.too_long == 0


_unused = ctypes  # (ctypes is used by the snippets run in children)


def test_a_family_notice_is_answered_only_by_the_server_user(public_tmp: Path) -> None:
    """A family channel's name is in the ports directory, where others may reach it: a SEEN
    forged by another user is never taken for the server's answer; the server's user's is."""
    from tsemu.family import FamilyChannel

    server = public_tmp / "genl.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listening.bind(str(server))  # owned by root: the server's user
    (public_tmp / "genl.sock.ports").mkdir(mode=0o1777)
    os.chmod(public_tmp / "genl.sock.ports", 0o1777)
    channel = FamilyChannel(server)
    try:
        os.chmod(channel.path, 0o666)  # as reachable as a port file can be
        seen = encode_control(ControlOp.SEEN, 0, 4242)
        forged = as_nobody("""
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(bytes.fromhex(sys.argv[1]), sys.argv[2])
            print("sent")
            """, seen.hex(), str(channel.path))
        assert forged.stdout.strip() == "sent", forged.stderr
        assert not channel.tell(ControlOp.EXITED, 4242, timeout=0.3)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ours:
            ours.sendto(seen, str(channel.path))
        assert channel.tell(ControlOp.EXITED, 4242, timeout=2)
    finally:
        channel.close()
        listening.close()
