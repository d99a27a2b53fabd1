"""Odd arguments to every socket call, through the shim: the kernel's answer, never a crash.

oddcalls (tests/clients/oddcalls.c) makes each call a program can make on a NETLINK_GENERIC
socket with odd arguments -- bad pointers (unmapped, in the kernel's half, cut short by an
unmapped page, read-only), NULL with and without lengths, negative and huge counts and lengths,
more pieces than UIO_MAXIOV, addresses too short, too long or of the wrong family, unknown and
refused flags, empty queues, short option lengths, vectors of messages with a bad entry -- one
case per line, each in a process of its own, with what it returned and what it left behind
(whether the queued answer was consumed, what was sent, errors left for the next receive).

Its output on a Linux 6.18 kernel is the reference (tests/clients/oddcalls.expected). Through the
shim every case must give the same line; the host kernel, where there is one, must still agree
with the reference. A case that cannot match would be listed in CANNOT_MATCH with the reason;
none is today.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .clients.harness import (
    CLIENTS,
    compile_client,
    host_env,
    lines,
    require_host_taskstats,
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


@pytest.mark.host
def test_the_reference_is_what_the_host_kernel_says(oddcalls: Path) -> None:
    require_host_taskstats()
    result = subprocess.run([str(oddcalls)], env=host_env(), capture_output=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert differences(cases(lines(result.stdout)),
                       cases(REFERENCE.read_text().splitlines())) == []
