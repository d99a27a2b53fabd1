"""What `serve --pcap` costs: the server with a capture against the same server without.

The target (issue 16): a capture never slows the server by more than 10%. Two servers run
side by side, one capturing into the scratch directory and one not, and the runs alternate
between them (without, with, without, with, ...): each round is a run without and a run with,
and the figure is the median of the rounds' ratios (a round's two runs meet the same load of
the shared VM; nine rounds for GET, whose one-second runs move by ±8% from one to the next,
three for the longer, steadier storms).

What is compared: the server's work per message, as messages handled per second of the
server process's own CPU time (utime + stime from /proc), with the busy poll off (it spends
CPU waiting, by design, and would blur the figure). On this shared 2-CPU VM the wall-clock
rates move by more than 10% from one second to the next with the other sessions' load, so a
wall-clock ratio cannot resolve a 10% bound; CPU time per message can, and a server that
spends at most 10% more CPU per message loses at most 10% of its top rate. The wall-clock
rates and the writer process's CPU (it builds the pcap records on its own, ideally idle, CPU)
are reported beside the target as INFO.

The two hot paths a capture touches:
- GET round trips through the shim (`tsget`): every request and every reply captured;
- exit broadcast to one listener of CPU 0 (`storm` through the control socket, `tslisten`
  reading): every event captured once per listener.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from .broadcast import SCENARIO, measure
from .common import Context, Line, TsemuServer, result, start_serve
from .get import pick_pid, tsget_once

NAME = "capture"
#: a capture may cost the server at most this share of its speed
TARGET_RATIO = 0.90
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _serve(ctx: Context, name: str, capture: bool) -> TsemuServer:
    socket_path = ctx.tmp / name / "genl.sock"
    scenario = ctx.tmp / f"{name}.toml"
    scenario.write_text(SCENARIO + '\n[[process]]\npid = 1\ncomm = "init"\n')
    argv = [*ctx.tsemu(), "serve", "--socket", str(socket_path), "--admin", "all",
            "--scenario", str(scenario), "--no-proc-view", "--busy-poll", "0"]
    if capture:
        argv += ["--pcap", str(ctx.tmp / f"{name}.pcap"), "--pcap-rotate", "256MiB",
                 "--pcap-keep", "2", "--force"]
    return start_serve(ctx, name, argv=argv)


def run(ctx: Context) -> dict[str, Any]:
    seconds = ctx.scaled(1.0, 0.3)
    rounds = {"get": 1 if ctx.quick else 9, "broadcast": 1 if ctx.quick else 3}
    plain = _serve(ctx, "plain", capture=False)
    captured = _serve(ctx, "captured", capture=True)
    writers = _children(captured.pid)
    runs: dict[str, dict[bool, list[dict[str, float]]]] = {
        "get": {False: [], True: []}, "broadcast": {False: [], True: []}}
    problems: list[str] = []
    try:
        pid = pick_pid(plain)
        for kind in ("get", "broadcast"):
            for _ in range(rounds[kind]):
                for capture, server in ((False, plain), (True, captured)):
                    cpu = _cpu_seconds(server.pid)
                    writer = sum(_cpu_seconds(w) for w in writers) if capture else 0.0
                    if kind == "get":
                        done = tsget_once(ctx, server.socket_path, seconds, "-p", str(pid))
                        messages, wall = 2 * done["gets"], done["rate"]
                    else:
                        done = measure(ctx, server, 1, ctx.scaled(2.0, 0.3))
                        messages, wall = done["received"], done["exits_per_s"]
                        problems += [f"{'with' if capture else 'without'} --pcap: {p}"
                                     for p in done["problems"]]
                    spent = _cpu_seconds(server.pid) - cpu
                    writer = (sum(_cpu_seconds(w) for w in writers) - writer) if capture else 0
                    runs[kind][capture].append({"per_cpu_s": messages / spent if spent else 0.0,
                                                "wall": wall, "writer_cpu": writer,
                                                "server_cpu": spent})
    finally:
        plain.stop()
        captured.stop()
    lines = []
    for kind, name in (("get", "GET: messages per server CPU-second"),
                       ("broadcast", "exits to 1 listener: per server CPU-second")):
        def med(capture: bool, key: str, kind: str = kind) -> float:
            return statistics.median(r[key] for r in runs[kind][capture])

        ratios = [w["per_cpu_s"] / o["per_cpu_s"] if o["per_cpu_s"] else 0.0
                  for o, w in zip(runs[kind][False], runs[kind][True], strict=True)]
        lines.append(Line(f"capture.{kind}", f"{name}, --pcap / without",
                          statistics.median(ratios), "x", target=TARGET_RATIO,
                          note=f"median of {rounds[kind]} rounds ({min(ratios):.2f}-"
                               f"{max(ratios):.2f}); {med(True, 'per_cpu_s'):,.0f} vs "
                               f"{med(False, 'per_cpu_s'):,.0f} per CPU-s"))
        lines.append(Line(f"capture.{kind}.wall", f"{kind}: wall-clock rate with --pcap",
                          med(True, "wall"), "/s", reference="the same without --pcap",
                          reference_value=med(False, "wall"),
                          note=f"writer process CPU {med(True, 'writer_cpu'):.2f} s vs server "
                               f"{med(True, 'server_cpu'):.2f} s per run"))
    if problems:  # lost events: the broadcast runs did not measure what they should
        lines[2].fail("; ".join(problems))
    return result(NAME, lines, runs=runs)
