"""A pcap capture of every netlink message a server receives and sends (`serve --pcap`).

What lives here: `Capture`, the file side of a capture: packets kept in memory as they pass,
written out in batches, the file rotated by size, opened safely. What must not: the layouts
(`tsemu.wire.pcap` defines every byte of the file), and deciding what is captured (the server
calls `inbound` for each datagram it answers, `outbound` for each reply, `outbound_events`
for each run of exit events a listener is offered).

Why it is built this way: the capture must not slow the server by more than a tenth. A packet
costs the hot path one clock read, one record header packed from a derived codec and one
append; the file is written when a megabyte has gathered or every `FLUSH_SECONDS` (the
caller's `run` task), never per packet. An exit broadcast offers the same run of events to
each listener of a CPU: its records are made once per run and the same bytes appended for
every listener (nlmon too sees one copy per receiving socket, with the same bytes, since an
event's port id is 0).

Files: the first is PATH itself; with `rotate_bytes`, a file that would grow past that size is
closed and the next one is PATH.1, PATH.2, ... (each a whole pcap file with its own header);
with `keep`, only the newest `keep` files are left. Each is opened with O_NOFOLLOW and O_EXCL
(O_TRUNC instead with `force`), as `tsemu scenario convert` opens its target: a link planted at
the path is never followed, an existing file never silently replaced.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from tsemu.wire.pcap import TO_KERNEL, TO_USER, file_header, record_header

#: Bytes gathered in memory before they are written out.
FLUSH_BYTES = 1 << 20
#: The longest a packet waits in memory (the `run` task's period).
FLUSH_SECONDS = 0.2
_COOKED = len(TO_KERNEL)


def open_new(path: Path, *, force: bool) -> int:
    """A descriptor for writing `path`: never through a symlink, never over an existing file
    unless `force` (then truncated). FileExistsError says it exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_TRUNC if force else os.O_EXCL
    return os.open(path, flags, 0o644)


class Capture:
    """Packets to a LINKTYPE_NETLINK pcap file (see the module docstring)."""

    def __init__(self, path: Path, *, rotate_bytes: int | None = None, keep: int | None = None,
                 force: bool = False, clock: Callable[[], int] = time.time_ns) -> None:
        if rotate_bytes is not None and rotate_bytes < 4096:
            raise ValueError(f"a rotation size of {rotate_bytes} bytes is too small: 4096 or more")
        if keep is not None and keep < 1:
            raise ValueError("keep at least one file")
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.force = force
        self._clock = clock
        self._parts: list[bytes] = []
        self._pending = 0
        self._index = 0
        self._written = 0
        self._fd = -1
        self._open(self.path)
        #: every packet captured, and the files written so far, oldest first
        self.packets = 0
        self.files: list[Path] = [self.path]
        self._run_events: Sequence[bytes] | None = None
        self._run_records: list[bytes] = []

    # -- the hot path ----------------------------------------------------------------------

    def inbound(self, data: bytes) -> None:
        """A datagram a client sent (to the kernel)."""
        length = _COOKED + len(data)
        self._parts.append(record_header(self._clock(), length) + TO_KERNEL + data)
        self.packets += 1
        self._pending += length + 16
        if self._pending >= FLUSH_BYTES:
            self.flush()

    def outbound(self, data: bytes) -> None:
        """A datagram the server sends to a client (a reply, an error, an ACK)."""
        length = _COOKED + len(data)
        self._parts.append(record_header(self._clock(), length) + TO_USER + data)
        self.packets += 1
        self._pending += length + 16
        if self._pending >= FLUSH_BYTES:
            self.flush()

    def outbound_events(self, events: Sequence[bytes], count: int) -> None:
        """The first `count` of a run of exit events, offered to one listener. The same run
        offered to the next listener reuses the records made for the first."""
        if count <= 0:
            return
        if events is not self._run_events or len(self._run_records) < count:
            now = self._clock()
            self._run_records = [record_header(now, _COOKED + len(e)) + TO_USER + e
                                 for e in events]
            self._run_events = events
        records = self._run_records
        self._parts.extend(records if count == len(records) else records[:count])
        self.packets += count
        self._pending += sum(len(r) for r in records[:count])
        if self._pending >= FLUSH_BYTES:
            self.flush()

    # -- files -----------------------------------------------------------------------------

    def _open(self, path: Path) -> None:
        fd = open_new(path, force=self.force)
        try:
            _write_all(fd, file_header())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._written = len(file_header())

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        self._index += 1
        path = self.path.with_name(f"{self.path.name}.{self._index}")
        self._open(path)
        self.files.append(path)
        if self.keep is not None:
            while len(self.files) > self.keep:
                old = self.files.pop(0)
                try:
                    os.unlink(old)
                except FileNotFoundError:
                    pass

    def flush(self) -> None:
        """Write out what has gathered (rotating where a file would pass its size)."""
        parts = self._parts
        if not parts or self._fd < 0:
            return
        self._parts = []
        self._pending = 0
        limit = self.rotate_bytes
        if limit is None:
            data = b"".join(parts)
            _write_all(self._fd, data)
            self._written += len(data)
            return
        batch: list[bytes] = []
        size = self._written
        for part in parts:
            if size + len(part) > limit and size > len(file_header()):
                if batch:
                    _write_all(self._fd, b"".join(batch))
                    batch = []
                self._rotate()
                size = self._written
            batch.append(part)
            size += len(part)
        if batch:
            _write_all(self._fd, b"".join(batch))
        self._written = size

    async def run(self) -> None:
        """Flush every `FLUSH_SECONDS` until cancelled (then once more)."""
        try:
            while True:
                await trio.sleep(FLUSH_SECONDS)
                self.flush()
        finally:
            self.flush()

    def close(self) -> None:
        """Write out what is left and close the file."""
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
