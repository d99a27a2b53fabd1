"""CGROUPSTATS from Go under `tsemu run`: tests/clients/gotaskstats' `cgroupstats DIR` opens the
cgroup's directory and names that descriptor in CGROUPSTATS_CMD_GET (CGROUPSTATS_CMD_ATTR_FD).
The Go runtime's own system calls reach only the seccomp supervisor, which must pass the
client's descriptor on to the server (calls.c's cgroupstats_fds) as the shim does for libc
programs: the counters printed must be the scenario's, and the same as getdelays -C prints
through the shim for the same directory. getdelays -C itself, linked static (glibc's libc.a,
and musl as in the scratch client image), goes the supervisor's way too.

The server serves a scenario with cgroups on a directory standing for the cgroup hierarchy
(`serve --cgroup-root`), so that nothing depends on the host's /sys/fs/cgroup.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.harness import compile_client, stop_process
from tests.test_supervisor import CLIENTS, needs_supervisor

#: The scenario: /jobs holds one task in each state (a running one with two threads: the
#: kernel counts tasks, threads included), /idle only a task in a state counted nowhere,
#: /empty is declared and empty (zeros, not EINVAL), init sits in the root.
SCENARIO = """
[[cgroup]]
path = "/empty"

[[process]]
pid = 1
comm = "init"
cgroup = "/"

[[process]]
comm = "two"
cgroup = "/jobs"
threads = 2
state = "running"

[[process]]
comm = "sleeper"
cgroup = "/jobs"
state = "sleeping"

[[process]]
comm = "disk"
cgroup = "/jobs"
state = "uninterruptible"

[[process]]
comm = "halted"
cgroup = "/jobs"
state = "stopped"

[[process]]
comm = "waiter"
cgroup = "/jobs"
state = "io_wait"

[[process]]
comm = "kworker"
cgroup = "/idle"
state = "idle"
"""

#: What each directory under the cgroup root answers (getdelays -C's line).
EXPECTED = {
    "jobs": "cgroupstats sleeping=1 running=2 stopped=1 uninterruptible=1 io_wait=1",
    "": "cgroupstats sleeping=0 running=1 stopped=0 uninterruptible=0 io_wait=0",
    "empty": "cgroupstats sleeping=0 running=0 stopped=0 uninterruptible=0 io_wait=0",
    "idle": "cgroupstats sleeping=0 running=0 stopped=0 uninterruptible=0 io_wait=0",
}


@pytest.fixture(scope="module")
def cgroup_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """`tsemu serve` on SCENARIO with a cgroup root of its own: (its socket, the root)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="tscg", dir="/tmp"))  # short: a Unix socket's path
    root = base / "cgroup"
    for name in ("jobs", "empty", "idle", "jobs/unknown"):
        (root / name).mkdir(parents=True)
    (base / "plain").write_text("not a directory")
    scenario = base / "scenario.toml"
    scenario.write_text(SCENARIO)
    socket_path = base / "genl.sock"
    server = subprocess.Popen([sys.executable, "-m", "tsemu", "serve", "--socket",
                               str(socket_path), "--scenario", str(scenario), "--cgroup-root",
                               str(root)], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert "listening on" in line, line + server.stderr.read()
        yield socket_path, root
    finally:
        stop_process(server, timeout=20)
        if server.stderr is not None:
            server.stderr.close()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def tsemu_run(socket_path: Path, via: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TSEMU_", "LD_PRELOAD"))}
    return subprocess.run([sys.executable, "-m", "tsemu", "run", "--socket", str(socket_path),
                           "--via", via, "--", *argv], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture(scope="module")
def getdelays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/clients/getdelays.c, dynamic: the shim's answer to compare with."""
    return compile_client(CLIENTS / "getdelays.c", tmp_path_factory.mktemp("getdelays"))


@needs_supervisor
@pytest.mark.parametrize("cgo", ["cgo0", "cgo1"])
@pytest.mark.parametrize("cgroup", sorted(EXPECTED))
def test_go_cgroupstats_answers_the_scenarios_counts(
        cgroup_server: tuple[Path, Path], go_clients: dict[str, Path],
        getdelays: Path, cgo: str, cgroup: str) -> None:
    socket_path, root = cgroup_server
    directory = str(root / cgroup) if cgroup else str(root)
    go = tsemu_run(socket_path, "seccomp", str(go_clients[cgo]), "cgroupstats", directory)
    assert (go.returncode, go.stdout) == (0, EXPECTED[cgroup] + "\n"), go.stdout + go.stderr
    shimmed = tsemu_run(socket_path, "shim", str(getdelays), "-C", directory)
    assert shimmed.stdout.splitlines()[1:] == [EXPECTED[cgroup], "ack"], shimmed.stdout


@needs_supervisor
@pytest.mark.parametrize("what", ["jobs/unknown", "plain"])
def test_go_cgroupstats_refuses_what_is_no_scenario_cgroup(
        cgroup_server: tuple[Path, Path], go_clients: dict[str, Path],
        getdelays: Path, what: str) -> None:
    """A directory under the root that the scenario has no cgroup for, and a regular file:
    EINVAL, as the shim's client is told."""
    socket_path, root = cgroup_server
    path = str(root / what) if what != "plain" else str(root.parent / "plain")
    go = tsemu_run(socket_path, "seccomp", str(go_clients["cgo0"]), "cgroupstats", path)
    assert (go.returncode, go.stdout) == (1, "error=EINVAL\n"), go.stdout + go.stderr
    shimmed = tsemu_run(socket_path, "shim", str(getdelays), "-C", path)
    assert shimmed.stdout.splitlines()[1:] == ["error=EINVAL"], shimmed.stdout


@pytest.fixture(scope="module")
def musl_getdelays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """getdelays.c linked static against musl (the scratch client image's client)."""
    from tests.scratchimage import Unavailable, musl_client

    try:
        return musl_client(tmp_path_factory.mktemp("musl"))
    except Unavailable as exc:
        pytest.skip(f"musl client: {exc}")


@needs_supervisor
@pytest.mark.parametrize("libc", ["glibc", "musl"])
def test_static_c_cgroupstats(cgroup_server: tuple[Path, Path], libc: str,
                              request: pytest.FixtureRequest) -> None:
    socket_path, root = cgroup_server
    client = (request.getfixturevalue("static_clients")["getdelays"] if libc == "glibc"
              else request.getfixturevalue("musl_getdelays"))
    for cgroup, expected in sorted(EXPECTED.items()):
        done = tsemu_run(socket_path, "seccomp", str(client), "-C", str(root / cgroup))
        assert done.stdout.splitlines()[1:] == [expected, "ack"], done.stdout + done.stderr
    refused = tsemu_run(socket_path, "seccomp", str(client), "-C", str(root / "jobs/unknown"))
    assert refused.stdout.splitlines()[1:] == ["error=EINVAL"], refused.stdout
