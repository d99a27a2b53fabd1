"""The client verbs: `tsemu get`, `tsemu listen`, `tsemu families`.

Each asks tsemu (the server at --socket, by the usual rule) or, with --host, the running kernel,
through `tsemu.client.Client`, and prints what it gets: a getdelays-like report, exit events one
line each, nlctrl's family list. Everything here is formatting and error reporting; the requests
are the client's. `register(app)` adds the verbs to the typer app (cli/app.py calls it).

Errors follow cli/app.py's conventions: one stderr line "tsemu: ...", status 1 when the operation
fails, 2 for bad usage.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tsemu.cli.common import SocketOption, fail, socket_path

#: How long a request may wait for its answer before the verb gives up.
TIMEOUT = 10.0

T = TypeVar("T")

HostOption = Annotated[bool, typer.Option(
    "--host", help="Ask the running kernel (AF_NETLINK) instead of tsemu.")]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON output.")]


class Failure(Exception):
    """A failure found inside trio.run, reported by `fail` once outside it."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# -- formatting ------------------------------------------------------------------------------

#: Delay categories as getdelays names them, with their field prefix, oldest first.
DELAY_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("CPU", "cpu"),
    ("IO", "blkio"),
    ("SWAP", "swapin"),
    ("RECLAIM", "freepages"),
    ("THRASHING", "thrashing"),
    ("COMPACT", "compact"),
    ("WPCOPY", "wpcopy"),
    ("IRQ", "irq"),
)
#: Op names of the families whose commands tsemu knows.
OP_NAMES: dict[str, dict[int, str]] = {
    "nlctrl": {1: "NEWFAMILY", 2: "DELFAMILY", 3: "GETFAMILY", 4: "NEWOPS", 5: "DELOPS",
               6: "GETOPS", 7: "NEWMCAST_GRP", 8: "DELMCAST_GRP", 9: "GETMCAST_GRP",
               10: "GETPOLICY"},
    "TASKSTATS": {1: "GET", 2: "NEW", 4: "CGROUPSTATS_GET", 5: "CGROUPSTATS_NEW"},
}
#: GENL_* op flags, in bit order, as a user reads them.
OP_FLAGS: tuple[tuple[int, str], ...] = (
    (0x1, "admin-perm"), (0x2, "do"), (0x4, "dump"), (0x8, "has-policy"),
    (0x10, "uns-admin-perm"),
)
#: ac_flag bits (<linux/acct.h>).
AC_FLAGS: tuple[tuple[int, str], ...] = (
    (0x01, "AFORK"), (0x02, "ASU"), (0x04, "ACOMPAT"), (0x08, "ACORE"), (0x10, "AXSIG"),
    (0x20, "AGROUP"),
)
SCHED_POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH",
                  5: "SCHED_IDLE", 6: "SCHED_DEADLINE", 7: "SCHED_EXT"}


def jsonable(value: Any) -> Any:
    """`value` with bytes turned into strings (UTF-8, undecodable bytes escaped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def record_json(aggr: str, ident: int, values: Mapping[str, Any]) -> dict[str, Any]:
    """A record as one JSON object: "aggr" (AGGR_PID or AGGR_TGID), "id", then every field."""
    return {"aggr": aggr, "id": ident, **jsonable(values)}


def comm_of(values: Mapping[str, Any]) -> str:
    comm = values.get("ac_comm", b"")
    return comm.decode("utf-8", "replace") if isinstance(comm, bytes) else str(comm)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return f"SIG{number}"


def flag_names(ac_flag: int) -> str:
    names = [name for bit, name in AC_FLAGS if ac_flag & bit]
    return "|".join(names) if names else "-"


def exit_status(values: Mapping[str, Any]) -> str:
    """How the task ended: "exit N", "signal N (SIGX)", "signal N (SIGX), core dumped", or,
    for a thread its process's exit_group killed, "exit N (killed by its group's exit)".

    ac_exitcode is the task's exit code as wait(2) encodes it (the kernel's tools print it
    as it is): a signal in its low 7 bits (0x80: core dumped), else the status in bits 8-15.
    AXSIG says the task died of a signal; a thread zapped by another thread's exit_group dies
    of SIGKILL but carries the group's exit code, so its low bits may say no signal at all."""
    code = int(values.get("ac_exitcode", 0))
    flag = int(values.get("ac_flag", 0))
    number = code & 0x7F
    if number:
        core = ", core dumped" if flag & 0x08 or code & 0x80 else ""
        return f"signal {number} ({signal_name(number)}){core}"
    if flag & 0x10:  # AXSIG without a signal in the code: the group's exit killed it
        return f"exit {(code >> 8) & 0xFF} (killed by its group's exit)"
    return f"exit {(code >> 8) & 0xFF}"


def seconds_us(microseconds: int) -> str:
    return f"{microseconds / 1e6:.6f} s"


def ms(nanoseconds: float) -> str:
    return f"{nanoseconds / 1e6:.3f}ms"


def size(nbytes: int) -> str:
    """Bytes, exact, with a binary-unit reading when large."""
    if nbytes < 1024:
        return f"{nbytes} B"
    value, unit = nbytes / 1024, "KiB"
    for larger in ("MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{nbytes} B ({value:.1f} {unit})"


def delay_rows(values: Mapping[str, Any]) -> list[tuple[str, int, int, int | None, int | None]]:
    """(name, count, total ns, max ns, min ns) of each delay category the version has."""
    rows = []
    for name, prefix in DELAY_CATEGORIES:
        if f"{prefix}_count" not in values:
            continue
        rows.append((name, int(values[f"{prefix}_count"]), int(values[f"{prefix}_delay_total"]),
                     values.get(f"{prefix}_delay_max"), values.get(f"{prefix}_delay_min")))
    return rows


def delays_summary(values: Mapping[str, Any]) -> str:
    """The delay categories that saw a delay: "cpu 5.000ms/10, io 2.000ms/1" (total/count)."""
    parts = [f"{name.lower()} {ms(total)}/{count}"
             for name, count, total, _, _ in delay_rows(values) if count or total]
    return ", ".join(parts) if parts else "-"


def started(values: Mapping[str, Any]) -> str:
    btime = int(values.get("ac_btime64") or values.get("ac_btime", 0))
    if not btime:
        return "- (btime 0)"
    when = datetime.fromtimestamp(btime, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{when} (btime {btime})"


def format_report(aggr: str, ident: int, values: Mapping[str, Any]) -> str:
    """The text report of `tsemu get`: identity, times, memory, I/O, then a delay table."""
    label = 12
    lines: list[str] = []
    kind = "tgid" if aggr == "AGGR_TGID" else "pid"
    lines.append(f"TASKSTATS {kind} {ident}: {comm_of(values) or '-'} "
                 f"(taskstats version {values.get('version')}, {aggr})")

    def row(name: str, text: str) -> None:
        lines.append(f"  {name:<{label}} {text}")

    row("comm", comm_of(values) or "-")
    ids = f"pid {values.get('ac_pid', 0)}"
    if "ac_tgid" in values:
        ids += f"  tgid {values['ac_tgid']}"
    row("task", f"{ids}  ppid {values.get('ac_ppid', 0)}")
    row("user", f"uid {values.get('ac_uid', 0)}  gid {values.get('ac_gid', 0)}")
    nice = int(values.get("ac_nice", 0))
    nice = nice - 256 if nice > 127 else nice
    policy = int(values.get("ac_sched", 0))
    row("sched", f"nice {nice}  policy {SCHED_POLICIES.get(policy, str(policy))}")
    row("flags", f"{flag_names(int(values.get('ac_flag', 0)))} "
                 f"(ac_flag {int(values.get('ac_flag', 0)):#04x})")
    ended = int(values.get("ac_exitcode", 0)) or int(values.get("ac_flag", 0)) & 0x10
    row("exit", f"{exit_status(values) if ended else '-'} "
                f"(ac_exitcode {values.get('ac_exitcode', 0)})")
    row("started", started(values))
    row("elapsed", seconds_us(int(values.get("ac_etime", 0))))
    row("user time", seconds_us(int(values.get("ac_utime", 0))))
    row("system time", seconds_us(int(values.get("ac_stime", 0))))
    row("cpu run", f"real {values.get('cpu_run_real_total', 0)} ns  "
                   f"virtual {values.get('cpu_run_virtual_total', 0)} ns")
    row("switches", f"voluntary {values.get('nvcsw', 0)}  involuntary {values.get('nivcsw', 0)}")
    row("faults", f"minor {values.get('ac_minflt', 0)}  major {values.get('ac_majflt', 0)}")
    row("memory", f"hiwater rss {values.get('hiwater_rss', 0)} KiB  "
                  f"hiwater vm {values.get('hiwater_vm', 0)} KiB")
    row("", f"coremem {values.get('coremem', 0)} MB-usec  "
            f"virtmem {values.get('virtmem', 0)} MB-usec")
    row("read", f"{size(int(values.get('read_char', 0)))} in "
                f"{values.get('read_syscalls', 0)} syscalls; storage "
                f"{size(int(values.get('read_bytes', 0)))}")
    row("written", f"{size(int(values.get('write_char', 0)))} in "
                   f"{values.get('write_syscalls', 0)} syscalls; storage "
                   f"{size(int(values.get('write_bytes', 0)))}; cancelled "
                   f"{size(int(values.get('cancelled_write_bytes', 0)))}")
    if "ac_exe_dev" in values:
        dev = int(values["ac_exe_dev"])
        row("executable", f"dev {os.major(dev)}:{os.minor(dev)}  "
                          f"inode {values.get('ac_exe_inode', 0)}")
    rows = delay_rows(values)
    has_extremes = any(mx is not None for *_, mx, _ in rows)
    lines.append("")
    header = f"{'DELAY':<10}{'count':>12}{'delay total':>18}{'delay average':>15}"
    if has_extremes:
        header += f"{'delay max':>13}{'delay min':>13}"
    lines.append(header)
    for name, count, total, mx, mn in rows:
        line = f"{name:<10}{count:>12}{total:>18}{ms(total / count if count else 0):>15}"
        if has_extremes:
            line += f"{ms(mx or 0):>13}{ms(mn or 0):>13}"
        lines.append(line)
    lines.append("(delay totals in ns; averages, max and min in ms)")
    return "\n".join(lines)


#: The header of `tsemu listen`'s text lines.
LISTEN_HEADER = (f"{'RECORD':<6} {'PID':>7} {'TGID':>7} {'COMM':<16} {'STATUS':<22} "
                 f"{'FLAGS':<13} {'ETIME':>12} {'UTIME':>12} {'STIME':>12}  DELAYS total/count")


def format_event_line(aggr: str, ident: int, values: Mapping[str, Any]) -> str:
    """One line of `tsemu listen`: a PID record, or (marked TGID) a thread group's totals."""
    tgid_record = aggr == "AGGR_TGID"
    kind = "TGID" if tgid_record else "pid"
    pid = "-" if tgid_record else str(ident)
    tgid = ident if tgid_record else values.get("ac_tgid", values.get("ac_pid", 0))
    times = [f"{int(values.get(f, 0)) / 1e6:.6f}s" for f in ("ac_etime", "ac_utime", "ac_stime")]
    status = "(group totals)" if tgid_record else exit_status(values)
    return (f"{kind:<6} {pid:>7} {tgid:>7} {comm_of(values) or '-':<16} "
            f"{status:<22} {flag_names(int(values.get('ac_flag', 0))):<13} "
            f"{times[0]:>12} {times[1]:>12} {times[2]:>12}  {delays_summary(values)}")


def format_families(families: Iterable[Any]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"{family.name}")
        lines.append(f"  id {family.id:#x}  version {family.version}  hdrsize "
                     f"{family.hdrsize}  maxattr {family.maxattr}")
        names = OP_NAMES.get(family.name, {})
        if family.ops:
            lines.append("  ops:")
        else:
            lines.append("  ops: none")
        for op, flags in family.ops:
            decoded = ",".join(name for bit, name in OP_FLAGS if flags & bit) or "-"
            lines.append(f"    {op:#06x} {names.get(op, ''):<18} flags {flags:#04x} {decoded}")
        if family.mcast_groups:
            lines.append("  multicast groups:")
        else:
            lines.append("  multicast groups: none")
        for gid, name in family.mcast_groups:
            lines.append(f"    {gid:#06x} {name}")
    return "\n".join(lines)


def families_json(families: Iterable[Any]) -> list[dict[str, Any]]:
    return [{
        "name": f.name, "id": f.id, "version": f.version, "hdrsize": f.hdrsize,
        "maxattr": f.maxattr,
        "ops": [{"id": op, "name": OP_NAMES.get(f.name, {}).get(op), "flags": flags,
                 "flag_names": [n for bit, n in OP_FLAGS if flags & bit]}
                for op, flags in f.ops],
        "mcast_groups": [{"id": gid, "name": name} for gid, name in f.mcast_groups],
    } for f in families]


# -- talking to tsemu or the kernel ------------------------------------------------------------

class Target:
    """Where a verb's requests go, and how its failures read."""

    def __init__(self, host: bool, socket: Path | None) -> None:
        if host and socket is not None:
            fail("give --host or --socket, not both", 2)
        self.host = host
        self.socket = None if host else socket_path(socket)

    def where(self) -> str:
        return "the host kernel" if self.host else f"the tsemu server at {self.socket}"

    async def connect(self) -> Any:
        from tsemu.client import Client

        if self.host:
            try:
                return await Client.host()
            except OSError as exc:
                raise Failure(f"cannot open a generic-netlink socket on the host: "
                              f"{exc.strerror or exc}") from None
        assert self.socket is not None
        try:
            return await Client.connect(self.socket)
        except FileNotFoundError:
            raise Failure(f"no tsemu server at {self.socket} (start one with `tsemu serve`, "
                          f"or name its socket with --socket or $TSEMU_SOCKET)") from None
        except ConnectionRefusedError:  # (the client's first datagram, at connect)
            raise self.not_listening() from None
        except OSError as exc:
            raise Failure(f"cannot reach the tsemu server at {self.socket}: "
                          f"{exc.strerror or exc}") from None

    def not_listening(self) -> Failure:
        """A socket file with no server behind it (a server that died, or was killed)."""
        return Failure(f"no tsemu server is listening on {self.socket} (a stale socket? "
                       f"start one with `tsemu serve`)")

    async def ask(self, request: Awaitable[T]) -> T:
        """`request`'s result; its failures as `Failure`s (netlink errors left to the caller)."""
        import trio

        from tsemu.client import NetlinkError

        try:
            with trio.fail_after(TIMEOUT):
                return await request
        except trio.TooSlowError:
            raise Failure(f"no answer from {self.where()} within {TIMEOUT:g} s") from None
        except NetlinkError:
            raise
        except (ConnectionRefusedError, FileNotFoundError):
            raise self.not_listening() from None
        except OSError as exc:
            raise Failure(f"talking to {self.where()}: {exc.strerror or exc}") from None

    def netlink_failure(self, exc: Any, what: str) -> Failure:
        """The message for a NetlinkError answering `what` (e.g. "pid 42")."""
        if exc.errno == errno.ESRCH:
            return Failure(f"no task with {what}")
        if exc.errno == errno.EPERM:
            if self.host:
                return Failure("TASKSTATS needs CAP_NET_ADMIN on the host kernel: run as root "
                               "(or give the command cap_net_admin)")
            uid = os.getuid()
            uids = "0" if uid == 0 else f"0,{uid}"
            return Failure(f"TASKSTATS needs CAP_NET_ADMIN and {self.where()} refused you "
                           f"(uid {uid}): its `tsemu serve --admin` option decides who has it "
                           f"(e.g. --admin all, or --admin {uids})")
        if exc.errno == errno.ENOENT:
            return Failure(f"{self.where()} has no TASKSTATS family"
                           + (" (a kernel without CONFIG_TASKSTATS?)" if self.host else ""))
        return Failure(f"{self.where()} refused the request for {what}: "
                       f"{errno.errorcode.get(exc.errno, exc.errno)} ({os.strerror(exc.errno)})")


def run_trio(body: Callable[[], Awaitable[T]]) -> T:
    """trio.run(body), with `Failure`s reported the CLI's way."""
    import trio

    try:
        return trio.run(body)
    except Failure as exc:
        fail(exc.message, exc.status)


# -- the verbs ---------------------------------------------------------------------------------

def get(
    pid: Annotated[int | None, typer.Option(min=1, help="A task (thread) id.",
                                            show_default=False)] = None,
    tgid: Annotated[int | None, typer.Option(min=1, help="A process (thread group) id: the "
                                             "totals of its threads.", show_default=False)] = None,
    as_json: JsonOption = False,
    host: HostOption = False,
    socket: SocketOption = None,
) -> None:
    """Show the taskstats of a task (--pid) or a thread group (--tgid), like getdelays -d.

    Asks with TASKSTATS_CMD_GET, which needs CAP_NET_ADMIN. --json prints the whole record as
    one JSON object: "aggr", "id", then every field of struct taskstats (ac_comm as a string).
    """
    if (pid is None) == (tgid is None):
        fail("give exactly one of --pid or --tgid", 2)
    target = Target(host, socket)
    what = f"pid {pid}" if pid is not None else f"tgid {tgid}"

    async def body() -> Any:
        from tsemu.client import NetlinkError

        client = await target.connect()
        async with client:
            try:
                if pid is not None:
                    return await target.ask(client.get_pid(pid))
                assert tgid is not None
                return await target.ask(client.get_tgid(tgid))
            except NetlinkError as exc:
                raise target.netlink_failure(exc, what) from None

    record = run_trio(body)
    aggr = record.aggr.name
    values = record.values()
    if as_json:
        typer.echo(json.dumps(record_json(aggr, record.id, values)))
    else:
        typer.echo(format_report(aggr, record.id, values))


def listen(
    cpus: Annotated[str, typer.Option(help="The CPUs whose exits to report, as a cpulist: "
                                      "0-3, 0,2, all.", show_default=False)],
    as_json: JsonOption = False,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after N exit events.",
                                              show_default=False)] = None,
    host: HostOption = False,
    socket: SocketOption = None,
) -> None:
    """Print an exit event each time a task exits on one of CPUS, until Ctrl-C (or --count).

    Registers a listener with TASKSTATS_CMD_GET (REGISTER_CPUMASK; needs CAP_NET_ADMIN) and
    deregisters it when stopped. Text output is a line per record: "pid" lines are the task
    that exited; a line marked TGID follows when a thread group's last thread exits, with the
    group's totals. --json prints one JSON object per event: {"records": [...]}, each record as
    `tsemu get --json` prints it. (An event does not say which of CPUS the task exited on: the
    kernel's message carries no CPU.) Lost events (the receive buffer overflowed: ENOBUFS) are
    reported on stderr and listening goes on. Exits 0 after --count events, 130 on Ctrl-C, 143
    on SIGTERM.
    """
    import trio

    target = Target(host, socket)
    stopped_by: list[int] = []

    def emit(event: Any) -> None:
        if as_json:
            line = json.dumps({"records": [record_json(r.aggr.name, r.id, r.values())
                                           for r in event.records]})
            sys.stdout.write(line + "\n")
        else:
            for r in event.records:
                sys.stdout.write(format_event_line(r.aggr.name, r.id, r.values()) + "\n")
        sys.stdout.flush()

    async def receive(client: Any, done: trio.CancelScope) -> None:
        from tsemu.wire.errors import WireError

        received = 0
        while count is None or received < count:
            try:
                event = await client.next_event()
            except WireError as exc:
                raise Failure(f"an undecodable message from {target.where()}: {exc}") from None
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise Failure(f"receiving from {target.where()}: "
                                  f"{exc.strerror or exc}") from None
                typer.echo("tsemu: exit events were lost (the receive buffer overflowed: "
                           "ENOBUFS); listening on", err=True)
                continue
            try:
                emit(event)
            except BrokenPipeError:  # the reader went away (`tsemu listen ... | head`)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                break
            received += 1
        done.cancel()

    async def on_signal(signals: Any, done: trio.CancelScope) -> None:
        async for signum in signals:
            stopped_by.append(signum)
            done.cancel()
            return

    async def body() -> None:
        from tsemu.client import NetlinkError

        client = await target.connect()
        async with client:
            try:
                await target.ask(client.register(cpus))
            except NetlinkError as exc:
                if exc.errno == errno.EINVAL:
                    raise Failure(f"--cpus {cpus!r} is not a valid cpulist (EINVAL)", 2) from None
                if exc.errno == errno.ERANGE:
                    raise Failure(f"--cpus {cpus!r} names a CPU that {target.where()} does "
                                  f"not have (ERANGE)", 2) from None
                raise target.netlink_failure(exc, f"registering cpus {cpus}") from None
            typer.echo(f"tsemu: listening for exits on cpus {cpus} of {target.where()}",
                       err=True)
            if not as_json:
                sys.stdout.write(LISTEN_HEADER + "\n")
                sys.stdout.flush()
            failures: list[Failure] = []
            try:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async with trio.open_nursery() as nursery:
                        async def guarded() -> None:
                            try:
                                await receive(client, nursery.cancel_scope)
                            except Failure as exc:
                                failures.append(exc)
                                nursery.cancel_scope.cancel()
                        nursery.start_soon(guarded)
                        nursery.start_soon(on_signal, signals, nursery.cancel_scope)
            finally:
                with trio.move_on_after(2) as cleanup:
                    cleanup.shield = True
                    try:
                        await client.deregister(cpus)
                    except OSError:
                        pass  # closing the socket ends the registration too
            if failures:
                raise failures[0]

    run_trio(body)
    if stopped_by:
        raise typer.Exit(128 + stopped_by[0])


def families(as_json: JsonOption = False, host: HostOption = False,
             socket: SocketOption = None) -> None:
    """List the generic-netlink families, like `genl ctrl list`: name, id, version, header
    size, max attribute, operations with their flags, multicast groups."""
    target = Target(host, socket)

    async def body() -> Any:
        from tsemu.client import NetlinkError

        client = await target.connect()
        async with client:
            try:
                return await target.ask(client.families())
            except NetlinkError as exc:
                raise target.netlink_failure(exc, "the family list") from None

    found = run_trio(body)
    if as_json:
        typer.echo(json.dumps(families_json(found), indent=1))
    else:
        typer.echo(format_families(found))


def register(app: typer.Typer) -> None:
    """Add `get`, `listen` and `families` to the `tsemu` app."""
    app.command("get", epilog="Examples:\n\n  tsemu get --pid 4242\n\n  tsemu get --tgid 3100 "
                "--json\n\n  tsemu get --host --pid $$")(get)
    app.command("listen", epilog="Examples:\n\n  tsemu listen --cpus 0-3\n\n  tsemu listen "
                "--cpus all --json --count 10\n\n  tsemu listen --host --cpus 0")(listen)
    app.command("families", epilog="Examples:\n\n  tsemu families\n\n  tsemu families --host "
                "--json")(families)
