"""Which calls the supervisor's filter leaves untrapped (supervisor/README.md, "Untrapped calls").

Under `tsemu run --via auto` a libc client has the shim and the seccomp filter both; the
shim's own sends and receives on its Unix sockets carry MSG_SYN (EMU_UNTRAPPED, shim/shim.h),
a flags bit a Unix datagram socket ignores, and the filter lets them through, so they cost no
round trip through `tsemu-run`. `tsemu-run --debug` (TSEMU_DEBUG=1) counts what it trapped:

- a dynamic C client under auto: none of its sends and receives is trapped, and it gets its
  answers;
- a static one (only the supervisor reaches it): they are trapped, and answered;
- a program that sets MSG_SYN itself on a supervised netlink socket talks to the Unix socket
  behind it (a netlink address is EINVAL there), never to the host kernel's netlink.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tsemu.pytest_plugin import TsemuHandle

from .test_supervisor import needs_supervisor

CLIENTS = Path(__file__).parent / "clients"
COUNTS = re.compile(r"tsemu-run: (\d+) calls trapped, (\d+) of them sends and receives")


pytestmark = needs_supervisor


def debug_env(base: dict[str, str]) -> dict[str, str]:
    return {**base, "TSEMU_DEBUG": "1"}


def counts(stderr: str) -> tuple[int, int]:
    found = COUNTS.findall(stderr)
    assert found, stderr
    calls, io = found[-1]
    return int(calls), int(io)


def test_the_shims_sends_and_receives_are_not_trapped_under_auto(tsemu: TsemuHandle,
                                                                  tmp_path: Path) -> None:
    from .clients.harness import compile_client

    getdelays = compile_client(CLIENTS / "getdelays.c", tmp_path)
    pid = tsemu.spawn(comm="untrapped")
    # `tsemu run --via auto` itself: the fixture's "auto" leaves a libc client to the shim.
    run = [sys.executable, "-m", "tsemu", "run", "--socket", str(tsemu.socket_path),
           "--via", "auto", "--"]
    done = subprocess.run([*run, str(getdelays), "-p", str(pid), "-t", str(pid)],
                          env=debug_env(dict(os.environ)), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pid={pid}" in done.stdout, done.stdout
    calls, io = counts(done.stderr)
    assert io == 0, done.stderr
    assert calls > 0  # the socket's setup (bind, setsockopt) is still trapped


def test_a_static_clients_sends_and_receives_are_trapped(
        tsemu: TsemuHandle, static_clients: dict[str, Path]) -> None:
    pid = tsemu.spawn(comm="trapped")
    done = tsemu.run([str(static_clients["getdelays"]), "-p", str(pid)], via="seccomp",
                     env=debug_env(tsemu.env), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pid={pid}" in done.stdout, done.stdout
    _, io = counts(done.stderr)
    assert io >= 2, done.stderr  # at least the family's and the GET's send and receive


MARKED_SEND = """
import errno, socket
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
s.bind((0, 0))
request = bytes(20)  # any datagram: what matters is who takes it
try:
    s.sendto(request, 0x400, (0, 0))  # MSG_SYN: untrapped, the Unix socket's own sendto
    print("marked: sent")
except OSError as exc:
    print("marked:", errno.errorcode[exc.errno])
print("plain:", s.sendto(request, 0, (0, 0)))  # trapped: the emulated netlink socket's
"""


def test_a_marked_send_on_a_supervised_socket_is_the_unix_sockets(tsemu: TsemuHandle) -> None:
    done = tsemu.run([sys.executable, "-c", MARKED_SEND], via="seccomp",
                     capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split("\n")[:2] == ["marked: EINVAL", "plain: 20"], done.stdout
