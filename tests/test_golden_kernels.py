"""Captures from real kernels of other generations, replayed against their tsemu profiles.

tests/golden/kernel-6.1.json and its siblings were captured by `make golden KERNEL=...`
inside Debian's own kernels booted under QEMU (scripts/golden_vm.py). For each:

- the codec: every datagram the kernel sent decodes and re-encodes to the same bytes, and the
  answers are the ones KERNEL-FACTS.md documents (sizes scaled to that kernel's struct);
- the server: every request whose answer does not depend on what ran on the machine is sent
  to a live tsemu running the profile of that major.minor, with the capture's family id and
  CPU count, and must come back byte for byte (the port id aside);
- the rules that depend on what ran (struct version, the family id a profile picks by
  default, TGID accumulation, the order and flags of a thread group's exit events, what a
  thread reports of the shared mm) are reduced to comparable facts and checked against tsemu's
  model doing the same thing.

Where tsemu has no profile of that name the tests skip and say which; where tsemu is known to
differ, golden_kernels.KNOWN says why and the test is a strict expected failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.client import Client
from tsemu.wire import MsgType, SockOpt, TaskstatsType, decode_message, split_datagram

from .golden_kernels import (
    captures,
    cases_by_name,
    events,
    exit_shape,
    known,
    profile_or_skip,
    replies,
    tgid_exit_sums_times,
    tgid_query_keeps_dead_threads,
    thread_has_leaders_mm,
    usual_group_exit,
)
from .test_golden import EXPECTED
from .test_server_golden import REPLAYABLE, collect, with_port

CAPTURES = captures()
KERNELS = sorted(CAPTURES)

#: Sizes in EXPECTED are the host's (struct taskstats of 560 bytes): a datagram with one
#: record is 36 + size (16 nlmsghdr, 4 genlmsghdr, 4 aggregate, 8 id, 4 stats header), an
#: exit with both records 52 + 2 * size.
HOST_STRUCT = 560
#: The length of the register_toolong case's cpumask string: E2BIG where NR_CPUS is 256
#: (bound 1636), accepted where it is 8192.
TOOLONG = 1637


def _params(names: list[str]) -> list[Any]:
    return [pytest.param(k, n, marks=known(k, n), id=f"{k}-{n}")
            for k in KERNELS for n in names if n in cases_by_name(CAPTURES[k])]


def _rule_params(check: str) -> list[Any]:
    return [pytest.param(k, marks=known(k, check), id=k) for k in KERNELS]


def _struct_size(capture: dict[str, Any]) -> int:
    (event,) = events(replies(cases_by_name(capture)["get_pid_self"]),
                      capture["taskstats_family"])
    return event.records[0].layout().size


@pytest.fixture
def profile(kernel: str) -> Any:
    """tsemu's profile named after the capture's kernel. A fixture, not a call in the test:
    a skip raised inside a trio test loses its reason, and this one must name the profile."""
    return profile_or_skip(kernel, CAPTURES[kernel])


@asynccontextmanager
async def tsemu_for(tmp: Path, profile: Any, capture: dict[str, Any], *,
                    capture_family: bool = True) -> AsyncIterator[Any]:
    """A live tsemu with `profile` and the capture's CPU count, on a socket in `tmp`; with the
    capture's TASKSTATS family id unless `capture_family` is false (then the profile's own
    default)."""
    from tsemu.emulator.model.clock import VirtualClock
    from tsemu.emulator.model.families import FamilyTable
    from tsemu.emulator.model.table import ProcessTable
    from tsemu.emulator.shell.server import running_server

    nr_cpus = capture["nr_cpus"]
    options: dict[str, Any] = {"profile": profile, "nr_cpus": nr_cpus}
    if capture_family:
        options["families"] = FamilyTable.default(capture["taskstats_family"])
    table = ProcessTable(VirtualClock(), profile, nr_cpus)
    async with running_server(tmp / "genl.sock", table, **options) as server:
        yield server


# -- the codec -------------------------------------------------------------------------------

@pytest.mark.parametrize(("kernel", "name"),
                         [pytest.param(k, c["name"], id=f"{k}-{c['name']}")
                          for k in KERNELS for c in CAPTURES[k]["cases"]])
def test_every_reply_decodes_and_reencodes_exactly(kernel: str, name: str) -> None:
    capture = CAPTURES[kernel]
    for datagram in replies(cases_by_name(capture)[name]):
        messages = split_datagram(datagram)
        assert messages
        assert b"".join(decode_message(m, capture["taskstats_family"]).encode()
                        for m in messages) == datagram


@pytest.mark.parametrize(("kernel", "name"),
                         [pytest.param(k, n, id=f"{k}-{n}") for k in KERNELS for n in EXPECTED])
def test_capture_gives_the_documented_answers(kernel: str, name: str) -> None:
    capture = CAPTURES[kernel]
    size = _struct_size(capture)
    scale = {36 + HOST_STRUCT: 36 + size, 52 + 2 * HOST_STRUCT: 52 + 2 * size}
    expected = [(kind, scale.get(value, value) if kind == "size" else value)
                for kind, value in EXPECTED[name]]
    if name == "register_toolong" and TOOLONG <= 100 + 6 * capture["nr_cpus_config"]:
        expected = [("errno", 0)]  # within this build's bound: accepted, the ACK
    seen = []
    for datagram in replies(cases_by_name(capture)[name]):
        if split_datagram(datagram)[0].header.type == MsgType.ERROR:
            seen.append(("errno", -int.from_bytes(datagram[16:20], "little", signed=True)))
        else:
            seen.append(("size", len(datagram)))
    assert seen == expected


def test_every_capture_names_its_kernel() -> None:
    """A capture says exactly which build answered: release, Debian version, delay
    accounting on (the guest boots with `delayacct`)."""
    for kernel, capture in CAPTURES.items():
        assert capture["kernel"].startswith(kernel + "."), capture["kernel"]
        assert capture["kernel"] in capture.get("uname", capture["kernel"])
        if "task_delayacct" in capture:
            assert capture["task_delayacct"] == 1, f"{kernel}: captured without delayacct"


# -- the server, byte for byte ---------------------------------------------------------------

@pytest.mark.parametrize(("kernel", "name"), _params(REPLAYABLE))
async def test_replayed_request_gets_this_kernels_bytes(kernel: str, name: str,
                                                        profile: Any, short_tmp: Path) -> None:
    capture = CAPTURES[kernel]
    case = cases_by_name(capture)[name]
    async with tsemu_for(short_tmp, profile, capture) as server, \
            await Client.connect(server.socket_path) as client:
        await client.set_option(SockOpt.CAP_ACK, int(case["cap_ack"]))
        await client.set_option(SockOpt.EXT_ACK, int(case["ext_ack"]))
        await client.send(bytes.fromhex(case["request"]))
        got = await collect(client)
        assert got == [with_port(r, client.port) for r in replies(case)]


@pytest.mark.parametrize("kernel", _rule_params("profile_family_id"))
async def test_profile_picks_this_kernels_family_id(kernel: str, profile: Any,
                                                    short_tmp: Path) -> None:
    """Without a family table given, the profile's TASKSTATS id is the one this kernel had
    (it follows the families registered before it, so it differs between generations)."""
    capture = CAPTURES[kernel]
    case = cases_by_name(capture)["ctrl_get_taskstats"]
    async with tsemu_for(short_tmp, profile, capture, capture_family=False) as server, \
            await Client.connect(server.socket_path) as client:
        await client.send(bytes.fromhex(case["request"]))
        assert await collect(client) == [with_port(r, client.port) for r in replies(case)]


# -- the rules, as facts -----------------------------------------------------------------------

@pytest.mark.parametrize("kernel", _rule_params("struct_version"))
async def test_get_reply_has_this_kernels_struct(kernel: str, profile: Any,
                                                 short_tmp: Path) -> None:
    capture = CAPTURES[kernel]
    (theirs,) = events(replies(cases_by_name(capture)["get_pid_self"]),
                       capture["taskstats_family"])
    async with tsemu_for(short_tmp, profile, capture) as server, \
            await Client.connect(server.socket_path) as client:
        task = server.tasks.spawn(comm="probe")
        ours = await client.get_pid(task.tid)
    kernel_record = theirs.records[0]
    assert (ours.values()["version"], ours.layout().size) == \
        (kernel_record.values()["version"], kernel_record.layout().size)


async def _group_exit_events(server: Any, *, threads: int = 2) -> tuple[int, list[bytes]]:
    """A process like the capture's child (forked, not exec'd, on CPU 0, a shared mm), ended
    by exit_group(5): its tgid and the exit datagrams a CPU-0 listener receives."""
    leader = server.tasks.spawn(
        comm="python", cpu=0, threads=threads, forked_no_exec=True,
        counters={"hiwater_rss": 16000, "hiwater_vm": 166000, "ac_exe_dev": 20,
                  "ac_exe_inode": 53449, "stime_ns": 12_000_000, "nvcsw": 4, "nivcsw": 1,
                  "cpu_count": 5, "cpu_delay_total": 300_000})
    for tid in server.tasks.group(leader.tid).tids:
        if tid != leader.tid:
            server.tasks.set(tid, nvcsw=1, nivcsw=3, cpu_count=5, cpu_delay_total=400_000)
    server.tasks.clock.advance(0.04)
    async with await Client.connect(server.socket_path) as client:
        await client.register("0")
        for report in server.tasks.exit_group(leader.tid, code=5):
            await server.broadcast(report)
        await server.settle()
        with trio.fail_after(5):
            got = [await client.recv() for _ in range(threads)]
    return leader.tid, got


@pytest.mark.parametrize("kernel", _rule_params("group_exit_order"))
async def test_group_exit_reports_as_this_kernel_usually_does(kernel: str, profile: Any,
                                                              short_tmp: Path) -> None:
    """Datagram sizes, and per record: which aggregate, whether the leader's, ac_flag and
    ac_exitcode, as in the kernel's most frequent exit_group sample."""
    capture = CAPTURES[kernel]
    usual, count, total = usual_group_exit(capture)
    assert count * 2 > total, f"no order is usual on {capture['kernel']}: {count}/{total}"
    async with tsemu_for(short_tmp, profile, capture) as server:
        tgid, got = await _group_exit_events(server)
    assert exit_shape(got, capture["taskstats_family"], tgid) == usual


@pytest.mark.parametrize("kernel", _rule_params("thread_reports_the_leaders_mm"))
async def test_thread_reports_the_leaders_mm(kernel: str, profile: Any,
                                             short_tmp: Path) -> None:
    capture = CAPTURES[kernel]
    family = capture["taskstats_family"]
    samples = [c for c in capture["cases"] if c["name"].startswith("exit_group_2_thread_")]
    assert all(thread_has_leaders_mm(replies(c), family, c["pid"]) for c in samples)
    async with tsemu_for(short_tmp, profile, capture) as server:
        tgid, got = await _group_exit_events(server)
    assert thread_has_leaders_mm(got, family, tgid)


@pytest.mark.parametrize("kernel", _rule_params("tgid_exit_record_sums_times"))
async def test_tgid_exit_record_sums_as_this_kernel_does(kernel: str, profile: Any,
                                                         short_tmp: Path) -> None:
    capture = CAPTURES[kernel]
    family = capture["taskstats_family"]
    samples = [c for c in capture["cases"] if c["name"].startswith("exit_group_2_thread_")
               or c["name"] == "exit_2_thread"]
    rule = {tgid_exit_sums_times(replies(c), family) for c in samples}
    assert len(rule) == 1, "the capture disagrees with itself"
    async with tsemu_for(short_tmp, profile, capture) as server:
        _, got = await _group_exit_events(server)
    assert tgid_exit_sums_times(got, family) == rule.pop()


@pytest.mark.parametrize("kernel", _rule_params("tgid_query_keeps_dead_threads"))
async def test_tgid_query_counts_dead_threads_as_this_kernel_does(kernel: str, profile: Any,
                                                                  short_tmp: Path) -> None:
    """A worker thread burns 0.2 s of CPU and exits; the leader lives on. Does GET TGID still
    count the worker's CPU time? (The capture's own case, replayed in the model.)"""
    capture = CAPTURES[kernel]
    cases = cases_by_name(capture)
    family = capture["taskstats_family"]
    (tgid_reply,) = events(replies(cases["get_tgid_after_thread_exit"]), family)
    (leader_reply,) = events(replies(cases["get_pid_leader_after_thread_exit"]), family)
    kernel_keeps = tgid_query_keeps_dead_threads(tgid_reply.records[0].values(),
                                                 leader_reply.records[0].values())
    async with tsemu_for(short_tmp, profile, capture) as server, \
            await Client.connect(server.socket_path) as client:
        leader = server.tasks.spawn(comm="python", cpu=0, forked_no_exec=True,
                                    counters={"stime_ns": 20_000_000})
        worker = server.tasks.clone_thread(leader.tid, counters={"utime_ns": 120_000_000,
                                                                 "stime_ns": 100_000_000})
        server.tasks.clock.advance(0.5)
        server.tasks.exit_task(worker.tid)
        tgid_values = (await client.get_tgid(leader.tid)).values()
        leader_values = (await client.get_pid(leader.tid)).values()
    assert tgid_query_keeps_dead_threads(tgid_values, leader_values) == kernel_keeps
    assert tgid_reply.records[0].aggr == TaskstatsType.AGGR_TGID
