"""A client that sees the server's socket directory at another absolute path than the server
does (host and container, two containers, a bind mount, a symbolic link) gets its replies and
broadcasts; the server answers a sender only through its own ports directory, only when the
socket there is the sender's, and says once why it does not answer one.

Without Docker: a symbolic link, /proc/self/root and (as root) a bind mount in a private mount
namespace each give the same directory a second absolute path (the container tests are
tests/test_docker.py)."""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.harness import stop_process

ROOT = Path(__file__).parent.parent
TSEMU = [sys.executable, "-m", "tsemu"]
NOBODY = 65534
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18


def environment(socket_path: Path | str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TSEMU_", "LD_PRELOAD"))}
    env["TSEMU_SOCKET"] = str(socket_path)
    return env


class Served:
    """A `tsemu serve` process whose stderr is read as it goes."""

    def __init__(self, socket_path: Path, *extra: str) -> None:
        self.socket = socket_path
        self.proc = subprocess.Popen([*TSEMU, "serve", "--socket", str(socket_path),
                                      "--scenario", str(ROOT / "examples" / "burst.toml"),
                                      *extra], env=environment(socket_path),
                                     stderr=subprocess.PIPE, text=True, cwd="/")
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert line == f"tsemu: listening on {socket_path}\n", line + self.stop()

    def lines(self, wait: float = 0.5) -> list[str]:
        """What the server said on stderr within `wait` seconds of quiet."""
        assert self.proc.stderr is not None
        out = []
        fd = self.proc.stderr.fileno()
        os.set_blocking(fd, False)
        buffered = ""
        while select.select([fd], [], [], wait)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffered += chunk.decode()
        out.extend(buffered.splitlines())
        return out

    def stop(self) -> str:
        stop_process(self.proc)
        assert self.proc.stderr is not None
        try:
            os.set_blocking(self.proc.stderr.fileno(), True)
            rest = self.proc.stderr.read()
        finally:
            self.proc.stderr.close()
        return rest


@pytest.fixture
def served(short_tmp: Path) -> Iterator[Served]:
    (short_tmp / "real").mkdir()
    server = Served(short_tmp / "real" / "genl.sock")
    try:
        yield server
    finally:
        server.stop()


def run(argv: list[str], socket_path: Path | str, timeout: float = 20,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=environment(socket_path), capture_output=True, text=True,
                          timeout=timeout, cwd="/", **kwargs)  # type: ignore[call-overload]


def check_paths(served: Served, client_socket: str) -> None:
    """GET, a shim client, and a listener seeing a `ctl exit`, all through `client_socket`."""
    got = run([*TSEMU, "get", "--pid", "1"], client_socket)
    assert got.returncode == 0 and "TASKSTATS pid 1" in got.stdout, got.stderr
    shim = ROOT / "tsemu" / "libtsemu-shim.so"
    genl = shutil.which("genl")
    if genl is not None and shim.exists():
        env = environment(client_socket) | {"LD_PRELOAD": str(shim)}
        out = subprocess.run([genl, "ctrl", "get", "name", "TASKSTATS"], env=env,
                             capture_output=True, text=True, timeout=20, cwd="/")
        assert out.returncode == 0 and "ID: 0x1f" in out.stdout, out.stderr
    listener = subprocess.Popen([*TSEMU, "listen", "--cpus", "0-1", "--count", "1", "--json"],
                                env=environment(client_socket), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        assert listener.stderr is not None
        assert "listening for exits" in listener.stderr.readline()
        spawned = run([*TSEMU, "ctl", "spawn", "--comm", "victim"], served.socket)
        assert spawned.returncode == 0, spawned.stderr
        pid = spawned.stdout.split()[0]
        assert run([*TSEMU, "ctl", "exit", pid], served.socket).returncode == 0
        out, _ = listener.communicate(timeout=20)
        assert listener.returncode == 0 and '"ac_comm": "victim"' in out, out
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()


def test_a_client_through_a_symbolic_link_to_the_directory(served: Served) -> None:
    link = served.socket.parent.parent / "link"
    link.symlink_to(served.socket.parent)
    check_paths(served, str(link / "genl.sock"))
    assert not [line for line in served.lines(0.1) if "not answering" in line]


def test_a_client_through_proc_self_root(served: Served) -> None:
    check_paths(served, f"/proc/self/root{served.socket}")


@pytest.mark.skipif(os.geteuid() != 0, reason="a bind mount in a private mount namespace needs "
                    "root")
def test_a_client_through_a_bind_mount_at_another_path(served: Served) -> None:
    """The container case without a container: the directory mounted at another path, in a
    mount namespace of the client's own (the server cannot see that path at all)."""
    other = served.socket.parent.parent / "other"
    other.mkdir()
    code = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"assert libc.unshare({CLONE_NEWNS}) == 0\n"
        f"assert libc.mount(b'none', b'/', None, {MS_REC | MS_PRIVATE}, None) == 0\n"
        f"assert libc.mount(sys.argv[1].encode(), sys.argv[2].encode(), None, {MS_BIND}, "
        "None) == 0\n"
        "os.execvp(sys.argv[3], sys.argv[3:])\n")
    # pytest itself, through the bind mount: GET, the shim, a listener
    script = other.parent / "client.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.test_any_path import Served, check_paths\n"
        "served = Served.__new__(Served)\n"
        "from pathlib import Path\n"
        "served.socket = Path(sys.argv[1])\n"
        "check_paths(served, sys.argv[2])\n"
        "print('ok')\n")
    result = subprocess.run(
        [sys.executable, "-c", code, str(served.socket.parent), str(other), sys.executable,
         str(script), str(served.socket), str(other / "genl.sock")],
        env=environment(served.socket), capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0 and result.stdout == "ok\n", result.stdout + result.stderr
    assert not list(other.iterdir())  # the mount was the client's alone


def test_a_sender_outside_the_ports_directory_is_told_once(served: Served) -> None:
    """A client of another directory (its TSEMU_SOCKET names a link to the server's socket,
    so it binds beside the link): no answer, one line saying why, however often it asks."""
    elsewhere = served.socket.parent.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "genl.sock").symlink_to(served.socket)
    (elsewhere / "genl.sock.ports").mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(elsewhere / "genl.sock.ports" / "4242"))
        request = bytes.fromhex("1c000000100001000100000000000000030100000800020010000000"
                                )  # GETFAMILY, id 0x10
        for _ in range(3):
            sock.sendto(request, str(served.socket))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)
    finally:
        sock.close()
    said = [line for line in served.lines() if "not answering" in line]
    assert len(said) == 1, said
    assert f"{elsewhere}/genl.sock.ports/4242" in said[0]
    assert "outside this server's ports directory" in said[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user in another mount "
                    "namespace needs root")
def test_another_user_binding_the_same_name_elsewhere_is_not_the_client(
        served: Served, short_tmp: Path) -> None:
    """Uid 65534, in a mount namespace of its own, binds a socket under the very path a client
    (root) bound in the server's ports directory, and sends as it: the server's socket of that
    name is the client's, with the same address string, but not the sender's; no answer
    reaches the client, and the server says why."""
    ports = Path(f"{served.socket}.ports")
    victim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    victim.bind(str(ports / "31337"))
    os.chmod(short_tmp, 0o755)  # (the attacker must reach the server's socket)
    decoy = short_tmp / "decoy"
    decoy.mkdir()
    os.chown(decoy, NOBODY, NOBODY)
    request = bytes.fromhex("1c000000100001000100000000000000030100000800020010000000")
    try:
        pid = os.fork()
        if pid == 0:  # the attacker: never returns
            status = 1
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                assert libc.unshare(CLONE_NEWNS) == 0
                assert libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
                assert libc.mount(str(decoy).encode(), str(ports).encode(), None, MS_BIND,
                                  None) == 0
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                attacker = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                attacker.bind(str(ports / "31337"))  # in the decoy: the same string
                attacker.sendto(request, str(served.socket))
                status = 0
            except BaseException:  # noqa: BLE001 - said on stderr, the status tells
                import traceback

                traceback.print_exc()
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        said = [line for line in served.lines() if "not answering" in line]
        victim.settimeout(0.3)
        with pytest.raises(TimeoutError):
            victim.recv(4096)
        assert len(said) == 1 and "uid 65534" in said[0] and "belongs to uid 0" in said[0], said
        # The client itself is answered.
        os.chmod(victim.getsockname(), 0o666)
        victim.sendto(request, str(served.socket))
        assert victim.recv(4096)  # an answer (to a request as the kernel reads it)
    finally:
        victim.close()
        os.unlink(ports / "31337")


def test_a_client_that_deregisters_on_its_way_out_is_not_a_refusal(
        served: Served, tmp_path: Path) -> None:
    """getdelays sends its DEREGISTER and closes at once: the server reads it after the
    socket's file is gone, and must not take it for a client it cannot reach."""
    from tests.clients.harness import compile_client

    getdelays = compile_client(ROOT / "tests" / "clients" / "getdelays.c", tmp_path)
    env = environment(served.socket) | {"LD_PRELOAD": str(ROOT / "tsemu" / "libtsemu-shim.so")}
    for _ in range(3):
        listener = subprocess.Popen([str(getdelays), "-m", "0-1", "-n", "1"], env=env,
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout is not None
            assert listener.stdout.readline().startswith("family=")
            assert listener.stdout.readline() == "registered cpumask=0-1\n"
            pid = run([*TSEMU, "ctl", "spawn"], served.socket).stdout.split()[0]
            run([*TSEMU, "ctl", "exit", pid], served.socket)
            assert f"pid={pid} " in listener.communicate(timeout=20)[0]
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.communicate()
    assert not [line for line in served.lines() if "not answering" in line]


@pytest.mark.skipif(os.geteuid() != 0, reason="a server of another user needs root to start")
def test_a_server_of_another_user_reaches_the_clients_and_says_when_it_cannot(
        short_tmp: Path) -> None:
    """The container case `--user tsemu` with clients run as root: a client's socket file is
    0666 once bound (shim and tsemu.client), since connecting needs write permission on it;
    one that is not (bound by hand, 0700) is named once with the reason."""
    os.chmod(short_tmp, 0o755)
    directory = short_tmp / "run"
    directory.mkdir()
    os.chown(directory, NOBODY, NOBODY)
    socket_path = directory / "genl.sock"
    proc = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                             "--clear-groups", *TSEMU, "serve", "--admin", "all", "--socket",
                             str(socket_path)], env=environment(socket_path),
                            stderr=subprocess.PIPE, text=True, cwd="/")
    served = Served.__new__(Served)
    served.socket, served.proc = socket_path, proc
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line == f"tsemu: listening on {socket_path}\n", line + served.stop()
        got = run([*TSEMU, "get", "--pid", "1"], socket_path)
        assert got.returncode == 0 and "TASKSTATS pid 1" in got.stdout, got.stderr
        shim = ROOT / "tsemu" / "libtsemu-shim.so"
        probe = ("import os, socket, time\n"
                 "s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)\n"
                 "s.bind((0, 0))\n"
                 "name = os.path.join(os.environ['TSEMU_SOCKET'] + '.ports', str(os.getpid()))\n"
                 "print(oct(os.stat(name).st_mode & 0o777))\n")
        done = subprocess.run([sys.executable, "-c", probe], env=environment(socket_path)
                              | {"LD_PRELOAD": str(shim)}, capture_output=True, text=True,
                              timeout=30)
        assert done.stdout == "0o666\n", done.stdout + done.stderr
        closed = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with_mode = Path(f"{socket_path}.ports") / "777001"
            closed.bind(str(with_mode))
            os.chmod(with_mode, 0o700)
            request = bytes.fromhex("1c000000100001000100000000000000030100000800020010000000")
            closed.sendto(request, str(socket_path))
            closed.sendto(request, str(socket_path))
        finally:
            closed.close()
        said = [line for line in served.lines() if "not answering" in line]
        assert len(said) == 1 and "Permission denied" in said[0] and "mode 700" in said[0], said
    finally:
        served.stop()
