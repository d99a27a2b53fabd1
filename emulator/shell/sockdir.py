"""The server's files: the socket's directory, the ports directory, and whom they are safe from.

A server may run as root beside other users, in a directory another user can reach. What lives
here are the rules that keep a local user from steering it, checked before anything is bound:

- the socket's directory is made (0755) if missing; if it exists it must be a real directory
  (not a symbolic link), owned by the server's user or by root, and writable by no one else,
  since whoever can write there can plant a link or a socket under the server's names. A
  directory shared on purpose (a volume several containers of different users write) is
  accepted with `shared=True` (`tsemu serve --shared-dir`);
- `SOCKET.ports/` (where every client binds its port, so 1777 like /tmp) is made by the server,
  or, left from an earlier run, must be a real directory owned by the server's user; its mode
  is set through a descriptor opened without following links, never by path;
- the control socket (`SOCKET.ctl`) is made with a umask that leaves it 0600 from its first
  instant (0660 with a group, `--ctl-group`).

Everything refused raises `DirectoryRefused`, one line naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

#: The ports directory's mode: anyone may bind a port there, only its owner may remove it.
PORTS_MODE = 0o1777


class DirectoryRefused(OSError):
    """A file or directory the server will not use, and why (one line)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _trusted_owner(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def prepare_socket_dir(directory: Path, *, shared: bool = False) -> None:
    """Make the socket's directory (and its parents, 0755) if missing; else check it (see the
    module docstring)."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        try:
            os.makedirs(directory, mode=0o755)
        except FileExistsError:
            pass  # made meanwhile: checked below
        except OSError as exc:
            raise DirectoryRefused(f"cannot make the socket directory {directory}: "
                                   f"{exc.strerror or exc}") from None
        st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        raise DirectoryRefused(f"{directory} is a symbolic link: give the socket's real "
                               "directory (a link another user can change could steer the "
                               "server)")
    if not stat.S_ISDIR(st.st_mode):
        raise DirectoryRefused(f"{directory} is not a directory")
    if shared:
        return
    if not _trusted_owner(st.st_uid):
        raise DirectoryRefused(
            f"{directory} belongs to uid {st.st_uid}, not to this server (uid {os.geteuid()}) "
            "or root: another user could plant files under the server's names there; remove "
            "it, choose another --socket, or pass --shared-dir if it is shared on purpose")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DirectoryRefused(
            f"{directory} can be written by other users (mode {stat.S_IMODE(st.st_mode):o}): "
            "they could plant files under the server's names there; chmod go-w it, choose "
            "another --socket, or pass --shared-dir if it is shared on purpose")


def unwritable(directory: Path) -> DirectoryRefused:
    """Why the server cannot make its files in `directory` (a volume or bind mount made by
    another user is the usual case in a container), in one line."""
    try:
        st = os.stat(directory)
        whose = f"belongs to uid {st.st_uid} (mode {stat.S_IMODE(st.st_mode):o})"
    except OSError as exc:
        whose = f"cannot be read ({exc.strerror})"
    return DirectoryRefused(
        f"cannot make the server's socket in {directory}: it {whose} and this server runs as "
        f"uid {os.geteuid()}; make it writable by that uid (chown), or run the server as its "
        "owner (a container: the same --user as the one that made the volume)")


def prepare_ports_dir(ports: Path) -> None:
    """Make `ports` (1777) or take over the one an earlier run left: a real directory owned by
    this server's user. Its mode is set through a descriptor, never through a path."""
    try:
        os.mkdir(ports, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise DirectoryRefused(f"cannot make the ports directory {ports}: "
                               f"{exc.strerror or exc}") from None
    try:
        fd = os.open(ports, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DirectoryRefused(f"{ports} is not a directory of the server's (a link or a "
                                   "file): remove it") from None
        raise DirectoryRefused(f"cannot open the ports directory {ports}: "
                               f"{exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise DirectoryRefused(
                f"{ports} belongs to uid {st.st_uid}, not to this server (uid {os.geteuid()}): "
                "it was left by another server or planted by another user; remove it (a "
                "container's volume: run the server as the user that first used the volume, "
                "or remove it as that user)")
        os.fchmod(fd, PORTS_MODE)
    finally:
        os.close(fd)


@contextlib.contextmanager
def private_files(mode: int) -> Iterator[None]:
    """Files made inside are made with no permission outside `mode` (the process's umask,
    for the span of a bind: a socket's mode cannot be set before it exists)."""
    old = os.umask(0o777 & ~mode)
    try:
        yield
    finally:
        os.umask(old)


def share_with_group(path: Path, group: str | None) -> None:
    """Give the control socket to `group` (a name or a gid), 0660; no group: leave it 0600."""
    if group is None:
        return
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise DirectoryRefused(f"--ctl-group: no group {group!r}") from None
    os.chown(path, -1, gid, follow_symlinks=False)
    os.chmod(path, 0o660)


def remove_stale(path: Path, what: str) -> None:
    """Remove a file the server is about to bind again (a socket left by an earlier run);
    refuse anything else, and anything that is not the server's user's or root's."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise DirectoryRefused(f"{path} exists and is not a socket: remove it if it is not "
                               f"needed ({what})")
    if not _trusted_owner(st.st_uid):
        raise DirectoryRefused(f"{path} belongs to uid {st.st_uid}: another user's socket "
                               f"where the server's {what} goes; remove it")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
