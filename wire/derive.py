"""Fast codecs derived from construct definitions.

construct is the single source of truth for every layout in tsemu, but building a 560-byte
struct taskstats through it costs about 170 µs, far too slow for a server that sends hundreds of
thousands of exit events a second. This module reads a fixed-size construct `Struct` and produces
an equivalent `struct.Struct` format plus the knowledge to turn its flat tuples back into the
nested values construct would give. Nothing here knows any particular layout: a layout changes in
one place (its construct definition) and its fast codec follows.

Supported building blocks are exactly those the layouts use: little-endian integer
`FormatField`s, `Padding`, `Bytes(n)`, `nul_padded(n)` (a NUL-padded byte string), `Const`s
(their value is passed as any field's), fixed-count `Array`s (one leaf per item, named by its
index) and nested `Struct`s. Anything else raises `TypeError` at import time, so an
unsupported layout cannot silently get a wrong fast path.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import construct as cs


def nul_padded(size: int) -> cs.Construct:
    """A fixed `size`-byte field holding bytes padded with NULs (like ac_comm).

    Parses to the bytes without trailing NULs; builds by padding with NULs. Bytes, not str:
    a task's comm may hold any bytes, and a decoder must not fail on them.
    """
    field = cs.FixedSized(size, cs.NullStripped(cs.GreedyBytes))
    field.tsemu_nul_padded = size  # read by the deriver below
    return field


@dataclass(frozen=True)
class _Leaf:
    """One struct-module item: where its value lives in the nested value, how to convert."""

    path: tuple[str, ...]
    fmt: str
    strip_nul: bool


def _walk(con: cs.Construct, path: tuple[str, ...], out: list[_Leaf | str]) -> None:
    """Append the struct-module pieces for `con` to `out` (str items are pure padding)."""
    while isinstance(con, cs.Renamed):
        con = con.subcon
    size_attr = getattr(con, "tsemu_nul_padded", None)
    if size_attr is not None:
        out.append(_Leaf(path, f"{size_attr}s", True))
    elif isinstance(con, cs.Struct):
        for sub in con.subcons:
            name = sub.name
            if name is None:
                _walk(sub, path, out)
            else:
                _walk(sub, path + (name,), out)
    elif isinstance(con, cs.Const):  # (a magic, a must-be-zero): its value is given as any other
        _walk(con.subcon, path, out)
    elif isinstance(con, cs.Array) and isinstance(con.count, int):  # leaves "name.0", "name.1", ...
        for index in range(con.count):
            _walk(con.subcon, path + (str(index),), out)
    elif isinstance(con, cs.FormatField):
        fmt = con.fmtstr
        if fmt[0] not in "<=" or len(fmt) != 2:
            raise TypeError(f"only little-endian single integers are derivable, not {fmt!r}")
        out.append(_Leaf(path, fmt[1], False))
    elif isinstance(con, cs.Padded) and isinstance(con.subcon, cs.Pass.__class__):
        out.append(f"{con.length}x")
    elif isinstance(con, cs.Bytes) and isinstance(con.length, int):
        out.append(_Leaf(path, f"{con.length}s", False))
    else:
        raise TypeError(f"cannot derive a fast codec for {con!r} at {'.'.join(path) or '<root>'}")


class FastCodec:
    """A `struct.Struct` equivalent to a fixed-size construct Struct.

    `pack_values` takes the flat leaf values in order (the fastest way in); `build` and `parse`
    mirror construct's dict-in, dict-out interface and are checked against it by the tests.
    """

    def __init__(self, definition: cs.Construct) -> None:
        pieces: list[_Leaf | str] = []
        _walk(definition, (), pieces)
        self.definition = definition
        self.leaves: tuple[_Leaf, ...] = tuple(p for p in pieces if isinstance(p, _Leaf))
        fmt = "<" + "".join(p if isinstance(p, str) else p.fmt for p in pieces)
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size
        self.names: tuple[str, ...] = tuple(".".join(leaf.path) for leaf in self.leaves)
        if definition.sizeof() != self.size:
            raise TypeError(f"derived size {self.size} != construct size {definition.sizeof()}")
        self.pack_values: Callable[..., bytes] = self.struct.pack
        self.pack_into: Callable[..., None] = self.struct.pack_into
        self.unpack_from: Callable[..., tuple[Any, ...]] = self.struct.unpack_from
        self._strip = tuple(i for i, leaf in enumerate(self.leaves) if leaf.strip_nul)
        self._flat = all(len(leaf.path) == 1 for leaf in self.leaves)
        self._zeros = tuple(b"" if leaf.fmt.endswith("s") else 0 for leaf in self.leaves)
        self._name_zero = tuple(zip(self.names, self._zeros, strict=True))
        self.fields: dict[str, tuple[int, struct.Struct]] = {}
        offset = 0
        for piece in pieces:
            fmt = piece if isinstance(piece, str) else piece.fmt
            if isinstance(piece, _Leaf):
                self.fields[".".join(piece.path)] = (offset, struct.Struct("<" + fmt))
            offset += struct.calcsize("<" + fmt)

    def field(self, name: str) -> tuple[int, struct.Struct]:
        """Where leaf `name` ("a.b" for nested ones) lives: its byte offset and a one-item
        `struct.Struct` that packs it, for patching one value into bytes already built."""
        try:
            return self.fields[name]
        except KeyError:
            raise KeyError(f"no field {name!r} in this layout") from None

    def flat_values(self, values: Mapping[str, Any]) -> list[Any]:
        """Leaf values in struct order from a nested mapping; absent values are zero."""
        if self._flat:
            get = values.get
            return [get(name, zero) for name, zero in self._name_zero]
        out: list[Any] = []
        for leaf, zero in zip(self.leaves, self._zeros, strict=True):
            node: Any = values
            for key in leaf.path:
                node = node.get(key) if isinstance(node, Mapping) else None
                if node is None:
                    node = zero
                    break
            out.append(node)
        return out

    def build(self, values: Mapping[str, Any]) -> bytes:
        """Bytes for a (possibly partial) nested mapping, as construct would build them."""
        return self.struct.pack(*self.flat_values(values))

    def parse(self, data: bytes, offset: int = 0) -> dict[str, Any]:
        """Nested dict of the values at `offset`, as construct would parse them."""
        raw = self.struct.unpack_from(data, offset)
        if self._strip:
            raw_list = list(raw)
            for i in self._strip:
                raw_list[i] = raw_list[i].rstrip(b"\0")
            raw = tuple(raw_list)
        if self._flat:
            return dict(zip(self.names, raw, strict=True))
        out: dict[str, Any] = {}
        for leaf, value in zip(self.leaves, raw, strict=True):
            node = out
            for key in leaf.path[:-1]:
                node = node.setdefault(key, {})
            node[leaf.path[-1]] = value
        return out
