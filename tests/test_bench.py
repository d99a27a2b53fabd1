"""Smoke test of the benchmark suite (bench/): every benchmark runs in its --quick
configuration and returns well-formed results; the profile summary, the printed lines and the
chart are built from them. Figures are not judged here (`make bench` does that)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import broadcast, fixture, get, startup, supervisor, tables
from bench.common import Context, Line, render
from bench.profiling import Capture

MODULES = (get, broadcast, startup, tables, fixture, supervisor)
VERDICTS = {"PASS", "FAIL", "SKIP", "INFO"}
LINE_KEYS = {"key", "name", "measured", "unit", "target", "op", "reference", "reference_value",
             "note", "verdict", "ratio"}


@pytest.fixture(scope="module")
def results() -> Any:
    from tsemu.shim import ShimNotBuilt, shim_path

    try:
        shim_path()
    except ShimNotBuilt as exc:
        pytest.skip(str(exc))
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler for the benchmark's programs")
    out = {}
    with Context(quick=True) as ctx:
        for module in MODULES:
            try:
                out[module.NAME] = module.run(ctx)
            finally:
                ctx.reap()
    return out


def check_line(line: dict[str, Any]) -> None:
    assert set(line) == LINE_KEYS
    assert line["verdict"] in VERDICTS
    assert line["op"] in (">=", "<=")
    if line["verdict"] == "SKIP":
        assert line["note"], "a skipped line says why"
        return
    assert isinstance(line["measured"], float | int) and math.isfinite(line["measured"])
    assert line["measured"] > 0
    if line["verdict"] in ("PASS", "FAIL"):
        assert line["target"] is not None and line["target"] > 0
    if line["reference"]:
        assert line["reference_value"] > 0
        assert line["ratio"] == pytest.approx(line["measured"] / line["reference_value"])
    text = render(line)
    assert "\n" not in text and line["verdict"] in text and line["name"] in text


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_benchmark_returns_well_formed_results(results: Any, module: Any) -> None:
    res = results[module.NAME]
    assert res["name"] == module.NAME
    assert res["lines"], "every benchmark prints at least one line"
    keys = [line["key"] for line in res["lines"]]
    assert len(keys) == len(set(keys))
    for line in res["lines"]:
        check_line(line)
    assert any(line["verdict"] in ("PASS", "FAIL") for line in res["lines"])
    json.dumps(res)  # results.json can hold it


def test_get_measures_all_references(results: Any) -> None:
    data = results["get"]["data"]
    assert data["tsemu"]["reply_bytes"] == 596 and data["tsemu"]["gets"] > 0
    assert data["pingpong"]["rate"] > 0 and data["echo"]["rate"] > 0
    assert (data["host"] is None) == (data["host_skip"] is not None)


def test_broadcast_counts_every_listener(results: Any) -> None:
    for run in results["broadcast"]["data"]["runs"]:
        assert run["exits"] > 0
        assert run["received"] + run["lost"] == run["listeners"] * run["exits"]


def test_tables_report_load_and_memory(results: Any) -> None:
    data = results["tables"]["data"]
    for size in data["sizes"]:
        assert size["parse_s"] > 0 and size["build_s"] > 0 and size["rss_mb"] > 0
        assert size["get"]["gets"] > 0
    assert data["threads"]["tasks"] == data["sizes"][-1]["tasks"]


def test_chart_is_drawn(results: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.__main__ import machine
    from bench.chart import draw

    doc = {"when": "now", "placement": "test", "machine": machine(),
           "results": list(results.values())}
    draw(doc, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")


def test_line_verdicts() -> None:
    assert Line("a", "a", 10, "/s", target=5).verdict == "PASS"
    assert Line("a", "a", 10, "s", target=5, op="<=").verdict == "FAIL"
    assert Line("a", "a", 10, "/s").verdict == "INFO"
    assert Line("a", "a", 10, "/s", target=5).fail("lost 3").verdict == "FAIL"
    assert Line("a", "a", 10, "/s", reference="r", reference_value=40).ratio == 0.25


def test_pyspy_raw_summary(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    root = "<module> (tsemu:6);run (trio/_core/_run.py:10)"
    raw.write_text(
        f"{root};EpollIOManager.get_events (trio/_core/_io_epoll.py:243) 50\n"
        f"{root};handle (emulator/kernel.py:5);add_delays (emulator/accounting.py:232) 30\n"
        f"{root};handle (emulator/kernel.py:7) 20\n"
        "Thread._bootstrap (threading.py:1);WorkerThread._work (trio/_core/x.py:3) 99\n")
    capture = Capture("t", "py-spy", raw)
    capture.finish()
    top = capture.top()
    assert top["samples"] == 100 and top["idle"] == 0.5  # the worker thread is left out
    assert top["self"][0] == ("add_delays (emulator/accounting.py)", 0.6)
    assert ("handle (emulator/kernel.py)", 1.0) not in top["inclusive"]  # the trunk
    assert "add_delays" in capture.markdown()
