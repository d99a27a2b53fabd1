"""A pcap capture of every netlink message a server receives and sends (`serve --pcap`).

What lives here: `Capture`, which gathers the packets as they pass, and `PcapWriter`, which
turns batches of them into pcap files (rotated by size, opened safely). What must not: the
file's layouts (`tsemu.wire.pcap` defines every byte of it), and deciding what is captured
(the server calls `inbound` for each datagram it answers, `outbound` for each reply,
`outbound_events` for the exit events of a run that reach a listener's socket: as nlmon
sees them, not those an overrun dropped; with delivery faults in force, as they are offered).

Why it is built this way: the capture must not slow the server by more than a tenth (`make
bench`, bench/capture.py). A packet costs the server's hot path one clock read and three
appends to flat arrays (its time, its direction, its bytes): about 0.15 µs, where building
its pcap record (record header, cooked header, copy) costs several times that. The records
are built by the `PcapWriter`, either in the same process when the batch is written out
(`tsemu record`, tests) or, with `child=True` (`serve --pcap`), in a writer process fed
through a pipe, so that the server's CPU does none of it: a batch crosses the pipe as one
`BATCH` header and four flat blobs (times, lengths, directions, the datagrams end to end).
Batches go out when `FLUSH_BYTES` have gathered or every `FLUSH_SECONDS` (`run`). A writer that
cannot keep up fills the pipe and the server then waits on it: packets are never dropped.

Files: the first is PATH itself; with `rotate_bytes`, a file that would grow past that size is
closed and the next one is PATH.1, PATH.2, ... (each a whole pcap file with its own header);
with `keep`, only the newest `keep` files are left. Each is opened with O_NOFOLLOW and O_EXCL
(O_TRUNC instead with `force`), as `tsemu scenario convert` opens its target: a link planted at
the path is never followed, an existing file never silently replaced. The first file is
opened by the server itself, so a refusal is its error, said before it serves.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import os
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from functools import lru_cache
from operator import itemgetter
from pathlib import Path

import construct as cs
import trio

from tsemu.wire.derive import FastCodec
from tsemu.wire.pcap import TO_KERNEL, TO_USER, file_header, record_header
from tsemu.wire.runs import MessageRun

#: Bytes gathered in memory before they are handed to the writer: a quarter of a MiB, while
#: what the server just made is still in the CPU's caches (a MiB cost the server about a
#: tenth more per event: the copy into the pipe read it back from memory).
FLUSH_BYTES = 1 << 18
#: The longest a packet waits in memory (the `run` task's period).
FLUSH_SECONDS = 0.2
#: A batch as it crosses the pipe to a writer process: this header, then `count` times
#: (array "q", ns since the epoch), `count` lengths (array "I"), `count` directions (one
#: byte each, 1: to the kernel), and the datagrams end to end (`data_len` bytes). The
#: arrays are in the machine's byte order: both ends are the same machine.
BATCH = cs.Struct("count" / cs.Int32ul, "data_len" / cs.Int64ul)
_BATCH = FastCodec(BATCH)
_COOKED = (TO_USER, TO_KERNEL)


def open_new(path: Path, *, force: bool) -> int:
    """A descriptor for writing `path`: never through a symlink, never over an existing file
    unless `force` (then truncated). FileExistsError says it exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_TRUNC if force else os.O_EXCL
    return os.open(path, flags, 0o644)


@lru_cache(maxsize=64)
def _cutter(length: int) -> struct.Struct:
    return struct.Struct(f"{length}s")


def _records(prefix: bytes, packets: memoryview, length: int, count: int) -> bytes:
    """pcap records of `count` packets of `length` bytes end to end in `packets`, each after
    the same `prefix` (record header and cooked header)."""
    if length == 0:  # (empty datagrams: a client may send them)
        return prefix * count
    return prefix + prefix.join(map(itemgetter(0), _cutter(length).iter_unpack(packets)))


#: The pipe to the writer process holds this much (F_SETPIPE_SZ; an unprivileged process may
#: ask up to fs.pipe-max-size, 1 MiB by default): a whole flush fits, and the server does
#: not wait on the writer for each 64 KiB of it.
PIPE_BYTES = 1 << 20


def _away_from_the_server(child: subprocess.Popen[bytes]) -> None:
    """Give the writer process room of its own: a pipe that holds a whole flush, and the CPUs
    the server is not pinned to, when it is pinned to some (a pinned server's child
    inherits its CPUs and would compete with it for them: the capture would slow the server
    it is there to leave alone). Best effort: where either is refused, things stay as they
    are."""
    if child.stdin is not None:
        try:
            fcntl.fcntl(child.stdin.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
    try:
        mine = os.sched_getaffinity(0)
        others = set(range(os.cpu_count() or 1)) - mine
        if others:
            os.sched_setaffinity(child.pid, others)
    except OSError:
        pass


_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class PcapWriter:
    """Batches of packets to pcap files, rotated by size (see the module docstring)."""

    def __init__(self, path: Path, fd: int, *, rotate_bytes: int | None = None,
                 keep: int | None = None, force: bool = False) -> None:
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.force = force
        self.files: list[Path] = [self.path]
        self._index = 0
        self._fd = fd
        _write_all(fd, file_header())
        self._written = len(file_header())

    def write(self, times: Sequence[int], lengths: Sequence[int], ways: bytes | bytearray,
              data: bytes | memoryview) -> None:
        """Write a batch: packet i was sent at times[i] (ns) toward the kernel if ways[i],
        and is the next lengths[i] bytes of `data`. Packets alike in time, length and way
        (a run of exit events to one listener) share their record and cooked headers, so
        such a group's records are made in one join, not one by one."""
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        size = self._written
        limit = self.rotate_bytes
        pos = 0
        for (ts, length, way), group in itertools.groupby(zip(times, lengths, ways,
                                                               strict=True)):
            count = sum(1 for _ in group)
            prefix = record_header(ts, 16 + length) + _COOKED[way]
            need = 32 + length
            while count:
                take = count
                if limit is not None:
                    room = (limit - size) // need
                    if room < 1 and size > len(file_header()):
                        _writev_all(self._fd, parts)  # this file is full: the next one
                        parts = []
                        self._rotate()
                        size = self._written
                        continue
                    take = min(count, max(room, 1))  # (a new file takes one whatever its size)
                parts.append(_records(prefix, view[pos:pos + take * length], length, take))
                pos += take * length
                size += take * need
                count -= take
        _writev_all(self._fd, parts)
        self._written = size

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        self._index += 1
        path = self.path.with_name(f"{self.path.name}.{self._index}")
        self._fd = open_new(path, force=self.force)
        _write_all(self._fd, file_header())
        self._written = len(file_header())
        self.files.append(path)
        if self.keep is not None:
            while len(self.files) > self.keep:
                old = self.files.pop(0)
                try:
                    os.unlink(old)
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Capture:
    """Packets gathered on the server's hot path and handed to a `PcapWriter` in batches.

    `child=True` runs the writer in a process of its own (`serve --pcap`); otherwise the
    batches are written in this process when they are flushed."""

    def __init__(self, path: Path, *, rotate_bytes: int | None = None, keep: int | None = None,
                 force: bool = False, child: bool = False,
                 clock: Callable[[], int] = time.time_ns) -> None:
        if rotate_bytes is not None and rotate_bytes < 4096:
            raise ValueError(f"a rotation size of {rotate_bytes} bytes is too small: 4096 or more")
        if keep is not None and keep < 1:
            raise ValueError("keep at least one file")
        self.path = Path(path)
        fd = open_new(self.path, force=force)
        self._writer: PcapWriter | None = None
        self._child: subprocess.Popen[bytes] | None = None
        try:
            if child:
                argv = [sys.executable, "-m", "tsemu.emulator.shell.capture", "--fd", str(fd),
                        "--path", str(self.path)]
                if rotate_bytes is not None:
                    argv += ["--rotate", str(rotate_bytes)]
                if keep is not None:
                    argv += ["--keep", str(keep)]
                if force:
                    argv.append("--force")
                os.set_inheritable(fd, True)
                self._child = subprocess.Popen(argv, stdin=subprocess.PIPE, pass_fds=(fd,))
                _away_from_the_server(self._child)
            else:
                self._writer = PcapWriter(self.path, fd, rotate_bytes=rotate_bytes, keep=keep,
                                          force=force)
        finally:
            if child:
                os.close(fd)
        self._files = self._writer
        self._clock = clock
        self._times = array("q")
        self._ways = bytearray()
        self._lengths = array("I")
        #: the packets' bytes end to end, in pieces (a piece may hold a run of events)
        self._data: list[bytes | memoryview] = []
        self._pending = 0
        #: every packet captured
        self.packets = 0

    @property
    def files(self) -> list[Path]:
        """The files written so far, oldest first (known only with the writer in-process)."""
        return list(self._files.files) if self._files is not None else [self.path]

    # -- the hot path ----------------------------------------------------------------------

    def inbound(self, data: bytes) -> None:
        """A datagram a client sent (to the kernel)."""
        self._times.append(self._clock())
        self._ways.append(1)
        self._lengths.append(len(data))
        self._data.append(data)
        self._pending += len(data)
        if self._pending >= FLUSH_BYTES:
            self.flush()

    def outbound(self, data: bytes) -> None:
        """A datagram the server sends to a client (a reply, an error, an ACK)."""
        self._times.append(self._clock())
        self._ways.append(0)
        self._lengths.append(len(data))
        self._data.append(data)
        self._pending += len(data)
        if self._pending >= FLUSH_BYTES:
            self.flush()

    def outbound_events(self, events: Sequence[bytes], count: int) -> None:
        """The first `count` of a run of exit events, offered to one listener (one time for
        the run: the server offers it in one go)."""
        if count <= 0:
            return
        self._times.extend(array("q", (self._clock(),)) * count)
        self._ways.extend(bytes(count))
        if isinstance(events, MessageRun):  # one piece, as the run lies
            self._lengths.extend(array("I", (events.size,)) * count)
            self._data.append(events.body(count))
        else:
            taken = events if count == len(events) else events[:count]
            self._lengths.extend(map(len, taken))
            self._data.extend(taken)
        self._pending += count * len(events[0])
        if self._pending >= FLUSH_BYTES:
            self.flush()

    # -- batches ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand what has gathered to the writer."""
        if not self._data:
            return
        times, ways, lengths, data = self._times, self._ways, self._lengths, self._data
        self._times, self._ways, self._data, self._pending = array("q"), bytearray(), [], 0
        self._lengths = array("I")
        self.packets += len(lengths)
        if self._writer is not None:
            self._writer.write(times, lengths, ways, b"".join(data))
            return
        if self._child is None or self._child.stdin is None:
            return
        try:
            stdin = self._child.stdin
            stdin.flush()
            # The datagrams go from their own buffers into the pipe (writev): joined first,
            # they were copied twice, which cost the server about 0.4 us an event.
            _writev_all(stdin.fileno(), [
                b"".join((_BATCH.pack_values(len(lengths), sum(lengths)), times.tobytes(),
                          lengths.tobytes(), bytes(ways))), *data])
        except (BrokenPipeError, ValueError):
            print(f"tsemu: the capture writer for {self.path} has stopped; capture ends",
                  file=sys.stderr, flush=True)
            self._child.stdin = None

    async def run(self) -> None:
        """Flush every `FLUSH_SECONDS` until cancelled (then once more)."""
        try:
            while True:
                await trio.sleep(FLUSH_SECONDS)
                self.flush()
        finally:
            self.flush()

    def close(self) -> None:
        """Write out what is left, close the files (and wait for the writer process)."""
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._child is not None:
            if self._child.stdin is not None:
                self._child.stdin.close()
            self._child.wait()
            self._child = None


#: The most buffers one writev takes (IOV_MAX on Linux).
_IOV_MAX = 1024


def _writev_all(fd: int, buffers: Sequence[bytes | memoryview]) -> None:
    """Write `buffers` end to end to `fd`, however the kernel splits the writes."""
    start = 0
    while start < len(buffers):
        chunk = buffers[start:start + _IOV_MAX]
        written = os.writev(fd, chunk)
        start += len(chunk)
        if written != sum(map(len, chunk)):  # a short write: the rest of this chunk by hand
            view = memoryview(b"".join(chunk))[written:]
            while view:
                view = view[os.write(fd, view):]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(stream: object, size: int) -> bytes | None:
    read = stream.read  # type: ignore[attr-defined]
    chunks = []
    while size:
        chunk = read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def writer_main(argv: Sequence[str] | None = None) -> int:
    """The writer process: batches from stdin (`BATCH`) to pcap files, until stdin ends."""
    parser = argparse.ArgumentParser(prog="tsemu-capture-writer")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--rotate", type=int)
    parser.add_argument("--keep", type=int)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server ends the capture, not ^C
    writer = PcapWriter(Path(args.path), args.fd, rotate_bytes=args.rotate, keep=args.keep,
                        force=args.force)
    stdin = sys.stdin.buffer
    try:
        while True:
            head = _read_exactly(stdin, _BATCH.size)
            if head is None:
                return 0
            count, data_len = _BATCH.unpack_from(head)
            body = _read_exactly(stdin, 8 * count + 4 * count + count + data_len)
            if body is None:
                return 1
            times, lengths = array("q"), array("I")
            times.frombytes(body[:8 * count])
            lengths.frombytes(body[8 * count:12 * count])
            writer.write(times, lengths, body[12 * count:13 * count], body[13 * count:])
    finally:
        writer.close()


if __name__ == "__main__":
    sys.exit(writer_main())
