"""tsemu.wire: the netlink / generic-netlink / taskstats wire format, bytes to values and back.

No I/O, no clock, no trio: every function here is a pure function of its arguments, so the
server, the client, the tests and the golden-capture script share one codec. construct
definitions are the single source of truth for every layout; the fast codecs the hot paths
use are derived from them (`derive`).

Modules:
- `netlink`: nlmsghdr, genlmsghdr, cutting datagrams into messages;
- `attributes`: attribute streams, nests, policies and their validation;
- `acks`: NLMSG_ERROR (errors, ACKs, extended acks) and NLMSG_DONE;
- `controller`: nlctrl's GETFAMILY / NEWFAMILY;
- `taskstats`: TASKSTATS and CGROUPSTATS requests, replies and exit events;
- `taskstats_struct`: struct taskstats of each version, struct cgroupstats;
- `cpulist`: the cpumask syntax of REGISTER/DEREGISTER;
- `messages`: any message as one typed value (`decode_message`), and back to bytes;
- `errors`: `WireError`, the only exception a decoder raises.
"""

from .acks import ErrorMessage, ExtAck, decode_error, encode_done, encode_error
from .attributes import Attr, AttrPolicy, encode_attr, encode_nest, iter_attrs, parse_attrs
from .constants import (
    CGROUPSTATS_CMD_ATTR_FD,
    GENL_ID_CTRL,
    AcFlag,
    CtrlAttr,
    CtrlCmd,
    Flag,
    MsgType,
    OpFlag,
    SockOpt,
    TaskstatsCmd,
    TaskstatsCmdAttr,
    TaskstatsType,
)
from .controller import (
    Family,
    GetFamily,
    decode_getfamily,
    decode_newfamily,
    encode_getfamily,
    encode_newfamily,
)
from .cpulist import cpumask_maxlen, parse_cpulist, parse_cpumask_attr
from .errors import WireError
from .messages import (
    CgroupstatsGet,
    CgroupstatsReply,
    Decoded,
    Done,
    FamilyReply,
    FamilyRequest,
    TaskstatsGet,
    TaskstatsReply,
    decode_message,
)
from .netlink import GenlMessage, Header, Message, decode_genl, encode_genl, split_datagram
from .taskstats import (
    Record,
    ReplyTemplate,
    TaskstatsRequest,
    decode_cgroupstats_get,
    decode_cgroupstats_new,
    decode_taskstats_get,
    decode_taskstats_new,
    encode_cgroupstats_get,
    encode_cgroupstats_new,
    encode_taskstats_get,
    encode_taskstats_new,
)
from .taskstats_struct import DEFAULT_VERSION, VERSIONS, TaskstatsLayout, layout, layout_for

__all__ = [
    "CgroupstatsGet", "CgroupstatsReply", "Decoded", "Done", "FamilyReply", "FamilyRequest",
    "TaskstatsGet", "TaskstatsReply", "decode_message",
    "AcFlag", "Attr", "AttrPolicy", "CGROUPSTATS_CMD_ATTR_FD", "CtrlAttr", "CtrlCmd",
    "DEFAULT_VERSION", "ErrorMessage", "ExtAck", "Family", "Flag", "GENL_ID_CTRL", "GenlMessage",
    "GetFamily", "Header", "Message", "MsgType", "OpFlag", "Record", "ReplyTemplate", "SockOpt",
    "TaskstatsCmd", "TaskstatsCmdAttr", "TaskstatsLayout", "TaskstatsRequest", "TaskstatsType",
    "VERSIONS", "WireError", "cpumask_maxlen", "decode_cgroupstats_get",
    "decode_cgroupstats_new", "decode_error", "decode_genl", "decode_getfamily",
    "decode_newfamily", "decode_taskstats_get", "decode_taskstats_new", "encode_attr",
    "encode_cgroupstats_get", "encode_cgroupstats_new", "encode_done", "encode_error",
    "encode_genl", "encode_getfamily", "encode_nest", "encode_newfamily", "encode_taskstats_get",
    "encode_taskstats_new", "iter_attrs", "layout", "layout_for", "parse_attrs", "parse_cpulist",
    "parse_cpumask_attr",
    "split_datagram",
]
