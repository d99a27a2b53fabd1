"""A client family's side of the machine: the processes a client starts belong to it.

`tsemu run` and the pytest fixture register their own process as a client root (the server
takes the pid from the datagram's credentials, never from its contents), so that the server
answers GETs about it and its descendants from the host, and they report the exits of the
children they reap, before reaping them, so that the server can read the zombie's /proc
entry and broadcast its records (see emulator/shell/clientprocs.py; shim/exits.c does the
same inside every shimmed process). TSEMU_ROOT in a child's environment tells the shim it
belongs to a family.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import time
from pathlib import Path

from tsemu.emulator.shell.addressing import (
    CREDENTIALS_SPACE,
    bind_port,
    port_path,
    sender_uid,
    server_owner,
)
from tsemu.wire.control import ControlOp, decode_control, encode_control, is_control

#: The environment variable that marks a family's processes (the root's pid).
ROOT_ENV = "TSEMU_ROOT"
#: How long a notice waits for the server's answer (seconds).
NOTICE_TIMEOUT = 2.0
#: prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented here, not to init.
_PR_SET_CHILD_SUBREAPER = 36


class FamilyChannel:
    """A socket in the server's ports directory for what this process says of its own."""

    def __init__(self, server: Path) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # Its name is in a directory everyone may write: an answer counts only when the
            # kernel's credentials say it is the server's user (tsemu.client's rule).
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            port = bind_port(self.sock, server, 0)
        except BaseException:
            self.sock.close()
            raise
        self.path = port_path(server, port - 2**32 if port >= 2**31 else port)

    @classmethod
    def open(cls, server: Path) -> FamilyChannel | None:
        """A channel to the server at `server`, or None when there is no server there (the
        family then simply goes unreported)."""
        try:
            return cls(server)
        except OSError:
            return None

    def tell(self, op: ControlOp, value: int, timeout: float = NOTICE_TIMEOUT) -> bool:
        """Send one notice and wait for the server's SEEN about `value`; whether it was
        taken (False also when no answer came in time)."""
        try:
            self.sock.sendto(encode_control(op, 0, value), str(self.server))
        except OSError:
            return False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                break
            data, ancillary, _, _ = self.sock.recvmsg(64, CREDENTIALS_SPACE)
            uid = sender_uid(ancillary)
            if uid is None or uid != server_owner(self.server):
                continue  # not the server's user: never an answer
            if is_control(data):
                answer = decode_control(data)
                if answer.op == ControlOp.SEEN and answer.value == value:
                    return answer.option == 0
        return False

    def register_root(self) -> bool:
        return self.tell(ControlOp.ROOT, os.getpid())

    def close(self) -> None:
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def become_subreaper() -> None:
    """Descendants orphaned by their parent's exit come to this process, which reports
    their exits too (best effort: not on every platform)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def reap_reporting(pid: int, channel: FamilyChannel | None) -> int:
    """Wait for child `pid` to end, reporting each child that exits meanwhile (orphans this
    subreaper inherited included) before reaping it; return `pid`'s wait status."""
    while True:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        if info is None:  # (only with WNOHANG)
            continue
        child = info.si_pid
        if channel is not None:
            channel.tell(ControlOp.EXITED, child)
        _, status = os.waitpid(child, 0)
        if child == pid:
            return status


def reap_child(pid: int, channel: FamilyChannel | None) -> int:
    """Wait for child `pid` alone, report its exit, reap it; its wait status. (For a process
    with other children of its own, such as a test process: `reap_reporting` would reap
    them too.)"""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    if channel is not None:
        channel.tell(ControlOp.EXITED, pid)
    return os.waitpid(pid, 0)[1]


def reap_orphans(channel: FamilyChannel | None) -> None:
    """Report and reap the children that have already exited, without waiting."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            return
        if info is None:
            return
        if channel is not None:
            channel.tell(ControlOp.EXITED, info.si_pid)
        os.waitpid(info.si_pid, 0)
