"""The pytest plugin, used as its users use it: the `tsemu` fixture, a client under test run
as a subprocess through the shim, exits scripted through the handle, output checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tsemu.pytest_plugin import TsemuHandle

EXIT_LOGGER = Path(__file__).parent / "clients" / "exit_logger.py"


def test_a_client_under_test_sees_scripted_exits(tsemu: TsemuHandle) -> None:
    logger = tsemu.popen([sys.executable, str(EXIT_LOGGER), "2"], stdout=subprocess.PIPE,
                         text=True)
    tsemu.wait_for_listener(cpus="0-1")
    job = tsemu.spawn(comm="job", cpu=1)
    tsemu.exit(job, code=3)
    crash = tsemu.spawn(comm="crasher", cpu=0)
    tsemu.exit(crash, signal="SIGSEGV", core=True)
    out, _ = logger.communicate(timeout=20)
    assert out.splitlines() == [
        "listening",
        f"exit pid={job} comm=job status=0x300",
        f"exit pid={crash} comm=crasher status=0x8b",
    ]


def test_environment_runs_children_through_the_shim(tsemu: TsemuHandle) -> None:
    assert tsemu.env["TSEMU_SOCKET"] == str(tsemu.socket_path)
    assert "libtsemu-shim" in tsemu.env["LD_PRELOAD"]
    result = tsemu.run([sys.executable, "-c", "import os; print(os.environ['TSEMU_SOCKET'])"],
                       capture_output=True, text=True)
    assert result.stdout.strip() == str(tsemu.socket_path)


def test_default_machine_and_control(tsemu: TsemuHandle) -> None:
    tasks = tsemu.ps()
    assert [(t["pid"], t["comm"]) for t in tasks if not t["real"]] == [(1, "init")]
    assert os.getpid() in {t["pid"] for t in tasks if t["real"]}  # the test: a client root
    pid = tsemu.spawn(comm="svc", threads=3)
    assert len([t for t in tsemu.ps() if t["tgid"] == pid]) == 3
    tsemu.set(pid, nvcsw=9)
    assert tsemu.listeners() == {}
    assert tsemu.advance(2.5) == 2.5
    assert tsemu.exit(pid) == [pid, pid + 1, pid + 2]
    assert tsemu.stats()["tasks"] == 1


@pytest.mark.tsemu_scenario("../examples/multithreaded.toml")
def test_a_marked_scenario_is_served(tsemu: TsemuHandle) -> None:
    comms = {t["comm"] for t in tsemu.ps()}
    assert "envoy" in comms


async def test_works_inside_trio_tests_too(tsemu: TsemuHandle) -> None:
    logger = tsemu.popen([sys.executable, str(EXIT_LOGGER), "1"], stdout=subprocess.PIPE,
                         text=True)
    await trio.to_thread.run_sync(tsemu.wait_for_listener)
    pid = tsemu.spawn(comm="async-job")
    tsemu.exit(pid)
    out, _ = await trio.to_thread.run_sync(lambda: logger.communicate(timeout=20))
    assert out.splitlines()[-1] == f"exit pid={pid} comm=async-job status=0x0"


class TestAnOverriddenScenarioFixture:
    @pytest.fixture
    def tsemu_scenario(self) -> str:
        return "[machine]\ncpus = 4\nclock = \"virtual\"\n"

    def test_serves_it(self, tsemu: TsemuHandle) -> None:
        pid = tsemu.spawn(comm="on3", cpu=3)
        assert [t["cpu"] for t in tsemu.ps() if t["pid"] == pid] == [3]
