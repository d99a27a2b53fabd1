"""Shared test set-up: deterministic hypothesis, the golden capture, host-kernel detection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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


# -- the container image (tests marked `docker`) --------------------------------------------------

#: The base image docker/make-base-image.sh makes (no registry needed).
LOCAL_BASE_IMAGE = "tsemu-base:bookworm"


def docker_selected(config: pytest.Config) -> bool:
    """Tests that need a Docker engine run wherever one answers (`make test` starts one as
    root), unless deselected (`-m "not docker"`): they build the image (about a minute the
    first time, then a lookup) and start containers. Where no engine answers they skip, with
    the reason."""
    expr = str(config.getoption("markexpr") or "")
    return "not docker" not in expr


@pytest.fixture(scope="session")
def docker_image(request: pytest.FixtureRequest) -> str:
    """tsemu's image built from this tree, once per content (`tsemu.testing.image`), on the
    base $TSEMU_PYTHON_IMAGE, else the local base image (made here, as root, if missing),
    else the Dockerfile's default; skips with the reason where no engine can start."""
    import subprocess

    from tsemu.testing.image import ImageError, build_image, docker_ready, image_id

    if not docker_selected(request.config):
        pytest.skip("docker: deselected (-m \"not docker\")")
    why = docker_ready()
    if why is not None:
        pytest.skip(f"docker: {why}")
    root = Path(__file__).parent.parent
    base = os.environ.get("TSEMU_PYTHON_IMAGE")
    if base is None:
        if image_id(LOCAL_BASE_IMAGE) is None and os.geteuid() == 0:
            made = subprocess.run(["sh", str(root / "docker" / "make-base-image.sh"),
                                   LOCAL_BASE_IMAGE], capture_output=True, text=True,
                                  timeout=600)
            if made.returncode != 0:
                pytest.skip("docker: no base image (docker/make-base-image.sh: "
                            f"{made.stderr.strip().splitlines()[-1:]})")
        base = LOCAL_BASE_IMAGE if image_id(LOCAL_BASE_IMAGE) is not None else None
    try:
        return build_image(root, python_image=base)
    except ImageError as exc:
        pytest.skip(f"docker: {exc}")


# -- test clients built once per session (the supervisor's, the docker tests') ---------------

_CLIENTS = Path(__file__).parent / "clients"
#: Debian's packaged Go sources (golang-github-mdlayher-*), built in GOPATH mode
GOPATH = Path("/usr/share/gocode")


@pytest.fixture(scope="session")
def go_clients(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """gotaskstats built with CGO_ENABLED=0 and =1, by name "cgo0", "cgo1"."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (apt-get install golang-go)")
    if not (GOPATH / "src/github.com/mdlayher/genetlink").is_dir():
        pytest.skip("Debian's mdlayher sources are missing (apt-get install "
                    "golang-github-mdlayher-genetlink-dev golang-github-mdlayher-netlink-dev)")
    out = tmp_path_factory.mktemp("go")
    built = {}
    for cgo in ("0", "1"):
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": "",
               "CGO_ENABLED": cgo, "GOCACHE": str(out / "cache")}
        binary = out / f"gotaskstats-cgo{cgo}"
        done = subprocess.run([go, "build", "-o", str(binary), "."], cwd=_CLIENTS / "gotaskstats",
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            pytest.fail(f"building gotaskstats (CGO_ENABLED={cgo}) failed:\n{done.stderr}")
        built[f"cgo{cgo}"] = binary
    return built


@pytest.fixture(scope="session")
def static_clients(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """getdelays and sigrecv linked -static."""
    from tests.clients.harness import compile_static

    out = tmp_path_factory.mktemp("static")
    return {name: compile_static(_CLIENTS / f"{name}.c", out) for name in ("getdelays", "sigrecv")}
