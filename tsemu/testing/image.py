"""tsemu's container image, built from a source tree once per content: the tag carries a hash
of everything the build reads (and of the base image), so a second build of the same sources
is a lookup (`docker image inspect`), not a minute of `docker build`.

Only the `docker` command is used (no Python dependency): the tests of the image and the
testcontainers module both start from here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

#: The image's socket directory (a volume) and socket.
SOCKET_DIR = "/run/tsemu"
SOCKET = f"{SOCKET_DIR}/genl.sock"
#: The uid of the image's non-root `tsemu` user (its Dockerfile's TSEMU_UID default).
TSEMU_UID = 10001
#: What the build context holds that the build reads (the Dockerfile's COPY . and
#: docker/build-steps.sh's list); generated files are left out.
_BUILD_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "setup.py", "README.md",
                 "tsemu", "wire", "emulator", "cli", "shim", "docker", "examples",
                 "tests/clients/getdelays.c")
_SKIPPED = ("__pycache__", ".pyc", "libtsemu-shim.so", ".so")


class ImageError(RuntimeError):
    """The image could not be built or found (the message says why, in a line or two)."""


def docker_ready() -> str | None:
    """None when a Docker engine answers; else why not (a reason to skip with)."""
    if shutil.which("docker") is None:
        return "no `docker` command (Debian: apt-get install docker.io)"
    try:
        done = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20 s"
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"no Docker engine answers ({last})"
    return None


def image_id(name: str) -> str | None:
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", name],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else None


def source_hash(source: Path, python_image: str | None = None) -> str:
    """A hash of the build's inputs under `source` (paths and contents) and of the base
    image's id (its name when it is not present: the build will pull it)."""
    digest = hashlib.sha256()
    for top in _BUILD_INPUTS:
        root = source / top
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            relative = path.relative_to(source).as_posix()
            if any(part in relative for part in _SKIPPED):
                continue
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    if python_image is not None:
        digest.update((image_id(python_image) or python_image).encode())
    return digest.hexdigest()[:16]


def build_image(source: Path, *, python_image: str | None = None, repository: str = "tsemu",
                timeout: float = 600) -> str:
    """The image built from `source` (a tsemu source tree), as `REPOSITORY:src-HASH`; built
    only if no image of that tag exists. `python_image` is the Dockerfile's PYTHON_IMAGE (a
    mirror's, or docker/make-base-image.sh's where no registry is reachable)."""
    tag = f"{repository}:src-{source_hash(source, python_image)}"
    if image_id(tag) is not None:
        return tag
    argv = ["docker", "build", "-q", "-t", tag]
    if python_image is not None:
        argv += ["--build-arg", f"PYTHON_IMAGE={python_image}"]
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        if os.environ.get(name, "").startswith(("http://", "https://")):
            argv += ["--build-arg", f"{name}={os.environ[name]}"]
    done = subprocess.run([*argv, str(source)], capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ImageError(f"docker build of {source} failed:\n{tail}")
    _forget_older(repository, tag)
    return tag


def _forget_older(repository: str, keep: str) -> None:
    """Untag the images of earlier contents (`REPOSITORY:src-*` but `keep`): a cache of one,
    or every edit of the sources would leave an image behind. Best effort: one in use stays."""
    listed = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
                             repository], capture_output=True, text=True, timeout=30)
    older = [name for name in listed.stdout.split()
             if name.startswith(f"{repository}:src-") and name != keep]
    if older:
        subprocess.run(["docker", "rmi", *older], capture_output=True, timeout=120)


def image_size(name: str) -> int:
    """The image's size in bytes, as `docker images` reports it."""
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", name],
                          capture_output=True, text=True, timeout=30, check=True)
    return int(done.stdout.strip())
