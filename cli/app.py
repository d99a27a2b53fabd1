"""The `tsemu` command line: thin wrappers that parse options and call the emulator.

Every verb's --help shows examples. Errors go to stderr as one line starting with "tsemu:",
with exit status 1 for a failure of the operation and 2 for bad usage (typer's convention).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tsemu.cli.common import SocketOption, fail, socket_path
from tsemu.cli.run import AllowHostOption, ProcMode, ProcOption, Via, ViaOption

app = typer.Typer(
    name="tsemu",
    help="The Linux taskstats interface (genetlink TASKSTATS, CGROUPSTATS, exit listeners), "
         "emulated in user space.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
ctl_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.add_typer(ctl_app, name="ctl")

@app.command(epilog="Examples:\n\n  tsemu serve\n\n  tsemu serve --socket /run/tsemu/genl.sock "
             "--scenario examples/burst.toml\n\n  tsemu serve --kernel 6.1 --cpus 4 --admin 0,1000")
def serve(
    socket: SocketOption = None,
    scenario: Annotated[Path | None, typer.Option(
        help="A scenario file (TOML, or JSON if it ends in .json; see `tsemu scenario "
             "reference`). Default: the embedded default machine.",
        show_default=False)] = None,
    kernel: Annotated[str | None, typer.Option(
        help="Kernel profile to emulate: a generation (2.6.31, 3.10, 4.18, 5.4, 5.10, 5.14, "
             "5.15, 6.1, 6.6, 6.8, 6.12, 6.18, 7.2), a point release of one (6.1.0), or "
             "`host`: the running kernel's, or the nearest older one (overrides the "
             "scenario's).",
        show_default=False)] = None,
    cpus: Annotated[int | None, typer.Option(
        min=1, max=8192, help="Number of CPUs (overrides the scenario's; at most the "
                              "machine's NR_CPUS, [machine] nr_cpus).",
        show_default=False)] = None,
    family_id: Annotated[str | None, typer.Option(
        help="TASKSTATS family id, e.g. 0x1f (overrides the scenario's).",
        show_default=False)] = None,
    admin: Annotated[str, typer.Option(
        help="Who has CAP_NET_ADMIN for TASKSTATS_CMD_GET: auto (the sender's capabilities, "
             "else uid 0), all, none, or a list of uids like 0,1000.")] = "auto",
    cgroup_root: Annotated[list[str] | None, typer.Option(
        help="A directory whose subdirectories stand for the scenario's cgroups in "
             "CGROUPSTATS requests (repeatable). Default: /sys/fs/cgroup.",
        show_default=False)] = None,
    busy_poll: Annotated[int, typer.Option(
        min=0, max=10_000,
        help="Microseconds to keep polling for a client's next request after answering one, "
             "before sleeping (answers request-reply loops faster at the cost of that much "
             "CPU per request; stops on its own for clients that ask only now and then). "
             "0 turns it off.")] = 50,
    max_clients: Annotated[int, typer.Option(
        min=1, max=1_000_000, help="Clients at most (each holds a descriptor and a queue); "
                                   "past it, new senders are refused.")] = 4096,
    shared_dir: Annotated[bool, typer.Option(
        "--shared-dir", envvar="TSEMU_SHARED_DIR",
        help="Serve from a socket directory other users can write or own (a volume shared "
             "on purpose; the container image sets TSEMU_SHARED_DIR=1); refused otherwise, "
             "since they could plant files under the server's names.")] = False,
    ctl_group: Annotated[str | None, typer.Option(
        help="Share the control socket (0600, the server's user only) with this group "
             "(0660).", show_default=False)] = None,
    proc_view: Annotated[bool, typer.Option(
        help="Keep the emulated machine's /proc in PATH.proc, which `tsemu run` shows its "
             "commands in place of /proc.")] = True,
    pcap: Annotated[Path | None, typer.Option(
        help="Capture every netlink message in and out as pcap (LINKTYPE_NETLINK, as on an "
             "nlmon device: Wireshark and tshark dissect it).", show_default=False)] = None,
    pcap_rotate: Annotated[str | None, typer.Option(
        help="Start a new capture file (FILE.1, FILE.2, ...) when one would pass this size "
             "(100MiB).", show_default=False)] = None,
    pcap_keep: Annotated[int | None, typer.Option(
        min=1, help="With --pcap-rotate: keep only this many newest files.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing --pcap file (never followed if a symlink).")
    ] = False,
) -> None:
    """Serve the emulated kernel until SIGINT or SIGTERM.

    Binds the socket, prints "tsemu: listening on PATH" on stderr, answers netlink clients
    (through `tsemu run` or a native client) and control requests on PATH.ctl.
    """
    import signal
    import time

    import trio

    from tsemu.emulator.scenario import ScenarioError, default_scenario, load_scenario
    from tsemu.emulator.shell.permissions import AdminPolicy
    from tsemu.emulator.shell.runner import Emulator, loading_for_good

    started = time.monotonic()
    big = scenario is not None and scenario.is_file() and scenario.stat().st_size > 256 << 10
    if big:
        assert scenario is not None
        typer.echo(f"tsemu: loading {scenario} ({scenario.stat().st_size >> 10} KiB)...",
                   err=True)
    if kernel == "host":
        from tsemu.emulator.model.profiles import host_profile

        chosen, said = host_profile()
        typer.echo(said, err=True)
        kernel = chosen.name
    with loading_for_good():
        try:
            loaded = load_scenario(scenario) if scenario is not None else default_scenario()
            loaded = loaded.with_overrides(kernel=kernel, cpus=cpus,
                                           family_id=int(family_id, 0) if family_id else None)
            policy = AdminPolicy.parse(admin)
        except (ScenarioError, ValueError) as exc:
            fail(str(exc), 2)
        roots = tuple(cgroup_root) if cgroup_root else ("/sys/fs/cgroup",)
        emulator = Emulator(loaded, socket_path(socket), admin=policy, cgroup_roots=roots,
                            busy_poll_ns=busy_poll * 1000, max_clients=max_clients,
                            shared_dir=shared_dir, ctl_group=ctl_group, proc_view=proc_view)
    capture = _open_capture(pcap, pcap_rotate, pcap_keep, force)
    emulator.server.capture = capture
    if big or time.monotonic() - started > 0.5:
        typer.echo(f"tsemu: loaded {len(emulator.table)} tasks and {len(loaded.timeline)} "
                   f"timeline events in {time.monotonic() - started:.1f} s", err=True)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                if capture is not None:
                    nursery.start_soon(capture.run)
                await nursery.start(lambda task_status: emulator.run(
                    task_status=task_status, announce=True))
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # trio wraps what a task raised
        fail(_startup_problem(group))
    except OSError as exc:
        fail(_startup_problem(exc))
    finally:
        if capture is not None:
            capture.close()


def _open_capture(path: Path | None, rotate: str | None, keep: int | None,
                  force: bool) -> Any:
    """The `serve --pcap` capture (None without --pcap); one-line errors for bad sizes and
    files that exist or cannot be made."""
    from tsemu.emulator.scenario import parse_size
    from tsemu.emulator.shell.capture import Capture

    if path is None:
        if rotate is not None or keep is not None:
            fail("--pcap-rotate and --pcap-keep go with --pcap", 2)
        return None
    try:
        size = parse_size(rotate) if rotate is not None else None
        if keep is not None and size is None:
            raise ValueError("--pcap-keep needs --pcap-rotate")
        return Capture(path, rotate_bytes=size, keep=keep, force=force, child=True)
    except FileExistsError:
        fail(f"{path} exists: give --force to replace it")
    except ValueError as exc:
        fail(f"bad --pcap-rotate or --pcap-keep: {exc}", 2)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


def _startup_problem(exc: BaseException) -> str:
    """One line for what stopped the server (trio wraps it in exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_startup_problem(e) for e in exc.exceptions)
    if isinstance(exc, OSError):
        if exc.filename:
            return f"{exc.filename}: {exc.strerror}"
        return exc.strerror or str(exc)  # (an OSError(errno, message): the message)
    raise exc


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog="Examples:\n\n  tsemu run -- genl ctrl get name TASKSTATS\n\n"
                    "  tsemu run --socket /run/tsemu/genl.sock -- ./getdelays -d -p 1\n\n"
                    "  tsemu run -- iotop-c -b -o -n 1\n\n"
                    "  tsemu run --proc host -- ps -e")
def run(
    ctx: typer.Context,
    socket: SocketOption = None,
    proc: ProcOption = ProcMode.emulated,
    via: ViaOption = Via.auto,
    allow_host: AllowHostOption = False,
) -> None:
    """Run CMD with the shim (and, where the kernel allows it, the seccomp supervisor, which
    reaches Go and static programs too), so its netlink taskstats calls reach tsemu and its
    /proc shows the emulated machine; exits with CMD's status. Put `--` before CMD."""
    from tsemu.cli.run import run_command

    argv = list(ctx.args)
    if not argv:
        fail("run needs a command: tsemu run -- CMD [ARGS...]", 2)
    raise typer.Exit(run_command(argv, socket_path(socket), proc, whole_process=True, via=via,
                                 allow_host=allow_host))


# -- ctl ------------------------------------------------------------------------------------

#: `tsemu ctl --socket PATH VERB`: the socket given before the verb (a verb's own wins).
_ctl_socket: list[Path | None] = [None]


@ctl_app.callback(epilog="Examples:\n\n  tsemu ctl --socket /run/tsemu/genl.sock ps\n\n"
                  "  tsemu ctl spawn --comm job --cpu 1\n\n  tsemu ctl exit 4242 --signal KILL")
def ctl_main(socket: SocketOption = None) -> None:
    """Drive the process table of a running `tsemu serve`: PATH is the same --socket given
    to serve (its control socket is PATH.ctl)."""
    _ctl_socket[0] = socket


def _call(socket: Path | None, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    from tsemu.emulator.shell.control import ControlClient, ControlError

    try:
        with ControlClient(socket_path(socket if socket is not None else _ctl_socket[0]),
                           timeout=timeout) as client:
            return client.call(op, **args)
    except ControlError as exc:
        fail(str(exc))


def _key_values(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            fail(f"expected FIELD=VALUE, got {pair!r}", 2)
        try:
            values[name] = int(text, 0)
        except ValueError:
            values[name] = text
    return values


@ctl_app.command("spawn", epilog="Examples:\n\n  tsemu ctl spawn --comm worker --threads 4 "
                 "--cpu 1\n\n  tsemu ctl spawn --comm db --counter blkio_delay_total=3ms "
                 "--counter read_bytes=1048576")
def ctl_spawn(
    socket: SocketOption = None,
    comm: Annotated[str, typer.Option(help="Command name (15 bytes at most).")] = "task",
    pid: Annotated[int | None, typer.Option(help="Use this pid.", show_default=False)] = None,
    threads: Annotated[int, typer.Option(min=1, help="Number of threads.")] = 1,
    cpu: Annotated[int, typer.Option(min=0, help="The CPU it runs (and exits) on.")] = 0,
    uid: Annotated[int, typer.Option(min=0)] = 0,
    gid: Annotated[int, typer.Option(min=0)] = 0,
    ppid: Annotated[int, typer.Option(min=0)] = 1,
    cgroup: Annotated[str | None, typer.Option(show_default=False)] = None,
    state: Annotated[str, typer.Option(help="running, sleeping, uninterruptible, stopped, "
                                       "io_wait, ...")] = "running",
    counter: Annotated[list[str] | None, typer.Option(
        help="NAME=VALUE for a counter (repeatable); durations may carry a unit (3ms).",
        show_default=False)] = None,
) -> None:
    """Create a process; prints its pid."""
    reply = _call(socket, "spawn", comm=comm, pid=pid, threads=threads, cpu=cpu, uid=uid,
                  gid=gid, ppid=ppid, cgroup=cgroup, state=state,
                  counters=_key_values(counter or []))
    typer.echo(reply["pid"])


@ctl_app.command("exit", epilog="Examples:\n\n  tsemu ctl exit 4242\n\n  tsemu ctl exit 4242 "
                 "--cpu 1 --signal SIGKILL\n\n  tsemu ctl exit 4242 --signal SEGV --core")
def ctl_exit(
    pid: Annotated[int, typer.Argument(help="A process (all its threads exit) or a thread.")],
    socket: SocketOption = None,
    cpu: Annotated[int | None, typer.Option(min=0, help="Exit on this CPU.",
                                            show_default=False)] = None,
    code: Annotated[int | None, typer.Option(min=0, max=255, help="Exit code.",
                                             show_default=False)] = None,
    signal: Annotated[str | None, typer.Option(help="Killed by this signal (9, KILL, SIGKILL).",
                                               show_default=False)] = None,
    core: Annotated[bool, typer.Option(help="Dumped core (with --signal).")] = False,
    leader_last: Annotated[bool, typer.Option(
        help="A process's other threads exit before its leader (the rare order; by default "
             "the leader goes first, as a real exit_group almost always does).")] = False,
) -> None:
    """Make a process or thread exit now; its CPU's listeners get the event."""
    if code is not None and signal is not None:
        fail("give --code or --signal, not both", 2)
    if core and signal is None:
        fail("--core needs --signal (a core dump is a death by signal)", 2)
    reply = _call(socket, "exit", pid=pid, cpu=cpu, code=code, signal=signal, core=core,
                  **({"leader_last": True} if leader_last else {}))
    typer.echo(" ".join(str(t) for t in reply["exited"]))


@ctl_app.command("set", epilog="Examples:\n\n  tsemu ctl set 4242 cpu_delay_total=5ms "
                 "nvcsw=12\n\n  tsemu ctl set 4242 state=sleeping comm=renamed")
def ctl_set(
    pid: Annotated[int, typer.Argument()],
    values: Annotated[list[str], typer.Argument(help="FIELD=VALUE pairs.")],
    socket: SocketOption = None,
) -> None:
    """Set fields or counters of a task."""
    _call(socket, "set", pid=pid, values=_key_values(values))


@ctl_app.command("advance", epilog="Examples:\n\n  tsemu ctl advance 2s\n\n"
                                      "  tsemu ctl advance 2.5")
def ctl_advance(
    seconds: Annotated[str, typer.Argument(
        metavar="DURATION", help="How far to move the virtual clock: a duration (\"2s\", "
        "\"250ms\") or a number of seconds.")],
    socket: SocketOption = None,
) -> None:
    """Move the virtual clock forward, running the timeline events that fall due."""
    try:
        span: float | str = float(seconds)
    except ValueError:
        span = seconds  # a duration: the server reads it as scenarios' durations are read
    reply = _call(socket, "advance", seconds=span)
    typer.echo(f"now {reply['now']:.6f} s; {len(reply['fired'])} event(s)")


@ctl_app.command("ps")
def ctl_ps(socket: SocketOption = None,
           as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """List the live tasks: the scenario's, and the clients' own processes (marked real)."""
    tasks = _call(socket, "ps")["tasks"]
    if as_json:
        typer.echo(json.dumps(tasks, indent=1))
        return
    typer.echo(f"{'PID':>8} {'TGID':>8} {'PPID':>8} {'CPU':>3} {'STATE':<16} {'UID':>6} COMM")
    for t in tasks:
        real = "  (real: a client's own process)" if t.get("real") else ""
        typer.echo(f"{t['pid']:>8} {t['tgid']:>8} {t['ppid']:>8} {t['cpu']:>3} "
                   f"{t['state']:<16} {t['uid']:>6} {t['comm']}{real}")


@ctl_app.command("listeners")
def ctl_listeners(socket: SocketOption = None) -> None:
    """Show the registered exit listeners, per CPU."""
    listeners = _call(socket, "listeners")["listeners"]
    if not listeners:
        typer.echo("no listeners")
    for cpu, ports in sorted(listeners.items(), key=lambda kv: int(kv[0])):
        typer.echo(f"cpu {cpu}: " + " ".join(str(p) for p in ports))


@ctl_app.command("stats")
def ctl_stats(socket: SocketOption = None) -> None:
    """Counters of the running emulator, as JSON."""
    typer.echo(json.dumps(_call(socket, "stats"), indent=1))


@ctl_app.command("storm", epilog="Examples:\n\n  tsemu ctl storm --count 100000 --cpus 0-1\n\n"
                 "  tsemu ctl storm --rate 300000 --count 1000000 --cpus 0\n\n"
                 "  tsemu ctl storm --rate 5000 --duration 10s")
def ctl_storm(
    count: Annotated[int | None, typer.Option(min=1, help="How many processes exit.",
                                              show_default=False)] = None,
    socket: SocketOption = None,
    cpus: Annotated[str | None, typer.Option(help="cpulist to spread them over (default: "
                                             "all).", show_default=False)] = None,
    threads: Annotated[int, typer.Option(min=1, help="Threads per process.")] = 1,
    rate: Annotated[float | None, typer.Option(
        min=0, help="Exits per second, spread evenly over time and over "
        "--cpus (default: as fast as the server can send them).", show_default=False)] = None,
    duration: Annotated[str | None, typer.Option(
        help="With --rate, instead of --count: how long the storm lasts (10s, 500ms).",
        show_default=False)] = None,
) -> None:
    """Processes exit in a burst (load tests): as fast as the server can send them, or with
    --rate, that many a second.

    Each is a single-threaded child of init called "storm", spawned and exiting at once with
    status 0 (an ac_etime of a few microseconds at most), on the CPUs of --cpus in turn;
    with --threads K each process's threads exit one by one and the last sends the TGID
    record too. Without --rate a listener that does not keep up gets ENOBUFS, as from a
    kernel; with it, the i-th exit happens i/RATE seconds after the first, so a listener that
    reads faster than RATE loses nothing. The command returns when the storm is over.
    """
    from tsemu.emulator.scenario import ScenarioError, parse_duration

    if (count is None) == (duration is None):
        fail("give --count, or --rate with --duration", 2)
    if duration is not None and rate is None:
        fail("--duration needs --rate", 2)
    seconds = 0.0
    if duration is not None:
        try:
            seconds = parse_duration(duration) / 1e9
        except (ScenarioError, ValueError) as exc:
            fail(f"--duration: {exc}", 2)
    elif rate is not None and count is not None:
        seconds = count / rate
    args: dict[str, Any] = {"cpus": cpus, "threads": threads, "rate": rate}
    args.update({"count": count} if duration is None else {"duration": duration})
    reply = _call(socket, "storm", timeout=30.0 + 2 * seconds, **args)
    stopped = " (stopped by a reset)" if reply.get("stopped") else ""
    typer.echo(f"{reply['exits']} exits in {reply['seconds']:.3f} s "
               f"({reply['rate']:.0f}/s), {reply['deliveries']} deliveries{stopped}")


@ctl_app.command("reset", epilog="Example:\n\n  tsemu ctl reset")
def ctl_reset(socket: SocketOption = None) -> None:
    """Put the machine back as its scenario starts it, as if the server had just started:
    the table, clock, timeline and pids, no listeners, faults but the scenario's, counters
    at zero, the /proc view anew; the clients connected so far are dropped."""
    _call(socket, "reset")


fault_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        pretty_exceptions_enable=False,
                        help="Faults on demand, to test a client's error handling: drop, delay, "
                             "duplicate or reorder replies and events, answer with an errno, "
                             "shrink a receive budget, pause the server.")
ctl_app.add_typer(fault_app, name="fault")


@fault_app.command("add", epilog="Examples:\n\n  tsemu ctl fault add drop --on events --cpu 1 "
                   "--count 5\n\n  tsemu ctl fault add errno --cmd get --pid 4242 --errno "
                   "EAGAIN\n\n  tsemu ctl fault add delay --on replies --delay 200ms "
                   "--probability 0.1\n\n  tsemu ctl fault add budget --port 4242 --budget 8KiB"
                   "\n\n  tsemu ctl fault add pause --duration 2s")
def ctl_fault_add(
    kind: Annotated[str, typer.Argument(help="errno, drop, delay, duplicate, reorder, budget "
                                             "or pause.")],
    socket: SocketOption = None,
    on: Annotated[str | None, typer.Option(help="What a delivery fault hits: replies, events "
                                                "or both (default).", show_default=False)] = None,
    pid: Annotated[int | None, typer.Option(help="Only messages about this task.",
                                            show_default=False)] = None,
    cpu: Annotated[int | None, typer.Option(help="Only events of this CPU.",
                                            show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Only this client (its port id).",
                                             show_default=False)] = None,
    cmd: Annotated[str | None, typer.Option(help="errno: only this request (get, register, "
                                                 "deregister, cgroupstats, getfamily).",
                                            show_default=False)] = None,
    count: Annotated[int | None, typer.Option(help="Only the next N that match.",
                                              show_default=False)] = None,
    probability: Annotated[float | None, typer.Option(help="Each match with this chance (0-1; "
                                                           "seeded).", show_default=False)] = None,
    errno: Annotated[str | None, typer.Option(help="errno: the error (EAGAIN, 11).",
                                              show_default=False)] = None,
    delay: Annotated[str | None, typer.Option(help="delay: how long (250ms).",
                                              show_default=False)] = None,
    budget: Annotated[str | None, typer.Option(help="budget: the new receive budget (8KiB).",
                                               show_default=False)] = None,
    duration: Annotated[str | None, typer.Option(help="pause: how long (2s).",
                                                 show_default=False)] = None,
) -> None:
    """Put a fault in force; prints its id. The same keys as a scenario's [[fault]]."""
    given = {"kind": kind, "on": on, "pid": pid, "cpu": cpu, "port": port, "cmd": cmd,
             "count": count, "probability": probability, "errno": errno, "delay": delay,
             "budget": budget, "duration": duration}
    reply = _call(socket, "fault", fault={k: v for k, v in given.items() if v is not None})
    typer.echo(reply["fault"]["id"])


@fault_app.command("list")
def ctl_fault_list(socket: SocketOption = None) -> None:
    """The faults in force, one per line (JSON), with how often each hit."""
    for fault in _call(socket, "faults")["faults"]:
        typer.echo(json.dumps(fault))


@fault_app.command("clear")
def ctl_fault_clear(
    fault_id: Annotated[int | None, typer.Argument(metavar="[ID]", help="The fault to clear "
                                                   "(default: every one).",
                                                   show_default=False)] = None,
    socket: SocketOption = None,
) -> None:
    """Clear one fault, or every one."""
    reply = _call(socket, "fault_clear", id=fault_id)
    typer.echo(f"{reply['cleared']} cleared")


# -- client verbs: get, listen, families (cli/client_verbs.py); scenario (cli/scenario_verbs.py)
from tsemu.cli.client_verbs import register as _register_client_verbs  # noqa: E402
from tsemu.cli.record_verbs import register as _register_record_verbs  # noqa: E402
from tsemu.cli.scenario_verbs import register as _register_scenario_verbs  # noqa: E402

_register_client_verbs(app)
_register_scenario_verbs(app)
_register_record_verbs(app)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
