"""pytest plugin: a live tsemu for the test, and a handle to script it.

Installed with tsemu (entry point `pytest11`), it provides the fixture `tsemu`:

```python
def test_my_exporter_counts_exits(tsemu):
    proc = tsemu.popen(["my-exporter", "--listen", "0-1"])     # runs through the shim
    tsemu.wait_for_listener()
    pid = tsemu.spawn(comm="job", cpu=1)
    tsemu.exit(pid, code=3)
    ...
```

The emulator runs in a child process (`tsemu serve`) on a socket in a private temporary
directory, so the fixture works the same in plain pytest and with pytest-trio, and a crash
of the code under test cannot take it down. The scenario is the fixture `tsemu_scenario`
(override it, or mark the test with `@pytest.mark.tsemu_scenario("path/to.toml")`); by
default an empty two-CPU machine on a virtual clock.

Each test gets a fresh machine, but not a fresh server: a session starts one server per
distinct scenario, the first time a test asks for it, and puts it back between tests with the
`reset` control op (the scenario's table, clock, timeline and pids; no listener, fault,
counter or client of the test before; its /proc view anew), which costs a few milliseconds
where starting a server costs a few hundred. A server that a test stopped or broke is started
again for the next one. The servers stop when the session ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: The default scenario: nothing but init, two CPUs, a clock that moves only when told.
EMPTY_VIRTUAL_MACHINE = """\
[machine]
cpus = 2
clock = "virtual"

[[process]]
pid = 1
comm = "init"
state = "sleeping"
"""
#: How long a server may take to start (seconds).
START_TIMEOUT = 20.0


class TsemuHandle:
    """A running tsemu: where it listens, how to run clients through it, how to script it."""

    def __init__(self, socket_path: Path, process: subprocess.Popen[bytes], *,
                 control: Any = None, log: Path | None = None) -> None:
        from tsemu.emulator.shell.control import ControlClient

        self.socket_path = socket_path
        self.process = process
        #: where the server writes its stderr (None: a pipe, or nowhere)
        self.log = log
        self._control = control if control is not None else ControlClient(socket_path)
        self._children: list[subprocess.Popen[Any]] = []
        from tsemu.family import ROOT_ENV, FamilyChannel
        from tsemu.shim import ShimNotBuilt, shim_environment

        try:
            self.env = shim_environment(socket_path, proc="emulated")
        except ShimNotBuilt:  # no C compiler at install time: native clients still work
            self.env = {**os.environ, "TSEMU_SOCKET": str(socket_path)}
        # The test process and the clients it starts belong to the emulated machine: the
        # server answers about them and hears of the exits `run` and `wait` reap.
        self._family = FamilyChannel.open(socket_path)
        if self._family is not None and self._family.register_root():
            self.env[ROOT_ENV] = str(os.getpid())

    # -- clients ---------------------------------------------------------------------------

    def reach(self, argv: list[str], via: str = "auto",
              env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that run `argv` reached `via` "auto", "shim" or
        "seccomp", as `tsemu run --via` does (cli/run.py), except that "auto" adds the
        supervisor only for a static or Go `argv[0]` (a libc client stays the test's own
        child); a program nothing can reach here (static or Go, without the supervisor)
        fails the test rather than meet the host."""
        from tsemu.cli.run import plan_via, strip_shim, supervised

        env = dict(self.env if env is None else env)
        supervisor, preload, refusal, _note = plan_via(argv, via, False, env.get("PATH"),
                                                       frugal=True)
        if refusal:
            raise RuntimeError(refusal)
        if not preload:
            env = strip_shim(env)
        if supervisor is not None:
            argv = supervised(supervisor, self.socket_path, argv, False)
        return argv, env

    def run(self, argv: list[str], *, input: bytes | str | None = None, timeout: float = 60,
            capture_output: bool = False, check: bool = False, via: str = "auto",
            **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a client to completion through the shim (and, `via` "auto" where the kernel
        allows it, the seccomp supervisor: see `reach`), as subprocess.run does (Popen's
        keywords, `input`, `timeout`, `capture_output`, `check`); its exit is reported to
        the machine's listeners, as the kernel reports a real process's."""
        argv, kwargs["env"] = self.reach(argv, via, kwargs.get("env"))
        if capture_output:
            kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
        if input is not None:
            kwargs["stdin"] = subprocess.PIPE
        proc = subprocess.Popen(argv, **kwargs)
        outputs: dict[str, Any] = {}
        readers = [threading.Thread(target=lambda name, f: outputs.__setitem__(name, f.read()),
                                    args=(name, stream), daemon=True)
                   for name, stream in (("out", proc.stdout), ("err", proc.stderr))
                   if stream is not None]
        for reader in readers:
            reader.start()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            if proc.stdin is not None:
                if input is not None:
                    proc.stdin.write(input)
                proc.stdin.close()
            self.wait(proc)
        finally:
            timer.cancel()
            for reader in readers:
                reader.join()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if expired.is_set():
            raise subprocess.TimeoutExpired(argv, timeout, outputs.get("out"),
                                            outputs.get("err"))
        done = subprocess.CompletedProcess(argv, proc.returncode, outputs.get("out"),
                                           outputs.get("err"))
        if check:
            done.check_returncode()
        return done

    def wait(self, proc: subprocess.Popen[Any]) -> int:
        """Wait for a child the test started (`popen`), reporting its exit to the machine
        before reaping it (a plain `proc.wait()` reaps it unreported); its return code."""
        from tsemu.family import reap_child

        if proc.returncode is None:
            proc.returncode = os.waitstatus_to_exitcode(reap_child(proc.pid, self._family))
        return proc.returncode

    def popen(self, argv: list[str], *, via: str = "auto",
              **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a client through the shim (and the supervisor: `reach`); the test stops it
        (or the fixture does)."""
        argv, kwargs["env"] = self.reach(argv, via, kwargs.get("env"))
        proc = subprocess.Popen(argv, **kwargs)
        self._children.append(proc)
        return proc

    # -- control ---------------------------------------------------------------------------

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        return self._control.call(op, **args)

    def spawn(self, comm: str = "task", **spec: Any) -> int:
        """Create a process (keywords as `tsemu ctl spawn`); returns its pid."""
        return int(self.call("spawn", comm=comm, **spec)["pid"])

    def exit(self, pid: int, **how: Any) -> list[int]:
        """Exit a process or thread now (code=, signal=, core=, cpu=); returns the tids."""
        return list(self.call("exit", pid=pid, **how)["exited"])

    def set(self, pid: int, **values: Any) -> None:
        self.call("set", pid=pid, values=values)

    def advance(self, seconds: float) -> float:
        """Move the virtual clock; returns the scenario time afterwards."""
        return float(self.call("advance", seconds=seconds)["now"])

    def ps(self) -> list[dict[str, Any]]:
        return list(self.call("ps")["tasks"])

    def listeners(self) -> dict[int, list[int]]:
        return {int(cpu): ports for cpu, ports in self.call("listeners")["listeners"].items()}

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def wait_for_listener(self, cpus: str | None = None, timeout: float = 10) -> None:
        """Block until the client under test has registered a cpumask (on `cpus`)."""
        self.call("wait_listener", cpus=cpus, timeout=timeout)

    def close(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.kill()
                child.wait()
        self._control.close()
        if self._family is not None:
            self._family.close()


def _serve(scenario_text: str, directory: Path, *, timeout: float = START_TIMEOUT
           ) -> tuple[Path, subprocess.Popen[bytes], Path]:
    """Start `tsemu serve` on `scenario_text` in `directory`; (its socket, its process, its
    stderr's file) once it listens. Its stderr goes to a file, never to a pipe: a server that
    lives for a whole session and says things (a skipped timeline event) would otherwise
    fill a pipe nobody reads and stall."""
    scenario_file = directory / "scenario.toml"
    scenario_file.write_text(scenario_text)
    socket_path = directory / "genl.sock"
    log = directory / "serve.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "tsemu.cli.app", "serve", "--socket", str(socket_path),
             "--scenario", str(scenario_file)],
            stderr=err, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while b"listening on" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
            process.wait()
            said = log.read_bytes().decode(errors="replace")
            raise RuntimeError(f"tsemu did not start: {said}")
        time.sleep(0.002)
    return socket_path, process, log


def start_tsemu(scenario_text: str, directory: Path, *, timeout: float = START_TIMEOUT
                ) -> TsemuHandle:
    """Start `tsemu serve` on `scenario_text` in `directory`; return once it listens (the
    caller stops it: `stop_tsemu`)."""
    socket_path, process, log = _serve(scenario_text, directory, timeout=timeout)
    return TsemuHandle(socket_path, process, log=log)


def stop_tsemu(process: subprocess.Popen[bytes]) -> None:
    """Stop a server `start_tsemu` started (SIGTERM, then SIGKILL after 10 s)."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def scratch_dir() -> str:
    """Where the fixture's servers keep their sockets and /proc views: a tmpfs when there is
    one ($XDG_RUNTIME_DIR, else /dev/shm), else /tmp. A reset rewrites the view's files, and
    on a disk file system (ext4) each made file costs about 0.3 ms where tmpfs takes 20 us:
    the reset of the default machine takes 1.8 ms on tmpfs, 35 ms on ext4 (measured)."""
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return "/tmp"


class TsemuMachines:
    """The servers of a pytest session, one per distinct scenario text, each put back (`reset`)
    before it serves another test."""

    def __init__(self) -> None:
        self._servers: dict[str, tuple[Path, subprocess.Popen[bytes], Path]] = {}
        self._directories: list[Path] = []

    def handle(self, scenario_text: str) -> TsemuHandle:
        """A handle on a server of `scenario_text` as the scenario starts it, with no client
        of an earlier test."""
        from tsemu.emulator.shell.control import ControlClient, ControlError

        served = self._servers.get(scenario_text)
        if served is not None:
            socket_path, process, log = served
            control = None
            if process.poll() is None:
                try:
                    control = ControlClient(socket_path)
                    control.call("reset")
                except (ControlError, OSError):  # broken by the test before: start another
                    if control is not None:
                        control.close()
                    control = None
            if control is not None:
                return TsemuHandle(socket_path, process, control=control, log=log)
            stop_tsemu(process)
            del self._servers[scenario_text]
        directory = Path(tempfile.mkdtemp(prefix="tsemu-", dir=scratch_dir()))
        os.chmod(directory, 0o755)
        self._directories.append(directory)
        socket_path, process, log = self._servers[scenario_text] = _serve(scenario_text,
                                                                         directory)
        return TsemuHandle(socket_path, process, log=log)

    def close(self) -> None:
        """Stop every server and remove its files."""
        for _, process, _ in self._servers.values():
            stop_tsemu(process)
        self._servers.clear()
        for directory in self._directories:
            shutil.rmtree(directory, ignore_errors=True)
        self._directories.clear()


@pytest.fixture(scope="session")
def tsemu_machines() -> Iterator[TsemuMachines]:
    """The session's servers (see `TsemuMachines`), stopped when the session ends."""
    machines = TsemuMachines()
    try:
        yield machines
    finally:
        machines.close()


@pytest.fixture
def tsemu_scenario(request: pytest.FixtureRequest) -> str:
    """The scenario the `tsemu` fixture serves: TOML text. Override this fixture, or mark
    the test `@pytest.mark.tsemu_scenario(path_or_text)`."""
    marker = request.node.get_closest_marker("tsemu_scenario")
    if marker is None:
        return EMPTY_VIRTUAL_MACHINE
    value = str(marker.args[0])
    path = Path(value)
    if "\n" not in value and path.suffix == ".toml":
        if not path.is_absolute():
            path = Path(request.node.path).parent / path
        return path.read_text()
    return value


@pytest.fixture
def tsemu(tsemu_scenario: str, tsemu_machines: TsemuMachines) -> Iterator[TsemuHandle]:
    """A tsemu machine for this test: the session's server for its scenario, put back as the
    scenario starts it; the clients the test started are stopped afterwards."""
    handle = tsemu_machines.handle(tsemu_scenario)
    try:
        yield handle
    finally:
        handle.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tsemu_scenario(path_or_toml): the scenario the tsemu fixture serves")
