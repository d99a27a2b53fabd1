"""Where the time goes: sampling profiles of tsemu's processes while a benchmark drives them.

py-spy (from PyPI) when it is installed beside this interpreter or on PATH: it samples a
running server from outside (`attach`) or a command from its start (`run_command`), with
idle samples kept (`--idle`), so a profile also tells how much of the wall time the server
spent waiting in epoll. Without py-spy (or with BENCH_PROFILER=cprofile), cProfile: the
server command runs under `python -m cProfile` from its start (`wrap`), and its statistics
are read once it has stopped (they then include its start-up).

A `Capture` turns what was recorded into markdown tables: the functions that take the most
samples themselves (self), the functions most often on the stack (inclusive, without the
trunk every sample shares), and self time by package.
"""

from __future__ import annotations

import io
import os
import pstats
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import Context

#: Leaf frames that mean "the event loop is waiting for something to happen".
IDLE_LEAVES = ("EpollIOManager.get_events (trio/_core/_io_epoll.py)",
               "BaseSelector.select (selectors.py)", "EpollSelector.select (selectors.py)")


def find_pyspy(python: str) -> str | None:
    beside = Path(python).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def _function(frame: str) -> str:
    """'func (file.py:123)' -> 'func (file.py)'."""
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})"


def _package(function: str) -> str:
    where = function.rpartition(" (")[2].rstrip(")")
    head = where.split("/", 1)[0]
    return head if "/" in where else where


@dataclass
class Capture:
    """What one profiling session recorded."""

    title: str
    tool: str
    path: Path
    #: py-spy: (stack root first, count); filled by `finish`
    stacks: list[tuple[tuple[str, ...], int]] = field(default_factory=list)
    note: str = ""
    error: str = ""
    #: cProfile: the statistics as text; filled by `finish`
    text: str = ""

    def finish(self) -> None:
        """Read what was recorded (call it once the profiled process has stopped)."""
        if not self.path.exists():
            return
        if self.tool == "cProfile":
            self.text = self._pstats(12)
            return
        self.stacks = []
        for row in self.path.read_text(errors="replace").splitlines():
            text, _, count = row.rpartition(" ")
            if not text or not count.isdigit():
                continue
            stack = tuple(text.split(";"))
            # only the main thread: trio's worker threads wait in their own stacks
            if "(threading.py" in stack[0]:
                continue
            self.stacks.append((stack, int(count)))

    # -- summaries -------------------------------------------------------------------------

    def top(self, n: int = 12) -> dict[str, Any]:
        """Self and inclusive time of the top functions (py-spy), as fractions of samples."""
        total = sum(c for _, c in self.stacks)
        idle = sum(c for s, c in self.stacks if _function(s[-1]) in IDLE_LEAVES)
        self_time: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        packages: Counter[str] = Counter()
        for stack, count in self.stacks:
            leaf = _function(stack[-1])
            if leaf in IDLE_LEAVES:
                continue
            self_time[leaf] += count
            packages[_package(leaf)] += count
            for fn in {_function(f) for f in stack}:
                inclusive[fn] += count
        busy = max(total - idle, 1)
        trunk = {fn for fn, c in inclusive.items() if c >= 0.97 * busy}
        return {
            "samples": total, "idle": idle / total if total else 0.0,
            "self": [(fn, c / busy) for fn, c in self_time.most_common(n)],
            "inclusive": [(fn, c / busy) for fn, c in inclusive.most_common(n + len(trunk))
                          if fn not in trunk][:n],
            "packages": [(p, c / busy) for p, c in packages.most_common(8)],
        }

    def markdown(self, n: int = 12) -> str:
        out = [f"### {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        if self.error:
            return "\n".join(out + [f"(no profile: {self.error})", ""])
        if self.tool != "py-spy":
            return "\n".join(out + [self.text or f"({self.tool} recorded nothing)", ""])
        t = self.top(n)
        if not t["samples"]:
            return "\n".join(out + ["(no samples recorded)", ""])
        out += [f"py-spy, {t['samples']} samples; {t['idle']:.0%} of them idle (waiting in "
                "epoll); the shares below are of the busy samples.", "",
                "| self | function | | inclusive | function |", "|---:|---|---|---:|---|"]
        rows = max(len(t["self"]), len(t["inclusive"]))
        for i in range(rows):
            s = t["self"][i] if i < len(t["self"]) else ("", 0.0)
            c = t["inclusive"][i] if i < len(t["inclusive"]) else ("", 0.0)
            out.append(f"| {s[1]:.1%} | `{s[0]}` | | {c[1]:.1%} | `{c[0]}` |" if s[0] else
                       f"| | | | {c[1]:.1%} | `{c[0]}` |")
        out += ["", "Self time by package: " + ", ".join(
            f"{p} {share:.0%}" for p, share in t["packages"]), ""]
        return "\n".join(out)

    def _pstats(self, n: int) -> str:
        if not self.path.exists():
            return "(cProfile wrote no statistics)"
        buf = io.StringIO()
        stats = pstats.Stats(str(self.path), stream=buf)
        stats.strip_dirs().sort_stats("tottime").print_stats(n)
        stats.sort_stats("cumulative").print_stats(n)
        return "cProfile (includes the process's start-up):\n\n```\n" + \
            buf.getvalue().strip() + "\n```"

    def as_dict(self, n: int = 12) -> dict[str, Any]:
        data: dict[str, Any] = {"title": self.title, "tool": self.tool, "note": self.note,
                                "error": self.error}
        if self.tool == "py-spy" and self.stacks:
            data.update(self.top(n))
        elif self.text:
            data["text"] = self.text
        return data


class Profiler:
    """Profiles for one benchmark run."""

    def __init__(self, ctx: Context, rate: int = 400) -> None:
        self.ctx = ctx
        self.pyspy = None if os.environ.get("BENCH_PROFILER") == "cprofile" else \
            find_pyspy(ctx.python)
        self.tool = "py-spy" if self.pyspy else "cProfile"
        self.rate = rate
        self._n = 0

    def _path(self, suffix: str) -> Path:
        self._n += 1
        return self.ctx.tmp / f"profile{self._n}.{suffix}"

    def wrap(self, argv: Sequence[str]) -> tuple[list[str], Path | None]:
        """The command to start a server with so that it can be profiled: unchanged for
        py-spy (it attaches later), under cProfile otherwise."""
        if self.pyspy:
            return list(argv), None
        out = self._path("prof")
        script = argv[0] if argv[0].endswith(("tsemu", ".py")) else None
        if script is None:  # python -m module ...
            return [self.ctx.python, "-m", "cProfile", "-o", str(out), *argv[2:]], out
        return [self.ctx.python, "-m", "cProfile", "-o", str(out), *argv], out

    @contextmanager
    def attach(self, title: str, proc: subprocess.Popen[Any], cprofile_out: Path | None = None,
               note: str = "") -> Iterator[Capture]:
        """Sample `proc` for the duration of the block (py-spy); with cProfile, the capture
        is read when `finish()` is called after the server stopped."""
        if not self.pyspy:
            capture = Capture(title, "cProfile", cprofile_out or self._path("prof"), note=note)
            yield capture
            return
        capture = Capture(title, "py-spy", self._path("txt"), note=note)
        spy = subprocess.Popen(
            [self.pyspy, "record", "--pid", str(proc.pid), "--rate", str(self.rate), "--idle",
             "--format", "raw", "-o", str(capture.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)  # py-spy attaches
        try:
            yield capture
        finally:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
            try:
                _, err = spy.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            if not capture.path.exists():
                capture.error = (err or b"").decode(errors="replace").strip()[-300:] or \
                    "py-spy wrote nothing"
            capture.finish()

    def run_command(self, title: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
                    timeout: float = 120.0, rate: int | None = None, note: str = "",
                    until: Callable[[subprocess.Popen[Any]], None] | None = None,
                    ) -> tuple[Capture, bytes, bytes]:
        """Profile a command from its start to its end; (capture, stdout, stderr). With
        `until`, the command is ended (SIGTERM) once `until(process)` returns; `process` is
        the profiler's process (py-spy), or the command itself under cProfile."""
        if self.pyspy:
            capture = Capture(title, "py-spy", self._path("txt"), note=note)
            cmd = [self.pyspy, "record", "--rate", str(rate or self.rate), "--idle",
                   "--format", "raw", "-o", str(capture.path), "--", *argv]
        else:
            capture = Capture(title, "cProfile", self._path("prof"), note=note)
            cmd = [self.ctx.python, "-m", "cProfile", "-o", str(capture.path), *argv]
        out_path, err_path = self._path("out"), self._path("err")
        with open(out_path, "wb") as out_file, open(err_path, "wb") as err_file:
            proc = self.ctx.spawn(cmd, env=env, cpus=self.ctx.placement.server,
                                  stdout=out_file, stderr=err_file)
        try:
            if until is not None:
                try:
                    until(proc)
                finally:
                    targets = children(proc.pid) if self.pyspy else [proc.pid]
                    for pid in targets:
                        try:
                            os.kill(pid, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            capture.error = f"did not finish within {timeout} s"
        finally:
            self.ctx.stop(proc)
        capture.finish()
        return capture, out_path.read_bytes(), err_path.read_bytes()


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return found
