"""Where the seccomp supervisor (`tsemu-run`, supervisor/*.c, built by `pip install`) is, whether
it can run here, and which programs only it can reach.

The LD_PRELOAD shim reaches a program through its libc. Go programs (cgo or not) make their
system calls themselves, and a static binary carries its own libc: under the shim alone their
netlink sockets would reach the host kernel, silently. `tsemu-run` reaches them below libc, with
seccomp user notification (supervisor/README.md). Where it cannot run (a kernel older than 5.14,
seccomp forbidden, not built), `tsemu run` must refuse such programs rather than let them talk
to the host: `reach_problem` says which kind a program is, from its ELF headers alone:

- static: no PT_INTERP program header (nothing loads a preload library into it);
- Go: a `.go.buildinfo` section, or a note named "Go" (the Go build ID note).

A script (`#!`) is judged by its interpreter.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
from pathlib import Path

SUPERVISOR_NAME = "tsemu-run"

#: Environment variable naming the supervisor explicitly, or "off" to act as if it could not
#: run here (tests of the refusal; a host whose seccomp is known to be broken).
SUPERVISOR_ENV = "TSEMU_SUPERVISOR"

_PT_INTERP = 3
_PT_NOTE = 4
_NT_GO_BUILD_ID = 4


class SupervisorUnavailable(RuntimeError):
    """The supervisor cannot run here; the message says why."""


def supervisor_path() -> Path:
    """The built `tsemu-run`: $TSEMU_SUPERVISOR when it names one, else beside this module."""
    override = os.environ.get(SUPERVISOR_ENV, "")
    if override == "off":
        raise SupervisorUnavailable(f"{SUPERVISOR_ENV}=off")
    if override:
        path = Path(override)
        if not path.is_file():
            raise SupervisorUnavailable(f"{SUPERVISOR_ENV}={override} names no file")
        return path.resolve()
    path = Path(__file__).resolve().with_name(SUPERVISOR_NAME)
    if not path.is_file():
        raise SupervisorUnavailable(
            f"the seccomp supervisor is not built: {path} is missing (it is compiled by "
            "`pip install -e .` / `make install` and needs a static libc: libc6-dev)")
    return path


@functools.lru_cache(maxsize=4)
def _kernel_problem(path: Path) -> str | None:
    try:
        done = subprocess.run([str(path), "--check"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} cannot be run: {exc}"
    if done.returncode != 0:
        return done.stderr.strip() or f"{path} --check failed ({done.returncode})"
    return None


def usable_supervisor() -> Path:
    """The supervisor, when it is built and this kernel lets it run (asked once per process
    with `tsemu-run --check`); SupervisorUnavailable with the reason otherwise."""
    path = supervisor_path()
    problem = _kernel_problem(path)
    if problem:
        raise SupervisorUnavailable(problem)
    return path


def _elf_kind(data: bytes) -> str | None:
    """"static", "Go" or None (a dynamically linked program of another kind) for an ELF
    image's leading bytes; None also for what is not a 64-bit little-endian ELF file."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
    interp = False
    notes: list[tuple[int, int]] = []
    for i in range(min(phnum, 256)):
        at = phoff + i * phentsize
        if at + 56 > len(data):
            break
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, at)
        if p_type == _PT_INTERP:
            interp = True
        elif p_type == _PT_NOTE:
            notes.append((p_offset, p_filesz))
    for offset, size in notes:
        end = min(offset + size, len(data))
        while offset + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", data, offset)
            name = data[offset + 12:offset + 12 + namesz].rstrip(b"\0")
            if name == b"Go" and kind == _NT_GO_BUILD_ID:
                return "Go"
            offset += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    if 0 < shnum < 4096 and shstrndx < shnum and shoff + shnum * shentsize <= len(data):
        names_at = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)[0]
        for i in range(shnum):
            name_off = struct.unpack_from("<I", data, shoff + i * shentsize)[0]
            start = names_at + name_off
            if data[start:start + 13] == b".go.buildinfo":
                return "Go"
    return None if interp else "static"


def program_kind(program: str | Path, env_path: str | None = None) -> str | None:
    """What kind of program `program` (a command name, looked up in PATH, or a path) is:
    "static", "Go", or None when the shim reaches it (or it cannot be told). A `#!` script is
    its interpreter's kind."""
    for _ in range(4):  # scripts whose interpreter is a script...
        found = shutil.which(str(program), path=env_path)
        if found is None:
            return None
        try:
            with open(found, "rb") as file:
                data = file.read(64 * 1024 * 1024)
        except OSError:
            return None
        if not data.startswith(b"#!"):
            return _elf_kind(data)
        words = data[2:data.find(b"\n") if b"\n" in data else None].split()
        if not words:
            return None
        program = os.fsdecode(words[0])
        if Path(program).name == "env" and len(words) > 1:
            program = os.fsdecode(next((w for w in words[1:] if not w.startswith(b"-")),
                                       words[1]))
    return None
