"""A pcap capture of every netlink message a server receives and sends (`serve --pcap`).

What lives here: `Capture`, which gathers the packets as they pass, and `PcapWriter`, which
turns batches of them into pcap files (rotated by size, opened safely). What must not: the
file's layouts (`tsemu.wire.pcap` defines every byte of it), and deciding what is captured
(the server calls `inbound` for each datagram it answers, `outbound` for each reply,
`outbound_events` for the exit events of a run that reach a listener's socket: as nlmon
sees them, not those an overrun dropped; with delivery faults in force, as they are offered).

Why it is built this way: the capture must not slow the server by more than a tenth (`make
bench`, bench/capture_cost.py). The server's hot path notes packets in groups (a group: packets
alike in time, length and direction, end to end; a lone request or reply is a group of one,
a run of exit events offered to a listener is one group however long): a clock read, four
appends to flat arrays and the bytes themselves, by reference. Building the pcap records
(record header, cooked header, copy) costs several times that, and is the `PcapWriter`'s:
either in the same process when the batch is written out (`tsemu record`, tests) or, with
`child=True` (`serve --pcap`), in a writer process fed through a pipe, so that the server's
CPU does none of it. A batch crosses the pipe as one `BATCH` header, four flat arrays (the
groups' times, lengths, counts and directions) and the datagrams end to end, handed to the
pipe by reference (`pagepipe`: the server does not even copy them). Batches go out when
`FLUSH_BYTES` have gathered or every `FLUSH_SECONDS` (`run`). A writer that cannot keep up
fills the pipe and the server then waits on it: packets are never dropped.

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
import io
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

from .pagepipe import IOV_MAX, PagePipe, Piece, view_of, writev_all

#: Bytes gathered before they are handed to the writer (a quarter of a MiB: the pipe holds
#: four such batches).
FLUSH_BYTES = 1 << 18
#: The longest a packet waits in memory (the `run` task's period).
FLUSH_SECONDS = 0.2
#: A batch as it crosses the pipe to a writer process: this header, then of its `groups`
#: (packets alike in time, length and direction) the times (array "q", ns since the epoch),
#: the lengths of their packets (array "I"), how many packets each holds (array "I"), their
#: directions (one byte each, 1: to the kernel), and then the datagrams end to end
#: (`data_len` bytes). The arrays are in the machine's byte order: both ends are the same
#: machine.
BATCH = cs.Struct("groups" / cs.Int32ul, "data_len" / cs.Int64ul)
#: The bytes of a batch's arrays per group
_GROUP_BYTES = 8 + 4 + 4 + 1
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


def _records(prefix: bytes, packets: memoryview, length: int,
             count: int) -> list[bytes | memoryview]:
    """The pieces of the pcap records of `count` packets of `length` bytes end to end in
    `packets`, each after the same `prefix` (record header and cooked header), for writev:
    the packets are cut once and never joined (a join of a batch's records cost the writer
    more than half its time, in the copy and in the memory it takes fresh each time)."""
    if length == 0:  # (empty datagrams: a client may send them)
        return [prefix] * count
    if count == 1:
        return [prefix, packets]
    pieces: list[bytes | memoryview] = [prefix] * (2 * count)
    pieces[1::2] = map(itemgetter(0), _cutter(length).iter_unpack(packets))
    return pieces


#: The pipe to the writer process holds this much (F_SETPIPE_SZ; an unprivileged process may
#: ask up to fs.pipe-max-size, 1 MiB by default): a whole flush fits, and the server does
#: not wait on the writer for each 64 KiB of it.
PIPE_BYTES = 1 << 20


def _away_from_the_server(child: subprocess.Popen[bytes]) -> None:
    """Give the writer process room of its own, and keep it out of the way: a pipe that holds
    a whole flush; the CPUs the server is not pinned to, when it is pinned to some (a pinned
    server's child inherits its CPUs and would compete with it for them: the capture would
    slow the server it is there to leave alone); and SCHED_BATCH, the policy for work that
    wants throughput, not latency: the writer keeps its fair share of a CPU, but waking up it
    no longer preempts what runs there (a client reading its events, most often: preempted
    at each of the writer's wake-ups, it fell behind a storm and the server then had
    overruns to handle, a tenth more of its CPU per event). Best effort: where any of it is
    refused, things stay as they are."""
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
    try:
        os.sched_setscheduler(child.pid, os.SCHED_BATCH, os.sched_param(0))
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

    def write(self, times: Sequence[int], lengths: Sequence[int], counts: Sequence[int],
              ways: bytes | bytearray | memoryview, data: bytes | memoryview) -> None:
        """Write a batch of groups: group i is counts[i] packets of lengths[i] bytes each,
        the next ones of `data`, sent at times[i] (ns) toward the kernel if ways[i]. A
        group's packets (a run of exit events to one listener) share their record and cooked
        headers."""
        view = memoryview(data)
        # the pieces of whole records for one writev, and their bytes
        parts: list[bytes | memoryview] = []
        parts_bytes = 0
        size = self._written
        limit = self.rotate_bytes
        pos = 0
        for ts, length, count, way in zip(times, lengths, counts, ways, strict=True):
            prefix = record_header(ts, 16 + length) + _COOKED[way]
            need = len(prefix) + length
            pieces = 2 if length else 1
            while count:
                take = count
                if limit is not None:
                    room = (limit - size) // need
                    if room < 1 and size > len(file_header()):
                        # this file is full: the next one
                        writev_all(self._fd, parts, parts_bytes)
                        parts, parts_bytes = [], 0
                        self._rotate()
                        size = self._written
                        continue
                    take = min(count, max(room, 1))  # (a new file takes one whatever its size)
                room = (IOV_MAX - len(parts)) // pieces
                if room < 1:
                    writev_all(self._fd, parts, parts_bytes)
                    parts, parts_bytes = [], 0
                    continue
                take = min(take, room)
                parts += _records(prefix, view[pos:pos + take * length], length, take)
                pos += take * length
                size += take * need
                parts_bytes += take * need
                count -= take
        writev_all(self._fd, parts, parts_bytes)
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
        self._pipe = (PagePipe(self._child.stdin.fileno())
                      if self._child is not None and self._child.stdin is not None else None)
        self._clock = clock
        # the groups gathered so far (see BATCH)
        self._times = array("q")
        self._lengths = array("I")
        self._counts = array("I")
        self._ways = bytearray()
        #: the groups' bytes end to end, in pieces (a run of events is a span of its bytes)
        self._data: list[Piece] = []
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
        self._lengths.append(len(data))
        self._counts.append(1)
        self._ways.append(1)
        self._data.append(data)
        self._pending += len(data)
        if self._pending >= FLUSH_BYTES:
            self.flush()

    def outbound(self, data: bytes) -> None:
        """A datagram the server sends to a client (a reply, an error, an ACK)."""
        self._times.append(self._clock())
        self._lengths.append(len(data))
        self._counts.append(1)
        self._ways.append(0)
        self._data.append(data)
        self._pending += len(data)
        if self._pending >= FLUSH_BYTES:
            self.flush()

    def outbound_events(self, events: Sequence[bytes], count: int) -> None:
        """The first `count` of a run of exit events, offered to one listener (one time for
        the run: the server offers it in one go)."""
        count = min(count, len(events))
        if count <= 0:
            return
        now = self._clock()
        if isinstance(events, MessageRun):  # one group, its bytes as the run lies
            first = events.start * events.size
            self._times.append(now)
            self._lengths.append(events.size)
            self._counts.append(count)
            self._ways.append(0)
            self._data.append((events.data, first, first + count * events.size))
            self._pending += count * events.size
        else:
            for event in events[:count]:
                self._times.append(now)
                self._lengths.append(len(event))
                self._counts.append(1)
                self._ways.append(0)
                self._data.append(event)
                self._pending += len(event)
        if self._pending >= FLUSH_BYTES:
            self.flush()

    # -- batches ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand what has gathered to the writer."""
        if not self._data:
            return
        times, lengths, counts, ways = self._times, self._lengths, self._counts, self._ways
        data, data_len = self._data, self._pending
        self._times, self._lengths, self._counts = array("q"), array("I"), array("I")
        self._ways, self._data, self._pending = bytearray(), [], 0
        self.packets += sum(counts)
        if self._writer is not None:
            self._writer.write(times, lengths, counts, ways, b"".join(map(view_of, data)))
            return
        if self._pipe is None:
            return
        try:
            self._pipe.send([b"".join((_BATCH.pack_values(len(times), data_len),
                                       times.tobytes(), lengths.tobytes(), counts.tobytes(),
                                       bytes(ways))), *data])
        except BrokenPipeError:
            print(f"tsemu: the capture writer for {self.path} has stopped; capture ends",
                  file=sys.stderr, flush=True)
            self._pipe = None

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
        if self._pipe is not None:
            self._pipe.forget()  # the writer has read all it will
            self._pipe = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Reader:
    """Exact reads from a stream into one buffer, reused: a batch read into fresh memory each
    time cost the writer page faults on every one."""

    def __init__(self, stream: io.RawIOBase) -> None:
        self._stream = stream
        self._buffer = bytearray(FLUSH_BYTES * 2)

    def read(self, size: int) -> memoryview | None:
        """The next `size` bytes (valid until the next read), or None at the stream's end."""
        if size > len(self._buffer):
            self._buffer = bytearray(size)
        view = memoryview(self._buffer)[:size]
        got = 0
        while got < size:
            n = self._stream.readinto(view[got:])
            if not n:
                return None
            got += n
        return view


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
    stdin = io.FileIO(sys.stdin.fileno(), closefd=False)  # unbuffered: read straight in
    heads, bodies = _Reader(stdin), _Reader(stdin)
    try:
        while True:
            head = heads.read(_BATCH.size)
            if head is None:
                return 0
            groups, data_len = _BATCH.unpack_from(head)
            body = bodies.read(_GROUP_BYTES * groups + data_len)
            if body is None:
                return 1
            n = groups
            writer.write(body[:8 * n].cast("q"), body[8 * n:12 * n].cast("I"),
                         body[12 * n:16 * n].cast("I"), body[16 * n:17 * n], body[17 * n:])
    finally:
        writer.close()


if __name__ == "__main__":
    sys.exit(writer_main())
