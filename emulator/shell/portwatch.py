"""Watching the ports directory for sockets that change under a port id (inotify).

A client's port id is the name of its socket file in `SOCKET.ports/`; when a process closes
its socket and a new one binds the same name (the kernel reuses a process's tgid as its port
id), the server must treat it as a new client. Checking the file with stat on every datagram
costs a system call per request; this watch says instead which names were created, deleted,
renamed or changed since it was last asked, and says so early enough: a bind's events are
queued before the bind returns, so they are read before the new socket's first datagram is
answered. Where inotify cannot be had, the server stats every datagram, as it always could.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

# inotify(7): the events that say a client's socket file is not the one it was.
_IN_ATTRIB = 0x4
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_UNMOUNT = 0x2000
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x1000000
_IN_WATCHED = (_IN_ATTRIB | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
               | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR)
#: the watched directory itself went away or moved: the watch cannot tell anything any more
_IN_DEAD = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_IGNORED
_INOTIFY_EVENT = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len; name


class PortWatch:
    """Which names of the ports directory changed since last asked (inotify). `fd` becomes
    readable when there is something to tell; `changes()` reads it."""

    def __init__(self, fd: int, directory: str) -> None:
        self.fd = fd
        self.prefix = directory.rstrip("/") + "/"
        self.alive = True

    @classmethod
    def open(cls, directory: Path) -> PortWatch | None:
        """A watch on `directory` (an absolute path), or None where inotify cannot be had
        (the server then checks every datagram's socket file, as it always could)."""
        if not directory.is_absolute():
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return None
            if libc.inotify_add_watch(fd, os.fsencode(directory), _IN_WATCHED) < 0:
                os.close(fd)
                return None
        except (OSError, AttributeError):  # no libc symbol, no inotify
            return None
        return cls(fd, str(directory))

    def changes(self) -> list[str] | None:
        """The names created, deleted, renamed or changed since the last call; None when that
        cannot be told (events were lost, or the watch is dead: `alive` turns False)."""
        if not self.alive:
            return None
        names: list[str] = []
        lost = False
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                self.alive = False
                return None
            if not buf:
                break
            pos = 0
            while pos + _INOTIFY_EVENT.size <= len(buf):
                _wd, mask, _cookie, length = _INOTIFY_EVENT.unpack_from(buf, pos)
                pos += _INOTIFY_EVENT.size
                name = buf[pos:pos + length].split(b"\0", 1)[0]
                pos += length
                if mask & _IN_DEAD:
                    self.alive = False
                if mask & _IN_Q_OVERFLOW:
                    lost = True
                if name:
                    names.append(os.fsdecode(name))
        if lost or not self.alive:
            return None
        return names

    def close(self) -> None:
        self.alive = False
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
