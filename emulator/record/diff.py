"""`tsemu diff A B`: where two recordings, or two captures, first differ, and how.

What lives here: `diff_files`, which tells a pcap capture from a scenario by its first bytes
and compares like with like, and `diff_messages`, the field-level comparison of two netlink
datagrams both use. What must not: reading the files' formats (`tsemu.wire.pcap` and the
scenario reader own them).

Why "first difference": two runs of the same client against the same machine should give the
same traffic; when they do not, the first difference is where to look, the rest usually
follows from it. A difference is said in the message's own terms: which packet or timeline
entry, which netlink message in it, which header field, attribute or struct taskstats
field, and both values.

What is ignored, by default and on request: captures' timestamps are never compared (two
runs never share them), only the order of packets; `ignore` may add "seq" (nlmsg_seq) and
"port" (nlmsg_pid), which the emulator owns and a replay legitimately changes. Recordings'
timeline times are compared unless `ignore` holds "time".
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from tsemu.wire import WireError, decode_genl, decode_taskstats_new, split_datagram
from tsemu.wire.constants import TaskstatsCmd
from tsemu.wire.netlink import NLMSGHDR
from tsemu.wire.pcap import MAGIC_NSEC, MAGIC_USEC, read_packets

IGNORABLE = ("seq", "port", "time")
_HEADER_FIELDS = tuple(sub.name for sub in NLMSGHDR.subcons)


def _is_pcap(blob: bytes) -> bool:
    magic = blob[:4]
    return len(magic) == 4 and {int.from_bytes(magic, "little"),
                                int.from_bytes(magic, "big")} & {MAGIC_USEC, MAGIC_NSEC} != set()


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return repr(value.decode(errors="replace"))
    return repr(value)


def diff_messages(a: bytes, b: bytes, ignore: Collection[str] = ()) -> str | None:
    """The first difference between two netlink datagrams, in words; None if they are the
    same (but for what `ignore` names)."""
    ma, mb = split_datagram(a), split_datagram(b)
    for index, (x, y) in enumerate(zip(ma, mb, strict=False)):
        where = f"message {index}" if len(ma) > 1 or len(mb) > 1 else "the message"
        for name in _HEADER_FIELDS:
            if (name == "seq" and "seq" in ignore) or (name == "pid" and "port" in ignore):
                continue
            va, vb = getattr(x.header, name), getattr(y.header, name)
            if va != vb:
                label = "port id (nlmsg_pid)" if name == "pid" else f"nlmsg_{name}"
                return f"{where}: {label} {va} vs {vb}"
        if x.payload == y.payload:
            continue
        records = _records(x), _records(y)
        if records[0] is not None and records[1] is not None:
            found = _diff_records(records[0], records[1])
            if found is not None:
                return f"{where}: {found}"
        at = next(i for i, (p, q) in enumerate(zip(x.raw, y.raw, strict=False)) if p != q) \
            if any(p != q for p, q in zip(x.raw, y.raw, strict=False)) else min(len(x.raw),
                                                                                len(y.raw))
        return f"{where}: bytes differ from offset {at} ({x.raw[at:at + 8].hex()} vs " \
               f"{y.raw[at:at + 8].hex()})"
    if len(ma) != len(mb):
        return f"{len(ma)} messages vs {len(mb)}"
    if len(a) != len(b):
        return f"{len(a)} bytes vs {len(b)} (after the last message)"
    return None


def _records(message: Any) -> list[Any] | None:
    try:
        genl = decode_genl(message)
        if genl.cmd != TaskstatsCmd.NEW or message.header.type < 0x10:
            return None
        return decode_taskstats_new(genl)
    except WireError:
        return None


def _diff_records(ra: Sequence[Any], rb: Sequence[Any]) -> str | None:
    if len(ra) != len(rb):
        return f"{len(ra)} records vs {len(rb)}"
    for x, y in zip(ra, rb, strict=True):
        label = f"{x.aggr.name} {x.id}"
        if (x.aggr, x.id) != (y.aggr, y.id):
            return f"record {x.aggr.name} {x.id} vs {y.aggr.name} {y.id}"
        if x.stats == y.stats:
            continue
        if len(x.stats) != len(y.stats):
            return f"{label}: struct taskstats of {len(x.stats)} bytes vs {len(y.stats)}"
        try:
            va, vb = x.values(), y.values()
        except WireError:
            return f"{label}: struct taskstats bytes differ"
        for name in va:
            if va[name] != vb.get(name):
                return f"{label}: {name} {_show(va[name])} vs {_show(vb.get(name))}"
    return None


def diff_captures(a: bytes, b: bytes, ignore: Collection[str] = ()) -> str | None:
    """The first difference between two pcap captures' packets."""
    pa, pb = list(read_packets(a)), list(read_packets(b))
    for index, (x, y) in enumerate(zip(pa, pb, strict=False)):
        way = "to the kernel" if x.to_kernel else "to a user socket"
        if x.to_kernel != y.to_kernel:
            return f"packet {index + 1}: {way} vs " \
                   f"{'to the kernel' if y.to_kernel else 'to a user socket'}"
        found = diff_messages(x.data, y.data, ignore)
        if found is not None:
            return f"packet {index + 1} ({way}): {found}"
    if len(pa) != len(pb):
        return f"{len(pa)} packets vs {len(pb)}: the first {min(len(pa), len(pb))} are the same"
    return None


def _first(a: Any, b: Any, path: str, ignore: Collection[str]) -> str | None:
    """The first difference between two parsed documents' values, by key path."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key == "at" and "time" in ignore:
                continue
            sub = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                return f"{sub}: {'absent' if key not in a else _brief(a[key])} vs " \
                       f"{'absent' if key not in b else _brief(b[key])}"
            if key == "message" and isinstance(a[key], str) and isinstance(b[key], str) \
                    and a[key] != b[key]:
                found = diff_messages(_b64(a[key]), _b64(b[key]), ignore)
                if found is not None:
                    return f"{sub}: {found}"
                continue
            found = _first(a[key], b[key], sub, ignore)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = _first(x, y, f"{path}[{i}]", ignore)
            if found is not None:
                return found
        if len(a) != len(b):
            return f"{path}: {len(a)} entries vs {len(b)}"
        return None
    if a != b or type(a) is not type(b):
        return f"{path}: {_brief(a)} vs {_brief(b)}"
    return None


def _brief(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return text.encode()


def diff_recordings(a: Mapping[str, Any], b: Mapping[str, Any],
                    ignore: Collection[str] = ()) -> str | None:
    """The first difference between two scenario documents (recordings), by key path; a
    recorded exit's message is compared field by field."""
    return _first(dict(a), dict(b), "", ignore)


def diff_files(a: Path, b: Path, ignore: Collection[str] = ()) -> str | None:
    """Compare two files: two pcap captures, or two scenario files (recordings). ValueError
    for a pair of different kinds or a file that is neither."""
    from tsemu.emulator.scenario import ScenarioError, syntax_of
    from tsemu.emulator.scenario.files import parse_document

    blobs = a.read_bytes(), b.read_bytes()
    kinds = [_is_pcap(blob) for blob in blobs]
    if kinds[0] != kinds[1]:
        raise ValueError(f"{a if kinds[0] else b} is a capture and "
                         f"{b if kinds[0] else a} is not: compare like with like")
    try:
        if kinds[0]:
            return diff_captures(blobs[0], blobs[1], ignore)
        docs = [parse_document(blob.decode(errors="surrogateescape"), str(path),
                               syntax_of(path)) for blob, path in zip(blobs, (a, b), strict=True)]
    except WireError as exc:
        raise ValueError(f"not a netlink capture: {exc}") from None
    except ScenarioError as exc:
        raise ValueError("; ".join(exc.problems)) from None
    return diff_recordings(docs[0], docs[1], ignore)
