"""pcap files of netlink traffic: LINKTYPE_NETLINK (253), as a capture on an nlmon device gives.

What lives here: the three layouts of such a file (the pcap file header, each packet's record
header, and the 16-byte "Linux netlink cooked header" before every packet's netlink bytes),
how to build each piece, and how to read a file back into packets. What must not: files,
clocks, buffering, rotation (`tsemu.emulator.shell.capture` does the I/O), or the meaning of
the netlink messages inside (`messages`).

The cooked header (tcpdump.org's LINKTYPE_NETLINK page; Wireshark's packet-netlink.c reads it
the same way) is the Linux SLL header with netlink in it, every field big-endian:

====== ====  ===============================================================================
offset size  field
====== ====  ===============================================================================
0      2     packet type. The page calls it unused and Wireshark skips it. The kernel sets
             skb->pkt_type of each tapped message to PACKET_KERNEL (7) for a message going
             to the kernel and PACKET_USER (6) for one going to a user socket
             (`__netlink_deliver_tap_skb`); libpcap on an nlmon device records 4
             (PACKET_OUTGOING) instead, because the device transmits every message. tsemu
             writes the kernel's 6 or 7, so the direction survives in the file; a reader
             meeting anything else tells the direction from NLM_F_REQUEST.
2      2     ARPHRD_ type: ARPHRD_NETLINK (824). Wireshark dissects nothing without it.
4      2     link-layer address length: 0 (nlmon has no address)
6      8     link-layer address: zeros
14     2     protocol: the netlink family of the socket, NETLINK_GENERIC (16)
====== ====  ===============================================================================

The netlink messages after it are in the host's byte order (little-endian here). One packet
holds one datagram, as nlmon sees one skb: a dump's messages and its NLMSG_DONE together.

The file and record headers are written little-endian with microsecond timestamps (magic
0xa1b2c3d4 as a little-endian u32), what tcpdump writes on x86; a reader takes either byte
order and microsecond or nanosecond files.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import NamedTuple

import construct as cs

from .constants import NLMSG_HDRLEN, Flag
from .derive import FastCodec
from .errors import WireError

#: LINKTYPE_NETLINK: the pcap link type of nlmon captures.
LINKTYPE_NETLINK = 253
#: ARPHRD_NETLINK, the device type of an nlmon interface.
ARPHRD_NETLINK = 824
#: The netlink protocol of generic-netlink sockets (the cooked header's protocol field).
NETLINK_GENERIC = 16
#: The largest packet a file says it holds: netlink messages are at most 1 MiB here.
SNAPLEN = 1 << 20

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D


class PacketType(enum.IntEnum):
    """The cooked header's packet type values a netlink capture meets."""

    OUTGOING = 4  # libpcap on an nlmon device: every packet
    USER = 6      # PACKET_USER: to a user socket (a reply, an event)
    KERNEL = 7    # PACKET_KERNEL: to the kernel (a request)


def _file_header(int16: cs.Construct, int32: cs.Construct) -> cs.Struct:
    """The pcap file header in one byte order."""
    return cs.Struct(
        "magic" / int32,
        "version_major" / int16,
        "version_minor" / int16,
        "thiszone" / int32,
        "sigfigs" / int32,
        "snaplen" / int32,
        "network" / int32,
    )


def _record_header(int32: cs.Construct) -> cs.Struct:
    """A packet's record header in one byte order: when, how much was kept, how long it was."""
    return cs.Struct(
        "ts_sec" / int32,
        "ts_frac" / int32,  # microseconds, or nanoseconds in a nanosecond file
        "incl_len" / int32,
        "orig_len" / int32,
    )


#: struct pcap_file_header, as tsemu writes it (little-endian) and as a big-endian writer does.
FILE_HEADER = _file_header(cs.Int16ul, cs.Int32ul)
FILE_HEADER_BE = _file_header(cs.Int16ub, cs.Int32ub)
#: struct pcap_sf_pkthdr
RECORD_HEADER = _record_header(cs.Int32ul)
RECORD_HEADER_BE = _record_header(cs.Int32ub)
#: The Linux netlink cooked header (see the module docstring).
COOKED_HEADER = cs.Struct(
    "packet_type" / cs.Int16ub,
    "hatype" / cs.Int16ub,
    "halen" / cs.Int16ub,
    "address" / cs.Bytes(8),
    "protocol" / cs.Int16ub,
)

RECORD_CODEC = FastCodec(RECORD_HEADER)
COOKED_SIZE = COOKED_HEADER.sizeof()
assert COOKED_SIZE == 16 and RECORD_CODEC.size == 16 and FILE_HEADER.sizeof() == 24


def file_header(snaplen: int = SNAPLEN) -> bytes:
    """The 24 bytes a LINKTYPE_NETLINK file starts with (pcap 2.4, microseconds, UTC)."""
    return bytes(FILE_HEADER.build(dict(magic=MAGIC_USEC, version_major=2, version_minor=4,
                                        thiszone=0, sigfigs=0, snaplen=snaplen,
                                        network=LINKTYPE_NETLINK)))


def cooked_header(packet_type: int, protocol: int = NETLINK_GENERIC) -> bytes:
    """The 16-byte cooked header of a packet going the way `packet_type` says."""
    return bytes(COOKED_HEADER.build(dict(packet_type=packet_type, hatype=ARPHRD_NETLINK,
                                          halen=0, address=bytes(8), protocol=protocol)))


#: The two cooked headers tsemu writes, built once: every packet starts with one of them.
TO_KERNEL = cooked_header(PacketType.KERNEL)
TO_USER = cooked_header(PacketType.USER)
_pack_record = RECORD_CODEC.pack_values


def record(ts_ns: int, cooked: bytes, data: bytes) -> bytes:
    """One packet as it sits in the file: record header, cooked header, the datagram."""
    length = len(cooked) + len(data)
    sec, nsec = divmod(ts_ns, 1_000_000_000)
    return _pack_record(sec, nsec // 1000, length, length) + cooked + data


def record_header(ts_ns: int, length: int) -> bytes:
    """The record header alone, for a writer that puts the cooked header and the datagram
    after it itself (`length` counts both)."""
    sec, nsec = divmod(ts_ns, 1_000_000_000)
    return _pack_record(sec, nsec // 1000, length, length)


class Packet(NamedTuple):
    """One packet of a netlink capture: when (ns since the epoch), which way (True: to the
    kernel), the cooked header's packet type and protocol, and the netlink bytes."""

    ts_ns: int
    to_kernel: bool
    packet_type: int
    protocol: int
    data: bytes


def _direction(packet_type: int, data: bytes) -> bool:
    """Whether a packet goes to the kernel: its packet type when that says (6 or 7), else
    whether its first message is a request (a capture libpcap made on nlmon: type 4)."""
    if packet_type == PacketType.KERNEL:
        return True
    if packet_type == PacketType.USER:
        return False
    if len(data) >= NLMSG_HDRLEN:
        return bool(int.from_bytes(data[6:8], "little") & Flag.REQUEST)
    return False


def read_packets(blob: bytes) -> Iterator[Packet]:
    """The packets of a LINKTYPE_NETLINK pcap file, in file order. WireError (EINVAL) for a
    file that is not one, or that ends inside a packet."""
    import errno

    if len(blob) < FILE_HEADER.sizeof():
        raise WireError(errno.EINVAL, "too short for a pcap file header")
    head = FILE_HEADER.parse(blob)
    if head.magic in (MAGIC_USEC, MAGIC_NSEC):
        records = RECORD_HEADER
    else:
        head = FILE_HEADER_BE.parse(blob)
        if head.magic not in (MAGIC_USEC, MAGIC_NSEC):
            raise WireError(errno.EINVAL, f"not a pcap file (magic {blob[:4].hex()})")
        records = RECORD_HEADER_BE
    if head.network != LINKTYPE_NETLINK:
        raise WireError(errno.EINVAL, f"link type {head.network}, not NETLINK "
                        f"({LINKTYPE_NETLINK})")
    scale = 1000 if head.magic == MAGIC_USEC else 1
    pos = FILE_HEADER.sizeof()
    size = records.sizeof()
    while pos < len(blob):
        if len(blob) - pos < size:
            raise WireError(errno.EINVAL, f"the file ends inside a record header at {pos}")
        rec = records.parse(blob[pos:pos + size])
        pos += size
        end = pos + rec.incl_len
        if end > len(blob) or rec.incl_len < COOKED_SIZE:
            raise WireError(errno.EINVAL, f"a packet of {rec.incl_len} bytes at {pos} does not "
                            "fit the file or has no cooked header")
        cooked = COOKED_HEADER.parse(blob[pos:pos + COOKED_SIZE])
        data = bytes(blob[pos + COOKED_SIZE:end])
        pos = end
        yield Packet(rec.ts_sec * 1_000_000_000 + rec.ts_frac * scale,
                     _direction(cooked.packet_type, data), cooked.packet_type, cooked.protocol,
                     data)
