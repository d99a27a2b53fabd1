"""Target 2 (exit broadcast) and the broadcast half of target 5 (scaling with listeners).

A `tsemu serve` on an empty two-CPU machine (virtual clock: no timeline of its own) and N
listeners, each a `bench/c/tslisten.c` process through the LD_PRELOAD shim, registered for
CPU 0 and reading as fast as it can (SO_RCVBUFFORCE 8 MiB: an accounting daemon's buffer,
so that a listener that keeps up loses nothing to a burst). The control socket's `storm`
makes processes exit on CPU 0 as fast as the server sends their events, in back-to-back
chunks until about two seconds have passed. Each listener checks the per-CPU sequence
numbers and reports the time of its last event; the rate is the events delivered over the
time from the first storm request to the last event received, so it counts everything
between a `storm` and the listeners' reads. Lost events (a count short of what was sent, a
gap in the sequence numbers, an ENOBUFS) make the line FAIL whatever the rate.

Targets: >= 150,000 exits/s to one listener; >= 400,000 deliveries/s in total to 16 listeners
of one CPU. Reference: one-way throughput of 596-byte datagrams over a socketpair (C), the
same placement. Scaling: 1, 4, 16, 64 listeners; the deliveries per second should not fall
as listeners are added (the event is built once; each listener costs one send).
"""

from __future__ import annotations

import select
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import (
    BenchError,
    Context,
    Line,
    TsemuServer,
    median_run,
    parse_json_output,
    result,
    start_serve,
)

NAME = "broadcast"
ONE_TARGET = 150_000.0
SIXTEEN_TARGET = 400_000.0
#: deliveries/s at each listener count must stay >= this share of the previous count's
SCALING_FLOOR = 0.8
RCVBUF = 8 << 20
SCENARIO = '[machine]\ncpus = 2\nclock = "virtual"\n'


def oneway(ctx: Context, seconds: float) -> dict[str, Any]:
    argv = [str(ctx.program("oneway")), "-t", str(seconds), "-s", "596",
            *ctx.placement.c_args()]
    runs = [ctx.run_program(argv, timeout=30) for _ in range(1 if ctx.quick else 3)]
    return median_run(runs, "rate")


def start_listeners(ctx: Context, server: TsemuServer, count: int, idle: float
                    ) -> list[tuple[subprocess.Popen[bytes], int]]:
    """`count` listeners on CPU 0, each registered (its ACK received) before this returns."""
    env = ctx.shim_env(server.socket_path)
    argv = [str(ctx.program("tslisten")), "-m", "0", "-r", str(RCVBUF), "-i", str(idle),
            "-T", "60"]
    procs = [ctx.spawn(argv, env=env, cpus=ctx.placement.client) for _ in range(count)]
    listeners = []
    deadline = time.monotonic() + 20
    for proc in procs:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline() if ready else b""
        if not line.startswith(b"ready"):
            raise BenchError(f"a listener did not register: {line.decode(errors='replace')!r}")
        listeners.append((proc, int(line.split()[1])))
    ports = {port for _, port in listeners}
    with server.control() as c:
        while True:
            listed = set(c.call("listeners")["listeners"].get("0", []))
            if ports <= listed:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"listeners {sorted(ports - listed)} never showed up")
            time.sleep(0.01)
    return listeners


def storm(server: TsemuServer, seconds: float, first_chunk: int) -> dict[str, Any]:
    """Storms on CPU 0, back to back, until `seconds` have passed; chunks double until one
    takes a quarter of a second."""
    chunk, total, server_seconds, chunks = first_chunk, 0, 0.0, 0
    with server.control() as c:
        start = time.monotonic()
        while True:
            reply = c.call("storm", count=chunk, cpus="0")
            total += reply["exits"]
            server_seconds += reply["seconds"]
            chunks += 1
            if time.monotonic() - start >= seconds:
                break
            if reply["seconds"] < 0.25:
                chunk *= 2
    return {"start": start, "exits": total, "chunks": chunks, "server_seconds": server_seconds,
            "server_rate": total / server_seconds if server_seconds else 0.0}


def paced_storm(server: TsemuServer, seconds: float, rate: float) -> dict[str, Any]:
    """One storm on CPU 0 at `rate` exits a second for `seconds`."""
    with server.control() as c:
        start = time.monotonic()
        reply = c.call("storm", count=int(rate * seconds), cpus="0", rate=rate)
    return {"start": start, "exits": reply["exits"], "chunks": 1,
            "server_seconds": reply["seconds"], "server_rate": reply["rate"]}


def measure(ctx: Context, server: TsemuServer, count: int, seconds: float,
            rate: float | None = None) -> dict[str, Any]:
    """`count` listeners of CPU 0 under storms for `seconds`: back to back (the server as
    fast as it goes), or one paced at `rate` exits a second. A listener slower than the
    storm loses events to ENOBUFS, as on a kernel: those are `overruns`, reported beside the
    figures; a gap no ENOBUFS announced, or listeners that disagree, are `problems`."""
    idle = 1.0
    listeners = start_listeners(ctx, server, count, idle)
    try:
        sent = (storm(server, seconds, first_chunk=max(20, 400 // count)) if rate is None
                else paced_storm(server, seconds, rate))
        reports = []
        for proc, _port in listeners:
            out, err = proc.communicate(timeout=60)
            reports.append(parse_json_output(["tslisten"], out, err))
    finally:
        for proc, _ in listeners:
            ctx.stop(proc)
    end = max(r["t_last"] for r in reports)
    elapsed = end - sent["start"]
    received = sum(r["received"] for r in reports)
    lost = count * sent["exits"] - received
    gaps = sum(r["gaps"] for r in reports)
    enobufs = sum(r["enobufs"] for r in reports)
    overruns = []
    if lost:
        overruns.append(f"{lost} of {count * sent['exits']} deliveries lost to "
                        f"{enobufs} ENOBUFS ({gaps} sequence gaps)")
    problems = []
    unannounced = [r for r in reports if r["gaps"] > r["enobufs"]]
    if unannounced:
        problems.append(f"{len(unannounced)} listener(s) with a gap no ENOBUFS announced")
    if lost and not enobufs:
        problems.append(f"{lost} deliveries lost without ENOBUFS")
    if len({r["first_seq"] for r in reports}) > 1:
        problems.append("listeners saw different first sequence numbers")
    return {
        "listeners": count, "exits": sent["exits"], "chunks": sent["chunks"],
        "seconds": elapsed, "exits_per_s": sent["exits"] / elapsed,
        "deliveries_per_s": received / elapsed, "received": received, "lost": lost,
        "gaps": gaps, "enobufs": enobufs, "server_rate": sent["server_rate"],
        "rcvbuf": reports[0]["rcvbuf"], "problems": problems, "overruns": overruns,
    }


def _lost(r: dict[str, Any]) -> str:
    """What a run lost, and why: none, or a listener slower than an unpaced storm."""
    if not r["overruns"]:
        return f"{r['exits']:,} exits, none lost"
    return ("; ".join(r["overruns"]) + " (the listener was slower than the server, which "
            "then drops as a kernel does)")


def run(ctx: Context) -> dict[str, Any]:
    seconds = ctx.scaled(2.0, 0.3)
    ref = oneway(ctx, ctx.scaled(1.0, 0.2))
    counts = [1, 2] if ctx.quick else [1, 4, 16, 64]
    path: Path = ctx.tmp / "broadcast.toml"
    path.write_text(SCENARIO)
    server = start_serve(ctx, "broadcast", scenario=path)
    try:
        runs = [measure(ctx, server, n, seconds) for n in counts]
    finally:
        server.stop()
    by_count = {r["listeners"]: r for r in runs}
    one = by_count[1]
    many_n = 16 if 16 in by_count else max(by_count)
    many = by_count[many_n]

    lines = [
        Line("broadcast.one", "exits/s delivered to 1 listener", one["exits_per_s"], "/s",
             target=ONE_TARGET, reference="C one-way socketpair 596 B",
             reference_value=ref["rate"], note=_lost(one)),
        Line("broadcast.sixteen", f"deliveries/s to {many_n} listeners of CPU 0",
             many["deliveries_per_s"], "/s", target=SIXTEEN_TARGET,
             reference="C one-way socketpair 596 B", reference_value=ref["rate"],
             note=f"{many['exits']:,} exits x {many_n}; " + _lost(many)),
    ]
    for line, r in ((lines[0], one), (lines[1], many)):
        if r["problems"]:
            line.fail("; ".join(r["problems"]))
    steps = [(b["deliveries_per_s"] / a["deliveries_per_s"], a["listeners"], b["listeners"])
             for a, b in zip(runs, runs[1:], strict=False)]
    worst = min(steps) if steps else (1.0, 1, 1)
    lines.append(Line(
        "scaling.broadcast", f"deliveries/s kept from {counts[0]} to {counts[-1]} listeners",
        worst[0], "x", target=SCALING_FLOOR,
        note="worst step {1}->{2}; deliveries/s: ".format(*worst) + ", ".join(
            f"{r['listeners']}: {r['deliveries_per_s']:,.0f}" for r in runs)))
    for r in runs:
        line = Line(f"scaling.broadcast.{r['listeners']}",
                    f"broadcast, {r['listeners']} listener(s): deliveries/s",
                    r["deliveries_per_s"], "/s", reference="C one-way socketpair 596 B",
                    reference_value=ref["rate"], note=f"{r['exits_per_s']:,.0f} exits/s")
        if r["problems"] or r["overruns"]:
            line.note += "; " + "; ".join(r["problems"] + r["overruns"])
        lines.append(line)
    return result(NAME, lines, placement=ctx.placement.describe(), oneway=ref, runs=runs)


def profile(ctx: Context, res: dict[str, Any], profiler: Any) -> list[Any]:
    """The server during a storm to 1 listener, then to 16."""
    path = ctx.tmp / "broadcast-prof.toml"
    path.write_text(SCENARIO)
    name = "bcprof"
    sock = ctx.tmp / name / "genl.sock"
    sock.parent.mkdir(exist_ok=True)
    argv, cprof = profiler.wrap([*ctx.tsemu(), "serve", "--socket", str(sock), "--admin", "all",
                                 "--scenario", str(path)])
    server = start_serve(ctx, name, argv=argv)
    captures = []
    try:
        for count in ([1, 2] if ctx.quick else [1, 16]):
            listeners = start_listeners(ctx, server, count, idle=1.0)
            with profiler.attach(f"exit broadcast (storm) to {count} listener(s): the tsemu "
                                 "server", server.proc, cprof,
                                 note=f"`storm` on CPU 0 for about two seconds; {count} C "
                                      "listener(s) through the shim.") as capture:
                storm(server, ctx.scaled(2.0, 0.3), first_chunk=max(20, 400 // count))
            captures.append(capture)
            for proc, _ in listeners:
                proc.communicate(timeout=60)
                ctx.stop(proc)
            if cprof is not None:
                break  # cProfile: one capture covers the server's whole life
    finally:
        server.stop()
    for capture in captures:
        capture.finish()
    return captures
