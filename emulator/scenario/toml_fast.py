"""Reading a scenario's TOML: a compiled parser for speed, tomllib as the reference.

Why two parsers. tomllib is pure Python: a 100,000-process scenario (19 MB of TOML) takes it
about 5 s, most of the time it takes to load such a scenario. toml-rs (Rust, in its TOML 1.0
mode) reads the same text in about 0.4 s and gives the same Python values (ints of any size,
floats, strings, date-times with `datetime.timezone` offsets, dict key order): the tests
compare the two on every example and on CPython's own tomllib test data.

tomllib stays the reference, and the only voice for errors: `fast_document` answers None
whenever the compiled parser is missing, might read the text otherwise than tomllib, could
crash on it, or rejects it, and the caller then reads the text with tomllib, whose
`TOMLDecodeError` words the problem (line, column) as it always has. Cases where toml-rs and
tomllib differ, found by testing, and how they are kept apart:

- a byte-order mark at the start: tomllib refuses it, toml-rs skips it (refused here too);
- arrays and inline tables nested thousands deep: tomllib raises RecursionError, toml-rs
  overflows the C stack and kills the process (a segfault, at about 5,000 levels on an 8 MiB
  stack). `nesting_bound` finds, without parsing, a bound on how deep values nest; above
  `NESTING_LIMIT` (far above what any valid scenario needs) tomllib reads the text;
- decimal integers of more than `sys.get_int_max_str_digits()` digits (4300): tomllib refuses
  them (ValueError), toml-rs reads them. A text with a run of that many digits (underscores
  included) is read by tomllib.

Otherwise the two documents are equal, and so is everything the scenario's checks make of
them, problems included (see `scenario._check_text`).

Memory: toml-rs's own allocator is told to give back what a parse frees (`_import_toml_rs`),
and a big text is parsed in pieces cut before its [[process]] headers (`_in_pieces`), the
same document made with a fraction of the memory.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = ["NESTING_LIMIT", "fast_document", "fast_loads", "nesting_bound", "reference_document"]

#: mimalloc's options while toml-rs starts (see `_import_toml_rs`): freed memory goes back to
#: the system at once; its arenas are committed only as they are used.
_MIMALLOC_OPTIONS: Mapping[str, str] = MappingProxyType({
    "MIMALLOC_PURGE_DELAY": "0", "MIMALLOC_ARENA_EAGER_COMMIT": "0"})


def _import_toml_rs() -> Callable[[str], dict[str, Any]] | None:
    """toml-rs's `loads` in TOML 1.0 mode, or None if it is not installed.

    toml-rs allocates through mimalloc, which by default keeps the memory a parse frees
    until its next allocations (after a 19 MB scenario, over 200 MB stay resident for the
    life of the server), and commits a first arena whole (4 MB more, even unused).
    `_MIMALLOC_OPTIONS` turn both off. mimalloc reads its options from the environment when
    it starts, which a first (tiny) parse makes sure of; the variables are then taken away
    again, but for those that were there before us (the user's own settings, kept as is)."""
    ours = [name for name in _MIMALLOC_OPTIONS if name not in os.environ]
    for name in ours:
        os.environ[name] = _MIMALLOC_OPTIONS[name]
    try:
        from toml_rs import loads
    except ImportError:  # not installed: tomllib reads everything, as before
        return None
    else:
        fast = functools.partial(loads, toml_version="1.0.0")
        fast("started = true\n")
        return fast
    finally:
        for name in ours:
            del os.environ[name]


#: The compiled parser (toml-rs, TOML 1.0), or None when it is not installed: then every text
#: is read by tomllib. (Tests set it to None to compare the two.)
fast_loads: Callable[[str], dict[str, Any]] | None = _import_toml_rs()

#: How deeply arrays and inline tables may nest for the compiled parser to read a text. A
#: scenario needs about six levels (a spawn's table, its delays, a category, a max_at pair);
#: 64 levels of the parser's recursion take well under 1 MiB of stack, which even a thread's
#: smallest usual stack has.
NESTING_LIMIT = 64


def reference_document(text: str) -> dict[str, Any]:
    """The document as tomllib reads it (its exceptions as they are: the caller words them)."""
    return tomllib.loads(text)


def fast_document(text: str) -> dict[str, Any] | None:
    """The document as the compiled parser reads it; None when tomllib must read the text
    instead: no compiled parser, a text it might read otherwise (see the module docstring),
    or one it rejects (tomllib says what is wrong)."""
    loads = fast_loads
    if loads is None or text.startswith("\ufeff"):
        return None
    raw = text.encode("utf-8", "surrogatepass")
    if _has_long_number(raw) or nesting_bound(text, NESTING_LIMIT, raw) > NESTING_LIMIT:
        return None
    del raw
    try:
        return _in_pieces(loads, text)
    except Exception:  # noqa: BLE001 - not in pieces (a header inside a string?): whole
        pass
    try:
        return loads(text)
    except Exception:  # noqa: BLE001 - any refusal: tomllib reads it and words the problem
        return None


#: Digits and underscores become "0", every other byte " ": a number's digits, in a row.
_DIGITS = bytes(ord("0") if b in b"0123456789_" else ord(" ") for b in range(256))


def _has_long_number(raw: bytes) -> bool:
    """Whether the (UTF-8) text has a run of digits longer than tomllib reads as an
    integer: a byte translation and a search, cheap on big texts."""
    limit = sys.get_int_max_str_digits()
    return bool(limit) and b"0" * (limit + 1) in raw.translate(_DIGITS)


# --- big texts, in pieces --------------------------------------------------------------------

#: Where a big text may be cut: before a [[process]] header, written as usual.
_HEADER = "\n[[process]]\n"
#: About how long a piece is.
_PIECE = 1 << 17


def _in_pieces(loads: Callable[[str], dict[str, Any]], text: str) -> dict[str, Any]:
    """`loads(text)` of a big scenario, made of the documents of its pieces, each cut just
    before a `[[process]]` header line. Why: toml-rs builds a tree of the whole text in Rust
    memory before it makes the Python objects, 13 bytes for every byte of text; piece by
    piece, that memory is a few MB, used again and again, instead of 250 MB taken fresh
    from the system (20% of the parse's time, and 200 MB of peak RSS, for 19 MB of text).

    The same document, or ValueError: a piece after the first starts with the header, so
    its "process" is an array of tables, continued from the piece before exactly as the
    whole text would continue it; the first piece (what comes before the first such header)
    must not have "process" (an inline array or other forms, which the whole text may well
    refuse to extend), and any other top-level key must be in one piece only (a table
    declared again in another piece is an error of the whole text, or a table extended there
    by another header: both for the whole text to judge). A cut inside a multi-line string
    or array leaves the piece before it unterminated: an error, of the piece."""
    if len(text) < 2 * _PIECE:
        return loads(text)
    if text.startswith(_HEADER[1:]):
        first = 0
    elif (found := text.find(_HEADER)) >= 0:
        first = found + 1
    else:
        return loads(text)
    bounds = [0, first]
    while (cut := text.find(_HEADER, bounds[-1] + _PIECE)) >= 0:
        bounds.append(cut + 1)
    bounds.append(len(text))
    document = loads(text[:first])
    if "process" in document:
        raise ValueError("[[process]] before the first piece: for the whole text to judge")
    processes: list[Any] = []
    document["process"] = processes
    for start, end in zip(bounds[1:], bounds[2:], strict=False):
        piece = loads(text[start:end])
        for key, value in piece.items():
            if key == "process":
                processes.extend(value)
            elif key in document:
                raise ValueError(f"{key!r} is in two pieces: for the whole text to judge")
            else:
                document[key] = value
        del piece
    return document


# --- how deeply values nest, without parsing -------------------------------------------------

#: The characters that decide nesting: brackets, braces, quotes (strings), "#" (comments) and
#: newlines; and what separates two strings in valid TOML (",", "=", "."), so that a run of
#: quotes in the reduced text is one string's quotes: `""` a one-line string, three or more
#: a multi-line string's delimiter. Every other byte is dropped before the scan (in UTF-8
#: every byte of a non-ASCII character is >= 0x80: dropping bytes never makes a kept one).
_KEPT = b"[]{}\"'#\n,=."
_DROPPED = bytes(b for b in range(256) if b not in _KEPT)
#: With multi-line strings about, what separates two quotes matters (`"" ""` is two strings,
#: `""""` opens one): the other bytes become one "x" per run instead of nothing.
_TO_FILLER = bytes.maketrans(_DROPPED, b"x" * len(_DROPPED))
_FILLER_RUN = re.compile(rb"x{2,}")
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")
_QUOTE, _APOSTROPHE, _HASH = ord('"'), ord("'"), ord("#")
#: Where a line begins or ends: outside strings, or inside a multi-line basic ("""...""") or
#: literal ('''...''') string.
_OUTSIDE, _IN_BASIC, _IN_LITERAL = 0, 1, 2


class _Line(NamedTuple):
    """What one line does to nesting: where it ends (`_OUTSIDE` or inside a multi-line
    string), the change of depth over it, the deepest and the shallowest it reaches
    (relative to its start)."""

    ends: int
    change: int
    deepest: int
    shallowest: int


def nesting_bound(text: str, limit: int, raw: bytes | None = None) -> int:
    """A bound on how deeply arrays and inline tables nest in `text`, never below the true
    depth (brackets in strings and comments do not count; table headers do: their one or
    two levels do not matter). May stop counting once above `limit`.

    Cheap on big texts: the text is reduced to the characters that matter (a byte
    translation). Usually no string holds a bracket, and the brackets alone, paired off
    round by round, give the bound (`_plain_nesting`). Otherwise the lines of the reduced
    text repeat a few shapes (`[[]]`, `=""`, `={=""}`), and each distinct shape is scanned
    once; only when some line leaves a value or a string open (a multi-line array or
    string) are the lines followed in order.

    Errors in the text make the bound only larger or cut it where the text stops being TOML
    (a closing bracket with nothing open): a parser stops at its first error, so it never
    nests deeper than the bound up to there. (`raw`: the text in UTF-8, if at hand.)"""
    if "\\" in text:
        # Escapes: "\\" is one backslash and '\"' a quote inside a basic string: neither
        # ends anything. (In literal strings and comments, where backslashes are plain
        # characters, dropping these pairs changes no boundary either.)
        text = text.replace("\\\\", "").replace('\\"', "")
        raw = None
    if raw is None:
        raw = text.encode("utf-8", "surrogatepass")
    reduced = raw.translate(None, _DROPPED)
    # Three quotes in a row: a multi-line string (or two strings side by side, an error).
    multiline = b'"""' in reduced or b"'''" in reduced
    if multiline:
        reduced = _FILLER_RUN.sub(b"x", raw.translate(_TO_FILLER))
    else:  # a quote always opens or closes a one-line string
        bound = _plain_nesting(reduced, limit)
        if bound is not None:
            return bound
    del raw
    lines = reduced.split(b"\n")
    shapes = {shape: _scan(shape, _OUTSIDE, multiline) for shape in set(lines)}
    if all(s.ends == _OUTSIDE and s.change == 0 for s in shapes.values()):
        # every line closes what it opens: lines are independent of each other
        return max((s.deepest for s in shapes.values()), default=0)
    memo: dict[tuple[int, bytes], _Line] = {(_OUTSIDE, k): v for k, v in shapes.items()}
    depth = deepest = 0
    state = _OUTSIDE
    for line in lines:
        scanned = memo.get((state, line))
        if scanned is None:
            scanned = memo[(state, line)] = _scan(line, state, multiline)
        deepest = max(deepest, depth + scanned.deepest)
        if deepest > limit or depth + scanned.shallowest < 0:
            break  # deep enough to refuse, or no longer TOML (parsing stops there)
        depth += scanned.change
        state = scanned.ends
    return deepest


def _plain_nesting(reduced: bytes, limit: int) -> int | None:
    """The nesting of a reduced text without multi-line strings, when it is plain: no
    string holds a bracket, a quote or "#" (they reduce to `""` or `''`), and there is no
    comment. What is left once those strings are dropped is then brackets (and newlines):
    each round of dropping the innermost pairs, "[]" then "{}", takes at most two levels off
    any chain of nested values (`{[]}` goes in one round), so twice the rounds bounds the
    depth. None when the text is not that plain (or the brackets do not pair up), for
    `nesting_bound` to scan line by line."""
    left = reduced.replace(b'""', b"").replace(b"''", b"")
    if b'"' in left or b"'" in left or b"#" in left:
        return None
    left = left.translate(None, b"\n,=.")
    depth = 0
    while left:
        if depth > limit:
            return depth
        shorter = left.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(left):
            return None
        left = shorter
        depth += 2
    return depth


def _scan(line: bytes, state: int, multiline: bool) -> _Line:
    """One reduced line, begun in `state`: TOML's lexing of strings and comments, as far as
    it decides what is inside them (a one-line string left open ends with its line: that is
    an error, where a parser stops). `multiline`: whether three quotes open a multi-line
    string (else the text has none, and the reduction may have put two strings side by
    side)."""
    depth = deepest = shallowest = 0
    i, n = 0, len(line)
    while i < n:
        if state != _OUTSIDE:
            quote = b'"""' if state == _IN_BASIC else b"'''"
            end = line.find(quote, i)
            if end < 0:
                return _Line(state, depth, deepest, shallowest)
            i = end + 3
            for _ in range(2):  # up to two quotes of the content may precede the delimiter
                if i < n and line[i] == quote[0]:
                    i += 1
            state = _OUTSIDE
            continue
        c = line[i]
        if c in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif c in _CLOSE:
            depth -= 1
            shallowest = min(shallowest, depth)
        elif c == _HASH:
            break
        elif c == _QUOTE or c == _APOSTROPHE:
            if multiline and line.startswith(b'"""' if c == _QUOTE else b"'''", i):
                state = _IN_BASIC if c == _QUOTE else _IN_LITERAL
                i += 3
                continue
            end = line.find(c, i + 1)
            if end < 0:
                break
            i = end
        i += 1
    return _Line(state, depth, deepest, shallowest)
