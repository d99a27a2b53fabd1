"""The capture's pipe to its writer (`emulator.shell.pagepipe`): what the reader gets is what
was sent, byte for byte, whether the pieces went by reference (vmsplice) or were written, and
the sender keeps the pieces it handed over exactly until the reader has read past them."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.emulator.shell.pagepipe import SMALL, PagePipe, Piece, by_reference, coalesce, view_of


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    try:
        yield read, write
    finally:
        os.close(read)
        os.close(write)


def _drain(fd: int, size: int, into: bytearray) -> threading.Thread:
    """A thread reading `size` bytes of `fd` into `into`."""
    def run() -> None:
        while len(into) < size:
            chunk = os.read(fd, size - len(into))
            if not chunk:
                return
            into.extend(chunk)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _pieces(draw_sizes: list[tuple[int, int, bool]]) -> list[Piece]:
    """Pieces of the sizes drawn: bytes of their own, or spans of a larger bytes object."""
    out: list[Piece] = []
    for i, (size, skip, span) in enumerate(draw_sizes):
        data = bytes([i % 251 + 1]) * (skip + size + 3)
        out.append((data, skip, skip + size) if span else data[:size])
    return out


_sizes = st.lists(st.tuples(st.sampled_from([0, 1, 17, SMALL - 1, SMALL, 6000, 70_000]),
                            st.integers(0, 5000), st.booleans()), max_size=30)


@settings(max_examples=40)
@given(sizes=_sizes, by_reference=st.booleans())
def test_the_reader_gets_the_pieces_end_to_end(sizes: list[tuple[int, int, bool]],
                                               by_reference: bool) -> None:
    pieces = _pieces(sizes)
    want = b"".join(view_of(p) for p in pieces)
    read, write = os.pipe()
    try:
        got = bytearray()
        reader = _drain(read, len(want), got)
        sender = PagePipe(write, by_reference=by_reference)
        sender.send(pieces)
        reader.join(timeout=10)
        assert bytes(got) == want
        sender.release()
        assert sender.held == 0
    finally:
        os.close(read)
        os.close(write)


@given(sizes=_sizes)
def test_coalescing_joins_all_but_the_large_spans(sizes: list[tuple[int, int, bool]]) -> None:
    pieces = _pieces(sizes)
    joined = coalesce(pieces)
    assert b"".join(map(view_of, joined)) == b"".join(map(view_of, pieces))
    assert [p for p in joined if isinstance(p, tuple)] == [p for p in pieces if by_reference(p)]
    assert all(by_reference(p) or type(p) is bytes for p in joined)
    assert not any(type(a) is bytes and type(b) is bytes
                   for a, b in zip(joined, joined[1:], strict=False))


def test_pieces_are_held_until_the_reader_is_past_them(pipe: tuple[int, int]) -> None:
    read, write = pipe
    sender = PagePipe(write)
    if not sender.by_reference:
        pytest.skip("vmsplice is refused here: pieces are copied and nothing is held")
    first, second = b"a" * 5000, b"b" * 5000
    sender.send([first])
    sender.send([second])
    assert sender.held == 2
    assert os.read(read, 4999) == b"a" * 4999
    sender.release()
    assert sender.held == 2  # one byte of the first is still to be read
    os.read(read, 1)
    sender.release()
    assert sender.held == 1
    assert os.read(read, 5000) == second
    sender.release()
    assert sender.held == 0


def test_the_pieces_outlive_their_senders_references(pipe: tuple[int, int]) -> None:
    """The point of holding them: the server drops its runs as soon as they are sent and its
    allocator hands their memory out again; the reader must still get the runs' bytes."""
    read, write = pipe
    sender = PagePipe(write)
    size, count = 8_000, 3  # (in a pipe of 16 page slots, unread)
    want = b"".join(bytes([i + 1]) * size for i in range(count))
    for i in range(count):
        sender.send([(bytes([i + 1]) * (size + 100), 50, 50 + size)])
    churn = [bytes([0xEE]) * (size + 100) for _ in range(64)]  # the freed memory, reused
    got = bytearray()
    while len(got) < len(want):
        got += os.read(read, len(want) - len(got))
    assert bytes(got) == want
    del churn


@pytest.mark.parametrize("by_reference", [True, False])
def test_a_gone_reader_is_a_broken_pipe(by_reference: bool) -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        with pytest.raises(BrokenPipeError):
            PagePipe(write, by_reference=by_reference).send([b"x" * 8000])
    finally:
        os.close(write)


def test_a_bytes_subclass_is_sent_as_its_bytes(pipe: tuple[int, int]) -> None:
    class Tagged(bytes):
        pass

    read, write = pipe
    pieces: list[Piece] = [Tagged(b"t" * 6000), (Tagged(b"u" * 9000), 100, 8100)]
    PagePipe(write).send(pieces)
    got = bytearray()
    while len(got) < 14_000:
        got += os.read(read, 14_000 - len(got))
    assert bytes(got) == b"t" * 6000 + b"u" * 8000


def test_a_refused_vmsplice_falls_back_to_writing(pipe: tuple[int, int]) -> None:
    """Where a seccomp profile refuses vmsplice (EPERM), the first send finds it out and the
    pieces are written, then and from then on."""
    import ctypes
    import errno

    def refused(*_: object) -> int:
        ctypes.set_errno(errno.EPERM)
        return -1

    read, write = pipe
    sender = PagePipe(write)
    sender._vmsplice = refused  # type: ignore[assignment]
    sender.send([(b"r" * 9000, 0, 9000), b"s"])
    assert not sender.by_reference and sender.held == 0
    sender.send([(b"t" * 5000, 0, 5000)])
    got = bytearray()
    while len(got) < 14_001:
        got += os.read(read, 14_001 - len(got))
    assert bytes(got) == b"r" * 9000 + b"s" + b"t" * 5000


def test_what_went_in_before_an_error_is_held_all_the_same(pipe: tuple[int, int]) -> None:
    import ctypes
    import errno

    read, write = pipe
    sender = PagePipe(write)
    if not sender.by_reference:
        pytest.skip("vmsplice is refused here: pieces are copied and nothing is held")
    real = sender._vmsplice
    assert real is not None
    calls: list[int] = []

    def fails_second(fd: int, vectors: int, count: int, flags: int) -> int:
        calls.append(count)
        if len(calls) == 1:
            return int(real(fd, vectors, 1, flags))  # the first piece goes in
        ctypes.set_errno(errno.EIO)
        return -1

    sender._vmsplice = fails_second
    with pytest.raises(OSError):
        sender.send([(b"a" * 9000, 0, 5000), (b"b" * 6000, 0, 6000)])
    assert sender.held == 2
    got = bytearray()
    while len(got) < 5000:
        got += os.read(read, 5000 - len(got))
    assert bytes(got) == b"a" * 5000
    sender.release()
    assert sender.held == 0
