"""/proc as the emulated kernel prints it: the files of each task, and the machine's.

What lives here: how the kernel of a profile prints `/proc/<pid>/{stat,status,statm,io,
schedstat,comm,cmdline}` (fs/proc/array.c, base.c) and the machine-wide files tools read
(`/proc/{stat,uptime,loadavg,meminfo,vmstat}`, `/proc/pressure/*`,
`/proc/sys/kernel/{task_delayacct,pid_max}`), from fields given by name (`TaskView`, one dict
per task). `task_view` makes those fields from the process table, consistent with what
taskstats answers for the same task at the same instant: utime and stime are the same
nanoseconds in clock ticks (USER_HZ 100), the start time the same `start_ns`, VmHWM the same
hiwater_rss, the context switches nvcsw and nivcsw, `io` the same counters, unrounded (only
taskstats rounds them to 1024), `schedstat` cpu_run_virtual_total (both are the scheduler's
sum_exec_runtime), cpu_delay_total and cpu_count. A
mirror of the host's own tasks (`shell.hostmirror`) gives fields read from the host's files
instead, and the same printing reproduces them.

What must not: where the files go and when (the shell's publisher, `shell.procview`), I/O.

Which lines a kernel prints is a table (`STATUS_LINES`), each line with the version that
brought it; lines that only a task with memory prints (VmPeak..., CoreDumping...) are marked so:
a kernel thread has none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .profiles import KernelProfile, release_numbers
from .tasks import TaskState

#: Clock ticks per second as /proc counts them (USER_HZ), and the page size.
USER_HZ = 100
PAGE_KIB = 4
NSEC_PER_TICK = 1_000_000_000 // USER_HZ

#: A task's /proc fields by name (see `STAT_FIELDS` and `STATUS_LINES` for the names).
TaskView = dict[str, Any]

#: /proc/<pid>/stat, field by field (proc(5) names; 52 of them on 6.x).
STAT_FIELDS = (
    "pid", "comm", "state", "ppid", "pgrp", "session", "tty_nr", "tpgid", "flags", "minflt",
    "cminflt", "majflt", "cmajflt", "utime", "stime", "cutime", "cstime", "priority", "nice",
    "num_threads", "itrealvalue", "starttime", "vsize", "rss", "rsslim", "startcode",
    "endcode", "startstack", "kstkesp", "kstkeip", "signal", "blocked", "sigignore",
    "sigcatch", "wchan", "nswap", "cnswap", "exit_signal", "processor", "rt_priority",
    "policy", "delayacct_blkio_ticks", "guest_time", "cguest_time", "start_data", "end_data",
    "start_brk", "arg_start", "arg_end", "env_start", "env_end", "exit_code",
)

#: /proc/<pid>/status: (label, field, the kernel version that brought it, mm only). A field
#: of None is printed by a function of its own (below).
STATUS_LINES: tuple[tuple[str, str, tuple[int, int], bool], ...] = (
    ("Name", "name", (2, 6), False),
    ("Umask", "umask", (4, 7), False),
    ("State", "state_text", (2, 6), False),
    ("Tgid", "tgid", (2, 6), False),
    ("Ngid", "ngid", (3, 13), False),
    ("Pid", "pid", (2, 6), False),
    ("PPid", "ppid", (2, 6), False),
    ("TracerPid", "tracer_pid", (2, 6), False),
    ("Uid", "uids", (2, 6), False),
    ("Gid", "gids", (2, 6), False),
    ("FDSize", "fdsize", (2, 6), False),
    ("Groups", "groups", (2, 6), False),
    ("NStgid", "nstgid", (4, 1), False),
    ("NSpid", "nspid", (4, 1), False),
    ("NSpgid", "nspgid", (4, 1), False),
    ("NSsid", "nssid", (4, 1), False),
    ("Kthread", "kthread", (6, 4), False),
    ("VmPeak", "vm_peak", (2, 6), True),
    ("VmSize", "vm_size", (2, 6), True),
    ("VmLck", "vm_lck", (2, 6), True),
    ("VmPin", "vm_pin", (3, 2), True),
    ("VmHWM", "vm_hwm", (2, 6), True),
    ("VmRSS", "vm_rss", (2, 6), True),
    ("RssAnon", "rss_anon", (4, 5), True),
    ("RssFile", "rss_file", (4, 5), True),
    ("RssShmem", "rss_shmem", (4, 5), True),
    ("VmData", "vm_data", (2, 6), True),
    ("VmStk", "vm_stk", (2, 6), True),
    ("VmExe", "vm_exe", (2, 6), True),
    ("VmLib", "vm_lib", (2, 6), True),
    ("VmPTE", "vm_pte", (2, 6), True),
    ("VmSwap", "vm_swap", (2, 6), True),
    ("HugetlbPages", "hugetlb_pages", (4, 4), True),
    ("CoreDumping", "core_dumping", (4, 15), True),
    ("THP_enabled", "thp_enabled", (5, 0), True),
    ("untag_mask", "untag_mask", (6, 4), True),
    ("Threads", "threads", (2, 6), False),
    ("SigQ", "sigq", (2, 6), False),
    ("SigPnd", "sig_pnd", (2, 6), False),
    ("ShdPnd", "shd_pnd", (2, 6), False),
    ("SigBlk", "sig_blk", (2, 6), False),
    ("SigIgn", "sig_ign", (2, 6), False),
    ("SigCgt", "sig_cgt", (2, 6), False),
    ("CapInh", "cap_inh", (2, 6), False),
    ("CapPrm", "cap_prm", (2, 6), False),
    ("CapEff", "cap_eff", (2, 6), False),
    ("CapBnd", "cap_bnd", (2, 6), False),
    ("CapAmb", "cap_amb", (4, 3), False),
    ("NoNewPrivs", "no_new_privs", (4, 10), False),
    ("Seccomp", "seccomp", (3, 8), False),
    ("Seccomp_filters", "seccomp_filters", (5, 9), False),
    ("Speculation_Store_Bypass", "spec_store_bypass", (4, 17), False),
    ("SpeculationIndirectBranch", "spec_indirect_branch", (5, 13), False),
    ("Cpus_allowed", "cpus_allowed", (2, 6), False),
    ("Cpus_allowed_list", "cpus_allowed_list", (2, 6), False),
    ("Mems_allowed", "mems_allowed", (2, 6), False),
    ("Mems_allowed_list", "mems_allowed_list", (2, 6), False),
    ("voluntary_ctxt_switches", "voluntary_ctxt_switches", (2, 6), False),
    ("nonvoluntary_ctxt_switches", "nonvoluntary_ctxt_switches", (2, 6), False),
)
#: Lines whose value is a size in kB, right-aligned in 8 columns.
_KB_LINES = frozenset(label for label, _, _, mm in STATUS_LINES if mm and label.startswith(
    ("Vm", "Rss", "Hugetlb")))

#: /proc/<pid>/io, line by line: (label, taskstats counter).
IO_LINES = (("rchar", "read_char"), ("wchar", "write_char"), ("syscr", "read_syscalls"),
            ("syscw", "write_syscalls"), ("read_bytes", "read_bytes"),
            ("write_bytes", "write_bytes"), ("cancelled_write_bytes", "cancelled_write_bytes"))

#: The task states as /proc prints them (State: line; stat's field 3 is the first letter).
STATE_TEXT: Mapping[str, str] = {
    "running": "R (running)", "sleeping": "S (sleeping)", "uninterruptible": "D (disk sleep)",
    "io_wait": "D (disk sleep)", "stopped": "T (stopped)", "traced": "t (tracing stop)",
    "zombie": "Z (zombie)", "idle": "I (idle)",
}


def _version(profile: KernelProfile) -> tuple[int, int]:
    """The kernel version a profile's /proc prints as (the status lines' table is by version:
    /proc is not among the profile table's columns)."""
    major, minor = release_numbers(profile.release)[:2]
    return major, minor


# --- printing a task's files -----------------------------------------------------------------


def stat(view: TaskView) -> str:
    """/proc/<pid>/stat (and task/<tid>/stat): one line of 52 fields."""
    rest = " ".join(str(view[name]) for name in STAT_FIELDS[3:])
    return f"{view['pid']} ({view['comm']}) {view['state']} {rest}\n"


def status(view: TaskView, profile: KernelProfile) -> str:
    """/proc/<pid>/status, the lines `profile`'s kernel prints (`STATUS_LINES`)."""
    version = _version(profile)
    has_mm = view["has_mm"]
    lines = []
    for label, name, since, mm_only in STATUS_LINES:
        if since > version or (mm_only and not has_mm):
            continue
        if name == "untag_mask" and not view.get("untag_mask"):
            continue  # (x86 with LAM support only)
        if name == "umask" and view.get("umask") is None:
            continue  # (a task without its fs_struct: a zombie)
        value = view[name]
        if label in _KB_LINES:
            lines.append(f"{label}:\t{value:8d} kB")
        else:
            lines.append(f"{label}:\t{value}")
    return "\n".join(lines) + "\n"


def statm(view: TaskView) -> str:
    """/proc/<pid>/statm: size resident shared text lib(0) data dt(0), in pages."""
    return (f"{view['statm_size']} {view['statm_resident']} {view['statm_shared']} "
            f"{view['statm_text']} 0 {view['statm_data']} 0\n")


def io(view: TaskView) -> str:
    """/proc/<pid>/io: the task's I/O counters, exact (taskstats rounds them, /proc does not)."""
    return "".join(f"{label}: {view[name]}\n" for label, name in IO_LINES)


def schedstat(view: TaskView) -> str:
    """/proc/<pid>/schedstat: time on the CPU (ns), time waiting for it (ns), timeslices."""
    return f"{view['sum_exec_runtime']} {view['run_delay']} {view['pcount']}\n"


def comm(view: TaskView) -> str:
    return f"{view['comm']}\n"


def cmdline(view: TaskView) -> bytes:
    """/proc/<pid>/cmdline: the arguments, each ended by a NUL (nothing for a kernel thread)."""
    return b"".join(arg + b"\0" for arg in view["cmdline"])


#: Each file of a task directory, and how it is printed (text, or bytes for cmdline).
TASK_FILES: Mapping[str, Callable[[TaskView, KernelProfile], str | bytes]] = {
    "stat": lambda v, p: stat(v), "status": status, "statm": lambda v, p: statm(v),
    "io": lambda v, p: io(v), "schedstat": lambda v, p: schedstat(v),
    "comm": lambda v, p: comm(v), "cmdline": lambda v, p: cmdline(v),
}


def escape_name(name: bytes) -> str:
    """A comm as status's Name: line prints it: backslash and newline escaped."""
    text = name.decode("utf-8", "replace")
    return text.replace("\\", "\\\\").replace("\n", "\\n")


# --- printing the machine's ------------------------------------------------------------------


def uptime(seconds_ns: int, idle_ns: int) -> str:
    return f"{seconds_ns // 10**9}.{seconds_ns // 10**7 % 100:02d} " \
           f"{idle_ns // 10**9}.{idle_ns // 10**7 % 100:02d}\n"


def loadavg(load: Iterable[float], running: int, total: int, last_pid: int) -> str:
    one, five, fifteen = (f"{x:.2f}" for x in load)
    return f"{one} {five} {fifteen} {running}/{total} {last_pid}\n"


def meminfo(lines: Iterable[tuple[str, int]]) -> str:
    """/proc/meminfo: "Name:" padded to 16 columns, the kB value in 8."""
    return "".join(f"{name + ':':<16}{value:8d} kB\n" if not name.startswith("HugePages_")
                   else f"{name + ':':<16}{value:8d}\n" for name, value in lines)


def vmstat(lines: Iterable[tuple[str, int]]) -> str:
    return "".join(f"{name} {value}\n" for name, value in lines)


def pressure(some: tuple[float, float, float, int] | None,
             full: tuple[float, float, float, int]) -> str:
    """A /proc/pressure file: `some` and `full` lines of (avg10, avg60, avg300, total µs)."""
    def line(kind: str, values: tuple[float, float, float, int]) -> str:
        a10, a60, a300, total = values
        return f"{kind} avg10={a10:.2f} avg60={a60:.2f} avg300={a300:.2f} total={total}\n"
    return (line("some", some) if some is not None else "") + line("full", full)


def proc_stat(cpus: Sequence[tuple[int, ...]], boot_seconds: int, processes: int,
              running: int, blocked: int, context_switches: int) -> str:
    """/proc/stat: the cpu lines (user nice system idle iowait irq softirq steal guest
    guest_nice, in ticks), then intr, ctxt, btime, processes, procs_running, procs_blocked,
    softirq."""
    total = tuple(sum(column) for column in zip(*cpus, strict=True))
    lines = ["cpu  " + " ".join(map(str, total))]
    lines += [f"cpu{i} " + " ".join(map(str, row)) for i, row in enumerate(cpus)]
    lines += ["intr 0", f"ctxt {context_switches}", f"btime {boot_seconds}",
              f"processes {processes}", f"procs_running {running}",
              f"procs_blocked {blocked}", "softirq 0 0 0 0 0 0 0 0 0 0 0"]
    return "\n".join(lines) + "\n"


# --- a task's fields, from the process table ---------------------------------------------------

#: task->flags as /proc shows them: PF_RANDOMIZE for a user task, PF_KTHREAD | PF_NOFREEZE |
#: PF_FORKNOEXEC for a kernel thread; PF_FORKNOEXEC and PF_SUPERPRIV as the task says.
_PF_RANDOMIZE, _PF_KTHREAD_FLAGS = 0x00400000, 0x00208040
_PF_FORKNOEXEC, _PF_SUPERPRIV = 0x40, 0x100
#: What do_exit leaves in a zombie's flags: PF_EXITING, PF_POSTCOREDUMP and PF_NOFREEZE (6.18
#: measured: a process's zombie and a leader's that called pthread_exit both have them).
_PF_EXITED = 0x4 | 0x8 | 0x8000
#: Where a user task's segments are, as a plausible x86_64 address space (only ever read by
#: tools that print them).
_SEGMENTS = {"startcode": 94607591677952, "endcode": 94607591697833,
             "startstack": 140720323350368, "start_data": 94607591713840,
             "end_data": 94607591715456, "start_brk": 94608147034112,
             "arg_start": 140720323357410, "arg_end": 140720323357430,
             "env_start": 140720323357430, "env_end": 140720323358699}
_NO_SEGMENTS = dict.fromkeys(_SEGMENTS, 0)
_SIGSET_NONE, _SIGSET_ALL = "0" * 16, "f" * 16
_MEMS_ALLOWED = ",".join(["00000000"] * 31 + ["00000001"])
#: A user task's memory when the scenario says nothing: VmSize and VmRSS (KiB).
DEFAULT_VM_KIB, DEFAULT_RSS_KIB = 8192, 1024


def _capabilities(profile: KernelProfile) -> str:
    """Every capability the kernel knows, as status prints a full set."""
    version = _version(profile)
    last = 40 if version >= (5, 9) else 39 if version >= (5, 8) else 37 if version >= (4, 3) \
        else 36
    return f"{(1 << (last + 1)) - 1:016x}"


def _cpulist(nr_cpus: int) -> str:
    return "0" if nr_cpus == 1 else f"0-{nr_cpus - 1}"


def _cpumask(nr_cpus: int) -> str:
    """A cpumask as status prints it: hex, in comma-separated 32-bit words."""
    text = f"{(1 << nr_cpus) - 1:x}"
    words = [text[max(0, i - 8):i] for i in range(len(text), 0, -8)]
    return ",".join(reversed([w.rjust(8, "0") if n else w for n, w in enumerate(words)])) \
        if len(words) > 1 else text


def task_view(task: Any, *, threads: int, whole: Iterable[Any] | None, nr_cpus: int,
              profile: KernelProfile) -> TaskView:
    """The /proc fields of `task` (a `tasks.Task`, its moving counters caught up) in a process
    of `threads` threads; `whole`: for the process's own directory, its live threads, whose
    faults and CPU times /proc/<pid>/stat sums (task/<tid>/stat is the thread's own)."""
    counters = task.counter_map
    get = counters.get
    proc = task.proc
    kthread = proc.kthread
    utime, stime = get("utime_ns", 0), get("stime_ns", 0)
    minflt, majflt = get("ac_minflt", 0), get("ac_majflt", 0)
    if whole is not None:
        utime = stime = minflt = majflt = 0
        for thread in whole:
            got = thread.counter_map.get
            utime += got("utime_ns", 0)
            stime += got("stime_ns", 0)
            minflt += got("ac_minflt", 0)
            majflt += got("ac_majflt", 0)
    # A zombie (a leader that exited while its threads live on) has let go of its memory,
    # files and fs_struct: no mm lines, no Umask, FDSize 0, an empty cmdline and statm, as a
    # kernel thread has no memory either.
    zombie = task.state is TaskState.ZOMBIE
    has_mm = not (kthread or zombie)
    vm = 0 if not has_mm else (get("vm", 0) or get("hiwater_vm", 0) or DEFAULT_VM_KIB)
    rss = 0 if not has_mm else (get("rss", 0) or get("hiwater_rss", 0) or DEFAULT_RSS_KIB)
    rss_file = rss // 2
    rt = task.policy in (1, 2)
    flags = _PF_KTHREAD_FLAGS if kthread else _PF_RANDOMIZE
    if task.forked_no_exec:
        flags |= _PF_FORKNOEXEC
    if task.superuser:
        flags |= _PF_SUPERPRIV
    if zombie:
        flags |= _PF_EXITED
    state_text = STATE_TEXT[task.state.value]
    comm_text = task.comm.decode("utf-8", "replace")
    pgrp = 0 if kthread else task.tgid
    full = _capabilities(profile)
    view: TaskView = {
        # stat
        "pid": task.tid, "comm": comm_text, "state": state_text[0], "ppid": task.ppid,
        "pgrp": pgrp, "session": pgrp, "tty_nr": 0, "tpgid": -1, "flags": flags,
        "minflt": minflt, "cminflt": 0, "majflt": majflt, "cmajflt": 0,
        "utime": utime // NSEC_PER_TICK, "stime": stime // NSEC_PER_TICK, "cutime": 0,
        "cstime": 0, "priority": -1 - proc.rt_priority if rt else 20 + task.nice,
        "nice": task.nice, "num_threads": threads, "itrealvalue": 0,
        "starttime": task.start_ns // NSEC_PER_TICK, "vsize": vm * 1024,
        "rss": rss // PAGE_KIB, "rsslim": 2**64 - 1,
        **(_SEGMENTS if has_mm else _NO_SEGMENTS),
        "kstkesp": 0, "kstkeip": 0, "signal": 0, "blocked": 0,
        "sigignore": 2147483647 if kthread else 0, "sigcatch": 0, "wchan": 0, "nswap": 0,
        "cnswap": 0, "exit_signal": 0 if kthread else 17, "processor": task.cpu,
        "rt_priority": proc.rt_priority, "policy": task.policy,
        "delayacct_blkio_ticks": get("blkio_delay_total", 0) // NSEC_PER_TICK,
        "guest_time": 0, "cguest_time": 0, "exit_code": 0,
        # status
        "has_mm": has_mm, "name": escape_name(task.comm), "umask": None if zombie else "0022",
        "state_text": state_text, "tgid": task.tgid, "ngid": 0, "tracer_pid": 0,
        "uids": "\t".join([str(task.uid)] * 4), "gids": "\t".join([str(task.gid)] * 4),
        "fdsize": 0 if zombie else 64, "groups": " ", "nstgid": task.tgid, "nspid": task.tid,
        "nspgid": pgrp, "nssid": pgrp, "kthread": int(kthread),
        "vm_peak": max(vm, get("hiwater_vm", 0)), "vm_size": vm, "vm_lck": 0, "vm_pin": 0,
        "vm_hwm": max(rss, get("hiwater_rss", 0)), "vm_rss": rss,
        "rss_anon": rss - rss_file, "rss_file": rss_file, "rss_shmem": 0,
        "vm_data": vm // 8, "vm_stk": 132, "vm_exe": 20, "vm_lib": vm // 4, "vm_pte": 40,
        "vm_swap": 0, "hugetlb_pages": 0, "core_dumping": 0, "thp_enabled": 1,
        "untag_mask": "0xffffffffffffffff", "threads": threads, "sigq": "0/96362",
        "sig_pnd": _SIGSET_NONE, "shd_pnd": _SIGSET_NONE, "sig_blk": _SIGSET_NONE,
        "sig_ign": _SIGSET_ALL if kthread else _SIGSET_NONE, "sig_cgt": _SIGSET_NONE,
        "cap_inh": _SIGSET_NONE, "cap_prm": full if task.uid == 0 else _SIGSET_NONE,
        "cap_eff": full if task.uid == 0 else _SIGSET_NONE, "cap_bnd": full,
        "cap_amb": _SIGSET_NONE, "no_new_privs": 0, "seccomp": 0, "seccomp_filters": 0,
        "spec_store_bypass": "vulnerable", "spec_indirect_branch": "always enabled",
        "cpus_allowed": _cpumask(nr_cpus), "cpus_allowed_list": _cpulist(nr_cpus),
        "mems_allowed": _MEMS_ALLOWED, "mems_allowed_list": "0",
        "voluntary_ctxt_switches": get("nvcsw", 0),
        "nonvoluntary_ctxt_switches": get("nivcsw", 0),
        # statm (pages)
        "statm_size": vm // PAGE_KIB, "statm_resident": rss // PAGE_KIB,
        "statm_shared": rss_file // PAGE_KIB, "statm_text": 20 // PAGE_KIB if has_mm else 0,
        "statm_data": vm // 8 // PAGE_KIB,
        # schedstat
        "sum_exec_runtime": get("cpu_run_virtual_total", 0),
        "run_delay": get("cpu_delay_total", 0), "pcount": get("cpu_count", 0),
        # cmdline
        "cmdline": () if not has_mm else (proc.cmdline if proc.cmdline is not None
                                          else (task.comm,)),
    }
    for _label, name in IO_LINES:
        view[name] = get(name, 0)
    return view


# --- reading the kernel's own files back (a host task's view) ----------------------------------

_STATUS_NAMES = {label: name for label, name, _, _ in STATUS_LINES}


def parse_stat(text: str) -> TaskView:
    """The fields of a /proc/<pid>/stat line (the comm is between the first "(" and the last
    ")"; it may hold spaces and parentheses)."""
    head, _, tail = text.rstrip("\n").rpartition(")")
    pid, _, comm_text = head.partition(" (")
    rest = tail.split()
    view: TaskView = {"pid": int(pid), "comm": comm_text, "state": rest[0]}
    for name, value in zip(STAT_FIELDS[3:], rest[1:], strict=True):
        view[name] = int(value)
    return view


def parse_status(text: str) -> TaskView:
    """The fields of /proc/<pid>/status, by `STATUS_LINES` name; sizes in kB as ints."""
    view: TaskView = {"has_mm": False, "umask": None}
    for line in text.splitlines():
        label, _, value = line.partition(":\t")
        name = _STATUS_NAMES.get(label)
        if name is None:
            raise ValueError(f"a status line this kernel model does not know: {line!r}")
        if label in _KB_LINES:
            view[name] = int(value.split()[0])
            view["has_mm"] = True
        else:
            view[name] = value
    return view


def parse_io(text: str) -> TaskView:
    names = dict(IO_LINES)
    return {names[label]: int(value) for label, _, value in
            (line.partition(": ") for line in text.splitlines())}
