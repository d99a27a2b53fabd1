"""Reference server for the GET benchmark: the least a trio server can do per request.

    python bench/echo_server.py SOCKET

Binds a Unix datagram socket at SOCKET (and creates SOCKET.ports/, where the shim binds its
clients, as `tsemu serve` does) and answers every datagram of 16 bytes or more with a 596-byte
datagram sent back to the sender's address: a prebuilt TASKSTATS GET reply whose nlmsg_seq
is the request's and whose AGGR_PID record names the pid the request asked for (the 4 bytes
at offset 24 of a GET by pid), so the benchmark's checking client accepts it. Datagrams
shorter than 16 bytes (the shim's control datagrams start with a zero length) get nothing.
Prints "ready" once bound; runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import trio

FAMILY = 0x1F
REPLY_SIZE = 596


def template() -> bytes:
    """A 596-byte TASKSTATS_CMD_NEW: nlmsghdr, genlmsghdr, AGGR_PID{PID, STATS(560)}."""
    stats = bytes(560)
    pid_attr = (8).to_bytes(2, "little") + (1).to_bytes(2, "little") + bytes(4)
    stats_attr = (564).to_bytes(2, "little") + (3).to_bytes(2, "little") + stats
    aggr = (4 + len(pid_attr) + len(stats_attr)).to_bytes(2, "little") + \
        (4).to_bytes(2, "little") + pid_attr + stats_attr
    body = bytes([2, 1, 0, 0]) + aggr
    head = (16 + len(body)).to_bytes(4, "little") + FAMILY.to_bytes(2, "little") + \
        bytes(2) + bytes(8)
    data = head + body
    assert len(data) == REPLY_SIZE
    return data


async def serve(path: Path) -> None:
    reply = template()
    head, middle, tail = reply[:8], reply[12:28], reply[32:]
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if path.exists():
        path.unlink()
    await sock.bind(str(path))
    os.chmod(path, 0o666)
    ports = path.with_name(path.name + ".ports")
    ports.mkdir(exist_ok=True)
    print("ready", flush=True)
    with sock:
        while True:
            data, address = await sock.recvfrom(65536)
            if len(data) < 16 or not address or data[:4] == b"\0\0\0\0":  # (tsemu control)
                continue
            # seq (request bytes 8..12) and the requested pid (request bytes 24..28)
            await sock.sendto(head + data[8:12] + middle + data[24:28] + tail, address)


def main() -> None:
    path = Path(sys.argv[1])

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, path)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(run)
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    main()
