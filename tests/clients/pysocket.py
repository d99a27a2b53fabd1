"""A taskstats client written with nothing but Python's own `socket` and `struct` modules.

It is what a small script talking to the kernel looks like, and it knows nothing of tsemu:
the tests run it against the host kernel and, under tsemu's LD_PRELOAD shim, against tsemu.

    python pysocket.py PID|self [PID|self ...]

For each id: one line `pid=... comm=... version=...` with the TASKSTATS_CMD_GET reply, or
`error=NAME` for an NLMSG_ERROR. It starts with a line describing the family lookup.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_ATTR_PID = 1
TASKSTATS_TYPE_PID = 1
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
NLMSG_ERROR = 2
NLM_F_REQUEST = 1


def attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def request(family: int, cmd: int, seq: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), family, NLM_F_REQUEST, seq, os.getpid()) + body


def attributes(data: bytes) -> dict[int, bytes]:
    found = {}
    while len(data) >= 4:
        length, kind = struct.unpack_from("=HH", data)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[4:length]
        data = data[(length + 3) & ~3:]
    return found


def transact(sock: socket.socket, message: bytes) -> tuple[int, bytes]:
    """Send one request, return (nlmsg_type, payload after the headers) of its answer."""
    sock.sendto(message, (0, 0))
    data, sender = sock.recvfrom(65536)
    assert sender == (0, 0), f"the answer came from {sender}, not the kernel"
    length, kind, _flags, _seq, pid = struct.unpack_from("=IHHII", data)
    assert pid == sock.getsockname()[0], "the answer is not addressed to this socket"
    return kind, data[16:length]


def error_name(payload: bytes) -> str:
    code = -struct.unpack_from("=i", payload)[0]
    return errno.errorcode.get(code, str(code))


def main(argv: list[str]) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    sock.bind((0, 0))
    port = sock.getsockname()[0]
    kind, payload = transact(sock, request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1,
                                           attr(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0")))
    if kind == NLMSG_ERROR:
        print(f"error={error_name(payload)}")
        return 1
    found = attributes(payload[4:])
    family = struct.unpack("=H", found[CTRL_ATTR_FAMILY_ID])[0]
    name = found[CTRL_ATTR_FAMILY_NAME].rstrip(b"\0").decode()
    print(f"family={name} id={family:#x} port={'tgid' if port == os.getpid() else port}")
    status = 0
    for seq, which in enumerate(argv, start=2):
        pid = os.getpid() if which == "self" else int(which)
        kind, payload = transact(sock, request(family, TASKSTATS_CMD_GET, seq,
                                               attr(TASKSTATS_CMD_ATTR_PID,
                                                    struct.pack("=I", pid))))
        if kind == NLMSG_ERROR:
            print(f"error={error_name(payload)}")
            status = 1
            continue
        aggr = attributes(attributes(payload[4:])[TASKSTATS_TYPE_AGGR_PID])
        stats = aggr[TASKSTATS_TYPE_STATS]
        version, exitcode, flag = struct.unpack_from("=HxxIB", stats)
        comm = stats[80:112].split(b"\0", 1)[0].decode(errors="replace") or "-"
        uid, gid, ac_pid, ppid = struct.unpack_from("=IIII", stats, 120)
        cpu_count, cpu_delay = struct.unpack_from("=QQ", stats, 16)
        utime, stime = struct.unpack_from("=QQ", stats, 152)
        print(f"pid={struct.unpack('=I', aggr[TASKSTATS_TYPE_PID])[0]} version={version} "
              f"size={len(stats)} comm={comm} ac_pid={ac_pid} ppid={ppid} uid={uid} gid={gid} "
              f"exitcode={exitcode} flag={flag:#x} cpu_count={cpu_count} "
              f"cpu_delay_total={cpu_delay} utime={utime} stime={stime}")
    sock.close()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
