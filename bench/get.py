"""Target 1: TASKSTATS GET round trips, one client, strict request-then-reply, through the shim.

Measured: `bench/c/tsget.c` (plain libc netlink calls) with the LD_PRELOAD shim, asking a
running `tsemu serve` (its default scenario) for one pid again and again, each reply checked.
References, in the same run and the same placement:

- `bench/c/pingpong.c`: a C ping-pong over socketpair(AF_UNIX, SOCK_DGRAM) between two
  processes, 40-byte requests and 596-byte replies. Target: tsemu >= 0.5 x its rate.
- `bench/echo_server.py`: a bare trio server answering each request with a 596-byte datagram,
  asked by the same tsget through the same shim: what trio and the shim alone cost.
- the host kernel's own GET rate: tsget without the shim on AF_NETLINK (skipped, with the
  reason, without root or CONFIG_TASKSTATS).

Each rate is the median of three runs (one in --quick).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from .common import (
    BENCH,
    SKIP,
    BenchError,
    Context,
    Line,
    TsemuServer,
    host_taskstats,
    median_run,
    result,
    skip_line,
    start_serve,
)

NAME = "get"
TARGET_RATIO = 0.5


def _repeat(ctx: Context, argv: list[str], key: str, env: dict[str, str] | None = None,
            cpus: set[int] | None = None) -> dict[str, Any]:
    runs = [ctx.run_program(argv, env=env, cpus=cpus, timeout=30)
            for _ in range(1 if ctx.quick else 3)]
    return median_run(runs, key)


def pingpong(ctx: Context, seconds: float) -> dict[str, Any]:
    argv = [str(ctx.program("pingpong")), "-t", str(seconds), "-q", "40", "-r", "596",
            *ctx.placement.c_args()]
    return _repeat(ctx, argv, "rate")


def tsget(ctx: Context, socket_path: Any, seconds: float, *extra: str) -> dict[str, Any]:
    """The GET client through the shim against the server at `socket_path`: the median of
    its runs."""
    argv = [str(ctx.program("tsget")), "-t", str(seconds), *extra]
    return _repeat(ctx, argv, "rate", env=ctx.shim_env(socket_path),
                   cpus=ctx.placement.client)


def tsget_once(ctx: Context, socket_path: Any, seconds: float, *extra: str) -> dict[str, Any]:
    """One run of the GET client through the shim against the server at `socket_path` (for
    figures that must match what the server spent on them: all its GETs, not a median)."""
    return ctx.run_program([str(ctx.program("tsget")), "-t", str(seconds), *extra],
                           env=ctx.shim_env(socket_path), cpus=ctx.placement.client,
                           timeout=30)


def echo_server(ctx: Context) -> tuple[subprocess.Popen[bytes], Any]:
    path = ctx.tmp / "echo" / "genl.sock"
    path.parent.mkdir(exist_ok=True)
    proc = ctx.spawn([ctx.python, str(BENCH / "echo_server.py"), str(path)],
                     cpus=ctx.placement.server)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        ctx.stop(proc)
        raise BenchError(f"the echo server did not start: {line!r}")
    return proc, path


def pick_pid(server: TsemuServer) -> int:
    """A pid the server's table has: 1 if it is there, else the lowest."""
    with server.control() as c:
        pids = [t["pid"] for t in c.call("ps")["tasks"]]
    if not pids:
        raise BenchError("the default scenario has no task to ask for")
    return 1 if 1 in pids else min(pids)


def run(ctx: Context) -> dict[str, Any]:
    seconds = ctx.scaled(1.0, 0.2)
    ref = pingpong(ctx, seconds)

    proc, echo_path = echo_server(ctx)
    try:
        echo = tsget(ctx, echo_path, seconds, "-f", "0x1f", "-p", "4242")
    finally:
        ctx.stop(proc)

    server = start_serve(ctx, "get")
    try:
        pid = pick_pid(server)
        tsemu = tsget(ctx, server.socket_path, seconds, "-p", str(pid))
    finally:
        server.stop()

    why_not = host_taskstats()
    host = None
    if why_not is None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("LD_PRELOAD", "TSEMU_SOCKET")}
        host = _repeat(ctx, [str(ctx.program("tsget")), "-t", str(seconds)], "rate", env=env,
                       cpus=ctx.placement.client)

    rate = tsemu["rate"]
    lines = [
        Line("get.shim", "GET round trips through the shim", rate, "/s",
             target=TARGET_RATIO * ref["rate"], reference="C socketpair ping-pong",
             reference_value=ref["rate"],
             note=f"p50 {tsemu['p50_us']:.0f} us, p99 {tsemu['p99_us']:.0f} us"),
        Line("get.vs_echo", "GET through the shim vs bare trio echo", rate, "/s",
             reference="trio echo server via shim", reference_value=echo["rate"]),
        Line("get.echo_ceiling", "bare trio echo via shim vs ping-pong", echo["rate"], "/s",
             reference="C socketpair ping-pong", reference_value=ref["rate"],
             note="what trio + the shim allow at best"),
    ]
    if host is not None:
        lines.append(Line("get.vs_host", "GET through the shim vs host kernel", rate, "/s",
                          reference="host kernel GET (C, AF_NETLINK)",
                          reference_value=host["rate"]))
    else:
        lines.append(skip_line("get.vs_host", "GET through the shim vs host kernel",
                               f"host kernel GET: {why_not}"))
    return result(NAME, lines, placement=ctx.placement.describe(), seconds_per_run=seconds,
                  pingpong=ref, echo=echo, tsemu=tsemu, host=host, host_skip=why_not,
                  pid=pid)


def failed(res: dict[str, Any]) -> bool:
    return any(ln["verdict"] == "FAIL" for ln in res["lines"] if ln["verdict"] != SKIP)


def profile(ctx: Context, res: dict[str, Any], profiler: Any) -> list[Any]:
    """The server while one shim client GETs as fast as it can."""
    argv, cprof = profiler.wrap([*ctx.tsemu(), "serve", "--socket",
                                 str(ctx.tmp / "getprof" / "genl.sock"), "--admin", "all"])
    (ctx.tmp / "getprof").mkdir(exist_ok=True)
    server = start_serve(ctx, "getprof", argv=argv)
    try:
        pid = pick_pid(server)
        seconds = ctx.scaled(2.0, 0.5)
        client = ctx.spawn([str(ctx.program("tsget")), "-t", str(seconds + 1.0), "-p", str(pid)],
                           env=ctx.shim_env(server.socket_path), cpus=ctx.placement.client)
        time.sleep(0.2)
        with profiler.attach("GET through the shim: the tsemu server", server.proc, cprof,
                             note="One tsget client (C, LD_PRELOAD shim) doing strict "
                                  "request-then-reply GETs by pid against `tsemu serve`."
                             ) as capture:
            time.sleep(seconds)
        client.communicate(timeout=30)
        ctx.stop(client)
    finally:
        server.stop()
    capture.finish()
    return [capture]
