"""Where tsemu's sockets live, and how a client's socket maps to a netlink port id.

Netlink addresses a socket by a 32-bit port id; the kernel gives a process's first socket its
tgid and later ones unique negative ids. tsemu's clients are Unix datagram sockets, and a
client in another network namespace (a container beside tsemu's) shares only a directory with
the server, so abstract Unix addresses cannot be used. Instead:

- the server binds `SOCKET` (by default `$TSEMU_SOCKET`, else
  `$XDG_RUNTIME_DIR/tsemu/genl.sock`, else `/tmp/tsemu-<uid>/genl.sock`);
- each client binds a socket in the directory `SOCKET.ports/` named after its port id in
  decimal (`4242`, `-4096`): the file system makes port ids unique, and the server reads the
  sender's port id from the sender's address;
- the server keeps its /proc view (`procview`) in `SOCKET.proc/`, which the shim shows its
  programs in place of /proc (`TSEMU_PROC_VIEW` names it);
- a client that binds with nl_pid 0 takes its tgid if that name is free, else the next free
  negative id from -4096 down, as the kernel's autobind does. A name whose socket nobody
  listens on any more (its process died) is stale and may be taken over.
- a client's socket file is made writable by everyone (0666) once bound: the server may run
  as another user (a container's `tsemu` user, a host client run as root), and connecting to
  a Unix socket needs write permission on its file. Who is heard is decided by credentials
  (the shim and `tsemu.client` take only datagrams of the server's user), as on netlink,
  where any process may send to any port;
- a client may see the directory at another absolute path than the server (a container's
  volume, a bind mount, a symbolic link): its bound name is a path in its own view, and the
  server answers it through the file of the same port name in its own ports directory, once
  it has checked that file is the sender's socket (`shell.clients`).

The C shim follows the same rules (shim/); this module is their reference.
"""

from __future__ import annotations

import itertools
import os
import socket
import stat
import struct
from pathlib import Path

PORTS_SUFFIX = ".ports"
PROC_VIEW_SUFFIX = ".proc"
#: The file that makes a directory a complete /proc view (the shim trusts nothing else), and
#: its contents.
PROC_VIEW_MARKER = ".tsemu-view"
PROC_VIEW_MARKER_TEXT = b"tsemu proc view 1\n"
#: The first id the kernel's autobind hands out when the tgid is taken.
AUTOBIND_START = -4096
_CREDS = struct.Struct("=iII")  # struct ucred: pid, uid, gid
#: The room recvmsg needs for the credentials SO_PASSCRED attaches.
CREDENTIALS_SPACE = socket.CMSG_SPACE(_CREDS.size)


def server_owner(server: Path) -> int:
    """The uid owning the server's socket file: a client hears only datagrams of this user
    (the kernel's SO_PASSCRED credentials). A link is followed: requests reach the socket it
    names, so that socket's owner is the server."""
    st = os.lstat(server)
    if stat.S_ISLNK(st.st_mode):
        st = os.stat(server)
    return st.st_uid


def sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The sender's uid from a datagram's credentials (SO_PASSCRED), None without them."""
    return next((_CREDS.unpack_from(payload)[1] for level, kind, payload in ancillary
                 if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                 and len(payload) >= _CREDS.size), None)


def default_socket_path(environ: dict[str, str] | None = None) -> Path:
    """The server socket path when none is given: TSEMU_SOCKET, XDG_RUNTIME_DIR, or /tmp."""
    env = os.environ if environ is None else environ
    if env.get("TSEMU_SOCKET"):
        return Path(env["TSEMU_SOCKET"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "tsemu" / "genl.sock"
    return Path(f"/tmp/tsemu-{os.getuid()}") / "genl.sock"


def ports_dir(server_socket: Path) -> Path:
    """The directory holding the clients' sockets for the server at `server_socket`."""
    return server_socket.with_name(server_socket.name + PORTS_SUFFIX)


def proc_view_dir(server_socket: Path) -> Path:
    """The /proc view of the server at `server_socket`."""
    return server_socket.with_name(server_socket.name + PROC_VIEW_SUFFIX)


def port_path(server_socket: Path, port: int) -> Path:
    return ports_dir(server_socket) / str(port)


def port_of(address: str | bytes) -> int | None:
    """The port id a client address names, or None for an address that is not a client's
    (unnamed, abstract, or a file name that is not a signed 32-bit integer)."""
    if isinstance(address, bytes):
        address = address.decode(errors="replace")
    if not address or address.startswith("\0"):
        return None
    name = os.path.basename(address)
    try:
        port = int(name, 10)
    except ValueError:
        return None
    if str(port) != name or not -(2**31) <= port < 2**32:
        return None
    return port & 0xFFFFFFFF


def is_stale(path: Path) -> bool:
    """Whether a Unix datagram socket file at `path` has no live socket behind it."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def bind_port(sock: socket.socket, server_socket: Path, port: int = 0) -> int:
    """Bind `sock` as netlink port `port` (0: autobind) of the server at `server_socket`.

    Returns the port id as the kernel reports it (an unsigned 32-bit value; negative ids wrap).
    Raises OSError(EADDRINUSE) when an explicit port is taken, as netlink's bind does.
    """
    directory = ports_dir(server_socket)
    if port:
        _bind_name(sock, directory / str(_signed(port)), explicit=True)
        return port & 0xFFFFFFFF
    # (lazily: a list of the 65,537 candidates took 2 ms to make, for the first one to do)
    candidates = itertools.chain((os.getpid(),), range(AUTOBIND_START, AUTOBIND_START - 65536, -1))
    for candidate in candidates:
        try:
            _bind_name(sock, directory / str(candidate), explicit=False)
        except FileExistsError:
            continue
        return candidate & 0xFFFFFFFF
    raise OSError(98, "no free netlink port id")


def _signed(port: int) -> int:
    port &= 0xFFFFFFFF
    return port - 2**32 if port >= 2**31 else port


def _bind_name(sock: socket.socket, path: Path, *, explicit: bool) -> None:
    try:
        _bind_open(sock, path)
        return
    except OSError as exc:
        if exc.errno != 98:  # EADDRINUSE
            raise
    if not is_stale(path):
        if explicit:
            raise OSError(98, f"netlink port {path.name} is in use ({path})")
        raise FileExistsError(str(path))
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    _bind_open(sock, path)


def _bind_open(sock: socket.socket, path: Path) -> None:
    """Bind, and let the server's user (whoever it is) connect to the socket (0666; the
    ports directory is sticky, so nobody else can swap the file under the name meanwhile)."""
    sock.bind(str(path))
    os.chmod(path, 0o666)
