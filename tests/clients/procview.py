"""A tsemu /proc view made by hand, as the server publishes one (the layout is the contract
between the server and the shim; see shim/README.md), for testing the shim without a server.

Task files are printed in the kernel's formats: each one is this host's own file of the same
name (read once from /proc/self) with the task's numbers put in, so that procps and other
parsers read them as they read the host's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

MARKER = ".tsemu-view"
MAGIC = "tsemu proc view 1\n"


@dataclass
class Task:
    """An emulated process (its thread-group leader) and its other threads."""

    pid: int
    comm: str
    ppid: int = 1
    threads: Sequence[int] = ()  # tids of the threads that are not the leader
    state: str = "S"
    nice: int = 0
    policy: int = 0
    rt_priority: int = 0
    ioprio: int = 0
    utime: int = 0  # clock ticks
    stime: int = 0
    rss_pages: int = 200
    cmdline: Sequence[str] = field(default_factory=list)
    uid: int = 0

    @property
    def tids(self) -> list[int]:
        return [self.pid, *self.threads]


@cache
def _host(name: str) -> str:
    return Path("/proc/self", name).read_text()


STATE_TEXT = {"R": "R (running)", "S": "S (sleeping)", "D": "D (disk sleep)",
              "T": "T (stopped)", "Z": "Z (zombie)", "I": "I (idle)"}


def stat_text(task: Task, tid: int) -> str:
    """/proc/<pid>/stat: the host's own, fields replaced (proc(5) numbering, from 1)."""
    host = _host("stat")
    rest = host[host.rindex(")") + 2:].split()  # fields 3..52
    values = {3: task.state, 4: task.ppid, 5: task.pid, 6: task.pid, 7: 0, 8: -1,
              14: task.utime, 15: task.stime, 18: 20 + task.nice if task.policy == 0
              else -1 - task.rt_priority, 19: task.nice, 20: len(task.tids),
              24: task.rss_pages, 40: task.rt_priority, 41: task.policy}
    for number, value in values.items():
        rest[number - 3] = str(value)
    return f"{tid} ({task.comm}) {' '.join(rest)}\n"


def status_text(task: Task, tid: int) -> str:
    """/proc/<pid>/status: the host's own, the identifying lines replaced."""
    lines = {"Name": task.comm, "State": STATE_TEXT[task.state], "Tgid": task.pid,
             "Pid": tid, "PPid": task.ppid, "Threads": len(task.tids), "NStgid": task.pid,
             "NSpid": tid, "Uid": "\t".join([str(task.uid)] * 4),
             "Gid": "\t".join([str(task.uid)] * 4), "VmRSS": f"{task.rss_pages * 4:8d} kB"}
    out = []
    for line in _host("status").splitlines():
        key = line.split(":", 1)[0]
        out.append(f"{key}:\t{lines[key]}" if key in lines else line)
    return "\n".join(out) + "\n"


def task_files(task: Task, tid: int) -> dict[str, str | bytes]:
    return {
        "stat": stat_text(task, tid),
        "status": status_text(task, tid),
        "statm": f"{task.rss_pages * 4} {task.rss_pages} 100 5 0 123 0\n",
        "comm": f"{task.comm}\n",
        "cmdline": "".join(f"{arg}\0" for arg in task.cmdline).encode(),
        "io": "rchar: 6976\nwchar: 0\nsyscr: 10\nsyscw: 0\nread_bytes: 4096\n"
              "write_bytes: 0\ncancelled_write_bytes: 0\n",
        "schedstat": f"{(task.utime + task.stime) * 10_000_000} 2636195 {tid % 7 + 1}\n",
        ".tsemu": f"nice={task.nice}\npolicy={task.policy}\nrt_priority={task.rt_priority}\n"
                  f"ioprio={task.ioprio}\n",
    }


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)


LOADAVG = "0.42 0.17 0.05 2/{nr} {last}\n"
PRESSURE = ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def machine_files(tasks: Sequence[Task]) -> dict[str, str]:
    nr = sum(len(t.tids) for t in tasks)
    last = max((tid for t in tasks for tid in t.tids), default=1)
    host_stat = Path("/proc/stat").read_text()
    stat = re.sub(r"^processes \d+$", f"processes {last}", host_stat, flags=re.M)
    stat = re.sub(r"^procs_running \d+$", "procs_running 2", stat, flags=re.M)
    return {
        "stat": stat,
        "uptime": "4242.42 8000.00\n",
        "loadavg": LOADAVG.format(nr=nr, last=last),
        "meminfo": Path("/proc/meminfo").read_text(),
        "vmstat": Path("/proc/vmstat").read_text(),
        "pressure/cpu": PRESSURE,
        "pressure/io": PRESSURE,
        "pressure/memory": PRESSURE,
        "pressure/irq": "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        "sys/kernel/task_delayacct": "1\n",
        "sys/kernel/pid_max": "4194304\n",
    }


def build_view(root: Path, tasks: Iterable[Task], *, marker: str | None = MAGIC) -> Path:
    """Write the view of `tasks` in `root` (made if missing); `marker=None` leaves out
    the marker file, another string writes that instead. Returns `root`."""
    tasks = list(tasks)
    root.mkdir(parents=True, exist_ok=True)
    for name, content in machine_files(tasks).items():
        _write(root / name, content)
    (root / ".tid").mkdir(exist_ok=True)
    for task in tasks:
        add_task(root, task)
    if marker is not None:
        _write(root / MARKER, marker)
    return root


def add_task(root: Path, task: Task) -> None:
    """A process appears in the view: its directory, its threads and their .tid links."""
    for name, content in task_files(task, task.pid).items():
        _write(root / str(task.pid) / name, content)
    for tid in task.tids:
        for name, content in task_files(task, tid).items():
            _write(root / str(task.pid) / "task" / str(tid) / name, content)
        if tid != task.pid:
            link = root / ".tid" / str(tid)
            if not link.is_symlink():
                os.symlink(f"../{task.pid}/task/{tid}", link)


def fleet(count: int, first: int = 100_000, threads_every: int = 0) -> list[Task]:
    """`count` plain processes from pid `first` (every `threads_every`-th with 2 threads)."""
    tasks = []
    pid = first
    for i in range(count):
        extra = [pid + 1, pid + 2] if threads_every and i % threads_every == 0 else []
        tasks.append(Task(pid=pid, comm=f"job{i}", ppid=first, threads=extra,
                          cmdline=[f"/usr/bin/job{i}", "--serve"], utime=i % 50, stime=i % 7))
        pid += 1 + len(extra)
    return tasks
