"""tsemu.testing.container, as a test suite on the host uses it: the server in a container
(testcontainers-python), the kernel's getdelays-style client and a listener on the host; the
same directory mounted at another path in a second container (marked `docker`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("testcontainers", reason="tsemu[containers] (testcontainers) not installed")

from tsemu.testing.container import TsemuContainer  # noqa: E402

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def getdelays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.clients.harness import compile_client

    return compile_client(ROOT / "tests" / "clients" / "getdelays.c",
                          tmp_path_factory.mktemp("getdelays"))


@pytest.fixture
def tsemu(docker_image: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TsemuContainer]:
    # The reaper is an image of its own, from a registry: none is reachable here.
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(testcontainers_config, "_ryuk_disabled", True, raising=False)
    with TsemuContainer(docker_image, scenario=ROOT / "examples" / "burst.toml",
                        serve_args=["--admin", "all"]) as container:
        yield container


def test_getdelays_and_a_listener_on_the_host(tsemu: TsemuContainer, getdelays: Path) -> None:
    assert tsemu.socket_path.is_socket()
    asked = subprocess.run([str(getdelays), "-p", "1"], env=tsemu.client_env(),
                           capture_output=True, text=True, timeout=30)
    assert asked.returncode == 0 and "pid=1 " in asked.stdout, asked.stdout + asked.stderr
    listener = subprocess.Popen([str(getdelays), "-m", "0-1", "-n", "1"],
                                env=tsemu.client_env(), stdout=subprocess.PIPE, text=True)
    python = subprocess.Popen([sys.executable, "-m", "tsemu", "listen", "--cpus", "0-1",
                               "--count", "1", "--json"], env=tsemu.client_env(preload=False),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and python.stderr is not None
        assert listener.stdout.readline().startswith("family=TASKSTATS")
        assert listener.stdout.readline() == "registered cpumask=0-1\n"
        assert "listening for exits" in python.stderr.readline()
        pid = tsemu.ctl("spawn", "--comm", "tcjob")
        tsemu.ctl("exit", pid.split()[0], "--code", "7")
        out, _ = listener.communicate(timeout=30)
        assert "comm=tcjob" in out, out
        out, _ = python.communicate(timeout=30)
        assert '"ac_comm": "tcjob"' in out
    finally:
        for proc in (listener, python):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_a_second_container_mounts_the_directory_at_another_path(
        tsemu: TsemuContainer, docker_image: str) -> None:
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v",
                           f"{tsemu.socket_dir}:/elsewhere/run", "-e",
                           "TSEMU_SOCKET=/elsewhere/run/genl.sock", docker_image, "get",
                           "--pid", "1", "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"ac_pid": 1' in done.stdout


def test_the_directory_goes_with_the_container(docker_image: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(testcontainers_config, "_ryuk_disabled", True, raising=False)
    container = TsemuContainer(docker_image, user="tsemu")
    with container:
        assert os.stat(container.socket_path).st_uid == 10001
        assert container.shim_path.exists()
    assert not container.socket_dir.exists()
