"""Handing buffers to a pipe by reference (vmsplice), kept alive until the reader took them.

Why: `serve --pcap` sends every captured packet to its writer process through a pipe. A
write copies the bytes into the pipe, and during an exit storm that copy (about 600 bytes an
event) was most of what the capture cost the server. vmsplice(2) without SPLICE_F_GIFT puts
references to the sender's pages in the pipe instead: the reader's read copies from them, so
the copy happens once, on the reader's CPU.

The price is that the sender's memory must not change until the reader has read it. The
buffers handed over are immutable bytes objects, so it is enough to keep a reference to each
until the pipe has been read past it: `PagePipe` counts the bytes it put in and asks the pipe
how many are still in it (FIONREAD), and drops the buffers the reader is past. Only spans of
a few pages or more go by reference: small pieces are not worth a pipe slot each (a pipe
holds a page reference per slot, 256 slots in a MiB), so consecutive ones are joined first,
into a bytes object kept like the others.

Where vmsplice cannot be had (no such libc symbol, or a seccomp profile that refuses it),
the pieces are written (writev), as they always could be.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import itertools
import os
import platform
import termios
from array import array
from collections.abc import Sequence

#: A piece of a bytes object: (data, start, stop), handed over without a copy.
Span = tuple[bytes, int, int]
Piece = bytes | Span

#: Spans shorter than this are copied with their neighbours, not handed over by reference.
SMALL = 4096
#: The most iovecs one system call takes (IOV_MAX on Linux).
IOV_MAX = 1024
#: Errors that say vmsplice is not to be had here, rather than that the pipe is broken.
_UNAVAILABLE = {errno.ENOSYS, errno.EPERM, errno.EACCES}


def _vmsplice_function() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if platform.python_implementation() != "CPython":  # (where id() is no address)
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).vmsplice
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
    function.restype = ctypes.c_ssize_t
    return function


def _contents_offset() -> int:
    """How far a bytes object's contents lie from the object (CPython: id() is the object's
    address), measured once: c_char_p refers to a bytes object's contents, it does not copy
    them, but asking it costs a microsecond a piece."""
    probe = b"where do the contents of a bytes object lie"
    return (ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value or 0) - id(probe)


_CONTENTS = _contents_offset()


def view_of(piece: Piece) -> bytes | memoryview:
    """A piece's bytes, as a buffer (a span's without a copy)."""
    return piece if isinstance(piece, bytes) else memoryview(piece[0])[piece[1]:piece[2]]


def by_reference(piece: Piece) -> bool:
    """Whether a piece is worth a pipe slot of its own: a span of a bytes object proper (not
    of a subclass, whose contents may lie elsewhere), of `SMALL` bytes or more."""
    return (isinstance(piece, tuple) and piece[2] - piece[1] >= SMALL
            and type(piece[0]) is bytes)


def coalesce(pieces: Sequence[Piece]) -> list[Piece]:
    """`pieces` as they go into the pipe: the spans worth it by reference, and every stretch
    of the others joined into one bytes object (a stretch of requests and replies is copied
    in one C call, where a Python loop over them cost the server more than the copy)."""
    if tuple not in map(type, pieces):  # no spans at all: one join
        return [b"".join(pieces)] if pieces else []  # type: ignore[arg-type]
    out: list[Piece] = []
    for referenced, stretch in itertools.groupby(pieces, key=by_reference):
        if referenced:
            out.extend(stretch)
        else:
            out.append(b"".join(map(view_of, stretch)))
    return out


class PagePipe:
    """The sending end of a pipe (`fd`, blocking) that takes pieces by reference."""

    def __init__(self, fd: int, *, by_reference: bool = True) -> None:
        self.fd = fd
        self._vmsplice = _vmsplice_function() if by_reference else None
        #: (bytes put in the pipe once these pieces are in, the pieces), oldest first
        self._held: collections.deque[tuple[int, list[Piece]]] = collections.deque()
        self._sent = 0
        self._queued = array("i", [0])

    @property
    def by_reference(self) -> bool:
        """Whether pieces go by reference (False: they are copied, written)."""
        return self._vmsplice is not None

    @property
    def held(self) -> int:
        """How many pieces are kept for a reader that has not read them yet."""
        return sum(len(pieces) for _, pieces in self._held)

    def send(self, pieces: Sequence[Piece]) -> None:
        """Put `pieces` in the pipe end to end, waiting while it is full. BrokenPipeError
        says the reader has gone."""
        if self._vmsplice is not None:
            pieces = coalesce(pieces)
            try:
                self._splice(pieces)
                return
            except OSError as exc:
                if exc.errno not in _UNAVAILABLE or self._sent:
                    raise
                self._vmsplice = None  # refused before anything went: write instead
        writev_all(self.fd, [view_of(piece) for piece in pieces])

    def _splice(self, pieces: list[Piece]) -> None:
        # struct iovec[]: base and length of each piece, as unsigned longs
        vectors = array("Q")
        for piece in pieces:
            if isinstance(piece, tuple):
                data, start, stop = piece
                vectors.extend((id(data) + _CONTENTS + start, stop - start))
            else:
                vectors.extend((id(piece) + _CONTENTS, len(piece)))
        vmsplice = self._vmsplice
        assert vmsplice is not None
        address = vectors.buffer_info()[0]
        first, end = 0, len(pieces)
        before = self._sent
        try:
            while first < end:
                while first < end and vectors[2 * first + 1] == 0:
                    first += 1
                if first == end:
                    break
                done = vmsplice(self.fd, address + 16 * first, min(end - first, IOV_MAX), 0)
                if done < 0:
                    code = ctypes.get_errno()
                    if code == errno.EINTR:
                        continue
                    raise OSError(code, os.strerror(code))
                self._sent += done
                while done:  # past what went in, part of a vector perhaps
                    taken = min(done, vectors[2 * first + 1])
                    vectors[2 * first] += taken
                    vectors[2 * first + 1] -= taken
                    done -= taken
                    if vectors[2 * first + 1] == 0:
                        first += 1
        finally:  # (what went in before an error is held all the same)
            if self._sent != before:
                self._held.append((self._sent, pieces))
        self.release()

    def release(self) -> None:
        """Drop the pieces the reader has read past."""
        if not self._held:
            return
        try:
            fcntl.ioctl(self.fd, termios.FIONREAD, self._queued)
        except OSError:
            return
        read = self._sent - self._queued[0]
        while self._held and self._held[0][0] <= read:
            self._held.popleft()

    def forget(self) -> None:
        """Drop every piece: the reader has ended (after it was waited for)."""
        self._held.clear()


def writev_all(fd: int, buffers: Sequence[bytes | memoryview], size: int | None = None) -> None:
    """Write `buffers` end to end to `fd`, however the kernel splits the writes. `size`:
    their total, where the caller knows it and they fit one writev (IOV_MAX), so that what
    was written is checked without summing their lengths (a tenth of a capture writer's
    time)."""
    known = size if len(buffers) <= IOV_MAX else None
    start = 0
    while start < len(buffers):
        chunk = buffers if known is not None else buffers[start:start + IOV_MAX]
        written = os.writev(fd, chunk)
        start += len(chunk)
        if written != (known if known is not None else sum(map(len, chunk))):
            # a short write: the rest of this chunk by hand
            view = memoryview(b"".join(chunk))[written:]
            while view:
                view = view[os.write(fd, view):]
