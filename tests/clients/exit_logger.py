"""A tiny exit logger, as a user's client under test might be: plain `socket` and `struct`,
no knowledge of tsemu. It registers for exits on CPUs 0-1 and prints one line per exited
task, then stops after COUNT events.

    python exit_logger.py COUNT
"""

from __future__ import annotations

import socket
import struct
import sys

NETLINK_GENERIC = 16


def attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def message(family: int, cmd: int, attrs: bytes, flags: int = 1) -> bytes:
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), family, flags, 1, 0) + body


def attrs_of(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[pos + 4 : pos + length]
        pos += (length + 3) & ~3
    return out


def main() -> None:
    count = int(sys.argv[1])
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    sock.bind((0, 0))
    sock.send(message(0x10, 3, attr(2, b"TASKSTATS\0")))
    reply = sock.recv(65536)
    family = struct.unpack("=H", attrs_of(reply[20:])[1][:2])[0]
    sock.send(message(family, 1, attr(3, b"0-1\0"), flags=5))
    sock.recv(65536)  # the ACK
    print("listening", flush=True)
    for _ in range(count):
        data = sock.recv(65536)
        aggr = attrs_of(data[20:])[4]  # TASKSTATS_TYPE_AGGR_PID
        inner = attrs_of(aggr)
        pid = struct.unpack("=I", inner[1][:4])[0]
        stats = inner[3]
        exitcode = struct.unpack_from("=I", stats, 4)[0]
        comm = stats[80:112].rstrip(b"\0").decode()
        print(f"exit pid={pid} comm={comm} status={exitcode:#x}", flush=True)


if __name__ == "__main__":
    main()
