"""Access to the host kernel's TASKSTATS family, for differential tests.

`require_host_taskstats()` returns a `HostNetlink` or skips the calling test with the reason
(no AF_NETLINK, no TASKSTATS family, not root). pytest prints skip reasons with -ra, which the
project's pytest configuration sets, so a skip is never silent.
"""

from __future__ import annotations

import os
import select
import socket

import pytest

from tsemu.wire import Flag, decode_genl, decode_newfamily, encode_getfamily, split_datagram
from tsemu.wire.constants import SOL_NETLINK, SockOpt

NETLINK_GENERIC = 16


class HostNetlink:
    """A generic-netlink socket on the host kernel that returns every datagram a request brings."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        self.portid: int = self.sock.getsockname()[0]
        reply = self.ask(encode_getfamily(name="TASKSTATS", seq=1, flags=Flag.REQUEST))
        self.family = decode_newfamily(decode_genl(split_datagram(reply[0])[0])).id

    def options(self, cap_ack: bool = False, ext_ack: bool = False) -> None:
        self.sock.setsockopt(SOL_NETLINK, SockOpt.CAP_ACK, int(cap_ack))
        self.sock.setsockopt(SOL_NETLINK, SockOpt.EXT_ACK, int(ext_ack))

    def ask(self, request: bytes, quiet: float = 0.2) -> list[bytes]:
        while select.select([self.sock], [], [], 0)[0]:
            self.sock.recv(1 << 20)
        self.sock.send(request)
        out = []
        while select.select([self.sock], [], [], quiet)[0]:
            out.append(self.sock.recv(1 << 20))
        return out

    def answer(self, request: bytes, timeout: float = 2.0) -> bytes:
        """The NLMSG_ERROR (error or ACK) answering `request`, which must ask for an ACK.

        Exit events that arrive meanwhile (a registered socket gets them) are passed over."""
        seq = split_datagram(request)[0].header.seq
        self.sock.send(request)
        while select.select([self.sock], [], [], timeout)[0]:
            datagram = self.sock.recv(1 << 20)
            for msg in split_datagram(datagram):
                if msg.header.type == 2 and msg.header.seq == seq:
                    return msg.raw
        raise TimeoutError(f"the host kernel did not answer seq {seq}")

    def close(self) -> None:
        self.sock.close()


def host_cpu_counts() -> tuple[int, int]:
    """(nr_cpu_ids, NR_CPUS): the possible CPUs, which bound a cpulist, and the kernel's
    compile-time maximum, which bounds the cpumask string's length."""
    with open("/sys/devices/system/cpu/possible") as f:
        last = max(int(part.split("-")[-1]) for part in f.read().strip().split(","))
    with open("/sys/devices/system/cpu/kernel_max") as f:
        return last + 1, int(f.read()) + 1


def require_host_taskstats() -> HostNetlink:
    if not hasattr(socket, "AF_NETLINK"):
        pytest.skip("host comparison: this platform has no AF_NETLINK")
    if os.geteuid() != 0:
        pytest.skip("host comparison: needs root (TASKSTATS GET requires CAP_NET_ADMIN)")
    try:
        return HostNetlink()
    except (OSError, IndexError) as exc:
        pytest.skip(f"host comparison: the host kernel has no TASKSTATS family ({exc})")
