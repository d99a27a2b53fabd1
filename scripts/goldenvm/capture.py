"""The guest's capture read back and stored, without trusting what the guest wrote.

The writable share is a directory the guest could fill with anything: a file is read only if
it is a regular file directly in the share (opened with O_NOFOLLOW, size-capped), the JSON
must have the shape scripts/capture_golden.py writes, and the stored name is built from the
guest's release by a strict pattern, never taken from the guest as a path.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_BYTES = 16 << 20
_RELEASE = re.compile(r"^(\d+)\.(\d+)[0-9A-Za-z.+_~-]*$")


def read_share_file(share: Path, name: str, limit: int = MAX_BYTES) -> bytes:
    """A regular file directly inside `share`, at most `limit` bytes; OSError otherwise."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")
    dirfd = os.open(share, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
    finally:
        os.close(dirfd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{name} in the share is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{name} in the share is larger than {limit} bytes")
    return data


def major_minor(release: str) -> str:
    """"6.12" from "6.12.118+deb13-amd64"; ValueError for anything that is not a release."""
    m = _RELEASE.match(release)
    if not m:
        raise ValueError(f"not a kernel release: {release!r}")
    return f"{int(m.group(1))}.{int(m.group(2))}"


def validate(doc: Any, expected_release: str) -> dict[str, Any]:
    """The capture, checked to be what capture_golden.py writes for the kernel we booted."""
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise ValueError("the capture is not a capture_golden.py document")
    if doc.get("kernel") != expected_release:
        raise ValueError(f"the guest ran {doc.get('kernel')!r}, not {expected_release!r}")
    for c in doc["cases"]:
        if not (isinstance(c, dict) and isinstance(c.get("name"), str)
                and isinstance(c.get("request"), str)
                and isinstance(c.get("replies"), list)
                and all(isinstance(r, str) for r in c["replies"])):
            raise ValueError(f"a malformed case in the capture: {str(c)[:200]}")
        bytes.fromhex(c["request"])
        for r in c["replies"]:
            bytes.fromhex(r)
    return doc


def store(doc: dict[str, Any], golden_dir: Path, extra: dict[str, Any]) -> Path:
    """Write tests/golden/kernel-MAJOR.MINOR.json (atomically); its path."""
    name = f"kernel-{major_minor(doc['kernel'])}.json"
    doc = {**doc, **extra}
    target = golden_dir / name
    tmp = golden_dir / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, target)
    return target
