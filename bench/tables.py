"""Targets 4 (memory, scenario load time) and the GET half of target 5 (latency vs table size).

Scenarios are generated here, deterministically, in three shapes:

- "processes": N process tables, one single-threaded process each (pids 1000..), with a few
  counters (cpu delay, utime/stime, read_bytes), written out as JSON: a machine-written
  scenario, as a recording or a generator of machines makes one;
- "population": one [[process]] table with ``count = N`` (TOML): comm with ``{i}``, CPUs round
  robin, a state chosen with weights, counters drawn from ranges and a lognormal;
- "threads": N/100 processes of `threads = 100` each (TOML): the same number of tasks in a
  file a hundred times shorter.

Each is served by `bench/serve_scenario.py` (what `tsemu serve --scenario` does, with
load_scenario and Emulator(...) timed inside), pinned to the server CPU. Measured:

- load time: parse (load_scenario, which also checks and plays the timeline) + build
  (Emulator: build_table and the server). Targets for 100,000 tasks: JSON <= 1 s (reference:
  json.loads of the same file in this process, the parse alone), a population <= 0.5 s,
  threads <= 2 s. (100,000 hand-written [[process]] tables in TOML are no target: such files
  are machine-written, and machines write JSON.)
- memory: the serving process's whole VmRSS after loading and after the GET run below.
  Target <= 200 MB with 100,000 live tasks. Reference: the same server with an empty table.
- GET latency (tsget through the shim, strict request-then-reply, pseudo-random pids of the
  table; three runs, the one with the median mean kept) with 1,000, 10,000 and 100,000 tasks
  (the "processes" shape): it should stay flat; target: the mean at 100k at most 1.25 x the
  mean at 1k. The mean, not the median, because what grows with the table is the tail
  (the cyclic garbage collector's passes over every live object): the helper reports its
  collections while serving.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

from .common import (
    BENCH,
    BenchError,
    Context,
    Line,
    TsemuServer,
    median_run,
    result,
    rss_mb,
    wait_for_control,
)

NAME = "tables"
MEMORY_TARGET_MB = 200.0
LOAD_TARGET_S = 2.0  # (threads)
LATENCY_FLAT = 1.25
FIRST_PID = 1000
THREADS_PER_PROCESS = 100


MACHINE = '[machine]\ncpus = 2\nclock = "virtual"\n'
POPULATION_TARGET_S = 0.5
JSON_TARGET_S = 1.0


def scenario_text(tasks: int, shape: str = "processes") -> tuple[str, str]:
    """The scenario of `tasks` tasks in `shape`, and its file's suffix."""
    if shape == "population":
        return (MACHINE + f"""
[[process]]
count = {tasks}
pid = {FIRST_PID}
comm = "task{{i}}"
cpus = "0-1"
state = {{ distribution = "choice", values = ["sleeping", "running"], weights = [9, 1] }}
delays.cpu = {{ count = [1, 97], total = ["1ms", "89ms"] }}
times = {{ utime = ["1ms", "71ms"], stime = "5ms" }}
io.read_bytes = {{ distribution = "lognormal", median = "4MiB", sigma = 1.0 }}
""", ".toml")
    if shape == "threads":
        parts = [MACHINE]
        for i in range(tasks // THREADS_PER_PROCESS):
            parts.append(
                f'[[process]]\npid = {FIRST_PID + i * THREADS_PER_PROCESS}\ncomm = '
                f'"task{i % 1000}"\nppid = 1\ncpu = {i % 2}\nstate = "sleeping"\n'
                f"threads = {THREADS_PER_PROCESS}\n"
                f'delays.cpu = {{ count = {i % 97 + 1}, total = "{i % 89 + 1}ms" }}\n'
                f'times = {{ utime = "{i % 71 + 1}ms", stime = "{i % 13 + 1}ms" }}\n'
                f"io.read_bytes = {i * 4096}\n")
        return "\n".join(parts), ".toml"
    processes = [
        {"pid": FIRST_PID + i, "comm": f"task{i % 1000}", "ppid": 1, "cpu": i % 2,
         "state": "sleeping",
         "delays": {"cpu": {"count": i % 97 + 1, "total": f"{i % 89 + 1}ms"}},
         "times": {"utime": f"{i % 71 + 1}ms", "stime": f"{i % 13 + 1}ms"},
         "io": {"read_bytes": i * 4096}}
        for i in range(tasks)]
    document = {"machine": {"cpus": 2, "clock": "virtual"}, "process": processes}
    return json.dumps(document, separators=(",", ":")), ".json"


def serve(ctx: Context, name: str, text: str, *, timeout: float, suffix: str = ".toml"
          ) -> tuple[TsemuServer, dict[str, Any]]:
    """The helper server on a generated scenario; returns once it answers, with its load
    report."""
    scenario = ctx.tmp / f"{name}{suffix}"
    scenario.write_text(text)
    sock = ctx.tmp / name / "genl.sock"
    sock.parent.mkdir(exist_ok=True)
    log = sock.parent / "stderr.log"
    with open(log, "wb") as err:
        proc = ctx.spawn([ctx.python, str(BENCH / "serve_scenario.py"), str(scenario),
                          str(sock)], cpus=ctx.placement.server, stderr=err)
    server = TsemuServer(ctx, sock, proc, log)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line.startswith(b"{"):
        server.stop()
        raise BenchError(f"loading {name} ({len(text):,} bytes) failed or did not finish "
                         f"within {timeout} s: {line[:300]!r} {server.errors()}")
    report: dict[str, Any] = json.loads(line)
    wait_for_control(server, 30)
    return server, report


def get_latency(ctx: Context, server: TsemuServer, tasks: int, seconds: float
                ) -> dict[str, Any]:
    argv = [str(ctx.program("tsget")), "-t", str(seconds), "-P", str(FIRST_PID),
            "-c", str(tasks)]
    runs = [ctx.run_program(argv, env=ctx.shim_env(server.socket_path),
                            cpus=ctx.placement.client, timeout=30)
            for _ in range(1 if ctx.quick else 3)]
    return median_run(runs, "mean_us")


def stop_for_gc(server: TsemuServer) -> dict[str, Any]:
    """Stop the helper server (SIGTERM) and read what its garbage collector did while it
    served: {"collections": [gen0, gen1, gen2], "seconds": [...]}, or {} if it said nothing."""
    proc = server.proc
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        return {}
    for row in reversed(out.decode(errors="replace").splitlines()):
        if row.startswith('{"gc"'):
            gc_work: dict[str, Any] = json.loads(row)["gc"]
            return gc_work
    return {}


def run(ctx: Context) -> dict[str, Any]:
    sizes = [200, 1_000] if ctx.quick else [1_000, 10_000, 100_000]
    big = sizes[-1]
    seconds = ctx.scaled(0.7, 0.2)
    load_timeout = ctx.scaled(150.0, 30.0)

    empty, empty_report = serve(ctx, "empty", MACHINE, timeout=load_timeout)
    try:
        baseline_mb = rss_mb(empty.pid)[0]
    finally:
        empty.stop()

    sizes_data = []
    for tasks in sizes:
        text, suffix = scenario_text(tasks)
        json_s = None
        if tasks == big:
            t0 = time.perf_counter()
            json.loads(text)
            json_s = time.perf_counter() - t0
        server, report = serve(ctx, f"p{tasks}", text, timeout=load_timeout, suffix=suffix)
        try:
            if report["tasks"] != tasks:
                raise BenchError(f"the table has {report['tasks']} tasks, not {tasks}")
            latency = get_latency(ctx, server, tasks, seconds)
            rss_now, hwm = rss_mb(server.pid)
            gc_work = stop_for_gc(server)
        finally:
            server.stop()
        sizes_data.append({"tasks": tasks, "bytes": len(text), "json_s": json_s,
                           **report, "rss_after_gets_mb": rss_now, "hwm_after_gets_mb": hwm,
                           "get": latency, "gc": gc_work})
    largest = sizes_data[-1]

    text, suffix = scenario_text(big, "threads")
    t0 = time.perf_counter()
    tomllib.loads(text)
    threads_toml_s = time.perf_counter() - t0
    server, threads = serve(ctx, f"t{big}", text, timeout=load_timeout, suffix=suffix)
    try:
        threads["rss_now_mb"] = rss_mb(server.pid)[0]
    finally:
        server.stop()
    threads.update(bytes=len(text), toml_s=threads_toml_s)

    text, suffix = scenario_text(big, "population")
    server, population = serve(ctx, f"pop{big}", text, timeout=load_timeout, suffix=suffix)
    try:
        if population["tasks"] != big:
            raise BenchError(f"the population has {population['tasks']} tasks, not {big}")
        population["rss_now_mb"] = rss_mb(server.pid)[0]
    finally:
        server.stop()

    def per_task(rss: float, tasks: int) -> str:
        return f"{(rss - baseline_mb) * 1e6 / tasks:,.0f} B/task above the empty table"

    lines = [
        Line("memory.processes", f"RSS, {big:,} tasks as {big:,} processes",
             largest["rss_after_gets_mb"], "MB", target=MEMORY_TARGET_MB, op="<=",
             reference="empty table", reference_value=baseline_mb,
             note=f"{per_task(largest['rss_after_gets_mb'], big)}; peak "
                  f"{largest['hwm_after_gets_mb']:.0f} MB"),
        Line("memory.threads",
             f"RSS, {big:,} tasks as {big // THREADS_PER_PROCESS:,} x {THREADS_PER_PROCESS} "
             "threads", threads["rss_now_mb"], "MB", target=MEMORY_TARGET_MB, op="<=",
             reference="empty table", reference_value=baseline_mb,
             note=f"{per_task(threads['rss_now_mb'], big)}; peak {threads['hwm_mb']:.0f} MB"),
        Line("load.json", f"load {big:,} processes written as JSON (parse+build)",
             largest["parse_s"] + largest["build_s"], "s", target=JSON_TARGET_S, op="<=",
             reference="json.loads alone", reference_value=largest["json_s"],
             note=f"parse {largest['parse_s']:.2f} s + build {largest['build_s']:.2f} s; "
                  f"{largest['bytes'] / 1e6:.1f} MB of JSON"),
        Line("load.population", f"load a population of {big:,} processes (parse+build)",
             population["parse_s"] + population["build_s"], "s", target=POPULATION_TARGET_S,
             op="<=", note=f"parse {population['parse_s']:.2f} s + build "
                           f"{population['build_s']:.2f} s; RSS "
                           f"{population['rss_now_mb']:.0f} MB"),
        Line("load.threads",
             f"load {big // THREADS_PER_PROCESS:,} processes x {THREADS_PER_PROCESS} threads",
             threads["parse_s"] + threads["build_s"], "s", target=LOAD_TARGET_S, op="<=",
             reference="tomllib.loads alone", reference_value=threads_toml_s,
             note=f"parse {threads['parse_s']:.2f} s + build {threads['build_s']:.2f} s"),
    ]
    small, large = sizes_data[0]["get"], largest["get"]
    lines.append(Line(
        "scaling.get_latency", f"GET mean latency, {big:,} vs {sizes[0]:,} tasks",
        large["mean_us"] / small["mean_us"], "x", target=LATENCY_FLAT, op="<=",
        note="mean: " + ", ".join(f"{d['tasks']:,} tasks {d['get']['mean_us']:.0f} us"
                                  for d in sizes_data)))
    for d in sizes_data:
        gc_work = d["gc"]
        gc_note = (f"; gen2 GCs while serving: {gc_work['collections'][2]}, "
                   f"{sum(gc_work['seconds']) * 1000:.0f} ms of GC in all") if gc_work else ""
        lines.append(Line(f"scaling.get_latency.{d['tasks']}",
                          f"GET via shim, {d['tasks']:,} tasks: mean latency",
                          d["get"]["mean_us"], "us",
                          note=f"p50 {d['get']['p50_us']:.0f} us, p99 "
                               f"{d['get']['p99_us']:.0f} us, {d['get']['rate']:,.0f} GET/s; "
                               f"load {d['parse_s'] + d['build_s']:.2f} s, "
                               f"RSS {d['rss_after_gets_mb']:.0f} MB{gc_note}"))
    return result(NAME, lines, baseline_rss_mb=baseline_mb, empty=empty_report,
                  sizes=sizes_data, threads=threads, population=population)


def profile(ctx: Context, res: dict[str, Any], profiler: Any) -> list[Any]:
    """Loading a tenth of the largest "processes" scenario: sampled (load time) and traced
    with tracemalloc (memory): costs per task scale with the size."""
    from .profiling import Capture

    failed = {ln["key"] for ln in res["lines"] if ln["verdict"] == "FAIL"}
    tasks = 1_000 if ctx.quick else 10_000
    text, suffix = scenario_text(tasks)
    path = ctx.tmp / f"prof{tasks}{suffix}"
    path.write_text(text)
    sock = ctx.tmp / "tprof" / "genl.sock"
    sock.parent.mkdir(exist_ok=True)
    helper = [ctx.python, str(BENCH / "serve_scenario.py"), str(path), str(sock),
              "--exit-after-load"]
    captures = []
    if failed & {"load.json", "load.population", "load.threads"}:
        capture, _, _ = profiler.run_command(
            f"loading a {tasks:,}-process scenario (load_scenario + Emulator)", helper,
            rate=500, timeout=120,
            note=f"`bench/serve_scenario.py` on {tasks:,} processes written as JSON, from "
                 "exec to the end of the load (imports included).")
        captures.append(capture)
    if failed & {"memory.processes", "memory.threads"}:
        out = ctx.run_program([*helper, "--tracemalloc"], cpus=ctx.placement.server,
                              timeout=300)
        rows = ["| bytes/task | blocks/task | allocated at |", "|---:|---:|---|"]
        for a in out["allocations"]:
            rows.append(f"| {a['bytes'] / tasks:,.0f} | {a['blocks'] / tasks:.1f} | "
                        f"`{_short(a['where'])}` |")
        capture = Capture(
            f"memory: what {tasks:,} tasks keep alive after loading (tracemalloc)",
            "tracemalloc", Path("-"),
            note=f"Python allocations still alive once load_scenario and Emulator(...) "
                 f"returned: {out['traced_mb']:.1f} MB traced, "
                 f"{out['traced_mb'] * 1e6 / tasks:,.0f} B/task (RSS {out['rss_mb']:.0f} MB). "
                 "Top allocation sites (innermost frame):")
        by_file = ", ".join(f"`{_short(a['where'])}` {a['bytes'] / tasks:,.0f} B"
                            for a in out.get("by_file", []))
        capture.text = "\n".join(rows) + f"\n\nBy file, per task: {by_file}."
        captures.append(capture)
    return captures


def _short(where: str) -> str:
    for marker in ("/site-packages/", "/work/main/", str(BENCH.parent) + "/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where.rsplit("/lib/", 1)[-1]
