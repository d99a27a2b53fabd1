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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
    return shlex.split(run)[3]


# -- the Dockerfile, read ------------------------------------------------------------------------

def test_dockerfile_builds_with_the_script_ci_runs() -> None:
    build, client, runtime = stages()
    assert build[0][1].endswith(" AS build")
    copied = one(build, "COPY").split()
    assert copied == [".", "/src"]
    run = shlex.split(next(rest for w, rest in build if w == "RUN"))
    assert run[:5] == ["sh", "/src/docker/build-steps.sh", "/src", "/opt/tsemu", "&&"]
    # The compose example's client: getdelays alone, on the same base, no tsemu
    assert client[0][1].endswith(" AS getdelays")
    assert one(client, "COPY") == "--from=build /opt/getdelays /usr/local/bin/getdelays"
    # The runtime stage takes the prefix alone: the compiler stayed in the build stage.
    assert ("COPY", "--from=build /opt/tsemu /opt/tsemu") in runtime
    assert not any("apt-get" in rest or "gcc" in rest for _, rest in runtime)
    base = {rest.split()[0] for w, rest in build + client + runtime if w == "FROM"}
    assert base == {"${PYTHON_IMAGE}"}
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()


def test_dockerfile_declares_socket_volume_user_and_healthcheck() -> None:
    runtime = stages()[-1]
    assert one(runtime, "VOLUME") == "/run/tsemu"
    env = one(runtime, "ENV")
    assert f"TSEMU_SOCKET={IMAGE_SOCKET}" in env.split()
    assert "PATH=/opt/tsemu/bin:$PATH" in env.split()
    assert json.loads(one(runtime, "ENTRYPOINT")) == ["/opt/tsemu/bin/tsemu-entrypoint"]
    # serve follows TSEMU_SOCKET (`docker run -e TSEMU_SOCKET=...` moves server and check)
    assert json.loads(one(runtime, "CMD")) == ["serve"]
    assert "TSEMU_SHARED_DIR=1" in env.split()  # the volume is shared on purpose
    # The non-root option: a tsemu user owning the socket directory, chosen by a build arg.
    setup = next(rest for w, rest in runtime if w == "RUN")
    assert "useradd --system --uid \"${TSEMU_UID}\"" in setup and " tsemu" in setup
    assert "chown tsemu:tsemu /run/tsemu" in setup
    assert ("ARG", "TSEMU_USER=root") in runtime
    assert one(runtime, "USER") == "${TSEMU_USER}"
    assert "docker run --user tsemu" in DOCKERFILE.read_text()
    health = one(runtime, "HEALTHCHECK")
    # Healthy within about a second on Docker 20.10 (no --start-interval): every second,
    # a C probe (exec form: no shell either).
    assert re.search(r"--interval=1s --timeout=\S+", health)
    assert json.loads(health.split(" CMD ", 1)[1]) == ["/opt/tsemu/bin/tsemu-health"]


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
    assert "dockerfile: Dockerfile" in text and "target: getdelays" in text
    assert text.count("- tsemu-run:/run/tsemu") == 3  # the server, listener, driver
    assert text.count("- tsemu-run:/srv/tsemu") == 1  # the client, at another path
    assert text.count("    network_mode: none\n") == 3  # every client
    assert text.count("condition: service_healthy") == 3
    assert "LD_PRELOAD: /srv/tsemu/libtsemu-shim.so" in text
    assert "TSEMU_SOCKET: /srv/tsemu/genl.sock" in text
    assert "--exit-code-from getdelays" in text
    try:
        import yaml
    except ImportError:
        return
    compose = yaml.safe_load(text)
    assert set(compose["services"]) == {"tsemu", "getdelays", "listener", "driver"}
    assert set(compose["volumes"]) == {"tsemu-run"}
    for service in compose["services"].values():
        assert service["volumes"][0].startswith("tsemu-run:")


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
    """The Dockerfile's HEALTHCHECK command (exec form), with the image's environment naming
    `socket` (the check follows TSEMU_SOCKET)."""
    command = json.loads(one(stages()[-1], "HEALTHCHECK").split(" CMD ", 1)[1])
    argv = [arg.replace("/opt/tsemu", str(prefix)) for arg in command]
    return subprocess.run(argv, env=image_environment(prefix, socket), capture_output=True,
                          text=True, timeout=60, cwd="/")


@pytest.fixture
def container(prefix: Path, short_tmp: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """The image's ENTRYPOINT + CMD running from the prefix, on a socket in a private directory
    (standing in for the /run/tsemu volume)."""
    socket = short_tmp / "run" / "genl.sock"
    entrypoint = json.loads(one(stages()[-1], "ENTRYPOINT"))
    argv = [arg.replace("/opt/tsemu", str(prefix)) for arg in entrypoint]
    argv += [arg.replace(IMAGE_SOCKET, str(socket)) for arg in json.loads(one(stages()[-1], "CMD"))]
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
    assert os.access(prefix / "bin" / "tsemu-health", os.X_OK)
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
    after = healthcheck(prefix, socket)
    assert after.returncode == 1
    assert after.stderr == f"tsemu-health: no tsemu server at {socket}.ctl: No such file or " \
        "directory\n"


def test_the_health_check_costs_about_a_millisecond(
        prefix: Path, container: tuple[Path, subprocess.Popen[str]]) -> None:
    """It runs every second for the container's life: its CPU time must stay negligible
    (measured: about 1 ms; Python alone takes 70 ms to start here)."""
    socket, _ = container
    before = os.times()
    for _ in range(20):
        assert healthcheck(prefix, socket).returncode == 0
    after = os.times()
    cpu = (after.children_user - before.children_user
           + after.children_system - before.children_system) / 20
    print(f"health check: {cpu * 1000:.1f} ms of CPU each")
    assert cpu < 0.02


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


def test_the_offered_supervisor_reaches_a_program_nothing_is_preloaded_into(
        prefix: Path, container: tuple[Path, subprocess.Popen[str]]) -> None:
    """The static supervisor offered in the socket's directory reaches a client that nothing
    is preloaded into (here the host's genl, without LD_PRELOAD; a client container without
    glibc: test_a_scratch_client_container_* below)."""
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


# -- the image, run by a Docker engine (marked `docker`: `make test-docker`) ---------------------

ENGINE_ARGS = ["serve", "--admin", "all"]  # (containers hold no CAP_NET_ADMIN by default)


def docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout.strip()


class Engine:
    """Containers and volumes a test starts, all removed at its end."""

    def __init__(self, image: str) -> None:
        import uuid

        self.image = image
        self.prefix = f"tsemu-test-{uuid.uuid4().hex[:8]}"
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def volume(self) -> str:
        name = f"{self.prefix}-v{len(self.volumes)}"
        docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def run(self, *args: str, detach: bool = True, image: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str] | str:
        name = f"{self.prefix}-c{len(self.containers)}"
        self.containers.append(name)
        argv = ["docker", "run", "--name", name, *(["-d"] if detach else []), *args]
        command_at = next((i for i, a in enumerate(argv) if a == "IMAGE"), None)
        assert command_at is not None, "say where the image goes with IMAGE"
        argv[command_at] = image or self.image
        if detach:
            docker(*argv[1:], timeout=timeout)
            return name
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def server(self, *mounts: str, user: str | None = None, args: Sequence[str] = ENGINE_ARGS
               ) -> str:
        """A server container; returns once its ready line is out."""
        name = self.run(*[x for m in mounts for x in ("-v", m)],
                        *(["--user", user] if user else []), "IMAGE", *args)
        assert isinstance(name, str)
        self.wait_log(name, "tsemu: listening on")
        return name

    def wait_log(self, name: str, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True,
                                  timeout=20)
            if text in logs.stdout + logs.stderr:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: no {text!r}: {logs.stdout}{logs.stderr}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.containers:
            subprocess.run(["docker", "rm", "-f", "-v", *self.containers], capture_output=True,
                           timeout=60)
        if self.volumes:
            subprocess.run(["docker", "volume", "rm", "-f", *self.volumes], capture_output=True,
                           timeout=60)


@pytest.fixture
def engine(docker_image: str) -> Iterator[Engine]:
    running = Engine(docker_image)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def getdelays_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/clients/getdelays.c built on the host (Debian bookworm here, like the image: the
    same glibc), for client containers to run with the offered shim."""
    from tests.clients.harness import compile_client

    return compile_client(ROOT / "tests" / "clients" / "getdelays.c",
                          tmp_path_factory.mktemp("getdelays"))


def host_env(socket_path: Path | str, *, shim: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TSEMU_", "LD_PRELOAD"))}
    env["TSEMU_SOCKET"] = str(socket_path)
    if shim:
        env["LD_PRELOAD"] = str(ROOT / "tsemu" / "libtsemu-shim.so")
    return env


@pytest.mark.docker
def test_the_image_turns_healthy_in_a_second_and_stops_at_once_as_its_user(
        engine: Engine) -> None:
    volume = engine.volume()
    started = time.monotonic()
    name = engine.run("--user", "tsemu", "-v", f"{volume}:/run/tsemu", "IMAGE")
    assert isinstance(name, str)
    while docker("inspect", "-f", "{{.State.Health.Status}}", name) != "healthy":
        assert time.monotonic() - started < 10, docker("logs", name)
        time.sleep(0.05)
    healthy = time.monotonic() - started
    size = int(docker("image", "inspect", "--format", "{{.Size}}", engine.image))
    print(f"image {engine.image}: {size / 1e6:.0f} MB; healthy {healthy:.2f} s after "
          "`docker run`")
    assert healthy < 2.5
    assert docker("exec", name, "stat", "-c", "%U %a", "/run/tsemu/genl.sock") == "tsemu 666"
    # PID 1 (the server: the entry point exec'd it) runs as the image's user
    status = docker("exec", name, "cat", "/proc/1/status")
    assert "\nUid:\t10001\t10001\t10001\t10001\n" in status
    before = time.monotonic()
    docker("stop", name)
    stopped = time.monotonic() - before
    print(f"docker stop: {stopped:.2f} s")
    assert stopped < 1.5
    assert docker("inspect", "-f", "{{.State.ExitCode}}", name) == "0"
    assert "Traceback" not in docker("logs", name)


@pytest.mark.docker
def test_client_containers_share_only_the_volume_at_other_paths(
        engine: Engine, getdelays_binary: Path) -> None:
    """The server's volume at /run/tsemu; a getdelays client at /srv/a, a getdelays
    listener at /srv/b and `tsemu listen` at /mnt/c, with no network: each is answered, and
    the listeners see the exit `docker exec ... tsemu ctl exit` makes."""
    volume = engine.volume()
    server = engine.server(f"{volume}:/run/tsemu")

    def client(path: str, *command: str, detach: bool = False) -> Any:
        return engine.run("--network", "none", "-v", f"{volume}:{path}",
                          "-v", f"{getdelays_binary}:/usr/local/bin/getdelays:ro",
                          "-e", f"TSEMU_SOCKET={path}/genl.sock",
                          "-e", f"LD_PRELOAD={path}/libtsemu-shim.so", "IMAGE", *command,
                          detach=detach)

    asked = client("/srv/a", "getdelays", "-p", "1")
    assert asked.returncode == 0, asked.stderr
    assert "pid=1 " in asked.stdout and "comm=systemd" in asked.stdout, asked.stdout
    listener = client("/srv/b", "getdelays", "-m", "0-1", "-n", "1", detach=True)
    listen = engine.run("--network", "none", "-v", f"{volume}:/mnt/c", "-e",
                        "TSEMU_SOCKET=/mnt/c/genl.sock", "IMAGE", "listen", "--cpus", "0-1",
                        "--count", "1", "--json")
    assert isinstance(listener, str) and isinstance(listen, str)
    engine.wait_log(listener, "registered cpumask=0-1")
    engine.wait_log(listen, "listening for exits")
    pid = docker("exec", server, "tsemu", "ctl", "spawn", "--comm", "dockerjob").split()[0]
    docker("exec", server, "tsemu", "ctl", "exit", pid, "--code", "3")
    for name in (listener, listen):
        assert docker("wait", name, timeout=30) == "0", docker("logs", name)
    assert f"pid={pid} " in docker("logs", listener)
    assert '"ac_comm": "dockerjob"' in docker("logs", listen)


@pytest.mark.docker
def test_host_clients_through_a_bind_mount_at_another_path(
        engine: Engine, getdelays_binary: Path, short_tmp: Path) -> None:
    """The testcontainers shape, by hand: the server in a container as its non-root user on a
    bind-mounted host directory, the clients on the host (root here: the server, another
    user, must reach their sockets), at the host path."""
    host_dir = short_tmp / "run"
    host_dir.mkdir()
    os.chown(host_dir, 10001, 10001)
    server = engine.server(f"{host_dir}:/run/tsemu", user="tsemu")
    socket_path = host_dir / "genl.sock"
    got = subprocess.run([sys.executable, "-m", "tsemu", "get", "--pid", "1"],
                         env=host_env(socket_path), capture_output=True, text=True, timeout=30)
    assert got.returncode == 0 and "TASKSTATS pid 1" in got.stdout, got.stderr
    listener = subprocess.Popen([str(getdelays_binary), "-m", "0-1", "-n", "1"],
                                env=host_env(socket_path, shim=True), stdout=subprocess.PIPE,
                                text=True)
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().startswith("family=TASKSTATS")
        assert listener.stdout.readline() == "registered cpumask=0-1\n"
        pid = docker("exec", server, "tsemu", "ctl", "spawn", "--comm", "hostjob").split()[0]
        docker("exec", server, "tsemu", "ctl", "exit", pid)
        out, _ = listener.communicate(timeout=30)
        assert f"pid={pid} " in out and "comm=hostjob" in out, out
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
    assert "not answering" not in docker("logs", server)


@pytest.mark.docker
def test_a_host_client_through_the_volumes_own_path(engine: Engine) -> None:
    volume = engine.volume()
    engine.server(f"{volume}:/run/tsemu")
    mountpoint = docker("volume", "inspect", "-f", "{{.Mountpoint}}", volume)
    got = subprocess.run([sys.executable, "-m", "tsemu", "families"],
                         env=host_env(f"{mountpoint}/genl.sock"), capture_output=True,
                         text=True, timeout=30)
    assert got.returncode == 0 and "TASKSTATS" in got.stdout, got.stderr


@pytest.mark.docker
@pytest.mark.parametrize(("setup", "args", "said"), [
    ("root-volume", [], "genl.sock.ports belongs to uid 0, not to this server (uid 10001)"),
    ("root-dir", [], "cannot make the server's socket in /run/tsemu: it belongs to uid 0"),
    ("missing", ["-e", "TSEMU_SOCKET=/nonexistent/x/genl.sock"],
     "cannot make the socket directory /nonexistent/x: Permission denied"),
    ("scenario", ["IMAGE", "serve", "--scenario", "/nonexistent.toml"],
     "/nonexistent.toml: cannot read the scenario"),
])
def test_startup_failures_are_one_line_and_a_status(
        engine: Engine, short_tmp: Path, setup: str, args: list[str], said: str) -> None:
    mounts: list[str] = []
    if setup == "root-volume":  # a volume a root container used first
        volume = engine.volume()
        made = engine.run("-v", f"{volume}:/run/tsemu", "IMAGE", "sh", "-c",
                          "mkdir /run/tsemu/genl.sock.ports", detach=False)
        assert not isinstance(made, str) and made.returncode == 0, made
        mounts = ["-v", f"{volume}:/run/tsemu"]
    elif setup == "root-dir":  # a root-owned bind mount
        mounts = ["-v", f"{short_tmp}:/run/tsemu"]
    if "IMAGE" not in args:
        args = [*args, "IMAGE"]
    done = engine.run("--user", "tsemu", *mounts, *args, detach=False)
    assert not isinstance(done, str)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("tsemu: "), done.stderr
    assert said in done.stderr


# -- a client container without glibc: FROM scratch, busybox, a musl client (tests/scratchimage.py)

#: A quiet scenario for the scratch clients: no timeline, no generator (the embedded default
#: has curl jobs exiting all the time), so that a listener's first exit is the test's own.
QUIET_SCENARIO = """
[machine]
cpus = 2

[[process]]
pid = 1
comm = "init"

[[process]]
pid = 400
comm = "scratchsvc"
threads = 3
cpu = 1
"""
#: Where the client containers mount the server's volume (not the server's /run/tsemu).
CLIENT_MOUNT = "/srv/t"
#: Docker's default seccomp profile refuses pidfd_getfd(2) (EPERM) unless the container has
#: CAP_SYS_PTRACE; tsemu-run needs it to take the filter's listener from its child and to
#: copy each caller's descriptors (see test_the_supervisor_check_sees_dockers_profile).
SUPERVISED = ("--network", "none", "--cap-add", "SYS_PTRACE")


@pytest.fixture(scope="module")
def scratch_image(docker_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The FROM-scratch client image (busybox-static, getdelays built against musl), imported
    once per content."""
    from tests.scratchimage import Unavailable, scratch_image

    try:
        return scratch_image(tmp_path_factory.mktemp("scratch"))
    except Unavailable as exc:
        pytest.skip(f"scratch client image: {exc}")


def quiet_server(engine: Engine, short_tmp: Path, user: str | None = None) -> tuple[str, str]:
    """A server container (root unless `user`, --admin all) on QUIET_SCENARIO: (its name, its
    volume)."""
    scenario = short_tmp / "quiet.toml"
    scenario.write_text(QUIET_SCENARIO)
    scenario.chmod(0o644)
    short_tmp.chmod(0o755)  # readable by the image's tsemu user too
    volume = engine.volume()
    server = engine.server(f"{volume}:/run/tsemu", f"{scenario}:/scenario.toml:ro", user=user,
                           args=[*ENGINE_ARGS, "--scenario", "/scenario.toml"])
    return server, volume


def supervised(engine: Engine, image: str, volume: str, *command: str, detach: bool = False,
               options: Sequence[str] = SUPERVISED) -> Any:
    """`CLIENT_MOUNT/tsemu-run -- COMMAND` in a scratch container sharing only the volume."""
    return engine.run(*options, "-v", f"{volume}:{CLIENT_MOUNT}",
                      "-e", f"TSEMU_SOCKET={CLIENT_MOUNT}/genl.sock", "IMAGE",
                      f"{CLIENT_MOUNT}/tsemu-run", "--", *command, image=image, detach=detach)


@pytest.mark.docker
def test_the_scratch_client_image_has_no_glibc(engine: Engine, scratch_image: str) -> None:
    listed = engine.run("--network", "none", "IMAGE", "sh", "-c",
                        "ls /; find / -xdev -name 'ld-*' -o -xdev -name 'lib*.so*'",
                        image=scratch_image, detach=False)
    assert not isinstance(listed, str) and listed.returncode == 0, listed
    assert listed.stdout.split() == ["bin", "client", "dev", "etc", "proc", "run", "srv", "sys",
                                     "tmp"], listed.stdout
    size = int(docker("image", "inspect", "--format", "{{.Size}}", scratch_image))
    print(f"scratch client image {scratch_image}: {size / 1e6:.1f} MB")
    assert size < 5e6


@pytest.mark.docker
def test_a_scratch_client_container_gets_the_scenarios_stats_and_proc(
        engine: Engine, scratch_image: str, short_tmp: Path) -> None:
    """The musl getdelays under the offered tsemu-run: GET by pid and tgid answer the
    scenario's values (a pid it lacks is ESRCH); busybox's ls and cat under tsemu-run see the
    server's /proc view (SOCKET.proc in the volume)."""
    _, volume = quiet_server(engine, short_tmp)
    got = supervised(engine, scratch_image, volume, "/client", "-p", "400", "-t", "400")
    assert got.returncode == 0, got.stdout + got.stderr
    family, by_pid, by_tgid = got.stdout.splitlines()
    assert family == "family=TASKSTATS id=0x1f"
    assert by_pid.startswith("pid=400 ") and " comm=scratchsvc " in by_pid, by_pid
    assert " tgid=400 " in by_pid and " ppid=1 " in by_pid, by_pid
    assert by_tgid.startswith("tgid=400 "), by_tgid
    missing = supervised(engine, scratch_image, volume, "/client", "-p", "999")
    assert missing.stdout.splitlines()[1:] == ["error=ESRCH"], missing.stdout + missing.stderr
    listed = supervised(engine, scratch_image, volume, "ls", "/proc")
    assert listed.returncode == 0, listed.stderr
    assert {n for n in listed.stdout.split() if n.isdigit()} == {"1", "400"}, listed.stdout
    stat = supervised(engine, scratch_image, volume, "cat", "/proc/400/stat", "/proc/1/comm")
    assert stat.returncode == 0, stat.stderr
    assert stat.stdout.startswith("400 (scratchsvc) "), stat.stdout
    assert stat.stdout.splitlines()[1] == "init"


@pytest.mark.docker
def test_scratch_client_containers_listen_for_scripted_exits(
        engine: Engine, scratch_image: str, short_tmp: Path) -> None:
    """Listeners registered in three client containers at once receive the exit `docker exec
    SERVER tsemu ctl exit` makes: two as root, whose clients have the same pid in their own
    pid namespaces (the port each asks for: one gets it, the other another), and one as
    uid 65534, another user than the server's (tsemu-run cannot claim its client's pid then:
    the server hears the supervisor, from the port it could bind)."""
    server, volume = quiet_server(engine, short_tmp)
    listeners = []
    for user in ("0:0", "0:0", "65534:65534"):
        name = supervised(engine, scratch_image, volume, "/client", "-m", "0-1", "-n", "1",
                          detach=True, options=[*SUPERVISED, "--user", user])
        assert isinstance(name, str)
        listeners.append(name)
    for name in listeners:
        engine.wait_log(name, "registered cpumask=0-1")
    ports = docker("exec", server, "ls", "-ln", "/run/tsemu/genl.sock.ports").splitlines()[1:]
    print(f"port files: {ports}")
    owners = [line.split()[2] for line in ports]
    assert owners.count("0") >= 2 and "65534" in owners, ports
    pid = docker("exec", server, "tsemu", "ctl", "spawn", "--comm", "scratchexit", "--cpu",
                 "1").split()[0]
    docker("exec", server, "tsemu", "ctl", "exit", pid, "--code", "3")
    for name in listeners:
        assert docker("wait", name, timeout=30) == "0", docker("logs", name)
        out = docker("logs", name)
        exits = [line for line in out.splitlines() if line.startswith("exit ")]
        assert len(exits) == 1 and exits[0].startswith(f"exit pid={pid} "), out
        assert " comm=scratchexit " in exits[0] and " exitcode=768 " in exits[0], out


@pytest.fixture(scope="module")
def static_go_client(go_clients: dict[str, Path]) -> Path:
    """tests/clients/gotaskstats built with CGO_ENABLED=0: one static binary, the
    distroless/scratch case (mounted into the scratch image, which has no Go)."""
    return go_clients["cgo0"]


@pytest.mark.docker
def test_a_static_go_client_in_a_scratch_container_sees_only_the_scenario(
        engine: Engine, scratch_image: str, static_go_client: Path, short_tmp: Path) -> None:
    """gotaskstats (no cgo: the Go runtime's own system calls) in the scratch container, as a
    user (65534) other than the server's (the image's tsemu user, 10001): the family list,
    GET by pid, and /proc listed the way exporters do it, all the scenario's."""
    _, volume = quiet_server(engine, short_tmp, user="tsemu")
    options = [*SUPERVISED, "--user", "65534:65534",
               "-v", f"{static_go_client}:/gotaskstats:ro"]
    families = supervised(engine, scratch_image, volume, "/gotaskstats", "families",
                          options=options)
    assert families.stdout.splitlines() == ["family=nlctrl id=16", "family=TASKSTATS id=31"], \
        families.stdout + families.stderr
    by_pid = supervised(engine, scratch_image, volume, "/gotaskstats", "pid", "400",
                        options=options)
    assert by_pid.stdout.startswith("pid=400 ") and " comm=scratchsvc " in by_pid.stdout, \
        by_pid.stdout + by_pid.stderr
    listed = supervised(engine, scratch_image, volume, "/gotaskstats", "proclist",
                        options=options)
    assert listed.stdout.splitlines() == ["pid=1 comm=init tgid=1",
                                          "pid=400 comm=scratchsvc tgid=400"], \
        listed.stdout + listed.stderr


@pytest.mark.docker
def test_without_cap_sys_ptrace_the_supervisor_refuses_to_run_the_client(
        engine: Engine, scratch_image: str, short_tmp: Path) -> None:
    """Docker's default seccomp profile answers pidfd_getfd(2) with EPERM unless the
    container has CAP_SYS_PTRACE: tsemu-run cannot take its child's listener, kills the
    child before it runs (never unsupervised, never the host's netlink) and fails."""
    _, volume = quiet_server(engine, short_tmp)
    refused = supervised(engine, scratch_image, volume, "/client", "-p", "400",
                         options=["--network", "none"])
    assert refused.returncode != 0 and refused.stdout == "", refused.stdout
    assert "cannot take the seccomp listener from the child: Operation not permitted" in \
        refused.stderr and "--cap-add SYS_PTRACE" in refused.stderr, refused.stderr


@pytest.mark.docker
def test_the_supervisor_check_sees_dockers_profile(engine: Engine, scratch_image: str,
                                                   short_tmp: Path) -> None:
    """`tsemu-run --check` fails where pidfd_getfd is refused (it once took EPERM for
    support: only ENOSYS counted), and says what to do."""
    _, volume = quiet_server(engine, short_tmp)
    check = engine.run("--network", "none", "-v", f"{volume}:{CLIENT_MOUNT}", "IMAGE",
                       f"{CLIENT_MOUNT}/tsemu-run", "--check", image=scratch_image,
                       detach=False)
    assert not isinstance(check, str)
    assert check.returncode == 1 and "--cap-add SYS_PTRACE" in check.stderr, check.stderr
    allowed = engine.run(*SUPERVISED, "-v", f"{volume}:{CLIENT_MOUNT}", "IMAGE",
                         f"{CLIENT_MOUNT}/tsemu-run", "--check", image=scratch_image,
                         detach=False)
    assert not isinstance(allowed, str)
    assert (allowed.returncode, allowed.stderr) == (0, "")
