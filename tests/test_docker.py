"""The container image, without a Docker engine: the Dockerfile's build steps
(docker/build-steps.sh) run against a throwaway prefix, and the result is started the way the
image starts it (its ENTRYPOINT and CMD, its environment) and checked with the image's
HEALTHCHECK command."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BUILD_STEPS = ROOT / "docker" / "build-steps.sh"
IMAGE_SOCKET = "/run/tsemu/genl.sock"


def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the ARGs before the first FROM left out)."""
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def one(stage: list[tuple[str, str]], word: str) -> str:
    (found,) = [rest for w, rest in stage if w == word]
    return found


def build_prefix() -> str:
    """The prefix the Dockerfile's build stage installs into (the RUN of build-steps.sh)."""
    run = next(rest for w, rest in stages()[0] if w == "RUN" and "build-steps.sh" in rest)
    return shlex.split(run)[-1]


# -- the Dockerfile, read ------------------------------------------------------------------------

def test_dockerfile_builds_with_the_script_ci_runs() -> None:
    build, runtime = stages()
    assert build[0][1].endswith(" AS build")
    copied = one(build, "COPY").split()
    assert copied == [".", "/src"]
    run = shlex.split(next(rest for w, rest in build if w == "RUN"))
    assert run == ["sh", "/src/docker/build-steps.sh", "/src", "/opt/tsemu"]
    # The runtime stage takes the prefix alone: the compiler stayed in the build stage.
    assert ("COPY", "--from=build /opt/tsemu /opt/tsemu") in runtime
    assert not any("apt-get" in rest or "gcc" in rest for _, rest in runtime)
    base = {rest.split()[0] for w, rest in build + runtime if w == "FROM"}
    assert base == {"${PYTHON_IMAGE}"}
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()


def test_dockerfile_declares_socket_volume_user_and_healthcheck() -> None:
    runtime = stages()[1]
    assert one(runtime, "VOLUME") == "/run/tsemu"
    env = one(runtime, "ENV")
    assert f"TSEMU_SOCKET={IMAGE_SOCKET}" in env.split()
    assert "PATH=/opt/tsemu/bin:$PATH" in env.split()
    assert json.loads(one(runtime, "ENTRYPOINT")) == ["/opt/tsemu/bin/tsemu-entrypoint"]
    assert json.loads(one(runtime, "CMD")) == ["serve", "--socket", IMAGE_SOCKET]
    # The non-root option: a tsemu user owning the socket directory, chosen by a build arg.
    setup = next(rest for w, rest in runtime if w == "RUN")
    assert "useradd --system --uid \"${TSEMU_UID}\"" in setup and " tsemu" in setup
    assert "chown tsemu:tsemu /run/tsemu" in setup
    assert ("ARG", "TSEMU_USER=root") in runtime
    assert one(runtime, "USER") == "${TSEMU_USER}"
    assert "docker run --user tsemu" in DOCKERFILE.read_text()
    health = one(runtime, "HEALTHCHECK")
    assert re.search(r"--interval=\S+ --timeout=\S+", health)
    assert health.split(" CMD ", 1)[1].startswith("tsemu families --socket /run/tsemu/genl.sock")


def test_dockerignore_keeps_what_the_build_reads() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tsemu/libtsemu-shim.so", "tests"} <= ignored
    needed = {"pyproject.toml", "setup.py", "README.md", "tsemu", "wire", "emulator", "cli",
              "shim", "docker", "examples"}
    assert not needed & ignored
    assert set(re.findall(r'"\$source_dir/(\w+)', BUILD_STEPS.read_text())) <= needed


def test_compose_example_shares_only_the_socket_volume() -> None:
    text = (ROOT / "docker" / "compose.example.yml").read_text()
    assert "dockerfile: Dockerfile" in text
    assert text.count("- tsemu-run:/run/tsemu") == 3  # the server and both clients
    assert text.count("    network_mode: none\n") == 2  # both clients
    assert "condition: service_healthy" in text
    assert "LD_PRELOAD: /run/tsemu/libtsemu-shim.so" in text
    assert "TSEMU_SOCKET: /run/tsemu/genl.sock" in text
    try:
        import yaml
    except ImportError:
        return
    compose = yaml.safe_load(text)
    assert set(compose["services"]) == {"tsemu", "listener", "getdelays"}
    assert set(compose["volumes"]) == {"tsemu-run"}
    for service in compose["services"].values():
        assert service["volumes"][0] == "tsemu-run:/run/tsemu"


# -- the build steps, run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prefix built by docker/build-steps.sh from this tree, as the image's build stage does."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("docker build steps: no C compiler for the shim")
    target = tmp_path_factory.mktemp("image") / "opt-tsemu"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TSEMU_SHIM", None)
    result = subprocess.run(["sh", str(BUILD_STEPS), str(ROOT), str(target)], env=env,
                            capture_output=True, text=True, timeout=240, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def image_environment(prefix: Path, socket: Path) -> dict[str, str]:
    """The image's ENV, with the prefix and socket of this run."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TSEMU_", "PYTHON", "VIRTUAL_ENV", "LD_PRELOAD"))}
    env["PATH"] = f"{prefix}/bin:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["TSEMU_SOCKET"] = str(socket)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def healthcheck(prefix: Path, socket: Path) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's HEALTHCHECK command (shell form), aimed at `socket`."""
    command = one(stages()[1], "HEALTHCHECK").split(" CMD ", 1)[1]
    return subprocess.run(["/bin/sh", "-c", command.replace(IMAGE_SOCKET, str(socket))],
                          env=image_environment(prefix, socket), capture_output=True, text=True,
                          timeout=60, cwd="/")


@pytest.fixture
def container(prefix: Path, short_tmp: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """The image's ENTRYPOINT + CMD running from the prefix, on a socket in a private directory
    (standing in for the /run/tsemu volume)."""
    socket = short_tmp / "run" / "genl.sock"
    entrypoint = json.loads(one(stages()[1], "ENTRYPOINT"))
    argv = [arg.replace("/opt/tsemu", str(prefix)) for arg in entrypoint]
    argv += [arg.replace(IMAGE_SOCKET, str(socket)) for arg in json.loads(one(stages()[1], "CMD"))]
    proc = subprocess.Popen(argv, env=image_environment(prefix, socket), stderr=subprocess.PIPE,
                            text=True, cwd="/")
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line == f"tsemu: listening on {socket}\n", line + proc.stderr.read()
        yield socket, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_build_steps_install_a_self_contained_prefix(prefix: Path) -> None:
    python = prefix / "bin" / "python"
    where = subprocess.run([str(python), "-I", "-c", "import tsemu, sys; print(tsemu.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    assert where.startswith(str(prefix)), where  # installed, not this tree
    shim = (prefix / "libtsemu-shim.so").resolve()
    assert shim.is_relative_to(prefix) and shim.read_bytes()[:4] == b"\x7fELF"
    assert os.access(prefix / "bin" / "tsemu-entrypoint", os.X_OK)
    assert (prefix / "share" / "tsemu" / "examples" / "burst.toml").is_file()
    # The installers are gone from the runtime.
    assert not (prefix / "bin" / "pip").exists()
    pip = subprocess.run([str(python), "-I", "-c", "import pip"], capture_output=True, cwd="/")
    assert pip.returncode != 0


def test_the_image_command_serves_and_passes_its_healthcheck(
        prefix: Path, container: tuple[Path, subprocess.Popen[str]]) -> None:
    socket, proc = container
    health = healthcheck(prefix, socket)
    assert health.returncode == 0, health.stderr
    # The entry point offered the shim in the socket's directory, for client containers.
    offered = socket.parent / "libtsemu-shim.so"
    assert offered.read_bytes() == (prefix / "libtsemu-shim.so").read_bytes()
    assert oct(offered.stat().st_mode & 0o777) == "0o644"
    supervisor = prefix / "tsemu-run"
    if supervisor.exists():  # built where a static libc is installed
        offered = socket.parent / "tsemu-run"
        assert offered.read_bytes() == supervisor.read_bytes()
        assert oct(offered.stat().st_mode & 0o777) == "0o755"
    # `tsemu ctl` needs no flag: TSEMU_SOCKET names the socket, as in the image.
    ps = subprocess.run(["tsemu", "ctl", "ps"], env=image_environment(prefix, socket),
                        capture_output=True, text=True, timeout=60, cwd="/")
    assert ps.returncode == 0 and "redis-server" in ps.stdout, ps.stderr
    # `docker stop` sends SIGTERM: a clean exit, after which the health check fails.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert healthcheck(prefix, socket).returncode == 1


def test_a_client_container_needs_only_the_socket_directory(
        prefix: Path, container: tuple[Path, subprocess.Popen[str]]) -> None:
    """The compose recipe: an unmodified netlink program with the offered shim preloaded."""
    genl = shutil.which("genl")
    if genl is None:
        pytest.skip("client container recipe: no `genl` (iproute2) to run through the shim")
    socket, _ = container
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TSEMU_SOCKET": str(socket),
           "LD_PRELOAD": str(socket.parent / "libtsemu-shim.so")}
    result = subprocess.run([genl, "ctrl", "get", "name", "TASKSTATS"], env=env,
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "Name: TASKSTATS" in result.stdout and "ID: 0x1f" in result.stdout


def test_a_client_container_without_glibc_uses_the_offered_supervisor(
        prefix: Path, container: tuple[Path, subprocess.Popen[str]]) -> None:
    """The static supervisor offered in the socket's directory reaches a client that nothing
    is preloaded into (here genl, without LD_PRELOAD)."""
    genl = shutil.which("genl")
    if genl is None:
        pytest.skip("client container recipe: no `genl` (iproute2) to run")
    if not (prefix / "tsemu-run").exists():
        pytest.skip("tsemu-run was not built (no static libc in the build)")
    from tsemu.supervisor import SupervisorUnavailable, usable_supervisor

    try:
        usable_supervisor()
    except SupervisorUnavailable as exc:
        pytest.skip(f"the supervisor cannot run here: {exc}")
    socket, _ = container
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TSEMU_SOCKET": str(socket)}
    result = subprocess.run([str(socket.parent / "tsemu-run"), "--", genl, "ctrl", "get", "name",
                             "TASKSTATS"], env=env, capture_output=True, text=True, timeout=60,
                            cwd="/")
    assert result.returncode == 0, result.stderr
    assert "Name: TASKSTATS" in result.stdout and "ID: 0x1f" in result.stdout


def test_the_entry_point_runs_other_commands_as_they_are(prefix: Path, short_tmp: Path) -> None:
    socket = short_tmp / "genl.sock"
    result = subprocess.run([str(prefix / "bin" / "tsemu-entrypoint"), "sh", "-c", "echo $0",
                             "shell"], env=image_environment(prefix, socket),
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert (result.returncode, result.stdout) == (0, "shell\n")
    verb = subprocess.run([str(prefix / "bin" / "tsemu-entrypoint"), "ctl", "ps"],
                          env=image_environment(prefix, socket), capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert verb.returncode == 1
    assert f"no tsemu control socket at {socket}.ctl" in verb.stderr
