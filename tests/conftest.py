"""Shared test set-up: deterministic hypothesis, the golden capture, host-kernel detection."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Deterministic everywhere: CI derandomized with no example database, local runs seeded too.
settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

GOLDEN = Path(__file__).parent / "golden" / "kernel.json"
#: CONFIG_NR_CPUS of the kernel the golden capture came from (its cpumask length bound).
GOLDEN_NR_CPUS_CONFIG: int = json.loads(GOLDEN.read_text())["nr_cpus_config"]


@pytest.fixture(scope="session")
def golden() -> dict[str, Any]:
    """The host kernel's replies captured by scripts/capture_golden.py."""
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="session")
def golden_cases(golden: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in golden["cases"]}


@pytest.fixture
def short_tmp() -> Any:
    """A short private directory (Unix socket paths must stay under 108 bytes)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ts", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(short_tmp: Path) -> Any:
    """A live tsemu server (profile 6.18, 2 CPUs, built with NR_CPUS 256 like the golden
    capture's host, virtual clock, empty process table) on a socket in a private directory;
    yields the Server (`.tasks` is its ProcessTable)."""
    from tsemu.emulator.model.clock import VirtualClock
    from tsemu.emulator.model.profiles import DEFAULT_PROFILE
    from tsemu.emulator.model.table import ProcessTable
    from tsemu.emulator.shell.server import running_server

    table = ProcessTable(VirtualClock(), DEFAULT_PROFILE, 2)
    async with running_server(short_tmp / "genl.sock", table, nr_cpus=2,
                              nr_cpus_config=GOLDEN_NR_CPUS_CONFIG) as server:
        yield server
