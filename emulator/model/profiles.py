"""Kernel profiles: every kernel generation a taskstats client meets, as one table.

Everything that differs between kernel generations, as far as a taskstats client can see, is a
column of `GENERATIONS` below, and every stable backport that changes one of those columns in
the middle of a generation is a row of `BACKPORTS`. Code elsewhere reads a `KernelProfile` and
never tests a kernel version number itself (the /proc view's own table of which lines each
release prints is the one exception, `procfs.STATUS_LINES`).

Theory of operation. A generation is a mainline release and the stable point releases that
follow it ("6.1" is 6.1.0 to the last 6.1.y). A profile is one point release of a generation:
the generation's row with the backports that reached that point release applied. Naming a
generation alone ("6.1") picks its `modelled` point release, the one measured or most likely
met (for 6.1 that is Debian bookworm's 6.1.192); naming a point release ("6.1.0", "6.1.191")
picks exactly that one. `--kernel host` picks the generation of the running kernel, or the
nearest older one, at the host's point release (`nearest`).

Each column says, beside it, the kernel version and commit that brought its change (the
research notes of issue 14, kernel-generations.md, say which were read in headers, patches and
seeds, which were measured, and which are recalled history not verified):

=====================  ========================================================================
column                 changed in
=====================  ========================================================================
taskstats_version      struct taskstats: v7 freepages (2.6.28), v8 with TASKSTATS_TYPE_NULL
                       (before 3.0), v9 thrashing (4.20, b1d29ba82cf2), v10 ac_btime64 (5.6,
                       Arnd Bergmann's y2038 series), v11 compact (5.17), v12 ac_tgid, ac_tgetime,
                       ac_exe_dev, ac_exe_inode (5.17), v13 wpcopy (6.0), v14 irq (6.4), v15 delay
                       max/min (6.14, 658eb5ab916d, f65c64f311ee), v16 max/min moved to the end
                       (6.16, "fix struct taskstats breaks backward compatibility since version
                       15"), v17 the max timestamps (7.0, 503efe850c74)
tgid_query_times       a TGID query adds each live thread's etime, utime, stime: 2.6.37
                       (8c733420bdd5 "taskstats: add e/u/stime for TGID command"); nvcsw/nivcsw
                       were added before 2.6.31 (b663a79c1915)
tgid_exit_times        a thread's exit keeps its etime, utime, stime, nvcsw, nivcsw in the
                       group's totals (TGID queries after it, the AGGR_TGID record): 7.1-era
                       "taskstats: retain dead thread stats in TGID queries" (Yiyang Chen, 2026,
                       Cc: stable), backported to the stable lines in `BACKPORTS`
exit_v12_flags         the exit path sets AGROUP on the last thread's record, and every thread's
                       record carries the exit code, not only the leader's: 5.17, with struct
                       v12 ("AGROUP since version 12", the uapi header says)
get_needs_admin        GENL_ADMIN_PERM on TASKSTATS_CMD_GET: 3.1 (1a51410abe7d "Make taskstats
                       require root access", CVE-2011-2494)
listener_dedupe        a second REGISTER of a port on a CPU adds no second entry: 3.0
                       (26c4caea9d69 "taskstats: don't allow duplicate entries in listener
                       mode", CVE-2011-2484)
family_ids             "generate": GENL_ID_GENERATE, the first free id from 0x11 (up to 4.9);
                       "idr": idr_alloc_cyclic from 0x13, 0x11 and 0x12 reserved (4.10,
                       a07ea4d9941a "genetlink: no longer support using static family IDs")
taskstats_family_id    the id a generation's TASKSTATS gets at boot (measured where said)
nlctrl_getpolicy       nlctrl lists CTRL_CMD_GETPOLICY: 5.7 (d07dcf9aadd6)
per_op_policy          policies per operation, families report maxattr 0: 5.10 (48526a0f4ca2
                       "genetlink: bring back per op policy" and the conversions after it);
                       before, TASKSTATS reported maxattr 4 and nlctrl 7
genl_header_check      genl_header_check for commands from resv_start_op on: 6.1 (Jakub
                       Kicinski, "genetlink: start to validate reserved header bytes")
cap_ack                NETLINK_CAP_ACK honoured: 4.3 (0a6a3a23ea6e)
ext_ack                NETLINK_EXT_ACK honoured: 4.12 (2d4bc93368f5 "netlink: extended ACK
                       reporting")
=====================  ========================================================================

The build configuration is not here: CONFIG_NR_CPUS (and so the cpumask length bound) belongs
to the emulated machine (`[machine] nr_cpus`), whatever the kernel version.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from tsemu.wire.taskstats_struct import DELAY_CATEGORIES, layout

#: How a generation numbers its generic-netlink families (see the module docstring).
FamilyIds = Literal["generate", "idr"]

#: The first id each rule gives a family registered after nlctrl (0x10): GENL_ID_GENERATE
#: took the next free one; the idr starts after the two ids kept for static users
#: (GENL_ID_VFS_DQUOT 0x11, GENL_ID_PMCRAID 0x12).
FIRST_DYNAMIC_ID: dict[str, int] = {"generate": 0x11, "idr": 0x13}


@dataclass(frozen=True)
class KernelProfile:
    """What one point release of a kernel generation answers differently (the columns are
    explained in the module docstring).

    `name` is what `--kernel` and `[machine] kernel` take; `generation` the row it comes
    from; `release` the point release it models and the one uname reports;
    `versions` the range of point releases the row covers; `notes` what the row knows of
    distributions and backports it does not model."""

    name: str
    generation: str
    release: str
    versions: str
    taskstats_version: int
    tgid_query_times: bool
    tgid_exit_times: bool
    exit_v12_flags: bool
    get_needs_admin: bool
    listener_dedupe: bool
    family_ids: FamilyIds
    taskstats_family_id: int
    nlctrl_getpolicy: bool
    per_op_policy: bool
    genl_header_check: bool
    cap_ack: bool
    ext_ack: bool
    notes: str = ""
    rmem_default: int = 212992
    rmem_max: int = 212992
    #: CONFIG_NR_CPUS, when a caller pins it on the profile (a harness comparing with one
    #: host); None, as in every row: the emulated machine's (`[machine] nr_cpus`) decides.
    nr_cpus_config: int | None = None

    @property
    def struct_size(self) -> int:
        """sizeof(struct taskstats) on x86_64 for this generation's version."""
        return layout(self.taskstats_version).size

    @property
    def delay_categories(self) -> tuple[str, ...]:
        """The delay-accounting categories the struct carries ("cpu", "blkio", ...): those
        whose `<category>_count` field the version has."""
        names = set(layout(self.taskstats_version).names)
        return tuple(c for c in DELAY_CATEGORIES if f"{c}_count" in names)

    @property
    def tgid_exit_adds_times(self) -> bool:
        """The name `tgid_exit_times` had before the profiles became a table."""
        return self.tgid_exit_times


@dataclass(frozen=True)
class Backport:
    """A stable backport that changes a generation's columns from point release `since`
    on. `first_known` is False when `since` is the first release known to carry it (measured
    or seen in a changelog), not the first that does."""

    generation: str
    since: str
    changes: dict[str, object]
    commit: str
    first_known: bool = True


def _gen(generation: str, modelled: str, versions: str, taskstats_version: int,
         tgid_query_times: bool, tgid_exit_times: bool, exit_v12_flags: bool,
         get_needs_admin: bool, listener_dedupe: bool, family_ids: FamilyIds,
         taskstats_family_id: int, nlctrl_getpolicy: bool, per_op_policy: bool,
         genl_header_check: bool, cap_ack: bool, ext_ack: bool, notes: str = "") -> KernelProfile:
    """A generation's row, its columns in the table's order (`release` is the modelled point
    release)."""
    return KernelProfile(
        name=generation, generation=generation, release=modelled, versions=versions,
        taskstats_version=taskstats_version, tgid_query_times=tgid_query_times,
        tgid_exit_times=tgid_exit_times, exit_v12_flags=exit_v12_flags,
        get_needs_admin=get_needs_admin, listener_dedupe=listener_dedupe,
        family_ids=family_ids, taskstats_family_id=taskstats_family_id,
        nlctrl_getpolicy=nlctrl_getpolicy, per_op_policy=per_op_policy,
        genl_header_check=genl_header_check, cap_ack=cap_ack, ext_ack=ext_ack, notes=notes)


Y, N = True, False
GEN: FamilyIds = "generate"
IDR: FamilyIds = "idr"

#: One row per generation, oldest first. The second column is the point release the
#: generation's name picks; tgid_exit_times is as of the generation's .0 (`BACKPORTS` change
#: it later in a line).
GENERATIONS: tuple[KernelProfile, ...] = (
    # generation, modelled point release, versions, struct version,
    # tgid_query_times, tgid_exit_times, exit_v12_flags, get_needs_admin, listener_dedupe,
    # family_ids, taskstats_family_id, nlctrl_getpolicy, per_op_policy, genl_header_check,
    # cap_ack, ext_ack, notes
    _gen("2.6.31", "2.6.31", "2.6.31 - 2.6.31.14", 7, N, N, N, N, N, GEN, 0x11, N, N, N, N, N,
         "the seed 003_...txt. The id is the first GENL_ID_GENERATE gives: a real boot "
         "registers other families first (set family_id). 2.6.31.y ended before the 2011 "
         "dedupe and admin fixes"),
    _gen("3.10", "3.10.0", "3.10.0 - 3.10.108", 8, Y, N, N, Y, Y, GEN, 0x11, N, N, N, N, N,
         "RHEL 7's 3.10.0-*.el7 backports later netlink features: not modelled"),
    _gen("4.18", "4.18.0", "4.18.0 - 4.18.20", 8, Y, N, N, Y, Y, IDR, 0x1F, N, N, N, Y, Y,
         "RHEL 8's 4.18.0-*.el8 later took per-op policies and nla_strscpy: not modelled. "
         "Family id assumed as the measured 6.x ones"),
    _gen("5.4", "5.4.0", "5.4.0 - 5.4.302", 9, Y, N, N, Y, Y, IDR, 0x1F, N, N, N, Y, Y,
         "family id assumed"),
    _gen("5.10", "5.10.0", "5.10.0 - 5.10.y", 10, Y, N, N, Y, Y, IDR, 0x1F, Y, Y, N, Y, Y,
         "family id assumed; whether 5.10.y takes the 2026 TGID fix is not known"),
    _gen("5.14", "5.14.0", "5.14.0 - 5.14.21", 10, Y, N, N, Y, Y, IDR, 0x1F, Y, Y, N, Y, Y,
         "RHEL 9's 5.14.0-*.el9 backports later struct versions: not modelled"),
    _gen("5.15", "5.15.0", "5.15.0 - 5.15.y", 10, Y, N, N, Y, Y, IDR, 0x1F, Y, Y, N, Y, Y,
         "Ubuntu 22.04's kernel; family id assumed"),
    _gen("6.1", "6.1.192", "6.1.0 - 6.1.y", 13, Y, N, Y, Y, Y, IDR, 0x1F, Y, Y, Y, Y, Y,
         "measured: Debian bookworm 6.1.192 (family id 0x1f, the TGID backport)"),
    _gen("6.6", "6.6.0", "6.6.0 - 6.6.y", 14, Y, N, Y, Y, Y, IDR, 0x1F, Y, Y, Y, Y, Y,
         "family id assumed"),
    _gen("6.8", "6.8.0", "6.8.0 - 6.8.12", 14, Y, N, Y, Y, Y, IDR, 0x1F, Y, Y, Y, Y, Y,
         "Ubuntu 24.04's kernel; 6.8.y ended before the 2026 TGID fix"),
    _gen("6.12", "6.12.118", "6.12.0 - 6.12.y", 14, Y, N, Y, Y, Y, IDR, 0x22, Y, Y, Y, Y, Y,
         "measured: Debian trixie 6.12.118, family id 0x22; its TGID exit rule was not "
         "measured"),
    _gen("6.18", "6.18.44", "6.18.0 - 6.18.y", 16, Y, N, Y, Y, Y, IDR, 0x1F, Y, Y, Y, Y, Y,
         "measured: the CI host's 6.18.44 (tests/golden), family id 0x1f"),
    _gen("7.2", "7.2.13", "7.2.0 - 7.2.y", 17, Y, Y, Y, Y, Y, IDR, 0x24, Y, Y, Y, Y, Y,
         "measured: Debian sid 7.2.13, family id 0x24"),
)

#: The 2026 fix that keeps dead threads' times in a group's totals, Cc: stable.
_TGID_FIX = "taskstats: retain dead thread stats in TGID queries (Yiyang Chen, 2026)"

#: Stable backports that change a column within a generation.
BACKPORTS: tuple[Backport, ...] = (
    Backport("6.1", "6.1.192", {"tgid_exit_times": True}, _TGID_FIX, first_known=False),
    Backport("6.6", "6.6.147", {"tgid_exit_times": True}, _TGID_FIX, first_known=False),
    # measured: Debian trixie's 6.12.118 under QEMU (tests/golden/kernel-6.12.json) keeps an
    # exited thread's times in TGID queries and sums them into the AGGR_TGID exit record
    Backport("6.12", "6.12.118", {"tgid_exit_times": True}, _TGID_FIX, first_known=False),
    Backport("6.18", "6.18.44", {"tgid_exit_times": True}, _TGID_FIX, first_known=False),
)

_BY_GENERATION: dict[str, KernelProfile] = {g.generation: g for g in GENERATIONS}


def release_numbers(release: str) -> tuple[int, ...]:
    """The leading dotted numbers of a release string: "6.1.0-32-amd64" -> (6, 1, 0),
    "2.6.31.14" -> (2, 6, 31, 14). ValueError when it starts with no number."""
    match = re.match(r"\d+(?:\.\d+)*", release.strip())
    if match is None:
        raise ValueError(f"{release!r} is not a kernel release")
    return tuple(int(part) for part in match.group(0).split("."))


def _generation_numbers(row: KernelProfile) -> tuple[int, ...]:
    return release_numbers(row.generation)


def _at(row: KernelProfile, point: tuple[int, ...]) -> KernelProfile:
    """`row` at point release `point` (its full numbers), with the backports that reached it
    applied; named after the generation when `point` is the one the row models."""
    changes: dict[str, object] = {}
    for backport in BACKPORTS:
        if backport.generation == row.generation and release_numbers(backport.since) <= point:
            changes.update(backport.changes)
    if point == _point(row, release_numbers(row.release)):
        name, release = row.generation, row.release
    else:
        name = release = ".".join(map(str, point))
    return dataclasses.replace(row, name=name, release=release,
                               **changes)  # type: ignore[arg-type]


def _point(row: KernelProfile, numbers: tuple[int, ...]) -> tuple[int, ...]:
    """The full point-release numbers of `numbers` within `row`'s generation: a generation
    named without its sublevel is its `.0` ("6.1" -> 6.1.0)."""
    width = len(_generation_numbers(row)) + 1
    padded = numbers + (0,) * (width - len(numbers))
    return padded[:width]


#: The profiles, by the name `--kernel` takes: each generation at its modelled point release.
PROFILES: dict[str, KernelProfile] = {
    row.generation: _at(row, _point(row, release_numbers(row.release))) for row in GENERATIONS
}

DEFAULT_PROFILE = PROFILES["6.18"]


def profile(name: str) -> KernelProfile:
    """The profile called `name`: a generation ("6.1": its modelled point release) or a point
    release of one ("6.1.0", "6.1.191-amd64"). ValueError naming the choices otherwise."""
    if name in PROFILES:
        return PROFILES[name]
    try:
        numbers = release_numbers(name)
    except ValueError:
        numbers = ()
    for row in GENERATIONS:
        gen = _generation_numbers(row)
        if numbers[:len(gen)] == gen and len(numbers) > len(gen):
            return _at(row, _point(row, numbers))
    raise ValueError(f"unknown kernel profile {name!r}; choose one of "
                     f"{', '.join(PROFILES)} (or a point release of one, e.g. 6.1.0)")


def nearest(release: str) -> tuple[KernelProfile, bool]:
    """The profile of a running kernel's `release` (uname -r): its generation's row at its
    point release, or, for a generation the table lacks, the nearest older generation's at
    its modelled point release (the oldest one for a release older than every row). The
    flag says whether the generation was in the table."""
    numbers = release_numbers(release)
    older = [row for row in GENERATIONS if _generation_numbers(row) <= numbers]
    for row in reversed(older):
        gen = _generation_numbers(row)
        if numbers[:len(gen)] == gen:
            return _at(row, _point(row, numbers)), True
    row = older[-1] if older else GENERATIONS[0]
    return PROFILES[row.generation], False


def host_profile() -> tuple[KernelProfile, str]:
    """The profile of the kernel this process runs on, and a sentence saying which it is."""
    import os

    release = os.uname().release
    chosen, exact = nearest(release)
    how = "its own" if exact else "the nearest older generation's"
    return chosen, (f"tsemu: host kernel {release}: emulating {chosen.release} "
                    f"({how} profile, {chosen.name})")
