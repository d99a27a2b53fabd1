"""Where the LD_PRELOAD shim (shim/*.c, built by `pip install`) is, and the environment that
loads it into a program.

The shim is a C shared library installed inside the `tsemu` package as `libtsemu-shim.so`.
It is not a Python module: `tsemu run` puts it in LD_PRELOAD of the command it runs, so the
command's AF_NETLINK / NETLINK_GENERIC sockets talk to tsemu instead of the kernel, and, when
TSEMU_PROC_VIEW names the server's /proc view (`<socket>.proc`), its /proc shows the emulated
machine's tasks (shim/README.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SHIM_NAME = "libtsemu-shim.so"

#: Environment variable that names the shim explicitly (a shim built elsewhere, tests).
SHIM_ENV = "TSEMU_SHIM"

#: Environment variable that names the /proc view the shim shows under /proc.
PROC_VIEW_ENV = "TSEMU_PROC_VIEW"

#: What `shim_environment(proc=...)` accepts: the emulated machine's /proc, or the host's.
PROC_MODES = ("emulated", "host")


class ShimNotBuilt(FileNotFoundError):
    """The shim library is not where the installed package should have it."""


def shim_path() -> Path:
    """The built shim library: $TSEMU_SHIM if set, else `libtsemu-shim.so` beside this module
    (where both `pip install .` and `pip install -e .` put it)."""
    override = os.environ.get(SHIM_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise ShimNotBuilt(f"{SHIM_ENV}={override} names no file")
        return path.resolve()
    path = Path(__file__).resolve().with_name(SHIM_NAME)
    if not path.is_file():
        raise ShimNotBuilt(
            f"the LD_PRELOAD shim is not built: {path} is missing. It is compiled by the "
            f"package's installation: run `pip install -e .` (or `make install`) in the "
            f"tsemu source tree, which needs a C compiler (gcc or cc)")
    return path


def proc_view_path(socket_path: Path | str) -> Path:
    """Where the server at `socket_path` publishes its /proc view: `<socket>.proc`."""
    from tsemu.emulator.shell.addressing import proc_view_dir

    return proc_view_dir(Path(socket_path).absolute())


def shim_environment(socket_path: Path | str | None = None,
                     base: Mapping[str, str] | None = None, *,
                     proc: str | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the shim preloaded (ahead of any
    LD_PRELOAD already there) and TSEMU_SOCKET set to `socket_path` when given.

    `proc="emulated"` also sets TSEMU_PROC_VIEW to the server's /proc view when that
    directory exists (and removes an inherited one when it does not: a view is the server's
    own); `proc="host"` removes it, so the command sees the host's /proc; None leaves the
    variable as `base` has it."""
    if proc is not None and proc not in PROC_MODES:
        raise ValueError(f"proc must be one of {', '.join(PROC_MODES)}, not {proc!r}")
    env = dict(os.environ if base is None else base)
    library = str(shim_path())
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != library]
    env["LD_PRELOAD"] = " ".join([library, *preload])
    if socket_path is not None:
        env["TSEMU_SOCKET"] = str(Path(socket_path).absolute())
    if proc is not None:
        env.pop(PROC_VIEW_ENV, None)
        server = socket_path if socket_path is not None else env.get("TSEMU_SOCKET")
        if proc == "emulated" and server and proc_view_path(server).is_dir():
            env[PROC_VIEW_ENV] = str(proc_view_path(server))
    return env
