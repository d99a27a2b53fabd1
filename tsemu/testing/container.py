"""tsemu as a testcontainers-python dependency: the server in a container, its socket directory
bind-mounted from the host, clients on the host (`pip install tsemu[containers]`).

    from tsemu.testing.container import TsemuContainer

    def test_my_exporter():
        with TsemuContainer("tsemu:latest") as tsemu:
            done = subprocess.run(["./getdelays", "-d", "-p", "1"], env=tsemu.client_env())
            pid = tsemu.ctl("spawn", "--comm", "job")
            tsemu.ctl("exit", pid)

The host directory (a fresh temporary one unless `socket_dir` is given) is mounted at
/run/tsemu in the container: the server sees it there, the host's clients at its host path,
and the server answers them all the same (a client may see the socket directory at any
path). The container is ready when the server prints `tsemu: listening on` (the wait is on
that line, polled every 50 ms); `socket_path`, `shim_path` and `client_env()` are then what a
client on the host needs. Where no registry is reachable, set TESTCONTAINERS_RYUK_DISABLED=true
(the reaper is an image of its own) and give an image built locally
(`tsemu.testing.image.build_image`).

The same recipe for testcontainers-go and -java is in docs/containers.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from testcontainers.core.container import DockerContainer

from tsemu.testing.image import SOCKET, SOCKET_DIR, TSEMU_UID

#: The ready line (`tsemu serve` prints it once its sockets are bound).
READY = "tsemu: listening on"
#: Where a scenario given to the container is mounted.
SCENARIO = "/etc/tsemu/scenario"


class TsemuContainer(DockerContainer):  # type: ignore[misc,unused-ignore]
    """tsemu's image serving on a host directory (see the module docstring).

    image: the image to run (`build_image` makes one from a source tree);
    socket_dir: the host directory to serve in (default: a new temporary one, removed on
    stop); scenario: a scenario file on the host (TOML or JSON); user: run the server as this
    user (the image's non-root one is "tsemu"); serve_args: more `tsemu serve` options.
    """

    def __init__(self, image: str = "tsemu:latest", *, socket_dir: Path | str | None = None,
                 scenario: Path | str | None = None, user: str | None = None,
                 serve_args: Sequence[str] = (), startup_timeout: float = 30,
                 **kwargs: Any) -> None:
        super().__init__(image, **kwargs)
        self._made_dir = socket_dir is None
        self.socket_dir = Path(tempfile.mkdtemp(prefix="tsemu-tc-") if socket_dir is None
                               else socket_dir).absolute()
        self._startup_timeout = startup_timeout
        self.with_volume_mapping(str(self.socket_dir), SOCKET_DIR, "rw")
        command = ["serve", *serve_args]
        if scenario is not None:
            scenario = Path(scenario).absolute()
            mounted = f"{SCENARIO}{''.join(scenario.suffixes[-1:])}"
            self.with_volume_mapping(str(scenario), mounted, "ro")
            command += ["--scenario", mounted]
        self.with_command(command)
        if user is not None:
            self.with_kwargs(user=user)
            self._open_dir_to(user)
        elif self._made_dir:
            os.chmod(self.socket_dir, 0o755)  # (mkdtemp: 0700; the host's clients traverse it)

    def _open_dir_to(self, user: str) -> None:
        """A server of another user than the host's must be able to write the directory."""
        uid = TSEMU_UID if user == "tsemu" else int(user.split(":")[0]) if user[:1].isdigit() \
            else None
        if os.geteuid() == 0 and uid is not None:
            os.chown(self.socket_dir, uid, -1)
        else:  # a volume shared on purpose: the image's server accepts it (TSEMU_SHARED_DIR)
            os.chmod(self.socket_dir, 0o1777)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> TsemuContainer:
        super().start()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import time

        deadline = time.monotonic() + self._startup_timeout
        wrapped = self.get_wrapped_container()
        while True:
            stdout, stderr = self.get_logs()
            said = (stdout + stderr).decode(errors="replace")
            if READY in said:
                return
            wrapped.reload()
            if wrapped.status not in ("created", "running"):
                raise RuntimeError(f"the tsemu container ended before it was ready: "
                                   f"{said.strip() or wrapped.status}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no `{READY}` within {self._startup_timeout} s: "
                                   f"{said.strip()}")
            time.sleep(0.05)

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """SIGTERM first (the server removes its files), then remove the container; the
        directory too if it was made here."""
        try:
            if self._container is not None:
                self._container.stop(timeout=5)
        finally:
            super().stop(force=force, delete_volume=delete_volume)
            if self._made_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- what a client needs -------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """The server's socket at its host path (a client's TSEMU_SOCKET)."""
        return self.socket_dir / Path(SOCKET).name

    @property
    def shim_path(self) -> Path:
        """The LD_PRELOAD shim for a client on the host: the installed tsemu's (built for the
        host), else the copy the container offers in the socket directory (built against
        the image's glibc 2.36: the host needs that glibc or newer)."""
        try:
            from tsemu.shim import shim_path

            return shim_path()
        except FileNotFoundError:
            return self.socket_dir / "libtsemu-shim.so"

    def client_env(self, base: Mapping[str, str] | None = None, *,
                   preload: bool = True) -> dict[str, str]:
        """`base` (default: this process's environment) with TSEMU_SOCKET naming the server
        and, with `preload`, the shim preloaded (for an unmodified netlink program; a Python
        client of `tsemu.client` needs only TSEMU_SOCKET)."""
        env = dict(os.environ if base is None else base)
        env["TSEMU_SOCKET"] = str(self.socket_path)
        if preload:
            env["LD_PRELOAD"] = " ".join(filter(None, [str(self.shim_path),
                                                       env.get("LD_PRELOAD", "")]))
        return env

    def ctl(self, *args: str) -> str:
        """`tsemu ctl ARGS...` inside the container; its stdout (raises on failure)."""
        done = subprocess.run(["docker", "exec", self.get_wrapped_container().id, "tsemu",
                               "ctl", *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"tsemu ctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()
