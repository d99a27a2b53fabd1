"""Exits replayed from a recording: the event is the bytes a real kernel sent, not a model's.

What lives here: `RecordedExit`, the exit report of a scenario's `recorded_exit` action, and
`recorded_event`, which turns it into the event a listener gets. What must not: reading the
recording (`tsemu.emulator.scenario` checks the message when it reads the file), sockets.

Why the bytes and not values: a recording is meant to be replayed byte for byte. The model's
accounting derives fields from counters (cpu_run_real_total from utime and stime, the clock
fields from start times), which a real task's record need not satisfy; a struct of another
version than the profile's would not even fit the layout. So the record travels as it was
received and only what the emulator owns changes on the way out: the sequence number (the
CPU's own counter), the port id (0 for an event, as recorded) and the family id (the served
family's, should it differ from the recorded kernel's).
"""

from __future__ import annotations

from dataclasses import dataclass

from tsemu.wire.netlink import NLMSGHDR_CODEC

_TYPE_AT, _TYPE = NLMSGHDR_CODEC.field("type")
_SEQ_AT, _SEQ = NLMSGHDR_CODEC.field("seq")
_PID_AT, _PID = NLMSGHDR_CODEC.field("pid")


@dataclass(frozen=True, slots=True)
class RecordedExit:
    """One recorded exit event: the CPU it was heard on, the task it reports (its AGGR_PID
    record's pid) and the whole netlink message as the kernel sent it. An exit report like
    `tasks.ExitReport` for the broadcast path; `tgid_values` is None because the records
    are not values but bytes."""

    cpu: int
    tid: int
    message: bytes

    tgid_values = None

    @property
    def tgid(self) -> int:
        return self.tid


def recorded_event(report: RecordedExit, seq: int, family_id: int) -> bytes:
    """The event a listener gets for `report`: the recorded message with this CPU's `seq`,
    port id 0 and the served `family_id` put in its header."""
    buf = bytearray(report.message)
    _TYPE.pack_into(buf, _TYPE_AT, family_id)
    _SEQ.pack_into(buf, _SEQ_AT, seq)
    _PID.pack_into(buf, _PID_AT, 0)
    return bytes(buf)
