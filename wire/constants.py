"""Numbers of the uapi: netlink, generic netlink, nlctrl, TASKSTATS and CGROUPSTATS.

Only numbers live here, named as the uapi headers name them (without their prefixes), so a
reader can check each against <linux/netlink.h>, <linux/genetlink.h>, <linux/taskstats.h> and
<linux/cgroupstats.h>. Layouts live in the modules that encode them.
"""

from __future__ import annotations

import enum

NLMSG_ALIGNTO = 4
NLA_ALIGNTO = 4
NLMSG_HDRLEN = 16
GENL_HDRLEN = 4
NLA_HDRLEN = 4

#: Message types below this are netlink's own (NOOP, ERROR, DONE, OVERRUN), never a family.
NLMSG_MIN_TYPE = 0x10

#: The generic-netlink controller's fixed family id (GENL_ID_CTRL).
GENL_ID_CTRL = 0x10

#: netlink's socket-option level.
SOL_NETLINK = 270


class MsgType(enum.IntEnum):
    """nlmsg_type values netlink itself defines."""

    NOOP = 1
    ERROR = 2
    DONE = 3
    OVERRUN = 4


class Flag(enum.IntFlag):
    """nlmsg_flags bits. ROOT/MATCH share bits with CAPPED/ACK_TLVS: the meaning depends on
    whether the message is a GET request or an NLMSG_ERROR."""

    REQUEST = 0x1
    MULTI = 0x2
    ACK = 0x4
    ECHO = 0x8
    DUMP_INTR = 0x10
    DUMP_FILTERED = 0x20
    ROOT = 0x100
    MATCH = 0x200
    ATOMIC = 0x400
    DUMP = 0x300


#: On NLMSG_ERROR: the request was not echoed whole.
NLM_F_CAPPED = 0x100
#: On NLMSG_ERROR: extended-ack TLVs follow the echoed request.
NLM_F_ACK_TLVS = 0x200

#: nla_type bits that are flags, not part of the type.
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF


class SockOpt(enum.IntEnum):
    """SOL_NETLINK socket options."""

    ADD_MEMBERSHIP = 1
    DROP_MEMBERSHIP = 2
    PKTINFO = 3
    BROADCAST_ERROR = 4
    NO_ENOBUFS = 5
    LISTEN_ALL_NSID = 8
    LIST_MEMBERSHIPS = 9
    CAP_ACK = 10
    EXT_ACK = 11
    GET_STRICT_CHK = 12


class ErrAttr(enum.IntEnum):
    """Extended-ack TLVs after an NLMSG_ERROR (NLMSGERR_ATTR_*)."""

    MSG = 1
    OFFS = 2
    COOKIE = 3
    POLICY = 4
    MISS_TYPE = 5
    MISS_NEST = 6


class PolicyTypeAttr(enum.IntEnum):
    """Attributes describing a policy entry (NL_POLICY_TYPE_ATTR_*), as in ERR_ATTR POLICY."""

    TYPE = 1
    MIN_VALUE_S = 2
    MAX_VALUE_S = 3
    MIN_VALUE_U = 4
    MAX_VALUE_U = 5
    MIN_LENGTH = 6
    MAX_LENGTH = 7
    POLICY_IDX = 8
    POLICY_MAXTYPE = 9
    BITFIELD32_MASK = 10
    PAD = 11
    MASK = 12


class AttrType(enum.IntEnum):
    """Attribute types as a policy dump names them (NL_ATTR_TYPE_*)."""

    INVALID = 0
    FLAG = 1
    U8 = 2
    U16 = 3
    U32 = 4
    U64 = 5
    S8 = 6
    S16 = 7
    S32 = 8
    S64 = 9
    BINARY = 10
    STRING = 11
    NUL_STRING = 12
    NESTED = 13
    NESTED_ARRAY = 14
    BITFIELD32 = 15


class CtrlCmd(enum.IntEnum):
    """nlctrl commands (CTRL_CMD_*)."""

    NEWFAMILY = 1
    DELFAMILY = 2
    GETFAMILY = 3
    NEWOPS = 4
    DELOPS = 5
    GETOPS = 6
    NEWMCAST_GRP = 7
    DELMCAST_GRP = 8
    GETMCAST_GRP = 9
    GETPOLICY = 10


class CtrlAttr(enum.IntEnum):
    """nlctrl attributes (CTRL_ATTR_*)."""

    FAMILY_ID = 1
    FAMILY_NAME = 2
    VERSION = 3
    HDRSIZE = 4
    MAXATTR = 5
    OPS = 6
    MCAST_GROUPS = 7
    POLICY = 8
    OP_POLICY = 9
    OP = 10


class CtrlOpAttr(enum.IntEnum):
    """Attributes of one entry of CTRL_ATTR_OPS (CTRL_ATTR_OP_*)."""

    ID = 1
    FLAGS = 2


class CtrlMcastAttr(enum.IntEnum):
    """Attributes of one entry of CTRL_ATTR_MCAST_GROUPS (CTRL_ATTR_MCAST_GRP_*)."""

    NAME = 1
    ID = 2


class OpFlag(enum.IntFlag):
    """Flags of a genetlink operation as nlctrl reports them (GENL_*)."""

    ADMIN_PERM = 0x1
    CMD_CAP_DO = 0x2
    CMD_CAP_DUMP = 0x4
    CMD_CAP_HASPOL = 0x8
    UNS_ADMIN_PERM = 0x10


class TaskstatsCmd(enum.IntEnum):
    """Commands of the TASKSTATS family; CGROUPSTATS numbers continue the same enum."""

    GET = 1
    NEW = 2
    CGROUPSTATS_GET = 4
    CGROUPSTATS_NEW = 5


class TaskstatsCmdAttr(enum.IntEnum):
    """Attributes of a TASKSTATS_CMD_GET request (TASKSTATS_CMD_ATTR_*)."""

    PID = 1
    TGID = 2
    REGISTER_CPUMASK = 3
    DEREGISTER_CPUMASK = 4


class TaskstatsType(enum.IntEnum):
    """Attributes of a TASKSTATS_CMD_NEW reply or event (TASKSTATS_TYPE_*)."""

    PID = 1
    TGID = 2
    STATS = 3
    AGGR_PID = 4
    AGGR_TGID = 5
    NULL = 6


#: CGROUPSTATS_CMD_ATTR_FD: the request's one attribute, a descriptor in the caller's process.
CGROUPSTATS_CMD_ATTR_FD = 1
#: CGROUPSTATS_TYPE_CGROUP_STATS: the reply's one attribute, a struct cgroupstats.
CGROUPSTATS_TYPE_CGROUP_STATS = 1

TASKSTATS_GENL_NAME = "TASKSTATS"
TASKSTATS_GENL_VERSION = 1

#: ac_flag bits of struct taskstats (from <linux/acct.h>).
class AcFlag(enum.IntFlag):
    AFORK = 0x01
    ASU = 0x02
    ACOMPAT = 0x04
    ACORE = 0x08
    AXSIG = 0x10
    AGROUP = 0x20
