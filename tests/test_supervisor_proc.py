"""/proc under the seccomp supervisor answered exactly as the shim answers it.

The supervisor applies the shim's own /proc rules (shim/procroute.c) to the path calls it
traps: tests/clients/procraw.c makes open, openat, openat2, stat, lstat, newfstatat, statx,
readlink, readlinkat, access and faccessat on a list of paths (emulated pids, a thread, the
caller's own, a host process outside the family, machine files, `//`, `/./`, `..`, a trailing
`/`, relative paths from /proc) as raw system calls in a static binary under `--via seccomp`,
and as libc calls in a dynamic binary under `--via shim`: the two outputs must be the same.
Then `--via auto` (the shim and the supervisor together): a Go program and a libc program
both see the scenario's tasks, and the libc program's merged listing of /proc is the shim's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tsemu.pytest_plugin import TsemuHandle

from .clients.harness import CLIENTS, compile_client, compile_static
from .test_supervisor import fields, needs_supervisor

pytestmark = needs_supervisor


@pytest.fixture(scope="module")
def procraw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """procraw built twice: "raw" (static, raw system calls) and "libc" (dynamic)."""
    out = tmp_path_factory.mktemp("procraw")
    (out / "raw").mkdir()
    return {"raw": compile_static(CLIENTS / "procraw.c", out / "raw", "-DRAW"),
            "libc": compile_client(CLIENTS / "procraw.c", out)}


def scenario_paths(tsemu: TsemuHandle) -> list[str]:
    """What procraw is asked about: every rule of shim/README.md's "The rules" once."""
    leader = tsemu.spawn(comm="svc", threads=2)
    thread = next(t["pid"] for t in tsemu.ps() if t["tgid"] == leader and t["pid"] != leader)
    outsider = os.getppid()  # pytest's parent: neither the client's nor its family's
    return [
        "=/proc/1/comm", "=/proc/1/status", f"=/proc/{leader}/comm", f"=/proc/{thread}/comm",
        f"/proc/{thread}/task", f"/proc/{leader}/task/{thread}",
        f"=/proc/{leader}/task/{thread}/stat",
        "/proc/self/comm", "/proc/self", "/proc/thread-self", "/proc/self/fd",
        f"/proc/{outsider}/comm", f"/proc/{outsider}", "/proc/99999999/comm",
        "/proc/1/exe", "/proc/1/cwd", "/proc/1/.tsemu", "/proc/.tsemu-view", "/proc/.tid",
        "=/proc//1/./comm", "=/proc/1/../1/comm", "=/proc/1/task/../comm", "/proc/1/",
        "/proc/1/comm/", "/proc/../proc/1/comm", "/./proc/1/comm",
        "=/proc/loadavg", "=/proc/sys/kernel/pid_max", "/proc/cpuinfo", "/proc/sys/kernel",
        "/proc", "/proc/", "/proc/.",
        "cd:/", "proc/1/comm",
        "cd:/proc", "=1/comm", "self/comm", "=loadavg", f"=./{leader}/comm", "1/../2/comm",
        f"{outsider}/comm", ".",
        "cd:/proc/1", "=comm", "status/", "cd:/",
    ]


def probe(tsemu: TsemuHandle, binary: Path, via: str, paths: list[str]) -> list[str]:
    done = tsemu.run([str(binary), *paths], via=via, capture_output=True, text=True,
                     timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_each_path_call_is_answered_as_the_shim_answers_it(
        tsemu: TsemuHandle, procraw: dict[str, Path]) -> None:
    paths = scenario_paths(tsemu)
    raw = probe(tsemu, procraw["raw"], "seccomp", paths)
    libc = probe(tsemu, procraw["libc"], "shim", paths)
    # One difference by design: chdir into an emulated task's directory goes into the view
    # under the shim, and stays the host's (the kernel's chdir) under the supervisor; what is
    # opened from there is the view's either way.
    cut = raw.index("cd /proc/1: ok")
    assert raw[:cut] == libc[:cut]
    # From an emulated task's directory, one difference: the shim's chdir went into the view
    # itself, where libc's relative calls are no longer under /proc and a write is not
    # refused; the supervisor (the kernel's chdir: the host's /proc/1) applies the rules to
    # /proc/1/PATH and refuses it (EACCES), as the rules say.
    writes = ("  open_write: ", "  access_w: ")
    assert [line for line in raw[cut:] if not line.startswith(writes)] == \
        [line for line in libc[cut:] if not line.startswith(writes)]
    assert [line for line in raw[cut:] if line.startswith(writes)] == \
        ["  open_write: EACCES", "  access_w: EACCES"] * 2
    text = "\n".join(raw)
    assert "/proc/1/comm\n  open: reg init\n" in text
    assert f"/proc/{os.getppid()}/comm\n  open: ENOENT\n" in text
    assert "  open_write: EACCES" in text


def test_the_view_is_read_only_and_hides_other_host_processes(
        tsemu: TsemuHandle, procraw: dict[str, Path]) -> None:
    outsider = os.getppid()
    lines = probe(tsemu, procraw["raw"], "seccomp",
                  ["=/proc/1/comm", f"/proc/{outsider}/status", "/proc/self/status"])
    by_path: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in lines:
        if not line.startswith("  "):
            current = by_path.setdefault(line, {})
        else:
            call, _, result = line.strip().partition(": ")
            current[call] = result
    assert by_path["/proc/1/comm"]["open"] == "reg init"
    assert by_path["/proc/1/comm"]["open_write"] == "EACCES"
    assert by_path["/proc/1/comm"]["access_w"] == "EACCES"
    assert by_path["/proc/1/comm"]["readlink"] == "EINVAL"
    hidden = by_path[f"/proc/{outsider}/status"]
    assert set(hidden.values()) == {"ENOENT"}, hidden
    own = by_path["/proc/self/status"]
    assert own["open"] == "reg" and own["stat"] == "reg", own


@pytest.mark.parametrize("cgo", ["cgo0", "cgo1"])
def test_auto_gives_go_programs_the_view(tsemu: TsemuHandle,
                                          go_clients: dict[str, Path],
                                          cgo: str) -> None:
    """Under `--via auto` (the shim preloaded too: a cgo program loads it) a Go program that
    lists /proc and asks TGID stats of each pid lists exactly the scenario's tasks."""
    spawned = {tsemu.spawn(comm="svc", threads=2), tsemu.spawn(comm="worker")}
    scenario = {t["pid"]: t["comm"] for t in tsemu.ps()
                if not t["real"] and t["pid"] == t["tgid"]}
    assert spawned <= set(scenario)
    done = tsemu.run([str(go_clients[cgo]), "proclist"], via="auto",
                     capture_output=True, text=True, timeout=60)
    listed = {int(f["pid"]): f for f in map(fields, done.stdout.splitlines())}
    assert set(listed) == set(scenario), done.stdout + done.stderr
    for pid, f in listed.items():
        assert f["comm"] == scenario[pid] and f["tgid"] == str(pid), f


def test_tsemu_run_auto_shows_both_kinds_the_view(tsemu: TsemuHandle,
                                                 go_clients: dict[str, Path],
                                                 ) -> None:
    """`tsemu run --via auto` (the shim and the supervisor together, for every CMD): a libc
    program's `ls /proc` is the shim's merged listing (the host's machine entries, the
    scenario's pids, the client's own), not the view's bare directory, its files are the
    view's; a Go program started the same way lists exactly the scenario's tasks."""
    spawned = tsemu.spawn(comm="svc")
    scenario = {t["pid"] for t in tsemu.ps() if not t["real"] and t["pid"] == t["tgid"]}
    run = [sys.executable, "-m", "tsemu", "run", "--socket", str(tsemu.socket_path),
           "--via", "auto", "--"]
    script = f"ls -a /proc; echo ---; cat /proc/{spawned}/comm; echo $$"
    done = subprocess.run([*run, "sh", "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    listing, _, rest = done.stdout.partition("---\n")
    names = listing.split()
    comm, shell = rest.split()
    assert comm == "svc"
    assert {"self", "cpuinfo", ".", ".."} <= set(names), names
    assert {str(pid) for pid in scenario} <= set(names)
    assert ".tsemu-view" not in names and ".tid" not in names
    assert shell in names  # the client's own pid: the shim merges it in
    go = subprocess.run([*run, str(go_clients["cgo1"]), "proclist"], capture_output=True,
                        text=True, timeout=60, check=False)
    listed = {int(f["pid"]) for f in map(fields, go.stdout.splitlines())}
    assert listed == scenario, go.stdout + go.stderr
