"""Kernel generations: each rule that tells one generation from another, tested where it changed.

Every test names the kernel version (and commit, where known) that changed the rule it checks;
the table itself is `tsemu.emulator.model.profiles`. Generations that cannot be booted here are
checked against their source: 2.6.31 against the seed `003_...txt` (taskstats.c as of 2.6.31).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from tsemu.client import Client
from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.families import FamilyTable
from tsemu.emulator.model.kernel import Kernel, Send, Sender
from tsemu.emulator.model.profiles import (
    BACKPORTS,
    GENERATIONS,
    PROFILES,
    KernelProfile,
    host_profile,
    nearest,
    profile,
)
from tsemu.emulator.model.table import ProcessTable
from tsemu.emulator.scenario import ScenarioError
from tsemu.emulator.scenario.files import read_text
from tsemu.emulator.shell.server import running_server
from tsemu.wire import (
    AcFlag,
    Flag,
    SockOpt,
    decode_error,
    decode_message,
    encode_attr,
    encode_genl,
    encode_getfamily,
    encode_taskstats_get,
    split_datagram,
)
from tsemu.wire.netlink import pack_genl_header, pack_header

PORT = 4242

#: The generations a client meets, as issue 14 lists them.
LISTED = ("2.6.31", "3.10", "4.18", "5.4", "5.10", "5.14", "5.15", "6.1", "6.6", "6.8",
          "6.12", "6.18", "7.2")


def _kernel(p: KernelProfile, nr_cpus: int = 2) -> tuple[Kernel, ProcessTable]:
    table = ProcessTable(VirtualClock(), p, nr_cpus)
    return Kernel(table, profile=p, nr_cpus=nr_cpus), table


def _answers(kernel: Kernel, datagram: bytes, *, admin: bool = True, cap_ack: bool = False,
             ext_ack: bool = False) -> list[Any]:
    sender = Sender(PORT, admin=admin, cap_ack=cap_ack, ext_ack=ext_ack)
    family = kernel.taskstats.id
    return [decode_message(m, family) for a in kernel.handle(datagram, sender)
            if isinstance(a, Send) for m in split_datagram(a.data)]


def _error(kernel: Kernel, datagram: bytes, **options: bool) -> Any:
    """The NLMSG_ERROR (or ACK) that ends the answer to `datagram`."""
    sender = Sender(PORT, admin=True, **options)
    sends = [a for a in kernel.handle(datagram, sender) if isinstance(a, Send)]
    return decode_error(split_datagram(sends[-1].data)[-1])


# --- the table ------------------------------------------------------------------------------


def test_every_listed_generation_has_a_row_oldest_first() -> None:
    assert tuple(PROFILES) == LISTED
    assert [g.generation for g in GENERATIONS] == list(LISTED)
    for row in GENERATIONS:
        assert row.versions.startswith(row.generation), row.versions


@pytest.mark.parametrize(("name", "version", "size"), [
    # 2.6.31: v7 (freepages, 2.6.28); 3.10, 4.18: v8 (TASKSTATS_TYPE_NULL, no new field);
    # 5.4: v9 thrashing (4.20, b1d29ba82cf2); 5.10-5.15: v10 ac_btime64 (5.6); 6.1: v13
    # wpcopy; 6.6-6.12: v14 irq (6.4); 6.18: v16 (6.16); 7.2: v17 (7.0, 503efe850c74).
    ("2.6.31", 7, 328), ("3.10", 8, 328), ("4.18", 8, 328), ("5.4", 9, 344),
    ("5.10", 10, 352), ("5.14", 10, 352), ("5.15", 10, 352), ("6.1", 13, 416),
    ("6.6", 14, 432), ("6.8", 14, 432), ("6.12", 14, 432), ("6.18", 16, 560),
    ("7.2", 17, 688),
])
def test_struct_version_and_size(name: str, version: int, size: int) -> None:
    p = PROFILES[name]
    assert (p.taskstats_version, p.struct_size) == (version, size)
    kernel, table = _kernel(p)
    task = table.spawn(comm="me")
    (reply,) = _answers(kernel, encode_taskstats_get(kernel.taskstats.id, pid=task.tid))
    (record,) = reply.records
    assert len(record.stats) == size and record.values()["version"] == version


def test_delay_categories_follow_the_struct_version() -> None:
    base = ("cpu", "blkio", "swapin", "freepages")
    assert PROFILES["2.6.31"].delay_categories == base  # freepages: v7, 2.6.28
    assert PROFILES["5.4"].delay_categories == (*base, "thrashing")  # v9, 4.20
    assert PROFILES["5.15"].delay_categories == (*base, "thrashing")  # compact: v11, 5.17
    assert PROFILES["6.1"].delay_categories == (*base, "thrashing", "compact", "wpcopy")
    assert PROFILES["6.6"].delay_categories[-1] == "irq"  # v14, 6.4


def test_a_generation_name_picks_its_modelled_point_release() -> None:
    assert PROFILES["6.1"].release == "6.1.192" and PROFILES["6.1"].name == "6.1"
    assert profile("6.1") is PROFILES["6.1"]
    assert profile("6.1.0").name == "6.1.0" and profile("6.1.0").generation == "6.1"
    assert profile("6.1.191-amd64").release == "6.1.191"
    with pytest.raises(ValueError, match="unknown kernel profile '6.3'"):
        profile("6.3")
    with pytest.raises(ValueError, match="unknown kernel profile"):
        profile("host")


def test_backports_apply_from_their_point_release_on() -> None:
    # The 2026 fix "taskstats: retain dead thread stats in TGID queries" (Cc: stable):
    # Debian's 6.1.192 has it, upstream 6.1.0 did not.
    assert not profile("6.1.0").tgid_exit_times
    assert profile("6.1.192").tgid_exit_times and profile("6.1.250").tgid_exit_times
    assert not profile("6.6.0").tgid_exit_times and profile("6.6.147").tgid_exit_times
    assert PROFILES["7.2"].tgid_exit_times  # mainline by 7.2
    for backport in BACKPORTS:
        assert backport.generation in PROFILES and backport.since.startswith(
            backport.generation + ".")


def test_the_host_gets_its_generation_or_the_nearest_older_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert nearest("6.18.44-fc-v595") == (profile("6.18.44"), True)
    assert nearest("6.9.3-arch1-1") == (PROFILES["6.8"], False)
    assert nearest("5.14.0-427.13.1.el9_4.x86_64") == (profile("5.14.0"), True)
    assert nearest("2.6.18-419.el5") == (PROFILES["2.6.31"], False)  # older than every row
    assert nearest("9.1.0") == (PROFILES["7.2"], False)

    class Uname:
        release = "6.10.4-zen"

    monkeypatch.setattr(os, "uname", lambda: Uname())
    chosen, said = host_profile()
    assert chosen is PROFILES["6.8"]
    assert "6.10.4-zen" in said and "nearest older" in said


# --- genetlink and nlctrl -------------------------------------------------------------------


def test_get_needs_cap_net_admin_from_3_1() -> None:
    # 1a51410abe7d "Make taskstats require root access" (3.1, CVE-2011-2494); the seed's
    # 2.6.31 registers TASKSTATS_CMD_GET without GENL_ADMIN_PERM: an unprivileged GET is
    # answered, with a v7 struct.
    old, _ = _kernel(PROFILES["2.6.31"])
    table = old.tasks
    assert isinstance(table, ProcessTable)
    task = table.spawn(comm="me")
    (reply,) = _answers(old, encode_taskstats_get(old.taskstats.id, pid=task.tid), admin=False)
    assert reply.records[0].values()["version"] == 7
    for name in ("3.10", "6.18"):
        new, new_table = _kernel(PROFILES[name])
        task = new_table.spawn(comm="me")
        error = _error_as(new, encode_taskstats_get(new.taskstats.id, pid=task.tid),
                          admin=False)
        assert error.error == -errno.EPERM, name


def _error_as(kernel: Kernel, datagram: bytes, *, admin: bool) -> Any:
    (action,) = kernel.handle(datagram, Sender(PORT, admin=admin))
    assert isinstance(action, Send)
    return decode_error(split_datagram(action.data)[0])


@pytest.mark.parametrize(("name", "family_id", "maxattr", "get_flags"), [
    ("2.6.31", 0x11, 4, 0xA),  # GENL_ID_GENERATE's first id; family-wide policy; no ADMIN_PERM
    ("3.10", 0x11, 4, 0xB),  # ADMIN_PERM from 3.1; ids generated until 4.10
    ("5.4", 0x1F, 4, 0xB),  # per-op policies (maxattr 0) from 5.10
    ("5.10", 0x1F, 0, 0xB),
    ("6.1", 0x1F, 0, 0xB),  # measured: Debian 6.1.192
    ("6.12", 0x22, 0, 0xB),  # measured: Debian 6.12.118
    ("7.2", 0x24, 0, 0xB),  # measured: Debian 7.2.13
])
def test_getfamily_taskstats(name: str, family_id: int, maxattr: int, get_flags: int) -> None:
    kernel, _ = _kernel(PROFILES[name])
    (reply,) = _answers(kernel, encode_getfamily(name="TASKSTATS", seq=1))
    family = reply.family
    assert (family.id, family.maxattr) == (family_id, maxattr)
    assert family.ops == ((1, get_flags), (4, 0xA))


@pytest.mark.parametrize(("name", "ops", "maxattr"), [
    ("2.6.31", ((3, 0xE),), 7),  # CTRL_ATTR_MAX as it stood: MCAST_GROUPS
    ("5.4", ((3, 0xE),), 7),  # CTRL_CMD_GETPOLICY from 5.7 (d07dcf9aadd6)
    ("5.10", ((3, 0xE), (10, 0xC)), 0),  # per-op policies from 5.10
    ("6.18", ((3, 0xE), (10, 0xC)), 0),  # measured: 136 bytes
])
def test_getfamily_nlctrl(name: str, ops: tuple[tuple[int, int], ...], maxattr: int) -> None:
    kernel, _ = _kernel(PROFILES[name])
    (reply,) = _answers(kernel, encode_getfamily(name="nlctrl", seq=1))
    assert reply.family.ops == ops and reply.family.maxattr == maxattr
    assert reply.family.mcast_groups == ((0x10, "notify"),)


def test_genl_header_is_checked_from_6_1() -> None:
    # "genetlink: start to validate reserved header bytes" (6.1): an unknown command with a
    # reserved field set is EINVAL from then on, EOPNOTSUPP before.
    for name, err in (("5.15", errno.EOPNOTSUPP), ("6.1", errno.EINVAL)):
        kernel, _ = _kernel(PROFILES[name])
        body = pack_genl_header(99, 1, 7)
        datagram = pack_header(16 + len(body), kernel.taskstats.id, Flag.REQUEST, 1, 0) + body
        assert _error(kernel, datagram).error == -err, name


def test_cap_ack_from_4_3_and_ext_ack_from_4_12() -> None:
    # 0a6a3a23ea6e NETLINK_CAP_ACK (4.3), 2d4bc93368f5 NETLINK_EXT_ACK (4.12): an older kernel
    # refuses the options, so its errors echo the whole request with no extended-ack TLVs.
    for name, capped, tlvs in (("3.10", False, False), ("4.18", True, True)):
        kernel, _ = _kernel(PROFILES[name])
        # a 2-byte PID: a policy error (ERANGE), the kind that carries extended-ack TLVs
        bad = encode_genl(kernel.taskstats.id, Flag.REQUEST, 1, 0, 1, 1,
                          encode_attr(1, b"\x01\x00"))
        error = _error(kernel, bad, cap_ack=True, ext_ack=True)
        assert error.error == -errno.ERANGE
        assert error.capped is capped, name
        assert bool(error.tlvs) is tlvs, name


# --- TASKSTATS ------------------------------------------------------------------------------


def _two_threads(p: KernelProfile) -> tuple[Kernel, ProcessTable, int, int]:
    kernel, table = _kernel(p)
    leader = table.spawn(comm="p", counters={"utime_ns": 5_000_000, "nvcsw": 3})
    thread = table.clone_thread(leader.tid, counters={"utime_ns": 7_000_000, "nvcsw": 4})
    return kernel, table, leader.tid, thread.tid


def test_tgid_query_adds_live_threads_times_from_2_6_37() -> None:
    # 8c733420bdd5 "taskstats: add e/u/stime for TGID command" (2.6.37): the seed's 2.6.31
    # fill_tgid adds only the delays and the context switches of each live thread.
    for name, utime in (("2.6.31", 0), ("3.10", 12_000)):
        kernel, table, leader, _ = _two_threads(PROFILES[name])
        values = table.tgid_stats(leader)
        assert values["ac_utime"] == utime, name
        assert values["nvcsw"] == 7, name


def test_tgid_exit_keeps_dead_threads_times_with_the_2026_fix() -> None:
    # "taskstats: retain dead thread stats in TGID queries": after a thread's exit, 6.1.0's
    # TGID query counts only the live leader's times and switches (the dead thread's delays
    # stay); Debian's 6.1.192 (the stable backport) keeps the dead thread's times too.
    for name, utime, nvcsw in (("6.1.0", 5_000, 3), ("6.1.192", 7_000 + 5_000, 7)):
        kernel, table, leader, thread = _two_threads(profile(name))
        table.exit_task(thread)
        values = table.tgid_stats(leader)
        assert (values["ac_utime"], values["nvcsw"]) == (utime, nvcsw), name


def test_agroup_and_every_threads_exit_code_from_5_17() -> None:
    # struct v12 (5.17): the last thread's record carries AGROUP ("AGROUP since version 12")
    # and every thread its exit code; before, only the leader's record had the exit code.
    for name, agroup, thread_code in (("5.15", 0, 0), ("6.1", AcFlag.AGROUP, 3 << 8)):
        _, table, leader, thread = _two_threads(PROFILES[name])
        first, last = table.exit_group(leader, code=3)
        assert first.tid == leader and first.pid_values["ac_exitcode"] == 3 << 8
        assert last.tid == thread and last.pid_values["ac_exitcode"] == thread_code, name
        assert last.pid_values["ac_flag"] & AcFlag.AGROUP == agroup, name
        assert last.tgid_values is not None


async def _events(client: Client, quiet: float = 0.1) -> list[Any]:
    got = []
    while True:
        with trio.move_on_after(quiet):
            got.append(await client.next_event())
            continue
        return got


@pytest.mark.parametrize(("name", "copies"), [("2.6.31", 2), ("3.10", 1), ("6.18", 1)])
async def test_a_duplicate_register_is_heard_twice_before_3_0(
        name: str, copies: int, short_tmp: Path) -> None:
    # 26c4caea9d69 "taskstats: don't allow duplicate entries in listener mode" (3.0,
    # CVE-2011-2484): the seed's 2.6.31 adds an entry per REGISTER, each hears every exit,
    # and a DEREGISTER takes one entry off.
    p = PROFILES[name]
    table = ProcessTable(VirtualClock(), p, 2)
    async with running_server(short_tmp / "genl.sock", table, profile=p, nr_cpus=2) as server:
        async with await Client.connect(server.socket_path) as c:
            await c.register("0")
            await c.register("0")
            assert server.listeners.listeners() == {0: [c.port] * copies}
            task = table.spawn(comm="once", cpu=0)
            await server.broadcast(table.exit_task(task.tid))
            await server.settle()
            events = await _events(c)
            assert [e.records[0].id for e in events] == [task.tid] * copies
            await c.deregister("0")
            assert server.listeners.listeners() == ({0: [c.port]} if copies == 2 else {})


async def test_every_entry_of_a_gone_listener_is_dropped(short_tmp: Path) -> None:
    p = PROFILES["2.6.31"]
    table = ProcessTable(VirtualClock(), p, 1)
    async with running_server(short_tmp / "genl.sock", table, profile=p, nr_cpus=1) as server:
        gone = await Client.connect(server.socket_path)
        await gone.register("0")
        await gone.register("0")
        gone.close()
        with trio.fail_after(5):
            while server.listeners.listeners():
                await trio.sleep(0.01)


async def test_setting_cap_ack_on_an_old_kernel_changes_nothing(short_tmp: Path) -> None:
    p = PROFILES["2.6.31"]
    table = ProcessTable(VirtualClock(), p, 1)
    async with running_server(short_tmp / "genl.sock", table, profile=p, nr_cpus=1) as server:
        async with await Client.connect(server.socket_path) as c:
            await c.set_option(SockOpt.CAP_ACK, 1)
            request = encode_taskstats_get(p.taskstats_family_id, pid=99999, seq=5)
            await c.send(request)
            with trio.fail_after(2):
                (message,) = split_datagram(await c.recv())
            error = decode_error(message)
            assert error.error == -errno.ESRCH and error.echo == request


# --- the machine ----------------------------------------------------------------------------


def test_nr_cpus_is_the_machines_and_bounds_cpumask_strings() -> None:
    # TASKSTATS_CPUMASK_MAXLEN = 100 + 6 * NR_CPUS, whatever the version: Debian, Ubuntu and
    # RHEL build with 8192, the golden capture's host with 256.
    default = read_text('[machine]\nkernel = "6.1"\n', "t.toml").machine
    small = read_text('[machine]\nnr_cpus = 256\n', "t.toml").machine
    assert (default.nr_cpus, small.nr_cpus) == (8192, 256)
    long_mask = "0," * 1000 + "1"  # 2001 bytes with its NUL: past 100 + 6 * 256
    for machine, err in ((default, 0), (small, errno.E2BIG)):
        p = machine.profile
        table = ProcessTable(VirtualClock(), p, 2)
        kernel = Kernel(table, profile=p, nr_cpus=2, nr_cpus_config=machine.nr_cpus,
                        families=machine.families())
        request = encode_taskstats_get(kernel.taskstats.id, register=long_mask,
                                       flags=Flag.REQUEST | Flag.ACK)
        assert _error(kernel, request).error == -err
    with pytest.raises(ScenarioError, match="cpus"):
        read_text('[machine]\nnr_cpus = 4\ncpus = 8\n', "t.toml")


def test_a_scenario_gets_its_kernels_family_id_unless_it_names_one() -> None:
    assert read_text('[machine]\nkernel = "7.2"\n', "t.toml").machine.families(
    ).families[1].id == 0x24
    assert read_text('[machine]\nkernel = "7.2"\nfamily_id = 0x30\n', "t.toml").machine.families(
    ).families[1].id == 0x30
    assert read_text('[machine]\nkernel = "6.1.0"\n', "t.toml").machine.profile == profile(
        "6.1.0")
    assert FamilyTable.default(profile=PROFILES["2.6.31"]).families[1].id == 0x11


# --- ctl-made processes ---------------------------------------------------------------------


def test_exit_group_reports_the_leader_first_unless_asked() -> None:
    # Measured on Debian 6.1, 6.12, 7.2: the leader first (ac_flag 0), then the other thread
    # with AXSIG|AGROUP and the AGGR_TGID record, in 11 exits of 12.
    _, table, leader, thread = _two_threads(PROFILES["6.18"])
    first, last = table.exit_group(leader)
    assert (first.tid, first.pid_values["ac_flag"], first.tgid_values) == (leader, 0, None)
    assert last.tid == thread and last.pid_values["ac_flag"] == AcFlag.AXSIG | AcFlag.AGROUP
    assert last.tgid_values is not None
    _, table, leader, thread = _two_threads(PROFILES["6.18"])
    first, last = table.exit_group(leader, leader_last=True)
    assert (first.tid, last.tid) == (thread, leader)
    with pytest.raises(ValueError, match="not both"):
        table.exit_group(table.spawn(comm="q", threads=2).tid, caller=1, leader_last=True)


def test_spawned_threads_share_the_leaders_mm_and_exe() -> None:
    # A thread reports its leader's hiwater_rss, hiwater_vm, ac_exe_dev, ac_exe_inode (the
    # one mm and its executable), as measured on Debian 6.1, 6.12 and 7.2.
    table = ProcessTable(VirtualClock(), PROFILES["6.18"], 2)
    shared = {"hiwater_rss": 2048, "hiwater_vm": 8192, "ac_exe_dev": 0x801,
              "ac_exe_inode": 1234}
    leader = table.spawn(comm="p", threads=3, counters={**shared, "nvcsw": 9})
    for tid in table.group(leader.tid).tids[1:]:
        values = table.pid_stats(tid)
        assert {k: values[k] for k in shared} == shared
        assert values["nvcsw"] == 0
