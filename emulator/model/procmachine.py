"""The machine-wide files of the emulated /proc, from the process table.

What lives here: what `/proc/{stat,uptime,loadavg,meminfo,vmstat}`, `/proc/pressure/*` and
`/proc/sys/kernel/{task_delayacct,pid_max}` say about the emulated machine, derived from its
tasks so that a tool that reads both sees one machine: the CPU lines of /proc/stat are the
tasks' utime and stime per CPU (the rest idle), `ctxt` their context switches, `pgpgin` and
`pgpgout` in /proc/vmstat their block I/O in KiB, the pressure totals their delay totals in
µs, procs_running / procs_blocked and the loadavg counts their states. What has exited still
counts in the cumulative figures (`Exited`, kept by the publisher).

What a scenario cannot derive from tasks, it gives in [machine]: `memory` (MemTotal) and `load`
(the three averages; by default the number of runnable and D-state tasks, as a machine in a
steady state would show). The printing is `procfs`'s.

What must not: files, I/O (`shell.procview` writes them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import procfs
from .tasks import TaskState

#: A delay total counts towards which /proc/pressure file ("some" line, µs).
PRESSURE_DELAYS = {
    "cpu": ("cpu_delay_total",),
    "io": ("blkio_delay_total",),
    "memory": ("swapin_delay_total", "freepages_delay_total", "thrashing_delay_total",
               "compact_delay_total", "wpcopy_delay_total"),
    "irq": ("irq_delay_total",),
}
#: Summed over tasks (live and exited) for the machine's cumulative counters.
SUMMED = ("utime_ns", "stime_ns", "nvcsw", "nivcsw", "read_bytes", "write_bytes",
          "ac_minflt", "ac_majflt", "swapin_count") + tuple(
    name for names in PRESSURE_DELAYS.values() for name in names)
_BLOCKED = (TaskState.UNINTERRUPTIBLE, TaskState.IO_WAIT)


@dataclass
class Exited:
    """What the tasks that left the table had counted, for the machine's running totals."""

    tasks: int = 0
    totals: dict[str, int] | None = None

    def add(self, counters: Any) -> None:
        totals = self.totals if self.totals is not None else dict.fromkeys(SUMMED, 0)
        self.totals = totals
        get = counters.get
        for name in SUMMED:
            totals[name] += get(name, 0)
        self.tasks += 1


@dataclass(frozen=True)
class MachineFacts:
    """What the scenario says of the machine itself."""

    nr_cpus: int
    memory_kib: int
    load: tuple[float, float, float] | None
    pid_max: int


def machine_files(tasks: Iterable[Any], facts: MachineFacts, *, now_ns: int,
                  boot_wall_seconds: int, exited: Exited, last_pid: int,
                  rates: Iterable[Any] = ()) -> dict[str, bytes]:
    """Every machine-wide file, by its path under /proc. `tasks`: the live tasks (their
    moving counters caught up); `rates`: the `rates` mappings of the moving ones, from which
    the pressure averages come (a delay growing by 0.3 s each second is 30% "some")."""
    nr_cpus = facts.nr_cpus
    per_cpu = [[0, 0, 0] for _ in range(nr_cpus)]  # user, nice, system (ns)
    totals = dict(exited.totals) if exited.totals else dict.fromkeys(SUMMED, 0)
    running = blocked = count = 0
    rss_kib = 0
    for task in tasks:
        count += 1
        get = task.counter_map.get
        for name in SUMMED:
            totals[name] += get(name, 0)
        row = per_cpu[task.cpu if task.cpu < nr_cpus else 0]
        row[1 if task.nice > 0 else 0] += get("utime_ns", 0)
        row[2] += get("stime_ns", 0)
        state = task.state
        if state is TaskState.RUNNING:
            running += 1
        elif state in _BLOCKED:
            blocked += 1
        if task.is_leader and not task.proc.kthread:
            rss_kib += get("rss", 0) or get("hiwater_rss", 0) or procfs.DEFAULT_RSS_KIB
    tick = procfs.NSEC_PER_TICK
    uptime_ticks = now_ns // tick
    cpu_rows = []
    for user, nice, system in per_cpu:
        busy = (user + nice + system) // tick
        cpu_rows.append((user // tick, nice // tick, system // tick,
                         max(0, uptime_ticks - busy), 0, 0, 0, 0, 0, 0))
    busy_ns = sum(sum(row) for row in per_cpu)
    idle_ns = max(0, now_ns * nr_cpus - busy_ns)
    load = facts.load if facts.load is not None else (float(running + blocked),) * 3
    switches = totals["nvcsw"] + totals["nivcsw"]
    files = {
        "uptime": procfs.uptime(now_ns, idle_ns),
        "loadavg": procfs.loadavg(load, running, count, last_pid),
        "stat": procfs.proc_stat(cpu_rows, boot_wall_seconds, exited.tasks + count,
                                 running, blocked, switches),
        "meminfo": procfs.meminfo(_meminfo(facts.memory_kib, rss_kib)),
        "vmstat": procfs.vmstat(_vmstat(facts.memory_kib, rss_kib, totals)),
        "sys/kernel/task_delayacct": "1\n",
        "sys/kernel/pid_max": f"{facts.pid_max}\n",
    }
    shares = _pressure_shares(rates, nr_cpus)
    for resource, names in PRESSURE_DELAYS.items():
        total_us = sum(totals[name] for name in names) // 1000
        share = round(shares.get(resource, 0.0), 2)
        some = (share, share, share, total_us)
        none = (0.0, 0.0, 0.0, 0)
        files[f"pressure/{resource}"] = procfs.pressure(
            None if resource == "irq" else some, some if resource == "irq" else none)
    return {path: text.encode() for path, text in files.items()}


def _pressure_shares(rates: Iterable[Any], nr_cpus: int) -> dict[str, float]:
    """The % of time some task stalled on each resource, from the delays' rates: delays that
    grow by `r` ns per second make r / 10**9 tasks stalled on average, which over the
    machine's CPUs is (capped at 100%) the "some" share, as PSI approximates it."""
    shares = {}
    for resource, names in PRESSURE_DELAYS.items():
        stalled = sum(r.get(name, 0) for r in rates for name in names) / 1e9
        shares[resource] = min(100.0, 100.0 * stalled / nr_cpus)
    return shares


def _meminfo(total: int, rss: int) -> list[tuple[str, int]]:
    """/proc/meminfo of a machine of `total` KiB whose processes hold `rss` KiB, a quarter of
    the rest cached (the lines of a 6.x kernel)."""
    used = min(total, rss + total // 50)  # + the kernel's own few percent
    cached = (total - used) // 4
    free = total - used - cached
    anon = min(rss, used)
    return [
        ("MemTotal", total), ("MemFree", free), ("MemAvailable", free + cached * 9 // 10),
        ("Buffers", total // 4096), ("Cached", cached), ("SwapCached", 0),
        ("Active", anon // 2 + cached // 2), ("Inactive", anon - anon // 2 + cached // 2),
        ("Active(anon)", anon // 2), ("Inactive(anon)", anon - anon // 2),
        ("Active(file)", cached // 2), ("Inactive(file)", cached - cached // 2),
        ("Unevictable", 0), ("Mlocked", 0), ("SwapTotal", 0), ("SwapFree", 0),
        ("Zswap", 0), ("Zswapped", 0), ("Dirty", 0), ("Writeback", 0), ("AnonPages", anon),
        ("Mapped", rss // 4), ("Shmem", 0), ("KReclaimable", total // 400),
        ("Slab", total // 200), ("SReclaimable", total // 400),
        ("SUnreclaim", total // 200 - total // 400), ("KernelStack", 1684),
        ("PageTables", rss // 100), ("SecPageTables", 0), ("NFS_Unstable", 0), ("Bounce", 0),
        ("WritebackTmp", 0), ("CommitLimit", total // 2), ("Committed_AS", rss * 2),
        ("VmallocTotal", 34359738367), ("VmallocUsed", 14444), ("VmallocChunk", 0),
        ("Percpu", 744), ("AnonHugePages", 0), ("ShmemHugePages", 0), ("ShmemPmdMapped", 0),
        ("FileHugePages", 0), ("FilePmdMapped", 0), ("HugePages_Total", 0),
        ("HugePages_Free", 0), ("HugePages_Rsvd", 0), ("HugePages_Surp", 0),
        ("Hugepagesize", 2048), ("Hugetlb", 0), ("DirectMap4k", 30720),
        ("DirectMap2M", total // 1024 * 1024 // 2), ("DirectMap1G", 0),
    ]


def _vmstat(total: int, rss: int, totals: dict[str, int]) -> list[tuple[str, int]]:
    """The /proc/vmstat counters tools read (pgpgin/pgpgout: KiB read from and written to
    block devices), in the kernel's order."""
    pages = total // procfs.PAGE_KIB
    used = min(pages, rss // procfs.PAGE_KIB)
    return [
        ("nr_free_pages", pages - used), ("nr_zone_inactive_anon", used // 2),
        ("nr_zone_active_anon", used - used // 2), ("nr_zone_inactive_file", 0),
        ("nr_zone_active_file", 0), ("nr_zone_unevictable", 0), ("nr_zone_write_pending", 0),
        ("nr_mlock", 0), ("nr_anon_pages", used), ("nr_mapped", used // 4),
        ("nr_file_pages", 0), ("nr_dirty", 0), ("nr_writeback", 0), ("nr_shmem", 0),
        ("pgpgin", totals["read_bytes"] // 1024), ("pgpgout", totals["write_bytes"] // 1024),
        ("pswpin", totals["swapin_count"]), ("pswpout", 0),
        ("pgfault", totals["ac_minflt"] + totals["ac_majflt"]),
        ("pgmajfault", totals["ac_majflt"]),
    ]
