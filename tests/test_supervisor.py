"""Clients the LD_PRELOAD shim cannot reach, reached by the seccomp supervisor (`tsemu-run`):

- a Go client of our own on mdlayher/genetlink (tests/clients/gotaskstats), built with and
  without cgo: the family list, GET by pid and by tgid, an exit listener, many goroutines;
- static C clients (`gcc -static`): getdelays (tests/clients/getdelays.c) and a receive
  interrupted by signals (tests/clients/sigrecv.c);
- /proc for them: a Go program listing /proc sees the scenario's processes (the /proc view);
- `tsemu run` refusing a static or Go program where the supervisor cannot run.

Each sees only the scenario: never the host kernel (whose family list is longer and whose
pids are others). The Go clients are built once per session (GOPATH mode on Debian's packaged
sources, offline); without `go` or those sources the Go tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tsemu.pytest_plugin import TsemuHandle
from tsemu.supervisor import SupervisorUnavailable, program_kind, usable_supervisor

CLIENTS = Path(__file__).parent / "clients"


def _supervisor_problem() -> str | None:
    try:
        usable_supervisor()
    except SupervisorUnavailable as exc:
        return str(exc)
    return None


needs_supervisor = pytest.mark.skipif(_supervisor_problem() is not None,
                                      reason=f"no supervisor here: {_supervisor_problem()}")


def fields(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def test_elf_kinds(go_clients: dict[str, Path], static_clients: dict[str, Path]) -> None:
    assert program_kind(go_clients["cgo0"]) == "Go"
    assert program_kind(go_clients["cgo1"]) == "Go"
    assert program_kind(static_clients["getdelays"]) == "static"
    assert program_kind(sys.executable) is None


@needs_supervisor
@pytest.mark.parametrize("cgo", ["cgo0", "cgo1"])
@pytest.mark.parametrize("via", ["seccomp", "auto"])
def test_go_client_sees_only_the_scenario(tsemu: TsemuHandle, go_clients: dict[str, Path],
                                          cgo: str, via: str) -> None:
    client = str(go_clients[cgo])
    families = tsemu.run([client, "families"], via=via, capture_output=True, text=True,
                         timeout=30)
    assert families.stdout.splitlines() == ["family=nlctrl id=16", "family=TASKSTATS id=31"], \
        families.stderr
    pid = tsemu.spawn(comm="gojob", threads=2)
    by_pid = tsemu.run([client, "pid", str(pid)], via=via, capture_output=True, text=True)
    assert fields(by_pid.stdout) == {"pid": str(pid), "version": fields(by_pid.stdout)["version"],
                                     "comm": "gojob", "ac_pid": str(pid)}, by_pid.stdout
    by_tgid = tsemu.run([client, "tgid", str(pid)], via=via, capture_output=True, text=True)
    assert fields(by_tgid.stdout)["tgid"] == str(pid), by_tgid.stdout
    # a pid the scenario does not have is ESRCH, whatever the host runs under that number
    missing = tsemu.run([client, "pid", str(os.getppid())], via=via, capture_output=True,
                        text=True)
    assert missing.returncode == 1 and "no such process" in missing.stdout, missing.stdout


@needs_supervisor
@pytest.mark.parametrize("cgo", ["cgo0", "cgo1"])
def test_go_listener_receives_scripted_exits(tsemu: TsemuHandle, go_clients: dict[str, Path],
                                             cgo: str) -> None:
    listener = tsemu.popen([str(go_clients[cgo]), "listen", "0-1", "2"], via="seccomp",
                           stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "ready"
    tsemu.wait_for_listener(cpus="0-1")
    first, second = tsemu.spawn(comm="a", cpu=0), tsemu.spawn(comm="b", cpu=1)
    tsemu.exit(first)
    tsemu.exit(second)
    out, _ = listener.communicate(timeout=20)
    exits = [fields(line) for line in out.splitlines()]
    assert [(e["pid"], e["comm"]) for e in exits] == [(str(first), "a"), (str(second), "b")]


@needs_supervisor
def test_multithreaded_go_client(tsemu: TsemuHandle, go_clients: dict[str, Path]) -> None:
    done = tsemu.run([str(go_clients["cgo0"]), "threads", "8"], via="seccomp",
                     capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "threads=8 ok", done.stdout + done.stderr


@needs_supervisor
def test_static_c_client_matches_the_shim(tsemu: TsemuHandle,
                                          static_clients: dict[str, Path],
                                          tmp_path: Path) -> None:
    from .clients.harness import compile_client, shape

    dynamic = compile_client(CLIENTS / "getdelays.c", tmp_path)
    pid = tsemu.spawn(comm="cjob")
    shimmed = tsemu.run([str(dynamic), "-p", str(pid), "-t", str(pid)], via="shim",
                        capture_output=True, text=True)
    supervised = tsemu.run([str(static_clients["getdelays"]), "-p", str(pid), "-t", str(pid)],
                           via="seccomp", capture_output=True, text=True)
    assert shimmed.returncode == supervised.returncode == 0, supervised.stdout
    ours, theirs = supervised.stdout.splitlines(), shimmed.stdout.splitlines()
    assert shape(ours) == shape(theirs)
    for mine, shim in zip(ours, theirs, strict=True):
        assert {k: v for k, v in fields(mine).items() if "time" not in k} == \
            {k: v for k, v in fields(shim).items() if "time" not in k}


@needs_supervisor
def test_static_c_listener(tsemu: TsemuHandle, static_clients: dict[str, Path]) -> None:
    listener = tsemu.popen([str(static_clients["getdelays"]), "-m", "0-1", "-n", "1"],
                           via="seccomp", stdout=subprocess.PIPE, text=True)
    tsemu.wait_for_listener(cpus="0-1")
    job = tsemu.spawn(comm="cexit", cpu=1)
    tsemu.exit(job, code=2)
    out, _ = listener.communicate(timeout=20)
    assert f"pid={job}" in out and "comm=cexit" in out, out


@needs_supervisor
def test_signal_during_a_blocking_receive(tsemu: TsemuHandle,
                                          static_clients: dict[str, Path]) -> None:
    client = tsemu.popen([str(static_clients["sigrecv"])], via="seccomp",
                         stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    assert client.stdout.readline().strip() == "ready"
    tsemu.wait_for_listener(cpus="0")
    time.sleep(0.2)  # in its receive, parked in the supervisor
    pid = _only_child(client.pid)
    os.kill(pid, signal.SIGUSR1)  # no SA_RESTART: the receive fails with EINTR
    assert client.stdout.readline().strip() == "first=EINTR"
    time.sleep(0.2)
    os.kill(pid, signal.SIGUSR2)  # SA_RESTART: the receive goes on, and gets the exit
    time.sleep(0.2)
    tsemu.exit(tsemu.spawn(comm="late", cpu=0))
    out, _ = client.communicate(timeout=20)
    assert out.strip() == "second=596 handled=1"


def _only_child(parent: int) -> int:
    """The client tsemu-run started (its one child)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(children) == 1
    return int(children[0])


def test_run_refuses_what_nothing_reaches(tsemu: TsemuHandle,
                                          static_clients: dict[str, Path]) -> None:
    env = {**os.environ, "TSEMU_SUPERVISOR": "off"}
    argv = [sys.executable, "-m", "tsemu", "run", "--socket", str(tsemu.socket_path)]
    client = [str(static_clients["getdelays"]), "-p", "1"]
    refused = subprocess.run([*argv, "--", *client], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
    assert refused.returncode == 1
    assert "is a static program" in refused.stderr and "--allow-host" in refused.stderr
    assert refused.stdout == ""  # it never ran
    shim_only = subprocess.run([*argv, "--via", "shim", "--", *client],
                               capture_output=True, text=True, timeout=60, check=False)
    assert shim_only.returncode == 1 and "is a static program" in shim_only.stderr
    allowed = subprocess.run([*argv, "--allow-host", "--", *client], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert "is a static program" not in allowed.stderr
    assert allowed.stdout  # it ran (against the host kernel, as asked)
    # a libc program is run through the shim, with a word on what stays unreached
    noted = subprocess.run([*argv, "--proc", "host", "--", "true"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert noted.returncode == 0
    assert "note: the seccomp supervisor cannot run here" in noted.stderr


@needs_supervisor
def test_run_via_seccomp(tsemu: TsemuHandle, go_clients: dict[str, Path]) -> None:
    argv = [sys.executable, "-m", "tsemu", "run", "--socket", str(tsemu.socket_path)]
    for via in ("seccomp", "auto"):
        done = subprocess.run([*argv, "--via", via, "--", str(go_clients["cgo0"]), "families"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.stdout.splitlines() == ["family=nlctrl id=16", "family=TASKSTATS id=31"]


@needs_supervisor
def test_real_exits_of_supervised_processes_are_broadcast(
        tsemu: TsemuHandle, go_clients: dict[str, Path]) -> None:
    """tsemu-run alone (as in a client container: no Python, it registers its own family)
    tells the server of each child's exit before reaping it: a listener sees it."""
    listener = tsemu.popen([str(go_clients["cgo0"]), "listen", "0-1", "1"], via="seccomp",
                           stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "ready"
    tsemu.wait_for_listener(cpus="0-1")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "TSEMU_ROOT")}
    true = shutil.which("true")
    assert true is not None
    done = subprocess.run([str(usable_supervisor()), "--socket", str(tsemu.socket_path), "--",
                           true], env=env, timeout=30, check=False)
    assert done.returncode == 0
    out, _ = listener.communicate(timeout=20)
    assert fields(out.splitlines()[0])["comm"] == "true", out


@needs_supervisor
def test_a_go_program_listing_proc_sees_the_scenario(tsemu: TsemuHandle,
                                                     go_clients: dict[str, Path]) -> None:
    """Go lists /proc with raw system calls (getdents64 on what openat gave it): under the
    supervisor it lists the /proc view, reads each task's files there and asks taskstats
    about exactly those pids."""
    spawned = {tsemu.spawn(comm="svc", threads=2), tsemu.spawn(comm="worker")}
    scenario = {t["pid"]: t["comm"] for t in tsemu.ps()
                if not t["real"] and t["pid"] == t["tgid"]}
    assert spawned <= set(scenario)
    done = tsemu.run([str(go_clients["cgo0"]), "proclist"], via="seccomp",
                     capture_output=True, text=True, timeout=60)
    listed = {int(f["pid"]): f for f in map(fields, done.stdout.splitlines())}
    assert set(listed) == set(scenario), done.stdout + done.stderr
    for pid, f in listed.items():
        assert f["comm"] == scenario[pid] and f["tgid"] == str(pid), f


@needs_supervisor
def test_proc_paths_of_other_host_processes_are_hidden(tsemu: TsemuHandle) -> None:
    """A supervised program's opens under /proc follow the view's rules: an emulated pid is the
    view's, its own is real, a host pid outside the client family does not exist."""
    cat = shutil.which("cat")
    assert cat is not None
    outsider = os.getppid()  # pytest's parent: not a client process
    done = tsemu.run([cat, "/proc/1/comm", "/proc/self/comm", f"/proc/{outsider}/comm"],
                     via="seccomp", capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == ["init", "cat"], done.stdout
    assert f"/proc/{outsider}/comm: No such file or directory" in done.stderr


@needs_supervisor
def test_a_non_root_user_is_supervised(short_tmp: Path, go_clients: dict[str, Path],
                                       static_clients: dict[str, Path]) -> None:
    """As uid 65534, against a server that counts every user as an administrator (as a kernel
    counts root): the filter needs no privilege, pidfd_getfd and process_vm_* work on one's
    own child, and the server hears the supervisor (which cannot claim the client's pid)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to become another user")
    short_tmp.chmod(0o755)
    tools = short_tmp / "bin"
    tools.mkdir(mode=0o755)
    for binary in (usable_supervisor(), go_clients["cgo0"], static_clients["getdelays"]):
        shutil.copy(binary, tools / binary.name)
    sock = short_tmp / "genl.sock"
    server = subprocess.Popen([sys.executable, "-m", "tsemu", "serve", "--socket", str(sock),
                               "--admin", "all"], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        assert "listening" in server.stderr.readline()
        nobody = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups",
                  str(tools / "tsemu-run"), "--socket", str(sock), "--"]
        families = subprocess.run([*nobody, str(tools / "gotaskstats-cgo0"), "families"],
                                  capture_output=True, text=True, timeout=30, check=False)
        assert families.stdout.splitlines() == ["family=nlctrl id=16",
                                                "family=TASKSTATS id=31"], families.stderr
        pid = subprocess.run([*nobody, str(tools / "gotaskstats-cgo0"), "pid", "1"],
                             capture_output=True, text=True, timeout=30, check=False)
        assert fields(pid.stdout)["pid"] == "1", pid.stdout
        static = subprocess.run([*nobody, str(tools / "getdelays"), "-p", "1"],
                                capture_output=True, text=True, timeout=30, check=False)
        assert "pid=1 " in static.stdout, static.stdout + static.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)


X32_PROBE = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    (void)argv;
    printf("minus1=%ld\n", syscall(-1));
    fflush(stdout);
    if (argc > 1)
        syscall(0x40000000 + SYS_getpid); /* the x32 ABI's getpid */
    return 0;
}
"""


@needs_supervisor
def test_other_abis_are_refused(tmp_path: Path) -> None:
    """A system call of the x32 (or i386) ABI would slip past the filter's rules: it kills the
    process (SIGSYS). syscall(-1) stays ENOSYS."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    (tmp_path / "x32.c").write_text(X32_PROBE)
    probe = tmp_path / "x32"
    subprocess.run([compiler, "-o", str(probe), str(tmp_path / "x32.c")], check=True)
    run = [str(usable_supervisor()), "--proc", "host", "--", str(probe)]
    fine = subprocess.run(run, capture_output=True, text=True, timeout=30, check=False)
    assert (fine.returncode, fine.stdout) == (0, "minus1=-1\n")
    killed = subprocess.run([*run, "x32"], capture_output=True, text=True, timeout=30,
                            check=False)
    assert killed.returncode == 128 + signal.SIGSYS
