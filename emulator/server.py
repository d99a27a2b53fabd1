"""The trio shell around the kernel model: sockets in, datagrams through `Kernel`, bytes out.

What lives here is only I/O and its bookkeeping: binding the server socket, reading each
datagram with the credentials and descriptors the kernel attached (SO_PASSCRED, SCM_RIGHTS),
keeping one connection and one `Outbox` per client port, and running the per-CPU broadcast
tasks. What a datagram earns is decided by `kernel.Kernel`; what an exit produces by the
process table.

Theory of operation:
- one task reads the server socket; each datagram is answered synchronously by the kernel
  model, and its replies are offered to the sender's outbox (never awaited), so a slow
  client cannot stall anyone else;
- each client has one drain task that moves its outbox into a socket connected to the
  client's address (connected, so that a full client queue makes the send wait instead of
  failing, and a vanished client shows as ECONNREFUSED);
- each CPU has one broadcast task (`listeners.CpuListeners.run`): an exit is built once and
  offered to every listener of its CPU.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tsemu.wire.control import ControlOp, ControlOption, decode_control, is_control

from .addressing import is_stale, port_of, ports_dir
from .families import FamilyTable
from .kernel import CgroupRef, Kernel, Listen, Send, Sender, TaskSource
from .listeners import ListenerTable
from .outbox import Outbox
from .permissions import AdminPolicy, Credentials
from .profiles import DEFAULT_PROFILE, KernelProfile

_RECV_SIZE = 1 << 16
_MAX_FDS = 16
_ANC_SIZE = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * _MAX_FDS)


@dataclass
class ServerStats:
    datagrams: int = 0
    control: int = 0
    unaddressed: int = 0
    clients_gone: int = 0
    internal_errors: int = 0


@dataclass
class ClientConn:
    """What the server keeps for one client port."""

    port: int
    sock: trio.socket.SocketType
    outbox: Outbox
    cap_ack: bool = False
    ext_ack: bool = False
    #: (inode, ctime) of the client's socket file: a new socket on the same port id (the
    #: kernel reuses a process's tgid and freed negative ids) is a new client
    identity: tuple[int, int] = (-1, -1)
    admin_cache: dict[tuple[int, int], bool] = field(default_factory=dict)


class Server:
    """A running emulated kernel. Create, then `await serve()` (or use `running_server`)."""

    def __init__(self, socket_path: Path, tasks: TaskSource, *,
                 profile: KernelProfile = DEFAULT_PROFILE, nr_cpus: int = 2,
                 families: FamilyTable | None = None,
                 admin: AdminPolicy | None = None,
                 cgroup_roots: tuple[str, ...] = ("/sys/fs/cgroup",)) -> None:
        self.socket_path = Path(socket_path)
        self.tasks = tasks
        self.profile = profile
        self.kernel = Kernel(tasks, profile=profile, nr_cpus=nr_cpus, families=families,
                             cgroup_roots=cgroup_roots)
        self.listeners = ListenerTable(nr_cpus)
        self.admin = admin or AdminPolicy()
        self.clients: dict[int, ClientConn] = {}
        self.stats = ServerStats()
        self._nursery: trio.Nursery | None = None
        self._sock: trio.socket.SocketType | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                    announce: bool = False) -> None:
        """Bind, then serve until cancelled; the socket file is removed on the way out."""
        self._sock = await self._bind()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.listeners.run, self._build_event, self._deliver)
                nursery.start_soon(self._receive_loop)
                if announce:
                    print(f"tsemu: listening on {self.socket_path}", file=sys.stderr,
                          flush=True)
                task_status.started(self)
        finally:
            self._sock.close()
            for client in self.clients.values():
                client.sock.close()
            self._cleanup_files()

    async def _bind(self) -> trio.socket.SocketType:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
            if not is_stale(path):
                raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")
            path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        await sock.bind(str(path))
        os.chmod(path, 0o666)
        ports = ports_dir(path)
        ports.mkdir(exist_ok=True)
        os.chmod(ports, 0o1777)
        return sock

    def _cleanup_files(self) -> None:
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        try:
            ports_dir(self.socket_path).rmdir()
        except OSError:
            pass  # clients still have sockets there

    # -- datagrams in ----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self._sock is not None
        while True:
            data, ancdata, _flags, address = await self._sock.recvmsg(_RECV_SIZE, _ANC_SIZE)
            creds, fds = _ancillary(ancdata)
            try:
                await self._datagram(data, creds, fds, address)
            except Exception as exc:  # one bad datagram must not take the server down
                self.stats.internal_errors += 1
                print(f"tsemu: internal error on a datagram from {address!r}: {exc!r}",
                      file=sys.stderr, flush=True)
            finally:
                for fd in fds:
                    os.close(fd)

    async def _datagram(self, data: bytes, creds: Credentials, fds: list[int],
                        address: Any) -> None:
        port = port_of(address) if isinstance(address, (str, bytes)) else None
        if port is None:
            self.stats.unaddressed += 1
            return
        client = await self._client(port, address)
        if client is None:
            return
        if is_control(data):
            self.stats.control += 1
            self._control(client, data)
            return
        self.stats.datagrams += 1
        sender = Sender(port, admin=self._is_admin(client, creds), cap_ack=client.cap_ack,
                        ext_ack=client.ext_ack, cgroup_refs=[_cgroup_ref(fd) for fd in fds])
        for action in self.kernel.handle(data, sender):
            if isinstance(action, Send):
                client.outbox.offer(action.data)
            elif isinstance(action, Listen):
                await self.listeners.apply(port, action.cpus, action.register)

    def _is_admin(self, client: ClientConn, creds: Credentials) -> bool:
        key = (creds.pid, creds.uid)
        cached = client.admin_cache.get(key)
        if cached is None:
            cached = client.admin_cache[key] = self.admin.is_admin(creds)
        return cached

    def _control(self, client: ClientConn, data: bytes) -> None:
        try:
            control = decode_control(data)
        except Exception:
            return
        if control.op != ControlOp.SETOPT:
            return
        if control.option == ControlOption.RCVBUF and control.value > 0:
            client.outbox.budget = control.value
        elif control.option == ControlOption.CAP_ACK:
            client.cap_ack = bool(control.value)
        elif control.option == ControlOption.EXT_ACK:
            client.ext_ack = bool(control.value)
        elif control.option == ControlOption.NO_ENOBUFS:
            client.outbox.no_enobufs = bool(control.value)

    async def _client(self, port: int, address: Any) -> ClientConn | None:
        identity = _file_identity(address)
        client = self.clients.get(port)
        if client is not None and not client.outbox.gone:
            if client.identity == identity:
                return client
            client.outbox.close()  # the port's old socket is gone: forget what it had
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            await sock.connect(address)
        except OSError:
            sock.close()
            return None
        outbox = Outbox(sock, self.profile.rmem_default,
                        on_gone=lambda: self._client_gone(port, sock))
        client = ClientConn(port, sock, outbox, identity=identity)
        self.clients[port] = client
        assert self._nursery is not None
        self._nursery.start_soon(outbox.drain)
        return client

    def _client_gone(self, port: int, sock: trio.socket.SocketType) -> None:
        client = self.clients.get(port)
        if client is not None and client.sock is sock:
            del self.clients[port]
        sock.close()
        self.stats.clients_gone += 1

    # -- exits -----------------------------------------------------------------------------

    def _build_event(self, seq: int, report: Any) -> bytes:
        return self.kernel.exit_event(seq, report.tid, report.pid_values, report.tgid,
                                      report.tgid_values)

    def _deliver(self, port: int, data: bytes) -> bool:
        client = self.clients.get(port)
        if client is None:
            return False
        return client.outbox.offer(data)

    async def broadcast(self, report: Any) -> None:
        """Hand one exit (a process table's exit report) to its CPU's broadcast task."""
        await self.listeners.cpus[report.cpu].submit(report)

    async def settle(self) -> None:
        """Wait until every submitted exit has been offered to its listeners."""
        await self.listeners.wait_idle()


def _ancillary(ancdata: list[tuple[int, int, bytes]]) -> tuple[Credentials, list[int]]:
    creds = Credentials(0, -1, -1)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
            pid, uid, gid = array.array("i", payload[:12])
            creds = Credentials(pid, uid, gid)
        elif kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:usable]))
    return creds, fds


def _file_identity(address: Any) -> tuple[int, int]:
    """(inode, ctime) of a client's socket file; inode numbers alone are reused at once."""
    try:
        st = os.stat(address)
    except (OSError, TypeError, ValueError):
        return (-1, -1)
    return (st.st_ino, st.st_ctime_ns)


def _cgroup_ref(fd: int) -> CgroupRef | None:
    try:
        st = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return CgroupRef(path, stat.S_ISDIR(st.st_mode))


@asynccontextmanager
async def running_server(socket_path: Path, tasks: TaskSource,
                         **options: Any) -> AsyncIterator[Server]:
    """A server serving in the background for the duration of the block (tests, the
    pytest plugin): cancelled and its socket removed on exit."""
    server = Server(socket_path, tasks, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
