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
With inotify unavailable, every datagram's sender is checked (`Clients.admit`).

Who may send is `clients`' business: a sender must be a socket in the server's own ports
directory, named as a port id, and is forgotten as soon as its socket is gone. What the
server's files are and who may own them is `sockdir`'s. Limits, all documented in the README:
clients (`max_clients`), a datagram's size (`MAX_DATAGRAM`, the kernel's default send buffer
and then some; a longer one is dropped, counted), a client's receive budget (SO_RCVBUF as
net.core.rmem_max bounds it, more only for a privileged sender's SO_RCVBUFFORCE, and never
over `MAX_FORCED_RCVBUF`).
"""

from __future__ import annotations

import array
import errno
import os
import resource
import select
import socket
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import trio

from tsemu.wire.constants import TaskstatsCmd
from tsemu.wire.control import (
    Control,
    ControlOp,
    ControlOption,
    decode_control,
    encode_control,
    is_control,
)
from tsemu.wire.runs import MessageRun

from ..model.families import FamilyTable
from ..model.faults import DELIVERY
from ..model.kernel import (
    DEFAULT_NR_CPUS_CONFIG,
    Action,
    CgroupRef,
    Kernel,
    Listen,
    Send,
    Sender,
    TaskSource,
)
from ..model.profiles import DEFAULT_PROFILE, KernelProfile
from ..model.recorded import RecordedExit, recorded_event
from ..model.table import ProcessTable
from ..model.tasks import RepeatExit
from .addressing import is_stale, ports_dir
from .busypoll import DEFAULT_WINDOW_NS, BusyPoll
from .capture import Capture
from .clientprocs import ClientProcesses
from .clients import DEFAULT_MAX_CLIENTS, SWEEP_SECONDS, ClientConn, Clients, owner_fits
from .hostmirror import HostMirror
from .listeners import ListenerTable
from .permissions import AdminPolicy, Credentials
from .portwatch import PortWatch
from .sockdir import (
    prepare_ports_dir,
    prepare_socket_dir,
    private_files,
    remove_stale,
    unwritable,
)

#: The longest datagram the server takes: netlink takes a message up to the sender's send
#: buffer (212992 bytes by default, more with SO_SNDBUF); longer ones are dropped, counted.
MAX_DATAGRAM = 1 << 20
#: SO_RCVBUFFORCE by a privileged sender is honoured up to this (a budget is memory the
#: server holds for a client that does not read).
MAX_FORCED_RCVBUF = 64 << 20
#: The least receive budget (SOCK_MIN_RCVBUF on x86_64, as the kernel floors SO_RCVBUF).
MIN_RCVBUF = 2304
_MAX_FDS = 16
_ANC_SIZE = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * _MAX_FDS)
#: Datagrams read per wake-up at most, before the loop lets other tasks run.
_BATCH = 32
_SOL_SOCKET = socket.SOL_SOCKET
_SCM_CREDENTIALS = socket.SCM_CREDENTIALS
_CREDS_SIZE = 12  # struct ucred: pid, uid, gid
_NO_FDS: tuple[int, ...] = ()
_TASKSTATS_NEW = int(TaskstatsCmd.NEW)


@dataclass
class ServerStats:
    datagrams: int = 0
    control: int = 0
    unaddressed: int = 0
    clients_gone: int = 0
    internal_errors: int = 0
    too_long: int = 0


class Server:
    """A running emulated kernel. Create, then `await serve()` (or use `running_server`)."""

    def __init__(self, socket_path: Path, tasks: TaskSource, *,
                 profile: KernelProfile = DEFAULT_PROFILE, nr_cpus: int = 2,
                 nr_cpus_config: int = DEFAULT_NR_CPUS_CONFIG,
                 families: FamilyTable | None = None,
                 admin: AdminPolicy | None = None,
                 cgroup_roots: tuple[str, ...] = ("/sys/fs/cgroup",),
                 busy_poll_ns: int = DEFAULT_WINDOW_NS,
                 max_clients: int = DEFAULT_MAX_CLIENTS,
                 shared_dir: bool = False) -> None:
        self.socket_path = Path(socket_path)
        self.tasks = tasks
        self.profile = profile
        # (kept for `reset`, which makes the kernel model afresh)
        self._kernel_options: dict[str, Any] = dict(
            profile=profile, nr_cpus=nr_cpus, families=families, cgroup_roots=cgroup_roots,
            nr_cpus_config=nr_cpus_config)
        self.kernel = Kernel(tasks, **self._kernel_options)
        self.listeners = ListenerTable(nr_cpus, dedupe=profile.listener_dedupe)
        self.nr_cpus = nr_cpus
        #: the clients' own processes, answered and reported from the host (`clientprocs`)
        self.own = ClientProcesses(HostMirror(tasks, profile))
        self.admin = admin or AdminPolicy()
        self.client_table = Clients(ports_dir(self.socket_path), budget=profile.rmem_default,
                                    max_clients=max_clients, on_forget=self._forgotten)
        #: the clients by port id
        self.clients: dict[int, ClientConn] = self.client_table.by_port
        self.stats = ServerStats()
        self.shared_dir = shared_dir
        self._nursery: trio.Nursery | None = None
        self._sock: trio.socket.SocketType | None = None
        self._raw: socket.socket | None = None
        self._watch: PortWatch | None = None
        self._ports_identity: tuple[int, int] | None = None
        #: a pause fault's end (trio time), and the messages reorder faults hold, by port
        self._paused_until = 0.0
        self._held: dict[int, bytes] = {}
        self._buffer = bytearray(MAX_DATAGRAM + 1)
        if busy_poll_ns < 0:
            raise ValueError(f"a busy-poll window cannot be negative ({busy_poll_ns} ns)")
        self._busy_poll_ns = busy_poll_ns
        self.busy_poll: BusyPoll | None = None
        #: a pcap capture of the netlink traffic (`capture.Capture`, `serve --pcap`), if any
        self.capture: Capture | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                    announce: bool = False) -> None:
        """Bind, then serve until cancelled; the socket file is removed on the way out."""
        _raise_descriptor_limit()
        self._sock = await self._bind()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.client_table.start(nursery)
                nursery.start_soon(self.listeners.run, self._build_events, self._deliver)
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._watch_ports)
                nursery.start_soon(self.client_table.sweep_forever)
                if announce:
                    print(f"tsemu: listening on {self.socket_path}", file=sys.stderr,
                          flush=True)
                task_status.started(self)
        finally:
            self._sock.close()
            for client in list(self.clients.values()):
                client.sock.close()
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            self.client_table.trusted.clear()
            self._cleanup_files()

    async def _bind(self) -> trio.socket.SocketType:
        path = self.socket_path
        prepare_socket_dir(path.parent, shared=self.shared_dir)
        if os.path.lexists(path):
            if stat.S_ISSOCK(os.lstat(path).st_mode) and not is_stale(path):
                raise OSError(98, f"another server is listening on {path}")
            remove_stale(path, "socket")
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            with private_files(0o666):  # anyone may send, as to the kernel's netlink
                try:
                    raw.bind(str(path))
                except PermissionError:
                    raise unwritable(path.parent) from None
            sock = trio.socket.from_stdlib_socket(raw)  # non-blocking from here on
        except BaseException:
            raw.close()
            raise
        self._raw = raw
        self._open_ports()
        await trio.lowlevel.checkpoint()
        return sock

    def _open_ports(self) -> None:
        """Make (or take over) the ports directory and watch it."""
        ports = ports_dir(self.socket_path)
        prepare_ports_dir(ports)
        self._ports_identity = _identity(ports)
        self._watch = PortWatch.open(ports)
        self.client_table.watching = self._watch is not None

    def _cleanup_files(self) -> None:
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        try:
            ports_dir(self.socket_path).rmdir()
        except OSError:
            pass  # clients still have sockets there

    async def reset(self, tasks: TaskSource) -> None:
        """Become what a server freshly started on `tasks` would be, on the same sockets (the
        `reset` control op, which the pytest fixture sends between tests).

        The clients there were are dropped first: forgotten with their connections, queues
        and registrations, and refused from now on (`Clients.drop_all`: the files of sockets
        gone are removed, a socket still bound keeps its name but is never served). Exits
        still on their way are broadcast (to no one) before the rest is put back: the kernel
        model (its faults, kept replies and family table) made afresh for `tasks`, no
        listener, every CPU's sequence number and every counter at zero, no client root, no
        pause, no held message."""
        self.client_table.drop_all()
        await self.settle()
        # From here on nothing awaits: no datagram is read until the server is whole again.
        self.listeners.reset()
        self.tasks = tasks
        self.kernel = Kernel(tasks, **self._kernel_options)
        self.own = ClientProcesses(HostMirror(tasks, self.profile))
        self.stats = ServerStats()
        self.client_table.refused = self.client_table.gone = 0
        self._paused_until = 0.0
        self._held.clear()

    # -- the ports directory ---------------------------------------------------------------

    async def _watch_ports(self) -> None:
        """Read the ports watch whenever it has something to say, datagrams or not: a client
        that closes its socket is forgotten at once, not at its next datagram (it has none)."""
        while True:
            watch = self._watch
            if watch is None:
                await trio.sleep(SWEEP_SECONDS)
                self._reopen_ports()
                continue
            try:
                await trio.lowlevel.wait_readable(watch.fd)
            except (trio.ClosedResourceError, OSError, ValueError):
                await trio.lowlevel.checkpoint()
            self._check_ports()

    def _check_ports(self) -> bool:
        """Tell the clients which names of the ports directory changed (the watch has events
        waiting). False when the watch died (the directory was removed or moved): every
        client is checked, and the directory made again. (A directory removed while a
        client's socket is still bound in it gives no event of its own, only its files': so
        after any change, the directory must still be the one made.)"""
        watch = self._watch
        if watch is None:
            return False
        names = watch.changes()
        self.client_table.names_changed(names)
        if watch.alive and (names == [] or
                            _identity(ports_dir(self.socket_path)) == self._ports_identity):
            return True
        watch.close()
        self._watch = None
        self.client_table.watching = False
        self._reopen_ports()
        return False

    def _reopen_ports(self) -> None:
        if self._watch is not None:
            return
        try:
            self._open_ports()
        except OSError as exc:
            print(f"tsemu: cannot make the ports directory again: {exc}", file=sys.stderr,
                  flush=True)
            return
        self.client_table.names_changed(None)  # what was in the old one is gone

    # -- datagrams in ----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        raw = self._raw
        assert raw is not None
        recvmsg_into = raw.recvmsg_into
        buffers = [self._buffer]
        view = memoryview(self._buffer)
        # One poll, no timeout, after each datagram: are more waiting (then no trip through
        # trio before the next), and did client socket files change (then before this
        # datagram is answered: see `PortWatch`)?
        ready = select.poll()
        ready.register(raw, select.POLLIN)
        poll = ready.poll
        watch_fd = -1
        spin = self.busy_poll = BusyPoll(raw, self._busy_poll_ns)
        while True:
            await trio.lowlevel.wait_readable(raw)
            if self._paused_until > trio.current_time():  # a pause fault: read nothing yet
                await trio.sleep_until(self._paused_until)
            if self._watch is not None and self._watch.fd != watch_fd:
                if watch_fd >= 0:
                    ready.unregister(watch_fd)
                watch_fd = self._watch.fd
                ready.register(watch_fd, select.POLLIN)
            budget = _BATCH
            while True:
                try:
                    size, ancdata, flags, address = recvmsg_into(buffers, _ANC_SIZE)
                except BlockingIOError:
                    break
                data = bytes(view[:size])
                more = False
                for fd, _events in poll(0):
                    if fd != watch_fd:
                        more = True
                    elif not self._check_ports():
                        ready.unregister(watch_fd)  # the watch is dead: it is made again
                        watch_fd = -1
                if size > MAX_DATAGRAM or flags & socket.MSG_TRUNC:
                    self.stats.too_long += 1
                    _close_descriptors(ancdata)
                else:
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
                client = self.client_table.trusted.get(address)
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
            client = self.client_table.trusted.get(address)
            if client is None or client.outbox.gone:
                client = await self.client_table.admit(address, _credentials(creds).uid)
                if client is None:
                    self.stats.unaddressed += 1
                    return
                if "budget" in self.kernel.faults.kinds:
                    for fault in self.kernel.faults.faults:
                        if fault.kind == "budget" and fault.port == client.port:
                            client.outbox.budget = fault.budget
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

    def _serve(self, client: ClientConn, data: bytes, creds: bytes,
               fds: Sequence[int]) -> Awaitable[None] | None:
        """What `client`'s datagram earns, offered to its outbox; from the first action that
        needs an await (a REGISTER's `Listen`) on, the rest is returned to be awaited."""
        if creds != client.sender_creds:
            uid = _credentials(creds).uid
            if not owner_fits(client.owner, uid):  # the same name, another user's socket
                self.client_table.refuse(client.address, uid, f"port {client.name} is uid "
                                         f"{client.owner}'s socket, not the sender's")
                return None
        if data[:1] == b"\0" and is_control(data):  # a netlink message starts with its length
            self.stats.control += 1
            self._control(client, data, creds)
            return None
        self.stats.datagrams += 1
        if fds:
            sender = self._sender(client, creds, fds)
        elif creds == client.sender_creds and client.sender is not None:
            sender = client.sender
            if self._judge_each:  # privilege is judged per datagram, as the kernel does
                sender.admin = self.admin.is_admin(_credentials(creds))
        else:
            sender = client.sender = self._sender(client, creds, fds)
            client.sender_creds = creds
        capture = self.capture
        if capture is not None:
            capture.inbound(data)
        actions = self.kernel.handle(data, sender)
        offer = client.outbox.offer if self.kernel.faults.empty else self._faulty(client)
        for index, action in enumerate(actions):
            if isinstance(action, Send):
                if capture is not None:
                    capture.outbound(action.data)
                offer(action.data)
            else:
                return self._carry_out(client, actions, index)
        return None

    @property
    def _judge_each(self) -> bool:
        return self.admin.mode == "auto"

    async def _carry_out(self, client: ClientConn, actions: list[Action], start: int) -> None:
        offer = client.outbox.offer if self.kernel.faults.empty else self._faulty(client)
        for action in actions[start:]:
            if isinstance(action, Send):
                if self.capture is not None:
                    self.capture.outbound(action.data)
                offer(action.data)
            elif isinstance(action, Listen):
                if self.clients.get(client.port) is client:  # (not forgotten meanwhile)
                    await self.listeners.apply(client.port, action.cpus, action.register)

    def _sender(self, client: ClientConn, creds: bytes, fds: Sequence[int]) -> Sender:
        who = _credentials(creds)
        own = None
        if who.pid > 0:
            own = self.own.lookup_for(who.pid, who.uid)
            table = getattr(self.tasks, "table", self.tasks)
            if isinstance(table, ProcessTable) and who.pid in table:
                self.own.shadowed(who.pid)
        return Sender(client.port, admin=self.admin.is_admin(who),
                      cap_ack=client.cap_ack, ext_ack=client.ext_ack,
                      cgroup_refs=[_cgroup_ref(fd) for fd in fds], own=own)

    def _control(self, client: ClientConn, data: bytes, creds: bytes) -> None:
        try:
            control = decode_control(data)
        except Exception:
            return
        if control.op in (ControlOp.ROOT, ControlOp.THREADED, ControlOp.EXITED):
            self._own_process(client, control, _credentials(creds))
            return
        if control.op != ControlOp.SETOPT:
            return
        if control.option == ControlOption.RCVBUF:
            client.outbox.budget = self._budget(control.value, creds)
        elif control.option == ControlOption.CAP_ACK:
            client.cap_ack = bool(control.value)
        elif control.option == ControlOption.EXT_ACK:
            client.ext_ack = bool(control.value)
        elif control.option == ControlOption.NO_ENOBUFS:
            client.outbox.no_enobufs = bool(control.value)
        elif control.option == ControlOption.BATCH:
            client.outbox.batching = control.value == 1
        client.sender = client.sender_creds = None  # its options may have changed

    def _own_process(self, client: ClientConn, control: Control, who: Credentials) -> None:
        """What a client says of its own processes (`clientprocs`): always of the process the
        kernel says sent it."""
        if control.op == ControlOp.EXITED:
            if who.pid > 0 and 0 < control.value < 2**31 and self._nursery is not None:
                self._nursery.start_soon(self._real_exit, client, who, control.value)
                return
            taken = False
        elif who.pid <= 0:
            taken = False  # a sender in a pid namespace the server cannot see
        elif control.op == ControlOp.ROOT:
            taken = self.own.register_root(who.pid)
        else:
            taken = self.own.register_threaded(who.pid)
        client.outbox.offer(encode_control(ControlOp.SEEN, 0 if taken else errno.ESRCH,
                                           control.value if control.op == ControlOp.EXITED
                                           else who.pid))

    async def _real_exit(self, client: ClientConn, who: Credentials, pid: int) -> None:
        """A client's child has exited: broadcast its records, then tell the client (which
        reaps it only then, so that its /proc entry was there to be read)."""
        report = self.own.exit_report(who.pid, who.uid, pid, self.nr_cpus)
        if report is not None:
            await self.broadcast(report)
            await self.settle()
        client.outbox.offer(encode_control(ControlOp.SEEN,
                                           0 if report is not None else errno.ESRCH, pid))

    def _budget(self, value: int, creds: bytes) -> int:
        """A receive budget asked for (SO_RCVBUF as getsockopt reports it: twice what was
        set), as the kernel bounds it: by net.core.rmem_max, or for a privileged sender
        (SO_RCVBUFFORCE) by `MAX_FORCED_RCVBUF`."""
        ceiling = 2 * self.profile.rmem_max
        if value > ceiling and self.admin.is_admin(_credentials(creds)):
            ceiling = MAX_FORCED_RCVBUF
        return max(MIN_RCVBUF, min(value, ceiling))

    def _forgotten(self, client: ClientConn) -> None:
        """A client is gone: its registrations go with it (as the kernel drops a listener
        whose socket is closed)."""
        self.stats.clients_gone += 1
        if self._nursery is not None and self.listeners.listening(client.port):
            self._nursery.start_soon(self.listeners.forget, client.port)

    # -- exits -----------------------------------------------------------------------------

    def _build_events(self, seq: int, reports: list[Any]) -> Sequence[bytes]:
        """A run's events (`listeners.BuildEvents`): a storm's repeats a run at a time, and
        the whole as one `MessageRun` when its events have one length (a storm's do)."""
        parts: list[Sequence[bytes]] = []
        for kind, group in groupby(reports, type):
            made: Sequence[bytes]
            if kind is RepeatExit:
                made = self.kernel.repeat_exit_events(seq, list(group))
            elif kind is RecordedExit:
                made = [recorded_event(report, (seq + i) & 0xFFFFFFFF, self.kernel.taskstats.id)
                        for i, report in enumerate(group)]
            else:
                made = [self.kernel.exit_event((seq + i) & 0xFFFFFFFF, report.tid,
                                               report.pid_values, report.tgid, report.tgid_values)
                        for i, report in enumerate(group)]
            parts.append(made)
            seq = (seq + len(made)) & 0xFFFFFFFF
        if len(parts) == 1:
            return parts[0]
        run = MessageRun.join(parts)
        return run if run is not None else [event for part in parts for event in part]

    def _deliver(self, port: int, events: Sequence[bytes], cpu: int) -> int:
        client = self.clients.get(port)
        if client is None:
            return 0
        outbox = client.outbox
        dropped = outbox.dropped
        if self.kernel.faults.empty:
            taken = outbox.offer_many(events)
        else:
            offer = self._faulty(client, "events", cpu)
            taken = next((n for n, data in enumerate(events) if not offer(data)), len(events))
        if self.capture is not None:
            # Captured as nlmon sees them: only what reaches the socket, not the events an
            # overrun dropped (ENOBUFS). Those are the run's last ones: once the buffer is
            # full it stays full for the rest of a run (unless the reader empties its queue
            # meanwhile, when the capture names the wrong few).
            reached = taken - (outbox.dropped - dropped)
            self.capture.outbound_events(events, reached)
        return taken

    # -- faults (model.faults: which message a fault hits; here: what it does) --------------

    def _faulty(self, client: ClientConn, on: str = "replies",
                cpu: int | None = None) -> Callable[[bytes], bool]:
        """`client.outbox.offer` with the delivery faults in force applied."""
        faults = self.kernel.faults

        def offer(data: bytes) -> bool:
            outbox = client.outbox
            fault = faults.hit(DELIVERY, self.kernel.now_ns(), on=on, cpu=cpu,
                               port=client.port, pid=_record_pid(data, self.kernel))
            held = self._held.pop(client.port, None)
            if fault is None:
                alive = outbox.offer(data)
            elif fault.kind == "drop":
                alive = not outbox.gone
            elif fault.kind == "duplicate":
                alive = outbox.offer(data) and outbox.offer(data)
            elif fault.kind == "delay":
                assert self._nursery is not None
                self._nursery.start_soon(self._later, outbox, data, fault.delay_ns)
                alive = not outbox.gone
            else:  # reorder: after the next message to this port (or a second, at most)
                self._held[client.port] = data
                assert self._nursery is not None
                self._nursery.start_soon(self._release_held, client.port, outbox, data)
                alive = not outbox.gone
            if held is not None and alive:
                alive = outbox.offer(held)
            return alive

        return offer

    async def _later(self, outbox: Any, data: bytes, delay_ns: int) -> None:
        await trio.sleep(delay_ns / 1e9)
        outbox.offer(data)

    async def _release_held(self, port: int, outbox: Any, data: bytes) -> None:
        await trio.sleep(1)
        if self._held.get(port) is data:
            del self._held[port]
            outbox.offer(data)

    def add_fault(self, kind: str, **fields: Any) -> Any:
        """Put a fault in force (see `model.faults`); budget and pause act at once."""
        fault = self.kernel.faults.add(kind, **fields)
        if kind == "budget" and fault.port is not None:
            client = self.clients.get(fault.port)
            if client is not None:
                client.outbox.budget = fault.budget
        elif kind == "pause":
            self._paused_until = trio.current_time() + fault.duration_ns / 1e9
        return fault

    async def broadcast(self, report: Any) -> None:
        """Hand one exit (a process table's exit report) to its CPU's broadcast task."""
        await self.listeners.cpus[report.cpu].submit(report)

    async def settle(self) -> None:
        """Wait until every submitted exit has been offered to its listeners."""
        await self.listeners.wait_idle()


def _record_pid(data: bytes, kernel: Kernel) -> int | None:
    """The task a TASKSTATS_CMD_NEW (a reply or an event) is about: its first record's PID or
    TGID, the first attribute inside the AGGR nest (netlink, genetlink and nest headers
    before it: offset 28). None for any other message."""
    if len(data) >= 32 and data[16] == _TASKSTATS_NEW and \
            int.from_bytes(data[4:6], "little") == kernel.taskstats.id:
        return int.from_bytes(data[28:32], "little")
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a directory, None if it is gone or is no directory."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _credentials(creds: bytes) -> Credentials:
    return Credentials._make(array.array("i", creds)) if creds else _NO_CREDENTIALS


def _close_descriptors(ancdata: list[tuple[int, int, bytes]]) -> None:
    """Close the descriptors a dropped datagram brought (SCM_RIGHTS)."""
    for fd in _ancillary(ancdata)[1]:
        os.close(fd)


def _raise_descriptor_limit() -> None:
    """Each client holds a descriptor: take the hard limit as the soft one."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass


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
