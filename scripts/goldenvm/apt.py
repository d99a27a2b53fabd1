"""apt-get and apt-cache on a private sources list, state and cache.

Every option that could make apt read or write the system's configuration is pointed at a
directory of our own (`build/golden-vm/apt/SUITE/`): the sources list and its parts, the
preferences, the package lists, the archive cache and the dpkg status file. The system's apt
keeps its own lists, pins and locks; we only borrow the binaries and the archive keyring.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .suites import Mirrors, sources_list


@dataclass(frozen=True)
class PrivateApt:
    """apt confined to `root`: one suite's package lists and downloads, nothing shared."""

    root: Path
    suite: str

    def prepare(self, mirrors: Mirrors) -> None:
        """Lay out the private directories and write the sources list."""
        for sub in ("etc/sources.list.d", "etc/preferences.d", "state/lists/partial",
                    "cache/archives/partial", "debs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc/sources.list").write_text(sources_list(self.suite, mirrors))
        status = self.root / "state/status"
        if not status.exists():
            status.write_text("")

    def options(self) -> list[str]:
        r = self.root
        pairs = {
            "Dir::Etc::SourceList": r / "etc/sources.list",
            "Dir::Etc::SourceParts": r / "etc/sources.list.d",
            "Dir::Etc::Preferences": r / "etc/preferences",
            "Dir::Etc::PreferencesParts": r / "etc/preferences.d",
            "Dir::State": r / "state",
            "Dir::State::Lists": r / "state/lists",
            "Dir::State::status": r / "state/status",
            "Dir::Cache": r / "cache",
            "Dir::Cache::Archives": r / "cache/archives",
            "Dir::Cache::pkgcache": "",
            "Dir::Cache::srcpkgcache": "",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "Acquire::Languages": "none",
            # the private directories are root's: no point dropping to _apt to write them
            "APT::Sandbox::User": "root",
        }
        out: list[str] = []
        for key, value in pairs.items():
            out += ["-o", f"{key}={value}"]
        return out

    def run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> str:
        """Run apt-get or apt-cache with the private options; its stdout, or RuntimeError."""
        cmd = [tool, "-q", *self.options(), *args]
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stderr.strip()[-2000:]}")
        return done.stdout

    def update(self) -> None:
        self.run("apt-get", "update")

    def image_package(self, meta: str = "linux-image-amd64") -> str:
        """The versioned kernel image package the metapackage depends on, e.g.
        linux-image-6.1.0-41-amd64 (the signed image, never the -unsigned or -dbg one)."""
        text = self.run("apt-cache", "depends", "--no-recommends", "--no-suggests", meta)
        names: list[str] = re.findall(r"Depends:\s*(linux-image-\S+)", text)
        for name in names:
            if not name.endswith(("-unsigned", "-dbg")):
                return name
        raise RuntimeError(f"{meta} in {self.suite} depends on no kernel image:\n{text}")

    def parts_of(self, image: str) -> list[str]:
        """The packages that hold `image`'s files: itself, and where Debian splits a kernel
        (sid since 2026: the image package is empty) its linux-binary-* (vmlinuz) and
        linux-modules-* (the modules) of the same ABI."""
        abi = image.removeprefix("linux-image-")
        text = self.run("apt-cache", "depends", "--no-recommends", "--no-suggests",
                        "--no-pre-depends", image)
        wanted = {f"linux-binary-{abi}", f"linux-modules-{abi}"}
        return [image] + sorted(set(re.findall(r"Depends:\s*(\S+)", text)) & wanted)

    def download(self, package: str) -> Path:
        """Download `package`'s .deb into debs/ (kept between runs); its path."""
        debs = self.root / "debs"
        self.run("apt-get", "download", package, cwd=debs)
        found = sorted(p for p in debs.glob(f"{package}_*.deb")
                       if p.is_file() and not p.is_symlink())
        if not found:
            raise RuntimeError(f"apt-get download {package} left no .deb in {debs}")
        return max(found, key=lambda p: p.stat().st_mtime)
