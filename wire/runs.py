"""A run of messages of one length, end to end in one bytes object (`MessageRun`).

Why: a storm's exit events are all the same length and differ only in seq and pid. Made one
by one, each is a bytes object of its own that the server then copies again into every
batch datagram it sends; that allocation and those copies were most of the server's time
per event. Made as one run (`taskstats.Splice.run`), they are packed once, and a batch
datagram sends a slice of the run as it lies (`memoryview`, scatter-gather), for every
listener alike. Wherever single messages are wanted (a client that does not take batches,
faults, a run cut by an overrun), a run is a sequence of bytes like any list of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload


class MessageRun(Sequence[bytes]):
    """`n` messages of `size` bytes each, the i-th at data[(start + i) * size:]: an
    immutable view, shared by every listener a run goes to (`tail` makes another view, never
    a copy)."""

    __slots__ = ("data", "size", "start", "n")

    def __init__(self, data: bytes, size: int, start: int = 0, n: int | None = None) -> None:
        if size <= 0:
            raise ValueError(f"a message run of {size}-byte messages")
        whole, rest = divmod(len(data), size)
        if rest:
            raise ValueError(f"{len(data)} bytes are not a run of {size}-byte messages")
        if n is None:
            n = whole - start
        if start < 0 or n < 0 or start + n > whole:
            raise ValueError(f"messages {start}..{start + n} of a run of {whole}")
        self.data = data
        self.size = size
        self.start = start
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> MessageRun: ...

    def __getitem__(self, index: int | slice) -> bytes | MessageRun:
        if isinstance(index, slice):
            first, stop, step = index.indices(self.n)
            if step != 1:
                raise ValueError("a message run is sliced with step 1 only")
            return MessageRun(self.data, self.size, self.start + first, max(0, stop - first))
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError("message run index out of range")
        at = (self.start + index) * self.size
        return self.data[at:at + self.size]

    def __iter__(self) -> Iterator[bytes]:
        size = self.size
        first = self.start * size
        data = self.data
        return (data[at:at + size] for at in range(first, first + self.n * size, size))

    def tail(self, skip: int) -> MessageRun:
        """The run without its first `skip` messages (0 <= skip <= n): a sender's cursor,
        made often, so without the checks of a slice."""
        if not 0 <= skip <= self.n:
            raise ValueError(f"skip {skip} of a run of {self.n}")
        rest = MessageRun.__new__(MessageRun)
        rest.data, rest.size, rest.start, rest.n = (self.data, self.size, self.start + skip,
                                                    self.n - skip)
        return rest

    def body(self, count: int | None = None) -> memoryview:
        """The first `count` messages (all by default) end to end, as they lie in `data`."""
        taken = self.n if count is None else min(count, self.n)
        first = self.start * self.size
        return memoryview(self.data)[first:first + taken * self.size]

    @classmethod
    def join(cls, parts: Sequence[Sequence[bytes]]) -> MessageRun | None:
        """One run of the messages of `parts` (runs or lists of bytes), in order, when they
        all have one length; None when they do not, or when there are none."""
        size: int | None = None
        for part in parts:
            if not part:
                continue
            lengths = {part.size} if isinstance(part, MessageRun) else set(map(len, part))
            if len(lengths) != 1 or (size is not None and lengths != {size}):
                return None
            (size,) = lengths
        if size is None:
            return None
        return cls(b"".join(part.body() if isinstance(part, MessageRun) else b"".join(part)
                            for part in parts), size)

    def __repr__(self) -> str:
        return f"<MessageRun of {self.n} x {self.size} bytes>"
