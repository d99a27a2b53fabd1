"""The /proc view: a directory the server keeps in step with the process table, which the shim
shows its programs in place of the host's /proc (as umockdev's testbed stands in for /sys).

Why a directory and not answers on demand: a tool such as iotop-c reads four or five files of
every task on every refresh; over 10,000 tasks that is 50,000 reads, which a round trip to the
server each could not make in the 100 ms such a refresh may take. Files the kernel's page cache
serves cost the client what /proc itself costs. The price is staleness: counters that move
with the clock (`set_rates`) are rewritten every `refresh` seconds (taskstats answers them
exactly, at the instant of the request).

Layout under VIEW (`SOCKET.proc`), the contract with the shim (shim/procview.c):

    .tsemu-view                     "tsemu proc view 1\\n": the shim trusts nothing else
    stat uptime loadavg meminfo vmstat pressure/{cpu,io,memory,irq}
    sys/kernel/{task_delayacct,pid_max}
    <tgid>/{stat,status,statm,comm,cmdline,io,schedstat,.tsemu}
    <tgid>/task/<tid>/{the same}   every thread, the leader included
    .tid/<tid> -> ../<tgid>/task/<tid>   for every tid, so that /proc/<tid> of a thread resolves

`.tsemu` holds what the shim answers system calls about the task with (ioprio_get,
getpriority, sched_getscheduler): "nice=N\\npolicy=N\\nrt_priority=N\\nioprio=N\\n".

Every change is atomic for a reader: a new process's directory is made under a hidden name and
renamed into place; a file is rewritten by renaming a new one over it; a process that exits is
renamed away (then removed) before its exit is broadcast, so a client that hears of an exit
never finds the task in the view afterwards. Files are made relative to directory descriptors,
never following a link; the view's own directory must be the server's (a stale one from an
earlier run is taken over only if it carries the marker). Files are 0444 (`io` 0400) and, when
the server runs as root, owned by the task's uid and gid, as /proc's are. Directories are 0555
as /proc's are, except for a server that is not root: it could not write into them (root
ignores the mode), so they are 0755 (its container image's `tsemu` user, for one).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from ..model import procfs
from ..model.procmachine import Exited, MachineFacts, machine_files
from ..model.profiles import KernelProfile
from ..model.table import ProcessTable
from ..model.tasks import Task
from .addressing import PROC_VIEW_MARKER, PROC_VIEW_MARKER_TEXT
from .sockdir import DirectoryRefused

MARKER, MARKER_TEXT = PROC_VIEW_MARKER, PROC_VIEW_MARKER_TEXT
#: How often counters that move with a real clock are rewritten, at the least (seconds); a
#: refresh that takes long waits four times its own duration before the next one.
DEFAULT_REFRESH = 0.1
#: How often the machine-wide files are rewritten with a real clock (seconds).
MACHINE_REFRESH = 1.0
#: Processes published before the server listens; the rest in the background, this many at
#: a time between the server's other work.
PUBLISH_AT_ONCE = 500
PUBLISH_SLICE = 0.005

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def identity_file(task: Task) -> bytes:
    """`.tsemu`: what the shim answers system calls about the task from."""
    proc = task.proc
    return (f"nice={task.nice}\npolicy={task.policy}\nrt_priority={proc.rt_priority}\n"
            f"ioprio={proc.ioprio}\n").encode()


class ProcView:
    """The view of `table` at `path`; `open` makes it, `sync` follows the table's changes
    (`table.touched`), `refresh` rewrites what moves with the clock, `close` removes it."""

    def __init__(self, table: ProcessTable, path: Path, *, profile: KernelProfile,
                 facts: MachineFacts, boot_wall_seconds: int) -> None:
        self.table = table
        self.path = path
        self.profile = profile
        self.facts = facts
        self.boot_wall_seconds = boot_wall_seconds
        #: tgid -> the tids whose directories are in the view
        self.published: dict[int, set[int]] = {}
        self.exited = Exited()
        self._fd = -1
        self._root = os.geteuid() == 0
        #: a task directory's mode (see the module docstring)
        self._dir_mode = 0o555 if self._root else 0o755
        self._ids = (os.geteuid(), os.getegid())
        self._umask = os.umask(0o022)
        os.umask(self._umask)
        self._scratch = 0
        self._last_machine = 0.0
        #: processes `open` left for `publish_rest`
        self._pending: list[int] | deque[int] = []
        #: the marker is written: the view is whole (not merely nothing left to publish)
        self._marked = False
        #: how long the last refresh of moving counters took (seconds)
        self.refresh_cost = 0.0

    # -- the directory -----------------------------------------------------------------------

    def open(self) -> None:
        """Make the view's directory (taking over a stale view of an earlier run) and publish
        every task: at once for a table of up to `PUBLISH_AT_ONCE` processes (the marker, and
        so the view, is there when the server says it listens); for a bigger one, the rest is
        left to `publish_rest`, which `run` carries out in the background (publishing costs
        about 0.3 ms a process on tmpfs: 30 s for 100,000, which must not hold the socket
        back), and the marker is written when it is done."""
        self._take_over_stale()
        try:
            os.mkdir(self.path, 0o755)
        except OSError as exc:
            raise DirectoryRefused(f"cannot make the /proc view {self.path}: "
                                   f"{exc.strerror or exc}") from None
        self._fd = os.open(self.path, _DIR_FLAGS)
        os.fchmod(self._fd, 0o755)  # whatever the umask
        for sub in ("pressure", "sys", "sys/kernel", ".tid"):
            os.mkdir(sub, 0o755, dir_fd=self._fd)
        self.table.touched = set()
        groups = [group.tgid for group in self.table.groups()]
        for tgid in groups[:PUBLISH_AT_ONCE]:
            self._publish_group(tgid)
        self.write_machine()
        self._pending = groups[PUBLISH_AT_ONCE:]
        if not self._pending:
            self._mark()

    def _mark(self) -> None:
        self._write(self._fd, MARKER, MARKER_TEXT)  # last: the view is complete
        self._marked = True

    @property
    def complete(self) -> bool:
        """The marker is there (the last task published is not enough: the marker follows
        it after a yield)."""
        return self._fd >= 0 and self._marked

    async def publish_rest(self) -> None:
        """Publish what `open` left, a chunk at a time between the server's other work; then
        write the marker (the shim uses a view only once it is there) and say so."""
        if not self._pending:
            return
        started = time.perf_counter()
        count = len(self._pending)
        pending = deque(self._pending)
        self._pending = pending  # (popped from the left)
        while pending:
            # A slice of at most PUBLISH_SLICE seconds, then the server's other work: a disk
            # file system under load can take milliseconds a process.
            until = time.perf_counter() + PUBLISH_SLICE
            while pending:  # (at least one a slice)
                tgid = pending.popleft()
                if tgid not in self.published:  # (sync may have done it meanwhile)
                    self._publish_group(tgid)
                if time.perf_counter() >= until:
                    break
            await trio.sleep(0)
        self._mark()
        print(f"tsemu: /proc view of {count + PUBLISH_AT_ONCE} processes ready in "
              f"{time.perf_counter() - started:.1f} s ({self.path})", file=sys.stderr,
              flush=True)

    def _take_over_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise DirectoryRefused(f"{self.path} exists and is not a directory: remove it "
                                   "(the server's /proc view goes there)")
        if st.st_uid != os.geteuid():
            raise DirectoryRefused(f"{self.path} belongs to uid {st.st_uid}, not to this "
                                   "server: remove it (the server's /proc view goes there)")
        fd = os.open(self.path, _DIR_FLAGS)
        try:
            marked = self._is_view(fd)
        finally:
            os.close(fd)
        if not marked:
            raise DirectoryRefused(f"{self.path} exists and is not a tsemu /proc view: remove "
                                   "it (the server's view goes there)")
        shutil.rmtree(self.path)

    @staticmethod
    def _is_view(fd: int) -> bool:
        try:
            marker = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return False
        try:
            return os.read(marker, 64) == MARKER_TEXT
        finally:
            os.close(marker)

    def close(self) -> None:
        """Remove the view (the marker first, so that no shim takes a half-removed view)."""
        self.table.touched = None
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(MARKER, dir_fd=self._fd)
        self._marked = False
        os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(OSError):
            shutil.rmtree(self.path)

    def reopen(self, table: ProcessTable) -> None:
        """Show `table` instead, from scratch (a server's `reset`): the view is removed, then
        made again with nothing of the old table's in it, its exited processes' totals
        included. (Every write goes through this object's state, read afresh each time, so a
        `refresh` under way carries on with the new table.)"""
        self.close()
        self.table = table
        self.published = {}
        self.exited = Exited()
        self.refresh_cost = 0.0
        self.open()

    # -- following the table -----------------------------------------------------------------

    def sync(self) -> None:
        """Bring the view to the table: every process a change touched is published again,
        made, or removed."""
        table = self.table
        touched = table.touched
        if touched is None or self._fd < 0:
            return
        if table.departed:
            for task in table.departed:
                self.exited.add(task.counter_map)
            table.departed.clear()
        if not touched:
            return
        table.touched = set()
        for tgid in sorted(touched):
            self._publish_group(tgid)

    async def refresh(self) -> None:
        """Rewrite the processes whose counters move with the clock, yielding between them."""
        started = time.perf_counter()
        table = self.table
        groups = {table.get(tid).tgid for tid in list(table.moving) if tid in table}
        for tgid in sorted(groups):
            self._publish_group(tgid)
            await trio.sleep(0)
        self.refresh_cost = time.perf_counter() - started

    async def run(self, *, virtual: bool, refresh: float = DEFAULT_REFRESH) -> None:
        """With a real clock: rewrite moving counters and the machine's files as time goes.
        (With a virtual clock the emulator calls `sync`, `refresh` and `write_machine` when
        it moves the clock.)"""
        await self.publish_rest()
        if virtual:
            await trio.sleep_forever()
        while True:
            await trio.sleep(max(refresh, 4 * self.refresh_cost))
            self.sync()
            await self.refresh()
            if time.monotonic() - self._last_machine >= MACHINE_REFRESH:
                self.write_machine()

    def write_machine(self) -> None:
        table = self.table
        now = table.clock.monotonic_ns()
        moving = [table.get(tid) for tid in table.moving if tid in table]
        for task in moving:
            table.catch_up(task)
        files = machine_files(table, self.facts, now_ns=now,
                              boot_wall_seconds=self.boot_wall_seconds, exited=self.exited,
                              last_pid=table.last_pid, rates=[t.rates for t in moving])
        for name, data in files.items():
            directory, _, leaf = name.rpartition("/")
            if directory:
                fd = os.open(directory, _DIR_FLAGS, dir_fd=self._fd)
                try:
                    self._write(fd, leaf, data)
                finally:
                    os.close(fd)
            else:
                self._write(self._fd, leaf, data)
        self._last_machine = time.monotonic()

    # -- one process -------------------------------------------------------------------------

    def _publish_group(self, tgid: int) -> None:
        """Make the view of process `tgid` what the table says: its directory and its
        threads' (made, rewritten or removed)."""
        table = self.table
        try:
            group = table.group(tgid)
        except LookupError:
            group = None
        had = self.published.get(tgid)
        if group is None:
            if had is not None:
                self._remove_group(tgid, had)
            return
        tasks = [table.get(tid) for tid in group.tids]
        leader = table.get(tgid) if tgid in table else group.zombie_leader
        if leader is None:  # (a group always has its leader, live or zombie)
            return
        for task in tasks:
            if task._rates is not None:
                table.catch_up(task)
        threads = tasks if leader in tasks else [leader, *tasks]
        nr_threads = len(tasks)
        if had is None:
            self._make_group(tgid, leader, threads, nr_threads)
            return
        self._update_group(tgid, leader, threads, nr_threads, had)

    def _task_files(self, task: Task, nr_threads: int,
                    whole: Iterable[Task] | None) -> list[tuple[str, bytes, int]]:
        """A task's files: (name, contents, mode). A single-threaded process's own directory
        and its task/<pid>/ hold the same files: they are made once."""
        view = procfs.task_view(task, threads=nr_threads, whole=whole,
                                nr_cpus=self.facts.nr_cpus, profile=self.profile)
        files = []
        for name, render in procfs.TASK_FILES.items():
            data = render(view, self.profile)
            files.append((name, data if isinstance(data, bytes) else data.encode(),
                          0o400 if name == "io" else 0o444))
        files.append((".tsemu", identity_file(task), 0o444))
        return files

    def _fill(self, fd: int, task: Task, files: list[tuple[str, bytes, int]],
              fresh: bool = False) -> None:
        """Write a task's files into directory `fd`; `fresh`: a directory no reader sees yet
        (made under a hidden name), where files are written in place, not renamed over."""
        write = self._write_new if fresh else self._write
        for name, data, mode in files:
            write(fd, name, data, mode, task)

    def _make_group(self, tgid: int, leader: Task, threads: list[Task], nr: int) -> None:
        hidden = self._hidden_name()
        os.mkdir(hidden, self._dir_mode, dir_fd=self._fd)
        fd = os.open(hidden, _DIR_FLAGS, dir_fd=self._fd)
        try:
            self._own(fd, leader, self._dir_mode)
            files = self._task_files(leader, nr, threads)
            self._fill(fd, leader, files, fresh=True)
            os.mkdir("task", self._dir_mode, dir_fd=fd)
            task_fd = os.open("task", _DIR_FLAGS, dir_fd=fd)
            try:
                self._own(task_fd, leader, self._dir_mode)
                for task in threads:
                    self._make_thread(task_fd, task, nr,
                                      files if threads == [leader] else None)
            finally:
                os.close(task_fd)
        finally:
            os.close(fd)
        os.rename(hidden, str(tgid), src_dir_fd=self._fd, dst_dir_fd=self._fd)
        self.published[tgid] = {task.tid for task in threads}
        for task in threads:
            self._link(tgid, task.tid, fresh=True)

    def _make_thread(self, task_fd: int, task: Task, nr: int,
                     files: list[tuple[str, bytes, int]] | None = None) -> None:
        hidden = self._hidden_name()
        os.mkdir(hidden, self._dir_mode, dir_fd=task_fd)
        fd = os.open(hidden, _DIR_FLAGS, dir_fd=task_fd)
        try:
            self._own(fd, task, self._dir_mode)
            self._fill(fd, task, files or self._task_files(task, nr, None), fresh=True)
        finally:
            os.close(fd)
        os.rename(hidden, str(task.tid), src_dir_fd=task_fd, dst_dir_fd=task_fd)

    def _update_group(self, tgid: int, leader: Task, threads: list[Task], nr: int,
                      had: set[int]) -> None:
        fd = os.open(str(tgid), _DIR_FLAGS, dir_fd=self._fd)
        try:
            self._own(fd, leader, self._dir_mode)
            files = self._task_files(leader, nr, threads)
            self._fill(fd, leader, files)
            alone = threads == [leader]
            task_fd = os.open("task", _DIR_FLAGS, dir_fd=fd)
            try:
                now = {task.tid for task in threads}
                for tid in sorted(had - now):
                    self._unlink_tid(tid)
                    self._remove_dir(task_fd, str(tid))
                for task in threads:
                    if task.tid in had:
                        thread_fd = os.open(str(task.tid), _DIR_FLAGS, dir_fd=task_fd)
                        try:
                            self._fill(thread_fd, task,
                                       files if alone else self._task_files(task, nr, None))
                        finally:
                            os.close(thread_fd)
                    else:
                        self._make_thread(task_fd, task, nr)
                        self._link(tgid, task.tid)
            finally:
                os.close(task_fd)
        finally:
            os.close(fd)
        self.published[tgid] = now

    def _remove_group(self, tgid: int, tids: set[int]) -> None:
        """Process `tgid` has gone: its links first, then its directory (renamed away, so it
        disappears at once, then removed); what it had counted stays in the machine's
        totals."""
        for tid in tids:
            self._unlink_tid(tid)
        del self.published[tgid]
        self._remove_dir(self._fd, str(tgid))

    # -- files -------------------------------------------------------------------------------

    def _hidden_name(self) -> str:
        self._scratch += 1
        return f".new-{self._scratch}"

    def _own(self, fd: int, task: Task, mode: int) -> None:
        if self._root and (task.uid, task.gid) != self._ids:
            os.fchown(fd, task.uid, task.gid)
        if mode & self._umask:  # (made with `mode`: only what the umask took needs putting back)
            os.fchmod(fd, mode)

    def _write_new(self, dir_fd: int, name: str, data: bytes, mode: int = 0o444,
                   task: Task | None = None) -> None:
        """Write `data` as new file `name` in a directory no reader sees yet."""
        fd = os.open(name, _NEW_FILE, mode, dir_fd=dir_fd)
        try:
            os.write(fd, data)
            if task is not None:
                self._own(fd, task, mode)
            elif mode & self._umask:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def _write(self, dir_fd: int, name: str, data: bytes, mode: int = 0o444,
               task: Task | None = None) -> None:
        """Replace `name` in `dir_fd` with `data`, atomically for a reader."""
        hidden = self._hidden_name()
        fd = os.open(hidden, _NEW_FILE, 0o600, dir_fd=dir_fd)
        try:
            os.write(fd, data)
            if task is not None and self._root:
                os.fchown(fd, task.uid, task.gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(hidden, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def _remove_dir(self, dir_fd: int, name: str) -> None:
        hidden = self._hidden_name()
        try:
            os.rename(name, hidden, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileNotFoundError:
            return
        shutil.rmtree(hidden, dir_fd=dir_fd)

    def _link(self, tgid: int, tid: int, fresh: bool = False) -> None:
        """`.tid/<tid>` names its task directory; `fresh`: a tid the view had no link for
        (none to remove first, unless a stale one: then it is replaced)."""
        link = f".tid/{tid}"
        if not fresh:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link, dir_fd=self._fd)
        try:
            os.symlink(f"../{tgid}/task/{tid}", link, dir_fd=self._fd)
        except FileExistsError:
            os.unlink(link, dir_fd=self._fd)
            os.symlink(f"../{tgid}/task/{tid}", link, dir_fd=self._fd)

    def _unlink_tid(self, tid: int) -> None:
        try:
            os.unlink(f".tid/{tid}", dir_fd=self._fd)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def machine_facts(machine: Any) -> MachineFacts:
    """A scenario's [machine] as the view needs it."""
    return MachineFacts(nr_cpus=machine.cpus, memory_kib=machine.memory_kib,
                        load=machine.load, pid_max=machine.pid_max)
