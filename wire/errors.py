"""The one exception `tsemu.wire` raises for bad input.

Every decoder in this package either returns values or raises `WireError`, never anything else
(no `struct.error`, no construct exception, no `IndexError`). A `WireError` carries what the kernel
would put in its NLMSG_ERROR reply for the same bytes: the errno, and the extended-ack details
(message, offset of the offending attribute, the policy it failed), so the emulator can answer
without knowing how the error was found.
"""

from __future__ import annotations

import errno as _errno
import os


class WireError(Exception):
    """Bad bytes, with the kernel's answer to them.

    `errno` is positive (`errno.EINVAL`); the wire reply carries it negated. `ext_msg`,
    `attr_offset` (from the start of the netlink message) and `policy` (an encoded
    NLMSGERR_ATTR_POLICY payload) are what a kernel adds as extended-ack TLVs when the
    socket enabled NETLINK_EXT_ACK; each is None where the kernel adds nothing.
    """

    def __init__(
        self,
        errno: int,
        detail: str,
        *,
        ext_msg: str | None = None,
        attr_offset: int | None = None,
        policy: bytes | None = None,
    ) -> None:
        name = _errno.errorcode.get(errno, str(errno))
        super().__init__(f"{name}: {detail} ({os.strerror(errno)})")
        self.errno = errno
        self.detail = detail
        self.ext_msg = ext_msg
        self.attr_offset = attr_offset
        self.policy = policy

    def at_offset(self, base: int) -> WireError:
        """The same error with its attribute offset moved by `base` bytes.

        Decoders of an attribute stream count offsets from the stream's start; the message
        decoder shifts them to count from the netlink header, as the kernel reports them.
        """
        if self.attr_offset is None:
            return self
        return WireError(
            self.errno,
            self.detail,
            ext_msg=self.ext_msg,
            attr_offset=self.attr_offset + base,
            policy=self.policy,
        )
