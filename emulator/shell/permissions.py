"""Who counts as privileged (CAP_NET_ADMIN) when a request needs it.

The kernel judges the credentials attached to each datagram: `netlink_capable(skb,
CAP_NET_ADMIN)` looks at the sender's effective capabilities. tsemu receives the sender's
pid, uid and gid with every datagram (SO_PASSCRED, attached by the kernel, so a client cannot
forge them) and decides by policy:

| policy        | privileged when                                                          |
|---------------|--------------------------------------------------------------------------|
| `auto`        | the sender's /proc/PID/status is visible: CAP_NET_ADMIN in its CapEff;    |
|               | otherwise (another pid namespace, a container beside tsemu's): uid 0     |
| `all`         | always                                                                   |
| `none`        | never                                                                    |
| `UID,UID,...` | the sender's uid is listed                                               |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

CAP_NET_ADMIN = 12


class Credentials(NamedTuple):
    """SCM_CREDENTIALS of a datagram: the pid is 0 when the sender is in a pid namespace the
    server cannot see."""

    pid: int
    uid: int
    gid: int


def effective_capabilities(pid: int) -> int | None:
    """CapEff of process `pid` from /proc, or None when it is not visible."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class AdminPolicy:
    """The `--admin` policy: "auto", "all", "none", or a set of uids."""

    mode: str = "auto"
    uids: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> AdminPolicy:
        """Read `--admin`: auto, all, none, or a comma-separated list of uids."""
        text = text.strip()
        if text in ("auto", "all", "none"):
            return cls(text)
        try:
            uids = frozenset(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"--admin takes auto, all, none or a list of uids such as "
                             f"0,1000; not {text!r}") from None
        if not uids or any(u < 0 for u in uids):
            raise ValueError(f"--admin: {text!r} names no valid uid")
        return cls("uids", uids)

    def is_admin(self, creds: Credentials) -> bool:
        if self.mode == "all":
            return True
        if self.mode == "none":
            return False
        if self.mode == "uids":
            return creds.uid in self.uids
        caps = effective_capabilities(creds.pid)
        if caps is None:
            return creds.uid == 0
        return bool(caps >> CAP_NET_ADMIN & 1)
