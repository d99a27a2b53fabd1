"""GET-by-PID replies kept as bytes while the process table stands still.

Why: computing a PID record takes the accounting rules about 13 µs and packing it 3 µs more,
most of a GET's cost in the server. Yet between two changes of the table (its `generation`,
bumped by every spawn, set, add, move and exit), the record of a task is the same from one GET
to the next except for the fields that move with the clock (`accounting.CLOCK_FIELDS`). So
the first GET for a pid packs the whole reply and keeps it; the next ones patch seq, port id
and the clock fields into a copy (`ReplyPatch`, offsets from the construct layouts), which
the table computes with the same rule as the full record.

A change anywhere in the table drops every kept reply (a generation is cheap to compare,
and working out which records a change touches would be a second copy of the accounting
rules).

Only a few replies are kept (`DEFAULT_LIMIT`, the oldest going first): what is asked again
and again in a loop is a handful of pids (getdelays on one process, a monitor on the few it
watches), and a small cache costs the same memory and gives the same answer times whatever
the size of the table. Keeping a reply for every task would cost some 700 bytes per task,
and it would make GETs over a large table slower than over a small one, which a client
walking all pids would see (`make bench` checks that GET latency does not grow with the
table).
"""

from __future__ import annotations

from typing import Any, Protocol

from tsemu.wire.taskstats import ReplyTemplate
from tsemu.wire.taskstats_struct import TaskstatsLayout

from .accounting import CLOCK_FIELDS

#: Replies kept at most; past it the oldest goes.
DEFAULT_LIMIT = 64


class VersionedTable(Protocol):
    """A task source whose PID records change only with its `generation` and the clock."""

    generation: int
    #: the tasks whose counters move with the clock: never answered from a kept reply
    moving: set[int]

    def pid_stats(self, tid: int) -> Any: ...

    def pid_clock_fields(self, tid: int) -> tuple[int, int, int, int]: ...


class PidReplyCache:
    """Answers to TASKSTATS_CMD_GET by PID, built from `template` and kept per pid."""

    def __init__(self, table: VersionedTable, template: ReplyTemplate, layout: TaskstatsLayout,
                 *, limit: int = DEFAULT_LIMIT) -> None:
        self._table = table
        self._template = template
        self._layout = layout
        # (Older struct versions lack some clock fields: ac_btime64, ac_tgetime came later.)
        self._patch = template.patcher(CLOCK_FIELDS, absent_ok=True)
        self._limit = limit
        self._generation = -1
        self._replies: dict[int, bytes] = {}
        self.hits = 0

    def reply(self, seq: int, portid: int, tid: int) -> bytes:
        """The reply to a GET for `tid`. A pid no task has raises the table's LookupError, a
        record that does not pack the layout's WireError."""
        table = self._table
        replies = self._replies
        if tid in table.moving:
            values = table.pid_stats(tid)
            data = self._template.build_values(seq, portid, tid, values)
            return data if data is not None else self._template.build(
                seq, portid, tid, self._layout.build(values))
        if table.generation != self._generation:
            replies.clear()
            self._generation = table.generation
        base = replies.get(tid)
        if base is None:
            values = table.pid_stats(tid)
            template = self._template
            data = template.build_values(seq, portid, tid, values)
            if data is None:  # the layout's own build: nested fields, or it raises why not
                data = template.build(seq, portid, tid, self._layout.build(values))
            if len(replies) >= self._limit:
                del replies[next(iter(replies))]
            replies[tid] = data
            return data
        self.hits += 1
        return self._patch(base, seq, portid, tid, *table.pid_clock_fields(tid))
