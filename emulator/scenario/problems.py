"""What is wrong with a scenario, said so that its author can find it.

What lives here: `ScenarioError` (every problem of a file, one line each) and `Problems`, which
collects them while a document is read. Each line names the file, the key path
(``process[2].delays.blkio.total``: indexes count from 0 in file order) and the problem; in a
TOML file, where the entry that path points into begins (``(the entry begins at line 14)``),
found by scanning the text's headers only when there is a problem to place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class ScenarioError(ValueError):
    """A scenario that cannot be used. `problems` holds one line per problem, each naming the
    file, the key path or line, and what is wrong; str() is those lines joined."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects problems as complete lines: file, key path, problem, and where the entry the
    path points into begins in the file (TOML texts only)."""

    def __init__(self, source: str, toml_text: str | None = None) -> None:
        self.source = source
        self._found: list[tuple[int, int, str]] = []  # (entry line or 0, order, line)
        self._text = toml_text
        self._entries: dict[str, int] | None = None  # scanned at the first problem

    @property
    def found(self) -> bool:
        """Whether any problem was found so far."""
        return bool(self._found)

    @property
    def lines(self) -> list[str]:
        """The problems, in the order of the entries they are in (file order)."""
        return [text for _, _, text in sorted(self._found)]

    def add(self, path: str, problem: str) -> None:
        where = f"{path}: " if path else ""
        line = self._entry_line(path)
        suffix = f" (the entry begins at line {line})" if line else ""
        text = f"{self.source}: {where}{problem}{suffix}"
        self._found.append((line or 0, len(self._found), text))

    def _entry_line(self, path: str) -> int | None:
        if self._entries is None:
            self._entries = _entry_lines(self._text) if self._text else {}
        best: tuple[int, int] | None = None
        for key, line in self._entries.items():
            if path == key or path.startswith(key + ".") or path.startswith(key + "["):
                if best is None or len(key) > best[0]:
                    best = (len(key), line)
        return best[1] if best else None

    def raise_if_any(self) -> None:
        if self._found:
            raise ScenarioError(self.lines)


_HEADER = re.compile(r"\s*\[\[\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*\]\]")
_MACHINE_HEADER = re.compile(r"\s*\[\s*machine\s*\]")


def _entry_lines(text: str) -> dict[str, int]:
    """Where each array-of-tables entry begins: {"process[2]": 14, "process[2].thread[0]": 30}.
    (A plain scan of the headers: good enough to point a reader at the right entry.)"""
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    process: str | None = None
    threads = 0
    for number, line in enumerate(text.splitlines(), 1):
        if _MACHINE_HEADER.match(line):
            lines.setdefault("machine", number)
            continue
        match = _HEADER.match(line)
        if not match:
            continue
        name = re.sub(r"\s*\.\s*", ".", match.group(1))
        if name in ("process", "timeline", "generator", "cgroup"):
            key = f"{name}[{counts.get(name, 0)}]"
            counts[name] = counts.get(name, 0) + 1
            lines[key] = number
            if name == "process":
                process, threads = key, 0
        elif name == "process.thread" and process is not None:
            lines[f"{process}.thread[{threads}]"] = number
            threads += 1
    return lines
