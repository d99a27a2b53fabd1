"""Replay the golden capture's requests to tsemu: the replies must be the kernel's bytes.

Each request of tests/golden/kernel.json whose answer does not depend on the host's processes
is sent, byte for byte and with the same socket options, to a live tsemu over its socket. The
replies must equal the kernel's, byte for byte, once the one thing that legitimately differs
is set aside: the port id the kernel assigned to the capturing socket (nlmsg_pid of replies).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tsemu.client import Client
from tsemu.wire import SockOpt, split_datagram
from tsemu.wire.netlink import pack_header

from .conftest import GOLDEN

CASES = {c["name"]: c for c in json.loads(GOLDEN.read_text())["cases"]}

#: Requests whose answers are the same on any kernel of the profile, whatever runs on it.
REPLAYABLE = [
    "ctrl_get_taskstats", "ctrl_get_nlctrl", "ctrl_get_by_id", "ctrl_get_unknown_name",
    "ctrl_get_unknown_id", "ctrl_get_no_attr", "ctrl_get_long_name", "get_pid_unknown",
    "get_tgid_unknown", "get_pid_zero", "get_no_attr", "get_unknown_attr", "get_pid_short",
    "get_pid_short_ext", "get_pid_short_cap", "get_pid_short_cap_ext", "register_zz",
    "register_empty", "register_nul", "register_huge", "register_overflow", "register_spaces",
    "register_last", "register_group", "register_badgroup", "register_all", "register_toolong",
    "register_empty_ext", "deregister_ok", "deregister_ok_ext", "unknown_cmd",
    "unknown_cmd_ext", "unknown_family", "genl_short", "no_request_flag",
    "no_request_flag_ack", "len_beyond_datagram", "dump_taskstats_get", "cgroupstats_no_fd",
    "cgroupstats_closed_fd", "cgroupstats_closed_fd_ack",
]


def with_port(datagram: bytes, port: int) -> bytes:
    """`datagram` with every message's nlmsg_pid set to `port`."""
    out = b""
    for message in split_datagram(datagram):
        h = message.header
        raw = pack_header(h.length, h.type, h.flags, h.seq, port) + message.raw[16:]
        out += raw + b"\0" * (-len(raw) % 4)
    return out


async def collect(client: Client, quiet: float = 0.05) -> list[bytes]:
    got = []
    while True:
        with trio.move_on_after(quiet):
            got.append(await client.recv())
            continue
        return got


@pytest.mark.parametrize("name", REPLAYABLE)
async def test_replayed_request_gets_the_kernels_bytes(name: str, server: Any) -> None:
    case: dict[str, Any] = CASES[name]
    async with await Client.connect(server.socket_path) as client:
        await client.set_option(SockOpt.CAP_ACK, int(case["cap_ack"]))
        await client.set_option(SockOpt.EXT_ACK, int(case["ext_ack"]))
        await client.send(bytes.fromhex(case["request"]))
        replies = await collect(client)
        expected = [with_port(bytes.fromhex(r), client.port) for r in case["replies"]]
        assert replies == expected
