"""The differential fuzz (tests/fuzzing.py): in CI against the host kernel, and its parts.

`test_no_undocumented_difference_from_the_host_kernel` runs 3 fixed seeds of 400 cases (a
few seconds) and fails on any difference that tests/known_differences.py does not name;
`make fuzz` runs 10 seeds of 3,000. It skips, with the reason printed, where there is no
root or no taskstats. The other tests need no host kernel: they check the harness itself
(cases reproducible from their seed, fuzzed bytes kept away from other families,
descriptors passed as the shim passes them, answers grouped and compared) with the kernel
model on both sides.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from tsemu.emulator.model.clock import VirtualClock
from tsemu.emulator.model.families import FamilyTable
from tsemu.emulator.model.kernel import Kernel, Send, Sender
from tsemu.emulator.model.profiles import PROFILES
from tsemu.emulator.model.table import ProcessTable
from tsemu.wire import split_datagram

from .fuzzing import (
    MUTATORS,
    Answer,
    Case,
    FAttr,
    FMsg,
    Machine,
    Normalised,
    Reply,
    compare,
    corpus,
    fuzz,
    make_case,
    normalise,
    sanitize,
    shim_descriptors,
)
from .hostkernel import require_host_taskstats
from .known_differences import KNOWN

SEEDS = (1, 2, 3)
CASES = 400


@pytest.mark.host
async def test_no_undocumented_difference_from_the_host_kernel() -> None:
    require_host_taskstats().close()
    report = await fuzz(SEEDS, CASES)
    print(report.text())
    assert report.cases == len(SEEDS) * CASES
    assert report.undocumented_cases == 0, report.text()


# ---------------------------------------------------------------------------------------
# The harness, without a host kernel


@pytest.fixture
def machine() -> Iterator[Machine]:
    file_fd, name = tempfile.mkstemp(prefix="tsemu-fuzz-")
    os.unlink(name)
    dir_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    m = Machine(family=0x1F, nr_cpus=2, nr_cpus_config=256, pid=4242, absent_pid=0x3FFFFFF0,
                foreign=frozenset({0x11, 0x13, 0x14}), unregistered=0x7FF0, cgroup_dir=None,
                cgroup_fd=dir_fd, file_fd=file_fd, closed_fd=1999)
    yield m
    m.close()


def test_a_case_is_its_seed_and_index(machine: Machine) -> None:
    entries = corpus(machine)
    assert [make_case(1, i, machine).datagram() for i in range(len(entries))] == \
        [c.datagram() for c in entries], "the corpus first, unmutated"
    again = [make_case(7, i, machine) for i in range(300)]
    for i, case in enumerate(again):
        twin = make_case(7, i, machine)
        assert (twin.datagram(), twin.cap_ack, twin.ext_ack) == \
            (case.datagram(), case.cap_ack, case.ext_ack)
    other = [make_case(8, i, machine).datagram() for i in range(len(entries), 300)]
    assert other != [c.datagram() for c in again[len(entries):]]
    used = {name for case in again for name in case.mutations}
    assert used == set(MUTATORS), f"mutations never drawn: {set(MUTATORS) - used}"


def test_fuzzed_bytes_never_reach_another_family(machine: Machine) -> None:
    datagram = (FMsg(0x14, 1, 1, (1, 1, 0)).encode() + FMsg(0x1F, 1, 2, (1, 1, 0)).encode()
                + FMsg(0x13, 5, 3, (3, 1, 0), [FAttr(1, b"\0\0\0\0")]).encode())
    types = [m.header.type for m in split_datagram(sanitize(datagram, machine))]
    assert types == [0x7FF0, 0x1F, 0x7FF0]
    for i in range(2000):
        for msg in split_datagram(sanitize(make_case(3, i, machine).datagram(), machine)):
            assert msg.header.type not in machine.foreign


def test_descriptors_travel_as_the_shim_sends_them(machine: Machine) -> None:
    def cgroupstats(fd: int, flags: int = 1, attr_type: int = 1) -> bytes:
        return FMsg(0x1F, flags, 1, (4, 1, 0), [FAttr(attr_type, fd.to_bytes(4, "little"))]
                    ).encode()

    assert shim_descriptors(cgroupstats(machine.file_fd), 0x1F) == [machine.file_fd]
    assert shim_descriptors(cgroupstats(machine.closed_fd), 0x1F) == []
    assert shim_descriptors(cgroupstats(machine.file_fd, flags=0x301), 0x1F) == []
    assert shim_descriptors(cgroupstats(machine.file_fd, attr_type=0x4001), 0x1F) == \
        [machine.file_fd]
    two = FMsg(0x1F, 1, 1, (4, 1, 0), [FAttr(1, b"\1\0"),
                                       FAttr(1, machine.file_fd.to_bytes(4, "little")),
                                       FAttr(1, machine.cgroup_fd.to_bytes(4, "little"))])
    assert shim_descriptors(two.encode(), 0x1F) == [machine.file_fd], "the first of 4 bytes"


def test_known_differences_are_named_once_with_a_reason() -> None:
    names = [k.name for k in KNOWN]
    assert len(names) == len(set(names))
    assert all(len(k.reason) > 40 for k in KNOWN)


def _kernel(m: Machine) -> Kernel:
    profile = PROFILES["6.18"]
    table = ProcessTable(VirtualClock(), profile, m.nr_cpus)
    for pid in sorted(m.tsemu_pids):
        table.spawn(pid=pid, comm="fuzz")
    return Kernel(table, profile=profile, nr_cpus=m.nr_cpus, families=FamilyTable.default(0x1F))


def test_the_model_against_itself_shows_no_difference(machine: Machine) -> None:
    """Both sides answered by the kernel model: every case groups and compares equal, so a
    difference the fuzz reports is a difference of the answers, not of the harness."""
    one, two = _kernel(machine), _kernel(machine)
    for i in range(1500):
        case = make_case(5, i, machine)
        datagram = sanitize(case.datagram(), machine)
        answers = []
        for kernel, port in ((one, 100), (two, 200)):
            sender = Sender(port, admin=True, cap_ack=case.cap_ack, ext_ack=case.ext_ack)
            sent: Answer = [a.data for a in kernel.handle(datagram, sender)
                            if isinstance(a, Send)]
            answers.append(normalise(sent, port, machine, host=False))
        outcome = compare(case, datagram, answers[0], answers[1], machine)
        assert outcome.documented == outcome.undocumented == [], (i, case.label)


def test_an_unexplained_difference_is_classed(machine: Machine) -> None:
    request = FMsg(0x1F, 5, 9, (99, 1, 0)).encode()
    case = Case("unknown cmd", [])
    kernel = Reply(True, 2, 0, 9, "PORT", (-22).to_bytes(4, "little", signed=True) + request)
    ours = Reply(True, 2, 0, 9, "PORT", (-95).to_bytes(4, "little", signed=True) + request)
    outcome = compare(case, request, Normalised([kernel]), Normalised([ours]), machine)
    assert outcome.undocumented == ["TASKSTATS cmd 99: kernel [ERR EINVAL] / "
                                    "tsemu [ERR EOPNOTSUPP]"]


def test_answers_to_twin_requests_are_grouped_apart(machine: Machine) -> None:
    """Two GETs with the same header: a reply goes to the first not yet answered, and so does
    an error; an ACK only to a request that asked for one."""
    def get(pid: int) -> bytes:
        return FMsg(0x1F, 1, 4, (1, 1, 0), [FAttr(1, pid.to_bytes(4, "little"))]).encode()

    datagram = get(machine.pid) + get(3)
    first, second = split_datagram(datagram)

    def new(pid: int) -> Reply:
        nest = FAttr(4, FAttr(1, pid.to_bytes(4, "little")).encode()
                     + FAttr(3, bytes(560)).encode()).encode()
        return Reply(True, 0x1F, 0, 4, "PORT", bytes([2, 1, 0, 0]) + nest)

    esrch = Reply(True, 2, 0, 4, "PORT", (-3).to_bytes(4, "little", signed=True) + second.raw)
    outcome = compare(Case("twins", []), datagram, Normalised([new(machine.pid), new(3)]),
                      Normalised([new(machine.pid), esrch]), machine)
    assert outcome.documented == ["a pid only the host has"] and not outcome.undocumented
    assert first.raw[:16] == second.raw[:16]
