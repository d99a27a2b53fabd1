"""Who counts as privileged (CAP_NET_ADMIN) when a request needs it.

The kernel judges each request when it is made: `netlink_capable(skb, CAP_NET_ADMIN)` asks
whether the sending task holds the capability (in the initial user namespace) at that moment,
so a process that drops CAP_NET_ADMIN is refused from its next request on. tsemu receives the
sender's pid, uid and gid with every datagram (SO_PASSCRED, attached by the kernel, so a client
cannot forge them) and decides, per datagram, by policy:

| policy        | privileged when                                                          |
|---------------|--------------------------------------------------------------------------|
| `auto`        | the sender's pid is visible: CAP_NET_ADMIN in its effective set now      |
|               | (capget(2)), and it is root or in the server's user namespace (a root    |
|               | inside a user namespace holds no capability over the host's);            |
|               | otherwise (another pid namespace, a container beside tsemu's): uid 0     |
| `all`         | always                                                                   |
| `none`        | never                                                                    |
| `UID,UID,...` | the sender's uid is listed                                               |
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import NamedTuple

CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class Credentials(NamedTuple):
    """SCM_CREDENTIALS of a datagram: the pid is 0 when the sender is in a pid namespace the
    server cannot see."""

    pid: int
    uid: int
    gid: int


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _Capget:
    """capget(2) for another process: a system call, no file to read (under a microsecond)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._call = libc.capget
        self._call.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
        self._header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        self._data = (_CapData * 2)()

    def effective(self, pid: int) -> int | None:
        self._header.version = _LINUX_CAPABILITY_VERSION_3
        self._header.pid = pid
        if self._call(self._header, self._data) != 0:
            return None
        effective: int = self._data[0].effective | self._data[1].effective << 32
        return effective


_capget: _Capget | None = None


def effective_capabilities(pid: int) -> int | None:
    """The effective capability set of process `pid` now, or None when it is not visible
    (not in the server's pid namespace, or gone)."""
    global _capget
    if pid <= 0:
        return None
    if _capget is None:
        try:
            _capget = _Capget()
        except (OSError, AttributeError):
            return _from_proc(pid)
    return _capget.effective(pid)


def _from_proc(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        return None
    return None


def _in_our_user_namespace(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return False


@dataclass(frozen=True)
class AdminPolicy:
    """The `--admin` policy: "auto", "all", "none", or a set of uids."""

    mode: str = "auto"
    uids: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> AdminPolicy:
        """Read `--admin`: auto, all, none, or a comma-separated list of uids."""
        text = text.strip()
        if text in ("auto", "all", "none"):
            return cls(text)
        try:
            uids = frozenset(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"--admin takes auto, all, none or a list of uids such as "
                             f"0,1000; not {text!r}") from None
        if not uids or any(u < 0 for u in uids):
            raise ValueError(f"--admin: {text!r} names no valid uid")
        return cls("uids", uids)

    def is_admin(self, creds: Credentials) -> bool:
        if self.mode == "all":
            return True
        if self.mode == "none":
            return False
        if self.mode == "uids":
            return creds.uid in self.uids
        caps = effective_capabilities(creds.pid)
        if caps is None:
            return creds.uid == 0
        if not caps >> CAP_NET_ADMIN & 1:
            return False
        return creds.uid == 0 or _in_our_user_namespace(creds.pid)
