"""The "newc" cpio format, which is what the kernel unpacks as an initramfs.

Written here rather than by running `cpio` so that the archive holds exactly the entries we
name, with the modes and owners we name (root, whatever user builds it), and device nodes
(/dev/console) that an unprivileged builder could not create on disk. Each entry is a 110-byte
ASCII header of thirteen 8-digit hex fields after the magic "070701", the NUL-terminated name
padded to 4 bytes, then the data padded to 4 bytes; "TRAILER!!!" ends the archive.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


@dataclass
class CpioWriter:
    """Collects entries in memory; `finish()` returns the archive's bytes."""

    _parts: list[bytes] = field(default_factory=list)
    _ino: int = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", *, rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"cpio entry names are relative and stay inside: {name!r}")
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, encoded, _pad4(len(header) + len(encoded)), data,
                        _pad4(len(data))]
        self._ino += 1

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._ino = 0
        self._entry(TRAILER, 0, nlink=1)
        return b"".join(self._parts)
