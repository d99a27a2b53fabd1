"""Target: a Go client's GET round trips through the seccomp supervisor (`tsemu-run`).

Measured: tests/clients/gotaskstats (mdlayher/genetlink, no cgo) asking a running `tsemu
serve` for one pid again and again, under `tsemu-run`. References in the same run:

- `bench/c/pingpong.c`, the C socketpair ping-pong of the GET benchmark. Target: the Go
  client through the supervisor >= 0.25 x its rate;
- the same Go client on the host kernel (skipped, with the reason, without root or
  CONFIG_TASKSTATS);
- the C GET client (bench/c/tsget.c) through the shim, for comparison (INFO);
- what the supervisor adds to an unrelated trapped call (a sendmsg/recvmsg on a
  socketpair, which the supervisor hands back with CONTINUE): bench/c/trapcost.c with and
  without it. Target: <= 10 us per call;
- what it adds to an unrelated open (outside /proc) when it has a /proc view and so traps
  every path call: trapcost -o, an absolute and a relative path, with and without it.
  Target: <= 10 us per open.

Skipped, with the reason, where Go or Debian's mdlayher sources are missing, or where the
supervisor cannot run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .common import BENCH, Context, Line, host_taskstats, median_run, result, skip_line, start_serve
from .get import pick_pid, pingpong, tsget

NAME = "supervisor"
TARGET_RATIO = 0.25
TARGET_TRAP_US = 10.0
GOPATH = Path("/usr/share/gocode")
GO_CLIENT = BENCH.parent / "tests" / "clients" / "gotaskstats"


def build_go(ctx: Context) -> Path | str:
    """The Go client built into the scratch directory, or why it cannot be."""
    go = shutil.which("go")
    if go is None:
        return "no Go toolchain (apt-get install golang-go)"
    if not (GOPATH / "src/github.com/mdlayher/genetlink").is_dir():
        return "Debian's mdlayher Go sources are missing"
    binary = ctx.tmp / "gotaskstats"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": "",
           "CGO_ENABLED": "0", "GOCACHE": str(ctx.tmp / "gocache")}
    done = subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_CLIENT, env=env,
                          capture_output=True, text=True, check=False)
    return binary if done.returncode == 0 else f"go build failed: {done.stderr.strip()}"


def _median(ctx: Context, argv: list[str], key: str,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    runs = [ctx.run_program(argv, env=env, cpus=ctx.placement.client, timeout=60)
            for _ in range(1 if ctx.quick else 3)]
    return median_run(runs, key)


def run(ctx: Context) -> dict[str, Any]:
    from tsemu.supervisor import SupervisorUnavailable, usable_supervisor

    title = "Go GET round trips through the supervisor"
    try:
        supervisor = usable_supervisor()
    except SupervisorUnavailable as exc:
        return result(NAME, [skip_line("supervisor.go_get", title, str(exc))])
    go = build_go(ctx)
    if isinstance(go, str):
        return result(NAME, [skip_line("supervisor.go_get", title, go)])
    seconds = ctx.scaled(1.0, 0.2)
    gets = str(int(ctx.scaled(20000, 2000)))
    ref = pingpong(ctx, seconds)
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "TSEMU_SOCKET", "TSEMU_DEBUG")}

    server = start_serve(ctx, NAME)
    try:
        pid = str(pick_pid(server))
        through = [str(supervisor), "--socket", str(server.socket_path), "--"]
        go_rate = _median(ctx, [*through, str(go), "bench", gets, pid], "rate", env)
        shim = tsget(ctx, server.socket_path, seconds, "-p", pid)
    finally:
        server.stop()

    plain = _median(ctx, [str(ctx.program("trapcost")), "-n", "100000"], "ns_per_call", env)
    trapped = _median(ctx, [str(supervisor), "--", str(ctx.program("trapcost")), "-n", "20000"],
                      "ns_per_call", env)
    added_us = (trapped["ns_per_call"] - plain["ns_per_call"]) / 1000
    opens = _open_costs(ctx, supervisor, env)

    lines = [
        Line("supervisor.go_get", title, go_rate["rate"], "/s",
             target=TARGET_RATIO * ref["rate"], reference="C socketpair ping-pong",
             reference_value=ref["rate"]),
        Line("supervisor.vs_shim", "Go GET via supervisor vs C GET via shim", go_rate["rate"],
             "/s", reference="C tsget through the shim", reference_value=shim["rate"]),
        Line("supervisor.trap_cost", "cost added to an unrelated trapped call", added_us, "us",
             target=TARGET_TRAP_US, op="<=",
             note=f"sendmsg/recvmsg on a socketpair: {plain['ns_per_call'] / 1000:.2f} us "
                  f"plain, {trapped['ns_per_call'] / 1000:.2f} us trapped"),
    ]
    for name, (plain_open, trapped_open) in opens.items():
        lines.append(Line(f"supervisor.open_cost_{name}",
                          f"cost added to an open outside /proc, view on ({name})",
                          (trapped_open - plain_open) / 1000, "us", target=TARGET_TRAP_US,
                          op="<=", note=f"{plain_open / 1000:.2f} us plain, "
                                        f"{trapped_open / 1000:.2f} us trapped"))
    why_not = host_taskstats()
    host = None
    if why_not is None:
        host = _median(ctx, [str(go), "bench", gets, "1"], "rate", env)
        lines.append(Line("supervisor.vs_host", "Go GET via supervisor vs host kernel",
                          go_rate["rate"], "/s", reference="the same Go client, host kernel",
                          reference_value=host["rate"]))
    else:
        lines.append(skip_line("supervisor.vs_host", "Go GET via supervisor vs host kernel",
                               f"host kernel GET: {why_not}"))
    return result(NAME, lines, placement=ctx.placement.describe(), pingpong=ref, go=go_rate,
                  shim=shim, host=host, host_skip=why_not, trap_plain=plain,
                  trap_trapped=trapped, opens=opens)


def _open_costs(ctx: Context, supervisor: Path,
                env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """ns per open of a file outside /proc, plain and under the supervisor with a /proc view
    (an empty one: only its marker), for an absolute and a relative path."""
    view = ctx.tmp / "view"
    view.mkdir(exist_ok=True)
    (view / ".tsemu-view").write_text("tsemu proc view 1\n")
    target = ctx.tmp / "opened"
    target.write_text("x")
    viewed = {**env, "TSEMU_PROC_VIEW": str(view)}
    trapcost = str(ctx.program("trapcost"))
    costs = {}
    for name, path in (("absolute", str(target)), ("relative", target.name)):
        args = ["-o", path, "-d", str(ctx.tmp)]
        plain = _median(ctx, [trapcost, "-n", "100000", *args], "ns_per_call", viewed)
        trapped = _median(ctx, [str(supervisor), "--", trapcost, "-n", "20000", *args],
                          "ns_per_call", viewed)
        costs[name] = (float(plain["ns_per_call"]), float(trapped["ns_per_call"]))
    return costs
