"""The generic-netlink families the emulated kernel registers, as nlctrl reports them.

A table of two rows: nlctrl itself (fixed id 0x10) and TASKSTATS (id assigned at boot: the
profile's, or one given). Each operation's flags say what nlctrl reports and what genetlink
enforces: ADMIN_PERM (CAP_NET_ADMIN needed), CMD_CAP_DO (a request is answered), CMD_CAP_DUMP
(a dump is answered), CMD_CAP_HASPOL (attributes are validated by a policy).

What a family looks like depends on the kernel generation (`profiles.KernelProfile`), and the
rows are built from the profile here, nowhere else:

- TASKSTATS_CMD_GET carries ADMIN_PERM (`get_needs_admin`, 3.1 on);
- with per-operation policies (`per_op_policy`, 5.10 on) a family reports maxattr 0; before,
  TASKSTATS reported its family-wide TASKSTATS_CMD_ATTR_MAX (4) and nlctrl CTRL_ATTR_MAX as
  it then stood (7: CTRL_ATTR_MCAST_GROUPS);
- nlctrl lists CTRL_CMD_GETPOLICY (`nlctrl_getpolicy`, 5.7 on);
- genetlink checks the genl header of commands from each family's `resv_start_op` on
  (`genl_header_check`, 6.1 on); before, of none (`NO_HEADER_CHECK`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tsemu.wire import Family, OpFlag
from tsemu.wire.constants import (
    GENL_ID_CTRL,
    TASKSTATS_GENL_NAME,
    TASKSTATS_GENL_VERSION,
    CtrlAttr,
    CtrlCmd,
    TaskstatsCmd,
    TaskstatsCmdAttr,
)

from .profiles import DEFAULT_PROFILE, FIRST_DYNAMIC_ID, KernelProfile

#: The id the default profile's TASKSTATS gets.
DEFAULT_TASKSTATS_ID = DEFAULT_PROFILE.taskstats_family_id

#: A `resv_start_op` no command reaches (commands are a u8): the header is never checked.
NO_HEADER_CHECK = 0x100

#: What a family reported as maxattr before per-operation policies: its family-wide policy's
#: last attribute (TASKSTATS_CMD_ATTR_MAX; nlctrl's CTRL_ATTR_MAX before GETPOLICY added 8, 9).
_FAMILY_WIDE_MAXATTR = {
    TASKSTATS_GENL_NAME: int(TaskstatsCmdAttr.DEREGISTER_CPUMASK),
    "nlctrl": int(CtrlAttr.MCAST_GROUPS),
}


def nlctrl_family(profile: KernelProfile = DEFAULT_PROFILE) -> Family:
    """nlctrl as `profile`'s kernel registers it."""
    ops = [(CtrlCmd.GETFAMILY,
            OpFlag.CMD_CAP_DO | OpFlag.CMD_CAP_DUMP | OpFlag.CMD_CAP_HASPOL)]
    if profile.nlctrl_getpolicy:
        ops.append((CtrlCmd.GETPOLICY, OpFlag.CMD_CAP_DUMP | OpFlag.CMD_CAP_HASPOL))
    return Family(
        name="nlctrl",
        id=GENL_ID_CTRL,
        version=2,
        hdrsize=0,
        maxattr=0 if profile.per_op_policy else _FAMILY_WIDE_MAXATTR["nlctrl"],
        ops=tuple((int(cmd), int(flags)) for cmd, flags in ops),
        mcast_groups=((GENL_ID_CTRL, "notify"),),
    )


#: nlctrl as the default profile's kernel registers it.
NLCTRL = nlctrl_family()


def taskstats_family(family_id: int | None = None,
                     profile: KernelProfile = DEFAULT_PROFILE) -> Family:
    """TASKSTATS as `profile`'s kernel registers it (CGROUPSTATS_GET never needs privilege),
    with `family_id` or the profile's own."""
    get_flags = OpFlag.CMD_CAP_DO | OpFlag.CMD_CAP_HASPOL
    if profile.get_needs_admin:
        get_flags |= OpFlag.ADMIN_PERM
    return Family(
        name=TASKSTATS_GENL_NAME,
        id=profile.taskstats_family_id if family_id is None else family_id,
        version=TASKSTATS_GENL_VERSION,
        hdrsize=0,
        maxattr=0 if profile.per_op_policy else _FAMILY_WIDE_MAXATTR[TASKSTATS_GENL_NAME],
        ops=(
            (int(TaskstatsCmd.GET), int(get_flags)),
            (int(TaskstatsCmd.CGROUPSTATS_GET), int(OpFlag.CMD_CAP_DO | OpFlag.CMD_CAP_HASPOL)),
        ),
    )


#: `resv_start_op` of each family, by name, on kernels that check genl headers: commands from
#: this one on get genl_header_check (nlctrl: CTRL_CMD_GETPOLICY + 1; TASKSTATS:
#: CGROUPSTATS_CMD_GET + 1, as taskstats.c sets).
RESV_START_OP: dict[str, int] = {
    "nlctrl": CtrlCmd.GETPOLICY + 1,
    TASKSTATS_GENL_NAME: TaskstatsCmd.CGROUPSTATS_GET + 1,
}


@dataclass(frozen=True)
class FamilyTable:
    """The registered families, in registration order (the order of a GETFAMILY dump), and
    whether genetlink checks their genl headers."""

    families: tuple[Family, ...]
    header_check: bool = True

    @classmethod
    def default(cls, taskstats_id: int | None = None,
                profile: KernelProfile = DEFAULT_PROFILE) -> FamilyTable:
        """nlctrl and TASKSTATS as `profile`'s kernel registers them; TASKSTATS with
        `taskstats_id`, or the profile's own id."""
        family_id = profile.taskstats_family_id if taskstats_id is None else taskstats_id
        first = min(FIRST_DYNAMIC_ID.values())
        if not first <= family_id <= 0xFFFF:
            raise ValueError(f"family id {family_id:#x} is outside {first:#x}..0xffff "
                             "(ids up to 0x10 belong to netlink and nlctrl)")
        return cls((nlctrl_family(profile), taskstats_family(family_id, profile)),
                   header_check=profile.genl_header_check)

    def by_id(self, family_id: int) -> Family | None:
        return next((f for f in self.families if f.id == family_id), None)

    def by_name(self, name: bytes) -> Family | None:
        return next((f for f in self.families if f.name.encode() == name), None)

    def resv_start_op(self, family: Family) -> int:
        """The first command genetlink checks the header of (0: every command;
        `NO_HEADER_CHECK`: none, as before Linux 6.1)."""
        if not self.header_check:
            return NO_HEADER_CHECK
        return RESV_START_OP.get(family.name, 0)

    def op_flags(self, family: Family, cmd: int) -> int | None:
        """The flags of `family`'s operation `cmd`, or None when it has no such operation."""
        return next((flags for op, flags in family.ops if op == cmd), None)
