"""An Alpine-like client image made here, with no registry: `FROM scratch` plus Debian's static
busybox (busybox-static: /bin/busybox and a symlink per applet) and tests/clients/getdelays.c
built static against musl (musl-tools' musl-gcc) as /client. No glibc, no dynamic loader, no
Python: what a client container that the LD_PRELOAD shim cannot enter looks like, for the
docker tests of the static supervisor the server offers in its volume (tsemu-run).

The root file system is written as a tar (fixed owners and times, a stripped client, so the
same inputs give the same bytes) and imported with `docker import`, once per content: the tag
carries its hash, and the images of earlier contents are untagged.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from tsemu.supervisor import program_kind
from tsemu.testing.image import _forget_older, image_id

REPOSITORY = "tsemu-scratch-client"
BUSYBOX = Path("/bin/busybox")
CLIENT = Path(__file__).parent / "clients" / "getdelays.c"
#: Where the image keeps the musl client.
CLIENT_PATH = "/client"
#: The kernel's uapi headers musl-gcc needs for getdelays.c, and only those: Debian's
#: /usr/include would bring glibc's own headers in beside musl's.
UAPI = {"linux": Path("/usr/include/linux"), "asm-generic": Path("/usr/include/asm-generic"),
        "asm": Path("/usr/include/x86_64-linux-gnu/asm")}
EMPTY_DIRS = ("proc", "sys", "dev", "etc", "run", "srv", "tmp")


class Unavailable(RuntimeError):
    """What is missing to make the image (a reason to skip with)."""


def musl_client(outdir: Path) -> Path:
    """getdelays.c linked statically against musl."""
    compiler = shutil.which("musl-gcc")
    if compiler is None:
        raise Unavailable("no musl-gcc (Debian: apt-get install musl-tools)")
    include = outdir / "uapi"
    include.mkdir(exist_ok=True)
    for name, where in UAPI.items():
        if not where.is_dir():
            raise Unavailable(f"no kernel headers at {where} (Debian: linux-libc-dev)")
        link = include / name
        if not link.is_symlink():
            link.symlink_to(where)
    binary = outdir / "getdelays-musl"
    # -s: no debug information, whose paths (this session's directory) would change the bytes
    done = subprocess.run([compiler, "-static", "-s", "-O2", "-Wall", "-Wextra", "-Werror", "-I",
                           str(include), "-o", str(binary), str(CLIENT)],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode:
        raise Unavailable(f"musl-gcc could not build getdelays.c:\n{done.stderr}")
    return binary


def _entry(tar: tarfile.TarFile, name: str, kind: bytes, *, mode: int, data: bytes = b"",
           target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    info.linkname = target
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


def rootfs(client: Path) -> bytes:
    """The image's root file system as tar bytes: busybox, its applets, the client."""
    if not BUSYBOX.is_file() or program_kind(BUSYBOX) != "static":
        raise Unavailable(f"{BUSYBOX} is not a static busybox (Debian: apt-get install "
                          "busybox-static)")
    if program_kind(client) != "static":
        raise Unavailable(f"{client} is not a static program")
    listed = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                            timeout=30, check=True).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _entry(tar, "bin", tarfile.DIRTYPE, mode=0o755)
        for name in EMPTY_DIRS:
            _entry(tar, name, tarfile.DIRTYPE, mode=0o1777 if name == "tmp" else 0o755)
        _entry(tar, "bin/busybox", tarfile.REGTYPE, mode=0o755, data=BUSYBOX.read_bytes())
        for applet in sorted(set(listed) - {"busybox"}):
            if applet.isascii() and applet.replace("-", "").replace("_", "").isalnum():
                _entry(tar, f"bin/{applet}", tarfile.SYMTYPE, mode=0o777, target="busybox")
        _entry(tar, CLIENT_PATH.lstrip("/"), tarfile.REGTYPE, mode=0o755,
               data=client.read_bytes())
    return out.getvalue()


def scratch_image(workdir: Path) -> str:
    """The image's tag, imported into the engine unless an image of that content exists."""
    tar = rootfs(musl_client(workdir))
    tag = f"{REPOSITORY}:src-{hashlib.sha256(tar).hexdigest()[:16]}"
    if image_id(tag) is None:
        done = subprocess.run(["docker", "import", "--change", "ENV PATH=/bin",
                               "--change", f'CMD ["{CLIENT_PATH}"]', "-", tag], input=tar,
                              capture_output=True, timeout=300, check=False)
        if done.returncode:
            raise Unavailable(f"docker import failed: {done.stderr.decode(errors='replace')}")
        _forget_older(REPOSITORY, tag)  # the images of earlier contents: a cache of one
    return tag
