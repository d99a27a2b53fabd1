"""Run every benchmark, print one line per target, write bench/results/.

    python -m bench [--quick] [--only get,broadcast,...] [--no-profile]
                    [--placement split|same|free] [--out DIR]

Lines: `PASS`/`FAIL` for a target (measured, target, and the ratio to the reference measured
in the same run), `INFO` for a figure reported beside them, `SKIP` with the reason. Written:
results.json (every figure, the machine), results.png (a chart; needs matplotlib) and, when a
target failed and profiling is on, profile.md (py-spy or cProfile of the failing hot paths;
bench/PROFILE.md is the analysis of it). The exit status is 0 whether targets pass or not
(1 only when a benchmark could not run), so that `make bench` always reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from . import (
    broadcast,
    capture_cost,
    codec,
    fixture,
    get,
    listen,
    startup,
    supervisor,
    tables,
)
from .common import FAIL, Context, Placement, render, result
from .common import Line as _Line

BENCHMARKS: tuple[ModuleType, ...] = (get, broadcast, listen, startup, tables, fixture,
                                      capture_cost, supervisor)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    model = row.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"python": platform.python_version(), "kernel": platform.release(),
            "processor": model or platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                               1)}


def codec_result(quick: bool) -> dict[str, Any]:
    """The codec micro-benchmark (bench/codec.py), as a result with one INFO line."""
    if quick:
        import timeit

        assert codec.construct_only(7, 99) == codec.fast_path(7, 99)
        slow = min(timeit.repeat(lambda: codec.construct_only(7, 99), number=20, repeat=2)) / 20
        fast = min(timeit.repeat(lambda: codec.fast_path(7, 99), number=500, repeat=2)) / 500
        raw: dict[str, Any] = {"name": "encode v16 GET reply", "construct_us": slow * 1e6,
                               "fast_us": fast * 1e6, "speedup": slow / fast}
    else:
        raw = codec.run()
    line = _Line("codec.encode", "encode one v16 GET reply (derived codec)", raw["fast_us"],
                 "us", reference="construct alone", reference_value=raw["construct_us"])
    return result("codec", [line], **{k: v for k, v in raw.items() if k != "name"})


def cpu_busy(seconds: float = 0.5) -> float:
    """The share of all CPUs' time spent busy over `seconds` (from /proc/stat): what other
    processes take before the run starts."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return idle, sum(fields)

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def failed_keys(res: dict[str, Any]) -> list[str]:
    return [ln["key"] for ln in res["lines"] if ln["verdict"] == FAIL]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny configuration (seconds, not minutes): a smoke test")
    parser.add_argument("--only", default="",
                        help="comma-separated benchmarks: " +
                             ",".join(b.NAME for b in BENCHMARKS) + ",codec")
    parser.add_argument("--no-profile", action="store_true",
                        help="do not profile the hot paths of failing targets")
    parser.add_argument("--placement", choices=("split", "same", "free"), default="split",
                        help="split: servers on one CPU, clients on another (default); "
                             "same: all on one CPU; free: unpinned")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    started = time.monotonic()
    busy_before = cpu_busy()
    args.out.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    broken = 0
    with Context(quick=args.quick, placement=Placement.choose(args.placement),
                 profile=not args.no_profile, out=args.out) as ctx:
        print(f"tsemu benchmarks ({'quick' if ctx.quick else 'full'}; "
              f"{ctx.placement.describe()})", flush=True)
        if busy_before > 0.15:
            print(f"note: the machine is busy ({busy_before:.0%} of its CPU time in use before "
                  "the run): other processes compete for the CPUs, figures may come out low",
                  flush=True)
        modules: list[Any] = [b for b in BENCHMARKS if not wanted or b.NAME in wanted]
        for bench in modules:
            t0 = time.monotonic()
            try:
                res = bench.run(ctx)
            except Exception as exc:  # one broken benchmark must not hide the others
                broken += 1
                traceback.print_exc()
                res = {"name": bench.NAME, "lines": [], "data": {}, "error": repr(exc)}
                print(f"ERROR {bench.NAME}: {exc}", flush=True)
            finally:
                ctx.reap()
            res["seconds"] = round(time.monotonic() - t0, 1)
            for line in res["lines"]:
                print(render(line), flush=True)
            results.append(res)
        if not wanted or "codec" in wanted:
            res = codec_result(ctx.quick)
            for line in res["lines"]:
                print(render(line), flush=True)
            results.append(res)

        profiles: list[Any] = []
        if ctx.profile:
            from .profiling import Profiler

            profiler = Profiler(ctx)
            for bench, res in zip(modules, results[:len(modules)], strict=True):
                keys = failed_keys(res)
                if not keys or not hasattr(bench, "profile"):
                    continue
                print(f"profiling {bench.NAME} (failed: {', '.join(keys)}) with "
                      f"{profiler.tool} ...", flush=True)
                t0 = time.monotonic()
                try:
                    captures = bench.profile(ctx, res, profiler)
                except Exception as exc:
                    traceback.print_exc()
                    print(f"ERROR profiling {bench.NAME}: {exc}", flush=True)
                    continue
                finally:
                    ctx.reap()
                res["profile_seconds"] = round(time.monotonic() - t0, 1)
                profiles.append((bench.NAME, keys, captures))

    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quick": args.quick,
        "placement": ctx.placement.describe(),
        "machine": machine(),
        "seconds": round(time.monotonic() - started, 1),
        "cpu_busy_before": round(busy_before, 3),
        "results": results,
        "profiles": [{"benchmark": name, "failed": keys,
                      "captures": [c.as_dict() for c in captures]}
                     for name, keys, captures in profiles],
    }
    (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    written = [args.out / "results.json"]
    if profiles:
        write_profile(args.out / "profile.md", doc, profiles)
        written.append(args.out / "profile.md")
    try:
        from .chart import draw

        draw(doc, args.out / "results.png")
        written.append(args.out / "results.png")
    except ImportError as exc:
        print(f"chart skipped: {exc} (pip install matplotlib)", flush=True)

    lines = [ln for r in results for ln in r["lines"]]
    verdicts = [ln["verdict"] for ln in lines]
    print(f"{verdicts.count('PASS')} targets passed, {verdicts.count('FAIL')} failed, "
          f"{verdicts.count('SKIP')} skipped, in {doc['seconds']:.0f} s; written: "
          + ", ".join(str(p) for p in written), flush=True)
    return 1 if broken else 0


def write_profile(path: Path, doc: dict[str, Any], profiles: list[Any]) -> None:
    out = ["# Profiles of the failing hot paths", "",
           f"Written by `python -m bench` on {doc['when']} ({doc['machine']['processor']}, "
           f"{doc['machine']['cpus']} CPUs, Linux {doc['machine']['kernel']}, Python "
           f"{doc['machine']['python']}; {doc['placement']}). The analysis and what to do "
           "about it: bench/PROFILE.md.", ""]
    for name, keys, captures in profiles:
        out += [f"## {name} (failed: {', '.join(keys)})", ""]
        for capture in captures:
            out.append(capture.markdown())
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
