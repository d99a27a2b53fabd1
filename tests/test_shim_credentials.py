"""Only the server is heard: another user cannot make a client's receive fail or feed it replies.

A client's emulated netlink socket is a Unix socket bound in `SOCKET.ports/`, a directory every
user may enter and write; whoever may write the client's port file (its mode comes from the
client's umask) can send it datagrams. On the kernel only the kernel, and a process with
CAP_NET_ADMIN unicasting to the port, can. So the shim (and `tsemu.client`) turn on SO_PASSCRED
and drop every datagram whose kernel-attached uid is not the server socket file's owner:

- a forged ENOBUFS notice and a forged reply sent by uid 65534 are dropped unseen (counted, and
  said with TSEMU_DEBUG), through the shim and through `tsemu.client.Client`;
- an unprivileged process cannot unicast to another port through the shim either: EPERM, as the
  kernel answers (NETLINK_GENERIC lacks NL_CFG_F_NONROOT_SEND; checked against the host);
- the credentials never reach the application (unless it asks for SO_PASSCRED, and then they
  are the kernel's: tests/clients/oddcalls.expected, `recvmsg_passcred*`).

A legitimate ENOBUFS still arrives (test_shim.py: test_netlink_no_enobufs_reaches_the_server;
test_shim_clients.py, the getdelays overrun).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.client import Client
from tsemu.emulator.shell.addressing import ports_dir
from tsemu.wire.control import ENOBUFS_NOTICE

from .clients.harness import (
    CLIENTS,
    compile_client,
    host_env,
    lines,
    require_host_taskstats,
    run,
    running,
    shim_env,
)
from .test_security import NOBODY, as_nobody

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

#: GETFAMILY "TASKSTATS", sequence 7 (the genuine answer: 112 bytes of type nlctrl, 0x10).
REQUEST = (struct.pack("=IHHII", 36, 0x10, 1, 7, 0) + bytes([3, 1, 0, 0])
           + struct.pack("=HH", 14, 2) + b"TASKSTATS\0" + b"\0\0")
#: What a forger would send instead: an NLMSG_ERROR (ENOENT) for the same sequence.
FORGED_REPLY = (struct.pack("=IHHII", 36, 2, 0, 7, 0) + struct.pack("=i", -2)
                + struct.pack("=IHHII", 16, 0x10, 1, 7, 0))

#: Sends each datagram given (hex) to the socket file named first; prints how many went.
FORGER = """
import socket, sys
path, datagrams = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sent = 0
for datagram in datagrams:
    s.sendto(bytes.fromhex(datagram), path)
    sent += 1
print("sent", sent)
"""

#: A client through the shim: binds and says its port file; after a line (the forgeries are
#: sent meanwhile) reads without waiting into a buffer of its own (the forgeries are read and
#: dropped, and leave nothing in it); after another line (forgeries again) asks for TASKSTATS
#: and reports what it receives: a peek at the head (less than a control datagram: the shim
#: peeks itself, and drops them there), the datagram, and what is left.
CLIENT = f"""
import errno, os, socket, struct, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
s.bind((0, 0))
print(os.environ["TSEMU_SOCKET"] + ".ports/" + str(s.getsockname()[0]), flush=True)
sys.stdin.readline()
buffer = bytearray(b"\\xaa" * 4096)
try:
    print("read", s.recv_into(buffer, 4096, socket.MSG_DONTWAIT))
except BlockingIOError:
    print("nothing to read", "clean" if {FORGED_REPLY[:16]!r} not in buffer
          and b"tsEM" not in buffer else "forged bytes left behind", flush=True)
sys.stdin.readline()
s.sendto({REQUEST!r}, (0, 0))
s.settimeout(5)
try:
    head = s.recv(16, socket.MSG_PEEK)
    data = s.recv(65536)
    print("reply", len(data), *struct.unpack_from("=IHHI", head)[1:4:2])
except OSError as exc:
    print("error", errno.errorcode[exc.errno])
s.setblocking(False)
try:
    s.recv(65536)
    print("more")
except BlockingIOError:
    print("nothing more")
except OSError as exc:
    print("error", errno.errorcode[exc.errno])
"""


@pytest.fixture
def reachable(server: Any) -> Any:
    """The server, with its socket directory open to others (0755, as /run/tsemu would be)."""
    os.chmod(server.socket_path.parent, 0o755)
    return server


def forge(path: Path | str) -> str:
    """uid 65534 sends a forged ENOBUFS notice and a forged reply to the socket at `path`."""
    done = as_nobody(FORGER, str(path), ENOBUFS_NOTICE.hex(), FORGED_REPLY.hex())
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_a_forged_notice_and_reply_do_not_reach_a_client_of_the_shim(
        reachable: Any) -> None:
    # umask 0: the client's port file is writable by anyone, so the forgeries do arrive.
    # (Its stderr joins its stdout: the shim's TSEMU_DEBUG lines come in order.)
    argv = ["sh", "-c", 'exec 2>&1; umask 0; exec "$0" "$@"', sys.executable, "-c", CLIENT]
    async with running(argv, shim_env(reachable.socket_path, TSEMU_DEBUG="1")) as client:
        port_file = await client.line()
        assert os.stat(port_file).st_mode & 0o002
        assert await trio.to_thread.run_sync(forge, port_file) == "sent 2"
        await client.send(b"go\n")
        said = await client.until(lambda line: not line.startswith("tsemu-shim: "))
        assert said[-1] == "nothing to read clean"
        assert await trio.to_thread.run_sync(forge, port_file) == "sent 2"
        await client.send(b"go\n")
        rest = said[:-1] + await client.rest()
        assert await client.wait() == 0
    said = [line for line in rest if line.startswith("tsemu-shim: ")]
    assert [line for line in rest if line not in said] == ["reply 112 16 7", "nothing more"]
    assert len(said) == 2, said
    assert said[0].startswith(f"tsemu-shim: dropped a datagram from uid {NOBODY} pid ")
    assert said[1] == "tsemu-shim: 4 datagrams dropped: not from the tsemu server's user"


async def test_a_forged_notice_and_reply_do_not_reach_a_tsemu_client(reachable: Any) -> None:
    async with await Client.connect(reachable.socket_path) as client:
        assert client.path is not None
        os.chmod(client.path, 0o777)  # as a umask of 0 would have left it
        assert await trio.to_thread.run_sync(forge, client.path) == "sent 2"
        assert await client.family_id() == 0x1F  # no ENOBUFS, no forged ENOENT
        assert client.dropped == 2


async def test_the_servers_own_notice_still_reaches_a_tsemu_client(reachable: Any) -> None:
    # The same bytes from the server (its user, its unnamed socket) are an overrun.
    async with await Client.connect(reachable.socket_path) as client:
        await client.family_id()
        (conn,) = reachable.clients.values()
        await conn.sock.send(ENOBUFS_NOTICE)
        with pytest.raises(OSError) as raised:
            await client.recv()
        assert raised.value.errno == errno.ENOBUFS
        assert client.dropped == 0


#: An unprivileged netlink client unicasting to another port: sendto and connect (EPERM from
#: the kernel for NETLINK_GENERIC), then the kernel itself (allowed).
UNICAST = """
import errno, os, socket, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
s.bind((0, 0))
def attempt(call, *args):
    try:
        call(*args)
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
port = int(sys.argv[1])
request = bytes.fromhex("1400000010000100010000000000000003010000")  # GETFAMILY, no name
ports = os.environ.get("TSEMU_SOCKET", "") + ".ports"
emulated = os.path.isdir(ports) and str(s.getsockname()[0]) in os.listdir(ports)
print(attempt(s.sendto, request, (port, 0)), attempt(s.sendto, request, (0, 1)),
      attempt(s.connect, (port, 0)), attempt(s.connect, (0, 0)),
      "emulated" if emulated else "kernel")
"""


def others_may_run(path: str) -> bool:
    """Whether a user with no rights of its own may run `path` (every directory on the way
    searchable by others, the file executable by others)."""
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & 0o001 for p in [real, *real.parents])


def python_for_nobody() -> str:
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and others_may_run(candidate):
            return candidate
    pytest.skip("no Python interpreter that uid 65534 may run")


def unicast_as_nobody(env: dict[str, str], port: int) -> list[str]:
    done = subprocess.run([python_for_nobody(), "-c", UNICAST, str(port)], env=env, user=NOBODY,
                          group=NOBODY, extra_groups=[], capture_output=True, text=True,
                          timeout=20, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


async def test_an_unprivileged_client_cannot_unicast_to_another_port(reachable: Any) -> None:
    async with await Client.connect(reachable.socket_path) as victim:
        got = await trio.to_thread.run_sync(unicast_as_nobody,
                                            shim_env(reachable.socket_path), victim.port)
    assert got == ["EPERM", "EPERM", "EPERM", "ok", "emulated"]
    assert sorted(os.listdir(ports_dir(reachable.socket_path))) == []


@pytest.mark.host
def test_the_kernel_refuses_an_unprivileged_unicast_too() -> None:
    require_host_taskstats()
    victim = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
    victim.bind((0, 0))
    try:
        assert unicast_as_nobody(host_env(), victim.getsockname()[0]) == \
            ["EPERM", "EPERM", "EPERM", "ok", "kernel"]
    finally:
        victim.close()


# -- in a user namespace ------------------------------------------------------------------


@pytest.fixture(scope="module")
def oddcalls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_client(CLIENTS / "oddcalls.c", tmp_path_factory.mktemp("oddcalls"))


def in_new_user_namespace(argv: list[str]) -> list[str]:
    """`argv` run in a user namespace of its own, without a uid map (root is unmapped there:
    the server's uid and the kernel's look like the overflow uid)."""
    unshare = shutil.which("unshare")
    if not unshare:
        pytest.skip("no unshare(1) (util-linux)")
    if subprocess.run([unshare, "--user", "true"], capture_output=True,
                      check=False).returncode:
        pytest.skip("user namespaces cannot be made here")
    return [unshare, "--user", *argv]


def overflow_ids() -> str:
    uid = Path("/proc/sys/kernel/overflowuid").read_text().strip()
    gid = Path("/proc/sys/kernel/overflowgid").read_text().strip()
    return f"creds=pid0,uid{uid},gid{gid}"


async def test_in_a_user_namespace_without_root_the_server_is_still_heard(
        server: Any, oddcalls: Path) -> None:
    # The server socket's owner and its datagrams' uid both show as the overflow uid; what
    # SO_PASSCRED gives is the kernel's credentials as that namespace sees them.
    argv = in_new_user_namespace([str(oddcalls), "recvmsg_passcred", "recvmsg_control_unused"])
    result = await run(argv, shim_env(server.socket_path))
    got = lines(result.stdout)
    assert got == ["recvmsg_control_unused: 112 controllen=0 flags=0x0 after=EAGAIN",
                   f"recvmsg_passcred: 112 {overflow_ids()} controllen=32 cmsgs=1 flags=0x0 "
                   "after=EAGAIN"], result.stderr


@pytest.mark.host
def test_in_a_user_namespace_without_root_the_kernel_says_the_same(oddcalls: Path) -> None:
    require_host_taskstats()
    argv = in_new_user_namespace([str(oddcalls), "recvmsg_passcred"])
    result = subprocess.run(argv, env=host_env(), capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.stdout.splitlines() == [
        f"recvmsg_passcred: 112 {overflow_ids()} controllen=32 cmsgs=1 flags=0x0 after=EAGAIN"]
