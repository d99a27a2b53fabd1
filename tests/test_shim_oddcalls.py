"""Odd arguments to every socket call, through the shim: the kernel's answer, never a crash.

oddcalls (tests/clients/oddcalls.c) makes each call a program can make on a NETLINK_GENERIC
socket with odd arguments -- bad pointers (unmapped, in the kernel's half, cut short by an
unmapped page, read-only), NULL with and without lengths, negative and huge counts and lengths,
more pieces than UIO_MAXIOV, addresses too short, too long or of the wrong family, unknown and
refused flags, empty queues, short option lengths, vectors of messages with a bad entry -- one
case per line, each in a process of its own, with what it returned and what it left behind
(whether the queued answer was consumed, what was sent, errors left for the next receive).

Its output on a Linux 6.18 kernel is the reference (tests/clients/oddcalls.expected). Through the
shim every case must give the same line, also where seccomp refuses process_vm_readv and
process_vm_writev (tests/clients/novmcopy.c: the shim copies through a pipe then); the host
kernel, where there is one, must still agree with the reference. A case that cannot match
would be listed in CANNOT_MATCH with the reason; none is today.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .clients.harness import (
    CLIENTS,
    compile_client,
    host_env,
    lines,
    require_host_taskstats,
    run,
    shim_env,
)

REFERENCE = CLIENTS / "oddcalls.expected"

#: Cases whose answer depends on being root, which the reference is: claiming another
#: process's credentials needs CAP_SYS_ADMIN (ESRCH for a pid that does not exist as root,
#: EPERM for anyone else; the shim asks the kernel, so it answers as the kernel would).
ROOT_ONLY = {"sendmsg_cmsg_creds_no_such_pid"}

#: Cases the shim cannot answer as the kernel does, with why. (None: every case matches.)
CANNOT_MATCH: dict[str, str] = {}


def cases(output: list[str]) -> dict[str, str]:
    """`name: result...` lines by case name (comments and other lines left out)."""
    found = {}
    for line in output:
        if line.startswith("#") or ": " not in line:
            continue
        name, result = line.split(": ", 1)
        if os.geteuid() != 0 and name in ROOT_ONLY:
            continue
        found[name] = result
    return found


def differences(got: dict[str, str], want: dict[str, str]) -> list[str]:
    return [f"{name}: kernel says {want.get(name)!r}, got {got.get(name)!r}"
            for name in sorted(set(want) | set(got))
            if got.get(name) != want.get(name) and name not in CANNOT_MATCH]


@pytest.fixture(scope="module")
def oddcalls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_client(CLIENTS / "oddcalls.c", tmp_path_factory.mktemp("oddcalls"))


def test_the_reference_covers_every_case(oddcalls: Path) -> None:
    listed = subprocess.run([str(oddcalls), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    reference = [line.split(": ", 1)[0] for line in REFERENCE.read_text().splitlines()
                 if not line.startswith("#")]
    assert listed == reference
    assert len(listed) >= 200


async def test_every_odd_call_through_the_shim_answers_as_the_kernel(server: Any,
                                                                      oddcalls: Path) -> None:
    result = await run([str(oddcalls)], shim_env(server.socket_path), timeout=120)
    assert result.returncode == 0, result.stderr
    got = cases(lines(result.stdout))
    assert not [name for name, answer in got.items() if answer.startswith("killed by")], \
        [line for line in lines(result.stdout) if "killed by" in line]
    assert differences(got, cases(REFERENCE.read_text().splitlines())) == []


async def test_where_seccomp_refuses_process_vm_copies_the_answers_are_the_same(
        server: Any, oddcalls: Path, tmp_path: Path) -> None:
    # A container's seccomp profile may refuse process_vm_readv/writev (EPERM): the shim then
    # copies through a pipe, with the same answers.
    novmcopy = compile_client(CLIENTS / "novmcopy.c", tmp_path)
    probe = subprocess.run([str(novmcopy), "true"], capture_output=True, text=True, check=False)
    if probe.returncode:
        pytest.skip(f"cannot install a seccomp filter here: {probe.stderr.strip()}")
    result = await run([str(novmcopy), str(oddcalls)], shim_env(server.socket_path),
                       timeout=120)
    assert result.returncode == 0, result.stderr
    assert differences(cases(lines(result.stdout)),
                       cases(REFERENCE.read_text().splitlines())) == []


async def test_odd_calls_from_python_leave_the_socket_working(server: Any) -> None:
    # The same kind of calls from Python (whose socket module passes them on as they are):
    # each fails as on the kernel, and the socket still talks afterwards.
    code = """
import ctypes, errno, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
s.bind((0, 0))
fd = s.fileno()
def call(name, *args):
    ctypes.set_errno(0)
    rc = getattr(libc, name)(fd, *args)
    return errno.errorcode.get(ctypes.get_errno(), "ok") if rc < 0 else rc
print(call("send", ctypes.c_void_p(8), 100, 0), call("sendmsg", None, 0),
      call("recvmsg", None, 0), call("readv", None, -1), call("writev", None, -1),
      call("recvmmsg", None, 1, 0, None))
request = struct.pack("=IHHII", 36, 0x10, 1, 1, 0) + bytes([3, 1, 0, 0]) \\
    + struct.pack("=HH", 14, 2) + b"TASKSTATS\\0" + b"\\0\\0"
s.sendto(request, (0, 0))
print(len(s.recv(4096)))
"""
    result = await run([sys.executable, "-c", code], shim_env(server.socket_path))
    assert lines(result.stdout) == ["EFAULT EFAULT EFAULT EINVAL EINVAL EFAULT", "112"], \
        result.stderr


@pytest.mark.host
def test_the_reference_is_what_the_host_kernel_says(oddcalls: Path) -> None:
    require_host_taskstats()
    result = subprocess.run([str(oddcalls)], env=host_env(), capture_output=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert differences(cases(lines(result.stdout)),
                       cases(REFERENCE.read_text().splitlines())) == []
