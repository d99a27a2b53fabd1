"""A reader/writer lock for trio, writer-fair and phase-fair.

What lives here: `RWLock`, the lock that guards the emulator's per-CPU listener lists, and
`RWLockStatistics`, the snapshot its `statistics()` returns. Exit broadcasts only read a list,
so they take the read side and run side by side; registering or deregistering a listener
(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK / DEREGISTER_CPUMASK) changes it, so it takes the write
side and runs alone.

Why the fairness rules are what they are:

* Writer-fair. In the kernel the listener lists are guarded by an rw_semaphore, and a reader
  that arrives while a writer is queued on an rw_semaphore goes to the back of the wait queue
  rather than slipping in beside the readers already holding it. That is the behaviour being
  emulated: on a busy system exits never stop, and if a steady stream of broadcasts could keep
  the read side held forever, a process asking to register would never get its reply. So here
  too, once a writer waits, newly arriving readers queue behind it.
* Phase-fair. Writer fairness alone lets a burst of registrations hold up every broadcast
  queued behind them for as long as the burst lasts. When a writer releases, every reader
  waiting at that moment is admitted together, ahead of the next queued writer; the writers
  then wait for that one read phase to drain. A reader therefore waits for at most one write
  section, and a writer for at most one read phase per writer ahead of it. (The kernel's rwsem
  batches readers as well: when it wakes readers it wakes the waiting readers from across the
  queue at once, not only those at its head.)
* FIFO among writers, so registrations are applied in the order they were asked for.

The lock is handed over on release: the releasing task makes the woken tasks the holders
before they run, so a newcomer cannot take the lock between a wake-up and the woken task
running, and a woken task never has to check again and park a second time. A task cancelled
while waiting was never handed the lock, so it only has to leave the queue and, if it was the
writer holding up the readers behind it, let them in.

Ownership is tracked per trio task, like `trio.Lock`: the task that acquires a side must be the
one that releases it, and the combinations that would deadlock a single task (taking `write()`
or `read()` while already holding either side) raise `RuntimeError` at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from trio.lowlevel import ParkingLot, Task

__all__ = ["RWLock", "RWLockStatistics"]


@dataclass(frozen=True, slots=True)
class RWLockStatistics:
    """A snapshot of an `RWLock`: who holds it and how many tasks are queued on each side."""

    readers_holding: int
    writer_holding: bool
    readers_waiting: int
    writers_waiting: int


class RWLock:
    """A writer-fair, phase-fair reader/writer lock for trio tasks.

    Use ``async with lock.read():`` for sections that may run alongside each other and
    ``async with lock.write():`` for sections that must run alone. See the module docstring
    for the fairness rules and why they were chosen.
    """

    def __init__(self) -> None:
        self._readers: set[Task] = set()
        self._writer: Task | None = None
        # Both lots are FIFO. A task parked in either is woken only by being handed the lock.
        self._read_lot = ParkingLot()
        self._write_lot = ParkingLot()

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<RWLock readers_holding={s.readers_holding} writer_holding={s.writer_holding} "
            f"readers_waiting={s.readers_waiting} writers_waiting={s.writers_waiting}>"
        )

    # ------------------------------------------------------------------ context managers

    @asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        """Hold the read side for the body of an ``async with``.

        The release sits in a ``finally`` so that a body that raises, or is cancelled, cannot
        leave a reader count behind that would lock every writer out for good.
        """
        await self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        """Hold the write side for the body of an ``async with``.

        Released in a ``finally`` for the same reason as `read`: a leaked writer would block
        every broadcast and every other registration forever.
        """
        await self.acquire_write()
        try:
            yield
        finally:
            self.release_write()

    # ------------------------------------------------------------------ explicit acquire/release

    async def acquire_read(self) -> None:
        """Take the read side, waiting while a writer holds the lock or is queued for it.

        Waiting behind a queued writer, even when only readers hold the lock, is what keeps a
        stream of readers from starving writers. This is a trio checkpoint whether or not it
        has to wait, so a loop of acquisitions cannot hog the scheduler; if it is cancelled
        while waiting it raises `trio.Cancelled` without holding anything.

        Raises `RuntimeError` if the calling task already holds either side: a second read
        would deadlock as soon as a writer queued between the two, and reading while writing
        would wait for this task's own write section to end.
        """
        task = trio.lowlevel.current_task()
        if self._writer is task:
            raise RuntimeError("RWLock: read() while this task holds the write side would deadlock")
        if task in self._readers:
            raise RuntimeError(
                "RWLock: this task already holds the read side; taking it again would deadlock "
                "once a writer queues between the two acquisitions"
            )
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._writer is None and self._nobody_waiting():
            self._readers.add(task)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._park(self._read_lot, task)

    async def acquire_write(self) -> None:
        """Take the write side, waiting until no other task holds either side.

        Writers are served in the order they arrive, so registrations take effect in the order
        they were asked for. A checkpoint whether or not it waits; cancelled while waiting, it
        raises `trio.Cancelled` holding nothing, and readers that were queued only because of
        it are let in.

        Raises `RuntimeError` if the calling task already holds either side, since it would
        otherwise wait for itself forever (this lock has no upgrade from read to write).
        """
        task = trio.lowlevel.current_task()
        if self._writer is task:
            raise RuntimeError(
                "RWLock: this task already holds the write side; write() is not re-entrant"
            )
        if task in self._readers:
            raise RuntimeError(
                "RWLock: write() while this task holds the read side would deadlock "
                "(there is no upgrade from read to write)"
            )
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._writer is None and not self._readers and self._nobody_waiting():
            self._writer = task
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._park(self._write_lot, task)

    def release_read(self) -> None:
        """Give up the read side held by the calling task.

        Synchronous, so it can run in a ``finally`` even under cancellation. When the last
        reader of a phase leaves, the lock goes to the writer at the head of the queue.

        Raises `RuntimeError` if the calling task does not hold the read side: the count of
        readers is kept by task, so a stray release cannot free a reader slot it never took.
        """
        task = trio.lowlevel.current_task()
        if task not in self._readers:
            raise RuntimeError(
                "RWLock: release_read() from a task that does not hold the read side"
            )
        self._readers.remove(task)
        self._wake(readers_first=False)

    def release_write(self) -> None:
        """Give up the write side held by the calling task.

        Synchronous, so it can run in a ``finally``. Every reader waiting at this moment is
        admitted together before the next writer (phase fairness); if none is waiting, the
        next writer in FIFO order gets the lock.

        Raises `RuntimeError` if the calling task is not the writer: letting another task end
        a write section would expose a half-updated listener list to the readers.
        """
        task = trio.lowlevel.current_task()
        if self._writer is not task:
            raise RuntimeError(
                "RWLock: release_write() from a task that does not hold the write side"
            )
        self._writer = None
        self._wake(readers_first=True)

    # ------------------------------------------------------------------ introspection

    def statistics(self) -> RWLockStatistics:
        """Return who holds the lock and how many tasks wait on each side.

        Meant for tests, debugging and the emulator's status output: it shows whether
        broadcasts are queueing behind registrations or the other way round.
        """
        return RWLockStatistics(
            readers_holding=len(self._readers),
            writer_holding=self._writer is not None,
            readers_waiting=len(self._read_lot),
            writers_waiting=len(self._write_lot),
        )

    # ------------------------------------------------------------------ internals

    async def _park(self, lot: ParkingLot, task: Task) -> None:
        """Wait in `lot` until a releasing task hands this task the lock."""
        try:
            await lot.park()
        except BaseException:
            # Not handed the lock: trio removed us from the lot when it aborted the wait, so
            # the queue and the counts are already right. What may be wrong is that tasks
            # behind us were waiting only because of us (a cancelled writer holding up
            # readers), so look again. If we were somehow handed the lock before the error
            # arrived, give it back the ordinary way.
            if self._writer is task:
                self.release_write()
            elif task in self._readers:
                self.release_read()
            else:
                self._wake(readers_first=False)
            raise
        # Parked tasks only ever wake by hand-over, so we hold the lock already.
        assert self._writer is task or task in self._readers

    def _nobody_waiting(self) -> bool:
        # Newcomers take the fast path only with both queues empty: never past a queued writer
        # (writer fairness), and never past readers still owed their phase.
        return not self._write_lot and not self._read_lot

    def _admit_readers(self) -> None:
        self._readers.update(self._read_lot.unpark_all())

    def _admit_writer(self) -> None:
        (self._writer,) = self._write_lot.unpark(count=1)

    def _wake(self, *, readers_first: bool) -> None:
        """Hand the lock to whoever should have it next, if it can be handed to anyone.

        `readers_first` is true only when a writer has just released: that is the moment
        phase fairness lets the waiting readers in ahead of the next writer. Otherwise, with
        the lock free, a queued writer goes first, because the readers behind it arrived after
        it and queued because of it.
        """
        if self._writer is not None:
            return
        if self._readers:
            # A read phase is running. Waiting readers are there only because a writer is
            # queued; if none is any more (it was cancelled), they may join the phase.
            if not self._write_lot and self._read_lot:
                self._admit_readers()
            return
        if readers_first and self._read_lot:
            self._admit_readers()
        elif self._write_lot:
            self._admit_writer()
        elif self._read_lot:
            self._admit_readers()
