"""results.png: the benchmark results as one picture (matplotlib, Agg backend).

Four panels: every target's margin (how far the measured figure is from its target: above 1
passes), the GET rates beside their references, broadcast throughput against the number of
listeners, and GET latency against the table size. Panels whose benchmark did not run are
left out. Raises ImportError when matplotlib is missing (the caller says so and goes on).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in doc["results"]}


def _targets(ax: Any, doc: dict[str, Any]) -> None:
    rows = [ln for r in doc["results"] for ln in r["lines"]
            if ln["verdict"] in ("PASS", "FAIL") and ln["measured"] and ln["target"]]
    names, margins, colors = [], [], []
    for ln in rows:
        margin = ln["measured"] / ln["target"] if ln["op"] == ">=" else \
            ln["target"] / ln["measured"]
        names.append(ln["name"])
        margins.append(margin)
        colors.append("tab:green" if ln["verdict"] == "PASS" else "tab:red")
    y = range(len(rows))
    ax.barh(list(y), margins, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    for i, m in enumerate(margins):
        ax.text(m, i, f" {m:.2g}", va="center", fontsize=7)
    ax.set_xlabel("measured vs target (>1 passes; log)")
    ax.set_title("Targets")


def _get(ax: Any, get: dict[str, Any]) -> None:
    data = get["data"]
    bars = [("tsemu GET via shim", data["tsemu"]["rate"], "tab:blue"),
            ("trio echo via shim", data["echo"]["rate"], "tab:gray"),
            ("C socketpair ping-pong", data["pingpong"]["rate"], "tab:olive")]
    if data.get("host"):
        bars.append(("host kernel GET", data["host"]["rate"], "tab:purple"))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.axvline(0.5 * data["pingpong"]["rate"], color="tab:red", linestyle="--",
               label="target: 0.5x ping-pong")
    ax.set_xscale("log")
    ax.invert_yaxis()
    for i, b in enumerate(bars):
        ax.text(b[1], i, f" {b[1]:,.0f}/s", va="center", fontsize=7)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("round trips per second (log)")
    ax.set_title("GET round trips, one client")


def _broadcast(ax: Any, bc: dict[str, Any]) -> None:
    runs = bc["data"]["runs"]
    n = [r["listeners"] for r in runs]
    ax.plot(n, [r["deliveries_per_s"] for r in runs], "o-", label="deliveries/s (total)")
    ax.plot(n, [r["exits_per_s"] for r in runs], "s-", label="exits/s")
    ax.axhline(bc["data"]["oneway"]["rate"], color="tab:olive", linestyle=":",
               label="C one-way socketpair 596 B")
    ax.plot([1], [150_000], "r*", markersize=9, label="targets (1: exits/s, 16: deliveries/s)")
    if 16 in n:
        ax.plot([16], [400_000], "r*", markersize=9)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_xlabel("listeners of CPU 0")
    ax.set_ylabel("per second (log)")
    ax.legend(fontsize=7)
    ax.set_title("Exit broadcast (storm)")


def _latency(ax: Any, tables: dict[str, Any]) -> None:
    sizes = tables["data"]["sizes"]
    x = [d["tasks"] for d in sizes]
    ax.plot(x, [d["get"]["mean_us"] for d in sizes], "^-", label="mean")
    ax.plot(x, [d["get"]["p50_us"] for d in sizes], "o-", label="p50")
    ax.plot(x, [d["get"]["p99_us"] for d in sizes], "s--", label="p99")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("tasks in the table (log)")
    ax.set_ylabel("GET latency via shim (us)")
    ax.legend(fontsize=7)
    ax.set_title("GET latency vs table size")


def draw(doc: dict[str, Any], path: Path) -> None:
    results = _by_name(doc)
    panels: list[tuple[str, Callable[[Any, dict[str, Any]], None], dict[str, Any]]] = [
        ("targets", _targets, doc)]
    if "get" in results and results["get"]["lines"]:
        panels.append(("get", _get, results["get"]))
    if "broadcast" in results and results["broadcast"]["lines"]:
        panels.append(("broadcast", _broadcast, results["broadcast"]))
    if "tables" in results and results["tables"]["lines"]:
        panels.append(("tables", _latency, results["tables"]))
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.2 * rows), squeeze=False)
    for ax, (_, fn, data) in zip(axes.flat, panels, strict=False):
        fn(ax, data)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    m = doc["machine"]
    fig.suptitle(f"tsemu benchmarks, {doc['when']}: {m['processor']}, {m['cpus']} CPUs, "
                 f"Linux {m['kernel']}, Python {m['python']} ({doc['placement']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
