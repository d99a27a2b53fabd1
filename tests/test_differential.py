"""Differential test: the same requests to the host kernel and to server, live.

For each request of the KERNEL-FACTS error table (and the successful ones beside them), the
host kernel's replies and tsemu's are compared by what a client can observe: message types,
flags, errno, and lengths. Requests that name a task name a live one on each side: the test
process itself on the host, a spawned task in tsemu. Skipped, with the reason printed, where
the host has no taskstats or the test does not run as root.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import trio

from tsemu.client import Client
from tsemu.emulator.shell.server import Server
from tsemu.wire import (
    Flag,
    SockOpt,
    encode_cgroupstats_get,
    encode_getfamily,
    encode_taskstats_get,
    split_datagram,
)
from tsemu.wire.attributes import encode_attr, encode_u32
from tsemu.wire.netlink import encode_genl

from .hostkernel import HostNetlink, host_cpu_counts, require_host_taskstats

ACK = Flag.REQUEST | Flag.ACK
Build = Callable[[int, int], bytes]  # (taskstats family id, a live pid) -> request


def _short_genl(fid: int, pid: int) -> bytes:
    raw = bytearray(encode_genl(fid, Flag.REQUEST, 9, 0, 1, 1, b""))
    raw[0:4] = (18).to_bytes(4, "little")
    return bytes(raw[:18])


def _reserved(fid: int, pid: int) -> bytes:
    raw = bytearray(encode_genl(fid, Flag.REQUEST, 7, 0, 99, 1, b""))
    raw[18:20] = (1).to_bytes(2, "little")
    return bytes(raw)


REQUESTS: dict[str, tuple[Build, bool, bool]] = {
    # name: (request builder, NETLINK_CAP_ACK, NETLINK_EXT_ACK)
    "getfamily TASKSTATS": (lambda f, p: encode_getfamily(name="TASKSTATS", seq=1), False, False),
    "getfamily nlctrl": (lambda f, p: encode_getfamily(name="nlctrl", seq=1), False, False),
    "getfamily by id": (lambda f, p: encode_getfamily(family_id=f, seq=1), False, False),
    "getfamily unknown": (lambda f, p: encode_getfamily(name="NOPE", seq=1), False, False),
    "getfamily no attr": (lambda f, p: encode_genl(0x10, Flag.REQUEST, 1, 0, 3, 1, b""),
                          False, False),
    "get pid": (lambda f, p: encode_taskstats_get(f, pid=p, seq=2), False, False),
    "get pid ack": (lambda f, p: encode_taskstats_get(f, pid=p, seq=2, flags=ACK), False, False),
    "get tgid": (lambda f, p: encode_taskstats_get(f, tgid=p, seq=2), False, False),
    "get pid and tgid": (lambda f, p: encode_taskstats_get(f, pid=p, tgid=p, seq=2),
                         False, False),
    "get pid u64": (lambda f, p: encode_genl(f, Flag.REQUEST, 2, 0, 1, 1,
                                             encode_attr(1, p.to_bytes(8, "little"))),
                    False, False),
    "get unknown pid": (lambda f, p: encode_taskstats_get(f, pid=0x3FFFFFF0, seq=3),
                        False, False),
    "get unknown tgid": (lambda f, p: encode_taskstats_get(f, tgid=0x3FFFFFF0, seq=3),
                         False, False),
    "get pid 0": (lambda f, p: encode_taskstats_get(f, pid=0, seq=3), False, False),
    "get no attr": (lambda f, p: encode_genl(f, Flag.REQUEST, 4, 0, 1, 1, b""), False, False),
    "get unknown attr": (lambda f, p: encode_genl(f, Flag.REQUEST, 4, 0, 1, 1,
                                                  encode_u32(9, 1)), False, False),
    "get pid 2 bytes": (lambda f, p: encode_genl(f, Flag.REQUEST, 5, 0, 1, 1,
                                                 encode_attr(1, b"\1\0")), False, False),
    "get pid 2 bytes ext": (lambda f, p: encode_genl(f, Flag.REQUEST, 5, 0, 1, 1,
                                                     encode_attr(1, b"\1\0")), False, True),
    "get pid 2 bytes cap": (lambda f, p: encode_genl(f, Flag.REQUEST, 5, 0, 1, 1,
                                                     encode_attr(1, b"\1\0")), True, False),
    "register zz": (lambda f, p: encode_taskstats_get(f, register=b"zz\0", seq=6, flags=ACK),
                    False, False),
    "register empty": (lambda f, p: encode_taskstats_get(f, register=b"", seq=6, flags=ACK),
                       False, False),
    "register huge": (lambda f, p: encode_taskstats_get(f, register=b"0-9999\0", seq=6,
                                                        flags=ACK), False, False),
    "register too long": (lambda f, p: encode_taskstats_get(f, register=b"0" * 5000, seq=6,
                                                            flags=ACK), False, False),
    "register ok": (lambda f, p: encode_taskstats_get(f, register=b"0\0", seq=6, flags=ACK),
                    False, False),
    "deregister ok": (lambda f, p: encode_taskstats_get(f, deregister=b"0-1\0", seq=6,
                                                        flags=ACK), False, False),
    "unknown cmd": (lambda f, p: encode_genl(f, Flag.REQUEST, 7, 0, 99, 1, b""), False, False),
    "unknown cmd, reserved set": (_reserved, False, True),
    "unknown cmd, MULTI flag": (lambda f, p: encode_genl(f, Flag.REQUEST | Flag.MULTI, 7, 0, 99,
                                                         1, b""), False, True),
    "register 0-1 without NUL": (lambda f, p: encode_taskstats_get(f, register=b"0-1", seq=6,
                                                                   flags=ACK), False, False),
    "register 0- without NUL": (lambda f, p: encode_taskstats_get(f, register=b"0-", seq=6,
                                                                  flags=ACK), False, False),
    "register 4294967295": (lambda f, p: encode_taskstats_get(f, register=b"4294967295\0",
                                                              seq=6, flags=ACK), False, False),
    "get unknown pid, leftover bytes": (lambda f, p: encode_genl(
        f, Flag.REQUEST | Flag.ACK, 3, 0, 1, 1, encode_u32(1, 0x3FFFFFF0) + b"\0\0\0\0"[:2]),
        False, True),
    "getfamily dump with an attribute": (lambda f, p: encode_genl(
        0x10, Flag.REQUEST | Flag.DUMP, 1, 0, 3, 1, encode_u32(5, 1)), False, True),
    "getfamily name with a NUL inside": (lambda f, p: encode_genl(
        0x10, Flag.REQUEST, 1, 0, 3, 1, encode_attr(2, b"TASKSTATS\0xxxxxxxxx\0")), False, True),
    "unknown family": (lambda f, p: encode_genl(0x7FF0, Flag.REQUEST, 7, 0, 1, 1, b""),
                       False, False),
    "genl header cut": (_short_genl, False, False),
    "no request flag, ack": (lambda f, p: encode_taskstats_get(f, pid=p, seq=8,
                                                               flags=Flag.ACK), False, False),
    "dump of get": (lambda f, p: encode_taskstats_get(f, pid=p, seq=8,
                                                      flags=Flag.REQUEST | Flag.DUMP),
                    False, False),
    "cgroupstats no fd": (lambda f, p: encode_cgroupstats_get(f, None, seq=9), False, False),
    "cgroupstats closed fd ack": (lambda f, p: encode_cgroupstats_get(f, 999, seq=9, flags=ACK),
                                  False, False),
}


def observable(datagrams: list[bytes]) -> list[tuple[int, int, int, int]]:
    """(type, flags, errno or 0, length) of every message of every datagram."""
    out = []
    for datagram in datagrams:
        for m in split_datagram(datagram):
            err = -int.from_bytes(m.raw[16:20], "little", signed=True) if m.header.type == 2 \
                else 0
            out.append((m.header.type, m.header.flags, err, m.header.length))
    return out


@pytest.fixture(scope="module")
def host() -> HostNetlink:
    return require_host_taskstats()


@pytest.mark.host
@pytest.mark.parametrize("name", list(REQUESTS))
async def test_same_answers_as_the_host_kernel(name: str, host: HostNetlink,
                                               server: Server) -> None:
    build, cap_ack, ext_ack = REQUESTS[name]
    nr_cpus, _ = host_cpu_counts()
    if nr_cpus != 2:
        pytest.skip(f"the emulator runs 2 CPUs here; the host has {nr_cpus} possible CPUs")
    host.options(cap_ack, ext_ack)
    kernel_said = await trio.to_thread.run_sync(host.ask, build(host.family, os.getpid()))
    host.ask(encode_taskstats_get(host.family, deregister=b"0-1\0", seq=99))
    task = server.tasks.spawn(comm="probe")
    async with await Client.connect(server.socket_path) as client:
        await client.set_option(SockOpt.CAP_ACK, int(cap_ack))
        await client.set_option(SockOpt.EXT_ACK, int(ext_ack))
        await client.send(build(await client.family_id(), task.tid))
        tsemu_said = []
        while True:
            with trio.move_on_after(0.1):
                tsemu_said.append(await client.recv())
                continue
            break
    # A host process exiting on CPU 0 between "register ok" and its deregistration sends an
    # exit event (port id 0, the family's type): the host's doing, not an answer.
    kernel_said = [d for d in kernel_said
                   if not all(m.header.pid == 0 and m.header.type == host.family
                              for m in split_datagram(d))]
    assert observable(tsemu_said) == observable(kernel_said)
