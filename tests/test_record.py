"""Recording and replay (issue 16): pcap captures, the recorded_exit action, anonymizing,
`tsemu diff`, and a real recording of the host replayed to a listener byte for byte.

The host tests need root and a kernel with taskstats (CI has both) and skip with the reason
elsewhere; the tshark test needs tshark (`make install` puts it there where it may)."""

from __future__ import annotations

import base64
import errno
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.client import Client
from tsemu.emulator.record.anonymize import Anonymizer
from tsemu.emulator.record.diff import diff_captures, diff_files, diff_messages
from tsemu.emulator.record.document import to_document
from tsemu.emulator.scenario import ScenarioError, parse_scenario
from tsemu.emulator.shell.capture import Capture, PcapWriter, open_new
from tsemu.emulator.shell.runner import Emulator
from tsemu.wire import layout, pcap
from tsemu.wire.runs import MessageRun
from tsemu.wire.taskstats import encode_taskstats_new

from .hostkernel import require_host_taskstats

TSEMU = [sys.executable, "-m", "tsemu.cli.app"]


def _event(pid: int, tgid: int, *, comm: bytes = b"worker", uid: int = 1000, seq: int = 9,
           family: int = 0x1F, tgid_record: bool = False, **fields: int) -> bytes:
    """An exit event as a 6.18 kernel sends it; its values need not be what tsemu's
    accounting would make (cpu_run_real_total apart from utime + stime, say)."""
    stats = layout(16).build({"ac_pid": pid, "ac_tgid": tgid, "ac_comm": comm, "ac_uid": uid,
                              "ac_gid": uid, "ac_etime": 123_456, "cpu_run_real_total": 987,
                              "ac_utime": 5, "read_bytes": 4096, "ac_flag": 0x20, **fields})
    records: list[tuple[Any, int, bytes]] = [(4, pid, stats)]
    if tgid_record:
        records.append((5, tgid, layout(16).build({"nvcsw": 77, "cpu_count": 3})))
    return encode_taskstats_new(family, records, seq=seq, portid=0)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _owned(data: bytes) -> bytes:
    """A message with what the emulator owns (seq, port id) zeroed, for comparisons."""
    return data[:8] + bytes(8) + data[16:]


# -- pcap ----------------------------------------------------------------------------------


def test_cooked_header_is_the_nlmon_layout() -> None:
    # packet type (PACKET_KERNEL), ARPHRD_NETLINK 824, address length 0, 8 zero bytes,
    # NETLINK_GENERIC 16: every field big-endian
    assert pcap.TO_KERNEL.hex() == "0007" "0338" "0000" + "00" * 8 + "0010"
    assert pcap.TO_USER[:2] == b"\x00\x06"
    head = pcap.file_header()
    assert head[:4] == bytes.fromhex("d4c3b2a1") and head[20:24] == (253).to_bytes(4, "little")


def test_packets_read_back_with_their_direction() -> None:
    request = bytes.fromhex("1c0000001f00010001000000000000000101000008000100" "2a000000")
    reply = _event(42, 42, seq=1)
    blob = pcap.file_header() + pcap.record(5_000_001_000, pcap.TO_KERNEL, request) \
        + pcap.record(5_000_002_000, pcap.TO_USER, reply) \
        + pcap.record(5_000_003_000, pcap.cooked_header(pcap.PacketType.OUTGOING), request) \
        + pcap.record(5_000_004_000, pcap.cooked_header(pcap.PacketType.OUTGOING), reply)
    packets = list(pcap.read_packets(blob))
    assert [p.to_kernel for p in packets] == [True, False, True, False]  # type 4: by REQUEST
    assert [p.ts_ns for p in packets] == [5_000_001_000, 5_000_002_000, 5_000_003_000,
                                          5_000_004_000]
    assert packets[1].data == reply and packets[0].protocol == 16


def test_capture_rotates_by_size_and_refuses_to_follow_links(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    event = _event(42, 42)
    capture = Capture(path, rotate_bytes=4096, keep=3)
    for _ in range(40):
        capture.outbound(event)
    capture.close()
    # 628-byte packets, six to a 4096-byte file: seven files, the newest three kept
    assert [p.name for p in capture.files] == ["c.pcap.4", "c.pcap.5", "c.pcap.6"]
    assert not path.exists()  # the oldest went
    for name in capture.files:
        assert name.stat().st_size <= 4096
        assert all(p.data == event for p in pcap.read_packets(name.read_bytes()))
    (tmp_path / "target").write_bytes(b"keep me")
    os.symlink(tmp_path / "target", tmp_path / "link.pcap")
    with pytest.raises(OSError):
        Capture(tmp_path / "link.pcap", force=True)
    with pytest.raises(FileExistsError):
        Capture(tmp_path / "target")
    assert (tmp_path / "target").read_bytes() == b"keep me"


def _traffic(capture: Capture, seed: int) -> None:
    """Requests, replies, runs of events (whole and cut) and lists of events of two lengths,
    several MiB of them, each dropped by the caller as soon as it is captured (as the server
    drops its runs once sent: their memory is handed out again at once)."""
    rng = random.Random(seed)
    for i in range(600):
        capture.inbound(bytes([i % 256]) * rng.choice([20, 36]))
        capture.outbound(bytes([(i + 1) % 256]) * rng.choice([16, 368]))
        size = rng.choice([428, 604])
        n = rng.randint(1, 40)
        run = MessageRun(bytes(rng.getrandbits(8) for _ in range(size)) * n, size)
        capture.outbound_events(run[rng.randint(0, n - 1):], rng.randint(0, n))
        capture.outbound_events([bytes([7]) * 428, bytes([8]) * 604], rng.randint(0, 2))
        del run
        _ = [bytes([0xEE]) * size * n for _ in range(4)]  # the freed memory, reused


def test_a_writer_process_writes_what_the_server_would_itself(tmp_path: Path) -> None:
    """`serve --pcap`'s writer process, fed through the pipe (by reference where vmsplice
    may be had), writes the very files an in-process writer does, rotation included."""
    files = {}
    for child in (False, True):
        path = tmp_path / f"{child}.pcap"
        capture = Capture(path, rotate_bytes=1 << 20, child=child, clock=itertools.count(
            1_700_000_000_000_000_000, 1000).__next__)
        if child:  # out of the way of the clients it shares a CPU with
            assert os.sched_getscheduler(capture._child.pid) == os.SCHED_BATCH
        _traffic(capture, seed=5)
        capture.close()
        files[child] = [name.read_bytes() for name in itertools.takewhile(
            Path.exists, (path.with_name(f"{path.name}.{i}".removesuffix(".0"))
                          for i in itertools.count()))]
    assert len(files[False]) > 2 and files[True] == files[False]


def test_a_dead_writer_ends_the_capture_not_the_server(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dead.pcap"
    capture = Capture(path, child=True)
    run = MessageRun(bytes(range(200)) * 64, 400)
    capture.outbound_events(run, len(run))
    capture.flush()
    assert capture._child is not None
    capture._child.kill()
    capture._child.wait()
    for _ in range(3):  # the first flush finds the pipe broken, the others do nothing
        capture.inbound(b"\x14" * 20)
        capture.outbound_events(run, len(run))
        capture.flush()
    capture.close()
    err = capsys.readouterr().err
    assert err.count("has stopped; capture ends") == 1, err
    assert capture.packets == 4 * len(run) + 3


_packet_groups = st.lists(st.tuples(st.integers(1, 3), st.sampled_from([0, 16, 20, 596]),
                                    st.booleans(), st.integers(1, 40) | st.just(700)),
                          max_size=12)


@settings(max_examples=60, deadline=None)
@given(groups=_packet_groups, rotate=st.sampled_from([None, 700, 4096, 20_000]))
def test_a_written_batch_is_its_packets_one_record_each(tmp_path_factory: pytest.TempPathFactory,
                                                        groups: list[tuple[int, int, bool, int]],
                                                        rotate: int | None) -> None:
    """Whatever the batch (groups of packets alike in time, length and way, of one packet or
    more than one writev takes; empty ones; rotation cutting a group), the files hold each
    packet as its own record, in order, and no file passes the rotation size unless one
    packet alone does."""
    tmp = tmp_path_factory.mktemp("pcap")
    packets = []
    for ts, length, to_kernel, count in groups:
        for _ in range(count):
            data = bytes([len(packets) % 256]) * length
            packets.append(pcap.Packet(ts * 1_000_000_123, to_kernel,
                                       7 if to_kernel else 6, 16, data))
    path = tmp / "w.pcap"
    writer = PcapWriter(path, open_new(path, force=False), rotate_bytes=rotate)
    writer.write(array("q", [ts * 1_000_000_123 // 1000 * 1000 for ts, *_ in groups]),
                 array("I", [length for _, length, _, _ in groups]),
                 array("I", [count for *_, count in groups]),
                 bytes(to_kernel for _, _, to_kernel, _ in groups),
                 b"".join(p.data for p in packets))
    writer.close()
    read = [q for name in writer.files for q in pcap.read_packets(name.read_bytes())]
    assert [(q.ts_ns, q.to_kernel, q.data) for q in read] == \
        [(p.ts_ns // 1000 * 1000, p.to_kernel, p.data) for p in packets]
    for name in writer.files:
        size = name.stat().st_size
        assert rotate is None or size <= rotate or \
            len(list(pcap.read_packets(name.read_bytes()))) == 1


def test_serve_pcap_refuses_an_existing_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "old.pcap").write_bytes(b"x")
    done = subprocess.run([*TSEMU, "serve", "--socket", str(tmp_path / "s"), "--pcap",
                           str(tmp_path / "old.pcap")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"tsemu: {tmp_path / 'old.pcap'} exists: give --force to replace it"]


SERVED = """
[machine]
cpus = 2
clock = "virtual"

[[process]]
pid = 4242
comm = "worker"
cpu = 1

[[timeline]]
at = "1s"
exit = { pid = 4242, code = 3 }
"""


async def _captured_session(directory: Path) -> tuple[Path, bytes, bytes]:
    """A served machine with a capture: a client resolves the family, GETs pid 4242, listens
    on CPU 1 and hears 4242 exit. Returns the capture and the reply and event it got."""
    emulator = Emulator(parse_scenario(SERVED), directory / "genl.sock", proc_view=False)
    path = directory / "served.pcap"
    emulator.server.capture = capture = Capture(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        async with await Client.connect(emulator.socket_path) as client:
            await client.family_id()
            await client.get_pid(4242)
            await client.register("1")
            await emulator.advance(1)
            with trio.fail_after(5):
                await client.next_event()
        nursery.cancel_scope.cancel()
    capture.close()
    packets = list(pcap.read_packets(path.read_bytes()))
    reply = next(p.data for p in packets if not p.to_kernel and p.data[16] == 2
                 and p.data[12:16] != bytes(4))
    event = next(p.data for p in packets if not p.to_kernel and p.data[12:16] == bytes(4)
                 and p.data[4:6] == b"\x1f\x00")
    return path, reply, event


async def test_serve_capture_holds_every_message_in_and_out(short_tmp: Path) -> None:
    path, reply, event = await _captured_session(short_tmp)
    packets = list(pcap.read_packets(path.read_bytes()))
    ways = [p.to_kernel for p in packets]
    # GETFAMILY and its reply, GET and its reply, REGISTER and its ACK, then the event
    assert ways == [True, False, True, False, True, False, False]
    assert packets[1].data[4:6] == b"\x10\x00" and packets[-1].data == event
    assert int.from_bytes(reply[28:32], "little") == 4242


async def test_the_capture_holds_only_the_events_a_listener_was_given(short_tmp: Path) -> None:
    """As nlmon sees it: events an overrun dropped (ENOBUFS) never reached the socket, so
    they are not in the capture; the ones the listener reads are."""
    many = "[machine]\ncpus = 2\nclock = \"virtual\"\n\n[[process]]\ncount = 60\n" \
        "pid = 5000\ncomm = \"w{i}\"\ncpu = 1\n\n" + "".join(
            f"[[timeline]]\nat = \"1s\"\nexit = {{ pid = {5000 + i} }}\n" for i in range(60))
    emulator = Emulator(parse_scenario(many), short_tmp / "genl.sock", proc_view=False)
    path = short_tmp / "overrun.pcap"
    emulator.server.capture = capture = Capture(path)
    read = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        async with await Client.connect(emulator.socket_path) as client:
            await client.set_rcvbuf(4096)  # room for a few events only
            await client.register("1")
            await emulator.advance(1)
            overrun = False
            while True:
                try:
                    with trio.move_on_after(0.5) as idle:
                        await client.next_event()
                        read += 1
                    if idle.cancelled_caught:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOBUFS
                    overrun = True
        nursery.cancel_scope.cancel()
    capture.close()
    assert overrun and 0 < read < 60
    events = [p for p in pcap.read_packets(path.read_bytes())
              if not p.to_kernel and p.data[12:16] == bytes(4) and p.data[4:6] == b"\x1f\x00"]
    assert len(events) == read


async def test_tshark_dissects_the_capture(short_tmp: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (Debian package tshark; make install adds it "
                    "where it may)")
    path, _reply, _event_bytes = await _captured_session(short_tmp)
    fields = ["frame.number", "netlink.family", "genl.family_id", "genl.cmd", "genl.version",
              "genl.ctrl.family_name", "genl.ctrl.family_id", "netlink.hdr_seq",
              "netlink.hdr_pid", "netlink.hdr_len", "data.data"]
    done = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-E", "separator=|",
                           *(arg for f in fields for arg in ("-e", f))],
                          capture_output=True, text=True, timeout=120, check=True)
    rows = [dict(zip(fields, line.split("|"), strict=True))
            for line in done.stdout.splitlines()]
    assert len(rows) == 7 and all(r["netlink.family"] == "0x0010" for r in rows)
    # the controller's reply names the family: TASKSTATS, id 0x1f
    ctrl = rows[1]
    assert ctrl["genl.ctrl.family_name"] == "TASKSTATS"
    assert int(ctrl["genl.ctrl.family_id"], 16) == 0x1F
    # from then on tshark knows 0x1f as TASKSTATS: the GET (cmd 1) and its NEW reply (cmd 2,
    # 596 bytes, the pid in the AGGR_PID nest), and the exit event (port id 0)
    get, new, event = rows[2], rows[3], rows[6]
    assert (int(get["genl.family_id"], 16), get["genl.cmd"]) == (0x1F, "1")
    assert (int(new["genl.family_id"], 16), new["genl.cmd"], new["netlink.hdr_len"]) == \
        (0x1F, "2", "596")
    # (tshark has no TASKSTATS dissector: the attributes are data, the AGGR_PID nest's PID
    # attribute in it)
    assert "0800" "0100" + (4242).to_bytes(4, "little").hex() in new["data.data"]
    assert (event["genl.cmd"], event["netlink.hdr_pid"], event["genl.version"]) == \
        ("2", "0", "1")
    verbose = subprocess.run([tshark, "-r", str(path), "-V", "-Y", "frame.number == 4"],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Linux netlink (cooked header)" in verbose and "Netlink (824)" in verbose
    assert "Family ID: 0x1f (TASKSTATS)" in verbose  # named from the controller's reply


# -- recorded_exit ---------------------------------------------------------------------------

def _recorded(thread: bytes, unseen: bytes, leader: bytes) -> str:
    """A recording's document: a 2-threaded process, its thread's exit on CPU 1 at 1s, an
    unseen task's on CPU 0 and the leader's (with the group's record) on CPU 1 at 2s."""
    return json.dumps({
        "machine": {"cpus": 2, "clock": "virtual", "kernel": "6.18"},
        "process": [{"pid": 300, "comm": "app", "threads": 2, "cpu": 1}],
        "timeline": [{"at": at, "recorded_exit": {"cpu": cpu, "message": _b64(message)}}
                     for at, cpu, message in (("1s", 1, thread), ("2s", 0, unseen),
                                              ("2s", 1, leader))]})


async def test_recorded_exits_replay_their_bytes_in_order(short_tmp: Path) -> None:
    unseen = _event(9999, 9999, comm=b"short", seq=40)      # a task the snapshot never had
    thread = _event(301, 300, comm=b"app", seq=41)
    leader = _event(300, 300, comm=b"app", seq=17, tgid_record=True)
    text = _recorded(thread, unseen, leader)
    emulator = Emulator(parse_scenario(text, "r.json"), short_tmp / "genl.sock",
                        proc_view=False)
    heard: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        async with await Client.connect(emulator.socket_path) as client:
            await client.register("0-1")
            await emulator.advance(1)
            assert 301 not in emulator.table and 300 in emulator.table
            await emulator.advance(1)
            assert 300 not in emulator.table
            with trio.fail_after(5):
                for _ in range(3):
                    heard.append((await client.next_event()).encode())
        nursery.cancel_scope.cancel()
    assert [_owned(h) for h in heard] == [_owned(m) for m in (thread, unseen, leader)]
    # each CPU's own sequence numbers: CPU 1 sent two events, CPU 0 one
    assert [int.from_bytes(h[8:12], "little") for h in heard] == [0, 0, 1]


@pytest.mark.parametrize(("message", "problem"), [
    ("not base64!", "message is not base64"),
    (_b64(b"\x10\x00\x00\x00" + bytes(12)), "not a taskstats event"),
    (_b64(_event(1, 1) + bytes(4)), "not one whole netlink message"),
])
def test_a_bad_recorded_message_is_a_problem(message: str, problem: str) -> None:
    text = json.dumps({"timeline": [{"at": "1s",
                                     "recorded_exit": {"cpu": 0, "message": message}}]})
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "bad.json")
    assert problem in str(caught.value.problems)
    assert "timeline[0].recorded_exit.message" in str(caught.value.problems)


def test_threads_listed_out_of_start_order_are_made() -> None:
    scenario = parse_scenario("""
[[process]]
pid = 10
comm = "p"
age = "10s"
thread = [{ tid = 11, age = "1s" }, { tid = 12, age = "5s" }]
""")
    assert scenario.processes[0].tids == (10, 11, 12)


# -- anonymize and diff ------------------------------------------------------------------------


def test_anonymizer_is_consistent_in_bytes_and_names() -> None:
    anon = Anonymizer()
    first = anon.message(_event(5, 5, comm=b"secretd", uid=1234))
    again = anon.message(_event(6, 6, comm=b"secretd", uid=1234))
    other = anon.message(_event(7, 7, comm=b"root-job", uid=0, tgid_record=True))
    values = [Record_values(m) for m in (first, again, other)]
    assert values[0]["ac_comm"] == values[1]["ac_comm"] == b"proc-1" == anon.comm(b"secretd")
    assert values[0]["ac_uid"] == values[0]["ac_gid"] == 10001 == anon.uid(1234)
    assert values[2]["ac_uid"] == 0 and values[2]["ac_comm"] == b"proc-2"
    # nothing else changed: the rest of the bytes are the original's
    original = _event(5, 5, comm=b"secretd", uid=1234)
    assert diff_messages(original, first) == \
        "the message: AGGR_PID 5: ac_comm 'secretd' vs 'proc-1'"
    assert anon.cmdline([b"/usr/sbin/secretd", b"--key", b"x"], b"secretd") == \
        [b"proc-1", b"arg-1", b"arg-2"]


def Record_values(message: bytes) -> dict[str, Any]:  # noqa: N802
    from tsemu.wire import decode_genl, decode_taskstats_new, split_datagram

    return decode_taskstats_new(decode_genl(split_datagram(message)[0]))[0].values()


def test_diff_names_the_first_difference(tmp_path: Path) -> None:
    a = pcap.file_header() + pcap.record(1, pcap.TO_USER, _event(5, 5, read_bytes=4096))
    b = pcap.file_header() + pcap.record(2, pcap.TO_USER, _event(5, 5, read_bytes=8192))
    assert diff_captures(a, a) is None
    assert diff_captures(a, b) == \
        "packet 1 (to a user socket): the message: AGGR_PID 5: read_bytes 4096 vs 8192"
    c = pcap.file_header() + pcap.record(2, pcap.TO_USER, _event(5, 5, seq=3))
    assert diff_captures(a, c) == "packet 1 (to a user socket): the message: nlmsg_seq 9 vs 3"
    assert diff_captures(a, c, {"seq"}) is None
    assert diff_captures(a, a + pcap.record(3, pcap.TO_KERNEL, b"")) == \
        "1 packets vs 2: the first 1 are the same"
    doc = {"machine": {"cpus": 2}, "timeline": [
        {"at": 5, "recorded_exit": {"cpu": 0, "message": _b64(_event(5, 5))}}]}
    changed = json.loads(json.dumps(doc))
    changed["timeline"][0]["recorded_exit"]["message"] = _b64(_event(5, 5, nvcsw=3))
    (tmp_path / "a.json").write_text(json.dumps(doc))
    (tmp_path / "b.json").write_text(json.dumps(changed))
    assert diff_files(tmp_path / "a.json", tmp_path / "b.json") == \
        "timeline[0].recorded_exit.message: the message: AGGR_PID 5: nvcsw 0 vs 3"
    (tmp_path / "a.pcap").write_bytes(a)
    with pytest.raises(ValueError, match="compare like with like"):
        diff_files(tmp_path / "a.pcap", tmp_path / "b.json")
    done = subprocess.run([*TSEMU, "diff", str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "nvcsw 0 vs 3" in done.stdout


# -- the host --------------------------------------------------------------------------------


def _exits_to_record(stop: threading.Event) -> None:
    """Processes that exit while the recording listens: single-threaded ones, and one with a
    second thread (its last exit brings an AGGR_TGID record)."""
    time.sleep(0.3)
    for code in (0, 3):
        subprocess.run(["/bin/sh", "-c", f"exit {code}"], check=False)
    subprocess.run([sys.executable, "-c", "import threading; t = threading.Thread("
                    "target=lambda: None); t.start(); t.join()"], check=True)
    stop.set()


def _host_recording(duration: float) -> Any:
    from tsemu.emulator.record.host import record

    require_host_taskstats().close()
    stop = threading.Event()
    worker = threading.Thread(target=_exits_to_record, args=(stop,))
    captured: list[tuple[bytes, bool]] = []
    worker.start()
    try:
        recording = trio.run(lambda: record(duration=duration, interval=0.25,
                                            tap=lambda d, sent: captured.append((d, sent))))
    finally:
        worker.join()
    assert stop.is_set()
    return recording, captured


def test_host_recording_replays_byte_for_byte(short_tmp: Path) -> None:
    recording, captured = _host_recording(1.5)
    assert recording.processes and recording.exits, "nothing recorded"
    assert any(len(e.message) > 1000 for e in recording.exits), "no AGGR_TGID exit heard"
    assert any(not sent and data in {e.message for e in recording.exits}
               for data, sent in captured)  # the tap saw the events
    document = to_document(recording, clock="virtual")
    text = json.dumps(document)
    scenario = parse_scenario(text, "host.json")
    assert sum(e.action == "recorded_exit" for e in scenario.timeline) == len(recording.exits)

    async def replay() -> list[bytes]:
        emulator = Emulator(scenario, short_tmp / "genl.sock", proc_view=False)
        heard = []
        async with trio.open_nursery() as nursery:
            await nursery.start(emulator.run)
            async with await Client.connect(emulator.socket_path) as client:
                await client.register(f"0-{recording.cpus - 1}")
                # A busy host exits more in the recording than a default receive buffer
                # holds when the replay plays them all at once: this test is about bytes.
                emulator.server.clients[client.port].outbox.budget = 1 << 26
                await emulator.advance(recording.duration_ns / 1e9 + 1)
                with trio.fail_after(10):
                    while len(heard) < len(recording.exits):
                        heard.append((await client.next_event()).encode())
            nursery.cancel_scope.cancel()
        return heard

    heard = trio.run(replay)
    assert [_owned(h) for h in heard] == [_owned(e.message) for e in recording.exits]
    # The snapshot's tasks answer GET on the replay with their recorded identity.
    leader = recording.processes[0]
    entry = document["process"][0]
    assert entry["pid"] == leader.tgid and entry["comm"] == \
        layout(16).parse(leader.tasks[0].stats)["ac_comm"].decode(errors="replace")


def test_host_recording_replays_in_recorded_time_on_the_real_clock(short_tmp: Path) -> None:
    recording, _captured = _host_recording(1.0)
    assert recording.exits
    scenario = parse_scenario(json.dumps(to_document(recording, clock="real")), "host.json")

    async def replay() -> list[tuple[float, bytes]]:
        emulator = Emulator(scenario, short_tmp / "genl.sock", proc_view=False)
        heard = []
        async with trio.open_nursery() as nursery:
            await nursery.start(emulator.run)
            start = trio.current_time()
            async with await Client.connect(emulator.socket_path) as client:
                await client.register(f"0-{recording.cpus - 1}")
                with trio.fail_after(10):
                    while len(heard) < len(recording.exits):
                        event = await client.next_event()
                        heard.append((trio.current_time() - start, event.encode()))
            nursery.cancel_scope.cancel()
        return heard

    heard = trio.run(replay)
    assert [_owned(h) for _t, h in heard] == [_owned(e.message) for e in recording.exits]
    for (when, _h), exit_ in zip(heard, recording.exits, strict=True):
        assert abs(when - exit_.at_ns / 1e9) < 0.5, (when, exit_.at_ns)


def test_record_cli_writes_a_replayable_anonymized_scenario(tmp_path: Path) -> None:
    require_host_taskstats().close()
    out = tmp_path / "rec.json"
    done = subprocess.run([*TSEMU, "record", "--out", str(out), "--duration", "0.5",
                           "--interval", "0.2", "--anonymize", "--pcap",
                           str(tmp_path / "rec.pcap")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"tsemu: wrote {out}:" in done.stderr
    document = json.loads(out.read_text())
    comms = {p["comm"] for p in document["process"]}
    assert comms and all(c.startswith("proc-") for c in comms)
    assert all(p["uid"] in (0,) or p["uid"] > 10000 for p in document["process"])
    parse_scenario(out.read_text(), str(out))
    for packet in pcap.read_packets((tmp_path / "rec.pcap").read_bytes()):
        if not packet.to_kernel and packet.data[16] == 2 and packet.data[4:6] != b"\x10\x00":
            assert Record_values(packet.data)["ac_comm"][:5] in (b"proc-", b"")
    again = subprocess.run([*TSEMU, "record", "--out", str(out), "--duration", "0"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert again.stderr.strip() == f"tsemu: {out} exists: give --force to replace it"
