"""The pytest fixture's cost per test: 100 trivial tests that use `tsemu`, against the same
tests without it, each suite run by pytest in a process of its own (the way a user's suite
runs: collection, the plugin, the session's server start and its stop all count).

    overhead per test = (time with the fixture - time without) / 100

The trivial test asks the machine one thing (`now`), so a fixture that handed out a broken
handle would fail the run. Target: at most 20 ms per test. Reference, in the same run: the
same kind of suite with a server started for each test (the fixture as it was before the
shared server: `tsemu_machines` overridden to live one test), 10 tests of it, per test.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import BenchError, Context, Line, median, result

NAME = "fixture"
TARGET_MS = 20.0
TESTS = 100
#: tests in the reference suite (a server each: a few hundred ms apiece)
REFERENCE_TESTS = 10

_WITH = '''
def test_{n}(tsemu):
    assert tsemu.call("now")["now"] == 0
'''
_WITHOUT = '''
def test_{n}():
    assert True
'''
#: the fixture as it was: one server per test
_SERVER_PER_TEST = '''
import pytest
from tsemu.pytest_plugin import TsemuMachines


@pytest.fixture
def tsemu_machines():
    machines = TsemuMachines()
    yield machines
    machines.close()
'''


def _suite(directory: Path, name: str, body: str, count: int, conftest: str = "") -> Path:
    suite = directory / name
    suite.mkdir(parents=True, exist_ok=True)
    (suite / "conftest.py").write_text(conftest)
    (suite / "test_trivial.py").write_text("".join(body.format(n=n) for n in range(count)))
    return suite


def _run(ctx: Context, suite: Path, count: int) -> float:
    """Seconds pytest takes to run `suite` (which must pass, every test of it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "TSEMU_SOCKET")}
    argv = [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            str(suite)]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=suite, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or f"{count} passed" not in done.stdout:
        raise BenchError(f"the trivial suite {suite.name} did not pass:\n"
                         f"{(done.stdout + done.stderr)[-1500:]}")
    return seconds


def run(ctx: Context) -> dict[str, Any]:
    count = 20 if ctx.quick else TESTS
    rounds = 1 if ctx.quick else 3
    with_fixture = _suite(ctx.tmp / "fixture", "with", _WITH, count)
    without = _suite(ctx.tmp / "fixture", "without", _WITHOUT, count)
    per_test = _suite(ctx.tmp / "fixture", "per_test", _WITH, REFERENCE_TESTS, _SERVER_PER_TEST)
    runs = []
    for _ in range(rounds):  # interleaved, so that a busy moment hits both alike
        plain = _run(ctx, without, count)
        shared = _run(ctx, with_fixture, count)
        runs.append({"without": plain, "with": shared,
                     "per_test_ms": (shared - plain) / count * 1e3})
    overhead_ms = median([r["per_test_ms"] for r in runs])
    plain_ref = _run(ctx, _suite(ctx.tmp / "fixture", "without_ref", _WITHOUT,
                                 REFERENCE_TESTS), REFERENCE_TESTS)
    fresh = _run(ctx, per_test, REFERENCE_TESTS)
    reference_ms = (fresh - plain_ref) / REFERENCE_TESTS * 1e3
    line = Line("fixture.per_test", f"fixture overhead per test ({count} trivial tests)",
                overhead_ms, "ms", target=TARGET_MS, op="<=",
                reference="a server started per test", reference_value=reference_ms,
                note=f"suite {median([r['with'] for r in runs]):.2f} s with the fixture, "
                     f"{median([r['without'] for r in runs]):.2f} s without; one server "
                     "start included")
    return result(NAME, [line], runs=runs, tests=count, reference_ms=reference_ms,
                  reference_tests=REFERENCE_TESTS)
