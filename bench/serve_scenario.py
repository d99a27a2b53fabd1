"""Helper of the table benchmarks: `tsemu serve --scenario` with its loading timed.

    python bench/serve_scenario.py SCENARIO SOCKET [--exit-after-load] [--tracemalloc]

Does what `tsemu serve --scenario SCENARIO --admin all --no-proc-view` does (load_scenario,
then Emulator, inside `loading_for_good`, then run until SIGTERM or SIGINT), and prints one
JSON line once loaded: {"parse_s": load_scenario's time, "build_s": Emulator(...)'s
(build_table and the server), "tasks": the table's size, "rss_mb", "hwm_mb": this process's
VmRSS and VmHWM}, and when it stops, a second one: {"gc": {"collections": [per generation],
"seconds": [per generation]}}, the cyclic garbage collector's work while serving (after the
load).
--tracemalloc traces the load and adds "allocations": the top allocation sites still alive
after it (file:line, bytes, blocks); --exit-after-load stops there.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


def rss() -> tuple[float, float]:
    values = {}
    with open("/proc/self/status") as f:
        for row in f:
            key, _, rest = row.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024 / 1e6
    return values["VmRSS"], values["VmHWM"]


def main() -> None:
    scenario_path, socket_path = Path(sys.argv[1]), Path(sys.argv[2])
    trace = "--tracemalloc" in sys.argv
    import trio

    from tsemu.emulator.scenario import load_scenario
    from tsemu.emulator.shell.permissions import AdminPolicy
    from tsemu.emulator.shell.runner import Emulator, loading_for_good

    if trace:
        import tracemalloc

        tracemalloc.start(1)
    t0 = time.perf_counter()
    with loading_for_good():  # (as `tsemu serve` loads)
        scenario = load_scenario(scenario_path)
        t1 = time.perf_counter()
        # (without the /proc view: these benchmarks measure the table and the kernel model;
        # a 100,000-process view is written in the background for seconds after the server
        # listens, on tmpfs about 85 us a process, and would be measured with them)
        emulator = Emulator(scenario, socket_path, admin=AdminPolicy.parse("all"),
                            proc_view=False)
        del scenario
    t2 = time.perf_counter()
    rss_mb, hwm_mb = rss()
    report: dict[str, Any] = {"parse_s": t1 - t0, "build_s": t2 - t1,
                              "tasks": len(emulator.table), "rss_mb": rss_mb, "hwm_mb": hwm_mb}
    if trace:
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stats = snapshot.statistics("lineno")
        report["traced_mb"] = sum(s.size for s in stats) / 1e6
        report["allocations"] = [
            {"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
             "bytes": s.size, "blocks": s.count} for s in stats[:15]]
        report["by_file"] = [
            {"where": s.traceback[0].filename, "bytes": s.size, "blocks": s.count}
            for s in snapshot.statistics("filename")[:8]]
    print(json.dumps(report), flush=True)
    if "--exit-after-load" in sys.argv:
        return
    collections, seconds, started = [0, 0, 0], [0.0, 0.0, 0.0], [0.0]

    def gc_callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            collections[info["generation"]] += 1
            seconds[info["generation"]] += time.perf_counter() - started[0]

    gc.callbacks.append(gc_callback)

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda task_status: emulator.run(task_status=task_status))
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(serve)
    print(json.dumps({"gc": {"collections": collections, "seconds": seconds}}), flush=True)


if __name__ == "__main__":
    main()
