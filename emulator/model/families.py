"""The generic-netlink families the emulated kernel registers, as nlctrl reports them.

A table of two rows: nlctrl itself (fixed id 0x10) and TASKSTATS (id assigned at boot; 0x1f on
the measured host, configurable). Each operation's flags say what nlctrl reports and what
genetlink enforces: ADMIN_PERM (CAP_NET_ADMIN needed), CMD_CAP_DO (a request is answered),
CMD_CAP_DUMP (a dump is answered), CMD_CAP_HASPOL (attributes are validated by a policy).

What genetlink enforces without nlctrl reporting it is tabled here too: `RESV_START_OP`, the
first command of each family whose genl header and flags genetlink checks
(`wire.netlink.check_genl_header`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tsemu.wire import Family, OpFlag
from tsemu.wire.constants import (
    GENL_ID_CTRL,
    TASKSTATS_GENL_NAME,
    TASKSTATS_GENL_VERSION,
    CtrlCmd,
    TaskstatsCmd,
)

DEFAULT_TASKSTATS_ID = 0x1F

#: nlctrl as Linux 6.18 registers it.
NLCTRL = Family(
    name="nlctrl",
    id=GENL_ID_CTRL,
    version=2,
    hdrsize=0,
    maxattr=0,
    ops=(
        (CtrlCmd.GETFAMILY, OpFlag.CMD_CAP_DO | OpFlag.CMD_CAP_DUMP | OpFlag.CMD_CAP_HASPOL),
        (CtrlCmd.GETPOLICY, OpFlag.CMD_CAP_DUMP | OpFlag.CMD_CAP_HASPOL),
    ),
    mcast_groups=((GENL_ID_CTRL, "notify"),),
)


def taskstats_family(family_id: int = DEFAULT_TASKSTATS_ID) -> Family:
    """TASKSTATS as Linux registers it: GET needs CAP_NET_ADMIN, CGROUPSTATS_GET does not."""
    return Family(
        name=TASKSTATS_GENL_NAME,
        id=family_id,
        version=TASKSTATS_GENL_VERSION,
        hdrsize=0,
        maxattr=0,
        ops=(
            (TaskstatsCmd.GET,
             OpFlag.ADMIN_PERM | OpFlag.CMD_CAP_DO | OpFlag.CMD_CAP_HASPOL),
            (TaskstatsCmd.CGROUPSTATS_GET, OpFlag.CMD_CAP_DO | OpFlag.CMD_CAP_HASPOL),
        ),
    )


#: `resv_start_op` of each family, by name: commands from this one on get genl_header_check
#: (nlctrl: CTRL_CMD_GETPOLICY + 1; TASKSTATS: CGROUPSTATS_CMD_GET + 1, as taskstats.c sets).
RESV_START_OP: dict[str, int] = {
    NLCTRL.name: CtrlCmd.GETPOLICY + 1,
    TASKSTATS_GENL_NAME: TaskstatsCmd.CGROUPSTATS_GET + 1,
}


@dataclass(frozen=True)
class FamilyTable:
    """The registered families, in registration order (the order of a GETFAMILY dump)."""

    families: tuple[Family, ...]

    @classmethod
    def default(cls, taskstats_id: int = DEFAULT_TASKSTATS_ID) -> FamilyTable:
        if not 0x11 <= taskstats_id <= 0xFFFF:
            raise ValueError(f"family id {taskstats_id:#x} is outside 0x11..0xffff "
                             "(ids up to 0x10 belong to netlink and nlctrl)")
        return cls((NLCTRL, taskstats_family(taskstats_id)))

    def by_id(self, family_id: int) -> Family | None:
        return next((f for f in self.families if f.id == family_id), None)

    def by_name(self, name: bytes) -> Family | None:
        return next((f for f in self.families if f.name.encode() == name), None)

    def resv_start_op(self, family: Family) -> int:
        """The first command genetlink checks the header of (0: every command)."""
        return RESV_START_OP.get(family.name, 0)

    def op_flags(self, family: Family, cmd: int) -> int | None:
        """The flags of `family`'s operation `cmd`, or None when it has no such operation."""
        return next((flags for op, flags in family.ops if op == cmd), None)
