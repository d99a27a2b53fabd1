"""Golden tests: the host kernel's own datagrams, decoded and re-encoded byte for byte.

tests/golden/kernel.json was captured from a real kernel by scripts/capture_golden.py. Each
reply must decode without error and encode back to exactly the same bytes; the requests the
kernel refused must make tsemu's decoders raise the errno the kernel answered, and
`encode_error` must rebuild the kernel's error message exactly, extended-ack TLVs included.
"""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from tsemu.wire import (
    AcFlag,
    ErrorMessage,
    ExtAck,
    FamilyReply,
    Message,
    MsgType,
    ReplyTemplate,
    TaskstatsReply,
    TaskstatsType,
    WireError,
    decode_genl,
    decode_getfamily,
    decode_message,
    decode_taskstats_get,
    encode_error,
    parse_cpumask_attr,
    split_datagram,
)
from tsemu.wire.constants import GENL_ID_CTRL

from .conftest import GOLDEN

CASES = json.loads(GOLDEN.read_text())["cases"]
NAMES = [c["name"] for c in CASES]

#: What KERNEL-FACTS.md says each request earns: a reply size, or an errno (0: an ACK).
#: Checked against the capture, so a re-capture on another kernel shows what changed.
EXPECTED: dict[str, list[tuple[str, int]]] = {
    "ctrl_get_taskstats": [("size", 112)],
    "ctrl_get_nlctrl": [("size", 136)],
    "ctrl_get_by_id": [("size", 112)],
    "ctrl_get_unknown_name": [("errno", errno.ENOENT)],
    "ctrl_get_unknown_id": [("errno", errno.ENOENT)],
    "ctrl_get_no_attr": [("errno", errno.EINVAL)],
    "ctrl_get_long_name": [("errno", errno.EINVAL)],
    "get_pid_self": [("size", 596)],
    "get_pid_self_ack": [("size", 596), ("errno", 0)],
    "get_tgid_self": [("size", 596)],
    "get_pid_and_tgid": [("size", 596)],
    "get_pid_u64": [("size", 596)],
    "get_pid_unknown": [("errno", errno.ESRCH)],
    "get_tgid_unknown": [("errno", errno.ESRCH)],
    "get_pid_zero": [("errno", errno.ESRCH)],
    "get_no_attr": [("errno", errno.EINVAL)],
    "get_unknown_attr": [("errno", errno.EINVAL)],
    "get_pid_short": [("errno", errno.ERANGE)],
    "register_zz": [("errno", errno.EINVAL)],
    "register_empty": [("errno", errno.ERANGE)],
    "register_nul": [("errno", 0)],
    "register_huge": [("errno", errno.ERANGE)],
    "register_overflow": [("errno", errno.EOVERFLOW)],
    "register_spaces": [("errno", 0)],
    "register_last": [("errno", 0)],
    "register_group": [("errno", 0)],
    "register_badgroup": [("errno", errno.EINVAL)],
    "register_all": [("errno", 0)],
    "register_toolong": [("errno", errno.E2BIG)],
    "deregister_ok": [("errno", 0)],
    "unknown_cmd": [("errno", errno.EOPNOTSUPP)],
    "unknown_family": [("errno", errno.ENOENT)],
    "genl_short": [("errno", errno.EINVAL)],
    "no_request_flag": [],
    "no_request_flag_ack": [("errno", 0)],
    "len_beyond_datagram": [],
    "several_requests": [("size", 596), ("errno", errno.ESRCH), ("size", 112)],
    "dump_taskstats_get": [("errno", errno.EOPNOTSUPP)],
    "cgroupstats_no_fd": [("errno", errno.EINVAL)],
    "cgroupstats_closed_fd": [],
    "cgroupstats_closed_fd_ack": [("errno", 0)],
    "get_unprivileged": [("errno", errno.EPERM)],
    "exit_1_thread": [("size", 596)],
    "exit_2_thread": [("size", 596), ("size", 1172)],
}


def _case(name: str) -> dict[str, Any]:
    return next(c for c in CASES if c["name"] == name)


def _replies(case: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(r) for r in case["replies"]]


def _request(case: dict[str, Any]) -> Message:
    return split_datagram(bytes.fromhex(case["request"]))[0]


@pytest.mark.parametrize("name", NAMES)
def test_every_reply_decodes_and_reencodes_exactly(name: str, golden: dict[str, Any]) -> None:
    for datagram in _replies(_case(name)):
        messages = split_datagram(datagram)
        assert messages, "a kernel datagram holds at least one message"
        encoded = b"".join(decode_message(m, golden["taskstats_family"]).encode()
                           for m in messages)
        assert encoded == datagram


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_capture_matches_the_documented_kernel_answers(name: str) -> None:
    seen = []
    for datagram in _replies(_case(name)):
        msg = split_datagram(datagram)[0]
        if msg.header.type == MsgType.ERROR:
            seen.append(("errno", -int.from_bytes(datagram[16:20], "little", signed=True)))
        else:
            seen.append(("size", len(datagram)))
    assert seen == EXPECTED[name]


#: Requests built in the canonical way (by tsemu.wire's encoders) that pass validation.
WELL_FORMED_REQUESTS = [
    "ctrl_get_taskstats", "ctrl_get_nlctrl", "ctrl_get_by_id", "ctrl_get_unknown_name",
    "ctrl_get_unknown_id", "ctrl_dump", "get_pid_self", "get_pid_self_ack", "get_tgid_self",
    "get_pid_and_tgid", "get_pid_unknown", "get_tgid_unknown", "get_pid_zero", "register_zz",
    "register_nul", "register_huge", "register_spaces", "register_all", "register_toolong",
    "deregister_ok", "several_requests", "cgroupstats_no_fd", "cgroupstats_closed_fd",
    "cgroupstats_v1", "get_unprivileged",
]


@pytest.mark.parametrize("name", WELL_FORMED_REQUESTS)
def test_requests_reencode_exactly(name: str, golden: dict[str, Any]) -> None:
    """Well-formed requests decode into values that encode back to the same bytes."""
    raw = bytes.fromhex(_case(name)["request"])
    messages = split_datagram(raw)
    assert messages
    assert b"".join(decode_message(m, golden["taskstats_family"]).encode()
                    for m in messages) == raw


def _kernel_error(datagram: bytes) -> ErrorMessage:
    decoded = decode_message(split_datagram(datagram)[0], 0)
    assert isinstance(decoded, ErrorMessage)
    return decoded


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith(("get_pid_short",
                                                                    "register_empty",
                                                                    "ctrl_get_long_name"))])
def test_policy_errors_rebuilt_byte_for_byte(name: str, golden: dict[str, Any]) -> None:
    case = _case(name)
    request = _request(case)
    genl = decode_genl(request)
    with pytest.raises(WireError) as raised:
        if request.header.type == GENL_ID_CTRL:
            decode_getfamily(genl)
        else:
            decode_taskstats_get(genl)
    kernel = _kernel_error(_replies(case)[0])
    assert -raised.value.errno == kernel.error
    rebuilt = encode_error(request, -raised.value.errno, golden["portid"],
                           cap_ack=case["cap_ack"], ext_ack=case["ext_ack"],
                           ext=ExtAck.of(raised.value))
    assert rebuilt == _replies(case)[0]


@pytest.mark.parametrize("name", [c["name"] for c in CASES if c["request"] and c["replies"]
                                  and "uid" not in c])
def test_plain_errors_and_acks_rebuilt_byte_for_byte(name: str, golden: dict[str, Any]) -> None:
    """Given the kernel's errno, `encode_error` gives the kernel's bytes (TLV-free replies)."""
    case = _case(name)
    requests = split_datagram(bytes.fromhex(case["request"]))
    for datagram in _replies(case):
        first = split_datagram(datagram)[0]
        if first.header.type != MsgType.ERROR:
            continue
        kernel = _kernel_error(datagram)
        if kernel.tlvs:
            continue
        request = next((r for r in requests if r.header.seq == first.header.seq), None)
        if request is None:  # the request was cut (genl_short): echo what the kernel saw
            request = Message(kernel.echoed_header, kernel.echo)
        rebuilt = encode_error(request, kernel.error, golden["portid"], cap_ack=case["cap_ack"])
        assert rebuilt == datagram


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("register_")])
def test_cpulist_errno_matches_the_kernel(name: str, golden: dict[str, Any]) -> None:
    case = _case(name)
    request = _request(case)
    kernel = _kernel_error(_replies(case)[0])
    try:
        payload = decode_taskstats_get(decode_genl(request)).register
        assert payload is not None
        parse_cpumask_attr(payload, golden["nr_cpus"], golden["nr_cpus_config"])
        ours = 0
    except WireError as exc:
        ours = -exc.errno
    assert ours == kernel.error


def test_genl_header_cut_short_is_einval() -> None:
    with pytest.raises(WireError) as raised:
        decode_genl(_request(_case("genl_short")))
    assert raised.value.errno == errno.EINVAL


def test_get_reply_holds_the_callers_record(golden: dict[str, Any]) -> None:
    case = _case("get_pid_self")
    reply = decode_message(split_datagram(_replies(case)[0])[0], golden["taskstats_family"])
    assert isinstance(reply, TaskstatsReply)
    assert reply.header.seq == 20 and reply.header.pid == golden["portid"]
    assert reply.version == 1
    (record,) = reply.records
    assert record.aggr == TaskstatsType.AGGR_PID and record.id == case["pid"]
    values = record.values()
    assert values["version"] == 16 and record.layout().size == 560
    assert values["ac_pid"] == values["ac_tgid"] == case["pid"]
    assert values["ac_comm"].startswith(b"python")
    for key in ("read_char", "write_char", "read_syscalls", "write_syscalls", "read_bytes",
                "write_bytes", "cancelled_write_bytes"):
        assert values[key] % 1024 == 0, f"{key} is rounded down to 1024 by the kernel"
    for cat in ("cpu", "blkio", "swapin", "freepages", "thrashing", "compact", "wpcopy", "irq"):
        if values[f"{cat}_count"]:
            assert values[f"{cat}_delay_max"] >= values[f"{cat}_delay_min"]
            assert values[f"{cat}_delay_max"] <= values[f"{cat}_delay_total"]


def test_reply_template_builds_the_kernels_bytes(golden: dict[str, Any]) -> None:
    datagram = _replies(_case("get_pid_self"))[0]
    reply = decode_message(split_datagram(datagram)[0], golden["taskstats_family"])
    assert isinstance(reply, TaskstatsReply)
    (record,) = reply.records
    template = ReplyTemplate(golden["taskstats_family"], TaskstatsType.AGGR_PID, 560)
    assert template.build(20, golden["portid"], record.id, record.stats) == datagram


def test_exit_of_a_thread_group_carries_both_records(golden: dict[str, Any]) -> None:
    """The last thread to exit (here the worker: the leader called _exit first and the worker
    was still unwinding) carries AGROUP and the TGID record; the earlier one carries neither."""
    case = _case("exit_2_thread")
    first, last = (
        decode_message(split_datagram(d)[0], golden["taskstats_family"]) for d in _replies(case)
    )
    assert isinstance(first, TaskstatsReply) and isinstance(last, TaskstatsReply)
    assert first.header.pid == 0 and last.header.pid == 0
    assert last.header.seq == first.header.seq + 1, "per-CPU sequence numbers"
    assert [r.aggr for r in first.records] == [TaskstatsType.AGGR_PID]
    assert not first.records[0].values()["ac_flag"] & AcFlag.AGROUP
    pid_rec, tgid_rec = last.records
    assert pid_rec.aggr == TaskstatsType.AGGR_PID and tgid_rec.aggr == TaskstatsType.AGGR_TGID
    assert {first.records[0].id, pid_rec.id} == {case["pid"], pid_rec.id}
    assert pid_rec.id != first.records[0].id and tgid_rec.id == case["pid"]
    assert pid_rec.values()["ac_tgid"] == case["pid"]
    assert pid_rec.values()["ac_flag"] & AcFlag.AGROUP
    tgid = tgid_rec.values()
    assert tgid["ac_pid"] == 0 and tgid["ac_comm"] == b"" and tgid["version"] == 16


def test_single_threaded_exit_has_no_tgid_record(golden: dict[str, Any]) -> None:
    case = _case("exit_1_thread")
    (event,) = (decode_message(split_datagram(d)[0], golden["taskstats_family"])
                for d in _replies(case))
    assert isinstance(event, TaskstatsReply)
    (record,) = event.records
    values = record.values()
    assert values["ac_exitcode"] == 3 << 8
    assert values["ac_flag"] & AcFlag.AGROUP and values["ac_flag"] & AcFlag.AFORK


def test_nlctrl_and_taskstats_families(golden: dict[str, Any]) -> None:
    ts = decode_message(split_datagram(_replies(_case("ctrl_get_taskstats"))[0])[0], 0)
    ctrl = decode_message(split_datagram(_replies(_case("ctrl_get_nlctrl"))[0])[0], 0)
    assert isinstance(ts, FamilyReply) and isinstance(ctrl, FamilyReply)
    assert ts.version == 2 and ts.family.name == "TASKSTATS"
    assert ts.family.id == golden["taskstats_family"] and ts.family.version == 1
    assert ts.family.ops == ((1, 0xB), (4, 0xA)) and ts.family.mcast_groups == ()
    assert ctrl.family.ops == ((3, 0xE), (10, 0xC))
    assert ctrl.family.mcast_groups == ((0x10, "notify"),)


def test_dump_lists_families_then_done() -> None:
    messages = [m for d in _replies(_case("ctrl_dump")) for m in split_datagram(d)]
    decoded = [decode_message(m, 0) for m in messages]
    names = [d.family.name for d in decoded if isinstance(d, FamilyReply)]
    assert "nlctrl" in names and "TASKSTATS" in names
    assert all(isinstance(d, FamilyReply) for d in decoded[:-1])
    assert type(decoded[-1]).__name__ == "Done"
