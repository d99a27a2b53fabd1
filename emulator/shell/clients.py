"""Who the server's clients are: admitting a sender, trusting it, and forgetting it when it goes.

A client is a socket bound in the ports directory (`SOCKET.ports/<port id>`, see
`addressing`). Its datagrams carry its bound name as their source address, as the kernel
reports it, in the client's own view of the file system: a client in a container may see the
directory at another absolute path than the server. So the server takes nothing from that
address but the port id, and checks the rest itself:

- the name must be a port id as the shim and `tsemu.client` spell it (signed decimal: `4242`,
  `-4096`); anything else (another spelling, a file elsewhere without such a name) is refused,
  as the kernel refuses a datagram from no netlink socket;
- the file of that name in the server's own ports directory must be a socket (not a link: the
  server would follow it anywhere), and the server connects to it and asks the connection
  whose socket it reached (`getpeername`): only the sender's own bound name is accepted. A
  socket bound elsewhere under a client's name (`/tmp/x/4242`) reaches no one;
- that file must belong to the user the kernel says sent the datagram (SCM_CREDENTIALS; root
  may send for anyone): a bound name is a path in the sender's own view, and another mount
  namespace may show the same path string somewhere else, so a user elsewhere binding the
  same string as a client here must not be taken for it (`Clients.owner_fits`).

So the server's replies and broadcasts go to the sender's file under the server's own name for
it (`PORTS/<port id>`), whatever absolute path the client sees the directory at: a host client
of a server in a container, two containers mounting the volume at different paths, a
symbolic link or a bind mount (the reference is `addressing`).
A sender that cannot be answered is said once, with the reason, on stderr (`Refusals`): a
client whose requests are dropped would otherwise wait for ever without a word.

Admitted, a client is served by its address without these checks until the ports directory's
watch (`PortWatch`) names its file, or until a check finds it gone. A client is forgotten, with
its connection, its queue and its registrations, as soon as its socket is known gone: its file
removed or replaced (the shim removes it on close), the ports directory removed, its socket
closed with the file left behind (a process killed by SIGKILL: found by a connect probe, on
every event naming it and by a sweep of every client once a second), or a send refused.

Limits: at most `max_clients` clients (`--max-clients`); past that, new senders are refused
(counted, said once). Refusals are said for the first `Refusals.LIMIT` addresses, then counted.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..model.kernel import Sender
from .outbox import Outbox

#: Clients at most, by default (each holds a descriptor and a queue on the server).
DEFAULT_MAX_CLIENTS = 4096
#: How often every client's socket is checked for a close the watch cannot see (seconds).
SWEEP_SECONDS = 1.0
#: Clients checked between two checkpoints of a sweep.
_SWEEP_CHUNK = 64
#: Addresses of forgotten clients kept (`Clients._gone_recently`).
_GONE_KEPT = 1024


@dataclass(eq=False)
class ClientConn:
    """What the server keeps for one client port."""

    port: int
    sock: trio.socket.SocketType
    outbox: Outbox
    #: the client's file name in the ports directory (its port id, signed)
    name: str = ""
    cap_ack: bool = False
    ext_ack: bool = False
    #: (inode, ctime) of the client's socket file: a new socket on the same port id (the
    #: kernel reuses a process's tgid and freed negative ids) is a new client
    identity: tuple[int, int] = (-1, -1)
    #: the address the client's datagrams come from (its bound name, in its own view)
    address: Any = None
    #: the `Sender` of the last datagram without descriptors, and its raw SCM_CREDENTIALS
    #: (b"" for none): the next datagram with the same credentials reuses it
    sender: Sender | None = None
    sender_creds: bytes | None = None
    #: addresses under which the server trusts this client's identity (see `PortWatch`)
    trusted_as: list[str] = field(default_factory=list)
    #: the uid owning the client's socket file: the only user (with root) it may send as
    owner: int = -1


def signed_name(port: int) -> str:
    """A port id as the ports directory names it: signed decimal."""
    port &= 0xFFFFFFFF
    return str(port - 2**32 if port >= 2**31 else port)


def port_name(address: Any) -> tuple[int, str] | None:
    """The port id and file name a sender's address names, or None for an address that is
    no client's: unnamed, abstract, or a base name that is not a port id spelled as the
    ports directory spells it."""
    if isinstance(address, bytes):
        address = os.fsdecode(address)
    if not isinstance(address, str) or not address or address.startswith("\0"):
        return None
    name = address.rsplit("/", 1)[-1]
    try:
        port = int(name, 10)
    except ValueError:
        return None
    if not -(2**31) <= port < 2**31 or signed_name(port) != name:
        return None
    return port & 0xFFFFFFFF, name


class Refusals:
    """Senders the server could not answer, each said once on stderr with the reason."""

    #: addresses said at most (then only counted: a flood must not fill the log or memory)
    LIMIT = 256

    def __init__(self) -> None:
        self.said: set[Any] = set()
        self.unsaid = 0

    def say(self, address: Any, uid: int, reason: str) -> None:
        if address in self.said:
            return
        if len(self.said) >= self.LIMIT:
            self.unsaid += 1
            return
        self.said.add(address)
        shown = os.fsdecode(address) if isinstance(address, bytes) else address
        print(f"tsemu: not answering {shown!r} (uid {uid}): {reason}", file=sys.stderr,
              flush=True)


class Clients:
    """The server's clients, by port id and by trusted address."""

    def __init__(self, ports: Path, *, budget: int, max_clients: int = DEFAULT_MAX_CLIENTS,
                 on_forget: Callable[[ClientConn], None] | None = None) -> None:
        self.ports = ports
        self.budget = budget
        self.max_clients = max_clients
        self.by_port: dict[int, ClientConn] = {}
        #: client address -> its connection, for clients whose socket file is known unchanged
        self.trusted: dict[str, ClientConn] = {}
        self.refused = 0
        self.gone = 0
        #: (inode, ctime) of the files of sockets dropped by a reset while still bound: their
        #: names stay taken (no new socket can be given their port id while they live), and
        #: nothing they send is served
        self.dropped: set[tuple[int, int]] = set()
        #: whether the ports directory's watch would say when a trusted client's file
        #: changes: without it, every datagram's sender is checked (`admit`)
        self.watching = False
        self._on_forget = on_forget
        self._nursery: trio.Nursery | None = None
        self._full_said = 0.0
        self.refusals = Refusals()
        #: the addresses of the clients forgotten last (at most `_GONE_KEPT`): what one of
        #: them sent before it closed is not a refusal worth saying
        self._gone_recently: OrderedDict[Any, None] = OrderedDict()

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def __len__(self) -> int:
        return len(self.by_port)

    # -- admitting -------------------------------------------------------------------------

    async def admit(self, address: Any, uid: int = 0) -> ClientConn | None:
        """The client a datagram from `address`, sent by `uid`, comes from, admitted now if
        need be; None for a sender that is no client (refused, counted, said once)."""
        named = port_name(address)
        if named is None:
            self.refuse(address, uid, "its address is not a netlink port's (a socket "
                        "bound as SOCKET.ports/<port id>; unbound or abstract sockets "
                        "get no reply)")
            return None
        port, name = named
        path = self.ports / name
        try:
            st = os.lstat(path)
        except OSError as exc:
            known = self.by_port.get(port)
            if known is not None and known.address == address:
                self.forget(known)
            if address in self._gone_recently:  # a client's last datagram, read after it
                self.refused += 1               # closed (a DEREGISTER sent on the way out)
                return None
            self.refuse(address, uid, f"no {path} here ({exc.strerror}): the client "
                        "bound its socket outside this server's ports directory "
                        "(TSEMU_SOCKET must name this server's socket, at any path)")
            return None
        if not stat.S_ISSOCK(st.st_mode):
            self.refuse(address, uid, f"{path} is not a socket (a link or a file)")
            return None
        identity = (st.st_ino, st.st_ctime_ns)
        if identity in self.dropped:
            self.refused += 1  # a client of before a reset (not said: the reset said so)
            return None
        if not owner_fits(st.st_uid, uid):
            self.refuse(address, uid, f"{path} belongs to uid {st.st_uid}, not to the "
                        "sender: another socket under the same name")
            return None
        client = self.by_port.get(port)
        if client is not None and not client.outbox.gone:
            if client.identity == identity:
                if client.address == address:
                    self._trust(client, address)
                    return client
                self.refuse(address, uid, f"port {name} is another socket's (bound "
                            f"as {client.address!r})")
                return None
            self.forget(client)  # the port's old socket is gone: forget what it had
        if len(self.by_port) >= self.max_clients:
            self.refused += 1
            now = time.monotonic()
            if now - self._full_said > 60:
                self._full_said = now
                print(f"tsemu: {len(self.by_port)} clients already (--max-clients): refusing "
                      f"new ones (port {name} the first)", file=sys.stderr, flush=True)
            return None
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            await sock.connect(str(path))
            reached = sock.getpeername()
        except OSError as exc:
            sock.close()
            hint = (" (its socket file's mode lets this server's user, uid "
                    f"{os.geteuid()}, not write to it: mode {stat.S_IMODE(st.st_mode):o})"
                    if exc.errno in (errno.EACCES, errno.EPERM) else "")
            self.refuse(address, uid, f"cannot reach {path}: {exc.strerror}{hint}")
            return None
        if reached != address:  # the socket of that name is not the sender: refuse it
            sock.close()
            self.refuse(address, uid, f"{path} is another socket (bound as "
                        f"{reached!r})")
            return None
        holder: list[ClientConn] = []
        outbox = Outbox(sock, self.budget, on_gone=lambda: self.forget(holder[0]))
        client = ClientConn(port, sock, outbox, name=name, identity=identity, address=address,
                            owner=st.st_uid)
        holder.append(client)
        self.by_port[port] = client
        assert self._nursery is not None
        self._nursery.start_soon(outbox.drain)
        self._trust(client, address)
        return client

    def refuse(self, address: Any, uid: int, reason: str) -> None:
        """Count a sender that gets no answer, and say why (once per address)."""
        self.refused += 1
        self.refusals.say(address, uid, reason)
        return None

    def _trust(self, client: ClientConn, address: Any) -> None:
        if not self.watching:
            return
        if isinstance(address, str) and self.trusted.get(address) is not client:
            self.trusted[address] = client
            client.trusted_as.append(address)

    # -- forgetting ------------------------------------------------------------------------

    def forget(self, client: ClientConn) -> None:
        """Forget `client` with everything it held (once; a replaced one is not the current
        one of its port any more and is forgotten all the same)."""
        if self.by_port.get(client.port) is client:
            del self.by_port[client.port]
        else:
            return
        for address in client.trusted_as:
            if self.trusted.get(address) is client:
                del self.trusted[address]
        if not client.outbox.gone:
            client.outbox.close()
        client.sock.close()
        self.gone += 1
        self._gone_recently[client.address] = None
        if len(self._gone_recently) > _GONE_KEPT:
            self._gone_recently.popitem(last=False)
        if self._on_forget is not None:
            self._on_forget(client)

    def forget_all(self) -> None:
        for client in list(self.by_port.values()):
            self.forget(client)

    def drop_all(self) -> None:
        """Forget every client, and refuse for good every socket the ports directory has
        now (a server's `reset`): a socket still bound keeps its name (a port id stays its
        own while it lives, as on the kernel: none of the next clients can be given it and
        be taken for it), the file of one that is gone is removed."""
        self.forget_all()
        dropped = set()
        try:
            entries = list(os.scandir(self.ports))
        except OSError:
            entries = []
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    continue
                if stat.S_ISSOCK(st.st_mode) and _bound(Path(entry.path)):
                    dropped.add((st.st_ino, st.st_ctime_ns))
                else:
                    os.unlink(entry.path)
            except OSError:
                pass
        self.dropped = dropped
        self.refused = self.gone = 0

    def names_changed(self, names: list[str] | None) -> None:
        """The watch saw these names change (None: it cannot tell which): trust them no more,
        and forget the clients whose socket is gone."""
        if names is None:
            self.trusted.clear()
            for client in list(self.by_port.values()):
                self.check(client)
            return
        for name in set(names):
            named = port_name(name)
            if named is None:
                continue
            changed = self.by_port.get(named[0])
            if changed is not None:
                for address in changed.trusted_as:
                    self.trusted.pop(address, None)
                changed.trusted_as.clear()
                self.check(changed)

    def check(self, client: ClientConn) -> bool:
        """Whether `client`'s socket is still there (its file, the same one, with a socket
        bound to it); forgotten if not."""
        path = self.ports / client.name
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        alive = (st is not None and stat.S_ISSOCK(st.st_mode)
                 and (st.st_ino, st.st_ctime_ns) == client.identity and _bound(path))
        if not alive:
            self.forget(client)
        return alive

    async def sweep_forever(self) -> None:
        """Check every client once a second: a socket closed without its file being removed
        (a process killed by SIGKILL) shows nowhere else."""
        while True:
            await trio.sleep(SWEEP_SECONDS)
            clients = list(self.by_port.values())
            for start in range(0, len(clients), _SWEEP_CHUNK):
                for client in clients[start:start + _SWEEP_CHUNK]:
                    if self.by_port.get(client.port) is client:
                        self.check(client)
                await trio.lowlevel.checkpoint()


def owner_fits(owner: int, uid: int) -> bool:
    """Whether a datagram the kernel says `uid` sent may come from a socket file that `owner`
    made: the same user, or root (who could bind any name anyway)."""
    return uid == owner or uid == 0


def _bound(path: Path) -> bool:
    """Whether a socket is bound to the socket file at `path` (connecting to one that is
    not gives ECONNREFUSED; nothing is sent)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # (anything else: not known gone)
    finally:
        probe.close()
    return True
