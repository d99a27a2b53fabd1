"""Recording the running kernel: a snapshot of its tasks, its exit events, sampled counters.

What lives here: `record`, the trio program behind `tsemu record`, and the `Recording` it
returns: every value kept as the kernel gave it (struct taskstats as bytes, exit events as
whole netlink messages), with when each was heard. Turning it into a scenario is
`document`'s business.

How it records, and why:

- one netlink socket per chosen CPU, each registered for that CPU alone: a taskstats event
  does not say which CPU it comes from, a listener of one CPU does. Each socket's receive
  buffer is raised with SO_RCVBUFFORCE (64 MiB), so a burst of exits is kept rather than
  lost; a receive that fails with ENOBUFS anyway is counted and said;
- the listeners are in place before the snapshot starts, so an exit during the snapshot
  is heard rather than missed between the two;
- the snapshot: each process of /proc (or of --pids), each of its threads: a
  TASKSTATS_CMD_GET by pid (every field the kernel gives) and what only /proc says (comm,
  cmdline, ppid, state, uid and gid, the CPU it last ran on, kernel thread or not). A task
  that exits meanwhile is left out;
- every `interval` until the duration is over, a GET of each task still alive; a record that
  changed is kept as a sample, so the replay's counters move as they did;
- times are CLOCK_MONOTONIC nanoseconds since the recording began (the snapshot's start).

Errors a user can act on come out as `RecordError`, one line: not root, no taskstats in this
kernel, no such CPU.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from tsemu.wire import (
    Family,
    WireError,
    decode_error,
    decode_genl,
    decode_newfamily,
    decode_taskstats_new,
    encode_getfamily,
    encode_taskstats_get,
    split_datagram,
)
from tsemu.wire.constants import Flag, MsgType, TaskstatsType
from tsemu.wire.cpulist import parse_cpulist

NETLINK_GENERIC = 16
#: SO_RCVBUFFORCE: what each listener's receive buffer is raised to (root may exceed rmem_max)
LISTENER_RCVBUF = 64 << 20
_SO_RCVBUFFORCE = 33
PF_KTHREAD = 0x00200000
_STATES = {"R": "running", "S": "sleeping", "D": "uninterruptible", "T": "stopped",
           "t": "traced", "I": "idle", "W": "sleeping", "P": "sleeping",
           "K": "uninterruptible", "Z": "zombie", "X": "zombie"}


class RecordError(Exception):
    """What stops a recording, in one line a user can act on."""


@dataclass
class TaskSnapshot:
    """One task as the snapshot saw it: its GET reply's struct and what /proc said."""

    tid: int
    stats: bytes
    comm: bytes
    state: str
    cpu: int
    #: when the GET was answered (ns since the recording began): ac_etime is as of then
    at_ns: int = 0


@dataclass
class ProcessSnapshot:
    """One process: its leader first in `tasks`, then its other threads."""

    tgid: int
    ppid: int
    uid: int
    gid: int
    cmdline: list[bytes]
    kthread: bool
    tasks: list[TaskSnapshot]


@dataclass
class Sample:
    """A GET reply's struct that differed from the task's previous one, and when."""

    at_ns: int
    tid: int
    stats: bytes


@dataclass
class HeardExit:
    """One exit event: when, on which CPU, and the whole netlink message as it came."""

    at_ns: int
    cpu: int
    message: bytes


@dataclass
class Recording:
    """What `record` heard. Times are ns since the recording began."""

    release: str
    family: Family
    cpus: int              # possible CPUs (/sys/devices/system/cpu/possible)
    nr_cpus: int           # CONFIG_NR_CPUS (kernel_max + 1)
    listened: list[int]    # the CPUs listened on
    pid_max: int
    memory_kib: int
    boot_wall_ns: int      # wall-clock time of boot
    start_since_boot_ns: int
    duration_ns: int
    interval_ns: int
    processes: list[ProcessSnapshot] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    exits: list[HeardExit] = field(default_factory=list)
    lost: int = 0          # receives that failed with ENOBUFS


#: A tap on every datagram the recorder sends (True) or receives (False): the --pcap capture.
Tap = Callable[[bytes, bool], None]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _cpulist_file(path: str) -> list[int]:
    text = _read(path).strip()
    return sorted(parse_cpulist(text, 1 << 16, 1 << 16))


def possible_cpus() -> int:
    """The host's possible CPUs, as the kernel numbers them (highest + 1)."""
    return max(_cpulist_file("/sys/devices/system/cpu/possible")) + 1


def online_cpus() -> list[int]:
    return _cpulist_file("/sys/devices/system/cpu/online")


class _Socket:
    """One host netlink socket, every datagram through the tap."""

    def __init__(self, tap: Tap | None) -> None:
        try:
            self.sock = trio.socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        except OSError as exc:
            raise RecordError(f"no generic netlink on this host: {exc.strerror}") from None
        self.tap = tap
        self.seq = 0

    async def bind(self) -> None:
        await self.sock.bind((0, 0))

    async def send(self, data: bytes) -> None:
        if self.tap is not None:
            self.tap(data, True)
        await self.sock.sendto(data, (0, 0))

    async def recv(self) -> bytes:
        data = await self.sock.recv(1 << 20)
        if self.tap is not None:
            self.tap(data, False)
        return data

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def request(self, data: bytes) -> list[bytes]:
        """Send one request; the messages answering it (its seq), up to and including an
        NLMSG_ERROR or the first reply."""
        seq = split_datagram(data)[0].header.seq
        await self.send(data)
        while True:
            answers = [m.raw for m in split_datagram(await self.recv()) if m.header.seq == seq]
            if answers:
                return answers

    def close(self) -> None:
        self.sock.close()


def _error_of(raw: bytes) -> int:
    """The positive errno of an NLMSG_ERROR message (0 for an ACK), or -1 for another type."""
    messages = split_datagram(raw)
    if not messages or messages[0].header.type != MsgType.ERROR:
        return -1
    return -decode_error(messages[0]).error


async def _family(sock: _Socket) -> Family:
    answers = await sock.request(encode_getfamily(name="TASKSTATS", seq=sock.next_seq(), pid=0))
    err = _error_of(answers[0])
    if err == errno.ENOENT:
        raise RecordError("this kernel has no taskstats (no TASKSTATS generic-netlink family: "
                          "CONFIG_TASKSTATS is off)")
    if err > 0:
        raise RecordError(f"the kernel refused to name the TASKSTATS family: "
                          f"{os.strerror(err)}")
    return decode_newfamily(decode_genl(split_datagram(answers[0])[0]))


async def _get(sock: _Socket, family: int, tid: int) -> bytes | None:
    """The struct taskstats of a GET by pid, None if the task is gone (ESRCH)."""
    answers = await sock.request(encode_taskstats_get(family, pid=tid, seq=sock.next_seq()))
    err = _error_of(answers[0])
    if err == errno.ESRCH:
        return None
    if err == errno.EPERM:
        raise RecordError("taskstats needs CAP_NET_ADMIN: run tsemu record as root")
    if err > 0:
        raise RecordError(f"TASKSTATS_CMD_GET of {tid} failed: {os.strerror(err)}")
    records = decode_taskstats_new(decode_genl(split_datagram(answers[0])[0]))
    return records[0].stats


async def _listener(cpu: int, family: int, tap: Tap | None) -> _Socket:
    sock = _Socket(tap)
    await sock.bind()
    try:
        sock.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, LISTENER_RCVBUF)
    except OSError:
        sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTENER_RCVBUF)
    answers = await sock.request(encode_taskstats_get(
        family, register=f"{cpu}", seq=sock.next_seq(), flags=Flag.REQUEST | Flag.ACK))
    err = _error_of(answers[0])
    if err == errno.EPERM:
        raise RecordError("listening to exits needs CAP_NET_ADMIN: run tsemu record as root")
    if err > 0:
        raise RecordError(f"cannot listen on CPU {cpu}: {os.strerror(err)}")
    return sock


def _proc_task(tgid: int, tid: int) -> tuple[bytes, str, int, int, int] | None:
    """(comm, state, cpu, ppid, flags) of a task from /proc, None when it is gone."""
    try:
        comm = _read(f"/proc/{tgid}/task/{tid}/comm").rstrip(b"\n")
        stat = _read(f"/proc/{tgid}/task/{tid}/stat")
    except OSError:
        return None
    rest = stat[stat.rfind(b")") + 2:].split()
    # rest[0] is field 3 (state); field n is rest[n - 3]
    return (comm, _STATES.get(rest[0].decode(errors="replace"), "sleeping"), int(rest[36]),
            int(rest[1]), int(rest[6]))


def _ids(tgid: int) -> tuple[int, int] | None:
    try:
        status = _read(f"/proc/{tgid}/status")
    except OSError:
        return None
    uid = gid = 0
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            uid = int(line.split()[1])
        elif line.startswith(b"Gid:"):
            gid = int(line.split()[1])
    return uid, gid


async def _snapshot(sock: _Socket, family: int, pids: set[int] | None,
                    t0: int) -> list[ProcessSnapshot]:
    processes = []
    tgids = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
    for tgid in tgids:
        if pids is not None and tgid not in pids:
            continue
        try:
            tids = sorted(int(n) for n in os.listdir(f"/proc/{tgid}/task") if n.isdigit())
            cmdline = _read(f"/proc/{tgid}/cmdline")
        except OSError:
            continue
        ids = _ids(tgid)
        if ids is None or tgid not in tids:
            continue
        tids.remove(tgid)
        tasks = []
        ppid = flags = 0
        for tid in [tgid, *tids]:
            seen = _proc_task(tgid, tid)
            if seen is None or seen[1] == "zombie":
                continue
            stats = await _get(sock, family, tid)
            if stats is None:
                continue
            comm, state, cpu, task_ppid, task_flags = seen
            if tid == tgid:
                ppid, flags = task_ppid, task_flags
            tasks.append(TaskSnapshot(tid, stats, comm, state, cpu, time.monotonic_ns() - t0))
        if not tasks or tasks[0].tid != tgid:
            continue  # the leader is gone (or a zombie): the process is not kept
        args = cmdline.split(b"\0")
        if args and args[-1] == b"":
            args.pop()
        processes.append(ProcessSnapshot(tgid, ppid, ids[0], ids[1], args,
                                         bool(flags & PF_KTHREAD), tasks))
    return processes


def _meminfo_kib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith(b"MemTotal:"):
            return int(line.split()[1])
    return 8 << 20


async def record(*, duration: float, cpus: list[int] | None = None,
                 pids: set[int] | None = None, interval: float = 1.0,
                 tap: Tap | None = None, started: Callable[[], None] | None = None
                 ) -> Recording:
    """Record the running kernel for `duration` seconds (see the module docstring).
    `started` is called once the listeners are in place and the snapshot is taken."""
    if duration < 0 or interval <= 0:
        raise RecordError("the duration must be 0 or more and the interval above 0")
    if not os.path.exists("/proc/self/stat"):
        raise RecordError("no /proc on this host")
    control = _Socket(tap)
    listeners: list[tuple[int, _Socket]] = []
    try:
        await control.bind()
        family = await _family(control)
        online = online_cpus()
        chosen = online if cpus is None else cpus
        missing = sorted(set(chosen) - set(online))
        if missing:
            raise RecordError(f"CPU {missing[0]} is not online (online: "
                              f"{','.join(map(str, online))})")
        for cpu in chosen:
            listeners.append((cpu, await _listener(cpu, family.id, tap)))
        t0 = time.monotonic_ns()
        boot_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        wall_ns = time.time_ns()
        try:
            kernel_max = int(_read("/sys/devices/system/cpu/kernel_max")) + 1
        except (OSError, ValueError):
            kernel_max = 8192
        result = Recording(
            release=os.uname().release, family=family, cpus=possible_cpus(),
            nr_cpus=kernel_max, listened=list(chosen),
            pid_max=int(_read("/proc/sys/kernel/pid_max")), memory_kib=_meminfo_kib(),
            boot_wall_ns=wall_ns - boot_ns, start_since_boot_ns=boot_ns,
            duration_ns=round(duration * 1e9), interval_ns=round(interval * 1e9))
        async with trio.open_nursery() as nursery:
            for cpu, sock in listeners:
                nursery.start_soon(_listen, sock, cpu, t0, result, pids)
            result.processes = await _snapshot(control, family.id, pids, t0)
            if started is not None:
                started()
            await _sample(control, family.id, t0, result)
            nursery.cancel_scope.cancel()
        result.exits.sort(key=lambda e: e.at_ns)
        return result
    finally:
        control.close()
        for _cpu, sock in listeners:
            sock.close()


async def _sample(sock: _Socket, family: int, t0: int, result: Recording) -> None:
    """GET every snapshot task each interval until the duration is over."""
    last = {t.tid: t.stats for p in result.processes for t in p.tasks}
    end = t0 + result.duration_ns
    tick = t0
    while True:
        tick += result.interval_ns
        if tick > end:
            break
        await trio.sleep(max(0.0, (tick - time.monotonic_ns()) / 1e9))
        for tid in list(last):
            at = time.monotonic_ns() - t0
            stats = await _get(sock, family, tid)
            if stats is None:
                del last[tid]
                continue
            if stats != last[tid]:
                result.samples.append(Sample(at, tid, stats))
                last[tid] = stats
    await trio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))


def _belongs(message: bytes, pids: set[int]) -> bool:
    """Whether an exit event reports a task of the processes `pids` names."""
    try:
        records = decode_taskstats_new(decode_genl(split_datagram(message)[0]))
    except (WireError, IndexError):
        return False
    for rec in records:
        if rec.id in pids and rec.aggr == TaskstatsType.AGGR_TGID:
            return True
        if rec.aggr == TaskstatsType.AGGR_PID:
            values = rec.values()
            if rec.id in pids or values.get("ac_tgid") in pids:
                return True
    return False


async def _listen(sock: _Socket, cpu: int, t0: int, result: Recording,
                  pids: set[int] | None) -> None:
    while True:
        try:
            data = await sock.recv()
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                result.lost += 1
                continue
            raise
        at = time.monotonic_ns() - t0
        for message in split_datagram(data):
            if message.header.pid != 0 or message.header.type < 0x10:
                continue  # not an event (a late ACK)
            if pids is not None and not _belongs(message.raw, pids):
                continue
            result.exits.append(HeardExit(at, cpu, message.raw))
