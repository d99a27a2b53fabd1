"""The control protocol: driving a running emulator's process table from any language.

Transport: a Unix stream socket beside the netlink socket, at `SOCKET.ctl` (for
`/run/tsemu/genl.sock`, `/run/tsemu/genl.sock.ctl`). Each request is one line of JSON, an
object with an "op"; each answer is one line of JSON: `{"ok": true, ...}` or
`{"ok": false, "error": "what went wrong"}`. A connection may carry any number of requests.

| op            | arguments                                    | answer                  |
|---------------|----------------------------------------------|-------------------------|
| spawn         | comm, pid?, threads?, cpu?, uid?, gid?,      | pid, tids               |
|               | ppid?, cgroup?, state?, nice?, counters?     |                         |
| exit          | pid, cpu?, code?, signal? (9 or "SIGKILL"),  | exited, tgid_record     |
|               | core? (a leader: the whole process exits)    |                         |
| set           | pid, values {field or counter: value}        | -                       |
| advance       | seconds (virtual clock only)                 | now, fired              |
| ps            | -                                            | tasks [{pid, tgid, ...}]|
| listeners     | -                                            | listeners {cpu: ports}  |
| stats         | -                                            | server, cpus, clients   |
| storm         | count, cpus? (cpulist; all), threads?        | exits, seconds, rate,   |
|               |                                              | deliveries              |
| wait_listener | cpus? (cpulist), timeout? (s, default 10)    | listeners               |
| now           | -                                            | now (s since the start) |

Counter values are integers in the kernel's units (see `tsemu.emulator.model.tasks.COUNTERS`) or,
for durations, strings such as "3ms".

`ControlClient` is the Python side (blocking, standard library only), used by `tsemu ctl` and
the pytest plugin.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import trio

from tsemu.wire import WireError, parse_cpulist

from ..model.tasks import COUNTERS
from ..scenario import (
    ScenarioError,
    parse_counter_value,
    policy_number,
    signal_number,
    task_state,
)

CTL_SUFFIX = ".ctl"
MAX_LINE = 1 << 20


def control_path(socket_path: Path) -> Path:
    return socket_path.with_name(socket_path.name + CTL_SUFFIX)


class ControlError(Exception):
    """A request the emulator refused; the message says why."""


def _signal(value: Any) -> int | None:
    return None if value is None else signal_number(value)


def _cpus(emulator: Any, text: Any) -> list[int]:
    if text is None:
        return list(range(emulator.scenario.machine.cpus))
    try:
        cpus = parse_cpulist(str(text).encode(), emulator.scenario.machine.cpus)
    except WireError as exc:
        raise ControlError(f"cpus {text!r}: {exc}") from None
    if not cpus:
        raise ControlError(f"cpus {text!r} names no CPU")
    return sorted(cpus)


def _counters(values: Any) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ControlError("counters must be an object {name: value}")
    out = {}
    for name, value in values.items():
        try:
            out[name] = parse_counter_value(name, value)
        except ScenarioError as exc:
            raise ControlError(str(exc)) from None
    return out


async def _op_spawn(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"comm": req.get("comm", "task")}
    for key in ("pid", "threads", "cpu", "uid", "gid", "ppid", "cgroup", "nice", "policy"):
        if req.get(key) is not None:
            spec[key] = req[key]
    if req.get("state") is not None:
        spec["state"] = task_state(req["state"])
    spec["counters"] = _counters(req.get("counters"))
    tids = await emu.spawn(**spec)
    return {"pid": tids[0], "tids": tids}


async def _op_exit(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("code") is not None and req.get("signal") is not None:
        raise ControlError("give a code or a signal, not both")
    reports = await emu.exit(int(req["pid"]), code=int(req.get("code") or 0),
                             signal=_signal(req.get("signal")),
                             core=bool(req.get("core", False)), cpu=req.get("cpu"))
    return {"exited": [r.tid for r in reports],
            "tgid_record": any(r.tgid_values is not None for r in reports)}


async def _op_set(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    values = dict(req.get("values") or {})
    if not values:
        raise ControlError("set needs at least one FIELD=VALUE")
    if "state" in values:
        values["state"] = task_state(values["state"])
    if "policy" in values:
        values["policy"] = policy_number(values["policy"])
    counters = {k: v for k, v in values.items() if k in COUNTERS}
    values.update(_counters(counters))
    await emu.set(int(req["pid"]), values)
    return {}


async def _op_advance(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    fired = await emu.advance(float(req["seconds"]))
    return {"now": emu.now_seconds(), "fired": [e.action for e in fired]}


async def _op_ps(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    tasks = [{"pid": t.tid, "tgid": t.tgid, "ppid": t.ppid, "comm": t.comm.decode(errors="replace"),
              "cpu": t.cpu, "state": t.state.name.lower(), "uid": t.uid, "cgroup": t.cgroup}
             for t in emu.table]
    return {"tasks": sorted(tasks, key=lambda t: t["pid"])}


async def _op_listeners(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    return {"listeners": {str(cpu): ports for cpu, ports in
                          emu.server.listeners.listeners().items()}}


async def _op_stats(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    server = emu.server
    return {
        "server": vars(server.stats),
        "cpus": [{"cpu": c.cpu, "seq": c.seq, **vars(c.stats)} for c in server.listeners.cpus],
        "clients": [{"port": port, "delivered": c.outbox.delivered,
                     "dropped": c.outbox.dropped, "congested": c.outbox.congested}
                    for port, c in sorted(server.clients.items())],
        "tasks": len(emu.table),
        "now": emu.now_seconds(),
    }


async def _op_storm(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    result = await emu.storm(int(req.get("count", 0)), _cpus(emu, req.get("cpus")),
                             int(req.get("threads", 1)))
    return {"exits": result.exits, "seconds": result.seconds, "rate": result.rate,
            "deliveries": result.deliveries}


async def _op_wait_listener(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    cpus = set(_cpus(emu, req["cpus"])) if req.get("cpus") is not None else None
    timeout = float(req.get("timeout", 10))
    with trio.move_on_after(timeout) as scope:
        await emu.wait_for_listener(cpus)
    if scope.cancelled_caught:
        raise ControlError(f"no listener registered within {timeout} s")
    return await _op_listeners(emu, req)


async def _op_now(emu: Any, req: dict[str, Any]) -> dict[str, Any]:
    return {"now": emu.now_seconds()}


Handler = Callable[[Any, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]
OPS: dict[str, Handler] = {
    "spawn": _op_spawn, "exit": _op_exit, "set": _op_set, "advance": _op_advance,
    "ps": _op_ps, "listeners": _op_listeners, "stats": _op_stats, "storm": _op_storm,
    "wait_listener": _op_wait_listener, "now": _op_now,
}


async def answer(emulator: Any, line: bytes) -> dict[str, Any]:
    """The answer to one request line; never raises."""
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise ControlError('a request is a JSON object with an "op"')
        handler = OPS.get(request["op"])
        if handler is None:
            raise ControlError(f"unknown op {request['op']!r}; ops: {', '.join(OPS)}")
        return {"ok": True, **await handler(emulator, request)}
    except KeyError as exc:
        return {"ok": False, "error": f"missing argument {exc}"}
    except (ControlError, ValueError, TypeError, LookupError, OSError) as exc:
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


async def serve_control(emulator: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on the control socket until cancelled; remove it on the way out."""
    path = control_path(emulator.socket_path)
    if path.exists():
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(64)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        await _connection(emulator, stream)

    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(handle, [listener], handler_nursery=nursery)
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class ControlClient:
    """A blocking client of the control socket of the emulator serving `socket_path`."""

    def __init__(self, socket_path: Path | str, timeout: float = 30.0) -> None:
        self.path = control_path(Path(socket_path))
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
