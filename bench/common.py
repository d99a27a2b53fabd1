"""What every benchmark shares: the run's settings, target lines, C programs, processes.

A benchmark module has `NAME`, `run(ctx) -> dict` and, optionally, `profile(ctx, result)`
returning markdown (where the time of its failing hot path goes). `run` returns
``{"name": NAME, "lines": [Line.as_dict(), ...], "data": {...}}``: the lines are what
`python -m bench` prints (one per target or reported figure), the data what results.json keeps.

Processes: every process a benchmark starts goes through `Context.spawn` (or `run_program`),
so `Context.close` can end whatever is still running, by pid, however the benchmark ended.
Placement: on a machine with two or more CPUs, "servers" (tsemu, the echo server, the
reference programs' server halves) run on CPU 0 and "clients" (GET clients, listeners, the
reference programs' client halves) on CPU 1, references and tsemu alike, so that the figures
repeat from run to run (unpinned, the scheduler's choices swing a socketpair ping-pong by a
factor of three here). `--placement free` leaves placement to the scheduler.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
C_SOURCES = BENCH / "c"
CFLAGS = ("-O2", "-Wall", "-Wextra")


class BenchError(RuntimeError):
    """A benchmark could not measure what it should (not a failed target: a broken run)."""


# -- target lines ----------------------------------------------------------------------------

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"


@dataclass
class Line:
    """One printed line: a target (PASS/FAIL), a reported figure (INFO) or a SKIP with why."""

    key: str
    name: str
    measured: float | None
    unit: str
    target: float | None = None
    #: ">=" (measured must reach target) or "<=" (must not exceed it)
    op: str = ">="
    reference: str | None = None
    reference_value: float | None = None
    note: str = ""
    verdict: str = INFO
    #: measured / reference_value, when there is a reference
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.reference_value and self.measured is not None:
            self.ratio = self.measured / self.reference_value
        if self.verdict == INFO and self.target is not None and self.measured is not None:
            ok = self.measured >= self.target if self.op == ">=" else self.measured <= self.target
            self.verdict = PASS if ok else FAIL

    def fail(self, why: str) -> Line:
        """Mark the line FAIL whatever the figure says (e.g. messages were lost)."""
        self.verdict = FAIL
        self.note = f"{self.note}; {why}" if self.note else why
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def skip_line(key: str, name: str, why: str) -> Line:
    return Line(key, name, None, "", note=why, verdict=SKIP)


def fmt(value: float | None, unit: str = "") -> str:
    """A figure for humans: thousands separators, sensible precision."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "us":
        return f"{value:.1f} us"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "x":
        return f"{value:.2f}x"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def render(line: dict[str, Any]) -> str:
    """The printed form of a line: verdict, name, measured, target, reference and ratio."""
    verdict, unit = line["verdict"], line["unit"]
    head = f"{verdict:<4}  {line['name']:<44}"
    if verdict == SKIP:
        return f"{head} skipped: {line['note']}"
    text = f"{head} {fmt(line['measured'], unit):>14}"
    if line["target"] is not None:
        text += f"   target {line['op']} {fmt(line['target'], unit)}"
    if line["reference"]:
        ratio = line["ratio"]
        text += (f"   ({ratio:.3f}x " if ratio is not None else "   (") + \
            f"{line['reference']} {fmt(line['reference_value'], unit)})"
    if line["note"]:
        text += f"   [{line['note']}]"
    return text


def result(name: str, lines: Iterable[Line], **data: Any) -> dict[str, Any]:
    return {"name": name, "lines": [ln.as_dict() for ln in lines], "data": data}


# -- the run's settings and resources --------------------------------------------------------


@dataclass
class Placement:
    server: set[int] | None
    client: set[int] | None

    @classmethod
    def choose(cls, mode: str) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if mode == "split" and len(cpus) >= 2:
            return cls({cpus[0]}, {cpus[1]})
        if mode == "same" and cpus:
            return cls({cpus[0]}, {cpus[0]})
        return cls(None, None)

    @property
    def mode(self) -> str:
        if self.server is None:
            return "free"
        return "same" if self.server == self.client else "split"

    def c_args(self) -> list[str]:
        """-S/-C options of the reference programs (server half, client half)."""
        if self.server is None or self.client is None:
            return []
        return ["-S", str(min(self.server)), "-C", str(min(self.client))]

    def describe(self) -> str:
        if self.server is None:
            return "unpinned"
        return f"servers on CPU {min(self.server)}, clients on CPU {min(self.client or {0})}"


@dataclass
class Context:
    """One benchmark run: its settings, scratch directory, compiled programs and processes."""

    quick: bool = False
    placement: Placement = field(default_factory=lambda: Placement.choose("split"))
    profile: bool = True
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tsb", dir="/tmp")))
    out: Path = BENCH / "results"
    python: str = sys.executable
    _programs: dict[str, Path] = field(default_factory=dict)
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.reap()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def scaled(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    # -- programs --------------------------------------------------------------------------

    def program(self, name: str) -> Path:
        """bench/c/NAME.c, compiled once per run into the scratch directory."""
        if name not in self._programs:
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if not compiler:
                raise BenchError("no C compiler (cc, gcc) to build the benchmark's programs")
            binary = self.tmp / name
            done = subprocess.run([compiler, *CFLAGS, "-o", str(binary),
                                   str(C_SOURCES / f"{name}.c")],
                                  capture_output=True, text=True, check=False, timeout=60)
            if done.returncode:
                raise BenchError(f"compiling bench/c/{name}.c failed:\n{done.stderr}")
            self._programs[name] = binary
        return self._programs[name]

    def tsemu(self) -> list[str]:
        """The `tsemu` command as installed beside this interpreter (the console script)."""
        script = Path(self.python).with_name("tsemu")
        if script.exists():
            return [str(script)]
        return [self.python, "-m", "tsemu.cli.app"]

    # -- processes -------------------------------------------------------------------------

    def spawn(self, argv: Sequence[str], *, cpus: set[int] | None = None,
              env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL,
              stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
              ) -> subprocess.Popen[bytes]:
        """Start a process (pinned to `cpus` if given); `close`/`reap` ends it if it is
        still running."""
        preexec: Callable[[], None] | None = None
        if cpus:
            pinned = set(cpus)

            def preexec() -> None:
                os.sched_setaffinity(0, pinned)
        proc = subprocess.Popen(list(argv), stdin=stdin, stdout=stdout, stderr=stderr,
                                env=env, preexec_fn=preexec)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; closes its pipes."""
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if proc in self._procs:
            self._procs.remove(proc)

    def reap(self) -> None:
        for proc in list(self._procs):
            self.stop(proc, timeout=2.0)

    def run_program(self, argv: Sequence[str], *, cpus: set[int] | None = None,
                    env: dict[str, str] | None = None, timeout: float = 60.0
                    ) -> dict[str, Any]:
        """Run a benchmark program to its end; its last stdout line, parsed as JSON."""
        proc = self.spawn(argv, cpus=cpus, env=env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise BenchError(f"{Path(argv[0]).name} did not finish within {timeout} s") from None
        self.stop(proc)
        return parse_json_output(argv, out, err)

    # -- the shim --------------------------------------------------------------------------

    def shim_env(self, socket_path: Path) -> dict[str, str]:
        from tsemu.shim import shim_environment

        base = {k: v for k, v in os.environ.items()
                if k not in ("LD_PRELOAD", "TSEMU_SOCKET", "TSEMU_DEBUG")}
        return shim_environment(socket_path, base=base)


def parse_json_output(argv: Sequence[str], out: bytes, err: bytes) -> dict[str, Any]:
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"{Path(argv[0]).name} printed no result; stderr: "
                         f"{err.decode(errors='replace').strip()[-500:]}")
    data: dict[str, Any] = json.loads(lines[-1])
    if "error" in data:
        raise BenchError(f"{Path(argv[0]).name}: {data['error']}")
    return data


# -- tsemu servers ---------------------------------------------------------------------------


class TsemuServer:
    """A `tsemu serve` (or another server command) running in the background."""

    def __init__(self, ctx: Context, socket_path: Path, proc: subprocess.Popen[bytes],
                 log: Path | None = None) -> None:
        self.ctx = ctx
        self.socket_path = socket_path
        self.proc = proc
        #: where its stderr goes (a file: a pipe nobody reads could fill up and stall it)
        self.log = log

    def errors(self) -> str:
        """The end of what the server wrote on stderr."""
        if self.log is not None and self.log.exists():
            return self.log.read_text(errors="replace")[-800:]
        if self.proc.stderr is not None and self.proc.poll() is not None:
            return self.proc.stderr.read().decode(errors="replace")[-800:]
        return ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def control(self, timeout: float = 120.0) -> Any:
        from tsemu.emulator.shell.control import ControlClient

        return ControlClient(self.socket_path, timeout=timeout)

    def stop(self) -> None:
        self.ctx.stop(self.proc)


def start_serve(ctx: Context, name: str, *, scenario: Path | None = None,
                argv: Sequence[str] | None = None, timeout: float = 30.0) -> TsemuServer:
    """`tsemu serve` on a fresh socket in the scratch directory, pinned to the server CPU;
    returns once its control socket answers."""
    socket_path = ctx.tmp / name / "genl.sock"
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if argv is None:
        argv = [*ctx.tsemu(), "serve", "--socket", str(socket_path), "--admin", "all"]
        if scenario is not None:
            argv += ["--scenario", str(scenario)]
    log = socket_path.parent / "stderr.log"
    with open(log, "wb") as err:
        proc = ctx.spawn(argv, cpus=ctx.placement.server, stdout=subprocess.DEVNULL, stderr=err)
    server = TsemuServer(ctx, socket_path, proc, log)
    wait_for_control(server, timeout)
    return server


def wait_for_control(server: TsemuServer, timeout: float) -> None:
    from tsemu.emulator.shell.control import ControlError, control_path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"the server exited ({server.proc.returncode}): "
                             f"{server.errors()}")
        if control_path(server.socket_path).exists():
            try:
                with server.control(timeout=5) as c:
                    c.call("now")
                return
            except (ControlError, OSError):
                pass
        time.sleep(0.01)
    server.stop()
    raise BenchError(f"the server on {server.socket_path} did not start within {timeout} s")


# -- measurements ----------------------------------------------------------------------------


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB (10^6 bytes)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            key, _, rest = row.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024 / 1e6
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def median_run(runs: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose `key` is the median (the lower one of an even count), with every run's
    figure kept under "runs"."""
    ordered = sorted(runs, key=lambda r: r[key])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = [r[key] for r in runs]
    return chosen


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def host_taskstats() -> str | None:
    """None when the host kernel answers TASKSTATS GET here, else why not."""
    if not hasattr(socket, "AF_NETLINK"):
        return "this platform has no AF_NETLINK"
    if os.geteuid() != 0:
        return "needs root (TASKSTATS GET requires CAP_NET_ADMIN)"
    from tsemu.wire import Flag, encode_getfamily, split_datagram

    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
    except OSError as exc:
        return f"no generic netlink socket ({exc.strerror})"
    with sock:
        sock.settimeout(2)
        try:
            sock.bind((0, 0))
            sock.send(encode_getfamily(name="TASKSTATS", seq=1, flags=Flag.REQUEST))
            reply = split_datagram(sock.recv(65536))[0]
        except OSError as exc:
            return f"the host kernel did not answer ({exc})"
        if reply.header.type != 0x10:
            return "the host kernel has no TASKSTATS family (CONFIG_TASKSTATS off)"
    return None
