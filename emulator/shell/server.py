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

The receive loop reads the server socket directly: after a wait through trio, it takes one
datagram at a time with a non-blocking `recvmsg`, and after each a poll with no timeout of the
server socket and the ports watch tells it whether another datagram waits (then no trip
through the scheduler before it; `trio.lowlevel.checkpoint` every `_BATCH` datagrams) and
whether client socket files changed. When none waits, it busy-polls a few microseconds for the
next one before sleeping in trio (`busypoll.BusyPoll`: a client asking in a loop is answered
without a trip through the scheduler per request). A datagram from a known client whose
socket file is known unchanged is answered without an await (`_serve`; its replies leave in
`Outbox.offer`); anything else (a new client, descriptors, a REGISTER) takes the awaiting way.

Who is a client: a port id, and the socket file behind it. The kernel hands a port id to a new
socket once the old one is closed (a process's tgid to its next socket, freed negative ids), so
a datagram from a known port may come from a new socket, which must get its own connection
and must not inherit the old one's queue or options. The file's (inode, ctime) tells them apart;
instead of a stat per datagram, the server watches the ports directory (inotify, `PortWatch`):
a client file whose identity was checked is trusted until an event names it (created, deleted,
renamed, attributes changed). The events of a bind are queued before the bind returns, so
before the new socket can send anything; the server reads them after receiving a datagram and
before answering it, which is as early as the former per-datagram stat. (One difference: a
hard link made to a client's file from another directory changes its ctime without an event
here; the per-datagram stat took that for a new socket, the watch does not. Neither the shim
nor `tsemu.client` does that; a bind, close, unlink, rename, chmod or chown of the file is
seen, and the ports directory moving or going away ends the watch: stat from then on.)
Addresses outside the ports directory, or with inotify unavailable, are checked by stat every
time, as before.
"""

from __future__ import annotations

import array
import errno
import os
import select
import socket
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tsemu.wire.control import ControlOp, ControlOption, decode_control, is_control

from ..model.families import FamilyTable
from ..model.kernel import Action, CgroupRef, Kernel, Listen, Send, Sender, TaskSource
from ..model.profiles import DEFAULT_PROFILE, KernelProfile
from ..model.tasks import RepeatExit
from .addressing import is_stale, port_of, ports_dir
from .busypoll import DEFAULT_WINDOW_NS, BusyPoll
from .listeners import ListenerTable
from .outbox import Outbox
from .permissions import AdminPolicy, Credentials
from .portwatch import PortWatch

_RECV_SIZE = 1 << 16
_MAX_FDS = 16
_ANC_SIZE = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * _MAX_FDS)
#: Datagrams read per wake-up at most, before the loop lets other tasks run.
_BATCH = 32
_SOL_SOCKET = socket.SOL_SOCKET
_SCM_CREDENTIALS = socket.SCM_CREDENTIALS
_CREDS_SIZE = 12  # struct ucred: pid, uid, gid
_NO_FDS: tuple[int, ...] = ()


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
    #: the address the connection was made to
    address: Any = None
    #: the `Sender` of the last datagram without descriptors, and its raw SCM_CREDENTIALS
    #: (b"" for none): the next datagram with the same credentials reuses it
    sender: Sender | None = None
    sender_creds: bytes | None = None
    #: addresses under which the server trusts this client's identity (see `PortWatch`)
    trusted_as: list[str] = field(default_factory=list)


class Server:
    """A running emulated kernel. Create, then `await serve()` (or use `running_server`)."""

    def __init__(self, socket_path: Path, tasks: TaskSource, *,
                 profile: KernelProfile = DEFAULT_PROFILE, nr_cpus: int = 2,
                 families: FamilyTable | None = None,
                 admin: AdminPolicy | None = None,
                 cgroup_roots: tuple[str, ...] = ("/sys/fs/cgroup",),
                 busy_poll_ns: int = DEFAULT_WINDOW_NS) -> None:
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
        self._raw: socket.socket | None = None
        self._watch: PortWatch | None = None
        #: client address -> its connection, for clients whose socket file is known unchanged
        self._trusted: dict[str, ClientConn] = {}
        if busy_poll_ns < 0:
            raise ValueError(f"a busy-poll window cannot be negative ({busy_poll_ns} ns)")
        self._busy_poll_ns = busy_poll_ns
        self.busy_poll: BusyPoll | None = None

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
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            self._trusted.clear()
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
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            raw.bind(str(path))
            sock = trio.socket.from_stdlib_socket(raw)  # non-blocking from here on
        except BaseException:
            raw.close()
            raise
        os.chmod(path, 0o666)
        ports = ports_dir(path)
        ports.mkdir(exist_ok=True)
        os.chmod(ports, 0o1777)
        self._raw = raw
        self._watch = PortWatch.open(ports)
        await trio.lowlevel.checkpoint()
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
        raw = self._raw
        assert raw is not None
        recvmsg = raw.recvmsg
        # One poll, no timeout, after each datagram: are more waiting (then no trip through
        # trio before the next), and did client socket files change (then before this
        # datagram is answered: see `PortWatch`)?
        ready = select.poll()
        ready.register(raw, select.POLLIN)
        watch_fd = -1
        if self._watch is not None:
            watch_fd = self._watch.fd
            ready.register(watch_fd, select.POLLIN)
        poll = ready.poll
        spin = self.busy_poll = BusyPoll(raw, self._busy_poll_ns)
        while True:
            await trio.lowlevel.wait_readable(raw)
            budget = _BATCH
            while True:
                try:
                    data, ancdata, _flags, address = recvmsg(_RECV_SIZE, _ANC_SIZE)
                except BlockingIOError:
                    break
                more = False
                for fd, _events in poll(0):
                    if fd != watch_fd:
                        more = True
                    elif not self._check_ports():
                        ready.unregister(watch_fd)  # the watch is dead: stat from now on
                        watch_fd = -1
                pending = self._receive(data, ancdata, address)
                if pending is not None:
                    await pending
                if not more and not spin.wait():
                    break
                budget -= 1
                if not budget:  # a long burst: let the other tasks run now and then
                    await trio.lowlevel.checkpoint()
                    budget = _BATCH

    def _receive(self, data: bytes, ancdata: list[tuple[int, int, bytes]],
                 address: Any) -> Awaitable[None] | None:
        """Answer one datagram at once when it comes from a trusted client with credentials
        only (no descriptors) and needs no await; else return what to await to answer it."""
        if len(ancdata) == 1:
            level, kind, creds = ancdata[0]
            if kind == _SCM_CREDENTIALS and level == _SOL_SOCKET and len(creds) == _CREDS_SIZE:
                client = self._trusted.get(address)
                if client is not None and not client.outbox.gone:
                    try:
                        pending = self._serve(client, data, creds, _NO_FDS)
                    except Exception as exc:  # one bad datagram must not take the server down
                        self._internal_error(address, exc)
                        return None
                    return None if pending is None else self._guarded(pending, address)
        return self._receive_checked(data, ancdata, address)

    async def _receive_checked(self, data: bytes, ancdata: list[tuple[int, int, bytes]],
                               address: Any) -> None:
        creds, fds = _ancillary(ancdata)
        try:
            client = self._trusted.get(address)
            if client is None or client.outbox.gone:
                await self._datagram_checked(data, creds, fds, address)
            else:
                pending = self._serve(client, data, creds, fds)
                if pending is not None:
                    await pending
        except Exception as exc:  # one bad datagram must not take the server down
            self._internal_error(address, exc)
        finally:
            for fd in fds:
                os.close(fd)

    async def _guarded(self, pending: Awaitable[None], address: Any) -> None:
        try:
            await pending
        except Exception as exc:
            self._internal_error(address, exc)

    def _internal_error(self, address: Any, exc: Exception) -> None:
        self.stats.internal_errors += 1
        print(f"tsemu: internal error on a datagram from {address!r}: {exc!r}",
              file=sys.stderr, flush=True)

    async def _datagram_checked(self, data: bytes, creds: bytes, fds: Sequence[int],
                                address: Any) -> None:
        """A datagram whose sender must be looked up (and its socket file checked) first."""
        port = port_of(address) if isinstance(address, (str, bytes)) else None
        if port is None:
            self.stats.unaddressed += 1
            return
        client = await self._client(port, address)
        if client is None:
            return
        pending = self._serve(client, data, creds, fds)
        if pending is not None:
            await pending

    def _serve(self, client: ClientConn, data: bytes, creds: bytes,
               fds: Sequence[int]) -> Awaitable[None] | None:
        """What `client`'s datagram earns, offered to its outbox; from the first action that
        needs an await (a REGISTER's `Listen`) on, the rest is returned to be awaited."""
        if data[:1] == b"\0" and is_control(data):  # a netlink message starts with its length
            self.stats.control += 1
            self._control(client, data)
            return None
        self.stats.datagrams += 1
        if fds:
            sender = self._sender(client, creds, fds)
        elif creds == client.sender_creds and client.sender is not None:
            sender = client.sender
        else:
            sender = client.sender = self._sender(client, creds, fds)
            client.sender_creds = creds
        actions = self.kernel.handle(data, sender)
        offer = client.outbox.offer
        for index, action in enumerate(actions):
            if isinstance(action, Send):
                offer(action.data)
            else:
                return self._carry_out(client, actions, index)
        return None

    async def _carry_out(self, client: ClientConn, actions: list[Action], start: int) -> None:
        for action in actions[start:]:
            if isinstance(action, Send):
                client.outbox.offer(action.data)
            elif isinstance(action, Listen):
                await self.listeners.apply(client.port, action.cpus, action.register)

    def _sender(self, client: ClientConn, creds: bytes, fds: Sequence[int]) -> Sender:
        who = Credentials._make(array.array("i", creds)) if creds else _NO_CREDENTIALS
        return Sender(client.port, admin=self._is_admin(client, who), cap_ack=client.cap_ack,
                      ext_ack=client.ext_ack, cgroup_refs=[_cgroup_ref(fd) for fd in fds])

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
        client.sender = client.sender_creds = None  # its options may have changed

    async def _client(self, port: int, address: Any) -> ClientConn | None:
        identity = _file_identity(address)
        client = self.clients.get(port)
        if client is not None and not client.outbox.gone:
            if client.identity == identity:
                self._trust(client, address, identity)
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
        client = ClientConn(port, sock, outbox, identity=identity, address=address)
        self.clients[port] = client
        assert self._nursery is not None
        self._nursery.start_soon(outbox.drain)
        self._trust(client, address, identity)
        return client

    def _trust(self, client: ClientConn, address: Any, identity: tuple[int, int]) -> None:
        """Serve `address` as `client` without checking its file again, until the ports
        directory's watch reports a change of that name: only for a socket file (not a link
        to one) directly in the watched directory, whose identity is `identity` now."""
        watch = self._watch
        if (watch is None or not isinstance(address, str)
                or self._trusted.get(address) is client
                or not address.startswith(watch.prefix)
                or "/" in address[len(watch.prefix):]):
            return
        try:
            st = os.lstat(address)
        except OSError:
            return
        if stat.S_ISSOCK(st.st_mode) and (st.st_ino, st.st_ctime_ns) == identity:
            self._trusted[address] = client
            if address not in client.trusted_as:
                client.trusted_as.append(address)

    def _check_ports(self) -> bool:
        """Forget the trust of every client whose socket file changed since the last look
        (the watch has events waiting). False when the watch died: it is closed then."""
        watch = self._watch
        if watch is None:
            return False
        names = watch.changes()
        if names is None:  # events lost, or the directory itself moved: trust nothing
            self._trusted.clear()
            if not watch.alive:
                watch.close()
                self._watch = None
                return False
            return True
        trusted = self._trusted
        for name in names:
            trusted.pop(watch.prefix + name, None)
        return True

    def _client_gone(self, port: int, sock: trio.socket.SocketType) -> None:
        client = self.clients.get(port)
        if client is not None and client.sock is sock:
            del self.clients[port]
            for address in client.trusted_as:
                if self._trusted.get(address) is client:
                    del self._trusted[address]
        sock.close()
        self.stats.clients_gone += 1

    # -- exits -----------------------------------------------------------------------------

    def _build_event(self, seq: int, report: Any) -> bytes:
        if type(report) is RepeatExit:
            return self.kernel.repeat_exit_event(seq, report)
        return self.kernel.exit_event(seq, report.tid, report.pid_values, report.tgid,
                                      report.tgid_values)

    def _deliver(self, port: int, events: list[bytes]) -> int:
        client = self.clients.get(port)
        if client is None:
            return 0
        return client.outbox.offer_many(events)

    async def broadcast(self, report: Any) -> None:
        """Hand one exit (a process table's exit report) to its CPU's broadcast task."""
        await self.listeners.cpus[report.cpu].submit(report)

    async def settle(self) -> None:
        """Wait until every submitted exit has been offered to its listeners."""
        await self.listeners.wait_idle()


_NO_CREDENTIALS = Credentials(0, -1, -1)


def _ancillary(ancdata: list[tuple[int, int, bytes]]) -> tuple[bytes, list[int]]:
    """The raw SCM_CREDENTIALS (b"" when none came) and the descriptors of a datagram."""
    creds = b""
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDS_SIZE:
            creds = payload[:_CREDS_SIZE]
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
