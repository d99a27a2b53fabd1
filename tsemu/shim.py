"""Where the LD_PRELOAD shim (shim/*.c, built by `pip install`) is, and the environment that
loads it into a program.

The shim is a C shared library installed inside the `tsemu` package as `libtsemu-shim.so`.
It is not a Python module: `tsemu run` puts it in LD_PRELOAD of the command it runs, so the
command's AF_NETLINK / NETLINK_GENERIC sockets talk to tsemu instead of the kernel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SHIM_NAME = "libtsemu-shim.so"

#: Environment variable that names the shim explicitly (a shim built elsewhere, tests).
SHIM_ENV = "TSEMU_SHIM"


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


#: Environment variable naming the /proc view the shim shows in place of /proc (unset: the
#: host's /proc).
PROC_VIEW_ENV = "TSEMU_PROC_VIEW"


def shim_environment(socket_path: Path | str | None = None,
                     base: Mapping[str, str] | None = None, *,
                     proc_view: Path | str | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the shim preloaded (ahead of any
    LD_PRELOAD already there), TSEMU_SOCKET set to `socket_path` when given, and
    TSEMU_PROC_VIEW to `proc_view` (None: the host's /proc, even if `base` named a view)."""
    env = dict(os.environ if base is None else base)
    library = str(shim_path())
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != library]
    env["LD_PRELOAD"] = " ".join([library, *preload])
    if socket_path is not None:
        env["TSEMU_SOCKET"] = str(Path(socket_path).absolute())
    if proc_view is not None:
        env[PROC_VIEW_ENV] = str(Path(proc_view).absolute())
    else:
        env.pop(PROC_VIEW_ENV, None)
    return env
