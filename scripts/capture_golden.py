#!/usr/bin/env python3
"""Capture the host kernel's replies to a catalogue of requests, for tsemu's golden tests.

Run as root on a kernel with CONFIG_TASKSTATS (`make golden`). Every request is built with
tsemu.wire and sent on a real AF_NETLINK/NETLINK_GENERIC socket; the datagrams that come back
are stored byte for byte, in hex, in one JSON file. The golden tests then check that tsemu's
codec decodes and re-encodes each of them exactly, and the differential tests (issue: the
emulated kernel) replay the same requests against tsemu.

Each case records: name, what it shows, the socket options in force (NETLINK_CAP_ACK,
NETLINK_EXT_ACK), the request's bytes, the reply datagrams, and facts the replies depend on
(the capturing process's pid, the family id). Exit cases have no request: their replies are
the exit events of children made for the purpose (one thread; two threads that exit in turn;
two threads ended by the leader's exit_group, sampled several times since the order of the
two records varies).

Also run inside a guest kernel by scripts/golden_vm.py (`make golden KERNEL=6.1`), as root
in a chroot of the host's root: nothing here may assume the host's own kernel.
"""

from __future__ import annotations

import json
import os
import platform
import select
import socket
import sys
import threading
import time
from typing import Any

from tsemu.wire import (
    Flag,
    TaskstatsType,
    decode_genl,
    decode_newfamily,
    decode_taskstats_new,
    encode_cgroupstats_get,
    encode_getfamily,
    encode_taskstats_get,
    split_datagram,
)
from tsemu.wire.attributes import encode_attr, encode_u32
from tsemu.wire.constants import SOL_NETLINK, SockOpt
from tsemu.wire.netlink import encode_genl

NETLINK_GENERIC = 16
REQ_ACK = Flag.REQUEST | Flag.ACK
#: exit_group of a two-threaded process, repeated: which thread's record comes first varies.
GROUP_EXIT_SAMPLES = 4


class Netlink:
    """A raw generic-netlink socket that collects every datagram a request brings back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        self.portid = self.sock.getsockname()[0]

    def options(self, cap_ack: bool, ext_ack: bool) -> None:
        self.sock.setsockopt(SOL_NETLINK, SockOpt.CAP_ACK, int(cap_ack))
        self.sock.setsockopt(SOL_NETLINK, SockOpt.EXT_ACK, int(ext_ack))

    def collect(self, quiet: float = 0.25) -> list[bytes]:
        out = []
        while select.select([self.sock], [], [], quiet)[0]:
            out.append(self.sock.recv(1 << 20))
        return out

    def ask(self, request: bytes, quiet: float = 0.25) -> list[bytes]:
        self.collect(0)
        self.sock.send(request)
        return self.collect(quiet)


def family_id(nl: Netlink) -> int:
    reply = nl.ask(encode_getfamily(name="TASKSTATS", seq=1, flags=Flag.REQUEST))
    msg = split_datagram(reply[0])[0]
    return decode_newfamily(decode_genl(msg)).id


def case(name: str, about: str, request: bytes, replies: list[bytes], *, cap_ack: bool = False,
         ext_ack: bool = False, **facts: Any) -> dict[str, Any]:
    return {
        "name": name,
        "about": about,
        "cap_ack": cap_ack,
        "ext_ack": ext_ack,
        "request": request.hex(),
        "replies": [r.hex() for r in replies],
        **facts,
    }


def request_cases(nl: Netlink, fid: int) -> list[dict[str, Any]]:
    """Requests answered on the capturing socket (root, CAP_NET_ADMIN)."""
    me = os.getpid()
    cases = []

    def add(name: str, about: str, request: bytes, *, cap_ack: bool = False,
            ext_ack: bool = False, **facts: Any) -> None:
        nl.options(cap_ack, ext_ack)
        cases.append(case(name, about, request, nl.ask(request), cap_ack=cap_ack,
                          ext_ack=ext_ack, **facts))

    def get(seq: int, flags: int = Flag.REQUEST, **kw: Any) -> bytes:
        return encode_taskstats_get(fid, seq=seq, portid=me, flags=flags, **kw)

    def raw_get(seq: int, attrs: bytes, cmd: int = 1, flags: int = Flag.REQUEST) -> bytes:
        return encode_genl(fid, flags, seq, me, cmd, 1, attrs)

    add("ctrl_get_taskstats", "GETFAMILY by name TASKSTATS",
        encode_getfamily(name="TASKSTATS", seq=10, pid=me))
    add("ctrl_get_nlctrl", "GETFAMILY by name nlctrl", encode_getfamily(name="nlctrl", seq=11))
    add("ctrl_get_by_id", "GETFAMILY by the TASKSTATS id", encode_getfamily(family_id=fid, seq=12))
    add("ctrl_get_unknown_name", "GETFAMILY of a name no family has: ENOENT",
        encode_getfamily(name="NOSUCHFAMILY", seq=13))
    add("ctrl_get_unknown_id", "GETFAMILY of an id no family has: ENOENT",
        encode_getfamily(family_id=0x7FF0, seq=14))
    add("ctrl_get_no_attr", "GETFAMILY with neither name nor id: EINVAL",
        encode_genl(0x10, Flag.REQUEST, 15, 0, 3, 1, b""))
    add("ctrl_get_long_name", "GETFAMILY with a name over 15 characters (policy, ext ack)",
        encode_getfamily(name="A_NAME_TOO_LONG_FOR_GENL", seq=16), ext_ack=True)
    add("ctrl_dump", "GETFAMILY dump: every family, then NLMSG_DONE",
        encode_getfamily(seq=17, flags=Flag.REQUEST | Flag.DUMP))
    add("get_pid_self", "GET PID of the capturing process", get(20, pid=me), pid=me)
    add("get_pid_self_ack", "GET PID with NLM_F_ACK: the reply, then a capped ACK",
        get(21, flags=REQ_ACK, pid=me), pid=me)
    add("get_tgid_self", "GET TGID of the capturing process", get(22, tgid=me), pid=me)
    add("get_pid_and_tgid", "GET with PID and TGID: answered as PID",
        get(23, pid=me, tgid=me), pid=me)
    add("get_pid_u64", "GET PID as an 8-byte payload: accepted, low 32 bits read",
        raw_get(24, encode_attr(1, me.to_bytes(8, "little"))), pid=me)
    add("get_pid_unknown", "GET PID that no task has: ESRCH", get(25, pid=0x3FFFFFF0))
    add("get_tgid_unknown", "GET TGID that no task has: ESRCH", get(26, tgid=0x3FFFFFF0))
    add("get_pid_zero", "GET PID 0: ESRCH", get(27, pid=0))
    add("get_no_attr", "GET with no attribute: EINVAL", raw_get(28, b""))
    add("get_unknown_attr", "GET with only an unknown attribute type: EINVAL",
        raw_get(29, encode_u32(9, 1)))
    add("get_pid_short", "GET PID with a 2-byte payload: ERANGE (policy)",
        raw_get(30, encode_attr(1, b"\1\0")))
    add("get_pid_short_ext", "the same with NETLINK_EXT_ACK: message, offset, policy TLVs",
        raw_get(31, encode_attr(1, b"\1\0")), ext_ack=True)
    add("get_pid_short_cap", "the same with NETLINK_CAP_ACK: only the header echoed",
        raw_get(32, encode_attr(1, b"\1\0")), cap_ack=True)
    add("get_pid_short_cap_ext", "the same with both options",
        raw_get(33, encode_attr(1, b"\1\0")), cap_ack=True, ext_ack=True)
    for i, (label, mask) in enumerate([
        ("zz", b"zz\0"), ("empty", b""), ("nul", b"\0"), ("huge", b"0-9999\0"),
        ("overflow", b"4294967296\0"), ("spaces", b" 0 , 1"), ("last", b"N\0"),
        ("group", b"0-1:1/2\0"), ("badgroup", b"0-1:3/2\0"), ("all", b"all\0"),
        ("toolong", b"0" * 1637),
    ]):
        add(f"register_{label}", f"REGISTER_CPUMASK {mask[:20]!r} with NLM_F_ACK",
            get(40 + i, flags=REQ_ACK, register=mask))
        nl.options(False, False)
        nl.ask(get(60, deregister=b"0-1\0"))
    add("register_empty_ext", "REGISTER_CPUMASK with an empty payload, NETLINK_EXT_ACK",
        get(61, flags=REQ_ACK, register=b""), ext_ack=True)
    add("deregister_ok", "DEREGISTER_CPUMASK never registered, with NLM_F_ACK: ACK",
        get(62, flags=REQ_ACK, deregister="0"))
    add("deregister_ok_ext", "the same with NETLINK_EXT_ACK",
        get(63, flags=REQ_ACK, deregister="0"), ext_ack=True)
    add("unknown_cmd", "TASKSTATS command 99: EOPNOTSUPP", raw_get(70, b"", cmd=99))
    add("unknown_cmd_ext", "the same with NETLINK_EXT_ACK", raw_get(71, b"", cmd=99),
        ext_ack=True)
    add("unknown_family", "a message to a family id no family has: ENOENT",
        encode_genl(0x7FF0, Flag.REQUEST, 72, me, 1, 1, encode_u32(1, me)))
    short = bytearray(encode_genl(fid, Flag.REQUEST, 73, me, 1, 1, b""))
    short[0:4] = (18).to_bytes(4, "little")
    add("genl_short", "nlmsg_len 18 cuts the genl header short: EINVAL", bytes(short[:18]))
    add("no_request_flag", "a GET without NLM_F_REQUEST: no reply", get(74, flags=0, pid=me))
    add("no_request_flag_ack", "a GET without NLM_F_REQUEST but with NLM_F_ACK",
        get(75, flags=Flag.ACK, pid=me))
    too_long = bytearray(get(76, pid=me))
    too_long[0:4] = (len(too_long) + 8).to_bytes(4, "little")
    add("len_beyond_datagram", "nlmsg_len beyond the datagram: ignored", bytes(too_long))
    add("several_requests", "three requests in one datagram, each answered in order",
        get(77, pid=me) + get(78, pid=0) + encode_getfamily(name="TASKSTATS", seq=79), pid=me)
    add("dump_taskstats_get", "TASKSTATS GET with NLM_F_DUMP (no dumpit): EOPNOTSUPP",
        get(80, flags=Flag.REQUEST | Flag.DUMP, pid=me))
    add("cgroupstats_no_fd", "CGROUPSTATS_CMD_GET without FD: EINVAL",
        encode_cgroupstats_get(fid, None, seq=90))
    add("cgroupstats_closed_fd", "CGROUPSTATS_CMD_GET naming a closed descriptor: no reply",
        encode_cgroupstats_get(fid, 999, seq=91))
    add("cgroupstats_closed_fd_ack", "the same with NLM_F_ACK: an ACK",
        encode_cgroupstats_get(fid, 999, seq=92, flags=REQ_ACK))
    for label, path in (("v1", "/sys/fs/cgroup/cpu"), ("v2", "/sys/fs/cgroup/unified"),
                        ("v2root", "/sys/fs/cgroup")):
        if not os.path.isdir(path):
            continue
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            add(f"cgroupstats_{label}", f"CGROUPSTATS_CMD_GET on {path}",
                encode_cgroupstats_get(fid, fd, seq=93), path=path,
                fstype=os.statvfs(path).f_fsid)
        finally:
            os.close(fd)
    return cases


def unprivileged_case(fid: int) -> dict[str, Any]:
    """GET PID from a process running as uid 65534 (no CAP_NET_ADMIN): EPERM."""
    rd, wr = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(rd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            nl = Netlink()
            req = encode_taskstats_get(fid, pid=os.getpid(), seq=100)
            got = case("get_unprivileged", "GET PID from uid 65534: EPERM", req, nl.ask(req),
                       uid=65534)
            os.write(wr, json.dumps(got).encode())
        finally:
            os._exit(0)
    os.close(wr)
    data = b""
    while chunk := os.read(rd, 65536):
        data += chunk
    os.waitpid(child, 0)
    return json.loads(data)


def _pinned_child(threads: int, code: int) -> int:
    child = os.fork()
    if child == 0:
        os.sched_setaffinity(0, {0})
        workers = [threading.Thread(target=time.sleep, args=(0.05,)) for _ in range(threads - 1)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        os._exit(code)
    return child


def _spin(seconds: float) -> None:
    """Burn `seconds` of CPU time in this thread (the GIL is released often enough for the
    leader, which only waits)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def tgid_after_thread_exit_cases(fid: int, nl: Netlink) -> list[dict[str, Any]]:
    """A two-threaded child whose worker burned 0.2 s of CPU and exited, asked about while
    its leader (which only waited) lives on: GET TGID, then GET PID of the leader.

    Whether the TGID answer still counts the dead worker's utime/stime and context switches
    is a rule that changed between kernels (and came to some by stable backports); the
    leader's own record shows what the live thread alone accounts for."""
    rd, wr = os.pipe()
    hold_rd, hold_wr = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(rd)
            os.close(hold_wr)
            worker = threading.Thread(target=_spin, args=(0.2,))
            worker.start()
            worker.join()
            time.sleep(0.05)  # let the worker's kernel thread finish exiting
            os.write(wr, b"x")
            os.read(hold_rd, 1)  # until the parent has asked
        finally:
            os._exit(0)
    os.close(wr)
    os.close(hold_rd)
    try:
        os.read(rd, 1)
        cases = []
        for name, about, request in (
            ("get_tgid_after_thread_exit", "GET TGID of a live process whose second thread "
             "burned 0.2 s of CPU and exited", encode_taskstats_get(fid, tgid=child, seq=120)),
            ("get_pid_leader_after_thread_exit", "GET PID of that process's leader (it only "
             "waited)", encode_taskstats_get(fid, pid=child, seq=121)),
        ):
            nl.options(False, False)
            cases.append(case(name, about, request, nl.ask(request), pid=child,
                              worker_cpu_seconds=0.2))
        return cases
    finally:
        os.close(rd)
        os.close(hold_wr)
        os.waitpid(child, 0)


def _group_exit_child(code: int) -> int:
    """A forked child on CPU 0 with a second thread asleep when the leader calls exit_group
    (os._exit): the kernel kills the sleeper, as on any multi-threaded process's exit."""
    child = os.fork()
    if child == 0:
        os.sched_setaffinity(0, {0})
        ready = threading.Event()

        def sleeper() -> None:
            ready.set()
            time.sleep(30)

        threading.Thread(target=sleeper, daemon=True).start()
        ready.wait()
        time.sleep(0.02)
        os._exit(code)
    return child


def _events_of(nl: Netlink, tgid: int, quiet: float = 0.3) -> list[bytes]:
    """The exit-event datagrams received for process `tgid` (other exits passed over)."""
    events = []
    for datagram in nl.collect(quiet):
        for msg in split_datagram(datagram):
            recs = decode_taskstats_new(decode_genl(msg))
            stats = [r.values() for r in recs if r.aggr == TaskstatsType.AGGR_PID]
            if stats and stats[0].get("ac_tgid") == tgid:
                events.append(datagram)
                break
    return events


def exit_cases(fid: int) -> list[dict[str, Any]]:
    """Exit events on CPU 0 for a single-threaded child and for a two-threaded one."""
    nl = Netlink()
    nl.ask(encode_taskstats_get(fid, register="0", seq=110))
    cases = []
    for threads, code in ((1, 3), (2, 0)):
        nl.collect(0.05)
        child = _pinned_child(threads, code)
        os.waitpid(child, 0)
        time.sleep(0.1)
        events = _events_of(nl, child)
        cases.append(case(f"exit_{threads}_thread", f"exit events of a {threads}-thread child "
                          f"(exit code {code}) on CPU 0", b"", events, pid=child,
                          threads=threads))
    for sample in range(1, GROUP_EXIT_SAMPLES + 1):
        nl.collect(0.05)
        child = _group_exit_child(5)
        os.waitpid(child, 0)
        time.sleep(0.1)
        cases.append(case(f"exit_group_2_thread_{sample}", "exit events of a 2-thread child "
                          "whose leader calls exit_group(5) while the other thread sleeps "
                          f"(sample {sample})", b"", _events_of(nl, child), pid=child,
                          threads=2))
    nl.ask(encode_taskstats_get(fid, deregister="0", seq=111))
    return cases


def main(path: str) -> None:
    if os.geteuid() != 0:
        sys.exit("capture_golden: run as root (TASKSTATS GET needs CAP_NET_ADMIN)")
    nl = Netlink()
    try:
        fid = family_id(nl)
    except (IndexError, OSError) as exc:
        sys.exit(f"capture_golden: this kernel has no TASKSTATS family ({exc})")
    with open("/sys/devices/system/cpu/kernel_max") as f:
        nr_cpus_config = int(f.read()) + 1
    cases = (request_cases(nl, fid) + [unprivileged_case(fid)]
             + tgid_after_thread_exit_cases(fid, nl) + exit_cases(fid))
    try:
        with open("/proc/sys/kernel/task_delayacct") as f:
            delayacct: int | None = int(f.read())
    except OSError:
        delayacct = None
    doc = {
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "task_delayacct": delayacct,
        "machine": platform.machine(),
        "captured": time.strftime("%Y-%m-%d"),
        "taskstats_family": fid,
        "portid": nl.portid,
        "pid": os.getpid(),
        "nr_cpus": os.cpu_count(),
        "nr_cpus_config": nr_cpus_config,
        "cases": cases,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"capture_golden: {len(cases)} cases from Linux {doc['kernel']} written to {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/golden/kernel.json")
