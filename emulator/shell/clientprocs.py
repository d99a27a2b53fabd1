"""The clients' own processes: part of the emulated machine, as the host kernel sees them.

A real kernel always knows the process that asks it something, and the children it starts;
so does tsemu. The machine is the scenario's tasks plus the processes of the clients it
serves. Which host processes those are is decided from what the server can verify, never
from what a datagram claims:

- a **client root** is a process that said so itself (`ControlOp.ROOT`): its pid is the one
  the kernel put in the datagram's SCM_CREDENTIALS, which an unprivileged process cannot
  forge. `tsemu run` registers itself before it starts its command, and the pytest fixture
  registers the test process; the root's start time is kept, so a pid reused by a later
  process is not a root;
- a **client family** is a root and all its descendants (walked up the host's /proc
  `PPid:` chain); a process under no registered root is a family of its own (itself and its
  descendants);
- a GET about host task X from sender S is answered when X is in S's family and X's real
  uid is S's (or S is root): one user's client cannot look at another user's processes, nor
  at processes outside its own tree. The scenario's tasks come first: a scenario task with
  the same pid shadows the host process (said once on stderr);
- an exit is broadcast when the parent of the process that exited says so
  (`ControlOp.EXITED`, from the shim's wait wrappers or `tsemu run` itself) before reaping it:
  the server checks that the process is a zombie whose parent is the sender, in a registered
  family, then reads its records from its zombie (`HostMirror.host_exit_report`).

Records follow the host-mirror rules (`hostmirror`), for the served kernel profile.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..model.tasks import ExitReport
from .hostmirror import HostMirror

#: How far up the parent chain a family is looked for (a deeper tree is not a client's).
MAX_DEPTH = 256


@dataclass(frozen=True)
class HostProcess:
    """What the family rules read of a host task: /proc/<pid>/status and stat."""

    pid: int
    tgid: int
    ppid: int
    uid: int
    state: str
    start_ticks: int
    comm: str = ""
    cpu: int = 0

    @property
    def state_name(self) -> str:
        """The state as `tsemu ctl ps` names the table's."""
        return _STATE_NAMES.get(self.state, "sleeping")


_STATE_NAMES = {"R": "running", "S": "sleeping", "D": "uninterruptible", "T": "stopped",
                "t": "traced", "Z": "zombie", "X": "zombie", "I": "idle"}


def read_host_process(pid: int, proc: str = "/proc") -> HostProcess | None:
    """Host task `pid` (a tid too), or None if there is none (or it cannot be read)."""
    if pid <= 0:
        return None
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            status = f.read()
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields: dict[bytes, bytes] = {}
    for line in status.splitlines():
        key, colon, value = line.partition(b":")
        if colon:
            fields[key] = value.strip()
    try:
        head, _, tail = stat.rpartition(b")")
        rest = tail.split()
        return HostProcess(pid=pid, tgid=int(fields[b"Tgid"]), ppid=int(fields[b"PPid"]),
                           uid=int(fields[b"Uid"].split()[0]),
                           state=fields[b"State"][:1].decode(), start_ticks=int(rest[19]),
                           comm=head.partition(b"(")[2].decode(errors="replace"),
                           cpu=int(rest[36]) if len(rest) > 36 else 0)
    except (KeyError, ValueError, IndexError):
        return None


class ClientProcesses:
    """The registered client roots, and the rules above."""

    def __init__(self, mirror: HostMirror, *, proc: str = "/proc") -> None:
        self.mirror = mirror
        self.proc = proc
        #: root pid -> its start time (clock ticks since boot), to tell a reused pid
        self.roots: dict[int, int] = {}
        #: processes that said they started a second thread (their group exit carries an
        #: AGGR_TGID record)
        self.threaded: set[int] = set()
        self._shadowed: set[int] = set()

    # -- what clients say about themselves ------------------------------------------------

    def register_root(self, pid: int) -> bool:
        """`pid` (from the sender's credentials) is a client root from now on."""
        process = read_host_process(pid, self.proc)
        if process is None:
            return False
        self._forget_dead_roots()
        self.roots[process.tgid] = process.start_ticks
        return True

    def register_threaded(self, pid: int) -> bool:
        """Process `pid` (from the sender's credentials) has threads: its group exit carries
        an AGGR_TGID record. Only a client family's process counts."""
        process = read_host_process(pid, self.proc)
        if process is None or self.family_root(process.tgid) is None:
            return False
        self.threaded.add(process.tgid)
        return True

    def _forget_dead_roots(self) -> None:
        for pid, start in list(self.roots.items()):
            process = read_host_process(pid, self.proc)
            if process is None or process.start_ticks != start:
                del self.roots[pid]
        self.threaded = {pid for pid in self.threaded
                         if read_host_process(pid, self.proc) is not None}

    # -- families ---------------------------------------------------------------------------

    def _ancestry(self, pid: int) -> list[HostProcess]:
        """Host process `pid`'s group, then its parent, ..., up to init or `MAX_DEPTH`."""
        chain: list[HostProcess] = []
        process = read_host_process(pid, self.proc)
        if process is not None and process.tgid != pid:  # a thread: its group is what counts
            process = read_host_process(process.tgid, self.proc)
        while process is not None and len(chain) < MAX_DEPTH:
            chain.append(process)
            if process.ppid <= 0:
                break
            process = read_host_process(process.ppid, self.proc)
        return chain

    def family_root(self, pid: int) -> int | None:
        """The registered root whose family host process `pid` belongs to, if any."""
        for process in self._ancestry(pid):
            start = self.roots.get(process.tgid)
            if start is not None and start == process.start_ticks:
                return process.tgid
        return None

    def may_see(self, asker: int, asker_uid: int, target: int) -> bool:
        """Whether a GET about host task `target` from the process `asker` (its credentials)
        is answered."""
        task = read_host_process(target, self.proc)
        if task is None or (asker_uid != 0 and task.uid != asker_uid):
            return False
        chain = self._ancestry(target)
        top = self.family_root(asker)
        if top is None:
            asking = read_host_process(asker, self.proc)
            top = asking.tgid if asking is not None else asker
        return any(process.tgid == top for process in chain)

    def members(self) -> list[HostProcess]:
        """Every live host process (thread group) of a registered family, by pid."""
        self._forget_dead_roots()
        if not self.roots:
            return []
        processes = {}
        try:
            names = os.listdir(self.proc)
        except OSError:
            return []
        for name in names:
            if name.isdigit():
                process = read_host_process(int(name), self.proc)
                if process is not None:
                    processes[process.pid] = process
        members = []
        for process in processes.values():
            ancestor: HostProcess | None = process
            for _ in range(MAX_DEPTH):
                if ancestor is None:
                    break
                if self.roots.get(ancestor.pid) == ancestor.start_ticks:
                    members.append(process)
                    break
                ancestor = processes.get(ancestor.ppid)
        return sorted(members, key=lambda p: p.pid)

    # -- answering --------------------------------------------------------------------------

    def lookup_for(self, asker: int, asker_uid: int
                   ) -> Callable[[str, int], Mapping[str, Any]]:
        """The fallback a GET from `asker` uses for an id the table does not know: the host
        task's record if `asker` may see it; LookupError (ESRCH) otherwise."""
        def lookup(kind: str, ident: int) -> Mapping[str, Any]:
            if not self.may_see(asker, asker_uid, ident):
                raise LookupError(ident)
            stats = (self.mirror.host_pid_stats(ident) if kind == "pid"
                     else self.mirror.host_tgid_stats(ident))
            if stats is None:
                raise LookupError(ident)
            return stats
        return lookup

    def shadowed(self, pid: int) -> None:
        """A scenario task answered for `pid` although a client's own process has it too:
        said once."""
        if pid in self._shadowed or read_host_process(pid, self.proc) is None:
            return
        self._shadowed.add(pid)
        print(f"tsemu: pid {pid} is both a scenario task and a client's own process; the "
              "scenario's task answers", file=sys.stderr, flush=True)

    def exit_report(self, parent: int, parent_uid: int, child: int,
                    nr_cpus: int) -> ExitReport | None:
        """The records of the exit of `parent`'s child `child`, if it is a zombie of a client
        family that `parent` may speak for; None otherwise (nothing is broadcast)."""
        process = read_host_process(child, self.proc)
        asking = read_host_process(parent, self.proc)
        if process is None or asking is None or process.pid != process.tgid:
            return None
        if process.state not in ("Z", "X") or process.ppid != asking.tgid:
            return None
        if parent_uid != 0 and process.uid != parent_uid:
            return None
        if self.family_root(asking.tgid) is None and child not in self.roots:
            return None
        report = self.mirror.host_exit_report(child, nr_cpus=nr_cpus,
                                              threaded=child in self.threaded)
        self.threaded.discard(child)
        if child in self.roots:
            del self.roots[child]
        return report
