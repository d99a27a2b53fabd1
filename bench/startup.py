"""Target 3: `tsemu serve` on its default scenario answers its first GET within 0.3 s.

Each run starts `tsemu serve` (the console script, on a fresh socket, pinned to the server
CPU) and, from the moment just before the exec, polls with a native client (a Unix datagram
socket bound in the server's ports directory, speaking netlink bytes built by tsemu.wire, no
shim): as soon as the ports directory exists it sends a TASKSTATS GET for a pid of the default
scenario, resending every 20 ms until a GET reply (the family's type, 596 bytes) comes back.
The figure is the median of 10 runs (2 in --quick). Reference: the same measurement for the
bare trio echo server (bench/echo_server.py), i.e. what starting Python and trio costs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import BENCH, BenchError, Context, Line, median, result

NAME = "startup"
TARGET_S = 0.3


def first_reply(path: Path, request: bytes, accept: Callable[[bytes], bool],
                proc: subprocess.Popen[Any], timeout: float) -> float:
    """The monotonic time of the first accepted reply from the server at `path`."""
    from tsemu.emulator.shell.addressing import bind_port, ports_dir

    ports = ports_dir(path)
    sock: socket.socket | None = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"the server exited ({proc.returncode}) before answering")
            if sock is None:
                if not ports.is_dir():
                    time.sleep(0.001)
                    continue
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    bind_port(sock, path)
                except OSError:
                    sock.close()
                    sock = None
                    time.sleep(0.001)
                    continue
            try:
                sock.sendto(request, str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.001)
                continue
            sock.settimeout(0.02)
            try:
                while True:
                    data = sock.recv(65536)
                    if accept(data):
                        return time.monotonic()
            except (TimeoutError, BlockingIOError):
                continue
        raise BenchError(f"no reply within {timeout} s")
    finally:
        if sock is not None:
            name = sock.getsockname()
            sock.close()
            if isinstance(name, str) and name:
                Path(name).unlink(missing_ok=True)


def once(ctx: Context, argv: list[str], path: Path, request: bytes,
         accept: Callable[[bytes], bool], env: dict[str, str] | None = None) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    proc = ctx.spawn(argv, cpus=ctx.placement.server, stdout=subprocess.DEVNULL, env=env)
    try:
        return first_reply(path, request, accept, proc, timeout=30) - t0
    finally:
        ctx.stop(proc)


def tsemu_probe() -> tuple[bytes, Callable[[bytes], bool], int]:
    """A GET for a pid of the default scenario, and the test of its reply."""
    from tsemu.emulator.scenario import default_scenario
    from tsemu.wire import encode_taskstats_get

    scenario = default_scenario()
    family = scenario.machine.family_id
    pids = [p.pid for p in scenario.processes]
    pid = 1 if 1 in pids else min(pids)
    request = encode_taskstats_get(family, pid=pid, seq=7)

    def accept(data: bytes) -> bool:
        return len(data) >= 20 and int.from_bytes(data[4:6], "little") == family

    return request, accept, pid


def run(ctx: Context) -> dict[str, Any]:
    n = 2 if ctx.quick else 10
    request, accept, pid = tsemu_probe()

    def echo_ok(data: bytes) -> bool:
        return len(data) == 596

    echo = [once(ctx, [ctx.python, str(BENCH / "echo_server.py"), str(ctx.tmp / f"e{i}" / "s")],
                 ctx.tmp / f"e{i}" / "s", request, echo_ok) for i in range(n)]
    runs = []
    for i in range(n):
        path = ctx.tmp / f"s{i}" / "genl.sock"
        runs.append(once(ctx, [*ctx.tsemu(), "serve", "--socket", str(path), "--admin", "all"],
                         path, request, accept))
    measured = median(runs)
    lines = [Line("startup.first_get", f"start-up to first GET (median of {n})", measured, "s",
                  target=TARGET_S, op="<=", reference="bare trio echo server start-up",
                  reference_value=median(echo),
                  note=f"runs {min(runs):.3f}-{max(runs):.3f} s")]
    return result(NAME, lines, runs=runs, echo_runs=echo, pid=pid)


IMPORTS_SHOWN = 12


def _imports(stderr: bytes) -> list[tuple[str, float]]:
    """Top-level imports by cumulative time (python -X importtime), in seconds."""
    out = []
    for row in stderr.decode(errors="replace").splitlines():
        if not row.startswith("import time:") or "|" not in row:
            continue
        parts = row[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2]
        if name.startswith(" ") and not name.startswith("  "):  # a top-level import
            out.append((name.strip(), int(parts[1]) / 1e6))
    return sorted(out, key=lambda x: -x[1])[:IMPORTS_SHOWN]


def profile(ctx: Context, res: dict[str, Any], profiler: Any) -> list[Any]:
    """`tsemu serve` from its exec to its first GET answer, sampled at 1 kHz, and its
    imports by cumulative time."""
    request, accept, _ = tsemu_probe()
    path = ctx.tmp / "startprof" / "genl.sock"
    path.parent.mkdir(exist_ok=True)
    argv = [*ctx.tsemu(), "serve", "--socket", str(path), "--admin", "all"]

    def until(proc: subprocess.Popen[Any]) -> None:
        first_reply(path, request, accept, proc, timeout=30)

    capture, _, stderr = profiler.run_command(
        "start-up: `tsemu serve` from exec to its first GET answer", argv,
        env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"), rate=1000, timeout=30, until=until,
        note="Sampled from the exec until the first GET was answered (then SIGTERM, so the "
             "last samples are the shutdown); with PYTHONPROFILEIMPORTTIME=1, which slows "
             "imports a little.")
    rows = _imports(stderr)
    if rows:
        capture.note += "\n\nSlowest top-level imports (cumulative, -X importtime): " + \
            ", ".join(f"`{name}` {secs * 1000:.0f} ms" for name, secs in rows) + "."
    return [capture]
