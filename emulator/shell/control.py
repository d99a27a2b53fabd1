"""The control protocol: driving a running emulator's process table from any language.

Transport: a Unix stream socket beside the netlink socket, at `SOCKET.ctl` (for
`/run/tsemu/genl.sock`, `/run/tsemu/genl.sock.ctl`), 0600 (the server's user only; with
`--ctl-group`, 0660 and that group's). Each request is one line of JSON, an object with an
"op"; each answer is one line of JSON: `{"ok": true, ...}` or `{"ok": false, "error": "what
went wrong"}`. A connection may carry any number of requests.

| op            | arguments                                    | answer                  |
|---------------|----------------------------------------------|-------------------------|
| spawn         | comm?, pid?, threads? (1-10000), cpu?, uid?, | pid, tids               |
|               | gid?, ppid?, cgroup?, state?, nice?,         |                         |
|               | policy?, counters? {name: value}             |                         |
| exit          | pid, cpu?, code?, signal? (9 or "SIGKILL"),  | exited, tgid_record     |
|               | core?, leader_last? (a leader: the whole     |                         |
|               | process exits, the leader first unless       |                         |
|               | leader_last)                                 |                         |
| set           | pid, values {field or counter: value; a      | -                       |
|               | counter may move: "40MiB/s"}                 |                         |
| advance       | seconds (a number, or a duration "250ms";    | now, fired              |
|               | virtual clock only)                          |                         |
| ps            | -                                            | tasks [{pid, tgid, ...}]|
| listeners     | -                                            | listeners {cpu: ports}  |
| stats         | -                                            | server, cpus, clients   |
| storm         | count (0-10000000) or, with rate, duration   | exits, seconds, rate,   |
|               | (a duration: "2s"); cpus? (cpulist; all),    | deliveries, stopped     |
|               | threads? (1-1000), rate? (exits a second,    |                         |
|               | spread evenly; none: as fast as the server   |                         |
|               | sends them)                                  |                         |
| reset         | -                                            | - (the machine as the   |
|               |                                              | scenario starts it; the |
|               |                                              | clients dropped)        |
| wait_listener | cpus? (cpulist), timeout? (s, 0-3600; 10)    | listeners               |
| now           | -                                            | now (s since the start) |
| fault         | fault {kind, ...}: a scenario's [[fault]]    | fault (as listed)       |
| faults        | -                                            | faults [...]            |
| fault_clear   | id? (none: every fault)                      | cleared                 |

Every argument is checked before anything changes (its type, its range, a number's
finiteness), with the scenario format's own readers (`tsemu.emulator.scenario`): the values
a control request gives are spelled as a scenario's ("3ms", "4KiB", "SIGKILL", "sleeping").
A request with an unknown op or argument, a bad value, a line over 1 MiB, JSON nested too
deeply or a number JSON cannot hold is answered `{"ok": false}`; the connection and the
server go on. At most `MAX_CONNECTIONS` connections at once; one more is told so and closed.

`ControlClient` is the Python side (blocking, standard library only), used by `tsemu ctl` and
the pytest plugin. It talks only to a control socket in a directory no other user could have
put it in (the rule `sockdir` applies to the server's own files).
"""

from __future__ import annotations

import json
import math
import os
import socket
import stat
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ..model.clock import NSEC_PER_SEC
from ..model.tasks import COUNTERS, IDENTITY
from ..scenario import ScenarioError, parse_counter_value
from ..scenario.faults import read_fault
from ..scenario.generators import MAX_STORM_EXITS
from ..scenario.tables import cpulist
from ..scenario.values import (
    DURATION_MAX,
    Bad,
    boolean,
    cgroup_path,
    cmdline_args,
    comm_name,
    ioprio_value,
    nice_value,
    parse_duration,
    policy_number,
    ranged,
    show,
    signal_number,
    task_state,
    type_name,
    u32,
)
from .sockdir import private_files, remove_stale, share_with_group

CTL_SUFFIX = ".ctl"
MAX_LINE = 1 << 20
#: Control connections at once.
MAX_CONNECTIONS = 64
#: Threads one spawn makes at most, processes one storm makes at most.
MAX_SPAWN_THREADS = 10_000
MAX_STORM = MAX_STORM_EXITS
MAX_STORM_THREADS = 1_000
#: The highest rate a paced storm may ask for (exits a second).
MAX_STORM_RATE = 1e9


def control_path(socket_path: Path) -> Path:
    return socket_path.with_name(socket_path.name + CTL_SUFFIX)


class ControlError(Exception):
    """A request the emulator refused; the message says why."""


# --- arguments -------------------------------------------------------------------------------

#: How an argument is read: (the emulator, the raw JSON value) -> the checked value; raises
#: `Bad` (or ControlError) saying what is wrong with it.
Reader = Callable[[Any, object], Any]


@dataclass(frozen=True)
class Arg:
    name: str
    read: Reader
    required: bool = False


def _plain(convert: Callable[[object], Any]) -> Reader:
    return lambda emu, value: convert(value)


def _cpu(emu: Any, value: object) -> int:
    cpus = emu.scenario.machine.cpus
    return ranged(0, cpus - 1)(value)


def _pid(emu: Any, value: object) -> int:
    return ranged(1, emu.table.pid_max - 1)(value)


def _cpus(emu: Any, value: object) -> list[int]:
    return cpulist(emu.scenario.machine.cpus)(value)


def _seconds(emu: Any, value: object) -> float:
    """A span of time to advance: seconds as a finite number, or a duration ("250ms")."""
    if isinstance(value, str):
        return parse_duration(value) / NSEC_PER_SEC
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Bad(f"expected seconds (a number) or a duration (\"250ms\"), got "
                  f"{type_name(value)} {show(value)}")
    if not math.isfinite(value) or value < 0:
        raise Bad(f"{value} is not a number of seconds of at least 0")
    if value * NSEC_PER_SEC > DURATION_MAX:
        raise Bad(f"{value} s is further than the kernel's clock goes (an s64 of "
                  "nanoseconds: 292 years)")
    return float(value)


def _timeout(emu: Any, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 <= value <= 3600):
        raise Bad(f"a timeout is a number of seconds from 0 to 3600, not {show(value)}")
    return float(value)


def _counters(emu: Any, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Bad(f"counters is an object {{name: value}}, not {type_name(value)}")
    out = {}
    for name, raw in value.items():
        try:
            out[name] = parse_counter_value(name, raw)
        except ScenarioError as exc:
            raise Bad(str(exc)) from None
    return out


#: How each identity field `set` and `spawn` take is read.
_IDENTITY_READERS: Mapping[str, Reader] = {
    "comm": _plain(comm_name), "ppid": _plain(u32), "uid": _plain(u32), "gid": _plain(u32),
    "cgroup": _plain(cgroup_path), "state": _plain(task_state), "cpu": _cpu,
    "nice": _plain(nice_value), "policy": _plain(policy_number),
    "forked_no_exec": _plain(boolean), "superuser": _plain(boolean),
    "cmdline": _plain(lambda value: tuple(arg.encode() for arg in cmdline_args(value))),
    "ioprio": _plain(ioprio_value), "kthread": _plain(boolean),
    "rt_priority": _plain(ranged(0, 99)),
}
assert set(_IDENTITY_READERS) == set(IDENTITY)


def _values(emu: Any, value: object) -> dict[str, Any]:
    """`set`'s {field or counter: value}."""
    if not isinstance(value, dict) or not value:
        raise Bad("values is an object {field or counter: value} with at least one entry")
    out = {}
    for name, raw in value.items():
        reader = _IDENTITY_READERS.get(name)
        try:
            if reader is not None:
                out[name] = reader(emu, raw)
            elif name in COUNTERS:
                out[name] = parse_counter_value(name, raw, rates=True)
            else:
                raise Bad(f"unknown field {show(name)}; fields: {', '.join(IDENTITY)}, and the "
                          "counters (tsemu.emulator.model.tasks.COUNTERS)")
        except ScenarioError as exc:
            raise Bad(str(exc)) from None
        except Bad as exc:
            raise Bad(f"{name}: {exc}") from None
    return out


_EXIT_CODE = _plain(ranged(-(2**31), 2**31 - 1))


def _signal(emu: Any, value: object) -> int | None:
    return None if value is None else signal_number(value)


# --- ops -------------------------------------------------------------------------------------

Handler = Callable[[Any, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]


async def _op_spawn(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    args.setdefault("comm", "task")
    tids = await emu.spawn(**args)
    return {"pid": tids[0], "tids": tids}


async def _op_exit(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    if args.get("code") and args.get("signal") is not None:
        raise ControlError("give a code or a signal, not both")
    if args.get("core") and args.get("signal") is None:
        raise ControlError("only a death by signal dumps core: give signal too")
    reports = await emu.exit(args["pid"], code=args.get("code", 0),
                             signal=args.get("signal"), core=args.get("core", False),
                             cpu=args.get("cpu"), leader_last=args.get("leader_last", False))
    return {"exited": [r.tid for r in reports],
            "tgid_record": any(r.tgid_values is not None for r in reports)}


async def _op_set(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    await emu.set(args["pid"], args["values"])
    return {}


async def _op_advance(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    fired = await emu.advance(args["seconds"])
    return {"now": emu.now_seconds(), "fired": [e.action for e in fired]}


async def _op_ps(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    """The table's tasks, and the clients' own processes (`clientprocs`), marked real."""
    tasks = [{"pid": t.tid, "tgid": t.tgid, "ppid": t.ppid, "comm": t.comm.decode(errors="replace"),
              "cpu": t.cpu, "state": t.state.name.lower(), "uid": t.uid, "cgroup": t.cgroup,
              "real": False}
             for t in emu.table]
    for p in await trio.to_thread.run_sync(emu.server.own.members):
        if p.pid not in emu.table:
            tasks.append({"pid": p.pid, "tgid": p.tgid, "ppid": p.ppid, "comm": p.comm,
                          "cpu": p.cpu % emu.server.nr_cpus, "state": p.state_name,
                          "uid": p.uid, "cgroup": None, "real": True})
    return {"tasks": sorted(tasks, key=lambda t: t["pid"])}


async def _op_listeners(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"listeners": {str(cpu): ports for cpu, ports in
                          emu.server.listeners.listeners().items()}}


async def _op_stats(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    server = emu.server
    return {
        "server": vars(server.stats),
        "cpus": [{"cpu": c.cpu, "seq": c.seq, **vars(c.stats)} for c in server.listeners.cpus],
        "clients": [{"port": port, "delivered": c.outbox.delivered,
                     "dropped": c.outbox.dropped, "congested": c.outbox.congested}
                    for port, c in sorted(server.clients.items())],
        "refused_senders": server.client_table.refused,
        "tasks": len(emu.table),
        "now": emu.now_seconds(),
        "timeline_skipped": emu.skipped,
        "storms": [{"exits": progress.done, "count": plan.exits}
                   for plan, progress in emu.storms],
    }


async def _op_storm(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    cpus = args.get("cpus") or list(range(emu.scenario.machine.cpus))
    rate = args.get("rate")
    count = args.get("count")
    if "duration" in args:
        if rate is None:
            raise ControlError("storm: a duration needs a rate (exits a second)")
        if count is not None:
            raise ControlError("storm: give count or duration, not both")
        count = math.floor(rate * args["duration"] / NSEC_PER_SEC)
        if count > MAX_STORM:
            raise ControlError(f"storm: {rate:g} exits a second for that long make {count:,}; "
                               f"at most {MAX_STORM:,}")
    elif count is None:
        raise ControlError("storm: missing argument 'count' (or, with a rate, 'duration')")
    result = await emu.storm(count, cpus, args.get("threads", 1), rate=rate)
    return {"exits": result.exits, "seconds": result.seconds, "rate": result.rate,
            "deliveries": result.deliveries, "stopped": result.stopped}


async def _op_reset(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    await emu.reset()
    return {}


def _rate(emu: Any, value: object) -> float:
    """Exits a second: a finite number above 0, at most `MAX_STORM_RATE`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 < value <= MAX_STORM_RATE):
        raise Bad(f"a rate is a number of exits a second above 0 and at most "
                  f"{MAX_STORM_RATE:g}, not {show(value)}")
    return float(value)


def _duration(emu: Any, value: object) -> int:
    """A span of time (ns): a duration ("2s") or seconds as a number."""
    return round(_seconds(emu, value) * NSEC_PER_SEC)


async def _op_wait_listener(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    cpus = set(args["cpus"]) if args.get("cpus") is not None else None
    timeout = args.get("timeout", 10.0)
    with trio.move_on_after(timeout) as scope:
        await emu.wait_for_listener(cpus)
    if scope.cancelled_caught:
        raise ControlError(f"no listener registered within {timeout} s")
    return await _op_listeners(emu, args)


async def _op_now(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"now": emu.now_seconds()}


def _fault(emu: Any, value: object) -> dict[str, Any]:
    """A fault's keys, as a scenario's [[fault]] spells them (`scenario.faults`)."""
    if not isinstance(value, dict):
        raise Bad(f"a fault is an object of its keys, not {type_name(value)}")
    problems: list[str] = []
    fields = read_fault(value, lambda key, problem: problems.append(
        f"{key}: {problem}" if key else problem))
    if fields is None:
        raise Bad("; ".join(problems))
    return fields


async def _op_fault(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    fields = dict(args["fault"])
    return {"fault": emu.add_fault(fields.pop("kind"), **fields).describe()}


async def _op_faults(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"faults": [f.describe() for f in emu.server.kernel.faults.faults]}


async def _op_fault_clear(emu: Any, args: dict[str, Any]) -> dict[str, Any]:
    cleared = emu.server.kernel.faults.clear(args.get("id"))
    if args.get("id") is not None and not cleared:
        raise ControlError(f"no fault {args['id']}")
    return {"cleared": cleared}


#: Every op: its arguments, and what carries it out.
OPS: dict[str, tuple[tuple[Arg, ...], Handler]] = {
    "spawn": ((Arg("comm", _plain(comm_name)), Arg("pid", _pid),
               Arg("threads", _plain(ranged(1, MAX_SPAWN_THREADS))), Arg("cpu", _cpu),
               Arg("uid", _plain(u32)), Arg("gid", _plain(u32)), Arg("ppid", _plain(u32)),
               Arg("cgroup", _plain(cgroup_path)), Arg("state", _plain(task_state)),
               Arg("nice", _plain(nice_value)), Arg("policy", _plain(policy_number)),
               Arg("counters", _counters)), _op_spawn),
    "exit": ((Arg("pid", _pid, True), Arg("cpu", _cpu), Arg("code", _EXIT_CODE),
              Arg("signal", _signal), Arg("core", _plain(boolean)),
              Arg("leader_last", _plain(boolean))), _op_exit),
    "set": ((Arg("pid", _pid, True), Arg("values", _values, True)), _op_set),
    "advance": ((Arg("seconds", _seconds, True),), _op_advance),
    "ps": ((), _op_ps),
    "listeners": ((), _op_listeners),
    "stats": ((), _op_stats),
    "storm": ((Arg("count", _plain(ranged(0, MAX_STORM))), Arg("cpus", _cpus),
               Arg("threads", _plain(ranged(1, MAX_STORM_THREADS))), Arg("rate", _rate),
               Arg("duration", _duration)), _op_storm),
    "reset": ((), _op_reset),
    "wait_listener": ((Arg("cpus", _cpus), Arg("timeout", _timeout)), _op_wait_listener),
    "now": ((), _op_now),
    "fault": ((Arg("fault", _fault, True),), _op_fault),
    "faults": ((), _op_faults),
    "fault_clear": ((Arg("id", _plain(ranged(1, 2**31))),), _op_fault_clear),
}


def _arguments(emulator: Any, op: str, request: dict[str, Any]) -> dict[str, Any]:
    """The request's arguments, every one checked (None stands for an absent one)."""
    spec, _ = OPS[op]
    known = {arg.name: arg for arg in spec}
    for name in request:
        if name != "op" and name not in known:
            valid = ", ".join(known) or "none"
            raise ControlError(f"{op}: unknown argument {name!r}; arguments: {valid}")
    args: dict[str, Any] = {}
    for arg in spec:
        value = request.get(arg.name)
        if value is None:
            if arg.required:
                raise ControlError(f"{op}: missing argument {arg.name!r}")
            continue
        try:
            args[arg.name] = arg.read(emulator, value)
        except Bad as exc:
            raise ControlError(f"{op}: {arg.name}: {exc}") from None
    return args


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line as JSON (ControlError for anything JSON cannot hold or a scenario
    could not: NaN, infinities, huge numbers, nesting too deep)."""
    try:
        request = json.loads(line, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ControlError("the request is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise ControlError(f"not a JSON request: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise ControlError('a request is a JSON object with an "op"')
    return request


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a request can hold")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large a number")
    return value


async def answer(emulator: Any, line: bytes) -> dict[str, Any]:
    """The answer to one request line; never raises (but for cancellation)."""
    try:
        request = parse_request(line)
        op = request["op"]
        if op not in OPS:
            raise ControlError(f"unknown op {op!r}; ops: {', '.join(OPS)}")
        args = _arguments(emulator, op, request)
        return {"ok": True, **await OPS[op][1](emulator, args)}
    except (ControlError, ValueError, LookupError, OSError) as exc:
        return {"ok": False, "error": str(exc) or type(exc).__name__}


async def _connection(emulator: Any, stream: trio.SocketStream) -> None:
    buffer = b""
    async with stream:
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    reply = await answer(emulator, line)
                    try:
                        await stream.send_all(json.dumps(reply).encode() + b"\n")
                    except trio.BrokenResourceError:
                        return
            if len(buffer) > MAX_LINE:
                await stream.send_all(b'{"ok": false, "error": "request line too long"}\n')
                return


async def serve_control(emulator: Any, *, group: str | None = None,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on the control socket until cancelled; remove it on the way out."""
    path = control_path(emulator.socket_path)
    remove_stale(path, "control socket")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with private_files(0o600):
        await sock.bind(str(path))
    share_with_group(path, group)
    sock.listen(MAX_CONNECTIONS)
    listener = trio.SocketListener(sock)
    open_connections = [0]

    async def handle(stream: trio.SocketStream) -> None:
        if open_connections[0] >= MAX_CONNECTIONS:
            async with stream:
                try:
                    await stream.send_all(b'{"ok": false, "error": "too many control '
                                          b'connections (64): close one"}\n')
                except trio.BrokenResourceError:
                    pass
            return
        open_connections[0] += 1
        try:
            await _connection(emulator, stream)
        finally:
            open_connections[0] -= 1

    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(handle, [listener], handler_nursery=nursery)
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def check_control_socket(path: Path) -> None:
    """Refuse a control socket another user could have put there: it must be a socket (not a
    link) in a directory owned by root or the caller and writable by no one else."""
    try:
        st = os.lstat(path)
        directory = os.stat(path.parent)
    except FileNotFoundError:
        return  # (connect says it is missing)
    except OSError as exc:
        raise ControlError(f"cannot look at {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} is not a socket: refusing to talk to it")
    me = os.geteuid()
    if directory.st_uid not in (0, me) or directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if os.environ.get("TSEMU_SHARED_DIR") != "1":
            raise ControlError(
                f"{path.parent} belongs to uid {directory.st_uid} (mode "
                f"{stat.S_IMODE(directory.st_mode):o}): another user could have put {path.name} "
                "there; refusing to talk to it (TSEMU_SHARED_DIR=1 if the directory is shared "
                "on purpose)")


class ControlClient:
    """A blocking client of the control socket of the emulator serving `socket_path`."""

    def __init__(self, socket_path: Path | str, timeout: float = 30.0) -> None:
        self.path = control_path(Path(socket_path))
        check_control_socket(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path))
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"no tsemu control socket at {self.path} ({exc.strerror}); "
                               "is `tsemu serve` running with the same --socket?") from None
        self._file = self.sock.makefile("rb")

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request; the answer's fields, or ControlError with the emulator's reason."""
        self.sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        line = self._file.readline()
        if not line:
            raise ControlError("the emulator closed the control connection")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok", False):
            raise ControlError(reply.get("error", "refused"))
        return reply
