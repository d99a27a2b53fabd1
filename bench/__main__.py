"""Run every benchmark, print one line each, and write bench/results/results.json."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from . import codec

BENCHMARKS = (codec,)


def main() -> None:
    results = []
    for bench in BENCHMARKS:
        result = bench.run()
        results.append(result)
        print(bench.report(result), flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"python": platform.python_version(), "kernel": platform.release(),
                    "processor": platform.processor() or platform.machine()},
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"results written to {out / 'results.json'}")


if __name__ == "__main__":
    main()
