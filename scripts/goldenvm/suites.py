"""Which Debian suite ships which kernel, and which mirror this machine already uses.

`make golden KERNEL=6.1` names a kernel generation, not a suite: the table below says where
Debian ships it. The newest kernel is whatever sid has today, so `sid` is its own name and the
capture is stored under the major.minor the guest reports.

The mirror is read from the system's own apt configuration (one-line `.list` files and deb822
`.sources` files) so that the capture uses the same, permitted, package source; the system's
configuration is only read, never changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: KERNEL= value -> the Debian suite whose `linux-image-amd64` is that generation.
SUITES: dict[str, str] = {
    "6.1": "bookworm",
    "6.12": "trixie",
    "sid": "sid",
}

#: Suites whose security updates live in a separate archive (sid has none).
SECURITY_SUITES = {"bookworm": "bookworm-security", "trixie": "trixie-security"}

#: Debian's codenames and aliases: a sources entry with one of these is the main archive.
_DEBIAN_SUITES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                  "unstable", "testing", "stable", "oldstable"}

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"


@dataclass(frozen=True)
class Mirrors:
    """The archive and security archive URLs, with the keyring that signs them."""

    archive: str
    security: str
    keyring: str = "/usr/share/keyrings/debian-archive-keyring.gpg"


def suite_for(kernel: str) -> str:
    """The suite for a KERNEL= value; a suite name itself is accepted too."""
    if kernel in SUITES:
        return SUITES[kernel]
    if kernel in SUITES.values():
        return kernel
    raise ValueError(f"unknown KERNEL {kernel!r}: choose one of {', '.join(SUITES)}")


def _entries(text: str, deb822: bool) -> list[tuple[str, list[str]]]:
    """(uri, suites) of every `deb` entry of one sources file."""
    out: list[tuple[str, list[str]]] = []
    if not deb822:
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                out.append((words[1], [words[2]]))
        return out
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split():
            for uri in fields.get("uris", "").split():
                out.append((uri, fields.get("suites", "").split()))
    return out


def system_mirrors(etc: Path = Path("/etc/apt")) -> Mirrors:
    """The Debian archive and security archive this machine's apt uses (defaults otherwise)."""
    entries: list[tuple[str, list[str]]] = []
    files = [etc / "sources.list"]
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            entries += _entries(path.read_text(errors="replace"), path.suffix == ".sources")
        except OSError:
            continue
    archive = next((uri for uri, suites in entries
                    if any(s in _DEBIAN_SUITES for s in suites)), DEFAULT_MIRROR)
    security = next((uri for uri, suites in entries
                     if any(s.endswith("-security") for s in suites)), DEFAULT_SECURITY)
    return Mirrors(archive.rstrip("/"), security.rstrip("/"))


def sources_list(suite: str, mirrors: Mirrors) -> str:
    """A one-line-format sources.list for `suite` alone (plus its security archive)."""
    lines = [f"deb [signed-by={mirrors.keyring}] {mirrors.archive} {suite} main"]
    if suite in SECURITY_SUITES:
        lines.append(f"deb [signed-by={mirrors.keyring}] {mirrors.security} "
                     f"{SECURITY_SUITES[suite]} main")
    return "\n".join(lines) + "\n"
