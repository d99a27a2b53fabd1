"""pyroute2's TaskStats, used as its documentation shows: nothing here knows about tsemu.

    python pyroute2_taskstats.py stat PID|self
    python pyroute2_taskstats.py listen CPUMASK SYNC_PID COUNT

`stat` prints one line for TASKSTATS_CMD_GET. `listen` registers for exits on CPUMASK, makes
one GET round trip for SYNC_PID (so the registration has certainly been handled), prints
`registered`, then one line per exit record until COUNT messages have arrived.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from pyroute2 import TaskStats

FIELDS = ("version", "ac_exitcode", "ac_flag", "ac_uid", "ac_pid", "ac_ppid", "cpu_count",
          "cpu_delay_total", "ac_utime", "ac_stime", "read_bytes", "write_bytes", "nvcsw")


def describe(kind: str, record: Any) -> str:
    stats = record.get_attr("TASKSTATS_TYPE_STATS")
    ident = record.get_attr("TASKSTATS_TYPE_PID" if kind == "pid" else "TASKSTATS_TYPE_TGID")
    comm = stats["ac_comm"]
    if isinstance(comm, bytes):
        comm = comm.split(b"\0", 1)[0].decode(errors="replace")
    values = " ".join(f"{name}={stats[name]}" for name in FIELDS)
    return f"{kind}={ident} comm={comm or '-'} {values}"


def records(message: Any) -> list[str]:
    lines = []
    for name, kind in (("TASKSTATS_TYPE_AGGR_PID", "pid"), ("TASKSTATS_TYPE_AGGR_TGID", "tgid")):
        record = message.get_attr(name)
        if record is not None:
            lines.append(describe(kind, record))
    return lines


def pid_arg(text: str) -> int:
    return os.getpid() if text == "self" else int(text)


def main(argv: list[str]) -> int:
    ts = TaskStats()
    ts.bind()
    try:
        if argv[0] == "stat":
            for message in ts.get_pid_stat(pid_arg(argv[1])):
                print("\n".join(records(message)), flush=True)
            return 0
        mask, sync, count = argv[1], pid_arg(argv[2]), int(argv[3])
        ts.register_mask(mask)
        ts.get_pid_stat(sync)
        print("registered", flush=True)
        seen = 0
        while seen < count:
            for message in ts.get():
                if message["header"]["pid"] != 0:
                    continue  # not an exit event
                seen += 1
                print("\n".join(f"exit {line}" for line in records(message)), flush=True)
        ts.deregister_mask(mask)
        return 0
    finally:
        ts.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
