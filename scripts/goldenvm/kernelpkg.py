"""A Debian kernel package unpacked: its release, its vmlinuz, and the modules 9p needs.

The guest mounts the host's root over virtio-9p, and Debian builds 9p, its transport and the
netfs library as modules: they go into the initramfs, in dependency order, decompressed here
(busybox's insmod takes plain ELF). The order comes from each module's own `depends=` (the
package ships no modules.dep: depmod writes it on installation), read depth first so that
every module follows what it needs; modules.builtin says which ones need no loading at all.

The unpacked tree came from a download: nothing in it is followed through a symlink, and a file
is read only when it is a regular file inside the tree.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: What the guest loads to mount the host over 9p: the virtio PCI transport, then 9p itself.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p")


@dataclass(frozen=True)
class UnpackedKernel:
    """One kernel release unpacked from its packages."""

    root: Path
    release: str

    @property
    def vmlinuz(self) -> Path:
        """boot/vmlinuz-RELEASE as packaged up to 7.1; beside the modules since Debian split
        the image into linux-binary-* and linux-modules-* (7.2 in sid)."""
        try:
            return _regular(self.root, f"boot/vmlinuz-{self.release}")
        except FileNotFoundError:
            return _regular(self.modules_dir, "vmlinuz")

    @property
    def modules_dir(self) -> Path:
        for base in ("lib/modules", "usr/lib/modules"):
            path = self.root / base / self.release
            if _is_real_dir(self.root, f"{base}/{self.release}"):
                return path
        raise FileNotFoundError(f"no modules directory for {self.release} under {self.root}")


def _is_real_dir(root: Path, rel: str) -> bool:
    """Whether every component of rel under root is a real directory (no symlink)."""
    path = root
    for part in Path(rel).parts:
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


def _regular(root: Path, rel: str) -> Path:
    """root/rel, required to be a regular file reached through real directories only."""
    parent = str(Path(rel).parent)
    path = root / rel
    if (parent != "." and not _is_real_dir(root, parent)) or \
            not stat.S_ISREG(os.lstat(path).st_mode):
        raise FileNotFoundError(f"{path} is not a regular file inside {root}")
    return path


def unpack(debs: list[Path], dest: Path) -> UnpackedKernel:
    """Extract the .debs into dest (made afresh unless a previous unpack completed there)."""
    done = dest / ".unpacked"
    if not done.is_file():
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True, timeout=600)
        done.write_text("\n".join(d.name for d in debs) + "\n")
    releases = sorted({p.name for base in ("lib/modules", "usr/lib/modules")
                       if _is_real_dir(dest, base) for p in (dest / base).iterdir()
                       if _is_real_dir(dest, f"{base}/{p.name}")})
    if len(releases) != 1:
        raise RuntimeError(f"expected the modules of one release in {dest}, found {releases}")
    return UnpackedKernel(dest, releases[0])


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def _modinfo_depends(elf: bytes) -> list[str]:
    """The `depends=` list of a module's .modinfo section (ELF64 little-endian, as x86_64
    modules are), read from the section table without any ELF library."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF module")
    shoff = int.from_bytes(elf[0x28:0x30], "little")
    shentsize = int.from_bytes(elf[0x3A:0x3C], "little")
    shnum = int.from_bytes(elf[0x3C:0x3E], "little")
    shstrndx = int.from_bytes(elf[0x3E:0x40], "little")

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name = int.from_bytes(elf[base:base + 4], "little")
        offset = int.from_bytes(elf[base + 0x18:base + 0x20], "little")
        size = int.from_bytes(elf[base + 0x20:base + 0x28], "little")
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = elf.index(b"\0", str_off + name)
        if elf[str_off + name:end] == b".modinfo":
            for item in elf[offset:offset + size].split(b"\0"):
                if item.startswith(b"depends="):
                    return [d for d in item[8:].decode().split(",") if d]
            return []
    raise ValueError("module without a .modinfo section")


def module_index(modules_dir: Path) -> dict[str, str]:
    """Module name -> path relative to modules_dir, for every regular *.ko* file in it."""
    index: dict[str, str] = {}
    for top, _dirs, files in os.walk(modules_dir):  # os.walk does not follow symlinks
        for name in files:
            full = Path(top) / name
            if ".ko" in name and stat.S_ISREG(os.lstat(full).st_mode):
                index[_module_name(name)] = str(full.relative_to(modules_dir))
    return index


def load_order(modules_dir: Path, wanted: tuple[str, ...] = WANTED_MODULES) -> list[str]:
    """Paths (relative to modules_dir) of the modules to insmod for `wanted`, dependencies
    first, built-in ones left out. The package ships no modules.dep (depmod makes it when the
    package is installed), so each module's own `depends=` is read. KeyError names a module
    the kernel has neither way; where no modules.builtin is shipped, a module that is not
    shipped is taken to be built in."""
    index = module_index(modules_dir)
    try:
        builtin: set[str] | None = {_module_name(line) for line in
                                    _regular(modules_dir, "modules.builtin").read_text().split()}
    except FileNotFoundError:  # split packages (sid's linux-modules-*) ship no list
        builtin = None
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or (builtin is not None and name in builtin):
            return
        seen.add(name)
        if name not in index:
            if builtin is None:
                return  # not shipped as a module: built in (the mount says otherwise)
            raise KeyError(f"module {name} is neither built in nor shipped")
        for need in _modinfo_depends(module_bytes(modules_dir, index[name])):
            visit(need.replace("-", "_"))
        order.append(index[name])

    for name in wanted:
        visit(name)
    return order


def module_bytes(modules_dir: Path, rel: str) -> bytes:
    """A module's ELF bytes, decompressed from .ko.xz, .ko.gz or .ko.zst as packaged."""
    raw = _regular(modules_dir, rel).read_bytes()
    if rel.endswith(".xz"):
        return lzma.decompress(raw)
    if rel.endswith(".gz"):
        return gzip.decompress(raw)
    if rel.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise RuntimeError(f"{rel} is zstd-compressed: install zstd to unpack it")
        return subprocess.run(["zstd", "-dc"], input=raw, capture_output=True, check=True,
                              timeout=60).stdout
    return raw
