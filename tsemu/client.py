"""A small native taskstats client: to tsemu over its socket (no shim) or to the host kernel.

Used by the tests and the command line. The two transports behave alike on purpose, so a test
can run the same steps against both: requests go out as netlink bytes built by `tsemu.wire`,
replies come back decoded, exit events are queued apart from replies, and an overflowed
receive buffer raises `OSError(ENOBUFS)` on the next receive in both cases (the kernel's
socket error; tsemu's control notice).

To tsemu, only the server is heard: the socket has SO_PASSCRED on, so the kernel attaches the
sender's credentials to every datagram, and one whose uid is not the server socket file's
owner (as lstat saw it at `connect`) is dropped and counted in `dropped`, whatever it says
(another local user cannot inject a reply, an event or an ENOBUFS notice by sending to this
client's port file). An overrun notice counts only from the server (not from another client's
port file: that is data, as a netlink unicast is).

A tsemu client says it unpacks batches (`wire.control.BATCH_HEADER`: several messages in one
datagram, which the server sends when more than one waits for it); `recv` hands their messages
out one per call, as the kernel hands out one message per receive of a broadcast. A batch is
taken (only from the server, as an overrun notice is) whole from the socket, so the server
releases its messages' charges against the emulated receive buffer as soon as it is taken,
not as each message is handed out (the shim releases them when the last one is).

```python
async with await Client.connect(socket_path) as c:      # or: await Client.host()
    family = await c.family_id()
    record = await c.get_pid(4242)
    await c.register("0-1")
    async for event in c.events():
        ...
```
"""

from __future__ import annotations

import array
import errno
import itertools
import os
import socket
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import trio

from tsemu.emulator.shell.addressing import (
    CREDENTIALS_SPACE,
    bind_port,
    default_socket_path,
    port_path,
    ports_dir,
    sender_uid,
    server_owner,
)
from tsemu.wire import (
    CgroupstatsReply,
    Decoded,
    Done,
    ErrorMessage,
    Family,
    FamilyReply,
    Flag,
    Record,
    TaskstatsReply,
    decode_message,
    encode_cgroupstats_get,
    encode_getfamily,
    encode_taskstats_get,
    split_datagram,
)
from tsemu.wire.constants import SOL_NETLINK, SockOpt
from tsemu.wire.control import (
    ControlOp,
    ControlOption,
    decode_batch,
    decode_control,
    encode_control,
    is_batch,
    is_control,
)
from tsemu.wire.errors import WireError

NETLINK_GENERIC = 16


class NetlinkError(OSError):
    """A request answered with NLMSG_ERROR: `errno` is positive, `reply` the whole message."""

    def __init__(self, err: int, reply: ErrorMessage) -> None:
        super().__init__(err, f"{errno.errorcode.get(err, err)}: {os.strerror(err)}")
        self.reply = reply


class Client:
    """One netlink socket, to tsemu or to the host kernel. Use `connect` or `host`."""

    def __init__(self, sock: trio.socket.SocketType, port: int, *, server: Path | None,
                 path: Path | None, server_uid: int | None = None) -> None:
        self.sock = sock
        self.port = port
        self.server = server
        self.path = path
        #: whose datagrams are taken (tsemu: the server socket file's owner)
        self.server_uid = server_uid
        #: datagrams dropped because another user sent them
        self.dropped = 0
        self._seq = itertools.count(1)
        self._events: deque[TaskstatsReply] = deque()
        self._family: int | None = None
        #: messages of a batch not handed out yet
        self._batched: deque[bytes] = deque()

    @classmethod
    async def connect(cls, socket_path: Path | str | None = None, *, port: int = 0) -> Client:
        """A client of the tsemu server at `socket_path` (default: TSEMU_SOCKET's rule)."""
        server = Path(socket_path) if socket_path is not None else default_socket_path()
        if not server.exists():
            raise FileNotFoundError(errno.ENOENT, f"no tsemu server socket at {server}")
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            owner = server_owner(server)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            bound = bind_port(raw, server, port)
            raw.sendto(encode_control(ControlOp.SETOPT, ControlOption.BATCH, 1), str(server))
        except BaseException:
            raw.close()
            raise
        sock = trio.socket.from_stdlib_socket(raw)
        signed = bound - 2**32 if bound >= 2**31 else bound
        return cls(sock, bound, server=server, path=port_path(server, signed), server_uid=owner)

    @classmethod
    async def host(cls) -> Client:
        """A client of the running kernel (AF_NETLINK / NETLINK_GENERIC)."""
        sock = trio.socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        await sock.bind((0, 0))
        return cls(sock, sock.getsockname()[0], server=None, path=None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]
                        ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()
        if self.path is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    # -- raw datagrams ---------------------------------------------------------------------

    async def send(self, data: bytes, fds: list[int] | None = None) -> None:
        """Send one datagram (netlink bytes as they are), with descriptors if given."""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] \
            if fds else []
        if self.server is None:
            await self.sock.sendmsg([data], anc, 0, (0, 0))
        else:
            await self.sock.sendmsg([data], anc, 0, str(self.server))

    async def recv(self) -> bytes:
        """The next datagram. Raises OSError(ENOBUFS) when messages were dropped."""
        if self.server is None:
            data: bytes = await self.sock.recv(1 << 20)
            return data
        if self._batched:
            await trio.lowlevel.checkpoint()
            return self._batched.popleft()
        while True:
            data, ancillary, _flags, sender = await self.sock.recvmsg(1 << 20, CREDENTIALS_SPACE)
            uid = sender_uid(ancillary)
            if uid is None or uid != self.server_uid:
                self.dropped += 1  # not the server's user: as if it never came
                continue
            # Another client's socket is its port file; anything else of the server's user
            # is the server (tsemu's sockets have no name: None, or bytes when abstract).
            peer = isinstance(sender, str) and Path(sender).parent == ports_dir(self.server)
            if not peer and is_batch(data):
                try:
                    messages = decode_batch(data)
                except WireError:
                    self.dropped += 1  # malformed: as if it never came
                    continue
                self._batched.extend(messages[1:])
                return messages[0]
            if not peer and is_control(data):
                if decode_control(data).op == ControlOp.ENOBUFS:
                    raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
                continue
            return data

    # -- socket options --------------------------------------------------------------------

    async def set_option(self, option: SockOpt, value: int) -> None:
        """NETLINK_CAP_ACK, NETLINK_EXT_ACK or NETLINK_NO_ENOBUFS, on either transport."""
        if self.server is None:
            self.sock.setsockopt(SOL_NETLINK, option, value)
            return
        mapping = {SockOpt.CAP_ACK: ControlOption.CAP_ACK, SockOpt.EXT_ACK: ControlOption.EXT_ACK,
                   SockOpt.NO_ENOBUFS: ControlOption.NO_ENOBUFS}
        await self.sock.sendto(encode_control(ControlOp.SETOPT, mapping[option], value),
                               str(self.server))

    async def set_rcvbuf(self, size: int) -> int:
        """setsockopt(SO_RCVBUF): the kernel doubles the value and caps it at rmem_max*2
        (212992*2); returns the effective size, as getsockopt would."""
        effective = max(2304, min(size, 212992) * 2)
        if self.server is None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        await self.sock.sendto(encode_control(ControlOp.SETOPT, ControlOption.RCVBUF, effective),
                               str(self.server))
        return effective

    # -- requests --------------------------------------------------------------------------

    def next_seq(self) -> int:
        return next(self._seq)

    async def transact(self, request: bytes) -> list[Decoded]:
        """Send `request` (one message) and return its answers, in order: replies, then the
        NLMSG_ERROR or NLMSG_DONE that ends them. Exit events received meanwhile are kept
        for `events()`."""
        header = split_datagram(request)[0].header
        dump = header.flags & Flag.DUMP == Flag.DUMP
        wants_ack = bool(header.flags & Flag.ACK) and not dump
        await self.send(request)
        answers: list[Decoded] = []
        while True:
            for message in split_datagram(await self.recv()):
                decoded = decode_message(message, self._family or 0x1F)
                if isinstance(decoded, TaskstatsReply) and message.header.pid == 0:
                    self._events.append(decoded)  # an exit event, not an answer
                    continue
                if message.header.seq != header.seq:
                    continue  # a late answer to an earlier request
                answers.append(decoded)
                if isinstance(decoded, (ErrorMessage, Done)):
                    return answers
                if not dump and not wants_ack:
                    return answers

    async def _one(self, request: bytes) -> Decoded:
        answers = await self.transact(request)
        for answer in answers:
            if isinstance(answer, ErrorMessage) and answer.error:
                raise NetlinkError(-answer.error, answer)
        return answers[0]

    async def family(self, name: str = "TASKSTATS") -> Family:
        reply = await self._one(encode_getfamily(name=name, seq=self.next_seq(), pid=self.port))
        assert isinstance(reply, FamilyReply)
        return reply.family

    async def family_id(self, name: str = "TASKSTATS") -> int:
        if self._family is None or name != "TASKSTATS":
            fid = (await self.family(name)).id
            if name != "TASKSTATS":
                return fid
            self._family = fid
        return self._family

    async def families(self) -> list[Family]:
        answers = await self.transact(encode_getfamily(seq=self.next_seq(), pid=self.port,
                                                       flags=Flag.REQUEST | Flag.DUMP))
        return [a.family for a in answers if isinstance(a, FamilyReply)]

    async def _stats(self, pid: int | None = None, tgid: int | None = None) -> Record:
        fid = await self.family_id()
        reply = await self._one(encode_taskstats_get(fid, pid=pid, tgid=tgid,
                                                     seq=self.next_seq(), portid=self.port))
        assert isinstance(reply, TaskstatsReply)
        return reply.records[0]

    async def get_pid(self, pid: int) -> Record:
        """TASKSTATS_CMD_GET by pid; NetlinkError (ESRCH, EPERM, ...) when refused."""
        return await self._stats(pid=pid)

    async def get_tgid(self, tgid: int) -> Record:
        return await self._stats(tgid=tgid)

    async def register(self, cpumask: str | bytes) -> None:
        """Listen for exits on the CPUs in `cpumask` (a cpulist such as "0-3")."""
        fid = await self.family_id()
        await self._one(encode_taskstats_get(fid, register=cpumask, seq=self.next_seq(),
                                             portid=self.port, flags=Flag.REQUEST | Flag.ACK))

    async def deregister(self, cpumask: str | bytes) -> None:
        fid = await self.family_id()
        await self._one(encode_taskstats_get(fid, deregister=cpumask, seq=self.next_seq(),
                                             portid=self.port, flags=Flag.REQUEST | Flag.ACK))

    async def cgroupstats(self, directory: str | Path) -> dict[str, int]:
        """CGROUPSTATS_CMD_GET for a cgroup directory (its descriptor travels along)."""
        fid = await self.family_id()
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            request = encode_cgroupstats_get(fid, fd, seq=self.next_seq(), portid=self.port)
            header_seq = split_datagram(request)[0].header.seq
            await self.send(request, [fd] if self.server is not None else None)
        finally:
            os.close(fd)
        while True:
            for message in split_datagram(await self.recv()):
                if message.header.seq != header_seq:
                    continue
                decoded = decode_message(message, fid)
                if isinstance(decoded, ErrorMessage):
                    raise NetlinkError(-decoded.error, decoded)
                assert isinstance(decoded, CgroupstatsReply)
                return dict(decoded.stats)

    # -- events ----------------------------------------------------------------------------

    async def next_event(self) -> TaskstatsReply:
        """The next exit event (TASKSTATS_CMD_NEW with port id 0)."""
        while not self._events:
            for message in split_datagram(await self.recv()):
                decoded = decode_message(message, self._family or 0x1F)
                if isinstance(decoded, TaskstatsReply) and message.header.pid == 0:
                    self._events.append(decoded)
        return self._events.popleft()

    async def events(self) -> AsyncIterator[TaskstatsReply]:
        while True:
            yield await self.next_event()

