"""Running real netlink clients against tsemu (through the LD_PRELOAD shim) and against the
host kernel, from pytest-trio tests whose tsemu server runs in the same trio loop.

The clients are separate processes, so the server keeps serving while a test awaits them.
Outputs are compared by *shape* where values legitimately differ between the two (pids,
times, counters): `shape` keeps every `key=` and drops the values.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.shim import SHIM_ENV, ShimNotBuilt, shim_environment, shim_path

CLIENTS = Path(__file__).resolve().parent
REPO = CLIENTS.parent.parent
#: What the clients are compiled with: what the issue asks for (and what makes glibc route
#: recv() and read() through __recv_chk and __read_chk).
CFLAGS = ("-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Wextra", "-Werror", "-pthread")


def shim_library() -> Path:
    """The built shim; fails the test (with how to build it) when missing or out of date."""
    try:
        library = shim_path()
    except ShimNotBuilt as exc:
        pytest.fail(str(exc))
    sources = sorted((REPO / "shim").glob("*.[ch]"))
    if not os.environ.get(SHIM_ENV):
        newer = [s for s in sources if s.stat().st_mtime > library.stat().st_mtime]
        if newer:
            pytest.fail(f"{library} is older than {newer[0]}: rebuild it with `pip install -e .`")
    return library


def _compiler() -> str:
    """$CC, else cc or gcc; skips the test when there is none."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.skip("no C compiler (cc, gcc) to build the test clients")
    return compiler


def compile_client(source: Path, outdir: Path) -> Path:
    """`source` compiled with CFLAGS into `outdir`; skips when there is no C compiler."""
    binary = outdir / source.stem
    done = subprocess.run([_compiler(), *CFLAGS, "-o", str(binary), str(source)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.fail(f"compiling {source.name} failed:\n{done.stderr}")
    return binary


def compile_static(source: Path, outdir: Path, *flags: str) -> Path:
    """`source` linked -static (with `flags`, -DRAW say) into `outdir`: a client the
    LD_PRELOAD shim cannot reach. Skips when there is no compiler or no static libc."""
    binary = outdir / source.stem
    done = subprocess.run([_compiler(), "-static", *flags, "-O2", "-o", str(binary),
                           str(source)], capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot link {source.name} -static (libc6-dev's libc.a?):\n{done.stderr}")
    return binary


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """End `proc` if it runs still: SIGTERM, then SIGKILL when it has not ended within
    `timeout` seconds; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def host_env() -> dict[str, str]:
    """This environment without anything that would load the shim or name a server."""
    return {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "TSEMU_SOCKET", "TSEMU_DEBUG")}


def shim_env(socket_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a client that talks to the tsemu server at `socket_path`."""
    shim_library()
    return {**shim_environment(socket_path, base=host_env()), **extra}


async def run(argv: list[str], env: Mapping[str, str], *, stdin: bytes = b"",
              timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    """Run a client to completion, capturing stdout and stderr (the exit status is not
    checked: tests assert it)."""
    with trio.fail_after(timeout):
        result: subprocess.CompletedProcess[bytes] = await trio.run_process(
            argv, stdin=stdin, capture_stdout=True, capture_stderr=True, env=dict(env),
            check=False)
        return result


def lines(output: bytes) -> list[str]:
    return output.decode(errors="replace").splitlines()


def shape(text_lines: list[str]) -> list[str]:
    """Each line with its values dropped: `pid=12 comm=x` -> `pid= comm=`."""
    return [re.sub(r"=\S*", "=", line) for line in text_lines]


class Running:
    """A client process still running, whose output a test reads line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.seen: list[str] = []
        self._buffer = b""

    async def line(self, timeout: float = 10.0) -> str:
        """The next line of stdout; EOFError when the client closed it."""
        assert self.process.stdout is not None
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(65536)
                if not chunk:
                    raise EOFError(f"the client ended its output; so far: {self.seen}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        text = raw.decode(errors="replace")
        self.seen.append(text)
        return text

    async def until(self, matches: Callable[[str], bool], timeout: float = 10.0) -> list[str]:
        """Lines up to and including the first one that `matches`."""
        got = []
        with trio.fail_after(timeout):
            while True:
                got.append(await self.line())
                if matches(got[-1]):
                    return got

    async def rest(self, timeout: float = 10.0) -> list[str]:
        """Every line until the client ends its output."""
        got = []
        with trio.fail_after(timeout):
            while True:
                try:
                    got.append(await self.line())
                except EOFError:
                    return got

    async def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(data)

    async def wait(self, timeout: float = 10.0) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()


@asynccontextmanager
async def running(argv: list[str], env: Mapping[str, str]) -> AsyncIterator[Running]:
    """A client started with pipes on stdin and stdout; killed if still running at the end."""
    process = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, env=dict(env))
    try:
        yield Running(process)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    await stream.aclose()


async def wait_for_listeners(server: Any, count: int = 1, timeout: float = 5.0) -> None:
    """Until `count` ports are registered as exit listeners on some CPU of `server`."""
    with trio.fail_after(timeout):
        while max((len(p) for p in server.listeners.listeners().values()), default=0) < count:
            await trio.sleep(0.01)


async def broadcast(server: Any, reports: Any) -> None:
    """Deliver exit reports (one or a list) to the server's listeners, and wait for it."""
    for report in reports if isinstance(reports, list) else [reports]:
        await server.broadcast(report)
    await server.settle()


def require_host_taskstats() -> None:
    """Skip (with the reason) unless the host kernel has TASKSTATS and we may use it."""
    from ..hostkernel import require_host_taskstats as probe

    probe().close()
