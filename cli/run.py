"""`tsemu run [--socket PATH] [--proc emulated|host] [--via auto|shim|seccomp] [--allow-host]
-- CMD [ARGS...]`: run an unmodified netlink client against tsemu.

How CMD is reached (`--via`):

- `shim`: the LD_PRELOAD shim alone (below). It reaches programs that call libc; a static or
  Go CMD (told from its ELF headers, `tsemu.supervisor.program_kind`) would talk to the host
  kernel, so it is refused unless `--allow-host`;
- `seccomp`: the seccomp supervisor `tsemu-run` alone (supervisor/README.md): every socket
  call, whoever makes it, and the path calls under /proc (the view, by the shim's rules);
- `auto` (the default): both, where the supervisor can run: the shim answers what goes
  through libc, the supervisor catches whatever does not (Go, static binaries, raw system
  calls, in CMD or anything it starts); both show the /proc view, by one set of rules.
  Where the supervisor cannot run, the shim alone, with `shim`'s refusal and a note of what
  stays unreached. No generic-netlink socket of CMD reaches the host kernel by accident.

CMD runs with the shim (`tsemu.shim`) in LD_PRELOAD and TSEMU_SOCKET naming the server, so
its AF_NETLINK / NETLINK_GENERIC sockets talk to tsemu; its children inherit both. With
`--proc emulated` (the default), TSEMU_PROC_VIEW names the server's /proc view
(`PATH.proc`) when the server publishes one, and CMD's /proc shows the emulated machine's
tasks (ps, top, iotop see them); `--proc host` leaves CMD the host's /proc. The exit
status is CMD's (128 + N when signal N killed it, as a shell reports it; 127 when CMD cannot
be found, 126 when it cannot be executed). SIGTERM and SIGHUP sent to `tsemu run` are passed
on to CMD; SIGINT and SIGQUIT are left to CMD alone: typed at a terminal they reach the whole
foreground process group, CMD included, and CMD decides what they mean.

The typer app wires `run_command` in (and `ProcOption`, the --proc option's declaration);
nothing here parses options.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from tsemu.emulator.shell.addressing import (
    PROC_VIEW_MARKER,
    default_socket_path,
    proc_view_dir,
)
from tsemu.shim import ShimNotBuilt, shim_environment
from tsemu.supervisor import SupervisorUnavailable, program_kind, usable_supervisor


class ProcMode(StrEnum):
    """Which /proc the command sees."""

    emulated = "emulated"
    host = "host"


ProcOption = Annotated[
    ProcMode,
    typer.Option("--proc", case_sensitive=False,
                 help="emulated: CMD's /proc shows the emulated machine's tasks (the server's "
                      "/proc view, PATH.proc, when the server publishes one), so ps, top and "
                      "iotop list them; host: CMD sees the host's /proc."),
]

class Via(StrEnum):
    """What reaches the command's netlink sockets."""

    auto = "auto"
    shim = "shim"
    seccomp = "seccomp"


ViaOption = Annotated[
    Via,
    typer.Option("--via", case_sensitive=False,
                 help="auto: the shim and, where the kernel allows it, the seccomp supervisor "
                      "(every client, Go and static ones included); shim: the LD_PRELOAD shim "
                      "only (programs that call libc); seccomp: the supervisor only."),
]

AllowHostOption = Annotated[
    bool,
    typer.Option("--allow-host",
                 help="Run a static or Go CMD even where nothing can reach it (it then talks "
                      "to the host kernel)."),
]


def plan_via(argv: list[str], via: Via | str, allow_host: bool,
             path: str | None = None, *,
             frugal: bool = False) -> tuple[Path | None, bool, str | None, str | None]:
    """How to reach `argv`: (the supervisor to run it under or None, whether to preload the
    shim, a refusal or None, a note or None). A refusal names what CMD is and why nothing
    reaches it; the note, for "auto" where the supervisor cannot run, says what that leaves
    unreached.

    `frugal` (the pytest fixture): "auto" adds the supervisor only when CMD itself is a
    program the shim cannot reach, so that a libc client stays the test's own child and
    pays no trapped calls (what it execs later is then not watched)."""
    via = Via(via)
    supervisor: Path | None = None
    unavailable = ""
    kind = program_kind(argv[0], path)
    if via == Via.auto and frugal and kind is None:
        return None, True, None, None
    if via != Via.shim:
        try:
            supervisor = usable_supervisor()
        except SupervisorUnavailable as exc:
            unavailable = str(exc)
            if via == Via.seccomp:
                return (None, False,
                        f"--via seccomp: the supervisor cannot run here: {exc}", None)
    if supervisor is not None:
        return supervisor, via == Via.auto, None, None
    if kind is not None and not allow_host:
        why = (f"the seccomp supervisor cannot run here ({unavailable})" if unavailable
               else "--via shim does not use the seccomp supervisor")
        return None, True, (
            f"{argv[0]} is a {kind} program: the LD_PRELOAD shim cannot reach it and {why}, so "
            "its netlink sockets would talk to the host kernel. Static and Go programs (and "
            "raw system calls of any program) stay unreached this way; pass --allow-host to "
            "run it anyway"), None
    note = None
    if unavailable:
        note = (f"the seccomp supervisor cannot run here ({unavailable}): only the shim reaches "
                "CMD, so static and Go programs it starts (and raw system calls) would talk to "
                "the host kernel")
    return None, True, None, note


#: Signals passed on to the command rather than acted on by `tsemu run` itself.
FORWARDED = (signal.SIGTERM, signal.SIGHUP)
#: Signals a terminal sends to the command too: `tsemu run` ignores them while CMD runs.
IGNORED = (signal.SIGINT, signal.SIGQUIT)


def run_environment(socket_path: Path | None = None,
                    proc: ProcMode | str = ProcMode.emulated) -> dict[str, str]:
    """This process's environment plus what loads the shim, names the server and (for
    `proc` emulated, when the server publishes one) names its /proc view."""
    return shim_environment(socket_path if socket_path is not None else default_socket_path(),
                            proc=ProcMode(proc).value)


#: How long `tsemu run` waits for a /proc view the server is still writing (seconds).
VIEW_WAIT = 120.0


def missing_view(server: Path, wait: float = VIEW_WAIT) -> str | None:
    """Why the server at `server` has no /proc view to show, if it is up and has none. A view
    still being written (a big machine's is written after the server listens) is waited for,
    up to `wait` seconds."""
    view = proc_view_dir(server)
    marker = view / PROC_VIEW_MARKER
    if not server.exists() or marker.is_file():
        return None
    if view.is_dir():
        print(f"tsemu run: waiting for the server's /proc view ({view}) to be complete",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if marker.is_file():
                return None
            time.sleep(0.1)
        return (f"the server's /proc view ({view}) is still incomplete after {wait:.0f} s; "
                "pass --proc host to run with the host's /proc meanwhile")
    return (f"the server at {server} publishes no /proc view ({view}: it runs with "
            "--no-proc-view, or is an older tsemu); pass --proc host to run with the "
            "host's /proc")


def supervised(supervisor: Path, server: Path, argv: list[str], host_proc: bool) -> list[str]:
    """`argv` under the supervisor. With `host_proc` (`--proc host`) it leaves /proc alone;
    otherwise it answers /proc from the view for whatever the shim does not reach (Go, static
    programs, raw system calls) by the shim's own rules, so that beside the shim ("auto") each
    call is answered the same whichever of them sees it (the shim's own reads of the real
    /proc are spelled so that the supervisor lets them through: shim/procroute.h)."""
    return [str(supervisor), "--socket", str(server),
            *(["--proc", "host"] if host_proc else []), "--", *argv]


def strip_shim(env: dict[str, str]) -> dict[str, str]:
    """`env` without the shim in LD_PRELOAD (the supervisor alone reaches the command)."""
    from tsemu.shim import shim_path

    library = str(shim_path())
    preload = [p for p in env.get("LD_PRELOAD", "").split() if p != library]
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: its exit code, or 128 + the killing signal."""
    return 128 - returncode if returncode < 0 else returncode


class _Forwarder:
    """Passes FORWARDED signals on to the child; one that arrives before the child exists is
    delivered as soon as it does. Handlers are set before the child starts (exec resets them in
    the child), IGNORED ones only after (an ignored disposition would survive the exec)."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []
        self.previous: dict[int, Any] = {}
        self.active = threading.current_thread() is threading.main_thread()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.child is None:
            self.pending.append(signum)
        elif self.child.poll() is None:
            self.child.send_signal(signum)

    def __enter__(self) -> _Forwarder:
        if self.active:  # Python lets only the main thread set signal handlers
            self.previous = {sig: signal.signal(sig, self._handle) for sig in FORWARDED}
        return self

    def started(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        if self.active:
            self.previous.update({sig: signal.signal(sig, signal.SIG_IGN) for sig in IGNORED})
        for signum in self.pending:
            child.send_signal(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_command(argv: list[str], socket_path: Path | None = None,
                proc: ProcMode | str = ProcMode.emulated, *,
                whole_process: bool = False, via: Via | str = Via.auto,
                allow_host: bool = False) -> int:
    """Run `argv` with the shim against the server at `socket_path` (default: TSEMU_SOCKET's
    rule), seeing the emulated machine's /proc (`proc` "emulated") or the host's; return its
    exit status. Problems before CMD starts are reported on stderr.

    With `whole_process` (the `tsemu run` command, a process of its own), this process also
    becomes the subreaper of CMD's descendants and reports and reaps every child; otherwise
    (called from a program with children of its own) only CMD is reaped. `via` and
    `allow_host`: see the module's docstring."""
    if not argv:
        print("tsemu run: no command given (usage: tsemu run [--socket PATH] -- CMD [ARGS...])",
              file=sys.stderr)
        return 2
    try:
        env = run_environment(socket_path, proc)
    except ShimNotBuilt as exc:
        print(f"tsemu run: {exc}", file=sys.stderr)
        return 1
    server = Path(env["TSEMU_SOCKET"])
    supervisor, preload, refusal, note = plan_via(argv, via, allow_host, env.get("PATH"))
    if refusal:
        print(f"tsemu run: {refusal}", file=sys.stderr)
        return 1
    if note:
        print(f"tsemu run: note: {note}", file=sys.stderr)
    if not preload:
        env = strip_shim(env)
    if supervisor is not None:
        argv = supervised(supervisor, server, argv, proc == ProcMode.host)
    problem = missing_view(server) if proc == "emulated" else None
    if problem:
        print(f"tsemu run: {problem}", file=sys.stderr)
        return 1
    if not server.exists() and os.environ.get("TSEMU_DEBUG"):
        print(f"tsemu run: no server socket at {server} yet (start one with `tsemu serve`)",
              file=sys.stderr)
    # This process and everything it starts belong to the emulated machine: the server
    # answers about them and hears of their exits (tsemu.family; imported here, not with the
    # command line: it brings the wire codec, which `tsemu serve` has no use for at start).
    from tsemu.family import (
        ROOT_ENV,
        FamilyChannel,
        become_subreaper,
        reap_child,
        reap_orphans,
        reap_reporting,
    )

    channel = FamilyChannel.open(server) if server.exists() else None
    if channel is not None and channel.register_root():
        env[ROOT_ENV] = str(os.getpid())
    if whole_process:
        become_subreaper()
    try:
        with _Forwarder() as forwarder:
            try:
                child = subprocess.Popen(argv, env=env)
            except FileNotFoundError:
                print(f"tsemu run: {argv[0]}: command not found", file=sys.stderr)
                return 127
            except OSError as exc:  # not executable, not a program (EACCES, ENOEXEC)
                print(f"tsemu run: {argv[0]}: {exc.strerror}", file=sys.stderr)
                return 126
            forwarder.started(child)
            while True:
                try:
                    status = (reap_reporting(child.pid, channel) if whole_process
                              else reap_child(child.pid, channel))
                    break
                except KeyboardInterrupt:  # SIGINT before it was ignored: CMD got it too
                    continue
            child.returncode = os.waitstatus_to_exitcode(status)
            if whole_process:
                reap_orphans(channel)
            return exit_status(child.returncode)
    finally:
        if channel is not None:
            channel.close()
